/*
 * bench/cnload.c - HTTP/1.1 load generator for Cnerium's plain and durable routes.
 *
 *   cnload [options] URL_BASE          e.g. cnload --mode fresh --duration 5 http://127.0.0.1:8080
 *
 * Modes (what each request is):
 *   plain   GET --path (default /health)
 *   fresh   POST --path (default /orders) with a new Idempotency-Key every request
 *   replay  POST with one key, stored before the clock starts: every request replays
 *   retry   each key sent --retries K times in sequence on one connection (a retrying client)
 *   storm   K = --storm concurrent copies of each key on K connections, issued together
 *   mixed   --mix P percent plain GETs (--plain-path), the rest fresh durable POSTs
 *
 * Keep-alive connections, one request in flight on each, non-blocking sockets, one epoll
 * loop per thread (--threads 1 or 2, each with its share of the connections). A connection
 * the server closes is reopened and counted. Stops at --duration or --requests, whichever
 * comes first; a request waits at most --timeout; the run is bounded by the duration cap
 * plus the timeout. Loopback addresses only. Latencies (from the request's first byte
 * written to the response's last byte read) go to a log-linear histogram: exact below
 * 256 us, then 128 buckets per power of two (under 0.4% error), up to days.
 *
 * Exit status: 0 if requests completed without transport errors (connect, timeout,
 * connection lost with a request in flight, unparsable response), 1 otherwise, 2 on usage.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"

#define MAX_CONNS 20000
#define MAX_BODY (64 * 1024)
#define MAX_DURATION 300.0
#define INBUF 16384
#define SCAN_US 20000u

/* ---- latency histogram ------------------------------------------------------------- */

#define H_SUB 128      /* sub-buckets per power of two above the linear range */
#define H_MAXSHIFT 34  /* values up to 2^42 us */
#define H_BUCKETS (2 * H_SUB + H_MAXSHIFT * H_SUB)

typedef struct hist {
    uint64_t b[H_BUCKETS];
    uint64_t count, sum, max;
} hist_t;

static size_t
h_index(uint64_t v)
{
    int msb, shift;

    if (v < 2 * H_SUB)
        return (size_t)v;
    msb = 63 - __builtin_clzll(v);
    shift = msb - 7;
    if (shift > H_MAXSHIFT)
        return H_BUCKETS - 1;
    return 2 * H_SUB + (size_t)(shift - 1) * H_SUB + (size_t)((v >> shift) - H_SUB);
}

/* The middle of a bucket's range. */
static uint64_t
h_value(size_t i)
{
    size_t j, shift;

    if (i < 2 * H_SUB)
        return i;
    j = i - 2 * H_SUB;
    shift = j / H_SUB + 1;
    return ((uint64_t)(j % H_SUB + H_SUB) << shift) + (((uint64_t)1 << shift) - 1) / 2;
}

static void
h_record(hist_t *h, uint64_t v)
{
    h->b[h_index(v)]++;
    h->count++;
    h->sum += v;
    if (v > h->max)
        h->max = v;
}

static void
h_merge(hist_t *dst, const hist_t *src)
{
    for (size_t i = 0; i < H_BUCKETS; i++)
        dst->b[i] += src->b[i];
    dst->count += src->count;
    dst->sum += src->sum;
    if (src->max > dst->max)
        dst->max = src->max;
}

static uint64_t
h_percentile(const hist_t *h, double p)
{
    uint64_t want, seen = 0;

    if (!h->count)
        return 0;
    want = (uint64_t)(p / 100.0 * (double)h->count + 0.999999);
    if (want < 1)
        want = 1;
    for (size_t i = 0; i < H_BUCKETS; i++) {
        seen += h->b[i];
        if (seen >= want) {
            uint64_t v = h_value(i);
            return v < h->max ? v : h->max;
        }
    }
    return h->max;
}

/* ---- options -------------------------------------------------------------------------- */

enum { M_PLAIN, M_FRESH, M_REPLAY, M_RETRY, M_STORM, M_MIXED };
static const char *const mode_names[] = {"plain", "fresh", "replay", "retry", "storm", "mixed"};

static struct {
    int mode;
    int conns, threads;
    double duration;
    int duration_set;
    uint64_t max_requests; /* 0: no limit */
    int retries, storm, mix;
    double timeout;
    const char *path, *plain_path, *body, *operation, *url;
    char prefix[128];
    int json, metrics, uuid_keys;
    struct sockaddr_storage addr;
    socklen_t addrlen;
    char host[300]; /* Host header */
    size_t body_len;
} opt;

static atomic_int stop_flag;      /* SIGINT */
static atomic_uint_fast64_t issued; /* request budget used, for --requests */
static uint64_t start_us, deadline_us, hard_end_us;

static void
on_sigint(int sig)
{
    (void)sig;
    atomic_store(&stop_flag, 1);
}

/* ---- per-thread state ----------------------------------------------------------------- */

enum { C_DOWN, C_CONNECTING, C_IDLE, C_BUSY };
enum { P_HEAD, P_BODY_LEN, P_CHUNK_SIZE, P_CHUNK_DATA, P_TRAILER, P_BODY_EOF };
enum { R_CONNECT, R_TIMEOUT, R_LOST, R_PARSE, R_CLOSE };

typedef struct stats {
    hist_t lat;
    uint64_t s2xx, s201, replayed, s409, s4xx, s5xx, sother;
    uint64_t connect_err, timeouts, lost, parse_err, reconnects;
    uint64_t keys, sent;
    uint64_t end_us;
} stats_t;

