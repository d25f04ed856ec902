/*
 * http/mhd.c - the libmicrohttpd adapter (the only file that includes microhttpd.h).
 *
 * One daemon with an internal thread pool on an inherited listening socket. It polls with
 * poll(), not epoll: 0.9.75 in epoll mode misses a FIN that arrives together with the
 * last bytes it reads, so a client that vanished mid-body stayed "in progress" forever.
 * Per request: the URI-log callback creates our request state with the raw target; the
 * access handler's first call copies the headers and returns (a response queued on the
 * first call goes out with "Connection: close" in 0.9.75, which would kill keep-alive);
 * later calls collect the body; the final call dispatches and queues the reply; the
 * completion callback frees the state. Connection memory is MHD's; our state is ours.
 * A deferred reply (a durable response waiting for its record to be durable) suspends
 * the connection; cn__http_complete, from any thread, resumes it and MHD calls the
 * access handler once more to queue the reply. No MHD thread waits meanwhile.
 */
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <microhttpd.h>

#include "cnerium/error.h"
#include "http/problem.h"
#include "http/request_internal.h"
#include "http/server.h"
#include "support/log.h"

/* Per-connection memory of libmicrohttpd (request line, headers, read buffer). MHD zeroes
 * all of it after every request on a keep-alive connection, so it is a per-request cost:
 * 16 KiB holds any reasonable header block (bigger ones get 431) and costs a quarter of
 * the 64 KiB it was. Bodies do not live there: they stream to the request in chunks. */
#define CONNECTION_MEMORY (16 * 1024)

struct cn_http_server {
    struct MHD_Daemon *daemon;
    cn_http_dispatch_cb dispatch;
    void *arg;
    size_t max_body;
    atomic_uint active;
};

/* A deferred request: DISPATCHING until the dispatch callback returns, then SUSPENDED
 * (the connection is suspended) unless the reply came first (READY). */
enum { DEFER_NONE = 0, DEFER_DISPATCHING, DEFER_SUSPENDED, DEFER_READY, DEFER_RESUMED };

typedef struct conn_state {
    cn_request_t req;
    struct MHD_Connection *conn;
    pthread_mutex_t mu; /* guards defer and reply */
    int defer;
    cn_http_reply_t reply;
    char *raw_target; /* from the URI-log callback, until the first access call */
    const char *content_length; /* the first Content-Length value, MHD's memory */
    int length_conflict;        /* Content-Length headers that disagree */
    int started;
    int too_large;
} conn_state_t;

static void
log_cb(void *cls, const char *fmt, va_list ap)
{
    char line[512];

    vsnprintf(line, sizeof(line), fmt, ap);
    line[strcspn(line, "\n")] = '\0';
    cn_log_debug("libmicrohttpd: %s", line);
}

static void *
uri_cb(void *cls, const char *uri, struct MHD_Connection *conn)
{
    cn_http_server_t *srv = cls;
    conn_state_t *st = calloc(1, sizeof(*st));

    if (!st)
        return NULL;
    pthread_mutex_init(&st->mu, NULL);
    st->conn = conn;
    st->raw_target = strdup(uri);
    atomic_fetch_add(&srv->active, 1);
    return st;
}

static void
completed_cb(void *cls, struct MHD_Connection *conn, void **con_cls,
             enum MHD_RequestTerminationCode toe)
{
    cn_http_server_t *srv = cls;
    conn_state_t *st = *con_cls;

    if (!st)
        return;
    cn__request_destroy(&st->req);
    cn_response_free(&st->reply.response); /* a reply that came too late to be sent */
    pthread_mutex_destroy(&st->mu);
    free(st->raw_target);
    free(st);
    *con_cls = NULL;
    atomic_fetch_sub(&srv->active, 1);
}

static enum MHD_Result
collect_header(void *cls, enum MHD_ValueKind kind, const char *key, const char *value)
{
    conn_state_t *st = cls;

    if (value && !strcasecmp(key, MHD_HTTP_HEADER_CONTENT_LENGTH)) {
        if (!st->content_length)
            st->content_length = value;
        else if (strcmp(st->content_length, value))
            st->length_conflict = 1; /* a request smuggling vector: RFC 9112 6.3 */
    }
    /* MHD keeps these strings in the connection's memory until the request ends. */
    return cn__request_add_header(&st->req, key, value ? value : "") ? MHD_NO : MHD_YES;
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
    ok = 1;
    if (res->content_type)
        ok &= MHD_add_response_header(mr, MHD_HTTP_HEADER_CONTENT_TYPE, res->content_type) ==
              MHD_YES;
    if (res->location)
        ok &= MHD_add_response_header(mr, MHD_HTTP_HEADER_LOCATION, res->location) == MHD_YES;
    for (size_t i = 0; i < res->nheaders; i++)
        ok &= MHD_add_response_header(mr, res->headers[i].name, res->headers[i].value) ==
              MHD_YES;
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
             srv->max_body);
    reply.response = cn__problem(413, CN_PROBLEM_BODY_TOO_LARGE, detail);
    return send_reply(conn, &reply);
}

