/*
 * examples/orders.c - seed 004, an event-sourced order service on Cnerium's event streams.
 *
 *   ./build/examples/cnerium_orders --data-dir ./data/orders --port 8080 --realtime-port 9090
 *
 * Every order is one stream, "order-<order_id>", whose events are OrderPlaced, then at
 * most one of OrderCancelled / OrderShipped. The three commands are durable routes: the
 * event is appended in the same commit as the stored response, so a retry of a key
 * replays the answer and never appends twice, and a process killed at any point leaves
 * the order with all of a command or none of it. Each append is also published to the
 * WebSocket rooms "orders" and "order:<order_id>".
 *
 * Cancel and ship read the order's stream, fold it to its state, decide, and append with
 * the version they read as the expected version: of two commands racing on one order
 * (from any workers) exactly one commits, the other gets 409 wrong-expected-version from
 * the layer, or 412 when the client sent If-Match.
 *
 * GET /api/v1/orders lists orders from a read model: an in-memory table in each worker
 * process, brought up to date with cn_log_catch_up at the start of every list request,
 * so every worker sees every order whichever worker created it. Nothing is loaded at
 * startup: state lives in the streams, and the table is rebuilt from position 0 by the
 * first list request a worker serves.
 *
 * Processes and locking: handlers run on the request threads of every worker process.
 * The read model is the only state shared between requests; one mutex per process
 * guards it (table, hash index and log position).
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <time.h>

#include <cnerium/cnerium.h>
#include <cnerium/stream.h>

#define API "/api/v1/orders"
#define STREAM_PREFIX "order-"
#define STREAM_PREFIX_LEN 6
#define ORDER_ID_PREFIX "ord_"
#define ORDER_ID_LEN 36 /* "ord_" + 32 hex digits */
#define ROOM_ALL "orders"

/* Input limits. They keep the OrderPlaced event of the largest valid order (every string
 * at its limit and escaped six-fold) well under the layer's default event size limit, so
 * a valid order is never refused by the append. */
#define CUSTOMER_ID_MAX 256
#define PRODUCT_ID_MAX 128
#define NAME_MAX_BYTES 256
#define ITEMS_MAX 100
#define REASON_MAX 1024
#define TRACKING_MAX 128
/* Integers in a JSON number are exact in a double up to 2^53; above, "9007199254740993"
 * would silently become another value. */
#define JSON_INT_MAX 9007199254740991.0

/* Orders reserved ahead of a catch-up at most (beyond, the table grows as it goes). */
#define RESERVE_MAX ((uint64_t)1 << 24)
#define LIST_LIMIT_DEFAULT 50
#define LIST_LIMIT_MAX 500
#define EVENTS_LIMIT_DEFAULT 100
#define EVENTS_LIMIT_MAX 1000
/* Events per read when folding one order: an order has two at most, and a page's array
 * is allocated for its whole size. */
#define LOAD_PAGE 16

enum order_status { ST_NONE = 0, ST_PLACED, ST_CANCELLED, ST_SHIPPED };

static const char *const status_names[] = {"none", "placed", "cancelled", "shipped"};

/* ---- small helpers ------------------------------------------------------------------ */

/* An exact integer as a JSON number token: cJSON keeps numbers as doubles and prints
 * some integers as "1e+15"; a raw token is exact and stays an integer for every client. */
static cJSON *
json_int(int64_t v)
{
    char buf[24];

    snprintf(buf, sizeof(buf), "%" PRId64, v);
    return cJSON_CreateRaw(buf);
}

static cJSON *
json_time(uint64_t ms)
{
    char buf[64];
    time_t s = (time_t)(ms / 1000);
    struct tm tm;

    if (!gmtime_r(&s, &tm))
        return cJSON_CreateNull();
    snprintf(buf, sizeof(buf), "%04d-%02d-%02dT%02d:%02d:%02d.%03uZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
             (unsigned)(ms % 1000));
    return cJSON_CreateString(buf);
}

static int
is_order_id(const char *s)
{
    if (!s || strlen(s) != ORDER_ID_LEN || strncmp(s, ORDER_ID_PREFIX, 4) != 0)
        return 0;
    for (s += 4; *s; s++)
        if (!((*s >= '0' && *s <= '9') || (*s >= 'a' && *s <= 'f')))
            return 0;
    return 1;
}

static void
stream_of(const char *order_id, char out[STREAM_PREFIX_LEN + ORDER_ID_LEN + 1])
{
    memcpy(out, STREAM_PREFIX, STREAM_PREFIX_LEN);
    memcpy(out + STREAM_PREFIX_LEN, order_id, ORDER_ID_LEN + 1);
}

/* A problem response (RFC 9457) with members of the order beside the standard ones:
 * {"error","type","title","status","detail",...extra}. extra (an object, may be NULL) is
 * consumed. */
static cn_response_t
order_problem(int status, const char *type, const char *detail, cJSON *extra)
{
    cJSON *doc = cn_json_object("error", cJSON_CreateString(detail),
                                "type", cJSON_CreateString(type),
                                "title", cJSON_CreateString(cn_status_reason(status)),
                                "status", cJSON_CreateNumber(status),
                                "detail", cJSON_CreateString(detail), NULL);
    cn_response_t res;
    char *text;
    size_t len;

    if (doc && extra) {
        cJSON *m = extra->child;
        while (m) {
            cJSON *next = m->next;
            cJSON_DetachItemViaPointer(extra, m);
            cJSON_AddItemToObject(doc, m->string, m);
            m = next;
        }
    }
    cJSON_Delete(extra);
    if (!doc)
        return cn_problem(500, "Out of memory");
    text = cn_json_print(doc, &len);
    cJSON_Delete(doc);
    if (!text)
        return cn_problem(500, "Out of memory");
    res = cn_raw_response(status, "application/problem+json", text, len);
    free(text);
    return res;
}

/* 404 for an order that does not exist (yet). Never stored: a create still in flight
 * under a retry may make the order exist a moment later, and a stored 404 would then
 * answer this key wrongly for the key's lifetime. */
static cn_response_t
order_not_found(const char *order_id)
{
    char detail[128];
    cn_response_t res;

    snprintf(detail, sizeof(detail), "Order %.40s not found", order_id ? order_id : "");
    res = cn_not_found(detail);
    cn_response_set_persist(&res, CN_PERSIST_NEVER);
    return res;
}

