/*
 * bench/wal_io.c - one WAL batch made durable, the ways the persister can do it:
 *
 *   pwrite     buffered pwrite + fdatasync (--wal-io pwrite)
 *   uring      one buffered write SQE linked to an fdatasync SQE (--wal-io uring)
 *   pwritev2   O_DIRECT pwritev2 with RWF_DSYNC: the write's return is its durability
 *   uring-d    O_DIRECT IORING_OP_WRITE with RWF_DSYNC in rw_flags
 *   uring-df   the same through a registered file and a registered buffer
 *   uring-df2  the same with two batches in flight (the next is submitted before the
 *              previous one completes)
 *
 * on a preallocated, zero-written file (what a WAL segment is), and pwrite on an
 * appended one for reference. An O_DIRECT batch is written as whole 4096-byte blocks
 * starting at a fresh block (the rest of its last block zero padding), as the persister
 * lays them out with --wal-io direct.
 *
 *   wal_io DIR [seconds-per-case] [record-bytes]
 *
 * Records are record-bytes (default 300) of payload in a WAL frame (24-byte header,
 * padded to 8). For each batch size the methods run in 50 ms slices, round-robin, for
 * seconds-per-case each: the disk is shared, so every method sees the same background.
 * Prints, per method, batches/s and records/s (over its own slices), bytes written per
 * batch, the median and p99 batch latency (submit to durable) and the process's CPU per
 * batch. Bounded: each case stops after its time or 200000 batches. Files live in DIR
 * and are removed. A method the file system refuses (O_DIRECT on tmpfs: EINVAL) is reported and
 * skipped.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"

#include "store/persist.h"
#include "store/uring.h"

#define FILE_BYTES ((uint64_t)64 << 20) /* written round and round */
#define MAX_BATCHES 200000
#define BLOCK 4096u
#define SLICE_MS 50u
#define NMETHODS (sizeof(methods) / sizeof(methods[0]))

enum method { PWRITE, URING, PWRITEV2, URING_D, URING_DF, URING_DF2, PWRITE_APPEND };

static const enum method methods[] = {PWRITE,   URING,     PWRITEV2,     URING_D,
                                      URING_DF, URING_DF2, PWRITE_APPEND};
static const char *const names[] = {"pwrite",   "uring",     "pwritev2", "uring-d",
                                    "uring-df", "uring-df2", "pwrite"};

static int
cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

    return x < y ? -1 : x > y;
}

