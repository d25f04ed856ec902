/*
 * make_corpus - writes the seed corpora of the fuzz targets (corpus/<target>/) with the
 * real encoders, so seeds stay valid when a layout changes:
 *   fuzz_make_corpus tests/fuzz/corpus
 * Existing files of the same name are overwritten; nothing else is touched.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "outbox/op.h"
#include "realtime/event.h"
#include "store/format.h"
#include "store/wal.h"
#include "stream/stream.h"
#include "support/bytes.h"

static const char *root;

static void
seed(const char *target, const char *name, const void *bytes, size_t len)
{
    char path[1024];
    FILE *f;

    snprintf(path, sizeof(path), "%s/%s", root, target);
    if (mkdir(path, 0755) && errno != EEXIST) {
        perror(path);
        exit(1);
    }
    snprintf(path, sizeof(path), "%s/%s/%s", root, target, name);
    if (!(f = fopen(path, "wb")) || fwrite(bytes, 1, len, f) != len || fclose(f)) {
        perror(path);
        exit(1);
    }
}

/* A seed of a literal string (without its terminating NUL). */
#define SEED_STR(target, name, s) seed(target, name, s, sizeof(s) - 1)

/* A seed of a mode byte followed by bytes. */
static void
seed_mode(const char *target, const char *name, uint8_t mode, const uint8_t *bytes, size_t len)
{
    uint8_t *buf = malloc(len + 1);

    buf[0] = mode;
    memcpy(buf + 1, bytes, len);
    seed(target, name, buf, len + 1);
    free(buf);
}

static cn_record_t
sample_record(int which)
{
    static const char body[] = "{\"id\":\"ord_1\",\"product_id\":\"p-9\",\"quantity\":2}";
    cn_record_t r = {.status = 201, .created_ms = 1700000000000ull,
                     .expires_ms = 1700086400000ull};

    memset(r.fingerprint, 0xab, sizeof(r.fingerprint));
    if (which >= 1) {
        r.content_type = "application/json";
        r.content_type_len = 16;
        r.body = body;
        r.body_len = sizeof(body) - 1;
    }
    if (which >= 2) {
        r.status = 409;
        r.location = "/orders/ord_1";
        r.location_len = 13;
    }
    if (which >= 3) {
        r.headers = "ETag: \"v1\"\r\n";
        r.headers_len = 13;
    }
    return r;
}

static size_t
record_bytes(int which, uint8_t *out, size_t cap)
{
    cn_record_t r = sample_record(which);
    size_t n = 0;

    if (cn__record_encode(&r, out, cap, &n))
        exit(1);
    return n;
}

/* An event list of n events (n <= 3). */
static size_t
event_list(int n, uint8_t *out, size_t cap)
{
    cn_event_t ev[3] = {
        {.type = "order.created", .room = NULL, .payload = "{\"id\":1}", .payload_len = 8},
        {.type = "order.paid", .room = "tenant-a", .payload = "null", .payload_len = 4},
        {.type = "x", .room = "r", .payload = "[1,2,3]", .payload_len = 7},
    };
    size_t w = 0;

    for (int i = 0; i + 1 < n; i++)
        ev[i].next = &ev[i + 1];
    if (cn__events_encode(n ? ev : NULL, out, cap, &w))
        exit(1);
    return w;
}

/* A WAL DATA payload: header + ring payload of the given kind. */
static size_t
wal_payload(int kind, uint64_t seq, uint8_t *out, size_t cap)
{
    uint8_t events[512];
    size_t elen = event_list(2, events, sizeof(events)), w = 0;
    cn_record_t r = sample_record(1);
    const char key[] = "orders.create:order-123";
    int rc = cn__persist_record_encode(out + CN_PERSIST_WAL_HEADER, cap - CN_PERSIST_WAL_HEADER,
                                       key, sizeof(key) - 1,
                                       kind == CN_PERSIST_EVENTS ? NULL : &r,
                                       kind == CN_PERSIST_PUT ? NULL : events,
                                       kind == CN_PERSIST_PUT ? 0 : elen, &w);

    if (rc)
        exit(1);
    cn__format_wal_header_encode(out, 0x1122334455667788ull, seq, 1, (uint32_t)w);
    return CN_PERSIST_WAL_HEADER + w;
}

