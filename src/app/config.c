/*
 * app/config.c - configuration defaults, CNERIUM_* environment variables and flags.
 *
 * One table describes every option once: its flag, its environment variable, and how
 * to parse it into cn_config_t. Runs in the process that starts the server, before any
 * thread or child exists.
 */
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cnerium/config.h"
#include "cnerium/error.h"

typedef enum opt_kind {
    OPT_STR,     /* char[] of size `size` */
    OPT_PORT,    /* uint16_t, 0..65535 */
    OPT_U32,     /* uint32_t within [min, max] */
    OPT_INT,     /* int within [min, max] */
    OPT_SIZE,    /* size_t within [min, max] */
    OPT_U64,     /* uint64_t within [min, max] */
    OPT_BOOL,    /* int 0/1; the flag alone means 1 */
    OPT_INFLIGHT,
    OPT_WALIO,
    OPT_DURABILITY,
    OPT_LOGLEVEL,
} opt_kind_t;

typedef struct opt {
    const char *flag;
    const char *env;
    opt_kind_t kind;
    size_t offset;
    size_t size;
    unsigned long long min, max;
    const char *arg;
    const char *help;
} opt_t;

#define F(field) offsetof(cn_config_t, field), sizeof(((cn_config_t *)0)->field)

static const opt_t options[] = {
    {"host", "CNERIUM_HOST", OPT_STR, F(host), 0, 0, "H", "HTTP bind address"},
    {"port", "CNERIUM_PORT", OPT_PORT, F(port), 0, 65535, "N", "HTTP port, 0 = any free port"},
    {"workers", "CNERIUM_WORKERS", OPT_INT, F(workers), 1, CN_CONFIG_WORKERS_MAX, "N",
     "HTTP worker processes"},
    {"threads", "CNERIUM_THREADS", OPT_INT, F(threads), 1, 256, "N",
     "event loops (threads) in each worker"},
    {"single-process", "CNERIUM_SINGLE_PROCESS", OPT_BOOL, F(single_process), 0, 1, "",
     "serve from one process, no supervisor (debugging)"},
    {"data-dir", "CNERIUM_DATA_DIR", OPT_STR, F(data_dir), 0, 0, "DIR", "data directory"},
    {"store", "CNERIUM_STORE", OPT_STR, F(store), 0, 0, "URL",
     "lmdb, or postgresql://user@host:port/db shared by several hosts"},
    {"realtime-host", "CNERIUM_REALTIME_HOST", OPT_STR, F(realtime_host), 0, 0, "H",
     "WebSocket bind address"},
    {"realtime-port", "CNERIUM_REALTIME_PORT", OPT_PORT, F(realtime_port), 0, 65535, "N",
     "WebSocket port"},
    {"realtime-path", "CNERIUM_REALTIME_PATH", OPT_STR, F(realtime_path), 0, 0, "P",
     "WebSocket endpoint path"},
    /* realtime access control and memory */
    {"realtime-secret", "CNERIUM_REALTIME_SECRET", OPT_STR, F(realtime_secret), 0, 0, "S",
     "HS256 secret: WebSocket clients must present a token signed with it"},
    {"realtime-origins", "CNERIUM_REALTIME_ORIGINS", OPT_STR, F(realtime_origins), 0, 0,
     "O1,O2", "Origin header values allowed on the WebSocket endpoint"},
    {"realtime-cache-bytes", "CNERIUM_REALTIME_CACHE_BYTES", OPT_U64, F(realtime_cache_bytes),
     65536, 1ull << 40, "BYTES", "memory for serialized events in the broadcaster"},
    {"events-retain", "CNERIUM_EVENTS_RETAIN", OPT_U64, F(events_retain), 0,
     1000000000000ull, "N", "events kept for ?since= resume (0: no limit)"},
    {"events-retain-s", "CNERIUM_EVENTS_RETAIN_S", OPT_U32, F(events_retain_s), 0,
     10u * 365 * 86400, "SECONDS", "and for at most this long (0: no limit)"},
    {"wal-io", "CNERIUM_WAL_IO", OPT_WALIO, F(wal_io), 0, 0, "pwrite|uring|direct|uring-direct",
     "how the persister writes WAL batches"},
    {"durability", "CNERIUM_DURABILITY", OPT_DURABILITY, F(durability), 0, 0, "sync|async",
     "when a durable response may be sent"},
    {"node-id", "CNERIUM_NODE_ID", OPT_STR, F(node_id), 0, 0, "ID", "node identity"},
    {"name", "CNERIUM_NAME", OPT_STR, F(name), 0, 0, "NAME", "service name"},
    {"key-ttl", "CNERIUM_KEY_TTL", OPT_U32, F(key_ttl_s), 1, 10u * 365 * 86400, "SECONDS",
     "lifetime of a stored response"},
    {"stream-event-max", "CNERIUM_STREAM_EVENT_MAX", OPT_U32, F(stream_event_max), 16,
     256u * 1024, "BYTES", "largest event data a handler may append to a stream"},
    {"max-body", "CNERIUM_MAX_BODY", OPT_SIZE, F(max_body_bytes), 1, 64u * 1024 * 1024,
     "BYTES", "request body limit"},
    {"max-connections", "CNERIUM_MAX_CONNECTIONS", OPT_U32, F(max_connections), 1, 1000000,
     "N", "open HTTP connections per worker; more wait in the listen backlog"},
    {"max-connections-per-ip", "CNERIUM_MAX_CONNECTIONS_PER_IP", OPT_U32,
     F(max_connections_per_ip), 0, 1000000, "N",
     "open connections per worker from one address; more are closed (0: no limit)"},
    {"header-timeout-ms", "CNERIUM_HEADER_TIMEOUT_MS", OPT_U32, F(header_timeout_ms), 0,
     3600000u, "MS", "a request's headers must arrive within this; else 408 (0: none)"},
    {"principal-header", "CNERIUM_PRINCIPAL_HEADER", OPT_STR, F(principal_header), 0, 0,
     "NAME", "header whose value scopes keys per tenant"},
    {"reused-key-status", "CNERIUM_REUSED_KEY_STATUS", OPT_U32, F(reused_key_status), 409,
     422, "409|422", "status for a key reused with a different body"},
    {"inflight", "CNERIUM_INFLIGHT", OPT_INFLIGHT, F(inflight_mode), 0, 0, "wait|reject",
     "concurrent duplicates wait and replay, or get 409"},
    {"inflight-slots", "CNERIUM_INFLIGHT_SLOTS", OPT_U32, F(inflight_slots), 64, 1u << 24,
     "N", "in-flight table capacity (a power of two)"},
    {"lease-ms", "CNERIUM_LEASE_MS", OPT_U32, F(lease_ms), 100, 86400000u, "MS",
     "how long a running handler keeps its claim"},
    {"commit-timeout-ms", "CNERIUM_COMMIT_TIMEOUT_MS", OPT_U32, F(commit_timeout_ms), 100,
     600000, "MS", "wait for the persister's decision before answering 503"},
    {"inflight-wait-ms", "CNERIUM_INFLIGHT_WAIT_MS", OPT_U32, F(inflight_wait_ms), 0,
     600000, "MS", "bound on waiting for a concurrent duplicate"},
    {"sweep-interval-ms", "CNERIUM_SWEEP_INTERVAL_MS", OPT_U32, F(sweep_interval_ms), 10,
     86400000u, "MS", "period of the expired-response sweep"},
    {"log-level", "CNERIUM_LOG_LEVEL", OPT_LOGLEVEL, F(log_level), 0, 0,
     "error|warn|info|debug", "log verbosity"},
};

