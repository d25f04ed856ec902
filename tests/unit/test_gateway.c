/*
 * tests/unit/test_gateway.c - cnerium-gateway's configuration: routes ("METHOD PATH OP")
 * accepted and refused with a reason, flags taken out of argv with the server's left in
 * order, routes files with comments, the upstream URL's form, bounds of the numbers; and
 * which headers are hop-by-hop.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cnerium/error.h"
#include "gateway/gateway.h"
#include "gateway/upstream.h"
#include "unit.h"

static char tmpdir[256];

static void
test_routes(void)
{
    cn_gateway_route_t r;
    char err[256];
    static const char *const bad[] = {
        "", "POST", "POST /x", "GET /x op", "post /x op", "POST x op", "POST /x op extra",
        "POST /x bad/op", "POST /x " "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    };

    CU_ASSERT_EQUAL(cn__gateway_parse_route("POST /api/v1/orders orders.create", &r, err,
                                            sizeof(err)), 0);
    CU_ASSERT_STRING_EQUAL(r.method, "POST");
    CU_ASSERT_STRING_EQUAL(r.path, "/api/v1/orders");
    CU_ASSERT_STRING_EQUAL(r.operation, "orders.create");
    CU_ASSERT_EQUAL(cn__gateway_parse_route("  PATCH\t/items/{id}   items.patch ", &r, err,
                                            sizeof(err)), 0);
    CU_ASSERT_STRING_EQUAL(r.path, "/items/{id}");
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        CU_ASSERT_EQUAL(cn__gateway_parse_route(bad[i], &r, err, sizeof(err)), CN_ECONFIG);
        CU_ASSERT(err[0] != '\0');
    }
}

static int
parse(cn_gateway_config_t *cfg, char **argv, int *argc, char *err)
{
    int n = 0;

    while (argv[n])
        n++;
    *argc = n;
    err[0] = '\0';
    return cn__gateway_parse_args(cfg, argc, argv, err, 256);
}

static void
test_args(void)
{
    static cn_gateway_config_t cfg;
    char err[256], file[300];
    int argc;
    FILE *f;

    unsetenv("CNERIUM_UPSTREAM");
    {
        char *argv[] = {"gw", "--port", "0", "--upstream", "http://127.0.0.1:3000/",
                        "--route", "POST /a a.op", "--workers", "2",
                        "--upstream-timeout-ms", "1500", "--route", "DELETE /b/{id} b.op",
                        NULL};
        CU_ASSERT_EQUAL(parse(&cfg, argv, &argc, err), 0);
        CU_ASSERT_EQUAL(argc, 5); /* the server's flags, in order */
        CU_ASSERT_STRING_EQUAL(argv[1], "--port");
        CU_ASSERT_STRING_EQUAL(argv[3], "--workers");
        CU_ASSERT_PTR_NULL(argv[5]);
        CU_ASSERT_EQUAL(cfg.nroutes, 2);
        CU_ASSERT_STRING_EQUAL(cfg.routes[1].method, "DELETE");
        CU_ASSERT_EQUAL(cfg.timeout_ms, 1500);
        CU_ASSERT_EQUAL(cfg.nstore_headers, 0);
        CU_ASSERT_STRING_EQUAL(cfg.upstream, "http://127.0.0.1:3000/");
    }
    snprintf(file, sizeof(file), "%s/routes", tmpdir);
    CU_ASSERT_PTR_NOT_NULL_FATAL(f = fopen(file, "w"));
    fputs("# the orders API\n\nPOST /orders orders.create   # create\n  PUT /o/{id} o.put\n", f);
    fclose(f);
    {
        char *argv[] = {"gw", "--routes-file", file, "--upstream", "http://h:1",
                        "--store-header", "ETag", "--store-header", "X-Version", NULL};
        CU_ASSERT_EQUAL(parse(&cfg, argv, &argc, err), 0);
        CU_ASSERT_EQUAL(cfg.nstore_headers, 2);
        CU_ASSERT_STRING_EQUAL(cfg.store_headers[1], "X-Version");
        CU_ASSERT_EQUAL(cfg.nroutes, 2);
        CU_ASSERT_STRING_EQUAL(cfg.routes[1].path, "/o/{id}");
    }
    setenv("CNERIUM_UPSTREAM", "http://from-env:9", 1);
    {
        char *argv[] = {"gw", NULL};
        CU_ASSERT_EQUAL(parse(&cfg, argv, &argc, err), 0);
        CU_ASSERT_STRING_EQUAL(cfg.upstream, "http://from-env:9");
    }
    unsetenv("CNERIUM_UPSTREAM");
    {
        static const char *const cases[][4] = {
            {"--route", "POST /x x", NULL, "--upstream URL is required"},
            {"--upstream", "ftp://x", NULL, "http://"},
            {"--upstream", "http://h:1/base", NULL, "without a path"},
            {"--upstream", NULL, NULL, "needs a value"},
            {"--upstream-timeout-ms", "5", NULL, "--upstream-timeout-ms"},
            {"--upstream-max-body", "-1", NULL, "--upstream-max-body"},
            {"--routes-file", "/nonexistent/routes", NULL, "--routes-file"},
            {"--store-header", "bad name", NULL, "--store-header"},
        };
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
            char *argv[6] = {"gw"};
            int n = 1;
            for (int k = 0; k < 3 && cases[i][k]; k++)
                argv[n++] = (char *)cases[i][k];
            argv[n] = NULL;
            CU_ASSERT_EQUAL(parse(&cfg, argv, &argc, err), CN_ECONFIG);
            CU_ASSERT_PTR_NOT_NULL(strstr(err, cases[i][3]));
        }
    }
}

static void
test_hop_headers(void)
{
    static const char *const hop[] = {"Connection", "keep-alive", "TE", "Transfer-Encoding",
                                      "Upgrade", "Proxy-Authorization", "Host",
                                      "Content-Length", "Expect"};
    static const char *const end[] = {"Content-Type", "Authorization", "X-Custom",
                                      "Idempotency-Key", "Cookie"};

    for (size_t i = 0; i < sizeof(hop) / sizeof(hop[0]); i++)
        CU_ASSERT_TRUE(cn__upstream_hop_header(hop[i]));
    for (size_t i = 0; i < sizeof(end) / sizeof(end[0]); i++)
        CU_ASSERT_FALSE(cn__upstream_hop_header(end[i]));
    /* Connection options name more of them (RFC 9110 7.6.1). */
    CU_ASSERT_TRUE(cn__upstream_connection_option("keep-alive, X-Secret ,Foo", "x-secret"));
    CU_ASSERT_TRUE(cn__upstream_connection_option("keep-alive, X-Secret ,Foo", "foo"));
    CU_ASSERT_TRUE(cn__upstream_connection_option("\tX-A\t", "x-a"));
    CU_ASSERT_FALSE(cn__upstream_connection_option("keep-alive, X-Secret", "x-secre"));
    CU_ASSERT_FALSE(cn__upstream_connection_option("keep-alive, X-Secret", "secret"));
    CU_ASSERT_FALSE(cn__upstream_connection_option("", "x"));
    CU_ASSERT_FALSE(cn__upstream_connection_option(NULL, "x"));
}

int
main(void)
{
    static const unit_test_t tests[] = {
        {"routes", test_routes},
        {"flags", test_args},
        {"hop-by-hop headers", test_hop_headers},
        {NULL, NULL},
    };
    int rc;

    if (unit_tempdir("gateway", tmpdir, sizeof(tmpdir))) {
        perror("mkdtemp");
        return 1;
    }
    rc = unit_run("gateway", tests);
    unit_rmtree(tmpdir);
    return rc;
}
