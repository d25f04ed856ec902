/*
 * tests/unit/test_outbox_policy.c - the outbox's retry policy (outbox/policy.c and the
 * policy part of cnerium/outbox.h): defaults and their validation, the capped exponential
 * backoff with full jitter, what each answer means (Done, retried, Failed), max_attempts,
 * Retry-After in its three forms, and the request-in-progress problem.
 *
 * Everything here is pure: no files, no threads, no clock; `now` and the jitter draw are
 * arguments, so every expected value is exact.
 */
#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "cnerium/error.h"
#include "cnerium/outbox.h"
#include "outbox/policy.h"
#include "unit.h"

/* 2023-11-14T22:13:20Z, a Tuesday. */
#define NOW_MS INT64_C(1700000000000)

#define IN_PROGRESS_CT "application/problem+json"
/* The body a Cnerium server sends (http/problem.h): "type" is not the first member. */
#define IN_PROGRESS_BODY                                                                           \
    "{\"error\":\"a request with this key is still running\","                                     \
    "\"type\":\"urn:cnerium:problem:request-in-progress\",\"title\":\"Conflict\","                 \
    "\"status\":409,\"detail\":\"a request with this key is still running\"}"
#define KEY_REUSED_BODY                                                                            \
    "{\"error\":\"the key was used with another request\","                                        \
    "\"type\":\"urn:cnerium:problem:idempotency-key-reused\",\"title\":\"Conflict\","              \
    "\"status\":409,\"detail\":\"the key was used with another request\"}"

static cn_outbox_policy_t
no_jitter(void)
{
    cn_outbox_policy_t p;

    cn_outbox_policy_default(&p);
    p.jitter = 0;
    return p;
}

static cn__outbox_answer_t
http_answer(int status)
{
    cn__outbox_answer_t a;

    memset(&a, 0, sizeof(a));
    a.http_status = status;
    return a;
}

static cn__outbox_answer_t
transport_answer(int curl_code, int connect_failed, const char *message)
{
    cn__outbox_answer_t a;

    memset(&a, 0, sizeof(a));
    a.transport_error = curl_code;
    a.connect_failed = connect_failed;
    a.transport_message = message;
    return a;
}

/* Runs cn__outbox_decide on an output pre-filled with garbage, and checks what holds for
 * every decision: the error text is NUL-terminated within its array. */
static cn__outbox_decision_t
decide(const cn_outbox_policy_t *p, const cn__outbox_answer_t *a, uint32_t attempt, int64_t now,
       uint64_t random)
{
    cn__outbox_decision_t d;

    memset(&d, 0x7e, sizeof(d));
    cn__outbox_decide(p, a, attempt, now, random, &d);
    CU_ASSERT_PTR_NOT_NULL(memchr(d.error, '\0', sizeof(d.error)));
    d.error[sizeof(d.error) - 1] = '\0';
    return d;
}

/* A decision of DONE: no error text. */
static void
expect_done(const cn_outbox_policy_t *p, const cn__outbox_answer_t *a, uint32_t attempt)
{
    cn__outbox_decision_t d = decide(p, a, attempt, NOW_MS, 12345);

    CU_ASSERT_EQUAL(d.verdict, CN__OUTBOX_DONE);
    CU_ASSERT_STRING_EQUAL(d.error, "");
}

/* A decision of FAIL whose error text contains `names`. */
static void
expect_fail(const cn_outbox_policy_t *p, const cn__outbox_answer_t *a, uint32_t attempt,
            const char *names)
{
    cn__outbox_decision_t d = decide(p, a, attempt, NOW_MS, 12345);

    CU_ASSERT_EQUAL(d.verdict, CN__OUTBOX_FAIL);
    CU_ASSERT_PTR_NOT_NULL(strstr(d.error, names));
    if (d.verdict != CN__OUTBOX_FAIL || !strstr(d.error, names))
        fprintf(stderr, "  status %d / transport %d at attempt %u: verdict %d, error \"%s\"\n",
                a->http_status, a->transport_error, attempt, (int)d.verdict, d.error);
}

/* A decision of RETRY due exactly at want_at, whose error text contains `names`. */
static void
expect_retry_at(const cn_outbox_policy_t *p, const cn__outbox_answer_t *a, uint32_t attempt,
                uint64_t random, int64_t want_at, const char *names)
{
    cn__outbox_decision_t d = decide(p, a, attempt, NOW_MS, random);

    CU_ASSERT_EQUAL(d.verdict, CN__OUTBOX_RETRY);
    CU_ASSERT_EQUAL(d.next_attempt_at, want_at);
    CU_ASSERT_PTR_NOT_NULL(strstr(d.error, names));
    if (d.verdict != CN__OUTBOX_RETRY || d.next_attempt_at != want_at || !strstr(d.error, names))
        fprintf(stderr,
                "  status %d / transport %d at attempt %u: verdict %d, next %lld (want "
                "%lld), error \"%s\"\n",
                a->http_status, a->transport_error, attempt, (int)d.verdict,
                (long long)d.next_attempt_at, (long long)want_at, d.error);
}

