/*
 * outbox/queue.c - the outbox's durable store in LMDB (layout in queue.h).
 *
 * Every change is one write transaction committed with LMDB's default durability
 * (fdatasync of the data file before the meta page, then of the meta page): when a
 * function here returns 0 the change survives a kill -9 or a power cut; when it returns
 * an error, nothing of it happened. LMDB never overwrites committed pages, so a write
 * torn by a crash only ever touches pages no committed transaction references: the next
 * open sees the last commit whole.
 *
 * Each function is one transaction; index upkeep goes through reindex(), the one place
 * that knows which indexes a status lives in. Counts by status are kept in meta so
 * stats are O(1).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <lmdb.h>

#include "outbox/queue.h"
#include "support/bytes.h"

#define MAX_GROWTH (64ull << 30) /* the map doubles on MDB_MAP_FULL up to this */
#define SCAN_SLACK 1024          /* due entries a claim may pass over beyond its limit */
#define CLAIM_BYTES (64u << 20)  /* payload bytes one claim copies out (at least one op) */

struct cn__outbox_queue {
    MDB_env *env;
    uint64_t map_size;
    MDB_dbi meta, ops, bodies, answers, by_seq, live, due, inflight, done, failed, fifo;
};

typedef struct {
    uint64_t count[CN_OUTBOX_STATUS_COUNT];
    uint64_t seq;
} meta_t;

static int
map_err(int rc)
{
    switch (rc) {
    case MDB_SUCCESS:
        return 0;
    case MDB_NOTFOUND:
        return CN_ENOTFOUND;
    case MDB_KEYEXIST:
        return -EEXIST;
    case MDB_MAP_FULL:
        return CN_EMAPFULL;
    case MDB_INVALID:
    case MDB_CORRUPTED:
    case MDB_PAGE_NOTFOUND:
        return CN_ECORRUPT;
    case MDB_VERSION_MISMATCH:
        return CN_EVERSION;
    default:
        return rc > 0 ? -rc : CN_ESTORE;
    }
}

static int
txn_begin(cn__outbox_queue_t *q, unsigned flags, MDB_txn **txn)
{
    int rc = mdb_txn_begin(q->env, NULL, flags, txn);

    if (rc == MDB_MAP_RESIZED) {
        /* Another process grew the map: adopt its size and go on. */
        rc = mdb_env_set_mapsize(q->env, 0);
        if (rc == 0)
            rc = mdb_txn_begin(q->env, NULL, flags, txn);
    }
    return map_err(rc);
}

/* Doubles the map after MDB_MAP_FULL (no transaction may be open in this process). */
static int
grow(cn__outbox_queue_t *q)
{
    MDB_envinfo info;

    if (mdb_env_info(q->env, &info) != 0 || info.me_mapsize >= MAX_GROWTH)
        return CN_EMAPFULL;
    if (mdb_env_set_mapsize(q->env, info.me_mapsize * 2) != 0)
        return CN_EMAPFULL;
    return 0;
}

static void
key64(uint8_t *k, uint64_t a)
{
    cn__put_be64(k, a);
}

static void
key128(uint8_t *k, uint64_t a, uint64_t b)
{
    cn__put_be64(k, a);
    cn__put_be64(k + 8, b);
}

static uint64_t
clamp_time(int64_t t)
{
    return t < 0 ? 0 : (uint64_t)t;
}

static uint64_t
url_hash(const char *url, size_t len)
{
    uint64_t h = 14695981039346656037ull; /* FNV-1a */

    for (size_t i = 0; i < len; i++) {
        h ^= (uint8_t)url[i];
        h *= 1099511628211ull;
    }
    return h;
}

static int
put(MDB_txn *txn, MDB_dbi dbi, const void *k, size_t kl, const void *v, size_t vl,
    unsigned flags)
{
    MDB_val key = {kl, (void *)k}, val = {vl, (void *)v};

    return map_err(mdb_put(txn, dbi, &key, &val, flags));
}

static int
del(MDB_txn *txn, MDB_dbi dbi, const void *k, size_t kl)
{
    MDB_val key = {kl, (void *)k};
    int rc = mdb_del(txn, dbi, &key, NULL);

    return rc == MDB_NOTFOUND ? 0 : map_err(rc);
}

static int
meta_load(cn__outbox_queue_t *q, MDB_txn *txn, meta_t *m)
{
    MDB_val k = {6, "counts"}, v;
    int rc;

    memset(m, 0, sizeof(*m));
    rc = mdb_get(txn, q->meta, &k, &v);
    if (rc == 0) {
        if (v.mv_size != 8 * (CN_OUTBOX_STATUS_COUNT + 1))
            return CN_ECORRUPT;
        for (int i = 0; i < CN_OUTBOX_STATUS_COUNT; i++)
            m->count[i] = cn__get_le64((const uint8_t *)v.mv_data + 8 * i);
        m->seq = cn__get_le64((const uint8_t *)v.mv_data + 8 * CN_OUTBOX_STATUS_COUNT);
        return 0;
    }
    return rc == MDB_NOTFOUND ? 0 : map_err(rc);
}

static int
meta_store(cn__outbox_queue_t *q, MDB_txn *txn, const meta_t *m)
{
    uint8_t b[8 * (CN_OUTBOX_STATUS_COUNT + 1)];

    for (int i = 0; i < CN_OUTBOX_STATUS_COUNT; i++)
        cn__put_le64(b + 8 * i, m->count[i]);
    cn__put_le64(b + 8 * CN_OUTBOX_STATUS_COUNT, m->seq);
    return put(txn, q->meta, "counts", 6, b, sizeof(b), 0);
}

