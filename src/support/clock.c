/*
 * support/clock.c - wall and monotonic time.
 */
#include <time.h>

#include "support/clock.h"

static uint64_t
ms(clockid_t id)
{
    struct timespec ts;

    clock_gettime(id, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

uint64_t
cn__clock_wall_ms(void)
{
    return ms(CLOCK_REALTIME);
}

uint64_t
cn__clock_mono_ms(void)
{
    return ms(CLOCK_MONOTONIC);
}

uint64_t
cn__clock_mono_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

uint64_t
cn__clock_mono_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}
