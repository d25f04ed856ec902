/*
 * store/commit.h - the commit interface between request handling and the store.
 *
 * A committer makes a record durable and then reports back through a callback. The
 * synchronous committer writes to the store inside cn__committer_submit and calls back
 * before returning; a later asynchronous one (a persister process with a write-ahead log)
 * will call back from elsewhere once the record is on disk. Callers must handle both:
 * the callback may run before cn__committer_submit returns.
 */
#ifndef CN_STORE_COMMIT_H
#define CN_STORE_COMMIT_H

#include "store/store.h"

typedef struct cn_committer cn_committer_t;

/* status is 0 when the record is durable, a negative error otherwise. */
typedef void (*cn_commit_done_cb)(int status, void *arg);

/* A committer that writes through store (borrowed; must outlive the committer). */
int cn__committer_new_sync(cn_store_t *store, cn_committer_t **out);

/* Accepts NULL. */
void cn__committer_free(cn_committer_t *c);

/* Submits one record. item and everything it points to are borrowed for the duration of
 * the call only. Returns 0 when accepted: done(status, arg) is then called exactly once.
 * Returns a negative error when not accepted: done is never called. */
int cn__committer_submit(cn_committer_t *c, const cn_store_put_t *item,
                         cn_commit_done_cb done, void *arg);

#endif
