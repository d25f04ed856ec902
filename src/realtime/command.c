/*
 * realtime/command.c - WebSocket commands (see command.h): the table, path templating,
 * the HTTP/1.1 client, the frames and the request pool.
 *
 * Runs in the broadcaster process: the table and job building on its lws thread, the
 * HTTP requests on the pool's threads (a request can wait seconds for a commit; the lws
 * loop must not). Every wait of a request is a poll() bounded by its deadline and woken
 * by the pool's cancel eventfd, so stopping never waits for a slow server.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "cnerium/error.h"
#include "realtime/command.h"
#include "support/clock.h"
#include "support/utf8.h"

#define HEAD_MAX (16 * 1024)

/* ---- the table ---- */

static int
field_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '.' || c == '_' || c == '-';
}

/* A path template: '/' first, printable ASCII without spaces, well-formed "{field}"s. */
static int
template_ok(const char *p)
{
    if (p[0] != '/')
        return 0;
    for (size_t i = 0; p[i]; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c <= 0x20 || c > 0x7e || c == '}')
            return 0;
        if (c == '{') {
            size_t n = 0;
            while (field_char(p[i + 1 + n]))
                n++;
            if (n < 1 || n > CN_WS_ACTION_MAX || p[i + 1 + n] != '}')
                return 0;
            i += n + 1;
        }
    }
    return 1;
}

int
cn__ws_commands_add(cn_ws_commands_t *t, const char *action, const char *method,
                    const char *path)
{
    static const char *const methods[] = {"GET", "POST", "PUT", "DELETE"};
    cn_ws_command_t *c;
    int known = 0;

    if (!t || !cn__ws_action_name_ok(action) || !method || !path || !template_ok(path))
        return -EINVAL;
    for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++)
        known |= !strcmp(method, methods[i]);
    if (!known || cn__ws_commands_find(t, action))
        return -EINVAL;
    if (t->n == CN_WS_COMMANDS_MAX)
        return CN_ETOOBIG;
    c = &t->cmd[t->n];
    if (!(c->path = strdup(path)))
        return -ENOMEM;
    strcpy(c->action, action);
    strcpy(c->method, method);
    t->n++;
    return 0;
}

void
cn__ws_commands_free(cn_ws_commands_t *t)
{
    if (!t)
        return;
    for (unsigned i = 0; i < t->n; i++)
        free(t->cmd[i].path);
    memset(t, 0, sizeof(*t));
}

const cn_ws_command_t *
cn__ws_commands_find(const cn_ws_commands_t *t, const char *action)
{
    for (unsigned i = 0; t && i < t->n; i++) {
        if (!strcmp(t->cmd[i].action, action))
            return &t->cmd[i];
    }
    return NULL;
}

/* ---- path templating ---- */

/* A growable byte buffer; fails sticky (ok = 0) on allocation failure. */
typedef struct buf {
    char *p;
    size_t len, cap;
    int ok;
} buf_t;

static void
buf_put(buf_t *b, const void *s, size_t n)
{
    if (!b->ok)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        char *p;
        while (cap < b->len + n + 1)
            cap *= 2;
        if (!(p = realloc(b->p, cap))) {
            b->ok = 0;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void
buf_str(buf_t *b, const char *s)
{
    buf_put(b, s, strlen(s));
}

static void
buf_reserve(buf_t *b, size_t n)
{
    /* Leading bytes left for the caller (headroom): put, then rewind the length. */
    char zero[64] = {0};

    while (n) {
        size_t k = n < sizeof(zero) ? n : sizeof(zero);
        buf_put(b, zero, k);
        n -= k;
    }
}

static void
percent_encode(buf_t *b, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";

    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
            c == '-' || c == '.' || c == '_' || c == '~') {
            buf_put(b, s, 1);
        } else {
            char e[3] = {'%', hex[c >> 4], hex[c & 15]};
            buf_put(b, e, 3);
        }
    }
}

