/*
 * tests/unit/test_claimer.c - what a worker uses of the shared store, against a real
 * server (the pg_server ctest fixture, as test_pg): the claimer (claims and releases run
 * in order on its thread, answered through the eventfd), the pg committer (records end
 * their claims, in order, as many per transaction as waited; a taken-over claim is
 * CN_ELOST; an ordinary route's events are stored), both finding and replacing a
 * connection the server dropped, and cn_store_t's reads going to the database.
 */
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "cnerium/error.h"
#include "realtime/event.h"
#include "store/claimer.h"
#include "store/commit.h"
#include "store/format.h"
#include "store/pg.h"
#include "store/store.h"
#include "support/clock.h"
#include "pgtest.h"
#include "unit.h"

#define WAIT_MS 10000

static const uint8_t fp_a[32] = {1}, fp_b[32] = {2};
static cn_shm_shared_t stats; /* what the claimers and committers counted */

/* A fresh, migrated database; its URL in url. */
static void
fresh_store(char *url, size_t cap)
{
    char err[512];
    cn_pg_t *pg;

    fresh_db(url, cap);
    pg = open_url(url);
    CU_ASSERT_EQUAL_FATAL(cn__pg_migrate(pg, err, sizeof(err)), 0);
    cn__pg_close(pg);
}

static cn_claim_job_t *
job(const char *key, const uint8_t *fp, const char *owner, uint32_t lease_ms, int release)
{
    cn_claim_job_t *j = calloc(1, sizeof(*j));

    CU_ASSERT_PTR_NOT_NULL_FATAL(j);
    j->release = release;
    j->skeylen = strlen(key);
    memcpy(j->skey, key, j->skeylen);
    if (fp)
        memcpy(j->fingerprint, fp, sizeof(j->fingerprint));
    snprintf(j->owner, sizeof(j->owner), "%s", owner);
    j->lease_ms = lease_ms;
    return j;
}

/* Waits (bounded) until n answers have come back; returns them in order. */
static cn_claim_job_t *
take(cn_claimer_t *c, int efd, unsigned n)
{
    cn_claim_job_t *list = NULL, **tail = &list;
    uint64_t deadline = cn__clock_mono_ms() + WAIT_MS;
    unsigned got = 0;

    while (got < n && cn__clock_mono_ms() < deadline) {
        struct pollfd p = {efd, POLLIN, 0};
        uint64_t v;
        cn_claim_job_t *more;

        if (poll(&p, 1, 100) > 0 && read(efd, &v, sizeof(v)) < 0)
            CU_FAIL("reading the eventfd");
        for (more = cn__claimer_take(c); more; more = more->next) {
            *tail = more;
            tail = &more->next;
            got++;
        }
    }
    CU_ASSERT_EQUAL_FATAL(got, n);
    return list;
}

static void
free_jobs(cn_claim_job_t *list)
{
    while (list) {
        cn_claim_job_t *next = list->next;
        free(list->claim.record);
        free(list);
        list = next;
    }
}

/* Terminates every connection to the database of url but the admin's: what a server
 * restart does to a host's connections. */
static void
drop_connections(const char *url)
{
    char sql[256], err[512];
    int64_t n = -1;

    snprintf(sql, sizeof(sql),
             "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
             " WHERE datname = '%s'", strrchr(url, '/') + 1);
    CU_ASSERT_EQUAL_FATAL(cn__pg_query_int64(admin, sql, &n, err, sizeof(err)), 0);
    CU_ASSERT(n >= 1);
}

