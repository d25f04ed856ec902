/*
 * tests/unit/test_token.c - the WebSocket access tokens (realtime/token.c) and the
 * upgrade query string (realtime/query.c), both pure functions over bytes.
 *
 * Tokens are minted here with the same primitives a client would use (base64url of
 * JSON, HMAC-SHA256 from libcrypto), so a test states exactly which bytes it sends:
 * valid tokens and their claims, expiry, wrong signatures, alg "none" and others, strict
 * base64url, huge and truncated input, and the forms of the rooms claim. Every input is
 * an exactly sized heap copy so ASan sees any over-read.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "realtime/query.h"
#include "realtime/token.h"
#include "unit.h"

#define NOW 1700000000
#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

static const uint8_t secret[] = "0123456789abcdef0123456789abcdef";
#define SECRET_LEN (sizeof(secret) - 1)

static const char hs256[] = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";

/* base64url without padding of p (n bytes) appended to out. */
static void
b64url(char *out, const uint8_t *p, size_t n)
{
    static const char a[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    char *o = out + strlen(out);
    size_t i = 0;

    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
        *o++ = a[v >> 18];
        *o++ = a[v >> 12 & 63];
        *o++ = a[v >> 6 & 63];
        *o++ = a[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)p[i] << 16;
        *o++ = a[v >> 18];
        *o++ = a[v >> 12 & 63];
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8;
        *o++ = a[v >> 18];
        *o++ = a[v >> 12 & 63];
        *o++ = a[v >> 6 & 63];
    }
    *o = '\0';
}

/* A token for header and payload (JSON text) signed with key; malloc'd. */
static char *
mint_with(const char *header, const char *payload, const uint8_t *key, size_t key_len)
{
    size_t cap = 4 * (strlen(header) + strlen(payload)) / 3 + 128;
    char *t = calloc(1, cap);
    uint8_t mac[EVP_MAX_MD_SIZE];
    unsigned int mac_len = 0;

    CU_ASSERT_PTR_NOT_NULL_FATAL(t);
    b64url(t, (const uint8_t *)header, strlen(header));
    strcat(t, ".");
    b64url(t, (const uint8_t *)payload, strlen(payload));
    CU_ASSERT_PTR_NOT_NULL_FATAL(HMAC(EVP_sha256(), key, (int)key_len, (const uint8_t *)t,
                                      strlen(t), mac, &mac_len));
    strcat(t, ".");
    b64url(t, mac, mac_len);
    return t;
}

static char *
mint(const char *payload)
{
    return mint_with(hs256, payload, secret, SECRET_LEN);
}

/* Verifies token s (as an exactly sized heap copy) at NOW. */
static int
verify(const char *s, cn_token_claims_t *c)
{
    size_t n = strlen(s);
    char *copy = malloc(n ? n : 1);
    int rc;

    CU_ASSERT_PTR_NOT_NULL_FATAL(copy);
    memcpy(copy, s, n);
    rc = cn__token_verify(copy, n, secret, SECRET_LEN, NOW, c);
    free(copy);
    return rc;
}

static int
verify_payload(const char *payload, cn_token_claims_t *c)
{
    char *t = mint(payload);
    int rc = verify(t, c);

    free(t);
    return rc;
}

static void
test_valid_token_and_claims(void)
{
    cn_token_claims_t c;

    CU_ASSERT_EQUAL_FATAL(
        verify_payload("{\"exp\":1700000060,\"rooms\":[\"red\",\"blue\"],\"all\":true,"
                       "\"sub\":\"u1\"}",
                       &c),
        0);
    CU_ASSERT_EQUAL(c.exp, 1700000060);
    CU_ASSERT_EQUAL(c.all, 1);
    CU_ASSERT_EQUAL(c.any_room, 0);
    CU_ASSERT_EQUAL_FATAL(c.nrooms, 2);
    CU_ASSERT_STRING_EQUAL(c.rooms[0], "red");
    CU_ASSERT_STRING_EQUAL(c.rooms[1], "blue");
    CU_ASSERT(cn__token_allows(&c, "red"));
    CU_ASSERT(cn__token_allows(&c, "blue"));
    CU_ASSERT(!cn__token_allows(&c, "green"));
    CU_ASSERT(!cn__token_allows(&c, "re"));
    CU_ASSERT(cn__token_allows(&c, NULL));

    /* No "all": room events only. A header without typ, extra members: fine. */
    {
        char *t = mint_with("{\"alg\":\"HS256\",\"kid\":\"k1\"}",
                            "{\"exp\":1700000001,\"rooms\":[\"red\"]}", secret, SECRET_LEN);
        CU_ASSERT_EQUAL(verify(t, &c), 0);
        CU_ASSERT_EQUAL(c.all, 0);
        CU_ASSERT(!cn__token_allows(&c, NULL));
        CU_ASSERT(cn__token_allows(&c, "red"));
        free(t);
    }
    /* A fractional exp is valid while now is before it. */
    CU_ASSERT_EQUAL(verify_payload("{\"exp\":1700000000.5,\"rooms\":[]}", &c), 0);
    /* JSON whitespace around the objects is allowed. */
    CU_ASSERT_EQUAL(verify_payload(" {\"exp\":1700000001,\"rooms\":[]}\n", &c), 0);
    CU_ASSERT_EQUAL(c.nrooms, 0);
    CU_ASSERT(!cn__token_allows(&c, "red"));
}

