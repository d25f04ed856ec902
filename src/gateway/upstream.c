/*
 * gateway/upstream.c - libcurl multi on a thread of its own (see upstream.h).
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>

#include "gateway/upstream.h"
#include "http/relay.h"
#include "support/log.h"

typedef struct job {
    struct job *next;
    CURL *easy;
    struct curl_slist *hdrs;
    char *url, *method;
    uint8_t *body_in;
    size_t body_in_len;
    cn_upstream_result_t res;
    size_t hcap, bcap;
    size_t max_body;
    cn_upstream_done_cb done;
    void *arg;
    /* A relayed request (cn__upstream_relay): its body comes from the relay and its
     * answer goes into it; head tells the gateway once the status and headers are in. */
    cn_relay_t *relay;
    cn_upstream_head_cb head;
    int head_given;
} job_t;

struct cn_upstream {
    char *base;
    uint32_t timeout_ms;
    size_t max_body;
    CURLM *multi;
    pthread_t thread;
    pthread_mutex_t mu;
    job_t *queue, **queue_tail; /* mu: in the order sent */
    /* mu: relays whose near side moved (each with a reference of its own) */
    cn_relay_t **woken;
    size_t nwoken, woken_cap;
};

static const char *const hop[] = {"connection", "keep-alive", "proxy-connection",
                                  "proxy-authenticate", "proxy-authorization", "te",
                                  "trailer", "transfer-encoding", "upgrade", "host",
                                  "content-length", "expect"};

int
cn__upstream_hop_header(const char *name)
{
    for (size_t i = 0; i < sizeof(hop) / sizeof(hop[0]); i++)
        if (!strcasecmp(name, hop[i]))
            return 1;
    return 0;
}

void
cn__upstream_result_free(cn_upstream_result_t *r)
{
    if (!r)
        return;
    free(r->content_type);
    free(r->location);
    free(r->connection);
    for (size_t i = 0; i < 2 * r->nheaders; i++)
        free(r->headers[i]);
    free(r->headers);
    free(r->body);
    memset(r, 0, sizeof(*r));
}

int
cn__upstream_connection_option(const char *connection, const char *name)
{
    size_t n = strlen(name);

    for (const char *p = connection; p && *p;) {
        const char *end = strchr(p, ',');
        size_t len;
        while (*p == ' ' || *p == '\t')
            p++;
        len = end ? (size_t)(end - p) : strlen(p);
        while (len && (p[len - 1] == ' ' || p[len - 1] == '\t'))
            len--;
        if (len == n && !strncasecmp(p, name, n))
            return 1;
        p = end ? end + 1 : NULL;
    }
    return 0;
}

static int give_head(job_t *j);

static size_t
on_body(char *p, size_t size, size_t n, void *arg)
{
    job_t *j = arg;
    size_t len = size * n;
    cn_upstream_result_t *r = &j->res;

    if (j->relay) {
        int rc = j->head_given || !give_head(j) ? cn__relay_put(j->relay, p, len)
                                                : CN_RELAY_BROKEN;
        return rc == 0 ? len : rc == CN_RELAY_WAIT ? CURL_WRITEFUNC_PAUSE : 0;
    }

    if (r->body_len + len > j->max_body) {
        j->res.error = -EMSGSIZE;
        return 0; /* libcurl fails the transfer */
    }
    if (r->body_len + len > j->bcap) {
        size_t cap = j->bcap ? j->bcap : 4096;
        uint8_t *nb;
        while (cap < r->body_len + len)
            cap *= 2;
        if (!(nb = realloc(r->body, cap)))
            return 0; /* libcurl fails the transfer */
        r->body = nb;
        j->bcap = cap;
    }
    memcpy(r->body + r->body_len, p, len);
    r->body_len += len;
    return len;
}

static char *
trimmed(const char *p, size_t n)
{
    char *s;

    while (n && (*p == ' ' || *p == '\t'))
        p++, n--;
    while (n && (p[n - 1] == ' ' || p[n - 1] == '\t' || p[n - 1] == '\r' || p[n - 1] == '\n'))
        n--;
    if (!(s = malloc(n + 1)))
        return NULL;
    memcpy(s, p, n);
    s[n] = '\0';
    return s;
}

