/*
 * shm/shm.h - the layout of the shared-memory region every server process maps.
 *
 * The supervisor creates the region (memfd + mmap, MAP_SHARED) before it forks, so every
 * child maps the same pages at the same address. Layout, in order, each part 64-byte
 * aligned:
 *
 *   header            magic, layout version, sizes (checked by every attach)
 *   workers[nworkers] one cache line per worker: pid, in-flight slots it owns now
 *   slots[nslots]     the in-flight table (shm/inflight.h), 128 bytes per slot
 *   counters          [nworkers][nops][CN_SHM_COUNTERS] uint64, one 64-byte-aligned
 *                     block per worker so workers never write the same cache line
 *   rings[nworkers]   each worker's record ring to the persister (shm/ring.h), ring_size
 *                     bytes apart (absent when ring_capacity is 0)
 *
 * Everything in the region is either written once before fork (the header) or accessed
 * through C11 atomics, except slot payloads, which follow the publication protocol of
 * shm/inflight.c. Changing any of it bumps CN_SHM_LAYOUT_VERSION.
 */
#ifndef CN_SHM_SHM_H
#define CN_SHM_SHM_H

#include <stdalign.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define CN_SHM_MAGIC UINT64_C(0x314d48534e52454e) /* "NERNSHM1" read as little endian */
#define CN_SHM_LAYOUT_VERSION 6u
#define CN_SHM_MAX_WORKERS 64 /* owner ids fit the state word's 8 bits with room */
#define CN_SHM_MAX_OPS 256
#define CN_SHM_KEY_LEN 32 /* SHA-256 of the store key: the slot's identity */
#define CN_SHM_FP_LEN 32  /* the request fingerprint */

/* Per-operation counters. The first five are the final outcome of a durable request
 * (each request counts exactly once); WAITS counts requests that slept on a duplicate. */
enum cn_shm_counter {
    CN_OUTCOME_EXECUTED = 0, /* the handler ran and answered below 500 */
    CN_OUTCOME_REPLAYED,     /* a stored response was returned */
    CN_OUTCOME_CONFLICT,     /* 409: body mismatch, or a duplicate in progress */
    CN_OUTCOME_INVALID,      /* 400: missing or malformed key */
    CN_OUTCOME_FAILED,       /* 5xx, from the handler or the layer; nothing stored */
    CN_OUTCOME_COUNT,
    CN_SHM_WAITS = CN_OUTCOME_COUNT,
    CN_SHM_COUNTERS
};

/* One in-flight slot. `state` is the only word that decides anything; see inflight.c for
 * its bits and the protocol. The payload is written only by the thread that moved the
 * state from FREE to WRITING, and read under the generation check. */
typedef struct cn_shm_slot {
    _Atomic uint32_t state;
    /* The payload: written by the claimer while the slot is WRITING, read by others under
     * the generation check (a sequence lock). Relaxed atomics, so a racing read is a
     * defined (if stale) read that the check then discards, never undefined behaviour. */
    _Atomic uint32_t owner_pid;      /* informational (logs) */
    _Atomic uint64_t started_ms;     /* monotonic clock, system-wide */
    _Atomic uint64_t lease_until_ms; /* monotonic; past it the claim may be taken over */
    _Atomic uint64_t key[CN_SHM_KEY_LEN / 8];
    _Atomic uint64_t fingerprint[CN_SHM_FP_LEN / 8];
    uint8_t reserved[128 - 4 - 4 - 8 - 8 - CN_SHM_KEY_LEN - CN_SHM_FP_LEN];
} cn_shm_slot_t;

typedef struct cn_shm_worker {
    alignas(64) _Atomic int64_t owned; /* in-flight slots this worker holds now */
    _Atomic int32_t pid;               /* 0 while the worker is not running */
    _Atomic uint32_t starts;           /* how many times this worker slot was started */
    _Atomic uint32_t parked; /* durable requests parked behind a duplicate now (gauge) */
} cn_shm_worker_t;

/* Histogram bucket upper bounds: fdatasync latency in microseconds, batch sizes in
 * records. The last bucket is +Inf. */
