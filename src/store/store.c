/*
 * store/store.c - stored responses in LMDB (the only file that includes lmdb.h).
 *
 * Two databases in one environment: "responses" (store key -> record) and "expiry"
 * (be64(expires_ms) || store key -> empty), so the sweep walks expired records in order
 * without scanning live ones. A put replaces the old record and its expiry entry in the
 * same transaction, so the index never points at a record that expires later.
 *
 * A third database, "meta", holds the WAL position the store has applied (and the
 * per-worker record seqs), written in the same transaction as the records.
 *
 * LMDB is opened with full durability (a commit returns once it is on disk), or with
 * CN_STORE_NOSYNC by the persister, whose durability lives in the WAL. Readers run
 * concurrently from any thread (MDB_NOTLS: a read transaction is not tied to a thread's
 * TLS slot); writers are serialized by LMDB itself, across processes too.
 */
#include <errno.h>
#include <pthread.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>

#include <lmdb.h>

#include "cnerium/error.h"
#include "realtime/event.h"
#include "store/pg.h"
#include "store/store.h"
#include "stream/stream.h"
#include "support/bytes.h"
#include "support/clock.h"
#include "support/log.h"

struct cn_store {
    /* A PostgreSQL store: the reading functions and the sweep go to it, one call at a
     * time (one connection); env is NULL then. */
    cn_pg_t *pg;
    pthread_mutex_t pg_mu;
    MDB_env *env;
    MDB_dbi responses;
    MDB_dbi expiry;
    MDB_dbi meta;
    MDB_dbi events;
    MDB_dbi log;
    MDB_dbi streams;
    MDB_dbi stream_index;
};

static const char meta_key[] = "cnerium:meta:wal";
#define META_LEN_V1 (8 + 8 + 8 * CN_STORE_META_WORKERS)
#define META_LEN (META_LEN_V1 + 8)

static const char prefix[] = "cnerium:response:";

/* Maps an LMDB result to our error space, logging unexpected ones once here. */
static int
lmdb_error(int rc, const char *what)
{
    if (rc == MDB_NOTFOUND)
        return CN_ENOTFOUND;
    if (rc == MDB_MAP_FULL)
        return CN_EMAPFULL; /* the map size, not the disk: told apart from ENOSPC */
    if (rc > 0)
        return -rc; /* LMDB passes errno values through */
    cn_log_error("lmdb %s: %s", what, mdb_strerror(rc));
    return CN_ESTORE;
}

static int
mkdir_p(const char *dir)
{
    char path[1024];
    size_t n = strlen(dir);

    if (n == 0 || n >= sizeof(path))
        return -ENAMETOOLONG;
    memcpy(path, dir, n + 1);
    for (char *p = path + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(path, 0755) && errno != EEXIST)
            return -errno;
        *p = '/';
    }
    if (mkdir(path, 0755) && errno != EEXIST)
        return -errno;
    return 0;
}

int
cn__store_open(const char *dir, size_t map_size, cn_store_t **out)
{
    return cn__store_open_flags(dir, map_size, 0, out);
}

int
cn__store_open_flags(const char *dir, size_t map_size, int flags, cn_store_t **out)
{
    cn_store_t *s = calloc(1, sizeof(*s));
    MDB_txn *txn = NULL;
    int rc;

    if (!s)
        return -ENOMEM;
    if ((rc = mkdir_p(dir)))
        goto fail;
    if ((rc = mdb_env_create(&s->env))) {
        rc = lmdb_error(rc, "env_create");
        goto fail;
    }
    /* Readers: every request thread and waiter thread of every worker may read at once. */
    if ((rc = mdb_env_set_maxdbs(s->env, 8)) || (rc = mdb_env_set_mapsize(s->env, map_size)) ||
        (rc = mdb_env_set_maxreaders(s->env, 4096)) ||
        (rc = mdb_env_open(s->env, dir,
                           MDB_NOTLS | (flags & CN_STORE_NOSYNC ? MDB_NOSYNC : 0), 0644))) {
        rc = lmdb_error(rc, "env_open");
        goto fail;
    }
    if ((rc = mdb_txn_begin(s->env, NULL, 0, &txn)) ||
        (rc = mdb_dbi_open(txn, "responses", MDB_CREATE, &s->responses)) ||
        (rc = mdb_dbi_open(txn, "expiry", MDB_CREATE, &s->expiry)) ||
        (rc = mdb_dbi_open(txn, "meta", MDB_CREATE, &s->meta)) ||
        (rc = mdb_dbi_open(txn, "events", MDB_CREATE, &s->events)) ||
        (rc = mdb_dbi_open(txn, "log", MDB_CREATE, &s->log)) ||
        (rc = mdb_dbi_open(txn, "streams", MDB_CREATE, &s->streams)) ||
        (rc = mdb_dbi_open(txn, "stream_index", MDB_CREATE, &s->stream_index)) ||
        (rc = mdb_txn_commit(txn))) {
        txn = NULL; /* aborted or committed either way by now, see below */
        rc = lmdb_error(rc, "open databases");
        goto fail;
    }
    *out = s;
    return 0;

fail:
    /* mdb_txn_commit frees the txn even on failure; an earlier failure left it open. */
    if (txn)
        mdb_txn_abort(txn);
    cn__store_close(s);
    return rc;
}

void
cn__store_close(cn_store_t *s)
{
    if (!s)
        return;
    if (s->pg) {
        cn__pg_close(s->pg);
        pthread_mutex_destroy(&s->pg_mu);
    }
    if (s->env)
        mdb_env_close(s->env);
    free(s);
}

int
cn__store_key(char *out, size_t cap, const char *operation, const char *principal_hex,
              const char *key, size_t keylen, size_t *outlen)
{
    size_t oplen = strlen(operation), plen = principal_hex ? strlen(principal_hex) : 0;
    size_t need = sizeof(prefix) - 1 + oplen + (plen ? 1 + plen : 0) + 1 + keylen;
    char *p = out;

    if (need > CN_STORE_KEY_MAX || need + 1 > cap)
        return CN_ETOOBIG;
    memcpy(p, prefix, sizeof(prefix) - 1);
    p += sizeof(prefix) - 1;
    memcpy(p, operation, oplen);
    p += oplen;
    if (plen) {
        *p++ = '#';
        memcpy(p, principal_hex, plen);
        p += plen;
    }
    *p++ = ':';
    memcpy(p, key, keylen);
    p += keylen;
    *p = '\0';
    *outlen = need;
    return 0;
}

