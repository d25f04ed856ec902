/*
 * src/outbox/cli.c - cnerium-outbox, the command line face of the client outbox
 * (include/cnerium/outbox.h): enqueue HTTP operations durably, run the worker that
 * sends them, list, show and requeue what is stored.
 *
 * One process per invocation, using only the public API: whatever it does, a program
 * linking cnerium_outbox can do too. Several invocations may share a directory (the
 * store serializes writers across processes), so `enqueue` and `list` work while `run`
 * sends; `run` takes the directory's worker lock and exits 6 when another process holds
 * it. `run` keeps SIGINT and SIGTERM blocked except while it waits between ticks, so a
 * signal never cuts a tick short: the tick ends, the final progress line is printed and
 * the exit code is 0.
 *
 * Exit codes (also in the usage text):
 *   0  ok
 *   1  runtime error (store, I/O), one line "cnerium-outbox: ...: <reason>"
 *   2  bad usage: unknown command or option, missing or malformed value
 *   3  run --until-empty stopped by --max-seconds with work left
 *   4  no such operation (show, requeue), or a malformed id
 *   5  requeue of an operation that is not Failed
 *   6  another worker runs on the directory
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include <cnerium/outbox.h>

enum {
    CLI_OK = 0,
    CLI_RUNTIME = 1,
    CLI_USAGE = 2,
    CLI_NOT_EMPTY = 3,
    CLI_NO_SUCH_OP = 4,
    CLI_NOT_FAILED = 5,
    CLI_BUSY = 6,
};

/* --count: one enqueue_many call holds every copy in memory and in one commit. */
#define COUNT_MAX 100000
/* run: how long an idle worker waits before looking for work enqueued elsewhere. */
#define IDLE_POLL_MS 200
#define PROGRESS_EVERY_MS 1000
#define COMPACT_EVERY_MS 60000
#define MAX_SECONDS_MAX (10ull * 365 * 24 * 3600)
#define DELAY_MS_MAX (7u * 24 * 3600 * 1000) /* a week, in ms: fits uint32_t */

static const char usage_text[] =
    "usage: cnerium-outbox --dir D <command> [options]\n"
    "\n"
    "An offline-first outbox: operations are stored durably in directory D first, then\n"
    "sent until the server has them, each try with \"Idempotency-Key: <operation id>\".\n"
    "D may also come from the environment variable CNERIUM_OUTBOX_DIR.\n"
    "\n"
    "commands:\n"
    "  enqueue --method POST|PUT|PATCH|DELETE --url URL [--header 'Name: value']...\n"
    "          [--data TEXT | --data-file FILE | --data-stdin] [--kind K] [--count N]\n"
    "      Stores the operation (N copies in one commit with --count, default 1) and\n"
    "      prints its id, one per line. With a payload and no Content-Type header,\n"
    "      \"Content-Type: application/json\" is added.\n"
    "  run [--until-empty] [--max-seconds N] [--max-attempts N] [--base-delay-ms N]\n"
    "      [--factor X] [--max-delay-ms N] [--no-jitter] [--batch N] [--parallel N]\n"
    "      [--fifo] [--timeout-ms N] [--connect-timeout-ms N] [--quiet]\n"
    "      The worker: sends what is due until nothing is pending or inflight\n"
    "      (--until-empty), for N seconds (--max-seconds; checked between ticks), or\n"
    "      until SIGINT or SIGTERM (the current tick ends first, exit code 0). Progress\n"
    "      on stderr: \"outbox: sent N, done N, failed N, waiting N\"; --quiet: none.\n"
    "  list [--status pending|inflight|done|failed] [--json]\n"
    "      One line per operation: id status attempt method url kind last_error\n"
    "      (\"-\" for an empty field, spaces and control bytes before last_error as\n"
    "      \\xNN), or a JSON array with --json.\n"
    "  show ID [--json]\n"
    "      Every field of one operation, payload and response included.\n"
    "  requeue ID\n"
    "      Puts a Failed operation back to Pending with its attempt count reset.\n"
    "  stats [--json]\n"
    "      Counts by status, total, next_due_ms, oldest_pending_ms, enqueued_total.\n"
    "\n"
    "Options take their value as the next argument or after '=' (--url=URL).\n"
    "--help or -h, anywhere, prints this text.\n"
    "\n"
    "exit codes:\n"
    "  0  ok\n"
    "  1  runtime error (store, I/O)\n"
    "  2  bad usage: unknown command or option, missing or malformed value\n"
    "  3  run --until-empty stopped by --max-seconds with work left\n"
    "  4  no such operation (show, requeue), or a malformed id\n"
    "  5  requeue of an operation that is not failed\n"
    "  6  another worker runs on the directory\n";

/* --- messages ------------------------------------------------------------------- */

/* s made printable for a one-line message: bytes outside printable ASCII as \xNN, cut
 * at about 200 bytes. Four rotating buffers, so one message can show several. */
static const char *
shown(const char *s)
{
    static char bufs[4][1024];
    static unsigned next;
    char *b = bufs[next++ % 4];
    size_t n = 0, i;

    if (!s)
        return "(null)";
    for (i = 0; s[i] && n < 200 * 4; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (i >= 200) {
            memcpy(b + n, "...", 3);
            n += 3;
            break;
        }
        if (ch >= 0x20 && ch < 0x7f) {
            b[n++] = (char)ch;
        } else {
            snprintf(b + n, 5, "\\x%02x", ch);
            n += 4;
        }
    }
    b[n] = '\0';
    return b;
}

