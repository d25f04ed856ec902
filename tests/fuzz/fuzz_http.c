/*
 * fuzz_http - the HTTP adapter (http/mhd.c on libmicrohttpd) and the request builder
 * behind it (http/request.c), through the app's dispatch (app/app.c) and router.
 *
 * One server for the whole run, started like a worker's and run by the fuzzing thread
 * itself, as a worker's event loop runs it. Each input is the bytes a client sends on one
 * connection: they go in through one end of a socketpair handed to the server, the write
 * side is shut, and the answer is read to the end. Ordinary routes only (a durable route needs the shared region and the store);
 * their handler reads every part of the request, parses the Idempotency-Key and computes
 * the fingerprint. "/defer..." routes complete their reply before the dispatch returns,
 * "/later..." ones from another thread afterwards (the suspend/resume path). "/relay..."
 * requests are passed on in pieces (http/relay.c) to a far side on a thread of its own
 * that echoes the start of the body back as it reads it.
 *
 * Properties: whatever is answered starts with an HTTP/1.x status line of a valid code;
 * the handler sees a target starting with '/', its path a prefix of it, a body within
 * the limit and NUL-terminated; and once the connection is closed, every request the
 * server started is finished (its state released): none is left "in progress".
 */
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "app/app_internal.h"
#include "cnerium/json.h"
#include "fuzz.h"
#include "http/request_internal.h"
#include "http/server.h"
#include "reliability/fingerprint.h"
#include "reliability/key.h"

#define MAX_BODY 4096
#define ANSWER_MAX 65536

static cn_http_server_t *srv;
static cn_worker_t worker;

static cJSON *
str(const char *s)
{
    return cJSON_CreateString(s ? s : "");
}

static cn_response_t
echo(cn_request_t *req, void *ctx)
{
    const char *target = cn_request_target(req), *path = cn_request_path(req), *raw = NULL;
    const char *why = NULL, *body;
    char key[CN_KEY_MAX + 1] = "", hex[2 * CN_SHA256_LEN + 1] = "";
    uint8_t fp[CN_SHA256_LEN];
    size_t blen = 0, klen;

    body = cn_request_body(req, &blen);
    FUZZ_CHECK(target && target[0] == '/');
    FUZZ_CHECK(path && !strncmp(target, path, strlen(path)));
    FUZZ_CHECK(body && blen <= MAX_BODY && body[blen] == '\0');
    if (cn__request_header_count(req, "Idempotency-Key", &raw) == 1 &&
        cn__key_parse(raw, strlen(raw), key, &klen, &why) == 0) {
        const char *q = cn_request_query_string(req);
        FUZZ_CHECK(cn__fingerprint(q, strlen(q), body, blen, fp) == 0);
        cn__hex(fp, CN_SHA256_LEN, hex);
    }
    return cn_ok(cn_json_object("method", str(cn_request_method(req)), "path", str(path),
                                "q", str(cn_request_query(req, "q")),
                                "id", str(cn_request_param(req, "id")),
                                "key", str(key), "why", str(why), "fingerprint", str(hex),
                                "json", cJSON_CreateBool(cn_request_json(req) != NULL),
                                "tenant", str(cn_request_header(req, "X-Tenant-Id")), NULL));
}

typedef struct later {
    void *handle;
    cn_http_reply_t reply;
} later_t;

static void *
complete_later(void *arg)
{
    later_t *l = arg;

    cn__http_complete(l->handle, &l->reply);
    free(l);
    return NULL;
}

static void
dispatch(void *arg, cn_request_t *req, cn_http_reply_t *reply)
{
    int defer = !strncmp(req->path, "/defer", 6), later = !strncmp(req->path, "/later", 6);
    cn_http_reply_t r = {0};

    if (!defer && !later) {
        cn__app_dispatch(&worker, req, reply);
        return;
    }
    cn__app_dispatch(&worker, req, &r);
    reply->flags = CN_REPLY_DEFERRED;
    if (defer) {
        cn__http_complete(req->http_handle, &r);
    } else {
        later_t *l = malloc(sizeof(*l));
        pthread_t t;
        FUZZ_CHECK(l);
        *l = (later_t){req->http_handle, r};
        FUZZ_CHECK(pthread_create(&t, NULL, complete_later, l) == 0);
        pthread_detach(t);
    }
}

