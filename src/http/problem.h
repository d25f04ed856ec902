/*
 * http/problem.h - the error responses the layer itself produces (RFC 9457).
 */
#ifndef CN_HTTP_PROBLEM_H
#define CN_HTTP_PROBLEM_H

#include "cnerium/response.h"

/* Problem types of the layer, documented in the README. */
#define CN_PROBLEM_KEY_MISSING "urn:cnerium:problem:idempotency-key-missing"
#define CN_PROBLEM_KEY_INVALID "urn:cnerium:problem:idempotency-key-invalid"
#define CN_PROBLEM_KEY_REUSED "urn:cnerium:problem:idempotency-key-reused"
#define CN_PROBLEM_IN_PROGRESS "urn:cnerium:problem:request-in-progress"
#define CN_PROBLEM_BODY_TOO_LARGE "urn:cnerium:problem:body-too-large"
#define CN_PROBLEM_BODY_NOT_UTF8 "urn:cnerium:problem:body-not-utf8"
#define CN_PROBLEM_NOT_FOUND "urn:cnerium:problem:not-found"
#define CN_PROBLEM_METHOD "urn:cnerium:problem:method-not-allowed"
#define CN_PROBLEM_STORAGE "urn:cnerium:problem:storage-unavailable"
#define CN_PROBLEM_HANDLER "urn:cnerium:problem:handler-failed"

/* {"error":detail,"type":type,"title":<reason>,"status":status,"detail":detail} with
 * content type application/problem+json. type NULL means "about:blank". */
cn_response_t cn__problem(int status, const char *type, const char *detail);

#endif