__attribute__((format(printf, 1, 2))) static int
usage_error(const char *fmt, ...)
{
    va_list ap;

    fputs("cnerium-outbox: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs("\nsee cnerium-outbox --help\n", stderr);
    return CLI_USAGE;
}

/* "cnerium-outbox: <what>: <cn_strerror(err)>"; returns code. */
__attribute__((format(printf, 3, 4))) static int
fail(int code, int err, const char *fmt, ...)
{
    va_list ap;

    fputs("cnerium-outbox: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, ": %s\n", cn_strerror(err));
    return code;
}

/* Flushes stdout; a failed write (a full disk, a closed pipe) is a runtime error. */
static int
finish_stdout(int rc)
{
    if (fflush(stdout) != 0 || ferror(stdout)) {
        int err = errno ? -errno : -EIO;
        fail(CLI_RUNTIME, err, "writing to standard output");
        return rc == CLI_OK ? CLI_RUNTIME : rc;
    }
    return rc;
}

/* --- argument parsing ----------------------------------------------------------- */

typedef struct {
    int argc;
    char **argv;
    int i;           /* the argument being parsed */
    const char *dir; /* --dir, or NULL */
} args_t;

static int
is_help(const char *arg)
{
    return strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0;
}

/* 1 when argv[i] is the flag name (no value allowed). */
static int
flag(const args_t *a, const char *name)
{
    return strcmp(a->argv[a->i], name) == 0;
}

/* Matches option name with a value, "--name value" or "--name=value": 1 and *v (the
 * next argument is consumed), 0 when argv[i] is not this option, -1 (message printed)
 * when the value is missing. */
static int
option(args_t *a, const char *name, const char **v)
{
    const char *arg = a->argv[a->i];
    size_t n = strlen(name);

    if (strncmp(arg, name, n) != 0)
        return 0;
    if (arg[n] == '=') {
        *v = arg + n + 1;
        return 1;
    }
    if (arg[n] != '\0')
        return 0;
    if (a->i + 1 >= a->argc) {
        usage_error("option %s needs a value", name);
        return -1;
    }
    *v = a->argv[++a->i];
    return 1;
}

/* A decimal integer in [min, max], digits only (no sign, no space, no base prefix).
 * 0, or -1 after printing why. */
static int
parse_uint(const char *name, const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
    uint64_t v = 0;
    size_t i;

    for (i = 0; s[i]; i++) {
        unsigned d = (unsigned)(unsigned char)s[i] - '0';
        if (d > 9 || v > (UINT64_MAX - d) / 10)
            break;
        v = v * 10 + d;
    }
    if (i == 0 || s[i] || v < min || v > max) {
        usage_error("option %s: '%s' is not an integer from %llu to %llu", name, shown(s),
                    (unsigned long long)min, (unsigned long long)max);
        return -1;
    }
    *out = v;
    return 0;
}

static int
parse_u32(const char *name, const char *s, uint32_t min, uint32_t max, uint32_t *out)
{
    uint64_t v;

    if (parse_uint(name, s, min, max, &v))
        return -1;
    *out = (uint32_t)v;
    return 0;
}

/* A finite decimal number in [min, max]. 0, or -1 after printing why. */
static int
parse_double(const char *name, const char *s, double min, double max, double *out)
{
    char *end = NULL;
    double v;

    errno = 0;
    v = *s && !strchr(" \t\n\r\f\v", *s) ? strtod(s, &end) : NAN;
    if (!end || *end || errno || !isfinite(v) || v < min || v > max) {
        usage_error("option %s: '%s' is not a number from %g to %g", name, shown(s), min, max);
        return -1;
    }
    *out = v;
    return 0;
}

/* An argument no command option matched. */
static int
unknown(const args_t *a, const char *command)
{
    const char *arg = a->argv[a->i];

    if (arg[0] == '-')
        return usage_error("unknown option '%s' for %s", shown(arg), command);
    return usage_error("unexpected argument '%s' for %s", shown(arg), command);
}

/* --dir D (or --dir=D) at argv[i]: 1 taken, 0 not this, -1 bad. */
static int
dir_option(args_t *a)
{
    const char *v;
    int r = option(a, "--dir", &v);

    if (r == 1) {
        if (!*v) {
            usage_error("option --dir: the directory name is empty");
            return -1;
        }
        a->dir = v;
    }
    return r;
}

/* The directory from --dir or CNERIUM_OUTBOX_DIR; NULL (message printed) if none. */
static const char *
outbox_dir(const args_t *a)
{
    const char *env;

    if (a->dir)
        return a->dir;
    env = getenv("CNERIUM_OUTBOX_DIR");
    if (env && *env)
        return env;
    usage_error("no outbox directory: give --dir D or set CNERIUM_OUTBOX_DIR");
    return NULL;
}

/* Opens dir. must_exist: the commands that only read or change what is stored do not
 * create an outbox where there is none. 0, or an exit code after printing why. */
static int
open_outbox(const char *dir, const cn_outbox_config_t *cfg, int must_exist, cn_outbox_t **ob)
{
    struct stat st;
    int err;

    if (must_exist && stat(dir, &st) != 0)
        return fail(CLI_RUNTIME, -errno, "no outbox in %s", shown(dir));
    err = cn_outbox_open(dir, cfg, ob);
    if (err == -EINVAL && cfg)
        return usage_error("the run options are not a valid outbox configuration");
    if (err)
        return fail(CLI_RUNTIME, err, "cannot open the outbox in %s", shown(dir));
    return 0;
}

/* --- text and JSON output -------------------------------------------------------- */

/* 1 when s[0..n) is well-formed UTF-8 (no overlongs, no surrogates, <= U+10FFFF). */
static int
utf8_valid(const unsigned char *s, size_t n)
{
    size_t i = 0;

    while (i < n) {
        unsigned char c = s[i];
        size_t len, k;
        uint32_t cp;

        if (c < 0x80) {
            i++;
            continue;
        }
        if (c >= 0xc2 && c <= 0xdf) {
            len = 2;
            cp = c & 0x1f;
        } else if (c >= 0xe0 && c <= 0xef) {
            len = 3;
            cp = c & 0x0f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            len = 4;
            cp = c & 0x07;
        } else {
            return 0;
        }
        if (n - i < len)
            return 0;
        for (k = 1; k < len; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return 0;
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        if ((len == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
            (len == 4 && (cp < 0x10000 || cp > 0x10ffff)))
            return 0;
        i += len;
    }
    return 1;
}

/* Text safe for JSON: s itself when it is valid UTF-8, else a copy (owned: *copy) with
 * every byte of an invalid sequence replaced by U+FFFD. NULL on allocation failure. */
static const char *
json_text(const char *s, char **copy)
{
    size_t n = strlen(s), i = 0, o = 0;
    char *b;

    *copy = NULL;
    if (utf8_valid((const unsigned char *)s, n))
        return s;
    b = malloc(n * 3 + 1);
    if (!b)
        return NULL;
    while (i < n) {
        size_t len = 1;
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x80) {
            len = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : 2;
            if (len > n - i || !utf8_valid((const unsigned char *)s + i, len))
                len = 0;
        }
        if (len == 0) {
            memcpy(b + o, "\xef\xbf\xbd", 3);
            o += 3;
            i++;
        } else {
            memcpy(b + o, s + i, len);
            o += len;
            i += len;
        }
    }
    b[o] = '\0';
    *copy = b;
    return b;
}

/* Builds JSON objects, remembering the first allocation failure instead of checking
 * every call. */
typedef struct {
    int failed;
} jb_t;

static void
jb_add(jb_t *jb, cJSON *obj, const char *name, cJSON *item)
{
    if (!item || !obj || !cJSON_AddItemToObject(obj, name, item)) {
        cJSON_Delete(item);
        jb->failed = 1;
    }
}

static void
jb_str(jb_t *jb, cJSON *obj, const char *name, const char *s)
{
    char *copy;
    const char *t = json_text(s ? s : "", &copy);

    jb_add(jb, obj, name, t ? cJSON_CreateString(t) : NULL);
    free(copy);
}

/* Integers as raw number text: exact for every 64-bit value (cJSON's double is not). */
static void
jb_int(jb_t *jb, cJSON *obj, const char *name, int64_t v)
{
    char num[24];

    snprintf(num, sizeof(num), "%lld", (long long)v);
    jb_add(jb, obj, name, cJSON_CreateRaw(num));
}

static void
jb_uint(jb_t *jb, cJSON *obj, const char *name, uint64_t v)
{
    char num[24];

    snprintf(num, sizeof(num), "%llu", (unsigned long long)v);
    jb_add(jb, obj, name, cJSON_CreateRaw(num));
}

static char *
base64(const unsigned char *p, size_t n)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char *out = malloc((n + 2) / 3 * 4 + 1), *o = out;
    size_t i;

    if (!out)
        return NULL;
    for (i = 0; i + 2 < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
        *o++ = tab[v >> 18];
        *o++ = tab[(v >> 12) & 63];
        *o++ = tab[(v >> 6) & 63];
        *o++ = tab[v & 63];
    }
    if (i < n) {
        uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < n ? (uint32_t)p[i + 1] << 8 : 0);
        *o++ = tab[v >> 18];
        *o++ = tab[(v >> 12) & 63];
        *o++ = i + 1 < n ? tab[(v >> 6) & 63] : '=';
        *o++ = '=';
    }
    *o = '\0';
    return out;
}

/* 1 when bytes can be shown as a string: valid UTF-8 without NUL. */
static int
is_text(const char *p, size_t n)
{
    return !memchr(p, '\0', n) && utf8_valid((const unsigned char *)p, n);
}

/* Bytes under name as a JSON string when they are text, else under name_base64. */
static void
jb_bytes(jb_t *jb, cJSON *obj, const char *name, const char *p, size_t n)
{
    char key[64];
    char *b64;

    if (!p) {
        p = "";
        n = 0;
    }
    if (is_text(p, n)) {
        jb_add(jb, obj, name, cJSON_CreateString(p));
        return;
    }
    snprintf(key, sizeof(key), "%s_base64", name);
    b64 = base64((const unsigned char *)p, n);
    jb_add(jb, obj, key, b64 ? cJSON_CreateString(b64) : NULL);
    free(b64);
}

/* Prints s for a text line: control bytes, DEL and backslash escaped (\n, \t, \\,
 * \xNN); with space_too, spaces too (\x20), so a field never splits a line's columns. */
static void
put_field(FILE *f, const char *s, size_t n, int space_too)
{
    size_t i;

    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\\')
            fputs("\\\\", f);
        else if (c == '\n')
            fputs("\\n", f);
        else if (c == '\t')
            fputs("\\t", f);
        else if (c < 0x20 || c == 0x7f || (space_too && c == ' '))
            fprintf(f, "\\x%02x", c);
        else
            fputc(c, f);
    }
}

