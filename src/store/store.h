/*
 * store/store.h - the durable store of stored responses (wraps LMDB; no MDB_* type
 * leaves store.c).
 *
 * Layout under the directory given to cn__store_open:
 *   database "responses": store key  -> encoded cn_record_t
 *   database "expiry":    be64(expires_ms) || store key -> (empty), for the sweep
 *   database "events":    be64(seq) -> stored event (store/format.h), seq gapless from 1
 *   database "meta":      the applied WAL position, record seqs, the last event seq
 *   database "log":       be64(position) -> stream event (store/format.h), gapless from 1
 *   database "streams":   stream id -> le64 version, le64 position of its last event
 *   database "stream_index": stream id || 0x00 || be64(version) -> le64 position
 * Store keys have the seed's shape: "cnerium:response:<op>:<key>", or with a principal
 * scope "cnerium:response:<op>#<principal-hash>:<key>" ('#' cannot occur in an
 * operation name, so the two shapes never collide).
 *
 * Thread-safe: readers run in parallel, writers are serialized by LMDB (also across
 * processes). Every commit is synced to disk before it returns, unless the store was
 * opened with CN_STORE_NOSYNC (the persister: its durability is the WAL's).
 */
#ifndef CN_STORE_STORE_H
#define CN_STORE_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "store/format.h"
#include "store/record.h"

typedef struct cn_store cn_store_t;

/* Store key limit: LMDB's default maximum key size is 511 bytes, and the expiry index
 * prefixes a store key with 8 bytes of expiry time. */
#define CN_STORE_KEY_MAX (511 - 8)
#define CN_OPERATION_MAX 64

/* One record to write, with the events its handler emitted (an encoded event list,
 * store/format.h; NULL for none). */
typedef struct cn_store_put {
    const char *key;
    size_t keylen;
    const cn_record_t *rec;
    const uint8_t *events;
    size_t events_len;
    const uint8_t *appends; /* an encoded list of stream appends; NULL for none */
    size_t appends_len;
    const char *owner; /* a PostgreSQL store: the claim this record ends (store/pg.h) */
} cn_store_put_t;

/* ---- administration (cnerium-admin): LMDB only (-ENOTSUP for a shared store) ---- */

/* Calls cb(key, keylen, record, len, arg) for the stored responses with keys >= from
 * (fromlen 0: from the first), in key order, at most max; cb returns non-zero to stop
 * (a negative value is returned). The record bytes are valid during the call only. */
typedef int (*cn_store_list_cb)(const char *key, size_t keylen, const uint8_t *rec,
                                size_t len, void *arg);
int cn__store_list(cn_store_t *store, const char *from, size_t fromlen, size_t max,
                   cn_store_list_cb cb, void *arg);

/* Deletes the stored response under key and its expiry entry: the key is new again.
 * Returns 0, CN_ENOTFOUND, or an error. */
int cn__store_delete(cn_store_t *store, const char *key, size_t keylen);

/* Copies the whole environment into dir (created), compacted: one read transaction's
 * snapshot, consistent while the server writes. */
int cn__store_backup(cn_store_t *store, const char *dir);

typedef struct cn_store_stats {
    uint64_t responses, events, streams, log_entries;
    uint64_t pages;      /* of the responses database */
    uint64_t map_size;   /* the map */
    uint64_t used_bytes; /* up to the last page in use */
} cn_store_stats_t;
int cn__store_stats(cn_store_t *store, cn_store_stats_t *st);

/* Reads everything once: every stored response decodes and has its expiry entry, events
 * are numbered in order and decode, stream log entries decode. Calls problem (may be
 * NULL) per finding. Sets *checked and *problems; returns 0 (also with problems found)
 * or an error reading. */
typedef void (*cn_store_verify_cb)(const char *what, const void *key, size_t keylen,
                                   void *arg);
int cn__store_verify(cn_store_t *store, uint64_t *checked, uint64_t *problems,
                     cn_store_verify_cb problem, void *arg);

/* Opens a PostgreSQL store (store/pg.h) at url for reading: the events, the streams,
 * the stream log, and the sweep go to the shared database through one connection (one
 * call at a time; a lost connection is reconnected at the next call). Everything else
 * (writes, cn__store_get) is the LMDB store's: the shared store is written by
 * cn__pg_apply and its responses are read by cn__pg_claim. err as for cn__pg_open.
 * Returns 0, CN_ECONFIG, CN_ESTORE, -ENOMEM. */
int cn__store_open_pg(const char *url, cn_store_t **out, char *err, size_t errlen);

/* 1 for a store opened with cn__store_open_pg. */
int cn__store_is_pg(const cn_store_t *s);

/* Opens (creating if needed) the store in directory dir, mapping at most map_size bytes.
 * Returns 0 and *out (close with cn__store_close), or a negative error. */
int cn__store_open(const char *dir, size_t map_size, cn_store_t **out);

/* The same; with CN_STORE_NOSYNC commits are not synced (durability lives in the WAL;
 * cn__store_sync makes everything committed durable: a checkpoint). */
#define CN_STORE_NOSYNC 1
int cn__store_open_flags(const char *dir, size_t map_size, int flags, cn_store_t **out);

/* Forces every committed transaction to disk. */
int cn__store_sync(cn_store_t *store);

