/*
 * realtime/query.c - the query string of a WebSocket upgrade request (see query.h).
 *
 * Strict on purpose: a since= the server would misread (a sign, spaces, a number past
 * 2^64-1 that strtoull would clamp or wrap) is refused with 400 instead of being
 * served from the wrong place.
 */
#include <errno.h>
#include <string.h>

#include "realtime/query.h"

void
cn__ws_query_init(cn_ws_query_t *q)
{
    q->has_since = q->has_epoch = q->has_token = 0;
    q->since = q->epoch = 0;
    q->token_len = 0;
    q->token[0] = '\0';
}

static int
name_is(const char *p, size_t n, const char *name)
{
    size_t l = strlen(name);

    return n == l && !memcmp(p, name, l);
}

static int
parse_u64(const char *v, size_t n, uint64_t *out)
{
    uint64_t x = 0;

    if (n == 0 || n > 20)
        return -EINVAL;
    for (size_t i = 0; i < n; i++) {
        unsigned d = (unsigned char)v[i] - '0';
        if (d > 9 || x > (UINT64_MAX - d) / 10)
            return -EINVAL;
        x = x * 10 + d;
    }
    *out = x;
    return 0;
}

static int
parse_hex64(const char *v, size_t n, uint64_t *out)
{
    uint64_t x = 0;

    if (n != 16)
        return -EINVAL;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)v[i];
        unsigned d;
        if (c >= '0' && c <= '9')
            d = c - '0';
        else if (c >= 'a' && c <= 'f')
            d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
            d = c - 'A' + 10;
        else
            return -EINVAL;
        x = x << 4 | d;
    }
    *out = x;
    return 0;
}

int
cn__ws_query_param(cn_ws_query_t *q, const char *p, size_t n)
{
    const char *eq = memchr(p, '=', n);
    size_t nl = eq ? (size_t)(eq - p) : n;
    const char *v = eq ? eq + 1 : p + n;
    size_t vl = eq ? n - nl - 1 : 0;

    if (name_is(p, nl, "since")) {
        if (q->has_since || !eq || parse_u64(v, vl, &q->since))
            return -EINVAL;
        q->has_since = 1;
    } else if (name_is(p, nl, "epoch")) {
        if (q->has_epoch || !eq || parse_hex64(v, vl, &q->epoch))
            return -EINVAL;
        q->has_epoch = 1;
    } else if (name_is(p, nl, "token")) {
        if (q->has_token || !eq || vl == 0 || vl > CN_TOKEN_MAX || memchr(v, '\0', vl))
            return -EINVAL;
        memcpy(q->token, v, vl);
        q->token[vl] = '\0';
        q->token_len = vl;
        q->has_token = 1;
    }
    return 0;
}

int
cn__ws_query_parse(cn_ws_query_t *q, const char *s, size_t n)
{
    size_t at = 0;

    cn__ws_query_init(q);
    while (at < n) {
        const char *amp = memchr(s + at, '&', n - at);
        size_t len = amp ? (size_t)(amp - (s + at)) : n - at;
        int rc;
        if (len && (rc = cn__ws_query_param(q, s + at, len)))
            return rc;
        at += len + 1;
    }
    return 0;
}

void
cn__ws_epoch_format(uint64_t epoch, char out[17])
{
    static const char hex[] = "0123456789abcdef";

    for (int i = 15; i >= 0; i--) {
        out[i] = hex[epoch & 15];
        epoch >>= 4;
    }
    out[16] = '\0';
}
