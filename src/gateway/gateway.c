/*
 * gateway/gateway.c - routes, flags, the proxy handler and the relay (see gateway.h).
 *
 * Both copy the request to the upstream: method, raw target, body, and every
 * header but the hop-by-hop ones and Host, plus X-Forwarded-For (the client's address
 * after any the request carried), X-Forwarded-Proto and X-Forwarded-Host. The upstream's
 * answer comes back with its status, Content-Type, Location, body and other end-to-end
 * headers. On a durable route the usual storage policy applies to it: a 5xx, 408, 425
 * or 429 from the upstream is not stored and frees the key, as are a connection that
 * could not be made (502) and an upstream that did not answer within the timeout (504).
 * A stored response keeps status, Content-Type, Location and body (the record's fields);
 * the upstream's other headers go with the first answer only. Everything else is
 * relayed: the body goes upstream as it arrives and the answer back as it comes, paced
 * by the relay's windows (http/relay.h), with no body limit either way.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "app/app_internal.h"
#include "cnerium/cnerium.h"
#include "gateway/gateway.h"
#include "gateway/upstream.h"
#include "support/log.h"

static int fail(char *err, size_t errlen, const char *fmt, const char *arg)
    __attribute__((format(printf, 3, 0)));

static int
fail(char *err, size_t errlen, const char *fmt, const char *arg)
{
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
    snprintf(err, errlen, fmt, arg);
#pragma GCC diagnostic pop
    return CN_ECONFIG;
}

static int
valid_operation(const char *op)
{
    size_t n = strlen(op);

    if (n < 1 || n > 64)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = op[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

int
cn__gateway_parse_route(const char *text, cn_gateway_route_t *out, char *err, size_t errlen)
{
    char m[16] = "", p[600] = "", op[80] = "", extra[2] = "";
    int n = sscanf(text, " %15s %599s %79s %1s", m, p, op, extra);

    memset(out, 0, sizeof(*out));
    if (n != 3)
        return fail(err, errlen, "a route is \"METHOD PATH OPERATION\", not \"%s\"", text);
    if (strcmp(m, "POST") && strcmp(m, "PUT") && strcmp(m, "PATCH") && strcmp(m, "DELETE"))
        return fail(err, errlen, "a durable route's method is POST, PUT, PATCH or DELETE, not "
                                 "\"%s\"", m);
    if (p[0] != '/' || strlen(p) >= sizeof(out->path))
        return fail(err, errlen, "a route's path starts with '/' (at most 511 bytes): \"%s\"",
                    p);
    if (!valid_operation(op))
        return fail(err, errlen, "an operation is 1-64 characters of [A-Za-z0-9._-], not "
                                 "\"%s\"", op);
    /* Every length was checked above. */
    memcpy(out->method, m, strlen(m) + 1);
    memcpy(out->path, p, strlen(p) + 1);
    memcpy(out->operation, op, strlen(op) + 1);
    return 0;
}

static int
add_route(cn_gateway_config_t *cfg, const char *text, char *err, size_t errlen)
{
    if (cfg->nroutes == CN_GATEWAY_ROUTES_MAX)
        return fail(err, errlen, "more than %s routes", "256");
    if (cn__gateway_parse_route(text, &cfg->routes[cfg->nroutes], err, errlen))
        return CN_ECONFIG;
    cfg->nroutes++;
    return 0;
}

static int
read_routes(cn_gateway_config_t *cfg, const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    char line[1024];
    int rc = 0;

    if (!f) {
        snprintf(err, errlen, "--routes-file %s: %s", path, strerror(errno));
        return CN_ECONFIG;
    }
    while (!rc && fgets(line, sizeof(line), f)) {
        char *hash = strchr(line, '#'), *p = line;
        if (hash)
            *hash = '\0';
        while (*p == ' ' || *p == '\t')
            p++;
        if (*p == '\n' || *p == '\r' || !*p)
            continue;
        line[strcspn(line, "\r\n")] = '\0';
        rc = add_route(cfg, p, err, errlen);
    }
    fclose(f);
    return rc;
}

static int
parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
    char *end;
    unsigned long long v;

    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno || end == s || *end || s[0] == '-' || v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

