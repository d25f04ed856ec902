/*
 * tests/unit/test_ring.c - a worker's record ring (shm/ring.c): the byte ring in shared
 * memory that carries records from a worker's request threads to the persister.
 *
 *   - a fresh ring; push/next round trip for every payload size 0..max (two capacities);
 *   - sequence numbers 1, 2, 3... kept in the ring: rejected pushes take none, and a
 *     producer in another process continues where the last one stopped;
 *   - wrap-around thousands of times through a 4096-byte ring with records of varied
 *     sizes: a PAD fills the end of the array, no record straddles it, every payload
 *     arrives intact, and nothing is written past the array (a guard after it);
 *   - a record that would end 8 bytes before the end of the array: the PAD that follows
 *     it (deterministic, in a two-ring region, and in the varied-size wrap test);
 *   - a full ring says -EAGAIN (also when only the PAD does not fit), an ack makes room;
 *   - CN_ETOOBIG above cn__ring_max_payload (and for the reserved PAD kind);
 *   - cn__ring_next on scribbled headers and cursors: -EIO, cursor unchanged, no read
 *     outside the array (the ring is allocated to its exact size, so ASan would see one);
 *   - consumer restart: a second cursor from `tail` sees exactly the unacked records;
 *   - the failed log: cn__ring_fail + cn__ring_ack, then cn__ring_stored; an overflowed
 *     log counts unknown seqs as not stored; and the producer's pass protocol (as the
 *     ring committer runs it) when a failure lands between its reads of acked_seq and
 *     failed_count;
 *   - a producer process and a consumer process streaming 200000 checksummed records
 *     through a 4096-byte ring in the shared region, bounded in time, the child reaped.
 *
 * Every wait is bounded; a forked child is reaped within a bound or killed by its PID.
 */
#include <errno.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cnerium/error.h"
#include "shm/region.h"
#include "shm/ring.h"
#include "unit.h"

#define SMALL_CAP 4096u
#define KIND_PAD 0xffffffffu /* shm/ring.c: the kind of a PAD record */
#define GUARD_BYTES 64u
#define GUARD_BYTE 0xA5
#define STREAM_RECORDS 200000u
#define STREAM_BOUND_MS 30000u
#define CHILD_BOUND_MS 10000u

/* ---- helpers ------------------------------------------------------------------------ */

static uint64_t
pad8(uint64_t n)
{
    return (n + 7) & ~(uint64_t)7;
}

/* Bytes a record of len payload bytes takes in the ring. */
static uint64_t
record_size(size_t len)
{
    return CN_RING_RECORD_HEADER + pad8(len);
}

/* A ring on the heap: capacity data bytes followed by guard bytes of GUARD_BYTE (0 for
 * an allocation of the exact size, where ASan sees any access past the array). */
static cn_ring_t *
ring_new(uint64_t capacity, size_t guard)
{
    size_t size = sizeof(cn_ring_t) + (size_t)capacity + guard;
    cn_ring_t *r = aligned_alloc(64, (size + 63) & ~(size_t)63);

    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    memset(r, 0, sizeof(cn_ring_t) + (size_t)capacity);
    memset(r->data + capacity, GUARD_BYTE, guard);
    cn__ring_init(r, capacity);
    return r;
}

/* 1 when the guard after the array still holds GUARD_BYTE everywhere. */
static int
guard_intact(const cn_ring_t *r, size_t guard)
{
    for (size_t i = 0; i < guard; i++) {
        if (r->data[r->capacity + i] != GUARD_BYTE)
            return 0;
    }
    return 1;
}

static uint64_t
mix(uint64_t x)
{
    x ^= x >> 33;
    x *= UINT64_C(0xff51afd7ed558ccd);
    x ^= x >> 33;
    x *= UINT64_C(0xc4ceb9fe1a85ec53);
    x ^= x >> 33;
    return x;
}

/* The payload of the record with sequence number seq: bytes derived from seq. */
static void
fill(uint8_t *p, size_t len, uint64_t seq)
{
    uint64_t x = mix(seq + 1);

    for (size_t i = 0; i < len; i++) {
        if ((i & 7) == 0)
            x = mix(x + i);
        p[i] = (uint8_t)(x >> (8 * (i & 7)));
    }
}

/* Payload length for seq in a test that varies it: 0..max. With align16 the record size
 * is a multiple of 16 (pad8(len) % 16 == 0), so no record position is ever 8 bytes before
 * the end of the array. */
static size_t
len_for(uint64_t seq, size_t max, int align16)
{
    uint64_t x = mix(seq * 7919 + 17);
    size_t len;

    /* Mostly small records, some large, a few of the largest and empty ones. */
    switch (x % 8) {
    case 0:
        len = 0;
        break;
    case 1:
        len = max;
        break;
    case 2:
    case 3:
        len = (size_t)(x >> 8) % (max + 1);
        break;
    default:
        len = (size_t)(x >> 8) % 97;
        break;
    }
    if (align16 && pad8(len) % 16)
        len = len + 8 <= max ? len + 8 : len - 8;
    return len;
}

/* Checks rec is record seq: len bytes as fill() made them, of kind kind, inside the array. */
static int
record_ok(const cn_ring_t *r, const cn_ring_record_t *rec, uint64_t seq, size_t len,
          uint32_t kind)
{
    uint8_t want[SMALL_CAP * 4];
    uint64_t start;

    if (rec->seq != seq || rec->len != len || rec->kind != kind || len > sizeof(want))
        return 0;
    /* The record lies wholly inside the array: it never straddles the end. */
    start = rec->end - record_size(len);
    if ((start & 7) || rec->payload != r->data + (start & (r->capacity - 1)) + 16 ||
        (start & (r->capacity - 1)) + record_size(len) > r->capacity)
        return 0;
    fill(want, len, seq);
    return len == 0 || memcmp(rec->payload, want, len) == 0;
}

static uint32_t
kind_for(uint64_t seq)
{
    return (uint32_t)(seq % 1000) + 1;
}

static int
push_seq(cn_ring_t *r, size_t len, uint64_t *seq)
{
    uint8_t buf[SMALL_CAP * 4];
    uint64_t s = atomic_load(&r->next_seq);

    fill(buf, len, s);
    return cn__ring_push(r, kind_for(s), buf, len, seq);
}

