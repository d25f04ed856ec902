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

/* The commit time of event seq into *ns. Returns 0, or -1 when it is not among the last
 * CN_SHM_COMMITS batches (older, not committed yet, or overwritten while being read). */
static inline int
cn__shm_commit_lookup(const cn_shm_commits_t *c, uint64_t seq, uint64_t *ns)
{
    cn_shm_commits_t *w = (cn_shm_commits_t *)c; /* atomic loads of a const object */
    uint64_t n = atomic_load_explicit(&w->next, memory_order_acquire);

    /* Newest first: the broadcaster asks right after the wake-up. */
    for (uint64_t i = 0; i < CN_SHM_COMMITS && i < n; i++) {
        cn_shm_commit_t *e = &w->entry[(n - 1 - i) % CN_SHM_COMMITS];
        uint64_t v1 = atomic_load_explicit(&e->ver, memory_order_acquire);
        uint64_t first = atomic_load_explicit(&e->first, memory_order_relaxed);
        uint64_t last = atomic_load_explicit(&e->last, memory_order_relaxed);
        uint64_t t = atomic_load_explicit(&e->ns, memory_order_relaxed);

        atomic_thread_fence(memory_order_acquire); /* the fields before the second ver */
        if ((v1 & 1) || v1 != atomic_load_explicit(&e->ver, memory_order_relaxed))
            continue;
        if (first <= seq && seq <= last) {
            *ns = t;
            return 0;
        }
        if (last < seq && v1)
            return -1; /* the newer batches are past; older ones cannot hold it */
    }
    return -1;
}

#endif
