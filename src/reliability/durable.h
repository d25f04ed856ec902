/*
 * reliability/durable.h - the durable route contract: decide, run once, store, replay.
 *
 * Called by the worker's event loop with a complete request. Never sleeps: a request
 * that must wait for a concurrent duplicate is parked (cn__durable_wake resumes it) and
 * one whose record is being committed is answered by the committer's callback.
 */
#ifndef CN_RELIABILITY_DURABLE_H
#define CN_RELIABILITY_DURABLE_H

#include <pthread.h>
#include <stdatomic.h>

#include "cnerium/config.h"
#include "cnerium/response.h"
#include "http/request_internal.h"
#include "shm/inflight.h"
#include "reliability/replay_cache.h"
#include "shm/shm.h"
#include "store/claimer.h"
#include "store/commit.h"
#include "store/store.h"

/* One of CN_OUTCOME_* (shm/shm.h): how the request ended, for the counters. */
typedef enum cn_shm_counter cn_durable_outcome_t;

typedef struct cn_durable_result {
    cn_response_t response; /* owned by the caller: send, then cn_response_free */
    cn_durable_outcome_t outcome;
    unsigned op_index; /* the route's operation */
    int stored;   /* EXECUTED: 1 when the response was stored */
    int waited;   /* the request slept on a concurrent duplicate */
    int deferred; /* no response here: it goes to deliver() once the commit is decided */
} cn_durable_result_t;

/* Where a deferred response goes: handle is the request's http_handle. Runs on the
 * thread that polls the committer or wakes parked requests (or inside
 * cn__durable_handle, with a committer that decides at once). */
typedef void (*cn_durable_deliver_cb)(void *arg, void *handle, cn_durable_result_t *out);

typedef struct cn_durable {
    const cn_config_t *cfg; /* borrowed */
    cn_store_t *store;      /* borrowed */
    cn_committer_t *committer; /* borrowed */
    cn_inflight_t *inflight; /* borrowed: this process's view of the shared table */
    cn_durable_deliver_cb deliver;
    void *deliver_arg;
    /* Requests waiting for a concurrent duplicate are parked here (their connections
     * suspended), at most max_parked; beyond that a request gets 409 in-progress with
     * Retry-After. Initialize park_mu with PTHREAD_MUTEX_INITIALIZER. */
    unsigned max_parked;
    pthread_mutex_t park_mu;
    struct parked *parked; /* park_mu */
    atomic_uint nparked;
    _Atomic uint32_t *parked_gauge; /* optional: nparked published (the shared metrics) */
    /* Counts wakes (claims somebody waited on ended). A parked request remembers the
     * count its last decision saw: a wake since makes it due. Zero-initialize. */
    _Atomic uint64_t wake_gen;
    /* A shared store (PostgreSQL): a key this host's in-flight table gives a request is
     * then claimed in the database too, through the claimer, before its handler runs;
     * the request waits for the answer like a parked one (cn__durable_claimed takes it
     * on). Claims are named owner_prefix/<owner_seq>. NULL: LMDB, the table decides. */
    cn_claimer_t *claimer;
    cn_replay_cache_t *replays; /* optional, with a claimer: stored responses seen */
    char owner_prefix[CN_CLAIM_OWNER_MAX - 24];
    _Atomic uint64_t owner_seq;
} cn_durable_t;

/* How long a request that waits for another host's claim sleeps at most before it asks
 * again, should the notification that the claim ended be lost (ms). */
#define CN_DURABLE_SHARED_POLL_MS 200

/* Takes parked requests back to their decision: those due by now_ms, those decided
 * before a wake, and with all set (this call is a wake: a claim somebody waited on
 * ended) all of them. Any of a worker's loops may call it, also at once: they take the
 * due requests one at a time, so one that becomes the owner and runs its handler holds
 * up no other. A call takes at most as many requests as were parked when it began;
 * what is still due then makes cn__durable_next_wake_ms say so. Answers go to
 * d->deliver. */
void cn__durable_wake(cn_durable_t *d, uint64_t now_ms, int all);

/* Monotonic ms at which a parked request is due (its holder's lease end, its own wait
 * deadline, or a rerun; 0 for one decided before the last wake), or UINT64_MAX with
 * none parked. */
uint64_t cn__durable_next_wake_ms(cn_durable_t *d);

/* Takes on the requests whose shared-store claims were answered (the claimer's eventfd
 * fired): runs the handler of an owned key, replays a stored response, answers 409 or
 * parks a request whose key another host holds, 503 when the database failed. Any of a
 * worker's loops may call it, also at once. */
void cn__durable_claimed(cn_durable_t *d);

/* Frees the claims cn__claimer_free returned (the worker is stopping: their requests'
 * connections are gone), releasing their keys in the in-flight table. */
void cn__durable_drop_claims(cn_durable_t *d, cn_claim_job_t *left);

/* Requests parked now. */
unsigned cn__durable_parked(cn_durable_t *d);

/* Answers every parked request 503 (Retry-After: 1): the worker is stopping. */
void cn__durable_cancel_parked(cn_durable_t *d);

/* Runs route (a durable route) for req. Produces a response in *out, or sets
 * out->deferred: the response of an executed request whose record is being committed
 * then goes to d->deliver exactly once (possibly before this returns). */
void cn__durable_handle(cn_durable_t *d, const cn_route_t *route, cn_request_t *req,
                        cn_durable_result_t *out);

/* Whether a response with this status is stored under CN_PERSIST_AUTO. */
int cn__durable_status_stored(int status);

#endif