static size_t
on_header(char *p, size_t size, size_t n, void *arg)
{
    job_t *j = arg;
    size_t len = size * n;
    const char *colon = memchr(p, ':', len);
    cn_upstream_result_t *r = &j->res;
    char *name, *value;

    if (len >= 5 && !memcmp(p, "HTTP/", 5)) {
        /* A new response (after a 100 Continue or a redirect we do not follow): start
         * the header list again. */
        for (size_t i = 0; i < 2 * r->nheaders; i++)
            free(r->headers[i]);
        r->nheaders = 0;
        free(r->content_type);
        free(r->location);
        r->content_type = r->location = NULL;
        return len;
    }
    if (!colon) {
        /* The blank line: a relayed answer's head goes on at once (an interim 1xx
         * head is followed by another). Any other line without a colon is skipped. */
        long status = 0;
        if (j->relay && !j->head_given && len <= 2 && (p[0] == '\r' || p[0] == '\n') &&
            curl_easy_getinfo(j->easy, CURLINFO_RESPONSE_CODE, &status) == CURLE_OK &&
            status >= 200 && give_head(j))
            return 0;
        return len;
    }
    if (!(name = trimmed(p, (size_t)(colon - p))) ||
        !(value = trimmed(colon + 1, len - (size_t)(colon - p) - 1))) {
        free(name);
        return 0;
    }
    if (!strcasecmp(name, "content-type")) {
        free(r->content_type);
        r->content_type = value;
        free(name);
    } else if (!strcasecmp(name, "location")) {
        free(r->location);
        r->location = value;
        free(name);
    } else if (!strcasecmp(name, "connection")) {
        free(r->connection);
        r->connection = value;
        free(name);
    } else if (cn__upstream_hop_header(name) || !strcasecmp(name, "date")) {
        free(name);
        free(value);
    } else {
        if (r->nheaders == j->hcap) {
            size_t cap = j->hcap ? 2 * j->hcap : 8;
            char **nh = realloc(r->headers, 2 * cap * sizeof(*nh));
            if (!nh) {
                free(name);
                free(value);
                return 0;
            }
            r->headers = nh;
            j->hcap = cap;
        }
        r->headers[2 * r->nheaders] = name;
        r->headers[2 * r->nheaders + 1] = value;
        r->nheaders++;
    }
    return len;
}

/* Hands a relayed answer's status and headers on. 0, or -1 when nobody listens. */
static int
give_head(job_t *j)
{
    curl_off_t length = -1;

    curl_easy_getinfo(j->easy, CURLINFO_RESPONSE_CODE, &j->res.status);
    curl_easy_getinfo(j->easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &length);
    j->head_given = 1;
    if (j->head(j->arg, j->relay, &j->res, length < 0 ? -1 : (int64_t)length))
        return -1;
    return 0;
}

/* A relayed request's body, as the client sends it. */
static size_t
on_read(char *buf, size_t size, size_t n, void *arg)
{
    job_t *j = arg;
    ssize_t got = cn__relay_take(j->relay, buf, size * n);

    return got >= 0 ? (size_t)got : got == CN_RELAY_WAIT ? CURL_READFUNC_PAUSE
                                                         : CURL_READFUNC_ABORT;
}

static void
job_free(job_t *j)
{
    if (j->easy)
        curl_easy_cleanup(j->easy);
    curl_slist_free_all(j->hdrs);
    free(j->url);
    free(j->method);
    free(j->body_in);
    free(j);
}

static void
finish(cn_upstream_t *u, job_t *j, CURLcode rc)
{
    cn_upstream_result_t *r = &j->res;

    if (rc == CURLE_OK) {
        curl_easy_getinfo(j->easy, CURLINFO_RESPONSE_CODE, &r->status);
    } else {
        r->error = r->error == -EMSGSIZE || rc == CURLE_FILESIZE_EXCEEDED ? -EMSGSIZE
                   : rc == CURLE_OPERATION_TIMEDOUT                      ? -ETIMEDOUT
                   : rc == CURLE_COULDNT_CONNECT || rc == CURLE_COULDNT_RESOLVE_HOST
                       ? -ECONNREFUSED
                       : -EIO;
        snprintf(r->message, sizeof(r->message), "%s", curl_easy_strerror(rc));
    }
    if (!j->relay) {
        j->done(j->arg, r);
        memset(r, 0, sizeof(*r)); /* the callee's now */
    } else {
        /* Broken off before the head: the gateway answers 502 or 504. After it, the
         * client's connection is closed short of the answer's end. */
        if (rc != CURLE_OK && !j->head_given) {
            j->head_given = 1;
            j->head(j->arg, j->relay, r, -1);
        }
        if (rc != CURLE_OK)
            cn_log_debug("relayed %s %s: %s", j->method, j->url, r->message);
        cn__relay_far_close(j->relay, rc != CURLE_OK);
        j->relay = NULL;
        cn__upstream_result_free(r);
    }
    curl_multi_remove_handle(u->multi, j->easy);
    job_free(j);
}

