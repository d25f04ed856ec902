/*
 * store/format.c - encoding and decoding every byte layout in store/format.h. Decoding
 * treats its input as untrusted: every length is checked before use.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "cnerium/error.h"
#include "realtime/event.h"
#include "store/format.h"
#include "store/store.h"
#include "stream/stream.h"
#include "support/bytes.h"
#include "support/crc32c.h"

/* ---- stored-response record ---- */

static const uint8_t magic[4] = {'C', 'N', 'R', 'R'};

size_t
cn__record_encoded_size(const cn_record_t *rec)
{
    return CN_RECORD_HEADER_LEN + (size_t)rec->content_type_len + rec->location_len +
           rec->body_len + (rec->headers_len ? 4 + (size_t)rec->headers_len : 0) +
           CN_RECORD_TRAILER_LEN;
}

int
cn__record_encode(const cn_record_t *rec, uint8_t *buf, size_t cap, size_t *written)
{
    size_t need, off = CN_RECORD_HEADER_LEN;

    if (rec->content_type_len > CN_RECORD_FIELD_MAX || rec->location_len > CN_RECORD_FIELD_MAX ||
        rec->body_len > CN_RECORD_FIELD_MAX || rec->headers_len > CN_RECORD_HEADERS_MAX)
        return CN_ETOOBIG;
    need = cn__record_encoded_size(rec);
    if (cap < need)
        return -ENOSPC;

    memcpy(buf, magic, 4);
    buf[4] = rec->headers_len ? CN_RECORD_VERSION_HEADERS : CN_RECORD_VERSION;
    buf[5] = 0;
    cn__put_le16(buf + 6, rec->status);
    cn__put_le64(buf + 8, rec->created_ms);
    cn__put_le64(buf + 16, rec->expires_ms);
    memcpy(buf + 24, rec->fingerprint, CN_SHA256_LEN);
    cn__put_le32(buf + 56, rec->content_type_len);
    cn__put_le32(buf + 60, rec->location_len);
    cn__put_le32(buf + 64, rec->body_len);
    if (rec->content_type_len)
        memcpy(buf + off, rec->content_type, rec->content_type_len);
    off += rec->content_type_len;
    if (rec->location_len)
        memcpy(buf + off, rec->location, rec->location_len);
    off += rec->location_len;
    if (rec->body_len)
        memcpy(buf + off, rec->body, rec->body_len);
    off += rec->body_len;
    if (rec->headers_len) {
        cn__put_le32(buf + off, rec->headers_len);
        memcpy(buf + off + 4, rec->headers, rec->headers_len);
        off += 4 + (size_t)rec->headers_len;
    }
    cn__put_le32(buf + off, cn__crc32c(0, buf, off));
    *written = need;
    return 0;
}

int
cn__record_decode(const uint8_t *buf, size_t len, cn_record_t *rec)
{
    cn_record_t r;
    size_t off = CN_RECORD_HEADER_LEN, total;

    if (len < CN_RECORD_HEADER_LEN + CN_RECORD_TRAILER_LEN || memcmp(buf, magic, 4))
        return CN_ECORRUPT;
    r.content_type_len = cn__get_le32(buf + 56);
    r.location_len = cn__get_le32(buf + 60);
    r.body_len = cn__get_le32(buf + 64);
    if (r.content_type_len > CN_RECORD_FIELD_MAX || r.location_len > CN_RECORD_FIELD_MAX ||
        r.body_len > CN_RECORD_FIELD_MAX)
        return CN_ECORRUPT;
    total = CN_RECORD_HEADER_LEN + (size_t)r.content_type_len + r.location_len + r.body_len +
            CN_RECORD_TRAILER_LEN;
    r.headers = NULL;
    r.headers_len = 0;
    if (len >= total + 4 && buf[4] == CN_RECORD_VERSION_HEADERS) {
        r.headers_len = cn__get_le32(buf + total - CN_RECORD_TRAILER_LEN);
        if (r.headers_len == 0 || r.headers_len > CN_RECORD_HEADERS_MAX)
            return CN_ECORRUPT;
        total += 4 + (size_t)r.headers_len;
    }
    if (total != len)
        return CN_ECORRUPT;
    if (cn__get_le32(buf + len - 4) != cn__crc32c(0, buf, len - 4))
        return CN_ECORRUPT;
    /* The CRC covers the version byte, so a mismatch here is a real format change. */
    if (buf[4] != CN_RECORD_VERSION && buf[4] != CN_RECORD_VERSION_HEADERS)
        return CN_EVERSION;
    if (buf[5] != 0 || (buf[4] == CN_RECORD_VERSION_HEADERS && !r.headers_len))
        return CN_ECORRUPT;

    r.status = cn__get_le16(buf + 6);
    r.created_ms = cn__get_le64(buf + 8);
    r.expires_ms = cn__get_le64(buf + 16);
    memcpy(r.fingerprint, buf + 24, CN_SHA256_LEN);
    r.content_type = (const char *)buf + off;
    off += r.content_type_len;
    r.location = (const char *)buf + off;
    off += r.location_len;
    r.body = (const char *)buf + off;
    off += r.body_len;
    if (r.headers_len)
        r.headers = (const char *)buf + off + 4;
    *rec = r;
    return 0;
}

