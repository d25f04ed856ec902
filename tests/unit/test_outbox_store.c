/*
 * tests/unit/test_outbox_store.c - the client outbox through its public API
 * (cnerium/outbox.h): the durable queue (spec validation, enqueue, get, list, stats,
 * requeue, compaction, ids that never repeat) and the worker (ticks against a tiny
 * HTTP/1.1 server in this process: Done, Failed, retries up to max_attempts, Retry-After,
 * request-in-progress, batch limit, passive offline detection, the probe, per-target FIFO,
 * other targets not starved by a blocked backlog, the worker lock), then crashes: kill -9
 * of a process enqueueing (one at a time and in batches), kill -9 of a worker mid-tick
 * (with attempts left and at the last one), a torn tail on the LMDB file, and data files
 * that are not LMDB or are cut short.
 *
 * Time is a parameter of the API, so every test runs on a fixed fake clock (NOW) and moves
 * it by hand; nothing sleeps to synchronize and no assertion depends on the wall clock.
 * The server is one thread: it answers one request per connection ("Connection: close")
 * with the status, Retry-After and body routed by path, and records every request (method,
 * path, headers, body, Idempotency-Key) for the test to inspect. It can hold the n-th
 * request until released, which is how a worker is killed with a request in flight.
 *
 * Every test has its own mkdtemp directory under the suite's; every forked child asks for
 * SIGKILL when its parent dies, has an alarm as a last resort, and is reaped by PID within
 * a bound (or SIGKILLed and reaped). Children are forked with the server thread running;
 * they never touch it (they only connect to it).
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cnerium/error.h"
#include "cnerium/outbox.h"
#include "unit.h"

/* The fake clock: 2023-11-14T22:13:20Z. */
#define NOW INT64_C(1700000000000)
#define MAP_SIZE (UINT64_C(64) << 20)
#define IO_BOUND_MS 20000   /* one read or write of the test server, one pipe read */
#define REAP_BOUND_MS 20000 /* a child's exit after it was told to (or killed) */
#define HOLD_BOUND_MS 60000 /* how long the server holds a request at most */
#define TICK_BOUND 64       /* ticks a test may need to drain its operations */

static char suite_dir[256];

/* ---- helpers: directories, children -------------------------------------------------- */

/* A fresh directory for one test under the suite's; the outbox lives in <it>/ob. */
static void
test_dir(char *out, size_t cap, const char *tag)
{
    snprintf(out, cap, "%s/%s-XXXXXX", suite_dir, tag);
    CU_ASSERT_PTR_NOT_NULL_FATAL(mkdtemp(out));
}

static void
ob_path(char *out, size_t cap, const char *base)
{
    snprintf(out, cap, "%s/ob", base);
}

/* In a forked child, first thing: die with the parent, and in any case within a minute. */
static void
child_setup(pid_t parent)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)
        _exit(99);
    alarm(90);
}

/* SIGKILLs pid and reaps it; 1 when it died of that signal. */
static int
kill_and_reap(pid_t pid)
{
    int status = 0;

    kill(pid, SIGKILL);
    if (unit_reap_within(pid, REAP_BOUND_MS, &status))
        return 0;
    return WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL;
}

/* Reads exactly n bytes from fd, each wait bounded. 0, or -1 on EOF, error or timeout. */
static int
read_full(int fd, void *buf, size_t n, int timeout_ms)
{
    size_t got = 0;

    while (got < n) {
        struct pollfd p = {fd, POLLIN, 0};
        ssize_t r;

        if (poll(&p, 1, timeout_ms) <= 0)
            return -1;
        r = read(fd, (char *)buf + got, n - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        got += (size_t)r;
    }
    return 0;
}

static int
write_full(int fd, const void *buf, size_t n)
{
    size_t put = 0;

    while (put < n) {
        ssize_t w = write(fd, (const char *)buf + put, n - put);

        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        put += (size_t)w;
    }
    return 0;
}

static const char *found_name;
static char found_path[1024];

static int
find_entry(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
    (void)st;
    if (type == FTW_F && !strcmp(path + ftw->base, found_name)) {
        snprintf(found_path, sizeof(found_path), "%s", path);
        return 1;
    }
    return 0;
}

/* The path of the file called name under dir (first found), or NULL. */
static const char *
find_file(const char *dir, const char *name)
{
    found_name = name;
    found_path[0] = '\0';
    return nftw(dir, find_entry, 16, FTW_PHYS) == 1 ? found_path : NULL;
}

/* ---- helpers: the outbox ----------------------------------------------------------- */

/* Defaults made exact: no jitter (backoff = 1 s * 2^(attempt-1)), generous timeouts for a
 * loaded machine, a small map. */
static cn_outbox_config_t
test_config(void)
{
    cn_outbox_config_t c;

    cn_outbox_config_default(&c);
    c.retry.jitter = 0;
    c.retry.base_delay_ms = 1000;
    c.retry.factor = 2.0;
    c.retry.max_delay_ms = 60000;
    c.retry.max_attempts = 8;
    c.request_timeout_ms = 30000;
    c.connect_timeout_ms = 15000;
    c.lease_ms = 60000;
    c.map_size = MAP_SIZE;
    return c;
}

static cn_outbox_t *
open_ob(const char *dir, const cn_outbox_config_t *cfg)
{
    cn_outbox_t *ob = NULL;
    int rc = cn_outbox_open(dir, cfg, &ob);

    if (rc)
        fprintf(stderr, "cn_outbox_open(%s): %s\n", dir, cn_strerror(rc));
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(ob);
    return ob;
}

static cn_outbox_spec_t
spec_of(const char *method, const char *url, const char *payload)
{
    cn_outbox_spec_t s;

    memset(&s, 0, sizeof(s));
    s.method = method;
    s.url = url;
    s.payload = payload;
    s.payload_len = payload ? strlen(payload) : 0;
    return s;
}

static void
enqueue_ok(cn_outbox_t *ob, const cn_outbox_spec_t *spec, int64_t now, char id[CN_OUTBOX_ID_SIZE])
{
    int rc = cn_outbox_enqueue(ob, spec, now, id);

    if (rc)
        fprintf(stderr, "enqueue: %s\n", cn_strerror(rc));
    CU_ASSERT_EQUAL_FATAL(rc, 0);
}

static cn_outbox_op_t *
get_op(cn_outbox_t *ob, const char *id)
{
    cn_outbox_op_t *op = NULL;
    int rc = cn_outbox_get(ob, id, &op);

    if (rc)
        fprintf(stderr, "get %s: %s\n", id, cn_strerror(rc));
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(op);
    return op;
}

static cn_outbox_stats_t
stats_of(cn_outbox_t *ob)
{
    cn_outbox_stats_t st;

    memset(&st, 0xee, sizeof(st));
    CU_ASSERT_EQUAL_FATAL(cn_outbox_stats(ob, &st), 0);
    return st;
}

static int
op_status(cn_outbox_t *ob, const char *id)
{
    cn_outbox_op_t *op = get_op(ob, id);
    int s = (int)op->status;

    cn_outbox_op_free(op);
    return s;
}

static uint32_t
op_attempt(cn_outbox_t *ob, const char *id)
{
    cn_outbox_op_t *op = get_op(ob, id);
    uint32_t a = op->attempt;

    cn_outbox_op_free(op);
    return a;
}

static int
is_id(const char *s)
{
    for (int i = 0; i < CN_OUTBOX_ID_LEN; i++) {
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return 0;
    }
    return s[CN_OUTBOX_ID_LEN] == '\0';
}

/* One tick with its invariants checked: the return value is what was claimed, and every
 * claimed operation ended Done, retried or Failed. */
static int
do_tick(cn_outbox_t *ob, int64_t now, cn_outbox_tick_t *r)
{
    cn_outbox_tick_t local;
    int n;

    if (!r)
        r = &local;
    memset(r, 0xee, sizeof(*r));
    n = cn_outbox_tick(ob, now, r);
    CU_ASSERT(n >= 0);
    if (n < 0) {
        fprintf(stderr, "tick: %s\n", cn_strerror(n));
        memset(r, 0, sizeof(*r));
        return n;
    }
    CU_ASSERT_EQUAL(r->claimed, (uint32_t)n);
    CU_ASSERT_EQUAL(r->done + r->retried + r->failed + r->unreached, r->claimed);
    return n;
}

/* Everything listed, in listing order. */
typedef struct listing {
    size_t n;
    char ids[4096][CN_OUTBOX_ID_SIZE];
    uint64_t seq[4096];
    int status[4096];
    int stop_after; /* 0: never stop */
} listing_t;

static int
collect(void *ctx, const cn_outbox_op_t *op)
{
    listing_t *l = ctx;

    if (l->n < 4096) {
        memcpy(l->ids[l->n], op->id, CN_OUTBOX_ID_SIZE);
        l->seq[l->n] = op->seq;
        l->status[l->n] = (int)op->status;
    }
    l->n++;
    if (l->stop_after && (int)l->n >= l->stop_after)
        return 77;
    return 0;
}

static listing_t listing; /* large: static, one test at a time */

static size_t
list_ids(cn_outbox_t *ob, int status)
{
    memset(&listing, 0, sizeof(listing));
    CU_ASSERT_EQUAL(cn_outbox_list(ob, status, collect, &listing), 0);
    return listing.n;
}

static int
listed(const char *id)
{
    int times = 0;

    for (size_t i = 0; i < listing.n && i < 4096; i++)
        times += !strcmp(listing.ids[i], id);
    return times;
}

static int
cmp_id(const void *a, const void *b)
{
    return memcmp(a, b, CN_OUTBOX_ID_SIZE);
}

/* ---- the test server ----------------------------------------------------------------- */

#define SRV_ROUTES 16
#define SRV_REQS 1024
#define SRV_HEAD_MAX (64 * 1024)

typedef struct route {
    char path[128];
    int status;
    char retry_after[64];
    char content_type[64];
    const char *body; /* static storage; NULL: the echo body */
    size_t body_len;
} route_t;

typedef struct req {
    uint64_t seq; /* 1, 2, ... in arrival order */
    char method[16];
    char path[256];
    char key[128];   /* the Idempotency-Key value ("" if none) */
    int key_headers; /* how many Idempotency-Key headers */
    char *head;      /* the header lines (owned) */
    char *body;      /* owned */
    size_t body_len;
} req_t;

typedef struct srv {
    int lfd, wake[2], port, started;
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    route_t routes[SRV_ROUTES];
    int nroutes;
    req_t reqs[SRV_REQS];
    uint64_t total;
    uint64_t hold_at; /* hold request number hold_at until released (0: never) */
    int held, released;
} srv_t;

static srv_t srv_a, srv_b;

static int
srv_read_some(int c, char **buf, size_t *len, size_t *cap)
{
    struct pollfd p = {c, POLLIN, 0};
    ssize_t r;

    if (*cap - *len < 4096) {
        size_t ncap = *cap * 2 + 8192;
        char *nb = realloc(*buf, ncap);

        if (!nb)
            return -1;
        *buf = nb;
        *cap = ncap;
    }
    if (poll(&p, 1, IO_BOUND_MS) <= 0)
        return -1;
    do
        r = read(c, *buf + *len, *cap - *len - 1);
    while (r < 0 && errno == EINTR);
    if (r > 0) {
        *len += (size_t)r;
        (*buf)[*len] = '\0';
    }
    return (int)(r > 0 ? 1 : r);
}

static int
srv_send(int c, const void *p, size_t n)
{
    size_t put = 0;

    while (put < n) {
        struct pollfd pf = {c, POLLOUT, 0};
        ssize_t w;

        if (poll(&pf, 1, IO_BOUND_MS) <= 0)
            return -1;
        w = send(c, (const char *)p + put, n - put, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        put += (size_t)w;
    }
    return 0;
}

/* The value of header `name` in the header block [p, end), trimmed, into out; 1 if found.
 * Counts occurrences in *times when not NULL. */
static int
srv_header(const char *p, const char *end, const char *name, char *out, size_t cap, int *times)
{
    size_t nl = strlen(name);
    int found = 0;

    if (times)
        *times = 0;
    while (p < end) {
        const char *eol = memmem(p, (size_t)(end - p), "\r\n", 2);
        const char *v, *ve;

        if (!eol)
            eol = end;
        if ((size_t)(eol - p) > nl && p[nl] == ':' && !strncasecmp(p, name, nl)) {
            v = p + nl + 1;
            while (v < eol && (*v == ' ' || *v == '\t'))
                v++;
            ve = eol;
            while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
                ve--;
            if (!found && out) {
                size_t n = (size_t)(ve - v) < cap - 1 ? (size_t)(ve - v) : cap - 1;

                memcpy(out, v, n);
                out[n] = '\0';
            }
            found = 1;
            if (times)
                (*times)++;
        }
        p = eol + 2;
    }
    return found;
}

static const char *
reason(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 400:
        return "Bad Request";
    case 409:
        return "Conflict";
    case 429:
        return "Too Many Requests";
    case 503:
        return "Service Unavailable";
    default:
        return "Status";
    }
}

/* Serves one connection: one request, one answer. */
static void
srv_serve(srv_t *s, int c)
{
    char *buf = NULL, *hend, *body = NULL, val[128];
    size_t len = 0, cap = 0, head_len, body_len = 0, body_cap = 0;
    char method[16] = "", path[256] = "", echo[512], hdr[512];
    int chunked = 0, keys = 0;
    unsigned long long clen = 0;
    route_t route;
    req_t *rq;
    uint64_t seq;

    for (;;) {
        if (buf && (hend = memmem(buf, len, "\r\n\r\n", 4)))
            break;
        if (len >= SRV_HEAD_MAX || srv_read_some(c, &buf, &len, &cap) <= 0)
            goto out;
    }
    head_len = (size_t)(hend - buf) + 4;
    {
        const char *sp1 = memchr(buf, ' ', head_len), *sp2;

        if (!sp1 || (size_t)(sp1 - buf) >= sizeof(method))
            goto out;
        sp2 = memchr(sp1 + 1, ' ', head_len - (size_t)(sp1 + 1 - buf));
        if (!sp2 || (size_t)(sp2 - sp1 - 1) >= sizeof(path))
            goto out;
        memcpy(method, buf, (size_t)(sp1 - buf));
        memcpy(path, sp1 + 1, (size_t)(sp2 - sp1 - 1));
    }
    {
        const char *lines = memmem(buf, head_len, "\r\n", 2) + 2;

        if (srv_header(lines, hend, "Content-Length", val, sizeof(val), NULL))
            clen = strtoull(val, NULL, 10);
        if (srv_header(lines, hend, "Transfer-Encoding", val, sizeof(val), NULL))
            chunked = strstr(val, "chunked") != NULL;
        if (srv_header(lines, hend, "Expect", val, sizeof(val), NULL) &&
            !strcasecmp(val, "100-continue") && srv_send(c, "HTTP/1.1 100 Continue\r\n\r\n", 25))
            goto out;
        val[0] = '\0';
        srv_header(lines, hend, "Idempotency-Key", val, sizeof(val), &keys);
    }
    if (chunked) {
        size_t p = head_len;

        for (;;) {
            char *eol;
            unsigned long long n;

            while (!(eol = memmem(buf + p, len - p, "\r\n", 2))) {
                if (srv_read_some(c, &buf, &len, &cap) <= 0)
                    goto out;
            }
            n = strtoull(buf + p, NULL, 16);
            p = (size_t)(eol - buf) + 2;
            if (n == 0)
                break; /* no trailers from curl; the final CRLF may still be in flight */
            while (len - p < n + 2) {
                if (srv_read_some(c, &buf, &len, &cap) <= 0)
                    goto out;
            }
            if (body_len + n + 1 > body_cap) {
                body_cap = (body_len + n + 1) * 2;
                if (!(body = realloc(body, body_cap)))
                    goto out;
            }
            memcpy(body + body_len, buf + p, n);
            body_len += n;
            p += n + 2;
        }
    } else {
        if (clen > (64u << 20))
            goto out;
        while (len - head_len < clen) {
            if (srv_read_some(c, &buf, &len, &cap) <= 0)
                goto out;
        }
        body_len = (size_t)clen;
        if (!(body = malloc(body_len + 1)))
            goto out;
        memcpy(body, buf + head_len, body_len);
    }

    /* Record it, find its route, hold it if asked to. */
    pthread_mutex_lock(&s->mu);
    seq = ++s->total;
    if (seq <= SRV_REQS) {
        rq = &s->reqs[seq - 1];
        rq->seq = seq;
        snprintf(rq->method, sizeof(rq->method), "%s", method);
        snprintf(rq->path, sizeof(rq->path), "%s", path);
        snprintf(rq->key, sizeof(rq->key), "%s", val);
        rq->key_headers = keys;
        rq->head = malloc(head_len + 1);
        if (rq->head) {
            memcpy(rq->head, buf, head_len);
            rq->head[head_len] = '\0';
        }
        rq->body = body;
        rq->body_len = body_len;
        body = NULL;
    }
    memset(&route, 0, sizeof(route));
    route.status = 200;
    {
        size_t plen = strcspn(path, "?");

        for (int i = 0; i < s->nroutes; i++) {
            if (strlen(s->routes[i].path) == plen && !strncmp(s->routes[i].path, path, plen))
                route = s->routes[i];
        }
    }
    {
        unsigned n = 0;

        for (uint64_t i = 0; i < seq && i < SRV_REQS; i++)
            n += !strcmp(s->reqs[i].key, val);
        snprintf(echo, sizeof(echo), "{\"key\":\"%s\",\"n\":%u,\"path\":\"%s\"}", val, n, path);
    }
    if (s->hold_at && seq == s->hold_at) {
        struct timespec dl;

        s->held = 1;
        pthread_cond_broadcast(&s->cv);
        clock_gettime(CLOCK_MONOTONIC, &dl);
        dl.tv_sec += HOLD_BOUND_MS / 1000;
        while (!s->released) {
            if (pthread_cond_timedwait(&s->cv, &s->mu, &dl) == ETIMEDOUT)
                break;
        }
    }
    pthread_mutex_unlock(&s->mu);

    {
        const char *rb = route.body ? route.body : echo;
        size_t rlen = route.body ? route.body_len : strlen(echo);
        int n = snprintf(hdr, sizeof(hdr),
                         "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                         "Connection: close\r\n%s%s%s\r\n",
                         route.status, reason(route.status),
                         route.content_type[0] ? route.content_type : "application/json", rlen,
                         route.retry_after[0] ? "Retry-After: " : "", route.retry_after,
                         route.retry_after[0] ? "\r\n" : "");

        if (srv_send(c, hdr, (size_t)n) == 0)
            (void)srv_send(c, rb, rlen);
        shutdown(c, SHUT_WR);
    }
out:
    free(body);
    free(buf);
}

static void *
srv_main(void *arg)
{
    srv_t *s = arg;

    for (;;) {
        struct pollfd p[2] = {{s->lfd, POLLIN, 0}, {s->wake[0], POLLIN, 0}};
        int c;

        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (p[1].revents)
            break;
        if (!(p[0].revents & POLLIN))
            continue;
        if ((c = accept4(s->lfd, NULL, NULL, SOCK_CLOEXEC)) < 0)
            continue;
        srv_serve(s, c);
        close(c);
    }
    return NULL;
}

/* A socket bound to 127.0.0.1 on a free port, not listening: connecting to it is refused
 * (and nobody else can take the port while it is open). -1 on error. */
static int
bound_socket(int *port)
{
    struct sockaddr_in a = {.sin_family = AF_INET};
    socklen_t al = sizeof(a);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;

    if (fd < 0)
        return -1;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) || getsockname(fd, (struct sockaddr *)&a, &al)) {
        close(fd);
        return -1;
    }
    *port = ntohs(a.sin_port);
    return fd;
}

