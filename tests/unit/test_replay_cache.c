/*
 * tests/unit/test_replay_cache.c - the replay cache: a copy comes back byte for byte
 * until it expires and never after; a key stored again after expiry gets its new copy;
 * the byte bound holds, the oldest going first; a record over an eighth of the bound is
 * not kept; threads putting and getting at once (run under TSan in CI).
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "reliability/replay_cache.h"
#include "unit.h"

typedef struct copy {
    uint8_t *bytes;
    size_t len;
} copy_t;

static void
take_copy(const uint8_t *record, size_t len, void *arg)
{
    copy_t *c = arg;

    if ((c->bytes = malloc(len ? len : 1)))
        memcpy(c->bytes, record, len);
    c->len = len;
}

/* The record under key, as a malloc'd copy (and *len), or NULL: what a caller's callback
 * sees. */
static uint8_t *
cache_get(cn_replay_cache_t *c, const char *key, size_t keylen, uint64_t now_ms, size_t *len)
{
    copy_t cp = {NULL, 0};

    if (!cn__replay_cache_with(c, key, keylen, now_ms, take_copy, &cp))
        return NULL;
    *len = cp.len;
    return cp.bytes;
}

static void
test_put_get_expiry(void)
{
    cn_replay_cache_t *c = cn__replay_cache_new(1 << 20);
    uint8_t rec[100], *got;
    size_t len = 0, n, bytes;

    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    for (size_t i = 0; i < sizeof(rec); i++)
        rec[i] = (uint8_t)i;
    CU_ASSERT_PTR_NULL(cache_get(c, "k", 1, 0, &len));
    cn__replay_cache_put(c, "k", 1, rec, sizeof(rec), 1000);
    got = cache_get(c, "k", 1, 999, &len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(got);
    CU_ASSERT_EQUAL(len, sizeof(rec));
    CU_ASSERT_EQUAL(memcmp(got, rec, len), 0);
    free(got);
    /* Expired: never returned. */
    CU_ASSERT_PTR_NULL(cache_get(c, "k", 1, 1000, &len));
    /* A key that is a prefix of another is another key. */
    CU_ASSERT_PTR_NULL(cache_get(c, "kk", 2, 0, &len));
    /* The same key stored again after expiry: the new copy wins. */
    rec[0] = 0xAA;
    cn__replay_cache_put(c, "k", 1, rec, sizeof(rec), 5000);
    got = cache_get(c, "k", 1, 2000, &len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(got);
    CU_ASSERT_EQUAL(got[0], 0xAA);
    free(got);
    /* A put of what is held changes nothing. */
    cn__replay_cache_put(c, "k", 1, rec, sizeof(rec), 5000);
    cn__replay_cache_stats(c, &n, &bytes);
    CU_ASSERT_EQUAL(n, 1);
    cn__replay_cache_free(c);
}

static void
test_bounded(void)
{
    enum { MAX = 64 * 1024 };
    size_t max = MAX, n = 0, bytes = 0, len;
    cn_replay_cache_t *c = cn__replay_cache_new(max);
    uint8_t rec[1000] = {0}, big[MAX / 8];
    char key[32];
    uint8_t *got;

    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    for (int i = 0; i < 1000; i++) {
        snprintf(key, sizeof(key), "key-%04d", i);
        cn__replay_cache_put(c, key, strlen(key), rec, sizeof(rec), UINT64_MAX);
        cn__replay_cache_stats(c, &n, &bytes);
        CU_ASSERT(bytes <= max);
    }
    CU_ASSERT(n > 10 && n < 1000);
    /* The newest are held, the oldest gone. */
    got = cache_get(c, "key-0999", 8, 0, &len);
    CU_ASSERT_PTR_NOT_NULL(got);
    free(got);
    CU_ASSERT_PTR_NULL(cache_get(c, "key-0000", 8, 0, &len));
    /* Too large to keep: not kept, nothing evicted for it. */
    memset(big, 1, sizeof(big));
    cn__replay_cache_put(c, "big", 3, big, sizeof(big), UINT64_MAX);
    CU_ASSERT_PTR_NULL(cache_get(c, "big", 3, 0, &len));
    cn__replay_cache_stats(c, &len, &bytes);
    CU_ASSERT_EQUAL(len, n);
    cn__replay_cache_free(c);
}

static cn_replay_cache_t *shared;

static void *
hammer(void *arg)
{
    unsigned id = (unsigned)(uintptr_t)arg;
    uint8_t rec[64];
    char key[32];
    size_t len;

    for (unsigned i = 0; i < 20000; i++) {
        unsigned k = (i * 7 + id) % 500;
        snprintf(key, sizeof(key), "k%u", k);
        memset(rec, (int)(k & 0xFF), sizeof(rec));
        if (i % 3 == 0) {
            cn__replay_cache_put(shared, key, strlen(key), rec, sizeof(rec), 1000 + k);
        } else {
            uint8_t *got = cache_get(shared, key, strlen(key), k, &len);
            if (got) {
                /* A copy is whole: every byte is the key's. */
                if (len != sizeof(rec) || memcmp(got, rec, len))
                    CU_FAIL("a torn or foreign copy");
                free(got);
            }
        }
    }
    return NULL;
}

static void
test_threads(void)
{
    pthread_t t[4];

    shared = cn__replay_cache_new(16 * 1024);
    CU_ASSERT_PTR_NOT_NULL_FATAL(shared);
    for (unsigned i = 0; i < 4; i++)
        CU_ASSERT_EQUAL_FATAL(pthread_create(&t[i], NULL, hammer, (void *)(uintptr_t)i), 0);
    for (unsigned i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    cn__replay_cache_free(shared);
}

int
main(void)
{
    static const unit_test_t tests[] = {
        {"put, get, expiry, stored again", test_put_get_expiry},
        {"bounded in bytes, oldest first", test_bounded},
        {"threads at once", test_threads},
        {NULL, NULL},
    };
    return unit_run("replay_cache", tests);
}
