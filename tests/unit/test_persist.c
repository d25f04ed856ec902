/*
 * tests/unit/test_persist.c - the persister engine (store/persist.c) and the ring
 * committer (store/commit.c) on top of it:
 *
 *   - the put codec: round trip, every truncation, bad headers, encode limits;
 *   - end to end: puts pushed into both workers' rings, gather -> write -> done until the
 *     rings are empty; every record in LMDB, rings acked, the wake mask, the counters, and
 *     many records in one batch when they all waited before one gather (group commit);
 *   - segment roll: several small segments, each but the last ending with a SEAL;
 *   - recovery of a batch written and synced but never applied (a crash between the
 *     fdatasync and the LMDB apply), its idempotence over further restarts, and the
 *     restarted persister skipping (but acking) what the rings still hold;
 *   - a new server start (new epoch) over an old data dir: fresh seqs are not duplicates;
 *   - a torn tail (cut; the engine writes after it) and a corrupt frame in the middle of
 *     the log (CN_ECORRUPT with a message); an unusable data dir;
 *   - a failed write (done with io_result < 0), a put that does not decode, and a record
 *     too big for a segment: failed (cn__ring_stored says 0), yet acked;
 *   - a failed LMDB apply (map full): failed with CN_EMAPFULL, erased from the WAL, never
 *     applied by a later recovery; a missing wal/ directory or applied segment: the open
 *     fails with CN_ECORRUPT;
 *   - a record that fits only the next segment, waiting for the next gather;
 *   - a ring record that ends 8 bytes before the end of its ring's array;
 *   - direct mode (cfg.wal_direct: O_DIRECT, RWF_DSYNC): batches in whole blocks from a
 *     fresh block with a PAD, skipped by recovery; a torn write after an acknowledged
 *     batch leaves its blocks intact; a failed write erased; O_DIRECT refused (a wrapped
 *     open()) falls back to buffered writes; a log written both ways recovers;
 *   - the ring committer driven from the test thread: callbacks after the ack, the commit
 *     timeout's early call, failures, and cn__committer_free with undecided records.
 *
 * Each test has its own data dir under the suite's temp dir and its own region
 * (cn__shm_create_rings(64, 2, 1, 64 KiB)). LMDB forbids opening one environment twice
 * in a process, so the store is read back only after the engine is closed. Record sizes
 * are chosen so ring records are multiples of 16 bytes, except in the test about the
 * 8-byte rest (the ring bug it shows is covered in test_ring.c).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cnerium/error.h"
#include "shm/region.h"
#include "shm/ring.h"
#include "store/commit.h"
#include "store/persist.h"
#include "store/record.h"
#include "store/store.h"
#include "store/wal.h"
#include "support/clock.h"
#include "unit.h"

#define MAP_SIZE ((size_t)64 << 20)
#define SEGMENT ((uint64_t)1 << 16)
#define RING_CAP ((uint64_t)1 << 16)
#define NWORKERS 2u
#define BIG_BATCH ((size_t)1 << 20)
#define WAIT_BOUND_MS 5000u
#define DRIVE_BOUND_MS 20000u
#define BODY_MAX 20000u

static char tmpdir[256];
static int env_seq;
static uint64_t future_ms; /* expiry of every record: a day after the suite started */

/* ---- helpers: an engine over a region and a data dir -------------------------------- */

typedef struct env {
    char data[512];
    char wal[600];
    char lmdb[600];
    cn_shm_t shm;
    cn_persist_config_t cfg;
    cn_persister_t *p;
    uint64_t wake; /* every wake mask cn__persist_done gave, or'ed */
} env_t;

static void
env_new(env_t *e, size_t batch_max, uint64_t segment_size)
{
    memset(e, 0, sizeof(*e));
    snprintf(e->data, sizeof(e->data), "%s/p-%d/data", tmpdir, env_seq++);
    snprintf(e->wal, sizeof(e->wal), "%s/wal", e->data);
    snprintf(e->lmdb, sizeof(e->lmdb), "%s/lmdb", e->data);
    CU_ASSERT_EQUAL_FATAL(cn__shm_create_rings(64, NWORKERS, 1, RING_CAP, &e->shm), 0);
    e->cfg.data_dir = e->data;
    e->cfg.map_size = MAP_SIZE;
    e->cfg.segment_size = segment_size;
    e->cfg.batch_max_bytes = batch_max;
    e->cfg.sweep_interval_ms = 3600u * 1000u;
    e->cfg.checkpoint_bytes = UINT64_MAX / 2;
}

static void
env_open(env_t *e)
{
    char err[512] = "";
    int rc = cn__persist_open(&e->shm, &e->cfg, &e->p, err, sizeof(err));

    if (rc)
        fprintf(stderr, "cn__persist_open: %d: %s\n", rc, err);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(e->p);
}

static void
env_close(env_t *e)
{
    cn__persist_close(e->p);
    e->p = NULL;
}

static void
env_free(env_t *e)
{
    env_close(e);
    cn__shm_destroy(&e->shm);
}

static cn_ring_t *
ring(env_t *e, unsigned w)
{
    return cn__shm_ring(&e->shm, w);
}

static cn_shm_persist_t *
stats(env_t *e)
{
    return &e->shm.hdr->persist;
}

static int
rings_empty(env_t *e)
{
    for (unsigned w = 0; w < NWORKERS; w++) {
        if (atomic_load(&ring(e, w)->tail) != atomic_load(&ring(e, w)->head))
            return 0;
    }
    return 1;
}

static uint64_t
tails(env_t *e)
{
    uint64_t sum = 0;

    for (unsigned w = 0; w < NWORKERS; w++)
        sum += atomic_load(&ring(e, w)->tail);
    return sum;
}

/* One round: gather, write + sync, done, maintain. Returns 1 when a batch was written, 0
 * when there was nothing to write, or an error. */
static int
step(env_t *e)
{
    cn_persist_io_t io;
    uint64_t wake = 0;
    int rc = cn__persist_gather(e->p, &io), wrc;

    if (rc < 0)
        return rc;
    if (rc == 1) {
        if ((wrc = cn__persist_write_sync(&io)))
            return wrc;
        if ((wrc = cn__persist_done(e->p, 0, 10, &wake)))
            return wrc;
    } else if (cn__persist_pending(e->p)) {
        if ((wrc = cn__persist_done(e->p, 0, 0, &wake)))
            return wrc;
    }
    e->wake |= wake;
    if ((wrc = cn__persist_maintain(e->p)))
        return wrc;
    return rc;
}

/* Runs rounds until the rings are empty. Returns 0, an error, or -EDEADLK when several
 * rounds in a row made no progress (bounded in time as well). */
static int
drive(env_t *e)
{
    uint64_t end = unit_now_ms() + DRIVE_BOUND_MS;
    int idle = 0;

    while (!rings_empty(e) || cn__persist_pending(e->p)) {
        uint64_t before = tails(e);
        int rc = step(e);

        if (rc < 0)
            return rc;
        idle = tails(e) == before ? idle + 1 : 0;
        if (idle >= 5)
            return -EDEADLK;
        if (unit_now_ms() > end)
            return -ETIMEDOUT;
    }
    return 0;
}

/* ---- helpers: records --------------------------------------------------------------- */

typedef struct put {
    char key[96];
    size_t keylen;
    char body[BODY_MAX];
    cn_record_t rec;
} put_t;

static uint64_t
pad8(uint64_t n)
{
    return (n + 7) & ~(uint64_t)7;
}

/* The put of record i of worker w (tag tells test rounds apart), with a body of about
 * body_hint bytes: grown by up to 8 so the ring record is a multiple of 16 bytes; or,
 * with exact_len, sized so the encoded put is exactly exact_len bytes. */
static void
put_make(put_t *p, const char *tag, unsigned w, unsigned i, size_t body_hint, size_t exact_len)
{
    size_t blen = body_hint;

    memset(p, 0, sizeof(*p));
    p->keylen = (size_t)snprintf(p->key, sizeof(p->key), "cnerium:response:orders.create:%s-w%u-%u",
                                 tag, w, i);
    p->rec.status = (uint16_t)(200 + i % 100);
    p->rec.created_ms = 1000 + i;
    p->rec.expires_ms = future_ms;
    for (int k = 0; k < CN_SHA256_LEN; k++)
        p->rec.fingerprint[k] = (uint8_t)(k * 13 + i + w);
    p->rec.content_type = "application/json";
    p->rec.content_type_len = 16;
    p->rec.body = p->body;
    if (exact_len) {
        p->rec.body_len = 0;
        blen = exact_len - cn__persist_put_size(p->keylen, &p->rec);
    } else {
        for (;;) {
            p->rec.body_len = (uint32_t)blen;
            if (pad8(cn__persist_put_size(p->keylen, &p->rec)) % 16 == 0)
                break;
            blen++;
        }
    }
    CU_ASSERT_FATAL(blen <= BODY_MAX);
    p->rec.body_len = (uint32_t)blen;
    for (size_t k = 0; k < blen; k++)
        p->body[k] = (char)('a' + (k * 7 + i * 3 + w) % 26);
}

static size_t
hint_for(unsigned i)
{
    return 20 + (i * 37) % 160;
}

/* Encodes the put and pushes it into worker w's ring. Returns cn__ring_push's result. */
static int
push_put(env_t *e, const put_t *p, unsigned w, uint64_t *seq)
{
    static uint8_t buf[BODY_MAX + 1024];
    size_t n = 0;

    CU_ASSERT_EQUAL_FATAL(
        cn__persist_put_encode(buf, sizeof(buf), p->key, p->keylen, &p->rec, &n), 0);
    CU_ASSERT_EQUAL_FATAL(n, cn__persist_put_size(p->keylen, &p->rec));
    return cn__ring_push(ring(e, w), CN_PERSIST_PUT, buf, n, seq);
}

/* Pushes records from..to-1 of worker w (round tag), driving the engine whenever the
 * ring is full. */
static void
push_range(env_t *e, const char *tag, unsigned w, unsigned from, unsigned to)
{
    static put_t p;
    uint64_t seq;

    for (unsigned i = from; i < to; i++) {
        int rc;
        put_make(&p, tag, w, i, hint_for(i), 0);
        while ((rc = push_put(e, &p, w, &seq)) == -EAGAIN)
            CU_ASSERT_EQUAL_FATAL(drive(e), 0);
        CU_ASSERT_EQUAL_FATAL(rc, 0);
    }
}

static cn_store_t *
store_open(env_t *e)
{
    cn_store_t *s = NULL;

    CU_ASSERT_PTR_NULL_FATAL(e->p); /* one LMDB environment per process at a time */
    CU_ASSERT_EQUAL_FATAL(cn__store_open(e->lmdb, MAP_SIZE, &s), 0);
    return s;
}

static size_t
store_count(cn_store_t *s)
{
    size_t n = 999999;

    CU_ASSERT_EQUAL(cn__store_count(s, &n), 0);
    return n;
}

