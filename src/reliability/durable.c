/*
 * reliability/durable.c - the durable route contract (README "The durable route
 * contract"): validate the key, fingerprint the request, replay or reject what is
 * stored, serialize concurrent duplicates, run the handler once, store its response
 * before it is sent, publish its events only once the record is durable.
 *
 * A request goes through it once, in four steps, top to bottom in this file's last part:
 *
 *   admit   the key, the fingerprint, the scope and the store key (400, 413 end it here)
 *   decide  look the key up, claim it, look again: replay, 409, park, or own it
 *   run     the handler; what of its response is kept
 *   commit  submit the record; commit_done answers once the persister has decided
 *
 * A request whose key is held by a concurrent duplicate (in any worker) is parked: its
 * connection stays suspended, no thread waits for it, and cn__durable_wake, run by the
 * worker's event loop when a claim somebody waits on ends (or at the holder's lease end
 * or the request's own deadline), takes it back to decide. A run whose stream
 * expectation failed and that may run again is parked the same way.
 *
 * Runs on the worker's event loop threads. The claim on a key is held from before the
 * handler runs until the store holds the record (or the key is released), so a
 * duplicate can never find neither the claim nor the record.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cnerium/error.h"
#include "http/problem.h"
#include "realtime/event.h"
#include "stream/stream.h"
#include "reliability/durable.h"
#include "support/clock.h"
#include "support/log.h"

#define CN_PROBLEM_WRONG_VERSION "urn:cnerium:problem:wrong-expected-version"

/* The final answer stored when a response cannot fit a record. */
#define CN_PROBLEM_RESPONSE_TOO_LARGE "urn:cnerium:problem:response-too-large"

/* Bytes of the principal's SHA-256 that join the scope: 128 bits is plenty to keep
 * tenants apart and keeps store keys short. */
#define PRINCIPAL_HASH_BYTES 16

static const char reused_msg[] = "Idempotency-Key was reused with a different request body";

int
cn__durable_status_stored(int status)
{
    if (status >= 500)
        return 0;
    return status != 408 && status != 425 && status != 429;
}

static void
finish(cn_durable_result_t *out, cn_durable_outcome_t outcome, cn_response_t res)
{
    out->outcome = outcome;
    out->response = res;
}

/* Answers with a problem response; returns 0 so callers can `return problem(...)`. */
static int
problem(cn_durable_result_t *out, cn_durable_outcome_t outcome, int status, const char *type,
        const char *detail)
{
    finish(out, outcome, cn__problem(status, type, detail));
    return 0;
}

/* A NUL-terminated copy of len bytes that are not NUL-terminated (record fields point
 * into the stored value). */
static char *
dup_field(const char *p, size_t len)
{
    char *s = malloc(len + 1);

    if (s) {
        memcpy(s, p, len);
        s[len] = '\0';
    }
    return s;
}

/* A key reused with another request: 409, or 422 with --reused-key-status 422. */
static void
reused(const cn_durable_t *d, cn_durable_result_t *out)
{
    problem(out, CN_OUTCOME_CONFLICT, d->cfg->reused_key_status == 422 ? 422 : 409,
            CN_PROBLEM_KEY_REUSED, reused_msg);
}

/* Adds the stored headers of rec ("Name: value\r\n" lines) to res. Returns 0 or
 * -ENOMEM (a line that does not parse, which the encoder never writes, is skipped). */
static int
replay_headers(cn_response_t *res, const cn_record_t *rec)
{
    const char *p = rec->headers, *end = rec->headers + rec->headers_len;

    while (p < end) {
        const char *eol = memchr(p, '\r', (size_t)(end - p)), *colon, *v;
        char *name, *value;
        int rc;

        if (!eol || eol + 1 >= end || eol[1] != '\n' ||
            !(colon = memchr(p, ':', (size_t)(eol - p))))
            return 0;
        for (v = colon + 1; v < eol && *v == ' '; v++)
            ;
        name = dup_field(p, (size_t)(colon - p));
        value = dup_field(v, (size_t)(eol - v));
        rc = name && value ? cn_response_store_header(res, name, value) : -ENOMEM;
        free(name);
        free(value);
        if (rc == -ENOMEM)
            return rc;
        p = eol + 2;
    }
    return 0;
}

/* The response a stored record replays: status, content type, body, Location, stored
 * headers. */
static void
replay(cn_durable_result_t *out, const cn_record_t *rec)
{
    char *ct = rec->content_type_len ? dup_field(rec->content_type, rec->content_type_len) : NULL;
    cn_response_t res = cn_raw_response(rec->status, NULL, rec->body, rec->body_len);

    if (res.status && rec->content_type_len) {
        if (ct)
            res.content_type = ct, ct = NULL;
        else
            cn_response_free(&res);
    }
    free(ct);
    if (res.status && rec->location_len) {
        res.location = dup_field(rec->location, rec->location_len);
        if (!res.location)
            cn_response_free(&res);
    }
    if (res.status && rec->headers_len && replay_headers(&res, rec))
        cn_response_free(&res);
    if (!res.status) {
        problem(out, CN_OUTCOME_FAILED, 503, CN_PROBLEM_STORAGE,
                "The stored response could not be loaded; retry with the same "
                "Idempotency-Key");
        return;
    }
    finish(out, CN_OUTCOME_REPLAYED, res);
}

/* Looks the key up. Returns 1 when a response was decided (replay or conflict), 0 when
 * nothing is stored, or -1 after answering with a storage error. */
static int
lookup(cn_durable_t *d, const char *skey, size_t skeylen, const cn_request_t *req,
       cn_durable_result_t *out)
{
    cn_record_t rec;
    void *buf;
    int rc = cn__store_get(d->store, skey, skeylen, cn__clock_wall_ms(), &rec, &buf);

    if (rc == CN_ENOTFOUND)
        return 0;
    if (rc) {
        cn_log_error("lookup of %s failed: %s", skey, cn_strerror(rc));
        problem(out, CN_OUTCOME_FAILED, 503, CN_PROBLEM_STORAGE,
                "The idempotency store is unavailable; retry with the same Idempotency-Key");
        return -1;
    }
    if (memcmp(rec.fingerprint, req->fingerprint, CN_SHA256_LEN))
        reused(d, out);
    else
        replay(out, &rec);
    free(buf);
    return 1;
}

