/*
 * http/mhd.c - the libmicrohttpd adapter (the only file that includes microhttpd.h).
 *
 * One daemon on an inherited listening socket, in external-epoll mode: it has no thread of
 * its own. Its epoll descriptor (cn__http_fd) sits in the caller's event loop, which
 * calls cn__http_run when it is readable or cn__http_timeout_ms has passed; everything
 * below (callbacks, dispatch, the header-deadline reaper) runs in that call, on the
 * loop's thread. (0.9.75's epoll mode may miss a FIN that arrives together with the
 * last bytes it reads: the reaper below looks for clients gone mid-body.)
 * Per connection: a slot (connection notify callback, freed when MHD closes the
 * connection) keeps the raw target the URI-log callback saw and the header deadline.
 * Per request: the access handler's first call creates our request state from the slot's
 * raw target, checks and copies the headers and returns (a response queued on the first
 * call goes out with "Connection: close" in 0.9.75, which would kill keep-alive); later
 * calls collect the body; the final call dispatches and queues the reply; the completion
 * callback frees the state. Request state is created only once the access handler runs
 * because only then does 0.9.75 promise the completion callback: a request it rejects
 * itself earlier (a query with too many arguments for the connection memory, say) is
 * dropped without it, which used to leak the state and the in-progress count.
 * Header deadline: cn__http_run closes (408, then shutdown()) connections whose current
 * request has not reached the access handler in time, at most a quarter of the deadline
 * late; MHD then sees the socket end and closes the connection itself. Slots are on a
 * list under conns_mu, and a slot leaves it in the close notification, before MHD closes
 * the socket, so the reaper never touches a closed (or reused) descriptor.
 * A deferred reply (a durable response waiting for its record to be durable) suspends
 * the connection; cn__http_complete resumes it and MHD calls the access handler once
 * more to queue the reply, in the next cn__http_run. From the loop's own thread (an ack
 * it polled) that is the same turn: resume, run, send. Nothing waits meanwhile.
 */
#include <errno.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <microhttpd.h>

#include "cnerium/error.h"
#include "http/problem.h"
#include "http/request_internal.h"
#include "http/server.h"
#include "support/clock.h"
#include "support/log.h"

/* Per-connection memory of libmicrohttpd (request line, headers, read buffer). MHD zeroes
 * all of it after every request on a keep-alive connection, so it is a per-request cost:
 * 16 KiB holds any reasonable header block (bigger ones get 431) and costs a quarter of
 * the 64 KiB it was. Bodies do not live there: they stream to the request in chunks. */
#define CONNECTION_MEMORY (16 * 1024)

/* One open connection (MHD's socket context). */
typedef struct conn_slot {
    struct conn_slot *prev, *next; /* the server's list; conns_mu */
    int fd;                        /* MHD's socket, open while the slot is listed */
    uint64_t waiting_since;        /* conns_mu: monotonic ms, start of the header phase */
    int in_request;                /* conns_mu: the access handler has the request */
    int reading_body;              /* conns_mu: in_request, not dispatched yet */
    int reaped;                    /* conns_mu: the reaper closed it */
    int served;                    /* conns_mu: a request on it has been completed */
    atomic_int parked;             /* suspended by its relay (relay_park): no lock, the
                                    * relay's threads set it, the reaper reads it */
    char *raw_target;              /* the connection's thread only */
} conn_slot_t;

struct cn_http_server {
    struct MHD_Daemon *daemon;
    cn_http_dispatch_cb dispatch;
    cn_http_relay_cb relay;
    void *arg;
    cn_http_options_t opt;
    atomic_uint active;

    pthread_mutex_t conns_mu;
    conn_slot_t conns; /* list head */
    uint32_t reap_tick_ms; /* between looks for overdue headers and vanished clients */
    uint64_t next_reap_ms; /* monotonic */
    int epoll_fd;          /* MHD's */
    int wake_fd;           /* the loop's eventfd (cn__http_set_wake_fd), or -1 */
    pthread_t runner;      /* the thread that runs the server (set by cn__http_run) */
    /* Monotonic ms until which the server runs at least every SETTLE_TICK_MS: see there. */
    uint64_t busy_until_ms; /* the runner's */
    atomic_int has_runner;
};

/* A deferred request: DISPATCHING until the dispatch callback returns, then SUSPENDED
 * (the connection is suspended) unless the reply came first (READY). */
enum { DEFER_NONE = 0, DEFER_DISPATCHING, DEFER_SUSPENDED, DEFER_READY, DEFER_RESUMED };