static void
test_claims_in_order(void)
{
    char url[600], err[512];
    int efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    cn_claimer_t *c = NULL;
    cn_claim_job_t *got, *j;

    fresh_store(url, sizeof(url));
    memset(&stats, 0, sizeof(stats));
    CU_ASSERT_EQUAL_FATAL(cn__claimer_new(url, efd, &stats, &c, err, sizeof(err)), 0);
    cn__claimer_submit(c, job("k1", fp_a, "h1/1", 60000, 0));
    cn__claimer_submit(c, job("k1", fp_a, "h2/1", 60000, 0));
    cn__claimer_submit(c, job("k1", fp_b, "h2/2", 60000, 0));
    /* A release runs before the claims queued after it: the key is free for h2/3. */
    cn__claimer_submit(c, job("k1", NULL, "h1/1", 0, 1));
    cn__claimer_submit(c, job("k1", fp_a, "h2/3", 60000, 0));
    got = take(c, efd, 4);
    j = got;
    CU_ASSERT_EQUAL(j->rc, 0);
    CU_ASSERT_EQUAL(j->claim.state, CN_PG_CLAIM_OWNED);
    CU_ASSERT_STRING_EQUAL(j->owner, "h1/1");
    j = j->next;
    CU_ASSERT_EQUAL(j->claim.state, CN_PG_CLAIM_HELD);
    CU_ASSERT_EQUAL(j->claim.same_fingerprint, 1);
    CU_ASSERT(j->claim.lease_until_ms > (int64_t)cn__clock_wall_ms());
    j = j->next;
    CU_ASSERT_EQUAL(j->claim.state, CN_PG_CLAIM_HELD);
    CU_ASSERT_EQUAL(j->claim.same_fingerprint, 0);
    j = j->next;
    CU_ASSERT_EQUAL(j->claim.state, CN_PG_CLAIM_OWNED);
    CU_ASSERT_STRING_EQUAL(j->owner, "h2/3");
    CU_ASSERT_PTR_NULL(j->next);
    free_jobs(got);
    /* Claims are counted with their latency; releases are not claims. */
    {
        uint64_t in_buckets = 0;
        for (int i = 0; i < CN_SHM_SYNC_BUCKETS; i++)
            in_buckets += stats.claim_buckets[i];
        CU_ASSERT_EQUAL(stats.claims, 4);
        CU_ASSERT_EQUAL(in_buckets, 4);
        CU_ASSERT_EQUAL(stats.claim_failures, 0);
        CU_ASSERT(stats.claim_us_sum > 0);
    }

    /* The server drops the connection (a restart): the next claim reconnects first. */
    drop_connections(url);
    cn__claimer_submit(c, job("k2", fp_a, "h1/2", 60000, 0));
    got = take(c, efd, 1);
    CU_ASSERT_EQUAL(got->rc, 0);
    CU_ASSERT_EQUAL(got->claim.state, CN_PG_CLAIM_OWNED);
    free_jobs(got);

    /* Stopping returns what was never answered, and frees queued releases. */
    cn__claimer_submit(c, job("k3", NULL, "h1/9", 0, 1));
    CU_ASSERT_PTR_NULL(cn__claimer_free(c));
    close(efd);
}

static void
test_claimer_unreachable(void)
{
    char url[600], err[512];
    int efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    cn_claimer_t *c = NULL;
    cn_claim_job_t *got;

    fresh_store(url, sizeof(url));
    CU_ASSERT_EQUAL_FATAL(cn__claimer_new(url, efd, &stats, &c, err, sizeof(err)), 0);
    /* A database dropped under the claimer: every reconnect fails, every claim says so. */
    {
        char sql[256];
        drop_connections(url);
        snprintf(sql, sizeof(sql), "DROP DATABASE %s WITH (FORCE)", strrchr(url, '/') + 1);
        CU_ASSERT_EQUAL_FATAL(cn__pg_exec(admin, sql, err, sizeof(err)), 0);
    }
    memset(&stats, 0, sizeof(stats)); /* the thread is idle: no job yet */
    cn__claimer_submit(c, job("k", fp_a, "h1/1", 60000, 0));
    got = take(c, efd, 1);
    CU_ASSERT_EQUAL(got->rc, CN_ESTORE);
    CU_ASSERT_EQUAL(stats.claim_failures, 1);
    free_jobs(got);
    CU_ASSERT_PTR_NULL(cn__claimer_free(c));
    close(efd);
}

