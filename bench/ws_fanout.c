/*
 * bench/ws_fanout.c - realtime fan-out: connects C WebSocket clients to the broadcaster,
 * then posts fresh-key durable POST /orders from P keep-alive connections for S seconds,
 * and measures, for every event at every client, the time from the POST's response to
 * the event's arrival; plus events delivered per second over all clients.
 *
 *   ws_fanout HTTP_PORT WS_PORT CLIENTS [seconds] [posters] [rate]
 *
 * rate: at most this many POSTs per second over all posters (0, the default: as fast as
 * they can). After the posting time, waits up to 10 s for the last events.
 *
 * Single thread, epoll, loopback only, bounded by time (and by a cap on events). The
 * server and this tool share the machine's cores.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"

#define MAX_EVENTS 2000000
#define BUF 65536

typedef struct conn {
    int fd;
    int ws; /* 1: WebSocket client, 0: HTTP poster */
    int upgraded;
    uint8_t buf[BUF];
    size_t len;
    uint64_t key; /* poster: key of the request in flight */
} conn_t;

static uint64_t *resp_us; /* POST response time by key index (0 = not yet) */
static uint64_t *lat;     /* latencies, microseconds */
static size_t nlat;
static uint64_t received, next_key;
static uint64_t run_id;

static int
connect_to(int port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;

    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a))) {
        perror("ws_fanout: connect");
        exit(1);
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return fd;
}

static void
send_all(int fd, const void *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            perror("ws_fanout: write");
            exit(1);
        }
        p = (const char *)p + w;
        n -= (size_t)w;
    }
}

static void
post(conn_t *c)
{
    char req[512], body[96];
    int bl = snprintf(body, sizeof(body), "{\"product_id\":\"p1\",\"quantity\":1}");
    int n;

    c->key = next_key++;
    n = snprintf(req, sizeof(req),
                 "POST /orders HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 "Idempotency-Key: f%llx-%llu\r\nContent-Length: %d\r\n\r\n%s",
                 (unsigned long long)run_id, (unsigned long long)c->key, bl, body);
    send_all(c->fd, req, (size_t)n);
}

/* Consumes complete HTTP responses in the poster's buffer. Returns how many. */
static int
http_responses(conn_t *c)
{
    int done = 0;

    for (;;) {
        char *end = memmem(c->buf, c->len, "\r\n\r\n", 4), *cl;
        size_t head, body = 0;

        if (!end)
            return done;
        head = (size_t)(end - (char *)c->buf) + 4;
        cl = memmem(c->buf, head, "Content-Length: ", 16);
        if (cl)
            body = strtoul(cl + 16, NULL, 10);
        if (c->len < head + body)
            return done;
        if (memcmp(c->buf, "HTTP/1.1 201", 12))
            fprintf(stderr, "ws_fanout: unexpected response: %.40s\n", (char *)c->buf);
        if (c->key < MAX_EVENTS)
            resp_us[c->key] = bench_now_us();
        memmove(c->buf, c->buf + head + body, c->len - head - body);
        c->len -= head + body;
        done++;
    }
}

/* Consumes complete WebSocket frames (server frames are unmasked). */
static void
ws_frames(conn_t *c)
{
    size_t at = 0;

    if (!c->upgraded) {
        char *end = memmem(c->buf, c->len, "\r\n\r\n", 4);
        if (!end)
            return;
        if (memcmp(c->buf, "HTTP/1.1 101", 12)) {
            fprintf(stderr, "ws_fanout: upgrade refused: %.40s\n", (char *)c->buf);
            exit(1);
        }
        at = (size_t)(end - (char *)c->buf) + 4;
        c->upgraded = 1;
    }
    for (;;) {
        size_t n, hl = 2;
        uint8_t *p = c->buf + at;

        if (c->len - at < 2)
            break;
        n = p[1] & 0x7f;
        if (n == 126) {
            if (c->len - at < 4)
                break;
            n = (size_t)p[2] << 8 | p[3];
            hl = 4;
        } else if (n == 127) {
            if (c->len - at < 10)
                break;
            n = 0;
            for (int i = 2; i < 10; i++)
                n = n << 8 | p[i];
            hl = 10;
        }
        if (c->len - at < hl + n)
            break;
        if ((p[0] & 0x0f) == 1) {
            char *k = memmem(p + hl, n, "\"order_id\":\"ord_f", 17);
            if (k) {
                char *dash = memchr(k + 17, '-', (size_t)((char *)p + hl + n - (k + 17)));
                uint64_t key = dash ? strtoull(dash + 1, NULL, 10) : MAX_EVENTS;
                received++;
                if (key < MAX_EVENTS && resp_us[key] && nlat < MAX_EVENTS) {
                    uint64_t t = bench_now_us();
                    lat[nlat++] = t > resp_us[key] ? t - resp_us[key] : 0;
                }
            }
        }
        at += hl + n;
    }
    memmove(c->buf, c->buf + at, c->len - at);
    c->len -= at;
}

static int
cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

    return x < y ? -1 : x > y;
}

