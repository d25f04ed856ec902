/*
 * reliability/claims.c - the in-flight table of one process (see claims.h).
 *
 * A chained hash table under one mutex. An entry lives while its owner runs or while
 * waiters still reference it; a released entry stays visible to its waiters (released =
 * 1) but is unlinked from the table at once, so a new request can claim the key
 * immediately.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "reliability/claims.h"
#include "support/log.h"

#define NBUCKETS 1024

typedef struct entry {
    struct entry *next;
    pthread_cond_t cond;
    int released;
    int refs; /* owner + waiters */
    uint8_t fp[CN_SHA256_LEN];
    size_t keylen;
    char key[];
} entry_t;

struct cn_claims {
    pthread_mutex_t mu;
    size_t held;
    entry_t *buckets[NBUCKETS];
};

static size_t
hash(const char *key, size_t len)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */

    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)key[i]) * 1099511628211ull;
    return (size_t)(h % NBUCKETS);
}

int
cn__claims_new(cn_claims_t **out)
{
    cn_claims_t *c = calloc(1, sizeof(*c));

    if (!c)
        return -ENOMEM;
    pthread_mutex_init(&c->mu, NULL);
    *out = c;
    return 0;
}

void
cn__claims_free(cn_claims_t *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < NBUCKETS; i++) {
        entry_t *e = c->buckets[i], *next;
        for (; e; e = next) {
            next = e->next;
            pthread_cond_destroy(&e->cond);
            free(e);
        }
    }
    pthread_mutex_destroy(&c->mu);
    free(c);
}

static entry_t **
find_locked(cn_claims_t *c, const char *key, size_t keylen)
{
    entry_t **pp = &c->buckets[hash(key, keylen)];

    for (; *pp; pp = &(*pp)->next) {
        if ((*pp)->keylen == keylen && !memcmp((*pp)->key, key, keylen))
            return pp;
    }
    return pp;
}

static void
unref_locked(entry_t *e)
{
    if (--e->refs == 0) {
        pthread_cond_destroy(&e->cond);
        free(e);
    }
}

cn_claim_result_t
cn__claims_acquire(cn_claims_t *c, const char *key, size_t keylen,
                   const uint8_t fp[CN_SHA256_LEN], uint32_t wait_ms)
{
    entry_t **pp, *e;
    struct timespec deadline;
    cn_claim_result_t res;

    pthread_mutex_lock(&c->mu);
    pp = find_locked(c, key, keylen);
    if (!*pp) {
        e = malloc(sizeof(*e) + keylen);
        if (!e) {
            pthread_mutex_unlock(&c->mu);
            return CN_CLAIM_NOMEM;
        }
        pthread_condattr_t attr;
        pthread_condattr_init(&attr);
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
        pthread_cond_init(&e->cond, &attr);
        pthread_condattr_destroy(&attr);
        e->next = NULL;
        e->released = 0;
        e->refs = 1;
        memcpy(e->fp, fp, CN_SHA256_LEN);
        e->keylen = keylen;
        memcpy(e->key, key, keylen);
        *pp = e;
        c->held++;
        pthread_mutex_unlock(&c->mu);
        return CN_CLAIM_OWNED;
    }
    e = *pp;
    if (memcmp(e->fp, fp, CN_SHA256_LEN)) {
        pthread_mutex_unlock(&c->mu);
        return CN_CLAIM_MISMATCH;
    }
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += wait_ms / 1000;
    deadline.tv_nsec += (long)(wait_ms % 1000) * 1000000L;
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000L;
    }
    e->refs++;
    res = CN_CLAIM_RELEASED;
    while (!e->released) {
        if (pthread_cond_timedwait(&e->cond, &c->mu, &deadline) == ETIMEDOUT && !e->released) {
            res = CN_CLAIM_TIMEOUT;
            break;
        }
    }
    unref_locked(e);
    pthread_mutex_unlock(&c->mu);
    return res;
}

void
cn__claims_release(cn_claims_t *c, const char *key, size_t keylen)
{
    entry_t **pp, *e;

    pthread_mutex_lock(&c->mu);
    pp = find_locked(c, key, keylen);
    CN_ASSERT(*pp != NULL);
    e = *pp;
    *pp = e->next;
    e->next = NULL;
    e->released = 1;
    c->held--;
    pthread_cond_broadcast(&e->cond);
    unref_locked(e);
    pthread_mutex_unlock(&c->mu);
}

size_t
cn__claims_held(cn_claims_t *c)
{
    size_t n;

    pthread_mutex_lock(&c->mu);
    n = c->held;
    pthread_mutex_unlock(&c->mu);
    return n;
}
