#!/usr/bin/env python3
"""Realtime events: cn_emit / cn_emit_to in a handler, numbered by the persister in the
same LMDB transaction as the response, served by the cn-broadcaster process over
WebSocket (/ws live, /ws?since=N resume, rooms, control messages, retention resets).

Servers: the seed-000 example (POST /orders emits order.created with {order_id:
"ord_<key>", product_id, quantity} when the handler runs) and the contract fixture with
CNERIUM_FIXTURE_REALTIME=1 (POST /orders emits order.created {"n": N}; POST
/rooms/{room} is durable and emits room.message to that room; POST /announce is an
ordinary route that emits an announcement to everyone).

Covered: N fresh keys reach every one of several clients once each, gapless and in seq
order, with the right payloads; replays, 409s, 400s and storms of concurrent duplicates
add no events (seen by a client connected throughout and by the metrics); ?since=
resume across a disconnect; resume across a SIGKILL of the broadcaster (replaced by the
supervisor) and of the persister; a slow client with a tiny receive buffer loses nothing;
events larger than the broadcaster's write batch; a client further behind than the
in-memory cache (served from LMDB); rooms and subscribe/unsubscribe; durable and
ordinary-route events in one sequence; events stored without realtime and served after
a restart; malformed client messages; reset when since= is older than the retention
(count and age); the endpoint path; the metrics (including the clients gauge after a
broadcaster SIGKILL).

"Exactly N events" is checked without waiting for silence: after the requests under
test a fresh sentinel event is committed, and the next event every client sees must be
that sentinel with the next seq. Every wait is a bounded poll of a condition.
"""

import base64
import http.client
import json
import os
import re
import signal
import socket
import struct
import sys
import threading
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import cnharness as h  # noqa: E402
from cnharness import header, parse_json, wait_until  # noqa: E402
import wsclient  # noqa: E402
from wsclient import WSClosed  # noqa: E402

JSON = {"Content-Type": "application/json"}
REALTIME_RE = re.compile(r"realtime on ws://127\.0\.0\.1:(\d+)(/\S*)")
EVENT_TIMEOUT_S = 15.0     # an event committed must reach a client within this
REPLACE_TIMEOUT_S = 15.0   # a killed broadcaster is replaced (first restart at once)
PRUNE_TIMEOUT_S = 15.0     # retention sweep every 50 ms
POST_THREADS = 4
FIXTURE_ENV = {"CNERIUM_FIXTURE_REALTIME": "1"}


def order_body(product="p1", quantity=1):
    return json.dumps({"product_id": product, "quantity": quantity},
                      separators=(",", ":")).encode()


def fresh(prefix):
    return "%s-%s" % (prefix, uuid.uuid4().hex[:12])


# -- WebSocket --


class Client(wsclient.WSClient):
    """wsclient.WSClient with an optional SO_RCVBUF (set before connect) and a receive
    that never loses its place: a frame is taken out of the buffer only once it is
    complete, so a timeout in the middle of a frame leaves the stream intact."""

    def __init__(self, port, path="/ws", timeout=5.0, rcvbuf=None, host="127.0.0.1",
                 headers=(), welcome=True):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if rcvbuf:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.settimeout(timeout)
            sock.connect((host, port))
        except OSError:
            sock.close()
            raise
        self.sock = sock
        self.buf = b""
        self.closed = None
        self.fragments = b""
        try:
            self._handshake(host, port, path, timeout, headers, welcome)
        except BaseException:
            sock.close()
            raise

    def _take_frame(self):
        """(fin, opcode, payload) of the first complete frame in the buffer, removed from
        it; None when the buffer does not hold a whole frame yet."""
        b = self.buf
        if len(b) < 2:
            return None
        n, at = b[1] & 0x7F, 2
        if n == 126:
            if len(b) < 4:
                return None
            n, at = struct.unpack("!H", b[2:4])[0], 4
        elif n == 127:
            if len(b) < 10:
                return None
            n, at = struct.unpack("!Q", b[2:10])[0], 10
        mask = None
        if b[1] & 0x80:
            if len(b) < at + 4:
                return None
            mask, at = b[at:at + 4], at + 4
        if len(b) < at + n:
            return None
        payload = b[at:at + n]
        if mask:
            payload = bytes(x ^ mask[i % 4] for i, x in enumerate(payload))
        self.buf = b[at + n:]
        return b[0] & 0x80, b[0] & 0x0F, payload

    def recv_text(self, timeout=5.0):
        deadline = time.monotonic() + timeout
        while True:
            frame = self._take_frame()
            if frame is None:
                self._fill(deadline)
                continue
            fin, opcode, payload = frame
            if opcode == 0x8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                self.closed = (code, payload[2:].decode(errors="replace"))
                raise WSClosed(code, self.closed[1])
            if opcode == 0x9:
                self.send_frame(0xA, payload)
                continue
            if opcode == 0xA:
                continue
            self.fragments += payload
            if fin:
                text, self.fragments = self.fragments, b""
                return text.decode()

    def ping(self, timeout=EVENT_TIMEOUT_S):
        """Sends a ping and waits for its pong; returns the event frames that came
        before it. Once the pong is back the server has registered this client."""
        self.send_json({"type": "ping"})
        events = []
        deadline = time.monotonic() + timeout
        while True:
            msg = self.recv_json(max(0.01, deadline - time.monotonic()))
            if msg.get("type") == "pong":
                return events
            if "seq" not in msg:
                raise AssertionError("expected a pong, got %r" % (msg,))
            events.append(msg)


def is_reset(msg, reason, oldest, next_seq, epoch=None):
    """msg is exactly the reset message with these fields (any epoch when None)."""
    return (isinstance(msg, dict)
            and set(msg) == {"type", "reason", "epoch", "oldest", "next"}
            and msg["type"] == "reset" and msg["reason"] == reason
            and msg["oldest"] == oldest and msg["next"] == next_seq
            and isinstance(msg["epoch"], str) and re.fullmatch("[0-9a-f]{16}", msg["epoch"])
            and (epoch is None or msg["epoch"] == epoch))


def is_event(msg):
    return isinstance(msg, dict) and "seq" in msg and "payload" in msg


def events_until(client, last_seq, timeout=EVENT_TIMEOUT_S, what="events"):
    """Reads event frames until one with seq >= last_seq arrives; returns them all. A
    message that is not an event fails."""
    out = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError("timed out waiting for %s up to seq %d; got %d, last %r"
                                 % (what, last_seq, len(out), out[-1:] if out else None))
        try:
            msg = client.recv_json(left)
        except socket.timeout:
            continue
        if not is_event(msg):
            raise AssertionError("expected an event frame, got %r" % (msg,))
        out.append(msg)
        if msg["seq"] >= last_seq:
            return out


def seqs(events):
    return [e["seq"] for e in events]


def wmem_max():
    """The largest TCP send buffer the kernel may grow a socket to."""
    try:
        with open("/proc/sys/net/ipv4/tcp_wmem") as f:
            return int(f.read().split()[2])
    except (OSError, ValueError, IndexError):
        return 4 << 20


def ws_port(srv):
    """The port of the 'realtime on ws://127.0.0.1:PORT/ws' line (printed before the
    listening line)."""
    m = REALTIME_RE.search(srv.stdout_text())
    if not m:
        raise AssertionError("no 'realtime on ws://127.0.0.1:PORT/PATH' line on stdout:\n%r"
                             % srv.stdout_text())
    return int(m.group(1))


