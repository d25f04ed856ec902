/*
 * bench/cnrace.c - races concurrent copies of one Idempotency-Key against a deployment
 * and checks that the durable route executed each key once.
 *
 *   cnrace [--keys N] [--copies K] [--different] [--path /orders] [--body JSON]
 *          [--operation orders.create] [--key-prefix S] [--timeout S] [--no-metrics]
 *          [--quiet] URL_BASE
 *
 * For each of N keys (one after the other), opens K connections, waits until all are
 * connected, writes all but the last byte of each request, pauses 20 ms, writes the K last
 * bytes back to back, and reads the K responses.
 *   identical bodies (default): every response must have the same status and body, and
 *     exactly one must come without "Idempotent-Replayed: true" (none if the key existed
 *     before the run: then all are replays);
 *   --different: copy i gets its own body ("{{copy}}" in --body is replaced by the copy
 *     number 1..K; without it, copy i gets i-1 trailing spaces): exactly one 2xx, the
 *     rest 409.
 * GET /metrics is read before and after: the rise of
 * cnerium_durable_requests_total{operation=OP,outcome="executed"} must equal the number
 * of keys that were fresh (it also counts anything else the server executed meanwhile,
 * so run against an otherwise idle server). --no-metrics skips that check.
 *
 * Exit status: 0 if every key passed and executions == fresh keys; 1 otherwise; 2 on
 * usage. Loopback addresses only; every wait is bounded (--timeout per key, default 35 s,
 * above the server's default 30 s bound on waiting for a concurrent duplicate).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"

#define MAX_RESPONSE (1 << 20)
#define MAX_BODY (64 * 1024)

static struct {
    int keys, copies, different, quiet, metrics;
    double timeout;
    const char *path, *body, *operation, *url;
    char prefix[128];
    struct sockaddr_storage addr;
    socklen_t addrlen;
    char host[300];
} opt;

typedef struct resp {
    int status, replayed;
    char *body;
    size_t body_len;
} resp_t;

typedef struct conn {
    int fd, connected, done, failed;
    char *req;
    size_t req_len, req_off;
    char *in;
    size_t in_len, in_cap;
    resp_t r;
    const char *error;
} conn_t;

/* ---- response parsing ----------------------------------------------------------------- */

/* Parses one complete response from buf (eof: the peer closed). Returns 1 and fills r
 * (r->body malloc'd), 0 if incomplete, -1 if malformed. */
static int
parse_response(const char *buf, size_t len, int eof, resp_t *r)
{
    size_t at = 0;

    for (;;) {
        const char *b = buf + at, *e = memmem(b, len - at, "\r\n\r\n", 4), *p, *end;
        int chunked = 0, have_len = 0;
        unsigned long long clen = 0;
        size_t head;

        if (!e)
            return len - at > 65536 ? -1 : 0;
        head = (size_t)(e - b) + 4;
        if (head < 14 || memcmp(b, "HTTP/1.", 7) || b[8] != ' ' || b[9] < '1' || b[9] > '5' ||
            b[10] < '0' || b[10] > '9' || b[11] < '0' || b[11] > '9')
            return -1;
        r->status = (b[9] - '0') * 100 + (b[10] - '0') * 10 + (b[11] - '0');
        r->replayed = 0;
        end = b + head - 2;
        p = memchr(b, '\n', head);
        for (p = p ? p + 1 : end; p < end;) {
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
                    char *x;
                    errno = 0;
                    clen = strtoull(v, &x, 10);
                    if (x == v || x != ve || errno)
                        return -1;
                    have_len = 1;
                } else if (bench_name_is(p, (size_t)(colon - p), "transfer-encoding")) {
                    chunked = bench_ci_contains(v, (size_t)(ve - v), "chunked");
                } else if (bench_name_is(p, (size_t)(colon - p), "idempotent-replayed")) {
                    r->replayed = ve - v == 4 && !strncasecmp(v, "true", 4);
                }
            }
            p = eol + 1;
        }
        if (r->status < 200) {
            at += head; /* interim response */
            continue;
        }
        b += head;
        len -= at + head;
        if (r->status == 204 || r->status == 304) {
            clen = 0;
            have_len = 1;
            chunked = 0;
        }
        if (chunked) {
            /* Decode into a body of at most len bytes. */
            size_t off = 0, out = 0;
            char *body = malloc(len + 1);
            if (!body)
                return -1;
            for (;;) {
                const char *crlf = memmem(b + off, len - off, "\r\n", 2);
                char *x;
                unsigned long long n;
                if (!crlf) {
                    free(body);
                    return 0;
                }
                errno = 0;
                n = strtoull(b + off, &x, 16);
                if (x == b + off || errno || n > MAX_RESPONSE) {
                    free(body);
                    return -1;
                }
                off = (size_t)(crlf - b) + 2;
                if (!n) {
                    /* trailers, up to the empty line */
                    for (;;) {
                        const char *t = memmem(b + off, len - off, "\r\n", 2);
                        if (!t) {
                            free(body);
                            return 0;
                        }
                        if (t == b + off)
                            break;
                        off = (size_t)(t - b) + 2;
                    }
                    break;
                }
                if (len - off < n + 2) {
                    free(body);
                    return 0;
                }
                memcpy(body + out, b + off, n);
                out += n;
                off += n + 2;
            }
            body[out] = '\0';
            r->body = body;
            r->body_len = out;
            return 1;
        }
        if (!have_len) {
            if (!eof)
                return 0;
            clen = len;
        }
        if (len < clen)
            return 0;
        r->body = malloc(clen + 1);
        if (!r->body)
            return -1;
        memcpy(r->body, b, clen);
        r->body[clen] = '\0';
        r->body_len = clen;
        return 1;
    }
}

