/*
 * store/pg.h - the PostgreSQL store: connection, schema, claims, commits and
 * notifications (wraps libpq; no PG* type leaves store/pg.c).
 *
 * Several Cnerium hosts share one database; LMDB stays the single-host default. The
 * schema mirrors the LMDB databases of store/store.h and stores the same encoded bytes
 * (store/format.h), so one codec serves both stores. It is versioned: cnerium_schema
 * holds one row per applied migration step, and the schema's version is the highest.
 *
 * A cn_pg_t is one connection: use it from one thread at a time (libpq's rule); separate
 * connections may be used from separate threads at once.
 */
#ifndef CN_STORE_PG_H
#define CN_STORE_PG_H

#include <stddef.h>
#include <stdint.h>

#include "store/store.h"

typedef struct cn_pg cn_pg_t;

/* The schema version this build creates and expects. */
#define CN_PG_SCHEMA_VERSION 1

/* Connects to url, a postgresql:// or postgres:// URL (libpq's URI syntax). Returns 0
 * and *out (close with cn__pg_close); CN_ECONFIG for any other form of url, or
 * CN_ESTORE when the connection failed; -ENOMEM. On failure err (errlen bytes, always
 * NUL-terminated when errlen > 0) says why in one line, libpq's message for a failed
 * connection, never a password the url carries. */
int cn__pg_open(const char *url, cn_pg_t **out, char *err, size_t errlen);

/* Closes the connection. Accepts NULL. */
void cn__pg_close(cn_pg_t *pg);

/* Creates the schema, or migrates it to CN_PG_SCHEMA_VERSION: each step not yet applied
 * runs once, in its own transaction, under a transaction-scoped advisory lock, so hosts
 * starting at once apply each step once and all return 0. Returns 0 (also when nothing
 * was left to do); CN_EVERSION when the database is at a version newer than this build
 * knows; CN_ESTORE when a statement failed (that step rolled back, earlier ones kept).
 * err as for cn__pg_open. */
int cn__pg_migrate(cn_pg_t *pg, char *err, size_t errlen);

/* The schema's version: 0 for a database without one. Returns 0 and *version, or
 * CN_ESTORE (logged). */
int cn__pg_schema_version(cn_pg_t *pg, int *version);

/* ---- claims, stored responses, commits: one contract across hosts ----
 *
 * A key is claimed in cnerium_claims (owner, lease deadline) before its handler runs and
 * stays claimed until the commit that stores its response deletes the claim in the same
 * transaction, or until a release. owner names one claim, not one host: callers make it
 * unique per claim ("<host>/<pid>/<counter>"), so a host that claims a key again after
 * losing it never commits on the strength of the old claim. Times are wall-clock
 * milliseconds (every host's clock; a lease is a span, so keep hosts in NTP sync and
 * leases well above their skew). The caller passes now_ms, which keeps these functions
 * free of clocks and lets the tests move time. */

typedef enum cn_pg_claim_state {
    CN_PG_CLAIM_OWNED = 0,   /* the caller holds the key: run, then commit or release */
    CN_PG_CLAIM_TAKEN_OVER,  /* owned, after the previous holder's lease had ended */
    CN_PG_CLAIM_HELD,        /* another claim's lease runs: wait for it, or answer 409 */
    CN_PG_CLAIM_STORED,      /* a live response is stored: replay it */
    CN_PG_CLAIM_AGAIN,       /* the response first seen has gone since: ask again */
} cn_pg_claim_state_t;

typedef struct cn_pg_claim {
    cn_pg_claim_state_t state;
    int same_fingerprint;   /* HELD: the holder's request has the caller's fingerprint */
    int64_t lease_until_ms; /* HELD: when the holder's lease ends */
    uint8_t *record;        /* STORED: the stored record (malloc'd: free it) */
    size_t record_len;
} cn_pg_claim_t;

/* Looks skey up and claims it for lease_ms when no live response is stored and no live
 * claim holds it, in one round trip. An expired claim is taken over (its holder's lease
 * ended: the holder died, or runs past it and will fail to commit); an expired response
 * counts as absent. The responses are read again after the claim, so a commit that
 * raced it is replayed (and the claim undone), never run twice.
 *
 * Non-blocking, for an event loop: cn__pg_claim_send sends it (0, or CN_ESTORE);
 * then, whenever cn__pg_fd is readable (or writable, while cn__pg_claim_want_write),
 * cn__pg_claim_recv returns -EAGAIN until the answer is in, then 0 and *out (or
 * CN_ESTORE, -ENOMEM). One claim at a time per connection, and nothing else on it
 * meanwhile. cn__pg_claim does all of it, blocking (bounded), asking again on
 * CN_PG_CLAIM_AGAIN. err as for cn__pg_open. */
