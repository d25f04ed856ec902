/*
 * realtime/message.c - parsing a WebSocket client's messages (see message.h). Runs in
 * the broadcaster process on its one thread; holds no state.
 */
#include <string.h>

#include <cjson/cJSON.h>

#include "realtime/message.h"

/* A valid room name: 1..128 printable ASCII bytes without '"' or '\\'. */
static int
room_ok(const char *r)
{
    size_t n = 0;

    for (; r[n]; n++) {
        if ((unsigned char)r[n] < 0x20 || (unsigned char)r[n] > 0x7e || r[n] == '"' ||
            r[n] == '\\')
            return 0;
    }
    return n >= 1 && n <= CN_EVENT_ROOM_MAX;
}

void
cn__ws_message_parse(const char *text, size_t len, cn_ws_msg_t *msg)
{
    cJSON *json = cJSON_ParseWithLength(text, len);
    const cJSON *type = json ? cJSON_GetObjectItemCaseSensitive(json, "type") : NULL;
    const cJSON *room = json ? cJSON_GetObjectItemCaseSensitive(json, "room") : NULL;

    memset(msg, 0, sizeof(*msg));
    msg->kind = CN_WS_MSG_INVALID;
    if (!json || !cJSON_IsObject(json) || !cJSON_IsString(type)) {
        msg->why = "expected a JSON object with a string \\\"type\\\"";
    } else if (!strcmp(type->valuestring, "ping")) {
        msg->kind = CN_WS_MSG_PING;
    } else if (!strcmp(type->valuestring, "subscribe") ||
               !strcmp(type->valuestring, "unsubscribe")) {
        if (!cJSON_IsString(room) || !room_ok(room->valuestring)) {
            msg->why = "\\\"room\\\" must be a string of 1 to 128 printable characters";
        } else {
            msg->kind = type->valuestring[0] == 's' ? CN_WS_MSG_SUBSCRIBE : CN_WS_MSG_UNSUBSCRIBE;
            strcpy(msg->room, room->valuestring);
        }
    } else {
        msg->why = "unknown message type (subscribe, unsubscribe or ping)";
    }
    cJSON_Delete(json);
}