int
cn__ws_path_expand(const char *tmpl, const char *args, size_t args_len, char **out,
                   char *why, size_t why_len)
{
    cJSON *obj = cJSON_ParseWithLength(args, args_len);
    buf_t b = {NULL, 0, 0, 1};
    int rc = 0;

    if (!cJSON_IsObject(obj)) {
        snprintf(why, why_len, "the action's value must be a JSON object");
        rc = -EINVAL;
        goto out;
    }
    for (const char *p = tmpl; *p;) {
        const char *close;
        char name[CN_WS_ACTION_MAX + 1];
        const cJSON *v;

        if (*p != '{' || !(close = strchr(p, '}')) || (size_t)(close - p - 1) > CN_WS_ACTION_MAX) {
            buf_put(&b, p, 1);
            p++;
            continue;
        }
        memcpy(name, p + 1, (size_t)(close - p - 1));
        name[close - p - 1] = '\0';
        v = cJSON_GetObjectItemCaseSensitive(obj, name);
        if (!cJSON_IsString(v)) {
            /* name is [A-Za-z0-9._-]: nothing to escape */
            snprintf(why, why_len, "the action needs a string field \\\"%s\\\"", name);
            rc = -EINVAL;
            goto out;
        }
        percent_encode(&b, v->valuestring);
        p = close + 1;
    }
    if (!b.ok) {
        rc = -ENOMEM;
        goto out;
    }
    *out = b.p;
    b.p = NULL;
out:
    free(b.p);
    cJSON_Delete(obj);
    return rc;
}

/* ---- the target ---- */

int
cn__ws_target_init(cn_ws_target_t *t, const struct sockaddr *addr, socklen_t len)
{
    char ip[INET6_ADDRSTRLEN];

    memset(t, 0, sizeof(*t));
    if (len > sizeof(t->addr))
        return -EINVAL;
    memcpy(&t->addr, addr, len);
    t->len = len;
    if (addr->sa_family == AF_INET && len >= sizeof(struct sockaddr_in)) {
        struct sockaddr_in *in = (struct sockaddr_in *)&t->addr;
        if (in->sin_addr.s_addr == htonl(INADDR_ANY))
            in->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        inet_ntop(AF_INET, &in->sin_addr, ip, sizeof(ip));
        snprintf(t->host, sizeof(t->host), "%s:%u", ip, (unsigned)ntohs(in->sin_port));
        return 0;
    }
    if (addr->sa_family == AF_INET6 && len >= sizeof(struct sockaddr_in6)) {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&t->addr;
        if (!memcmp(&in6->sin6_addr, &in6addr_any, sizeof(in6addr_any)))
            in6->sin6_addr = in6addr_loopback;
        inet_ntop(AF_INET6, &in6->sin6_addr, ip, sizeof(ip));
        snprintf(t->host, sizeof(t->host), "[%s]:%u", ip, (unsigned)ntohs(in6->sin6_port));
        return 0;
    }
    return -EINVAL;
}

/* ---- the HTTP client ---- */

/* The value of header line [p, end) when it is named name, trimmed; NULL otherwise. */
static const char *
header_value(const char *p, const char *end, const char *name, size_t *vlen)
{
    size_t n = strlen(name);
    const char *v;

    if ((size_t)(end - p) <= n || p[n] != ':' || strncasecmp(p, name, n))
        return NULL;
    v = p + n + 1;
    while (v < end && (*v == ' ' || *v == '\t'))
        v++;
    while (end > v && (end[-1] == ' ' || end[-1] == '\t'))
        end--;
    *vlen = (size_t)(end - v);
    return v;
}

