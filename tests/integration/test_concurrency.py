#!/usr/bin/env python3
"""Concurrent duplicates: requests with the same key that overlap in time run the handler
once; the others wait and replay (same body) or get 409 at once (different body).

Threads connect first, meet at a Barrier, then send, so the requests really overlap; the
fixture's /slow handler holds the key for a while. No test sleeps to synchronize."""

import os
import sys
import threading
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import cnharness as h  # noqa: E402
from cnharness import header, parse_json  # noqa: E402

JOIN_TIMEOUT_S = 60.0



def metric(srv, name):
    """A sample from GET /metrics, as an int."""
    status, headers, body = srv.get("/metrics")
    if status != 200:
        raise AssertionError("GET /metrics answered %d" % status)
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return int(float(line.split()[1]))
    raise AssertionError("%s missing from /metrics" % name)


def thread_counts(srv):
    """{worker pid: number of threads} for the server's worker processes."""
    return {c.pid: len(os.listdir("/proc/%d/task" % c.pid))
            for c in h.live_children(srv.proc.pid) if c.comm.startswith("cn-worker-")}


def inflight_waits(srv):
    """cnerium_inflight_waits_total from GET /metrics: durable requests that waited for a
    concurrent duplicate."""
    status, headers, body = srv.get("/metrics")
    if status != 200:
        raise AssertionError("GET /metrics answered %d" % status)
    for line in body.decode().splitlines():
        if line.startswith("cnerium_inflight_waits_total "):
            return int(float(line.split()[1]))
    raise AssertionError("cnerium_inflight_waits_total missing from /metrics")

