/*
 * tests/unit/test_inflight.c - the lock-free shared-memory in-flight table
 * (shm/inflight.c) and the region it lives in (shm/region.c):
 *
 *   - one process: OWNED, MISMATCH at once, BUSY in reject mode, TIMEOUT after waiting,
 *     holds, release, CN_ELOST for a claim that ended, a stale claim that cannot end a
 *     newer one, and the owned gauge (cn__shm_inflight_owned) through all of it;
 *   - a release wakes every thread sleeping on the key (all get RELEASED);
 *   - two keys hashed to one slot: the second waits (never MISMATCH) and then owns it;
 *   - lease takeover by another worker, and what the overtaken claim sees afterwards;
 *   - mutual exclusion across forked processes under contention (a hammer);
 *   - a SIGKILLed owner: cn__inflight_free_worker frees its slot and wakes the waiter;
 *   - region create/attach validation (sizes, magic, layout version, short files);
 *   - per-worker, per-operation counters and their sums.
 *
 * Every wait is bounded: waiters get a deadline that ends them even if a wake-up is lost,
 * threads are joined within a bound, forked children are reaped within a bound or killed.
 * Threads and children only ever see static storage, so a test that gives up on a stuck
 * thread can return without leaving it a dangling pointer (it then leaks the region).
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cnerium/error.h"
#include "shm/inflight.h"
#include "shm/region.h"
#include "support/clock.h"
#include "support/log.h"
#include "unit.h"

#define LONG_LEASE_MS 60000u  /* never runs out during a test */
#define WAITERS_BIT (1u << 2) /* shm/inflight.c: somebody sleeps on the state word */
#define PHASE_BITS 3u         /* shm/inflight.c: 0 = FREE */
#define BLOCK_BOUND_MS 5000u  /* how long a thread may take to fall asleep in acquire */
#define WAITER_DEADLINE_MS 5000u
#define JOIN_BOUND_MS 8000u /* past any waiter's deadline */

/* ---- helpers ------------------------------------------------------------------------ */

/* A key whose first 8 bytes are lo (little endian), which picks its slot, and whose other
 * bytes are tag, which tells keys with the same slot apart. */
static void
make_key(uint8_t key[CN_SHM_KEY_LEN], uint64_t lo, uint8_t tag)
{
    for (int i = 0; i < 8; i++)
        key[i] = (uint8_t)(lo >> (8 * i));
    for (int i = 8; i < CN_SHM_KEY_LEN; i++)
        key[i] = (uint8_t)(tag + i);
}

static void
make_fp(uint8_t fp[CN_SHM_FP_LEN], uint8_t tag)
{
    for (int i = 0; i < CN_SHM_FP_LEN; i++)
        fp[i] = (uint8_t)(tag * 31 + i);
}

/* The slot a key maps to, computed independently of inflight.c. */
static uint32_t
slot_of(const cn_shm_t *shm, const uint8_t key[CN_SHM_KEY_LEN])
{
    uint64_t lo = 0;

    for (int i = 7; i >= 0; i--)
        lo = (lo << 8) | key[i];
    return (uint32_t)(lo & (shm->hdr->nslots - 1u));
}

static uint32_t
slot_state(const cn_shm_t *shm, uint32_t slot)
{
    return atomic_load_explicit(&shm->slots[slot].state, memory_order_acquire);
}

static int64_t
worker_owned(const cn_shm_t *shm, unsigned worker)
{
    return atomic_load_explicit(&shm->workers[worker].owned, memory_order_relaxed);
}

static void
sleep_ms(unsigned ms)
{
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};

    while (nanosleep(&ts, &ts) && errno == EINTR)
        ;
}

/* The scheduler state of one of our threads ('S' sleeping, 'R' running, ...), or '?' when
 * /proc cannot tell. */
static char
thread_state(int tid)
{
    char path[64], buf[512], *p;
    ssize_t n;
    int fd;

    snprintf(path, sizeof(path), "/proc/self/task/%d/stat", tid);
    if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
        return '?';
    n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0)
        return '?';
    buf[n] = '\0';
    if (!(p = strrchr(buf, ')')) || p[1] != ' ' || !p[2])
        return '?';
    return p[2];
}

/* Joins th within timeout_ms. On timeout the thread is detached and -1 returned: the
 * caller must then leave alone everything the thread can reach. */
static int
join_within(pthread_t th, uint64_t timeout_ms)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += (time_t)(timeout_ms / 1000);
    ts.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    if (pthread_timedjoin_np(th, NULL, &ts) == 0)
        return 0;
    pthread_detach(th);
    return -1;
}

/* A thread that calls cn__inflight_acquire once. Everything it touches lives in static
 * storage (see the file comment). */
typedef struct waiter {
    cn_inflight_t *t;
    uint8_t key[CN_SHM_KEY_LEN];
    uint8_t fp[CN_SHM_FP_LEN];
    uint64_t deadline_ms;
    _Atomic int *returned; /* optional: counts waiters that came back */
    _Atomic int tid;
    _Atomic int entered; /* set right before the acquire */
    _Atomic int done;
    pthread_t th;
    int started;
    cn_inflight_result_t result;
    int waited;
    cn_claim_t claim;
    uint64_t returned_ms;
} waiter_t;

static void *
waiter_main(void *arg)
{
    waiter_t *w = arg;

    atomic_store(&w->tid, (int)syscall(SYS_gettid));
    atomic_store(&w->entered, 1);
    w->result = cn__inflight_acquire(w->t, w->key, w->fp, LONG_LEASE_MS, w->deadline_ms,
                                     &w->waited, &w->claim);
    w->returned_ms = cn__clock_mono_ms();
    atomic_store(&w->done, 1);
    if (w->returned)
        atomic_fetch_add(w->returned, 1);
    return NULL;
}

static void
waiter_init(waiter_t *w, cn_inflight_t *t, const uint8_t *key, const uint8_t *fp,
            _Atomic int *returned)
{
    memset(w, 0, sizeof(*w));
    w->t = t;
    memcpy(w->key, key, CN_SHM_KEY_LEN);
    memcpy(w->fp, fp, CN_SHM_FP_LEN);
    w->deadline_ms = cn__clock_mono_ms() + WAITER_DEADLINE_MS;
    w->returned = returned;
    w->result = (cn_inflight_result_t)-1;
    w->waited = -1;
}

static int
waiter_start(waiter_t *w)
{
    w->started = pthread_create(&w->th, NULL, waiter_main, w) == 0;
    return w->started;
}

/* Joins every started waiter; returns how many could not be joined in time. */
static int
waiters_join(waiter_t *ws, size_t n)
{
    uint64_t end = unit_now_ms() + JOIN_BOUND_MS;
    int stuck = 0;

    for (size_t i = 0; i < n; i++) {
        uint64_t now = unit_now_ms();

        if (!ws[i].started)
            continue;
        if (join_within(ws[i].th, now < end ? end - now : 1)) {
            fprintf(stderr, "waiter %zu is stuck in cn__inflight_acquire\n", i);
            stuck++;
        }
        ws[i].started = 0;
    }
    return stuck;
}