/* Adds (add = 1) or removes the index entries of an operation in rec's status, and
 * keeps the count of that status. */
static int
reindex(cn__outbox_queue_t *q, MDB_txn *txn, meta_t *m, const char *id,
        const cn__outbox_rec_t *rec, int add)
{
    uint8_t k[16], s[8];
    int rc = 0;

    key64(s, rec->seq);
#define IDX(dbi, key, len)                                                                \
    do {                                                                                  \
        rc = add ? put(txn, dbi, key, len, id, CN_OUTBOX_ID_LEN, 0) : del(txn, dbi, key, len); \
        if (rc)                                                                           \
            return rc;                                                                    \
    } while (0)
    switch (rec->status) {
    case CN_OUTBOX_PENDING:
    case CN_OUTBOX_INFLIGHT:
        /* Pending and Inflight share live and fifo; each has its own index. */
        if (rec->status == CN_OUTBOX_PENDING) {
            key128(k, clamp_time(rec->next_attempt_at), rec->seq);
            IDX(q->due, k, 16);
        } else {
            IDX(q->inflight, s, 8);
        }
        IDX(q->live, s, 8);
        key128(k, url_hash(rec->url, rec->url_len), rec->seq);
        IDX(q->fifo, k, 16);
        break;
    case CN_OUTBOX_DONE:
        key128(k, clamp_time(rec->updated_at), rec->seq);
        IDX(q->done, k, 16);
        break;
    case CN_OUTBOX_FAILED:
        IDX(q->failed, s, 8);
        break;
    }
#undef IDX
    if (add)
        m->count[rec->status]++;
    else if (m->count[rec->status] > 0)
        m->count[rec->status]--;
    return 0;
}

static int
rec_put(cn__outbox_queue_t *q, MDB_txn *txn, const char *id, const cn__outbox_rec_t *rec,
        unsigned flags)
{
    size_t n = cn__outbox_rec_size(rec);
    uint8_t stackbuf[1024], *b = n <= sizeof(stackbuf) ? stackbuf : malloc(n);
    int rc;

    if (!b)
        return -ENOMEM;
    cn__outbox_rec_encode(rec, b);
    rc = put(txn, q->ops, id, CN_OUTBOX_ID_LEN, b, n, flags);
    if (b != stackbuf)
        free(b);
    return rc;
}

/* Reads id's record; rec's strings point into LMDB's pages (valid until txn ends). */
static int
rec_get(cn__outbox_queue_t *q, MDB_txn *txn, const char *id, cn__outbox_rec_t *rec)
{
    MDB_val k = {CN_OUTBOX_ID_LEN, (void *)id}, v;
    int rc = mdb_get(txn, q->ops, &k, &v);

    if (rc)
        return map_err(rc);
    return cn__outbox_rec_decode(v.mv_data, v.mv_size, rec);
}

/* As rec_get, for write transactions: LMDB's pages may change under a later update in
 * the same transaction, so the value is copied first (*buf owned: free). */
static int
rec_get_copy(cn__outbox_queue_t *q, MDB_txn *txn, const char *id, cn__outbox_rec_t *rec,
             void **buf)
{
    MDB_val k = {CN_OUTBOX_ID_LEN, (void *)id}, v;
    int rc = mdb_get(txn, q->ops, &k, &v);

    *buf = NULL;
    if (rc)
        return map_err(rc);
    *buf = malloc(v.mv_size ? v.mv_size : 1);
    if (!*buf)
        return -ENOMEM;
    memcpy(*buf, v.mv_data, v.mv_size);
    rc = cn__outbox_rec_decode(*buf, v.mv_size, rec);
    if (rc) {
        free(*buf);
        *buf = NULL;
    }
    return rc;
}

static int
blob_get(MDB_txn *txn, MDB_dbi dbi, const char *id, const void **p, size_t *n)
{
    MDB_val k = {CN_OUTBOX_ID_LEN, (void *)id}, v;
    int rc = mdb_get(txn, dbi, &k, &v);

    *p = NULL;
    *n = 0;
    if (rc == MDB_NOTFOUND)
        return 0;
    if (rc)
        return map_err(rc);
    *p = v.mv_data;
    *n = v.mv_size;
    return 0;
}

/* A data file shorter than its last commit says (cut by something outside LMDB: LMDB
 * syncs pages before the meta page that references them) would be a SIGBUS on the
 * first read of a missing page: refuse it. */
static int
check_length(MDB_env *env)
{
    MDB_envinfo info;
    MDB_stat st;
    struct stat fs;
    mdb_filehandle_t fd;

    if (mdb_env_info(env, &info) != 0 || mdb_env_stat(env, &st) != 0 ||
        mdb_env_get_fd(env, &fd) != 0 || fstat(fd, &fs) != 0)
        return CN_ESTORE;
    if ((uint64_t)fs.st_size < ((uint64_t)info.me_last_pgno + 1) * st.ms_psize)
        return CN_ECORRUPT;
    return 0;
}

static int
open_dbi(MDB_txn *txn, const char *name, MDB_dbi *dbi)
{
    return map_err(mdb_dbi_open(txn, name, MDB_CREATE, dbi));
}

