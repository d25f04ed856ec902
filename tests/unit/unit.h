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
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
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

/* Reaps child pid within timeout_ms (waiting on a pidfd where the kernel has them, else
 * polling its state every millisecond). Past the bound the child is SIGKILLed and
 * reaped, and -1 returned; 0 when it exited in time. *status is the wait status either
 * way. */
static inline int
unit_reap_within(pid_t pid, uint64_t timeout_ms, int *status)
{
    uint64_t end = unit_now_ms() + timeout_ms;
    int pfd = -1, rc = -1;

#ifdef SYS_pidfd_open
    pfd = (int)syscall(SYS_pidfd_open, pid, 0);
#endif
    for (;;) {
        pid_t r = waitpid(pid, status, WNOHANG);
        uint64_t now;

        if (r == pid) {
            rc = 0;
            goto out;
        }
        if (r < 0 && errno != EINTR)
            goto out;
        if ((now = unit_now_ms()) >= end)
            break;
        if (pfd >= 0) {
            struct pollfd p = {pfd, POLLIN, 0};
            uint64_t left = end - now;

            (void)poll(&p, 1, (int)(left < 1000 ? left : 1000));
        } else {
            struct timespec ts = {0, 1000000};

            nanosleep(&ts, NULL);
        }
    }
    fprintf(stderr, "child %d did not exit within %llu ms: killing it\n", (int)pid,
            (unsigned long long)timeout_ms);
    kill(pid, SIGKILL);
    while (waitpid(pid, status, 0) < 0 && errno == EINTR)
        ;
out:
    if (pfd >= 0)
        close(pfd);
    return rc;
}

#endif
