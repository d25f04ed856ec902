/*
 * tests/unit/test_config.c - configuration defaults, setters, command-line flags,
 * CNERIUM_* environment variables and their precedence.
 *
 * Environment variables set here are removed again by the test that set them.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cnerium/config.h"
#include "cnerium/error.h"
#include "unit.h"

static const char *const env_names[] = {
    "CNERIUM_HOST",
    "CNERIUM_PORT",
    "CNERIUM_WORKERS",
    "CNERIUM_DATA_DIR",
    "CNERIUM_STORE",
    "CNERIUM_REALTIME_HOST",
    "CNERIUM_REALTIME_PORT",
    "CNERIUM_REALTIME_PATH",
    "CNERIUM_DURABILITY",
    "CNERIUM_NODE_ID",
    "CNERIUM_NAME",
    "CNERIUM_KEY_TTL",
    "CNERIUM_MAX_BODY",
    "CNERIUM_PRINCIPAL_HEADER",
    "CNERIUM_INFLIGHT_WAIT_MS",
    "CNERIUM_THREADS",
    "CNERIUM_SINGLE_PROCESS",
    "CNERIUM_INFLIGHT",
    "CNERIUM_INFLIGHT_SLOTS",
    "CNERIUM_LEASE_MS",
    "CNERIUM_SWEEP_INTERVAL_MS",
    "CNERIUM_LOG_LEVEL",
};

static void
clear_env(void)
{
    for (size_t i = 0; i < sizeof(env_names) / sizeof(env_names[0]); i++)
        unsetenv(env_names[i]);
}

/* Parses a NULL-terminated list of arguments (argv[0] is supplied here). */
static int
parse(cn_config_t *cfg, char *err, size_t errlen, const char *const *args)
{
    char *argv[64];
    int argc = 0;

    argv[argc++] = (char *)"test_config";
    while (*args && argc < 63)
        argv[argc++] = (char *)*args++;
    argv[argc] = NULL;
    err[0] = '\0';
    return cn_config_parse_args(cfg, argc, argv, err, errlen);
}

/* Expects args to be rejected with CN_ECONFIG and a one-line, non-empty message. */
static void
expect_bad_args(const char *const *args)
{
    cn_config_t cfg = cn_config_development();
    char err[256];
    int rc = parse(&cfg, err, sizeof(err), args);

    if (rc != CN_ECONFIG) {
        fprintf(stderr, "\n  args:");
        for (const char *const *a = args; *a; a++)
            fprintf(stderr, " \"%s\"", *a);
        fprintf(stderr, " gave %d, want CN_ECONFIG\n", rc);
    }
    CU_ASSERT_EQUAL(rc, CN_ECONFIG);
    CU_ASSERT(err[0] != '\0');
    CU_ASSERT_PTR_NULL(strchr(err, '\n'));
}

static void
test_development_defaults(void)
{
    cn_config_t cfg = cn_config_development();
    char err[256] = "";

    CU_ASSERT_EQUAL(cfg.port, 8080);
    CU_ASSERT_EQUAL(cfg.key_ttl_s, 86400);
    CU_ASSERT_EQUAL(cfg.max_body_bytes, 1048576);
    CU_ASSERT_EQUAL(cfg.durability, CN_DURABILITY_SYNC);
    CU_ASSERT(cfg.workers >= 1);
    CU_ASSERT_STRING_EQUAL(cfg.host, "127.0.0.1");
    CU_ASSERT_STRING_EQUAL(cfg.data_dir, "data/cnerium");
    CU_ASSERT_STRING_EQUAL(cfg.realtime_host, "127.0.0.1");
    CU_ASSERT_EQUAL(cfg.realtime_port, 9090);
    CU_ASSERT_STRING_EQUAL(cfg.realtime_path, "/ws");
    CU_ASSERT_STRING_EQUAL(cfg.principal_header, "");
    CU_ASSERT_EQUAL(cfg.inflight_wait_ms, 30000);
    CU_ASSERT_EQUAL(cfg.sweep_interval_ms, 60000);
    CU_ASSERT_EQUAL(cfg.log_level, 2);
    CU_ASSERT_EQUAL(cn_config_validate(&cfg, err, sizeof(err)), 0);
}