/* Waits, within bound_ms, until every waiter has entered cn__inflight_acquire and sleeps
 * in the kernel (thread state S: after `entered` the only place it can sleep is the
 * futex), and the slot shows the WAITERS bit. Returns 1 then; 0 if the bound passed or a
 * waiter returned first. */
static int
waiters_blocked(waiter_t *ws, size_t n, const cn_shm_t *shm, uint32_t slot, uint64_t bound_ms)
{
    uint64_t start = unit_now_ms();

    for (;;) {
        uint64_t now = unit_now_ms();
        size_t blocked = 0;

        for (size_t i = 0; i < n; i++) {
            char st;

            if (atomic_load(&ws[i].done))
                return 0;
            if (!atomic_load(&ws[i].entered))
                continue;
            st = thread_state(atomic_load(&ws[i].tid));
            /* Without /proc, settle for having been inside acquire for a while. */
            if (st == 'S' || (st == '?' && now - start >= 200))
                blocked++;
        }
        if (blocked == n && (slot_state(shm, slot) & WAITERS_BIT))
            return 1;
        if (now - start >= bound_ms)
            return 0;
        sleep_ms(1);
    }
}

/* For window_ms, checks that *counter stays 0. Returns 1 if it did. */
static int
stays_zero(_Atomic int *counter, unsigned window_ms)
{
    uint64_t end = unit_now_ms() + window_ms;

    while (unit_now_ms() < end) {
        if (atomic_load(counter))
            return 0;
        sleep_ms(2);
    }
    return atomic_load(counter) == 0;
}

/* ---- 1. one process --------------------------------------------------------------- */

static void
test_single_process(void)
{
    cn_shm_t shm;
    cn_inflight_t t;
    cn_claim_t c1, c2, c3;
    uint8_t key[CN_SHM_KEY_LEN], fpx[CN_SHM_FP_LEN], fpy[CN_SHM_FP_LEN];
    uint64_t start, took;
    int waited;

    CU_ASSERT_EQUAL_FATAL(cn__shm_create(64, 4, 1, &shm), 0);
    t = (cn_inflight_t){&shm, 0, 0, NULL, 0};
    make_key(key, 0x0123456789abcd05u, 'A');
    make_fp(fpx, 'X');
    make_fp(fpy, 'Y');
    CU_ASSERT_EQUAL(cn__shm_inflight_owned(&shm), 0);

    waited = -1;
    CU_ASSERT_EQUAL_FATAL(cn__inflight_acquire(&t, key, fpx, LONG_LEASE_MS,
                                               cn__clock_mono_ms() + 10000, &waited, &c1),
                          CN_INFLIGHT_OWNED);
    CU_ASSERT_EQUAL(waited, 0);
    CU_ASSERT_EQUAL(c1.slot, slot_of(&shm, key));
    CU_ASSERT_EQUAL(cn__inflight_holds(&t, &c1), 1);
    CU_ASSERT_EQUAL(cn__shm_inflight_owned(&shm), 1);
    CU_ASSERT_EQUAL(worker_owned(&shm, 0), 1);

    /* A different body: MISMATCH at once, though the deadline is far away. */
    waited = -1;
    CU_ASSERT_EQUAL(cn__inflight_acquire(&t, key, fpy, LONG_LEASE_MS,
                                         cn__clock_mono_ms() + 10000, &waited, &c2),
                    CN_INFLIGHT_MISMATCH);
    CU_ASSERT_EQUAL(waited, 0); /* answered without waiting */

    /* Reject mode: the same body is BUSY at once; a different body is still MISMATCH. */
    t.reject = 1;
    waited = -1;
    CU_ASSERT_EQUAL(cn__inflight_acquire(&t, key, fpx, LONG_LEASE_MS,
                                         cn__clock_mono_ms() + 10000, &waited, &c2),
                    CN_INFLIGHT_BUSY);
    CU_ASSERT_EQUAL(waited, 0); /* answered without waiting */
    CU_ASSERT_EQUAL(cn__inflight_acquire(&t, key, fpy, LONG_LEASE_MS,
                                         cn__clock_mono_ms() + 10000, &waited, &c2),
                    CN_INFLIGHT_MISMATCH);
    t.reject = 0;

    /* Wait mode, same body: sleeps until the deadline, then TIMEOUT. */
    waited = -1;
    start = unit_now_ms();
    CU_ASSERT_EQUAL(cn__inflight_acquire(&t, key, fpx, LONG_LEASE_MS,
                                         cn__clock_mono_ms() + 50, &waited, &c2),
                    CN_INFLIGHT_TIMEOUT);
    took = unit_now_ms() - start;
    CU_ASSERT(took >= 50);
    CU_ASSERT_EQUAL(waited, 1);

    /* None of that touched the claim. */
    CU_ASSERT_EQUAL(cn__inflight_holds(&t, &c1), 1);
    CU_ASSERT_EQUAL(cn__shm_inflight_owned(&shm), 1);

    CU_ASSERT_EQUAL(cn__inflight_release(&t, &c1), 0);
    CU_ASSERT_EQUAL(cn__inflight_holds(&t, &c1), 0);
    CU_ASSERT_EQUAL(slot_state(&shm, c1.slot) & PHASE_BITS, 0);
    CU_ASSERT_EQUAL(cn__shm_inflight_owned(&shm), 0);
    CU_ASSERT_EQUAL(worker_owned(&shm, 0), 0);

    /* A claim that ended cannot end again, and "nothing is changed then" (inflight.h):
     * the worker's owned count included. */
    CU_ASSERT_EQUAL(cn__inflight_release(&t, &c1), CN_ELOST);
    CU_ASSERT_EQUAL(worker_owned(&shm, 0), 0);
    CU_ASSERT_EQUAL(cn__shm_inflight_owned(&shm), 0);

    /* The key is free again: a new claim, in the same slot, with a new identity. */
    waited = -1;
    CU_ASSERT_EQUAL_FATAL(cn__inflight_acquire(&t, key, fpy, LONG_LEASE_MS,
                                               cn__clock_mono_ms() + 10000, &waited, &c3),
                          CN_INFLIGHT_OWNED);
    CU_ASSERT_EQUAL(waited, 0);
    CU_ASSERT_EQUAL(c3.slot, c1.slot);
    CU_ASSERT_NOT_EQUAL(c3.state, c1.state);
    CU_ASSERT_EQUAL(cn__inflight_holds(&t, &c3), 1);
    CU_ASSERT_EQUAL(cn__inflight_holds(&t, &c1), 0);
    CU_ASSERT_EQUAL(cn__shm_inflight_owned(&shm), 1);

    /* The stale claim of the previous generation cannot end the new one. */
    CU_ASSERT_EQUAL(cn__inflight_release(&t, &c1), CN_ELOST);
    CU_ASSERT_EQUAL(cn__inflight_holds(&t, &c3), 1);

    CU_ASSERT_EQUAL(cn__inflight_release(&t, &c3), 0);
    CU_ASSERT_EQUAL(cn__inflight_holds(&t, &c3), 0);
    CU_ASSERT_EQUAL(cn__shm_inflight_owned(&shm), 0);
    cn__shm_destroy(&shm);
}

/* ---- 1b. parking (event loops) ------------------------------------------------------- */

