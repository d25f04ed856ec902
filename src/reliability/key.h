/*
 * reliability/key.h - the Idempotency-Key header.
 *
 * Accepted forms: a bare value ("order-123") or a structured-field string
 * ("\"order-123\"", RFC 8941 sf-string with \" and \\ escapes); both name the same key.
 * The key itself must be 1..255 bytes of printable ASCII (0x20..0x7E).
 */
#ifndef CN_RELIABILITY_KEY_H
#define CN_RELIABILITY_KEY_H

#include <stddef.h>

#define CN_KEY_MAX 255

/* Parses one header value of len bytes (surrounding spaces and tabs are ignored).
 * On success writes the NUL-terminated key to out (at least CN_KEY_MAX + 1 bytes) and
 * its length to *outlen, and returns 0. Otherwise returns CN_EINVAL_KEY and points *why
 * at a static sentence for the client. */
int cn__key_parse(const char *value, size_t len, char *out, size_t *outlen, const char **why);

#endif
