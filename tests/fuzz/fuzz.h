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

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_CHECK(cond)                                                                   \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            fprintf(stderr, "%s:%d: property broken: %s\n", __FILE__, __LINE__, #cond);   \
            abort();                                                                       \
        }                                                                                  \
    } while (0)

#endif
