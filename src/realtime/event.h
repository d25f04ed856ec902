/*
 * realtime/event.h - events: buffered by a request (cn_emit, cn_emit_to), carried inside
 * its record to the persister, numbered and stored in the same LMDB transaction as the
 * record, and sent to WebSocket clients by the broadcaster.
 *
 * An event list travels encoded (integers little-endian):
 *   0  2  count
 *   then per event:  2 type length, 2 room length (0: no room), 4 payload length,
 *                    type, room, payload (JSON text)
 * A stored event (LMDB "events", key be64(seq)) is 8 bytes of creation time (ms since
 * the epoch) followed by one event's encoding (without the count).
 * The frame a client receives: {"type":T,"payload":P,"seq":N} plus "room":R when set,
 * always well-formed UTF-8 (ill-formed bytes of an old stored event become U+FFFD).
 */
#ifndef CN_REALTIME_EVENT_H
#define CN_REALTIME_EVENT_H

#include <stddef.h>
#include <stdint.h>

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

/* A decoded event: pointers into the encoded bytes (not NUL-terminated). */
typedef struct cn_event_view {
    const char *type;
    size_t type_len;
    const char *room; /* room_len 0: no room */
    size_t room_len;
    const char *payload;
    size_t payload_len;
    uint64_t created_ms; /* stored events only */
} cn_event_view_t;

/* Frees a list. Accepts NULL. */
void cn__events_free(cn_event_t *list);

/* Bytes the encoded list takes (2 for an empty list). */
size_t cn__events_encoded_size(const cn_event_t *list);

/* Encodes list into out (cap bytes). Returns 0 and *written, or CN_ETOOBIG. */
int cn__events_encode(const cn_event_t *list, uint8_t *out, size_t cap, size_t *written);

/* Reads the count of an encoded list (len bytes) and points *cursor at its first event.
 * Returns the count, or -1 when the bytes are not a list. */
long cn__events_begin(const uint8_t *p, size_t len, const uint8_t **cursor);

/* Decodes the event at *cursor (end bounds it) and advances. Returns 0 or CN_ECORRUPT. */
int cn__events_next(const uint8_t **cursor, const uint8_t *end, cn_event_view_t *ev);

/* Decodes a stored event (creation time + one event). Returns 0 or CN_ECORRUPT. */
int cn__event_stored_decode(const uint8_t *p, size_t len, cn_event_view_t *ev);

/* Bytes of a stored event for view ev (its created_ms included). */
size_t cn__event_stored_size(const cn_event_view_t *ev);

/* Writes the stored form of ev into out (cn__event_stored_size bytes). */
void cn__event_stored_encode(const cn_event_view_t *ev, uint8_t *out);

/* 1 when s (n bytes) is well-formed UTF-8 (no overlong forms, surrogates or code points
 * past U+10FFFF), else 0. */
int cn__event_utf8_valid(const char *s, size_t n);

/* Copies s (n bytes) to out, each maximal ill-formed subsequence replaced by U+FFFD (so
 * out needs 3 * n bytes at most). Returns the bytes written. */
size_t cn__event_utf8_copy(uint8_t *out, const char *s, size_t n);

/* The client frame for ev numbered seq, malloc'd with `headroom` unused bytes before it
 * (libwebsockets needs LWS_PRE); *len is the frame's length without the headroom.
 * NULL when out of memory. */
uint8_t *cn__event_frame(const cn_event_view_t *ev, uint64_t seq, size_t headroom, size_t *len);

#endif