/* ---- an order's state, folded from its stream ------------------------------------- */

typedef struct order_state {
    uint64_t version;
    int status;
    uint64_t created_ms, updated_ms;
    cJSON *placed; /* OrderPlaced data (with want_data) */
    cJSON *last;   /* OrderCancelled / OrderShipped data (with want_data) */
} order_state_t;

static void
order_state_free(order_state_t *o)
{
    cJSON_Delete(o->placed);
    cJSON_Delete(o->last);
    memset(o, 0, sizeof(*o));
}

static int
fold_order(order_state_t *o, const cn_stream_event_t *ev, int want_data)
{
    cJSON **slot = NULL;

    o->version = ev->version;
    o->updated_ms = ev->created_ms;
    if (!strcmp(ev->type, "OrderPlaced")) {
        o->status = ST_PLACED;
        o->created_ms = ev->created_ms;
        slot = &o->placed;
    } else if (!strcmp(ev->type, "OrderCancelled")) {
        o->status = ST_CANCELLED;
        slot = &o->last;
    } else if (!strcmp(ev->type, "OrderShipped")) {
        o->status = ST_SHIPPED;
        slot = &o->last;
    }
    /* Other types are not ours to interpret: they count for the version only. */
    if (want_data && slot) {
        cJSON_Delete(*slot);
        *slot = cJSON_ParseWithLength(ev->data, ev->data_len);
        if (!*slot || !cJSON_IsObject(*slot))
            return -EBADMSG;
    }
    return 0;
}

/* Reads the order's whole stream into o (zeroed first; version 0: no such order). With
 * want_data the events' data is parsed too. Returns 0 or a negative error. */
static int
load_order(cn_request_t *req, const char *order_id, int want_data, order_state_t *o)
{
    char sid[STREAM_PREFIX_LEN + ORDER_ID_LEN + 1];
    uint64_t from = 1;
    int rc = 0;

    memset(o, 0, sizeof(*o));
    stream_of(order_id, sid);
    for (;;) {
        cn_stream_page_t page = {0};
        size_t i;

        rc = cn_stream_read(req, sid, from, CN_STREAM_FORWARD, LOAD_PAGE, &page);
        if (rc)
            break;
        for (i = 0; i < page.count && !rc; i++)
            rc = fold_order(o, &page.events[i], want_data);
        from = page.next;
        if (rc || !page.more || !page.count) {
            cn_stream_page_free(&page);
            break;
        }
        cn_stream_page_free(&page);
    }
    if (rc)
        order_state_free(o);
    return rc;
}

/* An integer member of stored event data (written by this service, so present and exact);
 * 0 for anything else rather than converting a NaN. */
static int64_t
member_int(const cJSON *obj, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, name);

    return cJSON_IsNumber(v) && v->valuedouble >= -JSON_INT_MAX && v->valuedouble <= JSON_INT_MAX
               ? (int64_t)v->valuedouble
               : 0;
}

/* The exact total of an OrderPlaced data's items (validated when the order was placed). */
static int64_t
items_total(const cJSON *items)
{
    const cJSON *it;
    int64_t total = 0;

    cJSON_ArrayForEach(it, items) {
        int64_t q = member_int(it, "quantity"), p = member_int(it, "unit_price_cents"), line;

        if (__builtin_mul_overflow(q, p, &line) || __builtin_add_overflow(total, line, &total))
            return -1;
    }
    return total;
}

/* The items array as a client sees it, integers exact. */
static cJSON *
items_json(const cJSON *items)
{
    cJSON *out = cJSON_CreateArray();
    const cJSON *it;

    cJSON_ArrayForEach(it, items) {
        cJSON *o = cn_json_object(
            "product_id", cJSON_CreateString(cn_json_string_or(it, "product_id", "")),
            "name", cJSON_CreateString(cn_json_string_or(it, "name", "")),
            "quantity", json_int(member_int(it, "quantity")),
            "unit_price_cents", json_int(member_int(it, "unit_price_cents")), NULL);
        if (!out || !o) {
            cJSON_Delete(o);
            cJSON_Delete(out);
            return NULL;
        }
        cJSON_AddItemToArray(out, o);
    }
    return out;
}

/* ---- the read model ----------------------------------------------------------------- */

/* One order as the list shows it. Ordered in the table by the global position of its
 * OrderPlaced event (the order the log delivers them in). */
typedef struct summary {
    char id[ORDER_ID_LEN + 1];
    uint8_t status;
    uint64_t customer; /* offset of the NUL-terminated customer id in the string arena */
    int64_t total_cents;
    uint64_t version, created_ms, updated_ms;
} summary_t;

/* A hash slot: index + 1 into orders (0 = empty) and 32 more bits of the hash, so a
 * probe only touches the order it is likely to be (the table is far bigger than the
 * caches during a rebuild, and each touch of a wrong one is a miss). */
typedef struct slot {
    uint32_t index;
    uint32_t tag;
} slot_t;

typedef struct read_model {
    pthread_mutex_t lock;
    uint64_t position; /* last global position folded */
    summary_t *orders;
    size_t n, cap;
    slot_t *slots;  /* open addressing, linear probing */
    size_t nslots;  /* a power of two, at least twice n */
    char *strings;  /* arena of customer ids: one allocation instead of one per order */
    size_t slen, scap;
} read_model_t;

static read_model_t rm = {.lock = PTHREAD_MUTEX_INITIALIZER};

/* Order ids end in 128 random bits: their first 16 hex digits are a good hash. */
static uint64_t
id_hash(const char *id)
{
    uint64_t h = 0;
    int i;

    for (i = 4; i < 20; i++)
        h = (h << 4) | (uint64_t)(id[i] <= '9' ? id[i] - '0' : id[i] - 'a' + 10);
    return h;
}

static const char *
rm_customer(const read_model_t *m, const summary_t *s)
{
    return m->strings + s->customer;
}

static summary_t *
rm_find_locked(const read_model_t *m, const char *id)
{
    uint64_t h = id_hash(id);
    size_t mask = m->nslots - 1, i;

    if (!m->nslots)
        return NULL;
    for (i = (size_t)h & mask; m->slots[i].index; i = (i + 1) & mask) {
        summary_t *s = &m->orders[m->slots[i].index - 1];
        if (m->slots[i].tag == (uint32_t)(h >> 32) && !memcmp(s->id, id, ORDER_ID_LEN))
            return s;
    }
    return NULL;
}

