/*
 * shm/inflight.h - the in-flight table: at most one request per (scope, operation, key)
 * runs its handler at a time, across every thread of every worker process.
 *
 * Lock-free: a slot is decided by compare-and-swap on its 32-bit state word; nothing
 * takes a mutex. A request that has to wait sleeps on a futex on that word and is woken
 * by the release (no spinning, no polling). The table is direct-mapped by the key's
 * hash: a slot held by a different key is waited on like a busy one, which is rare with
 * a table much larger than the requests in flight and needs no tombstones.
 *
 * A claim is held from before the handler runs until the store holds its record (or the
 * response is known not to be stored), so a duplicate always finds the slot or the
 * record. A claim ends by cn__inflight_release, by cn__inflight_free_worker when its
 * worker died, or by takeover when its lease ran out and a duplicate (same key) wants
 * it; a different key sharing the slot never takes a claim over, it waits.
 */
#ifndef CN_SHM_INFLIGHT_H
#define CN_SHM_INFLIGHT_H

#include <stddef.h>
#include <stdint.h>

#include "shm/region.h"

typedef struct cn_inflight {
    cn_shm_t *shm;    /* borrowed */
    unsigned worker;  /* this process's worker id, < shm->hdr->nworkers */
    int reject;       /* 1: a same-key, same-body duplicate is refused (BUSY), not waited */
    /* Eventfds (borrowed, nwake of them: one per worker process) written, besides the
     * futex wake, whenever a slot somebody waits on changes: the event loops of the
     * workers sleep on them, not on futexes (see cn__inflight_try). */
    const int *wake_fds;
    unsigned nwake;
} cn_inflight_t;

/* What a successful acquire holds. */
typedef struct cn_claim {
    uint32_t slot;
    uint32_t state; /* the state word as published (without the waiters bit) */
} cn_claim_t;

typedef enum cn_inflight_result {
    CN_INFLIGHT_OWNED = 0, /* the caller owns the key: run, store, then release */
    CN_INFLIGHT_RELEASED,  /* the key's owner finished (or died): look the store up again */
    CN_INFLIGHT_MISMATCH,  /* the key is in flight with a different fingerprint */
    CN_INFLIGHT_BUSY,      /* reject mode: the key is in flight with the same fingerprint */
    CN_INFLIGHT_TIMEOUT,   /* the wait reached deadline_ms */
    CN_INFLIGHT_PARK,      /* cn__inflight_try: the slot is held; the caller is a waiter */
} cn_inflight_result_t;

/* Claims key for a request with fingerprint fp, for lease_ms. Waits (futex) while the
 * key, or a different key in the same slot, is held, until the monotonic clock reaches
 * deadline_ms. Sets *waited to 1 when it slept at least once. */
cn_inflight_result_t cn__inflight_acquire(cn_inflight_t *t, const uint8_t key[CN_SHM_KEY_LEN],
                                          const uint8_t fp[CN_SHM_FP_LEN], uint32_t lease_ms,
                                          uint64_t deadline_ms, int *waited, cn_claim_t *claim);

/* Like cn__inflight_acquire, without sleeping: where acquire would wait, this marks the
 * slot as waited on and returns CN_INFLIGHT_PARK, and the slot's next change writes every
 * wake fd. *retry_at_ms is then the monotonic time at which the holder's lease runs out
 * (try again then: a duplicate takes an expired claim over), or UINT64_MAX. An event
 * loop parks the request and calls this again after a wake or at *retry_at_ms. */
cn_inflight_result_t cn__inflight_try(cn_inflight_t *t, const uint8_t key[CN_SHM_KEY_LEN],
                                      const uint8_t fp[CN_SHM_FP_LEN], uint32_t lease_ms,
                                      cn_claim_t *claim, uint64_t *retry_at_ms);

/* Writes every wake fd of t (see cn_inflight_t). For the supervisor after freeing a dead
 * worker's slots, which may have had waiters. */
void cn__inflight_wake_all(const int *wake_fds, unsigned nwake);

/* 1 while the claim is still the caller's (not taken over nor freed). */
int cn__inflight_holds(cn_inflight_t *t, const cn_claim_t *claim);

/* The handler has finished: from now on the claim cannot be taken over when its lease
 * runs out (its record is being made durable; running the operation again would be a
 * second execution). Returns 0 (claim updated), or CN_ELOST when it had already been
 * taken over or freed. */
int cn__inflight_commit(cn_inflight_t *t, cn_claim_t *claim);

/* Ends the claim and wakes its waiters. Returns 0, or CN_ELOST when the claim had
 * already been taken over or freed (nothing is changed then). */
int cn__inflight_release(cn_inflight_t *t, const cn_claim_t *claim);

/* Frees every slot owned by worker (which must not be running) and wakes their waiters.
 * Called by the supervisor after the worker died. Returns the number of slots freed. */
size_t cn__inflight_free_worker(cn_shm_t *shm, unsigned worker);

#endif
