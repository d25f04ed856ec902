/*
 * fuzz_key - the Idempotency-Key header parser (reliability/key.c).
 *
 * Input: one header value. Properties: an accepted key is 1..255 bytes of printable
 * ASCII, NUL-terminated at its length; a rejected one says why; and the structured-field
 * form of an accepted key parses back to the same key.
 */
#include <string.h>

#include "cnerium/error.h"
#include "fuzz.h"
#include "reliability/key.h"

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char key[CN_KEY_MAX + 1], again[CN_KEY_MAX + 1], quoted[2 * CN_KEY_MAX + 3];
    size_t len = 0, len2 = 0, q = 0;
    const char *why = NULL;
    int rc = cn__key_parse((const char *)data, size, key, &len, &why);

    if (rc) {
        FUZZ_CHECK(rc == CN_EINVAL_KEY);
        FUZZ_CHECK(why && why[0]);
        return 0;
    }
    FUZZ_CHECK(len >= 1 && len <= CN_KEY_MAX);
    FUZZ_CHECK(key[len] == '\0');
    for (size_t i = 0; i < len; i++)
        FUZZ_CHECK(key[i] >= 0x20 && key[i] <= 0x7e);

    /* RFC 8941 sf-string of the key, with surrounding whitespace the parser must skip. */
    quoted[q++] = '"';
    for (size_t i = 0; i < len; i++) {
        if (key[i] == '"' || key[i] == '\\')
            quoted[q++] = '\\';
        quoted[q++] = key[i];
    }
    quoted[q++] = '"';
    FUZZ_CHECK(cn__key_parse(quoted, q, again, &len2, &why) == 0);
    FUZZ_CHECK(len2 == len && !memcmp(again, key, len));
    return 0;
}
