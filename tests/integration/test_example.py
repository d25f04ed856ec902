#!/usr/bin/env python3
"""The example services: seed 000 ("Durable Orders with Realtime", the four curl checks
and its validation messages) and seed 001 (the minimal service), plus the command line
and signal behaviour every server binary shares."""

import os
import signal
import subprocess
import sys
import shutil
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import cnharness as h  # noqa: E402
from cnharness import header, parse_json  # noqa: E402

JSON = {"Content-Type": "application/json"}
ORDER = b'{"product_id":"p1","quantity":2}'


class DurableOrdersExampleTest(h.ServerTestCase):
    def setUp(self):
        super().setUp()
        self.srv = self.start_server(h.example_server(), *h.EXAMPLE_FLAGS, "--workers", "2")

    def test_health(self):
        st, hs, body = self.srv.get("/health")
        self.assertEqual(st, 200)
        self.assertEqual(header(hs, "Content-Type"), "application/json")
        self.assertEqual(parse_json(body), {"ok": True, "service": "durable-orders-realtime"})

    def test_seed_curl_checks(self):
        # 1. A new key executes: 201 and the order.
        first = self.srv.post("/orders", ORDER, key="order-123", headers=JSON)
        st, hs, body = first
        self.assertEqual(st, 201, body)
        self.assertEqual(header(hs, "Content-Type"), "application/json")
        self.assertIsNone(header(hs, "Idempotent-Replayed"))
        self.assertEqual(parse_json(body), {"ok": True, "order_id": "ord_order-123",
                                            "product_id": "p1", "quantity": 2})

        # 2. The same request again: the stored response, byte for byte.
        again = self.srv.post("/orders", ORDER, key="order-123", headers=JSON)
        self.assertEqual(again[0], 201)
        self.assertEqual(again[2], body, "the replay must be byte-identical")
        self.assertEqual(header(again[1], "Idempotent-Replayed"), "true")
        self.assertReplayOf(first, again)

        # 3. The same key with another body: 409.
        resp = self.srv.post("/orders", b'{"product_id":"p2","quantity":1}', key="order-123",
                             headers=JSON)
        self.assertProblem(resp, 409, h.KEY_REUSED, h.REUSED_ERROR)

        # 4. No key: 400.
        resp = self.srv.post("/orders", ORDER, headers=JSON)
        self.assertProblem(resp, 400, h.KEY_MISSING, h.MISSING_KEY_ERROR)

        # Still the stored response after the rejected requests.
        self.assertReplayOf(first, self.srv.post("/orders", ORDER, key="order-123",
                                                 headers=JSON))

    def test_validation_errors(self):
        cases = [
            ("no-product", b'{"quantity":2}', "Missing required field: product_id"),
            ("empty-product", b'{"product_id":"","quantity":2}',
             "Missing required field: product_id"),
            ("zero-quantity", b'{"product_id":"p1","quantity":0}',
             "Field quantity must be greater than zero"),
            ("negative-quantity", b'{"product_id":"p1","quantity":-3}',
             "Field quantity must be greater than zero"),
            ("no-quantity", b'{"product_id":"p1"}', "Field quantity must be greater than zero"),
            ("not-json", b"product_id=p1", "Missing required field: product_id"),
        ]
        for key, body, error in cases:
            with self.subTest(key):
                first = self.srv.post("/orders", body, key=key, headers=JSON)
                st, hs, resp_body = first
                self.assertEqual(st, 400, resp_body)
                self.assertEqual(header(hs, "Content-Type"), "application/problem+json")
                doc = parse_json(resp_body)
                self.assertEqual(doc["error"], error)
                self.assertIsNone(header(hs, "Idempotent-Replayed"))
                # A validation 400 is the operation's result: it is stored and replayed.
                self.assertReplayOf(first, self.srv.post("/orders", body, key=key,
                                                         headers=JSON))

    def test_sigterm_exits_0(self):
        self.assertEqual(self.srv.post("/orders", ORDER, key="before-stop")[0], 201)
        rc = self.srv.stop(signal.SIGTERM)
        self.assertEqual(rc, 0, "SIGTERM must stop the server cleanly")

    def test_sigint_exits_0(self):
        self.assertEqual(self.srv.health(), 200)
        self.assertEqual(self.srv.stop(signal.SIGINT), 0)