long
cn__ws_http_head(const char *buf, size_t len, cn_ws_answer_t *a, long long *content_length)
{
    const char *end = NULL, *p, *line_end;
    int status = 0;

    for (size_t i = 0; i + 3 < len; i++) {
        if (!memcmp(buf + i, "\r\n\r\n", 4)) {
            end = buf + i + 2; /* the last header line's CRLF included */
            break;
        }
    }
    if (!end)
        return len > HEAD_MAX ? -EPROTO : 0;
    /* "HTTP/1.x SSS reason" */
    if (end - buf < 12 || memcmp(buf, "HTTP/1.", 7) || buf[8] != ' ')
        return -EPROTO;
    for (int i = 9; i < 12; i++) {
        if (buf[i] < '0' || buf[i] > '9')
            return -EPROTO;
        status = status * 10 + (buf[i] - '0');
    }
    if (status < 100 || (buf[12] != ' ' && buf[12] != '\r'))
        return -EPROTO;
    a->status = status;
    a->replayed = 0;
    *content_length = -1;
    p = memchr(buf, '\n', (size_t)(end - buf)) + 1;
    for (; p < end; p = line_end + 2) {
        const char *v;
        size_t vlen;

        line_end = memchr(p, '\r', (size_t)(end - p));
        if (!line_end || line_end[1] != '\n')
            return -EPROTO;
        if ((v = header_value(p, line_end, "Content-Length", &vlen))) {
            long long n = 0;
            if (!vlen || vlen > 18 || *content_length >= 0)
                return -EPROTO;
            for (size_t i = 0; i < vlen; i++) {
                if (v[i] < '0' || v[i] > '9')
                    return -EPROTO;
                n = n * 10 + (v[i] - '0');
            }
            *content_length = n;
        } else if ((v = header_value(p, line_end, "Transfer-Encoding", &vlen))) {
            return -EPROTO; /* the server always sends Content-Length */
        } else if ((v = header_value(p, line_end, "Idempotent-Replayed", &vlen))) {
            a->replayed = vlen == 4 && !strncasecmp(v, "true", 4);
        }
    }
    return (long)(end - buf + 2);
}

/* Waits for events on fd until the deadline (monotonic ms) or a readable cancel_fd.
 * Returns 0, -ETIMEDOUT or -ECANCELED. */
static int
wait_fd(int fd, short events, int cancel_fd, uint64_t deadline)
{
    for (;;) {
        struct pollfd pf[2] = {{fd, events, 0}, {cancel_fd, POLLIN, 0}};
        uint64_t now = cn__clock_mono_ms();
        int n;

        if (now >= deadline)
            return -ETIMEDOUT;
        n = poll(pf, cancel_fd >= 0 ? 2 : 1, (int)(deadline - now));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        if (cancel_fd >= 0 && pf[1].revents)
            return -ECANCELED;
        if (pf[0].revents)
            return 0;
    }
}

