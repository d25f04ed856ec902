/*
 * tests/unit/test_pg.c - the PostgreSQL store's connection and schema, against a real
 * server: the ctest fixture pg_server (tests/pgserver.py) starts one for the suite and
 * CNERIUM_PG_URL_FILE names the file holding its URL. Every test that needs an empty
 * database creates one of its own on that server.
 *
 * Checked: migrating an empty database creates every table at the current version;
 * migrating again changes nothing; hosts migrating at once (threads on connections of
 * their own) all succeed and each step runs once; steps apply in order, once each, a
 * failing step leaves nothing behind, a newer schema is refused; URLs of other schemes
 * and a closed port fail with a message, never a password. Claims: owned, held (same
 * or other fingerprint), stored (the record byte for byte), expired records and claims,
 * takeover after the lease with the late commit storing nothing and numbering nothing,
 * binary keys, hosts committing at once getting gapless event positions, and the
 * notifications a commit and a release send (none for a refused commit). Batches:
 * each record decided on its own (conflicts within the batch and with the database,
 * records that do not decode, keys too long, lost claims; refused records write
 * nothing), and hosts appending to one stream at once getting gapless versions. A
 * claim racing another host's commit of the same key (held in an open transaction)
 * waits through the non-blocking API, then replays instead of running the key again.
 * Reads: events, bounds, streams both ways, the log and its head, one epoch for every
 * connection; the sweep and event pruning, bounded per call.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "cnerium/error.h"
#include "cnerium/stream.h"
#include "http/request_internal.h"
#include "realtime/event.h"
#include "store/format.h"
#include "store/pg.h"
#include "stream/stream.h"
#include "pgtest.h"
#include "unit.h"

static int64_t
query(cn_pg_t *pg, const char *sql)
{
    char err[512];
    int64_t v = -1;
    int rc = cn__pg_query_int64(pg, sql, &v, err, sizeof(err));

    if (rc)
        fprintf(stderr, "%s: %s\n", sql, err);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    return v;
}

static int
version_of(cn_pg_t *pg)
{
    int v = -1;

    CU_ASSERT_EQUAL_FATAL(cn__pg_schema_version(pg, &v), 0);
    return v;
}

static int
migrate(cn_pg_t *pg)
{
    char err[512];
    int rc = cn__pg_migrate(pg, err, sizeof(err));

    if (rc)
        fprintf(stderr, "cn__pg_migrate: %s\n", err);
    return rc;
}

static const char *const tables[] = {
    "cnerium_schema",   "cnerium_responses", "cnerium_claims", "cnerium_events",
    "cnerium_event_head", "cnerium_stream_log", "cnerium_streams", "cnerium_meta",
};

static void
expect_schema(cn_pg_t *pg)
{
    char sql[160];

    CU_ASSERT_EQUAL(version_of(pg), CN_PG_SCHEMA_VERSION);
    for (size_t i = 0; i < sizeof(tables) / sizeof(tables[0]); i++) {
        snprintf(sql, sizeof(sql), "SELECT (to_regclass('%s') IS NOT NULL)::int", tables[i]);
        if (query(pg, sql) != 1)
            fprintf(stderr, "table %s missing\n", tables[i]);
        CU_ASSERT_EQUAL(query(pg, sql), 1);
    }
    CU_ASSERT_EQUAL(query(pg, "SELECT (to_regclass('cnerium_responses_expiry') IS NOT NULL)::int"),
                    1);
    /* One row per applied step, and the single head row at zero. */
    CU_ASSERT_EQUAL(query(pg, "SELECT count(*) FROM cnerium_schema"), CN_PG_SCHEMA_VERSION);
    CU_ASSERT_EQUAL(query(pg, "SELECT count(*) FROM cnerium_event_head"), 1);
    CU_ASSERT_EQUAL(query(pg, "SELECT event_position + log_position FROM cnerium_event_head"),
                    0);
    /* The epoch: one non-zero unsigned 64-bit decimal. */
    CU_ASSERT_EQUAL(query(pg, "SELECT count(*) FROM cnerium_meta WHERE key = 'events-epoch' "
                              "AND value ~ '^[0-9]{1,20}$' AND value::numeric > 0 "
                              "AND value::numeric < 18446744073709551616"),
                    1);
}

static void
test_migrate_empty(void)
{
    char url[600];
    cn_pg_t *pg;

    fresh_db(url, sizeof(url));
    pg = open_url(url);
    CU_ASSERT_EQUAL(version_of(pg), 0);
    CU_ASSERT_EQUAL(migrate(pg), 0);
    expect_schema(pg);
    cn__pg_close(pg);
}

static void
test_migrate_again(void)
{
    char url[600];
    cn_pg_t *pg;
    int64_t epoch, applied_at;

    fresh_db(url, sizeof(url));
    pg = open_url(url);
    CU_ASSERT_EQUAL_FATAL(migrate(pg), 0);
    epoch = query(pg, "SELECT value::numeric % 1000000007 FROM cnerium_meta");
    applied_at = query(pg, "SELECT (extract(epoch FROM max(applied_at)) * 1000000)::bigint "
                           "FROM cnerium_schema");
    CU_ASSERT_EQUAL(migrate(pg), 0);
    cn__pg_close(pg);

    /* And from a new connection, as a restarted host would. */
    pg = open_url(url);
    CU_ASSERT_EQUAL(migrate(pg), 0);
    expect_schema(pg);
    CU_ASSERT_EQUAL(query(pg, "SELECT value::numeric % 1000000007 FROM cnerium_meta"), epoch);
    CU_ASSERT_EQUAL(query(pg, "SELECT (extract(epoch FROM max(applied_at)) * 1000000)::bigint "
                              "FROM cnerium_schema"),
                    applied_at);
    cn__pg_close(pg);
}

/* ---- hosts starting at once ---- */

#define RACERS 3

typedef struct racer {
    const char *url;
    const cn_pg_step_t *steps; /* NULL: cn__pg_migrate */
    size_t nsteps;
    pthread_barrier_t *start;
    int rc;
    unsigned applied;
    char err[512];
} racer_t;

static void *
race(void *arg)
{
    racer_t *r = arg;
    cn_pg_t *pg = NULL;

    r->rc = cn__pg_open(r->url, &pg, r->err, sizeof(r->err));
    /* Connected first, so the migrations, not the connects, start together. */
    pthread_barrier_wait(r->start);
    if (r->rc)
        return NULL;
    if (r->steps)
        r->rc = cn__pg_migrate_steps(pg, r->steps, r->nsteps, &r->applied, r->err,
                                     sizeof(r->err));
    else
        r->rc = cn__pg_migrate(pg, r->err, sizeof(r->err));
    cn__pg_close(pg);
    return NULL;
}