int
cn__store_get(cn_store_t *s, const char *key, size_t keylen, uint64_t now_ms,
              cn_record_t *rec, void **buf)
{
    MDB_txn *txn;
    MDB_val k = {keylen, (void *)key}, v;
    cn_record_t r;
    void *copy;
    int rc;

    if (s->pg)
        return -ENOTSUP; /* a shared store is read by its claim (store/pg.h) */
    if ((rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn)))
        return lmdb_error(rc, "begin read");
    rc = mdb_get(txn, s->responses, &k, &v);
    if (rc) {
        mdb_txn_abort(txn);
        return lmdb_error(rc, "get");
    }
    /* Copy out: LMDB's bytes are valid only while the read transaction lives. */
    copy = malloc(v.mv_size ? v.mv_size : 1);
    if (copy)
        memcpy(copy, v.mv_data, v.mv_size);
    mdb_txn_abort(txn);
    if (!copy)
        return -ENOMEM;
    if ((rc = cn__record_decode(copy, v.mv_size, &r))) {
        cn_log_error("stored response %.*s is unreadable: %s", (int)keylen, key,
                     cn_strerror(rc));
        free(copy);
        return rc;
    }
    if (r.expires_ms <= now_ms) {
        free(copy);
        return CN_ENOTFOUND;
    }
    *rec = r;
    *buf = copy;
    return 0;
}

static void
expiry_key(uint8_t *out, uint64_t expires, const char *key, size_t keylen)
{
    cn__put_be64(out, expires);
    memcpy(out + 8, key, keylen);
}

/* Begins a write transaction with a cursor on dbi, for a bounded walk. */
static int
begin_walk(cn_store_t *s, MDB_dbi dbi, MDB_txn **txn, MDB_cursor **cur, const char *what)
{
    int rc;

    if ((rc = mdb_txn_begin(s->env, NULL, 0, txn)))
        return lmdb_error(rc, what);
    if ((rc = mdb_cursor_open(*txn, dbi, cur))) {
        mdb_txn_abort(*txn);
        return lmdb_error(rc, what);
    }
    return 0;
}

/* Ends a walk begun by begin_walk: commits when it stopped cleanly (rc 0, or
 * MDB_NOTFOUND: it ran off the end), aborts otherwise. */
static int
end_walk(MDB_txn *txn, MDB_cursor *cur, int rc, const char *what)
{
    mdb_cursor_close(cur);
    if (rc && rc != MDB_NOTFOUND) {
        mdb_txn_abort(txn);
        return lmdb_error(rc, what);
    }
    if ((rc = mdb_txn_commit(txn)))
        return lmdb_error(rc, what);
    return 0;
}

/* ---- writing stored responses ----
 *
 * A write transaction collects its stored responses and writes them last, sorted by key
 * (nothing else it does reads "responses" or "expiry", so the order of these writes
 * against its events and stream appends does not matter). One cursor per database then
 * finds each next key on the leaf page where the previous one went instead of descending
 * from the root, a put that finds its key absent needs no lookup before it, and a key
 * given several records in one transaction is written once, with the last of them. */

/* One stored response to write: encoded bytes, or a record to encode in place. */
typedef struct response_put {
    const char *key;
    size_t keylen;
    const uint8_t *bytes; /* NULL: encode rec */
    size_t len;
    const cn_record_t *rec;
    uint64_t expires;
    size_t order; /* position in the transaction: the later record for a key wins */
} response_put_t;

/* A change of the expiry index: the entry be64(expires) || key added or removed. */
typedef struct expiry_change {
    uint64_t expires;
    const char *key;
    size_t keylen;
    int add;
} expiry_change_t;

typedef struct response_writes {
    response_put_t *puts;
    size_t n, cap;
} response_writes_t;

static int
response_writes_add(response_writes_t *w, const char *key, size_t keylen, const uint8_t *bytes,
                    size_t len, const cn_record_t *rec)
{
    if (w->n == w->cap) {
        size_t cap = w->cap ? w->cap * 2 : 64;
        response_put_t *np = realloc(w->puts, cap * sizeof(*np));

        if (!np)
            return -ENOMEM;
        w->puts = np;
        w->cap = cap;
    }
    if (!bytes)
        len = cn__record_encoded_size(rec);
    w->puts[w->n] = (response_put_t){key, keylen, bytes, len, rec, rec->expires_ms, w->n};
    w->n++;
    return 0;
}

/* LMDB's default key order (memcmp over the shorter length, then the shorter first). */
static int
key_cmp(const char *a, size_t alen, const char *b, size_t blen)
{
    int d = memcmp(a, b, alen < blen ? alen : blen);

    return d ? d : (alen > blen) - (alen < blen);
}

static int
response_put_cmp(const void *x, const void *y)
{
    const response_put_t *a = x, *b = y;
    int d = key_cmp(a->key, a->keylen, b->key, b->keylen);

    return d ? d : (a->order > b->order) - (a->order < b->order);
}

/* The order of the expiry index (be64(expires) || key); for the same entry a removal
 * comes before an addition, as in the transaction (see write_responses). */
static int
expiry_change_cmp(const void *x, const void *y)
{
    const expiry_change_t *a = x, *b = y;
    int d;

    if (a->expires != b->expires)
        return a->expires < b->expires ? -1 : 1;
    if ((d = key_cmp(a->key, a->keylen, b->key, b->keylen)))
        return d;
    return a->add - b->add;
}

/* Applies the expiry index changes, sorted, through one cursor. */
static int
write_expiry(cn_store_t *s, MDB_txn *txn, expiry_change_t *ch, size_t n)
{
    uint8_t ekey[8 + CN_STORE_KEY_MAX];
    MDB_cursor *cur;
    MDB_val ek, v, empty = {0, NULL};
    int rc = 0;

    qsort(ch, n, sizeof(*ch), expiry_change_cmp);
    if ((rc = mdb_cursor_open(txn, s->expiry, &cur)))
        return lmdb_error(rc, "cursor expiry");
    for (size_t i = 0; i < n && !rc; i++) {
        expiry_key(ekey, ch[i].expires, ch[i].key, ch[i].keylen);
        ek = (MDB_val){8 + ch[i].keylen, ekey};
        if (ch[i].add) {
            if ((rc = mdb_cursor_put(cur, &ek, &empty, 0)))
                rc = lmdb_error(rc, "put expiry");
        } else if ((rc = mdb_cursor_get(cur, &ek, &v, MDB_SET)) == 0) {
            if ((rc = mdb_cursor_del(cur, 0)))
                rc = lmdb_error(rc, "del expiry");
        } else {
            rc = rc == MDB_NOTFOUND ? 0 : lmdb_error(rc, "get expiry");
        }
    }
    mdb_cursor_close(cur);
    return rc;
}

/* Writes the collected responses inside txn, each replacing any older record under its
 * key and that record's expiry entry, exactly as writing them one by one in their order
 * would: for each key only its last record is written, and the index loses the entry of
 * the record found in the store and of every earlier record of the key in w (each would
 * have been added, then removed by the next one), then gains the last record's entry.
 * Sorts w->puts. */
