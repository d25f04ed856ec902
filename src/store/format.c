/*
 * store/format.c - encoding and decoding every byte layout in store/format.h. Decoding
 * treats its input as untrusted: every length is checked before use.
 */
#include <errno.h>
#include <string.h>

#include "cnerium/error.h"
#include "realtime/event.h"
#include "store/format.h"
#include "store/store.h"
#include "support/bytes.h"
#include "support/crc32c.h"

/* ---- stored-response record ---- */

static const uint8_t magic[4] = {'C', 'N', 'R', 'R'};

size_t
cn__record_encoded_size(const cn_record_t *rec)
{
    return CN_RECORD_HEADER_LEN + (size_t)rec->content_type_len + rec->location_len +
           rec->body_len + CN_RECORD_TRAILER_LEN;
}

int
cn__record_encode(const cn_record_t *rec, uint8_t *buf, size_t cap, size_t *written)
{
    size_t need, off = CN_RECORD_HEADER_LEN;

    if (rec->content_type_len > CN_RECORD_FIELD_MAX || rec->location_len > CN_RECORD_FIELD_MAX ||
        rec->body_len > CN_RECORD_FIELD_MAX)
        return CN_ETOOBIG;
    need = cn__record_encoded_size(rec);
    if (cap < need)
        return -ENOSPC;

    memcpy(buf, magic, 4);
    buf[4] = CN_RECORD_VERSION;
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
    if (total != len)
        return CN_ECORRUPT;
    if (cn__get_le32(buf + len - 4) != cn__crc32c(0, buf, len - 4))
        return CN_ECORRUPT;
    /* The CRC covers the version byte, so a mismatch here is a real format change. */
    if (buf[4] != CN_RECORD_VERSION)
        return CN_EVERSION;
    if (buf[5] != 0)
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
    if (tl == 0 || (size_t)(end - p) < tl + rl + pl)
        return CN_ECORRUPT;
    ev->type = (const char *)p;
    ev->type_len = tl;
    ev->room = rl ? (const char *)p + tl : NULL;
    ev->room_len = rl;
    ev->payload = (const char *)p + tl + rl;
    ev->payload_len = pl;
    *cursor = p + tl + rl + pl;
    return 0;
}

int
cn__event_stored_decode(const uint8_t *p, size_t len, cn_event_view_t *ev)
{
    const uint8_t *cur = p + 8;
    uint64_t t = 0;

    if (len < 8)
        return CN_ECORRUPT;
    for (int i = 7; i >= 0; i--)
        t = t << 8 | p[i];
    if (cn__events_next(&cur, p + len, ev) || cur != p + len)
        return CN_ECORRUPT;
    ev->created_ms = t;
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
    cn__put_le16(out, (uint16_t)ev->type_len);
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
