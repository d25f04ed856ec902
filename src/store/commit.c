/*
 * store/commit.c - the committers (see commit.h).
 *
 * The ring committer keeps the records it submitted in a FIFO, in ring (seq) order: a
 * record is appended under the same mutex as its ring push, so the FIFO's order is the
 * seq order and the acked prefix is always at its head. It has no thread: the worker's
 * event loop sleeps on the ack eventfd (with the next commit deadline as its timeout)
 * and calls cn__committer_poll, which pops the acked prefix and calls back outside the
 * mutex, in the same turn as the loop's HTTP work, so an ack reaches the client without
 * another thread's wakeup in between.
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cnerium/error.h"
#include "store/commit.h"
#include "store/persist.h"
#include "store/pg.h"
#include "support/clock.h"
#include "support/log.h"


typedef struct entry {
    struct entry *next;
    /* pg committer: the record, owned (one allocation after the entry), and its outcome */
    cn_pg_put_t put;
    int status;
    int decided; /* mu */
    uint64_t seq;
    uint64_t failed_at_push; /* the ring's failed_count before the push */
    uint64_t deadline_ms;
    int timed_out;
    cn_commit_done_cb done;
    void *arg;
} entry_t;

struct cn_committer {
    cn_store_t *store; /* sync committer */

    /* ring committer */
    cn_ring_t *ring;
    int persist_efd, ack_efd;
    _Atomic uint32_t *persister_idle; /* NULL: always wake the persister */
    uint32_t timeout_ms;
    pthread_mutex_t mu;
    entry_t *head, *tail;
    atomic_uint pending;

    /* pg committer: a thread commits what was submitted, in order, a batch per
     * transaction; head..send are taken (or decided), send..tail wait for it. */
    cn_pg_t *pg;
    pthread_t thread;
    pthread_cond_t cond; /* mu: something to send, or stop */
    entry_t *send;
    int stop, thread_started;
    int last_error; /* mu */
    cn_shm_shared_t *stats;
};

int
cn__committer_new_sync(cn_store_t *store, cn_committer_t **out)
{
    cn_committer_t *c = calloc(1, sizeof(*c));

    if (!c)
        return -ENOMEM;
    c->store = store;
    *out = c;
    return 0;
}

/* Pops the entries the persister has decided and calls them back; then gives the early
 * call to entries past their deadline. One thread at a time (the worker's loop). */
void
cn__committer_poll(cn_committer_t *c)
{
    entry_t *done = NULL, **last = &done, *e;
    uint64_t acked = 0, now;

    if (!c->ring && !c->pg)
        return;
    if (c->ring)
        acked = atomic_load_explicit(&c->ring->acked_seq, memory_order_acquire);
    pthread_mutex_lock(&c->mu);
    while (c->head && (c->pg ? c->head->decided : c->head->seq <= acked)) {
        e = c->head;
        c->head = e->next;
        if (!c->head)
            c->tail = NULL;
        e->next = NULL;
        *last = e;
        last = &e->next;
    }
    pthread_mutex_unlock(&c->mu);
    while ((e = done)) {
        done = e->next;
        /* The persister's reason (ENOSPC, MDB_MAP_FULL, ...) travels with the failure. */
        if (e->done)
            e->done(c->pg ? e->status : cn__ring_result(c->ring, e->seq, e->failed_at_push), 1,
                    e->arg);
        atomic_fetch_sub(&c->pending, 1);
        free(e);
    }

    /* Entries stay in the FIFO until decided; only their timeout flag changes here, and
     * only the polling thread reads or writes it. The producers only append. */
    now = cn__clock_mono_ms();
    pthread_mutex_lock(&c->mu);
    e = c->head;
    pthread_mutex_unlock(&c->mu);
    for (; e && e->deadline_ms <= now; ) {
        entry_t *next;
        if (!e->timed_out) {
            e->timed_out = 1;
            if (e->done)
                e->done(-ETIMEDOUT, 0, e->arg);
        }
        pthread_mutex_lock(&c->mu);
        next = e->next;
        pthread_mutex_unlock(&c->mu);
        e = next;
    }
}

uint64_t
cn__committer_next_deadline_ms(cn_committer_t *c)
{
    uint64_t until = UINT64_MAX;
    entry_t *e;

    if (!c->ring && !c->pg)
        return until;
    pthread_mutex_lock(&c->mu);
    for (e = c->head; e && e->timed_out; e = e->next)
        ;
    if (e)
        until = e->deadline_ms;
    pthread_mutex_unlock(&c->mu);
    return until;
}

int
cn__committer_ack_fd(const cn_committer_t *c)
{
    return c->ring || c->pg ? c->ack_efd : -1;
}

/* ---- the pg committer ---- */

/* At most this many records per transaction: a batch holds the event head's row lock
 * for its whole length, so other hosts' batches with events wait on it. */
