/*
 * store/persist.c - the persister's engine (see persist.h).
 *
 * Direct mode (cfg.wal_direct): the segment being written is open with O_DIRECT and each
 * batch is written as whole CN_WAL_BLOCKs starting at a fresh block, its last block
 * filled with a PAD frame, so a write never touches a block that holds an acknowledged
 * frame (a block write is not atomic against power loss). next_lsn is then always a block
 * boundary, the last block of each segment is kept for its SEAL, and the batch buffer is
 * block-aligned.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include "cnerium/error.h"
#include "shm/commits.h"
#include "store/persist.h"
#include "store/store.h"
#include "store/wal.h"
#include "support/bytes.h"
#include "support/clock.h"
#include "support/log.h"

#define RECOVERY_BATCH 4096
/* Recovery starts the disk writing the store's pages after every this many WAL bytes it
 * applied, so the sync that ends it (a checkpoint) waits for little more than the last
 * of them instead of for the whole replay. */
#define RECOVERY_WRITEBACK_BYTES ((size_t)4 << 20)
#define SWEEP_BATCH 1000
#define SWEEP_ROUNDS 8
#define CHECKPOINT_INTERVAL_MS 30000

typedef struct rec {
    uint16_t worker;
    uint64_t seq;
    size_t off;   /* WAL payload offset in the batch buffer */
    uint32_t len; /* WAL payload length */
} rec_t;

typedef struct batch {
    uint8_t *buf;
    size_t len, cap;
    rec_t *recs;
    size_t nrec, reccap;
    uint64_t lsn_start, lsn_end;
    uint64_t upto[CN_SHM_MAX_WORKERS], acked[CN_SHM_MAX_WORKERS];
    uint64_t touched; /* workers with something to ack */
    size_t dups;
    int active;
} batch_t;

struct cn_persister {
    cn_shm_t *shm;
    cn_persist_config_t cfg;
    char data_dir[1024];
    char wal_dir[1040];
    cn_store_t *store;
    cn_store_meta_t meta; /* as the store has it after the last apply */
    uint64_t epoch;
    int seg_fd;
    int direct; /* seg_fd is open with O_DIRECT: see the top of this file */
    uint64_t seg_start, next_lsn;
    uint64_t cursor[CN_SHM_MAX_WORKERS];
    unsigned first_ring; /* gather starts here, rotating, so no ring starves */
    batch_t b;
    int need_roll;
    uint64_t since_checkpoint, last_checkpoint_ms, last_sweep_ms;
    cn_store_raw_put_t *items;
    size_t itemcap;
    /* The next segment is created (zero-filled, synced) ahead of time on a thread of its
     * own, so a roll never waits for tens of MiB of zeros. */
    pthread_t prealloc;
    int prealloc_running;
    uint64_t prealloc_start;
};

/* ---- applying WAL payloads to the store ---- */

static int
grow_items(cn_persister_t *p, size_t n)
{
    cn_store_raw_put_t *items;

    if (n <= p->itemcap)
        return 0;
    items = realloc(p->items, n * sizeof(*items));
    if (!items)
        return -ENOMEM;
    p->items = items;
    p->itemcap = n;
    return 0;
}

/* Fills item i from a WAL payload; a payload that does not decode becomes an item that
 * cn__store_apply skips as corrupt. */
static void
fill_item(cn_store_raw_put_t *it, const cn_wal_payload_t *h)
{
    cn_persist_record_t r;

    memset(it, 0, sizeof(*it));
    if (cn__persist_record_decode(h->put, h->len, &r)) {
        it->key = "";
        it->bytes = NULL; /* decodes as corrupt */
        return;
    }
    it->key = r.key; /* NULL: events only */
    it->keylen = r.keylen;
    it->bytes = r.rec;
    it->len = r.reclen;
    it->events = r.events;
    it->events_len = r.events_len;
    it->appends = r.appends;
    it->appends_len = r.appends_len;
}

/* ---- recovery ---- */

typedef struct recovery {
    cn_persister_t *p;
    uint8_t *buf; /* copies of the payloads of the pending frames */
    size_t len, cap;
    size_t *offs, *lens;
    size_t n, ncap;
    cn_store_meta_t meta; /* meta as it will be after the pending frames */
    uint64_t applied;
    size_t unwritten; /* WAL bytes applied since the last cn__store_writeback */
    int rc;
} recovery_t;

