/*
 * tests/shim/walfault.c - a test-only LD_PRELOAD shim that makes WAL writes fail.
 *
 * Built only with the tests (never installed, never linked into the library). Loaded into
 * a server with LD_PRELOAD, it wraps pwrite(), pwritev2() and fdatasync(): a call on a file
 * whose path contains CN_FAULT_PATH (default "/wal/") is counted, and once CN_FAULT_AFTER
 * such calls went through, the next CN_FAULT_COUNT (default 1) fail with CN_FAULT_ERRNO
 * (default EIO) without doing anything. CN_FAULT_CALLS picks the calls ("fdatasync",
 * "pwrite", "pwritev2" -- the persister's O_DIRECT writes with RWF_DSYNC -- or several
 * separated by commas; default "fdatasync"). Without CN_FAULT_AFTER the shim does nothing.
 *
 * Counters are per process and start at 0 in each process (a forked child inherits the
 * parent's count, which is 0 in a server's supervisor: only the persister writes the WAL),
 * so a restarted persister fails again after CN_FAULT_AFTER calls. Each injected failure
 * is reported on stderr ("walfault: ..."), which the tests count. Thread-safe (atomics).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

static atomic_long matched;
static atomic_long failed;

/* 1 when the comma-separated list names what exactly ("pwrite" is not "pwritev2"). */
static int
listed(const char *list, const char *what)
{
    size_t n = strlen(what);

    for (const char *p = list; (p = strstr(p, what)); p += n) {
        if ((p == list || p[-1] == ',') && (p[n] == '\0' || p[n] == ','))
            return 1;
    }
    return 0;
}

/* 1 when the call named what is configured to fail now (and counts it). */
static int
should_fail(int fd, const char *what)
{
    const char *after = getenv("CN_FAULT_AFTER"), *calls = getenv("CN_FAULT_CALLS");
    const char *sub = getenv("CN_FAULT_PATH"), *count = getenv("CN_FAULT_COUNT");
    char link[64], path[PATH_MAX];
    ssize_t n;
    long nth, limit;

    if (!after)
        return 0;
    if (!calls)
        calls = "fdatasync";
    if (!listed(calls, what))
        return 0;
    snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
    n = readlink(link, path, sizeof(path) - 1);
    if (n <= 0)
        return 0;
    path[n] = '\0';
    if (!strstr(path, sub ? sub : "/wal/"))
        return 0;
    nth = atomic_fetch_add(&matched, 1);
    limit = count ? atol(count) : 1;
    if (nth < atol(after) || atomic_load(&failed) >= limit)
        return 0;
    atomic_fetch_add(&failed, 1);
    fprintf(stderr, "walfault: %s on %s fails (pid %d)\n", what, path, (int)getpid());
    return 1;
}

static int
fault_errno(void)
{
    const char *e = getenv("CN_FAULT_ERRNO");

    return e ? atoi(e) : EIO;
}

int
fdatasync(int fd)
{
    static int (*real)(int);

    if (!real)
        real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    if (should_fail(fd, "fdatasync")) {
        errno = fault_errno();
        return -1;
    }
    return real(fd);
}

ssize_t
pwrite(int fd, const void *buf, size_t len, off_t off)
{
    static ssize_t (*real)(int, const void *, size_t, off_t);

    if (!real)
        real = (ssize_t(*)(int, const void *, size_t, off_t))dlsym(RTLD_NEXT, "pwrite");
    if (should_fail(fd, "pwrite")) {
        errno = fault_errno();
        return -1;
    }
    return real(fd, buf, len, off);
}

ssize_t pwrite64(int fd, const void *buf, size_t len, off_t off) __attribute__((alias("pwrite")));

ssize_t
pwritev2(int fd, const struct iovec *iov, int iovcnt, off_t off, int flags)
{
    static ssize_t (*real)(int, const struct iovec *, int, off_t, int);

    if (!real)
        real = (ssize_t(*)(int, const struct iovec *, int, off_t, int))dlsym(RTLD_NEXT,
                                                                              "pwritev2");
    if (should_fail(fd, "pwritev2")) {
        errno = fault_errno();
        return -1;
    }
    return real(fd, iov, iovcnt, off, flags);
}

ssize_t pwritev64v2(int fd, const struct iovec *iov, int iovcnt, off_t off, int flags)
    __attribute__((alias("pwritev2")));
