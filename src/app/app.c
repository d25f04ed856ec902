/*
 * app/app.c - the application: route registration, dispatch, and the server's life
 * (data-dir lock, store, listening socket, HTTP threads, expiry sweep, drain on
 * SIGTERM/SIGINT).
 *
 * cn_app_run runs in the process's main thread. SIGTERM and SIGINT are blocked in every
 * thread and taken synchronously by the main thread with sigwaitinfo, so no handler runs
 * asynchronously. Request threads only read the app (routes, config) and use the
 * thread-safe store, claims and committer.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cnerium/app.h"
#include "cnerium/error.h"
#include "http/listen.h"
#include "http/problem.h"
#include "http/request_internal.h"
#include "http/router.h"
#include "http/server.h"
#include "realtime/event.h"
#include "reliability/claims.h"
#include "reliability/durable.h"
#include "store/commit.h"
#include "store/store.h"
#include "support/clock.h"
#include "support/log.h"

#define STORE_MAP_SIZE ((size_t)1 << 30)
#define SWEEP_BATCH 1000
#define DRAIN_TIMEOUT_MS 10000

struct cn_app {
    cn_config_t cfg;
    cn_router_t *router;

    /* Only while cn_app_run runs. */
    cn_store_t *store;
    cn_claims_t *claims;
    cn_committer_t *committer;
    cn_durable_t durable;

    pthread_t sweeper;
    int sweeper_started;
    pthread_mutex_t sweep_mu;
    pthread_cond_t sweep_cond;
    int sweep_stop;
};

cn_app_t *
cn_app_new(const cn_config_t *cfg)
{
    cn_app_t *app = calloc(1, sizeof(*app));

    if (!app)
        return NULL;
    app->cfg = *cfg;
    if (!app->cfg.node_id[0])
        snprintf(app->cfg.node_id, sizeof(app->cfg.node_id), "%.*s-node",
                 (int)sizeof(app->cfg.node_id) - 6, app->cfg.name);
    if (cn__router_new(&app->router)) {
        free(app);
        return NULL;
    }
    return app;
}

void
cn_app_free(cn_app_t *app)
{
    if (!app)
        return;
    cn__router_free(app->router);
    free(app);
}

const cn_config_t *
cn_app_config(const cn_app_t *app)
{
    return &app->cfg;
}

int
cn_get(cn_app_t *app, const char *path, cn_handler_cb handler, void *ctx)
{
    return cn__router_add(app->router, CN_METHOD_GET, path, NULL, handler, ctx);
}

int
cn_post(cn_app_t *app, const char *path, cn_handler_cb handler, void *ctx)
{
    return cn__router_add(app->router, CN_METHOD_POST, path, NULL, handler, ctx);
}

int
cn_put(cn_app_t *app, const char *path, cn_handler_cb handler, void *ctx)
{
    return cn__router_add(app->router, CN_METHOD_PUT, path, NULL, handler, ctx);
}

int
cn_delete(cn_app_t *app, const char *path, cn_handler_cb handler, void *ctx)
{
    return cn__router_add(app->router, CN_METHOD_DELETE, path, NULL, handler, ctx);
}

static int
valid_operation(const char *op)
{
    size_t n = 0;

    for (; op[n]; n++) {
        char c = op[n];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return 0;
    }
    return n >= 1 && n <= CN_OPERATION_MAX;
}

int
cn_durable_post(cn_app_t *app, const char *path, const char *operation, cn_handler_cb handler,
                void *ctx)
{
    if (!operation || !valid_operation(operation))
        return -EINVAL;
    return cn__router_add(app->router, CN_METHOD_POST, path, operation, handler, ctx);
}

/* ---- dispatch (request threads) ---- */

static void
dispatch(void *arg, cn_request_t *req, cn_http_reply_t *reply)
{
    cn_app_t *app = arg;
    int method = cn__method_from_string(req->method);
    int rc = cn__router_match(app->router, method, req->path, strlen(req->path), &req->match);
    char detail[256];

    if (rc == CN_ENOTFOUND) {
        snprintf(detail, sizeof(detail), "No route for %.100s", req->path);
        reply->response = cn__problem(404, CN_PROBLEM_NOT_FOUND, detail);
        reply->flags = CN_REPLY_NO_STORE;
        return;
    }
    if (rc == CN_EMETHOD) {
        char allow[64];
        cn__router_allow(req->match.allowed, allow, sizeof(allow));
        snprintf(detail, sizeof(detail), "Method %s is not allowed on %.100s (allowed: %s)",
                 req->method, req->path, allow);
        reply->response = cn__problem(405, CN_PROBLEM_METHOD, detail);
        if (reply->response.status && cn_response_add_header(&reply->response, "Allow", allow))
            cn_response_free(&reply->response);
        reply->flags = CN_REPLY_NO_STORE;
        return;
    }
    if (rc) {
        reply->response = cn__problem(503, CN_PROBLEM_STORAGE, "Out of memory");
        reply->flags = CN_REPLY_NO_STORE;
        return;
    }
    if (req->match.route->operation) {
        cn_durable_result_t out;
        cn__durable_handle(&app->durable, req->match.route, req, &out);
        reply->response = out.response;
        reply->flags = CN_REPLY_NO_STORE |
                       (out.outcome == CN_OUTCOME_REPLAYED ? CN_REPLY_REPLAYED : 0);
        return;
    }
    reply->response = req->match.route->handler(req, req->match.route->ctx);
    /* Ordinary routes have no record to wait for: their events go out at once. */
    cn__events_publish(req->events);
    req->events = NULL;
    req->events_tail = &req->events;
}

