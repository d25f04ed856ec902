/*
 * outbox/policy.c - the retry policy: which answers are worth another try, when that
 * try is due, and when an operation has had enough. Pure code, any thread.
 */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <cjson/cJSON.h>

#include "outbox/policy.h"

#define PROBLEM_IN_PROGRESS "urn:cnerium:problem:request-in-progress"

void
cn_outbox_policy_default(cn_outbox_policy_t *p)
{
    p->max_attempts = 8;
    p->base_delay_ms = 500;
    p->factor = 2.0;
    p->max_delay_ms = 60000;
    p->jitter = 1;
    p->max_retry_after_ms = 3600 * 1000;
}

int
cn_outbox_policy_check(const cn_outbox_policy_t *p, const char **why)
{
    const char *unused;

    if (!why)
        why = &unused;
    if (p->max_attempts < 1) {
        *why = "max_attempts must be at least 1";
        return -EINVAL;
    }
    if (!(p->factor >= 1.0 && p->factor <= 1000.0)) {
        *why = "factor must be a number from 1 to 1000";
        return -EINVAL;
    }
    if (p->max_delay_ms < p->base_delay_ms) {
        *why = "max_delay_ms must not be below base_delay_ms";
        return -EINVAL;
    }
    return 0;
}

uint64_t
cn_outbox_backoff_ms(const cn_outbox_policy_t *p, uint32_t attempt, uint64_t random)
{
    double cap = 0;
    uint64_t c;

    /* base * factor^(attempt-1), capped; pow() makes it O(1) for any attempt count and
     * saturates to infinity instead of overflowing. A policy that skipped
     * cn_outbox_policy_check (factor NaN or infinite, base 0) still gets a number in
     * [0, cap]: converting NaN to an integer would be undefined. */
    if (p->base_delay_ms > 0) {
        cap = (double)p->base_delay_ms * pow(p->factor, attempt > 0 ? (double)(attempt - 1) : 0);
        if (!(cap >= 0))
            cap = (double)p->max_delay_ms; /* NaN: factor was NaN */
    }
    if (cap > (double)p->max_delay_ms)
        cap = (double)p->max_delay_ms;
    c = (uint64_t)cap;
    if (!p->jitter)
        return c;
    /* Full jitter: uniform in [0, c]. (c + 1) * random / 2^64, in 128-bit arithmetic. */
    return (uint64_t)(((unsigned __int128)(c + 1) * random) >> 64);
}

static const char *const months[12] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                       "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};

static int
month_index(const char *s)
{
    for (int i = 0; i < 12; i++)
        if (strncmp(s, months[i], 3) == 0)
            return i;
    return -1;
}

/* Parses an HTTP-date (RFC 9110 5.6.7: IMF-fixdate, obsolete RFC 850 and asctime forms)
 * into seconds since the epoch. 0 or -EINVAL. */
static int
http_date(const char *v, int64_t *out)
{
    char wday[16], mon[4], zone[4];
    int d, y, hh, mm, ss, n = 0, mi;
    struct tm tm;
    time_t t;

    memset(&tm, 0, sizeof(tm));
    /* IMF-fixdate: Sun, 06 Nov 1994 08:49:37 GMT */
    if (sscanf(v, "%3s, %2d %3s %4d %2d:%2d:%2d %3s%n", wday, &d, mon, &y, &hh, &mm, &ss,
               zone, &n) == 8 &&
        v[n] == '\0' && strcmp(zone, "GMT") == 0) {
    } else if (sscanf(v, "%15[A-Za-z], %2d-%3s-%2d %2d:%2d:%2d %3s%n", wday, &d, mon, &y,
                      &hh, &mm, &ss, zone, &n) == 8 &&
               v[n] == '\0' && strcmp(zone, "GMT") == 0) {
        /* RFC 850: two-digit year; RFC 9110 says to read one more than 50 years ahead
         * as the past. 1970-2069 covers every date a server sends now. */
        y += y < 70 ? 2000 : 1900;
    } else if (sscanf(v, "%3s %3s %2d %2d:%2d:%2d %4d%n", wday, mon, &d, &hh, &mm, &ss, &y,
                      &n) == 7 &&
               v[n] == '\0') {
        /* asctime: Sun Nov  6 08:49:37 1994 */
    } else {
        return -EINVAL;
    }
    mi = month_index(mon);
    if (mi < 0 || d < 1 || d > 31 || hh > 23 || mm > 59 || ss > 60 || y < 1970 ||
        y > 9999 || hh < 0 || mm < 0 || ss < 0)
        return -EINVAL;
    tm.tm_year = y - 1900;
    tm.tm_mon = mi;
    tm.tm_mday = d;
    tm.tm_hour = hh;
    tm.tm_min = mm;
    tm.tm_sec = ss;
    t = timegm(&tm);
    if (t == (time_t)-1)
        return -EINVAL;
    *out = (int64_t)t;
    return 0;
}

