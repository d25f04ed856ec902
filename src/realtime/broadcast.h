/*
 * realtime/broadcast.h - the WebSocket broadcaster (wraps libwebsockets; no lws type
 * leaves broadcast.c).
 *
 * Serves clients on an inherited listening socket at one endpoint path:
 *   /ws                    live events from now on
 *   /ws?since=N[&epoch=E]  first every retained event with seq > N, in order, then live:
 *                          no gap, no duplicate at the seam
 * Every connection opens with {"type":"welcome","epoch":E,"last":L}: E names the event
 * log (16 hex digits, realtime/query.h), L its last seq. A position the server cannot
 * serve gets {"type":"reset","reason":R,"epoch":E,"oldest":M,"next":N} next (R "pruned":
 * events after N were dropped by retention; "ahead": N is past the last seq; "epoch": N
 * belongs to another event log), and events follow from seq N. A malformed query is
 * answered 400 on the upgrade; with a secret, a missing, invalid or expired token 401
 * (realtime/token.h; ?token= or Authorization: Bearer), with an origin list an Origin
 * outside it 403. A token's rooms and "all" claims bound what the client may subscribe
 * to and receive, resumes included.
 * Client messages: {"type":"subscribe","room":R}, {"type":"unsubscribe","room":R},
 * {"type":"ping"} (answered {"type":"pong"}), {"type":"command",...} (realtime/command.h:
 * run on a pool of threads, answered {"type":"result",...} to that client only);
 * anything else gets {"type":"error",...} and the connection stays. Events without a room go to every client; an event with a
 * room only to that room's subscribers.
 *
 * Events come from LMDB (the persister stores them with the records that emitted them)
 * and are announced by the persister through an eventfd: there is no polling loop. Each
 * event is serialized once, into a cache shared by every client; a client only keeps its
 * position (the next seq to send), so a client that falls behind costs no memory and is
 * served from the cache, or from LMDB when it is further behind than the cache.
 */
#ifndef CN_REALTIME_BROADCAST_H
#define CN_REALTIME_BROADCAST_H

#include <stddef.h>
#include <stdint.h>

#include "shm/region.h"

typedef struct cn_broadcast_config {
    int listen_fd;         /* bound and listening; borrowed */
    const char *path;      /* the endpoint, e.g. "/ws" */
    int notify_efd;        /* the persister writes it after committing events */
    int stop_fd;           /* a signalfd for SIGTERM/SIGINT */
    const char *lmdb_dir;
    const char *store_url;     /* a shared store (postgresql://...): events come from it
                                * instead of lmdb_dir; NULL: LMDB */
    size_t map_size;
    cn_shm_t *shm;
    unsigned cache_events; /* serialized events kept in memory */
    size_t cache_bytes;    /* and the most bytes they may take */
    const char *secret;    /* HS256 key clients' tokens are signed with; NULL: open */
    size_t secret_len;
    const char *origins;   /* comma-separated allowed Origin values; NULL or "": any */
    unsigned ping_s;       /* WebSocket ping after this much idle time */
    unsigned timeout_s;    /* close a client silent this long after a ping */
    /* WebSocket commands (realtime/command.h); NULL: none, a command gets an error */
    const struct cn_ws_commands *commands;
    const struct cn_ws_target *command_target; /* the HTTP server they run on */
    unsigned command_timeout_ms;               /* one command's request, in all */
} cn_broadcast_config_t;

/* Serves until stop_fd is readable. on_ready runs once clients can connect. Returns 0,
 * or a negative error when the server could not start. */
int cn__broadcast_run(const cn_broadcast_config_t *cfg, void (*on_ready)(void *arg),
                      void *ready_arg);

#endif