/* The table and its index are large (80 and 16 bytes per order) and filled in one go by
 * a rebuild: they live in anonymous mappings that ask for transparent huge pages, so a
 * million orders take a few hundred page faults instead of tens of thousands. The index
 * is populated up front (populate): its probes read a slot before it is written, and a
 * page first read maps the zero page, whose first write then costs a second fault and a
 * TLB flush on every core. bytes is a multiple of the page size here. */
static void *
big_map(void *old, size_t old_bytes, size_t bytes, int populate)
{
    void *p = old ? mremap(old, old_bytes, bytes, MREMAP_MAYMOVE)
                  : mmap(NULL, bytes, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS | (populate ? MAP_POPULATE : 0), -1, 0);

    if (p == MAP_FAILED)
        return NULL;
    (void)madvise(p, bytes, MADV_HUGEPAGE); /* advice: fine to be refused */
    return p;
}

/* Makes room for `more` orders beyond n (the table, and the index at most half full).
 * Called with the number of events a catch-up will fold, so a rebuild allocates once
 * instead of doubling (and copying) its way up. */
static int
rm_reserve_locked(read_model_t *m, size_t more)
{
    size_t want = m->n + more;

    if (want > UINT32_MAX - 1)
        return -ENOMEM;
    if (want > m->cap) {
        size_t cap = m->cap ? m->cap : 1024;
        summary_t *o;

        while (cap < want)
            cap *= 2;
        if (!(o = big_map(m->orders, m->cap * sizeof(*o), cap * sizeof(*o), 0)))
            return -ENOMEM;
        m->orders = o;
        m->cap = cap;
    }
    if (want * 2 > m->nslots) {
        size_t nslots = m->nslots ? m->nslots : 4096, mask, k;
        slot_t *slots;

        while (nslots < want * 2)
            nslots *= 2;
        if (!(slots = big_map(NULL, 0, nslots * sizeof(*slots), 1)))
            return -ENOMEM; /* a fresh mapping reads as zeros: every slot empty */
        mask = nslots - 1;
        for (k = 0; k < m->n; k++) {
            uint64_t h = id_hash(m->orders[k].id);
            size_t i = (size_t)h & mask;
            while (slots[i].index)
                i = (i + 1) & mask;
            slots[i] = (slot_t){(uint32_t)(k + 1), (uint32_t)(h >> 32)};
        }
        if (m->slots)
            munmap(m->slots, m->nslots * sizeof(*slots));
        m->slots = slots;
        m->nslots = nslots;
    }
    return 0;
}

/* Copies len bytes and a NUL into the string arena; the offset in *off. */
static int
rm_intern_locked(read_model_t *m, const char *s, size_t len, uint64_t *off)
{
    if (m->slen + len + 1 > m->scap) {
        size_t cap = m->scap ? m->scap : 65536;
        char *p;

        while (cap < m->slen + len + 1)
            cap *= 2;
        if (!(p = realloc(m->strings, cap)))
            return -ENOMEM;
        m->strings = p;
        m->scap = cap;
    }
    memcpy(m->strings + m->slen, s, len);
    m->strings[m->slen + len] = '\0';
    *off = m->slen;
    m->slen += len + 1;
    return 0;
}

/* Skips one JSON value of well-formed text (the layer validated it at append); returns
 * the byte after it or NULL at the end of the text. */
static const char *
skip_value(const char *p, const char *end)
{
    int depth = 0;

    do {
        if (p >= end)
            return NULL;
        if (*p == '"') {
            for (p++; p < end && *p != '"'; p++)
                if (*p == '\\')
                    p++;
            if (p >= end)
                return NULL;
            p++;
        } else if (*p == '{' || *p == '[') {
            depth++;
            p++;
        } else if (*p == '}' || *p == ']') {
            depth--;
            p++;
        } else if (depth > 0) {
            p++; /* ',' ':' whitespace and scalars inside a container */
        } else {
            while (p < end && *p != ',' && *p != '}' && *p != ']' && *p != ' ' &&
                   *p != '\t' && *p != '\n' && *p != '\r')
                p++;
        }
    } while (depth > 0);
    return p;
}

static const char *
skip_ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
        p++;
    return p;
}

/* Finds the top-level members customer_id (a string token, quotes included) and
 * total_cents (a number token) of an OrderPlaced data without building a tree: the
 * rebuild folds every event of the log, and a parse per event would dominate it. */
static int
scan_placed(const char *p, size_t len, const char **cust, size_t *cust_len,
            const char **total, size_t *total_len)
{
    const char *end = p + len;

    *cust = *total = NULL;
    p = skip_ws(p, end);
    if (p >= end || *p != '{')
        return -EBADMSG;
    for (p++;;) {
        const char *key, *v;
        size_t klen;

        p = skip_ws(p, end);
        if (p < end && *p == '}')
            break;
        if (p >= end || *p != '"')
            return -EBADMSG;
        key = p + 1;
        if (!(p = skip_value(p, end)))
            return -EBADMSG;
        klen = (size_t)(p - 1 - key);
        p = skip_ws(p, end);
        if (p >= end || *p != ':')
            return -EBADMSG;
        v = skip_ws(p + 1, end);
        if (!(p = skip_value(v, end)))
            return -EBADMSG;
        if (klen == 11 && !memcmp(key, "customer_id", 11)) {
            *cust = v;
            *cust_len = (size_t)(p - v);
        } else if (klen == 11 && !memcmp(key, "total_cents", 11)) {
            *total = v;
            *total_len = (size_t)(p - v);
        }
        p = skip_ws(p, end);
        if (p < end && *p == ',')
            p++;
    }
    return *cust && *total && **cust == '"' ? 0 : -EBADMSG;
}

/* The layout this service writes, {"order_id":"<id>","customer_id":"<c>","items":[...],
 * "total_cents":<n>}, read without scanning the items: the customer id when it has no
 * escapes, the total just before the closing brace (the last member of the top-level
 * object of valid JSON). Returns 0, or -1 for anything else (the general scan then). */
