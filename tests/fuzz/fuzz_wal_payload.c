/*
 * fuzz_wal_payload - what the persister decodes from a WAL DATA frame (store/format.c):
 * the 24-byte WAL header, the ring payload behind it (key, record, event list, stream
 * appends), the record, the event list and the appends, in the order recovery and apply
 * do.
 *
 * Input: byte 0 is a mode, the rest a frame payload. With mode bit 0 set the embedded
 * record's CRC is recomputed first, so the fuzzer reaches the record's fields.
 * Properties: decoders fail only with CN_ECORRUPT; every part lies inside the input;
 * the header re-encodes to the input's; a ring payload whose parts decode re-encodes to
 * the same bytes; an event list or an appends list either decodes whole or not at all.
 */
#include <string.h>

#include "cnerium/error.h"
#include "fuzz.h"
#include "store/format.h"
#include "support/bytes.h"
#include "support/crc32c.h"

static int
inside(const void *p, size_t n, const uint8_t *buf, size_t len)
{
    const uint8_t *q = p;

    return n == 0 || (q >= buf && n <= len && q - buf <= (ptrdiff_t)(len - n));
}

/* 1 when the encoded list is whole: count events, then nothing. */
static int
list_whole(const uint8_t *p, size_t len)
{
    const uint8_t *cur, *end = p + len;
    cn_event_view_t ev;
    long count = cn__events_begin(p, len, &cur);

    if (count < 0)
        return 0;
    for (long i = 0; i < count; i++) {
        if (cn__events_next(&cur, end, &ev))
            return 0;
    }
    return cur == end;
}

