/*
 * app/app_internal.h - the app object and the per-process worker state, shared by the
 * app (registration, dispatch, metrics) and the process mains in workers/.
 */
#ifndef CN_APP_APP_INTERNAL_H
#define CN_APP_APP_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <sys/types.h>

#include "cnerium/app.h"
#include "cnerium/config.h"
#include "http/router.h"
#include "http/server.h"
#include "realtime/command.h"
#include "reliability/durable.h"
#include "shm/inflight.h"
#include "shm/region.h"
#include "store/claimer.h"
#include "store/commit.h"
#include "store/store.h"

#define CN_APP_STORE_MAP_SIZE ((size_t)1 << 30)
#define CN_APP_DRAIN_TIMEOUT_MS 10000

/* Passes req on (the far side of relay is the callee's: it calls cn__relay_far_close
 * once, even when it cannot start). */
typedef void (*cn_app_relay_cb)(void *ctx, cn_request_t *req, cn_relay_t *relay);

struct cn_app {
    cn_config_t cfg;
    cn_router_t *router;
    cn_route_t fallback; /* handler NULL: none (404 / 405) */
    cn_app_relay_cb relay; /* cn__app_relay: NULL, none */
    void *relay_ctx;
    char *ops[CN_SHM_MAX_OPS]; /* owned: distinct durable operation names, by op_index */
    unsigned nops;
    cn_shm_t shm; /* while cn_app_run runs: created before fork, shared by every process */
    pid_t server_pid; /* while cn_app_run runs: the supervisor (or the single process) */
    /* Multi-process mode: eventfds created before fork. Workers write persist_efd after
     * pushing a record; the persister writes ack_efd[w] after acking worker w's ring. */
    int persist_efd;
    int ack_efd[CN_SHM_MAX_WORKERS];
    int broadcast_efd; /* the persister writes it after committing events */
    cn_ws_commands_t commands; /* WebSocket commands (cn_ws_command), run by the broadcaster */
    /* While cn_app_run runs: the HTTP listening socket's bound address, where the
     * broadcaster sends the requests of WebSocket commands. */
    struct sockaddr_storage http_addr;
    socklen_t http_addr_len;
};

#define CN_APP_RING_BYTES ((uint64_t)4 << 20)
#define CN_APP_WAL_SEGMENT_BYTES ((uint64_t)32 << 20)
#define CN_APP_EVENT_CACHE 8192
#define CN_APP_MAX_PARKED 1024 /* per worker: requests parked behind a duplicate */
#define CN_APP_REPLAY_CACHE_BYTES ((size_t)16 << 20) /* per worker, with a shared store */
#define CN_APP_WS_PING_S 20
#define CN_APP_WS_TIMEOUT_S 10

struct cn_worker;

/* One event loop of a worker (workers/http_worker.c): a thread, its epoll, its server. */
typedef struct cn_loop {
    struct cn_worker *w;
    cn_http_server_t *http;
    int epfd;
    int ctl_fd; /* eventfd: the worker's main thread has a command */
    pthread_t thread;
    int started;
} cn_loop_t;

/* What one HTTP worker process (or the single process) runs with. */
typedef struct cn_worker {
    cn_app_t *app;
    unsigned id;
    cn_store_t *store;
    cn_committer_t *committer;
    cn_claimer_t *claimer; /* a shared store's claims; NULL with LMDB */
    cn_replay_cache_t *replays; /* a shared store's responses seen; NULL with LMDB */
    cn_inflight_t inflight;
    cn_durable_t durable;
    int wake_fd; /* eventfd: acks from the persister, ended claims somebody waits on */
    /* A shared store: the claimer and the pg committer write it when answers are in; -1
     * otherwise. */
    int store_fd;
    cn_loop_t *loops;
    unsigned nloops;
    atomic_uint command; /* CMD_* for the loops */
    pthread_mutex_t poll_mu; /* one loop at a time polls the committer */
    atomic_int poll_wanted;  /* a loop that found poll_mu taken asks its holder to poll again */

    int sweep; /* this worker runs the expiry sweep (worker 0) */
    pthread_t sweeper;
    int sweeper_started;
    pthread_mutex_t sweep_mu;
    pthread_cond_t sweep_cond;
    int sweep_stop;
} cn_worker_t;

/* Requests that match no route (those a fallback would get) are passed on in pieces
 * through relay instead, from their headers on (the gateway's passthrough: bodies of any
 * size, answers streamed). */
void cn__app_relay(cn_app_t *app, cn_app_relay_cb relay, void *ctx);

/* The HTTP server's relay callback (cn_http_relay_cb; arg is a cn_worker_t). */
int cn__app_relay_select(void *arg, cn_request_t *req, int64_t body_length,
                         const cn_relay_near_t *near, cn_relay_t **out);

/* Dispatches one complete request (the HTTP server's callback; arg is a cn_worker_t). */
void cn__app_dispatch(void *arg, cn_request_t *req, cn_http_reply_t *reply);

/* Answers a durable request whose response was deferred until its commit was decided
 * (the durable layer's deliver callback; arg is a cn_worker_t). */
void cn__app_deliver(void *arg, void *handle, cn_durable_result_t *out);

/* The GET /metrics handler (ctx is the app). */
cn_response_t cn__metrics_handler(cn_request_t *req, void *ctx);

/* Serves as worker `id` until SIGTERM/SIGINT (which the caller has blocked), then drains.
 * on_ready runs once the worker accepts requests. Returns the process exit code. */
int cn__worker_run(cn_app_t *app, unsigned id, int listen_fd,
                   void (*on_ready)(void *arg), void *ready_arg);

/* The persister process: recovery, then the group-commit loop until SIGTERM/SIGINT
 * (blocked by the caller), then a final drain of the rings. on_ready runs once recovery
 * is done. Returns the process exit code. */
int cn__persister_run(cn_app_t *app, void (*on_ready)(void *arg), void *ready_arg);

/* The broadcaster process: the WebSocket endpoint on listen_fd until SIGTERM/SIGINT
 * (blocked by the caller). Returns the process exit code. */
int cn__broadcaster_run(cn_app_t *app, int listen_fd, void (*on_ready)(void *arg),
                        void *ready_arg);

#endif