static int
fast_placed(const char *d, size_t len, const char *id, const char **cust, size_t *cust_len,
            int64_t *total)
{
    static const char p1[] = "{\"order_id\":\"", p2[] = "\",\"customer_id\":\"",
                      t1[] = "\"total_cents\":";
    const size_t l1 = sizeof(p1) - 1, l2 = sizeof(p2) - 1, lt = sizeof(t1) - 1;
    const char *c, *q, *e = d + len - 1;
    int64_t t = 0;

    if (len < l1 + ORDER_ID_LEN + l2 + 2 + lt + 2 || memcmp(d, p1, l1) ||
        memcmp(d + l1, id, ORDER_ID_LEN) || memcmp(d + l1 + ORDER_ID_LEN, p2, l2))
        return -1;
    c = d + l1 + ORDER_ID_LEN + l2;
    if (!(q = memchr(c, '"', (size_t)(e - c))) || memchr(c, '\\', (size_t)(q - c)))
        return -1;
    *cust = c;
    *cust_len = (size_t)(q - c);
    if (*e != '}')
        return -1;
    for (q = e; q > d && q[-1] >= '0' && q[-1] <= '9'; q--)
        ;
    if (q == e || (size_t)(q - d) < lt || memcmp(q - lt, t1, lt))
        return -1;
    for (; q < e; q++)
        if (__builtin_mul_overflow(t, 10, &t) || __builtin_add_overflow(t, *q - '0', &t))
            return -1;
    *total = t;
    return 0;
}

/* The general path: any member order, escapes in the customer id. */
static int
slow_placed(read_model_t *m, const cn_stream_event_t *ev, uint64_t *cust_off, int64_t *total)
{
    const char *cust, *tok;
    size_t cust_len = 0, tok_len = 0, k;
    cJSON *str;
    int64_t t = 0;
    int rc;

    if (scan_placed(ev->data, ev->data_len, &cust, &cust_len, &tok, &tok_len))
        return 1;
    for (k = 0; k < tok_len; k++) {
        if (tok[k] < '0' || tok[k] > '9' || __builtin_mul_overflow(t, 10, &t) ||
            __builtin_add_overflow(t, tok[k] - '0', &t))
            return 1;
    }
    if (!(str = cJSON_ParseWithLength(cust, cust_len)))
        return -ENOMEM;
    rc = cJSON_IsString(str)
             ? rm_intern_locked(m, str->valuestring, strlen(str->valuestring), cust_off)
             : 1;
    cJSON_Delete(str);
    *total = t;
    return rc;
}

static int
rm_place_locked(read_model_t *m, const cn_stream_event_t *ev, const char *id)
{
    const char *cust;
    size_t cust_len;
    uint64_t cust_off, h;
    int64_t total;
    summary_t *s;
    size_t mask, i;
    int rc;

    /* Version 1 exists once per stream: only a later OrderPlaced can be a duplicate,
     * and skipping the lookup saves a cache miss per order in a rebuild. */
    if (ev->version != 1 && rm_find_locked(m, id))
        return 0;
    if ((rc = rm_reserve_locked(m, 1)))
        return rc;
    if (!fast_placed(ev->data, ev->data_len, id, &cust, &cust_len, &total))
        rc = rm_intern_locked(m, cust, cust_len, &cust_off);
    else
        rc = slow_placed(m, ev, &cust_off, &total);
    if (rc)
        return rc < 0 ? rc : 0; /* > 0: not an OrderPlaced of ours, nothing to list */
    s = &m->orders[m->n];
    memcpy(s->id, id, ORDER_ID_LEN + 1);
    s->status = ST_PLACED;
    s->customer = cust_off;
    s->total_cents = total;
    s->version = ev->version;
    s->created_ms = s->updated_ms = ev->created_ms;
    h = id_hash(id);
    mask = m->nslots - 1;
    for (i = (size_t)h & mask; m->slots[i].index; i = (i + 1) & mask)
        ;
    m->slots[i] = (slot_t){(uint32_t)(++m->n), (uint32_t)(h >> 32)};
    return 0;
}

/* cn_log_catch_up's fold: cancel and ship need only the stream id and the type. */
static int
rm_fold(const cn_stream_event_t *ev, void *state)
{
    read_model_t *m = state;
    const char *id = ev->stream_id + STREAM_PREFIX_LEN;
    summary_t *s;

    if (memcmp(ev->stream_id, STREAM_PREFIX, STREAM_PREFIX_LEN) != 0 || !is_order_id(id))
        return 0;
    if (!strcmp(ev->type, "OrderPlaced"))
        return rm_place_locked(m, ev, id);
    if (!(s = rm_find_locked(m, id)))
        return 0;
    if (!strcmp(ev->type, "OrderCancelled"))
        s->status = ST_CANCELLED;
    else if (!strcmp(ev->type, "OrderShipped"))
        s->status = ST_SHIPPED;
    s->version = ev->version;
    s->updated_ms = ev->created_ms;
    return 0;
}

static cJSON *
summary_json(const read_model_t *m, const summary_t *s)
{
    return cn_json_object("order_id", cJSON_CreateString(s->id),
                          "customer_id", cJSON_CreateString(rm_customer(m, s)),
                          "status", cJSON_CreateString(status_names[s->status]),
                          "total_cents", json_int(s->total_cents),
                          "version", json_int((int64_t)s->version),
                          "created_at", json_time(s->created_ms),
                          "updated_at", json_time(s->updated_ms), NULL);
}

