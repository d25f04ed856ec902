/*
 * realtime/broadcast.c - the WebSocket broadcaster (the only file that includes
 * libwebsockets.h). See broadcast.h for what clients see.
 *
 * One lws context, one thread, no listening port of its own: the listening socket (bound
 * by the supervisor, so a port clash fails at start and the port survives broadcaster
 * restarts), the persister's eventfd and the stop signalfd are adopted as raw
 * descriptors, so one lws_service loop waits on all of them. A readable listening socket
 * is drained with accept4 and each connection adopted as an HTTP connection that may
 * upgrade to the events protocol.
 *
 * Cache: a ring of the last cache_events serialized frames (seq order, contiguous).
 * Writable callback of a client: pending control replies first, then the frame for its
 * next seq (skipping events of rooms it is not in), one frame per callback; it asks for
 * another callback while it is behind. LWS_PRE bytes precede every frame, so one buffer
 * serves every client.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <libwebsockets.h>

#include "cnerium/error.h"
#include "realtime/broadcast.h"
#include "realtime/event.h"
#include "realtime/message.h"
#include "store/store.h"
#include "support/log.h"

#define ROOMS_MAX 16
#define CTL_MAX 8
#define CTL_LEN 192
#define RX_MAX 4096
#define SKIP_PER_CALLBACK 256
#define LOAD_BATCH 4096

/* A cached event: a complete WebSocket text frame (header + JSON), built once. */
typedef struct frame {
    uint64_t seq;
    char *room;   /* NULL: every client */
    uint8_t *buf; /* the allocation */
    uint8_t *data; /* the frame: at least LWS_PRE bytes after buf */
    size_t len;
} frame_t;

typedef struct client {
    uint64_t next; /* the next seq to send */
    int established;
    int reset_pending;
    uint64_t reset_oldest;
    char rooms[ROOMS_MAX][CN_EVENT_ROOM_MAX + 1];
    unsigned nrooms;
    char ctl[CTL_MAX][CTL_LEN];
    size_t ctl_len[CTL_MAX];
    unsigned nctl, ctl_head;
    char rx[RX_MAX];
    size_t rx_len;
    int rx_overflow;
    int rx_binary;
} client_t;

typedef struct bcast {
    const cn_broadcast_config_t *cfg;
    struct lws_context *ctx;
    struct lws_vhost *vh;
    cn_store_t *store;
    cn_shm_events_t *stats;
    frame_t *cache; /* cache_events slots, frames first..loaded at seq % size */
    uint64_t first, loaded; /* cached seqs: first..loaded (first > loaded: none) */
    int stop;
    int listen_fd;
} bcast_t;

static bcast_t *B; /* the one broadcaster of this process (lws callbacks have no arg) */

/* Frames are pre-built and written with LWS_WRITE_RAW, several per send(): a client that
 * is behind gets up to BATCH_BYTES per writable callback in one system call. Server
 * frames are unmasked and never fragmented, and no extension is negotiated, so whole
 * pre-built frames are exactly what lws would have written. */
#define WS_HEADER_MAX 10
#define BATCH_BYTES (64 * 1024)

/* Writes the header of an unfragmented text frame of len payload bytes so that it ends
 * at end (the header goes before end). Returns its length. */
static size_t
ws_header(uint8_t *end, size_t len)
{
    if (len < 126) {
        end[-2] = 0x81;
        end[-1] = (uint8_t)len;
        return 2;
    }
    if (len < 65536) {
        end[-4] = 0x81;
        end[-3] = 126;
        end[-2] = (uint8_t)(len >> 8);
        end[-1] = (uint8_t)len;
        return 4;
    }
    end[-10] = 0x81;
    end[-9] = 127;
    for (int i = 0; i < 8; i++)
        end[-1 - i] = (uint8_t)(len >> (8 * i));
    return 10;
}

/* ---- the cache ---- */

static frame_t *
cache_slot(bcast_t *b, uint64_t seq)
{
    return &b->cache[seq % b->cfg->cache_events];
}

static void
frame_free(frame_t *f)
{
    free(f->room);
    free(f->buf);
    memset(f, 0, sizeof(*f));
}