static void
put_word(FILE *f, const char *s)
{
    if (!s || !*s)
        fputc('-', f);
    else
        put_field(f, s, strlen(s), 1);
}

static const char *
status_name(cn_outbox_status_t s)
{
    const char *name = cn_outbox_status_name(s);
    return name ? name : "unknown";
}

/* The fields list --json shows for each operation (show adds headers and bodies). */
static cJSON *
op_json(jb_t *jb, const cn_outbox_op_t *op, int full)
{
    cJSON *o = cJSON_CreateObject();
    size_t i;

    if (!o) {
        jb->failed = 1;
        return NULL;
    }
    jb_str(jb, o, "id", op->id);
    jb_str(jb, o, "status", status_name(op->status));
    jb_uint(jb, o, "seq", op->seq);
    jb_str(jb, o, "kind", op->kind);
    jb_str(jb, o, "method", op->method);
    jb_str(jb, o, "url", op->url);
    if (full) {
        cJSON *hs = cJSON_CreateArray();
        for (i = 0; hs && i < op->header_count; i++) {
            char *copy;
            const char *t = json_text(op->headers[i] ? op->headers[i] : "", &copy);
            cJSON *h = t ? cJSON_CreateString(t) : NULL;
            free(copy);
            if (!h || !cJSON_AddItemToArray(hs, h)) {
                cJSON_Delete(h);
                jb->failed = 1;
            }
        }
        jb_add(jb, o, "headers", hs);
    }
    jb_int(jb, o, "created_at_ms", op->created_at_ms);
    jb_int(jb, o, "updated_at_ms", op->updated_at_ms);
    jb_int(jb, o, "next_attempt_at_ms", op->next_attempt_at_ms);
    jb_int(jb, o, "lease_until_ms", op->lease_until_ms);
    jb_uint(jb, o, "attempt", op->attempt);
    jb_int(jb, o, "last_http_status", op->last_http_status);
    jb_str(jb, o, "last_error", op->last_error);
    if (full) {
        jb_bytes(jb, o, "payload", op->payload, op->payload_len);
        jb_bytes(jb, o, "response", op->response, op->response_len);
        jb_add(jb, o, "response_truncated", cJSON_CreateBool(op->response_truncated != 0));
    }
    return o;
}

