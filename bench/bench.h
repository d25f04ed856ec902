/*
 * bench/bench.h - what the benchmark tools share: a monotonic clock, header-name
 * matching, number parsing, and the loopback-only URL parsing every tool applies to its
 * target (they refuse anything but 127.0.0.0/8, ::1 and localhost).
 *
 * Header-only (static inline): each tool stays one self-contained executable.
 */
#ifndef CN_BENCH_BENCH_H
#define CN_BENCH_BENCH_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>

static inline uint64_t
bench_now_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* The n bytes at p are the header name `name` (case-insensitive). */
static inline int
bench_name_is(const char *p, size_t n, const char *name)
{
    return strlen(name) == n && !strncasecmp(p, name, n);
}

/* The n bytes at s contain needle (case-insensitive). */
static inline int
bench_ci_contains(const char *s, size_t n, const char *needle)
{
    size_t m = strlen(needle);

    for (size_t i = 0; i + m <= n; i++)
        if (!strncasecmp(s + i, needle, m))
            return 1;
    return 0;
}

/* A number in [lo, hi]. Returns 0 and *out, or -1. */
static inline int
bench_parse_num(const char *s, double lo, double hi, double *out)
{
    char *e;
    double v = strtod(s, &e);

    if (e == s || *e || !(v >= lo && v <= hi))
        return -1;
    *out = v;
    return 0;
}

static inline int
bench_is_loopback(const struct sockaddr_storage *a)
{
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *s = (const struct sockaddr_in *)a;
        return (ntohl(s->sin_addr.s_addr) >> 24) == 127;
    }
    if (a->ss_family == AF_INET6) {
        const struct sockaddr_in6 *s = (const struct sockaddr_in6 *)a;
        static const uint8_t v4[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        return IN6_IS_ADDR_LOOPBACK(&s->sin6_addr) ||
               (!memcmp(s->sin6_addr.s6_addr, v4, 12) && s->sin6_addr.s6_addr[12] == 127);
    }
    return 0;
}

/* Parses http://HOST[:PORT][/path], HOST a loopback literal, [::1] or localhost, into
 * *addr and *addrlen, and hostport (the Host header value, hostcap bytes); *path points at
 * the path in url ("" when none). Errors are reported on stderr as `tool: ...`. Returns
 * 0 or -1. */
static inline int
bench_parse_url(const char *tool, const char *url, struct sockaddr_storage *addr,
                socklen_t *addrlen, char *hostport, size_t hostcap, const char **path)
{
    const char *p = url, *hs, *he;
    char host[64];
    unsigned long port = 80;
    struct sockaddr_in *a4 = (struct sockaddr_in *)addr;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)addr;

    if (strncmp(p, "http://", 7)) {
        fprintf(stderr, "%s: URL must start with http:// (got %s)\n", tool, url);
        return -1;
    }
    p += 7;
    if (*p == '[') {
        hs = p + 1;
        he = strchr(hs, ']');
        if (!he)
            return -1;
        p = he + 1;
    } else {
        hs = p;
        he = p + strcspn(p, ":/");
        p = he;
    }
    if (he == hs || (size_t)(he - hs) >= sizeof(host))
        return -1;
    memcpy(host, hs, (size_t)(he - hs));
    host[he - hs] = '\0';
    if (*p == ':') {
        char *e;
        port = strtoul(p + 1, &e, 10);
        if (e == p + 1 || port > 65535)
            return -1;
        p = e;
    }
    if (*p && *p != '/')
        return -1;
    *path = p;
    memset(addr, 0, sizeof(*addr));
    if (!strcmp(host, "localhost"))
        strcpy(host, "127.0.0.1");
    if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)port);
        *addrlen = sizeof(*a4);
    } else if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)port);
        *addrlen = sizeof(*a6);
    } else {
        fprintf(stderr, "%s: host must be a loopback address literal or localhost\n", tool);
        return -1;
    }
    if (!bench_is_loopback(addr)) {
        fprintf(stderr, "%s: refusing non-loopback address %s\n", tool, host);
        return -1;
    }
    snprintf(hostport, hostcap, "%.*s", (int)(p - (url + 7)), url + 7);
    return 0;
}

#endif