int
cn__outbox_queue_open(const char *dir, uint64_t map_size, cn__outbox_queue_t **out)
{
    cn__outbox_queue_t *q;
    MDB_txn *txn = NULL;
    MDB_val k = {6, "format"}, v;
    uint8_t fmt[4];
    int rc, dead;

    if (mkdir(dir, 0700) != 0 && errno != EEXIST)
        return -errno;
    q = calloc(1, sizeof(*q));
    if (!q)
        return -ENOMEM;
    q->map_size = map_size;
    rc = map_err(mdb_env_create(&q->env));
    if (rc)
        goto fail;
    if ((rc = map_err(mdb_env_set_maxdbs(q->env, 16))) ||
        (rc = map_err(mdb_env_set_mapsize(q->env, (size_t)map_size))))
        goto fail;
    rc = map_err(mdb_env_open(q->env, dir, MDB_NOTLS, 0600));
    if (rc)
        goto fail;
    /* Reader slots of processes that died (kill -9) would pin old pages forever. */
    mdb_reader_check(q->env, &dead);
    rc = check_length(q->env);
    if (rc)
        goto fail;
    rc = txn_begin(q, 0, &txn);
    if (rc)
        goto fail;
    if ((rc = open_dbi(txn, "meta", &q->meta)) || (rc = open_dbi(txn, "ops", &q->ops)) ||
        (rc = open_dbi(txn, "bodies", &q->bodies)) ||
        (rc = open_dbi(txn, "answers", &q->answers)) ||
        (rc = open_dbi(txn, "by_seq", &q->by_seq)) || (rc = open_dbi(txn, "live", &q->live)) ||
        (rc = open_dbi(txn, "due", &q->due)) ||
        (rc = open_dbi(txn, "inflight", &q->inflight)) ||
        (rc = open_dbi(txn, "done", &q->done)) || (rc = open_dbi(txn, "failed", &q->failed)) ||
        (rc = open_dbi(txn, "fifo", &q->fifo)))
        goto fail;
    rc = mdb_get(txn, q->meta, &k, &v);
    if (rc == MDB_NOTFOUND) {
        cn__put_le32(fmt, CN__OUTBOX_FORMAT);
        rc = put(txn, q->meta, "format", 6, fmt, 4, 0);
    } else if (rc == 0) {
        rc = v.mv_size != 4 ? CN_ECORRUPT
             : cn__get_le32(v.mv_data) != CN__OUTBOX_FORMAT ? CN_EVERSION
                                                            : 0;
    } else {
        rc = map_err(rc);
    }
    if (rc)
        goto fail;
    rc = map_err(mdb_txn_commit(txn));
    txn = NULL;
    if (rc)
        goto fail;
    *out = q;
    return 0;
fail:
    if (txn)
        mdb_txn_abort(txn);
    cn__outbox_queue_close(q);
    return rc;
}

void
cn__outbox_queue_close(cn__outbox_queue_t *q)
{
    if (!q)
        return;
    if (q->env)
        mdb_env_close(q->env);
    free(q);
}

static int
enqueue_txn(cn__outbox_queue_t *q, const cn_outbox_spec_t *specs, size_t n, int64_t now,
            char (*ids)[CN_OUTBOX_ID_SIZE])
{
    MDB_txn *txn;
    meta_t m;
    int rc;

    rc = txn_begin(q, 0, &txn);
    if (rc)
        return rc;
    rc = meta_load(q, txn, &m);
    for (size_t i = 0; rc == 0 && i < n; i++) {
        const cn_outbox_spec_t *s = &specs[i];
        cn__outbox_rec_t rec;
        size_t hlen = 0;
        char *hdrs = cn__outbox_headers_join(s, &hlen);
        uint8_t sk[8];

        if (!hdrs) {
            rc = -ENOMEM;
            break;
        }
        memset(&rec, 0, sizeof(rec));
        rec.status = CN_OUTBOX_PENDING;
        rec.seq = ++m.seq;
        rec.created_at = rec.updated_at = rec.next_attempt_at = now;
        rec.kind = s->kind ? s->kind : "";
        rec.kind_len = strlen(rec.kind);
        rec.method = s->method;
        rec.method_len = strlen(s->method);
        rec.url = s->url;
        rec.url_len = strlen(s->url);
        rec.error = "";
        rec.headers = hdrs;
        rec.headers_len = hlen;
        /* 128 random bits collide in practice never; MDB_NOOVERWRITE makes "never" a
         * guarantee: a drawn id that exists is drawn again. */
        for (int tries = 0;; tries++) {
            rc = cn__outbox_id_new(ids[i]);
            if (rc == 0)
                rc = rec_put(q, txn, ids[i], &rec, MDB_NOOVERWRITE);
            if (rc != -EEXIST || tries == 8)
                break;
        }
        free(hdrs);
        if (rc)
            break;
        key64(sk, rec.seq);
        if ((rc = put(txn, q->by_seq, sk, 8, ids[i], CN_OUTBOX_ID_LEN, 0)))
            break;
        if (s->payload_len &&
            (rc = put(txn, q->bodies, ids[i], CN_OUTBOX_ID_LEN, s->payload, s->payload_len, 0)))
            break;
        rc = reindex(q, txn, &m, ids[i], &rec, 1);
    }
    if (rc == 0)
        rc = meta_store(q, txn, &m);
    if (rc) {
        mdb_txn_abort(txn);
        return rc;
    }
    return map_err(mdb_txn_commit(txn));
}

