/*
 * workers/supervisor.c - the supervisor: set-up, fork, restart, drain.
 *
 * Order of start-up, each step failing with one clear line on stderr:
 *   data dir -> its lock (one server per data dir) -> the store opens -> shared region
 *   -> listening socket (a busy port: exit code 2) -> fork the workers -> every worker
 *   reports ready -> "listening on http://HOST:PORT".
 *
 * The supervisor stays single-threaded and never serves requests. SIGTERM, SIGINT and
 * SIGCHLD are blocked and read from a signalfd in one poll loop. A worker that dies has
 * its in-flight slots freed (waiters wake; one of them runs the operation, since the dead
 * worker's response was neither stored nor sent) and is replaced after a backoff; more
 * than CRASH_LIMIT deaths within CRASH_WINDOW_MS stop the server. A worker exiting with
 * code 2 reports a configuration problem: the server stops with code 2.
 *
 * Children get PR_SET_PDEATHSIG(SIGKILL): they never outlive the supervisor.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include "app/app_internal.h"
#include "cnerium/error.h"
#include "http/listen.h"
#include "support/clock.h"
#include "support/log.h"

#define LOCK_WAIT_MS 2000
#define READY_TIMEOUT_MS 30000
#define STOP_GRACE_MS 5000
#define CRASH_LIMIT 10
#define CRASH_WINDOW_MS 60000
#define BACKOFF_FIRST_MS 100
#define BACKOFF_MAX_MS 5000
#define HEALTHY_AFTER_MS 10000

typedef struct child {
    pid_t pid;        /* 0 while not running */
    int ready;
    unsigned fails;   /* consecutive deaths shortly after a start */
    uint64_t started_ms;
    uint64_t restart_at_ms; /* when pid == 0 and the server runs: respawn time */
} child_t;

typedef struct supervisor {
    cn_app_t *app;
    unsigned n;
    child_t children[CN_CONFIG_WORKERS_MAX];
    int listen_fd, sfd, ready_rd, ready_wr;
    pid_t self;
    uint64_t crashes[CRASH_LIMIT + 1]; /* ring of recent death times */
    unsigned ncrashes;
} supervisor_t;

/* ---- in the child ---- */

typedef struct ready_ctx {
    int fd;
    unsigned id;
} ready_ctx_t;

static void
report_ready(void *arg)
{
    ready_ctx_t *r = arg;
    unsigned char b = (unsigned char)r->id;

    if (write(r->fd, &b, 1) != 1)
        cn_log_warn("worker %u could not report ready: %s", r->id, strerror(errno));
}

static void
child_main(supervisor_t *s, unsigned id)
{
    char name[16];
    sigset_t chld;
    ready_ctx_t ready = {s->ready_wr, id};
    int rc;

    if (prctl(PR_SET_PDEATHSIG, SIGKILL) || getppid() != s->self)
        _exit(1); /* the supervisor is already gone */
    snprintf(name, sizeof(name), "cn-worker-%u", id);
    prctl(PR_SET_NAME, name);
    close(s->sfd);
    close(s->ready_rd);
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    sigprocmask(SIG_UNBLOCK, &chld, NULL); /* SIGTERM and SIGINT stay blocked */
    rc = cn__worker_run(s->app, id, s->listen_fd, report_ready, &ready);
    exit(rc);
}

/* ---- in the supervisor ---- */

static int
spawn(supervisor_t *s, unsigned id)
{
    child_t *c = &s->children[id];
    pid_t pid;

    fflush(stdout);
    fflush(stderr);
    pid = fork();
    if (pid < 0) {
        cn_log_error("cannot fork cn-worker-%u: %s", id, strerror(errno));
        return -errno;
    }
    if (pid == 0)
        child_main(s, id);
    c->pid = pid;
    c->ready = 0;
    c->started_ms = cn__clock_mono_ms();
    atomic_fetch_add(&s->app->shm.workers[id].starts, 1);
    return 0;
}

static void
drain_ready(supervisor_t *s)
{
    unsigned char ids[64];
    ssize_t n;

    while ((n = read(s->ready_rd, ids, sizeof(ids))) > 0) {
        for (ssize_t i = 0; i < n; i++) {
            if (ids[i] < s->n && s->children[ids[i]].pid)
                s->children[ids[i]].ready = 1;
        }
    }
}