/* ---- names, defaults, validation ---------------------------------------------------- */

static void
test_status_names(void)
{
    static const char *names[] = {"pending", "inflight", "done", "failed"};
    cn_outbox_status_t st;

    for (int i = 0; i < CN_OUTBOX_STATUS_COUNT; i++) {
        CU_ASSERT_PTR_NOT_NULL_FATAL(cn_outbox_status_name((cn_outbox_status_t)i));
        CU_ASSERT_STRING_EQUAL(cn_outbox_status_name((cn_outbox_status_t)i), names[i]);
        st = (cn_outbox_status_t)99;
        CU_ASSERT_EQUAL(cn_outbox_status_parse(names[i], &st), 0);
        CU_ASSERT_EQUAL(st, (cn_outbox_status_t)i);
    }
    CU_ASSERT_PTR_NULL(cn_outbox_status_name((cn_outbox_status_t)CN_OUTBOX_STATUS_COUNT));
    CU_ASSERT_PTR_NULL(cn_outbox_status_name((cn_outbox_status_t)-1));
    st = (cn_outbox_status_t)99;
    CU_ASSERT_EQUAL(cn_outbox_status_parse("finished", &st), -EINVAL);
    CU_ASSERT_EQUAL(cn_outbox_status_parse("", &st), -EINVAL);
    CU_ASSERT_EQUAL(cn_outbox_status_parse("pendingx", &st), -EINVAL);
    CU_ASSERT_EQUAL(st, (cn_outbox_status_t)99);
}

static void
test_policy_defaults(void)
{
    cn_outbox_policy_t p;
    cn_outbox_config_t c;
    const char *why = "untouched";

    memset(&p, 0xa5, sizeof(p));
    cn_outbox_policy_default(&p);
    CU_ASSERT_EQUAL(p.max_attempts, 8);
    CU_ASSERT_EQUAL(p.base_delay_ms, 500);
    CU_ASSERT_DOUBLE_EQUAL(p.factor, 2.0, 0.0);
    CU_ASSERT_EQUAL(p.max_delay_ms, 60000);
    CU_ASSERT_EQUAL(p.jitter, 1);
    CU_ASSERT_EQUAL(p.max_retry_after_ms, 3600u * 1000u);
    CU_ASSERT_EQUAL(cn_outbox_policy_check(&p, &why), 0);

    memset(&c, 0xa5, sizeof(c));
    cn_outbox_config_default(&c);
    CU_ASSERT_EQUAL(c.retry.max_attempts, p.max_attempts);
    CU_ASSERT_EQUAL(c.retry.base_delay_ms, p.base_delay_ms);
    CU_ASSERT_DOUBLE_EQUAL(c.retry.factor, p.factor, 0.0);
    CU_ASSERT_EQUAL(c.retry.max_delay_ms, p.max_delay_ms);
    CU_ASSERT_EQUAL(c.retry.jitter, p.jitter);
    CU_ASSERT_EQUAL(c.retry.max_retry_after_ms, p.max_retry_after_ms);
    CU_ASSERT_EQUAL(c.batch_limit, 64);
    CU_ASSERT_EQUAL(c.max_parallel, 16);
    CU_ASSERT_EQUAL(c.fifo_per_target, 0);
    CU_ASSERT_EQUAL(c.request_timeout_ms, 30000);
    CU_ASSERT_EQUAL(c.connect_timeout_ms, 5000);
    /* request_timeout_ms + 30000, or 0 standing for it (derived when the outbox opens). */
    CU_ASSERT(c.lease_ms == 30000u + 30000u || c.lease_ms == 0);
    CU_ASSERT_EQUAL(c.done_retention_ms, UINT64_C(7) * 24 * 3600 * 1000);
    CU_ASSERT_EQUAL(c.map_size, UINT64_C(1) << 30);
    CU_ASSERT_PTR_NULL(c.probe);
    CU_ASSERT_PTR_NULL(c.probe_ctx);
}

/* A policy with one bad field is refused with a reason that names the field. */
static void
expect_bad_policy(const cn_outbox_policy_t *p, const char *field)
{
    const char *why = NULL;

    CU_ASSERT_EQUAL(cn_outbox_policy_check(p, &why), -EINVAL);
    CU_ASSERT_PTR_NOT_NULL(why);
    if (why) {
        CU_ASSERT_PTR_NOT_NULL(strstr(why, field));
        if (!strstr(why, field))
            fprintf(stderr, "  bad %s refused because \"%s\"\n", field, why);
    } else {
        fprintf(stderr, "  bad %s: accepted or no reason given\n", field);
    }
}