int
cn__outbox_queue_enqueue(cn__outbox_queue_t *q, const cn_outbox_spec_t *specs, size_t n,
                         int64_t now_ms, char (*ids)[CN_OUTBOX_ID_SIZE])
{
    int rc = enqueue_txn(q, specs, n, now_ms, ids);

    while (rc == CN_EMAPFULL && grow(q) == 0)
        rc = enqueue_txn(q, specs, n, now_ms, ids);
    return rc;
}

/* Builds the caller's copy of id's operation inside txn. */
static int
load_op(cn__outbox_queue_t *q, MDB_txn *txn, const char *id, cn_outbox_op_t **out)
{
    cn__outbox_rec_t rec;
    const void *body, *answer;
    size_t body_len, answer_len;
    int rc;

    if ((rc = rec_get(q, txn, id, &rec)) || (rc = blob_get(txn, q->bodies, id, &body, &body_len)) ||
        (rc = blob_get(txn, q->answers, id, &answer, &answer_len)))
        return rc;
    *out = cn__outbox_op_build(id, &rec, body, body_len, answer, answer_len);
    return *out ? 0 : -ENOMEM;
}

int
cn__outbox_queue_get(cn__outbox_queue_t *q, const char *id, cn_outbox_op_t **out)
{
    MDB_txn *txn;
    int rc;

    if (!cn__outbox_id_valid(id))
        return -EINVAL;
    rc = txn_begin(q, MDB_RDONLY, &txn);
    if (rc)
        return rc;
    rc = load_op(q, txn, id, out);
    mdb_txn_abort(txn);
    return rc;
}

int
cn__outbox_queue_list(cn__outbox_queue_t *q, int status, cn_outbox_list_cb cb, void *ctx)
{
    MDB_dbi dbi = q->by_seq;
    MDB_cursor *cur = NULL;
    MDB_txn *txn;
    MDB_val k, v;
    int rc, op = MDB_FIRST;

    if (status >= CN_OUTBOX_STATUS_COUNT)
        return -EINVAL;
    if (status == CN_OUTBOX_PENDING)
        dbi = q->live;
    else if (status == CN_OUTBOX_INFLIGHT)
        dbi = q->inflight;
    else if (status == CN_OUTBOX_FAILED)
        dbi = q->failed;
    rc = txn_begin(q, MDB_RDONLY, &txn);
    if (rc)
        return rc;
    rc = map_err(mdb_cursor_open(txn, dbi, &cur));
    while (rc == 0) {
        char id[CN_OUTBOX_ID_SIZE];
        cn_outbox_op_t *o;

        rc = mdb_cursor_get(cur, &k, &v, (MDB_cursor_op)op);
        op = MDB_NEXT;
        if (rc == MDB_NOTFOUND) {
            rc = 0;
            break;
        }
        if (rc) {
            rc = map_err(rc);
            break;
        }
        if (v.mv_size != CN_OUTBOX_ID_LEN) {
            rc = CN_ECORRUPT;
            break;
        }
        memcpy(id, v.mv_data, CN_OUTBOX_ID_LEN);
        id[CN_OUTBOX_ID_LEN] = '\0';
        rc = load_op(q, txn, id, &o);
        if (rc)
            break;
        if (status < 0 || (int)o->status == status)
            rc = cb(ctx, o);
        cn_outbox_op_free(o);
        if (rc)
            break;
    }
    if (cur)
        mdb_cursor_close(cur);
    mdb_txn_abort(txn);
    return rc;
}

int
cn__outbox_queue_requeue(cn__outbox_queue_t *q, const char *id, int64_t now_ms)
{
    cn__outbox_rec_t rec;
    void *buf = NULL;
    MDB_txn *txn;
    meta_t m;
    int rc;

    if (!cn__outbox_id_valid(id))
        return -EINVAL;
    rc = txn_begin(q, 0, &txn);
    if (rc)
        return rc;
    if ((rc = meta_load(q, txn, &m)) || (rc = rec_get_copy(q, txn, id, &rec, &buf)))
        goto out;
    if (rec.status != CN_OUTBOX_FAILED) {
        rc = CN_ESTATE;
        goto out;
    }
    if ((rc = reindex(q, txn, &m, id, &rec, 0)))
        goto out;
    rec.status = CN_OUTBOX_PENDING;
    rec.attempt = 0;
    rec.next_attempt_at = rec.updated_at = now_ms;
    rec.lease_until = 0;
    rec.lease_owner = 0;
    if ((rc = rec_put(q, txn, id, &rec, 0)) || (rc = reindex(q, txn, &m, id, &rec, 1)) ||
        (rc = meta_store(q, txn, &m)))
        goto out;
    free(buf);
    return map_err(mdb_txn_commit(txn));
out:
    free(buf);
    mdb_txn_abort(txn);
    return rc;
}

static int64_t
first_key_time(MDB_txn *txn, MDB_dbi dbi)
{
    MDB_cursor *cur;
    MDB_val k, v;
    int64_t t = -1;

    if (mdb_cursor_open(txn, dbi, &cur) != 0)
        return -1;
    if (mdb_cursor_get(cur, &k, &v, MDB_FIRST) == 0 && k.mv_size >= 8)
        t = (int64_t)cn__get_be64(k.mv_data);
    mdb_cursor_close(cur);
    return t;
}

