/*
 * realtime/message.h - the messages a WebSocket client sends the broadcaster, parsed
 * from untrusted text (see broadcast.h): {"type":"subscribe","room":R},
 * {"type":"unsubscribe","room":R}, {"type":"ping"}. Pure: no connection state, any
 * thread; the broadcaster acts on the result.
 */
#ifndef CN_REALTIME_MESSAGE_H
#define CN_REALTIME_MESSAGE_H

#include <stddef.h>

#include "realtime/event.h"

typedef enum cn_ws_msg_kind {
    CN_WS_MSG_INVALID = 0, /* why says what is wrong */
    CN_WS_MSG_PING,
    CN_WS_MSG_SUBSCRIBE,
    CN_WS_MSG_UNSUBSCRIBE,
} cn_ws_msg_kind_t;

typedef struct cn_ws_msg {
    cn_ws_msg_kind_t kind;
    /* subscribe, unsubscribe: 1..CN_EVENT_ROOM_MAX printable ASCII bytes without '"' or
     * '\\', so it goes into a JSON string as it is */
    char room[CN_EVENT_ROOM_MAX + 1];
    /* CN_WS_MSG_INVALID: a static sentence for the client, already escaped for the inside
     * of a JSON string */
    const char *why;
} cn_ws_msg_t;

/* Parses one text message of len bytes into *msg (always written). */
void cn__ws_message_parse(const char *text, size_t len, cn_ws_msg_t *msg);

#endif
