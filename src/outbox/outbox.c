/*
 * outbox/outbox.c - the public outbox (cnerium/outbox.h): configuration, the store's
 * front door, and the worker that sends what is due.
 *
 * A tick is three steps: claim (one commit: due operations become Inflight under this
 * worker's lease), send (libcurl, in parallel), finish (one commit: every result).
 * Between the two commits the operations are Inflight; a worker killed there leaves
 * them to the next worker_start, which gives them back.
 *
 * Origins ("scheme://host:port") carry what the worker learned about them: an origin
 * that refused a connection is offline until the failed operation's next try, and its
 * other operations wait without spending an attempt; an origin not yet known to answer
 * gets one request first (a scout) and the rest only once that one got an HTTP answer,
 * so a server that is down costs one attempt per backoff step, not one per operation.
 *
 * One thread at a time per cn_outbox_t.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "outbox/op.h"
#include "outbox/policy.h"
#include "outbox/queue.h"
#include "outbox/transport.h"

#define ORIGIN_MAX 512     /* bytes of "scheme://host:port" */
#define ORIGINS_KEPT 1024  /* origins remembered; past this, known-good ones are dropped */

typedef struct {
    char name[ORIGIN_MAX];
    int64_t offline_until; /* 0: not offline */
    int good;              /* answered over HTTP since it was last unreachable */
    uint64_t probed_tick;  /* the tick in which the probe was last asked */
    int probe_ok;          /* its answer then */
    uint64_t scout_tick;   /* the tick in which a scout went out */
    uint32_t streak;       /* ticks in a row that failed to connect: the backoff step */
    uint64_t failed_tick;  /* the last tick in which a connection to it failed */
    struct item *waiting;  /* this tick's operations held behind the scout */
} origin_t;

struct cn_outbox {
    char *dir;
    cn_outbox_config_t cfg;
    cn__outbox_queue_t *q;
    /* The worker (after cn_outbox_worker_start). */
    int lock_fd;
    uint64_t owner;
    cn__outbox_transport_t *transport;
    origin_t *origins;
    size_t norigins;
    uint64_t tick_no;
    int claims_left;       /* a tick failed after its claim: Inflight leases to reclaim */
    uint64_t rng;
};

void
cn_outbox_config_default(cn_outbox_config_t *c)
{
    memset(c, 0, sizeof(*c));
    cn_outbox_policy_default(&c->retry);
    c->batch_limit = 64;
    c->max_parallel = 16;
    c->request_timeout_ms = 30000;
    c->connect_timeout_ms = 5000;
    c->lease_ms = 0; /* request_timeout_ms + 30000 */
    c->done_retention_ms = 7ull * 24 * 3600 * 1000;
    c->map_size = 1ull << 30;
}

int64_t
cn_outbox_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int
cn_outbox_open(const char *dir, const cn_outbox_config_t *cfg, cn_outbox_t **out)
{
    cn_outbox_t *ob;
    const char *why;
    int rc;

    if (!dir || !*dir || !out)
        return -EINVAL;
    ob = calloc(1, sizeof(*ob));
    if (!ob)
        return -ENOMEM;
    ob->lock_fd = -1;
    if (cfg)
        ob->cfg = *cfg;
    else
        cn_outbox_config_default(&ob->cfg);
    if (cn_outbox_policy_check(&ob->cfg.retry, &why) || ob->cfg.batch_limit == 0 ||
        ob->cfg.batch_limit > 100000 || ob->cfg.max_parallel == 0 ||
        ob->cfg.max_parallel > 1024 || ob->cfg.request_timeout_ms == 0 ||
        ob->cfg.connect_timeout_ms == 0 || ob->cfg.map_size < (1u << 20)) {
        free(ob);
        return -EINVAL;
    }
    if (ob->cfg.lease_ms == 0)
        ob->cfg.lease_ms = ob->cfg.request_timeout_ms + 30000;
    ob->dir = strdup(dir);
    if (!ob->dir) {
        free(ob);
        return -ENOMEM;
    }
    rc = cn__outbox_queue_open(dir, ob->cfg.map_size, &ob->q);
    if (rc) {
        free(ob->dir);
        free(ob);
        return rc;
    }
    *out = ob;
    return 0;
}

void
cn_outbox_close(cn_outbox_t *ob)
{
    if (!ob)
        return;
    cn__outbox_transport_free(ob->transport);
    if (ob->lock_fd >= 0)
        close(ob->lock_fd); /* releases the worker lock */
    free(ob->origins);
    cn__outbox_queue_close(ob->q);
    free(ob->dir);
    free(ob);
}

