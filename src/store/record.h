/*
 * store/record.h - the stored-response record and its versioned binary format.
 *
 * Layout, version 1 (integers little-endian):
 *   0   4  magic "CNRR"
 *   4   1  version (1)
 *   5   1  flags (0; reserved)
 *   6   2  status
 *   8   8  created, ms since the Unix epoch
 *   16  8  expires, ms since the Unix epoch
 *   24  32 request fingerprint
 *   56  4  content type length  (0 = no Content-Type)
 *   60  4  location length      (0 = no Location)
 *   64  4  body length
 *   68  .. content type, location, body
 *   end 4  CRC-32C of every byte before it
 *
 * A cn_record_t is a view: its pointers borrow from the encoded buffer (after decode)
 * or from the caller (before encode).
 */
#ifndef CN_STORE_RECORD_H
#define CN_STORE_RECORD_H

#include <stddef.h>
#include <stdint.h>

#include "reliability/fingerprint.h"

#define CN_RECORD_VERSION 1
#define CN_RECORD_HEADER_LEN 68
#define CN_RECORD_TRAILER_LEN 4
/* Bounds any single field so lengths can never overflow size_t arithmetic. */
#define CN_RECORD_FIELD_MAX (64u * 1024 * 1024)

typedef struct cn_record {
    uint16_t status;
    uint64_t created_ms;
    uint64_t expires_ms;
    uint8_t fingerprint[CN_SHA256_LEN];
    const char *content_type;
    uint32_t content_type_len;
    const char *location;
    uint32_t location_len;
    const char *body;
    uint32_t body_len;
} cn_record_t;

/* Bytes cn__record_encode will write for rec. */
size_t cn__record_encoded_size(const cn_record_t *rec);

/* Encodes rec into buf (cap bytes). Returns 0 and sets *written, CN_ETOOBIG when a field
 * exceeds CN_RECORD_FIELD_MAX, or -ENOSPC when cap is too small. */
int cn__record_encode(const cn_record_t *rec, uint8_t *buf, size_t cap, size_t *written);

/* Decodes len bytes. Returns 0 with *rec pointing into buf; CN_ECORRUPT for a bad magic,
 * length, CRC or truncated input; CN_EVERSION for an unknown version. *rec is written
 * only on success. */
int cn__record_decode(const uint8_t *buf, size_t len, cn_record_t *rec);

#endif
