/*
 * store/store.h - the durable store of stored responses (wraps LMDB; no MDB_* type
 * leaves store.c).
 *
 * Layout under the directory given to cn__store_open:
 *   database "responses": store key  -> encoded cn_record_t
 *   database "expiry":    be64(expires_ms) || store key -> (empty), for the sweep
 * Store keys have the seed's shape: "cnerium:response:<op>:<key>", or with a principal
 * scope "cnerium:response:<op>#<principal-hash>:<key>" ('#' cannot occur in an
 * operation name, so the two shapes never collide).
 *
 * Thread-safe: readers run in parallel, writers are serialized by LMDB (also across
 * processes). Every commit is synced to disk before it returns.
 */
#ifndef CN_STORE_STORE_H
#define CN_STORE_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "store/record.h"

typedef struct cn_store cn_store_t;

/* Store key limit: LMDB's default maximum key size is 511 bytes, and the expiry index
 * prefixes a store key with 8 bytes of expiry time. */
#define CN_STORE_KEY_MAX (511 - 8)
#define CN_OPERATION_MAX 64

/* One record to write. */
typedef struct cn_store_put {
    const char *key;
    size_t keylen;
    const cn_record_t *rec;
} cn_store_put_t;

/* Opens (creating if needed) the store in directory dir, mapping at most map_size bytes.
 * Returns 0 and *out (close with cn__store_close), or a negative error. */
int cn__store_open(const char *dir, size_t map_size, cn_store_t **out);

/* Closes the store. Accepts NULL. */
void cn__store_close(cn_store_t *store);

/* Builds the store key for (operation, principal, key) into out (cap bytes, NUL
 * terminated). principal_hex may be NULL. Returns 0 and *outlen, or CN_ETOOBIG. */
int cn__store_key(char *out, size_t cap, const char *operation, const char *principal_hex,
                  const char *key, size_t keylen, size_t *outlen);

/* Looks up a stored response. A record whose expires_ms <= now_ms counts as absent.
 * Returns 0 with *buf a malloc'd copy of the encoded record (caller frees) and *rec
 * decoded into it; CN_ENOTFOUND; CN_ECORRUPT / CN_EVERSION for unreadable bytes; or
 * CN_ESTORE. Out-params are written only on success. */
int cn__store_get(cn_store_t *store, const char *key, size_t keylen, uint64_t now_ms,
                  cn_record_t *rec, void **buf);

/* Writes n records in one transaction, replacing any record under the same key, and
 * syncs it. Returns 0 (all written) or a negative error (none written). */
int cn__store_put(cn_store_t *store, const cn_store_put_t *items, size_t n);

/* Deletes records with expires_ms <= now_ms, at most max of them in one transaction.
 * Returns 0 and the number deleted in *deleted (fewer than max means none are left), or
 * a negative error. */
int cn__store_sweep(cn_store_t *store, uint64_t now_ms, size_t max, size_t *deleted);

/* Number of stored responses, expired or not (for tests and metrics). */
int cn__store_count(cn_store_t *store, size_t *count);

#endif