/* Counts the records from..to-1 of worker w (round tag) found in the store with the
 * right contents; checks that those found are intact. */
static unsigned
count_present(cn_store_t *s, const char *tag, unsigned w, unsigned from, unsigned to)
{
    static put_t p;
    unsigned n = 0;

    for (unsigned i = from; i < to; i++) {
        cn_record_t got;
        void *buf = NULL;
        int rc;

        put_make(&p, tag, w, i, hint_for(i), 0);
        rc = cn__store_get(s, p.key, p.keylen, cn__clock_wall_ms(), &got, &buf);
        if (rc == CN_ENOTFOUND)
            continue;
        CU_ASSERT_EQUAL(rc, 0);
        if (rc)
            continue;
        CU_ASSERT_EQUAL(got.status, p.rec.status);
        CU_ASSERT_EQUAL(got.created_ms, p.rec.created_ms);
        CU_ASSERT_EQUAL(got.expires_ms, p.rec.expires_ms);
        CU_ASSERT_EQUAL(memcmp(got.fingerprint, p.rec.fingerprint, CN_SHA256_LEN), 0);
        CU_ASSERT_EQUAL(got.body_len, p.rec.body_len);
        if (got.body_len == p.rec.body_len)
            CU_ASSERT_EQUAL(memcmp(got.body, p.rec.body, got.body_len), 0);
        free(buf);
        n++;
    }
    return n;
}

/* The WAL segments in dir: their starts, sorted, in starts (at most cap). */
static size_t
list_segments(const char *dir, uint64_t *starts, size_t cap)
{
    DIR *d = opendir(dir);
    struct dirent *de;
    size_t n = 0;

    CU_ASSERT_PTR_NOT_NULL_FATAL(d);
    while ((de = readdir(d))) {
        size_t len = strlen(de->d_name);
        if (len != 20 || strcmp(de->d_name + 16, ".wal"))
            continue;
        if (n < cap)
            starts[n] = strtoull(de->d_name, NULL, 16);
        n++;
    }
    closedir(d);
    for (size_t i = 1; i < n && i < cap; i++) {
        for (size_t j = i; j > 0 && starts[j - 1] > starts[j]; j--) {
            uint64_t t = starts[j];
            starts[j] = starts[j - 1];
            starts[j - 1] = t;
        }
    }
    return n;
}

/* Reads a whole segment into a malloc'd buffer of its size. */
static uint8_t *
read_segment(env_t *e, uint64_t start, size_t *size)
{
    char path[1024];
    struct stat st;
    uint8_t *buf;
    int fd;

    CU_ASSERT_EQUAL_FATAL(cn__wal_segment_path(path, sizeof(path), e->wal, start), 0);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    CU_ASSERT_TRUE_FATAL(fd >= 0);
    CU_ASSERT_EQUAL_FATAL(fstat(fd, &st), 0);
    buf = malloc((size_t)st.st_size);
    CU_ASSERT_PTR_NOT_NULL_FATAL(buf);
    CU_ASSERT_EQUAL_FATAL(pread(fd, buf, (size_t)st.st_size, 0), st.st_size);
    close(fd);
    *size = (size_t)st.st_size;
    return buf;
}

/* Walks the frames of a segment from its start. Returns the number of DATA frames; sets
 * *sealed when a SEAL ends them, and the offsets of the first max DATA frames. */
static size_t
walk_segment(const uint8_t *buf, size_t size, uint64_t start, int *sealed, size_t *offs,
             size_t max)
{
    size_t off = 0, n = 0, consumed;
    cn_wal_frame_t f;

    *sealed = 0;
    while (off < size &&
           cn__wal_frame_decode(buf + off, size - off, start + off, &f, &consumed) == 0) {
        if (f.type == CN_WAL_SEAL) {
            *sealed = 1;
            break;
        }
        if (n < max)
            offs[n] = off;
        n++;
        off += consumed;
    }
    return n;
}

static int
count_frame(const cn_wal_frame_t *f, void *arg)
{
    (void)f;
    (*(uint64_t *)arg)++;
    return 0;
}

/* DATA frames in the whole WAL (validated by cn__wal_recover from LSN 0). */
static uint64_t
wal_frames(env_t *e)
{
    cn_wal_recovery_t rep;
    uint64_t n = 0;
    int rc = cn__wal_recover(e->wal, e->cfg.segment_size, 0, e->cfg.batch_max_bytes,
                             count_frame, &n, &rep);

    if (rc)
        fprintf(stderr, "cn__wal_recover: %d: %s\n", rc, rep.message);
    CU_ASSERT_EQUAL(rc, 0);
    CU_ASSERT_EQUAL(rep.cut_bytes, 0);
    return n;
}

/* Overwrites len bytes at off of the segment starting at start with a pattern. */
static void
scribble(env_t *e, uint64_t start, uint64_t off, size_t len)
{
    char path[1024];
    uint8_t junk[64];
    int fd;

    CU_ASSERT_FATAL(len <= sizeof(junk));
    memset(junk, 0x5A, sizeof(junk));
    CU_ASSERT_EQUAL_FATAL(cn__wal_segment_path(path, sizeof(path), e->wal, start), 0);
    fd = open(path, O_RDWR | O_CLOEXEC);
    CU_ASSERT_TRUE_FATAL(fd >= 0);
    CU_ASSERT_EQUAL(pwrite(fd, junk, len, (off_t)off), (ssize_t)len);
    CU_ASSERT_EQUAL(fdatasync(fd), 0);
    close(fd);
}

/* ---- the put codec ------------------------------------------------------------------ */

static void
test_put_codec(void)
{
    static put_t p;
    uint8_t buf[1024];
    const uint8_t *recb;
    const char *key;
    size_t n = 0, keylen, reclen;
    cn_record_t dec;

    put_make(&p, "codec", 0, 7, 100, 0);
    p.rec.location = "/orders/7";
    p.rec.location_len = 9;
    CU_ASSERT_EQUAL_FATAL(cn__persist_put_encode(buf, sizeof(buf), p.key, p.keylen, &p.rec, &n), 0);
    CU_ASSERT_EQUAL(n, cn__persist_put_size(p.keylen, &p.rec));
    CU_ASSERT_EQUAL(n, CN_PERSIST_PUT_HEADER + p.keylen + cn__record_encoded_size(&p.rec));
    CU_ASSERT_EQUAL(buf[0], 1);
    CU_ASSERT_EQUAL(buf[1], CN_PERSIST_PUT);

    CU_ASSERT_EQUAL_FATAL(cn__persist_put_decode(buf, n, &key, &keylen, &recb, &reclen), 0);
    CU_ASSERT_EQUAL(keylen, p.keylen);
    CU_ASSERT_EQUAL(memcmp(key, p.key, keylen), 0);
    CU_ASSERT_PTR_EQUAL(key, (const char *)buf + CN_PERSIST_PUT_HEADER);
    CU_ASSERT_EQUAL(reclen, cn__record_encoded_size(&p.rec));
    CU_ASSERT_EQUAL_FATAL(cn__record_decode(recb, reclen, &dec), 0);
    CU_ASSERT_EQUAL(dec.status, p.rec.status);
    CU_ASSERT_EQUAL(dec.expires_ms, p.rec.expires_ms);
    CU_ASSERT_EQUAL(dec.location_len, 9);
    CU_ASSERT_EQUAL(dec.body_len, p.rec.body_len);
    CU_ASSERT_EQUAL(memcmp(dec.body, p.rec.body, dec.body_len), 0);

    /* Every truncation, and one byte too many. */
    for (size_t t = 0; t < n; t++)
        CU_ASSERT_EQUAL(cn__persist_put_decode(buf, t, &key, &keylen, &recb, &reclen),
                        CN_ECORRUPT);
    buf[n] = 0;
    CU_ASSERT_EQUAL(cn__persist_put_decode(buf, n + 1, &key, &keylen, &recb, &reclen),
                    CN_ECORRUPT);
    /* Bad version, kind, or lengths. */
    buf[0] = 2;
    CU_ASSERT_EQUAL(cn__persist_put_decode(buf, n, &key, &keylen, &recb, &reclen), CN_ECORRUPT);
    buf[0] = 1;
    buf[1] = 9;
    CU_ASSERT_EQUAL(cn__persist_put_decode(buf, n, &key, &keylen, &recb, &reclen), CN_ECORRUPT);
    buf[1] = CN_PERSIST_PUT;
    buf[2]++;
    CU_ASSERT_EQUAL(cn__persist_put_decode(buf, n, &key, &keylen, &recb, &reclen), CN_ECORRUPT);
    buf[2]--;
    buf[7] = 0x80;
    CU_ASSERT_EQUAL(cn__persist_put_decode(buf, n, &key, &keylen, &recb, &reclen), CN_ECORRUPT);
    buf[7] = 0;
    CU_ASSERT_EQUAL(cn__persist_put_decode(buf, n, &key, &keylen, &recb, &reclen), 0);

    /* Encode limits: a buffer one byte short, and a key over 65535 bytes. */
    CU_ASSERT_EQUAL(cn__persist_put_encode(buf, n - 1, p.key, p.keylen, &p.rec, &n), CN_ETOOBIG);
    CU_ASSERT_EQUAL(cn__persist_put_encode(buf, sizeof(buf), p.body, 65536, &p.rec, &n),
                    CN_ETOOBIG);
    /* An empty key and an empty record body. */
    p.rec.body_len = 0;
    CU_ASSERT_EQUAL_FATAL(cn__persist_put_encode(buf, sizeof(buf), "", 0, &p.rec, &n), 0);
    CU_ASSERT_EQUAL_FATAL(cn__persist_put_decode(buf, n, &key, &keylen, &recb, &reclen), 0);
    CU_ASSERT_EQUAL(keylen, 0);
    CU_ASSERT_EQUAL(cn__record_decode(recb, reclen, &dec), 0);
}

/* ---- the engine --------------------------------------------------------------------- */

/* Everything pushed before one gather goes into one batch; then more rounds; every record
 * in LMDB, both rings acked, counters and meta right. */