/* Builds the frame for a stored event into f. Returns 0 or an error. */
static int
frame_build(frame_t *f, uint64_t seq, const uint8_t *p, size_t len)
{
    cn_event_view_t ev;

    if (cn__event_stored_decode(p, len, &ev))
        return CN_ECORRUPT;
    f->seq = seq;
    f->room = NULL;
    if (ev.room_len && !(f->room = strndup(ev.room, ev.room_len)))
        return -ENOMEM;
    if (!(f->buf = cn__event_frame(&ev, seq, LWS_PRE + WS_HEADER_MAX, &f->len))) {
        free(f->room);
        f->room = NULL;
        return -ENOMEM;
    }
    f->data = f->buf + LWS_PRE + WS_HEADER_MAX;
    f->data -= ws_header(f->data, f->len);
    f->len += (size_t)(f->buf + LWS_PRE + WS_HEADER_MAX - f->data);
    return 0;
}

static int
load_one(uint64_t seq, const uint8_t *p, size_t len, void *arg)
{
    bcast_t *b = arg;
    frame_t *f;

    if (seq != b->loaded + 1) {
        /* A gap below the committed seq can only be pruned events: restart the cache. */
        for (uint64_t s = b->first; s <= b->loaded; s++)
            frame_free(cache_slot(b, s));
        b->first = seq;
    }
    f = cache_slot(b, seq);
    if (f->buf) {
        frame_free(f); /* evicts the oldest */
        b->first = seq - b->cfg->cache_events + 1;
    }
    if (frame_build(f, seq, p, len)) {
        cn_log_error("stored event %llu is unreadable; skipped", (unsigned long long)seq);
        f->buf = NULL;
    }
    b->loaded = seq;
    return 0;
}

/* Loads every committed event not cached yet. */
static void
load_committed(bcast_t *b)
{
    uint64_t committed = atomic_load_explicit(&b->stats->committed_seq, memory_order_acquire);
    int rc;

    while (b->loaded < committed) {
        uint64_t before = b->loaded;
        if ((rc = cn__store_events_read(b->store, b->loaded + 1, LOAD_BATCH, load_one, b))) {
            cn_log_error("reading events from the store: %s", cn_strerror(rc));
            return;
        }
        if (b->loaded == before)
            return; /* not visible yet (cannot happen once committed) or pruned */
    }
}

typedef struct catchup {
    frame_t *f;
    uint64_t want;
    int found, bad;
} catchup_t;

static int
catchup_one(uint64_t seq, const uint8_t *p, size_t len, void *arg)
{
    catchup_t *c = arg;

    if (seq == c->want) {
        c->found = 1;
        c->bad = frame_build(c->f, seq, p, len) != 0;
    }
    return 1; /* one is enough */
}

/* The frame for seq: from the cache, or built from the store into *tmp (the caller
 * frees it). NULL with *pruned set when the event is no longer stored; NULL alone when
 * it is unreadable (skip it). */
static const frame_t *
frame_get(bcast_t *b, uint64_t seq, frame_t *tmp, int *pruned)
{
    catchup_t c = {tmp, seq, 0, 0};
    frame_t *f;

    *pruned = 0;
    if (seq >= b->first && seq <= b->loaded) {
        f = cache_slot(b, seq);
        if (f->buf && f->seq == seq)
            return f;
    }
    /* Behind the cache: catch up from the store. */
    if (cn__store_events_read(b->store, seq, 1, catchup_one, &c) || !c.found) {
        *pruned = 1;
        return NULL;
    }
    atomic_fetch_add(&b->stats->catchups, 1);
    return c.bad ? NULL : tmp;
}

static uint64_t
oldest_stored(bcast_t *b)
{
    uint64_t oldest = 0, newest = 0;

    if (cn__store_events_bounds(b->store, &oldest, &newest) || !oldest)
        return atomic_load(&b->stats->committed_seq) + 1;
    return oldest;
}

/* ---- clients ---- */

static int
in_room(const client_t *c, const char *room)
{
    for (unsigned i = 0; i < c->nrooms; i++) {
        if (!strcmp(c->rooms[i], room))
            return 1;
    }
    return 0;
}

static void
ctl_push(client_t *c, const char *text)
{
    size_t n = strlen(text);

    if (c->nctl == CTL_MAX || n >= CTL_LEN)
        return; /* a client that floods requests without reading loses replies, not memory */
    unsigned at = (c->ctl_head + c->nctl) % CTL_MAX;
    memcpy(c->ctl[at] + 0, text, n);
    c->ctl_len[at] = n;
    c->nctl++;
}

static void
ctl_error(client_t *c, const char *message)
{
    char buf[CTL_LEN];

    snprintf(buf, sizeof(buf), "{\"type\":\"error\",\"message\":\"%s\"}", message);
    ctl_push(c, buf);
    atomic_fetch_add(&B->stats->client_errors, 1);
}