static int
send_all(int fd, const char *p, size_t len, int cancel_fd, uint64_t deadline)
{
    while (len) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        int rc;

        if (n > 0) {
            p += n;
            len -= (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
            return -errno;
        if ((rc = wait_fd(fd, POLLOUT, cancel_fd, deadline)))
            return rc;
    }
    return 0;
}

/* The request head: the key as an RFC 8941 string, so the server takes exactly its
 * bytes (a bare value would lose leading and trailing spaces). */
static int
request_head(buf_t *b, const cn_ws_target_t *t, const char *method, const char *path,
             const char *key, size_t body_len)
{
    char line[128];

    buf_str(b, method);
    buf_str(b, " ");
    buf_str(b, path);
    buf_str(b, " HTTP/1.1\r\nHost: ");
    buf_str(b, t->host);
    snprintf(line, sizeof(line),
             "\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n", body_len);
    buf_str(b, line);
    if (key) {
        buf_str(b, "Idempotency-Key: \"");
        for (const char *k = key; *k; k++) {
            if (*k == '"' || *k == '\\')
                buf_put(b, "\\", 1);
            buf_put(b, k, 1);
        }
        buf_str(b, "\"\r\n");
    }
    buf_str(b, "Connection: close\r\n\r\n");
    return b->ok ? 0 : -ENOMEM;
}

int
cn__ws_http_call(const cn_ws_target_t *t, const char *method, const char *path,
                 const char *key, const char *body, size_t body_len, unsigned connect_ms,
                 unsigned timeout_ms, int cancel_fd, cn_ws_answer_t *a)
{
    uint64_t start = cn__clock_mono_ms();
    uint64_t deadline = start + timeout_ms;
    uint64_t connect_deadline = start + (connect_ms < timeout_ms ? connect_ms : timeout_ms);
    buf_t req = {NULL, 0, 0, 1}, in = {NULL, 0, 0, 1};
    cn_ws_answer_t ans = {0};
    long long content_length = -1;
    long head = 0;
    int fd, rc, err = 0;
    socklen_t elen = sizeof(err);

    if ((fd = socket(t->addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0)) < 0)
        return -errno;
    if ((rc = request_head(&req, t, method, path, key, body_len)))
        goto out;
    buf_put(&req, body, body_len);
    if (!req.ok) {
        rc = -ENOMEM;
        goto out;
    }
    if (connect(fd, (const struct sockaddr *)&t->addr, t->len) && errno != EINPROGRESS) {
        rc = -errno;
        goto out;
    }
    if ((rc = wait_fd(fd, POLLOUT, cancel_fd, connect_deadline)))
        goto out;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen) || err) {
        rc = err ? -err : -errno;
        goto out;
    }
    if ((rc = send_all(fd, req.p, req.len, cancel_fd, deadline)))
        goto out;
    /* Read the head, then the body: Content-Length bytes, or to the end without it. */
    for (;;) {
        char chunk[16384];
        ssize_t n;

        if (head > 0 && content_length >= 0 && in.len - (size_t)head >= (size_t)content_length)
            break;
        n = recv(fd, chunk, sizeof(chunk), 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if ((rc = wait_fd(fd, POLLIN, cancel_fd, deadline)))
                goto out;
            continue;
        }
        if (n < 0) {
            rc = -errno;
            goto out;
        }
        if (n == 0) {
            if (head > 0 && content_length < 0)
                break;
            rc = head > 0 ? -EPROTO : -ECONNRESET; /* cut short */
            goto out;
        }
        buf_put(&in, chunk, (size_t)n);
        if (!in.ok) {
            rc = -ENOMEM;
            goto out;
        }
        if (!head) {
            if ((head = cn__ws_http_head(in.p, in.len, &ans, &content_length)) < 0) {
                rc = (int)head;
                goto out;
            }
            if (head && content_length > (long long)CN_WS_RESULT_BODY_MAX) {
                rc = -EFBIG;
                goto out;
            }
        }
        if (head > 0 && in.len - (size_t)head > CN_WS_RESULT_BODY_MAX) {
            rc = -EFBIG;
            goto out;
        }
    }
    ans.body_len = content_length >= 0 ? (size_t)content_length : in.len - (size_t)head;
    if (!(ans.body = malloc(ans.body_len + 1))) {
        rc = -ENOMEM;
        goto out;
    }
    memcpy(ans.body, in.p + head, ans.body_len);
    ans.body[ans.body_len] = '\0';
    *a = ans;
    rc = 0;
out:
    free(req.p);
    free(in.p);
    close(fd);
    return rc;
}

/* ---- frames ---- */

/* s (n bytes) as a JSON string; bytes that are not UTF-8 become U+FFFD. */
static void
json_string(buf_t *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    char *fixed = NULL;

    if (!cn__utf8_valid(s, n)) {
        if (!(fixed = malloc(3 * n + 1))) {
            b->ok = 0;
            return;
        }
        n = cn__utf8_replace((uint8_t *)fixed, s, n);
        s = fixed;
    }
    buf_put(b, "\"", 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char)c};
            buf_put(b, e, 2);
        } else if (c < 0x20) {
            char e[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            buf_put(b, e, 6);
        } else {
            buf_put(b, s + i, 1);
        }
    }
    buf_put(b, "\"", 1);
    free(fixed);
}

static void
frame_start(buf_t *b, const char *type, const char *id, size_t headroom)
{
    buf_reserve(b, headroom);
    buf_str(b, "{\"type\":\"");
    buf_str(b, type);
    buf_str(b, "\",\"id\":");
    if (id)
        json_string(b, id, strlen(id));
    else
        buf_str(b, "null");
}

static char *
frame_end(buf_t *b, size_t headroom, size_t *len)
{
    buf_str(b, "}");
    if (!b->ok) {
        free(b->p);
        return NULL;
    }
    *len = b->len - headroom;
    return b->p;
}

/* A strict RFC 8259 check (cJSON is lenient: "01", "+1", raw control characters in
 * strings), so a body goes into a frame as it is only when any JSON parser takes it.
 * Escapes must stand for Unicode scalar values: a lone surrogate ("\udc00", or "\ud800"
 * not followed by a low one) is refused, as strict parsers (cJSON among them) do. */
#define STRICT_DEPTH 256