static int
write_responses(cn_store_t *s, MDB_txn *txn, response_writes_t *w)
{
    expiry_change_t *ch;
    MDB_cursor *cur = NULL;
    size_t nch = 0, written;
    int rc = 0;

    if (!w->n)
        return 0;
    /* Each put adds one change; a put that replaces a record in the store, one more. */
    if (!(ch = malloc(2 * w->n * sizeof(*ch))))
        return -ENOMEM;
    qsort(w->puts, w->n, sizeof(*w->puts), response_put_cmp);
    if ((rc = mdb_cursor_open(txn, s->responses, &cur))) {
        rc = lmdb_error(rc, "cursor responses");
        goto out;
    }
    for (size_t i = 0; i < w->n; i++) {
        const response_put_t *p = &w->puts[i], *next = i + 1 < w->n ? p + 1 : NULL;
        MDB_val k = {p->keylen, (void *)p->key}, v = {p->len, NULL};
        cn_record_t old;

        if (next && !key_cmp(p->key, p->keylen, next->key, next->keylen)) {
            ch[nch++] = (expiry_change_t){p->expires, p->key, p->keylen, 0};
            continue; /* a later record of this transaction replaces it */
        }
        /* One descent (none on the same page) finds the key absent and reserves the
         * space, or finds the record it replaces. MDB_RESERVE: the bytes are written
         * straight into the page. */
        rc = mdb_cursor_put(cur, &k, &v, MDB_NOOVERWRITE | MDB_RESERVE);
        if (rc == MDB_KEYEXIST) {
            /* An old record that does not decode leaves its index entry to the sweep,
             * which checks the record before deleting it. */
            if (cn__record_decode(v.mv_data, v.mv_size, &old) == 0)
                ch[nch++] = (expiry_change_t){old.expires_ms, p->key, p->keylen, 0};
            v = (MDB_val){p->len, NULL};
            rc = mdb_cursor_put(cur, &k, &v, MDB_CURRENT | MDB_RESERVE);
        }
        if (rc) {
            rc = lmdb_error(rc, "put");
            goto out;
        }
        if (p->bytes)
            memcpy(v.mv_data, p->bytes, p->len);
        else if ((rc = cn__record_encode(p->rec, v.mv_data, v.mv_size, &written)))
            goto out;
        ch[nch++] = (expiry_change_t){p->expires, p->key, p->keylen, 1};
    }
    mdb_cursor_close(cur);
    cur = NULL;
    rc = write_expiry(s, txn, ch, nch);
out:
    if (cur)
        mdb_cursor_close(cur);
    free(ch);
    return rc;
}

/* Reads the meta inside txn; absent gives all zeros. */
static int
meta_read(cn_store_t *s, MDB_txn *txn, cn_store_meta_t *meta)
{
    MDB_val k = {sizeof(meta_key) - 1, (void *)meta_key}, v;
    int rc;

    memset(meta, 0, sizeof(*meta));
    rc = mdb_get(txn, s->meta, &k, &v);
    if (rc == MDB_NOTFOUND)
        return 0;
    if (rc)
        return lmdb_error(rc, "get meta");
    if (v.mv_size != META_LEN && v.mv_size != META_LEN_V1)
        return CN_ECORRUPT;
    const uint8_t *p = v.mv_data;
    meta->applied_lsn = cn__get_le64(p);
    meta->epoch = cn__get_le64(p + 8);
    for (int i = 0; i < CN_STORE_META_WORKERS; i++)
        meta->seqs[i] = cn__get_le64(p + 16 + 8 * i);
    if (v.mv_size == META_LEN)
        meta->event_seq = cn__get_le64(p + META_LEN_V1);
    return 0;
}

int
cn__store_meta_get(cn_store_t *s, cn_store_meta_t *meta)
{
    MDB_txn *txn;
    int rc;

    memset(meta, 0, sizeof(*meta));
    if ((rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn)))
        return lmdb_error(rc, "begin read");
    rc = meta_read(s, txn, meta);
    mdb_txn_abort(txn);
    return rc;
}

/* Stores the events of an encoded list under seqs after *seq. A list that does not decode
 * stores nothing and returns CN_ECORRUPT (the caller skips the item). */
static int
put_events(cn_store_t *s, MDB_txn *txn, const uint8_t *list, size_t len, uint64_t now,
           uint64_t *seq)
{
    const uint8_t *cur, *end = list + len;
    long count = cn__events_begin(list, len, &cur);
    cn_event_view_t ev;
    uint64_t next = *seq;
    int rc;

    if (count < 0)
        return CN_ECORRUPT;
    /* Validate the whole list first: all of its events or none. */
    for (long i = 0; i < count; i++) {
        if (cn__events_next(&cur, end, &ev))
            return CN_ECORRUPT;
    }
    if (cur != end)
        return CN_ECORRUPT;
    cn__events_begin(list, len, &cur);
    for (long i = 0; i < count; i++) {
        uint8_t kb[8];
        MDB_val k = {8, kb}, v;

        cn__events_next(&cur, end, &ev);
        ev.created_ms = now;
        ev.merged = 0;
        cn__put_be64(kb, ++next);
        v = (MDB_val){cn__event_stored_size(&ev), NULL};
        if ((rc = mdb_put(txn, s->events, &k, &v, MDB_RESERVE | MDB_APPEND)))
            return lmdb_error(rc, "put event");
        cn__event_stored_encode(&ev, v.mv_data);
    }
    *seq = next;
    return 0;
}

static int
put_meta(cn_store_t *s, MDB_txn *txn, const cn_store_meta_t *meta)
{
    MDB_val k = {sizeof(meta_key) - 1, (void *)meta_key}, v = {META_LEN, NULL};
    int rc;

    if ((rc = mdb_put(txn, s->meta, &k, &v, MDB_RESERVE)))
        return lmdb_error(rc, "put meta");
    cn__put_le64(v.mv_data, meta->applied_lsn);
    cn__put_le64((uint8_t *)v.mv_data + 8, meta->epoch);
    for (int i = 0; i < CN_STORE_META_WORKERS; i++)
        cn__put_le64((uint8_t *)v.mv_data + 16 + 8 * i, meta->seqs[i]);
    cn__put_le64((uint8_t *)v.mv_data + META_LEN_V1, meta->event_seq);
    return 0;
}

/* ---- event streams ---- */

#define STREAM_VALUE_LEN 16 /* le64 version, le64 position of the last event */

static int
log_head_txn(cn_store_t *s, MDB_txn *txn, uint64_t *pos)
{
    MDB_cursor *cur;
    MDB_val k, v;
    int rc;

    *pos = 0;
    if ((rc = mdb_cursor_open(txn, s->log, &cur)))
        return lmdb_error(rc, "cursor log");
    rc = mdb_cursor_get(cur, &k, &v, MDB_LAST);
    mdb_cursor_close(cur);
    if (rc == MDB_NOTFOUND)
        return 0;
    if (rc)
        return lmdb_error(rc, "last log");
    if (k.mv_size != 8)
        return CN_ECORRUPT;
    *pos = cn__get_be64(k.mv_data);
    return 0;
}

static int
stream_version_txn(cn_store_t *s, MDB_txn *txn, const char *stream, size_t len,
                   uint64_t *version)
{
    MDB_val k = {len, (void *)stream}, v;
    int rc = mdb_get(txn, s->streams, &k, &v);

    *version = 0;
    if (rc == MDB_NOTFOUND)
        return 0;
    if (rc)
        return lmdb_error(rc, "get stream");
    if (v.mv_size != STREAM_VALUE_LEN)
        return CN_ECORRUPT;
    *version = cn__get_le64(v.mv_data);
    return 0;
}

typedef struct {
    cn_store_t *s;
    MDB_txn *txn;
} txn_version_t;