/* ---- one key ---------------------------------------------------------------------------- */

static char *
make_body(int copy)
{
    const char *tpl = opt.body, *ph = "{{copy}}";
    size_t n = strlen(tpl), cap = n * 2 + (size_t)opt.copies + 64;
    char *out = malloc(cap), num[16];
    size_t o = 0;

    if (!out)
        return NULL;
    snprintf(num, sizeof(num), "%d", opt.different ? copy + 1 : 1);
    if (strstr(tpl, ph)) {
        for (const char *p = tpl; *p;) {
            if (!strncmp(p, ph, 8)) {
                size_t k = strlen(num);
                if (o + k + 1 > cap)
                    break;
                memcpy(out + o, num, k);
                o += k;
                p += 8;
            } else {
                if (o + 2 > cap)
                    break;
                out[o++] = *p++;
            }
        }
    } else {
        memcpy(out, tpl, n);
        o = n;
        if (opt.different)
            for (int i = 0; i < copy; i++)
                out[o++] = ' ';
    }
    out[o] = '\0';
    return out;
}

/* A finished connection is closed at once (which takes it out of the epoll set), so a
 * level-triggered event on it cannot spin the loop. */
static void
conn_finish(conn_t *c)
{
    c->done = 1;
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
}

static void
conn_fail(conn_t *c, const char *why)
{
    if (!c->done) {
        c->failed = 1;
        c->error = why;
        conn_finish(c);
    }
}