static void
test_policy_check(void)
{
    cn_outbox_policy_t p;
    const char *why = NULL;

    p = no_jitter();
    p.max_attempts = 0;
    expect_bad_policy(&p, "max_attempts");

    p = no_jitter();
    p.factor = 0.5;
    expect_bad_policy(&p, "factor");
    p.factor = 0.0;
    expect_bad_policy(&p, "factor");
    p.factor = -2.0;
    expect_bad_policy(&p, "factor");
    p.factor = nan("");
    expect_bad_policy(&p, "factor");

    /* The edges that are allowed. */
    p = no_jitter();
    p.max_attempts = 1;
    p.factor = 1.0;
    CU_ASSERT_EQUAL(cn_outbox_policy_check(&p, &why), 0);
    p.max_attempts = UINT32_MAX;
    p.base_delay_ms = 0;
    p.max_delay_ms = UINT32_MAX;
    p.max_retry_after_ms = 0;
    CU_ASSERT_EQUAL(cn_outbox_policy_check(&p, &why), 0);
}

/* ---- backoff ------------------------------------------------------------------------ */

static void
test_backoff_exponential(void)
{
    cn_outbox_policy_t p = no_jitter();
    static const uint64_t want[] = {500, 1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000};

    /* base * factor^(attempt-1), capped at max_delay_ms; with no jitter the random draw
     * does not matter. */
    for (uint32_t a = 1; a <= sizeof(want) / sizeof(want[0]); a++) {
        CU_ASSERT_EQUAL(cn_outbox_backoff_ms(&p, a, 0), want[a - 1]);
        CU_ASSERT_EQUAL(cn_outbox_backoff_ms(&p, a, UINT64_MAX), want[a - 1]);
        CU_ASSERT_EQUAL(cn_outbox_backoff_ms(&p, a, 0x123456789abcdefull), want[a - 1]);
    }

    p.base_delay_ms = 1000;
    p.factor = 1.5;
    p.max_delay_ms = 5000;
    CU_ASSERT_EQUAL(cn_outbox_backoff_ms(&p, 1, 0), 1000);
    CU_ASSERT_EQUAL(cn_outbox_backoff_ms(&p, 2, 0), 1500);
    CU_ASSERT_EQUAL(cn_outbox_backoff_ms(&p, 3, 0), 2250);
    CU_ASSERT_EQUAL(cn_outbox_backoff_ms(&p, 4, 0), 3375);
    CU_ASSERT_EQUAL(cn_outbox_backoff_ms(&p, 5, 0), 5000); /* 5062.5, capped */

    /* factor 1: constant. */
    p.factor = 1.0;
    for (uint32_t a = 1; a < 100; a += 7)
        CU_ASSERT_EQUAL(cn_outbox_backoff_ms(&p, a, 0), 1000);

    /* base 0: no wait at all, even where factor^(attempt-1) is infinite (0 * inf). */
    p.base_delay_ms = 0;
    p.factor = 3.0;
    CU_ASSERT_EQUAL(cn_outbox_backoff_ms(&p, 1, 0), 0);
    CU_ASSERT_EQUAL(cn_outbox_backoff_ms(&p, 40, 0), 0);
    p.factor = DBL_MAX;
    CU_ASSERT_EQUAL(cn_outbox_backoff_ms(&p, 3, 0), 0);
    CU_ASSERT_EQUAL(cn_outbox_backoff_ms(&p, 1000, 0), 0);
    /* An unchecked policy (cn_outbox_policy_check refuses factor > 1000) must still give a
     * number within the cap: 0 * inf is NaN, and converting NaN to an integer is UB. */
    p.factor = INFINITY;
    CU_ASSERT(cn_outbox_backoff_ms(&p, 2, 0) <= p.max_delay_ms);
    CU_ASSERT(cn_outbox_backoff_ms(&p, 1000, 0) <= p.max_delay_ms);
    p.jitter = 1;
    CU_ASSERT(cn_outbox_backoff_ms(&p, 2, UINT64_MAX) <= p.max_delay_ms);
    p.jitter = 0;

    /* A cap below the base: the cap wins. */
    p.base_delay_ms = 5000;
    p.factor = 2.0;
    p.max_delay_ms = 1000;
    CU_ASSERT_EQUAL(cn_outbox_backoff_ms(&p, 1, 0), 1000);
    CU_ASSERT_EQUAL(cn_outbox_backoff_ms(&p, 3, 0), 1000);
}

