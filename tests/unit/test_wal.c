/*
 * tests/unit/test_wal.c - the write-ahead log (store/wal.c):
 *
 *   - the frame codec: sizes, round trips (payloads of 0, 1, 7, 8, 9 bytes and 1 MiB),
 *     the documented byte layout, a zeroed header as the end of the log, and rejection of
 *     every truncation, every single flipped byte, a wrong LSN and invalid fields that
 *     carry a valid CRC;
 *   - segment files: path naming, creation (size, zeros, no temp file left, close-on-exec),
 *     idempotent reopen, refusal to touch a file of the wrong size, bad arguments;
 *   - recovery: a clean log across three segments with SEALs, from_lsn in the middle,
 *     idempotence, a torn tail cut at every byte offset of the last frame (then written
 *     over and recovered again), damage in the middle, valid frames of the same write
 *     after a tear (a torn tail) against frames of later writes after a flipped byte or a
 *     zeroed block (CN_ECORRUPT naming segment file and offset, nothing modified),
 *     unsealed, missing and wrongly sized segments, a missing segment that holds from_lsn,
 *     files that are not segments, an empty directory, a callback that stops the replay;
 *   - recovery of segments larger than the size it reads at a time: frames straddling
 *     its reads, a frame larger than one, stray bytes and later writes far past the end;
 *   - remove_below deleting exactly the segments that end at or below an LSN.
 *
 * Every test works in its own fresh directory under the suite's temp dir. Segments are
 * small (4096 bytes) so a handful of frames spans several of them, except in the tests of
 * large segments (3 MiB).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cnerium/error.h"
#include "store/wal.h"
#include "support/crc32c.h"
#include "unit.h"

#define SEG 4096u
#define MAX_FRAMES 512
#define HDR CN_WAL_FRAME_HEADER

static char tmpdir[256];
static int dir_seq;

/* ---- helpers ---------------------------------------------------------------------- */

static uint32_t
get_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t
get_le64(const uint8_t *p)
{
    return (uint64_t)get_le32(p) | (uint64_t)get_le32(p + 4) << 32;
}

static void
put_le32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/* Recomputes a frame's CRC after a deliberate edit (header with CRC zeroed, payload). */
static void
fix_crc(uint8_t *frame, uint32_t len)
{
    uint8_t hdr[HDR];

    memcpy(hdr, frame, HDR);
    memset(hdr + 16, 0, 4);
    put_le32(frame + 16, cn__crc32c(cn__crc32c(0, hdr, HDR), frame + HDR, len));
}

static int
is_zero(const uint8_t *p, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if (p[i])
            return 0;
    }
    return 1;
}

/* A fresh, existing directory for one test. */
static void
fresh_dir(char *dir, size_t cap)
{
    snprintf(dir, cap, "%s/t%d/wal", tmpdir, dir_seq++);
    CU_ASSERT_EQUAL_FATAL(cn__wal_mkdir(dir), 0);
}

static void
seg_path(char *out, size_t cap, const char *dir, uint64_t start)
{
    CU_ASSERT_EQUAL_FATAL(cn__wal_segment_path(out, cap, dir, start), 0);
}

static int
file_exists(const char *dir, uint64_t start)
{
    char path[512];

    seg_path(path, sizeof(path), dir, start);
    return access(path, F_OK) == 0;
}

/* Reads or writes len bytes at off of the segment at start. */
static void
seg_io(const char *dir, uint64_t start, uint64_t off, void *buf, size_t len, int write)
{
    char path[512];
    int fd;
    ssize_t n;

    seg_path(path, sizeof(path), dir, start);
    fd = open(path, write ? O_RDWR : O_RDONLY);
    CU_ASSERT_FATAL(fd >= 0);
    n = write ? pwrite(fd, buf, len, (off_t)off) : pread(fd, buf, len, (off_t)off);
    close(fd);
    CU_ASSERT_EQUAL_FATAL(n, (ssize_t)len);
}

/* The payload of frame i: lengths vary (including 0 and multiples of 8), bytes too. */
static size_t
payload_for(size_t i, uint8_t *out)
{
    size_t len = (i * 37) % 181;

    if (i % 7 == 3)
        len = 0;
    for (size_t j = 0; j < len; j++)
        out[j] = (uint8_t)(i * 131 + j * 7 + 1);
    return len;
}

/* A minimal single writer, as the persister writes: frames in order, a SEAL when the next
 * frame would run into the reserved space, then the next segment. */
typedef struct writer {
    const char *dir;
    int fd;
    uint64_t seg_start;
    uint64_t lsn;
} writer_t;

static void
writer_open(writer_t *w, const char *dir, uint64_t lsn)
{
    w->dir = dir;
    w->seg_start = lsn - lsn % SEG;
    w->lsn = lsn;
    w->fd = cn__wal_segment_open(dir, w->seg_start, SEG);
    CU_ASSERT_FATAL(w->fd >= 0);
}

static void
writer_write(writer_t *w, uint64_t lsn, uint8_t type, const void *payload, size_t len)
{
    size_t size = cn__wal_frame_size(len);
    uint8_t *frame = malloc(size);

    CU_ASSERT_PTR_NOT_NULL_FATAL(frame);
    cn__wal_frame_encode(frame, lsn, type, payload, len);
    CU_ASSERT_EQUAL_FATAL(pwrite(w->fd, frame, size, (off_t)(lsn - w->seg_start)),
                          (ssize_t)size);
    free(frame);
}

static void
writer_seal(writer_t *w)
{
    writer_write(w, w->lsn, CN_WAL_SEAL, NULL, 0);
    close(w->fd);
    writer_open(w, w->dir, w->seg_start + SEG);
}

/* Appends a DATA frame, sealing first when it does not fit. Returns its LSN. */
static uint64_t
writer_append(writer_t *w, const void *payload, size_t len)
{
    size_t size = cn__wal_frame_size(len);
    uint64_t lsn;

    if (w->lsn + size > w->seg_start + SEG - HDR)
        writer_seal(w);
    lsn = w->lsn;
    writer_write(w, lsn, CN_WAL_DATA, payload, len);
    w->lsn += size;
    return lsn;
}

/* Writes frames of the given lengths (payload bytes fill + i) as one write, the way the
 * persister writes a batch: one pwrite, every frame naming the batch start. Records the
 * frames in spec (when not NULL). Returns the batch start. */
struct log_spec;
static uint64_t writer_batch(writer_t *w, size_t n, size_t len, uint8_t fill,
                             struct log_spec *spec);

static void
writer_close(writer_t *w)
{
    close(w->fd);
    w->fd = -1;
}

/* What a log was written with, frame by frame. */
typedef struct log_spec {
    size_t n;
    uint64_t lsn[MAX_FRAMES];
    uint32_t len[MAX_FRAMES];
    uint32_t crc[MAX_FRAMES];
    uint64_t end; /* where the next frame goes */
} log_spec_t;

static void
spec_add(log_spec_t *s, uint64_t lsn, const uint8_t *payload, size_t len)
{
    CU_ASSERT_FATAL(s->n < MAX_FRAMES);
    s->lsn[s->n] = lsn;
    s->len[s->n] = (uint32_t)len;
    s->crc[s->n] = cn__crc32c(0, payload, len);
    s->n++;
}

static uint64_t
writer_batch(writer_t *w, size_t n, size_t len, uint8_t fill, log_spec_t *spec)
{
    size_t fsize = cn__wal_frame_size(len), total = n * fsize;
    uint64_t start = w->lsn;
    uint8_t *buf = malloc(total), payload[256];

    CU_ASSERT_FATAL(len <= sizeof(payload));
    CU_ASSERT_PTR_NOT_NULL_FATAL(buf);
    CU_ASSERT_FATAL(w->lsn + total <= w->seg_start + SEG - HDR);
    for (size_t i = 0; i < n; i++) {
        memset(payload, fill + (int)i, len);
        cn__wal_frame_encode_batch(buf + i * fsize, start + i * fsize, start, payload, len);
        if (spec)
            spec_add(spec, start + i * fsize, payload, len);
    }
    CU_ASSERT_EQUAL_FATAL(pwrite(w->fd, buf, total, (off_t)(start - w->seg_start)),
                          (ssize_t)total);
    w->lsn += total;
    free(buf);
    return start;
}

/* Writes frames from 0 until the log has used `segments` segments and `extra` frames
 * went into the last one. */
static void
write_log(const char *dir, unsigned segments, size_t extra, log_spec_t *s)
{
    writer_t w;
    uint8_t payload[256];
    size_t in_last = 0;

    memset(s, 0, sizeof(*s));
    writer_open(&w, dir, 0);
    for (size_t i = 0;; i++) {
        size_t len = payload_for(i, payload);
        uint64_t before = w.seg_start, lsn;

        if (w.seg_start / SEG == segments - 1 && in_last == extra)
            break;
        lsn = writer_append(&w, payload, len);
        if (w.seg_start != before)
            in_last = 0;
        if (w.seg_start / SEG == segments - 1)
            in_last++;
        spec_add(s, lsn, payload, len);
    }
    s->end = w.lsn;
    writer_close(&w);
}

/* What the callback saw. */
typedef struct seen {
    size_t n;
    uint64_t lsn[MAX_FRAMES];
    uint32_t len[MAX_FRAMES];
    uint32_t crc[MAX_FRAMES];
    size_t bad_type;
    size_t stop_at; /* return stop_rc on the stop_at-th frame (1-based); 0 = never */
    int stop_rc;
} seen_t;

static int
collect(const cn_wal_frame_t *f, void *arg)
{
    seen_t *s = arg;

    if (f->type != CN_WAL_DATA)
        s->bad_type++;
    if (s->n < MAX_FRAMES) {
        s->lsn[s->n] = f->lsn;
        s->len[s->n] = f->len;
        s->crc[s->n] = cn__crc32c(0, f->payload, f->len);
    }
    s->n++;
    if (s->stop_at && s->n == s->stop_at)
        return s->stop_rc;
    return 0;
}

/* Expects seen to hold exactly spec's frames [from, to), in order, with their payloads. */
static void
expect_frames(const seen_t *seen, const log_spec_t *spec, size_t from, size_t to)
{
    size_t bad = 0;

    CU_ASSERT_EQUAL(seen->bad_type, 0);
    CU_ASSERT_EQUAL_FATAL(seen->n, to - from);
    for (size_t i = from; i < to; i++) {
        size_t k = i - from;

        if (seen->lsn[k] != spec->lsn[i] || seen->len[k] != spec->len[i] ||
            seen->crc[k] != spec->crc[i])
            bad++;
    }
    CU_ASSERT_EQUAL(bad, 0);
}

