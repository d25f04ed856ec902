/*
 * http/request.c - the request object: target parsing, headers, body, query and route
 * parameters, lazily parsed JSON. No HTTP library type appears here; the adapter fills
 * the object through the cn__request_* functions.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cnerium/error.h"
#include "cnerium/request.h"
#include "http/request_internal.h"
#include "realtime/event.h"
#include "stream/stream.h"
#include "support/utf8.h"

/* The origin-form part of an absolute-form target (RFC 9112 3.2.2): what follows the
 * authority of an http or https URI, "/" when nothing does. NULL for any other form. */
static const char *
origin_form(const char *target, int *need_slash)
{
    const char *p, *authority;

    *need_slash = 0;
    if (target[0] == '/')
        return target;
    if (!strncasecmp(target, "http://", 7))
        p = target + 7;
    else if (!strncasecmp(target, "https://", 8))
        p = target + 8;
    else
        return NULL;
    /* The authority: at least one byte, no userinfo (RFC 9110 4.2.4 forbids it in http
     * URIs), and nothing a URI never holds. */
    authority = p;
    if (*p == '\0' || *p == '/' || *p == '?' || *p == '#')
        return NULL;
    while (*p && *p != '/' && *p != '?') {
        unsigned char c = (unsigned char)*p++;
        if (c == '@' || c == '#' || c <= 0x20 || c >= 0x7f)
            return NULL;
    }
    /* An IP literal is bracketed, and only one (RFC 3986 3.2.2). */
    if (memchr(authority, '[', (size_t)(p - authority)) &&
        (authority[0] != '[' || !memchr(authority, ']', (size_t)(p - authority))))
        return NULL;
    if (*p != '/')
        *need_slash = 1; /* "http://host" or "http://host?q" */
    return p;
}

int
cn__request_init(cn_request_t *req, const char *method, const char *target)
{
    const char *q, *origin;
    size_t n = strlen(method);
    int need_slash;

    memset(req, 0, sizeof(*req));
    req->events_tail = &req->events;
    req->query = "";
    if (n == 0 || n >= sizeof(req->method) || !target ||
        !(origin = origin_form(target, &need_slash)))
        return -EINVAL;
    memcpy(req->method, method, n + 1);
    if (need_slash) {
        size_t len = strlen(origin);
        if ((req->target = malloc(len + 2))) {
            req->target[0] = '/';
            memcpy(req->target + 1, origin, len + 1);
        }
    } else {
        req->target = strdup(origin);
    }
    if (!req->target)
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
    for (size_t i = 0; i < req->nheaders; i++)
        free(req->headers[i].owned);
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
    cn__appends_free(req->appends);
    memset(req, 0, sizeof(*req));
}

/* RFC 9110 5.6.2: tchar. */
static int
is_tchar(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return 1;
    return c && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

int
cn__http_token_valid(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (!is_tchar((unsigned char)s[i]))
            return 0;
    }
    return n > 0;
}

int
cn__request_add_header(cn_request_t *req, const char *name, size_t name_len,
                       const char *value, size_t value_len, const char **why)
{
    cn_request_header_t *h;
    char *owned = NULL;

    if (name_len == 0)
        return *why = "A header field has an empty name", -EINVAL;
    for (size_t i = 0; i < name_len; i++) {
        if (!is_tchar((unsigned char)name[i]))
            return *why = "A header field name contains a space or a character that is "
                          "not allowed in a field name", -EINVAL;
    }
    for (size_t i = 0; i < value_len; i++) {
        unsigned char c = (unsigned char)value[i];
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            return *why = "A header field value contains a control character", -EINVAL;
    }
    /* The field value excludes surrounding whitespace (RFC 9110 5.5). */
    while (value_len && (*value == ' ' || *value == '\t'))
        value++, value_len--;
    if (value_len && (value[value_len - 1] == ' ' || value[value_len - 1] == '\t')) {
        while (value_len && (value[value_len - 1] == ' ' || value[value_len - 1] == '\t'))
            value_len--;
        if (!(owned = strndup(value, value_len)))
            return -ENOMEM;
        value = owned;
    }
    if (req->nheaders == req->headers_cap) {
        size_t cap = req->headers_cap ? 2 * req->headers_cap : 16;
        h = realloc(req->headers, cap * sizeof(*h));
        if (!h) {
            free(owned);
            return -ENOMEM;
        }
        req->headers = h;
        req->headers_cap = cap;
    }
    h = &req->headers[req->nheaders++];
    h->name = name;
    h->value = value;
    h->owned = owned;
    return 0;
}

