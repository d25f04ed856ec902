#!/usr/bin/env python3
"""Event streams committed with the durable record, against the real multi-process
server (the contract fixture's /streams/{id}, /streams/{id} GET and /log routes).

Covered here:
  - every expected-version mode over HTTP; a conflict answers 409
    wrong-expected-version naming the stream and its current version (or the status the
    handler chose), stores nothing and frees the key: the same key runs again;
  - appends racing on one stream from both workers: for each version exactly one request
    wins, the others get 409, the versions and global positions have no gap;
  - SIGKILL of the whole server under load, restarts: never a partial commit (a request's
    two streams always move together), never a gap in the log, every acknowledged append
    present exactly once, every cut request runs once on retry;
  - SIGKILL of the persister while conditional appends race: no 201 without its event,
    no event twice;
  - a published append reaches a WebSocket client of its room as one frame with the
    action, stream, version and position at the top level.

Every wait is a bounded poll of a condition; the only sleep is the random moment of a
crash. CNERIUM_TEST_SEED=N repeats the random choices.
"""

import json
import os
import random
import signal
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import cnharness as h  # noqa: E402
import wsclient  # noqa: E402
from cnharness import header, wait_until  # noqa: E402

ARGS = ("--workers", "2", "--threads", "4")
OP = "stream.append"
WRONG_VERSION = h.PROBLEM + "wrong-expected-version"
JSON = {"Content-Type": "application/json"}
REQUEST_TIMEOUT_S = 20.0
JOIN_TIMEOUT_S = 120.0
GONE_TIMEOUT_S = 10.0
LOAD_MAX_S = 30.0


def append(srv, stream, key, expected="any", **extra):
    body = dict(extra, expected=expected)
    status, headers, raw = srv.post("/streams/" + stream, json.dumps(body).encode(), key=key,
                                    headers=JSON, timeout=REQUEST_TIMEOUT_S)
    return status, headers, raw


def read_stream(srv, stream, **q):
    qs = "&".join("%s=%s" % kv for kv in q.items())
    status, body = srv.get_json("/streams/%s%s" % (stream, "?" + qs if qs else ""))
    assert status == 200, (status, body)
    return body


def read_log(srv):
    """Every event of the global log, checked gapless from position 1."""
    events, pos = [], 1
    for _ in range(10000):
        status, body = srv.get_json("/log?from=%d&limit=1000" % pos)
        assert status == 200, (status, body)
        events.extend(body["events"])
        if not body["more"]:
            break
        pos = events[-1]["position"] + 1
    positions = [e["position"] for e in events]
    assert positions == list(range(1, len(events) + 1)), "gap in the log: %r" % positions[:50]
    return events, body["head"]


def run_threads(fn, n, timeout=JOIN_TIMEOUT_S):
    out = [None] * n

    def run(i):
        try:
            out[i] = fn(i)
        except Exception as e:  # noqa: BLE001 - reported by the caller
            out[i] = e

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    if any(t.is_alive() for t in threads):
        raise AssertionError("threads did not finish within %.0f s" % timeout)
    return out


def group_left(pgid):
    return [p for p in h.live_processes() if p.pgrp == pgid]


class StreamCase(h.ServerTestCase):
    def start_srv(self, *extra, data_dir=None, env=None):
        srv = self.server(h.contract_server(), *ARGS, *extra, data_dir=data_dir, env=env)
        srv.start()
        return srv

    def restart(self, data_dir, *extra):
        return self.restart_server(h.contract_server(), data_dir, *ARGS, *extra)

    def crash(self, srv):
        srv.kill()
        wait_until(lambda: not group_left(srv.proc.pid), GONE_TIMEOUT_S,
                   what="the killed server's processes to be gone")

    def assertWrongVersion(self, resp, stream, current, status=409):
        self.assertEqual(resp[0], status, resp[2][:300])
        body = json.loads(resp[2])
        self.assertEqual(body["type"], WRONG_VERSION)
        self.assertEqual(body["stream_id"], stream)
        self.assertEqual(body["current_version"], current)
        self.assertIsNone(header(resp[1], "Idempotent-Replayed"))


