/*
 * outbox/transport.c - operations over HTTP with libcurl's multi interface.
 *
 * One multi handle per transport keeps its connection pool across runs, so a worker
 * draining a queue reuses keep-alive connections. Transfers beyond max_parallel wait in
 * a FIFO list here rather than inside curl, so the request timeout only runs while a
 * request is really on the wire. Every try carries "Idempotency-Key: <operation id>".
 *
 * curl's own defaults that would change what the server sees are turned off: no
 * form-urlencoded Content-Type (the operation's headers say what the payload is), no
 * "Expect: 100-continue" round trip, no redirects followed (a 3xx is an answer), no
 * signals. One thread at a time.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>

#include "outbox/transport.h"

struct cn__outbox_transport {
    CURLM *multi;
    uint32_t connect_timeout_ms;
    uint32_t request_timeout_ms;
    uint32_t max_parallel;
    uint32_t active;
    cn__outbox_xfer_t **slots; /* the transfers on the wire (active of max_parallel) */
    cn__outbox_xfer_t *wait_head, *wait_tail;
};

static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static CURLcode global_rc;

static void
global_init(void)
{
    global_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

int
cn__outbox_transport_new(uint32_t connect_timeout_ms, uint32_t request_timeout_ms,
                         uint32_t max_parallel, cn__outbox_transport_t **out)
{
    cn__outbox_transport_t *t;

    pthread_once(&global_once, global_init);
    if (global_rc != CURLE_OK)
        return CN_ECONFIG;
    t = calloc(1, sizeof(*t));
    if (!t)
        return -ENOMEM;
    t->multi = curl_multi_init();
    if (!t->multi) {
        free(t);
        return -ENOMEM;
    }
    t->connect_timeout_ms = connect_timeout_ms;
    t->request_timeout_ms = request_timeout_ms;
    t->max_parallel = max_parallel ? max_parallel : 1;
    t->slots = calloc(t->max_parallel, sizeof(*t->slots));
    if (!t->slots) {
        curl_multi_cleanup(t->multi);
        free(t);
        return -ENOMEM;
    }
    /* Keep a connection per parallel slot alive between runs. */
    curl_multi_setopt(t->multi, CURLMOPT_MAXCONNECTS, (long)t->max_parallel);
    *out = t;
    return 0;
}

void
cn__outbox_transport_free(cn__outbox_transport_t *t)
{
    if (!t)
        return;
    curl_multi_cleanup(t->multi);
    free(t->slots);
    free(t);
}

void
cn__outbox_xfer_clear(cn__outbox_xfer_t *x)
{
    free(x->body);
    x->body = NULL;
    x->body_len = x->body_cap = 0;
}

static void
fail_xfer(cn__outbox_xfer_t *x, int code, const char *msg)
{
    x->answer.transport_error = code;
    x->answer.transport_message = x->message;
    snprintf(x->message, sizeof(x->message), "%s", msg);
}

static size_t
on_body(char *data, size_t size, size_t nmemb, void *ud)
{
    cn__outbox_xfer_t *x = ud;
    size_t n = size * nmemb, keep = n;

    if (x->body_len + keep > CN_OUTBOX_RESPONSE_KEEP) {
        keep = CN_OUTBOX_RESPONSE_KEEP - x->body_len;
        x->truncated = 1;
    }
    if (keep) {
        if (x->body_len + keep > x->body_cap) {
            size_t cap = x->body_cap ? x->body_cap : 1024;
            char *nb;
            while (cap < x->body_len + keep)
                cap *= 2;
            if (cap > CN_OUTBOX_RESPONSE_KEEP)
                cap = CN_OUTBOX_RESPONSE_KEEP;
            nb = realloc(x->body, cap);
            if (!nb)
                return 0; /* curl reports CURLE_WRITE_ERROR: retried later */
            x->body = nb;
            x->body_cap = cap;
        }
        memcpy(x->body + x->body_len, data, keep);
        x->body_len += keep;
    }
    return n;
}

/* Copies a header's value (trimmed) into dst when line is "name: value". */
static void
header_value(const char *line, size_t n, const char *name, char *dst, size_t size)
{
    size_t nl = strlen(name), vl;
    const char *v;

    if (n <= nl || strncasecmp(line, name, nl) != 0 || line[nl] != ':')
        return;
    v = line + nl + 1;
    vl = n - nl - 1;
    while (vl && (*v == ' ' || *v == '\t')) {
        v++;
        vl--;
    }
    while (vl && (v[vl - 1] == '\r' || v[vl - 1] == '\n' || v[vl - 1] == ' ' ||
                  v[vl - 1] == '\t'))
        vl--;
    if (vl >= size)
        vl = size - 1;
    memcpy(dst, v, vl);
    dst[vl] = '\0';
}

static size_t
on_header(char *line, size_t size, size_t nmemb, void *ud)
{
    cn__outbox_xfer_t *x = ud;
    size_t n = size * nmemb;

    /* A new status line starts a new header block (after a 1xx): forget the old one. */
    if (n >= 5 && strncmp(line, "HTTP/", 5) == 0) {
        x->retry_after[0] = '\0';
        x->content_type[0] = '\0';
        return n;
    }
    header_value(line, n, "Retry-After", x->retry_after, sizeof(x->retry_after));
    header_value(line, n, "Content-Type", x->content_type, sizeof(x->content_type));
    return n;
}

/* Builds the header list: the operation's lines, the key, and curl's defaults off. */
static struct curl_slist *
make_headers(const cn__outbox_xfer_t *x)
{
    struct curl_slist *list = NULL, *l;
    char line[CN_OUTBOX_HEADER_MAX + 1];
    const char *p = x->headers, *end = x->headers + x->headers_len;
    int has_type = 0;

    while (x->headers_len && p <= end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t len = (size_t)((nl ? nl : end) - p);

        if (len > CN_OUTBOX_HEADER_MAX)
            len = CN_OUTBOX_HEADER_MAX;
        memcpy(line, p, len);
        line[len] = '\0';
        if (strncasecmp(line, "Content-Type:", 13) == 0)
            has_type = 1;
        l = curl_slist_append(list, line);
        if (!l)
            goto fail;
        list = l;
        if (!nl)
            break;
        p = nl + 1;
    }
    snprintf(line, sizeof(line), "Idempotency-Key: %s", x->id);
    if (!(l = curl_slist_append(list, line)))
        goto fail;
    list = l;
    if (!(l = curl_slist_append(list, "Expect:")))
        goto fail;
    list = l;
    if (!has_type) {
        if (!(l = curl_slist_append(list, "Content-Type:")))
            goto fail;
        list = l;
    }
    return list;
fail:
    curl_slist_free_all(list);
    return NULL;
}

static int
setup(cn__outbox_transport_t *t, cn__outbox_xfer_t *x)
{
    CURL *e = curl_easy_init();
    struct curl_slist *h;

    if (!e)
        return -ENOMEM;
    h = make_headers(x);
    if (!h) {
        curl_easy_cleanup(e);
        return -ENOMEM;
    }
    x->easy = e;
    x->header_list = h;
    curl_easy_setopt(e, CURLOPT_URL, x->url);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)t->connect_timeout_ms);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)t->request_timeout_ms);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, x->method);
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)x->payload_len);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, x->payload_len ? x->payload : "");
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, x);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, x);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, x->message);
    curl_easy_setopt(e, CURLOPT_PRIVATE, x);
    if (curl_multi_add_handle(t->multi, e) != CURLM_OK) {
        curl_slist_free_all(h);
        curl_easy_cleanup(e);
        x->easy = x->header_list = NULL;
        return -ENOMEM;
    }
    t->slots[t->active++] = x;
    return 0;
}

