/*
 * src/admin/cli.c - cnerium-admin: look at and look after a server's data dir (LMDB).
 *
 *   cnerium-admin stats  --data-dir DIR
 *   cnerium-admin list   --data-dir DIR [--operation OP] [--after STORE_KEY] [--limit N]
 *   cnerium-admin show   --data-dir DIR (OPERATION KEY [--principal VALUE] | --store-key K)
 *   cnerium-admin delete --data-dir DIR (OPERATION KEY [--principal VALUE] | --store-key K)
 *   cnerium-admin backup --data-dir DIR --to DEST
 *   cnerium-admin verify --data-dir DIR
 *
 * Safe while the server runs: reads are LMDB read transactions (a snapshot), `delete` is
 * one small write transaction, `backup` copies one snapshot. Output is JSON (one object,
 * or one per line for `list`). Exit codes: 0 ok, 1 a runtime error, 2 bad usage, 3
 * `verify` found problems, 4 no such key.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "app/app_internal.h"
#include "cnerium/error.h"
#include "reliability/fingerprint.h"
#include "store/format.h"
#include "store/store.h"
#include "store/wal.h"
#include "support/clock.h"
#include "support/utf8.h"

#define MAP_SIZE CN_APP_STORE_MAP_SIZE
#define PRINCIPAL_HASH_BYTES 16     /* as the durable layer scopes keys */

enum { EXIT_OK = 0, EXIT_RUNTIME = 1, EXIT_USAGE = 2, EXIT_PROBLEMS = 3, EXIT_NOTFOUND = 4 };

typedef struct args {
    const char *cmd, *data_dir, *to, *operation, *key, *principal, *store_key, *after;
    long limit;
} args_t;

static void
usage(FILE *out)
{
    fprintf(out,
            "usage: cnerium-admin COMMAND --data-dir DIR [options]\n"
            "  stats                          what the store holds (JSON)\n"
            "  list [--operation OP] [--after STORE_KEY] [--limit N]\n"
            "                                 stored responses, one JSON object per line\n"
            "  show OPERATION KEY [--principal VALUE] | --store-key K\n"
            "                                 one stored response (JSON; body as text or base64)\n"
            "  delete OPERATION KEY [--principal VALUE] | --store-key K\n"
            "                                 forget a stored response: the key is new again\n"
            "  backup --to DEST               a consistent copy while the server runs:\n"
            "                                 DEST/lmdb and DEST/BACKUP.json (WAL position);\n"
            "                                 start a server with --data-dir DEST to restore\n"
            "  verify                         read everything once; exit 3 on problems\n"
            "Safe while the server runs. Exit codes: 0 ok, 1 error, 2 usage, 3 problems,\n"
            "4 no such key.\n");
}

static int
bad(const char *msg, const char *arg)
{
    fprintf(stderr, "cnerium-admin: %s%s%s (see cnerium-admin --help)\n", msg, arg ? ": " : "",
            arg ? arg : "");
    return EXIT_USAGE;
}

static int
parse(int argc, char **argv, args_t *a)
{
    const char *pos[2] = {NULL, NULL};
    int npos = 0;

    memset(a, 0, sizeof(*a));
    a->limit = 1000;
    if (argc < 2)
        return bad("no command", NULL);
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(stdout);
        return -1;
    }
    a->cmd = argv[1];
    for (int i = 2; i < argc; i++) {
        const char *o = argv[i];
        const char **slot = !strcmp(o, "--data-dir")    ? &a->data_dir
                            : !strcmp(o, "--to")        ? &a->to
                            : !strcmp(o, "--operation") ? &a->operation
                            : !strcmp(o, "--principal") ? &a->principal
                            : !strcmp(o, "--store-key") ? &a->store_key
                            : !strcmp(o, "--after")     ? &a->after
                                                        : NULL;
        if (!strcmp(o, "--limit")) {
            char *end;
            if (++i == argc)
                return bad("--limit needs a value", NULL);
            errno = 0;
            a->limit = strtol(argv[i], &end, 10);
            if (errno || *end || a->limit < 1 || a->limit > 1000000)
                return bad("--limit must be 1..1000000", argv[i]);
        } else if (slot) {
            if (++i == argc)
                return bad("missing value", o);
            *slot = argv[i];
        } else if (!strncmp(o, "--", 2)) {
            return bad("unknown option", o);
        } else if (npos < 2) {
            pos[npos++] = o;
        } else {
            return bad("unexpected argument", o);
        }
    }
    if (!a->data_dir)
        return bad("--data-dir is required", NULL);
    a->key = pos[1];
    if (npos && !(!strcmp(a->cmd, "show") || !strcmp(a->cmd, "delete")))
        return bad("unexpected argument", pos[0]);
    if (npos == 1)
        return bad("a KEY must follow the OPERATION", NULL);
    if (npos)
        a->operation = pos[0];
    return 0;
}