int
cn_outbox_enqueue(cn_outbox_t *ob, const cn_outbox_spec_t *spec, int64_t now_ms,
                  char id_out[CN_OUTBOX_ID_SIZE])
{
    return cn_outbox_enqueue_many(ob, spec, 1, now_ms, (char(*)[CN_OUTBOX_ID_SIZE])id_out);
}

int
cn_outbox_enqueue_many(cn_outbox_t *ob, const cn_outbox_spec_t *specs, size_t n,
                       int64_t now_ms, char (*ids_out)[CN_OUTBOX_ID_SIZE])
{
    char(*ids)[CN_OUTBOX_ID_SIZE];
    int rc;

    if (!ob || (n && (!specs || !ids_out)))
        return -EINVAL;
    if (n == 0)
        return 0;
    for (size_t i = 0; i < n; i++)
        if ((rc = cn_outbox_spec_check(&specs[i], NULL)))
            return rc;
    /* Ids land in the caller's array only once the commit made them real. */
    ids = malloc(n * sizeof(*ids));
    if (!ids)
        return -ENOMEM;
    rc = cn__outbox_queue_enqueue(ob->q, specs, n, now_ms, ids);
    if (rc == 0)
        memcpy(ids_out, ids, n * sizeof(*ids));
    free(ids);
    return rc;
}

int
cn_outbox_get(cn_outbox_t *ob, const char *id, cn_outbox_op_t **out)
{
    if (!ob || !id || !out)
        return -EINVAL;
    return cn__outbox_queue_get(ob->q, id, out);
}

int
cn_outbox_list(cn_outbox_t *ob, int status, cn_outbox_list_cb cb, void *ctx)
{
    if (!ob || !cb)
        return -EINVAL;
    return cn__outbox_queue_list(ob->q, status, cb, ctx);
}

int
cn_outbox_requeue(cn_outbox_t *ob, const char *id, int64_t now_ms)
{
    if (!ob || !id)
        return -EINVAL;
    return cn__outbox_queue_requeue(ob->q, id, now_ms);
}

int
cn_outbox_stats(cn_outbox_t *ob, cn_outbox_stats_t *out)
{
    if (!ob || !out)
        return -EINVAL;
    return cn__outbox_queue_stats(ob->q, out);
}

int
cn_outbox_compact(cn_outbox_t *ob, int64_t now_ms, size_t limit)
{
    if (!ob)
        return -EINVAL;
    if (ob->cfg.done_retention_ms == 0)
        return 0;
    return cn__outbox_queue_compact(ob->q, now_ms - (int64_t)ob->cfg.done_retention_ms, limit);
}

/* --- the worker ---------------------------------------------------------------- */

static uint64_t
next_random(cn_outbox_t *ob)
{
    /* xorshift64*, seeded from getrandom: jitter needs spread, not secrecy. */
    uint64_t x = ob->rng;

    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    ob->rng = x;
    return x * 2685821657736338717ull;
}

int
cn_outbox_worker_start(cn_outbox_t *ob, int64_t now_ms, int *holder_pid)
{
    char path[4096], pid[32];
    int fd, rc, n;

    if (!ob)
        return -EINVAL;
    if (ob->lock_fd >= 0)
        return -EALREADY;
    if ((size_t)snprintf(path, sizeof(path), "%s/worker.lock", ob->dir) >= sizeof(path))
        return -ENAMETOOLONG;
    fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        return -errno;
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        rc = errno == EWOULDBLOCK ? -EBUSY : -errno;
        if (holder_pid) {
            ssize_t got = pread(fd, pid, sizeof(pid) - 1, 0);
            *holder_pid = got > 0 ? (pid[got] = '\0', atoi(pid)) : 0;
        }
        close(fd);
        return rc;
    }
    n = snprintf(pid, sizeof(pid), "%d\n", (int)getpid());
    if (ftruncate(fd, 0) != 0 || pwrite(fd, pid, (size_t)n, 0) != n) {
        /* The pid is only a hint for the message of a second worker. */
    }
    if (getrandom(&ob->owner, sizeof(ob->owner), 0) != sizeof(ob->owner) ||
        getrandom(&ob->rng, sizeof(ob->rng), 0) != sizeof(ob->rng)) {
        close(fd);
        return -EIO;
    }
    ob->owner |= 1; /* 0 means "no owner" in a record */
    ob->rng |= 1;
    rc = cn__outbox_transport_new(ob->cfg.connect_timeout_ms, ob->cfg.request_timeout_ms,
                                  ob->cfg.max_parallel, &ob->transport);
    if (rc) {
        close(fd);
        return rc;
    }
    /* We hold the lock, so whoever leased an Inflight operation is gone. */
    rc = cn__outbox_queue_recover(ob->q, ob->owner, now_ms, ob->cfg.retry.max_attempts, 0);
    if (rc < 0) {
        cn__outbox_transport_free(ob->transport);
        ob->transport = NULL;
        close(fd);
        return rc;
    }
    ob->lock_fd = fd;
    return 0;
}