static unsigned
count_ready(const supervisor_t *s)
{
    unsigned n = 0;

    for (unsigned i = 0; i < s->n; i++)
        n += s->children[i].pid && s->children[i].ready;
    return n;
}

static unsigned
count_running(const supervisor_t *s)
{
    unsigned n = 0;

    for (unsigned i = 0; i < s->n; i++)
        n += s->children[i].pid != 0;
    return n;
}

/* Records a death; returns 1 when the crash limit is exceeded. */
static int
crash_loop(supervisor_t *s, uint64_t now)
{
    unsigned recent = 0;

    s->crashes[s->ncrashes++ % (CRASH_LIMIT + 1)] = now;
    for (unsigned i = 0; i < CRASH_LIMIT + 1 && i < s->ncrashes; i++)
        recent += now - s->crashes[i] < CRASH_WINDOW_MS;
    return recent > CRASH_LIMIT;
}

static void
describe_exit(int status, char *buf, size_t cap)
{
    if (WIFEXITED(status))
        snprintf(buf, cap, "exited with code %d", WEXITSTATUS(status));
    else if (WIFSIGNALED(status))
        snprintf(buf, cap, "was killed by signal %d (%s)", WTERMSIG(status),
                 strsignal(WTERMSIG(status)));
    else
        snprintf(buf, cap, "stopped (status %d)", status);
}

/* Reaps every dead child. While running, schedules replacements. Returns 0, or the exit
 * code the server must stop with (2: a worker reported a configuration problem; 1: a
 * crash loop). */
static int
reap(supervisor_t *s, int running)
{
    int status, verdict = 0;
    pid_t pid;

    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        uint64_t now = cn__clock_mono_ms();
        char how[96];
        unsigned id;
        size_t freed;

        for (id = 0; id < s->n && s->children[id].pid != pid; id++)
            ;
        if (id == s->n)
            continue;
        child_t *c = &s->children[id];
        c->pid = 0;
        freed = cn__inflight_free_worker(&s->app->shm, id);
        describe_exit(status, how, sizeof(how));
        if (!running) {
            cn_log_debug("cn-worker-%u %s", id, how);
            continue;
        }
        cn_log_error("cn-worker-%u (pid %d) %s; %zu in-flight request%s released", id,
                     (int)pid, how, freed, freed == 1 ? "" : "s");
        if (WIFEXITED(status) && WEXITSTATUS(status) == 2) {
            verdict = 2;
            continue;
        }
        if (crash_loop(s, now)) {
            cn_log_error("workers died %d times within %d s: stopping the server (a crash "
                         "loop; see the errors above)", CRASH_LIMIT + 1,
                         CRASH_WINDOW_MS / 1000);
            if (!verdict)
                verdict = 1;
            continue;
        }
        c->fails = now - c->started_ms >= HEALTHY_AFTER_MS ? 0 : c->fails + 1;
        if (c->fails == 0) {
            c->restart_at_ms = now;
        } else {
            uint64_t delay = (uint64_t)BACKOFF_FIRST_MS << (c->fails > 6 ? 6 : c->fails - 1);
            c->restart_at_ms = now + (delay > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : delay);
        }
    }
    return verdict;
}

/* Milliseconds until the next scheduled restart, or -1 when none. Spawns the due ones. */
static int
restart_due(supervisor_t *s)
{
    uint64_t now = cn__clock_mono_ms();
    int64_t next = -1;

    for (unsigned id = 0; id < s->n; id++) {
        child_t *c = &s->children[id];
        if (c->pid)
            continue;
        if (c->restart_at_ms <= now) {
            if (spawn(s, id) == 0) {
                atomic_fetch_add(&s->app->shm.hdr->worker_restarts, 1);
                cn_log_info("cn-worker-%u restarted (pid %d)", id, (int)c->pid);
                continue;
            }
            c->restart_at_ms = now + BACKOFF_MAX_MS;
        }
        if (next < 0 || (int64_t)(c->restart_at_ms - now) < next)
            next = (int64_t)(c->restart_at_ms - now);
    }
    return (int)next;
}