/* The store key a request would have (durable.c's admit), or --store-key as given. */
static int
store_key_of(const args_t *a, char *out, size_t cap, size_t *len)
{
    char principal[2 * PRINCIPAL_HASH_BYTES + 1];

    if (a->store_key) {
        if (a->operation || a->principal)
            return bad("--store-key replaces OPERATION KEY and --principal", NULL);
        *len = strlen(a->store_key);
        if (*len >= cap)
            return bad("store key too long", NULL);
        memcpy(out, a->store_key, *len + 1);
        return 0;
    }
    if (!a->operation)
        return bad("OPERATION KEY or --store-key is required", NULL);
    if (a->principal) {
        uint8_t h[CN_SHA256_LEN];
        if (cn__sha256(a->principal, strlen(a->principal), h))
            return EXIT_RUNTIME;
        cn__hex(h, PRINCIPAL_HASH_BYTES, principal);
    }
    if (cn__store_key(out, cap, a->operation, a->principal ? principal : NULL, a->key,
                      strlen(a->key), len))
        return bad("OPERATION and KEY make a store key that is too long", NULL);
    return 0;
}

static int
open_store(const char *data_dir, cn_store_t **out)
{
    char dir[4096], file[4200];
    struct stat st;
    int rc;

    snprintf(dir, sizeof(dir), "%s/lmdb", data_dir);
    snprintf(file, sizeof(file), "%s/data.mdb", dir);
    /* Never create a store where there is none: a typo must not look like an empty one. */
    if (stat(file, &st)) {
        fprintf(stderr, "cnerium-admin: no store in '%s' (%s): is it a server's --data-dir? "
                        "(a server on --store postgresql://... keeps nothing here)\n",
                data_dir, strerror(errno));
        return EXIT_RUNTIME;
    }
    if ((rc = cn__store_open(dir, MAP_SIZE, out))) {
        fprintf(stderr, "cnerium-admin: cannot open the store in '%s': %s\n", dir,
                cn_strerror(rc));
        return EXIT_RUNTIME;
    }
    return 0;
}

static void
print_json(cJSON *j, int pretty)
{
    char *s = j ? (pretty ? cJSON_Print(j) : cJSON_PrintUnformatted(j)) : NULL;

    if (s)
        puts(s);
    free(s);
    cJSON_Delete(j);
}

static char *
base64(const void *p, size_t n)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const uint8_t *b = p;
    char *out = malloc(4 * ((n + 2) / 3) + 1), *o = out;

    if (!out)
        return NULL;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)b[i] << 16 | (i + 1 < n ? (uint32_t)b[i + 1] << 8 : 0) |
                     (i + 2 < n ? b[i + 2] : 0);
        *o++ = tab[v >> 18 & 63];
        *o++ = tab[v >> 12 & 63];
        *o++ = i + 1 < n ? tab[v >> 6 & 63] : '=';
        *o++ = i + 2 < n ? tab[v & 63] : '=';
    }
    *o = '\0';
    return out;
}