static void
test_backoff_no_overflow(void)
{
    cn_outbox_policy_t p = no_jitter();
    static const double factors[] = {1.0, 1.0000001, 2.0, 10.0, 1e10, 1e300, DBL_MAX, INFINITY};
    /* UINT32_MAX with factor 1 (the cap never reached) also guards against a backoff
     * that loops once per attempt. */
    static const uint32_t attempts[] = {1, 2, 31, 32, 33, 63, 64, 65, 1000, 1u << 20, UINT32_MAX};

    /* Every combination stays at or under the cap and reaches it when it should. */
    p.base_delay_ms = UINT32_MAX;
    p.max_delay_ms = UINT32_MAX;
    for (size_t f = 0; f < sizeof(factors) / sizeof(factors[0]); f++) {
        p.factor = factors[f];
        for (size_t i = 0; i < sizeof(attempts) / sizeof(attempts[0]); i++)
            CU_ASSERT_EQUAL(cn_outbox_backoff_ms(&p, attempts[i], 0), UINT32_MAX);
    }

    p.base_delay_ms = 1;
    p.max_delay_ms = 60000;
    for (size_t f = 0; f < sizeof(factors) / sizeof(factors[0]); f++) {
        p.factor = factors[f];
        for (size_t i = 0; i < sizeof(attempts) / sizeof(attempts[0]); i++) {
            uint64_t d = cn_outbox_backoff_ms(&p, attempts[i], 0);

            CU_ASSERT(d >= 1 && d <= 60000);
            if (factors[f] >= 2.0 && attempts[i] >= 17)
                CU_ASSERT_EQUAL(d, 60000);
        }
    }

    /* Powers of two right at the edges of 2^32 and 2^64 milliseconds. */
    p.base_delay_ms = 1;
    p.factor = 2.0;
    p.max_delay_ms = UINT32_MAX;
    CU_ASSERT_EQUAL(cn_outbox_backoff_ms(&p, 32, 0), UINT64_C(1) << 31);
    CU_ASSERT_EQUAL(cn_outbox_backoff_ms(&p, 33, 0), UINT32_MAX);
    CU_ASSERT_EQUAL(cn_outbox_backoff_ms(&p, 65, 0), UINT32_MAX);
    CU_ASSERT_EQUAL(cn_outbox_backoff_ms(&p, 66, 0), UINT32_MAX);
}

static void
test_backoff_jitter(void)
{
    cn_outbox_policy_t p;
    static const uint64_t draws[] = {0,
                                     1,
                                     UINT64_C(1) << 32,
                                     UINT64_C(1) << 62,
                                     UINT64_C(1) << 63,
                                     (UINT64_C(1) << 63) + (UINT64_C(1) << 62),
                                     UINT64_MAX - 1,
                                     UINT64_MAX};

    cn_outbox_policy_default(&p);
    CU_ASSERT_EQUAL_FATAL(p.jitter, 1);
    for (uint32_t a = 1; a <= 12; a++) {
        cn_outbox_policy_t q = p;
        uint64_t cap, prev = 0;

        q.jitter = 0;
        cap = cn_outbox_backoff_ms(&q, a, 0);

        /* The extremes of the draw: 0 and (nearly) the capped backoff. */
        CU_ASSERT_EQUAL(cn_outbox_backoff_ms(&p, a, 0), 0);
        CU_ASSERT(cn_outbox_backoff_ms(&p, a, UINT64_MAX) + 1 >= cap);
        CU_ASSERT(cn_outbox_backoff_ms(&p, a, UINT64_MAX) <= cap);
        /* Half the range gives half the backoff (within a millisecond). */
        CU_ASSERT(cn_outbox_backoff_ms(&p, a, UINT64_C(1) << 63) + 1 >= cap / 2);
        CU_ASSERT(cn_outbox_backoff_ms(&p, a, UINT64_C(1) << 63) <= cap / 2 + 1);

        /* A scaling of the draw: monotonic, within [0, cap], and pure. */
        for (size_t i = 0; i < sizeof(draws) / sizeof(draws[0]); i++) {
            uint64_t d = cn_outbox_backoff_ms(&p, a, draws[i]);

            CU_ASSERT(d <= cap);
            CU_ASSERT(d >= prev);
            CU_ASSERT_EQUAL(cn_outbox_backoff_ms(&p, a, draws[i]), d);
            prev = d;
        }
    }

    /* A pseudo-random sweep, huge attempts included: always within [0, max_delay_ms]. */
    {
        uint64_t x = 0x9e3779b97f4a7c15ull;

        p.max_delay_ms = 250000;
        for (int i = 0; i < 20000; i++) {
            uint32_t a;

            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            a = (uint32_t)(x >> 40) % 200 + 1;
            if (i % 97 == 0)
                a = UINT32_MAX - (uint32_t)(x & 3);
            CU_ASSERT(cn_outbox_backoff_ms(&p, a, x) <= 250000);
        }
    }
}

/* ---- what answers mean -------------------------------------------------------------- */

static void
test_decide_done(void)
{
    cn_outbox_policy_t p = no_jitter();
    static const int statuses[] = {200, 201, 202, 204, 206, 299, 300,
                                   301, 302, 303, 304, 307, 308, 399};

    for (size_t i = 0; i < sizeof(statuses) / sizeof(statuses[0]); i++) {
        cn__outbox_answer_t a = http_answer(statuses[i]);

        expect_done(&p, &a, 1);
        /* Done is Done at the last allowed try too, and past it. */
        expect_done(&p, &a, p.max_attempts);
        expect_done(&p, &a, p.max_attempts + 5);
    }
    /* A body, a content type and a Retry-After change nothing for a success. */
    {
        cn__outbox_answer_t a = http_answer(201);

        a.retry_after = "120";
        a.content_type = IN_PROGRESS_CT;
        a.body = IN_PROGRESS_BODY;
        a.body_len = sizeof(IN_PROGRESS_BODY) - 1;
        expect_done(&p, &a, 1);
    }
}