static void
test_expired_and_not_yet_valid(void)
{
    cn_token_claims_t c;

    c.exp = 42;
    CU_ASSERT_EQUAL(verify_payload("{\"exp\":1700000000,\"rooms\":[]}", &c), CN_TOKEN_EEXPIRED);
    CU_ASSERT_EQUAL(c.exp, 42); /* untouched on failure */
    CU_ASSERT_EQUAL(verify_payload("{\"exp\":1,\"rooms\":[\"*\"],\"all\":true}", &c),
                    CN_TOKEN_EEXPIRED);
    CU_ASSERT_EQUAL(verify_payload("{\"exp\":1700000001,\"nbf\":1700000001,\"rooms\":[]}", &c),
                    CN_TOKEN_EEXPIRED);
    CU_ASSERT_EQUAL(verify_payload("{\"exp\":1700000001,\"nbf\":1700000000,\"rooms\":[]}", &c),
                    0);
    /* exp is required, a number, not negative; nbf a number. */
    CU_ASSERT_EQUAL(verify_payload("{\"rooms\":[]}", &c), CN_TOKEN_ECLAIMS);
    CU_ASSERT_EQUAL(verify_payload("{\"exp\":\"1800000000\",\"rooms\":[]}", &c),
                    CN_TOKEN_ECLAIMS);
    CU_ASSERT_EQUAL(verify_payload("{\"exp\":-5,\"rooms\":[]}", &c), CN_TOKEN_ECLAIMS);
    CU_ASSERT_EQUAL(verify_payload("{\"exp\":1800000000,\"nbf\":\"x\",\"rooms\":[]}", &c),
                    CN_TOKEN_ECLAIMS);
    /* A far-future exp does not overflow. */
    CU_ASSERT_EQUAL(verify_payload("{\"exp\":1e300,\"rooms\":[]}", &c), 0);
    CU_ASSERT_EQUAL(c.exp, INT64_MAX);
}

static void
test_wrong_signature(void)
{
    static const uint8_t other[] = "0123456789abcdef0123456789abcdeX";
    const char *payload = "{\"exp\":1800000000,\"rooms\":[\"*\"],\"all\":true}";
    char *t = mint_with(hs256, payload, other, sizeof(other) - 1), *u;
    cn_token_claims_t c;
    size_t n;

    CU_ASSERT_EQUAL(verify(t, &c), CN_TOKEN_ESIG);
    free(t);
    /* Every single-character change of a valid token's signature fails. */
    t = mint(payload);
    CU_ASSERT_EQUAL_FATAL(verify(t, &c), 0);
    n = strlen(t);
    u = strdup(t);
    CU_ASSERT_PTR_NOT_NULL_FATAL(u);
    for (size_t i = strrchr(t, '.') - t + 1; i < n; i++) {
        strcpy(u, t);
        u[i] = u[i] == 'A' ? 'B' : 'A';
        CU_ASSERT(verify(u, &c) != 0);
    }
    /* A payload changed after signing (more rooms): the signature no longer matches. */
    {
        char *forged = mint("{\"exp\":1800000000,\"rooms\":[\"*\",\"x\"],\"all\":true}");
        char *sig = strrchr(t, '.'), *fsig = strrchr(forged, '.');
        char *mixed = calloc(1, strlen(forged) + strlen(sig) + 1);
        CU_ASSERT_PTR_NOT_NULL_FATAL(mixed);
        memcpy(mixed, forged, (size_t)(fsig - forged));
        strcat(mixed, sig);
        CU_ASSERT_EQUAL(verify(mixed, &c), CN_TOKEN_ESIG);
        free(mixed);
        free(forged);
    }
    /* A truncated signature (31 bytes) and an empty one. */
    strcpy(u, t);
    u[n - 2] = '\0';
    CU_ASSERT(verify(u, &c) != 0);
    strcpy(u, t);
    strrchr(u, '.')[1] = '\0';
    CU_ASSERT_EQUAL(verify(u, &c), CN_TOKEN_ESIG);
    /* The signature of the header alone, or of a different secret length. */
    {
        char *t2 = mint_with(hs256, payload, secret, SECRET_LEN - 1);
        CU_ASSERT_EQUAL(verify(t2, &c), CN_TOKEN_ESIG);
        free(t2);
    }
    free(u);
    free(t);
}

