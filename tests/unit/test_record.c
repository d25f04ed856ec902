/*
 * tests/unit/test_record.c - the stored-response record format: round trips, the
 * documented byte layout, and rejection of truncated, corrupted and unknown-version
 * bytes.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cnerium/error.h"
#include "store/record.h"
#include "support/crc32c.h"
#include "unit.h"

#define CT "application/json"
#define LOC "/orders/42"

static uint8_t body_bytes[300];

static cn_record_t
full_record(void)
{
    cn_record_t r;

    memset(&r, 0, sizeof(r));
    r.status = 503; /* above 255: both status bytes matter */
    r.created_ms = 1700000000123ull;
    r.expires_ms = 1700086400123ull;
    for (size_t i = 0; i < CN_SHA256_LEN; i++)
        r.fingerprint[i] = (uint8_t)(0xA0 + i);
    /* Binary body with NUL bytes and every byte value. */
    for (size_t i = 0; i < sizeof(body_bytes); i++)
        body_bytes[i] = (uint8_t)i;
    body_bytes[1] = 0;
    body_bytes[299] = 0;
    r.content_type = CT;
    r.content_type_len = (uint32_t)strlen(CT);
    r.location = LOC;
    r.location_len = (uint32_t)strlen(LOC);
    r.body = (const char *)body_bytes;
    r.body_len = (uint32_t)sizeof(body_bytes);
    return r;
}

static cn_record_t
bare_record(void)
{
    cn_record_t r;

    memset(&r, 0, sizeof(r));
    r.status = 204;
    r.created_ms = 5;
    r.expires_ms = UINT64_MAX;
    memset(r.fingerprint, 0x11, sizeof(r.fingerprint));
    return r;
}

/* Encodes rec into a malloc'd buffer of exactly the encoded size. */
static uint8_t *
encode(const cn_record_t *rec, size_t *len)
{
    size_t size = cn__record_encoded_size(rec), written = 0;
    uint8_t *buf = malloc(size);

    CU_ASSERT_PTR_NOT_NULL_FATAL(buf);
    CU_ASSERT_EQUAL_FATAL(cn__record_encode(rec, buf, size, &written), 0);
    CU_ASSERT_EQUAL(written, size);
    *len = size;
    return buf;
}

static uint32_t
get_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t
get_le64(const uint8_t *p)
{
    return (uint64_t)get_le32(p) | (uint64_t)get_le32(p + 4) << 32;
}

static void
put_le32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/* Recomputes the trailing CRC after a deliberate edit. */
static void
fix_crc(uint8_t *buf, size_t len)
{
    put_le32(buf + len - 4, cn__crc32c(0, buf, len - 4));
}

static void
expect_same(const cn_record_t *a, const cn_record_t *b)
{
    CU_ASSERT_EQUAL(a->status, b->status);
    CU_ASSERT_EQUAL(a->created_ms, b->created_ms);
    CU_ASSERT_EQUAL(a->expires_ms, b->expires_ms);
    CU_ASSERT_EQUAL(memcmp(a->fingerprint, b->fingerprint, CN_SHA256_LEN), 0);
    CU_ASSERT_EQUAL_FATAL(a->content_type_len, b->content_type_len);
    CU_ASSERT_EQUAL_FATAL(a->location_len, b->location_len);
    CU_ASSERT_EQUAL_FATAL(a->body_len, b->body_len);
    if (a->content_type_len)
        CU_ASSERT_EQUAL(memcmp(a->content_type, b->content_type, a->content_type_len), 0);
    if (a->location_len)
        CU_ASSERT_EQUAL(memcmp(a->location, b->location, a->location_len), 0);
    if (a->body_len)
        CU_ASSERT_EQUAL(memcmp(a->body, b->body, a->body_len), 0);
    CU_ASSERT_EQUAL_FATAL(a->headers_len, b->headers_len);
    if (a->headers_len)
        CU_ASSERT_EQUAL(memcmp(a->headers, b->headers, a->headers_len), 0);
}

/* Expects decode to fail with want (0 = any error) and leave *rec untouched. */
static int
decode_fails(const uint8_t *buf, size_t len, int want)
{
    cn_record_t rec, pristine;
    int rc;

    memset(&rec, 0x5A, sizeof(rec));
    memcpy(&pristine, &rec, sizeof(rec));
    rc = cn__record_decode(buf, len, &rec);
    if (memcmp(&rec, &pristine, sizeof(rec)) != 0)
        return 0;
    return want ? rc == want : rc != 0;
}