static void
test_decide_permanent(void)
{
    cn_outbox_policy_t p = no_jitter();
    static const int statuses[] = {400, 401, 402, 403, 404, 405, 406, 410, 411, 412, 413,
                                   414, 415, 418, 421, 422, 426, 428, 431, 451, 499};
    char name[16];

    /* Failed after ONE try, with attempts to spare. */
    CU_ASSERT_FATAL(p.max_attempts > 1);
    for (size_t i = 0; i < sizeof(statuses) / sizeof(statuses[0]); i++) {
        cn__outbox_answer_t a = http_answer(statuses[i]);

        snprintf(name, sizeof(name), "%d", statuses[i]);
        expect_fail(&p, &a, 1, name);
        /* A Retry-After does not make a permanent failure retryable. */
        a.retry_after = "1";
        expect_fail(&p, &a, 1, name);
    }

    /* 409 is permanent unless it is the in-progress problem. */
    {
        cn__outbox_answer_t a = http_answer(409);

        expect_fail(&p, &a, 1, "409");
        a.content_type = IN_PROGRESS_CT;
        a.body = KEY_REUSED_BODY;
        a.body_len = sizeof(KEY_REUSED_BODY) - 1;
        expect_fail(&p, &a, 1, "409");
        a.content_type = "application/json";
        a.body = "{\"error\":\"conflict\"}";
        a.body_len = strlen(a.body);
        expect_fail(&p, &a, 1, "409");
    }
}

static void
test_decide_retryable(void)
{
    cn_outbox_policy_t p = no_jitter();
    static const int statuses[] = {408, 425, 429};
    char name[16];

    for (size_t i = 0; i < sizeof(statuses) / sizeof(statuses[0]); i++) {
        cn__outbox_answer_t a = http_answer(statuses[i]);

        snprintf(name, sizeof(name), "%d", statuses[i]);
        for (uint32_t at = 1; at < p.max_attempts; at++)
            expect_retry_at(&p, &a, at, 0, NOW_MS + (int64_t)cn_outbox_backoff_ms(&p, at, 0), name);
    }
    for (int s = 500; s <= 599; s++) {
        cn__outbox_answer_t a = http_answer(s);

        snprintf(name, sizeof(name), "%d", s);
        expect_retry_at(&p, &a, 1, 0, NOW_MS + 500, name);
        expect_retry_at(&p, &a, 3, 0, NOW_MS + 2000, name);
    }

    /* With jitter the delay is the backoff drawn with the same random value. */
    {
        cn_outbox_policy_t j;
        cn__outbox_answer_t a = http_answer(503);
        static const uint64_t draws[] = {0, 1, UINT64_C(1) << 63, 0xdeadbeefcafef00dull,
                                         UINT64_MAX};

        cn_outbox_policy_default(&j);
        for (size_t i = 0; i < sizeof(draws) / sizeof(draws[0]); i++) {
            for (uint32_t at = 1; at < j.max_attempts; at++) {
                int64_t want = NOW_MS + (int64_t)cn_outbox_backoff_ms(&j, at, draws[i]);

                expect_retry_at(&j, &a, at, draws[i], want, "503");
            }
        }
    }
}

static void
test_decide_transport(void)
{
    cn_outbox_policy_t p = no_jitter();
    static const char refused[] =
        "Failed to connect to 127.0.0.1 port 9 after 0 ms: Connection refused";
    static const char timeout[] = "Operation timed out after 30000 milliseconds";

    /* Connection refused (CURLE_COULDNT_CONNECT), a timeout (CURLE_OPERATION_TIMEDOUT), a
     * reset while receiving (CURLE_RECV_ERROR), an empty reply (CURLE_GOT_NOTHING). */
    {
        cn__outbox_answer_t a = transport_answer(7, 1, refused);

        expect_retry_at(&p, &a, 1, 0, NOW_MS + 500, refused);
        expect_retry_at(&p, &a, 2, 0, NOW_MS + 1000, refused);
    }
    {
        cn__outbox_answer_t a = transport_answer(28, 0, timeout);

        expect_retry_at(&p, &a, 1, 0, NOW_MS + 500, timeout);
    }
    {
        cn__outbox_answer_t a = transport_answer(56, 0, NULL);
        cn__outbox_decision_t d = decide(&p, &a, 1, NOW_MS, 0);

        /* No message: still a retry, still an error text. */
        CU_ASSERT_EQUAL(d.verdict, CN__OUTBOX_RETRY);
        CU_ASSERT_EQUAL(d.next_attempt_at, NOW_MS + 500);
        CU_ASSERT(d.error[0] != '\0');
    }
    {
        cn__outbox_answer_t a = transport_answer(52, 0, "Empty reply from server");

        /* A stale status from a previous answer does not count: the transport failed. */
        a.http_status = 400;
        expect_retry_at(&p, &a, 1, 0, NOW_MS + 500, "Empty reply from server");
        a.http_status = 200;
        expect_retry_at(&p, &a, 1, 0, NOW_MS + 500, "Empty reply from server");
    }
    /* At the last allowed try a transport error is Failed, its message kept; a
     * connection that could not be made is not (nothing reached the server). */
    {
        cn__outbox_answer_t a = transport_answer(28, 0, timeout);

        expect_fail(&p, &a, p.max_attempts, timeout);
        a = transport_answer(7, 1, refused);
        expect_retry_at(&p, &a, p.max_attempts, 0, NOW_MS + 60000, refused);
    }
    /* A message longer than the error text is cut, NUL-terminated (decide checks). */
    {
        char big[2000];
        cn__outbox_answer_t a;
        cn__outbox_decision_t d;

        memset(big, 'm', sizeof(big) - 1);
        big[sizeof(big) - 1] = '\0';
        a = transport_answer(7, 1, big);
        d = decide(&p, &a, 1, NOW_MS, 0);
        CU_ASSERT_EQUAL(d.verdict, CN__OUTBOX_RETRY);
        CU_ASSERT(strlen(d.error) > 0 && strlen(d.error) < sizeof(d.error));
    }
}

