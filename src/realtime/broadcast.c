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
 * Cache: a ring of the last cache_events serialized frames (seq order, contiguous), and
 * at most cache_bytes of them: the oldest go first; a frame bigger than the whole cap is
 * not cached (clients get it read back from the store, like one behind the cache).
 * Writable callback of a client: pending control replies first, then the frame for its
 * next seq (skipping events of rooms it is not in), one frame per callback; it asks for
 * another callback while it is behind. LWS_PRE bytes precede every frame, so one buffer
 * serves every client.
 *
 * Commands (realtime/command.h) run on a pool of CMD_THREADS threads, so a request that
 * waits for its commit never stalls the loop. The pool's eventfd is adopted like the
 * others; its callback takes the finished jobs and queues each frame for the client that
 * sent the command, found by slot and generation: a client that left in the meantime
 * (its slot freed or reused) is simply not found and the frame is dropped. A client has
 * at most CMD_PER_CLIENT commands whose answer is not written yet; the pool holds at
 * most CMD_CAPACITY in all.
 *
 * At the descriptor limit accept4 fails with EMFILE and leaves the connection queued,
 * so the listening socket stays readable and the loop would spin: a reserve descriptor
 * is given up to accept that connection, answer it 503 and close it, then taken back.
 * Existing clients keep being served; new ones get in again once others leave.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <libwebsockets.h>

#include "cnerium/error.h"
#include "realtime/broadcast.h"
#include "realtime/command.h"
#include "realtime/event.h"
#include "realtime/message.h"
#include "realtime/query.h"
#include "realtime/token.h"
#include "shm/commits.h"
#include "store/store.h"
#include "support/clock.h"
#include "support/log.h"

#define ROOMS_MAX 16
#define CTL_MAX 8
#define CTL_LEN 192
#define RX_MAX 4096
#define SKIP_PER_CALLBACK 256
#define LOAD_BATCH 4096
#define ACCEPT_BATCH 64          /* connections taken per readable callback */
#define ACCEPT_PAUSE_US 100000   /* listener ignored this long when accept cannot shed */
#define ARGS_MAX (CN_TOKEN_MAX + 512)
#define CMD_THREADS 4
#define CMD_CAPACITY 64    /* commands queued or running, all clients together */
#define CMD_PER_CLIENT 16  /* commands of one client whose answer is not written yet */
#define CMD_ERRORS_MAX 16  /* error frames waiting for one client; more are dropped */
#define CMD_CONNECT_MS 5000

/* A frame answering a command (result or error), waiting to be written: built with
 * headroom, like cached event frames. */
typedef struct cmd_out {
    struct cmd_out *next;
    char *buf;     /* the allocation */
    uint8_t *data; /* the frame: WebSocket header + JSON */
    size_t len;
    int result;    /* it answers a command counted in cmd_inflight */
} cmd_out_t;

/* A cached event: a complete WebSocket text frame (header + JSON), built once. */
typedef struct frame {
    uint64_t seq;
    char *room;   /* NULL: every client */
    uint8_t *buf; /* the allocation */
    uint8_t *data; /* the frame: at least LWS_PRE bytes after buf */
    size_t len;
    size_t bytes; /* what it takes in memory, for the byte cap */
    uint64_t commit_ns; /* when the persister committed it (CLOCK_MONOTONIC); 0: unknown */
} frame_t;

typedef struct client {
    uint64_t next; /* the next seq to send */
    int established;
    /* from the upgrade request (client_filter) */
    int has_since, has_epoch;
    uint64_t since, epoch;
    int authed; /* a token was required: claims bound what it receives */
    cn_token_claims_t claims;
    struct lws *wsi;
    lws_sorted_usec_list_t expiry; /* closes the connection when the token expires */
    /* owed: the welcome, then a reset */
    int welcome_pending;
    uint64_t welcome_last;
    int reset_pending;
    const char *reset_reason;
    uint64_t reset_oldest, reset_next;
    char rooms[ROOMS_MAX][CN_EVENT_ROOM_MAX + 1];
    unsigned nrooms;
    char ctl[CTL_MAX][CTL_LEN];
    size_t ctl_len[CTL_MAX];
    unsigned nctl, ctl_head;
    char rx[RX_MAX];
    size_t rx_len;
    int rx_overflow;
    int rx_binary;
    /* commands: the slot (index + 1 in bcast_t.slots, 0: none) and generation their
     * jobs name; answers to write */
    uint32_t cmd_slot;
    uint64_t cmd_gen;
    unsigned cmd_inflight; /* submitted, answer not written yet */
    unsigned cmd_errors;   /* error frames in the out list */
    cmd_out_t *out, *out_tail;
} client_t;

