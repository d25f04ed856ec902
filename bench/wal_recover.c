/*
 * bench/wal_recover.c - how fast the persister replays its WAL into LMDB at start: the
 * recovery a restart after a crash runs, measured on a whole log.
 *
 *   wal_recover DIR [records] [body-bytes] [seq|uuid]
 *                                  (default 200000 records of 100 bytes, seq keys)
 *
 * Builds a log the way the server does (records pushed into a worker ring, gathered,
 * written, synced and applied by the persister engine), then sets the applied store
 * aside, so the next engine open finds an empty store and replays every record of the
 * log. Prints one JSON object: records replayed, seconds of that open, records/s, the
 * rate of reading and checking the log alone (frames/s, no apply), and the WAL's bytes.
 * Stored responses are fresh-key orders of the example's shape (key
 * "cnerium:response:orders.create:<key>", status 201, JSON body). Keys are "bench-<n>"
 * (seq: consecutive records land on a few neighbouring B-tree pages) or random UUIDs
 * (uuid, as most clients make them: every record lands on a page of its own). DIR must not exist or
 * be empty; it is left for the caller to remove. Bounded: at most 5,000,000 records.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bench.h"

#include "shm/region.h"
#include "shm/ring.h"
#include "store/format.h"
#include "store/persist.h"
#include "store/wal.h"

#define RING_CAP ((uint64_t)1 << 22)
#define MAX_RECORDS 5000000u

static int
step(cn_persister_t *p)
{
    cn_persist_io_t io;
    uint64_t wake = 0;
    int rc = cn__persist_gather(p, &io);

    if (rc < 0)
        return rc;
    if (rc == 1) {
        if ((rc = cn__persist_write_sync(&io)) || (rc = cn__persist_done(p, 0, 10, &wake)))
            return rc;
    } else if (cn__persist_pending(p) && (rc = cn__persist_done(p, 0, 0, &wake))) {
        return rc;
    }
    return cn__persist_maintain(p);
}

static int
open_engine(cn_shm_t *shm, const cn_persist_config_t *cfg, cn_persister_t **p)
{
    char err[512] = "";
    int rc = cn__persist_open(shm, cfg, p, err, sizeof(err));

    if (rc)
        fprintf(stderr, "wal_recover: opening the persister: %d %s\n", rc, err);
    return rc;
}

/* With CNERIUM_PERF_CTL=ctl-fifo,ack-fifo (perf record -D -1 --control
 * fifo:ctl-fifo,ack-fifo), perf samples the timed recovery alone, not the log's building. */
/* A 64-bit mix (splitmix64's finalizer): the random keys, reproducibly. */
static uint64_t
mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    return x ^ (x >> 33);
}

static void
perf_ctl(const char *cmd)
{
    const char *env = getenv("CNERIUM_PERF_CTL");
    char ctl[512], ack[8];
    const char *comma;
    int fd;

    if (!env || !(comma = strchr(env, ',')) || (size_t)(comma - env) >= sizeof(ctl))
        return;
    memcpy(ctl, env, (size_t)(comma - env));
    ctl[comma - env] = '\0';
    if ((fd = open(ctl, O_WRONLY | O_CLOEXEC)) < 0)
        return;
    (void)!write(fd, cmd, strlen(cmd));
    close(fd);
    if ((fd = open(comma + 1, O_RDONLY | O_CLOEXEC)) < 0)
        return;
    (void)!read(fd, ack, sizeof(ack));
    close(fd);
}