static int
recovery_flush(recovery_t *r)
{
    cn_persister_t *p = r->p;
    int rc;

    if ((rc = grow_items(p, r->n ? r->n : 1)))
        return rc;
    for (size_t i = 0; i < r->n; i++) {
        cn_wal_payload_t h;
        if (cn__format_wal_payload_decode(r->buf + r->offs[i], r->lens[i], &h)) {
            memset(&p->items[i], 0, sizeof(p->items[i]));
            p->items[i].key = "";
            continue;
        }
        fill_item(&p->items[i], &h);
    }
    if ((rc = cn__store_apply(p->store, p->items, r->n, &r->meta)))
        return rc;
    for (size_t i = 0; i < r->n; i++) {
        /* A conflict is a decision (the same one as before the crash), not damage. */
        if (p->items[i].status && p->items[i].status != CN_ECONFLICT)
            cn_log_error("WAL record %zu of a recovery batch could not be stored: %s", i,
                         cn_strerror(p->items[i].status));
    }
    r->applied += r->n;
    r->unwritten += r->len;
    if (r->unwritten >= RECOVERY_WRITEBACK_BYTES) {
        /* Only a head start for the checkpoint: a failure here shows there. */
        if ((rc = cn__store_writeback(p->store)))
            cn_log_debug("starting the store's writeback: %s", cn_strerror(rc));
        r->unwritten = 0;
    }
    r->n = 0;
    r->len = 0;
    p->meta = r->meta;
    return 0;
}

static int
recovery_frame(const cn_wal_frame_t *f, void *arg)
{
    recovery_t *r = arg;
    cn_wal_payload_t h;

    if (cn__format_wal_payload_decode(f->payload, f->len, &h)) {
        cn_log_error("WAL frame at LSN %llu is not a record; skipped",
                     (unsigned long long)f->lsn);
    } else if (h.epoch == r->meta.epoch && h.seq <= r->meta.seqs[h.worker]) {
        /* Written twice (a persister restarted between its write and its apply). */
    } else {
        if (h.epoch != r->meta.epoch) {
            r->meta.epoch = h.epoch;
            memset(r->meta.seqs, 0, sizeof(r->meta.seqs));
        }
        r->meta.seqs[h.worker] = h.seq;
        if (r->len + f->len > r->cap) {
            size_t cap = (r->len + f->len) * 2;
            uint8_t *nb = realloc(r->buf, cap);
            if (!nb)
                return -ENOMEM;
            r->buf = nb;
            r->cap = cap;
        }
        if (r->n == r->ncap) {
            size_t cap = r->ncap ? r->ncap * 2 : 64;
            size_t *no = realloc(r->offs, cap * sizeof(size_t));
            if (!no)
                return -ENOMEM;
            r->offs = no;
            size_t *nl = realloc(r->lens, cap * sizeof(size_t));
            if (!nl)
                return -ENOMEM;
            r->lens = nl;
            r->ncap = cap;
        }
        memcpy(r->buf + r->len, f->payload, f->len);
        r->offs[r->n] = r->len;
        r->lens[r->n] = f->len;
        r->len += f->len;
        r->n++;
    }
    r->meta.applied_lsn = f->lsn + cn__wal_frame_size(f->len);
    if (r->n >= RECOVERY_BATCH)
        return recovery_flush(r);
    return 0;
}

/* Tells the broadcaster that events up to seq are durable, and since when (for its
 * commit -> delivery latency). */
static void
publish_events(cn_persister_t *p, uint64_t added, uint64_t seq)
{
    uint64_t one = 1;

    cn__shm_commit_publish(&p->shm->hdr->commits, seq - added + 1, seq, cn__clock_mono_ns());
    atomic_fetch_add(&p->shm->hdr->events.committed_total, added);
    atomic_store_explicit(&p->shm->hdr->events.committed_seq, seq, memory_order_release);
    if (p->cfg.broadcast_efd >= 0 && write(p->cfg.broadcast_efd, &one, sizeof(one)) < 0 &&
        errno != EAGAIN)
        cn_log_warn("waking the broadcaster: %s", strerror(errno));
}

static int
checkpoint(cn_persister_t *p)
{
    size_t removed = 0;
    int rc;

    if ((rc = cn__store_sync(p->store)))
        return rc;
    if ((rc = cn__wal_remove_below(p->wal_dir, p->cfg.segment_size, p->meta.applied_lsn,
                                   &removed)))
        cn_log_warn("checkpoint: could not remove old WAL segments: %s", cn_strerror(rc));
    atomic_store(&p->shm->hdr->persist.checkpoint_lsn, p->meta.applied_lsn);
    atomic_store(&p->shm->hdr->persist.checkpoint_unix_ms, cn__clock_wall_ms());
    atomic_fetch_add(&p->shm->hdr->persist.checkpoints, 1);
    p->since_checkpoint = 0;
    p->last_checkpoint_ms = cn__clock_mono_ms();
    if (removed)
        cn_log_debug("checkpoint at LSN %llu removed %zu WAL segments",
                     (unsigned long long)p->meta.applied_lsn, removed);
    return 0;
}