typedef struct conn {
    int fd, state, opened;
    uint32_t gen;
    char *out;
    size_t out_cap, out_len, out_off;
    int want_out;
    char in[INBUF];
    size_t in_len;
    int pstate;
    uint64_t remaining;
    int status, replayed, close_after, chunked, have_len;
    uint64_t sent_us, deadline, retry_at;
    uint64_t key;  /* retry: key in use */
    int tries_left; /* retry: sends left for the key */
} conn_t;

typedef struct thread {
    int id, ep, nconns;
    conn_t *conns;
    int inflight, exhausted;
    uint64_t next_key, rng;
    pthread_t tid;
    stats_t st;
} thread_t;

static void conn_ready(thread_t *t, conn_t *c);
static void conn_open(thread_t *t, conn_t *c);

static uint64_t
conn_tag(const thread_t *t, const conn_t *c)
{
    return (uint64_t)c->gen << 32 | (uint64_t)(c - t->conns);
}

/* Whether the run may issue n more requests (and takes them from the --requests budget). */
static int
reserve(thread_t *t, uint64_t n)
{
    if (t->exhausted)
        return 0;
    if (atomic_load(&stop_flag) || bench_now_us() >= deadline_us) {
        t->exhausted = 1;
        return 0;
    }
    if (opt.max_requests) {
        uint64_t before = atomic_fetch_add(&issued, n);
        if (before + n > opt.max_requests) {
            t->exhausted = 1;
            return 0;
        }
    }
    return 1;
}

static void
conn_close(thread_t *t, conn_t *c)
{
    if (c->fd >= 0)
        close(c->fd); /* which also takes it out of the epoll set */
    c->fd = -1;
    c->gen++;
    if (c->state == C_BUSY)
        t->inflight--;
    c->state = C_DOWN;
    c->in_len = 0;
    c->pstate = P_HEAD;
    c->want_out = 0;
}

/* Closes a connection for a reason (counted) and opens it again, at once or after a
 * pause when connecting failed. */
static void
conn_down(thread_t *t, conn_t *c, int reason)
{
    int busy = c->state == C_BUSY;

    switch (reason) {
    case R_CONNECT: t->st.connect_err++; break;
    case R_TIMEOUT: t->st.timeouts++; break;
    case R_PARSE: t->st.parse_err++; break;
    case R_LOST: t->st.lost += (uint64_t)busy; break;
    default: break;
    }
    conn_close(t, c);
    c->retry_at = bench_now_us() + (reason == R_CONNECT ? 100000u : 0u);
    if (reason != R_CONNECT && !t->exhausted)
        conn_open(t, c);
}

static void
conn_open(thread_t *t, conn_t *c)
{
    struct epoll_event e;
    int one = 1, rc;

    c->fd = socket(opt.addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        perror("cnload: socket");
        c->state = C_DOWN;
        t->st.connect_err++;
        c->retry_at = bench_now_us() + 100000u;
        return;
    }
    if (c->opened++)
        t->st.reconnects++;
    if (setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)))
        perror("cnload: TCP_NODELAY");
    rc = connect(c->fd, (const struct sockaddr *)&opt.addr, opt.addrlen);
    if (rc && errno != EINPROGRESS) {
        c->state = C_CONNECTING; /* so that conn_down counts it as a connect error */
        conn_down(t, c, R_CONNECT);
        return;
    }
    c->state = rc ? C_CONNECTING : C_IDLE;
    e.events = rc ? EPOLLOUT : EPOLLIN;
    e.data.u64 = conn_tag(t, c);
    if (epoll_ctl(t->ep, EPOLL_CTL_ADD, c->fd, &e)) {
        perror("cnload: epoll_ctl ADD");
        conn_down(t, c, R_CONNECT);
        return;
    }
    if (!rc)
        conn_ready(t, c);
}

static void
set_events(thread_t *t, conn_t *c, uint32_t events)
{
    struct epoll_event e = {.events = events, .data.u64 = conn_tag(t, c)};

    if (epoll_ctl(t->ep, EPOLL_CTL_MOD, c->fd, &e))
        perror("cnload: epoll_ctl MOD");
}

/* Writes what is left of the request. */
static void
conn_flush(thread_t *t, conn_t *c)
{
    while (c->out_off < c->out_len) {
        ssize_t w = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (w > 0) {
            c->out_off += (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (!c->want_out) {
                set_events(t, c, EPOLLIN | EPOLLOUT);
                c->want_out = 1;
            }
            return;
        }
        conn_down(t, c, R_LOST);
        return;
    }
    if (c->want_out) {
        set_events(t, c, EPOLLIN);
        c->want_out = 0;
    }
}

static int
format_post(conn_t *c, const char *key)
{
    int n = snprintf(c->out, c->out_cap,
                     "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                     "Idempotency-Key: %s\r\nContent-Length: %zu\r\n\r\n%s",
                     opt.path, opt.host, key, opt.body_len, opt.body);

    if (n < 0 || (size_t)n >= c->out_cap)
        return -1;
    c->out_len = (size_t)n;
    return 0;
}

static int
format_get(conn_t *c, const char *path)
{
    int n = snprintf(c->out, c->out_cap, "GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", path, opt.host);

    if (n < 0 || (size_t)n >= c->out_cap)
        return -1;
    c->out_len = (size_t)n;
    return 0;
}

/* splitmix64's finalizer: --uuid-keys derives a random-looking key from (thread, n), so
 * retry and storm modes name the same key again. */
static uint64_t
mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    return x ^ (x >> 33);
}