/* Reads what is there; marks the connection done at a complete response or an error. */
static void
conn_read(conn_t *c)
{
    for (;;) {
        ssize_t r;
        int rc;

        if (c->in_len + 4096 > c->in_cap) {
            size_t ncap = c->in_cap ? c->in_cap * 2 : 16384;
            char *n;
            if (ncap > MAX_RESPONSE) {
                conn_fail(c, "response too large");
                return;
            }
            n = realloc(c->in, ncap);
            if (!n) {
                conn_fail(c, "out of memory");
                return;
            }
            c->in = n;
            c->in_cap = ncap;
        }
        r = read(c->fd, c->in + c->in_len, c->in_cap - c->in_len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (r < 0) {
            conn_fail(c, "read error");
            return;
        }
        c->in_len += (size_t)r;
        rc = parse_response(c->in, c->in_len, r == 0, &c->r);
        if (rc == 1) {
            conn_finish(c);
            return;
        }
        if (rc < 0) {
            conn_fail(c, "malformed response");
            return;
        }
        if (r == 0) {
            conn_fail(c, "connection closed before a complete response");
            return;
        }
    }
}

/* Writes the request up to byte limit. */
static void
conn_write(conn_t *c, size_t limit)
{
    while (c->req_off < limit) {
        ssize_t w = send(c->fd, c->req + c->req_off, limit - c->req_off, MSG_NOSIGNAL);
        if (w > 0) {
            c->req_off += (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        conn_fail(c, "write error");
        return;
    }
}

typedef struct key_result {
    int pass, fresh;
    uint64_t spread_us;
} key_result_t;

static int
cmp_resp(const void *a, const void *b)
{
    const conn_t *x = a, *y = b;

    if (x->failed != y->failed)
        return x->failed - y->failed;
    if (x->r.status != y->r.status)
        return x->r.status - y->r.status;
    return x->r.replayed - y->r.replayed;
}

/* Races the copies of one key. */
static key_result_t
race_key(int ep, const char *key)
{
    conn_t *cs = calloc((size_t)opt.copies, sizeof(*cs));
    key_result_t res = {0};
    struct epoll_event evs[64];
    uint64_t end, t0, t1;
    int connected = 0, done = 0, k = opt.copies;
    const char *why = NULL;
    char why_buf[200];

    if (!cs) {
        fprintf(stderr, "cnrace: out of memory\n");
        exit(1);
    }
    for (int i = 0; i < k; i++)
        cs[i].fd = -1;
    /* Requests first, so the writes go out back to back. */
    for (int i = 0; i < k; i++) {
        char *body = make_body(i);
        size_t cap;
        int n;
        if (!body) {
            fprintf(stderr, "cnrace: out of memory\n");
            exit(1);
        }
        cap = strlen(body) + strlen(opt.path) + strlen(opt.host) + strlen(key) + 256;
        cs[i].req = malloc(cap);
        n = cs[i].req ? snprintf(cs[i].req, cap,
                                 "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json"
                                 "\r\nIdempotency-Key: %s\r\nContent-Length: %zu\r\n\r\n%s",
                                 opt.path, opt.host, key, strlen(body), body)
                      : -1;
        free(body);
        if (n < 0 || (size_t)n >= cap) {
            fprintf(stderr, "cnrace: cannot build the request\n");
            exit(1);
        }
        cs[i].req_len = (size_t)n;
        cs[i].fd = -1;
    }

    /* Connect all. */
    end = bench_now_us() + 5000000u;
    for (int i = 0; i < k; i++) {
        conn_t *c = &cs[i];
        int one = 1, rc;
        struct epoll_event e = {.events = EPOLLOUT, .data.u32 = (uint32_t)i};
        c->fd = socket(opt.addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (c->fd < 0) {
            perror("cnrace: socket");
            exit(1);
        }
        if (setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)))
            perror("cnrace: TCP_NODELAY");
        rc = connect(c->fd, (const struct sockaddr *)&opt.addr, opt.addrlen);
        if (rc && errno != EINPROGRESS) {
            conn_fail(c, "connect failed");
            continue;
        }
        if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &e)) {
            perror("cnrace: epoll_ctl");
            exit(1);
        }
    }
    for (int i = 0; i < k; i++)
        connected += cs[i].failed;
    while (connected < k) {
        uint64_t now = bench_now_us();
        int n;
        if (now >= end)
            break;
        n = epoll_wait(ep, evs, 64, (int)((end - now) / 1000u) + 1);
        if (n < 0 && errno != EINTR) {
            perror("cnrace: epoll_wait");
            exit(1);
        }
        for (int j = 0; j < n; j++) {
            conn_t *c = &cs[evs[j].data.u32];
            int err = 0;
            socklen_t len = sizeof(err);
            struct epoll_event e = {.events = EPOLLIN, .data.u32 = evs[j].data.u32};
            if (c->connected || c->failed)
                continue;
            if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) || err) {
                conn_fail(c, "connect failed");
            } else {
                c->connected = 1;
                if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &e)) {
                    perror("cnrace: epoll_ctl");
                    exit(1);
                }
            }
            connected++;
        }
    }
    for (int i = 0; i < k; i++)
        if (!cs[i].connected)
            conn_fail(&cs[i], "connect failed or timed out");

    /* Write all but the last byte of every request, let the server read that much, then
     * write the last bytes back to back: no copy can be dispatched before its last byte,
     * so the copies reach the server within the few microseconds these writes take. */
    for (int i = 0; i < k; i++)
        if (!cs[i].failed)
            conn_write(&cs[i], cs[i].req_len - 1);
    {
        struct timespec gap = {0, 20 * 1000000L};
        while (nanosleep(&gap, &gap) && errno == EINTR)
            ;
    }
    t0 = bench_now_us();
    for (int i = 0; i < k; i++)
        if (!cs[i].failed)
            conn_write(&cs[i], cs[i].req_len);
    t1 = bench_now_us();
    res.spread_us = t1 - t0;
    for (int i = 0; i < k; i++) {
        struct epoll_event e = {.events = EPOLLIN | EPOLLOUT, .data.u32 = (uint32_t)i};
        if (!cs[i].failed && cs[i].req_off < cs[i].req_len &&
            epoll_ctl(ep, EPOLL_CTL_MOD, cs[i].fd, &e)) {
            perror("cnrace: epoll_ctl");
            exit(1);
        }
    }

    /* Read all responses. */
    end = bench_now_us() + (uint64_t)(opt.timeout * 1e6);
    for (int i = 0; i < k; i++)
        done += cs[i].done;
    while (done < k) {
        uint64_t now = bench_now_us();
        int n;
        if (now >= end)
            break;
        n = epoll_wait(ep, evs, 64, (int)((end - now) / 1000u) + 1);
        if (n < 0 && errno != EINTR) {
            perror("cnrace: epoll_wait");
            exit(1);
        }
        for (int j = 0; j < n; j++) {
            conn_t *c = &cs[evs[j].data.u32];
            if (c->done)
                continue;
            if ((evs[j].events & EPOLLOUT) && c->req_off < c->req_len)
                conn_write(c, c->req_len);
            if (!c->done && (evs[j].events & (EPOLLIN | EPOLLHUP | EPOLLERR)))
                conn_read(c);
            done += c->done;
        }
    }
    for (int i = 0; i < k; i++)
        if (!cs[i].done)
            conn_fail(&cs[i], "timed out waiting for the response");

    /* Verdict. */
    {
        int failed = 0, ok2xx = 0, c409 = 0, fresh = 0, fresh2xx = 0, same = 1;
        const conn_t *first = NULL;
        for (int i = 0; i < k; i++) {
            const conn_t *c = &cs[i];
            if (c->failed) {
                failed++;
                continue;
            }
            ok2xx += c->r.status >= 200 && c->r.status < 300;
            fresh += !c->r.replayed;
            fresh2xx += c->r.status >= 200 && c->r.status < 300 && !c->r.replayed;
            c409 += c->r.status == 409;
            if (!first) {
                first = c;
            } else if (c->r.status != first->r.status || c->r.body_len != first->r.body_len ||
                       memcmp(c->r.body, first->r.body, c->r.body_len)) {
                same = 0;
            }
        }
        if (failed) {
            const char *e = NULL;
            for (int i = 0; i < k && !e; i++)
                e = cs[i].error;
            snprintf(why_buf, sizeof(why_buf), "%d of %d requests failed (%s)", failed, k, e);
            why = why_buf;
        } else if (!opt.different) {
            if (!same)
                why = "responses differ (status or body)";
            else if (fresh > 1)
                why = "more than one response without Idempotent-Replayed: true";
        } else {
            if (ok2xx != 1)
                why = ok2xx ? "more than one 2xx" : "no 2xx";
            else if (c409 != k - 1)
                why = "the others are not all 409";
        }
        /* Executions this key should have caused, pass or fail. */
        res.fresh = opt.different ? fresh2xx : fresh;
        res.pass = !why;
        if (!opt.quiet || !res.pass) {
            /* Statuses seen: status (replayed) xN, grouped. */
            char line[1024];
            size_t o = 0;
            qsort(cs, (size_t)k, sizeof(*cs), cmp_resp);
            for (int i = 0; i < k;) {
                int j = i;
                while (j < k && !cmp_resp(&cs[i], &cs[j]))
                    j++;
                int n;
                if (cs[i].failed)
                    n = snprintf(line + o, sizeof(line) - o, "%serror x%d", o ? ", " : "",
                                 j - i);
                else
                    n = snprintf(line + o, sizeof(line) - o, "%s%d%s x%d", o ? ", " : "",
                                 cs[i].r.status, cs[i].r.replayed ? " replayed" : "", j - i);
                if (n > 0 && (size_t)n < sizeof(line) - o)
                    o += (size_t)n;
                i = j;
            }
            printf("key %s: %s -> %s%s%s%s\n", key, line, res.pass ? "PASS" : "FAIL",
                   why ? " (" : "", why ? why : "", why ? ")" : "");
            if (res.pass && !res.fresh)
                printf("  (no execution in this run: the key existed before)\n");
        }
    }
    for (int i = 0; i < k; i++) {
        free(cs[i].req);
        free(cs[i].in);
        free(cs[i].r.body);
    }
    free(cs);
    return res;
}