/* A decimal integer query parameter in [min, max]: 0, or -1 when malformed. */
static int
query_int(const char *s, long min, long max, long *out)
{
    char *end;
    long v;

    if (!s || !*s || *s < '0' || *s > '9')
        return -1;
    errno = 0;
    v = strtol(s, &end, 10);
    if (errno || *end || v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

/* GET /api/v1/orders?status=&customer_id=&limit=&after= */
static cn_response_t
list_orders(cn_request_t *req, void *ctx)
{
    const char *status = cn_request_query(req, "status");
    const char *customer = cn_request_query(req, "customer_id");
    const char *after = cn_request_query(req, "after");
    const char *limit_s = cn_request_query(req, "limit");
    long limit = LIST_LIMIT_DEFAULT;
    int want_status = ST_NONE, rc;
    cJSON *orders = NULL, *next = NULL;
    size_t i, start = 0, count = 0, last = 0;
    uint64_t head = 0;
    int failed = 0;

    (void)ctx;
    if (status) {
        for (want_status = ST_PLACED; want_status <= ST_SHIPPED; want_status++)
            if (!strcmp(status, status_names[want_status]))
                break;
        if (want_status > ST_SHIPPED)
            return cn_bad_request("Query parameter status must be placed, cancelled or "
                                  "shipped");
    }
    if (limit_s && query_int(limit_s, 1, LIST_LIMIT_MAX, &limit))
        return cn_bad_request("Query parameter limit must be an integer from 1 to 500");
    if (after && !is_order_id(after))
        return cn_bad_request("Query parameter after must be an order id");

    if (!(orders = cJSON_CreateArray()))
        return cn_problem(500, "Out of memory");
    pthread_mutex_lock(&rm.lock);
    /* At most one order per event to come: reserve for all of them at once. */
    rc = cn_log_head(req, &head);
    if (!rc && head > rm.position)
        rc = rm_reserve_locked(&rm, (size_t)(head - rm.position < RESERVE_MAX
                                                 ? head - rm.position : RESERVE_MAX));
    if (!rc)
        rc = cn_log_catch_up(req, &rm.position, 0, rm_fold, &rm);
    if (rc) {
        pthread_mutex_unlock(&rm.lock);
        cJSON_Delete(orders);
        fprintf(stderr, "orders: read model catch-up failed at position %" PRIu64 ": %s\n",
                rm.position, cn_strerror(rc < 0 ? rc : -ENOMEM));
        return cn_problem(503, "The order list is not available right now");
    }
    if (after) {
        const summary_t *s = rm_find_locked(&rm, after);
        if (!s) {
            pthread_mutex_unlock(&rm.lock);
            cJSON_Delete(orders);
            return cn_bad_request("Query parameter after names no known order");
        }
        start = (size_t)(s - rm.orders) + 1;
    }
    for (i = start; i < rm.n; i++) {
        const summary_t *s = &rm.orders[i];
        cJSON *o;

        if ((want_status && s->status != want_status) ||
            (customer && strcmp(customer, rm_customer(&rm, s))))
            continue;
        if (count == (size_t)limit) {
            /* One more match exists: the next page starts after the last one returned. */
            next = cJSON_CreateString(rm.orders[last].id);
            if (!next)
                failed = 1;
            break;
        }
        if (!(o = summary_json(&rm, s))) {
            failed = 1;
            break;
        }
        cJSON_AddItemToArray(orders, o);
        last = i;
        count++;
    }
    pthread_mutex_unlock(&rm.lock);
    if (failed) {
        cJSON_Delete(orders);
        return cn_problem(500, "Out of memory");
    }
    if (!next)
        next = cJSON_CreateNull();
    return cn_ok(cn_json_object("orders", orders, "next_after", next, NULL));
}

/* ---- commands ----------------------------------------------------------------------- */

/* An exact integer member in [min, 2^53-1]. Writes the message for a bad one into err
 * and returns -1. */
static int
item_int(const cJSON *item, int index, const char *name, int64_t min, const char *too_small,
         int64_t *out, char *err, size_t errlen)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(item, name);
    double d;

    if (!v) {
        snprintf(err, errlen, "Missing required field: items[%d].%s", index, name);
        return -1;
    }
    d = cJSON_GetNumberValue(v);
    if (!cJSON_IsNumber(v) || !(d >= -JSON_INT_MAX && d <= JSON_INT_MAX) ||
        (double)(int64_t)d != d) {
        snprintf(err, errlen, "Field items[%d].%s must be an integer from %" PRId64
                 " to 9007199254740991", index, name, min);
        return -1;
    }
    if ((int64_t)d < min) {
        snprintf(err, errlen, "Field items[%d].%s %s", index, name, too_small);
        return -1;
    }
    *out = (int64_t)d;
    return 0;
}

static int
item_string(const cJSON *item, int index, const char *name, size_t max, const char **out,
            char *err, size_t errlen)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(item, name);

    if (!v) {
        snprintf(err, errlen, "Missing required field: items[%d].%s", index, name);
        return -1;
    }
    if (!cJSON_IsString(v) || !*v->valuestring) {
        snprintf(err, errlen, "Field items[%d].%s must be a non-empty string", index, name);
        return -1;
    }
    if (strlen(v->valuestring) > max) {
        snprintf(err, errlen, "Field items[%d].%s must be at most %zu bytes", index, name,
                 max);
        return -1;
    }
    *out = v->valuestring;
    return 0;
}

static int __attribute__((format(printf, 3, 4)))
fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -1;
}

/* Validates a PlaceOrder body; on success builds the event's items array and the total. */
static int
validate_order(const cJSON *body, const char **customer, cJSON **items_out, int64_t *total,
               char *err, size_t errlen)
{
    const cJSON *cust = cJSON_GetObjectItemCaseSensitive(body, "customer_id");
    const cJSON *items = cJSON_GetObjectItemCaseSensitive(body, "items");
    const cJSON *it;
    cJSON *out;
    int i = 0;

    *total = 0;
    if (!cJSON_IsObject(body))
        return fail(err, errlen, "Request body must be a JSON object");
    if (!cust)
        return fail(err, errlen, "Missing required field: customer_id");
    if (!cJSON_IsString(cust))
        return fail(err, errlen, "Field customer_id must be a string");
    if (!*cust->valuestring)
        return fail(err, errlen, "Field customer_id must not be empty");
    if (strlen(cust->valuestring) > CUSTOMER_ID_MAX)
        return fail(err, errlen, "Field customer_id must be at most %d bytes",
                    CUSTOMER_ID_MAX);
    if (!items)
        return fail(err, errlen, "Missing required field: items");
    if (!cJSON_IsArray(items))
        return fail(err, errlen, "Field items must be an array");
    if (!items->child)
        return fail(err, errlen, "Field items must not be empty");
    if (cJSON_GetArraySize(items) > ITEMS_MAX)
        return fail(err, errlen, "Field items must have at most %d entries", ITEMS_MAX);
    if (!(out = cJSON_CreateArray()))
        return fail(err, errlen, "Out of memory") - 1;
    cJSON_ArrayForEach(it, items) {
        const char *product, *name;
        int64_t q, p, line;
        cJSON *o;

        if (!cJSON_IsObject(it)) {
            snprintf(err, errlen, "Field items[%d] must be an object", i);
            goto bad;
        }
        if (item_string(it, i, "product_id", PRODUCT_ID_MAX, &product, err, errlen) ||
            item_string(it, i, "name", NAME_MAX_BYTES, &name, err, errlen) ||
            item_int(it, i, "quantity", 1, "must be greater than zero", &q, err, errlen) ||
            item_int(it, i, "unit_price_cents", 0, "must not be negative", &p, err, errlen))
            goto bad;
        if (__builtin_mul_overflow(q, p, &line) || __builtin_add_overflow(*total, line, total)) {
            snprintf(err, errlen, "Order total overflows 64 bits at items[%d]", i);
            goto bad;
        }
        o = cn_json_object("product_id", cJSON_CreateString(product),
                           "name", cJSON_CreateString(name),
                           "quantity", json_int(q),
                           "unit_price_cents", json_int(p), NULL);
        if (!o) {
            snprintf(err, errlen, "Out of memory");
            cJSON_Delete(out);
            return -2;
        }
        cJSON_AddItemToArray(out, o);
        i++;
    }
    *customer = cust->valuestring;
    *items_out = out;
    return 0;
bad:
    cJSON_Delete(out);
    return -1;
}