static int
fail(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static int
fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    if (err && errlen) {
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return CN_ECONFIG;
}

static int
copy_str(char *dst, size_t cap, const char *src)
{
    size_t n = strlen(src);

    if (n >= cap)
        return CN_ETOOBIG;
    memcpy(dst, src, n + 1);
    return 0;
}

cn_config_t
cn_config_development(void)
{
    cn_config_t c;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);

    memset(&c, 0, sizeof(c));
    copy_str(c.name, sizeof(c.name), "cnerium");
    copy_str(c.node_id, sizeof(c.node_id), "");
    copy_str(c.data_dir, sizeof(c.data_dir), "data/cnerium");
    copy_str(c.store, sizeof(c.store), "lmdb");
    copy_str(c.host, sizeof(c.host), "127.0.0.1");
    c.port = 8080;
    c.workers = cores > 0 && cores <= CN_CONFIG_WORKERS_MAX ? (int)cores : 1;
    c.threads = 1;
    c.single_process = 0;
    c.inflight_mode = CN_INFLIGHT_WAIT;
    c.reused_key_status = 409;
    c.inflight_slots = 65536;
    c.lease_ms = 60000;
    c.commit_timeout_ms = 5000;
    c.realtime_enabled = 0;
    copy_str(c.realtime_host, sizeof(c.realtime_host), "127.0.0.1");
    c.realtime_port = 9090;
    copy_str(c.realtime_path, sizeof(c.realtime_path), "/ws");
    c.realtime_cache_bytes = 64u << 20;
    c.events_retain = 100000;
    c.events_retain_s = 86400;
    c.durability = CN_DURABILITY_SYNC;
    c.key_ttl_s = 86400;
    c.max_body_bytes = 1024 * 1024;
    c.stream_event_max = 64 * 1024;
    c.max_connections = 1024;
    c.max_connections_per_ip = 256;
    c.header_timeout_ms = 10000;
    c.inflight_wait_ms = 30000;
    c.sweep_interval_ms = 60000;
    c.log_level = 2;
    return c;
}

