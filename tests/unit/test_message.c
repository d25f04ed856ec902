/*
 * tests/unit/test_message.c - cn__ws_message_parse: the text messages a WebSocket client
 * sends the broadcaster (ping, subscribe, unsubscribe) and what is rejected, with which
 * reason.
 */
#include <string.h>

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

static void
expect_room(const char *text, cn_ws_msg_kind_t kind, const char *room)
{
    cn_ws_msg_t m = parse(text);

    CU_ASSERT_EQUAL(m.kind, kind);
    CU_ASSERT_STRING_EQUAL(m.room, room);
    CU_ASSERT_PTR_NULL(m.why);
}

/* Rejected with a reason containing want. */
static void
expect_invalid(const char *text, const char *want)
{
    cn_ws_msg_t m = parse(text);

    CU_ASSERT_EQUAL(m.kind, CN_WS_MSG_INVALID);
    CU_ASSERT_PTR_NOT_NULL_FATAL(m.why);
    CU_ASSERT_PTR_NOT_NULL(strstr(m.why, want));
}

static void
test_ping(void)
{
    cn_ws_msg_t m = parse("{\"type\":\"ping\"}");

    CU_ASSERT_EQUAL(m.kind, CN_WS_MSG_PING);
    CU_ASSERT_PTR_NULL(m.why);
    m = parse(" {\"room\":\"ignored\", \"type\":\"ping\"} ");
    CU_ASSERT_EQUAL(m.kind, CN_WS_MSG_PING);
}

static void
test_subscribe_unsubscribe(void)
{
    expect_room("{\"type\":\"subscribe\",\"room\":\"tenant-a\"}", CN_WS_MSG_SUBSCRIBE,
                "tenant-a");
    expect_room("{\"room\":\"r 1\",\"type\":\"unsubscribe\"}", CN_WS_MSG_UNSUBSCRIBE, "r 1");
    /* JSON escapes are decoded before the room is judged. */
    expect_room("{\"type\":\"subscribe\",\"room\":\"\\u0041b\"}", CN_WS_MSG_SUBSCRIBE, "Ab");
}

static void
test_room_limits(void)
{
    char text[300], room[CN_EVENT_ROOM_MAX + 2];

    memset(room, 'r', sizeof(room) - 1);
    room[CN_EVENT_ROOM_MAX] = '\0';
    snprintf(text, sizeof(text), "{\"type\":\"subscribe\",\"room\":\"%s\"}", room);
    expect_room(text, CN_WS_MSG_SUBSCRIBE, room);
    room[CN_EVENT_ROOM_MAX] = 'r';
    room[CN_EVENT_ROOM_MAX + 1] = '\0';
    snprintf(text, sizeof(text), "{\"type\":\"subscribe\",\"room\":\"%s\"}", room);
    expect_invalid(text, "room");
    expect_invalid("{\"type\":\"subscribe\",\"room\":\"\"}", "room");
    expect_invalid("{\"type\":\"subscribe\",\"room\":\"a\\\"b\"}", "room");
    expect_invalid("{\"type\":\"subscribe\",\"room\":\"a\\\\b\"}", "room");
    expect_invalid("{\"type\":\"subscribe\",\"room\":\"a\\nb\"}", "room");
    expect_invalid("{\"type\":\"subscribe\",\"room\":\"caf\xc3\xa9\"}", "room");
    expect_invalid("{\"type\":\"subscribe\",\"room\":7}", "room");
    expect_invalid("{\"type\":\"unsubscribe\"}", "room");
}

static void
test_not_a_message(void)
{
    expect_invalid("", "JSON object");
    expect_invalid("{\"type\":", "JSON object");
    expect_invalid("[\"ping\"]", "JSON object");
    expect_invalid("{\"type\":1}", "JSON object");
    expect_invalid("{\"type\":\"hello\"}", "unknown message type");
    expect_invalid("{\"type\":\"Ping\"}", "unknown message type");
}

static void
test_only_len_bytes(void)
{
    static const char text[] = "{\"type\":\"ping\"}garbage";
    cn_ws_msg_t m;

    cn__ws_message_parse(text, 15, &m);
    CU_ASSERT_EQUAL(m.kind, CN_WS_MSG_PING);
    cn__ws_message_parse(text, 14, &m);
    CU_ASSERT_EQUAL(m.kind, CN_WS_MSG_INVALID);
}

int
main(void)
{
    static const unit_test_t tests[] = {
        {"ping", test_ping},
        {"subscribe and unsubscribe name a room", test_subscribe_unsubscribe},
        {"room names: 1..128 printable, no quote or backslash", test_room_limits},
        {"not a message", test_not_a_message},
        {"only len bytes are read", test_only_len_bytes},
        {NULL, NULL},
    };

    return unit_run("message", tests);
}
