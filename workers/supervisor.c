/*
 * workers/supervisor.c - the supervisor: cn_app_run, set-up, fork, restart, drain.
 *
 * cn_app_run (cnerium/app.h) is here: the app (app/app.c) only registers routes and
 * dispatches requests; running it is the processes' business, so the calls go one way,
 * from workers/ into the app.
 *
 * Order of start-up, each step failing with one clear line on stderr:
 *   data dir -> its lock (one server per data dir) -> the store opens -> shared region
 *   -> listening sockets (a busy port: exit code 2) -> the persister, which recovers the
 *   WAL and reports ready -> the broadcaster (realtime only) -> the workers, each
 *   reporting ready -> "realtime on ws://..." and "listening on http://HOST:PORT".
 *
 * The supervisor stays single-threaded and never serves requests. SIGTERM, SIGINT and
 * SIGCHLD are blocked and read from a signalfd in one poll loop. A worker that dies keeps
 * its in-flight slots until the persister has decided the records it left in its ring
 * (a retry must not run an operation whose record may still land); then the slots are
 * freed (waiters wake; a stored record replays, otherwise one waiter runs the operation)
 * and the worker is replaced. Any child is replaced at once on a first death and with a
 * doubling backoff while it keeps dying young; more than CRASH_LIMIT deaths within
 * CRASH_WINDOW_MS stop the server. A child exiting with code 2 reports a configuration
 * problem: the server stops with code 2. Stopping: workers first (they finish their
 * requests), then the persister (it writes what they left), then the broadcaster.
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
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "app/app_internal.h"
#include "store/pg.h"
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
#define RING_DRAIN_MS 5000 /* how often a still-undrained dead worker is logged */
#define DRAIN_TICK_MS 2

typedef struct child {
    pid_t pid;        /* 0 while not running */
    int ready;
    unsigned fails;   /* consecutive deaths shortly after a start */
    uint64_t started_ms;
    uint64_t restart_at_ms; /* when pid == 0 and the server runs: respawn time */
    uint64_t backoff_ms;    /* the delay restart_at_ms was given, for the log */
    /* A dead worker whose ring still holds records: its in-flight slots are freed (and
     * it is restarted) only once the persister has decided them (acked_seq reaches
     * drain_seq); drain_until_ms is when to log that it is still waiting. */
    int draining;
    uint64_t drain_seq, drain_until_ms;
} child_t;

typedef struct supervisor {
    cn_app_t *app;
    unsigned n;          /* workers; children[n] is the persister when persist is set, */
    int persist;         /* children[n + 1] the broadcaster when broadcast is set */
    int broadcast;
    int ws_fd;           /* the broadcaster's listening socket */
    child_t children[CN_CONFIG_WORKERS_MAX + 2];
    int listen_fd, sfd, ready_rd, ready_wr;
    pid_t self;
    uint64_t crashes[CRASH_LIMIT + 1]; /* ring of recent death times */
    unsigned ncrashes;
} supervisor_t;

/* ---- the data dir and the ready line ---- */

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

static int
lock_data_dir(const char *dir, unsigned wait_ms)
{
    char path[CN_CONFIG_PATH_MAX + 16], pid[32];
    uint64_t deadline = cn__clock_mono_ms() + wait_ms;
    struct timespec tick = {0, 20 * 1000000L};
    int fd, n;

    snprintf(path, sizeof(path), "%s/LOCK", dir);
    fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        return -errno;
    /* The lock is shared with the server's children (they inherit the descriptor), so a
     * server killed with SIGKILL holds it until its last child is gone, which takes a few
     * milliseconds (PR_SET_PDEATHSIG). flock has no timed wait: retry for a bounded time. */
    while (flock(fd, LOCK_EX | LOCK_NB)) {
        int err = errno == EWOULDBLOCK ? -EBUSY : -errno;
        if (err != -EBUSY || cn__clock_mono_ms() >= deadline) {
            close(fd);
            return err;
        }
        nanosleep(&tick, NULL);
    }
    n = snprintf(pid, sizeof(pid), "%d\n", (int)getpid());
    if (ftruncate(fd, 0) == 0 && write(fd, pid, (size_t)n) != n)
        cn_log_warn("could not write the pid to %s", path);
    return fd;
}

static void
print_listening(const cn_config_t *cfg, uint16_t port)
{
    printf(strchr(cfg->host, ':') ? "listening on http://[%s]:%u\n"
                                  : "listening on http://%s:%u\n",
           cfg->host, (unsigned)port);
    fflush(stdout);
}

/* ---- processes ---- */

