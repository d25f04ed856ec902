/*
 * support/log.c - logging to stderr: "<time> <level> [<pid>] message\n" in one write(2),
 * so lines from several threads and processes never interleave.
 */
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "support/log.h"

static atomic_int log_level = CN_LOG_INFO;

void
cn__log_set_level(int level)
{
    atomic_store(&log_level, level);
}

int
cn__log_level(void)
{
    return atomic_load_explicit(&log_level, memory_order_relaxed);
}

static void
vlog_line(int level, const char *fmt, va_list ap)
{
    static const char *names[] = {"error", "warn", "info", "debug"};
    char line[2048];
    struct timespec ts;
    struct tm tm;
    size_t n;
    int r;

    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    n = strftime(line, sizeof(line), "%Y-%m-%dT%H:%M:%S", &tm);
    r = snprintf(line + n, sizeof(line) - n, ".%03ldZ %s [%d] ", ts.tv_nsec / 1000000L,
                 names[level < 0 ? 0 : level > 3 ? 3 : level], (int)getpid());
    if (r > 0)
        n += (size_t)r;
    if (n < sizeof(line)) {
        r = vsnprintf(line + n, sizeof(line) - n, fmt, ap);
        if (r > 0)
            n += (size_t)r;
    }
    if (n > sizeof(line) - 2)
        n = sizeof(line) - 2;
    line[n++] = '\n';
    /* One write: a partial write of a log line is not worth retrying. */
    ssize_t w = write(STDERR_FILENO, line, n);
    (void)w;
}

void
cn__log(int level, const char *fmt, ...)
{
    va_list ap;

    if (level > cn__log_level())
        return;
    va_start(ap, fmt);
    vlog_line(level, fmt, ap);
    va_end(ap);
}

void
cn__assert_fail(const char *expr, const char *file, int line)
{
    cn__log(CN_LOG_ERROR, "assertion failed: %s at %s:%d", expr, file, line);
    abort();
}
