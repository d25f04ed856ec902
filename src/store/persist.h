/*
 * store/persist.h - the persister's engine: record rings -> WAL -> LMDB -> acks.
 *
 * The persister process (workers/persister.c) owns one engine. The engine does the
 * logic and the synchronous parts (recovery, LMDB, checkpoints, sweeps, segment roll);
 * the process main does the waiting and submits each batch's write and sync (pwrite +
 * fdatasync, io_uring, or one RWF_DSYNC write with --wal-io direct), then hands the
 * result back. One batch is in flight at a time: the finished one is applied to LMDB and
 * acked before the next is gathered, and records that arrive meanwhile wait in the rings
 * for that next batch (the group commit). Two batches in flight were measured
 * (bench/wal_io, uring-df2): more batches per second, but each waits longer.
 *
 * The record a worker hands over through its ring and the WAL payload that carries it
 * are laid out in store/format.h.
 */
#ifndef CN_STORE_PERSIST_H
#define CN_STORE_PERSIST_H

#include <stddef.h>
#include <stdint.h>

#include "shm/region.h"
#include "store/format.h"

typedef struct cn_persist_config {
    const char *data_dir;     /* lmdb/ and wal/ live here */
    size_t map_size;          /* LMDB map size */
    uint64_t segment_size;    /* WAL segment bytes */
    size_t batch_max_bytes;   /* WAL bytes per batch, at most */
    uint32_t sweep_interval_ms;
    uint64_t checkpoint_bytes; /* checkpoint after this many WAL bytes */
    uint64_t events_retain;    /* keep at most this many events (0: no limit) */
    uint64_t events_retain_ms; /* and none older than this (0: no limit) */
    int broadcast_efd;         /* written after events were committed; -1: none */
    /* 1: write the WAL with O_DIRECT, each batch in whole blocks with RWF_DSYNC (no
     * fdatasync); falls back to buffered writes + fdatasync where the file system refuses
     * O_DIRECT (cn__persist_direct tells). Recovery reads logs written either way. */
    int wal_direct;
} cn_persist_config_t;

typedef struct cn_persister cn_persister_t;

/* What one batch writes: len bytes at offset of fd. With dsync, fd is open with O_DIRECT
 * and buf, len and offset are multiples of CN_WAL_BLOCK: the write is made durable by
 * RWF_DSYNC, without an fdatasync. */
typedef struct cn_persist_io {
    int fd;
    const void *buf;
    size_t len;
    uint64_t offset;
    int dsync;
} cn_persist_io_t;

/* Opens the store (unsynced commits), replays the WAL after the store's applied LSN,
 * checkpoints, and opens the segment to write. A corrupt WAL middle fails with
 * CN_ECORRUPT and a message in err. Returns 0 or an error. */
int cn__persist_open(cn_shm_t *shm, const cn_persist_config_t *cfg, cn_persister_t **out,
                     char *err, size_t errlen);

void cn__persist_close(cn_persister_t *p);

/* Takes what waits in the rings into the next batch (records already applied by an
 * earlier incarnation are acked without being written again). Returns 1 with *io set
 * when there is something to write; 0 when there is nothing to write (acks for skipped
 * duplicates may still be pending: call cn__persist_done with 0 then); or an error. */
int cn__persist_gather(cn_persister_t *p, cn_persist_io_t *io);

/* 1 when a gathered batch awaits cn__persist_done. */
int cn__persist_pending(const cn_persister_t *p);

/* Finishes the gathered batch after its write + fdatasync returned io_result (0, or a
 * negative errno: the records are then failed, never acknowledged as stored) and took
 * sync_us: applies it to LMDB in one transaction, acks the rings, and sets *wake to the
 * bitmask of workers to wake. Returns 0, or an error after which the process must stop
 * (the WAL can no longer be trusted, e.g. fdatasync failed). */
int cn__persist_done(cn_persister_t *p, int io_result, uint64_t sync_us, uint64_t *wake);

/* Housekeeping between batches: segment roll when the current one is full, checkpoint
 * when due, expiry sweep when due. Returns 0 or an error that stops the process. */
int cn__persist_maintain(cn_persister_t *p);

/* 1 when the WAL is written in direct mode (cfg.wal_direct and the file system took it),
 * so gathered batches come with io->dsync. */
int cn__persist_direct(const cn_persister_t *p);

/* Writes a batch with plain pwrite + fdatasync, or pwritev2 with RWF_DSYNC when io->dsync
 * (used when io_uring is unavailable and by tests). Returns 0 or a negative errno. */
int cn__persist_write_sync(const cn_persist_io_t *io);

#endif