static void
key_name(char *dst, size_t cap, int tid, uint64_t k)
{
    uint64_t h, h2;

    if (!opt.uuid_keys) {
        snprintf(dst, cap, "%s-%d-%" PRIu64, opt.prefix, tid, k);
        return;
    }
    h = mix64(((uint64_t)tid << 48) ^ k);
    h2 = mix64(h ^ 0x9e3779b97f4a7c15ull);
    snprintf(dst, cap, "%s-%08" PRIx64 "-%04" PRIx64 "-4%03" PRIx64 "-%04" PRIx64 "-%012" PRIx64,
             opt.prefix, h >> 32, (h >> 16) & 0xffff, h & 0xfff, 0x8000 | ((h2 >> 48) & 0x3fff),
             h2 & UINT64_C(0xffffffffffff));
}

static void
conn_send(thread_t *t, conn_t *c)
{
    c->out_off = 0;
    c->state = C_BUSY;
    c->pstate = P_HEAD;
    c->sent_us = bench_now_us();
    c->deadline = c->sent_us + (uint64_t)(opt.timeout * 1e6);
    t->inflight++;
    t->st.sent++;
    conn_flush(t, c);
}

static uint64_t
xorshift(uint64_t *s)
{
    uint64_t x = *s;

    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

/* Storm: the group's K connections send copies of one new key together, once all are
 * idle and connected. */
static void
storm_try(thread_t *t, conn_t *c)
{
    size_t g = (size_t)(c - t->conns) / (size_t)opt.storm;
    conn_t *m = &t->conns[g * (size_t)opt.storm];
    char key[300];
    uint64_t k;

    for (int i = 0; i < opt.storm; i++)
        if (m[i].state != C_IDLE)
            return;
    if (!reserve(t, (uint64_t)opt.storm))
        return;
    k = t->next_key++;
    t->st.keys++;
    key_name(key, sizeof(key), t->id, k);
    for (int i = 0; i < opt.storm; i++)
        if (format_post(&m[i], key)) {
            fprintf(stderr, "cnload: request does not fit\n");
            exit(1);
        }
    for (int i = 0; i < opt.storm; i++)
        if (m[i].state == C_IDLE) /* a send can fail and reopen a connection */
            conn_send(t, &m[i]);
}

/* An idle connected connection: send its next request, if the run goes on. */
static void
conn_ready(thread_t *t, conn_t *c)
{
    char key[300];
    int rc = 0;

    if (opt.mode == M_STORM) {
        storm_try(t, c);
        return;
    }
    if (opt.mode == M_RETRY) {
        if (c->tries_left <= 0) {
            if (!reserve(t, (uint64_t)opt.retries))
                return;
            c->key = t->next_key++;
            c->tries_left = opt.retries;
            t->st.keys++;
        }
        c->tries_left--;
        key_name(key, sizeof(key), t->id, c->key);
        rc = format_post(c, key);
    } else {
        if (!reserve(t, 1))
            return;
        switch (opt.mode) {
        case M_PLAIN: rc = format_get(c, opt.path); break;
        case M_REPLAY:
            snprintf(key, sizeof(key), "%s-replay", opt.prefix);
            rc = format_post(c, key);
            break;
        case M_MIXED:
            if (xorshift(&t->rng) % 100 < (uint64_t)opt.mix) {
                rc = format_get(c, opt.plain_path);
                break;
            }
            /* fall through */
        default:
            key_name(key, sizeof(key), t->id, t->next_key++);
            t->st.keys++;
            rc = format_post(c, key);
            break;
        }
    }
    if (rc) {
        fprintf(stderr, "cnload: request does not fit\n");
        exit(1);
    }
    conn_send(t, c);
}

/* ---- response parsing ----------------------------------------------------------------- */

static void
consume(conn_t *c, size_t n)
{
    memmove(c->in, c->in + n, c->in_len - n);
    c->in_len -= n;
}

/* Parses the head at the start of c->in (complete, head bytes long). */
static int
parse_head(conn_t *c, size_t head)
{
    const char *p = c->in, *end = c->in + head - 2;
    int minor;

    if (head < 14 || memcmp(p, "HTTP/1.", 7) || p[8] != ' ' || p[9] < '1' || p[9] > '5' ||
        p[10] < '0' || p[10] > '9' || p[11] < '0' || p[11] > '9')
        return -1;
    minor = p[7] - '0';
    c->status = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
    c->replayed = c->chunked = c->have_len = 0;
    c->close_after = minor == 0;
    c->remaining = 0;
    p = memchr(p, '\n', head);
    if (!p)
        return -1;
    p++;
    while (p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p) + 1), *colon, *v, *ve;
        if (!eol)
            return -1;
        colon = memchr(p, ':', (size_t)(eol - p));
        if (colon) {
            v = colon + 1;
            while (v < eol && (*v == ' ' || *v == '\t'))
                v++;
            ve = eol;
            while (ve > v && (ve[-1] == '\r' || ve[-1] == ' ' || ve[-1] == '\t'))
                ve--;
            if (bench_name_is(p, (size_t)(colon - p), "content-length")) {
                char *e;
                errno = 0;
                unsigned long long n = strtoull(v, &e, 10);
                if (e == v || e != ve || errno)
                    return -1;
                c->remaining = n;
                c->have_len = 1;
            } else if (bench_name_is(p, (size_t)(colon - p), "transfer-encoding")) {
                c->chunked = bench_ci_contains(v, (size_t)(ve - v), "chunked");
            } else if (bench_name_is(p, (size_t)(colon - p), "connection")) {
                if (bench_ci_contains(v, (size_t)(ve - v), "close"))
                    c->close_after = 1;
                else if (bench_ci_contains(v, (size_t)(ve - v), "keep-alive"))
                    c->close_after = 0;
            } else if (bench_name_is(p, (size_t)(colon - p), "idempotent-replayed")) {
                c->replayed = ve - v == 4 && !strncasecmp(v, "true", 4);
            }
        }
        p = eol + 1;
    }
    return 0;
}