# -- HTTP --


def post_many(srv, requests, threads=POST_THREADS):
    """Sends [(path, body, key)] from a few threads, each on its own keep-alive
    connection. Returns [(status, headers, body)] in request order (an exception takes
    the place of a failed request)."""
    results = [None] * len(requests)
    lock = threading.Lock()
    it = iter(range(len(requests)))

    def run():
        conn = srv.connection(30.0)
        try:
            while True:
                with lock:
                    i = next(it, None)
                if i is None:
                    return
                path, body, key = requests[i]
                hs = [("Content-Type", "application/json")]
                if key is not None:
                    hs.append(("Idempotency-Key", key))
                try:
                    results[i] = h.send_request(conn, "POST", path, body, hs)
                except (OSError, http.client.HTTPException) as e:
                    conn.close()
                    conn = srv.connection(30.0)
                    results[i] = e
        finally:
            conn.close()

    ts = [threading.Thread(target=run, daemon=True) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120.0)
    if any(t.is_alive() for t in ts):
        raise AssertionError("posting threads did not finish within 120 s")
    return results


def storm(srv, path, body, key, n=16):
    """n identical POSTs on fresh connections, released together by a barrier once all
    are connected. Returns the results in order."""
    barrier = threading.Barrier(n, timeout=30.0)
    results = [None] * n

    def run(i):
        conn = srv.connection(30.0)
        try:
            conn.connect()
            barrier.wait()
            results[i] = h.send_request(conn, "POST", path, body,
                                        [("Content-Type", "application/json"),
                                         ("Idempotency-Key", key)])
        except (OSError, http.client.HTTPException, threading.BrokenBarrierError) as e:
            results[i] = e
        finally:
            conn.close()

    ts = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60.0)
    if any(t.is_alive() for t in ts):
        raise AssertionError("storm threads did not finish within 60 s")
    return results


def metrics(srv, timeout=15.0):
    """{name: value} of the unlabelled samples of GET /metrics."""
    def once():
        r = srv.attempt("GET", "/metrics", timeout=2.0)
        if isinstance(r, Exception) or r[0] != 200:
            return None
        out = {}
        for line in r[2].decode().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                if "{" not in name:
                    out[name] = float(value)
        return out
    return wait_until(once, timeout, what="GET /metrics answering 200")


def executions(srv, operation="orders.create"):
    """cnerium_durable_requests_total{operation=...,outcome="executed"}: how often the
    layer ran the handler of operation to a stored response."""
    want = 'cnerium_durable_requests_total{operation="%s",outcome="executed"}' % operation
    def once():
        r = srv.attempt("GET", "/metrics", timeout=2.0)
        if isinstance(r, Exception) or r[0] != 200:
            return None
        for line in r[2].decode().splitlines():
            name, _, value = line.rpartition(" ")
            if name == want:
                return [int(float(value))]
        raise AssertionError("no %s in /metrics" % want)
    return wait_until(once, 15.0, what="GET /metrics answering 200")[0]


def metric(srv, name):
    m = metrics(srv)
    if name not in m:
        raise AssertionError("metric %s missing" % name)
    return int(m[name])


# -- processes --


def child(srv, comm):
    """(pid, starttime) of the live child of the server named comm, or None."""
    found = [(p.pid, p.start) for p in h.live_children(srv.proc.pid) if p.comm == comm]
    if len(found) > 1:
        raise AssertionError("more than one %s child: %r" % (comm, found))
    return found[0] if found else None


def broadcaster(srv):
    return child(srv, "cn-broadcaster")


