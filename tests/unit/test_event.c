/*
 * tests/unit/test_event.c - realtime events below the network: cn_emit / cn_emit_to
 * (validation, limits, order, the payload consumed on every path), the encoded event
 * list, the stored event form, the client frame, events in the store (gapless numbering
 * across items, transactions, skipped records and the sync put path; reading, bounds,
 * pruning by count and by age) and the persist record codec that carries events to the
 * persister. Every store test opens its own store in a fresh subdirectory of the suite's
 * temp dir. Decoders are fed exactly sized heap copies so ASan sees any over-read.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>

#include "cnerium/error.h"
#include "cnerium/json.h"
#include "cnerium/realtime.h"
#include "http/request_internal.h"
#include "realtime/event.h"
#include "support/utf8.h"
#include "store/persist.h"
#include "store/record.h"
#include "store/store.h"
#include "support/clock.h"
#include "unit.h"

#define MAP_SIZE ((size_t)64 << 20)
#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

static char tmpdir[256];
static int store_seq;

/* ---- helpers ---- */

/* One event to build a list from by hand (no request involved). */
typedef struct ev_spec {
    const char *type;
    const char *room;    /* NULL: every client */
    const char *payload; /* JSON text; NULL: "null" */
} ev_spec_t;

static const char *
spec_payload(const ev_spec_t *s)
{
    return s->payload ? s->payload : "null";
}

static cn_event_t *
list_build(const ev_spec_t *specs, size_t n)
{
    cn_event_t *head = NULL, **tail = &head;

    for (size_t i = 0; i < n; i++) {
        cn_event_t *e = calloc(1, sizeof(*e));
        CU_ASSERT_PTR_NOT_NULL_FATAL(e);
        e->type = strdup(specs[i].type);
        e->room = specs[i].room ? strdup(specs[i].room) : NULL;
        e->payload = strdup(spec_payload(&specs[i]));
        CU_ASSERT_FATAL(e->type && e->payload && (!specs[i].room || e->room));
        e->payload_len = strlen(e->payload);
        *tail = e;
        tail = &e->next;
    }
    return head;
}

/* Encodes list into an exactly sized heap buffer (caller frees). */
static uint8_t *
list_encode(const cn_event_t *list, size_t *len)
{
    size_t need = cn__events_encoded_size(list), written = 0;
    uint8_t *buf = malloc(need);

    CU_ASSERT_PTR_NOT_NULL_FATAL(buf);
    CU_ASSERT_EQUAL_FATAL(cn__events_encode(list, buf, need, &written), 0);
    CU_ASSERT_EQUAL_FATAL(written, need);
    *len = written;
    return buf;
}

static uint8_t *
specs_encode(const ev_spec_t *specs, size_t n, size_t *len)
{
    cn_event_t *list = list_build(specs, n);
    uint8_t *buf = list_encode(list, len);

    cn__events_free(list);
    return buf;
}

/* A heap copy of the first n bytes of p, exactly n bytes long (1 when n is 0). */
static uint8_t *
dup_prefix(const uint8_t *p, size_t n)
{
    uint8_t *c = malloc(n ? n : 1);

    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    if (n)
        memcpy(c, p, n);
    return c;
}

/* Decodes a whole list as the store does: count events, then exactly the end. Returns the
 * count (views[] filled up to maxv), or -1 when the bytes are not a well-formed list. */
static long
decode_all(const uint8_t *p, size_t len, cn_event_view_t *views, size_t maxv)
{
    const uint8_t *cur = NULL, *end = p + len;
    long n = cn__events_begin(p, len, &cur);

    if (n < 0)
        return -1;
    for (long i = 0; i < n; i++) {
        cn_event_view_t ev;
        if (cn__events_next(&cur, end, &ev))
            return -1;
        if ((size_t)i < maxv)
            views[i] = ev;
    }
    return cur == end ? n : -1;
}

static void
expect_view(const cn_event_view_t *v, const ev_spec_t *s)
{
    const char *payload = spec_payload(s);

    CU_ASSERT_EQUAL_FATAL(v->type_len, strlen(s->type));
    CU_ASSERT_EQUAL(memcmp(v->type, s->type, v->type_len), 0);
    if (s->room) {
        CU_ASSERT_EQUAL_FATAL(v->room_len, strlen(s->room));
        CU_ASSERT_PTR_NOT_NULL_FATAL(v->room);
        CU_ASSERT_EQUAL(memcmp(v->room, s->room, v->room_len), 0);
    } else {
        CU_ASSERT_EQUAL(v->room_len, 0);
        CU_ASSERT_PTR_NULL(v->room);
    }
    CU_ASSERT_EQUAL_FATAL(v->payload_len, strlen(payload));
    CU_ASSERT_EQUAL(memcmp(v->payload, payload, v->payload_len), 0);
}

static int
count_events(const cn_request_t *req)
{
    int n = 0;

    for (const cn_event_t *e = req->events; e; e = e->next)
        n++;
    return n;
}

static void
request_open(cn_request_t *req)
{
    CU_ASSERT_EQUAL_FATAL(cn__request_init(req, "POST", "/orders"), 0);
}

/* A payload with something inside, so a leak of it shows in LeakSanitizer's report. */
static cJSON *
some_payload(int i)
{
    return cn_json_object("i", cJSON_CreateNumber(i), "name", cJSON_CreateString("payload"),
                          NULL);
}

static void
sleep_ms(long ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};

    while (nanosleep(&ts, &ts) && errno == EINTR)
        ;
}

/* ---- store helpers ---- */

static cn_store_t *
open_fresh(char *dir, size_t cap)
{
    cn_store_t *s = NULL;

    snprintf(dir, cap, "%s/store-%d/data", tmpdir, store_seq++);
    CU_ASSERT_EQUAL_FATAL(cn__store_open(dir, MAP_SIZE, &s), 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    return s;
}

static cn_record_t
make_record(uint16_t status, const char *body)
{
    cn_record_t r;

    memset(&r, 0, sizeof(r));
    r.status = status;
    r.created_ms = 100;
    r.expires_ms = UINT64_MAX;
    for (size_t i = 0; i < CN_SHA256_LEN; i++)
        r.fingerprint[i] = (uint8_t)(i * 3 + status);
    r.content_type = "application/json";
    r.content_type_len = 16;
    r.body = body;
    r.body_len = (uint32_t)strlen(body);
    return r;
}

/* The encoded bytes of a record (caller frees). */
static uint8_t *
record_bytes(uint16_t status, const char *body, size_t *len)
{
    cn_record_t r = make_record(status, body);
    size_t need = cn__record_encoded_size(&r);
    uint8_t *buf = malloc(need);

    CU_ASSERT_PTR_NOT_NULL_FATAL(buf);
    CU_ASSERT_EQUAL_FATAL(cn__record_encode(&r, buf, need, len), 0);
    return buf;
}

static size_t
record_count(cn_store_t *s)
{
    size_t n = 99999;

    CU_ASSERT_EQUAL(cn__store_count(s, &n), 0);
    return n;
}

static int
record_present(cn_store_t *s, const char *key)
{
    cn_record_t rec;
    void *buf = NULL;
    int rc = cn__store_get(s, key, strlen(key), 0, &rec, &buf);

    free(buf);
    return rc == 0;
}

/* One stored event as read back. */
typedef struct got_event {
    uint64_t seq;
    char type[CN_EVENT_TYPE_MAX + 1];
    char room[CN_EVENT_ROOM_MAX + 1];
    int has_room;
    char payload[256];
    uint64_t created_ms;
} got_event_t;

typedef struct collector {
    got_event_t *ev;
    size_t n, cap;
    size_t calls;
    size_t stop_after; /* 0: never stop */
    int bad;           /* stored bytes that did not decode or did not fit */
} collector_t;

static int
collect_cb(uint64_t seq, const uint8_t *p, size_t len, void *arg)
{
    collector_t *c = arg;
    cn_event_view_t v;

    c->calls++;
    if (cn__event_stored_decode(p, len, &v) || v.type_len > CN_EVENT_TYPE_MAX ||
        v.room_len > CN_EVENT_ROOM_MAX || v.payload_len >= sizeof(c->ev[0].payload)) {
        c->bad++;
    } else if (c->n < c->cap) {
        got_event_t *g = &c->ev[c->n++];
        memset(g, 0, sizeof(*g));
        g->seq = seq;
        memcpy(g->type, v.type, v.type_len);
        if (v.room_len)
            memcpy(g->room, v.room, v.room_len);
        g->has_room = v.room != NULL;
        memcpy(g->payload, v.payload, v.payload_len);
        g->created_ms = v.created_ms;
    } else {
        c->bad++;
    }
    return c->stop_after && c->calls >= c->stop_after;
}

static void
collector_init(collector_t *c, size_t cap)
{
    memset(c, 0, sizeof(*c));
    c->ev = calloc(cap, sizeof(*c->ev));
    CU_ASSERT_PTR_NOT_NULL_FATAL(c->ev);
    c->cap = cap;
}

static void
collector_reset(collector_t *c)
{
    c->n = 0;
    c->calls = 0;
    c->stop_after = 0;
    c->bad = 0;
}

static void
collector_free(collector_t *c)
{
    free(c->ev);
    c->ev = NULL;
}

/* Reads events from `from` (at most max) into c, after resetting it. */
static void
read_events(cn_store_t *s, uint64_t from, size_t max, collector_t *c)
{
    size_t stop = c->stop_after;

    collector_reset(c);
    c->stop_after = stop;
    CU_ASSERT_EQUAL(cn__store_events_read(s, from, max, collect_cb, c), 0);
    CU_ASSERT_EQUAL(c->bad, 0);
}

static void
expect_got(const got_event_t *g, uint64_t seq, const ev_spec_t *s)
{
    CU_ASSERT_EQUAL(g->seq, seq);
    CU_ASSERT_STRING_EQUAL(g->type, s->type);
    CU_ASSERT_EQUAL(g->has_room, s->room != NULL);
    if (s->room)
        CU_ASSERT_STRING_EQUAL(g->room, s->room);
    CU_ASSERT_STRING_EQUAL(g->payload, spec_payload(s));
}

static void
expect_bounds(cn_store_t *s, uint64_t oldest, uint64_t newest)
{
    uint64_t o = 12345, n = 12345;

    CU_ASSERT_EQUAL_FATAL(cn__store_events_bounds(s, &o, &n), 0);
    CU_ASSERT_EQUAL(o, oldest);
    CU_ASSERT_EQUAL(n, newest);
}

/* Applies one events-only item carrying n events named <prefix><first + i>. */
static void
apply_named(cn_store_t *s, cn_store_meta_t *meta, const char *prefix, int first, int n,
            const char *payload)
{
    ev_spec_t *specs = calloc((size_t)n, sizeof(*specs));
    char (*names)[32] = calloc((size_t)n, sizeof(*names));
    cn_store_raw_put_t item = {.key = NULL};
    size_t len;
    uint8_t *list;

    CU_ASSERT_FATAL(specs && names);
    for (int i = 0; i < n; i++) {
        snprintf(names[i], sizeof(names[i]), "%s%d", prefix, first + i);
        specs[i] = (ev_spec_t){.type = names[i], .room = NULL, .payload = payload};
    }
    list = specs_encode(specs, (size_t)n, &len);
    item.events = list;
    item.events_len = len;
    item.status = 4242;
    CU_ASSERT_EQUAL_FATAL(cn__store_apply(s, &item, 1, meta), 0);
    CU_ASSERT_EQUAL(item.status, 0);
    free(list);
    free(names);
    free(specs);
}

/* ---- cn_emit / cn_emit_to ---- */

static void
test_emit_order(void)
{
    cn_request_t req;
    static const ev_spec_t want[] = {
        {"order.created", NULL, "{\"id\":\"o1\",\"n\":[1,2]}"},
        {"order.paid", "orders:o1", "3"},
        {"ping", NULL, NULL},
        {"room.null", "lobby", NULL},
        {"a b ~!", "r \"q\" \\", "\"s\""},
    };
    cn_event_view_t views[8];
    const cn_event_t *e;
    uint8_t *enc;
    size_t len, i = 0;

    request_open(&req);
    CU_ASSERT_PTR_NULL(req.events);
    CU_ASSERT_EQUAL(cn_emit(&req, "order.created",
                            cn_json_object("id", cJSON_CreateString("o1"), "n",
                                           cJSON_CreateIntArray((const int[]){1, 2}, 2), NULL)),
                    0);
    CU_ASSERT_EQUAL(cn_emit_to(&req, "orders:o1", "order.paid", cJSON_CreateNumber(3)), 0);
    CU_ASSERT_EQUAL(cn_emit(&req, "ping", NULL), 0);
    CU_ASSERT_EQUAL(cn_emit_to(&req, "lobby", "room.null", NULL), 0);
    CU_ASSERT_EQUAL(cn_emit_to(&req, "r \"q\" \\", "a b ~!", cJSON_CreateString("s")), 0);
    CU_ASSERT_EQUAL_FATAL(count_events(&req), (int)ARRAY_LEN(want));

    /* Buffered in emission order, each owning its strings. */
    for (e = req.events; e; e = e->next, i++) {
        CU_ASSERT_STRING_EQUAL(e->type, want[i].type);
        if (want[i].room) {
            CU_ASSERT_PTR_NOT_NULL_FATAL(e->room);
            CU_ASSERT_STRING_EQUAL(e->room, want[i].room);
        } else {
            CU_ASSERT_PTR_NULL(e->room);
        }
        CU_ASSERT_STRING_EQUAL(e->payload, spec_payload(&want[i]));
        CU_ASSERT_EQUAL(e->payload_len, strlen(spec_payload(&want[i])));
    }
    CU_ASSERT_PTR_EQUAL(req.events_tail, &req.events->next->next->next->next->next);

    /* The encoded list carries them in the same order. */
    enc = list_encode(req.events, &len);
    CU_ASSERT_EQUAL_FATAL(decode_all(enc, len, views, ARRAY_LEN(views)), (long)ARRAY_LEN(want));
    for (i = 0; i < ARRAY_LEN(want); i++)
        expect_view(&views[i], &want[i]);
    free(enc);
    cn__request_destroy(&req);
}

static void
test_emit_invalid_names(void)
{
    cn_request_t req;
    char name128[CN_EVENT_TYPE_MAX + 1], name129[CN_EVENT_TYPE_MAX + 2];
    static const char *const bad[] = {"",        "tab\there", "nl\n",  "\x01",    "del\x7f",
                                      "caf\xc3\xa9", "\x1f",      "\x80x", "sp\r"};
    int valid = 0;

    memset(name128, 'n', sizeof(name128) - 1);
    name128[sizeof(name128) - 1] = '\0';
    memset(name129, 'n', sizeof(name129) - 1);
    name129[sizeof(name129) - 1] = '\0';
    request_open(&req);

    /* Bad types and rooms: -EINVAL, nothing buffered, the payload freed (LSan). */
    CU_ASSERT_EQUAL(cn_emit(&req, NULL, some_payload(1)), -EINVAL);
    CU_ASSERT_EQUAL(cn_emit(NULL, "t", some_payload(2)), -EINVAL);
    CU_ASSERT_EQUAL(cn_emit_to(NULL, "r", "t", some_payload(2)), -EINVAL);
    CU_ASSERT_EQUAL(cn_emit(&req, name129, some_payload(3)), -EINVAL);
    CU_ASSERT_EQUAL(cn_emit_to(&req, NULL, "t", some_payload(4)), -EINVAL);
    CU_ASSERT_EQUAL(cn_emit_to(&req, name129, "t", some_payload(5)), -EINVAL);
    CU_ASSERT_EQUAL(cn_emit_to(&req, "room", NULL, some_payload(6)), -EINVAL);
    CU_ASSERT_EQUAL(cn_emit_to(&req, "room", name129, some_payload(6)), -EINVAL);
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        CU_ASSERT_EQUAL(cn_emit(&req, bad[i], some_payload(7)), -EINVAL);
        CU_ASSERT_EQUAL(cn_emit_to(&req, bad[i], "t", some_payload(8)), -EINVAL);
        CU_ASSERT_EQUAL(cn_emit_to(&req, "room", bad[i], some_payload(9)), -EINVAL);
        CU_ASSERT_EQUAL(cn_emit(&req, bad[i], NULL), -EINVAL);
    }
    CU_ASSERT_EQUAL(count_events(&req), 0);
    CU_ASSERT_PTR_NULL(req.events);

    /* The edges that are allowed: 128 bytes, space and '~' (0x20, 0x7e), one byte. */
    CU_ASSERT_EQUAL(cn_emit(&req, name128, some_payload(10)), 0);
    valid++;
    CU_ASSERT_EQUAL(cn_emit_to(&req, name128, name128, some_payload(11)), 0);
    valid++;
    CU_ASSERT_EQUAL(cn_emit_to(&req, " ", "~", some_payload(12)), 0);
    valid++;
    CU_ASSERT_EQUAL(cn_emit(&req, "x", NULL), 0);
    valid++;
    CU_ASSERT_EQUAL(count_events(&req), valid);
    /* A bad emit after good ones leaves the buffered ones alone. */
    CU_ASSERT_EQUAL(cn_emit(&req, "", some_payload(13)), -EINVAL);
    CU_ASSERT_EQUAL(count_events(&req), valid);
    CU_ASSERT_STRING_EQUAL(req.events->type, name128);
    CU_ASSERT_STRING_EQUAL(req.events->next->room, name128);
    CU_ASSERT_STRING_EQUAL(req.events->next->next->room, " ");
    CU_ASSERT_STRING_EQUAL(req.events->next->next->type, "~");
    cn__request_destroy(&req);
}

