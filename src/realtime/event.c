/*
 * realtime/event.c - buffering events in a request (cn_emit, cn_emit_to), and the frame a
 * WebSocket client receives (see event.h; the byte encodings are in store/format.c).
 *
 * Every WebSocket text frame must be UTF-8 (RFC 6455 5.6), and cJSON keeps the raw bytes
 * of a string it parsed, so a payload is checked when it is emitted, and the client frame
 * replaces any ill-formed sequence (events stored before that check) with U+FFFD.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cnerium/error.h"
#include "cnerium/json.h"
#include "cnerium/realtime.h"
#include "http/request_internal.h"
#include "realtime/event.h"

/* A type or room name: 1..max bytes of printable ASCII. */
static int
valid_name(const char *s, size_t max)
{
    size_t n = 0;

    for (; s[n]; n++) {
        if ((unsigned char)s[n] < 0x20 || (unsigned char)s[n] > 0x7e)
            return 0;
    }
    return n >= 1 && n <= max;
}

/* The length of the well-formed UTF-8 sequence at p (n > 0 bytes left), or 0 with *bad
 * set to the length of its maximal ill-formed prefix (Unicode 3.9, "U+FFFD substitution of
 * maximal subparts"): what one U+FFFD replaces. */
static size_t
utf8_seq(const uint8_t *p, size_t n, size_t *bad)
{
    uint8_t c = p[0], lo = 0x80, hi = 0xbf;
    size_t need;

    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf) {
        need = 2;
    } else if (c >= 0xe0 && c <= 0xef) {
        need = 3;
        lo = c == 0xe0 ? 0xa0 : 0x80; /* no overlong forms */
        hi = c == 0xed ? 0x9f : 0xbf; /* no surrogates */
    } else if (c >= 0xf0 && c <= 0xf4) {
        need = 4;
        lo = c == 0xf0 ? 0x90 : 0x80;
        hi = c == 0xf4 ? 0x8f : 0xbf; /* nothing past U+10FFFF */
    } else {
        *bad = 1;
        return 0;
    }
    for (size_t i = 1; i < need; i++) {
        uint8_t min = i == 1 ? lo : 0x80, max = i == 1 ? hi : 0xbf;
        if (i >= n || p[i] < min || p[i] > max) {
            *bad = i;
            return 0;
        }
    }
    return need;
}

int
cn__event_utf8_valid(const char *s, size_t n)
{
    const uint8_t *p = (const uint8_t *)s;
    size_t bad;

    for (size_t i = 0, k; i < n; i += k) {
        if (p[i] < 0x80) {
            k = 1;
            continue;
        }
        if (!(k = utf8_seq(p + i, n - i, &bad)))
            return 0;
    }
    return 1;
}

size_t
cn__event_utf8_copy(uint8_t *out, const char *s, size_t n)
{
    const uint8_t *p = (const uint8_t *)s;
    uint8_t *o = out;
    size_t bad, k;

    for (size_t i = 0; i < n; i += k) {
        if ((k = utf8_seq(p + i, n - i, &bad))) {
            memcpy(o, p + i, k);
            o += k;
        } else {
            *o++ = 0xef;
            *o++ = 0xbf;
            *o++ = 0xbd;
            k = bad;
        }
    }
    return (size_t)(o - out);
}

static int
emit(cn_request_t *req, const char *room, const char *type, cJSON *payload)
{
    cn_event_t *ev;
    size_t count = 0;
    int rc;

    if (!req) {
        cJSON_Delete(payload);
        return -EINVAL;
    }
    if (!type || !valid_name(type, CN_EVENT_TYPE_MAX) ||
        (room && !valid_name(room, CN_EVENT_ROOM_MAX))) {
        rc = -EINVAL;
        goto fail;
    }
    for (cn_event_t *e = req->events; e; e = e->next)
        count++;
    if (count >= CN_EVENTS_MAX) {
        rc = CN_ETOOBIG;
        goto fail;
    }
    ev = calloc(1, sizeof(*ev));
    if (ev) {
        ev->type = strdup(type);
        ev->room = room ? strdup(room) : NULL;
        ev->payload = payload ? cn_json_print(payload, &ev->payload_len) : strdup("null");
        if (!payload && ev->payload)
            ev->payload_len = 4;
    }
    cJSON_Delete(payload);
    if (!ev || !ev->type || !ev->payload || (room && !ev->room)) {
        cn__events_free(ev);
        req->events_failed = 1;
        return -ENOMEM;
    }
    if (ev->payload_len > CN_EVENT_PAYLOAD_MAX) {
        cn__events_free(ev);
        req->events_failed = 1;
        return CN_ETOOBIG;
    }
    /* cJSON prints the bytes of a string as they were parsed: a request body with
     * ill-formed UTF-8 would become a text frame no client may accept. */
    if (!cn__event_utf8_valid(ev->payload, ev->payload_len)) {
        cn__events_free(ev);
        req->events_failed = 1;
        return -EILSEQ;
    }
    if (!req->events_tail)
        req->events_tail = &req->events;
    *req->events_tail = ev;
    req->events_tail = &ev->next;
    return 0;

fail:
    cJSON_Delete(payload);
    /* The handler may ignore the result; a durable request then must not be stored as
     * if its event had been (see cn__durable_handle). */
    req->events_failed = 1;
    return rc;
}