/* The eventfd's counter, read and reset (0: nothing was written). */
static uint64_t
drain_efd(int fd)
{
    uint64_t v = 0;

    if (read(fd, &v, sizeof(v)) != (ssize_t)sizeof(v))
        return 0;
    return v;
}

/* cn__inflight_try never sleeps: a held key says PARK (with the holder's lease end), and
 * the claim's end writes every wake fd, once for the waiters it had. */
static void
test_try_park(void)
{
    cn_shm_t shm;
    cn_inflight_t a, b;
    cn_claim_t ca, cb;
    uint8_t key[CN_SHM_KEY_LEN], other[CN_SHM_KEY_LEN], fpx[CN_SHM_FP_LEN], fpy[CN_SHM_FP_LEN];
    int efd[2];
    uint64_t retry_at, before;

    CU_ASSERT_EQUAL_FATAL(cn__shm_create(64, 4, 1, &shm), 0);
    efd[0] = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    efd[1] = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    CU_ASSERT_TRUE_FATAL(efd[0] >= 0 && efd[1] >= 0);
    a = (cn_inflight_t){&shm, 0, 0, efd, 2};
    b = (cn_inflight_t){&shm, 1, 0, efd, 2};
    make_key(key, 0x0123456789abcd05u, 'A');
    make_key(other, 0x0123456789abcd05u, 'B'); /* same slot, another key */
    make_fp(fpx, 'X');
    make_fp(fpy, 'Y');

    before = cn__clock_mono_ms();
    CU_ASSERT_EQUAL_FATAL(cn__inflight_try(&a, key, fpx, LONG_LEASE_MS, &ca, &retry_at),
                          CN_INFLIGHT_OWNED);
    /* Nobody waits yet: no wake on a state change. */
    CU_ASSERT_EQUAL(drain_efd(efd[0]), 0);

    CU_ASSERT_EQUAL(cn__inflight_try(&b, key, fpy, LONG_LEASE_MS, &cb, &retry_at),
                    CN_INFLIGHT_MISMATCH);
    CU_ASSERT_EQUAL(cn__inflight_try(&b, key, fpx, LONG_LEASE_MS, &cb, &retry_at),
                    CN_INFLIGHT_PARK);
    CU_ASSERT(retry_at >= before + LONG_LEASE_MS && retry_at != UINT64_MAX);
    /* Another key in the slot waits too, but never takes the claim over: no lease end. */
    CU_ASSERT_EQUAL(cn__inflight_try(&b, other, fpx, LONG_LEASE_MS, &cb, &retry_at),
                    CN_INFLIGHT_PARK);
    CU_ASSERT_EQUAL(retry_at, UINT64_MAX);
    CU_ASSERT_EQUAL(drain_efd(efd[0]), 0);
    CU_ASSERT_EQUAL(drain_efd(efd[1]), 0);

    /* Reject mode refuses instead of parking. */
    b.reject = 1;
    CU_ASSERT_EQUAL(cn__inflight_try(&b, key, fpx, LONG_LEASE_MS, &cb, &retry_at),
                    CN_INFLIGHT_BUSY);
    b.reject = 0;

    /* The release wakes every worker's loop, once. */
    CU_ASSERT_EQUAL(cn__inflight_release(&a, &ca), 0);
    CU_ASSERT_EQUAL(drain_efd(efd[0]), 1);
    CU_ASSERT_EQUAL(drain_efd(efd[1]), 1);
    CU_ASSERT_EQUAL(cn__inflight_try(&b, key, fpx, LONG_LEASE_MS, &cb, &retry_at),
                    CN_INFLIGHT_OWNED);
    /* A release with no waiters writes nothing. */
    CU_ASSERT_EQUAL(cn__inflight_release(&b, &cb), 0);
    CU_ASSERT_EQUAL(drain_efd(efd[0]), 0);
    CU_ASSERT_EQUAL(drain_efd(efd[1]), 0);

    /* A dead worker's claim freed by the supervisor: it writes the wake fds itself. */
    CU_ASSERT_EQUAL(cn__inflight_try(&a, key, fpx, LONG_LEASE_MS, &ca, &retry_at),
                    CN_INFLIGHT_OWNED);
    CU_ASSERT_EQUAL(cn__inflight_try(&b, key, fpx, LONG_LEASE_MS, &cb, &retry_at),
                    CN_INFLIGHT_PARK);
    CU_ASSERT_EQUAL(cn__inflight_free_worker(&shm, 0), 1);
    cn__inflight_wake_all(efd, 2);
    CU_ASSERT_EQUAL(drain_efd(efd[1]), 1);
    CU_ASSERT_EQUAL(cn__inflight_try(&b, key, fpx, LONG_LEASE_MS, &cb, &retry_at),
                    CN_INFLIGHT_OWNED);
    CU_ASSERT_EQUAL(cn__inflight_release(&b, &cb), 0);

    close(efd[0]);
    close(efd[1]);
    cn__shm_destroy(&shm);
}

/* ---- 2. a release wakes every waiter ------------------------------------------------ */

#define NWAITERS 8

static void
test_waiters_woken(void)
{
    static cn_shm_t shm;
    static cn_inflight_t owner, others;
    static waiter_t ws[NWAITERS];
    static _Atomic int returned;
    uint8_t key[CN_SHM_KEY_LEN], fp[CN_SHM_FP_LEN];
    cn_claim_t claim;
    uint64_t released_ms;
    size_t started = 0;
    int waited, blocked = 0, quiet = 0;

    CU_ASSERT_EQUAL_FATAL(cn__shm_create(64, 4, 1, &shm), 0);
    owner = (cn_inflight_t){&shm, 0, 0, NULL, 0};
    others = (cn_inflight_t){&shm, 1, 0, NULL, 0};
    make_key(key, 0x77, 'W');
    make_fp(fp, 'F');
    atomic_store(&returned, 0);
    CU_ASSERT_EQUAL_FATAL(cn__inflight_acquire(&owner, key, fp, LONG_LEASE_MS,
                                               cn__clock_mono_ms() + 1000, &waited, &claim),
                          CN_INFLIGHT_OWNED);

    for (size_t i = 0; i < NWAITERS; i++) {
        waiter_init(&ws[i], &others, key, fp, &returned);
        started += (size_t)waiter_start(&ws[i]);
    }
    CU_ASSERT_EQUAL(started, NWAITERS);
    if (started == NWAITERS) {
        blocked = waiters_blocked(ws, NWAITERS, &shm, claim.slot, BLOCK_BOUND_MS);
        quiet = stays_zero(&returned, 50);
    }
    CU_ASSERT_EQUAL(blocked, 1);
    CU_ASSERT_EQUAL(quiet, 1);
    CU_ASSERT_EQUAL(atomic_load(&returned), 0);
    CU_ASSERT_EQUAL(cn__inflight_holds(&owner, &claim), 1);

    released_ms = cn__clock_mono_ms();
    CU_ASSERT_EQUAL(cn__inflight_release(&owner, &claim), 0);
    if (waiters_join(ws, NWAITERS)) {
        CU_FAIL("a waiter did not come back; the region is leaked on purpose");
        return;
    }
    CU_ASSERT_EQUAL(atomic_load(&returned), (int)started);
    for (size_t i = 0; i < started; i++) {
        CU_ASSERT_EQUAL(ws[i].result, CN_INFLIGHT_RELEASED);
        CU_ASSERT_EQUAL(ws[i].waited, 1);
        CU_ASSERT(ws[i].returned_ms >= released_ms);
    }
    CU_ASSERT_EQUAL(cn__shm_inflight_owned(&shm), 0);
    CU_ASSERT_EQUAL(slot_state(&shm, claim.slot) & PHASE_BITS, 0);
    cn__shm_destroy(&shm);
}

