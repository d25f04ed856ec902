#!/usr/bin/env python3
"""Stored responses survive the server: a clean stop (SIGTERM) and a crash (SIGKILL)
after the responses were received, on the fixture and on the seed-000 example; stored
responses expire after --key-ttl; one server per data dir; a busy port is a
configuration error (exit code 2)."""

import os
import signal
import socket
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import cnharness as h  # noqa: E402
from cnharness import header, parse_json  # noqa: E402

BODY_A = b'{"product_id":"p1","quantity":2}'
BODY_A2 = b'{"product_id":"p1","quantity":3}'
BODY_B = b'{"invalid":true}'
RESTART_DEADLINE_S = 15.0


class RestartTest(h.ServerTestCase):
    def restart(self, path, data_dir, *args):
        return self.restart_server(path, data_dir, *args, deadline_s=RESTART_DEADLINE_S)

    def first_life(self, path, *args):
        data_dir = self.make_data_dir()
        srv = self.start_server(path, *args, data_dir=data_dir)
        a = srv.post("/orders", BODY_A, key="restart-A",
                     headers={"Content-Type": "application/json"})
        self.assertEqual(a[0], 201, a[2])
        return srv, data_dir, a

    def check_second_life(self, srv, a, b=None, fixture=True):
        again = srv.post("/orders", BODY_A, key="restart-A",
                         headers={"Content-Type": "application/json"})
        self.assertReplayOf(a, again)
        self.assertEqual(header(again[1], "Set-Cookie"), None)
        self.assertProblem(srv.post("/orders", BODY_A2, key="restart-A"), 409, h.KEY_REUSED,
                           h.REUSED_ERROR)
        if b is not None:
            self.assertReplayOf(b, srv.post("/invalid", BODY_B, key="restart-B"))
        if fixture:
            self.assertEqual(srv.count("orders.create"), 0,
                             "the stored response must replay without running the handler")
            self.assertEqual(srv.count("invalid.run"), 0)
            # New keys still execute after the restart.
            self.assertEqual(srv.post("/orders", BODY_A, key="restart-C-" + uuid.uuid4().hex)[0],
                             201)
            self.assertEqual(srv.count("orders.create"), 1)

    def fixture_first_life(self):
        srv, data_dir, a = self.first_life(h.contract_server(), "--workers", "2")
        b = srv.post("/invalid", BODY_B, key="restart-B")
        self.assertEqual(b[0], 422, b[2])
        self.assertEqual(srv.count("orders.create"), 1)
        self.assertEqual(srv.count("invalid.run"), 1)
        return srv, data_dir, a, b

    def test_fixture_sigterm_restart(self):
        srv, data_dir, a, b = self.fixture_first_life()
        self.assertEqual(srv.stop(signal.SIGTERM), 0)
        srv2 = self.start_server(h.contract_server(), "--workers", "2", data_dir=data_dir)
        self.check_second_life(srv2, a, b)
        self.assertEqual(srv2.stop(signal.SIGTERM), 0)

    def test_fixture_sigkill_restart(self):
        srv, data_dir, a, b = self.fixture_first_life()
        srv.stop(signal.SIGKILL)
        srv.kill_group()
        srv2 = self.restart(h.contract_server(), data_dir, "--workers", "2")
        self.check_second_life(srv2, a, b)

    def test_fixture_two_restarts(self):
        srv, data_dir, a, b = self.fixture_first_life()
        self.assertEqual(srv.stop(), 0)
        srv2 = self.start_server(h.contract_server(), data_dir=data_dir)
        self.check_second_life(srv2, a, b)
        srv2.stop(signal.SIGKILL)
        srv2.kill_group()
        srv3 = self.restart(h.contract_server(), data_dir)
        self.check_second_life(srv3, a, b)

    def test_example_sigterm_restart(self):
        srv, data_dir, a = self.first_life(h.example_server(), *h.EXAMPLE_FLAGS)
        self.assertEqual(parse_json(a[2])["order_id"], "ord_restart-A")
        self.assertEqual(srv.stop(signal.SIGTERM), 0)
        srv2 = self.start_server(h.example_server(), *h.EXAMPLE_FLAGS, data_dir=data_dir)
        self.check_second_life(srv2, a, fixture=False)

    def test_example_sigkill_restart(self):
        srv, data_dir, a = self.first_life(h.example_server(), *h.EXAMPLE_FLAGS)
        srv.stop(signal.SIGKILL)
        srv.kill_group()
        srv2 = self.restart(h.example_server(), data_dir, *h.EXAMPLE_FLAGS)
        self.check_second_life(srv2, a, fixture=False)


