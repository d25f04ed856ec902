/*
 * store/claimer.c - the claimer's thread and its two lists (see claimer.h).
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cnerium/error.h"
#include "store/claimer.h"
#include "support/clock.h"
#include "support/log.h"

struct cn_claimer {
    cn_pg_t *pg; /* the thread's */
    int done_efd;
    cn_shm_shared_t *stats;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cond; /* mu: a job, or stop */
    cn_claim_job_t *todo, **todo_tail; /* mu */
    cn_claim_job_t *done, **done_tail; /* mu */
    atomic_uint ndone;
    int stop;
};

static void
append(cn_claim_job_t ***tail, cn_claim_job_t *job)
{
    job->next = NULL;
    **tail = job;
    *tail = &job->next;
}

/* Counts a claim's latency and outcome. */
static void
count_claim(cn_claimer_t *c, int rc, uint64_t us)
{
    static const uint64_t bounds[] = CN_SHM_SYNC_BOUNDS_US;

    if (!c->stats)
        return;
    atomic_fetch_add_explicit(&c->stats->claims, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&c->stats->claim_us_sum, us, memory_order_relaxed);
    cn__shm_observe(c->stats->claim_buckets, bounds, CN_SHM_SYNC_BUCKETS, us);
    if (rc)
        atomic_fetch_add_explicit(&c->stats->claim_failures, 1, memory_order_relaxed);
}

static void
note_health(int rc, const char *what, const char *err, int *down)
{
    if (rc && !*down)
        cn_log_error("PostgreSQL %s failed: %s", what, err);
    else if (!rc && *down)
        cn_log_info("PostgreSQL claims succeed again");
    *down = rc != 0;
}

/* Runs a release. */
static void
run_release(cn_claimer_t *c, cn_claim_job_t *job, int *down)
{
    char err[256];
    int rc;

    /* A connection that turns out lost in the middle (the server restarted just before)
     * is made again and the job run once more: releasing twice is harmless. */
    for (int attempt = 0; attempt < 2; attempt++) {
        if ((rc = cn__pg_reset(c->pg, err, sizeof(err))))
            break;
        rc = cn__pg_release(c->pg, job->skey, job->skeylen, job->owner, err, sizeof(err));
        if (rc == CN_ELOST)
            rc = 0; /* committed, or taken over: nothing of ours to end */
        if (rc != CN_ESTORE || cn__pg_connected(c->pg))
            break;
    }
    note_health(rc, "release", err, down);
}

/* Runs n claims in one round trip; each job gets its rc and claim. */
static void
run_claims(cn_claimer_t *c, cn_claim_job_t **jobs, size_t n, int *down)
{
    cn_pg_claim_req_t reqs[CN_PG_CLAIM_MANY_MAX];
    uint64_t t0 = cn__clock_mono_us(), us;
    char err[256];
    int rc;

    for (size_t i = 0; i < n; i++)
        reqs[i] = (cn_pg_claim_req_t){jobs[i]->skey, jobs[i]->skeylen, jobs[i]->fingerprint,
                                      sizeof(jobs[i]->fingerprint), jobs[i]->owner,
                                      jobs[i]->lease_ms, 0, {0}};
    /* Once more on a connection found lost in the middle: a claim asked again by its own
     * owner is still its own. */
    for (int attempt = 0; attempt < 2; attempt++) {
        if ((rc = cn__pg_reset(c->pg, err, sizeof(err))))
            break;
        rc = cn__pg_claim_many(c->pg, reqs, n, (int64_t)cn__clock_wall_ms(), err, sizeof(err));
        if (rc != CN_ESTORE || cn__pg_connected(c->pg))
            break;
    }
    us = cn__clock_mono_us() - t0;
    for (size_t i = 0; i < n; i++) {
        jobs[i]->rc = rc ? rc : reqs[i].rc;
        if (!jobs[i]->rc)
            jobs[i]->claim = reqs[i].out;
        count_claim(c, jobs[i]->rc, us);
    }
    note_health(rc, "claim", err, down);
}

/* Takes the next run of work off the queue (mu held): one release, or up to
 * CN_PG_CLAIM_MANY_MAX claims of distinct keys, in order (a release or a key already in
 * the run ends it). */