static int
recover(const char *dir, uint64_t from, seen_t *seen, cn_wal_recovery_t *rep)
{
    size_t stop_at = seen->stop_at;
    int stop_rc = seen->stop_rc;

    memset(seen, 0, sizeof(*seen));
    seen->stop_at = stop_at;
    seen->stop_rc = stop_rc;
    memset(rep, 0x5A, sizeof(*rep)); /* recovery must set every field */
    return cn__wal_recover(dir, SEG, from, 0, collect, seen, rep);
}

static void
expect_clean(const cn_wal_recovery_t *rep, uint64_t end)
{
    CU_ASSERT_EQUAL(rep->end_lsn, end);
    CU_ASSERT_EQUAL(rep->cut_bytes, 0);
    CU_ASSERT_EQUAL(rep->cut_lsn, 0);
    CU_ASSERT_EQUAL(rep->message[0], '\0');
}

/* A whole segment's bytes, malloc'd. */
static uint8_t *
seg_read(const char *dir, uint64_t start)
{
    uint8_t *buf = malloc(SEG);

    CU_ASSERT_PTR_NOT_NULL_FATAL(buf);
    seg_io(dir, start, 0, buf, SEG, 0);
    return buf;
}

/* Encodes a frame into a fresh allocation of exactly its size. */
static uint8_t *
encode(uint64_t lsn, uint8_t type, const void *payload, size_t len, size_t *size)
{
    uint8_t *buf;

    *size = cn__wal_frame_size(len);
    buf = malloc(*size);
    CU_ASSERT_PTR_NOT_NULL_FATAL(buf);
    cn__wal_frame_encode(buf, lsn, type, payload, len);
    return buf;
}

/* Expects decode to fail with want and leave its outputs untouched. */
static int
decode_fails(const uint8_t *buf, size_t avail, uint64_t lsn, int want)
{
    cn_wal_frame_t f, pristine;
    size_t consumed = 777;
    int rc;

    memset(&f, 0x5A, sizeof(f));
    memcpy(&pristine, &f, sizeof(f));
    rc = cn__wal_frame_decode(buf, avail, lsn, &f, &consumed);
    return rc == want && consumed == 777 && memcmp(&f, &pristine, sizeof(f)) == 0;
}

/* ---- frame codec ------------------------------------------------------------------- */

static void
test_frame_size(void)
{
    CU_ASSERT_EQUAL(cn__wal_frame_size(0), 24);
    CU_ASSERT_EQUAL(cn__wal_frame_size(1), 32);
    CU_ASSERT_EQUAL(cn__wal_frame_size(7), 32);
    CU_ASSERT_EQUAL(cn__wal_frame_size(8), 32);
    CU_ASSERT_EQUAL(cn__wal_frame_size(9), 40);
    CU_ASSERT_EQUAL(cn__wal_frame_size(CN_WAL_PAYLOAD_MAX), 24 + (size_t)CN_WAL_PAYLOAD_MAX);
}

static void
test_round_trip(void)
{
    static const size_t lens[] = {0, 1, 7, 8, 9, 100, (1u << 20) + 3};
    const uint64_t lsn = 0x0123456789ABCDE8ull;

    for (size_t t = 0; t < sizeof(lens) / sizeof(lens[0]); t++) {
        size_t len = lens[t], size, consumed = 0;
        uint8_t *payload = malloc(len ? len : 1), *buf, *big;
        cn_wal_frame_t f;

        CU_ASSERT_PTR_NOT_NULL_FATAL(payload);
        for (size_t j = 0; j < len; j++)
            payload[j] = (uint8_t)(j * 251 + t);
        buf = encode(lsn, CN_WAL_DATA, len ? payload : NULL, len, &size);
        CU_ASSERT_EQUAL(size, 24 + (len + 7) / 8 * 8);

        memset(&f, 0, sizeof(f));
        CU_ASSERT_EQUAL_FATAL(cn__wal_frame_decode(buf, size, lsn, &f, &consumed), 0);
        CU_ASSERT_EQUAL(consumed, size);
        CU_ASSERT_EQUAL(f.lsn, lsn);
        CU_ASSERT_EQUAL(f.type, CN_WAL_DATA);
        CU_ASSERT_EQUAL_FATAL(f.len, len);
        CU_ASSERT(f.payload == buf + HDR); /* borrowed, not copied */
        if (len)
            CU_ASSERT_EQUAL(memcmp(f.payload, payload, len), 0);

        /* More bytes available than the frame (the rest of a segment): same frame. */
        big = calloc(1, size + 64);
        CU_ASSERT_PTR_NOT_NULL_FATAL(big);
        memcpy(big, buf, size);
        memset(big + size, 0xEE, 64);
        CU_ASSERT_EQUAL(cn__wal_frame_decode(big, size + 64, lsn, &f, &consumed), 0);
        CU_ASSERT_EQUAL(consumed, size);
        CU_ASSERT_EQUAL(f.len, len);
        free(big);
        free(buf);
        free(payload);
    }
}

static void
test_layout(void)
{
    const uint8_t payload[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
    const uint64_t lsn = 0x1122334455667788ull;
    uint8_t hdr[HDR];
    size_t size;
    uint8_t *buf = encode(lsn, CN_WAL_DATA, payload, sizeof(payload), &size);

    CU_ASSERT_EQUAL_FATAL(size, 40);
    CU_ASSERT_EQUAL(memcmp(buf, "CNWF", 4), 0);
    CU_ASSERT_EQUAL(get_le32(buf + 4), 9);
    CU_ASSERT_EQUAL(get_le64(buf + 8), lsn);
    CU_ASSERT_EQUAL(buf[20], CN_WAL_DATA);
    CU_ASSERT(is_zero(buf + 21, 3));
    CU_ASSERT_EQUAL(memcmp(buf + 24, payload, 9), 0);
    CU_ASSERT(is_zero(buf + 33, 7)); /* padding */
    memcpy(hdr, buf, HDR);
    memset(hdr + 16, 0, 4);
    CU_ASSERT_EQUAL(get_le32(buf + 16), cn__crc32c(cn__crc32c(0, hdr, HDR), payload, 9));
    free(buf);
}

static void
test_seal_round_trip(void)
{
    size_t size, consumed = 0;
    cn_wal_frame_t f;
    uint8_t *buf = encode(SEG - HDR, CN_WAL_SEAL, NULL, 0, &size);

    CU_ASSERT_EQUAL_FATAL(size, HDR);
    CU_ASSERT_EQUAL_FATAL(cn__wal_frame_decode(buf, size, SEG - HDR, &f, &consumed), 0);
    CU_ASSERT_EQUAL(f.type, CN_WAL_SEAL);
    CU_ASSERT_EQUAL(f.len, 0);
    CU_ASSERT_EQUAL(f.lsn, SEG - HDR);
    CU_ASSERT_EQUAL(consumed, HDR);
    free(buf);
}

static void
test_zeroed_is_end(void)
{
    uint8_t *zeros = calloc(1, SEG);

    CU_ASSERT_PTR_NOT_NULL_FATAL(zeros);
    CU_ASSERT(decode_fails(zeros, HDR, 0, CN_ENOTFOUND));
    CU_ASSERT(decode_fails(zeros, SEG, 0, CN_ENOTFOUND));
    CU_ASSERT(decode_fails(zeros, SEG, 4096, CN_ENOTFOUND));
    /* A zeroed header ends the log whatever follows it. */
    memset(zeros + HDR, 0xAB, 100);
    CU_ASSERT(decode_fails(zeros, SEG, 0, CN_ENOTFOUND));
    free(zeros);
}

static void
test_truncation(void)
{
    static const size_t lens[] = {0, 9, 40};
    uint8_t payload[40];
    size_t bad = 0;

    memset(payload, 0x77, sizeof(payload));
    for (size_t t = 0; t < sizeof(lens) / sizeof(lens[0]); t++) {
        size_t size;
        uint8_t *buf = encode(8192, CN_WAL_DATA, payload, lens[t], &size);

        for (size_t l = 0; l < size; l++) {
            /* Exactly l bytes, so ASan catches any read past avail. */
            uint8_t *cut = malloc(l ? l : 1);

            CU_ASSERT_PTR_NOT_NULL_FATAL(cut);
            memcpy(cut, buf, l);
            if (!decode_fails(cut, l, 8192, CN_ECORRUPT))
                bad++;
            free(cut);
        }
        free(buf);
    }
    /* A SEAL too. */
    {
        size_t size;
        uint8_t *buf = encode(8192, CN_WAL_SEAL, NULL, 0, &size);

        for (size_t l = 0; l < size; l++) {
            uint8_t *cut = malloc(l ? l : 1);

            CU_ASSERT_PTR_NOT_NULL_FATAL(cut);
            memcpy(cut, buf, l);
            if (!decode_fails(cut, l, 8192, CN_ECORRUPT))
                bad++;
            free(cut);
        }
        free(buf);
    }
    CU_ASSERT_EQUAL(bad, 0);
}

static void
test_single_byte_flips(void)
{
    static const uint8_t masks[] = {0x01, 0x80, 0xFF};
    static const size_t lens[] = {0, 13, 16};
    uint8_t payload[16];
    size_t bad = 0, tried = 0;

    for (size_t j = 0; j < sizeof(payload); j++)
        payload[j] = (uint8_t)(0x30 + j);
    for (size_t t = 0; t < sizeof(lens) / sizeof(lens[0]); t++) {
        size_t size;
        uint8_t *buf = encode(4096 + 64, CN_WAL_DATA, payload, lens[t], &size);

        for (size_t i = 0; i < size; i++) {
            for (size_t m = 0; m < sizeof(masks); m++) {
                int want;

                buf[i] ^= masks[m];
                /* ENOTFOUND only if the flip left an all-zero header (never: the magic
                 * alone has four non-zero bytes); computed, not assumed. */
                want = is_zero(buf, HDR) ? CN_ENOTFOUND : CN_ECORRUPT;
                if (!decode_fails(buf, size, 4096 + 64, want))
                    bad++;
                buf[i] ^= masks[m];
                tried++;
            }
        }
        free(buf);
    }
    CU_ASSERT_EQUAL(bad, 0);
    CU_ASSERT_EQUAL(tried, 3 * (24 + 40 + 40));
}

static void
test_wrong_lsn(void)
{
    const uint64_t lsn = 12288;
    static const uint64_t wrong[] = {0, 12280, 12287, 12289, 12296, 12288 + SEG,
                                     12288ull | 1ull << 40, UINT64_MAX};
    size_t size;
    uint8_t *buf = encode(lsn, CN_WAL_DATA, "abc", 3, &size);

    for (size_t i = 0; i < sizeof(wrong) / sizeof(wrong[0]); i++)
        CU_ASSERT(decode_fails(buf, size, wrong[i], CN_ECORRUPT));
    free(buf);
    /* And a SEAL. */
    buf = encode(lsn, CN_WAL_SEAL, NULL, 0, &size);
    CU_ASSERT(decode_fails(buf, size, lsn + 8, CN_ECORRUPT));
    free(buf);
}

/* Fields the CRC cannot vouch for: each edit below gets a valid CRC. */
static void
test_invalid_fields_with_valid_crc(void)
{
    static const uint8_t types[] = {0, 3, 0x81, 0xFF};
    uint8_t payload[13];
    size_t size;
    uint8_t *buf, *copy;

    memset(payload, 0x42, sizeof(payload));
    buf = encode(64, CN_WAL_DATA, payload, sizeof(payload), &size);
    copy = malloc(size);
    CU_ASSERT_PTR_NOT_NULL_FATAL(copy);

    for (size_t i = 0; i < sizeof(types); i++) {
        memcpy(copy, buf, size);
        copy[20] = types[i];
        fix_crc(copy, sizeof(payload));
        CU_ASSERT(decode_fails(copy, size, 64, CN_ECORRUPT));
    }
    /* A batch offset reaching below LSN 0 (the frame sits at 64 = 8 * 8). */
    for (size_t i = 21; i < 24; i++) {
        memcpy(copy, buf, size);
        copy[i] = 9;
        fix_crc(copy, sizeof(payload));
        CU_ASSERT(decode_fails(copy, size, 64, CN_ECORRUPT));
    }
    /* A SEAL is always written alone: a batch offset on one is damage. */
    {
        uint8_t seal[HDR];
        cn__wal_frame_encode(seal, 64, CN_WAL_SEAL, NULL, 0);
        seal[21] = 1;
        fix_crc(seal, 0);
        CU_ASSERT(decode_fails(seal, sizeof(seal), 64, CN_ECORRUPT));
    }
    /* Bad magic. */
    memcpy(copy, buf, size);
    copy[3] = 'X';
    fix_crc(copy, sizeof(payload));
    CU_ASSERT(decode_fails(copy, size, 64, CN_ECORRUPT));
    /* Padding is not covered by the CRC but must be zero. */
    for (size_t i = 24 + sizeof(payload); i < size; i++) {
        memcpy(copy, buf, size);
        copy[i] = 0x01;
        CU_ASSERT(decode_fails(copy, size, 64, CN_ECORRUPT));
    }
    /* A SEAL with a payload. */
    memcpy(copy, buf, size);
    copy[20] = CN_WAL_SEAL;
    fix_crc(copy, sizeof(payload));
    CU_ASSERT(decode_fails(copy, size, 64, CN_ECORRUPT));
    free(copy);
    free(buf);

    /* A length over CN_WAL_PAYLOAD_MAX (or huge) is rejected before it is used. */
    {
        static const uint32_t lens[] = {CN_WAL_PAYLOAD_MAX + 1u, 0x7FFFFFFFu, 0xFFFFFFFFu};
        uint8_t hdr[HDR + 8];

        for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
            cn__wal_frame_encode(hdr, 64, CN_WAL_DATA, "12345678", 8);
            put_le32(hdr + 4, lens[i]);
            fix_crc(hdr, 0);
            CU_ASSERT(decode_fails(hdr, sizeof(hdr), 64, CN_ECORRUPT));
        }
        /* A length longer than what is there, CRC over what is there. */
        cn__wal_frame_encode(hdr, 64, CN_WAL_DATA, "12345678", 8);
        put_le32(hdr + 4, 9);
        fix_crc(hdr, 8);
        CU_ASSERT(decode_fails(hdr, sizeof(hdr), 64, CN_ECORRUPT));
    }
}