class ExpectedVersionTest(StreamCase):
    def test_modes_conflicts_and_the_freed_key(self):
        srv = self.start_srv()
        self.assertWrongVersion(append(srv, "s1", "k1", "exists"), "s1", 0)
        self.assertWrongVersion(append(srv, "s1", "k2", 3), "s1", 0)
        self.assertEqual(append(srv, "s1", "k3", "no_stream")[0], 201)
        self.assertWrongVersion(append(srv, "s1", "k4", "no_stream"), "s1", 1)
        self.assertEqual(append(srv, "s1", "k5", 1)[0], 201)
        self.assertEqual(append(srv, "s1", "k6", "exists")[0], 201)
        self.assertEqual(append(srv, "s1", "k7", "any")[0], 201)
        self.assertWrongVersion(append(srv, "s1", "k8", 2), "s1", 4)
        # The handler's own status for a conflict (an If-Match precondition).
        self.assertWrongVersion(append(srv, "s1", "k9", 2, conflict_status=412), "s1", 4,
                                status=412)
        s = read_stream(srv, "s1")
        self.assertEqual(s["version"], 4)
        self.assertEqual([e["version"] for e in s["events"]], [1, 2, 3, 4])

        # The key of a conflict is free: the same request runs again (and conflicts
        # again), it is not replayed; once the expectation holds it commits.
        before = srv.count(OP)
        again = append(srv, "s1", "k8", 2)
        self.assertWrongVersion(again, "s1", 4)
        self.assertEqual(srv.count(OP), before + 1)
        other = append(srv, "s2", "k2", 3)
        self.assertWrongVersion(other, "s2", 0)
        ok = append(srv, "s1", "k10", 4)
        self.assertEqual(ok[0], 201)
        self.assertReplayOf(ok, append(srv, "s1", "k10", 4))
        self.assertEqual(read_stream(srv, "s1")["version"], 5)

        m = srv.get("/metrics")[2].decode()
        conflicts = [ln for ln in m.splitlines()
                     if ln.startswith("cnerium_stream_conflicts_total ")]
        self.assertEqual(conflicts, ["cnerium_stream_conflicts_total 7"], m[:2000])
        self.assertNoSanitizerReport(srv)

    def test_backward_paging_and_the_log(self):
        srv = self.start_srv()
        for i in range(30):
            self.assertEqual(append(srv, "p%d" % (i % 3), "k%d" % i, i // 3)[0], 201)
        page = read_stream(srv, "p1", dir="backward", limit=4)
        self.assertEqual([e["version"] for e in page["events"]], [10, 9, 8, 7])
        self.assertTrue(page["more"])
        self.assertEqual(page["next"], 6)
        events, head = read_log(srv)
        self.assertEqual(head, 30)
        self.assertEqual([e["stream"] for e in events[:4]], ["p0", "p1", "p2", "p0"])


class RaceTest(StreamCase):
    def test_racing_appends_one_winner_per_version(self):
        srv = self.start_srv()
        rounds, racers = 12, 8
        for r in range(rounds):
            res = run_threads(lambda i, r=r: append(srv, "race-%d" % r, "r%d-%d" % (r, i),
                                                    "no_stream", data={"i": i}), racers)
            for x in res:
                if isinstance(x, Exception):
                    raise x
            wins = [x for x in res if x[0] == 201]
            self.assertEqual(len(wins), 1, [x[0] for x in res])
            for x in res:
                if x[0] != 201:
                    self.assertWrongVersion(x, "race-%d" % r, 1)

        # Optimistic writers: read the version, append expecting it, retry on 409.
        clients, per_client = 6, 8

        def writer(i):
            done = 0
            for attempt in range(400):
                if done == per_client:
                    return done
                v = read_stream(srv, "shared", limit=1)["version"]
                st = append(srv, "shared", "w%d-%d" % (i, attempt), v, data={"w": i})[0]
                if st == 201:
                    done += 1
                else:
                    self.assertEqual(st, 409)
            return done

        res = run_threads(writer, clients)
        for x in res:
            if isinstance(x, Exception):
                raise x
        self.assertEqual(res, [per_client] * clients)
        s = read_stream(srv, "shared", limit=1000)
        self.assertEqual(s["version"], clients * per_client)
        self.assertEqual([e["version"] for e in s["events"]],
                         list(range(1, clients * per_client + 1)))
        events, head = read_log(srv)
        self.assertEqual(head, rounds + clients * per_client)
        self.assertNoSanitizerReport(srv)


class RerunTest(StreamCase):
    def test_handler_reruns_on_fresh_state(self):
        """Racers that all read the same version: with reruns allowed each one starts
        over after a conflict and commits; without, all but one get 409."""
        srv = self.start_srv()
        racers = 6
        res = run_threads(lambda i: append(srv, "rr", "rr-%d" % i, "read", rerun=8,
                                           sleep_ms=50, data={"i": i}), racers)
        for x in res:
            if isinstance(x, Exception):
                raise x
        self.assertEqual([x[0] for x in res], [201] * racers, [x[2][:200] for x in res])
        reruns = [json.loads(x[2])["reruns"] for x in res]
        s = read_stream(srv, "rr")
        self.assertEqual(s["version"], racers)
        self.assertEqual(sorted(e["data"]["i"] for e in s["events"]), list(range(racers)))
        # The handler ran once per run: the reruns are real executions, and the retry of
        # a key replays its final answer without running again.
        self.assertEqual(srv.count(OP), racers + sum(reruns))
        self.assertGreater(sum(reruns), 0)
        again = append(srv, "rr", "rr-0", "read", rerun=8, sleep_ms=50, data={"i": 0})
        self.assertReplayOf(res[0], again)
        self.assertEqual(srv.count(OP), racers + sum(reruns))

        res = run_threads(lambda i: append(srv, "nr", "nr-%d" % i, "read", rerun=0,
                                           sleep_ms=50, data={"i": i}), racers)
        statuses = sorted(x[0] for x in res)
        self.assertEqual(statuses[0], 201)
        self.assertIn(409, statuses)
        self.assertEqual(read_stream(srv, "nr")["version"], statuses.count(201))
        self.assertNoSanitizerReport(srv)


class CrashTest(StreamCase):
    def test_sigkill_never_partial_never_gap(self):
        env_seed = os.environ.get("CNERIUM_TEST_SEED")
        seed = int(env_seed) if env_seed else random.SystemRandom().randrange(1 << 31)
        sys.stderr.write("\nstream crash seed %d (CNERIUM_TEST_SEED=%d repeats it)\n"
                         % (seed, seed))
        rng = random.Random(seed)
        srv = self.start_srv()
        data_dir = srv.data_dir
        acked = {}      # key -> pair index, answered 201
        sent = {}       # key -> pair index, sent (answer maybe lost)
        lock = threading.Lock()
        counter = [0]

        for rnd in range(4):
            stop = threading.Event()

            def client(c, srv=srv, stop=stop):
                deadline = time.monotonic() + LOAD_MAX_S
                while not stop.is_set() and time.monotonic() < deadline:
                    with lock:
                        counter[0] += 1
                        k = counter[0]
                    key = "pair-%d" % k
                    with lock:
                        sent[key] = k
                    try:
                        st = append(srv, "pair-%d" % k, key, "no_stream",
                                    data={"k": k}, also=["mirror-%d" % k])[0]
                    except AssertionError:
                        return  # the server is gone
                    if st == 201:
                        with lock:
                            acked[key] = k

            threads = [threading.Thread(target=client, args=(c,), daemon=True)
                       for c in range(6)]
            for t in threads:
                t.start()
            time.sleep(rng.uniform(0.3, 1.2))
            self.crash(srv)
            stop.set()
            for t in threads:
                t.join(JOIN_TIMEOUT_S)
            srv = self.restart(data_dir)
            events, head = read_log(srv)
            by_stream = {}
            for e in events:
                by_stream.setdefault(e["stream"], []).append(e)
            for key, k in sent.items():
                a = by_stream.get("pair-%d" % k, [])
                b = by_stream.get("mirror-%d" % k, [])
                self.assertEqual(len(a), len(b), "partial commit of %s" % key)
                self.assertLessEqual(len(a), 1, "%s appended twice" % key)
                if key in acked:
                    self.assertEqual(len(a), 1, "acknowledged %s lost" % key)
                    self.assertEqual(a[0]["data"], {"k": k})
                    self.assertEqual(a[0]["position"] + 1, b[0]["position"],
                                     "one record, consecutive positions")

        # Every request cut by a kill runs exactly once on retry (or replays).
        missing = [(key, k) for key, k in sent.items() if key not in acked]
        for key, k in missing[:60]:
            st = append(srv, "pair-%d" % k, key, "no_stream", data={"k": k},
                        also=["mirror-%d" % k])[0]
            self.assertIn(st, (201, 409), key)
        events, head = read_log(srv)
        seen = {}
        for e in events:
            seen[e["stream"]] = seen.get(e["stream"], 0) + 1
        for key, k in missing[:60]:
            self.assertEqual(seen.get("pair-%d" % k), 1, key)
            self.assertEqual(seen.get("mirror-%d" % k), 1, key)
        self.assertGreater(len(acked), 0)
        self.assertNoSanitizerReport(srv)

    def test_persister_sigkill_while_conditional_appends_race(self):
        """A conflict decided again by a restarted persister's recovery must not be
        acknowledged as stored: every 201 has its event, exactly once."""
        srv = self.start_srv()
        acked, lock = [], threading.Lock()
        stop = threading.Event()

        def writer(i):
            deadline = time.monotonic() + LOAD_MAX_S
            n = 0
            while not stop.is_set() and time.monotonic() < deadline:
                n += 1
                key = "c%d-%d" % (i, n)
                try:
                    v = read_stream(srv, "hot-%d" % (i % 2), limit=1)["version"]
                    st = append(srv, "hot-%d" % (i % 2), key, v, data={"key": key})[0]
                except AssertionError:
                    continue
                if st == 201:
                    with lock:
                        acked.append(key)
                else:
                    self.assertIn(st, (409, 503), key)

        threads = [threading.Thread(target=writer, args=(i,), daemon=True) for i in range(6)]
        for t in threads:
            t.start()
        kills = 0
        try:
            for _ in range(3):
                wait_until(lambda n=len(acked): len(acked) > n + 5, 30.0,
                           what="appends to commit")
                ps = [p for p in h.live_children(srv.proc.pid) if p.comm == "cn-persister"]
                if len(ps) == 1:
                    os.kill(ps[0].pid, signal.SIGKILL)
                    kills += 1
                    wait_until(lambda old=ps[0].pid: any(
                        p.comm == "cn-persister" and p.pid != old
                        for p in h.live_children(srv.proc.pid)), 15.0,
                        what="a new persister")
        finally:
            stop.set()
            for t in threads:
                t.join(JOIN_TIMEOUT_S)
        self.assertGreater(kills, 0)
        events, head = read_log(srv)
        keys = [e["data"]["key"] for e in events]
        self.assertEqual(len(keys), len(set(keys)), "an event appended twice")
        missing = set(acked) - set(keys)
        self.assertFalse(missing, "201 without its event: %r" % sorted(missing)[:10])
        for stream in ("hot-0", "hot-1"):
            s = read_stream(srv, stream, limit=1000)
            self.assertEqual([e["version"] for e in s["events"]],
                             list(range(1, s["version"] + 1)))


class PublishTest(StreamCase):
    def test_published_append_reaches_its_room(self):
        srv = self.start_srv(env={"CNERIUM_FIXTURE_REALTIME": "1"})
        m = __import__("re").search(r"realtime on ws://127\.0\.0\.1:(\d+)", srv.stdout_text())
        self.assertIsNotNone(m, srv.stdout_text())
        ws = wsclient.WSClient("127.0.0.1", int(m.group(1)), "/ws")
        self.addCleanup(ws.close)
        ws.send_json({"type": "subscribe", "room": "order:9"})
        wait_until(lambda: json.loads(ws.recv_text()).get("type") == "subscribed", 10.0,
                   what="the subscription")
        self.assertEqual(append(srv, "order-9", "k1", "no_stream", type="OrderPlaced",
                                data={"total": 3}, rooms=["orders", "order:9"])[0], 201)
        self.assertEqual(append(srv, "other", "k2", "any", data={})[0], 201)
        self.assertEqual(append(srv, "order-9", "k3", 1, type="OrderShipped",
                                data={"t": "X"}, rooms=["order:9"])[0], 201)
        got = []
        deadline = time.monotonic() + 15.0
        while len(got) < 2 and time.monotonic() < deadline:
            f = json.loads(ws.recv_text(timeout=max(0.1, deadline - time.monotonic())))
            if f.get("type") == "event":
                got.append(f)
        self.assertEqual(len(got), 2, got)
        self.assertEqual(got[0]["action"], {"OrderPlaced": {"total": 3}})
        self.assertEqual((got[0]["stream"], got[0]["version"], got[0]["position"],
                          got[0]["room"]), ("order-9", 1, 1, "order:9"))
        self.assertEqual(got[1]["action"], {"OrderShipped": {"t": "X"}})
        self.assertEqual((got[1]["version"], got[1]["position"]), (2, 3))
        self.assertLess(got[0]["seq"], got[1]["seq"])


if __name__ == "__main__":
    h.main()
