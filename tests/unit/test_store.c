/*
 * tests/unit/test_store.c - the LMDB-backed response store: key shapes, put/get, reopen,
 * expiry on read, the expiry sweep and overwrites. Every test opens its own store in a
 * fresh subdirectory of the suite's temp dir.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cnerium/error.h"
#include "store/store.h"
#include "unit.h"

#include <lmdb.h>

#define MAP_SIZE ((size_t)64 << 20)

static char tmpdir[256];
static int store_seq;

/* Opens a store in a new, not yet existing, subdirectory; its path goes to dir. */
static cn_store_t *
open_fresh(char *dir, size_t cap)
{
    cn_store_t *s = NULL;

    snprintf(dir, cap, "%s/store-%d/data", tmpdir, store_seq++);
    CU_ASSERT_EQUAL_FATAL(cn__store_open(dir, MAP_SIZE, &s), 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    return s;
}

static cn_record_t
make_record(uint16_t status, uint64_t expires_ms, const char *body, size_t body_len)
{
    cn_record_t r;

    memset(&r, 0, sizeof(r));
    r.status = status;
    r.created_ms = 100;
    r.expires_ms = expires_ms;
    for (size_t i = 0; i < CN_SHA256_LEN; i++)
        r.fingerprint[i] = (uint8_t)(i * 7 + status);
    r.content_type = "application/json";
    r.content_type_len = 16;
    r.location = "/orders/1";
    r.location_len = 9;
    r.body = body;
    r.body_len = (uint32_t)body_len;
    return r;
}

static int
put_one(cn_store_t *s, const char *key, const cn_record_t *rec)
{
    cn_store_put_t item = {key, strlen(key), rec, NULL, 0, NULL, 0, NULL};

    return cn__store_put(s, &item, 1);
}

static size_t
count(cn_store_t *s)
{
    size_t n = 99999;

    CU_ASSERT_EQUAL(cn__store_count(s, &n), 0);
    return n;
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
}

/* Gets key at now_ms and checks it equals want. */
static void
expect_get(cn_store_t *s, const char *key, uint64_t now_ms, const cn_record_t *want)
{
    cn_record_t rec;
    void *buf = NULL;

    CU_ASSERT_EQUAL_FATAL(cn__store_get(s, key, strlen(key), now_ms, &rec, &buf), 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(buf);
    expect_same(&rec, want);
    free(buf);
}

/* Expects CN_ENOTFOUND with the out-params untouched. */
static void
expect_absent(cn_store_t *s, const char *key, uint64_t now_ms)
{
    cn_record_t rec, pristine;
    void *buf = (void *)&pristine;

    memset(&rec, 0x5A, sizeof(rec));
    memcpy(&pristine, &rec, sizeof(rec));
    CU_ASSERT_EQUAL(cn__store_get(s, key, strlen(key), now_ms, &rec, &buf), CN_ENOTFOUND);
    CU_ASSERT_PTR_EQUAL(buf, (void *)&pristine);
    CU_ASSERT_EQUAL(memcmp(&rec, &pristine, sizeof(rec)), 0);
}

static void
test_key_shapes(void)
{
    char out[CN_STORE_KEY_MAX + 1];
    size_t len = 0;
    static const char hex[] = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    CU_ASSERT_EQUAL_FATAL(
        cn__store_key(out, sizeof(out), "orders.create", NULL, "order-123", 9, &len), 0);
    CU_ASSERT_STRING_EQUAL(out, "cnerium:response:orders.create:order-123");
    CU_ASSERT_EQUAL(len, strlen("cnerium:response:orders.create:order-123"));

    CU_ASSERT_EQUAL_FATAL(
        cn__store_key(out, sizeof(out), "orders.create", hex, "order-123", 9, &len), 0);
    CU_ASSERT_STRING_EQUAL(out, "cnerium:response:orders.create#00112233445566778899aabbccddeeff"
                                "00112233445566778899aabbccddeeff:order-123");
    CU_ASSERT_EQUAL(len, strlen(out));

    /* keylen bytes of key are used, not strlen(key). */
    CU_ASSERT_EQUAL_FATAL(
        cn__store_key(out, sizeof(out), "op", NULL, "order-123-and-more", 9, &len), 0);
    CU_ASSERT_STRING_EQUAL(out, "cnerium:response:op:order-123");
}

static void
test_key_too_big(void)
{
    char out[CN_STORE_KEY_MAX + 1], op[CN_OPERATION_MAX + 1], key[256];
    size_t len = 4242, need;

    memset(op, 'o', CN_OPERATION_MAX);
    op[CN_OPERATION_MAX] = '\0';
    memset(key, 'k', 255);
    key[255] = '\0';

    /* The longest legal combination fits in CN_STORE_KEY_MAX. */
    CU_ASSERT_EQUAL_FATAL(cn__store_key(out, sizeof(out), op, NULL, key, 255, &len), 0);
    CU_ASSERT(len <= CN_STORE_KEY_MAX);
    need = len;

    /* Exactly enough room (NUL included) and one byte too few. */
    {
        char *tight = malloc(need + 1);
        CU_ASSERT_PTR_NOT_NULL_FATAL(tight);
        CU_ASSERT_EQUAL(cn__store_key(tight, need + 1, op, NULL, key, 255, &len), 0);
        CU_ASSERT_EQUAL(len, need);
        len = 4242;
        CU_ASSERT_EQUAL(cn__store_key(tight, need, op, NULL, key, 255, &len), CN_ETOOBIG);
        CU_ASSERT_EQUAL(len, 4242);
        free(tight);
    }
    CU_ASSERT_EQUAL(cn__store_key(out, 20, "orders.create", NULL, "order-123", 9, &len),
                    CN_ETOOBIG);
    CU_ASSERT_EQUAL(len, 4242);
}

static void
test_get_missing(void)
{
    char dir[512];
    cn_store_t *s = open_fresh(dir, sizeof(dir));

    expect_absent(s, "cnerium:response:op:nothing", 0);
    CU_ASSERT_EQUAL(count(s), 0);
    cn__store_close(s);
}

static void
test_put_get(void)
{
    char dir[512];
    cn_store_t *s = open_fresh(dir, sizeof(dir));
    static const char body[] = "{\"id\":\"o1\"}\0tail";
    cn_record_t rec = make_record(409, UINT64_MAX, body, sizeof(body));
    cn_record_t empty = make_record(204, UINT64_MAX, NULL, 0);

    empty.content_type = NULL;
    empty.content_type_len = 0;
    empty.location = NULL;
    empty.location_len = 0;
    CU_ASSERT_EQUAL_FATAL(put_one(s, "cnerium:response:op:a", &rec), 0);
    CU_ASSERT_EQUAL_FATAL(put_one(s, "cnerium:response:op:b", &empty), 0);
    expect_get(s, "cnerium:response:op:a", 1000, &rec);
    expect_get(s, "cnerium:response:op:b", 1000, &empty);
    /* Keys are exact: no prefix match. */
    expect_absent(s, "cnerium:response:op:", 1000);
    expect_absent(s, "cnerium:response:op:ab", 1000);
    CU_ASSERT_EQUAL(count(s), 2);
    cn__store_close(s);
}

static void
test_put_many_atomic(void)
{
    char dir[512];
    cn_store_t *s = open_fresh(dir, sizeof(dir));
    cn_record_t r1 = make_record(200, UINT64_MAX, "one", 3);
    cn_record_t r2 = make_record(201, UINT64_MAX, "two", 3);
    cn_store_put_t items[2] = {{"k:1", 3, &r1, NULL, 0, NULL, 0, NULL}, {"k:2", 3, &r2, NULL, 0, NULL, 0, NULL}};
    char *huge = malloc(2000);

    CU_ASSERT_EQUAL_FATAL(cn__store_put(s, items, 2), 0);
    expect_get(s, "k:1", 0, &r1);
    expect_get(s, "k:2", 0, &r2);

    /* A batch whose second key is beyond what the store accepts: nothing is written. */
    CU_ASSERT_PTR_NOT_NULL_FATAL(huge);
    memset(huge, 'h', 2000);
    items[0].key = "k:3";
    items[1].key = huge;
    items[1].keylen = 2000;
    CU_ASSERT(cn__store_put(s, items, 2) < 0);
    expect_absent(s, "k:3", 0);
    CU_ASSERT_EQUAL(count(s), 2);
    free(huge);
    cn__store_close(s);
}

static void
test_longest_key(void)
{
    char dir[512], key[CN_STORE_KEY_MAX + 2];
    cn_store_t *s = open_fresh(dir, sizeof(dir));
    cn_record_t rec = make_record(201, 1000, "long", 4);
    cn_store_put_t item = {key, CN_STORE_KEY_MAX, &rec, NULL, 0, NULL, 0, NULL};
    size_t deleted = 0;

    /* Any key cn__store_key can build (up to CN_STORE_KEY_MAX bytes) can be stored,
     * read back and swept. */
    memset(key, 'L', sizeof(key));
    key[CN_STORE_KEY_MAX + 1] = '\0';
    CU_ASSERT_EQUAL(cn__store_put(s, &item, 1), 0);
    {
        cn_record_t got;
        void *buf = NULL;
        CU_ASSERT_EQUAL(cn__store_get(s, key, CN_STORE_KEY_MAX, 0, &got, &buf), 0);
        free(buf);
    }
    CU_ASSERT_EQUAL(count(s), 1);
    CU_ASSERT_EQUAL(cn__store_sweep(s, 1000, 10, &deleted), 0);
    CU_ASSERT_EQUAL(deleted, 1);
    CU_ASSERT_EQUAL(count(s), 0);

    /* One byte more is refused and writes nothing. */
    item.keylen = CN_STORE_KEY_MAX + 1;
    CU_ASSERT(cn__store_put(s, &item, 1) < 0);
    CU_ASSERT_EQUAL(count(s), 0);
    cn__store_close(s);
}

static void
test_reopen(void)
{
    char dir[512];
    cn_store_t *s = open_fresh(dir, sizeof(dir));
    static const char body[] = "durable";
    cn_record_t rec = make_record(201, 1u << 30, body, 7);

    CU_ASSERT_EQUAL_FATAL(put_one(s, "cnerium:response:op:keep", &rec), 0);
    cn__store_close(s);
    s = NULL;
    CU_ASSERT_EQUAL_FATAL(cn__store_open(dir, MAP_SIZE, &s), 0);
    expect_get(s, "cnerium:response:op:keep", 0, &rec);
    CU_ASSERT_EQUAL(count(s), 1);
    cn__store_close(s);
}

static void
test_expiry_on_read(void)
{
    char dir[512];
    cn_store_t *s = open_fresh(dir, sizeof(dir));
    cn_record_t rec = make_record(201, 1000, "x", 1);

    CU_ASSERT_EQUAL_FATAL(put_one(s, "e:1", &rec), 0);
    expect_get(s, "e:1", 0, &rec);
    expect_get(s, "e:1", 999, &rec);
    expect_absent(s, "e:1", 1000);
    expect_absent(s, "e:1", 5000);
    /* Expired on read is not deleted on read: still counted until swept. */
    CU_ASSERT_EQUAL(count(s), 1);
    cn__store_close(s);
}

static void
test_sweep_expired_only(void)
{
    char dir[512];
    cn_store_t *s = open_fresh(dir, sizeof(dir));
    cn_record_t a = make_record(201, 1000, "a", 1);
    cn_record_t b = make_record(201, 2000, "b", 1);
    cn_record_t c = make_record(201, 1500, "c", 1);
    size_t deleted = 999;

    CU_ASSERT_EQUAL_FATAL(put_one(s, "s:a", &a), 0);
    CU_ASSERT_EQUAL_FATAL(put_one(s, "s:b", &b), 0);
    CU_ASSERT_EQUAL_FATAL(put_one(s, "s:c", &c), 0);
    CU_ASSERT_EQUAL(count(s), 3);

    CU_ASSERT_EQUAL(cn__store_sweep(s, 999, 100, &deleted), 0);
    CU_ASSERT_EQUAL(deleted, 0);
    CU_ASSERT_EQUAL(count(s), 3);

    deleted = 999;
    CU_ASSERT_EQUAL(cn__store_sweep(s, 1500, 100, &deleted), 0);
    CU_ASSERT_EQUAL(deleted, 2); /* a (1000) and c (1500 <= now) */
    CU_ASSERT_EQUAL(count(s), 1);
    expect_get(s, "s:b", 1600, &b);
    expect_absent(s, "s:a", 0);
    expect_absent(s, "s:c", 0);

    deleted = 999;
    CU_ASSERT_EQUAL(cn__store_sweep(s, 1500, 100, &deleted), 0);
    CU_ASSERT_EQUAL(deleted, 0);
    cn__store_close(s);
}

static void
test_sweep_respects_max(void)
{
    char dir[512];
    cn_store_t *s = open_fresh(dir, sizeof(dir));
    cn_record_t keep = make_record(200, 1u << 20, "k", 1);
    size_t deleted;
    static const size_t want[] = {10, 10, 5, 0}, left[] = {16, 6, 1, 1};

    for (int i = 0; i < 25; i++) {
        char key[32];
        cn_record_t r = make_record(200, 1000 + (uint64_t)i, "e", 1);
        snprintf(key, sizeof(key), "m:%02d", i);
        CU_ASSERT_EQUAL_FATAL(put_one(s, key, &r), 0);
    }
    CU_ASSERT_EQUAL_FATAL(put_one(s, "m:keep", &keep), 0);
    CU_ASSERT_EQUAL(count(s), 26);
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        deleted = 999;
        CU_ASSERT_EQUAL(cn__store_sweep(s, 1500, 10, &deleted), 0);
        CU_ASSERT_EQUAL(deleted, want[i]);
        CU_ASSERT_EQUAL(count(s), left[i]);
    }
    CU_ASSERT_EQUAL(count(s), 1);
    expect_get(s, "m:keep", 1500, &keep);
    cn__store_close(s);
}

static void
test_overwrite(void)
{
    char dir[512];
    cn_store_t *s = open_fresh(dir, sizeof(dir));
    cn_record_t old_rec = make_record(201, 1000, "old", 3);
    cn_record_t new_rec = make_record(202, 3000, "newer", 5);
    size_t deleted;

    CU_ASSERT_EQUAL_FATAL(put_one(s, "o:k", &old_rec), 0);
    CU_ASSERT_EQUAL_FATAL(put_one(s, "o:k", &new_rec), 0);
    CU_ASSERT_EQUAL(count(s), 1);
    expect_get(s, "o:k", 0, &new_rec);
    /* Readable past the old expiry: the new record's expiry governs. */
    expect_get(s, "o:k", 2000, &new_rec);

    /* After the old expiry, before the new one: the sweep deletes nothing. */
    deleted = 999;
    CU_ASSERT_EQUAL(cn__store_sweep(s, 2000, 100, &deleted), 0);
    CU_ASSERT_EQUAL(deleted, 0);
    CU_ASSERT_EQUAL(count(s), 1);
    expect_get(s, "o:k", 2000, &new_rec);

    /* After the new expiry: exactly one record goes, once. */
    deleted = 999;
    CU_ASSERT_EQUAL(cn__store_sweep(s, 3000, 100, &deleted), 0);
    CU_ASSERT_EQUAL(deleted, 1);
    CU_ASSERT_EQUAL(count(s), 0);
    deleted = 999;
    CU_ASSERT_EQUAL(cn__store_sweep(s, UINT64_MAX, 100, &deleted), 0);
    CU_ASSERT_EQUAL(deleted, 0);
    cn__store_close(s);
}

static void
test_overwrite_shorter_expiry(void)
{
    char dir[512];
    cn_store_t *s = open_fresh(dir, sizeof(dir));
    cn_record_t long_rec = make_record(201, 5000, "long", 4);
    cn_record_t short_rec = make_record(201, 1000, "short", 5);
    size_t deleted = 999;

    /* The other direction: the later, shorter expiry must be the one the sweep sees. */
    CU_ASSERT_EQUAL_FATAL(put_one(s, "o:s", &long_rec), 0);
    CU_ASSERT_EQUAL_FATAL(put_one(s, "o:s", &short_rec), 0);
    CU_ASSERT_EQUAL(cn__store_sweep(s, 2000, 100, &deleted), 0);
    CU_ASSERT_EQUAL(deleted, 1);
    CU_ASSERT_EQUAL(count(s), 0);
    deleted = 999;
    CU_ASSERT_EQUAL(cn__store_sweep(s, 6000, 100, &deleted), 0);
    CU_ASSERT_EQUAL(deleted, 0);
    cn__store_close(s);
}

/* ---- cn__store_apply: several records per call, written sorted by key ---- */

/* The encoded bytes of a record whose body is its expiry, malloc'd. */
static uint8_t *
encoded(uint64_t expires_ms, size_t *len)
{
    char body[32];
    cn_record_t r;
    uint8_t *buf;

    snprintf(body, sizeof(body), "expires %llu", (unsigned long long)expires_ms);
    r = make_record(201, expires_ms, body, strlen(body));
    *len = cn__record_encoded_size(&r);
    buf = malloc(*len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(buf);
    CU_ASSERT_EQUAL_FATAL(cn__record_encode(&r, buf, *len, len), 0);
    return buf;
}

static cn_store_raw_put_t
raw_item(const char *key, const uint8_t *bytes, size_t len)
{
    cn_store_raw_put_t it;

    memset(&it, 0, sizeof(it));
    it.key = key;
    it.keylen = strlen(key);
    it.bytes = bytes;
    it.len = len;
    it.status = 999;
    return it;
}

/* Sweeps at now and expects `want` index entries to go. */
static void
expect_sweep(cn_store_t *s, uint64_t now, size_t want)
{
    size_t deleted = 999;

    CU_ASSERT_EQUAL(cn__store_sweep(s, now, 1000, &deleted), 0);
    CU_ASSERT_EQUAL(deleted, want);
}

/* Records for one key in one call, in key order or not, with a record of the key already
 * stored: the last one is the key's record, and the expiry index holds its entry only
 * (an entry left by the stored record or an earlier one of the call would be swept as a
 * deletion of its own). A record that does not decode replaces nothing. */
static void
test_apply_later_record_wins(void)
{
    char dir[512];
    cn_store_t *s = open_fresh(dir, sizeof(dir));
    cn_record_t stored = make_record(201, 5000, "stored", 6);
    size_t lz1, lx1, la1, lx2, lz2;
    uint8_t *z1 = encoded(3000, &lz1), *x1 = encoded(1000, &lx1), *a1 = encoded(2000, &la1),
            *x2 = encoded(4000, &lx2), *z2 = encoded(1500, &lz2), junk[80];
    cn_store_raw_put_t items[7];
    cn_store_meta_t meta;
    cn_record_t want;
    void *buf;

    memset(junk, 0xA5, sizeof(junk));
    items[0] = raw_item("o:z", z1, lz1);
    items[1] = raw_item("o:x", x1, lx1);
    items[2] = raw_item("o:a", a1, la1);
    items[3] = raw_item("o:x", x2, lx2);
    items[4] = raw_item("o:a", junk, sizeof(junk));
    items[5] = raw_item("o:z", z2, lz2);
    items[6] = raw_item("o:x", x2, lx2); /* the same record again */
    CU_ASSERT_EQUAL_FATAL(put_one(s, "o:x", &stored), 0);
    memset(&meta, 0, sizeof(meta));
    CU_ASSERT_EQUAL_FATAL(cn__store_apply(s, items, 7, &meta), 0);
    for (size_t i = 0; i < 7; i++)
        CU_ASSERT_EQUAL(items[i].status, i == 4 ? CN_ECORRUPT : 0);
    CU_ASSERT_EQUAL(count(s), 3);
    CU_ASSERT_EQUAL_FATAL(cn__record_decode(x2, lx2, &want), 0);
    expect_get(s, "o:x", 0, &want);
    CU_ASSERT_EQUAL_FATAL(cn__record_decode(z2, lz2, &want), 0);
    expect_get(s, "o:z", 0, &want);
    CU_ASSERT_EQUAL_FATAL(cn__record_decode(a1, la1, &want), 0);
    expect_get(s, "o:a", 0, &want);

    expect_sweep(s, 1000, 0); /* no entry of x's first record */
    expect_sweep(s, 1500, 1); /* z's last record */
    expect_absent(s, "o:z", 0);
    expect_sweep(s, 2000, 1); /* a */
    expect_sweep(s, 3000, 0); /* no entry of z's first record */
    expect_sweep(s, 4000, 1); /* x */
    expect_sweep(s, 5000, 0); /* no entry of the record stored before */
    CU_ASSERT_EQUAL(count(s), 0);
    CU_ASSERT_EQUAL(cn__store_get(s, "o:x", 3, 0, &want, &buf), CN_ENOTFOUND);
    cn__store_close(s);
    free(z1);
    free(x1);
    free(a1);
    free(x2);
    free(z2);
}

#define EQ_ITEMS 240
#define EQ_KEYS 37

/* Everything observable about the store: each key's record (or its absence), then what
 * sweeping at increasing times deletes. Sweeps, so it ends the store's useful life. */
static void
expect_same_store(cn_store_t *a, cn_store_t *b, char keys[][16])
{
    static const uint64_t times[] = {0, 1100, 1400, 2000, 2600, 3300, 4100, 5000, UINT64_MAX};
    size_t da, db;

    CU_ASSERT_EQUAL(count(a), count(b));
    for (int k = 0; k < EQ_KEYS; k++) {
        cn_record_t ra, rb;
        void *ba = NULL, *bb = NULL;
        int rca = cn__store_get(a, keys[k], strlen(keys[k]), 0, &ra, &ba);
        int rcb = cn__store_get(b, keys[k], strlen(keys[k]), 0, &rb, &bb);

        CU_ASSERT_EQUAL(rca, rcb);
        if (rca == 0 && rcb == 0)
            expect_same(&ra, &rb);
        free(ba);
        free(bb);
    }
    for (size_t i = 0; i < sizeof(times) / sizeof(times[0]); i++) {
        da = 1001;
        db = 1002;
        CU_ASSERT_EQUAL(cn__store_sweep(a, times[i], 1000, &da), 0);
        CU_ASSERT_EQUAL(cn__store_sweep(b, times[i], 1000, &db), 0);
        CU_ASSERT_EQUAL(da, db);
        CU_ASSERT_EQUAL(count(a), count(b));
    }
}

/* One call with many records, keys repeated and out of order, some that do not decode,
 * leaves the store exactly as applying them one call each, in their order, does; and
 * applying the same records again (a replay after a crash) still does. */
static void
test_apply_batch_equals_one_by_one(void)
{
    char dir[512], keys[EQ_KEYS][16];
    cn_store_t *a = open_fresh(dir, sizeof(dir)), *b = open_fresh(dir, sizeof(dir));
    cn_store_raw_put_t items[EQ_ITEMS];
    uint8_t *bytes[EQ_ITEMS], junk[90];
    cn_store_meta_t ma, mb;
    uint32_t x = 12345;

    memset(junk, 0x3C, sizeof(junk));
    for (int k = 0; k < EQ_KEYS; k++)
        snprintf(keys[k], sizeof(keys[k]), "o:%c%d", 'a' + (k * 7) % 26, k % 5);
    for (size_t i = 0; i < EQ_ITEMS; i++) {
        size_t len;
        x = x * 1103515245u + 12345u;
        bytes[i] = encoded(1000 + (x >> 8) % 4000, &len);
        items[i] = raw_item(keys[(x >> 4) % EQ_KEYS], bytes[i], len);
        if (i % 17 == 5) {
            items[i].bytes = junk; /* does not decode: skipped */
            items[i].len = sizeof(junk);
        }
    }
    memset(&ma, 0, sizeof(ma));
    memset(&mb, 0, sizeof(mb));
    for (int round = 0; round < 2; round++) {
        CU_ASSERT_EQUAL_FATAL(cn__store_apply(a, items, EQ_ITEMS, &ma), 0);
        for (size_t i = 0; i < EQ_ITEMS; i++) {
            cn_store_raw_put_t one = items[i];
            CU_ASSERT_EQUAL_FATAL(cn__store_apply(b, &one, 1, &mb), 0);
            CU_ASSERT_EQUAL(items[i].status, one.status);
        }
    }
    expect_same_store(a, b, keys);
    for (size_t i = 0; i < EQ_ITEMS; i++)
        free(bytes[i]);
    cn__store_close(a);
    cn__store_close(b);
}

static void
test_close_null(void)
{
    char dir[512], file[600];
    cn_store_t *sentinel = (cn_store_t *)&store_seq, *s = sentinel;
    pid_t pid;
    int status = 0;
    FILE *f;

    /* A failed open leaves the out-parameter alone: the caller's cleanup path then
     * closes whatever it held, NULL included. */
    snprintf(dir, sizeof(dir), "%s/store-%d", tmpdir, store_seq++);
    CU_ASSERT_EQUAL_FATAL(mkdir(dir, 0700), 0);
    snprintf(file, sizeof(file), "%s/not-a-dir", dir);
    f = fopen(file, "w");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    fclose(f);
    CU_ASSERT(cn__store_open(file, MAP_SIZE, &s) < 0);
    CU_ASSERT_PTR_EQUAL(s, sentinel);

    /* In a child, so that a crash fails this test instead of the suite. */
    pid = fork();
    CU_ASSERT_FATAL(pid >= 0);
    if (pid == 0) {
        cn__store_close(NULL);
        _exit(0);
    }
    CU_ASSERT_EQUAL_FATAL(waitpid(pid, &status, 0), pid);
    CU_ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0);

    /* Closing releases the environment: the same directory opens again. */
    s = open_fresh(dir, sizeof(dir));
    cn__store_close(s);
    s = NULL;
    CU_ASSERT_EQUAL(cn__store_open(dir, MAP_SIZE, &s), 0);
    CU_ASSERT_PTR_NOT_NULL(s);
    cn__store_close(s);
}

/* ---- administration ---- */

typedef struct listed {
    char keys[8][64];
    int n;
} listed_t;

static int
collect(const char *key, size_t keylen, const uint8_t *rec, size_t len, void *arg)
{
    listed_t *l = arg;
    cn_record_t r;

    CU_ASSERT_EQUAL(cn__record_decode(rec, len, &r), 0);
    if (l->n < 8 && keylen < 64) {
        memcpy(l->keys[l->n], key, keylen);
        l->keys[l->n][keylen] = '\0';
    }
    l->n++;
    return 0;
}

static void
count_problem(const char *what, const void *key, size_t keylen, void *arg)
{
    (void)what, (void)key, (void)keylen;
    ++*(int *)arg;
}

static void
test_admin(void)
{
    char dir[256], copy[300];
    cn_store_t *s = open_fresh(dir, sizeof(dir)), *c = NULL;
    cn_record_t rec = make_record(201, UINT64_MAX - 1, "{}", 2), got;
    cn_store_stats_t st;
    listed_t l = {0};
    uint64_t checked = 0, problems = 9;
    void *buf = NULL;
    int found = 0;

    CU_ASSERT_EQUAL(put_one(s, "k:a", &rec), 0);
    CU_ASSERT_EQUAL(put_one(s, "k:b", &rec), 0);
    CU_ASSERT_EQUAL(put_one(s, "k:c", &rec), 0);
    /* list: in key order, from a key on, bounded. */
    CU_ASSERT_EQUAL(cn__store_list(s, "", 0, 10, collect, &l), 0);
    CU_ASSERT_EQUAL(l.n, 3);
    CU_ASSERT_STRING_EQUAL(l.keys[0], "k:a");
    CU_ASSERT_STRING_EQUAL(l.keys[2], "k:c");
    memset(&l, 0, sizeof(l));
    CU_ASSERT_EQUAL(cn__store_list(s, "k:b", 3, 1, collect, &l), 0);
    CU_ASSERT_EQUAL(l.n, 1);
    CU_ASSERT_STRING_EQUAL(l.keys[0], "k:b");
    /* delete: the key and its expiry entry go; a second delete finds nothing. */
    CU_ASSERT_EQUAL(cn__store_delete(s, "k:b", 3), 0);
    CU_ASSERT_EQUAL(cn__store_get(s, "k:b", 3, 0, &got, &buf), CN_ENOTFOUND);
    CU_ASSERT_EQUAL(cn__store_delete(s, "k:b", 3), CN_ENOTFOUND);
    CU_ASSERT_EQUAL(cn__store_stats(s, &st), 0);
    CU_ASSERT_EQUAL(st.responses, 2);
    CU_ASSERT(st.used_bytes > 0 && st.used_bytes <= st.map_size);
    CU_ASSERT_EQUAL(cn__store_verify(s, &checked, &problems, count_problem, &found), 0);
    CU_ASSERT_EQUAL(problems, 0); /* the expiry entry of k:b went with it */
    CU_ASSERT_EQUAL(checked, 2);
    /* backup: a copy that opens and holds the same. */
    snprintf(copy, sizeof(copy), "%s-copy", dir);
    CU_ASSERT_EQUAL(cn__store_backup(s, copy), 0);
    CU_ASSERT_EQUAL_FATAL(cn__store_open(copy, MAP_SIZE, &c), 0);
    CU_ASSERT_EQUAL(cn__store_get(c, "k:c", 3, 0, &got, &buf), 0);
    free(buf);
    buf = NULL;
    cn__store_close(c);
    cn__store_close(s);

    /* verify finds what does not decode: bytes written past the store's back. */
    {
        MDB_env *env;
        MDB_txn *txn;
        MDB_dbi dbi, ev;
        MDB_val k = {3, (void *)"k:x"}, v = {5, (void *)"junk!"};
        uint8_t seq[8] = {0, 0, 0, 0, 0, 0, 0, 9};
        MDB_val ek = {8, seq}, evv = {3, (void *)"bad"};
        CU_ASSERT_EQUAL_FATAL(mdb_env_create(&env), 0);
        mdb_env_set_maxdbs(env, 8);
        mdb_env_set_mapsize(env, MAP_SIZE);
        CU_ASSERT_EQUAL_FATAL(mdb_env_open(env, dir, MDB_NOTLS, 0644), 0);
        CU_ASSERT_EQUAL_FATAL(mdb_txn_begin(env, NULL, 0, &txn), 0);
        CU_ASSERT_EQUAL(mdb_dbi_open(txn, "responses", 0, &dbi), 0);
        CU_ASSERT_EQUAL(mdb_dbi_open(txn, "events", 0, &ev), 0);
        CU_ASSERT_EQUAL(mdb_put(txn, dbi, &k, &v, 0), 0);
        CU_ASSERT_EQUAL(mdb_put(txn, ev, &ek, &evv, 0), 0);
        CU_ASSERT_EQUAL_FATAL(mdb_txn_commit(txn), 0);
        mdb_env_close(env);
    }
    CU_ASSERT_EQUAL_FATAL(cn__store_open(dir, MAP_SIZE, &s), 0);
    found = 0;
    CU_ASSERT_EQUAL(cn__store_verify(s, &checked, &problems, count_problem, &found), 0);
    CU_ASSERT_EQUAL(problems, 2);
    CU_ASSERT_EQUAL(found, 2);
    cn__store_close(s);
}

int
main(void)
{
    static const unit_test_t tests[] = {
        {"admin: list, delete, stats, backup, verify", test_admin},
        {"store key shapes", test_key_shapes},
        {"store key too big", test_key_too_big},
        {"get on a missing key", test_get_missing},
        {"put then get returns identical fields", test_put_get},
        {"a batch is written whole or not at all", test_put_many_atomic},
        {"the longest store key can be stored", test_longest_key},
        {"records survive close and reopen", test_reopen},
        {"expired on read at expires_ms", test_expiry_on_read},
        {"sweep deletes expired records only", test_sweep_expired_only},
        {"sweep respects max", test_sweep_respects_max},
        {"overwrite replaces record and expiry", test_overwrite},
        {"overwrite with a shorter expiry", test_overwrite_shorter_expiry},
        {"apply: the later record for a key wins, one expiry entry", test_apply_later_record_wins},
        {"apply: one call equals one call per record, also replayed",
         test_apply_batch_equals_one_by_one},
        {"failed open and close(NULL)", test_close_null},
        {NULL, NULL},
    };
    int rc;

    if (unit_tempdir("store", tmpdir, sizeof(tmpdir))) {
        perror("mkdtemp");
        return 1;
    }
    rc = unit_run("store", tests);
    if (unit_rmtree(tmpdir))
        fprintf(stderr, "warning: could not remove %s\n", tmpdir);
    return rc;
}