static int
new_order_id(char out[ORDER_ID_LEN + 1])
{
    static const char hex[] = "0123456789abcdef";
    unsigned char r[16];
    size_t got = 0;
    int i;

    while (got < sizeof(r)) {
        ssize_t n = getrandom(r + got, sizeof(r) - got, 0);
        if (n < 0 && errno != EINTR)
            return -errno;
        if (n > 0)
            got += (size_t)n;
    }
    memcpy(out, ORDER_ID_PREFIX, 4);
    for (i = 0; i < 16; i++) {
        out[4 + 2 * i] = hex[r[i] >> 4];
        out[5 + 2 * i] = hex[r[i] & 15];
    }
    out[ORDER_ID_LEN] = '\0';
    return 0;
}

/* --stream-event-max, read before the workers fork. */
static size_t event_max = 65536;

/* Whether data fits in one event once serialized (--stream-event-max). The append would
 * refuse it otherwise and the layer would answer 500; the client's input deserves a 400
 * saying why. (Strings are UTF-8 already: cn_request_json refuses a body that is not.)
 * Returns 0, -1 with the message in err, or -2 when out of memory. */
static int
event_data_ok(const cJSON *data, char *err, size_t errlen)
{
    size_t len;
    char *text = cn_json_print(data, &len);
    int rc = 0;

    if (!text)
        return fail(err, errlen, "Out of memory") - 1;
    if (len > event_max) {
        snprintf(err, errlen, "The event for this request would be %zu bytes, more than the "
                 "limit of %zu", len, event_max);
        rc = -1;
    }
    free(text);
    return rc;
}

static int
append_order_event(cn_request_t *req, const char *order_id, int64_t expected,
                   const char *type, cJSON *data)
{
    char sid[STREAM_PREFIX_LEN + ORDER_ID_LEN + 1];
    char room[sizeof("order:") + ORDER_ID_LEN];
    const char *rooms[2] = {ROOM_ALL, room};

    stream_of(order_id, sid);
    snprintf(room, sizeof(room), "order:%s", order_id);
    return cn_stream_append_publish(req, sid, expected, type, data, rooms, 2);
}

/* POST /api/v1/orders (durable, orders.create). The handler runs once per key, so the
 * random order id is the key's for good: a retry replays the same id. */
static cn_response_t
place_order(cn_request_t *req, void *ctx)
{
    const cJSON *body = cn_request_json(req);
    const char *customer = NULL;
    cJSON *items = NULL, *data;
    char order_id[ORDER_ID_LEN + 1], err[160], location[64];
    int64_t total;
    cn_response_t res;
    int rc;

    (void)ctx;
    rc = validate_order(body, &customer, &items, &total, err, sizeof(err));
    if (rc == -2)
        return cn_problem(500, err);
    if (rc)
        return cn_bad_request(err);
    if (new_order_id(order_id)) {
        cJSON_Delete(items);
        return cn_problem(500, "No random bytes for an order id");
    }
    data = cn_json_object("order_id", cJSON_CreateString(order_id),
                          "customer_id", cJSON_CreateString(customer),
                          "items", items,
                          "total_cents", json_int(total), NULL);
    if (!data)
        return cn_problem(500, "Out of memory");
    if ((rc = event_data_ok(data, err, sizeof(err)))) {
        cJSON_Delete(data);
        return rc == -2 ? cn_problem(500, err) : cn_bad_request(err);
    }
    if ((rc = append_order_event(req, order_id, CN_STREAM_NO_STREAM, "OrderPlaced", data)))
        return cn_problem(500, "The OrderPlaced event could not be appended");

    res = cn_created(cn_json_object("order_id", cJSON_CreateString(order_id),
                                    "status", cJSON_CreateString("placed"),
                                    "total_cents", json_int(total),
                                    "version", json_int(1), NULL));
    snprintf(location, sizeof(location), API "/%s", order_id);
    if (res.status && cn_response_set_location(&res, location)) {
        cn_response_free(&res);
        return cn_problem(500, "Out of memory");
    }
    return res;
}

/* If-Match on cancel / ship: absent (0), one strong tag "<version>" (1, *version), "*"
 * (2: any existing order), or malformed (-1). */
static int
parse_if_match(const char *h, int64_t *version)
{
    const char *p;
    int64_t v = 0;

    if (!h)
        return 0;
    while (*h == ' ' || *h == '\t')
        h++;
    if (h[0] == '*' && (h[1] == '\0' || h[1] == ' ' || h[1] == '\t')) {
        for (p = h + 1; *p == ' ' || *p == '\t'; p++)
            ;
        return *p ? -1 : 2;
    }
    if (*h != '"' || h[1] == '"')
        return -1;
    for (p = h + 1; *p >= '0' && *p <= '9'; p++)
        if (__builtin_mul_overflow(v, 10, &v) || __builtin_add_overflow(v, *p - '0', &v))
            return -1;
    if (*p != '"' || p == h + 1)
        return -1;
    for (p++; *p == ' ' || *p == '\t'; p++)
        ;
    if (*p)
        return -1;
    *version = v;
    return 1;
}

