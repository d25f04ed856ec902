/*
 * workers/http_worker.c - one HTTP worker: its own LMDB environment (for lookups), its
 * committer (the record ring to the persister; in --single-process mode, synced LMDB
 * commits and the expiry sweep), its event loops, and the drain on SIGTERM/SIGINT.
 *
 * An event loop is one thread with one epoll that owns everything it waits on: a
 * libmicrohttpd server in external-epoll mode on the inherited listening socket, and, in
 * the first loop, the worker's wake eventfd, which the persister writes after acking this
 * worker's records and any worker writes when a claim somebody here waits on ends. A
 * turn reads what woke it, polls the committer (acked records answer their requests),
 * takes parked duplicates back to their decision, then runs libmicrohttpd, which sends
 * those answers in the same turn and reads, dispatches and answers whatever else is
 * ready. --threads N runs N loops, each with its own server on the same socket. Every
 * loop watches the wake eventfd, exclusively (EPOLLEXCLUSIVE: the kernel wakes one loop
 * that is waiting, never one busy in a handler), and whichever loop wakes answers for all
 * of them: another loop's connection is resumed through its server's own eventfd. So a
 * slow handler holds only the connections of its own loop, never the acks or the parked
 * duplicates of the others.
 *
 * Runs in a forked worker process, or in the calling process with --single-process. The
 * caller has blocked SIGTERM and SIGINT in every thread; the worker's main thread takes
 * them with sigwaitinfo, so no signal handler ever runs. Everything opened here is
 * opened after fork: an LMDB environment must not cross a fork.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "app/app_internal.h"
#include "cnerium/error.h"
#include "support/clock.h"
#include "support/log.h"

#define SWEEP_BATCH 1000

/* ---- expiry sweep (its own thread, worker 0) ---- */

static void *
sweep_main(void *arg)
{
    cn_worker_t *w = arg;
    uint32_t interval = w->app->cfg.sweep_interval_ms;
    struct timespec next;

    pthread_mutex_lock(&w->sweep_mu);
    while (!w->sweep_stop) {
        clock_gettime(CLOCK_MONOTONIC, &next);
        next.tv_sec += interval / 1000;
        next.tv_nsec += (long)(interval % 1000) * 1000000L;
        if (next.tv_nsec >= 1000000000L) {
            next.tv_sec++;
            next.tv_nsec -= 1000000000L;
        }
        while (!w->sweep_stop &&
               pthread_cond_timedwait(&w->sweep_cond, &w->sweep_mu, &next) != ETIMEDOUT)
            ;
        if (w->sweep_stop)
            break;
        pthread_mutex_unlock(&w->sweep_mu);
        {
            size_t swept = 0;
            int rc = cn__store_sweep_all(w->store, cn__clock_wall_ms(), SWEEP_BATCH,
                                         UINT32_MAX, &swept);
            if (rc)
                cn_log_warn("expiry sweep failed: %s", cn_strerror(rc));
            if (swept)
                cn_log_debug("expiry sweep removed %zu stored responses", swept);
        }
        pthread_mutex_lock(&w->sweep_mu);
    }
    pthread_mutex_unlock(&w->sweep_mu);
    return NULL;
}

static int
start_sweeper(cn_worker_t *w)
{
    pthread_condattr_t attr;

    pthread_mutex_init(&w->sweep_mu, NULL);
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&w->sweep_cond, &attr);
    pthread_condattr_destroy(&attr);
    w->sweep_stop = 0;
    if (pthread_create(&w->sweeper, NULL, sweep_main, w)) {
        pthread_cond_destroy(&w->sweep_cond);
        pthread_mutex_destroy(&w->sweep_mu);
        return -EAGAIN;
    }
    w->sweeper_started = 1;
    return 0;
}

