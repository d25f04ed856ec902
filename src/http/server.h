/*
 * http/server.h - the HTTP server of one process (wraps libmicrohttpd; no MHD_* type
 * leaves http/mhd.c).
 *
 * It reads requests into cn_request_t objects, calls the dispatch callback once a
 * request's body is complete, and writes the reply. It has no thread: the caller's
 * event loop waits on cn__http_fd (and cn__http_timeout_ms) and calls cn__http_run,
 * inside which every callback runs. One thread runs a server at a time.
 */
#ifndef CN_HTTP_SERVER_H
#define CN_HTTP_SERVER_H

#include <stddef.h>
#include <stdint.h>

#include "cnerium/request.h"
#include "cnerium/response.h"
#include "http/relay.h"

enum {
    CN_REPLY_REPLAYED = 1 << 0, /* add "Idempotent-Replayed: true" */
    CN_REPLY_NO_STORE = 1 << 1, /* add "Cache-Control: no-store" */
    /* Set by the dispatch callback alone: the reply comes later, through
     * cn__http_complete(req->http_handle, ...). The connection is suspended meanwhile
     * and no server thread waits for it. */
    CN_REPLY_DEFERRED = 1 << 2,
};

typedef struct cn_http_reply {
    cn_response_t response; /* consumed by the server */
    unsigned flags;
} cn_http_reply_t;

typedef void (*cn_http_dispatch_cb)(void *arg, cn_request_t *req, cn_http_reply_t *reply);

typedef struct cn_http_server cn_http_server_t;

typedef struct cn_http_options {
    size_t max_body;   /* bodies over this many bytes get 413 without dispatching */
    /* Open connections of this server. At the limit new connections wait in the
     * listening socket's backlog until one closes. */
    unsigned max_connections;
    /* Open connections from one IP address; more are closed at once, unanswered. 0 = no
     * limit. */
    unsigned max_connections_per_ip;
    /* A request's header block must be complete this long after the server began
     * waiting for it (the accept, or the end of the previous response on a keep-alive
     * connection); otherwise the connection gets 408 and is closed. 0 = no deadline. */
    uint32_t header_timeout_ms;
    /* Milliseconds between looks for overdue headers and for clients that closed their
     * side of an idle connection (or mid-body). 0: a quarter of header_timeout_ms,
     * between 10 and 1000. */
    uint32_t reap_interval_ms;
} cn_http_options_t;

/* Serves on listen_fd (borrowed; the caller closes it after cn__http_stop). Returns 0
 * and *out, or a negative error. */
int cn__http_start(int listen_fd, const cn_http_options_t *opt, cn_http_dispatch_cb dispatch,
                   void *arg, cn_http_server_t **out);

/* The descriptor to wait on for readability (an epoll fd). */
int cn__http_fd(const cn_http_server_t *srv);

/* Milliseconds until cn__http_run is due even without activity (0: at once), or -1. */
int cn__http_timeout_ms(cn_http_server_t *srv);

/* Accepts, reads, dispatches, writes and closes whatever is ready; sends the replies
 * cn__http_complete delivered since the last call; closes connections whose request
 * headers are overdue. Never waits. */
void cn__http_run(cn_http_server_t *srv);

/* An eventfd the caller's loop waits on (besides cn__http_fd): cn__http_complete
 * called from any other thread than the one running the server writes it, since MHD
 * does not wake an external loop for a resumed connection. -1 (the default): none. */
void cn__http_set_wake_fd(cn_http_server_t *srv, int fd);

/* Delivers the reply of a request whose dispatch returned CN_REPLY_DEFERRED. Call it
 * exactly once per such request, from any thread, even before the dispatch callback has
 * returned; the reply goes out in the server's next cn__http_run (another thread's
 * call wakes its loop through the wake fd). Consumes reply->response. */
void cn__http_complete(void *handle, cn_http_reply_t *reply);

/* Requests passed on in pieces (the gateway's passthrough): called on the server's
 * thread once a request's headers are in, before any of its body is read. Returns 0 to
 * read the request whole and dispatch it as usual; 1 with *out a relay made with
 * cn__relay_new(body_length, near) whose far side has been given away (body_length: the
 * declared Content-Length, -1 for a chunked body, 0 for none); or a negative error
 * (answered 503). A relayed request's body goes into the relay as it arrives, with no
 * max_body, and its answer is sent as the relay gives it. */
typedef int (*cn_http_relay_cb)(void *arg, cn_request_t *req, int64_t body_length,
                                const cn_relay_near_t *near, cn_relay_t **out);

/* Sets the relay callback (called with the dispatch callback's arg); NULL: none. */
void cn__http_set_relay(cn_http_server_t *srv, cn_http_relay_cb cb);

/* Stops accepting new connections; requests in progress continue. */
void cn__http_quiesce(cn_http_server_t *srv);

/* Requests received and not yet completely answered. */
unsigned cn__http_active(cn_http_server_t *srv);

/* Stops the server, closing every connection, and frees it. Accepts NULL. */
void cn__http_stop(cn_http_server_t *srv);

/* Hands the server a connected stream socket (tests and fuzzing: one end of a
 * socketpair) as if it had been accepted. Call it from the thread that runs the server.
 * The socket is the server's afterwards, also on failure (it is closed then). Returns 0
 * or -EIO. */
int cn__http_add_connection(cn_http_server_t *srv, int fd);

#endif