static const char *
child_name(const supervisor_t *s, unsigned id)
{
    static char buf[32];

    if (id == s->n)
        return "cn-persister";
    if (id == s->n + 1)
        return "cn-broadcaster";
    snprintf(buf, sizeof(buf), "cn-worker-%u", id);
    return buf;
}

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
    snprintf(name, sizeof(name), "%.15s", child_name(s, id)); /* comm holds 15 bytes */
    prctl(PR_SET_NAME, name);
    close(s->sfd);
    close(s->ready_rd);
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    sigprocmask(SIG_UNBLOCK, &chld, NULL); /* SIGTERM and SIGINT stay blocked */
    if (id == s->n) {
        close(s->listen_fd); /* the persister serves nothing */
        if (s->ws_fd >= 0)
            close(s->ws_fd);
        rc = cn__persister_run(s->app, report_ready, &ready);
    } else if (id == s->n + 1) {
        close(s->listen_fd);
        rc = cn__broadcaster_run(s->app, s->ws_fd, report_ready, &ready);
    } else {
        if (s->ws_fd >= 0)
            close(s->ws_fd);
        rc = cn__worker_run(s->app, id, s->listen_fd, report_ready, &ready);
    }
    exit(rc);
}

/* ---- in the supervisor ---- */

/* Children that take part: the workers, the persister and the broadcaster when there
 * are. */
static unsigned
nchildren(const supervisor_t *s)
{
    return s->n + (s->persist ? 1u : 0u) + (s->broadcast ? 1u : 0u);
}

static int
spawn(supervisor_t *s, unsigned id)
{
    child_t *c = &s->children[id];
    pid_t pid;

    fflush(stdout);
    fflush(stderr);
    pid = fork();
    if (pid < 0) {
        cn_log_error("cannot fork %s: %s", child_name(s, id), strerror(errno));
        return -errno;
    }
    if (pid == 0)
        child_main(s, id);
    c->pid = pid;
    c->ready = 0;
    c->started_ms = cn__clock_mono_ms();
    if (id < s->n)
        atomic_fetch_add(&s->app->shm.workers[id].starts, 1);
    else if (id == s->n)
        atomic_fetch_add(&s->app->shm.hdr->persist.starts, 1);
    else
        atomic_fetch_add(&s->app->shm.hdr->events.starts, 1);
    return 0;
}

static void
drain_ready(supervisor_t *s)
{
    unsigned char ids[64];
    ssize_t n;

    while ((n = read(s->ready_rd, ids, sizeof(ids))) > 0) {
        for (ssize_t i = 0; i < n; i++) {
            if (ids[i] < nchildren(s) && s->children[ids[i]].pid)
                s->children[ids[i]].ready = 1;
        }
    }
}

static unsigned
count_ready(const supervisor_t *s, unsigned from, unsigned to)
{
    unsigned n = 0;

    for (unsigned i = from; i < to; i++)
        n += s->children[i].pid && s->children[i].ready;
    return n;
}