static cJSON *
strn(const char *p, size_t n)
{
    char *s = malloc(n + 1);
    cJSON *j;

    if (!s)
        return NULL;
    memcpy(s, p, n);
    s[n] = '\0';
    j = cJSON_CreateString(s);
    free(s);
    return j;
}

/* A stored response as JSON (with its body when full); rec NULL: it does not decode. */
static cJSON *
record_json(const char *key, size_t keylen, const cn_record_t *r, int full)
{
    cJSON *j = cJSON_CreateObject();
    cn_record_t rec;
    char fp[2 * CN_SHA256_LEN + 1];

    if (!j)
        return NULL;
    cJSON_AddItemToObject(j, "store_key", strn(key, keylen));
    if (!r) {
        cJSON_AddStringToObject(j, "error", "the record does not decode");
        return j;
    }
    rec = *r;
    cJSON_AddNumberToObject(j, "status", rec.status);
    cJSON_AddNumberToObject(j, "created_ms", (double)rec.created_ms);
    cJSON_AddNumberToObject(j, "expires_ms", (double)rec.expires_ms);
    cJSON_AddBoolToObject(j, "expired", rec.expires_ms <= cn__clock_wall_ms());
    cJSON_AddNumberToObject(j, "body_bytes", rec.body_len);
    if (!full)
        return j;
    cn__hex(rec.fingerprint, CN_SHA256_LEN, fp);
    cJSON_AddStringToObject(j, "fingerprint", fp);
    if (rec.content_type_len)
        cJSON_AddItemToObject(j, "content_type", strn(rec.content_type, rec.content_type_len));
    if (rec.location_len)
        cJSON_AddItemToObject(j, "location", strn(rec.location, rec.location_len));
    if (rec.headers_len)
        cJSON_AddItemToObject(j, "stored_headers", strn(rec.headers, rec.headers_len));
    if (cn__utf8_valid(rec.body, rec.body_len) && !memchr(rec.body, 0, rec.body_len)) {
        cJSON_AddItemToObject(j, "body", strn(rec.body, rec.body_len));
    } else {
        char *b64 = base64(rec.body, rec.body_len);
        if (b64)
            cJSON_AddStringToObject(j, "body_base64", b64);
        free(b64);
    }
    return j;
}

typedef struct list_ctx {
    const char *prefix;
    size_t prefixlen;
    const char *after; /* not printed itself */
    long left;
} list_ctx_t;

static int
list_one(const char *key, size_t keylen, const uint8_t *rec, size_t len, void *arg)
{
    list_ctx_t *l = arg;

    if (l->prefixlen && (keylen < l->prefixlen || memcmp(key, l->prefix, l->prefixlen)))
        return 1; /* past the keys that start like the operation's */
    if (l->prefixlen && keylen > l->prefixlen && key[l->prefixlen] != ':' &&
        key[l->prefixlen] != '#')
        return 0; /* another operation whose name starts with this one */
    if (l->after && strlen(l->after) == keylen && !memcmp(key, l->after, keylen))
        return 0;
    {
        cn_record_t r;
        print_json(record_json(key, keylen, cn__record_decode(rec, len, &r) ? NULL : &r, 0),
                   0);
    }
    return --l->left == 0;
}

static void
verify_problem(const char *what, const void *key, size_t keylen, void *arg)
{
    cJSON *j = cJSON_CreateObject();
    char *hex = malloc(2 * keylen + 1);

    (void)arg;
    if (j && hex) {
        cn__hex(key, keylen, hex);
        cJSON_AddStringToObject(j, "problem", what);
        cJSON_AddStringToObject(j, "key_hex", hex);
    }
    free(hex);
    print_json(j, 0);
}

/* The exit code for what a store call on one key returned (said on stderr when not 0). */
static int
key_failed(int rc, const char *skey)
{
    if (rc == CN_ENOTFOUND) {
        fprintf(stderr, "cnerium-admin: no stored response under '%s'\n", skey);
        return EXIT_NOTFOUND;
    }
    if (rc) {
        fprintf(stderr, "cnerium-admin: %s\n", cn_strerror(rc));
        return EXIT_RUNTIME;
    }
    return EXIT_OK;
}