/* Prints a JSON document on one line; consumes it. 0 or -ENOMEM. */
static int
print_json(cJSON *doc, jb_t *jb)
{
    char *text = jb->failed ? NULL : cJSON_PrintUnformatted(doc);

    cJSON_Delete(doc);
    if (!text)
        return -ENOMEM;
    fputs(text, stdout);
    fputc('\n', stdout);
    free(text);
    return 0;
}

/* --- enqueue -------------------------------------------------------------------- */

/* Reads fd to its end, at most cap bytes (a longer input stops at cap + 1, enough for
 * the size check to refuse it). 0 and *out (owned: free), or -errno. */
static int
read_all(int fd, size_t cap, char **out, size_t *len)
{
    size_t n = 0, size = 65536;
    char *buf = malloc(size);

    if (!buf)
        return -ENOMEM;
    for (;;) {
        ssize_t r;
        if (n == size) {
            size_t want = size * 2 > cap + 1 ? cap + 1 : size * 2;
            char *nb;
            if (want <= size)
                break; /* cap + 1 bytes read: too big, the caller's check says so */
            nb = realloc(buf, want);
            if (!nb) {
                free(buf);
                return -ENOMEM;
            }
            buf = nb;
            size = want;
        }
        r = read(fd, buf + n, size - n);
        if (r < 0) {
            int err = -errno;
            if (err == -EINTR)
                continue;
            free(buf);
            return err;
        }
        if (r == 0)
            break;
        n += (size_t)r;
    }
    *out = buf;
    *len = n;
    return 0;
}

/* 1 when line is a header named name (case-insensitive, spaces before ':' ignored). */
static int
header_named(const char *line, const char *name)
{
    size_t n = strlen(name);
    const char *p;

    if (strncasecmp(line, name, n) != 0)
        return 0;
    for (p = line + n; *p == ' ' || *p == '\t'; p++)
        ;
    return *p == ':';
}

static int
cmd_enqueue(args_t *a)
{
    const char *method = NULL, *url = NULL, *kind = NULL, *data = NULL, *data_file = NULL;
    const char **headers = NULL, *dir, *why = NULL, *v;
    int data_stdin = 0, data_sources = 0, has_type = 0, rc = CLI_OK, err, r;
    uint64_t count = 1;
    size_t nh = 0, i;
    char *payload = NULL;
    size_t payload_len = 0;
    cn_outbox_spec_t spec, *specs = NULL;
    char(*ids)[CN_OUTBOX_ID_SIZE] = NULL;
    cn_outbox_t *ob = NULL;

    /* Every argument could be a header: one slot each, plus the added Content-Type. */
    headers = calloc((size_t)a->argc + 1, sizeof(*headers));
    if (!headers)
        return fail(CLI_RUNTIME, -ENOMEM, "enqueue");
    for (a->i++; a->i < a->argc; a->i++) {
        if (is_help(a->argv[a->i])) {
            fputs(usage_text, stdout);
            rc = finish_stdout(CLI_OK);
            goto out;
        }
        if ((r = dir_option(a)) || (r = option(a, "--method", &method)) ||
            (r = option(a, "--url", &url)) || (r = option(a, "--kind", &kind))) {
            if (r < 0)
                goto usage;
        } else if ((r = option(a, "--header", &v))) {
            if (r < 0)
                goto usage;
            headers[nh++] = v;
        } else if ((r = option(a, "--data", &data))) {
            if (r < 0)
                goto usage;
            data_sources++;
        } else if ((r = option(a, "--data-file", &data_file))) {
            if (r < 0)
                goto usage;
            data_sources++;
        } else if (flag(a, "--data-stdin")) {
            data_stdin = 1;
            data_sources++;
        } else if ((r = option(a, "--count", &v))) {
            if (r < 0 || parse_uint("--count", v, 1, COUNT_MAX, &count))
                goto usage;
        } else {
            rc = unknown(a, "enqueue");
            goto out;
        }
    }
    if (!method || !url) {
        rc = usage_error("enqueue needs --method and --url");
        goto out;
    }
    if (data_sources > 1) {
        rc = usage_error("enqueue takes one of --data, --data-file and --data-stdin");
        goto out;
    }
    if (!(dir = outbox_dir(a)))
        goto usage;

    if (data) {
        payload_len = strlen(data);
    } else if (data_file || data_stdin) {
        int fd = data_stdin ? STDIN_FILENO : open(data_file, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            rc = fail(CLI_RUNTIME, -errno, "cannot open --data-file %s", shown(data_file));
            goto out;
        }
        err = read_all(fd, CN_OUTBOX_PAYLOAD_MAX, &payload, &payload_len);
        if (!data_stdin)
            close(fd);
        if (err) {
            rc = fail(CLI_RUNTIME, err, "cannot read %s",
                      data_stdin ? "standard input" : shown(data_file));
            goto out;
        }
    }
    if (data_sources) {
        for (i = 0; i < nh; i++)
            has_type |= header_named(headers[i], "Content-Type");
        if (!has_type)
            headers[nh++] = "Content-Type: application/json";
    }

    memset(&spec, 0, sizeof(spec));
    spec.kind = kind;
    spec.method = method;
    spec.url = url;
    spec.headers = headers;
    spec.header_count = nh;
    spec.payload = data ? data : payload;
    spec.payload_len = payload_len;
    err = cn_outbox_spec_check(&spec, &why);
    if (err) {
        rc = usage_error("enqueue: %s", why ? why : cn_strerror(err));
        goto out;
    }

    specs = calloc((size_t)count, sizeof(*specs));
    ids = calloc((size_t)count, sizeof(*ids));
    if (!specs || !ids) {
        rc = fail(CLI_RUNTIME, -ENOMEM, "enqueue of %llu operations", (unsigned long long)count);
        goto out;
    }
    for (i = 0; i < count; i++)
        specs[i] = spec;
    if ((rc = open_outbox(dir, NULL, 0, &ob)))
        goto out;
    err = cn_outbox_enqueue_many(ob, specs, (size_t)count, cn_outbox_now_ms(), ids);
    if (err) {
        rc = fail(CLI_RUNTIME, err, "enqueue in %s", shown(dir));
        goto out;
    }
    for (i = 0; i < count; i++)
        printf("%s\n", ids[i]);
    rc = finish_stdout(CLI_OK);
    goto out;
usage:
    rc = CLI_USAGE;
out:
    cn_outbox_close(ob);
    free(ids);
    free(specs);
    free(payload);
    free(headers);
    return rc;
}

