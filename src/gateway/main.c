/*
 * src/gateway/main.c - cnerium-gateway: the gateway's flags, then the server's.
 */
#include <stdio.h>

#include "cnerium/cnerium.h"
#include "gateway/gateway.h"

int
main(int argc, char **argv)
{
    static cn_gateway_config_t gw;
    cn_config_t cfg = cn_config_development();
    cn_app_t *app;
    char err[512];
    int rc = cn__gateway_parse_args(&gw, &argc, argv, err, sizeof(err));

    if (rc < 0) {
        fprintf(stderr, "cnerium-gateway: %s\n", err);
        return 2;
    }
    cn_config_set_name(&cfg, "gateway");
    cn_config_from_args(&cfg, argc, argv); /* prints the server's flags for --help */
    if (!(app = cn_app_new(&cfg))) {
        fprintf(stderr, "cnerium-gateway: out of memory\n");
        return 1;
    }
    if (cn__gateway_register(app, &gw, err, sizeof(err))) {
        fprintf(stderr, "cnerium-gateway: %s\n", err);
        cn_app_free(app);
        return 2;
    }
    if (gw.timeout_ms >= cfg.lease_ms)
        fprintf(stderr, "cnerium-gateway: --upstream-timeout-ms %u is not below --lease-ms %u: "
                        "a slow upstream call may be taken over while it runs\n",
                gw.timeout_ms, cfg.lease_ms);
    rc = cn_app_run(app);
    cn_app_free(app);
    return rc;
}