static origin_t *
origin_find(cn_outbox_t *ob, const char *name, int create)
{
    for (size_t i = 0; i < ob->norigins; i++)
        if (strcmp(ob->origins[i].name, name) == 0)
            return &ob->origins[i];
    if (!create)
        return NULL;
    if (ob->norigins == ORIGINS_KEPT)
        return NULL; /* its operations go out without scouting */
    if (!ob->origins) {
        ob->origins = calloc(ORIGINS_KEPT, sizeof(*ob->origins));
        if (!ob->origins)
            return NULL;
    }
    origin_t *o = &ob->origins[ob->norigins++];
    memset(o, 0, sizeof(*o));
    snprintf(o->name, sizeof(o->name), "%s", name);
    return o;
}

/* Between ticks (no pointers into the table are held): forgets the origins with
 * nothing to remember once the table fills up. */
static void
origins_trim(cn_outbox_t *ob, int64_t now)
{
    size_t kept = 0;

    if (ob->norigins < ORIGINS_KEPT * 3 / 4)
        return;
    for (size_t i = 0; i < ob->norigins; i++)
        if (ob->origins[i].offline_until > now)
            ob->origins[kept++] = ob->origins[i];
    ob->norigins = kept;
}

static int
origin_of(const char *url, size_t len, char *out)
{
    char buf[CN_OUTBOX_URL_MAX + 1];

    if (len > CN_OUTBOX_URL_MAX)
        return -EINVAL;
    memcpy(buf, url, len);
    buf[len] = '\0';
    return cn__outbox_url_origin(buf, out, ORIGIN_MAX, NULL);
}

typedef struct {
    cn_outbox_t *ob;
    int64_t now;
    uint32_t offline;
} scan_t;

/* Claim filter: 0 to send, the end of the offline time of the operation's origin
 * (passive detection: the operation is deferred to then), or 1, "not now", when the
 * probe reports the origin unreachable (asked again next tick, nothing deferred, so the
 * operations go as soon as it says yes). */
static int64_t
eligible(void *ctx, const cn__outbox_rec_t *rec)
{
    scan_t *s = ctx;
    cn_outbox_t *ob = s->ob;
    char name[ORIGIN_MAX];
    origin_t *o;

    if (origin_of(rec->url, rec->url_len, name) != 0)
        return 0; /* checked at enqueue; if it fails now, the try will say why */
    o = origin_find(ob, name, ob->cfg.probe != NULL);
    if (o && o->offline_until > s->now) {
        s->offline++;
        return o->offline_until;
    }
    if (o && ob->cfg.probe) {
        if (o->probed_tick != ob->tick_no) {
            o->probed_tick = ob->tick_no;
            o->probe_ok = ob->cfg.probe(ob->cfg.probe_ctx, name) != 0;
            if (!o->probe_ok)
                o->good = 0;
        }
        if (!o->probe_ok) {
            s->offline++;
            return 1;
        }
    }
    return 0;
}

/* One claimed operation on its way. */
typedef struct item {
    cn__outbox_xfer_t x;
    cn__outbox_claim_t *claim;
    origin_t *origin; /* NULL when forgotten or unparsable: sent without scouting */
    struct item *next_waiting; /* behind its origin's scout */
    int sent;
    int done;
    cn__outbox_result_t result;
    cn__outbox_decision_t decision;
} item_t;

typedef struct {
    cn_outbox_t *ob;
    int64_t now;
    item_t *items;
    size_t n;
    cn_outbox_tick_t *report;
} run_t;

/* Sends the operations held behind it's origin (it answered), or gives them back
 * untried (it is unreachable). */
