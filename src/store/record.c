/*
 * store/record.c - encoding and decoding stored-response records (format in record.h).
 * Decoding treats its input as untrusted: every length is checked before use.
 */
#include <errno.h>
#include <string.h>

#include "cnerium/error.h"
#include "store/record.h"
#include "support/bytes.h"
#include "support/crc32c.h"

static const uint8_t magic[4] = {'C', 'N', 'R', 'R'};

size_t
cn__record_encoded_size(const cn_record_t *rec)
{
    return CN_RECORD_HEADER_LEN + (size_t)rec->content_type_len + rec->location_len +
           rec->body_len + CN_RECORD_TRAILER_LEN;
}

int
cn__record_encode(const cn_record_t *rec, uint8_t *buf, size_t cap, size_t *written)
{
    size_t need, off = CN_RECORD_HEADER_LEN;

    if (rec->content_type_len > CN_RECORD_FIELD_MAX || rec->location_len > CN_RECORD_FIELD_MAX ||
        rec->body_len > CN_RECORD_FIELD_MAX)
        return CN_ETOOBIG;
    need = cn__record_encoded_size(rec);
    if (cap < need)
        return -ENOSPC;

    memcpy(buf, magic, 4);
    buf[4] = CN_RECORD_VERSION;
    buf[5] = 0;
    cn__put_le16(buf + 6, rec->status);
    cn__put_le64(buf + 8, rec->created_ms);
    cn__put_le64(buf + 16, rec->expires_ms);
    memcpy(buf + 24, rec->fingerprint, CN_SHA256_LEN);
    cn__put_le32(buf + 56, rec->content_type_len);
    cn__put_le32(buf + 60, rec->location_len);
    cn__put_le32(buf + 64, rec->body_len);
    if (rec->content_type_len)
        memcpy(buf + off, rec->content_type, rec->content_type_len);
    off += rec->content_type_len;
    if (rec->location_len)
        memcpy(buf + off, rec->location, rec->location_len);
    off += rec->location_len;
    if (rec->body_len)
        memcpy(buf + off, rec->body, rec->body_len);
    off += rec->body_len;
    cn__put_le32(buf + off, cn__crc32c(0, buf, off));
    *written = need;
    return 0;
}

int
cn__record_decode(const uint8_t *buf, size_t len, cn_record_t *rec)
{
    cn_record_t r;
    size_t off = CN_RECORD_HEADER_LEN, total;

    if (len < CN_RECORD_HEADER_LEN + CN_RECORD_TRAILER_LEN || memcmp(buf, magic, 4))
        return CN_ECORRUPT;
    r.content_type_len = cn__get_le32(buf + 56);
    r.location_len = cn__get_le32(buf + 60);
    r.body_len = cn__get_le32(buf + 64);
    if (r.content_type_len > CN_RECORD_FIELD_MAX || r.location_len > CN_RECORD_FIELD_MAX ||
        r.body_len > CN_RECORD_FIELD_MAX)
        return CN_ECORRUPT;
    total = CN_RECORD_HEADER_LEN + (size_t)r.content_type_len + r.location_len + r.body_len +
            CN_RECORD_TRAILER_LEN;
    if (total != len)
        return CN_ECORRUPT;
    if (cn__get_le32(buf + len - 4) != cn__crc32c(0, buf, len - 4))
        return CN_ECORRUPT;
    /* The CRC covers the version byte, so a mismatch here is a real format change. */
    if (buf[4] != CN_RECORD_VERSION)
        return CN_EVERSION;
    if (buf[5] != 0)
        return CN_ECORRUPT;

    r.status = cn__get_le16(buf + 6);
    r.created_ms = cn__get_le64(buf + 8);
    r.expires_ms = cn__get_le64(buf + 16);
    memcpy(r.fingerprint, buf + 24, CN_SHA256_LEN);
    r.content_type = (const char *)buf + off;
    off += r.content_type_len;
    r.location = (const char *)buf + off;
    off += r.location_len;
    r.body = (const char *)buf + off;
    *rec = r;
    return 0;
}