int
cn__outbox_queue_stats(cn__outbox_queue_t *q, cn_outbox_stats_t *out)
{
    MDB_cursor *cur;
    MDB_txn *txn;
    MDB_val k, v;
    meta_t m;
    int rc;

    rc = txn_begin(q, MDB_RDONLY, &txn);
    if (rc)
        return rc;
    rc = meta_load(q, txn, &m);
    if (rc)
        goto out;
    memset(out, 0, sizeof(*out));
    for (int i = 0; i < CN_OUTBOX_STATUS_COUNT; i++) {
        out->count[i] = m.count[i];
        out->total += m.count[i];
    }
    out->enqueued_total = m.seq;
    out->next_due_ms = first_key_time(txn, q->due);
    out->oldest_pending_ms = -1;
    rc = map_err(mdb_cursor_open(txn, q->live, &cur));
    if (rc)
        goto out;
    if (mdb_cursor_get(cur, &k, &v, MDB_FIRST) == 0 && v.mv_size == CN_OUTBOX_ID_LEN) {
        char id[CN_OUTBOX_ID_SIZE];
        cn__outbox_rec_t rec;

        memcpy(id, v.mv_data, CN_OUTBOX_ID_LEN);
        id[CN_OUTBOX_ID_LEN] = '\0';
        if (rec_get(q, txn, id, &rec) == 0)
            out->oldest_pending_ms = rec.created_at;
    }
    mdb_cursor_close(cur);
out:
    mdb_txn_abort(txn);
    return rc;
}

/* Deletes everything of id (record, blobs, seq entry, its status's index entries). */
static int
remove_op(cn__outbox_queue_t *q, MDB_txn *txn, meta_t *m, const char *id)
{
    cn__outbox_rec_t rec;
    void *buf;
    uint8_t sk[8];
    int rc;

    if ((rc = rec_get_copy(q, txn, id, &rec, &buf)))
        return rc;
    rc = reindex(q, txn, m, id, &rec, 0);
    free(buf);
    if (rc)
        return rc;
    key64(sk, rec.seq);
    if ((rc = del(txn, q->by_seq, sk, 8)) || (rc = del(txn, q->bodies, id, CN_OUTBOX_ID_LEN)) ||
        (rc = del(txn, q->answers, id, CN_OUTBOX_ID_LEN)))
        return rc;
    return del(txn, q->ops, id, CN_OUTBOX_ID_LEN);
}

/* Collects up to max ids from the start of dbi whose key's first 8 bytes (big endian)
 * are below `below` (all when below < 0). */
static int
collect(MDB_txn *txn, MDB_dbi dbi, int64_t below, size_t max, char (*ids)[CN_OUTBOX_ID_SIZE],
        size_t *n)
{
    MDB_cursor *cur;
    MDB_val k, v;
    int rc, op = MDB_FIRST;

    *n = 0;
    rc = map_err(mdb_cursor_open(txn, dbi, &cur));
    if (rc)
        return rc;
    while (*n < max) {
        rc = mdb_cursor_get(cur, &k, &v, (MDB_cursor_op)op);
        op = MDB_NEXT;
        if (rc == MDB_NOTFOUND) {
            rc = 0;
            break;
        }
        if (rc) {
            rc = map_err(rc);
            break;
        }
        if (k.mv_size < 8 || v.mv_size != CN_OUTBOX_ID_LEN) {
            rc = CN_ECORRUPT;
            break;
        }
        if (below >= 0 && cn__get_be64(k.mv_data) >= (uint64_t)below)
            break;
        memcpy(ids[*n], v.mv_data, CN_OUTBOX_ID_LEN);
        ids[*n][CN_OUTBOX_ID_LEN] = '\0';
        (*n)++;
    }
    mdb_cursor_close(cur);
    return rc;
}

#define COMPACT_BATCH 1024

int
cn__outbox_queue_compact(cn__outbox_queue_t *q, int64_t before_ms, size_t limit)
{
    char(*ids)[CN_OUTBOX_ID_SIZE] = malloc(COMPACT_BATCH * sizeof(*ids));
    size_t removed = 0;
    int rc = 0;

    if (!ids)
        return -ENOMEM;
    if (before_ms < 0)
        before_ms = 0;
    while (rc == 0 && (limit == 0 || removed < limit)) {
        size_t want = COMPACT_BATCH, n = 0;
        MDB_txn *txn;
        meta_t m;

        if (limit && limit - removed < want)
            want = limit - removed;
        rc = txn_begin(q, 0, &txn);
        if (rc)
            break;
        rc = meta_load(q, txn, &m);
        if (rc == 0)
            rc = collect(txn, q->done, before_ms, want, ids, &n);
        for (size_t i = 0; rc == 0 && i < n; i++)
            rc = remove_op(q, txn, &m, ids[i]);
        if (rc == 0 && n)
            rc = meta_store(q, txn, &m);
        if (rc || n == 0) {
            mdb_txn_abort(txn);
            break;
        }
        rc = map_err(mdb_txn_commit(txn));
        if (rc == 0)
            removed += n;
        if (n < want)
            break;
    }
    free(ids);
    return rc ? rc : (int)(removed > 0x7fffffff ? 0x7fffffff : removed);
}

static void
claim_clear(cn__outbox_claim_t *c)
{
    free(c->method);
    free(c->url);
    free(c->headers);
    free(c->payload);
}

void
cn__outbox_claims_free(cn__outbox_claim_t *c, size_t n)
{
    for (size_t i = 0; c && i < n; i++)
        claim_clear(&c[i]);
    free(c);
}

