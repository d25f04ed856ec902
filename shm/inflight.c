/*
 * shm/inflight.c - the lock-free in-flight table (see inflight.h for the contract).
 *
 * The state word of a slot:
 *
 *   bits 0-1   phase: FREE, WRITING (a claimer is filling the payload), OWNED, COMMITTING
 *              (OWNED, and the handler has finished: its record is being made durable;
 *              the lease no longer applies, since the operation must not run again)
 *   bit  2     WAITERS: somebody sleeps on this word; whoever changes it next wakes them
 *   bits 3-10  owner: the worker id of the claimer
 *   bits 11-31 generation: bumped by every claim (and takeover), never by a release
 *
 * Claim: CAS FREE -> WRITING(gen+1, me), write the payload (key, fingerprint, lease), then
 * CAS WRITING -> OWNED (release order), so a reader that loads OWNED with acquire order
 * sees the whole payload. Readers copy the payload and load the word again: if anything
 * but WAITERS changed, the copy is discarded (a sequence lock on the generation).
 * Release: CAS OWNED(gen, me) -> FREE(gen); if WAITERS was set, FUTEX_WAKE everyone.
 * A claim whose generation or owner no longer matches has been lost (takeover after the
 * lease, or freed after its worker died): its release changes nothing.
 *
 * The region is shared between processes, so the futexes are not FUTEX_PRIVATE.
 */
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "cnerium/error.h"
#include "shm/inflight.h"
#include "support/bytes.h"
#include "support/clock.h"
#include "support/log.h"

#define PHASE_MASK 3u
#define PH_FREE 0u
#define PH_WRITING 1u
#define PH_OWNED 2u
#define PH_COMMITTING 3u
#define WAITERS (1u << 2)
#define OWNER_SHIFT 3
#define OWNER_MASK (0xffu << OWNER_SHIFT)
#define GEN_SHIFT 11
#define GEN_MASK (~0u << GEN_SHIFT)

static uint32_t
next_gen(uint32_t s)
{
    return (s & GEN_MASK) + (1u << GEN_SHIFT); /* wraps modulo 2^21 generations */
}

static unsigned
owner_of(uint32_t s)
{
    return (s & OWNER_MASK) >> OWNER_SHIFT;
}

static void
futex_wait(_Atomic uint32_t *word, uint32_t expected, uint64_t timeout_ms)
{
    struct timespec ts = {(time_t)(timeout_ms / 1000), (long)(timeout_ms % 1000) * 1000000L};

    /* EAGAIN (the word already changed), EINTR and ETIMEDOUT all mean: look again. */
    (void)syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT, expected, &ts, NULL, 0);
}

static void
futex_wake_all(_Atomic uint32_t *word)
{
    (void)syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

void
cn__inflight_wake_all(const int *wake_fds, unsigned nwake)
{
    uint64_t one = 1;

    for (unsigned i = 0; i < nwake; i++)
        if (wake_fds[i] >= 0 && write(wake_fds[i], &one, sizeof(one)) < 0 && errno != EAGAIN)
            cn_log_warn("waking worker %u: %s", i, strerror(errno));
}

/* Wakes whoever waits on a slot whose word just changed from one with WAITERS set:
 * sleepers on the futex and the workers' event loops. */
static void
wake_waiters(const cn_inflight_t *t, _Atomic uint32_t *word)
{
    futex_wake_all(word);
    if (t)
        cn__inflight_wake_all(t->wake_fds, t->nwake);
}

static void
store_words(_Atomic uint64_t *dst, const uint8_t *src, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint64_t w;
        memcpy(&w, src + 8 * i, 8);
        atomic_store_explicit(&dst[i], w, memory_order_relaxed);
    }
}

static void
load_words(uint8_t *dst, _Atomic uint64_t *src, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint64_t w = atomic_load_explicit(&src[i], memory_order_relaxed);
        memcpy(dst + 8 * i, &w, 8);
    }
}

/* Fills the payload of a slot the caller moved to WRITING as `mine`, then publishes it
 * as OWNED. Returns the published state (without WAITERS). */
