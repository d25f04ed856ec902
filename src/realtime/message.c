/*
 * realtime/message.c - parsing a WebSocket client's messages (see message.h). Runs in
 * the broadcaster process on its one thread; holds no state.
 *
 * A command's action object is handed on as the bytes the client sent, not as cJSON
 * would print it again (cJSON keeps numbers as doubles: an integer above 2^53 would
 * change). cJSON judges the message; a small scanner then finds the object's span in
 * the text, by member position, which is document order in both.
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

/* 1 when s is lo..hi printable ASCII bytes. */
static int
printable(const char *s, size_t lo, size_t hi)
{
    size_t n = 0;

    for (; s[n]; n++) {
        if ((unsigned char)s[n] < 0x20 || (unsigned char)s[n] > 0x7e)
            return 0;
    }
    return n >= lo && n <= hi;
}

int
cn__ws_action_name_ok(const char *name)
{
    size_t n = 0;

    if (!name)
        return 0;
    for (; name[n]; n++) {
        char c = name[n];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return 0;
    }
    return n >= 1 && n <= CN_WS_ACTION_MAX;
}

/* ---- the span of a value in text cJSON has accepted (bounds checked all the same) ---- */

#define NOWHERE ((size_t)-1)

/* cJSON skips every byte <= 0x20 as whitespace. */
static size_t
skip_ws(const char *t, size_t len, size_t i)
{
    while (i < len && (unsigned char)t[i] <= 0x20)
        i++;
    return i;
}

static size_t
skip_string(const char *t, size_t len, size_t i)
{
    for (i++; i < len; i++) {
        if (t[i] == '\\')
            i++;
        else if (t[i] == '"')
            return i + 1;
    }
    return NOWHERE;
}

/* The end of the value that starts at t[i]. */
static size_t
skip_value(const char *t, size_t len, size_t i)
{
    size_t depth = 0;

    if (i >= len)
        return NOWHERE;
    if (t[i] == '"')
        return skip_string(t, len, i);
    if (t[i] != '{' && t[i] != '[') {
        while (i < len && (unsigned char)t[i] > 0x20 && t[i] != ',' && t[i] != '}' &&
               t[i] != ']')
            i++;
        return i;
    }
    while (i < len) {
        if (t[i] == '"') {
            if ((i = skip_string(t, len, i)) == NOWHERE)
                return NOWHERE;
            continue;
        }
        if (t[i] == '{' || t[i] == '[')
            depth++;
        else if ((t[i] == '}' || t[i] == ']') && --depth == 0)
            return i + 1;
        i++;
    }
    return NOWHERE;
}

/* The span [*start, *end) of the value of member k (0-based) of the object at t[i]. */
static int
member_span(const char *t, size_t len, size_t i, unsigned k, size_t *start, size_t *end)
{
    i = skip_ws(t, len, i);
    if (i >= len || t[i] != '{')
        return -1;
    for (unsigned m = 0;; m++) {
        size_t s, e;

        i = skip_ws(t, len, i + 1); /* past '{' or ',' */
        if ((i = skip_string(t, len, i)) == NOWHERE)
            return -1;
        i = skip_ws(t, len, i);
        if (i >= len || t[i] != ':')
            return -1;
        s = skip_ws(t, len, i + 1);
        if ((e = skip_value(t, len, s)) == NOWHERE)
            return -1;
        if (m == k) {
            *start = s;
            *end = e;
            return 0;
        }
        i = skip_ws(t, len, e);
        if (i >= len || t[i] != ',')
            return -1;
    }
}

/* The position of the first member named name among obj's members. */
static int
member_index(const cJSON *obj, const char *name, unsigned *k)
{
    unsigned i = 0;

    for (const cJSON *m = obj->child; m; m = m->next, i++) {
        if (m->string && !strcmp(m->string, name)) {
            *k = i;
            return 0;
        }
    }
    return -1;
}

static void
parse_command(const char *text, size_t len, const cJSON *json, cn_ws_msg_t *msg)
{
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(json, "id");
    const cJSON *key = cJSON_GetObjectItemCaseSensitive(json, "idempotency_key");
    const cJSON *action = cJSON_GetObjectItemCaseSensitive(json, "action");
    size_t start = 0, end = 0, astart = 0, aend = 0;
    unsigned k = 0;

    msg->command = 1;
    if (cJSON_IsString(id) && printable(id->valuestring, 1, CN_WS_ID_MAX)) {
        strcpy(msg->id, id->valuestring);
        msg->has_id = 1;
    }
    if (!msg->has_id) {
        msg->why = "\\\"id\\\" must be a string of 1 to 128 printable ASCII characters";
        return;
    }
    if (key && !cJSON_IsString(key)) {
        msg->why = "\\\"idempotency_key\\\" must be a string";
        return;
    }
    if (key && !printable(key->valuestring, 0, (size_t)-1)) {
        msg->why = "\\\"idempotency_key\\\" must contain printable ASCII characters only";
        return;
    }
    if (key && strlen(key->valuestring) > CN_WS_KEY_MAX) {
        msg->why = "\\\"idempotency_key\\\" is too long (the server takes at most 255 bytes)";
        return;
    }
    if (!cJSON_IsObject(action) || !action->child || action->child->next) {
        msg->why = "\\\"action\\\" must be an object with exactly one member: "
                   "{\\\"Name\\\":{...}}";
        return;
    }
    if (!cn__ws_action_name_ok(action->child->string)) {
        msg->why = "unknown action";
        return;
    }
    if (!cJSON_IsObject(action->child)) {
        msg->why = "the action's value must be a JSON object";
        return;
    }
    /* cJSON accepted the text, so the spans are there; a failure would be a scanner bug,
     * answered as a bad message rather than trusted. */
    if (member_index(json, "action", &k) || member_span(text, len, 0, k, &astart, &aend) ||
        member_span(text, len, astart, 0, &start, &end) || aend > len) {
        msg->why = "malformed command";
        return;
    }
    if (key) {
        strcpy(msg->key, key->valuestring);
        msg->has_key = 1;
    }
    strcpy(msg->action, action->child->string);
    msg->args = text + start;
    msg->args_len = end - start;
    msg->kind = CN_WS_MSG_COMMAND;
}

void
cn__ws_message_parse(const char *text, size_t len, cn_ws_msg_t *msg)
{
    cJSON *json = cJSON_ParseWithLength(text, len);
    const cJSON *type = json ? cJSON_GetObjectItemCaseSensitive(json, "type") : NULL;
    const cJSON *room = json ? cJSON_GetObjectItemCaseSensitive(json, "room") : NULL;
    size_t skip = 0;

    memset(msg, 0, sizeof(*msg));
    msg->kind = CN_WS_MSG_INVALID;
    /* cJSON skips a UTF-8 byte order mark; the span scanner must start after it too. */
    if (len >= 3 && !memcmp(text, "\xEF\xBB\xBF", 3))
        skip = 3;
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
    } else if (!strcmp(type->valuestring, "command")) {
        parse_command(text + skip, len - skip, json, msg);
    } else {
        msg->why = "unknown message type (subscribe, unsubscribe, ping or command)";
    }
    cJSON_Delete(json);
}