static size_t
take_run(cn_claimer_t *c, cn_claim_job_t **jobs)
{
    size_t n = 0;

    while (c->todo && n < CN_PG_CLAIM_MANY_MAX) {
        cn_claim_job_t *j = c->todo;
        int dup = 0;

        if (j->release && n)
            break;
        for (size_t i = 0; i < n && !dup; i++)
            dup = jobs[i]->skeylen == j->skeylen && !memcmp(jobs[i]->skey, j->skey, j->skeylen);
        if (dup)
            break;
        if (!(c->todo = j->next))
            c->todo_tail = &c->todo;
        jobs[n++] = j;
        if (j->release)
            break;
    }
    return n;
}

static void *
claimer_main(void *arg)
{
    cn_claimer_t *c = arg;
    cn_claim_job_t *jobs[CN_PG_CLAIM_MANY_MAX];
    int down = 0;

    for (;;) {
        uint64_t one = 1;
        size_t n;

        pthread_mutex_lock(&c->mu);
        while (!c->todo && !c->stop)
            pthread_cond_wait(&c->cond, &c->mu);
        if (c->stop) {
            pthread_mutex_unlock(&c->mu);
            break;
        }
        n = take_run(c, jobs);
        pthread_mutex_unlock(&c->mu);

        if (jobs[0]->release) {
            run_release(c, jobs[0], &down);
            free(jobs[0]);
            continue;
        }
        /* What queued while the last round trip ran goes in one: the claims' group
         * commit. */
        run_claims(c, jobs, n, &down);
        pthread_mutex_lock(&c->mu);
        for (size_t i = 0; i < n; i++)
            append(&c->done_tail, jobs[i]);
        atomic_fetch_add(&c->ndone, (unsigned)n);
        pthread_mutex_unlock(&c->mu);
        if (write(c->done_efd, &one, sizeof(one)) < 0 && errno != EAGAIN)
            cn_log_warn("waking the worker: %s", strerror(errno));
    }
    return NULL;
}

int
cn__claimer_new(const char *url, int done_efd, cn_shm_shared_t *stats, cn_claimer_t **out,
                char *err, size_t errlen)
{
    cn_claimer_t *c = calloc(1, sizeof(*c));
    int rc;

    if (!c)
        return -ENOMEM;
    if ((rc = cn__pg_open(url, &c->pg, err, errlen))) {
        free(c);
        return rc;
    }
    c->done_efd = done_efd;
    c->stats = stats;
    c->todo_tail = &c->todo;
    c->done_tail = &c->done;
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cond, NULL);
    if ((rc = pthread_create(&c->thread, NULL, claimer_main, c))) {
        pthread_cond_destroy(&c->cond);
        pthread_mutex_destroy(&c->mu);
        cn__pg_close(c->pg);
        free(c);
        return -rc;
    }
    *out = c;
    return 0;
}

void
cn__claimer_submit(cn_claimer_t *c, cn_claim_job_t *job)
{
    pthread_mutex_lock(&c->mu);
    append(&c->todo_tail, job);
    pthread_cond_signal(&c->cond);
    pthread_mutex_unlock(&c->mu);
}

cn_claim_job_t *
cn__claimer_take(cn_claimer_t *c)
{
    cn_claim_job_t *list;

    if (!atomic_load(&c->ndone))
        return NULL;
    pthread_mutex_lock(&c->mu);
    list = c->done;
    c->done = NULL;
    c->done_tail = &c->done;
    atomic_store(&c->ndone, 0);
    pthread_mutex_unlock(&c->mu);
    return list;
}

cn_claim_job_t *
cn__claimer_free(cn_claimer_t *c)
{
    cn_claim_job_t *left = NULL, **tail = &left, *job;

    if (!c)
        return NULL;
    pthread_mutex_lock(&c->mu);
    c->stop = 1;
    pthread_cond_signal(&c->cond);
    pthread_mutex_unlock(&c->mu);
    pthread_join(c->thread, NULL);
    /* Answered first, then never run; releases left undone end with their leases. */
    for (cn_claim_job_t *list = c->done; list; list = job) {
        job = list->next;
        append(&tail, list);
    }
    for (cn_claim_job_t *list = c->todo; list; list = job) {
        job = list->next;
        if (list->release) {
            free(list);
            continue;
        }
        list->rc = -ECANCELED;
        append(&tail, list);
    }
    pthread_cond_destroy(&c->cond);
    pthread_mutex_destroy(&c->mu);
    cn__pg_close(c->pg);
    free(c);
    return left;
}
