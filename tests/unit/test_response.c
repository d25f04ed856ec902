/*
 * tests/unit/test_response.c - response builders (JSON, problem, raw), headers, freeing,
 * reason phrases, and the cJSON helpers of cnerium/json.h.
 */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "cnerium/json.h"
#include "cnerium/response.h"
#include "unit.h"

static int
is_zeroed(const cn_response_t *r)
{
    static const cn_response_t zero;

    return memcmp(r, &zero, sizeof(zero)) == 0;
}

/* Checks the body of res is exactly want (a NUL-terminated string). */
static void
expect_body(const cn_response_t *res, const char *want)
{
    CU_ASSERT_EQUAL_FATAL(res->body_len, strlen(want));
    CU_ASSERT_PTR_NOT_NULL_FATAL(res->body);
    CU_ASSERT_EQUAL(memcmp(res->body, want, res->body_len), 0);
}

/* Checks a problem response and its five members, in the documented order. */
static void
expect_problem(const cn_response_t *res, int status, const char *detail)
{
    static const char *const order[] = {"error", "type", "title", "status", "detail"};
    cJSON *doc;
    const cJSON *item;
    size_t i = 0;

    CU_ASSERT_EQUAL(res->status, status);
    CU_ASSERT_PTR_NOT_NULL_FATAL(res->content_type);
    CU_ASSERT_STRING_EQUAL(res->content_type, "application/problem+json");
    CU_ASSERT_PTR_NOT_NULL_FATAL(res->body);
    doc = cJSON_ParseWithLength(res->body, res->body_len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(doc);
    CU_ASSERT(cJSON_IsObject(doc));
    CU_ASSERT_STRING_EQUAL(cn_json_string_or(doc, "error", "?"), detail);
    CU_ASSERT_STRING_EQUAL(cn_json_string_or(doc, "type", "?"), "about:blank");
    CU_ASSERT_STRING_EQUAL(cn_json_string_or(doc, "title", "?"), cn_status_reason(status));
    CU_ASSERT_EQUAL(cn_json_int_or(doc, "status", -1), status);
    CU_ASSERT_STRING_EQUAL(cn_json_string_or(doc, "detail", "?"), detail);
    cJSON_ArrayForEach(item, doc)
    {
        CU_ASSERT_FATAL(i < 5);
        CU_ASSERT_STRING_EQUAL(item->string, order[i]);
        i++;
    }
    CU_ASSERT_EQUAL(i, 5);
    cJSON_Delete(doc);
}

static void
test_created(void)
{
    cJSON *json = cJSON_CreateObject();
    char *want;
    cn_response_t res;

    CU_ASSERT_PTR_NOT_NULL_FATAL(json);
    cJSON_AddStringToObject(json, "id", "order-1");
    cJSON_AddNumberToObject(json, "quantity", 2);
    cJSON_AddItemToObject(json, "items", cJSON_CreateArray());
    want = cJSON_PrintUnformatted(json);
    CU_ASSERT_PTR_NOT_NULL_FATAL(want);

    res = cn_created(json); /* consumes json */
    CU_ASSERT_EQUAL(res.status, 201);
    CU_ASSERT_PTR_NOT_NULL_FATAL(res.content_type);
    CU_ASSERT_STRING_EQUAL(res.content_type, "application/json");
    expect_body(&res, want);
    CU_ASSERT_PTR_NULL(res.location);
    CU_ASSERT_EQUAL(res.nheaders, 0);
    CU_ASSERT_EQUAL(res.persist, CN_PERSIST_AUTO);
    cn_response_free(&res);
    CU_ASSERT(is_zeroed(&res));
    free(want);
}

static void
test_json_statuses(void)
{
    cn_response_t res;

    res = cn_ok(cJSON_CreateTrue());
    CU_ASSERT_EQUAL(res.status, 200);
    expect_body(&res, "true");
    cn_response_free(&res);

    res = cn_accepted(cJSON_CreateString("queued"));
    CU_ASSERT_EQUAL(res.status, 202);
    CU_ASSERT_STRING_EQUAL(res.content_type, "application/json");
    expect_body(&res, "\"queued\"");
    cn_response_free(&res);

    res = cn_json_response(418, cJSON_CreateNumber(7));
    CU_ASSERT_EQUAL(res.status, 418);
    expect_body(&res, "7");
    cn_response_free(&res);
}

static void
test_problem(void)
{
    cn_response_t res;
    char detail[] = "quantity must be \"positive\"\nand a number";

    res = cn_bad_request("quantity is required");
    expect_problem(&res, 400, "quantity is required");
    CU_ASSERT_STRING_EQUAL(cn_status_reason(400), "Bad Request");
    cn_response_free(&res);

    /* detail is copied and escaped. */
    res = cn_problem(422, detail);
    memset(detail, 'x', sizeof(detail) - 1);
    expect_problem(&res, 422, "quantity must be \"positive\"\nand a number");
    cn_response_free(&res);

    res = cn_not_found("no such order");
    expect_problem(&res, 404, "no such order");
    cn_response_free(&res);

    res = cn_conflict("already shipped");
    expect_problem(&res, 409, "already shipped");
    cn_response_free(&res);

    res = cn_unprocessable("bad quantity");
    expect_problem(&res, 422, "bad quantity");
    cn_response_free(&res);

    res = cn_problem(503, "try later");
    expect_problem(&res, 503, "try later");
    cn_response_free(&res);
}

static void
test_problem_title(void)
{
    cn_response_t res = cn_bad_request("d");
    cJSON *doc = cJSON_ParseWithLength(res.body, res.body_len);

    CU_ASSERT_PTR_NOT_NULL_FATAL(doc);
    CU_ASSERT_STRING_EQUAL(cn_json_string_or(doc, "title", "?"), "Bad Request");
    CU_ASSERT_EQUAL(cn_json_int_or(doc, "status", -1), 400);
    cJSON_Delete(doc);
    cn_response_free(&res);
}

static void
test_raw(void)
{
    static const char bytes[] = {'a', '\0', 'b', '\0', '\xff'};
    char copy[sizeof(bytes)];
    cn_response_t res;

    memcpy(copy, bytes, sizeof(bytes));
    res = cn_raw_response(200, "application/octet-stream", copy, sizeof(copy));
    memset(copy, 0, sizeof(copy)); /* copied: the caller's buffer may change */
    CU_ASSERT_EQUAL(res.status, 200);
    CU_ASSERT_STRING_EQUAL(res.content_type, "application/octet-stream");
    CU_ASSERT_EQUAL_FATAL(res.body_len, sizeof(bytes));
    CU_ASSERT_EQUAL(memcmp(res.body, bytes, sizeof(bytes)), 0);
    cn_response_free(&res);

    res = cn_raw_response(204, NULL, NULL, 0);
    CU_ASSERT_EQUAL(res.status, 204);
    CU_ASSERT_PTR_NULL(res.content_type);
    CU_ASSERT_EQUAL(res.body_len, 0);
    cn_response_free(&res);
}

static void
test_location(void)
{
    cn_response_t res = cn_created(cJSON_CreateObject());
    char loc[] = "/orders/1";

    CU_ASSERT_EQUAL(cn_response_set_location(&res, loc), 0);
    loc[1] = 'X';
    CU_ASSERT_STRING_EQUAL(res.location, "/orders/1");
    /* Setting it again replaces (and frees) the old value. */
    CU_ASSERT_EQUAL(cn_response_set_location(&res, "/orders/2"), 0);
    CU_ASSERT_STRING_EQUAL(res.location, "/orders/2");
    cn_response_free(&res);
    CU_ASSERT(is_zeroed(&res));
}

static void
test_add_header(void)
{
    cn_response_t res = cn_ok(cJSON_CreateObject());
    static const char *const refused[] = {
        "Content-Type",
        "content-type",
        "CONTENT-TYPE",
        "Content-Length",
        "content-length",
        "Location",
        "LOCATION",
        "Idempotent-Replayed",
        "idempotent-replayed",
        "IDEMPOTENT-REPLAYED",
    };
    char name[] = "X-Request-Id", value[] = "abc";

    CU_ASSERT_EQUAL_FATAL(cn_response_add_header(&res, name, value), 0);
    name[0] = 'Y';
    value[0] = 'Z';
    CU_ASSERT_EQUAL_FATAL(res.nheaders, 1);
    CU_ASSERT_STRING_EQUAL(res.headers[0].name, "X-Request-Id");
    CU_ASSERT_STRING_EQUAL(res.headers[0].value, "abc");
    CU_ASSERT_EQUAL(cn_response_add_header(&res, "Set-Cookie", "a=1"), 0);
    CU_ASSERT_EQUAL(cn_response_add_header(&res, "Set-Cookie", "b=2"), 0);
    CU_ASSERT_EQUAL_FATAL(res.nheaders, 3);
    CU_ASSERT_STRING_EQUAL(res.headers[2].value, "b=2");

    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
        CU_ASSERT_EQUAL(cn_response_add_header(&res, refused[i], "x"), -EINVAL);
        CU_ASSERT_EQUAL(res.nheaders, 3);
    }
    /* Pinned: CR, LF or ':' cannot smuggle a second header through. */
    CU_ASSERT_EQUAL(cn_response_add_header(&res, "X-A", "1\r\nSet-Cookie: evil=1"), -EINVAL);
    CU_ASSERT_EQUAL(cn_response_add_header(&res, "X-A\r\nX-B", "1"), -EINVAL);
    CU_ASSERT_EQUAL(cn_response_add_header(&res, "X-A: 1", "1"), -EINVAL);
    CU_ASSERT_EQUAL(cn_response_add_header(&res, "", "1"), -EINVAL);
    CU_ASSERT_EQUAL(res.nheaders, 3);
    /* Names that merely start like a refused one are fine. */
    CU_ASSERT_EQUAL(cn_response_add_header(&res, "Content-Type-Options", "nosniff"), 0);
    CU_ASSERT_EQUAL(res.nheaders, 4);
    CU_ASSERT_PTR_NULL(res.location);
    cn_response_free(&res);
    CU_ASSERT(is_zeroed(&res));
}

