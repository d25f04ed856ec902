/*
 * support/utf8.h - strict UTF-8 validation (RFC 3629), no dependencies.
 *
 * Used wherever bytes from a client become text that other clients or parsers will see:
 * request bodies declared as JSON, event payloads. Pure function, any thread, any process.
 */
#ifndef CN_SUPPORT_UTF8_H
#define CN_SUPPORT_UTF8_H

#include <stddef.h>
#include <stdint.h>

/* Returns 1 when the n bytes at p are well-formed UTF-8, 0 otherwise. Strict: rejects
 * overlong forms, UTF-16 surrogates (U+D800..U+DFFF), code points above U+10FFFF, stray
 * continuation bytes and truncated sequences. NUL bytes are valid UTF-8 (U+0000); callers
 * that cannot carry them check for them separately. p may be NULL when n is 0. */
int cn__utf8_valid(const void *p, size_t n);

/* The length (1..4) of the well-formed sequence at p (n > 0 bytes left), or 0 with *bad
 * set to the length of its maximal ill-formed prefix: what one U+FFFD replaces. */
size_t cn__utf8_seq(const uint8_t *p, size_t n, size_t *bad);

/* Copies the n bytes at s to out, each maximal ill-formed subsequence replaced by U+FFFD
 * (Unicode 3.9, "substitution of maximal subparts"), so out needs 3 * n bytes at most.
 * Returns the bytes written; the output is always well-formed. */
size_t cn__utf8_replace(uint8_t *out, const void *s, size_t n);
#endif
