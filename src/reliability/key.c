/*
 * reliability/key.c - parsing the Idempotency-Key header value.
 *
 * The IETF draft defines the header as an RFC 8941 sf-string ("abc"); many clients send
 * a bare value (abc). Both are accepted and name the same key.
 */
#include <string.h>

#include "cnerium/error.h"
#include "reliability/key.h"

static int
reject(const char **why, const char *msg)
{
    if (why)
        *why = msg;
    return CN_EINVAL_KEY;
}

int
cn__key_parse(const char *value, size_t len, char *out, size_t *outlen, const char **why)
{
    char key[CN_KEY_MAX + 1];
    size_t n = 0;

    while (len && (*value == ' ' || *value == '\t')) {
        value++;
        len--;
    }
    while (len && (value[len - 1] == ' ' || value[len - 1] == '\t'))
        len--;

    if (len && value[0] == '"') {
        size_t i = 1;
        for (;;) {
            unsigned char c;
            if (i >= len)
                return reject(why, "Idempotency-Key has an unterminated quoted string");
            c = (unsigned char)value[i++];
            if (c == '"')
                break;
            if (c == '\\') {
                if (i >= len || (value[i] != '"' && value[i] != '\\'))
                    return reject(why, "Idempotency-Key has an invalid escape in its quoted "
                                       "string (only \\\" and \\\\ are allowed)");
                c = (unsigned char)value[i++];
            } else if (c < 0x20 || c > 0x7e) {
                return reject(why, "Idempotency-Key must contain printable ASCII characters "
                                   "only");
            }
            if (n == CN_KEY_MAX)
                return reject(why, "Idempotency-Key must be at most 255 bytes");
            key[n++] = (char)c;
        }
        if (i != len)
            return reject(why, "Idempotency-Key has characters after its closing quote");
    } else {
        for (size_t i = 0; i < len; i++) {
            unsigned char c = (unsigned char)value[i];
            if (c < 0x20 || c > 0x7e)
                return reject(why, "Idempotency-Key must contain printable ASCII characters "
                                   "only");
            if (n == CN_KEY_MAX)
                return reject(why, "Idempotency-Key must be at most 255 bytes");
            key[n++] = (char)c;
        }
    }
    if (n == 0)
        return reject(why, "Idempotency-Key must not be empty");
    key[n] = '\0';
    memcpy(out, key, n + 1);
    *outlen = n;
    return 0;
}
