/*
 * app/app.c - the application: route registration and dispatch with outcome counters.
 * It never calls into the processes that run it: cn_app_run is the supervisor's
 * (workers/supervisor.c), and the workers call cn__app_dispatch and cn__app_deliver.
 *
 * Routes are registered before cn_app_run and only read afterwards, from every request
 * thread of every worker process (each has its own copy after fork).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "app/app_internal.h"
#include "cnerium/app.h"
#include "cnerium/error.h"
#include "http/problem.h"
#include "http/request_internal.h"
#include "http/router.h"
#include "http/server.h"
#include "realtime/event.h"
#include "reliability/durable.h"
#include "store/commit.h"
#include "store/store.h"
#include "support/log.h"
#include "support/utf8.h"

cn_app_t *
cn_app_new(const cn_config_t *cfg)
{
    cn_app_t *app = calloc(1, sizeof(*app));

    if (!app)
        return NULL;
    app->cfg = *cfg;
    if (!app->cfg.node_id[0])
        snprintf(app->cfg.node_id, sizeof(app->cfg.node_id), "%.*s-node",
                 (int)sizeof(app->cfg.node_id) - 6, app->cfg.name);
    app->shm.fd = -1;
    if (cn__router_new(&app->router)) {
        free(app);
        return NULL;
    }
    /* Served by every worker from the shared counters; see README "Metrics". */
    if (cn__router_add(app->router, CN_METHOD_GET, "/metrics", NULL, cn__metrics_handler,
                       app)) {
        cn_app_free(app);
        return NULL;
    }
    return app;
}

void
cn_app_free(cn_app_t *app)
{
    if (!app)
        return;
    cn__router_free(app->router);
    for (unsigned i = 0; i < app->nops; i++)
        free(app->ops[i]);
    cn__ws_commands_free(&app->commands);
    free(app);
}

const cn_config_t *
cn_app_config(const cn_app_t *app)
{
    return &app->cfg;
}

int
cn_get(cn_app_t *app, const char *path, cn_handler_cb handler, void *ctx)
{
    return cn__router_add(app->router, CN_METHOD_GET, path, NULL, handler, ctx);
}

int
cn_post(cn_app_t *app, const char *path, cn_handler_cb handler, void *ctx)
{
    return cn__router_add(app->router, CN_METHOD_POST, path, NULL, handler, ctx);
}

int
cn_put(cn_app_t *app, const char *path, cn_handler_cb handler, void *ctx)
{
    return cn__router_add(app->router, CN_METHOD_PUT, path, NULL, handler, ctx);
}

int
cn_delete(cn_app_t *app, const char *path, cn_handler_cb handler, void *ctx)
{
    return cn__router_add(app->router, CN_METHOD_DELETE, path, NULL, handler, ctx);
}

void
cn__app_relay(cn_app_t *app, cn_app_relay_cb relay, void *ctx)
{
    app->relay = relay;
    app->relay_ctx = ctx;
}

int
cn_fallback(cn_app_t *app, cn_handler_cb handler, void *ctx)
{
    app->fallback.handler = handler;
    app->fallback.ctx = ctx;
    return 0;
}

int
cn_patch(cn_app_t *app, const char *path, cn_handler_cb handler, void *ctx)
{
    return cn__router_add(app->router, CN_METHOD_PATCH, path, NULL, handler, ctx);
}

static int
valid_operation(const char *op)
{
    size_t n = 0;

    for (; op[n]; n++) {
        char c = op[n];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return 0;
    }
    return n >= 1 && n <= CN_OPERATION_MAX;
}

int
cn_durable_post(cn_app_t *app, const char *path, const char *operation, cn_handler_cb handler,
                void *ctx)
{
    return cn_durable(app, "POST", path, operation, handler, ctx);
}

int
cn_durable(cn_app_t *app, const char *method, const char *path, const char *operation,
           cn_handler_cb handler, void *ctx)
{
    int m = method ? cn__method_from_string(method) : 0;
    unsigned op = 0;
    int rc;

    if (!operation || !valid_operation(operation) || !m || m == CN_METHOD_GET ||
        strcmp(method, cn__method_name(m)))
        return -EINVAL;
    while (op < app->nops && strcmp(app->ops[op], operation))
        op++;
    if (op == app->nops) {
        if (app->nops == CN_SHM_MAX_OPS)
            return CN_ETOOBIG;
        if (!(app->ops[op] = strdup(operation)))
            return -ENOMEM;
    }
    rc = cn__router_add(app->router, m, path, operation, handler, ctx);
    if (rc) {
        if (op == app->nops) {
            free(app->ops[op]);
            app->ops[op] = NULL;
        }
        return rc;
    }
    if (op == app->nops)
        app->nops++;
    cn__router_route(app->router, cn__router_count(app->router) - 1)->op_index = op;
    return 0;
}

int
cn_ws_command(cn_app_t *app, const char *action, const char *method, const char *path)
{
    if (!app)
        return -EINVAL;
    return cn__ws_commands_add(&app->commands, action, method, path);
}

/* ---- dispatch (request threads) ---- */

static void
count_outcome(cn_worker_t *w, const cn_durable_result_t *out)
{
    cn__shm_count(&w->app->shm, w->id, out->op_index, out->outcome);
    if (out->waited)
        cn__shm_count(&w->app->shm, w->id, out->op_index, CN_SHM_WAITS);
}

/* Ordinary routes have no record to wait for: their events are persisted and numbered
 * like a durable route's, but nobody waits for them. Losing them (a full ring) is
 * logged and counted, never silent. */