/* ---- tests -------------------------------------------------------------------------- */

static void
test_fresh(void)
{
    cn_ring_t *r = ring_new(SMALL_CAP, GUARD_BYTES);
    cn_ring_record_t rec;
    uint64_t cursor = 0;

    CU_ASSERT_EQUAL(r->capacity, SMALL_CAP);
    CU_ASSERT_EQUAL(atomic_load(&r->head), 0);
    CU_ASSERT_EQUAL(atomic_load(&r->tail), 0);
    CU_ASSERT_EQUAL(atomic_load(&r->next_seq), 1);
    CU_ASSERT_EQUAL(atomic_load(&r->acked_seq), 0);
    CU_ASSERT_EQUAL(atomic_load(&r->failed_count), 0);
    CU_ASSERT_EQUAL(cn__ring_used(r), 0);
    CU_ASSERT_EQUAL(cn__ring_max_payload(r), SMALL_CAP / 4);
    CU_ASSERT_EQUAL(cn__ring_next(r, &cursor, &rec), 0);
    CU_ASSERT_EQUAL(cursor, 0);
    CU_ASSERT_TRUE(guard_intact(r, GUARD_BYTES));
    free(r);
}

/* Every payload size 0..max, each in a fresh ring of capacity cap. */
static void
roundtrip_sizes(uint64_t cap)
{
    cn_ring_t *r = ring_new(cap, GUARD_BYTES);
    size_t max = cn__ring_max_payload(r);
    uint8_t *buf = malloc(max ? max : 1);
    unsigned bad = 0;

    CU_ASSERT_PTR_NOT_NULL_FATAL(buf);
    CU_ASSERT_EQUAL(max, cap / 4);
    for (size_t len = 0; len <= max; len++) {
        cn_ring_record_t rec;
        uint64_t seq = 0, cursor;

        memset(r, 0, sizeof(*r));
        cn__ring_init(r, cap);
        fill(buf, len, len);
        if (cn__ring_push(r, 7, buf, len, &seq) != 0 || seq != 1 ||
            atomic_load(&r->next_seq) != 2 || atomic_load(&r->head) != record_size(len) ||
            cn__ring_used(r) != record_size(len)) {
            bad++;
            continue;
        }
        cursor = atomic_load(&r->tail);
        if (cn__ring_next(r, &cursor, &rec) != 1 || rec.seq != 1 || rec.kind != 7 ||
            rec.len != len || rec.payload != r->data + CN_RING_RECORD_HEADER ||
            rec.end != record_size(len) || cursor != rec.end ||
            (len && memcmp(rec.payload, buf, len)) || cn__ring_next(r, &cursor, &rec) != 0) {
            bad++;
            continue;
        }
        cn__ring_ack(r, rec.end, rec.seq);
        if (cn__ring_used(r) != 0 || atomic_load(&r->acked_seq) != 1)
            bad++;
    }
    CU_ASSERT_EQUAL(bad, 0);
    CU_ASSERT_TRUE(guard_intact(r, GUARD_BYTES));
    free(buf);
    free(r);
}

static void
test_roundtrip_sizes(void)
{
    roundtrip_sizes(SMALL_CAP);
    roundtrip_sizes(1u << 16);
}

/* Sequence numbers: 1, 2, 3...; failed pushes take none; a producer in another process
 * continues from next_seq, which lives in the ring. */
static void
test_sequence_numbers(void)
{
    cn_shm_t shm;
    cn_ring_t *r;
    cn_ring_record_t rec;
    uint64_t seq = 0, cursor = 0, last_end = 0;
    int status = -1;
    pid_t pid;

    CU_ASSERT_EQUAL_FATAL(cn__shm_create_rings(1, 1, 0, SMALL_CAP, &shm), 0);
    r = cn__shm_ring(&shm, 0);
    for (uint64_t i = 1; i <= 5; i++) {
        CU_ASSERT_EQUAL(push_seq(r, (size_t)i * 3, &seq), 0);
        CU_ASSERT_EQUAL(seq, i);
        CU_ASSERT_EQUAL(atomic_load(&r->next_seq), i + 1);
    }
    /* Rejected pushes change nothing. */
    CU_ASSERT_EQUAL(cn__ring_push(r, 1, "x", cn__ring_max_payload(r) + 1, &seq), CN_ETOOBIG);
    CU_ASSERT_EQUAL(atomic_load(&r->next_seq), 6);
    for (uint64_t i = 1; i <= 5; i++) {
        CU_ASSERT_EQUAL_FATAL(cn__ring_next(r, &cursor, &rec), 1);
        CU_ASSERT_EQUAL(rec.seq, i);
        CU_ASSERT_TRUE(record_ok(r, &rec, i, (size_t)i * 3, kind_for(i)));
        last_end = rec.end;
    }
    cn__ring_ack(r, last_end, 5);
    CU_ASSERT_EQUAL(atomic_load(&r->acked_seq), 5);
    CU_ASSERT_EQUAL(atomic_load(&r->tail), atomic_load(&r->head));

    /* A new producer process (a restarted worker) continues at 6, 7. */
    pid = fork();
    CU_ASSERT_TRUE_FATAL(pid >= 0);
    if (pid == 0) {
        uint64_t s1 = 0, s2 = 0;
        int ok = push_seq(r, 10, &s1) == 0 && push_seq(r, 0, &s2) == 0 && s1 == 6 && s2 == 7;
        _exit(ok ? 0 : 1);
    }
    CU_ASSERT_EQUAL(unit_reap_within(pid, CHILD_BOUND_MS, &status), 0);
    CU_ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    CU_ASSERT_EQUAL(atomic_load(&r->next_seq), 8);
    CU_ASSERT_EQUAL_FATAL(cn__ring_next(r, &cursor, &rec), 1);
    CU_ASSERT_TRUE(record_ok(r, &rec, 6, 10, kind_for(6)));
    CU_ASSERT_EQUAL_FATAL(cn__ring_next(r, &cursor, &rec), 1);
    CU_ASSERT_TRUE(record_ok(r, &rec, 7, 0, kind_for(7)));
    CU_ASSERT_EQUAL(cn__ring_next(r, &cursor, &rec), 0);
    cn__ring_ack(r, rec.end, rec.seq);
    CU_ASSERT_EQUAL(push_seq(r, 1, &seq), 0);
    CU_ASSERT_EQUAL(seq, 8);
    cn__shm_destroy(&shm);
}