static uint32_t
publish(cn_inflight_t *t, cn_shm_slot_t *sl, uint32_t mine, const uint8_t *key,
        const uint8_t *fp, uint32_t lease_ms, uint64_t now)
{
    uint32_t cur = mine, owned = (mine & ~(PHASE_MASK | WAITERS)) | PH_OWNED;
    int32_t pid;

    store_words(sl->key, key, CN_SHM_KEY_LEN / 8);
    store_words(sl->fingerprint, fp, CN_SHM_FP_LEN / 8);
    atomic_store_explicit(&sl->started_ms, now, memory_order_relaxed);
    atomic_store_explicit(&sl->lease_until_ms, now + lease_ms, memory_order_relaxed);
    /* The worker's pid as it announced it (no getpid() system call per claim). */
    pid = atomic_load_explicit(&t->shm->workers[t->worker].pid, memory_order_relaxed);
    atomic_store_explicit(&sl->owner_pid, (uint32_t)(pid > 0 ? pid : getpid()),
                          memory_order_relaxed);
    /* Only a waiter can change the word meanwhile, and only by adding WAITERS. */
    while (!atomic_compare_exchange_weak_explicit(&sl->state, &cur, owned | (cur & WAITERS),
                                                  memory_order_release, memory_order_relaxed))
        ;
    if (cur & WAITERS)
        wake_waiters(t, &sl->state);
    atomic_fetch_add_explicit(&t->shm->workers[t->worker].owned, 1, memory_order_relaxed);
    return owned;
}

/* acquire and try: with park set, returns CN_INFLIGHT_WAIT where acquire would sleep. */
static cn_inflight_result_t
claim_slot(cn_inflight_t *t, const uint8_t key[CN_SHM_KEY_LEN], const uint8_t fp[CN_SHM_FP_LEN],
           uint32_t lease_ms, uint64_t deadline_ms, int park, int *waited, cn_claim_t *claim,
           uint64_t *retry_at_ms)
{
    uint32_t idx = (uint32_t)(cn__get_le64(key) & (t->shm->hdr->nslots - 1u));
    cn_shm_slot_t *sl = &t->shm->slots[idx];
    uint32_t watched_gen = 0;
    int watching = 0; /* we saw our own key in flight and are waiting for it */

    *waited = 0;
    for (;;) {
        uint32_t s = atomic_load_explicit(&sl->state, memory_order_acquire);
        uint64_t now = cn__clock_mono_ms(), wait_until = park ? UINT64_MAX : deadline_ms;
        uint32_t phase = s & PHASE_MASK;

        if (watching && (s & GEN_MASK) != watched_gen)
            return CN_INFLIGHT_RELEASED; /* its owner released, died or lost the lease */

        if (phase == PH_FREE && watching)
            return CN_INFLIGHT_RELEASED; /* its record is stored now, or was not kept */
        if (phase == PH_FREE) {
            uint32_t mine = next_gen(s) | ((uint32_t)t->worker << OWNER_SHIFT) | PH_WRITING;
            if (!atomic_compare_exchange_strong_explicit(&sl->state, &s, mine,
                                                         memory_order_acquire,
                                                         memory_order_relaxed))
                continue;
            claim->slot = idx;
            claim->state = publish(t, sl, mine, key, fp, lease_ms, now);
            return CN_INFLIGHT_OWNED;
        }

        if (phase == PH_OWNED || phase == PH_COMMITTING) {
            uint8_t skey[CN_SHM_KEY_LEN], sfp[CN_SHM_FP_LEN];
            uint64_t lease_until;

            load_words(skey, sl->key, CN_SHM_KEY_LEN / 8);
            load_words(sfp, sl->fingerprint, CN_SHM_FP_LEN / 8);
            lease_until = atomic_load_explicit(&sl->lease_until_ms, memory_order_relaxed);
            atomic_thread_fence(memory_order_acquire);
            if ((atomic_load_explicit(&sl->state, memory_order_relaxed) & ~WAITERS) !=
                (s & ~WAITERS))
                continue; /* changed while we copied: the copy may be torn */

            if (!memcmp(skey, key, CN_SHM_KEY_LEN)) {
                if (memcmp(sfp, fp, CN_SHM_FP_LEN))
                    return CN_INFLIGHT_MISMATCH;
                if (t->reject)
                    return CN_INFLIGHT_BUSY;
                if (!watching) {
                    watching = 1;
                    watched_gen = s & GEN_MASK;
                }
            }
            /* Only a duplicate may take over an expired claim: a different key that
             * shares the slot would otherwise void an unrelated operation's result. */
            if (watching && phase == PH_OWNED && now >= lease_until) {
                /* The owner ran past its lease: its claim is ours now. It finds out at
                 * its next check and neither stores nor sends its response. */
                uint32_t mine = next_gen(s) | ((uint32_t)t->worker << OWNER_SHIFT) |
                                PH_WRITING | (s & WAITERS);
                if (!atomic_compare_exchange_strong_explicit(&sl->state, &s, mine,
                                                             memory_order_acquire,
                                                             memory_order_relaxed))
                    continue;
                atomic_fetch_add_explicit(&t->shm->hdr->lease_takeovers, 1,
                                          memory_order_relaxed);
                if (owner_of(s) < t->shm->hdr->nworkers)
                    atomic_fetch_sub_explicit(&t->shm->workers[owner_of(s)].owned, 1,
                                              memory_order_relaxed);
                cn_log_warn("in-flight slot %u: worker %u ran past its %u ms lease; its "
                            "claim is taken over", idx, owner_of(s), lease_ms);
                claim->slot = idx;
                claim->state = publish(t, sl, mine, key, fp, lease_ms, now);
                return CN_INFLIGHT_OWNED;
            }
            if (watching && phase == PH_OWNED && lease_until < wait_until)
                wait_until = lease_until;
        }
        /* WRITING lasts a few stores; its publish wakes us like a release would. */

        if (!park && now >= deadline_ms)
            return CN_INFLIGHT_TIMEOUT;
        if (!(s & WAITERS)) {
            if (!atomic_compare_exchange_strong_explicit(&sl->state, &s, s | WAITERS,
                                                         memory_order_relaxed,
                                                         memory_order_relaxed))
                continue;
            s |= WAITERS;
        }
        if (park) {
            /* Marked: the next change of the word writes the wake fds. */
            *retry_at_ms = wait_until;
            return CN_INFLIGHT_PARK;
        }
        *waited = 1;
        futex_wait(&sl->state, s, wait_until > now ? wait_until - now : 1);
    }
}