static void
submit_events(cn_worker_t *w, cn_request_t *req)
{
    uint8_t buf[1024], *p = buf;
    size_t need = cn__events_encoded_size(req->events), len;
    int rc;

    if (need > sizeof(buf) && !(p = malloc(need)))
        rc = -ENOMEM;
    else if (!(rc = cn__events_encode(req->events, p, need, &len)))
        rc = cn__committer_submit_events(w->committer, p, len);
    if (rc) {
        cn_log_error("events of %s %s were lost: %s", req->method, req->path, cn_strerror(rc));
        atomic_fetch_add(&w->app->shm.hdr->events.dropped, 1);
    }
    if (p != buf)
        free(p);
    cn__events_free(req->events);
    req->events = NULL;
    req->events_tail = &req->events;
}

void
cn__app_deliver(void *arg, void *handle, cn_durable_result_t *out)
{
    cn_http_reply_t reply = {
        .response = out->response,
        .flags = CN_REPLY_NO_STORE |
                 (out->outcome == CN_OUTCOME_REPLAYED ? CN_REPLY_REPLAYED : 0),
    };

    count_outcome(arg, out);
    cn__http_complete(handle, &reply);
}

/* An ordinary route's answer that came later (cn_request_answer), on its thread. */
static void
ordinary_answered(void *arg, cn_request_t *req, cn_response_t res)
{
    cn_http_reply_t reply = {.response = res};

    if (req->events)
        submit_events(arg, req);
    cn__http_complete(req->http_handle, &reply);
}

int
cn__app_relay_select(void *arg, cn_request_t *req, int64_t body_length,
                     const cn_relay_near_t *near, cn_relay_t **out)
{
    cn_worker_t *w = arg;
    cn_app_t *app = w->app;
    int method = cn__method_from_string(req->method);
    int rc = cn__router_match(app->router, method, req->path, strlen(req->path), &req->match);
    cn_relay_t *r;

    cn__route_match_clear(&req->match); /* dispatch matches again */
    if (rc != CN_ENOTFOUND && rc != CN_EMETHOD)
        return rc == 0 ? 0 : -ENOMEM;
    if (!(r = cn__relay_new(body_length, near)))
        return -ENOMEM;
    app->relay(app->relay_ctx, req, r);
    *out = r;
    return 1;
}

void
cn__app_dispatch(void *arg, cn_request_t *req, cn_http_reply_t *reply)
{
    cn_worker_t *w = arg;
    cn_app_t *app = w->app;
    int method = cn__method_from_string(req->method);
    int rc = cn__router_match(app->router, method, req->path, strlen(req->path), &req->match);
    char detail[256];

    /* Stream reads and appends (stream/stream.c) need these. */
    req->store = w->store;
    req->stream_event_max = app->cfg.stream_event_max;

    if ((rc == CN_ENOTFOUND || rc == CN_EMETHOD) && app->fallback.handler) {
        cn__route_match_clear(&req->match);
        req->match.route = &app->fallback;
        rc = 0;
    }
    if (rc == CN_ENOTFOUND) {
        snprintf(detail, sizeof(detail), "No route for %.100s", req->path);
        reply->response = cn__problem(404, CN_PROBLEM_NOT_FOUND, detail);
        reply->flags = CN_REPLY_NO_STORE;
        return;
    }
    if (rc == CN_EMETHOD) {
        char allow[64];
        cn__router_allow(req->match.allowed, allow, sizeof(allow));
        snprintf(detail, sizeof(detail), "Method %s is not allowed on %.100s (allowed: %s)",
                 req->method, req->path, allow);
        reply->response = cn__problem(405, CN_PROBLEM_METHOD, detail);
        if (reply->response.status && cn_response_add_header(&reply->response, "Allow", allow))
            cn_response_free(&reply->response);
        reply->flags = CN_REPLY_NO_STORE;
        return;
    }
    if (rc) {
        reply->response = cn__problem(503, CN_PROBLEM_STORAGE, "Out of memory");
        reply->flags = CN_REPLY_NO_STORE;
        return;
    }
    /* Checked before any handler runs, durable or not: invalid UTF-8 in a JSON body would
     * otherwise travel into stored responses and events (README "Request bodies"). */
    if (cn__request_body_must_be_utf8(req) &&
        !cn__utf8_valid(req->body, req->body_len)) {
        reply->response = cn__problem(400, CN_PROBLEM_BODY_NOT_UTF8,
                                      "The request body is JSON but not valid UTF-8");
        reply->flags = CN_REPLY_NO_STORE;
        if (req->match.route->operation) {
            cn_durable_result_t out = {.outcome = CN_OUTCOME_INVALID,
                                       .op_index = req->match.route->op_index};
            count_outcome(w, &out);
        }
        return;
    }
    if (req->match.route->operation) {
        const cn_route_t *route = req->match.route;
        cn_durable_result_t out;
        cn__durable_handle(&w->durable, route, req, &out);
        if (out.deferred) {
            reply->flags = CN_REPLY_DEFERRED; /* cn__app_deliver answers it */
            return;
        }
        count_outcome(w, &out);
        reply->response = out.response;
        reply->flags = CN_REPLY_NO_STORE |
                       (out.outcome == CN_OUTCOME_REPLAYED ? CN_REPLY_REPLAYED : 0);
        return;
    }
    reply->response = req->match.route->handler(req, req->match.route->ctx);
    if (req->later &&
        !cn__request_later_wait(req, ordinary_answered, w, &reply->response)) {
        reply->flags = CN_REPLY_DEFERRED; /* ordinary_answered answers it */
        return;
    }
    if (req->events)
        submit_events(w, req);
}