/* Advances the parser over c->in. Returns 1 when a response is complete, 0 when it needs
 * more bytes, -1 on a malformed response. */
static int
feed(conn_t *c)
{
    for (;;) {
        switch (c->pstate) {
        case P_HEAD: {
            char *e = memmem(c->in, c->in_len, "\r\n\r\n", 4);
            size_t head;
            if (!e)
                return c->in_len == INBUF ? -1 : 0;
            head = (size_t)(e - c->in) + 4;
            if (parse_head(c, head))
                return -1;
            consume(c, head);
            if (c->status < 200)
                continue; /* interim response */
            if (c->status == 204 || c->status == 304)
                return 1;
            if (c->chunked)
                c->pstate = P_CHUNK_SIZE;
            else if (c->have_len)
                c->pstate = P_BODY_LEN;
            else {
                c->pstate = P_BODY_EOF;
                c->close_after = 1;
            }
            continue;
        }
        case P_BODY_LEN:
        case P_CHUNK_DATA: {
            size_t n = c->remaining < c->in_len ? (size_t)c->remaining : c->in_len;
            consume(c, n);
            c->remaining -= n;
            if (c->remaining)
                return 0;
            if (c->pstate == P_BODY_LEN)
                return 1;
            c->pstate = P_CHUNK_SIZE;
            continue;
        }
        case P_CHUNK_SIZE:
        case P_TRAILER: {
            char *e = memmem(c->in, c->in_len, "\r\n", 2);
            size_t line;
            if (!e)
                return c->in_len == INBUF ? -1 : 0;
            line = (size_t)(e - c->in);
            if (c->pstate == P_TRAILER) {
                consume(c, line + 2);
                if (!line)
                    return 1;
                continue;
            }
            char *x;
            errno = 0;
            unsigned long long n = strtoull(c->in, &x, 16);
            if (x == c->in || errno || n > (1ull << 40))
                return -1;
            consume(c, line + 2);
            if (!n) {
                c->pstate = P_TRAILER;
            } else {
                c->remaining = n + 2;
                c->pstate = P_CHUNK_DATA;
            }
            continue;
        }
        case P_BODY_EOF:
            c->in_len = 0;
            return 0;
        default:
            return -1;
        }
    }
}

static void
on_response(thread_t *t, conn_t *c)
{
    uint64_t now = bench_now_us();
    stats_t *s = &t->st;
    int st = c->status;

    h_record(&s->lat, now > c->sent_us ? now - c->sent_us : 0);
    if (st >= 200 && st < 300) {
        s->s2xx++;
        s->s201 += st == 201;
    } else if (st == 409) {
        s->s409++;
    } else if (st >= 400 && st < 500) {
        s->s4xx++;
    } else if (st >= 500 && st < 600) {
        s->s5xx++;
    } else {
        s->sother++;
    }
    s->replayed += (uint64_t)c->replayed;
    c->state = C_IDLE;
    t->inflight--;
    c->pstate = P_HEAD;
    if (c->in_len) { /* bytes nobody asked for */
        conn_down(t, c, R_PARSE);
        return;
    }
    if (c->close_after) {
        conn_down(t, c, R_CLOSE);
        return;
    }
    conn_ready(t, c);
}

static void
conn_read(thread_t *t, conn_t *c)
{
    uint32_t gen = c->gen;

    for (;;) {
        ssize_t r = read(c->fd, c->in + c->in_len, INBUF - c->in_len);
        if (r > 0) {
            int rc;
            c->in_len += (size_t)r;
            if (c->state != C_BUSY) {
                conn_down(t, c, R_PARSE); /* unsolicited bytes */
                return;
            }
            while ((rc = feed(c)) == 1) {
                on_response(t, c);
                if (c->gen != gen || c->state != C_BUSY)
                    return;
            }
            if (rc < 0) {
                conn_down(t, c, R_PARSE);
                return;
            }
            continue;
        }
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        /* EOF or error */
        if (r == 0 && c->state == C_BUSY && c->pstate == P_BODY_EOF) {
            c->close_after = 1;
            c->in_len = 0;
            on_response(t, c);
            return;
        }
        conn_down(t, c, R_LOST);
        return;
    }
}

static void
on_event(thread_t *t, uint64_t tag, uint32_t events)
{
    uint32_t idx = (uint32_t)tag, gen = (uint32_t)(tag >> 32);
    conn_t *c;

    if (idx >= (uint32_t)t->nconns)
        return;
    c = &t->conns[idx];
    if (c->gen != gen || c->fd < 0)
        return; /* an event for a connection closed since */
    if (c->state == C_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof(err);
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) || err) {
            conn_down(t, c, R_CONNECT);
            return;
        }
        c->state = C_IDLE;
        set_events(t, c, EPOLLIN);
        conn_ready(t, c);
        return;
    }
    if ((events & EPOLLOUT) && c->state == C_BUSY && c->out_off < c->out_len) {
        conn_flush(t, c);
        if (c->gen != gen)
            return;
    }
    if (events & (EPOLLIN | EPOLLHUP | EPOLLERR))
        conn_read(t, c);
}

/* Timeouts and pending reconnects. */
static void
scan(thread_t *t, uint64_t now)
{
    for (int i = 0; i < t->nconns; i++) {
        conn_t *c = &t->conns[i];
        if (c->state == C_BUSY && now >= c->deadline)
            conn_down(t, c, R_TIMEOUT);
        else if (c->state == C_DOWN && c->fd < 0 && !t->exhausted && now >= c->retry_at)
            conn_open(t, c);
    }
}

