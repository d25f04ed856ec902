/*
 * tests/unit/test_request.c - the request object the HTTP adapter fills: which targets
 * it takes, which header fields it refuses (RFC 9110 5.1, 5.5), value trimming, and which
 * bodies must be UTF-8 because they are declared JSON.
 */
#include <errno.h>
#include <string.h>

#include "cnerium/request.h"
#include "http/request_internal.h"
#include "unit.h"

static int
add(cn_request_t *req, const char *name, const char *value, size_t value_len)
{
    const char *why = NULL;
    int rc = cn__request_add_header(req, name, strlen(name), value, value_len, &why);

    if (rc == -EINVAL) {
        CU_ASSERT_PTR_NOT_NULL(why);
        CU_ASSERT(why && why[0] != '\0');
    }
    return rc;
}

static int
add_s(cn_request_t *req, const char *name, const char *value)
{
    return add(req, name, value, strlen(value));
}

static void
test_origin_form_targets(void)
{
    cn_request_t req;

    CU_ASSERT_EQUAL_FATAL(cn__request_init(&req, "GET", "/orders?a=1"), 0);
    CU_ASSERT_STRING_EQUAL(cn_request_path(&req), "/orders");
    CU_ASSERT_STRING_EQUAL(cn_request_query_string(&req), "a=1");
    cn__request_destroy(&req);
}

static void
test_absolute_form_targets(void)
{
    static const struct {
        const char *target, *path, *query;
    } ok[] = {
        {"http://example.com/orders?a=1", "/orders", "a=1"},
        {"HTTPS://example.com:8443/x/y", "/x/y", ""},
        {"http://127.0.0.1:8080", "/", ""},
        {"http://[::1]:8080?q", "/", "q"},
    };
    static const char *const bad[] = {
        "health", "*", "http://", "http:///path", "http://user@host/x", "ftp://host/x",
        "http://[::1", "http://a b/x", "",
    };
    cn_request_t req;

    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        CU_ASSERT_EQUAL_FATAL(cn__request_init(&req, "GET", ok[i].target), 0);
        CU_ASSERT_STRING_EQUAL(cn_request_path(&req), ok[i].path);
        CU_ASSERT_STRING_EQUAL(cn_request_query_string(&req), ok[i].query);
        cn__request_destroy(&req);
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        CU_ASSERT_EQUAL(cn__request_init(&req, "GET", bad[i]), -EINVAL);
        cn__request_destroy(&req);
    }
}

static void
test_method_length(void)
{
    cn_request_t req;

    CU_ASSERT_EQUAL(cn__request_init(&req, "ABCDEFGHIJKLMNO", "/"), 0); /* 15 bytes */
    cn__request_destroy(&req);
    CU_ASSERT_EQUAL(cn__request_init(&req, "ABCDEFGHIJKLMNOP", "/"), -EINVAL);
    cn__request_destroy(&req);
    CU_ASSERT_EQUAL(cn__request_init(&req, "", "/"), -EINVAL);
    cn__request_destroy(&req);
}

static void
test_tokens(void)
{
    CU_ASSERT_EQUAL(cn__http_token_valid("GET", 3), 1);
    CU_ASSERT_EQUAL(cn__http_token_valid("M-SEARCH", 8), 1);
    CU_ASSERT_EQUAL(cn__http_token_valid("", 0), 0);
    CU_ASSERT_EQUAL(cn__http_token_valid("G(T", 3), 0);
    CU_ASSERT_EQUAL(cn__http_token_valid("G T", 3), 0);
    CU_ASSERT_EQUAL(cn__http_token_valid("G\0T", 3), 0);
}

static void
test_header_names_must_be_tokens(void)
{
    static const char *const bad[] = {"Bad Name", "Bad ", " Bad", "a\tb", "a:b", "a(b)",
                                      "a\"b", "caf\xc3\xa9", "a\x7f", "a/b", "a{b}"};
    cn_request_t req;

    CU_ASSERT_EQUAL_FATAL(cn__request_init(&req, "GET", "/"), 0);
    CU_ASSERT_EQUAL(add_s(&req, "X-Good_Name.1~!#$%&'*+^`|", "v"), 0);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        CU_ASSERT_EQUAL(add_s(&req, bad[i], "v"), -EINVAL);
    CU_ASSERT_EQUAL(add_s(&req, "", "v"), -EINVAL);
    {
        /* A NUL inside the name, given by length. */
        const char *why = NULL;
        CU_ASSERT_EQUAL(cn__request_add_header(&req, "a\0b", 3, "v", 1, &why), -EINVAL);
    }
    CU_ASSERT_EQUAL(req.nheaders, 1);
    cn__request_destroy(&req);
}

static void
test_header_values_without_control_bytes(void)
{
    cn_request_t req;
    char v[4] = "a?b";

    CU_ASSERT_EQUAL_FATAL(cn__request_init(&req, "GET", "/"), 0);
    CU_ASSERT_EQUAL(add_s(&req, "X-Tab", "a\tb"), 0);
    CU_ASSERT_EQUAL(add_s(&req, "X-Obs-Text", "caf\xc3\xa9 \xff"), 0);
    CU_ASSERT_EQUAL(add(&req, "Idempotency-Key", "a\0b", 3), -EINVAL);
    for (int c = 0; c < 0x20; c++) {
        if (c == '\t')
            continue;
        v[1] = (char)c;
        CU_ASSERT_EQUAL(add(&req, "X-C", v, 3), -EINVAL);
    }
    v[1] = 0x7f;
    CU_ASSERT_EQUAL(add(&req, "X-C", v, 3), -EINVAL);
    CU_ASSERT_EQUAL(req.nheaders, 2);
    cn__request_destroy(&req);
}

