/*
 * examples/outbox_sync.c - seed 003 ("persist first, sync later") with the Cnerium
 * client outbox: an order is stored locally before any network call, then sent until
 * the server has it, with its operation id as the Idempotency-Key.
 *
 *   ./build/examples/cnerium_outbox_example [--dir DIR] [--url URL] [--max-seconds N]
 *
 * Start it before the server (./scripts/run-example.sh) to watch the retries: the
 * operation stays Pending with its last error, and goes Done once the server answers.
 * Each run saves one new order and also sends whatever an earlier run left behind (kill
 * it while the server is down, start it again later: nothing is lost). Exit codes: 0
 * everything is sent and this run's order is Done, 1 it failed (or the outbox could not
 * be used), 2 bad arguments, 3 still pending when --max-seconds ran out.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cnerium/outbox.h>

static void
print_op(cn_outbox_t *ob, const char *id)
{
    cn_outbox_op_t *op;

    if (cn_outbox_get(ob, id, &op) != 0)
        return;
    printf("[outbox] %s: %s, attempt %u", op->id, cn_outbox_status_name(op->status),
           op->attempt);
    if (op->status == CN_OUTBOX_PENDING && op->last_error[0])
        printf(", next try in %lld ms, last error: %s",
               (long long)(op->next_attempt_at_ms - cn_outbox_now_ms()), op->last_error);
    if (op->status == CN_OUTBOX_FAILED)
        printf(", last error: %s", op->last_error);
    if (op->status == CN_OUTBOX_DONE)
        printf(", HTTP %d: %.*s", op->last_http_status, (int)op->response_len, op->response);
    printf("\n");
    cn_outbox_op_free(op);
}

int
main(int argc, char **argv)
{
    const char *dir = "./build/sync-example", *url = "http://127.0.0.1:8080/orders";
    const char *headers[] = {"Content-Type: application/json"};
    const char *payload = "{\"product_id\":\"p1\",\"quantity\":2}";
    long max_seconds = 60;
    char id[CN_OUTBOX_ID_SIZE];
    cn_outbox_config_t cfg;
    cn_outbox_t *ob;
    int rc, status = 3;

    setvbuf(stdout, NULL, _IOLBF, 0); /* progress lines as they happen, also in a pipe */
    for (int i = 1; i < argc; i++) {
        if (i + 1 < argc && strcmp(argv[i], "--dir") == 0)
            dir = argv[++i];
        else if (i + 1 < argc && strcmp(argv[i], "--url") == 0)
            url = argv[++i];
        else if (i + 1 < argc && strcmp(argv[i], "--max-seconds") == 0)
            max_seconds = strtol(argv[++i], NULL, 10);
        else {
            fprintf(stderr, "usage: %s [--dir DIR] [--url URL] [--max-seconds N]\n", argv[0]);
            return 2;
        }
    }
    if (max_seconds <= 0 || max_seconds > 86400) {
        fprintf(stderr, "--max-seconds must be 1..86400\n");
        return 2;
    }

    cn_outbox_config_default(&cfg);
    cfg.retry.max_attempts = 20;
    cfg.retry.base_delay_ms = 500;
    cfg.retry.factor = 2.0;
    cfg.retry.max_delay_ms = 5000;
    rc = cn_outbox_open(dir, &cfg, &ob);
    if (rc) {
        fprintf(stderr, "cannot open the outbox in %s: %s\n", dir, cn_strerror(rc));
        return 1;
    }

    /* 1. Persist the operation BEFORE any network call: durable when this returns. */
    cn_outbox_spec_t op = {
        .kind = "order.create",
        .method = "POST",
        .url = url,
        .headers = headers,
        .header_count = 1,
        .payload = payload,
        .payload_len = strlen(payload),
    };
    rc = cn_outbox_enqueue(ob, &op, cn_outbox_now_ms(), id);
    if (rc) {
        fprintf(stderr, "enqueue: %s\n", cn_strerror(rc));
        cn_outbox_close(ob);
        return 1;
    }
    printf("[app] operation saved: %s\n", id);

    /* 2. The worker: one per directory; it sends what is due, whenever it is due. */
    rc = cn_outbox_worker_start(ob, cn_outbox_now_ms(), NULL);
    if (rc) {
        fprintf(stderr, "worker: %s\n", cn_strerror(rc));
        cn_outbox_close(ob);
        return 1;
    }
    int64_t deadline = cn_outbox_now_ms() + max_seconds * 1000;
    for (;;) {
        cn_outbox_tick_t r;
        cn_outbox_stats_t st;
        int64_t now = cn_outbox_now_ms(), due;

        rc = cn_outbox_tick(ob, now, &r);
        if (rc < 0) {
            fprintf(stderr, "tick: %s\n", cn_strerror(rc));
            status = 1;
            break;
        }
        if (rc > 0 || r.offline)
            print_op(ob, id);
        if (cn_outbox_stats(ob, &st) == 0 &&
            st.count[CN_OUTBOX_PENDING] + st.count[CN_OUTBOX_INFLIGHT] == 0) {
            cn_outbox_op_t *o;
            status = cn_outbox_get(ob, id, &o) == 0 && o->status == CN_OUTBOX_DONE ? 0 : 1;
            cn_outbox_op_free(o);
            break;
        }
        now = cn_outbox_now_ms();
        if (now >= deadline)
            break;
        due = cn_outbox_next_due(ob);
        if (due < 0 || due > deadline)
            due = deadline;
        if (due > now) {
            struct timespec ts = {(due - now) / 1000, (long)((due - now) % 1000) * 1000000};
            nanosleep(&ts, NULL);
        }
    }
    printf("[app] %s\n", status == 0   ? "operation completed"
                         : status == 1 ? "operation failed"
                                       : "still pending: run again to go on");
    cn_outbox_close(ob);
    return status;
}