static void
test_alg_none_and_others(void)
{
    static const char *headers[] = {
        "{\"alg\":\"none\",\"typ\":\"JWT\"}",
        "{\"alg\":\"None\"}",
        "{\"alg\":\"HS384\"}",
        "{\"alg\":\"HS512\"}",
        "{\"alg\":\"RS256\"}",
        "{\"alg\":\"hs256\"}",
        "{\"alg\":\"HS256 \"}",
        "{\"alg\":[\"HS256\"]}",
        "{\"alg\":null}",
        "{\"typ\":\"JWT\"}",
        "{\"alg\":\"HS256\",\"crit\":[\"exp\"]}",
    };
    const char *payload = "{\"exp\":1800000000,\"rooms\":[\"*\"],\"all\":true}";
    cn_token_claims_t c;

    for (size_t i = 0; i < ARRAY_LEN(headers); i++) {
        /* Even correctly signed with our secret, only HS256 is accepted. */
        char *t = mint_with(headers[i], payload, secret, SECRET_LEN);
        CU_ASSERT_EQUAL(verify(t, &c), CN_TOKEN_EALG);
        /* And the unsigned form of "none" (an empty signature). */
        *(strrchr(t, '.') + 1) = '\0';
        CU_ASSERT_EQUAL(verify(t, &c), CN_TOKEN_EALG);
        free(t);
    }
}

static void
test_malformed_base64_and_structure(void)
{
    const char *payload = "{\"exp\":1800000000,\"rooms\":[]}";
    char *t = mint(payload), *u;
    size_t n = strlen(t);
    cn_token_claims_t c;
    static const char *junk[] = {
        "",
        ".",
        "..",
        "a.b",
        "a.b.c.d",
        "...",
        "eyJhbGciOiJIUzI1NiJ9..",
        "!!!!.!!!!.!!!!",
    };

    CU_ASSERT_EQUAL_FATAL(verify(t, &c), 0);
    for (size_t i = 0; i < ARRAY_LEN(junk); i++)
        CU_ASSERT_EQUAL(verify(junk[i], &c), CN_TOKEN_EFORMAT);
    u = malloc(n + 8);
    CU_ASSERT_PTR_NOT_NULL_FATAL(u);
    /* Standard base64 characters, padding, spaces: not base64url. */
    {
        static const char bad[] = {'+', '/', '=', ' ', '\0', '\n', '%', '.'};
        for (size_t b = 0; b < sizeof(bad); b++) {
            memcpy(u, t, n + 1);
            u[3] = bad[b];
            CU_ASSERT_NOT_EQUAL(cn__token_verify(u, n, secret, SECRET_LEN, NOW, &c), 0);
        }
    }
    /* Padding appended to the payload part. */
    {
        char *dot2 = strrchr(t, '.');
        size_t at = (size_t)(dot2 - t);
        memcpy(u, t, at);
        memcpy(u + at, "==", 2);
        strcpy(u + at + 2, dot2);
        CU_ASSERT_EQUAL(verify(u, &c), CN_TOKEN_EFORMAT);
    }
    /* Non-zero unused bits: the last character of a part changed so that only the
     * discarded bits differ (the same bytes, a second spelling). */
    {
        char *dot1 = strchr(t, '.');
        size_t hl = (size_t)(dot1 - t);
        memcpy(u, t, n + 1);
        if (hl % 4 == 2 || hl % 4 == 3) {
            char *last = &u[hl - 1];
            const char *a = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
            int v = (int)(strchr(a, *last) - a);
            *last = a[v | 1];
            if (u[hl - 1] != t[hl - 1])
                CU_ASSERT_EQUAL(verify(u, &c), CN_TOKEN_EFORMAT);
        }
    }
    /* Every truncation of a valid token fails (and never reads past its length). */
    for (size_t k = 0; k < n; k++)
        CU_ASSERT_NOT_EQUAL(cn__token_verify(t, k, secret, SECRET_LEN, NOW, &c), 0);
    /* Header or payload that is JSON but not an object, or not JSON. */
    {
        static const char *not_objects[] = {"[]", "\"s\"", "1", "null", "{", "{}x", ""};
        for (size_t i = 0; i < ARRAY_LEN(not_objects); i++) {
            char *x = mint(not_objects[i]);
            CU_ASSERT_EQUAL(verify(x, &c), CN_TOKEN_EFORMAT);
            free(x);
            x = mint_with(not_objects[i], payload, secret, SECRET_LEN);
            CU_ASSERT_EQUAL(verify(x, &c), CN_TOKEN_EFORMAT);
            free(x);
        }
    }
    /* Bad arguments. */
    CU_ASSERT_EQUAL(cn__token_verify(NULL, 0, secret, SECRET_LEN, NOW, &c), CN_TOKEN_EFORMAT);
    CU_ASSERT_EQUAL(cn__token_verify(t, n, secret, 0, NOW, &c), CN_TOKEN_EFORMAT);
    CU_ASSERT_EQUAL(cn__token_verify(t, n, NULL, SECRET_LEN, NOW, &c), CN_TOKEN_EFORMAT);
    free(u);
    free(t);
}