static void
handle_message(client_t *c, const char *text, size_t len)
{
    cn_ws_msg_t m;
    char buf[CTL_LEN];

    cn__ws_message_parse(text, len, &m);
    switch (m.kind) {
    case CN_WS_MSG_PING:
        ctl_push(c, "{\"type\":\"pong\"}");
        break;
    case CN_WS_MSG_SUBSCRIBE:
        if (!in_room(c, m.room)) {
            if (c->nrooms == ROOMS_MAX) {
                ctl_error(c, "too many rooms (at most 16)");
                break;
            }
            strcpy(c->rooms[c->nrooms++], m.room);
        }
        snprintf(buf, sizeof(buf), "{\"type\":\"subscribed\",\"room\":\"%s\"}", m.room);
        ctl_push(c, buf);
        break;
    case CN_WS_MSG_UNSUBSCRIBE:
        for (unsigned i = 0; i < c->nrooms; i++) {
            if (!strcmp(c->rooms[i], m.room)) {
                memmove(c->rooms[i], c->rooms[c->nrooms - 1], sizeof(c->rooms[i]));
                c->nrooms--;
                break;
            }
        }
        snprintf(buf, sizeof(buf), "{\"type\":\"unsubscribed\",\"room\":\"%s\"}", m.room);
        ctl_push(c, buf);
        break;
    default:
        ctl_error(c, m.why);
    }
}

/* Appends a control message (text) as a frame to out. */
static size_t
append_text(uint8_t *out, size_t pos, const char *text, size_t n)
{
    size_t h = n < 126 ? 2 : 4;

    ws_header(out + pos + h, n);
    memcpy(out + pos + h, text, n);
    return pos + h + n;
}

/* Writes what the client is owed: control replies, a reset, then event frames, batched
 * up to BATCH_BYTES in one write. Returns -1 to close the connection. */
static int
client_write(bcast_t *b, struct lws *wsi, client_t *c)
{
    static uint8_t out[LWS_PRE + BATCH_BYTES];
    size_t pos = LWS_PRE;
    uint64_t committed = b->loaded;
    unsigned frames = 0;

    while (c->nctl) {
        pos = append_text(out, pos, c->ctl[c->ctl_head], c->ctl_len[c->ctl_head]);
        c->ctl_head = (c->ctl_head + 1) % CTL_MAX;
        c->nctl--;
    }
    if (c->reset_pending) {
        char text[96];
        int n = snprintf(text, sizeof(text), "{\"type\":\"reset\",\"oldest\":%llu}",
                         (unsigned long long)c->reset_oldest);
        pos = append_text(out, pos, text, (size_t)n);
        c->reset_pending = 0;
        atomic_fetch_add(&b->stats->resets, 1);
    }
    for (int skipped = 0; c->next <= committed && skipped < SKIP_PER_CALLBACK;) {
        frame_t tmp = {0};
        int pruned;
        const frame_t *f = frame_get(b, c->next, &tmp, &pruned);

        if (pruned) {
            /* The client's position is gone: say so, then carry on from what is left. */
            c->reset_pending = 1;
            c->reset_oldest = oldest_stored(b);
            c->next = c->reset_oldest;
            break;
        }
        if (!f || (f->room && !in_room(c, f->room))) {
            c->next++;
            skipped++;
            frame_free(&tmp);
            continue;
        }
        if (pos + f->len > sizeof(out)) {
            if (pos == LWS_PRE && f == &tmp) {
                /* A frame bigger than the batch, read back from the store: it has its
                 * own headroom; write it alone. */
                int w = lws_write(wsi, f->data, f->len, LWS_WRITE_RAW);
                frame_free(&tmp);
                if (w < 0)
                    return -1;
                c->next++;
                frames++;
            } else if (pos == LWS_PRE) {
                if (lws_write(wsi, f->data, f->len, LWS_WRITE_RAW) < 0)
                    return -1;
                c->next++;
                frames++;
            } else {
                frame_free(&tmp);
            }
            break;
        }
        memcpy(out + pos, f->data, f->len);
        pos += f->len;
        frame_free(&tmp);
        c->next++;
        frames++;
    }
    if (pos > LWS_PRE && lws_write(wsi, out + LWS_PRE, pos - LWS_PRE, LWS_WRITE_RAW) < 0)
        return -1;
    if (frames)
        atomic_fetch_add_explicit(&b->stats->frames_sent, frames, memory_order_relaxed);
    if (c->next <= committed || c->nctl || c->reset_pending)
        lws_callback_on_writable(wsi);
    return 0;
}