static void
test_setters(void)
{
    cn_config_t cfg = cn_config_development();
    char s[200];

    CU_ASSERT_EQUAL(cn_config_set_name(&cfg, "durable-orders"), 0);
    CU_ASSERT_STRING_EQUAL(cfg.name, "durable-orders");
    CU_ASSERT_EQUAL(cn_config_set_node_id(&cfg, "node-7"), 0);
    CU_ASSERT_STRING_EQUAL(cfg.node_id, "node-7");
    CU_ASSERT_EQUAL(cn_config_set_data_dir(&cfg, "/var/lib/cnerium"), 0);
    CU_ASSERT_STRING_EQUAL(cfg.data_dir, "/var/lib/cnerium");
    CU_ASSERT_EQUAL(cn_config_set_principal_header(&cfg, "X-Tenant"), 0);
    CU_ASSERT_STRING_EQUAL(cfg.principal_header, "X-Tenant");
    CU_ASSERT_EQUAL(cn_config_enable_realtime(&cfg, "/events", "0.0.0.0", 9191), 0);
    CU_ASSERT(cfg.realtime_enabled);
    CU_ASSERT_STRING_EQUAL(cfg.realtime_path, "/events");
    CU_ASSERT_STRING_EQUAL(cfg.realtime_host, "0.0.0.0");
    CU_ASSERT_EQUAL(cfg.realtime_port, 9191);

    /* Longest that fits (size - 1 bytes) and one byte more. */
    memset(s, 'n', CN_CONFIG_NAME_MAX - 1);
    s[CN_CONFIG_NAME_MAX - 1] = '\0';
    CU_ASSERT_EQUAL(cn_config_set_name(&cfg, s), 0);
    CU_ASSERT_EQUAL(strlen(cfg.name), CN_CONFIG_NAME_MAX - 1);
    s[CN_CONFIG_NAME_MAX - 1] = 'n';
    s[CN_CONFIG_NAME_MAX] = '\0';
    CU_ASSERT_EQUAL(cn_config_set_name(&cfg, s), CN_ETOOBIG);
    CU_ASSERT_EQUAL(cn_config_set_node_id(&cfg, s), CN_ETOOBIG);
    CU_ASSERT_STRING_EQUAL(cfg.node_id, "node-7");
    memset(s, 'h', CN_CONFIG_HEADER_MAX);
    s[CN_CONFIG_HEADER_MAX] = '\0';
    CU_ASSERT_EQUAL(cn_config_set_principal_header(&cfg, s), CN_ETOOBIG);
    CU_ASSERT_STRING_EQUAL(cfg.principal_header, "X-Tenant");
}

static void
test_port_both_forms(void)
{
    cn_config_t cfg = cn_config_development();
    char err[256];
    static const char *const a[] = {"--port", "9000", NULL};
    static const char *const b[] = {"--port=9001", NULL};
    static const char *const zero[] = {"--port", "0", NULL};
    static const char *const max[] = {"--port=65535", NULL};

    CU_ASSERT_EQUAL(parse(&cfg, err, sizeof(err), a), 0);
    CU_ASSERT_EQUAL(cfg.port, 9000);
    CU_ASSERT_EQUAL(parse(&cfg, err, sizeof(err), b), 0);
    CU_ASSERT_EQUAL(cfg.port, 9001);
    CU_ASSERT_EQUAL(parse(&cfg, err, sizeof(err), zero), 0); /* 0 = any free port */
    CU_ASSERT_EQUAL(cfg.port, 0);
    CU_ASSERT_EQUAL(parse(&cfg, err, sizeof(err), max), 0);
    CU_ASSERT_EQUAL(cfg.port, 65535);
}