/* An executed request whose record is being committed. */
typedef struct commit_wait {
    cn_durable_t *d;
    const char *operation; /* the route's */
    unsigned op_index;
    cn_claim_t claim;
    char owner[CN_CLAIM_OWNER_MAX]; /* a shared store: the claim the record ends */
    cn_response_t res;    /* the handler's response, until delivered */
    void *handle;         /* where to deliver */
    char skey[CN_STORE_KEY_MAX + 1]; /* the store key, to look up an unknown outcome */
    size_t skeylen;
    uint8_t fingerprint[CN_SHA256_LEN];
    int waited;
    int delivered;        /* the client has its answer (async mode, or a commit timeout) */
    /* stream appends with an expectation: what to tell the client on a conflict */
    uint8_t *appends;     /* a copy of the encoded list; NULL when none is conditional */
    size_t appends_len;
    int conflict_status;
    /* set when the handler asked to run again on a conflict and has runs left */
    cn_request_t *rerun_req;
    const cn_route_t *rerun_route;
} commit_wait_t;

static int park(cn_durable_t *d, const cn_route_t *route, cn_request_t *req, const char *skey,
                size_t skeylen, uint64_t retry_at_ms, uint64_t gen, int waited);

/* Ends owner's claim on skey in the shared store, without waiting (the claimer runs it
 * before any later claim of this worker). Nothing to do without a shared store or a
 * claim; when it cannot be queued the claim ends with its lease. */
static void
release_shared(cn_durable_t *d, const char *skey, size_t skeylen, const char *owner)
{
    cn_claim_job_t *job;

    if (!d->claimer || !owner[0])
        return;
    if (!(job = calloc(1, sizeof(*job)))) {
        cn_log_warn("out of memory releasing a claim: the key is free at its lease end");
        return;
    }
    job->release = 1;
    memcpy(job->skey, skey, skeylen);
    job->skeylen = skeylen;
    snprintf(job->owner, sizeof(job->owner), "%s", owner);
    cn__claimer_submit(d->claimer, job);
}

/* The handler asked to run again on fresh state when an expectation fails
 * (cn_stream_retry_on_conflict) and has runs left: the request is parked, due at once,
 * with nothing of the refused run kept; the loop's next cn__durable_wake takes it back
 * to decide (a duplicate that took the key meanwhile is waited for and replayed, as for
 * any request). The connection is still suspended, so req is alive. Returns 0 when it
 * is parked. */
static int
rerun(commit_wait_t *w)
{
    cn_request_t *req = w->rerun_req;
    int rc;

    cn__appends_free(req->appends);
    req->appends = NULL;
    req->appends_tail = &req->appends;
    req->nappends = 0;
    req->appends_conditional = 0;
    req->conflict_status = 0;
    req->reruns_allowed = 0;
    req->events_failed = 0;
    req->inflight_deadline = 0;
    req->reruns++;
    if ((rc = park(w->d, w->rerun_route, req, w->skey, w->skeylen, 0,
                   atomic_load(&w->d->wake_gen), w->waited)))
        req->reruns--;
    return rc;
}

static void
wait_free(commit_wait_t *w)
{
    free(w->appends);
    free(w);
}

/* 409 (or the handler's chosen status) wrong-expected-version, naming the first append
 * whose expectation does not hold against the store as it is now. */
static cn_response_t
conflict_problem(commit_wait_t *w)
{
    const uint8_t *cur, *end = w->appends + w->appends_len;
    long count = cn__appends_begin(w->appends, w->appends_len, &cur);
    char stream[CN_STREAM_ID_MAX + 1] = "", detail[CN_STREAM_ID_MAX + 160];
    uint64_t current = 0;
    int64_t expected = CN_STREAM_ANY;
    int status = w->conflict_status ? w->conflict_status : 409;
    cn_response_t res;
    cJSON *j;

    for (long i = 0; i < count; i++) {
        cn_append_view_t a;
        uint64_t v = 0;
        if (cn__appends_next(&cur, end, &a))
            break;
        if (a.expected == CN_STREAM_ANY)
            continue;
        if (w->d->store && cn__store_stream_version(w->d->store, a.stream, a.stream_len, &v))
            continue;
        memcpy(stream, a.stream, a.stream_len);
        stream[a.stream_len] = '\0';
        current = v;
        expected = a.expected;
        if (!cn__stream_expected_holds(a.expected, v))
            break; /* the first that fails now (an earlier one in this list may have
                    * failed against the versions at commit: then the last named stands) */
    }
    if (expected >= 0)
        snprintf(detail, sizeof(detail),
                 "Stream %s is at version %llu; the request expected version %lld. Nothing "
                 "was stored: read the current state and retry",
                 stream, (unsigned long long)current, (long long)expected);
    else
        snprintf(detail, sizeof(detail),
                 "Stream %s is at version %llu; the request expected it %s. Nothing was "
                 "stored: read the current state and retry",
                 stream, (unsigned long long)current,
                 expected == CN_STREAM_NO_STREAM ? "not to exist" : "to exist");
    j = cJSON_CreateObject();
    if (j) {
        cJSON_AddStringToObject(j, "type", CN_PROBLEM_WRONG_VERSION);
        cJSON_AddStringToObject(j, "title", "Wrong expected version");
        cJSON_AddNumberToObject(j, "status", status);
        cJSON_AddStringToObject(j, "detail", detail);
        cJSON_AddStringToObject(j, "error", detail);
        cJSON_AddStringToObject(j, "stream_id", stream);
        cJSON_AddNumberToObject(j, "current_version", (double)current);
        if (expected >= 0)
            cJSON_AddNumberToObject(j, "expected_version", (double)expected);
        else
            cJSON_AddStringToObject(j, "expected_version",
                                    expected == CN_STREAM_NO_STREAM ? "no_stream" : "exists");
    }
    res = cn_json_response(status, j);
    if (res.status) {
        free(res.content_type);
        res.content_type = strdup("application/problem+json");
        if (!res.content_type)
            cn_response_free(&res);
    }
    if (!res.status)
        res = cn__problem(status, CN_PROBLEM_WRONG_VERSION, detail);
    return res;
}