static void
test_persist(void)
{
    cn_response_t res = cn_ok(cJSON_CreateObject());

    CU_ASSERT_EQUAL(res.persist, CN_PERSIST_AUTO);
    cn_response_set_persist(&res, CN_PERSIST_NEVER);
    CU_ASSERT_EQUAL(res.persist, CN_PERSIST_NEVER);
    cn_response_set_persist(&res, CN_PERSIST_ALWAYS);
    CU_ASSERT_EQUAL(res.persist, CN_PERSIST_ALWAYS);
    cn_response_free(&res);
}

static void
test_free_zeroed_and_null(void)
{
    cn_response_t res;

    memset(&res, 0, sizeof(res));
    cn_response_free(&res);
    CU_ASSERT(is_zeroed(&res));
    cn_response_free(&res); /* twice: still zeroed, still safe */
    cn_response_free(NULL);
    CU_ASSERT(is_zeroed(&res));
}

static void
test_status_reason(void)
{
    CU_ASSERT_STRING_EQUAL(cn_status_reason(200), "OK");
    CU_ASSERT_STRING_EQUAL(cn_status_reason(201), "Created");
    CU_ASSERT_STRING_EQUAL(cn_status_reason(202), "Accepted");
    CU_ASSERT_STRING_EQUAL(cn_status_reason(400), "Bad Request");
    CU_ASSERT_STRING_EQUAL(cn_status_reason(404), "Not Found");
    CU_ASSERT_STRING_EQUAL(cn_status_reason(409), "Conflict");
    CU_ASSERT_STRING_EQUAL(cn_status_reason(500), "Internal Server Error");
    CU_ASSERT_STRING_EQUAL(cn_status_reason(0), "Unknown");
    CU_ASSERT_STRING_EQUAL(cn_status_reason(299), "Unknown");
    CU_ASSERT_STRING_EQUAL(cn_status_reason(-1), "Unknown");
    CU_ASSERT_STRING_EQUAL(cn_status_reason(1000), "Unknown");
}

