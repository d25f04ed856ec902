#!/usr/bin/env python3
"""Several hosts, one contract: two and three servers on their own ports and data dirs
sharing one PostgreSQL database (--store postgresql://...), driven over loopback.

A real PostgreSQL server is started for the suite (tests/pgserver.py: initdb into a temp
dir, its own loopback port, stopped by PID at the end); every test gets a database of
its own. Covered: a key's first request on one host replays byte for byte on another, a
different body gets 409 there; storms of duplicates spread over three hosts run once per
key; a key past its expiry runs again (also on a host holding a copy of its response);
a host SIGKILLed mid-handler: another host runs the key once its lease has ended,
and every answer the dead host acknowledged replays elsewhere; the database restarted
under load: 503 with Retry-After while it is down, nothing acknowledged lost, serving
again without a restart; events gapless and identical on every host's WebSocket (live
and resumed with ?since=); the order service (examples/orders.c) unchanged on the
shared store, with cancel and ship of one order racing on two hosts; --store errors.
Every wait is bounded; every server is stopped by PID.
"""

import json
import os
import re
import shutil
import socket
import sys
import tempfile
import threading
import time
import unittest
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import cnharness as h  # noqa: E402
from cnharness import header, parse_json, wait_until  # noqa: E402
import pgserver  # noqa: E402
import wsclient  # noqa: E402

REALTIME_RE = re.compile(r"realtime on ws://127\.0\.0\.1:(\d+)(/\S*)")
FIXTURE_ENV = {"CNERIUM_FIXTURE_REALTIME": "1"}
JSON = {"Content-Type": "application/json"}
EVENT_TIMEOUT_S = 15.0
LEASE_MS = 1500
API = "/api/v1/orders"


def fresh(prefix="k"):
    return "%s-%s" % (prefix, uuid.uuid4().hex[:16])


def together(requests, timeout=60.0):
    """[(srv, path, body, key)] as POSTs released together; [(status, headers, body, s)]
    or exceptions, in order (cnharness.run_together_on)."""
    return h.run_together_on(requests, timeout)


def metrics(srv):
    """{name: value} of the unlabelled samples of GET /metrics."""
    st, _, body = srv.get("/metrics")
    assert st == 200, body
    out = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            if "{" not in name:
                out[name] = float(value)
    return out


def ws_port(srv):
    m = REALTIME_RE.search(srv.stdout_text())
    if not m:
        raise AssertionError("no 'realtime on ws://...' line: %r" % srv.stdout_text())
    return int(m.group(1))


def events_until(client, last_seq, timeout=EVENT_TIMEOUT_S):
    """Event frames until one with seq >= last_seq; anything else fails."""
    out = []
    deadline = time.monotonic() + timeout
    while not out or out[-1]["seq"] < last_seq:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError("timed out waiting for seq %d; got %r" % (last_seq, out[-3:]))
        try:
            msg = client.recv_json(left)
        except socket.timeout:
            continue
        if not isinstance(msg, dict) or "seq" not in msg:
            raise AssertionError("expected an event frame, got %r" % (msg,))
        out.append(msg)
    return out