#define PG_BATCH_MAX 256

static void
signal_ack(cn_committer_t *c)
{
    uint64_t one = 1;

    if (write(c->ack_efd, &one, sizeof(one)) < 0 && errno != EAGAIN)
        cn_log_warn("waking the worker: %s", strerror(errno));
}

static void
count_commit(cn_shm_shared_t *st, size_t n, const cn_pg_put_t *items, int rc, uint64_t us)
{
    static const uint64_t sync_bounds[] = CN_SHM_SYNC_BOUNDS_US;
    static const uint64_t batch_bounds[] = CN_SHM_BATCH_BOUNDS;

    atomic_fetch_add_explicit(&st->commits, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&st->commit_records, n, memory_order_relaxed);
    atomic_fetch_add_explicit(&st->commit_us_sum, us, memory_order_relaxed);
    cn__shm_observe(st->commit_buckets, sync_bounds, CN_SHM_SYNC_BUCKETS, us);
    cn__shm_observe(st->batch_buckets, batch_bounds, CN_SHM_BATCH_BUCKETS, n);
    if (rc) {
        atomic_fetch_add_explicit(&st->commit_failures, 1, memory_order_relaxed);
        return;
    }
    for (size_t i = 0; i < n; i++)
        if (items[i].put.status == CN_ELOST)
            atomic_fetch_add_explicit(&st->lost, 1, memory_order_relaxed);
}

static void *
pg_main(void *arg)
{
    cn_committer_t *c = arg;
    cn_pg_put_t items[PG_BATCH_MAX];
    entry_t *batch[PG_BATCH_MAX];
    char err[256];
    int down = 0;

    for (;;) {
        size_t n = 0;
        uint64_t t0;
        int rc;

        pthread_mutex_lock(&c->mu);
        while (!c->send && !c->stop)
            pthread_cond_wait(&c->cond, &c->mu);
        if (!c->send) {
            pthread_mutex_unlock(&c->mu);
            break;
        }
        for (entry_t *e = c->send; e && n < PG_BATCH_MAX; e = e->next)
            batch[n++] = e;
        c->send = batch[n - 1]->next;
        pthread_mutex_unlock(&c->mu);

        for (size_t i = 0; i < n; i++)
            items[i] = batch[i]->put;
        /* A lost connection is reconnected before the batch; a batch that fails is
         * failed whole (nothing of it was committed, or the COMMIT's outcome is unknown:
         * the claims stay until their leases end, so a retry replays or takes over). */
        t0 = cn__clock_mono_us();
        for (int attempt = 0; attempt < 2; attempt++) {
            /* Once more on a connection found lost during the batch (the server restarted
             * just before): if its COMMIT did go through, the claims are gone and the
             * records come back CN_ELOST, answered 503 and replayed by the retry. */
            if ((rc = cn__pg_reset(c->pg, err, sizeof(err))))
                break;
            rc = cn__pg_apply(c->pg, items, n, (int64_t)cn__clock_wall_ms(), NULL, err,
                              sizeof(err));
            if (rc != CN_ESTORE || cn__pg_connected(c->pg))
                break;
        }
        if (c->stats)
            count_commit(c->stats, n, items, rc, cn__clock_mono_us() - t0);
        if (rc && !down)
            cn_log_error("committing %zu records to PostgreSQL failed: %s", n, err);
        else if (!rc && down)
            cn_log_info("PostgreSQL commits succeed again");
        down = rc != 0;
        pthread_mutex_lock(&c->mu);
        for (size_t i = 0; i < n; i++) {
            batch[i]->status = rc ? rc : items[i].put.status;
            batch[i]->decided = 1;
        }
        if (rc)
            c->last_error = rc;
        pthread_mutex_unlock(&c->mu);
        signal_ack(c);
    }
    return NULL;
}

int
cn__committer_new_pg(const char *url, int ack_efd, uint32_t timeout_ms,
                     cn_shm_shared_t *stats, cn_committer_t **out, char *err, size_t errlen)
{
    cn_committer_t *c = calloc(1, sizeof(*c));
    int rc;

    if (!c)
        return -ENOMEM;
    if ((rc = cn__pg_open(url, &c->pg, err, errlen))) {
        free(c);
        return rc;
    }
    c->ack_efd = ack_efd;
    c->timeout_ms = timeout_ms;
    c->stats = stats;
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cond, NULL);
    if ((rc = pthread_create(&c->thread, NULL, pg_main, c))) {
        pthread_cond_destroy(&c->cond);
        pthread_mutex_destroy(&c->mu);
        cn__pg_close(c->pg);
        free(c);
        return -rc;
    }
    c->thread_started = 1;
    *out = c;
    return 0;
}