static void
test_json_string_or(void)
{
    cJSON *obj = cJSON_Parse("{\"s\":\"hello\",\"n\":1,\"b\":true,\"z\":null,\"e\":\"\"}");
    cJSON *arr = cJSON_Parse("[\"s\"]");
    cJSON *str = cJSON_CreateString("s");

    CU_ASSERT_PTR_NOT_NULL_FATAL(obj);
    CU_ASSERT_PTR_NOT_NULL_FATAL(arr);
    CU_ASSERT_STRING_EQUAL(cn_json_string_or(obj, "s", "fb"), "hello");
    /* Borrowed from the object, not copied. */
    CU_ASSERT_PTR_EQUAL(cn_json_string_or(obj, "s", "fb"),
                        cJSON_GetObjectItemCaseSensitive(obj, "s")->valuestring);
    CU_ASSERT_STRING_EQUAL(cn_json_string_or(obj, "e", "fb"), "");
    CU_ASSERT_STRING_EQUAL(cn_json_string_or(obj, "n", "fb"), "fb");
    CU_ASSERT_STRING_EQUAL(cn_json_string_or(obj, "b", "fb"), "fb");
    CU_ASSERT_STRING_EQUAL(cn_json_string_or(obj, "z", "fb"), "fb");
    CU_ASSERT_STRING_EQUAL(cn_json_string_or(obj, "missing", "fb"), "fb");
    CU_ASSERT_STRING_EQUAL(cn_json_string_or(NULL, "s", "fb"), "fb");
    CU_ASSERT_STRING_EQUAL(cn_json_string_or(arr, "s", "fb"), "fb");
    CU_ASSERT_STRING_EQUAL(cn_json_string_or(str, "s", "fb"), "fb");
    CU_ASSERT_PTR_NULL(cn_json_string_or(obj, "missing", NULL));
    cJSON_Delete(obj);
    cJSON_Delete(arr);
    cJSON_Delete(str);
}