int
cn__gateway_parse_args(cn_gateway_config_t *cfg, int *argc, char **argv, char *err,
                       size_t errlen)
{
    const char *env = getenv("CNERIUM_UPSTREAM");
    int out = 1;

    memset(cfg, 0, sizeof(*cfg));
    cfg->timeout_ms = 30000;
    cfg->max_body = (size_t)16 << 20;
    if (env)
        snprintf(cfg->upstream, sizeof(cfg->upstream), "%s", env);
    for (int i = 1; i < *argc; i++) {
        const char *a = argv[i], *v = i + 1 < *argc ? argv[i + 1] : NULL;
        uint64_t n;

        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            printf("cnerium-gateway: the durable route contract in front of an HTTP backend\n"
                   "  --upstream URL               the backend, http://host:port "
                   "[CNERIUM_UPSTREAM]\n"
                   "  --route 'METHOD PATH OP'     a durable route (repeat; METHOD POST, PUT,\n"
                   "                               PATCH or DELETE; PATH may have {params})\n"
                   "  --routes-file FILE           routes, one per line, # comments\n"
                   "  --upstream-timeout-ms MS     a whole upstream request (30000)\n"
                   "  --upstream-max-body BYTES    an upstream answer's body (16777216)\n"
                   "  --store-header NAME          an upstream header stored with the answer\n"
                   "                               and replayed (repeat; Content-Type and\n"
                   "                               Location always are)\n"
                   "every other request is passed through untouched; server flags:\n");
            argv[out++] = argv[i];
            *argc = out;
            return 1;
        }
        if (!strcmp(a, "--upstream") || !strcmp(a, "--route") || !strcmp(a, "--routes-file") ||
            !strcmp(a, "--upstream-timeout-ms") || !strcmp(a, "--upstream-max-body") ||
            !strcmp(a, "--store-header")) {
            int rc = 0;
            if (!v)
                return fail(err, errlen, "%s needs a value", a);
            if (!strcmp(a, "--upstream"))
                snprintf(cfg->upstream, sizeof(cfg->upstream), "%s", v);
            else if (!strcmp(a, "--route"))
                rc = add_route(cfg, v, err, errlen);
            else if (!strcmp(a, "--routes-file"))
                rc = read_routes(cfg, v, err, errlen);
            else if (!strcmp(a, "--store-header")) {
                size_t len = strlen(v);
                if (cfg->nstore_headers == 16 || len == 0 || len >= 64 ||
                    strspn(v, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                              "0123456789!#$%&'*+-.^_`|~") != len)
                    return fail(err, errlen, "--store-header takes a header name (at most 16 "
                                             "of them), not \"%s\"", v);
                memcpy(cfg->store_headers[cfg->nstore_headers++], v, len + 1);
            }
            else if (!strcmp(a, "--upstream-timeout-ms")) {
                if (parse_u64(v, 10, 3600000, &n))
                    return fail(err, errlen, "--upstream-timeout-ms must be 10..3600000, not "
                                             "\"%s\"", v);
                cfg->timeout_ms = (uint32_t)n;
            } else {
                if (parse_u64(v, 1, (uint64_t)1 << 30, &n))
                    return fail(err, errlen, "--upstream-max-body must be 1..2^30, not \"%s\"",
                                v);
                cfg->max_body = (size_t)n;
            }
            if (rc)
                return rc;
            i++;
            continue;
        }
        argv[out++] = argv[i];
    }
    argv[out] = NULL;
    *argc = out;
    if (!cfg->upstream[0])
        return fail(err, errlen, "%s", "--upstream URL is required (or CNERIUM_UPSTREAM)");
    if (strncmp(cfg->upstream, "http://", 7) && strncmp(cfg->upstream, "https://", 8))
        return fail(err, errlen, "--upstream must be an http:// or https:// URL, not \"%s\"",
                    cfg->upstream);
    {
        /* host[:port] only: the request's own path goes after it. */
        const char *rest = strstr(cfg->upstream, "//") + 2;
        const char *slash = strchr(rest, '/');
        if (slash && slash[1])
            return fail(err, errlen, "--upstream is http://host:port without a path, not "
                                     "\"%s\"", cfg->upstream);
    }
    return 0;
}

/* ---- the handler ---- */