static void
test_decide_in_progress(void)
{
    cn_outbox_policy_t p = no_jitter();
    cn__outbox_answer_t a = http_answer(409);

    a.content_type = IN_PROGRESS_CT;
    a.body = IN_PROGRESS_BODY;
    a.body_len = sizeof(IN_PROGRESS_BODY) - 1;
    expect_retry_at(&p, &a, 1, 0, NOW_MS + 500, "409");
    expect_retry_at(&p, &a, 2, 0, NOW_MS + 1000, "409");
    expect_fail(&p, &a, p.max_attempts, "409");

    /* The same body on another status is that status's verdict. */
    a.http_status = 400;
    expect_fail(&p, &a, 1, "400");
    a.http_status = 200;
    expect_done(&p, &a, 1);
}

static void
test_max_attempts(void)
{
    cn_outbox_policy_t p = no_jitter();
    cn__outbox_answer_t a = http_answer(503);
    cn__outbox_answer_t r = transport_answer(56, 0, "Connection reset by peer");
    cn__outbox_answer_t refused = transport_answer(7, 1, "Connection refused");

    /* Tries 1 and 2 are retried, try 3 (== max_attempts) is Failed with the last error
     * kept, and so is anything past it. */
    p.max_attempts = 3;
    expect_retry_at(&p, &a, 1, 0, NOW_MS + 500, "503");
    expect_retry_at(&p, &a, 2, 0, NOW_MS + 1000, "503");
    expect_fail(&p, &a, 3, "503");
    expect_fail(&p, &a, 4, "503");
    expect_fail(&p, &a, UINT32_MAX, "503");
    expect_fail(&p, &r, 3, "Connection reset");
    /* No connection could be made: not the operation's failure, never final (the worker
     * backs the origin off and gives the attempt back). */
    expect_retry_at(&p, &refused, 3, 0, NOW_MS + 2000, "Connection refused");
    expect_retry_at(&p, &refused, UINT32_MAX, 0, NOW_MS + p.max_delay_ms, "Connection refused");

    /* A Retry-After does not buy a try beyond max_attempts. */
    a.retry_after = "1";
    expect_fail(&p, &a, 3, "503");

    /* max_attempts 1: the first retryable failure is final. */
    p.max_attempts = 1;
    a.retry_after = NULL;
    expect_fail(&p, &a, 1, "503");
    a = http_answer(429);
    expect_fail(&p, &a, 1, "429");
    expect_fail(&p, &r, 1, "Connection reset");
    expect_retry_at(&p, &refused, 1, 0, NOW_MS + 500, "Connection refused");
    a = http_answer(200);
    expect_done(&p, &a, 1);
}

/* ---- Retry-After -------------------------------------------------------------------- */