typedef struct conn_state {
    cn_request_t req;
    struct MHD_Connection *conn;
    cn_http_server_t *srv;
    conn_slot_t *slot;
    pthread_mutex_t mu; /* guards defer and reply */
    int defer;
    cn_http_reply_t reply;
    const char *content_length; /* the first Content-Length value, MHD's memory */
    int length_conflict;        /* Content-Length headers that disagree */
    const char *bad_header;     /* why a header was refused (static) */
    const char *block, *block_end; /* the request's header block in MHD's read buffer */
    const char *value_end;         /* end of the previous header value seen, or NULL */
    const char *value_name;        /* and its name */
    const char *bad_name;          /* the name of the refused header */
    int too_large;
    cn_relay_t *relay;  /* a request passed on in pieces (cn__http_set_relay), or NULL */
    int relay_sent_end; /* its body has been passed on whole */
} conn_state_t;

/* In external-epoll mode 0.9.75 finishes some work only in a later MHD_run without
 * reporting it through MHD_get_timeout or an event: closing a connection it refused
 * itself (an oversized request line, say) waited for the next one-second timeout. So
 * for a short while after any connection activity the loop runs the server every
 * SETTLE_TICK_MS; idle connections cost no wakeups. */
#define SETTLE_TICK_MS 2
#define SETTLE_WINDOW_MS 50

static uint64_t
now_ms(void)
{
    return cn__clock_mono_ms();
}

static void
busy(cn_http_server_t *srv)
{
    srv->busy_until_ms = now_ms() + SETTLE_WINDOW_MS;
}

static void
log_cb(void *cls, const char *fmt, va_list ap)
{
    char line[512];

    vsnprintf(line, sizeof(line), fmt, ap);
    line[strcspn(line, "\n")] = '\0';
    cn_log_debug("libmicrohttpd: %s", line);
}

static conn_slot_t *
slot_of(struct MHD_Connection *conn)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);

    return ci ? ci->socket_context : NULL;
}

static void
notify_cb(void *cls, struct MHD_Connection *conn, void **socket_context,
          enum MHD_ConnectionNotificationCode code)
{
    cn_http_server_t *srv = cls;
    conn_slot_t *slot;

    busy(srv);
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        /* Without a slot the access handler refuses the connection's requests. */
        if (!ci || !(slot = calloc(1, sizeof(*slot))))
            return;
        slot->fd = ci->connect_fd;
        atomic_init(&slot->parked, 0);
        pthread_mutex_lock(&srv->conns_mu);
        slot->waiting_since = cn__clock_mono_ms();
        slot->next = srv->conns.next;
        slot->prev = &srv->conns;
        srv->conns.next->prev = slot;
        srv->conns.next = slot;
        pthread_mutex_unlock(&srv->conns_mu);
        *socket_context = slot;
        return;
    }
    if (!(slot = *socket_context))
        return;
    pthread_mutex_lock(&srv->conns_mu);
    slot->prev->next = slot->next;
    slot->next->prev = slot->prev;
    pthread_mutex_unlock(&srv->conns_mu);
    free(slot->raw_target);
    free(slot);
    *socket_context = NULL;
}

/* Keeps the raw target (before MHD decodes it) for the access handler. Allocates no
 * request state: see the top of the file. */
static void *
uri_cb(void *cls, const char *uri, struct MHD_Connection *conn)
{
    conn_slot_t *slot = slot_of(conn);

    busy(cls);
    if (slot) {
        free(slot->raw_target);
        slot->raw_target = strdup(uri);
    }
    return NULL;
}

static void
completed_cb(void *cls, struct MHD_Connection *conn, void **con_cls,
             enum MHD_RequestTerminationCode toe)
{
    cn_http_server_t *srv = cls;
    conn_state_t *st = *con_cls;

    (void)conn;
    (void)toe;
    busy(srv);
    if (!st)
        return;
    if (st->slot) {
        /* The header phase of the next request on this connection starts now. */
        pthread_mutex_lock(&srv->conns_mu);
        st->slot->in_request = 0;
        st->slot->reading_body = 0;
        st->slot->served = 1;
        st->slot->waiting_since = cn__clock_mono_ms();
        pthread_mutex_unlock(&srv->conns_mu);
    }
    if (st->relay)
        cn__relay_near_close(st->relay); /* stops the far side if it is still at work */
    cn__request_destroy(&st->req);
    cn_response_free(&st->reply.response); /* a reply that came too late to be sent */
    pthread_mutex_destroy(&st->mu);
    free(st);
    *con_cls = NULL;
    atomic_fetch_sub(&srv->active, 1);
}

/* 1 when the bytes in [from, to) of the header block are only what may follow a header
 * value there: trailing whitespace and at most max_ends line-end bytes (CR and LF, which
 * MHD overwrote with NULs: 2 after a header line, 4 after the last one, whose blank line
 * follows). Anything else means MHD cut a value at a NUL byte: see collect_header. A
 * range outside the block (a value MHD copied elsewhere, e.g. a joined folded line) is
 * not judged. */