static char *
dup_n(const char *s, size_t n)
{
    char *d = malloc(n + 1);

    if (d) {
        if (n)
            memcpy(d, s, n);
        d[n] = '\0';
    }
    return d;
}

/* With fifo: 0 when no older Pending or Inflight operation has rec's URL; otherwise
 * the time before which rec cannot go: the older one's next try when it is Pending and
 * not due yet, 1 (just "not now") when it is due or Inflight. */
static int64_t
fifo_wait(cn__outbox_queue_t *q, MDB_txn *txn, const char *id, const cn__outbox_rec_t *rec,
          int64_t now)
{
    uint8_t k[16];
    MDB_val key = {16, k}, v;
    MDB_cursor *cur;
    uint64_t h = url_hash(rec->url, rec->url_len);
    int64_t wait = 1;
    char head[CN_OUTBOX_ID_SIZE];
    cn__outbox_rec_t hr;

    key128(k, h, 0);
    if (mdb_cursor_open(txn, q->fifo, &cur) != 0)
        return 1;
    if (mdb_cursor_get(cur, &key, &v, MDB_SET_RANGE) != 0 || key.mv_size != 16 ||
        cn__get_be64(key.mv_data) != h || v.mv_size != CN_OUTBOX_ID_LEN) {
        mdb_cursor_close(cur);
        return 1; /* rec itself should be there: the index is damaged, do not send */
    }
    if (memcmp(v.mv_data, id, CN_OUTBOX_ID_LEN) == 0) {
        mdb_cursor_close(cur);
        return 0;
    }
    memcpy(head, v.mv_data, CN_OUTBOX_ID_LEN);
    head[CN_OUTBOX_ID_LEN] = '\0';
    mdb_cursor_close(cur);
    if (rec_get(q, txn, head, &hr) == 0 && hr.status == CN_OUTBOX_PENDING &&
        hr.next_attempt_at > now)
        wait = hr.next_attempt_at;
    return wait;
}

static int
claim_txn(cn__outbox_queue_t *q, int64_t now, size_t limit, int fifo, uint64_t owner,
          int64_t lease_until, cn__outbox_eligible_cb ok, void *ctx, cn__outbox_claim_t *c,
          size_t *n, char (*later)[CN_OUTBOX_ID_SIZE], int64_t *later_at, size_t *nlater)
{
    size_t scanned = 0, got = 0, bytes = 0, nl = 0;
    MDB_cursor *cur = NULL;
    MDB_txn *txn;
    MDB_val k, v;
    meta_t m;
    int rc, op = MDB_FIRST;

    rc = txn_begin(q, 0, &txn);
    if (rc)
        return rc;
    rc = meta_load(q, txn, &m);
    if (rc == 0)
        rc = map_err(mdb_cursor_open(txn, q->due, &cur));
    /* Pass 1 reads: which due operations to take (the index is not changed under the
     * cursor). */
    while (rc == 0 && got < limit && scanned < limit + SCAN_SLACK) {
        cn__outbox_rec_t rec;
        const void *body;
        size_t body_len;

        rc = mdb_cursor_get(cur, &k, &v, (MDB_cursor_op)op);
        op = MDB_NEXT;
        if (rc == MDB_NOTFOUND) {
            rc = 0;
            break;
        }
        if (rc) {
            rc = map_err(rc);
            break;
        }
        if (k.mv_size != 16 || v.mv_size != CN_OUTBOX_ID_LEN) {
            rc = CN_ECORRUPT;
            break;
        }
        if (cn__get_be64(k.mv_data) > clamp_time(now))
            break;
        scanned++;
        memcpy(c[got].id, v.mv_data, CN_OUTBOX_ID_LEN);
        c[got].id[CN_OUTBOX_ID_LEN] = '\0';
        rc = rec_get(q, txn, c[got].id, &rec);
        if (rc)
            break;
        int64_t wait = fifo ? fifo_wait(q, txn, c[got].id, &rec, now) : 0;
        if (wait == 0 && ok)
            wait = ok(ctx, &rec);
        if (wait != 0) {
            /* Not now. Deferred when it has a time of its own to wait for. */
            if (wait > rec.next_attempt_at && nl < limit + SCAN_SLACK) {
                memcpy(later[nl], c[got].id, CN_OUTBOX_ID_SIZE);
                later_at[nl++] = wait;
            }
            continue;
        }
        rc = blob_get(txn, q->bodies, c[got].id, &body, &body_len);
        if (rc)
            break;
        /* A batch of large payloads is held in memory while it is sent: bound it. */
        if (got > 0 && bytes + body_len > CLAIM_BYTES)
            break;
        bytes += body_len;
        c[got].attempt = rec.attempt + 1;
        c[got].prev_next_attempt_at = rec.next_attempt_at;
        c[got].method = dup_n(rec.method, rec.method_len);
        c[got].url = dup_n(rec.url, rec.url_len);
        c[got].headers = dup_n(rec.headers, rec.headers_len);
        c[got].headers_len = rec.headers_len;
        c[got].payload = dup_n(body, body_len);
        c[got].payload_len = body_len;
        got++;
        if (!c[got - 1].method || !c[got - 1].url || !c[got - 1].headers ||
            !c[got - 1].payload)
            rc = -ENOMEM;
    }
    if (cur)
        mdb_cursor_close(cur);
    /* Pass 2 writes: each taken operation becomes Inflight under the lease. */
    for (size_t i = 0; rc == 0 && i < got; i++) {
        cn__outbox_rec_t rec;
        void *buf;

        if ((rc = rec_get_copy(q, txn, c[i].id, &rec, &buf)))
            break;
        if ((rc = reindex(q, txn, &m, c[i].id, &rec, 0)) == 0) {
            rec.status = CN_OUTBOX_INFLIGHT;
            rec.attempt = c[i].attempt;
            rec.updated_at = now;
            rec.lease_owner = owner;
            rec.lease_until = lease_until;
            if ((rc = rec_put(q, txn, c[i].id, &rec, 0)) == 0)
                rc = reindex(q, txn, &m, c[i].id, &rec, 1);
        }
        free(buf);
    }
    for (size_t i = 0; rc == 0 && i < nl; i++) {
        cn__outbox_rec_t rec;
        void *buf;

        if ((rc = rec_get_copy(q, txn, later[i], &rec, &buf)))
            break;
        if ((rc = reindex(q, txn, &m, later[i], &rec, 0)) == 0) {
            rec.next_attempt_at = later_at[i];
            if ((rc = rec_put(q, txn, later[i], &rec, 0)) == 0)
                rc = reindex(q, txn, &m, later[i], &rec, 1);
        }
        free(buf);
    }
    if (rc == 0 && (got || nl))
        rc = meta_store(q, txn, &m);
    if (rc == 0 && (got || nl))
        rc = map_err(mdb_txn_commit(txn));
    else
        mdb_txn_abort(txn);
    *n = got;
    *nlater = rc ? 0 : nl;
    return rc;
}