static unsigned
count_running(const supervisor_t *s, unsigned from, unsigned to)
{
    unsigned n = 0;

    for (unsigned i = from; i < to; i++)
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

/* A worker's ring has no undecided record left (or never had a ring). */
static int
ring_drained(const supervisor_t *s, unsigned id, uint64_t upto)
{
    return !s->persist ||
           atomic_load(&cn__shm_ring(&s->app->shm, id)->acked_seq) >= upto;
}

/* Frees a dead worker's in-flight slots, now that the persister decided its records. */
static void
release_worker(supervisor_t *s, unsigned id)
{
    child_t *c = &s->children[id];
    size_t freed = cn__inflight_free_worker(&s->app->shm, id);

    c->draining = 0;
    if (freed) /* their duplicates, parked in the other workers, look again */
        cn__inflight_wake_all(s->app->ack_efd, s->n);
    if (freed)
        cn_log_info("cn-worker-%u: %zu in-flight request%s released", id, freed,
                    freed == 1 ? "" : "s");
}

static void
schedule_restart(child_t *c, uint64_t now)
{
    /* The first death after a healthy run restarts at once; each further death soon
     * after a start doubles the delay, from BACKOFF_FIRST_MS up to BACKOFF_MAX_MS. */
    c->fails = now - c->started_ms >= HEALTHY_AFTER_MS ? 1 : c->fails + 1;
    if (c->fails <= 1) {
        c->backoff_ms = 0;
    } else {
        uint64_t delay = (uint64_t)BACKOFF_FIRST_MS << (c->fails > 8 ? 6 : c->fails - 2);
        c->backoff_ms = delay > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : delay;
    }
    c->restart_at_ms = now + c->backoff_ms;
}

/* Reaps every dead child. While running, schedules replacements: a dead worker's claims
 * stay held until the persister has decided the records it left in its ring, so no
 * retry can run the operation again while its record may still land. Returns 0, or the
 * exit code the server must stop with (2: a child reported a configuration problem; 1:
 * a crash loop). */
static int
reap(supervisor_t *s, int running)
{
    int status, verdict = 0;
    pid_t pid;

    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        uint64_t now = cn__clock_mono_ms();
        char how[96];
        unsigned id;

        for (id = 0; id < nchildren(s) && s->children[id].pid != pid; id++)
            ;
        if (id == nchildren(s))
            continue;
        child_t *c = &s->children[id];
        c->pid = 0;
        describe_exit(status, how, sizeof(how));
        if (id < s->n) {
            /* Its parked requests died with it (their connections with them). */
            atomic_store(&s->app->shm.workers[id].parked, 0);
            c->draining = 1;
            c->drain_seq = s->persist
                               ? atomic_load(&cn__shm_ring(&s->app->shm, id)->next_seq) - 1
                               : 0;
            c->drain_until_ms = now + RING_DRAIN_MS;
        }
        if (!running) {
            cn_log_debug("%s %s", child_name(s, id), how);
            continue;
        }
        cn_log_error("%s (pid %d) %s", child_name(s, id), (int)pid, how);
        if (WIFEXITED(status) && WEXITSTATUS(status) == 2) {
            /* Exit 2: something a restart cannot fix (damaged data, configuration). */
            cn_log_error("%s reported a condition a restart cannot fix (its message is "
                         "above): stopping the server with exit code 2", child_name(s, id));
            verdict = 2;
            continue;
        }
        if (crash_loop(s, now)) {
            cn_log_error("server processes died %d times within %d s: stopping the server "
                         "(a crash loop; see the errors above)", CRASH_LIMIT + 1,
                         CRASH_WINDOW_MS / 1000);
            if (!verdict)
                verdict = 1;
            continue;
        }
        schedule_restart(c, now);
    }
    return verdict;
}

/* Releases drained workers; respawns the children that are due. Returns the poll
 * timeout until the next thing to do, or -1 when nothing is scheduled. */
