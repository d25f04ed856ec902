/*
 * reliability/durable.h - the durable route contract: decide, run once, store, replay.
 *
 * Called by request-handling threads with a complete request. Blocking: it may wait for a
 * concurrent duplicate (bounded by the config) and for the commit.
 */
#ifndef CN_RELIABILITY_DURABLE_H
#define CN_RELIABILITY_DURABLE_H

#include <stdatomic.h>

#include "cnerium/config.h"
#include "cnerium/response.h"
#include "http/request_internal.h"
#include "shm/inflight.h"
#include "shm/shm.h"
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
 * committer's thread (or on the request thread, before cn__durable_handle returns). */
typedef void (*cn_durable_deliver_cb)(void *arg, void *handle, cn_durable_result_t *out);

typedef struct cn_durable {
    const cn_config_t *cfg; /* borrowed */
    cn_store_t *store;      /* borrowed */
    cn_committer_t *committer; /* borrowed */
    cn_inflight_t *inflight; /* borrowed: this process's view of the shared table */
    cn_durable_deliver_cb deliver;
    void *deliver_arg;
    /* Requests waiting for a concurrent duplicate wait on threads of their own, never on
     * a server thread (which serves other connections too). At most max_waiters at a
     * time; beyond that a request waits where it is. */
    unsigned max_waiters;
    atomic_uint waiters;
} cn_durable_t;

/* Waits (bounded by wait_ms) until no waiter thread runs. Returns the number left. */
unsigned cn__durable_quiesce(cn_durable_t *d, uint32_t wait_ms);

/* Runs route (a durable route) for req. Produces a response in *out, or sets
 * out->deferred: the response of an executed request whose record is being committed
 * then goes to d->deliver exactly once (possibly before this returns). */
void cn__durable_handle(cn_durable_t *d, const cn_route_t *route, cn_request_t *req,
                        cn_durable_result_t *out);

/* Whether a response with this status is stored under CN_PERSIST_AUTO. */
int cn__durable_status_stored(int status);

#endif