/* Cancel and ship: the same read-decide-append, with the new status and its event. */
static cn_response_t
transition(cn_request_t *req, int to, const char *type, const char *member,
           const char *value)
{
    const char *order_id = cn_request_param(req, "id");
    const char *verb = to == ST_CANCELLED ? "cancelled" : "shipped";
    int64_t if_match = 0, expected;
    int im = parse_if_match(cn_request_header(req, "If-Match"), &if_match);
    order_state_t o;
    char detail[200];
    cJSON *data, *body;
    cn_response_t res;
    int rc;

    if (!is_order_id(order_id))
        return order_not_found(order_id);
    if (im < 0)
        return cn_bad_request("If-Match must be one strong entity tag such as \"3\" (the "
                              "order's version, quoted) or *");
    if ((rc = load_order(req, order_id, 0, &o)))
        return cn_problem(500, "The order could not be read");
    if (o.version == 0) {
        res = order_not_found(order_id);
        if (im > 0) { /* RFC 9110: If-Match on a missing resource is a failed precondition */
            cn_response_free(&res);
            res = order_problem(412, "urn:cnerium:orders:precondition-failed",
                                "Order does not exist (If-Match given)",
                                cn_json_object("order_id", cJSON_CreateString(order_id),
                                               NULL));
            cn_response_set_persist(&res, CN_PERSIST_NEVER);
        }
        return res;
    }
    if (im == 1 && (uint64_t)if_match != o.version) {
        /* Not stored: the client learns the current version and retries with it, maybe
         * under the same key. */
        snprintf(detail, sizeof(detail),
                 "Order is at version %" PRIu64 ", If-Match asked for %" PRId64, o.version,
                 if_match);
        res = order_problem(412, "urn:cnerium:orders:precondition-failed", detail,
                            cn_json_object("order_id", cJSON_CreateString(order_id),
                                           "current_version", json_int((int64_t)o.version),
                                           NULL));
        cn_response_set_persist(&res, CN_PERSIST_NEVER);
        return res;
    }
    if (o.status != ST_PLACED) {
        /* Final: a cancelled or shipped order never changes again, so this answer is the
         * key's for good and is stored like any other 4xx. */
        snprintf(detail, sizeof(detail), "Order cannot be %s: it is %s", verb,
                 status_names[o.status]);
        return order_problem(400, "urn:cnerium:orders:invalid-transition", detail,
                             cn_json_object("order_id", cJSON_CreateString(order_id),
                                            "current_status",
                                            cJSON_CreateString(status_names[o.status]),
                                            "version", json_int((int64_t)o.version),
                                            NULL));
    }

    expected = im == 1 ? if_match : (int64_t)o.version;
    if (im == 1 && cn_stream_conflict_status(req, 412))
        return cn_problem(500, "Cannot set the conflict status");
    data = cn_json_object("order_id", cJSON_CreateString(order_id),
                          member, cJSON_CreateString(value), NULL);
    if (!data)
        return cn_problem(500, "Out of memory");
    if ((rc = event_data_ok(data, detail, sizeof(detail)))) {
        cJSON_Delete(data);
        return rc == -2 ? cn_problem(500, detail) : cn_bad_request(detail);
    }
    if (append_order_event(req, order_id, expected, type, data))
        return cn_problem(500, "The order event could not be appended");

    body = cn_json_object("order_id", cJSON_CreateString(order_id),
                          "status", cJSON_CreateString(verb), NULL);
    if (body && to == ST_SHIPPED)
        cJSON_AddItemToObject(body, "tracking_number", cJSON_CreateString(value));
    if (body)
        cJSON_AddItemToObject(body, "version", json_int((int64_t)o.version + 1));
    return cn_ok(body);
}

/* The body of cancel / ship: empty or a JSON object. NULL + *bad for anything else. */
static const cJSON *
command_body(cn_request_t *req, int *bad)
{
    size_t len;
    const cJSON *body;

    *bad = 0;
    cn_request_body(req, &len);
    if (len == 0)
        return NULL;
    body = cn_request_json(req);
    if (!cJSON_IsObject(body))
        *bad = 1;
    return body;
}

/* POST /api/v1/orders/{id}/cancel (durable, orders.cancel), body {"reason"} optional. */
static cn_response_t
cancel_order(cn_request_t *req, void *ctx)
{
    int bad;
    const cJSON *body = command_body(req, &bad);
    const cJSON *reason = cJSON_GetObjectItemCaseSensitive(body, "reason");

    (void)ctx;
    if (bad)
        return cn_bad_request("Request body must be empty or a JSON object");
    if (reason && !cJSON_IsString(reason))
        return cn_bad_request("Field reason must be a string");
    if (reason && strlen(reason->valuestring) > REASON_MAX)
        return cn_bad_request("Field reason must be at most 1024 bytes");
    return transition(req, ST_CANCELLED, "OrderCancelled", "reason",
                      reason ? reason->valuestring : "Cancelled by customer");
}

/* POST /api/v1/orders/{id}/ship (durable, orders.ship), body {"tracking_number"}. */
static cn_response_t
ship_order(cn_request_t *req, void *ctx)
{
    int bad;
    const cJSON *body = command_body(req, &bad);
    const cJSON *tn = cJSON_GetObjectItemCaseSensitive(body, "tracking_number");

    (void)ctx;
    if (bad)
        return cn_bad_request("Request body must be a JSON object");
    if (!tn)
        return cn_bad_request("Missing required field: tracking_number");
    if (!cJSON_IsString(tn) || !*tn->valuestring)
        return cn_bad_request("Field tracking_number must be a non-empty string");
    if (strlen(tn->valuestring) > TRACKING_MAX)
        return cn_bad_request("Field tracking_number must be at most 128 bytes");
    return transition(req, ST_SHIPPED, "OrderShipped", "tracking_number", tn->valuestring);
}

/* ---- queries ------------------------------------------------------------------------ */

