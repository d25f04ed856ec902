/*
 * tests/unit/test_router.c - the route table: literal and parameter matching on the raw
 * path, decoding of parameter values, precedence, 404/405, the Allow header, pattern
 * validation and URL decoding.
 */
#include <errno.h>
#include <string.h>

#include "cnerium/error.h"
#include "http/router.h"
#include "unit.h"

static int ctx_a, ctx_b, ctx_c;

static cn_response_t
handler_a(cn_request_t *req, void *ctx)
{
    cn_response_t r;
    (void)req;
    (void)ctx;
    memset(&r, 0, sizeof(r));
    r.status = 200;
    return r;
}

static cn_response_t
handler_b(cn_request_t *req, void *ctx)
{
    cn_response_t r;
    (void)req;
    (void)ctx;
    memset(&r, 0, sizeof(r));
    r.status = 201;
    return r;
}

static cn_router_t *
new_router(void)
{
    cn_router_t *r = NULL;

    CU_ASSERT_EQUAL_FATAL(cn__router_new(&r), 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    return r;
}

static int
match(const cn_router_t *r, int method, const char *path, cn_route_match_t *m)
{
    return cn__router_match(r, method, path, strlen(path), m);
}

static const char *
param(const cn_route_match_t *m, const char *name)
{
    for (size_t i = 0; i < m->nparams; i++) {
        if (!strcmp(m->params[i].name, name))
            return m->params[i].value;
    }
    return NULL;
}

static void
test_literal_match(void)
{
    cn_router_t *r = new_router();
    cn_route_match_t m;

    CU_ASSERT_EQUAL_FATAL(cn__router_add(r, CN_METHOD_GET, "/health", NULL, handler_a, &ctx_a), 0);
    CU_ASSERT_EQUAL_FATAL(
        cn__router_add(r, CN_METHOD_POST, "/orders", "orders.create", handler_b, &ctx_b), 0);

    CU_ASSERT_EQUAL_FATAL(match(r, CN_METHOD_GET, "/health", &m), 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(m.route);
    CU_ASSERT_PTR_EQUAL(m.route->handler, handler_a);
    CU_ASSERT_PTR_EQUAL(m.route->ctx, &ctx_a);
    CU_ASSERT_PTR_NULL(m.route->operation);
    CU_ASSERT_STRING_EQUAL(m.route->pattern, "/health");
    CU_ASSERT_EQUAL(m.nparams, 0);
    cn__route_match_clear(&m);

    CU_ASSERT_EQUAL_FATAL(match(r, CN_METHOD_POST, "/orders", &m), 0);
    CU_ASSERT_PTR_EQUAL(m.route->handler, handler_b);
    CU_ASSERT_PTR_EQUAL(m.route->ctx, &ctx_b);
    CU_ASSERT_STRING_EQUAL(m.route->operation, "orders.create");
    cn__route_match_clear(&m);

    /* Literal segments compare exactly (case-sensitive, whole segment). */
    CU_ASSERT_EQUAL(match(r, CN_METHOD_GET, "/Health", &m), CN_ENOTFOUND);
    CU_ASSERT_EQUAL(match(r, CN_METHOD_GET, "/healthz", &m), CN_ENOTFOUND);
    CU_ASSERT_EQUAL(match(r, CN_METHOD_GET, "/healt", &m), CN_ENOTFOUND);
    CU_ASSERT_EQUAL(match(r, CN_METHOD_GET, "/health/x", &m), CN_ENOTFOUND);
    cn__router_free(r);
}

static void
test_pattern_copied(void)
{
    cn_router_t *r = new_router();
    cn_route_match_t m;
    char pattern[] = "/copy/{id}", op[] = "copy.op";

    CU_ASSERT_EQUAL_FATAL(cn__router_add(r, CN_METHOD_POST, pattern, op, handler_a, NULL), 0);
    memset(pattern, 'x', sizeof(pattern) - 1);
    memset(op, 'x', sizeof(op) - 1);
    CU_ASSERT_EQUAL_FATAL(match(r, CN_METHOD_POST, "/copy/1", &m), 0);
    CU_ASSERT_STRING_EQUAL(m.route->pattern, "/copy/{id}");
    CU_ASSERT_STRING_EQUAL(m.route->operation, "copy.op");
    cn__route_match_clear(&m);
    cn__router_free(r);
}

static void
test_param_match(void)
{
    cn_router_t *r = new_router();
    cn_route_match_t m;

    CU_ASSERT_EQUAL_FATAL(cn__router_add(r, CN_METHOD_GET, "/orders/{id}", NULL, handler_a, NULL),
                          0);
    CU_ASSERT_EQUAL_FATAL(
        cn__router_add(r, CN_METHOD_GET, "/users/{uid}/orders/{oid}", NULL, handler_b, NULL), 0);

    CU_ASSERT_EQUAL_FATAL(match(r, CN_METHOD_GET, "/orders/42", &m), 0);
    CU_ASSERT_EQUAL(m.nparams, 1);
    CU_ASSERT_STRING_EQUAL(m.params[0].name, "id");
    CU_ASSERT_STRING_EQUAL(m.params[0].value, "42");
    cn__route_match_clear(&m);
    CU_ASSERT_EQUAL(m.nparams, 0);

    CU_ASSERT_EQUAL_FATAL(match(r, CN_METHOD_GET, "/orders/a%20b", &m), 0);
    CU_ASSERT_STRING_EQUAL(param(&m, "id"), "a b");
    cn__route_match_clear(&m);

    /* '+' is not a space in a path. */
    CU_ASSERT_EQUAL_FATAL(match(r, CN_METHOD_GET, "/orders/a+b", &m), 0);
    CU_ASSERT_STRING_EQUAL(param(&m, "id"), "a+b");
    cn__route_match_clear(&m);

    /* An encoded slash stays inside its segment and decodes to '/'. */
    CU_ASSERT_EQUAL_FATAL(match(r, CN_METHOD_GET, "/orders/a%2Fb", &m), 0);
    CU_ASSERT_PTR_EQUAL(m.route->handler, handler_a);
    CU_ASSERT_STRING_EQUAL(param(&m, "id"), "a/b");
    cn__route_match_clear(&m);
    CU_ASSERT_EQUAL_FATAL(match(r, CN_METHOD_GET, "/orders/%2f", &m), 0);
    CU_ASSERT_STRING_EQUAL(param(&m, "id"), "/");
    cn__route_match_clear(&m);

    /* Pinned: a malformed escape in a parameter is kept literally, not rejected. */
    CU_ASSERT_EQUAL_FATAL(match(r, CN_METHOD_GET, "/orders/%zz", &m), 0);
    CU_ASSERT_STRING_EQUAL(param(&m, "id"), "%zz");
    cn__route_match_clear(&m);

    CU_ASSERT_EQUAL_FATAL(match(r, CN_METHOD_GET, "/users/u%3A1/orders/o-2", &m), 0);
    CU_ASSERT_PTR_EQUAL(m.route->handler, handler_b);
    CU_ASSERT_EQUAL(m.nparams, 2);
    CU_ASSERT_STRING_EQUAL(m.params[0].name, "uid");
    CU_ASSERT_STRING_EQUAL(m.params[0].value, "u:1");
    CU_ASSERT_STRING_EQUAL(m.params[1].name, "oid");
    CU_ASSERT_STRING_EQUAL(m.params[1].value, "o-2");
    cn__route_match_clear(&m);

    /* A parameter spans one segment only. */
    CU_ASSERT_EQUAL(match(r, CN_METHOD_GET, "/orders/a/b", &m), CN_ENOTFOUND);
    cn__router_free(r);
}

static void
test_match_uses_len(void)
{
    cn_router_t *r = new_router();
    cn_route_match_t m;
    static const char target[] = "/orders/42?dry_run=1";

    CU_ASSERT_EQUAL_FATAL(cn__router_add(r, CN_METHOD_GET, "/orders/{id}", NULL, handler_a, NULL),
                          0);
    CU_ASSERT_EQUAL_FATAL(cn__router_match(r, CN_METHOD_GET, target, 10, &m), 0);
    CU_ASSERT_STRING_EQUAL(param(&m, "id"), "42");
    cn__route_match_clear(&m);
    cn__router_free(r);
}

static void
test_literal_beats_param(void)
{
    cn_router_t *r, *r2;
    cn_route_match_t m;

    /* Registered in both orders: precedence must not depend on it. */
    r = new_router();
    CU_ASSERT_EQUAL_FATAL(cn__router_add(r, CN_METHOD_GET, "/items/{id}", NULL, handler_a, NULL),
                          0);
    CU_ASSERT_EQUAL_FATAL(cn__router_add(r, CN_METHOD_GET, "/items/special", NULL, handler_b, NULL),
                          0);
    r2 = new_router();
    CU_ASSERT_EQUAL_FATAL(
        cn__router_add(r2, CN_METHOD_GET, "/items/special", NULL, handler_b, NULL), 0);
    CU_ASSERT_EQUAL_FATAL(cn__router_add(r2, CN_METHOD_GET, "/items/{id}", NULL, handler_a, NULL),
                          0);

    for (int i = 0; i < 2; i++) {
        const cn_router_t *rt = i ? r2 : r;
        CU_ASSERT_EQUAL_FATAL(match(rt, CN_METHOD_GET, "/items/special", &m), 0);
        CU_ASSERT_PTR_EQUAL(m.route->handler, handler_b);
        CU_ASSERT_EQUAL(m.nparams, 0);
        cn__route_match_clear(&m);
        CU_ASSERT_EQUAL_FATAL(match(rt, CN_METHOD_GET, "/items/other", &m), 0);
        CU_ASSERT_PTR_EQUAL(m.route->handler, handler_a);
        CU_ASSERT_STRING_EQUAL(param(&m, "id"), "other");
        cn__route_match_clear(&m);
    }
    cn__router_free(r);
    cn__router_free(r2);

    /* The first differing position decides: /a/{x}/c beats /{y}/b/c for /a/b/c. */
    r = new_router();
    CU_ASSERT_EQUAL_FATAL(cn__router_add(r, CN_METHOD_GET, "/{y}/b/c", NULL, handler_a, NULL), 0);
    CU_ASSERT_EQUAL_FATAL(cn__router_add(r, CN_METHOD_GET, "/a/{x}/c", NULL, handler_b, NULL), 0);
    CU_ASSERT_EQUAL_FATAL(match(r, CN_METHOD_GET, "/a/b/c", &m), 0);
    CU_ASSERT_PTR_EQUAL(m.route->handler, handler_b);
    CU_ASSERT_STRING_EQUAL(param(&m, "x"), "b");
    cn__route_match_clear(&m);
    cn__router_free(r);
}

static void
test_not_found(void)
{
    cn_router_t *r = new_router();
    cn_route_match_t m;

    CU_ASSERT_EQUAL(match(r, CN_METHOD_GET, "/anything", &m), CN_ENOTFOUND);
    CU_ASSERT_EQUAL(match(r, CN_METHOD_GET, "/", &m), CN_ENOTFOUND);
    CU_ASSERT_EQUAL_FATAL(cn__router_add(r, CN_METHOD_GET, "/orders/{id}", NULL, handler_a, NULL),
                          0);
    CU_ASSERT_EQUAL(match(r, CN_METHOD_GET, "/orders", &m), CN_ENOTFOUND);
    CU_ASSERT_EQUAL(m.allowed, 0);
    CU_ASSERT_EQUAL(match(r, CN_METHOD_GET, "/other/1", &m), CN_ENOTFOUND);
    CU_ASSERT_EQUAL(match(r, CN_METHOD_POST, "/other/1", &m), CN_ENOTFOUND);
    /* Far more segments than any route may have. */
    CU_ASSERT_EQUAL(match(r, CN_METHOD_GET,
                          "/a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/q/r/s/t/u/v/w/x/y/z/1/2/3/4/5/6/7/8",
                          &m),
                    CN_ENOTFOUND);
    cn__router_free(r);
}

static void
test_method_not_allowed(void)
{
    cn_router_t *r = new_router();
    cn_route_match_t m;
    char allow[64];

    CU_ASSERT_EQUAL_FATAL(cn__router_add(r, CN_METHOD_GET, "/orders", NULL, handler_a, NULL), 0);
    CU_ASSERT_EQUAL_FATAL(
        cn__router_add(r, CN_METHOD_POST, "/orders", "orders.create", handler_b, NULL), 0);
    CU_ASSERT_EQUAL_FATAL(
        cn__router_add(r, CN_METHOD_DELETE, "/orders/{id}", NULL, handler_a, NULL), 0);

    CU_ASSERT_EQUAL(match(r, CN_METHOD_PUT, "/orders", &m), CN_EMETHOD);
    CU_ASSERT_EQUAL(m.allowed, CN_METHOD_GET | CN_METHOD_POST);
    CU_ASSERT_PTR_NULL(m.route);
    cn__router_allow(m.allowed, allow, sizeof(allow));
    CU_ASSERT_STRING_EQUAL(allow, "GET, HEAD, POST");

    CU_ASSERT_EQUAL(match(r, CN_METHOD_GET, "/orders/7", &m), CN_EMETHOD);
    CU_ASSERT_EQUAL(m.allowed, CN_METHOD_DELETE);

    /* An unknown method (0) on a known path is 405 too. */
    CU_ASSERT_EQUAL(match(r, 0, "/orders", &m), CN_EMETHOD);
    CU_ASSERT_EQUAL(m.allowed, CN_METHOD_GET | CN_METHOD_POST);
    cn__router_free(r);
}

static void
test_allow_format(void)
{
    char buf[64], small[8];

    cn__router_allow(CN_METHOD_GET, buf, sizeof(buf));
    CU_ASSERT_STRING_EQUAL(buf, "GET, HEAD");
    cn__router_allow(CN_METHOD_POST, buf, sizeof(buf));
    CU_ASSERT_STRING_EQUAL(buf, "POST");
    cn__router_allow(CN_METHOD_GET | CN_METHOD_POST, buf, sizeof(buf));
    CU_ASSERT_STRING_EQUAL(buf, "GET, HEAD, POST");
    cn__router_allow(CN_METHOD_PUT | CN_METHOD_DELETE, buf, sizeof(buf));
    CU_ASSERT_STRING_EQUAL(buf, "PUT, DELETE");
    cn__router_allow(CN_METHOD_GET | CN_METHOD_POST | CN_METHOD_PUT | CN_METHOD_DELETE, buf,
                     sizeof(buf));
    CU_ASSERT_STRING_EQUAL(buf, "GET, HEAD, POST, PUT, DELETE");
    cn__router_allow(CN_METHOD_PUT | CN_METHOD_PATCH, buf, sizeof(buf));
    CU_ASSERT_STRING_EQUAL(buf, "PUT, PATCH");
    memset(buf, 'x', sizeof(buf));
    cn__router_allow(0, buf, sizeof(buf));
    CU_ASSERT_STRING_EQUAL(buf, "");

    /* A short buffer stays NUL-terminated inside its bounds. */
    memset(small, 'x', sizeof(small));
    cn__router_allow(CN_METHOD_GET | CN_METHOD_POST | CN_METHOD_PUT | CN_METHOD_DELETE, small,
                     sizeof(small));
    CU_ASSERT_PTR_NOT_NULL(memchr(small, '\0', sizeof(small)));
}

static void
test_method_from_string(void)
{
    CU_ASSERT_EQUAL(cn__method_from_string("GET"), CN_METHOD_GET);
    CU_ASSERT_EQUAL(cn__method_from_string("HEAD"), CN_METHOD_GET);
    CU_ASSERT_EQUAL(cn__method_from_string("POST"), CN_METHOD_POST);
    CU_ASSERT_EQUAL(cn__method_from_string("PUT"), CN_METHOD_PUT);
    CU_ASSERT_EQUAL(cn__method_from_string("DELETE"), CN_METHOD_DELETE);
    CU_ASSERT_EQUAL(cn__method_from_string("PATCH"), CN_METHOD_PATCH);
    for (int m = CN_METHOD_GET; m <= CN_METHOD_PATCH; m <<= 1)
        CU_ASSERT_EQUAL(cn__method_from_string(cn__method_name(m)), m);
    CU_ASSERT_STRING_EQUAL(cn__method_name(0), "");
    CU_ASSERT_EQUAL(cn__method_from_string("OPTIONS"), 0);
    CU_ASSERT_EQUAL(cn__method_from_string("get"), 0); /* methods are case-sensitive */
    CU_ASSERT_EQUAL(cn__method_from_string("GETX"), 0);
    CU_ASSERT_EQUAL(cn__method_from_string(""), 0);
}

static void
test_root_and_trailing_slash(void)
{
    cn_router_t *r = new_router();
    cn_route_match_t m;

    CU_ASSERT_EQUAL_FATAL(cn__router_add(r, CN_METHOD_GET, "/", NULL, handler_a, NULL), 0);
    CU_ASSERT_EQUAL_FATAL(cn__router_add(r, CN_METHOD_GET, "/orders", NULL, handler_b, NULL), 0);
    CU_ASSERT_EQUAL_FATAL(cn__router_add(r, CN_METHOD_GET, "/items/{id}", NULL, handler_b, NULL),
                          0);

    CU_ASSERT_EQUAL_FATAL(match(r, CN_METHOD_GET, "/", &m), 0);
    CU_ASSERT_PTR_EQUAL(m.route->handler, handler_a);
    CU_ASSERT_EQUAL(m.nparams, 0);
    cn__route_match_clear(&m);

    /* Pinned: a trailing slash is a different path, not an alias. */
    CU_ASSERT_EQUAL(match(r, CN_METHOD_GET, "/orders/", &m), CN_ENOTFOUND);
    /* Pinned: a parameter never matches an empty segment. */
    CU_ASSERT_EQUAL(match(r, CN_METHOD_GET, "/items/", &m), CN_ENOTFOUND);
    /* Pinned: empty segments are not collapsed. */
    CU_ASSERT_EQUAL(match(r, CN_METHOD_GET, "//orders", &m), CN_ENOTFOUND);

    /* A pattern with a trailing slash matches exactly that path. */
    CU_ASSERT_EQUAL_FATAL(cn__router_add(r, CN_METHOD_GET, "/dir/", NULL, handler_a, &ctx_c), 0);
    CU_ASSERT_EQUAL_FATAL(match(r, CN_METHOD_GET, "/dir/", &m), 0);
    CU_ASSERT_PTR_EQUAL(m.route->ctx, &ctx_c);
    cn__route_match_clear(&m);
    CU_ASSERT_EQUAL(match(r, CN_METHOD_GET, "/dir", &m), CN_ENOTFOUND);
    cn__router_free(r);
}

static void
test_malformed_patterns(void)
{
    cn_router_t *r = new_router();
    static const char *bad[] = {
        "",           "orders", "orders/{id}", "/{}",     "/{a",    "/a}",
        "/orders/{}", "/{a}b",  "/x{a}",       "/{a{b}}", "/{{a}}", "/a/{b/c}",
    };
    char many[256];
    size_t o = 0;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int rc = cn__router_add(r, CN_METHOD_GET, bad[i], NULL, handler_a, NULL);
        if (rc != -EINVAL)
            fprintf(stderr, "\n  pattern \"%s\" gave %d, want -EINVAL\n", bad[i], rc);
        CU_ASSERT_EQUAL(rc, -EINVAL);
    }

    /* Too many parameters (CN_ROUTE_MAX_PARAMS + 1). */
    for (int i = 0; i <= CN_ROUTE_MAX_PARAMS; i++)
        o += (size_t)snprintf(many + o, sizeof(many) - o, "/{p%d}", i);
    CU_ASSERT_EQUAL(cn__router_add(r, CN_METHOD_GET, many, NULL, handler_a, NULL), -EINVAL);
    /* Exactly CN_ROUTE_MAX_PARAMS is fine. */
    o = 0;
    for (int i = 0; i < CN_ROUTE_MAX_PARAMS; i++)
        o += (size_t)snprintf(many + o, sizeof(many) - o, "/{p%d}", i);
    CU_ASSERT_EQUAL(cn__router_add(r, CN_METHOD_GET, many, NULL, handler_a, NULL), 0);

    /* Too many segments (CN_ROUTE_MAX_SEGMENTS + 1). */
    o = 0;
    for (int i = 0; i <= CN_ROUTE_MAX_SEGMENTS; i++)
        o += (size_t)snprintf(many + o, sizeof(many) - o, "/s");
    CU_ASSERT_EQUAL(cn__router_add(r, CN_METHOD_GET, many, NULL, handler_a, NULL), -EINVAL);
    cn__router_free(r);
}

static void
test_duplicates(void)
{
    cn_router_t *r = new_router();
    cn_route_match_t m;

    CU_ASSERT_EQUAL_FATAL(cn__router_add(r, CN_METHOD_POST, "/orders", "a", handler_a, NULL), 0);
    CU_ASSERT_EQUAL(cn__router_add(r, CN_METHOD_POST, "/orders", "b", handler_b, NULL), -EINVAL);
    /* The same pattern under another method is a different route. */
    CU_ASSERT_EQUAL(cn__router_add(r, CN_METHOD_GET, "/orders", NULL, handler_b, NULL), 0);
    CU_ASSERT_EQUAL_FATAL(cn__router_add(r, CN_METHOD_GET, "/items/{id}", NULL, handler_a, NULL),
                          0);
    CU_ASSERT_EQUAL(cn__router_add(r, CN_METHOD_GET, "/items/{id}", NULL, handler_a, NULL),
                    -EINVAL);
    /* Pinned: a parameter renamed is still the same route (it could never match). */
    CU_ASSERT_EQUAL(cn__router_add(r, CN_METHOD_GET, "/items/{other}", NULL, handler_b, NULL),
                    -EINVAL);

    /* The rejected duplicate did not replace the original. */
    CU_ASSERT_EQUAL_FATAL(match(r, CN_METHOD_POST, "/orders", &m), 0);
    CU_ASSERT_PTR_EQUAL(m.route->handler, handler_a);
    CU_ASSERT_STRING_EQUAL(m.route->operation, "a");
    cn__route_match_clear(&m);
    CU_ASSERT_EQUAL_FATAL(match(r, CN_METHOD_GET, "/items/1", &m), 0);
    CU_ASSERT_STRING_EQUAL(param(&m, "id"), "1");
    cn__route_match_clear(&m);
    cn__router_free(r);
}

static void
test_url_decode(void)
{
    char dst[64];

    CU_ASSERT_EQUAL(cn__url_decode("a+b%20c", 7, dst, 1), 5);
    CU_ASSERT_STRING_EQUAL(dst, "a b c");
    CU_ASSERT_EQUAL(cn__url_decode("a+b%20c", 7, dst, 0), 5);
    CU_ASSERT_STRING_EQUAL(dst, "a+b c");
    CU_ASSERT_EQUAL(cn__url_decode("%41%42%43", 9, dst, 0), 3);
    CU_ASSERT_STRING_EQUAL(dst, "ABC");
    CU_ASSERT_EQUAL(cn__url_decode("%2f%2F", 6, dst, 0), 2);
    CU_ASSERT_STRING_EQUAL(dst, "//");
    CU_ASSERT_EQUAL(cn__url_decode("%2B", 3, dst, 1), 1); /* an encoded '+' stays '+' */
    CU_ASSERT_STRING_EQUAL(dst, "+");
    CU_ASSERT_EQUAL(cn__url_decode("", 0, dst, 1), 0);
    CU_ASSERT_STRING_EQUAL(dst, "");
    /* Decoded NUL bytes count in the length. */
    CU_ASSERT_EQUAL(cn__url_decode("a%00b", 5, dst, 0), 3);
    CU_ASSERT_EQUAL(memcmp(dst, "a\0b", 4), 0);
    CU_ASSERT_EQUAL(cn__url_decode("%C3%A9", 6, dst, 0), 2);
    CU_ASSERT_STRING_EQUAL(dst, "\xc3\xa9");
    /* Only len bytes are read. */
    CU_ASSERT_EQUAL(cn__url_decode("ab%41", 2, dst, 0), 2);
    CU_ASSERT_STRING_EQUAL(dst, "ab");

    /* Malformed escapes. */
    CU_ASSERT_EQUAL(cn__url_decode("%zz", 3, dst, 0), -1);
    CU_ASSERT_EQUAL(cn__url_decode("a%4", 3, dst, 0), -1);
    CU_ASSERT_EQUAL(cn__url_decode("%", 1, dst, 0), -1);
    CU_ASSERT_EQUAL(cn__url_decode("%4g", 3, dst, 0), -1);
    CU_ASSERT_EQUAL(cn__url_decode("%g4", 3, dst, 0), -1);
    /* An escape cut by len is malformed even when more bytes follow in memory. */
    CU_ASSERT_EQUAL(cn__url_decode("x%41", 3, dst, 0), -1);
}

int
main(void)
{
    static const unit_test_t tests[] = {
        {"literal match", test_literal_match},
        {"pattern and operation are copied", test_pattern_copied},
        {"parameter match and decoding", test_param_match},
        {"match reads only len bytes", test_match_uses_len},
        {"literal beats parameter", test_literal_beats_param},
        {"unknown path is CN_ENOTFOUND", test_not_found},
        {"known path, other method is CN_EMETHOD", test_method_not_allowed},
        {"Allow header format", test_allow_format},
        {"method names", test_method_from_string},
        {"root and trailing slash", test_root_and_trailing_slash},
        {"malformed patterns rejected", test_malformed_patterns},
        {"duplicate routes rejected", test_duplicates},
        {"url decoding", test_url_decode},
        {NULL, NULL},
    };

    return unit_run("router", tests);
}
