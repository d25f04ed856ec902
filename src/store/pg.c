/*
 * store/pg.c - the PostgreSQL store: connection, schema, claims, commits and
 * notifications (the only file that includes libpq-fe.h).
 *
 * Any process may open connections once it runs (after fork: a libpq connection is never
 * shared between processes). One connection is used by one thread at a time.
 *
 * Migrations: an ordered array of steps, step i taking the schema from version i - 1 to
 * i. Each step runs in its own transaction that first takes a transaction-scoped
 * advisory lock, then reads the version from cnerium_schema, applies the next step and
 * records it; the lock is released by the commit. Hosts starting at once queue on the
 * lock, and whoever comes second reads the version the first committed, so each step runs
 * once and every host ends at the same version. DDL is transactional in PostgreSQL: a
 * step that fails leaves nothing behind.
 */
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "cnerium/error.h"
#include "cnerium/stream.h"
#include "store/format.h"
#include "store/pg.h"
#include "stream/stream.h"
#include "support/bytes.h"
#include "support/clock.h"
#include "support/log.h"

struct cn_pg {
    PGconn *conn;
    int prepared; /* the hot statements are prepared on this connection (prepare_hot) */
    int claim_stage;     /* a claim in flight: the next result it waits for (0: none) */
    PGresult *claim_res; /* its statements' results, kept until the pipeline's end */
    PGresult *look_res;
};

/* Every migrating transaction takes this lock first ("cneriumM" as a big-endian int64);
 * advisory locks are per database, so hosts sharing another database do not wait. */
#define MIGRATE_LOCK_SQL "SELECT pg_advisory_xact_lock(7164775599263018317)"

#define SCHEMA_TABLE_SQL                                                                   \
    "CREATE TABLE IF NOT EXISTS cnerium_schema ("                                          \
    " version integer PRIMARY KEY,"                                                        \
    " applied_at timestamptz NOT NULL DEFAULT now())"

/* ---- schema version 1: the LMDB databases of store/store.h, as tables ----
 *
 * Byte columns hold exactly what LMDB holds (store/format.h), so the codec, its tests and
 * fuzz targets serve both stores; only integers a query filters or orders on are columns
 * of their own. */
static const char schema_v1[] =
    /* LMDB "responses" (store key -> CNRR record) and "expiry" (be64(expires) || key):
     * the index on expires_ms is the expiry index, so the sweep walks expired rows in
     * order without reading live ones. The key is bytea: it carries the client's
     * Idempotency-Key bytes as they came. */
    "CREATE TABLE cnerium_responses ("
    " store_key bytea PRIMARY KEY,"
    " record bytea NOT NULL,"
    " expires_ms bigint NOT NULL);"
    "CREATE INDEX cnerium_responses_expiry ON cnerium_responses (expires_ms);"

    /* Not in LMDB: on one host the in-flight claim lives in the shared-memory table
     * (shm/inflight.h). Hosts share this one: the owning host and a lease deadline, past
     * which another host may take the claim over (its host died). The shared-memory
     * table stays each host's first filter. */
    "CREATE TABLE cnerium_claims ("
    " store_key bytea PRIMARY KEY,"
    " fingerprint bytea NOT NULL,"
    " owner text NOT NULL,"
    " lease_until_ms bigint NOT NULL);"

    /* LMDB "events" (be64(seq) -> stored event): event is the stored event encoding
     * (its creation time included); created_ms repeats that time so retention by age is
     * a range delete without decoding. */
    "CREATE TABLE cnerium_events ("
    " position bigint PRIMARY KEY,"
    " created_ms bigint NOT NULL,"
    " event bytea NOT NULL);"

    /* LMDB "meta"'s last event seq, and the last key of "log": the last position given
     * to an event and to a stream log entry. A commit takes this one row's lock
     * (SELECT ... FOR UPDATE) and numbers its events and log entries from it, so
     * positions are gapless and in commit order across hosts (a sequence is neither:
     * numbers taken by a transaction that rolls back are lost). */
    "CREATE TABLE cnerium_event_head ("
    " id boolean PRIMARY KEY DEFAULT true CHECK (id),"
    " event_position bigint NOT NULL,"
    " log_position bigint NOT NULL);"
    "INSERT INTO cnerium_event_head (id, event_position, log_position) VALUES (true, 0, 0);"

    /* LMDB "log" (be64(position) -> stream event): the global log of every stream. */
    "CREATE TABLE cnerium_stream_log ("
    " position bigint PRIMARY KEY,"
    " entry bytea NOT NULL);"

    /* LMDB "stream_index" (stream || version -> position) and "streams" (stream -> last
     * version and position): one table serves both, the last version of a stream being
     * the primary key's last entry for it. Stream ids are printable ASCII. */
    "CREATE TABLE cnerium_streams ("
    " stream text NOT NULL,"
    " version bigint NOT NULL,"
    " position bigint NOT NULL,"
    " PRIMARY KEY (stream, version));"

    /* LMDB "meta"'s events epoch: written once, here, so every host serving the database
     * gives its WebSocket clients the same epoch, and a new database a new one. A random
     * non-zero 64-bit number in decimal, as the LMDB store makes it. */
    "CREATE TABLE cnerium_meta ("
    " key text PRIMARY KEY,"
    " value text NOT NULL);"
    "INSERT INTO cnerium_meta (key, value)"
    " SELECT 'events-epoch',"
    "  (CASE WHEN r = 0 THEN 1 WHEN r < 0 THEN r + 18446744073709551616 ELSE r END)::text"
    " FROM (SELECT ('x' || substr(md5(gen_random_uuid()::text), 1, 16))::bit(64)::bigint"
    "   ::numeric AS r) AS g;";

static const cn_pg_step_t steps[] = {
    {1, schema_v1},
};

_Static_assert(sizeof(steps) / sizeof(steps[0]) == CN_PG_SCHEMA_VERSION,
               "one migration step per schema version");

