/*
 * examples/minimal.c - seed 001, the smallest durable service: an ordinary health check
 * and one durable POST route.
 */
#include <stdio.h>

#include <cnerium/cnerium.h>

static cn_response_t
health(cn_request_t *req, void *ctx)
{
    (void)req;
    (void)ctx;
    return cn_ok(cn_json_object("ok", cJSON_CreateTrue(), NULL));
}

static cn_response_t
create_order(cn_request_t *req, void *ctx)
{
    (void)req;
    (void)ctx;
    return cn_created(cn_json_object("ok", cJSON_CreateTrue(), NULL));
}

int
main(int argc, char **argv)
{
    cn_config_t cfg = cn_config_development();
    cn_app_t *app;
    int rc;

    cn_config_set_name(&cfg, "minimal");
    cn_config_from_args(&cfg, argc, argv);
    app = cn_app_new(&cfg);
    if (!app || cn_get(app, "/health", health, NULL) ||
        cn_durable_post(app, "/orders", "orders.create", create_order, NULL)) {
        fprintf(stderr, "minimal: cannot set up routes\n");
        return 1;
    }
    rc = cn_app_run(app);
    cn_app_free(app);
    return rc;
}