class ExpiryTest(h.ServerTestCase):
    def test_stored_response_expires_after_ttl(self):
        srv = self.start_server(h.contract_server(), "--key-ttl", "1",
                                "--sweep-interval-ms", "200")
        first = srv.post("/orders", BODY_A, key="ttl-1")
        self.assertEqual(first[0], 201)
        self.assertEqual(parse_json(first[2])["n"], 1)
        deadline = time.monotonic() + 10.0
        polls = 0
        while True:
            resp = srv.post("/orders", BODY_A, key="ttl-1")
            polls += 1
            self.assertEqual(resp[0], 201, resp[2])
            if header(resp[1], "Idempotent-Replayed") is None:
                break
            self.assertEqual(resp[2], first[2], "before expiry the stored body replays")
            if time.monotonic() >= deadline:
                self.fail("the stored response did not expire within 10 s (--key-ttl 1)")
            time.sleep(0.1)
        self.assertEqual(parse_json(resp[2])["n"], 2)
        self.assertEqual(srv.count("orders.create"), 2)
        # The re-executed response is stored in turn.
        self.assertReplayOf(resp, srv.post("/orders", BODY_A, key="ttl-1"))

    def test_expired_key_accepts_a_different_body(self):
        srv = self.start_server(h.contract_server(), "--key-ttl", "1",
                                "--sweep-interval-ms", "50")
        self.assertEqual(srv.post("/orders", BODY_A, key="ttl-2")[0], 201)
        # Poll with the other body: 409 while stored, 201 once the key has expired.
        deadline = time.monotonic() + 10.0
        while True:
            resp = srv.post("/orders", BODY_A2, key="ttl-2")
            if resp[0] == 201:
                break
            self.assertProblem(resp, 409, h.KEY_REUSED)
            if time.monotonic() >= deadline:
                self.fail("the key did not expire within 10 s (--key-ttl 1)")
            time.sleep(0.1)
        self.assertEqual(srv.count("orders.create"), 2)


class ExclusiveResourcesTest(h.ServerTestCase):
    def test_second_server_on_same_data_dir_exits_2(self):
        data_dir = self.make_data_dir()
        first = self.start_server(h.contract_server(), data_dir=data_dir)
        second = self.server(h.contract_server(), data_dir=data_dir).spawn()
        rc = second.wait_exit(h.STARTUP_TIMEOUT_S)
        self.assertEqual(rc, 2, "a second server on a data dir in use must exit 2")
        err = second.stderr_text()
        self.assertIn(data_dir, err, "the error must name the data dir")
        self.assertNotIn("listening on", second.stdout_text())
        # The first one is unaffected.
        self.assertTrue(first.alive())
        self.assertEqual(first.health(), 200)
        self.assertEqual(first.post("/orders", BODY_A, key="lock-1")[0], 201)

    def test_busy_port_exits_2(self):
        blocker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(blocker.close)
        blocker.bind(("127.0.0.1", 0))
        blocker.listen(1)
        port = blocker.getsockname()[1]
        srv = self.server(h.contract_server(), port=port).spawn()
        rc = srv.wait_exit(h.STARTUP_TIMEOUT_S)
        self.assertEqual(rc, 2, "a port in use is a configuration error")
        self.assertIn(str(port), srv.stderr_text(), "the error must name the port")
        self.assertNotIn("listening on", srv.stdout_text())

    def test_unusable_data_dir_exits_2(self):
        # A path below a regular file cannot be created, whoever runs the test (root
        # ignores permission bits, so those would prove nothing here).
        parent = self.make_data_dir()
        blocker = os.path.join(parent, "file")
        with open(blocker, "w") as f:
            f.write("not a directory\n")
        data_dir = os.path.join(blocker, "data")
        srv = self.server(h.contract_server(), data_dir=data_dir).spawn()
        rc = srv.wait_exit(h.STARTUP_TIMEOUT_S)
        self.assertEqual(rc, 2, "an unusable --data-dir is a configuration error")
        self.assertIn(blocker, srv.stderr_text(), "the error must name the data dir")
        self.assertNotIn("listening on", srv.stdout_text())


if __name__ == "__main__":
    h.main()