static void
test_round_trip_full(void)
{
    cn_record_t in = full_record(), out;
    size_t len;
    uint8_t *buf = encode(&in, &len);

    CU_ASSERT_EQUAL(len, CN_RECORD_HEADER_LEN + strlen(CT) + strlen(LOC) + sizeof(body_bytes) +
                             CN_RECORD_TRAILER_LEN);
    memset(&out, 0, sizeof(out));
    CU_ASSERT_EQUAL_FATAL(cn__record_decode(buf, len, &out), 0);
    expect_same(&in, &out);
    /* A view: the decoded pointers borrow from the buffer. */
    CU_ASSERT((const uint8_t *)out.body >= buf && (const uint8_t *)out.body < buf + len);
    CU_ASSERT((const uint8_t *)out.content_type >= buf &&
              (const uint8_t *)out.content_type < buf + len);
    free(buf);
}

static void
test_round_trip_bare(void)
{
    cn_record_t in = bare_record(), out;
    size_t len;
    uint8_t *buf = encode(&in, &len);

    CU_ASSERT_EQUAL(len, CN_RECORD_HEADER_LEN + CN_RECORD_TRAILER_LEN);
    memset(&out, 0xEE, sizeof(out));
    CU_ASSERT_EQUAL_FATAL(cn__record_decode(buf, len, &out), 0);
    expect_same(&in, &out);
    CU_ASSERT_EQUAL(out.content_type_len, 0);
    CU_ASSERT_EQUAL(out.location_len, 0);
    CU_ASSERT_EQUAL(out.body_len, 0);
    free(buf);

    /* Location only, empty body: each length is independent. */
    in.location = "/x";
    in.location_len = 2;
    buf = encode(&in, &len);
    CU_ASSERT_EQUAL_FATAL(cn__record_decode(buf, len, &out), 0);
    expect_same(&in, &out);
    free(buf);
}

static void
test_layout(void)
{
    cn_record_t in = full_record();
    size_t len;
    uint8_t *buf = encode(&in, &len);
    size_t ct = strlen(CT), loc = strlen(LOC);

    CU_ASSERT_EQUAL(memcmp(buf, "CNRR", 4), 0);
    CU_ASSERT_EQUAL(buf[4], CN_RECORD_VERSION);
    CU_ASSERT_EQUAL(buf[5], 0);
    CU_ASSERT_EQUAL(buf[6] | buf[7] << 8, 503);
    CU_ASSERT_EQUAL(get_le64(buf + 8), in.created_ms);
    CU_ASSERT_EQUAL(get_le64(buf + 16), in.expires_ms);
    CU_ASSERT_EQUAL(memcmp(buf + 24, in.fingerprint, CN_SHA256_LEN), 0);
    CU_ASSERT_EQUAL(get_le32(buf + 56), ct);
    CU_ASSERT_EQUAL(get_le32(buf + 60), loc);
    CU_ASSERT_EQUAL(get_le32(buf + 64), sizeof(body_bytes));
    CU_ASSERT_EQUAL(memcmp(buf + 68, CT, ct), 0);
    CU_ASSERT_EQUAL(memcmp(buf + 68 + ct, LOC, loc), 0);
    CU_ASSERT_EQUAL(memcmp(buf + 68 + ct + loc, body_bytes, sizeof(body_bytes)), 0);
    CU_ASSERT_EQUAL(get_le32(buf + len - 4), cn__crc32c(0, buf, len - 4));
    free(buf);
}

static void
test_encoded_size(void)
{
    cn_record_t recs[2];

    recs[0] = full_record();
    recs[1] = bare_record();
    for (size_t i = 0; i < 2; i++) {
        size_t size = cn__record_encoded_size(&recs[i]), written = 0;
        uint8_t *buf = malloc(size + 16);

        CU_ASSERT_PTR_NOT_NULL_FATAL(buf);
        /* Room to spare: written is still the exact size. */
        CU_ASSERT_EQUAL(cn__record_encode(&recs[i], buf, size + 16, &written), 0);
        CU_ASSERT_EQUAL(written, size);
        CU_ASSERT_EQUAL(size, CN_RECORD_HEADER_LEN + recs[i].content_type_len +
                                  recs[i].location_len + recs[i].body_len + CN_RECORD_TRAILER_LEN);
        free(buf);
    }
}