/* ---- /metrics --------------------------------------------------------------------------- */

/* GET /metrics on a blocking socket with timeouts; the executed counter of the operation
 * into *out. Returns 0, or -1 if it cannot be read. */
static int
read_executed(uint64_t *out)
{
    char req[512], *buf = malloc(MAX_RESPONSE + 1), name[200];
    int fd = -1, n, rc = -1;
    size_t got = 0;
    uint64_t end = bench_now_us() + 5000000u;
    struct timeval tv = {.tv_sec = 5};
    resp_t r = {0};
    const char *p;

    n = snprintf(req, sizeof(req), "GET /metrics HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n",
                 opt.host);
    if (!buf || n < 0 || (size_t)n >= sizeof(req))
        goto out;
    fd = socket(opt.addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) ||
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) ||
        connect(fd, (const struct sockaddr *)&opt.addr, opt.addrlen) ||
        send(fd, req, (size_t)n, MSG_NOSIGNAL) != n)
        goto out;
    for (;;) {
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        uint64_t now = bench_now_us();
        ssize_t got_now;
        int prc;
        if (now >= end || got >= MAX_RESPONSE)
            goto out;
        prc = poll(&pf, 1, (int)((end - now) / 1000u) + 1);
        if (prc < 0 && errno == EINTR)
            continue;
        if (prc <= 0)
            goto out;
        got_now = read(fd, buf + got, MAX_RESPONSE - got);
        if (got_now < 0 && errno == EINTR)
            continue;
        if (got_now < 0)
            goto out;
        got += (size_t)got_now;
        prc = parse_response(buf, got, got_now == 0, &r);
        if (prc < 0 || (prc == 0 && got_now == 0))
            goto out;
        if (prc == 1)
            break;
    }
    if (r.status != 200)
        goto out;
    snprintf(name, sizeof(name),
             "\ncnerium_durable_requests_total{operation=\"%s\",outcome=\"executed\"} ",
             opt.operation);
    p = strstr(r.body, name);
    if (!p)
        goto out;
    *out = strtoull(p + strlen(name), NULL, 10);
    rc = 0;