static void
seterr(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static void
seterr(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    if (!err || !errlen)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* Turns libpq's multi-line messages into one line: whitespace runs become one space,
 * none at either end. */
static void
one_line(char *s)
{
    char *w = s;
    int space = 0;

    for (const char *r = s; *r; r++) {
        if (*r == '\n' || *r == '\t' || *r == '\r' || *r == ' ') {
            space = w != s;
            continue;
        }
        if (space)
            *w++ = ' ';
        space = 0;
        *w++ = *r;
    }
    *w = '\0';
}

/* Replaces every occurrence of the len bytes at pw in msg with stars (three, or len when
 * shorter: msg never grows). */
static void
mask(char *msg, const char *pw, size_t len)
{
    size_t stars = len < 3 ? len : 3;
    char *p = msg, *hit;

    if (!len)
        return;
    while ((hit = memmem(p, strlen(p), pw, len))) {
        memset(hit, '*', stars);
        memmove(hit + stars, hit + len, strlen(hit + len) + 1);
        p = hit + stars;
    }
}

static int
hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Masks the password span [pw, pw + len) of a URL in msg, as written and percent-decoded
 * (libpq quotes the URL in its parse errors, and decoded values elsewhere). */
static void
mask_both(char *msg, const char *pw, size_t len)
{
    char dec[256];
    size_t n = 0;

    mask(msg, pw, len);
    if (len >= sizeof(dec))
        return;
    for (size_t i = 0; i < len; i++) {
        int hi, lo;

        if (pw[i] == '%' && i + 2 < len && (hi = hexval(pw[i + 1])) >= 0 &&
            (lo = hexval(pw[i + 2])) >= 0) {
            dec[n++] = (char)(hi << 4 | lo);
            i += 2;
        } else {
            dec[n++] = pw[i];
        }
    }
    mask(msg, dec, n);
}

/* Masks, in msg, the password url carries: in its user info (user:password@) or as a
 * password= query parameter. */
static void
mask_password(char *msg, const char *url)
{
    const char *auth = strstr(url, "://"), *end, *at, *colon, *q;

    if (!auth)
        return;
    auth += 3;
    end = auth + strcspn(auth, "/?#");
    at = NULL;
    for (const char *p = auth; p < end; p++) {
        if (*p == '@')
            at = p;
    }
    if (at && (colon = memchr(auth, ':', (size_t)(at - auth))))
        mask_both(msg, colon + 1, (size_t)(at - colon - 1));
    if (*end != '?')
        return;
    for (q = end + 1; *q;) {
        size_t plen = strcspn(q, "&#");

        if (plen > 9 && !strncmp(q, "password=", 9))
            mask_both(msg, q + 9, plen - 9);
        q += plen;
        if (*q != '&')
            break;
        q++;
    }
}

/* Copies libpq's message for a failed result (or, when it has none, the connection's)
 * into err as one line, after prefix. */
static void
pg_error(cn_pg_t *pg, const PGresult *res, const char *what, char *err, size_t errlen)
{
    const char *m = res ? PQresultErrorMessage(res) : "";

    if (!m || !*m)
        m = PQerrorMessage(pg->conn);
    seterr(err, errlen, "%s: %s", what, m && *m ? m : "unknown error");
    if (err && errlen)
        one_line(err);
}

/* libpq prints notices (CREATE ... IF NOT EXISTS "already exists, skipping") on stderr
 * by default; they are not errors, so only debug logging shows them. */
static void
on_notice(void *arg, const char *message)
{
    (void)arg;
    cn_log_debug("postgresql: %s", message);
}

static int
check_url(const char *url, char *err, size_t errlen)
{
    static const char accepted[] =
        "accepted schemes are postgresql:// and postgres:// (postgresql://user@host:port/db)";
    const char *sep;
    size_t n;

    if (!url || !*url) {
        seterr(err, errlen, "store URL is empty: %s", accepted);
        return CN_ECONFIG;
    }
    if (!strncmp(url, "postgresql://", 13) || !strncmp(url, "postgres://", 11))
        return 0;
    /* Name the scheme, never the rest: it may carry a password. */
    sep = strstr(url, "://");
    n = sep ? (size_t)(sep - url) : 0;
    if (n && n <= 32 && strspn(url, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                    "0123456789+-.") == n)
        seterr(err, errlen, "store URL scheme \"%.*s\" is not supported: %s", (int)n, url,
               accepted);
    else
        seterr(err, errlen, "store URL is not a URL of a supported scheme: %s", accepted);
    return CN_ECONFIG;
}

int
cn__pg_open(const char *url, cn_pg_t **out, char *err, size_t errlen)
{
    /* Defaults first, the URL last: what the URL says wins (libpq processes the keywords
     * in order, the last value of a keyword is kept). The timeouts bound a connect to a
     * host that drops packets and a statement on a connection whose server vanished
     * (keepalives while idle, tcp_user_timeout while data is unacknowledged): a request
     * gets its 503 within seconds, never waits for the kernel's 15-minute default. */
    const char *const keys[] = {"connect_timeout", "application_name", "keepalives_idle",
                                "keepalives_interval", "keepalives_count", "tcp_user_timeout",
                                "dbname", NULL};
    const char *values[] = {"10", "cnerium", "5", "2", "3", "10000", url, NULL};
    cn_pg_t *pg;
    int rc;

    if (err && errlen)
        err[0] = '\0';
    if ((rc = check_url(url, err, errlen)))
        return rc;
    if (!(pg = calloc(1, sizeof(*pg)))) {
        seterr(err, errlen, "out of memory");
        return -ENOMEM;
    }
    pg->conn = PQconnectdbParams(keys, values, 1);
    if (!pg->conn) {
        seterr(err, errlen, "postgresql: out of memory");
        free(pg);
        return -ENOMEM;
    }
    if (PQstatus(pg->conn) != CONNECTION_OK) {
        pg_error(pg, NULL, "postgresql connection failed", err, errlen);
        if (err && errlen)
            mask_password(err, url);
        cn__pg_close(pg);
        return CN_ESTORE;
    }
    PQsetNoticeProcessor(pg->conn, on_notice, NULL);
    *out = pg;
    return 0;
}

void
cn__pg_close(cn_pg_t *pg)
{
    if (!pg)
        return;
    if (pg->conn)
        PQfinish(pg->conn);
    free(pg);
}

int
cn__pg_exec(cn_pg_t *pg, const char *sql, char *err, size_t errlen)
{
    PGresult *res = PQexec(pg->conn, sql);
    ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;

    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        pg_error(pg, res, "postgresql", err, errlen);
        PQclear(res);
        return CN_ESTORE;
    }
    PQclear(res);
    return 0;
}

int
cn__pg_query_int64(cn_pg_t *pg, const char *sql, int64_t *out, char *err, size_t errlen)
{
    PGresult *res = PQexec(pg->conn, sql);
    const char *text;
    char *end;
    long long v;

    if (!res || PQresultStatus(res) != PGRES_TUPLES_OK) {
        pg_error(pg, res, "postgresql", err, errlen);
        PQclear(res);
        return CN_ESTORE;
    }
    if (PQntuples(res) != 1 || PQnfields(res) != 1 || PQgetisnull(res, 0, 0)) {
        seterr(err, errlen, "postgresql: expected one integer, got %d row(s) of %d column(s)",
               PQntuples(res), PQnfields(res));
        PQclear(res);
        return CN_ESTORE;
    }
    text = PQgetvalue(res, 0, 0);
    errno = 0;
    v = strtoll(text, &end, 10);
    if (errno || end == text || *end) {
        seterr(err, errlen, "postgresql: expected an integer, got \"%.40s\"", text);
        PQclear(res);
        return CN_ESTORE;
    }
    PQclear(res);
    *out = v;
    return 0;
}

int
cn__pg_schema_version(cn_pg_t *pg, int *version)
{
    char err[512];
    int64_t exists, v;
    int rc;

    if ((rc = cn__pg_query_int64(pg, "SELECT (to_regclass('cnerium_schema') IS NOT NULL)::int",
                                 &exists, err, sizeof(err))))
        goto fail;
    v = 0;
    if (exists && (rc = cn__pg_query_int64(pg, "SELECT coalesce(max(version), 0) FROM "
                                               "cnerium_schema",
                                           &v, err, sizeof(err))))
        goto fail;
    *version = (int)v;
    return 0;

fail:
    cn_log_error("schema version: %s", err);
    return rc;
}

/* Ends the transaction after a failure; its own result does not matter (a failed
 * transaction rolls back, and a lost connection has none left). */
static void
rollback(cn_pg_t *pg)
{
    PGresult *res = PQexec(pg->conn, "ROLLBACK");

    PQclear(res);
}

int
cn__pg_migrate_steps(cn_pg_t *pg, const cn_pg_step_t *list, size_t n, unsigned *applied,
                     char *err, size_t errlen)
{
    unsigned count = 0;
    char sql[96];
    int rc;

    if (err && errlen)
        err[0] = '\0';
    for (size_t i = 0; i < n; i++)
        CN_ASSERT(list[i].version == (int)i + 1);
    for (;;) {
        int64_t v;

        if ((rc = cn__pg_exec(pg, "BEGIN", err, errlen)))
            return rc;
        /* The lock before anything else: the version read below is then the one the
         * previous holder committed (each statement of a READ COMMITTED transaction sees
         * what was committed when it started). */
        if ((rc = cn__pg_exec(pg, MIGRATE_LOCK_SQL, err, errlen)) ||
            (rc = cn__pg_exec(pg, SCHEMA_TABLE_SQL, err, errlen)) ||
            (rc = cn__pg_query_int64(pg, "SELECT coalesce(max(version), 0) FROM cnerium_schema",
                                     &v, err, errlen)))
            goto fail;
        if (v > (int64_t)n) {
            seterr(err, errlen,
                   "the database's schema is at version %lld, newer than this Cnerium's %zu: "
                   "run a Cnerium release that knows it",
                   (long long)v, n);
            rc = CN_EVERSION;
            goto fail;
        }
        if (v == (int64_t)n) {
            /* Up to date; the commit keeps cnerium_schema if this call created it. */
            if ((rc = cn__pg_exec(pg, "COMMIT", err, errlen)))
                return rc;
            break;
        }
        if ((rc = cn__pg_exec(pg, list[v].sql, err, errlen))) {
            char inner[400];

            snprintf(inner, sizeof(inner), "%s", err ? err : "");
            seterr(err, errlen, "schema step %d: %s", list[v].version, inner);
            goto fail;
        }
        snprintf(sql, sizeof(sql), "INSERT INTO cnerium_schema (version) VALUES (%d)",
                 list[v].version);
        if ((rc = cn__pg_exec(pg, sql, err, errlen)))
            goto fail;
        if ((rc = cn__pg_exec(pg, "COMMIT", err, errlen)))
            return rc;
        count++;
    }
    if (applied)
        *applied = count;
    return 0;

fail:
    rollback(pg);
    return rc;
}

int
cn__pg_migrate(cn_pg_t *pg, char *err, size_t errlen)
{
    return cn__pg_migrate_steps(pg, steps, sizeof(steps) / sizeof(steps[0]), NULL, err,
                                errlen);
}

/* ---- claims, stored responses and commits ----
 *
 * Parameters go as text (integers) or binary (bytea); results come back binary, so a
 * record is its bytes and an integer eight big-endian bytes. */

/* A statement with n parameters; NULL with err set unless its status is want. */
static PGresult *
run(cn_pg_t *pg, const char *sql, int n, const char *const *values, const int *lengths,
    const int *formats, ExecStatusType want, char *err, size_t errlen)
{
    PGresult *res = PQexecParams(pg->conn, sql, n, NULL, values, lengths, formats, 1);

    if (!res || PQresultStatus(res) != want) {
        pg_error(pg, res, "postgresql", err, errlen);
        PQclear(res);
        return NULL;
    }
    return res;
}

static int64_t
int8_at(const PGresult *res, int row, int col)
{
    CN_ASSERT(PQgetlength(res, row, col) == 8);
    return (int64_t)cn__get_be64((const uint8_t *)PQgetvalue(res, row, col));
}

/* Statement parameters: integers as text, bytes binary. The values point into the
 * struct: build it in place, never copy it. */
typedef struct params {
    const char *v[6];
    int len[6], fmt[6], n;
    char num[6][24];
} params_t;

static void
p_bytes(params_t *p, const void *b, size_t len)
{
    CN_ASSERT(p->n < 6 && len <= INT32_MAX);
    p->v[p->n] = b;
    p->len[p->n] = (int)len;
    p->fmt[p->n++] = 1;
}

static void
p_int(params_t *p, int64_t x)
{
    CN_ASSERT(p->n < 6);
    snprintf(p->num[p->n], sizeof(p->num[0]), "%lld", (long long)x);
    p->v[p->n] = p->num[p->n];
    p->len[p->n] = 0;
    p->fmt[p->n++] = 0;
}

static int
exec_p(cn_pg_t *pg, const char *sql, const params_t *p, char *err, size_t errlen)
{
    PGresult *res = run(pg, sql, p->n, p->v, p->len, p->fmt, PGRES_COMMAND_OK, err, errlen);

    PQclear(res);
    return res ? 0 : CN_ESTORE;
}

#define RELEASE_SQL                                                                        \
    "WITH gone AS (DELETE FROM cnerium_claims"                                             \
    " WHERE store_key = $1 AND owner = $2 RETURNING store_key)"                            \
    " SELECT pg_notify('" CN_PG_DONE_CHANNEL "', encode(store_key, 'hex')) FROM gone"

static int prepare_hot(cn_pg_t *pg, char *err, size_t errlen);

/* Deletes owner's claim on skey, notifying the waiters. Returns 1 when it was owner's, 0
 * when not, or CN_ESTORE. */
static int
delete_claim(cn_pg_t *pg, const void *skey, size_t skeylen, const char *owner, char *err,
             size_t errlen)
{
    params_t p = {0};
    PGresult *res;
    int n;

    p_bytes(&p, skey, skeylen);
    p_bytes(&p, owner, strlen(owner));
    if (prepare_hot(pg, err, errlen))
        return CN_ESTORE;
    res = PQexecPrepared(pg->conn, "cn_release", p.n, p.v, p.len, p.fmt, 1);
    if (!res || PQresultStatus(res) != PGRES_TUPLES_OK) {
        pg_error(pg, res, "postgresql", err, errlen);
        PQclear(res);
        return CN_ESTORE;
    }
    n = PQntuples(res);
    PQclear(res);
    return n > 0;
}

/* The claim, as two statements sent in one pipeline (one round trip, one implicit
 * transaction, each statement its own snapshot):
 *
 * 1. Unless a live response is stored, insert the claim; on a conflict always "update",
 *    to the caller's values when the holder's lease has ended and to the holder's own
 *    otherwise, so the statement always returns the claim as it now stands: the
 *    caller's (fresh, xmax = 0, or taken over) or the holder's (fingerprint, lease). An
 *    update that keeps the values costs a row version, and it makes the answer complete
 *    even when the holder committed after this statement's snapshot was taken.
 * 2. Look again: a holder that committed between the first look and the claim left its
 *    response, which this statement sees; then the caller's claim is undone at once
 *    (and its waiters told), so nobody runs the key twice. */
#define CLAIM_SQL                                                                          \
    "WITH s AS (SELECT 1 FROM cnerium_responses"                                           \
    " WHERE store_key = $1 AND expires_ms > $5::int8)"                                      \
    " INSERT INTO cnerium_claims AS c (store_key, fingerprint, owner, lease_until_ms)"      \
    " SELECT $1, $2, $3, $4::int8 WHERE NOT EXISTS (SELECT 1 FROM s)"                      \
    " ON CONFLICT (store_key) DO UPDATE SET"                                               \
    " fingerprint = CASE WHEN c.lease_until_ms <= $5::int8 THEN EXCLUDED.fingerprint"      \
    " ELSE c.fingerprint END,"                                                             \
    " owner = CASE WHEN c.lease_until_ms <= $5::int8 THEN EXCLUDED.owner ELSE c.owner END,"\
    " lease_until_ms = CASE WHEN c.lease_until_ms <= $5::int8"                            \
    " THEN EXCLUDED.lease_until_ms ELSE c.lease_until_ms END"                              \
    " RETURNING (c.owner = $3)::int4, (c.xmax = 0)::int4,"                                 \
    " (c.fingerprint = $2)::int4, c.lease_until_ms"
#define LOOK_AGAIN_SQL                                                                     \
    "WITH r AS (SELECT record FROM cnerium_responses"                                      \
    " WHERE store_key = $1 AND expires_ms > $3::int8),"                                    \
    " d AS (DELETE FROM cnerium_claims WHERE store_key = $1 AND owner = $2"                \
    " AND EXISTS (SELECT 1 FROM r) RETURNING store_key),"                                  \
    " n AS (SELECT pg_notify('" CN_PG_DONE_CHANNEL "', encode(store_key, 'hex')) FROM d)"  \
    " SELECT record, (SELECT count(*) FROM n) FROM r"

static int
int4_at(const PGresult *res, int row, int col)
{
    const uint8_t *p = (const uint8_t *)PQgetvalue(res, row, col);

    CN_ASSERT(PQgetlength(res, row, col) == 4);
    return (int)((uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]);
}

/* Ends a claim: frees its results and, after an error, drops what is left of the
 * pipeline and leaves pipeline mode (reading the rest may wait for the server to send
 * it, as any libpq error path does). */
static void
claim_end(cn_pg_t *pg)
{
    PGresult *res;

    for (int i = 0; i < 16 && PQpipelineStatus(pg->conn) != PQ_PIPELINE_OFF; i++) {
        while ((res = PQgetResult(pg->conn)))
            PQclear(res);
        PQexitPipelineMode(pg->conn);
    }
    PQclear(pg->claim_res);
    PQclear(pg->look_res);
    pg->claim_res = pg->look_res = NULL;
    pg->claim_stage = 0;
    PQsetnonblocking(pg->conn, 0);
}

/* The answer, from both statements' results: a response seen by the look again wins;
 * then the claim as it stands; no row at all: the first look saw a response that has
 * gone since (expired, swept), and the caller asks again. */
static int
claim_decide(const PGresult *c, const PGresult *l, cn_pg_claim_t *out)
{
    memset(out, 0, sizeof(*out));
    if (PQntuples(l) == 1) {
        size_t n = (size_t)PQgetlength(l, 0, 0);

        if (!(out->record = malloc(n ? n : 1)))
            return -ENOMEM;
        memcpy(out->record, PQgetvalue(l, 0, 0), n);
        out->record_len = n;
        out->state = CN_PG_CLAIM_STORED;
    } else if (PQntuples(c) == 1) {
        out->state = !int4_at(c, 0, 0) ? CN_PG_CLAIM_HELD
                     : int4_at(c, 0, 1) ? CN_PG_CLAIM_OWNED
                                        : CN_PG_CLAIM_TAKEN_OVER;
        out->same_fingerprint = int4_at(c, 0, 2);
        out->lease_until_ms = int8_at(c, 0, 3);
    } else {
        out->state = CN_PG_CLAIM_AGAIN;
    }
    return 0;
}

int
cn__pg_claim_send(cn_pg_t *pg, const void *skey, size_t skeylen, const void *fp, size_t fplen,
                  const char *owner, int64_t now_ms, uint32_t lease_ms, char *err,
                  size_t errlen)
{
    params_t c = {0}, l = {0};

    if (err && errlen)
        err[0] = '\0';
    CN_ASSERT(!pg->claim_stage);
    p_bytes(&c, skey, skeylen);
    p_bytes(&c, fp, fplen);
    p_bytes(&c, owner, strlen(owner));
    p_int(&c, now_ms + (int64_t)lease_ms);
    p_int(&c, now_ms);
    p_bytes(&l, skey, skeylen);
    p_bytes(&l, owner, strlen(owner));
    p_int(&l, now_ms);
    if (prepare_hot(pg, err, errlen))
        return CN_ESTORE;
    if (PQsetnonblocking(pg->conn, 1) || !PQenterPipelineMode(pg->conn) ||
        !PQsendQueryPrepared(pg->conn, "cn_claim", c.n, c.v, c.len, c.fmt, 1) ||
        !PQsendQueryPrepared(pg->conn, "cn_look", l.n, l.v, l.len, l.fmt, 1) ||
        !PQpipelineSync(pg->conn) || PQflush(pg->conn) < 0) {
        pg_error(pg, NULL, "postgresql", err, errlen);
        claim_end(pg);
        return CN_ESTORE;
    }
    pg->claim_stage = 1;
    return 0;
}

int
cn__pg_claim_want_write(cn_pg_t *pg)
{
    return pg->claim_stage && PQflush(pg->conn) == 1;
}

/* The next result of the pipeline, or NULL when it needs more input (*more) or ended a
 * statement (a NULL result: *more is 0). */
static PGresult *
next_result(cn_pg_t *pg, int *more)
{
    *more = PQisBusy(pg->conn);
    return *more ? NULL : PQgetResult(pg->conn);
}

int
cn__pg_claim_recv(cn_pg_t *pg, cn_pg_claim_t *out, char *err, size_t errlen)
{
    PGresult *res;
    int more, rc;

    if (err && errlen)
        err[0] = '\0';
    CN_ASSERT(pg->claim_stage);
    if (PQflush(pg->conn) < 0 || !PQconsumeInput(pg->conn)) {
        pg_error(pg, NULL, "postgresql", err, errlen);
        claim_end(pg);
        return CN_ESTORE;
    }
    /* Stages: 1 the claim's result, 2 its end, 3 the look again's result, 4 its end, 5
     * the sync. Nothing is answered before the end: out is written only on success. */
    for (; pg->claim_stage <= 5; pg->claim_stage++) {
        int stage = pg->claim_stage, ok;

        res = next_result(pg, &more);
        if (more)
            return -EAGAIN;
        if (stage == 1 || stage == 3)
            ok = res && PQresultStatus(res) == PGRES_TUPLES_OK &&
                 PQnfields(res) == (stage == 1 ? 4 : 2);
        else if (stage == 5)
            ok = res && PQresultStatus(res) == PGRES_PIPELINE_SYNC;
        else
            ok = !res; /* one result per statement */
        if (!ok) {
            pg_error(pg, res, res && (stage == 2 || stage == 4) ? "postgresql: extra result"
                                                                  : "postgresql",
                     err, errlen);
            PQclear(res);
            claim_end(pg);
            return CN_ESTORE;
        }
        if (stage == 1)
            pg->claim_res = res;
        else if (stage == 3)
            pg->look_res = res;
        else
            PQclear(res);
    }
    if (!PQexitPipelineMode(pg->conn) || PQsetnonblocking(pg->conn, 0)) {
        pg_error(pg, NULL, "postgresql: leaving pipeline mode", err, errlen);
        claim_end(pg);
        return CN_ESTORE;
    }
    rc = claim_decide(pg->claim_res, pg->look_res, out);
    claim_end(pg);
    if (rc)
        seterr(err, errlen, "out of memory");
    return rc;
}

int
cn__pg_fd(const cn_pg_t *pg)
{
    return PQsocket(pg->conn);
}

int
cn__pg_claim(cn_pg_t *pg, const void *skey, size_t skeylen, const void *fp, size_t fplen,
             const char *owner, int64_t now_ms, uint32_t lease_ms, cn_pg_claim_t *out,
             char *err, size_t errlen)
{
    for (int pass = 0; pass < 8; pass++) {
        int rc = cn__pg_claim_send(pg, skey, skeylen, fp, fplen, owner, now_ms, lease_ms, err,
                                   errlen);

        if (rc)
            return rc;
        while ((rc = cn__pg_claim_recv(pg, out, err, errlen)) == -EAGAIN) {
            struct pollfd p = {cn__pg_fd(pg),
                               (short)(POLLIN | (cn__pg_claim_want_write(pg) ? POLLOUT : 0)),
                               0};

            /* Bounded: 10 s without a byte from the server ends it. */
            if (poll(&p, 1, 10000) == 0) {
                seterr(err, errlen, "postgresql: no answer to a claim within 10 s");
                claim_end(pg);
                return CN_ESTORE;
            }
        }
        if (rc || out->state != CN_PG_CLAIM_AGAIN)
            return rc;
    }
    seterr(err, errlen, "postgresql: the claim on a key kept changing; try again");
    return CN_ESTORE;
}

/* Sends one claim's two statements into the pipeline. */
static int
claim_queue(cn_pg_t *pg, const cn_pg_claim_req_t *r, int64_t now_ms)
{
    params_t c = {0}, l = {0};

    p_bytes(&c, r->skey, r->skeylen);
    p_bytes(&c, r->fp, r->fplen);
    p_bytes(&c, r->owner, strlen(r->owner));
    p_int(&c, now_ms + (int64_t)r->lease_ms);
    p_int(&c, now_ms);
    p_bytes(&l, r->skey, r->skeylen);
    p_bytes(&l, r->owner, strlen(r->owner));
    p_int(&l, now_ms);
    return PQsendQueryPrepared(pg->conn, "cn_claim", c.n, c.v, c.len, c.fmt, 1) &&
           PQsendQueryPrepared(pg->conn, "cn_look", l.n, l.v, l.len, l.fmt, 1);
}

/* The next result of the pipeline that is not the NULL ending a statement's results;
 * NULL when the connection failed. */
static PGresult *
pipeline_result(cn_pg_t *pg)
{
    for (int nulls = 0; nulls < 3; nulls++) {
        PGresult *res = PQgetResult(pg->conn);
        if (res)
            return res;
        if (PQstatus(pg->conn) != CONNECTION_OK)
            break;
    }
    return NULL;
}

/* Reads the sync that ends a pipeline's statements and leaves pipeline mode. Returns 0
 * or CN_ESTORE with err set. */
static int
pipeline_end(cn_pg_t *pg, char *err, size_t errlen)
{
    PGresult *r = pipeline_result(pg);
    int ok = r && PQresultStatus(r) == PGRES_PIPELINE_SYNC;

    if (!ok)
        pg_error(pg, r, "postgresql", err, errlen);
    PQclear(r);
    if (ok && !PQexitPipelineMode(pg->conn)) {
        pg_error(pg, NULL, "postgresql: leaving pipeline mode", err, errlen);
        ok = 0;
    }
    return ok ? 0 : CN_ESTORE;
}

/* Orders claims as PostgreSQL orders bytea keys (bytes, then length): every batch and
 * every commit locks claim rows in this order, so two never wait on each other. */
static int
key_order(const void *skey_a, size_t len_a, const void *skey_b, size_t len_b)
{
    int c = memcmp(skey_a, skey_b, len_a < len_b ? len_a : len_b);

    return c ? c : (len_a > len_b) - (len_a < len_b);
}

static int
req_order(const void *a, const void *b)
{
    const cn_pg_claim_req_t *x = *(cn_pg_claim_req_t *const *)a;
    const cn_pg_claim_req_t *y = *(cn_pg_claim_req_t *const *)b;

    return key_order(x->skey, x->skeylen, y->skey, y->skeylen);
}

int
cn__pg_claim_many(cn_pg_t *pg, cn_pg_claim_req_t *reqs, size_t n, int64_t now_ms, char *err,
                  size_t errlen)
{
    cn_pg_claim_req_t *order[CN_PG_CLAIM_MANY_MAX];
    PGresult *res[2 * CN_PG_CLAIM_MANY_MAX] = {0}, *r;
    size_t i, got = 0;
    int rc = 0;

    if (err && errlen)
        err[0] = '\0';
    CN_ASSERT(!pg->claim_stage && n <= CN_PG_CLAIM_MANY_MAX);
    if (prepare_hot(pg, err, errlen))
        return CN_ESTORE;
    for (i = 0; i < n; i++)
        order[i] = &reqs[i];
    qsort(order, n, sizeof(order[0]), req_order);
    /* All of them in one implicit transaction (one sync at the end): one WAL flush for
     * the batch, and each claim still two statements, each with its own snapshot. */
    if (!PQenterPipelineMode(pg->conn))
        rc = CN_ESTORE;
    for (i = 0; !rc && i < n; i++)
        if (!claim_queue(pg, order[i], now_ms))
            rc = CN_ESTORE;
    if (!rc && (!PQpipelineSync(pg->conn) || PQflush(pg->conn) != 0))
        rc = CN_ESTORE;
    if (rc)
        pg_error(pg, NULL, "postgresql", err, errlen);
    /* 2n results (a failed statement fails the rest of the batch: aborted), then the
     * sync. */
    for (; !rc && got < 2 * n; got++) {
        if (!(r = pipeline_result(pg))) {
            pg_error(pg, NULL, "postgresql", err, errlen);
            rc = CN_ESTORE;
            break;
        }
        res[got] = r;
        if (PQresultStatus(r) != PGRES_TUPLES_OK ||
            PQnfields(r) != (got % 2 == 0 ? 4 : 2)) {
            if (!err || !err[0] || PQresultStatus(r) == PGRES_FATAL_ERROR)
                pg_error(pg, r, "postgresql", err, errlen);
            rc = CN_ESTORE;
        }
    }
    if (!rc)
        rc = pipeline_end(pg, err, errlen);
    for (i = 0; !rc && i < n; i++)
        order[i]->rc = claim_decide(res[2 * i], res[2 * i + 1], &order[i]->out);
    for (i = 0; i < got; i++)
        PQclear(res[i]);
    if (rc) {
        claim_end(pg);
        return rc;
    }
    /* An AGAIN (the response first seen went away meanwhile) is asked again alone. */
    for (i = 0; i < n; i++) {
        cn_pg_claim_req_t *q = &reqs[i];
        if (!q->rc && q->out.state == CN_PG_CLAIM_AGAIN)
            q->rc = cn__pg_claim(pg, q->skey, q->skeylen, q->fp, q->fplen, q->owner, now_ms,
                                 q->lease_ms, &q->out, err, errlen);
    }
    return 0;
}

int
cn__pg_release(cn_pg_t *pg, const void *skey, size_t skeylen, const char *owner, char *err,
               size_t errlen)
{
    int rc;

    if (err && errlen)
        err[0] = '\0';
    rc = delete_claim(pg, skey, skeylen, owner, err, errlen);
    return rc < 0 ? rc : rc ? 0 : CN_ELOST;
}

/* The last version of stream (0 for none), or a negative error. */
static int
stream_version(cn_pg_t *pg, const char *stream, size_t len, int64_t *version, char *err,
               size_t errlen)
{
    params_t p = {0};
    PGresult *res;

    p_bytes(&p, stream, len);
    res = run(pg, "SELECT coalesce(max(version), 0)::int8 FROM cnerium_streams WHERE stream = $1",
              p.n, p.v, p.len, p.fmt, PGRES_TUPLES_OK, err, errlen);
    if (!res)
        return CN_ESTORE;
    *version = int8_at(res, 0, 0);
    PQclear(res);
    return 0;
}

typedef struct {
    cn_pg_t *pg;
    char *err;
    size_t errlen;
} pg_version_t;

static int
pg_version(const char *stream, size_t len, uint64_t *version, void *arg)
{
    pg_version_t *p = arg;
    int64_t v;
    int rc = stream_version(p->pg, stream, len, &v, p->err, p->errlen);

    if (!rc)
        *version = (uint64_t)v;
    return rc;
}

/* The list's expected versions against the database (cn__appends_check). */
static int
check_appends(cn_pg_t *pg, const uint8_t *list, size_t len, char *err, size_t errlen)
{
    pg_version_t p = {pg, err, errlen};

    return cn__appends_check(list, len, pg_version, &p);
}

/* 0 when the encoded event list decodes whole, else CN_ECORRUPT. */
static int
check_events(const uint8_t *list, size_t len)
{
    const uint8_t *cur, *end = list + len;
    long count = cn__events_begin(list, len, &cur);
    cn_event_view_t ev;

    if (count < 0)
        return CN_ECORRUPT;
    for (long i = 0; i < count; i++) {
        if (cn__events_next(&cur, end, &ev))
            return CN_ECORRUPT;
    }
    return cur == end ? 0 : CN_ECORRUPT;
}

/* Stores ev (its created_ms set) at position ++*pos. */
static int
put_event(cn_pg_t *pg, const cn_event_view_t *ev, int64_t *pos, char *err, size_t errlen)
{
    size_t size = cn__event_stored_size(ev);
    uint8_t stack[2048], *buf = size <= sizeof(stack) ? stack : malloc(size);
    params_t p = {0};
    int rc;

    if (!buf)
        return -ENOMEM;
    cn__event_stored_encode(ev, buf);
    p_int(&p, ++*pos);
    p_int(&p, (int64_t)ev->created_ms);
    p_bytes(&p, buf, size);
    rc = exec_p(pg,
                "INSERT INTO cnerium_events (position, created_ms, event)"
                " VALUES ($1::int8, $2::int8, $3)",
                &p, err, errlen);
    if (buf != stack)
        free(buf);
    return rc;
}

static int
put_events(cn_pg_t *pg, const uint8_t *list, size_t len, int64_t now, int64_t *pos,
           char *err, size_t errlen)
{
    const uint8_t *cur, *end = list + len;
    long count = cn__events_begin(list, len, &cur);
    int rc;

    for (long i = 0; i < count; i++) {
        cn_event_view_t ev;

        cn__events_next(&cur, end, &ev); /* checked by check_events */
        ev.created_ms = (uint64_t)now;
        ev.merged = 0;
        if ((rc = put_event(pg, &ev, pos, err, errlen)))
            return rc;
    }
    return 0;
}

/* Writes a list check_appends accepted: each append becomes the next version of its
 * stream and the next position of the stream log (after *log_pos), and its published
 * copies the next events (after *ev_pos). */
static int
put_appends(cn_pg_t *pg, const uint8_t *list, size_t len, int64_t now, int64_t *log_pos,
            int64_t *ev_pos, char *err, size_t errlen)
{
    const uint8_t *cur, *end = list + len;
    long count = cn__appends_begin(list, len, &cur);
    int rc;

    for (long i = 0; i < count; i++) {
        cn_append_view_t a;
        cn_log_view_t e;
        int64_t version;
        uint8_t *entry;
        size_t size;
        params_t p = {0};

        cn__appends_next(&cur, end, &a);
        if ((rc = stream_version(pg, a.stream, a.stream_len, &version, err, errlen)))
            return rc;
        version++;
        ++*log_pos;
        e = (cn_log_view_t){(uint64_t)now, (uint64_t)version, a.stream, a.stream_len, a.type,
                            a.type_len, a.data, a.data_len};
        size = cn__log_entry_size(&e);
        if (!(entry = malloc(size)))
            return -ENOMEM;
        cn__log_entry_encode(&e, entry);
        p_int(&p, *log_pos);
        p_bytes(&p, entry, size);
        rc = exec_p(pg, "INSERT INTO cnerium_stream_log (position, entry) VALUES ($1::int8, $2)",
                    &p, err, errlen);
        free(entry);
        if (rc)
            return rc;
        p = (params_t){0};
        p_bytes(&p, a.stream, a.stream_len);
        p_int(&p, version);
        p_int(&p, *log_pos);
        if ((rc = exec_p(pg,
                         "INSERT INTO cnerium_streams (stream, version, position)"
                         " VALUES ($1, $2::int8, $3::int8)",
                         &p, err, errlen)))
            return rc;
        if (a.nrooms) {
            /* One payload, one published event per room. */
            uint8_t *buf = malloc(cn__append_event_payload_cap(&a));
            cn_event_view_t ev = {.type = "event", .type_len = 5,
                                  .created_ms = (uint64_t)now, .merged = 1};

            if (!buf)
                return -ENOMEM;
            ev.payload = (const char *)buf;
            ev.payload_len =
                cn__append_event_payload(&a, (uint64_t)version, (uint64_t)*log_pos, buf);
            for (unsigned r = 0; r < a.nrooms && !rc; r++) {
                ev.room = a.rooms[r];
                ev.room_len = a.room_lens[r];
                rc = put_event(pg, &ev, ev_pos, err, errlen);
            }
            free(buf);
            if (rc)
                return rc;
        }
    }
    return 0;
}

/* Decides one record (status) and, when it is to be stored, writes it. Returns 0 or the
 * error that fails the whole transaction. */
static int
apply_one(cn_pg_t *pg, cn_pg_put_t *item, int64_t now, int64_t *ev_pos, int64_t *log_pos,
          char *err, size_t errlen)
{
    cn_store_raw_put_t *it = &item->put;
    cn_record_t rec;
    int rc;

    it->status = 0;
    if (it->key) {
        if (it->keylen > CN_STORE_KEY_MAX) {
            it->status = CN_ETOOBIG;
            return 0;
        }
        if ((it->status = cn__record_decode(it->bytes, it->len, &rec)))
            return 0;
    }
    if (it->events && (it->status = check_events(it->events, it->events_len)))
        return 0;
    /* Expected versions, then the claim, before anything is written: a refused record
     * writes nothing at all. */
    if (it->appends && (rc = check_appends(pg, it->appends, it->appends_len, err, errlen))) {
        if (rc != CN_ECORRUPT && rc != CN_ECONFLICT)
            return rc;
        it->status = rc;
        return 0;
    }
    if (it->key && item->owner) {
        /* The last check and the first write: the claim's row is deleted (and stays
         * locked to the commit, so nobody takes it over meanwhile), or it was not
         * owner's any more. */
        if ((rc = delete_claim(pg, it->key, it->keylen, item->owner, err, errlen)) < 0)
            return rc;
        if (!rc) {
            it->status = CN_ELOST;
            return 0;
        }
    }
    if (it->events && (rc = put_events(pg, it->events, it->events_len, now, ev_pos, err, errlen)))
        return rc;
    if (it->appends &&
        (rc = put_appends(pg, it->appends, it->appends_len, now, log_pos, ev_pos, err, errlen)))
        return rc;
    if (it->key) {
        params_t p = {0};

        p_bytes(&p, it->key, it->keylen);
        p_bytes(&p, it->bytes, it->len);
        p_int(&p, rec.expires_ms > INT64_MAX ? INT64_MAX : (int64_t)rec.expires_ms);
        if ((rc = exec_p(pg,
                         "INSERT INTO cnerium_responses (store_key, record, expires_ms)"
                         " VALUES ($1, $2, $3::int8) ON CONFLICT (store_key) DO UPDATE"
                         " SET record = EXCLUDED.record, expires_ms = EXCLUDED.expires_ms",
                         &p, err, errlen)))
            return rc;
    }
    return 0;
}

/* The record's claim ends and the record is stored, in one statement: one row (the
 * notification) when the claim was owner's and the record is stored, none when the claim
 * was not owner's any more (nothing stored). */
#define PUT_CLAIMED_SQL                                                                    \
    "WITH d AS (DELETE FROM cnerium_claims WHERE store_key = $1 AND owner = $2"            \
    " RETURNING store_key),"                                                               \
    " i AS (INSERT INTO cnerium_responses (store_key, record, expires_ms)"                 \
    " SELECT $1, $3, $4::int8 FROM d ON CONFLICT (store_key) DO UPDATE"                    \
    " SET record = EXCLUDED.record, expires_ms = EXCLUDED.expires_ms RETURNING 1)"         \
    " SELECT pg_notify('" CN_PG_DONE_CHANNEL "', encode(store_key, 'hex')) FROM d"
#define PUT_SQL                                                                            \
    "INSERT INTO cnerium_responses (store_key, record, expires_ms)"                        \
    " VALUES ($1, $2, $3::int8) ON CONFLICT (store_key) DO UPDATE"                         \
    " SET record = EXCLUDED.record, expires_ms = EXCLUDED.expires_ms"

/* Prepares the statements every request runs, once per connection (again after a
 * reconnect): parsing and planning them on every call was most of the server's CPU. */
static int
prepare_hot(cn_pg_t *pg, char *err, size_t errlen)
{
    static const struct {
        const char *name, *sql;
    } hot[] = {
        {"cn_claim", CLAIM_SQL},
        {"cn_look", LOOK_AGAIN_SQL},
        {"cn_put_claimed", PUT_CLAIMED_SQL},
        {"cn_put", PUT_SQL},
        {"cn_release", RELEASE_SQL},
    };

    if (pg->prepared)
        return 0;
    for (size_t i = 0; i < sizeof(hot) / sizeof(hot[0]); i++) {
        PGresult *res = PQprepare(pg->conn, hot[i].name, hot[i].sql, 0, NULL);
        if (!res || PQresultStatus(res) != PGRES_COMMAND_OK) {
            pg_error(pg, res, "postgresql: preparing a statement", err, errlen);
            PQclear(res);
            return CN_ESTORE;
        }
        PQclear(res);
    }
    pg->prepared = 1;
    return 0;
}

static int
item_order(const void *a, const void *b)
{
    const cn_pg_put_t *x = *(cn_pg_put_t *const *)a, *y = *(cn_pg_put_t *const *)b;

    return key_order(x->put.key, x->put.keylen, y->put.key, y->put.keylen);
}

/* A batch of plain records (no events, no appends): every statement sent at once in one
 * pipeline, one transaction, one round trip, claims ended in key order. */
static int
apply_plain(cn_pg_t *pg, cn_pg_put_t *items, size_t n, char *err, size_t errlen)
{
    cn_pg_put_t **order, **sent;
    size_t nsent = 0, i;
    int rc = 0;

    if (!(order = malloc(2 * n * sizeof(*order)))) {
        seterr(err, errlen, "out of memory");
        return -ENOMEM;
    }
    sent = order + n;
    if (prepare_hot(pg, err, errlen)) {
        free(order);
        return CN_ESTORE;
    }
    for (i = 0; i < n; i++)
        order[i] = &items[i];
    qsort(order, n, sizeof(*order), item_order);
    if (!PQenterPipelineMode(pg->conn))
        rc = CN_ESTORE;
    for (i = 0; !rc && i < n; i++) {
        cn_store_raw_put_t *it = &order[i]->put;
        cn_record_t rec;
        params_t p = {0};
        int64_t expires;

        it->status = 0;
        if (it->keylen > CN_STORE_KEY_MAX) {
            it->status = CN_ETOOBIG;
            continue;
        }
        if ((it->status = cn__record_decode(it->bytes, it->len, &rec)))
            continue;
        expires = rec.expires_ms > INT64_MAX ? INT64_MAX : (int64_t)rec.expires_ms;
        p_bytes(&p, it->key, it->keylen);
        if (order[i]->owner)
            p_bytes(&p, order[i]->owner, strlen(order[i]->owner));
        p_bytes(&p, it->bytes, it->len);
        p_int(&p, expires);
        if (!PQsendQueryPrepared(pg->conn, order[i]->owner ? "cn_put_claimed" : "cn_put", p.n,
                                 p.v, p.len, p.fmt, 1))
            rc = CN_ESTORE;
        else
            sent[nsent++] = order[i];
    }
    if (!rc && (!PQpipelineSync(pg->conn) || PQflush(pg->conn) != 0))
        rc = CN_ESTORE;
    if (rc)
        pg_error(pg, NULL, "postgresql", err, errlen);
    for (i = 0; !rc && i < nsent; i++) {
        PGresult *r = pipeline_result(pg);
        ExecStatusType want = sent[i]->owner ? PGRES_TUPLES_OK : PGRES_COMMAND_OK;

        if (!r || PQresultStatus(r) != want) {
            pg_error(pg, r, "postgresql", err, errlen);
            rc = CN_ESTORE;
        } else if (sent[i]->owner && PQntuples(r) == 0) {
            sent[i]->put.status = CN_ELOST; /* taken over: nothing stored */
        }
        PQclear(r);
    }
    if (!rc)
        rc = pipeline_end(pg, err, errlen);
    if (rc)
        claim_end(pg); /* drops what is left of the pipeline; the sync rolled it back */
    free(order);
    return rc;
}

int
cn__pg_apply(cn_pg_t *pg, cn_pg_put_t *items, size_t n, int64_t now_ms, int64_t *event_head,
             char *err, size_t errlen)
{
    int64_t ev_pos = 0, log_pos = 0, ev_start = 0, log_start = 0;
    int head = 0, rc;

    if (err && errlen)
        err[0] = '\0';
    for (size_t i = 0; i < n; i++)
        head |= items[i].put.events || items[i].put.appends;
    if (!head) {
        if ((rc = apply_plain(pg, items, n, err, errlen)))
            return rc;
        if (event_head)
            *event_head = -1;
        return 0;
    }
    if ((rc = cn__pg_exec(pg, "BEGIN", err, errlen)))
        return rc;
    if (head) {
        /* One committer with events at a time, across hosts: positions are gapless and
         * in commit order, and stream versions read below cannot move before the
         * commit. */
        PGresult *res = run(pg,
                            "SELECT event_position, log_position FROM cnerium_event_head"
                            " WHERE id FOR UPDATE",
                            0, NULL, NULL, NULL, PGRES_TUPLES_OK, err, errlen);
        if (!res || PQntuples(res) != 1) {
            if (res)
                seterr(err, errlen, "postgresql: the event head row is missing");
            PQclear(res);
            rc = CN_ESTORE;
            goto fail;
        }
        ev_pos = ev_start = int8_at(res, 0, 0);
        log_pos = log_start = int8_at(res, 0, 1);
        PQclear(res);
    }
    for (size_t i = 0; i < n; i++) {
        if ((rc = apply_one(pg, &items[i], now_ms, &ev_pos, &log_pos, err, errlen)))
            goto fail;
    }
    if (ev_pos != ev_start || log_pos != log_start) {
        params_t p = {0};
        PGresult *res;

        p_int(&p, ev_pos);
        p_int(&p, log_pos);
        p_int(&p, ev_pos != ev_start);
        if (!(res = run(pg,
                        "WITH h AS (UPDATE cnerium_event_head SET event_position = $1::int8,"
                        " log_position = $2::int8 WHERE id RETURNING event_position)"
                        " SELECT pg_notify('" CN_PG_EVENTS_CHANNEL "', event_position::text)"
                        " FROM h WHERE $3::int8 = 1",
                        p.n, p.v, p.len, p.fmt, PGRES_TUPLES_OK, err, errlen))) {
            rc = CN_ESTORE;
            goto fail;
        }
        PQclear(res);
    }
    if ((rc = cn__pg_exec(pg, "COMMIT", err, errlen)))
        return rc;
    if (event_head)
        *event_head = head ? ev_pos : -1;
    return 0;

fail:
    rollback(pg);
    return rc;
}

/* ---- reading and housekeeping ---- */

int
cn__pg_sweep(cn_pg_t *pg, int64_t now_ms, size_t max, int64_t claim_grace_ms,
             size_t *deleted, char *err, size_t errlen)
{
    params_t p = {0};
    PGresult *res;

    if (err && errlen)
        err[0] = '\0';
    *deleted = 0;
    p_int(&p, now_ms);
    p_int(&p, (int64_t)(max > INT32_MAX ? INT32_MAX : max));
    p_int(&p, now_ms - claim_grace_ms);
    /* The expiry index gives the oldest first; one statement, one transaction. */
    if (!(res = run(pg,
                    "WITH r AS (DELETE FROM cnerium_responses WHERE store_key IN"
                    " (SELECT store_key FROM cnerium_responses WHERE expires_ms <= $1::int8"
                    " ORDER BY expires_ms LIMIT $2::int8) RETURNING 1),"
                    " c AS (DELETE FROM cnerium_claims WHERE store_key IN"
                    " (SELECT store_key FROM cnerium_claims WHERE lease_until_ms < $3::int8"
                    " LIMIT $2::int8) RETURNING 1)"
                    " SELECT (SELECT count(*) FROM r)::int8, (SELECT count(*) FROM c)::int8",
                    p.n, p.v, p.len, p.fmt, PGRES_TUPLES_OK, err, errlen)))
        return CN_ESTORE;
    *deleted = (size_t)int8_at(res, 0, 0);
    PQclear(res);
    return 0;
}

/* Runs a read with parameters p and hands each row to row(res, i, arg); non-zero from
 * row stops (returned when negative). */
static int
each_row(cn_pg_t *pg, const char *sql, const params_t *p,
         int (*row)(const PGresult *res, int i, void *arg), void *arg, char *err,
         size_t errlen)
{
    PGresult *res = run(pg, sql, p->n, p->v, p->len, p->fmt, PGRES_TUPLES_OK, err, errlen);
    int rc = 0;

    if (!res)
        return CN_ESTORE;
    for (int i = 0; i < PQntuples(res) && !rc; i++)
        rc = row(res, i, arg);
    PQclear(res);
    return rc < 0 ? rc : 0;
}

typedef struct {
    int (*cb)(uint64_t seq, const uint8_t *p, size_t len, void *arg);
    void *arg;
} events_read_t;

static int
event_row(const PGresult *res, int i, void *arg)
{
    events_read_t *r = arg;

    return r->cb((uint64_t)int8_at(res, i, 0), (const uint8_t *)PQgetvalue(res, i, 1),
                 (size_t)PQgetlength(res, i, 1), r->arg)
               ? 1
               : 0;
}

int
cn__pg_events_read(cn_pg_t *pg, uint64_t from, size_t max,
                   int (*cb)(uint64_t seq, const uint8_t *p, size_t len, void *arg), void *arg,
                   char *err, size_t errlen)
{
    events_read_t r = {cb, arg};
    params_t p = {0};

    p_int(&p, from > INT64_MAX ? INT64_MAX : (int64_t)from);
    p_int(&p, (int64_t)(max > INT32_MAX ? INT32_MAX : max));
    return each_row(pg,
                    "SELECT position, event FROM cnerium_events WHERE position >= $1::int8"
                    " ORDER BY position LIMIT $2::int8",
                    &p, event_row, &r, err, errlen);
}

/* One row of int8 columns into out[ncols]. */
static int
query_int8s(cn_pg_t *pg, const char *sql, int64_t *out, int ncols, char *err, size_t errlen)
{
    PGresult *res = run(pg, sql, 0, NULL, NULL, NULL, PGRES_TUPLES_OK, err, errlen);

    if (!res)
        return CN_ESTORE;
    if (PQntuples(res) != 1 || PQnfields(res) != ncols) {
        PQclear(res);
        seterr(err, errlen, "postgresql: expected one row of %d integers", ncols);
        return CN_ESTORE;
    }
    for (int i = 0; i < ncols; i++)
        out[i] = int8_at(res, 0, i);
    PQclear(res);
    return 0;
}

int
cn__pg_events_bounds(cn_pg_t *pg, uint64_t *oldest, uint64_t *newest, char *err, size_t errlen)
{
    int64_t v[2];
    int rc = query_int8s(pg,
                         "SELECT coalesce(min(position), 0)::int8, coalesce(max(position), 0)::int8"
                         " FROM cnerium_events",
                         v, 2, err, errlen);

    if (rc)
        return rc;
    *oldest = (uint64_t)v[0];
    *newest = (uint64_t)v[1];
    return 0;
}

int
cn__pg_events_prune(cn_pg_t *pg, uint64_t keep, uint64_t min_created_ms, size_t max,
                    size_t *deleted, char *err, size_t errlen)
{
    params_t p = {0};
    PGresult *res;

    *deleted = 0;
    p_int(&p, (int64_t)(keep > INT64_MAX ? INT64_MAX : keep));
    p_int(&p, (int64_t)(min_created_ms > INT64_MAX ? INT64_MAX : min_created_ms));
    p_int(&p, (int64_t)(max > INT32_MAX ? INT32_MAX : max));
    /* From the oldest on, while more than keep remain or the event is older than the
     * age limit, at most max. Positions are gapless and pruning takes the oldest, so
     * the events are exactly oldest..newest: "more than keep remain" is a position
     * bound, and the age bound is the first young event's position (found by walking
     * the primary key from the oldest, stopping at the first). Positions are never
     * reused: the head row keeps the last one. */
    if (!(res = run(pg,
                    "WITH b AS (SELECT min(position) AS lo, max(position) AS hi"
                    " FROM cnerium_events),"
                    " y AS (SELECT position AS young FROM cnerium_events"
                    " WHERE created_ms >= $2::int8 ORDER BY position LIMIT 1),"
                    " u AS (SELECT LEAST(b.lo + $3::int8 - 1, GREATEST("
                    " CASE WHEN $1::int8 > 0 THEN b.hi - $1::int8 ELSE 0 END,"
                    " CASE WHEN $2::int8 > 0 THEN coalesce((SELECT young FROM y) - 1, b.hi)"
                    " ELSE 0 END)) AS upto FROM b),"
                    " d AS (DELETE FROM cnerium_events WHERE position <= (SELECT upto FROM u)"
                    " RETURNING 1)"
                    " SELECT count(*)::int8 FROM d",
                    p.n, p.v, p.len, p.fmt, PGRES_TUPLES_OK, err, errlen)))
        return CN_ESTORE;
    *deleted = (size_t)int8_at(res, 0, 0);
    PQclear(res);
    return 0;
}

int
cn__pg_events_epoch(cn_pg_t *pg, uint64_t *epoch, char *err, size_t errlen)
{
    PGresult *res = run(pg, "SELECT value FROM cnerium_meta WHERE key = 'events-epoch'", 0,
                        NULL, NULL, NULL, PGRES_TUPLES_OK, err, errlen);
    char text[24];
    unsigned long long v;
    char *end;

    if (!res)
        return CN_ESTORE;
    if (PQntuples(res) != 1 || PQgetlength(res, 0, 0) < 1 ||
        PQgetlength(res, 0, 0) >= (int)sizeof(text)) {
        PQclear(res);
        seterr(err, errlen, "postgresql: the events epoch is missing");
        return CN_ECORRUPT;
    }
    memcpy(text, PQgetvalue(res, 0, 0), (size_t)PQgetlength(res, 0, 0));
    text[PQgetlength(res, 0, 0)] = '\0';
    PQclear(res);
    errno = 0;
    v = strtoull(text, &end, 10);
    if (errno || *end || !v) {
        seterr(err, errlen, "postgresql: the events epoch is not a number");
        return CN_ECORRUPT;
    }
    *epoch = v;
    return 0;
}

int
cn__pg_stream_version(cn_pg_t *pg, const char *stream, size_t len, uint64_t *version,
                      char *err, size_t errlen)
{
    pg_version_t p = {pg, err, errlen};

    return pg_version(stream, len, version, &p);
}

typedef struct {
    cn_log_read_cb cb;
    void *arg;
} log_read_t;

static int
log_row(const PGresult *res, int i, void *arg)
{
    log_read_t *r = arg;
    cn_log_view_t e;

    if (cn__log_entry_decode((const uint8_t *)PQgetvalue(res, i, 1),
                             (size_t)PQgetlength(res, i, 1), &e))
        return CN_ECORRUPT;
    return r->cb((uint64_t)int8_at(res, i, 0), &e, r->arg) ? 1 : 0;
}

int
cn__pg_stream_read(cn_pg_t *pg, const char *stream, size_t len, uint64_t from, int backward,
                   size_t max, cn_log_read_cb cb, void *arg, char *err, size_t errlen)
{
    log_read_t r = {cb, arg};
    params_t p = {0};

    p_bytes(&p, stream, len);
    p_int(&p, from > INT64_MAX ? INT64_MAX : (int64_t)from);
    p_int(&p, (int64_t)(max > INT32_MAX ? INT32_MAX : max));
    return each_row(pg,
                    backward ? "SELECT l.position, l.entry FROM cnerium_streams s JOIN"
                               " cnerium_stream_log l ON l.position = s.position"
                               " WHERE s.stream = $1 AND s.version <= $2::int8"
                               " ORDER BY s.version DESC LIMIT $3::int8"
                             : "SELECT l.position, l.entry FROM cnerium_streams s JOIN"
                               " cnerium_stream_log l ON l.position = s.position"
                               " WHERE s.stream = $1 AND s.version >= $2::int8"
                               " ORDER BY s.version LIMIT $3::int8",
                    &p, log_row, &r, err, errlen);
}

int
cn__pg_log_read(cn_pg_t *pg, uint64_t from, size_t max, cn_log_read_cb cb, void *arg,
                char *err, size_t errlen)
{
    log_read_t r = {cb, arg};
    params_t p = {0};

    p_int(&p, from > INT64_MAX ? INT64_MAX : (int64_t)from);
    p_int(&p, (int64_t)(max > INT32_MAX ? INT32_MAX : max));
    return each_row(pg,
                    "SELECT position, entry FROM cnerium_stream_log WHERE position >= $1::int8"
                    " ORDER BY position LIMIT $2::int8",
                    &p, log_row, &r, err, errlen);
}

int
cn__pg_log_head(cn_pg_t *pg, uint64_t *position, char *err, size_t errlen)
{
    int64_t v;
    int rc = query_int8s(pg, "SELECT log_position FROM cnerium_event_head", &v, 1, err, errlen);

    if (!rc)
        *position = (uint64_t)v;
    return rc;
}

int
cn__pg_listen(cn_pg_t *pg, const char *channel, char *err, size_t errlen)
{
    char *ident = PQescapeIdentifier(pg->conn, channel, strlen(channel));
    char sql[128];

    if (!ident) {
        pg_error(pg, NULL, "postgresql", err, errlen);
        return CN_ESTORE;
    }
    if ((size_t)snprintf(sql, sizeof(sql), "LISTEN %s", ident) >= sizeof(sql)) {
        PQfreemem(ident);
        seterr(err, errlen, "channel name too long");
        return CN_ESTORE;
    }
    PQfreemem(ident);
    return cn__pg_exec(pg, sql, err, errlen);
}

int
cn__pg_reset(cn_pg_t *pg, char *err, size_t errlen)
{
    /* A server that went away (a restart) has left its goodbye and an end of file in the
     * socket: reading what is pending finds it without a round trip, so the statement
     * that follows does not fail on a connection already known dead. */
    struct pollfd p = {PQsocket(pg->conn), POLLIN | POLLRDHUP, 0};

    if (PQstatus(pg->conn) == CONNECTION_OK && p.fd >= 0 && poll(&p, 1, 0) >= 0 &&
        !(p.revents & (POLLRDHUP | POLLHUP | POLLERR)) &&
        (!(p.revents & POLLIN) || PQconsumeInput(pg->conn)) &&
        PQstatus(pg->conn) == CONNECTION_OK)
        return 0;
    claim_end(pg);
    pg->prepared = 0; /* a new session */
    PQreset(pg->conn);
    if (PQstatus(pg->conn) != CONNECTION_OK) {
        pg_error(pg, NULL, "postgresql reconnect failed", err, errlen);
        return CN_ESTORE;
    }
    return 0;
}

int
cn__pg_wait_notify(cn_pg_t *pg, int timeout_ms, char *channel, size_t chcap, char *payload,
                   size_t cap, char *err, size_t errlen)
{
    uint64_t deadline = cn__clock_mono_ms() + (uint64_t)(timeout_ms > 0 ? timeout_ms : 0);

    for (;;) {
        struct pollfd p = {PQsocket(pg->conn), POLLIN, 0};
        PGnotify *n;
        uint64_t now;

        if (!PQconsumeInput(pg->conn)) {
            pg_error(pg, NULL, "postgresql", err, errlen);
            return CN_ESTORE;
        }
        if ((n = PQnotifies(pg->conn))) {
            if (channel && chcap)
                snprintf(channel, chcap, "%s", n->relname ? n->relname : "");
            if (payload && cap)
                snprintf(payload, cap, "%s", n->extra ? n->extra : "");
            PQfreemem(n);
            return 0;
        }
        now = cn__clock_mono_ms();
        if (now >= deadline)
            return -ETIMEDOUT;
        if (p.fd < 0) {
            seterr(err, errlen, "postgresql: the connection has no socket");
            return CN_ESTORE;
        }
        if (poll(&p, 1, (int)(deadline - now)) < 0 && errno != EINTR) {
            seterr(err, errlen, "poll: %s", strerror(errno));
            return CN_ESTORE;
        }
    }
}

int
cn__pg_connected(const cn_pg_t *pg)
{
    return PQstatus(pg->conn) == CONNECTION_OK;
}