static void
test_every_flag(void)
{
    cn_config_t cfg = cn_config_development();
    char err[256];
    static const char *const args[] = {
        "--host",
        "0.0.0.0",
        "--port",
        "9000",
        "--workers",
        "3",
        "--data-dir",
        "/tmp/cnerium-data",
        "--realtime-host",
        "10.0.0.1",
        "--realtime-port",
        "9191",
        "--realtime-path",
        "/events",
        "--durability",
        "async",
        "--node-id",
        "n1",
        "--name",
        "svc",
        "--key-ttl",
        "60",
        "--max-body",
        "2048",
        "--principal-header",
        "X-Tenant",
        "--inflight-wait-ms",
        "1234",
        "--sweep-interval-ms",
        "5678",
        "--log-level",
        "debug",
        NULL,
    };
    static const char *const eq_args[] = {
        "--host=::1",
        "--workers=5",
        "--data-dir=/srv/d",
        "--realtime-host=h2",
        "--realtime-port=9292",
        "--realtime-path=/rt",
        "--durability=sync",
        "--node-id=n2",
        "--name=svc2",
        "--key-ttl=61",
        "--max-body=4096",
        "--principal-header=X-Org",
        "--inflight-wait-ms=11",
        "--sweep-interval-ms=22",
        "--log-level=error",
        NULL,
    };

    CU_ASSERT_EQUAL_FATAL(parse(&cfg, err, sizeof(err), args), 0);
    CU_ASSERT_STRING_EQUAL(cfg.host, "0.0.0.0");
    CU_ASSERT_EQUAL(cfg.port, 9000);
    CU_ASSERT_EQUAL(cfg.workers, 3);
    CU_ASSERT_STRING_EQUAL(cfg.data_dir, "/tmp/cnerium-data");
    CU_ASSERT_STRING_EQUAL(cfg.realtime_host, "10.0.0.1");
    CU_ASSERT_EQUAL(cfg.realtime_port, 9191);
    CU_ASSERT_STRING_EQUAL(cfg.realtime_path, "/events");
    CU_ASSERT_EQUAL(cfg.durability, CN_DURABILITY_ASYNC);
    CU_ASSERT_STRING_EQUAL(cfg.node_id, "n1");
    CU_ASSERT_STRING_EQUAL(cfg.name, "svc");
    CU_ASSERT_EQUAL(cfg.key_ttl_s, 60);
    CU_ASSERT_EQUAL(cfg.max_body_bytes, 2048);
    CU_ASSERT_STRING_EQUAL(cfg.principal_header, "X-Tenant");
    CU_ASSERT_EQUAL(cfg.inflight_wait_ms, 1234);
    CU_ASSERT_EQUAL(cfg.sweep_interval_ms, 5678);
    CU_ASSERT_EQUAL(cfg.log_level, 3);

    CU_ASSERT_EQUAL_FATAL(parse(&cfg, err, sizeof(err), eq_args), 0);
    CU_ASSERT_STRING_EQUAL(cfg.host, "::1");
    CU_ASSERT_EQUAL(cfg.workers, 5);
    CU_ASSERT_STRING_EQUAL(cfg.data_dir, "/srv/d");
    CU_ASSERT_STRING_EQUAL(cfg.realtime_host, "h2");
    CU_ASSERT_EQUAL(cfg.realtime_port, 9292);
    CU_ASSERT_STRING_EQUAL(cfg.realtime_path, "/rt");
    CU_ASSERT_EQUAL(cfg.durability, CN_DURABILITY_SYNC);
    CU_ASSERT_STRING_EQUAL(cfg.node_id, "n2");
    CU_ASSERT_STRING_EQUAL(cfg.name, "svc2");
    CU_ASSERT_EQUAL(cfg.key_ttl_s, 61);
    CU_ASSERT_EQUAL(cfg.max_body_bytes, 4096);
    CU_ASSERT_STRING_EQUAL(cfg.principal_header, "X-Org");
    CU_ASSERT_EQUAL(cfg.inflight_wait_ms, 11);
    CU_ASSERT_EQUAL(cfg.sweep_interval_ms, 22);
    CU_ASSERT_EQUAL(cfg.log_level, 0);
}

static void
test_log_levels(void)
{
    static const struct {
        const char *name;
        int level;
    } v[] = {{"error", 0}, {"warn", 1}, {"info", 2}, {"debug", 3}};

    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        cn_config_t cfg = cn_config_development();
        char err[256];
        const char *args[] = {"--log-level", v[i].name, NULL};

        cfg.log_level = -1;
        CU_ASSERT_EQUAL(parse(&cfg, err, sizeof(err), args), 0);
        CU_ASSERT_EQUAL(cfg.log_level, v[i].level);
    }
}

