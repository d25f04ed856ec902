/*
 * cnerium/outbox.h - the offline-first client outbox: persist an HTTP operation first,
 * send it later, retry until the server has it, exactly once.
 *
 * An operation (method, URL, headers, payload) is written to a local LMDB store with a
 * synced commit before cn_outbox_enqueue returns: after that it survives a kill -9, a
 * power cut or a reboot. A worker sends what is due with libcurl, with
 * "Idempotency-Key: <operation id>" on every try, so a Cnerium server (or any server
 * that honours the key) runs it once however often it is sent. Answers are classified:
 *
 *   2xx, 3xx (replayed or not)                          -> Done
 *   connection refused, DNS failure, connect timeout    -> waits (not an attempt)
 *   other transfer errors and timeouts, 408, 425, 429,
 *   5xx, 409 urn:cnerium:problem:request-in-progress    -> retried (Pending again)
 *   any other 4xx                                       -> Failed (terminal)
 *
 * Retries back off exponentially with full jitter (base_delay_ms * factor^(attempt-1),
 * capped at max_delay_ms, a uniform draw below that), or wait what Retry-After says.
 * An operation whose attempt count reaches max_attempts is Failed with its last error.
 * A server that cannot be reached at all is not the operation's failure: its origin
 * backs off as a whole (same policy, one step per tick that failed to reach it) and its
 * operations wait without spending attempts: being offline, however long, fails nothing.
 * Failed operations stay until requeued; Done ones are compacted after a retention.
 *
 *   Pending -> Inflight -> Done
 *                 |-> Pending (retryable failure, attempts left)
 *                 '-> Failed  (permanent failure, or max_attempts reached)
 *
 * Every state change (status, attempt, next time, last error) is one synced commit; a
 * tick commits the claim of its batch in one transaction and the results in another.
 * Inflight operations carry a lease (owner, deadline): one worker per outbox directory
 * holds a lock file, so when a worker starts, every Inflight operation belongs to a dead
 * one and goes back to Pending; it is sent again with the same key, which the server
 * answers from its store if the first try reached it.
 *
 * Threads: a cn_outbox_t and its worker are used by one thread at a time. Several
 * processes may open the same directory: enqueue, list and requeue from one while
 * another runs the worker (LMDB serializes writers across processes).
 *
 * Times are wall-clock milliseconds since the Unix epoch (cn_outbox_now_ms()), because
 * next-attempt times survive restarts; passing `now` explicitly keeps tests exact.
 */
#ifndef CNERIUM_OUTBOX_H
#define CNERIUM_OUTBOX_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"

/* An operation id: 32 lowercase hex digits of 128 random bits (getrandom), never
 * reused in a directory (an enqueue that draws an existing id draws again). */
#define CN_OUTBOX_ID_LEN 32
#define CN_OUTBOX_ID_SIZE (CN_OUTBOX_ID_LEN + 1)

/* Limits checked at enqueue (-EINVAL / CN_ETOOBIG with a reason, nothing stored). */
#define CN_OUTBOX_URL_MAX 8192
#define CN_OUTBOX_KIND_MAX 255
#define CN_OUTBOX_HEADERS_MAX 64         /* header lines per operation */
#define CN_OUTBOX_HEADER_MAX 8192        /* bytes per "Name: value" line */
#define CN_OUTBOX_PAYLOAD_MAX (64u << 20) /* 64 MiB */
#define CN_OUTBOX_RESPONSE_KEEP 65536    /* bytes of a Done answer's body kept */

typedef enum {
    CN_OUTBOX_PENDING = 0,
    CN_OUTBOX_INFLIGHT = 1,
    CN_OUTBOX_DONE = 2,
    CN_OUTBOX_FAILED = 3,
} cn_outbox_status_t;

#define CN_OUTBOX_STATUS_COUNT 4

/* "pending", "inflight", "done", "failed"; NULL for an unknown value. */
const char *cn_outbox_status_name(cn_outbox_status_t status);

/* The status named name; -EINVAL if none. */
int cn_outbox_status_parse(const char *name, cn_outbox_status_t *out);

typedef struct {
    uint32_t max_attempts; /* tries before Failed; >= 1 (default 8) */
    uint32_t base_delay_ms; /* backoff before the second try (default 500) */
    double factor;          /* growth per try, >= 1 (default 2.0) */
    uint32_t max_delay_ms;  /* backoff cap (default 60000) */
    int jitter;             /* 1: full jitter, uniform in [0, backoff] (default 1) */
    uint32_t max_retry_after_ms; /* a Retry-After above this is cut to it (default 1 h) */
} cn_outbox_policy_t;

/* The defaults above. */
void cn_outbox_policy_default(cn_outbox_policy_t *p);

/* 0, or -EINVAL with *why (static text) naming the bad field: max_attempts >= 1,
 * 1 <= factor <= 1000, max_delay_ms >= base_delay_ms. */
