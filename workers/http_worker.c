/*
 * workers/http_worker.c - one HTTP worker: its own LMDB environment (for lookups), its
 * committer (the record ring to the persister; in --single-process mode, synced LMDB
 * commits and the expiry sweep), the libmicrohttpd server on the inherited listening
 * socket, and the drain on SIGTERM/SIGINT.
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
#include <string.h>
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

/* ---- serving ---- */

static void
wait_for_drain(cn_http_server_t *http)
{
    uint64_t deadline = cn__clock_mono_ms() + CN_APP_DRAIN_TIMEOUT_MS;
    struct timespec tick = {0, 5 * 1000000L};
    unsigned active;

    /* MHD offers no completion signal for "all requests done"; a short bounded poll of
     * the active-request counter is the simplest correct wait here. */
    while ((active = cn__http_active(http)) > 0 && cn__clock_mono_ms() < deadline)
        nanosleep(&tick, NULL);
    if (active)
        cn_log_warn("stopping with %u requests still in progress after %d ms", active,
                    CN_APP_DRAIN_TIMEOUT_MS);
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
    int rc, sig, exit_code = 1;

    memset(&w, 0, sizeof(w));
    w.app = app;
    w.id = id;
    /* With a persister (multi-process mode) it alone writes LMDB and sweeps. */
    w.sweep = cfg->single_process;
    w.inflight = (cn_inflight_t){&app->shm, id, cfg->inflight_mode == CN_INFLIGHT_REJECT};

    snprintf(lmdb_dir, sizeof(lmdb_dir), "%s/lmdb", cfg->data_dir);
    if ((rc = cn__store_open(lmdb_dir, CN_APP_STORE_MAP_SIZE, &w.store))) {
        fprintf(stderr, "cnerium: cannot open the store in '%s': %s\n", lmdb_dir,
                cn_strerror(rc));
        return rc == -EACCES || rc == -EROFS || rc == -ENOSPC ? 2 : 1;
    }
    rc = cfg->single_process
             ? cn__committer_new_sync(w.store, &w.committer)
             : cn__committer_new_ring(cn__shm_ring(&app->shm, id), app->persist_efd,
                                      app->ack_efd[id], cfg->commit_timeout_ms, &w.committer);
    if (rc) {
        fprintf(stderr, "cnerium: cannot start the committer: %s\n", cn_strerror(rc));
        goto out;
    }
    if (!cfg->single_process)
        cn__committer_set_idle_flag(w.committer, &app->shm.hdr->persister_idle);
    w.durable = (cn_durable_t){
        .cfg = cfg,
        .store = w.store,
        .committer = w.committer,
        .inflight = &w.inflight,
        .deliver = cn__app_deliver,
        .deliver_arg = &w,
        .max_waiters = CN_APP_MAX_WAITERS,
    };

    if (w.sweep && start_sweeper(&w)) {
        fprintf(stderr, "cnerium: cannot start the sweep thread\n");
        goto out;
    }
    http_opt = (cn_http_options_t){
        .threads = (unsigned)cfg->threads,
        .max_body = cfg->max_body_bytes,
        .max_connections = cfg->max_connections,
        .max_connections_per_ip = cfg->max_connections_per_ip,
        .header_timeout_ms = cfg->header_timeout_ms,
    };
    if ((rc = cn__http_start(listen_fd, &http_opt, cn__app_dispatch, &w, &w.http))) {
        fprintf(stderr, "cnerium: cannot start the HTTP server: %s\n", cn_strerror(rc));
        goto out;
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

    cn__http_quiesce(w.http);
    wait_for_drain(w.http);
    exit_code = 0;
    if (cn__durable_quiesce(&w.durable, cfg->commit_timeout_ms)) {
        /* Waiter threads still use requests and the store: leave without tearing them
         * down (their clients were cut by the drain's end; nothing was stored for them). */
        cn_log_warn("worker %u: requests still waiting for duplicates at exit", id);
        fflush(stderr);
        _exit(0);
    }

out:
    /* Requests waiting for their commit were answered (503 at the latest, at the commit
     * timeout) before the drain ended; give the last decisions a bounded while to come
     * in, then stop the server. */
    cn__committer_free(w.committer, cfg->commit_timeout_ms);
    cn__http_stop(w.http);
    stop_sweeper(&w);
    atomic_store(&app->shm.workers[id].pid, 0);
    cn__store_close(w.store);
    return exit_code;
}