static int
clean_gap(const conn_state_t *st, const char *from, const char *to, unsigned max_ends)
{
    unsigned ends = 0;

    if (!st->block || !from || from < st->block || to > st->block_end || from > to)
        return 1;
    for (; from < to; from++) {
        if (*from == '\0' || *from == '\r' || *from == '\n')
            ends++;
        else if (*from != ' ' && *from != '\t')
            return 0;
    }
    return ends <= max_ends;
}

/* RFC 9110 5.5 and RFC 9112 5.2 (obs-fold may be refused with 400). */
#define BAD_VALUE "A header field value contains a control character or is folded over lines"

static enum MHD_Result
collect_header(void *cls, enum MHD_ValueKind kind, const char *key, size_t key_size,
               const char *value, size_t value_size)
{
    conn_state_t *st = cls;
    const char *why = NULL;
    int rc;

    (void)kind;
    if (!value)
        value = "", value_size = 0;
    /* 0.9.75 parses the header block in place and reports a value that contains a NUL
     * byte cut at the NUL, with the cut length (so "Idempotency-Key: a\0b" reads as
     * "a"). The rest of the value is still in the buffer between the reported end and the
     * next line, so the gap before each header name (and the block end, see
     * begin_request) must hold nothing but line-end bytes. */
    if (!clean_gap(st, st->value_end, key, 2)) {
        st->bad_header = BAD_VALUE;
        st->bad_name = st->value_name;
        return MHD_NO;
    }
    st->value_end = value + value_size;
    st->value_name = key;
    /* MHD keeps these strings in the connection's memory until the request ends. */
    rc = cn__request_add_header(&st->req, key, key_size, value, value_size, &why);
    if (rc == -EINVAL) {
        st->bad_header = why;
        st->bad_name = key;
        return MHD_NO;
    }
    if (rc)
        return MHD_NO;
    if (!strcasecmp(key, MHD_HTTP_HEADER_CONTENT_LENGTH)) {
        const char *v = st->req.headers[st->req.nheaders - 1].value;
        if (!st->content_length)
            st->content_length = v;
        else if (strcmp(st->content_length, v))
            st->length_conflict = 1; /* a request smuggling vector: RFC 9112 6.3 */
    }
    return MHD_YES;
}

/* Content-Type, Location and the other headers of res onto mr: 1, or 0 when MHD refused
 * one (out of memory). */
static int
add_headers(struct MHD_Response *mr, const cn_response_t *res)
{
    int ok = 1;

    if (res->content_type)
        ok &= MHD_add_response_header(mr, MHD_HTTP_HEADER_CONTENT_TYPE, res->content_type) ==
              MHD_YES;
    if (res->location)
        ok &= MHD_add_response_header(mr, MHD_HTTP_HEADER_LOCATION, res->location) == MHD_YES;
    for (size_t i = 0; i < res->nheaders; i++)
        ok &= MHD_add_response_header(mr, res->headers[i].name, res->headers[i].value) ==
              MHD_YES;
    return ok;
}

