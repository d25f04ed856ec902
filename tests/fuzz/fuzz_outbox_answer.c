/*
 * fuzz_outbox_answer - what the outbox makes of an answer from the network
 * (outbox/policy.c): cn__outbox_decide, cn__outbox_retry_after, cn__outbox_in_progress,
 * cn_outbox_backoff_ms and cn_outbox_policy_check.
 *
 * Input (make_corpus.c writes seeds in this layout):
 *   byte 0      flags: 0 transport error, 1 connect failed, 2 jitter, 3 no Retry-After,
 *               4 no content type, 5 no body, 6 status read as signed
 *   bytes 1-2   HTTP status (u16 LE; int16 with flag 6)
 *   bytes 3-4   attempt (u16 LE)
 *   byte 5      max_attempts (0 is kept: the policy check must refuse it)
 *   bytes 6-13  the jitter draw (u64 LE)
 *   bytes 14-17 now: this u32 * 65536 ms (up to about the year 10900)
 *   bytes 18-19 base_delay_ms (u16 LE)
 *   byte 20     factor: 1 + b / 16, except 255 inf, 254 DBL_MAX, 253 NaN, 252 0.5
 *   bytes 21-24 max_delay_ms (u32 LE)
 *   bytes 25-28 max_retry_after_ms (u32 LE)
 *   the rest    Retry-After '\n' Content-Type '\n' body (any bytes)
 * Each part is copied to a buffer of its exact size, so a read past it is caught.
 * Properties: decide is pure and gives a verdict in range with a NUL-terminated error
 * ("" for DONE, not "" otherwise); 2xx/3xx without a transport error are DONE; RETRY only
 * below max_attempts (or for a connection that could not be made) and due in [now, now + max(max_delay, max_retry_after)]; the
 * backoff stays within max_delay_ms; retry_after is 0 with a delay within its max, or
 * -EINVAL with the out-param untouched; in_progress is 0 or 1.
 */
#include <errno.h>
#include <float.h>
#include <math.h>
#include <string.h>

#include "cnerium/outbox.h"
#include "fuzz.h"
#include "outbox/policy.h"

#define FIXED 29