cn_inflight_result_t
cn__inflight_acquire(cn_inflight_t *t, const uint8_t key[CN_SHM_KEY_LEN],
                     const uint8_t fp[CN_SHM_FP_LEN], uint32_t lease_ms, uint64_t deadline_ms,
                     int *waited, cn_claim_t *claim)
{
    return claim_slot(t, key, fp, lease_ms, deadline_ms, 0, waited, claim, NULL);
}

cn_inflight_result_t
cn__inflight_try(cn_inflight_t *t, const uint8_t key[CN_SHM_KEY_LEN],
                 const uint8_t fp[CN_SHM_FP_LEN], uint32_t lease_ms, cn_claim_t *claim,
                 uint64_t *retry_at_ms)
{
    int waited;

    *retry_at_ms = UINT64_MAX;
    return claim_slot(t, key, fp, lease_ms, 0, 1, &waited, claim, retry_at_ms);
}

int
cn__inflight_holds(cn_inflight_t *t, const cn_claim_t *claim)
{
    uint32_t s = atomic_load_explicit(&t->shm->slots[claim->slot].state, memory_order_acquire);

    return (s & ~WAITERS) == claim->state;
}

int
cn__inflight_commit(cn_inflight_t *t, cn_claim_t *claim)
{
    cn_shm_slot_t *sl = &t->shm->slots[claim->slot];
    uint32_t cur = atomic_load_explicit(&sl->state, memory_order_relaxed);
    uint32_t committing = (claim->state & ~PHASE_MASK) | PH_COMMITTING;

    do {
        if ((cur & ~WAITERS) == committing)
            return 0;
        if ((cur & ~WAITERS) != claim->state)
            return CN_ELOST;
    } while (!atomic_compare_exchange_weak_explicit(&sl->state, &cur,
                                                    committing | (cur & WAITERS),
                                                    memory_order_release,
                                                    memory_order_relaxed));
    claim->state = committing;
    return 0;
}

int
cn__inflight_release(cn_inflight_t *t, const cn_claim_t *claim)
{
    cn_shm_slot_t *sl = &t->shm->slots[claim->slot];
    uint32_t cur = atomic_load_explicit(&sl->state, memory_order_relaxed);
    uint32_t freed = (claim->state & GEN_MASK) | PH_FREE;

    do {
        if ((cur & ~WAITERS) != claim->state)
            return CN_ELOST; /* the takeover or free already moved the count */
    } while (!atomic_compare_exchange_weak_explicit(&sl->state, &cur, freed,
                                                    memory_order_release,
                                                    memory_order_relaxed));
    atomic_fetch_sub_explicit(&t->shm->workers[t->worker].owned, 1, memory_order_relaxed);
    if (cur & WAITERS)
        wake_waiters(t, &sl->state);
    return 0;
}

size_t
cn__inflight_free_worker(cn_shm_t *shm, unsigned worker)
{
    size_t freed = 0;

    for (uint32_t i = 0; i < shm->hdr->nslots; i++) {
        cn_shm_slot_t *sl = &shm->slots[i];
        uint32_t cur = atomic_load_explicit(&sl->state, memory_order_relaxed);

        while ((cur & PHASE_MASK) != PH_FREE && owner_of(cur) == worker) {
            if (atomic_compare_exchange_weak_explicit(&sl->state, &cur,
                                                      (cur & GEN_MASK) | PH_FREE,
                                                      memory_order_release,
                                                      memory_order_relaxed)) {
                freed++;
                if (cur & WAITERS)
                    wake_waiters(NULL, &sl->state); /* the caller writes the wake fds */
                break;
            }
        }
    }
    atomic_store_explicit(&shm->workers[worker].owned, 0, memory_order_relaxed);
    return freed;
}