static void
test_decide_retry_after(void)
{
    cn_outbox_policy_t p;
    cn__outbox_answer_t a = http_answer(503);

    cn_outbox_policy_default(&p); /* with jitter: Retry-After replaces the draw */

    /* delay-seconds, larger and smaller than the backoff. */
    a.retry_after = "7";
    expect_retry_at(&p, &a, 1, UINT64_MAX, NOW_MS + 7000, "503");
    a.retry_after = "0";
    expect_retry_at(&p, &a, 5, UINT64_MAX, NOW_MS, "503");
    /* An IMF-fixdate 30 s ahead. */
    a.retry_after = "Tue, 14 Nov 2023 22:13:50 GMT";
    expect_retry_at(&p, &a, 1, 0, NOW_MS + 30000, "503");
    /* A date in the past: due now. */
    a.retry_after = "Tue, 14 Nov 2023 22:00:00 GMT";
    expect_retry_at(&p, &a, 1, 0, NOW_MS, "503");
    a.retry_after = "Thu, 01 Jan 1970 00:00:00 GMT";
    expect_retry_at(&p, &a, 1, 0, NOW_MS, "503");
    /* Huge values are capped at max_retry_after_ms. */
    a.retry_after = "99999999";
    expect_retry_at(&p, &a, 1, 0, NOW_MS + 3600000, "503");
    a.retry_after = "184467440737095516160000";
    expect_retry_at(&p, &a, 1, 0, NOW_MS + 3600000, "503");
    a.retry_after = "Fri, 31 Dec 9999 23:59:59 GMT";
    expect_retry_at(&p, &a, 1, 0, NOW_MS + 3600000, "503");
    p.max_retry_after_ms = 5000;
    a.retry_after = "7";
    expect_retry_at(&p, &a, 1, 0, NOW_MS + 5000, "503");
    p.max_retry_after_ms = 3600000;

    /* Garbage is ignored: the backoff drawn with `random` applies. */
    {
        static const char *junk[] = {"",
                                     "soon",
                                     "-5",
                                     "5.5",
                                     "1e3",
                                     "0x10",
                                     "7 seconds",
                                     "Tue, 14 Nov 2023",
                                     "Tue, 14 Nov 2023 25:61:00 GMT"};
        uint64_t draw = UINT64_C(1) << 63;

        for (size_t i = 0; i < sizeof(junk) / sizeof(junk[0]); i++) {
            a.retry_after = junk[i];
            expect_retry_at(&p, &a, 2, draw, NOW_MS + (int64_t)cn_outbox_backoff_ms(&p, 2, draw),
                            "503");
        }
    }

    /* Retry-After on 429 and on the in-progress 409 too. */
    a = http_answer(429);
    a.retry_after = "2";
    expect_retry_at(&p, &a, 1, 0, NOW_MS + 2000, "429");
    a = http_answer(409);
    a.content_type = IN_PROGRESS_CT;
    a.body = IN_PROGRESS_BODY;
    a.body_len = sizeof(IN_PROGRESS_BODY) - 1;
    a.retry_after = "3";
    expect_retry_at(&p, &a, 1, 0, NOW_MS + 3000, "409");
}

/* Expects cn__outbox_retry_after(value) to give want (at NOW_MS, max 1 h). */
static void
expect_ra(const char *value, int64_t now, uint64_t max, uint64_t want)
{
    uint64_t got = 4242424242u;
    int rc = cn__outbox_retry_after(value, now, max, &got);

    CU_ASSERT_EQUAL(rc, 0);
    CU_ASSERT_EQUAL(got, want);
    if (rc || got != want)
        fprintf(stderr, "  Retry-After \"%s\": rc %d, %llu ms (want %llu)\n", value, rc,
                (unsigned long long)got, (unsigned long long)want);
}

static void
expect_ra_invalid(const char *value)
{
    uint64_t got = 4242424242u;
    int rc = cn__outbox_retry_after(value, NOW_MS, 3600000, &got);

    CU_ASSERT_EQUAL(rc, -EINVAL);
    CU_ASSERT_EQUAL(got, 4242424242u); /* untouched */
    if (rc != -EINVAL)
        fprintf(stderr, "  Retry-After \"%s\" accepted: %llu ms\n", value, (unsigned long long)got);
}

static void
test_retry_after_parse(void)
{
    const uint64_t hour = 3600000;

    /* delay-seconds */
    expect_ra("0", NOW_MS, hour, 0);
    expect_ra("1", NOW_MS, hour, 1000);
    expect_ra("120", NOW_MS, hour, 120000);
    expect_ra("0000000120", NOW_MS, hour, 120000);
    expect_ra("3600", NOW_MS, hour, hour);
    expect_ra("3601", NOW_MS, hour, hour);
    expect_ra("18446744073709551615", NOW_MS, hour, hour);
    expect_ra("18446744073709551616", NOW_MS, hour, hour);
    expect_ra("99999999999999999999999999999999999999", NOW_MS, hour, hour);
    expect_ra("120", NOW_MS, 0, 0);
    expect_ra("120", NOW_MS, UINT64_MAX, 120000);

    /* The three HTTP-date forms, 30 s ahead of NOW_MS. */
    expect_ra("Tue, 14 Nov 2023 22:13:50 GMT", NOW_MS, hour, 30000);
    expect_ra("Tuesday, 14-Nov-23 22:13:50 GMT", NOW_MS, hour, 30000);
    expect_ra("Tue Nov 14 22:13:50 2023", NOW_MS, hour, 30000);
    /* Sub-second now: the delay is from now, not from the second. */
    expect_ra("Tue, 14 Nov 2023 22:13:50 GMT", NOW_MS + 500, hour, 29500);
    /* Exactly now, just past, far past, far future. */
    expect_ra("Tue, 14 Nov 2023 22:13:20 GMT", NOW_MS, hour, 0);
    expect_ra("Tue, 14 Nov 2023 22:13:19 GMT", NOW_MS, hour, 0);
    expect_ra("Mon, 01 Jan 1990 00:00:00 GMT", NOW_MS, hour, 0);
    expect_ra("Fri, 31 Dec 9999 23:59:59 GMT", NOW_MS, hour, hour);
    expect_ra("Wed, 15 Nov 2023 22:13:20 GMT", NOW_MS, UINT64_MAX, 86400000);
    /* Leap day. */
    expect_ra("Thu, 29 Feb 2024 00:00:00 GMT", INT64_C(1709164800000) - 5000, hour, 5000);

    /* Neither form: refused, out-param untouched. */
    expect_ra_invalid("");
    expect_ra_invalid("soon");
    expect_ra_invalid("-1");
    expect_ra_invalid("+5");
    expect_ra_invalid("5.0");
    expect_ra_invalid("1e3");
    expect_ra_invalid("0x10");
    expect_ra_invalid("12abc");
    expect_ra_invalid("Tue, 14 Nov 2023");
    expect_ra_invalid("Tue, 14 Nov 2023 22:13:50");
    expect_ra_invalid("Tue, 14 Foo 2023 22:13:50 GMT");
    expect_ra_invalid("Tue, 14 Nov 2023 22:13:50 GMT trailing");
    expect_ra_invalid("Tue, 14 Nov 2023 22:13:50 GMTX");
    expect_ra_invalid("Tue, 14 Nov 2023 2:1:5 GMT garbage");
}