static size_t
strict_ws(const char *s, size_t n, size_t i)
{
    while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r'))
        i++;
    return i;
}

static int
is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* The code unit of the 4 hex digits at s[i], or -1. */
static long
strict_hex4(const char *s, size_t n, size_t i)
{
    long v = 0;

    if (n - i < 4 || i > n)
        return -1;
    for (size_t k = 0; k < 4; k++) {
        char h = s[i + k];
        int d = is_digit(h) ? h - '0'
                : ((h | 0x20) >= 'a' && (h | 0x20) <= 'f') ? (h | 0x20) - 'a' + 10 : -1;
        if (d < 0)
            return -1;
        v = v * 16 + d;
    }
    return v;
}

/* The end of the value at s[i], or NOWHERE. */
static size_t
strict_value(const char *s, size_t n, size_t i, unsigned depth)
{
    static const char *const words[] = {"true", "false", "null"};

    if (i >= n || depth > STRICT_DEPTH)
        return (size_t)-1;
    if (s[i] == '"') {
        for (i++; i < n; i++) {
            unsigned char c = (unsigned char)s[i];
            if (c == '"')
                return i + 1;
            if (c < 0x20)
                return (size_t)-1;
            if (c == '\\') {
                if (++i >= n)
                    return (size_t)-1;
                if (s[i] == 'u') {
                    long u = strict_hex4(s, n, i + 1), lo;
                    if (u < 0 || (u >= 0xdc00 && u <= 0xdfff))
                        return (size_t)-1;
                    i += 4;
                    if (u >= 0xd800 && u <= 0xdbff) {
                        if (n - i < 3 || s[i + 1] != '\\' || s[i + 2] != 'u')
                            return (size_t)-1;
                        lo = strict_hex4(s, n, i + 3);
                        if (lo < 0xdc00 || lo > 0xdfff)
                            return (size_t)-1;
                        i += 6;
                    }
                } else if (!strchr("\"\\/bfnrt", s[i]) || !s[i]) {
                    return (size_t)-1;
                }
            }
        }
        return (size_t)-1;
    }
    if (s[i] == '{' || s[i] == '[') {
        char close = s[i] == '{' ? '}' : ']';
        i = strict_ws(s, n, i + 1);
        if (i < n && s[i] == close)
            return i + 1;
        for (;;) {
            if (close == '}') {
                if (i >= n || s[i] != '"' || (i = strict_value(s, n, i, depth + 1)) == (size_t)-1)
                    return (size_t)-1;
                i = strict_ws(s, n, i);
                if (i >= n || s[i] != ':')
                    return (size_t)-1;
                i = strict_ws(s, n, i + 1);
            }
            if ((i = strict_value(s, n, i, depth + 1)) == (size_t)-1)
                return (size_t)-1;
            i = strict_ws(s, n, i);
            if (i < n && s[i] == close)
                return i + 1;
            if (i >= n || s[i] != ',')
                return (size_t)-1;
            i = strict_ws(s, n, i + 1);
        }
    }
    for (size_t w = 0; w < 3; w++) {
        size_t l = strlen(words[w]);
        if (n - i >= l && !memcmp(s + i, words[w], l))
            return i + l;
    }
    /* -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? */
    if (s[i] == '-')
        i++;
    if (i < n && s[i] == '0') {
        i++;
    } else if (i < n && is_digit(s[i])) {
        while (i < n && is_digit(s[i]))
            i++;
    } else {
        return (size_t)-1;
    }
    if (i < n && s[i] == '.') {
        if (++i >= n || !is_digit(s[i]))
            return (size_t)-1;
        while (i < n && is_digit(s[i]))
            i++;
    }
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        if (++i < n && (s[i] == '+' || s[i] == '-'))
            i++;
        if (i >= n || !is_digit(s[i]))
            return (size_t)-1;
        while (i < n && is_digit(s[i]))
            i++;
    }
    return i;
}

/* 1 when the n bytes at s are one JSON value in valid UTF-8, with *from and *to the
 * value without the whitespace around it. */
static int
is_json(const char *s, size_t n, size_t *from, size_t *to)
{
    size_t i, end;

    if (!s || !cn__utf8_valid(s, n))
        return 0;
    i = strict_ws(s, n, 0);
    if ((end = strict_value(s, n, i, 0)) == (size_t)-1 || strict_ws(s, n, end) != n)
        return 0;
    *from = i;
    *to = end;
    return 1;
}