/* ---- the relay's far side: one thread per relayed request ---- */

static pthread_mutex_t far_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t far_cond = PTHREAD_COND_INITIALIZER;
static unsigned far_generation; /* far_mu: bumped by every wake */

static void
far_wake(void *ctx, cn_relay_t *r)
{
    (void)ctx;
    pthread_mutex_lock(&far_mu);
    far_generation++;
    pthread_cond_broadcast(&far_cond);
    pthread_mutex_unlock(&far_mu);
    cn__relay_unref(r);
}

static unsigned
far_seen(void)
{
    unsigned g;

    pthread_mutex_lock(&far_mu);
    g = far_generation;
    pthread_mutex_unlock(&far_mu);
    return g;
}

/* Waits until a wake after generation `seen` (bounded: 10 s). */
static void
far_wait(unsigned seen)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += 10;
    pthread_mutex_lock(&far_mu);
    while (far_generation == seen)
        if (pthread_cond_timedwait(&far_cond, &far_mu, &ts))
            break;
    pthread_mutex_unlock(&far_mu);
}

static void *
far_main(void *arg)
{
    cn_relay_t *r = arg;
    cn_response_t head = cn_raw_response(200, "text/plain", NULL, 0);
    char buf[512];
    size_t echoed = 0;
    int failed = cn__relay_set_head(r, &head, -1) != 0;

    while (!failed) {
        unsigned seen = far_seen();
        ssize_t n = cn__relay_take(r, buf, sizeof(buf));
        if (n == 0)
            break;
        if (n == CN_RELAY_WAIT) {
            far_wait(seen);
            continue;
        }
        if (n < 0) {
            failed = 1;
            break;
        }
        while (echoed < 1024) { /* the rest is read and dropped */
            int rc;
            seen = far_seen();
            if ((rc = cn__relay_put(r, buf, (size_t)n)) == 0) {
                echoed += (size_t)n;
                break;
            }
            if (rc != CN_RELAY_WAIT) {
                failed = 1;
                break;
            }
            far_wait(seen);
        }
    }
    cn__relay_far_close(r, failed);
    return NULL;
}

static int
relay(void *arg, cn_request_t *req, int64_t body_length, const cn_relay_near_t *near,
      cn_relay_t **out)
{
    cn_relay_t *r;
    pthread_t t;

    (void)arg;
    if (strncmp(req->path, "/relay", 6))
        return 0;
    FUZZ_CHECK(body_length >= -1);
    if (!(r = cn__relay_new(body_length, near)))
        return -ENOMEM;
    cn__relay_bind_far(r, far_wake, NULL, NULL);
    FUZZ_CHECK(pthread_create(&t, NULL, far_main, r) == 0);
    pthread_detach(t);
    *out = r;
    return 1;
}

/* One turn of the server, as the worker's loop does it: wait (boundedly) until its fd
 * is readable, its timeout comes or `other` has `events`, then run it. */
static void
turn(int other, short events)
{
    struct pollfd p[2] = {{cn__http_fd(srv), POLLIN, 0}, {other, events, 0}};
    int timeout = cn__http_timeout_ms(srv);

    if (timeout < 0 || timeout > 10)
        timeout = 10; /* bounded: the server's own timeout is at most its reap tick */
    (void)poll(p, other >= 0 ? 2 : 1, timeout);
    cn__http_run(srv);
}

/* Sends len bytes on a new connection, shuts the write side and reads the whole answer,
 * running the server in between. Returns the answer's length (at most cap is kept). */
static size_t
exchange(const uint8_t *data, size_t len, char *out, size_t cap)
{
    int sv[2], shut = 0;
    size_t got = 0, off = 0;

    FUZZ_CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv) == 0);
    FUZZ_CHECK(cn__http_add_connection(srv, sv[1]) == 0);
    for (int i = 0; i < 100000; i++) {
        char buf[4096];
        ssize_t n;

        while (off < len) {
            n = send(sv[0], data + off, len - off, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0 && errno != EAGAIN)
                off = len; /* the server closed early (a bad request): read what it said */
            if (n <= 0)
                break;
            off += (size_t)n;
        }
        if (off >= len && !shut) {
            shutdown(sv[0], SHUT_WR);
            shut = 1;
        }
        n = read(sv[0], buf, sizeof(buf));
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
            break;
        if (n > 0) {
            if (got < cap)
                memcpy(out + got, buf, (size_t)n < cap - got ? (size_t)n : cap - got);
            got += (size_t)n;
            continue;
        }
        turn(sv[0], (short)(POLLIN | (shut ? 0 : POLLOUT)));
    }
    close(sv[0]);
    return got;
}