class ConcurrentDuplicatesTest(h.ServerTestCase):
    def setUp(self):
        super().setUp()
        self.srv = self.start_server(h.contract_server(), "--workers", "4")

    def check_results(self, results):
        for r in results:
            if isinstance(r, Exception):
                raise AssertionError("a request failed: %r" % (r,)) from r

    def test_16_identical_requests_run_once(self):
        key = "same-" + uuid.uuid4().hex
        body = b'{"item":"x"}'
        results = h.run_together(self.srv, [("/slow?ms=300", body, key)] * 16)
        self.check_results(results)
        statuses = [r[0] for r in results]
        self.assertEqual(statuses, [201] * 16, [r[2] for r in results])
        bodies = {r[2] for r in results}
        self.assertEqual(len(bodies), 1, "every duplicate gets the one stored body: %r"
                         % bodies)
        self.assertEqual(parse_json(results[0][2])["n"], 1)
        replayed = [header(r[1], "Idempotent-Replayed") for r in results]
        self.assertEqual(replayed.count(None), 1, replayed)
        self.assertEqual(replayed.count("true"), 15, replayed)
        executed = [r for r in results if header(r[1], "Idempotent-Replayed") is None][0]
        for r in results:
            self.assertEqual(header(r[1], "Location"), header(executed[1], "Location"))
        self.assertEqual(self.srv.count("slow.run"), 1)
        # Afterwards a plain retry replays too.
        again = self.srv.post("/slow?ms=300", body, key=key)
        self.assertEqual(again[2], executed[2])
        self.assertEqual(header(again[1], "Idempotent-Replayed"), "true")
        self.assertEqual(self.srv.count("slow.run"), 1)

    def test_10_keys_4_duplicates_each(self):
        keys = ["multi-%d-%s" % (i, uuid.uuid4().hex[:8]) for i in range(10)]
        reqs = []
        for _ in range(4):
            for i, k in enumerate(keys):
                reqs.append(("/slow?ms=300", b'{"i":%d}' % i, k))
        results = h.run_together(self.srv, reqs)
        self.check_results(results)
        self.assertEqual([r[0] for r in results], [201] * len(reqs),
                         [r[2] for r in results])
        for k in keys:
            mine = [r for (path, body, kk), r in zip(reqs, results) if kk == k]
            self.assertEqual(len({r[2] for r in mine}), 1, "key %s: bodies differ" % k)
            fresh = [r for r in mine if header(r[1], "Idempotent-Replayed") is None]
            self.assertEqual(len(fresh), 1, "key %s ran %d times" % (k, len(fresh)))
        ns = sorted(parse_json(r[2])["n"] for r in results
                    if header(r[1], "Idempotent-Replayed") is None)
        self.assertEqual(ns, list(range(1, 11)))
        self.assertEqual(self.srv.count("slow.run"), 10)

    def test_8_different_bodies_one_wins(self):
        key = "race-" + uuid.uuid4().hex
        reqs = [("/slow?ms=500", b'{"variant":%d}' % i, key) for i in range(8)]
        results = h.run_together(self.srv, reqs)
        self.check_results(results)
        statuses = sorted(r[0] for r in results)
        self.assertEqual(statuses, [201] + [409] * 7, [r[2] for r in results])
        for r in results:
            if r[0] == 409:
                self.assertProblem(r[:3], 409, h.KEY_REUSED, h.REUSED_ERROR)
        self.assertEqual(self.srv.count("slow.run"), 1)
        winner = [i for i, r in enumerate(results) if r[0] == 201][0]
        # The winner's body replays; every loser's body is still a conflict.
        again = self.srv.post("/slow?ms=500", reqs[winner][1], key=key)
        self.assertEqual(header(again[1], "Idempotent-Replayed"), "true")
        self.assertEqual(again[2], results[winner][2])
        loser = (winner + 1) % 8
        self.assertEqual(self.srv.post("/slow?ms=500", reqs[loser][1], key=key)[0], 409)
        self.assertEqual(self.srv.count("slow.run"), 1)

    def test_different_body_while_in_flight_is_409_at_once(self):
        """While the owner of a key is still running, a different body is rejected without
        waiting for it; the same body waits and replays."""
        key = "inflight-" + uuid.uuid4().hex
        owner_result = []
        owner = threading.Thread(
            target=lambda: owner_result.append(
                self.srv.post("/slow?ms=3000", b'{"owner":1}', key=key)),
            daemon=True)
        owner.start()
        # The owner is in its handler once the fixture counted it.
        self.srv.wait_for_count("slow.run", 1)
        results = h.run_together(self.srv, [("/slow?ms=3000", b'{"other":%d}' % i, key)
                                          for i in range(7)])
        owner_done_at_conflicts = not owner.is_alive()
        self.check_results(results)
        for r in results:
            self.assertProblem(r[:3], 409, h.KEY_REUSED)
        self.assertFalse(owner_done_at_conflicts,
                         "the 409s must come while the owner still runs, not after it")
        self.assertLess(max(r[3] for r in results), 2.5)
        # Same body while in flight: waits for the owner and replays its response.
        waiter = self.srv.post("/slow?ms=3000", b'{"owner":1}', key=key)
        owner.join(JOIN_TIMEOUT_S)
        self.assertFalse(owner.is_alive())
        self.assertEqual(owner_result[0][0], 201)
        self.assertEqual(waiter[0], 201)
        self.assertEqual(waiter[2], owner_result[0][2])
        self.assertEqual(header(waiter[1], "Idempotent-Replayed"), "true")
        self.assertEqual(self.srv.count("slow.run"), 1)

    def test_inflight_reject_mode(self):
        """--inflight reject: a same-body duplicate of a running request is not kept
        waiting; it gets 409 request-in-progress with Retry-After: 1."""
        srv = self.start_server(h.contract_server(), "--workers", "2",
                                "--inflight", "reject")
        key = "reject-" + uuid.uuid4().hex
        owner_result = []
        owner = threading.Thread(
            target=lambda: owner_result.append(srv.post("/slow?ms=2000", b"{}", key=key)),
            daemon=True)
        owner.start()
        srv.wait_for_count("slow.run", 1)
        resp = srv.post("/slow?ms=2000", b"{}", key=key)
        self.assertTrue(owner.is_alive(), "the duplicate must not wait for the owner")
        self.assertProblem(resp, 409, h.IN_PROGRESS)
        self.assertEqual(header(resp[1], "Retry-After"), "1")
        owner.join(JOIN_TIMEOUT_S)
        self.assertEqual(owner_result[0][0], 201)
        # Once the owner finished, a retry replays.
        again = srv.post("/slow?ms=2000", b"{}", key=key)
        self.assertEqual(header(again[1], "Idempotent-Replayed"), "true")
        self.assertEqual(srv.count("slow.run"), 1)

    def test_wait_bound_gives_in_progress(self):
        """--inflight-wait-ms bounds the default wait: past it the duplicate gets the same
        409 request-in-progress while the owner keeps running."""
        srv = self.start_server(h.contract_server(), "--workers", "2",
                                "--inflight-wait-ms", "200")
        key = "bound-" + uuid.uuid4().hex
        owner_result = []
        owner = threading.Thread(
            target=lambda: owner_result.append(srv.post("/slow?ms=2000", b"{}", key=key)),
            daemon=True)
        owner.start()
        srv.wait_for_count("slow.run", 1)
        waits = inflight_waits(srv)
        resp = srv.post("/slow?ms=2000", b"{}", key=key)
        self.assertEqual(inflight_waits(srv), waits + 1, "the duplicate must wait")
        self.assertTrue(owner.is_alive(), "the wait is bounded by --inflight-wait-ms")
        self.assertProblem(resp, 409, h.IN_PROGRESS)
        self.assertEqual(header(resp[1], "Retry-After"), "1")
        owner.join(JOIN_TIMEOUT_S)
        self.assertEqual(owner_result[0][0], 201)
        self.assertEqual(srv.count("slow.run"), 1)

    def test_parked_duplicates_hold_no_threads(self):
        """Duplicates waiting for the key's holder are parked: their connections are
        suspended and no thread waits for them (a worker's thread count does not grow
        with them); /metrics counts them; the holder's end answers them all."""
        srv = self.srv
        key = "parked-" + uuid.uuid4().hex
        body = b'{"p":1}'
        before = thread_counts(srv)
        self.assertEqual(len(before), 4, before)
        results = [None] * 20

        def send(i):
            try:
                results[i] = srv.post("/slow?ms=8000", body, key=key, timeout=JOIN_TIMEOUT_S)
            except Exception as e:  # noqa: BLE001 - reported below
                results[i] = e
        first = threading.Thread(target=send, args=(0,), daemon=True)
        first.start()
        srv.wait_for_count("slow.run", 1)
        rest = [threading.Thread(target=send, args=(i,), daemon=True) for i in range(1, 20)]
        for t in rest:
            t.start()
        # The holder runs for 8 s: long enough for 19 requests to park on a loaded machine.
        h.wait_until(lambda: metric(srv, "cnerium_inflight_parked") == 19, 30.0, step=0.02,
                     what="19 duplicates parked")
        self.assertEqual(thread_counts(srv), before,
                         "waiting duplicates must not take threads")
        for t in [first] + rest:
            t.join(JOIN_TIMEOUT_S)
        self.check_results(results)
        self.assertEqual({r[0] for r in results}, {201})
        self.assertEqual(len({r[2] for r in results}), 1)
        self.assertEqual(srv.count("slow.run"), 1)
        self.assertEqual(metric(srv, "cnerium_inflight_parked"), 0)


if __name__ == "__main__":
    h.main()