static void
deliver(commit_wait_t *w, cn_durable_outcome_t outcome, cn_response_t res, int stored)
{
    cn_durable_result_t out = {
        .response = res,
        .outcome = outcome,
        .op_index = w->op_index,
        .stored = stored,
        .waited = w->waited,
    };

    w->delivered = 1;
    w->d->deliver(w->d->deliver_arg, w->handle, &out);
}

/* 503 for a record that was not stored; err (when non-zero) is the reason the store
 * gave, e.g. "No space left on device", so a client and an operator see what failed. */
static cn_response_t
not_stored_problem(int err)
{
    char detail[256];
    cn_response_t res;

    if (err)
        snprintf(detail, sizeof(detail),
                 "The response could not be stored (%s); retry with the same "
                 "Idempotency-Key", cn_strerror(err));
    else
        snprintf(detail, sizeof(detail),
                 "The response could not be stored; retry with the same Idempotency-Key");
    res = cn__problem(503, CN_PROBLEM_STORAGE, detail);

    if (res.status && cn_response_add_header(&res, "Retry-After", "1"))
        cn_response_free(&res);
    return res;
}

/* The persister decided the record, but its failure log overflowed before the worker
 * read it: the store says. The claim is still held, so a record under the key is this
 * request's, committed before the decision. Returns 0 when stored, else the persister's
 * most recent failure reason (a batch fails as a whole, for one reason). */
static int
outcome_from_store(commit_wait_t *w)
{
    cn_record_t rec;
    void *buf = NULL;
    int rc;

    if (!w->d->store)
        return cn__committer_recent_error(w->d->committer);
    rc = cn__store_get(w->d->store, w->skey, w->skeylen, cn__clock_wall_ms(), &rec, &buf);
    if (rc == 0 && !memcmp(rec.fingerprint, w->fingerprint, CN_SHA256_LEN))
        rc = 0;
    else
        rc = cn__committer_recent_error(w->d->committer); /* not stored: say why */
    free(buf);
    return rc;
}

/* The committer's callback (see store/commit.h). */
static void
commit_done(int status, int final, void *arg)
{
    commit_wait_t *w = arg;

    if (final == 2) {
        /* The worker is stopping before the decision: forget the request; the claim
         * stays held, the supervisor frees it once the ring is drained. */
        cn_response_free(&w->res);
        wait_free(w);
        return;
    }
    if (!final) {
        /* Not decided in time: the client hears "retry", the key stays claimed until the
         * decision, and a retry then replays the record if it was stored. */
        if (!w->delivered) {
            cn_log_warn("%s: the record was not durable within the commit timeout; "
                        "answering 503", w->operation);
            cn_response_free(&w->res);
            deliver(w, CN_OUTCOME_FAILED, not_stored_problem(0), 0);
        }
        return;
    }
    if (status == -ENODATA)
        status = outcome_from_store(w);
    else if (status == 0 && w->appends && !w->d->claimer && w->d->store && outcome_from_store(w))
        /* A persister that died after writing the record and before acking it replays
         * it at restart and acks it as applied; a conflict is decided again then, and
         * only the store can tell which way. Nothing stored: it was refused. */
        status = CN_ECONFLICT;
    if (status && status != CN_ECONFLICT)
        cn_log_error("%s: the record could not be stored (%s)", w->operation,
                     cn_strerror(status));
    /* Not stored: the shared claim ends first, so a duplicate the table's release wakes
     * finds the key free (or, on another worker, is woken by its notification). */
    if (status)
        release_shared(w->d, w->skey, w->skeylen, w->owner);
    if (cn__inflight_release(w->d->inflight, &w->claim) == CN_ELOST && !status)
        cn_log_warn("%s: claim lost after its record was stored", w->operation);
    if (!w->delivered && status == CN_ECONFLICT && w->rerun_req && rerun(w) == 0) {
        cn_response_free(&w->res);
        wait_free(w);
        return;
    }
    if (!w->delivered) {
        if (status == CN_ECONFLICT && w->appends) {
            cn_response_free(&w->res);
            deliver(w, CN_OUTCOME_CONFLICT, conflict_problem(w), 0);
        } else if (status) {
            cn_response_free(&w->res);
            deliver(w, CN_OUTCOME_FAILED, not_stored_problem(status), 0);
        } else {
            deliver(w, CN_OUTCOME_EXECUTED, w->res, 1);
        }
    }
    wait_free(w);
}

/* Hands res to the committer for the owned key. On success the request is deferred:
 * commit_done finishes it. Returns 0, or a negative error with nothing submitted (res
 * and the claim are still the caller's). */