typedef struct wrap_stats {
    uint64_t pushed, consumed, pads, eagain;
    int failed; /* a check failed: the message is printed */
} wrap_stats_t;

/* Pushes and consumes `total` records of varied sizes through a ring of capacity cap
 * (with a guard after it), the consumer lagging by a varying amount and acking varying
 * prefixes. Checks every record (seq, kind, length, payload, position) and every gap
 * between records (a PAD at the end of the array, nothing else). */
static void
wrap_run(uint64_t cap, uint64_t total, int align16, wrap_stats_t *st)
{
    cn_ring_t *r = ring_new(cap, GUARD_BYTES);
    size_t max = cn__ring_max_payload(r);
    uint64_t cursor = 0, expect = 1, prev_end = 0, round = 0;

    memset(st, 0, sizeof(*st));
    while (st->consumed < total && !st->failed && round++ < total * 4) {
        uint64_t x = mix(round), want_push = x % 9, want_take = (x >> 8) % 9, seq, last_end;
        uint64_t last_seq = 0, taken = 0;
        cn_ring_record_t rec;

        for (uint64_t i = 0; i < want_push && st->pushed < total; i++) {
            uint64_t s = atomic_load(&r->next_seq), used = cn__ring_used(r);
            size_t len = len_for(s, max, align16);
            int rc = push_seq(r, len, &seq);

            if (rc == -EAGAIN) {
                /* Only when the record (plus a PAD to the end, if needed) does not fit. */
                uint64_t at = atomic_load(&r->head) & (cap - 1), need = record_size(len);
                uint64_t room = need > cap - at ? cap - at + need : need;
                if (used + room <= cap) {
                    fprintf(stderr, "wrap: -EAGAIN with room (used %llu, need %llu)\n",
                            (unsigned long long)used, (unsigned long long)room);
                    st->failed = 1;
                }
                st->eagain++;
                break;
            }
            if (rc != 0 || seq != s) {
                fprintf(stderr, "wrap: push of %zu bytes gave %d (seq %llu)\n", len, rc,
                        (unsigned long long)seq);
                st->failed = 1;
                break;
            }
            st->pushed++;
        }
        last_end = atomic_load(&r->tail);
        for (uint64_t i = 0; i < want_take && !st->failed; i++) {
            uint64_t before = cursor;
            int rc = cn__ring_next(r, &cursor, &rec);
            if (rc == 0)
                break;
            if (rc < 0) {
                fprintf(stderr,
                        "wrap: cn__ring_next at position %llu (index %llu of %llu) gave %d "
                        "after %llu records\n",
                        (unsigned long long)before, (unsigned long long)(before & (cap - 1)),
                        (unsigned long long)cap, rc, (unsigned long long)st->consumed);
                st->failed = 1;
                break;
            }
            if (!record_ok(r, &rec, expect, len_for(expect, max, align16), kind_for(expect))) {
                fprintf(stderr, "wrap: record %llu is not what was pushed\n",
                        (unsigned long long)expect);
                st->failed = 1;
                break;
            }
            /* A gap before the record: a PAD from prev_end to the end of the array (a
             * rest too short for a PAD header may be left without one). */
            if (rec.end - record_size(rec.len) != prev_end) {
                uint64_t start = rec.end - record_size(rec.len), rest;
                uint32_t kind = KIND_PAD;
                rest = cap - (prev_end & (cap - 1));
                if (rest >= CN_RING_RECORD_HEADER)
                    memcpy(&kind, r->data + (prev_end & (cap - 1)) + 4, 4);
                if ((start & (cap - 1)) != 0 || start - prev_end != rest || kind != KIND_PAD) {
                    fprintf(stderr, "wrap: unexpected gap %llu..%llu before record %llu\n",
                            (unsigned long long)prev_end, (unsigned long long)start,
                            (unsigned long long)expect);
                    st->failed = 1;
                    break;
                }
                st->pads++;
            }
            prev_end = rec.end;
            last_end = rec.end;
            last_seq = rec.seq;
            expect++;
            st->consumed++;
            taken++;
        }
        /* Ack all that was taken, sometimes only after the next round (lagging tail). */
        if (taken && (x >> 16) % 4)
            cn__ring_ack(r, last_end, last_seq);
        else if (!taken && cursor != atomic_load(&r->tail) && (x >> 16) % 2)
            cn__ring_ack(r, cursor, expect - 1);
        if (atomic_load(&r->tail) > atomic_load(&r->head) || cn__ring_used(r) > cap) {
            fprintf(stderr, "wrap: tail past head or used over capacity\n");
            st->failed = 1;
        }
    }
    if (!guard_intact(r, GUARD_BYTES)) {
        fprintf(stderr, "wrap: bytes after the ring's array were overwritten\n");
        st->failed = 1;
    }
    free(r);
}

static void
test_wrap_aligned(void)
{
    wrap_stats_t st;

    wrap_run(SMALL_CAP, 20000, 1, &st);
    CU_ASSERT_FALSE(st.failed);
    CU_ASSERT_EQUAL(st.consumed, 20000);
    CU_ASSERT_EQUAL(st.pushed, 20000);
    CU_ASSERT_TRUE(st.pads > 100); /* wrapped many times */
    CU_ASSERT_TRUE(st.eagain > 0); /* and ran full */
}

/* The same with every payload size: record sizes 16 + pad8(len) put records at every
 * multiple of 8, including 8 bytes before the end of the array. */
static void
test_wrap_any_size(void)
{
    wrap_stats_t st;

    wrap_run(SMALL_CAP, 20000, 0, &st);
    CU_ASSERT_FALSE(st.failed);
    CU_ASSERT_EQUAL(st.consumed, 20000);
    CU_ASSERT_TRUE(st.pads > 100);
}

/* The smallest case of the above, deterministic: ring 0 of a two-ring region is filled to
 * 8 bytes before the end of its array and drained; the next record does not fit there,
 * so a PAD must fill the last 8 bytes. The PAD header is 16 bytes. */
