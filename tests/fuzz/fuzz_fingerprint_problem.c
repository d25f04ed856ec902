/*
 * fuzz_fingerprint_problem - what a durable route computes from a request before any
 * handler runs: the key, the fingerprint (reliability/fingerprint.c) and the problem
 * responses (http/response.c) the layer answers with.
 *
 * Input: byte 0 and 1 pick a status and where the input splits into query and body; the
 * rest is the bytes. Properties: the fingerprint is SHA-256 over the documented framing
 * be64(len(query)) || query || be64(len(body)) || body; a problem response is
 * application/problem+json whose JSON holds the status and the detail as given, even
 * when the detail is arbitrary bytes; a rejected key's reason makes a valid problem too.
 */
#include <string.h>

#include <cjson/cJSON.h>

#include "cnerium/response.h"
#include "fuzz.h"
#include "http/problem.h"
#include "reliability/fingerprint.h"
#include "reliability/key.h"
#include "support/bytes.h"

static void
check_problem(int status, const char *type, const char *detail)
{
    cn_response_t res = cn__problem(status, type, detail);
    cJSON *json;
    const cJSON *d, *s, *t;

    if (!res.status)
        return; /* out of memory */
    FUZZ_CHECK(res.status == status);
    FUZZ_CHECK(res.content_type && !strcmp(res.content_type, "application/problem+json"));
    json = cJSON_ParseWithLength(res.body, res.body_len);
    FUZZ_CHECK(json);
    d = cJSON_GetObjectItemCaseSensitive(json, "detail");
    s = cJSON_GetObjectItemCaseSensitive(json, "status");
    t = cJSON_GetObjectItemCaseSensitive(json, "type");
    FUZZ_CHECK(cJSON_IsString(d) && !strcmp(d->valuestring, detail));
    FUZZ_CHECK(cJSON_IsNumber(s) && s->valueint == status);
    FUZZ_CHECK(cJSON_IsString(t) && !strcmp(t->valuestring, type ? type : "about:blank"));
    cJSON_Delete(json);
    cn_response_free(&res);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t fp[CN_SHA256_LEN], want[CN_SHA256_LEN];
    char key[CN_KEY_MAX + 1], *detail, *framed;
    const char *query, *body, *why = NULL;
    size_t qlen, blen, keylen;
    int status;

    if (size < 2)
        return 0;
    status = 100 + data[0] % 500;
    data += 2;
    size -= 2;
    qlen = size ? data[-1] % (size + 1) : 0;
    query = (const char *)data;
    body = (const char *)data + qlen;
    blen = size - qlen;

    FUZZ_CHECK(cn__fingerprint(query, qlen, body, blen, fp) == 0);
    framed = malloc(16 + size);
    FUZZ_CHECK(framed);
    cn__put_be64((uint8_t *)framed, qlen);
    memcpy(framed + 8, query, qlen);
    cn__put_be64((uint8_t *)framed + 8 + qlen, blen);
    memcpy(framed + 16 + qlen, body, blen);
    FUZZ_CHECK(cn__sha256(framed, 16 + size, want) == 0);
    FUZZ_CHECK(!memcmp(fp, want, CN_SHA256_LEN));
    free(framed);

    /* The detail as a C string: the input up to its first NUL. */
    detail = fuzz_strndup((const char *)data, size);
    FUZZ_CHECK(detail);
    check_problem(status, NULL, detail);
    check_problem(status, CN_PROBLEM_KEY_INVALID, detail);
    free(detail);

    /* The query part as an Idempotency-Key header value, answered like durable.c does. */
    if (cn__key_parse(query, qlen, key, &keylen, &why))
        check_problem(400, CN_PROBLEM_KEY_INVALID, why);
    return 0;
}