static int
store_response(cn_durable_t *d, const cn_route_t *route, const char *skey, size_t skeylen,
               cn_request_t *req, cn_response_t *res, const cn_claim_t *claim,
               const char *owner, cn_durable_result_t *out)
{
    uint64_t now = cn__clock_wall_ms();
    cn_record_t rec = {
        .status = (uint16_t)res->status,
        .created_ms = now,
        .expires_ms = now + (uint64_t)d->cfg->key_ttl_s * 1000u,
        .content_type = res->content_type,
        .content_type_len = res->content_type ? (uint32_t)strlen(res->content_type) : 0,
        .location = res->location,
        .location_len = res->location ? (uint32_t)strlen(res->location) : 0,
        .body = res->body,
        .body_len = (uint32_t)res->body_len,
    };
    cn_store_put_t item = {skey, skeylen, &rec, NULL, 0, NULL, 0, owner[0] ? owner : NULL};
    uint8_t evbuf[1024], *events = evbuf, *appends = NULL;
    commit_wait_t *w;
    int rc;

    char hbuf[CN_RECORD_HEADERS_MAX];
    size_t hlen = 0;

    if (res->body_len > CN_RECORD_FIELD_MAX)
        return CN_ETOOBIG;
    memcpy(rec.fingerprint, req->fingerprint, CN_SHA256_LEN);
    /* The headers the handler asked to store (cn_response_store_header bounds them). */
    for (size_t i = 0; i < res->nheaders; i++) {
        const cn_header_t *h = &res->headers[i];
        size_t n = strlen(h->name) + strlen(h->value) + 4;
        if (!h->stored)
            continue;
        if (hlen + n > sizeof(hbuf))
            return CN_ETOOBIG;
        hlen += (size_t)snprintf(hbuf + hlen, sizeof(hbuf) - hlen, "%s: %s\r\n", h->name,
                                 h->value);
    }
    rec.headers = hlen ? hbuf : NULL;
    rec.headers_len = (uint32_t)hlen;
    /* The events travel inside the record: stored with it, or not at all. */
    if (req->events) {
        size_t need = cn__events_encoded_size(req->events);
        if (need > sizeof(evbuf) && !(events = malloc(need)))
            return -ENOMEM;
        if ((rc = cn__events_encode(req->events, events, need, &item.events_len))) {
            if (events != evbuf)
                free(events);
            return rc;
        }
        item.events = events;
    }
    /* So do the stream appends: checked and written with it, or not at all. */
    if (req->appends) {
        size_t need = cn__appends_encoded_size(req->appends);
        if (!(appends = malloc(need)) ||
            (rc = cn__appends_encode(req->appends, appends, need, &item.appends_len))) {
            rc = appends ? rc : -ENOMEM;
            free(appends);
            if (events != evbuf)
                free(events);
            return rc;
        }
        item.appends = appends;
    }
    if (!(w = calloc(1, sizeof(*w)))) {
        free(appends);
        if (events != evbuf)
            free(events);
        return -ENOMEM;
    }
    /* The events are encoded into the record; the request's list is done with. */
    cn__events_free(req->events);
    req->events = NULL;
    req->events_tail = &req->events;
    if (req->appends_conditional) {
        /* Kept to name the stream in a conflict answer. */
        w->appends = appends;
        w->appends_len = item.appends_len;
        w->conflict_status = req->conflict_status;
        appends = NULL;
        if (req->reruns < req->reruns_allowed && req->http_handle) {
            w->rerun_req = req;
            w->rerun_route = route;
        }
    }
    w->d = d;
    memcpy(w->skey, skey, skeylen);
    w->skey[skeylen] = '\0';
    w->skeylen = skeylen;
    memcpy(w->fingerprint, req->fingerprint, CN_SHA256_LEN);
    w->operation = route->operation;
    w->op_index = route->op_index;
    w->claim = *claim;
    snprintf(w->owner, sizeof(w->owner), "%s", owner);
    w->handle = req->http_handle;
    w->waited = out->waited;
    if (d->cfg->durability == CN_DURABILITY_ASYNC && !w->appends) {
        /* Answered now; the claim is still held until the record is decided. The
         * record borrows the response's buffers only during the submit below. (Not
         * with an expected version: only the decision says whether it held.) */
        out->response = *res;
        out->outcome = CN_OUTCOME_EXECUTED;
        out->stored = 1;
        w->delivered = 1;
    } else {
        w->res = *res;
        out->deferred = 1;
    }
    rc = cn__committer_submit(d->committer, &item, commit_done, w);
    if (events != evbuf)
        free(events);
    free(appends); /* the kept copy, when there is one, is w's */
    if (rc) {
        /* Nothing was submitted: everything is the caller's again (the appends were
         * encoded and are gone with the request's list below). */
        out->deferred = 0;
        out->stored = 0;
        memset(&out->response, 0, sizeof(out->response));
        wait_free(w);
        return rc;
    }
    /* From here on neither w nor req may be touched: the commit may already have been
     * decided and the response delivered (the sync committer decides inside submit), and
     * delivering resumes the connection, whose request libmicrohttpd then frees. */
    memset(res, 0, sizeof(*res));
    return 0;
}

/* The handler's response (with its events) makes a record over the committer's limit.
 * Stores a 500 problem in its place as the key's final answer: the handler has run and
 * must not run again for this key, and its events are dropped with the response (they
 * were to be published only with it). Returns what store_response returns; on success
 * *res has been replaced and consumed. */
static int
store_too_big(cn_durable_t *d, const cn_route_t *route, const char *skey, size_t skeylen,
              cn_request_t *req, cn_response_t *res, const cn_claim_t *claim,
              const char *owner, cn_durable_result_t *out)
{
    size_t max = cn__committer_record_max(d->committer), body = res->body_len;
    cn_response_t problem_res;
    char detail[320];

    snprintf(detail, sizeof(detail),
             "The operation ran, but its response (%zu bytes of body, with its events) is "
             "too large to be stored: a durable route's stored record is limited to %zu "
             "bytes. This is the final answer for this Idempotency-Key; the operation is not "
             "run again for it", body, max);
    problem_res = cn__problem(500, CN_PROBLEM_RESPONSE_TOO_LARGE, detail);
    if (!problem_res.status)
        return -ENOMEM;
    cn_log_error("%s: the response (%zu bytes of body) makes a record over the %zu-byte "
                 "limit; storing a 500 problem as the final answer", route->operation, body,
                 max);
    cn__events_free(req->events);
    req->events = NULL;
    req->events_tail = &req->events;
    cn__appends_free(req->appends);
    req->appends = NULL;
    req->appends_tail = &req->appends;
    req->nappends = 0;
    req->appends_conditional = 0;
    cn_response_free(res);
    *res = problem_res;
    return store_response(d, route, skey, skeylen, req, res, claim, owner, out);
}

static int
handler_response_ok(const cn_response_t *res)
{
    return res->status >= 200 && res->status <= 599;
}

/* ---- one request, top to bottom ---- */

/* What admit establishes and every later step uses. */
typedef struct admitted {
    const cn_route_t *route;
    cn_request_t *req;
    char skey[CN_STORE_KEY_MAX + 1]; /* the store key: operation, scope, key */
    size_t skeylen;
    uint8_t slot_key[CN_SHA256_LEN]; /* its hash: the in-flight table's key */
    char owner[CN_CLAIM_OWNER_MAX];  /* a shared store: the claim it owns ("" none) */
} admitted_t;

/* A request waiting for a concurrent duplicate (or due for a rerun). */
typedef struct parked {
    struct parked *next;
    admitted_t a;
    uint64_t retry_at_ms; /* monotonic: decide again then at the latest */
    uint64_t gen;         /* d->wake_gen when it was last decided: a wake since makes it due */
    int waited;
} parked_t;

/* The request's fingerprint (reliability/fingerprint.h): a route of another method than
 * POST covers its request line too. */
