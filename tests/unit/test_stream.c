/*
 * tests/unit/test_stream.c - event streams: the append and log-entry byte layouts, the
 * request-side API (cn_stream_append and its limits), and the store's conformance: every
 * expected-version mode, conflicts against earlier records of the same transaction,
 * versions and global positions without gaps, a refused record writing nothing at all,
 * paging both ways, the global log and the catch-up fold, and the same decisions when
 * the same records are applied again (WAL recovery).
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cnerium/error.h"
#include "cnerium/stream.h"
#include "http/request_internal.h"
#include "realtime/event.h"
#include "store/store.h"
#include "stream/stream.h"
#include "unit.h"

#define MAP_SIZE ((size_t)64 << 20)

static char tmpdir[256];
static int store_seq;

static cn_store_t *
open_fresh(void)
{
    char dir[512];
    cn_store_t *s = NULL;

    snprintf(dir, sizeof(dir), "%s/store-%d", tmpdir, store_seq++);
    CU_ASSERT_EQUAL_FATAL(cn__store_open_flags(dir, MAP_SIZE, CN_STORE_NOSYNC, &s), 0);
    return s;
}

/* A request as a durable handler sees it, reading from s. */
static void
durable_req(cn_request_t *req, cn_store_t *s)
{
    memset(req, 0, sizeof(*req));
    req->is_durable = 1;
    req->store = s;
    req->stream_event_max = 64 * 1024;
}

/* Encodes the appends buffered in req (then cleared) into a malloc'd list. */
static uint8_t *
take_appends(cn_request_t *req, size_t *len)
{
    size_t need = cn__appends_encoded_size(req->appends);
    uint8_t *buf = malloc(need);

    CU_ASSERT_PTR_NOT_NULL_FATAL(buf);
    CU_ASSERT_EQUAL_FATAL(cn__appends_encode(req->appends, buf, need, len), 0);
    CU_ASSERT_EQUAL(*len, need);
    cn__appends_free(req->appends);
    req->appends = NULL;
    req->appends_tail = NULL;
    req->nappends = 0;
    return buf;
}

/* One list with a single append. */
static uint8_t *
one_append(const char *stream, int64_t expected, const char *type, const char *json,
           size_t *len)
{
    cn_request_t req;

    durable_req(&req, NULL);
    CU_ASSERT_EQUAL_FATAL(cn_stream_append(&req, stream, expected, type, cJSON_Parse(json)),
                          0);
    return take_appends(&req, len);
}

typedef struct held {
    uint8_t *rec;
    size_t reclen;
    char key[64];
} held_t;

/* A raw item: a stored response under key with the given appends (and no events). */
static void
make_item(cn_store_raw_put_t *it, held_t *h, const char *key, const uint8_t *appends,
          size_t appends_len)
{
    cn_record_t r = {.status = 201, .created_ms = 1, .expires_ms = UINT64_MAX / 2,
                     .body = "{}", .body_len = 2};

    snprintf(h->key, sizeof(h->key), "%s", key);
    h->reclen = cn__record_encoded_size(&r);
    h->rec = malloc(h->reclen);
    CU_ASSERT_PTR_NOT_NULL_FATAL(h->rec);
    CU_ASSERT_EQUAL_FATAL(cn__record_encode(&r, h->rec, h->reclen, &h->reclen), 0);
    memset(it, 0, sizeof(*it));
    it->key = h->key;
    it->keylen = strlen(h->key);
    it->bytes = h->rec;
    it->len = h->reclen;
    it->appends = appends;
    it->appends_len = appends_len;
}

/* Applies one item with a single append; returns its status. */
static int
apply_one(cn_store_t *s, cn_store_meta_t *meta, const char *key, const char *stream,
          int64_t expected)
{
    size_t len;
    uint8_t *list = one_append(stream, expected, "Happened", "{\"n\":1}", &len);
    cn_store_raw_put_t it;
    held_t h;

    make_item(&it, &h, key, list, len);
    CU_ASSERT_EQUAL_FATAL(cn__store_apply(s, &it, 1, meta), 0);
    free(list);
    free(h.rec);
    return it.status;
}

static int
stored(cn_store_t *s, const char *key)
{
    cn_record_t rec;
    void *buf = NULL;
    int rc = cn__store_get(s, key, strlen(key), 0, &rec, &buf);

    free(buf);
    return rc == 0;
}

static uint64_t
version_of(cn_store_t *s, const char *stream)
{
    uint64_t v = 99;

    CU_ASSERT_EQUAL(cn__store_stream_version(s, stream, strlen(stream), &v), 0);
    return v;
}