/* ---- segment files ----------------------------------------------------------------- */

static void
test_segment_path(void)
{
    char out[128];

    CU_ASSERT_EQUAL(cn__wal_segment_path(out, sizeof(out), "/d/wal", 0), 0);
    CU_ASSERT_STRING_EQUAL(out, "/d/wal/0000000000000000.wal");
    CU_ASSERT_EQUAL(cn__wal_segment_path(out, sizeof(out), "/d/wal", 4096), 0);
    CU_ASSERT_STRING_EQUAL(out, "/d/wal/0000000000001000.wal");
    CU_ASSERT_EQUAL(cn__wal_segment_path(out, sizeof(out), "w", 0xABCDEF0123456000ull), 0);
    CU_ASSERT_STRING_EQUAL(out, "w/abcdef0123456000.wal");
    /* Exactly fits (27 characters and the NUL), one byte short. */
    CU_ASSERT_EQUAL(cn__wal_segment_path(out, 28, "/d/wal", 0), 0);
    CU_ASSERT_EQUAL(cn__wal_segment_path(out, 27, "/d/wal", 0), -ENAMETOOLONG);
}

static void
test_mkdir(void)
{
    char dir[512], file[600];
    struct stat st;
    int fd;

    snprintf(dir, sizeof(dir), "%s/t%d/a/b/wal", tmpdir, dir_seq++);
    CU_ASSERT_EQUAL(cn__wal_mkdir(dir), 0);
    CU_ASSERT(stat(dir, &st) == 0 && S_ISDIR(st.st_mode));
    CU_ASSERT_EQUAL(cn__wal_mkdir(dir), 0); /* already there */
    strcat(dir, "/");
    CU_ASSERT_EQUAL(cn__wal_mkdir(dir), 0); /* trailing slash */

    snprintf(file, sizeof(file), "%s/t%d", tmpdir, dir_seq++);
    CU_ASSERT_EQUAL(cn__wal_mkdir(file), 0);
    strcat(file, "/plain");
    fd = open(file, O_CREAT | O_WRONLY, 0644);
    CU_ASSERT_FATAL(fd >= 0);
    close(fd);
    CU_ASSERT_EQUAL(cn__wal_mkdir(file), -ENOTDIR);
    strcat(file, "/wal");
    CU_ASSERT_EQUAL(cn__wal_mkdir(file), -ENOTDIR);
    CU_ASSERT_EQUAL(cn__wal_mkdir(""), -EINVAL);
}

static void
test_segment_create(void)
{
    char dir[512], path[600], tmp[700];
    struct stat st;
    uint8_t *buf;
    int fd, fd2;

    fresh_dir(dir, sizeof(dir));
    fd = cn__wal_segment_open(dir, 2 * 65536, 65536);
    CU_ASSERT_FATAL(fd >= 0);
    CU_ASSERT(fcntl(fd, F_GETFD) & FD_CLOEXEC);
    CU_ASSERT(fcntl(fd, F_GETFL) & O_RDWR);
    snprintf(path, sizeof(path), "%s/0000000000020000.wal", dir);
    CU_ASSERT_FATAL(stat(path, &st) == 0);
    CU_ASSERT(S_ISREG(st.st_mode));
    CU_ASSERT_EQUAL(st.st_size, 65536);
    /* Written, not sparse: every block is allocated. */
    CU_ASSERT(st.st_blocks * 512 >= 65536);
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    CU_ASSERT(access(tmp, F_OK) != 0);

    buf = malloc(65536);
    CU_ASSERT_PTR_NOT_NULL_FATAL(buf);
    CU_ASSERT_EQUAL(pread(fd, buf, 65536, 0), 65536);
    CU_ASSERT(is_zero(buf, 65536));

    /* Reopen: the same file, kept as it is. */
    CU_ASSERT_EQUAL(pwrite(fd, "hello", 5, 1000), 5);
    close(fd);
    fd2 = cn__wal_segment_open(dir, 2 * 65536, 65536);
    CU_ASSERT_FATAL(fd2 >= 0);
    CU_ASSERT(fcntl(fd2, F_GETFD) & FD_CLOEXEC);
    CU_ASSERT_EQUAL(pread(fd2, buf, 65536, 0), 65536);
    CU_ASSERT_EQUAL(memcmp(buf + 1000, "hello", 5), 0);
    CU_ASSERT(is_zero(buf, 1000));
    CU_ASSERT(is_zero(buf + 1005, 65536 - 1005));
    close(fd2);
    CU_ASSERT(stat(path, &st) == 0 && st.st_size == 65536);
    free(buf);

    /* A larger segment, more than one zero chunk. */
    fd = cn__wal_segment_open(dir, 0, (3u << 20) + 4096);
    CU_ASSERT_FATAL(fd >= 0);
    CU_ASSERT(fstat(fd, &st) == 0 && st.st_size == (3 << 20) + 4096);
    buf = malloc((3u << 20) + 4096);
    CU_ASSERT_PTR_NOT_NULL_FATAL(buf);
    CU_ASSERT_EQUAL(pread(fd, buf, (3u << 20) + 4096, 0), (3 << 20) + 4096);
    CU_ASSERT(is_zero(buf, (3u << 20) + 4096));
    free(buf);
    close(fd);
}