static int
fingerprint(const cn_route_t *route, cn_request_t *req)
{
    const char *method = cn__method_name(route->method), *path = req->path ? req->path : "";
    size_t mlen = strlen(method), plen = strlen(path);
    char stackbuf[512], *target = stackbuf;
    int rc;

    if (route->method == CN_METHOD_POST)
        return cn__fingerprint(req->query, req->query_len, req->body, req->body_len,
                               req->fingerprint);
    if (mlen + 1 + plen > sizeof(stackbuf) && !(target = malloc(mlen + 1 + plen)))
        return -ENOMEM;
    memcpy(target, method, mlen);
    target[mlen] = ' ';
    memcpy(target + mlen + 1, path, plen);
    rc = cn__fingerprint_target(target, mlen + 1 + plen, req->query, req->query_len, req->body,
                                req->body_len, req->fingerprint);
    if (target != stackbuf)
        free(target);
    return rc;
}

/* Step 1. Checks the key and computes what identifies the request. Returns 0, or 1
 * after answering (400, 413, 500). */
static int
admit(cn_durable_t *d, const cn_route_t *route, cn_request_t *req, admitted_t *a,
      cn_durable_result_t *out)
{
    char principal[2 * PRINCIPAL_HASH_BYTES + 1];
    const char *raw = NULL, *why = NULL;
    size_t nkeys;
    int rc;

    a->route = route;
    a->req = req;
    a->owner[0] = '\0'; /* no shared claim yet */
    nkeys = cn__request_header_count(req, "Idempotency-Key", &raw);
    if (nkeys == 0)
        return !problem(out, CN_OUTCOME_INVALID, 400, CN_PROBLEM_KEY_MISSING,
                        "Missing Idempotency-Key header");
    if (nkeys > 1)
        return !problem(out, CN_OUTCOME_INVALID, 400, CN_PROBLEM_KEY_INVALID,
                        "Multiple Idempotency-Key headers; send exactly one");
    if (cn__key_parse(raw, strlen(raw), req->key, &req->key_len, &why))
        return !problem(out, CN_OUTCOME_INVALID, 400, CN_PROBLEM_KEY_INVALID, why);

    req->is_durable = 1;
    req->operation = route->operation;
    if (fingerprint(route, req))
        return !problem(out, CN_OUTCOME_FAILED, 500, CN_PROBLEM_HANDLER,
                        "The request fingerprint could not be computed");
    cn__hex(req->fingerprint, CN_SHA256_LEN, req->fingerprint_hex);

    if (d->cfg->principal_header[0]) {
        const char *who = NULL;
        uint8_t h[CN_SHA256_LEN];
        /* Two principals would make the scope depend on which one is read: refuse. */
        if (cn__request_header_count(req, d->cfg->principal_header, &who) > 1)
            return !problem(out, CN_OUTCOME_INVALID, 400, NULL,
                            "Multiple principal headers; send exactly one");
        if (cn__sha256(who ? who : "", who ? strlen(who) : 0, h))
            return !problem(out, CN_OUTCOME_FAILED, 500, CN_PROBLEM_HANDLER,
                            "The principal could not be hashed");
        cn__hex(h, PRINCIPAL_HASH_BYTES, principal);
    }
    rc = cn__store_key(a->skey, sizeof(a->skey), route->operation,
                       d->cfg->principal_header[0] ? principal : NULL, req->key, req->key_len,
                       &a->skeylen);
    CN_ASSERT(rc == 0); /* operation <= 64 and key <= 255 bytes always fit */

    /* A request whose body alone, returned as the response, would make a record over
     * the committer's limit can never get a stored answer: 413 before the handler runs
     * (the handler would run, then fail to store, on every retry). */
    if (d->committer) {
        cn_record_t probe = {.body_len = req->body_len > CN_RECORD_FIELD_MAX
                                             ? CN_RECORD_FIELD_MAX
                                             : (uint32_t)req->body_len};
        cn_store_put_t probe_item = {a->skey, a->skeylen, &probe, NULL, 0, NULL, 0, NULL};
        size_t max = cn__committer_record_max(d->committer);

        if (req->body_len > CN_RECORD_FIELD_MAX ||
            cn__committer_record_size(&probe_item) > max) {
            char detail[256];
            snprintf(detail, sizeof(detail),
                     "The request body (%zu bytes) is too large for a durable route: its "
                     "stored record (response, events, key) is limited to %zu bytes",
                     req->body_len, max);
            return !problem(out, CN_OUTCOME_INVALID, 413, CN_PROBLEM_BODY_TOO_LARGE, detail);
        }
    }
    if (cn__sha256(a->skey, a->skeylen, a->slot_key))
        return !problem(out, CN_OUTCOME_FAILED, 500, CN_PROBLEM_HANDLER,
                        "The request key could not be hashed");
    return 0;
}

static void
in_progress(cn_durable_result_t *out)
{
    /* The IETF draft's answer to a request in progress, a problem type of its own. */
    problem(out, CN_OUTCOME_CONFLICT, 409, CN_PROBLEM_IN_PROGRESS,
            "A request with this Idempotency-Key is still in progress; retry later");
    if (out->response.status && cn_response_add_header(&out->response, "Retry-After", "1"))
        cn_response_free(&out->response);
}

enum { DECIDED, OWNED, WAITING, CLAIM };

typedef struct cache_answer {
    const cn_durable_t *d;
    const cn_request_t *req;
    cn_durable_result_t *out;
    int answered;
} cache_answer_t;

/* The answer from a cached record, built under the cache's lock (replay copies what the
 * response keeps). */
static void
answer_from_copy(const uint8_t *record, size_t len, void *arg)
{
    cache_answer_t *c = arg;
    cn_record_t rec;

    if (cn__record_decode(record, len, &rec))
        return;
    if (memcmp(rec.fingerprint, c->req->fingerprint, CN_SHA256_LEN))
        reused(c->d, c->out);
    else
        replay(c->out, &rec);
    c->answered = 1;
}

/* Answers from the replay cache: 1 with a replay or a 409, 0 when the key is not there
 * (or its copy has expired). */
static int
cached(cn_durable_t *d, admitted_t *a, cn_durable_result_t *out)
{
    cache_answer_t c = {d, a->req, out, 0};

    if (!d->replays)
        return 0;
    cn__replay_cache_with(d->replays, a->skey, a->skeylen, cn__clock_wall_ms(),
                          answer_from_copy, &c);
    return c.answered;
}

/* How many times decide follows a claim that ended between its looks before it parks
 * the request (each round means another request finished or failed on the key). */
#define DECIDE_ROUNDS 16

