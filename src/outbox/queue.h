/*
 * outbox/queue.h - the outbox's durable store: operations and their indexes in LMDB,
 * every change one synced transaction.
 *
 * The only file of the outbox library that talks to LMDB (the server's store lives in
 * src/store; the client library does not depend on the server). One handle per thread;
 * several processes may share a directory (LMDB serializes writers across processes).
 *
 * DBs: meta (format, next seq, counts by status), ops (id -> state record, op.h),
 * bodies (id -> payload), answers (id -> a Done answer's body), by_seq (seq -> id, all),
 * live (seq -> id, Pending and Inflight), due (next_attempt_at | seq -> id, Pending),
 * inflight (seq -> id), done (finished_at | seq -> id), failed (seq -> id),
 * fifo (hash(url) | seq -> id, Pending and Inflight). Integers in keys are big endian.
 */
#ifndef CN_OUTBOX_QUEUE_H
#define CN_OUTBOX_QUEUE_H

#include <stddef.h>
#include <stdint.h>

#include "cnerium/outbox.h"
#include "outbox/op.h"

typedef struct cn__outbox_queue cn__outbox_queue_t;

/* Opens or creates the store in dir (created if missing). 0 and *out, CN_EVERSION,
 * CN_ESTORE or -errno. */
int cn__outbox_queue_open(const char *dir, uint64_t map_size, cn__outbox_queue_t **out);
void cn__outbox_queue_close(cn__outbox_queue_t *q);

int cn__outbox_queue_enqueue(cn__outbox_queue_t *q, const cn_outbox_spec_t *specs, size_t n,
                             int64_t now_ms, char (*ids)[CN_OUTBOX_ID_SIZE]);
int cn__outbox_queue_get(cn__outbox_queue_t *q, const char *id, cn_outbox_op_t **out);
int cn__outbox_queue_list(cn__outbox_queue_t *q, int status, cn_outbox_list_cb cb, void *ctx);
int cn__outbox_queue_requeue(cn__outbox_queue_t *q, const char *id, int64_t now_ms);
int cn__outbox_queue_stats(cn__outbox_queue_t *q, cn_outbox_stats_t *out);
/* Removes Done operations finished before `before_ms`, at most limit (0: all). Returns
 * the number removed or an error. */
int cn__outbox_queue_compact(cn__outbox_queue_t *q, int64_t before_ms, size_t limit);

/* An operation claimed for a try: copies, owned by the claim array. */
typedef struct {
    char id[CN_OUTBOX_ID_SIZE];
    uint32_t attempt;          /* this try's number (the stored count after the claim) */
    int64_t prev_next_attempt_at;
    char *method;
    char *url;
    char *headers;             /* '\n'-joined lines */
    size_t headers_len;
    void *payload;
    size_t payload_len;
} cn__outbox_claim_t;

/* Asked for each due operation before it is claimed: 0 to claim it, or a time before
 * which it must not be tried (its origin is offline). */
typedef int64_t (*cn__outbox_eligible_cb)(void *ctx, const cn__outbox_rec_t *rec);

/* Claims up to limit operations due at now_ms (in due order), each Inflight with its
 * attempt count raised, lease (owner, lease_until), in one synced commit. With fifo,
 * an operation is only claimed when no older Pending or Inflight one has its URL.
 * An operation that may not go yet (the callback's time, or the retry time of the
 * older operation it waits for under fifo) is deferred: its next_attempt_at moves to
 * that time in the same commit, attempt count unchanged, so due operations that can go
 * are never stuck behind a long run of ones that cannot. *out (owned:
 * cn__outbox_claims_free) and *n, *deferred (may be NULL) the number deferred; 0 or an
 * error (nothing claimed or deferred). */
int cn__outbox_queue_claim(cn__outbox_queue_t *q, int64_t now_ms, size_t limit, int fifo,
                           uint64_t owner, int64_t lease_until, cn__outbox_eligible_cb ok,
                           void *ctx, cn__outbox_claim_t **out, size_t *n, size_t *deferred);
void cn__outbox_claims_free(cn__outbox_claim_t *c, size_t n);

typedef enum {
    CN__OUTBOX_END_DONE,
    CN__OUTBOX_END_RETRY,
    CN__OUTBOX_END_FAIL,
    CN__OUTBOX_END_UNTRIED, /* claimed but not sent, or no connection could be made: the
                               attempt is given back */
} cn__outbox_end_t;

typedef struct {
    const char *id;
    cn__outbox_end_t end;
    int64_t next_attempt_at; /* RETRY, UNTRIED */
    const char *error;       /* RETRY, FAIL: last_error; NULL keeps it */
    int http_status;         /* 0 if none */
    const void *answer;      /* DONE: the body kept */
    size_t answer_len;
    int truncated;
} cn__outbox_result_t;

/* Commits the results of claimed operations in one synced transaction. An operation
 * that is no longer Inflight under owner is left alone. 0 or an error (nothing
 * changed). */
int cn__outbox_queue_finish(cn__outbox_queue_t *q, const cn__outbox_result_t *r, size_t n,
                            uint64_t owner, int64_t now_ms);

/* Puts Inflight operations back to Pending, due at now_ms, or Failed when their attempt
 * count reached max_attempts: those not leased by owner (expired_only = 0: a worker
 * starting), or those whose lease ran out by now_ms (expired_only = 1). Returns how many
 * moved, or an error. */
int cn__outbox_queue_recover(cn__outbox_queue_t *q, uint64_t owner, int64_t now_ms,
                             uint32_t max_attempts, int expired_only);

/* Returns the time an operation of the first due ones becomes sendable: min over them of
 * adjust(ctx, rec) (which returns the rec's effective due time), or -1 when nothing is
 * Pending; an error is returned as -1 too (the worker then polls). */
int64_t cn__outbox_queue_next_due(cn__outbox_queue_t *q,
                                  int64_t (*adjust)(void *ctx, const cn__outbox_rec_t *rec),
                                  void *ctx);

#endif
