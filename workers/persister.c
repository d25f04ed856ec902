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
#include "store/persist.h"
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
wake_workers(loop_t *l, uint64_t mask)
{
    uint64_t one = 1;

    for (unsigned w = 0; mask && w < l->app->shm.hdr->nworkers; w++) {
        if ((mask & (1ull << w)) && write(l->app->ack_efd[w], &one, sizeof(one)) < 0 &&
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

    wake_workers(l, wake);
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