static void *
prealloc_main(void *arg)
{
    cn_persister_t *p = arg;
    int fd = cn__wal_segment_open(p->wal_dir, p->prealloc_start, p->cfg.segment_size);

    if (fd >= 0)
        close(fd);
    else
        cn_log_warn("preparing WAL segment %016llx: %s (the roll will retry)",
                    (unsigned long long)p->prealloc_start, cn_strerror(fd));
    return NULL;
}

static void
prealloc_join(cn_persister_t *p)
{
    if (p->prealloc_running) {
        pthread_join(p->prealloc, NULL);
        p->prealloc_running = 0;
    }
}

/* Starts creating the segment after the current one. */
static void
prealloc_next(cn_persister_t *p)
{
    prealloc_join(p);
    p->prealloc_start = p->seg_start + p->cfg.segment_size;
    if (pthread_create(&p->prealloc, NULL, prealloc_main, p) == 0)
        p->prealloc_running = 1;
}

/* Opens the segment at start again with O_DIRECT (fd: the segment open without it).
 * Returns the new fd, -EINVAL when the file system refuses direct I/O with 4096-byte
 * alignment, or another negative errno. */
static int
reopen_direct(cn_persister_t *p, int fd, uint64_t start)
{
    char path[1100];
    void *probe;
    ssize_t n;
    int dfd, rc;

    if ((rc = cn__wal_segment_path(path, sizeof(path), p->wal_dir, start)))
        return rc;
    /* Segment creation and recovery read it through the page cache: drop those (clean)
     * pages, or every direct write would invalidate them first. */
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    if ((dfd = open(path, O_RDWR | O_DIRECT | O_CLOEXEC)) < 0)
        return -errno;
    /* Some file systems take the flag but not the I/O, or want larger alignment: one
     * aligned block read finds out before a batch depends on it. */
    if (posix_memalign(&probe, CN_WAL_BLOCK, CN_WAL_BLOCK)) {
        close(dfd);
        return -ENOMEM;
    }
    do {
        n = pread(dfd, probe, CN_WAL_BLOCK, 0);
    } while (n < 0 && errno == EINTR);
    rc = n == (ssize_t)CN_WAL_BLOCK ? 0 : n < 0 ? -errno : -EIO;
    free(probe);
    if (rc) {
        close(dfd);
        return rc;
    }
    return dfd;
}

static int
open_segment(cn_persister_t *p, uint64_t lsn)
{
    uint64_t start = lsn - lsn % p->cfg.segment_size;
    int fd;

    prealloc_join(p); /* it may be creating this very segment */
    fd = cn__wal_segment_open(p->wal_dir, start, p->cfg.segment_size);

    if (fd < 0)
        return fd;
    if (p->direct) {
        int dfd = reopen_direct(p, fd, start);

        if (dfd == -EINVAL) {
            cn_log_warn("the WAL directory '%s' does not take O_DIRECT writes: the WAL is "
                        "written with buffered writes + fdatasync",
                        p->wal_dir);
            p->direct = 0;
        } else if (dfd < 0) {
            close(fd);
            return dfd;
        } else {
            close(fd);
            fd = dfd;
        }
    }
    if (p->seg_fd >= 0)
        close(p->seg_fd);
    p->seg_fd = fd;
    p->seg_start = start;
    p->next_lsn = lsn;
    prealloc_next(p);
    return 0;
}

/* Bytes the current segment still takes for frames (its SEAL reserved: its last block
 * in direct mode). */
static uint64_t
segment_room(const cn_persister_t *p)
{
    uint64_t end = p->seg_start + p->cfg.segment_size -
                   (p->direct ? CN_WAL_BLOCK : CN_WAL_FRAME_HEADER);

    return p->next_lsn < end ? end - p->next_lsn : 0;
}

/* Bytes a batch of len bytes of frames takes in the WAL: len, or in direct mode up to the
 * next block boundary (a PAD frame fills the rest; a gap too small for its header takes
 * one block more). */
static size_t
padded_len(const cn_persister_t *p, size_t len)
{
    size_t end = (len + CN_WAL_BLOCK - 1) / CN_WAL_BLOCK * CN_WAL_BLOCK;

    if (!p->direct)
        return len;
    if (end > len && end - len < CN_WAL_FRAME_HEADER)
        end += CN_WAL_BLOCK;
    return end;
}

/* Direct mode: writes the size bytes of frames at next_lsn, durably, as whole blocks from
 * the one holding next_lsn: zeros after them, and before them (when next_lsn is not a
 * block boundary, only ever at a start over a log written without direct mode) the bytes
 * the disk already has there, read back and written unchanged. Returns 0 or a negative
 * errno. */