int
cn_config_set_name(cn_config_t *cfg, const char *name)
{
    return copy_str(cfg->name, sizeof(cfg->name), name);
}

int
cn_config_set_node_id(cn_config_t *cfg, const char *node_id)
{
    return copy_str(cfg->node_id, sizeof(cfg->node_id), node_id);
}

int
cn_config_set_data_dir(cn_config_t *cfg, const char *dir)
{
    return copy_str(cfg->data_dir, sizeof(cfg->data_dir), dir);
}

int
cn_config_set_principal_header(cn_config_t *cfg, const char *header)
{
    return copy_str(cfg->principal_header, sizeof(cfg->principal_header), header);
}

int
cn_config_enable_realtime(cn_config_t *cfg, const char *path, const char *host,
                          uint16_t port)
{
    cn_config_t c = *cfg;

    if (copy_str(c.realtime_path, sizeof(c.realtime_path), path) ||
        copy_str(c.realtime_host, sizeof(c.realtime_host), host))
        return CN_ETOOBIG;
    c.realtime_port = port;
    c.realtime_enabled = 1;
    *cfg = c;
    return 0;
}

static int
parse_ull(const char *s, unsigned long long min, unsigned long long max,
          unsigned long long *out)
{
    char *end;
    unsigned long long v;

    if (!*s || *s == '-' || *s == '+' || *s == ' ')
        return -1;
    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno || *end || v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

/* Applies one option value; `source` names where it came from for the message. */
static int
apply(cn_config_t *cfg, const opt_t *o, const char *value, const char *source, char *err,
      size_t errlen)
{
    char *field = (char *)cfg + o->offset;
    unsigned long long v;

    switch (o->kind) {
    case OPT_STR:
        if (copy_str(field, o->size, value))
            return fail(err, errlen, "%s: value is longer than %zu bytes", source,
                        o->size - 1);
        return 0;
    case OPT_PORT:
        if (parse_ull(value, 0, 65535, &v))
            return fail(err, errlen, "%s: '%s' is not a port number (0-65535)", source,
                        value);
        *(uint16_t *)(void *)field = (uint16_t)v;
        return 0;
    case OPT_U32:
    case OPT_INT:
    case OPT_SIZE:
    case OPT_U64:
        if (parse_ull(value, o->min, o->max, &v))
            return fail(err, errlen, "%s: '%s' is not a whole number in %llu..%llu", source,
                        value, o->min, o->max);
        if (o->kind == OPT_U32)
            *(uint32_t *)(void *)field = (uint32_t)v;
        else if (o->kind == OPT_INT)
            *(int *)(void *)field = (int)v;
        else if (o->kind == OPT_U64)
            *(uint64_t *)(void *)field = (uint64_t)v;
        else
            *(size_t *)(void *)field = (size_t)v;
        return 0;
    case OPT_BOOL:
        if (!strcmp(value, "1") || !strcmp(value, "true") || !strcmp(value, "yes"))
            *(int *)(void *)field = 1;
        else if (!strcmp(value, "0") || !strcmp(value, "false") || !strcmp(value, "no"))
            *(int *)(void *)field = 0;
        else
            return fail(err, errlen, "%s: '%s' is not a boolean (1/0, true/false)", source,
                        value);
        return 0;
    case OPT_WALIO:
        if (!strcmp(value, "pwrite"))
            cfg->wal_io = CN_WAL_IO_PWRITE;
        else if (!strcmp(value, "uring"))
            cfg->wal_io = CN_WAL_IO_URING;
        else if (!strcmp(value, "direct"))
            cfg->wal_io = CN_WAL_IO_DIRECT;
        else if (!strcmp(value, "uring-direct"))
            cfg->wal_io = CN_WAL_IO_URING_DIRECT;
        else
            return fail(err, errlen,
                        "%s: '%s' is not a WAL I/O mode (pwrite, uring, direct or uring-direct)",
                        source, value);
        return 0;
    case OPT_INFLIGHT:
        if (!strcmp(value, "wait"))
            cfg->inflight_mode = CN_INFLIGHT_WAIT;
        else if (!strcmp(value, "reject"))
            cfg->inflight_mode = CN_INFLIGHT_REJECT;
        else
            return fail(err, errlen, "%s: '%s' is not an in-flight mode (wait or reject)",
                        source, value);
        return 0;
    case OPT_DURABILITY:
        if (!strcmp(value, "sync"))
            cfg->durability = CN_DURABILITY_SYNC;
        else if (!strcmp(value, "async"))
            cfg->durability = CN_DURABILITY_ASYNC;
        else
            return fail(err, errlen, "%s: '%s' is not a durability mode (sync or async)",
                        source, value);
        return 0;
    case OPT_LOGLEVEL: {
        static const char *levels[] = {"error", "warn", "info", "debug"};
        for (int i = 0; i < 4; i++) {
            if (!strcmp(value, levels[i])) {
                cfg->log_level = i;
                return 0;
            }
        }
        return fail(err, errlen, "%s: '%s' is not a log level (error, warn, info, debug)",
                    source, value);
    }
    }
    return fail(err, errlen, "%s: unsupported option", source);
}

int
cn_config_from_env(cn_config_t *cfg, char *err, size_t errlen)
{
    cn_config_t c = *cfg;

    for (size_t i = 0; i < sizeof(options) / sizeof(options[0]); i++) {
        const char *v = getenv(options[i].env);
        if (v && apply(&c, &options[i], v, options[i].env, err, errlen))
            return CN_ECONFIG;
    }
    *cfg = c;
    return 0;
}

int
cn_config_parse_args(cn_config_t *cfg, int argc, char **argv, char *err, size_t errlen)
{
    cn_config_t c = *cfg;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *value = NULL, *eq;
        char source[96];
        const opt_t *o = NULL;
        size_t namelen;

        if (!strcmp(a, "--help") || !strcmp(a, "-h"))
            return 1;
        if (strncmp(a, "--", 2))
            return fail(err, errlen, "unexpected argument '%s' (see --help)", a);
        a += 2;
        eq = strchr(a, '=');
        namelen = eq ? (size_t)(eq - a) : strlen(a);
        for (size_t k = 0; k < sizeof(options) / sizeof(options[0]); k++) {
            if (strlen(options[k].flag) == namelen && !strncmp(options[k].flag, a, namelen))
                o = &options[k];
        }
        if (!o)
            return fail(err, errlen, "unknown flag '--%.*s' (see --help)", (int)namelen, a);
        if (eq)
            value = eq + 1;
        else if (o->kind == OPT_BOOL)
            value = "1";
        else if (i + 1 < argc)
            value = argv[++i];
        else
            return fail(err, errlen, "flag '--%s' needs a value (%s)", o->flag, o->arg);
        snprintf(source, sizeof(source), "--%s", o->flag);
        if (apply(&c, o, value, source, err, errlen))
            return CN_ECONFIG;
    }
    *cfg = c;
    return 0;
}

