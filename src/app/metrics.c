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

static void
put_histogram(text_t *t, const char *name, const char *help, const _Atomic uint64_t *buckets,
              const uint64_t *bounds, int n, double scale, double sum)
{
    uint64_t cum = 0;

    put(t, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    for (int i = 0; i < n; i++) {
        cum += atomic_load_explicit(&buckets[i], memory_order_relaxed);
        if (i < n - 1)
            put(t, "%s_bucket{le=\"%g\"} %llu\n", name, (double)bounds[i] * scale,
                (unsigned long long)cum);
        else
            put(t, "%s_bucket{le=\"+Inf\"} %llu\n", name, (unsigned long long)cum);
    }
    put(t, "%s_sum %g\n%s_count %llu\n", name, sum, name, (unsigned long long)cum);
}

static void
put_persist(text_t *t, const cn_shm_persist_t *p)
{
    static const uint64_t sync_bounds[] = CN_SHM_SYNC_BOUNDS_US;
    static const uint64_t batch_bounds[] = CN_SHM_BATCH_BOUNDS;
    uint64_t records = atomic_load(&p->records);

    put(t, "# HELP cnerium_persist_batches_total WAL batches written (one fdatasync each).\n"
           "# TYPE cnerium_persist_batches_total counter\n"
           "cnerium_persist_batches_total %llu\n"
           "# HELP cnerium_persist_records_total Records written to the WAL and applied.\n"
           "# TYPE cnerium_persist_records_total counter\n"
           "cnerium_persist_records_total %llu\n"
           "# HELP cnerium_persist_records_failed_total Records that could not be stored "
           "(their requests got 503).\n"
           "# TYPE cnerium_persist_records_failed_total counter\n"
           "cnerium_persist_records_failed_total %llu\n"
           "# HELP cnerium_persist_duplicates_skipped_total Ring records already applied "
           "by an earlier persister, acknowledged without a second write.\n"
           "# TYPE cnerium_persist_duplicates_skipped_total counter\n"
           "cnerium_persist_duplicates_skipped_total %llu\n"
           "# HELP cnerium_wal_bytes_total Bytes written to the WAL since the server "
           "started.\n"
           "# TYPE cnerium_wal_bytes_total counter\n"
           "cnerium_wal_bytes_total %llu\n"
           "# HELP cnerium_wal_applied_lsn WAL position applied to LMDB.\n"
           "# TYPE cnerium_wal_applied_lsn gauge\n"
           "cnerium_wal_applied_lsn %llu\n"
           "# HELP cnerium_wal_checkpoint_lsn WAL position of the last checkpoint.\n"
           "# TYPE cnerium_wal_checkpoint_lsn gauge\n"
           "cnerium_wal_checkpoint_lsn %llu\n"
           "# HELP cnerium_wal_checkpoint_timestamp_seconds Wall-clock time of the last "
           "checkpoint.\n"
           "# TYPE cnerium_wal_checkpoint_timestamp_seconds gauge\n"
           "cnerium_wal_checkpoint_timestamp_seconds %.3f\n"
           "# HELP cnerium_wal_recovered_records Records replayed from the WAL at the last "
           "persister start.\n"
           "# TYPE cnerium_wal_recovered_records gauge\n"
           "cnerium_wal_recovered_records %llu\n"
           "# HELP cnerium_persister_restarts_total Persister processes replaced after they "
           "died.\n"
           "# TYPE cnerium_persister_restarts_total counter\n"
           "cnerium_persister_restarts_total %llu\n"
           "# HELP cnerium_stream_conflicts_total Records refused because a stream's "
           "expected version did not hold (nothing of them stored).\n"
           "# TYPE cnerium_stream_conflicts_total counter\n"
           "cnerium_stream_conflicts_total %llu\n",
        (unsigned long long)atomic_load(&p->batches), (unsigned long long)records,
        (unsigned long long)atomic_load(&p->records_failed),
        (unsigned long long)atomic_load(&p->duplicates_skipped),
        (unsigned long long)atomic_load(&p->wal_bytes),
        (unsigned long long)atomic_load(&p->applied_lsn),
        (unsigned long long)atomic_load(&p->checkpoint_lsn),
        (double)atomic_load(&p->checkpoint_unix_ms) / 1000.0,
        (unsigned long long)atomic_load(&p->recovered_records),
        (unsigned long long)atomic_load(&p->restarts),
        (unsigned long long)atomic_load(&p->stream_conflicts));
    put_histogram(t, "cnerium_persist_fdatasync_seconds",
                  "Latency of each batch's WAL write + fdatasync.", p->sync_buckets,
                  sync_bounds, CN_SHM_SYNC_BUCKETS, 1e-6,
                  (double)atomic_load(&p->sync_us_sum) / 1e6);
    put_histogram(t, "cnerium_persist_batch_records", "Records per WAL batch.",
                  p->batch_buckets, batch_bounds, CN_SHM_BATCH_BUCKETS, 1.0, (double)records);
}

/* A shared store: this host's claims and commits. */
static void
put_shared(text_t *t, const cn_shm_shared_t *s)
{
    static const uint64_t us_bounds[] = CN_SHM_SYNC_BOUNDS_US;
    static const uint64_t batch_bounds[] = CN_SHM_BATCH_BOUNDS;
    uint64_t records = atomic_load(&s->commit_records);

    put(t, "# HELP cnerium_store_claims_total Keys claimed in the shared store (one round "
           "trip each).\n"
           "# TYPE cnerium_store_claims_total counter\n"
           "cnerium_store_claims_total %llu\n"
           "# HELP cnerium_store_claim_failures_total Claims the database failed (their "
           "requests got 503).\n"
           "# TYPE cnerium_store_claim_failures_total counter\n"
           "cnerium_store_claim_failures_total %llu\n"
           "# HELP cnerium_store_commits_total Transactions committing records.\n"
           "# TYPE cnerium_store_commits_total counter\n"
           "cnerium_store_commits_total %llu\n"
           "# HELP cnerium_store_commit_records_total Records committed (or refused) in "
           "them.\n"
           "# TYPE cnerium_store_commit_records_total counter\n"
           "cnerium_store_commit_records_total %llu\n"
           "# HELP cnerium_store_commit_failures_total Transactions that failed (their "
           "records' requests got 503).\n"
           "# TYPE cnerium_store_commit_failures_total counter\n"
           "cnerium_store_commit_failures_total %llu\n"
           "# HELP cnerium_store_claims_lost_total Records not stored because another host "
           "had taken their claim over after the lease.\n"
           "# TYPE cnerium_store_claims_lost_total counter\n"
           "cnerium_store_claims_lost_total %llu\n",
        (unsigned long long)atomic_load(&s->claims),
        (unsigned long long)atomic_load(&s->claim_failures),
        (unsigned long long)atomic_load(&s->commits), (unsigned long long)records,
        (unsigned long long)atomic_load(&s->commit_failures),
        (unsigned long long)atomic_load(&s->lost));
    put_histogram(t, "cnerium_store_claim_seconds",
                  "Latency of a claim in the shared store (round trip).", s->claim_buckets,
                  us_bounds, CN_SHM_SYNC_BUCKETS, 1e-6,
                  (double)atomic_load(&s->claim_us_sum) / 1e6);
    put_histogram(t, "cnerium_store_commit_seconds",
                  "Latency of a commit transaction in the shared store.", s->commit_buckets,
                  us_bounds, CN_SHM_SYNC_BUCKETS, 1e-6,
                  (double)atomic_load(&s->commit_us_sum) / 1e6);
    put_histogram(t, "cnerium_store_commit_records", "Records per commit transaction.",
                  s->batch_buckets, batch_bounds, CN_SHM_BATCH_BUCKETS, 1.0, (double)records);
}

static void
put_events(text_t *t, const cn_shm_events_t *e)
{
    put(t, "# HELP cnerium_events_committed_total Events made durable (numbered) since the "
           "server started.\n"
           "# TYPE cnerium_events_committed_total counter\n"
           "cnerium_events_committed_total %llu\n"
           "# HELP cnerium_events_last_seq The last committed event's sequence number.\n"
           "# TYPE cnerium_events_last_seq gauge\n"
           "cnerium_events_last_seq %llu\n"
           "# HELP cnerium_events_dropped_total Events of ordinary routes lost to a full "
           "record ring.\n"
           "# TYPE cnerium_events_dropped_total counter\n"
           "cnerium_events_dropped_total %llu\n"
           "# HELP cnerium_ws_clients Connected WebSocket clients.\n"
           "# TYPE cnerium_ws_clients gauge\n"
           "cnerium_ws_clients %llu\n"
           "# HELP cnerium_ws_frames_sent_total Event frames sent to WebSocket clients.\n"
           "# TYPE cnerium_ws_frames_sent_total counter\n"
           "cnerium_ws_frames_sent_total %llu\n"
           "# HELP cnerium_ws_catchups_total Events read back from the store for a client "
           "behind the in-memory cache.\n"
           "# TYPE cnerium_ws_catchups_total counter\n"
           "cnerium_ws_catchups_total %llu\n"
           "# HELP cnerium_ws_resets_total Clients told to refetch state: their position was "
           "older than the retained events.\n"
           "# TYPE cnerium_ws_resets_total counter\n"
           "cnerium_ws_resets_total %llu\n"
           "# HELP cnerium_ws_slow_consumer_closes_total Clients closed (or gone) while events "
           "were still owed to them; they resume with ?since=.\n"
           "# TYPE cnerium_ws_slow_consumer_closes_total counter\n"
           "cnerium_ws_slow_consumer_closes_total %llu\n"
           "# HELP cnerium_ws_client_errors_total Malformed client messages answered with an "
           "error.\n"
           "# TYPE cnerium_ws_client_errors_total counter\n"
           "cnerium_ws_client_errors_total %llu\n"
           "# HELP cnerium_broadcaster_restarts_total Broadcaster processes replaced after they "
           "died.\n"
           "# TYPE cnerium_broadcaster_restarts_total counter\n"
           "cnerium_broadcaster_restarts_total %llu\n",
        (unsigned long long)atomic_load(&e->committed_total),
        (unsigned long long)atomic_load(&e->committed_seq),
        (unsigned long long)atomic_load(&e->dropped), (unsigned long long)atomic_load(&e->clients),
        (unsigned long long)atomic_load(&e->frames_sent),
        (unsigned long long)atomic_load(&e->catchups),
        (unsigned long long)atomic_load(&e->resets),
        (unsigned long long)atomic_load(&e->slow_closes),
        (unsigned long long)atomic_load(&e->client_errors),
        (unsigned long long)atomic_load(&e->restarts));
}

static void
put_delivery(text_t *t, const cn_shm_delivery_t *d)
{
    static const uint64_t bounds[] = CN_SHM_DELIVERY_BOUNDS_US;

    put_histogram(t, "cnerium_ws_delivery_seconds",
                  "Latency from an event's commit by the persister to the socket write of its "
                  "frame, per client delivery.",
                  d->buckets, bounds, CN_SHM_DELIVERY_BUCKETS, 1e-6,
                  (double)atomic_load(&d->ns_sum) / 1e9);
}

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
    {
        unsigned long long parked = 0;
        for (unsigned w = 0; w < shm->hdr->nworkers; w++)
            parked += atomic_load_explicit(&shm->workers[w].parked, memory_order_relaxed);
        put(&t, "# HELP cnerium_inflight_parked Durable requests waiting right now for a "
                "concurrent duplicate with the same key to finish.\n"
                "# TYPE cnerium_inflight_parked gauge\n"
                "cnerium_inflight_parked %llu\n",
            parked);
    }
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
    if (cn_config_store_is_pg(&app->cfg)) {
        put_shared(&t, &shm->hdr->shared);
        put_events(&t, &shm->hdr->events);
        put_delivery(&t, &shm->hdr->delivery);
    } else if (shm->hdr->ring_capacity) {
        put_persist(&t, &shm->hdr->persist);
        put_events(&t, &shm->hdr->events);
        put_delivery(&t, &shm->hdr->delivery);
    }
    if (t.failed) {
        free(t.buf);
        return cn__problem(503, NULL, "Out of memory");
    }
    res = cn_raw_response(200, "text/plain; version=0.0.4; charset=utf-8", t.buf, t.len);
    free(t.buf);
    return res;
}
