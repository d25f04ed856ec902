/*
 * workers/broadcaster.c - the broadcaster process (cn-broadcaster): the WebSocket
 * endpoint. The logic is in src/realtime/broadcast.c; this main hands it the inherited
 * listening socket, the persister's eventfd, a signalfd for SIGTERM/SIGINT, and the
 * WebSocket commands with the HTTP address they are sent to.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "app/app_internal.h"
#include "cnerium/error.h"
#include "realtime/broadcast.h"
#include "realtime/command.h"
#include "support/log.h"

int
cn__broadcaster_run(cn_app_t *app, int listen_fd, void (*on_ready)(void *arg), void *ready_arg)
{
    const cn_config_t *cfg = &app->cfg;
    char lmdb_dir[CN_CONFIG_PATH_MAX + 8];
    cn_broadcast_config_t bc;
    cn_ws_target_t target;
    int have_target;
    sigset_t stop;
    int sfd, rc;

    sigemptyset(&stop);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGINT);
    if ((sfd = signalfd(-1, &stop, SFD_CLOEXEC | SFD_NONBLOCK)) < 0) {
        fprintf(stderr, "cnerium: broadcaster signalfd: %s\n", strerror(errno));
        return 1;
    }
    snprintf(lmdb_dir, sizeof(lmdb_dir), "%s/lmdb", cfg->data_dir);
    have_target = app->http_addr_len &&
                  !cn__ws_target_init(&target, (const struct sockaddr *)&app->http_addr,
                                      app->http_addr_len);
    bc = (cn_broadcast_config_t){
        .listen_fd = listen_fd,
        .path = cfg->realtime_path,
        .notify_efd = app->broadcast_efd,
        .stop_fd = sfd,
        .lmdb_dir = lmdb_dir,
        .store_url = cn_config_store_is_pg(cfg) ? cfg->store : NULL,
        .map_size = CN_APP_STORE_MAP_SIZE,
        .shm = &app->shm,
        .cache_events = CN_APP_EVENT_CACHE,
        .cache_bytes = (size_t)cfg->realtime_cache_bytes,
        .secret = cfg->realtime_secret[0] ? cfg->realtime_secret : NULL,
        .secret_len = strlen(cfg->realtime_secret),
        .origins = cfg->realtime_origins,
        .ping_s = CN_APP_WS_PING_S,
        .timeout_s = CN_APP_WS_TIMEOUT_S,
        .commands = app->commands.n && have_target ? &app->commands : NULL,
        .command_target = have_target ? &target : NULL,
        /* A command's request may wait for its commit, or for a concurrent duplicate of
         * its key to finish: it gets the longer of the two and 5 s more. */
        .command_timeout_ms = (cfg->commit_timeout_ms > cfg->inflight_wait_ms
                                   ? cfg->commit_timeout_ms
                                   : cfg->inflight_wait_ms) + 5000,
    };
    rc = cn__broadcast_run(&bc, on_ready, ready_arg);
    close(sfd);
    if (rc) {
        fprintf(stderr, "cnerium: the broadcaster could not start: %s\n", cn_strerror(rc));
        return 1;
    }
    return 0;
}