int
cn__media_type_is_json(const char *ct)
{
    const char *end, *slash;
    size_t n;

    if (!ct)
        return 0;
    while (*ct == ' ' || *ct == '\t')
        ct++;
    end = ct + strcspn(ct, ";");
    while (end > ct && (end[-1] == ' ' || end[-1] == '\t'))
        end--;
    n = (size_t)(end - ct);
    if (n < 12 || strncasecmp(ct, "application/", 12))
        return 0;
    slash = ct + 12;
    if (n == 16 && !strncasecmp(slash, "json", 4))
        return 1;
    /* Structured syntax suffix (RFC 6839): application/problem+json and the like. */
    return n > 17 && !strncasecmp(end - 5, "+json", 5);
}

int
cn__request_body_must_be_utf8(const cn_request_t *req)
{
    /* Every Content-Type is looked at: a JSON one anywhere declares the body JSON. */
    for (size_t i = 0; req->body_len && i < req->nheaders; i++) {
        if (!strcasecmp(req->headers[i].name, "Content-Type") &&
            cn__media_type_is_json(req->headers[i].value))
            return 1;
    }
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
        /* JSON text is UTF-8 (RFC 8259 8.1); cJSON would pass invalid bytes through into
         * strings that end up in stored responses and events. */
        if (cn__utf8_valid(req->body, req->body_len))
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

/* ---- answering later ---- */

/* One lock for every request of the process: it is held for a few instructions, when a
 * handler that answers later returns and when its answer comes. */
static pthread_mutex_t later_mu = PTHREAD_MUTEX_INITIALIZER;

cn_response_t
cn_later(cn_request_t *req)
{
    cn_response_t none;

    memset(&none, 0, sizeof(none));
    pthread_mutex_lock(&later_mu);
    req->later = 1;
    pthread_mutex_unlock(&later_mu);
    return none;
}

int
cn__request_later_wait(cn_request_t *req, void (*fn)(void *arg, cn_request_t *req,
                                                     cn_response_t res),
                       void *arg, cn_response_t *res)
{
    int answered;

    pthread_mutex_lock(&later_mu);
    if ((answered = req->later_answered)) {
        *res = req->later_early;
        memset(&req->later_early, 0, sizeof(req->later_early));
    } else {
        req->later_fn = fn;
        req->later_arg = arg;
    }
    req->later = 0;
    req->later_answered = 0;
    pthread_mutex_unlock(&later_mu);
    return answered;
}

void
cn_request_answer(cn_request_t *req, cn_response_t res)
{
    void (*fn)(void *, cn_request_t *, cn_response_t);
    void *arg;

    pthread_mutex_lock(&later_mu);
    fn = req->later_fn;
    arg = req->later_arg;
    if (!fn) {
        /* The handler has not returned yet: it takes the answer when it does. */
        req->later_early = res;
        req->later_answered = 1;
        pthread_mutex_unlock(&later_mu);
        return;
    }
    req->later_fn = NULL;
    req->later_arg = NULL;
    pthread_mutex_unlock(&later_mu);
    fn(arg, req, res);
}

const char *
cn_request_client_address(const cn_request_t *req)
{
    return req->client_addr;
}

void
cn_request_each_header(const cn_request_t *req,
                       int (*fn)(const char *name, const char *value, void *arg), void *arg)
{
    for (size_t i = 0; i < req->nheaders; i++)
        if (fn(req->headers[i].name, req->headers[i].value, arg))
            return;
}
