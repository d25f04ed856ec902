/*
 * shm/ring.c - a worker's record ring (see ring.h).
 */
#include <errno.h>
#include <string.h>

#include "cnerium/error.h"
#include "shm/ring.h"
#include "support/log.h"

#define KIND_PAD 0xffffffffu

static uint64_t
pad8(uint64_t n)
{
    return (n + 7) & ~(uint64_t)7;
}

static void
put_header(uint8_t *p, uint32_t len, uint32_t kind, uint64_t seq)
{
    memcpy(p, &len, 4);
    memcpy(p + 4, &kind, 4);
    memcpy(p + 8, &seq, 8);
}

void
cn__ring_init(cn_ring_t *r, uint64_t capacity)
{
    r->capacity = capacity;
    atomic_store(&r->head, 0);
    atomic_store(&r->tail, 0);
    atomic_store(&r->next_seq, 1);
    atomic_store(&r->acked_seq, 0);
    atomic_store(&r->failed_count, 0);
}

size_t
cn__ring_max_payload(const cn_ring_t *r)
{
    return (size_t)(r->capacity / 4);
}

void *
cn__ring_reserve(cn_ring_t *r, size_t len, cn_ring_slot_t *slot, int *err)
{
    uint64_t head = atomic_load_explicit(&r->head, memory_order_relaxed);
    uint64_t tail = atomic_load_explicit(&r->tail, memory_order_acquire);
    uint64_t need = CN_RING_RECORD_HEADER + pad8(len), at = head & (r->capacity - 1);
    uint64_t to_end = r->capacity - at;

    if (len > cn__ring_max_payload(r)) {
        *err = CN_ETOOBIG;
        return NULL;
    }
    /* A record does not wrap: pad to the end of the array when it does not fit. Fewer
     * than a header's bytes left (8: records are 8-byte aligned) need no PAD header: the
     * reader skips such a remainder by itself. The PAD is written past head, where the
     * consumer does not look until the publish moves head over it. */
    if (need > to_end) {
        if (head + to_end + need - tail > r->capacity) {
            *err = -EAGAIN;
            return NULL;
        }
        if (to_end >= CN_RING_RECORD_HEADER)
            put_header(r->data + at, 0, KIND_PAD, 0);
        head += to_end;
        at = 0;
    } else if (head + need - tail > r->capacity) {
        *err = -EAGAIN;
        return NULL;
    }
    slot->head = head;
    slot->at = at;
    slot->len = len;
    return r->data + at + CN_RING_RECORD_HEADER;
}

uint64_t
cn__ring_publish(cn_ring_t *r, const cn_ring_slot_t *slot, uint32_t kind, size_t len)
{
    uint64_t s = atomic_load_explicit(&r->next_seq, memory_order_relaxed);

    CN_ASSERT(len <= slot->len && kind != KIND_PAD);
    put_header(r->data + slot->at, (uint32_t)len, kind, s);
    atomic_store_explicit(&r->next_seq, s + 1, memory_order_relaxed);
    atomic_store_explicit(&r->head, slot->head + CN_RING_RECORD_HEADER + pad8(len),
                          memory_order_release);
    return s;
}

int
cn__ring_push(cn_ring_t *r, uint32_t kind, const void *payload, size_t len, uint64_t *seq)
{
    cn_ring_slot_t slot;
    void *p;
    int err;

    if (kind == KIND_PAD)
        return CN_ETOOBIG;
    if (!(p = cn__ring_reserve(r, len, &slot, &err)))
        return err;
    if (len)
        memcpy(p, payload, len);
    *seq = cn__ring_publish(r, &slot, kind, len);
    return 0;
}

int
cn__ring_next(cn_ring_t *r, uint64_t *cursor, cn_ring_record_t *rec)
{
    uint64_t head = atomic_load_explicit(&r->head, memory_order_acquire);

    for (;;) {
        uint64_t pos = *cursor, at = pos & (r->capacity - 1);
        uint32_t len, kind;

        if (pos >= head)
            return 0;
        if (at & 7)
            return -EIO;
        if (r->capacity - at < CN_RING_RECORD_HEADER) {
            *cursor = pos + (r->capacity - at); /* a remainder too short for a header */
            continue;
        }
        memcpy(&len, r->data + at, 4);
        memcpy(&kind, r->data + at + 4, 4);
        if (kind == KIND_PAD) {
            *cursor = pos + (r->capacity - at);
            continue;
        }
        if (len > cn__ring_max_payload(r) ||
            CN_RING_RECORD_HEADER + pad8(len) > r->capacity - at ||
            pos + CN_RING_RECORD_HEADER + pad8(len) > head)
            return -EIO;
        memcpy(&rec->seq, r->data + at + 8, 8);
        rec->kind = kind;
        rec->len = len;
        rec->payload = r->data + at + CN_RING_RECORD_HEADER;
        rec->end = pos + CN_RING_RECORD_HEADER + pad8(len);
        *cursor = rec->end;
        return 1;
    }
}

void
cn__ring_fail_err(cn_ring_t *r, uint64_t seq, int err)
{
    uint64_t n = atomic_load_explicit(&r->failed_count, memory_order_relaxed);

    /* Every errno and CN_E* code fits 16 bits; anything else is reported as -EIO. */
    if (err >= 0 || err < INT16_MIN)
        err = -EIO;
    atomic_store_explicit(&r->failed_log[n % CN_RING_FAILED_LOG], seq, memory_order_relaxed);
    atomic_store_explicit(&r->failed_err[n % CN_RING_FAILED_LOG], (int16_t)err,
                          memory_order_relaxed);
    atomic_store_explicit(&r->failed_count, n + 1, memory_order_release);
}

void
cn__ring_fail(cn_ring_t *r, uint64_t seq)
{
    cn__ring_fail_err(r, seq, -EIO);
}

int
cn__ring_result(cn_ring_t *r, uint64_t seq, uint64_t failed_at_push)
{
    uint64_t n = atomic_load_explicit(&r->failed_count, memory_order_acquire);

    for (uint64_t i = n > CN_RING_FAILED_LOG ? n - CN_RING_FAILED_LOG : 0; i < n; i++) {
        if (atomic_load_explicit(&r->failed_log[i % CN_RING_FAILED_LOG],
                                 memory_order_relaxed) == seq) {
            int err = atomic_load_explicit(&r->failed_err[i % CN_RING_FAILED_LOG],
                                           memory_order_relaxed);
            return err < 0 ? err : -EIO;
        }
    }
    /* Its failure, if any, came after the push: beyond the log's reach, unknown. */
    return n - failed_at_push > CN_RING_FAILED_LOG ? -ENODATA : 0;
}

int
cn__ring_recent_error(cn_ring_t *r)
{
    uint64_t n = atomic_load_explicit(&r->failed_count, memory_order_acquire);
    int err;

    if (n == 0)
        return -EIO;
    err = atomic_load_explicit(&r->failed_err[(n - 1) % CN_RING_FAILED_LOG],
                               memory_order_relaxed);
    return err < 0 ? err : -EIO;
}

int
cn__ring_stored(cn_ring_t *r, uint64_t seq, uint64_t failed_at_push)
{
    return cn__ring_result(r, seq, failed_at_push) == 0;
}

void
cn__ring_ack(cn_ring_t *r, uint64_t upto, uint64_t acked)
{
    atomic_store_explicit(&r->acked_seq, acked, memory_order_release);
    atomic_store_explicit(&r->tail, upto, memory_order_release);
}

uint64_t
cn__ring_used(const cn_ring_t *r)
{
    return atomic_load(&r->head) - atomic_load(&r->tail);
}