/* ---- events ---- */

size_t
cn__events_encoded_size(const cn_event_t *list)
{
    size_t n = 2;

    for (const cn_event_t *e = list; e; e = e->next)
        n += 8 + strlen(e->type) + (e->room ? strlen(e->room) : 0) + e->payload_len;
    return n;
}

int
cn__events_encode(const cn_event_t *list, uint8_t *out, size_t cap, size_t *written)
{
    size_t count = 0, at = 2;

    if (cap < 2)
        return CN_ETOOBIG;
    for (const cn_event_t *e = list; e; e = e->next) {
        size_t tl = strlen(e->type), rl = e->room ? strlen(e->room) : 0;
        if (tl > UINT16_MAX || rl > UINT16_MAX || e->payload_len > UINT32_MAX ||
            count == UINT16_MAX || cap - at < 8 + tl + rl + e->payload_len)
            return CN_ETOOBIG;
        cn__put_le16(out + at, (uint16_t)tl);
        cn__put_le16(out + at + 2, (uint16_t)rl);
        cn__put_le32(out + at + 4, (uint32_t)e->payload_len);
        at += 8;
        memcpy(out + at, e->type, tl);
        at += tl;
        if (rl)
            memcpy(out + at, e->room, rl);
        at += rl;
        memcpy(out + at, e->payload, e->payload_len);
        at += e->payload_len;
        count++;
    }
    cn__put_le16(out, (uint16_t)count);
    *written = at;
    return 0;
}

long
cn__events_begin(const uint8_t *p, size_t len, const uint8_t **cursor)
{
    if (len < 2)
        return -1;
    *cursor = p + 2;
    return cn__get_le16(p);
}

int
cn__events_next(const uint8_t **cursor, const uint8_t *end, cn_event_view_t *ev)
{
    const uint8_t *p = *cursor;
    size_t tl, rl, pl;

    if (end - p < 8)
        return CN_ECORRUPT;
    tl = cn__get_le16(p);
    rl = cn__get_le16(p + 2);
    pl = cn__get_le32(p + 4);
    p += 8;
    /* A type needs at most 15 bits: bit 15 of a stored event's length is a flag. */
    if (tl == 0 || tl > 0x7fff || (size_t)(end - p) < tl + rl + pl)
        return CN_ECORRUPT;
    ev->merged = 0;
    ev->type = (const char *)p;
    ev->type_len = tl;
    ev->room = rl ? (const char *)p + tl : NULL;
    ev->room_len = rl;
    ev->payload = (const char *)p + tl + rl;
    ev->payload_len = pl;
    *cursor = p + tl + rl + pl;
    return 0;
}

/* Bit 15 of a stored event's type length: a merged (published stream) event. */
#define STORED_MERGED 0x8000u