class RealtimeCase(h.ServerTestCase):
    def start_example(self, *extra):
        srv = self.start_server(h.example_server(), *h.EXAMPLE_FLAGS, "--workers", "2",
                                *extra)
        return srv, ws_port(srv)

    def connect(self, port, path="/ws", **kw):
        c = Client(port, path, **kw)
        self.addCleanup(c.close)
        return c

    def connect_retry(self, port, path, timeout=REPLACE_TIMEOUT_S):
        """Connects, retrying (bounded) while the endpoint is not serving (a broadcaster
        being replaced)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.connect(port, path, timeout=2.0)
            except (OSError, WSClosed, ConnectionError) as e:
                if time.monotonic() >= deadline:
                    raise AssertionError("could not connect to %s within %.0f s: %r"
                                         % (path, timeout, e))
                time.sleep(0.05)

    def post_orders(self, srv, keys, product="p1", quantity=None):
        """POSTs one fresh order per key (quantity i+1 unless given); all must be 201."""
        reqs = [("/orders", order_body(product, quantity or (i % 7) + 1), k)
                for i, k in enumerate(keys)]
        results = post_many(srv, reqs)
        for (path, body, k), r in zip(reqs, results):
            self.assertNotIsInstance(r, Exception, "POST /orders key %s: %r" % (k, r))
            self.assertEqual(r[0], 201, "POST /orders key %s: %r" % (k, r[2][:300]))
            self.assertIsNone(header(r[1], "Idempotent-Replayed"), "key %s" % k)
        return {k: parse_json(b) for (_, b, k) in reqs}

    def sentinel(self, srv, product="sentinel"):
        key = fresh("sentinel")
        st, hs, body = srv.post("/orders", order_body(product, 1), key=key, headers=JSON)
        self.assertEqual(st, 201, body)
        return key

    def assertOrderEvents(self, events, bodies, first_seq):
        """events are exactly one order.created per key of bodies (key -> request
        body), numbered first_seq.. without gap, with the right payloads."""
        self.assertEqual(seqs(events), list(range(first_seq, first_seq + len(bodies))),
                         "events must be gapless and in seq order")
        seen = {}
        for e in events:
            self.assertEqual(e["type"], "order.created", e)
            self.assertNotIn("room", e, e)
            oid = e["payload"]["order_id"]
            self.assertTrue(oid.startswith("ord_"), e)
            key = oid[4:]
            self.assertIn(key, bodies, "event for an unexpected key: %r" % e)
            self.assertNotIn(key, seen, "two events for key %s" % key)
            seen[key] = e
            self.assertEqual(e["payload"]["product_id"], bodies[key]["product_id"], e)
            self.assertEqual(e["payload"]["quantity"], bodies[key]["quantity"], e)
        self.assertEqual(set(seen), set(bodies))

    def assertNextIsSentinel(self, client, key, seq, what):
        msg = client.recv_json(EVENT_TIMEOUT_S)
        self.assertTrue(is_event(msg), "%s: expected the sentinel event, got %r" % (what, msg))
        self.assertEqual((msg["seq"], msg["payload"]["order_id"]), (seq, "ord_" + key),
                         "%s: the next event after the requests must be the sentinel "
                         "(no extra event in between): %r" % (what, msg))


class ExampleRealtimeTest(RealtimeCase):
    def test_endpoint_line_and_wrong_paths(self):
        srv, port = self.start_example()
        out = srv.stdout_text()
        self.assertLess(out.find("realtime on ws://"), out.find("listening on http://"),
                        "the realtime line comes before the listening line")
        # Refused with an HTTP status, not a dropped connection: 404 for another path,
        # 400 for a query the server would misread.
        for path, status in (("/nope", 404), ("/ws/extra", 404), ("/", 404),
                             ("/ws?since=abc", 400), ("/ws?since=-1", 400),
                             ("/ws?since=1x", 400), ("/ws?since=+1", 400),
                             ("/ws?since=", 400), ("/ws?since", 400),
                             ("/ws?since=18446744073709551616", 400),
                             ("/ws?since=99999999999999999999", 400),
                             ("/ws?since=1&since=1", 400), ("/ws?epoch=abc", 400),
                             ("/ws?since=0&epoch=0123456789abcdeg", 400)):
            with self.subTest(path):
                with self.assertRaises(wsclient.HandshakeRefused,
                                       msg="%s must be refused" % path) as cm:
                    c = Client(port, path)
                    c.close()
                self.assertEqual(cm.exception.status, status, cm.exception)
                self.assertIn(b'"error"', cm.exception.body)
        # A plain HTTP request on the WebSocket port is answered, not upgraded.
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5.0)
        try:
            conn.request("GET", "/ws")
            self.assertEqual(conn.getresponse().status, 404)
        finally:
            conn.close()
        # And the right path still works after the refusals.
        c = self.connect(port, "/ws")
        self.assertEqual(c.ping(), [])
        c2 = self.connect(port, "/ws?since=0")
        self.assertEqual(c2.ping(), [])
        self.assertTrue(srv.alive())

    def test_fresh_keys_reach_every_client_once_in_order(self):
        srv, port = self.start_example()
        self.post_orders(srv, [fresh("warm") for _ in range(3)])
        s0 = metric(srv, "cnerium_events_last_seq")
        committed0 = metric(srv, "cnerium_events_committed_total")
        frames0 = metric(srv, "cnerium_ws_frames_sent_total")
        delivered0 = metric(srv, "cnerium_ws_delivery_seconds_count")
        self.assertEqual(s0, 3)
        clients = []
        for i in range(10):
            path = "/ws" if i % 2 == 0 else "/ws?since=%d" % s0
            c = self.connect(port, path)
            self.assertEqual(c.ping(), [], "client %d (%s) before any new event" % (i, path))
            clients.append((path, c))

        keys = [fresh("k%02d" % i) for i in range(50)]
        self.post_orders(srv, keys, product="widget")
        bodies = {k: {"product_id": "widget", "quantity": (i % 7) + 1}
                  for i, k in enumerate(keys)}
        for i, (path, c) in enumerate(clients):
            with self.subTest(client=i, path=path):
                got = events_until(c, s0 + 50, what="client %d" % i)
                self.assertOrderEvents(got, bodies, s0 + 1)
        skey = self.sentinel(srv)
        for i, (path, c) in enumerate(clients):
            self.assertNextIsSentinel(c, skey, s0 + 51, "client %d" % i)
        m = metrics(srv)
        self.assertEqual(int(m["cnerium_events_committed_total"]), committed0 + 51)
        self.assertEqual(int(m["cnerium_events_last_seq"]), s0 + 51)
        # The broadcaster counts a frame just after writing it: poll.
        wait_until(lambda: metric(srv, "cnerium_ws_frames_sent_total") >= frames0 + 10 * 51,
                   10.0, what="cnerium_ws_frames_sent_total up by 10 x 51")
        # Every delivery of a fresh event has its commit -> write latency observed, once.
        wait_until(lambda: metric(srv, "cnerium_ws_delivery_seconds_count") >=
                   delivered0 + 10 * 51, 10.0,
                   what="cnerium_ws_delivery_seconds_count up by 10 x 51")
        m = metrics(srv)
        self.assertEqual(int(m["cnerium_ws_delivery_seconds_count"]), delivered0 + 10 * 51)
        self.assertGreater(m["cnerium_ws_delivery_seconds_sum"], 0)
        # A late client resuming from s0 sees the same history.
        late = self.connect(port, "/ws?since=%d" % s0)
        got = events_until(late, s0 + 51)
        self.assertEqual(seqs(got), list(range(s0 + 1, s0 + 52)))

    def test_replays_conflicts_rejections_and_storms_emit_nothing(self):
        srv, port = self.start_example()
        watcher = self.connect(port, "/ws")
        self.assertEqual(watcher.ping(), [])
        keys = [fresh("base") for _ in range(5)]
        self.post_orders(srv, keys, product="base", quantity=2)
        got = events_until(watcher, 5)
        self.assertEqual(seqs(got), [1, 2, 3, 4, 5])
        committed0 = metric(srv, "cnerium_events_committed_total")
        self.assertEqual(committed0, 5)

        body = order_body("base", 2)
        # Replays of the stored responses.
        for k in keys:
            r = srv.post("/orders", body, key=k, headers=JSON)
            self.assertEqual((r[0], header(r[1], "Idempotent-Replayed")), (201, "true"), r[2])
        # The same keys with other bodies: 409.
        for k in keys:
            r = srv.post("/orders", order_body("other", 3), key=k, headers=JSON)
            self.assertProblem(r, 409, h.KEY_REUSED)
        # No key, an invalid key: 400 before the handler.
        self.assertProblem(srv.post("/orders", body, headers=JSON), 400, h.KEY_MISSING)
        self.assertProblem(srv.post("/orders", body, key="x" * 300, headers=JSON), 400,
                           h.KEY_INVALID)
        # Validation errors from the handler (stored 400s), then their replays.
        for b in (order_body("p1", 0), order_body("p1", -2), b'{"quantity":2}', b"nope"):
            k = fresh("bad")
            first = srv.post("/orders", b, key=k, headers=JSON)
            self.assertProblem(first, 400)
            self.assertReplayOf(first, srv.post("/orders", b, key=k, headers=JSON))
        self.assertEqual(metric(srv, "cnerium_events_committed_total"), committed0,
                         "replays, 409s and 400s must not commit events")

        # Storms: 16 identical concurrent POSTs per fresh key; one executes per key.
        executed0 = executions(srv)
        storm_keys = [fresh("storm") for _ in range(4)]
        unmarked = {}
        for i, k in enumerate(storm_keys):
            results = storm(srv, "/orders", order_body("storm", i + 1), k)
            errors = [r for r in results if isinstance(r, Exception)]
            self.assertEqual(errors, [], "storm on %s" % k)
            self.assertEqual([r[0] for r in results], [201] * 16,
                             [r[2][:200] for r in results])
            self.assertEqual(len({r[2] for r in results}), 1, "one response for the storm")
            # Every response but the one that executed is a replay and says so (checked
            # last, after the events: see below).
            unmarked[k] = sum(header(r[1], "Idempotent-Replayed") is None for r in results)
            # Replays after the storm, and a conflicting body.
            r = srv.post("/orders", order_body("storm", i + 1), key=k, headers=JSON)
            self.assertEqual(header(r[1], "Idempotent-Replayed"), "true")
            self.assertProblem(srv.post("/orders", order_body("storm", 99), key=k,
                                        headers=JSON), 409, h.KEY_REUSED)
        self.assertEqual(executions(srv), executed0 + 4,
                         "the handler runs once per storm key")
        self.assertEqual(metric(srv, "cnerium_events_committed_total"), committed0 + 4)
        got = events_until(watcher, 9)
        self.assertOrderEvents(got, {k: {"product_id": "storm", "quantity": i + 1}
                                     for i, k in enumerate(storm_keys)}, 6)
        skey = self.sentinel(srv)
        self.assertNextIsSentinel(watcher, skey, 10, "the watcher")
        self.assertEqual(metric(srv, "cnerium_events_committed_total"), 10)
        # The whole history from the store agrees.
        late = self.connect(port, "/ws?since=0")
        self.assertEqual(seqs(events_until(late, 10)), list(range(1, 11)))
        # The duplicates that waited for the first request got its stored response: a
        # replay, which must carry Idempotent-Replayed: true like any other.
        self.assertEqual(unmarked, {k: 1 for k in storm_keys},
                         "responses without Idempotent-Replayed per storm of 16 (only the "
                         "one that executed may lack it)")

    def test_since_resumes_across_a_gap(self):
        srv, port = self.start_example()
        a = self.connect(port, "/ws")
        self.assertEqual(a.ping(), [])
        first = {k: {"product_id": "a", "quantity": 1} for k in
                 self.post_orders(srv, [fresh("a") for _ in range(10)], "a", 1)}
        got = events_until(a, 10)
        self.assertOrderEvents(got, first, 1)
        last = got[-1]["seq"]
        a.close()

        missed = {k: {"product_id": "b", "quantity": 2} for k in
                  self.post_orders(srv, [fresh("b") for _ in range(15)], "b", 2)}
        b = self.connect(port, "/ws?since=%d" % last)
        got = events_until(b, last + 15)
        self.assertOrderEvents(got, missed, last + 1)
        # Then live, with nothing repeated at the seam.
        live = {k: {"product_id": "c", "quantity": 3} for k in
                self.post_orders(srv, [fresh("c") for _ in range(5)], "c", 3)}
        got = events_until(b, last + 20)
        self.assertOrderEvents(got, live, last + 16)
        skey = self.sentinel(srv)
        self.assertNextIsSentinel(b, skey, last + 21, "the resumed client")

        # since= the last seq: nothing old, only what comes next.
        c = self.connect(port, "/ws?since=%d" % (last + 21))
        self.assertEqual(c.ping(), [], "since=last must not replay anything")
        skey = self.sentinel(srv)
        self.assertNextIsSentinel(c, skey, last + 22, "since=last client")
        self.assertNextIsSentinel(b, skey, last + 22, "the resumed client")
        # since= in the middle: from there on.
        d = self.connect(port, "/ws?since=%d" % (last + 5))
        self.assertEqual(seqs(events_until(d, last + 22)), list(range(last + 6, last + 23)))

    def test_resume_across_broadcaster_sigkill(self):
        srv, port = self.start_example()
        first = wait_until(lambda: broadcaster(srv), 10.0, what="a cn-broadcaster child")
        self.assertEqual(metric(srv, "cnerium_broadcaster_restarts_total"), 0)
        client = self.connect(port, "/ws?since=0")
        self.assertEqual(client.ping(), [])

        stop = threading.Event()
        lock = threading.Lock()
        keys, failures = [], []

        def flow():
            conn = srv.connection(30.0)
            try:
                while not stop.is_set():
                    k = fresh("flow")
                    try:
                        r = h.send_request(conn, "POST", "/orders", order_body("flow", 1),
                                           [("Content-Type", "application/json"),
                                            ("Idempotency-Key", k)])
                    except (OSError, http.client.HTTPException) as e:
                        r = e
                    with lock:
                        if isinstance(r, Exception) or r[0] != 201:
                            failures.append((k, r))
                            return
                        keys.append(k)
            finally:
                conn.close()

        posters = [threading.Thread(target=flow, daemon=True) for _ in range(2)]
        for t in posters:
            t.start()
            self.addCleanup(t.join, 60.0)
        self.addCleanup(stop.set)
        seen = []
        # Read some events while they flow, then kill the broadcaster mid-stream.
        while len(seen) < 20:
            msg = client.recv_json(EVENT_TIMEOUT_S)
            self.assertTrue(is_event(msg), msg)
            seen.append(msg)
        os.kill(first[0], signal.SIGKILL)
        with lock:
            at_kill = len(keys)
        # The client's connection ends (it may still read what was already sent).
        deadline = time.monotonic() + 10.0
        while True:
            self.assertLess(time.monotonic(), deadline, "the client was not disconnected")
            try:
                msg = client.recv_json(max(0.01, deadline - time.monotonic()))
            except (WSClosed, ConnectionResetError):
                break
            except socket.timeout:
                continue
            self.assertTrue(is_event(msg), msg)
            seen.append(msg)
        second = wait_until(lambda: (lambda b: b if b and b != first else None)(
            broadcaster(srv)), REPLACE_TIMEOUT_S, what="a new cn-broadcaster")
        self.assertNotEqual(second, first)
        wait_until(lambda: metric(srv, "cnerium_broadcaster_restarts_total") == 1, 10.0,
                   what="cnerium_broadcaster_restarts_total == 1")

        last = seen[-1]["seq"]
        again = self.connect_retry(port, "/ws?since=%d" % last)
        # Events go on being committed through the restart and after the reconnect.
        wait_until(lambda: len(keys) >= at_kill + 100 or failures, 60.0,
                   what="100 more orders after the broadcaster kill")
        stop.set()
        for t in posters:
            t.join(60.0)
            self.assertFalse(t.is_alive(), "a posting thread did not finish")
        self.assertEqual(failures, [])
        total = len(keys)
        final = metric(srv, "cnerium_events_last_seq")
        self.assertEqual(final, total)
        rest = events_until(again, final) if last < final else []
        everything = seen + rest
        self.assertEqual(seqs(everything), list(range(1, total + 1)),
                         "nothing missing and nothing repeated across the restart")
        self.assertEqual({e["payload"]["order_id"] for e in everything},
                         {"ord_" + k for k in keys})
        skey = self.sentinel(srv)
        self.assertNextIsSentinel(again, skey, total + 1, "the resumed client")

    def test_persister_sigkill_keeps_one_event_per_key(self):
        """A SIGKILL of the persister while events flow: the requests it owed are
        retried until 201; afterwards every key has exactly one event, gapless, both for
        a client connected throughout and in the stored history."""
        srv, port = self.start_example()
        live = self.connect(port, "/ws")
        self.assertEqual(live.ping(), [])
        stop = threading.Event()
        lock = threading.Lock()
        keys, errors = [], []

        def flow():
            while not stop.is_set():
                k = fresh("p")
                deadline = time.monotonic() + 30.0
                while True:
                    r = srv.attempt("POST", "/orders", order_body("p", 1),
                                [("Content-Type", "application/json"),
                                 ("Idempotency-Key", k)], timeout=10.0)
                    if not isinstance(r, Exception) and r[0] == 201:
                        with lock:
                            keys.append(k)
                        break
                    if time.monotonic() >= deadline:
                        with lock:
                            errors.append((k, r))
                        return
                    time.sleep(0.02)  # a retry after a 503 or a reset connection

        posters = [threading.Thread(target=flow, daemon=True) for _ in range(2)]
        for t in posters:
            t.start()
            self.addCleanup(t.join, 60.0)
        self.addCleanup(stop.set)
        seen = []
        while len(seen) < 20:
            msg = live.recv_json(EVENT_TIMEOUT_S)
            self.assertTrue(is_event(msg), msg)
            seen.append(msg)
        victim = wait_until(lambda: child(srv, "cn-persister"), 5.0, what="cn-persister")
        os.kill(victim[0], signal.SIGKILL)
        with lock:
            at_kill = len(keys)
        # The flow goes on through the restart: 100 more keys stored after the kill.
        wait_until(lambda: len(keys) >= at_kill + 100 or errors, 60.0,
                   what="100 more orders after the persister kill")
        stop.set()
        for t in posters:
            t.join(60.0)
            self.assertFalse(t.is_alive(), "a posting thread did not finish")
        self.assertEqual(errors, [])
        self.assertNotEqual(child(srv, "cn-persister"), victim)
        self.assertEqual(metric(srv, "cnerium_persister_restarts_total"), 1)
        skey = self.sentinel(srv)
        final = metric(srv, "cnerium_events_last_seq")
        self.assertEqual(final, len(keys) + 1, "one event per key, plus the sentinel")
        everything = seen + events_until(live, final)
        self.assertEqual(seqs(everything), list(range(1, final + 1)))
        self.assertEqual([e["payload"]["order_id"] for e in everything].count("ord_" + skey), 1)
        ids = [e["payload"]["order_id"] for e in everything[:-1]]
        self.assertEqual(sorted(ids), sorted("ord_" + k for k in keys))
        history = events_until(self.connect(port, "/ws?since=0"), final)
        self.assertEqual(history, everything, "the stored history matches the live stream")

    def test_clients_gauge_after_broadcaster_sigkill(self):
        srv, port = self.start_example()
        first = wait_until(lambda: broadcaster(srv), 10.0, what="a cn-broadcaster child")
        cs = [self.connect(port, "/ws") for _ in range(3)]
        for c in cs:
            self.assertEqual(c.ping(), [])
        wait_until(lambda: metric(srv, "cnerium_ws_clients") == 3, 10.0,
                   what="cnerium_ws_clients == 3")
        os.kill(first[0], signal.SIGKILL)
        wait_until(lambda: (lambda b: b if b and b != first else None)(broadcaster(srv)),
                   REPLACE_TIMEOUT_S, what="a new cn-broadcaster")
        c = self.connect_retry(port, "/ws")
        self.assertEqual(c.ping(), [])
        last = [None]

        def one():
            last[0] = metric(srv, "cnerium_ws_clients")
            return last[0] == 1
        try:
            wait_until(one, 5.0, what="cnerium_ws_clients == 1")
        except AssertionError:
            self.fail("after a SIGKILL of the broadcaster with 3 clients and one client "
                      "reconnected, cnerium_ws_clients is %s, not 1: the clients of the "
                      "dead broadcaster are still counted" % last[0])
        c.close()
        wait_until(lambda: metric(srv, "cnerium_ws_clients") == 0, 10.0,
                   what="cnerium_ws_clients == 0")

    def test_slow_client_loses_nothing(self):
        srv, port = self.start_example()
        # A fast client alongside: the slow one must not hold it back.
        fast = self.connect(port, "/ws")
        self.assertEqual(fast.ping(), [])
        slow = self.connect(port, "/ws", rcvbuf=2048)
        self.assertEqual(slow.ping(), [])
        # A client that never reads and leaves while events are owed to it.
        idle = self.connect(port, "/ws", rcvbuf=2048)
        self.assertEqual(idle.ping(), [])
        big = "x" * 20000  # 400 frames of ~20 KB: more than the socket buffers hold
        total = 400
        keys = [fresh("slow") for _ in range(total)]
        self.post_orders(srv, keys, product=big, quantity=1)
        # The fast client has everything while the slow one has read nothing.
        got = events_until(fast, total)
        self.assertEqual(seqs(got), list(range(1, total + 1)))
        m = metrics(srv)
        self.assertEqual(int(m["cnerium_events_last_seq"]), total)
        sent = int(m["cnerium_ws_frames_sent_total"])
        if total * len(big) > 1.5 * wmem_max():
            # Then the kernel cannot have taken every frame for a slow client (its send
            # buffer grows to tcp_wmem's maximum at most): the server really is holding
            # them back (not what the test is about, but what makes it meaningful).
            self.assertLess(sent, 3 * total, "the slow clients were not held back")
        idle.close()
        wait_until(lambda: metric(srv, "cnerium_ws_slow_consumer_closes_total") >= 1, 10.0,
                   what="cnerium_ws_slow_consumer_closes_total counting the idle client")
        # Now the slow client reads: every event in order, or it was closed and
        # recovers the rest with since=.
        received = []
        conn = slow
        resumed = 0
        deadline = time.monotonic() + 60.0
        while not received or received[-1]["seq"] < total:
            self.assertLess(time.monotonic(), deadline, "slow client: %d events"
                            % len(received))
            try:
                msg = conn.recv_json(EVENT_TIMEOUT_S)
            except (WSClosed, ConnectionResetError):
                resumed += 1
                self.assertLess(resumed, 5, "closed again and again")
                since = received[-1]["seq"] if received else 0
                conn = self.connect(port, "/ws?since=%d" % since)
                continue
            self.assertTrue(is_event(msg), msg)
            self.assertEqual(msg["payload"]["product_id"], big)
            received.append(msg)
        self.assertEqual(seqs(received), list(range(1, total + 1)),
                         "the slow client must get every event once, in order "
                         "(resumed %d times)" % resumed)
        self.assertEqual({e["payload"]["order_id"] for e in received},
                         {"ord_" + k for k in keys})
        skey = self.sentinel(srv)
        self.assertNextIsSentinel(conn, skey, total + 1, "the slow client")
        self.assertNextIsSentinel(fast, skey, total + 1, "the fast client")

    def test_large_events_arrive_whole_and_in_order(self):
        """Events from 2 bytes to ~200 KB (past the broadcaster's 64 KB write batch),
        interleaved with small ones and with control replies."""
        srv, port = self.start_example()
        live = self.connect(port, "/ws")
        self.assertEqual(live.ping(), [])
        sizes = [10, 70000, 5, 200000, 65536, 1, 100000, 100000, 3, 130000]
        keys = []
        for i, n in enumerate(sizes):
            k = "big%d-%s" % (i, uuid.uuid4().hex[:8])
            keys.append(k)
            st, hs, body = srv.post("/orders", order_body(chr(97 + i) * n, 1), key=k,
                                    headers=JSON)
            self.assertEqual(st, 201, body[:200])
            if i == 4:
                live.send_json({"type": "ping"})  # a reply queued among the frames
        got, pongs = [], 0
        while len(got) < len(sizes):
            msg = live.recv_json(EVENT_TIMEOUT_S)
            if msg == {"type": "pong"}:
                pongs += 1
                continue
            self.assertTrue(is_event(msg), str(msg)[:200])
            got.append(msg)
        self.assertEqual(pongs, 1)
        self.assertEqual(seqs(got), list(range(1, len(sizes) + 1)))
        for i, (e, n, k) in enumerate(zip(got, sizes, keys)):
            self.assertEqual(e["payload"], {"order_id": "ord_" + k,
                                            "product_id": chr(97 + i) * n, "quantity": 1},
                             "event %d (%d bytes)" % (i, n))
        # The same from the history, all at once.
        again = events_until(self.connect(port, "/ws?since=0"), len(sizes))
        self.assertEqual(again, got)

    def test_client_behind_the_cache_is_served_from_the_store(self):
        """More events than the broadcaster's in-memory cache (8192): a since=0 client
        gets the oldest ones read back from LMDB (cnerium_ws_catchups_total), then the
        cached ones, with no gap."""
        srv, port = self.start_example()
        total = 8192 + 300
        reqs = [("/orders", b'{"product_id":"c","quantity":1}', "c%05d" % i)
                for i in range(total)]
        for r in post_many(srv, reqs, threads=6):
            self.assertFalse(isinstance(r, Exception) or r[0] != 201, r)
        m = metrics(srv)
        self.assertEqual(int(m["cnerium_events_last_seq"]), total)
        self.assertEqual(int(m["cnerium_ws_catchups_total"]), 0)
        c = self.connect(port, "/ws?since=0")
        got = events_until(c, total, timeout=60.0)
        self.assertEqual(seqs(got), list(range(1, total + 1)))
        self.assertEqual(len({e["payload"]["order_id"] for e in got}), total)
        catchups = metric(srv, "cnerium_ws_catchups_total")
        self.assertGreaterEqual(catchups, total - 8192,
                                "the events behind the cache come from the store")
        skey = self.sentinel(srv)
        self.assertNextIsSentinel(c, skey, total + 1, "the caught-up client")

    def test_malformed_client_messages(self):
        srv, port = self.start_example()
        c = self.connect(port, "/ws")
        self.assertEqual(c.ping(), [])
        errors0 = metric(srv, "cnerium_ws_client_errors_total")
        bad = [
            ("not JSON", lambda: c.send_text("hello, server")),
            ("truncated JSON", lambda: c.send_text('{"type":"ping"')),
            ("JSON array", lambda: c.send_text('["ping"]')),
            ("JSON string", lambda: c.send_text('"ping"')),
            ("no type", lambda: c.send_json({"room": "r1"})),
            ("type not a string", lambda: c.send_json({"type": 7})),
            ("unknown type", lambda: c.send_json({"type": "dance"})),
            ("subscribe without room", lambda: c.send_json({"type": "subscribe"})),
            ("subscribe with a number room", lambda: c.send_json({"type": "subscribe",
                                                                   "room": 5})),
            ("subscribe with an empty room", lambda: c.send_json({"type": "subscribe",
                                                                   "room": ""})),
            ("subscribe with a 129-byte room", lambda: c.send_json(
                {"type": "subscribe", "room": "r" * 129})),
            ("unsubscribe without room", lambda: c.send_json({"type": "unsubscribe"})),
            ("5000-byte message", lambda: c.send_text(
                '{"type":"ping","pad":"%s"}' % ("p" * (5000 - 24)))),
            ("binary frame", lambda: c.send_frame(0x2, b"\x00\x01\x02binary")),
            ("empty message", lambda: c.send_text("")),
        ]
        for what, send in bad:
            with self.subTest(what):
                send()
                msg = c.recv_json(EVENT_TIMEOUT_S)
                self.assertEqual(msg.get("type"), "error", "%s: %r" % (what, msg))
                self.assertIsInstance(msg.get("message"), str)
                self.assertTrue(msg["message"])
                self.assertEqual(c.ping(), [], "%s: the connection keeps working" % what)
        wait_until(lambda: metric(srv, "cnerium_ws_client_errors_total") >= errors0 + len(bad),
                   5.0, what="cnerium_ws_client_errors_total up by %d" % len(bad))
        self.assertEqual(metric(srv, "cnerium_ws_client_errors_total"), errors0 + len(bad))
        # Boundaries: 4096 bytes is accepted, 4097 is too long; a message in fragments
        # is one message.
        for size, want in ((4096, "pong"), (4097, "error")):
            text = '{"type":"ping","pad":"%s"}' % ("p" * (size - 24))
            self.assertEqual(len(text), size)
            c.send_text(text)
            self.assertEqual(c.recv_json(EVENT_TIMEOUT_S).get("type"), want,
                             "a %d-byte ping" % size)
        c.send_frame(0x1, b'{"type":', fin=False)
        c.send_frame(0x0, b'"ping"}')
        self.assertEqual(c.recv_json(EVENT_TIMEOUT_S), {"type": "pong"})
        self.assertEqual(c.ping(), [])
        self.assertEqual(metric(srv, "cnerium_ws_client_errors_total"), errors0 + len(bad) + 1)
        # Valid control messages still answer, and events still arrive.
        c.send_json({"type": "subscribe", "room": "r1"})
        self.assertEqual(c.recv_json(EVENT_TIMEOUT_S), {"type": "subscribed", "room": "r1"})
        c.send_json({"type": "unsubscribe", "room": "r1"})
        self.assertEqual(c.recv_json(EVENT_TIMEOUT_S), {"type": "unsubscribed", "room": "r1"})
        skey = self.sentinel(srv)
        self.assertNextIsSentinel(c, skey, 1, "after the malformed messages")
        self.assertTrue(srv.alive())

    def test_binary_frame_is_an_error_even_when_it_holds_json(self):
        """Client messages are JSON text; a binary frame is malformed whatever it holds
        (broadcast.h: anything else gets {"type":"error",...})."""
        srv, port = self.start_example()
        c = self.connect(port, "/ws")
        self.assertEqual(c.ping(), [])
        c.send_frame(0x2, b'{"type":"ping"}')
        msg = c.recv_json(EVENT_TIMEOUT_S)
        self.assertEqual(msg.get("type"), "error",
                         "a binary frame holding {\"type\":\"ping\"} was answered %r" % msg)
        self.assertEqual(c.ping(), [])

    def test_metrics_move(self):
        srv, port = self.start_example()
        m0 = metrics(srv)
        for name in ("cnerium_events_committed_total", "cnerium_events_last_seq",
                     "cnerium_ws_clients", "cnerium_ws_frames_sent_total",
                     "cnerium_ws_catchups_total", "cnerium_ws_resets_total",
                     "cnerium_ws_slow_consumer_closes_total", "cnerium_ws_client_errors_total",
                     "cnerium_broadcaster_restarts_total"):
            self.assertIn(name, m0)
            self.assertEqual(m0[name], 0, name)
        cs = [self.connect(port, "/ws") for _ in range(3)]
        for c in cs:
            c.ping()
        wait_until(lambda: metric(srv, "cnerium_ws_clients") == 3, 10.0,
                   what="cnerium_ws_clients == 3")
        self.post_orders(srv, [fresh("m") for _ in range(4)])
        for c in cs:
            self.assertEqual(seqs(events_until(c, 4)), [1, 2, 3, 4])
        m = metrics(srv)
        self.assertEqual(int(m["cnerium_events_committed_total"]), 4)
        self.assertEqual(int(m["cnerium_events_last_seq"]), 4)
        # The broadcaster counts frames just after writing them: poll, then exactly 12.
        wait_until(lambda: metric(srv, "cnerium_ws_frames_sent_total") >= 12, 10.0,
                   what="cnerium_ws_frames_sent_total reaching 12")
        self.assertEqual(metric(srv, "cnerium_ws_frames_sent_total"), 12)
        cs[0].close()
        cs[1].close()
        wait_until(lambda: metric(srv, "cnerium_ws_clients") == 1, 10.0,
                   what="cnerium_ws_clients == 1")
        cs[2].close()
        wait_until(lambda: metric(srv, "cnerium_ws_clients") == 0, 10.0,
                   what="cnerium_ws_clients == 0")
        self.assertEqual(metric(srv, "cnerium_ws_resets_total"), 0)


class RetentionTest(RealtimeCase):
    def test_reset_when_since_is_older_than_the_retained_count(self):
        srv, port = self.start_example("--events-retain", "5", "--sweep-interval-ms", "50")
        keys = [fresh("r") for _ in range(20)]
        for k in keys:  # one at a time: seq order is key order
            st, hs, body = srv.post("/orders", order_body("r", 1), key=k, headers=JSON)
            self.assertEqual(st, 201, body)
        self.assertEqual(metric(srv, "cnerium_events_last_seq"), 20)
        resets0 = metric(srv, "cnerium_ws_resets_total")
        seen = []
        c_epoch = []

        def pruned():
            c = Client(port, "/ws?since=0")
            c_epoch[:] = [c.welcome["epoch"]]
            try:
                msgs = [c.recv_json(EVENT_TIMEOUT_S)]
                if msgs[0].get("type") == "reset":
                    oldest = msgs[0].get("oldest")
                    if isinstance(oldest, int) and oldest <= 20:
                        msgs += events_until(c, 20)
                seen.append(msgs)
                return msgs[0].get("type") == "reset" and msgs[0].get("oldest") == 16
            finally:
                c.close()

        wait_until(pruned, PRUNE_TIMEOUT_S, step=0.05,
                   what="a since=0 client told reset with oldest 16 (last: %r)" % seen[-1:])
        for msgs in seen:
            first = msgs[0]
            if first.get("type") != "reset":
                # Not pruned yet: the whole history.
                self.assertEqual(seqs(msgs[:1]), [1], msgs[:2])
                continue
            self.assertEqual(set(first), {"type", "reason", "epoch", "oldest", "next"}, first)
            self.assertEqual((first["reason"], first["next"]), ("pruned", first["oldest"]))
            self.assertEqual(first["epoch"], c_epoch[0])
            m = first["oldest"]
            self.assertGreater(m, 1)
            self.assertLessEqual(m, 16)
            self.assertEqual(seqs(msgs[1:]), list(range(m, 21)),
                             "after reset: every event from oldest on")
            for e, k in zip(msgs[1:], keys[m - 1:]):
                self.assertEqual(e["payload"]["order_id"], "ord_" + k)
        self.assertGreater(metric(srv, "cnerium_ws_resets_total"), resets0)

        # A since= inside the window: no reset, exactly the rest.
        c = self.connect(port, "/ws?since=17")
        self.assertEqual(seqs(events_until(c, 20)), [18, 19, 20])
        # since= just before the oldest retained: nothing was lost, so no reset.
        c = self.connect(port, "/ws?since=15")
        msg = c.recv_json(EVENT_TIMEOUT_S)
        self.assertEqual(msg.get("seq"), 16, "since=15 with 16..20 retained: %r" % msg)
        # Then live; the next event lands past the window.
        skey = self.sentinel(srv)
        rest = events_until(c, 21)
        self.assertEqual(seqs(rest), [17, 18, 19, 20, 21])
        self.assertEqual(rest[-1]["payload"]["order_id"], "ord_" + skey)

    def test_reset_when_everything_is_older_than_the_retained_age(self):
        srv, port = self.start_example("--events-retain-s", "1", "--sweep-interval-ms", "50")
        self.post_orders(srv, [fresh("age") for _ in range(5)])
        self.assertEqual(metric(srv, "cnerium_events_last_seq"), 5)
        seen = []

        def pruned():
            c = Client(port, "/ws?since=2")
            try:
                msgs = [c.recv_json(EVENT_TIMEOUT_S)]
                first = msgs[0]
                # Pruning is progressive (the events were made a few ms apart): a reset
                # to M <= 5 is followed by the events M..5.
                if first.get("type") != "reset" or first.get("oldest") != 6:
                    if first.get("seq", 0) < 5 and first.get("oldest", 0) <= 5:
                        msgs += events_until(c, 5)
                seen.append(msgs)
                return is_reset(first, "pruned", 6, 6)
            finally:
                c.close()

        # Events older than 1 s go at the next sweep; polled, so it takes ~1 s.
        wait_until(pruned, PRUNE_TIMEOUT_S, step=0.1,
                   what="a reset to 6 once every event is 1 s old (last %r)" % seen[-1:])
        for msgs in seen[:-1]:
            first = msgs[0]
            if first.get("type") == "reset":
                self.assertTrue(is_reset(first, "pruned", first.get("oldest"),
                                         first.get("oldest")), first)
                self.assertGreater(first["oldest"], 3, "a reset must mean a loss")
                self.assertEqual(seqs(msgs[1:]), list(range(first["oldest"], 6)), msgs)
            else:
                self.assertEqual(seqs(msgs), [3, 4, 5], msgs)
        c = self.connect(port, "/ws?since=2")
        self.assertTrue(is_reset(c.recv_json(EVENT_TIMEOUT_S), "pruned", 6, 6))
        skey = self.sentinel(srv)
        self.assertNextIsSentinel(c, skey, 6, "after the reset")


class FixtureRealtimeTest(RealtimeCase):
    def start_fixture(self, *extra):
        srv = self.start_server(h.contract_server(), "--workers", "2", *extra,
                                env=FIXTURE_ENV)
        return srv, ws_port(srv)

    def announce(self, srv, text, seq):
        """POST /announce (an ordinary route: its event is committed after the response,
        nobody waits for it); then waits until it is committed as event seq, so that the
        next request's event comes after it."""
        r = srv.post("/announce", text if isinstance(text, bytes) else text.encode())
        self.assertEqual(r[0], 200, r[2])
        wait_until(lambda: metric(srv, "cnerium_events_last_seq") >= seq, 10.0,
                   what="the announcement committed as event %d" % seq)
        self.assertEqual(metric(srv, "cnerium_events_last_seq"), seq)

    def room_post(self, srv, room, text, key=None):
        r = srv.post("/rooms/" + room, text.encode(), key=key or fresh("room"))
        self.assertEqual(r[0], 201, r[2])
        return r

    def test_events_are_stored_without_realtime_and_survive_a_restart(self):
        """Without realtime there is no broadcaster, but events are still numbered and
        stored; a restart with realtime on the same data dir serves them with ?since=0
        and numbering goes on where it stopped."""
        data = self.make_data_dir()
        srv = self.start_server(h.contract_server(), "--workers", "2", data_dir=data)
        self.assertNotIn("realtime on", srv.stdout_text())
        self.assertIsNone(broadcaster(srv))
        r = srv.post("/orders", b"first", key=fresh("o"))
        self.assertEqual(r[0], 201, r[2])
        n = parse_json(r[2])["n"]
        self.announce(srv, b"second", 2)
        m = metrics(srv)
        self.assertEqual(int(m["cnerium_events_committed_total"]), 2)
        self.assertEqual(int(m["cnerium_events_last_seq"]), 2)
        self.assertEqual(int(m["cnerium_ws_clients"]), 0)
        self.assertEqual(srv.stop(), 0, srv.diagnostics())

        srv2 = self.start_server(h.contract_server(), "--workers", "2", data_dir=data,
                                 env=FIXTURE_ENV)
        port = ws_port(srv2)
        self.assertIsNotNone(wait_until(lambda: broadcaster(srv2), 10.0,
                                        what="a cn-broadcaster child"))
        c = self.connect(port, "/ws?since=0")
        got = events_until(c, 2)
        self.assertEqual(got, [{"type": "order.created", "payload": {"n": n}, "seq": 1},
                               {"type": "announcement", "payload": {"text": "second"},
                                "seq": 2}])
        self.announce(srv2, b"third", 3)
        self.assertEqual(c.recv_json(EVENT_TIMEOUT_S),
                         {"type": "announcement", "payload": {"text": "third"}, "seq": 3})
        self.assertEqual(metric(srv2, "cnerium_events_last_seq"), 3)

    def test_rooms_subscribe_and_unsubscribe(self):
        srv, port = self.start_fixture()
        a, b, c = (self.connect(port, "/ws") for _ in range(3))
        for cl in (a, b, c):
            self.assertEqual(cl.ping(), [])
        a.send_json({"type": "subscribe", "room": "red"})
        self.assertEqual(a.recv_json(EVENT_TIMEOUT_S), {"type": "subscribed", "room": "red"})
        a.send_json({"type": "subscribe", "room": "red"})  # again: same answer
        self.assertEqual(a.recv_json(EVENT_TIMEOUT_S), {"type": "subscribed", "room": "red"})
        c.send_json({"type": "subscribe", "room": "blue"})
        self.assertEqual(c.recv_json(EVENT_TIMEOUT_S), {"type": "subscribed", "room": "blue"})

        self.room_post(srv, "red", "r1")         # seq 1
        self.room_post(srv, "blue", "b1")        # seq 2
        self.announce(srv, b"hello", 3)  # seq 3
        self.room_post(srv, "green", "g1")       # seq 4, nobody subscribed
        self.announce(srv, b"end1", 5)   # seq 5
        got_a = events_until(a, 5)
        got_b = events_until(b, 5)
        got_c = events_until(c, 5)
        self.assertEqual(seqs(got_a), [1, 3, 5])
        self.assertEqual(got_a[0], {"type": "room.message", "seq": 1, "room": "red",
                                    "payload": {"room": "red", "text": "r1"}})
        self.assertEqual(got_a[1], {"type": "announcement", "seq": 3,
                                    "payload": {"text": "hello"}})
        self.assertEqual(seqs(got_b), [3, 5], "a client in no room gets room-less events only")
        self.assertEqual(seqs(got_c), [2, 3, 5])
        self.assertEqual(got_c[0]["room"], "blue")

        # a leaves red; c joins red too.
        a.send_json({"type": "unsubscribe", "room": "red"})
        self.assertEqual(a.recv_json(EVENT_TIMEOUT_S), {"type": "unsubscribed", "room": "red"})
        c.send_json({"type": "subscribe", "room": "red"})
        self.assertEqual(c.recv_json(EVENT_TIMEOUT_S), {"type": "subscribed", "room": "red"})
        # Unsubscribing a room one is not in is answered too.
        b.send_json({"type": "unsubscribe", "room": "red"})
        self.assertEqual(b.recv_json(EVENT_TIMEOUT_S), {"type": "unsubscribed", "room": "red"})
        self.room_post(srv, "red", "r2")         # seq 6
        self.room_post(srv, "blue", "b2")        # seq 7
        self.announce(srv, b"end2", 8)   # seq 8
        self.assertEqual(seqs(events_until(a, 8)), [8], "a left red")
        self.assertEqual(seqs(events_until(b, 8)), [8])
        got_c = events_until(c, 8)
        self.assertEqual(seqs(got_c), [6, 7, 8])
        self.assertEqual([e.get("room") for e in got_c], ["red", "blue", None])

        # A replay of a room post emits nothing.
        k = fresh("rk")
        first = self.room_post(srv, "red", "r3", key=k)    # seq 9
        again = srv.post("/rooms/red", b"r3", key=k)
        self.assertReplayOf(first, again)
        self.announce(srv, b"end3", 10)  # seq 10
        self.assertEqual(seqs(events_until(c, 10)), [9, 10])
        self.assertEqual(seqs(events_until(b, 10)), [10])
        self.assertEqual(metric(srv, "cnerium_events_committed_total"), 10)

        # At most 16 rooms per client; the 17th is an error and the client keeps going.
        for i in range(15):
            b.send_json({"type": "subscribe", "room": "x%d" % i})
            self.assertEqual(b.recv_json(EVENT_TIMEOUT_S),
                             {"type": "subscribed", "room": "x%d" % i})
        b.send_json({"type": "subscribe", "room": "red"})
        self.assertEqual(b.recv_json(EVENT_TIMEOUT_S), {"type": "subscribed", "room": "red"})
        b.send_json({"type": "subscribe", "room": "one-too-many"})
        self.assertEqual(b.recv_json(EVENT_TIMEOUT_S).get("type"), "error")
        self.assertEqual(b.ping(), [])
        self.room_post(srv, "red", "r4")         # seq 11
        self.room_post(srv, "one-too-many", "t")  # seq 12: b is not in it
        self.room_post(srv, "x14", "x")          # seq 13
        self.announce(srv, b"end4", 14)  # seq 14
        got_b = events_until(b, 14)
        self.assertEqual(seqs(got_b), [11, 13, 14])

    def test_durable_and_ordinary_events_share_one_sequence(self):
        srv, port = self.start_fixture()
        w = self.connect(port, "/ws")
        self.assertEqual(w.ping(), [])
        expected = []
        for i in range(6):
            if i % 2:
                self.announce(srv, b"a%d" % i, i + 1)
                expected.append(("announcement", {"text": "a%d" % i}))
            else:
                r = srv.post("/orders", b"o%d" % i, key=fresh("o"))
                self.assertEqual(r[0], 201, r[2])
                expected.append(("order.created", {"n": parse_json(r[2])["n"]}))
        got = events_until(w, 6)
        self.assertEqual(seqs(got), [1, 2, 3, 4, 5, 6])
        self.assertEqual([(e["type"], e["payload"]) for e in got], expected)
        # Ordinary routes emit on every call (no idempotency: the same body again is a
        # new event); a 409 on /orders emits nothing.
        self.announce(srv, b"a1", 7)
        got = events_until(w, 7)
        self.assertEqual([(e["seq"], e["type"], e["payload"]) for e in got],
                         [(7, "announcement", {"text": "a1"})])
        k = fresh("o")
        self.assertEqual(srv.post("/orders", b"x", key=k)[0], 201)
        self.assertProblem(srv.post("/orders", b"y", key=k), 409, h.KEY_REUSED)
        self.announce(srv, b"z", 9)
        self.announce(srv, b"z", 10)
        got = events_until(w, 10)
        self.assertEqual([(e["seq"], e["type"]) for e in got],
                         [(8, "order.created"), (9, "announcement"), (10, "announcement")])
        self.assertEqual(metric(srv, "cnerium_events_committed_total"), 10)


if __name__ == "__main__":
    h.main()