static void *
upstream_main(void *arg)
{
    cn_upstream_t *u = arg;
    cn_relay_t **woken = NULL;
    size_t woken_cap = 0;

    for (;;) {
        job_t *list;
        CURLMsg *m;
        int running = 0, left;
        size_t nwoken;

        /* Both lists at once: a relay woken after its job was queued is among the jobs
         * taken here, so it has been added to the multi handle when its wake is seen. */
        pthread_mutex_lock(&u->mu);
        list = u->queue;
        u->queue = NULL;
        u->queue_tail = &u->queue;
        {
            cn_relay_t **t = woken;
            size_t cap = woken_cap;
            woken = u->woken;
            woken_cap = u->woken_cap;
            nwoken = u->nwoken;
            u->woken = t;
            u->woken_cap = cap;
            u->nwoken = 0;
        }
        pthread_mutex_unlock(&u->mu);
        while (list) {
            job_t *j = list;
            list = j->next;
            if (curl_multi_add_handle(u->multi, j->easy) != CURLM_OK)
                finish(u, j, CURLE_FAILED_INIT);
        }
        for (size_t i = 0; i < nwoken; i++) {
            cn_relay_t *r = woken[i];
            /* Only this thread lets the far side go, so a relay still held here has its
             * job. */
            if (cn__relay_far_alive(r)) {
                job_t *j = cn__relay_far_tag(r);
                if (cn__relay_near_gone(r))
                    finish(u, j, CURLE_ABORTED_BY_CALLBACK); /* the client left */
                else
                    curl_easy_pause(j->easy, CURLPAUSE_CONT);
            }
            cn__relay_unref(r);
        }
        curl_multi_perform(u->multi, &running);
        while ((m = curl_multi_info_read(u->multi, &left))) {
            if (m->msg == CURLMSG_DONE) {
                job_t *j = NULL;
                curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&j);
                finish(u, j, m->data.result);
            }
        }
        /* Sleeps until a socket is ready, a timer is due, or cn__upstream_send wakes it;
         * a second at most. */
        curl_multi_poll(u->multi, NULL, 0, 1000, NULL);
    }
    return NULL;
}

int
cn__upstream_new(const char *base_url, uint32_t timeout_ms, size_t max_body,
                 cn_upstream_t **out)
{
    cn_upstream_t *u = calloc(1, sizeof(*u));
    size_t n = strlen(base_url);
    int rc;

    if (!u)
        return -ENOMEM;
    curl_global_init(CURL_GLOBAL_DEFAULT);
    while (n && base_url[n - 1] == '/')
        n--;
    if (!(u->base = strndup(base_url, n)) || !(u->multi = curl_multi_init())) {
        free(u->base);
        free(u);
        return -ENOMEM;
    }
    u->timeout_ms = timeout_ms;
    u->max_body = max_body;
    u->queue_tail = &u->queue;
    curl_multi_setopt(u->multi, CURLMOPT_MAX_HOST_CONNECTIONS, 256L);
    pthread_mutex_init(&u->mu, NULL);
    if ((rc = pthread_create(&u->thread, NULL, upstream_main, u))) {
        curl_multi_cleanup(u->multi);
        free(u->base);
        free(u);
        return -rc;
    }
    pthread_detach(u->thread); /* lives as long as the process */
    *out = u;
    return 0;
}

/* A job for method target with headers (nheaders "Name", "value" pairs, copied), the
 * options every request has set; NULL when out of memory. */
