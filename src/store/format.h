/*
 * store/format.h - the byte layouts that cross a process or reach the disk, in one place:
 * the stored-response record, the event list and the stored event, the record a worker
 * hands to the persister through its ring, and the header of a WAL DATA frame's payload.
 *
 * Every decoder here takes untrusted bytes (a damaged disk, a torn write, a dead
 * worker's half-written ring slot): each length is checked before it is used, nothing is
 * allocated, and the views it fills borrow from the input. Pure functions, any process,
 * any thread. Integers are little-endian throughout.
 *
 * The WAL frame and segment layout around these payloads is store/wal.h's; the shared
 * memory region's is shm/'s.
 *
 * ---- Stored-response record, version 1 (LMDB "responses", and inside ring payloads) ----
 *   0   4  magic "CNRR"
 *   4   1  version (1)
 *   5   1  flags (0; reserved)
 *   6   2  status
 *   8   8  created, ms since the Unix epoch
 *   16  8  expires, ms since the Unix epoch
 *   24  32 request fingerprint
 *   56  4  content type length  (0 = no Content-Type)
 *   60  4  location length      (0 = no Location)
 *   64  4  body length
 *   68  .. content type, location, body
 *   end 4  CRC-32C of every byte before it
 * Version 2 (written only for a response with stored headers; version 1 otherwise, so
 * records without them are byte for byte what they always were) adds, after the body:
 *   4  length of the stored headers, then that many bytes of "Name: value\r\n" lines
 * before the CRC. Both versions decode.
 * A cn_record_t is a view: its pointers borrow from the encoded buffer (after decode)
 * or from the caller (before encode).
 *
 * ---- Event list (a request's events, inside ring payloads) ----
 *   0  2  count
 *   then per event:  2 type length, 2 room length (0: no room), 4 payload length,
 *                    type, room, payload (JSON text)
 * ---- Stored event (LMDB "events", key be64(seq)) ----
 *   8 bytes of creation time (ms since the epoch) followed by one event's encoding as in
 *   the list (without the count). Bit 15 of the stored type length marks a merged event
 *   (a stream event published to a room): its payload is a JSON object whose members
 *   join the client frame's top level instead of sitting under "payload".
 *
 * ---- Stream appends (a request's cn_stream_append calls, inside ring payloads) ----
 *   0  2  count
 *   then per append: 1 stream id length, 1 type length, 1 room count, 1 zero,
 *                    8 expected version (signed: CN_STREAM_ANY, ... or N >= 0),
 *                    4 data length, stream id, type, data (JSON text),
 *                    then per room: 1 room length, room
 * ---- Stream event (LMDB "log", key be64(position)) ----
 *   0  8  created, ms since the epoch     8  8  version in its stream
 *   16 1  stream id length   17 1 type length   18 2 zero   20 4 data length
 *   24 .. stream id, type, data
 *
 * ---- Ring payload: a record a worker hands over to the persister ----
 *   0   1  version (1)
 *   1   1  kind: CN_PERSIST_PUT (a stored response), CN_PERSIST_PUT_EVENTS (a stored
 *          response and the events its handler emitted), CN_PERSIST_EVENTS (events of an
 *          ordinary route; key and record lengths are 0), CN_PERSIST_PUT_STREAMS (a
 *          stored response, its events and its stream appends)
 *   2   2  store key length
 *   4   4  encoded record length
 *   8   .. store key, encoded record, then (kinds with events) the encoded event list
 *          up to the end; CN_PERSIST_PUT_STREAMS: 4 bytes of event list length (0: no
 *          events), the event list, then the encoded appends up to the end
 *
 * ---- WAL DATA frame payload: a 24-byte header followed by that ring payload ----
 *   0   8  epoch of the server start     8  8  the record's seq in its worker's ring
 *   16  2  worker                        18 2  zero      20 4  ring payload length
 * (epoch, worker, seq) names a record: a persister that restarts skips records it had
 * already applied, so nothing is applied twice and nothing in a ring is lost.
 */
#ifndef CN_STORE_FORMAT_H
#define CN_STORE_FORMAT_H

#include <stddef.h>
#include <stdint.h>

#include "reliability/fingerprint.h"

/* ---- stored-response record ---- */