static uint64_t
head_of(cn_store_t *s)
{
    uint64_t p = 99;

    CU_ASSERT_EQUAL(cn__store_log_head(s, &p), 0);
    return p;
}

/* ---- names and expectations ---- */

static void
test_names(void)
{
    char id[300];

    CU_ASSERT(cn__stream_id_valid("order-1", 7));
    CU_ASSERT(cn__stream_id_valid("a b:c\"d", 7)); /* printable ASCII, space included */
    CU_ASSERT_FALSE(cn__stream_id_valid("", 0));
    CU_ASSERT_FALSE(cn__stream_id_valid("a\0b", 3));
    CU_ASSERT_FALSE(cn__stream_id_valid("a\x7f", 2));
    CU_ASSERT_FALSE(cn__stream_id_valid("\xc3\xa9", 2));
    memset(id, 'x', sizeof(id));
    CU_ASSERT(cn__stream_id_valid(id, 255));
    CU_ASSERT_FALSE(cn__stream_id_valid(id, 256));
    CU_ASSERT(cn__stream_type_valid("OrderPlaced", 11));
    CU_ASSERT(cn__stream_type_valid("order.placed_v-2", 16));
    CU_ASSERT_FALSE(cn__stream_type_valid("order placed", 12));
    CU_ASSERT_FALSE(cn__stream_type_valid("a/b", 3));
    CU_ASSERT(cn__stream_type_valid(id, 64));
    CU_ASSERT_FALSE(cn__stream_type_valid(id, 65));
    CU_ASSERT(cn__stream_expected_valid(CN_STREAM_ANY));
    CU_ASSERT(cn__stream_expected_valid(CN_STREAM_NO_STREAM));
    CU_ASSERT(cn__stream_expected_valid(CN_STREAM_EXISTS));
    CU_ASSERT(cn__stream_expected_valid(0));
    CU_ASSERT(cn__stream_expected_valid(INT64_MAX));
    CU_ASSERT_FALSE(cn__stream_expected_valid(-4));
    CU_ASSERT_FALSE(cn__stream_expected_valid(INT64_MIN));
}

static void
test_expected_holds(void)
{
    CU_ASSERT(cn__stream_expected_holds(CN_STREAM_ANY, 0));
    CU_ASSERT(cn__stream_expected_holds(CN_STREAM_ANY, 7));
    CU_ASSERT(cn__stream_expected_holds(CN_STREAM_NO_STREAM, 0));
    CU_ASSERT_FALSE(cn__stream_expected_holds(CN_STREAM_NO_STREAM, 1));
    CU_ASSERT_FALSE(cn__stream_expected_holds(CN_STREAM_EXISTS, 0));
    CU_ASSERT(cn__stream_expected_holds(CN_STREAM_EXISTS, 1));
    CU_ASSERT(cn__stream_expected_holds(0, 0));
    CU_ASSERT_FALSE(cn__stream_expected_holds(0, 1));
    CU_ASSERT(cn__stream_expected_holds(3, 3));
    CU_ASSERT_FALSE(cn__stream_expected_holds(3, 4));
    CU_ASSERT_FALSE(cn__stream_expected_holds(4, 3));
}

/* ---- the request-side API ---- */

