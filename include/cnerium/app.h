/*
 * cnerium/app.h - the application: routes and the server that runs them.
 *
 * Register every route before cn_app_run. Paths are literal segments and "{name}"
 * parameters ("/orders/{id}"); a literal segment wins over a parameter. Strings passed
 * at registration are copied; ctx is borrowed and passed to the handler unchanged.
 *
 * Ordinary routes (cn_get, cn_post, ...) are untouched by the reliability layer. A
 * durable route (cn_durable_post) runs its handler at most once per (operation, key):
 * see README "The durable route contract".
 */
#ifndef CNERIUM_APP_H
#define CNERIUM_APP_H

#include "config.h"
#include "request.h"
#include "response.h"

typedef struct cn_app cn_app_t;

/* A route handler. The returned response is owned by the server from then on. */
typedef cn_response_t (*cn_handler_cb)(cn_request_t *req, void *ctx);

/* Creates an app for cfg (copied). Returns NULL on allocation failure. */
cn_app_t *cn_app_new(const cn_config_t *cfg);

/* Frees the app and its routes. Accepts NULL. Not to be called while cn_app_run runs. */
void cn_app_free(cn_app_t *app);

/* The configuration the app runs with (borrowed, valid until cn_app_free). */
const cn_config_t *cn_app_config(const cn_app_t *app);

/* Register ordinary routes. Return 0, -EINVAL for a malformed path or a route that is
 * already registered, or -ENOMEM. */
int cn_get(cn_app_t *app, const char *path, cn_handler_cb handler, void *ctx);
int cn_post(cn_app_t *app, const char *path, cn_handler_cb handler, void *ctx);
int cn_put(cn_app_t *app, const char *path, cn_handler_cb handler, void *ctx);
int cn_delete(cn_app_t *app, const char *path, cn_handler_cb handler, void *ctx);
int cn_patch(cn_app_t *app, const char *path, cn_handler_cb handler, void *ctx);

/* Registers the handler of every request no route matches (by path or by method),
 * instead of 404 / 405: an ordinary route for everything else (a proxy's passthrough).
 * Returns 0. */
int cn_fallback(cn_app_t *app, cn_handler_cb handler, void *ctx);

/* Registers a durable POST route. operation names the logical operation and scopes its
 * keys: 1-64 characters from [A-Za-z0-9._-]. Returns 0, -EINVAL, CN_ETOOBIG (more than
 * 256 distinct operations) or -ENOMEM. GET /metrics is registered by cn_app_new. */
int cn_durable_post(cn_app_t *app, const char *path, const char *operation,
                    cn_handler_cb handler, void *ctx);

/* Registers a durable route of method "POST", "PUT", "PATCH" or "DELETE" (the same
 * contract; a request's fingerprint then covers its method and path as well as its
 * query and body, except for POST, whose fingerprint is the query and body alone).
 * Returns what cn_durable_post returns; -EINVAL for another method. */
int cn_durable(cn_app_t *app, const char *method, const char *path, const char *operation,
               cn_handler_cb handler, void *ctx);

/* Registers a WebSocket command (README "Realtime (WebSocket)": commands). A client
 * message {"type":"command","id":"c1","idempotency_key":"k1","action":{"<action>":{...}}}
 * makes the broadcaster run `method path` over HTTP on the server's own address, exactly
 * as an HTTP client would: the action's object is the JSON body, idempotency_key the
 * Idempotency-Key header (a durable route answers 400 without it, as over HTTP), and
 * each "{field}" in path is replaced by the percent-encoded string value of that field
 * of the object. The answer goes to that client only: {"type":"result","id":"c1",
 * "status":201,"body":<the response body, as a JSON string when it is not JSON>,
 * "replayed":true|false}. A bad command gets {"type":"error","id":...,"message":...}.
 * The request carries no credentials: a route behind --principal-header sees none, and
 * a --realtime-secret token only decides who may connect.
 * action: [A-Za-z0-9._-]{1,64}; method: "GET", "POST", "PUT" or "DELETE"; path: '/'
 * first, printable ASCII without spaces, "{field}" names [A-Za-z0-9._-]{1,64}. Register
 * before cn_app_run; without realtime (or with --single-process) nothing serves them.
 * Returns 0, -EINVAL (a bad argument or the action already registered), CN_ETOOBIG (more
 * than 64 commands) or -ENOMEM. */
int cn_ws_command(cn_app_t *app, const char *action, const char *method, const char *path);

/* Opens the data dir, binds the port, starts the server's processes (persister,
 * broadcaster when realtime is enabled, --workers HTTP workers; see README "How it works
 * today"), prints "listening on http://HOST:PORT" to stdout and serves until SIGTERM or
 * SIGINT; then stops accepting, lets requests in progress finish (bounded) and returns.
 * Handlers run in the forked worker processes (in the calling process with
 * --single-process): each worker has its own copy of everything set up before this
 * call, so state handlers share across requests must live outside process memory.
 * Returns a process exit code: 0 after a clean stop, 2 for a configuration problem the
 * operator must fix (bad flag, port in use, data dir locked or unwritable, WAL damaged in
 * the middle), 1 for other failures. Errors are printed as one line to stderr. */
int cn_app_run(cn_app_t *app);

/* Asks a running cn_app_run to stop, as SIGTERM would. Async-signal-safe. */
void cn_app_stop(cn_app_t *app);

#endif