/* Starts writing what committed transactions left in the page cache to disk, without
 * waiting (sync_file_range): a later cn__store_sync then has that much less to wait for.
 * Promises nothing about durability. Returns 0 or a negative error. */
int cn__store_writeback(cn_store_t *store);

/* Where the WAL stands in the store: written in the same transaction as the records it
 * applies, so the store and this position never disagree. */
#define CN_STORE_META_WORKERS 64
typedef struct cn_store_meta {
    uint64_t applied_lsn; /* WAL frames below this LSN are applied */
    uint64_t epoch;       /* the server start the seqs belong to */
    uint64_t seqs[CN_STORE_META_WORKERS]; /* per worker: highest record seq applied */
    uint64_t event_seq;   /* the last event's number (0: none yet) */
} cn_store_meta_t;

/* Reads the meta; a store that never had one gives all zeros. */
int cn__store_meta_get(cn_store_t *store, cn_store_meta_t *meta);

/* One encoded record (cn__record_encode's bytes) to write under key, and its events
 * (an encoded list; NULL for none). key NULL: events only. */
typedef struct cn_store_raw_put {
    const char *key;
    size_t keylen;
    const uint8_t *bytes;
    size_t len;
    const uint8_t *events;
    size_t events_len;
    const uint8_t *appends; /* encoded stream appends; NULL for none */
    size_t appends_len;
    int status; /* out: 0 written, or why it was skipped (CN_ECORRUPT, CN_ETOOBIG,
                 * CN_ECONFLICT) */
} cn_store_raw_put_t;

/* Writes n encoded records, their events, their stream appends and meta in one
 * transaction. Events are numbered from meta->event_seq + 1 in order, and
 * meta->event_seq is advanced (also in the store); stream events get the next global
 * positions and stream versions. A record whose appends' expected versions do not hold
 * against everything before it (earlier records of the same call included) is skipped
 * whole with status CN_ECONFLICT; one that does not decode or whose key is too long is
 * skipped with its events (its status says why); the others are written. The outcome
 * depends only on the store's state and the items, so applying the same items again
 * to the same state (WAL recovery) decides the same way. Returns 0, or a negative error
 * when the transaction failed (nothing written, meta unchanged). */
int cn__store_apply(cn_store_t *store, cn_store_raw_put_t *items, size_t n,
                    cn_store_meta_t *meta);

/* Stores an encoded event list on its own, numbered after the store's last event, in
 * one (synced) transaction. Returns 0, CN_ECORRUPT for a list that does not decode, or
 * an error. */
int cn__store_append_events(cn_store_t *store, const uint8_t *events, size_t len);

/* Calls cb(seq, stored event bytes, len, arg) for events from seq `from` on, in order, at
 * most max of them, in one read transaction (the bytes are valid during the call only).
 * cb returning non-zero stops. Returns 0 or an error. */
int cn__store_events_read(cn_store_t *store, uint64_t from, size_t max,
                          int (*cb)(uint64_t seq, const uint8_t *p, size_t len, void *arg),
                          void *arg);

/* The oldest and newest stored event seqs (both 0 when there are none). */
int cn__store_events_bounds(cn_store_t *store, uint64_t *oldest, uint64_t *newest);

/* Deletes the oldest events while more than keep remain (keep 0: no count limit) or they
 * were created before min_created_ms (0: no age limit), at most max in one transaction.
 * Sets *deleted. */
int cn__store_events_prune(cn_store_t *store, uint64_t keep, uint64_t min_created_ms,
                           size_t max, size_t *deleted);

/* The event log's epoch: a random non-zero 64-bit id, made (getrandom) and stored in
 * "meta" by the first caller, the same for every later one and across restarts, and new
 * whenever the store (with its events) is new. Seqs only mean something within one
 * epoch. Returns 0 and *epoch, or a negative error. */
int cn__store_events_epoch(cn_store_t *store, uint64_t *epoch);

/* ---- event streams ---- */

/* A stream's current version (0: absent) in *version. */
int cn__store_stream_version(cn_store_t *store, const char *stream, size_t len,
                             uint64_t *version);

/* Called per stream event read; the views are valid during the call only. Non-zero
 * stops the read. */
typedef int (*cn_log_read_cb)(uint64_t position, const cn_log_view_t *ev, void *arg);

/* Calls cb for up to max events of stream from version `from` (included), forward or
 * backward, in one read transaction. Returns 0 or an error (CN_ECORRUPT for an index
 * that points at a missing or unreadable event). */
int cn__store_stream_read(cn_store_t *store, const char *stream, size_t len, uint64_t from,
                          int backward, size_t max, cn_log_read_cb cb, void *arg);

/* Calls cb for up to max events of the global log from position `from` (included). */
int cn__store_log_read(cn_store_t *store, uint64_t from, size_t max, cn_log_read_cb cb,
                       void *arg);

/* The last position of the global log (0: empty). */
int cn__store_log_head(cn_store_t *store, uint64_t *position);

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

/* Sweeps in transactions of at most batch deletions (never holding the writer long), up
 * to rounds of them or until none are left. Sets *deleted (also on failure). */
int cn__store_sweep_all(cn_store_t *store, uint64_t now_ms, size_t batch, unsigned rounds,
                        size_t *deleted);

/* Number of stored responses, expired or not (for tests and metrics). */
int cn__store_count(cn_store_t *store, size_t *count);

#endif