int cn__pg_claim_send(cn_pg_t *pg, const void *skey, size_t skeylen, const void *fp,
                      size_t fplen, const char *owner, int64_t now_ms, uint32_t lease_ms,
                      char *err, size_t errlen);
int cn__pg_claim_want_write(cn_pg_t *pg);
int cn__pg_claim_recv(cn_pg_t *pg, cn_pg_claim_t *out, char *err, size_t errlen);
int cn__pg_fd(const cn_pg_t *pg);
int cn__pg_claim(cn_pg_t *pg, const void *skey, size_t skeylen, const void *fp, size_t fplen,
                 const char *owner, int64_t now_ms, uint32_t lease_ms, cn_pg_claim_t *out,
                 char *err, size_t errlen);

/* Many claims in one round trip and one transaction (a libpq pipeline, one sync: one
 * WAL flush), blocking; each claim is still its own two statements, as cn__pg_claim
 * runs it, and they run in key order (as every commit locks claims), so batches never
 * deadlock. Returns 0 with every request's rc (0, -ENOMEM) and, with rc 0, out (a STORED
 * record is the caller's to free; AGAIN never comes back: asked again); or CN_ESTORE
 * when the batch failed as a whole (a statement failed or the connection did: nothing
 * was claimed, every out untouched). At most CN_PG_CLAIM_MANY_MAX at once: what is sent
 * before anything is read must fit the socket buffers. Keys must be distinct. */
#define CN_PG_CLAIM_MANY_MAX 64
typedef struct cn_pg_claim_req {
    const void *skey;
    size_t skeylen;
    const void *fp;
    size_t fplen;
    const char *owner;
    uint32_t lease_ms;
    int rc;
    cn_pg_claim_t out;
} cn_pg_claim_req_t;
int cn__pg_claim_many(cn_pg_t *pg, cn_pg_claim_req_t *reqs, size_t n, int64_t now_ms,
                      char *err, size_t errlen);

/* Ends owner's claim on skey without storing anything (the handler's response is not
 * kept) and notifies CN_PG_DONE_CHANNEL. Returns 0, CN_ELOST when owner no longer held
 * it (taken over), or CN_ESTORE. */
int cn__pg_release(cn_pg_t *pg, const void *skey, size_t skeylen, const char *owner,
                   char *err, size_t errlen);

/* One record of a batch: what cn__store_apply takes (put.status is its outcome), and
 * the claim it commits. */
typedef struct cn_pg_put {
    cn_store_raw_put_t put;
    const char *owner; /* the claim on put.key this record ends; NULL: none to check */
} cn_pg_put_t;

/* Stores a batch in one transaction, acknowledged once PostgreSQL has committed it, with
 * cn__store_apply's decisions per record plus the claim: a record whose claim is no
 * longer owner's (taken over) is skipped whole with status CN_ELOST; one whose appends'
 * expected versions do not hold (against the database and the records before it) with
 * CN_ECONFLICT; one that does not decode with CN_ECORRUPT, a key too long with
 * CN_ETOOBIG. The others: the claim is deleted, the events and the appends' published
 * events take the next positions of the one global event log and the appends the next
 * positions of the stream log and versions of their streams (gapless and in commit
 * order across hosts: the head row stays locked to the commit), events are stamped
 * now_ms, the record replaces an expired one. At commit CN_PG_DONE_CHANNEL is notified
 * per ended claim (payload: the key in hex) and CN_PG_EVENTS_CHANNEL once when events
 * were added (payload: the last position). *event_head (may be NULL) gets the last event
 * position after the batch, or -1 for a batch without events or appends (the head is
 * then neither locked nor read). Returns 0 (statuses set); CN_ESTORE, -ENOMEM when the
 * transaction failed (nothing stored; a failed COMMIT on a lost connection leaves the
 * outcome unknown: answer "retry", and the retry replays or, after the lease, takes
 * the key over). */
int cn__pg_apply(cn_pg_t *pg, cn_pg_put_t *items, size_t n, int64_t now_ms,
                 int64_t *event_head, char *err, size_t errlen);