int cn_outbox_policy_check(const cn_outbox_policy_t *p, const char **why);

/* The delay before the try after `attempt` tries (attempt >= 1): the capped exponential
 * backoff, then, with jitter, scaled by random / 2^64 (a uniform draw in [0, cap]).
 * Pure: the same arguments give the same delay. */
uint64_t cn_outbox_backoff_ms(const cn_outbox_policy_t *p, uint32_t attempt, uint64_t random);

/* A network probe: returns nonzero when `origin` ("http://host:port") can be reached
 * now. Called at most once per origin per tick, before sending to it; operations for an
 * origin it reports unreachable are not tried (their attempt count does not move) and
 * go in the first tick in which it says yes. */
typedef int (*cn_outbox_probe_cb)(void *ctx, const char *origin);

typedef struct {
    cn_outbox_policy_t retry;
    uint32_t batch_limit;        /* operations claimed per tick (default 64) */
    uint32_t max_parallel;       /* requests in flight at once (default 16) */
    int fifo_per_target;         /* 1: per URL, an operation is not sent before every
                                    older one for that URL is Done or Failed (default 0) */
    uint32_t request_timeout_ms; /* whole request (default 30000) */
    uint32_t connect_timeout_ms; /* TCP + TLS connect (default 5000) */
    uint32_t lease_ms;           /* Inflight lease; 0 (the default) means
                                    request_timeout_ms + 30000 */
    uint64_t done_retention_ms;  /* Done operations older than this are compacted
                                    (default 7 days; 0 keeps them forever) */
    uint64_t map_size;           /* initial LMDB map size in bytes (default 1 GiB); a
                                    full map doubles, up to 64 GiB, before CN_EMAPFULL */
    cn_outbox_probe_cb probe;    /* optional */
    void *probe_ctx;
} cn_outbox_config_t;

/* The defaults above. */
void cn_outbox_config_default(cn_outbox_config_t *c);

typedef struct cn_outbox cn_outbox_t;

/* Opens (creating it and the directory's store if needed) the outbox in directory dir.
 * cfg may be NULL for the defaults. 0 and *out (owned: cn_outbox_close), -EINVAL
 * (bad config), CN_EVERSION (a store of a newer format), CN_ESTORE or -errno. */
int cn_outbox_open(const char *dir, const cn_outbox_config_t *cfg, cn_outbox_t **out);

/* Closes an outbox (and its worker if one is running). NULL is fine. */
void cn_outbox_close(cn_outbox_t *ob);

/* What to enqueue. Strings are borrowed for the call. */
typedef struct {
    const char *kind;             /* free text for the application, may be NULL */
    const char *method;           /* POST, PUT, PATCH or DELETE */
    const char *url;              /* http:// or https:// */
    const char *const *headers;   /* "Name: value" lines, no CR/LF; not Idempotency-Key
                                     nor the framing and hop-by-hop ones (Content-Length,
                                     Transfer-Encoding, Connection, Keep-Alive, TE,
                                     Trailer, Upgrade), which the transport owns */
    size_t header_count;
    const void *payload;          /* may be NULL when payload_len is 0 */
    size_t payload_len;
} cn_outbox_spec_t;

/* 0 when spec can be enqueued; otherwise -EINVAL or CN_ETOOBIG and *why (static text). */
int cn_outbox_spec_check(const cn_outbox_spec_t *spec, const char **why);

/* Stores one operation as Pending, due at now_ms, with a synced commit, and writes its
 * id to id_out. 0, an error of cn_outbox_spec_check (nothing stored), CN_EMAPFULL, or
 * CN_ESTORE / -errno (nothing stored). */
int cn_outbox_enqueue(cn_outbox_t *ob, const cn_outbox_spec_t *spec, int64_t now_ms,
                      char id_out[CN_OUTBOX_ID_SIZE]);

/* Stores n operations in one synced commit: all or none. ids_out[i] gets the id of
 * specs[i]. Errors as cn_outbox_enqueue. */
int cn_outbox_enqueue_many(cn_outbox_t *ob, const cn_outbox_spec_t *specs, size_t n,
                           int64_t now_ms, char (*ids_out)[CN_OUTBOX_ID_SIZE]);

/* One operation, as stored. Strings are NUL-terminated; payload and response may hold
 * any bytes (a NUL is added after them). */
typedef struct {
    char id[CN_OUTBOX_ID_SIZE];
    cn_outbox_status_t status;
    uint64_t seq;              /* enqueue order in this directory, from 1 */
    const char *kind;          /* "" when none */
    const char *method;
    const char *url;
    const char *const *headers;
    size_t header_count;
    const char *payload;
    size_t payload_len;
    int64_t created_at_ms;
    int64_t updated_at_ms;
    int64_t next_attempt_at_ms; /* Pending: when it is due */
    int64_t lease_until_ms;     /* Inflight: the lease deadline */
    uint32_t attempt;           /* tries that may have reached the server (a
                                   connection that could not be made is not one) */
    int last_http_status;       /* status of the last answer, 0 if none */
    const char *last_error;     /* "" when none */
    const char *response;       /* Done: the body of the answer (at most
                                   CN_OUTBOX_RESPONSE_KEEP bytes) */
    size_t response_len;
    int response_truncated;
} cn_outbox_op_t;