static void
test_end_to_end(void)
{
    env_t e;
    cn_persist_io_t io;
    cn_store_meta_t meta;
    cn_store_t *s;
    uint64_t wake = 0, first_len, applied;
    const unsigned n = 100;

    env_new(&e, BIG_BATCH, SEGMENT);
    env_open(&e);
    CU_ASSERT_EQUAL(cn__persist_gather(e.p, &io), 0); /* nothing yet */
    CU_ASSERT_FALSE(cn__persist_pending(e.p));
    push_range(&e, "e2e", 0, 0, n);
    push_range(&e, "e2e", 1, 0, n);

    CU_ASSERT_EQUAL_FATAL(cn__persist_gather(e.p, &io), 1);
    CU_ASSERT_TRUE(cn__persist_pending(e.p));
    CU_ASSERT_EQUAL(cn__persist_gather(e.p, &io), -EBUSY); /* one batch at a time */
    CU_ASSERT_EQUAL(io.offset, 0);
    CU_ASSERT_TRUE(io.len > 0 && io.len < SEGMENT);
    first_len = io.len;
    CU_ASSERT_EQUAL_FATAL(cn__persist_write_sync(&io), 0);
    CU_ASSERT_EQUAL_FATAL(cn__persist_done(e.p, 0, 123, &wake), 0);
    CU_ASSERT_FALSE(cn__persist_pending(e.p));
    CU_ASSERT_EQUAL(wake, 3);
    CU_ASSERT_EQUAL(atomic_load(&stats(&e)->batches), 1);
    CU_ASSERT_EQUAL(atomic_load(&stats(&e)->records), 2 * n); /* group commit */
    CU_ASSERT_EQUAL(atomic_load(&stats(&e)->wal_bytes), first_len);
    CU_ASSERT_EQUAL(atomic_load(&stats(&e)->applied_lsn), first_len);
    CU_ASSERT_EQUAL(atomic_load(&stats(&e)->records_failed), 0);
    CU_ASSERT_EQUAL(atomic_load(&stats(&e)->sync_us_sum), 123);
    CU_ASSERT_EQUAL(atomic_load(&stats(&e)->batch_buckets[CN_SHM_BATCH_BUCKETS - 4]), 1);
    for (unsigned w = 0; w < NWORKERS; w++) {
        CU_ASSERT_EQUAL(atomic_load(&ring(&e, w)->acked_seq), n);
        CU_ASSERT_EQUAL(atomic_load(&ring(&e, w)->tail), atomic_load(&ring(&e, w)->head));
        CU_ASSERT_EQUAL(atomic_load(&ring(&e, w)->failed_count), 0);
    }
    /* Nothing more to do. */
    CU_ASSERT_EQUAL(cn__persist_gather(e.p, &io), 0);
    CU_ASSERT_FALSE(cn__persist_pending(e.p));

    /* More rounds: only worker 1, one record at a time, then both again. */
    for (unsigned i = n; i < n + 5; i++) {
        push_range(&e, "e2e", 1, i, i + 1);
        e.wake = 0;
        CU_ASSERT_EQUAL(drive(&e), 0);
        CU_ASSERT_EQUAL(e.wake, 2);
    }
    push_range(&e, "e2e", 0, n, 2 * n);
    push_range(&e, "e2e", 1, n + 5, 2 * n);
    CU_ASSERT_EQUAL(drive(&e), 0);
    CU_ASSERT_EQUAL(atomic_load(&ring(&e, 0)->acked_seq), 2 * n);
    CU_ASSERT_EQUAL(atomic_load(&ring(&e, 1)->acked_seq), 2 * n);
    CU_ASSERT_EQUAL(atomic_load(&stats(&e)->records), 4 * n);
    CU_ASSERT_TRUE(atomic_load(&stats(&e)->records) > atomic_load(&stats(&e)->batches));
    /* LSNs also count the SEALs and the unused ends of rolled segments. */
    CU_ASSERT_TRUE(atomic_load(&stats(&e)->applied_lsn) >= atomic_load(&stats(&e)->wal_bytes));
    applied = atomic_load(&stats(&e)->applied_lsn);
    CU_ASSERT_EQUAL(wal_frames(&e), 4 * n);
    env_close(&e);

    s = store_open(&e);
    CU_ASSERT_EQUAL(store_count(s), 4 * n);
    CU_ASSERT_EQUAL(count_present(s, "e2e", 0, 0, 2 * n), 2 * n);
    CU_ASSERT_EQUAL(count_present(s, "e2e", 1, 0, 2 * n), 2 * n);
    CU_ASSERT_EQUAL_FATAL(cn__store_meta_get(s, &meta), 0);
    CU_ASSERT_EQUAL(meta.epoch, e.shm.hdr->epoch);
    CU_ASSERT_EQUAL(meta.seqs[0], 2 * n);
    CU_ASSERT_EQUAL(meta.seqs[1], 2 * n);
    CU_ASSERT_EQUAL(meta.applied_lsn, applied);
    cn__store_close(s);
    env_free(&e);
}

/* Enough records for several 64 KiB segments: each segment but the last ends with a
 * SEAL, no frame is lost, everything is stored. */
static void
test_segment_roll(void)
{
    env_t e;
    uint64_t starts[64];
    size_t nseg, total = 0;
    cn_store_t *s;
    const unsigned n = 700; /* per worker, about 250 bytes of WAL each */

    env_new(&e, 8192, SEGMENT);
    env_open(&e);
    for (unsigned i = 0; i < n; i += 50) {
        push_range(&e, "roll", 0, i, i + 50);
        push_range(&e, "roll", 1, i, i + 50);
        CU_ASSERT_EQUAL_FATAL(drive(&e), 0);
    }
    nseg = list_segments(e.wal, starts, 64);
    CU_ASSERT_TRUE_FATAL(nseg >= 3 && nseg <= 64);
    {
        /* The segment being written is the last one holding frames; one more, empty,
         * may follow: the persister creates the next segment ahead of time. */
        size_t frames[64], last = 0;
        int sealed[64];
        for (size_t k = 0; k < nseg; k++) {
            size_t size, offs[1];
            uint8_t *buf = read_segment(&e, starts[k], &size);

            CU_ASSERT_EQUAL(size, SEGMENT);
            CU_ASSERT_EQUAL(starts[k], k * SEGMENT);
            frames[k] = walk_segment(buf, size, starts[k], &sealed[k], offs, 0);
            total += frames[k];
            if (frames[k])
                last = k;
            free(buf);
        }
        CU_ASSERT(nseg - last <= 2);
        for (size_t k = 0; k < nseg; k++) {
            CU_ASSERT_EQUAL(sealed[k], k < last);
            if (k > last)
                CU_ASSERT_EQUAL(frames[k], 0);
        }
    }
    CU_ASSERT_EQUAL(total, 2 * n);
    CU_ASSERT_EQUAL(wal_frames(&e), 2 * n);
    CU_ASSERT_EQUAL(atomic_load(&stats(&e)->records), 2 * n);
    env_close(&e);

    s = store_open(&e);
    CU_ASSERT_EQUAL(store_count(s), 2 * n);
    CU_ASSERT_EQUAL(count_present(s, "roll", 0, 0, n), n);
    CU_ASSERT_EQUAL(count_present(s, "roll", 1, 0, n), n);
    cn__store_close(s);

    /* A restart over the rolled log: nothing to replay, nothing lost. */
    env_open(&e);
    CU_ASSERT_EQUAL(atomic_load(&stats(&e)->recovered_records), 0);
    env_close(&e);
    s = store_open(&e);
    CU_ASSERT_EQUAL(store_count(s), 2 * n);
    cn__store_close(s);
    env_free(&e);
}

/* Gathers and writes one batch of everything in the rings, without cn__persist_done: the
 * persister dies after the fdatasync, before the LMDB apply. */
static void
crash_after_sync(env_t *e, cn_persist_io_t *io)
{
    CU_ASSERT_EQUAL_FATAL(cn__persist_gather(e->p, io), 1);
    CU_ASSERT_EQUAL_FATAL(cn__persist_write_sync(io), 0);
    CU_ASSERT_TRUE(cn__persist_pending(e->p));
    env_close(e); /* with the batch still pending */
}

static void
test_recovery(void)
{
    env_t e;
    cn_persist_io_t io;
    cn_store_meta_t meta;
    cn_store_t *s;
    const unsigned n = 40;

    env_new(&e, BIG_BATCH, SEGMENT);
    env_open(&e);
    push_range(&e, "rec", 0, 0, 5); /* some records applied before */
    CU_ASSERT_EQUAL_FATAL(drive(&e), 0);
    push_range(&e, "rec", 0, 5, n);
    push_range(&e, "rec", 1, 0, n);
    crash_after_sync(&e, &io);
    CU_ASSERT_EQUAL(atomic_load(&stats(&e)->records), 5);
    s = store_open(&e);
    CU_ASSERT_EQUAL(store_count(s), 5); /* the crashed batch never reached LMDB */
    cn__store_close(s);

    env_open(&e);
    CU_ASSERT_EQUAL(atomic_load(&stats(&e)->recovered_records), 2 * n - 5);
    env_close(&e);
    s = store_open(&e);
    CU_ASSERT_EQUAL(store_count(s), 2 * n);
    CU_ASSERT_EQUAL(count_present(s, "rec", 0, 0, n), n);
    CU_ASSERT_EQUAL(count_present(s, "rec", 1, 0, n), n);
    CU_ASSERT_EQUAL_FATAL(cn__store_meta_get(s, &meta), 0);
    CU_ASSERT_EQUAL(meta.seqs[0], n);
    CU_ASSERT_EQUAL(meta.seqs[1], n);
    CU_ASSERT_EQUAL(meta.epoch, e.shm.hdr->epoch);
    cn__store_close(s);

    /* Idempotent: two more restarts replay nothing and change nothing. */
    for (int k = 0; k < 2; k++) {
        env_open(&e);
        CU_ASSERT_EQUAL(atomic_load(&stats(&e)->recovered_records), 0);
        env_close(&e);
        s = store_open(&e);
        CU_ASSERT_EQUAL(store_count(s), 2 * n);
        CU_ASSERT_EQUAL(count_present(s, "rec", 0, 0, n), n);
        CU_ASSERT_EQUAL(count_present(s, "rec", 1, 0, n), n);
        cn__store_close(s);
    }
    env_free(&e);
}

/* After a recovery the rings still hold the recovered records: the next gather skips
 * them (no second WAL frame) but acks them, next to records pushed since. */