static void
release_waiting(run_t *r, item_t *it, int reachable)
{
    item_t *w, *next;

    for (w = it->origin->waiting, it->origin->waiting = NULL; w; w = next) {
        next = w->next_waiting;
        w->next_waiting = NULL;
        if (reachable) {
            w->sent = 1;
            cn__outbox_transport_start(r->ob->transport, &w->x);
        } else {
            w->done = 1;
            w->result.end = CN__OUTBOX_END_UNTRIED;
            w->result.next_attempt_at = it->origin->offline_until;
            if (w->claim->prev_next_attempt_at > w->result.next_attempt_at)
                w->result.next_attempt_at = w->claim->prev_next_attempt_at;
            r->report->offline++;
        }
    }
}

static void
on_done(void *ctx, cn__outbox_xfer_t *x)
{
    run_t *r = ctx;
    item_t *it = x->user;
    cn_outbox_t *ob = r->ob;
    int64_t now = r->now; /* a tick's results are timed from its `now`: exact in tests */

    it->done = 1;
    cn__outbox_decide(&ob->cfg.retry, &x->answer, it->claim->attempt, now, next_random(ob),
                      &it->decision);
    it->result.http_status = x->answer.transport_error ? 0 : x->answer.http_status;
    switch (it->decision.verdict) {
    case CN__OUTBOX_DONE:
        it->result.end = CN__OUTBOX_END_DONE;
        it->result.answer = x->body;
        it->result.answer_len = x->body_len;
        it->result.truncated = x->truncated;
        r->report->done++;
        break;
    case CN__OUTBOX_RETRY:
        it->result.end = CN__OUTBOX_END_RETRY;
        it->result.next_attempt_at = it->decision.next_attempt_at;
        it->result.error = it->decision.error;
        r->report->retried++;
        break;
    case CN__OUTBOX_FAIL:
        it->result.end = CN__OUTBOX_END_FAIL;
        it->result.error = it->decision.error;
        r->report->failed++;
        break;
    }
    if (x->answer.connect_failed && it->origin) {
        /* Nothing reached the server: not an attempt. The origin is what failed, so the
         * origin backs off (its own step count, jittered), and every operation for it,
         * this one included, waits for the end of that without spending an attempt. An
         * outage, however long, makes no operation Failed. */
        origin_t *o = it->origin;
        if (o->failed_tick != ob->tick_no) {
            o->failed_tick = ob->tick_no;
            /* One step per outage seen, not per request that saw it: the requests
             * already in flight to a server that just went down all fail together. */
            if (o->streak < 64)
                o->streak++;
            o->offline_until = now + (int64_t)cn_outbox_backoff_ms(&ob->cfg.retry, o->streak,
                                                                   next_random(ob));
        }
        o->good = 0;
        if (it->decision.verdict == CN__OUTBOX_RETRY)
            r->report->retried--;
        else
            r->report->failed--;
        r->report->unreached++;
        it->result.end = CN__OUTBOX_END_UNTRIED;
        it->result.next_attempt_at = o->offline_until;
        it->result.error = it->decision.error;
        release_waiting(r, it, 0);
        return;
    }
    if (!it->origin)
        return;
    if (!x->answer.transport_error) {
        it->origin->good = 1;
        it->origin->streak = 0;
        it->origin->offline_until = 0;
        release_waiting(r, it, 1);
    } else {
        /* Connected but the exchange failed: the origin is there; the next one goes. */
        item_t *w = it->origin->waiting;
        if (w) {
            it->origin->waiting = w->next_waiting;
            w->next_waiting = NULL;
            w->sent = 1;
            cn__outbox_transport_start(ob->transport, &w->x);
        }
    }
}