static int
cmd_backup(cn_store_t *store, const args_t *a)
{
    char dir[4096], wal[4096], manifest[4200], tmp[4300];
    cn_store_t *copy;
    cn_store_meta_t meta;
    cJSON *j;
    FILE *f;
    char *text;
    int rc;

    if (!a->to)
        return bad("backup needs --to DEST", NULL);
    snprintf(dir, sizeof(dir), "%s/lmdb", a->to);
    snprintf(wal, sizeof(wal), "%s/wal", a->to);
    snprintf(manifest, sizeof(manifest), "%s/BACKUP.json", a->to);
    {
        char probe[4200];
        struct stat st;
        snprintf(probe, sizeof(probe), "%s/data.mdb", dir);
        if (stat(probe, &st) == 0) {
            fprintf(stderr, "cnerium-admin: '%s' already holds a store; back up into a new "
                            "directory\n", a->to);
            return EXIT_RUNTIME;
        }
    }
    if ((rc = cn__store_backup(store, dir))) {
        fprintf(stderr, "cnerium-admin: backup into '%s' failed: %s\n", dir, cn_strerror(rc));
        return EXIT_RUNTIME;
    }
    /* The copy says which WAL position it holds: everything below applied_lsn. */
    if ((rc = cn__store_open(dir, MAP_SIZE, &copy)) || (rc = cn__store_meta_get(copy, &meta))) {
        fprintf(stderr, "cnerium-admin: the copy in '%s' cannot be read back: %s\n", dir,
                cn_strerror(rc));
        return EXIT_RUNTIME;
    }
    cn__store_close(copy);
    /* The copy has no log of its own: a log that ends where the copy's applied position is
     * lets a server start on it (a missing log is refused: it could hide records). */
    if ((rc = cn__wal_restore_point(wal, CN_APP_WAL_SEGMENT_BYTES, meta.applied_lsn))) {
        fprintf(stderr, "cnerium-admin: cannot start a log in '%s': %s\n", wal, cn_strerror(rc));
        return EXIT_RUNTIME;
    }
    j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "source", a->data_dir);
    cJSON_AddNumberToObject(j, "created_unix_ms", (double)cn__clock_wall_ms());
    cJSON_AddNumberToObject(j, "applied_lsn", (double)meta.applied_lsn);
    cJSON_AddNumberToObject(j, "event_seq", (double)meta.event_seq);
    text = cJSON_Print(j);
    snprintf(tmp, sizeof(tmp), "%s.tmp", manifest);
    if (!text || !(f = fopen(tmp, "w")) || fputs(text, f) < 0 || fputc('\n', f) < 0 ||
        fflush(f) || fsync(fileno(f)) || fclose(f) || rename(tmp, manifest)) {
        fprintf(stderr, "cnerium-admin: cannot write '%s': %s\n", manifest, strerror(errno));
        free(text);
        cJSON_Delete(j);
        return EXIT_RUNTIME;
    }
    free(text);
    print_json(j, 1);
    return EXIT_OK;
}