static void
key_seeds(void)
{
    char big[300];

    SEED_STR("key", "bare", "order-123");
    SEED_STR("key", "quoted", "\"order \\\"7\\\" \\\\ x\"");
    SEED_STR("key", "padded", " \t order-123 \t");
    SEED_STR("key", "nul", "a\0b");
    SEED_STR("key", "control", "a\x01z");
    SEED_STR("key", "unterminated", "\"abc");
    SEED_STR("key", "bad-escape", "\"a\\nb\"");
    SEED_STR("key", "after-quote", "\"a\" b");
    SEED_STR("key", "utf8", "caf\xc3\xa9");
    SEED_STR("key", "empty-quoted", "\"\"");
    memset(big, 'k', sizeof(big));
    seed("key", "max", big, 255);
    seed("key", "too-long", big, 256);
}

static void
fingerprint_seeds(void)
{
    SEED_STR("fingerprint_problem", "query-body", "\x65\x09" "dry_run=1{\"product_id\":\"p\"}");
    SEED_STR("fingerprint_problem", "empty", "\x00\x00");
    SEED_STR("fingerprint_problem", "invalid-utf8", "\x2c\x03" "a=b{\"product_id\":\"\xff\xfe\x80\"}");
    SEED_STR("fingerprint_problem", "quotes", "\x90\x05" "\"k\\\"\"detail with \"quotes\" and \\");
    SEED_STR("fingerprint_problem", "controls", "\x10\x02" "\x01\x02\x1f\x7f\n\r\t");
}

static void
router_seeds(void)
{
    SEED_STR("router", "get-order", "\x01/orders/42");
    SEED_STR("router", "literal-wins", "\x01/orders/export");
    SEED_STR("router", "items", "\x01/orders/a%2Fb/items/x%20y");
    SEED_STR("router", "tenant", "\x03/acme/orders/9");
    SEED_STR("router", "eight", "\x01/a/b/c/d/e/f/g/h");
    SEED_STR("router", "mixed", "\x01/x/y/z/p/w");
    SEED_STR("router", "wrong-method", "\x04/orders/1");
    SEED_STR("router", "root", "\x01/");
    SEED_STR("router", "empty-segment", "\x01/orders//items/1");
    SEED_STR("router", "bad-escape", "\x01/orders/%zz");
    SEED_STR("router", "unknown-method", "\x00/health");
    SEED_STR("router", "many", "\x01/1/2/3/4/5/6/7/8/9/10/11/12/13/14/15/16/17/18/19/20/21/22/23/"
                               "24/25/26/27/28/29/30/31/32/33");
    SEED_STR("router", "add-pattern", "\x82/new/{p}/x\n/new/a%41/x");
    SEED_STR("router", "add-bad", "\x81/bad/{\n/bad/x");
    SEED_STR("router", "add-empty-param", "\x81/e/{}\n/e/1");
    SEED_STR("router", "add-dup", "\x81/health\n/health");
}

static void
record_seeds(void)
{
    uint8_t buf[1024];
    size_t n;

    for (int i = 0; i < 4; i++) {
        char name[32];
        n = record_bytes(i, buf, sizeof(buf));
        snprintf(name, sizeof(name), "valid-%d", i);
        seed_mode("record", name, 0, buf, n);
    }
    n = record_bytes(1, buf, sizeof(buf));
    buf[4] = 2; /* a future version, CRC fixed by the mode */
    seed_mode("record", "version-2", 1, buf, n);
    n = record_bytes(1, buf, sizeof(buf));
    buf[64] ^= 1; /* body length off by one */
    seed_mode("record", "bad-length", 1, buf, n);
    seed_mode("record", "short", 0, buf, 20);
}