static void
test_huge_input(void)
{
    size_t n = 1u << 20;
    char *big = malloc(n);
    cn_token_claims_t c;
    char *payload, *t;

    CU_ASSERT_PTR_NOT_NULL_FATAL(big);
    memset(big, 'A', n);
    CU_ASSERT_EQUAL(cn__token_verify(big, n, secret, SECRET_LEN, NOW, &c), CN_TOKEN_ETOOBIG);
    CU_ASSERT_EQUAL(cn__token_verify(big, CN_TOKEN_MAX + 1, secret, SECRET_LEN, NOW, &c),
                    CN_TOKEN_ETOOBIG);
    /* At the limit: three parts of 'A's decode to NUL bytes, which are no JSON. */
    memset(big, 'A', CN_TOKEN_MAX);
    big[1364] = '.';
    big[2729] = '.';
    CU_ASSERT_EQUAL(cn__token_verify(big, CN_TOKEN_MAX, secret, SECRET_LEN, NOW, &c),
                    CN_TOKEN_EFORMAT);
    free(big);
    /* A valid token just under the limit, and the same grown past it. */
    payload = malloc(CN_TOKEN_MAX);
    CU_ASSERT_PTR_NOT_NULL_FATAL(payload);
    snprintf(payload, CN_TOKEN_MAX, "{\"exp\":1800000000,\"rooms\":[],\"pad\":\"%0*d\"}",
             2600, 0);
    t = mint(payload);
    CU_ASSERT(strlen(t) <= CN_TOKEN_MAX);
    CU_ASSERT_EQUAL(verify(t, &c), 0);
    free(t);
    snprintf(payload, CN_TOKEN_MAX, "{\"exp\":1800000000,\"rooms\":[],\"pad\":\"%0*d\"}",
             3200, 0);
    t = mint(payload);
    CU_ASSERT(strlen(t) > CN_TOKEN_MAX);
    CU_ASSERT_EQUAL(verify(t, &c), CN_TOKEN_ETOOBIG);
    free(t);
    free(payload);
}