typedef struct gateway {
    cn_gateway_config_t *cfg;
    pthread_mutex_t mu;                 /* creating the client */
    _Atomic(cn_upstream_t *) upstream;  /* this process's client, once made */
} gateway_t;

static gateway_t the_gateway = {.mu = PTHREAD_MUTEX_INITIALIZER};

/* This process's client, made at its first request: handlers run in the worker
 * processes the supervisor forks, and the supervisor (which never serves) has none to
 * hand down, so whoever holds one made it. After that, one atomic load per request. */
static cn_upstream_t *
client(gateway_t *g)
{
    cn_upstream_t *u = atomic_load_explicit(&g->upstream, memory_order_acquire);

    if (u)
        return u;
    pthread_mutex_lock(&g->mu);
    if (!(u = atomic_load_explicit(&g->upstream, memory_order_relaxed)) &&
        cn__upstream_new(g->cfg->upstream, g->cfg->timeout_ms, g->cfg->max_body, &u) == 0)
        atomic_store_explicit(&g->upstream, u, memory_order_release);
    pthread_mutex_unlock(&g->mu);
    return u;
}

typedef struct headers {
    const char **v; /* name, value pairs */
    size_t n, cap;
    char *xff;      /* owned */
    const char *host;
    const char *forwarded_for;
    const char *connection; /* the request's Connection header: more hop-by-hop names */
    int failed; /* out of memory: the request is not sent short of a header */
} headers_t;

static int
push(headers_t *h, const char *name, const char *value)
{
    if (h->n == h->cap) {
        size_t cap = h->cap ? 2 * h->cap : 16;
        const char **nv = realloc(h->v, 2 * cap * sizeof(*nv));
        if (!nv)
            return -1;
        h->v = nv;
        h->cap = cap;
    }
    h->v[2 * h->n] = name;
    h->v[2 * h->n + 1] = value;
    h->n++;
    return 0;
}

static int
copy_header(const char *name, const char *value, void *arg)
{
    headers_t *h = arg;

    if (!strcasecmp(name, "host")) {
        h->host = value;
        return 0;
    }
    if (!strcasecmp(name, "x-forwarded-for")) {
        h->forwarded_for = value; /* extended below */
        return 0;
    }
    if (cn__upstream_hop_header(name) || !strcasecmp(name, "x-forwarded-proto") ||
        !strcasecmp(name, "x-forwarded-host") ||
        cn__upstream_connection_option(h->connection, name))
        return 0;
    if (push(h, name, value))
        h->failed = 1;
    return h->failed;
}

static int
stored_header(const char *name)
{
    const cn_gateway_config_t *cfg = the_gateway.cfg;

    for (size_t i = 0; i < cfg->nstore_headers; i++)
        if (!strcasecmp(cfg->store_headers[i], name))
            return 1;
    return 0;
}

/* The answer to give for the upstream's result r (borrowed; its body is copied, none for
 * a relayed answer's head). */
static cn_response_t
answer_of(const cn_upstream_result_t *r)
{
    cn_response_t res;
    char detail[256];

    if (r->error == -ETIMEDOUT)
        return cn_problem(504, "The upstream did not answer in time; nothing was stored, "
                               "retry with the same Idempotency-Key");
    if (r->error == -EMSGSIZE)
        return cn_problem(502, "The upstream's answer is larger than --upstream-max-body");
    if (r->error || r->status < 200 || r->status > 599) {
        snprintf(detail, sizeof(detail),
                 "The upstream could not be reached (%s); nothing was stored, retry with "
                 "the same Idempotency-Key",
                 r->error ? r->message : "no final status");
        return cn_problem(502, detail);
    }
    res = cn_raw_response((int)r->status, r->content_type, r->body, r->body_len);
    if (res.status && r->location && cn_response_set_location(&res, r->location))
        cn_response_free(&res);
    /* A header Cnerium cannot send as it came (-EINVAL: not valid text, or one it sets
     * itself) is left out; only running out of memory fails the answer. */
    for (size_t i = 0; res.status && i < r->nheaders; i++) {
        const char *name = r->headers[2 * i], *value = r->headers[2 * i + 1];
        int rc = cn__upstream_connection_option(r->connection, name) ? 0
                 : stored_header(name) ? cn_response_store_header(&res, name, value)
                                     : cn_response_add_header(&res, name, value);
        if (rc == -ENOMEM)
            cn_response_free(&res);
    }
    if (!res.status)
        res = cn_problem(502, "The upstream's answer could not be passed on");
    return res;
}

