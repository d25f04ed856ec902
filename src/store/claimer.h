/*
 * store/claimer.h - claims in the shared store (store/pg.h) for a worker's event loops.
 *
 * A loop never waits for the database: it hands a claim (or a release) to the claimer,
 * whose thread runs them in order on a connection of its own, and gets the answer back
 * through an eventfd (the worker's, given at creation), taking it with
 * cn__claimer_take. Releases are fire-and-forget; because jobs run in order, a key this
 * worker releases is free before any later claim of this worker runs.
 */
#ifndef CN_STORE_CLAIMER_H
#define CN_STORE_CLAIMER_H

#include <stddef.h>
#include <stdint.h>

#include "shm/shm.h"
#include "store/pg.h"
#include "store/store.h"

/* Room for an owner: "<node id>/<pid>/<nonce>/<counter>". */
#define CN_CLAIM_OWNER_MAX 128

typedef struct cn_claim_job {
    struct cn_claim_job *next;
    /* in */
    int release; /* 1: end owner's claim on skey; the claimer frees the job */
    char skey[CN_STORE_KEY_MAX + 1];
    size_t skeylen;
    uint8_t fingerprint[32];
    char owner[CN_CLAIM_OWNER_MAX];
    uint32_t lease_ms;
    /* out: rc 0 with claim (its record, when STORED, is the taker's to free), CN_ESTORE
     * (the database is unreachable or failed: nothing claimed), -ENOMEM */
    int rc;
    cn_pg_claim_t claim;
} cn_claim_job_t;

typedef struct cn_claimer cn_claimer_t;

/* Connects to url and starts the thread. done_efd is written after each answered
 * claim. stats (may be NULL) counts the claims and their latency. Returns 0, or what
 * cn__pg_open returns (err says why). */
int cn__claimer_new(const char *url, int done_efd, cn_shm_shared_t *stats, cn_claimer_t **out,
                    char *err, size_t errlen);

/* Queues job (malloc'd; the claimer owns it until cn__claimer_take returns it, or frees
 * it, for a release). Never blocks on the database. */
void cn__claimer_submit(cn_claimer_t *c, cn_claim_job_t *job);

/* The answered claims, oldest first (a list through next), or NULL. Any thread. */
cn_claim_job_t *cn__claimer_take(cn_claimer_t *c);

/* Stops the thread after the job it runs, and returns the claims it never answered
 * (answered ones are taken by cn__claimer_take first), then frees the claimer. Accepts
 * NULL. */
cn_claim_job_t *cn__claimer_free(cn_claimer_t *c);

#endif
