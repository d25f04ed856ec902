/*
 * tests/unit/test_command.c - WebSocket commands without libwebsockets: parsing command
 * messages (realtime/message.c), the command table, path templating with percent-
 * encoding, the result and error frames, the HTTP response head parser, and the request
 * pool running real HTTP/1.1 requests against a small server thread on loopback
 * (request bytes, answers, a server that never answers, cancellation at stop).
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>

#include <cjson/cJSON.h>

#include "cnerium/error.h"
#include "realtime/command.h"
#include "realtime/message.h"
#include "unit.h"

static cn_ws_msg_t
parse(const char *text)
{
    cn_ws_msg_t m;

    memset(&m, 0x5a, sizeof(m)); /* every field must be written */
    cn__ws_message_parse(text, strlen(text), &m);
    return m;
}

/* A command rejected with a reason containing want; id is the id the error names
 * (NULL: null). */
static void
expect_bad(const char *text, const char *id, const char *want)
{
    cn_ws_msg_t m = parse(text);

    CU_ASSERT_EQUAL(m.kind, CN_WS_MSG_INVALID);
    CU_ASSERT_EQUAL(m.command, 1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(m.why);
    if (!strstr(m.why, want))
        fprintf(stderr, "\n  %s: why %s, want %s\n", text, m.why, want);
    CU_ASSERT_PTR_NOT_NULL(strstr(m.why, want));
    CU_ASSERT_EQUAL(m.has_id, id != NULL);
    if (id) {
        CU_ASSERT_STRING_EQUAL(m.id, id);
    }
}

static int
args_is(const cn_ws_msg_t *m, const char *want)
{
    return m->args && m->args_len == strlen(want) && !memcmp(m->args, want, m->args_len);
}

static void
test_parse_command(void)
{
    cn_ws_msg_t m = parse("{\"type\":\"command\",\"id\":\"c1\",\"idempotency_key\":\"k1\","
                          "\"action\":{\"PlaceOrder\":{\"customer_id\":\"c\",\"n\":1}}}");

    CU_ASSERT_EQUAL(m.kind, CN_WS_MSG_COMMAND);
    CU_ASSERT_PTR_NULL(m.why);
    CU_ASSERT_STRING_EQUAL(m.id, "c1");
    CU_ASSERT_EQUAL(m.has_key, 1);
    CU_ASSERT_STRING_EQUAL(m.key, "k1");
    CU_ASSERT_STRING_EQUAL(m.action, "PlaceOrder");
    CU_ASSERT(args_is(&m, "{\"customer_id\":\"c\",\"n\":1}"));

    /* The object is the client's bytes: digits cJSON would round, spacing, nesting with
     * braces inside strings, members in any order, "action" not first. */
    m = parse("\xEF\xBB\xBF { \"action\" : { \"A.b_c-1\" : {\"big\": 12345678901234567891,"
              " \"s\":\"}{][\\\"\", \"o\":{\"x\":[1,{\"y\":2}]}} } , \"id\":\"x\","
              " \"type\":\"command\"}");
    CU_ASSERT_EQUAL_FATAL(m.kind, CN_WS_MSG_COMMAND);
    CU_ASSERT_EQUAL(m.has_key, 0);
    CU_ASSERT_STRING_EQUAL(m.action, "A.b_c-1");
    CU_ASSERT(args_is(&m, "{\"big\": 12345678901234567891, \"s\":\"}{][\\\"\", "
                          "\"o\":{\"x\":[1,{\"y\":2}]}}"));

    /* A duplicate "action" member: cJSON's (the first) is the one taken. */
    m = parse("{\"type\":\"command\",\"id\":\"d\",\"action\":{\"A\":{\"n\":1}},"
              "\"action\":{\"B\":{\"n\":2}}}");
    CU_ASSERT_EQUAL(m.kind, CN_WS_MSG_COMMAND);
    CU_ASSERT_STRING_EQUAL(m.action, "A");
    CU_ASSERT(args_is(&m, "{\"n\":1}"));

    /* An id of 128 printable bytes, with characters a JSON string escapes. */
    {
        char text[400], id[CN_WS_ID_MAX + 1];
        memset(id, 'i', CN_WS_ID_MAX);
        id[CN_WS_ID_MAX] = '\0';
        snprintf(text, sizeof(text),
                 "{\"type\":\"command\",\"id\":\"%s\",\"action\":{\"A\":{}}}", id);
        m = parse(text);
        CU_ASSERT_EQUAL(m.kind, CN_WS_MSG_COMMAND);
        CU_ASSERT_STRING_EQUAL(m.id, id);
        snprintf(text, sizeof(text),
                 "{\"type\":\"command\",\"id\":\"%si\",\"action\":{\"A\":{}}}", id);
        expect_bad(text, NULL, "id");
    }
    m = parse("{\"type\":\"command\",\"id\":\"a\\\"b\\\\\",\"idempotency_key\":\"\","
              "\"action\":{\"A\":{}}}");
    CU_ASSERT_EQUAL(m.kind, CN_WS_MSG_COMMAND);
    CU_ASSERT_STRING_EQUAL(m.id, "a\"b\\");
    CU_ASSERT_EQUAL(m.has_key, 1);
    CU_ASSERT_STRING_EQUAL(m.key, "");
}

static void
test_parse_bad_commands(void)
{
    expect_bad("{\"type\":\"command\",\"action\":{\"A\":{}}}", NULL, "id");
    expect_bad("{\"type\":\"command\",\"id\":7,\"action\":{\"A\":{}}}", NULL, "id");
    expect_bad("{\"type\":\"command\",\"id\":\"\",\"action\":{\"A\":{}}}", NULL, "id");
    expect_bad("{\"type\":\"command\",\"id\":\"a\\nb\",\"action\":{\"A\":{}}}", NULL, "id");
    expect_bad("{\"type\":\"command\",\"id\":\"caf\xc3\xa9\",\"action\":{\"A\":{}}}", NULL,
               "id");
    expect_bad("{\"type\":\"command\",\"id\":\"c\",\"idempotency_key\":1,"
               "\"action\":{\"A\":{}}}",
               "c", "idempotency_key");
    expect_bad("{\"type\":\"command\",\"id\":\"c\",\"idempotency_key\":null,"
               "\"action\":{\"A\":{}}}",
               "c", "idempotency_key");
    expect_bad("{\"type\":\"command\",\"id\":\"c\",\"idempotency_key\":\"a\\r\\nX: y\","
               "\"action\":{\"A\":{}}}",
               "c", "printable");
    expect_bad("{\"type\":\"command\",\"id\":\"c\"}", "c", "exactly one member");
    expect_bad("{\"type\":\"command\",\"id\":\"c\",\"action\":[]}", "c", "exactly one member");
    expect_bad("{\"type\":\"command\",\"id\":\"c\",\"action\":{}}", "c", "exactly one member");
    expect_bad("{\"type\":\"command\",\"id\":\"c\",\"action\":{\"A\":{},\"B\":{}}}", "c",
               "exactly one member");
    expect_bad("{\"type\":\"command\",\"id\":\"c\",\"action\":{\"A\":[]}}", "c", "JSON object");
    expect_bad("{\"type\":\"command\",\"id\":\"c\",\"action\":{\"A\":\"x\"}}", "c",
               "JSON object");
    expect_bad("{\"type\":\"command\",\"id\":\"c\",\"action\":{\"a b\":{}}}", "c",
               "unknown action");
    expect_bad("{\"type\":\"command\",\"id\":\"c\",\"action\":{\"\":{}}}", "c",
               "unknown action");
    {
        char text[300], name[CN_WS_ACTION_MAX + 2];
        memset(name, 'A', sizeof(name) - 1);
        name[CN_WS_ACTION_MAX + 1] = '\0';
        snprintf(text, sizeof(text),
                 "{\"type\":\"command\",\"id\":\"c\",\"action\":{\"%s\":{}}}", name);
        expect_bad(text, "c", "unknown action");
    }
    /* Not a command at all: the plain error, without an id. */
    {
        cn_ws_msg_t m = parse("{\"type\":\"commands\"}");
        CU_ASSERT_EQUAL(m.kind, CN_WS_MSG_INVALID);
        CU_ASSERT_EQUAL(m.command, 0);
        m = parse("[{\"type\":\"command\"}]");
        CU_ASSERT_EQUAL(m.kind, CN_WS_MSG_INVALID);
        CU_ASSERT_EQUAL(m.command, 0);
    }
}

static void
test_table(void)
{
    cn_ws_commands_t t;
    char name[16];

    memset(&t, 0, sizeof(t));
    CU_ASSERT_EQUAL(cn__ws_commands_add(&t, "PlaceOrder", "POST", "/api/v1/orders"), 0);
    CU_ASSERT_EQUAL(cn__ws_commands_add(&t, "CancelOrder", "POST",
                                        "/api/v1/orders/{order_id}/cancel"),
                    0);
    CU_ASSERT_EQUAL(cn__ws_commands_add(&t, "PlaceOrder", "PUT", "/x"), -EINVAL);
    CU_ASSERT_EQUAL(cn__ws_commands_add(&t, "Bad Name", "POST", "/x"), -EINVAL);
    CU_ASSERT_EQUAL(cn__ws_commands_add(&t, "", "POST", "/x"), -EINVAL);
    CU_ASSERT_EQUAL(cn__ws_commands_add(&t, NULL, "POST", "/x"), -EINVAL);
    CU_ASSERT_EQUAL(cn__ws_commands_add(&t, "X", "PATCH", "/x"), -EINVAL);
    CU_ASSERT_EQUAL(cn__ws_commands_add(&t, "X", "post", "/x"), -EINVAL);
    CU_ASSERT_EQUAL(cn__ws_commands_add(&t, "X", "POST", "x"), -EINVAL);
    CU_ASSERT_EQUAL(cn__ws_commands_add(&t, "X", "POST", "/a b"), -EINVAL);
    CU_ASSERT_EQUAL(cn__ws_commands_add(&t, "X", "POST", "/a\r\nb"), -EINVAL);
    CU_ASSERT_EQUAL(cn__ws_commands_add(&t, "X", "POST", "/{}"), -EINVAL);
    CU_ASSERT_EQUAL(cn__ws_commands_add(&t, "X", "POST", "/{a"), -EINVAL);
    CU_ASSERT_EQUAL(cn__ws_commands_add(&t, "X", "POST", "/a}"), -EINVAL);
    CU_ASSERT_EQUAL(cn__ws_commands_add(&t, "X", "POST", "/{a b}"), -EINVAL);
    CU_ASSERT_EQUAL(cn__ws_commands_add(&t, "X", "POST", "/{{a}}"), -EINVAL);
    CU_ASSERT_EQUAL(t.n, 2);
    CU_ASSERT_PTR_NOT_NULL(cn__ws_commands_find(&t, "CancelOrder"));
    CU_ASSERT_PTR_NULL(cn__ws_commands_find(&t, "cancelorder"));
    for (unsigned i = 2; i < CN_WS_COMMANDS_MAX; i++) {
        snprintf(name, sizeof(name), "C%u", i);
        CU_ASSERT_EQUAL(cn__ws_commands_add(&t, name, "DELETE", "/c/{id}"), 0);
    }
    CU_ASSERT_EQUAL(cn__ws_commands_add(&t, "OneTooMany", "GET", "/x"), CN_ETOOBIG);
    CU_ASSERT_EQUAL(t.n, CN_WS_COMMANDS_MAX);
    cn__ws_commands_free(&t);
    CU_ASSERT_EQUAL(t.n, 0);
    cn__ws_commands_free(NULL);
}

static void
expect_path(const char *tmpl, const char *args, const char *want)
{
    char why[CN_WS_WHY_MAX] = "", *out = NULL;
    int rc = cn__ws_path_expand(tmpl, args, strlen(args), &out, why, sizeof(why));

    CU_ASSERT_EQUAL(rc, 0);
    if (!rc) {
        if (strcmp(out, want))
            fprintf(stderr, "\n  %s -> %s, want %s\n", tmpl, out, want);
        CU_ASSERT_STRING_EQUAL(out, want);
    }
    free(out);
}

static void
expect_path_error(const char *tmpl, const char *args, const char *want)
{
    char why[CN_WS_WHY_MAX] = "", *out = NULL;

    CU_ASSERT_EQUAL(cn__ws_path_expand(tmpl, args, strlen(args), &out, why, sizeof(why)),
                    -EINVAL);
    CU_ASSERT_PTR_NULL(out);
    CU_ASSERT_PTR_NOT_NULL(strstr(why, want));
}

static void
test_path_templating(void)
{
    expect_path("/orders", "{}", "/orders");
    expect_path("/orders/{order_id}/cancel", "{\"order_id\":\"o-1.x_~\"}",
                "/orders/o-1.x_~/cancel");
    /* Everything outside the RFC 3986 unreserved set is percent-encoded: a value cannot
     * add a path segment, a query or a second request. */
    expect_path("/o/{id}", "{\"id\":\"a/b?c=d&e#f g%\"}", "/o/a%2Fb%3Fc%3Dd%26e%23f%20g%25");
    expect_path("/o/{id}", "{\"id\":\"a\\r\\nHost: x\"}", "/o/a%0D%0AHost%3A%20x");
    expect_path("/o/{id}", "{\"id\":\"caf\xc3\xa9\"}", "/o/caf%C3%A9");
    expect_path("/o/{id}", "{\"id\":\"..\"}", "/o/..");
    expect_path("/{a}/{b}/{a}", "{\"b\":\"2\",\"a\":\"1\",\"c\":3}", "/1/2/1");
    expect_path("/o/{id}", "{\"id\":\"\"}", "/o/");
    expect_path_error("/o/{order_id}", "{}", "\\\"order_id\\\"");
    expect_path_error("/o/{order_id}", "{\"order_id\":7}", "\\\"order_id\\\"");
    expect_path_error("/o/{order_id}", "{\"order_id\":null}", "string field");
    expect_path_error("/o/{order_id}", "{\"Order_id\":\"x\"}", "order_id");
    expect_path_error("/o", "[]", "JSON object");
}

static void
test_job_new(void)
{
    cn_ws_commands_t t;
    cn_ws_msg_t m;
    cn_ws_job_t *j = NULL;
    char why[CN_WS_WHY_MAX];

    memset(&t, 0, sizeof(t));
    CU_ASSERT_EQUAL_FATAL(cn__ws_commands_add(&t, "Ship", "POST", "/o/{id}/ship"), 0);
    m = parse("{\"type\":\"command\",\"id\":\"c9\",\"idempotency_key\":\"k\","
              "\"action\":{\"Ship\":{\"id\":\"a b\",\"tracking_number\":\"T\"}}}");
    CU_ASSERT_EQUAL_FATAL(m.kind, CN_WS_MSG_COMMAND);
    CU_ASSERT_EQUAL_FATAL(cn__ws_job_new(&t, &m, &j, why, sizeof(why)), 0);
    CU_ASSERT_STRING_EQUAL(j->id, "c9");
    CU_ASSERT_STRING_EQUAL(j->method, "POST");
    CU_ASSERT_STRING_EQUAL(j->path, "/o/a%20b/ship");
    CU_ASSERT_STRING_EQUAL(j->body, "{\"id\":\"a b\",\"tracking_number\":\"T\"}");
    CU_ASSERT_EQUAL(j->body_len, strlen(j->body));
    CU_ASSERT_STRING_EQUAL(j->key, "k");
    cn__ws_job_free(j);
    j = NULL;

    m = parse("{\"type\":\"command\",\"id\":\"c9\",\"action\":{\"Ship\":{}}}");
    CU_ASSERT_EQUAL(cn__ws_job_new(&t, &m, &j, why, sizeof(why)), -EINVAL);
    CU_ASSERT_PTR_NULL(j);
    CU_ASSERT_PTR_NOT_NULL(strstr(why, "\\\"id\\\""));
    m = parse("{\"type\":\"command\",\"id\":\"c9\",\"action\":{\"Fly\":{}}}");
    CU_ASSERT_EQUAL(cn__ws_job_new(&t, &m, &j, why, sizeof(why)), -EINVAL);
    CU_ASSERT_STRING_EQUAL(why, "unknown action");
    cn__ws_commands_free(&t);
    cn__ws_job_free(NULL);
}

/* Parses a frame built at headroom 5 and checks type and id. Returns the tree (owned). */
static cJSON *
frame_json(char *buf, size_t len, const char *type, const char *id)
{
    cJSON *j;
    const cJSON *v;

    CU_ASSERT_PTR_NOT_NULL_FATAL(buf);
    CU_ASSERT_EQUAL(strlen(buf + 5), len);
    j = cJSON_ParseWithLength(buf + 5, len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(j);
    CU_ASSERT_STRING_EQUAL(cJSON_GetObjectItemCaseSensitive(j, "type")->valuestring, type);
    v = cJSON_GetObjectItemCaseSensitive(j, "id");
    if (id) {
        CU_ASSERT(cJSON_IsString(v) && !strcmp(v->valuestring, id));
    } else {
        CU_ASSERT(cJSON_IsNull(v));
    }
    free(buf);
    return j;
}

static void
test_frames(void)
{
    cn_ws_answer_t a = {201, 0, NULL, 0};
    const char *json = " {\"order_id\":\"o1\",\"total_cents\":12345678901234567891}\n";
    size_t len;
    char *buf;
    cJSON *j;
    const cJSON *body;

    /* A JSON body goes in as it is: every digit kept. */
    a.body = (char *)json;
    a.body_len = strlen(json);
    buf = cn__ws_result_frame("c1", &a, 5, &len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(buf);
    CU_ASSERT_PTR_NOT_NULL(strstr(buf + 5, "\"body\":{\"order_id\":\"o1\",\"total_cents\":"
                                           "12345678901234567891},\"replayed\":false}"));
    j = frame_json(buf, len, "result", "c1");
    CU_ASSERT_EQUAL(cJSON_GetObjectItemCaseSensitive(j, "status")->valueint, 201);
    CU_ASSERT(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(j, "replayed")));
    cJSON_Delete(j);

    /* Not JSON (text, two values, invalid UTF-8, empty): a JSON string of it. */
    a = (cn_ws_answer_t){200, 1, "plain \"text\"\n\x01", 14};
    buf = cn__ws_result_frame("a\"b\\", &a, 5, &len);
    j = frame_json(buf, len, "result", "a\"b\\");
    body = cJSON_GetObjectItemCaseSensitive(j, "body");
    CU_ASSERT(cJSON_IsString(body) && !strcmp(body->valuestring, "plain \"text\"\n\x01"));
    CU_ASSERT(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "replayed")));
    cJSON_Delete(j);
    a = (cn_ws_answer_t){200, 0, "{} {}", 5};
    buf = cn__ws_result_frame("x", &a, 5, &len);
    j = frame_json(buf, len, "result", "x");
    body = cJSON_GetObjectItemCaseSensitive(j, "body");
    CU_ASSERT(cJSON_IsString(body) && !strcmp(body->valuestring, "{} {}"));
    cJSON_Delete(j);
    a = (cn_ws_answer_t){200, 0, "\"caf\xe9\"", 6};
    buf = cn__ws_result_frame("x", &a, 5, &len);
    j = frame_json(buf, len, "result", "x");
    body = cJSON_GetObjectItemCaseSensitive(j, "body");
    CU_ASSERT(cJSON_IsString(body) && !strcmp(body->valuestring, "\"caf\xef\xbf\xbd\""));
    cJSON_Delete(j);
    a = (cn_ws_answer_t){204, 0, NULL, 0};
    buf = cn__ws_result_frame("x", &a, 5, &len);
    j = frame_json(buf, len, "result", "x");
    body = cJSON_GetObjectItemCaseSensitive(j, "body");
    CU_ASSERT(cJSON_IsString(body) && !strcmp(body->valuestring, ""));
    cJSON_Delete(j);

    /* Only strict JSON goes in as it is (a lenient parser's extras would break the
     * frame for strict clients); anything else becomes a string. */
    {
        static const char *const raw[] = {"1e5", "-0.5E-3", "[]", "[1,{\"a\":[true,null]}]",
                                          "\"\\u00e9\\n\\/\"", "{\"\":false}", "0",
                                          "\"\\ud83d\\ude00\"", "\"\\uD800\\uDFFF\""};
        static const char *const text[] = {"01", "+1", "1.", ".5", "[1,]", "{\"a\":1,}",
                                           "\"a\tb\"", "\"\\x\"", "\"\\u12\"", "nul",
                                           "{'a':1}", "[1] [2]", "\xef\xbb\xbf{}", "-",
                                           /* lone surrogates */
                                           "\"\\udddd\"", "\"\\ud800\"", "\"\\ud800x\"",
                                           "\"\\ud800\\u0041\"", "\"\\ud800\\ud800\"",
                                           "\"\\ud800\\u\"", "\"\\ud800\\"};
        for (size_t i = 0; i < sizeof(raw) / sizeof(raw[0]); i++) {
            char want[64];
            a = (cn_ws_answer_t){200, 0, (char *)raw[i], strlen(raw[i])};
            buf = cn__ws_result_frame("x", &a, 5, &len);
            snprintf(want, sizeof(want), "\"body\":%s,", raw[i]);
            CU_ASSERT_PTR_NOT_NULL(strstr(buf + 5, want));
            cJSON_Delete(frame_json(buf, len, "result", "x"));
        }
        for (size_t i = 0; i < sizeof(text) / sizeof(text[0]); i++) {
            a = (cn_ws_answer_t){200, 0, (char *)text[i], strlen(text[i])};
            buf = cn__ws_result_frame("x", &a, 5, &len);
            j = frame_json(buf, len, "result", "x");
            body = cJSON_GetObjectItemCaseSensitive(j, "body");
            if (!cJSON_IsString(body))
                fprintf(stderr, "\n  %s went in as JSON\n", text[i]);
            CU_ASSERT(cJSON_IsString(body));
            cJSON_Delete(j);
        }
    }

    /* Errors: the id or null, the (already escaped) message. */
    buf = cn__ws_error_frame(NULL, "\\\"id\\\" is bad", 5, &len);
    j = frame_json(buf, len, "error",
                   NULL);
    CU_ASSERT_STRING_EQUAL(cJSON_GetObjectItemCaseSensitive(j, "message")->valuestring,
                           "\"id\" is bad");
    cJSON_Delete(j);
    buf = cn__ws_error_frame("c\"2", "unknown action", 5, &len);
    j = frame_json(buf, len, "error",
                   "c\"2");
    cJSON_Delete(j);
}