/* ---- reading and housekeeping: store/store.h's functions of the same names ---- */

/* Deletes responses with expires_ms <= now_ms and claims whose lease ended before
 * now_ms - claim_grace_ms (a claim left by a host that died and whose key nobody used
 * since; the grace keeps a claim whose holder runs past its lease and still commits),
 * at most max of each in one transaction. *deleted counts the responses (fewer than max:
 * none left). */
int cn__pg_sweep(cn_pg_t *pg, int64_t now_ms, size_t max, int64_t claim_grace_ms,
                 size_t *deleted, char *err, size_t errlen);

int cn__pg_events_read(cn_pg_t *pg, uint64_t from, size_t max,
                       int (*cb)(uint64_t seq, const uint8_t *p, size_t len, void *arg),
                       void *arg, char *err, size_t errlen);
int cn__pg_events_bounds(cn_pg_t *pg, uint64_t *oldest, uint64_t *newest, char *err,
                         size_t errlen);
int cn__pg_events_prune(cn_pg_t *pg, uint64_t keep, uint64_t min_created_ms, size_t max,
                        size_t *deleted, char *err, size_t errlen);
/* The database's epoch, made once by the schema: the same on every host. */
int cn__pg_events_epoch(cn_pg_t *pg, uint64_t *epoch, char *err, size_t errlen);

int cn__pg_stream_version(cn_pg_t *pg, const char *stream, size_t len, uint64_t *version,
                          char *err, size_t errlen);
/* CN_ECORRUPT for a log entry that does not decode. */
int cn__pg_stream_read(cn_pg_t *pg, const char *stream, size_t len, uint64_t from,
                       int backward, size_t max, cn_log_read_cb cb, void *arg, char *err,
                       size_t errlen);
int cn__pg_log_read(cn_pg_t *pg, uint64_t from, size_t max, cn_log_read_cb cb, void *arg,
                    char *err, size_t errlen);
int cn__pg_log_head(cn_pg_t *pg, uint64_t *position, char *err, size_t errlen);

#define CN_PG_DONE_CHANNEL "cnerium_done"
#define CN_PG_EVENTS_CHANNEL "cnerium_events"

/* LISTENs on channel on this connection. Returns 0 or CN_ESTORE. */
int cn__pg_listen(cn_pg_t *pg, const char *channel, char *err, size_t errlen);

/* Waits up to timeout_ms for a notification on a channel this connection listens on
 * (0: takes one already received, never waits). Returns 0 with its channel and payload
 * (chcap, cap bytes, truncated, NUL-terminated; either may be NULL), -ETIMEDOUT, or
 * CN_ESTORE when the connection failed. */
int cn__pg_wait_notify(cn_pg_t *pg, int timeout_ms, char *channel, size_t chcap,
                       char *payload, size_t cap, char *err, size_t errlen);

/* Reconnects a connection that was lost (the server restarted, the network failed), with
 * the same parameters; nothing to do for a live one. A loss the server announced (it
 * closed the connection) is found here, before the next statement would fail on it. LISTENs are not restored: listen
 * again. Returns 0 when the connection is up, else CN_ESTORE (blocks up to the connect
 * timeout). */
int cn__pg_reset(cn_pg_t *pg, char *err, size_t errlen);

/* 1 when the connection is up (as libpq last saw it). */
int cn__pg_connected(const cn_pg_t *pg);

/* ---- for cn__pg_migrate and the tests ---- */

/* One migration step: the SQL (one or more statements) that takes the schema from
 * version - 1 to version. */
typedef struct cn_pg_step {
    int version;
    const char *sql;
} cn_pg_step_t;

/* cn__pg_migrate with an explicit list of n steps, whose versions must be 1..n in order.
 * *applied (when not NULL, written on success) counts the steps this call ran. */
int cn__pg_migrate_steps(cn_pg_t *pg, const cn_pg_step_t *steps, size_t n, unsigned *applied,
                         char *err, size_t errlen);

/* Runs sql (statements without results, outside or inside a transaction the caller began
 * with "BEGIN"). Returns 0 or CN_ESTORE with err set. */
int cn__pg_exec(cn_pg_t *pg, const char *sql, char *err, size_t errlen);

/* Runs sql, which must return one row of one integer column (NULL is an error). Returns 0
 * and *out, or CN_ESTORE with err set. */
int cn__pg_query_int64(cn_pg_t *pg, const char *sql, int64_t *out, char *err, size_t errlen);

#endif
