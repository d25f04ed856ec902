/*
 * outbox/op.c - operation ids, the state record codec, spec validation and the
 * caller's view of an operation (see op.h for the layout). Pure code, any thread.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>

#include "outbox/op.h"
#include "outbox/transport.h"
#include "support/bytes.h"

size_t
cn__outbox_rec_size(const cn__outbox_rec_t *rec)
{
    return CN__OUTBOX_REC_FIXED + rec->kind_len + rec->method_len + rec->url_len +
           rec->error_len + rec->headers_len;
}

static uint8_t *
put_bytes(uint8_t *p, const char *s, size_t n)
{
    if (n)
        memcpy(p, s, n);
    return p + n;
}

void
cn__outbox_rec_encode(const cn__outbox_rec_t *rec, uint8_t *out)
{
    uint8_t *p = out;

    p[0] = CN__OUTBOX_FORMAT;
    p[1] = rec->status;
    p[2] = rec->truncated ? 1 : 0;
    p[3] = 0;
    cn__put_le32(p + 4, rec->attempt);
    cn__put_le32(p + 8, (uint32_t)rec->last_http_status);
    cn__put_le64(p + 12, rec->seq);
    cn__put_le64(p + 20, (uint64_t)rec->created_at);
    cn__put_le64(p + 28, (uint64_t)rec->updated_at);
    cn__put_le64(p + 36, (uint64_t)rec->next_attempt_at);
    cn__put_le64(p + 44, (uint64_t)rec->lease_until);
    cn__put_le64(p + 52, rec->lease_owner);
    cn__put_le16(p + 60, (uint16_t)rec->kind_len);
    cn__put_le16(p + 62, (uint16_t)rec->method_len);
    cn__put_le16(p + 64, (uint16_t)rec->url_len);
    cn__put_le16(p + 66, (uint16_t)rec->error_len);
    cn__put_le32(p + 68, (uint32_t)rec->headers_len);
    p += CN__OUTBOX_REC_FIXED;
    p = put_bytes(p, rec->kind, rec->kind_len);
    p = put_bytes(p, rec->method, rec->method_len);
    p = put_bytes(p, rec->url, rec->url_len);
    p = put_bytes(p, rec->error, rec->error_len);
    put_bytes(p, rec->headers, rec->headers_len);
}

static int
text_ok(const char *s, size_t n)
{
    return memchr(s, '\0', n) == NULL;
}

int
cn__outbox_rec_decode(const void *buf, size_t n, cn__outbox_rec_t *rec)
{
    const uint8_t *p = buf;
    cn__outbox_rec_t r;
    size_t need;

    if (n < 1)
        return CN_ECORRUPT;
    if (p[0] != CN__OUTBOX_FORMAT)
        return CN_EVERSION;
    if (n < CN__OUTBOX_REC_FIXED)
        return CN_ECORRUPT;
    memset(&r, 0, sizeof(r));
    r.status = p[1];
    if (r.status >= CN_OUTBOX_STATUS_COUNT || p[2] > 1 || p[3] != 0)
        return CN_ECORRUPT;
    r.truncated = p[2];
    r.attempt = cn__get_le32(p + 4);
    r.last_http_status = (int32_t)cn__get_le32(p + 8);
    r.seq = cn__get_le64(p + 12);
    r.created_at = (int64_t)cn__get_le64(p + 20);
    r.updated_at = (int64_t)cn__get_le64(p + 28);
    r.next_attempt_at = (int64_t)cn__get_le64(p + 36);
    r.lease_until = (int64_t)cn__get_le64(p + 44);
    r.lease_owner = cn__get_le64(p + 52);
    r.kind_len = cn__get_le16(p + 60);
    r.method_len = cn__get_le16(p + 62);
    r.url_len = cn__get_le16(p + 64);
    r.error_len = cn__get_le16(p + 66);
    r.headers_len = cn__get_le32(p + 68);
    if (r.last_http_status < 0 || r.last_http_status > 999)
        return CN_ECORRUPT;
    need = (size_t)CN__OUTBOX_REC_FIXED + r.kind_len + r.method_len + r.url_len +
           r.error_len;
    if (need > n || r.headers_len != n - need)
        return CN_ECORRUPT;
    p += CN__OUTBOX_REC_FIXED;
    r.kind = (const char *)p;
    p += r.kind_len;
    r.method = (const char *)p;
    p += r.method_len;
    r.url = (const char *)p;
    p += r.url_len;
    r.error = (const char *)p;
    p += r.error_len;
    r.headers = (const char *)p;
    if (!text_ok(r.kind, r.kind_len) || !text_ok(r.method, r.method_len) ||
        !text_ok(r.url, r.url_len) || !text_ok(r.error, r.error_len) ||
        !text_ok(r.headers, r.headers_len) || r.method_len == 0 || r.url_len == 0)
        return CN_ECORRUPT;
    *rec = r;
    return 0;
}

int
cn__outbox_id_new(char id[CN_OUTBOX_ID_SIZE])
{
    static const char hex[] = "0123456789abcdef";
    uint8_t raw[16];
    size_t got = 0;

    while (got < sizeof(raw)) {
        ssize_t n = getrandom(raw + got, sizeof(raw) - got, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        got += (size_t)n;
    }
    for (size_t i = 0; i < sizeof(raw); i++) {
        id[2 * i] = hex[raw[i] >> 4];
        id[2 * i + 1] = hex[raw[i] & 15];
    }
    id[CN_OUTBOX_ID_LEN] = '\0';
    return 0;
}

int
cn__outbox_id_valid(const char *s)
{
    if (!s)
        return 0;
    for (int i = 0; i < CN_OUTBOX_ID_LEN; i++) {
        char c = s[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
            return 0;
    }
    return s[CN_OUTBOX_ID_LEN] == '\0';
}

/* RFC 9110 token characters, for header names. */
static int
tchar(unsigned char c)
{
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
        return 1;
    return c && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* Headers whose wrong value would desync a kept-alive connection or change its use. */
static const char *const transport_owned[] = {
    "Content-Length", "Transfer-Encoding", "Connection", "Keep-Alive", "TE", "Trailer", "Upgrade",
};

static int
named(const char *h, const char *colon, const char *name)
{
    size_t n = (size_t)(colon - h);

    return n == strlen(name) && strncasecmp(h, name, n) == 0;
}

static int
check_header(const char *h, const char **why)
{
    const char *colon = strchr(h, ':');
    size_t len = strlen(h);

    if (len > CN_OUTBOX_HEADER_MAX) {
        *why = "a header line is longer than 8192 bytes";
        return CN_ETOOBIG;
    }
    if (!colon || colon == h) {
        *why = "a header must look like 'Name: value'";
        return -EINVAL;
    }
    for (const char *c = h; c < colon; c++)
        if (!tchar((unsigned char)*c)) {
            *why = "a header name holds a character HTTP does not allow in names";
            return -EINVAL;
        }
    for (const char *c = colon + 1; *c; c++) {
        unsigned char u = (unsigned char)*c;
        if ((u < 0x20 && u != '\t') || u == 0x7f) {
            *why = "a header value holds a control character (CR, LF, ...)";
            return -EINVAL;
        }
    }
    if (named(h, colon, "Idempotency-Key")) {
        *why = "Idempotency-Key is set by the outbox: it is the operation id";
        return -EINVAL;
    }
    for (size_t i = 0; i < sizeof(transport_owned) / sizeof(transport_owned[0]); i++)
        if (named(h, colon, transport_owned[i])) {
            *why = "Content-Length, Transfer-Encoding, Connection, Keep-Alive, TE, Trailer "
                   "and Upgrade are set by the transport (framing, connection reuse)";
            return -EINVAL;
        }
    return 0;
}

int
cn_outbox_spec_check(const cn_outbox_spec_t *spec, const char **why)
{
    static const char *const methods[] = {"POST", "PUT", "PATCH", "DELETE"};
    const char *unused;
    int ok = 0, rc;

    if (!why)
        why = &unused;
    if (!spec) {
        *why = "no operation given";
        return -EINVAL;
    }
    for (size_t i = 0; spec->method && i < sizeof(methods) / sizeof(methods[0]); i++)
        ok |= strcmp(spec->method, methods[i]) == 0;
    if (!ok) {
        *why = "method must be POST, PUT, PATCH or DELETE";
        return -EINVAL;
    }
    if (!spec->url || !*spec->url) {
        *why = "a URL is required";
        return -EINVAL;
    }
    if (strlen(spec->url) > CN_OUTBOX_URL_MAX) {
        *why = "the URL is longer than 8192 bytes";
        return CN_ETOOBIG;
    }
    rc = cn__outbox_url_origin(spec->url, NULL, 0, why);
    if (rc)
        return rc;
    if (spec->kind && strlen(spec->kind) > CN_OUTBOX_KIND_MAX) {
        *why = "the kind is longer than 255 bytes";
        return CN_ETOOBIG;
    }
    if (spec->kind && strpbrk(spec->kind, "\r\n")) {
        *why = "the kind holds a line break";
        return -EINVAL;
    }
    if (spec->header_count > CN_OUTBOX_HEADERS_MAX) {
        *why = "more than 64 header lines";
        return CN_ETOOBIG;
    }
    if (spec->header_count && !spec->headers) {
        *why = "header_count is set but headers is NULL";
        return -EINVAL;
    }
    for (size_t i = 0; i < spec->header_count; i++) {
        if (!spec->headers[i]) {
            *why = "a header line is NULL";
            return -EINVAL;
        }
        rc = check_header(spec->headers[i], why);
        if (rc)
            return rc;
    }
    if (spec->payload_len > CN_OUTBOX_PAYLOAD_MAX) {
        *why = "the payload is larger than 64 MiB";
        return CN_ETOOBIG;
    }
    if (spec->payload_len && !spec->payload) {
        *why = "payload_len is set but payload is NULL";
        return -EINVAL;
    }
    return 0;
}

char *
cn__outbox_headers_join(const cn_outbox_spec_t *spec, size_t *len)
{
    size_t n = 0;
    char *out, *p;

    for (size_t i = 0; i < spec->header_count; i++)
        n += strlen(spec->headers[i]) + 1;
    out = malloc(n + 1);
    if (!out)
        return NULL;
    p = out;
    for (size_t i = 0; i < spec->header_count; i++) {
        size_t l = strlen(spec->headers[i]);
        if (i)
            *p++ = '\n';
        memcpy(p, spec->headers[i], l);
        p += l;
    }
    *p = '\0';
    *len = (size_t)(p - out);
    return out;
}

static char *
copy_text(char **dst, const char *s, size_t n)
{
    char *at = *dst;

    if (n)
        memcpy(at, s, n);
    at[n] = '\0';
    *dst = at + n + 1;
    return at;
}

cn_outbox_op_t *
cn__outbox_op_build(const char *id, const cn__outbox_rec_t *rec, const void *payload,
                    size_t payload_len, const void *answer, size_t answer_len)
{
    size_t lines = rec->headers_len ? 1 : 0, size;
    cn_outbox_op_t *op;
    const char **hdrs;
    char *text, *h;

    for (size_t i = 0; i < rec->headers_len; i++)
        lines += rec->headers[i] == '\n';
    size = sizeof(*op) + lines * sizeof(char *) + rec->kind_len + rec->method_len +
           rec->url_len + rec->error_len + rec->headers_len + payload_len + answer_len + 7;
    op = calloc(1, size);
    if (!op)
        return NULL;
    hdrs = (const char **)(op + 1);
    text = (char *)(hdrs + lines);
    memcpy(op->id, id, CN_OUTBOX_ID_LEN);
    op->id[CN_OUTBOX_ID_LEN] = '\0';
    op->status = (cn_outbox_status_t)rec->status;
    op->seq = rec->seq;
    op->kind = copy_text(&text, rec->kind, rec->kind_len);
    op->method = copy_text(&text, rec->method, rec->method_len);
    op->url = copy_text(&text, rec->url, rec->url_len);
    op->last_error = copy_text(&text, rec->error, rec->error_len);
    h = copy_text(&text, rec->headers, rec->headers_len);
    op->payload = copy_text(&text, payload, payload_len);
    op->payload_len = payload_len;
    op->response = copy_text(&text, answer, answer_len);
    op->response_len = answer_len;
    op->response_truncated = rec->truncated;
    /* Split the header copy in place: each '\n' becomes the end of a line. */
    for (size_t i = 0; i < lines; i++) {
        char *nl = strchr(h, '\n');
        hdrs[i] = h;
        if (nl) {
            *nl = '\0';
            h = nl + 1;
        }
    }
    op->headers = hdrs;
    op->header_count = lines;
    op->created_at_ms = rec->created_at;
    op->updated_at_ms = rec->updated_at;
    op->next_attempt_at_ms = rec->next_attempt_at;
    op->lease_until_ms = rec->lease_until;
    op->attempt = rec->attempt;
    op->last_http_status = rec->last_http_status;
    return op;
}

void
cn_outbox_op_free(cn_outbox_op_t *op)
{
    free(op);
}

static const char *const status_names[CN_OUTBOX_STATUS_COUNT] = {
    [CN_OUTBOX_PENDING] = "pending",
    [CN_OUTBOX_INFLIGHT] = "inflight",
    [CN_OUTBOX_DONE] = "done",
    [CN_OUTBOX_FAILED] = "failed",
};

const char *
cn_outbox_status_name(cn_outbox_status_t status)
{
    if ((unsigned)status >= CN_OUTBOX_STATUS_COUNT)
        return NULL;
    return status_names[status];
}

int
cn_outbox_status_parse(const char *name, cn_outbox_status_t *out)
{
    for (int i = 0; name && i < CN_OUTBOX_STATUS_COUNT; i++)
        if (strcmp(name, status_names[i]) == 0) {
            *out = (cn_outbox_status_t)i;
            return 0;
        }
    return -EINVAL;
}
