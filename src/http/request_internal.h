/*
 * http/request_internal.h - the request object behind cnerium/request.h.
 *
 * One request object per HTTP request, used by one thread at a time. The HTTP adapter
 * fills it (target, headers, body), the app dispatches it, the reliability layer adds
 * the durable fields. Everything it points to is owned by it except header strings,
 * which borrow from the HTTP adapter's connection and live as long as the request.
 */
#ifndef CN_HTTP_REQUEST_INTERNAL_H
#define CN_HTTP_REQUEST_INTERNAL_H

#include <stddef.h>

#include "cnerium/request.h"
#include "http/router.h"
#include "reliability/fingerprint.h"
#include "reliability/key.h"

struct cn_event;
struct cn_append;
struct cn_store;

#define CN_REQUEST_LATER_BYTES 1024

typedef struct cn_request_header {
    const char *name;  /* borrowed */
    const char *value; /* borrowed, or `owned` when trimming needed a copy */
    char *owned;       /* NULL, or the copy of value this request frees */
} cn_request_header_t;

typedef struct cn_query_param {
    char *name;  /* owned */
    char *value; /* owned */
} cn_query_param_t;

struct cn_request {
    char method[16];
    char *target;       /* owned copy of the raw target */
    char *path;         /* owned, raw path (target up to '?') */
    const char *query;  /* points into target after '?', or "" */
    size_t query_len;

    cn_request_header_t *headers;
    size_t nheaders, headers_cap;

    char *body;         /* owned, NUL-terminated */
    size_t body_len, body_cap;

    cn_query_param_t *qparams; /* parsed lazily */
    size_t nqparams;
    int qparams_parsed;

    cJSON *json;
    int json_parsed;

    cn_route_match_t match;

    /* durable routes only */
    const char *operation; /* borrowed from the route */
    char key[CN_KEY_MAX + 1];
    size_t key_len;
    uint8_t fingerprint[CN_SHA256_LEN];
    char fingerprint_hex[2 * CN_SHA256_LEN + 1];
    int is_durable;

    struct cn_event *events; /* buffered by cn_emit, in emission order */
    struct cn_event **events_tail;
    int events_failed; /* a cn_emit / cn_emit_to of this request failed */

    /* event streams (stream/stream.h) */
    struct cn_append *appends; /* buffered by cn_stream_append, in order */
    struct cn_append **appends_tail;
    size_t nappends;
    int appends_conditional;   /* an append expects something: wait for the decision */
    int conflict_status;       /* answered on CN_ECONFLICT; 0: 409 */
    unsigned reruns_allowed;   /* cn_stream_retry_on_conflict of this run */
    unsigned reruns;           /* runs so far after a conflict */
    struct cn_store *store;    /* for reads; NULL when the request has none */
    uint32_t stream_event_max;

    void *http_handle; /* the server's handle for cn__http_complete (http/server.h) */
    char client_addr[48]; /* the peer's address as text ("" when unknown) */

    /* durable routes: how long the request may stay parked behind a duplicate */
    uint64_t inflight_deadline; /* monotonic ms; 0 until the first look */

    /* Answered later (cn_later, cn_request_answer): under one process-wide lock. */
    int later;          /* the handler returned cn_later(req) */
    int later_answered; /* cn_request_answer came before the handler returned */
    cn_response_t later_early; /* that answer */
    void (*later_fn)(void *arg, cn_request_t *req, cn_response_t res); /* who takes it */
    void *later_arg;
    /* What the layer that waits needs to go on with the answer, kept here so that waiting
     * never needs an allocation (which could fail after the handler has promised). */
    _Alignas(16) unsigned char later_state[CN_REQUEST_LATER_BYTES];
};

/* After a handler returned cn_later(req): either the answer is already there (it came
 * from another thread, or from the handler itself, before it returned): returns 1 with
 * it in *res, and fn is not kept; or returns 0 and fn(arg, req, res) takes the answer
 * when cn_request_answer gives it, on that caller's thread. */
int cn__request_later_wait(cn_request_t *req, void (*fn)(void *arg, cn_request_t *req,
                                                         cn_response_t res),
                           void *arg, cn_response_t *res);

/* Initializes req for method and raw target (copied). The target is origin-form
 * ("/path?query") or absolute-form with an http/https scheme ("http://host/path?query",
 * RFC 9112 3.2.2), which is reduced to its origin-form part. Returns 0, -EINVAL for any
 * other target or a method of 16 bytes or more, -ENOMEM. On failure req is safe to pass
 * to cn__request_destroy. */
int cn__request_init(cn_request_t *req, const char *method, const char *target);

/* Releases everything req owns. Accepts a zeroed request. */
void cn__request_destroy(cn_request_t *req);

/* Checks and adds a header (RFC 9110 5.1 and 5.5). name (name_len bytes, NUL-terminated
 * at name_len) must be a token: no space, no separator, no control byte. value
 * (value_len bytes, NUL-terminated at value_len) must not contain a control byte other
 * than HTAB, NUL included. Surrounding spaces and tabs of the value are dropped. Both
 * strings are borrowed (a trimmed value may be copied). Returns 0, -EINVAL with *why
 * pointing at a static sentence for the client, or -ENOMEM. */
int cn__request_add_header(cn_request_t *req, const char *name, size_t name_len,
                           const char *value, size_t value_len, const char **why);

/* Counts headers called name (case-insensitive) and returns the first in *first. */
size_t cn__request_header_count(const cn_request_t *req, const char *name,
                                const char **first);

/* 1 when the n bytes at s are a token (RFC 9110 5.6.2: methods, field names), n > 0. */
int cn__http_token_valid(const char *s, size_t n);

/* 1 when the media type ct (a Content-Type value, parameters allowed) is JSON:
 * application/json or application/<anything>+json, case-insensitive. 0 for NULL. */
int cn__media_type_is_json(const char *ct);

/* 1 when req's body is declared JSON text and must therefore be valid UTF-8 (RFC 8259
 * 8.1): a non-empty body with a JSON Content-Type. (Undeclared bodies may be binary;
 * cn_request_json refuses to parse them when they are not UTF-8.) */
int cn__request_body_must_be_utf8(const cn_request_t *req);

/* Appends body bytes. Returns 0, CN_ETOOBIG when the body would exceed max bytes (the
 * bytes are not kept), -ENOMEM. */
int cn__request_append_body(cn_request_t *req, const void *data, size_t len, size_t max);

#endif