static void
test_wal_io_modes(void)
{
    static const struct {
        const char *name;
        cn_wal_io_t mode;
    } v[] = {{"pwrite", CN_WAL_IO_PWRITE},
             {"uring", CN_WAL_IO_URING},
             {"direct", CN_WAL_IO_DIRECT},
             {"uring-direct", CN_WAL_IO_URING_DIRECT}};
    static const char *const bad[] = {"--wal-io", "odirect", NULL};

    CU_ASSERT_EQUAL(cn_config_development().wal_io, CN_WAL_IO_PWRITE);
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        cn_config_t cfg = cn_config_development();
        char err[256];
        const char *args[] = {"--wal-io", v[i].name, NULL};

        cfg.wal_io = (cn_wal_io_t)-1;
        CU_ASSERT_EQUAL(parse(&cfg, err, sizeof(err), args), 0);
        CU_ASSERT_EQUAL(cfg.wal_io, v[i].mode);
    }
    expect_bad_args(bad);
}

static void
test_store_values(void)
{
    static const char *const good[] = {"lmdb", "postgresql://u@127.0.0.1:5432/db",
                                       "postgres://u:pw@localhost/db?sslmode=disable"};
    static const char *const bad[] = {"", "LMDB", "mysql://x", "postgresql:/x", "pg"};
    cn_config_t cfg = cn_config_development();
    char err[256];

    CU_ASSERT_STRING_EQUAL(cfg.store, "lmdb");
    CU_ASSERT_FALSE(cn_config_store_is_pg(&cfg));
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        const char *args[] = {"--store", good[i], NULL};
        cfg = cn_config_development();
        CU_ASSERT_EQUAL(parse(&cfg, err, sizeof(err), args), 0);
        CU_ASSERT_STRING_EQUAL(cfg.store, good[i]);
        CU_ASSERT_EQUAL(cn_config_validate(&cfg, err, sizeof(err)), 0);
        CU_ASSERT_EQUAL(cn_config_store_is_pg(&cfg), i > 0);
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        const char *args[] = {"--store", bad[i], NULL};
        int rc;
        cfg = cn_config_development();
        rc = parse(&cfg, err, sizeof(err), args);
        if (rc == 0)
            rc = cn_config_validate(&cfg, err, sizeof(err));
        CU_ASSERT_EQUAL(rc, CN_ECONFIG);
        CU_ASSERT(strstr(err, "--store") != NULL);
    }
    /* A URL's password never lands in the message. */
    cfg = cn_config_development();
    snprintf(cfg.store, sizeof(cfg.store), "postgresq://u:hunter2@h/db");
    CU_ASSERT_EQUAL(cn_config_validate(&cfg, err, sizeof(err)), CN_ECONFIG);
    CU_ASSERT_PTR_NULL(strstr(err, "hunter2"));
    snprintf(cfg.store, sizeof(cfg.store), "mysql://u:hunter2@h/db");
    CU_ASSERT_EQUAL(cn_config_validate(&cfg, err, sizeof(err)), CN_ECONFIG);
    CU_ASSERT_PTR_NULL(strstr(err, "hunter2"));
    /* From the environment. */
    clear_env();
    setenv("CNERIUM_STORE", "postgresql://u@h/db", 1);
    cfg = cn_config_development();
    CU_ASSERT_EQUAL(cn_config_from_env(&cfg, err, sizeof(err)), 0);
    CU_ASSERT_TRUE(cn_config_store_is_pg(&cfg));
    clear_env();
}