static void
test_emit_count_limit(void)
{
    cn_request_t req;
    int i = 0;

    request_open(&req);
    for (i = 0; i < CN_EVENTS_MAX; i++) {
        char type[16];
        snprintf(type, sizeof(type), "e%d", i);
        int rc = i % 2 ? cn_emit_to(&req, "r", type, some_payload(i))
                       : cn_emit(&req, type, some_payload(i));
        CU_ASSERT_EQUAL(rc, 0);
    }
    CU_ASSERT_EQUAL(count_events(&req), CN_EVENTS_MAX);
    /* The 65th, either way, with or without a payload: CN_ETOOBIG, payload freed. */
    CU_ASSERT_EQUAL(cn_emit(&req, "one.more", some_payload(99)), CN_ETOOBIG);
    CU_ASSERT_EQUAL(cn_emit_to(&req, "r", "one.more", some_payload(99)), CN_ETOOBIG);
    CU_ASSERT_EQUAL(cn_emit(&req, "one.more", NULL), CN_ETOOBIG);
    CU_ASSERT_EQUAL(count_events(&req), CN_EVENTS_MAX);
    /* Validation still comes first. */
    CU_ASSERT_EQUAL(cn_emit(&req, "", some_payload(98)), -EINVAL);
    i = 0;
    for (const cn_event_t *e = req.events; e; e = e->next, i++) {
        char type[16];
        snprintf(type, sizeof(type), "e%d", i);
        CU_ASSERT_STRING_EQUAL(e->type, type);
        CU_ASSERT_EQUAL(e->room != NULL, i % 2);
    }
    cn__request_destroy(&req);
}

static cJSON *
string_of(size_t n)
{
    char *s = malloc(n + 1);
    cJSON *j;

    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    memset(s, 'x', n);
    s[n] = '\0';
    j = cJSON_CreateString(s);
    free(s);
    CU_ASSERT_PTR_NOT_NULL_FATAL(j);
    return j;
}

static void
test_emit_payload_limit(void)
{
    cn_request_t req;

    request_open(&req);
    /* A JSON string of n chars prints as n + 2 bytes. */
    CU_ASSERT_EQUAL(cn_emit(&req, "big", string_of(CN_EVENT_PAYLOAD_MAX - 1)), CN_ETOOBIG);
    CU_ASSERT_EQUAL(cn_emit_to(&req, "r", "big", string_of(CN_EVENT_PAYLOAD_MAX)), CN_ETOOBIG);
    CU_ASSERT_EQUAL(count_events(&req), 0);
    CU_ASSERT_EQUAL(cn_emit(&req, "big", string_of(CN_EVENT_PAYLOAD_MAX - 2)), 0);
    CU_ASSERT_EQUAL_FATAL(count_events(&req), 1);
    CU_ASSERT_EQUAL(req.events->payload_len, CN_EVENT_PAYLOAD_MAX);
    CU_ASSERT_EQUAL(strlen(req.events->payload), CN_EVENT_PAYLOAD_MAX);
    CU_ASSERT_EQUAL(req.events->payload[0], '"');
    /* A too-big payload does not take one of the 64 slots. */
    for (int i = 1; i < CN_EVENTS_MAX; i++) {
        if (i == 10)
            CU_ASSERT_EQUAL(cn_emit(&req, "big", string_of(CN_EVENT_PAYLOAD_MAX)), CN_ETOOBIG);
        CU_ASSERT_EQUAL(cn_emit(&req, "small", NULL), 0);
    }
    CU_ASSERT_EQUAL(count_events(&req), CN_EVENTS_MAX);
    cn__request_destroy(&req);
}

static void
test_emit_null_payload(void)
{
    cn_request_t req;

    request_open(&req);
    CU_ASSERT_EQUAL_FATAL(cn_emit(&req, "n", NULL), 0);
    CU_ASSERT_EQUAL_FATAL(cn_emit_to(&req, "room", "n", cJSON_CreateNull()), 0);
    CU_ASSERT_STRING_EQUAL(req.events->payload, "null");
    CU_ASSERT_EQUAL(req.events->payload_len, 4);
    CU_ASSERT_STRING_EQUAL(req.events->next->payload, "null");
    CU_ASSERT_EQUAL(req.events->next->payload_len, 4);
    cn__request_destroy(&req);
    /* A destroyed (zeroed) request can be destroyed again. */
    cn__request_destroy(&req);
    cn__events_free(NULL);
}

/* ---- the encoded list ---- */

static const ev_spec_t one_plain[] = {{"t", NULL, "{\"a\":1}"}};
static const ev_spec_t one_room[] = {{"order.paid", "orders:7", "[1,\"two\",null]"}};
static const ev_spec_t several[] = {
    {"a", NULL, NULL},
    {"b", "room-b", "1"},
    {"type.with.dots", NULL, "{\"k\":\"v\",\"n\":{\"m\":[]}}"},
    {"d", "r", "\"\\u0000 escaped in JSON\""},
    {"e", NULL, "true"},
};

static void
check_roundtrip(const ev_spec_t *specs, size_t n)
{
    cn_event_t *list = list_build(specs, n);
    cn_event_view_t views[80];
    size_t len, want = 2;
    uint8_t *enc = list_encode(list, &len);

    for (size_t i = 0; i < n; i++)
        want += 8 + strlen(specs[i].type) + (specs[i].room ? strlen(specs[i].room) : 0) +
                strlen(spec_payload(&specs[i]));
    CU_ASSERT_EQUAL(len, want);
    CU_ASSERT_EQUAL(cn__events_encoded_size(list), want);
    CU_ASSERT_EQUAL_FATAL(decode_all(enc, len, views, ARRAY_LEN(views)), (long)n);
    for (size_t i = 0; i < n && i < ARRAY_LEN(views); i++) {
        expect_view(&views[i], &specs[i]);
        /* Views point into the encoded bytes. */
        CU_ASSERT(views[i].type > (const char *)enc && views[i].type < (const char *)enc + len);
    }
    free(enc);
    cn__events_free(list);
}

static void
test_list_roundtrip(void)
{
    ev_spec_t many[64];
    char names[64][16], rooms[64][16], payloads[64][64];
    uint8_t *enc;
    size_t len;

    /* Empty: just the count. */
    CU_ASSERT_EQUAL(cn__events_encoded_size(NULL), 2);
    enc = specs_encode(NULL, 0, &len);
    CU_ASSERT_EQUAL_FATAL(len, 2);
    CU_ASSERT_EQUAL(enc[0], 0);
    CU_ASSERT_EQUAL(enc[1], 0);
    CU_ASSERT_EQUAL(decode_all(enc, len, NULL, 0), 0);
    free(enc);

    check_roundtrip(one_plain, 1);
    check_roundtrip(one_room, 1);
    check_roundtrip(several, ARRAY_LEN(several));
    for (int i = 0; i < 64; i++) {
        snprintf(names[i], sizeof(names[i]), "ev.%d", i);
        snprintf(rooms[i], sizeof(rooms[i]), "room%d", i);
        snprintf(payloads[i], sizeof(payloads[i]), "{\"i\":%d,\"s\":\"%*s\"}", i, i % 40, "");
        many[i] = (ev_spec_t){.type = names[i],
                              .room = i % 3 ? rooms[i] : NULL,
                              .payload = i % 7 ? payloads[i] : NULL};
    }
    check_roundtrip(many, 64);
}

static void
test_list_wire_format(void)
{
    static const ev_spec_t specs[] = {{"ty", "r", "12"}, {"t", NULL, "null"}};
    static const uint8_t want[] = {2,   0, /* count */
                                   2,   0, 1, 0, 2, 0, 0, 0, 't', 'y', 'r', '1', '2',
                                   1,   0, 0, 0, 4, 0, 0, 0, 't', 'n', 'u', 'l', 'l'};
    size_t len;
    uint8_t *enc = specs_encode(specs, 2, &len);

    CU_ASSERT_EQUAL_FATAL(len, sizeof(want));
    CU_ASSERT_EQUAL(memcmp(enc, want, len), 0);
    free(enc);
}