int
cn__event_stored_decode(const uint8_t *p, size_t len, cn_event_view_t *ev)
{
    size_t tl, rl, pl;

    if (len < 16)
        return CN_ECORRUPT;
    tl = cn__get_le16(p + 8) & ~STORED_MERGED;
    rl = cn__get_le16(p + 10);
    pl = cn__get_le32(p + 12);
    if (tl == 0 || len - 16 != tl + rl + pl)
        return CN_ECORRUPT;
    ev->created_ms = cn__get_le64(p);
    ev->merged = (cn__get_le16(p + 8) & STORED_MERGED) != 0;
    ev->type = (const char *)p + 16;
    ev->type_len = tl;
    ev->room = rl ? (const char *)p + 16 + tl : NULL;
    ev->room_len = rl;
    ev->payload = (const char *)p + 16 + tl + rl;
    ev->payload_len = pl;
    return 0;
}

size_t
cn__event_stored_size(const cn_event_view_t *ev)
{
    return 8 + 8 + ev->type_len + ev->room_len + ev->payload_len;
}

void
cn__event_stored_encode(const cn_event_view_t *ev, uint8_t *out)
{
    for (int i = 0; i < 8; i++)
        out[i] = (uint8_t)(ev->created_ms >> (8 * i));
    out += 8;
    cn__put_le16(out, (uint16_t)(ev->type_len | (ev->merged ? STORED_MERGED : 0)));
    cn__put_le16(out + 2, (uint16_t)ev->room_len);
    cn__put_le32(out + 4, (uint32_t)ev->payload_len);
    out += 8;
    memcpy(out, ev->type, ev->type_len);
    out += ev->type_len;
    if (ev->room_len)
        memcpy(out, ev->room, ev->room_len);
    out += ev->room_len;
    memcpy(out, ev->payload, ev->payload_len);
}

/* ---- stream appends ---- */

size_t
cn__appends_encoded_size(const cn_append_t *list)
{
    size_t n = 2;

    for (const cn_append_t *a = list; a; a = a->next) {
        n += CN_APPEND_HEADER + strlen(a->stream) + strlen(a->type) + a->data_len;
        for (unsigned i = 0; i < a->nrooms; i++)
            n += 1 + strlen(a->rooms[i]);
    }
    return n;
}

int
cn__appends_encode(const cn_append_t *list, uint8_t *out, size_t cap, size_t *written)
{
    size_t count = 0, at = 2;

    if (cap < 2)
        return CN_ETOOBIG;
    for (const cn_append_t *a = list; a; a = a->next) {
        size_t sl = strlen(a->stream), tl = strlen(a->type), need = CN_APPEND_HEADER;

        for (unsigned i = 0; i < a->nrooms; i++)
            need += 1 + strlen(a->rooms[i]);
        if (sl > UINT8_MAX || tl > UINT8_MAX || a->nrooms > CN_APPEND_ROOMS_MAX ||
            a->data_len > UINT32_MAX || count == UINT16_MAX ||
            cap - at < need + sl + tl + a->data_len)
            return CN_ETOOBIG;
        out[at] = (uint8_t)sl;
        out[at + 1] = (uint8_t)tl;
        out[at + 2] = (uint8_t)a->nrooms;
        out[at + 3] = 0;
        cn__put_le64(out + at + 4, (uint64_t)a->expected);
        cn__put_le32(out + at + 12, (uint32_t)a->data_len);
        at += CN_APPEND_HEADER;
        memcpy(out + at, a->stream, sl);
        at += sl;
        memcpy(out + at, a->type, tl);
        at += tl;
        memcpy(out + at, a->data, a->data_len);
        at += a->data_len;
        for (unsigned i = 0; i < a->nrooms; i++) {
            size_t rl = strlen(a->rooms[i]);
            if (rl > UINT8_MAX)
                return CN_ETOOBIG;
            out[at++] = (uint8_t)rl;
            memcpy(out + at, a->rooms[i], rl);
            at += rl;
        }
        count++;
    }
    cn__put_le16(out, (uint16_t)count);
    *written = at;
    return 0;
}

long
cn__appends_begin(const uint8_t *p, size_t len, const uint8_t **cursor)
{
    if (len < 2)
        return -1;
    *cursor = p + 2;
    return cn__get_le16(p);
}

/* A room: 1..CN_EVENT_ROOM_MAX printable bytes without '"' or '\\' (cnerium/stream.h). */
static int
room_valid(const uint8_t *s, size_t n)
{
    if (n == 0 || n > CN_EVENT_ROOM_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < 0x20 || s[i] > 0x7e || s[i] == '"' || s[i] == '\\')
            return 0;
    }
    return 1;
}