static void
test_no_args(void)
{
    cn_config_t cfg = cn_config_development(), ref = cn_config_development();
    char err[256];
    char *argv[] = {(char *)"--port=1", NULL};

    /* argv[0] is the program name, never a flag. */
    CU_ASSERT_EQUAL(cn_config_parse_args(&cfg, 1, argv, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(memcmp(&cfg, &ref, sizeof(cfg)), 0);
}

static void
test_help(void)
{
    cn_config_t cfg = cn_config_development();
    char err[256];
    static const char *const help[] = {"--help", NULL};
    static const char *const mixed[] = {"--port", "9000", "--help", "--name", "x", NULL};

    CU_ASSERT_EQUAL(parse(&cfg, err, sizeof(err), help), 1);
    /* Nothing else is applied when --help is given, wherever it appears. */
    CU_ASSERT_EQUAL(parse(&cfg, err, sizeof(err), mixed), 1);
    CU_ASSERT_EQUAL(cfg.port, 8080);
    CU_ASSERT_STRING_NOT_EQUAL(cfg.name, "x");
}

static void
test_bad_args(void)
{
    static const char *const unknown[] = {"--bogus", "1", NULL};
    static const char *const unknown_eq[] = {"--bogus=1", NULL};
    static const char *const positional[] = {"stray", NULL};
    static const char *const nan[] = {"--port", "abc", NULL};
    static const char *const trailing[] = {"--port", "90x", NULL};
    static const char *const empty[] = {"--port=", NULL};
    static const char *const negative[] = {"--port", "-1", NULL};
    static const char *const big[] = {"--port", "70000", NULL};
    static const char *const big_eq[] = {"--port=70000", NULL};
    static const char *const huge[] = {"--key-ttl", "99999999999999999999", NULL};
    static const char *const durability[] = {"--durability", "maybe", NULL};
    static const char *const level[] = {"--log-level", "loud", NULL};
    static const char *const missing[] = {"--port", NULL};
    static const char *const missing_host[] = {"--host", NULL};
    static const char *const workers[] = {"--workers", "many", NULL};
    static const char *const max_body[] = {"--max-body", "1k", NULL};
    static const char *const rt_port[] = {"--realtime-port", "65536", NULL};
    static const char *const long_name[] = {
        "--name", "nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn", NULL};
    static const char *const *all[] = {unknown,    unknown_eq, positional, nan,          trailing,
                                       empty,      negative,   big,        big_eq,       huge,
                                       durability, level,      missing,    missing_host, workers,
                                       max_body,   rt_port,    long_name};

    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
        expect_bad_args(all[i]);
}

static void
test_err_truncated(void)
{
    cn_config_t cfg = cn_config_development();
    char err[8];
    static const char *const args[] = {"--definitely-not-a-flag-with-a-long-name", NULL};

    memset(err, 'x', sizeof(err));
    CU_ASSERT_EQUAL(parse(&cfg, err, sizeof(err), args), CN_ECONFIG);
    CU_ASSERT_PTR_NOT_NULL(memchr(err, '\0', sizeof(err)));
    CU_ASSERT(err[0] != '\0');
}

static void
test_env(void)
{
    cn_config_t cfg = cn_config_development();
    char err[256] = "";

    clear_env();
    setenv("CNERIUM_HOST", "0.0.0.0", 1);
    setenv("CNERIUM_PORT", "7000", 1);
    setenv("CNERIUM_WORKERS", "2", 1);
    setenv("CNERIUM_DATA_DIR", "/tmp/env-data", 1);
    setenv("CNERIUM_REALTIME_HOST", "10.1.1.1", 1);
    setenv("CNERIUM_REALTIME_PORT", "9393", 1);
    setenv("CNERIUM_REALTIME_PATH", "/env-ws", 1);
    setenv("CNERIUM_DURABILITY", "async", 1);
    setenv("CNERIUM_NODE_ID", "env-node", 1);
    setenv("CNERIUM_NAME", "env-svc", 1);
    setenv("CNERIUM_KEY_TTL", "120", 1);
    setenv("CNERIUM_MAX_BODY", "65536", 1);
    setenv("CNERIUM_PRINCIPAL_HEADER", "X-Env-Tenant", 1);
    setenv("CNERIUM_INFLIGHT_WAIT_MS", "333", 1);
    setenv("CNERIUM_SWEEP_INTERVAL_MS", "444", 1);
    setenv("CNERIUM_LOG_LEVEL", "warn", 1);
    CU_ASSERT_EQUAL(cn_config_from_env(&cfg, err, sizeof(err)), 0);
    clear_env();

    CU_ASSERT_STRING_EQUAL(cfg.host, "0.0.0.0");
    CU_ASSERT_EQUAL(cfg.port, 7000);
    CU_ASSERT_EQUAL(cfg.workers, 2);
    CU_ASSERT_STRING_EQUAL(cfg.data_dir, "/tmp/env-data");
    CU_ASSERT_STRING_EQUAL(cfg.realtime_host, "10.1.1.1");
    CU_ASSERT_EQUAL(cfg.realtime_port, 9393);
    CU_ASSERT_STRING_EQUAL(cfg.realtime_path, "/env-ws");
    CU_ASSERT_EQUAL(cfg.durability, CN_DURABILITY_ASYNC);
    CU_ASSERT_STRING_EQUAL(cfg.node_id, "env-node");
    CU_ASSERT_STRING_EQUAL(cfg.name, "env-svc");
    CU_ASSERT_EQUAL(cfg.key_ttl_s, 120);
    CU_ASSERT_EQUAL(cfg.max_body_bytes, 65536);
    CU_ASSERT_STRING_EQUAL(cfg.principal_header, "X-Env-Tenant");
    CU_ASSERT_EQUAL(cfg.inflight_wait_ms, 333);
    CU_ASSERT_EQUAL(cfg.sweep_interval_ms, 444);
    CU_ASSERT_EQUAL(cfg.log_level, 1);
}

static void
test_env_absent_changes_nothing(void)
{
    cn_config_t cfg = cn_config_development(), ref = cn_config_development();
    char err[256] = "";

    clear_env();
    CU_ASSERT_EQUAL(cn_config_from_env(&cfg, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(memcmp(&cfg, &ref, sizeof(cfg)), 0);
}

static void
test_env_bad_values(void)
{
    static const struct {
        const char *name, *value;
    } bad[] = {
        {"CNERIUM_PORT", "abc"},   {"CNERIUM_PORT", "70000"},     {"CNERIUM_DURABILITY", "maybe"},
        {"CNERIUM_KEY_TTL", "-5"}, {"CNERIUM_LOG_LEVEL", "loud"}, {"CNERIUM_MAX_BODY", "12abc"},
    };

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        cn_config_t cfg = cn_config_development();
        char err[256] = "";
        int rc;

        clear_env();
        setenv(bad[i].name, bad[i].value, 1);
        rc = cn_config_from_env(&cfg, err, sizeof(err));
        unsetenv(bad[i].name);
        if (rc != CN_ECONFIG)
            fprintf(stderr, "\n  %s=%s gave %d, want CN_ECONFIG\n", bad[i].name, bad[i].value, rc);
        CU_ASSERT_EQUAL(rc, CN_ECONFIG);
        CU_ASSERT(err[0] != '\0');
    }
}

static void
test_flags_override_env(void)
{
    cn_config_t cfg = cn_config_development();
    char err[256] = "";
    static const char *const args[] = {"--port", "9000", "--durability=sync", NULL};

    clear_env();
    setenv("CNERIUM_PORT", "7000", 1);
    setenv("CNERIUM_KEY_TTL", "120", 1);
    setenv("CNERIUM_DURABILITY", "async", 1);
    CU_ASSERT_EQUAL(cn_config_from_env(&cfg, err, sizeof(err)), 0);
    clear_env();
    CU_ASSERT_EQUAL(cfg.port, 7000);
    CU_ASSERT_EQUAL(parse(&cfg, err, sizeof(err), args), 0);
    CU_ASSERT_EQUAL(cfg.port, 9000); /* flag wins */
    CU_ASSERT_EQUAL(cfg.durability, CN_DURABILITY_SYNC);
    CU_ASSERT_EQUAL(cfg.key_ttl_s, 120); /* env kept where no flag was given */
}

static void
test_usage_lists_every_flag(void)
{
    static const char *const flags[] = {
        "--host",
        "--port",
        "--workers",
        "--data-dir",
        "--realtime-host",
        "--realtime-port",
        "--realtime-path",
        "--durability",
        "--node-id",
        "--name",
        "--key-ttl",
        "--max-body",
        "--principal-header",
        "--inflight-wait-ms",
        "--sweep-interval-ms",
        "--log-level",
        "--help",
    };
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);

    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    cn_config_print_usage(f, "prog");
    fclose(f);
    CU_ASSERT_PTR_NOT_NULL_FATAL(text);
    for (size_t i = 0; i < sizeof(flags) / sizeof(flags[0]); i++) {
        if (!strstr(text, flags[i]))
            fprintf(stderr, "\n  usage does not mention %s\n", flags[i]);
        CU_ASSERT_PTR_NOT_NULL(strstr(text, flags[i]));
    }
    free(text);
}

static void
test_process_flags(void)
{
    cn_config_t cfg = cn_config_development();
    char err[256];
    static const char *const args[] = {"--threads", "8", "--single-process", "--inflight",
                                       "reject", "--inflight-slots", "1024", "--lease-ms",
                                       "500", "--commit-timeout-ms", "250", NULL};
    static const char *const off[] = {"--single-process=0", "--inflight=wait", NULL};
    static const char *const slots_not_pow2[] = {"--inflight-slots", "1000", NULL};
    static const char *const bad_mode[] = {"--inflight", "queue", NULL};
    static const char *const bad_bool[] = {"--single-process=maybe", NULL};
    static const char *const too_many_workers[] = {"--workers", "65", NULL};
    static const char *const short_lease[] = {"--lease-ms", "10", NULL};
    static const char *const short_commit[] = {"--commit-timeout-ms", "99", NULL};

    /* Defaults. */
    CU_ASSERT_EQUAL(cfg.threads, 1);
    CU_ASSERT_EQUAL(cfg.single_process, 0);
    CU_ASSERT_EQUAL(cfg.inflight_mode, CN_INFLIGHT_WAIT);
    CU_ASSERT_EQUAL(cfg.inflight_slots, 65536u);
    CU_ASSERT_EQUAL(cfg.lease_ms, 60000u);
    CU_ASSERT_EQUAL(cfg.commit_timeout_ms, 5000u);
    CU_ASSERT(cfg.workers >= 1 && cfg.workers <= CN_CONFIG_WORKERS_MAX);

    /* A boolean flag takes no value; the others do. */
    CU_ASSERT_EQUAL_FATAL(parse(&cfg, err, sizeof(err), args), 0);
    CU_ASSERT_EQUAL(cfg.threads, 8);
    CU_ASSERT_EQUAL(cfg.single_process, 1);
    CU_ASSERT_EQUAL(cfg.inflight_mode, CN_INFLIGHT_REJECT);
    CU_ASSERT_EQUAL(cfg.inflight_slots, 1024u);
    CU_ASSERT_EQUAL(cfg.lease_ms, 500u);
    CU_ASSERT_EQUAL(cfg.commit_timeout_ms, 250u);
    CU_ASSERT_EQUAL(cn_config_validate(&cfg, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL_FATAL(parse(&cfg, err, sizeof(err), off), 0);
    CU_ASSERT_EQUAL(cfg.single_process, 0);
    CU_ASSERT_EQUAL(cfg.inflight_mode, CN_INFLIGHT_WAIT);

    /* The environment. */
    cfg = cn_config_development();
    setenv("CNERIUM_SINGLE_PROCESS", "true", 1);
    setenv("CNERIUM_INFLIGHT", "reject", 1);
    setenv("CNERIUM_THREADS", "2", 1);
    CU_ASSERT_EQUAL(cn_config_from_env(&cfg, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(cfg.single_process, 1);
    CU_ASSERT_EQUAL(cfg.inflight_mode, CN_INFLIGHT_REJECT);
    CU_ASSERT_EQUAL(cfg.threads, 2);
    clear_env();

    /* Values that parse but cannot work together fail validation with a message. */
    cfg = cn_config_development();
    CU_ASSERT_EQUAL_FATAL(parse(&cfg, err, sizeof(err), slots_not_pow2), 0);
    CU_ASSERT_EQUAL(cn_config_validate(&cfg, err, sizeof(err)), CN_ECONFIG);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "power of two"));

    expect_bad_args(bad_mode);
    expect_bad_args(bad_bool);
    expect_bad_args(too_many_workers);
    expect_bad_args(short_lease);
    expect_bad_args(short_commit);
}

int
main(void)
{
    static const unit_test_t tests[] = {
        {"development defaults", test_development_defaults},
        {"setters copy and bound strings", test_setters},
        {"--port N and --port=N", test_port_both_forms},
        {"every flag, both forms", test_every_flag},
        {"log levels", test_log_levels},
        {"WAL I/O modes", test_wal_io_modes},
        {"store values", test_store_values},
        {"argv[0] is not a flag", test_no_args},
        {"--help returns 1 and applies nothing", test_help},
        {"bad flags are CN_ECONFIG with a message", test_bad_args},
        {"error message fits errlen", test_err_truncated},
        {"CNERIUM_* environment", test_env},
        {"no environment, no change", test_env_absent_changes_nothing},
        {"bad environment values are CN_ECONFIG", test_env_bad_values},
        {"flags override the environment", test_flags_override_env},
        {"usage lists every flag", test_usage_lists_every_flag},
        {"process model and in-flight flags", test_process_flags},
        {NULL, NULL},
    };
    int rc;

    clear_env();
    rc = unit_run("config", tests);
    clear_env();
    return rc;
}