int
cn_config_validate(const cn_config_t *cfg, char *err, size_t errlen)
{
    if (!cfg->host[0])
        return fail(err, errlen, "--host must not be empty");
    if (!cfg->data_dir[0])
        return fail(err, errlen, "--data-dir must not be empty");
    if (cfg->reused_key_status != 409 && cfg->reused_key_status != 422)
        return fail(err, errlen, "--reused-key-status must be 409 or 422");
    if (!cn_config_store_is_pg(cfg) && strcmp(cfg->store, "lmdb"))
        /* A URL may carry a password: named only when it is not one. */
        return fail(err, errlen, "--store must be lmdb or a postgresql:// URL, not '%s'",
                    strchr(cfg->store, ':') ? "(a URL of another form)" : cfg->store);
    if (cfg->workers < 1 || cfg->workers > CN_CONFIG_WORKERS_MAX)
        return fail(err, errlen, "--workers must be in 1..%d", CN_CONFIG_WORKERS_MAX);
    if (cfg->threads < 1)
        return fail(err, errlen, "--threads must be at least 1");
    if (cfg->inflight_slots < 64 || (cfg->inflight_slots & (cfg->inflight_slots - 1)))
        return fail(err, errlen, "--inflight-slots must be a power of two, at least 64 "
                                 "(got %u)", cfg->inflight_slots);
    if (cfg->lease_ms < 100)
        return fail(err, errlen, "--lease-ms must be at least 100");
    if (cfg->commit_timeout_ms < 100)
        return fail(err, errlen, "--commit-timeout-ms must be at least 100");
    if (cfg->realtime_path[0] != '/')
        return fail(err, errlen, "--realtime-path must start with '/'");
    /* RFC 7518 3.2: an HS256 key at least as long as the hash (256 bits). */
    if (cfg->realtime_secret[0] && strlen(cfg->realtime_secret) < 32)
        return fail(err, errlen, "--realtime-secret must be at least 32 bytes (RFC 7518 "
                                 "3.2); e.g. 64 hex digits from openssl rand -hex 32");
    for (const char *p = cfg->realtime_origins; *p; p++) {
        if ((unsigned char)*p <= 0x20 || (unsigned char)*p > 0x7e)
            return fail(err, errlen, "--realtime-origins: a comma-separated list of origins "
                                     "such as https://app.example.com, without spaces");
    }
    if (cfg->key_ttl_s < 1)
        return fail(err, errlen, "--key-ttl must be at least 1 second");
    if (cfg->max_body_bytes < 1)
        return fail(err, errlen, "--max-body must be at least 1 byte");
    for (const char *p = cfg->principal_header; *p; p++) {
        /* An HTTP token: letters, digits and !#$%&'*+-.^_`|~ */
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
              (*p >= '0' && *p <= '9') || strchr("!#$%&'*+-.^_`|~", *p)))
            return fail(err, errlen, "--principal-header '%s' is not a header name",
                        cfg->principal_header);
    }
    return 0;
}