static int
write_blocks(cn_persister_t *p, const uint8_t *frames, size_t size)
{
    uint64_t off = p->next_lsn - p->seg_start, first = off - off % CN_WAL_BLOCK;
    size_t head = (size_t)(off - first);
    size_t len = (head + size + CN_WAL_BLOCK - 1) / CN_WAL_BLOCK * CN_WAL_BLOCK;
    cn_persist_io_t io = {p->seg_fd, NULL, len, first, 1};
    uint8_t *buf;
    int rc = 0;

    if (posix_memalign((void **)&buf, CN_WAL_BLOCK, len))
        return -ENOMEM;
    memset(buf, 0, len);
    if (head) {
        ssize_t n;

        do {
            n = pread(p->seg_fd, buf, CN_WAL_BLOCK, (off_t)first);
        } while (n < 0 && errno == EINTR);
        rc = n == (ssize_t)CN_WAL_BLOCK ? 0 : n < 0 ? -errno : -EIO;
        memset(buf + head, 0, CN_WAL_BLOCK - head);
    }
    memcpy(buf + head, frames, size);
    io.buf = buf;
    if (!rc)
        rc = cn__persist_write_sync(&io);
    free(buf);
    return rc;
}

static int roll(cn_persister_t *p);

/* Direct mode over a log that ends off a block boundary (written without direct mode, or
 * by an older version): a PAD frame up to the next boundary, or the SEAL when the segment
 * has no room for it, so that the first batch starts at a fresh block. Returns 0 or a
 * negative errno. */
static int
align_start(cn_persister_t *p)
{
    size_t gap = CN_WAL_BLOCK - (size_t)((p->next_lsn - p->seg_start) % CN_WAL_BLOCK);
    uint8_t *pad;
    int rc;

    if (gap == CN_WAL_BLOCK)
        return 0;
    if (gap < CN_WAL_FRAME_HEADER)
        gap += CN_WAL_BLOCK;
    if (gap > segment_room(p))
        return roll(p);
    if (!(pad = malloc(gap)))
        return -ENOMEM;
    cn__wal_frame_encode_pad(pad, p->next_lsn, p->next_lsn, gap);
    rc = write_blocks(p, pad, gap);
    free(pad);
    if (rc)
        return rc;
    p->next_lsn += gap;
    return 0;
}

