/*
 * app/metrics.c - GET /metrics: the shared counters in Prometheus text format (0.0.4).
 *
 * Any worker answers it: the counters live in the shared region, one block per worker,
 * and are summed here. Operation names are [A-Za-z0-9._-] (checked at registration), so
 * they need no escaping inside label values.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "app/app_internal.h"
#include "cnerium/response.h"
#include "http/problem.h"

typedef struct text {
    char *buf;
    size_t len, cap;
    int failed;
} text_t;

static void
put(text_t *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void
put(text_t *t, const char *fmt, ...)
{
    va_list ap;
    int n;

    if (t->failed)
        return;
    for (;;) {
        va_start(ap, fmt);
        n = vsnprintf(t->buf + t->len, t->cap - t->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            t->failed = 1;
            return;
        }
        if ((size_t)n < t->cap - t->len) {
            t->len += (size_t)n;
            return;
        }
        size_t cap = t->cap * 2 + (size_t)n;
        char *nb = realloc(t->buf, cap);
        if (!nb) {
            t->failed = 1;
            return;
        }
        t->buf = nb;
        t->cap = cap;
    }
}

static const char *const outcome_names[CN_OUTCOME_COUNT] = {
    [CN_OUTCOME_EXECUTED] = "executed", [CN_OUTCOME_REPLAYED] = "replayed",
    [CN_OUTCOME_CONFLICT] = "conflict", [CN_OUTCOME_INVALID] = "invalid",
    [CN_OUTCOME_FAILED] = "failed",
};

cn_response_t
cn__metrics_handler(cn_request_t *req, void *ctx)
{
    const cn_app_t *app = ctx;
    const cn_shm_t *shm = &app->shm;
    text_t t = {0};
    cn_response_t res;

    if (!shm->hdr)
        return cn__problem(503, NULL, "Metrics are available while the server runs");
    t.cap = 4096;
    if (!(t.buf = malloc(t.cap)))
        return cn__problem(503, NULL, "Out of memory");
    t.buf[0] = '\0';

    put(&t, "# HELP cnerium_durable_requests_total Durable requests by operation and final "
            "outcome; each request counts once.\n"
            "# TYPE cnerium_durable_requests_total counter\n");
    for (unsigned op = 0; op < app->nops; op++) {
        for (unsigned o = 0; o < CN_OUTCOME_COUNT; o++)
            put(&t, "cnerium_durable_requests_total{operation=\"%s\",outcome=\"%s\"} %llu\n",
                app->ops[op], outcome_names[o],
                (unsigned long long)cn__shm_counter_sum(shm, (int)op, o));
    }
    put(&t, "# HELP cnerium_inflight_waits_total Durable requests that waited for a "
            "concurrent duplicate with the same key.\n"
            "# TYPE cnerium_inflight_waits_total counter\n"
            "cnerium_inflight_waits_total %llu\n",
        (unsigned long long)cn__shm_counter_sum(shm, -1, CN_SHM_WAITS));
    put(&t, "# HELP cnerium_inflight_slots In-flight table slots held right now.\n"
            "# TYPE cnerium_inflight_slots gauge\n"
            "cnerium_inflight_slots %llu\n"
            "# HELP cnerium_inflight_capacity In-flight table capacity (slots).\n"
            "# TYPE cnerium_inflight_capacity gauge\n"
            "cnerium_inflight_capacity %u\n",
        (unsigned long long)cn__shm_inflight_owned(shm), shm->hdr->nslots);
    put(&t, "# HELP cnerium_inflight_lease_takeovers_total Claims taken over because their "
            "handler ran past the lease.\n"
            "# TYPE cnerium_inflight_lease_takeovers_total counter\n"
            "cnerium_inflight_lease_takeovers_total %llu\n",
        (unsigned long long)atomic_load(&shm->hdr->lease_takeovers));
    put(&t, "# HELP cnerium_worker_restarts_total Worker processes replaced after they "
            "died.\n"
            "# TYPE cnerium_worker_restarts_total counter\n"
            "cnerium_worker_restarts_total %llu\n"
            "# HELP cnerium_workers Worker processes configured.\n"
            "# TYPE cnerium_workers gauge\n"
            "cnerium_workers %u\n",
        (unsigned long long)atomic_load(&shm->hdr->worker_restarts), shm->hdr->nworkers);
    if (t.failed) {
        free(t.buf);
        return cn__problem(503, NULL, "Out of memory");
    }
    res = cn_raw_response(200, "text/plain; version=0.0.4; charset=utf-8", t.buf, t.len);
    free(t.buf);
    return res;
}