static void
test_header_values_are_trimmed(void)
{
    cn_request_t req;

    CU_ASSERT_EQUAL_FATAL(cn__request_init(&req, "GET", "/"), 0);
    CU_ASSERT_EQUAL(add_s(&req, "X-Tenant-Id", " \t tenant-a \t "), 0);
    CU_ASSERT_EQUAL(add_s(&req, "X-Lead", "  lead"), 0);
    CU_ASSERT_EQUAL(add_s(&req, "X-Inner", "a  b"), 0);
    CU_ASSERT_EQUAL(add_s(&req, "X-Blank", " \t "), 0);
    CU_ASSERT_STRING_EQUAL(cn_request_header(&req, "x-tenant-id"), "tenant-a");
    CU_ASSERT_STRING_EQUAL(cn_request_header(&req, "X-Lead"), "lead");
    CU_ASSERT_STRING_EQUAL(cn_request_header(&req, "X-Inner"), "a  b");
    CU_ASSERT_STRING_EQUAL(cn_request_header(&req, "X-Blank"), "");
    cn__request_destroy(&req); /* frees the trimmed copies (ASan build) */
}

static void
test_duplicate_headers_are_counted(void)
{
    cn_request_t req;
    const char *first = NULL;

    CU_ASSERT_EQUAL_FATAL(cn__request_init(&req, "POST", "/"), 0);
    CU_ASSERT_EQUAL(add_s(&req, "X-Tenant-Id", "a"), 0);
    CU_ASSERT_EQUAL(add_s(&req, "x-tenant-id", " b "), 0);
    CU_ASSERT_EQUAL(cn__request_header_count(&req, "X-TENANT-ID", &first), 2);
    CU_ASSERT_STRING_EQUAL(first, "a");
    cn__request_destroy(&req);
}

static void
test_json_media_types(void)
{
    CU_ASSERT_EQUAL(cn__media_type_is_json("application/json"), 1);
    CU_ASSERT_EQUAL(cn__media_type_is_json("Application/JSON; charset=utf-8"), 1);
    CU_ASSERT_EQUAL(cn__media_type_is_json("application/problem+json"), 1);
    CU_ASSERT_EQUAL(cn__media_type_is_json("application/vnd.api+json ;v=1"), 1);
    CU_ASSERT_EQUAL(cn__media_type_is_json(NULL), 0);
    CU_ASSERT_EQUAL(cn__media_type_is_json(""), 0);
    CU_ASSERT_EQUAL(cn__media_type_is_json("text/plain"), 0);
    CU_ASSERT_EQUAL(cn__media_type_is_json("application/octet-stream"), 0);
    CU_ASSERT_EQUAL(cn__media_type_is_json("application/jsonx"), 0);
    CU_ASSERT_EQUAL(cn__media_type_is_json("application/+json"), 0);
    CU_ASSERT_EQUAL(cn__media_type_is_json("text/json+xml"), 0);
}

static void
test_which_bodies_must_be_utf8(void)
{
    cn_request_t req;

    CU_ASSERT_EQUAL_FATAL(cn__request_init(&req, "POST", "/"), 0);
    CU_ASSERT_EQUAL(cn__request_body_must_be_utf8(&req), 0); /* no body */
    CU_ASSERT_EQUAL(cn__request_append_body(&req, "\xff", 1, 16), 0);
    CU_ASSERT_EQUAL(cn__request_body_must_be_utf8(&req), 0); /* undeclared: may be binary */
    CU_ASSERT_EQUAL(add_s(&req, "Content-Type", "application/octet-stream"), 0);
    CU_ASSERT_EQUAL(cn__request_body_must_be_utf8(&req), 0);
    CU_ASSERT_EQUAL(add_s(&req, "Content-Type", "application/json"), 0);
    CU_ASSERT_EQUAL(cn__request_body_must_be_utf8(&req), 1); /* any JSON declaration */
    cn__request_destroy(&req);
}

static void
test_json_parse_refuses_invalid_utf8(void)
{
    static const char bad[] = "{\"product_id\":\"\xff\xfe\x80\",\"quantity\":1}";
    static const char good[] = "{\"product_id\":\"caf\xc3\xa9\",\"quantity\":1}";
    cn_request_t req;

    CU_ASSERT_EQUAL_FATAL(cn__request_init(&req, "POST", "/"), 0);
    CU_ASSERT_EQUAL(cn__request_append_body(&req, bad, sizeof(bad) - 1, 4096), 0);
    CU_ASSERT_PTR_NULL(cn_request_json(&req));
    cn__request_destroy(&req);
    CU_ASSERT_EQUAL_FATAL(cn__request_init(&req, "POST", "/"), 0);
    CU_ASSERT_EQUAL(cn__request_append_body(&req, good, sizeof(good) - 1, 4096), 0);
    CU_ASSERT_PTR_NOT_NULL(cn_request_json(&req));
    cn__request_destroy(&req);
}

int
main(void)
{
    static const unit_test_t tests[] = {
        {"origin-form targets", test_origin_form_targets},
        {"absolute-form targets reduced, others refused", test_absolute_form_targets},
        {"methods of 16 bytes or more refused", test_method_length},
        {"tokens", test_tokens},
        {"header names must be tokens", test_header_names_must_be_tokens},
        {"header values without control bytes", test_header_values_without_control_bytes},
        {"header values are trimmed", test_header_values_are_trimmed},
        {"duplicate headers are counted", test_duplicate_headers_are_counted},
        {"JSON media types", test_json_media_types},
        {"declared JSON bodies must be UTF-8", test_which_bodies_must_be_utf8},
        {"cn_request_json refuses invalid UTF-8", test_json_parse_refuses_invalid_utf8},
        {NULL, NULL},
    };

    return unit_run("request", tests);
}