static enum MHD_Result
access_cb(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
          const char *version, const char *upload_data, size_t *upload_data_size,
          void **con_cls)
{
    cn_http_server_t *srv = cls;
    conn_state_t *st = *con_cls;
    cn_http_reply_t reply = {0};

    if (!st)
        return MHD_NO; /* the URI-log callback could not allocate */
    if (st->started && !*upload_data_size) {
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
    if (!st->started) {
        const char *cl;
        st->started = 1;
        if (cn__request_init(&st->req, method, st->raw_target ? st->raw_target : url) ||
            MHD_get_connection_values(conn, MHD_HEADER_KIND, collect_header, st) < 0)
            return MHD_NO;
        free(st->raw_target);
        st->raw_target = NULL;
        st->req.http_handle = st; /* after init, which zeroes the request */
        if (st->length_conflict) {
            /* Answered on the first call, so MHD closes the connection: the framing of
             * anything after this request is unknown. */
            reply.flags = CN_REPLY_NO_STORE;
            reply.response = cn__problem(400, NULL, "Conflicting Content-Length headers");
            return send_reply(conn, &reply);
        }
        /* A declared length over the limit is refused before reading the body; MHD then
         * closes the connection instead of reading what is left. */
        cl = st->content_length;
        if (cl) {
            char *end;
            unsigned long long n = strtoull(cl, &end, 10);
            if (*end == '\0' && n > srv->max_body)
                return too_large(srv, conn);
        }
        return MHD_YES;
    }
    if (*upload_data_size) {
        if (!st->too_large) {
            int rc = cn__request_append_body(&st->req, upload_data, *upload_data_size,
                                             srv->max_body);
            if (rc == CN_ETOOBIG)
                st->too_large = 1; /* keep reading (and dropping) to answer 413 */
            else if (rc)
                return MHD_NO;
        }
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (st->too_large)
        return too_large(srv, conn);
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
cn__http_complete(void *handle, cn_http_reply_t *reply)
{
    conn_state_t *st = handle;
    int resume;

    pthread_mutex_lock(&st->mu);
    st->reply = *reply;
    resume = st->defer == DEFER_SUSPENDED;
    st->defer = resume ? DEFER_RESUMED : DEFER_READY;
    pthread_mutex_unlock(&st->mu);
    /* Outside the lock: MHD takes its own locks to resume. The state cannot go away
     * meanwhile: MHD frees nothing of a suspended connection. */
    if (resume)
        MHD_resume_connection(st->conn);
}

int
cn__http_start(int listen_fd, unsigned threads, size_t max_body, cn_http_dispatch_cb dispatch,
               void *arg, cn_http_server_t **out)
{
    cn_http_server_t *srv = calloc(1, sizeof(*srv));

    if (!srv)
        return -ENOMEM;
    srv->dispatch = dispatch;
    srv->arg = arg;
    srv->max_body = max_body;
    atomic_init(&srv->active, 0);
    srv->daemon = MHD_start_daemon(
        MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL | MHD_USE_ITC | MHD_USE_ERROR_LOG |
            MHD_ALLOW_SUSPEND_RESUME,
        0,
        NULL, NULL, access_cb, srv,
        MHD_OPTION_LISTEN_SOCKET, listen_fd,
        MHD_OPTION_THREAD_POOL_SIZE, threads > 1 ? threads : 0u,
        MHD_OPTION_URI_LOG_CALLBACK, uri_cb, srv,
        MHD_OPTION_NOTIFY_COMPLETED, completed_cb, srv,
        MHD_OPTION_CONNECTION_TIMEOUT, 30u,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)CONNECTION_MEMORY,
        MHD_OPTION_CONNECTION_LIMIT, 4096u,
        MHD_OPTION_EXTERNAL_LOGGER, log_cb, NULL,
        MHD_OPTION_END);
    if (!srv->daemon) {
        free(srv);
        return -EIO;
    }
    *out = srv;
    return 0;
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
