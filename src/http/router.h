/*
 * http/router.h - route table: method + path pattern -> handler.
 *
 * Patterns are "/"-separated segments, each literal or "{name}". Matching works on the
 * raw (still percent-encoded) path, segment by segment, so an encoded "%2F" stays inside
 * its segment; parameter values are percent-decoded. Among routes that match, a literal
 * segment beats a parameter at the first position where they differ.
 *
 * Built before the server starts, read-only afterwards: no locking.
 */
#ifndef CN_HTTP_ROUTER_H
#define CN_HTTP_ROUTER_H

#include <stddef.h>

#include "cnerium/app.h"

enum {
    CN_METHOD_GET = 1 << 0,
    CN_METHOD_POST = 1 << 1,
    CN_METHOD_PUT = 1 << 2,
    CN_METHOD_DELETE = 1 << 3,
    CN_METHOD_PATCH = 1 << 4,
};

/* "POST" for CN_METHOD_POST, ...; "GET" for GET (and HEAD). */
const char *cn__method_name(int method);

#define CN_ROUTE_MAX_SEGMENTS 32
#define CN_ROUTE_MAX_PARAMS 8

typedef struct cn_route {
    int method;
    char *pattern;   /* owned */
    char *operation; /* owned; NULL for an ordinary route */
    unsigned op_index; /* durable routes: the operation's index in the app's counters */
    cn_handler_cb handler;
    void *ctx;
    size_t nsegments;
    char *segments[CN_ROUTE_MAX_SEGMENTS]; /* owned; "{name}" kept with its braces */
    char *names[CN_ROUTE_MAX_SEGMENTS];    /* owned parameter names; NULL for literals */
} cn_route_t;

typedef struct cn_router cn_router_t;

typedef struct cn_route_param {
    const char *name; /* borrowed from the route: the text between the braces */
    char *value;      /* owned by the match, decoded, NUL-terminated */
} cn_route_param_t;

typedef struct cn_route_match {
    const cn_route_t *route;
    size_t nparams;
    cn_route_param_t params[CN_ROUTE_MAX_PARAMS];
    int allowed; /* methods registered for the path, set when the result is CN_EMETHOD */
} cn_route_match_t;

/* "GET" -> CN_METHOD_GET ("HEAD" maps to GET); 0 for any other method. */
int cn__method_from_string(const char *method);

int cn__router_new(cn_router_t **out);
void cn__router_free(cn_router_t *router);

/* Adds a route; pattern and operation are copied. Returns 0, -EINVAL for a pattern that
 * does not start with '/', has an empty or malformed "{}" segment, too many segments or
 * parameters, or duplicates an existing (method, pattern); -ENOMEM. */
int cn__router_add(cn_router_t *router, int method, const char *pattern,
                   const char *operation, cn_handler_cb handler, void *ctx);

/* Matches method and raw path (len bytes, no query). Returns 0 and fills *m (release with
 * cn__route_match_clear); CN_ENOTFOUND when no route has this path; CN_EMETHOD when some
 * route has it but not for this method (m->allowed tells which); -ENOMEM. */
int cn__router_match(const cn_router_t *router, int method, const char *path, size_t len,
                     cn_route_match_t *m);

void cn__route_match_clear(cn_route_match_t *m);

/* The routes in the order they were added (i < cn__router_count). */
size_t cn__router_count(const cn_router_t *router);
cn_route_t *cn__router_route(cn_router_t *router, size_t i);

/* Writes the Allow header value for a method mask ("GET, HEAD, POST"). */
void cn__router_allow(int allowed, char *buf, size_t cap);

/* Percent-decodes len bytes of src into dst (at least len + 1 bytes), with '+' meaning
 * space when plus_is_space. Returns the decoded length, or -1 for a malformed escape. */
long cn__url_decode(const char *src, size_t len, char *dst, int plus_is_space);

#endif
