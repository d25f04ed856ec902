#!/usr/bin/env python3
"""Realtime at its edges: positions the server cannot serve, bytes that are not UTF-8,
events that cannot be stored, the descriptor limit and the cache's byte cap.

Servers: the seed-000 example and the contract fixture with CNERIUM_FIXTURE_REALTIME=1
(see test_realtime.py; POST /rooms/{room} is durable and emits the body as text to the
room, POST /announce is an ordinary route that emits to everyone).

Covered: the event log's epoch is in every welcome and reset, the same across a restart
on one data dir and new with a new one; since= past the last seq (up to 2^64-1) gets a
reset with reason "ahead" and then live events; since= with another epoch gets a reset
with reason "epoch" and the whole retained log; ill-formed UTF-8 in a body never becomes
an event (nor a frame); an event that cannot be emitted (too big) is not stored with its
response: 500 and the key free, or the example's 400 up front; with RLIMIT_NOFILE of the
broadcaster lowered below its clients, surplus connections are shed with 503 instead of
spinning (its CPU time is a small fraction of the wall time), existing clients keep
receiving events and new ones get in once others leave; the broadcaster's memory stays
bounded by --realtime-cache-bytes while it serializes many times that.

Every wait is a bounded poll of a condition; the CPU test compares CPU time with the wall
time of the same interval (a ratio), never a wall-clock bound.
"""

import json
import os
import resource
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import cnharness as h  # noqa: E402
from cnharness import wait_until  # noqa: E402
import test_realtime as rt  # noqa: E402
import wsclient  # noqa: E402
from wsclient import WSClosed  # noqa: E402

JSON = rt.JSON
EVENT_TIMEOUT_S = rt.EVENT_TIMEOUT_S
U64_MAX = 18446744073709551615