static void
test_append_api_limits(void)
{
    cn_request_t req;
    char big[300];
    const char *rooms[5] = {"a", "b", "c", "d", "e"};
    const char *bad_room[1] = {"a\"b"};

    durable_req(&req, NULL);
    CU_ASSERT_EQUAL(cn_stream_append(NULL, "s", CN_STREAM_ANY, "T", NULL), -EINVAL);
    CU_ASSERT_EQUAL(cn_stream_append(&req, "", CN_STREAM_ANY, "T", NULL), -EINVAL);
    CU_ASSERT_EQUAL(cn_stream_append(&req, NULL, CN_STREAM_ANY, "T", NULL), -EINVAL);
    CU_ASSERT_EQUAL(cn_stream_append(&req, "s", CN_STREAM_ANY, "bad type", NULL), -EINVAL);
    CU_ASSERT_EQUAL(cn_stream_append(&req, "s", -9, "T", NULL), -EINVAL);
    memset(big, 'x', sizeof(big));
    big[256] = '\0';
    CU_ASSERT_EQUAL(cn_stream_append(&req, big, CN_STREAM_ANY, "T", NULL), -EINVAL);
    CU_ASSERT_EQUAL(cn_stream_append_publish(&req, "s", CN_STREAM_ANY, "T", NULL, rooms, 5),
                    -EINVAL);
    CU_ASSERT_EQUAL(
        cn_stream_append_publish(&req, "s", CN_STREAM_ANY, "T", NULL, bad_room, 1), -EINVAL);
    CU_ASSERT_EQUAL(req.nappends, 0);
    /* Each failure marks the request: it must not be stored without its append. */
    CU_ASSERT(req.events_failed);

    durable_req(&req, NULL);
    req.stream_event_max = 16;
    CU_ASSERT_EQUAL(cn_stream_append(&req, "s", CN_STREAM_ANY, "T",
                                     cJSON_CreateString("more than sixteen bytes")),
                    CN_ETOOBIG);
    CU_ASSERT_EQUAL(cn_stream_append(&req, "s", CN_STREAM_ANY, "T",
                                     cJSON_CreateString("\xff\xfe")),
                    -EILSEQ);
    CU_ASSERT(req.events_failed);
    CU_ASSERT_EQUAL(req.nappends, 0);

    /* Outside a durable handler there is no record to carry an append. */
    durable_req(&req, NULL);
    req.is_durable = 0;
    CU_ASSERT_EQUAL(cn_stream_append(&req, "s", CN_STREAM_ANY, "T", NULL), -EINVAL);

    durable_req(&req, NULL);
    for (int i = 0; i < CN_STREAM_APPENDS_MAX; i++)
        CU_ASSERT_EQUAL(cn_stream_append(&req, "s", CN_STREAM_ANY, "T", NULL), 0);
    CU_ASSERT_EQUAL(cn_stream_append(&req, "s", CN_STREAM_ANY, "T", NULL), CN_ETOOBIG);
    CU_ASSERT_FALSE(req.appends_conditional);
    cn__appends_free(req.appends);

    durable_req(&req, NULL);
    CU_ASSERT_EQUAL(cn_stream_append(&req, "s", 0, "T", NULL), 0);
    CU_ASSERT(req.appends_conditional);
    CU_ASSERT_FALSE(req.events_failed);
    CU_ASSERT_EQUAL(cn_stream_conflict_status(&req, 412), 0);
    CU_ASSERT_EQUAL(req.conflict_status, 412);
    CU_ASSERT_EQUAL(cn_stream_conflict_status(&req, 500), -EINVAL);
    CU_ASSERT_EQUAL(cn_stream_conflict_status(&req, 200), -EINVAL);
    CU_ASSERT_EQUAL(cn_stream_retry_on_conflict(&req, CN_STREAM_RERUNS_MAX), 0);
    CU_ASSERT_EQUAL(req.reruns_allowed, CN_STREAM_RERUNS_MAX);
    CU_ASSERT_EQUAL(cn_stream_retry_on_conflict(&req, CN_STREAM_RERUNS_MAX + 1), -EINVAL);
    CU_ASSERT_EQUAL(cn_stream_reruns(&req), 0);
    req.is_durable = 0;
    CU_ASSERT_EQUAL(cn_stream_retry_on_conflict(&req, 1), -EINVAL);
    cn__appends_free(req.appends);
}

/* ---- byte layouts ---- */

static void
test_appends_roundtrip(void)
{
    cn_request_t req;
    const char *rooms[2] = {"orders", "order:1"};
    const uint8_t *cur;
    cn_append_view_t a;
    uint8_t *list;
    size_t len;

    durable_req(&req, NULL);
    CU_ASSERT_EQUAL(cn_stream_append(&req, "order-1", CN_STREAM_NO_STREAM, "OrderPlaced",
                                     cJSON_Parse("{\"total\":5}")),
                    0);
    CU_ASSERT_EQUAL(cn_stream_append_publish(&req, "order-1", 1, "OrderShipped", NULL, rooms,
                                             2),
                    0);
    list = take_appends(&req, &len);
    CU_ASSERT_EQUAL(cn__appends_begin(list, len, &cur), 2);
    CU_ASSERT_EQUAL_FATAL(cn__appends_next(&cur, list + len, &a), 0);
    CU_ASSERT_EQUAL(a.stream_len, 7);
    CU_ASSERT_NSTRING_EQUAL(a.stream, "order-1", 7);
    CU_ASSERT_NSTRING_EQUAL(a.type, "OrderPlaced", 11);
    CU_ASSERT_EQUAL(a.expected, CN_STREAM_NO_STREAM);
    CU_ASSERT_NSTRING_EQUAL(a.data, "{\"total\":5}", a.data_len);
    CU_ASSERT_EQUAL(a.nrooms, 0);
    CU_ASSERT_EQUAL_FATAL(cn__appends_next(&cur, list + len, &a), 0);
    CU_ASSERT_EQUAL(a.expected, 1);
    CU_ASSERT_NSTRING_EQUAL(a.data, "null", 4);
    CU_ASSERT_EQUAL(a.nrooms, 2);
    CU_ASSERT_NSTRING_EQUAL(a.rooms[1], "order:1", a.room_lens[1]);
    CU_ASSERT_PTR_EQUAL(cur, list + len);

    /* Every truncation is refused, never read past. */
    for (size_t cut = 2; cut < len; cut++) {
        const uint8_t *c;
        int bad = 0;
        long n = cn__appends_begin(list, cut, &c);
        for (long i = 0; i < n && !bad; i++)
            bad = cn__appends_next(&c, list + cut, &a) != 0;
        CU_ASSERT(bad);
    }
    /* A stream id byte that is not printable is refused (ids cannot hold the 0x00 that
     * separates an id from its version in the index). */
    list[2 + CN_APPEND_HEADER] = 0;
    CU_ASSERT_EQUAL(cn__appends_begin(list, len, &cur), 2);
    CU_ASSERT_EQUAL(cn__appends_next(&cur, list + len, &a), CN_ECORRUPT);
    free(list);
}