static void
test_in_progress(void)
{
    static const char body[] = IN_PROGRESS_BODY;
    static const char first[] = "{\"type\":\"urn:cnerium:problem:request-in-progress\"}";
    static const char spaced[] =
        "{ \"title\" : \"Conflict\" ,\n  \"type\" : \"urn:cnerium:problem:request-in-progress\" }";
    static const char longer[] = "{\"type\":\"urn:cnerium:problem:request-in-progress-x\"}";
    static const char other[] = KEY_REUSED_BODY;
    static const char in_detail[] = "{\"type\":\"urn:cnerium:problem:idempotency-key-reused\","
                                    "\"detail\":\"urn:cnerium:problem:request-in-progress\"}";

    CU_ASSERT_EQUAL(cn__outbox_in_progress(IN_PROGRESS_CT, body, sizeof(body) - 1), 1);
    CU_ASSERT_EQUAL(cn__outbox_in_progress(IN_PROGRESS_CT, first, sizeof(first) - 1), 1);
    CU_ASSERT_EQUAL(cn__outbox_in_progress(IN_PROGRESS_CT, spaced, sizeof(spaced) - 1), 1);
    CU_ASSERT_EQUAL(
        cn__outbox_in_progress("application/problem+json; charset=utf-8", body, sizeof(body) - 1),
        1);

    /* Another problem type, a longer type, the URN somewhere else than "type". */
    CU_ASSERT_EQUAL(cn__outbox_in_progress(IN_PROGRESS_CT, other, sizeof(other) - 1), 0);
    CU_ASSERT_EQUAL(cn__outbox_in_progress(IN_PROGRESS_CT, longer, sizeof(longer) - 1), 0);
    CU_ASSERT_EQUAL(cn__outbox_in_progress(IN_PROGRESS_CT, in_detail, sizeof(in_detail) - 1), 0);
    /* No body, an empty body, a body cut (by len) before its type ends. */
    CU_ASSERT_EQUAL(cn__outbox_in_progress(IN_PROGRESS_CT, NULL, 0), 0);
    CU_ASSERT_EQUAL(cn__outbox_in_progress(IN_PROGRESS_CT, "", 0), 0);
    CU_ASSERT_EQUAL(cn__outbox_in_progress(IN_PROGRESS_CT, first, 30), 0);
    CU_ASSERT_EQUAL(cn__outbox_in_progress(IN_PROGRESS_CT, "not json", 8), 0);
    /* Not a problem document at all. */
    CU_ASSERT_EQUAL(cn__outbox_in_progress("text/html", "<html>request-in-progress</html>", 32), 0);
}

int
main(void)
{
    static const unit_test_t tests[] = {
        {"status names and parse", test_status_names},
        {"policy and config defaults", test_policy_defaults},
        {"policy check refuses bad fields with a reason", test_policy_check},
        {"backoff grows exponentially up to the cap", test_backoff_exponential},
        {"backoff does not overflow", test_backoff_no_overflow},
        {"jitter draws within [0, cap]", test_backoff_jitter},
        {"2xx and 3xx are Done", test_decide_done},
        {"other 4xx are Failed after one try", test_decide_permanent},
        {"408 425 429 5xx are retried with backoff", test_decide_retryable},
        {"transport errors are retried", test_decide_transport},
        {"409 request-in-progress is retried", test_decide_in_progress},
        {"max_attempts reached is Failed with the last error", test_max_attempts},
        {"Retry-After sets the next attempt", test_decide_retry_after},
        {"Retry-After parsing", test_retry_after_parse},
        {"the request-in-progress problem", test_in_progress},
        {NULL, NULL},
    };

    return unit_run("outbox_policy", tests);
}
