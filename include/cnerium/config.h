/*
 * cnerium/config.h - server configuration.
 *
 * cn_config_t is a plain value: copy it freely, no pointer in it owns memory. Start from
 * cn_config_development(), then apply the environment and the command line:
 *
 *   cn_config_t cfg = cn_config_development();
 *   cn_config_set_name(&cfg, "durable-orders");
 *   cn_config_from_args(&cfg, argc, argv);    // CNERIUM_* env, then flags
 *
 * Flags (each also as --flag=value) and their environment variables:
 *   --host H              CNERIUM_HOST              HTTP bind address (127.0.0.1)
 *   --port N              CNERIUM_PORT              HTTP port, 0 = any free port (8080)
 *   --workers N           CNERIUM_WORKERS           HTTP worker processes (number of cores)
 *   --threads N           CNERIUM_THREADS           event loops per worker (1)
 *   --single-process      CNERIUM_SINGLE_PROCESS    one process, no supervisor (debugging)
 *   --data-dir D          CNERIUM_DATA_DIR          data directory (data/cnerium)
 *   --store URL           CNERIUM_STORE             lmdb | postgresql://...: a database several
 *                                                   hosts share (lmdb)
 *   --realtime-host H     CNERIUM_REALTIME_HOST     WebSocket bind address (127.0.0.1)
 *   --realtime-port N     CNERIUM_REALTIME_PORT     WebSocket port (9090)
 *   --realtime-path P     CNERIUM_REALTIME_PATH     WebSocket endpoint (/ws)
 *   --realtime-secret S   CNERIUM_REALTIME_SECRET   HS256 key: clients need a token (none: open)
 *   --realtime-origins L  CNERIUM_REALTIME_ORIGINS  comma-separated allowed Origin values
 *   --realtime-cache-bytes N CNERIUM_REALTIME_CACHE_BYTES  broadcaster event cache (64 MiB)
 *   --events-retain N     CNERIUM_EVENTS_RETAIN     events kept for ?since= resume (100000)
 *   --events-retain-s S   CNERIUM_EVENTS_RETAIN_S   and for at most S seconds (86400)
 *   --durability M        CNERIUM_DURABILITY        sync | async (sync)
 *   --wal-io M            CNERIUM_WAL_IO            pwrite | uring | direct | uring-direct:
 *                                                   how WAL batches are written (pwrite)
 *   --node-id ID          CNERIUM_NODE_ID           node identity (<name>-node)
 *   --name NAME           CNERIUM_NAME              service name
 *   --key-ttl SECONDS     CNERIUM_KEY_TTL           stored response lifetime (86400)
 *   --max-body BYTES      CNERIUM_MAX_BODY          request body limit (1048576)
 *   --stream-event-max BYTES CNERIUM_STREAM_EVENT_MAX  stream event data limit (65536)
 *   --max-connections N   CNERIUM_MAX_CONNECTIONS   open HTTP connections per worker (1024)
 *   --max-connections-per-ip N  CNERIUM_MAX_CONNECTIONS_PER_IP
 *                                                   per worker and client address (256)
 *   --header-timeout-ms N CNERIUM_HEADER_TIMEOUT_MS deadline for a request's headers (10000)
 *   --principal-header H  CNERIUM_PRINCIPAL_HEADER  header that scopes keys per tenant
 *   --reused-key-status N CNERIUM_REUSED_KEY_STATUS 409 | 422: a key reused with another body (409)
 *   --inflight M          CNERIUM_INFLIGHT          wait | reject: concurrent duplicates (wait)
 *   --inflight-wait-ms N  CNERIUM_INFLIGHT_WAIT_MS  bound on waiting for a duplicate (30000)
 *   --inflight-slots N    CNERIUM_INFLIGHT_SLOTS    in-flight table capacity, power of 2 (65536)
 *   --lease-ms N          CNERIUM_LEASE_MS          a running handler's claim lease (60000)
 *   --sweep-interval-ms N CNERIUM_SWEEP_INTERVAL_MS expiry sweep period (60000)
 *   --log-level L         CNERIUM_LOG_LEVEL         error | warn | info | debug (info)
 *   --help
 */
#ifndef CNERIUM_CONFIG_H
#define CNERIUM_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#define CN_CONFIG_NAME_MAX 64
#define CN_CONFIG_HOST_MAX 256
#define CN_CONFIG_PATH_MAX 1024
#define CN_CONFIG_HEADER_MAX 128
#define CN_CONFIG_WORKERS_MAX 64
#define CN_CONFIG_SECRET_MAX 256
#define CN_CONFIG_ORIGINS_MAX 1024

typedef enum cn_durability {
    CN_DURABILITY_SYNC = 0,  /* respond once the record is on disk */
    CN_DURABILITY_ASYNC = 1, /* respond once the record is submitted; a crash can lose it */
} cn_durability_t;

typedef enum cn_inflight_mode {
    CN_INFLIGHT_WAIT = 0,   /* a concurrent duplicate waits, then replays */
    CN_INFLIGHT_REJECT = 1, /* a concurrent duplicate gets 409 with Retry-After: 1 */
} cn_inflight_mode_t;