/* ---- 3. two keys, one slot ---------------------------------------------------------- */

static void
test_slot_collision(void)
{
    static cn_shm_t shm;
    static cn_inflight_t t;
    static waiter_t wb;
    static _Atomic int returned;
    uint8_t ka[CN_SHM_KEY_LEN], kb[CN_SHM_KEY_LEN], kc[CN_SHM_KEY_LEN], fp[CN_SHM_FP_LEN];
    cn_claim_t ca, cc, again;
    int waited, blocked = 0, quiet = 0;

    CU_ASSERT_EQUAL_FATAL(cn__shm_create(8, 2, 1, &shm), 0);
    t = (cn_inflight_t){&shm, 0, 0, NULL, 0};
    make_key(ka, 0x1122334455667705u, 'a'); /* slot 5 */
    make_key(kb, 0x0f0du, 'b');             /* slot 5 too */
    make_key(kc, 0x1122334455667706u, 'a'); /* slot 6 */
    make_fp(fp, 'P');                       /* the same body: only the keys differ */
    CU_ASSERT_EQUAL_FATAL(slot_of(&shm, ka), slot_of(&shm, kb));
    CU_ASSERT_NOT_EQUAL_FATAL(slot_of(&shm, ka), slot_of(&shm, kc));

    CU_ASSERT_EQUAL_FATAL(cn__inflight_acquire(&t, ka, fp, LONG_LEASE_MS,
                                               cn__clock_mono_ms() + 1000, &waited, &ca),
                          CN_INFLIGHT_OWNED);
    CU_ASSERT_EQUAL(ca.slot, slot_of(&shm, ka));

    /* A key in another slot is not held up. */
    waited = -1;
    CU_ASSERT_EQUAL(cn__inflight_acquire(&t, kc, fp, LONG_LEASE_MS, cn__clock_mono_ms() + 1000,
                                         &waited, &cc),
                    CN_INFLIGHT_OWNED);
    CU_ASSERT_EQUAL(waited, 0);
    CU_ASSERT_EQUAL(cn__inflight_release(&t, &cc), 0);

    /* The colliding key waits for the slot; it is not another body for the same key. */
    waiter_init(&wb, &t, kb, fp, &returned);
    atomic_store(&returned, 0);
    if (waiter_start(&wb)) {
        blocked = waiters_blocked(&wb, 1, &shm, ca.slot, BLOCK_BOUND_MS);
        quiet = stays_zero(&returned, 30);
    } else {
        CU_FAIL("pthread_create");
    }
    CU_ASSERT_EQUAL(blocked, 1);
    CU_ASSERT_EQUAL(quiet, 1);
    CU_ASSERT_EQUAL(cn__inflight_release(&t, &ca), 0);
    if (waiters_join(&wb, 1)) {
        CU_FAIL("the colliding waiter did not come back; the region is leaked on purpose");
        return;
    }
    CU_ASSERT_EQUAL(wb.result, CN_INFLIGHT_OWNED);
    CU_ASSERT_EQUAL(wb.waited, 1);
    if (wb.result != CN_INFLIGHT_OWNED) {
        cn__shm_destroy(&shm);
        return;
    }
    CU_ASSERT_EQUAL(wb.claim.slot, ca.slot);
    CU_ASSERT_EQUAL(cn__inflight_holds(&t, &wb.claim), 1);

    /* Now the first key waits on the second, in reject mode too (reject is for the same
     * key only), and runs into its deadline. */
    t.reject = 1;
    waited = -1;
    CU_ASSERT_EQUAL(cn__inflight_acquire(&t, ka, fp, LONG_LEASE_MS, cn__clock_mono_ms() + 20,
                                         &waited, &again),
                    CN_INFLIGHT_TIMEOUT);
    CU_ASSERT_EQUAL(waited, 1);
    t.reject = 0;

    CU_ASSERT_EQUAL(cn__inflight_release(&t, &wb.claim), 0);
    CU_ASSERT_EQUAL(cn__shm_inflight_owned(&shm), 0);
    cn__shm_destroy(&shm);
}

/* ---- 4. lease takeover ------------------------------------------------------------ */

static void
test_lease_takeover(void)
{
    cn_shm_t shm;
    cn_inflight_t w0, w1;
    cn_claim_t first, second;
    uint8_t key[CN_SHM_KEY_LEN], fp[CN_SHM_FP_LEN];
    uint64_t start, took;
    int waited;

    CU_ASSERT_EQUAL_FATAL(cn__shm_create(64, 2, 1, &shm), 0);
    w0 = (cn_inflight_t){&shm, 0, 0, NULL, 0};
    w1 = (cn_inflight_t){&shm, 1, 0, NULL, 0};
    make_key(key, 0x4242, 'L');
    make_fp(fp, 'L');

    start = unit_now_ms();
    CU_ASSERT_EQUAL_FATAL(cn__inflight_acquire(&w0, key, fp, 100, cn__clock_mono_ms() + 1000,
                                               &waited, &first),
                          CN_INFLIGHT_OWNED);
    waited = -1;
    CU_ASSERT_EQUAL_FATAL(cn__inflight_acquire(&w1, key, fp, LONG_LEASE_MS,
                                               cn__clock_mono_ms() + 2000, &waited, &second),
                          CN_INFLIGHT_OWNED);
    took = unit_now_ms() - start;
    CU_ASSERT(took >= 100); /* not before the lease ran out */
    CU_ASSERT_EQUAL(waited, 1);
    CU_ASSERT_EQUAL(second.slot, first.slot);
    CU_ASSERT_EQUAL(atomic_load(&shm.hdr->lease_takeovers), 1);

    CU_ASSERT_EQUAL(cn__inflight_holds(&w0, &first), 0);
    CU_ASSERT_EQUAL(cn__inflight_holds(&w1, &second), 1);
    /* One slot is owned now, by worker 1 alone. */
    CU_ASSERT_EQUAL(cn__shm_inflight_owned(&shm), 1);

    /* The overtaken owner finds out at release; the new claim is untouched. */
    CU_ASSERT_EQUAL(cn__inflight_release(&w0, &first), CN_ELOST);
    CU_ASSERT_EQUAL(cn__inflight_holds(&w1, &second), 1);
    CU_ASSERT_EQUAL(cn__shm_inflight_owned(&shm), 1);
    CU_ASSERT_EQUAL(worker_owned(&shm, 1), 1);

    CU_ASSERT_EQUAL(cn__inflight_release(&w1, &second), 0);
    CU_ASSERT_EQUAL(cn__shm_inflight_owned(&shm), 0);
    CU_ASSERT_EQUAL(atomic_load(&shm.hdr->lease_takeovers), 1);
    cn__shm_destroy(&shm);
}