/* Converts our response into an MHD one and queues it. Consumes reply->response. */
static enum MHD_Result
send_reply(struct MHD_Connection *conn, cn_http_reply_t *reply)
{
    cn_response_t *res = &reply->response;
    struct MHD_Response *mr;
    int ok;

    if (res->status < 100 || res->status > 599) {
        cn_response_free(res);
        *res = cn__problem(500, CN_PROBLEM_HANDLER, "The handler failed to build a response");
        if (!res->status)
            return MHD_NO; /* out of memory: close the connection */
    }
    mr = MHD_create_response_from_buffer(res->body_len, res->body, MHD_RESPMEM_MUST_FREE);
    if (!mr) {
        cn_response_free(res);
        return MHD_NO;
    }
    res->body = NULL; /* MHD frees it now */
    ok = add_headers(mr, res);
    if (reply->flags & CN_REPLY_REPLAYED)
        ok &= MHD_add_response_header(mr, "Idempotent-Replayed", "true") == MHD_YES;
    if (reply->flags & CN_REPLY_NO_STORE)
        ok &= MHD_add_response_header(mr, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store") == MHD_YES;
    if (ok)
        ok = MHD_queue_response(conn, (unsigned)res->status, mr) == MHD_YES;
    MHD_destroy_response(mr);
    cn_response_free(res);
    return ok ? MHD_YES : MHD_NO;
}

static enum MHD_Result
too_large(cn_http_server_t *srv, struct MHD_Connection *conn)
{
    char detail[96];
    cn_http_reply_t reply = {.flags = CN_REPLY_NO_STORE};

    snprintf(detail, sizeof(detail), "Request body exceeds the limit of %zu bytes",
             srv->opt.max_body);
    reply.response = cn__problem(413, CN_PROBLEM_BODY_TOO_LARGE, detail);
    return send_reply(conn, &reply);
}

/* Writes a 413 for st straight to its socket, best effort (a full send buffer means a
 * shorter or no answer), and ends the sending side. For the one moment MHD cannot send
 * a response itself: see the caller. */
static void
answer_and_close(cn_http_server_t *srv, conn_state_t *st)
{
    char detail[96], head[256], date[64];
    cn_response_t res;
    struct tm tm;
    time_t now = time(NULL);
    int n;

    if (!st->slot)
        return;
    snprintf(detail, sizeof(detail), "Request body exceeds the limit of %zu bytes",
             srv->opt.max_body);
    res = cn__problem(413, CN_PROBLEM_BODY_TOO_LARGE, detail);
    gmtime_r(&now, &tm);
    strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S GMT", &tm);
    n = snprintf(head, sizeof(head),
                 "HTTP/1.1 413 Content Too Large\r\nDate: %s\r\nConnection: close\r\n"
                 "Content-Type: %s\r\nCache-Control: no-store\r\nContent-Length: %zu\r\n\r\n",
                 date, res.content_type ? res.content_type : "application/problem+json",
                 res.body_len);
    if (n > 0 && (size_t)n < sizeof(head) &&
        send(st->slot->fd, head, (size_t)n, MSG_DONTWAIT | MSG_NOSIGNAL) == n && res.body_len)
        (void)send(st->slot->fd, res.body, res.body_len, MSG_DONTWAIT | MSG_NOSIGNAL);
    shutdown(st->slot->fd, SHUT_WR);
    cn_response_free(&res);
}

/* An answer to a request that is refused before it is dispatched. */
static enum MHD_Result
refuse(struct MHD_Connection *conn, int status, const char *type, const char *detail)
{
    cn_http_reply_t reply = {.flags = CN_REPLY_NO_STORE};

    reply.response = cn__problem(status, type, detail);
    return send_reply(conn, &reply);
}

/* ---- requests passed on in pieces (cn__http_set_relay) ---- */

/* Resumes st's suspended connection and makes sure its loop runs soon: in
 * external-polling mode MHD does not wake the loop for a resume, so the resumed
 * connection is picked up by the next MHD_run; on the loop's own thread that comes in
 * this turn, from another thread the loop is woken. */
static void
resume(conn_state_t *st)
{
    cn_http_server_t *srv = st->srv;

    MHD_resume_connection(st->conn);
    if (srv->wake_fd >= 0 &&
        !(atomic_load(&srv->has_runner) && pthread_equal(srv->runner, pthread_self()))) {
        uint64_t one = 1;
        if (write(srv->wake_fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
            cn_log_warn("waking an event loop: %s", strerror(errno));
    }
}

/* Marks st's slot parked (or not), for the reaper. */
static void
mark_parked(conn_state_t *st, int parked)
{
    if (st->slot)
        atomic_store_explicit(&st->slot->parked, parked, memory_order_relaxed);
}

static void
relay_park(void *arg)
{
    conn_state_t *st = arg;

    mark_parked(st, 1);
    MHD_suspend_connection(st->conn);
}

static void
relay_unpark(void *arg)
{
    mark_parked(arg, 0);
    resume(arg);
}

/* The answer's body, as the relay has it. With nothing yet the connection is parked
 * (suspended) and MHD asks again once the far side woke it. */
static ssize_t
relay_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    conn_state_t *st = cls;

    (void)pos;
    if (!max)
        return 0;
    for (;;) {
        ssize_t n = cn__relay_recv(st->relay, buf, max);
        if (n > 0)
            return n;
        if (n == CN_RELAY_END)
            return MHD_CONTENT_READER_END_OF_STREAM;
        if (n == CN_RELAY_BROKEN)
            return MHD_CONTENT_READER_END_WITH_ERROR; /* MHD closes the connection */
        if (cn__relay_park(st->relay))
            return 0;
    }
}

/* Queues the relayed answer whose head is head (consumed): its body is read from the
 * relay as it comes, with its declared length when the far side knew one. */
static enum MHD_Result
send_relayed(struct MHD_Connection *conn, conn_state_t *st, cn_response_t *head,
             int64_t length)
{
    struct MHD_Response *mr;
    int ok;

    if (head->status < 200 || head->status > 599) {
        cn_response_free(head);
        return MHD_NO;
    }
    if (head->status == 204 || head->status == 304)
        mr = MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
    else
        mr = MHD_create_response_from_callback(length < 0 ? MHD_SIZE_UNKNOWN
                                                          : (uint64_t)length,
                                               32 * 1024, relay_read, st, NULL);
    if (!mr) {
        cn_response_free(head);
        return MHD_NO;
    }
    ok = add_headers(mr, head) &&
         MHD_queue_response(conn, (unsigned)head->status, mr) == MHD_YES;
    MHD_destroy_response(mr);
    cn_response_free(head);
    return ok ? MHD_YES : MHD_NO;
}

/* The access handler of a relayed request: body pieces go into the relay (parking the
 * connection while its window is full); once the body is complete, the answer's head is
 * awaited the same way and queued. */
static enum MHD_Result
relay_access(cn_http_server_t *srv, conn_state_t *st, struct MHD_Connection *conn,
             const char *upload_data, size_t *upload_data_size)
{
    cn_relay_t *r = st->relay;
    cn_response_t head = {0};
    int64_t length = -1;
    int rc;

    if (*upload_data_size) {
        size_t left = *upload_data_size;
        for (;;) {
            ssize_t n = cn__relay_send(r, upload_data, left);
            if (n < 0)
                return MHD_NO;
            upload_data += n;
            left -= (size_t)n;
            if (!left || cn__relay_park(r))
                break;
        }
        *upload_data_size = left;
        return MHD_YES;
    }
    if (!st->relay_sent_end) {
        st->relay_sent_end = 1;
        cn__relay_send_end(r);
        if (st->slot) {
            pthread_mutex_lock(&srv->conns_mu);
            st->slot->reading_body = 0;
            pthread_mutex_unlock(&srv->conns_mu);
        }
    }
    do {
        rc = cn__relay_head(r, &head, &length);
    } while (rc == CN_RELAY_WAIT && !cn__relay_park(r));
    if (rc == CN_RELAY_WAIT)
        return MHD_YES; /* parked: called again once the head is in */
    if (rc == 2) {
        cn_http_reply_t reply = {.response = head, .flags = CN_REPLY_NO_STORE};
        return send_reply(conn, &reply);
    }
    if (rc != 1)
        return MHD_NO;
    return send_relayed(conn, st, &head, length);
}

/* Whether the request in st is passed on in pieces: asks the relay callback. */
static enum MHD_Result
maybe_relay(cn_http_server_t *srv, conn_state_t *st, struct MHD_Connection *conn, int *relayed)
{
    cn_relay_near_t near = {.park = relay_park, .unpark = relay_unpark, .arg = st};
    int64_t length = 0;
    int rc;

    *relayed = 0;
    if (!srv->relay)
        return MHD_YES;
    if (st->content_length) {
        char *end;
        unsigned long long n = strtoull(st->content_length, &end, 10);
        length = *end == '\0' && n <= INT64_MAX ? (int64_t)n : -1;
    } else if (cn_request_header(&st->req, "Transfer-Encoding")) {
        length = -1;
    }
    rc = srv->relay(srv->arg, &st->req, length, &near, &st->relay);
    if (rc < 0)
        return refuse(conn, 503, CN_PROBLEM_STORAGE, "Out of memory");
    *relayed = rc == 1;
    return MHD_YES;
}

/* The first access call: the request line and the headers are complete. Creates the
 * request state; answers requests that are refused before dispatch (on the first call,
 * so MHD closes the connection after the answer). */
static enum MHD_Result
begin_request(cn_http_server_t *srv, struct MHD_Connection *conn, const char *method,
              void **con_cls)
{
    conn_slot_t *slot = slot_of(conn);
    const union MHD_ConnectionInfo *hs;
    conn_state_t *st;
    const char *cl;
    char *target;
    int rc;

    if (!slot || !slot->raw_target)
        return MHD_NO; /* out of memory in the notify or URI-log callback */
    if (!(st = calloc(1, sizeof(*st))))
        return MHD_NO;
    pthread_mutex_init(&st->mu, NULL);
    st->conn = conn;
    st->srv = srv;
    st->slot = slot;
    /* From here on the completion callback frees st and gives back the count. */
    *con_cls = st;
    atomic_fetch_add(&srv->active, 1);
    pthread_mutex_lock(&srv->conns_mu);
    slot->in_request = 1;
    slot->reading_body = 1;
    pthread_mutex_unlock(&srv->conns_mu);

    target = slot->raw_target;
    slot->raw_target = NULL;
    if (!cn__http_token_valid(method, strlen(method))) {
        free(target);
        return refuse(conn, 400, NULL, "The request method is not a token");
    }
    rc = cn__request_init(&st->req, method, target);
    free(target);
    if (rc == -EINVAL) {
        /* RFC 9112 3: a method longer than any we implement is 501; anything else that
         * the request object refuses is a target that is not origin- or absolute-form. */
        if (strlen(method) >= sizeof(st->req.method))
            return refuse(conn, 501, NULL, "Method not implemented");
        return refuse(conn, 400, NULL, "The request target must be an absolute path (origin-form) "
                                 "or an http/https URI (absolute-form)");
    }
    if (rc)
        return MHD_NO;
    st->req.http_handle = st; /* after init, which zeroes the request */
    {
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
        const struct sockaddr *sa = ci ? ci->client_addr : NULL;
        if (sa && sa->sa_family == AF_INET)
            inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr,
                      st->req.client_addr, sizeof(st->req.client_addr));
        else if (sa && sa->sa_family == AF_INET6)
            inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr,
                      st->req.client_addr, sizeof(st->req.client_addr));
    }
    hs = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_REQUEST_HEADER_SIZE);
    if (hs) {
        /* The request line starts the block; the method string points at it. */
        st->block = method;
        st->block_end = method + hs->header_size;
    }
    if (MHD_get_connection_values_n(conn, MHD_HEADER_KIND, collect_header, st) < 0)
        return MHD_NO;
    if (!st->bad_header && !clean_gap(st, st->value_end, st->block_end, 4)) {
        st->bad_header = BAD_VALUE;
        st->bad_name = st->value_name;
    }
    if (st->bad_header) {
        /* The durable contract's problem type for a bad key, whatever caught it. */
        int key = st->bad_name && !strcasecmp(st->bad_name, "Idempotency-Key");
        return refuse(conn, 400, key ? CN_PROBLEM_KEY_INVALID : NULL,
                      key ? "Idempotency-Key must contain printable ASCII characters only"
                          : st->bad_header);
    }
    if (st->req.nheaders !=
        (size_t)MHD_get_connection_values_n(conn, MHD_HEADER_KIND, NULL, NULL))
        return MHD_NO; /* out of memory while copying */
    if (st->length_conflict) {
        /* The framing of anything after this request is unknown. */
        return refuse(conn, 400, NULL, "Conflicting Content-Length headers");
    }
    {
        int relayed;
        enum MHD_Result mr = maybe_relay(srv, st, conn, &relayed);
        if (mr != MHD_YES || relayed)
            return mr;
    }
    /* A declared length over the limit is refused before reading the body; MHD then
     * closes the connection instead of reading what is left. */
    cl = st->content_length;
    if (cl) {
        char *end;
        unsigned long long n = strtoull(cl, &end, 10);
        if (*end == '\0' && n > srv->opt.max_body)
            return too_large(srv, conn);
    }
    return MHD_YES;
}