/* 1 when the encoded appends are whole: count appends, each inside, then nothing. */
static int
appends_whole(const uint8_t *p, size_t len)
{
    const uint8_t *cur, *end = p + len;
    cn_append_view_t a;
    long count = cn__appends_begin(p, len, &cur);

    if (count < 0)
        return 0;
    for (long i = 0; i < count; i++) {
        if (cn__appends_next(&cur, end, &a))
            return 0;
        FUZZ_CHECK(inside(a.stream, a.stream_len, p, len) && a.stream_len >= 1);
        FUZZ_CHECK(inside(a.type, a.type_len, p, len) && a.type_len >= 1);
        FUZZ_CHECK(inside(a.data, a.data_len, p, len));
        FUZZ_CHECK(a.nrooms <= CN_APPEND_ROOMS_MAX);
        for (unsigned r = 0; r < a.nrooms; r++)
            FUZZ_CHECK(inside(a.rooms[r], a.room_lens[r], p, len) && a.room_lens[r] >= 1);
    }
    return cur == end;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    cn_wal_payload_t h;
    cn_persist_record_t r;
    cn_record_t rec;
    uint8_t *buf, hdr[CN_PERSIST_WAL_HEADER];
    size_t len;
    int rc, rec_ok;

    if (size < 1)
        return 0;
    len = size - 1;
    buf = malloc(len ? len : 1);
    FUZZ_CHECK(buf);
    memcpy(buf, data + 1, len);
    /* Fix the record's CRC when the header lengths make sense. */
    if ((data[0] & 1) && len >= CN_PERSIST_WAL_HEADER + CN_PERSIST_PUT_HEADER) {
        uint8_t *put = buf + CN_PERSIST_WAL_HEADER;
        size_t putlen = len - CN_PERSIST_WAL_HEADER;
        size_t kl = cn__get_le16(put + 2), rl = cn__get_le32(put + 4);
        if (rl >= 4 && CN_PERSIST_PUT_HEADER + kl + rl <= putlen) {
            uint8_t *rb = put + CN_PERSIST_PUT_HEADER + kl;
            cn__put_le32(rb + rl - 4, cn__crc32c(0, rb, rl - 4));
        }
    }

    rc = cn__format_wal_payload_decode(buf, len, &h);
    if (rc) {
        FUZZ_CHECK(rc == CN_ECORRUPT);
        goto out;
    }
    FUZZ_CHECK(h.put == buf + CN_PERSIST_WAL_HEADER && h.len == len - CN_PERSIST_WAL_HEADER);
    cn__format_wal_header_encode(hdr, h.epoch, h.seq, h.worker, h.len);
    /* Bytes 18-19 are written as zero and not checked on the way in. */
    FUZZ_CHECK(!memcmp(hdr, buf, 18) && !memcmp(hdr + 20, buf + 20, 4));

    rc = cn__persist_record_decode(h.put, h.len, &r);
    if (rc) {
        FUZZ_CHECK(rc == CN_ECORRUPT);
        goto out;
    }
    FUZZ_CHECK(r.kind == CN_PERSIST_PUT || r.kind == CN_PERSIST_EVENTS ||
               r.kind == CN_PERSIST_PUT_EVENTS || r.kind == CN_PERSIST_PUT_STREAMS);
    FUZZ_CHECK(inside(r.appends, r.appends_len, h.put, h.len));
    FUZZ_CHECK((r.kind == CN_PERSIST_PUT_STREAMS) == (r.appends != NULL));
    FUZZ_CHECK(inside(r.key, r.keylen, h.put, h.len));
    FUZZ_CHECK(inside(r.rec, r.reclen, h.put, h.len));
    FUZZ_CHECK(inside(r.events, r.events_len, h.put, h.len));
    FUZZ_CHECK((r.kind == CN_PERSIST_EVENTS) == (r.key == NULL));
    FUZZ_CHECK(r.kind == CN_PERSIST_PUT_STREAMS || (r.kind == CN_PERSIST_PUT) == (r.events == NULL));

    rec_ok = r.kind != CN_PERSIST_EVENTS && cn__record_decode(r.rec, r.reclen, &rec) == 0;
    if (r.events)
        (void)list_whole(r.events, r.events_len);
    if (r.appends)
        (void)appends_whole(r.appends, r.appends_len);

    if (r.kind == CN_PERSIST_PUT_STREAMS && rec_ok) {
        size_t need = cn__persist_streams_size(r.keylen, &rec, r.events_len, r.appends_len);
        uint8_t *again = malloc(need);
        size_t written = 0;
        FUZZ_CHECK(again);
        FUZZ_CHECK(need == h.len);
        FUZZ_CHECK(cn__persist_streams_encode(again, need, r.key, r.keylen, &rec, r.events,
                                              r.events_len, r.appends, r.appends_len,
                                              &written) == 0);
        FUZZ_CHECK(written == h.len && !memcmp(again, h.put, h.len));
        free(again);
    }

    /* Re-encode what decoded: the encoder picks the kind from what it is given, so only
     * payloads it would have produced come back identical. */
    if (r.kind != CN_PERSIST_PUT_STREAMS && (r.kind == CN_PERSIST_EVENTS || rec_ok) &&
        (r.kind == CN_PERSIST_PUT || r.events_len > 2)) {
        size_t need = cn__persist_record_size(r.keylen, rec_ok ? &rec : NULL, r.events_len);
        uint8_t *again = malloc(need);
        size_t written = 0;
        FUZZ_CHECK(again);
        FUZZ_CHECK(need == h.len);
        FUZZ_CHECK(cn__persist_record_encode(again, need, r.key, r.keylen, rec_ok ? &rec : NULL,
                                             r.events, r.events_len, &written) == 0);
        FUZZ_CHECK(written == h.len && !memcmp(again, h.put, h.len));
        free(again);
    }
    if (r.kind == CN_PERSIST_PUT) {
        const char *key;
        const uint8_t *rb;
        size_t kl, rl;
        FUZZ_CHECK(cn__persist_put_decode(h.put, h.len, &key, &kl, &rb, &rl) == 0);
        FUZZ_CHECK(key == r.key && kl == r.keylen && rb == r.rec && rl == r.reclen);
    }
out:
    free(buf);
    return 0;
}