static void
stop_sweeper(cn_worker_t *w)
{
    if (!w->sweeper_started)
        return;
    pthread_mutex_lock(&w->sweep_mu);
    w->sweep_stop = 1;
    pthread_cond_signal(&w->sweep_cond);
    pthread_mutex_unlock(&w->sweep_mu);
    pthread_join(w->sweeper, NULL);
    w->sweeper_started = 0;
    pthread_cond_destroy(&w->sweep_cond);
    pthread_mutex_destroy(&w->sweep_mu);
}

/* ---- event loops ---- */

enum { CMD_QUIESCE = 1, CMD_STOP = 2 };

/* The earlier of a poll timeout in ms (-1: none) and a monotonic deadline. */
static int
sooner(int timeout, uint64_t deadline_ms, uint64_t now)
{
    uint64_t ms;

    if (deadline_ms == UINT64_MAX)
        return timeout;
    ms = deadline_ms > now ? deadline_ms - now : 0;
    if (ms > INT32_MAX)
        ms = INT32_MAX;
    return timeout < 0 || (int)ms < timeout ? (int)ms : timeout;
}

/* Answers the requests whose commits were decided. Any loop may call it; one polls at a
 * time (the committer's timeout bookkeeping has one poller), and a loop that finds another
 * polling leaves the poll to it rather than wait: the holder polls again before it leaves,
 * so an ack that woke the caller is never left behind. */
static void
poll_committer(cn_worker_t *w)
{
    atomic_store(&w->poll_wanted, 1);
    while (atomic_load(&w->poll_wanted) && pthread_mutex_trylock(&w->poll_mu) == 0) {
        atomic_store(&w->poll_wanted, 0);
        cn__committer_poll(w->committer);
        pthread_mutex_unlock(&w->poll_mu);
    }
}

static void *
loop_main(void *arg)
{
    cn_loop_t *l = arg;
    cn_worker_t *w = l->w;
    int quiesced = 0;

    for (;;) {
        struct epoll_event ev[8];
        unsigned cmd = atomic_load(&w->command);
        int timeout, n, woken = 0;
        uint64_t now;

        if ((cmd & CMD_QUIESCE) && !quiesced) {
            cn__http_quiesce(l->http);
            quiesced = 1;
        }
        if (cmd & CMD_STOP)
            break;
        now = cn__clock_mono_ms();
        timeout = cn__http_timeout_ms(l->http);
        timeout = sooner(timeout, cn__committer_next_deadline_ms(w->committer), now);
        timeout = sooner(timeout, cn__durable_next_wake_ms(&w->durable), now);
        n = epoll_wait(l->epfd, ev, 8, timeout);
        for (int i = 0; i < n; i++) {
            uint64_t v;
            if (ev[i].data.fd == cn__http_fd(l->http))
                continue;
            /* The wake and store eventfds may have been read by another loop since. */
            if (read(ev[i].data.fd, &v, sizeof(v)) == (ssize_t)sizeof(v))
                woken |= ev[i].data.fd == w->wake_fd;
            else if (errno != EAGAIN)
                cn_log_warn("worker %u: reading an eventfd: %s", w->id, strerror(errno));
        }
        poll_committer(w);
        cn__durable_claimed(&w->durable);
        cn__durable_wake(&w->durable, cn__clock_mono_ms(), woken);
        cn__http_run(l->http);
    }
    return NULL;
}

static int
watch(int epfd, int fd, uint32_t flags)
{
    struct epoll_event ev = {.events = EPOLLIN | flags, .data.fd = fd};

    return epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) ? -errno : 0;
}

