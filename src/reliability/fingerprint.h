/*
 * reliability/fingerprint.h - the request fingerprint and SHA-256 (wraps libcrypto).
 *
 * fingerprint = SHA-256( be64(len(query)) || query || be64(len(body)) || body )
 * where query is the raw query string without '?' ("" when absent) and body the raw
 * request body. be64 is an unsigned 64-bit big-endian length. A durable route of another
 * method than POST puts its request line first: PUT /items/1 and PUT /items/2 with one
 * key and one body are two requests, as are PUT and DELETE on one path:
 *
 * fingerprint = SHA-256( be64(len(target)) || target || <the same as above> )
 * with target = method SP raw path ("PUT /items/1"). POST keeps the first form, so the
 * fingerprints stored before durable routes had other methods still match.
 */
#ifndef CN_RELIABILITY_FINGERPRINT_H
#define CN_RELIABILITY_FINGERPRINT_H

#include <stddef.h>
#include <stdint.h>

#define CN_SHA256_LEN 32

/* SHA-256 of len bytes. Returns 0, or -ENOMEM / -EIO when libcrypto fails. */
int cn__sha256(const void *data, size_t len, uint8_t out[CN_SHA256_LEN]);

/* The fingerprint described above. Returns 0 or a negative error. */
int cn__fingerprint(const char *query, size_t qlen, const void *body, size_t blen,
                    uint8_t out[CN_SHA256_LEN]);

/* The second form (target is not NUL-terminated; NULL with tlen 0 gives the first). */
int cn__fingerprint_target(const char *target, size_t tlen, const char *query, size_t qlen,
                           const void *body, size_t blen, uint8_t out[CN_SHA256_LEN]);

/* Writes 2*len lowercase hex digits and a NUL to out. */
void cn__hex(const uint8_t *bytes, size_t len, char *out);

#endif