static void
unslot(cn__outbox_transport_t *t, cn__outbox_xfer_t *x)
{
    for (uint32_t i = 0; i < t->active; i++)
        if (t->slots[i] == x) {
            t->slots[i] = t->slots[--t->active];
            return;
        }
}

int
cn__outbox_transport_start(cn__outbox_transport_t *t, cn__outbox_xfer_t *x)
{
    cn__outbox_xfer_clear(x);
    memset(&x->answer, 0, sizeof(x->answer));
    x->retry_after[0] = x->content_type[0] = x->message[0] = '\0';
    x->truncated = 0;
    x->easy = x->header_list = NULL;
    x->next = NULL;
    if (t->wait_tail)
        t->wait_tail->next = x;
    else
        t->wait_head = x;
    t->wait_tail = x;
    return 0;
}

/* Moves waiting transfers onto the wire while slots are free; one that cannot be set
 * up completes at once with a transport error. */
static void
fill(cn__outbox_transport_t *t, cn__outbox_done_cb cb, void *ctx)
{
    while (t->wait_head && t->active < t->max_parallel) {
        cn__outbox_xfer_t *x = t->wait_head;

        t->wait_head = x->next;
        if (!t->wait_head)
            t->wait_tail = NULL;
        x->next = NULL;
        if (setup(t, x) != 0) {
            fail_xfer(x, CURLE_OUT_OF_MEMORY, "out of memory setting up the request");
            cb(ctx, x);
        }
    }
}