int
cn__outbox_queue_claim(cn__outbox_queue_t *q, int64_t now_ms, size_t limit, int fifo,
                       uint64_t owner, int64_t lease_until, cn__outbox_eligible_cb ok,
                       void *ctx, cn__outbox_claim_t **out, size_t *n, size_t *deferred)
{
    char(*later)[CN_OUTBOX_ID_SIZE] = NULL;
    int64_t *later_at = NULL;
    cn__outbox_claim_t *c;
    size_t got = 0, nl = 0;
    int rc;

    *out = NULL;
    *n = 0;
    if (deferred)
        *deferred = 0;
    if (limit == 0)
        return 0;
    c = calloc(limit, sizeof(*c));
    later = malloc((limit + SCAN_SLACK) * sizeof(*later));
    later_at = malloc((limit + SCAN_SLACK) * sizeof(*later_at));
    if (!c || !later || !later_at) {
        free(c);
        free(later);
        free(later_at);
        return -ENOMEM;
    }
    rc = claim_txn(q, now_ms, limit, fifo, owner, lease_until, ok, ctx, c, &got, later,
                   later_at, &nl);
    while (rc == CN_EMAPFULL && grow(q) == 0) {
        /* Rewriting records needs fresh pages too: grow and claim again from scratch. */
        for (size_t i = 0; i < got; i++)
            claim_clear(&c[i]);
        memset(c, 0, limit * sizeof(*c));
        got = nl = 0;
        rc = claim_txn(q, now_ms, limit, fifo, owner, lease_until, ok, ctx, c, &got, later,
                       later_at, &nl);
    }
    free(later);
    free(later_at);
    if (deferred)
        *deferred = nl;
    if (rc) {
        cn__outbox_claims_free(c, got);
        return rc;
    }
    if (got == 0) {
        free(c);
        return 0;
    }
    *out = c;
    *n = got;
    return 0;
}

static size_t
cut_error(const char *e)
{
    size_t n = strlen(e);

    return n > CN__OUTBOX_ERROR_MAX ? CN__OUTBOX_ERROR_MAX : n;
}

static int
finish_txn(cn__outbox_queue_t *q, const cn__outbox_result_t *r, size_t n, uint64_t owner,
           int64_t now)
{
    MDB_txn *txn;
    meta_t m;
    int rc;

    rc = txn_begin(q, 0, &txn);
    if (rc)
        return rc;
    rc = meta_load(q, txn, &m);
    for (size_t i = 0; rc == 0 && i < n; i++) {
        cn__outbox_rec_t rec;
        void *buf;

        rc = rec_get_copy(q, txn, r[i].id, &rec, &buf);
        if (rc == CN_ENOTFOUND) {
            rc = 0;
            continue;
        }
        if (rc)
            break;
        if (rec.status != CN_OUTBOX_INFLIGHT || rec.lease_owner != owner) {
            free(buf);
            continue;
        }
        if ((rc = reindex(q, txn, &m, r[i].id, &rec, 0))) {
            free(buf);
            break;
        }
        rec.updated_at = now;
        rec.lease_until = 0;
        rec.lease_owner = 0;
        if (r[i].http_status)
            rec.last_http_status = r[i].http_status;
        if (r[i].error) {
            rec.error = r[i].error;
            rec.error_len = cut_error(r[i].error);
        }
        switch (r[i].end) {
        case CN__OUTBOX_END_DONE:
            rec.status = CN_OUTBOX_DONE;
            rec.error = "";
            rec.error_len = 0;
            rec.truncated = r[i].truncated ? 1 : 0;
            if (r[i].answer_len)
                rc = put(txn, q->answers, r[i].id, CN_OUTBOX_ID_LEN, r[i].answer,
                         r[i].answer_len, 0);
            break;
        case CN__OUTBOX_END_RETRY:
            rec.status = CN_OUTBOX_PENDING;
            rec.next_attempt_at = r[i].next_attempt_at;
            break;
        case CN__OUTBOX_END_FAIL:
            rec.status = CN_OUTBOX_FAILED;
            break;
        case CN__OUTBOX_END_UNTRIED: /* error and status kept when given: why it waits */
            rec.status = CN_OUTBOX_PENDING;
            rec.next_attempt_at = r[i].next_attempt_at;
            if (rec.attempt > 0)
                rec.attempt--;
            break;
        }
        if (rc == 0 && (rc = rec_put(q, txn, r[i].id, &rec, 0)) == 0)
            rc = reindex(q, txn, &m, r[i].id, &rec, 1);
        free(buf);
    }
    if (rc == 0)
        rc = meta_store(q, txn, &m);
    if (rc) {
        mdb_txn_abort(txn);
        return rc;
    }
    return map_err(mdb_txn_commit(txn));
}