/* Reads pending signals. Returns the stop signal seen (SIGTERM/SIGINT) or 0. */
static int
read_signals(supervisor_t *s, int *chld)
{
    struct signalfd_siginfo si;
    int stop = 0;

    while (read(s->sfd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
        if (si.ssi_signo == SIGCHLD)
            *chld = 1;
        else
            stop = (int)si.ssi_signo;
    }
    return stop;
}

/* SIGTERM to every worker, then a bounded wait; SIGKILL for what is left. */
static void
stop_children(supervisor_t *s)
{
    uint64_t deadline = cn__clock_mono_ms() + CN_APP_DRAIN_TIMEOUT_MS + STOP_GRACE_MS;

    for (unsigned id = 0; id < s->n; id++) {
        if (s->children[id].pid)
            kill(s->children[id].pid, SIGTERM);
    }
    while (count_running(s)) {
        struct pollfd p = {s->sfd, POLLIN, 0};
        uint64_t now = cn__clock_mono_ms();
        int chld = 0;
        if (now >= deadline)
            break;
        if (poll(&p, 1, (int)(deadline - now)) > 0)
            read_signals(s, &chld);
        reap(s, 0);
    }
    for (unsigned id = 0; id < s->n; id++) {
        if (s->children[id].pid) {
            cn_log_warn("cn-worker-%u did not stop in time: SIGKILL", id);
            kill(s->children[id].pid, SIGKILL);
            waitpid(s->children[id].pid, NULL, 0);
            s->children[id].pid = 0;
        }
    }
}

/* Waits until every worker reported ready. Returns 0 or the exit code to stop with. */
static int
await_ready(supervisor_t *s)
{
    uint64_t deadline = cn__clock_mono_ms() + READY_TIMEOUT_MS;

    while (count_ready(s) < s->n) {
        struct pollfd p[2] = {{s->sfd, POLLIN, 0}, {s->ready_rd, POLLIN, 0}};
        uint64_t now = cn__clock_mono_ms();
        int chld = 0, verdict;

        if (now >= deadline) {
            fprintf(stderr, "cnerium: workers did not start within %d s\n",
                    READY_TIMEOUT_MS / 1000);
            return 1;
        }
        if (poll(p, 2, (int)(deadline - now)) < 0 && errno != EINTR)
            return 1;
        drain_ready(s);
        if (read_signals(s, &chld))
            return 0; /* stopped while starting: a clean stop */
        if (chld) {
            for (unsigned id = 0; id < s->n; id++) {
                int status;
                pid_t pid = s->children[id].pid;
                if (pid && waitpid(pid, &status, WNOHANG) == pid) {
                    s->children[id].pid = 0;
                    verdict = WIFEXITED(status) && WEXITSTATUS(status) == 2 ? 2 : 1;
                    if (verdict == 1)
                        fprintf(stderr, "cnerium: cn-worker-%u died while starting\n", id);
                    return verdict;
                }
            }
        }
    }
    return -1;
}

static int
serve(supervisor_t *s)
{
    int verdict;

    for (unsigned id = 0; id < s->n; id++) {
        if (spawn(s, id))
            return 1;
    }
    verdict = await_ready(s);
    if (verdict >= 0)
        return verdict;
    cn_log_info("%s (node %s) serving: %u worker processes x %d threads, data dir %s",
                s->app->cfg.name, s->app->cfg.node_id, s->n, s->app->cfg.threads,
                s->app->cfg.data_dir);
    return -1;
}

static int
supervise(supervisor_t *s)
{
    for (;;) {
        struct pollfd p[2] = {{s->sfd, POLLIN, 0}, {s->ready_rd, POLLIN, 0}};
        int timeout = restart_due(s), chld = 0, stop, verdict;

        if (poll(p, 2, timeout) < 0 && errno != EINTR)
            return 1;
        drain_ready(s);
        stop = read_signals(s, &chld);
        if (chld && (verdict = reap(s, 1)))
            return verdict;
        if (stop) {
            cn_log_info("received %s: draining", stop == SIGINT ? "SIGINT" : "SIGTERM");
            return 0;
        }
    }
}

typedef struct single_ctx {
    cn_app_t *app;
    uint16_t port;
} single_ctx_t;

static void
single_process_ready(void *arg)
{
    single_ctx_t *c = arg;

    cn_log_info("%s (node %s) serving in a single process, %d threads, data dir %s",
                c->app->cfg.name, c->app->cfg.node_id, c->app->cfg.threads,
                c->app->cfg.data_dir);
    cn__app_print_listening(&c->app->cfg, c->port);
}

/* Opens and closes the store once, so a store that cannot be opened fails the start with
 * one message instead of a crash loop of workers. */
static int
check_store(const cn_config_t *cfg)
{
    char lmdb_dir[CN_CONFIG_PATH_MAX + 8];
    cn_store_t *store;
    int rc;

    snprintf(lmdb_dir, sizeof(lmdb_dir), "%s/lmdb", cfg->data_dir);
    if ((rc = cn__store_open(lmdb_dir, CN_APP_STORE_MAP_SIZE, &store))) {
        fprintf(stderr, "cnerium: cannot open the store in '%s': %s\n", lmdb_dir,
                cn_strerror(rc));
        return rc == -EACCES || rc == -EROFS || rc == -ENOSPC ? 2 : 1;
    }
    cn__store_close(store);
    return 0;
}

int
cn__supervisor_run(cn_app_t *app)
{
    const cn_config_t *cfg = &app->cfg;
    supervisor_t s;
    sigset_t sigs, old_mask;
    uint16_t port = 0;
    int lock_fd, rc, exit_code = 1, ready[2] = {-1, -1};

    memset(&s, 0, sizeof(s));
    s.app = app;
    s.n = cfg->single_process ? 1 : (unsigned)cfg->workers;
    s.listen_fd = s.sfd = s.ready_rd = s.ready_wr = -1;
    s.self = getpid();
    app->server_pid = s.self;

    if ((rc = cn__app_mkdir_p(cfg->data_dir))) {
        fprintf(stderr, "cnerium: cannot create data dir '%s': %s; pass a writable "
                        "--data-dir\n", cfg->data_dir, cn_strerror(rc));
        return 2;
    }
    lock_fd = cn__app_lock_data_dir(cfg->data_dir, LOCK_WAIT_MS);
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
    if ((rc = check_store(cfg))) {
        close(lock_fd);
        return rc;
    }
    if ((rc = cn__shm_create(cfg->inflight_slots, s.n, app->nops, &app->shm))) {
        fprintf(stderr, "cnerium: cannot create the shared memory region (%u in-flight "
                        "slots): %s\n", cfg->inflight_slots, cn_strerror(rc));
        goto out;
    }
    if ((rc = cn__listen_tcp(cfg->host, cfg->port, &s.listen_fd, &port))) {
        fprintf(stderr, "cnerium: cannot listen on %s:%u: %s; pass another --port or "
                        "--host\n", cfg->host, (unsigned)cfg->port,
                rc == CN_ECONFIG ? "host does not resolve" : cn_strerror(rc));
        exit_code = 2;
        goto out;
    }

    /* Blocked before any child or thread exists, so everything inherits the mask and
     * these signals are only ever taken synchronously. */
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGCHLD);
    sigprocmask(SIG_BLOCK, &sigs, &old_mask);
    signal(SIGPIPE, SIG_IGN);

    if (cfg->single_process) {
        single_ctx_t ctx = {app, port};
        exit_code = cn__worker_run(app, 0, s.listen_fd, single_process_ready, &ctx);
        goto out_signals;
    }

    if ((s.sfd = signalfd(-1, &sigs, SFD_CLOEXEC | SFD_NONBLOCK)) < 0 ||
        pipe2(ready, O_CLOEXEC | O_NONBLOCK)) {
        fprintf(stderr, "cnerium: cannot set up the supervisor: %s\n", strerror(errno));
        goto out_signals;
    }
    s.ready_rd = ready[0];
    s.ready_wr = ready[1];

    rc = serve(&s);
    if (rc < 0) {
        cn__app_print_listening(cfg, port);
        rc = supervise(&s);
    }
    exit_code = rc;
    stop_children(&s);
    reap(&s, 0);

out_signals:
    sigprocmask(SIG_SETMASK, &old_mask, NULL);
out:
    if (s.sfd >= 0)
        close(s.sfd);
    if (s.ready_rd >= 0)
        close(s.ready_rd);
    if (s.ready_wr >= 0)
        close(s.ready_wr);
    if (s.listen_fd >= 0)
        close(s.listen_fd);
    cn__shm_destroy(&app->shm);
    app->server_pid = 0;
    close(lock_fd);
    if (exit_code == 0)
        cn_log_info("stopped");
    return exit_code;
}
