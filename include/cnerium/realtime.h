/*
 * cnerium/realtime.h - application events.
 *
 * An event emitted from a durable handler is buffered in the request and published only
 * if the handler's response is stored, after it is durable. Replays, conflicts, rejected
 * requests and released (not stored) responses publish nothing.
 */
#ifndef CNERIUM_REALTIME_H
#define CNERIUM_REALTIME_H

#include <cjson/cJSON.h>

#include "request.h"

/* Buffers event `type` with `payload` (consumed, also on failure; NULL = no payload).
 * Returns 0, -EINVAL for an empty type or -ENOMEM. */
int cn_emit(cn_request_t *req, const char *type, cJSON *payload);

#endif