static int
txn_version(const char *stream, size_t len, uint64_t *version, void *arg)
{
    txn_version_t *t = arg;

    return stream_version_txn(t->s, t->txn, stream, len, version);
}

/* The list's expected versions against the store as txn sees it (cn__appends_check). */
static int
check_appends(cn_store_t *s, MDB_txn *txn, const uint8_t *list, size_t len)
{
    txn_version_t t = {s, txn};

    return cn__appends_check(list, len, txn_version, &t);
}

/* Stores the realtime event of a published append in room (seq after *seq)
 * (cn__append_event_payload). */
static int
publish_append(cn_store_t *s, MDB_txn *txn, const cn_append_view_t *a, unsigned room,
               uint64_t version, uint64_t position, uint64_t now, uint64_t *seq)
{
    size_t cap = cn__append_event_payload_cap(a);
    uint8_t stack[2048], *buf = cap <= sizeof(stack) ? stack : malloc(cap), kb[8];
    cn_event_view_t ev = {0};
    MDB_val k = {8, kb}, v;
    int rc;

    if (!buf)
        return -ENOMEM;
    ev = (cn_event_view_t){.type = "event", .type_len = 5, .room = a->rooms[room],
                           .room_len = a->room_lens[room], .payload = (const char *)buf,
                           .payload_len = cn__append_event_payload(a, version, position, buf),
                           .created_ms = now, .merged = 1};
    cn__put_be64(kb, ++*seq);
    v = (MDB_val){cn__event_stored_size(&ev), NULL};
    if ((rc = mdb_put(txn, s->events, &k, &v, MDB_RESERVE | MDB_APPEND)))
        rc = lmdb_error(rc, "put event");
    else
        cn__event_stored_encode(&ev, v.mv_data);
    if (buf != stack)
        free(buf);
    return rc;
}

/* Writes a list check_appends accepted: each append becomes the next version of its
 * stream and the next position of the log (after *pos), and its published copies the
 * next events (after *seq). */
static int
put_appends(cn_store_t *s, MDB_txn *txn, const uint8_t *list, size_t len, uint64_t now,
            uint64_t *pos, uint64_t *seq)
{
    const uint8_t *cur, *end = list + len;
    long count = cn__appends_begin(list, len, &cur);
    int rc;

    for (long i = 0; i < count; i++) {
        uint8_t kb[8], ib[CN_STREAM_ID_MAX + 1 + 8], sv[STREAM_VALUE_LEN], pb[8];
        cn_append_view_t a;
        cn_log_view_t e;
        uint64_t version;
        MDB_val k, v;

        cn__appends_next(&cur, end, &a); /* decoded once by check_appends */
        if ((rc = stream_version_txn(s, txn, a.stream, a.stream_len, &version)))
            return rc;
        version++;
        ++*pos;
        e = (cn_log_view_t){now, version, a.stream, a.stream_len, a.type, a.type_len,
                            a.data, a.data_len};
        cn__put_be64(kb, *pos);
        k = (MDB_val){8, kb};
        v = (MDB_val){cn__log_entry_size(&e), NULL};
        if ((rc = mdb_put(txn, s->log, &k, &v, MDB_RESERVE | MDB_APPEND)))
            return lmdb_error(rc, "put log");
        cn__log_entry_encode(&e, v.mv_data);
        memcpy(ib, a.stream, a.stream_len);
        ib[a.stream_len] = 0;
        cn__put_be64(ib + a.stream_len + 1, version);
        cn__put_le64(pb, *pos);
        k = (MDB_val){a.stream_len + 9, ib};
        v = (MDB_val){8, pb};
        if ((rc = mdb_put(txn, s->stream_index, &k, &v, 0)))
            return lmdb_error(rc, "put stream index");
        cn__put_le64(sv, version);
        cn__put_le64(sv + 8, *pos);
        k = (MDB_val){a.stream_len, (void *)a.stream};
        v = (MDB_val){STREAM_VALUE_LEN, sv};
        if ((rc = mdb_put(txn, s->streams, &k, &v, 0)))
            return lmdb_error(rc, "put stream");
        for (unsigned r = 0; r < a.nrooms; r++) {
            if ((rc = publish_append(s, txn, &a, r, version, *pos, now, seq)))
                return rc;
        }
    }
    return 0;
}

static int
lmdb_stream_version(cn_store_t *s, const char *stream, size_t len, uint64_t *version)
{
    MDB_txn *txn;
    int rc;

    if ((rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn)))
        return lmdb_error(rc, "begin read");
    rc = stream_version_txn(s, txn, stream, len, version);
    mdb_txn_abort(txn);
    return rc;
}

static int
lmdb_log_head(cn_store_t *s, uint64_t *position)
{
    MDB_txn *txn;
    int rc;

    if ((rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn)))
        return lmdb_error(rc, "begin read");
    rc = log_head_txn(s, txn, position);
    mdb_txn_abort(txn);
    return rc;
}

/* Reads the log entry at position inside txn and hands it to cb. Returns 0, 1 when cb
 * stopped, or an error. */
static int
log_entry_cb(cn_store_t *s, MDB_txn *txn, uint64_t position, cn_log_read_cb cb, void *arg)
{
    uint8_t kb[8];
    MDB_val k = {8, kb}, v;
    cn_log_view_t e;
    int rc;

    cn__put_be64(kb, position);
    if ((rc = mdb_get(txn, s->log, &k, &v)))
        return rc == MDB_NOTFOUND ? CN_ECORRUPT : lmdb_error(rc, "get log");
    if (cn__log_entry_decode(v.mv_data, v.mv_size, &e))
        return CN_ECORRUPT;
    return cb(position, &e, arg) ? 1 : 0;
}

static int
lmdb_stream_read(cn_store_t *s, const char *stream, size_t len, uint64_t from,
                      int backward, size_t max, cn_log_read_cb cb, void *arg)
{
    uint8_t kb[CN_STREAM_ID_MAX + 1 + 8];
    MDB_txn *txn;
    MDB_cursor *cur;
    MDB_val k, v;
    size_t count = 0;
    int lrc, rc = 0;

    if (len == 0 || len > CN_STREAM_ID_MAX)
        return -EINVAL;
    memcpy(kb, stream, len);
    kb[len] = 0;
    cn__put_be64(kb + len + 1, from);
    if ((lrc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn)))
        return lmdb_error(lrc, "begin read");
    if ((lrc = mdb_cursor_open(txn, s->stream_index, &cur))) {
        mdb_txn_abort(txn);
        return lmdb_error(lrc, "cursor");
    }
    k = (MDB_val){len + 9, kb};
    lrc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    if (backward) {
        /* SET_RANGE lands on the first key >= from: step back unless it is from itself. */
        if (lrc == MDB_NOTFOUND)
            lrc = mdb_cursor_get(cur, &k, &v, MDB_LAST);
        else if (lrc == 0 && !(k.mv_size == len + 9 && !memcmp(k.mv_data, kb, len + 9)))
            lrc = mdb_cursor_get(cur, &k, &v, MDB_PREV);
    }
    while (lrc == 0 && count < max) {
        if (k.mv_size != len + 9 || memcmp(k.mv_data, kb, len + 1))
            break; /* another stream */
        if (v.mv_size != 8) {
            rc = CN_ECORRUPT;
            break;
        }
        if ((rc = log_entry_cb(s, txn, cn__get_le64(v.mv_data), cb, arg)))
            break;
        count++;
        lrc = mdb_cursor_get(cur, &k, &v, backward ? MDB_PREV : MDB_NEXT);
    }
    mdb_cursor_close(cur);
    mdb_txn_abort(txn);
    if (rc == 1)
        return 0; /* the callback stopped */
    if (rc)
        return rc;
    return lrc && lrc != MDB_NOTFOUND ? lmdb_error(lrc, "read stream") : 0;
}