typedef struct bcast {
    const cn_broadcast_config_t *cfg;
    struct lws_context *ctx;
    struct lws_vhost *vh;
    cn_store_t *store;
    cn_shm_events_t *stats;
    frame_t *cache; /* cache_events slots, frames first..loaded at seq % size */
    uint64_t first, loaded; /* cached seqs: first..loaded (first > loaded: none) */
    size_t cache_bytes;     /* bytes of the cached frames */
    uint64_t epoch;         /* of the event log (cn__store_events_epoch) */
    char epoch_hex[17];
    int stop;
    int listen_fd;
    struct lws *accept_wsi;
    int reserve_fd;          /* given up to shed a connection at the descriptor limit */
    uint64_t shed, shed_logged;
    time_t shed_log_at;
    lws_sorted_usec_list_t accept_sul;
    /* commands */
    cn_ws_pool_t *pool;
    client_t **slots; /* clients with a slot, by slot - 1; NULL: free */
    uint32_t nslots;
    uint64_t cmd_gen;
    /* commit -> socket write latency, counted here and added to the shared histogram
     * once per callback */
    uint64_t dl_buckets[CN_SHM_DELIVERY_BUCKETS];
    uint64_t dl_ns_sum;
    int dl_any;
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

/* ---- delivery latency ---- */

static const uint64_t delivery_bounds_us[] = CN_SHM_DELIVERY_BOUNDS_US;

/* Frame f (committed at f->commit_ns, 0: unknown) was written to a client at now. */
static void
delivered(bcast_t *b, uint64_t commit_ns, uint64_t now)
{
    uint64_t ns = now > commit_ns ? now - commit_ns : 0;
    int i = 0;

    if (!commit_ns)
        return;
    while (i < CN_SHM_DELIVERY_BUCKETS - 1 && ns > delivery_bounds_us[i] * 1000u)
        i++;
    b->dl_buckets[i]++;
    b->dl_ns_sum += ns;
    b->dl_any = 1;
}

/* Adds what was counted to the shared histogram (the broadcaster is its one writer). */
static void
delivered_flush(bcast_t *b)
{
    cn_shm_delivery_t *d = &b->cfg->shm->hdr->delivery;

    if (!b->dl_any)
        return;
    for (int i = 0; i < CN_SHM_DELIVERY_BUCKETS; i++) {
        if (b->dl_buckets[i])
            atomic_fetch_add_explicit(&d->buckets[i], b->dl_buckets[i], memory_order_relaxed);
        b->dl_buckets[i] = 0;
    }
    atomic_fetch_add_explicit(&d->ns_sum, b->dl_ns_sum, memory_order_relaxed);
    b->dl_ns_sum = 0;
    b->dl_any = 0;
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

/* Drops the oldest cached frame. */
static void
cache_evict(bcast_t *b)
{
    frame_t *f = cache_slot(b, b->first);

    b->cache_bytes -= f->bytes;
    frame_free(f);
    b->first++;
}

/* A NUL-terminated copy of the n bytes at p, which need not be terminated (LMDB's
 * pages): memcpy, not strndup, reads exactly n bytes whatever a checker's strndup does
 * (ASan with strict_string_checks scans for a NUL and may run off the map). */
static char *
copy_bytes(const char *p, size_t n)
{
    char *s = malloc(n + 1);

    if (s) {
        memcpy(s, p, n);
        s[n] = '\0';
    }
    return s;
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
    if (ev.room_len && !(f->room = copy_bytes(ev.room, ev.room_len)))
        return -ENOMEM;
    if (!(f->buf = cn__event_frame(&ev, seq, LWS_PRE + WS_HEADER_MAX, &f->len))) {
        free(f->room);
        f->room = NULL;
        return -ENOMEM;
    }
    f->data = f->buf + LWS_PRE + WS_HEADER_MAX;
    f->data -= ws_header(f->data, f->len);
    f->len += (size_t)(f->buf + LWS_PRE + WS_HEADER_MAX - f->data);
    f->bytes = (size_t)(f->data - f->buf) + f->len + (f->room ? ev.room_len + 1 : 0);
    if (cn__shm_commit_lookup(&B->cfg->shm->hdr->commits, seq, &f->commit_ns))
        f->commit_ns = 0; /* committed too long ago (or before this server started) */
    return 0;
}

static int
load_one(uint64_t seq, const uint8_t *p, size_t len, void *arg)
{
    bcast_t *b = arg;
    frame_t f = {0};

    if (seq != b->loaded + 1) {
        /* A gap below the committed seq can only be pruned events: restart the cache. */
        while (b->first <= b->loaded)
            cache_evict(b);
        b->first = seq;
    }
    if (frame_build(&f, seq, p, len)) {
        cn_log_error("stored event %llu is unreadable; skipped", (unsigned long long)seq);
        frame_free(&f);
    }
    if (f.bytes > b->cfg->cache_bytes)
        frame_free(&f); /* bigger than the whole cache: read back from the store */
    /* Room for it: the count cap, then the byte cap, oldest first. */
    while (b->first <= b->loaded && (b->loaded - b->first + 1 >= b->cfg->cache_events ||
                                     b->cache_bytes + f.bytes > b->cfg->cache_bytes))
        cache_evict(b);
    *cache_slot(b, seq) = f;
    b->cache_bytes += f.bytes;
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

/* Whether the event of frame f goes to c: a room event to the room's subscribers, the
 * others to everyone; with a token, only what its claims allow. */
static int
may_see(const client_t *c, const frame_t *f)
{
    if (f->room)
        return in_room(c, f->room) && (!c->authed || cn__token_allows(&c->claims, f->room));
    return !c->authed || cn__token_allows(&c->claims, NULL);
}

/* A client whose token has expired gets nothing more: it is closed at once (expiry_cb),
 * and at its next event or message at the latest. */
static int
token_expired(const client_t *c)
{
    return c->authed && (int64_t)time(NULL) >= c->claims.exp;
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

/* ---- commands ---- */

/* The headroom of a command frame: lws's, then the largest WebSocket header. */
#define CMD_HEADROOM (LWS_PRE + WS_HEADER_MAX)

/* Queues text (a frame buffer with CMD_HEADROOM, consumed) for c. */
static void
cmd_out_push(client_t *c, char *buf, size_t len, int result)
{
    cmd_out_t *o = calloc(1, sizeof(*o));
    uint8_t *text = (uint8_t *)buf + CMD_HEADROOM;

    if (!o) {
        free(buf);
        if (result)
            c->cmd_inflight--;
        return;
    }
    o->buf = buf;
    o->data = text - ws_header(text, len);
    o->len = len + (size_t)(text - o->data);
    o->result = result;
    if (!result)
        c->cmd_errors++;
    if (c->out_tail)
        c->out_tail->next = o;
    else
        c->out = o;
    c->out_tail = o;
}

static void
cmd_out_pop(client_t *c)
{
    cmd_out_t *o = c->out;

    if (!(c->out = o->next))
        c->out_tail = NULL;
    if (o->result)
        c->cmd_inflight--;
    else
        c->cmd_errors--;
    free(o->buf);
    free(o);
}

/* {"type":"error","id":...,"message":why} to c; why is JSON-escaped. */
static void
cmd_error(client_t *c, const char *id, const char *why)
{
    size_t len;
    char *buf;

    atomic_fetch_add(&B->stats->client_errors, 1);
    if (c->cmd_errors >= CMD_ERRORS_MAX)
        return; /* a client that floods bad commands without reading loses replies */
    if ((buf = cn__ws_error_frame(id, why, CMD_HEADROOM, &len)))
        cmd_out_push(c, buf, len, 0);
}

/* Gives c a slot, so finished jobs can find it while it lives. Returns 0 or -ENOMEM. */
static int
slot_get(bcast_t *b, client_t *c)
{
    uint32_t i = 0;

    if (c->cmd_slot)
        return 0;
    while (i < b->nslots && b->slots[i])
        i++;
    if (i == b->nslots) {
        uint32_t n = b->nslots ? 2 * b->nslots : 64;
        client_t **s = realloc(b->slots, n * sizeof(*s));
        if (!s)
            return -ENOMEM;
        memset(s + b->nslots, 0, (n - b->nslots) * sizeof(*s));
        b->slots = s;
        b->nslots = n;
    }
    b->slots[i] = c;
    c->cmd_slot = i + 1;
    c->cmd_gen = ++b->cmd_gen;
    return 0;
}

/* A client is gone: its slot is free, its unwritten answers dropped. */
static void
cmd_client_gone(bcast_t *b, client_t *c)
{
    if (c->cmd_slot && c->cmd_slot <= b->nslots && b->slots[c->cmd_slot - 1] == c)
        b->slots[c->cmd_slot - 1] = NULL;
    c->cmd_slot = 0;
    while (c->out)
        cmd_out_pop(c);
}

static void
command_start(bcast_t *b, client_t *c, const cn_ws_msg_t *m)
{
    char why[CN_WS_WHY_MAX];
    cn_ws_job_t *j = NULL;
    int rc;

    if (!b->cfg->commands || !b->pool) {
        cmd_error(c, m->id, "unknown action (this server takes no commands)");
        return;
    }
    if (c->cmd_inflight >= CMD_PER_CLIENT) {
        cmd_error(c, m->id, "too many commands in progress on this connection (at most 16)");
        return;
    }
    if ((rc = cn__ws_job_new(b->cfg->commands, m, &j, why, sizeof(why)))) {
        cmd_error(c, m->id, rc == -EINVAL ? why : "out of memory");
        return;
    }
    if (slot_get(b, c)) {
        cn__ws_job_free(j);
        cmd_error(c, m->id, "out of memory");
        return;
    }
    j->slot = c->cmd_slot;
    j->owner = c->cmd_gen;
    if (cn__ws_pool_submit(b->pool, j)) {
        cn__ws_job_free(j);
        cmd_error(c, m->id, "too many commands in progress; retry later");
        return;
    }
    c->cmd_inflight++;
}

/* The pool's eventfd: finished jobs go to their clients, if still there. */
static int
commands_cb(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
            size_t len)
{
    bcast_t *b = B;
    cn_ws_job_t *j;

    if (reason != LWS_CALLBACK_RAW_RX_FILE || !b->pool)
        return 0;
    j = cn__ws_pool_take(b->pool);
    while (j) {
        cn_ws_job_t *next = j->next;
        client_t *c = j->slot && j->slot <= b->nslots ? b->slots[j->slot - 1] : NULL;

        if (c && c->cmd_gen == j->owner && j->frame) {
            cmd_out_push(c, j->frame, j->frame_len, 1);
            j->frame = NULL;
            lws_callback_on_writable(c->wsi);
        } else if (c && c->cmd_gen == j->owner) {
            c->cmd_inflight--; /* no frame: out of memory */
        }
        cn__ws_job_free(j);
        j = next;
    }
    return 0;
}

static void
handle_message(client_t *c, const char *text, size_t len)
{
    cn_ws_msg_t m;
    char buf[CTL_LEN];

    cn__ws_message_parse(text, len, &m);
    switch (m.kind) {
    case CN_WS_MSG_COMMAND:
        command_start(B, c, &m);
        break;
    case CN_WS_MSG_PING:
        ctl_push(c, "{\"type\":\"pong\"}");
        break;
    case CN_WS_MSG_SUBSCRIBE:
        if (c->authed && !cn__token_allows(&c->claims, m.room)) {
            ctl_error(c, "the token does not allow this room");
            break;
        }
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
        if (m.command)
            cmd_error(c, m.has_id ? m.id : NULL, m.why);
        else
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
    static uint64_t sent_ns[BATCH_BYTES / 16]; /* commit times of the batched frames */
    size_t pos = LWS_PRE;
    uint64_t committed = b->loaded, alone_ns = 0;
    unsigned frames = 0, nsent = 0;
    int alone = 0; /* a frame was written on its own: no other write in this callback */

    if (token_expired(c))
        return -1;
    if (c->welcome_pending) {
        char text[128];
        int n = snprintf(text, sizeof(text),
                         "{\"type\":\"welcome\",\"epoch\":\"%s\",\"last\":%llu}", b->epoch_hex,
                         (unsigned long long)c->welcome_last);
        pos = append_text(out, pos, text, (size_t)n);
        c->welcome_pending = 0;
    }
    if (c->reset_pending) {
        char text[192];
        int n = snprintf(text, sizeof(text),
                         "{\"type\":\"reset\",\"reason\":\"%s\",\"epoch\":\"%s\",\"oldest\":%llu,"
                         "\"next\":%llu}",
                         c->reset_reason, b->epoch_hex, (unsigned long long)c->reset_oldest,
                         (unsigned long long)c->reset_next);
        pos = append_text(out, pos, text, (size_t)n);
        c->reset_pending = 0;
        atomic_fetch_add(&b->stats->resets, 1);
    }
    while (c->nctl) {
        pos = append_text(out, pos, c->ctl[c->ctl_head], c->ctl_len[c->ctl_head]);
        c->ctl_head = (c->ctl_head + 1) % CTL_MAX;
        c->nctl--;
    }
    /* Command answers: batched like events; one bigger than the batch goes alone. */
    while (c->out) {
        if (pos + c->out->len > sizeof(out)) {
            if (pos == LWS_PRE) {
                if (lws_write(wsi, c->out->data, c->out->len, LWS_WRITE_RAW) < 0)
                    return -1;
                cmd_out_pop(c);
                alone = 1;
            }
            break;
        }
        memcpy(out + pos, c->out->data, c->out->len);
        pos += c->out->len;
        cmd_out_pop(c);
    }
    for (int skipped = 0; !alone && c->next <= committed && skipped < SKIP_PER_CALLBACK &&
                          nsent < sizeof(sent_ns) / sizeof(sent_ns[0]);) {
        frame_t tmp = {0};
        int pruned;
        const frame_t *f = frame_get(b, c->next, &tmp, &pruned);

        if (pruned) {
            /* The client's position is gone: say so, then carry on from what is left. */
            c->reset_pending = 1;
            c->reset_reason = "pruned";
            c->reset_oldest = oldest_stored(b);
            c->reset_next = c->reset_oldest;
            c->next = c->reset_oldest;
            break;
        }
        if (!f || !may_see(c, f)) {
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
                alone_ns = f->commit_ns;
                frame_free(&tmp);
                if (w < 0)
                    return -1;
                c->next++;
                frames++;
            } else if (pos == LWS_PRE) {
                if (lws_write(wsi, f->data, f->len, LWS_WRITE_RAW) < 0)
                    return -1;
                alone_ns = f->commit_ns;
                c->next++;
                frames++;
            } else {
                frame_free(&tmp);
            }
            break;
        }
        memcpy(out + pos, f->data, f->len);
        pos += f->len;
        sent_ns[nsent++] = f->commit_ns;
        frame_free(&tmp);
        c->next++;
        frames++;
    }
    if (pos > LWS_PRE && lws_write(wsi, out + LWS_PRE, pos - LWS_PRE, LWS_WRITE_RAW) < 0)
        return -1;
    if (frames) {
        uint64_t now = cn__clock_mono_ns();
        for (unsigned i = 0; i < nsent; i++)
            delivered(b, sent_ns[i], now);
        delivered(b, alone_ns, now);
        delivered_flush(b);
        atomic_fetch_add_explicit(&b->stats->frames_sent, frames, memory_order_relaxed);
    }
    if (c->next <= committed || c->nctl || c->reset_pending || c->out)
        lws_callback_on_writable(wsi);
    return 0;
}

/* Answers the upgrade request with an HTTP error and no upgrade. The request has been
 * read and nothing written yet, so the response goes straight to the socket; returning
 * non-zero from the filter then closes the connection. */
static int
reject(struct lws *wsi, int status, const char *reason, const char *extra,
       const char *message)
{
    char body[256], buf[640];
    int bl = snprintf(body, sizeof(body), "{\"error\":\"%s\"}", message);
    int n = snprintf(buf, sizeof(buf),
                     "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
                     "Content-Length: %d\r\nConnection: close\r\n%s\r\n%s",
                     status, reason, bl, extra ? extra : "", body);

    /* Counted before the answer leaves: a client that reads the metric after its 401
     * must find the refusal in it. */
    atomic_fetch_add(&B->stats->client_errors, 1);
    if (n > 0 && (size_t)n < sizeof(buf))
        (void)send(lws_get_socket_fd(wsi), buf, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT);
    cn_log_debug("websocket upgrade refused: %d %s", status, message);
    return -1;
}

/* The query string of the upgrade request, one '&'-separated argument at a time (lws
 * has split and percent-decoded them). Returns 0 or -EINVAL. */
static int
query_read(struct lws *wsi, cn_ws_query_t *q)
{
    char arg[ARGS_MAX];
    int n;

    cn__ws_query_init(q);
    if (lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_URI_ARGS) >= (int)sizeof(arg))
        return -EINVAL;
    for (int i = 0; (n = lws_hdr_copy_fragment(wsi, arg, sizeof(arg), WSI_TOKEN_HTTP_URI_ARGS,
                                               i)) >= 0;
         i++) {
        if (n && cn__ws_query_param(q, arg, (size_t)n))
            return -EINVAL;
    }
    return 0;
}

/* 1 when the Origin header is absent (not a browser) or one of the configured list. */
static int
origin_ok(bcast_t *b, struct lws *wsi)
{
    char origin[256];
    const char *list = b->cfg->origins, *p;
    int n;

    if (!list || !*list || lws_hdr_total_length(wsi, WSI_TOKEN_ORIGIN) <= 0)
        return 1;
    if ((n = lws_hdr_copy(wsi, origin, sizeof(origin), WSI_TOKEN_ORIGIN)) <= 0)
        return 0;
    for (p = list; *p;) {
        const char *comma = strchr(p, ',');
        size_t l = comma ? (size_t)(comma - p) : strlen(p);
        if (l == (size_t)n && !strncasecmp(p, origin, l))
            return 1;
        p += l + (comma ? 1 : 0);
    }
    return 0;
}

/* The token of the request: Authorization: Bearer T, else ?token=T. Verifies it into
 * c->claims. Returns 0 or a CN_TOKEN_E* code. */
static int
token_check(bcast_t *b, struct lws *wsi, const cn_ws_query_t *q, client_t *c)
{
    char auth[CN_TOKEN_MAX + 16];
    const char *tok = q->has_token ? q->token : NULL;
    size_t len = q->token_len;
    int n = lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_AUTHORIZATION);

    if (n > 0) {
        if (n >= (int)sizeof(auth) ||
            (n = lws_hdr_copy(wsi, auth, sizeof(auth), WSI_TOKEN_HTTP_AUTHORIZATION)) < 7 ||
            strncasecmp(auth, "Bearer ", 7))
            return CN_TOKEN_EFORMAT;
        tok = auth + 7;
        len = (size_t)n - 7;
        while (len && *tok == ' ') {
            tok++;
            len--;
        }
    }
    if (!tok)
        return CN_TOKEN_EFORMAT;
    return cn__token_verify(tok, len, (const uint8_t *)b->cfg->secret, b->cfg->secret_len,
                            (int64_t)time(NULL), &c->claims);
}

/* The upgrade request: the path must be ours (404), the query well-formed (400), the
 * Origin allowed (403) and, with a secret, the token valid (401). Fills c from it. */
static int
client_filter(bcast_t *b, struct lws *wsi, client_t *c)
{
    char uri[256];
    cn_ws_query_t q;
    int n = lws_hdr_copy(wsi, uri, sizeof(uri), WSI_TOKEN_GET_URI), rc;

    if (!c)
        return -1;
    memset(c, 0, sizeof(*c));
    if (n <= 0 || strcmp(uri, b->cfg->path))
        return reject(wsi, 404, "Not Found", NULL, "no WebSocket endpoint at this path");
    if (query_read(wsi, &q))
        return reject(wsi, 400, "Bad Request", NULL,
                      "malformed query: since=N (0..18446744073709551615), epoch=16 hex "
                      "digits, token=T, each at most once");
    if (!origin_ok(b, wsi))
        return reject(wsi, 403, "Forbidden", NULL, "Origin not allowed");
    if (b->cfg->secret) {
        if ((rc = token_check(b, wsi, &q, c)))
            return reject(wsi, 401, "Unauthorized", "WWW-Authenticate: Bearer\r\n",
                          cn__token_strerror(rc));
        c->authed = 1;
    }
    c->has_since = q.has_since;
    c->since = q.since;
    c->has_epoch = q.has_epoch;
    c->epoch = q.epoch;
    return 0;
}

/* The expiry timer of an authenticated client: once its token has expired, the writable
 * callback closes it; before that (a far exp is armed at most a day ahead), re-armed. */
static void
expiry_cb(lws_sorted_usec_list_t *sul)
{
    client_t *c = lws_container_of(sul, client_t, expiry);
    int64_t left = c->claims.exp - (int64_t)time(NULL);

    if (left <= 0) {
        lws_callback_on_writable(c->wsi);
        return;
    }
    lws_sul_schedule(B->ctx, 0, &c->expiry, expiry_cb,
                     (left > 86400 ? 86400 : left) * LWS_US_PER_SEC);
}

static void
reset_owed(client_t *c, const char *reason, uint64_t oldest, uint64_t next)
{
    c->reset_pending = 1;
    c->reset_reason = reason;
    c->reset_oldest = oldest;
    c->reset_next = next;
    c->next = next;
}

/* A new client: live from now, or from ?since=N; a position it cannot be served from
 * gets a reset first. */
static void
client_start(bcast_t *b, client_t *c)
{
    uint64_t last, oldest;

    load_committed(b);
    last = b->loaded;
    c->welcome_pending = 1;
    c->welcome_last = last;
    c->next = last + 1;
    if (!c->has_since)
        return;
    oldest = oldest_stored(b);
    if (c->has_epoch && c->epoch != b->epoch) {
        /* N counts another event log (a new data dir): none of this one was seen. */
        reset_owed(c, "epoch", oldest, oldest);
    } else if (c->since > last) {
        /* Past the last event (also 2^64-1, which since + 1 would wrap to 0): the
         * client saw events this log does not have. Live from here. */
        reset_owed(c, "ahead", oldest, last + 1);
    } else if (c->since + 1 < oldest) {
        /* Events after N were pruned: say so, then carry on from the oldest kept. */
        reset_owed(c, "pruned", oldest, oldest);
    } else {
        c->next = c->since + 1;
    }
}

static int
events_cb(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len)
{
    bcast_t *b = B;
    client_t *c = user;

    switch (reason) {
    case LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION:
        return client_filter(b, wsi, c);
    case LWS_CALLBACK_ESTABLISHED:
        client_start(b, c);
        c->wsi = wsi; /* for the expiry timer and command answers */
        if (c->authed)
            expiry_cb(&c->expiry);
        c->established = 1;
        atomic_fetch_add(&b->stats->clients, 1);
        lws_callback_on_writable(wsi);
        return 0;
    case LWS_CALLBACK_CLOSED:
        if (c && c->authed)
            lws_sul_cancel(&c->expiry);
        if (c)
            cmd_client_gone(b, c);
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
        if (token_expired(c))
            return -1;
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

static void
accept_resume(lws_sorted_usec_list_t *sul)
{
    bcast_t *b = B;

    (void)sul;
    if (b && b->accept_wsi)
        lws_rx_flow_control(b->accept_wsi, 1);
}

/* At the descriptor limit: accepts one queued connection on the reserve descriptor,
 * tells it 503 and closes it. Returns 0, or -1 when there was nothing to shed with. */
static int
shed_one(bcast_t *b)
{
    static const char busy[] = "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                               "Retry-After: 1\r\nConnection: close\r\n\r\n";
    int fd;

    if (b->reserve_fd < 0)
        return -1;
    close(b->reserve_fd);
    fd = accept4(b->listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd >= 0) {
        (void)send(fd, busy, sizeof(busy) - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
        close(fd);
        b->shed++;
    }
    b->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (b->shed != b->shed_logged && time(NULL) != b->shed_log_at) {
        cn_log_warn("at the open-file limit: %llu WebSocket connection(s) refused with 503 "
                    "(raise ulimit -n)",
                    (unsigned long long)(b->shed - b->shed_logged));
        b->shed_logged = b->shed;
        b->shed_log_at = time(NULL);
    }
    return fd >= 0 ? 0 : -1;
}

static int
accept_cb(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len)
{
    bcast_t *b = B;

    if (reason != LWS_CALLBACK_RAW_RX_FILE)
        return 0;
    /* A bounded batch: the listener is polled level-triggered, what is left comes back
     * at the next turn, after the clients have been served. */
    for (int i = 0; i < ACCEPT_BATCH; i++) {
        int fd = accept4(b->listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if ((errno == EMFILE || errno == ENFILE) && !shed_one(b))
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK) {
                /* Cannot take the connection off the queue (no reserve, ENOBUFS, ...):
                 * stop polling the listener for a while instead of spinning on it. */
                lws_rx_flow_control(wsi, 0);
                lws_sul_schedule(b->ctx, 0, &b->accept_sul, accept_resume, ACCEPT_PAUSE_US);
            }
            break;
        }
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
    {"cnerium-commands", commands_cb, 0, 0, 0, NULL, 0},
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
adopt_fd(bcast_t *b, int fd, const char *protocol, struct lws **out)
{
    lws_sock_file_fd_type u;
    struct lws *wsi;

    u.filefd = fd;
    if (!(wsi = lws_adopt_descriptor_vhost(b->vh, LWS_ADOPT_RAW_FILE_DESC, u, protocol, NULL)))
        return -EIO;
    if (out)
        *out = wsi;
    return 0;
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
    b.reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    B = &b;
    /* A broadcaster that was killed left its clients counted: they are gone with it. */
    atomic_store(&b.stats->clients, 0);
    if (!(b.cache = calloc(cfg->cache_events, sizeof(*b.cache))))
        return -ENOMEM;
    if (cfg->store_url) {
        char err[512];
        if ((rc = cn__store_open_pg(cfg->store_url, &b.store, err, sizeof(err)))) {
            cn_log_error("the broadcaster cannot read the shared store: %s", err);
            goto out;
        }
    } else if ((rc = cn__store_open(cfg->lmdb_dir, cfg->map_size, &b.store))) {
        goto out;
    }
    if ((rc = cn__store_events_epoch(b.store, &b.epoch)))
        goto out;
    cn__ws_epoch_format(b.epoch, b.epoch_hex);

    lws_set_log_level(LLL_ERR | LLL_WARN, lws_log);
    memset(&info, 0, sizeof(info));
    info.port = CONTEXT_PORT_NO_LISTEN_SERVER;
    info.protocols = protocols;
    info.gid = -1;
    info.uid = -1;
    info.options = LWS_SERVER_OPTION_VALIDATE_UTF8;
    /* Room for a token in the query string or the Authorization header. */
    info.max_http_header_data = (unsigned short)(2 * ARGS_MAX);
    retry.secs_since_valid_ping = (uint16_t)cfg->ping_s;
    retry.secs_since_valid_hangup = (uint16_t)(cfg->ping_s + cfg->timeout_s);
    info.retry_and_idle_policy = &retry;
    if (!(b.ctx = lws_create_context(&info))) {
        rc = -EIO;
        goto out;
    }
    b.vh = lws_get_vhost_by_name(b.ctx, "default");
    if (!b.vh || (rc = adopt_fd(&b, cfg->listen_fd, "cnerium-accept", &b.accept_wsi)) ||
        (rc = adopt_fd(&b, cfg->notify_efd, "cnerium-notify", NULL)) ||
        (rc = adopt_fd(&b, cfg->stop_fd, "cnerium-stop", NULL))) {
        rc = rc ? rc : -EIO;
        goto out;
    }
    if (cfg->commands && cfg->command_target) {
        cn_ws_pool_config_t pc = {
            .target = *cfg->command_target,
            .threads = CMD_THREADS,
            .capacity = CMD_CAPACITY,
            .connect_ms = CMD_CONNECT_MS,
            .timeout_ms = cfg->command_timeout_ms,
            .headroom = CMD_HEADROOM,
        };
        int fd;
        /* lws owns what it adopts: it gets a duplicate, the pool keeps its own. */
        if ((rc = cn__ws_pool_start(&pc, &b.pool)) ||
            (fd = fcntl(cn__ws_pool_fd(b.pool), F_DUPFD_CLOEXEC, 0)) < 0 ||
            (rc = adopt_fd(&b, fd, "cnerium-commands", NULL))) {
            rc = rc ? rc : -errno;
            goto out;
        }
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
        lws_context_destroy(b.ctx); /* closes every client, cancels the accept timer */
    cn__ws_pool_stop(b.pool); /* cancels requests in progress; their answers are dropped */
    free(b.slots);
    if (b.reserve_fd >= 0)
        close(b.reserve_fd);
    atomic_store(&b.stats->clients, 0);
    cn__store_close(b.store);
    for (unsigned i = 0; b.cache && i < cfg->cache_events; i++)
        frame_free(&b.cache[i]);
    free(b.cache);
    B = NULL;
    return rc;
}
