/*
 * reliability/replay_cache.c - a chained hash table with a FIFO of insertion for
 * eviction, under one mutex (a lookup's callback builds its answer from the record under
 * it: one copy, into the response, and nothing held after).
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "reliability/replay_cache.h"

#define NBUCKETS 4096 /* a power of two */

typedef struct entry {
    struct entry *chain;           /* same bucket */
    struct entry *newer;           /* FIFO: the next inserted */
    uint64_t expires_ms;
    size_t keylen, len;
    uint32_t hash;
    int chained;                   /* in its bucket (a replaced entry waits in the FIFO) */
    uint8_t data[];                /* key, then record */
} entry_t;

struct cn_replay_cache {
    pthread_mutex_t mu;
    size_t max_bytes, bytes, entries;
    entry_t *oldest, *newest;
    entry_t *bucket[NBUCKETS];
};

static uint32_t
hash_of(const char *key, size_t len)
{
    uint32_t h = 2166136261u; /* FNV-1a */

    for (size_t i = 0; i < len; i++)
        h = (h ^ (uint8_t)key[i]) * 16777619u;
    return h;
}

static size_t
cost(const entry_t *e)
{
    return sizeof(*e) + e->keylen + e->len;
}

cn_replay_cache_t *
cn__replay_cache_new(size_t max_bytes)
{
    cn_replay_cache_t *c = calloc(1, sizeof(*c));

    if (!c)
        return NULL;
    pthread_mutex_init(&c->mu, NULL);
    c->max_bytes = max_bytes;
    return c;
}

void
cn__replay_cache_free(cn_replay_cache_t *c)
{
    entry_t *e, *next;

    if (!c)
        return;
    for (e = c->oldest; e; e = next) {
        next = e->newer;
        free(e);
    }
    pthread_mutex_destroy(&c->mu);
    free(c);
}

/* Unlinks e from its bucket (mu held). */
static void
unchain(cn_replay_cache_t *c, entry_t *e)
{
    entry_t **pp = &c->bucket[e->hash & (NBUCKETS - 1)];

    while (*pp != e)
        pp = &(*pp)->chain;
    *pp = e->chain;
}

static entry_t *
find(cn_replay_cache_t *c, const char *key, size_t keylen, uint32_t h)
{
    for (entry_t *e = c->bucket[h & (NBUCKETS - 1)]; e; e = e->chain)
        if (e->hash == h && e->keylen == keylen && !memcmp(e->data, key, keylen))
            return e;
    return NULL;
}

void
cn__replay_cache_put(cn_replay_cache_t *c, const char *key, size_t keylen,
                     const uint8_t *record, size_t len, uint64_t expires_ms)
{
    uint32_t h = hash_of(key, keylen);
    entry_t *e, *old;

    if (sizeof(*e) + keylen + len > c->max_bytes / 8 ||
        !(e = malloc(sizeof(*e) + keylen + len)))
        return;
    e->chain = e->newer = NULL;
    e->expires_ms = expires_ms;
    e->keylen = keylen;
    e->len = len;
    e->hash = h;
    e->chained = 1;
    memcpy(e->data, key, keylen);
    memcpy(e->data + keylen, record, len);
    pthread_mutex_lock(&c->mu);
    if ((old = find(c, key, keylen, h))) {
        if (old->expires_ms >= expires_ms) {
            /* Already there: a record is final, the copy held is the same. */
            pthread_mutex_unlock(&c->mu);
            free(e);
            return;
        }
        /* The key was stored again after its record expired: the old copy leaves the
         * table now and the FIFO when its turn comes. */
        unchain(c, old);
        old->chained = 0;
        c->entries--;
    }
    while (c->oldest && c->bytes + cost(e) > c->max_bytes) {
        old = c->oldest;
        c->oldest = old->newer;
        if (!c->oldest)
            c->newest = NULL;
        if (old->chained) {
            unchain(c, old);
            c->entries--;
        }
        c->bytes -= cost(old);
        free(old);
    }
    e->chain = c->bucket[h & (NBUCKETS - 1)];
    c->bucket[h & (NBUCKETS - 1)] = e;
    if (c->newest)
        c->newest->newer = e;
    else
        c->oldest = e;
    c->newest = e;
    c->bytes += cost(e);
    c->entries++;
    pthread_mutex_unlock(&c->mu);
}

int
cn__replay_cache_with(cn_replay_cache_t *c, const char *key, size_t keylen, uint64_t now_ms,
                      void (*fn)(const uint8_t *record, size_t len, void *arg), void *arg)
{
    uint32_t h = hash_of(key, keylen);
    entry_t *e;
    int hit;

    pthread_mutex_lock(&c->mu);
    /* An expired entry is never given; it leaves with eviction or a newer copy. */
    if ((hit = (e = find(c, key, keylen, h)) && e->expires_ms > now_ms))
        fn(e->data + e->keylen, e->len, arg);
    pthread_mutex_unlock(&c->mu);
    return hit;
}

void
cn__replay_cache_stats(cn_replay_cache_t *c, size_t *entries, size_t *bytes)
{
    pthread_mutex_lock(&c->mu);
    *entries = c->entries;
    *bytes = c->bytes;
    pthread_mutex_unlock(&c->mu);
}