static void
test_segment_open_refuses(void)
{
    char dir[512], path[600], tmp[700];
    struct stat st;
    int fd;

    fresh_dir(dir, sizeof(dir));
    /* Bad arguments. */
    CU_ASSERT_EQUAL(cn__wal_segment_open(dir, 100, SEG), -EINVAL);   /* not a boundary */
    CU_ASSERT_EQUAL(cn__wal_segment_open(dir, 0, SEG + 4), -EINVAL); /* not 8-aligned */
    CU_ASSERT_EQUAL(cn__wal_segment_open(dir, 0, 0), -EINVAL);
    CU_ASSERT_EQUAL(cn__wal_segment_open(dir, 0, 40), -EINVAL); /* no room for a SEAL */
    CU_ASSERT_EQUAL(cn__wal_segment_open(dir, UINT64_MAX - SEG + 1, SEG), -EINVAL);

    /* An existing file of the wrong size is never overwritten. */
    seg_path(path, sizeof(path), dir, SEG);
    fd = open(path, O_CREAT | O_WRONLY, 0644);
    CU_ASSERT_FATAL(fd >= 0);
    CU_ASSERT_EQUAL(write(fd, "short", 5), 5);
    close(fd);
    CU_ASSERT_EQUAL(cn__wal_segment_open(dir, SEG, SEG), CN_ECORRUPT);
    CU_ASSERT(stat(path, &st) == 0 && st.st_size == 5);

    /* A stale temp file from a crash during creation is replaced. */
    seg_path(path, sizeof(path), dir, 2 * SEG);
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    fd = open(tmp, O_CREAT | O_WRONLY, 0644);
    CU_ASSERT_FATAL(fd >= 0);
    CU_ASSERT_EQUAL(write(fd, "garbage!", 8), 8);
    close(fd);
    fd = cn__wal_segment_open(dir, 2 * SEG, SEG);
    CU_ASSERT_FATAL(fd >= 0);
    close(fd);
    CU_ASSERT(stat(path, &st) == 0 && st.st_size == SEG);
    CU_ASSERT(access(tmp, F_OK) != 0);
    {
        uint8_t *buf = seg_read(dir, 2 * SEG);
        CU_ASSERT(is_zero(buf, SEG));
        free(buf);
    }

    /* The directory must exist. */
    snprintf(path, sizeof(path), "%s/missing", dir);
    CU_ASSERT_EQUAL(cn__wal_segment_open(path, 0, SEG), -ENOENT);
}

/* ---- recovery ---------------------------------------------------------------------- */

static void
test_recover_clean_three_segments(void)
{
    char dir[512];
    log_spec_t spec;
    seen_t seen = {0};
    cn_wal_recovery_t rep;
    size_t per_seg[3] = {0, 0, 0};

    fresh_dir(dir, sizeof(dir));
    write_log(dir, 3, 5, &spec);
    CU_ASSERT(file_exists(dir, 0) && file_exists(dir, SEG) && file_exists(dir, 2 * SEG));
    CU_ASSERT(!file_exists(dir, 3 * SEG));
    for (size_t i = 0; i < spec.n; i++)
        per_seg[spec.lsn[i] / SEG]++;
    CU_ASSERT(per_seg[0] > 5 && per_seg[1] > 5 && per_seg[2] == 5);

    CU_ASSERT_EQUAL_FATAL(recover(dir, 0, &seen, &rep), 0);
    expect_frames(&seen, &spec, 0, spec.n);
    CU_ASSERT_EQUAL(rep.frames, spec.n);
    expect_clean(&rep, spec.end);
    CU_ASSERT(spec.end > 2 * SEG && spec.end < 3 * SEG);

    /* A NULL callback validates and counts. */
    CU_ASSERT_EQUAL(cn__wal_recover(dir, SEG, 0, 0, NULL, NULL, &rep), 0);
    CU_ASSERT_EQUAL(rep.frames, spec.n);
    CU_ASSERT_EQUAL(rep.end_lsn, spec.end);
}

static void
test_recover_sealed_last_segment(void)
{
    char dir[512];
    writer_t w;
    seen_t seen = {0};
    cn_wal_recovery_t rep;

    /* The last segment ends with a SEAL and the next one was never created. */
    fresh_dir(dir, sizeof(dir));
    writer_open(&w, dir, 0);
    writer_append(&w, "one", 3);
    writer_append(&w, "two", 3);
    writer_write(&w, w.lsn, CN_WAL_SEAL, NULL, 0);
    writer_close(&w);
    CU_ASSERT_EQUAL_FATAL(recover(dir, 0, &seen, &rep), 0);
    CU_ASSERT_EQUAL(seen.n, 2);
    expect_clean(&rep, SEG);

    /* A SEAL straight at the start of a segment: an empty segment. */
    writer_open(&w, dir, SEG);
    writer_write(&w, SEG, CN_WAL_SEAL, NULL, 0);
    writer_close(&w);
    CU_ASSERT_EQUAL_FATAL(recover(dir, 0, &seen, &rep), 0);
    CU_ASSERT_EQUAL(seen.n, 2);
    expect_clean(&rep, 2 * SEG);
}

static void
test_recover_from_middle(void)
{
    char dir[512];
    log_spec_t spec;
    seen_t seen = {0};
    cn_wal_recovery_t rep;
    size_t k = 0;
    uint8_t *garbage;

    fresh_dir(dir, sizeof(dir));
    write_log(dir, 3, 4, &spec);
    /* The first frame of segment 1, then two frames further. */
    while (spec.lsn[k] < SEG)
        k++;
    k += 2;

    /* From a frame's own LSN: that frame and every later one. */
    CU_ASSERT_EQUAL_FATAL(recover(dir, spec.lsn[k], &seen, &rep), 0);
    expect_frames(&seen, &spec, k, spec.n);
    CU_ASSERT_EQUAL(rep.frames, spec.n - k);
    expect_clean(&rep, spec.end);

    /* From inside a frame: the frames that start at or after it. */
    CU_ASSERT_EQUAL_FATAL(recover(dir, spec.lsn[k] + 1, &seen, &rep), 0);
    expect_frames(&seen, &spec, k + 1, spec.n);
    expect_clean(&rep, spec.end);

    /* From the end: nothing to replay, the same end. */
    CU_ASSERT_EQUAL_FATAL(recover(dir, spec.end, &seen, &rep), 0);
    CU_ASSERT_EQUAL(seen.n, 0);
    CU_ASSERT_EQUAL(rep.frames, 0);
    expect_clean(&rep, spec.end);

    /* From a segment boundary: the segment wholly below it is not even read. */
    garbage = malloc(SEG);
    CU_ASSERT_PTR_NOT_NULL_FATAL(garbage);
    memset(garbage, 0xC3, SEG);
    seg_io(dir, 0, 0, garbage, SEG, 1);
    free(garbage);
    k = 0;
    while (spec.lsn[k] < SEG)
        k++;
    CU_ASSERT_EQUAL_FATAL(recover(dir, SEG, &seen, &rep), 0);
    expect_frames(&seen, &spec, k, spec.n);
    expect_clean(&rep, spec.end);
    /* ...but from below it, the damage is found. */
    CU_ASSERT_EQUAL(recover(dir, SEG - 8, &seen, &rep), CN_ECORRUPT);
    CU_ASSERT_EQUAL(seen.n, 0);
}

static void
test_recover_idempotent(void)
{
    char dir[512];
    log_spec_t spec;
    seen_t a = {0}, b = {0};
    cn_wal_recovery_t ra, rb;
    uint8_t junk[40];

    fresh_dir(dir, sizeof(dir));
    write_log(dir, 2, 6, &spec);
    CU_ASSERT_EQUAL_FATAL(recover(dir, 0, &a, &ra), 0);
    CU_ASSERT_EQUAL_FATAL(recover(dir, 0, &b, &rb), 0);
    expect_frames(&a, &spec, 0, spec.n);
    expect_frames(&b, &spec, 0, spec.n);
    expect_clean(&ra, spec.end);
    expect_clean(&rb, spec.end);

    /* With a torn tail: the first run cuts it, the second sees a clean log. */
    memset(junk, 0x99, sizeof(junk));
    seg_io(dir, SEG, spec.end - SEG, junk, sizeof(junk), 1);
    CU_ASSERT_EQUAL_FATAL(recover(dir, 0, &a, &ra), 0);
    expect_frames(&a, &spec, 0, spec.n);
    CU_ASSERT_EQUAL(ra.end_lsn, spec.end);
    CU_ASSERT_EQUAL(ra.cut_lsn, spec.end);
    CU_ASSERT_EQUAL(ra.cut_bytes, sizeof(junk));
    CU_ASSERT(ra.message[0] != '\0');
    CU_ASSERT_EQUAL_FATAL(recover(dir, 0, &b, &rb), 0);
    expect_frames(&b, &spec, 0, spec.n);
    expect_clean(&rb, spec.end);
}

/* The torn tail at every byte offset of the last frame, filled with zeros or garbage from
 * that offset to the frame's end. */
static void
test_torn_tail_every_offset(void)
{
    char dir[512];
    log_spec_t spec;
    writer_t w;
    seen_t seen = {0};
    cn_wal_recovery_t rep;
    uint8_t payload[64], *image, *orig, *after;
    const char fresh[] = "the frame written after the cut";
    uint64_t last, seg_start, fsize, off;
    size_t bad_rc = 0, bad_frames = 0, bad_cut = 0, bad_zero = 0, bad_again = 0, cuts = 0;

    fresh_dir(dir, sizeof(dir));
    write_log(dir, 2, 3, &spec);
    /* One more frame with padding (45 bytes of payload, 3 of padding): the victim. */
    writer_open(&w, dir, spec.end);
    memset(payload, 0, sizeof(payload));
    for (size_t j = 0; j < 45; j++)
        payload[j] = (uint8_t)(0xF0 ^ j);
    payload[10] = 0; /* zeros inside the payload too */
    payload[11] = 0;
    last = writer_append(&w, payload, 45);
    writer_close(&w);
    spec_add(&spec, last, payload, 45);
    spec.end = last + cn__wal_frame_size(45);
    seg_start = last - last % SEG;
    fsize = cn__wal_frame_size(45);
    off = last - seg_start;
    CU_ASSERT_EQUAL_FATAL(seg_start, SEG);
    CU_ASSERT_EQUAL_FATAL(fsize, 72);

    image = seg_read(dir, seg_start);
    orig = malloc(SEG);
    CU_ASSERT_PTR_NOT_NULL_FATAL(orig);
    for (int fill = 0; fill < 2; fill++) {
        for (uint64_t k = 0; k < fsize; k++) {
            int intact, all_zero_frame;

            memcpy(orig, image, SEG);
            for (uint64_t j = k; j < fsize; j++)
                orig[off + j] = fill ? (uint8_t)(0x5B + 3 * j) | 1 : 0;
            intact = memcmp(orig + off, image + off, fsize) == 0;
            all_zero_frame = is_zero(orig + off, fsize);
            seg_io(dir, seg_start, 0, orig, SEG, 1);

            if (recover(dir, 0, &seen, &rep) != 0) {
                bad_rc++;
                continue;
            }
            if (intact) {
                /* Zeros over the padding: still the same frame. */
                if (seen.n != spec.n || rep.end_lsn != spec.end || rep.cut_bytes)
                    bad_frames++;
                continue;
            }
            /* Every frame but the last, in order, with its payload. */
            if (seen.n != spec.n - 1 || rep.frames != spec.n - 1 || rep.end_lsn != last ||
                seen.lsn[spec.n - 2] != spec.lsn[spec.n - 2] ||
                seen.crc[spec.n - 2] != spec.crc[spec.n - 2])
                bad_frames++;
            if (all_zero_frame) {
                /* Nothing of it reached the disk: a clean end, nothing to cut. */
                if (rep.cut_bytes || rep.message[0])
                    bad_cut++;
            } else {
                cuts++;
                if (rep.cut_lsn != last || rep.cut_bytes == 0 || rep.cut_bytes > fsize ||
                    rep.message[0] == '\0' || !strstr(rep.message, "cut"))
                    bad_cut++;
            }
            /* The segment is zeros from the cut to its end, the frames before untouched. */
            after = seg_read(dir, seg_start);
            if (!is_zero(after + off, SEG - off) || memcmp(after, image, off) != 0)
                bad_zero++;
            free(after);

            /* Write a new frame where the log now ends, and recover again. */
            writer_open(&w, dir, rep.end_lsn);
            writer_append(&w, fresh, sizeof(fresh));
            writer_close(&w);
            if (recover(dir, 0, &seen, &rep) != 0 || seen.n != spec.n ||
                seen.lsn[spec.n - 1] != last || seen.len[spec.n - 1] != sizeof(fresh) ||
                seen.crc[spec.n - 1] != cn__crc32c(0, fresh, sizeof(fresh)) ||
                seen.crc[0] != spec.crc[0] ||
                rep.end_lsn != last + cn__wal_frame_size(sizeof(fresh)) || rep.cut_bytes ||
                rep.message[0])
                bad_again++;
        }
    }
    CU_ASSERT_EQUAL(bad_rc, 0);
    CU_ASSERT_EQUAL(bad_frames, 0);
    CU_ASSERT_EQUAL(bad_cut, 0);
    CU_ASSERT_EQUAL(bad_zero, 0);
    CU_ASSERT_EQUAL(bad_again, 0);
    /* Zero fill: offsets 1..68 are torn (0 is a clean end, 69..71 hit only padding);
     * garbage: all 72. */
    CU_ASSERT_EQUAL(cuts, 68 + 72);
    free(orig);
    free(image);
}

