/*
 * stream/stream.c - event streams (cnerium/stream.h): buffering appends in a request,
 * and reading streams and the global log from the store.
 *
 * Runs on request threads. The request is used by one thread at a time; reads open
 * their own LMDB read transactions, so any number run in parallel.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cnerium/error.h"
#include "cnerium/json.h"
#include "cnerium/stream.h"
#include "http/request_internal.h"
#include "realtime/event.h"
#include "store/format.h"
#include "store/store.h"
#include "stream/stream.h"
#include "support/utf8.h"

#define READ_MAX 1000

int
cn__stream_id_valid(const char *s, size_t n)
{
    if (n == 0 || n > CN_STREAM_ID_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] > 0x7e)
            return 0;
    }
    return 1;
}

int
cn__stream_type_valid(const char *s, size_t n)
{
    if (n == 0 || n > CN_STREAM_TYPE_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

int
cn__stream_expected_valid(int64_t e)
{
    return e >= CN_STREAM_EXISTS;
}

int
cn__stream_expected_holds(int64_t expected, uint64_t current)
{
    switch (expected) {
    case CN_STREAM_ANY:
        return 1;
    case CN_STREAM_NO_STREAM:
        return current == 0;
    case CN_STREAM_EXISTS:
        return current > 0;
    default:
        return expected >= 0 && (uint64_t)expected == current;
    }
}

void
cn__appends_free(cn_append_t *list)
{
    while (list) {
        cn_append_t *next = list->next;
        free(list->stream);
        free(list->type);
        free(list->data);
        for (unsigned i = 0; i < list->nrooms; i++)
            free(list->rooms[i]);
        free(list);
        list = next;
    }
}

/* A room: as cn_emit_to takes it, and without '"' or '\\' (it goes into JSON as is). */
static int
room_valid(const char *s)
{
    size_t n = 0;

    for (; s[n]; n++) {
        if ((unsigned char)s[n] < 0x20 || (unsigned char)s[n] > 0x7e || s[n] == '"' ||
            s[n] == '\\')
            return 0;
    }
    return n >= 1 && n <= CN_EVENT_ROOM_MAX;
}

int
cn_stream_append_publish(cn_request_t *req, const char *stream_id, int64_t expected,
                         const char *type, cJSON *data, const char *const *rooms,
                         size_t nrooms)
{
    cn_append_t *a = NULL;
    int rc;

    if (!req) {
        cJSON_Delete(data);
        return -EINVAL;
    }
    if (!req->is_durable || !stream_id || !cn__stream_id_valid(stream_id, strlen(stream_id)) ||
        !type || !cn__stream_type_valid(type, strlen(type)) ||
        !cn__stream_expected_valid(expected) || nrooms > CN_STREAM_ROOMS_MAX ||
        (nrooms && !rooms)) {
        rc = -EINVAL;
        goto fail;
    }
    for (size_t i = 0; i < nrooms; i++) {
        if (!rooms[i] || !room_valid(rooms[i])) {
            rc = -EINVAL;
            goto fail;
        }
    }
    if (req->nappends >= CN_STREAM_APPENDS_MAX) {
        rc = CN_ETOOBIG;
        goto fail;
    }
    rc = -ENOMEM;
    if (!(a = calloc(1, sizeof(*a))) || !(a->stream = strdup(stream_id)) ||
        !(a->type = strdup(type)))
        goto fail;
    a->data = data ? cn_json_print(data, &a->data_len) : strdup("null");
    if (!a->data)
        goto fail;
    if (!data)
        a->data_len = 4;
    if (a->data_len > req->stream_event_max) {
        rc = CN_ETOOBIG;
        goto fail;
    }
    /* cJSON prints a string's bytes as they were parsed: refuse what is not UTF-8. */
    if (!cn__utf8_valid(a->data, a->data_len)) {
        rc = -EILSEQ;
        goto fail;
    }
    for (size_t i = 0; i < nrooms; i++) {
        if (!(a->rooms[a->nrooms] = strdup(rooms[i])))
            goto fail;
        a->nrooms++;
    }
    a->expected = expected;
    cJSON_Delete(data);
    if (!req->appends_tail)
        req->appends_tail = &req->appends;
    *req->appends_tail = a;
    req->appends_tail = &a->next;
    req->nappends++;
    if (expected != CN_STREAM_ANY)
        req->appends_conditional = 1;
    return 0;

fail:
    cJSON_Delete(data);
    cn__appends_free(a);
    /* Like a failed cn_emit: the request must not be stored without this append. */
    req->events_failed = 1;
    return rc;
}