static int
lmdb_log_read(cn_store_t *s, uint64_t from, size_t max, cn_log_read_cb cb, void *arg)
{
    uint8_t kb[8];
    MDB_val k = {8, kb}, v;
    MDB_txn *txn;
    MDB_cursor *cur;
    size_t count = 0;
    int lrc, rc = 0;

    cn__put_be64(kb, from);
    if ((lrc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn)))
        return lmdb_error(lrc, "begin read");
    if ((lrc = mdb_cursor_open(txn, s->log, &cur))) {
        mdb_txn_abort(txn);
        return lmdb_error(lrc, "cursor");
    }
    lrc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    while (lrc == 0 && count < max) {
        cn_log_view_t e;
        if (k.mv_size != 8 || cn__log_entry_decode(v.mv_data, v.mv_size, &e)) {
            rc = CN_ECORRUPT;
            break;
        }
        if (cb(cn__get_be64(k.mv_data), &e, arg))
            break;
        count++;
        lrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    }
    mdb_cursor_close(cur);
    mdb_txn_abort(txn);
    if (rc)
        return rc;
    return lrc && lrc != MDB_NOTFOUND ? lmdb_error(lrc, "read log") : 0;
}

int
cn__store_apply(cn_store_t *s, cn_store_raw_put_t *items, size_t n, cn_store_meta_t *meta)
{
    uint64_t now = cn__clock_wall_ms(), seq = meta->event_seq, pos = 0;
    response_writes_t w = {0};
    cn_record_t *recs = NULL;
    int have_pos = 0;
    MDB_txn *txn;
    int rc;

    /* The decoded views the response writes point at, one per item. */
    if (n && !(recs = malloc(n * sizeof(*recs))))
        return -ENOMEM;
    if ((rc = mdb_txn_begin(s->env, NULL, 0, &txn))) {
        free(recs);
        return lmdb_error(rc, "begin write");
    }
    for (size_t i = 0; i < n; i++) {
        cn_store_raw_put_t *it = &items[i];

        if (it->key) {
            if (it->keylen > CN_STORE_KEY_MAX) {
                it->status = CN_ETOOBIG;
                continue;
            }
            if ((it->status = cn__record_decode(it->bytes, it->len, &recs[i])))
                continue;
        }
        /* Expected versions first: a record that conflicts writes nothing at all. */
        if (it->appends) {
            if (!have_pos && (rc = log_head_txn(s, txn, &pos)))
                goto abort;
            have_pos = 1;
            if ((it->status = check_appends(s, txn, it->appends, it->appends_len))) {
                if (it->status != CN_ECORRUPT && it->status != CN_ECONFLICT) {
                    rc = it->status;
                    goto abort;
                }
                continue;
            }
        }
        if (it->events && (it->status = put_events(s, txn, it->events, it->events_len, now,
                                                   &seq))) {
            if (it->status != CN_ECORRUPT) {
                rc = it->status;
                goto abort;
            }
            continue;
        }
        if (it->appends &&
            (rc = put_appends(s, txn, it->appends, it->appends_len, now, &pos, &seq)))
            goto abort;
        if (it->key &&
            (rc = response_writes_add(&w, it->key, it->keylen, it->bytes, it->len, &recs[i])))
            goto abort;
    }
    if ((rc = write_responses(s, txn, &w)))
        goto abort;
    {
        cn_store_meta_t next = *meta;
        next.event_seq = seq;
        if ((rc = put_meta(s, txn, &next)))
            goto abort;
        rc = mdb_txn_commit(txn);
        free(w.puts);
        free(recs);
        if (rc)
            return lmdb_error(rc, "commit");
        *meta = next; /* only once it is stored */
    }
    return 0;

abort:
    mdb_txn_abort(txn);
    free(w.puts);
    free(recs);
    return rc;
}

int
cn__store_append_events(cn_store_t *s, const uint8_t *events, size_t len)
{
    cn_store_meta_t meta;
    MDB_txn *txn;
    int rc;

    if ((rc = mdb_txn_begin(s->env, NULL, 0, &txn)))
        return lmdb_error(rc, "begin write");
    if ((rc = meta_read(s, txn, &meta)) ||
        (rc = put_events(s, txn, events, len, cn__clock_wall_ms(), &meta.event_seq)) ||
        (rc = put_meta(s, txn, &meta))) {
        mdb_txn_abort(txn);
        return rc;
    }
    if ((rc = mdb_txn_commit(txn)))
        return lmdb_error(rc, "commit");
    return 0;
}

static int
lmdb_events_read(cn_store_t *s, uint64_t from, size_t max,
                      int (*cb)(uint64_t seq, const uint8_t *p, size_t len, void *arg), void *arg)
{
    uint8_t kb[8];
    MDB_val k = {8, kb}, v;
    MDB_txn *txn;
    MDB_cursor *cur;
    size_t count = 0;
    int rc;

    cn__put_be64(kb, from);
    if ((rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn)))
        return lmdb_error(rc, "begin read");
    if ((rc = mdb_cursor_open(txn, s->events, &cur))) {
        mdb_txn_abort(txn);
        return lmdb_error(rc, "cursor");
    }
    rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    while (rc == 0 && count < max) {
        if (k.mv_size != 8 || cb(cn__get_be64(k.mv_data), v.mv_data, v.mv_size, arg))
            break;
        count++;
        rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    }
    mdb_cursor_close(cur);
    mdb_txn_abort(txn);
    return rc && rc != MDB_NOTFOUND ? lmdb_error(rc, "read events") : 0;
}

static int
lmdb_events_bounds(cn_store_t *s, uint64_t *oldest, uint64_t *newest)
{
    MDB_txn *txn;
    MDB_cursor *cur;
    MDB_val k, v;
    int rc;

    *oldest = *newest = 0;
    if ((rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn)))
        return lmdb_error(rc, "begin read");
    if ((rc = mdb_cursor_open(txn, s->events, &cur))) {
        mdb_txn_abort(txn);
        return lmdb_error(rc, "cursor");
    }
    if (mdb_cursor_get(cur, &k, &v, MDB_FIRST) == 0 && k.mv_size == 8)
        *oldest = cn__get_be64(k.mv_data);
    if (mdb_cursor_get(cur, &k, &v, MDB_LAST) == 0 && k.mv_size == 8)
        *newest = cn__get_be64(k.mv_data);
    mdb_cursor_close(cur);
    mdb_txn_abort(txn);
    return 0;
}