static void
event_seeds(void)
{
    uint8_t buf[1024], out[1024];
    const uint8_t *cur;
    cn_event_view_t ev;

    for (int n = 0; n <= 3; n++) {
        char name[32];
        size_t len = event_list(n, buf, sizeof(buf));
        snprintf(name, sizeof(name), "list-%d", n);
        seed_mode("event", name, 0, buf, len);
    }
    size_t len = event_list(3, buf, sizeof(buf));
    seed_mode("event", "list-truncated", 0, buf, len - 3);
    cn__events_begin(buf, len, &cur);
    for (int i = 0; i < 2; i++) {
        char name[32];
        if (cn__events_next(&cur, buf + len, &ev))
            exit(1);
        ev.created_ms = 1700000000000ull + (uint64_t)i;
        cn__event_stored_encode(&ev, out);
        snprintf(name, sizeof(name), "stored-%d", i);
        seed_mode("event", name, 1, out, cn__event_stored_size(&ev));
    }
}

/* An appends list: a conditional append published to two rooms, then an unconditional
 * one. */
static size_t
appends_list(uint8_t *out, size_t cap)
{
    cn_append_t b = {.stream = "order-2", .type = "OrderShipped",
                     .data = "{\"tracking_number\":\"T1\"}", .data_len = 24,
                     .expected = CN_STREAM_ANY};
    cn_append_t a = {.stream = "order-1", .type = "OrderPlaced",
                     .data = "{\"total_cents\":2000}", .data_len = 20, .expected = 0,
                     .rooms = {"orders", "order:1"}, .nrooms = 2, .next = &b};
    size_t w = 0;

    if (cn__appends_encode(&a, out, cap, &w))
        exit(1);
    return w;
}

static void
stream_seeds(void)
{
    uint8_t buf[512];
    size_t n = appends_list(buf, sizeof(buf));
    cn_log_view_t e = {1700000000000ull, 3, "order-1", 7, "OrderPlaced", 11,
                       "{\"total_cents\":2000}", 20};

    seed_mode("stream", "appends", 0, buf, n);
    buf[2 + 4 + 7] = 0x80; /* an expected version far below CN_STREAM_EXISTS */
    seed_mode("stream", "bad-expected", 0, buf, n);
    cn__log_entry_encode(&e, buf);
    seed_mode("stream", "log-entry", 1, buf, cn__log_entry_size(&e));
}

static void
wal_payload_seeds(void)
{
    static const int kinds[] = {CN_PERSIST_PUT, CN_PERSIST_PUT_EVENTS, CN_PERSIST_EVENTS};
    static const char *names[] = {"put", "put-events", "events"};
    uint8_t buf[2048];

    for (int i = 0; i < 3; i++) {
        size_t n = wal_payload(kinds[i], 7 + (uint64_t)i, buf, sizeof(buf));
        seed_mode("wal_payload", names[i], 0, buf, n);
    }
    size_t n = wal_payload(CN_PERSIST_PUT, 1, buf, sizeof(buf));
    buf[16] = 200; /* a worker past the limit */
    seed_mode("wal_payload", "bad-worker", 0, buf, n);
    {
        uint8_t events[512], appends[512];
        size_t elen = event_list(1, events, sizeof(events));
        size_t alen = appends_list(appends, sizeof(appends)), w = 0;
        cn_record_t r = sample_record(1);
        const char key[] = "orders.create:order-1";
        if (cn__persist_streams_encode(buf + CN_PERSIST_WAL_HEADER,
                                       sizeof(buf) - CN_PERSIST_WAL_HEADER, key,
                                       sizeof(key) - 1, &r, events, elen, appends, alen, &w))
            exit(1);
        cn__format_wal_header_encode(buf, 0x1122334455667788ull, 11, 0, (uint32_t)w);
        seed_mode("wal_payload", "put-streams", 1, buf, CN_PERSIST_WAL_HEADER + w);
    }
}

/* Appends DATA frames of the three payload kinds at lsn (the segment starts at base) into
 * seg; returns the offset after them. */
