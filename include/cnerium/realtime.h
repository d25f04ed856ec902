/*
 * cnerium/realtime.h - application events, sent to WebSocket clients.
 *
 * An event emitted from a durable handler is buffered in the request and travels inside
 * the handler's stored record: it is written in the same WAL record and LMDB transaction
 * as the response and numbered (a global, gapless sequence in commit order) only if the
 * response is stored. Replays, conflicts, rejected requests and released (not stored)
 * responses emit nothing. Events emitted by an ordinary route are persisted and numbered
 * the same way, after the handler returns.
 *
 * A durable request whose cn_emit / cn_emit_to failed is never stored: whatever the
 * handler answers below 500 is replaced by a 500 problem (handler-failed) and the key is
 * free again, so a stored response always has all of its events. Check the result and
 * answer the client yourself (a 4xx for bad input, found before emitting) when you can.
 */
#ifndef CNERIUM_REALTIME_H
#define CNERIUM_REALTIME_H

#include <cjson/cJSON.h>

#include "request.h"

/* Buffers event `type` (1..128 printable ASCII bytes) with `payload` (consumed, also on
 * failure; NULL = JSON null) for every connected client. Returns 0, -EINVAL for a bad
 * type, CN_ETOOBIG past 64 events per request or a payload over 256 KiB, -EILSEQ for a
 * payload with a string that is not well-formed UTF-8 (WebSocket text must be), or
 * -ENOMEM. */
int cn_emit(cn_request_t *req, const char *type, cJSON *payload);

/* The same, for the clients subscribed to `room` (1..128 printable ASCII bytes). */
int cn_emit_to(cn_request_t *req, const char *room, const char *type, cJSON *payload);

#endif
