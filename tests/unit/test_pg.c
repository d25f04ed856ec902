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
 * notifications a commit and a release send (none for a refused commit).
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "cnerium/error.h"
#include "store/pg.h"
#include "unit.h"

static char server_url[512]; /* postgresql://postgres@127.0.0.1:<port>/postgres */
static cn_pg_t *admin;       /* a connection to the server's "postgres" database */
static int db_seq;

/* The URL of database db on the fixture server, written to out (cap bytes). */
static void
url_of(const char *db, char *out, size_t cap)
{
    const char *slash = strrchr(server_url, '/');

    CU_ASSERT_PTR_NOT_NULL_FATAL(slash);
    CU_ASSERT_FATAL((size_t)snprintf(out, cap, "%.*s/%s", (int)(slash - server_url),
                                     server_url, db) < cap);
}

static cn_pg_t *
open_url(const char *url)
{
    char err[512];
    cn_pg_t *pg = NULL;
    int rc = cn__pg_open(url, &pg, err, sizeof(err));

    if (rc)
        fprintf(stderr, "cn__pg_open: %s\n", err);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(pg);
    return pg;
}

/* Creates an empty database and writes its URL to url (cap bytes). */
static void
fresh_db(char *url, size_t cap)
{
    char name[64], sql[128], err[512];
    int rc;

    snprintf(name, sizeof(name), "cn_test_%d_%d", (int)getpid(), db_seq++);
    snprintf(sql, sizeof(sql), "CREATE DATABASE %s", name);
    rc = cn__pg_exec(admin, sql, err, sizeof(err));
    if (rc)
        fprintf(stderr, "%s: %s\n", sql, err);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    url_of(name, url, cap);
}

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

static int
commit(cn_pg_t *pg, const char *key, const char *owner, const char *record, int64_t expires,
       const cn_pg_event_t *ev, size_t nev, int64_t *last)
{
    char err[512];
    int rc = cn__pg_commit(pg, key, strlen(key), owner, record, strlen(record), expires, ev,
                           nev, last, err, sizeof(err));

    if (rc && rc != CN_ELOST)
        fprintf(stderr, "cn__pg_commit: %s\n", err);
    return rc;
}

#define NOW 1700000000000LL

/* One key through its life: claimed; a duplicate (same or another fingerprint) finds it
 * held until the lease; the owner commits; everyone after gets the stored record, byte
 * for byte, until it expires; then the key is free again. */
static void
test_claim_commit_replay(void)
{
    char url[600], err[512];
    cn_pg_t *pg = migrated_db(url, sizeof(url));
    static const char rec[] = "CNRR\x01 the stored response";
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

    CU_ASSERT_EQUAL(commit(pg, "k1", "h1/1", rec, NOW + 60000, NULL, 0, NULL), 0);
    CU_ASSERT_EQUAL(query(pg, "SELECT count(*) FROM cnerium_claims"), 0);
    c = claim(pg, "k1", "fpA", "h2/3", NOW + 30, 5000);
    CU_ASSERT_EQUAL(c.state, CN_PG_CLAIM_STORED);
    CU_ASSERT_EQUAL(c.record_len, sizeof(rec) - 1);
    CU_ASSERT_TRUE(c.record && !memcmp(c.record, rec, sizeof(rec) - 1));
    free(c.record);
    CU_ASSERT_EQUAL(query(pg, "SELECT count(*) FROM cnerium_claims"), 0);

    /* Past its expiry the record counts as absent: the key is claimed again, and the
     * next commit replaces the old record. */
    c = claim(pg, "k1", "fpC", "h3/1", NOW + 60000, 5000);
    CU_ASSERT_EQUAL(c.state, CN_PG_CLAIM_OWNED);
    CU_ASSERT_EQUAL(commit(pg, "k1", "h3/1", "second", NOW + 120000, NULL, 0, NULL), 0);
    c = claim(pg, "k1", "fpC", "h3/2", NOW + 60001, 5000);
    CU_ASSERT_EQUAL(c.state, CN_PG_CLAIM_STORED);
    CU_ASSERT_TRUE(c.record_len == 6 && !memcmp(c.record, "second", 6));
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
    CU_ASSERT_EQUAL(commit(pg, "k", "dead/1", "late", NOW + 60000, NULL, 0, NULL), CN_ELOST);
    CU_ASSERT_EQUAL(query(pg, "SELECT count(*) FROM cnerium_responses"), 0);
    CU_ASSERT_EQUAL(cn__pg_release(pg, "k", 1, "dead/1", err, sizeof(err)), CN_ELOST);
    CU_ASSERT_EQUAL(commit(pg, "k", "h2/2", "won", NOW + 60000, NULL, 0, NULL), 0);
    c = claim(pg, "k", "fp", "h3/1", NOW + 400, 300);
    CU_ASSERT_EQUAL(c.state, CN_PG_CLAIM_STORED);
    CU_ASSERT_TRUE(c.record_len == 3 && !memcmp(c.record, "won", 3));
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
        cn_pg_event_t ev[3] = {{"e0", 2, NOW}, {"e1", 2, NOW}, {"e2", 2, NOW}};
        cn_pg_claim_t c;
        int64_t last = 0;

        snprintf(key, sizeof(key), "c%d-%d", a->id, i);
        snprintf(owner, sizeof(owner), "h%d/%d", a->id, i);
        if (cn__pg_claim(pg, key, strlen(key), "fp", 2, owner, NOW, 5000, &c, err,
                         sizeof(err)) ||
            c.state != CN_PG_CLAIM_OWNED ||
            cn__pg_commit(pg, key, strlen(key), owner, "r", 1, NOW + 60000, ev,
                          (size_t)(i % 3 + 1), &last, err, sizeof(err)) ||
            last < i % 3 + 1)
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
    cn_pg_event_t ev[2] = {{"first", 5, NOW}, {"second", 6, NOW + 1}};
    cn_pg_claim_t c;
    int64_t last = -1;

    c = claim(pg, "a", "fp", "h1/1", NOW, 100);
    CU_ASSERT_EQUAL(c.state, CN_PG_CLAIM_OWNED);
    c = claim(pg, "a", "fp", "h2/1", NOW + 100, 100);
    CU_ASSERT_EQUAL(c.state, CN_PG_CLAIM_TAKEN_OVER);
    CU_ASSERT_EQUAL(commit(pg, "a", "h1/1", "x", NOW + 60000, ev, 2, &last), CN_ELOST);
    CU_ASSERT_EQUAL(last, -1);
    CU_ASSERT_EQUAL(query(pg, "SELECT count(*) FROM cnerium_events"), 0);
    CU_ASSERT_EQUAL(commit(pg, "a", "h2/1", "x", NOW + 60000, ev, 2, &last), 0);
    CU_ASSERT_EQUAL(last, 2);
    CU_ASSERT_EQUAL(query(pg, "SELECT created_ms - 1700000000000 FROM cnerium_events"
                              " WHERE position = 2 AND event = 'second'::bytea"),
                    1);
    cn__pg_close(pg);
}