int
cn_outbox_tick(cn_outbox_t *ob, int64_t now_ms, cn_outbox_tick_t *report)
{
    cn_outbox_tick_t local;
    cn__outbox_claim_t *claims = NULL;
    cn__outbox_result_t *results = NULL;
    item_t *items = NULL;
    size_t n = 0;
    scan_t scan;
    run_t run;
    int rc;

    if (!ob)
        return -EINVAL;
    if (ob->lock_fd < 0)
        return CN_ESTATE;
    if (!report)
        report = &local;
    memset(report, 0, sizeof(*report));
    ob->tick_no++;
    origins_trim(ob, now_ms);
    /* Claims a failed tick left Inflight (its finish could not commit) come back once
     * their lease runs out. Only this worker claims in this directory, so only a tick
     * that failed after its claim can have left any: no write transaction otherwise. */
    if (ob->claims_left) {
        rc = cn__outbox_queue_recover(ob->q, ob->owner, now_ms, ob->cfg.retry.max_attempts, 1);
        if (rc < 0)
            return rc;
        report->expired = (uint32_t)rc;
        if (rc > 0)
            ob->claims_left = 0;
    }
    scan.ob = ob;
    scan.now = now_ms;
    scan.offline = 0;
    rc = cn__outbox_queue_claim(ob->q, now_ms, ob->cfg.batch_limit, ob->cfg.fifo_per_target,
                                ob->owner, now_ms + (int64_t)ob->cfg.lease_ms, eligible, &scan,
                                &claims, &n, NULL);
    report->offline = scan.offline;
    if (rc || n == 0)
        return rc;
    items = calloc(n, sizeof(*items));
    results = calloc(n, sizeof(*results));
    if (!items || !results) {
        rc = -ENOMEM;
        goto out; /* the claims stay Inflight until their lease runs out */
    }
    for (size_t i = 0; i < n; i++) {
        item_t *it = &items[i];
        char name[ORIGIN_MAX];

        it->claim = &claims[i];
        it->x.id = claims[i].id;
        it->x.method = claims[i].method;
        it->x.url = claims[i].url;
        it->x.headers = claims[i].headers;
        it->x.headers_len = claims[i].headers_len;
        it->x.payload = claims[i].payload;
        it->x.payload_len = claims[i].payload_len;
        it->x.user = it;
        it->result.id = claims[i].id;
        if (origin_of(claims[i].url, strlen(claims[i].url), name) == 0)
            it->origin = origin_find(ob, name, 1);
    }
    run.ob = ob;
    run.now = now_ms;
    run.items = items;
    run.n = n;
    run.report = report;
    /* Known-good origins get everything at once; others one scout each, the rest wait
     * behind it (in claim order). */
    for (size_t i = n; i-- > 0;)
        if (items[i].origin) {
            items[i].origin->waiting = NULL;
            items[i].origin->scout_tick = 0;
        }
    for (size_t i = n; i-- > 0;) {
        item_t *it = &items[i];
        if (it->origin && !it->origin->good) {
            it->next_waiting = it->origin->waiting;
            it->origin->waiting = it;
        }
    }
    for (size_t i = 0; i < n; i++) {
        item_t *it = &items[i];

        if (it->origin && !it->origin->good) {
            if (it->origin->scout_tick == ob->tick_no)
                continue;
            it->origin->scout_tick = ob->tick_no;
            it->origin->waiting = it->next_waiting; /* the scout is first in its list */
            it->next_waiting = NULL;
        }
        it->sent = 1;
        cn__outbox_transport_start(ob->transport, &it->x);
    }
    cn__outbox_transport_run(ob->transport, on_done, &run);
    for (size_t i = 0; i < n; i++)
        if (items[i].origin)
            items[i].origin->waiting = NULL;
    report->claimed = 0;
    for (size_t i = 0; i < n; i++) {
        if (!items[i].done) {
            /* Not reached (a scout's origin state changed under it): give back. */
            items[i].result.end = CN__OUTBOX_END_UNTRIED;
            items[i].result.next_attempt_at = now_ms;
            report->offline++;
        }
        if (items[i].x.answer.connect_failed || items[i].result.end != CN__OUTBOX_END_UNTRIED)
            report->claimed++;
        results[i] = items[i].result;
    }
    rc = cn__outbox_queue_finish(ob->q, results, n, ob->owner, now_ms);
out:
    if (rc)
        ob->claims_left = 1; /* claims committed, results not */
    for (size_t i = 0; items && i < n; i++)
        cn__outbox_xfer_clear(&items[i].x);
    free(items);
    free(results);
    cn__outbox_claims_free(claims, n);
    return rc ? rc : (int)report->claimed;
}

static int64_t
adjust_due(void *ctx, const cn__outbox_rec_t *rec)
{
    cn_outbox_t *ob = ctx;
    char name[ORIGIN_MAX];
    origin_t *o;

    if (origin_of(rec->url, rec->url_len, name) != 0)
        return rec->next_attempt_at;
    o = origin_find(ob, name, 0);
    if (o && o->offline_until > rec->next_attempt_at)
        return o->offline_until;
    return rec->next_attempt_at;
}

int64_t
cn_outbox_next_due(cn_outbox_t *ob)
{
    if (!ob)
        return -1;
    return cn__outbox_queue_next_due(ob->q, adjust_due, ob);
}