static void
test_claims_in_one_round_trip(void)
{
    char url[600], err[512], key[16];
    int efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    cn_claimer_t *c = NULL;
    cn_claim_job_t *got, *j;
    cn_pg_t *pg;
    cn_pg_claim_t cl;
    int i = 0;

    fresh_store(url, sizeof(url));
    /* Another host holds k05 (same fingerprint) and k06 (another one). */
    pg = open_url(url);
    CU_ASSERT_EQUAL_FATAL(cn__pg_claim(pg, "k05", 3, fp_a, 32, "h9/1",
                                       (int64_t)cn__clock_wall_ms(), 60000, &cl, err,
                                       sizeof(err)), 0);
    CU_ASSERT_EQUAL_FATAL(cn__pg_claim(pg, "k06", 3, fp_b, 32, "h9/2",
                                       (int64_t)cn__clock_wall_ms(), 60000, &cl, err,
                                       sizeof(err)), 0);
    memset(&stats, 0, sizeof(stats));
    CU_ASSERT_EQUAL_FATAL(cn__claimer_new(url, efd, &stats, &c, err, sizeof(err)), 0);
    /* More than one pipeline's worth, queued at once: answered in order, each decided on
     * its own. */
    for (i = 0; i < CN_PG_CLAIM_MANY_MAX + 10; i++) {
        char owner[16];
        snprintf(key, sizeof(key), "k%02d", i);
        snprintf(owner, sizeof(owner), "h1/%d", i);
        cn__claimer_submit(c, job(key, fp_a, owner, 60000, 0));
    }
    got = take(c, efd, CN_PG_CLAIM_MANY_MAX + 10);
    for (i = 0, j = got; j; j = j->next, i++) {
        snprintf(key, sizeof(key), "k%02d", i);
        CU_ASSERT_STRING_EQUAL(j->skey, key);
        CU_ASSERT_EQUAL(j->rc, 0);
        CU_ASSERT_EQUAL(j->claim.state, i == 5 || i == 6 ? CN_PG_CLAIM_HELD : CN_PG_CLAIM_OWNED);
        if (i == 5 || i == 6)
            CU_ASSERT_EQUAL(j->claim.same_fingerprint, i == 5);
    }
    CU_ASSERT_EQUAL(i, CN_PG_CLAIM_MANY_MAX + 10);
    CU_ASSERT_EQUAL(stats.claims, CN_PG_CLAIM_MANY_MAX + 10);
    free_jobs(got);
    CU_ASSERT_PTR_NULL(cn__claimer_free(c));
    cn__pg_close(pg);
    close(efd);
}

/* ---- the pg committer ---- */

typedef struct outcome {
    int calls, status, final;
    int order; /* the order of the final call among all */
} outcome_t;

static int done_order;

static void
on_done(int status, int final, void *arg)
{
    outcome_t *o = arg;

    o->calls++;
    o->status = status;
    o->final = final;
    if (final == 1)
        o->order = ++done_order;
}

/* Polls the committer until it has nothing pending (bounded). */
static void
settle(cn_committer_t *cm, int efd)
{
    uint64_t deadline = cn__clock_mono_ms() + WAIT_MS;

    while (cn__committer_pending(cm) && cn__clock_mono_ms() < deadline) {
        struct pollfd p = {efd, POLLIN, 0};
        uint64_t v;
        if (poll(&p, 1, 100) > 0 && read(efd, &v, sizeof(v)) < 0)
            CU_FAIL("reading the eventfd");
        cn__committer_poll(cm);
    }
    CU_ASSERT_EQUAL(cn__committer_pending(cm), 0);
}

static cn_record_t
record_of(const char *body)
{
    cn_record_t rec = {
        .status = 201,
        .created_ms = cn__clock_wall_ms(),
        .expires_ms = cn__clock_wall_ms() + 60000,
        .body = body,
        .body_len = (uint32_t)strlen(body),
    };
    memcpy(rec.fingerprint, fp_a, sizeof(rec.fingerprint));
    return rec;
}

/* Claims key for owner (blocking) on pg; returns the state. */
static cn_pg_claim_state_t
claim_now(cn_pg_t *pg, const char *key, const char *owner, uint32_t lease_ms,
          cn_pg_claim_t *out)
{
    char err[512];
    int rc = cn__pg_claim(pg, key, strlen(key), fp_a, 32, owner, (int64_t)cn__clock_wall_ms(),
                          lease_ms, out, err, sizeof(err));

    CU_ASSERT_EQUAL_FATAL(rc, 0);
    return out->state;
}

