/*
 * tests/unit/test_claims.c - the in-flight table: ownership, fingerprint mismatch,
 * bounded waits, wake-up of waiters on release, and mutual exclusion under contention.
 *
 * CUnit is not thread-safe: worker threads only record results in plain or atomic
 * variables; every assertion runs on the main thread after the workers are joined.
 * Every wait is bounded (deadlines on the monotonic clock, timed joins).
 */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "reliability/claims.h"
#include "unit.h"

#define NWAITERS 8
#define STRESS_THREADS 8
#define STRESS_ITERS 2000
#define STRESS_KEYS 16
#define LONG_WAIT_MS 5000
#define JOIN_BOUND_MS 30000

static void
fill_fp(uint8_t fp[CN_SHA256_LEN], uint8_t v)
{
    memset(fp, v, CN_SHA256_LEN);
}

static cn_claims_t *
new_claims(void)
{
    cn_claims_t *c = NULL;

    CU_ASSERT_EQUAL_FATAL(cn__claims_new(&c), 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    return c;
}

/* Joins t within JOIN_BOUND_MS. A thread that does not finish means the claims table
 * deadlocked; the process cannot continue safely with it running, so it exits. */
static void
join_bounded(pthread_t t)
{
    struct timespec deadline;

    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += JOIN_BOUND_MS / 1000;
    if (pthread_timedjoin_np(t, NULL, &deadline) != 0) {
        fprintf(stderr, "\nFATAL: a thread did not finish within %d ms (deadlock?)\n",
                JOIN_BOUND_MS);
        _exit(1);
    }
}

/* The scheduler state letter of thread tid ('R', 'S', ...), or 0 when unreadable. */
static char
thread_state(pid_t tid)
{
    char path[64], buf[512];
    FILE *f;
    size_t n;
    char *close_paren;

    snprintf(path, sizeof(path), "/proc/self/task/%d/stat", (int)tid);
    if (!(f = fopen(path, "r")))
        return 0;
    n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* "tid (comm) S ...": comm may contain spaces and parentheses; the last ')' ends it. */
    if (!(close_paren = strrchr(buf, ')')) || close_paren[1] != ' ')
        return 0;
    return close_paren[2];
}

static void
test_single_thread(void)
{
    cn_claims_t *c = new_claims();
    uint8_t fp[CN_SHA256_LEN];

    fill_fp(fp, 1);
    CU_ASSERT_EQUAL(cn__claims_held(c), 0);
    CU_ASSERT_EQUAL_FATAL(cn__claims_acquire(c, "order-1", 7, fp, 0), CN_CLAIM_OWNED);
    CU_ASSERT_EQUAL(cn__claims_held(c), 1);
    cn__claims_release(c, "order-1", 7);
    CU_ASSERT_EQUAL(cn__claims_held(c), 0);

    /* Released keys can be claimed again at once. */
    CU_ASSERT_EQUAL_FATAL(cn__claims_acquire(c, "order-1", 7, fp, 0), CN_CLAIM_OWNED);
    CU_ASSERT_EQUAL(cn__claims_held(c), 1);
    cn__claims_release(c, "order-1", 7);
    CU_ASSERT_EQUAL(cn__claims_held(c), 0);
    cn__claims_free(c);
}

static void
test_distinct_keys(void)
{
    cn_claims_t *c = new_claims();
    uint8_t fp[CN_SHA256_LEN];
    char key[8] = "abcdefg";

    fill_fp(fp, 2);
    /* keylen bytes name the key: "ab", "abc" and "b" are three keys. */
    CU_ASSERT_EQUAL(cn__claims_acquire(c, key, 2, fp, 0), CN_CLAIM_OWNED);
    CU_ASSERT_EQUAL(cn__claims_acquire(c, key, 3, fp, 0), CN_CLAIM_OWNED);
    CU_ASSERT_EQUAL(cn__claims_acquire(c, key + 1, 1, fp, 0), CN_CLAIM_OWNED);
    CU_ASSERT_EQUAL(cn__claims_held(c), 3);
    /* The key is copied: changing the caller's bytes does not change the claim. */
    key[0] = 'z';
    CU_ASSERT_EQUAL(cn__claims_acquire(c, "ab", 2, fp, 0), CN_CLAIM_TIMEOUT);
    CU_ASSERT_EQUAL(cn__claims_acquire(c, key, 2, fp, 0), CN_CLAIM_OWNED);
    CU_ASSERT_EQUAL(cn__claims_held(c), 4);
    cn__claims_release(c, "ab", 2);
    cn__claims_release(c, "abc", 3);
    cn__claims_release(c, "b", 1);
    cn__claims_release(c, "zb", 2);
    CU_ASSERT_EQUAL(cn__claims_held(c), 0);
    cn__claims_free(c);
}

static void
test_mismatch_immediate(void)
{
    cn_claims_t *c = new_claims();
    uint8_t fp1[CN_SHA256_LEN], fp2[CN_SHA256_LEN];
    uint64_t t0, elapsed;

    fill_fp(fp1, 1);
    fill_fp(fp2, 1);
    fp2[CN_SHA256_LEN - 1] = 2; /* differs in the last byte only */
    CU_ASSERT_EQUAL_FATAL(cn__claims_acquire(c, "k", 1, fp1, 0), CN_CLAIM_OWNED);
    t0 = unit_now_ms();
    CU_ASSERT_EQUAL(cn__claims_acquire(c, "k", 1, fp2, LONG_WAIT_MS), CN_CLAIM_MISMATCH);
    elapsed = unit_now_ms() - t0;
    CU_ASSERT(elapsed < 1000);
    /* The mismatching request did not take or disturb the claim. */
    CU_ASSERT_EQUAL(cn__claims_held(c), 1);
    CU_ASSERT_EQUAL(cn__claims_acquire(c, "k", 1, fp1, 0), CN_CLAIM_TIMEOUT);
    cn__claims_release(c, "k", 1);
    CU_ASSERT_EQUAL(cn__claims_held(c), 0);
    /* Once released, the other fingerprint may own the key. */
    CU_ASSERT_EQUAL(cn__claims_acquire(c, "k", 1, fp2, 0), CN_CLAIM_OWNED);
    cn__claims_release(c, "k", 1);
    cn__claims_free(c);
}

static void
test_timeout(void)
{
    cn_claims_t *c = new_claims();
    uint8_t fp[CN_SHA256_LEN];
    uint64_t t0, elapsed;

    fill_fp(fp, 3);
    CU_ASSERT_EQUAL_FATAL(cn__claims_acquire(c, "slow", 4, fp, 0), CN_CLAIM_OWNED);

    t0 = unit_now_ms();
    CU_ASSERT_EQUAL(cn__claims_acquire(c, "slow", 4, fp, 50), CN_CLAIM_TIMEOUT);
    elapsed = unit_now_ms() - t0;
    CU_ASSERT(elapsed >= 45);
    CU_ASSERT(elapsed < 2000);

    t0 = unit_now_ms();
    CU_ASSERT_EQUAL(cn__claims_acquire(c, "slow", 4, fp, 0), CN_CLAIM_TIMEOUT);
    CU_ASSERT(unit_now_ms() - t0 < 1000);

    /* A waiter that timed out leaves the claim with its owner. */
    CU_ASSERT_EQUAL(cn__claims_held(c), 1);
    cn__claims_release(c, "slow", 4);
    CU_ASSERT_EQUAL(cn__claims_held(c), 0);
    CU_ASSERT_EQUAL(cn__claims_acquire(c, "slow", 4, fp, 0), CN_CLAIM_OWNED);
    cn__claims_release(c, "slow", 4);
    cn__claims_free(c);
}

static void
test_free_with_held_keys(void)
{
    cn_claims_t *c = new_claims();
    uint8_t fp[CN_SHA256_LEN];

    /* Freeing a table that still holds keys releases their memory (LeakSanitizer). */
    fill_fp(fp, 4);
    CU_ASSERT_EQUAL(cn__claims_acquire(c, "x", 1, fp, 0), CN_CLAIM_OWNED);
    CU_ASSERT_EQUAL(cn__claims_acquire(c, "y", 1, fp, 0), CN_CLAIM_OWNED);
    cn__claims_free(c);
    cn__claims_free(NULL);
}

/* --- waiters woken by a release ------------------------------------------------- */

typedef struct waiter_ctx {
    cn_claims_t *claims;
    const uint8_t *fp;
    atomic_int *started;
    pid_t tid;
    cn_claim_result_t result;
    uint64_t returned_ms;
} waiter_ctx_t;

static void *
waiter_main(void *arg)
{
    waiter_ctx_t *w = arg;

    w->tid = (pid_t)syscall(SYS_gettid);
    atomic_fetch_add(w->started, 1);
    w->result = cn__claims_acquire(w->claims, "shared", 6, w->fp, LONG_WAIT_MS);
    w->returned_ms = unit_now_ms();
    return NULL;
}

/* Waits (bounded) until every waiter thread is asleep, i.e. blocked inside acquire,
 * seen on several consecutive polls. Returns 1 when they are. */
static int
waiters_asleep(const waiter_ctx_t *w, size_t n, uint64_t bound_ms)
{
    uint64_t deadline = unit_now_ms() + bound_ms;
    int streak = 0;

    while (unit_now_ms() < deadline) {
        size_t asleep = 0;
        for (size_t i = 0; i < n; i++)
            asleep += thread_state(w[i].tid) == 'S';
        streak = asleep == n ? streak + 1 : 0;
        if (streak >= 50)
            return 1;
        sched_yield();
    }
    return 0;
}

static void
test_waiters_released(void)
{
    cn_claims_t *c = new_claims();
    uint8_t fp[CN_SHA256_LEN];
    pthread_t threads[NWAITERS];
    waiter_ctx_t w[NWAITERS];
    atomic_int started = 0;
    uint64_t deadline, released_at;
    size_t created = 0, n_released = 0, n_slow = 0;

    fill_fp(fp, 5);
    CU_ASSERT_EQUAL_FATAL(cn__claims_acquire(c, "shared", 6, fp, 0), CN_CLAIM_OWNED);
    memset(w, 0, sizeof(w));
    for (size_t i = 0; i < NWAITERS; i++) {
        w[i].claims = c;
        w[i].fp = fp;
        w[i].started = &started;
        w[i].result = (cn_claim_result_t)-1;
        if (pthread_create(&threads[i], NULL, waiter_main, &w[i]) != 0)
            break;
        created++;
    }
    CU_ASSERT_EQUAL(created, NWAITERS);

    deadline = unit_now_ms() + 10000;
    while (atomic_load(&started) < (int)created && unit_now_ms() < deadline)
        sched_yield();
    CU_ASSERT_EQUAL(atomic_load(&started), (int)created);
    CU_ASSERT(waiters_asleep(w, created, 10000));
    /* Nobody took the key while it was held. */
    CU_ASSERT_EQUAL(cn__claims_held(c), 1);

    released_at = unit_now_ms();
    cn__claims_release(c, "shared", 6);
    for (size_t i = 0; i < created; i++)
        join_bounded(threads[i]);

    for (size_t i = 0; i < created; i++) {
        n_released += w[i].result == CN_CLAIM_RELEASED;
        /* Woken by the release, not by their 5 s bound. */
        n_slow += w[i].returned_ms - released_at >= LONG_WAIT_MS / 2;
    }
    CU_ASSERT_EQUAL(n_released, NWAITERS);
    CU_ASSERT_EQUAL(n_slow, 0);
    /* RELEASED means "look again": the key is free and can be claimed. */
    CU_ASSERT_EQUAL(cn__claims_held(c), 0);
    CU_ASSERT_EQUAL(cn__claims_acquire(c, "shared", 6, fp, 0), CN_CLAIM_OWNED);
    cn__claims_release(c, "shared", 6);
    cn__claims_free(c);
}

/* --- mutual exclusion under contention ------------------------------------------ */

typedef struct stress_shared {
    cn_claims_t *claims;
    atomic_int go;
    atomic_int owners[STRESS_KEYS];
    atomic_int max_owners;
    atomic_long owned_total;
    atomic_long errors;
    long work[STRESS_KEYS]; /* plain: only ever touched by the key's owner */
} stress_shared_t;

typedef struct stress_ctx {
    stress_shared_t *sh;
    unsigned seed;
} stress_ctx_t;

static void *
stress_main(void *arg)
{
    stress_ctx_t *ctx = arg;
    stress_shared_t *sh = ctx->sh;
    uint64_t deadline = unit_now_ms() + 10000;
    unsigned x = ctx->seed * 2654435761u + 1;

    while (!atomic_load(&sh->go)) {
        if (unit_now_ms() > deadline) {
            atomic_fetch_add(&sh->errors, 1);
            return NULL;
        }
        sched_yield();
    }
    for (int it = 0; it < STRESS_ITERS; it++) {
        char key[32];
        uint8_t fp[CN_SHA256_LEN];
        int k, n, seen, attempts = 0;
        cn_claim_result_t res;
        size_t keylen;

        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        k = (int)(x % STRESS_KEYS);
        keylen = (size_t)snprintf(key, sizeof(key), "stress-%d", k);
        fill_fp(fp, (uint8_t)k);
        do {
            res = cn__claims_acquire(sh->claims, key, keylen, fp, LONG_WAIT_MS);
        } while (res == CN_CLAIM_RELEASED && ++attempts < 100000);
        if (res != CN_CLAIM_OWNED) {
            atomic_fetch_add(&sh->errors, 1);
            continue;
        }
        n = atomic_fetch_add(&sh->owners[k], 1) + 1;
        seen = atomic_load(&sh->max_owners);
        while (n > seen && !atomic_compare_exchange_weak(&sh->max_owners, &seen, n))
            ;
        sh->work[k] = sh->work[k] + 1;
        if (it % 64 == 0)
            sched_yield(); /* let others pile up behind this key now and then */
        atomic_fetch_sub(&sh->owners[k], 1);
        atomic_fetch_add(&sh->owned_total, 1);
        cn__claims_release(sh->claims, key, keylen);
    }
    return NULL;
}

static void
test_stress_mutual_exclusion(void)
{
    stress_shared_t *sh = calloc(1, sizeof(*sh));
    pthread_t threads[STRESS_THREADS];
    stress_ctx_t ctx[STRESS_THREADS];
    size_t created = 0;
    long work_total = 0;

    CU_ASSERT_PTR_NOT_NULL_FATAL(sh);
    sh->claims = new_claims();
    for (size_t i = 0; i < STRESS_THREADS; i++) {
        ctx[i].sh = sh;
        ctx[i].seed = (unsigned)i + 1;
        if (pthread_create(&threads[i], NULL, stress_main, &ctx[i]) != 0)
            break;
        created++;
    }
    CU_ASSERT_EQUAL(created, STRESS_THREADS);
    atomic_store(&sh->go, 1);
    for (size_t i = 0; i < created; i++)
        join_bounded(threads[i]);

    for (size_t k = 0; k < STRESS_KEYS; k++)
        work_total += sh->work[k];
    CU_ASSERT_EQUAL(atomic_load(&sh->max_owners), 1);
    CU_ASSERT_EQUAL(atomic_load(&sh->errors), 0);
    CU_ASSERT_EQUAL(atomic_load(&sh->owned_total), (long)created * STRESS_ITERS);
    CU_ASSERT_EQUAL(work_total, (long)created * STRESS_ITERS);
    CU_ASSERT_EQUAL(cn__claims_held(sh->claims), 0);
    cn__claims_free(sh->claims);
    free(sh);
}

int
main(void)
{
    static const unit_test_t tests[] = {
        {"acquire and release in one thread", test_single_thread},
        {"distinct keys are independent", test_distinct_keys},
        {"different fingerprint is MISMATCH at once", test_mismatch_immediate},
        {"same fingerprint times out after wait_ms", test_timeout},
        {"free with keys still held", test_free_with_held_keys},
        {"release wakes every waiter with RELEASED", test_waiters_released},
        {"stress: never two owners of one key", test_stress_mutual_exclusion},
        {NULL, NULL},
    };

    return unit_run("claims", tests);
}