/* Stops the commit thread once it has finished the batch it is in (bounded by the
 * connection's timeouts); entries it never took stay undecided. */
static void
stop_pg(cn_committer_t *c)
{
    pthread_mutex_lock(&c->mu);
    c->stop = 1;
    c->send = NULL;
    pthread_cond_signal(&c->cond);
    pthread_mutex_unlock(&c->mu);
    if (c->thread_started)
        pthread_join(c->thread, NULL);
    pthread_cond_destroy(&c->cond);
    cn__pg_close(c->pg);
}

static char *
copy_in(char **p, const void *src, size_t len)
{
    char *at = *p;

    if (len)
        memcpy(at, src, len);
    *p += len;
    return at;
}

/* Queues a record (item), or an ordinary route's events (item NULL), for the commit
 * thread: copied whole, the caller's buffers are free once this returns. */
static int
submit_pg(cn_committer_t *c, const cn_store_put_t *item, const uint8_t *events, size_t len,
          cn_commit_done_cb done, void *arg)
{
    size_t reclen = 0, keylen = 0, ownlen = 0, evlen = len, aplen = 0;
    entry_t *e;
    char *p;
    int rc;

    if (item) {
        reclen = cn__record_encoded_size(item->rec);
        keylen = item->keylen;
        ownlen = item->owner ? strlen(item->owner) + 1 : 0;
        events = item->events;
        evlen = item->events_len;
        aplen = item->appends_len;
        if (cn__committer_record_size(item) > CN_RECORD_FIELD_MAX)
            return CN_ETOOBIG;
    }
    if (!(e = calloc(1, sizeof(*e) + reclen + keylen + ownlen + evlen + aplen)))
        return -ENOMEM;
    p = (char *)(e + 1);
    if (item) {
        uint8_t *rec = (uint8_t *)p;
        size_t wrote;
        if ((rc = cn__record_encode(item->rec, rec, reclen, &wrote))) {
            free(e);
            return rc;
        }
        p += wrote;
        e->put.put.bytes = rec;
        e->put.put.len = wrote;
        e->put.put.key = copy_in(&p, item->key, keylen);
        e->put.put.keylen = keylen;
        if (item->owner)
            e->put.owner = copy_in(&p, item->owner, ownlen);
        if (item->appends) {
            e->put.put.appends = (const uint8_t *)copy_in(&p, item->appends, aplen);
            e->put.put.appends_len = aplen;
        }
    }
    if (events && evlen) {
        e->put.put.events = (const uint8_t *)copy_in(&p, events, evlen);
        e->put.put.events_len = evlen;
    }
    e->done = done;
    e->arg = arg;
    e->deadline_ms = cn__clock_mono_ms() + c->timeout_ms;
    pthread_mutex_lock(&c->mu);
    if (c->tail)
        c->tail->next = e;
    else
        c->head = e;
    c->tail = e;
    if (!c->send)
        c->send = e;
    atomic_fetch_add(&c->pending, 1);
    pthread_cond_signal(&c->cond);
    pthread_mutex_unlock(&c->mu);
    return 0;
}

int
cn__committer_new_ring(cn_ring_t *ring, int persist_efd, int ack_efd, uint32_t timeout_ms,
                       cn_committer_t **out)
{
    cn_committer_t *c = calloc(1, sizeof(*c));

    if (!c)
        return -ENOMEM;
    c->ring = ring;
    c->persist_efd = persist_efd;
    c->ack_efd = ack_efd;
    c->timeout_ms = timeout_ms;
    pthread_mutex_init(&c->mu, NULL);
    *out = c;
    return 0;
}

void
cn__committer_set_idle_flag(cn_committer_t *c, _Atomic uint32_t *idle)
{
    c->persister_idle = idle;
}

/* Wakes the persister after a push, unless it is busy (it then finds the record itself
 * before it sleeps). The fence orders the push before the flag's load, against the
 * persister's store of the flag before it looks at the rings: one of the two sees the
 * other. */
static void
wake_persister(cn_committer_t *c)
{
    uint64_t one = 1;

    if (c->persister_idle) {
        atomic_thread_fence(memory_order_seq_cst);
        if (!atomic_load_explicit(c->persister_idle, memory_order_relaxed))
            return;
    }
    if (write(c->persist_efd, &one, sizeof(one)) < 0 && errno != EAGAIN)
        cn_log_warn("waking the persister: %s", strerror(errno));
}

unsigned
cn__committer_pending(cn_committer_t *c)
{
    return atomic_load(&c->pending);
}

