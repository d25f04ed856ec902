/*
 * workers/persister.c - the persister process (cn-persister): the only LMDB writer.
 *
 * Recovery first (store/persist.c replays the WAL after the store's applied LSN), then
 * the ready report, then one loop: gather what waits in the worker rings into a batch,
 * submit its write linked to an fdatasync through io_uring, and on completion apply it
 * to LMDB and ack the rings (waking the workers through their eventfds). The wait covers
 * three sources in one io_uring: the batch's fdatasync, the persister's eventfd (a worker
 * pushed records) and a signalfd (SIGTERM/SIGINT). Records that arrive while a batch
 * syncs wait in the rings and form the next batch: that is the group commit. Workers
 * write the eventfd only after the persister announced it is going idle (go_idle), so a
 * busy persister is not woken once per record.
 *
 * That is --wal-io uring. The default, --wal-io pwrite, runs the same loop with poll(),
 * pwrite and fdatasync: measured on ext4 (bench/wal_io, bench/run), io_uring hands
 * buffered writes and fsyncs to kernel worker threads, which costs a thread hop per
 * batch, and the persister has nothing else to do while a batch syncs (new records wait
 * in the rings either way), so the plain pair is cheaper. uring also falls back to it
 * where io_uring is not allowed (seccomp, old kernels). --wal-io direct and uring-direct
 * run the same loops with batches the engine lays out for O_DIRECT (io->dsync): one
 * RWF_DSYNC write (pwritev2, or one SQE) and no fdatasync. On SIGTERM the loop drains the
 * rings, checkpoints and exits 0.
 *
 * With a shared store (--store postgresql://...) there is no WAL and no LMDB: the workers
 * commit to the database themselves, and this process is the host's listener and
 * housekeeper (run_shared): it LISTENs for ended claims (waking the workers that have
 * requests parked on another host's claim) and for new events (waking the broadcaster),
 * and runs the expiry sweep and the event pruning in bounded batches.
 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "app/app_internal.h"
#include "cnerium/error.h"
#include "shm/commits.h"
#include "store/persist.h"
#include "store/pg.h"
#include "store/uring.h"
#include "support/clock.h"
#include "support/log.h"

#define TAG_BATCH 1
#define TAG_WAKE 2
#define TAG_SIGNAL 3
#define IDLE_TICK_MS 500
#define BATCH_MAX_BYTES ((size_t)4 << 20)
#define CHECKPOINT_BYTES ((uint64_t)16 << 20)
#define PERSIST_NICE -10

typedef struct loop {
    cn_app_t *app;
    cn_persister_t *p;
    cn_uring_t *u; /* NULL: plain I/O */
    int sfd;
    uint64_t efd_value;
    struct signalfd_siginfo si;
    int stopping;
    int in_flight; /* a batch's write + fdatasync is submitted */
    uint64_t t0_us;
} loop_t;

static void
wake_workers(cn_app_t *app, uint64_t mask)
{
    uint64_t one = 1;

    for (unsigned w = 0; mask && w < app->shm.hdr->nworkers; w++) {
        if ((mask & (1ull << w)) && write(app->ack_efd[w], &one, sizeof(one)) < 0 &&
            errno != EAGAIN)
            cn_log_warn("waking worker %u: %s", w, strerror(errno));
    }
}

/* Finishes the batch whose I/O returned res. Returns 0, or an error to stop with. */
static int
finish(loop_t *l, int res)
{
    uint64_t wake = 0;
    int rc = cn__persist_done(l->p, res, cn__clock_mono_us() - l->t0_us, &wake);

    wake_workers(l->app, wake);
    l->in_flight = 0;
    if (rc)
        return rc;
    return cn__persist_maintain(l->p);
}

/* Gathers and starts the next batch when none is in flight. Returns 0 or an error. */
static int
start_batch(loop_t *l)
{
    cn_persist_io_t io;
    int rc;

    if (l->in_flight)
        return 0;
    rc = cn__persist_gather(l->p, &io);
    if (rc < 0)
        return rc;
    if (rc == 0) {
        /* Nothing to write; skipped duplicates may still want their acks. */
        return cn__persist_pending(l->p) ? finish(l, 0) : 0;
    }
    l->t0_us = cn__clock_mono_us();
    if (l->u) {
        rc = io.dsync ? cn__uring_write_dsync(l->u, io.fd, io.buf, io.len, io.offset, TAG_BATCH)
                      : cn__uring_write_sync(l->u, io.fd, io.buf, io.len, io.offset, TAG_BATCH);
        if (rc)
            return rc;
        l->in_flight = 1;
        return 0;
    }
    l->in_flight = 1;
    return finish(l, cn__persist_write_sync(&io));
}