/* ---- expiry sweep (its own thread) ---- */

static void *
sweep_main(void *arg)
{
    cn_app_t *app = arg;
    struct timespec next;

    pthread_mutex_lock(&app->sweep_mu);
    while (!app->sweep_stop) {
        clock_gettime(CLOCK_MONOTONIC, &next);
        next.tv_sec += app->cfg.sweep_interval_ms / 1000;
        next.tv_nsec += (long)(app->cfg.sweep_interval_ms % 1000) * 1000000L;
        if (next.tv_nsec >= 1000000000L) {
            next.tv_sec++;
            next.tv_nsec -= 1000000000L;
        }
        while (!app->sweep_stop &&
               pthread_cond_timedwait(&app->sweep_cond, &app->sweep_mu, &next) != ETIMEDOUT)
            ;
        if (app->sweep_stop)
            break;
        pthread_mutex_unlock(&app->sweep_mu);
        /* Bounded transactions: never hold the writer lock for long. */
        for (;;) {
            size_t deleted = 0;
            int rc = cn__store_sweep(app->store, cn__clock_wall_ms(), SWEEP_BATCH, &deleted);
            if (rc) {
                cn_log_warn("expiry sweep failed: %s", cn_strerror(rc));
                break;
            }
            if (deleted)
                cn_log_debug("expiry sweep removed %zu stored responses", deleted);
            if (deleted < SWEEP_BATCH)
                break;
        }
        pthread_mutex_lock(&app->sweep_mu);
    }
    pthread_mutex_unlock(&app->sweep_mu);
    return NULL;
}

static int
start_sweeper(cn_app_t *app)
{
    pthread_condattr_t attr;

    pthread_mutex_init(&app->sweep_mu, NULL);
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&app->sweep_cond, &attr);
    pthread_condattr_destroy(&attr);
    app->sweep_stop = 0;
    if (pthread_create(&app->sweeper, NULL, sweep_main, app))
        return -EAGAIN;
    app->sweeper_started = 1;
    return 0;
}

static void
stop_sweeper(cn_app_t *app)
{
    if (!app->sweeper_started)
        return;
    pthread_mutex_lock(&app->sweep_mu);
    app->sweep_stop = 1;
    pthread_cond_signal(&app->sweep_cond);
    pthread_mutex_unlock(&app->sweep_mu);
    pthread_join(app->sweeper, NULL);
    app->sweeper_started = 0;
    pthread_cond_destroy(&app->sweep_cond);
    pthread_mutex_destroy(&app->sweep_mu);
}

/* ---- the server's life ---- */

static int
mkdir_p(const char *dir)
{
    char path[CN_CONFIG_PATH_MAX];
    size_t n = strlen(dir);

    if (n >= sizeof(path))
        return -ENAMETOOLONG;
    memcpy(path, dir, n + 1);
    for (char *p = path + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(path, 0755) && errno != EEXIST)
            return -errno;
        *p = '/';
    }
    if (mkdir(path, 0755) && errno != EEXIST)
        return -errno;
    return 0;
}

/* Takes the data dir's exclusive lock: one server per data dir, because the in-flight
 * claims of one server cannot see another's. Returns the lock fd or a negative error. */
static int
lock_data_dir(const char *dir)
{
    char path[CN_CONFIG_PATH_MAX + 16], pid[32];
    int fd, n;

    snprintf(path, sizeof(path), "%s/LOCK", dir);
    fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        return -errno;
    if (flock(fd, LOCK_EX | LOCK_NB)) {
        int err = errno == EWOULDBLOCK ? -EBUSY : -errno;
        close(fd);
        return err;
    }
    n = snprintf(pid, sizeof(pid), "%d\n", (int)getpid());
    if (ftruncate(fd, 0) == 0 && write(fd, pid, (size_t)n) != n)
        cn_log_warn("could not write the pid to %s", path);
    return fd;
}

static void
wait_for_drain(cn_http_server_t *http)
{
    uint64_t deadline = cn__clock_mono_ms() + DRAIN_TIMEOUT_MS;
    struct timespec tick = {0, 5 * 1000000L};
    unsigned active;

    /* MHD offers no completion signal for "all requests done"; a short bounded poll of
     * the active-request counter is the simplest correct wait here. */
    while ((active = cn__http_active(http)) > 0 && cn__clock_mono_ms() < deadline)
        nanosleep(&tick, NULL);
    if (active)
        cn_log_warn("stopping with %u requests still in progress after %d ms", active,
                    DRAIN_TIMEOUT_MS);
}