static void *
thread_main(void *arg)
{
    thread_t *t = arg;
    struct epoll_event evs[256];
    uint64_t next_scan = 0;

    for (int i = 0; i < t->nconns; i++)
        conn_open(t, &t->conns[i]);
    for (;;) {
        uint64_t now = bench_now_us();
        int n;

        if (!t->exhausted && (now >= deadline_us || atomic_load(&stop_flag)))
            t->exhausted = 1;
        if (t->exhausted && !t->inflight)
            break;
        if (now >= hard_end_us) {
            for (int i = 0; i < t->nconns; i++)
                if (t->conns[i].state == C_BUSY) {
                    t->st.timeouts++;
                    conn_close(t, &t->conns[i]);
                }
            break;
        }
        if (now >= next_scan) {
            scan(t, now);
            next_scan = now + SCAN_US;
        }
        n = epoll_wait(t->ep, evs, 256, 10);
        if (n < 0 && errno != EINTR) {
            perror("cnload: epoll_wait");
            break;
        }
        for (int i = 0; i < n; i++)
            on_event(t, evs[i].data.u64, evs[i].events);
    }
    t->st.end_us = bench_now_us();
    for (int i = 0; i < t->nconns; i++)
        conn_close(t, &t->conns[i]);
    return NULL;
}

/* ---- blocking one-off requests (replay seed, /metrics) -------------------------------- */

/* Sends req on a new connection and reads the response into out (NUL-terminated), within
 * timeout_ms. Returns the status, or -1. *body points into out. */
static int
http_once(const char *req, size_t len, char *out, size_t cap, const char **body, int timeout_ms)
{
    uint64_t end = bench_now_us() + (uint64_t)timeout_ms * 1000u;
    int fd = socket(opt.addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0), status = -1;
    size_t got = 0, off = 0;
    struct timeval tv = {.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000};

    if (fd < 0)
        return -1;
    if (setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) ||
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) ||
        connect(fd, (const struct sockaddr *)&opt.addr, opt.addrlen))
        goto out;
    while (off < len) {
        ssize_t w = send(fd, req + off, len - off, MSG_NOSIGNAL);
        if (w <= 0)
            goto out;
        off += (size_t)w;
    }
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        uint64_t now = bench_now_us();
        int rc;
        ssize_t r;
        char *hend;

        if (now >= end || got + 1 >= cap)
            break;
        rc = poll(&p, 1, (int)((end - now) / 1000u) + 1);
        if (rc < 0 && errno == EINTR)
            continue;
        if (rc <= 0)
            break;
        r = read(fd, out + got, cap - 1 - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
        out[got] = '\0';
        hend = strstr(out, "\r\n\r\n");
        if (hend) {
            const char *cl = strcasestr(out, "\r\nContent-Length:");
            if (cl && cl < hend &&
                got >= (size_t)(hend + 4 - out) + strtoull(cl + 17, NULL, 10))
                break;
        }
    }
    out[got] = '\0';
    if (got >= 12 && !memcmp(out, "HTTP/1.", 7)) {
        char *hend = strstr(out, "\r\n\r\n");
        status = atoi(out + 9);
        *body = hend ? hend + 4 : out + got;
    }
out:
    close(fd);
    return status;
}

enum { OUTCOMES = 5 };
static const char *const outcome_names[OUTCOMES] = {"executed", "replayed", "conflict",
                                                    "invalid", "failed"};

/* Reads the operation's durable outcome counters from GET /metrics. */
static int
read_metrics(uint64_t v[OUTCOMES])
{
    static char buf[1 << 20];
    char req[512];
    const char *body = NULL;
    int n = snprintf(req, sizeof(req),
                     "GET /metrics HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", opt.host);

    if (n < 0 || (size_t)n >= sizeof(req) ||
        http_once(req, (size_t)n, buf, sizeof(buf), &body, 5000) != 200)
        return -1;
    for (int o = 0; o < OUTCOMES; o++) {
        char name[200];
        const char *p;
        snprintf(name, sizeof(name),
                 "\ncnerium_durable_requests_total{operation=\"%s\",outcome=\"%s\"} ",
                 opt.operation, outcome_names[o]);
        p = strstr(body, name);
        v[o] = p ? strtoull(p + strlen(name), NULL, 10) : 0;
    }
    return 0;
}

/* ---- setup and report ------------------------------------------------------------------ */

static void
usage(void)
{
    fprintf(stderr,
            "usage: cnload [options] URL_BASE      (loopback only, e.g. http://127.0.0.1:8080)\n"
            "  --mode plain|fresh|replay|retry|storm|mixed   (default plain)\n"
            "  --connections N    keep-alive connections (default 64)\n"
            "  --threads T        1 or 2 event loops (default 1)\n"
            "  --duration S       seconds, at most 300 (default 5)\n"
            "  --requests N       stop after N requests (whichever comes first)\n"
            "  --path P           default /orders (durable modes), /health (plain)\n"
            "  --plain-path P     mixed mode's GET path (default /health)\n"
            "  --body JSON        durable request body\n"
            "                     (default {\"product_id\":\"p1\",\"quantity\":1})\n"
            "  --retries K        retry mode: sends per key, in sequence (default 3)\n"
            "  --storm K          storm mode: concurrent copies per key (default 4)\n"
            "  --mix P            mixed mode: percent plain GETs (default 50)\n"
            "  --key-prefix S     Idempotency-Key prefix (default from time and pid)\n"
            "  --uuid-keys        keys end in a random UUID (as most clients make them),\n"
            "                     not a counter: each lands on a B-tree page of its own\n"
            "  --timeout S        per-request timeout (default 10)\n"
            "  --metrics          read GET /metrics before and after; print outcome deltas\n"
            "  --operation NAME   operation for --metrics (default orders.create)\n"
            "  --json             one-line JSON summary\n"
            "Reports req/s, latency percentiles, status counts (replayed: responses with\n"
            "Idempotent-Replayed: true), transport errors, reconnects (connections opened\n"
            "again after the server closed one, or after a failed attempt) and keys used.\n"
            "Exit 0 if requests completed without transport errors, 1 otherwise.\n");
}