static void
test_http_head(void)
{
    cn_ws_answer_t a;
    long long cl;
    const char *ok = "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"
                     "content-length:  12 \r\nIdempotent-Replayed: true\r\n\r\n{...}";

    CU_ASSERT_EQUAL(cn__ws_http_head(ok, strlen(ok), &a, &cl), (long)(strlen(ok) - 5));
    CU_ASSERT_EQUAL(a.status, 201);
    CU_ASSERT_EQUAL(a.replayed, 1);
    CU_ASSERT_EQUAL(cl, 12);
    CU_ASSERT_EQUAL(cn__ws_http_head(ok, 30, &a, &cl), 0); /* not complete yet */
    CU_ASSERT(cn__ws_http_head("HTTP/1.0 404 Not Found\r\n\r\n", 26, &a, &cl) > 0);
    CU_ASSERT_EQUAL(a.status, 404);
    CU_ASSERT_EQUAL(a.replayed, 0);
    CU_ASSERT_EQUAL(cl, -1);
    CU_ASSERT_EQUAL(cn__ws_http_head("HTTP/1.1 200\r\n\r\n", 16, &a, &cl), 16);
    CU_ASSERT_EQUAL(cn__ws_http_head("HTTX/1.1 200 OK\r\n\r\n", 19, &a, &cl), -EPROTO);
    CU_ASSERT_EQUAL(cn__ws_http_head("HTTP/1.1 2x0 OK\r\n\r\n", 19, &a, &cl), -EPROTO);
    CU_ASSERT_EQUAL(cn__ws_http_head("HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\n", 39, &a,
                                     &cl),
                    -EPROTO);
    CU_ASSERT_EQUAL(cn__ws_http_head("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n"
                                     "Content-Length: 1\r\n\r\n",
                                     57, &a, &cl),
                    -EPROTO);
    CU_ASSERT_EQUAL(cn__ws_http_head("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                                     47, &a, &cl),
                    -EPROTO);
}

static void
test_target(void)
{
    struct sockaddr_in in = {.sin_family = AF_INET, .sin_port = htons(8080)};
    struct sockaddr_in6 in6 = {.sin6_family = AF_INET6, .sin6_port = htons(9)};
    cn_ws_target_t t;

    in.sin_addr.s_addr = htonl(INADDR_ANY);
    CU_ASSERT_EQUAL(cn__ws_target_init(&t, (struct sockaddr *)&in, sizeof(in)), 0);
    CU_ASSERT_STRING_EQUAL(t.host, "127.0.0.1:8080");
    in6.sin6_addr = in6addr_any;
    CU_ASSERT_EQUAL(cn__ws_target_init(&t, (struct sockaddr *)&in6, sizeof(in6)), 0);
    CU_ASSERT_STRING_EQUAL(t.host, "[::1]:9");
    inet_pton(AF_INET, "10.1.2.3", &in.sin_addr);
    CU_ASSERT_EQUAL(cn__ws_target_init(&t, (struct sockaddr *)&in, sizeof(in)), 0);
    CU_ASSERT_STRING_EQUAL(t.host, "10.1.2.3:8080");
}

/* ---- the pool against a loopback server thread ---- */

typedef struct fake_server {
    int fd;
    struct sockaddr_in addr;
    int silent;     /* accept and read, never answer */
    int stop_efd;   /* readable: stop */
    char last[4096]; /* the last request received */
    size_t last_len;
    unsigned served;
    pthread_mutex_t mu;
    pthread_t thread;
} fake_server_t;

static void *
fake_main(void *arg)
{
    fake_server_t *s = arg;

    for (;;) {
        struct pollfd pf[2] = {{s->fd, POLLIN, 0}, {s->stop_efd, POLLIN, 0}};
        char req[4096];
        size_t len = 0;
        int c;

        if (poll(pf, 2, 10000) <= 0 || pf[1].revents)
            break;
        if ((c = accept(s->fd, NULL, NULL)) < 0)
            continue;
        /* The request: head, then Content-Length bytes. */
        for (;;) {
            struct pollfd cp[2] = {{c, POLLIN, 0}, {s->stop_efd, POLLIN, 0}};
            ssize_t n;
            char *end, *cl;

            if (poll(cp, 2, 10000) <= 0 || cp[1].revents)
                break;
            if ((n = recv(c, req + len, sizeof(req) - 1 - len, 0)) <= 0)
                break;
            len += (size_t)n;
            req[len] = '\0';
            if ((end = strstr(req, "\r\n\r\n")) && (cl = strstr(req, "Content-Length: ")) &&
                len >= (size_t)(end + 4 - req) + strtoul(cl + 16, NULL, 10))
                break;
        }
        pthread_mutex_lock(&s->mu);
        memcpy(s->last, req, len);
        s->last_len = len;
        s->served++;
        pthread_mutex_unlock(&s->mu);
        if (s->silent) {
            /* Hold the connection until told to stop. */
            struct pollfd sp = {s->stop_efd, POLLIN, 0};
            poll(&sp, 1, 10000);
            close(c);
            break;
        }
        {
            static const char resp[] = "HTTP/1.1 201 Created\r\nContent-Type: application/json"
                                       "\r\nIdempotent-Replayed: true\r\nContent-Length: 11"
                                       "\r\n\r\n{\"ok\":true}";
            (void)send(c, resp, sizeof(resp) - 1, MSG_NOSIGNAL);
        }
        close(c);
    }
    return NULL;
}

static void
fake_start(fake_server_t *s, int silent)
{
    socklen_t len = sizeof(s->addr);

    memset(s, 0, sizeof(*s));
    s->silent = silent;
    pthread_mutex_init(&s->mu, NULL);
    s->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    s->addr.sin_family = AF_INET;
    s->addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CU_ASSERT_EQUAL_FATAL(bind(s->fd, (struct sockaddr *)&s->addr, sizeof(s->addr)), 0);
    CU_ASSERT_EQUAL_FATAL(listen(s->fd, 16), 0);
    getsockname(s->fd, (struct sockaddr *)&s->addr, &len);
    s->stop_efd = eventfd(0, EFD_CLOEXEC);
    CU_ASSERT_EQUAL_FATAL(pthread_create(&s->thread, NULL, fake_main, s), 0);
}

static void
fake_stop(fake_server_t *s)
{
    uint64_t one = 1;

    (void)write(s->stop_efd, &one, sizeof(one));
    pthread_join(s->thread, NULL);
    close(s->fd);
    close(s->stop_efd);
    pthread_mutex_destroy(&s->mu);
}

static cn_ws_job_t *
make_job(const char *id, const char *key)
{
    cn_ws_job_t *j = calloc(1, sizeof(*j));

    strcpy(j->id, id);
    strcpy(j->method, "POST");
    j->path = strdup("/orders/a%20b");
    j->body = strdup("{\"n\":12345678901234567891}");
    j->body_len = strlen(j->body);
    j->key = key ? strdup(key) : NULL;
    j->owner = 42;
    j->slot = 7;
    return j;
}

/* Waits (bounded) for n finished jobs; returns them in a list. */
static cn_ws_job_t *
take_n(cn_ws_pool_t *p, unsigned n)
{
    cn_ws_job_t *all = NULL, **tail = &all;
    unsigned got = 0;
    uint64_t deadline = unit_now_ms() + 30000;

    while (got < n && unit_now_ms() < deadline) {
        struct pollfd pf = {cn__ws_pool_fd(p), POLLIN, 0};
        cn_ws_job_t *j;

        poll(&pf, 1, 1000);
        for (j = cn__ws_pool_take(p); j; j = j->next) {
            *tail = j;
            tail = &j->next;
            got++;
        }
    }
    return all;
}

static void
free_jobs(cn_ws_job_t *j)
{
    while (j) {
        cn_ws_job_t *next = j->next;
        cn__ws_job_free(j);
        j = next;
    }
}

static void
test_pool_requests(void)
{
    fake_server_t s;
    cn_ws_pool_config_t pc = {.threads = 2, .capacity = 3, .connect_ms = 5000,
                              .timeout_ms = 20000, .headroom = 5};
    cn_ws_pool_t *p = NULL;
    cn_ws_job_t *done;
    unsigned n = 0;
    cJSON *j;

    fake_start(&s, 0);
    CU_ASSERT_EQUAL_FATAL(cn__ws_target_init(&pc.target, (struct sockaddr *)&s.addr,
                                             sizeof(s.addr)),
                          0);
    CU_ASSERT_EQUAL_FATAL(cn__ws_pool_start(&pc, &p), 0);
    CU_ASSERT_EQUAL(cn__ws_pool_submit(p, make_job("c1", "k \"1\"")), 0);
    done = take_n(p, 1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(done);
    CU_ASSERT_EQUAL(done->owner, 42);
    CU_ASSERT_EQUAL(done->slot, 7);
    j = frame_json(done->frame, done->frame_len, "result", "c1");
    done->frame = NULL;
    CU_ASSERT_EQUAL(cJSON_GetObjectItemCaseSensitive(j, "status")->valueint, 201);
    CU_ASSERT(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "replayed")));
    CU_ASSERT(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(j, "body"), "ok")));
    cJSON_Delete(j);
    free_jobs(done);
    /* What the server got: the request line, the key as an RFC 8941 string (exact
     * bytes), the JSON body unchanged. */
    pthread_mutex_lock(&s.mu);
    s.last[s.last_len] = '\0';
    CU_ASSERT(!strncmp(s.last, "POST /orders/a%20b HTTP/1.1\r\nHost: 127.0.0.1:", 45));
    CU_ASSERT_PTR_NOT_NULL(strstr(s.last, "\r\nIdempotency-Key: \"k \\\"1\\\"\"\r\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(s.last, "\r\nContent-Type: application/json\r\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(s.last, "\r\n\r\n{\"n\":12345678901234567891}"));
    pthread_mutex_unlock(&s.mu);

    /* Several at once, no key: every one answered. */
    for (int i = 0; i < 3; i++)
        CU_ASSERT_EQUAL(cn__ws_pool_submit(p, make_job("m", NULL)), 0);
    done = take_n(p, 3);
    for (cn_ws_job_t *d = done; d; d = d->next, n++)
        CU_ASSERT_PTR_NOT_NULL(strstr(d->frame + 5, "\"status\":201"));
    CU_ASSERT_EQUAL(n, 3);
    free_jobs(done);
    pthread_mutex_lock(&s.mu);
    CU_ASSERT_PTR_NULL(strstr(s.last, "Idempotency-Key"));
    pthread_mutex_unlock(&s.mu);
    cn__ws_pool_stop(p);
    fake_stop(&s);
}