int
cn__outbox_retry_after(const char *value, int64_t now_ms, uint64_t max_ms,
                       uint64_t *delay_ms)
{
    const char *s = value;
    size_t n;
    int64_t at;

    if (!s)
        return -EINVAL;
    while (*s == ' ' || *s == '\t')
        s++;
    n = strlen(s);
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r' || s[n - 1] == '\n'))
        n--;
    if (n == 0 || n > 64)
        return -EINVAL;
    char v[65];
    memcpy(v, s, n);
    v[n] = '\0';
    if (isdigit((unsigned char)v[0])) {
        uint64_t secs = 0;
        for (size_t i = 0; i < n; i++) {
            if (!isdigit((unsigned char)v[i]))
                return -EINVAL;
            if (secs < UINT64_MAX / 10000)
                secs = secs * 10 + (uint64_t)(v[i] - '0');
        }
        *delay_ms = secs > max_ms / 1000 ? max_ms : secs * 1000;
        if (*delay_ms > max_ms)
            *delay_ms = max_ms;
        return 0;
    }
    if (http_date(v, &at))
        return -EINVAL;
    if (at * 1000 <= now_ms)
        *delay_ms = 0;
    else
        *delay_ms = (uint64_t)(at * 1000 - now_ms) > max_ms ? max_ms
                                                            : (uint64_t)(at * 1000 - now_ms);
    return 0;
}

int
cn__outbox_in_progress(const char *content_type, const char *body, size_t len)
{
    const cJSON *type;
    cJSON *doc;
    int yes;

    if (!content_type || strncasecmp(content_type, "application/problem+json", 24) != 0 ||
        !body || len == 0)
        return 0;
    doc = cJSON_ParseWithLength(body, len);
    if (!doc)
        return 0;
    type = cJSON_GetObjectItemCaseSensitive(doc, "type");
    yes = cJSON_IsString(type) && type->valuestring &&
          strcmp(type->valuestring, PROBLEM_IN_PROGRESS) == 0;
    cJSON_Delete(doc);
    return yes;
}

static int
retryable_status(int st)
{
    return st == 408 || st == 425 || st == 429 || (st >= 500 && st <= 599);
}

void
cn__outbox_decide(const cn_outbox_policy_t *p, const cn__outbox_answer_t *a,
                  uint32_t attempt, int64_t now_ms, uint64_t random,
                  cn__outbox_decision_t *out)
{
    uint64_t delay;
    int retry;

    memset(out, 0, sizeof(*out));
    if (a->transport_error) {
        snprintf(out->error, sizeof(out->error), "%s (libcurl error %d)%s",
                 a->transport_message && *a->transport_message ? a->transport_message
                                                               : "transfer failed",
                 a->transport_error, a->connect_failed ? ", origin unreachable" : "");
        retry = 1;
    } else if (a->http_status >= 200 && a->http_status <= 399) {
        out->verdict = CN__OUTBOX_DONE;
        return;
    } else {
        retry = retryable_status(a->http_status) ||
                (a->http_status == 409 &&
                 cn__outbox_in_progress(a->content_type, a->body, a->body_len));
        snprintf(out->error, sizeof(out->error), "HTTP %d%s", a->http_status,
                 retry ? "" : " (not retryable)");
    }
    if (!retry) {
        out->verdict = CN__OUTBOX_FAIL;
        return;
    }
    /* An unreachable origin is not the operation's failure (the worker backs the origin
     * off as a whole): never Failed for it. */
    if (attempt >= p->max_attempts && !(a->transport_error && a->connect_failed)) {
        size_t l = strlen(out->error);
        snprintf(out->error + l, sizeof(out->error) - l, "; gave up after %u attempts",
                 attempt);
        out->verdict = CN__OUTBOX_FAIL;
        return;
    }
    out->verdict = CN__OUTBOX_RETRY;
    if (a->transport_error || !a->retry_after ||
        cn__outbox_retry_after(a->retry_after, now_ms, p->max_retry_after_ms, &delay))
        delay = cn_outbox_backoff_ms(p, attempt, random);
    out->next_attempt_at = now_ms + (int64_t)delay;
}