int
main(int argc, char **argv)
{
    unsigned long n = argc > 2 ? strtoul(argv[2], NULL, 10) : 200000;
    unsigned long blen = argc > 3 ? strtoul(argv[3], NULL, 10) : 100;
    char data[1024], lmdb[1100], aside[1100], key[128], *body;
    static uint8_t buf[1 << 16];
    cn_persist_config_t cfg;
    cn_persister_t *p = NULL;
    cn_record_t rec;
    cn_shm_t shm;
    uint64_t t0, t1, recovered, wal_bytes, scan_frames = 0, scan_us = 0;
    const char *shape = argc > 4 ? argv[4] : "seq";
    int rc, random_keys = strcmp(shape, "uuid") == 0;

    if (argc < 2 || n == 0 || n > MAX_RECORDS || blen > 16384 ||
        (!random_keys && strcmp(shape, "seq") != 0)) {
        fprintf(stderr, "usage: wal_recover DIR [records (1-%u)] [body-bytes (0-16384)] "
                        "[seq|uuid]\n",
                MAX_RECORDS);
        return 2;
    }
    if (mkdir(argv[1], 0755) != 0 && errno != EEXIST) {
        perror(argv[1]);
        return 1;
    }
    snprintf(data, sizeof(data), "%s/data", argv[1]);
    snprintf(lmdb, sizeof(lmdb), "%s/lmdb", data);
    snprintf(aside, sizeof(aside), "%s/lmdb.applied", data);
    body = malloc(blen + 1);
    if (!body)
        return 1;
    memset(body, 'x', blen);
    if ((rc = cn__shm_create_rings(64, 1, 1, RING_CAP, &shm))) {
        fprintf(stderr, "wal_recover: shared region: %d\n", rc);
        return 1;
    }
    memset(&cfg, 0, sizeof(cfg));
    cfg.data_dir = data;
    cfg.map_size = (size_t)8 << 30;
    cfg.segment_size = (uint64_t)32 << 20;
    cfg.batch_max_bytes = (size_t)1 << 20;
    cfg.sweep_interval_ms = 3600u * 1000u;
    cfg.checkpoint_bytes = UINT64_MAX / 2; /* keep every segment: the whole log replays */
    cfg.broadcast_efd = -1;
    if (open_engine(&shm, &cfg, &p))
        return 1;

    memset(&rec, 0, sizeof(rec));
    rec.status = 201;
    rec.created_ms = bench_now_us() / 1000;
    rec.expires_ms = rec.created_ms + 24ull * 3600 * 1000;
    rec.content_type = "application/json";
    rec.content_type_len = 16;
    rec.body = body;
    rec.body_len = (uint32_t)blen;
    for (unsigned long i = 0; i < n; i++) {
        uint64_t h = mix64(i), h2 = mix64(i ^ 0x5bd1e995u);
        int kn = random_keys
                     ? snprintf(key, sizeof(key),
                                "cnerium:response:orders.create:%08llx-%04llx-4%03llx-%04llx-%012llx",
                                (unsigned long long)(h >> 32),
                                (unsigned long long)(h >> 16 & 0xffff),
                                (unsigned long long)(h & 0xfff),
                                (unsigned long long)(0x8000 | (h2 >> 48 & 0x3fff)),
                                (unsigned long long)(h2 & 0xffffffffffffull))
                     : snprintf(key, sizeof(key), "cnerium:response:orders.create:bench-%lu", i);
        size_t klen = (size_t)kn;
        size_t len = 0;
        uint64_t seq;

        for (int k = 0; k < 32; k++)
            rec.fingerprint[k] = (uint8_t)(i >> (k % 8));
        if ((rc = cn__persist_put_encode(buf, sizeof(buf), key, klen, &rec, &len))) {
            fprintf(stderr, "wal_recover: encode: %d\n", rc);
            return 1;
        }
        while ((rc = cn__ring_push(cn__shm_ring(&shm, 0), CN_PERSIST_PUT, buf, len, &seq)) ==
               -EAGAIN)
            if ((rc = step(p)) < 0) {
                fprintf(stderr, "wal_recover: persister step: %d\n", rc);
                return 1;
            }
        if (rc) {
            fprintf(stderr, "wal_recover: ring push: %d\n", rc);
            return 1;
        }
    }
    for (int i = 0; i < 1000 && (atomic_load(&cn__shm_ring(&shm, 0)->tail) !=
                                     atomic_load(&cn__shm_ring(&shm, 0)->head) ||
                                 cn__persist_pending(p));
         i++)
        if ((rc = step(p)) < 0)
            return 1;
    wal_bytes = atomic_load(&shm.hdr->persist.wal_bytes);
    cn__persist_close(p);
    p = NULL;

    /* The log alone: read, frame and CRC checks, no apply. */
    {
        char wal[1100];
        cn_wal_recovery_t rep;

        snprintf(wal, sizeof(wal), "%s/wal", data);
        t0 = bench_now_us();
        rc = cn__wal_recover(wal, cfg.segment_size, 0, cfg.batch_max_bytes, NULL, NULL, &rep);
        t1 = bench_now_us();
        if (rc) {
            fprintf(stderr, "wal_recover: scanning the log: %d %s\n", rc, rep.message);
            return 1;
        }
        scan_frames = rep.frames;
        scan_us = t1 - t0;
    }

    /* The store as a crash right after the first commit would leave it: empty. */
    if (rename(lmdb, aside) != 0) {
        perror("wal_recover: setting the applied store aside");
        return 1;
    }
    perf_ctl("enable\n");
    t0 = bench_now_us();
    if (open_engine(&shm, &cfg, &p))
        return 1;
    t1 = bench_now_us();
    perf_ctl("disable\n");
    recovered = atomic_load(&shm.hdr->persist.recovered_records);
    cn__persist_close(p);
    cn__shm_destroy(&shm);
    printf("{\"records\": %llu, \"seconds\": %.3f, \"records_per_s\": %.0f, "
           "\"scan_only_frames_per_s\": %.0f, \"wal_bytes\": %llu, \"body_bytes\": %lu}\n",
           (unsigned long long)recovered, (double)(t1 - t0) / 1e6,
           (double)recovered * 1e6 / (double)(t1 - t0 ? t1 - t0 : 1),
           (double)scan_frames * 1e6 / (double)(scan_us ? scan_us : 1),
           (unsigned long long)wal_bytes, blen);
    free(body);
    return recovered == n ? 0 : 1;
}
