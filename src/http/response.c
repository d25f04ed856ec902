/*
 * http/response.c - response helpers (cnerium/response.h) and the layer's problem
 * responses (http/problem.h). A helper that cannot allocate returns a zeroed response
 * (status 0), which the server answers as 500 without storing it.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cnerium/json.h"
#include "cnerium/response.h"
#include "http/problem.h"

static const cn_response_t failed_response;

cn_response_t
cn_json_response(int status, cJSON *json)
{
    cn_response_t res = {0};

    if (!json)
        return failed_response;
    res.body = cn_json_print(json, &res.body_len);
    cJSON_Delete(json);
    res.content_type = strdup("application/json");
    if (!res.body || !res.content_type) {
        cn_response_free(&res);
        return failed_response;
    }
    res.status = status;
    return res;
}

cn_response_t
cn_ok(cJSON *json)
{
    return cn_json_response(200, json);
}

cn_response_t
cn_created(cJSON *json)
{
    return cn_json_response(201, json);
}

cn_response_t
cn_accepted(cJSON *json)
{
    return cn_json_response(202, json);
}

cn_response_t
cn__problem(int status, const char *type, const char *detail)
{
    cJSON *obj = cn_json_object("error", cJSON_CreateString(detail),
                                "type", cJSON_CreateString(type ? type : "about:blank"),
                                "title", cJSON_CreateString(cn_status_reason(status)),
                                "status", cJSON_CreateNumber(status),
                                "detail", cJSON_CreateString(detail), NULL);
    cn_response_t res = cn_json_response(status, obj);

    if (res.status) {
        char *ct = strdup("application/problem+json");
        if (!ct) {
            cn_response_free(&res);
            return failed_response;
        }
        free(res.content_type);
        res.content_type = ct;
    }
    return res;
}

cn_response_t
cn_problem(int status, const char *detail)
{
    return cn__problem(status, NULL, detail ? detail : cn_status_reason(status));
}

cn_response_t
cn_bad_request(const char *detail)
{
    return cn_problem(400, detail);
}

cn_response_t
cn_not_found(const char *detail)
{
    return cn_problem(404, detail);
}

cn_response_t
cn_conflict(const char *detail)
{
    return cn_problem(409, detail);
}

cn_response_t
cn_unprocessable(const char *detail)
{
    return cn_problem(422, detail);
}

cn_response_t
cn_raw_response(int status, const char *content_type, const void *bytes, size_t len)
{
    cn_response_t res = {0};

    res.body = malloc(len ? len : 1);
    if (content_type)
        res.content_type = strdup(content_type);
    if (!res.body || (content_type && !res.content_type)) {
        cn_response_free(&res);
        return failed_response;
    }
    if (len)
        memcpy(res.body, bytes, len);
    res.body_len = len;
    res.status = status;
    return res;
}

int
cn_response_set_location(cn_response_t *res, const char *location)
{
    char *l = strdup(location);

    if (!l)
        return -ENOMEM;
    free(res->location);
    res->location = l;
    return 0;
}

static int
valid_header_text(const char *s, int is_name)
{
    if (!*s && is_name)
        return 0;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c < 0x20 || c == 0x7f || (is_name && (c == ':' || c == ' ')))
            return 0;
    }
    return 1;
}

static int add_header(cn_response_t *res, const char *name, const char *value, int stored);

int
cn_response_add_header(cn_response_t *res, const char *name, const char *value)
{
    return add_header(res, name, value, 0);
}

int
cn_response_store_header(cn_response_t *res, const char *name, const char *value)
{
    size_t total = strlen(name) + strlen(value) + 4;

    for (size_t i = 0; i < res->nheaders; i++)
        if (res->headers[i].stored)
            total += strlen(res->headers[i].name) + strlen(res->headers[i].value) + 4;
    if (total > 8192)
        return -E2BIG;
    return add_header(res, name, value, 1);
}

static int
add_header(cn_response_t *res, const char *name, const char *value, int stored)
{
    static const char *reserved[] = {"Content-Type", "Content-Length", "Location",
                                     "Idempotent-Replayed", "Transfer-Encoding",
                                     "Connection"};
    cn_header_t *h;

    if (!valid_header_text(name, 1) || !valid_header_text(value, 0))
        return -EINVAL;
    for (size_t i = 0; i < sizeof(reserved) / sizeof(reserved[0]); i++) {
        if (!strcasecmp(name, reserved[i]))
            return -EINVAL;
    }
    h = realloc(res->headers, (res->nheaders + 1) * sizeof(*h));
    if (!h)
        return -ENOMEM;
    res->headers = h;
    h[res->nheaders].name = strdup(name);
    h[res->nheaders].value = strdup(value);
    h[res->nheaders].stored = stored;
    if (!h[res->nheaders].name || !h[res->nheaders].value) {
        free(h[res->nheaders].name);
        free(h[res->nheaders].value);
        return -ENOMEM;
    }
    res->nheaders++;
    return 0;
}

void
cn_response_set_persist(cn_response_t *res, cn_persist_t persist)
{
    res->persist = persist;
}

void
cn_response_free(cn_response_t *res)
{
    if (!res)
        return;
    free(res->content_type);
    free(res->body);
    free(res->location);
    for (size_t i = 0; i < res->nheaders; i++) {
        free(res->headers[i].name);
        free(res->headers[i].value);
    }
    free(res->headers);
    memset(res, 0, sizeof(*res));
}

const char *
cn_status_reason(int status)
{
    switch (status) {
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 303: return "See Other";
    case 304: return "Not Modified";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 410: return "Gone";
    case 412: return "Precondition Failed";
    case 413: return "Content Too Large";
    case 415: return "Unsupported Media Type";
    case 422: return "Unprocessable Content";
    case 425: return "Too Early";
    case 428: return "Precondition Required";
    case 429: return "Too Many Requests";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default: return "Unknown";
    }
}
