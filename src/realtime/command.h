/*
 * realtime/command.h - WebSocket commands (cn_ws_command): a client message
 * {"type":"command","id":I,"idempotency_key":K,"action":{"Name":{...}}} runs the HTTP
 * route registered for Name on the server's own address, as any HTTP client would, and
 * its answer goes back to that client as {"type":"result",...}.
 *
 * This module holds what needs no libwebsockets, so tests link it alone: the command
 * table (filled by the app before fork, read-only afterwards), turning a parsed command
 * into its HTTP request (path templating), a blocking HTTP/1.1 client with bounded
 * waits, the result and error frames, and a small pool of threads running the requests.
 * The broadcaster (broadcast.c) submits jobs from its lws thread and takes finished ones
 * back when the pool's eventfd is readable.
 *
 * Locking: the table and the target are read-only once the pool runs. The pool's queue
 * and its finished list are under the pool's mutex; a job belongs to the pool from
 * submit until it is taken back with cn__ws_pool_take.
 */
#ifndef CN_REALTIME_COMMAND_H
#define CN_REALTIME_COMMAND_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "realtime/message.h"

#define CN_WS_COMMANDS_MAX 64
#define CN_WS_METHOD_MAX 7
#define CN_WS_RESULT_BODY_MAX ((size_t)1 << 20) /* a larger response is an error frame */
#define CN_WS_WHY_MAX 256

typedef struct cn_ws_command {
    char action[CN_WS_ACTION_MAX + 1];
    char method[CN_WS_METHOD_MAX + 1];
    char *path; /* owned: the template, "{field}" placeholders */
} cn_ws_command_t;

typedef struct cn_ws_commands {
    cn_ws_command_t cmd[CN_WS_COMMANDS_MAX];
    unsigned n;
} cn_ws_commands_t;

/* Registers action -> method path. method: GET, POST, PUT or DELETE; path: starts with
 * '/', printable ASCII without spaces, each "{field}" naming [A-Za-z0-9._-]{1,64}.
 * Returns 0, -EINVAL (bad name, method or path, or the action already registered),
 * CN_ETOOBIG (CN_WS_COMMANDS_MAX already) or -ENOMEM. */
int cn__ws_commands_add(cn_ws_commands_t *t, const char *action, const char *method,
                        const char *path);

/* Frees the paths; the table is empty afterwards. Accepts NULL. */
void cn__ws_commands_free(cn_ws_commands_t *t);

/* The command registered for action, or NULL. Borrowed from t. */
const cn_ws_command_t *cn__ws_commands_find(const cn_ws_commands_t *t, const char *action);

/* Fills tmpl's "{field}" placeholders with the percent-encoded (RFC 3986 unreserved
 * bytes kept) string values of those fields of the JSON object args (args_len bytes).
 * Returns 0 with *out owned (free()), or -EINVAL with why (JSON-escaped text, at most
 * why_len bytes with its NUL) saying which field is missing or not a string, or -ENOMEM. */
int cn__ws_path_expand(const char *tmpl, const char *args, size_t args_len, char **out,
                       char *why, size_t why_len);

/* Where the server's HTTP port is: the bound address, a wildcard replaced by loopback. */
typedef struct cn_ws_target {
    struct sockaddr_storage addr;
    socklen_t len;
    char host[80]; /* the Host header: "127.0.0.1:8080", "[::1]:8080" */
} cn_ws_target_t;

/* Makes *t from a bound address (getsockname of the listening socket). Returns 0 or
 * -EINVAL (not AF_INET or AF_INET6). */
int cn__ws_target_init(cn_ws_target_t *t, const struct sockaddr *addr, socklen_t len);

/* An HTTP response. */
typedef struct cn_ws_answer {
    int status;
    int replayed; /* Idempotent-Replayed: true */
    char *body;   /* owned (free()); NUL-terminated after body_len bytes */
    size_t body_len;
} cn_ws_answer_t;

/* Parses a response head in buf (len bytes so far). Returns the head's length (through
 * the blank line) with *a's status and replayed set and *content_length (-1: none, read
 * to the end), 0 when the head is not complete yet, or -EPROTO when it is malformed or
 * chunked. */
