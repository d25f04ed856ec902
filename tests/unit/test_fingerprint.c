/*
 * tests/unit/test_fingerprint.c - SHA-256, the request fingerprint framing, hex output
 * and CRC-32C.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "reliability/fingerprint.h"
#include "support/crc32c.h"
#include "unit.h"

#define ORDER_BODY "{\"product_id\":\"p1\",\"quantity\":2}"

static void
hex_of(const uint8_t d[CN_SHA256_LEN], char out[2 * CN_SHA256_LEN + 1])
{
    static const char digits[] = "0123456789abcdef";

    for (size_t i = 0; i < CN_SHA256_LEN; i++) {
        out[2 * i] = digits[d[i] >> 4];
        out[2 * i + 1] = digits[d[i] & 15];
    }
    out[2 * CN_SHA256_LEN] = '\0';
}

static void
expect_sha256(const void *data, size_t len, const char *want_hex)
{
    uint8_t d[CN_SHA256_LEN];
    char hex[2 * CN_SHA256_LEN + 1];

    CU_ASSERT_EQUAL_FATAL(cn__sha256(data, len, d), 0);
    hex_of(d, hex);
    CU_ASSERT_STRING_EQUAL(hex, want_hex);
}

/* The fingerprint computed independently: frame the bytes here, hash with cn__sha256. */
static void
reference_fingerprint(const char *q, size_t qlen, const void *b, size_t blen,
                      uint8_t out[CN_SHA256_LEN])
{
    size_t n = 8 + qlen + 8 + blen, o = 0;
    uint8_t *buf = malloc(n ? n : 1);

    CU_ASSERT_PTR_NOT_NULL_FATAL(buf);
    for (int i = 7; i >= 0; i--)
        buf[o++] = (uint8_t)((uint64_t)qlen >> (8 * i));
    if (qlen)
        memcpy(buf + o, q, qlen);
    o += qlen;
    for (int i = 7; i >= 0; i--)
        buf[o++] = (uint8_t)((uint64_t)blen >> (8 * i));
    if (blen)
        memcpy(buf + o, b, blen);
    CU_ASSERT_EQUAL(cn__sha256(buf, n, out), 0);
    free(buf);
}

static void
expect_fingerprint_matches_reference(const char *q, size_t qlen, const void *b, size_t blen)
{
    uint8_t got[CN_SHA256_LEN], want[CN_SHA256_LEN];

    CU_ASSERT_EQUAL_FATAL(cn__fingerprint(q, qlen, b, blen, got), 0);
    reference_fingerprint(q, qlen, b, blen, want);
    CU_ASSERT_EQUAL(memcmp(got, want, CN_SHA256_LEN), 0);
}

/* The request-line form: be64(len(target)) target, then the first form's bytes. */
static void
test_fingerprint_target(void)
{
    static const char target[] = "PUT /docs/1", q[] = "a=1", b[] = "{}";
    size_t n = 8 + strlen(target) + 8 + strlen(q) + 8 + strlen(b), o = 0;
    uint8_t buf[128], want[CN_SHA256_LEN], got[CN_SHA256_LEN], first[CN_SHA256_LEN];

    for (int i = 7; i >= 0; i--)
        buf[o++] = (uint8_t)((uint64_t)strlen(target) >> (8 * i));
    memcpy(buf + o, target, strlen(target));
    o += strlen(target);
    for (int i = 7; i >= 0; i--)
        buf[o++] = (uint8_t)((uint64_t)strlen(q) >> (8 * i));
    memcpy(buf + o, q, strlen(q));
    o += strlen(q);
    for (int i = 7; i >= 0; i--)
        buf[o++] = (uint8_t)((uint64_t)strlen(b) >> (8 * i));
    memcpy(buf + o, b, strlen(b));
    CU_ASSERT_EQUAL_FATAL(o + strlen(b), n);
    CU_ASSERT_EQUAL(cn__sha256(buf, n, want), 0);
    CU_ASSERT_EQUAL(cn__fingerprint_target(target, strlen(target), q, strlen(q), b, strlen(b),
                                           got), 0);
    CU_ASSERT_EQUAL(memcmp(got, want, CN_SHA256_LEN), 0);
    /* No target: the first form, unchanged (stored POST fingerprints stay valid). */
    CU_ASSERT_EQUAL(cn__fingerprint_target(NULL, 0, q, strlen(q), b, strlen(b), got), 0);
    CU_ASSERT_EQUAL(cn__fingerprint(q, strlen(q), b, strlen(b), first), 0);
    CU_ASSERT_EQUAL(memcmp(got, first, CN_SHA256_LEN), 0);
    /* Another path, another fingerprint. */
    CU_ASSERT_EQUAL(cn__fingerprint_target("PUT /docs/2", 11, q, strlen(q), b, strlen(b), got),
                    0);
    CU_ASSERT_NOT_EQUAL(memcmp(got, want, CN_SHA256_LEN), 0);
}