static size_t
frames(uint8_t *seg, size_t off, uint64_t base, int count)
{
    static const int kinds[] = {CN_PERSIST_PUT, CN_PERSIST_PUT_EVENTS, CN_PERSIST_EVENTS};
    uint8_t pl[2048];

    for (int i = 0; i < count; i++) {
        size_t n = wal_payload(kinds[i % 3], (uint64_t)i + 1, pl, sizeof(pl));
        cn__wal_frame_encode(seg + off, base + off, CN_WAL_DATA, pl, n);
        off += cn__wal_frame_size(n);
    }
    return off;
}

static void
wal_recovery_seeds(void)
{
    enum { SEG = 2048 }; /* the harness makes the segment this size plus the SEAL room */
    uint8_t *buf = calloc(1, 1 + 2 * SEG), *seg = buf + 1;
    size_t end;

    /* One segment, three frames, zeros after: a clean log. */
    end = frames(seg, 0, 0, 3);
    buf[0] = 0;
    seed("wal_recovery", "clean", buf, 1 + SEG);
    /* The last frame torn: half of it zeroed. */
    memset(seg + end - 40, 0, 40);
    seed("wal_recovery", "torn-tail", buf, 1 + SEG);
    /* A flipped byte in the first frame, valid frames after it: damage in the middle. */
    memset(seg, 0, SEG);
    frames(seg, 0, 0, 3);
    seg[40] ^= 0xff;
    seed("wal_recovery", "corrupt-middle", buf, 1 + SEG);
    /* Stray bytes after a zeroed header. */
    memset(seg, 0, SEG);
    end = frames(seg, 0, 0, 1);
    memset(seg + end + 100, 0x5a, 16);
    seed("wal_recovery", "stray-bytes", buf, 1 + SEG);
    /* Frames to re-encode by the harness (mode bit 0): only the chain's shape matters. */
    memset(seg, 0, SEG);
    frames(seg, 0, 0, 2);
    seg[4 + 24] ^= 1; /* a payload byte: the CRC no longer matches until fixed */
    buf[0] = 1;
    seed("wal_recovery", "fixed-frames", buf, 1 + SEG);
    /* Two segments: the first sealed, the second with frames (the harness fixes LSNs). */
    memset(seg, 0, 2 * SEG);
    end = frames(seg, 0, 0, 2);
    cn__wal_frame_encode(seg + end, end, CN_WAL_SEAL, NULL, 0);
    frames(seg + SEG, 0, SEG + 2 * CN_WAL_FRAME_HEADER, 2);
    buf[0] = 3;
    seed("wal_recovery", "two-segments", buf, 1 + 2 * SEG);
    /* Two segments, the first unsealed: the second must be empty. */
    memset(seg, 0, 2 * SEG);
    frames(seg, 0, 0, 1);
    frames(seg + SEG, 0, SEG + 2 * CN_WAL_FRAME_HEADER, 1);
    buf[0] = 3;
    seed("wal_recovery", "unsealed-then-data", buf, 1 + 2 * SEG);
    free(buf);
}