/* Runs RACERS threads migrating url at once; returns the steps they applied in all. */
static unsigned
run_race(const char *url, const cn_pg_step_t *steps, size_t nsteps)
{
    pthread_t tids[RACERS];
    racer_t racers[RACERS];
    pthread_barrier_t start;
    unsigned total = 0;

    CU_ASSERT_EQUAL_FATAL(pthread_barrier_init(&start, NULL, RACERS), 0);
    for (int i = 0; i < RACERS; i++) {
        racers[i] = (racer_t){.url = url, .steps = steps, .nsteps = nsteps, .start = &start};
        CU_ASSERT_EQUAL_FATAL(pthread_create(&tids[i], NULL, race, &racers[i]), 0);
    }
    for (int i = 0; i < RACERS; i++) {
        pthread_join(tids[i], NULL);
        if (racers[i].rc)
            fprintf(stderr, "racer %d: %s\n", i, racers[i].err);
        CU_ASSERT_EQUAL(racers[i].rc, 0);
        total += racers[i].applied;
    }
    pthread_barrier_destroy(&start);
    return total;
}

/* The real schema: every racer succeeds and the result is the same schema. The steps ran
 * once: step 1 creates its tables without IF NOT EXISTS, so a second run would have
 * failed its racer, and cnerium_schema has one row per version. */
static void
test_migrate_concurrent(void)
{
    for (int round = 0; round < 4; round++) {
        char url[600];
        cn_pg_t *pg;

        fresh_db(url, sizeof(url));
        run_race(url, NULL, 0);
        pg = open_url(url);
        expect_schema(pg);
        cn__pg_close(pg);
    }
}

/* Counting steps: each inserts into a table of its own, so a step run twice shows as a
 * count of 2; the racers' applied counts add up to the number of steps. */
static const cn_pg_step_t counted[] = {
    {1, "CREATE TABLE t_runs (step int NOT NULL); INSERT INTO t_runs VALUES (1)"},
    {2, "INSERT INTO t_runs VALUES (2); CREATE TABLE t_two (x int)"},
    {3, "INSERT INTO t_runs VALUES (3); SELECT pg_sleep(0.01)"},
    {4, "INSERT INTO t_runs VALUES (4)"},
};

static void
test_steps_concurrent(void)
{
    for (int round = 0; round < 4; round++) {
        char url[600];
        cn_pg_t *pg;

        fresh_db(url, sizeof(url));
        CU_ASSERT_EQUAL(run_race(url, counted, 4), 4);
        pg = open_url(url);
        CU_ASSERT_EQUAL(version_of(pg), 4);
        CU_ASSERT_EQUAL(query(pg, "SELECT count(*) FROM t_runs"), 4);
        CU_ASSERT_EQUAL(query(pg, "SELECT count(DISTINCT step) FROM t_runs"), 4);
        CU_ASSERT_EQUAL(query(pg, "SELECT count(*) FROM cnerium_schema"), 4);
        cn__pg_close(pg);
    }
}

/* Steps in order, each once: a database at version 2 gets only steps 3 and 4; a failing
 * step rolls back alone; a database newer than the list is refused. */
static void
test_steps_in_order(void)
{
    static const cn_pg_step_t failing[] = {
        counted[0],
        counted[1],
        {3, "CREATE TABLE t_three (x int); INSERT INTO t_runs VALUES (3); SELECT 1/0"},
    };
    char url[600], err[512];
    unsigned applied = 99;
    cn_pg_t *pg;

    fresh_db(url, sizeof(url));
    pg = open_url(url);
    CU_ASSERT_EQUAL_FATAL(cn__pg_migrate_steps(pg, counted, 2, &applied, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(applied, 2);
    CU_ASSERT_EQUAL(version_of(pg), 2);

    applied = 99;
    CU_ASSERT_EQUAL(cn__pg_migrate_steps(pg, failing, 3, &applied, err, sizeof(err)),
                    CN_ESTORE);
    CU_ASSERT_EQUAL(applied, 99); /* written only on success */
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "schema step 3"));
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "division by zero"));
    CU_ASSERT_PTR_NULL(strchr(err, '\n'));
    CU_ASSERT_EQUAL(version_of(pg), 2);
    CU_ASSERT_EQUAL(query(pg, "SELECT (to_regclass('t_three') IS NOT NULL)::int"), 0);
    CU_ASSERT_EQUAL(query(pg, "SELECT count(*) FROM t_runs"), 2);

    /* The connection is usable after the failure; the remaining steps apply. */
    CU_ASSERT_EQUAL(cn__pg_migrate_steps(pg, counted, 4, &applied, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(applied, 2);
    CU_ASSERT_EQUAL(version_of(pg), 4);
    CU_ASSERT_EQUAL(query(pg, "SELECT count(*) FROM t_runs"), 4);

    /* A build that knows fewer steps than the database has applied. */
    err[0] = '\0';
    CU_ASSERT_EQUAL(cn__pg_migrate_steps(pg, counted, 3, &applied, err, sizeof(err)),
                    CN_EVERSION);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "version 4"));
    CU_ASSERT_EQUAL(version_of(pg), 4);
    cn__pg_close(pg);
}

/* ---- URLs ---- */

static void
expect_refused(const char *url, int want, const char *secret)
{
    char err[512];
    cn_pg_t *pg = (cn_pg_t *)&err; /* must stay untouched */

    memset(err, 'x', sizeof(err));
    CU_ASSERT_EQUAL(cn__pg_open(url, &pg, err, sizeof(err)), want);
    CU_ASSERT_PTR_EQUAL(pg, (cn_pg_t *)&err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(memchr(err, '\0', sizeof(err)));
    CU_ASSERT(strlen(err) > 10);
    CU_ASSERT_PTR_NULL(strchr(err, '\n'));
    if (want == CN_ECONFIG) {
        CU_ASSERT_PTR_NOT_NULL(strstr(err, "postgresql://"));
        CU_ASSERT_PTR_NOT_NULL(strstr(err, "postgres://"));
    }
    if (secret && strstr(err, secret)) {
        fprintf(stderr, "password echoed: %s\n", err);
        CU_FAIL("password echoed");
    }
}

static void
test_unknown_scheme(void)
{
    char err[512];
    cn_pg_t *pg = NULL;

    expect_refused("mysql://root:hunter2@127.0.0.1:3306/db", CN_ECONFIG, "hunter2");
    expect_refused("lmdb", CN_ECONFIG, NULL);
    expect_refused("plain text", CN_ECONFIG, NULL);
    expect_refused("", CN_ECONFIG, NULL);
    expect_refused(NULL, CN_ECONFIG, NULL);
    expect_refused("postgresql:/127.0.0.1/db", CN_ECONFIG, NULL);
    expect_refused("PostgreSQL://x", CN_ECONFIG, NULL);
    expect_refused("host=127.0.0.1 password=hunter2", CN_ECONFIG, "hunter2");

    CU_ASSERT_EQUAL(cn__pg_open("mysql://x", &pg, err, sizeof(err)), CN_ECONFIG);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "\"mysql\""));
    /* No room for a message, or little: still refused, the message cut short. */
    CU_ASSERT_EQUAL(cn__pg_open("mysql://x", &pg, NULL, 0), CN_ECONFIG);
    CU_ASSERT_EQUAL(cn__pg_open("mysql://x", &pg, err, 8), CN_ECONFIG);
    CU_ASSERT_EQUAL(strlen(err), 7);
    CU_ASSERT_PTR_NULL(pg);
}