/* The ?since=N of the upgrade request: 1 with *since, 0 when absent, -1 when malformed. */
static int
since_arg(struct lws *wsi, uint64_t *since)
{
    char arg[64], *end;
    const char *v = lws_get_urlarg_by_name(wsi, "since=", arg, sizeof(arg));
    unsigned long long n;

    if (!v)
        return 0;
    errno = 0;
    n = strtoull(v, &end, 10);
    if (errno || end == v || *end || v[0] == '-' || v[0] == '+')
        return -1;
    *since = n;
    return 1;
}

/* The upgrade request (no per-client memory yet): the path must be ours and a ?since=
 * must be a number. */
static int
client_filter(bcast_t *b, struct lws *wsi)
{
    char uri[256];
    uint64_t since;
    int n = lws_hdr_copy(wsi, uri, sizeof(uri), WSI_TOKEN_GET_URI);

    if (n <= 0 || strcmp(uri, b->cfg->path) || since_arg(wsi, &since) < 0)
        return -1;
    return 0;
}

/* A new client: live from now, or from ?since=N. */
static void
client_start(bcast_t *b, struct lws *wsi, client_t *c)
{
    uint64_t since = 0, oldest;

    memset(c, 0, sizeof(*c));
    load_committed(b);
    if (since_arg(wsi, &since) != 1) {
        c->next = b->loaded + 1;
        return;
    }
    c->next = since + 1;
    oldest = oldest_stored(b);
    if (c->next < oldest && since < b->loaded) {
        /* Events after N were pruned: say so, then carry on from the oldest kept. */
        c->reset_pending = 1;
        c->reset_oldest = oldest;
        c->next = oldest;
    }
}

static int
events_cb(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len)
{
    bcast_t *b = B;
    client_t *c = user;

    switch (reason) {
    case LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION:
        return client_filter(b, wsi);
    case LWS_CALLBACK_ESTABLISHED:
        client_start(b, wsi, c);
        c->established = 1;
        atomic_fetch_add(&b->stats->clients, 1);
        lws_callback_on_writable(wsi);
        return 0;
    case LWS_CALLBACK_CLOSED:
        if (c && c->established) {
            c->established = 0;
            atomic_fetch_sub(&b->stats->clients, 1);
            /* Closed with events still owed: it stopped reading (keepalive hangup) or
             * left; it resumes with ?since= and misses nothing. */
            if (c->next <= b->loaded)
                atomic_fetch_add(&b->stats->slow_closes, 1);
        }
        return 0;
    case LWS_CALLBACK_SERVER_WRITEABLE:
        return client_write(b, wsi, c);
    case LWS_CALLBACK_RECEIVE:
        if (lws_frame_is_binary(wsi))
            c->rx_binary = 1;
        if (!c->rx_overflow && c->rx_len + len <= sizeof(c->rx)) {
            memcpy(c->rx + c->rx_len, in, len);
            c->rx_len += len;
        } else {
            c->rx_overflow = 1;
        }
        if (lws_is_final_fragment(wsi)) {
            if (c->rx_binary)
                ctl_error(c, "binary messages are not understood; send JSON text");
            else if (c->rx_overflow)
                ctl_error(c, "message too long (at most 4096 bytes)");
            else
                handle_message(c, c->rx, c->rx_len);
            c->rx_len = 0;
            c->rx_overflow = 0;
            c->rx_binary = 0;
            lws_callback_on_writable(wsi);
        }
        return 0;
    case LWS_CALLBACK_HTTP:
        /* A plain HTTP request on the WebSocket port. */
        lws_return_http_status(wsi, HTTP_STATUS_NOT_FOUND, "WebSocket endpoint only");
        return -1;
    default:
        return lws_callback_http_dummy(wsi, reason, user, in, len);
    }
}

/* ---- the raw descriptors: listening socket, persister eventfd, stop signalfd ---- */

static const struct lws_protocols protocols[];

static int
accept_cb(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len)
{
    bcast_t *b = B;

    if (reason != LWS_CALLBACK_RAW_RX_FILE)
        return 0;
    for (;;) {
        int fd = accept4(b->listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd < 0)
            break; /* EAGAIN: drained */
        if (!lws_adopt_socket_vhost(b->vh, fd))
            close(fd);
    }
    return 0;
}

static int
notify_cb(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len)
{
    bcast_t *b = B;
    uint64_t v;

    if (reason != LWS_CALLBACK_RAW_RX_FILE)
        return 0;
    while (read(b->cfg->notify_efd, &v, sizeof(v)) > 0)
        ;
    load_committed(b);
    lws_callback_on_writable_all_protocol(b->ctx, &protocols[0]);
    return 0;
}