static int
lmdb_events_prune(cn_store_t *s, uint64_t keep, uint64_t min_created_ms, size_t max,
                       size_t *deleted)
{
    MDB_txn *txn;
    MDB_cursor *cur;
    MDB_val k, v;
    MDB_stat st;
    size_t count = 0;
    uint64_t entries;
    int rc;

    *deleted = 0;
    if ((rc = begin_walk(s, s->events, &txn, &cur, "prune events")))
        return rc;
    if ((rc = mdb_stat(txn, s->events, &st)))
        return end_walk(txn, cur, rc, "prune events");
    entries = st.ms_entries;
    rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
    while (rc == 0 && count < max) {
        cn_event_view_t ev;
        int too_many = keep && entries - count > keep;
        /* An event that does not decode is pruned as old: it must not stall retention. */
        int too_old = min_created_ms && (cn__event_stored_decode(v.mv_data, v.mv_size, &ev) ||
                                         ev.created_ms < min_created_ms);
        if (!too_many && !too_old)
            break;
        if ((rc = mdb_cursor_del(cur, 0)))
            break;
        count++;
        rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    }
    if ((rc = end_walk(txn, cur, rc, "prune events")))
        return rc;
    *deleted = count;
    return 0;
}

int
cn__store_writeback(cn_store_t *s)
{
    int fd, rc;

    if ((rc = mdb_env_get_fd(s->env, &fd)))
        return lmdb_error(rc, "get fd");
    return sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE) ? -errno : 0;
}

int
cn__store_sync(cn_store_t *s)
{
    int rc = mdb_env_sync(s->env, 1);

    return rc ? lmdb_error(rc, "sync") : 0;
}

int
cn__store_put(cn_store_t *s, const cn_store_put_t *items, size_t n)
{
    response_writes_t w = {0};
    MDB_txn *txn;
    int rc;

    if ((rc = mdb_txn_begin(s->env, NULL, 0, &txn)))
        return lmdb_error(rc, "begin write");
    for (size_t i = 0; i < n; i++) {
        const cn_store_put_t *it = &items[i];

        if (it->keylen > CN_STORE_KEY_MAX) {
            rc = CN_ETOOBIG;
            goto abort;
        }
        if (it->appends && (rc = check_appends(s, txn, it->appends, it->appends_len)))
            goto abort;
        if ((rc = response_writes_add(&w, it->key, it->keylen, NULL, 0, it->rec)))
            goto abort;
        if (it->events || it->appends) {
            cn_store_meta_t meta;
            uint64_t pos;
            if ((rc = meta_read(s, txn, &meta)))
                goto abort;
            if (it->events && (rc = put_events(s, txn, it->events, it->events_len,
                                               cn__clock_wall_ms(), &meta.event_seq)))
                goto abort;
            if (it->appends &&
                ((rc = log_head_txn(s, txn, &pos)) ||
                 (rc = put_appends(s, txn, it->appends, it->appends_len, cn__clock_wall_ms(),
                                   &pos, &meta.event_seq))))
                goto abort;
            if ((rc = put_meta(s, txn, &meta)))
                goto abort;
        }
    }
    if ((rc = write_responses(s, txn, &w)))
        goto abort;
    free(w.puts);
    if ((rc = mdb_txn_commit(txn)))
        return lmdb_error(rc, "commit");
    return 0;

abort:
    mdb_txn_abort(txn);
    free(w.puts);
    return rc;
}

static int
lmdb_sweep(cn_store_t *s, uint64_t now_ms, size_t max, size_t *deleted)
{
    MDB_txn *txn;
    MDB_cursor *cur;
    MDB_val ek, ev, v;
    cn_record_t rec;
    size_t count = 0;
    int rc;

    if ((rc = begin_walk(s, s->expiry, &txn, &cur, "sweep")))
        return rc;
    rc = mdb_cursor_get(cur, &ek, &ev, MDB_FIRST);
    while (rc == 0 && count < max) {
        MDB_val k;

        if (ek.mv_size < 8)
            break; /* not ours; stop rather than guess */
        if (cn__get_be64(ek.mv_data) > now_ms)
            break;
        k = (MDB_val){ek.mv_size - 8, (uint8_t *)ek.mv_data + 8};
        /* Delete the record only if it really expired: an index entry left behind by a
         * record that could not be decoded when it was replaced must not take the live
         * record with it. */
        rc = mdb_get(txn, s->responses, &k, &v);
        if (rc == 0 && (cn__record_decode(v.mv_data, v.mv_size, &rec) ||
                        rec.expires_ms <= now_ms))
            rc = mdb_del(txn, s->responses, &k, NULL);
        if (rc && rc != MDB_NOTFOUND)
            break;
        if ((rc = mdb_cursor_del(cur, 0)))
            break;
        count++;
        rc = mdb_cursor_get(cur, &ek, &ev, MDB_NEXT);
    }
    if ((rc = end_walk(txn, cur, rc, "sweep")))
        return rc;
    *deleted = count;
    return 0;
}

int
cn__store_sweep_all(cn_store_t *s, uint64_t now_ms, size_t batch, unsigned rounds,
                    size_t *deleted)
{
    size_t n;
    int rc = 0;

    *deleted = 0;
    for (unsigned i = 0; i < rounds; i++) {
        if ((rc = cn__store_sweep(s, now_ms, batch, &n)))
            break;
        *deleted += n;
        if (n < batch)
            break;
    }
    return rc;
}

int
cn__store_count(cn_store_t *s, size_t *count)
{
    MDB_txn *txn;
    MDB_stat st;
    int rc;

    if ((rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn)))
        return lmdb_error(rc, "begin read");
    rc = mdb_stat(txn, s->responses, &st);
    mdb_txn_abort(txn);
    if (rc)
        return lmdb_error(rc, "stat");
    *count = st.ms_entries;
    return 0;
}

/* The epoch lives under its own meta key, next to (not inside) the WAL meta, whose
 * layout belongs to the persister. */
static const char epoch_key[] = "cnerium:meta:events-epoch";

static int
epoch_read(MDB_txn *txn, MDB_dbi meta, uint64_t *epoch)
{
    MDB_val k = {sizeof(epoch_key) - 1, (void *)epoch_key}, v;
    int rc = mdb_get(txn, meta, &k, &v);

    if (rc)
        return rc;
    if (v.mv_size != 8)
        return MDB_CORRUPTED;
    *epoch = cn__get_le64(v.mv_data);
    return 0;
}

