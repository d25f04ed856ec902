/*
 * outbox/op.h - an outbox operation's stored form: ids, the state record and its codec,
 * spec validation, and the cn_outbox_op_t handed to callers.
 *
 * The state record (DB "ops", key = the 32-character id) holds everything but the
 * payload and the answer body, which live in their own DBs and are written once: a state
 * change rewrites a few hundred bytes, not the payload.
 *
 * Record layout, format 1, little endian:
 *   u8 format (1) | u8 status | u8 flags (bit 0: answer truncated) | u8 zero
 *   u32 attempt | i32 last_http_status | u64 seq
 *   i64 created_at | i64 updated_at | i64 next_attempt_at | i64 lease_until
 *   u64 lease_owner
 *   u16 kind_len | u16 method_len | u16 url_len | u16 error_len | u32 headers_len
 *   kind | method | url | last_error | headers ("Name: value" lines joined by '\n')
 * Text fields hold no NUL; the total length is exact. Pure code, any thread.
 */
#ifndef CN_OUTBOX_OP_H
#define CN_OUTBOX_OP_H

#include <stddef.h>
#include <stdint.h>

#include "cnerium/outbox.h"

#define CN__OUTBOX_FORMAT 1
#define CN__OUTBOX_REC_FIXED 72
#define CN__OUTBOX_ERROR_MAX 1024 /* last_error is cut to this (bytes, NUL excluded) */

typedef struct {
    uint8_t status;
    uint8_t truncated;
    uint32_t attempt;
    int32_t last_http_status;
    uint64_t seq;
    int64_t created_at;
    int64_t updated_at;
    int64_t next_attempt_at;
    int64_t lease_until;
    uint64_t lease_owner;
    /* Borrowed views (into the decoded buffer, or the caller's strings). */
    const char *kind;
    size_t kind_len;
    const char *method;
    size_t method_len;
    const char *url;
    size_t url_len;
    const char *error;
    size_t error_len;
    const char *headers; /* lines joined by '\n', no trailing newline */
    size_t headers_len;
} cn__outbox_rec_t;

/* The encoded size of rec. */
size_t cn__outbox_rec_size(const cn__outbox_rec_t *rec);

/* Writes rec's encoding to out (cn__outbox_rec_size(rec) bytes). */
void cn__outbox_rec_encode(const cn__outbox_rec_t *rec, uint8_t *out);

/* Decodes n bytes at p; rec's string views point into p. 0, CN_EVERSION (another
 * format byte) or CN_ECORRUPT. Never reads past p + n. */
int cn__outbox_rec_decode(const void *p, size_t n, cn__outbox_rec_t *rec);

/* Draws a fresh id (128 bits from getrandom, 32 lowercase hex) into id. 0 or -errno. */
int cn__outbox_id_new(char id[CN_OUTBOX_ID_SIZE]);

/* 1 when s is a well-formed id (32 lowercase hex digits), else 0. */
int cn__outbox_id_valid(const char *s);

/* Builds the caller's view of an operation: one allocation holding the struct, the
 * header array and copies of every string. NULL on allocation failure. */
cn_outbox_op_t *cn__outbox_op_build(const char *id, const cn__outbox_rec_t *rec,
                                    const void *payload, size_t payload_len,
                                    const void *answer, size_t answer_len);

/* Joins spec's header lines by '\n' into a fresh buffer (owned: free), *len its length.
 * NULL on allocation failure (an empty list gives a 1-byte buffer and *len 0). */
char *cn__outbox_headers_join(const cn_outbox_spec_t *spec, size_t *len);

#endif