static void
test_restart_dedupe(void)
{
    env_t e;
    cn_persist_io_t io;
    cn_store_t *s;
    uint64_t wake = 0, wal_before;
    const unsigned n = 20;

    env_new(&e, BIG_BATCH, SEGMENT);
    env_open(&e);
    push_range(&e, "dd", 0, 0, n);
    push_range(&e, "dd", 1, 0, n);
    crash_after_sync(&e, &io);
    push_range(&e, "dd", 0, n, n + 5); /* pushed while the persister was down */

    env_open(&e);
    CU_ASSERT_EQUAL(atomic_load(&stats(&e)->recovered_records), 2 * n);
    CU_ASSERT_EQUAL(atomic_load(&stats(&e)->duplicates_skipped), 0);
    wal_before = atomic_load(&stats(&e)->wal_bytes);
    CU_ASSERT_EQUAL_FATAL(cn__persist_gather(e.p, &io), 1);
    CU_ASSERT_EQUAL_FATAL(cn__persist_write_sync(&io), 0);
    CU_ASSERT_EQUAL_FATAL(cn__persist_done(e.p, 0, 1, &wake), 0);
    CU_ASSERT_EQUAL(wake, 3);
    CU_ASSERT_EQUAL(atomic_load(&stats(&e)->duplicates_skipped), 2 * n);
    CU_ASSERT_EQUAL(atomic_load(&stats(&e)->records), 5);
    CU_ASSERT_EQUAL(atomic_load(&stats(&e)->batches), 1);
    CU_ASSERT_EQUAL(atomic_load(&stats(&e)->wal_bytes) - wal_before, io.len);
    CU_ASSERT_EQUAL(atomic_load(&ring(&e, 0)->acked_seq), n + 5);
    CU_ASSERT_EQUAL(atomic_load(&ring(&e, 1)->acked_seq), n);
    CU_ASSERT_TRUE(rings_empty(&e));
    CU_ASSERT_EQUAL(atomic_load(&ring(&e, 0)->failed_count), 0);
    CU_ASSERT_EQUAL(atomic_load(&ring(&e, 1)->failed_count), 0);
    CU_ASSERT_EQUAL(wal_frames(&e), 2 * n + 5); /* each record written once */
    env_close(&e);

    s = store_open(&e);
    CU_ASSERT_EQUAL(store_count(s), 2 * n + 5);
    CU_ASSERT_EQUAL(count_present(s, "dd", 0, 0, n + 5), n + 5);
    CU_ASSERT_EQUAL(count_present(s, "dd", 1, 0, n), n);
    cn__store_close(s);
    env_free(&e);

    /* Only duplicates: nothing to write, yet a pending batch whose done acks them. */
    env_new(&e, BIG_BATCH, SEGMENT);
    env_open(&e);
    push_range(&e, "dd2", 1, 0, 7);
    crash_after_sync(&e, &io);
    env_open(&e);
    CU_ASSERT_EQUAL(cn__persist_gather(e.p, &io), 0);
    CU_ASSERT_TRUE_FATAL(cn__persist_pending(e.p));
    CU_ASSERT_EQUAL(cn__persist_done(e.p, 0, 0, &wake), 0);
    CU_ASSERT_EQUAL(wake, 2);
    CU_ASSERT_EQUAL(atomic_load(&ring(&e, 1)->acked_seq), 7);
    CU_ASSERT_TRUE(rings_empty(&e));
    CU_ASSERT_EQUAL(atomic_load(&stats(&e)->duplicates_skipped), 7);
    CU_ASSERT_EQUAL(atomic_load(&stats(&e)->batches), 0);
    CU_ASSERT_EQUAL(cn__ring_stored(ring(&e, 1), 7, 0), 1);
    env_free(&e);
}

/* A new server start (a new region, so a new epoch) over an old data dir, with a batch of
 * the old start to recover: the new rings' seqs start at 1 again and are not duplicates. */
static void
test_new_epoch(void)
{
    env_t e;
    cn_persist_io_t io;
    cn_store_t *s;
    uint64_t old_epoch;

    env_new(&e, BIG_BATCH, SEGMENT);
    env_open(&e);
    push_range(&e, "old", 0, 0, 10);
    CU_ASSERT_EQUAL_FATAL(drive(&e), 0);
    push_range(&e, "old", 0, 10, 15);
    crash_after_sync(&e, &io);
    old_epoch = e.shm.hdr->epoch;
    cn__shm_destroy(&e.shm);
    CU_ASSERT_EQUAL_FATAL(cn__shm_create_rings(64, NWORKERS, 1, RING_CAP, &e.shm), 0);
    CU_ASSERT_NOT_EQUAL(e.shm.hdr->epoch, old_epoch);

    env_open(&e);
    CU_ASSERT_EQUAL(atomic_load(&stats(&e)->recovered_records), 5);
    push_range(&e, "new", 0, 0, 12); /* seqs 1..12 again */
    CU_ASSERT_EQUAL(drive(&e), 0);
    CU_ASSERT_EQUAL(atomic_load(&stats(&e)->duplicates_skipped), 0);
    CU_ASSERT_EQUAL(atomic_load(&stats(&e)->records), 12);
    CU_ASSERT_EQUAL(atomic_load(&ring(&e, 0)->acked_seq), 12);
    env_close(&e);
    s = store_open(&e);
    CU_ASSERT_EQUAL(store_count(s), 27);
    CU_ASSERT_EQUAL(count_present(s, "old", 0, 0, 15), 15);
    CU_ASSERT_EQUAL(count_present(s, "new", 0, 0, 12), 12);
    cn__store_close(s);
    env_free(&e);
}

/* A crash tore the last frame of the last batch: recovery applies the frames before it,
 * cuts the torn bytes, and the engine writes on from there (the torn record is still in
 * its ring and is written again). */
static void
test_torn_tail(void)
{
    env_t e;
    cn_persist_io_t io;
    cn_store_t *s;
    size_t offs[16], n, size;
    uint64_t last_off, last_len, io_off, io_len;
    uint8_t *seg;
    int sealed;

    env_new(&e, BIG_BATCH, SEGMENT);
    env_open(&e);
    push_range(&e, "torn", 0, 0, 10);
    CU_ASSERT_EQUAL_FATAL(drive(&e), 0);
    push_range(&e, "torn", 0, 10, 15);
    CU_ASSERT_EQUAL_FATAL(cn__persist_gather(e.p, &io), 1);
    CU_ASSERT_EQUAL_FATAL(cn__persist_write_sync(&io), 0);
    io_off = io.offset;
    io_len = io.len;
    env_close(&e);

    seg = read_segment(&e, 0, &size);
    n = walk_segment(seg, size, 0, &sealed, offs, 16);
    CU_ASSERT_EQUAL_FATAL(n, 15);
    last_off = offs[14];
    last_len = io_off + io_len - last_off;
    CU_ASSERT_TRUE(offs[10] == io_off);
    free(seg);
    /* Tear the last frame: its second half never reached the disk intact. */
    scribble(&e, 0, last_off + last_len / 2, 16);

    env_open(&e);
    CU_ASSERT_EQUAL(atomic_load(&stats(&e)->recovered_records), 4);
    env_close(&e);
    seg = read_segment(&e, 0, &size);
    CU_ASSERT_EQUAL(walk_segment(seg, size, 0, &sealed, offs, 16), 14);
    for (size_t k = last_off; k < size; k++) {
        if (seg[k]) {
            CU_FAIL("torn bytes left after the end of the log");
            break;
        }
    }
    free(seg);
    s = store_open(&e);
    CU_ASSERT_EQUAL(store_count(s), 14);
    CU_ASSERT_EQUAL(count_present(s, "torn", 0, 0, 14), 14);
    CU_ASSERT_EQUAL(count_present(s, "torn", 0, 14, 15), 0);
    cn__store_close(s);

    /* The engine goes on: the torn record again (from its ring), then new ones. */
    env_open(&e);
    push_range(&e, "torn", 0, 15, 18);
    CU_ASSERT_EQUAL(drive(&e), 0);
    CU_ASSERT_EQUAL(atomic_load(&stats(&e)->duplicates_skipped), 4);
    CU_ASSERT_EQUAL(atomic_load(&stats(&e)->records), 10 + 1 + 3);
    CU_ASSERT_EQUAL(atomic_load(&ring(&e, 0)->acked_seq), 18);
    CU_ASSERT_EQUAL(wal_frames(&e), 18);
    env_close(&e);
    s = store_open(&e);
    CU_ASSERT_EQUAL(store_count(s), 18);
    CU_ASSERT_EQUAL(count_present(s, "torn", 0, 0, 18), 18);
    cn__store_close(s);
    env_free(&e);
}

/* A corrupt frame with valid frames after it (well past one batch): the engine refuses to
 * open, says why, and the store is left as it was. */
static void
test_corrupt_middle(void)
{
    env_t e;
    cn_persister_t *p = NULL;
    cn_store_t *s;
    char err[512] = "";
    size_t offs[64], size;
    uint8_t *seg;
    int sealed, rc;

    env_new(&e, 1024, SEGMENT);
    env_open(&e);
    push_range(&e, "mid", 0, 0, 40);
    CU_ASSERT_EQUAL_FATAL(drive(&e), 0);
    CU_ASSERT_TRUE(atomic_load(&stats(&e)->batches) >= 8);
    env_close(&e);

    seg = read_segment(&e, 0, &size);
    CU_ASSERT_EQUAL_FATAL(walk_segment(seg, size, 0, &sealed, offs, 64), 40);
    free(seg);
    scribble(&e, 0, offs[2] + 30, 8);

    rc = cn__persist_open(&e.shm, &e.cfg, &p, err, sizeof(err));
    CU_ASSERT_EQUAL(rc, CN_ECORRUPT);
    CU_ASSERT_PTR_NULL(p);
    CU_ASSERT_TRUE(strlen(err) > 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "WAL"));
    if (rc == 0)
        cn__persist_close(p);
    s = store_open(&e);
    CU_ASSERT_EQUAL(store_count(s), 40);
    cn__store_close(s);
    env_free(&e);
}

/* Opening over a data dir whose lmdb/ or wal/ is a regular file fails with a message and
 * leaves nothing behind (LeakSanitizer checks the half-built engine is freed). */
