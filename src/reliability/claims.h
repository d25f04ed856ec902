/*
 * reliability/claims.h - the in-flight table of one process: at most one request per
 * store key runs its handler at a time; duplicates wait for it.
 *
 * Thread-safe (one mutex; waiters sleep on a per-entry condition variable). It covers
 * the threads of one server process, which holds the data-dir lock, so no other process
 * can run handlers against the same store.
 */
#ifndef CN_RELIABILITY_CLAIMS_H
#define CN_RELIABILITY_CLAIMS_H

#include <stddef.h>
#include <stdint.h>

#include "reliability/fingerprint.h"

typedef struct cn_claims cn_claims_t;

typedef enum cn_claim_result {
    CN_CLAIM_OWNED = 0,  /* the caller owns the key: run, then cn__claims_release */
    CN_CLAIM_RELEASED,   /* another request held the key and has released it: look again */
    CN_CLAIM_MISMATCH,   /* another request holds the key with a different fingerprint */
    CN_CLAIM_TIMEOUT,    /* the holder did not finish within wait_ms */
    CN_CLAIM_NOMEM,
} cn_claim_result_t;

int cn__claims_new(cn_claims_t **out);
void cn__claims_free(cn_claims_t *claims);

/* Claims key (keylen bytes, copied) for a request with fingerprint fp. When another
 * request holds it with the same fingerprint, waits at most wait_ms for its release. */
cn_claim_result_t cn__claims_acquire(cn_claims_t *claims, const char *key, size_t keylen,
                                     const uint8_t fp[CN_SHA256_LEN], uint32_t wait_ms);

/* Releases a key the caller owns and wakes its waiters. */
void cn__claims_release(cn_claims_t *claims, const char *key, size_t keylen);

/* Number of keys currently held (for tests). */
size_t cn__claims_held(cn_claims_t *claims);

#endif
