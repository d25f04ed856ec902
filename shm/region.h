/*
 * shm/region.h - create, attach and address the shared-memory region (shm/shm.h).
 */
#ifndef CN_SHM_REGION_H
#define CN_SHM_REGION_H

#include "shm/ring.h"
#include "shm/shm.h"

typedef struct cn_shm {
    cn_shm_header_t *hdr; /* the mapping starts here */
    cn_shm_worker_t *workers;
    cn_shm_slot_t *slots;
    _Atomic uint64_t *counters;
    uint8_t *rings; /* NULL when the region has none */
    size_t size;
    int fd; /* the memfd; -1 once closed */
} cn_shm_t;

/* Creates a zeroed region for nslots (a power of two) in-flight slots, nworkers workers
 * and nops operations, and maps it shared. Returns 0 or a negative error (-EINVAL for
 * sizes out of range). The mapping survives fork. */
int cn__shm_create(uint32_t nslots, uint32_t nworkers, uint32_t nops, cn_shm_t *out);

/* The same, with one record ring of ring_capacity bytes (a power of two, >= 4096; 0 for
 * none) per worker, and a fresh random epoch. */
int cn__shm_create_rings(uint32_t nslots, uint32_t nworkers, uint32_t nops,
                         uint64_t ring_capacity, cn_shm_t *out);

/* Worker w's record ring (the region must have rings). */
static inline cn_ring_t *
cn__shm_ring(const cn_shm_t *shm, unsigned w)
{
    return (cn_ring_t *)(void *)(shm->rings + (size_t)w * shm->hdr->ring_size);
}

/* Maps an existing region from its memfd and validates it (magic, layout version, sizes
 * of this build, offsets within the file). Returns 0, CN_ECORRUPT or a negative error. */
int cn__shm_attach(int fd, cn_shm_t *out);

/* Unmaps and closes. Accepts a zeroed struct. */
void cn__shm_destroy(cn_shm_t *shm);

/* The counter `which` (enum cn_shm_counter) of operation op in worker's block. */
static inline _Atomic uint64_t *
cn__shm_counter(const cn_shm_t *shm, unsigned worker, unsigned op, unsigned which)
{
    return &shm->counters[(size_t)worker * shm->hdr->counters_per_worker +
                          (size_t)op * CN_SHM_COUNTERS + which];
}

/* Adds one to a counter (relaxed: counters order nothing). */
static inline void
cn__shm_count(const cn_shm_t *shm, unsigned worker, unsigned op, unsigned which)
{
    atomic_fetch_add_explicit(cn__shm_counter(shm, worker, op, which), 1,
                              memory_order_relaxed);
}

/* Sum of a counter over all workers; op < 0 sums over all operations too. */
uint64_t cn__shm_counter_sum(const cn_shm_t *shm, int op, unsigned which);

/* In-flight slots owned right now, over all workers. */
uint64_t cn__shm_inflight_owned(const cn_shm_t *shm);

#endif
