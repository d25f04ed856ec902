/*
 * tests/install/consumer.c - a program outside the tree, built against an installed
 * Cnerium (tests/install/run.sh builds it with pkg-config and with find_package, against
 * the shared and the static library). It registers routes of every kind, parses its
 * flags and checks the configuration, and, given --serve, serves until SIGTERM.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <cnerium/cnerium.h>

static cn_response_t
health(cn_request_t *req, void *ctx)
{
    (void)req;
    (void)ctx;
    return cn_ok(cn_json_object("ok", cJSON_CreateTrue(), NULL));
}

static cn_response_t
create(cn_request_t *req, void *ctx)
{
    (void)ctx;
    return cn_created(cn_json_object("key", cJSON_CreateString(cn_request_idempotency_key(req)),
                                     NULL));
}

int
main(int argc, char **argv)
{
    cn_config_t cfg = cn_config_development();
    int serve = argc > 1 && !strcmp(argv[1], "--serve");
    cn_app_t *app;
    char err[256];
    int rc;

    cn_config_set_name(&cfg, "consumer");
    if (serve && cn_config_parse_args(&cfg, argc - 1, argv + 1, err, sizeof(err))) {
        fprintf(stderr, "consumer: %s\n", err);
        return 2;
    }
    if (cn_config_validate(&cfg, err, sizeof(err))) {
        fprintf(stderr, "consumer: %s\n", err);
        return 2;
    }
    if (!(app = cn_app_new(&cfg)))
        return 1;
    if (cn_get(app, "/health", health, NULL) ||
        cn_durable_post(app, "/orders", "orders.create", create, NULL) ||
        cn_durable(app, "PUT", "/orders/{id}", "orders.put", create, NULL) ||
        cn_durable(app, "GET", "/nope", "orders.get", create, NULL) != -EINVAL) {
        fprintf(stderr, "consumer: registering routes failed\n");
        cn_app_free(app);
        return 1;
    }
    rc = serve ? cn_app_run(app) : 0;
    cn_app_free(app);
    if (!serve)
        printf("consumer: ok\n");
    return rc;
}