/* --- run ------------------------------------------------------------------------ */

static volatile sig_atomic_t stop_signal;

static void
on_stop(int sig)
{
    stop_signal = sig;
}

static int64_t
mono_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

typedef struct {
    uint64_t sent, done, failed, waiting;
} progress_t;

static void
print_progress(const progress_t *p)
{
    fprintf(stderr, "outbox: sent %llu, done %llu, failed %llu, waiting %llu\n",
            (unsigned long long)p->sent, (unsigned long long)p->done, (unsigned long long)p->failed,
            (unsigned long long)p->waiting);
}

/* Waits ms milliseconds with SIGINT and SIGTERM unblocked (they are blocked otherwise),
 * so a signal sent during a tick is taken here and ends the wait at once; ms == 0 only
 * takes a pending signal. */
static void
wait_ms(int64_t ms, const sigset_t *unblocked)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000};

    (void)ppoll(NULL, 0, &ts, unblocked);
}

static int
cmd_run(args_t *a)
{
    cn_outbox_config_t cfg;
    const char *dir, *why = NULL, *v;
    int until_empty = 0, quiet = 0, timeout_set = 0, rc = CLI_OK, err, r, holder = 0;
    uint64_t max_seconds = 0;
    int has_deadline = 0;
    int64_t deadline = 0, last_compact, last_print = 0, now;
    progress_t cur = {0, 0, 0, 0}, shown_p = {0, 0, 0, 0};
    cn_outbox_t *ob = NULL;
    cn_outbox_stats_t st;
    struct sigaction sa;
    sigset_t block, old;

    cn_outbox_config_default(&cfg);
    for (a->i++; a->i < a->argc; a->i++) {
        if (is_help(a->argv[a->i])) {
            fputs(usage_text, stdout);
            return finish_stdout(CLI_OK);
        }
        if ((r = dir_option(a))) {
            if (r < 0)
                return CLI_USAGE;
        } else if (flag(a, "--until-empty")) {
            until_empty = 1;
        } else if (flag(a, "--no-jitter")) {
            cfg.retry.jitter = 0;
        } else if (flag(a, "--fifo")) {
            cfg.fifo_per_target = 1;
        } else if (flag(a, "--quiet")) {
            quiet = 1;
        } else if ((r = option(a, "--max-seconds", &v))) {
            if (r < 0 || parse_uint("--max-seconds", v, 0, MAX_SECONDS_MAX, &max_seconds))
                return CLI_USAGE;
            has_deadline = 1;
        } else if ((r = option(a, "--max-attempts", &v))) {
            if (r < 0 || parse_u32("--max-attempts", v, 1, 1000000, &cfg.retry.max_attempts))
                return CLI_USAGE;
        } else if ((r = option(a, "--base-delay-ms", &v))) {
            if (r < 0 || parse_u32("--base-delay-ms", v, 0, DELAY_MS_MAX, &cfg.retry.base_delay_ms))
                return CLI_USAGE;
        } else if ((r = option(a, "--max-delay-ms", &v))) {
            if (r < 0 || parse_u32("--max-delay-ms", v, 0, DELAY_MS_MAX, &cfg.retry.max_delay_ms))
                return CLI_USAGE;
        } else if ((r = option(a, "--factor", &v))) {
            if (r < 0 || parse_double("--factor", v, 1.0, 1000.0, &cfg.retry.factor))
                return CLI_USAGE;
        } else if ((r = option(a, "--batch", &v))) {
            if (r < 0 || parse_u32("--batch", v, 1, 100000, &cfg.batch_limit))
                return CLI_USAGE;
        } else if ((r = option(a, "--parallel", &v))) {
            if (r < 0 || parse_u32("--parallel", v, 1, 1024, &cfg.max_parallel))
                return CLI_USAGE;
        } else if ((r = option(a, "--timeout-ms", &v))) {
            if (r < 0 ||
                parse_u32("--timeout-ms", v, 1, 24u * 3600 * 1000, &cfg.request_timeout_ms))
                return CLI_USAGE;
            timeout_set = 1;
        } else if ((r = option(a, "--connect-timeout-ms", &v))) {
            if (r < 0 ||
                parse_u32("--connect-timeout-ms", v, 1, 24u * 3600 * 1000, &cfg.connect_timeout_ms))
                return CLI_USAGE;
        } else {
            return unknown(a, "run");
        }
    }
    if (!(dir = outbox_dir(a)))
        return CLI_USAGE;
    if (cn_outbox_policy_check(&cfg.retry, &why))
        return usage_error("run: %s", why ? why : "invalid retry policy");
    /* The lease outlives the longest request, whatever --timeout-ms says. */
    if (timeout_set)
        cfg.lease_ms = cfg.request_timeout_ms + 30000;

    if ((rc = open_outbox(dir, &cfg, 0, &ob)))
        return rc;
    err = cn_outbox_worker_start(ob, cn_outbox_now_ms(), &holder);
    if (err == -EBUSY) {
        fprintf(stderr, "cnerium-outbox: another worker runs on %s", shown(dir));
        if (holder > 0)
            fprintf(stderr, " (pid %d)", holder);
        fputc('\n', stderr);
        rc = CLI_BUSY;
        goto out;
    }
    if (err) {
        rc = fail(CLI_RUNTIME, err, "cannot start the worker on %s", shown(dir));
        goto out;
    }
    now = cn_outbox_now_ms();
    err = cn_outbox_compact(ob, now, 0);
    if (err < 0) {
        rc = fail(CLI_RUNTIME, err, "compacting %s", shown(dir));
        goto out;
    }
    last_compact = mono_ms();
    if (has_deadline)
        deadline = last_compact + (int64_t)max_seconds * 1000;

    /* Signals only set a flag; they stay blocked outside wait_ms, so a tick always
     * completes and the flag is never missed between its check and the wait. */
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_stop;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    sigemptyset(&block);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGTERM);
    sigprocmask(SIG_BLOCK, &block, &old);
    sigdelset(&old, SIGINT);
    sigdelset(&old, SIGTERM);

    if (!quiet)
        fprintf(stderr, "outbox: worker started on %s (pid %d)\n", shown(dir), (int)getpid());
    for (;;) {
        cn_outbox_tick_t rep;
        int64_t m, wait, due;
        int tried;

        if (mono_ms() - last_compact >= COMPACT_EVERY_MS) {
            err = cn_outbox_compact(ob, cn_outbox_now_ms(), 0);
            if (err < 0) {
                rc = fail(CLI_RUNTIME, err, "compacting %s", shown(dir));
                break;
            }
            last_compact = mono_ms();
        }
        memset(&rep, 0, sizeof(rep));
        now = cn_outbox_now_ms();
        tried = cn_outbox_tick(ob, now, &rep);
        if (tried < 0) {
            rc = fail(CLI_RUNTIME, tried, "sending from %s", shown(dir));
            break;
        }
        cur.sent += rep.claimed;
        cur.done += rep.done;
        cur.failed += rep.failed;
        err = cn_outbox_stats(ob, &st);
        if (err) {
            rc = fail(CLI_RUNTIME, err, "reading the counts of %s", shown(dir));
            break;
        }
        cur.waiting = st.count[CN_OUTBOX_PENDING] + st.count[CN_OUTBOX_INFLIGHT];
        m = mono_ms();
        if (!quiet && memcmp(&cur, &shown_p, sizeof(cur)) != 0 &&
            m - last_print >= PROGRESS_EVERY_MS) {
            print_progress(&cur);
            shown_p = cur;
            last_print = m;
        }
        if (until_empty && cur.waiting == 0)
            break;
        if (has_deadline && m >= deadline) {
            if (until_empty)
                rc = CLI_NOT_EMPTY;
            break;
        }
        wait = 0;
        if (tried == 0) {
            /* A due time not after the tick's `now` belongs to an operation that tick
             * did not try (with --fifo, one waiting behind an older operation for its
             * URL): waiting for it would spin, so only later due times shorten the poll. */
            wait = IDLE_POLL_MS;
            due = cn_outbox_next_due(ob);
            if (due > now && due - cn_outbox_now_ms() < wait)
                wait = due - cn_outbox_now_ms();
            if (has_deadline && deadline - m < wait)
                wait = deadline - m;
            if (wait < 0)
                wait = 0;
        }
        wait_ms(wait, &old);
        if (stop_signal)
            break;
    }
    /* The final counts, unless the last line printed already says them. */
    if (!quiet && (last_print == 0 || memcmp(&cur, &shown_p, sizeof(cur)) != 0))
        print_progress(&cur);