static void
test_truncation(void)
{
    cn_record_t recs[2];

    recs[0] = full_record();
    recs[1] = bare_record();
    for (size_t r = 0; r < 2; r++) {
        size_t len, bad = 0;
        uint8_t *buf = encode(&recs[r], &len);

        for (size_t l = 0; l < len; l++) {
            /* A fresh allocation of exactly l bytes so ASan catches over-reads. */
            uint8_t *t = malloc(l ? l : 1);
            CU_ASSERT_PTR_NOT_NULL_FATAL(t);
            memcpy(t, buf, l);
            if (!decode_fails(t, l, CN_ECORRUPT))
                bad++;
            free(t);
        }
        CU_ASSERT_EQUAL(bad, 0);
        free(buf);
    }
}

static void
test_single_byte_flips(void)
{
    cn_record_t in = full_record();
    size_t len, bad = 0, bad_version = 0;
    uint8_t *buf = encode(&in, &len);
    static const uint8_t masks[] = {0x01, 0x80, 0xFF};

    for (size_t i = 0; i < len; i++) {
        for (size_t m = 0; m < sizeof(masks); m++) {
            buf[i] ^= masks[m];
            if (i == 4) {
                /* The version byte: CN_EVERSION or CN_ECORRUPT, but never success. */
                if (!decode_fails(buf, len, 0))
                    bad_version++;
            } else if (!decode_fails(buf, len, CN_ECORRUPT)) {
                bad++;
            }
            buf[i] ^= masks[m];
        }
    }
    CU_ASSERT_EQUAL(bad, 0);
    CU_ASSERT_EQUAL(bad_version, 0);
    free(buf);
}

static void
test_unknown_version(void)
{
    cn_record_t in = full_record();
    size_t len;
    uint8_t *buf = encode(&in, &len);
    static const uint8_t versions[] = {0, 3, 0xFF};

    for (size_t i = 0; i < sizeof(versions); i++) {
        buf[4] = versions[i];
        fix_crc(buf, len);
        CU_ASSERT(decode_fails(buf, len, CN_EVERSION));
    }
    free(buf);
}

/* Version 2: stored headers after the body. A record without them stays version 1, byte
 * for byte as before (so older records and newer ones without headers are the same). */
static void
test_stored_headers(void)
{
    static const char hdrs[] = "ETag: \"v1\"\r\nX-Rate: 5\r\n";
    cn_record_t in = full_record(), out;
    size_t len, len1;
    uint8_t *v1 = encode(&in, &len1), *buf;

    CU_ASSERT_EQUAL(v1[4], 1);
    in.headers = hdrs;
    in.headers_len = sizeof(hdrs) - 1;
    buf = encode(&in, &len);
    CU_ASSERT_EQUAL(buf[4], 2);
    CU_ASSERT_EQUAL(len, len1 + 4 + in.headers_len);
    CU_ASSERT_EQUAL(memcmp(buf + 5, v1 + 5, len1 - 4 - 5), 0); /* same up to the body */
    CU_ASSERT_EQUAL_FATAL(cn__record_decode(buf, len, &out), 0);
    expect_same(&in, &out);
    /* Damage: every truncation, a zero or oversized headers length, version 2 without
     * the block. */
    for (size_t n = 0; n < len; n++)
        CU_ASSERT(decode_fails(buf, n, 0));
    put_le32(buf + len1 - 4, 0);
    fix_crc(buf, len);
    CU_ASSERT(decode_fails(buf, len, CN_ECORRUPT));
    put_le32(buf + len1 - 4, CN_RECORD_HEADERS_MAX + 1);
    fix_crc(buf, len);
    CU_ASSERT(decode_fails(buf, len, CN_ECORRUPT));
    v1[4] = 2;
    fix_crc(v1, len1);
    CU_ASSERT(decode_fails(v1, len1, CN_ECORRUPT));
    /* Too many headers to encode. */
    {
        static char big[CN_RECORD_HEADERS_MAX + 1];
        uint8_t small[64];
        size_t w;
        memset(big, 'a', sizeof(big));
        in.headers = big;
        in.headers_len = sizeof(big);
        CU_ASSERT_EQUAL(cn__record_encode(&in, small, sizeof(small), &w), CN_ETOOBIG);
    }
    free(buf);
    free(v1);
}