#define CN_RECORD_VERSION 1
#define CN_RECORD_VERSION_HEADERS 2 /* with stored headers */
/* Stored headers of one response, at most (the "Name: value\r\n" lines). */
#define CN_RECORD_HEADERS_MAX 8192
#define CN_RECORD_HEADER_LEN 68
#define CN_RECORD_TRAILER_LEN 4
/* Bounds any single field so lengths can never overflow size_t arithmetic. */
#define CN_RECORD_FIELD_MAX (64u * 1024 * 1024)

typedef struct cn_record {
    uint16_t status;
    uint64_t created_ms;
    uint64_t expires_ms;
    uint8_t fingerprint[CN_SHA256_LEN];
    const char *content_type;
    uint32_t content_type_len;
    const char *location;
    uint32_t location_len;
    const char *body;
    uint32_t body_len;
    const char *headers;   /* "Name: value\r\n" lines, replayed; NULL with 0 */
    uint32_t headers_len;
} cn_record_t;

/* Bytes cn__record_encode will write for rec. */
size_t cn__record_encoded_size(const cn_record_t *rec);

/* Encodes rec into buf (cap bytes). Returns 0 and sets *written, CN_ETOOBIG when a field
 * exceeds CN_RECORD_FIELD_MAX, or -ENOSPC when cap is too small. */
int cn__record_encode(const cn_record_t *rec, uint8_t *buf, size_t cap, size_t *written);

/* Decodes len bytes. Returns 0 with *rec pointing into buf; CN_ECORRUPT for a bad magic,
 * length, CRC or truncated input; CN_EVERSION for an unknown version. *rec is written
 * only on success. */
int cn__record_decode(const uint8_t *buf, size_t len, cn_record_t *rec);

/* ---- events ---- */

/* The list a request buffers (realtime/event.h defines it; encoding only reads it). */
typedef struct cn_event cn_event_t;

/* A decoded event: pointers into the encoded bytes (not NUL-terminated). */
typedef struct cn_event_view {
    const char *type;
    size_t type_len;
    const char *room; /* room_len 0: no room */
    size_t room_len;
    const char *payload;
    size_t payload_len;
    uint64_t created_ms; /* stored events only */
    int merged;          /* stored events only: a published stream event */
} cn_event_view_t;

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

/* ---- stream appends ---- */

/* The list a request buffers (stream/stream.h defines it; encoding only reads it). */
typedef struct cn_append cn_append_t;

#define CN_APPEND_HEADER 16
#define CN_APPEND_ROOMS_MAX 4

/* A decoded append: pointers into the encoded bytes (not NUL-terminated). */
typedef struct cn_append_view {
    const char *stream;
    size_t stream_len;
    const char *type;
    size_t type_len;
    int64_t expected;
    const char *data;
    size_t data_len;
    const char *rooms[CN_APPEND_ROOMS_MAX];
    size_t room_lens[CN_APPEND_ROOMS_MAX];
    unsigned nrooms;
} cn_append_view_t;

/* Bytes the encoded list takes (2 for an empty list). */
size_t cn__appends_encoded_size(const cn_append_t *list);

/* Encodes list into out (cap bytes). Returns 0 and *written, or CN_ETOOBIG. */
int cn__appends_encode(const cn_append_t *list, uint8_t *out, size_t cap, size_t *written);

/* Reads the count of an encoded list and points *cursor at its first append. Returns the
 * count, or -1 when the bytes are not a list. */
long cn__appends_begin(const uint8_t *p, size_t len, const uint8_t **cursor);

/* Decodes the append at *cursor (end bounds it) and advances. Checks every length, that
 * the stream id and rooms are printable ASCII, the type [A-Za-z0-9._-] and the expected
 * version valid. Returns 0 or CN_ECORRUPT. */
int cn__appends_next(const uint8_t **cursor, const uint8_t *end, cn_append_view_t *a);

/* The payload of the realtime event a published append becomes, merged into the client
 * frame's top level: {"action":{"<type>":<data>},"stream":"<id>","version":V,
 * "position":P}. _cap is the most bytes it takes; cn__append_event_payload writes it
 * to out and returns its length. */