int
cn__appends_next(const uint8_t **cursor, const uint8_t *end, cn_append_view_t *a)
{
    const uint8_t *p = *cursor;
    size_t sl, tl, dl;
    unsigned nr;

    if (end - p < CN_APPEND_HEADER)
        return CN_ECORRUPT;
    sl = p[0];
    tl = p[1];
    nr = p[2];
    a->expected = (int64_t)cn__get_le64(p + 4);
    dl = cn__get_le32(p + 12);
    p += CN_APPEND_HEADER;
    if (p[-CN_APPEND_HEADER + 3] || nr > CN_APPEND_ROOMS_MAX ||
        (size_t)(end - p) < sl + tl + dl || !cn__stream_id_valid((const char *)p, sl) ||
        !cn__stream_type_valid((const char *)p + sl, tl) ||
        !cn__stream_expected_valid(a->expected))
        return CN_ECORRUPT;
    a->stream = (const char *)p;
    a->stream_len = sl;
    a->type = (const char *)p + sl;
    a->type_len = tl;
    a->data = (const char *)p + sl + tl;
    a->data_len = dl;
    p += sl + tl + dl;
    a->nrooms = nr;
    for (unsigned i = 0; i < nr; i++) {
        size_t rl;
        if (end - p < 1)
            return CN_ECORRUPT;
        rl = p[0];
        if ((size_t)(end - p - 1) < rl || !room_valid(p + 1, rl))
            return CN_ECORRUPT;
        a->rooms[i] = (const char *)p + 1;
        a->room_lens[i] = rl;
        p += 1 + rl;
    }
    *cursor = p;
    return 0;
}

/* ---- stream events in the global log ---- */

size_t
cn__log_entry_size(const cn_log_view_t *e)
{
    return CN_LOG_HEADER + e->stream_len + e->type_len + e->data_len;
}

/* Writes a string as JSON: stream ids and types are printable ASCII, where only '"'
 * and '\\' need escaping (2 + 2 * n bytes at most). Returns the new position. */
static uint8_t *
put_ascii_json(uint8_t *o, const char *s, size_t n)
{
    *o++ = '"';
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '"' || s[i] == '\\')
            *o++ = '\\';
        *o++ = (uint8_t)s[i];
    }
    *o++ = '"';
    return o;
}

size_t
cn__append_event_payload_cap(const cn_append_view_t *a)
{
    return 96 + 2 * a->type_len + a->data_len + 2 * a->stream_len;
}

size_t
cn__append_event_payload(const cn_append_view_t *a, uint64_t version, uint64_t position,
                         uint8_t *out)
{
    uint8_t *o = out;

    memcpy(o, "{\"action\":{", 11);
    o = put_ascii_json(o + 11, a->type, a->type_len);
    *o++ = ':';
    memcpy(o, a->data, a->data_len);
    o += a->data_len;
    memcpy(o, "},\"stream\":", 11);
    o = put_ascii_json(o + 11, a->stream, a->stream_len);
    o += snprintf((char *)o, 64, ",\"version\":%llu,\"position\":%llu}",
                  (unsigned long long)version, (unsigned long long)position);
    return (size_t)(o - out);
}

void
cn__log_entry_encode(const cn_log_view_t *e, uint8_t *out)
{
    cn__put_le64(out, e->created_ms);
    cn__put_le64(out + 8, e->version);
    out[16] = (uint8_t)e->stream_len;
    out[17] = (uint8_t)e->type_len;
    cn__put_le16(out + 18, 0);
    cn__put_le32(out + 20, (uint32_t)e->data_len);
    out += CN_LOG_HEADER;
    memcpy(out, e->stream, e->stream_len);
    memcpy(out + e->stream_len, e->type, e->type_len);
    memcpy(out + e->stream_len + e->type_len, e->data, e->data_len);
}

