/*
 * store/commit.h - the commit interface between request handling and the store.
 *
 * A committer makes a record durable and reports back through a callback, possibly from
 * another thread and possibly before cn__committer_submit returns. Two of them:
 *
 *  - sync: writes the record to the store inside submit (one synced LMDB transaction)
 *    and calls back before returning. For --single-process and tests.
 *  - ring: hands the record to the persister through the worker's record ring and
 *    returns at once; cn__committer_poll, run by the worker's event loop when the ack
 *    eventfd fires or a commit deadline comes, calls back when the persister has written
 *    it to the WAL (fdatasync) and applied it to LMDB, or could not. Nothing waits for
 *    the disk.
 *
 * The callback runs done(status, final, arg): status 0 means durable and stored; a
 * negative status means not stored, except -ENODATA: the persister decided, but which
 * way was lost (more failures than its log holds): the store holds the record or not. final is 1 for the decision, which comes exactly
 * once. Before it, the ring committer may call once with final 0 and -ETIMEDOUT when the
 * record is not decided within its timeout: the caller may answer "retry" then, but
 * must keep the key claimed until the final call, since the record may still land.
 * A committer freed with records still undecided calls them with final 2 (-ECANCELED):
 * forget the request, keep the key claimed (the supervisor frees the claims of a worker
 * that exited once its ring is drained).
 */
#ifndef CN_STORE_COMMIT_H
#define CN_STORE_COMMIT_H

#include <stdint.h>

#include "shm/ring.h"
#include "shm/shm.h"
#include "store/store.h"

typedef struct cn_committer cn_committer_t;

typedef void (*cn_commit_done_cb)(int status, int final, void *arg);

/* A committer that writes through store (borrowed; must outlive the committer). */
int cn__committer_new_sync(cn_store_t *store, cn_committer_t **out);

/* A committer that commits to the PostgreSQL database at url (store/pg.h) from a thread
 * of its own with its own connection: records are committed in the order submitted, as
 * many per transaction as waited while the previous one committed (the group commit),
 * each ending its claim (item->owner). The thread writes ack_efd after each transaction;
 * the caller's loop waits on it and calls cn__committer_poll. A record whose claim was
 * taken over is decided CN_ELOST; a failed transaction fails its records with CN_ESTORE
 * (the connection is made again for the next). stats (may be NULL) counts the
 * transactions, their records and latency. err as for cn__pg_open. */
int cn__committer_new_pg(const char *url, int ack_efd, uint32_t timeout_ms,
                         cn_shm_shared_t *stats, cn_committer_t **out, char *err,
                         size_t errlen);

/* A committer that feeds ring (borrowed) and signals persist_efd after each record; the
 * persister signals ack_efd after acking (the caller's loop waits on it and calls
 * cn__committer_poll). A record not decided within timeout_ms gets its early (final 0)
 * call, from the first poll at or after its deadline. */
int cn__committer_new_ring(cn_ring_t *ring, int persist_efd, int ack_efd, uint32_t timeout_ms,
                           cn_committer_t **out);

/* With idle set, persist_efd is written only while *idle is non-zero (the persister
 * announces it is going to sleep there; while it works it finds new records itself). */
void cn__committer_set_idle_flag(cn_committer_t *c, _Atomic uint32_t *idle);

/* Calls back the records the persister has decided (final call) and those past their
 * deadline (early call). Callbacks run on the calling thread; one caller at a time. The
 * caller has read (emptied) the ack eventfd, or does not need to. */
void cn__committer_poll(cn_committer_t *c);

/* The ack eventfd to wait on (readable when records may have been decided), or -1 for
 * the sync committer. */
int cn__committer_ack_fd(const cn_committer_t *c);

/* Monotonic ms of the earliest commit deadline not yet given its early call (poll then),
 * or UINT64_MAX. */
uint64_t cn__committer_next_deadline_ms(cn_committer_t *c);

/* Waits up to wait_ms for pending records to be decided, polling the ack eventfd itself
 * (the loop is gone), calls back those left with final 2, and frees. Accepts NULL. */
void cn__committer_free(cn_committer_t *c, uint32_t wait_ms);

/* Records submitted and not yet decided. */
unsigned cn__committer_pending(cn_committer_t *c);

/* The largest record (cn__committer_record_size) this committer can take: the ring's
 * record limit (a quarter of its capacity), or the record format's for the sync one. */
size_t cn__committer_record_max(const cn_committer_t *c);

/* The reason of the persister's most recent failure, for a record whose outcome came
 * back as -ENODATA (the ring's failure log overflowed) and that the store does not hold;
 * -EIO when unknown. */
int cn__committer_recent_error(const cn_committer_t *c);

/* Bytes item takes as a record (store key, encoded response, events, framing). */
size_t cn__committer_record_size(const cn_store_put_t *item);

/* Submits one record. item and what it points to are borrowed for the call only.
 * Returns 0 when accepted: done gets its final call exactly once. Returns -EAGAIN when
 * the ring is full (the persister is behind or down: answer 503 with Retry-After),
 * CN_ETOOBIG when the record cannot fit a ring, or another negative error; done is never
 * called then. */
int cn__committer_submit(cn_committer_t *c, const cn_store_put_t *item, cn_commit_done_cb done,
                         void *arg);

/* Submits the events of an ordinary route (an encoded event list): nobody waits for
 * them. The sync committer stores them before returning. Returns 0, -EAGAIN (ring full:
 * the events are lost, the caller counts that), CN_ETOOBIG, or another error. */
int cn__committer_submit_events(cn_committer_t *c, const uint8_t *events, size_t len);

#endif