static void
test_pad_eight_bytes_before_end(void)
{
    cn_shm_t shm;
    cn_ring_t *r0, *r1;
    cn_ring_record_t rec;
    uint64_t seq = 0, cursor = 0, r1_head;
    /* 24 + 3 * 1024 + 992 = 4088 = SMALL_CAP - 8 */
    static const size_t lens[] = {8, 1008, 1008, 1008, 976};
    int rc;

    CU_ASSERT_EQUAL_FATAL(cn__shm_create_rings(1, 2, 0, SMALL_CAP, &shm), 0);
    r0 = cn__shm_ring(&shm, 0);
    r1 = cn__shm_ring(&shm, 1);
    CU_ASSERT_EQUAL_FATAL(push_seq(r1, 16, &seq), 0);
    r1_head = atomic_load(&r1->head);
    CU_ASSERT_EQUAL(r1_head, 32);

    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        CU_ASSERT_EQUAL_FATAL(push_seq(r0, lens[i], &seq), 0);
        CU_ASSERT_EQUAL_FATAL(cn__ring_next(r0, &cursor, &rec), 1);
        CU_ASSERT_TRUE(record_ok(r0, &rec, seq, lens[i], kind_for(seq)));
        cn__ring_ack(r0, rec.end, rec.seq);
    }
    CU_ASSERT_EQUAL_FATAL(atomic_load(&r0->head), SMALL_CAP - 8);
    CU_ASSERT_EQUAL_FATAL(cn__ring_used(r0), 0);

    /* An empty ring takes a 24-byte record. */
    CU_ASSERT_EQUAL_FATAL(push_seq(r0, 8, &seq), 0);
    CU_ASSERT_EQUAL(seq, 6);
    /* Nothing outside ring 0's array changed: ring 1 comes right after it. */
    CU_ASSERT_EQUAL(atomic_load(&r1->head), r1_head);
    /* The persister reads past the PAD to the record at the start of the array. */
    rc = cn__ring_next(r0, &cursor, &rec);
    CU_ASSERT_EQUAL(rc, 1);
    if (rc == 1) {
        CU_ASSERT_TRUE(record_ok(r0, &rec, 6, 8, kind_for(6)));
        CU_ASSERT_EQUAL(rec.end, SMALL_CAP + 24);
    } else {
        fprintf(stderr, "pad: cn__ring_next at %llu gave %d; ring 1's head is now %llu "
                        "(was %llu)\n",
                (unsigned long long)cursor, rc, (unsigned long long)atomic_load(&r1->head),
                (unsigned long long)r1_head);
    }
    cn__shm_destroy(&shm);
}

static void
test_full_then_ack(void)
{
    cn_ring_t *r = ring_new(SMALL_CAP, GUARD_BYTES);
    cn_ring_record_t rec;
    uint64_t seq = 0, cursor = 0, first_end;

    /* Four records of 1024 bytes fill the ring exactly. */
    for (int i = 0; i < 4; i++)
        CU_ASSERT_EQUAL(push_seq(r, 1008, &seq), 0);
    CU_ASSERT_EQUAL(cn__ring_used(r), SMALL_CAP);
    CU_ASSERT_EQUAL(push_seq(r, 0, &seq), -EAGAIN);
    CU_ASSERT_EQUAL(atomic_load(&r->head), SMALL_CAP);
    CU_ASSERT_EQUAL(atomic_load(&r->next_seq), 5);
    /* Reading does not free anything; only an ack does. */
    CU_ASSERT_EQUAL_FATAL(cn__ring_next(r, &cursor, &rec), 1);
    first_end = rec.end;
    CU_ASSERT_EQUAL(push_seq(r, 0, &seq), -EAGAIN);
    cn__ring_ack(r, first_end, rec.seq);
    CU_ASSERT_EQUAL(cn__ring_used(r), SMALL_CAP - 1024);
    CU_ASSERT_EQUAL(push_seq(r, 1008, &seq), 0);
    CU_ASSERT_EQUAL(seq, 5);
    CU_ASSERT_EQUAL(push_seq(r, 0, &seq), -EAGAIN);
    CU_ASSERT_TRUE(guard_intact(r, GUARD_BYTES));
    free(r);

    /* Full because of the PAD: 3 records of 1040 bytes leave 976 at the end; a fourth
     * needs a PAD of 976 and 1040 at the start: 5136 bytes with the tail at 0. */
    r = ring_new(SMALL_CAP, GUARD_BYTES);
    cursor = 0;
    for (int i = 0; i < 3; i++)
        CU_ASSERT_EQUAL(push_seq(r, 1024, &seq), 0);
    CU_ASSERT_EQUAL(cn__ring_used(r), 3120);
    CU_ASSERT_EQUAL(push_seq(r, 1024, &seq), -EAGAIN);
    CU_ASSERT_EQUAL(atomic_load(&r->head), 3120);
    CU_ASSERT_EQUAL(atomic_load(&r->next_seq), 4);
    /* Freeing the first record makes exactly enough room. */
    CU_ASSERT_EQUAL_FATAL(cn__ring_next(r, &cursor, &rec), 1);
    cn__ring_ack(r, rec.end, rec.seq);
    CU_ASSERT_EQUAL(push_seq(r, 1024, &seq), 0);
    CU_ASSERT_EQUAL(seq, 4);
    CU_ASSERT_EQUAL(atomic_load(&r->head), SMALL_CAP + 1040);
    CU_ASSERT_EQUAL(cn__ring_used(r), SMALL_CAP);
    for (uint64_t s = 2; s <= 4; s++) {
        CU_ASSERT_EQUAL_FATAL(cn__ring_next(r, &cursor, &rec), 1);
        CU_ASSERT_TRUE(record_ok(r, &rec, s, 1024, kind_for(s)));
    }
    CU_ASSERT_EQUAL(rec.payload, r->data + CN_RING_RECORD_HEADER); /* after the PAD */
    CU_ASSERT_EQUAL(cn__ring_next(r, &cursor, &rec), 0);
    CU_ASSERT_TRUE(guard_intact(r, GUARD_BYTES));
    free(r);
}

/* Reserve and publish: a record written in place, published shorter than reserved; a
 * reservation never published is invisible and its room is reserved again; a
 * reservation that needs the wrap pads like a push. */