/* Starts loop i: its server on listen_fd, its epoll, its thread. */
static int
start_loop(cn_worker_t *w, unsigned i, int listen_fd, const cn_http_options_t *opt)
{
    cn_loop_t *l = &w->loops[i];
    int rc;

    l->w = w;
    l->epfd = l->ctl_fd = -1;
    if ((rc = cn__http_start(listen_fd, opt, cn__app_dispatch, w, &l->http)))
        return rc;
    if ((l->epfd = epoll_create1(EPOLL_CLOEXEC)) < 0 ||
        (l->ctl_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0)
        return -errno;
    /* ctl_fd also wakes the loop for replies completed by another loop (acks). */
    cn__http_set_wake_fd(l->http, l->ctl_fd);
    if (w->app->relay)
        cn__http_set_relay(l->http, cn__app_relay_select);
    if ((rc = watch(l->epfd, cn__http_fd(l->http), 0)) || (rc = watch(l->epfd, l->ctl_fd, 0)) ||
        (rc = watch(l->epfd, w->wake_fd, EPOLLEXCLUSIVE)) ||
        (w->store_fd >= 0 && (rc = watch(l->epfd, w->store_fd, EPOLLEXCLUSIVE))))
        return rc;
    if ((rc = pthread_create(&l->thread, NULL, loop_main, l)))
        return -rc;
    l->started = 1;
    return 0;
}

/* Gives every loop a command (CMD_*) and wakes it. */
static void
command(cn_worker_t *w, unsigned cmd)
{
    uint64_t one = 1;

    atomic_fetch_or(&w->command, cmd);
    for (unsigned i = 0; i < w->nloops; i++)
        if (w->loops[i].ctl_fd >= 0 && write(w->loops[i].ctl_fd, &one, sizeof(one)) < 0)
            cn_log_warn("worker %u: waking a loop: %s", w->id, strerror(errno));
}

static void
stop_loops(cn_worker_t *w)
{
    command(w, CMD_STOP);
    for (unsigned i = 0; i < w->nloops; i++) {
        cn_loop_t *l = &w->loops[i];
        if (l->started)
            pthread_join(l->thread, NULL);
        l->started = 0;
    }
}

static void
free_loops(cn_worker_t *w)
{
    for (unsigned i = 0; i < w->nloops; i++) {
        cn_loop_t *l = &w->loops[i];
        cn__http_stop(l->http);
        if (l->epfd >= 0)
            close(l->epfd);
        if (l->ctl_fd >= 0)
            close(l->ctl_fd);
    }
    free(w->loops);
    w->loops = NULL;
    w->nloops = 0;
}

/* ---- a shared store ---- */

/* With --store postgresql://...: the handlers' store reads, the committer and the
 * claimer each get a connection of their own; the claimer and the committer answer
 * through store_fd. Returns 0, or the exit code after saying why. */
static int
open_shared(cn_worker_t *w)
{
    const cn_config_t *cfg = &w->app->cfg;
    char err[512];
    int rc;

    if ((w->store_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0) {
        fprintf(stderr, "cnerium: cannot create an eventfd: %s\n", strerror(errno));
        return 1;
    }
    if ((rc = cn__store_open_pg(cfg->store, &w->store, err, sizeof(err))) ||
        (rc = cn__committer_new_pg(cfg->store, w->store_fd, cfg->commit_timeout_ms,
                                   &w->app->shm.hdr->shared, &w->committer, err,
                                   sizeof(err))) ||
        (rc = cn__claimer_new(cfg->store, w->store_fd, &w->app->shm.hdr->shared, &w->claimer,
                              err, sizeof(err)))) {
        fprintf(stderr, "cnerium: worker %u cannot use the shared store: %s\n", w->id,
                rc == -ENOMEM ? "out of memory" : err);
        return 1;
    }
    if (!(w->replays = cn__replay_cache_new(CN_APP_REPLAY_CACHE_BYTES))) {
        fprintf(stderr, "cnerium: worker %u: out of memory\n", w->id);
        return 1;
    }
    return 0;
}

/* ---- serving ---- */

static unsigned
active_requests(cn_worker_t *w)
{
    unsigned n = 0;

    for (unsigned i = 0; i < w->nloops; i++)
        n += cn__http_active(w->loops[i].http);
    return n;
}

/* Waits, up to timeout_ms, until at most `keep` requests are in progress. */
static unsigned
wait_for_drain(cn_worker_t *w, unsigned keep, uint32_t timeout_ms)
{
    uint64_t deadline = cn__clock_mono_ms() + timeout_ms;
    struct timespec tick = {0, 5 * 1000000L};
    unsigned active;

    /* MHD offers no completion signal for "all requests done"; a short bounded poll of
     * the active-request counters is the simplest correct wait here. */
    while ((active = active_requests(w)) > keep && cn__clock_mono_ms() < deadline)
        nanosleep(&tick, NULL);
    return active;
}

int
cn__worker_run(cn_app_t *app, unsigned id, int listen_fd, void (*on_ready)(void *arg),
               void *ready_arg)
{
    const cn_config_t *cfg = &app->cfg;
    char lmdb_dir[CN_CONFIG_PATH_MAX + 8];
    cn_worker_t w;
    cn_http_options_t http_opt;
    sigset_t stop_signals;
    unsigned active;
    int rc, sig, exit_code = 1, own_wake_fd = 0;

    memset(&w, 0, sizeof(w));
    w.poll_mu = (pthread_mutex_t)PTHREAD_MUTEX_INITIALIZER;
    w.app = app;
    w.id = id;
    /* With a persister (multi-process mode) it alone writes LMDB and sweeps. */
    w.sweep = cfg->single_process;
    w.wake_fd = app->ack_efd[id];
    if (w.wake_fd < 0) {
        /* --single-process: no persister acks, but parked duplicates still need waking. */
        if ((w.wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0) {
            fprintf(stderr, "cnerium: cannot create an eventfd: %s\n", strerror(errno));
            return 1;
        }
        own_wake_fd = 1;
    }
    w.inflight = (cn_inflight_t){
        .shm = &app->shm,
        .worker = id,
        .reject = cfg->inflight_mode == CN_INFLIGHT_REJECT,
        .wake_fds = own_wake_fd ? &w.wake_fd : app->ack_efd,
        .nwake = own_wake_fd ? 1u : app->shm.hdr->nworkers,
    };

    w.store_fd = -1;
    if (cn_config_store_is_pg(cfg)) {
        if ((rc = open_shared(&w)))
            goto out;
    } else {
        snprintf(lmdb_dir, sizeof(lmdb_dir), "%s/lmdb", cfg->data_dir);
        if ((rc = cn__store_open(lmdb_dir, CN_APP_STORE_MAP_SIZE, &w.store))) {
            fprintf(stderr, "cnerium: cannot open the store in '%s': %s\n", lmdb_dir,
                    cn_strerror(rc));
            if (own_wake_fd)
                close(w.wake_fd);
            return rc == -EACCES || rc == -EROFS || rc == -ENOSPC ? 2 : 1;
        }
        rc = cfg->single_process
                 ? cn__committer_new_sync(w.store, &w.committer)
                 : cn__committer_new_ring(cn__shm_ring(&app->shm, id), app->persist_efd,
                                          app->ack_efd[id], cfg->commit_timeout_ms,
                                          &w.committer);
        if (rc) {
            fprintf(stderr, "cnerium: cannot start the committer: %s\n", cn_strerror(rc));
            goto out;
        }
    }
    atomic_store(&app->shm.workers[id].parked, 0);
    if (!cfg->single_process)
        cn__committer_set_idle_flag(w.committer, &app->shm.hdr->persister_idle);
    w.durable = (cn_durable_t){
        .cfg = cfg,
        .store = w.store,
        .committer = w.committer,
        .inflight = &w.inflight,
        .deliver = cn__app_deliver,
        .deliver_arg = &w,
        .max_parked = CN_APP_MAX_PARKED,
        .parked_gauge = &app->shm.workers[id].parked,
        .park_mu = PTHREAD_MUTEX_INITIALIZER,
        .claimer = w.claimer,
        .replays = w.replays,
    };
    if (w.claimer) {
        /* Unique per claim across hosts and restarts: the node, this process, a nonce
         * (pids are reused), then a counter (cn_durable_t). */
        uint32_t nonce = 0;
        if (getrandom(&nonce, sizeof(nonce), 0) != (ssize_t)sizeof(nonce))
            nonce = (uint32_t)cn__clock_mono_us();
        snprintf(w.durable.owner_prefix, sizeof(w.durable.owner_prefix), "%.64s/%d/%08x",
                 cfg->node_id, (int)getpid(), nonce);
    }

    if (w.sweep && start_sweeper(&w)) {
        fprintf(stderr, "cnerium: cannot start the sweep thread\n");
        goto out;
    }
    http_opt = (cn_http_options_t){
        .max_body = cfg->max_body_bytes,
        .max_connections = cfg->max_connections,
        .max_connections_per_ip = cfg->max_connections_per_ip,
        .header_timeout_ms = cfg->header_timeout_ms,
    };
    if (!(w.loops = calloc((size_t)cfg->threads, sizeof(*w.loops)))) {
        fprintf(stderr, "cnerium: cannot start the HTTP server: out of memory\n");
        goto out;
    }
    /* The connection limits are the worker's: split over its loops (each accepts and
     * counts on its own), at least one each. */
    http_opt.max_connections = cfg->max_connections / (unsigned)cfg->threads;
    if (cfg->max_connections_per_ip) {
        http_opt.max_connections_per_ip = cfg->max_connections_per_ip / (unsigned)cfg->threads;
        if (!http_opt.max_connections_per_ip)
            http_opt.max_connections_per_ip = 1;
    }
    for (unsigned i = 0; i < (unsigned)cfg->threads; i++) {
        w.nloops = i + 1;
        if ((rc = start_loop(&w, i, listen_fd, &http_opt))) {
            fprintf(stderr, "cnerium: cannot start the HTTP server: %s\n", cn_strerror(rc));
            goto out;
        }
    }
    atomic_store(&app->shm.workers[id].pid, (int32_t)getpid());
    if (on_ready)
        on_ready(ready_arg);

    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGTERM);
    sigaddset(&stop_signals, SIGINT);
    do {
        sig = sigwaitinfo(&stop_signals, NULL);
    } while (sig < 0 && errno == EINTR);
    cn_log_debug("worker %u: %s, draining", id, sig == SIGINT ? "SIGINT" : "SIGTERM");

    /* The loops go on serving what is in progress (and parked duplicates, which are
     * answered when their key's holder finishes) until it is answered, for a bounded
     * while; parked requests left after it get 503. */
    command(&w, CMD_QUIESCE);
    active = wait_for_drain(&w, 0, CN_APP_DRAIN_TIMEOUT_MS);
    if (cn__durable_parked(&w.durable)) {
        cn__durable_cancel_parked(&w.durable);
        active = wait_for_drain(&w, 0, 1000);
    }
    if (active) {
        /* What is still in progress waits for an answer that comes later (cn_later: an
         * upstream call, say) on a suspended connection. libmicrohttpd aborts the process
         * when a server with a suspended connection is stopped, and the late answer would
         * land on freed state: leave now, as a worker that died would (nothing of these
         * requests was acknowledged; their keys stay claimed until the supervisor frees
         * them once this worker's ring is drained, or a shared claim's lease ends). */
        cn_log_warn("stopping with %u requests still waiting for an answer after %d ms: "
                    "their connections are closed", active, CN_APP_DRAIN_TIMEOUT_MS);
        atomic_store(&app->shm.workers[id].pid, 0);
        _exit(0);
    }
    exit_code = 0;

out:
    /* Requests waiting for their commit were answered (503 at the latest, at the commit
     * timeout) before the drain ended; stop the loops, give the last decisions a bounded
     * while to come in, then close the servers. */
    stop_loops(&w);
    cn__committer_free(w.committer, cfg->commit_timeout_ms);
    /* After the committer: a failed commit's last callbacks queue releases. */
    cn__durable_drop_claims(&w.durable, cn__claimer_free(w.claimer));
    cn__replay_cache_free(w.replays);
    free_loops(&w);
    stop_sweeper(&w);
    atomic_store(&app->shm.workers[id].pid, 0);
    cn__store_close(w.store);
    if (own_wake_fd)
        close(w.wake_fd);
    if (w.store_fd >= 0)
        close(w.store_fd);
    return exit_code;
}