/* GET /api/v1/orders/{id} */
static cn_response_t
get_order(cn_request_t *req, void *ctx)
{
    const char *order_id = cn_request_param(req, "id");
    const cJSON *items;
    order_state_t o;
    cJSON *doc;
    cn_response_t res;
    char etag[32];
    int64_t total;

    (void)ctx;
    if (!is_order_id(order_id))
        return order_not_found(order_id);
    if (load_order(req, order_id, 1, &o))
        return cn_problem(500, "The order could not be read");
    if (o.version == 0 || !o.placed)
        return order_state_free(&o), order_not_found(order_id);
    items = cJSON_GetObjectItemCaseSensitive(o.placed, "items");
    total = items_total(items);
    doc = cn_json_object("order_id", cJSON_CreateString(order_id),
                         "customer_id",
                         cJSON_CreateString(cn_json_string_or(o.placed, "customer_id", "")),
                         "items", items_json(items),
                         "status", cJSON_CreateString(status_names[o.status]),
                         "total_cents", json_int(total), NULL);
    if (doc && o.status == ST_SHIPPED)
        cJSON_AddItemToObject(doc, "tracking_number",
                              cJSON_CreateString(cn_json_string_or(o.last, "tracking_number",
                                                                   "")));
    if (doc && o.status == ST_CANCELLED)
        cJSON_AddItemToObject(doc, "reason",
                              cJSON_CreateString(cn_json_string_or(o.last, "reason", "")));
    if (doc) {
        cJSON_AddItemToObject(doc, "created_at", json_time(o.created_ms));
        cJSON_AddItemToObject(doc, "updated_at", json_time(o.updated_ms));
        cJSON_AddItemToObject(doc, "version", json_int((int64_t)o.version));
    }
    snprintf(etag, sizeof(etag), "\"%" PRIu64 "\"", o.version);
    order_state_free(&o);
    res = cn_ok(doc);
    if (res.status && cn_response_add_header(&res, "ETag", etag)) {
        cn_response_free(&res);
        return cn_problem(500, "Out of memory");
    }
    return res;
}

/* GET /api/v1/orders/{id}/events?from=&limit= */
static cn_response_t
get_events(cn_request_t *req, void *ctx)
{
    const char *order_id = cn_request_param(req, "id");
    const char *from_s = cn_request_query(req, "from");
    const char *limit_s = cn_request_query(req, "limit");
    char sid[STREAM_PREFIX_LEN + ORDER_ID_LEN + 1];
    long from = 1, limit = EVENTS_LIMIT_DEFAULT;
    cn_stream_page_t page = {0};
    uint64_t version;
    cJSON *events, *next;
    size_t i;

    (void)ctx;
    if (!is_order_id(order_id))
        return order_not_found(order_id);
    if (from_s && query_int(from_s, 1, 0x7fffffffL, &from))
        return cn_bad_request("Query parameter from must be a version from 1");
    if (limit_s && query_int(limit_s, 1, EVENTS_LIMIT_MAX, &limit))
        return cn_bad_request("Query parameter limit must be an integer from 1 to 1000");
    stream_of(order_id, sid);
    if (cn_stream_version(req, sid, &version))
        return cn_problem(500, "The order could not be read");
    if (version == 0)
        return order_not_found(order_id);
    if (cn_stream_read(req, sid, (uint64_t)from, CN_STREAM_FORWARD, (size_t)limit, &page))
        return cn_problem(500, "The order's events could not be read");
    if (!(events = cJSON_CreateArray())) {
        cn_stream_page_free(&page);
        return cn_problem(500, "Out of memory");
    }
    for (i = 0; i < page.count; i++) {
        const cn_stream_event_t *ev = &page.events[i];
        /* ev->data points into the store's pages, unterminated: copy exactly its bytes. */
        char *data = malloc(ev->data_len + 1);
        if (data) {
            memcpy(data, ev->data, ev->data_len);
            data[ev->data_len] = '\0';
        }
        /* The data as stored, byte for byte: the layer validated it as JSON. */
        cJSON *e = cn_json_object("type", cJSON_CreateString(ev->type),
                                  "version", json_int((int64_t)ev->version),
                                  "position", json_int((int64_t)ev->position),
                                  "created_at", json_time(ev->created_ms),
                                  "data", data ? cJSON_CreateRaw(data) : NULL, NULL);
        free(data);
        if (!e) {
            cJSON_Delete(events);
            cn_stream_page_free(&page);
            return cn_problem(500, "Out of memory");
        }
        cJSON_AddItemToArray(events, e);
    }
    next = page.more ? json_int((int64_t)page.next) : cJSON_CreateNull();
    cn_stream_page_free(&page);
    return cn_ok(cn_json_object("order_id", cJSON_CreateString(order_id),
                                "version", json_int((int64_t)version),
                                "events", events, "next_from", next, NULL));
}

static cn_response_t
health(cn_request_t *req, void *ctx)
{
    (void)req;
    (void)ctx;
    return cn_ok(cn_json_object("status", cJSON_CreateString("ok"), NULL));
}

int
main(int argc, char **argv)
{
    cn_config_t cfg = cn_config_development();
    cn_app_t *app;
    int rc;

    cn_config_set_name(&cfg, "orders");
    cn_config_set_node_id(&cfg, "orders-node");
    cn_config_set_data_dir(&cfg, "data/orders");
    cn_config_enable_realtime(&cfg, "/ws", "127.0.0.1", 9090);
    cn_config_from_args(&cfg, argc, argv);
    event_max = cfg.stream_event_max;

    app = cn_app_new(&cfg);
    if (!app || cn_get(app, "/health", health, NULL) ||
        cn_durable_post(app, API, "orders.create", place_order, NULL) ||
        cn_durable_post(app, API "/{id}/cancel", "orders.cancel", cancel_order, NULL) ||
        cn_durable_post(app, API "/{id}/ship", "orders.ship", ship_order, NULL) ||
        cn_get(app, API, list_orders, NULL) ||
        cn_get(app, API "/{id}", get_order, NULL) ||
        cn_get(app, API "/{id}/events", get_events, NULL) ||
        cn_ws_command(app, "PlaceOrder", "POST", API) ||
        cn_ws_command(app, "CancelOrder", "POST", API "/{order_id}/cancel") ||
        cn_ws_command(app, "ShipOrder", "POST", API "/{order_id}/ship")) {
        fprintf(stderr, "orders: cannot set up routes\n");
        cn_app_free(app);
        return 1;
    }
    rc = cn_app_run(app);
    cn_app_free(app);
    return rc;
}