static void
test_tail_after_zeroed_header(void)
{
    char dir[512];
    log_spec_t spec;
    seen_t seen = {0};
    cn_wal_recovery_t rep;
    uint8_t junk[16], frame[32], *image;

    /* Stray bytes after the end (a later page of a torn write landed, the first did
     * not): cut, so they can never be read as part of a frame written over them. */
    fresh_dir(dir, sizeof(dir));
    write_log(dir, 1, 5, &spec);
    memset(junk, 0x3C, sizeof(junk));
    seg_io(dir, 0, spec.end + 200, junk, sizeof(junk), 1);
    CU_ASSERT_EQUAL_FATAL(recover(dir, 0, &seen, &rep), 0);
    expect_frames(&seen, &spec, 0, spec.n);
    CU_ASSERT_EQUAL(rep.end_lsn, spec.end);
    CU_ASSERT_EQUAL(rep.cut_lsn, spec.end);
    CU_ASSERT_EQUAL(rep.cut_bytes, 200 + sizeof(junk));
    CU_ASSERT(rep.message[0] != '\0');
    image = seg_read(dir, 0);
    CU_ASSERT(is_zero(image + spec.end, SEG - spec.end));
    free(image);

    /* A valid frame after a zeroed header: damage, nothing cut. */
    cn__wal_frame_encode(frame, spec.end + 64, CN_WAL_DATA, "x", 1);
    seg_io(dir, 0, spec.end + 64, frame, sizeof(frame), 1);
    CU_ASSERT_EQUAL(recover(dir, 0, &seen, &rep), CN_ECORRUPT);
    expect_frames(&seen, &spec, 0, spec.n);
    CU_ASSERT(rep.message[0] != '\0');
    image = seg_read(dir, 0);
    CU_ASSERT_EQUAL(memcmp(image + spec.end + 64, frame, sizeof(frame)), 0);
    free(image);
}

static void
test_corrupt_middle(void)
{
    char dir[512], lsn_text[32];
    writer_t w;
    log_spec_t spec;
    seen_t seen = {0};
    cn_wal_recovery_t rep;
    uint8_t payload[64], *before, *after;
    static const size_t where[] = {0, 3, 8, 16, 20, 24, 30};

    /* Ten frames in one segment; one byte of frame 3 flipped (header or payload). */
    for (size_t t = 0; t < sizeof(where) / sizeof(where[0]); t++) {
        uint8_t b;

        fresh_dir(dir, sizeof(dir));
        memset(&spec, 0, sizeof(spec));
        writer_open(&w, dir, 0);
        for (size_t i = 0; i < 10; i++) {
            memset(payload, (int)(i + 1), sizeof(payload));
            spec_add(&spec, writer_append(&w, payload, 40), payload, 40);
        }
        spec.end = w.lsn;
        writer_close(&w);

        seg_io(dir, 0, spec.lsn[2] + where[t], &b, 1, 0);
        b ^= 0x10;
        seg_io(dir, 0, spec.lsn[2] + where[t], &b, 1, 1);
        before = seg_read(dir, 0);

        CU_ASSERT_EQUAL(recover(dir, 0, &seen, &rep), CN_ECORRUPT);
        expect_frames(&seen, &spec, 0, 2);
        CU_ASSERT(rep.message[0] != '\0');
        snprintf(lsn_text, sizeof(lsn_text), "%" PRIu64, spec.lsn[2]);
        CU_ASSERT_PTR_NOT_NULL(strstr(rep.message, lsn_text));
        CU_ASSERT_EQUAL(rep.cut_bytes, 0);
        /* Damage is reported, never cut: the segment is as it was. */
        after = seg_read(dir, 0);
        CU_ASSERT_EQUAL(memcmp(before, after, SEG), 0);
        free(before);
        free(after);
    }

    /* Damage in a non-last segment. */
    fresh_dir(dir, sizeof(dir));
    write_log(dir, 2, 3, &spec);
    {
        uint8_t b = 0xEE;
        seg_io(dir, 0, spec.lsn[1] + 25, &b, 1, 1);
    }
    CU_ASSERT_EQUAL(recover(dir, 0, &seen, &rep), CN_ECORRUPT);
    expect_frames(&seen, &spec, 0, 1);
    CU_ASSERT(rep.message[0] != '\0');
}

/* A tear followed by valid frames of the same write within the tail window (one unsynced
 * write whose pages reached the disk out of order) is a torn tail: cut, not damage.
 * Beyond the window the same log is damage in the middle. */
static void
test_torn_within_window(void)
{
    char dir[512];
    writer_t w;
    log_spec_t spec;
    seen_t seen = {0};
    cn_wal_recovery_t rep;
    uint8_t b;
    uint64_t window;

    fresh_dir(dir, sizeof(dir));
    memset(&spec, 0, sizeof(spec));
    writer_open(&w, dir, 0);
    writer_batch(&w, 10, 40, 1, &spec);
    spec.end = w.lsn;
    writer_close(&w);
    seg_io(dir, 0, spec.lsn[2] + 30, &b, 1, 0);
    b ^= 0x10;
    seg_io(dir, 0, spec.lsn[2] + 30, &b, 1, 1);

    /* A window that stops short of the last frame: still damage. */
    window = spec.lsn[9] - spec.lsn[2] - 8;
    memset(&seen, 0, sizeof(seen));
    CU_ASSERT_EQUAL(cn__wal_recover(dir, SEG, 0, window, collect, &seen, &rep), CN_ECORRUPT);
    expect_frames(&seen, &spec, 0, 2);

    /* A window covering every frame after the tear: a torn tail, cut. */
    window = spec.end - spec.lsn[2];
    memset(&seen, 0, sizeof(seen));
    CU_ASSERT_EQUAL(cn__wal_recover(dir, SEG, 0, window, collect, &seen, &rep), 0);
    expect_frames(&seen, &spec, 0, 2);
    CU_ASSERT_EQUAL(rep.end_lsn, spec.lsn[2]);
    CU_ASSERT_EQUAL(rep.cut_lsn, spec.lsn[2]);
    CU_ASSERT(rep.cut_bytes > 0);

    /* What was cut is gone for good: a strict recovery now sees a clean end. */
    memset(&seen, 0, sizeof(seen));
    CU_ASSERT_EQUAL(cn__wal_recover(dir, SEG, 0, 0, collect, &seen, &rep), 0);
    expect_frames(&seen, &spec, 0, 2);
    CU_ASSERT_EQUAL(rep.cut_bytes, 0);
}

/* One flipped byte in a synced write followed by valid frames of later writes is damage,
 * however large the tail window: only the last write may be torn. The error names the
 * segment file and the offset, nothing is passed past the damage, nothing is modified. */