static void
check_truncations(const ev_spec_t *specs, size_t n)
{
    size_t len;
    uint8_t *enc = specs_encode(specs, n, &len), *longer;

    for (size_t cut = 0; cut < len; cut++) {
        uint8_t *c = dup_prefix(enc, cut);
        long got = decode_all(c, cut, NULL, 0);
        if (got != -1)
            fprintf(stderr, "\n  list of %zu event(s) cut to %zu of %zu bytes decoded as %ld\n",
                    n, cut, len, got);
        CU_ASSERT_EQUAL(got, -1);
        free(c);
    }
    /* A trailing byte is not a list either. */
    longer = malloc(len + 1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(longer);
    memcpy(longer, enc, len);
    longer[len] = 0;
    CU_ASSERT_EQUAL(decode_all(longer, len + 1, NULL, 0), -1);
    free(longer);
    free(enc);
}

static void
test_list_truncations(void)
{
    uint8_t *enc;
    size_t len;
    const uint8_t *cur;
    cn_event_view_t v;

    check_truncations(NULL, 0);
    check_truncations(one_plain, 1);
    check_truncations(one_room, 1);
    check_truncations(several, ARRAY_LEN(several));

    /* begin refuses fewer than 2 bytes. */
    CU_ASSERT_EQUAL(cn__events_begin((const uint8_t *)"\0", 1, &cur), -1);
    CU_ASSERT_EQUAL(cn__events_begin((const uint8_t *)"", 0, &cur), -1);

    /* A count larger than the events present. */
    enc = specs_encode(several, ARRAY_LEN(several), &len);
    enc[0] = (uint8_t)(ARRAY_LEN(several) + 1);
    CU_ASSERT_EQUAL(decode_all(enc, len, NULL, 0), -1);
    /* A count smaller: bytes left over. */
    enc[0] = (uint8_t)(ARRAY_LEN(several) - 1);
    CU_ASSERT_EQUAL(decode_all(enc, len, NULL, 0), -1);
    enc[0] = (uint8_t)ARRAY_LEN(several);
    CU_ASSERT_EQUAL(decode_all(enc, len, NULL, 0), (long)ARRAY_LEN(several));
    /* An empty type is corrupt. */
    enc[2] = 0;
    enc[3] = 0;
    CU_ASSERT_EQUAL(cn__events_begin(enc, len, &cur), (long)ARRAY_LEN(several));
    CU_ASSERT_EQUAL(cn__events_next(&cur, enc + len, &v), CN_ECORRUPT);
    /* A payload length running past the end (and a huge one). */
    free(enc);
    enc = specs_encode(one_plain, 1, &len);
    enc[6] = (uint8_t)(enc[6] + 1);
    CU_ASSERT_EQUAL(decode_all(enc, len, NULL, 0), -1);
    enc[6] = 0xff;
    enc[7] = 0xff;
    enc[8] = 0xff;
    enc[9] = 0xff;
    CU_ASSERT_EQUAL(decode_all(enc, len, NULL, 0), -1);
    free(enc);
}

static void
check_encode_small(const ev_spec_t *specs, size_t n)
{
    cn_event_t *list = list_build(specs, n);
    size_t need = cn__events_encoded_size(list);

    for (size_t cap = 0; cap < need; cap++) {
        uint8_t *out = malloc(cap ? cap : 1);
        size_t written = 777;
        CU_ASSERT_PTR_NOT_NULL_FATAL(out);
        CU_ASSERT_EQUAL(cn__events_encode(list, out, cap, &written), CN_ETOOBIG);
        CU_ASSERT_EQUAL(written, 777);
        free(out);
    }
    {
        uint8_t *out = malloc(need);
        size_t written = 777;
        CU_ASSERT_PTR_NOT_NULL_FATAL(out);
        CU_ASSERT_EQUAL(cn__events_encode(list, out, need, &written), 0);
        CU_ASSERT_EQUAL(written, need);
        free(out);
    }
    cn__events_free(list);
}

static void
test_list_encode_too_small(void)
{
    check_encode_small(NULL, 0);
    check_encode_small(one_plain, 1);
    check_encode_small(one_room, 1);
    check_encode_small(several, ARRAY_LEN(several));
}

/* ---- the stored form ---- */

static void
check_stored(const char *type, const char *room, const char *payload, uint64_t created)
{
    cn_event_view_t in = {.type = type,
                          .type_len = strlen(type),
                          .room = room,
                          .room_len = room ? strlen(room) : 0,
                          .payload = payload,
                          .payload_len = strlen(payload),
                          .created_ms = created};
    cn_event_view_t out;
    size_t size = cn__event_stored_size(&in);
    uint8_t *buf = malloc(size), *longer;
    ev_spec_t spec = {.type = type, .room = room, .payload = payload};
    size_t llen;
    uint8_t *list = specs_encode(&spec, 1, &llen);

    CU_ASSERT_EQUAL_FATAL(size, 16 + in.type_len + in.room_len + in.payload_len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(buf);
    cn__event_stored_encode(&in, buf);
    /* 8 bytes of creation time, little-endian, then the event as a list carries it. */
    for (int i = 0; i < 8; i++)
        CU_ASSERT_EQUAL(buf[i], (uint8_t)(created >> (8 * i)));
    CU_ASSERT_EQUAL_FATAL(llen, size - 8 + 2);
    CU_ASSERT_EQUAL(memcmp(buf + 8, list + 2, size - 8), 0);

    memset(&out, 0x5a, sizeof(out));
    CU_ASSERT_EQUAL_FATAL(cn__event_stored_decode(buf, size, &out), 0);
    CU_ASSERT_EQUAL(out.created_ms, created);
    expect_view(&out, &spec);
    CU_ASSERT_PTR_EQUAL(out.type, (const char *)buf + 16);

    for (size_t cut = 0; cut < size; cut++) {
        uint8_t *c = dup_prefix(buf, cut);
        CU_ASSERT_EQUAL(cn__event_stored_decode(c, cut, &out), CN_ECORRUPT);
        free(c);
    }
    longer = malloc(size + 1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(longer);
    memcpy(longer, buf, size);
    longer[size] = '}';
    CU_ASSERT_EQUAL(cn__event_stored_decode(longer, size + 1, &out), CN_ECORRUPT);
    free(longer);
    free(list);
    free(buf);
}

static void
test_stored_form(void)
{
    uint8_t buf[32];
    cn_event_view_t v;

    check_stored("order.created", NULL, "{\"id\":1}", 0x0102030405060708ull);
    check_stored("order.paid", "orders:1", "null", 0);
    check_stored("x", "r", "[]", UINT64_MAX);
    check_stored("t", NULL, "1", 1700000000000ull);

    /* An empty type is corrupt in the stored form too. */
    memset(buf, 0, sizeof(buf));
    buf[12] = 1; /* payload length 1, type length 0 */
    buf[16] = '1';
    CU_ASSERT_EQUAL(cn__event_stored_decode(buf, 17, &v), CN_ECORRUPT);
}

/* ---- the client frame ---- */

static cn_event_view_t
view_of(const char *type, const char *room, const char *payload)
{
    return (cn_event_view_t){.type = type,
                             .type_len = strlen(type),
                             .room = room,
                             .room_len = room ? strlen(room) : 0,
                             .payload = payload,
                             .payload_len = strlen(payload),
                             .created_ms = 0};
}

static void
expect_frame(const cn_event_view_t *v, uint64_t seq, const char *want)
{
    size_t len = 0;
    uint8_t *f = cn__event_frame(v, seq, 0, &len);

    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    CU_ASSERT_EQUAL(len, strlen(want));
    if (len != strlen(want) || memcmp(f, want, len))
        fprintf(stderr, "\n  frame: got %zu bytes [%.*s], want [%s]\n", len, (int)len,
                (const char *)f, want);
    CU_ASSERT(len == strlen(want) && memcmp(f, want, len) == 0);
    free(f);
}

static void
test_frame_simple(void)
{
    cn_event_view_t v = view_of("t", NULL, "{\"a\":1}");
    cn_event_view_t r = view_of("t", "r", "{\"a\":1}");
    cn_event_view_t n = view_of("order.created", NULL, "null");

    expect_frame(&v, 7, "{\"type\":\"t\",\"payload\":{\"a\":1},\"seq\":7}");
    expect_frame(&r, 7, "{\"type\":\"t\",\"payload\":{\"a\":1},\"seq\":7,\"room\":\"r\"}");
    expect_frame(&n, 0, "{\"type\":\"order.created\",\"payload\":null,\"seq\":0}");
    expect_frame(&v, 9999999999999999ull,
                 "{\"type\":\"t\",\"payload\":{\"a\":1},\"seq\":9999999999999999}");
    /* A room given with length 0 is no room. */
    r.room_len = 0;
    expect_frame(&r, 1, "{\"type\":\"t\",\"payload\":{\"a\":1},\"seq\":1}");
}

/* seq is a uint64_t (event.c sizes the frame for "a 20-digit seq"); 17 digits and up
 * must come out whole. */
static void
test_frame_large_seq(void)
{
    cn_event_view_t v = view_of("t", NULL, "1");

    /* ",\"seq\":" plus 17 digits is 24 characters, one more than event.c's num[24] holds:
     * snprintf truncates and the frame gets a NUL instead of the last digit. From 18
     * digits on, memcpy(o, num, n) also reads past num (an ASan stack-buffer-overflow,
     * which is why this test stops at 17 digits). */
    expect_frame(&v, 12345678901234567ull,
                 "{\"type\":\"t\",\"payload\":1,\"seq\":12345678901234567}");
}

/* Parses a frame (len bytes, not NUL-terminated) and checks every field. */
static void
expect_frame_json(const uint8_t *f, size_t len, const char *type, const char *room,
                  const char *payload, double seq)
{
    const char *end = NULL;
    cJSON *j = cJSON_ParseWithLengthOpts((const char *)f, len, &end, 0);
    cJSON *want_payload = cJSON_Parse(payload);
    const cJSON *t, *r, *p, *s;

    CU_ASSERT_PTR_NOT_NULL_FATAL(j);
    CU_ASSERT_PTR_EQUAL(end, (const char *)f + len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(want_payload);
    t = cJSON_GetObjectItemCaseSensitive(j, "type");
    r = cJSON_GetObjectItemCaseSensitive(j, "room");
    p = cJSON_GetObjectItemCaseSensitive(j, "payload");
    s = cJSON_GetObjectItemCaseSensitive(j, "seq");
    CU_ASSERT_FATAL(cJSON_IsString(t));
    CU_ASSERT_STRING_EQUAL(t->valuestring, type);
    if (room) {
        CU_ASSERT_FATAL(cJSON_IsString(r));
        CU_ASSERT_STRING_EQUAL(r->valuestring, room);
    } else {
        CU_ASSERT_PTR_NULL(r);
    }
    CU_ASSERT_FATAL(p != NULL);
    CU_ASSERT(cJSON_Compare(p, want_payload, 1));
    CU_ASSERT_FATAL(cJSON_IsNumber(s));
    CU_ASSERT_EQUAL(s->valuedouble, seq);
    CU_ASSERT_EQUAL(cJSON_GetArraySize(j), room ? 4 : 3);
    /* JSON forbids raw control characters in strings: none may be left. */
    {
        size_t raw = 0;
        for (size_t i = 0; i < len; i++)
            raw += f[i] < 0x20;
        CU_ASSERT_EQUAL(raw, 0);
    }
    cJSON_Delete(want_payload);
    cJSON_Delete(j);
}

static void
test_frame_escaping(void)
{
    static const char type[] = "q\"b\\s\x01\n\t\x1f~ok/";
    static const char room[] = "room \"A\" \\ \r\x7f";
    static const char payload[] = "{\"x\":[1,2,{\"y\":\"z \\\" \\\\\"}],\"e\":\"\\u0001\"}";
    cn_event_view_t v = view_of(type, room, payload);
    cn_event_view_t nr = view_of(type, NULL, payload);
    size_t len = 0;
    uint8_t *f = cn__event_frame(&v, 42, 0, &len);

    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    expect_frame_json(f, len, type, room, payload, 42);
    free(f);
    f = cn__event_frame(&nr, 43, 0, &len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    expect_frame_json(f, len, type, NULL, payload, 43);
    free(f);

    /* The exact escapes: quote and backslash with a backslash, controls as \u00XX. */
    {
        cn_event_view_t e = view_of("a\"\\\x01\x1f\n", "\"", "0");
        expect_frame(&e, 5,
                     "{\"type\":\"a\\\"\\\\\\u0001\\u001f\\u000a\",\"payload\":0,\"seq\":5,"
                     "\"room\":\"\\\"\"}");
    }
}

static void
test_frame_worst_case(void)
{
    char type[CN_EVENT_TYPE_MAX + 1], room[CN_EVENT_ROOM_MAX + 1];
    char *payload = malloc(CN_EVENT_PAYLOAD_MAX + 1);
    cn_event_view_t v;
    size_t len = 0, want;
    uint8_t *f;

    /* Every name byte escaped to its longest form, the largest payload. */
    CU_ASSERT_PTR_NOT_NULL_FATAL(payload);
    memset(type, '\x01', CN_EVENT_TYPE_MAX);
    type[CN_EVENT_TYPE_MAX] = '\0';
    memset(room, '\x1e', CN_EVENT_ROOM_MAX);
    room[CN_EVENT_ROOM_MAX] = '\0';
    payload[0] = '"';
    memset(payload + 1, 'p', CN_EVENT_PAYLOAD_MAX - 2);
    payload[CN_EVENT_PAYLOAD_MAX - 1] = '"';
    payload[CN_EVENT_PAYLOAD_MAX] = '\0';
    v = view_of(type, room, payload);
    f = cn__event_frame(&v, 9999999999999999ull, 0, &len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    want = strlen("{\"type\":\"\",\"payload\":,\"seq\":9999999999999999,\"room\":\"\"}") +
           6 * CN_EVENT_TYPE_MAX + 6 * CN_EVENT_ROOM_MAX + CN_EVENT_PAYLOAD_MAX;
    CU_ASSERT_EQUAL(len, want);
    expect_frame_json(f, len, type, room, payload, 9999999999999999.0);
    free(f);
    free(payload);
}

static void
test_frame_headroom(void)
{
    static const size_t headrooms[] = {0, 1, 16, 64, 4096};
    cn_event_view_t v = view_of("order.paid", "orders:1", "{\"total\":12.5}");
    size_t ref_len = 0;
    uint8_t *ref = cn__event_frame(&v, 123, 0, &ref_len);

    CU_ASSERT_PTR_NOT_NULL_FATAL(ref);
    for (size_t i = 0; i < ARRAY_LEN(headrooms); i++) {
        size_t h = headrooms[i], len = 0;
        uint8_t *f = cn__event_frame(&v, 123, h, &len);
        CU_ASSERT_PTR_NOT_NULL_FATAL(f);
        /* The length excludes the headroom; the frame starts right after it. */
        CU_ASSERT_EQUAL(len, ref_len);
        CU_ASSERT_EQUAL(memcmp(f + h, ref, len), 0);
        CU_ASSERT_EQUAL(f[h], '{');
        CU_ASSERT_EQUAL(f[h + len - 1], '}');
        /* The headroom is the caller's (libwebsockets writes its header there): writing
         * it (inside the allocation: ASan) leaves the frame intact. */
        if (h)
            memset(f, 0xAB, h);
        CU_ASSERT_EQUAL(memcmp(f + h, ref, len), 0);
        expect_frame_json(f + h, len, "order.paid", "orders:1", "{\"total\":12.5}", 123);
        free(f);
    }
    free(ref);
}

/* ---- the event log's epoch ---- */

static void
test_store_events_epoch(void)
{
    char dir[512], dir2[512];
    cn_store_t *s = open_fresh(dir, sizeof(dir)), *s2, *t;
    uint64_t e = 0, again = 0, other = 0, via_second = 0;

    CU_ASSERT_EQUAL_FATAL(cn__store_events_epoch(s, &e), 0);
    CU_ASSERT_NOT_EQUAL(e, 0);
    CU_ASSERT_EQUAL_FATAL(cn__store_events_epoch(s, &again), 0);
    CU_ASSERT_EQUAL(again, e);
    /* A second handle on the same store (another process, in real life) sees it too. */
    CU_ASSERT_EQUAL_FATAL(cn__store_open(dir, MAP_SIZE, &s2), 0);
    CU_ASSERT_EQUAL_FATAL(cn__store_events_epoch(s2, &via_second), 0);
    CU_ASSERT_EQUAL(via_second, e);
    cn__store_close(s2);
    cn__store_close(s);
    /* Kept across a reopen (durable), new for a new store. */
    CU_ASSERT_EQUAL_FATAL(cn__store_open(dir, MAP_SIZE, &s), 0);
    again = 0;
    CU_ASSERT_EQUAL_FATAL(cn__store_events_epoch(s, &again), 0);
    CU_ASSERT_EQUAL(again, e);
    cn__store_close(s);
    t = open_fresh(dir2, sizeof(dir2));
    CU_ASSERT_EQUAL_FATAL(cn__store_events_epoch(t, &other), 0);
    CU_ASSERT_NOT_EQUAL(other, 0);
    CU_ASSERT_NOT_EQUAL(other, e);
    cn__store_close(t);
}

/* ---- UTF-8: cn_emit refuses it ill-formed, the frame never carries it ---- */

typedef struct utf8_case {
    const char *bytes;
    size_t len;
    int valid;
    const char *replaced; /* cn__utf8_replace's output */
} utf8_case_t;

#define U8(s, v, r) {s, sizeof(s) - 1, v, r}
static const utf8_case_t utf8_cases[] = {
    U8("", 1, ""),
    U8("plain ascii ~\x7f", 1, "plain ascii ~\x7f"),
    U8("\xc3\xa9t\xc3\xa9", 1, "\xc3\xa9t\xc3\xa9"),               /* été */
    U8("\xe2\x82\xac", 1, "\xe2\x82\xac"),                         /* € */
    U8("\xf0\x9f\x98\x80", 1, "\xf0\x9f\x98\x80"),                 /* U+1F600 */
    U8("\xf4\x8f\xbf\xbf", 1, "\xf4\x8f\xbf\xbf"),                 /* U+10FFFF */
    U8("\xed\x9f\xbf", 1, "\xed\x9f\xbf"),                         /* U+D7FF */
    U8("\xee\x80\x80", 1, "\xee\x80\x80"),                         /* U+E000 */
    /* The payload: three stray bytes, three replacements. */
    U8("\xff\xfe\x80", 0, "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"),
    U8("a\x80z", 0, "a\xef\xbf\xbdz"),                              /* lone continuation */
    U8("\xc0\xaf", 0, "\xef\xbf\xbd\xef\xbf\xbd"),                  /* overlong '/' */
    U8("\xe0\x80\xaf", 0, "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"),  /* overlong, 3 bytes */
    U8("\xed\xa0\x80", 0, "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"),  /* surrogate D800 */
    U8("\xf4\x90\x80\x80", 0,
       "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"),          /* past U+10FFFF */
    U8("\xf5\x80", 0, "\xef\xbf\xbd\xef\xbf\xbd"),
    /* Truncated sequences: the maximal subpart is one replacement. */
    U8("\xe2\x82", 0, "\xef\xbf\xbd"),
    U8("\xe2\x82z", 0, "\xef\xbf\xbdz"),
    U8("\xf0\x9f\x98", 0, "\xef\xbf\xbd"),
    U8("\xf0\x9f\x98\xc3\xa9", 0, "\xef\xbf\xbd\xc3\xa9"),
    U8("x\xc3", 0, "x\xef\xbf\xbd"),
};

static void
test_utf8_validate_and_replace(void)
{
    for (size_t i = 0; i < ARRAY_LEN(utf8_cases); i++) {
        const utf8_case_t *c = &utf8_cases[i];
        uint8_t *in = dup_prefix((const uint8_t *)c->bytes, c->len);
        uint8_t *out = malloc(3 * c->len + 1);
        size_t n;

        CU_ASSERT_PTR_NOT_NULL_FATAL(out);
        CU_ASSERT_EQUAL(cn__utf8_valid((const char *)in, c->len), c->valid);
        n = cn__utf8_replace(out, (const char *)in, c->len);
        if (n != strlen(c->replaced) || memcmp(out, c->replaced, n))
            fprintf(stderr, "\n  utf8 case %zu: got %zu bytes\n", i, n);
        CU_ASSERT(n == strlen(c->replaced) && memcmp(out, c->replaced, n) == 0);
        /* Whatever came in, what goes out is well-formed. */
        CU_ASSERT(cn__utf8_valid((const char *)out, n));
        free(out);
        free(in);
    }
    /* Every single byte and every byte pair: the copy is always well-formed and never
     * longer than 3 bytes per byte in. */
    for (unsigned a = 0; a < 256; a++) {
        for (unsigned b = 0; b < 256; b += 3) {
            uint8_t in[2] = {(uint8_t)a, (uint8_t)b}, out[6];
            size_t n = cn__utf8_replace(out, (const char *)in, 2);
            CU_ASSERT(n <= 6);
            CU_ASSERT(cn__utf8_valid((const char *)out, n));
        }
    }
}

static void
test_emit_rejects_ill_formed_utf8(void)
{
    cn_request_t req;
    cJSON *bad;

    request_open(&req);
    /* Well-formed non-ASCII goes through as it is. */
    CU_ASSERT_EQUAL(cn_emit(&req, "ok", cn_json_object("p", cJSON_CreateString("\xc3\xa9t\xc3\xa9"),
                                                       NULL)),
                    0);
    CU_ASSERT_EQUAL(req.events_failed, 0);
    CU_ASSERT_EQUAL_FATAL(count_events(&req), 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(req.events->payload, "\xc3\xa9t\xc3\xa9"));
    /* What cJSON parses from a body keeps its raw bytes: the product id. */
    bad = cJSON_Parse("{\"product_id\":\"\xff\xfe\x80\",\"quantity\":1}");
    CU_ASSERT_PTR_NOT_NULL_FATAL(bad);
    CU_ASSERT_EQUAL(cn_emit(&req, "order.created", bad), -EILSEQ);
    CU_ASSERT_EQUAL(req.events_failed, 1);
    CU_ASSERT_EQUAL(cn_emit_to(&req, "r", "t",
                               cn_json_object("s", cJSON_CreateString("a\xed\xa0\x80"), NULL)),
                    -EILSEQ);
    CU_ASSERT_EQUAL(count_events(&req), 1);
    cn__request_destroy(&req);

    /* Every failure marks the request (a durable handler that ignores it gets 500). */
    request_open(&req);
    CU_ASSERT_EQUAL(cn_emit(&req, "bad type\n", NULL), -EINVAL);
    CU_ASSERT_EQUAL(req.events_failed, 1);
    cn__request_destroy(&req);
    request_open(&req);
    CU_ASSERT_EQUAL(cn_emit_to(&req, NULL, "t", NULL), -EINVAL);
    CU_ASSERT_EQUAL(req.events_failed, 1);
    cn__request_destroy(&req);
    request_open(&req);
    CU_ASSERT_EQUAL(cn_emit(&req, "big", string_of(CN_EVENT_PAYLOAD_MAX)), CN_ETOOBIG);
    CU_ASSERT_EQUAL(req.events_failed, 1);
    cn__request_destroy(&req);
    CU_ASSERT_EQUAL(cn_emit(NULL, "t", NULL), -EINVAL);
}

/* An event stored before cn_emit checked UTF-8 still becomes a well-formed frame. */
static void
test_frame_replaces_ill_formed_utf8(void)
{
    cn_event_view_t v = view_of("t\xc3", "r\xff", "{\"product_id\":\"\xff\xfe\x80\",\"q\":1}");
    size_t len = 0;
    uint8_t *f = cn__event_frame(&v, 9, 0, &len);

    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    CU_ASSERT(cn__utf8_valid((const char *)f, len));
    expect_frame_json(f, len, "t\xef\xbf\xbd", "r\xef\xbf\xbd",
                      "{\"product_id\":\"\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\",\"q\":1}", 9);
    free(f);
    /* Headroom and a payload of nothing but stray bytes (the largest expansion). */
    {
        char *junk = malloc(4097);
        CU_ASSERT_PTR_NOT_NULL_FATAL(junk);
        memset(junk, 0x80, 4096);
        junk[4096] = '\0';
        v = view_of("t", NULL, junk);
        f = cn__event_frame(&v, 1, 16, &len);
        CU_ASSERT_PTR_NOT_NULL_FATAL(f);
        CU_ASSERT(cn__utf8_valid((const char *)f + 16, len));
        CU_ASSERT(len > 3 * 4096);
        free(f);
        free(junk);
    }
}

/* ---- events in the store ---- */

static void
test_store_apply_numbering(void)
{
    char dir[512];
    cn_store_t *s = open_fresh(dir, sizeof(dir));
    static const ev_spec_t a[] = {{"a1", NULL, "1"}, {"a2", "room-a", "{\"x\":2}"}};
    static const ev_spec_t c[] = {{"c1", NULL, NULL}, {"c2", "r", NULL}, {"c3", NULL, "[3]"}};
    static const ev_spec_t d[] = {{"d1", NULL, "4"}};
    static const ev_spec_t e[] = {{"e1", NULL, "5"}, {"e2", "room-e", "6"}};
    static const ev_spec_t f[] = {{"f1", NULL, "7"}};
    static const ev_spec_t g[] = {{"g1", "room-g", "8"}};
    const ev_spec_t *all[] = {&a[0], &a[1], &c[0], &c[1], &c[2], &d[0],
                              &e[0], &e[1], &f[0], &g[0]};
    size_t la, lc, lz, ld, le, lf, lg, lrec;
    uint8_t *ea = specs_encode(a, 2, &la), *ec = specs_encode(c, 3, &lc),
            *ez = specs_encode(NULL, 0, &lz), *ed = specs_encode(d, 1, &ld),
            *ee = specs_encode(e, 2, &le), *ef = specs_encode(f, 1, &lf),
            *eg = specs_encode(g, 1, &lg);
    uint8_t *rec = record_bytes(201, "{\"ok\":true}", &lrec);
    cn_store_raw_put_t items[5] = {
        {.key = "k:a", .keylen = 3, .bytes = rec, .len = lrec, .events = ea, .events_len = la},
        {.key = "k:b", .keylen = 3, .bytes = rec, .len = lrec, .events = NULL, .events_len = 0},
        {.key = NULL, .keylen = 0, .bytes = NULL, .len = 0, .events = ec, .events_len = lc},
        {.key = "k:d", .keylen = 3, .bytes = rec, .len = lrec, .events = ez, .events_len = lz},
        {.key = "k:e", .keylen = 3, .bytes = rec, .len = lrec, .events = ed, .events_len = ld},
    };
    cn_store_raw_put_t second[2] = {
        {.key = NULL, .events = ee, .events_len = le},
        {.key = "k:f", .keylen = 3, .bytes = rec, .len = lrec, .events = ef, .events_len = lf},
    };
    cn_store_raw_put_t third = {.key = NULL, .events = eg, .events_len = lg};
    cn_store_meta_t meta, got;
    collector_t col;
    uint64_t before, after;

    collector_init(&col, 64);
    expect_bounds(s, 0, 0);
    memset(&meta, 0, sizeof(meta));
    meta.applied_lsn = 11;
    meta.epoch = 5;
    meta.seqs[2] = 7;
    for (size_t i = 0; i < ARRAY_LEN(items); i++)
        items[i].status = 999;
    before = cn__clock_wall_ms();
    CU_ASSERT_EQUAL_FATAL(cn__store_apply(s, items, ARRAY_LEN(items), &meta), 0);
    after = cn__clock_wall_ms();
    for (size_t i = 0; i < ARRAY_LEN(items); i++)
        CU_ASSERT_EQUAL(items[i].status, 0);
    CU_ASSERT_EQUAL(meta.event_seq, 6);
    CU_ASSERT_EQUAL(record_count(s), 4); /* the events-only item writes no record */
    CU_ASSERT(record_present(s, "k:a") && record_present(s, "k:b") &&
              record_present(s, "k:d") && record_present(s, "k:e"));
    read_events(s, 1, 100, &col);
    CU_ASSERT_EQUAL_FATAL(col.n, 6);
    for (size_t i = 0; i < 6; i++) {
        expect_got(&col.ev[i], i + 1, all[i]);
        CU_ASSERT(col.ev[i].created_ms >= before && col.ev[i].created_ms <= after);
    }
    CU_ASSERT_EQUAL(cn__store_meta_get(s, &got), 0);
    CU_ASSERT_EQUAL(got.event_seq, 6);

    /* The next transaction continues from meta.event_seq. */
    CU_ASSERT_EQUAL_FATAL(cn__store_apply(s, second, 2, &meta), 0);
    CU_ASSERT_EQUAL(second[0].status, 0);
    CU_ASSERT_EQUAL(second[1].status, 0);
    CU_ASSERT_EQUAL(meta.event_seq, 9);
    expect_bounds(s, 1, 9);

    /* An empty batch commits the meta and numbers nothing. */
    CU_ASSERT_EQUAL_FATAL(cn__store_apply(s, NULL, 0, &meta), 0);
    CU_ASSERT_EQUAL(meta.event_seq, 9);

    /* Persisted: a reopened store has the same meta and events. */
    cn__store_close(s);
    s = NULL;
    CU_ASSERT_EQUAL_FATAL(cn__store_open(dir, MAP_SIZE, &s), 0);
    memset(&got, 0x77, sizeof(got));
    CU_ASSERT_EQUAL_FATAL(cn__store_meta_get(s, &got), 0);
    CU_ASSERT_EQUAL(got.event_seq, 9);
    CU_ASSERT_EQUAL(got.applied_lsn, 11);
    CU_ASSERT_EQUAL(got.epoch, 5);
    CU_ASSERT_EQUAL(got.seqs[2], 7);
    CU_ASSERT_EQUAL(got.seqs[0], 0);
    expect_bounds(s, 1, 9);
    CU_ASSERT_EQUAL_FATAL(cn__store_apply(s, &third, 1, &got), 0);
    CU_ASSERT_EQUAL(got.event_seq, 10);
    read_events(s, 0, 100, &col);
    CU_ASSERT_EQUAL_FATAL(col.n, 10);
    for (size_t i = 0; i < 10; i++)
        expect_got(&col.ev[i], i + 1, all[i]);

    collector_free(&col);
    free(ea);
    free(ec);
    free(ez);
    free(ed);
    free(ee);
    free(ef);
    free(eg);
    free(rec);
    cn__store_close(s);
}

static void
test_store_apply_skips_corrupt(void)
{
    char dir[512], longkey[CN_STORE_KEY_MAX + 2];
    cn_store_t *s = open_fresh(dir, sizeof(dir));
    static const ev_spec_t x01[] = {{"x0", NULL, "0"}, {"x1", "r1", "1"}};
    static const ev_spec_t bad3[] = {{"bad0", NULL, "0"}, {"bad1", NULL, "1"}, {"bad2", NULL, "2"}};
    static const ev_spec_t x2[] = {{"x2", NULL, "2"}};
    static const ev_spec_t bad1[] = {{"bad3", NULL, "3"}};
    static const ev_spec_t x34[] = {{"x3", NULL, "3"}, {"x4", "r4", "4"}};
    static const ev_spec_t x5[] = {{"x5", NULL, "5"}};
    static const ev_spec_t *want[] = {&x01[0], &x01[1], &x2[0], &x34[0], &x34[1], &x5[0]};
    size_t l01, l3, l2, l1, l34, l5, lrec, lt1, lt2, lt3;
    uint8_t *e01 = specs_encode(x01, 2, &l01), *e3 = specs_encode(bad3, 3, &l3),
            *e2 = specs_encode(x2, 1, &l2), *e1 = specs_encode(bad1, 1, &l1),
            *e34 = specs_encode(x34, 2, &l34), *e5 = specs_encode(x5, 1, &l5);
    uint8_t *rec = record_bytes(200, "body", &lrec);
    uint8_t *badrec = dup_prefix(rec, lrec);
    /* Corrupt lists: truncated by a byte, a trailing byte, a count too large. */
    uint8_t *t1 = specs_encode(bad3, 3, &lt1), *t2 = specs_encode(bad3, 3, &lt2),
            *t3 = specs_encode(bad3, 2, &lt3), *t2l = malloc(lt2 + 1);
    cn_store_meta_t meta;
    collector_t col;

    CU_ASSERT_PTR_NOT_NULL_FATAL(t2l);
    memcpy(t2l, t2, lt2);
    t2l[lt2] = 0;
    t3[0] = 3;
    badrec[lrec / 2] ^= 0x40; /* the CRC no longer matches */
    memset(longkey, 'L', sizeof(longkey));

    {
        cn_store_raw_put_t items[] = {
            {.key = "k:0", .keylen = 3, .bytes = rec, .len = lrec, .events = e01,
             .events_len = l01},
            {.key = "k:1", .keylen = 3, .bytes = badrec, .len = lrec, .events = e3,
             .events_len = l3},
            {.key = "k:2", .keylen = 3, .bytes = rec, .len = lrec, .events = e2,
             .events_len = l2},
            {.key = longkey, .keylen = CN_STORE_KEY_MAX + 1, .bytes = rec, .len = lrec,
             .events = e1, .events_len = l1},
            {.key = "k:4", .keylen = 3, .bytes = rec, .len = lrec, .events = t1,
             .events_len = lt1 - 1},
            {.key = NULL, .events = t2l, .events_len = lt2 + 1},
            {.key = NULL, .events = t3, .events_len = lt3},
            {.key = "k:7", .keylen = 3, .bytes = rec, .len = lrec - 1, .events = NULL},
            {.key = "k:8", .keylen = 3, .bytes = NULL, .len = 0, .events = e1,
             .events_len = l1},
            {.key = NULL, .events = e34, .events_len = l34},
            {.key = "k:9", .keylen = 3, .bytes = rec, .len = lrec, .events = NULL},
            {.key = NULL, .events = t1, .events_len = 1},
        };
        static const int status[] = {0,           CN_ECORRUPT, 0,           CN_ETOOBIG,
                                     CN_ECORRUPT, CN_ECORRUPT, CN_ECORRUPT, CN_ECORRUPT,
                                     CN_ECORRUPT, 0,           0,           CN_ECORRUPT};

        memset(&meta, 0, sizeof(meta));
        CU_ASSERT_EQUAL_FATAL(cn__store_apply(s, items, ARRAY_LEN(items), &meta), 0);
        for (size_t i = 0; i < ARRAY_LEN(items); i++) {
            if (items[i].status != status[i])
                fprintf(stderr, "\n  item %zu: status %d, want %d\n", i, items[i].status,
                        status[i]);
            CU_ASSERT_EQUAL(items[i].status, status[i]);
        }
    }
    /* Only the good items' events, numbered without a gap. */
    CU_ASSERT_EQUAL(meta.event_seq, 5);
    expect_bounds(s, 1, 5);
    collector_init(&col, 64);
    read_events(s, 1, 100, &col);
    CU_ASSERT_EQUAL_FATAL(col.n, 5);
    for (size_t i = 0; i < 5; i++)
        expect_got(&col.ev[i], i + 1, want[i]);
    /* A skipped item's record is not written either, even when the record was fine. */
    CU_ASSERT_EQUAL(record_count(s), 3);
    CU_ASSERT(record_present(s, "k:0"));
    CU_ASSERT(record_present(s, "k:2"));
    CU_ASSERT(record_present(s, "k:9"));
    CU_ASSERT(!record_present(s, "k:1"));
    CU_ASSERT(!record_present(s, "k:4"));
    CU_ASSERT(!record_present(s, "k:7"));
    CU_ASSERT(!record_present(s, "k:8"));

    /* The next apply continues right after. */
    {
        cn_store_raw_put_t item = {.key = NULL, .events = e5, .events_len = l5};
        CU_ASSERT_EQUAL_FATAL(cn__store_apply(s, &item, 1, &meta), 0);
    }
    CU_ASSERT_EQUAL(meta.event_seq, 6);
    read_events(s, 0, 100, &col);
    CU_ASSERT_EQUAL_FATAL(col.n, 6);
    for (size_t i = 0; i < 6; i++)
        expect_got(&col.ev[i], i + 1, want[i]);
    /* A batch where every item is skipped keeps the numbering. */
    {
        cn_store_raw_put_t item = {.key = "k:x", .keylen = 3, .bytes = badrec, .len = lrec,
                                   .events = e5, .events_len = l5};
        CU_ASSERT_EQUAL_FATAL(cn__store_apply(s, &item, 1, &meta), 0);
        CU_ASSERT_EQUAL(item.status, CN_ECORRUPT);
    }
    CU_ASSERT_EQUAL(meta.event_seq, 6);
    expect_bounds(s, 1, 6);

    collector_free(&col);
    free(e01);
    free(e3);
    free(e2);
    free(e1);
    free(e34);
    free(e5);
    free(rec);
    free(badrec);
    free(t1);
    free(t2);
    free(t2l);
    free(t3);
    cn__store_close(s);
}

static void
test_store_put_events(void)
{
    char dir[512];
    cn_store_t *s = open_fresh(dir, sizeof(dir));
    static const ev_spec_t p12[] = {{"p1", NULL, "1"}, {"p2", "rp", "2"}};
    static const ev_spec_t a1[] = {{"a1", NULL, "3"}};
    static const ev_spec_t q1[] = {{"q1", NULL, "4"}};
    static const ev_spec_t q23[] = {{"q2", "rq", "5"}, {"q3", NULL, "6"}};
    static const ev_spec_t *want[] = {&p12[0], &p12[1], &a1[0], &q1[0], &q23[0], &q23[1]};
    size_t l12, la1, lq1, lq23;
    uint8_t *e12 = specs_encode(p12, 2, &l12), *ea1 = specs_encode(a1, 1, &la1),
            *eq1 = specs_encode(q1, 1, &lq1), *eq23 = specs_encode(q23, 2, &lq23);
    cn_record_t rec = make_record(201, "{\"id\":1}");
    cn_store_meta_t meta;
    collector_t col;
    uint64_t before = cn__clock_wall_ms(), after;

    collector_init(&col, 64);
    {
        cn_store_put_t item = {.key = "p:1", .keylen = 3, .rec = &rec, .events = e12,
                               .events_len = l12};
        CU_ASSERT_EQUAL_FATAL(cn__store_put(s, &item, 1), 0);
    }
    CU_ASSERT_EQUAL_FATAL(cn__store_meta_get(s, &meta), 0);
    CU_ASSERT_EQUAL(meta.event_seq, 2);
    CU_ASSERT_EQUAL(meta.applied_lsn, 0);

    /* The persister's path continues after it... */
    meta.applied_lsn = 3;
    {
        cn_store_raw_put_t item = {.key = NULL, .events = ea1, .events_len = la1};
        CU_ASSERT_EQUAL_FATAL(cn__store_apply(s, &item, 1, &meta), 0);
    }
    CU_ASSERT_EQUAL(meta.event_seq, 3);

    /* ...and the sync path after that, several items in one transaction. */
    {
        cn_store_put_t items[2] = {
            {.key = "p:2", .keylen = 3, .rec = &rec, .events = eq1, .events_len = lq1},
            {.key = "p:3", .keylen = 3, .rec = &rec, .events = eq23, .events_len = lq23},
        };
        CU_ASSERT_EQUAL_FATAL(cn__store_put(s, items, 2), 0);
    }
    after = cn__clock_wall_ms();
    CU_ASSERT_EQUAL_FATAL(cn__store_meta_get(s, &meta), 0);
    CU_ASSERT_EQUAL(meta.event_seq, 6);
    CU_ASSERT_EQUAL(meta.applied_lsn, 3); /* the rest of the meta is kept */
    read_events(s, 1, 100, &col);
    CU_ASSERT_EQUAL_FATAL(col.n, 6);
    for (size_t i = 0; i < 6; i++) {
        expect_got(&col.ev[i], i + 1, want[i]);
        CU_ASSERT(col.ev[i].created_ms >= before && col.ev[i].created_ms <= after);
    }

    /* A put without events leaves the numbering alone. */
    {
        cn_store_put_t item = {.key = "p:4", .keylen = 3, .rec = &rec, .events = NULL,
                               .events_len = 0};
        CU_ASSERT_EQUAL_FATAL(cn__store_put(s, &item, 1), 0);
    }
    CU_ASSERT_EQUAL_FATAL(cn__store_meta_get(s, &meta), 0);
    CU_ASSERT_EQUAL(meta.event_seq, 6);

    /* A put whose event list does not decode writes nothing at all. */
    {
        cn_store_put_t items[2] = {
            {.key = "p:5", .keylen = 3, .rec = &rec, .events = eq1, .events_len = lq1},
            {.key = "p:6", .keylen = 3, .rec = &rec, .events = eq23, .events_len = lq23 - 1},
        };
        CU_ASSERT(cn__store_put(s, items, 2) < 0);
    }
    CU_ASSERT(!record_present(s, "p:5"));
    CU_ASSERT(!record_present(s, "p:6"));
    CU_ASSERT_EQUAL(record_count(s), 4);
    CU_ASSERT_EQUAL_FATAL(cn__store_meta_get(s, &meta), 0);
    CU_ASSERT_EQUAL(meta.event_seq, 6);
    expect_bounds(s, 1, 6);

    collector_free(&col);
    free(e12);
    free(ea1);
    free(eq1);
    free(eq23);
    cn__store_close(s);
}

static void
test_events_read(void)
{
    char dir[512];
    cn_store_t *s = open_fresh(dir, sizeof(dir));
    cn_store_meta_t meta;
    collector_t col;
    char name[16];

    collector_init(&col, 64);
    /* An empty store: no calls, no error. */
    read_events(s, 0, 100, &col);
    CU_ASSERT_EQUAL(col.calls, 0);
    read_events(s, 5, 100, &col);
    CU_ASSERT_EQUAL(col.calls, 0);

    memset(&meta, 0, sizeof(meta));
    apply_named(s, &meta, "e", 1, 4, "{\"v\":1}");
    apply_named(s, &meta, "e", 5, 6, NULL);
    CU_ASSERT_EQUAL(meta.event_seq, 10);

    /* From the middle to the end. */
    read_events(s, 4, 100, &col);
    CU_ASSERT_EQUAL_FATAL(col.n, 7);
    for (size_t i = 0; i < 7; i++) {
        snprintf(name, sizeof(name), "e%zu", i + 4);
        CU_ASSERT_EQUAL(col.ev[i].seq, i + 4);
        CU_ASSERT_STRING_EQUAL(col.ev[i].type, name);
        CU_ASSERT_STRING_EQUAL(col.ev[i].payload, i + 4 <= 4 ? "{\"v\":1}" : "null");
    }
    /* max bounds the number of calls. */
    read_events(s, 4, 3, &col);
    CU_ASSERT_EQUAL(col.calls, 3);
    CU_ASSERT_EQUAL_FATAL(col.n, 3);
    CU_ASSERT_EQUAL(col.ev[0].seq, 4);
    CU_ASSERT_EQUAL(col.ev[2].seq, 6);
    read_events(s, 1, 0, &col);
    CU_ASSERT_EQUAL(col.calls, 0);
    read_events(s, 1, 1, &col);
    CU_ASSERT_EQUAL(col.calls, 1);
    CU_ASSERT_EQUAL(col.ev[0].seq, 1);
    /* from 0 starts at the first; the last alone; past the end: nothing. */
    read_events(s, 0, 100, &col);
    CU_ASSERT_EQUAL(col.n, 10);
    CU_ASSERT_EQUAL(col.ev[0].seq, 1);
    read_events(s, 10, 100, &col);
    CU_ASSERT_EQUAL_FATAL(col.n, 1);
    CU_ASSERT_EQUAL(col.ev[0].seq, 10);
    read_events(s, 11, 100, &col);
    CU_ASSERT_EQUAL(col.calls, 0);
    read_events(s, UINT64_MAX, 100, &col);
    CU_ASSERT_EQUAL(col.calls, 0);
    /* max beyond what exists is fine. */
    read_events(s, 9, (size_t)-1, &col);
    CU_ASSERT_EQUAL(col.calls, 2);

    /* The callback stops the walk: the call that returns non-zero is the last. */
    col.stop_after = 2;
    read_events(s, 3, 100, &col);
    CU_ASSERT_EQUAL(col.calls, 2);
    CU_ASSERT_EQUAL_FATAL(col.n, 2);
    CU_ASSERT_EQUAL(col.ev[0].seq, 3);
    CU_ASSERT_EQUAL(col.ev[1].seq, 4);
    col.stop_after = 1;
    read_events(s, 0, 100, &col);
    CU_ASSERT_EQUAL(col.calls, 1);
    col.stop_after = 0;

    collector_free(&col);
    cn__store_close(s);
}

static void
test_events_bounds(void)
{
    char dir[512];
    cn_store_t *s = open_fresh(dir, sizeof(dir));
    cn_store_meta_t meta;
    size_t deleted;

    expect_bounds(s, 0, 0);
    memset(&meta, 0, sizeof(meta));
    apply_named(s, &meta, "b", 1, 1, NULL);
    expect_bounds(s, 1, 1);
    apply_named(s, &meta, "b", 2, 9, NULL);
    expect_bounds(s, 1, 10);
    CU_ASSERT_EQUAL(cn__store_events_prune(s, 4, 0, 100, &deleted), 0);
    CU_ASSERT_EQUAL(deleted, 6);
    expect_bounds(s, 7, 10);
    /* Pruned to nothing: bounds are back to 0 while the numbering goes on. */
    CU_ASSERT_EQUAL(cn__store_events_prune(s, 0, UINT64_MAX, 100, &deleted), 0);
    CU_ASSERT_EQUAL(deleted, 4);
    expect_bounds(s, 0, 0);
    apply_named(s, &meta, "b", 11, 1, NULL);
    expect_bounds(s, 11, 11);
    cn__store_close(s);
}

static void
test_prune_by_count(void)
{
    char dir[512];
    cn_store_t *s = open_fresh(dir, sizeof(dir));
    cn_store_meta_t meta;
    collector_t col;
    size_t deleted = 999;
    char name[16];
    static const char payload[] = "{\"pad\":\"................................................"
                                  "..................................................\"}";

    collector_init(&col, 1100);
    memset(&meta, 0, sizeof(meta));
    /* Enough events to span many LMDB pages. */
    for (int t = 0; t < 20; t++)
        apply_named(s, &meta, "n", 1 + 50 * t, 50, payload);
    CU_ASSERT_EQUAL_FATAL(meta.event_seq, 1000);
    expect_bounds(s, 1, 1000);

    /* Fewer than keep: nothing goes. Both limits off: nothing goes. */
    CU_ASSERT_EQUAL(cn__store_events_prune(s, 1000, 0, 10000, &deleted), 0);
    CU_ASSERT_EQUAL(deleted, 0);
    CU_ASSERT_EQUAL(cn__store_events_prune(s, 5000, 0, 10000, &deleted), 0);
    CU_ASSERT_EQUAL(deleted, 0);
    deleted = 999;
    CU_ASSERT_EQUAL(cn__store_events_prune(s, 0, 0, 10000, &deleted), 0);
    CU_ASSERT_EQUAL(deleted, 0);
    expect_bounds(s, 1, 1000);

    /* Keep exactly the newest 100. */
    CU_ASSERT_EQUAL(cn__store_events_prune(s, 100, 0, 10000, &deleted), 0);
    CU_ASSERT_EQUAL(deleted, 900);
    expect_bounds(s, 901, 1000);
    read_events(s, 0, 10000, &col);
    CU_ASSERT_EQUAL_FATAL(col.n, 100);
    for (size_t i = 0; i < 100; i++) {
        snprintf(name, sizeof(name), "n%zu", 901 + i);
        CU_ASSERT_EQUAL(col.ev[i].seq, 901 + i);
        CU_ASSERT_STRING_EQUAL(col.ev[i].type, name);
    }
    CU_ASSERT_EQUAL(cn__store_events_prune(s, 100, 0, 10000, &deleted), 0);
    CU_ASSERT_EQUAL(deleted, 0);

    /* max bounds one call. */
    CU_ASSERT_EQUAL(cn__store_events_prune(s, 10, 0, 30, &deleted), 0);
    CU_ASSERT_EQUAL(deleted, 30);
    expect_bounds(s, 931, 1000);
    CU_ASSERT_EQUAL(cn__store_events_prune(s, 10, 0, 30, &deleted), 0);
    CU_ASSERT_EQUAL(deleted, 30);
    CU_ASSERT_EQUAL(cn__store_events_prune(s, 10, 0, 0, &deleted), 0);
    CU_ASSERT_EQUAL(deleted, 0);
    CU_ASSERT_EQUAL(cn__store_events_prune(s, 10, 0, 100, &deleted), 0);
    CU_ASSERT_EQUAL(deleted, 30);
    expect_bounds(s, 991, 1000);
    read_events(s, 0, 10000, &col);
    CU_ASSERT_EQUAL(col.n, 10);
    CU_ASSERT_EQUAL(col.ev[0].seq, 991);
    /* Keep one. */
    CU_ASSERT_EQUAL(cn__store_events_prune(s, 1, 0, 100, &deleted), 0);
    CU_ASSERT_EQUAL(deleted, 9);
    expect_bounds(s, 1000, 1000);

    /* Numbering never reuses pruned seqs, also after a reopen. */
    apply_named(s, &meta, "n", 1001, 2, NULL);
    expect_bounds(s, 1000, 1002);
    cn__store_close(s);
    s = NULL;
    CU_ASSERT_EQUAL_FATAL(cn__store_open(dir, MAP_SIZE, &s), 0);
    CU_ASSERT_EQUAL_FATAL(cn__store_meta_get(s, &meta), 0);
    CU_ASSERT_EQUAL(meta.event_seq, 1002);
    apply_named(s, &meta, "n", 1003, 1, NULL);
    expect_bounds(s, 1000, 1003);

    collector_free(&col);
    cn__store_close(s);
}

/* Sleeps until the wall clock is past ms. */
static void
wait_past(uint64_t ms)
{
    for (int i = 0; i < 1000 && cn__clock_wall_ms() <= ms; i++)
        sleep_ms(2);
    CU_ASSERT_FATAL(cn__clock_wall_ms() > ms);
}

static void
test_prune_by_age(void)
{
    char dir[512];
    cn_store_t *s = open_fresh(dir, sizeof(dir));
    cn_store_meta_t meta;
    collector_t col;
    size_t deleted = 999;
    uint64_t old_max = 0, old_min = UINT64_MAX, new_min = UINT64_MAX, new_max = 0;

    collector_init(&col, 64);
    memset(&meta, 0, sizeof(meta));
    /* Stored events carry the wall clock at apply time: make "old" ones, wait, then
     * "new" ones, and prune with a min_created_ms between them. */
    apply_named(s, &meta, "old", 1, 5, NULL);
    read_events(s, 0, 100, &col);
    CU_ASSERT_EQUAL_FATAL(col.n, 5);
    for (size_t i = 0; i < col.n; i++) {
        old_max = col.ev[i].created_ms > old_max ? col.ev[i].created_ms : old_max;
        old_min = col.ev[i].created_ms < old_min ? col.ev[i].created_ms : old_min;
    }
    wait_past(old_max);
    apply_named(s, &meta, "new", 6, 5, NULL);
    read_events(s, 6, 100, &col);
    CU_ASSERT_EQUAL_FATAL(col.n, 5);
    for (size_t i = 0; i < col.n; i++) {
        new_min = col.ev[i].created_ms < new_min ? col.ev[i].created_ms : new_min;
        new_max = col.ev[i].created_ms > new_max ? col.ev[i].created_ms : new_max;
    }
    CU_ASSERT_FATAL(old_max < new_min);

    /* Nothing is older than the epoch + 1 ms, or than the oldest event itself. */
    CU_ASSERT_EQUAL(cn__store_events_prune(s, 0, 1, 100, &deleted), 0);
    CU_ASSERT_EQUAL(deleted, 0);
    CU_ASSERT_EQUAL(cn__store_events_prune(s, 0, old_min, 100, &deleted), 0);
    CU_ASSERT_EQUAL(deleted, 0);
    expect_bounds(s, 1, 10);

    /* Older than the new batch: exactly the old batch, max per call. */
    CU_ASSERT_EQUAL(cn__store_events_prune(s, 0, new_min, 2, &deleted), 0);
    CU_ASSERT_EQUAL(deleted, 2);
    expect_bounds(s, 3, 10);
    CU_ASSERT_EQUAL(cn__store_events_prune(s, 0, new_min, 100, &deleted), 0);
    CU_ASSERT_EQUAL(deleted, 3);
    expect_bounds(s, 6, 10);
    CU_ASSERT_EQUAL(cn__store_events_prune(s, 0, new_min, 100, &deleted), 0);
    CU_ASSERT_EQUAL(deleted, 0);
    /* The age limit does not stop a count limit (either one prunes). */
    CU_ASSERT_EQUAL(cn__store_events_prune(s, 4, new_min, 100, &deleted), 0);
    CU_ASSERT_EQUAL(deleted, 1);
    expect_bounds(s, 7, 10);
    /* A keep larger than what is left does not stop the age limit. */
    CU_ASSERT_EQUAL(cn__store_events_prune(s, 1000, new_max + 1, 1, &deleted), 0);
    CU_ASSERT_EQUAL(deleted, 1);
    expect_bounds(s, 8, 10);

    /* A min_created_ms in the future takes everything, max per call. */
    CU_ASSERT_EQUAL(cn__store_events_prune(s, 0, cn__clock_wall_ms() + 3600000, 2, &deleted),
                    0);
    CU_ASSERT_EQUAL(deleted, 2);
    CU_ASSERT_EQUAL(cn__store_events_prune(s, 0, UINT64_MAX, 100, &deleted), 0);
    CU_ASSERT_EQUAL(deleted, 1);
    expect_bounds(s, 0, 0);
    read_events(s, 0, 100, &col);
    CU_ASSERT_EQUAL(col.calls, 0);
    CU_ASSERT_EQUAL(cn__store_events_prune(s, 0, UINT64_MAX, 100, &deleted), 0);
    CU_ASSERT_EQUAL(deleted, 0);
    CU_ASSERT_EQUAL(meta.event_seq, 10);

    collector_free(&col);
    cn__store_close(s);
}

/* cn__store_apply: "Returns 0, or a negative error when the transaction failed (nothing
 * written, meta unchanged)". Fill a small map until an apply fails, then free space and
 * retry with the same meta: the numbering must go on without a gap. */
static void
test_store_apply_failure_keeps_meta(void)
{
    char dir[512];
    cn_store_t *s = NULL;
    cn_store_meta_t meta, stored;
    char payload[1001];
    size_t deleted = 0;
    uint64_t before = 0, oldest = 0, newest = 0;
    int rc = 0, i;

    snprintf(dir, sizeof(dir), "%s/store-%d/data", tmpdir, store_seq++);
    CU_ASSERT_EQUAL_FATAL(cn__store_open(dir, (size_t)256 << 10, &s), 0);
    memset(payload, '7', sizeof(payload) - 1);
    payload[sizeof(payload) - 1] = '\0';
    memset(&meta, 0, sizeof(meta));
    for (i = 0; i < 100000; i++) {
        ev_spec_t spec = {.type = "fill", .room = NULL, .payload = payload};
        size_t len;
        uint8_t *list = specs_encode(&spec, 1, &len);
        cn_store_raw_put_t item = {.key = NULL, .events = list, .events_len = len};
        before = meta.event_seq;
        rc = cn__store_apply(s, &item, 1, &meta);
        free(list);
        if (rc)
            break;
    }
    CU_ASSERT_FATAL(rc < 0); /* the map did fill up */
    CU_ASSERT_EQUAL_FATAL(cn__store_meta_get(s, &stored), 0);
    CU_ASSERT_EQUAL(stored.event_seq, before);
    expect_bounds(s, 1, before);
    if (meta.event_seq != before)
        fprintf(stderr, "\n  apply failed (%d) after %llu events, meta.event_seq moved to %llu\n",
                rc, (unsigned long long)before, (unsigned long long)meta.event_seq);
    CU_ASSERT_EQUAL(meta.event_seq, before);

    /* Make room and retry with the meta the failed call handed back. */
    CU_ASSERT_EQUAL_FATAL(cn__store_events_prune(s, 10, 0, 100000, &deleted), 0);
    CU_ASSERT(deleted > 0);
    apply_named(s, &meta, "retry", 0, 1, NULL);
    CU_ASSERT_EQUAL_FATAL(cn__store_events_bounds(s, &oldest, &newest), 0);
    if (newest != before + 1)
        fprintf(stderr, "  the retried event got seq %llu after %llu: seq %llu never exists\n",
                (unsigned long long)newest, (unsigned long long)before,
                (unsigned long long)(before + 1));
    CU_ASSERT_EQUAL(newest, before + 1);
    cn__store_close(s);
}

/* An emitted event, carried the way the server carries it (request -> encoded list ->
 * persist record -> LMDB -> stored event -> frame), reaches the client unchanged. */
static void
test_emit_to_frame(void)
{
    char dir[512];
    cn_store_t *s = open_fresh(dir, sizeof(dir));
    cn_request_t req;
    static const char key[] = "cnerium:response:orders.create:k1";
    cn_record_t rec = make_record(201, "{\"id\":\"o1\"}");
    cn_persist_record_t pr;
    cn_store_meta_t meta;
    size_t llen, plen, written;
    uint8_t *list, *prec;
    collector_t col;

    request_open(&req);
    CU_ASSERT_EQUAL(cn_emit(&req, "order.created",
                            cn_json_object("id", cJSON_CreateString("o1"), NULL)),
                    0);
    CU_ASSERT_EQUAL(cn_emit_to(&req, "orders:o1", "order.\"quoted\"", NULL), 0);
    list = list_encode(req.events, &llen);
    plen = cn__persist_record_size(sizeof(key) - 1, &rec, llen);
    prec = malloc(plen);
    CU_ASSERT_PTR_NOT_NULL_FATAL(prec);
    CU_ASSERT_EQUAL_FATAL(cn__persist_record_encode(prec, plen, key, sizeof(key) - 1, &rec,
                                                    list, llen, &written),
                          0);
    CU_ASSERT_EQUAL_FATAL(written, plen);
    CU_ASSERT_EQUAL_FATAL(cn__persist_record_decode(prec, plen, &pr), 0);
    CU_ASSERT_EQUAL(pr.kind, CN_PERSIST_PUT_EVENTS);
    {
        cn_store_raw_put_t item = {.key = pr.key, .keylen = pr.keylen, .bytes = pr.rec,
                                   .len = pr.reclen, .events = pr.events,
                                   .events_len = pr.events_len};
        memset(&meta, 0, sizeof(meta));
        meta.event_seq = 41; /* numbering continues from whatever the meta says */
        CU_ASSERT_EQUAL_FATAL(cn__store_apply(s, &item, 1, &meta), 0);
        CU_ASSERT_EQUAL(item.status, 0);
    }
    CU_ASSERT_EQUAL(meta.event_seq, 43);
    CU_ASSERT(record_present(s, key));
    expect_bounds(s, 42, 43);

    /* Read back and frame both. */
    collector_init(&col, 8);
    read_events(s, 0, 10, &col);
    CU_ASSERT_EQUAL_FATAL(col.n, 2);
    for (size_t i = 0; i < 2; i++) {
        cn_event_view_t v = view_of(col.ev[i].type, col.ev[i].has_room ? col.ev[i].room : NULL,
                                    col.ev[i].payload);
        size_t flen = 0;
        uint8_t *f = cn__event_frame(&v, col.ev[i].seq, 16, &flen);
        CU_ASSERT_PTR_NOT_NULL_FATAL(f);
        if (i == 0) {
            expect_frame_json(f + 16, flen, "order.created", NULL, "{\"id\":\"o1\"}", 42);
        } else {
            expect_frame_json(f + 16, flen, "order.\"quoted\"", "orders:o1", "null", 43);
        }
        free(f);
    }
    collector_free(&col);
    free(prec);
    free(list);
    cn__request_destroy(&req);
    cn__store_close(s);
}

/* ---- the persist record codec ---- */

static uint32_t
rd32le(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Encodes into an exactly sized heap buffer; checks size == written. */
static uint8_t *
persist_encode(const char *key, size_t keylen, const cn_record_t *rec, const uint8_t *events,
               size_t events_len, size_t *len)
{
    size_t size = cn__persist_record_size(keylen, rec, events_len), written = 0;
    uint8_t *buf = malloc(size);

    CU_ASSERT_PTR_NOT_NULL_FATAL(buf);
    CU_ASSERT_EQUAL_FATAL(
        cn__persist_record_encode(buf, size, key, keylen, rec, events, events_len, &written), 0);
    CU_ASSERT_EQUAL_FATAL(written, size);
    /* One byte less does not fit, whatever the kind. */
    for (size_t cap = 0; cap < size; cap++) {
        uint8_t *small = malloc(cap ? cap : 1);
        size_t w = 555;
        CU_ASSERT_PTR_NOT_NULL_FATAL(small);
        CU_ASSERT_EQUAL(
            cn__persist_record_encode(small, cap, key, keylen, rec, events, events_len, &w),
            CN_ETOOBIG);
        CU_ASSERT_EQUAL(w, 555);
        free(small);
    }
    *len = size;
    return buf;
}

static int
persist_decode_copy(const uint8_t *p, size_t len, cn_persist_record_t *out)
{
    uint8_t *c = dup_prefix(p, len);
    int rc = cn__persist_record_decode(c, len, out);

    free(c);
    return rc;
}

static void
test_persist_put(void)
{
    static const char key[] = "cnerium:response:op:k1";
    const size_t kl = sizeof(key) - 1;
    static const uint8_t empty_list[2] = {0, 0};
    cn_record_t rec = make_record(201, "{\"id\":7}"), dec;
    size_t reclen = cn__record_encoded_size(&rec), len, len2;
    uint8_t *buf = persist_encode(key, kl, &rec, NULL, 0, &len), *buf2, *longer;
    cn_persist_record_t r;

    CU_ASSERT_EQUAL(len, CN_PERSIST_PUT_HEADER + kl + reclen);
    CU_ASSERT_EQUAL(buf[0], 1);
    CU_ASSERT_EQUAL(buf[1], CN_PERSIST_PUT);
    CU_ASSERT_EQUAL((size_t)(buf[2] | buf[3] << 8), kl);
    CU_ASSERT_EQUAL(rd32le(buf + 4), reclen);
    CU_ASSERT_EQUAL(cn__persist_put_size(kl, &rec), len);

    memset(&r, 0x5a, sizeof(r));
    CU_ASSERT_EQUAL_FATAL(cn__persist_record_decode(buf, len, &r), 0);
    CU_ASSERT_EQUAL(r.kind, CN_PERSIST_PUT);
    CU_ASSERT_PTR_EQUAL(r.key, (const char *)buf + CN_PERSIST_PUT_HEADER);
    CU_ASSERT_EQUAL(r.keylen, kl);
    CU_ASSERT_EQUAL(memcmp(r.key, key, kl), 0);
    CU_ASSERT_PTR_EQUAL(r.rec, buf + CN_PERSIST_PUT_HEADER + kl);
    CU_ASSERT_EQUAL(r.reclen, reclen);
    CU_ASSERT_PTR_NULL(r.events);
    CU_ASSERT_EQUAL(r.events_len, 0);
    CU_ASSERT_EQUAL_FATAL(cn__record_decode(r.rec, r.reclen, &dec), 0);
    CU_ASSERT_EQUAL(dec.status, 201);
    CU_ASSERT_EQUAL(dec.body_len, rec.body_len);

    /* An empty event list makes no difference: still a plain put, same bytes. */
    CU_ASSERT_EQUAL(cn__persist_record_size(kl, &rec, 2), len);
    buf2 = persist_encode(key, kl, &rec, empty_list, 2, &len2);
    CU_ASSERT_EQUAL_FATAL(len2, len);
    CU_ASSERT_EQUAL(memcmp(buf, buf2, len), 0);
    free(buf2);

    /* Every truncation, and a trailing byte, is corrupt. */
    for (size_t cut = 0; cut < len; cut++)
        CU_ASSERT_EQUAL(persist_decode_copy(buf, cut, &r), CN_ECORRUPT);
    longer = malloc(len + 1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(longer);
    memcpy(longer, buf, len);
    longer[len] = 0;
    CU_ASSERT_EQUAL(cn__persist_record_decode(longer, len + 1, &r), CN_ECORRUPT);
    free(longer);
    free(buf);
}

static void
test_persist_put_events(void)
{
    static const char key[] = "cnerium:response:op:k2";
    const size_t kl = sizeof(key) - 1;
    cn_record_t rec = make_record(202, "{}");
    size_t reclen = cn__record_encoded_size(&rec), elen, len, body;
    uint8_t *events = specs_encode(several, ARRAY_LEN(several), &elen);
    uint8_t *buf = persist_encode(key, kl, &rec, events, elen, &len);
    cn_persist_record_t r;
    cn_event_view_t views[8];

    body = CN_PERSIST_PUT_HEADER + kl + reclen;
    CU_ASSERT_EQUAL(len, body + elen);
    CU_ASSERT_EQUAL(buf[1], CN_PERSIST_PUT_EVENTS);
    CU_ASSERT_EQUAL(rd32le(buf + 4), reclen);
    CU_ASSERT_EQUAL_FATAL(cn__persist_record_decode(buf, len, &r), 0);
    CU_ASSERT_EQUAL(r.kind, CN_PERSIST_PUT_EVENTS);
    CU_ASSERT_EQUAL(r.keylen, kl);
    CU_ASSERT_EQUAL(memcmp(r.key, key, kl), 0);
    CU_ASSERT_EQUAL(r.reclen, reclen);
    CU_ASSERT_PTR_EQUAL(r.events, buf + body);
    CU_ASSERT_EQUAL_FATAL(r.events_len, elen);
    CU_ASSERT_EQUAL(memcmp(r.events, events, elen), 0);
    CU_ASSERT_EQUAL_FATAL(decode_all(r.events, r.events_len, views, ARRAY_LEN(views)),
                          (long)ARRAY_LEN(several));
    for (size_t i = 0; i < ARRAY_LEN(several); i++)
        expect_view(&views[i], &several[i]);

    /* Truncations. The event list runs to the end of the record (it has no length of its
     * own), so a cut inside it is caught by the list: the record codec or the list must
     * refuse every one, and the header, key and record part refuse on their own. */
    for (size_t cut = 0; cut < len; cut++) {
        uint8_t *c = dup_prefix(buf, cut);
        int rc = cn__persist_record_decode(c, cut, &r);
        if (cut < body + 2) {
            CU_ASSERT_EQUAL(rc, CN_ECORRUPT);
        } else {
            CU_ASSERT(rc == CN_ECORRUPT || decode_all(r.events, r.events_len, NULL, 0) == -1);
        }
        free(c);
    }
    free(buf);
    free(events);
}

static void
test_persist_events_only(void)
{
    size_t elen, len, len2;
    uint8_t *events = specs_encode(one_room, 1, &elen);
    uint8_t *buf = persist_encode(NULL, 0, NULL, events, elen, &len), *buf2;
    cn_persist_record_t r;
    cn_event_view_t v;

    CU_ASSERT_EQUAL(len, CN_PERSIST_PUT_HEADER + elen);
    CU_ASSERT_EQUAL(buf[0], 1);
    CU_ASSERT_EQUAL(buf[1], CN_PERSIST_EVENTS);
    CU_ASSERT_EQUAL(buf[2] | buf[3] << 8, 0);
    CU_ASSERT_EQUAL(rd32le(buf + 4), 0);
    memset(&r, 0x5a, sizeof(r));
    CU_ASSERT_EQUAL_FATAL(cn__persist_record_decode(buf, len, &r), 0);
    CU_ASSERT_EQUAL(r.kind, CN_PERSIST_EVENTS);
    CU_ASSERT_PTR_NULL(r.key);
    CU_ASSERT_EQUAL(r.keylen, 0);
    CU_ASSERT_PTR_NULL(r.rec);
    CU_ASSERT_EQUAL(r.reclen, 0);
    CU_ASSERT_PTR_EQUAL(r.events, buf + CN_PERSIST_PUT_HEADER);
    CU_ASSERT_EQUAL_FATAL(r.events_len, elen);
    CU_ASSERT_EQUAL_FATAL(decode_all(r.events, r.events_len, &v, 1), 1);
    expect_view(&v, &one_room[0]);
    for (size_t cut = 0; cut < len; cut++) {
        uint8_t *c = dup_prefix(buf, cut);
        int rc = cn__persist_record_decode(c, cut, &r);
        if (cut < CN_PERSIST_PUT_HEADER + 2) {
            CU_ASSERT_EQUAL(rc, CN_ECORRUPT);
        } else {
            CU_ASSERT(rc == CN_ECORRUPT || decode_all(r.events, r.events_len, NULL, 0) == -1);
        }
        free(c);
    }

    /* A key passed without a record is not written: the header says 0. */
    {
        size_t size = CN_PERSIST_PUT_HEADER + elen, written = 0;
        uint8_t *out = malloc(size);
        CU_ASSERT_PTR_NOT_NULL_FATAL(out);
        CU_ASSERT_EQUAL(cn__persist_record_encode(out, size, "ignored", 7, NULL, events, elen,
                                                  &written),
                        0);
        CU_ASSERT_EQUAL(written, size);
        CU_ASSERT_EQUAL(memcmp(out, buf, size), 0);
        free(out);
    }

    /* No events and no record: an events record with an empty list. */
    CU_ASSERT_EQUAL(cn__persist_record_size(0, NULL, 0), CN_PERSIST_PUT_HEADER + 2);
    buf2 = persist_encode(NULL, 0, NULL, NULL, 0, &len2);
    CU_ASSERT_EQUAL_FATAL(len2, CN_PERSIST_PUT_HEADER + 2);
    CU_ASSERT_EQUAL(buf2[1], CN_PERSIST_EVENTS);
    CU_ASSERT_EQUAL_FATAL(cn__persist_record_decode(buf2, len2, &r), 0);
    CU_ASSERT_EQUAL(r.kind, CN_PERSIST_EVENTS);
    CU_ASSERT_EQUAL(r.events_len, 2);
    CU_ASSERT_EQUAL(decode_all(r.events, r.events_len, NULL, 0), 0);
    free(buf2);
    free(buf);
    free(events);
}

static void
test_persist_mismatches(void)
{
    static const char key[] = "k:m";
    cn_record_t rec = make_record(200, "m");
    size_t reclen = cn__record_encoded_size(&rec), elen, lpe, lp, lev;
    uint8_t *events = specs_encode(one_plain, 1, &elen);
    uint8_t *pe = persist_encode(key, 3, &rec, events, elen, &lpe);
    uint8_t *p = persist_encode(key, 3, &rec, NULL, 0, &lp);
    uint8_t *ev = persist_encode(NULL, 0, NULL, events, elen, &lev);
    uint8_t *c;
    cn_persist_record_t r;
    static const uint8_t bad_kinds[] = {0, 4, 5, 0x80, 0xff};
    static const uint8_t bad_versions[] = {0, 2, 0xff};

    /* Version and kind bytes. */
    for (size_t i = 0; i < ARRAY_LEN(bad_versions); i++) {
        c = dup_prefix(pe, lpe);
        c[0] = bad_versions[i];
        CU_ASSERT_EQUAL(cn__persist_record_decode(c, lpe, &r), CN_ECORRUPT);
        free(c);
    }
    for (size_t i = 0; i < ARRAY_LEN(bad_kinds); i++) {
        c = dup_prefix(pe, lpe);
        c[1] = bad_kinds[i];
        CU_ASSERT_EQUAL(cn__persist_record_decode(c, lpe, &r), CN_ECORRUPT);
        free(c);
        c = dup_prefix(ev, lev);
        c[1] = bad_kinds[i];
        CU_ASSERT_EQUAL(cn__persist_record_decode(c, lev, &r), CN_ECORRUPT);
        free(c);
    }
    /* A put with events after it claims to be a plain put: bytes left over. */
    c = dup_prefix(pe, lpe);
    c[1] = CN_PERSIST_PUT;
    CU_ASSERT_EQUAL(cn__persist_record_decode(c, lpe, &r), CN_ECORRUPT);
    /* ...or events only, with a key and a record. */
    c[1] = CN_PERSIST_EVENTS;
    CU_ASSERT_EQUAL(cn__persist_record_decode(c, lpe, &r), CN_ECORRUPT);
    free(c);
    /* A plain put claiming events has none (fewer than the 2 bytes of a count). */
    c = dup_prefix(p, lp);
    c[1] = CN_PERSIST_PUT_EVENTS;
    CU_ASSERT_EQUAL(cn__persist_record_decode(c, lp, &r), CN_ECORRUPT);
    c[1] = CN_PERSIST_EVENTS;
    CU_ASSERT_EQUAL(cn__persist_record_decode(c, lp, &r), CN_ECORRUPT);
    free(c);
    c = malloc(lp + 1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    memcpy(c, p, lp);
    c[lp] = 0;
    c[1] = CN_PERSIST_PUT_EVENTS;
    CU_ASSERT_EQUAL(cn__persist_record_decode(c, lp + 1, &r), CN_ECORRUPT);
    free(c);
    /* Events only with a key length or a record length. */
    c = dup_prefix(ev, lev);
    c[2] = 1;
    CU_ASSERT_EQUAL(cn__persist_record_decode(c, lev, &r), CN_ECORRUPT);
    c[2] = 0;
    c[4] = 1;
    CU_ASSERT_EQUAL(cn__persist_record_decode(c, lev, &r), CN_ECORRUPT);
    c[4] = 0;
    CU_ASSERT_EQUAL(cn__persist_record_decode(c, lev, &r), 0);
    /* An events record claiming to be a put carries bytes a put cannot have. */
    c[1] = CN_PERSIST_PUT;
    CU_ASSERT_EQUAL(cn__persist_record_decode(c, lev, &r), CN_ECORRUPT);
    free(c);
    /* Lengths running past the end. */
    c = dup_prefix(p, lp);
    c[2] = 0xff;
    c[3] = 0xff;
    CU_ASSERT_EQUAL(cn__persist_record_decode(c, lp, &r), CN_ECORRUPT);
    c[2] = 3;
    c[3] = 0;
    c[4] = (uint8_t)(reclen + 1);
    c[5] = (uint8_t)((reclen + 1) >> 8);
    CU_ASSERT_EQUAL(cn__persist_record_decode(c, lp, &r), CN_ECORRUPT);
    c[4] = c[5] = c[6] = c[7] = 0xff;
    CU_ASSERT_EQUAL(cn__persist_record_decode(c, lp, &r), CN_ECORRUPT);
    c[4] = (uint8_t)(reclen - 1);
    c[5] = (uint8_t)((reclen - 1) >> 8);
    c[6] = c[7] = 0;
    CU_ASSERT_EQUAL(cn__persist_record_decode(c, lp, &r), CN_ECORRUPT);
    free(c);
    c = dup_prefix(pe, lpe);
    /* The record length swallowing all but one byte of the events. */
    {
        size_t rl = reclen + elen - 1;
        c[4] = (uint8_t)rl;
        c[5] = (uint8_t)(rl >> 8);
        CU_ASSERT_EQUAL(cn__persist_record_decode(c, lpe, &r), CN_ECORRUPT);
    }
    free(c);

    /* Encode refuses a key longer than the format's 16 bits. */
    {
        size_t big = (size_t)UINT16_MAX + 1, w = 555;
        char *bigkey = malloc(big);
        size_t cap = cn__persist_record_size(big, &rec, 0);
        uint8_t *out = malloc(cap);
        CU_ASSERT_FATAL(bigkey && out);
        memset(bigkey, 'k', big);
        CU_ASSERT_EQUAL(cn__persist_record_encode(out, cap, bigkey, big, &rec, NULL, 0, &w),
                        CN_ETOOBIG);
        CU_ASSERT_EQUAL(w, 555);
        free(out);
        free(bigkey);
    }
    free(pe);
    free(p);
    free(ev);
    free(events);
}

int
main(void)
{
    static const unit_test_t tests[] = {
        {"emit keeps order and owns its copies", test_emit_order},
        {"emit rejects bad types and rooms, frees the payload", test_emit_invalid_names},
        {"emit: the 65th event is CN_ETOOBIG", test_emit_count_limit},
        {"emit: a payload over 256 KiB is CN_ETOOBIG", test_emit_payload_limit},
        {"emit: NULL payload is null", test_emit_null_payload},
        {"list encode/decode round trip", test_list_roundtrip},
        {"list wire format", test_list_wire_format},
        {"list: every truncation fails to decode", test_list_truncations},
        {"list encode into a small buffer is CN_ETOOBIG", test_list_encode_too_small},
        {"stored form round trip and truncations", test_stored_form},
        {"frame: exact bytes", test_frame_simple},
        {"frame: a 17-digit seq", test_frame_large_seq},
        {"frame: names escaped, frame parses", test_frame_escaping},
        {"frame: worst-case escaping and payload", test_frame_worst_case},
        {"frame: headroom", test_frame_headroom},
        {"store: the events epoch is made once, kept, new per store", test_store_events_epoch},
        {"utf8: validation and U+FFFD replacement", test_utf8_validate_and_replace},
        {"emit: ill-formed UTF-8 is -EILSEQ; failures mark the request",
         test_emit_rejects_ill_formed_utf8},
        {"frame: ill-formed UTF-8 of a stored event is replaced",
         test_frame_replaces_ill_formed_utf8},
        {"store: apply numbers events gaplessly, persisted", test_store_apply_numbering},
        {"store: skipped items skip their events, no gap", test_store_apply_skips_corrupt},
        {"store: put (sync path) numbers after the meta", test_store_put_events},
        {"store: a failed apply leaves meta unchanged", test_store_apply_failure_keeps_meta},
        {"store: events_read from, max, stop", test_events_read},
        {"store: events bounds", test_events_bounds},
        {"store: prune by count", test_prune_by_count},
        {"store: prune by age", test_prune_by_age},
        {"emit to frame through persist record and store", test_emit_to_frame},
        {"persist record: put", test_persist_put},
        {"persist record: put with events", test_persist_put_events},
        {"persist record: events only", test_persist_events_only},
        {"persist record: kind and length mismatches", test_persist_mismatches},
        {NULL, NULL},
    };
    int rc;

    if (unit_tempdir("event", tmpdir, sizeof(tmpdir))) {
        perror("mkdtemp");
        return 1;
    }
    rc = unit_run("event", tests);
    if (unit_rmtree(tmpdir))
        fprintf(stderr, "warning: could not remove %s\n", tmpdir);
    return rc;
}