static void
test_rooms_claim_forms(void)
{
    static const struct {
        const char *payload;
        int rc;
        int any;
        unsigned nrooms;
    } cases[] = {
        {"{\"exp\":1800000000,\"rooms\":[]}", 0, 0, 0},
        {"{\"exp\":1800000000,\"rooms\":[\"*\"]}", 0, 1, 0},
        {"{\"exp\":1800000000,\"rooms\":[\"a\",\"*\",\"b\"]}", 0, 1, 2},
        {"{\"exp\":1800000000,\"rooms\":[\"orders:42\",\"t/x\"]}", 0, 0, 2},
        {"{\"exp\":1800000000}", CN_TOKEN_ECLAIMS, 0, 0},
        {"{\"exp\":1800000000,\"rooms\":\"*\"}", CN_TOKEN_ECLAIMS, 0, 0},
        {"{\"exp\":1800000000,\"rooms\":\"red\"}", CN_TOKEN_ECLAIMS, 0, 0},
        {"{\"exp\":1800000000,\"rooms\":null}", CN_TOKEN_ECLAIMS, 0, 0},
        {"{\"exp\":1800000000,\"rooms\":{\"red\":true}}", CN_TOKEN_ECLAIMS, 0, 0},
        {"{\"exp\":1800000000,\"rooms\":[1]}", CN_TOKEN_ECLAIMS, 0, 0},
        {"{\"exp\":1800000000,\"rooms\":[\"\"]}", CN_TOKEN_ECLAIMS, 0, 0},
        {"{\"exp\":1800000000,\"rooms\":[\"a\\\"b\"]}", CN_TOKEN_ECLAIMS, 0, 0},
        {"{\"exp\":1800000000,\"rooms\":[\"tab\\there\"]}", CN_TOKEN_ECLAIMS, 0, 0},
        {"{\"exp\":1800000000,\"rooms\":[\"caf\\u00e9\"]}", CN_TOKEN_ECLAIMS, 0, 0},
        {"{\"exp\":1800000000,\"rooms\":[[\"red\"]]}", CN_TOKEN_ECLAIMS, 0, 0},
        {"{\"exp\":1800000000,\"rooms\":[],\"all\":1}", CN_TOKEN_ECLAIMS, 0, 0},
        {"{\"exp\":1800000000,\"rooms\":[],\"all\":\"true\"}", CN_TOKEN_ECLAIMS, 0, 0},
        {"{\"exp\":1800000000,\"rooms\":[],\"all\":false}", 0, 0, 0},
    };
    cn_token_claims_t c;
    char payload[8192];
    size_t at;

    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        int rc = verify_payload(cases[i].payload, &c);
        if (rc != cases[i].rc)
            fprintf(stderr, "\n  rooms case %zu: got %d (%s)\n", i, rc, cn__token_strerror(rc));
        CU_ASSERT_EQUAL(rc, cases[i].rc);
        if (rc == 0) {
            CU_ASSERT_EQUAL(c.any_room, cases[i].any);
            CU_ASSERT_EQUAL(c.nrooms, cases[i].nrooms);
            CU_ASSERT_EQUAL(cn__token_allows(&c, "anything"), cases[i].any);
        }
    }
    /* 128-byte names are fine, 129 not; at most CN_TOKEN_ROOMS_MAX names. */
    at = (size_t)snprintf(payload, sizeof(payload), "{\"exp\":1800000000,\"rooms\":[\"%0*d\"]}",
                          CN_EVENT_ROOM_MAX, 7);
    CU_ASSERT(at < sizeof(payload));
    CU_ASSERT_EQUAL(verify_payload(payload, &c), 0);
    snprintf(payload, sizeof(payload), "{\"exp\":1800000000,\"rooms\":[\"%0*d\"]}",
             CN_EVENT_ROOM_MAX + 1, 7);
    CU_ASSERT_EQUAL(verify_payload(payload, &c), CN_TOKEN_ECLAIMS);
    for (unsigned want = CN_TOKEN_ROOMS_MAX; want <= CN_TOKEN_ROOMS_MAX + 1; want++) {
        at = (size_t)snprintf(payload, sizeof(payload), "{\"exp\":1800000000,\"rooms\":[");
        for (unsigned i = 0; i < want; i++)
            at += (size_t)snprintf(payload + at, sizeof(payload) - at, "%s\"r%u\"", i ? "," : "",
                                   i);
        snprintf(payload + at, sizeof(payload) - at, "]}");
        CU_ASSERT_EQUAL(verify_payload(payload, &c),
                        want <= CN_TOKEN_ROOMS_MAX ? 0 : CN_TOKEN_ECLAIMS);
        if (want == CN_TOKEN_ROOMS_MAX) {
            CU_ASSERT_EQUAL(c.nrooms, CN_TOKEN_ROOMS_MAX);
            CU_ASSERT(cn__token_allows(&c, "r31"));
            CU_ASSERT(!cn__token_allows(&c, "r32"));
        }
    }
    /* Every result has a description. */
    for (int rc = 0; rc >= -7; rc--)
        CU_ASSERT_PTR_NOT_NULL(cn__token_strerror(rc));
}

/* ---- the query string ---- */

static int
parse(const char *s, cn_ws_query_t *q)
{
    size_t n = strlen(s);
    char *copy = malloc(n ? n : 1);
    int rc;

    CU_ASSERT_PTR_NOT_NULL_FATAL(copy);
    memcpy(copy, s, n);
    rc = cn__ws_query_parse(q, copy, n);
    free(copy);
    return rc;
}