class CommandLineTest(h.ServerTestCase):
    def run_binary(self, *args):
        cwd = tempfile.mkdtemp(prefix="cnerium-integ-cwd-")
        self.addCleanup(shutil.rmtree, cwd, True)
        try:
            return subprocess.run([h.example_server()] + list(args), cwd=cwd,
                                  stdin=subprocess.DEVNULL, capture_output=True, timeout=20)
        except subprocess.TimeoutExpired as e:
            self.fail("%s %s did not exit within 20 s" % (h.example_server(), args))
            raise e

    def test_help(self):
        p = self.run_binary("--help")
        self.assertEqual(p.returncode, 0, p.stderr)
        out = p.stdout.decode("utf-8", "replace")
        self.assertIn("usage", out.lower())
        for flag in ("--data-dir", "--port", "--host", "--workers"):
            self.assertIn(flag, out)
        self.assertNotIn("listening on", out)

    def test_unknown_flag_exits_2(self):
        p = self.run_binary("--no-such-flag")
        self.assertEqual(p.returncode, 2, p.stderr)
        err = p.stderr.decode("utf-8", "replace")
        self.assertIn("no-such-flag", err)
        self.assertNotIn("listening on", p.stdout.decode("utf-8", "replace"))

    def test_bad_values_exit_2(self):
        for args in (("--port", "70000"), ("--port", "abc"), ("--workers", "0"),
                     ("--durability", "sometimes"), ("--port",)):
            with self.subTest(args=args):
                p = self.run_binary(*args)
                self.assertEqual(p.returncode, 2, p.stderr)
                self.assertTrue(p.stderr.strip(), "a configuration error says why on stderr")


class FlagsAndEnvironmentTest(h.ServerTestCase):
    """--flag=value, CNERIUM_* variables, and flags winning over the environment, seen
    through --max-body (the fixture answers 413 above it)."""

    def body_limit_is(self, srv, limit):
        self.assertEqual(srv.post("/raw", b"x" * limit, key="at-limit")[0], 200)
        self.assertEqual(srv.post("/raw", b"x" * (limit + 1), key="over-limit")[0], 413)

    def test_flag_equals_form(self):
        self.body_limit_is(self.start_server(h.contract_server(), "--max-body=16"), 16)

    def test_environment_variable(self):
        srv = self.start_server(h.contract_server(), env={"CNERIUM_MAX_BODY": "32"})
        self.body_limit_is(srv, 32)

    def test_flag_wins_over_environment(self):
        srv = self.start_server(h.contract_server(), "--max-body", "24",
                                env={"CNERIUM_MAX_BODY": "32"})
        self.body_limit_is(srv, 24)

    def test_bad_environment_value_exits_2(self):
        srv = self.server(h.contract_server(), env={"CNERIUM_WORKERS": "many"}).spawn()
        self.assertEqual(srv.wait_exit(h.STARTUP_TIMEOUT_S), 2)
        self.assertIn("CNERIUM_WORKERS", srv.stderr_text())


class MinimalExampleTest(h.ServerTestCase):
    def test_health_and_durable_orders(self):
        srv = self.start_server(h.minimal_server(), *h.EXAMPLE_FLAGS)
        self.assertEqual(srv.get_json("/health"), (200, {"ok": True}))
        first = srv.post("/orders", b'{"anything":1}', key="min-1")
        self.assertEqual(first[0], 201, first[2])
        self.assertEqual(parse_json(first[2]), {"ok": True})
        self.assertIsNone(header(first[1], "Idempotent-Replayed"))
        self.assertReplayOf(first, srv.post("/orders", b'{"anything":1}', key="min-1"))
        self.assertProblem(srv.post("/orders", b'{"anything":2}', key="min-1"), 409,
                           h.KEY_REUSED, h.REUSED_ERROR)
        self.assertProblem(srv.post("/orders", b"{}"), 400, h.KEY_MISSING,
                           h.MISSING_KEY_ERROR)
        self.assertEqual(srv.stop(), 0)


if __name__ == "__main__":
    h.main()
