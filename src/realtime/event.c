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
#include "support/utf8.h"

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
    if (!cn__utf8_valid(ev->payload, ev->payload_len)) {
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
            if ((k = cn__utf8_seq((const uint8_t *)s + i, n - i, &bad))) {
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
    int payload_ok = cn__utf8_valid(ev->payload, ev->payload_len);
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
    if (ev->merged && payload_ok && ev->payload_len > 2 && ev->payload[0] == '{' &&
        ev->payload[ev->payload_len - 1] == '}') {
        /* A published stream event: its members join the frame's top level. */
        *o++ = ',';
        memcpy(o, ev->payload + 1, ev->payload_len - 2);
        o += ev->payload_len - 2;
        goto seq;
    }
    memcpy(o, ",\"payload\":", 11);
    o += 11;
    if (payload_ok) {
        memcpy(o, ev->payload, ev->payload_len);
        o += ev->payload_len;
    } else {
        o += cn__utf8_replace(o, ev->payload, ev->payload_len);
    }
seq:
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