#define CN_SHM_SYNC_BUCKETS 12
#define CN_SHM_BATCH_BUCKETS 12
#define CN_SHM_SYNC_BOUNDS_US {50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000}
#define CN_SHM_BATCH_BOUNDS {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024}

/* The persister's figures, written by the persister only. */
typedef struct cn_shm_persist {
    alignas(64) _Atomic int32_t pid; /* 0 while not running */
    _Atomic uint32_t starts;
    _Atomic uint64_t batches;
    _Atomic uint64_t records;
    _Atomic uint64_t records_failed;     /* could not be stored: the client got 503 */
    _Atomic uint64_t duplicates_skipped; /* already applied before a persister restart */
    _Atomic uint64_t wal_bytes;          /* written to the WAL since the server started */
    _Atomic uint64_t applied_lsn;
    _Atomic uint64_t checkpoint_lsn;
    _Atomic uint64_t checkpoint_unix_ms;
    _Atomic uint64_t checkpoints;
    _Atomic uint64_t sync_us_sum;
    _Atomic uint64_t sync_buckets[CN_SHM_SYNC_BUCKETS];
    _Atomic uint64_t batch_buckets[CN_SHM_BATCH_BUCKETS];
    _Atomic uint64_t recovered_records;  /* replayed from the WAL at the last start */
    _Atomic uint64_t restarts;
    _Atomic uint64_t stream_conflicts;   /* records refused: an expected version did not hold */
} cn_shm_persist_t;

/* Events: the persister publishes the last committed event's seq; the broadcaster's
 * figures. */
typedef struct cn_shm_events {
    alignas(64) _Atomic uint64_t committed_seq; /* persister: events up to here are durable */
    _Atomic uint64_t committed_total;           /* persister: events committed since start */
    _Atomic uint64_t dropped;    /* workers: ordinary-route events lost to a full ring */
    _Atomic int32_t pid;         /* broadcaster, 0 while not running */
    _Atomic uint32_t starts;
    _Atomic uint64_t restarts;
    _Atomic uint64_t clients;    /* broadcaster: connected WebSocket clients */
    _Atomic uint64_t frames_sent;
    _Atomic uint64_t catchups;   /* events read back from LMDB for a client behind the cache */
    _Atomic uint64_t resets;     /* clients told to refetch: their position was pruned */
    _Atomic uint64_t slow_closes;
    _Atomic uint64_t client_errors; /* malformed client messages answered with an error */
    uint64_t reserved[4];
} cn_shm_events_t;

/* When events became durable: the persister's last CN_SHM_COMMITS - 1 batches of events, each
 * (first seq, last seq, CLOCK_MONOTONIC ns of the commit), written before it wakes the
 * broadcaster, which looks the commit time of an event up by seq (shm/commits.h). One
 * writer; each entry is a sequence lock (`ver` odd while it is written), so a reader
 * never takes a torn entry. */
#define CN_SHM_COMMITS 1024 /* about a second of batches at full load */
typedef struct cn_shm_commit {
    _Atomic uint64_t ver;
    _Atomic uint64_t first, last;
    _Atomic uint64_t ns;
} cn_shm_commit_t;

typedef struct cn_shm_commits {
    alignas(64) _Atomic uint64_t next; /* entries written so far; the next goes at next % N */
    cn_shm_commit_t entry[CN_SHM_COMMITS];
} cn_shm_commits_t;

/* The broadcaster's commit -> socket write latency of each event frame to each client,
 * in microseconds. The last bucket is +Inf. */
#define CN_SHM_DELIVERY_BUCKETS 19
#define CN_SHM_DELIVERY_BOUNDS_US                                                              \
    {50, 100, 200, 300, 500, 750, 1000, 1500, 2000, 3000, 5000, 7500, 10000, 15000, 20000,     \
     50000, 100000, 1000000}

typedef struct cn_shm_delivery {
    alignas(64) _Atomic uint64_t ns_sum;
    _Atomic uint64_t buckets[CN_SHM_DELIVERY_BUCKETS];
} cn_shm_delivery_t;

