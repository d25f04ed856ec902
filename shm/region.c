/*
 * shm/region.c - the shared-memory region: one memfd, mapped MAP_SHARED.
 */
#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cnerium/error.h"
#include "shm/region.h"

static uint64_t
align64(uint64_t n)
{
    return (n + 63) & ~(uint64_t)63;
}

/* The header this build would write for these sizes. */
static void
plan(uint32_t nslots, uint32_t nworkers, uint32_t nops, uint64_t ring_capacity,
     cn_shm_header_t *h)
{
    memset(h, 0, sizeof(*h));
    h->magic = CN_SHM_MAGIC;
    h->layout_version = CN_SHM_LAYOUT_VERSION;
    h->header_size = sizeof(cn_shm_header_t);
    h->slot_size = sizeof(cn_shm_slot_t);
    h->worker_size = sizeof(cn_shm_worker_t);
    h->nslots = nslots;
    h->nworkers = nworkers;
    h->nops = nops;
    h->counters_per_worker = (uint32_t)((nops * CN_SHM_COUNTERS + 7u) & ~7u);
    h->workers_offset = align64(sizeof(cn_shm_header_t));
    h->slots_offset = align64(h->workers_offset + (uint64_t)nworkers * sizeof(cn_shm_worker_t));
    h->counters_offset = align64(h->slots_offset + (uint64_t)nslots * sizeof(cn_shm_slot_t));
    h->rings_offset = align64(h->counters_offset + (uint64_t)nworkers * h->counters_per_worker *
                                                       sizeof(uint64_t));
    h->ring_capacity = ring_capacity;
    h->ring_size = ring_capacity ? align64(sizeof(cn_ring_t) + ring_capacity) : 0;
    h->total_size = h->rings_offset + (uint64_t)nworkers * h->ring_size;
}

static int
valid_sizes(uint32_t nslots, uint32_t nworkers, uint32_t nops, uint64_t ring_capacity)
{
    return nslots >= 1 && nslots <= (1u << 24) && !(nslots & (nslots - 1)) && nworkers >= 1 &&
           nworkers <= CN_SHM_MAX_WORKERS && nops <= CN_SHM_MAX_OPS &&
           (ring_capacity == 0 || (ring_capacity >= 4096 && ring_capacity <= (1ull << 30) &&
                                   !(ring_capacity & (ring_capacity - 1))));
}

static void
address(cn_shm_t *shm, void *base, size_t size, int fd)
{
    char *p = base;

    shm->hdr = base;
    shm->workers = (cn_shm_worker_t *)(void *)(p + shm->hdr->workers_offset);
    shm->slots = (cn_shm_slot_t *)(void *)(p + shm->hdr->slots_offset);
    shm->counters = (_Atomic uint64_t *)(void *)(p + shm->hdr->counters_offset);
    shm->rings = shm->hdr->ring_size ? (uint8_t *)(p + shm->hdr->rings_offset) : NULL;
    shm->size = size;
    shm->fd = fd;
}

int
cn__shm_create(uint32_t nslots, uint32_t nworkers, uint32_t nops, cn_shm_t *out)
{
    return cn__shm_create_rings(nslots, nworkers, nops, 0, out);
}

int
cn__shm_create_rings(uint32_t nslots, uint32_t nworkers, uint32_t nops,
                     uint64_t ring_capacity, cn_shm_t *out)
{
    cn_shm_header_t h;
    void *base;
    int fd;

    memset(out, 0, sizeof(*out));
    out->fd = -1;
    if (!valid_sizes(nslots, nworkers, nops, ring_capacity))
        return -EINVAL;
    plan(nslots, nworkers, nops, ring_capacity, &h);
    if (getrandom(&h.epoch, sizeof(h.epoch), 0) != (ssize_t)sizeof(h.epoch))
        h.epoch = ((uint64_t)getpid() << 32) ^ (uint64_t)time(NULL);
    /* Not MFD_CLOEXEC: nothing execs, and children inherit the fd with the mapping. */
    fd = memfd_create("cnerium-shm", 0);
    if (fd < 0)
        return -errno;
    if (ftruncate(fd, (off_t)h.total_size)) {
        int err = -errno;
        close(fd);
        return err;
    }
    base = mmap(NULL, h.total_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) {
        int err = -errno;
        close(fd);
        return err;
    }
    /* A fresh memfd reads as zeros: every slot FREE, every counter 0. */
    memcpy(base, &h, sizeof(h));
    address(out, base, h.total_size, fd);
    for (uint32_t w = 0; ring_capacity && w < nworkers; w++)
        cn__ring_init(cn__shm_ring(out, w), ring_capacity);
    return 0;
}

int
cn__shm_attach(int fd, cn_shm_t *out)
{
    cn_shm_header_t h, want;
    struct stat st;
    void *base;

    memset(out, 0, sizeof(*out));
    out->fd = -1;
    if (fstat(fd, &st))
        return -errno;
    if ((size_t)st.st_size < sizeof(h) || pread(fd, &h, sizeof(h), 0) != (ssize_t)sizeof(h))
        return CN_ECORRUPT;
    if (h.magic != CN_SHM_MAGIC || h.layout_version != CN_SHM_LAYOUT_VERSION ||
        !valid_sizes(h.nslots, h.nworkers, h.nops, h.ring_capacity))
        return CN_ECORRUPT;
    plan(h.nslots, h.nworkers, h.nops, h.ring_capacity, &want);
    if (h.header_size != want.header_size || h.slot_size != want.slot_size ||
        h.worker_size != want.worker_size || h.counters_per_worker != want.counters_per_worker ||
        h.workers_offset != want.workers_offset || h.slots_offset != want.slots_offset ||
        h.counters_offset != want.counters_offset || h.rings_offset != want.rings_offset ||
        h.ring_size != want.ring_size || h.total_size != want.total_size ||
        (uint64_t)st.st_size < h.total_size)
        return CN_ECORRUPT;
    base = mmap(NULL, h.total_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED)
        return -errno;
    address(out, base, h.total_size, -1);
    return 0;
}

void
cn__shm_destroy(cn_shm_t *shm)
{
    if (shm->hdr)
        munmap(shm->hdr, shm->size);
    if (shm->fd >= 0)
        close(shm->fd);
    memset(shm, 0, sizeof(*shm));
    shm->fd = -1;
}

uint64_t
cn__shm_counter_sum(const cn_shm_t *shm, int op, unsigned which)
{
    uint64_t sum = 0;

    for (unsigned w = 0; w < shm->hdr->nworkers; w++) {
        for (unsigned o = 0; o < shm->hdr->nops; o++) {
            if (op < 0 || (unsigned)op == o)
                sum += atomic_load_explicit(cn__shm_counter(shm, w, o, which),
                                            memory_order_relaxed);
        }
    }
    return sum;
}

uint64_t
cn__shm_inflight_owned(const cn_shm_t *shm)
{
    int64_t sum = 0;

    for (unsigned w = 0; w < shm->hdr->nworkers; w++)
        sum += atomic_load_explicit(&shm->workers[w].owned, memory_order_relaxed);
    return sum > 0 ? (uint64_t)sum : 0;
}