static void
test_bad_magic_with_valid_crc(void)
{
    cn_record_t in = bare_record();
    size_t len;
    uint8_t *buf = encode(&in, &len);

    buf[0] = 'X';
    fix_crc(buf, len);
    CU_ASSERT(decode_fails(buf, len, CN_ECORRUPT));
    free(buf);
}

static void
test_lengths_beyond_buffer(void)
{
    cn_record_t in = full_record();
    size_t len;
    uint8_t *buf = encode(&in, &len);
    uint8_t *copy = malloc(len + 1);
    static const size_t fields[] = {56, 60, 64};
    static const uint32_t values[] = {1u, 0x7FFFFFFFu, 0xFFFFFFFFu, CN_RECORD_FIELD_MAX + 1u};

    CU_ASSERT_PTR_NOT_NULL_FATAL(copy);
    for (size_t f = 0; f < sizeof(fields) / sizeof(fields[0]); f++) {
        for (size_t v = 0; v < sizeof(values) / sizeof(values[0]); v++) {
            uint32_t orig = get_le32(buf + fields[f]);

            memcpy(copy, buf, len);
            /* Grow the field by values[v] (wrapping) so lengths claim more than there is;
             * the CRC is made valid so only the length check can catch it. */
            put_le32(copy + fields[f], orig + values[v]);
            fix_crc(copy, len);
            CU_ASSERT(decode_fails(copy, len, CN_ECORRUPT));
        }
        /* One byte fewer: the lengths no longer account for every byte. */
        memcpy(copy, buf, len);
        put_le32(copy + fields[f], get_le32(buf + fields[f]) - 1);
        fix_crc(copy, len);
        CU_ASSERT(decode_fails(copy, len, CN_ECORRUPT));
    }

    /* Trailing garbage after a valid record. */
    memcpy(copy, buf, len);
    copy[len] = 0;
    CU_ASSERT(decode_fails(copy, len + 1, CN_ECORRUPT));
    free(copy);
    free(buf);
}

static void
test_encode_too_small(void)
{
    cn_record_t in = full_record();
    size_t size = cn__record_encoded_size(&in), bad = 0;
    uint8_t *buf = malloc(size);

    CU_ASSERT_PTR_NOT_NULL_FATAL(buf);
    for (size_t cap = 0; cap < size; cap++) {
        size_t written = 777;
        if (cn__record_encode(&in, buf, cap, &written) != -ENOSPC || written != 777)
            bad++;
    }
    CU_ASSERT_EQUAL(bad, 0);
    free(buf);
}

static void
test_encode_field_too_big(void)
{
    cn_record_t in = bare_record();
    size_t size, written = 777;
    char *big = calloc(1, (size_t)CN_RECORD_FIELD_MAX + 1);
    uint8_t *buf;

    CU_ASSERT_PTR_NOT_NULL_FATAL(big);
    in.body = big;
    in.body_len = CN_RECORD_FIELD_MAX + 1;
    size = cn__record_encoded_size(&in);
    buf = malloc(size);
    CU_ASSERT_PTR_NOT_NULL_FATAL(buf);
    CU_ASSERT_EQUAL(cn__record_encode(&in, buf, size, &written), CN_ETOOBIG);
    CU_ASSERT_EQUAL(written, 777);
    free(buf);
    free(big);
}

int
main(void)
{
    static const unit_test_t tests[] = {
        {"round trip, every field, binary body", test_round_trip_full},
        {"round trip, no content type, location or body", test_round_trip_bare},
        {"byte layout matches record.h", test_layout},
        {"encoded size equals written", test_encoded_size},
        {"every truncation is CN_ECORRUPT", test_truncation},
        {"every single-byte flip is rejected", test_single_byte_flips},
        {"unknown version with valid CRC is CN_EVERSION", test_unknown_version},
        {"bad magic with valid CRC is CN_ECORRUPT", test_bad_magic_with_valid_crc},
        {"version 2: stored headers", test_stored_headers},
        {"lengths beyond the buffer are CN_ECORRUPT", test_lengths_beyond_buffer},
        {"encode into a small buffer is -ENOSPC", test_encode_too_small},
        {"encode of an oversized field is CN_ETOOBIG", test_encode_field_too_big},
        {NULL, NULL},
    };

    return unit_run("record", tests);
}
