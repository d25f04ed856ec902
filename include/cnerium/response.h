/*
 * cnerium/response.h - what a handler returns.
 *
 * A cn_response_t is a value that owns its strings: the helpers below allocate, and the
 * server frees the response once it has been sent (and, on a durable route, stored).
 * A handler never frees what it returns. If a helper cannot allocate, it returns a
 * response with status 0, which the server answers as 500 (and, on a durable route, does
 * not store, so a retry runs the handler again).
 *
 * On a durable route the server stores the status, the content type, the body and the
 * Location header; headers added with cn_response_add_header are sent with the first
 * response only and never stored (Set-Cookie and the like belong there), those added with
 * cn_response_store_header are stored too and sent with every replay (ETag, say).
 */
#ifndef CNERIUM_RESPONSE_H
#define CNERIUM_RESPONSE_H

#include <stddef.h>

#include <cjson/cJSON.h>

typedef enum cn_persist {
    CN_PERSIST_AUTO = 0, /* store 2xx, 3xx and 4xx except 408, 425, 429 */
    CN_PERSIST_ALWAYS,   /* store whatever the status (e.g. a final 5xx) */
    CN_PERSIST_NEVER,    /* never store: the key is released, a retry runs again */
} cn_persist_t;

typedef struct cn_header {
    char *name;  /* owned */
    char *value; /* owned */
    int stored;  /* cn_response_store_header: replayed too */
} cn_header_t;

typedef struct cn_response {
    int status;          /* 100..599; 0 means "could not build", answered as 500 */
    char *content_type;  /* owned, NULL = no Content-Type */
    char *body;          /* owned, body_len bytes, not NUL-terminated in general */
    size_t body_len;
    char *location;      /* owned, NULL = no Location header */
    cn_header_t *headers; /* owned extra headers, sent once, never stored */
    size_t nheaders;
    cn_persist_t persist;
} cn_response_t;

/* JSON responses: json is consumed (serialized without whitespace, then deleted), also
 * on failure. Content type application/json. */
cn_response_t cn_json_response(int status, cJSON *json);
cn_response_t cn_ok(cJSON *json);       /* 200 */
cn_response_t cn_created(cJSON *json);  /* 201 */
cn_response_t cn_accepted(cJSON *json); /* 202 */

/* Problem responses (RFC 9457, content type application/problem+json):
 *   {"error":detail,"type":"about:blank","title":<reason>,"status":N,"detail":detail}
 * detail is copied. */
cn_response_t cn_problem(int status, const char *detail);
cn_response_t cn_bad_request(const char *detail);   /* 400 */
cn_response_t cn_not_found(const char *detail);     /* 404 */
cn_response_t cn_conflict(const char *detail);      /* 409 */
cn_response_t cn_unprocessable(const char *detail); /* 422 */

/* Any bytes: content_type and bytes are copied. content_type may be NULL. */
cn_response_t cn_raw_response(int status, const char *content_type, const void *bytes,
                              size_t len);

/* Sets the Location header (copied; stored with the response). Returns 0 or -ENOMEM. */
int cn_response_set_location(cn_response_t *res, const char *location);

/* Adds a header sent with this response only (copied, never stored). Content-Type,
 * Content-Length, Location and Idempotent-Replayed are refused with -EINVAL; use the
 * fields above. Returns 0, -EINVAL or -ENOMEM. */
int cn_response_add_header(cn_response_t *res, const char *name, const char *value);

/* The same, and the header is stored with the response on a durable route: every replay
 * sends it too. A response's stored headers take at most 8192 bytes ("Name: value\r\n"
 * each): past that -E2BIG. Returns 0, -EINVAL, -E2BIG or -ENOMEM. */
int cn_response_store_header(cn_response_t *res, const char *name, const char *value);

/* Overrides the store-or-release decision for this response. */
void cn_response_set_persist(cn_response_t *res, cn_persist_t persist);

/* Frees everything the response owns and zeroes it. Accepts NULL and zeroed responses.
 * Handlers never need it for what they return; it is for responses they discard. */
void cn_response_free(cn_response_t *res);

/* The reason phrase of an HTTP status ("Created"), or "Unknown". */
const char *cn_status_reason(int status);

#endif