static void
answered(void *arg, cn_upstream_result_t *r)
{
    cn_response_t res = answer_of(r);

    cn__upstream_result_free(r);
    cn_request_answer(arg, res);
}

/* The headers to send upstream for req (see the top of the file). h->v borrows from req
 * and h; free h->v and h->xff. 0, or -1 when out of memory. */
static int
forward_headers(cn_request_t *req, headers_t *h)
{
    const char *addr = cn_request_client_address(req);

    h->connection = cn_request_header(req, "Connection");
    cn_request_each_header(req, copy_header, h);
    if (h->forwarded_for && addr[0]) {
        size_t n = strlen(h->forwarded_for) + strlen(addr) + 3;
        if ((h->xff = malloc(n)))
            snprintf(h->xff, n, "%s, %s", h->forwarded_for, addr);
    }
    if (h->failed || (h->forwarded_for && addr[0] && !h->xff) ||
        push(h, "X-Forwarded-For",
             h->xff              ? h->xff
             : h->forwarded_for ? h->forwarded_for /* no address of our own to add */
             : addr[0]          ? addr
                                : "unknown") ||
        push(h, "X-Forwarded-Proto", "http") ||
        (h->host && push(h, "X-Forwarded-Host", h->host)))
        return -1;
    return 0;
}

/* A durable route: the request whole, the answer whole (it is stored). */
static cn_response_t
proxy(cn_request_t *req, void *ctx)
{
    gateway_t *g = ctx;
    cn_upstream_t *u = client(g);
    headers_t h = {0};
    size_t blen = 0;
    const char *body = cn_request_body(req, &blen);
    int rc;

    if (!u)
        return cn_problem(502, "The gateway cannot start its upstream client");
    rc = forward_headers(req, &h);
    if (!rc)
        rc = cn__upstream_send(u, cn_request_method(req), cn_request_target(req), h.v, h.n,
                               body, blen, answered, req);
    free(h.v);
    free(h.xff);
    if (rc)
        return cn_problem(502, "The gateway could not send the request upstream");
    return cn_later(req);
}

/* A relayed request's head (or its failure) from the upstream thread. */
static int
relay_head(void *arg, cn_relay_t *relay, cn_upstream_result_t *r, int64_t length)
{
    cn_response_t res = answer_of(r);

    (void)arg;
    if (r->error || res.status != (int)r->status) {
        cn__relay_fail(relay, &res);
        return -1;
    }
    return cn__relay_set_head(relay, &res, length) ? -1 : 0;
}

/* Everything else: passed on in pieces as it comes, both ways. */
static void
relay(void *ctx, cn_request_t *req, cn_relay_t *r)
{
    gateway_t *g = ctx;
    cn_upstream_t *u = client(g);
    headers_t h = {0};
    cn_response_t res;
    int rc = -1;

    if (u && !forward_headers(req, &h))
        rc = cn__upstream_relay(u, cn_request_method(req), cn_request_target(req), h.v, h.n,
                                r, relay_head, NULL);
    free(h.v);
    free(h.xff);
    if (!rc)
        return;
    res = cn_problem(502, u ? "The gateway could not send the request upstream"
                            : "The gateway cannot start its upstream client");
    cn__relay_fail(r, &res);
    cn__relay_far_close(r, 0);
}

int
cn__gateway_register(cn_app_t *app, cn_gateway_config_t *cfg, char *err, size_t errlen)
{
    the_gateway.cfg = cfg;
    for (size_t i = 0; i < cfg->nroutes; i++) {
        const cn_gateway_route_t *r = &cfg->routes[i];
        int rc = cn_durable(app, r->method, r->path, r->operation, proxy, &the_gateway);
        if (rc) {
            snprintf(err, errlen, "route \"%s %s %s\" refused: %s", r->method, r->path,
                     r->operation, cn_strerror(rc));
            return CN_ECONFIG;
        }
    }
    cn__app_relay(app, relay, &the_gateway);
    return 0;
}
