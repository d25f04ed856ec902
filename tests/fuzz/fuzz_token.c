/*
 * fuzz_token - the HS256 access-token verifier of the WebSocket endpoint
 * (realtime/token.c).
 *
 * Two inputs in one: the first byte chooses. Even: the bytes are a token, checked under
 * a fixed secret (almost never signed right, so this explores the framing, base64url and
 * header checks). Odd: the rest is a claims payload that the target signs correctly
 * itself, so the claim checks behind the signature are explored too. Properties: the
 * result is 0 or one of the CN_TOKEN_E* codes, each with a description; accepted claims
 * are in bounds (exp later than now, at most CN_TOKEN_ROOMS_MAX rooms, each a
 * NUL-terminated name that the claims then allow).
 */
#include <string.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "fuzz.h"
#include "realtime/token.h"

#define NOW 1700000000

static const uint8_t secret[] = "0123456789abcdef0123456789abcdef";

/* base64url without padding of n bytes at p into out; returns the length. */
static size_t
b64url(const uint8_t *p, size_t n, char *out)
{
    static const char a[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t o = 0, i = 0;

    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
        out[o++] = a[v >> 18];
        out[o++] = a[(v >> 12) & 63];
        out[o++] = a[(v >> 6) & 63];
        out[o++] = a[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)p[i] << 16;
        out[o++] = a[v >> 18];
        out[o++] = a[(v >> 12) & 63];
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8;
        out[o++] = a[v >> 18];
        out[o++] = a[(v >> 12) & 63];
        out[o++] = a[(v >> 6) & 63];
    }
    return o;
}

static void
check(int rc, const cn_token_claims_t *c)
{
    FUZZ_CHECK(rc <= 0 && rc >= CN_TOKEN_ECLAIMS);
    FUZZ_CHECK(cn__token_strerror(rc) && cn__token_strerror(rc)[0]);
    if (rc)
        return;
    FUZZ_CHECK(c->exp > NOW);
    FUZZ_CHECK(c->nrooms <= CN_TOKEN_ROOMS_MAX);
    for (unsigned i = 0; i < c->nrooms; i++) {
        size_t n = strnlen(c->rooms[i], sizeof(c->rooms[i]));
        FUZZ_CHECK(n >= 1 && n < sizeof(c->rooms[i]));
        FUZZ_CHECK(cn__token_allows(c, c->rooms[i]));
    }
    FUZZ_CHECK(cn__token_allows(c, NULL) == (c->all != 0));
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static char token[2 * CN_TOKEN_MAX];
    static const char header[] = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";
    cn_token_claims_t claims;
    uint8_t mac[EVP_MAX_MD_SIZE];
    unsigned maclen = 0;
    size_t n;

    if (size == 0)
        return 0;
    if (!(data[0] & 1)) {
        memset(&claims, 0, sizeof(claims));
        check(cn__token_verify((const char *)data + 1, size - 1, secret, sizeof(secret) - 1,
                               NOW, &claims),
              &claims);
        return 0;
    }
    if (size - 1 > CN_TOKEN_MAX)
        return 0;
    n = b64url((const uint8_t *)header, sizeof(header) - 1, token);
    token[n++] = '.';
    n += b64url(data + 1, size - 1, token + n);
    FUZZ_CHECK(HMAC(EVP_sha256(), secret, (int)(sizeof(secret) - 1), (const uint8_t *)token,
                    n, mac, &maclen));
    token[n++] = '.';
    n += b64url(mac, maclen, token + n);
    memset(&claims, 0, sizeof(claims));
    check(cn__token_verify(token, n, secret, sizeof(secret) - 1, NOW, &claims), &claims);
    return 0;
}