int
cn_stream_append(cn_request_t *req, const char *stream_id, int64_t expected,
                 const char *type, cJSON *data)
{
    return cn_stream_append_publish(req, stream_id, expected, type, data, NULL, 0);
}

int
cn_stream_conflict_status(cn_request_t *req, int status)
{
    if (!req || status < 400 || status > 499)
        return -EINVAL;
    req->conflict_status = status;
    return 0;
}

int
cn_stream_retry_on_conflict(cn_request_t *req, unsigned max_reruns)
{
    if (!req || !req->is_durable || max_reruns > CN_STREAM_RERUNS_MAX)
        return -EINVAL;
    req->reruns_allowed = max_reruns;
    return 0;
}

unsigned
cn_stream_reruns(const cn_request_t *req)
{
    return req ? req->reruns : 0;
}

int
cn_stream_version(cn_request_t *req, const char *stream_id, uint64_t *version)
{
    if (!req || !stream_id || !version || !cn__stream_id_valid(stream_id, strlen(stream_id)))
        return -EINVAL;
    if (!req->store)
        return CN_ESTORE;
    return cn__store_stream_version(req->store, stream_id, strlen(stream_id), version);
}

/* ---- pages ---- */

/* A page being filled: one malloc per event holding its strings. */
typedef struct page_fill {
    cn_stream_page_t *page;
    size_t max; /* events wanted; one more is read to know whether more follow */
    int backward, by_position;
    int rc;
} page_fill_t;

static int
page_add(uint64_t position, const cn_log_view_t *e, void *arg)
{
    page_fill_t *f = arg;
    cn_stream_page_t *pg = f->page;
    cn_stream_event_t *ev;
    char *s;

    if (pg->count == f->max) {
        pg->more = 1;
        pg->next = f->by_position ? position : e->version;
        return 1;
    }
    if (!(s = malloc(e->stream_len + e->type_len + e->data_len + 3))) {
        f->rc = -ENOMEM;
        return 1;
    }
    ev = &pg->events[pg->count++];
    memcpy(s, e->stream, e->stream_len);
    s[e->stream_len] = '\0';
    ev->stream_id = s;
    s += e->stream_len + 1;
    memcpy(s, e->type, e->type_len);
    s[e->type_len] = '\0';
    ev->type = s;
    s += e->type_len + 1;
    memcpy(s, e->data, e->data_len);
    s[e->data_len] = '\0';
    ev->data = s;
    ev->data_len = e->data_len;
    ev->version = e->version;
    ev->position = position;
    ev->created_ms = e->created_ms;
    return 0;
}

void
cn_stream_page_free(cn_stream_page_t *page)
{
    if (!page)
        return;
    for (size_t i = 0; i < page->count; i++)
        free((char *)page->events[i].stream_id); /* one block per event */
    free(page->events);
    memset(page, 0, sizeof(*page));
}

static int
page_start(cn_stream_page_t *page, size_t max, page_fill_t *f)
{
    memset(page, 0, sizeof(*page));
    if (max < 1 || max > READ_MAX)
        return -EINVAL;
    if (!(page->events = calloc(max, sizeof(*page->events))))
        return -ENOMEM;
    *f = (page_fill_t){page, max, 0, 0, 0};
    return 0;
}

static int
page_end(cn_stream_page_t *page, page_fill_t *f, int rc)
{
    if (!rc)
        rc = f->rc;
    if (rc)
        cn_stream_page_free(page);
    return rc;
}

int
cn_stream_read(cn_request_t *req, const char *stream_id, uint64_t from,
               cn_stream_direction_t dir, size_t max, cn_stream_page_t *page)
{
    page_fill_t f;
    int rc;

    if (!page)
        return -EINVAL;
    memset(page, 0, sizeof(*page));
    if (!req || !stream_id || !cn__stream_id_valid(stream_id, strlen(stream_id)) ||
        (dir != CN_STREAM_FORWARD && dir != CN_STREAM_BACKWARD))
        return -EINVAL;
    if (!req->store)
        return CN_ESTORE;
    if ((rc = page_start(page, max, &f)))
        return rc;
    f.backward = dir == CN_STREAM_BACKWARD;
    rc = cn__store_stream_read(req->store, stream_id, strlen(stream_id), from, f.backward,
                               max + 1, page_add, &f);
    return page_end(page, &f, rc);
}