static void
test_reserve_publish(void)
{
    cn_ring_t *r = ring_new(SMALL_CAP, GUARD_BYTES);
    cn_ring_record_t rec;
    cn_ring_slot_t slot;
    uint64_t cursor = 0, seq;
    uint8_t *p;
    int err = 0;

    p = cn__ring_reserve(r, 100, &slot, &err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(p);
    memset(p, 'a', 100);
    seq = cn__ring_publish(r, &slot, 7, 60);
    CU_ASSERT_EQUAL(seq, 1);
    CU_ASSERT_EQUAL(atomic_load(&r->head), record_size(60));
    CU_ASSERT_EQUAL_FATAL(cn__ring_next(r, &cursor, &rec), 1);
    CU_ASSERT_EQUAL(rec.seq, 1);
    CU_ASSERT_EQUAL(rec.kind, 7);
    CU_ASSERT_EQUAL(rec.len, 60);
    CU_ASSERT_EQUAL(rec.payload, p);

    /* Not published: nothing to read, and the same room comes back. */
    p = cn__ring_reserve(r, 40, &slot, &err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(p);
    memset(p, 'b', 40);
    CU_ASSERT_EQUAL(cn__ring_next(r, &cursor, &rec), 0);
    CU_ASSERT_EQUAL(cn__ring_reserve(r, 40, &slot, &err), p);
    memset(p, 'c', 40);
    CU_ASSERT_EQUAL(cn__ring_publish(r, &slot, 8, 40), 2);
    CU_ASSERT_EQUAL_FATAL(cn__ring_next(r, &cursor, &rec), 1);
    CU_ASSERT_EQUAL(rec.seq, 2);
    CU_ASSERT_EQUAL(rec.payload[0], 'c');
    cn__ring_ack(r, rec.end, rec.seq);

    /* Too big, and full. */
    CU_ASSERT_PTR_NULL(cn__ring_reserve(r, cn__ring_max_payload(r) + 1, &slot, &err));
    CU_ASSERT_EQUAL(err, CN_ETOOBIG);
    while ((p = cn__ring_reserve(r, 1000, &slot, &err)))
        cn__ring_publish(r, &slot, 9, 1000);
    CU_ASSERT_EQUAL(err, -EAGAIN);
    /* Drain, then a reservation past the end of the array starts at 0 after a PAD. */
    while (cn__ring_next(r, &cursor, &rec) == 1)
        cn__ring_ack(r, rec.end, rec.seq);
    p = cn__ring_reserve(r, (size_t)(SMALL_CAP - (atomic_load(&r->head) & (SMALL_CAP - 1))),
                         &slot, &err);
    CU_ASSERT_EQUAL(p, r->data + CN_RING_RECORD_HEADER);
    seq = cn__ring_publish(r, &slot, 10, 8);
    CU_ASSERT_EQUAL_FATAL(cn__ring_next(r, &cursor, &rec), 1);
    CU_ASSERT_EQUAL(rec.seq, seq);
    CU_ASSERT_EQUAL(rec.payload, r->data + CN_RING_RECORD_HEADER);
    CU_ASSERT_TRUE(guard_intact(r, GUARD_BYTES));
    free(r);
}

static void
test_too_big(void)
{
    cn_ring_t *r = ring_new(SMALL_CAP, GUARD_BYTES);
    size_t max = cn__ring_max_payload(r);
    uint8_t *buf = calloc(1, max + 1);
    cn_ring_record_t rec;
    uint64_t seq = 12345, cursor = 0;

    CU_ASSERT_PTR_NOT_NULL_FATAL(buf);
    CU_ASSERT_EQUAL(cn__ring_push(r, 1, buf, max + 1, &seq), CN_ETOOBIG);
    CU_ASSERT_EQUAL(cn__ring_push(r, 1, buf, SIZE_MAX, &seq), CN_ETOOBIG);
    CU_ASSERT_EQUAL(cn__ring_push(r, 1, buf, (size_t)UINT32_MAX + 1, &seq), CN_ETOOBIG);
    /* The PAD kind is reserved: a record of that kind would be skipped by the reader. */
    CU_ASSERT_EQUAL(cn__ring_push(r, KIND_PAD, buf, 1, &seq), CN_ETOOBIG);
    CU_ASSERT_EQUAL(seq, 12345);
    CU_ASSERT_EQUAL(atomic_load(&r->head), 0);
    CU_ASSERT_EQUAL(atomic_load(&r->next_seq), 1);
    CU_ASSERT_EQUAL(cn__ring_push(r, 1, buf, max, &seq), 0);
    CU_ASSERT_EQUAL(seq, 1);
    CU_ASSERT_EQUAL_FATAL(cn__ring_next(r, &cursor, &rec), 1);
    CU_ASSERT_EQUAL(rec.len, max);
    free(buf);
    free(r);
}

/* Reads at cursor c and expects -EIO with c unchanged. */
static void
expect_eio(cn_ring_t *r, uint64_t c)
{
    cn_ring_record_t rec;
    uint64_t cursor = c;

    CU_ASSERT_EQUAL(cn__ring_next(r, &cursor, &rec), -EIO);
    CU_ASSERT_EQUAL(cursor, c);
}

static void
put_header(cn_ring_t *r, uint64_t at, uint32_t len, uint32_t kind, uint64_t seq)
{
    memcpy(r->data + at, &len, 4);
    memcpy(r->data + at + 4, &kind, 4);
    memcpy(r->data + at + 8, &seq, 8);
}

/* Scribbled headers and cursors: -EIO, and the ring (allocated to its exact size) is
 * never read outside its array. */
static void
test_scribbled(void)
{
    cn_ring_t *r = ring_new(SMALL_CAP, 0);
    size_t max = cn__ring_max_payload(r);
    cn_ring_record_t rec;
    uint8_t saved[16];
    uint64_t seq, cursor = 0;
    int rc;

    for (int i = 0; i < 3; i++)
        CU_ASSERT_EQUAL_FATAL(push_seq(r, 40, &seq), 0); /* 56 bytes each */
    memcpy(saved, r->data + 56, 16);

    /* Length far beyond anything. */
    put_header(r, 56, UINT32_MAX, 1, 2);
    expect_eio(r, 56);
    /* Over the maximum payload. */
    put_header(r, 56, (uint32_t)max + 1, 1, 2);
    expect_eio(r, 56);
    /* Within the maximum but past head. */
    put_header(r, 56, (uint32_t)max, 1, 2);
    expect_eio(r, 56);
    memcpy(r->data + 56, saved, 16);
    /* The last record, 8 bytes longer than what was published. */
    memcpy(saved, r->data + 112, 16);
    put_header(r, 112, 48, 1, 3);
    expect_eio(r, 112);
    memcpy(r->data + 112, saved, 16);

    /* Misaligned cursors, and cursors whose header would not fit before the end. */
    expect_eio(r, 4);
    expect_eio(r, 57);
    atomic_store(&r->head, SMALL_CAP + 64);
    expect_eio(r, SMALL_CAP - 4);
    /* Room for no header before the end: -EIO, or (if the reader takes such a rest as
     * padding) the record at the start of the array; never a read past the array. */
    cursor = SMALL_CAP - 8;
    rc = cn__ring_next(r, &cursor, &rec);
    CU_ASSERT_TRUE(rc == -EIO || rc == 1);
    if (rc == -EIO)
        CU_ASSERT_EQUAL(cursor, SMALL_CAP - 8);
    if (rc == 1)
        CU_ASSERT_TRUE(record_ok(r, &rec, 1, 40, kind_for(1)));
    /* A record header near the end whose record would run past the array. */
    put_header(r, SMALL_CAP - 32, 100, 1, 9);
    expect_eio(r, SMALL_CAP - 32);
    put_header(r, SMALL_CAP - 32, 16, 1, 9); /* exactly fits: 16 + 16 */
    cursor = SMALL_CAP - 32;
    CU_ASSERT_EQUAL(cn__ring_next(r, &cursor, &rec), 1);
    CU_ASSERT_EQUAL(cursor, SMALL_CAP);
    atomic_store(&r->head, 3 * 56);

    /* The unscribbled ring still reads. */
    cursor = 0;
    for (uint64_t s = 1; s <= 3; s++) {
        CU_ASSERT_EQUAL_FATAL(cn__ring_next(r, &cursor, &rec), 1);
        CU_ASSERT_TRUE(record_ok(r, &rec, s, 40, kind_for(s)));
    }
    CU_ASSERT_EQUAL(cn__ring_next(r, &cursor, &rec), 0);
    free(r);
}

/* A restarted consumer reads from tail: exactly the records not acked, in order, also
 * when the ring has wrapped and the tail sits before a PAD. */
static void
test_consumer_restart(void)
{
    cn_ring_t *r = ring_new(SMALL_CAP, GUARD_BYTES);
    cn_ring_record_t rec, a[16];
    uint64_t seq, ca = 0, cb, before_pad;
    size_t n = 0;

    for (int i = 0; i < 10; i++) /* records of 16 + 16 i bytes: 880 in all */
        CU_ASSERT_EQUAL_FATAL(push_seq(r, (size_t)i * 16, &seq), 0);
    while (n < 16 && cn__ring_next(r, &ca, &a[n]) == 1)
        n++;
    CU_ASSERT_EQUAL_FATAL(n, 10);
    cn__ring_ack(r, a[3].end, a[3].seq); /* 1..4 durable */

    cb = atomic_load(&r->tail);
    for (uint64_t s = 5; s <= 10; s++) {
        CU_ASSERT_EQUAL_FATAL(cn__ring_next(r, &cb, &rec), 1);
        CU_ASSERT_TRUE(record_ok(r, &rec, s, (size_t)(s - 1) * 16, kind_for(s)));
        CU_ASSERT_EQUAL(rec.end, a[s - 1].end);
    }
    CU_ASSERT_EQUAL(cn__ring_next(r, &cb, &rec), 0);
    CU_ASSERT_EQUAL(cb, ca);

    /* Drain (tail at 880), then two 1024-byte records, acked, and one of 1040 bytes
     * ending at 3968: the next 1040-byte record goes behind a PAD of 128 bytes, at index
     * 0. Ack all before the one ending at 3968 and restart from tail. */
    cn__ring_ack(r, a[9].end, a[9].seq);
    CU_ASSERT_EQUAL_FATAL(atomic_load(&r->tail), 880);
    ca = atomic_load(&r->tail);
    for (int i = 0; i < 2; i++) {
        CU_ASSERT_EQUAL_FATAL(push_seq(r, 1008, &seq), 0);
        CU_ASSERT_EQUAL_FATAL(cn__ring_next(r, &ca, &rec), 1);
        cn__ring_ack(r, rec.end, rec.seq);
    }
    CU_ASSERT_EQUAL_FATAL(atomic_load(&r->tail), 2928);
    CU_ASSERT_EQUAL_FATAL(push_seq(r, 1024, &seq), 0); /* 2928..3968 */
    before_pad = seq;
    CU_ASSERT_EQUAL_FATAL(push_seq(r, 1024, &seq), 0); /* PAD 3968..4096, then at 0 */
    CU_ASSERT_EQUAL_FATAL(push_seq(r, 8, &seq), 0);
    CU_ASSERT_EQUAL(atomic_load(&r->head), SMALL_CAP + 1040 + 24);
    cb = atomic_load(&r->tail);
    for (uint64_t s = before_pad; s <= seq; s++) {
        CU_ASSERT_EQUAL_FATAL(cn__ring_next(r, &cb, &rec), 1);
        CU_ASSERT_EQUAL(rec.seq, s);
    }
    CU_ASSERT_EQUAL(cn__ring_next(r, &cb, &rec), 0);
    /* Acking the one before the PAD: a restart now starts at the PAD. */
    cb = atomic_load(&r->tail);
    CU_ASSERT_EQUAL_FATAL(cn__ring_next(r, &cb, &rec), 1);
    CU_ASSERT_EQUAL(rec.seq, before_pad);
    cn__ring_ack(r, rec.end, rec.seq);
    cb = atomic_load(&r->tail);
    CU_ASSERT_EQUAL(cb, 3968); /* the PAD is ahead */
    CU_ASSERT_EQUAL_FATAL(cn__ring_next(r, &cb, &rec), 1);
    CU_ASSERT_TRUE(record_ok(r, &rec, before_pad + 1, 1024, kind_for(before_pad + 1)));
    CU_ASSERT_EQUAL(rec.payload, r->data + CN_RING_RECORD_HEADER);
    CU_ASSERT_EQUAL_FATAL(cn__ring_next(r, &cb, &rec), 1);
    CU_ASSERT_TRUE(record_ok(r, &rec, before_pad + 2, 8, kind_for(before_pad + 2)));
    CU_ASSERT_EQUAL(cn__ring_next(r, &cb, &rec), 0);
    CU_ASSERT_TRUE(guard_intact(r, GUARD_BYTES));
    free(r);
}

/* Pushes n records of 8 bytes, reads them all, returns the end of the last. */
static uint64_t
push_read(cn_ring_t *r, int n, uint64_t *cursor)
{
    cn_ring_record_t rec = {0};
    uint64_t seq;

    for (int i = 0; i < n; i++)
        CU_ASSERT_EQUAL_FATAL(push_seq(r, 8, &seq), 0);
    for (int i = 0; i < n; i++)
        CU_ASSERT_EQUAL_FATAL(cn__ring_next(r, cursor, &rec), 1);
    return rec.end;
}

static void
test_failed_log(void)
{
    cn_ring_t *r = ring_new(SMALL_CAP, GUARD_BYTES);
    uint64_t cursor = 0, end, seen = 0;

    /* seqs 1..5; 2 and 4 could not be stored. */
    end = push_read(r, 5, &cursor);
    cn__ring_fail(r, 2);
    cn__ring_fail(r, 4);
    cn__ring_ack(r, end, 5);
    CU_ASSERT_EQUAL(atomic_load(&r->failed_count), 2);
    CU_ASSERT_EQUAL(atomic_load(&r->acked_seq), 5);
    CU_ASSERT_EQUAL(atomic_load(&r->tail), end);
    for (uint64_t s = 1; s <= 5; s++)
        CU_ASSERT_EQUAL(cn__ring_stored(r, s, seen), (s == 2 || s == 4) ? 0 : 1);
    seen = atomic_load(&r->failed_count);

    /* 6..8 all stored; the producer has seen the two failures. */
    end = push_read(r, 3, &cursor);
    cn__ring_ack(r, end, 8);
    for (uint64_t s = 6; s <= 8; s++)
        CU_ASSERT_EQUAL(cn__ring_stored(r, s, seen), 1);

    /* 9..12: 11 failed. */
    end = push_read(r, 4, &cursor);
    cn__ring_fail(r, 11);
    cn__ring_ack(r, end, 12);
    for (uint64_t s = 9; s <= 12; s++)
        CU_ASSERT_EQUAL(cn__ring_stored(r, s, seen), s == 11 ? 0 : 1);
    free(r);
}

/* More failures since the push (failed_at_push) than the log holds: a seq not in the
 * log may have been one of the forgotten ones, so it counts as not stored. */
static void
test_failed_log_overflow(void)
{
    cn_ring_t *r = ring_new(SMALL_CAP, GUARD_BYTES);
    uint64_t cursor = 0, end;

    end = push_read(r, 20, &cursor);
    for (uint64_t s = 1; s <= CN_RING_FAILED_LOG + 1; s++) /* 1..17 failed */
        cn__ring_fail(r, s);
    cn__ring_ack(r, end, 20);
    CU_ASSERT_EQUAL(atomic_load(&r->failed_count), CN_RING_FAILED_LOG + 1);
    /* 17 failures since 0: 18..20 are not in the log, yet are answered "not stored". */
    for (uint64_t s = 1; s <= 20; s++)
        CU_ASSERT_EQUAL(cn__ring_stored(r, s, 0), 0);
    /* 16 failures since 1: the log holds all of them (2..17); 18..20 were stored. */
    for (uint64_t s = 2; s <= 20; s++)
        CU_ASSERT_EQUAL(cn__ring_stored(r, s, 1), s <= CN_RING_FAILED_LOG + 1 ? 0 : 1);
    /* Nothing new since 17. */
    CU_ASSERT_EQUAL(cn__ring_stored(r, 18, CN_RING_FAILED_LOG + 1), 1);
    /* As results: a logged failure gives its reason, a forgotten one is unknown. */
    cn__ring_fail_err(r, 19, -ENOSPC);
    CU_ASSERT_EQUAL(cn__ring_result(r, 19, 0), -ENOSPC);
    CU_ASSERT_EQUAL(cn__ring_result(r, 20, 0), -ENODATA);
    CU_ASSERT_EQUAL(cn__ring_result(r, 20, CN_RING_FAILED_LOG + 1), 0);
    free(r);
}

/* A failure that lands between two reads of the producer (fail, then ack, as
 * cn__persist_done does) must never read as "stored", whatever count the producer holds:
 * the log is always searched. (An earlier version answered "stored" whenever the count
 * had not moved since the producer's previous pass, which this sequence defeated.) */
static void
test_failed_between_reads(void)
{
    cn_ring_t *r = ring_new(SMALL_CAP, GUARD_BYTES);
    uint64_t cursor = 0, end, seen, acked, failed;

    end = push_read(r, 1, &cursor);
    seen = atomic_load(&r->failed_count); /* as the committer starts: 0 */

    /* Pass 1. */
    acked = atomic_load(&r->acked_seq);
    CU_ASSERT_EQUAL(acked, 0); /* nothing to decide yet */
    cn__ring_fail(r, 1);       /* the persister: seq 1 could not be stored */
    cn__ring_ack(r, end, 1);
    failed = atomic_load(&r->failed_count);
    seen = failed;

    /* Pass 2: seq 1 is acked now. */
    acked = atomic_load(&r->acked_seq);
    CU_ASSERT_EQUAL_FATAL(acked, 1);
    CU_ASSERT_EQUAL(cn__ring_stored(r, 1, seen), 0); /* it failed: must not say stored */

    /* The other order of the two reads does no better: failed_count first, then the
     * persister's fail of seq 2 lands before the producer reads acked_seq, its ack after. */
    end = push_read(r, 1, &cursor);
    seen = atomic_load(&r->failed_count); /* 1, after pass 2 */
    cn__ring_fail(r, 2);
    failed = atomic_load(&r->failed_count); /* pass 3 */
    acked = atomic_load(&r->acked_seq);
    CU_ASSERT_EQUAL(acked, 1); /* seq 2 not decided in pass 3 */
    cn__ring_ack(r, end, 2);
    seen = failed;
    acked = atomic_load(&r->acked_seq); /* pass 4 */
    CU_ASSERT_EQUAL_FATAL(acked, 2);
    CU_ASSERT_EQUAL(cn__ring_stored(r, 2, seen), 0);
    free(r);
}

/* ---- two processes ------------------------------------------------------------------ */

static uint64_t
fnv1a(const uint8_t *p, size_t len)
{
    uint64_t h = UINT64_C(0xcbf29ce484222325);

    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= UINT64_C(0x100000001b3);
    }
    return h;
}

/* Stream payload for seq: 8 bytes of checksum over the rest, then fill() bytes. Record
 * sizes are multiples of 16 (see len_for). */
static size_t
stream_len(uint64_t seq, size_t max)
{
    size_t len = len_for(seq, max, 1);

    return len < 8 ? 16 : len;
}

static void
stream_payload(uint8_t *p, size_t len, uint64_t seq)
{
    uint64_t h;

    fill(p + 8, len - 8, seq);
    h = fnv1a(p + 8, len - 8) ^ seq;
    memcpy(p, &h, 8);
}

/* The producer: pushes STREAM_RECORDS records, yielding while the ring is full. Returns
 * the exit status: 0 done, 1 a push failed, 2 out of time. */
static int
stream_producer(cn_ring_t *r, uint64_t first_seq)
{
    uint8_t buf[SMALL_CAP];
    size_t max = cn__ring_max_payload(r);
    uint64_t end = unit_now_ms() + STREAM_BOUND_MS;

    for (uint64_t i = 0; i < STREAM_RECORDS; i++) {
        uint64_t s = first_seq + i, seq;
        size_t len = stream_len(s, max);
        int rc;

        stream_payload(buf, len, s);
        for (unsigned spins = 1; (rc = cn__ring_push(r, kind_for(s), buf, len, &seq)) == -EAGAIN;
             spins++) {
            if ((spins & 1023) == 0 && unit_now_ms() > end)
                return 2;
            sched_yield();
        }
        if (rc || seq != s)
            return 1;
    }
    return 0;
}

static void
test_two_processes(void)
{
    cn_shm_t shm;
    cn_ring_t *r;
    uint8_t want[SMALL_CAP];
    uint64_t cursor, first_seq, expect, got = 0, bad = 0, end, last_end = 0, idle = 0;
    size_t max;
    int status = -1, rc = 0;
    pid_t pid;

    CU_ASSERT_EQUAL_FATAL(cn__shm_create_rings(1, 1, 0, SMALL_CAP, &shm), 0);
    r = cn__shm_ring(&shm, 0);
    max = cn__ring_max_payload(r);
    cursor = atomic_load(&r->tail);
    first_seq = expect = atomic_load(&r->next_seq);

    pid = fork();
    CU_ASSERT_TRUE_FATAL(pid >= 0);
    if (pid == 0)
        _exit(stream_producer(r, first_seq));

    end = unit_now_ms() + STREAM_BOUND_MS;
    while (got < STREAM_RECORDS) {
        cn_ring_record_t rec;

        rc = cn__ring_next(r, &cursor, &rec);
        if (rc < 0)
            break;
        if (rc == 0) {
            /* Ack what was read while waiting, so the producer is never starved. */
            if (last_end && atomic_load(&r->tail) != last_end)
                cn__ring_ack(r, last_end, expect - 1);
            if ((++idle & 1023) == 0 && unit_now_ms() > end)
                break;
            sched_yield();
            continue;
        }
        {
            size_t len = stream_len(expect, max);
            uint64_t h;
            if (rec.seq != expect || rec.len != len || rec.kind != kind_for(expect)) {
                bad++;
            } else {
                memcpy(&h, rec.payload, 8);
                stream_payload(want, len, expect);
                if (h != (fnv1a(rec.payload + 8, len - 8) ^ expect) ||
                    memcmp(rec.payload, want, len))
                    bad++;
            }
        }
        expect++;
        got++;
        last_end = rec.end;
        if ((got & 7) == 0)
            cn__ring_ack(r, rec.end, rec.seq);
    }
    if (last_end)
        cn__ring_ack(r, last_end, expect - 1);

    CU_ASSERT_EQUAL(unit_reap_within(pid, CHILD_BOUND_MS, &status), 0);
    CU_ASSERT_TRUE(WIFEXITED(status));
    CU_ASSERT_EQUAL(WIFEXITED(status) ? WEXITSTATUS(status) : -1, 0);
    CU_ASSERT_EQUAL(rc >= 0, 1);
    CU_ASSERT_EQUAL(got, STREAM_RECORDS);
    CU_ASSERT_EQUAL(bad, 0);
    CU_ASSERT_EQUAL(atomic_load(&r->next_seq), first_seq + STREAM_RECORDS);
    CU_ASSERT_EQUAL(atomic_load(&r->tail), atomic_load(&r->head));
    CU_ASSERT_EQUAL(atomic_load(&r->acked_seq), first_seq + STREAM_RECORDS - 1);
    CU_ASSERT_TRUE(atomic_load(&r->head) > 100 * (uint64_t)SMALL_CAP); /* wrapped a lot */
    cn__shm_destroy(&shm);
}

int
main(void)
{
    static const unit_test_t tests[] = {
        {"a fresh ring", test_fresh},
        {"push/next round trip for every payload size", test_roundtrip_sizes},
        {"sequence numbers 1, 2, 3... continue across producers", test_sequence_numbers},
        {"wrap-around: 16-byte multiple records, thousands of pushes", test_wrap_aligned},
        {"wrap-around: records of every size", test_wrap_any_size},
        {"a PAD 8 bytes before the end of the array", test_pad_eight_bytes_before_end},
        {"full ring is -EAGAIN until an ack", test_full_then_ack},
        {"reserve and publish: in place, shorter, unpublished, wrapped", test_reserve_publish},
        {"CN_ETOOBIG above the max payload", test_too_big},
        {"scribbled headers and cursors are -EIO", test_scribbled},
        {"a restarted consumer sees exactly the unacked records", test_consumer_restart},
        {"failed log: stored says 0 for failed seqs", test_failed_log},
        {"failed log overflow counts unknown seqs as not stored", test_failed_log_overflow},
        {"a failure between the producer's reads is not lost", test_failed_between_reads},
        {"a producer and a consumer process stream 200000 records", test_two_processes},
        {NULL, NULL},
    };

    return unit_run("ring", tests);
}