static void
test_log_entry_and_record_roundtrip(void)
{
    cn_log_view_t e = {42, 3, "s-1", 3, "T", 1, "[1,2]", 5}, d;
    uint8_t buf[128], rec[512], *list;
    cn_record_t r = {.status = 200, .body = "ok", .body_len = 2};
    cn_persist_record_t pr;
    size_t n, len;

    CU_ASSERT_EQUAL(cn__log_entry_size(&e), CN_LOG_HEADER + 9);
    cn__log_entry_encode(&e, buf);
    CU_ASSERT_EQUAL_FATAL(cn__log_entry_decode(buf, cn__log_entry_size(&e), &d), 0);
    CU_ASSERT_EQUAL(d.created_ms, 42);
    CU_ASSERT_EQUAL(d.version, 3);
    CU_ASSERT_NSTRING_EQUAL(d.stream, "s-1", d.stream_len);
    CU_ASSERT_NSTRING_EQUAL(d.data, "[1,2]", d.data_len);
    for (size_t cut = 0; cut < cn__log_entry_size(&e); cut++)
        CU_ASSERT_EQUAL(cn__log_entry_decode(buf, cut, &d), CN_ECORRUPT);

    list = one_append("s", CN_STREAM_ANY, "T", "1", &len);
    n = cn__persist_streams_size(3, &r, 0, len);
    CU_ASSERT_FATAL(n <= sizeof(rec));
    CU_ASSERT_EQUAL_FATAL(cn__persist_streams_encode(rec, sizeof(rec), "k:1", 3, &r, NULL, 0,
                                                     list, len, &n),
                          0);
    CU_ASSERT_EQUAL(n, cn__persist_streams_size(3, &r, 0, len));
    CU_ASSERT_EQUAL_FATAL(cn__persist_record_decode(rec, n, &pr), 0);
    CU_ASSERT_EQUAL(pr.kind, CN_PERSIST_PUT_STREAMS);
    CU_ASSERT_NSTRING_EQUAL(pr.key, "k:1", 3);
    CU_ASSERT_PTR_NULL(pr.events);
    CU_ASSERT_EQUAL(pr.appends_len, len);
    CU_ASSERT_EQUAL(memcmp(pr.appends, list, len), 0);
    for (size_t cut = 0; cut < n; cut++) {
        /* Shorter payloads either fail or end before the appends' first byte. */
        if (cn__persist_record_decode(rec, cut, &pr) == 0)
            CU_ASSERT(pr.appends_len < len);
    }
    free(list);
}

/* ---- the store ---- */

static void
test_expected_modes(void)
{
    cn_store_t *s = open_fresh();
    cn_store_meta_t meta = {0};

    /* exists / exact on a missing stream: refused, nothing written */
    CU_ASSERT_EQUAL(apply_one(s, &meta, "k:1", "a", CN_STREAM_EXISTS), CN_ECONFLICT);
    CU_ASSERT_EQUAL(apply_one(s, &meta, "k:2", "a", 1), CN_ECONFLICT);
    CU_ASSERT_FALSE(stored(s, "k:1"));
    CU_ASSERT_FALSE(stored(s, "k:2"));
    CU_ASSERT_EQUAL(version_of(s, "a"), 0);
    CU_ASSERT_EQUAL(head_of(s), 0);
    /* no stream, then exact, any, exists */
    CU_ASSERT_EQUAL(apply_one(s, &meta, "k:3", "a", CN_STREAM_NO_STREAM), 0);
    CU_ASSERT_EQUAL(version_of(s, "a"), 1);
    CU_ASSERT_EQUAL(apply_one(s, &meta, "k:4", "a", CN_STREAM_NO_STREAM), CN_ECONFLICT);
    CU_ASSERT_EQUAL(apply_one(s, &meta, "k:5", "a", 0), CN_ECONFLICT);
    CU_ASSERT_EQUAL(apply_one(s, &meta, "k:6", "a", 1), 0);
    CU_ASSERT_EQUAL(apply_one(s, &meta, "k:7", "a", 1), CN_ECONFLICT);
    CU_ASSERT_EQUAL(apply_one(s, &meta, "k:8", "a", CN_STREAM_ANY), 0);
    CU_ASSERT_EQUAL(apply_one(s, &meta, "k:9", "a", CN_STREAM_EXISTS), 0);
    CU_ASSERT_EQUAL(apply_one(s, &meta, "k:10", "b", 0), 0); /* 0 = no stream yet */
    CU_ASSERT_EQUAL(version_of(s, "a"), 4);
    CU_ASSERT_EQUAL(version_of(s, "b"), 1);
    CU_ASSERT_EQUAL(head_of(s), 5);
    CU_ASSERT(stored(s, "k:3") && stored(s, "k:6") && stored(s, "k:10"));
    CU_ASSERT_FALSE(stored(s, "k:4") || stored(s, "k:5") || stored(s, "k:7"));
    cn__store_close(s);
}