static void
ws_message_seeds(void)
{
    SEED_STR("ws_message", "ping", "{\"type\":\"ping\"}");
    SEED_STR("ws_message", "subscribe", "{\"type\":\"subscribe\",\"room\":\"tenant-a\"}");
    SEED_STR("ws_message", "unsubscribe", "{\"type\":\"unsubscribe\",\"room\":\"tenant-a\"}");
    SEED_STR("ws_message", "room-escaped", "{\"type\":\"subscribe\",\"room\":\"a\\u0000b\"}");
    SEED_STR("ws_message", "room-quote", "{\"type\":\"subscribe\",\"room\":\"a\\\"b\"}");
    SEED_STR("ws_message", "room-number", "{\"type\":\"subscribe\",\"room\":7}");
    SEED_STR("ws_message", "unknown", "{\"type\":\"hello\"}");
    SEED_STR("ws_message", "not-object", "[\"ping\"]");
    SEED_STR("ws_message", "broken", "{\"type\":");
    SEED_STR("ws_message", "utf8", "{\"type\":\"subscribe\",\"room\":\"caf\xc3\xa9\"}");
    SEED_STR("ws_message", "command",
             "{\"type\":\"command\",\"id\":\"c1\",\"idempotency_key\":\"k1\","
             "\"action\":{\"PlaceOrder\":{\"customer_id\":\"c\",\"items\":[{\"quantity\":1,"
             "\"unit_price_cents\":12345678901234567891}]}}}");
    SEED_STR("ws_message", "command-path",
             "{\"type\":\"command\",\"id\":\"c2\",\"action\":{\"B\":{\"id\":\"a/b c\","
             "\"k\":\"caf\xc3\xa9\"}}}");
    SEED_STR("ws_message", "command-missing-field",
             "{\"type\":\"command\",\"id\":\"c3\",\"action\":{\"CancelOrder\":{}}}");
    SEED_STR("ws_message", "command-no-id", "{\"type\":\"command\",\"action\":{\"A\":{}}}");
    SEED_STR("ws_message", "command-two-actions",
             "{\"type\":\"command\",\"id\":\"x\",\"action\":{\"A\":{},\"B\":{}}}");
    SEED_STR("ws_message", "command-key-number",
             "{\"type\":\"command\",\"id\":\"x\",\"idempotency_key\":5,\"action\":{\"A\":{}}}");
    SEED_STR("ws_message", "command-spaced",
             "\xEF\xBB\xBF {\"action\" : {\"A\" : {\"s\":\"}{\\\"\"} }, \"id\":\"a\\\"b\", "
             "\"type\":\"command\"}");
    SEED_STR("ws_message", "lone-surrogate", "\"\\uddddddd0e\"");
    SEED_STR("ws_message", "response-head",
             "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"
             "Content-Length: 12\r\nIdempotent-Replayed: true\r\n\r\n{\"ok\":true}\n");
}

