/*
 * http/relay.h - a request passed on in pieces (the gateway's passthrough).
 *
 * A relay joins two sides running on different threads: the near side is the HTTP
 * server's connection (it sends the request body in as it arrives and takes the answer
 * out as the client can take it); the far side is whoever answers (the gateway's upstream
 * client: it takes the body as it can send it, then gives the answer's head and body).
 * Each direction is a bounded window of bytes (CN_RELAY_WINDOW), so a fast side waits for
 * a slow one instead of piling bytes up in memory: neither body is ever held whole.
 *
 * Nobody blocks. A side that cannot go on (window full, nothing to read yet) says so
 * by the call's result, and the other side's next step that changes that wakes it:
 * the near side through park/unpark (suspending and resuming its connection; see
 * cn__relay_park), the far side through its wake callback. All state is under one lock;
 * callbacks that leave the relay's module run outside it, except park (see there).
 *
 * Lifetime: two references, one per side. Each side lets go exactly once
 * (cn__relay_near_close, cn__relay_far_close); the relay is freed when both have, and
 * when every reference a wake callback was handed is given back (cn__relay_unref).
 */
#ifndef CN_HTTP_RELAY_H
#define CN_HTTP_RELAY_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "cnerium/response.h"

typedef struct cn_relay cn_relay_t;

/* Bytes each direction holds before its writer has to wait. */
#define CN_RELAY_WINDOW ((size_t)64 * 1024)

/* Results of the calls below (negative; a byte count otherwise). */
enum {
    CN_RELAY_WAIT = -1,   /* nothing now: the caller is woken when there is */
    CN_RELAY_END = -2,    /* the body ended as it should */
    CN_RELAY_BROKEN = -3, /* the other side is gone, or its body broke off */
};

/* The near side's way to stop and restart (its connection): park is called with the
 * relay's lock held, from the near side's own thread; unpark from the far side's thread
 * without the lock, only for a parked near side, which cannot go away while parked. */
typedef struct cn_relay_near {
    void (*park)(void *arg);
    void (*unpark)(void *arg);
    void *arg;
} cn_relay_near_t;

/* The far side's wake: called outside the lock on the near side's thread when the far
 * side may go on (body bytes came or ended, answer space freed, the near side left).
 * The callee owns one reference to r and gives it back with cn__relay_unref once done. */
typedef void (*cn_relay_wake_cb)(void *ctx, cn_relay_t *r);

/* A relay for a request whose body is body_length bytes (-1: not known in advance, a
 * chunked upload; 0: none). NULL when out of memory. */
cn_relay_t *cn__relay_new(int64_t body_length, const cn_relay_near_t *near);

/* The far side takes the relay: wake is how it is woken from now on; tag is the far
 * side's own (cn__relay_far_tag). */
void cn__relay_bind_far(cn_relay_t *r, cn_relay_wake_cb wake, void *ctx, void *tag);

/* The tag given to cn__relay_bind_far. */
void *cn__relay_far_tag(cn_relay_t *r);

int64_t cn__relay_body_length(const cn_relay_t *r);

/* ---- the near side ---- */

/* Passes up to n body bytes on; returns how many were taken (fewer than n when the
 * window is full: the caller parks and sends the rest once woken), or CN_RELAY_BROKEN
 * when the connection should be closed (the far side is gone and the rest of a body it
 * will never read has gone past a bound). Bytes for a far side that is gone are taken
 * and dropped. */
ssize_t cn__relay_send(cn_relay_t *r, const void *p, size_t n);

/* The request body is complete. */
void cn__relay_send_end(cn_relay_t *r);

/* The answer's head, once there. Returns CN_RELAY_WAIT (not yet: park), 1 with *head
 * (status and headers, no body; the caller's) and *length (-1: not known), or 2 with
 * *head the whole answer (the far side failed before its head: a 502 or 504 to send as
 * it is). Called again after that, CN_RELAY_BROKEN. */
int cn__relay_head(cn_relay_t *r, cn_response_t *head, int64_t *length);

/* Up to max answer bytes into buf: a count, CN_RELAY_WAIT (park), CN_RELAY_END, or
 * CN_RELAY_BROKEN (the answer broke off: close the connection). */
ssize_t cn__relay_recv(cn_relay_t *r, void *buf, size_t max);

/* After CN_RELAY_WAIT: parks the near side (park, under the lock) and returns 1, or
 * returns 0 at once when the far side has moved since: try again. */
int cn__relay_park(cn_relay_t *r);

/* 1 while the far side is still at work. */
int cn__relay_far_alive(cn_relay_t *r);

/* The near side is done (answered, or the client is gone): the far side is woken to
 * stop if it has not finished. Gives back the near side's reference. */
void cn__relay_near_close(cn_relay_t *r);

/* ---- the far side ---- */

/* Up to max body bytes into buf: a count, 0 at the body's end, CN_RELAY_WAIT (woken
 * when more came), or CN_RELAY_BROKEN (the near side is gone). */
ssize_t cn__relay_take(cn_relay_t *r, void *buf, size_t max);

/* The answer's head (status, headers; consumed). length: its body's length, -1 when not
 * known. Returns 0, or CN_RELAY_BROKEN when the near side is gone. */
int cn__relay_set_head(cn_relay_t *r, cn_response_t *head, int64_t length);

/* Answer bytes, all or none: 0 when taken, CN_RELAY_WAIT when the window is full (woken
 * when it is not), CN_RELAY_BROKEN when the near side is gone. A window that has room
 * takes the whole piece, so it holds at most CN_RELAY_WINDOW plus one piece. */
int cn__relay_put(cn_relay_t *r, const void *p, size_t n);

/* The far side could not answer (before any head): res (consumed) is the whole answer. */
void cn__relay_fail(cn_relay_t *r, cn_response_t *res);

/* 1 once the near side is gone: stop. */
int cn__relay_near_gone(cn_relay_t *r);

/* The far side is done: error 0 when the answer's body ended as it should. Without a
 * head or a failure given, the near side answers 502. Gives back the far side's
 * reference. */
void cn__relay_far_close(cn_relay_t *r, int error);

/* Gives back a reference a wake callback was handed. */
void cn__relay_unref(cn_relay_t *r);

#endif