/* Records earlier in the same transaction count; a refused record writes nothing of
 * itself (response, events, appends) and does not disturb the records around it. */
static void
test_conflicts_within_a_batch(void)
{
    cn_store_t *s = open_fresh();
    cn_store_meta_t meta = {0};
    cn_store_raw_put_t it[3];
    held_t h[3];
    uint8_t *l[3], events[64];
    size_t len[3], elen;
    cn_event_t ev = {"order.created", NULL, "1", 1, NULL};

    l[0] = one_append("x", CN_STREAM_NO_STREAM, "A", "1", &len[0]);
    l[1] = one_append("x", CN_STREAM_NO_STREAM, "B", "2", &len[1]);
    l[2] = one_append("x", 1, "C", "3", &len[2]);
    CU_ASSERT_EQUAL_FATAL(cn__events_encode(&ev, events, sizeof(events), &elen), 0);
    for (int i = 0; i < 3; i++) {
        char key[16];
        snprintf(key, sizeof(key), "k:%d", i);
        make_item(&it[i], &h[i], key, l[i], len[i]);
        it[i].events = events;
        it[i].events_len = elen;
    }
    CU_ASSERT_EQUAL_FATAL(cn__store_apply(s, it, 3, &meta), 0);
    CU_ASSERT_EQUAL(it[0].status, 0);
    CU_ASSERT_EQUAL(it[1].status, CN_ECONFLICT);
    CU_ASSERT_EQUAL(it[2].status, 0);
    CU_ASSERT(stored(s, "k:0") && stored(s, "k:2"));
    CU_ASSERT_FALSE(stored(s, "k:1"));
    CU_ASSERT_EQUAL(version_of(s, "x"), 2);
    CU_ASSERT_EQUAL(head_of(s), 2);
    /* Two emitted events, not three: the refused record's event is not stored. */
    CU_ASSERT_EQUAL(meta.event_seq, 2);
    for (int i = 0; i < 3; i++) {
        free(l[i]);
        free(h[i].rec);
    }
    cn__store_close(s);
}

/* Several appends of one request to one stream: each sees the one before. */
static void
test_appends_within_one_record(void)
{
    cn_store_t *s = open_fresh();
    cn_store_meta_t meta = {0};
    cn_store_raw_put_t it;
    cn_request_t req;
    uint8_t *list;
    size_t len;
    held_t h;

    durable_req(&req, s);
    CU_ASSERT_EQUAL(cn_stream_append(&req, "y", CN_STREAM_NO_STREAM, "A", NULL), 0);
    CU_ASSERT_EQUAL(cn_stream_append(&req, "y", 1, "B", NULL), 0);
    CU_ASSERT_EQUAL(cn_stream_append(&req, "z", CN_STREAM_NO_STREAM, "C", NULL), 0);
    CU_ASSERT_EQUAL(cn_stream_append(&req, "y", 2, "D", NULL), 0);
    list = take_appends(&req, &len);
    make_item(&it, &h, "k:1", list, len);
    CU_ASSERT_EQUAL_FATAL(cn__store_apply(s, &it, 1, &meta), 0);
    CU_ASSERT_EQUAL(it.status, 0);
    CU_ASSERT_EQUAL(version_of(s, "y"), 3);
    CU_ASSERT_EQUAL(version_of(s, "z"), 1);
    free(list);
    free(h.rec);

    /* The last of four expects a version the third does not leave: all four refused. */
    durable_req(&req, s);
    CU_ASSERT_EQUAL(cn_stream_append(&req, "z", 1, "E", NULL), 0);
    CU_ASSERT_EQUAL(cn_stream_append(&req, "y", 3, "F", NULL), 0);
    CU_ASSERT_EQUAL(cn_stream_append(&req, "z", 1, "G", NULL), 0);
    list = take_appends(&req, &len);
    make_item(&it, &h, "k:2", list, len);
    CU_ASSERT_EQUAL_FATAL(cn__store_apply(s, &it, 1, &meta), 0);
    CU_ASSERT_EQUAL(it.status, CN_ECONFLICT);
    CU_ASSERT_EQUAL(version_of(s, "y"), 3);
    CU_ASSERT_EQUAL(version_of(s, "z"), 1);
    CU_ASSERT_EQUAL(head_of(s), 4);
    free(list);
    free(h.rec);
    cn__store_close(s);
}