char *
cn__ws_result_frame(const char *id, const cn_ws_answer_t *a, size_t headroom, size_t *len)
{
    buf_t b = {NULL, 0, 0, 1};
    size_t from, to;
    char num[32];

    frame_start(&b, "result", id, headroom);
    snprintf(num, sizeof(num), ",\"status\":%d,\"body\":", a->status);
    buf_str(&b, num);
    if (is_json(a->body, a->body_len, &from, &to)) {
        buf_put(&b, a->body + from, to - from);
    } else {
        json_string(&b, a->body ? a->body : "", a->body ? a->body_len : 0);
    }
    buf_str(&b, a->replayed ? ",\"replayed\":true" : ",\"replayed\":false");
    return frame_end(&b, headroom, len);
}

char *
cn__ws_error_frame(const char *id, const char *why, size_t headroom, size_t *len)
{
    buf_t b = {NULL, 0, 0, 1};

    frame_start(&b, "error", id, headroom);
    buf_str(&b, ",\"message\":\"");
    buf_str(&b, why);
    buf_str(&b, "\"");
    return frame_end(&b, headroom, len);
}

/* ---- jobs ---- */

int
cn__ws_job_new(const cn_ws_commands_t *t, const cn_ws_msg_t *m, cn_ws_job_t **out,
               char *why, size_t why_len)
{
    const cn_ws_command_t *c = cn__ws_commands_find(t, m->action);
    cn_ws_job_t *j;
    int rc;

    if (!c) {
        snprintf(why, why_len, "unknown action");
        return -EINVAL;
    }
    if (!(j = calloc(1, sizeof(*j))))
        return -ENOMEM;
    strcpy(j->id, m->id);
    strcpy(j->method, c->method);
    if ((rc = cn__ws_path_expand(c->path, m->args, m->args_len, &j->path, why, why_len)))
        goto fail;
    rc = -ENOMEM;
    if (!(j->body = malloc(m->args_len + 1)) || (m->has_key && !(j->key = strdup(m->key))))
        goto fail;
    memcpy(j->body, m->args, m->args_len);
    j->body[m->args_len] = '\0';
    j->body_len = m->args_len;
    *out = j;
    return 0;
fail:
    cn__ws_job_free(j);
    return rc;
}

void
cn__ws_job_free(cn_ws_job_t *j)
{
    if (!j)
        return;
    free(j->path);
    free(j->body);
    free(j->key);
    free(j->frame);
    free(j);
}

/* ---- the pool ---- */

struct cn_ws_pool {
    cn_ws_pool_config_t cfg;
    pthread_mutex_t mu;
    pthread_cond_t cond;
    cn_ws_job_t *todo, *todo_tail;
    cn_ws_job_t *done, *done_tail;
    unsigned held; /* queued or running */
    int stop;
    int done_efd;   /* readable while done is not empty */
    int cancel_efd; /* readable once stopping: wakes requests in progress */
    pthread_t *threads;
    unsigned nthreads;
};

/* The frame answering j: the result, or an error saying why there is none. */
static void
job_run(cn_ws_pool_t *p, cn_ws_job_t *j)
{
    cn_ws_answer_t a;
    const char *why;
    int rc = cn__ws_http_call(&p->cfg.target, j->method, j->path, j->key, j->body,
                              j->body_len, p->cfg.connect_ms, p->cfg.timeout_ms,
                              p->cancel_efd, &a);

    if (!rc) {
        j->frame = cn__ws_result_frame(j->id, &a, p->cfg.headroom, &j->frame_len);
        free(a.body);
        if (j->frame)
            return;
        rc = -ENOMEM;
    }
    switch (rc) {
    case -ETIMEDOUT:
        why = "the server did not answer in time; the command may still complete: retry "
              "with the same idempotency_key";
        break;
    case -ECANCELED:
        why = "the server is stopping; retry with the same idempotency_key";
        break;
    case -EFBIG:
        why = "the response is too large for a result frame (over 1 MiB)";
        break;
    case -ENOMEM:
        why = "out of memory";
        break;
    default:
        why = "the server could not be reached; retry with the same idempotency_key";
    }
    j->frame = cn__ws_error_frame(j->id, why, p->cfg.headroom, &j->frame_len);
}