/* Step 2. Look, claim, look again: a duplicate that finished between the first look and
 * the claim has stored its record by the time its claim is released. Never sleeps.
 * Returns DECIDED (out has the answer), OWNED (*claim is the caller's: run the handler),
 * WAITING (the key is held elsewhere: park until *retry_at_ms or a wake), or, with a
 * shared store, CLAIM (*claim is the caller's on this host: claim it in the database). */
static int
decide(cn_durable_t *d, admitted_t *a, cn_durable_result_t *out, cn_claim_t *claim,
       uint64_t *retry_at_ms)
{
    cn_request_t *req = a->req;

    for (unsigned round = 0; round < DECIDE_ROUNDS; round++) {
        /* A shared store is looked up by its claim, after the table's (and first in the
         * copies of its responses this worker has seen). */
        if (d->claimer ? cached(d, a, out) : lookup(d, a->skey, a->skeylen, req, out))
            return DECIDED;
        switch (cn__inflight_try(d->inflight, a->slot_key, req->fingerprint, d->cfg->lease_ms,
                                 claim, retry_at_ms)) {
        case CN_INFLIGHT_OWNED:
            if (d->claimer)
                return CLAIM;
            if (lookup(d, a->skey, a->skeylen, req, out)) {
                cn__inflight_release(d->inflight, claim);
                return DECIDED;
            }
            return OWNED;
        case CN_INFLIGHT_RELEASED:
            continue; /* its holder finished while we looked: look again */
        case CN_INFLIGHT_MISMATCH:
            reused(d, out);
            return DECIDED;
        case CN_INFLIGHT_PARK:
            if (cn__clock_mono_ms() >= req->inflight_deadline)
                break;
            if (*retry_at_ms > req->inflight_deadline)
                *retry_at_ms = req->inflight_deadline;
            return WAITING;
        default: /* BUSY (reject mode); TIMEOUT is acquire's, not try's */
            break;
        }
        in_progress(out);
        return DECIDED;
    }
    *retry_at_ms = cn__clock_mono_ms(); /* a busy key: look again on the next turn */
    return WAITING;
}

static void run_rest(cn_durable_t *d, admitted_t *a, cn_claim_t *claim, cn_response_t res,
                     cn_durable_result_t *out);

/* A request whose handler answers later (cn_later): what run_rest needs, kept in the
 * request itself (req->later_state). */
typedef struct later {
    cn_durable_t *d;
    admitted_t a;
    cn_claim_t claim;
    int waited;
} later_t;

_Static_assert(sizeof(later_t) <= CN_REQUEST_LATER_BYTES, "later_t fits req->later_state");

/* cn_request_answer's way back into the contract, on the answering thread. */
static void
answered(void *arg, cn_request_t *req, cn_response_t res)
{
    later_t *l = arg;
    cn_durable_t *d = l->d;
    cn_durable_result_t out = {.op_index = l->a.route->op_index, .waited = l->waited};
    void *handle = req->http_handle;

    run_rest(d, &l->a, &l->claim, res, &out);
    if (!out.deferred)
        d->deliver(d->deliver_arg, handle, &out);
}

/* Step 3 and 4. The caller owns the key: run the handler once, then store its response
 * (deferred: commit_done answers) or answer at once with what is not stored. A handler
 * that answers later leaves the request deferred: answered() goes on from here. */
static void
run(cn_durable_t *d, admitted_t *a, cn_claim_t *claim, cn_durable_result_t *out)
{
    const cn_route_t *route = a->route;
    cn_request_t *req = a->req;
    cn_response_t res = route->handler(req, route->ctx);

    if (req->later) {
        later_t *l = (later_t *)(void *)req->later_state;
        l->d = d;
        l->a = *a;
        l->claim = *claim;
        l->waited = out->waited;
        if (!cn__request_later_wait(req, answered, l, &res)) {
            out->deferred = 1;
            return;
        }
    }
    run_rest(d, a, claim, res, out);
}

/* What follows the handler: its response checked, stored or not, answered. */
static void
run_rest(cn_durable_t *d, admitted_t *a, cn_claim_t *claim, cn_response_t res,
         cn_durable_result_t *out)
{
    const cn_route_t *route = a->route;
    cn_request_t *req = a->req;
    int persist, rc;

    if (!handler_response_ok(&res)) {
        cn_log_error("%s handler returned an unusable response (status %d)", route->operation,
                     res.status);
        cn_response_free(&res);
        res = cn__problem(500, CN_PROBLEM_HANDLER, "The handler failed to build a response");
        persist = 0;
    } else if (req->events_failed) {
        /* An event or stream append the handler made could not be buffered (too big,
         * ill-formed UTF-8, ...): storing the response would record an operation whose
         * event never exists. Not stored, the key is free again; a 5xx of the handler
         * stands. */
        cn_log_error("%s: an event could not be emitted or appended (cn_emit or "
                     "cn_stream_append failed); the response is not stored",
                     route->operation);
        if (res.status < 500) {
            cn_response_free(&res);
            res = cn__problem(500, CN_PROBLEM_HANDLER,
                              "An event of this request could not be emitted or appended; "
                              "nothing was stored");
        }
        persist = 0;
    } else if (res.persist == CN_PERSIST_AUTO) {
        persist = cn__durable_status_stored(res.status);
    } else {
        persist = res.persist == CN_PERSIST_ALWAYS;
    }

    if ((persist && cn__inflight_commit(d->inflight, claim)) ||
        !cn__inflight_holds(d->inflight, claim)) {
        /* The handler ran past its lease and another request has taken the key over: it
         * runs (or ran) the operation again, so this response must neither be stored nor
         * sent as the operation's result. */
        cn_log_error("%s: the handler ran past its %u ms lease; its response is dropped",
                     route->operation, d->cfg->lease_ms);
        cn_response_free(&res);
        res = cn__problem(503, CN_PROBLEM_STORAGE,
                          "The request ran past its lease and was taken over; retry with "
                          "the same Idempotency-Key");
        persist = 0;
    } else if (persist) {
        rc = store_response(d, route, a->skey, a->skeylen, req, &res, claim, a->owner, out);
        if (rc == 0)
            return; /* deferred, or answered at once in async mode */
        if (rc == CN_ETOOBIG) {
            /* It can never be stored as it is: a final answer instead of a 503 that
             * would run the handler again on every retry. */
            rc = store_too_big(d, route, a->skey, a->skeylen, req, &res, claim, a->owner, out);
            if (rc == 0)
                return;
        }
        cn_log_error("storing %s failed: %s; answering 503", a->skey, cn_strerror(rc));
        cn_response_free(&res);
        res = not_stored_problem(rc);
        persist = 0;
    }
    release_shared(d, a->skey, a->skeylen, a->owner);
    cn__inflight_release(d->inflight, claim);
    cn__events_free(req->events);
    req->events = NULL;
    req->events_tail = &req->events;
    finish(out, res.status >= 500 ? CN_OUTCOME_FAILED : CN_OUTCOME_EXECUTED, res);
}

