/*
 * tests/fuzz/fuzz.h - what every fuzz target shares: the libFuzzer entry point and a
 * check that aborts (so libFuzzer saves the input) with the broken property and where.
 */
#ifndef CN_TESTS_FUZZ_H
#define CN_TESTS_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_CHECK(cond)                                                                   \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            fprintf(stderr, "%s:%d: property broken: %s\n", __FILE__, __LINE__, #cond);   \
            abort();                                                                       \
        }                                                                                  \
    } while (0)

/* n bytes of p as a NUL-terminated copy (free it). Not strndup: the input is not a C
 * string, and strict_string_checks (the test command's ASAN_OPTIONS) makes the strndup
 * interceptor read to a NUL. */
static inline char *
fuzz_strndup(const void *p, size_t n)
{
    char *s = malloc(n + 1);

    if (s) {
        memcpy(s, p, n);
        s[n] = '\0';
    }
    return s;
}

#endif
