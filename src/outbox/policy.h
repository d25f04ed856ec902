/*
 * outbox/policy.h - what an answer means for an operation: Done, retried or Failed, and
 * when the retry is due (backoff with full jitter, or Retry-After).
 *
 * Pure code, any thread. The bytes classified here come from the network (status,
 * Retry-After, body); tests/fuzz/fuzz_outbox_answer.c feeds it arbitrary ones.
 */
#ifndef CN_OUTBOX_POLICY_H
#define CN_OUTBOX_POLICY_H

#include <stddef.h>
#include <stdint.h>

#include "cnerium/outbox.h"

/* What one try produced (filled by the transport). */
typedef struct {
    int transport_error;  /* 0: an HTTP answer arrived; else a libcurl code */
    int connect_failed;   /* the origin could not be reached (no connection made) */
    const char *transport_message; /* for last_error; may be NULL */
    int http_status;      /* when transport_error == 0 */
    const char *retry_after; /* the Retry-After value, NUL-terminated, or NULL */
    const char *content_type; /* or NULL */
    const char *body;     /* the first bytes of the body (may be NULL) */
    size_t body_len;
} cn__outbox_answer_t;

typedef enum {
    CN__OUTBOX_DONE,
    CN__OUTBOX_RETRY,
    CN__OUTBOX_FAIL,
} cn__outbox_verdict_t;

typedef struct {
    cn__outbox_verdict_t verdict;
    int64_t next_attempt_at; /* RETRY: when to try again */
    char error[512];
} cn__outbox_decision_t;

/* Decides what an answer to try number `attempt` (>= 1) at now_ms means under policy p:
 * retryable answers become RETRY with the backoff (drawn with `random`) or Retry-After,
 * and FAIL once attempt >= max_attempts, except a connection that could not be made
 * (connect_failed), which is always RETRY. error gets a one-line description for
 * last_error ("" for DONE). Pure. */
void cn__outbox_decide(const cn_outbox_policy_t *p, const cn__outbox_answer_t *a,
                       uint32_t attempt, int64_t now_ms, uint64_t random,
                       cn__outbox_decision_t *out);

/* Parses a Retry-After value (RFC 9110: delay-seconds, or an IMF-fixdate / RFC 850 /
 * asctime HTTP-date) into a delay from now_ms, clamped to [0, max_ms]. 0 and *delay_ms,
 * or -EINVAL when the value is neither. */
int cn__outbox_retry_after(const char *value, int64_t now_ms, uint64_t max_ms,
                           uint64_t *delay_ms);

/* 1 when a 409 answer's body is the Cnerium problem request-in-progress (a concurrent
 * try with the same key is still running: worth retrying). */
int cn__outbox_in_progress(const char *content_type, const char *body, size_t len);

#endif