void
cn_config_print_usage(void *f, const char *prog)
{
    FILE *out = f;

    fprintf(out, "usage: %s [flags]\n\nflags (each also --flag=VALUE; environment variable in "
                 "brackets):\n", prog);
    for (size_t i = 0; i < sizeof(options) / sizeof(options[0]); i++) {
        char left[64];
        snprintf(left, sizeof(left), options[i].arg[0] ? "--%s %s" : "--%s", options[i].flag,
                 options[i].arg);
        fprintf(out, "  %-36s %s [%s]\n", left, options[i].help, options[i].env);
    }
    fprintf(out, "  %-36s %s\n", "--help", "print this help and exit");
}

void
cn_config_from_args(cn_config_t *cfg, int argc, char **argv)
{
    char err[512];
    int r;

    if (cn_config_from_env(cfg, err, sizeof(err))) {
        fprintf(stderr, "%s: %s\n", argc > 0 ? argv[0] : "cnerium", err);
        exit(2);
    }
    r = cn_config_parse_args(cfg, argc, argv, err, sizeof(err));
    if (r == 1) {
        cn_config_print_usage(stdout, argc > 0 ? argv[0] : "cnerium");
        exit(0);
    }
    if (r == 0)
        r = cn_config_validate(cfg, err, sizeof(err));
    if (r) {
        fprintf(stderr, "%s: %s\n", argc > 0 ? argv[0] : "cnerium", err);
        exit(2);
    }
}

int
cn_config_store_is_pg(const cn_config_t *cfg)
{
    return !strncmp(cfg->store, "postgresql://", 13) || !strncmp(cfg->store, "postgres://", 11);
}