static void
complete(cn__outbox_transport_t *t, CURLMsg *msg, cn__outbox_done_cb cb, void *ctx)
{
    CURL *e = msg->easy_handle;
    cn__outbox_xfer_t *x = NULL;
    CURLcode res = msg->data.result;
    long status = 0;
    curl_off_t connect_us = 0;

    curl_easy_getinfo(e, CURLINFO_PRIVATE, (char **)&x);
    curl_multi_remove_handle(t->multi, e);
    unslot(t, x);
    if (res == CURLE_OK) {
        curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
        x->answer.http_status = (int)status;
        x->answer.retry_after = x->retry_after[0] ? x->retry_after : NULL;
        x->answer.content_type = x->content_type[0] ? x->content_type : NULL;
        x->answer.body = x->body;
        x->answer.body_len = x->body_len;
    } else {
        curl_easy_getinfo(e, CURLINFO_CONNECT_TIME_T, &connect_us);
        if (!x->message[0])
            snprintf(x->message, sizeof(x->message), "%s", curl_easy_strerror(res));
        x->answer.transport_error = (int)res;
        x->answer.transport_message = x->message;
        /* "Unreachable" is about the origin, not this request: no connection was made. */
        x->answer.connect_failed =
            res == CURLE_COULDNT_CONNECT || res == CURLE_COULDNT_RESOLVE_HOST ||
            res == CURLE_COULDNT_RESOLVE_PROXY ||
            (res == CURLE_OPERATION_TIMEDOUT && connect_us == 0);
    }
    curl_slist_free_all(x->header_list);
    curl_easy_cleanup(e);
    x->easy = x->header_list = NULL;
    cb(ctx, x);
}

int
cn__outbox_transport_run(cn__outbox_transport_t *t, cn__outbox_done_cb cb, void *ctx)
{
    CURLMcode mc = CURLM_OK;
    int running = 0;

    fill(t, cb, ctx);
    while (t->active || t->wait_head) {
        CURLMsg *msg;
        int left;

        mc = curl_multi_perform(t->multi, &running);
        if (mc != CURLM_OK)
            break;
        while ((msg = curl_multi_info_read(t->multi, &left)))
            if (msg->msg == CURLMSG_DONE)
                complete(t, msg, cb, ctx);
        fill(t, cb, ctx);
        if (t->active && running)
            mc = curl_multi_poll(t->multi, NULL, 0, 1000, NULL);
        if (mc != CURLM_OK)
            break;
    }
    if (mc == CURLM_OK)
        return 0;
    /* The multi handle broke: finish everything with an error so nothing is left
     * Inflight without an outcome. */
    while (t->active) {
        cn__outbox_xfer_t *x = t->slots[--t->active];

        curl_multi_remove_handle(t->multi, x->easy);
        curl_slist_free_all(x->header_list);
        curl_easy_cleanup(x->easy);
        x->easy = x->header_list = NULL;
        fail_xfer(x, CURLE_FAILED_INIT, curl_multi_strerror(mc));
        cb(ctx, x);
    }
    while (t->wait_head) {
        cn__outbox_xfer_t *x = t->wait_head;
        t->wait_head = x->next;
        fail_xfer(x, CURLE_FAILED_INIT, curl_multi_strerror(mc));
        cb(ctx, x);
    }
    t->wait_tail = NULL;
    return CN_ESTORE;
}

int
cn__outbox_url_origin(const char *url, char *origin, size_t size, const char **why)
{
    CURLU *u;
    char *scheme = NULL, *host = NULL, *port = NULL;
    const char *unused;
    int rc = 0;

    if (!why)
        why = &unused;
    pthread_once(&global_once, global_init);
    u = curl_url();
    if (!u)
        return -ENOMEM;
    if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK) {
        *why = "the URL is malformed (it needs http:// or https://, a host and a path)";
        rc = -EINVAL;
        goto out;
    }
    if (curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
        (strcasecmp(scheme, "http") != 0 && strcasecmp(scheme, "https") != 0)) {
        *why = "the URL's scheme must be http or https";
        rc = -EINVAL;
        goto out;
    }
    if (curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK || !*host) {
        *why = "the URL has no host";
        rc = -EINVAL;
        goto out;
    }
    if (curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) != CURLUE_OK) {
        *why = "the URL's port is not valid";
        rc = -EINVAL;
        goto out;
    }
    if (origin && (size_t)snprintf(origin, size, "%s://%s:%s", scheme, host, port) >= size) {
        *why = "the URL's origin is too long";
        rc = CN_ETOOBIG;
    }
out:
    curl_free(scheme);
    curl_free(host);
    curl_free(port);
    curl_url_cleanup(u);
    return rc;
}