/* ---- 5. multi-process hammer ------------------------------------------------------ */

#define HAMMER_PROCS 4
#define HAMMER_KEYS 4
#define HAMMER_ITERS 20000
#define HAMMER_SLOTS 16
#define HAMMER_BOUND_MS 20000u

/* Lives in its own MAP_SHARED | MAP_ANONYMOUS mapping, outside the region under test. */
typedef struct hammer {
    _Atomic int64_t key_now[HAMMER_KEYS]; /* owners of the key right now */
    _Atomic int64_t key_max[HAMMER_KEYS];
    _Atomic int64_t slot_now[HAMMER_SLOTS]; /* owners of the slot right now */
    _Atomic int64_t slot_max[HAMMER_SLOTS];
    _Atomic uint64_t acquired[HAMMER_KEYS];
    uint64_t plain[HAMMER_KEYS]; /* read-modify-written without atomics under the claim */
    struct {
        uint64_t owned, released, waited;
        int error; /* what went wrong, 0 if nothing */
    } child[HAMMER_PROCS];       /* each written by its child only */
} hammer_t;

static void
raise_max(_Atomic int64_t *max, int64_t v)
{
    int64_t cur = atomic_load(max);

    while (v > cur && !atomic_compare_exchange_weak(max, &cur, v))
        ;
}

/* A forked child's work: returns its exit status. */
static int
hammer_child(cn_shm_t *shm, hammer_t *h, unsigned worker,
             uint8_t keys[HAMMER_KEYS][CN_SHM_KEY_LEN], uint8_t fps[HAMMER_KEYS][CN_SHM_FP_LEN])
{
    cn_inflight_t t = {shm, worker, 0, NULL, 0};
    uint64_t rng = 0x9e3779b97f4a7c15u * (worker + 1);

    for (unsigned i = 0; i < HAMMER_ITERS; i++) {
        cn_inflight_result_t r;
        cn_claim_t claim;
        unsigned k, slot, tries = 0;
        volatile uint64_t *plain;
        int waited;

        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        k = (unsigned)(rng >> 32) % HAMMER_KEYS;
        slot = slot_of(shm, keys[k]);
        for (;;) {
            r = cn__inflight_acquire(&t, keys[k], fps[k], LONG_LEASE_MS,
                                     cn__clock_mono_ms() + 5000, &waited, &claim);
            if (waited) {
                h->child[worker].waited++;
                cn__shm_count(shm, worker, k, CN_SHM_WAITS);
            }
            if (r == CN_INFLIGHT_OWNED)
                break;
            if (r != CN_INFLIGHT_RELEASED)
                return h->child[worker].error = 10 + (int)r;
            h->child[worker].released++;
            if (++tries > 1000000)
                return h->child[worker].error = 20;
        }
        h->child[worker].owned++;
        if (claim.slot != slot)
            return h->child[worker].error = 21;
        raise_max(&h->key_max[k], atomic_fetch_add(&h->key_now[k], 1) + 1);
        raise_max(&h->slot_max[slot], atomic_fetch_add(&h->slot_now[slot], 1) + 1);
        plain = &h->plain[k];
        {
            uint64_t v = *plain;

            if ((i & 63) == 0)
                sched_yield(); /* get preempted while holding: others must sleep */
            *plain = v + 1;
        }
        atomic_fetch_add(&h->acquired[k], 1);
        cn__shm_count(shm, worker, k, CN_OUTCOME_EXECUTED);
        atomic_fetch_sub(&h->slot_now[slot], 1);
        atomic_fetch_sub(&h->key_now[k], 1);
        if (cn__inflight_release(&t, &claim) != 0)
            return h->child[worker].error = 22;
    }
    return 0;
}