static int
lmdb_events_epoch(cn_store_t *s, uint64_t *epoch)
{
    MDB_txn *txn;
    MDB_val k = {sizeof(epoch_key) - 1, (void *)epoch_key}, v;
    uint8_t buf[8];
    uint64_t e = 0;
    int rc;

    if ((rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn)))
        return lmdb_error(rc, "begin read");
    rc = epoch_read(txn, s->meta, &e);
    mdb_txn_abort(txn);
    if (rc == 0) {
        *epoch = e;
        return 0;
    }
    if (rc != MDB_NOTFOUND)
        return lmdb_error(rc, "read epoch");
    /* None yet: make one. Writers are serialized; whoever comes second finds the first
     * one's epoch inside its own write transaction and keeps it. */
    while (!e) {
        if (getrandom(&e, sizeof(e), 0) != (ssize_t)sizeof(e))
            return errno ? -errno : -EIO;
    }
    if ((rc = mdb_txn_begin(s->env, NULL, 0, &txn)))
        return lmdb_error(rc, "begin write");
    if ((rc = epoch_read(txn, s->meta, epoch)) == 0) {
        mdb_txn_abort(txn);
        return 0;
    }
    cn__put_le64(buf, e);
    v.mv_size = sizeof(buf);
    v.mv_data = buf;
    if ((rc = mdb_put(txn, s->meta, &k, &v, 0))) {
        mdb_txn_abort(txn);
        return lmdb_error(rc, "write epoch");
    }
    /* Synced like every commit of a store opened without CN_STORE_NOSYNC. */
    if ((rc = mdb_txn_commit(txn))) /* frees the txn even on failure */
        return lmdb_error(rc, "commit epoch");
    *epoch = e;
    return 0;
}

/* ---- administration (cnerium-admin) ---- */

int
cn__store_list(cn_store_t *s, const char *from, size_t fromlen, size_t max,
               cn_store_list_cb cb, void *arg)
{
    MDB_txn *txn;
    MDB_cursor *cur;
    MDB_val k = {fromlen, (void *)from}, v;
    size_t n = 0;
    int rc, stop = 0;

    if (s->pg)
        return -ENOTSUP;
    if ((rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn)))
        return lmdb_error(rc, "list");
    if ((rc = mdb_cursor_open(txn, s->responses, &cur))) {
        mdb_txn_abort(txn);
        return lmdb_error(rc, "list");
    }
    rc = mdb_cursor_get(cur, &k, &v, fromlen ? MDB_SET_RANGE : MDB_FIRST);
    while (rc == 0 && n < max && !stop) {
        stop = cb(k.mv_data, k.mv_size, v.mv_data, v.mv_size, arg);
        n++;
        rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    }
    mdb_cursor_close(cur);
    mdb_txn_abort(txn);
    return rc && rc != MDB_NOTFOUND ? lmdb_error(rc, "list") : stop < 0 ? stop : 0;
}

int
cn__store_delete(cn_store_t *s, const char *key, size_t keylen)
{
    MDB_txn *txn;
    MDB_val k = {keylen, (void *)key}, v;
    cn_record_t rec;
    int rc;

    if (s->pg)
        return -ENOTSUP;
    if (keylen > CN_STORE_KEY_MAX)
        return CN_ENOTFOUND;
    if ((rc = mdb_txn_begin(s->env, NULL, 0, &txn)))
        return lmdb_error(rc, "delete");
    rc = mdb_get(txn, s->responses, &k, &v);
    if (rc == 0 && cn__record_decode(v.mv_data, v.mv_size, &rec) == 0) {
        /* Its expiry entry goes with it (the sweep would skip it, but why leave it). */
        uint8_t ek[8 + CN_STORE_KEY_MAX];
        MDB_val e = {8 + keylen, ek};
        cn__put_be64(ek, rec.expires_ms);
        memcpy(ek + 8, key, keylen);
        if ((rc = mdb_del(txn, s->expiry, &e, NULL)) == MDB_NOTFOUND)
            rc = 0;
    }
    if (rc == 0)
        rc = mdb_del(txn, s->responses, &k, NULL);
    if (rc) {
        mdb_txn_abort(txn);
        return lmdb_error(rc, "delete");
    }
    return (rc = mdb_txn_commit(txn)) ? lmdb_error(rc, "delete") : 0;
}

int
cn__store_backup(cn_store_t *s, const char *dir)
{
    int rc;

    if (s->pg)
        return -ENOTSUP;
    if ((rc = mkdir_p(dir)))
        return rc;
    /* One read transaction's snapshot, compacted: consistent while writers go on. */
    if ((rc = mdb_env_copy2(s->env, dir, MDB_CP_COMPACT)))
        return lmdb_error(rc, "backup");
    return 0;
}

int
cn__store_stats(cn_store_t *s, cn_store_stats_t *st)
{
    MDB_txn *txn;
    MDB_stat ms;
    MDB_envinfo info;
    int rc;

    if (s->pg)
        return -ENOTSUP;
    memset(st, 0, sizeof(*st));
    if ((rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn)))
        return lmdb_error(rc, "stats");
    if ((rc = mdb_stat(txn, s->responses, &ms)) == 0) {
        st->responses = ms.ms_entries;
        st->pages = ms.ms_branch_pages + ms.ms_leaf_pages + ms.ms_overflow_pages;
    }
    if (rc == 0 && (rc = mdb_stat(txn, s->events, &ms)) == 0)
        st->events = ms.ms_entries;
    if (rc == 0 && (rc = mdb_stat(txn, s->streams, &ms)) == 0)
        st->streams = ms.ms_entries;
    if (rc == 0 && (rc = mdb_stat(txn, s->log, &ms)) == 0)
        st->log_entries = ms.ms_entries;
    mdb_txn_abort(txn);
    if (rc)
        return lmdb_error(rc, "stats");
    if ((rc = mdb_env_info(s->env, &info)) || (rc = mdb_env_stat(s->env, &ms)))
        return lmdb_error(rc, "stats");
    st->map_size = info.me_mapsize;
    st->used_bytes = (uint64_t)(info.me_last_pgno + 1) * ms.ms_psize;
    return 0;
}

/* Calls problem(what, key, keylen, arg) for one finding; counts it. */
typedef struct verify_ctx {
    cn_store_verify_cb problem;
    void *arg;
    uint64_t found;
} verify_ctx_t;

static void
finding(verify_ctx_t *c, const char *what, const void *key, size_t keylen)
{
    c->found++;
    if (c->problem)
        c->problem(what, key, keylen, c->arg);
}

