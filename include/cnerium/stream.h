/*
 * cnerium/stream.h - event streams, committed with the durable record.
 *
 * A stream is an ordered list of events under a stream id ("order-42"). Events are
 * numbered per stream from version 1 and, across every stream, by a global position
 * (gapless, increasing, in commit order). Nothing is ever removed.
 *
 * Appends made by a durable handler travel in its record: the stored response, the
 * realtime events it emitted and its stream appends are written in ONE WAL record and
 * applied in ONE LMDB transaction, or not at all. A process killed at any point leaves
 * either all of them or none, and a retry of the same key replays the stored response
 * without appending again.
 *
 * Expected versions are checked where commits are serialized (the persister), against
 * every commit before, in commit order. When one does not hold, nothing of the request
 * is stored, its key is free again, and the client gets 409
 * urn:cnerium:problem:wrong-expected-version with the stream's current version (or the
 * status set with cn_stream_conflict_status), unless the handler asked to run again on
 * fresh state (cn_stream_retry_on_conflict). A request with an expectation other than
 * CN_STREAM_ANY always waits for that decision, also with --durability async.
 *
 * Reads (versions, stream pages, the global log) work in any handler, durable or not,
 * and see every commit applied before the read started, whichever worker made it.
 */
#ifndef CNERIUM_STREAM_H
#define CNERIUM_STREAM_H

#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "request.h"

/* Expected versions: these, or an exact version N >= 0 (0: the stream must not exist,
 * as CN_STREAM_NO_STREAM; N: its last event must be version N). */
#define CN_STREAM_ANY (-1)       /* no check */
#define CN_STREAM_NO_STREAM (-2) /* the stream must not exist yet */
#define CN_STREAM_EXISTS (-3)    /* the stream must have at least one event */

#define CN_STREAM_ID_MAX 255   /* bytes, printable ASCII (0x20..0x7e) */
#define CN_STREAM_TYPE_MAX 64  /* bytes of [A-Za-z0-9._-] */
#define CN_STREAM_APPENDS_MAX 64 /* per request */
#define CN_STREAM_ROOMS_MAX 4    /* rooms one append is published to */

/* Appends an event of `type` with `data` (consumed, also on failure; NULL = JSON null)
 * to stream_id, checked against `expected` at commit. Only inside a durable handler.
 * Returns 0; -EINVAL for a bad stream id, type or expected value, or outside a durable
 * handler; CN_ETOOBIG past CN_STREAM_APPENDS_MAX appends or data over --stream-event-max
 * bytes; -EILSEQ for data with a string that is not well-formed UTF-8; -ENOMEM. A failed
 * append fails the request as a failed cn_emit does: nothing is stored, the key is free,
 * a response below 500 becomes a 500 problem. */
int cn_stream_append(cn_request_t *req, const char *stream_id, int64_t expected,
                     const char *type, cJSON *data);

/* The same, and the committed event is also sent to WebSocket clients of each of the
 * nrooms rooms (at most CN_STREAM_ROOMS_MAX; 1..128 printable ASCII bytes without '"'
 * or '\\'), as one realtime event per room, numbered in the same commit:
 *   {"type":"event","action":{"<type>":<data>},"stream":"<id>","version":V,
 *    "position":P,"seq":N,"room":"<room>"}
 * A client in two of the rooms receives it twice, with the same position. */
int cn_stream_append_publish(cn_request_t *req, const char *stream_id, int64_t expected,
                             const char *type, cJSON *data, const char *const *rooms,
                             size_t nrooms);

/* The status (400..499) answered when an expected version does not hold: 409 unless
 * set (e.g. 412 for an If-Match precondition). Returns 0 or -EINVAL. */
int cn_stream_conflict_status(cn_request_t *req, int status);

/* Asks that, when an expected version of this run's appends does not hold, the request
 * start over (key, claim, handler) on fresh state instead of answering the conflict, at
 * most max_reruns more times in all (0..CN_STREAM_RERUNS_MAX; 0: answer the conflict).
 * Nothing of a refused run is kept; the handler must read what it checks again. A run
 * that is not the last sees the count in cn_stream_reruns. Returns 0, or -EINVAL outside
 * a durable handler or past the bound. */
#define CN_STREAM_RERUNS_MAX 16
int cn_stream_retry_on_conflict(cn_request_t *req, unsigned max_reruns);

/* How many times this request has started over after a conflict (0 on its first run). */
unsigned cn_stream_reruns(const cn_request_t *req);

/* One committed event. Strings are NUL-terminated and owned by the page or the fold
 * call that returned them. */
typedef struct cn_stream_event {
    const char *stream_id;
    uint64_t version;    /* in its stream, from 1 */
    uint64_t position;   /* in the global log, from 1 */
    uint64_t created_ms; /* commit time, ms since the Unix epoch */
    const char *type;
    const char *data;    /* JSON text */
    size_t data_len;
} cn_stream_event_t;

typedef struct cn_stream_page {
    cn_stream_event_t *events;
    size_t count;
    int more;      /* 1 when more events follow in the direction read */
    uint64_t next; /* where the next page starts (a version, or a position) */
} cn_stream_page_t;

typedef enum cn_stream_direction {
    CN_STREAM_FORWARD = 0,
    CN_STREAM_BACKWARD = 1,
} cn_stream_direction_t;

/* The stream's current version (0: no such stream) in *version. Returns 0, -EINVAL for
 * a bad stream id, or a storage error. */
int cn_stream_version(cn_request_t *req, const char *stream_id, uint64_t *version);

/* Reads up to max events (1..1000) of stream_id starting at version `from` (included;
 * forward from 1 reads from the start, backward from UINT64_MAX from the end) into page
 * (free with cn_stream_page_free). A missing stream is an empty page. Returns 0, -EINVAL,
 * -ENOMEM or a storage error. */
int cn_stream_read(cn_request_t *req, const char *stream_id, uint64_t from,
                   cn_stream_direction_t dir, size_t max, cn_stream_page_t *page);

/* Reads up to max events (1..1000) of the global log from position `from` (included)
 * forward. Returns as cn_stream_read. */
int cn_log_read(cn_request_t *req, uint64_t from, size_t max, cn_stream_page_t *page);

/* The last committed position (0: the log is empty). */
int cn_log_head(cn_request_t *req, uint64_t *position);

void cn_stream_page_free(cn_stream_page_t *page);

/* Folds the global log into user state: calls fold(ev, state) for every event after
 * *position, in order, at most max of them (0: no limit), advancing *position past each
 * event fold accepted (returned 0). fold returning non-zero stops with *position at the
 * event before it, and that value is returned. The caller serializes calls sharing a
 * position (a read model shared by request threads needs a lock). Returns 0 when caught
 * up to the log as it was when the call started, the fold's non-zero value, or a
 * negative error. */
typedef int (*cn_fold_cb)(const cn_stream_event_t *ev, void *state);
int cn_log_catch_up(cn_request_t *req, uint64_t *position, size_t max, cn_fold_cb fold,
                    void *state);

#endif