static void
test_query(void)
{
    static cn_ws_query_t q; /* 4 KiB of token: not on the stack */
    static const char *bad[] = {
        "since=",
        "since",
        "since=-1",
        "since=+1",
        "since= 1",
        "since=1 ",
        "since=1x",
        "since=0x10",
        "since=18446744073709551616",
        "since=99999999999999999999",
        "since=000000000000000000001",
        "since=1&since=1",
        "epoch=",
        "epoch=0123456789abcde",
        "epoch=0123456789abcdef0",
        "epoch=0123456789abcdeg",
        "epoch=1&epoch=1",
        "token=",
        "token",
        "token=a&token=a",
    };

    CU_ASSERT_EQUAL(parse("", &q), 0);
    CU_ASSERT(!q.has_since && !q.has_epoch && !q.has_token);
    CU_ASSERT_EQUAL(parse("since=0", &q), 0);
    CU_ASSERT(q.has_since && q.since == 0);
    CU_ASSERT_EQUAL(parse("since=18446744073709551615", &q), 0);
    CU_ASSERT_EQUAL(q.since, UINT64_MAX);
    CU_ASSERT_EQUAL(parse("since=18446744073709551614", &q), 0);
    CU_ASSERT_EQUAL(q.since, UINT64_MAX - 1);
    CU_ASSERT_EQUAL(parse("since=00042&&x=1&epoch=DEADbeef00000001&token=a.b.c&y", &q), 0);
    CU_ASSERT_EQUAL(q.since, 42);
    CU_ASSERT(q.has_epoch);
    CU_ASSERT_EQUAL(q.epoch, 0xdeadbeef00000001ull);
    CU_ASSERT(q.has_token);
    CU_ASSERT_EQUAL(q.token_len, 5);
    CU_ASSERT_STRING_EQUAL(q.token, "a.b.c");
    /* Unknown and empty parameters are ignored; names are exact. */
    CU_ASSERT_EQUAL(parse("Since=abc&sincex=1&&&", &q), 0);
    CU_ASSERT(!q.has_since);
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        int rc = parse(bad[i], &q);
        if (rc != -EINVAL)
            fprintf(stderr, "\n  query '%s' accepted\n", bad[i]);
        CU_ASSERT_EQUAL(rc, -EINVAL);
    }
    /* A token at the limit, and one byte past it. */
    {
        char *s = malloc(CN_TOKEN_MAX + 16);
        CU_ASSERT_PTR_NOT_NULL_FATAL(s);
        memcpy(s, "token=", 6);
        memset(s + 6, 'x', CN_TOKEN_MAX + 1);
        s[6 + CN_TOKEN_MAX] = '\0';
        CU_ASSERT_EQUAL(parse(s, &q), 0);
        CU_ASSERT_EQUAL(q.token_len, CN_TOKEN_MAX);
        CU_ASSERT_EQUAL(q.token[CN_TOKEN_MAX], '\0');
        s[6 + CN_TOKEN_MAX] = 'x';
        s[7 + CN_TOKEN_MAX] = '\0';
        CU_ASSERT_EQUAL(parse(s, &q), -EINVAL);
        free(s);
    }
    /* A NUL inside a value (bytes, not a C string). */
    CU_ASSERT_EQUAL(cn__ws_query_parse(&q, "token=a\0b", 9), -EINVAL);
    CU_ASSERT_EQUAL(cn__ws_query_parse(&q, "since=1\0", 8), -EINVAL);
    /* The epoch's text form. */
    {
        char hex[17];
        cn__ws_epoch_format(0xdeadbeef00000001ull, hex);
        CU_ASSERT_STRING_EQUAL(hex, "deadbeef00000001");
        cn__ws_epoch_format(0, hex);
        CU_ASSERT_STRING_EQUAL(hex, "0000000000000000");
    }
}

int
main(void)
{
    static const unit_test_t tests[] = {
        {"token: valid, claims and what they allow", test_valid_token_and_claims},
        {"token: expired, not yet valid, exp forms", test_expired_and_not_yet_valid},
        {"token: wrong signature", test_wrong_signature},
        {"token: alg none and every other alg", test_alg_none_and_others},
        {"token: malformed base64url and structure", test_malformed_base64_and_structure},
        {"token: huge input", test_huge_input},
        {"token: rooms claim forms", test_rooms_claim_forms},
        {"query: since, epoch, token", test_query},
        {NULL, NULL},
    };

    return unit_run("token", tests);
}