/* A waiting host hears the commit (CN_PG_DONE_CHANNEL, the key in hex) and the new events
 * (CN_PG_EVENTS_CHANNEL, the last position); a rolled-back commit says nothing. */
static void
test_notifications(void)
{
    char url[600], err[512], payload[128];
    cn_pg_t *pg = migrated_db(url, sizeof(url)), *waiter = open_url(url);
    cn_pg_event_t ev = {"e", 1, NOW};
    cn_pg_claim_t c;

    CU_ASSERT_EQUAL_FATAL(cn__pg_listen(waiter, CN_PG_DONE_CHANNEL, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL_FATAL(cn__pg_listen(waiter, CN_PG_EVENTS_CHANNEL, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(cn__pg_wait_notify(waiter, 0, payload, sizeof(payload), err, sizeof(err)),
                    -ETIMEDOUT);

    c = claim(pg, "AB", "fp", "h1/1", NOW, 100);
    CU_ASSERT_EQUAL(c.state, CN_PG_CLAIM_OWNED);
    c = claim(pg, "AB", "fp", "h2/1", NOW + 100, 100);
    CU_ASSERT_EQUAL(c.state, CN_PG_CLAIM_TAKEN_OVER);
    CU_ASSERT_EQUAL(commit(pg, "AB", "h1/1", "x", NOW + 60000, &ev, 1, NULL), CN_ELOST);
    CU_ASSERT_EQUAL(cn__pg_wait_notify(waiter, 0, payload, sizeof(payload), err, sizeof(err)),
                    -ETIMEDOUT);

    /* Both notifications of one commit, in either order. */
    CU_ASSERT_EQUAL(commit(pg, "AB", "h2/1", "x", NOW + 60000, &ev, 1, NULL), 0);
    {
        int heard_done = 0, heard_events = 0;

        for (int i = 0; i < 2; i++) {
            CU_ASSERT_EQUAL(cn__pg_wait_notify(waiter, 10000, payload, sizeof(payload), err,
                                               sizeof(err)),
                            0);
            heard_done += !strcmp(payload, "4142");
            heard_events += !strcmp(payload, "1");
        }
        CU_ASSERT_EQUAL(heard_done, 1);
        CU_ASSERT_EQUAL(heard_events, 1);
    }

    c = claim(pg, "CD", "fp", "h1/2", NOW, 100);
    CU_ASSERT_EQUAL(cn__pg_release(pg, "CD", 2, "h1/2", err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(cn__pg_wait_notify(waiter, 10000, payload, sizeof(payload), err,
                                       sizeof(err)),
                    0);
    CU_ASSERT_STRING_EQUAL(payload, "4344");
    cn__pg_close(waiter);
    cn__pg_close(pg);
}

/* ---- suite ---- */

static int
read_url(void)
{
    const char *path = getenv("CNERIUM_PG_URL_FILE");
    FILE *f;
    size_t n;

    if (!path) {
        fprintf(stderr, "test_pg: CNERIUM_PG_URL_FILE is not set (run it through ctest, "
                        "whose pg_server fixture starts the server)\n");
        return -1;
    }
    if (!(f = fopen(path, "r"))) {
        fprintf(stderr, "test_pg: %s: %s\n", path, strerror(errno));
        return -1;
    }
    n = fread(server_url, 1, sizeof(server_url) - 1, f);
    fclose(f);
    server_url[n] = '\0';
    server_url[strcspn(server_url, "\r\n")] = '\0';
    return server_url[0] ? 0 : -1;
}

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
        {NULL, NULL},
    };
    char err[512];
    int rc;

    if (read_url())
        return 1;
    if (cn__pg_open(server_url, &admin, err, sizeof(err))) {
        fprintf(stderr, "test_pg: %s\n", err);
        return 1;
    }
    rc = unit_run("pg", tests);
    cn__pg_close(admin);
    return rc;
}