static void *
pool_main(void *arg)
{
    cn_ws_pool_t *p = arg;
    uint64_t one = 1;

    pthread_mutex_lock(&p->mu);
    for (;;) {
        cn_ws_job_t *j;

        while (!p->stop && !p->todo)
            pthread_cond_wait(&p->cond, &p->mu);
        if (p->stop)
            break;
        j = p->todo;
        if (!(p->todo = j->next))
            p->todo_tail = NULL;
        j->next = NULL;
        pthread_mutex_unlock(&p->mu);

        job_run(p, j);

        pthread_mutex_lock(&p->mu);
        p->held--;
        if (p->done_tail)
            p->done_tail->next = j;
        else
            p->done = j;
        p->done_tail = j;
        if (write(p->done_efd, &one, sizeof(one)) < 0) {
            /* an eventfd write fails only at a counter of 2^64-2: it is readable anyway */
        }
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

static void
free_list(cn_ws_job_t *j)
{
    while (j) {
        cn_ws_job_t *next = j->next;
        cn__ws_job_free(j);
        j = next;
    }
}

int
cn__ws_pool_start(const cn_ws_pool_config_t *cfg, cn_ws_pool_t **out)
{
    cn_ws_pool_t *p = calloc(1, sizeof(*p));
    int rc;

    if (!p)
        return -ENOMEM;
    p->cfg = *cfg;
    p->done_efd = p->cancel_efd = -1;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cond, NULL);
    if ((p->done_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0 ||
        (p->cancel_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0) {
        rc = -errno;
        goto fail;
    }
    if (!(p->threads = calloc(cfg->threads, sizeof(*p->threads)))) {
        rc = -ENOMEM;
        goto fail;
    }
    for (; p->nthreads < cfg->threads; p->nthreads++) {
        if ((rc = pthread_create(&p->threads[p->nthreads], NULL, pool_main, p))) {
            rc = -rc;
            goto fail;
        }
    }
    *out = p;
    return 0;
fail:
    cn__ws_pool_stop(p);
    return rc;
}

int
cn__ws_pool_fd(const cn_ws_pool_t *p)
{
    return p->done_efd;
}

int
cn__ws_pool_submit(cn_ws_pool_t *p, cn_ws_job_t *j)
{
    pthread_mutex_lock(&p->mu);
    if (p->held >= p->cfg.capacity || p->stop) {
        pthread_mutex_unlock(&p->mu);
        return -EBUSY;
    }
    p->held++;
    j->next = NULL;
    if (p->todo_tail)
        p->todo_tail->next = j;
    else
        p->todo = j;
    p->todo_tail = j;
    pthread_cond_signal(&p->cond);
    pthread_mutex_unlock(&p->mu);
    return 0;
}

cn_ws_job_t *
cn__ws_pool_take(cn_ws_pool_t *p)
{
    cn_ws_job_t *list;
    uint64_t v;

    pthread_mutex_lock(&p->mu);
    /* Cleared under the lock: a job finishing after this writes it again. */
    while (read(p->done_efd, &v, sizeof(v)) > 0)
        ;
    list = p->done;
    p->done = p->done_tail = NULL;
    pthread_mutex_unlock(&p->mu);
    return list;
}

void
cn__ws_pool_stop(cn_ws_pool_t *p)
{
    uint64_t one = 1;

    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    pthread_cond_broadcast(&p->cond);
    pthread_mutex_unlock(&p->mu);
    if (p->cancel_efd >= 0 && write(p->cancel_efd, &one, sizeof(one)) < 0) {
        /* cannot fail on a fresh eventfd */
    }
    for (unsigned i = 0; i < p->nthreads; i++)
        pthread_join(p->threads[i], NULL);
    free(p->threads);
    free_list(p->todo);
    free_list(p->done);
    if (p->done_efd >= 0)
        close(p->done_efd);
    if (p->cancel_efd >= 0)
        close(p->cancel_efd);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cond);
    free(p);
}