int
cn__outbox_queue_finish(cn__outbox_queue_t *q, const cn__outbox_result_t *r, size_t n,
                        uint64_t owner, int64_t now_ms)
{
    int rc = finish_txn(q, r, n, owner, now_ms);

    while (rc == CN_EMAPFULL && grow(q) == 0)
        rc = finish_txn(q, r, n, owner, now_ms);
    return rc;
}

int
cn__outbox_queue_recover(cn__outbox_queue_t *q, uint64_t owner, int64_t now_ms,
                         uint32_t max_attempts, int expired_only)
{
    char(*ids)[CN_OUTBOX_ID_SIZE] = malloc(COMPACT_BATCH * sizeof(*ids));
    int moved = 0, rc = 0;

    if (!ids)
        return -ENOMEM;
    for (;;) {
        size_t n = 0, took = 0;
        MDB_txn *txn;
        meta_t m;

        rc = txn_begin(q, 0, &txn);
        if (rc)
            break;
        rc = meta_load(q, txn, &m);
        if (rc == 0)
            rc = collect(txn, q->inflight, -1, COMPACT_BATCH, ids, &n);
        for (size_t i = 0; rc == 0 && i < n; i++) {
            cn__outbox_rec_t rec;
            char why[200];
            void *buf;

            if ((rc = rec_get_copy(q, txn, ids[i], &rec, &buf)))
                break;
            if (expired_only ? rec.lease_until > now_ms : rec.lease_owner == owner) {
                free(buf);
                continue;
            }
            if ((rc = reindex(q, txn, &m, ids[i], &rec, 0))) {
                free(buf);
                break;
            }
            const char *what = expired_only ? "its lease ran out during"
                                            : "the worker stopped during";
            if (rec.attempt >= max_attempts) {
                rec.status = CN_OUTBOX_FAILED;
                snprintf(why, sizeof(why),
                         "interrupted: %s attempt %u, whose outcome is unknown, and "
                         "max_attempts is reached (requeue to send it again with the same "
                         "key)",
                         what, rec.attempt);
            } else {
                rec.status = CN_OUTBOX_PENDING;
                rec.next_attempt_at = now_ms;
                snprintf(why, sizeof(why),
                         "interrupted: %s attempt %u; sent again with the same key", what,
                         rec.attempt);
            }
            rec.error = why;
            rec.error_len = strlen(why);
            rec.updated_at = now_ms;
            rec.lease_owner = 0;
            rec.lease_until = 0;
            if ((rc = rec_put(q, txn, ids[i], &rec, 0)) == 0)
                rc = reindex(q, txn, &m, ids[i], &rec, 1);
            free(buf);
            if (rc)
                break;
            took++;
        }
        if (rc == 0 && took)
            rc = meta_store(q, txn, &m);
        if (rc || took == 0) {
            mdb_txn_abort(txn);
            break;
        }
        rc = map_err(mdb_txn_commit(txn));
        if (rc)
            break;
        moved += (int)took;
        if (n < COMPACT_BATCH)
            break;
    }
    free(ids);
    return rc ? rc : moved;
}

int64_t
cn__outbox_queue_next_due(cn__outbox_queue_t *q,
                          int64_t (*adjust)(void *ctx, const cn__outbox_rec_t *rec), void *ctx)
{
    MDB_cursor *cur;
    MDB_txn *txn;
    MDB_val k, v;
    int64_t best = -1;
    int op = MDB_FIRST;

    if (txn_begin(q, MDB_RDONLY, &txn))
        return -1;
    if (mdb_cursor_open(txn, q->due, &cur) == 0) {
        for (int i = 0; i < 64 && mdb_cursor_get(cur, &k, &v, (MDB_cursor_op)op) == 0; i++) {
            char id[CN_OUTBOX_ID_SIZE];
            cn__outbox_rec_t rec;
            int64_t t;

            op = MDB_NEXT;
            if (v.mv_size != CN_OUTBOX_ID_LEN)
                break;
            memcpy(id, v.mv_data, CN_OUTBOX_ID_LEN);
            id[CN_OUTBOX_ID_LEN] = '\0';
            if (rec_get(q, txn, id, &rec))
                break;
            t = adjust ? adjust(ctx, &rec) : rec.next_attempt_at;
            if (best < 0 || t < best)
                best = t;
        }
        mdb_cursor_close(cur);
    }
    mdb_txn_abort(txn);
    return best;
}
