/*
 * realtime/event.h - events: buffered by a request (cn_emit, cn_emit_to), carried inside
 * its record to the persister, numbered and stored in the same LMDB transaction as the
 * record, and sent to WebSocket clients by the broadcaster.
 *
 * The event list and stored-event byte layouts and their codec are in store/format.h.
 * The frame a client receives: {"type":T,"payload":P,"seq":N} plus "room":R when set
 * ({"type":T,<members of P>,"seq":N,...} for a merged one: a published stream event),
 * always well-formed UTF-8 (ill-formed bytes of an old stored event become U+FFFD).
 */
#ifndef CN_REALTIME_EVENT_H
#define CN_REALTIME_EVENT_H

#include <stddef.h>
#include <stdint.h>

#include "store/format.h"

#define CN_EVENT_TYPE_MAX 128
#define CN_EVENT_ROOM_MAX 128
#define CN_EVENT_PAYLOAD_MAX (256u * 1024)
#define CN_EVENTS_MAX 64 /* per request */

typedef struct cn_event {
    char *type;    /* owned */
    char *room;    /* owned, NULL for every client */
    char *payload; /* owned JSON text, "null" when none */
    size_t payload_len;
    struct cn_event *next;
} cn_event_t;

/* Frees a list. Accepts NULL. */
void cn__events_free(cn_event_t *list);

/* The client frame for ev numbered seq, malloc'd with `headroom` unused bytes before it
 * (libwebsockets needs LWS_PRE); *len is the frame's length without the headroom.
 * NULL when out of memory. */
uint8_t *cn__event_frame(const cn_event_view_t *ev, uint64_t seq, size_t headroom, size_t *len);

#endif