class SharedStoreCase(h.ServerTestCase):
    """One PostgreSQL server for the class, one database per test."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.pg_state = tempfile.mkdtemp(prefix="cnerium-hosts-pg-")
        try:
            pgserver.start(cls.pg_state)
        except BaseException:
            pgserver.stop(cls.pg_state)
            shutil.rmtree(cls.pg_state, ignore_errors=True)
            raise

    @classmethod
    def tearDownClass(cls):
        pgserver.stop(cls.pg_state)
        shutil.rmtree(cls.pg_state, ignore_errors=True)
        super().tearDownClass()

    def setUp(self):
        super().setUp()
        self.url = pgserver.create_database(self.pg_state, "t_" + uuid.uuid4().hex[:12])

    def host(self, node, *args, path=None, realtime=False):
        """A server on the shared store: 2 workers, its own port and data dir."""
        return self.start_server(path or h.contract_server(), "--workers", "2",
                                 "--store", self.url, "--node-id", node,
                                 "--lease-ms", str(LEASE_MS), *args,
                                 env=FIXTURE_ENV if realtime else None)

    def executions(self, hosts, op):
        return sum(srv.count(op) for srv in hosts)

    def assertReplayOf(self, first, again):
        """again replays first byte for byte (status, body, content type, Location)."""
        self.assertEqual(again[0], first[0], again[2][:300])
        self.assertEqual(again[2], first[2])
        self.assertEqual(header(again[1], "Idempotent-Replayed"), "true")
        for name in ("Content-Type", "Location"):
            self.assertEqual(header(again[1], name), header(first[1], name), name)


class ContractAcrossHostsTest(SharedStoreCase):
    def test_replay_and_conflict_on_another_host(self):
        a, b = self.host("a"), self.host("b")
        key, body = fresh("x"), b'{"amount":42}'
        first = a.post("/orders", body, key=key, headers=JSON)
        self.assertEqual(first[0], 201, first[2])
        self.assertIsNone(header(first[1], "Idempotent-Replayed"))
        again = b.post("/orders", body, key=key, headers=JSON)
        self.assertReplayOf(first, again)
        self.assertReplayOf(first, a.post("/orders", body, key=key, headers=JSON))
        self.assertProblem(b.post("/orders", b'{"amount":43}', key=key, headers=JSON), 409,
                           h.PROBLEM + "idempotency-key-reused")
        self.assertEqual(self.executions((a, b), "orders.create"), 1)
        # Each host counts its own claims and commits, with their latency.
        ma, mb = metrics(a), metrics(b)
        self.assertEqual(ma["cnerium_store_commit_records_total"], 1)
        self.assertEqual(mb["cnerium_store_commit_records_total"], 0)
        self.assertGreaterEqual(ma["cnerium_store_claims_total"], 1)
        # (b's 409 may come from the copy its worker kept of the replay: one claim or two)
        self.assertGreaterEqual(mb["cnerium_store_claims_total"], 1)
        self.assertEqual(ma["cnerium_store_commit_seconds_count"],
                         ma["cnerium_store_commits_total"])
        self.assertEqual(mb["cnerium_store_claim_seconds_count"],
                         mb["cnerium_store_claims_total"])
        self.assertEqual(ma["cnerium_store_claim_failures_total"], 0)
        # A response that is not stored (the handler's 5xx) frees the key on every host.
        key = fresh("flaky")
        r1 = a.post("/flaky?status=500", b"{}", key=key)
        self.assertGreaterEqual(r1[0], 500, r1[2])
        r2 = b.post("/flaky?status=500", b"{}", key=key)
        self.assertGreaterEqual(r2[0], 500, r2[2])
        self.assertIsNone(header(r2[1], "Idempotent-Replayed"))
        self.assertEqual(self.executions((a, b), "flaky.run"), 2)

    def test_expired_key_runs_again_on_every_host(self):
        a, b = self.host("a", "--key-ttl", "1"), self.host("b", "--key-ttl", "1")
        key = fresh("ttl")
        first = a.post("/orders", b"{}", key=key, headers=JSON)
        self.assertEqual(first[0], 201, first[2])
        self.assertReplayOf(first, b.post("/orders", b"{}", key=key, headers=JSON))
        self.assertReplayOf(first, b.post("/orders", b"{}", key=key, headers=JSON))  # cached
        # Past its expiry the key is new again, on the host that replayed it from its
        # copy too (bounded poll: every try before the expiry is a replay).
        again = wait_until(lambda: (lambda r: r if header(r[1], "Idempotent-Replayed") is None
                                    else None)(b.post("/orders", b"{}", key=key, headers=JSON)),
                           15.0, step=0.1, what="the key expired")
        self.assertEqual(again[0], 201, again[2])
        self.assertEqual(self.executions((a, b), "orders.create"), 2)
        self.assertReplayOf(again, a.post("/orders", b"{}", key=key, headers=JSON))

    def test_storms_over_three_hosts_run_once(self):
        hosts = [self.host(n) for n in ("a", "b", "c")]
        keys = [fresh("storm") for _ in range(6)]
        for key in keys:
            reqs = [(hosts[i % 3], "/slow?ms=150", b'{"s":1}', key) for i in range(12)]
            results = together(reqs)
            for r in results:
                self.assertNotIsInstance(r, Exception)
                self.assertEqual(r[0], 201, r[2])
            self.assertEqual(len({r[2] for r in results}), 1, "one answer per key")
            self.assertEqual(sum(header(r[1], "Idempotent-Replayed") is None
                                 for r in results), 1, "one execution answered as such")
        self.assertEqual(self.executions(hosts, "slow.run"), len(keys))

    def test_host_killed_mid_handler_is_taken_over_after_its_lease(self):
        a, b = self.host("a"), self.host("b")
        acked = {}
        for _ in range(5):
            key = fresh("acked")
            r = a.post("/orders", b'{"n":1}', key=key, headers=JSON)
            self.assertEqual(r[0], 201, r[2])
            acked[key] = r
        key = fresh("killed")
        started = threading.Event()
        box = {}

        def run_on_a():
            started.set()
            box["r"] = a.attempt("POST", "/slow?ms=1000", b"{}", {"Idempotency-Key": key})

        t = threading.Thread(target=run_on_a, daemon=True)
        t.start()
        started.wait(5)
        a.wait_for_count("slow.run", 1)
        a.kill()
        t.join(10)
        self.assertIsInstance(box.get("r"), Exception, "the killed host answered")
        # b waits for a's claim until its lease ends, then runs the key once.
        r = b.post("/slow?ms=1000", b"{}", key=key)
        self.assertEqual(r[0], 201, r[2])
        self.assertIsNone(header(r[1], "Idempotent-Replayed"))
        self.assertEqual(b.count("slow.run"), 1)
        self.assertReplayOf(r, b.post("/slow?ms=1000", b"{}", key=key))
        # What a acknowledged before it died is stored: b replays it.
        for k, first in acked.items():
            self.assertReplayOf(first, b.post("/orders", b'{"n":1}', key=k, headers=JSON))
        self.assertEqual(b.count("orders.create"), 0)

    def test_database_restart_under_load(self):
        a, b = self.host("a"), self.host("b")
        results = []  # (host index, key, response)
        lock = threading.Lock()
        stop = threading.Event()
        saw_503 = threading.Event()

        def load(i):
            hosts = (a, b)
            for n in range(400):  # bounded in count and by the stop flag
                if stop.is_set():
                    return
                key = fresh("load%d" % i)
                r = hosts[(i + n) % 2].attempt("POST", "/orders", b'{"load":1}',
                            {"Idempotency-Key": key, "Content-Type": "application/json"})
                with lock:
                    results.append(((i + n) % 2, key, r))
                if not isinstance(r, Exception) and r[0] == 503:
                    saw_503.set()
                    time.sleep(0.01)  # a client backing off; the loop stays bounded

        threads = [threading.Thread(target=load, args=(i,), daemon=True) for i in range(4)]
        for t in threads:
            t.start()
        try:
            wait_until(lambda: len(results) >= 40, 30.0, what="40 answers before the restart")
            pgserver.halt(self.pg_state)
            try:
                self.assertTrue(saw_503.wait(30.0), "no 503 while the database was down")
            finally:
                pgserver.resume(self.pg_state)
            count = len(results)
            wait_until(lambda: any(not isinstance(r, Exception) and r[0] == 201
                                   for _, _, r in results[count:]),
                       30.0, what="a 201 after the database came back")
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        statuses = {}
        for _, _, r in results:
            self.assertNotIsInstance(r, Exception, "every request gets an HTTP answer")
            statuses[r[0]] = statuses.get(r[0], 0) + 1
            if r[0] == 503:
                self.assertEqual(header(r[1], "Retry-After"), "1")
        self.assertEqual(set(statuses) - {201, 503}, set(), statuses)
        failures = sum(m["cnerium_store_claim_failures_total"] +
                       m["cnerium_store_commit_failures_total"] for m in map(metrics, (a, b)))
        self.assertGreater(failures, 0, "the database's failures are counted")
        # Nothing acknowledged is lost: every 201 replays on the other host.
        acked = [(i, k, r) for i, k, r in results if r[0] == 201]
        for i, k, r in acked:
            other = (b, a)[i]
            self.assertReplayOf(r, other.post("/orders", b'{"load":1}', key=k, headers=JSON))
        # A key answered 503 is free or stored: its retry gets the final answer.
        for i, k, r in [x for x in results if x[2][0] == 503][:20]:
            again = (a, b)[i].post("/orders", b'{"load":1}', key=k, headers=JSON)
            self.assertEqual(again[0], 201, again[2])
        sys.stderr.write("\n  database restart: %r\n" % statuses)


class EventsAcrossHostsTest(SharedStoreCase):
    def test_events_gapless_and_identical_on_every_host(self):
        a = self.host("a", realtime=True)
        b = self.host("b", realtime=True)
        ca = wsclient.WSClient("127.0.0.1", ws_port(a), "/ws", timeout=10)
        cb = wsclient.WSClient("127.0.0.1", ws_port(b), "/ws", timeout=10)
        self.addCleanup(ca.close)
        self.addCleanup(cb.close)
        n = 0
        for i in range(12):
            srv = (a, b)[i % 2]
            r = srv.post("/orders", b'{"i":%d}' % i, key=fresh("ev"), headers=JSON)
            self.assertEqual(r[0], 201, r[2])
            n += 1
            if i % 4 == 3:  # an ordinary route's event: committed after its answer
                self.assertEqual(srv.post("/announce", b"a%d" % i)[0], 200)
                n += 1
        got_a = events_until(ca, n)
        got_b = events_until(cb, n)
        self.assertEqual([e["seq"] for e in got_a], list(range(1, n + 1)))
        self.assertEqual(got_a, got_b)
        # A replay emits nothing: the next event on every host is n + 1.
        key = fresh("ev")
        self.assertEqual(a.post("/orders", b"{}", key=key, headers=JSON)[0], 201)
        self.assertEqual(b.post("/orders", b"{}", key=key, headers=JSON)[0], 201)
        self.assertEqual(self.executions((a, b), "orders.create"), 13)
        last = events_until(ca, n + 1)
        self.assertEqual(last, events_until(cb, n + 1))
        self.assertEqual([e["seq"] for e in last], [n + 1])
        # A client resuming on either host gets the same history.
        for srv in (a, b):
            late = wsclient.WSClient("127.0.0.1", ws_port(srv), "/ws?since=3", timeout=10)
            self.addCleanup(late.close)
            self.assertEqual(events_until(late, n + 1), got_a[3:] + last)


class OrdersOnSharedStoreTest(SharedStoreCase):
    def test_cancel_and_ship_race_across_hosts(self):
        orders = h.binary("CNERIUM_ORDERS_EXAMPLE")
        if not orders:
            self.skipTest("the orders example is not built")
        a = self.host("a", "--realtime-port", "0", path=orders)
        b = self.host("b", "--realtime-port", "0", path=orders)
        item = {"product_id": "p", "name": "W", "quantity": 1, "unit_price_cents": 100}
        wins = {"cancel": 0, "ship": 0}
        for n in range(4):
            r = a.post(API, json.dumps({"customer_id": "race", "items": [item]}).encode(),
                       key=fresh("place"), headers=JSON)
            self.assertEqual(r[0], 201, r[2])
            oid = parse_json(r[2])["order_id"]
            reqs = []
            for i in range(3):
                reqs.append((a, "%s/%s/cancel" % (API, oid), b'{"reason":"r"}', fresh("c")))
                reqs.append((b, "%s/%s/ship" % (API, oid), b'{"tracking_number":"T"}',
                             fresh("s")))
            results = together(reqs)
            statuses = [r[0] if not isinstance(r, Exception) else repr(r) for r in results]
            self.assertEqual(statuses.count(200), 1, statuses)
            self.assertEqual(statuses.count(200) + statuses.count(400) + statuses.count(409),
                             len(statuses), statuses)
            winner = reqs[statuses.index(200)][1].rsplit("/", 1)[1]
            wins[winner] += 1
            for srv in (a, b):
                st, _, body = srv.get("%s/%s/events" % (API, oid))
                self.assertEqual(st, 200, body)
                ev = parse_json(body)
                self.assertEqual(ev["version"], 2)
                self.assertEqual([e["type"] for e in ev["events"]],
                                 ["OrderPlaced", "OrderCancelled" if winner == "cancel"
                                  else "OrderShipped"])
        # Each host's read model folds the one stream log: both list every order, with
        # the status the race left.
        lists = []
        for srv in (a, b):
            st, _, body = srv.get(API + "?limit=500&customer_id=race")
            self.assertEqual(st, 200, body)
            lists.append(sorted((o["order_id"], o["status"]) for o in parse_json(body)["orders"]))
        self.assertEqual(len(lists[0]), 4)
        self.assertEqual(lists[0], lists[1])
        self.assertEqual(sorted(st for _, st in lists[0]),
                         sorted(["cancelled"] * wins["cancel"] + ["shipped"] * wins["ship"]))
        sys.stderr.write("\n  race across hosts: wins %r\n" % wins)


class StoreFlagTest(SharedStoreCase):
    def test_bad_store_values_fail_the_start_clearly(self):
        for value, rc, text in (("mysql://x", 2, "--store must be lmdb or a postgresql://"),
                                ("postgresql://postgres@127.0.0.1:1/none", 1,
                                 "cannot use the shared store")):
            srv = self.server(h.contract_server(), "--store", value)
            self.assertFalse(srv.try_start(), value)
            self.assertEqual(srv.wait_exit(15.0), rc, srv.diagnostics())
            self.assertIn(text, srv.stderr_text())
            self.assertNotIn("password", srv.stderr_text())

    def test_schema_is_created_once_by_hosts_starting_together(self):
        hosts = [self.server(h.contract_server(), "--workers", "1", "--store", self.url)
                 for _ in range(3)]
        for srv in hosts:
            srv.spawn()
        for srv in hosts:
            self.assertTrue(srv.wait_listening(), srv.diagnostics())
        key = fresh("schema")
        first = hosts[0].post("/orders", b"{}", key=key)
        self.assertEqual(first[0], 201, first[2])
        for srv in hosts[1:]:
            self.assertReplayOf(first, srv.post("/orders", b"{}", key=key))


if __name__ == "__main__":
    unittest.main(verbosity=2)
