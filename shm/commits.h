/*
 * shm/commits.h - the commit times of recent event batches (cn_shm_commits_t in shm.h).
 *
 * The persister (the one writer) publishes each committed batch of events before it
 * wakes the broadcaster; the broadcaster (or anyone) looks an event's commit time up by
 * its seq. Lock-free: each entry is a sequence lock, `ver` odd while the writer fills
 * it, and a reader keeps what it read only if `ver` was even and unchanged around its
 * reads. The fields are relaxed atomics, so a read racing the writer is defined (and
 * then discarded), never undefined behaviour.
 */
#ifndef CN_SHM_COMMITS_H
#define CN_SHM_COMMITS_H

#include <stdatomic.h>
#include <stdint.h>

#include "shm/shm.h"

/* Records that events first..last became durable at ns (CLOCK_MONOTONIC). One writer. */
static inline void
cn__shm_commit_publish(cn_shm_commits_t *c, uint64_t first, uint64_t last, uint64_t ns)
{
    uint64_t n = atomic_load_explicit(&c->next, memory_order_relaxed);
    cn_shm_commit_t *e = &c->entry[n % CN_SHM_COMMITS];
    uint64_t v = atomic_load_explicit(&e->ver, memory_order_relaxed);

    atomic_store_explicit(&e->ver, v + 1, memory_order_relaxed);
    atomic_thread_fence(memory_order_release); /* odd before any field changes */
    atomic_store_explicit(&e->first, first, memory_order_relaxed);
    atomic_store_explicit(&e->last, last, memory_order_relaxed);
    atomic_store_explicit(&e->ns, ns, memory_order_relaxed);
    atomic_store_explicit(&e->ver, v + 2, memory_order_release);
    atomic_store_explicit(&c->next, n + 1, memory_order_release);
}

/* Reads entry i (counted from the first ever written) into first/last/ns. Returns 0, or
 * -1 when the writer was changing it. */
static inline int
cn__shm_commit_read(cn_shm_commits_t *c, uint64_t i, uint64_t *first, uint64_t *last,
                    uint64_t *ns)
{
    cn_shm_commit_t *e = &c->entry[i % CN_SHM_COMMITS];
    uint64_t v = atomic_load_explicit(&e->ver, memory_order_acquire);

    *first = atomic_load_explicit(&e->first, memory_order_relaxed);
    *last = atomic_load_explicit(&e->last, memory_order_relaxed);
    *ns = atomic_load_explicit(&e->ns, memory_order_relaxed);
    atomic_thread_fence(memory_order_acquire); /* the fields before the second ver */
    return (v & 1) || v != atomic_load_explicit(&e->ver, memory_order_relaxed) ? -1 : 0;
}

/* The commit time of event seq into *ns. Returns 0, or -1 when it is not among the last
 * CN_SHM_COMMITS - 1 batches (older, not committed yet, or overwritten while being read).
 * Batches are in seq order, so a binary search over the entries; the oldest slot is left
 * out, it is the one the writer fills next. */
static inline int
cn__shm_commit_lookup(const cn_shm_commits_t *cc, uint64_t seq, uint64_t *ns)
{
    cn_shm_commits_t *c = (cn_shm_commits_t *)cc; /* atomic loads of a const object */
    uint64_t n = atomic_load_explicit(&c->next, memory_order_acquire);
    uint64_t lo = n >= CN_SHM_COMMITS ? n - (CN_SHM_COMMITS - 1) : 0, hi = n;
    uint64_t first, last, t;

    /* The first entry in [lo, hi) whose last seq is >= seq. */
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2;
        if (cn__shm_commit_read(c, mid, &first, &last, &t))
            return -1;
        if (last < seq)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == n || cn__shm_commit_read(c, lo, &first, &last, &t) || first > seq ||
        last < seq)
        return -1;
    /* Still in the window: the writer did not lap the entry while we searched. */
    if (atomic_load_explicit(&c->next, memory_order_acquire) - lo >= CN_SHM_COMMITS)
        return -1;
    *ns = t;
    return 0;
}

#endif