int
cn__persist_open(cn_shm_t *shm, const cn_persist_config_t *cfg, cn_persister_t **out, char *err,
                 size_t errlen)
{
    cn_persister_t *p = calloc(1, sizeof(*p));
    char lmdb_dir[1040];
    cn_wal_recovery_t rep;
    recovery_t r = {0};
    int rc;

    if (!p)
        return -ENOMEM;
    p->shm = shm;
    p->cfg = *cfg;
    p->seg_fd = -1;
    p->epoch = shm->hdr->epoch;
    snprintf(p->data_dir, sizeof(p->data_dir), "%s", cfg->data_dir);
    snprintf(p->wal_dir, sizeof(p->wal_dir), "%s/wal", cfg->data_dir);
    snprintf(lmdb_dir, sizeof(lmdb_dir), "%s/lmdb", cfg->data_dir);
    p->cfg.data_dir = p->data_dir;
    p->direct = cfg->wal_direct;
    if (p->direct && (cfg->segment_size % CN_WAL_BLOCK || cfg->segment_size < 4 * CN_WAL_BLOCK)) {
        cn_log_warn("WAL segments of %llu bytes are not whole blocks: the WAL is written "
                    "with buffered writes + fdatasync",
                    (unsigned long long)cfg->segment_size);
        p->direct = 0;
    }

    if ((rc = cn__store_open_flags(lmdb_dir, cfg->map_size, CN_STORE_NOSYNC, &p->store))) {
        snprintf(err, errlen, "cannot open the store in '%s': %s", lmdb_dir, cn_strerror(rc));
        goto fail;
    }
    if ((rc = cn__store_meta_get(p->store, &p->meta))) {
        snprintf(err, errlen, "the store's WAL position is unreadable: %s", cn_strerror(rc));
        goto fail;
    }
    /* A store that has applied WAL frames needs its WAL: recreating a deleted directory
     * would start silently without the records past the last checkpoint. */
    if (p->meta.applied_lsn > 0 && access(p->wal_dir, F_OK) != 0) {
        rc = errno == ENOENT ? CN_ECORRUPT : -errno;
        snprintf(err, errlen,
                 "the WAL directory '%s' is missing (%s), but the store has applied WAL "
                 "records up to LSN %llu: acknowledged records may be lost; restore the "
                 "directory, or start with a fresh --data-dir",
                 p->wal_dir, strerror(errno), (unsigned long long)p->meta.applied_lsn);
        goto fail;
    }
    if ((rc = cn__wal_mkdir(p->wal_dir))) {
        snprintf(err, errlen, "cannot create '%s': %s", p->wal_dir, cn_strerror(rc));
        goto fail;
    }

    r.p = p;
    r.meta = p->meta;
    /* One batch is one write: after a crash its pages may be on disk in any order. A
     * direct-mode write runs up to two blocks past its batch (its PAD). */
    rc = cn__wal_recover(p->wal_dir, cfg->segment_size, p->meta.applied_lsn,
                         cfg->batch_max_bytes + 2 * CN_WAL_BLOCK, recovery_frame, &r, &rep);
    if (rc == 0)
        rc = recovery_flush(&r);
    free(r.buf);
    free(r.offs);
    free(r.lens);
    if (rc) {
        snprintf(err, errlen, "WAL recovery in '%s' failed: %s%s%s%s", p->wal_dir,
                 cn_strerror(rc), rep.message[0] ? ": " : "", rep.message,
                 rc == CN_ECORRUPT ? "; the server does not start on damaged data (restore "
                                     "the data dir from a backup)"
                                   : "");
        goto fail;
    }
    if (rep.cut_bytes)
        cn_log_warn("WAL: %s", rep.message);
    if (r.applied)
        cn_log_info("WAL recovery applied %llu records (up to LSN %llu)",
                    (unsigned long long)r.applied, (unsigned long long)rep.end_lsn);
    atomic_store(&shm->hdr->persist.recovered_records, r.applied);
    atomic_store(&shm->hdr->events.committed_seq, p->meta.event_seq);
    if (p->meta.epoch != p->epoch) {
        p->meta.epoch = p->epoch;
        memset(p->meta.seqs, 0, sizeof(p->meta.seqs));
    }
    if ((rc = checkpoint(p))) {
        snprintf(err, errlen, "cannot sync the store: %s", cn_strerror(rc));
        goto fail;
    }
    if ((rc = open_segment(p, rep.end_lsn))) {
        snprintf(err, errlen, "cannot open a WAL segment in '%s': %s", p->wal_dir,
                 cn_strerror(rc));
        goto fail;
    }
    if (p->direct && (rc = align_start(p))) {
        snprintf(err, errlen, "cannot write to the WAL in '%s': %s", p->wal_dir,
                 cn_strerror(rc));
        goto fail;
    }
    atomic_store(&shm->hdr->persist.applied_lsn, p->meta.applied_lsn);
    for (unsigned w = 0; w < shm->hdr->nworkers; w++)
        p->cursor[w] = atomic_load(&cn__shm_ring(shm, w)->tail);
    p->last_sweep_ms = cn__clock_mono_ms();
    *out = p;
    return 0;

fail:
    cn__persist_close(p);
    return rc;
}

void
cn__persist_close(cn_persister_t *p)
{
    if (!p)
        return;
    prealloc_join(p);
    if (p->seg_fd >= 0)
        close(p->seg_fd);
    /* Unsynced commits are safe in the WAL; syncing here makes a clean restart skip
     * replaying them. */
    if (p->store && !p->b.active && cn__store_sync(p->store))
        cn_log_warn("the store could not be synced at close; the WAL still has it");
    cn__store_close(p->store);
    free(p->b.buf);
    free(p->b.recs);
    free(p->items);
    free(p);
}

/* ---- batches ---- */

static int
batch_reserve(batch_t *b, size_t more)
{
    if (b->len + more > b->cap) {
        size_t cap = b->cap ? b->cap : 65536;
        uint8_t *nb;
        while (cap < b->len + more)
            cap *= 2;
        /* Block-aligned, so that direct mode writes it as it is. */
        if (posix_memalign((void **)&nb, CN_WAL_BLOCK, cap))
            return -ENOMEM;
        if (b->len)
            memcpy(nb, b->buf, b->len);
        free(b->buf);
        b->buf = nb;
        b->cap = cap;
    }
    if (b->nrec == b->reccap) {
        size_t cap = b->reccap ? b->reccap * 2 : 256;
        rec_t *nr = realloc(b->recs, cap * sizeof(*nr));
        if (!nr)
            return -ENOMEM;
        b->recs = nr;
        b->reccap = cap;
    }
    return 0;
}

/* Seals the current segment and moves to the next one. */
static int
roll(cn_persister_t *p)
{
    uint8_t seal[CN_WAL_FRAME_HEADER];
    uint64_t next = p->seg_start + p->cfg.segment_size;
    int rc;

    cn__wal_frame_encode(seal, p->next_lsn, CN_WAL_SEAL, NULL, 0);
    if (p->direct) {
        if ((rc = write_blocks(p, seal, sizeof(seal))))
            return rc;
    } else {
        ssize_t n = pwrite(p->seg_fd, seal, sizeof(seal), (off_t)(p->next_lsn - p->seg_start));

        if (n < 0)
            return -errno;
        if (n != (ssize_t)sizeof(seal))
            return -EIO;
        if (fdatasync(p->seg_fd))
            return -errno;
    }
    if ((rc = open_segment(p, next)))
        return rc;
    p->need_roll = 0;
    return 0;
}

