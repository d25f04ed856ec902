/*
 * cnerium/request.h - what a handler receives.
 *
 * Every pointer returned here is borrowed from the request and valid until the handler
 * returns. Strings are NUL-terminated. The request is never NULL inside a handler.
 */
#ifndef CNERIUM_REQUEST_H
#define CNERIUM_REQUEST_H

#include <stddef.h>

#include <cjson/cJSON.h>

#include "response.h"

typedef struct cn_request cn_request_t;

/* "GET", "POST", ... */
const char *cn_request_method(const cn_request_t *req);

/* The path as sent, without the query string ("/orders/a%20b"). */
const char *cn_request_path(const cn_request_t *req);

/* The request target as sent, path and query ("/orders?dry_run=1"). */
const char *cn_request_target(const cn_request_t *req);

/* The raw query string without '?', "" when there is none. */
const char *cn_request_query_string(const cn_request_t *req);

/* The first query parameter called name, percent- and '+'-decoded; "" for a parameter
 * given without '='; NULL when absent. */
const char *cn_request_query(const cn_request_t *req, const char *name);

/* The route parameter called name ("id" for a route "/orders/{id}"), percent-decoded;
 * NULL when the route has no such parameter. */
const char *cn_request_param(const cn_request_t *req, const char *name);

/* The first header called name (case-insensitive), NULL when absent. */
const char *cn_request_header(const cn_request_t *req, const char *name);

/* The raw body and its length (*len may be NULL). Never NULL: "" when empty. The body is
 * followed by a NUL byte that is not part of it. */
const char *cn_request_body(const cn_request_t *req, size_t *len);

/* The body parsed as JSON, parsed once on first call; NULL when it is not valid JSON,
 * invalid UTF-8 included (judging that is the handler's job). A body declared as JSON
 * (Content-Type application/json or application/...+json) never reaches a handler
 * unless it is valid UTF-8: it gets 400 first. */
const cJSON *cn_request_json(cn_request_t *req);

/* The Idempotency-Key as the client meant it (structured-field quotes removed); NULL on
 * ordinary routes. */
const char *cn_request_idempotency_key(const cn_request_t *req);

/* The operation name of the durable route ("orders.create"); NULL on ordinary routes. */
const char *cn_request_operation(const cn_request_t *req);

/* The request fingerprint as 64 lowercase hex digits (see README: "Fingerprint"); NULL
 * on ordinary routes. */
const char *cn_request_fingerprint(const cn_request_t *req);

/* Answering later, without holding a thread: a handler that waits for something (an
 * upstream service, another system) returns cn_later(req) and arranges for exactly one
 * call of cn_request_answer(req, response), from any thread, possibly before the handler
 * has returned. The connection waits meanwhile. The response then goes through
 * everything a returned one would: on a durable route it is stored before it is sent,
 * its events emitted with it; the key stays claimed until then (within the lease: an
 * answer later than --lease-ms is dropped with a 503, the key having been taken over).
 * req stays valid until cn_request_answer returns and must not be touched after it;
 * cn_emit and cn_stream_append may be called before it. */
cn_response_t cn_later(cn_request_t *req);

/* The client's address as text ("127.0.0.1", "::1"; "" when unknown). */
const char *cn_request_client_address(const cn_request_t *req);

/* Calls fn(name, value, arg) for every request header in the order received (names as
 * the client spelled them); stops when fn returns non-zero. */
void cn_request_each_header(const cn_request_t *req,
                            int (*fn)(const char *name, const char *value, void *arg),
                            void *arg);
void cn_request_answer(cn_request_t *req, cn_response_t res);

#endif
