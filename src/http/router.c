/*
 * http/router.c - the route table (see router.h). Routes are few and matched by a linear
 * scan, segment by segment, without copying the path.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cnerium/error.h"
#include "http/router.h"

struct cn_router {
    cn_route_t **routes;
    size_t n, cap;
};

int
cn__method_from_string(const char *m)
{
    if (!strcmp(m, "GET") || !strcmp(m, "HEAD"))
        return CN_METHOD_GET;
    if (!strcmp(m, "POST"))
        return CN_METHOD_POST;
    if (!strcmp(m, "PUT"))
        return CN_METHOD_PUT;
    if (!strcmp(m, "DELETE"))
        return CN_METHOD_DELETE;
    if (!strcmp(m, "PATCH"))
        return CN_METHOD_PATCH;
    return 0;
}

const char *
cn__method_name(int method)
{
    switch (method) {
    case CN_METHOD_GET:
        return "GET";
    case CN_METHOD_POST:
        return "POST";
    case CN_METHOD_PUT:
        return "PUT";
    case CN_METHOD_DELETE:
        return "DELETE";
    case CN_METHOD_PATCH:
        return "PATCH";
    default:
        return "";
    }
}

int
cn__router_new(cn_router_t **out)
{
    cn_router_t *r = calloc(1, sizeof(*r));

    if (!r)
        return -ENOMEM;
    *out = r;
    return 0;
}

static void
route_free(cn_route_t *rt)
{
    if (!rt)
        return;
    for (size_t i = 0; i < rt->nsegments; i++) {
        free(rt->segments[i]);
        free(rt->names[i]);
    }
    free(rt->pattern);
    free(rt->operation);
    free(rt);
}

void
cn__router_free(cn_router_t *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->n; i++)
        route_free(r->routes[i]);
    free(r->routes);
    free(r);
}

static int
is_param(const char *seg)
{
    return seg[0] == '{';
}

/* Splits pattern into rt->segments. "/" has zero segments; "/a/" has "a" and "". */
static int
split_pattern(cn_route_t *rt, const char *pattern)
{
    const char *p = pattern + 1;
    size_t nparams = 0;

    if (!*p)
        return 0;
    for (;;) {
        const char *end = strchr(p, '/');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        char *seg;

        if (rt->nsegments == CN_ROUTE_MAX_SEGMENTS)
            return -EINVAL;
        if (len && p[0] == '{') {
            if (len < 3 || p[len - 1] != '}' || memchr(p + 1, '{', len - 2) ||
                memchr(p + 1, '}', len - 2) || ++nparams > CN_ROUTE_MAX_PARAMS)
                return -EINVAL;
        } else if (memchr(p, '{', len) || memchr(p, '}', len)) {
            return -EINVAL;
        }
        if (!(seg = strndup(p, len)))
            return -ENOMEM;
        rt->segments[rt->nsegments++] = seg;
        if (len && p[0] == '{' && !(rt->names[rt->nsegments - 1] = strndup(p + 1, len - 2)))
            return -ENOMEM;
        if (!end)
            return 0;
        p = end + 1;
    }
}

/* Two patterns are the same route when their segments match with any parameter names. */
static int
same_shape(const cn_route_t *a, const cn_route_t *b)
{
    if (a->nsegments != b->nsegments)
        return 0;
    for (size_t i = 0; i < a->nsegments; i++) {
        if (is_param(a->segments[i]) != is_param(b->segments[i]))
            return 0;
        if (!is_param(a->segments[i]) && strcmp(a->segments[i], b->segments[i]))
            return 0;
    }
    return 1;
}

int
cn__router_add(cn_router_t *r, int method, const char *pattern, const char *operation,
               cn_handler_cb handler, void *ctx)
{
    cn_route_t *rt;
    int rc;

    if (!pattern || pattern[0] != '/' || !handler || !method)
        return -EINVAL;
    if (!(rt = calloc(1, sizeof(*rt))))
        return -ENOMEM;
    rt->method = method;
    rt->handler = handler;
    rt->ctx = ctx;
    if (!(rt->pattern = strdup(pattern)) || (operation && !(rt->operation = strdup(operation)))) {
        rc = -ENOMEM;
        goto fail;
    }
    if ((rc = split_pattern(rt, pattern)))
        goto fail;
    for (size_t i = 0; i < r->n; i++) {
        if (r->routes[i]->method == method && same_shape(r->routes[i], rt)) {
            rc = -EINVAL;
            goto fail;
        }
    }
    if (r->n == r->cap) {
        size_t cap = r->cap ? 2 * r->cap : 16;
        cn_route_t **routes = realloc(r->routes, cap * sizeof(*routes));
        if (!routes) {
            rc = -ENOMEM;
            goto fail;
        }
        r->routes = routes;
        r->cap = cap;
    }
    r->routes[r->n++] = rt;
    return 0;

fail:
    route_free(rt);
    return rc;
}

/* Splits the raw path into segments (pointers into path). Returns the count, or -1 when
 * there are too many. */