int
cn__persist_pending(const cn_persister_t *p)
{
    return p->b.active;
}

/* Fails one ring record that can never be written (too big for a segment). */
static void
fail_record(cn_persister_t *p, unsigned w, const cn_ring_record_t *rec)
{
    cn_log_error("a record of %u bytes from worker %u does not fit a WAL segment; its "
                 "request is answered 503", rec->len, w);
    cn__ring_fail_err(cn__shm_ring(p->shm, w), rec->seq, CN_ETOOBIG);
    atomic_fetch_add(&p->shm->hdr->persist.records_failed, 1);
}

int
cn__persist_gather(cn_persister_t *p, cn_persist_io_t *io)
{
    batch_t *b = &p->b;
    unsigned n = p->shm->hdr->nworkers;
    uint64_t room = segment_room(p), whole = p->cfg.segment_size - 2 * CN_WAL_FRAME_HEADER;
    int full = 0;

    /* Direct mode: a record alone, padded (at most a block and a header more), must fit a
     * fresh segment's room. */
    if (p->direct)
        whole = p->cfg.segment_size - 2 * CN_WAL_BLOCK - CN_WAL_FRAME_HEADER;
    if (b->active)
        return -EBUSY;
    b->len = 0;
    b->nrec = 0;
    b->touched = 0;
    b->dups = 0;
    for (unsigned k = 0; k < n && !full; k++) {
        unsigned w = (p->first_ring + k) % n;
        cn_ring_t *ring = cn__shm_ring(p->shm, w);
        uint64_t tail = atomic_load_explicit(&ring->tail, memory_order_acquire);
        cn_ring_record_t rec;
        int rc;

        if (p->cursor[w] < tail)
            p->cursor[w] = tail;
        for (;;) {
            uint64_t cur = p->cursor[w];
            size_t fsize;

            if ((rc = cn__ring_next(ring, &cur, &rec)) <= 0) {
                if (rc < 0)
                    cn_log_error("worker %u's ring holds bytes that are not a record at %llu",
                                 w, (unsigned long long)p->cursor[w]);
                break;
            }
            if (p->meta.epoch == p->epoch && rec.seq <= p->meta.seqs[w]) {
                b->dups++; /* applied by an earlier incarnation of the persister */
            } else {
                fsize = cn__wal_frame_size(CN_PERSIST_WAL_HEADER + (size_t)rec.len);
                if (fsize > whole) {
                    fail_record(p, w, &rec);
                } else if (padded_len(p, b->len + fsize) > room) {
                    p->need_roll = 1;
                    full = 1;
                    break;
                } else if (b->len && (b->len + fsize > p->cfg.batch_max_bytes ||
                                      b->len + (p->direct ? fsize : 0) >
                                          CN_WAL_BATCH_SPAN_MAX)) {
                    full = 1;
                    break;
                } else {
                    uint8_t *frame;
                    int rr = batch_reserve(b, fsize + CN_PERSIST_WAL_HEADER + rec.len);
                    if (rr)
                        return rr;
                    /* The payload is built in place after the frame header. */
                    frame = b->buf + b->len;
                    uint8_t *pl = frame + CN_WAL_FRAME_HEADER;
                    cn__format_wal_header_encode(pl, p->epoch, rec.seq, (uint16_t)w, rec.len);
                    memcpy(pl + CN_PERSIST_WAL_HEADER, rec.payload, rec.len);
                    /* Each frame names the start of its write: recovery then tells a
                     * torn last write from damage followed by later writes. */
                    cn__wal_frame_encode_batch(frame, p->next_lsn + b->len, p->next_lsn, pl,
                                               CN_PERSIST_WAL_HEADER + (size_t)rec.len);
                    b->recs[b->nrec++] = (rec_t){(uint16_t)w, rec.seq,
                                                 b->len + CN_WAL_FRAME_HEADER,
                                                 (uint32_t)(CN_PERSIST_WAL_HEADER + rec.len)};
                    b->len += fsize;
                }
            }
            p->cursor[w] = cur;
            b->upto[w] = rec.end;
            b->acked[w] = rec.seq;
            b->touched |= 1ull << w;
        }
    }
    p->first_ring = (p->first_ring + 1) % n;
    if (!b->touched && p->need_roll) {
        /* The first waiting record needs the next segment: move on now, not at the next
         * idle tick, and gather again (the record fits a fresh segment). */
        int rc = roll(p);
        if (rc)
            return rc;
        return cn__persist_gather(p, io);
    }
    if (!b->touched)
        return 0;
    if (p->direct && b->len) {
        /* The batch ends on a block boundary: a PAD frame, part of its write, fills the
         * rest of its last block. */
        size_t end = padded_len(p, b->len);
        int rc;

        if (end > b->len) {
            if ((rc = batch_reserve(b, end - b->len)))
                return rc;
            cn__wal_frame_encode_pad(b->buf + b->len, p->next_lsn + b->len, p->next_lsn,
                                     end - b->len);
            b->len = end;
        }
    }
    b->active = 1;
    b->lsn_start = p->next_lsn;
    b->lsn_end = p->next_lsn + b->len;
    if (!b->len)
        return 0;
    *io = (cn_persist_io_t){p->seg_fd, b->buf, b->len, p->next_lsn - p->seg_start, p->direct};
    return 1;
}