/* A shared store (--store postgresql://...): the claims and commits of every worker of
 * this host, written by their claimer and committer threads; latencies in microseconds
 * (bounds CN_SHM_SYNC_BOUNDS_US), records per commit (CN_SHM_BATCH_BOUNDS). */
typedef struct cn_shm_shared {
    alignas(64) _Atomic uint64_t claims;
    _Atomic uint64_t claim_failures; /* the database failed: the request got 503 */
    _Atomic uint64_t claim_us_sum;
    _Atomic uint64_t claim_buckets[CN_SHM_SYNC_BUCKETS];
    _Atomic uint64_t commits; /* transactions */
    _Atomic uint64_t commit_records;
    _Atomic uint64_t commit_failures; /* transactions that failed: their records got 503 */
    _Atomic uint64_t commit_us_sum;
    _Atomic uint64_t commit_buckets[CN_SHM_SYNC_BUCKETS];
    _Atomic uint64_t batch_buckets[CN_SHM_BATCH_BUCKETS];
    _Atomic uint64_t lost; /* records whose claim another host had taken over */
} cn_shm_shared_t;

/* Counts v in the histogram of n buckets with upper bounds (n - 1 of them; the last
 * bucket is +Inf). */
static inline void
cn__shm_observe(_Atomic uint64_t *buckets, const uint64_t *bounds, int n, uint64_t v)
{
    int i = 0;

    while (i < n - 1 && v > bounds[i])
        i++;
    atomic_fetch_add_explicit(&buckets[i], 1, memory_order_relaxed);
}

typedef struct cn_shm_header {
    uint64_t magic;
    uint32_t layout_version;
    uint32_t header_size;
    uint32_t slot_size;
    uint32_t worker_size;
    uint32_t nslots; /* a power of two */
    uint32_t nworkers;
    uint32_t nops;
    uint32_t counters_per_worker; /* nops * CN_SHM_COUNTERS, rounded up to 8 */
    uint64_t workers_offset;
    uint64_t slots_offset;
    uint64_t counters_offset;
    uint64_t rings_offset;
    uint64_t ring_capacity; /* data bytes per ring; 0 = no rings */
    uint64_t ring_size;     /* bytes from one ring to the next */
    uint64_t epoch;         /* random per server start: (epoch, worker, seq) names a record */
    uint64_t total_size;
    alignas(64) _Atomic uint64_t worker_restarts;
    _Atomic uint64_t lease_takeovers;
    cn_shm_persist_t persist;
    cn_shm_events_t events;
    cn_shm_commits_t commits;    /* persister */
    cn_shm_delivery_t delivery;  /* broadcaster */
    cn_shm_shared_t shared;      /* workers, with a shared store */
    /* 1 while the persister is about to sleep or sleeps on its eventfd: a worker that
     * pushed a record writes the eventfd only then (see workers/persister.c). */
    alignas(64) _Atomic uint32_t persister_idle;
} cn_shm_header_t;

_Static_assert(sizeof(cn_shm_slot_t) == 128, "an in-flight slot is two cache lines");
_Static_assert(offsetof(cn_shm_slot_t, state) == 0, "the state word leads the slot");
_Static_assert(sizeof(cn_shm_worker_t) == 64, "one cache line per worker");
_Static_assert(sizeof(cn_shm_header_t) % 64 == 0, "the header fills whole cache lines");
_Static_assert(sizeof(cn_shm_persist_t) % 64 == 0, "persister figures fill whole lines");
_Static_assert(sizeof(cn_shm_events_t) % 64 == 0, "event figures fill whole lines");
_Static_assert(sizeof(cn_shm_commits_t) % 64 == 0, "commit times fill whole lines");
_Static_assert(sizeof(cn_shm_delivery_t) % 64 == 0, "delivery figures fill whole lines");
_Static_assert(ATOMIC_INT_LOCK_FREE == 2 && ATOMIC_LLONG_LOCK_FREE == 2,
               "shared atomics must be lock-free to work across processes");
_Static_assert(CN_SHM_MAX_WORKERS <= 255, "owner ids are 8 bits in the state word");

#endif