static void
test_open_fails_cleanly(void)
{
    env_t e;
    cn_persister_t *p = NULL;
    char err[512], path[700];
    int fd, rc;

    for (int which = 0; which < 2; which++) {
        env_new(&e, BIG_BATCH, SEGMENT);
        CU_ASSERT_EQUAL_FATAL(cn__wal_mkdir(e.data), 0);
        snprintf(path, sizeof(path), "%s", which ? e.wal : e.lmdb);
        fd = open(path, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
        CU_ASSERT_TRUE_FATAL(fd >= 0);
        close(fd);
        err[0] = 0;
        rc = cn__persist_open(&e.shm, &e.cfg, &p, err, sizeof(err));
        CU_ASSERT_TRUE(rc < 0);
        CU_ASSERT_PTR_NULL(p);
        CU_ASSERT_PTR_NOT_NULL(strstr(err, which ? "wal" : "lmdb"));
        if (rc == 0)
            cn__persist_close(p);
        p = NULL;
        env_free(&e);
    }
}

/* The batch's write or fdatasync failed: every record in it is failed and acked, and done
 * reports the error (the persister must stop). */
static void
test_io_error(void)
{
    env_t e;
    cn_persist_io_t io;
    cn_store_t *s;
    uint64_t wake = 0;

    env_new(&e, BIG_BATCH, SEGMENT);
    env_open(&e);
    push_range(&e, "ioerr", 0, 0, 3);
    push_range(&e, "ioerr", 1, 0, 4);
    CU_ASSERT_EQUAL_FATAL(cn__persist_gather(e.p, &io), 1);
    CU_ASSERT_EQUAL(cn__persist_done(e.p, -EIO, 0, &wake), -EIO);
    CU_ASSERT_FALSE(cn__persist_pending(e.p));
    CU_ASSERT_EQUAL(wake, 3);
    CU_ASSERT_EQUAL(atomic_load(&ring(&e, 0)->acked_seq), 3);
    CU_ASSERT_EQUAL(atomic_load(&ring(&e, 1)->acked_seq), 4);
    CU_ASSERT_TRUE(rings_empty(&e));
    CU_ASSERT_EQUAL(atomic_load(&ring(&e, 0)->failed_count), 3);
    CU_ASSERT_EQUAL(atomic_load(&ring(&e, 1)->failed_count), 4);
    for (uint64_t seq = 1; seq <= 3; seq++)
        CU_ASSERT_EQUAL(cn__ring_stored(ring(&e, 0), seq, 0), 0);
    for (uint64_t seq = 1; seq <= 4; seq++)
        CU_ASSERT_EQUAL(cn__ring_stored(ring(&e, 1), seq, 0), 0);
    CU_ASSERT_EQUAL(cn__ring_result(ring(&e, 1), 4, 0), -EIO);
    CU_ASSERT_EQUAL(atomic_load(&stats(&e)->records_failed), 7);
    CU_ASSERT_EQUAL(atomic_load(&stats(&e)->batches), 0);
    CU_ASSERT_EQUAL(atomic_load(&stats(&e)->records), 0);
    env_close(&e);
    s = store_open(&e);
    CU_ASSERT_EQUAL(store_count(s), 0);
    cn__store_close(s);
    env_free(&e);
}

/* The LMDB apply of a synced batch fails (the map is full): its records are failed with
 * that reason (CN_EMAPFULL, not EIO) and acked, the batch's bytes in the WAL are zeros
 * again, the next batch is written at the same LSN, and a restart applies only that one:
 * a record whose request was refused is never applied later. */
static void
test_apply_failure_erases_batch(void)
{
    env_t e;
    static put_t p;
    cn_store_t *s;
    uint64_t seq = 0, last_failed = 0;
    unsigned pushed = 0, failed = 0, stored;

    env_new(&e, BIG_BATCH, SEGMENT);
    e.cfg.map_size = (size_t)256 << 10;
    env_open(&e);
    /* Batches of three large records until one no longer fits the map. */
    while (pushed < 60 && !failed) {
        for (unsigned k = 0; k < 3; k++, pushed++) {
            put_make(&p, "full", 0, pushed, 15000, 0);
            CU_ASSERT_EQUAL_FATAL(push_put(&e, &p, 0, &seq), 0);
        }
        CU_ASSERT_EQUAL_FATAL(drive(&e), 0);
        failed = (unsigned)atomic_load(&stats(&e)->records_failed);
        last_failed = seq;
    }
    CU_ASSERT_EQUAL_FATAL(failed, 3);
    stored = pushed - failed;
    CU_ASSERT(stored > 0);
    CU_ASSERT_EQUAL(cn__ring_result(ring(&e, 0), last_failed, 0), CN_EMAPFULL);
    CU_ASSERT_EQUAL(atomic_load(&ring(&e, 0)->acked_seq), last_failed);
    /* The failed batch is gone from the WAL: only the stored records' frames remain. */
    CU_ASSERT_EQUAL(wal_frames(&e), stored);
    env_close(&e);

    /* Room again (a larger map): new records go where the failed batch was. */
    e.cfg.map_size = MAP_SIZE;
    env_open(&e);
    push_range(&e, "after", 1, 0, 3);
    CU_ASSERT_EQUAL_FATAL(drive(&e), 0);
    CU_ASSERT_EQUAL(atomic_load(&stats(&e)->records_failed), failed); /* none more */
    env_close(&e);
    s = store_open(&e);
    CU_ASSERT_EQUAL(store_count(s), stored + 3);
    CU_ASSERT_EQUAL(count_present(s, "after", 1, 0, 3), 3);
    cn__store_close(s);
    env_free(&e);
}

/* A store that applied WAL records without its wal/ directory, or without the segment
 * holding its applied position: the open fails with CN_ECORRUPT and says so, and the
 * directory is not recreated. */
static void
test_missing_wal_refused(void)
{
    env_t e;
    cn_persister_t *p = NULL;
    char err[512], path[700];
    struct stat st;

    for (int which = 0; which < 2; which++) {
        env_new(&e, BIG_BATCH, SEGMENT);
        env_open(&e);
        push_range(&e, "gone", 0, 0, 5);
        CU_ASSERT_EQUAL_FATAL(drive(&e), 0);
        env_close(&e);
        if (which == 0) {
            CU_ASSERT_EQUAL_FATAL(unit_rmtree(e.wal), 0);
        } else {
            CU_ASSERT_EQUAL_FATAL(cn__wal_segment_path(path, sizeof(path), e.wal, 0), 0);
            CU_ASSERT_EQUAL_FATAL(unlink(path), 0);
        }
        err[0] = 0;
        CU_ASSERT_EQUAL(cn__persist_open(&e.shm, &e.cfg, &p, err, sizeof(err)), CN_ECORRUPT);
        CU_ASSERT_PTR_NULL(p);
        CU_ASSERT_PTR_NOT_NULL(strstr(err, "missing"));
        if (which == 0)
            CU_ASSERT_NOT_EQUAL(stat(e.wal, &st), 0);
        env_free(&e);
    }
}

/* A ring record that is not a put, and a put whose record bytes are corrupt: those two
 * are failed, the records around them are stored. */
static void
test_bad_put(void)
{
    env_t e;
    static put_t p;
    static uint8_t buf[1024];
    cn_store_t *s;
    uint64_t seq, seen;
    size_t n;

    env_new(&e, BIG_BATCH, SEGMENT);
    env_open(&e);
    seen = atomic_load(&ring(&e, 0)->failed_count);
    push_range(&e, "bad", 0, 0, 1);                                      /* seq 1 */
    memset(buf, 0x42, 40);
    CU_ASSERT_EQUAL(cn__ring_push(ring(&e, 0), CN_PERSIST_PUT, buf, 40, &seq), 0); /* 2 */
    put_make(&p, "bad", 0, 2, 40, 0);
    CU_ASSERT_EQUAL_FATAL(cn__persist_put_encode(buf, sizeof(buf), p.key, p.keylen, &p.rec, &n), 0);
    buf[n - 1] ^= 0xff; /* the record's CRC */
    CU_ASSERT_EQUAL(cn__ring_push(ring(&e, 0), CN_PERSIST_PUT, buf, n, &seq), 0); /* 3 */
    CU_ASSERT_EQUAL(seq, 3);
    push_range(&e, "bad", 0, 3, 4); /* seq 4 */
    CU_ASSERT_EQUAL(drive(&e), 0);
    CU_ASSERT_EQUAL(atomic_load(&ring(&e, 0)->acked_seq), 4);
    CU_ASSERT_EQUAL(cn__ring_stored(ring(&e, 0), 1, seen), 1);
    CU_ASSERT_EQUAL(cn__ring_stored(ring(&e, 0), 2, seen), 0);
    CU_ASSERT_EQUAL(cn__ring_stored(ring(&e, 0), 3, seen), 0);
    CU_ASSERT_EQUAL(cn__ring_stored(ring(&e, 0), 4, seen), 1);
    CU_ASSERT_EQUAL(atomic_load(&stats(&e)->records_failed), 2);
    env_close(&e);
    s = store_open(&e);
    CU_ASSERT_EQUAL(store_count(s), 2);
    CU_ASSERT_EQUAL(count_present(s, "bad", 0, 0, 1), 1);
    CU_ASSERT_EQUAL(count_present(s, "bad", 0, 2, 4), 1);
    cn__store_close(s);
    env_free(&e);
}

/* With 8 KiB segments a 10 KB record can never be written: it is failed and acked
 * without a frame, the small records around it are stored. */
static void
test_record_over_segment(void)
{
    env_t e;
    static put_t p;
    cn_store_t *s;
    uint64_t seq;

    env_new(&e, BIG_BATCH, 8192);
    env_open(&e);
    push_range(&e, "seg", 0, 0, 2);
    put_make(&p, "huge", 0, 0, 10000, 0);
    CU_ASSERT_EQUAL_FATAL(push_put(&e, &p, 0, &seq), 0);
    CU_ASSERT_EQUAL(seq, 3);
    push_range(&e, "seg", 0, 2, 40);
    CU_ASSERT_EQUAL(drive(&e), 0);
    CU_ASSERT_EQUAL(atomic_load(&ring(&e, 0)->acked_seq), 41);
    CU_ASSERT_EQUAL(cn__ring_stored(ring(&e, 0), 3, 0), 0);
    CU_ASSERT_EQUAL(cn__ring_stored(ring(&e, 0), 4, 0), 1);
    CU_ASSERT_EQUAL(atomic_load(&stats(&e)->records_failed), 1);
    CU_ASSERT_EQUAL(atomic_load(&stats(&e)->records), 40);
    CU_ASSERT_EQUAL(wal_frames(&e), 40);
    env_close(&e);
    s = store_open(&e);
    CU_ASSERT_EQUAL(store_count(s), 40);
    CU_ASSERT_EQUAL(count_present(s, "seg", 0, 0, 40), 40);
    cn__store_close(s);
    env_free(&e);
}

/* The current segment has room for small frames (more than the 4096 bytes below which
 * cn__persist_maintain rolls) but not for the next record waiting in a ring. gather
 * promises 1 "when there is something to write" and 0 only when there is nothing; the
 * persister's loop (workers/persister.c) calls maintain only after a batch or on an idle
 * tick, so a 0 here leaves the record waiting while wake-ups keep coming. */
static void
test_record_needs_next_segment(void)
{
    env_t e;
    static put_t p;
    cn_persist_io_t io;
    cn_store_t *s;
    uint64_t seq, room;
    unsigned i = 0;
    int rc;

    env_new(&e, BIG_BATCH, SEGMENT);
    env_open(&e);
    while (SEGMENT - CN_WAL_FRAME_HEADER - atomic_load(&stats(&e)->applied_lsn) > 6000) {
        push_range(&e, "ns", 0, i, i + 1);
        CU_ASSERT_EQUAL_FATAL(drive(&e), 0);
        i++;
    }
    room = SEGMENT - CN_WAL_FRAME_HEADER - atomic_load(&stats(&e)->applied_lsn);
    CU_ASSERT_FATAL(room >= 4096 && room < 8048);
    CU_ASSERT_EQUAL(cn__persist_maintain(e.p), 0); /* no roll yet: room >= 4096 */
    put_make(&p, "ns-big", 0, 0, 0, 8000);          /* a frame of 8048 bytes */
    CU_ASSERT_EQUAL_FATAL(push_put(&e, &p, 0, &seq), 0);

    rc = cn__persist_gather(e.p, &io);
    if (rc == 0)
        fprintf(stderr, "next segment: gather gave 0 (pending %d) with a %llu-byte record "
                        "waiting and %llu bytes left in the segment\n",
                cn__persist_pending(e.p), (unsigned long long)cn__ring_used(ring(&e, 0)),
                (unsigned long long)room);
    CU_ASSERT_EQUAL(rc, 1);
    if (rc == 1) {
        uint64_t wake = 0;
        CU_ASSERT_EQUAL(cn__persist_write_sync(&io), 0);
        CU_ASSERT_EQUAL(cn__persist_done(e.p, 0, 0, &wake), 0);
    }
    /* With maintain between the rounds it goes through. */
    CU_ASSERT_EQUAL(drive(&e), 0);
    CU_ASSERT_EQUAL(atomic_load(&ring(&e, 0)->acked_seq), seq);
    CU_ASSERT_EQUAL(cn__ring_stored(ring(&e, 0), seq, 0), 1);
    env_close(&e);
    s = store_open(&e);
    CU_ASSERT_EQUAL(store_count(s), i + 1);
    cn__store_close(s);
    env_free(&e);
}

/* Worker 0's ring is filled with puts to 8 bytes before the end of its array and drained;
 * the next put needs a PAD of 8 bytes there. The persister must go on reading worker 0's
 * ring, and worker 1's ring (right after it in the region) must be untouched. */
static void
test_ring_rest_of_eight(void)
{
    env_t e;
    static put_t p;
    cn_store_t *s;
    uint64_t seq, head1;
    int rc;

    env_new(&e, BIG_BATCH, SEGMENT);
    env_open(&e);
    push_range(&e, "r1", 1, 0, 2);
    /* 62 ring records of 1040 bytes and one of 1048: 65528 = RING_CAP - 8. */
    for (unsigned i = 0; i < 63; i++) {
        put_make(&p, "r8", 0, i, 0, i == 62 ? 1032 : 1024);
        CU_ASSERT_EQUAL_FATAL(push_put(&e, &p, 0, &seq), 0);
    }
    CU_ASSERT_EQUAL_FATAL(atomic_load(&ring(&e, 0)->head), RING_CAP - 8);
    CU_ASSERT_EQUAL_FATAL(drive(&e), 0);
    head1 = atomic_load(&ring(&e, 1)->head);
    CU_ASSERT_NOT_EQUAL(head1, 0);

    put_make(&p, "r8", 0, 63, hint_for(63), 0);
    CU_ASSERT_EQUAL_FATAL(push_put(&e, &p, 0, &seq), 0);
    CU_ASSERT_EQUAL(atomic_load(&ring(&e, 1)->head), head1);
    rc = drive(&e);
    CU_ASSERT_EQUAL(rc, 0);
    CU_ASSERT_EQUAL(atomic_load(&ring(&e, 0)->acked_seq), 64);
    if (rc)
        fprintf(stderr, "rest of 8: drive gave %d; ring 0 tail %llu head %llu; ring 1 head "
                        "%llu (was %llu), tail %llu\n",
                rc, (unsigned long long)atomic_load(&ring(&e, 0)->tail),
                (unsigned long long)atomic_load(&ring(&e, 0)->head),
                (unsigned long long)atomic_load(&ring(&e, 1)->head), (unsigned long long)head1,
                (unsigned long long)atomic_load(&ring(&e, 1)->tail));
    /* Worker 1 can still hand records over. */
    put_make(&p, "r1", 1, 2, hint_for(2), 0);
    CU_ASSERT_EQUAL(push_put(&e, &p, 1, &seq), 0);
    env_close(&e);
    s = store_open(&e);
    CU_ASSERT_EQUAL(count_present(s, "r1", 1, 0, 2), 2);
    CU_ASSERT_EQUAL(count_present(s, "r8", 0, 63, 64), rc == 0 ? 1 : 0);
    cn__store_close(s);
    env_free(&e);
}

/* ---- the ring committer ------------------------------------------------------------- */

typedef struct outcome {
    atomic_int early, finals;
    atomic_int early_status, status, final;
} outcome_t;

static void
on_done(int status, int final, void *arg)
{
    outcome_t *o = arg;

    if (final == 0) {
        atomic_store(&o->early_status, status);
        atomic_fetch_add(&o->early, 1);
    } else {
        atomic_store(&o->status, status);
        atomic_store(&o->final, final);
        atomic_fetch_add(&o->finals, 1);
    }
}

typedef struct cenv {
    env_t e;
    int persist_efd, ack_efd;
    cn_committer_t *c;
} cenv_t;

static void
cenv_new(cenv_t *ce, uint32_t timeout_ms)
{
    env_new(&ce->e, BIG_BATCH, SEGMENT);
    env_open(&ce->e);
    ce->persist_efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    ce->ack_efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    CU_ASSERT_TRUE_FATAL(ce->persist_efd >= 0 && ce->ack_efd >= 0);
    ce->c = NULL;
    CU_ASSERT_EQUAL_FATAL(
        cn__committer_new_ring(ring(&ce->e, 0), ce->persist_efd, ce->ack_efd, timeout_ms, &ce->c),
        0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(ce->c);
}

/* Waits (bounded) until all n outcomes have their final call, or their early call,
 * doing what the worker's event loop does: sleep on the ack eventfd (or until the next
 * commit deadline) and poll the committer. */
static int
wait_outcomes(cenv_t *ce, outcome_t *o, unsigned n, int early)
{
    uint64_t end = unit_now_ms() + WAIT_BOUND_MS;

    for (;;) {
        unsigned done = 0;
        struct pollfd p = {ce->ack_efd, POLLIN, 0};
        uint64_t v, now, next;
        cn__committer_poll(ce->c);
        for (unsigned i = 0; i < n; i++)
            done += atomic_load(early ? &o[i].early : &o[i].finals) > 0;
        if (done == n)
            return 1;
        now = unit_now_ms();
        if (now > end)
            return 0;
        next = cn__committer_next_deadline_ms(ce->c);
        if (next > end)
            next = end;
        if (poll(&p, 1, next > now ? (int)(next - now) : 0) > 0)
            (void)!read(ce->ack_efd, &v, sizeof(v));
    }
}

static void
cenv_free(cenv_t *ce)
{
    cn__committer_free(ce->c, 1000);
    close(ce->persist_efd);
    close(ce->ack_efd);
    env_free(&ce->e);
}

/* What the persister process does after a batch: wake the workers in the mask. */
static void
wake_ack(cenv_t *ce)
{
    uint64_t one = 1;

    CU_ASSERT_EQUAL(write(ce->ack_efd, &one, sizeof(one)), (ssize_t)sizeof(one));
}

static int
submit(cenv_t *ce, const char *tag, unsigned i, size_t body, outcome_t *o)
{
    static put_t p;
    cn_store_put_t item;

    put_make(&p, tag, 0, i, body, 0);
    item = (cn_store_put_t){p.key, p.keylen, &p.rec, NULL, 0, NULL, 0, NULL};
    return cn__committer_submit(ce->c, &item, on_done, o);
}

static void
test_committer(void)
{
    cenv_t ce;
    outcome_t o[6];
    cn_store_t *s;
    uint64_t v = 0;

    memset(o, 0, sizeof(o));
    cenv_new(&ce, 60000);
    for (unsigned i = 0; i < 5; i++)
        CU_ASSERT_EQUAL(submit(&ce, "cm", i, hint_for(i), &o[i]), 0);
    /* Too big for the ring: refused, never called back. */
    CU_ASSERT_EQUAL(submit(&ce, "cm", 99, BODY_MAX - 100, &o[5]), CN_ETOOBIG);
    CU_ASSERT_EQUAL(cn__committer_pending(ce.c), 5);
    CU_ASSERT_EQUAL(read(ce.persist_efd, &v, sizeof(v)), (ssize_t)sizeof(v));
    CU_ASSERT_EQUAL(v, 5); /* the persister was woken once per record */
    for (unsigned i = 0; i < 5; i++)
        CU_ASSERT_EQUAL(atomic_load(&o[i].finals), 0);

    CU_ASSERT_EQUAL(drive(&ce.e), 0);
    CU_ASSERT_EQUAL(ce.e.wake, 1);
    wake_ack(&ce);
    CU_ASSERT_TRUE(wait_outcomes(&ce, o, 5, 0));
    for (unsigned i = 0; i < 5; i++) {
        CU_ASSERT_EQUAL(atomic_load(&o[i].finals), 1);
        CU_ASSERT_EQUAL(atomic_load(&o[i].status), 0);
        CU_ASSERT_EQUAL(atomic_load(&o[i].final), 1);
        CU_ASSERT_EQUAL(atomic_load(&o[i].early), 0);
    }
    CU_ASSERT_EQUAL(atomic_load(&o[5].finals) + atomic_load(&o[5].early), 0);
    CU_ASSERT_EQUAL(cn__committer_pending(ce.c), 0);
    cn__committer_free(ce.c, 1000);
    ce.c = NULL;
    env_close(&ce.e);
    s = store_open(&ce.e);
    CU_ASSERT_EQUAL(count_present(s, "cm", 0, 0, 5), 5);
    CU_ASSERT_EQUAL(store_count(s), 5);
    cn__store_close(s);
    cenv_free(&ce);
}

/* The batch's write failed: the committer reports -EIO as the final status. */
static void
test_committer_failure(void)
{
    cenv_t ce;
    outcome_t o[3];
    cn_persist_io_t io;
    uint64_t wake = 0;

    memset(o, 0, sizeof(o));
    cenv_new(&ce, 60000);
    for (unsigned i = 0; i < 3; i++)
        CU_ASSERT_EQUAL(submit(&ce, "cf", i, hint_for(i), &o[i]), 0);
    CU_ASSERT_EQUAL_FATAL(cn__persist_gather(ce.e.p, &io), 1);
    CU_ASSERT_EQUAL(cn__persist_done(ce.e.p, -EIO, 0, &wake), -EIO);
    CU_ASSERT_EQUAL(wake, 1);
    wake_ack(&ce);
    CU_ASSERT_TRUE(wait_outcomes(&ce, o, 3, 0));
    for (unsigned i = 0; i < 3; i++) {
        CU_ASSERT_EQUAL(atomic_load(&o[i].finals), 1);
        CU_ASSERT_EQUAL(atomic_load(&o[i].status), -EIO);
        CU_ASSERT_EQUAL(atomic_load(&o[i].final), 1);
    }
    cenv_free(&ce);
}

/* Not decided within the timeout: the early call (-ETIMEDOUT, final 0) once, then the
 * final call when the persister gets to it. */
static void
test_committer_timeout(void)
{
    cenv_t ce;
    outcome_t o[2];

    memset(o, 0, sizeof(o));
    cenv_new(&ce, 20);
    CU_ASSERT_EQUAL(submit(&ce, "ct", 0, 50, &o[0]), 0);
    CU_ASSERT_EQUAL(submit(&ce, "ct", 1, 50, &o[1]), 0);
    CU_ASSERT_TRUE(wait_outcomes(&ce, o, 2, 1));
    for (unsigned i = 0; i < 2; i++) {
        CU_ASSERT_EQUAL(atomic_load(&o[i].early_status), -ETIMEDOUT);
        CU_ASSERT_EQUAL(atomic_load(&o[i].finals), 0);
    }
    CU_ASSERT_EQUAL(cn__committer_pending(ce.c), 2);
    /* The early call comes once, however often the committer is polled while the
     * record stays undecided. */
    for (unsigned i = 0; i < 5; i++)
        cn__committer_poll(ce.c);
    CU_ASSERT_EQUAL(cn__committer_next_deadline_ms(ce.c), UINT64_MAX);
    CU_ASSERT_EQUAL(atomic_load(&o[0].early), 1);
    CU_ASSERT_EQUAL(atomic_load(&o[1].early), 1);

    CU_ASSERT_EQUAL(drive(&ce.e), 0);
    wake_ack(&ce);
    CU_ASSERT_TRUE(wait_outcomes(&ce, o, 2, 0));
    for (unsigned i = 0; i < 2; i++) {
        CU_ASSERT_EQUAL(atomic_load(&o[i].status), 0);
        CU_ASSERT_EQUAL(atomic_load(&o[i].final), 1);
        CU_ASSERT_EQUAL(atomic_load(&o[i].early), 1);
    }
    cenv_free(&ce);
}

/* Freed with records undecided: each gets its final call with final 2 (-ECANCELED)
 * before cn__committer_free returns. */
static void
test_committer_free_undecided(void)
{
    cenv_t ce;
    outcome_t o[3];

    memset(o, 0, sizeof(o));
    cenv_new(&ce, 60000);
    for (unsigned i = 0; i < 3; i++)
        CU_ASSERT_EQUAL(submit(&ce, "cu", i, 30, &o[i]), 0);
    cn__committer_free(ce.c, 0);
    ce.c = NULL;
    for (unsigned i = 0; i < 3; i++) {
        CU_ASSERT_EQUAL(atomic_load(&o[i].finals), 1);
        CU_ASSERT_EQUAL(atomic_load(&o[i].final), 2);
        CU_ASSERT_EQUAL(atomic_load(&o[i].status), -ECANCELED);
        CU_ASSERT_EQUAL(atomic_load(&o[i].early), 0);
    }
    /* The records stay in the ring for the persister. */
    CU_ASSERT_EQUAL(cn__ring_used(ring(&ce.e, 0)) > 0, 1);
    CU_ASSERT_EQUAL(drive(&ce.e), 0);
    CU_ASSERT_EQUAL(atomic_load(&ring(&ce.e, 0)->acked_seq), 3);
    cenv_free(&ce);
}

/* A full ring: submit says -EAGAIN and never calls back. */
static void
test_committer_full(void)
{
    cenv_t ce;
    static outcome_t o[512];
    unsigned accepted = 0;
    int rc = 0;

    memset(o, 0, sizeof(o));
    cenv_new(&ce, 60000);
    while (accepted < 512 && (rc = submit(&ce, "cfull", accepted, 1000, &o[accepted])) == 0)
        accepted++;
    CU_ASSERT_EQUAL(rc, -EAGAIN);
    CU_ASSERT_TRUE(accepted > 10 && accepted < 512);
    CU_ASSERT_EQUAL(cn__committer_pending(ce.c), accepted);
    CU_ASSERT_EQUAL(drive(&ce.e), 0);
    wake_ack(&ce);
    CU_ASSERT_TRUE(wait_outcomes(&ce, o, accepted, 0));
    CU_ASSERT_EQUAL(atomic_load(&o[accepted].finals) + atomic_load(&o[accepted].early), 0);
    CU_ASSERT_EQUAL(cn__committer_pending(ce.c), 0);
    cenv_free(&ce);
}

/* ---- direct mode: O_DIRECT, whole blocks from a fresh block, RWF_DSYNC ---------------- */

/* open() is wrapped for this suite (-Wl,--wrap=open in tests/unit/CMakeLists.txt): with
 * refuse_direct set it refuses O_DIRECT with EINVAL, as tmpfs on older kernels and some
 * other file systems do, so the fallback runs the engine's real code path. */
static int refuse_direct;

int __real_open(const char *path, int flags, ...);
int __wrap_open(const char *path, int flags, ...);

int
__wrap_open(const char *path, int flags, ...)
{
    mode_t mode = 0;

    if ((flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE) {
        va_list ap;

        va_start(ap, flags);
        mode = (mode_t)va_arg(ap, unsigned);
        va_end(ap);
    }
    if (refuse_direct && (flags & O_DIRECT)) {
        errno = EINVAL;
        return -1;
    }
    return __real_open(path, flags, mode);
}

/* 1 when the suite's temp dir takes O_DIRECT; the direct tests say so and pass when not
 * (their subject cannot exist there; the fallback test still runs). */
static int
direct_here(const char *test)
{
    char path[512];
    int fd;

    snprintf(path, sizeof(path), "%s/direct-probe", tmpdir);
    fd = open(path, O_RDWR | O_CREAT | O_DIRECT | O_CLOEXEC, 0600);
    if (fd < 0) {
        fprintf(stderr, "%s: skipped, %s does not take O_DIRECT (%s)\n", test, tmpdir,
                strerror(errno));
        return 0;
    }
    close(fd);
    unlink(path);
    return 1;
}

typedef struct layout {
    uint64_t data, pads, writes; /* DATA frames, PAD frames, writes (SEALs included) */
} layout_t;

/* Walks the frames of every segment and checks the direct layout: each write (frames
 * sharing a batch LSN) starts on a block boundary and ends on one, PADs last in their
 * write; the frames of each segment stop on a block boundary. */
static void
check_direct_layout(env_t *e, layout_t *out)
{
    uint64_t starts[64];
    size_t nseg = list_segments(e->wal, starts, 64);

    memset(out, 0, sizeof(*out));
    CU_ASSERT_FATAL(nseg <= 64);
    for (size_t i = 0; i < nseg; i++) {
        size_t size, off = 0, consumed;
        uint8_t *seg = read_segment(e, starts[i], &size);
        uint64_t batch = UINT64_MAX, write_end = 0;
        cn_wal_frame_t f;

        while (off < size && cn__wal_frame_decode(seg + off, size - off, starts[i] + off, &f,
                                                  &consumed) == 0) {
            if (f.batch_lsn != batch) {
                CU_ASSERT_EQUAL(f.lsn % CN_WAL_BLOCK, 0);
                CU_ASSERT_EQUAL(f.batch_lsn, f.lsn);
                CU_ASSERT_EQUAL(write_end % CN_WAL_BLOCK, 0); /* the previous one's end */
                out->writes++;
                batch = f.batch_lsn;
            }
            if (f.type == CN_WAL_SEAL)
                break;
            if (f.type == CN_WAL_PAD)
                out->pads++;
            else
                out->data++;
            CU_ASSERT_NOT_EQUAL(batch, UINT64_MAX);
            off += consumed;
            write_end = starts[i] + off;
        }
        CU_ASSERT_EQUAL(off % CN_WAL_BLOCK, 0);
        free(seg);
    }
}

/* Direct mode end to end: every batch is whole blocks from a fresh block (buffer, offset
 * and length aligned), the PADs are skipped by recovery (every record replayed once, no
 * torn tail reported), segments roll with their SEAL in their last block, and a batch
 * synced but never applied is recovered. */
static void
test_direct_layout(void)
{
    env_t e;
    cn_persist_io_t io;
    cn_store_t *s;
    layout_t l;
    uint64_t wake = 0;
    unsigned i = 0, batches = 0;

    if (!direct_here("direct layout"))
        return;
    env_new(&e, BIG_BATCH, SEGMENT);
    e.cfg.wal_direct = 1;
    env_open(&e);
    CU_ASSERT_TRUE_FATAL(cn__persist_direct(e.p));
    /* Batches of 1 to 12 records until the log is in its fourth segment. */
    while (atomic_load(&stats(&e)->applied_lsn) < 3 * SEGMENT && batches < 1000) {
        unsigned k = 1 + batches % 12;

        push_range(&e, "dl", 0, i, i + k);
        i += k;
        CU_ASSERT_EQUAL_FATAL(cn__persist_gather(e.p, &io), 1);
        CU_ASSERT_TRUE(io.dsync);
        CU_ASSERT_EQUAL(io.offset % CN_WAL_BLOCK, 0);
        CU_ASSERT_EQUAL(io.len % CN_WAL_BLOCK, 0);
        CU_ASSERT_EQUAL((uintptr_t)io.buf % CN_WAL_BLOCK, 0);
        CU_ASSERT_TRUE(io.offset + io.len <= SEGMENT - CN_WAL_BLOCK);
        CU_ASSERT_EQUAL_FATAL(cn__persist_write_sync(&io), 0);
        CU_ASSERT_EQUAL_FATAL(cn__persist_done(e.p, 0, 1, &wake), 0);
        CU_ASSERT_EQUAL(atomic_load(&stats(&e)->applied_lsn) % CN_WAL_BLOCK, 0);
        CU_ASSERT_EQUAL_FATAL(cn__persist_maintain(e.p), 0);
        batches++;
    }
    CU_ASSERT_EQUAL_FATAL(drive(&e), 0);
    CU_ASSERT_TRUE(atomic_load(&stats(&e)->applied_lsn) >= 3 * SEGMENT);
    check_direct_layout(&e, &l);
    CU_ASSERT_EQUAL(l.data, i);
    CU_ASSERT_TRUE(l.pads > 0);
    CU_ASSERT_TRUE(l.writes >= batches);
    CU_ASSERT_EQUAL(wal_frames(&e), i); /* PADs validated and skipped, nothing cut */

    /* Synced, never applied: recovery replays exactly these records. */
    push_range(&e, "dl", 1, 0, 7);
    crash_after_sync(&e, &io);
    CU_ASSERT_TRUE(io.dsync);
    for (int k = 0; k < 2; k++) {
        env_open(&e);
        CU_ASSERT_EQUAL(atomic_load(&stats(&e)->recovered_records), k ? 0 : 7);
        env_close(&e);
    }
    s = store_open(&e);
    CU_ASSERT_EQUAL(store_count(s), i + 7);
    CU_ASSERT_EQUAL(count_present(s, "dl", 0, 0, i), i);
    CU_ASSERT_EQUAL(count_present(s, "dl", 1, 0, 7), 7);
    cn__store_close(s);
    env_free(&e);
}

/* The write after an acknowledged batch never covers its blocks, so a tear of that write
 * (here: its first block garbage, its later blocks on disk) is cut as a torn tail while
 * every acknowledged record survives. With the next batch packed behind the last frame,
 * the garbage would land on the acknowledged batch's last block. */
static void
test_direct_acked_blocks_untouched(void)
{
    env_t e;
    cn_persist_io_t io;
    cn_store_t *s;
    uint8_t *before, *after, *junk;
    size_t size, size2;
    uint64_t a_end;
    char path[1024];
    int fd;

    if (!direct_here("direct acked blocks"))
        return;
    env_new(&e, BIG_BATCH, SEGMENT);
    e.cfg.wal_direct = 1;
    env_open(&e);
    push_range(&e, "ab", 0, 0, 3);
    CU_ASSERT_EQUAL_FATAL(drive(&e), 0);
    a_end = atomic_load(&stats(&e)->applied_lsn);
    CU_ASSERT_EQUAL(a_end % CN_WAL_BLOCK, 0);
    CU_ASSERT_TRUE_FATAL(a_end > 0);
    before = read_segment(&e, 0, &size);

    push_range(&e, "ab", 0, 3, 40);
    CU_ASSERT_EQUAL_FATAL(cn__persist_gather(e.p, &io), 1);
    CU_ASSERT_EQUAL(io.offset, a_end);
    CU_ASSERT_TRUE_FATAL(io.len >= 2 * CN_WAL_BLOCK);
    /* The crash: the write's later blocks reached the disk, its first one is garbage. */
    CU_ASSERT_EQUAL_FATAL(cn__wal_segment_path(path, sizeof(path), e.wal, 0), 0);
    fd = open(path, O_RDWR | O_CLOEXEC);
    CU_ASSERT_TRUE_FATAL(fd >= 0);
    CU_ASSERT_EQUAL(pwrite(fd, (const uint8_t *)io.buf + CN_WAL_BLOCK, io.len - CN_WAL_BLOCK,
                           (off_t)(io.offset + CN_WAL_BLOCK)),
                    (ssize_t)(io.len - CN_WAL_BLOCK));
    junk = malloc(CN_WAL_BLOCK);
    CU_ASSERT_PTR_NOT_NULL_FATAL(junk);
    for (size_t k = 0; k < CN_WAL_BLOCK; k++)
        junk[k] = (uint8_t)(k * 131 + 7);
    CU_ASSERT_EQUAL(pwrite(fd, junk, CN_WAL_BLOCK, (off_t)io.offset), (ssize_t)CN_WAL_BLOCK);
    CU_ASSERT_EQUAL(fdatasync(fd), 0);
    close(fd);
    free(junk);
    env_close(&e);

    after = read_segment(&e, 0, &size2);
    CU_ASSERT_EQUAL_FATAL(size2, size);
    CU_ASSERT_EQUAL(memcmp(before, after, (size_t)a_end), 0);
    free(after);
    free(before);

    env_open(&e);
    CU_ASSERT_EQUAL(atomic_load(&stats(&e)->recovered_records), 0);
    env_close(&e);
    s = store_open(&e);
    CU_ASSERT_EQUAL(store_count(s), 3);
    CU_ASSERT_EQUAL(count_present(s, "ab", 0, 0, 3), 3);
    cn__store_close(s);

    /* The torn records are still in the ring (never acked): written again, once. */
    env_open(&e);
    CU_ASSERT_EQUAL(drive(&e), 0);
    CU_ASSERT_EQUAL(atomic_load(&ring(&e, 0)->acked_seq), 40);
    CU_ASSERT_EQUAL(wal_frames(&e), 40);
    env_close(&e);
    s = store_open(&e);
    CU_ASSERT_EQUAL(store_count(s), 40);
    CU_ASSERT_EQUAL(count_present(s, "ab", 0, 0, 40), 40);
    cn__store_close(s);
    env_free(&e);
}

/* A failed direct write: the batch's blocks are zeros again (written the direct way), its
 * records failed, and the next batch goes to the same fresh block. */
static void
test_direct_io_error_erases(void)
{
    env_t e;
    cn_persist_io_t io;
    cn_store_t *s;
    uint64_t wake = 0, a_end, off, len;
    uint8_t *seg;
    size_t size;

    if (!direct_here("direct io error"))
        return;
    env_new(&e, BIG_BATCH, SEGMENT);
    e.cfg.wal_direct = 1;
    env_open(&e);
    push_range(&e, "de", 0, 0, 3);
    CU_ASSERT_EQUAL_FATAL(drive(&e), 0);
    a_end = atomic_load(&stats(&e)->applied_lsn);
    push_range(&e, "de", 0, 3, 9);
    CU_ASSERT_EQUAL_FATAL(cn__persist_gather(e.p, &io), 1);
    CU_ASSERT_EQUAL_FATAL(cn__persist_write_sync(&io), 0); /* on disk, then "it failed" */
    off = io.offset;
    len = io.len;
    CU_ASSERT_EQUAL(cn__persist_done(e.p, -EIO, 0, &wake), -EIO);
    CU_ASSERT_EQUAL(atomic_load(&ring(&e, 0)->failed_count), 6);
    env_close(&e);
    seg = read_segment(&e, 0, &size);
    for (uint64_t k = off; k < off + len; k++) {
        if (seg[k]) {
            CU_FAIL("the failed batch's blocks are not zeros again");
            break;
        }
    }
    free(seg);

    env_open(&e);
    CU_ASSERT_EQUAL(atomic_load(&stats(&e)->recovered_records), 0);
    push_range(&e, "de", 1, 0, 2);
    CU_ASSERT_EQUAL_FATAL(cn__persist_gather(e.p, &io), 1);
    CU_ASSERT_EQUAL(io.offset, a_end);
    CU_ASSERT_EQUAL_FATAL(cn__persist_write_sync(&io), 0);
    CU_ASSERT_EQUAL_FATAL(cn__persist_done(e.p, 0, 1, &wake), 0);
    CU_ASSERT_EQUAL(wal_frames(&e), 5);
    env_close(&e);
    s = store_open(&e);
    CU_ASSERT_EQUAL(store_count(s), 5);
    CU_ASSERT_EQUAL(count_present(s, "de", 0, 3, 9), 0);
    cn__store_close(s);
    env_free(&e);
}

/* O_DIRECT refused: the engine falls back to buffered writes + fdatasync (io.dsync 0, no
 * PADs) and works. The same log then goes on in direct mode (its end is not a block
 * boundary: a PAD first) and then buffered again: recovery reads both layouts, every
 * record once. */
static void
test_direct_fallback_and_mixed_log(void)
{
    env_t e;
    cn_persist_io_t io;
    cn_store_t *s;
    uint64_t wake = 0, end;
    int direct = direct_here("direct fallback (second half)");

    env_new(&e, BIG_BATCH, SEGMENT);
    e.cfg.wal_direct = 1;
    refuse_direct = 1;
    env_open(&e);
    CU_ASSERT_FALSE(cn__persist_direct(e.p));
    push_range(&e, "fb", 0, 0, 5);
    CU_ASSERT_EQUAL_FATAL(cn__persist_gather(e.p, &io), 1);
    CU_ASSERT_FALSE(io.dsync);
    CU_ASSERT_EQUAL_FATAL(cn__persist_write_sync(&io), 0);
    CU_ASSERT_EQUAL_FATAL(cn__persist_done(e.p, 0, 1, &wake), 0);
    push_range(&e, "fb", 0, 5, 10);
    CU_ASSERT_EQUAL_FATAL(drive(&e), 0);
    CU_ASSERT_FALSE(cn__persist_direct(e.p));
    end = atomic_load(&stats(&e)->applied_lsn);
    CU_ASSERT_NOT_EQUAL(end % CN_WAL_BLOCK, 0); /* so the next part needs its PAD */
    CU_ASSERT_EQUAL(wal_frames(&e), 10);
    env_close(&e);
    refuse_direct = 0;

    if (direct) {
        env_open(&e);
        CU_ASSERT_TRUE(cn__persist_direct(e.p));
        push_range(&e, "fb", 0, 10, 20);
        CU_ASSERT_EQUAL_FATAL(cn__persist_gather(e.p, &io), 1);
        CU_ASSERT_TRUE(io.dsync);
        CU_ASSERT_EQUAL(io.offset % CN_WAL_BLOCK, 0);
        CU_ASSERT_TRUE(io.offset > end && io.offset - end < 2 * CN_WAL_BLOCK);
        CU_ASSERT_EQUAL_FATAL(cn__persist_write_sync(&io), 0);
        CU_ASSERT_EQUAL_FATAL(cn__persist_done(e.p, 0, 1, &wake), 0);
        env_close(&e);
    } else {
        push_range(&e, "fb", 0, 10, 20);
        env_open(&e);
        CU_ASSERT_EQUAL(drive(&e), 0);
        env_close(&e);
    }
    e.cfg.wal_direct = 0;
    env_open(&e);
    push_range(&e, "fb", 1, 0, 10);
    CU_ASSERT_EQUAL_FATAL(drive(&e), 0);
    CU_ASSERT_EQUAL(wal_frames(&e), 30);
    env_close(&e);
    env_open(&e);
    CU_ASSERT_EQUAL(atomic_load(&stats(&e)->recovered_records), 0);
    env_close(&e);
    s = store_open(&e);
    CU_ASSERT_EQUAL(store_count(s), 30);
    CU_ASSERT_EQUAL(count_present(s, "fb", 0, 0, 20), 20);
    CU_ASSERT_EQUAL(count_present(s, "fb", 1, 0, 10), 10);
    cn__store_close(s);
    env_free(&e);
}

int
main(void)
{
    static const unit_test_t tests[] = {
        {"put codec round trip and every truncation", test_put_codec},
        {"end to end: rings -> WAL -> LMDB, group commit", test_end_to_end},
        {"segment roll: several segments, each sealed", test_segment_roll},
        {"recovery of a synced, unapplied batch, idempotent", test_recovery},
        {"restart: recovered records in the rings are skipped and acked", test_restart_dedupe},
        {"a new epoch over an old data dir", test_new_epoch},
        {"torn tail: cut, and the engine writes after it", test_torn_tail},
        {"a corrupt frame in the middle fails the open", test_corrupt_middle},
        {"an unusable data dir fails the open cleanly", test_open_fails_cleanly},
        {"a failed write fails and acks the batch", test_io_error},
        {"a failed apply erases the batch from the WAL (map full)",
         test_apply_failure_erases_batch},
        {"a missing wal dir or applied segment fails the open", test_missing_wal_refused},
        {"puts that do not decode are failed, the others stored", test_bad_put},
        {"a record over a segment is failed", test_record_over_segment},
        {"a record that needs the next segment is gathered", test_record_needs_next_segment},
        {"a ring record ending 8 bytes before the ring's end", test_ring_rest_of_eight},
        {"direct: whole blocks from a fresh block; PADs skipped by recovery",
         test_direct_layout},
        {"direct: a torn next write leaves acknowledged blocks intact",
         test_direct_acked_blocks_untouched},
        {"direct: a failed write is erased, the next goes to its block",
         test_direct_io_error_erases},
        {"direct: O_DIRECT refused falls back; a log in both layouts recovers",
         test_direct_fallback_and_mixed_log},
        {"ring committer: callbacks after the persister's ack", test_committer},
        {"ring committer: a failed write is -EIO", test_committer_failure},
        {"ring committer: timeout's early call, then the final", test_committer_timeout},
        {"ring committer: free with undecided records", test_committer_free_undecided},
        {"ring committer: a full ring is -EAGAIN", test_committer_full},
        {NULL, NULL},
    };
    int rc;

    future_ms = cn__clock_wall_ms() + 24u * 3600u * 1000u;
    if (unit_tempdir("persist", tmpdir, sizeof(tmpdir))) {
        perror("mkdtemp");
        return 1;
    }
    rc = unit_run("persist", tests);
    if (unit_rmtree(tmpdir))
        fprintf(stderr, "warning: could not remove %s\n", tmpdir);
    return rc;
}