static void
observe(_Atomic uint64_t *buckets, int nb, const uint64_t *bounds, uint64_t v)
{
    int i = 0;

    while (i < nb - 1 && v > bounds[i])
        i++;
    atomic_fetch_add_explicit(&buckets[i], 1, memory_order_relaxed);
}

/* Makes the gathered batch durable-never-applied: its bytes in the WAL (synced, or maybe
 * partly on disk after a failed write or fdatasync) are overwritten with zeros and synced
 * again, and the next batch is written at the same place (gather refuses while a batch
 * is pending, so the failed batch is always the last thing in the WAL; the next write
 * starts only after this one was decided). Zeros past the end are exactly
 * what recovery already takes as the end of the log, so no record of the batch can ever
 * be replayed, and overwriting blocks of a preallocated segment needs no new disk space
 * (this runs when the disk is full). A crash part way leaves a partly zeroed last write,
 * which recovery treats as a torn last write; the failure is reported to nobody before
 * the zeros are synced, so the requests are still waiting then and the restarted
 * persister acknowledges what recovery applied. Returns 0 or a negative errno. */
static int
unwrite_batch(cn_persister_t *p)
{
    batch_t *b = &p->b;
    cn_persist_io_t io = {p->seg_fd, b->buf, b->len, b->lsn_start - p->seg_start, p->direct};

    if (!b->len)
        return 0;
    /* The items point into the buffer; they are not used past this point. */
    memset(b->buf, 0, b->len);
    return cn__persist_write_sync(&io);
}

int
cn__persist_done(cn_persister_t *p, int io_result, uint64_t sync_us, uint64_t *wake)
{
    static const uint64_t sync_bounds[] = CN_SHM_SYNC_BOUNDS_US;
    static const uint64_t batch_bounds[] = CN_SHM_BATCH_BOUNDS;
    cn_shm_persist_t *st = &p->shm->hdr->persist;
    batch_t *b = &p->b;
    cn_store_meta_t meta = p->meta;
    int rc = 0, stop = 0, urc;

    *wake = 0;
    if (!b->active)
        return 0;
    if (b->nrec && io_result == 0) {
        if ((rc = grow_items(p, b->nrec)))
            return rc;
        if (meta.epoch != p->epoch) {
            meta.epoch = p->epoch;
            memset(meta.seqs, 0, sizeof(meta.seqs));
        }
        for (size_t i = 0; i < b->nrec; i++) {
            cn_wal_payload_t h = {0}; /* stays empty, so the item reads as corrupt */
            cn__format_wal_payload_decode(b->buf + b->recs[i].off, b->recs[i].len, &h);
            fill_item(&p->items[i], &h);
            if (b->recs[i].seq > meta.seqs[b->recs[i].worker])
                meta.seqs[b->recs[i].worker] = b->recs[i].seq;
        }
        meta.applied_lsn = b->lsn_end;
        rc = cn__store_apply(p->store, p->items, b->nrec, &meta);
        if (rc) {
            /* A full disk or map passes, and the environment is intact: go on serving.
             * Anything else (an I/O error, an LMDB panic) restarts the persister, which
             * opens the store afresh. */
            stop = rc != -ENOSPC && rc != -EDQUOT && rc != CN_EMAPFULL;
            cn_log_error("applying %zu records to LMDB failed: %s; their requests get 503 "
                         "and the records are erased from the WAL%s",
                         b->nrec, cn_strerror(rc), stop ? "; the persister restarts" : "");
        } else {
            if (meta.event_seq != p->meta.event_seq)
                publish_events(p, meta.event_seq - p->meta.event_seq, meta.event_seq);
            p->meta = meta;
            p->next_lsn = b->lsn_end;
            p->since_checkpoint += b->len;
            atomic_fetch_add(&st->batches, 1);
            atomic_fetch_add(&st->records, b->nrec);
            atomic_fetch_add(&st->wal_bytes, b->len);
            atomic_fetch_add(&st->sync_us_sum, sync_us);
            observe(st->sync_buckets, CN_SHM_SYNC_BUCKETS, sync_bounds, sync_us);
            observe(st->batch_buckets, CN_SHM_BATCH_BUCKETS, batch_bounds, b->nrec);
            atomic_store(&st->applied_lsn, p->meta.applied_lsn);
        }
    } else if (b->nrec) {
        cn_log_error("writing %zu records to the WAL failed: %s; their requests get 503, the "
                     "records are erased from the WAL and the persister restarts",
                     b->nrec, cn_strerror(io_result));
        rc = io_result;
        stop = 1;
    }
    if (rc && (urc = unwrite_batch(p))) {
        /* The records may still be on disk: nobody hears of a failure, nothing is acked.
         * The persister restarts; its recovery applies what the WAL holds, and the
         * records still in the rings are acked as stored or written again. */
        cn_log_error("erasing the failed batch at LSN %llu from the WAL failed: %s; the "
                     "persister restarts and its recovery decides these records",
                     (unsigned long long)b->lsn_start, cn_strerror(urc));
        b->active = 0;
        return urc;
    }
    for (size_t i = 0; i < b->nrec; i++) {
        if (rc || p->items[i].status) {
            cn__ring_fail_err(cn__shm_ring(p->shm, b->recs[i].worker), b->recs[i].seq,
                              rc ? rc : p->items[i].status);
            if (!rc && p->items[i].status == CN_ECONFLICT)
                atomic_fetch_add(&st->stream_conflicts, 1);
            else
                atomic_fetch_add(&st->records_failed, 1);
        }
    }
    if (b->dups)
        atomic_fetch_add(&st->duplicates_skipped, b->dups);
    for (unsigned w = 0; w < p->shm->hdr->nworkers; w++) {
        if (b->touched & (1ull << w))
            cn__ring_ack(cn__shm_ring(p->shm, w), b->upto[w], b->acked[w]);
    }
    *wake = b->touched;
    b->active = 0;
    return stop ? rc : 0;
}