/* The server finishes a request (its completion callback) around the time it closes the
 * connection; run it until that, boundedly. */
static int
settled(void)
{
    for (int i = 0; i < 5000; i++) {
        cn__http_run(srv);
        if (cn__http_active(srv) == 0)
            return 1;
        turn(-1, 0);
    }
    return 0;
}

static void
check_status_line(const char *a, size_t n)
{
    int code;

    FUZZ_CHECK(n >= 12 && (!memcmp(a, "HTTP/1.1 ", 9) || !memcmp(a, "HTTP/1.0 ", 9)));
    FUZZ_CHECK(a[9] >= '1' && a[9] <= '5' && a[10] >= '0' && a[10] <= '9' && a[11] >= '0' &&
               a[11] <= '9');
    code = (a[9] - '0') * 100 + (a[10] - '0') * 10 + (a[11] - '0');
    FUZZ_CHECK(code >= 100 && code <= 599);
}

static void
setup(void)
{
    static const char probe[] = "GET /orders/7?q=x HTTP/1.1\r\nHost: fuzz\r\n\r\n";
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cn_config_t cfg = cn_config_development();
    static char answer[ANSWER_MAX];
    cn_app_t *app = cn_app_new(&cfg);
    cn_http_options_t opt;
    int fd;
    size_t n;

    FUZZ_CHECK(app);
    FUZZ_CHECK(cn_get(app, "/health", echo, NULL) == 0);
    FUZZ_CHECK(cn_post(app, "/orders", echo, NULL) == 0);
    FUZZ_CHECK(cn_get(app, "/orders/{id}", echo, NULL) == 0);
    FUZZ_CHECK(cn_put(app, "/orders/{id}", echo, NULL) == 0);
    FUZZ_CHECK(cn_delete(app, "/orders/{id}", echo, NULL) == 0);
    FUZZ_CHECK(cn_post(app, "/defer/{id}", echo, NULL) == 0);
    FUZZ_CHECK(cn_post(app, "/later/{id}", echo, NULL) == 0);
    worker.app = app;

    /* The daemon wants a listening socket; connections only arrive through socketpairs. */
    fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    FUZZ_CHECK(fd >= 0);
    FUZZ_CHECK(bind(fd, (struct sockaddr *)&addr, sizeof(addr)) == 0);
    FUZZ_CHECK(listen(fd, 1) == 0);
    /* No per-address limit (every socketpair has the same address) and no header
     * deadline: each input is sent whole, and the run must be deterministic. Each input
     * ends with the client's close, which the server notices at its next look for
     * vanished clients: look every millisecond. */
    opt = (cn_http_options_t){.max_body = MAX_BODY, .max_connections = 64,
                              .reap_interval_ms = 1};
    FUZZ_CHECK(cn__http_start(fd, &opt, dispatch, NULL, &srv) == 0);
    cn__http_set_relay(srv, relay);

    /* The harness itself works: a plain request gets its 200. */
    n = exchange((const uint8_t *)probe, sizeof(probe) - 1, answer, sizeof(answer));
    FUZZ_CHECK(n >= 12 && !memcmp(answer, "HTTP/1.1 200", 12));
    FUZZ_CHECK(settled());
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static char answer[ANSWER_MAX];
    size_t n;

    if (!srv)
        setup();
    n = exchange(data, size, answer, sizeof(answer));
    if (n)
        check_status_line(answer, n < sizeof(answer) ? n : sizeof(answer));
    if (!settled()) {
        fprintf(stderr, "%u request(s) still in progress after the connection closed\n",
                cn__http_active(srv));
        FUZZ_CHECK(!"every request finishes when its connection closes");
    }
    return 0;
}