/* The synced path (--single-process) refuses the same way and writes nothing. */
static void
test_sync_put_conflict(void)
{
    cn_store_t *s = open_fresh();
    cn_record_t r = {.status = 201, .expires_ms = UINT64_MAX / 2, .body = "{}", .body_len = 2};
    size_t len;
    uint8_t *list = one_append("p", CN_STREAM_NO_STREAM, "A", "{}", &len);
    cn_store_put_t item = {"k:1", 3, &r, NULL, 0, list, len, NULL};

    CU_ASSERT_EQUAL(cn__store_put(s, &item, 1), 0);
    CU_ASSERT_EQUAL(version_of(s, "p"), 1);
    item.key = "k:2";
    CU_ASSERT_EQUAL(cn__store_put(s, &item, 1), CN_ECONFLICT);
    CU_ASSERT_FALSE(stored(s, "k:2"));
    CU_ASSERT_EQUAL(version_of(s, "p"), 1);
    CU_ASSERT_EQUAL(head_of(s), 1);
    free(list);
    cn__store_close(s);
}

static void
test_paging(void)
{
    cn_store_t *s = open_fresh();
    cn_store_meta_t meta = {0};
    cn_stream_page_t pg;
    cn_request_t req;

    for (int i = 0; i < 25; i++) {
        char key[16];
        snprintf(key, sizeof(key), "k:%d", i);
        CU_ASSERT_EQUAL(apply_one(s, &meta, key, i % 2 ? "odd" : "even", i / 2), 0);
    }
    CU_ASSERT_EQUAL(version_of(s, "even"), 13);
    CU_ASSERT_EQUAL(version_of(s, "odd"), 12);
    durable_req(&req, s);

    CU_ASSERT_EQUAL_FATAL(cn_stream_read(&req, "even", 1, CN_STREAM_FORWARD, 5, &pg), 0);
    CU_ASSERT_EQUAL(pg.count, 5);
    CU_ASSERT(pg.more);
    CU_ASSERT_EQUAL(pg.next, 6);
    for (size_t i = 0; i < pg.count; i++) {
        CU_ASSERT_EQUAL(pg.events[i].version, i + 1);
        CU_ASSERT_EQUAL(pg.events[i].position, 2 * i + 1); /* interleaved with "odd" */
        CU_ASSERT_STRING_EQUAL(pg.events[i].stream_id, "even");
        CU_ASSERT_STRING_EQUAL(pg.events[i].type, "Happened");
        CU_ASSERT_STRING_EQUAL(pg.events[i].data, "{\"n\":1}");
    }
    cn_stream_page_free(&pg);

    CU_ASSERT_EQUAL_FATAL(cn_stream_read(&req, "even", 11, CN_STREAM_FORWARD, 5, &pg), 0);
    CU_ASSERT_EQUAL(pg.count, 3);
    CU_ASSERT_FALSE(pg.more);
    cn_stream_page_free(&pg);

    CU_ASSERT_EQUAL_FATAL(
        cn_stream_read(&req, "odd", UINT64_MAX, CN_STREAM_BACKWARD, 5, &pg), 0);
    CU_ASSERT_EQUAL(pg.count, 5);
    CU_ASSERT_EQUAL(pg.events[0].version, 12);
    CU_ASSERT_EQUAL(pg.events[4].version, 8);
    CU_ASSERT(pg.more);
    CU_ASSERT_EQUAL(pg.next, 7);
    cn_stream_page_free(&pg);

    CU_ASSERT_EQUAL_FATAL(cn_stream_read(&req, "odd", 3, CN_STREAM_BACKWARD, 5, &pg), 0);
    CU_ASSERT_EQUAL(pg.count, 3);
    CU_ASSERT_EQUAL(pg.events[2].version, 1);
    CU_ASSERT_FALSE(pg.more);
    cn_stream_page_free(&pg);

    /* A prefix of another stream's id is another stream. */
    CU_ASSERT_EQUAL_FATAL(cn_stream_read(&req, "eve", 1, CN_STREAM_FORWARD, 5, &pg), 0);
    CU_ASSERT_EQUAL(pg.count, 0);
    cn_stream_page_free(&pg);

    CU_ASSERT_EQUAL(cn_stream_read(&req, "even", 1, CN_STREAM_FORWARD, 0, &pg), -EINVAL);
    CU_ASSERT_EQUAL(cn_stream_read(&req, "even", 1, CN_STREAM_FORWARD, 1001, &pg), -EINVAL);

    CU_ASSERT_EQUAL_FATAL(cn_log_read(&req, 20, 100, &pg), 0);
    CU_ASSERT_EQUAL(pg.count, 6);
    for (size_t i = 0; i < pg.count; i++)
        CU_ASSERT_EQUAL(pg.events[i].position, 20 + i);
    CU_ASSERT_FALSE(pg.more);
    cn_stream_page_free(&pg);
    cn__store_close(s);
}