/* A request whose shared-store claim is being asked for (cn__durable_claimed takes it
 * on): the job comes first, so the claimer's list is a list of these. */
typedef struct claiming {
    cn_claim_job_t job;
    admitted_t a;
    cn_claim_t claim; /* this host's, held meanwhile */
    int waited;
    uint64_t gen; /* d->wake_gen before the claim was sent: a wake since makes it due */
} claiming_t;

static void
storage_unavailable(cn_durable_result_t *out)
{
    problem(out, CN_OUTCOME_FAILED, 503, CN_PROBLEM_STORAGE,
            "The idempotency store is unavailable; retry with the same Idempotency-Key");
    if (out->response.status && cn_response_add_header(&out->response, "Retry-After", "1"))
        cn_response_free(&out->response);
}

/* Hands the key (claimed on this host) to the claimer: the answer comes to
 * cn__durable_claimed. The request is deferred. */
static void
claim_shared(cn_durable_t *d, admitted_t *a, const cn_claim_t *claim, cn_durable_result_t *out)
{
    claiming_t *c = calloc(1, sizeof(*c));

    if (!c) {
        cn__inflight_release(d->inflight, claim);
        storage_unavailable(out);
        return;
    }
    c->a = *a;
    c->claim = *claim;
    c->waited = out->waited;
    memcpy(c->job.skey, a->skey, a->skeylen);
    c->job.skeylen = a->skeylen;
    memcpy(c->job.fingerprint, a->req->fingerprint, sizeof(c->job.fingerprint));
    snprintf(c->job.owner, sizeof(c->job.owner), "%s/%llu", d->owner_prefix,
             (unsigned long long)atomic_fetch_add(&d->owner_seq, 1) + 1);
    c->job.lease_ms = d->cfg->lease_ms;
    c->gen = atomic_load(&d->wake_gen);
    out->deferred = 1;
    cn__claimer_submit(d->claimer, &c->job);
}

/* Steps 2 to 4 for an admitted request: answers in *out, sets out->deferred (the
 * commit, or the shared claim, decides), or returns WAITING with *retry_at_ms. */
static int
proceed(cn_durable_t *d, admitted_t *a, cn_durable_result_t *out, uint64_t *retry_at_ms)
{
    cn_claim_t claim;
    int step = decide(d, a, out, &claim, retry_at_ms);

    if (step == OWNED)
        run(d, a, &claim, out);
    else if (step == CLAIM)
        claim_shared(d, a, &claim, out);
    return step == WAITING ? WAITING : DECIDED;
}

static void
parked_sub(cn_durable_t *d)
{
    atomic_fetch_sub(&d->nparked, 1);
    if (d->parked_gauge)
        atomic_fetch_sub(d->parked_gauge, 1);
}

static int
park(cn_durable_t *d, const cn_route_t *route, cn_request_t *req, const char *skey,
     size_t skeylen, uint64_t retry_at_ms, uint64_t gen, int waited)
{
    parked_t *p;

    if (!req->http_handle)
        return -EAGAIN; /* nowhere to deliver a later answer */
    if (atomic_fetch_add(&d->nparked, 1) >= d->max_parked) {
        atomic_fetch_sub(&d->nparked, 1);
        return -EAGAIN;
    }
    if (d->parked_gauge)
        atomic_fetch_add(d->parked_gauge, 1);
    if (!(p = calloc(1, sizeof(*p)))) {
        parked_sub(d);
        return -ENOMEM;
    }
    p->a.route = route;
    p->a.req = req;
    memcpy(p->a.skey, skey, skeylen);
    p->a.skey[skeylen] = '\0';
    p->a.skeylen = skeylen;
    if (cn__sha256(skey, skeylen, p->a.slot_key)) {
        free(p);
        parked_sub(d);
        return -EIO;
    }
    if (!req->inflight_deadline)
        req->inflight_deadline = cn__clock_mono_ms() + d->cfg->inflight_wait_ms;
    p->retry_at_ms = retry_at_ms;
    p->gen = gen;
    p->waited = waited;
    pthread_mutex_lock(&d->park_mu);
    p->next = d->parked;
    d->parked = p;
    pthread_mutex_unlock(&d->park_mu);
    return 0;
}

void
cn__durable_handle(cn_durable_t *d, const cn_route_t *route, cn_request_t *req,
                   cn_durable_result_t *out)
{
    admitted_t a;
    uint64_t retry_at, gen;

    memset(out, 0, sizeof(*out));
    out->op_index = route->op_index;
    if (admit(d, route, req, &a, out))
        return;
    req->inflight_deadline = cn__clock_mono_ms() + d->cfg->inflight_wait_ms;
    /* Read before deciding: a wake that comes while this request decides to wait (on
     * another loop, before it is parked) leaves it due at once. */
    gen = atomic_load(&d->wake_gen);
    if (proceed(d, &a, out, &retry_at) != WAITING)
        return;
    if (park(d, route, req, a.skey, a.skeylen, retry_at, gen, 0) == 0) {
        out->deferred = 1; /* cn__durable_wake answers it */
        out->waited = 1;
        return;
    }
    in_progress(out); /* no room to park: the answer a retry can act on */
}