/* Frees an operation returned by cn_outbox_get or given to a list callback's caller.
 * NULL is fine. */
void cn_outbox_op_free(cn_outbox_op_t *op);

/* Reads operation id. 0 and *out (owned: cn_outbox_op_free), CN_ENOTFOUND, -EINVAL
 * (not an id), CN_ECORRUPT / CN_ESTORE. */
int cn_outbox_get(cn_outbox_t *ob, const char *id, cn_outbox_op_t **out);

/* Called for each listed operation; op is borrowed for the call. Nonzero stops. */
typedef int (*cn_outbox_list_cb)(void *ctx, const cn_outbox_op_t *op);

/* Lists operations in enqueue order, all of them (status < 0) or those with one status.
 * Runs in one read transaction: a consistent snapshot. Returns 0, the callback's
 * nonzero value, or an error. */
int cn_outbox_list(cn_outbox_t *ob, int status, cn_outbox_list_cb cb, void *ctx);

/* Puts a Failed operation back to Pending, due at now_ms, with its attempt count reset
 * (its id, and so its Idempotency-Key, stays). 0, CN_ENOTFOUND, or CN_ESTATE when it is
 * not Failed. */
int cn_outbox_requeue(cn_outbox_t *ob, const char *id, int64_t now_ms);

typedef struct {
    uint64_t count[CN_OUTBOX_STATUS_COUNT]; /* by cn_outbox_status_t */
    uint64_t total;
    int64_t next_due_ms;        /* earliest Pending next_attempt_at, -1 if none */
    int64_t oldest_pending_ms;  /* created_at of the oldest Pending or Inflight, -1 */
    uint64_t enqueued_total;    /* ids ever issued in this directory */
} cn_outbox_stats_t;

/* Counts by status (kept with every commit: O(1)). 0 or an error. */
int cn_outbox_stats(cn_outbox_t *ob, cn_outbox_stats_t *out);

/* Removes Done operations finished more than done_retention_ms before now_ms, at most
 * `limit` of them (0: no limit). Returns how many were removed, or an error. */
int cn_outbox_compact(cn_outbox_t *ob, int64_t now_ms, size_t limit);

/* --- The worker ------------------------------------------------------------------ */

/* Takes the directory's worker lock and puts every Inflight operation (a dead worker's)
 * back to Pending, due now, keeping its attempt count; one whose count already reached
 * max_attempts is Failed ("interrupted ..."): it may have reached the server, and
 * sending it again would exceed the policy. 0; -EBUSY when another process holds the
 * lock (*holder_pid set when known, may be NULL); -EALREADY when this outbox already
 * started its worker; or an error. */
int cn_outbox_worker_start(cn_outbox_t *ob, int64_t now_ms, int *holder_pid);

typedef struct {
    uint32_t claimed;  /* operations moved to Inflight and tried */
    uint32_t done;     /* answered 2xx/3xx */
    uint32_t retried;  /* retryable failure, Pending again */
    uint32_t unreached; /* no connection could be made: Pending again, not an attempt */
    uint32_t failed;   /* permanent failure or max_attempts reached */
    uint32_t offline;  /* due but not tried: their origin is offline */
    uint32_t expired;  /* Inflight operations whose lease had run out (left by a tick
                          that failed), returned to Pending */
} cn_outbox_tick_t;

/* Sends what is due at now_ms: claims up to batch_limit due operations (one commit),
 * sends them in parallel (at most max_parallel at once, one connection pool kept across
 * ticks), and commits every result in one transaction. An origin that fails to connect
 * is offline for the rest of the tick and until the failed operation's next try; the
 * probe, when set, is asked before an origin is used. A due operation that may not go
 * yet (its origin found unreachable, or, with fifo_per_target, an older one for its URL
 * waiting to retry) has its next_attempt_at moved to when it may, attempt count
 * unchanged, so it does not hold up the operations behind it (a claim looks at most
 * batch_limit + 1024 due operations). Returns the number of operations
 * tried (>= 0, report filled when not NULL) or an error (the claims already committed
 * stay Inflight under their lease). Needs cn_outbox_worker_start. */
int cn_outbox_tick(cn_outbox_t *ob, int64_t now_ms, cn_outbox_tick_t *report);

/* When the worker should tick next: the earliest due time of a Pending operation it
 * could send (an offline origin's operations count from the end of their offline
 * time), or -1 when nothing is Pending. */
int64_t cn_outbox_next_due(cn_outbox_t *ob);

/* Wall-clock milliseconds since the Unix epoch. */
int64_t cn_outbox_now_ms(void);

#endif
