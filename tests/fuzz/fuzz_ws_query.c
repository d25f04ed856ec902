/*
 * fuzz_ws_query - the query string of a WebSocket upgrade (realtime/query.c).
 *
 * Input: the bytes after '?'. Properties: a refused query says so with -EINVAL; an
 * accepted one holds a NUL-terminated token of at most CN_TOKEN_MAX bytes, and its since
 * and epoch, written back in their canonical form, parse to the same values.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "fuzz.h"
#include "realtime/query.h"

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static cn_ws_query_t q, again;
    char text[96], epoch[17];
    int rc = cn__ws_query_parse(&q, (const char *)data, size), n;

    if (rc) {
        FUZZ_CHECK(rc == -EINVAL);
        return 0;
    }
    if (q.has_token) {
        FUZZ_CHECK(q.token_len <= CN_TOKEN_MAX);
        FUZZ_CHECK(q.token[q.token_len] == '\0');
    }
    cn__ws_epoch_format(q.epoch, epoch);
    n = snprintf(text, sizeof(text), "since=%" PRIu64 "&epoch=%s", q.since, epoch);
    FUZZ_CHECK(n > 0 && (size_t)n < sizeof(text));
    FUZZ_CHECK(cn__ws_query_parse(&again, text, (size_t)n) == 0);
    FUZZ_CHECK(again.has_since && again.since == q.since);
    FUZZ_CHECK(again.has_epoch && again.epoch == q.epoch);
    return 0;
}