int
cn__persist_maintain(cn_persister_t *p)
{
    uint64_t now = cn__clock_mono_ms();
    int rc;

    if (p->b.active)
        return 0;
    if (p->need_roll || segment_room(p) < 4096) {
        if ((rc = roll(p))) {
            cn_log_error("cannot move to a new WAL segment: %s", cn_strerror(rc));
            return rc;
        }
    }
    if (p->since_checkpoint >= p->cfg.checkpoint_bytes ||
        (p->since_checkpoint && now - p->last_checkpoint_ms >= CHECKPOINT_INTERVAL_MS)) {
        if ((rc = checkpoint(p))) {
            cn_log_error("checkpoint failed: %s", cn_strerror(rc));
            return rc;
        }
    }
    if (now - p->last_sweep_ms >= p->cfg.sweep_interval_ms) {
        uint64_t wall = cn__clock_wall_ms();
        p->last_sweep_ms = now;
        for (int i = 0; i < SWEEP_ROUNDS; i++) {
            size_t deleted = 0;
            uint64_t min_created = p->cfg.events_retain_ms && wall > p->cfg.events_retain_ms
                                       ? wall - p->cfg.events_retain_ms
                                       : 0;
            if ((rc = cn__store_events_prune(p->store, p->cfg.events_retain, min_created,
                                             SWEEP_BATCH, &deleted))) {
                cn_log_warn("event retention prune failed: %s", cn_strerror(rc));
                break;
            }
            if (deleted < SWEEP_BATCH)
                break;
        }
        size_t swept = 0;
        if ((rc = cn__store_sweep_all(p->store, wall, SWEEP_BATCH, SWEEP_ROUNDS, &swept)))
            cn_log_warn("expiry sweep failed: %s", cn_strerror(rc));
        if (swept)
            cn_log_debug("expiry sweep removed %zu stored responses", swept);
    }
    return 0;
}

int
cn__persist_direct(const cn_persister_t *p)
{
    return p->direct;
}

int
cn__persist_write_sync(const cn_persist_io_t *io)
{
    const uint8_t *p = io->buf;
    size_t left = io->len;
    uint64_t off = io->offset;

    while (left && io->dsync) {
        struct iovec iov = {(void *)p, left};
        ssize_t n = pwritev2(io->fd, &iov, 1, (off_t)off, RWF_DSYNC);

        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (n == 0)
            return -EIO;
        p += n;
        off += (uint64_t)n;
        left -= (size_t)n;
    }
    if (io->dsync)
        return 0; /* each write returned once its bytes were durable */
    while (left) {
        ssize_t n = pwrite(io->fd, p, left, (off_t)off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        p += n;
        off += (uint64_t)n;
        left -= (size_t)n;
    }
    return fdatasync(io->fd) ? -errno : 0;
}