/* Starts s listening on fd (a bound_socket) or, with fd < 0, on a new one. */
static void
srv_start(srv_t *s, int fd)
{
    pthread_condattr_t ca;

    memset(s, 0, sizeof(*s));
    s->lfd = fd >= 0 ? fd : bound_socket(&s->port);
    CU_ASSERT_FATAL(s->lfd >= 0);
    if (fd >= 0) {
        struct sockaddr_in a;
        socklen_t al = sizeof(a);

        CU_ASSERT_FATAL(getsockname(fd, (struct sockaddr *)&a, &al) == 0);
        s->port = ntohs(a.sin_port);
    }
    CU_ASSERT_FATAL(listen(s->lfd, 128) == 0);
    CU_ASSERT_FATAL(pipe2(s->wake, O_CLOEXEC) == 0);
    pthread_mutex_init(&s->mu, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&s->cv, &ca);
    pthread_condattr_destroy(&ca);
    CU_ASSERT_FATAL(pthread_create(&s->th, NULL, srv_main, s) == 0);
    s->started = 1;
}

static void
srv_stop(srv_t *s)
{
    struct timespec ts;

    if (!s->started)
        return;
    pthread_mutex_lock(&s->mu);
    s->released = 1;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    (void)!write(s->wake[1], "x", 1);
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += IO_BOUND_MS / 1000 * 2;
    if (pthread_timedjoin_np(s->th, NULL, &ts)) {
        /* Leaked on purpose: the thread may still use s. */
        CU_FAIL("the test server did not stop");
        pthread_detach(s->th);
        s->started = 0;
        return;
    }
    for (uint64_t i = 0; i < s->total && i < SRV_REQS; i++) {
        free(s->reqs[i].head);
        free(s->reqs[i].body);
    }
    close(s->lfd);
    close(s->wake[0]);
    close(s->wake[1]);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    s->started = 0;
}

/* Routes path (without query) to status, with a Retry-After (or NULL), a content type (or
 * NULL for JSON) and a body (static storage, or NULL for the echo body). Replaces an
 * existing route of that path. */
static void
srv_route(srv_t *s, const char *path, int status, const char *retry_after, const char *ctype,
          const char *body, size_t body_len)
{
    route_t *r = NULL;

    pthread_mutex_lock(&s->mu);
    for (int i = 0; i < s->nroutes; i++) {
        if (!strcmp(s->routes[i].path, path))
            r = &s->routes[i];
    }
    if (!r && s->nroutes < SRV_ROUTES)
        r = &s->routes[s->nroutes++];
    if (r) {
        snprintf(r->path, sizeof(r->path), "%s", path);
        r->status = status;
        snprintf(r->retry_after, sizeof(r->retry_after), "%s", retry_after ? retry_after : "");
        snprintf(r->content_type, sizeof(r->content_type), "%s", ctype ? ctype : "");
        r->body = body;
        r->body_len = body_len;
    }
    pthread_mutex_unlock(&s->mu);
    CU_ASSERT_PTR_NOT_NULL(r);
}

/* Requests received with Idempotency-Key key. */
static unsigned
srv_count(srv_t *s, const char *key)
{
    unsigned n = 0;

    pthread_mutex_lock(&s->mu);
    for (uint64_t i = 0; i < s->total && i < SRV_REQS; i++)
        n += !strcmp(s->reqs[i].key, key);
    pthread_mutex_unlock(&s->mu);
    return n;
}

static uint64_t
srv_total(srv_t *s)
{
    uint64_t n;

    pthread_mutex_lock(&s->mu);
    n = s->total;
    pthread_mutex_unlock(&s->mu);
    return n;
}

/* A deep copy of the first (which = 0) or last (which = 1) request with key; NULL if
 * none. Free with req_free. */
static req_t *
srv_req(srv_t *s, const char *key, int which)
{
    req_t *out = NULL;
    const req_t *r = NULL;

    pthread_mutex_lock(&s->mu);
    for (uint64_t i = 0; i < s->total && i < SRV_REQS; i++) {
        if (!strcmp(s->reqs[i].key, key)) {
            r = &s->reqs[i];
            if (!which)
                break;
        }
    }
    if (r && (out = malloc(sizeof(*out)))) {
        *out = *r;
        out->head = r->head ? strdup(r->head) : NULL;
        out->body = malloc(r->body_len + 1);
        if (out->body) {
            if (r->body_len)
                memcpy(out->body, r->body, r->body_len);
            out->body[r->body_len] = '\0';
        }
    }
    pthread_mutex_unlock(&s->mu);
    return out;
}

static void
req_free(req_t *r)
{
    if (r) {
        free(r->head);
        free(r->body);
        free(r);
    }
}

/* Waits (bounded) until the server holds its hold_at-th request; 1 if it does. */
static int
srv_wait_held(srv_t *s, uint64_t timeout_ms)
{
    struct timespec dl;
    int held;

    clock_gettime(CLOCK_MONOTONIC, &dl);
    dl.tv_sec += (time_t)(timeout_ms / 1000);
    pthread_mutex_lock(&s->mu);
    while (!s->held) {
        if (pthread_cond_timedwait(&s->cv, &s->mu, &dl) == ETIMEDOUT)
            break;
    }
    held = s->held;
    pthread_mutex_unlock(&s->mu);
    return held;
}

static void
srv_hold(srv_t *s, uint64_t at)
{
    pthread_mutex_lock(&s->mu);
    s->hold_at = at;
    s->held = 0;
    s->released = 0;
    pthread_mutex_unlock(&s->mu);
}