static void
test_committer(void)
{
    char url[600], err[512], key[16];
    int efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    cn_committer_t *cm = NULL;
    outcome_t o[20];
    cn_pg_claim_t cl;
    cn_pg_t *pg;
    cn_record_t rec = record_of("{\"id\":1}"), got;

    fresh_store(url, sizeof(url));
    pg = open_url(url);
    memset(&stats, 0, sizeof(stats));
    CU_ASSERT_EQUAL_FATAL(cn__committer_new_pg(url, efd, 30000, &stats, &cm, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(cn__committer_ack_fd(cm), efd);

    /* Twenty records, each ending its claim: decided in order, all stored. */
    memset(o, 0, sizeof(o));
    done_order = 0;
    for (int i = 0; i < 20; i++) {
        char owner[16];
        snprintf(key, sizeof(key), "k%02d", i);
        snprintf(owner, sizeof(owner), "h1/%d", i);
        CU_ASSERT_EQUAL_FATAL(claim_now(pg, key, owner, 60000, &cl), CN_PG_CLAIM_OWNED);
        {
            cn_store_put_t item = {key, strlen(key), &rec, NULL, 0, NULL, 0, owner};
            CU_ASSERT_EQUAL_FATAL(cn__committer_submit(cm, &item, on_done, &o[i]), 0);
        }
    }
    settle(cm, efd);
    CU_ASSERT_EQUAL(stats.commit_records, 20);
    CU_ASSERT(stats.commits >= 1 && stats.commits <= 20);
    for (int i = 0; i < 20; i++) {
        CU_ASSERT_EQUAL(o[i].calls, 1);
        CU_ASSERT_EQUAL(o[i].final, 1);
        CU_ASSERT_EQUAL(o[i].status, 0);
        CU_ASSERT_EQUAL(o[i].order, i + 1);
    }
    /* Stored, the claim gone: a claim now replays the record byte for byte. */
    CU_ASSERT_EQUAL(claim_now(pg, "k07", "h2/1", 60000, &cl), CN_PG_CLAIM_STORED);
    CU_ASSERT_EQUAL_FATAL(cn__record_decode(cl.record, cl.record_len, &got), 0);
    CU_ASSERT_EQUAL(got.status, 201);
    CU_ASSERT_EQUAL(got.body_len, rec.body_len);
    CU_ASSERT_EQUAL(memcmp(got.body, rec.body, rec.body_len), 0);
    free(cl.record);

    /* A claim taken over after its lease: the late commit is CN_ELOST, stores nothing. */
    CU_ASSERT_EQUAL_FATAL(claim_now(pg, "late", "h1/late", 1, &cl), CN_PG_CLAIM_OWNED);
    {
        uint64_t deadline = cn__clock_mono_ms() + WAIT_MS;
        cn_pg_claim_state_t st;
        /* The lease is 1 ms: claim again until the takeover is granted (bounded). */
        while ((st = claim_now(pg, "late", "h2/late", 60000, &cl)) == CN_PG_CLAIM_HELD &&
               cn__clock_mono_ms() < deadline)
            ;
        CU_ASSERT_EQUAL_FATAL(st, CN_PG_CLAIM_TAKEN_OVER);
    }
    {
        cn_store_put_t item = {"late", 4, &rec, NULL, 0, NULL, 0, "h1/late"};
        memset(&o[0], 0, sizeof(o[0]));
        CU_ASSERT_EQUAL_FATAL(cn__committer_submit(cm, &item, on_done, &o[0]), 0);
    }
    settle(cm, efd);
    CU_ASSERT_EQUAL(o[0].status, CN_ELOST);
    CU_ASSERT_EQUAL(stats.lost, 1);
    CU_ASSERT_EQUAL(claim_now(pg, "late", "h3/late", 60000, &cl), CN_PG_CLAIM_HELD);

    /* An ordinary route's events, then a connection the server dropped: the next batch
     * reconnects first and commits. */
    {
        cn_event_t ev = {(char *)"announcement", NULL, (char *)"{}", 2, NULL};
        uint8_t buf[256];
        size_t len = 0;
        uint64_t oldest = 0, newest = 0;

        CU_ASSERT_EQUAL_FATAL(cn__events_encode(&ev, buf, sizeof(buf), &len), 0);
        drop_connections(url);
        CU_ASSERT_EQUAL_FATAL(cn__committer_submit_events(cm, buf, len), 0);
        settle(cm, efd);
        cn__pg_close(pg); /* dropped too */
        pg = open_url(url);
        CU_ASSERT_EQUAL(cn__pg_events_bounds(pg, &oldest, &newest, err, sizeof(err)), 0);
        CU_ASSERT_EQUAL(newest, 1);
    }
    cn__committer_free(cm, 1000);
    cn__pg_close(pg);
    close(efd);
}

static void
test_committer_database_gone(void)
{
    char url[600], err[512], sql[256];
    int efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    cn_committer_t *cm = NULL;
    outcome_t o = {0};
    cn_record_t rec = record_of("{}");
    cn_store_put_t item = {"k", 1, &rec, NULL, 0, NULL, 0, "h1/1"};

    fresh_store(url, sizeof(url));
    CU_ASSERT_EQUAL_FATAL(cn__committer_new_pg(url, efd, 30000, &stats, &cm, err, sizeof(err)), 0);
    drop_connections(url);
    snprintf(sql, sizeof(sql), "DROP DATABASE %s WITH (FORCE)", strrchr(url, '/') + 1);
    CU_ASSERT_EQUAL_FATAL(cn__pg_exec(admin, sql, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL_FATAL(cn__committer_submit(cm, &item, on_done, &o), 0);
    settle(cm, efd);
    CU_ASSERT_EQUAL(o.calls, 1);
    CU_ASSERT_EQUAL(o.final, 1);
    CU_ASSERT_EQUAL(o.status, CN_ESTORE);
    CU_ASSERT_EQUAL(cn__committer_recent_error(cm), CN_ESTORE);
    CU_ASSERT(stats.commit_failures >= 1);
    cn__committer_free(cm, 1000);
    close(efd);
}

/* ---- cn_store_t on the shared store ---- */

static int
count_event(uint64_t seq, const uint8_t *p, size_t len, void *arg)
{
    (void)seq, (void)p, (void)len;
    ++*(int *)arg;
    return 0;
}

static void
test_store_reads(void)
{
    char url[600], err[512];
    cn_store_t *s = NULL;
    cn_record_t rec;
    void *buf = NULL;
    uint64_t epoch = 0, v = 99, oldest = 9, newest = 9;
    int n = 0;

    fresh_store(url, sizeof(url));
    CU_ASSERT_EQUAL_FATAL(cn__store_open_pg(url, &s, err, sizeof(err)), 0);
    CU_ASSERT(cn__store_is_pg(s));
    CU_ASSERT_EQUAL(cn__store_events_epoch(s, &epoch), 0);
    CU_ASSERT_NOT_EQUAL(epoch, 0);
    CU_ASSERT_EQUAL(cn__store_stream_version(s, "order-1", 7, &v), 0);
    CU_ASSERT_EQUAL(v, 0);
    CU_ASSERT_EQUAL(cn__store_events_bounds(s, &oldest, &newest), 0);
    CU_ASSERT_EQUAL(newest, 0);
    CU_ASSERT_EQUAL(cn__store_events_read(s, 1, 10, count_event, &n), 0);
    CU_ASSERT_EQUAL(n, 0);
    /* Responses are read by claims, never by cn__store_get. */
    CU_ASSERT_EQUAL(cn__store_get(s, "k", 1, 0, &rec, &buf), -ENOTSUP);
    /* A dropped connection is replaced at the next read. */
    drop_connections(url);
    CU_ASSERT_EQUAL(cn__store_events_epoch(s, &v), 0);
    CU_ASSERT_EQUAL(v, epoch);
    cn__store_close(s);
    CU_ASSERT_EQUAL(cn__store_open_pg("lmdb", &s, err, sizeof(err)), CN_ECONFIG);
}

int
main(void)
{
    static const unit_test_t tests[] = {
        {"claims and releases run in order", test_claims_in_order},
        {"claims when the database is gone", test_claimer_unreachable},
        {"queued claims go in one round trip", test_claims_in_one_round_trip},
        {"the pg committer", test_committer},
        {"commits when the database is gone", test_committer_database_gone},
        {"cn_store_t reads the shared store", test_store_reads},
        {NULL, NULL},
    };
    char err[512];
    int rc;

    if (pgtest_read_url("test_claimer"))
        return 1;
    if (cn__pg_open(server_url, &admin, err, sizeof(err))) {
        fprintf(stderr, "test_claimer: %s\n", err);
        return 1;
    }
    rc = unit_run("claimer", tests);
    cn__pg_close(admin);
    return rc;
}