out:
    cn_outbox_close(ob);
    return rc;
}

/* --- list, show, requeue, stats ---------------------------------------------------- */

typedef struct {
    int json;
    int first;
    int err;
} list_ctx_t;

static int
list_one(void *ctx, const cn_outbox_op_t *op)
{
    list_ctx_t *lc = ctx;

    if (lc->json) {
        jb_t jb = {0};
        cJSON *o = op_json(&jb, op, 0);
        char *text = jb.failed ? NULL : cJSON_PrintUnformatted(o);
        cJSON_Delete(o);
        if (!text) {
            lc->err = -ENOMEM;
            return 1;
        }
        fputs(lc->first ? "[" : ",\n", stdout);
        fputs(text, stdout);
        free(text);
    } else {
        printf("%s %s %u ", op->id, status_name(op->status), (unsigned)op->attempt);
        put_word(stdout, op->method);
        fputc(' ', stdout);
        put_word(stdout, op->url);
        fputc(' ', stdout);
        put_word(stdout, op->kind);
        fputc(' ', stdout);
        if (op->last_error && *op->last_error)
            put_field(stdout, op->last_error, strlen(op->last_error), 0);
        else
            fputc('-', stdout);
        fputc('\n', stdout);
    }
    lc->first = 0;
    if (ferror(stdout)) {
        lc->err = -EIO;
        return 1;
    }
    return 0;
}

