/*
 * tests/unit/unit.h - what every CUnit suite shares: a runner that turns failed
 * assertions into a non-zero exit status, a fresh temp dir per suite, and a monotonic
 * clock for bounded waits.
 *
 * Header-only (static inline) so each suite stays one self-contained executable.
 */
#ifndef CN_TESTS_UNIT_H
#define CN_TESTS_UNIT_H

#include <errno.h>
#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <CUnit/Basic.h>

typedef struct unit_test {
    const char *name;
    CU_TestFunc fn;
} unit_test_t;

/* Runs tests (terminated by a {NULL, NULL} entry) as one suite. Returns the process exit
 * status: 0 when every assertion passed, 1 otherwise (also when CUnit itself failed). */
static inline int
unit_run(const char *suite_name, const unit_test_t *tests)
{
    CU_pSuite suite;
    unsigned failures, tests_failed;

    if (CU_initialize_registry() != CUE_SUCCESS) {
        fprintf(stderr, "%s: CU_initialize_registry: %s\n", suite_name, CU_get_error_msg());
        return 1;
    }
    if (!(suite = CU_add_suite(suite_name, NULL, NULL)))
        goto cu_error;
    for (const unit_test_t *t = tests; t->name; t++) {
        if (!CU_add_test(suite, t->name, t->fn))
            goto cu_error;
    }
    CU_basic_set_mode(CU_BRM_VERBOSE);
    if (CU_basic_run_tests() != CUE_SUCCESS)
        goto cu_error;
    failures = CU_get_number_of_failures();
    tests_failed = CU_get_number_of_tests_failed();
    CU_cleanup_registry();
    if (failures || tests_failed) {
        fprintf(stderr, "%s: %u assertion(s) failed in %u test(s)\n", suite_name, failures,
                tests_failed);
        return 1;
    }
    return 0;

cu_error:
    fprintf(stderr, "%s: CUnit error: %s\n", suite_name, CU_get_error_msg());
    CU_cleanup_registry();
    return 1;
}

/* Creates a fresh directory /tmp/cnerium-<tag>-XXXXXX and writes its path to out
 * (at least 64 bytes). Returns 0 or -errno. */
static inline int
unit_tempdir(const char *tag, char *out, size_t cap)
{
    if ((size_t)snprintf(out, cap, "/tmp/cnerium-%s-XXXXXX", tag) >= cap)
        return -ENAMETOOLONG;
    return mkdtemp(out) ? 0 : -errno;
}

static inline int
unit_rm_entry(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
    (void)st;
    (void)type;
    (void)ftw;
    return remove(path) ? -1 : 0;
}

/* Removes dir and everything under it (does not follow symlinks). Returns 0 or -1. */
static inline int
unit_rmtree(const char *dir)
{
    return nftw(dir, unit_rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* Monotonic milliseconds, for measuring and bounding waits. */
static inline uint64_t
unit_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

#endif