static uint64_t
cpu_us(void)
{
    struct rusage ru;

    getrusage(RUSAGE_SELF, &ru);
    return (uint64_t)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000u +
           (uint64_t)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

/* A file of FILE_BYTES zeros, written and synced (not fallocate'd: unwritten extents would
 * make every O_DIRECT write commit an extent conversion). */
static int
prepare(const char *path, int drop_cache)
{
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    static uint8_t zeros[1 << 20];

    if (fd < 0)
        return -1;
    for (uint64_t off = 0; off < FILE_BYTES; off += sizeof(zeros)) {
        if (pwrite(fd, zeros, sizeof(zeros), (off_t)off) != (ssize_t)sizeof(zeros)) {
            close(fd);
            return -1;
        }
    }
    if (fsync(fd)) {
        close(fd);
        return -1;
    }
    /* The buffered cases find the pages cached, as the persister does in a segment it
     * has just zero-filled; O_DIRECT writes would invalidate them one by one. */
    if (drop_cache)
        posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    return fd;
}

static void
fail(const char *what, int err)
{
    fprintf(stderr, "wal_io: %s: %s\n", what, strerror(err < 0 ? -err : err));
    exit(1);
}

/* One method at one batch size: its file, ring and buffer stay open across the slices. */
typedef struct bcase {
    enum method m;
    size_t records, wlen;
    int direct, depth, fd, skipped;
    char path[1024];
    cn_uring_t *u;
    uint8_t *buf;
    uint64_t off, t0[2], busy_us, cpu_us;
    uint64_t *lat;
    size_t n, submitted, inflight;
} bcase_t;

static void
case_open(bcase_t *c, const char *dir, char paths[2][1024], enum method m, size_t records,
          size_t record_bytes)
{
    size_t frame = 24 + ((record_bytes + 7) & ~(size_t)7), len = records * frame;
    int rc;

    memset(c, 0, sizeof(*c));
    c->m = m;
    c->records = records;
    c->direct = m == PWRITEV2 || m == URING_D || m == URING_DF || m == URING_DF2;
    c->wlen = c->direct ? (len + BLOCK - 1) / BLOCK * BLOCK : len;
    c->depth = m == URING_DF2 ? 2 : 1;
    if (!(c->lat = malloc(MAX_BATCHES * sizeof(uint64_t))) ||
        posix_memalign((void **)&c->buf, BLOCK, 2 * c->wlen))
        fail("memory", ENOMEM);
    memset(c->buf, 0xab, 2 * c->wlen);
    if (m == PWRITE_APPEND) {
        snprintf(c->path, sizeof(c->path), "%s/wal_io.append", dir);
        c->fd = open(c->path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    } else {
        c->fd = open(paths[c->direct], O_RDWR | O_CLOEXEC | (c->direct ? O_DIRECT : 0));
    }
    if (c->fd < 0) {
        if (c->direct && errno == EINVAL) {
            c->skipped = 1;
            return;
        }
        fail("open", errno);
    }
    if (m == URING || m == URING_D || m == URING_DF || m == URING_DF2) {
        if ((rc = cn__uring_open(8, &c->u)))
            fail("io_uring", rc);
    }
    if (m == URING_DF || m == URING_DF2) {
        if ((rc = cn__uring_register_file(c->u, c->fd)) ||
            (rc = cn__uring_register_buffer(c->u, c->buf, 2 * c->wlen)))
            fail("io_uring register", rc);
    }
}

/* Runs batches until the clock passes until (or the bounds), then drains what is in
 * flight. */
static void
case_slice(bcase_t *c, uint64_t until)
{
    uint64_t start = bench_now_us(), cpu0 = cpu_us();
    int rc;

    for (;;) {
        int more = c->submitted < MAX_BATCHES && bench_now_us() < until;

        if (!more && c->inflight == 0)
            break;
        if (c->off + c->wlen > FILE_BYTES && c->inflight == 0) {
            /* Round again; an appended file starts again from empty. */
            if (c->m == PWRITE_APPEND && ftruncate(c->fd, 0))
                fail("ftruncate", errno);
            c->off = 0;
        } else if (c->off + c->wlen > FILE_BYTES) {
            more = 0;
        }
        if (c->u) {
            uint64_t tag;
            int res = 0;

            if (more && c->inflight < (size_t)c->depth) {
                size_t slot = c->submitted % 2;
                uint8_t *b = c->buf + slot * c->wlen;

                c->t0[slot] = bench_now_us();
                if (c->m == URING)
                    rc = cn__uring_write_sync(c->u, c->fd, b, c->wlen, c->off, slot);
                else if (c->m == URING_D)
                    rc = cn__uring_write_dsync(c->u, c->fd, b, c->wlen, c->off, slot);
                else
                    rc = cn__uring_write_dsync_fixed(c->u, b, c->wlen, c->off, slot);
                if (rc)
                    fail("io_uring submit", rc);
                c->off += c->wlen;
                c->submitted++;
                c->inflight++;
                if (c->inflight < (size_t)c->depth)
                    continue;
            }
            if ((rc = cn__uring_wait(c->u, 5000, &tag, &res)) != 1)
                fail("io_uring wait", rc ? rc : ETIMEDOUT);
            if (res)
                fail("io_uring batch", res);
            c->lat[c->n++] = bench_now_us() - c->t0[tag];
            c->inflight--;
            continue;
        }
        if (!more)
            break;
        c->t0[0] = bench_now_us();
        if (c->m == PWRITEV2) {
            struct iovec iov = {c->buf, c->wlen};
            ssize_t w = pwritev2(c->fd, &iov, 1, (off_t)c->off, RWF_DSYNC);

            if (w != (ssize_t)c->wlen)
                fail("pwritev2", w < 0 ? errno : EIO);
        } else {
            /* The persister's own path: pwrite + fdatasync. */
            cn_persist_io_t io = {.fd = c->fd, .buf = c->buf, .len = c->wlen, .offset = c->off};

            if ((rc = cn__persist_write_sync(&io)))
                fail("pwrite", rc);
        }
        c->lat[c->n++] = bench_now_us() - c->t0[0];
        c->submitted++;
        c->off += c->wlen;
    }
    c->busy_us += bench_now_us() - start;
    c->cpu_us += cpu_us() - cpu0;
}

static void
case_close(bcase_t *c)
{
    if (c->skipped) {
        printf("%-9s %-8s %3zu rec/batch: O_DIRECT refused here (EINVAL)\n", names[c->m], "direct",
               c->records);
    } else if (c->n) {
        double secs = c->busy_us / 1e6;

        qsort(c->lat, c->n, sizeof(*c->lat), cmp_u64);
        printf("%-9s %-8s %3zu rec/batch %6zu B %7.0f batches/s %9.0f records/s  p50 %5llu us  "
               "p99 %6llu us  cpu %4.0f us/batch\n",
               names[c->m],
               c->m == PWRITE_APPEND ? "append"
               : c->direct           ? "direct"
                                     : "buffered",
               c->records, c->wlen, c->n / secs, c->n * c->records / secs,
               (unsigned long long)c->lat[c->n / 2], (unsigned long long)c->lat[c->n * 99 / 100],
               (double)c->cpu_us / c->n);
    }
    fflush(stdout);
    cn__uring_close(c->u);
    if (c->fd >= 0)
        close(c->fd);
    if (c->m == PWRITE_APPEND)
        unlink(c->path);
    free(c->buf);
    free(c->lat);
}

int
main(int argc, char **argv)
{
    static const size_t sizes[] = {1, 4, 16, 64};
    char paths[2][1024];
    double secs = argc > 2 ? atof(argv[2]) : 1.0;
    size_t record_bytes = argc > 3 ? (size_t)atoi(argv[3]) : 300;
    int fd;

    if (argc < 2 || secs <= 0 || record_bytes == 0 || record_bytes > 65536) {
        fprintf(stderr, "usage: %s DIR [seconds-per-case] [record-bytes]\n", argv[0]);
        return 2;
    }
    for (int direct = 0; direct < 2; direct++) {
        snprintf(paths[direct], sizeof(paths[direct]), "%s/wal_io.%s", argv[1],
                 direct ? "direct" : "buffered");
        if ((fd = prepare(paths[direct], direct)) < 0)
            fail("preparing a preallocated file", errno);
        close(fd);
    }
    printf("records of %zu bytes in WAL frames; one durable write per batch (direct: whole "
           "4096-byte blocks from a fresh block)\n",
           record_bytes);
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        bcase_t cases[NMETHODS];
        int slices = (int)(secs * 1000 / SLICE_MS + 0.5);

        for (size_t k = 0; k < NMETHODS; k++)
            case_open(&cases[k], argv[1], paths, methods[k], sizes[i], record_bytes);
        /* Round-robin slices: every method sees the same background (this disk is shared). */
        for (int r = 0; r < (slices > 0 ? slices : 1); r++) {
            for (size_t k = 0; k < NMETHODS; k++) {
                if (!cases[k].skipped)
                    case_slice(&cases[k], bench_now_us() + SLICE_MS * 1000u);
            }
        }
        for (size_t k = 0; k < NMETHODS; k++)
            case_close(&cases[k]);
    }
    unlink(paths[0]);
    unlink(paths[1]);
    return 0;
}