long cn__ws_http_head(const char *buf, size_t len, cn_ws_answer_t *a, long long *content_length);

/* Sends method path (body as application/json, and "Idempotency-Key" when key is not
 * NULL) over HTTP/1.1 to t and reads the response into *a (written on success only).
 * Waits at most connect_ms to connect and timeout_ms in all; returns early when cancel_fd
 * (-1: none) becomes readable. Returns 0, -ETIMEDOUT, -ECANCELED, -EPROTO (a malformed
 * response), -EFBIG (body over CN_WS_RESULT_BODY_MAX), or a connection error (-errno). */
int cn__ws_http_call(const cn_ws_target_t *t, const char *method, const char *path,
                     const char *key, const char *body, size_t body_len, unsigned connect_ms,
                     unsigned timeout_ms, int cancel_fd, cn_ws_answer_t *a);

/* Frames, as JSON text at buf + headroom (the bytes before it are left for the caller:
 * the broadcaster puts lws headroom and the WebSocket header there). Return the owned
 * buffer (free()) with *len the text's length, or NULL when out of memory. id NULL
 * writes "id":null. */
/* {"type":"result","id":I,"status":S,"body":B,"replayed":R}: B is the response body
 * as it is when it is JSON (valid UTF-8), else a JSON string of it. */
char *cn__ws_result_frame(const char *id, const cn_ws_answer_t *a, size_t headroom,
                          size_t *len);
/* {"type":"error","id":I,"message":M}; why is already escaped for a JSON string. */
char *cn__ws_error_frame(const char *id, const char *why, size_t headroom, size_t *len);

/* ---- the pool ---- */

typedef struct cn_ws_job {
    struct cn_ws_job *next;
    uint64_t owner; /* the submitter's tag for the client (generation), untouched */
    uint32_t slot;  /* and another, untouched */
    char id[CN_WS_ID_MAX + 1];
    char method[CN_WS_METHOD_MAX + 1];
    char *path; /* owned */
    char *body; /* owned: the action's object */
    size_t body_len;
    char *key; /* owned, NULL: none */
    /* when finished: the result or error frame (cn__ws_result_frame's layout) */
    char *frame;
    size_t frame_len;
} cn_ws_job_t;

/* The job a parsed command message stands for. Returns 0 with *out owned
 * (cn__ws_job_free), -EINVAL with why (unknown action, a path field missing), or
 * -ENOMEM. */
int cn__ws_job_new(const cn_ws_commands_t *t, const cn_ws_msg_t *m, cn_ws_job_t **out,
                   char *why, size_t why_len);

/* Frees a job and whatever it holds. Accepts NULL. */
void cn__ws_job_free(cn_ws_job_t *j);

typedef struct cn_ws_pool cn_ws_pool_t;

typedef struct cn_ws_pool_config {
    cn_ws_target_t target;
    unsigned threads;    /* request threads */
    unsigned capacity;   /* jobs queued or running at most */
    unsigned connect_ms; /* per request: connect within */
    unsigned timeout_ms; /* and answered within */
    size_t headroom;     /* before each frame */
} cn_ws_pool_config_t;

/* Starts the threads. Returns 0 with *out owned (cn__ws_pool_stop), or -errno. */
int cn__ws_pool_start(const cn_ws_pool_config_t *cfg, cn_ws_pool_t **out);

/* The eventfd that is readable while finished jobs wait to be taken (borrowed). */
int cn__ws_pool_fd(const cn_ws_pool_t *p);

/* Queues j (consumed on success). Returns 0, or -EBUSY when capacity jobs are queued or
 * running (j stays the caller's). */
int cn__ws_pool_submit(cn_ws_pool_t *p, cn_ws_job_t *j);

/* The finished jobs in finishing order (owned: cn__ws_job_free each), or NULL; clears
 * the eventfd. */
cn_ws_job_t *cn__ws_pool_take(cn_ws_pool_t *p);

/* Cancels requests in progress, joins the threads and frees every job still held.
 * Accepts NULL. */
void cn__ws_pool_stop(cn_ws_pool_t *p);

#endif