static void
json_str(const char *s)
{
    putchar('"');
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            printf("\\%c", ch);
        else if (ch < 0x20)
            printf("\\u%04x", ch);
        else
            putchar(ch);
    }
    putchar('"');
}

static int
valid_prefix(const char *s)
{
    size_t n = strlen(s);

    if (!n || n > 100)
        return 0;
    for (; *s; s++)
        if (*s <= 0x20 || *s >= 0x7f || *s == '"' || *s == '\\')
            return 0;
    return 1;
}

int
main(int argc, char **argv)
{
    const char *url_path = NULL;
    thread_t *threads;
    stats_t tot;
    uint64_t m0[OUTCOMES] = {0}, m1[OUTCOMES] = {0};
    int have_metrics = 0, used_conns;
    double elapsed;
    struct sigaction sa;
    struct rlimit rl;
    char seedinfo[64] = "";

    opt.mode = M_PLAIN;
    opt.conns = 64;
    opt.threads = 1;
    opt.duration = 5;
    opt.retries = 3;
    opt.storm = 4;
    opt.mix = 50;
    opt.timeout = 10;
    opt.plain_path = "/health";
    opt.body = "{\"product_id\":\"p1\",\"quantity\":1}";
    opt.operation = "orders.create";
    snprintf(opt.prefix, sizeof(opt.prefix), "cnl%llx-%d",
             (unsigned long long)time(NULL), (int)getpid());

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        double d;
        int takes = 1;

        if (!strcmp(a, "--json")) {
            opt.json = 1;
            takes = 0;
        } else if (!strcmp(a, "--metrics")) {
            opt.metrics = 1;
            takes = 0;
        } else if (!strcmp(a, "--uuid-keys")) {
            opt.uuid_keys = 1;
            takes = 0;
        } else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage();
            return 0;
        } else if (a[0] != '-') {
            if (opt.url) {
                usage();
                return 2;
            }
            opt.url = a;
            takes = 0;
        } else if (!v) {
            fprintf(stderr, "cnload: %s needs a value\n", a);
            return 2;
        } else if (!strcmp(a, "--mode")) {
            int m = -1;
            for (int k = 0; k < (int)(sizeof(mode_names) / sizeof(*mode_names)); k++)
                if (!strcmp(v, mode_names[k]))
                    m = k;
            if (m < 0) {
                fprintf(stderr, "cnload: unknown mode %s\n", v);
                return 2;
            }
            opt.mode = m;
        } else if (!strcmp(a, "--connections") || !strcmp(a, "-c")) {
            if (bench_parse_num(v, 1, MAX_CONNS, &d))
                goto bad;
            opt.conns = (int)d;
        } else if (!strcmp(a, "--threads") || !strcmp(a, "-t")) {
            if (bench_parse_num(v, 1, 2, &d))
                goto bad;
            opt.threads = (int)d;
        } else if (!strcmp(a, "--duration") || !strcmp(a, "-d")) {
            if (bench_parse_num(v, 0.01, MAX_DURATION, &d))
                goto bad;
            opt.duration = d;
            opt.duration_set = 1;
        } else if (!strcmp(a, "--requests") || !strcmp(a, "-n")) {
            if (bench_parse_num(v, 1, 1e12, &d))
                goto bad;
            opt.max_requests = (uint64_t)d;
        } else if (!strcmp(a, "--retries")) {
            if (bench_parse_num(v, 1, 1000, &d))
                goto bad;
            opt.retries = (int)d;
        } else if (!strcmp(a, "--storm")) {
            if (bench_parse_num(v, 1, 1000, &d))
                goto bad;
            opt.storm = (int)d;
        } else if (!strcmp(a, "--mix")) {
            if (bench_parse_num(v, 0, 100, &d))
                goto bad;
            opt.mix = (int)d;
        } else if (!strcmp(a, "--timeout")) {
            if (bench_parse_num(v, 0.01, 600, &d))
                goto bad;
            opt.timeout = d;
        } else if (!strcmp(a, "--path")) {
            opt.path = v;
        } else if (!strcmp(a, "--plain-path")) {
            opt.plain_path = v;
        } else if (!strcmp(a, "--body")) {
            opt.body = v;
        } else if (!strcmp(a, "--operation")) {
            opt.operation = v;
        } else if (!strcmp(a, "--key-prefix")) {
            if (!valid_prefix(v)) {
                fprintf(stderr, "cnload: --key-prefix: 1-100 printable characters, no "
                                "spaces or quotes\n");
                return 2;
            }
            snprintf(opt.prefix, sizeof(opt.prefix), "%s", v);
        } else {
            fprintf(stderr, "cnload: unknown option %s\n", a);
            usage();
            return 2;
        }
        i += takes;
        continue;
    bad:
        fprintf(stderr, "cnload: bad value for %s: %s\n", a, v);
        return 2;
    }
    if (!opt.url) {
        usage();
        return 2;
    }
    if (bench_parse_url("cnload", opt.url, &opt.addr, &opt.addrlen, opt.host, sizeof(opt.host),
                        &url_path))
        return 2;
    if (!*url_path)
        url_path = NULL;
    if (!opt.path)
        opt.path = url_path ? url_path : opt.mode == M_PLAIN ? "/health" : "/orders";
    if (opt.path[0] != '/' || opt.plain_path[0] != '/' || strpbrk(opt.path, " \r\n") ||
        strpbrk(opt.plain_path, " \r\n")) {
        fprintf(stderr, "cnload: paths start with / and hold no spaces\n");
        return 2;
    }
    opt.body_len = strlen(opt.body);
    if (opt.body_len > MAX_BODY) {
        fprintf(stderr, "cnload: --body is limited to %d bytes\n", MAX_BODY);
        return 2;
    }
    if (opt.max_requests && !opt.duration_set)
        opt.duration = MAX_DURATION; /* --requests alone: bounded by the cap */
    if (opt.mode == M_STORM) {
        int groups = opt.conns / opt.storm;
        if (groups < opt.threads) {
            fprintf(stderr, "cnload: storm mode needs --connections >= --storm x --threads\n");
            return 2;
        }
        used_conns = groups * opt.storm;
    } else {
        used_conns = opt.conns;
    }
    if (opt.threads > used_conns)
        opt.threads = used_conns;

    /* File descriptors for every connection, and no SIGPIPE. */
    if (!getrlimit(RLIMIT_NOFILE, &rl) && rl.rlim_cur < (rlim_t)used_conns + 64) {
        rl.rlim_cur = rl.rlim_max < (rlim_t)used_conns + 64 ? rl.rlim_max
                                                            : (rlim_t)used_conns + 64;
        if (setrlimit(RLIMIT_NOFILE, &rl))
            perror("cnload: setrlimit");
    }
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = SIG_IGN;
    if (sigaction(SIGPIPE, &sa, NULL))
        perror("cnload: sigaction");
    sa.sa_handler = on_sigint;
    if (sigaction(SIGINT, &sa, NULL) || sigaction(SIGTERM, &sa, NULL))
        perror("cnload: sigaction");

    /* The server must answer before the clock starts. */
    {
        int fd = socket(opt.addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0 || connect(fd, (const struct sockaddr *)&opt.addr, opt.addrlen)) {
            fprintf(stderr, "cnload: cannot connect to %s: %s\n", opt.url, strerror(errno));
            return 1;
        }
        close(fd);
    }
    if (opt.mode == M_REPLAY) {
        /* Store the key once, so that every measured request is a replay. */
        static char buf[65536];
        char *req = malloc(opt.body_len + 1024);
        const char *body = NULL;
        int n, st;
        if (!req)
            return 1;
        n = snprintf(req, opt.body_len + 1024,
                     "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                     "Idempotency-Key: %s-replay\r\nConnection: close\r\n"
                     "Content-Length: %zu\r\n\r\n%s",
                     opt.path, opt.host, opt.prefix, opt.body_len, opt.body);
        st = n > 0 ? http_once(req, (size_t)n, buf, sizeof(buf), &body, 10000) : -1;
        free(req);
        snprintf(seedinfo, sizeof(seedinfo), "seed request: %d", st);
        if (st < 200 || st >= 300)
            fprintf(stderr, "cnload: warning: the replay key's first request got %d\n", st);
    }
    if (opt.metrics) {
        have_metrics = !read_metrics(m0);
        if (!have_metrics)
            fprintf(stderr, "cnload: warning: cannot read GET /metrics\n");
    }

    threads = calloc((size_t)opt.threads, sizeof(*threads));
    if (!threads)
        return 1;
    {
        /* Storm: whole groups per thread; otherwise an even split. */
        int unit = opt.mode == M_STORM ? opt.storm : 1, units = used_conns / unit;
        for (int i = 0; i < opt.threads; i++) {
            thread_t *t = &threads[i];
            int mine = (units / opt.threads + (i < units % opt.threads)) * unit;
            size_t cap = 1024 + strlen(opt.path) + strlen(opt.plain_path) + strlen(opt.host) +
                         strlen(opt.prefix) + opt.body_len;
            t->id = i;
            t->nconns = mine;
            t->rng = 0x9e3779b97f4a7c15ull ^ ((uint64_t)(i + 1) * 0xbf58476d1ce4e5b9ull) ^
                     (uint64_t)getpid();
            t->conns = calloc((size_t)mine, sizeof(*t->conns));
            t->ep = epoll_create1(EPOLL_CLOEXEC);
            if (!t->conns || t->ep < 0) {
                perror("cnload: setup");
                return 1;
            }
            for (int k = 0; k < mine; k++) {
                t->conns[k].fd = -1;
                t->conns[k].out_cap = cap;
                t->conns[k].out = malloc(cap);
                if (!t->conns[k].out)
                    return 1;
            }
        }
    }

    start_us = bench_now_us();
    deadline_us = start_us + (uint64_t)(opt.duration * 1e6);
    hard_end_us = deadline_us + (uint64_t)(opt.timeout * 1e6) + 100000u;
    for (int i = 0; i < opt.threads; i++) {
        int rc = pthread_create(&threads[i].tid, NULL, thread_main, &threads[i]);
        if (rc) {
            fprintf(stderr, "cnload: pthread_create: %s\n", strerror(rc));
            return 1;
        }
    }
    memset(&tot, 0, sizeof(tot));
    for (int i = 0; i < opt.threads; i++) {
        stats_t *s = &threads[i].st;
        int rc = pthread_join(threads[i].tid, NULL);
        if (rc) {
            fprintf(stderr, "cnload: pthread_join: %s\n", strerror(rc));
            return 1;
        }
        h_merge(&tot.lat, &s->lat);
        tot.s2xx += s->s2xx;
        tot.s201 += s->s201;
        tot.replayed += s->replayed;
        tot.s409 += s->s409;
        tot.s4xx += s->s4xx;
        tot.s5xx += s->s5xx;
        tot.sother += s->sother;
        tot.connect_err += s->connect_err;
        tot.timeouts += s->timeouts;
        tot.lost += s->lost;
        tot.parse_err += s->parse_err;
        tot.reconnects += s->reconnects;
        tot.keys += s->keys;
        tot.sent += s->sent;
        if (s->end_us > tot.end_us)
            tot.end_us = s->end_us;
    }
    if (opt.mode == M_REPLAY)
        tot.keys = 1;
    elapsed = (double)(tot.end_us - start_us) / 1e6;
    if (elapsed <= 0)
        elapsed = 1e-6;
    if (have_metrics && read_metrics(m1)) {
        fprintf(stderr, "cnload: warning: cannot read GET /metrics after the run\n");
        have_metrics = 0;
    }

    uint64_t done = tot.lat.count, errors = tot.connect_err + tot.timeouts + tot.lost +
                                            tot.parse_err;
    double rps = (double)done / elapsed;
    const hist_t *h = &tot.lat;
    if (opt.json) {
        printf("{\"tool\":\"cnload\",\"mode\":\"%s\",\"url\":", mode_names[opt.mode]);
        json_str(opt.url);
        printf(",\"path\":");
        json_str(opt.path);
        printf(",\"connections\":%d,\"threads\":%d,\"elapsed_s\":%.3f,\"sent\":%" PRIu64
               ",\"requests\":%" PRIu64 ",\"rps\":%.1f,\"latency_us\":{\"mean\":%.1f,\"p50\":%"
               PRIu64 ",\"p90\":%" PRIu64 ",\"p99\":%" PRIu64 ",\"p999\":%" PRIu64
               ",\"max\":%" PRIu64 "},\"status\":{\"2xx\":%" PRIu64 ",\"201\":%" PRIu64
               ",\"replayed\":%" PRIu64 ",\"409\":%" PRIu64 ",\"4xx_other\":%" PRIu64
               ",\"5xx\":%" PRIu64 ",\"other\":%" PRIu64 "},\"errors\":{\"connect\":%" PRIu64
               ",\"timeout\":%" PRIu64 ",\"lost\":%" PRIu64 ",\"parse\":%" PRIu64
               "},\"reconnects\":%" PRIu64,
               used_conns, opt.threads, elapsed, tot.sent, done, rps,
               h->count ? (double)h->sum / (double)h->count : 0.0, h_percentile(h, 50),
               h_percentile(h, 90), h_percentile(h, 99), h_percentile(h, 99.9), h->max,
               tot.s2xx, tot.s201, tot.replayed, tot.s409, tot.s4xx, tot.s5xx, tot.sother,
               tot.connect_err, tot.timeouts, tot.lost, tot.parse_err, tot.reconnects);
        if (opt.mode != M_PLAIN) {
            printf(",\"keys\":%" PRIu64 ",\"key_prefix\":", tot.keys);
            json_str(opt.prefix);
        }
        if (have_metrics) {
            printf(",\"metrics_delta\":{");
            for (int o = 0; o < OUTCOMES; o++)
                printf("%s\"%s\":%" PRId64, o ? "," : "", outcome_names[o],
                       (int64_t)(m1[o] - m0[o]));
            printf("}");
        }
        printf("}\n");
    } else {
        printf("cnload %s: %s%s, %d connections, %d thread%s%s%s\n", mode_names[opt.mode],
               opt.url, url_path ? "" : opt.path, used_conns, opt.threads,
               opt.threads > 1 ? "s" : "", seedinfo[0] ? "; " : "", seedinfo);
        if (opt.mode == M_RETRY)
            printf("  retries      %d sends per key, in sequence\n", opt.retries);
        if (opt.mode == M_STORM)
            printf("  storm        %d concurrent copies per key\n", opt.storm);
        if (opt.mode == M_MIXED)
            printf("  mix          %d%% GET %s, the rest POST %s\n", opt.mix, opt.plain_path,
                   opt.path);
        printf("  requests     %" PRIu64 " in %.2f s = %.1f req/s\n", done, elapsed, rps);
        printf("  latency      p50 %.3f ms  p90 %.3f ms  p99 %.3f ms  p99.9 %.3f ms  max "
               "%.3f ms  (mean %.3f ms)\n",
               (double)h_percentile(h, 50) / 1e3, (double)h_percentile(h, 90) / 1e3,
               (double)h_percentile(h, 99) / 1e3, (double)h_percentile(h, 99.9) / 1e3,
               (double)h->max / 1e3,
               h->count ? (double)h->sum / (double)h->count / 1e3 : 0.0);
        printf("  status       2xx %" PRIu64 " (201 %" PRIu64 ")  replayed %" PRIu64
               "  409 %" PRIu64 "  other 4xx %" PRIu64 "  5xx %" PRIu64 "  other %" PRIu64
               "\n",
               tot.s2xx, tot.s201, tot.replayed, tot.s409, tot.s4xx, tot.s5xx, tot.sother);
        printf("  errors       connect %" PRIu64 "  timeout %" PRIu64 "  lost in flight %" PRIu64
               "  parse %" PRIu64 "  (reconnects %" PRIu64 ")\n",
               tot.connect_err, tot.timeouts, tot.lost, tot.parse_err, tot.reconnects);
        if (opt.mode != M_PLAIN)
            printf("  keys         %" PRIu64 " distinct (prefix %s)\n", tot.keys, opt.prefix);
        if (have_metrics) {
            printf("  /metrics     %s:", opt.operation);
            for (int o = 0; o < OUTCOMES; o++)
                printf(" %s +%" PRIu64, outcome_names[o], m1[o] - m0[o]);
            printf("\n");
        }
    }
    for (int i = 0; i < opt.threads; i++) {
        for (int k = 0; k < threads[i].nconns; k++)
            free(threads[i].conns[k].out);
        free(threads[i].conns);
        close(threads[i].ep);
    }
    free(threads);
    return done && !errors ? 0 : 1;
}