int
main(int argc, char **argv)
{
    int http_port, ws_port, nclients, nposters, ep;
    double secs, rate;
    conn_t *conns;
    uint64_t start, stop, drain_until, posted = 0, answered = 0;
    struct epoll_event evs[256];

    if (argc < 4) {
        fprintf(stderr, "usage: %s HTTP_PORT WS_PORT CLIENTS [seconds] [posters] [rate]\n",
                argv[0]);
        return 2;
    }
    http_port = atoi(argv[1]);
    ws_port = atoi(argv[2]);
    nclients = atoi(argv[3]);
    secs = argc > 4 ? atof(argv[4]) : 3.0;
    nposters = argc > 5 ? atoi(argv[5]) : 16;
    rate = argc > 6 ? atof(argv[6]) : 0;
    run_id = bench_now_us();
    resp_us = calloc(MAX_EVENTS, sizeof(*resp_us));
    lat = malloc(MAX_EVENTS * sizeof(*lat));
    conns = calloc((size_t)(nclients + nposters), sizeof(*conns));
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (!resp_us || !lat || !conns || ep < 0)
        return 1;

    for (int i = 0; i < nclients + nposters; i++) {
        conn_t *c = &conns[i];
        struct epoll_event e = {.events = EPOLLIN, .data.ptr = c};
        c->ws = i < nclients;
        c->fd = connect_to(c->ws ? ws_port : http_port);
        if (c->ws) {
            static const char up[] = "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                                     "Connection: Upgrade\r\n"
                                     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                                     "Sec-WebSocket-Version: 13\r\n\r\n";
            send_all(c->fd, up, sizeof(up) - 1);
        }
        epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &e);
    }
    /* Every client upgraded before the clock starts. */
    for (int up = 0; up < nclients;) {
        int n = epoll_wait(ep, evs, 256, 5000);
        if (n <= 0) {
            fprintf(stderr, "ws_fanout: clients did not connect\n");
            return 1;
        }
        for (int i = 0; i < n; i++) {
            conn_t *c = evs[i].data.ptr;
            ssize_t r = read(c->fd, c->buf + c->len, BUF - c->len);
            if (r <= 0)
                return 1;
            c->len += (size_t)r;
            int was = c->upgraded;
            ws_frames(c);
            up += !was && c->upgraded;
        }
    }
    start = bench_now_us();
    stop = start + (uint64_t)(secs * 1e6);
    for (int i = nclients; i < nclients + nposters; i++) {
        if (rate > 0 && i > nclients) {
            conns[i].key = UINT64_MAX; /* parked: the rate releases them */
            continue;
        }
        post(&conns[i]);
        posted++;
    }
    drain_until = 0;
    for (;;) {
        uint64_t t = bench_now_us();
        if (t >= stop && !drain_until)
            drain_until = t + 10000000; /* let the last events arrive, bounded */
        /* Parked posters resume when the rate allows. */
        for (int i = nclients; rate > 0 && t < stop && i < nclients + nposters; i++) {
            if (conns[i].key == UINT64_MAX &&
                (double)posted < rate * (double)(t - start) / 1e6 && next_key < MAX_EVENTS) {
                post(&conns[i]);
                posted++;
            }
        }
        if (drain_until && (t >= drain_until ||
                            (answered == posted && received >= answered * (uint64_t)nclients)))
            break;
        int n = epoll_wait(ep, evs, 256, rate > 0 ? 1 : 100);
        for (int i = 0; i < n; i++) {
            conn_t *c = evs[i].data.ptr;
            ssize_t r = read(c->fd, c->buf + c->len, BUF - c->len);
            if (r <= 0) {
                fprintf(stderr, "ws_fanout: connection closed\n");
                return 1;
            }
            c->len += (size_t)r;
            if (c->ws) {
                ws_frames(c);
            } else {
                int k = http_responses(c);
                uint64_t tn = bench_now_us();
                answered += (uint64_t)k;
                if (k && tn < stop && next_key < MAX_EVENTS) {
                    if (rate > 0 && (double)posted >= rate * (double)(tn - start) / 1e6) {
                        c->key = UINT64_MAX; /* parked until the rate allows */
                    } else {
                        post(c);
                        posted++;
                    }
                }
            }
        }
    }
    double elapsed = (double)(bench_now_us() - start) / 1e6;
    qsort(lat, nlat, sizeof(*lat), cmp_u64);
    printf("%5d clients: %7llu POSTs (%6.0f/s), %9llu events delivered (%8.0f/s); "
           "POST response -> event at client: p50 %6.2f ms  p99 %6.2f ms  max %6.2f ms%s\n",
           nclients, (unsigned long long)answered, answered / secs,
           (unsigned long long)received, received / elapsed,
           nlat ? lat[nlat / 2] / 1000.0 : 0, nlat ? lat[nlat * 99 / 100] / 1000.0 : 0,
           nlat ? lat[nlat - 1] / 1000.0 : 0,
           received < answered * (uint64_t)nclients ? "  (backlog: not all delivered when "
                                                       "the tool stopped waiting)"
                                                     : "");
    for (int i = 0; i < nclients + nposters; i++)
        close(conns[i].fd);
    free(conns);
    free(resp_us);
    free(lat);
    return received < answered * (uint64_t)nclients;
}
