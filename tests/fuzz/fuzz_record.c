/*
 * fuzz_record - the stored-response record decoder (store/format.c).
 *
 * Input: byte 0 is a mode, the rest a record. With mode bit 0 set the CRC trailer is
 * recomputed first, so the fuzzer gets past the checksum to the fields behind it.
 * Properties: decode fails only with CN_ECORRUPT or CN_EVERSION; a decoded record
 * points inside the input, and encoding it gives the input back byte for byte.
 */
#include <errno.h>
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

    return q >= buf && n <= len && q - buf <= (ptrdiff_t)(len - n);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    cn_record_t rec;
    uint8_t *buf, *again;
    size_t len, written = 0;
    int rc;

    if (size < 1)
        return 0;
    len = size - 1;
    buf = malloc(len ? len : 1);
    FUZZ_CHECK(buf);
    memcpy(buf, data + 1, len);
    if ((data[0] & 1) && len >= 4)
        cn__put_le32(buf + len - 4, cn__crc32c(0, buf, len - 4));

    rc = cn__record_decode(buf, len, &rec);
    if (rc) {
        FUZZ_CHECK(rc == CN_ECORRUPT || rc == CN_EVERSION);
        free(buf);
        return 0;
    }
    FUZZ_CHECK(inside(rec.content_type, rec.content_type_len, buf, len));
    FUZZ_CHECK(inside(rec.location, rec.location_len, buf, len));
    FUZZ_CHECK(inside(rec.body, rec.body_len, buf, len));
    FUZZ_CHECK(cn__record_encoded_size(&rec) == len);
    again = malloc(len);
    FUZZ_CHECK(again);
    FUZZ_CHECK(cn__record_encode(&rec, again, len, &written) == 0);
    FUZZ_CHECK(written == len && !memcmp(again, buf, len));
    if (len > 0)
        FUZZ_CHECK(cn__record_encode(&rec, again, len - 1, &written) == -ENOSPC);
    free(again);
    free(buf);
    return 0;
}
