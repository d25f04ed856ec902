/*
 * support/utf8.c - strict UTF-8 validation and U+FFFD replacement (see utf8.h).
 *
 * The table form of RFC 3629 section 4: the second byte's range depends on the first
 * byte, which is where overlongs (E0, F0), surrogates (ED) and code points past U+10FFFF
 * (F4) are excluded. ASCII runs take a fast path, 8 bytes at a time.
 */
#include <stdint.h>
#include <string.h>

#include "support/utf8.h"

int
cn__utf8_valid(const void *p, size_t n)
{
    const unsigned char *s = p, *end = s + n;

    while (s < end) {
        unsigned c = *s, lo = 0x80, hi = 0xBF;
        size_t more;

        if (c < 0x80) {
            /* Skip whole words of ASCII: common bodies are mostly ASCII. */
            while ((size_t)(end - s) >= 8) {
                uint64_t w;
                memcpy(&w, s, 8);
                if (w & 0x8080808080808080ull)
                    break;
                s += 8;
            }
            if (s < end && *s < 0x80)
                s++;
            continue;
        }
        if (c >= 0xC2 && c <= 0xDF) {
            more = 1;
        } else if (c >= 0xE0 && c <= 0xEF) {
            more = 2;
            if (c == 0xE0)
                lo = 0xA0; /* overlong below U+0800 */
            else if (c == 0xED)
                hi = 0x9F; /* U+D800..U+DFFF are surrogates */
        } else if (c >= 0xF0 && c <= 0xF4) {
            more = 3;
            if (c == 0xF0)
                lo = 0x90; /* overlong below U+10000 */
            else if (c == 0xF4)
                hi = 0x8F; /* above U+10FFFF */
        } else {
            return 0; /* 80..C1 (continuation or overlong lead), F5..FF */
        }
        if ((size_t)(end - s) <= more)
            return 0; /* truncated */
        if (s[1] < lo || s[1] > hi)
            return 0;
        for (size_t i = 2; i <= more; i++) {
            if (s[i] < 0x80 || s[i] > 0xBF)
                return 0;
        }
        s += more + 1;
    }
    return 1;
}

/* The length of the well-formed UTF-8 sequence at p (n > 0 bytes left), or 0 with *bad
 * set to the length of its maximal ill-formed prefix (Unicode 3.9, "U+FFFD substitution of
 * maximal subparts"): what one U+FFFD replaces. */
size_t
cn__utf8_seq(const uint8_t *p, size_t n, size_t *bad)
{
    uint8_t c = p[0], lo = 0x80, hi = 0xbf;
    size_t need;

    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf) {
        need = 2;
    } else if (c >= 0xe0 && c <= 0xef) {
        need = 3;
        lo = c == 0xe0 ? 0xa0 : 0x80; /* no overlong forms */
        hi = c == 0xed ? 0x9f : 0xbf; /* no surrogates */
    } else if (c >= 0xf0 && c <= 0xf4) {
        need = 4;
        lo = c == 0xf0 ? 0x90 : 0x80;
        hi = c == 0xf4 ? 0x8f : 0xbf; /* nothing past U+10FFFF */
    } else {
        *bad = 1;
        return 0;
    }
    for (size_t i = 1; i < need; i++) {
        uint8_t min = i == 1 ? lo : 0x80, max = i == 1 ? hi : 0xbf;
        if (i >= n || p[i] < min || p[i] > max) {
            *bad = i;
            return 0;
        }
    }
    return need;
}

size_t
cn__utf8_replace(uint8_t *out, const void *s, size_t n)
{
    const uint8_t *p = (const uint8_t *)s;
    uint8_t *o = out;
    size_t bad, k;

    for (size_t i = 0; i < n; i += k) {
        if ((k = cn__utf8_seq(p + i, n - i, &bad))) {
            memcpy(o, p + i, k);
            o += k;
        } else {
            *o++ = 0xef;
            *o++ = 0xbf;
            *o++ = 0xbd;
            k = bad;
        }
    }
    return (size_t)(o - out);
}