static void
test_pool_silent_server(void)
{
    fake_server_t s;
    cn_ws_pool_config_t pc = {.threads = 1, .capacity = 2, .connect_ms = 5000,
                              .timeout_ms = 300, .headroom = 5};
    cn_ws_pool_t *p = NULL;
    cn_ws_job_t *done, *third = make_job("c3", NULL);
    cJSON *j;

    fake_start(&s, 1);
    cn__ws_target_init(&pc.target, (struct sockaddr *)&s.addr, sizeof(s.addr));
    CU_ASSERT_EQUAL_FATAL(cn__ws_pool_start(&pc, &p), 0);
    /* A server that never answers: the request times out into an error frame. */
    CU_ASSERT_EQUAL(cn__ws_pool_submit(p, make_job("c1", "k")), 0);
    done = take_n(p, 1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(done);
    j = frame_json(done->frame, done->frame_len, "error", "c1");
    done->frame = NULL;
    CU_ASSERT_PTR_NOT_NULL(
        strstr(cJSON_GetObjectItemCaseSensitive(j, "message")->valuestring, "in time"));
    cJSON_Delete(j);
    free_jobs(done);
    /* The capacity bounds jobs queued or running. */
    CU_ASSERT_EQUAL(cn__ws_pool_submit(p, make_job("c2", NULL)), 0);
    CU_ASSERT_EQUAL(cn__ws_pool_submit(p, make_job("c2b", NULL)), 0);
    CU_ASSERT_EQUAL(cn__ws_pool_submit(p, third), -EBUSY);
    cn__ws_job_free(third);
    /* Stopping with requests in progress and queued frees them all (ASan checks). */
    cn__ws_pool_stop(p);
    fake_stop(&s);
}

static void
test_pool_refused(void)
{
    struct sockaddr_in addr = {.sin_family = AF_INET};
    socklen_t len = sizeof(addr);
    cn_ws_pool_config_t pc = {.threads = 1, .capacity = 4, .connect_ms = 5000,
                              .timeout_ms = 20000, .headroom = 0};
    cn_ws_pool_t *p = NULL;
    cn_ws_job_t *done;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    /* A port that was bound and then closed: nothing listens there. */
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(fd, (struct sockaddr *)&addr, sizeof(addr));
    getsockname(fd, (struct sockaddr *)&addr, &len);
    close(fd);
    cn__ws_target_init(&pc.target, (struct sockaddr *)&addr, sizeof(addr));
    CU_ASSERT_EQUAL_FATAL(cn__ws_pool_start(&pc, &p), 0);
    CU_ASSERT_EQUAL(cn__ws_pool_submit(p, make_job("c1", NULL)), 0);
    done = take_n(p, 1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(done);
    CU_ASSERT_PTR_NOT_NULL(strstr(done->frame, "\"type\":\"error\""));
    CU_ASSERT_PTR_NOT_NULL(strstr(done->frame, "could not be reached"));
    free_jobs(done);
    cn__ws_pool_stop(p);
    cn__ws_pool_stop(NULL);
}

int
main(void)
{
    static const unit_test_t tests[] = {
        {"command messages: id, key, action and its object as sent", test_parse_command},
        {"bad command messages name their id or null", test_parse_bad_commands},
        {"command table: names, methods, templates, limit", test_table},
        {"path templating percent-encodes string fields", test_path_templating},
        {"a parsed command becomes a job", test_job_new},
        {"result and error frames", test_frames},
        {"HTTP response heads", test_http_head},
        {"the target: wildcard bound address -> loopback", test_target},
        {"pool: requests sent and answered", test_pool_requests},
        {"pool: a silent server times out; capacity; stop cancels", test_pool_silent_server},
        {"pool: a refused connection is an error frame", test_pool_refused},
        {NULL, NULL},
    };

    return unit_run("command", tests);
}