void
cn__committer_free(cn_committer_t *c, uint32_t wait_ms)
{
    uint64_t deadline;

    if (!c)
        return;
    if (c->ring || c->pg) {
        /* Nobody polls any more: wait here for the last decisions, bounded. */
        deadline = cn__clock_mono_ms() + wait_ms;
        cn__committer_poll(c);
        while (atomic_load(&c->pending)) {
            uint64_t now = cn__clock_mono_ms();
            struct pollfd p = {c->ack_efd, POLLIN, 0};
            uint64_t v;
            if (now >= deadline)
                break;
            if (poll(&p, 1, (int)(deadline - now)) > 0 && read(c->ack_efd, &v, sizeof(v)) < 0 &&
                errno != EAGAIN)
                cn_log_warn("reading the ack eventfd: %s", strerror(errno));
            cn__committer_poll(c);
        }
        if (c->pg)
            stop_pg(c);
        while (c->head) {
            entry_t *e = c->head;
            c->head = e->next;
            if (e->done)
                e->done(-ECANCELED, 2, e->arg);
            free(e);
        }
        pthread_mutex_destroy(&c->mu);
    }
    free(c);
}

size_t
cn__committer_record_max(const cn_committer_t *c)
{
    return c->ring ? cn__ring_max_payload(c->ring) : (size_t)CN_RECORD_FIELD_MAX;
}

int
cn__committer_recent_error(const cn_committer_t *c)
{
    int rc = -EIO;

    if (c->ring)
        return cn__ring_recent_error(c->ring);
    if (c->pg) {
        pthread_mutex_lock((pthread_mutex_t *)&c->mu);
        rc = c->last_error ? c->last_error : -EIO;
        pthread_mutex_unlock((pthread_mutex_t *)&c->mu);
    }
    return rc;
}

size_t
cn__committer_record_size(const cn_store_put_t *item)
{
    if (item->appends)
        return cn__persist_streams_size(item->keylen, item->rec, item->events_len,
                                        item->appends_len);
    return cn__persist_record_size(item->keylen, item->rec, item->events_len);
}

int
cn__committer_submit(cn_committer_t *c, const cn_store_put_t *item, cn_commit_done_cb done,
                     void *arg)
{
    cn_ring_slot_t slot;
    uint8_t *p;
    size_t need, len;
    entry_t *e;
    int rc;

    if (c->pg)
        return submit_pg(c, item, NULL, 0, done, arg);
    if (!c->ring) {
        done(cn__store_put(c->store, item, 1), 1, arg);
        return 0;
    }
    need = cn__committer_record_size(item);
    if (need > cn__ring_max_payload(c->ring))
        return CN_ETOOBIG;
    if (!(e = calloc(1, sizeof(*e))))
        return -ENOMEM;
    e->done = done;
    e->arg = arg;
    e->deadline_ms = cn__clock_mono_ms() + c->timeout_ms;
    pthread_mutex_lock(&c->mu);
    e->failed_at_push = atomic_load_explicit(&c->ring->failed_count, memory_order_acquire);
    /* The record is encoded straight into the ring and published there. */
    if ((p = cn__ring_reserve(c->ring, need, &slot, &rc))) {
        rc = item->appends
                 ? cn__persist_streams_encode(p, need, item->key, item->keylen, item->rec,
                                              item->events, item->events_len, item->appends,
                                              item->appends_len, &len)
                 : cn__persist_record_encode(p, need, item->key, item->keylen, item->rec,
                                             item->events, item->events_len, &len);
    }
    if (p && rc == 0) {
        e->seq = cn__ring_publish(c->ring, &slot, p[1], len);
        if (c->tail)
            c->tail->next = e;
        else
            c->head = e;
        c->tail = e;
        atomic_fetch_add(&c->pending, 1);
        e = NULL;
    }
    pthread_mutex_unlock(&c->mu);
    if (rc == 0)
        wake_persister(c);
    free(e);
    return rc;
}

int
cn__committer_submit_events(cn_committer_t *c, const uint8_t *events, size_t len)
{
    uint8_t stackbuf[4096], *buf = stackbuf;
    size_t need = cn__persist_record_size(0, NULL, len), n;
    uint64_t seq;
    int rc;

    if (c->pg)
        return submit_pg(c, NULL, events, len, NULL, NULL);
    if (!c->ring)
        return cn__store_append_events(c->store, events, len);
    if (need > cn__ring_max_payload(c->ring))
        return CN_ETOOBIG;
    if (need > sizeof(stackbuf) && !(buf = malloc(need)))
        return -ENOMEM;
    rc = cn__persist_record_encode(buf, need, NULL, 0, NULL, events, len, &n);
    if (rc == 0) {
        /* Nobody waits for these: the persister acks them like any record. */
        pthread_mutex_lock(&c->mu);
        rc = cn__ring_push(c->ring, CN_PERSIST_EVENTS, buf, n, &seq);
        pthread_mutex_unlock(&c->mu);
        if (rc == 0)
            wake_persister(c);
    }
    if (buf != stackbuf)
        free(buf);
    return rc;
}
