/*
 * fuzz_router - route matching on raw request paths (http/router.c).
 *
 * Input: byte 0 picks the method; when its top bit is set, the bytes up to the first
 * newline are one more pattern to register (the pattern parser gets fuzzed too); the
 * rest is the raw path. The result is checked against a plain reference matcher: the
 * same outcome (match, wrong method with the same Allow set, or not found), a matched
 * route of the right method that no other matching route beats on specificity, literal
 * segments equal to the path's, and every parameter value the percent-decoded segment
 * (or the raw one when its escapes are malformed). Percent-encoding any bytes and
 * decoding them gives them back.
 */
#include <errno.h>
#include <string.h>

#include "cnerium/error.h"
#include "fuzz.h"
#include "http/router.h"

static const struct {
    int method;
    const char *pattern;
} table[] = {
    {CN_METHOD_GET, "/health"},
    {CN_METHOD_GET, "/"},
    {CN_METHOD_POST, "/orders"},
    {CN_METHOD_GET, "/orders/{id}"},
    {CN_METHOD_DELETE, "/orders/{id}"},
    {CN_METHOD_GET, "/orders/export"},
    {CN_METHOD_GET, "/orders/{id}/items/{item}"},
    {CN_METHOD_PUT, "/{tenant}/orders/{id}"},
    {CN_METHOD_POST, "/{tenant}/orders/{id}"},
    {CN_METHOD_GET, "/{a}/{b}/{c}/{d}/{e}/{f}/{g}/{h}"},
    {CN_METHOD_GET, "/x/y/z/{p}/w"},
};

static cn_response_t
handler(cn_request_t *req, void *ctx)
{
    return (cn_response_t){0};
}

static int
is_param(const char *seg)
{
    size_t n = strlen(seg);

    return n >= 2 && seg[0] == '{' && seg[n - 1] == '}';
}

/* The reference: splits like the router documents (segments between '/', the first byte
 * skipped), -1 past CN_ROUTE_MAX_SEGMENTS. */
static int
split(const char *path, size_t len, const char **seg, size_t *seglen)
{
    size_t n = 0, start = 1;

    if (len <= 1)
        return 0;
    for (size_t i = 1; i <= len; i++) {
        if (i == len || path[i] == '/') {
            if (n == CN_ROUTE_MAX_SEGMENTS)
                return -1;
            seg[n] = path + start;
            seglen[n++] = i - start;
            start = i + 1;
        }
    }
    return (int)n;
}

static int
matches(const cn_route_t *rt, const char **seg, const size_t *seglen, int n)
{
    if (n < 0 || rt->nsegments != (size_t)n)
        return 0;
    for (int i = 0; i < n; i++) {
        const char *s = rt->segments[i];
        if (is_param(s) ? seglen[i] == 0 : strlen(s) != seglen[i] || memcmp(s, seg[i], seglen[i]))
            return 0;
    }
    return 1;
}

/* 1 when a beats b: a literal where b has a parameter, at the first place they differ. */
static int
beats(const cn_route_t *a, const cn_route_t *b)
{
    for (size_t i = 0; i < a->nsegments; i++) {
        int pa = is_param(a->segments[i]), pb = is_param(b->segments[i]);
        if (pa != pb)
            return pb;
    }
    return 0;
}

static void
check_url_decode(const uint8_t *data, size_t size)
{
    static const char hex[] = "0123456789ABCDEF";
    char *enc = malloc(3 * size + 1), *dec = malloc(3 * size + 1);

    FUZZ_CHECK(enc && dec);
    for (size_t i = 0; i < size; i++) {
        enc[3 * i] = '%';
        enc[3 * i + 1] = hex[data[i] >> 4];
        enc[3 * i + 2] = hex[data[i] & 15];
    }
    FUZZ_CHECK(cn__url_decode(enc, 3 * size, dec, 1) == (long)size);
    FUZZ_CHECK(!memcmp(dec, data, size) && dec[size] == '\0');
    /* Decoding never writes more than it reads. */
    long n = cn__url_decode((const char *)data, size, enc, 1);
    FUZZ_CHECK(n <= (long)size);
    free(enc);
    free(dec);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const int methods[] = {0, CN_METHOD_GET, CN_METHOD_POST, CN_METHOD_PUT,
                                  CN_METHOD_DELETE};
    const char *seg[CN_ROUTE_MAX_SEGMENTS];
    size_t seglen[CN_ROUTE_MAX_SEGMENTS], count;
    const char *path;
    size_t len;
    cn_router_t *r;
    cn_route_match_t m;
    int method, n, rc, allowed = 0, any_with_method = 0;

    if (size < 1)
        return 0;
    method = methods[data[0] % 5];
    FUZZ_CHECK(cn__router_new(&r) == 0);
    for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++)
        FUZZ_CHECK(cn__router_add(r, table[i].method, table[i].pattern, NULL, handler, NULL) ==
                   0);
    path = (const char *)data + 1;
    len = size - 1;
    if (data[0] & 0x80) {
        const char *nl = memchr(path, '\n', len);
        if (nl) {
            char *pattern = fuzz_strndup(path, (size_t)(nl - path));
            FUZZ_CHECK(pattern);
            rc = cn__router_add(r, method ? method : CN_METHOD_GET, pattern, "op", handler,
                                NULL);
            FUZZ_CHECK(rc == 0 || rc == -EINVAL);
            free(pattern);
            len -= (size_t)(nl - path) + 1;
            path = nl + 1;
        }
    }

    count = cn__router_count(r);
    n = split(path, len, seg, seglen);
    for (size_t i = 0; i < count; i++) {
        const cn_route_t *rt = cn__router_route(r, i);
        if (matches(rt, seg, seglen, n)) {
            allowed |= rt->method;
            any_with_method |= rt->method == method;
        }
    }

    rc = cn__router_match(r, method, path, len, &m);
    if (!allowed) {
        FUZZ_CHECK(rc == CN_ENOTFOUND);
    } else if (!any_with_method) {
        FUZZ_CHECK(rc == CN_EMETHOD);
        FUZZ_CHECK(m.allowed == allowed);
    } else {
        size_t np = 0;
        FUZZ_CHECK(rc == 0);
        FUZZ_CHECK(m.route && m.route->method == method);
        FUZZ_CHECK(matches(m.route, seg, seglen, n));
        for (size_t i = 0; i < count; i++) {
            const cn_route_t *rt = cn__router_route(r, i);
            if (rt != m.route && rt->method == method && matches(rt, seg, seglen, n))
                FUZZ_CHECK(!beats(rt, m.route));
        }
        for (size_t i = 0; i < m.route->nsegments; i++) {
            char *dec;
            long dl;
            if (!is_param(m.route->segments[i]))
                continue;
            FUZZ_CHECK(np < m.nparams);
            FUZZ_CHECK(m.params[np].name && m.params[np].value);
            dec = malloc(seglen[i] + 1);
            FUZZ_CHECK(dec);
            dl = cn__url_decode(seg[i], seglen[i], dec, 0);
            if (dl < 0)
                FUZZ_CHECK(!memcmp(m.params[np].value, seg[i], seglen[i]) &&
                           m.params[np].value[seglen[i]] == '\0');
            else
                FUZZ_CHECK(!memcmp(m.params[np].value, dec, (size_t)dl + 1));
            free(dec);
            np++;
        }
        FUZZ_CHECK(np == m.nparams);
        cn__route_match_clear(&m);
    }
    cn__router_free(r);
    check_url_decode((const uint8_t *)path, len);
    return 0;
}