static enum MHD_Result
access_cb(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
          const char *version, const char *upload_data, size_t *upload_data_size,
          void **con_cls)
{
    cn_http_server_t *srv = cls;
    conn_state_t *st = *con_cls;
    cn_http_reply_t reply = {0};

    (void)url;
    (void)version;
    if (!st)
        return begin_request(srv, conn, method, con_cls);
    if (st->relay)
        return relay_access(srv, st, conn, upload_data, upload_data_size);
    if (!*upload_data_size) {
        /* Called again after cn__http_complete resumed the connection? (defer is
         * written by the completing thread, so it is read under the lock.) */
        int resumed;
        pthread_mutex_lock(&st->mu);
        resumed = st->defer == DEFER_RESUMED;
        if (resumed) {
            reply = st->reply;
            memset(&st->reply, 0, sizeof(st->reply));
            st->defer = DEFER_NONE;
        }
        pthread_mutex_unlock(&st->mu);
        if (resumed)
            return send_reply(conn, &reply);
    }
    if (*upload_data_size) {
        int rc = cn__request_append_body(&st->req, upload_data, *upload_data_size,
                                         srv->opt.max_body);
        if (rc == CN_ETOOBIG) {
            /* A chunked body (no Content-Length to refuse up front) went past the limit.
             * 0.9.75 takes no response while a body is being read, and reading the rest
             * is what a client sending an endless body wants. So the 413 is written to
             * the socket here and MHD is told to close the connection: nothing else is
             * being written on it (earlier responses on the connection are complete
             * before MHD reads the next request). */
            st->too_large = 1;
            answer_and_close(srv, st);
            return MHD_NO;
        }
        if (rc)
            return MHD_NO;
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (st->too_large)
        return MHD_NO; /* answered already */
    if (st->slot) {
        pthread_mutex_lock(&srv->conns_mu);
        st->slot->reading_body = 0;
        pthread_mutex_unlock(&srv->conns_mu);
    }
    st->defer = DEFER_DISPATCHING;
    srv->dispatch(srv->arg, &st->req, &reply);
    if (!(reply.flags & CN_REPLY_DEFERRED)) {
        st->defer = DEFER_NONE;
        return send_reply(conn, &reply);
    }
    pthread_mutex_lock(&st->mu);
    if (st->defer == DEFER_READY) {
        /* Completed before dispatch returned (a synchronous commit): send it now. */
        reply = st->reply;
        memset(&st->reply, 0, sizeof(st->reply));
        st->defer = DEFER_NONE;
        pthread_mutex_unlock(&st->mu);
        return send_reply(conn, &reply);
    }
    MHD_suspend_connection(conn);
    st->defer = DEFER_SUSPENDED;
    pthread_mutex_unlock(&st->mu);
    return MHD_YES;
}

void
cn__http_set_wake_fd(cn_http_server_t *srv, int fd)
{
    srv->wake_fd = fd;
}

void
cn__http_complete(void *handle, cn_http_reply_t *reply)
{
    conn_state_t *st = handle;
    int wake;

    pthread_mutex_lock(&st->mu);
    st->reply = *reply;
    wake = st->defer == DEFER_SUSPENDED;
    st->defer = wake ? DEFER_RESUMED : DEFER_READY;
    pthread_mutex_unlock(&st->mu);
    /* Outside the lock: MHD takes its own locks to resume. The state cannot go away
     * meanwhile: MHD frees nothing of a suspended connection. */
    if (wake)
        resume(st);
}

void
cn__http_set_relay(cn_http_server_t *srv, cn_http_relay_cb cb)
{
    srv->relay = cb;
}

static const char timeout_answer[] =
    "HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";

/* Closes every connection whose request headers are overdue, and every one whose client
 * has closed its side while no request of it is being handled; returns how many. */
static unsigned
reap(cn_http_server_t *srv, uint64_t now)
{
    unsigned n = 0;

    for (conn_slot_t *s = srv->conns.next; s != &srv->conns; s = s->next) {
        char c;
        if (s->reaped)
            continue;
        /* A relayed body waiting for room upstream: MHD is not reading the socket, so
         * the end of the stream there may just be a client done sending (a half-close)
         * and waiting for its answer. */
        if (atomic_load_explicit(&s->parked, memory_order_relaxed))
            continue;
        if (!s->in_request || s->reading_body) {
            /* In epoll mode 0.9.75 can miss a FIN that came with the last bytes it read
             * (a request and the client's close in one segment), and then keeps the
             * connection until its timeout, or waits for the rest of a body forever. A
             * peek that finds the end of the stream (and nothing before it) means no
             * request can come or complete: shutdown() makes MHD see it. A dispatched
             * request is left alone: its answer is on its way. */
            if (recv(s->fd, &c, 1, MSG_PEEK | MSG_DONTWAIT) == 0) {
                shutdown(s->fd, SHUT_RDWR);
                s->reaped = 1;
                n++;
                continue;
            }
            if (s->reading_body)
                continue;
        }
        if (!srv->opt.header_timeout_ms || s->in_request ||
            now - s->waiting_since < srv->opt.header_timeout_ms)
            continue;
        /* Nothing of this request has been answered (MHD writes only after the access
         * handler or on its own errors), so the 408 cannot interleave with a response.
         * An idle keep-alive connection is closed without one, as is usual: a client
         * reusing it could take the 408 for the answer to a request it just sent. Best
         * effort: a full send buffer just means no 408. shutdown() makes MHD see the end
         * of the socket and close the connection from its own thread. */
        if (!s->served)
            (void)send(s->fd, timeout_answer, sizeof(timeout_answer) - 1,
                       MSG_DONTWAIT | MSG_NOSIGNAL);
        shutdown(s->fd, SHUT_RDWR);
        s->reaped = 1;
        n++;
    }
    return n;
}

int
cn__http_start(int listen_fd, const cn_http_options_t *opt, cn_http_dispatch_cb dispatch,
               void *arg, cn_http_server_t **out)
{
    cn_http_server_t *srv = calloc(1, sizeof(*srv));
    unsigned limit = opt->max_connections;
    const union MHD_DaemonInfo *info;

    if (!srv)
        return -ENOMEM;
    srv->dispatch = dispatch;
    srv->arg = arg;
    srv->opt = *opt;
    srv->epoll_fd = srv->wake_fd = -1;
    atomic_init(&srv->active, 0);
    atomic_init(&srv->has_runner, 0);
    pthread_mutex_init(&srv->conns_mu, NULL);
    srv->conns.next = srv->conns.prev = &srv->conns;
    if (opt->reap_interval_ms) {
        srv->reap_tick_ms = opt->reap_interval_ms;
        srv->next_reap_ms = cn__clock_mono_ms() + srv->reap_tick_ms;
    } else {
        /* A quarter of the header deadline between looks (a connection is closed at
         * most 25% late), at most a second (clients gone). */
        uint32_t tick = opt->header_timeout_ms ? opt->header_timeout_ms / 4 : 1000;
        srv->reap_tick_ms = tick < 10 ? 10 : tick > 1000 ? 1000 : tick;
        srv->next_reap_ms = cn__clock_mono_ms() + srv->reap_tick_ms;
    }
    if (limit < 1)
        limit = 1;
    srv->daemon = MHD_start_daemon(
        MHD_USE_EPOLL | MHD_USE_ITC | MHD_USE_ERROR_LOG | MHD_ALLOW_SUSPEND_RESUME,
        0,
        NULL, NULL, access_cb, srv,
        MHD_OPTION_EXTERNAL_LOGGER, log_cb, NULL,
        MHD_OPTION_LISTEN_SOCKET, listen_fd,
        MHD_OPTION_NOTIFY_CONNECTION, notify_cb, srv,
        MHD_OPTION_URI_LOG_CALLBACK, uri_cb, srv,
        MHD_OPTION_NOTIFY_COMPLETED, completed_cb, srv,
        MHD_OPTION_CONNECTION_TIMEOUT, 30u,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)CONNECTION_MEMORY,
        MHD_OPTION_CONNECTION_LIMIT, limit,
        MHD_OPTION_PER_IP_CONNECTION_LIMIT, opt->max_connections_per_ip,
        MHD_OPTION_END);
    if (!srv->daemon) {
        cn__http_stop(srv);
        return -EIO;
    }
    info = MHD_get_daemon_info(srv->daemon, MHD_DAEMON_INFO_EPOLL_FD);
    if (!info || info->epoll_fd < 0) {
        cn__http_stop(srv);
        return -EIO;
    }
    srv->epoll_fd = info->epoll_fd;
    *out = srv;
    return 0;
}