static job_t *
job_new(cn_upstream_t *u, const char *method, const char *target, const char *const *headers,
        size_t nheaders)
{
    job_t *j = calloc(1, sizeof(*j));
    size_t ulen = strlen(u->base) + strlen(target) + 1;
    struct curl_slist *l;

    if (!j)
        return NULL;
    if (!(j->easy = curl_easy_init()) || !(j->url = malloc(ulen)) ||
        !(j->method = strdup(method)))
        goto nomem;
    snprintf(j->url, ulen, "%s%s", u->base, target);
    for (size_t i = 0; i < nheaders; i++) {
        size_t len = strlen(headers[2 * i]) + strlen(headers[2 * i + 1]) + 3;
        char *line = malloc(len);
        if (!line)
            goto nomem;
        /* "Name;" sends an empty value (libcurl drops "Name:" otherwise). */
        if (headers[2 * i + 1][0])
            snprintf(line, len, "%s: %s", headers[2 * i], headers[2 * i + 1]);
        else
            snprintf(line, len, "%s;", headers[2 * i]);
        l = curl_slist_append(j->hdrs, line);
        free(line);
        if (!l)
            goto nomem;
        j->hdrs = l;
    }
    /* Let the upstream see exactly the headers given: no Expect: 100-continue wait, no
     * Accept it did not ask for. */
    if (!(l = curl_slist_append(j->hdrs, "Expect:")))
        goto nomem;
    j->hdrs = l;
    curl_easy_setopt(j->easy, CURLOPT_URL, j->url);
    curl_easy_setopt(j->easy, CURLOPT_PRIVATE, (char *)j);
    curl_easy_setopt(j->easy, CURLOPT_HTTPHEADER, j->hdrs);
    curl_easy_setopt(j->easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(j->easy, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(j->easy, CURLOPT_WRITEDATA, j);
    curl_easy_setopt(j->easy, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(j->easy, CURLOPT_HEADERDATA, j);
    curl_easy_setopt(j->easy, CURLOPT_PROTOCOLS_STR, "http,https");
    if (!strcmp(method, "HEAD"))
        curl_easy_setopt(j->easy, CURLOPT_NOBODY, 1L);
    else
        curl_easy_setopt(j->easy, CURLOPT_CUSTOMREQUEST, j->method);
    return j;

nomem:
    job_free(j);
    return NULL;
}

static void
enqueue(cn_upstream_t *u, job_t *j)
{
    pthread_mutex_lock(&u->mu);
    *u->queue_tail = j;
    u->queue_tail = &j->next;
    pthread_mutex_unlock(&u->mu);
    curl_multi_wakeup(u->multi);
}

int
cn__upstream_send(cn_upstream_t *u, const char *method, const char *target,
                  const char *const *headers, size_t nheaders, const void *body,
                  size_t body_len, cn_upstream_done_cb done, void *arg)
{
    job_t *j = job_new(u, method, target, headers, nheaders);

    if (!j || (body_len && !(j->body_in = malloc(body_len)))) {
        if (j)
            job_free(j);
        return -ENOMEM;
    }
    j->done = done;
    j->arg = arg;
    j->max_body = u->max_body;
    if (body_len)
        memcpy(j->body_in, body, body_len);
    j->body_in_len = body_len;
    curl_easy_setopt(j->easy, CURLOPT_TIMEOUT_MS, (long)u->timeout_ms);
    curl_easy_setopt(j->easy, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)u->max_body);
    if (strcmp(method, "HEAD") && (body_len || strcmp(method, "GET"))) {
        curl_easy_setopt(j->easy, CURLOPT_POSTFIELDS, j->body_in ? (char *)j->body_in : "");
        curl_easy_setopt(j->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len);
    }
    enqueue(u, j);
    return 0;
}

/* A relay's near side moved (its thread): the upstream thread looks at it next. */
static void
relay_woken(void *ctx, cn_relay_t *r)
{
    cn_upstream_t *u = ctx;
    int queued = 0;

    pthread_mutex_lock(&u->mu);
    if (u->nwoken == u->woken_cap) {
        size_t cap = u->woken_cap ? 2 * u->woken_cap : 64;
        cn_relay_t **w = realloc(u->woken, cap * sizeof(*w));
        if (w) {
            u->woken = w;
            u->woken_cap = cap;
        }
    }
    if (u->nwoken < u->woken_cap) {
        u->woken[u->nwoken++] = r;
        queued = 1;
    }
    pthread_mutex_unlock(&u->mu);
    if (!queued) {
        /* Out of memory: the transfer stays paused until the upstream timeout cuts it. */
        cn_log_error("upstream client: out of memory, a relayed request may stall");
        cn__relay_unref(r);
        return;
    }
    curl_multi_wakeup(u->multi);
}

int
cn__upstream_relay(cn_upstream_t *u, const char *method, const char *target,
                   const char *const *headers, size_t nheaders, cn_relay_t *relay,
                   cn_upstream_head_cb head, void *arg)
{
    job_t *j = job_new(u, method, target, headers, nheaders);
    int64_t length = cn__relay_body_length(relay);
    long idle_s = (long)((u->timeout_ms + 999) / 1000);

    if (!j)
        return -ENOMEM;
    j->relay = relay;
    j->head = head;
    j->arg = arg;
    /* No bound on the whole exchange (a download or an event stream may last): the
     * connection must be made, and then bytes must move, within the timeout. */
    curl_easy_setopt(j->easy, CURLOPT_CONNECTTIMEOUT_MS, (long)u->timeout_ms);
    curl_easy_setopt(j->easy, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(j->easy, CURLOPT_LOW_SPEED_TIME, idle_s);
    if (length && strcmp(method, "HEAD")) {
        /* A body of unknown length goes chunked. */
        curl_easy_setopt(j->easy, CURLOPT_POST, 1L);
        curl_easy_setopt(j->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)length);
        curl_easy_setopt(j->easy, CURLOPT_READFUNCTION, on_read);
        curl_easy_setopt(j->easy, CURLOPT_READDATA, j);
    } else if (strcmp(method, "HEAD") && strcmp(method, "GET")) {
        curl_easy_setopt(j->easy, CURLOPT_POSTFIELDS, "");
        curl_easy_setopt(j->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)0);
    }
    cn__relay_bind_far(relay, relay_woken, u, j);
    enqueue(u, j);
    return 0;
}
