/*
 * examples/durable_orders_realtime.c - seed 000, "Durable Orders with Realtime".
 *
 * GET /health is an ordinary route. POST /orders is durable under the operation name
 * "orders.create": a retry with the same Idempotency-Key and body gets the stored
 * response and the handler (and its order.created event) does not run again. The
 * WebSocket command CreateOrder runs the same route, with the same contract.
 *
 *   ./build/examples/cnerium_durable_orders_realtime --data-dir ./data --port 8080
 *
 * An order is only worth storing with its event: input that cannot fit in one is refused
 * up front (400), and a cn_emit that fails anyway answers 500, so nothing is stored and
 * the key stays free (the library would answer 500 for a handler that ignored it, too).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cnerium/cnerium.h>

/* An event payload is at most 256 KiB of JSON; the order's other fields take well under
 * 1 KiB, so this leaves room even for a product id with some characters escaped. */
#define PRODUCT_ID_MAX (200 * 1024)

static cn_response_t
health(cn_request_t *req, void *ctx)
{
    (void)req;
    (void)ctx;
    return cn_ok(cn_json_object("ok", cJSON_CreateTrue(),
                                "service", cJSON_CreateString("durable-orders-realtime"),
                                NULL));
}

static cn_response_t
create_order(cn_request_t *req, void *ctx)
{
    const cJSON *body = cn_request_json(req);
    const char *product_id = cn_json_string_or(body, "product_id", "");
    int quantity = cn_json_int_or(body, "quantity", 0);
    char order_id[300];

    (void)ctx;
    if (!*product_id)
        return cn_bad_request("Missing required field: product_id");
    if (strlen(product_id) > PRODUCT_ID_MAX)
        return cn_bad_request("Field product_id must be at most 204800 bytes");
    if (quantity <= 0)
        return cn_bad_request("Field quantity must be greater than zero");

    snprintf(order_id, sizeof(order_id), "ord_%s", cn_request_idempotency_key(req));

    /* Buffered with the request; published only once the response is durable. */
    if (cn_emit(req, "order.created",
                cn_json_object("order_id", cJSON_CreateString(order_id),
                               "product_id", cJSON_CreateString(product_id),
                               "quantity", cJSON_CreateNumber(quantity), NULL)))
        return cn_problem(500, "The order.created event could not be emitted");

    return cn_created(cn_json_object("ok", cJSON_CreateTrue(),
                                     "order_id", cJSON_CreateString(order_id),
                                     "product_id", cJSON_CreateString(product_id),
                                     "quantity", cJSON_CreateNumber(quantity), NULL));
}

int
main(int argc, char **argv)
{
    cn_config_t cfg = cn_config_development();
    cn_app_t *app;
    int rc;

    cn_config_set_name(&cfg, "durable-orders-realtime");
    cn_config_set_node_id(&cfg, "durable-orders-realtime-node");
    cn_config_enable_realtime(&cfg, "/ws", "127.0.0.1", 9090);
    cn_config_from_args(&cfg, argc, argv);

    app = cn_app_new(&cfg);
    if (!app || cn_get(app, "/health", health, NULL) ||
        cn_durable_post(app, "/orders", "orders.create", create_order, NULL) ||
        /* The same route from a WebSocket client:
         * {"type":"command","id":"c1","idempotency_key":"k1",
         *  "action":{"CreateOrder":{"product_id":"p1","quantity":1}}} */
        cn_ws_command(app, "CreateOrder", "POST", "/orders")) {
        fprintf(stderr, "durable-orders-realtime: cannot set up routes\n");
        return 1;
    }
    rc = cn_app_run(app);
    cn_app_free(app);
    return rc;
}