int
cn__store_verify(cn_store_t *s, uint64_t *checked, uint64_t *problems,
                 cn_store_verify_cb problem, void *arg)
{
    verify_ctx_t c = {problem, arg, 0};
    MDB_txn *txn;
    MDB_cursor *cur = NULL;
    MDB_val k, v, x;
    uint64_t n = 0, prev_seq = 0;
    int rc;

    if (s->pg)
        return -ENOTSUP;
    if ((rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn)))
        return lmdb_error(rc, "verify");
    /* Every stored response decodes and has its expiry entry. */
    if ((rc = mdb_cursor_open(txn, s->responses, &cur)))
        goto out;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        cn_record_t rec;
        n++;
        if (k.mv_size > CN_STORE_KEY_MAX) {
            finding(&c, "store key too long", k.mv_data, k.mv_size);
        } else if (cn__record_decode(v.mv_data, v.mv_size, &rec)) {
            finding(&c, "stored response does not decode", k.mv_data, k.mv_size);
        } else {
            uint8_t ek[8 + CN_STORE_KEY_MAX];
            MDB_val e = {8 + k.mv_size, ek};
            cn__put_be64(ek, rec.expires_ms);
            memcpy(ek + 8, k.mv_data, k.mv_size);
            if (mdb_get(txn, s->expiry, &e, &x))
                finding(&c, "stored response without its expiry entry", k.mv_data,
                        k.mv_size);
        }
    }
    mdb_cursor_close(cur);
    cur = NULL;
    if (rc != MDB_NOTFOUND)
        goto out;
    /* Events: 8-byte ascending numbers, each decoding. */
    if ((rc = mdb_cursor_open(txn, s->events, &cur)))
        goto out;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        cn_event_view_t ev;
        n++;
        if (k.mv_size != 8) {
            finding(&c, "event key is not a number", k.mv_data, k.mv_size);
            continue;
        }
        if (cn__get_be64(k.mv_data) <= prev_seq)
            finding(&c, "event numbers out of order", k.mv_data, k.mv_size);
        prev_seq = cn__get_be64(k.mv_data);
        if (cn__event_stored_decode(v.mv_data, v.mv_size, &ev))
            finding(&c, "event does not decode", k.mv_data, k.mv_size);
    }
    mdb_cursor_close(cur);
    cur = NULL;
    if (rc != MDB_NOTFOUND)
        goto out;
    /* The stream log: 8-byte positions, each entry decoding. */
    if ((rc = mdb_cursor_open(txn, s->log, &cur)))
        goto out;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        cn_log_view_t e;
        n++;
        if (k.mv_size != 8 || cn__log_entry_decode(v.mv_data, v.mv_size, &e))
            finding(&c, "stream log entry does not decode", k.mv_data, k.mv_size);
    }
    mdb_cursor_close(cur);
    cur = NULL;
    if (rc == MDB_NOTFOUND)
        rc = 0;
out:
    if (cur)
        mdb_cursor_close(cur);
    mdb_txn_abort(txn);
    if (rc)
        return lmdb_error(rc, "verify");
    *checked = n;
    *problems = c.found;
    return 0;
}

/* ---- a PostgreSQL store: the same reads, from the shared database ---- */

int
cn__store_open_pg(const char *url, cn_store_t **out, char *err, size_t errlen)
{
    cn_store_t *s = calloc(1, sizeof(*s));
    int rc;

    if (!s)
        return -ENOMEM;
    if ((rc = cn__pg_open(url, &s->pg, err, errlen))) {
        free(s);
        return rc;
    }
    pthread_mutex_init(&s->pg_mu, NULL);
    *out = s;
    return 0;
}

int
cn__store_is_pg(const cn_store_t *s)
{
    return s->pg != NULL;
}

/* Runs call on the store's connection, reconnecting first when it was lost, and once
 * more when it is found lost during the call: a database that restarted is read again
 * without restarting the host. (Reads only: running one twice is harmless.) */
#define PG_CALL(s, what, call)                                                             \
    do {                                                                                   \
        char err_[256];                                                                    \
        int rc_;                                                                           \
        pthread_mutex_lock(&(s)->pg_mu);                                                   \
        for (int try_ = 0; try_ < 2; try_++) {                                             \
            if ((rc_ = cn__pg_reset((s)->pg, err_, sizeof(err_))))                         \
                break;                                                                     \
            rc_ = (call);                                                                  \
            if (rc_ != CN_ESTORE || cn__pg_connected((s)->pg))                             \
                break;                                                                     \
        }                                                                                  \
        pthread_mutex_unlock(&(s)->pg_mu);                                                 \
        if (rc_ == CN_ESTORE)                                                              \
            cn_log_warn("%s: %s", what, err_);                                             \
        return rc_;                                                                        \
    } while (0)

int
cn__store_events_read(cn_store_t *s, uint64_t from, size_t max,
                      int (*cb)(uint64_t seq, const uint8_t *p, size_t len, void *arg), void *arg)
{
    if (s->pg)
        PG_CALL(s, "reading events", cn__pg_events_read(s->pg, from, max, cb, arg, err_,
                                                        sizeof(err_)));
    return lmdb_events_read(s, from, max, cb, arg);
}

int
cn__store_events_bounds(cn_store_t *s, uint64_t *oldest, uint64_t *newest)
{
    if (s->pg)
        PG_CALL(s, "reading the event bounds",
                cn__pg_events_bounds(s->pg, oldest, newest, err_, sizeof(err_)));
    return lmdb_events_bounds(s, oldest, newest);
}

int
cn__store_events_prune(cn_store_t *s, uint64_t keep, uint64_t min_created_ms, size_t max,
                       size_t *deleted)
{
    if (s->pg)
        PG_CALL(s, "pruning events",
                cn__pg_events_prune(s->pg, keep, min_created_ms, max, deleted, err_,
                                    sizeof(err_)));
    return lmdb_events_prune(s, keep, min_created_ms, max, deleted);
}

int
cn__store_events_epoch(cn_store_t *s, uint64_t *epoch)
{
    if (s->pg)
        PG_CALL(s, "reading the event epoch", cn__pg_events_epoch(s->pg, epoch, err_,
                                                                  sizeof(err_)));
    return lmdb_events_epoch(s, epoch);
}

int
cn__store_stream_version(cn_store_t *s, const char *stream, size_t len, uint64_t *version)
{
    if (s->pg)
        PG_CALL(s, "reading a stream version",
                cn__pg_stream_version(s->pg, stream, len, version, err_, sizeof(err_)));
    return lmdb_stream_version(s, stream, len, version);
}

int
cn__store_stream_read(cn_store_t *s, const char *stream, size_t len, uint64_t from,
                      int backward, size_t max, cn_log_read_cb cb, void *arg)
{
    if (s->pg)
        PG_CALL(s, "reading a stream",
                cn__pg_stream_read(s->pg, stream, len, from, backward, max, cb, arg, err_,
                                   sizeof(err_)));
    return lmdb_stream_read(s, stream, len, from, backward, max, cb, arg);
}

int
cn__store_log_read(cn_store_t *s, uint64_t from, size_t max, cn_log_read_cb cb, void *arg)
{
    if (s->pg)
        PG_CALL(s, "reading the stream log",
                cn__pg_log_read(s->pg, from, max, cb, arg, err_, sizeof(err_)));
    return lmdb_log_read(s, from, max, cb, arg);
}

int
cn__store_log_head(cn_store_t *s, uint64_t *position)
{
    if (s->pg)
        PG_CALL(s, "reading the stream log head",
                cn__pg_log_head(s->pg, position, err_, sizeof(err_)));
    return lmdb_log_head(s, position);
}

/* Claims left by a host that died are swept this long after their lease ended (a holder
 * that runs past its lease may still commit until then). */
#define PG_CLAIM_GRACE_MS 60000

int
cn__store_sweep(cn_store_t *s, uint64_t now_ms, size_t max, size_t *deleted)
{
    if (s->pg)
        PG_CALL(s, "sweeping expired responses",
                cn__pg_sweep(s->pg, (int64_t)now_ms, max, PG_CLAIM_GRACE_MS, deleted, err_,
                             sizeof(err_)));
    return lmdb_sweep(s, now_ms, max, deleted);
}
