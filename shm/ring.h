/*
 * shm/ring.h - a worker's record ring: the records a worker hands to the persister.
 *
 * One ring per worker in the shared region: a header and a byte array of `capacity`
 * bytes (a power of two). Positions are byte counts that only grow; a position's index
 * in the array is pos & (capacity - 1). A record is a 16-byte header (u32 length, u32
 * kind, u64 sequence number) and its payload, padded to 8 bytes; a record never wraps:
 * when it does not fit before the end of the array, a PAD record fills the rest.
 *
 * Producer side: the request threads of one worker, serialized by the caller (a mutex
 * of the worker process). Consumer side: the persister, alone. The producer publishes
 * with a release store of `head`; the consumer reads records between its own cursor and
 * head, and frees space only when the records are durable, by advancing `tail` and
 * `acked_seq` (release). So records survive a persister crash: a restarted persister
 * reads again from `tail`. Sequence numbers come from `next_seq`, kept in the ring, so
 * they keep growing across worker restarts; the persister deduplicates by them.
 */
#ifndef CN_SHM_RING_H
#define CN_SHM_RING_H

#include <stdalign.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define CN_RING_RECORD_HEADER 16
#define CN_RING_FAILED_LOG 16

typedef struct cn_ring {
    alignas(64) _Atomic uint64_t head; /* producer: end of the published records */
    _Atomic uint64_t next_seq;         /* producer: the next record's sequence number */
    alignas(64) _Atomic uint64_t tail; /* consumer: everything before is durable, freed */
    _Atomic uint64_t acked_seq;        /* consumer: records with seq <= this are decided */
    _Atomic uint64_t failed_count;     /* consumer: records that could not be stored */
    _Atomic uint64_t failed_log[CN_RING_FAILED_LOG]; /* their seqs, the last few */
    _Atomic int16_t failed_err[CN_RING_FAILED_LOG];  /* and why (negative error codes) */
    alignas(64) uint64_t capacity;     /* bytes in data[]; set once at creation */
    uint64_t reserved[7];
    alignas(64) uint8_t data[];
} cn_ring_t;

_Static_assert(sizeof(cn_ring_t) % 64 == 0, "ring data starts on a cache line");

/* Prepares a zeroed ring with capacity bytes (a power of two, at least 4096). */
void cn__ring_init(cn_ring_t *r, uint64_t capacity);

/* Largest payload one record may carry (a quarter of the capacity). */
size_t cn__ring_max_payload(const cn_ring_t *r);

/* Appends one record of len bytes (kind is the caller's). Returns 0 with its sequence
 * number in *seq; -EAGAIN when the ring has no room now (the persister is behind: answer
 * 503); CN_ETOOBIG when len exceeds cn__ring_max_payload. Producers must be serialized. */
int cn__ring_push(cn_ring_t *r, uint32_t kind, const void *payload, size_t len,
                  uint64_t *seq);

/* Room for one record, reserved and not yet published. */
typedef struct cn_ring_slot {
    uint64_t head; /* where the record starts (after any padding) */
    uint64_t at;   /* its index in data[] */
    size_t len;    /* payload bytes reserved */
} cn_ring_slot_t;

/* Producer, in two steps, so a record is written straight into the ring: reserve room
 * for a payload of up to len bytes (returns where to write it, contiguous), then
 * publish it with its final length (<= len) and kind, which makes it visible to the
 * consumer and returns its sequence number. A reservation not published is dropped by
 * the next reserve. On failure reserve returns NULL with *err -EAGAIN (no room now) or
 * CN_ETOOBIG. Producers must be serialized from reserve to publish. */
void *cn__ring_reserve(cn_ring_t *r, size_t len, cn_ring_slot_t *slot, int *err);
uint64_t cn__ring_publish(cn_ring_t *r, const cn_ring_slot_t *slot, uint32_t kind, size_t len);

/* A record as the consumer sees it: payload points into the ring. */
typedef struct cn_ring_record {
    uint64_t seq;
    uint32_t kind;
    uint32_t len;
    const uint8_t *payload;
    uint64_t end; /* the position just after this record */
} cn_ring_record_t;

/* Reads the record at *cursor (a position between tail and head). Returns 1 and the
 * record (advancing *cursor past it and any padding), or 0 when the cursor is at head.
 * Returns -EIO when the bytes at the cursor are not a record (a bug or a scribble). */
int cn__ring_next(cn_ring_t *r, uint64_t *cursor, cn_ring_record_t *rec);

/* Consumer: records that seq could not be stored (before acking it), for reason err (a
 * negative errno or CN_E* code; -EIO when none is given). */
void cn__ring_fail(cn_ring_t *r, uint64_t seq);
void cn__ring_fail_err(cn_ring_t *r, uint64_t seq, int err);

/* Consumer: frees everything before position upto and declares the records with
 * seq <= acked decided: stored, unless cn__ring_fail named them. */
void cn__ring_ack(cn_ring_t *r, uint64_t upto, uint64_t acked);

/* Producer side, once seq <= acked_seq: 1 when the record was stored. failed_at_push is
 * failed_count as read before the record was pushed (its failure, if any, comes later).
 * When more failures than the log holds happened since, a seq not found in the log
 * counts as not stored: the caller then answers "retry", which replays if the record
 * was stored after all. */
int cn__ring_stored(cn_ring_t *r, uint64_t seq, uint64_t failed_at_push);

/* The same as an error: 0 when stored, else the reason the consumer gave; -ENODATA when
 * more failures than the log holds happened since the push and seq is not among the
 * logged ones: the outcome is unknown here (the caller can look in the store). */
int cn__ring_result(cn_ring_t *r, uint64_t seq, uint64_t failed_at_push);

/* The reason of the most recent failure (-EIO when none was logged). */
int cn__ring_recent_error(cn_ring_t *r);

/* Bytes published and not yet freed. */
uint64_t cn__ring_used(const cn_ring_t *r);

#endif