/* About to wait with nothing in flight: announce it (workers then write the eventfd),
 * and look at the rings once more, since a record pushed before the announcement did not
 * write it. Returns 0 or an error. */
static int
go_idle(loop_t *l)
{
    int rc;

    atomic_store_explicit(&l->app->shm.hdr->persister_idle, 1, memory_order_relaxed);
    atomic_thread_fence(memory_order_seq_cst);
    rc = start_batch(l);
    if (l->in_flight)
        atomic_store_explicit(&l->app->shm.hdr->persister_idle, 0, memory_order_relaxed);
    return rc;
}

static void
busy(loop_t *l)
{
    atomic_store_explicit(&l->app->shm.hdr->persister_idle, 0, memory_order_relaxed);
}

static int
run_uring(loop_t *l)
{
    int rc;

    if ((rc = cn__uring_read(l->u, l->app->persist_efd, &l->efd_value, sizeof(l->efd_value),
                             TAG_WAKE)) ||
        (rc = cn__uring_read(l->u, l->sfd, &l->si, sizeof(l->si), TAG_SIGNAL)))
        return rc;
    for (;;) {
        uint64_t tag;
        int res;

        if ((rc = start_batch(l)))
            return rc;
        if (l->stopping && !l->in_flight && !cn__persist_pending(l->p))
            return 0;
        if (!l->in_flight && (rc = go_idle(l)))
            return rc;
        rc = cn__uring_wait(l->u, l->stopping ? 50 : IDLE_TICK_MS, &tag, &res);
        busy(l);
        if (rc < 0)
            return rc;
        if (rc == 0) {
            if (l->stopping && !l->in_flight)
                return 0; /* nothing arrived within the grace tick: drained */
            if (!l->in_flight && (rc = cn__persist_maintain(l->p)))
                return rc;
            continue;
        }
        if (tag == TAG_BATCH) {
            if ((rc = finish(l, res)))
                return rc;
        } else if (tag == TAG_WAKE) {
            if ((rc = cn__uring_read(l->u, l->app->persist_efd, &l->efd_value,
                                     sizeof(l->efd_value), TAG_WAKE)))
                return rc;
        } else if (tag == TAG_SIGNAL) {
            l->stopping = 1;
        }
    }
}

static int
run_plain(loop_t *l)
{
    for (;;) {
        struct pollfd pf[2] = {{l->app->persist_efd, POLLIN, 0}, {l->sfd, POLLIN, 0}};
        int rc, n;

        if ((rc = start_batch(l)) || (rc = go_idle(l)))
            return rc;
        n = poll(pf, 2, l->stopping ? 50 : IDLE_TICK_MS);
        busy(l);
        if (n < 0 && errno != EINTR)
            return -errno;
        if (pf[0].revents & POLLIN) {
            uint64_t v;
            if (read(l->app->persist_efd, &v, sizeof(v)) < 0 && errno != EAGAIN)
                return -errno;
        }
        if (pf[1].revents & POLLIN) {
            if (read(l->sfd, &l->si, sizeof(l->si)) > 0)
                l->stopping = 1;
        }
        if (n == 0) {
            if (l->stopping)
                return 0;
            if ((rc = cn__persist_maintain(l->p)))
                return rc;
        }
    }
}

/* ---- a shared store: notifications and housekeeping ---- */

#define SHARED_RETRY_MS 500
#define SHARED_SWEEP_BATCH 1000
#define SHARED_SWEEP_ROUNDS 16
#define SHARED_CLAIM_GRACE_MS 60000

static void
wake_parked(cn_app_t *app)
{
    uint64_t mask = 0;

    for (unsigned w = 0; w < app->shm.hdr->nworkers; w++)
        if (atomic_load(&app->shm.workers[w].parked))
            mask |= 1ull << w;
    wake_workers(app, mask);
}

/* Events up to position are committed (any host's): the broadcaster loads them. The
 * delivery latency of another host's events is counted from when we heard of them. */
static void
publish_head(cn_app_t *app, uint64_t position, int heard)
{
    cn_shm_events_t *ev = &app->shm.hdr->events;
    uint64_t was = atomic_load(&ev->committed_seq), one = 1;

    if (position <= was)
        return;
    if (heard) {
        cn__shm_commit_publish(&app->shm.hdr->commits, was + 1, position,
                               cn__clock_mono_ns());
        atomic_fetch_add(&ev->committed_total, position - was);
    }
    atomic_store_explicit(&ev->committed_seq, position, memory_order_release);
    if (app->broadcast_efd >= 0 && write(app->broadcast_efd, &one, sizeof(one)) < 0 &&
        errno != EAGAIN)
        cn_log_warn("waking the broadcaster: %s", strerror(errno));
}

