/*
 * http/request.c - the request object: target parsing, headers, body, query and route
 * parameters, lazily parsed JSON. No HTTP library type appears here; the adapter fills
 * the object through the cn__request_* functions.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cnerium/error.h"
#include "cnerium/request.h"
#include "http/request_internal.h"
#include "realtime/event.h"

int
cn__request_init(cn_request_t *req, const char *method, const char *target)
{
    const char *q;
    size_t n = strlen(method);

    memset(req, 0, sizeof(*req));
    req->events_tail = &req->events;
    req->query = "";
    if (n >= sizeof(req->method) || !target || target[0] != '/')
        return -EINVAL;
    memcpy(req->method, method, n + 1);
    if (!(req->target = strdup(target)))
        return -ENOMEM;
    q = strchr(req->target, '?');
    req->path = q ? strndup(req->target, (size_t)(q - req->target)) : strdup(req->target);
    if (!req->path)
        return -ENOMEM;
    if (q) {
        req->query = q + 1;
        req->query_len = strlen(q + 1);
    }
    if (!(req->body = malloc(1)))
        return -ENOMEM;
    req->body[0] = '\0';
    req->body_cap = 1;
    return 0;
}

void
cn__request_destroy(cn_request_t *req)
{
    free(req->target);
    free(req->path);
    free(req->headers);
    free(req->body);
    for (size_t i = 0; i < req->nqparams; i++) {
        free(req->qparams[i].name);
        free(req->qparams[i].value);
    }
    free(req->qparams);
    cJSON_Delete(req->json);
    cn__route_match_clear(&req->match);
    cn__events_free(req->events);
    memset(req, 0, sizeof(*req));
}

int
cn__request_add_header(cn_request_t *req, const char *name, const char *value)
{
    if (req->nheaders == req->headers_cap) {
        size_t cap = req->headers_cap ? 2 * req->headers_cap : 16;
        cn_request_header_t *h = realloc(req->headers, cap * sizeof(*h));
        if (!h)
            return -ENOMEM;
        req->headers = h;
        req->headers_cap = cap;
    }
    req->headers[req->nheaders].name = name;
    req->headers[req->nheaders].value = value;
    req->nheaders++;
    return 0;
}

size_t
cn__request_header_count(const cn_request_t *req, const char *name, const char **first)
{
    size_t count = 0;

    for (size_t i = 0; i < req->nheaders; i++) {
        if (strcasecmp(req->headers[i].name, name))
            continue;
        if (count++ == 0 && first)
            *first = req->headers[i].value;
    }
    return count;
}

int
cn__request_append_body(cn_request_t *req, const void *data, size_t len, size_t max)
{
    if (len > max || req->body_len > max - len)
        return CN_ETOOBIG;
    if (req->body_len + len + 1 > req->body_cap) {
        size_t cap = req->body_cap;
        char *b;
        while (cap < req->body_len + len + 1)
            cap = cap < 4096 ? 4096 : 2 * cap;
        if (!(b = realloc(req->body, cap)))
            return -ENOMEM;
        req->body = b;
        req->body_cap = cap;
    }
    memcpy(req->body + req->body_len, data, len);
    req->body_len += len;
    req->body[req->body_len] = '\0';
    return 0;
}

const char *
cn_request_method(const cn_request_t *req)
{
    return req->method;
}

const char *
cn_request_path(const cn_request_t *req)
{
    return req->path;
}

const char *
cn_request_target(const cn_request_t *req)
{
    return req->target;
}

const char *
cn_request_query_string(const cn_request_t *req)
{
    return req->query;
}

/* Splits the query string on '&' into decoded (name, value) pairs. */
static int
parse_query(cn_request_t *req)
{
    const char *p = req->query, *end = req->query + req->query_len;
    size_t n = 1;

    for (const char *c = p; c < end; c++)
        n += *c == '&';
    req->qparams = calloc(n, sizeof(*req->qparams));
    if (!req->qparams)
        return -ENOMEM;
    while (p < end) {
        const char *amp = memchr(p, '&', (size_t)(end - p)), *eq;
        size_t len = amp ? (size_t)(amp - p) : (size_t)(end - p), nlen, vlen;
        cn_query_param_t *qp = &req->qparams[req->nqparams];

        if (len == 0) {
            p += 1;
            continue;
        }
        eq = memchr(p, '=', len);
        nlen = eq ? (size_t)(eq - p) : len;
        vlen = eq ? len - nlen - 1 : 0;
        qp->name = malloc(nlen + 1);
        qp->value = malloc(vlen + 1);
        if (!qp->name || !qp->value) {
            free(qp->name);
            free(qp->value);
            return -ENOMEM;
        }
        /* Malformed escapes are kept literally: a query parameter is the app's to judge. */
        if (cn__url_decode(p, nlen, qp->name, 1) < 0) {
            memcpy(qp->name, p, nlen);
            qp->name[nlen] = '\0';
        }
        if (cn__url_decode(eq ? eq + 1 : "", vlen, qp->value, 1) < 0) {
            memcpy(qp->value, eq + 1, vlen);
            qp->value[vlen] = '\0';
        }
        req->nqparams++;
        p += len + 1;
    }
    return 0;
}

const char *
cn_request_query(const cn_request_t *creq, const char *name)
{
    /* Parsing is a cache fill: the request is logically unchanged. */
    cn_request_t *req = (cn_request_t *)creq;

    if (!req->qparams_parsed) {
        if (parse_query(req))
            return NULL;
        req->qparams_parsed = 1;
    }
    for (size_t i = 0; i < req->nqparams; i++) {
        if (!strcmp(req->qparams[i].name, name))
            return req->qparams[i].value;
    }
    return NULL;
}

const char *
cn_request_param(const cn_request_t *req, const char *name)
{
    for (size_t i = 0; i < req->match.nparams; i++) {
        if (!strcmp(req->match.params[i].name, name))
            return req->match.params[i].value;
    }
    return NULL;
}

const char *
cn_request_header(const cn_request_t *req, const char *name)
{
    const char *v = NULL;

    cn__request_header_count(req, name, &v);
    return v;
}

const char *
cn_request_body(const cn_request_t *req, size_t *len)
{
    if (len)
        *len = req->body_len;
    return req->body;
}

const cJSON *
cn_request_json(cn_request_t *req)
{
    if (!req->json_parsed) {
        req->json_parsed = 1;
        req->json = cJSON_ParseWithLength(req->body, req->body_len);
    }
    return req->json;
}

const char *
cn_request_idempotency_key(const cn_request_t *req)
{
    return req->is_durable ? req->key : NULL;
}

const char *
cn_request_operation(const cn_request_t *req)
{
    return req->is_durable ? req->operation : NULL;
}

const char *
cn_request_fingerprint(const cn_request_t *req)
{
    return req->is_durable ? req->fingerprint_hex : NULL;
}
