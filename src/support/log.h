/*
 * support/log.h - one-line logging to stderr, and the always-on assert.
 *
 * Any process, any thread: each line is written with a single write(2).
 */
#ifndef CN_SUPPORT_LOG_H
#define CN_SUPPORT_LOG_H

enum { CN_LOG_ERROR = 0, CN_LOG_WARN = 1, CN_LOG_INFO = 2, CN_LOG_DEBUG = 3 };

void cn__log_set_level(int level);
int cn__log_level(void);
void cn__log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
_Noreturn void cn__assert_fail(const char *expr, const char *file, int line);

#define cn_log_error(...) cn__log(CN_LOG_ERROR, __VA_ARGS__)
#define cn_log_warn(...) cn__log(CN_LOG_WARN, __VA_ARGS__)
#define cn_log_info(...) cn__log(CN_LOG_INFO, __VA_ARGS__)
#define cn_log_debug(...)                                                                  \
    do {                                                                                   \
        if (cn__log_level() >= CN_LOG_DEBUG)                                               \
            cn__log(CN_LOG_DEBUG, __VA_ARGS__);                                            \
    } while (0)

/* Broken invariants abort in every build type, after logging file:line. */
#define CN_ASSERT(expr) ((expr) ? (void)0 : cn__assert_fail(#expr, __FILE__, __LINE__))

#endif