typedef struct counter {
    uint64_t seen, last, stop_at;
} counter_t;

static int
count_fold(const cn_stream_event_t *ev, void *state)
{
    counter_t *c = state;

    if (c->stop_at && ev->position == c->stop_at)
        return 7;
    CU_ASSERT_EQUAL(ev->position, c->last + 1); /* gapless, in order */
    c->last = ev->position;
    c->seen++;
    return 0;
}

static void
test_catch_up(void)
{
    cn_store_t *s = open_fresh();
    cn_store_meta_t meta = {0};
    cn_request_t req;
    counter_t c = {0};
    uint64_t pos = 0;

    for (int i = 0; i < 40; i++) {
        char key[16], stream[16];
        snprintf(key, sizeof(key), "k:%d", i);
        snprintf(stream, sizeof(stream), "s-%d", i % 7);
        CU_ASSERT_EQUAL(apply_one(s, &meta, key, stream, CN_STREAM_ANY), 0);
    }
    durable_req(&req, s);
    CU_ASSERT_EQUAL(cn_log_catch_up(&req, &pos, 15, count_fold, &c), 0);
    CU_ASSERT_EQUAL(pos, 15);
    CU_ASSERT_EQUAL(c.seen, 15);
    c.stop_at = 31;
    CU_ASSERT_EQUAL(cn_log_catch_up(&req, &pos, 0, count_fold, &c), 7);
    CU_ASSERT_EQUAL(pos, 30);
    c.stop_at = 0;
    CU_ASSERT_EQUAL(cn_log_catch_up(&req, &pos, 0, count_fold, &c), 0);
    CU_ASSERT_EQUAL(pos, 40);
    CU_ASSERT_EQUAL(c.seen, 40);
    CU_ASSERT_EQUAL(cn_log_catch_up(&req, &pos, 0, count_fold, &c), 0);
    CU_ASSERT_EQUAL(c.seen, 40);
    cn__store_close(s);
}

/* The same records applied to the same state decide the same way: WAL recovery after a
 * crash between the WAL write and the apply reaches the state the apply would have. */
static void
test_apply_is_deterministic(void)
{
    cn_store_t *a = open_fresh(), *b = open_fresh();
    cn_store_meta_t ma = {0}, mb = {0};
    const int64_t exp[] = {CN_STREAM_NO_STREAM, 1, 1, CN_STREAM_ANY, 3, CN_STREAM_EXISTS,
                           CN_STREAM_NO_STREAM, 4, 5};
    enum { N = sizeof(exp) / sizeof(exp[0]) };
    cn_store_raw_put_t ia[N], ib[N];
    uint8_t *l[N];
    size_t len[N];
    held_t ha[N], hb[N];

    for (int i = 0; i < N; i++) {
        char key[16];
        snprintf(key, sizeof(key), "k:%d", i);
        l[i] = one_append("d", exp[i], "T", "{}", &len[i]);
        make_item(&ia[i], &ha[i], key, l[i], len[i]);
        make_item(&ib[i], &hb[i], key, l[i], len[i]);
    }
    /* a: one transaction; b: one record per transaction. */
    CU_ASSERT_EQUAL_FATAL(cn__store_apply(a, ia, N, &ma), 0);
    for (int i = 0; i < N; i++)
        CU_ASSERT_EQUAL_FATAL(cn__store_apply(b, &ib[i], 1, &mb), 0);
    for (int i = 0; i < N; i++)
        CU_ASSERT_EQUAL(ia[i].status, ib[i].status);
    CU_ASSERT_EQUAL(ia[1].status, 0);
    CU_ASSERT_EQUAL(ia[2].status, CN_ECONFLICT);
    CU_ASSERT_EQUAL(ia[6].status, CN_ECONFLICT);
    CU_ASSERT_EQUAL(ia[7].status, CN_ECONFLICT);
    CU_ASSERT_EQUAL(ia[8].status, 0);
    CU_ASSERT_EQUAL(version_of(a, "d"), version_of(b, "d"));
    CU_ASSERT_EQUAL(version_of(a, "d"), 6);
    CU_ASSERT_EQUAL(head_of(a), head_of(b));
    for (int i = 0; i < N; i++) {
        free(l[i]);
        free(ha[i].rec);
        free(hb[i].rec);
    }
    cn__store_close(a);
    cn__store_close(b);
}

