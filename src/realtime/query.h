/*
 * realtime/query.h - the query string of a WebSocket upgrade request (/ws?since=N&...).
 *
 * A pure function over bytes (a fuzz target): no global state, no allocation, no abort.
 * Parameters, each at most once:
 *   since=N   resume after event N: 1..20 decimal digits, at most 18446744073709551615
 *   epoch=E   the event log the client's N belongs to: 16 hexadecimal digits (the
 *             "epoch" of a welcome message)
 *   token=T   an access token (realtime/token.h), at most CN_TOKEN_MAX bytes
 * Other parameters are ignored (a client may add its own, e.g. to defeat a cache).
 */
#ifndef CN_REALTIME_QUERY_H
#define CN_REALTIME_QUERY_H

#include <stddef.h>
#include <stdint.h>

#include "realtime/token.h"

typedef struct cn_ws_query {
    int has_since;
    uint64_t since;
    int has_epoch;
    uint64_t epoch;
    int has_token;
    size_t token_len;
    char token[CN_TOKEN_MAX + 1]; /* NUL-terminated */
} cn_ws_query_t;

/* Empties q. */
void cn__ws_query_init(cn_ws_query_t *q);

/* Applies one parameter p (n bytes, "name=value" or "name"). Returns 0, or -EINVAL for a
 * malformed or repeated since, epoch or token (q is then unspecified). */
int cn__ws_query_param(cn_ws_query_t *q, const char *p, size_t n);

/* Parses a whole query string s (n bytes, without the '?'): parameters separated by
 * '&', empty ones skipped. Initializes q first. Returns 0 or -EINVAL. */
int cn__ws_query_parse(cn_ws_query_t *q, const char *s, size_t n);

/* Formats epoch as the 16 lowercase hexadecimal digits clients see, into out[17]. */
void cn__ws_epoch_format(uint64_t epoch, char out[17]);

#endif