static void
test_multiprocess_hammer(void)
{
    cn_shm_t shm;
    hammer_t *h;
    uint8_t keys[HAMMER_KEYS][CN_SHM_KEY_LEN], fps[HAMMER_KEYS][CN_SHM_FP_LEN];
    /* Keys 0 and 1 share a slot; keys 2 and 3 have one each. */
    static const uint64_t lo[HAMMER_KEYS] = {3, 3 + HAMMER_SLOTS * 7, 6, 9};
    pid_t pids[HAMMER_PROCS];
    uint64_t end, total_owned = 0, total_waited = 0, total_acquired = 0;
    unsigned forked = 0;
    int go[2];

    CU_ASSERT_EQUAL_FATAL(cn__shm_create(HAMMER_SLOTS, HAMMER_PROCS, HAMMER_KEYS, &shm), 0);
    h = mmap(NULL, sizeof(*h), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (h == MAP_FAILED) {
        cn__shm_destroy(&shm);
        CU_FAIL_FATAL("mmap");
        return;
    }
    memset(h, 0, sizeof(*h));
    for (unsigned k = 0; k < HAMMER_KEYS; k++) {
        make_key(keys[k], lo[k], (uint8_t)('k' + k));
        make_fp(fps[k], (uint8_t)k);
    }
    CU_ASSERT_EQUAL(slot_of(&shm, keys[0]), slot_of(&shm, keys[1]));

    /* The children start together: each blocks reading `go` until the parent closes
     * its write end (EOF), so they contend from their first iteration. */
    if (pipe(go)) {
        munmap(h, sizeof(*h));
        cn__shm_destroy(&shm);
        CU_FAIL_FATAL("pipe");
        return;
    }
    fflush(NULL);
    for (; forked < HAMMER_PROCS; forked++) {
        pid_t pid = fork();

        if (pid < 0)
            break;
        if (pid == 0) {
            char byte;

            alarm(60); /* an orphan must not outlive a crashed parent by much */
            close(go[1]);
            while (read(go[0], &byte, 1) < 0 && errno == EINTR)
                ;
            _exit(hammer_child(&shm, h, forked, keys, fps));
        }
        pids[forked] = pid;
    }
    close(go[0]);
    close(go[1]);
    CU_ASSERT_EQUAL(forked, HAMMER_PROCS);

    end = unit_now_ms() + HAMMER_BOUND_MS;
    for (unsigned i = 0; i < forked; i++) {
        uint64_t now = unit_now_ms();
        int status = 0;

        CU_ASSERT_EQUAL(unit_reap_within(pids[i], now < end ? end - now : 0, &status), 0);
        CU_ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        if (!WIFEXITED(status) || WEXITSTATUS(status))
            fprintf(stderr, "hammer child %u: wait status 0x%x, error %d\n", i, status,
                    h->child[i].error);
    }

    for (unsigned i = 0; i < forked; i++) {
        CU_ASSERT_EQUAL(h->child[i].error, 0);
        CU_ASSERT_EQUAL(h->child[i].owned, HAMMER_ITERS); /* every iteration ended OWNED */
        total_owned += h->child[i].owned;
        total_waited += h->child[i].waited;
    }
    for (unsigned k = 0; k < HAMMER_KEYS; k++) {
        CU_ASSERT_EQUAL(h->key_max[k], 1);     /* never two owners of a key */
        CU_ASSERT_EQUAL(h->key_now[k], 0);
        CU_ASSERT_EQUAL(h->plain[k], h->acquired[k]); /* no lost update under the claim */
        CU_ASSERT_EQUAL(cn__shm_counter_sum(&shm, (int)k, CN_OUTCOME_EXECUTED), h->acquired[k]);
        total_acquired += h->acquired[k];
    }
    for (unsigned s = 0; s < HAMMER_SLOTS; s++)
        CU_ASSERT(h->slot_max[s] <= 1); /* never two owners of a slot, even for two keys */
    CU_ASSERT_EQUAL(h->slot_max[slot_of(&shm, keys[0])], 1);
    CU_ASSERT_EQUAL(total_acquired, (uint64_t)HAMMER_PROCS * HAMMER_ITERS);
    CU_ASSERT_EQUAL(total_owned, total_acquired);
    CU_ASSERT_EQUAL(cn__shm_counter_sum(&shm, -1, CN_OUTCOME_EXECUTED), total_acquired);
    CU_ASSERT_EQUAL(cn__shm_counter_sum(&shm, -1, CN_SHM_WAITS), total_waited);
    CU_ASSERT(total_waited > 0); /* there was real contention */

    /* Everything ended: no slot held, nothing owned, nobody's lease ran out. */
    for (unsigned s = 0; s < HAMMER_SLOTS; s++)
        CU_ASSERT_EQUAL(slot_state(&shm, s) & PHASE_BITS, 0);
    for (unsigned w = 0; w < HAMMER_PROCS; w++)
        CU_ASSERT_EQUAL(worker_owned(&shm, w), 0);
    CU_ASSERT_EQUAL(cn__shm_inflight_owned(&shm), 0);
    CU_ASSERT_EQUAL(atomic_load(&shm.hdr->lease_takeovers), 0);

    munmap(h, sizeof(*h));
    cn__shm_destroy(&shm);
}

/* ---- 6. the owner dies ------------------------------------------------------------ */

static void
test_owner_death(void)
{
    static cn_shm_t shm;
    static cn_inflight_t w0;
    static waiter_t wa;
    static _Atomic int returned;
    cn_inflight_t w2;
    cn_claim_t cb, ca;
    uint8_t ka[CN_SHM_KEY_LEN], kb[CN_SHM_KEY_LEN], fp[CN_SHM_FP_LEN];
    int pipefd[2], status = 0, waited, blocked = 0;
    struct pollfd pfd;
    char c = 0;
    pid_t pid;

    CU_ASSERT_EQUAL_FATAL(cn__shm_create(64, 3, 1, &shm), 0);
    w0 = (cn_inflight_t){&shm, 0, 0, NULL, 0};
    w2 = (cn_inflight_t){&shm, 2, 0, NULL, 0};
    make_key(ka, 0x0d, 'D');
    make_key(kb, 0x0e, 'E');
    make_fp(fp, 'D');

    /* Worker 2 holds another key, which the death of worker 1 must not touch. */
    CU_ASSERT_EQUAL_FATAL(cn__inflight_acquire(&w2, kb, fp, LONG_LEASE_MS,
                                               cn__clock_mono_ms() + 1000, &waited, &cb),
                          CN_INFLIGHT_OWNED);
    if (pipe(pipefd)) {
        cn__shm_destroy(&shm);
        CU_FAIL_FATAL("pipe");
        return;
    }
    fflush(NULL);
    if ((pid = fork()) < 0) {
        close(pipefd[0]);
        close(pipefd[1]);
        cn__shm_destroy(&shm);
        CU_FAIL_FATAL("fork");
        return;
    }
    if (pid == 0) {
        cn_inflight_t w1 = {&shm, 1, 0, NULL, 0};
        cn_claim_t claim;
        int child_waited;
        char what;

        alarm(60); /* an orphan must not outlive a crashed parent by much */
        close(pipefd[0]);
        what = cn__inflight_acquire(&w1, ka, fp, LONG_LEASE_MS, cn__clock_mono_ms() + 1000,
                                    &child_waited, &claim) == CN_INFLIGHT_OWNED
                   ? 'o'
                   : 'x';
        if (write(pipefd[1], &what, 1) != 1)
            _exit(3);
        for (;;)
            pause();
    }
    close(pipefd[1]);

    /* No fatal assertion from here until the child is reaped. */
    pfd = (struct pollfd){pipefd[0], POLLIN, 0};
    CU_ASSERT_EQUAL(poll(&pfd, 1, 5000), 1);
    CU_ASSERT_EQUAL(read(pipefd[0], &c, 1), 1);
    close(pipefd[0]);
    CU_ASSERT_EQUAL(c, 'o');
    CU_ASSERT_EQUAL(worker_owned(&shm, 1), 1);
    CU_ASSERT_EQUAL(cn__shm_inflight_owned(&shm), 2);

    atomic_store(&returned, 0);
    waiter_init(&wa, &w0, ka, fp, &returned);
    if (c == 'o' && waiter_start(&wa))
        blocked = waiters_blocked(&wa, 1, &shm, slot_of(&shm, ka), BLOCK_BOUND_MS);
    CU_ASSERT_EQUAL(blocked, 1);

    kill(pid, SIGKILL);
    CU_ASSERT_EQUAL(unit_reap_within(pid, 5000, &status), 0);
    CU_ASSERT(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    /* Dead is not released: the waiter sleeps on until the supervisor frees the slot. */
    CU_ASSERT_EQUAL(atomic_load(&returned), 0);

    CU_ASSERT_EQUAL(cn__inflight_free_worker(&shm, 1), 1);
    if (waiters_join(&wa, 1)) {
        CU_FAIL("the waiter did not come back; the region is leaked on purpose");
        return;
    }
    CU_ASSERT_EQUAL(wa.result, CN_INFLIGHT_RELEASED);
    CU_ASSERT_EQUAL(wa.waited, 1);
    CU_ASSERT(wa.returned_ms < wa.deadline_ms); /* woken, not timed out */
    CU_ASSERT_EQUAL(worker_owned(&shm, 1), 0);
    CU_ASSERT_EQUAL(cn__inflight_free_worker(&shm, 1), 0); /* nothing left to free */

    /* Worker 2's claim survived. */
    CU_ASSERT_EQUAL(cn__inflight_holds(&w2, &cb), 1);
    CU_ASSERT_EQUAL(worker_owned(&shm, 2), 1);

    waited = -1;
    CU_ASSERT_EQUAL(cn__inflight_acquire(&w0, ka, fp, LONG_LEASE_MS, cn__clock_mono_ms() + 1000,
                                         &waited, &ca),
                    CN_INFLIGHT_OWNED);
    CU_ASSERT_EQUAL(waited, 0);
    CU_ASSERT_EQUAL(worker_owned(&shm, 1), 0);
    CU_ASSERT_EQUAL(cn__inflight_release(&w0, &ca), 0);
    CU_ASSERT_EQUAL(cn__inflight_release(&w2, &cb), 0);
    CU_ASSERT_EQUAL(cn__shm_inflight_owned(&shm), 0);
    cn__shm_destroy(&shm);
}

/* ---- 7. region validation --------------------------------------------------------- */

/* Overwrites len bytes of the region's file at off with bytes, expects attach to refuse
 * it as CN_ECORRUPT, then restores the original bytes. */
static void
expect_corrupt_at(cn_shm_t *shm, off_t off, const void *bytes, size_t len)
{
    uint8_t saved[16];
    cn_shm_t other;

    CU_ASSERT_FATAL(len <= sizeof(saved));
    CU_ASSERT_EQUAL_FATAL(pread(shm->fd, saved, len, off), (ssize_t)len);
    CU_ASSERT_EQUAL_FATAL(pwrite(shm->fd, bytes, len, off), (ssize_t)len);
    CU_ASSERT_EQUAL(cn__shm_attach(shm->fd, &other), CN_ECORRUPT);
    CU_ASSERT_PTR_NULL(other.hdr);
    CU_ASSERT_EQUAL(other.fd, -1);
    cn__shm_destroy(&other); /* a refused attach leaves nothing to undo */
    CU_ASSERT_EQUAL_FATAL(pwrite(shm->fd, saved, len, off), (ssize_t)len);
}

static void
expect_corrupt_u32(cn_shm_t *shm, size_t field_off, uint32_t value)
{
    expect_corrupt_at(shm, (off_t)field_off, &value, sizeof(value));
}

static void
test_region_validation(void)
{
    static const struct {
        uint32_t nslots, nworkers, nops;
    } bad[] = {
        {0, 4, 1},  {3, 4, 1},
        {48, 4, 1}, {1u << 25, 4, 1},
        {64, 0, 1}, {64, CN_SHM_MAX_WORKERS + 1, 1},
        {64, 4, CN_SHM_MAX_OPS + 1},
    };
    cn_shm_t shm, other;
    cn_inflight_t a, b;
    cn_claim_t claim;
    cn_shm_header_t hdr;
    uint8_t key[CN_SHM_KEY_LEN], fpx[CN_SHM_FP_LEN], fpy[CN_SHM_FP_LEN];
    uint64_t magic = CN_SHM_MAGIC ^ 1;
    int fd, waited;

    /* Sizes out of range. */
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        memset(&shm, 0x5a, sizeof(shm));
        CU_ASSERT_EQUAL(cn__shm_create(bad[i].nslots, bad[i].nworkers, bad[i].nops, &shm),
                        -EINVAL);
        CU_ASSERT_PTR_NULL(shm.hdr);
        CU_ASSERT_EQUAL(shm.fd, -1);
        cn__shm_destroy(&shm);
    }
    /* The extremes that are in range. */
    CU_ASSERT_EQUAL_FATAL(cn__shm_create(1, CN_SHM_MAX_WORKERS, CN_SHM_MAX_OPS, &shm), 0);
    CU_ASSERT_EQUAL(shm.hdr->nslots, 1);
    CU_ASSERT_EQUAL(shm.hdr->nworkers, CN_SHM_MAX_WORKERS);
    cn__shm_destroy(&shm);

    CU_ASSERT_EQUAL_FATAL(cn__shm_create(64, 4, 2, &shm), 0);
    CU_ASSERT_EQUAL(shm.hdr->magic, CN_SHM_MAGIC);
    CU_ASSERT_EQUAL(shm.hdr->layout_version, CN_SHM_LAYOUT_VERSION);
    CU_ASSERT_EQUAL(shm.hdr->total_size, shm.size);
    CU_ASSERT_EQUAL(shm.hdr->slots_offset % 64, 0);
    CU_ASSERT_EQUAL(shm.hdr->counters_offset % 64, 0);
    CU_ASSERT(shm.fd >= 0);

    /* A valid region attaches, and the two mappings are the same memory. */
    CU_ASSERT_EQUAL_FATAL(cn__shm_attach(shm.fd, &other), 0);
    CU_ASSERT_EQUAL(other.hdr->nslots, 64);
    CU_ASSERT_EQUAL(other.hdr->nworkers, 4);
    CU_ASSERT_EQUAL(other.size, shm.size);
    CU_ASSERT_EQUAL(other.fd, -1); /* borrowed, not owned */
    cn__shm_count(&shm, 3, 1, CN_SHM_WAITS);
    CU_ASSERT_EQUAL(cn__shm_counter_sum(&other, 1, CN_SHM_WAITS), 1);
    a = (cn_inflight_t){&shm, 0, 0, NULL, 0};
    b = (cn_inflight_t){&other, 1, 0, NULL, 0};
    make_key(key, 0x21, 'V');
    make_fp(fpx, 'x');
    make_fp(fpy, 'y');
    CU_ASSERT_EQUAL(cn__inflight_acquire(&a, key, fpx, LONG_LEASE_MS, cn__clock_mono_ms() + 1000,
                                         &waited, &claim),
                    CN_INFLIGHT_OWNED);
    CU_ASSERT_EQUAL(cn__inflight_acquire(&b, key, fpy, LONG_LEASE_MS,
                                         cn__clock_mono_ms() + 1000, &waited, &claim),
                    CN_INFLIGHT_MISMATCH);
    CU_ASSERT_EQUAL(cn__inflight_holds(&b, &claim), 1); /* the claim, seen through b */
    CU_ASSERT_EQUAL(cn__inflight_release(&a, &claim), 0);
    cn__shm_destroy(&other);
    CU_ASSERT(fcntl(shm.fd, F_GETFD) >= 0); /* destroying the attachment left the fd */

    /* Header fields this build would not have written. */
    expect_corrupt_at(&shm, 0, &magic, sizeof(magic));
    expect_corrupt_u32(&shm, offsetof(cn_shm_header_t, layout_version),
                       CN_SHM_LAYOUT_VERSION + 1);
    expect_corrupt_u32(&shm, offsetof(cn_shm_header_t, nslots), 48);  /* not a power of 2 */
    expect_corrupt_u32(&shm, offsetof(cn_shm_header_t, nslots), 128); /* offsets disagree */
    expect_corrupt_u32(&shm, offsetof(cn_shm_header_t, nworkers), 0);
    expect_corrupt_u32(&shm, offsetof(cn_shm_header_t, slot_size), 64);
    expect_corrupt_u32(&shm, offsetof(cn_shm_header_t, counters_per_worker), 0);
    /* Restored: attaches again. */
    CU_ASSERT_EQUAL(cn__shm_attach(shm.fd, &other), 0);
    cn__shm_destroy(&other);

    /* Files too small: empty, 16 bytes, and a whole header for a larger region. */
    fd = memfd_create("cnerium-test-short", MFD_CLOEXEC);
    CU_ASSERT_FATAL(fd >= 0);
    CU_ASSERT_EQUAL(cn__shm_attach(fd, &other), CN_ECORRUPT);
    CU_ASSERT_EQUAL(ftruncate(fd, 16), 0);
    CU_ASSERT_EQUAL(cn__shm_attach(fd, &other), CN_ECORRUPT);
    memcpy(&hdr, shm.hdr, sizeof(hdr));
    CU_ASSERT_EQUAL(pwrite(fd, &hdr, sizeof(hdr), 0), (ssize_t)sizeof(hdr));
    CU_ASSERT_EQUAL(ftruncate(fd, (off_t)(hdr.total_size - 64)), 0);
    CU_ASSERT_EQUAL(cn__shm_attach(fd, &other), CN_ECORRUPT);
    CU_ASSERT_PTR_NULL(other.hdr);
    /* The same copy at its full size is a valid (empty) region. */
    CU_ASSERT_EQUAL(ftruncate(fd, (off_t)hdr.total_size), 0);
    CU_ASSERT_EQUAL(cn__shm_attach(fd, &other), 0);
    cn__shm_destroy(&other);
    close(fd);

    CU_ASSERT_EQUAL(cn__shm_attach(-1, &other), -EBADF); /* not a file: an errno */
    CU_ASSERT_PTR_NULL(other.hdr);
    cn__shm_destroy(&shm);
    CU_ASSERT_PTR_NULL(shm.hdr);
    CU_ASSERT_EQUAL(shm.fd, -1);
}

/* ---- 8. counters ------------------------------------------------------------------ */

#define COUNT_THREADS 3
#define COUNT_EACH 20000

typedef struct counting {
    const cn_shm_t *shm;
    unsigned worker;
} counting_t;

static void *
counting_main(void *arg)
{
    const counting_t *c = arg;

    for (unsigned i = 0; i < COUNT_EACH; i++)
        cn__shm_count(c->shm, c->worker, i % c->shm->hdr->nops, CN_OUTCOME_CONFLICT);
    return NULL;
}

static void
test_counters(void)
{
    static cn_shm_t shm;
    static counting_t cs[COUNT_THREADS];
    pthread_t th[COUNT_THREADS];
    const _Atomic uint64_t *prev = NULL;
    int stuck = 0;

    CU_ASSERT_EQUAL_FATAL(cn__shm_create(16, COUNT_THREADS, 4, &shm), 0);
    for (unsigned which = 0; which < CN_SHM_COUNTERS; which++)
        CU_ASSERT_EQUAL(cn__shm_counter_sum(&shm, -1, which), 0);

    for (int i = 0; i < 3; i++)
        cn__shm_count(&shm, 0, 0, CN_OUTCOME_EXECUTED);
    for (int i = 0; i < 2; i++)
        cn__shm_count(&shm, 1, 0, CN_OUTCOME_EXECUTED);
    cn__shm_count(&shm, 2, 3, CN_OUTCOME_EXECUTED);
    for (int i = 0; i < 4; i++)
        cn__shm_count(&shm, 1, 2, CN_OUTCOME_REPLAYED);
    for (int i = 0; i < 5; i++)
        cn__shm_count(&shm, 2, 2, CN_SHM_WAITS);
    cn__shm_count(&shm, 0, 3, CN_OUTCOME_FAILED);

    CU_ASSERT_EQUAL(cn__shm_counter_sum(&shm, 0, CN_OUTCOME_EXECUTED), 5);
    CU_ASSERT_EQUAL(cn__shm_counter_sum(&shm, 1, CN_OUTCOME_EXECUTED), 0);
    CU_ASSERT_EQUAL(cn__shm_counter_sum(&shm, 3, CN_OUTCOME_EXECUTED), 1);
    CU_ASSERT_EQUAL(cn__shm_counter_sum(&shm, -1, CN_OUTCOME_EXECUTED), 6);
    CU_ASSERT_EQUAL(cn__shm_counter_sum(&shm, 2, CN_OUTCOME_REPLAYED), 4);
    CU_ASSERT_EQUAL(cn__shm_counter_sum(&shm, 0, CN_OUTCOME_REPLAYED), 0);
    CU_ASSERT_EQUAL(cn__shm_counter_sum(&shm, -1, CN_OUTCOME_REPLAYED), 4);
    CU_ASSERT_EQUAL(cn__shm_counter_sum(&shm, 2, CN_SHM_WAITS), 5);
    CU_ASSERT_EQUAL(cn__shm_counter_sum(&shm, -1, CN_SHM_WAITS), 5);
    CU_ASSERT_EQUAL(cn__shm_counter_sum(&shm, -1, CN_OUTCOME_FAILED), 1);
    CU_ASSERT_EQUAL(cn__shm_counter_sum(&shm, 3, CN_OUTCOME_FAILED), 1);
    CU_ASSERT_EQUAL(cn__shm_counter_sum(&shm, -1, CN_OUTCOME_CONFLICT), 0);
    CU_ASSERT_EQUAL(cn__shm_counter_sum(&shm, -1, CN_OUTCOME_INVALID), 0);
    CU_ASSERT_EQUAL(atomic_load(cn__shm_counter(&shm, 1, 2, CN_OUTCOME_REPLAYED)), 4);

    /* Every (worker, op, counter) has a cell of its own inside the mapping, and each
     * worker's block starts on a cache line of its own. */
    for (unsigned w = 0; w < COUNT_THREADS; w++) {
        CU_ASSERT_EQUAL((uintptr_t)cn__shm_counter(&shm, w, 0, 0) % 64, 0);
        for (unsigned op = 0; op < 4; op++) {
            for (unsigned which = 0; which < CN_SHM_COUNTERS; which++) {
                const _Atomic uint64_t *cell = cn__shm_counter(&shm, w, op, which);

                CU_ASSERT(prev == NULL || cell > prev);
                CU_ASSERT((const char *)(cell + 1) <= (const char *)shm.hdr + shm.size);
                prev = cell;
            }
        }
    }

    /* Concurrent counting loses nothing. */
    for (unsigned i = 0; i < COUNT_THREADS; i++) {
        cs[i] = (counting_t){&shm, i};
        CU_ASSERT_EQUAL_FATAL(pthread_create(&th[i], NULL, counting_main, &cs[i]), 0);
    }
    for (unsigned i = 0; i < COUNT_THREADS; i++)
        stuck += join_within(th[i], JOIN_BOUND_MS) != 0;
    if (stuck) {
        CU_FAIL("a counting thread did not finish; the region is leaked on purpose");
        return;
    }
    CU_ASSERT_EQUAL(cn__shm_counter_sum(&shm, -1, CN_OUTCOME_CONFLICT),
                    (uint64_t)COUNT_THREADS * COUNT_EACH);
    CU_ASSERT_EQUAL(cn__shm_counter_sum(&shm, 0, CN_OUTCOME_CONFLICT),
                    (uint64_t)COUNT_THREADS * (COUNT_EACH / 4));
    /* The other counters did not move. */
    CU_ASSERT_EQUAL(cn__shm_counter_sum(&shm, -1, CN_OUTCOME_EXECUTED), 6);
    CU_ASSERT_EQUAL(cn__shm_counter_sum(&shm, -1, CN_SHM_WAITS), 5);
    cn__shm_destroy(&shm);
}

int
main(void)
{
    static const unit_test_t tests[] = {
        {"one process: owned, mismatch, busy, timeout, release, lost", test_single_process},
        {"try: park, wake fds on release and on a dead worker's free", test_try_park},
        {"a release wakes every waiter", test_waiters_woken},
        {"two keys in one slot: the second waits, then owns", test_slot_collision},
        {"a claim past its lease is taken over", test_lease_takeover},
        {"one owner at a time across processes", test_multiprocess_hammer},
        {"a dead worker's claims are freed and its waiters woken", test_owner_death},
        {"region create and attach validation", test_region_validation},
        {"per-worker counters and their sums", test_counters},
        {NULL, NULL},
    };

    cn__log_set_level(CN_LOG_ERROR); /* the takeover test logs a warning by design */
    return unit_run("inflight", tests);
}
