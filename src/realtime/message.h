/*
 * realtime/message.h - the messages a WebSocket client sends the broadcaster, parsed
 * from untrusted text (see broadcast.h): {"type":"subscribe","room":R},
 * {"type":"unsubscribe","room":R}, {"type":"ping"} and
 * {"type":"command","id":I,"idempotency_key":K,"action":{"Name":{...}}} (realtime/
 * command.h runs it). Pure: no connection state, any thread; the broadcaster acts on the
 * result.
 */
#ifndef CN_REALTIME_MESSAGE_H
#define CN_REALTIME_MESSAGE_H

#include <stddef.h>

#include "realtime/event.h"

#define CN_WS_ID_MAX 128     /* a command's id: 1..128 printable ASCII bytes */
#define CN_WS_ACTION_MAX 64  /* an action name: [A-Za-z0-9._-]{1,64} */
#define CN_WS_KEY_MAX 1024   /* an idempotency_key longer than this is refused here (the
                              * server refuses anything over 255 bytes with a 400 anyway) */

typedef enum cn_ws_msg_kind {
    CN_WS_MSG_INVALID = 0, /* why says what is wrong */
    CN_WS_MSG_PING,
    CN_WS_MSG_SUBSCRIBE,
    CN_WS_MSG_UNSUBSCRIBE,
    CN_WS_MSG_COMMAND,
} cn_ws_msg_kind_t;

typedef struct cn_ws_msg {
    cn_ws_msg_kind_t kind;
    /* subscribe, unsubscribe: 1..CN_EVENT_ROOM_MAX printable ASCII bytes without '"' or
     * '\\', so it goes into a JSON string as it is */
    char room[CN_EVENT_ROOM_MAX + 1];
    /* CN_WS_MSG_INVALID: a static sentence for the client, already escaped for the inside
     * of a JSON string */
    const char *why;
    /* The message had "type":"command" (also when invalid: its error frame then carries
     * "id", the id below when has_id, else null). */
    int command;
    int has_id;
    char id[CN_WS_ID_MAX + 1]; /* printable ASCII; may hold '"' and '\\' (escape it) */
    /* CN_WS_MSG_COMMAND: */
    int has_key;
    char key[CN_WS_KEY_MAX + 1]; /* printable ASCII, may be empty */
    char action[CN_WS_ACTION_MAX + 1];
    /* The action's object exactly as the client wrote it (numbers keep every digit):
     * borrowed from the parsed text, valid as long as it is. */
    const char *args;
    size_t args_len;
} cn_ws_msg_t;

/* Parses one text message of len bytes into *msg (always written). */
void cn__ws_message_parse(const char *text, size_t len, cn_ws_msg_t *msg);

/* 1 when name is a valid action name ([A-Za-z0-9._-]{1,64}). */
int cn__ws_action_name_ok(const char *name);

#endif