int
cn_app_run(cn_app_t *app)
{
    const cn_config_t *cfg = &app->cfg;
    char err[512], lmdb_dir[CN_CONFIG_PATH_MAX + 8];
    cn_http_server_t *http = NULL;
    int lock_fd = -1, listen_fd = -1, rc, exit_code = 1, sig;
    uint16_t port = 0;
    sigset_t stop_signals, old_mask;

    cn__log_set_level(cfg->log_level);
    if (cn_config_validate(cfg, err, sizeof(err))) {
        fprintf(stderr, "cnerium: %s\n", err);
        return 2;
    }

    if ((rc = mkdir_p(cfg->data_dir))) {
        fprintf(stderr, "cnerium: cannot create data dir '%s': %s; pass a writable "
                        "--data-dir\n", cfg->data_dir, cn_strerror(rc));
        return 2;
    }
    lock_fd = lock_data_dir(cfg->data_dir);
    if (lock_fd < 0) {
        if (lock_fd == -EBUSY)
            fprintf(stderr, "cnerium: data dir '%s' is in use by another server (its LOCK "
                            "file is held); stop that server or pass another --data-dir\n",
                    cfg->data_dir);
        else
            fprintf(stderr, "cnerium: cannot lock data dir '%s': %s; pass a writable "
                            "--data-dir\n", cfg->data_dir, cn_strerror(lock_fd));
        return 2;
    }
    snprintf(lmdb_dir, sizeof(lmdb_dir), "%s/lmdb", cfg->data_dir);
    if ((rc = cn__store_open(lmdb_dir, STORE_MAP_SIZE, &app->store))) {
        fprintf(stderr, "cnerium: cannot open the store in '%s': %s\n", lmdb_dir,
                cn_strerror(rc));
        exit_code = rc == -EACCES || rc == -EROFS || rc == -ENOSPC ? 2 : 1;
        goto out;
    }
    if ((rc = cn__claims_new(&app->claims)) ||
        (rc = cn__committer_new_sync(app->store, &app->committer))) {
        fprintf(stderr, "cnerium: %s\n", cn_strerror(rc));
        goto out;
    }
    app->durable = (cn_durable_t){cfg, app->store, app->committer, app->claims};

    if ((rc = cn__listen_tcp(cfg->host, cfg->port, &listen_fd, &port))) {
        fprintf(stderr, "cnerium: cannot listen on %s:%u: %s; pass another --port or "
                        "--host\n", cfg->host, (unsigned)cfg->port,
                rc == CN_ECONFIG ? "host does not resolve" : cn_strerror(rc));
        exit_code = 2;
        goto out;
    }

    /* Block the stop signals before any thread exists so every thread inherits the mask
     * and only sigwaitinfo below receives them. */
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGTERM);
    sigaddset(&stop_signals, SIGINT);
    pthread_sigmask(SIG_BLOCK, &stop_signals, &old_mask);
    signal(SIGPIPE, SIG_IGN);

    if ((rc = start_sweeper(app))) {
        fprintf(stderr, "cnerium: cannot start the sweep thread\n");
        goto out_signals;
    }
    if ((rc = cn__http_start(listen_fd, (unsigned)cfg->workers, cfg->max_body_bytes, dispatch,
                             app, &http))) {
        fprintf(stderr, "cnerium: cannot start the HTTP server: %s\n", cn_strerror(rc));
        goto out_signals;
    }
    cn_log_info("%s (node %s) serving, %d threads, data dir %s", cfg->name, cfg->node_id,
                cfg->workers, cfg->data_dir);
    printf(strchr(cfg->host, ':') ? "listening on http://[%s]:%u\n"
                                  : "listening on http://%s:%u\n",
           cfg->host, (unsigned)port);
    fflush(stdout);

    do {
        sig = sigwaitinfo(&stop_signals, NULL);
    } while (sig < 0 && errno == EINTR);
    cn_log_info("received %s: draining", sig == SIGINT ? "SIGINT" : "SIGTERM");

    cn__http_quiesce(http);
    wait_for_drain(http);
    exit_code = 0;

out_signals:
    cn__http_stop(http);
    stop_sweeper(app);
    pthread_sigmask(SIG_SETMASK, &old_mask, NULL);
out:
    if (listen_fd >= 0)
        close(listen_fd);
    cn__committer_free(app->committer);
    cn__claims_free(app->claims);
    cn__store_close(app->store);
    app->committer = NULL;
    app->claims = NULL;
    app->store = NULL;
    if (lock_fd >= 0)
        close(lock_fd);
    if (exit_code == 0)
        cn_log_info("stopped");
    return exit_code;
}

void
cn_app_stop(cn_app_t *app)
{
    (void)app;
    kill(getpid(), SIGTERM);
}
