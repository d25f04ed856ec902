/*
 * gateway/upstream.h - the gateway's HTTP client to its upstream (wraps libcurl's multi
 * interface for the gateway; the client outbox has its own, src/outbox/transport.c).
 *
 * One thread per process runs every request to the upstream on one multi handle, so
 * connections to the upstream are kept alive and reused, and no event loop ever waits
 * for the upstream: cn__upstream_send queues a request and returns; the thread calls
 * done(arg, result) when the answer (or the failure) is in. cn__upstream_relay queues
 * one whose body and answer go through a relay (http/relay.h) in pieces instead: the
 * thread is the relay's far side, woken through a list of relays whose near side moved.
 */
#ifndef CN_GATEWAY_UPSTREAM_H
#define CN_GATEWAY_UPSTREAM_H

#include <stddef.h>
#include <stdint.h>

#include "http/relay.h"

typedef struct cn_upstream cn_upstream_t;

typedef struct cn_upstream_result {
    int error;    /* 0; -ETIMEDOUT past the timeout; -ECONNREFUSED when no connection
                   * could be made; -EMSGSIZE for a body over the limit; -EIO otherwise */
    char message[160]; /* libcurl's words for an error */
    long status;
    char *content_type, *location; /* malloc'd, or NULL */
    char *connection; /* the Connection header's value (it names more hop-by-hop
                       * headers, RFC 9110 7.6.1), or NULL */
    char **headers;  /* "Name", "value" pairs to pass on (hop-by-hop ones dropped) */
    size_t nheaders; /* pairs */
    uint8_t *body;
    size_t body_len;
} cn_upstream_result_t;

/* Called once per request, on the upstream thread; result is the callee's (free it with
 * cn__upstream_result_free). */
typedef void (*cn_upstream_done_cb)(void *arg, cn_upstream_result_t *result);

/* A client for base_url ("http://127.0.0.1:3000", no path). timeout_ms bounds a whole
 * request; max_body bounds an answer's body. Starts the thread. */
int cn__upstream_new(const char *base_url, uint32_t timeout_ms, size_t max_body,
                     cn_upstream_t **out);

/* Queues method target (the raw "/path?query") with headers (nheaders "Name", "value"
 * pairs, copied) and body (copied). Returns 0 (done will be called), or -ENOMEM. */
int cn__upstream_send(cn_upstream_t *u, const char *method, const char *target,
                      const char *const *headers, size_t nheaders, const void *body,
                      size_t body_len, cn_upstream_done_cb done, void *arg);

/* A relayed request's head is in (result->error 0: status and headers, no body; length
 * the body's, -1 when not known), or the request failed before it (result->error set,
 * message saying why). Called once, on the upstream thread; result is borrowed. The
 * callee hands the head (or an answer for the failure) to the relay; nonzero stops the
 * request (nobody listens). */
typedef int (*cn_upstream_head_cb)(void *arg, cn_relay_t *relay, cn_upstream_result_t *result,
                                   int64_t length);

/* Queues method target with headers (as cn__upstream_send), its body read from relay
 * as the client sends it, its answer's body written into relay as it comes (no bound on
 * either: the relay's windows pace both ends). The client takes the relay's far side:
 * it calls head once, then cn__relay_far_close. The connection must be made within the
 * timeout, and then bytes must move at least once per timeout (rounded up to seconds).
 * Returns 0, or -ENOMEM (the relay untouched). */
int cn__upstream_relay(cn_upstream_t *u, const char *method, const char *target,
                       const char *const *headers, size_t nheaders, cn_relay_t *relay,
                       cn_upstream_head_cb head, void *arg);

void cn__upstream_result_free(cn_upstream_result_t *r);

/* 1 for a hop-by-hop header (RFC 9110 7.6.1) and the ones a proxy sets itself: not
 * passed on in either direction. */
int cn__upstream_hop_header(const char *name);

/* 1 when name is one of the comma-separated options of a Connection header's value
 * (connection may be NULL): a header the sender meant for this hop only. */
int cn__upstream_connection_option(const char *connection, const char *name);

#endif
