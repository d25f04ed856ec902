/*
 * fuzz_ws_message - a WebSocket client's text messages to the broadcaster
 * (realtime/message.c).
 *
 * Input: one text message. Properties: a rejected message has a reason, and the error
 * frame the broadcaster makes of it is valid JSON; an accepted room is 1..128 printable
 * ASCII bytes without '"' or '\\', the reply frame made of it is valid JSON carrying the
 * room, and the message rebuilt from the parsed result parses to the same result.
 * Commands (realtime/command.c too): a rejected command's error frame is valid JSON
 * with its id or null; an accepted one has a valid id, action name and key, its object
 * span is exactly the JSON object the message holds there, the job made of it has a
 * path with nothing but unreserved bytes and percent escapes in place of each field,
 * and a result frame with the input as the response body is valid UTF-8 JSON. The input
 * as an HTTP response head (the command client's decoder): incomplete, malformed, or a
 * head within the input with a three-digit status and a Content-Length that is either
 * absent or not negative.
 */
#include <errno.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "fuzz.h"
#include "realtime/command.h"
#include "realtime/message.h"
#include "support/utf8.h"

/* The broadcaster's control replies are built with snprintf into 192 bytes (CTL_LEN):
 * buf, n as snprintf made them from text. */
static void
check_reply(const char *buf, int n, const char *text, const char *key)
{
    cJSON *json;
    const cJSON *v;

    FUZZ_CHECK(n > 0 && n < 192);
    json = cJSON_Parse(buf);
    FUZZ_CHECK(json);
    v = cJSON_GetObjectItemCaseSensitive(json, key);
    FUZZ_CHECK(cJSON_IsString(v));
    if (!strcmp(key, "room"))
        FUZZ_CHECK(!strcmp(v->valuestring, text));
    cJSON_Delete(json);
}

/* A frame from realtime/command.c (headroom 0): valid UTF-8 JSON of that type, and its
 * "id" is id (NULL: null). */
static void
check_frame(char *buf, size_t len, const char *type, const char *id)
{
    cJSON *json, *v;

    FUZZ_CHECK(buf);
    FUZZ_CHECK(strlen(buf) == len && cn__utf8_valid(buf, len));
    json = cJSON_ParseWithLength(buf, len);
    FUZZ_CHECK(json);
    v = cJSON_GetObjectItemCaseSensitive(json, "type");
    FUZZ_CHECK(cJSON_IsString(v) && !strcmp(v->valuestring, type));
    v = cJSON_GetObjectItemCaseSensitive(json, "id");
    FUZZ_CHECK(id ? cJSON_IsString(v) && !strcmp(v->valuestring, id) : cJSON_IsNull(v));
    cJSON_Delete(json);
    free(buf);
}