int
cn__log_entry_decode(const uint8_t *p, size_t len, cn_log_view_t *e)
{
    size_t sl, tl, dl;

    if (len < CN_LOG_HEADER)
        return CN_ECORRUPT;
    sl = p[16];
    tl = p[17];
    dl = cn__get_le32(p + 20);
    if (sl == 0 || tl == 0 || len - CN_LOG_HEADER != sl + tl + dl)
        return CN_ECORRUPT;
    e->created_ms = cn__get_le64(p);
    e->version = cn__get_le64(p + 8);
    e->stream = (const char *)p + CN_LOG_HEADER;
    e->stream_len = sl;
    e->type = e->stream + sl;
    e->type_len = tl;
    e->data = e->type + tl;
    e->data_len = dl;
    return 0;
}

/* ---- ring payload ---- */

size_t
cn__persist_record_size(size_t keylen, const cn_record_t *rec, size_t events_len)
{
    return CN_PERSIST_PUT_HEADER + keylen + (rec ? cn__record_encoded_size(rec) : 0) +
           (events_len > 2 ? events_len : rec ? 0 : 2);
}

size_t
cn__persist_put_size(size_t keylen, const cn_record_t *rec)
{
    return cn__persist_record_size(keylen, rec, 0);
}

int
cn__persist_record_encode(uint8_t *out, size_t cap, const char *key, size_t keylen,
                          const cn_record_t *rec, const uint8_t *events, size_t events_len,
                          size_t *written)
{
    static const uint8_t no_events[2] = {0, 0};
    size_t reclen = rec ? cn__record_encoded_size(rec) : 0, w, at;
    int kind, rc;

    if (events_len <= 2) {
        events = rec ? NULL : no_events;
        events_len = rec ? 0 : 2;
    }
    kind = !rec ? CN_PERSIST_EVENTS : events ? CN_PERSIST_PUT_EVENTS : CN_PERSIST_PUT;
    if (!rec)
        keylen = 0;
    if (keylen > UINT16_MAX || reclen > UINT32_MAX ||
        cap < CN_PERSIST_PUT_HEADER + keylen + reclen + events_len)
        return CN_ETOOBIG;
    out[0] = 1;
    out[1] = (uint8_t)kind;
    cn__put_le16(out + 2, (uint16_t)keylen);
    cn__put_le32(out + 4, (uint32_t)reclen);
    at = CN_PERSIST_PUT_HEADER;
    if (keylen)
        memcpy(out + at, key, keylen);
    at += keylen;
    if (rec) {
        if ((rc = cn__record_encode(rec, out + at, reclen, &w)))
            return rc;
        at += reclen;
    }
    if (events) {
        memcpy(out + at, events, events_len);
        at += events_len;
    }
    *written = at;
    return 0;
}

size_t
cn__persist_streams_size(size_t keylen, const cn_record_t *rec, size_t events_len,
                         size_t appends_len)
{
    return CN_PERSIST_PUT_HEADER + keylen + cn__record_encoded_size(rec) + 4 +
           (events_len > 2 ? events_len : 0) + appends_len;
}

int
cn__persist_streams_encode(uint8_t *out, size_t cap, const char *key, size_t keylen,
                           const cn_record_t *rec, const uint8_t *events, size_t events_len,
                           const uint8_t *appends, size_t appends_len, size_t *written)
{
    size_t reclen = cn__record_encoded_size(rec), w, at;
    int rc;

    if (events_len <= 2)
        events_len = 0;
    if (keylen > UINT16_MAX || reclen > UINT32_MAX || events_len > UINT32_MAX ||
        appends_len < 2 ||
        cap < CN_PERSIST_PUT_HEADER + keylen + reclen + 4 + events_len + appends_len)
        return CN_ETOOBIG;
    out[0] = 1;
    out[1] = CN_PERSIST_PUT_STREAMS;
    cn__put_le16(out + 2, (uint16_t)keylen);
    cn__put_le32(out + 4, (uint32_t)reclen);
    at = CN_PERSIST_PUT_HEADER;
    memcpy(out + at, key, keylen);
    at += keylen;
    if ((rc = cn__record_encode(rec, out + at, reclen, &w)))
        return rc;
    at += reclen;
    cn__put_le32(out + at, (uint32_t)events_len);
    at += 4;
    if (events_len)
        memcpy(out + at, events, events_len);
    at += events_len;
    memcpy(out + at, appends, appends_len);
    at += appends_len;
    *written = at;
    return 0;
}