size_t cn__append_event_payload_cap(const cn_append_view_t *a);
size_t cn__append_event_payload(const cn_append_view_t *a, uint64_t version, uint64_t position,
                                uint8_t *out);

/* A stream event as stored in the global log. */
typedef struct cn_log_view {
    uint64_t created_ms, version;
    const char *stream;
    size_t stream_len;
    const char *type;
    size_t type_len;
    const char *data;
    size_t data_len;
} cn_log_view_t;

#define CN_LOG_HEADER 24

size_t cn__log_entry_size(const cn_log_view_t *e);
void cn__log_entry_encode(const cn_log_view_t *e, uint8_t *out);
/* Returns 0 or CN_ECORRUPT. */
int cn__log_entry_decode(const uint8_t *p, size_t len, cn_log_view_t *e);

/* ---- ring payload ---- */

#define CN_PERSIST_PUT 1
#define CN_PERSIST_EVENTS 2
#define CN_PERSIST_PUT_EVENTS 3
#define CN_PERSIST_PUT_STREAMS 4
#define CN_PERSIST_PUT_HEADER 8

/* Bytes cn__persist_put_encode writes. */
size_t cn__persist_put_size(size_t keylen, const cn_record_t *rec);

/* Encodes a put of rec under key into out (cap bytes). Returns 0 and *written, or
 * CN_ETOOBIG. */
int cn__persist_put_encode(uint8_t *out, size_t cap, const char *key, size_t keylen,
                           const cn_record_t *rec, size_t *written);

/* Splits a put (kind CN_PERSIST_PUT). Returns 0 (pointers into p) or CN_ECORRUPT. */
int cn__persist_put_decode(const uint8_t *p, size_t len, const char **key, size_t *keylen,
                           const uint8_t **rec, size_t *reclen);

/* Any kind but CN_PERSIST_PUT_STREAMS: rec NULL for events only; events NULL (or an
 * empty list) for none. */
size_t cn__persist_record_size(size_t keylen, const cn_record_t *rec, size_t events_len);
int cn__persist_record_encode(uint8_t *out, size_t cap, const char *key, size_t keylen,
                              const cn_record_t *rec, const uint8_t *events, size_t events_len,
                              size_t *written);

/* CN_PERSIST_PUT_STREAMS: a stored response (rec, required), its events (NULL or an
 * empty list for none) and its stream appends (an encoded list of at least one). */
size_t cn__persist_streams_size(size_t keylen, const cn_record_t *rec, size_t events_len,
                                size_t appends_len);
int cn__persist_streams_encode(uint8_t *out, size_t cap, const char *key, size_t keylen,
                               const cn_record_t *rec, const uint8_t *events,
                               size_t events_len, const uint8_t *appends, size_t appends_len,
                               size_t *written);

typedef struct cn_persist_record {
    int kind;
    const char *key; /* NULL for CN_PERSIST_EVENTS */
    size_t keylen;
    const uint8_t *rec;
    size_t reclen;
    const uint8_t *events; /* NULL when none */
    size_t events_len;
    const uint8_t *appends; /* NULL when none */
    size_t appends_len;
} cn_persist_record_t;

/* Splits any kind. Returns 0 (pointers into p) or CN_ECORRUPT. */
int cn__persist_record_decode(const uint8_t *p, size_t len, cn_persist_record_t *out);

/* ---- WAL DATA frame payload ---- */

#define CN_PERSIST_WAL_HEADER 24

typedef struct cn_wal_payload {
    uint64_t epoch, seq;
    uint16_t worker;
    uint32_t len;       /* ring payload length */
    const uint8_t *put; /* the ring payload, borrowed from the decoded bytes */
} cn_wal_payload_t;

/* Writes the 24-byte header for a ring payload of len bytes into out. */
void cn__format_wal_header_encode(uint8_t *out, uint64_t epoch, uint64_t seq, uint16_t worker,
                                  uint32_t len);

/* Splits a WAL DATA frame's payload (len bytes). Returns 0, or CN_ECORRUPT when it is
 * shorter than the header, names a worker past CN_STORE_META_WORKERS or its length does
 * not match. *h is written only on success. */
int cn__format_wal_payload_decode(const uint8_t *p, size_t len, cn_wal_payload_t *h);

#endif