out:
    if (fd >= 0)
        close(fd);
    free(r.body);
    free(buf);
    return rc;
}

/* ---- setup ------------------------------------------------------------------------------ */

static void
usage(void)
{
    fprintf(stderr,
            "usage: cnrace [options] URL_BASE        (loopback only, e.g. http://127.0.0.1:8080)\n"
            "  --keys N           keys to race, one after the other (default 10)\n"
            "  --copies K         concurrent requests per key, one connection each (default 8)\n"
            "  --different        each copy with its own body: expect one 2xx and K-1 409\n"
            "  --path P           durable route (default /orders)\n"
            "  --body JSON        request body; {{copy}} is replaced by the copy number\n"
            "  --operation NAME   operation in /metrics (default orders.create)\n"
            "  --key-prefix S     Idempotency-Key prefix (default from time and pid)\n"
            "  --timeout S        bound on each key's responses (default 35)\n"
            "  --no-metrics       do not read GET /metrics (no execution count check)\n"
            "  --quiet            print only failing keys and the summary\n");
}

int
main(int argc, char **argv)
{
    const char *url_path = NULL;
    int ep, passed = 0, fresh = 0, existed = 0, have_metrics = 0;
    uint64_t m0 = 0, m1 = 0, spread_max = 0, spread_sum = 0;
    struct sigaction sa;

    opt.keys = 10;
    opt.copies = 8;
    opt.timeout = 35;
    opt.metrics = 1;
    opt.operation = "orders.create";
    snprintf(opt.prefix, sizeof(opt.prefix), "cnr%llx-%d", (unsigned long long)time(NULL),
             (int)getpid());
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        double d;

        if (!strcmp(a, "--different")) {
            opt.different = 1;
            continue;
        }
        if (!strcmp(a, "--quiet")) {
            opt.quiet = 1;
            continue;
        }
        if (!strcmp(a, "--no-metrics")) {
            opt.metrics = 0;
            continue;
        }
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage();
            return 0;
        }
        if (a[0] != '-') {
            if (opt.url) {
                usage();
                return 2;
            }
            opt.url = a;
            continue;
        }
        if (!v) {
            fprintf(stderr, "cnrace: %s needs a value\n", a);
            return 2;
        }
        i++;
        if (!strcmp(a, "--keys")) {
            if (bench_parse_num(v, 1, 1000000, &d))
                goto bad;
            opt.keys = (int)d;
        } else if (!strcmp(a, "--copies")) {
            if (bench_parse_num(v, 2, 1000, &d))
                goto bad;
            opt.copies = (int)d;
        } else if (!strcmp(a, "--timeout")) {
            if (bench_parse_num(v, 0.1, 600, &d))
                goto bad;
            opt.timeout = d;
        } else if (!strcmp(a, "--path")) {
            opt.path = v;
        } else if (!strcmp(a, "--body")) {
            opt.body = v;
        } else if (!strcmp(a, "--operation")) {
            opt.operation = v;
        } else if (!strcmp(a, "--key-prefix")) {
            size_t n = strlen(v);
            if (!n || n > 100 || strpbrk(v, " \t\r\n\"\\")) {
                fprintf(stderr, "cnrace: --key-prefix: 1-100 characters, no spaces or quotes\n");
                return 2;
            }
            snprintf(opt.prefix, sizeof(opt.prefix), "%s", v);
        } else {
            fprintf(stderr, "cnrace: unknown option %s\n", a);
            usage();
            return 2;
        }
        continue;
    bad:
        fprintf(stderr, "cnrace: bad value for %s: %s\n", a, v);
        return 2;
    }
    if (!opt.url) {
        usage();
        return 2;
    }
    if (bench_parse_url("cnrace", opt.url, &opt.addr, &opt.addrlen, opt.host, sizeof(opt.host),
                        &url_path))
        return 2;
    if (!*url_path || !strcmp(url_path, "/"))
        url_path = NULL;
    if (!opt.path)
        opt.path = url_path ? url_path : "/orders";
    if (opt.path[0] != '/' || strpbrk(opt.path, " \r\n")) {
        fprintf(stderr, "cnrace: --path starts with / and holds no spaces\n");
        return 2;
    }
    if (!opt.body)
        opt.body = opt.different ? "{\"product_id\":\"p1\",\"quantity\":{{copy}}}"
                                 : "{\"product_id\":\"p1\",\"quantity\":1}";
    if (strlen(opt.body) > MAX_BODY) {
        fprintf(stderr, "cnrace: --body is limited to %d bytes\n", MAX_BODY);
        return 2;
    }
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = SIG_IGN;
    if (sigaction(SIGPIPE, &sa, NULL))
        perror("cnrace: sigaction");
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) {
        perror("cnrace: epoll_create1");
        return 1;
    }

    {
        /* The server must be there before anything is counted. */
        int fd = socket(opt.addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0 || connect(fd, (const struct sockaddr *)&opt.addr, opt.addrlen)) {
            fprintf(stderr, "cnrace: cannot connect to %s: %s\n", opt.url, strerror(errno));
            return 1;
        }
        close(fd);
    }
    if (opt.metrics) {
        have_metrics = !read_executed(&m0);
        if (!have_metrics)
            fprintf(stderr, "cnrace: cannot read %s executions from GET /metrics "
                            "(use --no-metrics to skip the check)\n", opt.operation);
    }
    printf("cnrace: %d keys x %d concurrent copies, %s bodies, POST %s%s (prefix %s)\n",
           opt.keys, opt.copies, opt.different ? "different" : "identical", opt.url,
           url_path ? "" : opt.path, opt.prefix);
    for (int i = 0; i < opt.keys; i++) {
        char key[160];
        key_result_t r;
        snprintf(key, sizeof(key), "%s-%d", opt.prefix, i);
        r = race_key(ep, key);
        passed += r.pass;
        fresh += r.fresh > 0;
        existed += r.pass && !r.fresh;
        spread_sum += r.spread_us;
        if (r.spread_us > spread_max)
            spread_max = r.spread_us;
    }
    if (have_metrics && read_executed(&m1)) {
        fprintf(stderr, "cnrace: cannot read GET /metrics after the run\n");
        have_metrics = 0;
    }
    close(ep);

    printf("keys: %d passed, %d failed; %d new (one copy executed), %d existed before\n",
           passed, opt.keys - passed, fresh, existed);
    printf("last bytes of the %d copies written within %.1f us on average, %.1f us at most\n",
           opt.copies, (double)spread_sum / opt.keys, (double)spread_max);
    if (have_metrics)
        printf("executions (/metrics %s executed): +%" PRIu64 ", expected %d (one per new key) "
               "-> %s\n",
               opt.operation, m1 - m0, fresh, m1 - m0 == (uint64_t)fresh ? "OK" : "MISMATCH");
    else if (opt.metrics)
        printf("executions: unknown (GET /metrics unreadable) -> FAIL\n");
    else
        printf("executions: not checked (--no-metrics)\n");
    {
        int ok = passed == opt.keys &&
                 (opt.metrics ? have_metrics && m1 - m0 == (uint64_t)fresh : 1);
        printf("verdict: %s\n", ok ? "PASS" : "FAIL");
        return ok ? 0 : 1;
    }
}
