/*
 * support/clock.h - time sources.
 */
#ifndef CN_SUPPORT_CLOCK_H
#define CN_SUPPORT_CLOCK_H

#include <stdint.h>

/* Wall-clock milliseconds since the Unix epoch (stored in records). */
uint64_t cn__clock_wall_ms(void);

/* Monotonic milliseconds (for timeouts). */
uint64_t cn__clock_mono_ms(void);

/* Monotonic microseconds (for latency figures). */
uint64_t cn__clock_mono_us(void);

/* Monotonic nanoseconds (system-wide: comparable between processes). */
uint64_t cn__clock_mono_ns(void);

#endif