static int
cmd_list(args_t *a)
{
    const char *dir, *v;
    int status = -1, r, err, rc;
    list_ctx_t lc = {0, 1, 0};
    cn_outbox_t *ob = NULL;

    for (a->i++; a->i < a->argc; a->i++) {
        if (is_help(a->argv[a->i])) {
            fputs(usage_text, stdout);
            return finish_stdout(CLI_OK);
        }
        if ((r = dir_option(a))) {
            if (r < 0)
                return CLI_USAGE;
        } else if (flag(a, "--json")) {
            lc.json = 1;
        } else if ((r = option(a, "--status", &v))) {
            cn_outbox_status_t s;
            if (r < 0)
                return CLI_USAGE;
            if (cn_outbox_status_parse(v, &s))
                return usage_error("option --status: '%s' is not one of pending, inflight, "
                                   "done, failed",
                                   shown(v));
            status = (int)s;
        } else {
            return unknown(a, "list");
        }
    }
    if (!(dir = outbox_dir(a)))
        return CLI_USAGE;
    if ((rc = open_outbox(dir, NULL, 1, &ob)))
        return rc;
    err = cn_outbox_list(ob, status, list_one, &lc);
    cn_outbox_close(ob);
    if (lc.json && !lc.err)
        fputs(lc.first ? "[]\n" : "]\n", stdout);
    if (lc.err)
        err = lc.err;
    if (err)
        return fail(CLI_RUNTIME, err, "listing %s", shown(dir));
    return finish_stdout(CLI_OK);
}

/* Parses "<command> ID [--json]" (json NULL: no --json). 0, or an exit code. */
static int
id_args(args_t *a, const char *command, const char **id, int *json)
{
    int r;

    *id = NULL;
    for (a->i++; a->i < a->argc; a->i++) {
        const char *arg = a->argv[a->i];
        if (is_help(arg)) {
            fputs(usage_text, stdout);
            return finish_stdout(CLI_OK) == CLI_OK ? -1 : CLI_RUNTIME;
        }
        if ((r = dir_option(a))) {
            if (r < 0)
                return CLI_USAGE;
        } else if (json && flag(a, "--json")) {
            *json = 1;
        } else if (arg[0] != '-' && !*id) {
            *id = arg;
        } else {
            return unknown(a, command);
        }
    }
    if (!*id)
        return usage_error("%s needs an operation id", command);
    return 0;
}

/* An id is 32 lowercase hex digits; anything else cannot name an operation. */
static int
id_well_formed(const char *id)
{
    size_t i;

    for (i = 0; i < CN_OUTBOX_ID_LEN; i++)
        if (!((id[i] >= '0' && id[i] <= '9') || (id[i] >= 'a' && id[i] <= 'f')))
            return 0;
    return id[i] == '\0';
}

static int
no_such_op(const char *id, const char *dir)
{
    if (!id_well_formed(id))
        fprintf(stderr,
                "cnerium-outbox: '%s' is not an operation id (32 lowercase hex "
                "digits)\n",
                shown(id));
    else
        fprintf(stderr, "cnerium-outbox: no operation %s in %s\n", id, shown(dir));
    return CLI_NO_SUCH_OP;
}

static void
show_text(const cn_outbox_op_t *op)
{
    size_t i;

    printf("id: %s\nstatus: %s\nseq: %llu\nkind: ", op->id, status_name(op->status),
           (unsigned long long)op->seq);
    put_field(stdout, op->kind ? op->kind : "", op->kind ? strlen(op->kind) : 0, 0);
    fputs("\nmethod: ", stdout);
    put_field(stdout, op->method, strlen(op->method), 0);
    fputs("\nurl: ", stdout);
    put_field(stdout, op->url, strlen(op->url), 0);
    fputc('\n', stdout);
    for (i = 0; i < op->header_count; i++) {
        fputs("header: ", stdout);
        put_field(stdout, op->headers[i], strlen(op->headers[i]), 0);
        fputc('\n', stdout);
    }
    printf("created_at_ms: %lld\nupdated_at_ms: %lld\nnext_attempt_at_ms: %lld\n"
           "lease_until_ms: %lld\nattempt: %u\nlast_http_status: %d\nlast_error: ",
           (long long)op->created_at_ms, (long long)op->updated_at_ms,
           (long long)op->next_attempt_at_ms, (long long)op->lease_until_ms, (unsigned)op->attempt,
           op->last_http_status);
    put_field(stdout, op->last_error ? op->last_error : "",
              op->last_error ? strlen(op->last_error) : 0, 0);
    printf("\npayload (%zu bytes): ", op->payload_len);
    if (op->payload_len)
        put_field(stdout, op->payload, op->payload_len, 0);
    printf("\nresponse (%zu bytes%s): ", op->response_len,
           op->response_truncated ? ", truncated" : "");
    if (op->response_len)
        put_field(stdout, op->response, op->response_len, 0);
    fputc('\n', stdout);
}