static int
stop_cb(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len)
{
    bcast_t *b = B;
    char buf[128];

    if (reason != LWS_CALLBACK_RAW_RX_FILE)
        return 0;
    while (read(b->cfg->stop_fd, buf, sizeof(buf)) > 0)
        ;
    b->stop = 1;
    return 0;
}

/* protocols[0] serves HTTP and the events protocol (a client that names no subprotocol
 * lands on the first one). */
static const struct lws_protocols protocols[] = {
    {"cnerium-events", events_cb, sizeof(client_t), RX_MAX, 0, NULL, 0},
    {"cnerium-accept", accept_cb, 0, 0, 0, NULL, 0},
    {"cnerium-notify", notify_cb, 0, 0, 0, NULL, 0},
    {"cnerium-stop", stop_cb, 0, 0, 0, NULL, 0},
    {NULL, NULL, 0, 0, 0, NULL, 0}, /* terminator */
};

static void
lws_log(int level, const char *line)
{
    char copy[512];
    size_t n = strlen(line);

    if (n >= sizeof(copy))
        n = sizeof(copy) - 1;
    memcpy(copy, line, n);
    while (n && (copy[n - 1] == '\n' || copy[n - 1] == '\r'))
        n--;
    copy[n] = '\0';
    if (level & LLL_ERR)
        cn_log_error("libwebsockets: %s", copy);
    else
        cn_log_debug("libwebsockets: %s", copy);
}

static int
adopt_fd(bcast_t *b, int fd, const char *protocol)
{
    lws_sock_file_fd_type u;

    u.filefd = fd;
    return lws_adopt_descriptor_vhost(b->vh, LWS_ADOPT_RAW_FILE_DESC, u, protocol, NULL) ? 0
                                                                                        : -EIO;
}

int
cn__broadcast_run(const cn_broadcast_config_t *cfg, void (*on_ready)(void *arg), void *ready_arg)
{
    struct lws_context_creation_info info;
    lws_retry_bo_t retry = {0};
    bcast_t b;
    int rc;

    memset(&b, 0, sizeof(b));
    b.cfg = cfg;
    b.stats = &cfg->shm->hdr->events;
    b.listen_fd = cfg->listen_fd;
    b.first = 1;
    B = &b;
    /* A broadcaster that was killed left its clients counted: they are gone with it. */
    atomic_store(&b.stats->clients, 0);
    if (!(b.cache = calloc(cfg->cache_events, sizeof(*b.cache))))
        return -ENOMEM;
    if ((rc = cn__store_open(cfg->lmdb_dir, cfg->map_size, &b.store)))
        goto out;

    lws_set_log_level(LLL_ERR | LLL_WARN, lws_log);
    memset(&info, 0, sizeof(info));
    info.port = CONTEXT_PORT_NO_LISTEN_SERVER;
    info.protocols = protocols;
    info.gid = -1;
    info.uid = -1;
    info.options = LWS_SERVER_OPTION_VALIDATE_UTF8;
    retry.secs_since_valid_ping = (uint16_t)cfg->ping_s;
    retry.secs_since_valid_hangup = (uint16_t)(cfg->ping_s + cfg->timeout_s);
    info.retry_and_idle_policy = &retry;
    if (!(b.ctx = lws_create_context(&info))) {
        rc = -EIO;
        goto out;
    }
    b.vh = lws_get_vhost_by_name(b.ctx, "default");
    if (!b.vh || (rc = adopt_fd(&b, cfg->listen_fd, "cnerium-accept")) ||
        (rc = adopt_fd(&b, cfg->notify_efd, "cnerium-notify")) ||
        (rc = adopt_fd(&b, cfg->stop_fd, "cnerium-stop"))) {
        rc = rc ? rc : -EIO;
        goto out;
    }
    /* Start the cache near the end: older events are read back for clients that ask. */
    {
        uint64_t committed = atomic_load(&b.stats->committed_seq);
        b.loaded = committed > cfg->cache_events ? committed - cfg->cache_events : 0;
        b.first = b.loaded + 1;
    }
    load_committed(&b);
    atomic_store(&b.stats->pid, (int32_t)getpid());
    if (on_ready)
        on_ready(ready_arg);
    while (!b.stop && lws_service(b.ctx, 0) >= 0)
        ;
    rc = 0;

out:
    atomic_store(&b.stats->pid, 0);
    if (b.ctx)
        lws_context_destroy(b.ctx); /* closes every client */
    atomic_store(&b.stats->clients, 0);
    cn__store_close(b.store);
    for (unsigned i = 0; b.cache && i < cfg->cache_events; i++)
        frame_free(&b.cache[i]);
    free(b.cache);
    B = NULL;
    return rc;
}
