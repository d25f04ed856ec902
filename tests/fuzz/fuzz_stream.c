/*
 * fuzz_stream - the event-stream decoders (store/format.c): an encoded list of stream
 * appends walked with cn__appends_begin/cn__appends_next as the store does, and a
 * stream event of the global log.
 *
 * Input: byte 0 picks what the rest is (even: an appends list, odd: a log entry).
 * Properties: decoders fail only with CN_ECORRUPT; every decoded view lies inside the
 * input, with a valid stream id, type, expected version and rooms; the cursor only moves
 * forward; a log entry re-encodes to the input (its two reserved bytes aside); an
 * appends list rebuilt from its views re-encodes to the bytes it was decoded from.
 */
#include <string.h>

#include "cnerium/error.h"
#include "fuzz.h"
#include "store/format.h"
#include "stream/stream.h"

static int
inside(const void *p, size_t n, const uint8_t *buf, size_t len)
{
    const uint8_t *q = p;

    return n == 0 || (q >= buf && n <= len && q - buf <= (ptrdiff_t)(len - n));
}

/* Rebuilds one append from its view and encodes it alone: the same bytes as the input's
 * span [from, to). */
static void
reencode(const cn_append_view_t *a, const uint8_t *from, const uint8_t *to)
{
    cn_append_t ap = {0};
    uint8_t *out;
    size_t need, written = 0;

    ap.stream = fuzz_strndup((const char *)a->stream, a->stream_len);
    ap.type = fuzz_strndup(a->type, a->type_len);
    ap.data = fuzz_strndup(a->data, a->data_len);
    ap.data_len = a->data_len;
    ap.expected = a->expected;
    for (unsigned r = 0; r < a->nrooms; r++)
        ap.rooms[ap.nrooms++] = fuzz_strndup(a->rooms[r], a->room_lens[r]);
    need = cn__appends_encoded_size(&ap);
    out = malloc(need);
    FUZZ_CHECK(out);
    /* A NUL inside the data would shorten nothing (data has its length), but one in a
     * name cannot pass the decoder, so the sizes agree. */
    FUZZ_CHECK(cn__appends_encode(&ap, out, need, &written) == 0 && written == need);
    FUZZ_CHECK(need - 2 == (size_t)(to - from) && !memcmp(out + 2, from, need - 2));
    free(out);
    ap.next = NULL;
    free(ap.stream);
    free(ap.type);
    free(ap.data);
    for (unsigned r = 0; r < ap.nrooms; r++)
        free(ap.rooms[r]);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *buf, *cur, *end;
    size_t len;
    long count;

    if (size < 1)
        return 0;
    buf = data + 1;
    len = size - 1;
    end = buf + len;

    if (data[0] & 1) {
        cn_log_view_t e;
        uint8_t *again;
        int rc = cn__log_entry_decode(buf, len, &e);
        if (rc) {
            FUZZ_CHECK(rc == CN_ECORRUPT);
            return 0;
        }
        FUZZ_CHECK(e.stream_len >= 1 && inside(e.stream, e.stream_len, buf, len));
        FUZZ_CHECK(e.type_len >= 1 && inside(e.type, e.type_len, buf, len));
        FUZZ_CHECK(inside(e.data, e.data_len, buf, len));
        FUZZ_CHECK(cn__log_entry_size(&e) == len);
        again = malloc(len);
        FUZZ_CHECK(again);
        cn__log_entry_encode(&e, again);
        FUZZ_CHECK(!memcmp(again, buf, 18) && !memcmp(again + 20, buf + 20, len - 20));
        free(again);
        return 0;
    }

    count = cn__appends_begin(buf, len, &cur);
    if (count < 0) {
        FUZZ_CHECK(len < 2);
        return 0;
    }
    FUZZ_CHECK(cur == buf + 2);
    for (long i = 0; i < count; i++) {
        const uint8_t *before = cur;
        cn_append_view_t a;
        int rc = cn__appends_next(&cur, end, &a);
        if (rc) {
            FUZZ_CHECK(rc == CN_ECORRUPT);
            break;
        }
        FUZZ_CHECK(cur > before && cur <= end);
        FUZZ_CHECK(inside(a.stream, a.stream_len, buf, len) &&
                   cn__stream_id_valid(a.stream, a.stream_len));
        FUZZ_CHECK(inside(a.type, a.type_len, buf, len) &&
                   cn__stream_type_valid(a.type, a.type_len));
        FUZZ_CHECK(inside(a.data, a.data_len, buf, len));
        FUZZ_CHECK(cn__stream_expected_valid(a.expected));
        FUZZ_CHECK(a.nrooms <= CN_APPEND_ROOMS_MAX);
        for (unsigned r = 0; r < a.nrooms; r++)
            FUZZ_CHECK(a.room_lens[r] >= 1 && inside(a.rooms[r], a.room_lens[r], buf, len));
        reencode(&a, before, cur);
    }
    return 0;
}