typedef struct frames {
    char text[4][512];
    int n;
} frames_t;

static int
collect_event(uint64_t seq, const uint8_t *p, size_t len, void *arg)
{
    frames_t *f = arg;
    cn_event_view_t ev;
    size_t flen;
    uint8_t *frame;

    CU_ASSERT_EQUAL_FATAL(cn__event_stored_decode(p, len, &ev), 0);
    frame = cn__event_frame(&ev, seq, 0, &flen);
    CU_ASSERT_PTR_NOT_NULL_FATAL(frame);
    if (f->n < 4 && flen < sizeof(f->text[0])) {
        memcpy(f->text[f->n], frame, flen);
        f->text[f->n][flen] = '\0';
        f->n++;
    }
    free(frame);
    return 0;
}

/* A published append becomes one realtime event per room, committed with it, whose
 * frame carries the action, stream, version and position at the top level. */
static void
test_published_frames(void)
{
    cn_store_t *s = open_fresh();
    cn_store_meta_t meta = {0};
    const char *rooms[2] = {"orders", "order:7"};
    cn_store_raw_put_t it;
    cn_request_t req;
    frames_t f = {0};
    uint8_t *list;
    size_t len;
    held_t h;

    durable_req(&req, s);
    CU_ASSERT_EQUAL(cn_stream_append(&req, "other", CN_STREAM_ANY, "X", NULL), 0);
    CU_ASSERT_EQUAL(cn_stream_append_publish(&req, "order-\"7\"", CN_STREAM_NO_STREAM,
                                             "OrderPlaced", cJSON_Parse("{\"total\":3}"),
                                             rooms, 2),
                    0);
    list = take_appends(&req, &len);
    make_item(&it, &h, "k:1", list, len);
    CU_ASSERT_EQUAL_FATAL(cn__store_apply(s, &it, 1, &meta), 0);
    CU_ASSERT_EQUAL(it.status, 0);
    CU_ASSERT_EQUAL(meta.event_seq, 2);
    CU_ASSERT_EQUAL(cn__store_events_read(s, 1, 10, collect_event, &f), 0);
    CU_ASSERT_EQUAL_FATAL(f.n, 2);
    CU_ASSERT_STRING_EQUAL(f.text[0],
                           "{\"type\":\"event\",\"action\":{\"OrderPlaced\":{\"total\":3}},"
                           "\"stream\":\"order-\\\"7\\\"\",\"version\":1,\"position\":2,"
                           "\"seq\":1,\"room\":\"orders\"}");
    CU_ASSERT(strstr(f.text[1], "\"seq\":2,\"room\":\"order:7\"}") != NULL);
    free(list);
    free(h.rec);
    cn__store_close(s);
}

int
main(void)
{
    static const unit_test_t tests[] = {
        {"stream ids, types and expected values", test_names},
        {"every expected-version mode", test_expected_holds},
        {"cn_stream_append checks and limits", test_append_api_limits},
        {"appends encode and decode; truncations refused", test_appends_roundtrip},
        {"log entries and stream records round-trip", test_log_entry_and_record_roundtrip},
        {"store: expected versions, no stream / exists / exact / any", test_expected_modes},
        {"store: conflicts within a batch write nothing", test_conflicts_within_a_batch},
        {"store: appends of one record see each other", test_appends_within_one_record},
        {"store: the synced path refuses conflicts", test_sync_put_conflict},
        {"store: paging forward and backward, the global log", test_paging},
        {"store: catch-up folds the log gaplessly", test_catch_up},
        {"store: applying again decides the same", test_apply_is_deterministic},
        {"store: published appends become merged frames", test_published_frames},
        {NULL, NULL},
    };
    int rc;

    if (unit_tempdir("stream", tmpdir, sizeof(tmpdir))) {
        perror("mkdtemp");
        return 1;
    }
    rc = unit_run("stream", tests);
    if (unit_rmtree(tmpdir))
        fprintf(stderr, "warning: could not remove %s\n", tmpdir);
    return rc;
}