static void
test_damage_before_later_writes(void)
{
    char dir[512], path[600], want[64];
    writer_t w;
    log_spec_t spec;
    seen_t seen = {0};
    cn_wal_recovery_t rep;
    uint8_t b, *before, *after;

    fresh_dir(dir, sizeof(dir));
    memset(&spec, 0, sizeof(spec));
    writer_open(&w, dir, 0);
    writer_batch(&w, 5, 40, 1, &spec);  /* frames 0..4: the damaged write */
    writer_batch(&w, 5, 40, 20, &spec); /* frames 5..9: acknowledged later writes */
    writer_batch(&w, 3, 16, 40, &spec); /* frames 10..12 */
    spec.end = w.lsn;
    writer_close(&w);
    seg_io(dir, 0, spec.lsn[2] + 30, &b, 1, 0);
    b ^= 0x01;
    seg_io(dir, 0, spec.lsn[2] + 30, &b, 1, 1);
    before = seg_read(dir, 0);

    CU_ASSERT_EQUAL(cn__wal_recover(dir, SEG, 0, UINT64_MAX, collect, &seen, &rep),
                    CN_ECORRUPT);
    expect_frames(&seen, &spec, 0, 2);
    seg_path(path, sizeof(path), dir, 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(rep.message, path));
    snprintf(want, sizeof(want), "offset %" PRIu64 " ", spec.lsn[2]);
    CU_ASSERT_PTR_NOT_NULL(strstr(rep.message, want));
    CU_ASSERT_EQUAL(rep.cut_bytes, 0);
    after = seg_read(dir, 0);
    CU_ASSERT_EQUAL(memcmp(before, after, SEG), 0);
    free(before);
    free(after);

    /* The same flip in the last write is a torn tail: cut, the earlier writes kept. */
    fresh_dir(dir, sizeof(dir));
    memset(&spec, 0, sizeof(spec));
    writer_open(&w, dir, 0);
    writer_batch(&w, 5, 40, 1, &spec);
    writer_batch(&w, 5, 40, 20, &spec);
    spec.end = w.lsn;
    writer_close(&w);
    seg_io(dir, 0, spec.lsn[6] + 30, &b, 1, 0);
    b ^= 0x01;
    seg_io(dir, 0, spec.lsn[6] + 30, &b, 1, 1);
    memset(&seen, 0, sizeof(seen));
    CU_ASSERT_EQUAL(cn__wal_recover(dir, SEG, 0, UINT64_MAX, collect, &seen, &rep), 0);
    expect_frames(&seen, &spec, 0, 6);
    CU_ASSERT_EQUAL(rep.end_lsn, spec.lsn[6]);
    CU_ASSERT(rep.cut_bytes > 0);

    /* A zeroed first page of a write followed by a later write: damage too. */
    fresh_dir(dir, sizeof(dir));
    memset(&spec, 0, sizeof(spec));
    writer_open(&w, dir, 0);
    writer_batch(&w, 2, 40, 1, &spec);
    writer_batch(&w, 2, 40, 20, &spec);
    spec.end = w.lsn;
    writer_close(&w);
    {
        uint8_t zeros[HDR] = {0};
        seg_io(dir, 0, spec.lsn[0], zeros, sizeof(zeros), 1);
    }
    memset(&seen, 0, sizeof(seen));
    CU_ASSERT_EQUAL(cn__wal_recover(dir, SEG, 0, UINT64_MAX, collect, &seen, &rep),
                    CN_ECORRUPT);
    CU_ASSERT_EQUAL(seen.n, 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(rep.message, "offset 0 "));
}

static void
test_unsealed_non_last_segment(void)
{
    char dir[512];
    writer_t w;
    seen_t seen = {0};
    cn_wal_recovery_t rep;
    int fd;

    /* Segment 0 stops without a SEAL, segment 1 holds frames: damage. */
    fresh_dir(dir, sizeof(dir));
    writer_open(&w, dir, 0);
    writer_append(&w, "a", 1);
    writer_append(&w, "b", 1);
    writer_close(&w);
    writer_open(&w, dir, SEG);
    writer_append(&w, "c", 1);
    writer_close(&w);
    CU_ASSERT_EQUAL(recover(dir, 0, &seen, &rep), CN_ECORRUPT);
    CU_ASSERT_EQUAL(seen.n, 2);
    CU_ASSERT(rep.message[0] != '\0');
    CU_ASSERT_PTR_NOT_NULL(strstr(rep.message, "SEAL"));

    /* Segment 1 holding only garbage is damage too. */
    {
        uint8_t junk[8] = {1, 2, 3, 4, 5, 6, 7, 8};
        uint8_t zeros[32] = {0};
        seg_io(dir, SEG, 0, zeros, sizeof(zeros), 1);
        seg_io(dir, SEG, 512, junk, sizeof(junk), 1);
    }
    CU_ASSERT_EQUAL(recover(dir, 0, &seen, &rep), CN_ECORRUPT);

    /* Segment 1 created but never written (all zeros): not damage, the log ends in
     * segment 0 and the empty segment is left for the writer. */
    fresh_dir(dir, sizeof(dir));
    writer_open(&w, dir, 0);
    writer_append(&w, "a", 1);
    writer_append(&w, "b", 1);
    writer_close(&w);
    fd = cn__wal_segment_open(dir, SEG, SEG);
    CU_ASSERT_FATAL(fd >= 0);
    close(fd);
    CU_ASSERT_EQUAL(recover(dir, 0, &seen, &rep), 0);
    CU_ASSERT_EQUAL(seen.n, 2);
    expect_clean(&rep, 64);
    CU_ASSERT(file_exists(dir, SEG));
}

static void
test_wrong_size_segment(void)
{
    char dir[512], path[600];
    log_spec_t spec;
    seen_t seen = {0};
    cn_wal_recovery_t rep;
    size_t k = 0;

    fresh_dir(dir, sizeof(dir));
    write_log(dir, 3, 2, &spec);
    while (spec.lsn[k] < SEG)
        k++;
    seg_path(path, sizeof(path), dir, SEG);
    CU_ASSERT_EQUAL_FATAL(truncate(path, SEG - 8), 0);
    CU_ASSERT_EQUAL(recover(dir, 0, &seen, &rep), CN_ECORRUPT);
    expect_frames(&seen, &spec, 0, k); /* segment 0 was applied, nothing after */
    CU_ASSERT(rep.message[0] != '\0');
    CU_ASSERT_EQUAL_FATAL(truncate(path, SEG + 8), 0);
    CU_ASSERT_EQUAL(recover(dir, 0, &seen, &rep), CN_ECORRUPT);

    /* The last segment too. */
    CU_ASSERT_EQUAL_FATAL(truncate(path, SEG), 0);
    seg_path(path, sizeof(path), dir, 2 * SEG);
    CU_ASSERT_EQUAL_FATAL(truncate(path, 100), 0);
    CU_ASSERT_EQUAL(recover(dir, 0, &seen, &rep), CN_ECORRUPT);
}

static void
test_missing_segment(void)
{
    char dir[512], path[600];
    log_spec_t spec;
    seen_t seen = {0};
    cn_wal_recovery_t rep;
    size_t k = 0;
    int fd;

    fresh_dir(dir, sizeof(dir));
    write_log(dir, 3, 2, &spec);
    while (spec.lsn[k] < SEG)
        k++;
    seg_path(path, sizeof(path), dir, SEG);
    CU_ASSERT_EQUAL_FATAL(unlink(path), 0);
    CU_ASSERT_EQUAL(recover(dir, 0, &seen, &rep), CN_ECORRUPT);
    expect_frames(&seen, &spec, 0, k);
    CU_ASSERT_PTR_NOT_NULL(strstr(rep.message, "0000000000001000"));

    /* A log may start at from_lsn when that is a segment boundary, never further up;
     * the segment that holds a from_lsn inside it must be there (the store applied
     * frames from it). */
    fresh_dir(dir, sizeof(dir));
    fd = cn__wal_segment_open(dir, 2 * SEG, SEG);
    CU_ASSERT_FATAL(fd >= 0);
    close(fd);
    CU_ASSERT_EQUAL(recover(dir, 2 * SEG, &seen, &rep), 0);
    expect_clean(&rep, 2 * SEG);
    CU_ASSERT_EQUAL(recover(dir, SEG + 100, &seen, &rep), CN_ECORRUPT);
    CU_ASSERT_PTR_NOT_NULL(strstr(rep.message, "0000000000001000.wal is missing"));
    CU_ASSERT_EQUAL(recover(dir, 100, &seen, &rep), CN_ECORRUPT);
    CU_ASSERT(rep.message[0] != '\0');
    CU_ASSERT_EQUAL(recover(dir, SEG, &seen, &rep), CN_ECORRUPT);
}

/* Every segment deleted (or the directory recreated empty) under a store that applied
 * frames from the middle of a segment: CN_ECORRUPT naming the segment. */
static void
test_missing_applied_segment(void)
{
    char dir[512], path[600];
    log_spec_t spec;
    seen_t seen = {0};
    cn_wal_recovery_t rep;

    fresh_dir(dir, sizeof(dir));
    write_log(dir, 2, 3, &spec);
    seg_path(path, sizeof(path), dir, 0);
    CU_ASSERT_EQUAL_FATAL(unlink(path), 0);
    seg_path(path, sizeof(path), dir, SEG);
    CU_ASSERT_EQUAL_FATAL(unlink(path), 0);
    CU_ASSERT_EQUAL(recover(dir, spec.lsn[spec.n - 1], &seen, &rep), CN_ECORRUPT);
    CU_ASSERT_EQUAL(seen.n, 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(rep.message, "0000000000001000.wal is missing"));
    /* A fresh log (from 0) in the same empty directory is fine. */
    CU_ASSERT_EQUAL(recover(dir, 0, &seen, &rep), 0);
    expect_clean(&rep, 0);
}

static void
test_ignores_other_files(void)
{
    static const char *names[] = {
        "notes.txt",          "0000000000000000.wal.tmp", "000000000000000g.wal",
        "0000000000001000.WAL", "0000000000001000.wa",    "000000000000A000.wal",
        "00000000000001000.wal", "000000000001000.wal",   ".wal",
    };
    char dir[512], path[700];
    log_spec_t spec;
    seen_t seen = {0};
    cn_wal_recovery_t rep;
    size_t removed = 99;

    fresh_dir(dir, sizeof(dir));
    write_log(dir, 2, 3, &spec);
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        int fd;

        snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
        fd = open(path, O_CREAT | O_WRONLY, 0644);
        CU_ASSERT_FATAL(fd >= 0);
        CU_ASSERT_EQUAL(write(fd, "x", 1), 1);
        close(fd);
    }
    snprintf(path, sizeof(path), "%s/subdir", dir);
    CU_ASSERT_EQUAL(mkdir(path, 0755), 0);

    CU_ASSERT_EQUAL_FATAL(recover(dir, 0, &seen, &rep), 0);
    expect_frames(&seen, &spec, 0, spec.n);
    expect_clean(&rep, spec.end);

    CU_ASSERT_EQUAL(cn__wal_remove_below(dir, SEG, UINT64_MAX, &removed), 0);
    CU_ASSERT_EQUAL(removed, 2);
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
        CU_ASSERT(access(path, F_OK) == 0);
    }
}