/* A loopback port nothing listens on: bound, then closed. */
static int
closed_port(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET};
    socklen_t len = sizeof(a);
    int fd = socket(AF_INET, SOCK_STREAM, 0), port;

    CU_ASSERT_FATAL(fd >= 0);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CU_ASSERT_EQUAL_FATAL(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    CU_ASSERT_EQUAL_FATAL(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    port = ntohs(a.sin_port);
    close(fd);
    return port;
}

static void
test_closed_port(void)
{
    char url[256];
    int port = closed_port();

    snprintf(url, sizeof(url), "postgresql://postgres:hunter2@127.0.0.1:%d/postgres", port);
    expect_refused(url, CN_ESTORE, "hunter2");
    snprintf(url, sizeof(url), "postgres://postgres@127.0.0.1:%d/postgres?password=s%%65cret9",
             port);
    expect_refused(url, CN_ESTORE, "secret9");
    /* libpq's own parse errors quote the URL: the password is masked there too. */
    expect_refused("postgresql://u:hunter2@[::1/db", CN_ESTORE, "hunter2");
    expect_refused("postgresql://u:hunter2@127.0.0.1:5432/db?nosuchoption=1", CN_ESTORE,
                   "hunter2");
}

static void
test_postgres_scheme(void)
{
    char url[600];
    cn_pg_t *pg;

    /* postgres:// is libpq's other spelling; both reach the server. */
    snprintf(url, sizeof(url), "postgres://%s", strstr(server_url, "://") + 3);
    pg = open_url(url);
    CU_ASSERT_EQUAL(query(pg, "SELECT 41 + 1"), 42);
    cn__pg_close(pg);
    cn__pg_close(NULL);
}

/* ---- claims, stored responses, commits ---- */

/* A migrated empty database, opened. */
static cn_pg_t *
migrated_db(char *url, size_t cap)
{
    char err[512];
    cn_pg_t *pg;

    fresh_db(url, cap);
    pg = open_url(url);
    CU_ASSERT_EQUAL_FATAL(cn__pg_migrate(pg, err, sizeof(err)), 0);
    return pg;
}

static cn_pg_claim_t
claim(cn_pg_t *pg, const char *key, const char *fp, const char *owner, int64_t now,
      uint32_t lease)
{
    char err[512];
    cn_pg_claim_t c;
    int rc = cn__pg_claim(pg, key, strlen(key), fp, strlen(fp), owner, now, lease, &c, err,
                          sizeof(err));

    if (rc)
        fprintf(stderr, "cn__pg_claim: %s\n", err);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    return c;
}

#define NOW 1700000000000LL

/* An encoded stored response with body and expiry (malloc'd). */
static uint8_t *
record_of(const char *body, int64_t expires, size_t *len)
{
    cn_record_t r = {.status = 201, .created_ms = (uint64_t)NOW, .expires_ms = (uint64_t)expires,
                     .body = body, .body_len = (uint32_t)strlen(body)};
    size_t need = cn__record_encoded_size(&r);
    uint8_t *buf = malloc(need);

    CU_ASSERT_PTR_NOT_NULL_FATAL(buf);
    CU_ASSERT_EQUAL_FATAL(cn__record_encode(&r, buf, need, len), 0);
    return buf;
}

/* An encoded list of n events "e0".."e<n-1>" (malloc'd; NULL for n == 0). */
static uint8_t *
events_of(int n, size_t *len)
{
    cn_event_t ev[8];
    char types[8][12];
    uint8_t *buf;
    size_t need;

    CU_ASSERT_FATAL(n <= 8);
    *len = 0;
    if (!n)
        return NULL;
    for (int i = 0; i < n; i++) {
        snprintf(types[i], sizeof(types[i]), "e%d", i);
        ev[i] = (cn_event_t){types[i], NULL, (char *)"1", 1, i + 1 < n ? &ev[i + 1] : NULL};
    }
    need = cn__events_encoded_size(ev);
    CU_ASSERT_PTR_NOT_NULL_FATAL(buf = malloc(need));
    CU_ASSERT_EQUAL_FATAL(cn__events_encode(ev, buf, need, len), 0);
    return buf;
}

/* Commits a response with body (expiring at expires) and nev events for owner's claim
 * on key, alone in its batch, at NOW. Returns the transaction's error, else the
 * record's status. */
static int
commit(cn_pg_t *pg, const char *key, const char *owner, const char *body, int64_t expires,
       int nev, int64_t *head)
{
    char err[512];
    size_t reclen, evlen;
    uint8_t *rec = record_of(body, expires, &reclen), *ev = events_of(nev, &evlen);
    cn_pg_put_t it = {{.key = key, .keylen = strlen(key), .bytes = rec, .len = reclen,
                       .events = ev, .events_len = evlen},
                      owner};
    int rc = cn__pg_apply(pg, &it, 1, NOW, head, err, sizeof(err));

    if (rc)
        fprintf(stderr, "cn__pg_apply: %s\n", err);
    free(rec);
    free(ev);
    return rc ? rc : it.put.status;
}


/* One key through its life: claimed; a duplicate (same or another fingerprint) finds it
 * held until the lease; the owner commits; everyone after gets the stored record, byte
 * for byte, until it expires; then the key is free again. */
static void
test_claim_commit_replay(void)
{
    char url[600], err[512];
    cn_pg_t *pg = migrated_db(url, sizeof(url));
    size_t reclen;
    uint8_t *rec = record_of("the stored response", NOW + 60000, &reclen);
    cn_pg_claim_t c;

    c = claim(pg, "k1", "fpA", "h1/1", NOW, 5000);
    CU_ASSERT_EQUAL(c.state, CN_PG_CLAIM_OWNED);
    c = claim(pg, "k1", "fpA", "h2/1", NOW + 10, 5000);
    CU_ASSERT_EQUAL(c.state, CN_PG_CLAIM_HELD);
    CU_ASSERT_TRUE(c.same_fingerprint);
    CU_ASSERT_EQUAL(c.lease_until_ms, NOW + 5000);
    c = claim(pg, "k1", "fpB", "h2/2", NOW + 20, 5000);
    CU_ASSERT_EQUAL(c.state, CN_PG_CLAIM_HELD);
    CU_ASSERT_FALSE(c.same_fingerprint);

    CU_ASSERT_EQUAL(commit(pg, "k1", "h1/1", "the stored response", NOW + 60000, 0, NULL), 0);
    CU_ASSERT_EQUAL(query(pg, "SELECT count(*) FROM cnerium_claims"), 0);
    c = claim(pg, "k1", "fpA", "h2/3", NOW + 30, 5000);
    CU_ASSERT_EQUAL(c.state, CN_PG_CLAIM_STORED);
    CU_ASSERT_EQUAL(c.record_len, reclen);
    CU_ASSERT_TRUE(c.record && !memcmp(c.record, rec, reclen));
    free(c.record);
    free(rec);
    CU_ASSERT_EQUAL(query(pg, "SELECT count(*) FROM cnerium_claims"), 0);

    /* Past its expiry the record counts as absent: the key is claimed again, and the
     * next commit replaces the old record. */
    c = claim(pg, "k1", "fpC", "h3/1", NOW + 60000, 5000);
    CU_ASSERT_EQUAL(c.state, CN_PG_CLAIM_OWNED);
    CU_ASSERT_EQUAL(commit(pg, "k1", "h3/1", "second", NOW + 120000, 0, NULL), 0);
    c = claim(pg, "k1", "fpC", "h3/2", NOW + 60001, 5000);
    CU_ASSERT_EQUAL(c.state, CN_PG_CLAIM_STORED);
    rec = record_of("second", NOW + 120000, &reclen);
    CU_ASSERT_TRUE(c.record_len == reclen && !memcmp(c.record, rec, reclen));
    free(rec);
    free(c.record);
    CU_ASSERT_EQUAL(query(pg, "SELECT count(*) FROM cnerium_responses"), 1);

    /* Release: nothing stored, the key is free; releasing twice is CN_ELOST. */
    c = claim(pg, "k2", "fp", "h1/2", NOW, 5000);
    CU_ASSERT_EQUAL(c.state, CN_PG_CLAIM_OWNED);
    CU_ASSERT_EQUAL(cn__pg_release(pg, "k2", 2, "h1/2", err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(cn__pg_release(pg, "k2", 2, "h1/2", err, sizeof(err)), CN_ELOST);
    c = claim(pg, "k2", "fp", "h2/4", NOW + 1, 5000);
    CU_ASSERT_EQUAL(c.state, CN_PG_CLAIM_OWNED);
    cn__pg_close(pg);
}

/* A holder whose lease ended is taken over; its late commit stores nothing (CN_ELOST)
 * and the new owner's commit is the one that counts. Keys are bytes: one with a NUL and
 * high bytes is its own key. */
static void
test_lease_takeover(void)
{
    char url[600], err[512];
    cn_pg_t *pg = migrated_db(url, sizeof(url));
    static const char bin[] = {'k', 0, (char)0xff, 'x'};
    cn_pg_claim_t c;

    c = claim(pg, "k", "fp", "dead/1", NOW, 300);
    CU_ASSERT_EQUAL(c.state, CN_PG_CLAIM_OWNED);
    c = claim(pg, "k", "fp", "h2/1", NOW + 299, 300);
    CU_ASSERT_EQUAL(c.state, CN_PG_CLAIM_HELD);
    c = claim(pg, "k", "fp", "h2/2", NOW + 300, 300);
    CU_ASSERT_EQUAL(c.state, CN_PG_CLAIM_TAKEN_OVER);
    CU_ASSERT_EQUAL(commit(pg, "k", "dead/1", "late", NOW + 60000, 0, NULL), CN_ELOST);
    CU_ASSERT_EQUAL(query(pg, "SELECT count(*) FROM cnerium_responses"), 0);
    CU_ASSERT_EQUAL(cn__pg_release(pg, "k", 1, "dead/1", err, sizeof(err)), CN_ELOST);
    CU_ASSERT_EQUAL(commit(pg, "k", "h2/2", "won", NOW + 60000, 0, NULL), 0);
    c = claim(pg, "k", "fp", "h3/1", NOW + 400, 300);
    CU_ASSERT_EQUAL(c.state, CN_PG_CLAIM_STORED);
    {
        size_t reclen;
        uint8_t *rec = record_of("won", NOW + 60000, &reclen);

        CU_ASSERT_TRUE(c.record_len == reclen && !memcmp(c.record, rec, reclen));
        free(rec);
    }
    free(c.record);

    CU_ASSERT_EQUAL(cn__pg_claim(pg, bin, sizeof(bin), "fp", 2, "h4/1", NOW, 300, &c, err,
                                 sizeof(err)),
                    0);
    CU_ASSERT_EQUAL(c.state, CN_PG_CLAIM_OWNED);
    CU_ASSERT_EQUAL(cn__pg_claim(pg, bin, 2, "fp", 2, "h4/2", NOW, 300, &c, err, sizeof(err)),
                    0);
    CU_ASSERT_EQUAL(c.state, CN_PG_CLAIM_OWNED); /* "k\0" is another key */
    cn__pg_close(pg);
}

/* Hosts committing at once (threads, a connection each): every event gets a position,
 * positions are 1..N with no gap and no repeat, the head row says N. */
#define COMMITTERS 4
#define COMMITS 40

typedef struct {
    const char *url;
    int id, failures;
} committer_arg_t;

static void *
committer_main(void *p)
{
    committer_arg_t *a = p;
    char err[512], key[32], owner[32];
    cn_pg_t *pg = NULL;

    if (cn__pg_open(a->url, &pg, err, sizeof(err))) {
        a->failures = COMMITS;
        return NULL;
    }
    for (int i = 0; i < COMMITS; i++) {
        cn_pg_claim_t c;
        int64_t last = 0;

        snprintf(key, sizeof(key), "c%d-%d", a->id, i);
        snprintf(owner, sizeof(owner), "h%d/%d", a->id, i);
        if (cn__pg_claim(pg, key, strlen(key), "fp", 2, owner, NOW, 5000, &c, err,
                         sizeof(err)) ||
            c.state != CN_PG_CLAIM_OWNED ||
            commit(pg, key, owner, "r", NOW + 60000, i % 3 + 1, &last) || last < i % 3 + 1)
            a->failures++;
    }
    cn__pg_close(pg);
    return NULL;
}

static void
test_event_positions_gapless(void)
{
    char url[600];
    cn_pg_t *pg = migrated_db(url, sizeof(url));
    pthread_t t[COMMITTERS];
    committer_arg_t a[COMMITTERS];
    int64_t n = 0;

    for (int i = 0; i < COMMITTERS; i++) {
        a[i] = (committer_arg_t){.url = url, .id = i};
        CU_ASSERT_EQUAL_FATAL(pthread_create(&t[i], NULL, committer_main, &a[i]), 0);
    }
    for (int i = 0; i < COMMITTERS; i++) {
        pthread_join(t[i], NULL);
        CU_ASSERT_EQUAL(a[i].failures, 0);
    }
    for (int i = 0; i < COMMITS; i++)
        n += i % 3 + 1;
    n *= COMMITTERS;
    CU_ASSERT_EQUAL(query(pg, "SELECT count(*) FROM cnerium_events"), n);
    CU_ASSERT_EQUAL(query(pg, "SELECT min(position) FROM cnerium_events"), 1);
    CU_ASSERT_EQUAL(query(pg, "SELECT max(position) FROM cnerium_events"), n);
    CU_ASSERT_EQUAL(query(pg, "SELECT event_position FROM cnerium_event_head"), n);
    CU_ASSERT_EQUAL(query(pg, "SELECT count(*) FROM cnerium_responses"), COMMITTERS * COMMITS);
    CU_ASSERT_EQUAL(query(pg, "SELECT count(*) FROM cnerium_claims"), 0);
    cn__pg_close(pg);
}

/* A commit's events come back in order from the head, and a lost claim's events are not
 * numbered: the next commit's positions follow the last stored one. */
static void
test_events_of_a_lost_claim_take_no_position(void)
{
    char url[600];
    cn_pg_t *pg = migrated_db(url, sizeof(url));
    cn_pg_claim_t c;
    int64_t last = -1;

    c = claim(pg, "a", "fp", "h1/1", NOW, 100);
    CU_ASSERT_EQUAL(c.state, CN_PG_CLAIM_OWNED);
    c = claim(pg, "a", "fp", "h2/1", NOW + 100, 100);
    CU_ASSERT_EQUAL(c.state, CN_PG_CLAIM_TAKEN_OVER);
    CU_ASSERT_EQUAL(commit(pg, "a", "h1/1", "x", NOW + 60000, 2, &last), CN_ELOST);
    CU_ASSERT_EQUAL(last, 0); /* the head was read: no event of the batch was stored */
    CU_ASSERT_EQUAL(query(pg, "SELECT count(*) FROM cnerium_events"), 0);
    CU_ASSERT_EQUAL(commit(pg, "a", "h2/1", "x", NOW + 60000, 2, &last), 0);
    CU_ASSERT_EQUAL(last, 2);
    CU_ASSERT_EQUAL(query(pg, "SELECT count(*) FROM cnerium_events WHERE created_ms = "
                              "1700000000000 AND position IN (1, 2)"),
                    2);
    cn__pg_close(pg);
}

/* A waiting host hears the commit (CN_PG_DONE_CHANNEL, the key in hex) and the new events
 * (CN_PG_EVENTS_CHANNEL, the last position); a rolled-back commit says nothing. */
static void
test_notifications(void)
{
    char url[600], err[512], payload[128];
    cn_pg_t *pg = migrated_db(url, sizeof(url)), *waiter = open_url(url);
    cn_pg_claim_t c;

    CU_ASSERT_EQUAL_FATAL(cn__pg_listen(waiter, CN_PG_DONE_CHANNEL, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL_FATAL(cn__pg_listen(waiter, CN_PG_EVENTS_CHANNEL, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(cn__pg_wait_notify(waiter, 0, NULL, 0, payload, sizeof(payload), err, sizeof(err)),
                    -ETIMEDOUT);

    c = claim(pg, "AB", "fp", "h1/1", NOW, 100);
    CU_ASSERT_EQUAL(c.state, CN_PG_CLAIM_OWNED);
    c = claim(pg, "AB", "fp", "h2/1", NOW + 100, 100);
    CU_ASSERT_EQUAL(c.state, CN_PG_CLAIM_TAKEN_OVER);
    CU_ASSERT_EQUAL(commit(pg, "AB", "h1/1", "x", NOW + 60000, 1, NULL), CN_ELOST);
    CU_ASSERT_EQUAL(cn__pg_wait_notify(waiter, 0, NULL, 0, payload, sizeof(payload), err, sizeof(err)),
                    -ETIMEDOUT);

    /* Both notifications of one commit, in either order. */
    CU_ASSERT_EQUAL(commit(pg, "AB", "h2/1", "x", NOW + 60000, 1, NULL), 0);
    {
        int heard_done = 0, heard_events = 0;
        char channel[64];

        for (int i = 0; i < 2; i++) {
            CU_ASSERT_EQUAL(cn__pg_wait_notify(waiter, 10000, channel, sizeof(channel), payload,
                                               sizeof(payload), err, sizeof(err)),
                            0);
            heard_done += !strcmp(channel, CN_PG_DONE_CHANNEL) && !strcmp(payload, "4142");
            heard_events += !strcmp(channel, CN_PG_EVENTS_CHANNEL) && !strcmp(payload, "1");
        }
        CU_ASSERT_EQUAL(heard_done, 1);
        CU_ASSERT_EQUAL(heard_events, 1);
    }

    c = claim(pg, "CD", "fp", "h1/2", NOW, 100);
    CU_ASSERT_EQUAL(cn__pg_release(pg, "CD", 2, "h1/2", err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(cn__pg_wait_notify(waiter, 10000, NULL, 0, payload, sizeof(payload), err,
                                       sizeof(err)),
                    0);
    CU_ASSERT_STRING_EQUAL(payload, "4344");
    cn__pg_close(waiter);
    cn__pg_close(pg);
}

/* An encoded list with one append to stream (published to room when not NULL). */
static uint8_t *
append_of(const char *stream, int64_t expected, const char *type, const char *room,
          size_t *len)
{
    cn_request_t req;
    const char *rooms[] = {room};
    uint8_t *buf;
    size_t need;

    memset(&req, 0, sizeof(req));
    req.is_durable = 1;
    req.stream_event_max = 64 * 1024;
    CU_ASSERT_EQUAL_FATAL(room ? cn_stream_append_publish(&req, stream, expected, type,
                                                          cJSON_Parse("{\"n\":1}"), rooms, 1)
                               : cn_stream_append(&req, stream, expected, type,
                                                  cJSON_Parse("{\"n\":1}")),
                          0);
    need = cn__appends_encoded_size(req.appends);
    CU_ASSERT_PTR_NOT_NULL_FATAL(buf = malloc(need));
    CU_ASSERT_EQUAL_FATAL(cn__appends_encode(req.appends, buf, need, len), 0);
    cn__appends_free(req.appends);
    return buf;
}

/* One batch deciding each record on its own, as cn__store_apply does, plus claims: a
 * conflict with an earlier record of the batch, a conflict with the database in a later
 * batch, a record that does not decode, a key too long, events without a response, a
 * claim that is gone. Refused records write nothing (their claims stay); stream versions,
 * log positions and event positions (published copies included) are gapless. */
static void
test_apply_decides_each_record(void)
{
    char url[600], err[512], longkey[CN_STORE_KEY_MAX + 2];
    cn_pg_t *pg = migrated_db(url, sizeof(url));
    size_t reclen, l1, l2, l3, lev;
    uint8_t *rec = record_of("{}", NOW + 60000, &reclen);
    uint8_t *placed = append_of("order-1", CN_STREAM_NO_STREAM, "Placed", "orders", &l1);
    uint8_t *again = append_of("order-1", 0, "Placed", NULL, &l2);
    uint8_t *shipped = append_of("order-1", 1, "Shipped", "orders", &l3);
    uint8_t *ev = events_of(2, &lev);
    static const uint8_t junk[] = "not a record";
    int64_t head = 0;

    memset(longkey, 'k', sizeof(longkey) - 1);
    longkey[sizeof(longkey) - 1] = '\0';
    for (int i = 1; i <= 5; i++) {
        char key[8], owner[8];

        snprintf(key, sizeof(key), "s%d", i);
        snprintf(owner, sizeof(owner), "o%d", i);
        CU_ASSERT_EQUAL(claim(pg, key, "fp", owner, NOW, 5000).state, CN_PG_CLAIM_OWNED);
    }
    {
        cn_pg_put_t b[] = {
            {{.key = "s1", .keylen = 2, .bytes = rec, .len = reclen, .appends = placed,
              .appends_len = l1},
             "o1"},
            {{.key = "s2", .keylen = 2, .bytes = rec, .len = reclen, .appends = again,
              .appends_len = l2},
             "o2"},
            {{.key = "s3", .keylen = 2, .bytes = rec, .len = reclen, .appends = shipped,
              .appends_len = l3},
             "o3"},
            {{.key = "s4", .keylen = 2, .bytes = junk, .len = sizeof(junk)}, "o4"},
            {{.key = longkey, .keylen = strlen(longkey), .bytes = rec, .len = reclen}, NULL},
            {{.events = ev, .events_len = lev}, NULL},
            {{.key = "s6", .keylen = 2, .bytes = rec, .len = reclen}, "o6"},
            {{.key = "s5", .keylen = 2, .bytes = rec, .len = reclen, .events = ev,
              .events_len = lev},
             "o5"},
        };
        int rc = cn__pg_apply(pg, b, sizeof(b) / sizeof(b[0]), NOW, &head, err, sizeof(err));

        if (rc)
            fprintf(stderr, "cn__pg_apply: %s\n", err);
        CU_ASSERT_EQUAL_FATAL(rc, 0);
        CU_ASSERT_EQUAL(b[0].put.status, 0);
        CU_ASSERT_EQUAL(b[1].put.status, CN_ECONFLICT);
        CU_ASSERT_EQUAL(b[2].put.status, 0);
        CU_ASSERT_EQUAL(b[3].put.status, CN_ECORRUPT);
        CU_ASSERT_EQUAL(b[4].put.status, CN_ETOOBIG);
        CU_ASSERT_EQUAL(b[5].put.status, 0);
        CU_ASSERT_EQUAL(b[6].put.status, CN_ELOST);
        CU_ASSERT_EQUAL(b[7].put.status, 0);
    }
    /* Published copies of s1 and s3, two events alone, two of s5: positions 1..6. */
    CU_ASSERT_EQUAL(head, 6);
    CU_ASSERT_EQUAL(query(pg, "SELECT count(*) FROM cnerium_events"), 6);
    CU_ASSERT_EQUAL(query(pg, "SELECT max(position) FROM cnerium_events"), 6);
    CU_ASSERT_EQUAL(query(pg, "SELECT event_position FROM cnerium_event_head"), 6);
    CU_ASSERT_EQUAL(query(pg, "SELECT log_position FROM cnerium_event_head"), 2);
    CU_ASSERT_EQUAL(query(pg, "SELECT count(*) FROM cnerium_streams WHERE stream = 'order-1'"
                              " AND version = position AND version IN (1, 2)"),
                    2);
    CU_ASSERT_EQUAL(query(pg, "SELECT count(*) FROM cnerium_stream_log"), 2);
    CU_ASSERT_EQUAL(query(pg, "SELECT count(*) FROM cnerium_responses"), 3); /* s1 s3 s5 */
    CU_ASSERT_EQUAL(query(pg, "SELECT count(*) FROM cnerium_claims"), 2);    /* s2 s4 */
    CU_ASSERT_EQUAL(query(pg, "SELECT count(*) FROM cnerium_claims WHERE owner IN ('o2', 'o4')"),
                    2);
    {
        /* The log entry at position 2 is order-1's version 2, "Shipped"; the published
         * event of it says so. */
        char sql[] = "SELECT position FROM cnerium_events WHERE position = 2"
                     " AND position(convert_to('\"version\":2,\"position\":2', 'UTF8')"
                     " IN event) > 0";
        CU_ASSERT_EQUAL(query(pg, sql), 2);
    }

    /* Against the database: expected version 2 holds, 1 no longer does. */
    CU_ASSERT_EQUAL(claim(pg, "s7", "fp", "o7", NOW, 5000).state, CN_PG_CLAIM_OWNED);
    CU_ASSERT_EQUAL(claim(pg, "s8", "fp", "o8", NOW, 5000).state, CN_PG_CLAIM_OWNED);
    free(placed);
    free(again);
    free(shipped);
    placed = append_of("order-1", 2, "Cancelled", NULL, &l1);
    again = append_of("order-1", 1, "Cancelled", NULL, &l2);
    {
        cn_pg_put_t b[] = {
            {{.key = "s8", .keylen = 2, .bytes = rec, .len = reclen, .appends = again,
              .appends_len = l2},
             "o8"},
            {{.key = "s7", .keylen = 2, .bytes = rec, .len = reclen, .appends = placed,
              .appends_len = l1},
             "o7"},
        };
        CU_ASSERT_EQUAL_FATAL(cn__pg_apply(pg, b, 2, NOW, &head, err, sizeof(err)), 0);
        CU_ASSERT_EQUAL(b[0].put.status, CN_ECONFLICT);
        CU_ASSERT_EQUAL(b[1].put.status, 0);
    }
    CU_ASSERT_EQUAL(head, 6); /* no room: no event */
    CU_ASSERT_EQUAL(query(pg, "SELECT max(version) FROM cnerium_streams"), 3);
    CU_ASSERT_EQUAL(query(pg, "SELECT log_position FROM cnerium_event_head"), 3);

    /* A batch with neither events nor appends does not touch the head. */
    CU_ASSERT_EQUAL(claim(pg, "s9", "fp", "o9", NOW, 5000).state, CN_PG_CLAIM_OWNED);
    CU_ASSERT_EQUAL(commit(pg, "s9", "o9", "{}", NOW + 60000, 0, &head), 0);
    CU_ASSERT_EQUAL(head, -1);
    free(placed);
    free(again);
    free(rec);
    free(ev);
    cn__pg_close(pg);
}

/* Hosts appending to one stream at once (threads, a connection each, any version):
 * every append lands, versions 1..N and log positions 1..N without a gap. */
#define APPENDERS 3
#define APPENDS 30

static void *
appender_main(void *p)
{
    committer_arg_t *a = p;
    char err[512], key[32];
    cn_pg_t *pg = NULL;
    size_t reclen, len;
    uint8_t *rec = record_of("{}", NOW + 60000, &reclen);
    uint8_t *list = append_of("shared", CN_STREAM_ANY, "Happened", NULL, &len);

    if (cn__pg_open(a->url, &pg, err, sizeof(err)))
        a->failures = APPENDS;
    for (int i = 0; pg && i < APPENDS; i++) {
        cn_pg_put_t it = {{.key = key, .bytes = rec, .len = reclen, .appends = list,
                           .appends_len = len},
                          NULL};

        snprintf(key, sizeof(key), "a%d-%d", a->id, i);
        it.put.keylen = strlen(key);
        if (cn__pg_apply(pg, &it, 1, NOW, NULL, err, sizeof(err)) || it.put.status) {
            fprintf(stderr, "appender %d: %s (status %d)\n", a->id, err, it.put.status);
            a->failures++;
        }
    }
    cn__pg_close(pg);
    free(rec);
    free(list);
    return NULL;
}

static void
test_appends_at_once_are_gapless(void)
{
    char url[600];
    cn_pg_t *pg = migrated_db(url, sizeof(url));
    pthread_t t[APPENDERS];
    committer_arg_t a[APPENDERS];

    for (int i = 0; i < APPENDERS; i++) {
        a[i] = (committer_arg_t){.url = url, .id = i};
        CU_ASSERT_EQUAL_FATAL(pthread_create(&t[i], NULL, appender_main, &a[i]), 0);
    }
    for (int i = 0; i < APPENDERS; i++) {
        pthread_join(t[i], NULL);
        CU_ASSERT_EQUAL(a[i].failures, 0);
    }
    CU_ASSERT_EQUAL(query(pg, "SELECT count(*) FROM cnerium_streams WHERE stream = 'shared'"),
                    APPENDERS * APPENDS);
    CU_ASSERT_EQUAL(query(pg, "SELECT max(version) FROM cnerium_streams"), APPENDERS * APPENDS);
    CU_ASSERT_EQUAL(query(pg, "SELECT count(*) FROM cnerium_streams WHERE version = position"),
                    APPENDERS * APPENDS);
    CU_ASSERT_EQUAL(query(pg, "SELECT log_position FROM cnerium_event_head"),
                    APPENDERS * APPENDS);
    cn__pg_close(pg);
}

/* The race the look again is for: host B claims a key while host A's commit of it is
 * in flight. B's claim statement waits for A's row (A deletes the claim in its commit);
 * when A commits, the claim row is gone and B's insert succeeds, but B's second look
 * sees A's response: B undoes its claim and replays. Driven through the non-blocking
 * API: B's claim is answered -EAGAIN while it waits. */
static void
test_claim_racing_a_commit_replays(void)
{
    char url[600], err[512];
    cn_pg_t *a = migrated_db(url, sizeof(url)), *b = open_url(url);
    cn_pg_claim_t c;
    int rc, waiting = 0;

    CU_ASSERT_EQUAL(claim(a, "k", "fp", "a/1", NOW, 60000).state, CN_PG_CLAIM_OWNED);
    CU_ASSERT_EQUAL_FATAL(cn__pg_exec(a, "BEGIN", err, sizeof(err)), 0);
    CU_ASSERT_EQUAL_FATAL(cn__pg_exec(a, "DELETE FROM cnerium_claims WHERE store_key = 'k'",
                                      err, sizeof(err)),
                          0);
    CU_ASSERT_EQUAL_FATAL(cn__pg_exec(a,
                                      "INSERT INTO cnerium_responses VALUES"
                                      " ('k', 'the record', 1800000000000)",
                                      err, sizeof(err)),
                          0);

    CU_ASSERT_EQUAL_FATAL(cn__pg_claim_send(b, "k", 1, "fp", 2, "b/1", NOW + 1, 60000, err,
                                            sizeof(err)),
                          0);
    /* B waits on A's lock (bounded look, no sleeping on time alone). */
    for (int i = 0; i < 1000 && !waiting; i++) {
        struct pollfd p = {cn__pg_fd(b), POLLIN, 0};

        CU_ASSERT_EQUAL_FATAL(cn__pg_claim_recv(b, &c, err, sizeof(err)), -EAGAIN);
        waiting = query(admin, "SELECT count(*) FROM pg_stat_activity"
                               " WHERE wait_event_type = 'Lock'") > 0;
        if (!waiting)
            poll(&p, 1, 10);
    }
    CU_ASSERT_TRUE_FATAL(waiting);
    CU_ASSERT_EQUAL_FATAL(cn__pg_exec(a, "COMMIT", err, sizeof(err)), 0);
    for (int i = 0; i < 1000; i++) {
        struct pollfd p = {cn__pg_fd(b), POLLIN, 0};

        if ((rc = cn__pg_claim_recv(b, &c, err, sizeof(err))) != -EAGAIN)
            break;
        poll(&p, 1, 100);
    }
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    CU_ASSERT_EQUAL(c.state, CN_PG_CLAIM_STORED);
    CU_ASSERT_TRUE(c.record_len == 10 && !memcmp(c.record, "the record", 10));
    free(c.record);
    CU_ASSERT_EQUAL(query(a, "SELECT count(*) FROM cnerium_claims"), 0);
    /* The connection is usable again for anything else. */
    CU_ASSERT_EQUAL(query(b, "SELECT 41 + 1"), 42);
    cn__pg_close(b);
    cn__pg_close(a);
}

/* Reading back: events by position (in their stored encoding), their bounds, streams
 * forward and backward, the global log, its head, the epoch (the same for every host). */
typedef struct {
    uint64_t pos[32];
    uint64_t version[32];
    char type[32][16];
    int n;
} seen_t;

static int
seen_event(uint64_t seq, const uint8_t *p, size_t len, void *arg)
{
    seen_t *s = arg;
    cn_event_view_t ev;

    CU_ASSERT_EQUAL(cn__event_stored_decode(p, len, &ev), 0);
    CU_ASSERT_EQUAL(ev.created_ms, (uint64_t)NOW);
    if (s->n < 32)
        s->pos[s->n++] = seq;
    return 0;
}

static int
seen_log(uint64_t position, const cn_log_view_t *e, void *arg)
{
    seen_t *s = arg;

    if (s->n < 32) {
        s->pos[s->n] = position;
        s->version[s->n] = e->version;
        snprintf(s->type[s->n], sizeof(s->type[0]), "%.*s", (int)e->type_len, e->type);
        s->n++;
    }
    return 0;
}

static void
apply_append(cn_pg_t *pg, const char *key, const char *stream, const char *type,
             const char *room, int64_t now)
{
    char err[512];
    size_t reclen, len;
    uint8_t *rec = record_of("{}", NOW + 60000, &reclen);
    uint8_t *list = append_of(stream, CN_STREAM_ANY, type, room, &len);
    cn_pg_put_t it = {{.key = key, .keylen = strlen(key), .bytes = rec, .len = reclen,
                       .appends = list, .appends_len = len},
                      NULL};

    CU_ASSERT_EQUAL_FATAL(cn__pg_apply(pg, &it, 1, now, NULL, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(it.put.status, 0);
    free(rec);
    free(list);
}

static void
test_reads(void)
{
    char url[600], err[512];
    cn_pg_t *pg = migrated_db(url, sizeof(url)), *other = open_url(url);
    uint64_t oldest, newest, v, e1, e2;
    seen_t s;

    apply_append(pg, "r1", "order-1", "Placed", "orders", NOW);
    apply_append(pg, "r2", "order-2", "Placed", "orders", NOW);
    apply_append(pg, "r3", "order-1", "Paid", NULL, NOW);
    apply_append(pg, "r4", "order-1", "Shipped", "orders", NOW);

    memset(&s, 0, sizeof(s));
    CU_ASSERT_EQUAL(cn__pg_events_read(pg, 1, 100, seen_event, &s, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(s.n, 3);
    CU_ASSERT_TRUE(s.pos[0] == 1 && s.pos[1] == 2 && s.pos[2] == 3);
    memset(&s, 0, sizeof(s));
    CU_ASSERT_EQUAL(cn__pg_events_read(pg, 2, 1, seen_event, &s, err, sizeof(err)), 0);
    CU_ASSERT_TRUE(s.n == 1 && s.pos[0] == 2);
    CU_ASSERT_EQUAL(cn__pg_events_bounds(pg, &oldest, &newest, err, sizeof(err)), 0);
    CU_ASSERT_TRUE(oldest == 1 && newest == 3);

    CU_ASSERT_EQUAL(cn__pg_stream_version(pg, "order-1", 7, &v, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(v, 3);
    CU_ASSERT_EQUAL(cn__pg_stream_version(pg, "order-9", 7, &v, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(v, 0);
    memset(&s, 0, sizeof(s));
    CU_ASSERT_EQUAL(cn__pg_stream_read(pg, "order-1", 7, 1, 0, 10, seen_log, &s, err,
                                       sizeof(err)),
                    0);
    CU_ASSERT_EQUAL_FATAL(s.n, 3);
    CU_ASSERT_TRUE(s.version[0] == 1 && s.version[1] == 2 && s.version[2] == 3);
    CU_ASSERT_TRUE(s.pos[0] == 1 && s.pos[1] == 3 && s.pos[2] == 4);
    CU_ASSERT_STRING_EQUAL(s.type[2], "Shipped");
    memset(&s, 0, sizeof(s));
    CU_ASSERT_EQUAL(cn__pg_stream_read(pg, "order-1", 7, 3, 1, 2, seen_log, &s, err,
                                       sizeof(err)),
                    0);
    CU_ASSERT_TRUE(s.n == 2 && s.version[0] == 3 && s.version[1] == 2);
    memset(&s, 0, sizeof(s));
    CU_ASSERT_EQUAL(cn__pg_log_read(pg, 2, 2, seen_log, &s, err, sizeof(err)), 0);
    CU_ASSERT_TRUE(s.n == 2 && s.pos[0] == 2 && s.pos[1] == 3);
    CU_ASSERT_STRING_EQUAL(s.type[0], "Placed");
    CU_ASSERT_EQUAL(cn__pg_log_head(pg, &v, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(v, 4);

    CU_ASSERT_EQUAL(cn__pg_events_epoch(pg, &e1, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(cn__pg_events_epoch(other, &e2, err, sizeof(err)), 0);
    CU_ASSERT_TRUE(e1 != 0 && e1 == e2);
    cn__pg_close(other);
    cn__pg_close(pg);
}

/* The sweep takes expired responses oldest first, at most max per call, and claims
 * only past their grace; pruning keeps the newest events by count or age, from the
 * oldest on, at most max per call. */
static void
test_sweep_and_prune(void)
{
    char url[600], err[512];
    cn_pg_t *pg = migrated_db(url, sizeof(url));
    uint64_t oldest, newest;
    size_t n;

    for (int i = 0; i < 5; i++) {
        char key[8], owner[8], body[8];

        snprintf(key, sizeof(key), "w%d", i);
        snprintf(owner, sizeof(owner), "o%d", i);
        snprintf(body, sizeof(body), "%d", i);
        CU_ASSERT_EQUAL(claim(pg, key, "fp", owner, NOW, 5000).state, CN_PG_CLAIM_OWNED);
        CU_ASSERT_EQUAL(commit(pg, key, owner, body, NOW + i * 10, 0, NULL), 0);
    }
    CU_ASSERT_EQUAL(claim(pg, "old", "fp", "dead/1", NOW - 36000000, 1000).state,
                    CN_PG_CLAIM_OWNED);
    CU_ASSERT_EQUAL(claim(pg, "recent", "fp", "slow/1", NOW - 2000, 1000).state,
                    CN_PG_CLAIM_OWNED);
    CU_ASSERT_EQUAL(cn__pg_sweep(pg, NOW + 25, 2, 3600000, &n, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(n, 2);
    CU_ASSERT_EQUAL(query(pg, "SELECT count(*) FROM cnerium_claims"), 1);
    CU_ASSERT_EQUAL(query(pg, "SELECT count(*) FROM cnerium_claims WHERE owner = 'slow/1'"), 1);
    CU_ASSERT_EQUAL(cn__pg_sweep(pg, NOW + 25, 2, 3600000, &n, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(n, 1);
    CU_ASSERT_EQUAL(cn__pg_sweep(pg, NOW + 25, 2, 3600000, &n, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(n, 0);
    CU_ASSERT_EQUAL(query(pg, "SELECT count(*) FROM cnerium_responses"), 2);
    CU_ASSERT_EQUAL(query(pg, "SELECT min(expires_ms) - 1700000000000 FROM cnerium_responses"),
                    30);

    /* Events 1..3 at NOW, 4..6 at NOW + 1000. */
    for (int i = 0; i < 6; i++) {
        char key[8];

        snprintf(key, sizeof(key), "p%d", i);
        apply_append(pg, key, "s", "Happened", "room", i < 3 ? NOW : NOW + 1000);
    }
    CU_ASSERT_EQUAL(cn__pg_events_prune(pg, 4, 0, 100, &n, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(n, 2);
    CU_ASSERT_EQUAL(cn__pg_events_bounds(pg, &oldest, &newest, err, sizeof(err)), 0);
    CU_ASSERT_TRUE(oldest == 3 && newest == 6);
    CU_ASSERT_EQUAL(cn__pg_events_prune(pg, 0, NOW + 500, 100, &n, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(n, 1);
    CU_ASSERT_EQUAL(cn__pg_events_prune(pg, 0, 0, 100, &n, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(n, 0);
    CU_ASSERT_EQUAL(cn__pg_events_prune(pg, 1, 0, 1, &n, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(n, 1);
    CU_ASSERT_EQUAL(cn__pg_events_bounds(pg, &oldest, &newest, err, sizeof(err)), 0);
    CU_ASSERT_TRUE(oldest == 5 && newest == 6);
    /* Positions are never reused: the next event is 7. */
    apply_append(pg, "p9", "s", "Happened", "room", NOW + 2000);
    CU_ASSERT_EQUAL(cn__pg_events_bounds(pg, &oldest, &newest, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(newest, 7);
    cn__pg_close(pg);
}

/* ---- suite ---- */

int
main(void)
{
    static const unit_test_t tests[] = {
        {"migrate an empty database", test_migrate_empty},
        {"migrate again: nothing changes", test_migrate_again},
        {"hosts migrating at once", test_migrate_concurrent},
        {"steps racing: each runs once", test_steps_concurrent},
        {"steps in order, failures roll back, newer refused", test_steps_in_order},
        {"unknown schemes", test_unknown_scheme},
        {"closed port and libpq errors", test_closed_port},
        {"postgres:// scheme", test_postgres_scheme},
        {"claim, commit, replay, expiry, release", test_claim_commit_replay},
        {"lease takeover; the late commit stores nothing", test_lease_takeover},
        {"hosts committing at once: gapless positions", test_event_positions_gapless},
        {"a lost claim's events take no position", test_events_of_a_lost_claim_take_no_position},
        {"notifications at commit and release", test_notifications},
        {"a batch decides each record", test_apply_decides_each_record},
        {"a claim racing a commit replays it", test_claim_racing_a_commit_replays},
        {"reading events, streams, the log, the epoch", test_reads},
        {"sweep and prune in bounded batches", test_sweep_and_prune},
        {"hosts appending to one stream at once", test_appends_at_once_are_gapless},
        {NULL, NULL},
    };
    char err[512];
    int rc;

    if (pgtest_read_url("test_pg"))
        return 1;
    if (cn__pg_open(server_url, &admin, err, sizeof(err))) {
        fprintf(stderr, "test_pg: %s\n", err);
        return 1;
    }
    rc = unit_run("pg", tests);
    cn__pg_close(admin);
    return rc;
}