static void
test_sha256_vectors(void)
{
    static const char two_blocks[] = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";

    expect_sha256("", 0, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    expect_sha256("abc", 3, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    expect_sha256(two_blocks, strlen(two_blocks),
                  "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}

static void
test_fingerprint_framing(void)
{
    static const uint8_t binary[] = {0x00, 0xff, 0x00, 0x10, 0x80};

    expect_fingerprint_matches_reference("", 0, "", 0);
    expect_fingerprint_matches_reference("", 0, ORDER_BODY, strlen(ORDER_BODY));
    expect_fingerprint_matches_reference("dry_run=1", 9, ORDER_BODY, strlen(ORDER_BODY));
    expect_fingerprint_matches_reference("a=1&b=2", 7, binary, sizeof(binary));
    /* qlen and blen are used, not strlen: a query with a NUL and trailing bytes. */
    expect_fingerprint_matches_reference("x\0y", 3, "body-and-more", 4);
}

static void
test_fingerprint_fixed_vectors(void)
{
    /* Computed with Python: sha256(pack('>Q',len(q))+q+pack('>Q',len(b))+b). */
    static const struct {
        const char *q, *b, *hex;
    } v[] = {
        {"", ORDER_BODY, "22a28e7c8b996d1a0775382c9de7c452c2665237d9eb156cdecdd47316d1abeb"},
        {"dry_run=1", ORDER_BODY,
         "c8a88d223d1d64d8d06ea1787a87faf7b30b5a529957eb78e2d66255dd69c490"},
        {"", "", "374708fff7719dd5979ec875d56cd2286f6d3cf7ec317a3b25632aab28ec37bb"},
    };

    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        uint8_t d[CN_SHA256_LEN];
        char hex[2 * CN_SHA256_LEN + 1];

        CU_ASSERT_EQUAL_FATAL(cn__fingerprint(v[i].q, strlen(v[i].q), v[i].b, strlen(v[i].b), d),
                              0);
        hex_of(d, hex);
        CU_ASSERT_STRING_EQUAL(hex, v[i].hex);
    }
}

static void
test_fingerprint_distinguishes(void)
{
    uint8_t a[CN_SHA256_LEN], b[CN_SHA256_LEN], c[CN_SHA256_LEN];

    /* A different query, same body. */
    CU_ASSERT_EQUAL_FATAL(cn__fingerprint("", 0, ORDER_BODY, strlen(ORDER_BODY), a), 0);
    CU_ASSERT_EQUAL_FATAL(cn__fingerprint("dry_run=1", 9, ORDER_BODY, strlen(ORDER_BODY), b), 0);
    CU_ASSERT_NOT_EQUAL(memcmp(a, b, CN_SHA256_LEN), 0);

    /* Bytes moved across the query/body boundary. */
    CU_ASSERT_EQUAL_FATAL(cn__fingerprint("a", 1, "bc", 2, a), 0);
    CU_ASSERT_EQUAL_FATAL(cn__fingerprint("ab", 2, "c", 1, b), 0);
    CU_ASSERT_NOT_EQUAL(memcmp(a, b, CN_SHA256_LEN), 0);

    /* Not the plain hash of the concatenation either. */
    CU_ASSERT_EQUAL_FATAL(cn__sha256("abc", 3, c), 0);
    CU_ASSERT_NOT_EQUAL(memcmp(a, c, CN_SHA256_LEN), 0);

    /* Same input, same output. */
    CU_ASSERT_EQUAL_FATAL(cn__fingerprint("a", 1, "bc", 2, c), 0);
    CU_ASSERT_EQUAL(memcmp(a, c, CN_SHA256_LEN), 0);
}

static void
test_hex(void)
{
    static const uint8_t bytes[] = {0x00, 0x01, 0xab, 0xff, 0x7f, 0x80};
    char out[16];

    memset(out, '#', sizeof(out));
    cn__hex(bytes, sizeof(bytes), out);
    CU_ASSERT_STRING_EQUAL(out, "0001abff7f80");
    CU_ASSERT_EQUAL(out[13], '#'); /* nothing past the NUL */

    memset(out, '#', sizeof(out));
    cn__hex(bytes, 0, out);
    CU_ASSERT_STRING_EQUAL(out, "");
    CU_ASSERT_EQUAL(out[1], '#');

    {
        uint8_t d[CN_SHA256_LEN];
        char hex[2 * CN_SHA256_LEN + 1], ref[2 * CN_SHA256_LEN + 1];

        CU_ASSERT_EQUAL_FATAL(cn__sha256("abc", 3, d), 0);
        cn__hex(d, sizeof(d), hex);
        hex_of(d, ref);
        CU_ASSERT_STRING_EQUAL(hex, ref);
    }
}

static void
test_crc32c_vectors(void)
{
    uint8_t buf[32];

    CU_ASSERT_EQUAL(cn__crc32c(0, "123456789", 9), 0xE3069283u);
    CU_ASSERT_EQUAL(cn__crc32c(0, "", 0), 0u);
    /* RFC 3720 appendix B.4. */
    memset(buf, 0, sizeof(buf));
    CU_ASSERT_EQUAL(cn__crc32c(0, buf, sizeof(buf)), 0x8A9136AAu);
    memset(buf, 0xff, sizeof(buf));
    CU_ASSERT_EQUAL(cn__crc32c(0, buf, sizeof(buf)), 0x62A8AB43u);
    for (size_t i = 0; i < sizeof(buf); i++)
        buf[i] = (uint8_t)i;
    CU_ASSERT_EQUAL(cn__crc32c(0, buf, sizeof(buf)), 0x46DD794Eu);
}

/* The instruction path (when the CPU has one) and the table agree on every length and
 * alignment, and when extended piece by piece. */
static void
test_crc32c_paths_agree(void)
{
    static uint8_t buf[4096 + 16];
    uint64_t x = 0x9E3779B97F4A7C15ull;

    for (size_t i = 0; i < sizeof(buf); i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        buf[i] = (uint8_t)x;
    }
    for (size_t off = 0; off < 16; off++)
        for (size_t len = 0; len <= 300; len++)
            CU_ASSERT_EQUAL(cn__crc32c(0x12345678u, buf + off, len),
                            cn__crc32c_table(0x12345678u, buf + off, len));
    CU_ASSERT_EQUAL(cn__crc32c(0, buf, 4096), cn__crc32c_table(0, buf, 4096));
    CU_ASSERT_EQUAL(cn__crc32c(cn__crc32c(0, buf, 1000), buf + 1000, 3096),
                    cn__crc32c_table(0, buf, 4096));
    CU_ASSERT_EQUAL(cn__crc32c_table(0, "123456789", 9), 0xE3069283u);
}

static void
test_crc32c_incremental(void)
{
    static const char msg[] = "123456789";
    uint8_t big[1031];
    uint32_t whole;

    for (size_t split = 0; split <= 9; split++) {
        uint32_t c = cn__crc32c(0, msg, split);
        c = cn__crc32c(c, msg + split, 9 - split);
        CU_ASSERT_EQUAL(c, 0xE3069283u);
    }

    /* Longer, unaligned input in uneven pieces. */
    for (size_t i = 0; i < sizeof(big); i++)
        big[i] = (uint8_t)(i * 131 + 7);
    whole = cn__crc32c(0, big, sizeof(big));
    for (size_t step = 1; step <= 17; step += 4) {
        uint32_t c = 0;
        for (size_t off = 0; off < sizeof(big); off += step) {
            size_t n = sizeof(big) - off < step ? sizeof(big) - off : step;
            c = cn__crc32c(c, big + off, n);
        }
        CU_ASSERT_EQUAL(c, whole);
    }
    CU_ASSERT_EQUAL(cn__crc32c(cn__crc32c(0, big + 1, 500), big + 501, sizeof(big) - 501),
                    cn__crc32c(0, big + 1, sizeof(big) - 1));
}

int
main(void)
{
    static const unit_test_t tests[] = {
        {"sha256 standard vectors", test_sha256_vectors},
        {"fingerprint equals independent framing", test_fingerprint_framing},
        {"fingerprint fixed vectors", test_fingerprint_fixed_vectors},
        {"fingerprint distinguishes query and body", test_fingerprint_distinguishes},
        {"hex output", test_hex},
        {"fingerprint with a request line", test_fingerprint_target},
        {"crc32c vectors", test_crc32c_vectors},
        {"crc32c incremental equals one-shot", test_crc32c_incremental},
        {"crc32c: the instruction and the table agree", test_crc32c_paths_agree},
        {NULL, NULL},
    };

    return unit_run("fingerprint", tests);
}
