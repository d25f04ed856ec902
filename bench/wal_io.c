/*
 * bench/wal_io.c - one WAL batch write + fdatasync: io_uring (one write SQE linked to an
 * fdatasync SQE, as the persister does) against plain pwrite + fdatasync, on a
 * preallocated (zero-filled) file and on an appended one, for several batch sizes.
 *
 *   wal_io DIR [seconds-per-case]
 *
 * Prints, per case, batches/s, records/s and the median and p99 batch latency. Bounded:
 * each case stops after its time or 200000 batches. The file lives in DIR and is removed.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"

#include "store/persist.h"
#include "store/uring.h"

#define RECORD_BYTES 256
#define FILE_BYTES ((uint64_t)256 << 20)
#define MAX_BATCHES 200000

static int
cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

    return x < y ? -1 : x > y;
}

static int
prepare(const char *path, int prealloc)
{
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    static uint8_t zeros[1 << 20];

    if (fd < 0)
        return -1;
    if (prealloc) {
        for (uint64_t off = 0; off < FILE_BYTES; off += sizeof(zeros)) {
            if (pwrite(fd, zeros, sizeof(zeros), (off_t)off) != (ssize_t)sizeof(zeros)) {
                close(fd);
                return -1;
            }
        }
        fsync(fd);
    }
    return fd;
}

static void
run_case(const char *path, int use_uring, int prealloc, size_t records, double secs)
{
    size_t len = records * RECORD_BYTES;
    uint8_t *buf = malloc(len);
    uint64_t *lat = malloc(MAX_BATCHES * sizeof(uint64_t));
    cn_uring_t *u = NULL;
    uint64_t off = 0, start, end;
    size_t n = 0;
    int fd = prepare(path, prealloc);

    if (!buf || !lat || fd < 0 || (use_uring && cn__uring_open(8, &u))) {
        fprintf(stderr, "wal_io: setup failed: %s\n", strerror(errno));
        exit(1);
    }
    memset(buf, 0xab, len);
    start = bench_now_us();
    end = start + (uint64_t)(secs * 1e6);
    while (n < MAX_BATCHES && bench_now_us() < end && off + len <= FILE_BYTES) {
        uint64_t t0 = bench_now_us(), tag;
        int res = 0;

        if (use_uring) {
            if (cn__uring_write_sync(u, fd, buf, len, off, 1) ||
                cn__uring_wait(u, 5000, &tag, &res) != 1 || res) {
                fprintf(stderr, "wal_io: io_uring batch failed (%d)\n", res);
                exit(1);
            }
        } else {
            cn_persist_io_t io = {fd, buf, len, off};
            if ((res = cn__persist_write_sync(&io))) {
                fprintf(stderr, "wal_io: pwrite batch failed (%d)\n", res);
                exit(1);
            }
        }
        lat[n++] = bench_now_us() - t0;
        off += len;
    }
    end = bench_now_us();
    qsort(lat, n, sizeof(*lat), cmp_u64);
    printf("%-8s %-10s %5zu rec/batch %9.0f batches/s %11.0f records/s  p50 %5llu us  "
           "p99 %6llu us\n",
           use_uring ? "io_uring" : "pwrite", prealloc ? "prealloc" : "append", records,
           n / ((end - start) / 1e6), n * records / ((end - start) / 1e6),
           (unsigned long long)lat[n / 2], (unsigned long long)lat[n * 99 / 100]);
    cn__uring_close(u);
    close(fd);
    unlink(path);
    free(buf);
    free(lat);
}

int
main(int argc, char **argv)
{
    static const size_t sizes[] = {1, 16, 64, 512};
    char path[1024];
    double secs = argc > 2 ? atof(argv[2]) : 1.0;

    if (argc < 2) {
        fprintf(stderr, "usage: %s DIR [seconds-per-case]\n", argv[0]);
        return 2;
    }
    snprintf(path, sizeof(path), "%s/wal_io.bench", argv[1]);
    printf("records of %d bytes; one write + fdatasync per batch\n", RECORD_BYTES);
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        for (int prealloc = 1; prealloc >= 0; prealloc--) {
            run_case(path, 0, prealloc, sizes[i], secs);
            run_case(path, 1, prealloc, sizes[i], secs);
        }
    }
    return 0;
}
