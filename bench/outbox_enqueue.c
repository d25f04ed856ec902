/*
 * bench/outbox_enqueue.c - durable enqueue rate of the client outbox, in process (the
 * CLI's figure would be process start-up): operations per second with one synced commit
 * each (cn_outbox_enqueue) and in batches (cn_outbox_enqueue_many, one commit per
 * batch), into a fresh outbox directory.
 *
 *   outbox_enqueue DIR [seconds-per-figure] [payload-bytes]
 *
 * Prints one JSON object: {"single": ops/s, "batch64": ops/s, "batch1000": ops/s,
 * "fsyncs_per_s_single": ...}. DIR must not exist or be empty; it is left for the
 * caller to remove. Bounded: each figure stops after its seconds or 10^6 operations.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cnerium/outbox.h>

static double
mono_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double
rate(cn_outbox_t *ob, const cn_outbox_spec_t *specs, size_t batch, double secs)
{
    static char ids[1000][CN_OUTBOX_ID_SIZE];
    double t0 = mono_s(), t;
    size_t done = 0;

    do {
        int rc = batch == 1 ? cn_outbox_enqueue(ob, specs, cn_outbox_now_ms(), ids[0])
                            : cn_outbox_enqueue_many(ob, specs, batch, cn_outbox_now_ms(), ids);
        if (rc) {
            fprintf(stderr, "outbox_enqueue: %s\n", cn_strerror(rc));
            exit(1);
        }
        done += batch;
        t = mono_s();
    } while (t - t0 < secs && done < 1000000);
    return (double)done / (t - t0);
}

int
main(int argc, char **argv)
{
    static cn_outbox_spec_t specs[1000];
    const char *hdr[] = {"Content-Type: application/json"};
    double secs = argc > 2 ? atof(argv[2]) : 3.0;
    size_t plen = argc > 3 ? (size_t)atol(argv[3]) : 64;
    cn_outbox_t *ob;
    char *payload;
    int rc;

    if (argc < 2 || secs <= 0 || secs > 600 || plen > (1u << 20)) {
        fprintf(stderr, "usage: outbox_enqueue DIR [seconds (0-600]] [payload-bytes]\n");
        return 2;
    }
    payload = malloc(plen + 1);
    if (!payload)
        return 1;
    memset(payload, 'x', plen);
    for (size_t i = 0; i < 1000; i++) {
        specs[i].kind = "bench";
        specs[i].method = "POST";
        specs[i].url = "http://127.0.0.1:9/orders";
        specs[i].headers = hdr;
        specs[i].header_count = 1;
        specs[i].payload = payload;
        specs[i].payload_len = plen;
    }
    rc = cn_outbox_open(argv[1], NULL, &ob);
    if (rc) {
        fprintf(stderr, "outbox_enqueue: %s: %s\n", argv[1], cn_strerror(rc));
        return 1;
    }
    double single = rate(ob, specs, 1, secs);
    double b64 = rate(ob, specs, 64, secs);
    double b1000 = rate(ob, specs, 1000, secs);
    printf("{\"single\": %.0f, \"batch64\": %.0f, \"batch1000\": %.0f, "
           "\"payload_bytes\": %zu}\n",
           single, b64, b1000, plen);
    cn_outbox_close(ob);
    free(payload);
    return 0;
}