int
main(int argc, char **argv)
{
    char skey[CN_STORE_KEY_MAX + 1];
    size_t skeylen = 0;
    cn_store_t *store = NULL;
    args_t a;
    int rc = parse(argc, argv, &a);

    if (rc)
        return rc < 0 ? EXIT_OK : rc;
    if (strcmp(a.cmd, "stats") && strcmp(a.cmd, "list") && strcmp(a.cmd, "show") &&
        strcmp(a.cmd, "delete") && strcmp(a.cmd, "backup") && strcmp(a.cmd, "verify"))
        return bad("unknown command", a.cmd);
    if ((!strcmp(a.cmd, "show") || !strcmp(a.cmd, "delete")) &&
        (rc = store_key_of(&a, skey, sizeof(skey), &skeylen)))
        return rc;
    if ((rc = open_store(a.data_dir, &store)))
        return rc;

    if (!strcmp(a.cmd, "stats")) {
        cn_store_stats_t st;
        cn_store_meta_t meta;
        uint64_t oldest = 0, newest = 0;
        cJSON *j;
        if ((rc = cn__store_stats(store, &st)) || (rc = cn__store_meta_get(store, &meta)) ||
            (rc = cn__store_events_bounds(store, &oldest, &newest))) {
            fprintf(stderr, "cnerium-admin: %s\n", cn_strerror(rc));
            rc = EXIT_RUNTIME;
        } else {
            j = cJSON_CreateObject();
            cJSON_AddNumberToObject(j, "responses", (double)st.responses);
            cJSON_AddNumberToObject(j, "events", (double)st.events);
            cJSON_AddNumberToObject(j, "events_oldest", (double)oldest);
            cJSON_AddNumberToObject(j, "events_newest", (double)newest);
            cJSON_AddNumberToObject(j, "streams", (double)st.streams);
            cJSON_AddNumberToObject(j, "stream_log_entries", (double)st.log_entries);
            cJSON_AddNumberToObject(j, "applied_lsn", (double)meta.applied_lsn);
            cJSON_AddNumberToObject(j, "map_bytes", (double)st.map_size);
            cJSON_AddNumberToObject(j, "used_bytes", (double)st.used_bytes);
            print_json(j, 1);
        }
    } else if (!strcmp(a.cmd, "list")) {
        char prefix[CN_STORE_KEY_MAX + 1] = "";
        list_ctx_t l = {prefix, 0, a.after, a.limit};
        const char *from;

        if (a.operation) {
            /* An operation's keys share "cnerium:response:<op>" then ':' or '#'. */
            size_t n;
            if (cn__store_key(prefix, sizeof(prefix), a.operation, NULL, "", 0, &n))
                return bad("--operation is too long", NULL);
            l.prefixlen = n - 1; /* without the ':' (principal-scoped keys use '#') */
            prefix[l.prefixlen] = '\0';
        }
        from = a.after ? a.after : prefix;
        rc = cn__store_list(store, from, strlen(from), SIZE_MAX, list_one, &l);
        if (rc) {
            fprintf(stderr, "cnerium-admin: %s\n", cn_strerror(rc));
            rc = EXIT_RUNTIME;
        }
    } else if (!strcmp(a.cmd, "show")) {
        cn_record_t rec;
        void *buf = NULL;
        /* cn__store_get hides expired records; show them too, marked. */
        if (!(rc = key_failed(cn__store_get(store, skey, skeylen, 0, &rec, &buf), skey))) {
            print_json(record_json(skey, skeylen, &rec, 1), 1);
            free(buf);
        }
    } else if (!strcmp(a.cmd, "delete")) {
        if (!(rc = key_failed(cn__store_delete(store, skey, skeylen), skey))) {
            cJSON *j = cJSON_CreateObject();
            cJSON_AddStringToObject(j, "deleted", skey);
            print_json(j, 0);
        }
    } else if (!strcmp(a.cmd, "backup")) {
        rc = cmd_backup(store, &a);
    } else {
        uint64_t checked = 0, problems = 0;
        cJSON *j;
        if ((rc = cn__store_verify(store, &checked, &problems, verify_problem, NULL))) {
            fprintf(stderr, "cnerium-admin: %s\n", cn_strerror(rc));
            rc = EXIT_RUNTIME;
        } else {
            j = cJSON_CreateObject();
            cJSON_AddNumberToObject(j, "checked", (double)checked);
            cJSON_AddNumberToObject(j, "problems", (double)problems);
            print_json(j, 0);
            rc = problems ? EXIT_PROBLEMS : EXIT_OK;
        }
    }
    cn__store_close(store);
    return rc;
}