static uint32_t
le(const uint8_t *p, int n)
{
    uint32_t v = 0;

    for (int i = n - 1; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

/* Splits [p, end) at the first '\n': a NUL-terminated copy of the part before it (owned),
 * and *p moved past the separator (or to end). */
static char *
part(const uint8_t **p, const uint8_t *end)
{
    const uint8_t *nl = memchr(*p, '\n', (size_t)(end - *p));
    size_t n = (size_t)((nl ? nl : end) - *p);
    char *s = fuzz_strndup(*p, n);

    FUZZ_CHECK(s);
    *p = nl ? nl + 1 : end;
    return s;
}

static void
check_decision(const cn_outbox_policy_t *pol, const cn__outbox_answer_t *a, uint32_t attempt,
               int64_t now, uint64_t random)
{
    cn__outbox_decision_t d, again;
    const char *nul;

    memset(&d, 0xab, sizeof(d));
    memset(&again, 0xcd, sizeof(again));
    cn__outbox_decide(pol, a, attempt, now, random, &d);
    cn__outbox_decide(pol, a, attempt, now, random, &again);

    FUZZ_CHECK(d.verdict == CN__OUTBOX_DONE || d.verdict == CN__OUTBOX_RETRY ||
               d.verdict == CN__OUTBOX_FAIL);
    nul = memchr(d.error, '\0', sizeof(d.error));
    FUZZ_CHECK(nul);
    FUZZ_CHECK(again.verdict == d.verdict && !strcmp(again.error, d.error));
    if (d.verdict == CN__OUTBOX_DONE)
        FUZZ_CHECK(d.error[0] == '\0');
    else
        FUZZ_CHECK(d.error[0] != '\0');
    if (!a->transport_error && a->http_status >= 200 && a->http_status <= 399)
        FUZZ_CHECK(d.verdict == CN__OUTBOX_DONE);
    if (a->transport_error)
        FUZZ_CHECK(d.verdict != CN__OUTBOX_DONE);
    if (a->transport_error && a->connect_failed)
        FUZZ_CHECK(d.verdict == CN__OUTBOX_RETRY);
    if (d.verdict == CN__OUTBOX_RETRY) {
        uint64_t cap = pol->max_delay_ms > pol->max_retry_after_ms ? pol->max_delay_ms
                                                                   : pol->max_retry_after_ms;

        /* A connection that could not be made is never final (not an attempt). */
        FUZZ_CHECK(attempt < pol->max_attempts || (a->transport_error && a->connect_failed));
        FUZZ_CHECK(again.next_attempt_at == d.next_attempt_at);
        FUZZ_CHECK(d.next_attempt_at >= now);
        FUZZ_CHECK((uint64_t)(d.next_attempt_at - now) <= cap);
    }
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    cn_outbox_policy_t pol;
    cn__outbox_answer_t a;
    const uint8_t *p, *end = data + size;
    char *retry_after, *ctype, *body = NULL;
    size_t body_len;
    uint8_t flags, fb;
    uint32_t attempt;
    uint64_t random = 0;
    int64_t now;
    const char *why = NULL;

    if (size < FIXED)
        return 0;
    flags = data[0];
    attempt = le(data + 3, 2);
    for (int i = 7; i >= 0; i--)
        random = random << 8 | data[6 + i];
    now = (int64_t)le(data + 14, 4) * 65536;

    cn_outbox_policy_default(&pol);
    pol.max_attempts = data[5];
    pol.jitter = (flags >> 2) & 1;
    pol.base_delay_ms = le(data + 18, 2);
    fb = data[20];
    pol.factor = fb == 255   ? INFINITY
                 : fb == 254 ? DBL_MAX
                 : fb == 253 ? nan("")
                 : fb == 252 ? 0.5
                             : 1.0 + fb / 16.0;
    pol.max_delay_ms = le(data + 21, 4);
    pol.max_retry_after_ms = le(data + 25, 4);

    p = data + FIXED;
    retry_after = part(&p, end);
    ctype = part(&p, end);
    body_len = (size_t)(end - p);
    if (!(flags & 32)) {
        body = malloc(body_len ? body_len : 1);
        FUZZ_CHECK(body);
        memcpy(body, p, body_len);
    }

    /* The Retry-After parser and the in-progress check on their own. */
    {
        uint64_t d = 0x5a5a5a5a5a5a5a5aull;
        uint64_t max = pol.max_retry_after_ms;
        int rc = cn__outbox_retry_after(retry_after, now, max, &d);

        FUZZ_CHECK(rc == 0 || rc == -EINVAL);
        if (rc == 0)
            FUZZ_CHECK(d <= max);
        else
            FUZZ_CHECK(d == 0x5a5a5a5a5a5a5a5aull);
        d = 0;
        rc = cn__outbox_retry_after(retry_after, now, UINT64_MAX, &d);
        FUZZ_CHECK(rc == 0 || rc == -EINVAL);
    }
    {
        int ip = cn__outbox_in_progress(flags & 16 ? NULL : ctype, body, body ? body_len : 0);

        FUZZ_CHECK(ip == 0 || ip == 1);
    }

    /* Policies that fail the check are not used; those that pass must behave. */
    if (cn_outbox_policy_check(&pol, &why) != 0) {
        FUZZ_CHECK(why && why[0]);
        goto out;
    }
    FUZZ_CHECK(pol.max_attempts >= 1 && pol.factor >= 1.0);
    /* (Attempts near 2^32 are the unit test's: a backoff may take time linear in them.) */
    FUZZ_CHECK(cn_outbox_backoff_ms(&pol, attempt ? attempt : 1, random) <= pol.max_delay_ms);

    memset(&a, 0, sizeof(a));
    a.transport_error = flags & 1 ? 1 + (int)(random % 98) : 0;
    a.connect_failed = (flags >> 1) & 1;
    a.transport_message = flags & 1 ? ctype : NULL;
    a.http_status = flags & 64 ? (int)(int16_t)le(data + 1, 2) : (int)le(data + 1, 2);
    a.retry_after = flags & 8 ? NULL : retry_after;
    a.content_type = flags & 16 ? NULL : ctype;
    a.body = body;
    a.body_len = body ? body_len : 0;
    check_decision(&pol, &a, attempt ? attempt : 1, now, random);
    check_decision(&pol, &a, pol.max_attempts, now, random);

out:
    free(body);
    free(ctype);
    free(retry_after);
    return 0;
}
