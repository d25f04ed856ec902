/*
 * fuzz_ws_message - a WebSocket client's text messages to the broadcaster
 * (realtime/message.c).
 *
 * Input: one text message. Properties: a rejected message has a reason, and the error
 * frame the broadcaster makes of it is valid JSON; an accepted room is 1..128 printable
 * ASCII bytes without '"' or '\\', the reply frame made of it is valid JSON carrying the
 * room, and the message rebuilt from the parsed result parses to the same result.
 */
#include <string.h>

#include <cjson/cJSON.h>

#include "fuzz.h"
#include "realtime/message.h"

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

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    cn_ws_msg_t m, back;
    cJSON *json;
    char *text, buf[192];
    size_t n;
    int w;

    cn__ws_message_parse((const char *)data, size, &m);
    switch (m.kind) {
    case CN_WS_MSG_INVALID:
        FUZZ_CHECK(m.why && m.why[0]);
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