def fd_count(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def cpu_ticks(pid):
    """utime + stime of pid, in clock ticks (/proc/<pid>/stat fields 14 and 15)."""
    with open("/proc/%d/stat" % pid, "rb") as f:
        data = f.read().decode()
    fields = data[data.rfind(")") + 2:].split()
    return int(fields[11]) + int(fields[12])


def anon_rss_bytes(pid):
    """Resident anonymous memory of pid (the heap; the LMDB map it reads events from is
    file-backed and not counted)."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no RssAnon for %d" % pid)


class LimitsCase(rt.RealtimeCase):
    def start_fixture(self, *extra, data_dir=None):
        srv = self.start_server(h.contract_server(), "--workers", "1", *extra,
                                data_dir=data_dir, env=rt.FIXTURE_ENV)
        return srv, rt.ws_port(srv)

    def broadcaster_pid(self, srv):
        found = wait_until(lambda: rt.broadcaster(srv), 10.0, what="a cn-broadcaster child")
        return found[0]


class EpochTest(LimitsCase):
    def test_epoch_is_kept_by_a_data_dir_and_new_with_a_new_one(self):
        data = self.make_data_dir()
        srv = self.start_server(h.example_server(), *h.EXAMPLE_FLAGS, "--workers", "1",
                                data_dir=data)
        port = rt.ws_port(srv)
        c = self.connect(port, "/ws")
        epoch = c.welcome["epoch"]
        self.assertRegex(epoch, "^[0-9a-f]{16}$")
        self.assertEqual(c.welcome, {"type": "welcome", "epoch": epoch, "last": 0})
        self.assertEqual(self.connect(port, "/ws?since=0").welcome["epoch"], epoch)
        self.post_orders(srv, [rt.fresh("e") for _ in range(3)])
        self.assertEqual(self.connect(port, "/ws").welcome,
                         {"type": "welcome", "epoch": epoch, "last": 3})
        c.close()
        self.assertEqual(srv.stop(), 0, srv.diagnostics())

        # The same data dir: the same epoch, and a resume in it is served as usual.
        srv = self.start_server(h.example_server(), *h.EXAMPLE_FLAGS, "--workers", "1",
                                data_dir=data)
        port = rt.ws_port(srv)
        c = self.connect(port, "/ws?since=1&epoch=" + epoch)
        self.assertEqual(c.welcome, {"type": "welcome", "epoch": epoch, "last": 3})
        self.assertEqual(rt.seqs(rt.events_until(c, 3)), [2, 3])
        # The epoch in upper case is the same epoch.
        c = self.connect(port, "/ws?since=2&epoch=" + epoch.upper())
        self.assertEqual(rt.seqs(rt.events_until(c, 3)), [3])
        self.assertEqual(srv.stop(), 0, srv.diagnostics())

        # A new data dir: a new event log, a new epoch. A client that kept seq 3 of the
        # old log is told so, then gets this log from its oldest event.
        srv2, port2 = self.start_example()
        self.post_orders(srv2, [rt.fresh("n") for _ in range(2)])
        c = self.connect(port2, "/ws?since=3&epoch=" + epoch)
        other = c.welcome["epoch"]
        self.assertNotEqual(other, epoch)
        first = c.recv_json(EVENT_TIMEOUT_S)
        self.assertTrue(rt.is_reset(first, "epoch", 1, 1, other), first)
        self.assertEqual(rt.seqs(rt.events_until(c, 2)), [1, 2])
        # Without the epoch the server cannot tell: since=1 is served in its own log.
        c = self.connect(port2, "/ws?since=1")
        self.assertEqual(rt.seqs(rt.events_until(c, 2)), [2])

    def test_since_past_the_last_event_gets_a_reset_and_then_live_events(self):
        srv, port = self.start_example()
        self.post_orders(srv, [rt.fresh("a") for _ in range(3)])
        resets0 = rt.metric(srv, "cnerium_ws_resets_total")
        clients = {}
        for since in (4, 10, U64_MAX - 1, U64_MAX):
            c = self.connect(port, "/ws?since=%d" % since)
            self.assertEqual(c.welcome["last"], 3)
            msg = c.recv_json(EVENT_TIMEOUT_S)
            self.assertTrue(rt.is_reset(msg, "ahead", 1, 4, c.welcome["epoch"]),
                            "since=%d: %r" % (since, msg))
            self.assertEqual(c.ping(), [], "since=%d: nothing before the next event"
                             % since)
            clients[since] = c
        # since=3 (the last) is a position the server has: no reset.
        at_last = self.connect(port, "/ws?since=3&epoch=" + c.welcome["epoch"])
        self.assertEqual(at_last.ping(), [])
        self.assertEqual(rt.metric(srv, "cnerium_ws_resets_total"), resets0 + 4)
        # Live events reach every one of them (2^64-1 used to wrap to 0: all history).
        key = self.sentinel(srv)
        for since, c in list(clients.items()) + [(3, at_last)]:
            self.assertNextIsSentinel(c, key, 4, "since=%d" % since)


class Utf8AndEmitFailureTest(LimitsCase):
    def test_ill_formed_utf8_never_becomes_an_event(self):
        srv, port = self.start_fixture()
        live = self.connect(port, "/ws")
        live.send_json({"type": "subscribe", "room": "red"})
        self.assertEqual(live.recv_json(EVENT_TIMEOUT_S), {"type": "subscribed", "room": "red"})
        bad = b"\xff\xfe\x80"
        # A durable route: not stored, the key free again.
        k = rt.fresh("u")
        r = srv.post("/rooms/red", b"text " + bad, key=k)
        self.assertProblem(r, 500, h.HANDLER)
        # An ordinary route: the fixture answers 500 itself when cn_emit fails.
        r = srv.post("/announce", bad)
        self.assertEqual(r[0], 500, r[2])
        # Well-formed non-ASCII is fine, and the key of the refused request is free.
        r = srv.post("/rooms/red", "\u00e9t\u00e9 \u20ac".encode(), key=k)
        self.assertEqual(r[0], 201, r[2])
        self.assertNotIn(b"Idempotent-Replayed", b"".join(n.encode() for n, _ in r[1]))
        # Every frame decodes as UTF-8 (recv_text would raise); the first event is the
        # good one: the refused ones were never numbered.
        msg = live.recv_json(EVENT_TIMEOUT_S)
        self.assertEqual((msg["seq"], msg["payload"]["text"]), (1, "\u00e9t\u00e9 \u20ac"))
        self.assertEqual(rt.metric(srv, "cnerium_events_committed_total"), 1)

    def test_example_ill_formed_product_id_gets_no_201(self):
        srv, port = self.start_example()
        live = self.connect(port, "/ws")
        self.assertEqual(live.ping(), [])
        k = rt.fresh("x")
        st, hs, body = srv.post("/orders", b'{"product_id":"\xff\xfe\x80","quantity":1}',
                                key=k, headers=JSON)
        self.assertIn(st, (400, 500), body)
        key = self.sentinel(srv)
        self.assertNextIsSentinel(live, key, 1, "after the ill-formed product id")

    def test_an_event_that_cannot_be_stored_fails_the_request(self):
        # The library: the fixture's room handler answers 400 when cn_emit_to fails (it
        # takes the failure for a bad room name); an event that does not fit must not
        # leave a stored response without it: 500, not stored, the key free.
        srv, port = self.start_fixture()
        live = self.connect(port, "/ws")
        live.send_json({"type": "subscribe", "room": "big"})
        self.assertEqual(live.recv_json(EVENT_TIMEOUT_S), {"type": "subscribed", "room": "big"})
        k = rt.fresh("big")
        r = srv.post("/rooms/big", b"x" * (300 * 1024), key=k)
        self.assertProblem(r, 500, h.HANDLER)
        r = srv.post("/rooms/big", b"x" * (300 * 1024), key=k)
        self.assertProblem(r, 500, h.HANDLER)
        self.assertIsNone(h.header(r[1], "Idempotent-Replayed"))
        r = srv.post("/rooms/big", b"fits", key=k)
        self.assertEqual(r[0], 201, r[2])
        msg = live.recv_json(EVENT_TIMEOUT_S)
        self.assertEqual((msg["seq"], msg["payload"]["text"]), (1, "fits"))

    def test_example_300kb_product_id_is_refused_up_front(self):
        srv, port = self.start_example()
        live = self.connect(port, "/ws")
        self.assertEqual(live.ping(), [])
        k = rt.fresh("p")
        st, hs, body = srv.post("/orders", rt.order_body("p" * (300 * 1024), 1), key=k,
                                headers=JSON)
        self.assertEqual(st, 400, body[:300])
        self.assertIn(b"product_id", body)
        # The largest accepted product id still makes its event.
        big = "q" * (200 * 1024)
        k2 = rt.fresh("p")
        st, hs, body = srv.post("/orders", rt.order_body(big, 1), key=k2, headers=JSON)
        self.assertEqual(st, 201, body[:300])
        msg = live.recv_json(EVENT_TIMEOUT_S)
        self.assertEqual((msg["seq"], msg["payload"]["order_id"], msg["payload"]["product_id"]),
                         (1, "ord_" + k2, big))


class FdLimitTest(LimitsCase):
    def test_at_the_descriptor_limit_the_broadcaster_sheds_instead_of_spinning(self):
        srv, port = self.start_example()
        pid = self.broadcaster_pid(srv)
        keep = [self.connect(port, "/ws") for _ in range(3)]
        for c in keep:
            self.assertEqual(c.ping(), [])
        # Room for exactly two more clients.
        limit = fd_count(pid) + 2
        # Lowered for the broadcaster alone (the server is stopped at the end).
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (limit, limit))
        # Clients fill what is left; then one is refused.
        extra = []
        for _ in range(10):
            try:
                extra.append(self.connect(port, "/ws", timeout=5.0))
            except wsclient.HandshakeRefused as e:
                self.assertEqual(e.status, 503)
                break
            except (WSClosed, ConnectionError, OSError):
                break
        else:
            self.fail("10 clients got in past a limit that left room for 2")
        for c in extra:
            self.assertEqual(c.ping(), [])
        # From now on every new client is answered 503 (or closed), not queued.
        refused = 0
        for _ in range(10):
            try:
                c = rt.Client(port, "/ws", timeout=5.0)
                c.close()
                self.fail("a client got in past the descriptor limit")
            except wsclient.HandshakeRefused as e:
                self.assertEqual(e.status, 503)
                refused += 1
            except (WSClosed, ConnectionError, OSError):
                refused += 1
        self.assertEqual(refused, 10)

        # While connections keep arriving, the broadcaster's CPU time grows far less
        # than the wall time: before, one queued connection kept it at 100% of a core.
        stop = threading.Event()
        attempts = [0]

        def knock():
            while not stop.is_set() and attempts[0] < 2000:
                try:
                    s = socket.create_connection(("127.0.0.1", port), timeout=2.0)
                    s.close()
                except OSError:
                    pass
                attempts[0] += 1
                stop.wait(0.01)

        t = threading.Thread(target=knock, daemon=True)
        t0, c0 = time.monotonic(), cpu_ticks(pid)
        t.start()
        try:
            pending = socket.create_connection(("127.0.0.1", port), timeout=2.0)
            self.addCleanup(pending.close)
            stop.wait(2.0)  # the measured interval
        finally:
            stop.set()
            t.join(10.0)
        wall, cpu = time.monotonic() - t0, (cpu_ticks(pid) - c0) / os.sysconf("SC_CLK_TCK")
        self.assertLess(cpu / wall, 0.25,
                        "broadcaster used %.2f s of CPU in %.2f s at the fd limit "
                        "(%d connection attempts)" % (cpu, wall, attempts[0]))

        # Existing clients are still served.
        key = self.sentinel(srv)
        for c in keep + extra:
            self.assertNextIsSentinel(c, key, 1, "a client connected before the limit")
        # Once some leave, new clients get in again.
        for c in keep:
            c.close()
        wait_until(lambda: fd_count(pid) <= limit - len(keep), 10.0,
                   what="the broadcaster closing the clients that left")
        fresh = self.connect_retry(port, "/ws?since=0")
        self.assertEqual(fresh.welcome["last"], 1)
        self.assertEqual(rt.seqs(rt.events_until(fresh, 1)), [1])


class CacheBytesTest(LimitsCase):
    def test_the_event_cache_stays_within_its_byte_cap(self):
        cap = 1 << 20
        # Under AddressSanitizer freed memory is quarantined instead of reused: turn
        # that off so that the heap measures what the program keeps.
        asan = ":".join(x for x in (os.environ.get("ASAN_OPTIONS"), "quarantine_size_mb=0",
                                    "thread_local_quarantine_size_kb=0") if x)
        srv = self.start_server(h.example_server(), *h.EXAMPLE_FLAGS, "--workers", "2",
                                "--realtime-cache-bytes", str(cap),
                                env={"ASAN_OPTIONS": asan})
        port = rt.ws_port(srv)
        pid = self.broadcaster_pid(srv)
        live = self.connect(port, "/ws")
        self.assertEqual(live.ping(), [])
        # Warm up (first frames, allocator arenas), then measure.
        self.post_orders(srv, [rt.fresh("w")], product="w" * 200000)
        self.assertEqual(live.recv_json(EVENT_TIMEOUT_S)["seq"], 1)
        rss0 = anon_rss_bytes(pid)
        n, size = 100, 200000
        keys = [rt.fresh("c") for _ in range(n)]
        for i, k in enumerate(keys):  # one at a time: seq order is key order
            st, hs, body = srv.post("/orders", rt.order_body(chr(97 + i % 26) * size, 1),
                                    key=k, headers=JSON)
            self.assertEqual(st, 201, body[:200])
        got = rt.events_until(live, n + 1)
        self.assertEqual(rt.seqs(got), list(range(2, n + 2)))
        self.assertEqual([e["payload"]["order_id"] for e in got], ["ord_" + k for k in keys])
        grown = anon_rss_bytes(pid) - rss0
        # 20 MB of frames went through the cache; it may hold 1 MiB of them (plus
        # allocator slack and the write batch). Without the cap all of them stay.
        self.assertLess(grown, 8 << 20, "broadcaster anonymous RSS grew by %d bytes" % grown)
        # Everything is still served, from the cache or read back from the store.
        c = self.connect(port, "/ws?since=0")
        again = rt.events_until(c, n + 1)
        self.assertEqual(rt.seqs(again), list(range(1, n + 2)))
        self.assertEqual(again[1:], got)


if __name__ == "__main__":
    h.main()