/* The newest event position in the database, published (at start and after a
 * reconnect: notifications sent meanwhile are lost). */
static int
publish_newest(cn_app_t *app, cn_pg_t *pg, char *err, size_t errlen)
{
    uint64_t oldest = 0, newest = 0;
    int rc = cn__pg_events_bounds(pg, &oldest, &newest, err, errlen);

    if (rc == 0)
        publish_head(app, newest, 0);
    return rc;
}

/* Connects (again) and listens on both channels. Returns 0 or CN_ESTORE. */
static int
shared_listen(cn_app_t *app, cn_pg_t **pg, char *err, size_t errlen)
{
    int rc;

    if (!*pg)
        rc = cn__pg_open(app->cfg.store, pg, err, errlen);
    else
        rc = cn__pg_reset(*pg, err, errlen);
    if (rc == 0 && !(rc = cn__pg_listen(*pg, CN_PG_DONE_CHANNEL, err, errlen)) &&
        !(rc = cn__pg_listen(*pg, CN_PG_EVENTS_CHANNEL, err, errlen)))
        rc = publish_newest(app, *pg, err, errlen);
    return rc;
}

static void
shared_sweep(cn_app_t *app, cn_pg_t *pg)
{
    const cn_config_t *cfg = &app->cfg;
    uint64_t now = cn__clock_wall_ms();
    size_t deleted = 0, total = 0;
    char err[256];
    int rc = 0;

    for (unsigned r = 0; r < SHARED_SWEEP_ROUNDS; r++) {
        if ((rc = cn__pg_sweep(pg, (int64_t)now, SHARED_SWEEP_BATCH, SHARED_CLAIM_GRACE_MS,
                               &deleted, err, sizeof(err))))
            break;
        total += deleted;
        if (deleted < SHARED_SWEEP_BATCH)
            break;
    }
    if (rc == 0 && (cfg->events_retain || cfg->events_retain_s)) {
        uint64_t min_created = (uint64_t)cfg->events_retain_s * 1000u;
        min_created = cfg->events_retain_s && now > min_created ? now - min_created : 0;
        rc = cn__pg_events_prune(pg, cfg->events_retain, min_created, SHARED_SWEEP_BATCH,
                                 &deleted, err, sizeof(err));
    }
    if (rc)
        cn_log_warn("the shared store's sweep failed: %s", err);
    else if (total)
        cn_log_debug("expiry sweep removed %zu stored responses", total);
}

static int
run_shared(cn_app_t *app, void (*on_ready)(void *arg), void *ready_arg)
{
    uint64_t next_sweep = cn__clock_mono_ms() + app->cfg.sweep_interval_ms;
    cn_pg_t *pg = NULL;
    sigset_t stop;
    char err[512];
    int sfd, up, stopping = 0;

    sigemptyset(&stop);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGINT);
    if ((sfd = signalfd(-1, &stop, SFD_CLOEXEC)) < 0) {
        fprintf(stderr, "cnerium: persister signalfd: %s\n", strerror(errno));
        return 1;
    }
    up = shared_listen(app, &pg, err, sizeof(err)) == 0;
    if (!up)
        cn_log_error("listening to the shared store: %s; retrying", err);
    atomic_store(&app->shm.hdr->persist.pid, (int32_t)getpid());
    if (on_ready)
        on_ready(ready_arg);

    while (!stopping) {
        struct pollfd pf[2] = {{sfd, POLLIN, 0}, {up ? cn__pg_fd(pg) : -1, POLLIN, 0}};
        uint64_t now = cn__clock_mono_ms();
        int timeout = !up ? SHARED_RETRY_MS
                      : next_sweep > now ? (int)(next_sweep - now) : 0;
        int woke_parked = 0, rc;
        uint64_t head = 0;

        if (poll(pf, 2, timeout) < 0 && errno != EINTR)
            break;
        if (pf[0].revents & POLLIN) {
            struct signalfd_siginfo si;
            if (read(sfd, &si, sizeof(si)) > 0)
                stopping = 1;
        }
        if (!up) {
            if ((up = shared_listen(app, &pg, err, sizeof(err)) == 0)) {
                /* Notifications sent while we were away are lost: the parked ask again
                 * (the newest event was published by shared_listen). */
                cn_log_info("listening to the shared store again");
                wake_parked(app);
            }
            continue;
        }
        for (;;) {
            char channel[64], payload[32];
            rc = cn__pg_wait_notify(pg, 0, channel, sizeof(channel), payload,
                                    sizeof(payload), err, sizeof(err));
            if (rc)
                break;
            if (!strcmp(channel, CN_PG_DONE_CHANNEL))
                woke_parked = 1;
            else if (!strcmp(channel, CN_PG_EVENTS_CHANNEL))
                head = strtoull(payload, NULL, 10) > head ? strtoull(payload, NULL, 10) : head;
        }
        if (woke_parked)
            wake_parked(app);
        if (head)
            publish_head(app, head, 1);
        if (rc == CN_ESTORE) {
            cn_log_error("the shared store's connection failed: %s; reconnecting", err);
            up = 0;
            continue;
        }
        if (cn__clock_mono_ms() >= next_sweep) {
            shared_sweep(app, pg);
            next_sweep = cn__clock_mono_ms() + app->cfg.sweep_interval_ms;
            up = cn__pg_connected(pg);
        }
    }
    atomic_store(&app->shm.hdr->persist.pid, 0);
    cn__pg_close(pg);
    close(sfd);
    return 0;
}

