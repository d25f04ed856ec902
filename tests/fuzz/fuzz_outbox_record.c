/*
 * fuzz_outbox_record - the outbox's state record decoder (outbox/op.c) and the operation
 * view built from a decoded record.
 *
 * Input: byte 0 is a mode, the rest a record. With mode bit 0 set, headers_len is
 * rewritten so that the lengths add up to the input's size (when they can), so the
 * fuzzer gets past the exact-length check to the fields behind it.
 * Properties: decode fails only with CN_ECORRUPT or CN_EVERSION; a decoded record's views
 * point inside the input, its text fields hold no NUL, its status is one of the four;
 * encoding it gives the input back byte for byte; cn__outbox_op_build gives an operation
 * whose every field equals the record's (strings NUL-terminated, the header lines joined
 * by '\n' equal to the record's headers), with the payload and answer copied.
 */
#include <errno.h>
#include <string.h>

#include "cnerium/error.h"
#include "cnerium/outbox.h"
#include "fuzz.h"
#include "outbox/op.h"

#define OFF_KIND_LEN 60
#define OFF_HEADERS_LEN 68

static const char fuzz_id[CN_OUTBOX_ID_SIZE] = "0123456789abcdef0123456789abcdef";

static int
inside(const void *p, size_t n, const uint8_t *buf, size_t len)
{
    const uint8_t *q = p;

    if (n == 0)
        return 1;
    return q && q >= buf && n <= len && (size_t)(q - buf) <= len - n;
}

static uint16_t
le16(const uint8_t *p)
{
    return (uint16_t)(p[0] | p[1] << 8);
}

/* A NUL-terminated copy of n bytes equal to the view (p, n). */
static int
same_text(const char *s, const char *p, size_t n)
{
    return s && strlen(s) == n && (n == 0 || !memcmp(s, p, n));
}

static void
check_op(const cn__outbox_rec_t *rec, const uint8_t *payload, size_t payload_len,
         const uint8_t *answer, size_t answer_len)
{
    cn_outbox_op_t *op =
        cn__outbox_op_build(fuzz_id, rec, payload, payload_len, answer, answer_len);
    size_t joined = 0;

    FUZZ_CHECK(op);
    FUZZ_CHECK(!strcmp(op->id, fuzz_id));
    FUZZ_CHECK((int)op->status == rec->status);
    FUZZ_CHECK(op->seq == rec->seq);
    FUZZ_CHECK(op->attempt == rec->attempt);
    FUZZ_CHECK(op->last_http_status == rec->last_http_status);
    FUZZ_CHECK(op->created_at_ms == rec->created_at);
    FUZZ_CHECK(op->updated_at_ms == rec->updated_at);
    FUZZ_CHECK(op->next_attempt_at_ms == rec->next_attempt_at);
    FUZZ_CHECK(op->lease_until_ms == rec->lease_until);
    FUZZ_CHECK(op->response_truncated == rec->truncated);
    FUZZ_CHECK(same_text(op->kind, rec->kind, rec->kind_len));
    FUZZ_CHECK(same_text(op->method, rec->method, rec->method_len));
    FUZZ_CHECK(same_text(op->url, rec->url, rec->url_len));
    FUZZ_CHECK(same_text(op->last_error, rec->error, rec->error_len));

    /* The header lines, joined by '\n', are the record's headers. */
    if (rec->headers_len == 0)
        FUZZ_CHECK(op->header_count == 0);
    else
        FUZZ_CHECK(op->header_count >= 1);
    for (size_t i = 0; i < op->header_count; i++) {
        size_t n;

        FUZZ_CHECK(op->headers && op->headers[i]);
        n = strlen(op->headers[i]);
        if (i > 0) {
            FUZZ_CHECK(joined < rec->headers_len && rec->headers[joined] == '\n');
            joined++;
        }
        FUZZ_CHECK(n <= rec->headers_len - joined);
        FUZZ_CHECK(!memchr(op->headers[i], '\n', n));
        FUZZ_CHECK(n == 0 || !memcmp(op->headers[i], rec->headers + joined, n));
        joined += n;
    }
    FUZZ_CHECK(joined == rec->headers_len);

    /* Payload and answer: copies, any bytes, a NUL after them. */
    FUZZ_CHECK(op->payload_len == payload_len);
    FUZZ_CHECK(op->payload ? op->payload[payload_len] == '\0' : payload_len == 0);
    FUZZ_CHECK(payload_len == 0 || !memcmp(op->payload, payload, payload_len));
    FUZZ_CHECK((const void *)op->payload != (const void *)payload || payload_len == 0);
    FUZZ_CHECK(op->response_len == answer_len);
    FUZZ_CHECK(op->response ? op->response[answer_len] == '\0' : answer_len == 0);
    FUZZ_CHECK(answer_len == 0 || !memcmp(op->response, answer, answer_len));
    cn_outbox_op_free(op);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    cn__outbox_rec_t rec;
    uint8_t *buf, *again;
    size_t len;
    int rc;

    if (size < 1)
        return 0;
    len = size - 1;
    buf = malloc(len ? len : 1);
    FUZZ_CHECK(buf);
    memcpy(buf, data + 1, len);
    if ((data[0] & 1) && len >= CN__OUTBOX_REC_FIXED) {
        size_t texts = 0;

        for (int i = 0; i < 4; i++)
            texts += le16(buf + OFF_KIND_LEN + 2 * i);
        if (texts <= len - CN__OUTBOX_REC_FIXED) {
            uint32_t h = (uint32_t)(len - CN__OUTBOX_REC_FIXED - texts);

            for (int i = 0; i < 4; i++)
                buf[OFF_HEADERS_LEN + i] = (uint8_t)(h >> (8 * i));
        }
    }

    memset(&rec, 0xa5, sizeof(rec));
    rc = cn__outbox_rec_decode(buf, len, &rec);
    if (rc) {
        FUZZ_CHECK(rc == CN_ECORRUPT || rc == CN_EVERSION);
        free(buf);
        return 0;
    }
    FUZZ_CHECK(rec.status < CN_OUTBOX_STATUS_COUNT);
    FUZZ_CHECK(rec.truncated == 0 || rec.truncated == 1);
    FUZZ_CHECK(inside(rec.kind, rec.kind_len, buf, len));
    FUZZ_CHECK(inside(rec.method, rec.method_len, buf, len));
    FUZZ_CHECK(inside(rec.url, rec.url_len, buf, len));
    FUZZ_CHECK(inside(rec.error, rec.error_len, buf, len));
    FUZZ_CHECK(inside(rec.headers, rec.headers_len, buf, len));
    FUZZ_CHECK(!rec.kind_len || !memchr(rec.kind, '\0', rec.kind_len));
    FUZZ_CHECK(!rec.method_len || !memchr(rec.method, '\0', rec.method_len));
    FUZZ_CHECK(!rec.url_len || !memchr(rec.url, '\0', rec.url_len));
    FUZZ_CHECK(!rec.error_len || !memchr(rec.error, '\0', rec.error_len));
    FUZZ_CHECK(!rec.headers_len || !memchr(rec.headers, '\0', rec.headers_len));

    /* Round trip. */
    FUZZ_CHECK(cn__outbox_rec_size(&rec) == len);
    again = malloc(len);
    FUZZ_CHECK(again);
    cn__outbox_rec_encode(&rec, again);
    FUZZ_CHECK(!memcmp(again, buf, len));
    free(again);

    /* The caller's view, with the input itself as payload and its tail as the answer. */
    check_op(&rec, data, size, data + size / 2, size - size / 2);
    check_op(&rec, NULL, 0, NULL, 0);
    free(buf);
    return 0;
}