int
cn__persist_put_encode(uint8_t *out, size_t cap, const char *key, size_t keylen,
                       const cn_record_t *rec, size_t *written)
{
    return cn__persist_record_encode(out, cap, key, keylen, rec, NULL, 0, written);
}

int
cn__persist_record_decode(const uint8_t *p, size_t len, cn_persist_record_t *out)
{
    size_t kl, rl, rest;

    if (len < CN_PERSIST_PUT_HEADER || p[0] != 1)
        return CN_ECORRUPT;
    kl = cn__get_le16(p + 2);
    rl = cn__get_le32(p + 4);
    if (len - CN_PERSIST_PUT_HEADER < kl + rl)
        return CN_ECORRUPT;
    rest = len - CN_PERSIST_PUT_HEADER - kl - rl;
    memset(out, 0, sizeof(*out));
    out->kind = p[1];
    switch (p[1]) {
    case CN_PERSIST_PUT:
        if (rest)
            return CN_ECORRUPT;
        break;
    case CN_PERSIST_PUT_EVENTS:
        if (rest < 2)
            return CN_ECORRUPT;
        break;
    case CN_PERSIST_EVENTS:
        if (kl || rl || rest < 2)
            return CN_ECORRUPT;
        break;
    case CN_PERSIST_PUT_STREAMS: {
        const uint8_t *q = p + CN_PERSIST_PUT_HEADER + kl + rl;
        size_t el;
        if (rest < 4)
            return CN_ECORRUPT;
        el = cn__get_le32(q);
        /* 0: no events; an empty list (2 bytes) is never written, so never read. */
        if (rest - 4 < el || (el && el <= 2) || rest - 4 - el < 2)
            return CN_ECORRUPT;
        out->key = (const char *)p + CN_PERSIST_PUT_HEADER;
        out->keylen = kl;
        out->rec = p + CN_PERSIST_PUT_HEADER + kl;
        out->reclen = rl;
        out->events = el ? q + 4 : NULL;
        out->events_len = el;
        out->appends = q + 4 + el;
        out->appends_len = rest - 4 - el;
        return 0;
    }
    default:
        return CN_ECORRUPT;
    }
    if (p[1] != CN_PERSIST_EVENTS) {
        out->key = (const char *)p + CN_PERSIST_PUT_HEADER;
        out->keylen = kl;
        out->rec = p + CN_PERSIST_PUT_HEADER + kl;
        out->reclen = rl;
    }
    if (rest) {
        out->events = p + CN_PERSIST_PUT_HEADER + kl + rl;
        out->events_len = rest;
    }
    return 0;
}

int
cn__persist_put_decode(const uint8_t *p, size_t len, const char **key, size_t *keylen,
                       const uint8_t **rec, size_t *reclen)
{
    cn_persist_record_t r;

    if (cn__persist_record_decode(p, len, &r) || r.kind != CN_PERSIST_PUT)
        return CN_ECORRUPT;
    *key = r.key;
    *keylen = r.keylen;
    *rec = r.rec;
    *reclen = r.reclen;
    return 0;
}

/* ---- WAL DATA frame payload ---- */

void
cn__format_wal_header_encode(uint8_t *out, uint64_t epoch, uint64_t seq, uint16_t worker,
                             uint32_t len)
{
    cn__put_le64(out, epoch);
    cn__put_le64(out + 8, seq);
    cn__put_le16(out + 16, worker);
    cn__put_le16(out + 18, 0);
    cn__put_le32(out + 20, len);
}

int
cn__format_wal_payload_decode(const uint8_t *p, size_t len, cn_wal_payload_t *h)
{
    cn_wal_payload_t w;

    if (len < CN_PERSIST_WAL_HEADER)
        return CN_ECORRUPT;
    w.epoch = cn__get_le64(p);
    w.seq = cn__get_le64(p + 8);
    w.worker = cn__get_le16(p + 16);
    w.len = cn__get_le32(p + 20);
    w.put = p + CN_PERSIST_WAL_HEADER;
    if (w.worker >= CN_STORE_META_WORKERS || w.len != len - CN_PERSIST_WAL_HEADER)
        return CN_ECORRUPT;
    *h = w;
    return 0;
}