static void
test_json_int_or(void)
{
    cJSON *obj = cJSON_Parse("{\"i\":42,\"neg\":-7,\"zero\":0,\"frac\":2.5,\"big\":1e12,"
                             "\"max\":2147483647,\"over\":2147483648,\"min\":-2147483648,"
                             "\"under\":-2147483649,\"s\":\"5\",\"b\":true,\"z\":null}");

    CU_ASSERT_PTR_NOT_NULL_FATAL(obj);
    CU_ASSERT_EQUAL(cn_json_int_or(obj, "i", -1), 42);
    CU_ASSERT_EQUAL(cn_json_int_or(obj, "neg", -1), -7);
    CU_ASSERT_EQUAL(cn_json_int_or(obj, "zero", -1), 0);
    CU_ASSERT_EQUAL(cn_json_int_or(obj, "frac", -1), -1);
    CU_ASSERT_EQUAL(cn_json_int_or(obj, "big", -1), -1);
    CU_ASSERT_EQUAL(cn_json_int_or(obj, "max", -1), INT_MAX);
    CU_ASSERT_EQUAL(cn_json_int_or(obj, "over", -1), -1);
    CU_ASSERT_EQUAL(cn_json_int_or(obj, "min", -1), INT_MIN);
    CU_ASSERT_EQUAL(cn_json_int_or(obj, "under", -1), -1);
    CU_ASSERT_EQUAL(cn_json_int_or(obj, "s", -1), -1);
    CU_ASSERT_EQUAL(cn_json_int_or(obj, "b", -1), -1);
    CU_ASSERT_EQUAL(cn_json_int_or(obj, "z", -1), -1);
    CU_ASSERT_EQUAL(cn_json_int_or(obj, "missing", 99), 99);
    CU_ASSERT_EQUAL(cn_json_int_or(NULL, "i", 99), 99);
    cJSON_Delete(obj);
}