static int
cmd_show(args_t *a)
{
    const char *id, *dir;
    int json = 0, rc, err;
    cn_outbox_t *ob = NULL;
    cn_outbox_op_t *op = NULL;

    if ((rc = id_args(a, "show", &id, &json)))
        return rc < 0 ? CLI_OK : rc;
    if (!(dir = outbox_dir(a)))
        return CLI_USAGE;
    if (!id_well_formed(id))
        return no_such_op(id, dir);
    if ((rc = open_outbox(dir, NULL, 1, &ob)))
        return rc;
    err = cn_outbox_get(ob, id, &op);
    cn_outbox_close(ob);
    if (err == CN_ENOTFOUND || err == -EINVAL)
        return no_such_op(id, dir);
    if (err)
        return fail(CLI_RUNTIME, err, "reading operation %s in %s", id, shown(dir));
    if (json) {
        jb_t jb = {0};
        err = print_json(op_json(&jb, op, 1), &jb);
    } else {
        show_text(op);
    }
    cn_outbox_op_free(op);
    if (err)
        return fail(CLI_RUNTIME, err, "show %s", id);
    return finish_stdout(CLI_OK);
}

static int
cmd_requeue(args_t *a)
{
    const char *id, *dir;
    int rc, err;
    cn_outbox_t *ob = NULL;
    cn_outbox_op_t *op = NULL;

    if ((rc = id_args(a, "requeue", &id, NULL)))
        return rc < 0 ? CLI_OK : rc;
    if (!(dir = outbox_dir(a)))
        return CLI_USAGE;
    if (!id_well_formed(id))
        return no_such_op(id, dir);
    if ((rc = open_outbox(dir, NULL, 1, &ob)))
        return rc;
    err = cn_outbox_requeue(ob, id, cn_outbox_now_ms());
    if (err == CN_ESTATE) {
        const char *now_in = "not failed";
        if (cn_outbox_get(ob, id, &op) == 0)
            now_in = status_name(op->status);
        fprintf(stderr,
                "cnerium-outbox: operation %s is %s: only a failed operation can be "
                "requeued\n",
                id, now_in);
        rc = CLI_NOT_FAILED;
    } else if (err == CN_ENOTFOUND || err == -EINVAL) {
        rc = no_such_op(id, dir);
    } else if (err) {
        rc = fail(CLI_RUNTIME, err, "requeue of %s in %s", id, shown(dir));
    }
    cn_outbox_op_free(op);
    cn_outbox_close(ob);
    return rc;
}

static int
cmd_stats(args_t *a)
{
    static const char *const names[CN_OUTBOX_STATUS_COUNT] = {"pending", "inflight", "done",
                                                              "failed"};
    const char *dir;
    int json = 0, r, rc, err, i;
    cn_outbox_t *ob = NULL;
    cn_outbox_stats_t st;

    for (a->i++; a->i < a->argc; a->i++) {
        if (is_help(a->argv[a->i])) {
            fputs(usage_text, stdout);
            return finish_stdout(CLI_OK);
        }
        if ((r = dir_option(a))) {
            if (r < 0)
                return CLI_USAGE;
        } else if (flag(a, "--json")) {
            json = 1;
        } else {
            return unknown(a, "stats");
        }
    }
    if (!(dir = outbox_dir(a)))
        return CLI_USAGE;
    if ((rc = open_outbox(dir, NULL, 1, &ob)))
        return rc;
    err = cn_outbox_stats(ob, &st);
    cn_outbox_close(ob);
    if (err)
        return fail(CLI_RUNTIME, err, "reading the counts of %s", shown(dir));
    if (json) {
        jb_t jb = {0};
        cJSON *o = cJSON_CreateObject();
        if (!o)
            jb.failed = 1;
        for (i = 0; i < CN_OUTBOX_STATUS_COUNT; i++)
            jb_uint(&jb, o, names[i], st.count[i]);
        jb_uint(&jb, o, "total", st.total);
        jb_int(&jb, o, "next_due_ms", st.next_due_ms);
        jb_int(&jb, o, "oldest_pending_ms", st.oldest_pending_ms);
        jb_uint(&jb, o, "enqueued_total", st.enqueued_total);
        if ((err = print_json(o, &jb)))
            return fail(CLI_RUNTIME, err, "stats");
    } else {
        for (i = 0; i < CN_OUTBOX_STATUS_COUNT; i++)
            printf("%s %llu\n", names[i], (unsigned long long)st.count[i]);
        printf("total %llu\nnext_due_ms %lld\noldest_pending_ms %lld\nenqueued_total %llu\n",
               (unsigned long long)st.total, (long long)st.next_due_ms,
               (long long)st.oldest_pending_ms, (unsigned long long)st.enqueued_total);
    }
    return finish_stdout(CLI_OK);
}

/* --- main ------------------------------------------------------------------------- */

int
main(int argc, char **argv)
{
    static const struct {
        const char *name;
        int (*run)(args_t *);
    } commands[] = {
        {"enqueue", cmd_enqueue}, {"run", cmd_run},         {"list", cmd_list},
        {"show", cmd_show},       {"requeue", cmd_requeue}, {"stats", cmd_stats},
    };
    args_t a = {argc, argv, 1, NULL};
    size_t k;
    int r;

    for (; a.i < argc; a.i++) {
        const char *arg = argv[a.i];
        if (is_help(arg)) {
            fputs(usage_text, stdout);
            return finish_stdout(CLI_OK);
        }
        if ((r = dir_option(&a))) {
            if (r < 0)
                return CLI_USAGE;
            continue;
        }
        if (arg[0] == '-')
            return usage_error("unknown option '%s'", shown(arg));
        for (k = 0; k < sizeof(commands) / sizeof(commands[0]); k++)
            if (strcmp(arg, commands[k].name) == 0)
                return commands[k].run(&a);
        return usage_error("unknown command '%s' (enqueue, run, list, show, requeue, stats)",
                           shown(arg));
    }
    return usage_error("no command given");
}
