/*
 * support/bytes.h - fixed-width integers in byte buffers, for the on-disk and shared
 * formats (records, WAL frames, rings, events, LMDB keys). Every format says which byte
 * order it uses; these do the copying, with no alignment assumed.
 */
#ifndef CN_SUPPORT_BYTES_H
#define CN_SUPPORT_BYTES_H

#include <stdint.h>

static inline void
cn__put_le16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static inline void
cn__put_le32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static inline void
cn__put_le64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static inline uint16_t
cn__get_le16(const uint8_t *p)
{
    return (uint16_t)(p[0] | p[1] << 8);
}

static inline uint32_t
cn__get_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline uint64_t
cn__get_le64(const uint8_t *p)
{
    return (uint64_t)cn__get_le32(p) | (uint64_t)cn__get_le32(p + 4) << 32;
}

/* Big-endian: keys that must sort by number in LMDB. */
static inline void
cn__put_be64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--) {
        p[i] = (uint8_t)(v & 0xff);
        v >>= 8;
    }
}

static inline uint64_t
cn__get_be64(const uint8_t *p)
{
    uint64_t v = 0;

    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

#endif