int
cn_log_read(cn_request_t *req, uint64_t from, size_t max, cn_stream_page_t *page)
{
    page_fill_t f;
    int rc;

    if (!page)
        return -EINVAL;
    memset(page, 0, sizeof(*page));
    if (!req)
        return -EINVAL;
    if (!req->store)
        return CN_ESTORE;
    if ((rc = page_start(page, max, &f)))
        return rc;
    f.by_position = 1;
    rc = cn__store_log_read(req->store, from, max + 1, page_add, &f);
    return page_end(page, &f, rc);
}

int
cn_log_head(cn_request_t *req, uint64_t *position)
{
    if (!req || !position)
        return -EINVAL;
    if (!req->store)
        return CN_ESTORE;
    return cn__store_log_head(req->store, position);
}

/* ---- catch-up ---- */

typedef struct fold_state {
    cn_fold_cb fold;
    void *state;
    uint64_t *position;
    char buf[CN_STREAM_ID_MAX + 1 + CN_STREAM_TYPE_MAX + 1];
    char *data; /* grows to the largest event's data */
    size_t data_cap;
    int rc;
} fold_state_t;

/* Hands one log event to the fold with NUL-terminated strings, copied into buffers that
 * are reused from one event to the next (a rebuild reads millions of them). */
static int
fold_one(uint64_t position, const cn_log_view_t *e, void *arg)
{
    fold_state_t *f = arg;
    cn_stream_event_t ev;
    int rc;

    if (e->data_len + 1 > f->data_cap) {
        size_t cap = f->data_cap ? f->data_cap : 4096;
        char *nd;
        while (cap < e->data_len + 1)
            cap *= 2;
        if (!(nd = realloc(f->data, cap))) {
            f->rc = -ENOMEM;
            return 1;
        }
        f->data = nd;
        f->data_cap = cap;
    }
    memcpy(f->buf, e->stream, e->stream_len);
    f->buf[e->stream_len] = '\0';
    memcpy(f->buf + e->stream_len + 1, e->type, e->type_len);
    f->buf[e->stream_len + 1 + e->type_len] = '\0';
    memcpy(f->data, e->data, e->data_len);
    f->data[e->data_len] = '\0';
    ev = (cn_stream_event_t){f->buf, e->version, position, e->created_ms,
                             f->buf + e->stream_len + 1, f->data, e->data_len};
    if ((rc = f->fold(&ev, f->state))) {
        f->rc = rc;
        return 1;
    }
    *f->position = position;
    return 0;
}

int
cn_log_catch_up(cn_request_t *req, uint64_t *position, size_t max, cn_fold_cb fold,
                void *state)
{
    fold_state_t *f;
    int rc;

    if (!req || !position || !fold)
        return -EINVAL;
    if (!req->store)
        return CN_ESTORE;
    if (!(f = calloc(1, sizeof(*f))))
        return -ENOMEM;
    f->fold = fold;
    f->state = state;
    f->position = position;
    rc = cn__store_log_read(req->store, *position + 1, max ? max : SIZE_MAX, fold_one, f);
    if (!rc)
        rc = f->rc;
    free(f->data);
    free(f);
    return rc;
}

/* A stream touched earlier in the same list, with the version it will have. */
typedef struct touched {
    const char *stream;
    size_t len;
    uint64_t version;
} touched_t;

int
cn__appends_check(const uint8_t *list, size_t len, cn_stream_version_cb version, void *arg)
{
    touched_t t[CN_STREAM_APPENDS_MAX];
    const uint8_t *cur, *end = list + len;
    long count = cn__appends_begin(list, len, &cur);
    size_t nt = 0;
    int rc;

    if (count < 1 || count > CN_STREAM_APPENDS_MAX)
        return CN_ECORRUPT;
    for (long i = 0; i < count; i++) {
        cn_append_view_t a;
        touched_t *tt = NULL;
        uint64_t v;

        if (cn__appends_next(&cur, end, &a))
            return CN_ECORRUPT;
        for (size_t j = 0; j < nt && !tt; j++) {
            if (t[j].len == a.stream_len && !memcmp(t[j].stream, a.stream, a.stream_len))
                tt = &t[j];
        }
        if (tt) {
            v = tt->version;
        } else {
            if ((rc = version(a.stream, a.stream_len, &v, arg)))
                return rc;
            tt = &t[nt++];
            *tt = (touched_t){a.stream, a.stream_len, v};
        }
        if (!cn__stream_expected_holds(a.expected, v))
            return CN_ECONFLICT;
        tt->version = v + 1;
    }
    return cur == end ? 0 : CN_ECORRUPT;
}