int
cn__persister_run(cn_app_t *app, void (*on_ready)(void *arg), void *ready_arg)
{
    const cn_config_t *cfg = &app->cfg;
    cn_persist_config_t pc = {
        .data_dir = cfg->data_dir,
        .map_size = CN_APP_STORE_MAP_SIZE,
        .segment_size = CN_APP_WAL_SEGMENT_BYTES,
        .batch_max_bytes = BATCH_MAX_BYTES,
        .sweep_interval_ms = cfg->sweep_interval_ms,
        .checkpoint_bytes = CHECKPOINT_BYTES,
        .events_retain = cfg->events_retain,
        .events_retain_ms = (uint64_t)cfg->events_retain_s * 1000u,
        .broadcast_efd = app->broadcast_efd,
        .wal_direct = cfg->wal_io == CN_WAL_IO_DIRECT || cfg->wal_io == CN_WAL_IO_URING_DIRECT,
    };
    int uring = cfg->wal_io == CN_WAL_IO_URING || cfg->wal_io == CN_WAL_IO_URING_DIRECT;
    loop_t l = {.app = app, .sfd = -1};
    sigset_t stop;
    char err[1024];
    int rc;

    if (cn_config_store_is_pg(cfg))
        return run_shared(app, on_ready, ready_arg);
    /* A thread woken from fdatasync on a busy machine can wait a scheduler tick: the
     * persister gets a higher priority where that is permitted, and quietly keeps the
     * default where it is not. */
    if (setpriority(PRIO_PROCESS, 0, PERSIST_NICE) == 0)
        cn_log_debug("persister runs at nice %d", PERSIST_NICE);

    rc = cn__persist_open(&app->shm, &pc, &l.p, err, sizeof(err));
    if (rc) {
        /* Exit 2 (do not respawn, stop the server): conditions a restart cannot fix,
         * damaged data above all; starting anyway would lose acknowledged records. */
        fprintf(stderr, "cnerium: %s\n", err);
        return rc == -EACCES || rc == -EROFS || rc == -ENOSPC || rc == CN_EMAPFULL ||
                       rc == CN_ECORRUPT || rc == CN_EVERSION
                   ? 2
                   : 1;
    }
    sigemptyset(&stop);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGINT);
    if ((l.sfd = signalfd(-1, &stop, SFD_CLOEXEC)) < 0) {
        fprintf(stderr, "cnerium: persister signalfd: %s\n", strerror(errno));
        cn__persist_close(l.p);
        return 1;
    }
    if (uring && (rc = cn__uring_open(16, &l.u))) {
        cn_log_warn("io_uring unavailable (%s): the WAL is written with %s", cn_strerror(rc),
                    cn__persist_direct(l.p) ? "pwritev2 (O_DIRECT, RWF_DSYNC)"
                                            : "pwrite + fdatasync");
        l.u = NULL;
    }
    cn_log_debug("the WAL is written with %s%s", l.u ? "io_uring: " : "",
                 cn__persist_direct(l.p) ? "O_DIRECT writes with RWF_DSYNC"
                                         : "buffered writes + fdatasync");
    atomic_store(&app->shm.hdr->persist.pid, (int32_t)getpid());
    if (on_ready)
        on_ready(ready_arg);

    rc = l.u ? run_uring(&l) : run_plain(&l);
    if (rc)
        cn_log_error("persister stops: %s", cn_strerror(rc));

    atomic_store(&app->shm.hdr->persist.pid, 0);
    cn__uring_close(l.u);
    close(l.sfd);
    cn__persist_close(l.p);
    return rc ? 1 : 0;
}