int
cn__http_fd(const cn_http_server_t *srv)
{
    return srv->epoll_fd;
}

int
cn__http_timeout_ms(cn_http_server_t *srv)
{
    MHD_UNSIGNED_LONG_LONG t;
    uint64_t until = UINT64_MAX, now;

    if (MHD_get_timeout(srv->daemon, &t) == MHD_YES)
        until = t;
    if (srv->reap_tick_ms) {
        now = cn__clock_mono_ms();
        t = srv->next_reap_ms > now ? srv->next_reap_ms - now : 0;
        if (t < until)
            until = t;
    }
    if (srv->busy_until_ms > now_ms() && until > SETTLE_TICK_MS)
        until = SETTLE_TICK_MS;
    return until == UINT64_MAX ? -1 : until > INT32_MAX ? INT32_MAX : (int)until;
}

void
cn__http_run(cn_http_server_t *srv)
{
    if (!atomic_load_explicit(&srv->has_runner, memory_order_relaxed)) {
        srv->runner = pthread_self();
        atomic_store(&srv->has_runner, 1);
    }
    (void)MHD_run(srv->daemon);
    if (srv->reap_tick_ms) {
        uint64_t now = cn__clock_mono_ms();
        unsigned n;
        if (now < srv->next_reap_ms)
            return;
        srv->next_reap_ms = now + srv->reap_tick_ms;
        pthread_mutex_lock(&srv->conns_mu);
        n = reap(srv, now);
        pthread_mutex_unlock(&srv->conns_mu);
        if (n)
            cn_log_debug("closed %u connections: request headers overdue (%u ms) or the "
                         "client gone", n, (unsigned)srv->opt.header_timeout_ms);
    }
}

void
cn__http_quiesce(cn_http_server_t *srv)
{
    /* The returned socket is the caller's listen_fd, which the caller closes. */
    (void)MHD_quiesce_daemon(srv->daemon);
}

unsigned
cn__http_active(cn_http_server_t *srv)
{
    return atomic_load(&srv->active);
}

void
cn__http_stop(cn_http_server_t *srv)
{
    if (!srv)
        return;
    if (srv->daemon)
        MHD_stop_daemon(srv->daemon);
    pthread_mutex_destroy(&srv->conns_mu);
    free(srv);
}

int
cn__http_add_connection(cn_http_server_t *srv, int fd)
{
    /* A socketpair end has no peer address of its own; MHD gets a loopback one, which
     * is what any per-address accounting should see for a local test client. */
    struct sockaddr_in addr = {.sin_family = AF_INET,
                               .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};

    return MHD_add_connection(srv->daemon, fd, (const struct sockaddr *)&addr, sizeof(addr)) ==
                   MHD_YES
               ? 0
               : -EIO;
}
