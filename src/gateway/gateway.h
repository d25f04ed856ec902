/*
 * gateway/gateway.h - cnerium-gateway: the durable contract in front of any HTTP
 * backend. Configured routes become durable routes whose handler is a call to the
 * upstream (answered later, cn_later); every other request is passed through untouched
 * and in pieces, both ways (a relay, cn__app_relay). No event loop waits for the
 * upstream.
 */
#ifndef CN_GATEWAY_GATEWAY_H
#define CN_GATEWAY_GATEWAY_H

#include <stddef.h>
#include <stdint.h>

#include "cnerium/app.h"

#define CN_GATEWAY_ROUTES_MAX 256

typedef struct cn_gateway_route {
    char method[8];
    char path[512];
    char operation[65];
} cn_gateway_route_t;

typedef struct cn_gateway_config {
    char upstream[512];   /* http://host:port, no path */
    uint32_t timeout_ms;  /* a whole upstream request */
    size_t max_body;      /* an upstream answer's body */
    cn_gateway_route_t routes[CN_GATEWAY_ROUTES_MAX];
    size_t nroutes;
    /* upstream headers stored with a durable route's answer (replayed), by name */
    char store_headers[16][64];
    size_t nstore_headers;
} cn_gateway_config_t;

/* Parses one route, "METHOD PATH OPERATION" (spaces or tabs between; METHOD one of POST,
 * PUT, PATCH, DELETE). Returns 0, or CN_ECONFIG with err saying why. */
int cn__gateway_parse_route(const char *text, cn_gateway_route_t *out, char *err,
                            size_t errlen);

/* Takes the gateway's own flags out of argv (--upstream URL, --route 'M P OP' (any
 * number), --routes-file FILE (one route per line, '#' comments), --upstream-timeout-ms
 * N, --upstream-max-body BYTES, --store-header NAME (any number, up to 16); also
 * CNERIUM_UPSTREAM), leaving the rest in argv for
 * cn_config_from_args (*argc updated). Returns 0, 1 for --help (after printing the
 * gateway's part), or CN_ECONFIG with err. */
int cn__gateway_parse_args(cn_gateway_config_t *cfg, int *argc, char **argv, char *err,
                           size_t errlen);

/* Registers the routes and the passthrough on app; cfg must outlive it. Returns 0, or
 * CN_ECONFIG with err (a route the app refused). */
int cn__gateway_register(cn_app_t *app, cn_gateway_config_t *cfg, char *err, size_t errlen);

#endif
