/*
 * reliability/replay_cache.h - stored responses a worker has seen, kept in its memory
 * for replays: with a shared store, a key's stored response is final until it expires
 * (nothing replaces it before), so a copy answers its retries without a round trip to
 * the database, and a hot key's retries do not queue behind one another.
 *
 * Bounded in bytes; the oldest entries go first. Safe from any thread.
 */
#ifndef CN_RELIABILITY_REPLAY_CACHE_H
#define CN_RELIABILITY_REPLAY_CACHE_H

#include <stddef.h>
#include <stdint.h>

typedef struct cn_replay_cache cn_replay_cache_t;

/* A cache of at most max_bytes (keys, records and bookkeeping). NULL when out of memory. */
cn_replay_cache_t *cn__replay_cache_new(size_t max_bytes);

void cn__replay_cache_free(cn_replay_cache_t *c);

/* Keeps a copy of the encoded record stored under key, which expires at expires_ms
 * (wall clock). A record too large for the cache (over an eighth of it) is not kept. */
void cn__replay_cache_put(cn_replay_cache_t *c, const char *key, size_t keylen,
                          const uint8_t *record, size_t len, uint64_t expires_ms);

/* When the record under key is cached and has not expired by now_ms, calls
 * fn(record, len, arg) with it (under the cache's lock: fn copies what it keeps and must
 * not call back into the cache) and returns 1; else returns 0. */
int cn__replay_cache_with(cn_replay_cache_t *c, const char *key, size_t keylen,
                          uint64_t now_ms, void (*fn)(const uint8_t *record, size_t len,
                                                      void *arg),
                          void *arg);

/* Keys held now, and the bytes held (a copy replaced by a newer one counts until it is
 * evicted). */
void cn__replay_cache_stats(cn_replay_cache_t *c, size_t *entries, size_t *bytes);

#endif
