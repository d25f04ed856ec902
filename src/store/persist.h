/*
 * store/persist.h - the persister's engine: record rings -> WAL -> LMDB -> acks.
 *
 * The persister process (workers/persister.c) owns one engine. The engine does the
 * logic and the synchronous parts (recovery, LMDB, checkpoints, sweeps, segment roll);
 * the process main does the waiting and submits each batch's write and fdatasync
 * through io_uring, then hands the result back. One batch is in flight at a time; the
 * next one is gathered and submitted before the finished one is applied, so LMDB work
 * overlaps the next fdatasync.
 *
 * A record a worker hands over (ring payload), little-endian:
 *   0   1  version (1)
 *   1   1  kind: CN_PERSIST_PUT (a stored response), CN_PERSIST_PUT_EVENTS (a stored
 *          response and the events its handler emitted), CN_PERSIST_EVENTS (events of an
 *          ordinary route; key and record lengths are 0)
 *   2   2  store key length
 *   4   4  encoded record length (store/record.h)
 *   8   .. store key, encoded record, then (kinds with events) the encoded event list
 *          (realtime/event.h) up to the end
 * In the WAL, each DATA frame's payload is a 24-byte header followed by that record:
 *   0   8  epoch of the server start     8  8  the record's seq in its worker's ring
 *   16  2  worker                        18 2  zero      20 4  ring payload length
 * (epoch, worker, seq) names a record: a persister that restarts skips records it had
 * already applied, so nothing is applied twice and nothing in a ring is lost.
 */
#ifndef CN_STORE_PERSIST_H
#define CN_STORE_PERSIST_H

#include <stddef.h>
#include <stdint.h>

#include "shm/region.h"
#include "store/record.h"

#define CN_PERSIST_PUT 1
#define CN_PERSIST_EVENTS 2
#define CN_PERSIST_PUT_EVENTS 3
#define CN_PERSIST_PUT_HEADER 8
#define CN_PERSIST_WAL_HEADER 24

/* Bytes cn__persist_put_encode writes. */
size_t cn__persist_put_size(size_t keylen, const cn_record_t *rec);

/* Encodes a put of rec under key into out (cap bytes). Returns 0 and *written, or
 * CN_ETOOBIG. */
int cn__persist_put_encode(uint8_t *out, size_t cap, const char *key, size_t keylen,
                           const cn_record_t *rec, size_t *written);

/* Splits a put (kind CN_PERSIST_PUT). Returns 0 (pointers into p) or CN_ECORRUPT. */
int cn__persist_put_decode(const uint8_t *p, size_t len, const char **key, size_t *keylen,
                           const uint8_t **rec, size_t *reclen);

/* Any kind: rec NULL for events only; events NULL (or an empty list) for none. */
size_t cn__persist_record_size(size_t keylen, const cn_record_t *rec, size_t events_len);
int cn__persist_record_encode(uint8_t *out, size_t cap, const char *key, size_t keylen,
                              const cn_record_t *rec, const uint8_t *events, size_t events_len,
                              size_t *written);

typedef struct cn_persist_record {
    int kind;
    const char *key; /* NULL for CN_PERSIST_EVENTS */
    size_t keylen;
    const uint8_t *rec;
    size_t reclen;
    const uint8_t *events; /* NULL when none */
    size_t events_len;
} cn_persist_record_t;

/* Splits any kind. Returns 0 (pointers into p) or CN_ECORRUPT. */
int cn__persist_record_decode(const uint8_t *p, size_t len, cn_persist_record_t *out);

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
} cn_persist_config_t;

typedef struct cn_persister cn_persister_t;

/* What one batch writes: len bytes at offset of fd. */
typedef struct cn_persist_io {
    int fd;
    const void *buf;
    size_t len;
    uint64_t offset;
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

/* Writes a batch with plain pwrite + fdatasync (used when io_uring is unavailable and
 * by tests). Returns 0 or a negative errno. */
int cn__persist_write_sync(const cn_persist_io_t *io);

#endif