static void
srv_release(srv_t *s)
{
    pthread_mutex_lock(&s->mu);
    s->released = 1;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

static void
url_of(char *out, size_t cap, int port, const char *path)
{
    snprintf(out, cap, "http://127.0.0.1:%d%s", port, path);
}

/* ---- the queue ----------------------------------------------------------------------- */

static void
test_open(void)
{
    char base[512], dir[600];
    cn_outbox_config_t cfg = test_config();
    cn_outbox_t *ob = (cn_outbox_t *)&cfg;
    struct stat st;

    test_dir(base, sizeof(base), "open");
    /* A directory that does not exist yet is created (one level). */
    ob_path(dir, sizeof(dir), base);
    ob = NULL;
    CU_ASSERT_EQUAL_FATAL(cn_outbox_open(dir, NULL, &ob), 0);
    CU_ASSERT_PTR_NOT_NULL(ob);
    CU_ASSERT(stat(dir, &st) == 0 && S_ISDIR(st.st_mode));
    cn_outbox_close(ob);
    cn_outbox_close(NULL);

    /* A bad configuration is refused, the out-param untouched. */
    cfg.retry.max_attempts = 0;
    ob = (cn_outbox_t *)&cfg;
    CU_ASSERT_EQUAL(cn_outbox_open(dir, &cfg, &ob), -EINVAL);
    CU_ASSERT_PTR_EQUAL(ob, (cn_outbox_t *)&cfg);
    cfg = test_config();
    cfg.retry.factor = 0.5;
    CU_ASSERT_EQUAL(cn_outbox_open(dir, &cfg, &ob), -EINVAL);
    CU_ASSERT_PTR_EQUAL(ob, (cn_outbox_t *)&cfg);

    /* Reopening an existing outbox works, with a different configuration too. */
    cfg = test_config();
    ob = open_ob(dir, &cfg);
    {
        cn_outbox_stats_t st2 = stats_of(ob);

        CU_ASSERT_EQUAL(st2.total, 0);
        CU_ASSERT_EQUAL(st2.enqueued_total, 0);
        CU_ASSERT_EQUAL(st2.next_due_ms, -1);
        CU_ASSERT_EQUAL(st2.oldest_pending_ms, -1);
    }
    cn_outbox_close(ob);
}

/* Expects spec to be refused with want (by the check and by both enqueues), a reason
 * given, and nothing stored. */
static void
expect_refused(cn_outbox_t *ob, const cn_outbox_spec_t *spec, int want, const char *what)
{
    const char *why = NULL;
    char id[CN_OUTBOX_ID_SIZE] = "untouched";
    char ids[2][CN_OUTBOX_ID_SIZE];
    cn_outbox_spec_t two[2];
    int rc = cn_outbox_spec_check(spec, &why);
    cn_outbox_stats_t st;

    CU_ASSERT_EQUAL(rc, want);
    if (rc != want)
        fprintf(stderr, "  %s: spec_check gave %d (%s), want %d\n", what, rc,
                rc ? cn_strerror(rc) : "accepted", want);
    CU_ASSERT(why != NULL && why[0] != '\0');
    CU_ASSERT_EQUAL(cn_outbox_enqueue(ob, spec, NOW, id), want);
    CU_ASSERT_STRING_EQUAL(id, "untouched");

    /* A good spec and the bad one in one batch: none stored. */
    two[0] = spec_of("POST", "http://127.0.0.1:9/fine", "{}");
    two[1] = *spec;
    CU_ASSERT_EQUAL(cn_outbox_enqueue_many(ob, two, 2, NOW, ids), want);

    st = stats_of(ob);
    CU_ASSERT_EQUAL(st.total, 0);
    CU_ASSERT_EQUAL(st.enqueued_total, 0);
}

static void
expect_accepted(const cn_outbox_spec_t *spec, const char *what)
{
    const char *why = NULL;
    int rc = cn_outbox_spec_check(spec, &why);

    CU_ASSERT_EQUAL(rc, 0);
    if (rc)
        fprintf(stderr, "  %s: refused: %s (%s)\n", what, cn_strerror(rc), why ? why : "");
}

static void
test_spec_validation(void)
{
    char base[512], dir[600];
    cn_outbox_t *ob;
    cn_outbox_spec_t s;
    static const char *const good_headers[] = {"Content-Type: application/json",
                                               "X-Tenant-Id: acme"};
    const char *hdr[CN_OUTBOX_HEADERS_MAX + 1];
    char *big;
    size_t big_len = CN_OUTBOX_URL_MAX + CN_OUTBOX_HEADER_MAX + 64;

    test_dir(base, sizeof(base), "spec");
    ob_path(dir, sizeof(dir), base);
    ob = open_ob(dir, NULL);
    big = malloc(big_len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(big);

    s = spec_of("POST", "http://127.0.0.1:9/orders", "{}");
    s.headers = good_headers;
    s.header_count = 2;
    expect_accepted(&s, "a good spec");
    static const char *const methods[] = {"POST", "PUT", "PATCH", "DELETE"};
    for (size_t i = 0; i < 4; i++) {
        s.method = methods[i];
        expect_accepted(&s, methods[i]);
    }
    s.url = "https://example.com/a?b=c#d";
    expect_accepted(&s, "https");

    /* Methods. */
    static const char *const bad_methods[] = {"GET", "HEAD",  "OPTIONS", "CONNECT", "TRACE",
                                              "",    "POST ", "PO ST",   "POST\r\n"};
    s = spec_of("POST", "http://127.0.0.1:9/orders", "{}");
    for (size_t i = 0; i < sizeof(bad_methods) / sizeof(bad_methods[0]); i++) {
        s.method = bad_methods[i];
        expect_refused(ob, &s, -EINVAL, bad_methods[i]);
    }
    s.method = NULL;
    expect_refused(ob, &s, -EINVAL, "NULL method");

    /* URLs. */
    static const char *const bad_urls[] = {"",
                                           "ftp://127.0.0.1/x",
                                           "127.0.0.1:9/x",
                                           "file:///etc/passwd",
                                           "/orders",
                                           "http://127.0.0.1:9/a\r\nX-Evil: 1",
                                           "http://127.0.0.1:9/a\nb"};
    s = spec_of("POST", "http://127.0.0.1:9/orders", "{}");
    for (size_t i = 0; i < sizeof(bad_urls) / sizeof(bad_urls[0]); i++) {
        s.url = bad_urls[i];
        expect_refused(ob, &s, -EINVAL, bad_urls[i]);
    }
    s.url = NULL;
    expect_refused(ob, &s, -EINVAL, "NULL url");
    /* The longest URL is fine, one more byte is too big. */
    memcpy(big, "http://127.0.0.1:9/", 19);
    memset(big + 19, 'u', CN_OUTBOX_URL_MAX - 19);
    big[CN_OUTBOX_URL_MAX] = '\0';
    s.url = big;
    expect_accepted(&s, "the longest url");
    big[CN_OUTBOX_URL_MAX] = 'u';
    big[CN_OUTBOX_URL_MAX + 1] = '\0';
    expect_refused(ob, &s, CN_ETOOBIG, "a url one byte too long");

    /* Kind. */
    s = spec_of("POST", "http://127.0.0.1:9/orders", "{}");
    memset(big, 'k', CN_OUTBOX_KIND_MAX);
    big[CN_OUTBOX_KIND_MAX] = '\0';
    s.kind = big;
    expect_accepted(&s, "the longest kind");
    big[CN_OUTBOX_KIND_MAX] = 'k';
    big[CN_OUTBOX_KIND_MAX + 1] = '\0';
    expect_refused(ob, &s, CN_ETOOBIG, "a kind one byte too long");

    /* Headers. */
    static const char *const bad_headers[] = {"NoColon",
                                              "X-A: b\r\nX-B: c",
                                              "X-A: b\n",
                                              "X-A: b\r",
                                              "Idempotency-Key: mine",
                                              "idempotency-key: mine",
                                              "IDEMPOTENCY-KEY:mine",
                                              /* framing and hop-by-hop: the transport's */
                                              "Content-Length: 5",
                                              "transfer-encoding: chunked",
                                              "Connection: close",
                                              "Keep-Alive: timeout=5",
                                              "TE: trailers",
                                              "Trailer: X-Sum",
                                              "Upgrade: websocket"};
    s = spec_of("POST", "http://127.0.0.1:9/orders", "{}");
    for (size_t i = 0; i < sizeof(bad_headers) / sizeof(bad_headers[0]); i++) {
        const char *one[2] = {"X-Fine: yes", bad_headers[i]};

        s.headers = one;
        s.header_count = 2;
        expect_refused(ob, &s, -EINVAL, bad_headers[i]);
    }
    s.headers = NULL;
    s.header_count = 1;
    expect_refused(ob, &s, -EINVAL, "NULL headers with a count");
    {
        const char *with_null[2] = {"X-Fine: yes", NULL};

        s.headers = with_null;
        s.header_count = 2;
        expect_refused(ob, &s, -EINVAL, "a NULL header line");
    }
    for (int i = 0; i <= CN_OUTBOX_HEADERS_MAX; i++)
        hdr[i] = "X-Many: 1";
    s.headers = hdr;
    s.header_count = CN_OUTBOX_HEADERS_MAX;
    expect_accepted(&s, "the most headers");
    s.header_count = CN_OUTBOX_HEADERS_MAX + 1;
    expect_refused(ob, &s, CN_ETOOBIG, "one header too many");
    memcpy(big, "X-Big: ", 7);
    memset(big + 7, 'v', CN_OUTBOX_HEADER_MAX - 7);
    big[CN_OUTBOX_HEADER_MAX] = '\0';
    hdr[0] = big;
    s.header_count = 1;
    expect_accepted(&s, "the longest header line");
    big[CN_OUTBOX_HEADER_MAX] = 'v';
    big[CN_OUTBOX_HEADER_MAX + 1] = '\0';
    expect_refused(ob, &s, CN_ETOOBIG, "a header line one byte too long");

    /* Payloads: NULL with a length, and one byte over the limit (mapped, never touched). */
    s = spec_of("POST", "http://127.0.0.1:9/orders", NULL);
    s.payload_len = 3;
    expect_refused(ob, &s, -EINVAL, "NULL payload with a length");
    {
        size_t n = (size_t)CN_OUTBOX_PAYLOAD_MAX + 1;
        void *m = mmap(NULL, n, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);

        CU_ASSERT_FATAL(m != MAP_FAILED);
        s.payload = m;
        s.payload_len = n - 1;
        expect_accepted(&s, "the largest payload");
        s.payload_len = n;
        expect_refused(ob, &s, CN_ETOOBIG, "a payload one byte too large");
        munmap(m, n);
    }
    /* An empty payload, NULL or not, and no kind, no headers: fine. */
    s = spec_of("DELETE", "http://127.0.0.1:9/orders/1", NULL);
    expect_accepted(&s, "no payload");
    s.payload = "";
    expect_accepted(&s, "an empty payload");

    free(big);
    cn_outbox_close(ob);
}

static void
expect_same_op(const cn_outbox_op_t *op, const char *id, const char *kind,
               const cn_outbox_spec_t *s, uint64_t seq, int64_t now)
{
    CU_ASSERT_STRING_EQUAL(op->id, id);
    CU_ASSERT_EQUAL(op->status, CN_OUTBOX_PENDING);
    CU_ASSERT_EQUAL(op->seq, seq);
    CU_ASSERT_PTR_NOT_NULL_FATAL(op->kind);
    CU_ASSERT_STRING_EQUAL(op->kind, kind);
    CU_ASSERT_PTR_NOT_NULL_FATAL(op->method);
    CU_ASSERT_STRING_EQUAL(op->method, s->method);
    CU_ASSERT_PTR_NOT_NULL_FATAL(op->url);
    CU_ASSERT_STRING_EQUAL(op->url, s->url);
    CU_ASSERT_EQUAL_FATAL(op->header_count, s->header_count);
    for (size_t i = 0; i < s->header_count; i++) {
        CU_ASSERT_PTR_NOT_NULL_FATAL(op->headers[i]);
        CU_ASSERT_STRING_EQUAL(op->headers[i], s->headers[i]);
    }
    CU_ASSERT_EQUAL_FATAL(op->payload_len, s->payload_len);
    if (s->payload_len) {
        CU_ASSERT_PTR_NOT_NULL_FATAL(op->payload);
        CU_ASSERT_EQUAL(memcmp(op->payload, s->payload, s->payload_len), 0);
    }
    if (op->payload)
        CU_ASSERT_EQUAL(op->payload[op->payload_len], '\0');
    CU_ASSERT_EQUAL(op->created_at_ms, now);
    CU_ASSERT_EQUAL(op->next_attempt_at_ms, now);
    CU_ASSERT_EQUAL(op->attempt, 0);
    CU_ASSERT_EQUAL(op->last_http_status, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(op->last_error);
    CU_ASSERT_STRING_EQUAL(op->last_error, "");
    CU_ASSERT_EQUAL(op->response_len, 0);
    if (op->response)
        CU_ASSERT_EQUAL(op->response[0], '\0');
    CU_ASSERT_EQUAL(op->response_truncated, 0);
}

static void
test_enqueue_get(void)
{
    char base[512], dir[600], id1[CN_OUTBOX_ID_SIZE], id2[CN_OUTBOX_ID_SIZE];
    static const char *const hdrs[] = {"Content-Type: application/json", "X-Tenant-Id: acme",
                                       "X-Empty:", "X-Colons: a:b: c"};
    static const char payload[] = "{\"product_id\":\"p-9\"}\0binary\xff\x00tail";
    cn_outbox_spec_t s1, s2;
    cn_outbox_t *ob;
    cn_outbox_op_t *op;

    test_dir(base, sizeof(base), "get");
    ob_path(dir, sizeof(dir), base);
    ob = open_ob(dir, NULL);

    s1 = spec_of("PUT", "http://127.0.0.1:9/orders/order-1?dry_run=1", NULL);
    s1.kind = "orders.place";
    s1.headers = hdrs;
    s1.header_count = 4;
    s1.payload = payload;
    s1.payload_len = sizeof(payload) - 1;
    s2 = spec_of("DELETE", "https://example.invalid/orders/2", NULL);
    memset(id1, 'x', sizeof(id1));
    enqueue_ok(ob, &s1, NOW, id1);
    enqueue_ok(ob, &s2, NOW + 5, id2);
    CU_ASSERT(is_id(id1));
    CU_ASSERT(is_id(id2));
    CU_ASSERT_STRING_NOT_EQUAL(id1, id2);

    for (int round = 0; round < 2; round++) {
        op = get_op(ob, id1);
        expect_same_op(op, id1, "orders.place", &s1, 1, NOW);
        cn_outbox_op_free(op);
        op = get_op(ob, id2);
        expect_same_op(op, id2, "", &s2, 2, NOW + 5);
        cn_outbox_op_free(op);
        /* And again after a reopen: it was durable. */
        cn_outbox_close(ob);
        ob = open_ob(dir, NULL);
    }
    cn_outbox_close(ob);
}

static void
test_get_bad_ids(void)
{
    char base[512], dir[600], id[CN_OUTBOX_ID_SIZE], upper[CN_OUTBOX_ID_SIZE];
    cn_outbox_spec_t s = spec_of("POST", "http://127.0.0.1:9/x", "{}");
    cn_outbox_op_t *op = (cn_outbox_op_t *)&s;
    cn_outbox_t *ob;

    test_dir(base, sizeof(base), "ids");
    ob_path(dir, sizeof(dir), base);
    ob = open_ob(dir, NULL);
    enqueue_ok(ob, &s, NOW, id);

    CU_ASSERT_EQUAL(cn_outbox_get(ob, "00000000000000000000000000000000", &op), CN_ENOTFOUND);
    CU_ASSERT_EQUAL(cn_outbox_get(ob, "", &op), -EINVAL);
    CU_ASSERT_EQUAL(cn_outbox_get(ob, "xyz", &op), -EINVAL);
    CU_ASSERT_EQUAL(cn_outbox_get(ob, "0000000000000000000000000000000g", &op), -EINVAL);
    CU_ASSERT_EQUAL(cn_outbox_get(ob, "000000000000000000000000000000000", &op), -EINVAL);
    for (int i = 0; i < CN_OUTBOX_ID_SIZE; i++)
        upper[i] = (id[i] >= 'a' && id[i] <= 'f') ? (char)(id[i] - 32) : id[i];
    if (strcmp(upper, id))
        CU_ASSERT_EQUAL(cn_outbox_get(ob, upper, &op), -EINVAL);
    CU_ASSERT_PTR_EQUAL(op, (cn_outbox_op_t *)&s); /* untouched by every failure */
    cn_outbox_op_free(NULL);
    cn_outbox_close(ob);
}

static void
test_ids_unique(void)
{
    enum { CYCLES = 5, PER_CYCLE = 400, SINGLES = 40, BATCH = 40, TOTAL = CYCLES * PER_CYCLE };
    char base[512], dir[600];
    static char ids[TOTAL][CN_OUTBOX_ID_SIZE];
    cn_outbox_spec_t specs[BATCH];
    size_t n = 0;
    uint64_t prev_seq = 0;
    int dup = 0, order = 1;

    test_dir(base, sizeof(base), "unique");
    ob_path(dir, sizeof(dir), base);
    for (int i = 0; i < BATCH; i++)
        specs[i] = spec_of("POST", "http://127.0.0.1:9/orders", "{\"n\":1}");

    for (int c = 0; c < CYCLES; c++) {
        cn_outbox_t *ob = open_ob(dir, NULL);
        size_t first = n;

        for (int i = 0; i < SINGLES; i++, n++)
            enqueue_ok(ob, &specs[0], NOW + (int64_t)n, ids[n]);
        while (n < first + PER_CYCLE) {
            int rc = cn_outbox_enqueue_many(ob, specs, BATCH, NOW, &ids[n]);

            CU_ASSERT_EQUAL_FATAL(rc, 0);
            n += BATCH;
        }
        CU_ASSERT_EQUAL(stats_of(ob).enqueued_total, n);
        cn_outbox_close(ob);
    }

    {
        cn_outbox_t *ob = open_ob(dir, NULL);
        static char sorted[TOTAL][CN_OUTBOX_ID_SIZE];
        cn_outbox_stats_t st = stats_of(ob);

        CU_ASSERT_EQUAL(st.total, TOTAL);
        CU_ASSERT_EQUAL(st.count[CN_OUTBOX_PENDING], TOTAL);
        CU_ASSERT_EQUAL(st.enqueued_total, TOTAL);
        /* Listed in enqueue order, seq 1..TOTAL, each id the one enqueue returned. */
        CU_ASSERT_EQUAL_FATAL(list_ids(ob, -1), TOTAL);
        for (size_t i = 0; i < TOTAL; i++) {
            CU_ASSERT(is_id(ids[i]));
            if (strcmp(listing.ids[i], ids[i]) || listing.seq[i] <= prev_seq)
                order = 0;
            prev_seq = listing.seq[i];
        }
        CU_ASSERT(order);
        CU_ASSERT_EQUAL(listing.seq[0], 1);
        CU_ASSERT_EQUAL(listing.seq[TOTAL - 1], TOTAL);

        memcpy(sorted, ids, sizeof(ids));
        qsort(sorted, TOTAL, CN_OUTBOX_ID_SIZE, cmp_id);
        for (size_t i = 1; i < TOTAL; i++)
            dup += !memcmp(sorted[i - 1], sorted[i], CN_OUTBOX_ID_SIZE);
        CU_ASSERT_EQUAL(dup, 0);
        cn_outbox_close(ob);
    }
}

static void
test_enqueue_many(void)
{
    char base[512], dir[600], ids[5][CN_OUTBOX_ID_SIZE];
    cn_outbox_spec_t specs[5];
    cn_outbox_config_t cfg = test_config();
    cn_outbox_t *ob;
    cn_outbox_stats_t st;

    test_dir(base, sizeof(base), "many");
    ob_path(dir, sizeof(dir), base);
    ob = open_ob(dir, &cfg);

    for (int i = 0; i < 5; i++)
        specs[i] = spec_of("POST", "http://127.0.0.1:9/orders", "{\"all\":\"or none\"}");
    specs[3].method = "GET";
    memset(ids, 'z', sizeof(ids));
    CU_ASSERT_EQUAL(cn_outbox_enqueue_many(ob, specs, 5, NOW, ids), -EINVAL);
    CU_ASSERT_EQUAL(ids[0][0], 'z');
    CU_ASSERT_EQUAL(stats_of(ob).total, 0);

    specs[3].method = "PATCH";
    CU_ASSERT_EQUAL_FATAL(cn_outbox_enqueue_many(ob, specs, 5, NOW, ids), 0);
    st = stats_of(ob);
    CU_ASSERT_EQUAL(st.total, 5);
    CU_ASSERT_EQUAL(st.count[CN_OUTBOX_PENDING], 5);
    for (int i = 0; i < 5; i++) {
        cn_outbox_op_t *op = get_op(ob, ids[i]);

        CU_ASSERT(is_id(ids[i]));
        CU_ASSERT_EQUAL(op->seq, (uint64_t)i + 1);
        CU_ASSERT_STRING_EQUAL(op->method, specs[i].method);
        for (int j = 0; j < i; j++)
            CU_ASSERT_STRING_NOT_EQUAL(ids[i], ids[j]);
        cn_outbox_op_free(op);
    }

    cn_outbox_close(ob);
}

static void
test_list(void)
{
    char base[512], dir[600], ids[6][CN_OUTBOX_ID_SIZE];
    cn_outbox_t *ob;
    cn_outbox_spec_t s = spec_of("POST", "http://127.0.0.1:9/x", "{}");

    test_dir(base, sizeof(base), "list");
    ob_path(dir, sizeof(dir), base);
    ob = open_ob(dir, NULL);

    CU_ASSERT_EQUAL(list_ids(ob, -1), 0);
    /* Enqueue order, not due order: the later ones are due earlier. */
    for (int i = 0; i < 6; i++)
        enqueue_ok(ob, &s, NOW - i * 1000, ids[i]);
    CU_ASSERT_EQUAL_FATAL(list_ids(ob, -1), 6);
    for (int i = 0; i < 6; i++) {
        CU_ASSERT_STRING_EQUAL(listing.ids[i], ids[i]);
        CU_ASSERT_EQUAL(listing.seq[i], (uint64_t)i + 1);
        CU_ASSERT_EQUAL(listing.status[i], CN_OUTBOX_PENDING);
    }
    CU_ASSERT_EQUAL(list_ids(ob, CN_OUTBOX_PENDING), 6);
    CU_ASSERT_EQUAL(list_ids(ob, CN_OUTBOX_DONE), 0);
    CU_ASSERT_EQUAL(list_ids(ob, CN_OUTBOX_FAILED), 0);
    CU_ASSERT_EQUAL(list_ids(ob, CN_OUTBOX_INFLIGHT), 0);
    /* A status that does not exist: an error, or nothing listed. */
    {
        int rc;

        memset(&listing, 0, sizeof(listing));
        rc = cn_outbox_list(ob, CN_OUTBOX_STATUS_COUNT, collect, &listing);
        CU_ASSERT(rc < 0 || (rc == 0 && listing.n == 0));
        rc = cn_outbox_list(ob, 1000, collect, &listing);
        CU_ASSERT(rc < 0 || (rc == 0 && listing.n == 0));
    }

    /* A nonzero callback result stops the listing and is returned. */
    memset(&listing, 0, sizeof(listing));
    listing.stop_after = 2;
    CU_ASSERT_EQUAL(cn_outbox_list(ob, -1, collect, &listing), 77);
    CU_ASSERT_EQUAL(listing.n, 2);

    /* Stats agree. */
    {
        cn_outbox_stats_t st = stats_of(ob);

        CU_ASSERT_EQUAL(st.count[CN_OUTBOX_PENDING], 6);
        CU_ASSERT_EQUAL(st.count[CN_OUTBOX_INFLIGHT], 0);
        CU_ASSERT_EQUAL(st.count[CN_OUTBOX_DONE], 0);
        CU_ASSERT_EQUAL(st.count[CN_OUTBOX_FAILED], 0);
        CU_ASSERT_EQUAL(st.total, 6);
        CU_ASSERT_EQUAL(st.next_due_ms, NOW - 5000);
        /* The oldest: by enqueue order (created at NOW) or by created_at (NOW - 5000). */
        CU_ASSERT(st.oldest_pending_ms == NOW || st.oldest_pending_ms == NOW - 5000);
        CU_ASSERT_EQUAL(st.enqueued_total, 6);
    }
    cn_outbox_close(ob);
}

/* ---- the worker --------------------------------------------------------------------- */

/* An outbox in a fresh directory with its worker started at NOW. */
static cn_outbox_t *
worker_ob(char *base, size_t cap, const char *tag, const cn_outbox_config_t *cfg)
{
    char dir[600];
    cn_outbox_t *ob;
    int rc;

    test_dir(base, cap, tag);
    ob_path(dir, sizeof(dir), base);
    ob = open_ob(dir, cfg);
    rc = cn_outbox_worker_start(ob, NOW, NULL);
    if (rc)
        fprintf(stderr, "worker_start: %s\n", cn_strerror(rc));
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    return ob;
}

/* A store opened with a 1 MiB map takes 4 MiB of payloads: the map doubles as needed
 * (CN_EMAPFULL only past 64 GiB), in enqueue and in the claims that rewrite records. */
static void
test_map_grows(void)
{
    enum { N = 64 };
    static char payload[64 * 1024];
    char base[512], dir[600], ids[N][CN_OUTBOX_ID_SIZE];
    cn_outbox_config_t cfg = test_config();
    cn_outbox_spec_t s = spec_of("POST", "http://127.0.0.1:9/orders", NULL);
    cn_outbox_t *ob;

    memset(payload, 'p', sizeof(payload));
    s.payload = payload;
    s.payload_len = sizeof(payload);
    cfg.map_size = 1u << 20;
    test_dir(base, sizeof(base), "mapgrow");
    ob_path(dir, sizeof(dir), base);
    ob = open_ob(dir, &cfg);
    for (int i = 0; i < N; i++)
        enqueue_ok(ob, &s, NOW, ids[i]);
    cn_outbox_close(ob);
    ob = open_ob(dir, &cfg); /* a smaller map asked for than the file: LMDB keeps the file's */
    CU_ASSERT_EQUAL(stats_of(ob).count[CN_OUTBOX_PENDING], N);
    for (int i = 0; i < N; i += 9) {
        cn_outbox_op_t *op = get_op(ob, ids[i]);
        CU_ASSERT_EQUAL(op->payload_len, sizeof(payload));
        CU_ASSERT_EQUAL(memcmp(op->payload, payload, sizeof(payload)), 0);
        cn_outbox_op_free(op);
    }
    cn_outbox_close(ob);
}

/* An origin that answered goes down: the requests in flight to it all fail to connect in
 * the same tick. None is an attempt, and together they are one step of the origin's
 * backoff (base), not one step each (base * factor^3). */
static void
test_tick_outage_step(void)
{
    char base[512], url[128], first[CN_OUTBOX_ID_SIZE], ids[4][CN_OUTBOX_ID_SIZE];
    cn_outbox_config_t cfg = test_config();
    cn_outbox_tick_t r;
    cn_outbox_t *ob;
    cn_outbox_spec_t s;

    srv_start(&srv_a, -1);
    ob = worker_ob(base, sizeof(base), "outage", &cfg);
    url_of(url, sizeof(url), srv_a.port, "/orders");
    s = spec_of("POST", url, "{}");
    enqueue_ok(ob, &s, NOW, first);
    CU_ASSERT_EQUAL(do_tick(ob, NOW, &r), 1);
    CU_ASSERT_EQUAL(op_status(ob, first), CN_OUTBOX_DONE);
    for (int i = 0; i < 4; i++)
        enqueue_ok(ob, &s, NOW, ids[i]);
    srv_stop(&srv_a); /* the port now refuses connections */
    CU_ASSERT_EQUAL(do_tick(ob, NOW + 1, &r), 4);
    CU_ASSERT_EQUAL(r.unreached, 4);
    for (int i = 0; i < 4; i++) {
        CU_ASSERT_EQUAL(op_status(ob, ids[i]), CN_OUTBOX_PENDING);
        CU_ASSERT_EQUAL(op_attempt(ob, ids[i]), 0);
    }
    CU_ASSERT_EQUAL(cn_outbox_next_due(ob), NOW + 1 + 1000);
    cn_outbox_close(ob);
}

static void
test_tick_done(void)
{
    char base[512], url[128], url2[128], ids[3][CN_OUTBOX_ID_SIZE], echo[256];
    static const char *const hdrs[] = {"Content-Type: application/json", "X-Tenant-Id: acme"};
    static const char payload[] = "{\"product_id\":\"p-9\",\"quantity\":2}\0and\xff"
                                  "bytes";
    cn_outbox_config_t cfg = test_config();
    cn_outbox_spec_t s[3];
    cn_outbox_tick_t r;
    cn_outbox_t *ob;

    srv_start(&srv_a, -1);
    srv_route(&srv_a, "/created", 201, NULL, NULL, NULL, 0);
    url_of(url, sizeof(url), srv_a.port, "/created?x=1");
    url_of(url2, sizeof(url2), srv_a.port, "/orders/7");
    ob = worker_ob(base, sizeof(base), "done", &cfg);

    s[0] = spec_of("POST", url, NULL);
    s[0].headers = hdrs;
    s[0].header_count = 2;
    s[0].payload = payload;
    s[0].payload_len = sizeof(payload) - 1;
    s[1] = spec_of("PUT", url2, "{\"status\":\"paid\"}");
    s[2] = spec_of("DELETE", url2, NULL);
    for (int i = 0; i < 3; i++)
        enqueue_ok(ob, &s[i], NOW, ids[i]);

    /* Not due yet: nothing happens. */
    CU_ASSERT_EQUAL(do_tick(ob, NOW - 1, &r), 0);
    CU_ASSERT_EQUAL(srv_total(&srv_a), 0);
    CU_ASSERT_EQUAL(cn_outbox_next_due(ob), NOW);

    CU_ASSERT_EQUAL(do_tick(ob, NOW, &r), 3);
    CU_ASSERT_EQUAL(r.done, 3);
    CU_ASSERT_EQUAL(r.retried, 0);
    CU_ASSERT_EQUAL(r.failed, 0);
    CU_ASSERT_EQUAL(r.offline, 0);

    for (int i = 0; i < 3; i++) {
        cn_outbox_op_t *op = get_op(ob, ids[i]);
        req_t *rq = srv_req(&srv_a, ids[i], 0);
        const char *path = i == 0 ? "/created?x=1" : "/orders/7";

        CU_ASSERT_EQUAL(op->status, CN_OUTBOX_DONE);
        CU_ASSERT_EQUAL(op->attempt, 1);
        CU_ASSERT_EQUAL(op->last_http_status, i == 0 ? 201 : 200);
        CU_ASSERT_STRING_EQUAL(op->last_error, "");
        CU_ASSERT(op->updated_at_ms >= NOW);
        /* The answer's body is kept. */
        snprintf(echo, sizeof(echo), "{\"key\":\"%s\",\"n\":1,\"path\":\"%s\"}", ids[i], path);
        CU_ASSERT_EQUAL(op->response_len, strlen(echo));
        CU_ASSERT_PTR_NOT_NULL(op->response);
        if (op->response)
            CU_ASSERT_STRING_EQUAL(op->response, echo);
        CU_ASSERT_EQUAL(op->response_truncated, 0);

        /* What the server saw: the method, the target, one Idempotency-Key (the id), the
         * operation's headers and its payload, byte for byte. */
        CU_ASSERT_EQUAL(srv_count(&srv_a, ids[i]), 1);
        CU_ASSERT_PTR_NOT_NULL_FATAL(rq);
        CU_ASSERT_STRING_EQUAL(rq->method, s[i].method);
        CU_ASSERT_STRING_EQUAL(rq->path, path);
        CU_ASSERT_EQUAL(rq->key_headers, 1);
        CU_ASSERT_EQUAL_FATAL(rq->body_len, s[i].payload_len);
        if (rq->body_len)
            CU_ASSERT_EQUAL(memcmp(rq->body, s[i].payload, rq->body_len), 0);
        if (i == 0) {
            CU_ASSERT_PTR_NOT_NULL(strcasestr(rq->head, "\r\nX-Tenant-Id: acme\r\n"));
            CU_ASSERT_PTR_NOT_NULL(strcasestr(rq->head, "\r\nContent-Type: application/json\r\n"));
        }
        req_free(rq);
        cn_outbox_op_free(op);
    }
    CU_ASSERT_EQUAL(srv_total(&srv_a), 3);

    /* Done is terminal: later ticks send nothing. */
    CU_ASSERT_EQUAL(do_tick(ob, NOW + 86400000, &r), 0);
    CU_ASSERT_EQUAL(srv_total(&srv_a), 3);
    CU_ASSERT_EQUAL(cn_outbox_next_due(ob), -1);
    {
        cn_outbox_stats_t st = stats_of(ob);

        CU_ASSERT_EQUAL(st.count[CN_OUTBOX_DONE], 3);
        CU_ASSERT_EQUAL(st.count[CN_OUTBOX_PENDING], 0);
        CU_ASSERT_EQUAL(st.next_due_ms, -1);
        CU_ASSERT_EQUAL(st.oldest_pending_ms, -1);
    }
    cn_outbox_close(ob);
    srv_stop(&srv_a);
}

static char big_body[100000];

static void
test_tick_response_kept(void)
{
    char base[512], url[128], id[CN_OUTBOX_ID_SIZE], id2[CN_OUTBOX_ID_SIZE];
    cn_outbox_config_t cfg = test_config();
    cn_outbox_spec_t s;
    cn_outbox_t *ob;
    cn_outbox_op_t *op;
    char *payload;
    const size_t plen = 300000;

    for (size_t i = 0; i < sizeof(big_body); i++)
        big_body[i] = (char)('a' + i % 26);
    big_body[7] = '\0'; /* any bytes */
    srv_start(&srv_a, -1);
    srv_route(&srv_a, "/big", 200, NULL, "application/octet-stream", big_body, sizeof(big_body));
    url_of(url, sizeof(url), srv_a.port, "/big");
    ob = worker_ob(base, sizeof(base), "big", &cfg);

    /* A large payload goes out whole; a large answer is kept up to its limit. */
    payload = malloc(plen);
    CU_ASSERT_PTR_NOT_NULL_FATAL(payload);
    for (size_t i = 0; i < plen; i++)
        payload[i] = (char)(i * 7);
    s = spec_of("POST", url, NULL);
    s.payload = payload;
    s.payload_len = plen;
    enqueue_ok(ob, &s, NOW, id);
    s = spec_of("POST", url, "{}");
    enqueue_ok(ob, &s, NOW, id2);
    CU_ASSERT_EQUAL(do_tick(ob, NOW, NULL), 2);

    op = get_op(ob, id);
    CU_ASSERT_EQUAL(op->status, CN_OUTBOX_DONE);
    CU_ASSERT_EQUAL(op->response_len, CN_OUTBOX_RESPONSE_KEEP);
    CU_ASSERT_EQUAL(op->response_truncated, 1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(op->response);
    CU_ASSERT_EQUAL(memcmp(op->response, big_body, CN_OUTBOX_RESPONSE_KEEP), 0);
    CU_ASSERT_EQUAL(op->response[op->response_len], '\0');
    cn_outbox_op_free(op);
    {
        req_t *rq = srv_req(&srv_a, id, 0);

        CU_ASSERT_PTR_NOT_NULL_FATAL(rq);
        CU_ASSERT_EQUAL(rq->body_len, plen);
        if (rq->body_len == plen)
            CU_ASSERT_EQUAL(memcmp(rq->body, payload, plen), 0);
        req_free(rq);
    }
    cn_outbox_op_free(get_op(ob, id2));
    free(payload);
    cn_outbox_close(ob);
    srv_stop(&srv_a);
}

static void
test_tick_permanent(void)
{
    static const char reused[] =
        "{\"type\":\"urn:cnerium:problem:idempotency-key-reused\",\"status\":409}";
    char base[512], url[3][128], ids[3][CN_OUTBOX_ID_SIZE];
    cn_outbox_config_t cfg = test_config();
    cn_outbox_tick_t r;
    cn_outbox_t *ob;

    srv_start(&srv_a, -1);
    srv_route(&srv_a, "/bad", 400, NULL, "application/problem+json",
              "{\"type\":\"about:blank\",\"status\":400}", 35);
    srv_route(&srv_a, "/reused", 409, "1", "application/problem+json", reused, sizeof(reused) - 1);
    srv_route(&srv_a, "/invalid", 422, NULL, NULL, NULL, 0);
    url_of(url[0], sizeof(url[0]), srv_a.port, "/bad");
    url_of(url[1], sizeof(url[1]), srv_a.port, "/reused");
    url_of(url[2], sizeof(url[2]), srv_a.port, "/invalid");
    ob = worker_ob(base, sizeof(base), "perm", &cfg);
    for (int i = 0; i < 3; i++) {
        cn_outbox_spec_t s = spec_of("POST", url[i], "{}");

        enqueue_ok(ob, &s, NOW, ids[i]);
    }

    CU_ASSERT_EQUAL(do_tick(ob, NOW, &r), 3);
    CU_ASSERT_EQUAL(r.failed, 3);
    for (int i = 0; i < 3; i++) {
        static const int want[] = {400, 409, 422};
        char code[8];
        cn_outbox_op_t *op = get_op(ob, ids[i]);

        snprintf(code, sizeof(code), "%d", want[i]);
        CU_ASSERT_EQUAL(op->status, CN_OUTBOX_FAILED);
        CU_ASSERT_EQUAL(op->attempt, 1);
        CU_ASSERT_EQUAL(op->last_http_status, want[i]);
        CU_ASSERT_PTR_NOT_NULL(strstr(op->last_error, code));
        cn_outbox_op_free(op);
    }
    /* Failed is terminal: never resent, however late the tick. */
    for (int t = 1; t <= 3; t++)
        CU_ASSERT_EQUAL(do_tick(ob, NOW + t * INT64_C(86400000), NULL), 0);
    for (int i = 0; i < 3; i++)
        CU_ASSERT_EQUAL(srv_count(&srv_a, ids[i]), 1);
    CU_ASSERT_EQUAL(cn_outbox_next_due(ob), -1);
    CU_ASSERT_EQUAL(stats_of(ob).count[CN_OUTBOX_FAILED], 3);
    CU_ASSERT_EQUAL(list_ids(ob, CN_OUTBOX_FAILED), 3);
    cn_outbox_close(ob);
    srv_stop(&srv_a);
}

static void
test_tick_max_attempts(void)
{
    char base[512], url[128], id[CN_OUTBOX_ID_SIZE];
    cn_outbox_config_t cfg = test_config();
    cn_outbox_spec_t s;
    cn_outbox_tick_t r;
    cn_outbox_t *ob;
    cn_outbox_op_t *op;
    int64_t now = NOW;

    srv_start(&srv_a, -1);
    srv_route(&srv_a, "/busy", 503, NULL, NULL, NULL, 0);
    url_of(url, sizeof(url), srv_a.port, "/busy");
    cfg.retry.max_attempts = 3;
    ob = worker_ob(base, sizeof(base), "max", &cfg);
    s = spec_of("POST", url, "{}");
    enqueue_ok(ob, &s, NOW, id);

    for (uint32_t a = 1; a <= 2; a++) {
        int64_t want_next = now + 1000 * (INT64_C(1) << (a - 1));

        CU_ASSERT_EQUAL(do_tick(ob, now, &r), 1);
        CU_ASSERT_EQUAL(r.retried, 1);
        op = get_op(ob, id);
        CU_ASSERT_EQUAL(op->status, CN_OUTBOX_PENDING);
        CU_ASSERT_EQUAL(op->attempt, a);
        CU_ASSERT_EQUAL(op->last_http_status, 503);
        CU_ASSERT_PTR_NOT_NULL(strstr(op->last_error, "503"));
        CU_ASSERT_EQUAL(op->next_attempt_at_ms, want_next);
        cn_outbox_op_free(op);
        CU_ASSERT_EQUAL(cn_outbox_next_due(ob), want_next);
        CU_ASSERT_EQUAL(stats_of(ob).next_due_ms, want_next);
        /* Not due a millisecond before. */
        CU_ASSERT_EQUAL(do_tick(ob, want_next - 1, NULL), 0);
        CU_ASSERT_EQUAL(srv_count(&srv_a, id), a);
        now = want_next;
    }
    CU_ASSERT_EQUAL(do_tick(ob, now, &r), 1);
    CU_ASSERT_EQUAL(r.failed, 1);
    op = get_op(ob, id);
    CU_ASSERT_EQUAL(op->status, CN_OUTBOX_FAILED);
    CU_ASSERT_EQUAL(op->attempt, 3);
    CU_ASSERT_EQUAL(op->last_http_status, 503);
    CU_ASSERT_PTR_NOT_NULL(strstr(op->last_error, "503"));
    cn_outbox_op_free(op);
    CU_ASSERT_EQUAL(do_tick(ob, now + 86400000, NULL), 0);
    CU_ASSERT_EQUAL(srv_count(&srv_a, id), 3);
    CU_ASSERT_EQUAL(cn_outbox_next_due(ob), -1);
    cn_outbox_close(ob);
    srv_stop(&srv_a);
}

static void
test_tick_retry_after(void)
{
    char base[512], url[3][128], ids[3][CN_OUTBOX_ID_SIZE], date[64];
    cn_outbox_config_t cfg = test_config();
    cn_outbox_t *ob;
    time_t t = (time_t)(NOW / 1000) + 30;
    struct tm tm;

    /* An IMF-fixdate 30 s after NOW (which is a whole second). */
    gmtime_r(&t, &tm);
    strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S GMT", &tm);
    srv_start(&srv_a, -1);
    srv_route(&srv_a, "/seconds", 503, "7", NULL, NULL, 0);
    srv_route(&srv_a, "/date", 429, date, NULL, NULL, 0);
    srv_route(&srv_a, "/garbage", 503, "soon", NULL, NULL, 0);
    url_of(url[0], sizeof(url[0]), srv_a.port, "/seconds");
    url_of(url[1], sizeof(url[1]), srv_a.port, "/date");
    url_of(url[2], sizeof(url[2]), srv_a.port, "/garbage");
    ob = worker_ob(base, sizeof(base), "ra", &cfg);
    for (int i = 0; i < 3; i++) {
        cn_outbox_spec_t s = spec_of("POST", url[i], "{}");

        enqueue_ok(ob, &s, NOW, ids[i]);
    }
    CU_ASSERT_EQUAL(do_tick(ob, NOW, NULL), 3);
    {
        static const int64_t want[] = {7000, 30000, 1000 /* garbage: the backoff */};

        for (int i = 0; i < 3; i++) {
            cn_outbox_op_t *op = get_op(ob, ids[i]);

            CU_ASSERT_EQUAL(op->status, CN_OUTBOX_PENDING);
            CU_ASSERT_EQUAL(op->attempt, 1);
            CU_ASSERT_EQUAL(op->next_attempt_at_ms, NOW + want[i]);
            if (op->next_attempt_at_ms != NOW + want[i])
                fprintf(stderr, "  op %d: next attempt at now + %lld, want + %lld\n", i,
                        (long long)(op->next_attempt_at_ms - NOW), (long long)want[i]);
            cn_outbox_op_free(op);
        }
    }
    CU_ASSERT_EQUAL(cn_outbox_next_due(ob), NOW + 1000);
    /* At +7 s only the first is due. */
    srv_route(&srv_a, "/seconds", 200, NULL, NULL, NULL, 0);
    CU_ASSERT_EQUAL(do_tick(ob, NOW + 6999, NULL), 1); /* the garbage one, at +1 s */
    CU_ASSERT_EQUAL(srv_count(&srv_a, ids[0]), 1);
    CU_ASSERT_EQUAL(do_tick(ob, NOW + 7000, NULL), 1);
    CU_ASSERT_EQUAL(op_status(ob, ids[0]), CN_OUTBOX_DONE);
    CU_ASSERT_EQUAL(srv_count(&srv_a, ids[1]), 1);
    cn_outbox_close(ob);
    srv_stop(&srv_a);
}

static void
test_tick_in_progress(void)
{
    static const char body[] =
        "{\"error\":\"still running\",\"type\":\"urn:cnerium:problem:request-in-progress\","
        "\"title\":\"Conflict\",\"status\":409,\"detail\":\"still running\"}";
    char base[512], url[128], id[CN_OUTBOX_ID_SIZE];
    cn_outbox_config_t cfg = test_config();
    cn_outbox_spec_t s;
    cn_outbox_t *ob;
    cn_outbox_op_t *op;

    srv_start(&srv_a, -1);
    srv_route(&srv_a, "/orders", 409, NULL, "application/problem+json", body, sizeof(body) - 1);
    url_of(url, sizeof(url), srv_a.port, "/orders");
    ob = worker_ob(base, sizeof(base), "busy", &cfg);
    s = spec_of("POST", url, "{}");
    enqueue_ok(ob, &s, NOW, id);

    CU_ASSERT_EQUAL(do_tick(ob, NOW, NULL), 1);
    op = get_op(ob, id);
    CU_ASSERT_EQUAL(op->status, CN_OUTBOX_PENDING);
    CU_ASSERT_EQUAL(op->attempt, 1);
    CU_ASSERT_EQUAL(op->last_http_status, 409);
    CU_ASSERT_EQUAL(op->next_attempt_at_ms, NOW + 1000);
    cn_outbox_op_free(op);

    /* The first try finished on the server: the same key now gets its answer. */
    srv_route(&srv_a, "/orders", 201, NULL, NULL, NULL, 0);
    CU_ASSERT_EQUAL(do_tick(ob, NOW + 1000, NULL), 1);
    op = get_op(ob, id);
    CU_ASSERT_EQUAL(op->status, CN_OUTBOX_DONE);
    CU_ASSERT_EQUAL(op->attempt, 2);
    CU_ASSERT_EQUAL(op->last_http_status, 201);
    cn_outbox_op_free(op);
    CU_ASSERT_EQUAL(srv_count(&srv_a, id), 2);
    cn_outbox_close(ob);
    srv_stop(&srv_a);
}

static void
test_tick_batch_limit(void)
{
    char base[512], url[128], ids[5][CN_OUTBOX_ID_SIZE];
    cn_outbox_config_t cfg = test_config();
    cn_outbox_t *ob;
    cn_outbox_spec_t s;
    int sent[3];

    srv_start(&srv_a, -1);
    url_of(url, sizeof(url), srv_a.port, "/ok");
    cfg.batch_limit = 2;
    cfg.max_parallel = 1;
    ob = worker_ob(base, sizeof(base), "batch", &cfg);
    s = spec_of("POST", url, "{}");
    for (int i = 0; i < 5; i++)
        enqueue_ok(ob, &s, NOW, ids[i]);
    for (int t = 0; t < 3; t++)
        sent[t] = do_tick(ob, NOW, NULL);
    CU_ASSERT_EQUAL(sent[0], 2);
    CU_ASSERT_EQUAL(sent[1], 2);
    CU_ASSERT_EQUAL(sent[2], 1);
    CU_ASSERT_EQUAL(do_tick(ob, NOW, NULL), 0);
    CU_ASSERT_EQUAL(stats_of(ob).count[CN_OUTBOX_DONE], 5);
    for (int i = 0; i < 5; i++)
        CU_ASSERT_EQUAL(srv_count(&srv_a, ids[i]), 1);
    cn_outbox_close(ob);
    srv_stop(&srv_a);
}

static void
test_tick_offline(void)
{
    enum { DEAD = 5, LIVE = 2 };
    char base[512], url[128], ids[DEAD + LIVE][CN_OUTBOX_ID_SIZE];
    cn_outbox_config_t cfg = test_config();
    cn_outbox_tick_t r;
    cn_outbox_t *ob;
    int dead_port = 0, dead_fd = bound_socket(&dead_port);
    uint32_t attempts = 0, tried = 0;
    int64_t next = -1;

    CU_ASSERT_FATAL(dead_fd >= 0);
    srv_start(&srv_a, -1);
    ob = worker_ob(base, sizeof(base), "offline", &cfg);
    for (int i = 0; i < DEAD + LIVE; i++) {
        char path[32];
        cn_outbox_spec_t s;

        snprintf(path, sizeof(path), "/orders/%d", i);
        url_of(url, sizeof(url), i < DEAD ? dead_port : srv_a.port, path);
        s = spec_of("POST", url, "{}");
        enqueue_ok(ob, &s, NOW, ids[i]);
    }

    /* Connection refused: one operation of that origin is tried, the others are not; a
     * connection that could not be made is not an attempt, so no attempt count moves;
     * the other origin is served. */
    CU_ASSERT_EQUAL(do_tick(ob, NOW, &r), 1 + LIVE);
    CU_ASSERT_EQUAL(r.done, LIVE);
    CU_ASSERT_EQUAL(r.retried, 0);
    CU_ASSERT_EQUAL(r.unreached, 1);
    CU_ASSERT_EQUAL(r.offline, DEAD - 1);
    for (int i = 0; i < DEAD; i++) {
        cn_outbox_op_t *op = get_op(ob, ids[i]);

        CU_ASSERT_EQUAL(op->status, CN_OUTBOX_PENDING);
        attempts += op->attempt;
        if (op->last_error[0]) {
            tried++;
            next = op->next_attempt_at_ms;
            CU_ASSERT_EQUAL(op->next_attempt_at_ms, NOW + 1000);
            CU_ASSERT(op->last_error[0] != '\0');
            CU_ASSERT_EQUAL(op->last_http_status, 0);
        }
        cn_outbox_op_free(op);
    }
    CU_ASSERT_EQUAL(attempts, 0);
    CU_ASSERT_EQUAL(tried, 1);
    for (int i = DEAD; i < DEAD + LIVE; i++)
        CU_ASSERT_EQUAL(op_status(ob, ids[i]), CN_OUTBOX_DONE);
    /* The origin is offline until the failed operation's next try: the untried ones count
     * from there too. */
    CU_ASSERT_EQUAL(cn_outbox_next_due(ob), NOW + 1000);

    /* Before that, nothing is tried. */
    CU_ASSERT_EQUAL(do_tick(ob, NOW + 999, &r), 0);
    CU_ASSERT(r.offline <= DEAD - 1);
    attempts = 0;
    for (int i = 0; i < DEAD; i++)
        attempts += op_attempt(ob, ids[i]);
    CU_ASSERT_EQUAL(attempts, 0);

    /* Still down at the next try: again only one operation is tried, and the origin's
     * own backoff grows (second failed connection: base * factor). */
    CU_ASSERT_EQUAL(do_tick(ob, NOW + 1000, &r), 1);
    CU_ASSERT_EQUAL(r.unreached, 1);
    attempts = 0;
    for (int i = 0; i < DEAD; i++)
        attempts += op_attempt(ob, ids[i]);
    CU_ASSERT_EQUAL(attempts, 0);
    next = cn_outbox_next_due(ob);
    CU_ASSERT_EQUAL(next, NOW + 1000 + 2000);

    /* The origin comes up (the very port starts listening): everything goes through. */
    srv_start(&srv_b, dead_fd);
    for (int t = 0; t < TICK_BOUND && stats_of(ob).count[CN_OUTBOX_DONE] < DEAD + LIVE; t++) {
        next = cn_outbox_next_due(ob);
        if (next < 0)
            break;
        do_tick(ob, next, NULL);
    }
    CU_ASSERT_EQUAL(stats_of(ob).count[CN_OUTBOX_DONE], DEAD + LIVE);
    for (int i = 0; i < DEAD; i++)
        CU_ASSERT_EQUAL(srv_count(&srv_b, ids[i]), 1);
    cn_outbox_close(ob);
    srv_stop(&srv_b); /* closes dead_fd */
    srv_stop(&srv_a);
}

typedef struct probe_state {
    int online;
    int calls;
    int calls_other;
    char origin[128];
    char want[128];
} probe_state_t;

static int
probe_cb(void *ctx, const char *origin)
{
    probe_state_t *p = ctx;

    if (!strcmp(origin, p->want)) {
        p->calls++;
        return p->online;
    }
    p->calls_other++;
    snprintf(p->origin, sizeof(p->origin), "%s", origin);
    return 1;
}

static void
test_tick_probe(void)
{
    char base[512], url[128], ids[4][CN_OUTBOX_ID_SIZE], other[CN_OUTBOX_ID_SIZE];
    cn_outbox_config_t cfg = test_config();
    static probe_state_t probe;
    cn_outbox_tick_t r;
    cn_outbox_t *ob;
    cn_outbox_spec_t s;

    srv_start(&srv_a, -1);
    srv_start(&srv_b, -1);
    memset(&probe, 0, sizeof(probe));
    snprintf(probe.want, sizeof(probe.want), "http://127.0.0.1:%d", srv_a.port);
    cfg.probe = probe_cb;
    cfg.probe_ctx = &probe;
    ob = worker_ob(base, sizeof(base), "probe", &cfg);
    url_of(url, sizeof(url), srv_a.port, "/orders");
    s = spec_of("POST", url, "{}");
    for (int i = 0; i < 4; i++)
        enqueue_ok(ob, &s, NOW, ids[i]);
    url_of(url, sizeof(url), srv_b.port, "/orders");
    s = spec_of("POST", url, "{}");
    enqueue_ok(ob, &s, NOW, other);

    /* Offline: nothing is tried for that origin, attempts stay 0; the other origin is. */
    CU_ASSERT_EQUAL(do_tick(ob, NOW, &r), 1);
    CU_ASSERT_EQUAL(r.offline, 4);
    CU_ASSERT_EQUAL(probe.calls, 1);
    CU_ASSERT(probe.calls_other <= 1);
    CU_ASSERT_EQUAL(srv_total(&srv_a), 0);
    for (int i = 0; i < 4; i++) {
        CU_ASSERT_EQUAL(op_attempt(ob, ids[i]), 0);
        CU_ASSERT_EQUAL(op_status(ob, ids[i]), CN_OUTBOX_PENDING);
    }
    CU_ASSERT_EQUAL(op_status(ob, other), CN_OUTBOX_DONE);
    CU_ASSERT_EQUAL(do_tick(ob, NOW + 1, &r), 0);
    CU_ASSERT(probe.calls >= 1 && probe.calls <= 2); /* at most once per origin per tick */
    CU_ASSERT_EQUAL(srv_total(&srv_a), 0);

    /* Online: all sent, the probe asked once. */
    probe.online = 1;
    CU_ASSERT_EQUAL(do_tick(ob, NOW + 2, &r), 4);
    CU_ASSERT_EQUAL(r.done, 4);
    CU_ASSERT(probe.calls >= 2 && probe.calls <= 3);
    for (int i = 0; i < 4; i++)
        CU_ASSERT_EQUAL(srv_count(&srv_a, ids[i]), 1);
    cn_outbox_close(ob);
    srv_stop(&srv_b);
    srv_stop(&srv_a);
}

/* The FIFO scenario: op1 and op2 to /fifo (503 at first), op3 to /other; with fifo set,
 * op2 waits for op1, without it op2 goes at once. */
static void
fifo_scenario(int fifo)
{
    char base[512], url[128], ids[3][CN_OUTBOX_ID_SIZE];
    cn_outbox_config_t cfg = test_config();
    cn_outbox_t *ob;
    cn_outbox_spec_t s;
    req_t *last1, *first2;

    srv_start(&srv_a, -1);
    srv_route(&srv_a, "/fifo", 503, NULL, NULL, NULL, 0);
    cfg.fifo_per_target = fifo;
    ob = worker_ob(base, sizeof(base), fifo ? "fifo" : "nofifo", &cfg);
    url_of(url, sizeof(url), srv_a.port, "/fifo");
    s = spec_of("POST", url, "{\"n\":1}");
    enqueue_ok(ob, &s, NOW, ids[0]);
    s.payload = "{\"n\":2}";
    enqueue_ok(ob, &s, NOW, ids[1]);
    url_of(url, sizeof(url), srv_a.port, "/other");
    s = spec_of("POST", url, "{}");
    enqueue_ok(ob, &s, NOW, ids[2]);

    if (fifo) {
        /* op1 fails (retry later); op2 must wait behind it; op3 goes. */
        CU_ASSERT_EQUAL(do_tick(ob, NOW, NULL), 2);
        CU_ASSERT_EQUAL(srv_count(&srv_a, ids[0]), 1);
        CU_ASSERT_EQUAL(srv_count(&srv_a, ids[1]), 0);
        CU_ASSERT_EQUAL(op_attempt(ob, ids[1]), 0);
        CU_ASSERT_EQUAL(op_status(ob, ids[1]), CN_OUTBOX_PENDING);
        CU_ASSERT_EQUAL(op_status(ob, ids[2]), CN_OUTBOX_DONE);
        /* op2 is due, op1 is not: still nothing for /fifo. */
        CU_ASSERT_EQUAL(do_tick(ob, NOW + 999, NULL), 0);
        CU_ASSERT_EQUAL(srv_count(&srv_a, ids[1]), 0);
        /* Nothing can be sent before op1's retry: op2, due but waiting, does not count
         * ("the earliest due time of a Pending operation it could send"). */
        CU_ASSERT_EQUAL(cn_outbox_next_due(ob), NOW + 1000);
    } else {
        /* Without FIFO, op2 does not wait for op1. */
        CU_ASSERT_EQUAL(do_tick(ob, NOW, NULL), 3);
        CU_ASSERT_EQUAL(srv_count(&srv_a, ids[1]), 1);
    }

    srv_route(&srv_a, "/fifo", 200, NULL, NULL, NULL, 0);
    for (int t = 0; t < 4 && stats_of(ob).count[CN_OUTBOX_DONE] < 3; t++)
        do_tick(ob, NOW + 1000, NULL);
    CU_ASSERT_EQUAL(stats_of(ob).count[CN_OUTBOX_DONE], 3);
    if (fifo) {
        /* op2 reached the server only after op1's last try. */
        last1 = srv_req(&srv_a, ids[0], 1);
        first2 = srv_req(&srv_a, ids[1], 0);
        CU_ASSERT_PTR_NOT_NULL(last1);
        CU_ASSERT_PTR_NOT_NULL(first2);
        if (last1 && first2)
            CU_ASSERT(first2->seq > last1->seq);
        CU_ASSERT_EQUAL(srv_count(&srv_a, ids[1]), 1);
        req_free(last1);
        req_free(first2);
    }
    cn_outbox_close(ob);
    srv_stop(&srv_a);
}

static void
test_tick_fifo(void)
{
    fifo_scenario(1);
    fifo_scenario(0);
}

/* A backlog of due operations that cannot go (behind a FIFO head that is retrying, or
 * for an origin the probe reports offline), longer than a batch: the other targets' due
 * operations are still sent. */
static void
test_tick_backlog_no_starvation(void)
{
    enum { BACKLOG = 400 };
    char base[512], url[128], head[CN_OUTBOX_ID_SIZE], other[CN_OUTBOX_ID_SIZE];
    static char ids[BACKLOG][CN_OUTBOX_ID_SIZE];
    static cn_outbox_spec_t specs[BACKLOG];
    static probe_state_t probe;
    cn_outbox_config_t cfg = test_config();
    cn_outbox_t *ob;
    cn_outbox_spec_t s;
    unsigned backlog_sent = 0;
    uint64_t sent_a;
    int dead_port = 0, dead_fd;

    srv_start(&srv_a, -1);
    srv_start(&srv_b, -1);

    /* 1. FIFO: the head of /fifo answers 503; 400 more wait behind it. */
    srv_route(&srv_a, "/fifo", 503, NULL, NULL, NULL, 0);
    cfg.fifo_per_target = 1;
    cfg.batch_limit = 8;
    ob = worker_ob(base, sizeof(base), "starve", &cfg);
    url_of(url, sizeof(url), srv_a.port, "/fifo");
    s = spec_of("POST", url, "{}");
    enqueue_ok(ob, &s, NOW, head);
    for (int i = 0; i < BACKLOG; i++)
        specs[i] = spec_of("POST", url, "{}");
    CU_ASSERT_EQUAL_FATAL(cn_outbox_enqueue_many(ob, specs, BACKLOG, NOW, ids), 0);
    url_of(url, sizeof(url), srv_a.port, "/other");
    s = spec_of("POST", url, "{}");
    enqueue_ok(ob, &s, NOW, other);
    for (int t = 0; t < 3 && op_status(ob, other) != CN_OUTBOX_DONE; t++)
        do_tick(ob, NOW + t, NULL);
    CU_ASSERT_EQUAL(op_status(ob, other), CN_OUTBOX_DONE);
    CU_ASSERT_EQUAL(srv_count(&srv_a, head), 1);
    for (int i = 0; i < BACKLOG; i++)
        backlog_sent += srv_count(&srv_a, ids[i]);
    CU_ASSERT_EQUAL(backlog_sent, 0);
    cn_outbox_close(ob);

    /* 2. The probe: srv_a's origin offline with 400 due; srv_b's one operation goes. */
    sent_a = srv_total(&srv_a);
    cfg = test_config();
    cfg.batch_limit = 8;
    memset(&probe, 0, sizeof(probe));
    snprintf(probe.want, sizeof(probe.want), "http://127.0.0.1:%d", srv_a.port);
    cfg.probe = probe_cb;
    cfg.probe_ctx = &probe;
    ob = worker_ob(base, sizeof(base), "starve-probe", &cfg);
    url_of(url, sizeof(url), srv_a.port, "/orders");
    for (int i = 0; i < BACKLOG; i++)
        specs[i] = spec_of("POST", url, "{}");
    CU_ASSERT_EQUAL_FATAL(cn_outbox_enqueue_many(ob, specs, BACKLOG, NOW, ids), 0);
    url_of(url, sizeof(url), srv_b.port, "/orders");
    s = spec_of("POST", url, "{}");
    enqueue_ok(ob, &s, NOW, other);
    for (int t = 0; t < 3 && op_status(ob, other) != CN_OUTBOX_DONE; t++)
        do_tick(ob, NOW + t, NULL);
    CU_ASSERT_EQUAL(op_status(ob, other), CN_OUTBOX_DONE);
    CU_ASSERT_EQUAL(srv_count(&srv_b, other), 1);
    CU_ASSERT_EQUAL(srv_total(&srv_a), sent_a);
    cn_outbox_close(ob);

    /* 3. Passive detection: 400 due for a port that refuses; srv_b's one operation goes. */
    cfg = test_config();
    cfg.batch_limit = 8;
    dead_fd = bound_socket(&dead_port);
    CU_ASSERT_FATAL(dead_fd >= 0);
    ob = worker_ob(base, sizeof(base), "starve-dead", &cfg);
    url_of(url, sizeof(url), dead_port, "/orders");
    for (int i = 0; i < BACKLOG; i++)
        specs[i] = spec_of("POST", url, "{}");
    CU_ASSERT_EQUAL_FATAL(cn_outbox_enqueue_many(ob, specs, BACKLOG, NOW, ids), 0);
    url_of(url, sizeof(url), srv_b.port, "/orders");
    s = spec_of("POST", url, "{}");
    enqueue_ok(ob, &s, NOW, other);
    for (int t = 0; t < 3 && op_status(ob, other) != CN_OUTBOX_DONE; t++)
        do_tick(ob, NOW + t, NULL);
    CU_ASSERT_EQUAL(op_status(ob, other), CN_OUTBOX_DONE);
    CU_ASSERT_EQUAL(srv_count(&srv_b, other), 1);
    cn_outbox_close(ob);
    close(dead_fd);
    srv_stop(&srv_b);
    srv_stop(&srv_a);
}

typedef struct requeue_ctx {
    cn_outbox_t *ob;
    int64_t now;
    int calls, errors;
} requeue_ctx_t;

static int
requeue_cb(void *ctx, const cn_outbox_op_t *op)
{
    requeue_ctx_t *r = ctx;

    r->calls++;
    if (cn_outbox_requeue(r->ob, op->id, r->now))
        r->errors++;
    return 0;
}

static void
test_requeue(void)
{
    char base[512], url[128], failed[CN_OUTBOX_ID_SIZE], pending[CN_OUTBOX_ID_SIZE];
    char done[CN_OUTBOX_ID_SIZE];
    cn_outbox_config_t cfg = test_config();
    cn_outbox_t *ob;
    cn_outbox_spec_t s;
    cn_outbox_op_t *op;
    int rc;

    srv_start(&srv_a, -1);
    srv_route(&srv_a, "/flip", 400, NULL, NULL, NULL, 0);
    ob = worker_ob(base, sizeof(base), "requeue", &cfg);
    url_of(url, sizeof(url), srv_a.port, "/flip");
    s = spec_of("POST", url, "{}");
    enqueue_ok(ob, &s, NOW, failed);
    url_of(url, sizeof(url), srv_a.port, "/ok");
    s = spec_of("POST", url, "{}");
    enqueue_ok(ob, &s, NOW, done);
    CU_ASSERT_EQUAL(do_tick(ob, NOW, NULL), 2);
    s = spec_of("POST", url, "{}");
    enqueue_ok(ob, &s, NOW + 10, pending);
    CU_ASSERT_EQUAL(op_status(ob, failed), CN_OUTBOX_FAILED);
    CU_ASSERT_EQUAL(op_status(ob, done), CN_OUTBOX_DONE);

    CU_ASSERT_EQUAL(cn_outbox_requeue(ob, "0123456789abcdef0123456789abcdef", NOW), CN_ENOTFOUND);
    rc = cn_outbox_requeue(ob, "not-an-id", NOW);
    CU_ASSERT(rc == -EINVAL || rc == CN_ENOTFOUND);
    CU_ASSERT_EQUAL(cn_outbox_requeue(ob, pending, NOW), CN_ESTATE);
    CU_ASSERT_EQUAL(cn_outbox_requeue(ob, done, NOW), CN_ESTATE);
    CU_ASSERT_EQUAL(op_status(ob, pending), CN_OUTBOX_PENDING);
    CU_ASSERT_EQUAL(op_status(ob, done), CN_OUTBOX_DONE);

    /* Back to Pending, due at the given time, attempts reset, same id. */
    CU_ASSERT_EQUAL(cn_outbox_requeue(ob, failed, NOW + 5000), 0);
    op = get_op(ob, failed);
    CU_ASSERT_EQUAL(op->status, CN_OUTBOX_PENDING);
    CU_ASSERT_EQUAL(op->attempt, 0);
    CU_ASSERT_EQUAL(op->next_attempt_at_ms, NOW + 5000);
    CU_ASSERT_EQUAL(op->seq, 1);
    cn_outbox_op_free(op);
    CU_ASSERT_EQUAL(cn_outbox_requeue(ob, failed, NOW), CN_ESTATE);
    CU_ASSERT_EQUAL(stats_of(ob).count[CN_OUTBOX_FAILED], 0);
    CU_ASSERT_EQUAL(stats_of(ob).count[CN_OUTBOX_PENDING], 2);

    /* Sent again with the same key once due. */
    srv_route(&srv_a, "/flip", 200, NULL, NULL, NULL, 0);
    CU_ASSERT_EQUAL(do_tick(ob, NOW + 4999, NULL), 1); /* `pending` only */
    CU_ASSERT_EQUAL(srv_count(&srv_a, failed), 1);
    CU_ASSERT_EQUAL(do_tick(ob, NOW + 5000, NULL), 1);
    op = get_op(ob, failed);
    CU_ASSERT_EQUAL(op->status, CN_OUTBOX_DONE);
    CU_ASSERT_EQUAL(op->attempt, 1);
    cn_outbox_op_free(op);
    CU_ASSERT_EQUAL(srv_count(&srv_a, failed), 2);

    /* "Requeue everything Failed" from a list callback (a write inside the listing's read
     * snapshot). */
    {
        static requeue_ctx_t rq;
        char more[2][CN_OUTBOX_ID_SIZE];

        srv_route(&srv_a, "/gone", 410, NULL, NULL, NULL, 0);
        url_of(url, sizeof(url), srv_a.port, "/gone");
        s = spec_of("POST", url, "{}");
        enqueue_ok(ob, &s, NOW + 6000, more[0]);
        enqueue_ok(ob, &s, NOW + 6000, more[1]);
        CU_ASSERT_EQUAL(do_tick(ob, NOW + 6000, NULL), 2);
        CU_ASSERT_EQUAL(stats_of(ob).count[CN_OUTBOX_FAILED], 2);
        memset(&rq, 0, sizeof(rq));
        rq.ob = ob;
        rq.now = NOW + 7000;
        CU_ASSERT_EQUAL(cn_outbox_list(ob, CN_OUTBOX_FAILED, requeue_cb, &rq), 0);
        CU_ASSERT_EQUAL(rq.calls, 2);
        CU_ASSERT_EQUAL(rq.errors, 0);
        CU_ASSERT_EQUAL(stats_of(ob).count[CN_OUTBOX_FAILED], 0);
        for (int i = 0; i < 2; i++) {
            op = get_op(ob, more[i]);
            CU_ASSERT_EQUAL(op->status, CN_OUTBOX_PENDING);
            CU_ASSERT_EQUAL(op->next_attempt_at_ms, NOW + 7000);
            cn_outbox_op_free(op);
        }
    }
    cn_outbox_close(ob);
    srv_stop(&srv_a);
}

static void
test_compact(void)
{
    char base[512], url[128], ids[4][CN_OUTBOX_ID_SIZE], bad[CN_OUTBOX_ID_SIZE];
    char later[CN_OUTBOX_ID_SIZE];
    cn_outbox_config_t cfg = test_config();
    cn_outbox_t *ob;
    cn_outbox_spec_t s;
    int64_t finished = 0;
    cn_outbox_stats_t st;

    srv_start(&srv_a, -1);
    srv_route(&srv_a, "/bad", 400, NULL, NULL, NULL, 0);
    cfg.done_retention_ms = 60000;
    ob = worker_ob(base, sizeof(base), "compact", &cfg);
    url_of(url, sizeof(url), srv_a.port, "/ok");
    s = spec_of("POST", url, "{}");
    for (int i = 0; i < 3; i++)
        enqueue_ok(ob, &s, NOW, ids[i]);
    url_of(url, sizeof(url), srv_a.port, "/bad");
    s = spec_of("POST", url, "{}");
    enqueue_ok(ob, &s, NOW, bad);
    CU_ASSERT_EQUAL(do_tick(ob, NOW, NULL), 4);
    url_of(url, sizeof(url), srv_a.port, "/ok");
    s = spec_of("POST", url, "{}");
    enqueue_ok(ob, &s, NOW + 3600000, ids[3]); /* Pending, due much later */
    for (int i = 0; i < 3; i++) {
        cn_outbox_op_t *op = get_op(ob, ids[i]);

        CU_ASSERT_EQUAL(op->status, CN_OUTBOX_DONE);
        if (op->updated_at_ms > finished)
            finished = op->updated_at_ms;
        cn_outbox_op_free(op);
    }

    /* Within the retention (its last millisecond included): nothing removed. */
    CU_ASSERT_EQUAL(cn_outbox_compact(ob, NOW, 0), 0);
    CU_ASSERT_EQUAL(cn_outbox_compact(ob, finished + 60000, 0), 0);
    CU_ASSERT_EQUAL(stats_of(ob).count[CN_OUTBOX_DONE], 3);
    /* Past it: Done ones go, `limit` at a time; Failed and Pending stay. */
    CU_ASSERT_EQUAL(cn_outbox_compact(ob, finished + 60001 + 86400000, 2), 2);
    CU_ASSERT_EQUAL(cn_outbox_compact(ob, finished + 60001 + 86400000, 2), 1);
    CU_ASSERT_EQUAL(cn_outbox_compact(ob, finished + 60001 + 86400000, 0), 0);
    for (int i = 0; i < 3; i++) {
        cn_outbox_op_t *op = (cn_outbox_op_t *)&s;

        CU_ASSERT_EQUAL(cn_outbox_get(ob, ids[i], &op), CN_ENOTFOUND);
    }
    CU_ASSERT_EQUAL(op_status(ob, bad), CN_OUTBOX_FAILED);
    CU_ASSERT_EQUAL(op_status(ob, ids[3]), CN_OUTBOX_PENDING);
    st = stats_of(ob);
    CU_ASSERT_EQUAL(st.count[CN_OUTBOX_DONE], 0);
    CU_ASSERT_EQUAL(st.count[CN_OUTBOX_FAILED], 1);
    CU_ASSERT_EQUAL(st.count[CN_OUTBOX_PENDING], 1);
    CU_ASSERT_EQUAL(st.total, 2);
    CU_ASSERT_EQUAL(st.enqueued_total, 5);
    CU_ASSERT_EQUAL(list_ids(ob, -1), 2);

    /* Ids and seqs are not reused after compaction. */
    enqueue_ok(ob, &s, NOW, later);
    {
        cn_outbox_op_t *op = get_op(ob, later);

        CU_ASSERT_EQUAL(op->seq, 6);
        for (int i = 0; i < 4; i++)
            CU_ASSERT_STRING_NOT_EQUAL(later, ids[i]);
        cn_outbox_op_free(op);
    }
    cn_outbox_close(ob);

    /* Retention 0 keeps Done operations forever. */
    cfg.done_retention_ms = 0;
    ob = worker_ob(base, sizeof(base), "keep", &cfg);
    url_of(url, sizeof(url), srv_a.port, "/ok");
    s = spec_of("POST", url, "{}");
    enqueue_ok(ob, &s, NOW, ids[0]);
    CU_ASSERT_EQUAL(do_tick(ob, NOW, NULL), 1);
    CU_ASSERT_EQUAL(cn_outbox_compact(ob, INT64_MAX / 2, 0), 0);
    CU_ASSERT_EQUAL(op_status(ob, ids[0]), CN_OUTBOX_DONE);
    cn_outbox_close(ob);
    srv_stop(&srv_a);
}

static void
test_worker_lock(void)
{
    char base[512], dir[600], id[CN_OUTBOX_ID_SIZE];
    cn_outbox_t *ob;
    cn_outbox_spec_t s = spec_of("POST", "http://127.0.0.1:9/x", "{}");
    int to_child[2], to_parent[2], status = 0;
    struct {
        int rc, holder, enq, again;
        char id[CN_OUTBOX_ID_SIZE];
    } res;
    pid_t parent = getpid(), pid;
    char go = 'g';

    test_dir(base, sizeof(base), "lock");
    ob_path(dir, sizeof(dir), base);

    /* Without a started worker a tick is refused and changes nothing. */
    ob = open_ob(dir, NULL);
    enqueue_ok(ob, &s, NOW, id);
    CU_ASSERT(cn_outbox_tick(ob, NOW, NULL) < 0);
    CU_ASSERT_EQUAL(op_attempt(ob, id), 0);
    CU_ASSERT_EQUAL(op_status(ob, id), CN_OUTBOX_PENDING);
    cn_outbox_close(ob);

    /* The child is forked before anything is open here, and opens its own handle. */
    CU_ASSERT_FATAL(pipe2(to_child, O_CLOEXEC) == 0);
    CU_ASSERT_FATAL(pipe2(to_parent, O_CLOEXEC) == 0);
    fflush(NULL);
    pid = fork();
    CU_ASSERT_FATAL(pid >= 0);
    if (pid == 0) {
        cn_outbox_t *cob = NULL;
        char c;

        child_setup(parent);
        close(to_child[1]);
        close(to_parent[0]);
        memset(&res, 0, sizeof(res));
        if (read_full(to_child[0], &c, 1, IO_BOUND_MS * 3) || cn_outbox_open(dir, NULL, &cob))
            _exit(3);
        res.holder = -12345;
        res.rc = cn_outbox_worker_start(cob, NOW, &res.holder);
        /* Enqueueing from another process while the worker runs is fine. */
        res.enq = cn_outbox_enqueue(cob, &s, NOW, res.id);
        cn_outbox_close(cob);
        if (write_full(to_parent[1], &res, sizeof(res)))
            _exit(4);
        /* Once the parent has closed its outbox, the lock is free. */
        if (read_full(to_child[0], &c, 1, IO_BOUND_MS * 3) || cn_outbox_open(dir, NULL, &cob))
            _exit(5);
        res.again = cn_outbox_worker_start(cob, NOW, NULL);
        cn_outbox_close(cob);
        if (write_full(to_parent[1], &res, sizeof(res)))
            _exit(6);
        _exit(0);
    }
    close(to_child[0]);
    close(to_parent[1]);

    /* No fatal assertion until the child is reaped. */
    ob = NULL;
    if (cn_outbox_open(dir, NULL, &ob) == 0) {
        CU_ASSERT_EQUAL(cn_outbox_worker_start(ob, NOW, NULL), 0);
        CU_ASSERT_EQUAL(cn_outbox_worker_start(ob, NOW, NULL), -EALREADY);
    } else {
        CU_FAIL("open in the parent");
    }
    CU_ASSERT_EQUAL(write_full(to_child[1], &go, 1), 0);
    memset(&res, 0, sizeof(res));
    CU_ASSERT_EQUAL(read_full(to_parent[0], &res, sizeof(res), IO_BOUND_MS * 3), 0);
    CU_ASSERT_EQUAL(res.rc, -EBUSY);
    CU_ASSERT(res.holder == (int)parent || res.holder == -12345 || res.holder <= 0);
    if (res.holder != (int)parent)
        fprintf(stderr, "  -EBUSY holder pid %d (the holder is %d)\n", res.holder, (int)parent);
    CU_ASSERT_EQUAL(res.enq, 0);
    if (ob && res.enq == 0 && is_id(res.id)) {
        /* The worker's process sees it. */
        cn_outbox_op_t *op = NULL;

        CU_ASSERT_EQUAL(cn_outbox_get(ob, res.id, &op), 0);
        if (op)
            CU_ASSERT_EQUAL(op->status, CN_OUTBOX_PENDING);
        cn_outbox_op_free(op);
        CU_ASSERT_EQUAL(stats_of(ob).count[CN_OUTBOX_PENDING], 2);
    }
    cn_outbox_close(ob);
    CU_ASSERT_EQUAL(write_full(to_child[1], &go, 1), 0);
    CU_ASSERT_EQUAL(read_full(to_parent[0], &res, sizeof(res), IO_BOUND_MS * 3), 0);
    CU_ASSERT_EQUAL(res.again, 0);
    CU_ASSERT_EQUAL(unit_reap_within(pid, REAP_BOUND_MS, &status), 0);
    CU_ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    close(to_child[1]);
    close(to_parent[0]);
}

/* ---- crashes ----------------------------------------------------------------------- */

/* The child of the enqueue kill tests: enqueues forever, `batch` operations at a time
 * (one cn_outbox_enqueue, or cn_outbox_enqueue_many), and after each call returns writes
 * their ids (32 hex + '\n' each) to wfd in one write (at most PIPE_BUF: atomic). */
static void
enqueue_child(const char *dir, int wfd, int round, int batch, pid_t parent)
{
    enum { MAX_BATCH = 64 };
    cn_outbox_t *ob = NULL;
    static char payload[MAX_BATCH][64], lines[MAX_BATCH][CN_OUTBOX_ID_SIZE];
    static cn_outbox_spec_t specs[MAX_BATCH];
    static const char *const hdrs[] = {"Content-Type: application/json"};

    child_setup(parent);
    if (batch > MAX_BATCH || cn_outbox_open(dir, NULL, &ob))
        _exit(3);
    for (long b = 0;; b++) {
        for (int k = 0; k < batch; k++) {
            snprintf(payload[k], sizeof(payload[k]), "{\"round\":%d,\"b\":%ld,\"k\":%d}", round, b,
                     k);
            specs[k] = spec_of("POST", "http://127.0.0.1:9/orders", payload[k]);
            specs[k].headers = hdrs;
            specs[k].header_count = 1;
        }
        if (batch == 1 ? cn_outbox_enqueue(ob, &specs[0], NOW + b, lines[0])
                       : cn_outbox_enqueue_many(ob, specs, (size_t)batch, NOW + b, lines))
            _exit(4);
        for (int k = 0; k < batch; k++)
            lines[k][CN_OUTBOX_ID_LEN] = '\n';
        if (write_full(wfd, lines, (size_t)batch * CN_OUTBOX_ID_SIZE))
            _exit(5);
    }
}

/* Listing callback that keeps each operation's payload (its batch tag). */
static char payload_tags[4096][48];

static int
collect_tags(void *ctx, const cn_outbox_op_t *op)
{
    listing_t *l = ctx;

    if (l->n < 4096)
        snprintf(payload_tags[l->n], sizeof(payload_tags[0]), "%.*s", (int)op->payload_len,
                 op->payload ? op->payload : "");
    return collect(ctx, op);
}

/* Payloads up to their ",\"k\"": the batch they were enqueued in. */
static int
same_batch(const char *a, const char *b)
{
    const char *ka = strstr(a, ",\"k\""), *kb = strstr(b, ",\"k\"");

    return ka && kb && ka - a == kb - b && !strncmp(a, b, (size_t)(ka - a));
}

/* Rounds of: a child enqueues `batch` at a time, the parent reads some ids, SIGKILLs it
 * mid-way, reaps it. Then every reported id is stored exactly once, at most one
 * unreported batch per round is, no id twice, and every batch is whole or absent. */
static void
kill_enqueue_scenario(int batch)
{
    enum { ROUNDS = 4, MAX_IDS = 4000 };
    char base[512], dir[600];
    static char reported[MAX_IDS][CN_OUTBOX_ID_SIZE];
    size_t nrep = 0;
    pid_t parent = getpid();

    test_dir(base, sizeof(base), batch == 1 ? "killenq" : "killmany");
    ob_path(dir, sizeof(dir), base);

    for (int round = 0; round < ROUNDS; round++) {
        int fds[2];
        size_t want = (size_t)batch * (3 + 5 * (size_t)round), got = 0;
        char line[CN_OUTBOX_ID_SIZE];
        pid_t pid;

        CU_ASSERT_FATAL(pipe2(fds, O_CLOEXEC) == 0);
        /* A small pipe keeps the child at most a page of ids ahead of this reader, however
         * slow it is: what is enqueued before the kill stays bounded. */
        (void)fcntl(fds[1], F_SETPIPE_SZ, 4096);
        fflush(NULL);
        pid = fork();
        CU_ASSERT_FATAL(pid >= 0);
        if (pid == 0) {
            close(fds[0]);
            enqueue_child(dir, fds[1], round, batch, parent);
            _exit(0);
        }
        close(fds[1]);
        /* Wait until it has reported `want` ids, then kill it mid-way through the next
         * call. */
        while (got < want && nrep < MAX_IDS &&
               read_full(fds[0], line, CN_OUTBOX_ID_SIZE, IO_BOUND_MS) == 0) {
            line[CN_OUTBOX_ID_LEN] = '\0';
            memcpy(reported[nrep++], line, CN_OUTBOX_ID_SIZE);
            got++;
        }
        /* Vary where the kill lands in the next call from round to round. */
        for (int y = 0; y < round * 300; y++)
            sched_yield();
        CU_ASSERT(kill_and_reap(pid));
        CU_ASSERT_EQUAL(got, want);
        /* What it wrote before dying counts as reported too. */
        while (nrep < MAX_IDS && read_full(fds[0], line, CN_OUTBOX_ID_SIZE, IO_BOUND_MS) == 0) {
            line[CN_OUTBOX_ID_LEN] = '\0';
            memcpy(reported[nrep++], line, CN_OUTBOX_ID_SIZE);
        }
        close(fds[0]);
        if (got != want)
            break;
    }

    {
        cn_outbox_t *ob = open_ob(dir, NULL);
        cn_outbox_stats_t st = stats_of(ob);
        size_t total, missing = 0, twice = 0, bad = 0, dup = 0, partial = 0;
        static char sorted[4096][CN_OUTBOX_ID_SIZE];
        char id[CN_OUTBOX_ID_SIZE];

        memset(&listing, 0, sizeof(listing));
        CU_ASSERT_EQUAL(cn_outbox_list(ob, -1, collect_tags, &listing), 0);
        total = listing.n;
        for (size_t i = 0; i < nrep; i++) {
            int n;

            bad += !is_id(reported[i]);
            n = listed(reported[i]);
            missing += n == 0;
            twice += n > 1;
        }
        CU_ASSERT_EQUAL(bad, 0);
        CU_ASSERT_EQUAL(missing, 0);
        CU_ASSERT_EQUAL(twice, 0);
        /* At most one committed call per round that the child had no time to report. */
        CU_ASSERT(total >= nrep && total <= nrep + (size_t)ROUNDS * (size_t)batch);
        CU_ASSERT_EQUAL((total - nrep) % (size_t)batch, 0);
        if (missing || total < nrep || total > nrep + (size_t)ROUNDS * (size_t)batch)
            fprintf(stderr, "  reported %zu, stored %zu, missing %zu\n", nrep, total, missing);
        CU_ASSERT_FATAL(total <= 4096);
        memcpy(sorted, listing.ids, total * CN_OUTBOX_ID_SIZE);
        qsort(sorted, total, CN_OUTBOX_ID_SIZE, cmp_id);
        for (size_t i = 1; i < total; i++)
            dup += !memcmp(sorted[i - 1], sorted[i], CN_OUTBOX_ID_SIZE);
        CU_ASSERT_EQUAL(dup, 0);
        for (size_t i = 1; i < total; i++)
            CU_ASSERT(listing.seq[i] > listing.seq[i - 1]);
        /* All or none: listed in enqueue order, every batch is `batch` consecutive ones. */
        for (size_t i = 0; i < total; i += (size_t)batch) {
            for (size_t k = 1; k < (size_t)batch; k++)
                partial += i + k >= total || !same_batch(payload_tags[i], payload_tags[i + k]);
        }
        CU_ASSERT_EQUAL(partial, 0);
        CU_ASSERT_EQUAL(st.total, total);
        CU_ASSERT_EQUAL(st.count[CN_OUTBOX_PENDING], total);
        CU_ASSERT_EQUAL(st.enqueued_total, total);
        /* And it still takes new operations. */
        {
            cn_outbox_spec_t s = spec_of("POST", "http://127.0.0.1:9/after", "{}");

            enqueue_ok(ob, &s, NOW, id);
            CU_ASSERT_EQUAL(listed(id), 0);
            CU_ASSERT_EQUAL(stats_of(ob).total, total + 1);
        }
        cn_outbox_close(ob);
    }
}

static void
test_kill_enqueue(void)
{
    kill_enqueue_scenario(1);
}

static void
test_kill_enqueue_many(void)
{
    kill_enqueue_scenario(40);
}

/* The child of the tick kill tests: starts the worker and ticks until told otherwise. */
static void
tick_child(const char *dir, const cn_outbox_config_t *cfg, pid_t parent)
{
    cn_outbox_t *ob = NULL;

    child_setup(parent);
    if (cn_outbox_open(dir, cfg, &ob) || cn_outbox_worker_start(ob, NOW, NULL))
        _exit(3);
    for (int t = 0; t < 10000; t++) {
        if (cn_outbox_tick(ob, NOW, NULL) < 0)
            _exit(4);
        if (cn_outbox_next_due(ob) < 0)
            break;
    }
    cn_outbox_close(ob);
    _exit(0);
}

/* Enqueues m operations, lets a child worker tick them until the server holds request
 * hold_at, kills the child, and restarts the worker here. max_attempts 1 or more. */
static void
kill_tick_scenario(uint32_t max_attempts)
{
    enum { M = 24 };
    char base[512], dir[600], url[128], ids[M][CN_OUTBOX_ID_SIZE];
    static char inflight[M][CN_OUTBOX_ID_SIZE];
    size_t ninflight = 0;
    cn_outbox_config_t cfg = test_config();
    cn_outbox_spec_t specs[M];
    cn_outbox_t *ob;
    pid_t parent = getpid(), pid;
    int killed;

    srv_start(&srv_a, -1);
    srv_hold(&srv_a, 6);
    cfg.batch_limit = 4;
    cfg.max_parallel = 2;
    cfg.retry.max_attempts = max_attempts;
    test_dir(base, sizeof(base), max_attempts > 1 ? "killtick" : "killtick1");
    ob_path(dir, sizeof(dir), base);
    url_of(url, sizeof(url), srv_a.port, "/orders");
    for (int i = 0; i < M; i++)
        specs[i] = spec_of("POST", url, "{\"item\":1}");
    ob = open_ob(dir, &cfg);
    CU_ASSERT_EQUAL_FATAL(cn_outbox_enqueue_many(ob, specs, M, NOW, ids), 0);
    cn_outbox_close(ob);

    fflush(NULL);
    pid = fork();
    CU_ASSERT_FATAL(pid >= 0);
    if (pid == 0)
        tick_child(dir, &cfg, parent);

    /* Kill it while the server holds one of its requests: that operation, and maybe others
     * of its batch, are Inflight. */
    CU_ASSERT(srv_wait_held(&srv_a, HOLD_BOUND_MS));
    killed = kill_and_reap(pid);
    CU_ASSERT(killed);
    srv_release(&srv_a);
    if (!killed) {
        srv_stop(&srv_a);
        return;
    }

    ob = open_ob(dir, &cfg);
    {
        cn_outbox_stats_t st = stats_of(ob);

        CU_ASSERT(st.count[CN_OUTBOX_INFLIGHT] >= 1);
        CU_ASSERT_EQUAL(st.total, M);
        list_ids(ob, CN_OUTBOX_INFLIGHT);
        for (size_t i = 0; i < listing.n && i < M; i++)
            memcpy(inflight[ninflight++], listing.ids[i], CN_OUTBOX_ID_SIZE);
        CU_ASSERT_EQUAL(ninflight, st.count[CN_OUTBOX_INFLIGHT]);
    }
    /* The held request was one of them. */
    {
        uint64_t total = srv_total(&srv_a);
        int held_inflight = 0;

        CU_ASSERT(total >= 6);
        pthread_mutex_lock(&srv_a.mu);
        for (size_t i = 0; i < ninflight; i++)
            held_inflight |= !strcmp(srv_a.reqs[5].key, inflight[i]);
        pthread_mutex_unlock(&srv_a.mu);
        CU_ASSERT(held_inflight);
    }

    /* The restarted worker takes the dead one's operations back, whatever their lease. */
    CU_ASSERT_EQUAL_FATAL(cn_outbox_worker_start(ob, NOW, NULL), 0);
    CU_ASSERT_EQUAL(stats_of(ob).count[CN_OUTBOX_INFLIGHT], 0);
    for (size_t i = 0; i < ninflight; i++) {
        cn_outbox_op_t *op = get_op(ob, inflight[i]);

        CU_ASSERT_EQUAL(op->attempt, 1);
        if (max_attempts > 1) {
            CU_ASSERT_EQUAL(op->status, CN_OUTBOX_PENDING);
            CU_ASSERT_EQUAL(op->next_attempt_at_ms, NOW);
        } else {
            CU_ASSERT_EQUAL(op->status, CN_OUTBOX_FAILED);
            CU_ASSERT_PTR_NOT_NULL(strstr(op->last_error, "interrupted"));
        }
        cn_outbox_op_free(op);
    }

    for (int t = 0; t < TICK_BOUND; t++) {
        cn_outbox_stats_t st = stats_of(ob);

        if (!st.count[CN_OUTBOX_PENDING] && !st.count[CN_OUTBOX_INFLIGHT])
            break;
        do_tick(ob, NOW + t, NULL);
    }
    {
        cn_outbox_stats_t st = stats_of(ob);
        size_t want_done = max_attempts > 1 ? M : M - ninflight;
        int resent = 0, lost = 0;

        CU_ASSERT_EQUAL(st.count[CN_OUTBOX_DONE], want_done);
        CU_ASSERT_EQUAL(st.count[CN_OUTBOX_FAILED], M - want_done);
        CU_ASSERT_EQUAL(st.count[CN_OUTBOX_PENDING] + st.count[CN_OUTBOX_INFLIGHT], 0);
        for (int i = 0; i < M; i++) {
            unsigned n = srv_count(&srv_a, ids[i]);
            int was_inflight = 0;

            for (size_t k = 0; k < ninflight; k++)
                was_inflight |= !strcmp(ids[i], inflight[k]);
            if (was_inflight && max_attempts == 1) {
                /* Failed, never sent again: what the dead worker sent, at most. */
                CU_ASSERT(n <= 1);
                continue;
            }
            /* Every operation reached the server; only those Inflight at the kill may have
             * reached it twice. */
            lost += n == 0;
            if (n != 1)
                resent++;
            CU_ASSERT(n >= 1 && n <= (was_inflight ? 2u : 1u));
        }
        CU_ASSERT_EQUAL(lost, 0);
        if (max_attempts > 1)
            CU_ASSERT(resent >= 1); /* at least the held one */
    }
    cn_outbox_close(ob);
    srv_stop(&srv_a);
}

static void
test_kill_tick(void)
{
    kill_tick_scenario(8);
}

static void
test_kill_tick_last_attempt(void)
{
    kill_tick_scenario(1);
}

/* The page size and the end of the used pages of an LMDB file, from its newest meta page
 * (LMDB 0.9 layout: a 16-byte page header, then magic, version, address, mapsize, two
 * 48-byte MDB_db of which the first one's md_pad is the page size, last_pg, txnid). */
static int
lmdb_used_end(const char *path, uint64_t *psize_out, uint64_t *end_out)
{
    uint8_t m0[256], m1[256];
    uint32_t magic, psize;
    uint64_t last0, last1, txn0, txn1;
    int fd = open(path, O_RDONLY | O_CLOEXEC);

    if (fd < 0 || pread(fd, m0, sizeof(m0), 0) != (ssize_t)sizeof(m0)) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    memcpy(&magic, m0 + 16, 4);
    memcpy(&psize, m0 + 40, 4);
    if (magic != 0xBEEFC0DEu || psize < 512 || psize > 65536 ||
        pread(fd, m1, sizeof(m1), psize) != (ssize_t)sizeof(m1)) {
        close(fd);
        return -1;
    }
    close(fd);
    memcpy(&last0, m0 + 136, 8);
    memcpy(&txn0, m0 + 144, 8);
    memcpy(&last1, m1 + 136, 8);
    memcpy(&txn1, m1 + 144, 8);
    *psize_out = psize;
    *end_out = ((txn1 > txn0 ? last1 : last0) + 1) * psize;
    return 0;
}

/* Writes n bytes of garbage at off of path (extending it as needed). */
static void
garbage_at(const char *path, uint64_t off, size_t n, uint32_t seed)
{
    uint8_t *g = malloc(n);
    int fd = open(path, O_WRONLY | O_CLOEXEC);

    CU_ASSERT_PTR_NOT_NULL_FATAL(g);
    CU_ASSERT_FATAL(fd >= 0);
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1103515245u + 12345u;
        g[i] = (uint8_t)(seed >> 16);
    }
    CU_ASSERT_EQUAL(pwrite(fd, g, n, (off_t)off), (ssize_t)n);
    CU_ASSERT_EQUAL(fsync(fd), 0);
    close(fd);
    free(g);
}

/* Checks that every id of ids[0..n) is there, Pending, with its payload. */
static void
expect_all_there(cn_outbox_t *ob, char (*ids)[CN_OUTBOX_ID_SIZE], size_t n)
{
    for (size_t i = 0; i < n; i++) {
        cn_outbox_op_t *op = NULL;
        char want[64];

        CU_ASSERT_EQUAL_FATAL(cn_outbox_get(ob, ids[i], &op), 0);
        snprintf(want, sizeof(want), "{\"n\":%zu}", i);
        CU_ASSERT_EQUAL(op->status, CN_OUTBOX_PENDING);
        CU_ASSERT_EQUAL(op->payload_len, strlen(want));
        CU_ASSERT_STRING_EQUAL(op->payload, want);
        cn_outbox_op_free(op);
    }
    CU_ASSERT_EQUAL(stats_of(ob).total, n);
}

static void
enqueue_numbered(cn_outbox_t *ob, char (*ids)[CN_OUTBOX_ID_SIZE], size_t from, size_t to)
{
    for (size_t i = from; i < to; i++) {
        char payload[64];
        cn_outbox_spec_t s;

        snprintf(payload, sizeof(payload), "{\"n\":%zu}", i);
        s = spec_of("POST", "http://127.0.0.1:9/orders", payload);
        enqueue_ok(ob, &s, NOW, ids[i]);
    }
}

static void
test_torn_tail(void)
{
    char base[512], dir[600], data[1024], ids[60][CN_OUTBOX_ID_SIZE];
    cn_outbox_t *ob;
    uint64_t psize = 0, end = 0;
    struct stat st;
    const char *p;

    test_dir(base, sizeof(base), "torn");
    ob_path(dir, sizeof(dir), base);
    ob = open_ob(dir, NULL);
    enqueue_numbered(ob, ids, 0, 20);
    cn_outbox_close(ob);
    p = find_file(dir, "data.mdb");
    CU_ASSERT_PTR_NOT_NULL_FATAL(p);
    snprintf(data, sizeof(data), "%s", p);

    /* 1. Garbage pages appended after the file: an uncommitted transaction's pages. */
    CU_ASSERT_EQUAL_FATAL(lmdb_used_end(data, &psize, &end), 0);
    CU_ASSERT_FATAL(stat(data, &st) == 0);
    garbage_at(data, (uint64_t)st.st_size, 3 * psize, 1);
    ob = open_ob(dir, NULL);
    expect_all_there(ob, ids, 20);
    enqueue_numbered(ob, ids, 20, 40);
    expect_all_there(ob, ids, 40);
    cn_outbox_close(ob);

    /* 2. Garbage over everything past the used end, and beyond the file. */
    CU_ASSERT_EQUAL_FATAL(lmdb_used_end(data, &psize, &end), 0);
    CU_ASSERT_FATAL(stat(data, &st) == 0);
    CU_ASSERT((uint64_t)st.st_size >= end);
    garbage_at(data, end, (size_t)((uint64_t)st.st_size - end + 5 * psize + 123), 2);
    ob = open_ob(dir, NULL);
    expect_all_there(ob, ids, 40);
    enqueue_numbered(ob, ids, 40, 60);
    expect_all_there(ob, ids, 60);
    cn_outbox_close(ob);
    ob = open_ob(dir, NULL);
    expect_all_there(ob, ids, 60);
    cn_outbox_close(ob);
}

/* Opens dir in a child (a crash must fail this test, not the suite) and returns what
 * happened: 'e' open failed with an error, 'o' open succeeded and a stats call failed,
 * 'k' open and stats succeeded, 'c' the child crashed (or hung). */
static char
open_in_child(const char *dir)
{
    pid_t parent = getpid(), pid;
    int status = 0;

    fflush(NULL);
    pid = fork();
    if (pid < 0)
        return 'c';
    if (pid == 0) {
        const struct rlimit no_core = {0, 0};
        cn_outbox_t *ob = NULL;
        cn_outbox_stats_t st;
        int rc;

        child_setup(parent);
        setrlimit(RLIMIT_CORE, &no_core); /* a crash here is expected to be possible */
        rc = cn_outbox_open(dir, NULL, &ob);
        if (rc) {
            fprintf(stderr, "  open refused it: %s\n", cn_strerror(rc));
            _exit(rc < 0 ? 10 : 13);
        }
        rc = cn_outbox_stats(ob, &st);
        if (rc == 0) {
            cn_outbox_op_t *op = NULL;

            /* Read something, too. */
            (void)cn_outbox_list(ob, -1, collect, &listing);
            (void)cn_outbox_get(ob, "00000000000000000000000000000000", &op);
            cn_outbox_op_free(op);
        }
        cn_outbox_close(ob);
        _exit(rc ? 11 : 12);
    }
    if (unit_reap_within(pid, REAP_BOUND_MS, &status) || !WIFEXITED(status)) {
        if (WIFSIGNALED(status))
            fprintf(stderr, "  the child died of signal %d\n", WTERMSIG(status));
        return 'c';
    }
    switch (WEXITSTATUS(status)) {
    case 10:
        return 'e';
    case 11:
        return 'o';
    case 12:
        return 'k';
    default:
        return 'c';
    }
}

static void
test_not_lmdb(void)
{
    char base[512], dir[600], data[1024], ids[4][CN_OUTBOX_ID_SIZE];
    uint64_t psize = 0, end = 0;
    cn_outbox_t *ob;
    const char *p;
    char got;
    int fd;

    test_dir(base, sizeof(base), "notlmdb");
    ob_path(dir, sizeof(dir), base);
    ob = open_ob(dir, NULL);
    enqueue_numbered(ob, ids, 0, 4);
    cn_outbox_close(ob);
    p = find_file(dir, "data.mdb");
    CU_ASSERT_PTR_NOT_NULL_FATAL(p);
    snprintf(data, sizeof(data), "%s", p);
    CU_ASSERT_EQUAL(lmdb_used_end(data, &psize, &end), 0);

    /* Random bytes where the meta pages were. */
    garbage_at(data, 0, 2 * 4096, 3);
    got = open_in_child(dir);
    CU_ASSERT_EQUAL(got, 'e');

    /* A short text file. */
    fd = open(data, O_WRONLY | O_TRUNC | O_CLOEXEC);
    CU_ASSERT_FATAL(fd >= 0);
    CU_ASSERT_EQUAL(write(fd, "this is not a database\n", 23), 23);
    close(fd);
    got = open_in_child(dir);
    CU_ASSERT_EQUAL(got, 'e');

    /* A real store cut short: its meta pages promise pages the file does not have. Any
     * error will do; a crash will not. */
    {
        char dir2[600];
        char ids2[200][CN_OUTBOX_ID_SIZE];

        snprintf(dir2, sizeof(dir2), "%s/ob2", base);
        ob = open_ob(dir2, NULL);
        enqueue_numbered(ob, ids2, 0, 200);
        cn_outbox_close(ob);
        p = find_file(dir2, "data.mdb");
        CU_ASSERT_PTR_NOT_NULL_FATAL(p);
        snprintf(data, sizeof(data), "%s", p);
        CU_ASSERT_EQUAL_FATAL(lmdb_used_end(data, &psize, &end), 0);
        CU_ASSERT_FATAL(end > 4 * psize);
        CU_ASSERT_EQUAL(truncate(data, (off_t)(2 * psize)), 0);
        got = open_in_child(dir2);
        CU_ASSERT(got == 'e' || got == 'o');
        if (got != 'e' && got != 'o')
            fprintf(stderr, "  a store cut short: %c (want an error)\n", got);
    }
}

int
main(void)
{
    static const unit_test_t tests[] = {
        {"open creates the directory, refuses a bad config", test_open},
        {"spec validation refuses bad operations, stores nothing", test_spec_validation},
        {"enqueue then get returns every field, after reopen too", test_enqueue_get},
        {"get with a malformed or unknown id", test_get_bad_ids},
        {"ids never collide across 2000 enqueues and reopens", test_ids_unique},
        {"enqueue_many is all or none", test_enqueue_many},
        {"list by status, in enqueue order, stoppable", test_list},
        {"tick: 2xx is Done, the answer kept, the request exact", test_tick_done},
        {"tick: large payload out, large answer truncated", test_tick_response_kept},
        {"tick: 4xx is Failed after one try, never resent", test_tick_permanent},
        {"tick: 503 until max_attempts, then Failed", test_tick_max_attempts},
        {"tick: Retry-After sets the next attempt", test_tick_retry_after},
        {"tick: 409 request-in-progress is retried", test_tick_in_progress},
        {"tick: batch_limit", test_tick_batch_limit},
        {"tick: a refused connection puts its origin offline", test_tick_offline},
        {"tick: the probe keeps an origin offline", test_tick_probe},
        {"tick: a server going down mid-batch is one backoff step", test_tick_outage_step},
        {"tick: fifo_per_target", test_tick_fifo},
        {"tick: a blocked backlog does not starve other targets", test_tick_backlog_no_starvation},
        {"requeue only from Failed", test_requeue},
        {"compact removes Done past the retention only", test_compact},
        {"a full map grows instead of refusing", test_map_grows},
        {"worker lock: EALREADY, EBUSY across processes", test_worker_lock},
        {"kill -9 during enqueue loses and duplicates nothing", test_kill_enqueue},
        {"kill -9 during enqueue_many: each batch whole or absent", test_kill_enqueue_many},
        {"kill -9 during ticks: Inflight back to Pending, all Done", test_kill_tick},
        {"kill -9 during the last attempt: Failed, interrupted", test_kill_tick_last_attempt},
        {"a torn tail after the last commit is ignored", test_torn_tail},
        {"a data file that is not LMDB is an error, not a crash", test_not_lmdb},
        {NULL, NULL},
    };
    int rc;

    signal(SIGPIPE, SIG_IGN);
    if (unit_tempdir("outbox", suite_dir, sizeof(suite_dir))) {
        perror("mkdtemp");
        return 1;
    }
    rc = unit_run("outbox_store", tests);
    if (unit_rmtree(suite_dir))
        fprintf(stderr, "warning: could not remove %s\n", suite_dir);
    return rc;
}