int
cn_emit(cn_request_t *req, const char *type, cJSON *payload)
{
    return emit(req, NULL, type, payload);
}

int
cn_emit_to(cn_request_t *req, const char *room, const char *type, cJSON *payload)
{
    if (!room) {
        cJSON_Delete(payload);
        if (req)
            req->events_failed = 1;
        return -EINVAL;
    }
    return emit(req, room, type, payload);
}

void
cn__events_free(cn_event_t *list)
{
    while (list) {
        cn_event_t *next = list->next;
        free(list->type);
        free(list->room);
        free(list->payload);
        free(list);
        list = next;
    }
}

/* Appends s (n bytes) as a JSON string, ill-formed UTF-8 replaced by U+FFFD (3 bytes for
 * at least one); returns the new position. At most 6 bytes out per byte in. */
static uint8_t *
json_string(uint8_t *o, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    size_t k, bad;

    *o++ = '"';
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x80) {
            if ((k = utf8_seq((const uint8_t *)s + i, n - i, &bad))) {
                memcpy(o, s + i, k);
                o += k;
            } else {
                *o++ = 0xef;
                *o++ = 0xbf;
                *o++ = 0xbd;
                k = bad;
            }
            i += k - 1;
        } else if (c == '"' || c == '\\') {
            *o++ = '\\';
            *o++ = c;
        } else if (c < 0x20) {
            *o++ = '\\';
            *o++ = 'u';
            *o++ = '0';
            *o++ = '0';
            *o++ = hex[c >> 4];
            *o++ = hex[c & 15];
        } else {
            *o++ = c;
        }
    }
    *o++ = '"';
    return o;
}

uint8_t *
cn__event_frame(const cn_event_view_t *ev, uint64_t seq, size_t headroom, size_t *len)
{
    /* Worst case: every name byte escaped as \u00XX (6 bytes), fixed text and a 20-digit
     * seq. The payload is JSON text already and goes in as it is when it is well-formed
     * UTF-8 (always, since cn_emit checks it); otherwise every byte may become U+FFFD. */
    int payload_ok = cn__event_utf8_valid(ev->payload, ev->payload_len);
    size_t cap = headroom + 64 + 6 * (ev->type_len + ev->room_len) +
                 (payload_ok ? 1 : 3) * ev->payload_len + 24;
    uint8_t *buf = malloc(cap), *o, *shrunk;
    char num[32]; /* ",\"seq\":" and up to 20 digits */
    int n;

    if (!buf)
        return NULL;
    o = buf + headroom;
    memcpy(o, "{\"type\":", 8);
    o = json_string(o + 8, ev->type, ev->type_len);
    memcpy(o, ",\"payload\":", 11);
    o += 11;
    if (payload_ok) {
        memcpy(o, ev->payload, ev->payload_len);
        o += ev->payload_len;
    } else {
        o += cn__event_utf8_copy(o, ev->payload, ev->payload_len);
    }
    n = snprintf(num, sizeof(num), ",\"seq\":%llu", (unsigned long long)seq);
    memcpy(o, num, (size_t)n);
    o += n;
    if (ev->room_len) {
        memcpy(o, ",\"room\":", 8);
        o = json_string(o + 8, ev->room, ev->room_len);
    }
    *o++ = '}';
    *len = (size_t)(o - buf) - headroom;
    /* Frames live in the broadcaster's cache, which is capped in bytes: give back a
     * worst-case reserve that was not used. */
    if (cap - (size_t)(o - buf) > 256 && (shrunk = realloc(buf, (size_t)(o - buf))))
        buf = shrunk;
    return buf;
}
