/*
 * fuzz_event - the event decoders (store/format.c): an encoded event list walked with
 * cn__events_begin/cn__events_next as the store does, and a stored event.
 *
 * Input: byte 0 picks what the rest is (even: a list, odd: a stored event).
 * Properties: every decoded view lies inside the input and the cursor only moves
 * forward within it; a stored event re-encodes to the input byte for byte; every event
 * of a list, stored and decoded again, gives the same view.
 */
#include <string.h>

#include "cnerium/error.h"
#include "fuzz.h"
#include "store/format.h"

static int
inside(const void *p, size_t n, const uint8_t *buf, size_t len)
{
    const uint8_t *q = p;

    return n == 0 || (q >= buf && n <= len && q - buf <= (ptrdiff_t)(len - n));
}

static void
check_view(const cn_event_view_t *ev, const uint8_t *buf, size_t len)
{
    FUZZ_CHECK(ev->type_len >= 1 && inside(ev->type, ev->type_len, buf, len));
    FUZZ_CHECK(inside(ev->room, ev->room_len, buf, len));
    FUZZ_CHECK((ev->room_len == 0) == (ev->room == NULL));
    FUZZ_CHECK(inside(ev->payload, ev->payload_len, buf, len));
}

/* Stores ev as the store does and decodes it again: the same event. */
static void
round_trip(const cn_event_view_t *ev)
{
    size_t size = cn__event_stored_size(ev);
    uint8_t *out = malloc(size);
    cn_event_view_t back;

    FUZZ_CHECK(out);
    cn__event_stored_encode(ev, out);
    FUZZ_CHECK(cn__event_stored_decode(out, size, &back) == 0);
    FUZZ_CHECK(back.created_ms == ev->created_ms);
    FUZZ_CHECK(back.type_len == ev->type_len && !memcmp(back.type, ev->type, ev->type_len));
    FUZZ_CHECK(back.room_len == ev->room_len &&
               (!ev->room_len || !memcmp(back.room, ev->room, ev->room_len)));
    FUZZ_CHECK(back.payload_len == ev->payload_len &&
               !memcmp(back.payload, ev->payload, ev->payload_len));
    free(out);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *buf, *cur, *end;
    cn_event_view_t ev;
    size_t len;
    long count;

    if (size < 1)
        return 0;
    buf = data + 1;
    len = size - 1;
    end = buf + len;

    if (data[0] & 1) {
        if (cn__event_stored_decode(buf, len, &ev))
            return 0;
        check_view(&ev, buf, len);
        FUZZ_CHECK(cn__event_stored_size(&ev) == len);
        uint8_t *again = malloc(len);
        FUZZ_CHECK(again);
        cn__event_stored_encode(&ev, again);
        FUZZ_CHECK(!memcmp(again, buf, len));
        free(again);
        return 0;
    }

    count = cn__events_begin(buf, len, &cur);
    if (count < 0) {
        FUZZ_CHECK(len < 2);
        return 0;
    }
    FUZZ_CHECK(count <= 65535 && cur == buf + 2);
    for (long i = 0; i < count; i++) {
        const uint8_t *before = cur;
        if (cn__events_next(&cur, end, &ev)) {
            FUZZ_CHECK(cur == before); /* a failed step leaves the cursor alone */
            break;
        }
        FUZZ_CHECK(cur > before && cur <= end);
        check_view(&ev, buf, len);
        ev.created_ms = (uint64_t)i * 0x0101010101010101ull;
        round_trip(&ev);
    }
    return 0;
}
