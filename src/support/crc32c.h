/*
 * support/crc32c.h - CRC-32C (Castagnoli), used to check stored and logged records.
 */
#ifndef CN_SUPPORT_CRC32C_H
#define CN_SUPPORT_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* Extends crc (0 to start) over len bytes of data. crc32c("123456789") = 0xE3069283. */
uint32_t cn__crc32c(uint32_t crc, const void *data, size_t len);

/* The same with the portable table-driven code, whatever the CPU (for tests). */
uint32_t cn__crc32c_table(uint32_t crc, const void *data, size_t len);

#endif