static void
check_command(const uint8_t *data, size_t size, const cn_ws_msg_t *m)
{
    static cn_ws_commands_t table;
    static int ready;
    cJSON *whole, *args;
    const cJSON *action;
    cn_ws_job_t *job = NULL;
    char why[CN_WS_WHY_MAX];
    size_t n;
    int rc;

    if (!ready) {
        FUZZ_CHECK(!cn__ws_commands_add(&table, "A", "POST", "/a"));
        FUZZ_CHECK(!cn__ws_commands_add(&table, "B", "POST", "/b/{id}/x/{k}"));
        FUZZ_CHECK(!cn__ws_commands_add(&table, "PlaceOrder", "POST", "/api/v1/orders"));
        FUZZ_CHECK(!cn__ws_commands_add(&table, "CancelOrder", "POST",
                                        "/api/v1/orders/{order_id}/cancel"));
        ready = 1;
    }
    n = strlen(m->id);
    FUZZ_CHECK(m->has_id && n >= 1 && n <= CN_WS_ID_MAX);
    for (size_t i = 0; i < n; i++)
        FUZZ_CHECK(m->id[i] >= 0x20 && m->id[i] <= 0x7e);
    for (size_t i = 0; m->has_key && m->key[i]; i++)
        FUZZ_CHECK(m->key[i] >= 0x20 && m->key[i] <= 0x7e);
    FUZZ_CHECK(cn__ws_action_name_ok(m->action));
    /* The span is the object the message holds at action.<name>, byte for byte. */
    FUZZ_CHECK(m->args >= (const char *)data && m->args + m->args_len <= (const char *)data + size);
    whole = cJSON_ParseWithLength((const char *)data, size);
    args = cJSON_ParseWithLength(m->args, m->args_len);
    FUZZ_CHECK(whole && args && cJSON_IsObject(args));
    action = cJSON_GetObjectItemCaseSensitive(whole, "action");
    FUZZ_CHECK(action && action->child && !strcmp(action->child->string, m->action));
    {
        /* Printed, not cJSON_Compare: that one finds duplicate members unequal. */
        char *x = cJSON_PrintUnformatted(action->child), *y = cJSON_PrintUnformatted(args);
        FUZZ_CHECK(x && y && !strcmp(x, y));
        free(x);
        free(y);
    }
    cJSON_Delete(args);
    cJSON_Delete(whole);

    rc = cn__ws_job_new(&table, m, &job, why, sizeof(why));
    if (rc) {
        FUZZ_CHECK(rc == -EINVAL && why[0]);
        check_frame(cn__ws_error_frame(m->id, why, 0, &n), n, "error", m->id);
        return;
    }
    FUZZ_CHECK(job->path[0] == '/' && job->body_len == m->args_len);
    for (const char *p = job->path; *p; p++)
        FUZZ_CHECK((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                   (*p >= '0' && *p <= '9') || strchr("-._~/%", *p));
    cn__ws_job_free(job);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    cn_ws_answer_t answer = {200, 0, (char *)data, size};
    size_t len;
    cn_ws_msg_t m, back;
    cJSON *json;
    char *text, buf[192];
    size_t n;
    int w;

    /* Any response body makes a valid result frame. */
    check_frame(cn__ws_result_frame("r", &answer, 0, &len), len, "result", "r");
    {
        cn_ws_answer_t head = {0, 0, NULL, 0};
        long long content_length = -2;
        long hl = cn__ws_http_head((const char *)data, size, &head, &content_length);

        FUZZ_CHECK(hl == 0 || hl == -EPROTO || (hl > 0 && (size_t)hl <= size));
        if (hl > 0)
            FUZZ_CHECK(head.status >= 100 && head.status <= 999 && content_length >= -1 &&
                       (head.replayed == 0 || head.replayed == 1));
    }

    cn__ws_message_parse((const char *)data, size, &m);
    switch (m.kind) {
    case CN_WS_MSG_COMMAND:
        check_command(data, size, &m);
        return 0;
    case CN_WS_MSG_INVALID:
        FUZZ_CHECK(m.why && m.why[0]);
        if (m.command) {
            check_frame(cn__ws_error_frame(m.has_id ? m.id : NULL, m.why, 0, &len), len,
                        "error", m.has_id ? m.id : NULL);
            return 0;
        }
        w = snprintf(buf, sizeof(buf), "{\"type\":\"error\",\"message\":\"%s\"}", m.why);
        check_reply(buf, w, m.why, "message");
        return 0;
    case CN_WS_MSG_PING:
        return 0;
    case CN_WS_MSG_SUBSCRIBE:
    case CN_WS_MSG_UNSUBSCRIBE:
        break;
    default:
        FUZZ_CHECK(!"unknown message kind");
    }
    n = strlen(m.room);
    FUZZ_CHECK(n >= 1 && n <= CN_EVENT_ROOM_MAX);
    for (size_t i = 0; i < n; i++)
        FUZZ_CHECK(m.room[i] >= 0x20 && m.room[i] <= 0x7e && m.room[i] != '"' &&
                   m.room[i] != '\\');
    if (m.kind == CN_WS_MSG_SUBSCRIBE)
        w = snprintf(buf, sizeof(buf), "{\"type\":\"subscribed\",\"room\":\"%s\"}", m.room);
    else
        w = snprintf(buf, sizeof(buf), "{\"type\":\"unsubscribed\",\"room\":\"%s\"}", m.room);
    check_reply(buf, w, m.room, "room");

    json = cJSON_CreateObject();
    FUZZ_CHECK(json);
    cJSON_AddStringToObject(json, "type",
                            m.kind == CN_WS_MSG_SUBSCRIBE ? "subscribe" : "unsubscribe");
    cJSON_AddStringToObject(json, "room", m.room);
    text = cJSON_PrintUnformatted(json);
    FUZZ_CHECK(text);
    cn__ws_message_parse(text, strlen(text), &back);
    FUZZ_CHECK(back.kind == m.kind && !strcmp(back.room, m.room));
    free(text);
    cJSON_Delete(json);
    return 0;
}
