/*
 * store/pg.h - the PostgreSQL store's connection and schema (wraps libpq; no PG* type
 * leaves store/pg.c).
 *
 * Several Cnerium hosts share one database; LMDB stays the single-host default. The
 * schema mirrors the LMDB databases of store/store.h and stores the same encoded bytes
 * (store/format.h), so one codec serves both stores. It is versioned: cnerium_schema
 * holds one row per applied migration step, and the schema's version is the highest.
 *
 * A cn_pg_t is one connection: use it from one thread at a time (libpq's rule); separate
 * connections may be used from separate threads at once.
 */
#ifndef CN_STORE_PG_H
#define CN_STORE_PG_H

#include <stddef.h>
#include <stdint.h>

typedef struct cn_pg cn_pg_t;

/* The schema version this build creates and expects. */
#define CN_PG_SCHEMA_VERSION 1

/* Connects to url, a postgresql:// or postgres:// URL (libpq's URI syntax). Returns 0
 * and *out (close with cn__pg_close); CN_ECONFIG for any other form of url, or
 * CN_ESTORE when the connection failed; -ENOMEM. On failure err (errlen bytes, always
 * NUL-terminated when errlen > 0) says why in one line, libpq's message for a failed
 * connection, never a password the url carries. */
int cn__pg_open(const char *url, cn_pg_t **out, char *err, size_t errlen);

/* Closes the connection. Accepts NULL. */
void cn__pg_close(cn_pg_t *pg);

/* Creates the schema, or migrates it to CN_PG_SCHEMA_VERSION: each step not yet applied
 * runs once, in its own transaction, under a transaction-scoped advisory lock, so hosts
 * starting at once apply each step once and all return 0. Returns 0 (also when nothing
 * was left to do); CN_EVERSION when the database is at a version newer than this build
 * knows; CN_ESTORE when a statement failed (that step rolled back, earlier ones kept).
 * err as for cn__pg_open. */
int cn__pg_migrate(cn_pg_t *pg, char *err, size_t errlen);

/* The schema's version: 0 for a database without one. Returns 0 and *version, or
 * CN_ESTORE (logged). */
int cn__pg_schema_version(cn_pg_t *pg, int *version);

/* ---- for cn__pg_migrate and the tests ---- */

/* One migration step: the SQL (one or more statements) that takes the schema from
 * version - 1 to version. */
typedef struct cn_pg_step {
    int version;
    const char *sql;
} cn_pg_step_t;

/* cn__pg_migrate with an explicit list of n steps, whose versions must be 1..n in order.
 * *applied (when not NULL, written on success) counts the steps this call ran. */
int cn__pg_migrate_steps(cn_pg_t *pg, const cn_pg_step_t *steps, size_t n, unsigned *applied,
                         char *err, size_t errlen);

/* Runs sql (statements without results, outside or inside a transaction the caller began
 * with "BEGIN"). Returns 0 or CN_ESTORE with err set. */
int cn__pg_exec(cn_pg_t *pg, const char *sql, char *err, size_t errlen);

/* Runs sql, which must return one row of one integer column (NULL is an error). Returns 0
 * and *out, or CN_ESTORE with err set. */
int cn__pg_query_int64(cn_pg_t *pg, const char *sql, int64_t *out, char *err, size_t errlen);

#endif