static void
test_empty_dir(void)
{
    static const struct {
        uint64_t from, end;
    } cases[] = {
        {0, 0}, {SEG, SEG}, {1000 * SEG, 1000 * SEG},
    };
    static const uint64_t inside[] = {1, SEG - 1, SEG + 1, 5000, 1000 * SEG + 24};
    char dir[512];
    seen_t seen = {0};
    cn_wal_recovery_t rep;

    fresh_dir(dir, sizeof(dir));
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        CU_ASSERT_EQUAL(recover(dir, cases[i].from, &seen, &rep), 0);
        CU_ASSERT_EQUAL(seen.n, 0);
        CU_ASSERT_EQUAL(rep.frames, 0);
        expect_clean(&rep, cases[i].end);
    }
    /* A from_lsn inside a segment: that segment held applied frames, it must exist. */
    for (size_t i = 0; i < sizeof(inside) / sizeof(inside[0]); i++) {
        CU_ASSERT_EQUAL(recover(dir, inside[i], &seen, &rep), CN_ECORRUPT);
        CU_ASSERT_EQUAL(seen.n, 0);
        CU_ASSERT_PTR_NOT_NULL(strstr(rep.message, "is missing"));
    }
    /* Segments wholly below from_lsn count as none. */
    {
        log_spec_t spec;
        write_log(dir, 2, 1, &spec);
        CU_ASSERT_EQUAL(recover(dir, 2 * SEG, &seen, &rep), 0);
        CU_ASSERT_EQUAL(seen.n, 0);
        expect_clean(&rep, 2 * SEG);
        CU_ASSERT_EQUAL(recover(dir, 2 * SEG + 8, &seen, &rep), CN_ECORRUPT);
    }
}

static void
test_from_beyond_end(void)
{
    char dir[512];
    log_spec_t spec;
    seen_t seen = {0};
    cn_wal_recovery_t rep;

    /* The store applied more than the log holds: recovery refuses to let the writer go
     * back below what was applied. */
    fresh_dir(dir, sizeof(dir));
    write_log(dir, 1, 4, &spec);
    CU_ASSERT_EQUAL(recover(dir, spec.end, &seen, &rep), 0);
    expect_clean(&rep, spec.end);
    CU_ASSERT_EQUAL(recover(dir, spec.end + 8, &seen, &rep), CN_ECORRUPT);
    CU_ASSERT(rep.message[0] != '\0');
}

static void
test_frame_into_seal_space(void)
{
    char dir[512];
    writer_t w;
    seen_t seen = {0};
    cn_wal_recovery_t rep;
    static uint8_t payload[SEG];

    /* A (valid) DATA frame that ends inside the space reserved for the SEAL. */
    fresh_dir(dir, sizeof(dir));
    memset(payload, 7, sizeof(payload));
    writer_open(&w, dir, 0);
    writer_write(&w, 0, CN_WAL_DATA, payload, 8);
    writer_write(&w, 32, CN_WAL_DATA, payload, SEG - 24 - 32 - 24);
    /* It ends at SEG - 24 exactly: allowed. */
    CU_ASSERT_EQUAL(recover(dir, 0, &seen, &rep), 0);
    CU_ASSERT_EQUAL(seen.n, 2);
    CU_ASSERT_EQUAL(rep.end_lsn, SEG - 24);
    writer_write(&w, 32, CN_WAL_DATA, payload, SEG - 24 - 32 - 24 + 8);
    writer_close(&w);
    CU_ASSERT_EQUAL(recover(dir, 0, &seen, &rep), CN_ECORRUPT);
    CU_ASSERT_EQUAL(seen.n, 1);
}

static void
test_callback_stops(void)
{
    char dir[512];
    log_spec_t spec;
    seen_t seen = {0};
    cn_wal_recovery_t rep;

    fresh_dir(dir, sizeof(dir));
    write_log(dir, 2, 3, &spec);
    seen.stop_at = 3;
    seen.stop_rc = 42;
    CU_ASSERT_EQUAL(recover(dir, 0, &seen, &rep), 42);
    expect_frames(&seen, &spec, 0, 3);
    CU_ASSERT_EQUAL(rep.frames, 3);

    seen.stop_rc = -ENOMEM;
    seen.stop_at = spec.n; /* on the very last frame */
    CU_ASSERT_EQUAL(recover(dir, 0, &seen, &rep), -ENOMEM);
    CU_ASSERT_EQUAL(seen.n, spec.n);
}

/* ---- segments larger than recovery's read size ---------------------------------- */

/* Recovery reads a segment through a window much smaller than a production segment
 * (32 MiB); the 4 KiB segments above fit in it whole. These segments do not: frames
 * straddle the window's edges, one frame is larger than the window, and the bytes that
 * decide a tail (a stray byte, a frame of a later write) lie far past the end of the log. */
#define BIG_SEG ((uint64_t)3 << 20)

/* A BIG_SEG segment image in memory, written to its file with big_flush. */
typedef struct big {
    uint8_t *img;
    uint64_t start;
    size_t at;
    log_spec_t spec;
} big_t;

static void
big_begin(big_t *b, uint64_t start)
{
    b->img = calloc(1, BIG_SEG);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b->img);
    b->start = start;
    b->at = 0;
}

/* Appends n frames of len bytes (fill + i) as one write. Returns the write's offset. */
static size_t
big_write(big_t *b, size_t n, size_t len, uint8_t fill)
{
    size_t first = b->at;
    uint8_t *payload = malloc(len ? len : 1);

    CU_ASSERT_PTR_NOT_NULL_FATAL(payload);
    for (size_t i = 0; i < n; i++) {
        memset(payload, fill + (int)i, len);
        CU_ASSERT_FATAL(b->at + cn__wal_frame_size(len) <= BIG_SEG - HDR);
        cn__wal_frame_encode_batch(b->img + b->at, b->start + b->at, b->start + first,
                                   payload, len);
        spec_add(&b->spec, b->start + b->at, payload, len);
        b->at += cn__wal_frame_size(len);
    }
    free(payload);
    return first;
}

static void
big_flush(big_t *b, const char *dir, int seal)
{
    int fd;

    if (seal)
        cn__wal_frame_encode(b->img + b->at, b->start + b->at, CN_WAL_SEAL, NULL, 0);
    fd = cn__wal_segment_open(dir, b->start, BIG_SEG);
    CU_ASSERT_FATAL(fd >= 0);
    CU_ASSERT_EQUAL_FATAL(pwrite(fd, b->img, BIG_SEG, 0), (ssize_t)BIG_SEG);
    close(fd);
}

static int
big_recover(const char *dir, uint64_t window, seen_t *seen, cn_wal_recovery_t *rep)
{
    memset(seen, 0, sizeof(*seen));
    memset(rep, 0x5A, sizeof(*rep));
    return cn__wal_recover(dir, BIG_SEG, 0, window, collect, seen, rep);
}

/* Writes a sealed segment and a second one of odd-sized frames, one of 700 KiB among
 * them, the second ending 1.2 MiB in (sealed there when seal_second). */
static void
big_log(const char *dir, big_t *b, int seal_second)
{
    memset(b, 0, sizeof(*b));
    big_begin(b, 0);
    big_write(b, 50, 250, 1);
    for (int i = 0; i < 12; i++)
        big_write(b, 3, 1000 + 4099 * (size_t)i, (uint8_t)i);
    big_write(b, 1, 700 << 10, 9);
    big_write(b, 100, 3000, 2);
    big_flush(b, dir, 1);
    free(b->img);
    big_begin(b, BIG_SEG);
    big_write(b, 200, 6003, 3);
    big_flush(b, dir, seal_second);
    b->spec.end = BIG_SEG + b->at;
}

static void
test_big_segments_clean(void)
{
    char dir[512];
    big_t b;
    seen_t seen;
    cn_wal_recovery_t rep;

    fresh_dir(dir, sizeof(dir));
    big_log(dir, &b, 0);
    CU_ASSERT_FATAL(b.spec.n <= MAX_FRAMES);
    /* A segment created ahead of use, all zeros, follows. */
    close(cn__wal_segment_open(dir, 2 * BIG_SEG, BIG_SEG));
    CU_ASSERT_EQUAL(big_recover(dir, 0, &seen, &rep), 0);
    expect_frames(&seen, &b.spec, 0, b.spec.n);
    expect_clean(&rep, b.spec.end);
    free(b.img);
}

static void
test_big_segments_tails(void)
{
    char dir[512];
    big_t b;
    seen_t seen;
    cn_wal_recovery_t rep;
    size_t first, tear, n_before;
    uint8_t one = 0x77;

    /* A stray byte at the very end of the segment, 1.8 MiB past the end of the log: a
     * torn tail reaching it, cut whole. */
    fresh_dir(dir, sizeof(dir));
    big_log(dir, &b, 0);
    seg_io(dir, BIG_SEG, BIG_SEG - 1, &one, 1, 1);
    CU_ASSERT_EQUAL(big_recover(dir, 0, &seen, &rep), 0);
    expect_frames(&seen, &b.spec, 0, b.spec.n);
    CU_ASSERT_EQUAL(rep.end_lsn, b.spec.end);
    CU_ASSERT_EQUAL(rep.cut_lsn, b.spec.end);
    CU_ASSERT_EQUAL(rep.cut_bytes, 2 * BIG_SEG - b.spec.end);
    free(b.img);

    /* A valid frame of a later write far past the end: damage in the middle. */
    fresh_dir(dir, sizeof(dir));
    big_log(dir, &b, 0);
    b.at = BIG_SEG - HDR - 4096;
    n_before = b.spec.n;
    big_write(&b, 1, 100, 5);
    big_flush(&b, dir, 0);
    CU_ASSERT_EQUAL(big_recover(dir, 1 << 20, &seen, &rep), CN_ECORRUPT);
    expect_frames(&seen, &b.spec, 0, n_before);
    CU_ASSERT_PTR_NOT_NULL(strstr(rep.message, "valid frame of a later write"));
    free(b.img);

    /* A tear early in a last write of 300 frames (1.8 MiB): the frames of the same write
     * after it are a torn tail within a tail window that covers them, damage otherwise. */
    fresh_dir(dir, sizeof(dir));
    big_log(dir, &b, 1);
    free(b.img);
    big_begin(&b, 2 * BIG_SEG);
    memset(&b.spec, 0, sizeof(b.spec));
    big_write(&b, 10, 100, 1);
    first = big_write(&b, 300, 6000, 8);
    tear = first + 5 * cn__wal_frame_size(6000);
    b.img[tear + 700] ^= 0x40;
    big_flush(&b, dir, 0);
    CU_ASSERT_EQUAL(big_recover(dir, 0, &seen, &rep), CN_ECORRUPT);
    CU_ASSERT_EQUAL(big_recover(dir, b.at - tear, &seen, &rep), 0);
    CU_ASSERT_EQUAL(rep.end_lsn, 2 * BIG_SEG + tear);
    CU_ASSERT_EQUAL(rep.cut_lsn, 2 * BIG_SEG + tear);
    CU_ASSERT_EQUAL(rep.cut_bytes, b.at - tear);
    free(b.img);

    /* An unsealed segment followed by one that holds a byte at its very end. */
    fresh_dir(dir, sizeof(dir));
    big_log(dir, &b, 0);
    close(cn__wal_segment_open(dir, 2 * BIG_SEG, BIG_SEG));
    seg_io(dir, 2 * BIG_SEG, BIG_SEG - 1, &one, 1, 1);
    CU_ASSERT_EQUAL(big_recover(dir, 0, &seen, &rep), CN_ECORRUPT);
    CU_ASSERT_PTR_NOT_NULL(strstr(rep.message, "does not end with a SEAL"));
    free(b.img);
}

