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
} job_t;

struct cn_upstream {
    char *base;
    uint32_t timeout_ms;
    size_t max_body;
    CURLM *multi;
    pthread_t thread;
    pthread_mutex_t mu;
    job_t *queue, **queue_tail; /* mu: in the order sent */
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

static size_t
on_body(char *p, size_t size, size_t n, void *arg)
{
    job_t *j = arg;
    size_t len = size * n;
    cn_upstream_result_t *r = &j->res;

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
    if (!colon)
        return len; /* the blank line */
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
    j->done(j->arg, r);
    memset(r, 0, sizeof(*r)); /* the callee's now */
    curl_multi_remove_handle(u->multi, j->easy);
    job_free(j);
}

static void *
upstream_main(void *arg)
{
    cn_upstream_t *u = arg;

    for (;;) {
        job_t *list;
        CURLMsg *m;
        int running = 0, left;

        pthread_mutex_lock(&u->mu);
        list = u->queue;
        u->queue = NULL;
        u->queue_tail = &u->queue;
        pthread_mutex_unlock(&u->mu);
        while (list) {
            job_t *j = list;
            list = j->next;
            if (curl_multi_add_handle(u->multi, j->easy) != CURLM_OK) {
                j->res.error = -EIO;
                snprintf(j->res.message, sizeof(j->res.message), "cannot start the request");
                j->done(j->arg, &j->res);
                memset(&j->res, 0, sizeof(j->res));
                job_free(j);
            }
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

int
cn__upstream_send(cn_upstream_t *u, const char *method, const char *target,
                  const char *const *headers, size_t nheaders, const void *body,
                  size_t body_len, cn_upstream_done_cb done, void *arg)
{
    job_t *j = calloc(1, sizeof(*j));
    size_t ulen = strlen(u->base) + strlen(target) + 1;

    if (!j)
        return -ENOMEM;
    j->done = done;
    j->arg = arg;
    j->max_body = u->max_body;
    if (!(j->easy = curl_easy_init()) || !(j->url = malloc(ulen)) ||
        !(j->method = strdup(method)) || (body_len && !(j->body_in = malloc(body_len))))
        goto nomem;
    snprintf(j->url, ulen, "%s%s", u->base, target);
    if (body_len)
        memcpy(j->body_in, body, body_len);
    j->body_in_len = body_len;
    for (size_t i = 0; i < nheaders; i++) {
        size_t len = strlen(headers[2 * i]) + strlen(headers[2 * i + 1]) + 3;
        char *line = malloc(len);
        struct curl_slist *l;
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
    {
        struct curl_slist *l = curl_slist_append(j->hdrs, "Expect:");
        if (!l)
            goto nomem;
        j->hdrs = l;
    }
    curl_easy_setopt(j->easy, CURLOPT_URL, j->url);
    curl_easy_setopt(j->easy, CURLOPT_PRIVATE, (char *)j);
    curl_easy_setopt(j->easy, CURLOPT_HTTPHEADER, j->hdrs);
    curl_easy_setopt(j->easy, CURLOPT_TIMEOUT_MS, (long)u->timeout_ms);
    curl_easy_setopt(j->easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(j->easy, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(j->easy, CURLOPT_WRITEDATA, j);
    curl_easy_setopt(j->easy, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(j->easy, CURLOPT_HEADERDATA, j);
    curl_easy_setopt(j->easy, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)u->max_body);
    curl_easy_setopt(j->easy, CURLOPT_PROTOCOLS_STR, "http,https");
    if (!strcmp(method, "HEAD")) {
        curl_easy_setopt(j->easy, CURLOPT_NOBODY, 1L);
    } else {
        curl_easy_setopt(j->easy, CURLOPT_CUSTOMREQUEST, j->method);
        if (body_len || strcmp(method, "GET")) {
            curl_easy_setopt(j->easy, CURLOPT_POSTFIELDS, j->body_in ? (char *)j->body_in : "");
            curl_easy_setopt(j->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len);
        }
    }
    pthread_mutex_lock(&u->mu);
    *u->queue_tail = j;
    u->queue_tail = &j->next;
    pthread_mutex_unlock(&u->mu);
    curl_multi_wakeup(u->multi);
    return 0;

nomem:
    job_free(j);
    return -ENOMEM;
}
