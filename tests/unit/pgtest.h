/*
 * tests/unit/pgtest.h - what the suites that run against the pg_server ctest fixture
 * share: its URL (from the file CNERIUM_PG_URL_FILE names), a connection to it, and a
 * fresh database per test.
 */
#ifndef CN_TESTS_PGTEST_H
#define CN_TESTS_PGTEST_H

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <CUnit/Basic.h>

#include "store/pg.h"

static char server_url[512]; /* postgresql://postgres@127.0.0.1:<port>/postgres */
static cn_pg_t *admin;       /* a connection to the server's "postgres" database */
static int db_seq;

/* The URL of database db on the fixture server, written to out (cap bytes). */
static inline void
url_of(const char *db, char *out, size_t cap)
{
    const char *slash = strrchr(server_url, '/');

    CU_ASSERT_PTR_NOT_NULL_FATAL(slash);
    CU_ASSERT_FATAL((size_t)snprintf(out, cap, "%.*s/%s", (int)(slash - server_url),
                                     server_url, db) < cap);
}

static inline cn_pg_t *
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
static inline void
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

static inline int
pgtest_read_url(const char *suite)
{
    const char *path = getenv("CNERIUM_PG_URL_FILE");
    FILE *f;
    size_t n;

    if (!path) {
        fprintf(stderr, "%s: CNERIUM_PG_URL_FILE is not set (run it through ctest, "
                        "whose pg_server fixture starts the server)\n", suite);
        return -1;
    }
    if (!(f = fopen(path, "r"))) {
        fprintf(stderr, "%s: %s: %s\n", suite, path, strerror(errno));
        return -1;
    }
    n = fread(server_url, 1, sizeof(server_url) - 1, f);
    fclose(f);
    server_url[n] = '\0';
    server_url[strcspn(server_url, "\r\n")] = '\0';
    return server_url[0] ? 0 : -1;
}

#endif