static void
test_bad_arguments(void)
{
    char dir[512], missing[600];
    cn_wal_recovery_t rep;
    size_t removed = 5;

    fresh_dir(dir, sizeof(dir));
    CU_ASSERT_EQUAL(cn__wal_recover(dir, 0, 0, 0, NULL, NULL, &rep), -EINVAL);
    CU_ASSERT_EQUAL(cn__wal_recover(dir, SEG + 1, 0, 0, NULL, NULL, &rep), -EINVAL);
    CU_ASSERT_EQUAL(cn__wal_recover(dir, 16, 0, 0, NULL, NULL, &rep), -EINVAL);
    CU_ASSERT_EQUAL(cn__wal_remove_below(dir, 12, 0, &removed), -EINVAL);
    CU_ASSERT_EQUAL(removed, 0);
    snprintf(missing, sizeof(missing), "%s/missing", dir);
    CU_ASSERT_EQUAL(cn__wal_recover(missing, SEG, 0, 0, NULL, NULL, &rep), -ENOENT);
    CU_ASSERT(rep.message[0] != '\0');
    CU_ASSERT_EQUAL(cn__wal_recover(dir, SEG, UINT64_MAX, 0, NULL, NULL, &rep), -EOVERFLOW);
}

/* ---- remove_below ------------------------------------------------------------------ */

/* A backup's log: it ends where the store's applied position is, replays nothing, is
 * accepted from that position, and is refused from one further up (frames the store
 * applied would be missing) exactly like a real log. */
static void
test_restore_point(void)
{
    char dir[256], path[300];
    cn_wal_recovery_t rep;
    seen_t seen;
    struct stat st;

    fresh_dir(dir, sizeof(dir));
    CU_ASSERT_EQUAL(cn__wal_restore_point(dir, SEG, 3 * SEG + 200), 0);
    seg_path(path, sizeof(path), dir, 3 * SEG);
    CU_ASSERT_EQUAL_FATAL(stat(path, &st), 0);
    CU_ASSERT_EQUAL(st.st_size, SEG);
    memset(&seen, 0, sizeof(seen));
    CU_ASSERT_EQUAL(recover(dir, 3 * SEG + 200, &seen, &rep), 0);
    CU_ASSERT_EQUAL(rep.end_lsn, 3 * SEG + 200);
    CU_ASSERT_EQUAL(rep.frames, 0);
    CU_ASSERT_EQUAL(rep.cut_bytes, 0);
    /* A second restore point into the same directory is refused: never over a log. */
    CU_ASSERT_EQUAL(cn__wal_restore_point(dir, SEG, 3 * SEG + 208), -EEXIST);

    /* At a segment boundary there is nothing to write: a new log starts there. */
    fresh_dir(dir, sizeof(dir));
    CU_ASSERT_EQUAL(cn__wal_restore_point(dir, SEG, 2 * SEG), 0);
    seg_path(path, sizeof(path), dir, 2 * SEG);
    CU_ASSERT_NOT_EQUAL(stat(path, &st), 0);
    CU_ASSERT_EQUAL(recover(dir, 2 * SEG, &seen, &rep), 0);
    CU_ASSERT_EQUAL(rep.end_lsn, 2 * SEG);

    /* Unaligned, or too close to the segment's start to hold a frame: refused. */
    fresh_dir(dir, sizeof(dir));
    CU_ASSERT_EQUAL(cn__wal_restore_point(dir, SEG, 5 * SEG + 4), -EINVAL);
    CU_ASSERT_EQUAL(cn__wal_restore_point(dir, SEG, 5 * SEG + 8), -EINVAL);
}

static void
test_remove_below(void)
{
    char dir[512];
    size_t removed = 99;
    seen_t seen = {0};
    cn_wal_recovery_t rep;
    log_spec_t spec;

    fresh_dir(dir, sizeof(dir));
    write_log(dir, 4, 2, &spec);
    CU_ASSERT(file_exists(dir, 0) && file_exists(dir, SEG) && file_exists(dir, 2 * SEG) &&
              file_exists(dir, 3 * SEG));

    CU_ASSERT_EQUAL(cn__wal_remove_below(dir, SEG, 0, &removed), 0);
    CU_ASSERT_EQUAL(removed, 0);
    CU_ASSERT_EQUAL(cn__wal_remove_below(dir, SEG, SEG - 1, &removed), 0);
    CU_ASSERT_EQUAL(removed, 0);
    CU_ASSERT(file_exists(dir, 0));

    /* Segment 0 ends at SEG: removed at exactly SEG. */
    CU_ASSERT_EQUAL(cn__wal_remove_below(dir, SEG, SEG, &removed), 0);
    CU_ASSERT_EQUAL(removed, 1);
    CU_ASSERT(!file_exists(dir, 0) && file_exists(dir, SEG));

    CU_ASSERT_EQUAL(cn__wal_remove_below(dir, SEG, 3 * SEG - 1, &removed), 0);
    CU_ASSERT_EQUAL(removed, 1);
    CU_ASSERT(!file_exists(dir, SEG) && file_exists(dir, 2 * SEG) && file_exists(dir, 3 * SEG));

    /* What is left still recovers from an LSN in it. */
    {
        size_t k = 0;
        while (spec.lsn[k] < 2 * SEG)
            k++;
        CU_ASSERT_EQUAL(recover(dir, 3 * SEG - 1, &seen, &rep), 0);
        CU_ASSERT_EQUAL(rep.end_lsn, spec.end);
        CU_ASSERT_EQUAL(seen.n, 2);
        CU_ASSERT_EQUAL(recover(dir, 2 * SEG, &seen, &rep), 0);
        expect_frames(&seen, &spec, k, spec.n);
    }

    /* The last segment ends at 4 * SEG. */
    CU_ASSERT_EQUAL(cn__wal_remove_below(dir, SEG, 4 * SEG - 1, &removed), 0);
    CU_ASSERT_EQUAL(removed, 1);
    CU_ASSERT(file_exists(dir, 3 * SEG));
    CU_ASSERT_EQUAL(cn__wal_remove_below(dir, SEG, 4 * SEG, &removed), 0);
    CU_ASSERT_EQUAL(removed, 1);
    CU_ASSERT(!file_exists(dir, 3 * SEG));
    CU_ASSERT_EQUAL(cn__wal_remove_below(dir, SEG, UINT64_MAX, &removed), 0);
    CU_ASSERT_EQUAL(removed, 0);
}

int
main(void)
{
    static const unit_test_t tests[] = {
        {"frame size", test_frame_size},
        {"frame round trip, payloads of 0, 1, 7, 8, 9, 100 bytes and 1 MiB", test_round_trip},
        {"frame byte layout matches wal.h", test_layout},
        {"SEAL frame round trip", test_seal_round_trip},
        {"a zeroed header is CN_ENOTFOUND", test_zeroed_is_end},
        {"every truncation is CN_ECORRUPT", test_truncation},
        {"every single-byte flip is CN_ECORRUPT", test_single_byte_flips},
        {"a wrong expected LSN is CN_ECORRUPT", test_wrong_lsn},
        {"invalid fields with a valid CRC are CN_ECORRUPT", test_invalid_fields_with_valid_crc},
        {"segment path naming", test_segment_path},
        {"mkdir creates parents and rejects files", test_mkdir},
        {"segment create: size, zeros, reopen keeps it", test_segment_create},
        {"segment open refuses bad arguments and wrong sizes", test_segment_open_refuses},
        {"recover a clean log across three segments", test_recover_clean_three_segments},
        {"recover a log whose last segment is sealed", test_recover_sealed_last_segment},
        {"recover from an LSN in the middle", test_recover_from_middle},
        {"recovery is idempotent", test_recover_idempotent},
        {"torn tail at every byte of the last frame is cut", test_torn_tail_every_offset},
        {"bytes after a zeroed header: cut, or damage", test_tail_after_zeroed_header},
        {"a corrupt frame in the middle is CN_ECORRUPT", test_corrupt_middle},
        {"valid frames within the tail window after a tear are cut", test_torn_within_window},
        {"damage followed by later writes is CN_ECORRUPT naming segment and offset",
         test_damage_before_later_writes},
        {"a non-last segment without a SEAL", test_unsealed_non_last_segment},
        {"a segment of the wrong size is CN_ECORRUPT", test_wrong_size_segment},
        {"a missing segment is CN_ECORRUPT", test_missing_segment},
        {"a missing segment holding from_lsn is CN_ECORRUPT", test_missing_applied_segment},
        {"files not named like segments are ignored", test_ignores_other_files},
        {"an empty directory: end_lsn rounded up from from_lsn", test_empty_dir},
        {"from_lsn beyond the end of the log is CN_ECORRUPT", test_from_beyond_end},
        {"a frame into the SEAL space is CN_ECORRUPT", test_frame_into_seal_space},
        {"a callback returning non-zero stops the replay", test_callback_stops},
        {"segments larger than the read size: a clean log", test_big_segments_clean},
        {"segments larger than the read size: tails far past the end", test_big_segments_tails},
        {"bad arguments", test_bad_arguments},
        {"remove_below deletes segments ending at or below the LSN", test_remove_below},
        {"a restore point: a log that ends at an LSN", test_restore_point},
        {NULL, NULL},
    };
    int rc;

    if (unit_tempdir("wal", tmpdir, sizeof(tmpdir))) {
        perror("mkdtemp");
        return 1;
    }
    rc = unit_run("wal", tests);
    if (unit_rmtree(tmpdir))
        fprintf(stderr, "warning: could not remove %s\n", tmpdir);
    return rc;
}