static int
split_path(const char *path, size_t len, const char **seg, size_t *seglen)
{
    size_t n = 0, i = 1, start = 1;

    if (len <= 1)
        return 0;
    for (; i <= len; i++) {
        if (i == len || path[i] == '/') {
            if (n == CN_ROUTE_MAX_SEGMENTS)
                return -1;
            seg[n] = path + start;
            seglen[n] = i - start;
            n++;
            start = i + 1;
        }
    }
    return (int)n;
}

/* Compares two matching routes: positive when a is more specific than b. */
static int
specificity(const cn_route_t *a, const cn_route_t *b)
{
    for (size_t i = 0; i < a->nsegments; i++) {
        int pa = is_param(a->segments[i]), pb = is_param(b->segments[i]);
        if (pa != pb)
            return pb - pa;
    }
    return 0;
}

static int
route_matches(const cn_route_t *rt, const char **seg, const size_t *seglen, size_t n)
{
    if (rt->nsegments != n)
        return 0;
    for (size_t i = 0; i < n; i++) {
        const char *s = rt->segments[i];
        if (is_param(s)) {
            if (seglen[i] == 0)
                return 0; /* a parameter is never empty */
        } else if (strlen(s) != seglen[i] || memcmp(s, seg[i], seglen[i])) {
            return 0;
        }
    }
    return 1;
}

static int
hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = (char)(c | 32);
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

long
cn__url_decode(const char *src, size_t len, char *dst, int plus_is_space)
{
    size_t o = 0;

    for (size_t i = 0; i < len; i++) {
        char c = src[i];
        if (c == '%') {
            int hi, lo;
            if (i + 2 >= len)
                return -1;
            hi = hexval(src[i + 1]);
            lo = hexval(src[i + 2]);
            if (hi < 0 || lo < 0)
                return -1;
            dst[o++] = (char)(hi << 4 | lo);
            i += 2;
        } else if (c == '+' && plus_is_space) {
            dst[o++] = ' ';
        } else {
            dst[o++] = c;
        }
    }
    dst[o] = '\0';
    return (long)o;
}

int
cn__router_match(const cn_router_t *r, int method, const char *path, size_t len,
                 cn_route_match_t *m)
{
    const char *seg[CN_ROUTE_MAX_SEGMENTS];
    size_t seglen[CN_ROUTE_MAX_SEGMENTS];
    const cn_route_t *best = NULL;
    int n = split_path(path, len, seg, seglen), allowed = 0;

    memset(m, 0, sizeof(*m));
    if (n < 0)
        return CN_ENOTFOUND;
    for (size_t i = 0; i < r->n; i++) {
        const cn_route_t *rt = r->routes[i];
        if (!route_matches(rt, seg, seglen, (size_t)n))
            continue;
        allowed |= rt->method;
        if (rt->method == method && (!best || specificity(rt, best) > 0))
            best = rt;
    }
    if (!best) {
        m->allowed = allowed;
        return allowed ? CN_EMETHOD : CN_ENOTFOUND;
    }
    m->route = best;
    for (size_t i = 0; i < best->nsegments; i++) {
        const char *s = best->segments[i];
        cn_route_param_t *p;
        if (!is_param(s))
            continue;
        p = &m->params[m->nparams];
        p->value = malloc(seglen[i] + 1);
        if (!p->value) {
            cn__route_match_clear(m);
            return -ENOMEM;
        }
        m->nparams++;
        p->name = best->names[i];
        if (cn__url_decode(seg[i], seglen[i], p->value, 0) < 0) {
            /* A malformed escape is kept literally rather than rejected. */
            memcpy(p->value, seg[i], seglen[i]);
            p->value[seglen[i]] = '\0';
        }
    }
    return 0;
}

void
cn__route_match_clear(cn_route_match_t *m)
{
    for (size_t i = 0; i < m->nparams; i++)
        free(m->params[i].value);
    memset(m, 0, sizeof(*m));
}

void
cn__router_allow(int allowed, char *buf, size_t cap)
{
    static const struct {
        int bit;
        const char *names;
    } methods[] = {{CN_METHOD_GET, "GET, HEAD"},
                   {CN_METHOD_POST, "POST"},
                   {CN_METHOD_PUT, "PUT"},
                   {CN_METHOD_DELETE, "DELETE"},
                   {CN_METHOD_PATCH, "PATCH"}};
    size_t off = 0;

    buf[0] = '\0';
    for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++) {
        if (!(allowed & methods[i].bit))
            continue;
        int w = snprintf(buf + off, cap - off, "%s%s", off ? ", " : "", methods[i].names);
        if (w < 0 || (size_t)w >= cap - off)
            return;
        off += (size_t)w;
    }
}

size_t
cn__router_count(const cn_router_t *router)
{
    return router->n;
}

cn_route_t *
cn__router_route(cn_router_t *router, size_t i)
{
    return i < router->n ? router->routes[i] : NULL;
}