typedef enum cn_wal_io {
    CN_WAL_IO_PWRITE = 0, /* pwrite + fdatasync from the persister's thread */
    CN_WAL_IO_URING = 1,  /* one write SQE linked to an fdatasync SQE, through io_uring */
    /* O_DIRECT, each batch in whole 4096-byte blocks written with RWF_DSYNC (no
     * fdatasync): pwritev2, or one write SQE through io_uring. Where the file system
     * refuses O_DIRECT they fall back to pwrite and uring. */
    CN_WAL_IO_DIRECT = 2,
    CN_WAL_IO_URING_DIRECT = 3,
} cn_wal_io_t;

typedef struct cn_config {
    char name[CN_CONFIG_NAME_MAX];
    char node_id[CN_CONFIG_NAME_MAX];
    char data_dir[CN_CONFIG_PATH_MAX];
    /* "lmdb" (the embedded store in data_dir, one host) or a postgresql:// URL: a
     * database that several hosts share (README "Several hosts"). */
    char store[CN_CONFIG_PATH_MAX];
    char host[CN_CONFIG_HOST_MAX];
    uint16_t port;
    int workers;        /* HTTP worker processes */
    int threads;        /* event loops (threads) in each worker */
    int single_process; /* 1: serve from the calling process, no supervisor or children */
    int realtime_enabled;
    char realtime_host[CN_CONFIG_HOST_MAX];
    uint16_t realtime_port;
    char realtime_path[CN_CONFIG_NAME_MAX];
    /* Realtime access control and the broadcaster's memory: empty secret = no token
     * needed; empty origins = any Origin. */
    char realtime_secret[CN_CONFIG_SECRET_MAX];
    char realtime_origins[CN_CONFIG_ORIGINS_MAX];
    uint64_t realtime_cache_bytes; /* serialized events kept in memory, in bytes */
    uint64_t events_retain;  /* 0: no count limit */
    uint32_t events_retain_s; /* 0: no age limit */
    cn_durability_t durability;
    cn_wal_io_t wal_io;
    uint32_t key_ttl_s;
    size_t max_body_bytes;
    uint32_t stream_event_max; /* bytes of data in one stream event (cn_stream_append) */
    /* HTTP connection limits (README, Reliability: Limits): per worker process. */
    uint32_t max_connections;        /* at the limit, new connections wait in the backlog */
    uint32_t max_connections_per_ip; /* beyond it, closed unanswered; 0 = no limit */
    uint32_t header_timeout_ms;      /* 408 and close; 0 = no deadline */
    /* Header whose value (hashed) joins the key scope; empty = keys are scoped by
     * operation name only. */
    char principal_header[CN_CONFIG_HEADER_MAX];
    /* The status of a request that reuses a key with another body: 409 (the default, as
     * the seed says) or 422 (the IETF draft's). */
    uint32_t reused_key_status;
    cn_inflight_mode_t inflight_mode;
    uint32_t inflight_wait_ms;
    uint32_t inflight_slots; /* a power of two */
    uint32_t lease_ms;
    /* How long a durable request waits for the persister to decide its record before it
     * gets 503 (the key stays claimed until the record is decided). */
    uint32_t commit_timeout_ms;
    uint32_t sweep_interval_ms;
    int log_level; /* 0 error, 1 warn, 2 info, 3 debug */
} cn_config_t;

/* Defaults for running on a developer machine; see the table above. */
cn_config_t cn_config_development(void);

/* Setters copy the string; they return 0, or CN_ETOOBIG when it does not fit. */
int cn_config_set_name(cn_config_t *cfg, const char *name);
int cn_config_set_node_id(cn_config_t *cfg, const char *node_id);
int cn_config_set_data_dir(cn_config_t *cfg, const char *dir);

/* 1 when cfg->store names a PostgreSQL database (postgresql:// or postgres://). */
int cn_config_store_is_pg(const cn_config_t *cfg);
int cn_config_set_principal_header(cn_config_t *cfg, const char *header);
/* Enables the realtime endpoint at path on host:port. */
int cn_config_enable_realtime(cn_config_t *cfg, const char *path, const char *host,
                              uint16_t port);

/* Applies CNERIUM_* environment variables to cfg. Returns 0, or CN_ECONFIG with a
 * one-line explanation written to err (errlen bytes). */
int cn_config_from_env(cn_config_t *cfg, char *err, size_t errlen);

/* Applies command-line flags (argv[0] is skipped). Returns 0, 1 when --help was given
 * (nothing else is applied), or CN_ECONFIG with a one-line explanation in err. */
int cn_config_parse_args(cn_config_t *cfg, int argc, char **argv, char *err, size_t errlen);

/* The usual front door: environment, then flags. Prints usage and exits 0 on --help;
 * prints the error and exits 2 (a configuration error: do not restart) on a bad value. */
void cn_config_from_args(cn_config_t *cfg, int argc, char **argv);

/* Checks values that only make sense together. Returns 0 or CN_ECONFIG with err set. */
int cn_config_validate(const cn_config_t *cfg, char *err, size_t errlen);

/* Writes the flag summary to f (a FILE *, declared void * to keep stdio out). */
void cn_config_print_usage(void *f, const char *prog);

#endif