void
cn__durable_wake(cn_durable_t *d, uint64_t now_ms, int all)
{
    unsigned budget;

    if (all)
        atomic_fetch_add(&d->wake_gen, 1);
    if (!(budget = atomic_load(&d->nparked)))
        return;
    while (budget--) {
        parked_t **pp, *p;
        cn_durable_result_t out;
        uint64_t retry_at, gen;

        pthread_mutex_lock(&d->park_mu);
        gen = atomic_load(&d->wake_gen);
        for (pp = &d->parked; (p = *pp); pp = &p->next) {
            if (p->gen != gen || p->retry_at_ms <= now_ms)
                break;
        }
        if (p)
            *pp = p->next;
        pthread_mutex_unlock(&d->park_mu);
        if (!p)
            return;
        memset(&out, 0, sizeof(out));
        out.op_index = p->a.route->op_index;
        out.waited = 1;
        if (proceed(d, &p->a, &out, &retry_at) == WAITING) {
            /* Not again in this call: a request whose holder is past its lease but
             * cannot be taken over (a colliding key) is decided again at most once a
             * millisecond. */
            p->retry_at_ms = retry_at > now_ms ? retry_at : now_ms + 1;
            p->gen = gen;
            pthread_mutex_lock(&d->park_mu);
            p->next = d->parked;
            d->parked = p;
            pthread_mutex_unlock(&d->park_mu);
            continue;
        }
        /* Deferred again: the request became the owner and its record is being
         * committed; commit_done delivers it. */
        if (!out.deferred)
            d->deliver(d->deliver_arg, p->a.req->http_handle, &out);
        parked_sub(d);
        free(p);
    }
}

uint64_t
cn__durable_next_wake_ms(cn_durable_t *d)
{
    uint64_t at = UINT64_MAX, gen;

    pthread_mutex_lock(&d->park_mu);
    gen = atomic_load(&d->wake_gen);
    for (parked_t *p = d->parked; p && at; p = p->next)
        at = p->gen != gen ? 0 : p->retry_at_ms < at ? p->retry_at_ms : at;
    pthread_mutex_unlock(&d->park_mu);
    return at;
}

unsigned
cn__durable_parked(cn_durable_t *d)
{
    return atomic_load(&d->nparked);
}

void
cn__durable_cancel_parked(cn_durable_t *d)
{
    parked_t *list, *p;

    pthread_mutex_lock(&d->park_mu);
    list = d->parked;
    d->parked = NULL;
    pthread_mutex_unlock(&d->park_mu);
    while ((p = list)) {
        cn_durable_result_t out = {.op_index = p->a.route->op_index, .waited = 1};
        list = p->next;
        problem(&out, CN_OUTCOME_FAILED, 503, CN_PROBLEM_STORAGE,
                "The server is stopping; retry with the same Idempotency-Key");
        if (out.response.status && cn_response_add_header(&out.response, "Retry-After", "1"))
            cn_response_free(&out.response);
        d->deliver(d->deliver_arg, p->a.req->http_handle, &out);
        parked_sub(d);
        free(p);
    }
}

/* One answered shared claim, on the way decide would have gone with it. */
static void
claimed_one(cn_durable_t *d, claiming_t *c)
{
    cn_durable_result_t out = {.op_index = c->a.route->op_index, .waited = c->waited};
    cn_pg_claim_t *pc = &c->job.claim;
    cn_request_t *req = c->a.req;

    if (c->job.rc == 0 &&
        (pc->state == CN_PG_CLAIM_OWNED || pc->state == CN_PG_CLAIM_TAKEN_OVER)) {
        memcpy(c->a.owner, c->job.owner, sizeof(c->a.owner));
        run(d, &c->a, &c->claim, &out);
    } else {
        /* Not ours: the key goes back to this host's table (waking its waiters here,
         * who ask the database in turn). */
        cn__inflight_release(d->inflight, &c->claim);
        if (c->job.rc) {
            storage_unavailable(&out);
        } else if (pc->state == CN_PG_CLAIM_STORED) {
            cn_record_t rec;
            if (cn__record_decode(pc->record, pc->record_len, &rec)) {
                storage_unavailable(&out);
            } else {
                if (d->replays) /* final until it expires: the next retry needs no trip */
                    cn__replay_cache_put(d->replays, c->a.skey, c->a.skeylen, pc->record,
                                         pc->record_len, rec.expires_ms);
                if (memcmp(rec.fingerprint, req->fingerprint, CN_SHA256_LEN))
                    reused(d, &out);
                else
                    replay(&out, &rec);
            }
        } else if (pc->state == CN_PG_CLAIM_HELD && !pc->same_fingerprint) {
            reused(d, &out);
        } else if (pc->state == CN_PG_CLAIM_HELD) {
            /* Another host runs it: wait for its notification, its lease end, or the next
             * poll, whichever comes first, within the request's own deadline. */
            uint64_t now = cn__clock_mono_ms(), wall = cn__clock_wall_ms();
            uint64_t left = pc->lease_until_ms > (int64_t)wall
                                ? (uint64_t)pc->lease_until_ms - wall + 1
                                : 1;
            uint64_t at = now + (left < CN_DURABLE_SHARED_POLL_MS ? left
                                                                  : CN_DURABLE_SHARED_POLL_MS);
            if (at > req->inflight_deadline)
                at = req->inflight_deadline;
            if (now < req->inflight_deadline &&
                park(d, c->a.route, req, c->a.skey, c->a.skeylen, at, c->gen, 1) == 0) {
                free(pc->record);
                free(c);
                return;
            }
            in_progress(&out);
        } else {
            storage_unavailable(&out); /* AGAIN twice in a row: a key churning */
        }
    }
    free(pc->record);
    if (!out.deferred)
        d->deliver(d->deliver_arg, req->http_handle, &out);
    free(c);
}

void
cn__durable_claimed(cn_durable_t *d)
{
    cn_claim_job_t *list, *job;

    if (!d->claimer)
        return;
    for (list = cn__claimer_take(d->claimer); (job = list);) {
        list = job->next;
        claimed_one(d, (claiming_t *)job);
    }
}

void
cn__durable_drop_claims(cn_durable_t *d, cn_claim_job_t *left)
{
    cn_claim_job_t *job;

    while ((job = left)) {
        claiming_t *c = (claiming_t *)job;
        left = job->next;
        cn__inflight_release(d->inflight, &c->claim);
        if (job->rc == 0 &&
            (job->claim.state == CN_PG_CLAIM_OWNED || job->claim.state == CN_PG_CLAIM_TAKEN_OVER))
            cn_log_warn("stopping with a claim on %s never run: it ends with its lease",
                        c->a.skey);
        free(job->claim.record);
        free(c);
    }
}
