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

static void
run_job(cn_claimer_t *c, cn_claim_job_t *job, int *down)
{
    static const uint64_t bounds[] = CN_SHM_SYNC_BOUNDS_US;
    uint64_t t0 = cn__clock_mono_us(), us;
    char err[256];
    int rc;

    /* A connection that turns out lost in the middle (the server restarted just before)
     * is made again and the job run once more: both are idempotent (a claim asked again
     * by its own owner is still its own). */
    for (int attempt = 0; attempt < 2; attempt++) {
        if ((rc = cn__pg_reset(c->pg, err, sizeof(err))))
            break;
        if (job->release) {
            rc = cn__pg_release(c->pg, job->skey, job->skeylen, job->owner, err, sizeof(err));
            if (rc == CN_ELOST)
                rc = 0; /* committed, or taken over: nothing of ours to end */
        } else {
            rc = cn__pg_claim(c->pg, job->skey, job->skeylen, job->fingerprint,
                              sizeof(job->fingerprint), job->owner,
                              (int64_t)cn__clock_wall_ms(), job->lease_ms, &job->claim, err,
                              sizeof(err));
        }
        if (rc != CN_ESTORE || cn__pg_connected(c->pg))
            break;
    }
    if (rc && !*down)
        cn_log_error("PostgreSQL %s failed: %s", job->release ? "release" : "claim", err);
    else if (!rc && *down)
        cn_log_info("PostgreSQL claims succeed again");
    *down = rc != 0;
    job->rc = rc;
    if (c->stats && !job->release) {
        us = cn__clock_mono_us() - t0;
        atomic_fetch_add_explicit(&c->stats->claims, 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&c->stats->claim_us_sum, us, memory_order_relaxed);
        cn__shm_observe(c->stats->claim_buckets, bounds, CN_SHM_SYNC_BUCKETS, us);
        if (rc)
            atomic_fetch_add_explicit(&c->stats->claim_failures, 1, memory_order_relaxed);
    }
}

static void *
claimer_main(void *arg)
{
    cn_claimer_t *c = arg;
    int down = 0;

    for (;;) {
        cn_claim_job_t *job;
        uint64_t one = 1;

        pthread_mutex_lock(&c->mu);
        while (!c->todo && !c->stop)
            pthread_cond_wait(&c->cond, &c->mu);
        if (c->stop) {
            pthread_mutex_unlock(&c->mu);
            break;
        }
        job = c->todo;
        if (!(c->todo = job->next))
            c->todo_tail = &c->todo;
        pthread_mutex_unlock(&c->mu);

        run_job(c, job, &down);
        if (job->release) {
            free(job);
            continue;
        }
        pthread_mutex_lock(&c->mu);
        append(&c->done_tail, job);
        atomic_fetch_add(&c->ndone, 1);
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