static int
restart_due(supervisor_t *s)
{
    uint64_t now = cn__clock_mono_ms();
    int64_t next = -1;

    for (unsigned id = 0; id < nchildren(s); id++) {
        child_t *c = &s->children[id];
        if (c->pid)
            continue;
        if (c->draining) {
            /* No time limit: freeing the claims while a record of the dead worker may
             * still land would let a retry run the operation a second time. */
            if (ring_drained(s, id, c->drain_seq)) {
                release_worker(s, id);
            } else {
                if (now >= c->drain_until_ms) {
                    cn_log_warn("cn-worker-%u: still waiting for the persister to decide its "
                                "last records; its keys stay claimed and it stays down",
                                id);
                    c->drain_until_ms = now + RING_DRAIN_MS;
                }
                if (next < 0 || next > DRAIN_TICK_MS)
                    next = DRAIN_TICK_MS;
                continue;
            }
        }
        if (c->restart_at_ms <= now) {
            if (spawn(s, id) == 0) {
                if (id < s->n)
                    atomic_fetch_add(&s->app->shm.hdr->worker_restarts, 1);
                else if (id == s->n)
                    atomic_fetch_add(&s->app->shm.hdr->persist.restarts, 1);
                else
                    atomic_fetch_add(&s->app->shm.hdr->events.restarts, 1);
                cn_log_info("%s restarted (pid %d, backoff %llu ms)", child_name(s, id),
                            (int)c->pid, (unsigned long long)c->backoff_ms);
                continue;
            }
            c->backoff_ms = BACKOFF_MAX_MS;
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

/* SIGTERM to children [from, to), then a bounded wait; SIGKILL for what is left. */
static void
stop_range(supervisor_t *s, unsigned from, unsigned to, uint64_t wait_ms)
{
    uint64_t deadline = cn__clock_mono_ms() + wait_ms;

    for (unsigned id = from; id < to; id++) {
        if (s->children[id].pid)
            kill(s->children[id].pid, SIGTERM);
    }
    while (count_running(s, from, to)) {
        struct pollfd p = {s->sfd, POLLIN, 0};
        uint64_t now = cn__clock_mono_ms();
        int chld = 0;
        if (now >= deadline)
            break;
        if (poll(&p, 1, (int)(deadline - now)) > 0)
            read_signals(s, &chld);
        reap(s, 0);
    }
    for (unsigned id = from; id < to; id++) {
        if (s->children[id].pid) {
            cn_log_warn("%s did not stop in time: SIGKILL", child_name(s, id));
            kill(s->children[id].pid, SIGKILL);
            waitpid(s->children[id].pid, NULL, 0);
            s->children[id].pid = 0;
        }
    }
}

/* Workers first (they finish their requests, which may wait for the persister), then
 * the persister (it drains what they left in the rings). */
static void
stop_children(supervisor_t *s)
{
    stop_range(s, 0, s->n,
               CN_APP_DRAIN_TIMEOUT_MS + (uint64_t)s->app->cfg.commit_timeout_ms + STOP_GRACE_MS);
    if (s->persist)
        stop_range(s, s->n, s->n + 1, STOP_GRACE_MS + 10000);
    if (s->broadcast)
        stop_range(s, s->n + 1, s->n + 2, STOP_GRACE_MS);
}

/* Waits until children [from, to) reported ready. Returns -1 when they did, or the
 * exit code to stop with. */
static int
await_ready(supervisor_t *s, unsigned from, unsigned to)
{
    uint64_t deadline = cn__clock_mono_ms() + READY_TIMEOUT_MS;

    while (count_ready(s, from, to) < to - from) {
        struct pollfd p[2] = {{s->sfd, POLLIN, 0}, {s->ready_rd, POLLIN, 0}};
        uint64_t now = cn__clock_mono_ms();
        int chld = 0, verdict;

        if (now >= deadline) {
            fprintf(stderr, "cnerium: %s did not start within %d s\n",
                    to - from == 1 ? child_name(s, from) : "workers", READY_TIMEOUT_MS / 1000);
            return 1;
        }
        if (poll(p, 2, (int)(deadline - now)) < 0 && errno != EINTR)
            return 1;
        drain_ready(s);
        if (read_signals(s, &chld))
            return 0; /* stopped while starting: a clean stop */
        if (chld) {
            for (unsigned id = 0; id < nchildren(s); id++) {
                int status;
                pid_t pid = s->children[id].pid;
                if (pid && waitpid(pid, &status, WNOHANG) == pid) {
                    s->children[id].pid = 0;
                    verdict = WIFEXITED(status) && WEXITSTATUS(status) == 2 ? 2 : 1;
                    if (verdict == 1)
                        fprintf(stderr, "cnerium: %s died while starting\n",
                                child_name(s, id));
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

    /* The persister recovers the WAL before any worker accepts a request. */
    if (s->persist) {
        if (spawn(s, s->n))
            return 1;
        if ((verdict = await_ready(s, s->n, s->n + 1)) >= 0)
            return verdict;
    }
    if (s->broadcast) {
        if (spawn(s, s->n + 1))
            return 1;
        if ((verdict = await_ready(s, s->n + 1, s->n + 2)) >= 0)
            return verdict;
    }
    for (unsigned id = 0; id < s->n; id++) {
        if (spawn(s, id))
            return 1;
    }
    if ((verdict = await_ready(s, 0, s->n)) >= 0)
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
    print_listening(&c->app->cfg, c->port);
}

/* Opens and closes the store once, so a store that cannot be opened fails the start with
 * one message instead of a crash loop of workers. */
static int
check_store(const cn_config_t *cfg)
{
    char lmdb_dir[CN_CONFIG_PATH_MAX + 8];
    cn_store_t *store;
    int rc;

    if (cn_config_store_is_pg(cfg)) {
        /* The shared store: reachable, and its schema created or migrated here, once,
         * before any worker starts (hosts starting at once migrate each step once). */
        char err[512];
        cn_pg_t *pg;
        if (!(rc = cn__pg_open(cfg->store, &pg, err, sizeof(err)))) {
            rc = cn__pg_migrate(pg, err, sizeof(err));
            cn__pg_close(pg);
        }
        if (rc) {
            fprintf(stderr, "cnerium: cannot use the shared store: %s\n", err);
            return rc == CN_EVERSION || rc == CN_ECONFIG ? 2 : 1;
        }
        return 0;
    }
    snprintf(lmdb_dir, sizeof(lmdb_dir), "%s/lmdb", cfg->data_dir);
    if ((rc = cn__store_open(lmdb_dir, CN_APP_STORE_MAP_SIZE, &store))) {
        fprintf(stderr, "cnerium: cannot open the store in '%s': %s\n", lmdb_dir,
                cn_strerror(rc));
        return rc == -EACCES || rc == -EROFS || rc == -ENOSPC ? 2 : 1;
    }
    cn__store_close(store);
    return 0;
}

static int
run_server(cn_app_t *app)
{
    const cn_config_t *cfg = &app->cfg;
    supervisor_t s;
    sigset_t sigs, old_mask;
    uint16_t port = 0, ws_port = 0;
    int lock_fd, rc, exit_code = 1, ready[2] = {-1, -1};

    memset(&s, 0, sizeof(s));
    s.app = app;
    s.n = cfg->single_process ? 1 : (unsigned)cfg->workers;
    s.listen_fd = s.sfd = s.ready_rd = s.ready_wr = s.ws_fd = -1;
    s.self = getpid();
    app->server_pid = s.self;
    app->persist_efd = app->broadcast_efd = -1;
    for (unsigned w = 0; w < CN_SHM_MAX_WORKERS; w++)
        app->ack_efd[w] = -1;

    if ((rc = mkdir_p(cfg->data_dir))) {
        fprintf(stderr, "cnerium: cannot create data dir '%s': %s; pass a writable "
                        "--data-dir\n", cfg->data_dir, cn_strerror(rc));
        return 2;
    }
    lock_fd = lock_data_dir(cfg->data_dir, LOCK_WAIT_MS);
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
    s.persist = !cfg->single_process;
    s.broadcast = s.persist && cfg->realtime_enabled;
    if ((rc = cn__shm_create_rings(cfg->inflight_slots, s.n, app->nops,
                                   s.persist ? CN_APP_RING_BYTES : 0, &app->shm))) {
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
    /* WebSocket commands are sent here by the broadcaster (realtime/command.h). */
    app->http_addr_len = sizeof(app->http_addr);
    if (getsockname(s.listen_fd, (struct sockaddr *)&app->http_addr, &app->http_addr_len))
        app->http_addr_len = 0;
    if (s.broadcast &&
        (rc = cn__listen_tcp(cfg->realtime_host, cfg->realtime_port, &s.ws_fd, &ws_port))) {
        fprintf(stderr, "cnerium: cannot listen for WebSocket clients on %s:%u: %s; pass "
                        "another --realtime-port or --realtime-host\n", cfg->realtime_host,
                (unsigned)cfg->realtime_port,
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
        pipe2(ready, O_CLOEXEC | O_NONBLOCK) ||
        (app->persist_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0 ||
        (app->broadcast_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0) {
        fprintf(stderr, "cnerium: cannot set up the supervisor: %s\n", strerror(errno));
        goto out_signals;
    }
    for (unsigned w = 0; w < s.n; w++) {
        if ((app->ack_efd[w] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0) {
            fprintf(stderr, "cnerium: cannot create an eventfd: %s\n", strerror(errno));
            goto out_signals;
        }
    }
    s.ready_rd = ready[0];
    s.ready_wr = ready[1];

    rc = serve(&s);
    if (rc < 0) {
        if (s.broadcast)
            printf(strchr(cfg->realtime_host, ':') ? "realtime on ws://[%s]:%u%s\n"
                                                   : "realtime on ws://%s:%u%s\n",
                   cfg->realtime_host, (unsigned)ws_port, cfg->realtime_path);
        print_listening(cfg, port);
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
    if (app->persist_efd >= 0)
        close(app->persist_efd);
    if (app->broadcast_efd >= 0)
        close(app->broadcast_efd);
    app->broadcast_efd = -1;
    if (s.ws_fd >= 0)
        close(s.ws_fd);
    for (unsigned w = 0; w < CN_SHM_MAX_WORKERS; w++) {
        if (app->ack_efd[w] >= 0)
            close(app->ack_efd[w]);
        app->ack_efd[w] = -1;
    }
    app->persist_efd = -1;
    cn__shm_destroy(&app->shm);
    app->server_pid = 0;
    close(lock_fd);
    if (exit_code == 0)
        cn_log_info("stopped");
    return exit_code;
}

/* ---- the public entry points (cnerium/app.h) ---- */

int
cn_app_run(cn_app_t *app)
{
    char err[512];

    cn__log_set_level(app->cfg.log_level);
    if (cn_config_validate(&app->cfg, err, sizeof(err))) {
        fprintf(stderr, "cnerium: %s\n", err);
        return 2;
    }
    return run_server(app);
}

void
cn_app_stop(cn_app_t *app)
{
    /* From a worker process this stops the whole server: the supervisor drains all. */
    pid_t server = app->server_pid;

    kill(server > 0 ? server : getpid(), SIGTERM);
}