static void
test_json_bool_or(void)
{
    cJSON *obj = cJSON_Parse("{\"t\":true,\"f\":false,\"n\":1,\"s\":\"true\",\"z\":null}");
    cJSON *arr = cJSON_Parse("[true]");

    CU_ASSERT_PTR_NOT_NULL_FATAL(obj);
    CU_ASSERT_PTR_NOT_NULL_FATAL(arr);
    CU_ASSERT_EQUAL(cn_json_bool_or(obj, "t", false), true);
    CU_ASSERT_EQUAL(cn_json_bool_or(obj, "f", true), false);
    CU_ASSERT_EQUAL(cn_json_bool_or(obj, "n", false), false);
    CU_ASSERT_EQUAL(cn_json_bool_or(obj, "s", false), false);
    CU_ASSERT_EQUAL(cn_json_bool_or(obj, "z", true), true);
    CU_ASSERT_EQUAL(cn_json_bool_or(obj, "missing", true), true);
    CU_ASSERT_EQUAL(cn_json_bool_or(NULL, "t", false), false);
    CU_ASSERT_EQUAL(cn_json_bool_or(arr, "t", false), false);
    cJSON_Delete(obj);
    cJSON_Delete(arr);
}

static void
test_json_object(void)
{
    cJSON *obj = cn_json_object("ok", cJSON_CreateTrue(), "id", cJSON_CreateString("o-1"), "qty",
                                cJSON_CreateNumber(3), "tags", cJSON_CreateArray(), NULL);
    char *text;
    size_t len = 0;

    CU_ASSERT_PTR_NOT_NULL_FATAL(obj);
    text = cJSON_PrintUnformatted(obj);
    CU_ASSERT_PTR_NOT_NULL_FATAL(text);
    CU_ASSERT_STRING_EQUAL(text, "{\"ok\":true,\"id\":\"o-1\",\"qty\":3,\"tags\":[]}");
    free(text);

    text = cn_json_print(obj, &len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(text);
    CU_ASSERT_STRING_EQUAL(text, "{\"ok\":true,\"id\":\"o-1\",\"qty\":3,\"tags\":[]}");
    CU_ASSERT_EQUAL(len, strlen(text));
    free(text);
    text = cn_json_print(obj, NULL); /* len is optional */
    CU_ASSERT_PTR_NOT_NULL(text);
    free(text);
    cJSON_Delete(obj);

    obj = cn_json_object(NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(obj);
    CU_ASSERT(cJSON_IsObject(obj));
    CU_ASSERT_PTR_NULL(obj->child);
    cJSON_Delete(obj);
}

int
main(void)
{
    static const unit_test_t tests[] = {
        {"cn_created", test_created},
        {"cn_ok, cn_accepted, cn_json_response", test_json_statuses},
        {"problem responses", test_problem},
        {"problem title is the reason phrase", test_problem_title},
        {"raw response copies bytes", test_raw},
        {"location is copied and replaceable", test_location},
        {"extra headers and refused names", test_add_header},
        {"persist override", test_persist},
        {"free of zeroed and NULL responses", test_free_zeroed_and_null},
        {"status reasons", test_status_reason},
        {"cn_json_string_or", test_json_string_or},
        {"cn_json_int_or", test_json_int_or},
        {"cn_json_bool_or", test_json_bool_or},
        {"cn_json_object and cn_json_print", test_json_object},
        {NULL, NULL},
    };

    return unit_run("response", tests);
}