static void
http_seeds(void)
{
    SEED_STR("http", "get", "GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    SEED_STR("http", "post-json",
             "POST /orders?dry_run=1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
             "Idempotency-Key: order-123\r\nX-Tenant-Id: acme\r\nContent-Length: 31\r\n\r\n"
             "{\"product_id\":\"p\",\"quantity\":1}");
    SEED_STR("http", "pipelined",
             "GET /orders/1?q=a%20b HTTP/1.1\r\nHost: x\r\n\r\n"
             "DELETE /orders/2 HTTP/1.1\r\nHost: x\r\n\r\n"
             "PUT /orders/3 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}");
    SEED_STR("http", "chunked",
             "POST /orders HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
             "5\r\n{\"a\":\r\n2\r\n1}\r\n0\r\n\r\n");
    SEED_STR("http", "defer",
             "POST /defer/1 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
             "POST /later/2 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
    SEED_STR("http", "head-metrics", "HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    SEED_STR("http", "method-not-allowed", "PATCH /orders/1 HTTP/1.1\r\nHost: x\r\n\r\n");
    SEED_STR("http", "not-found", "GET /nope HTTP/1.0\r\n\r\n");
    SEED_STR("http", "bad-request-line", "GET\r\n\r\n");
    SEED_STR("http", "absolute-form", "GET http://x/health HTTP/1.1\r\nHost: x\r\n\r\n");
    SEED_STR("http", "conflicting-length",
             "POST /orders HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n"
             "{}");
    SEED_STR("http", "too-large",
             "POST /orders HTTP/1.1\r\nHost: x\r\nContent-Length: 999999\r\n\r\n{}");
    SEED_STR("http", "space-in-header", "GET /health HTTP/1.1\r\nHost: x\r\nBad Name: v\r\n\r\n");
    SEED_STR("http", "two-tenants",
             "GET /orders/1 HTTP/1.1\r\nHost: x\r\nX-Tenant-Id: a\r\nX-Tenant-Id: b\r\n"
             "Idempotency-Key: \"k\\\"1\"\r\n\r\n");
    SEED_STR("http", "query-ampersands", "GET /health?&&&&&&&&&&&&&&&&&&&&&&&&&&&&&&&&&&&&&&&&&&"
                                         "&&&&&&&&&&&&&&&&&&&&&&&&&&&&&& HTTP/1.1\r\nHost: x\r\n"
                                         "\r\n");
    SEED_STR("http", "partial", "POST /orders HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{");
}

/* An outbox state record in each status (fuzz_outbox_record: a mode byte, then the
 * record; mode bit 0 fixes headers_len). */
static void
outbox_record_seeds(void)
{
    static const char *const names[] = {"pending", "inflight", "done", "failed"};
    static const char headers[] = "Content-Type: application/json\nX-Tenant-Id: acme";
    static const char error[] = "HTTP 503 Service Unavailable";
    uint8_t buf[1024];
    size_t n;

    for (int st = 0; st < CN_OUTBOX_STATUS_COUNT; st++) {
        cn__outbox_rec_t r = {.status = (uint8_t)st, .attempt = (uint32_t)st,
                              .seq = 7 + (uint64_t)st, .created_at = 1700000000000,
                              .updated_at = 1700000000000 + st, .next_attempt_at = 1700000001000,
                              .kind = "orders.place", .kind_len = 12, .method = "POST",
                              .method_len = 4, .url = "http://127.0.0.1:8080/orders",
                              .url_len = 28, .headers = headers,
                              .headers_len = sizeof(headers) - 1};
        char name[32];

        if (st == CN_OUTBOX_INFLIGHT) {
            r.lease_until = 1700000060000;
            r.lease_owner = 0x1122334455667788ull;
        }
        if (st == CN_OUTBOX_DONE) {
            r.last_http_status = 201;
            r.truncated = 1;
        }
        if (st == CN_OUTBOX_FAILED) {
            r.last_http_status = 503;
            r.error = error;
            r.error_len = sizeof(error) - 1;
        }
        n = cn__outbox_rec_size(&r);
        if (n > sizeof(buf))
            exit(1);
        cn__outbox_rec_encode(&r, buf);
        snprintf(name, sizeof(name), "valid-%s", names[st]);
        seed_mode("outbox_record", name, 0, buf, n);
        if (st == CN_OUTBOX_PENDING) {
            buf[0] = CN__OUTBOX_FORMAT + 1;
            seed_mode("outbox_record", "version-2", 0, buf, n);
            buf[0] = CN__OUTBOX_FORMAT;
            buf[68] ^= 1; /* headers_len off by one; mode 1 fixes it */
            seed_mode("outbox_record", "fixed-length", 1, buf, n);
            seed_mode("outbox_record", "bad-length", 0, buf, n);
            seed_mode("outbox_record", "short", 0, buf, 40);
        }
    }
    {
        /* Empty text fields everywhere. */
        cn__outbox_rec_t r = {.status = CN_OUTBOX_PENDING, .seq = 1, .method = "DELETE",
                              .method_len = 6, .url = "https://x/", .url_len = 10};

        n = cn__outbox_rec_size(&r);
        cn__outbox_rec_encode(&r, buf);
        seed_mode("outbox_record", "minimal", 0, buf, n);
    }
}

/* An answer for fuzz_outbox_answer (see its layout): flags, status, attempt, max_attempts,
 * the jitter draw, now / 65536, base_delay, factor byte, max_delay, max_retry_after, then
 * Retry-After '\n' Content-Type '\n' body. */
static void
outbox_answer(const char *name, uint8_t flags, int status, uint16_t attempt, uint8_t max,
              const char *retry_after, const char *ctype, const char *body)
{
    uint8_t buf[1024];
    size_t n = 0;
    const uint64_t draw = 0x9e3779b97f4a7c15ull;
    const uint32_t now = (uint32_t)(1700000000000ull / 65536);

    buf[n++] = flags;
    buf[n++] = (uint8_t)status;
    buf[n++] = (uint8_t)((unsigned)status >> 8);
    buf[n++] = (uint8_t)attempt;
    buf[n++] = (uint8_t)(attempt >> 8);
    buf[n++] = max;
    for (int i = 0; i < 8; i++)
        buf[n++] = (uint8_t)(draw >> (8 * i));
    for (int i = 0; i < 4; i++)
        buf[n++] = (uint8_t)(now >> (8 * i));
    buf[n++] = 500 & 0xff; /* base_delay_ms 500 */
    buf[n++] = 500 >> 8;
    buf[n++] = 16; /* factor 2 */
    for (int i = 0; i < 4; i++)
        buf[n++] = (uint8_t)(60000u >> (8 * i));
    for (int i = 0; i < 4; i++)
        buf[n++] = (uint8_t)(3600000u >> (8 * i));
    n += (size_t)snprintf((char *)buf + n, sizeof(buf) - n, "%s\n%s\n%s", retry_after, ctype,
                          body);
    seed("outbox_answer", name, buf, n);
}

static void
outbox_answer_seeds(void)
{
    static const char in_progress[] =
        "{\"error\":\"still running\",\"type\":\"urn:cnerium:problem:request-in-progress\","
        "\"title\":\"Conflict\",\"status\":409}";
    static const char reused[] =
        "{\"type\":\"urn:cnerium:problem:idempotency-key-reused\",\"status\":409}";

    outbox_answer("created", 8, 201, 1, 8, "", "application/json", "{\"id\":\"ord_1\"}");
    outbox_answer("redirect", 8, 303, 2, 8, "", "text/plain", "");
    outbox_answer("bad-request", 8, 400, 1, 8, "", "application/problem+json",
                  "{\"type\":\"about:blank\",\"status\":400}");
    outbox_answer("key-reused", 8, 409, 1, 8, "", "application/problem+json", reused);
    outbox_answer("in-progress", 4, 409, 1, 8, "2", "application/problem+json", in_progress);
    outbox_answer("in-progress-charset", 4, 409, 3, 8, "",
                  "application/problem+json; charset=utf-8", in_progress);
    outbox_answer("unavailable-seconds", 4, 503, 1, 8, "120", "text/plain", "busy");
    outbox_answer("too-many-date", 4, 429, 2, 8, "Tue, 14 Nov 2023 22:13:50 GMT", "", "");
    outbox_answer("rfc850-date", 0, 503, 1, 8, "Tuesday, 14-Nov-23 22:13:50 GMT", "", "");
    outbox_answer("asctime-date", 0, 503, 1, 8, "Tue Nov 14 22:13:50 2023", "", "");
    outbox_answer("past-date", 0, 425, 1, 8, "Thu, 01 Jan 1970 00:00:00 GMT", "", "");
    outbox_answer("huge-seconds", 4, 503, 1, 8, "99999999999999999999", "", "");
    outbox_answer("garbage-retry-after", 4, 408, 4, 8, "soon", "", "");
    outbox_answer("last-attempt", 4, 500, 8, 8, "1", "", "");
    outbox_answer("refused", 1 | 2 | 4, 0, 1, 8, "",
                  "Failed to connect to 127.0.0.1 port 9: Connection refused", "");
    outbox_answer("timeout", 1 | 4 | 8, 0, 7, 8, "", "Operation timed out", "");
    outbox_answer("negative-status", 64, -1, 1, 8, "", "", "");
    outbox_answer("no-attempts", 0, 503, 1, 0, "", "", "");
}

int
main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s CORPUS_DIR (tests/fuzz/corpus)\n", argv[0]);
        return 2;
    }
    root = argv[1];
    if (mkdir(root, 0755) && errno != EEXIST) {
        perror(root);
        return 1;
    }
    key_seeds();
    fingerprint_seeds();
    router_seeds();
    record_seeds();
    event_seeds();
    wal_payload_seeds();
    wal_recovery_seeds();
    stream_seeds();
    ws_message_seeds();
    http_seeds();
    outbox_record_seeds();
    outbox_answer_seeds();
    return 0;
}
