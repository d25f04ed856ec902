/*
 * realtime/token.c - HS256 JSON Web Token verification (see token.h).
 *
 * Runs in the broadcaster (one thread) and in tests and fuzz targets; nothing here keeps
 * state between calls. Every decoded part lives in a stack buffer bounded by
 * CN_TOKEN_MAX, so no input can make it allocate more than cJSON's parse of those bytes.
 */
#include <math.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "realtime/token.h"

#define SIG_LEN 32
#define PART_MAX (CN_TOKEN_MAX / 4 * 3 + 4) /* decoded bytes and a NUL */

/* The value of base64url character c, or -1. */
static int
b64url_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '-')
        return 62;
    if (c == '_')
        return 63;
    return -1;
}

/* Strict base64url (no padding, unused bits zero, so each byte string has exactly one
 * encoding) of s (n bytes) into out (cap bytes), NUL-terminated so that no parser can
 * read past it. Returns the decoded length, or -1. */
static long
b64url_decode(const char *s, size_t n, uint8_t *out, size_t cap)
{
    uint32_t acc = 0;
    size_t bits = 0, o = 0;

    if (n % 4 == 1 || n / 4 * 3 + 2 >= cap)
        return -1;
    for (size_t i = 0; i < n; i++) {
        int v = b64url_value((unsigned char)s[i]);
        if (v < 0)
            return -1;
        acc = acc << 6 | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (uint8_t)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    if (acc != 0) /* the bits past the last byte must be zero */
        return -1;
    out[o] = 0;
    return (long)o;
}

/* Parses exactly n bytes as one JSON object. NULL when they are anything else. */
static cJSON *
parse_object(const uint8_t *p, size_t n)
{
    const char *end = NULL;
    cJSON *j = cJSON_ParseWithLengthOpts((const char *)p, n, &end, 0);

    if (!j)
        return NULL;
    while (end && end < (const char *)p + n &&
           (*end == ' ' || *end == '\t' || *end == '\r' || *end == '\n'))
        end++;
    if (!cJSON_IsObject(j) || end != (const char *)p + n) {
        cJSON_Delete(j);
        return NULL;
    }
    return j;
}

/* A room name as the broadcaster accepts one in a subscribe message. */
static int
room_name_ok(const char *r)
{
    size_t n = 0;

    for (; r[n]; n++) {
        unsigned char c = (unsigned char)r[n];
        if (c < 0x20 || c > 0x7e || c == '"' || c == '\\')
            return 0;
    }
    return n >= 1 && n <= CN_EVENT_ROOM_MAX;
}

static int
claims_read(const cJSON *payload, int64_t now, cn_token_claims_t *c)
{
    const cJSON *exp = cJSON_GetObjectItemCaseSensitive(payload, "exp");
    const cJSON *nbf = cJSON_GetObjectItemCaseSensitive(payload, "nbf");
    const cJSON *rooms = cJSON_GetObjectItemCaseSensitive(payload, "rooms");
    const cJSON *all = cJSON_GetObjectItemCaseSensitive(payload, "all");
    const cJSON *r;

    if (!cJSON_IsNumber(exp) || !isfinite(exp->valuedouble) || exp->valuedouble < 0 ||
        (nbf && (!cJSON_IsNumber(nbf) || !isfinite(nbf->valuedouble))) ||
        !cJSON_IsArray(rooms) || (all && !cJSON_IsBool(all)))
        return CN_TOKEN_ECLAIMS;
    memset(c, 0, sizeof(*c));
    /* NumericDate may have a fraction: valid while now < exp. Far-future values clamp. */
    c->exp = exp->valuedouble >= 9.2e18 ? INT64_MAX : (int64_t)ceil(exp->valuedouble);
    c->all = cJSON_IsTrue(all);
    cJSON_ArrayForEach(r, rooms)
    {
        if (!cJSON_IsString(r))
            return CN_TOKEN_ECLAIMS;
        if (!strcmp(r->valuestring, "*")) {
            c->any_room = 1;
            continue;
        }
        if (!room_name_ok(r->valuestring) || c->nrooms == CN_TOKEN_ROOMS_MAX)
            return CN_TOKEN_ECLAIMS;
        strcpy(c->rooms[c->nrooms++], r->valuestring);
    }
    if (c->exp <= now || (nbf && nbf->valuedouble > (double)now))
        return CN_TOKEN_EEXPIRED;
    return 0;
}

int
cn__token_verify(const char *token, size_t len, const uint8_t *secret, size_t secret_len,
                 int64_t now, cn_token_claims_t *out)
{
    uint8_t head[PART_MAX], body[PART_MAX], sig[PART_MAX], mac[EVP_MAX_MD_SIZE];
    unsigned int mac_len = 0;
    const char *dot1, *dot2;
    long hl, bl, sl;
    cJSON *h = NULL, *p = NULL;
    const cJSON *alg;
    cn_token_claims_t claims;
    int rc;

    if (!token || !secret || !secret_len || !out)
        return CN_TOKEN_EFORMAT;
    if (len > CN_TOKEN_MAX)
        return CN_TOKEN_ETOOBIG;
    if (!(dot1 = memchr(token, '.', len)) ||
        !(dot2 = memchr(dot1 + 1, '.', len - (size_t)(dot1 + 1 - token))) ||
        memchr(dot2 + 1, '.', len - (size_t)(dot2 + 1 - token)))
        return CN_TOKEN_EFORMAT;
    if ((hl = b64url_decode(token, (size_t)(dot1 - token), head, sizeof(head))) <= 0 ||
        (bl = b64url_decode(dot1 + 1, (size_t)(dot2 - dot1 - 1), body, sizeof(body))) <= 0 ||
        (sl = b64url_decode(dot2 + 1, len - (size_t)(dot2 + 1 - token), sig, sizeof(sig))) <
            0)
        return CN_TOKEN_EFORMAT;

    rc = CN_TOKEN_EFORMAT;
    if (!(h = parse_object(head, (size_t)hl)))
        goto out;
    /* The algorithm is ours to choose, not the token's: exactly HS256, nothing else. */
    alg = cJSON_GetObjectItemCaseSensitive(h, "alg");
    rc = CN_TOKEN_EALG;
    if (!cJSON_IsString(alg) || strcmp(alg->valuestring, "HS256") ||
        cJSON_GetObjectItemCaseSensitive(h, "crit"))
        goto out;
    rc = CN_TOKEN_ESIG;
    if (sl != SIG_LEN || secret_len > INT32_MAX ||
        !HMAC(EVP_sha256(), secret, (int)secret_len, (const unsigned char *)token,
              (size_t)(dot2 - token), mac, &mac_len) ||
        mac_len != SIG_LEN || CRYPTO_memcmp(mac, sig, SIG_LEN) != 0)
        goto out;
    /* Signed by us: only now is the payload worth reading. */
    rc = CN_TOKEN_EFORMAT;
    if (!(p = parse_object(body, (size_t)bl)))
        goto out;
    if ((rc = claims_read(p, now, &claims)))
        goto out;
    *out = claims;

out:
    cJSON_Delete(p);
    cJSON_Delete(h);
    return rc;
}

const char *
cn__token_strerror(int rc)
{
    switch (rc) {
    case 0:
        return "valid";
    case CN_TOKEN_EFORMAT:
        return "malformed token";
    case CN_TOKEN_ETOOBIG:
        return "token too long";
    case CN_TOKEN_EALG:
        return "token algorithm is not HS256";
    case CN_TOKEN_ESIG:
        return "token signature does not match";
    case CN_TOKEN_EEXPIRED:
        return "token expired or not yet valid";
    case CN_TOKEN_ECLAIMS:
        return "token claims exp, rooms or all missing or malformed";
    default:
        return "unknown token error";
    }
}

int
cn__token_allows(const cn_token_claims_t *c, const char *room)
{
    if (!room)
        return c->all;
    if (c->any_room)
        return 1;
    for (unsigned i = 0; i < c->nrooms && i < CN_TOKEN_ROOMS_MAX; i++) {
        if (!strcmp(c->rooms[i], room))
            return 1;
    }
    return 0;
}
