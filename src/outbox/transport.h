/*
 * outbox/transport.h - sending operations over HTTP with libcurl (multi interface).
 *
 * The only file of the outbox library that talks to libcurl. A transport keeps one
 * curl multi handle, and with it a pool of connections across runs; at most
 * max_parallel transfers run at once, the rest wait their turn inside the transport.
 * One thread at a time.
 */
#ifndef CN_OUTBOX_TRANSPORT_H
#define CN_OUTBOX_TRANSPORT_H

#include <stddef.h>
#include <stdint.h>

#include "outbox/policy.h"

typedef struct cn__outbox_transport cn__outbox_transport_t;

/* One request and, once done, its answer. The request fields are borrowed until the
 * completion callback has run. */
typedef struct cn__outbox_xfer {
    const char *id; /* sent as Idempotency-Key */
    const char *method;
    const char *url;
    const char *headers; /* '\n'-joined "Name: value" lines */
    size_t headers_len;
    const void *payload;
    size_t payload_len;
    void *user;

    /* The result: answer's pointers refer to the fields below. */
    cn__outbox_answer_t answer;
    char retry_after[80];
    char content_type[128];
    char message[256];
    char *body; /* the first CN_OUTBOX_RESPONSE_KEEP bytes (owned: freed by the
                   transport when the xfer is started again or with _xfer_clear) */
    size_t body_len;
    size_t body_cap;
    int truncated;

    /* Private to transport.c. */
    void *easy;
    void *header_list;
    struct cn__outbox_xfer *next;
    int in_header_block;
} cn__outbox_xfer_t;

int cn__outbox_transport_new(uint32_t connect_timeout_ms, uint32_t request_timeout_ms,
                             uint32_t max_parallel, cn__outbox_transport_t **out);
void cn__outbox_transport_free(cn__outbox_transport_t *t);

/* Queues x. 0, or an error with x's answer filled as a transport error (the caller
 * treats it like any failed try; x is not queued). */
int cn__outbox_transport_start(cn__outbox_transport_t *t, cn__outbox_xfer_t *x);

/* Called once per finished transfer; may start more. */
typedef void (*cn__outbox_done_cb)(void *ctx, cn__outbox_xfer_t *x);

/* Runs until every queued transfer has finished (each bounded by the request timeout).
 * 0 or an error of the multi interface (then every unfinished transfer completes with
 * a transport error). */
int cn__outbox_transport_run(cn__outbox_transport_t *t, cn__outbox_done_cb cb, void *ctx);

/* Frees x's answer body. */
void cn__outbox_xfer_clear(cn__outbox_xfer_t *x);

/* Checks url (http or https, a host) and writes its origin "scheme://host:port" to
 * origin (size bytes; may be NULL to only check). 0, -EINVAL with *why, or
 * CN_ETOOBIG when origin is too small. */
int cn__outbox_url_origin(const char *url, char *origin, size_t size, const char **why);

#endif
