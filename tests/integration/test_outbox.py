#!/usr/bin/env python3
"""The offline-first client outbox (include/cnerium/outbox.h) through its command line
tool, cnerium-outbox (CNERIUM_OUTBOX_CLI), against the real seed-000 server and against
small fake servers running in the test process.

Covered: orders enqueued while nothing listens stay Pending (retryable, none Failed,
last error a connect failure) and drain exactly once each after the server starts; a
SIGKILL of the CLI in the middle of a run and a SIGKILL + restart of the whole server in
the middle of a run both end with every operation Done and the handler run exactly once
per operation (the server's metric; the durable event log read from ?since=0 and a replay
of every key); a 400 is Failed after one try and never resent; requeue, exit codes and
messages of bad arguments (bad UTF-8 and huge values included), a second worker on a
directory; max_attempts against a server that always answers 503 (every try carries the
operation id as its Idempotency-Key); Retry-After honoured after a 429.

The server runs on a port picked here (not 0): an outbox stores full URLs, so they must
stay valid while the server is down and after it restarts. Every CLI call is bounded by
a timeout; background runs are stopped by PID at the end of each test; every wait is a
bounded poll of a condition.
"""

import http.client
import http.server
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import cnharness as h  # noqa: E402
from cnharness import header, parse_json, wait_until  # noqa: E402
import wsclient  # noqa: E402

JSON = {"Content-Type": "application/json"}
CLI_TIMEOUT_S = 60.0     # one CLI call (a run given --max-seconds gets that much more)
DRAIN_TIMEOUT_S = 90.0   # a background run to empty
EVENT_TIMEOUT_S = 15.0
REALTIME_RE = re.compile(r"realtime on ws://127\.0\.0\.1:(\d+)(/\S*)")
PROGRESS_RE = re.compile(r"outbox: sent (\d+), done (\d+), failed (\d+), waiting (\d+)")
ID_RE = re.compile(r"[0-9a-f]{32}\Z")
# Retries against a server that is down or restarting come back quickly, and never run
# out while it is: these tests are about exactly-once delivery, not about max_attempts.
FAST_RETRY = ("--base-delay-ms", "50", "--max-delay-ms", "300")


def cli():
    return h.binary("CNERIUM_OUTBOX_CLI")


def free_port():
    """A loopback port nothing listens on right now (picked by the kernel)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


def order_body(product, quantity=1):
    return json.dumps({"product_id": product, "quantity": quantity},
                      separators=(",", ":"))


def durable_counts(srv, operation="orders.create"):
    """{outcome: count} of cnerium_durable_requests_total for operation."""
    st, _, body = srv.get("/metrics", timeout=10.0)
    if st != 200:
        raise AssertionError("GET /metrics answered %d" % st)
    out = {}
    pat = re.compile(r'cnerium_durable_requests_total\{operation="%s",outcome="(\w+)"\} (\S+)'
                     % re.escape(operation))
    for line in body.decode().splitlines():
        m = pat.match(line)
        if m:
            out[m.group(1)] = int(float(m.group(2)))
    return out


def ws_endpoint(srv):
    m = REALTIME_RE.search(srv.stdout_text())
    if not m:
        raise AssertionError("no 'realtime on ws://...' line on stdout: %r"
                             % srv.stdout_text())
    return int(m.group(1)), m.group(2)


class Background:
    """A CLI process running on its own: stdout and stderr drained by threads, stopped
    by PID (SIGKILL) in close()."""

    def __init__(self, args, env):
        self.args = args
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=env)
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.out = []
        self.err = []
        self.threads = [threading.Thread(target=self._drain, args=(p, buf), daemon=True)
                        for p, buf in ((self.proc.stdout, self.out),
                                       (self.proc.stderr, self.err))]
        for t in self.threads:
            t.start()

    def _drain(self, pipe, buf):
        try:
            for raw in iter(pipe.readline, b""):
                with self.changed:
                    buf.append(raw.decode("utf-8", "replace"))
                    self.changed.notify_all()
        except (OSError, ValueError):
            pass

    def stderr_text(self):
        with self.lock:
            return "".join(self.err)

    def stdout_text(self):
        with self.lock:
            return "".join(self.out)

    def wait_stderr(self, pattern, timeout):
        """Waits (bounded) until stderr matches pattern (a regex); returns the match."""
        return self._wait(self.err, "stderr", pattern, timeout)

    def wait_stdout(self, pattern, timeout):
        return self._wait(self.out, "stdout", pattern, timeout)

    def _wait(self, buf, name, pattern, timeout):
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        with self.changed:
            while True:
                m = rx.search("".join(buf))
                if m:
                    return m
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None and not self._alive_drains():
                    raise AssertionError("timed out waiting for %r on the %s of %s; got:\n%s"
                                         % (pattern, name, self.args, "".join(buf)))
                self.changed.wait(min(left, 0.2))

    def _alive_drains(self):
        return any(t.is_alive() for t in self.threads)

    def wait(self, timeout):
        """The exit code, or None when the process is still running after timeout."""
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        for t in self.threads:
            t.join(5.0)
        return rc

    def close(self):
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10.0)
        for t in self.threads:
            t.join(5.0)
        for p in (self.proc.stdout, self.proc.stderr):
            try:
                p.close()
            except OSError:
                pass


class FakeServer:
    """An HTTP server in a thread of the test process on a free loopback port. respond(n,
    request) gives (status, [(name, value)], body bytes) for the n-th request (from 1);
    every request is recorded as a dict: t (monotonic), method, path, headers, body."""

    def __init__(self, respond):
        self.requests = []
        self.lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):
                super().setup()
                # The status line and headers go out before the body: without this, Nagle
                # and the client's delayed ACK add 40 ms to every answer.
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def _any(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                req = {"t": time.monotonic(), "method": self.command, "path": self.path,
                       "headers": self.headers, "body": body}
                with outer.lock:
                    outer.requests.append(req)
                    k = len(outer.requests)
                status, headers, data = respond(k, req)
                try:
                    self.send_response(status)
                    for name, value in headers:
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    self.close_connection = True  # the client went away (killed)

            do_POST = do_PUT = do_PATCH = do_DELETE = _any

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = "http://127.0.0.1:%d" % self.port
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def seen(self):
        with self.lock:
            return list(self.requests)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10.0)


class GateProxy:
    """A FakeServer that forwards every request to 127.0.0.1:target_port and passes the
    first pass_first answers back; later requests reach the target too, but their
    answers are held (the client sees a request that never returns) until release()."""

    HOP = ("host", "content-length", "connection", "keep-alive", "transfer-encoding")

    def __init__(self, target_port, pass_first):
        self.target_port = target_port
        self.pass_first = pass_first
        self.released = threading.Event()
        self.held = []  # Idempotency-Keys of the requests whose answer is held
        self.lock = threading.Lock()
        self.server = FakeServer(self._forward)
        self.url = self.server.url

    def _forward(self, n, req):
        conn = http.client.HTTPConnection("127.0.0.1", self.target_port, timeout=30.0)
        try:
            hs = [(k, v) for k, v in req["headers"].items() if k.lower() not in self.HOP]
            st, headers, body = h.send_request(conn, req["method"], req["path"], req["body"],
                                               hs)
        except (OSError, http.client.HTTPException):
            return 502, [], b"target unreachable"
        finally:
            conn.close()
        if n > self.pass_first and not self.released.is_set():
            with self.lock:
                self.held.append(req["headers"].get("Idempotency-Key"))
            self.released.wait(60.0)
        keep = [(k, v) for k, v in headers if k.lower() not in self.HOP]
        return st, keep, body

    def held_keys(self):
        with self.lock:
            return list(self.held)

    def release(self):
        self.released.set()

    def close(self):
        self.released.set()
        self.server.close()


class OutboxTestCase(h.ServerTestCase):
    def setUp(self):
        super().setUp()
        self.tmp = tempfile.mkdtemp(prefix="cnerium-outbox-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.dir = os.path.join(self.tmp, "outbox")
        self.env = dict(os.environ)
        self.env.pop("CNERIUM_OUTBOX_DIR", None)

    # -- the CLI --

    def cli(self, *args, dir_=True, env=None, input_=None, timeout=CLI_TIMEOUT_S):
        """Runs cnerium-outbox [--dir D] args (str or bytes). Returns the
        CompletedProcess (stdout, stderr as text); fails on a sanitizer report."""
        argv = [cli()] + (["--dir", self.dir] if dir_ else []) + list(args)
        try:
            p = subprocess.run(argv, input=input_, capture_output=True,
                               env=self.env if env is None else env, timeout=timeout,
                               stdin=None if input_ is not None else subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            self.fail("%s did not exit within %.0f s" % (argv, timeout))
        p.stdout = p.stdout.decode("utf-8", "replace")
        p.stderr = p.stderr.decode("utf-8", "replace")
        self.assertNoSanitizer(p.stderr, argv)
        return p

    def ok(self, *args, **kw):
        p = self.cli(*args, **kw)
        self.assertEqual(p.returncode, 0, "%s: %s" % (args, p.stderr))
        return p.stdout

    def jcli(self, *args):
        out = self.ok(*args)
        try:
            return json.loads(out)
        except ValueError as e:
            raise AssertionError("%s printed no JSON: %r (%s)" % (args, out[:500], e))

    def assertNoSanitizer(self, text, what):
        for marker in h.SANITIZER_MARKERS:
            if marker in text:
                self.fail("sanitizer report from %s:\n%s" % (what, text[-h.STDERR_TAIL:]))

    def enqueue(self, url, body=None, *extra):
        args = ["enqueue", "--method", "POST", "--url", url]
        if body is not None:
            args += ["--data", body]
        ids = self.ok(*(args + list(extra))).split()
        for i in ids:
            self.assertRegex(i, ID_RE)
        return ids

    def stats(self):
        return self.jcli("stats", "--json")

    def ops(self, status=None):
        args = ["list", "--json"] + (["--status", status] if status else [])
        return self.jcli(*args)

    def show(self, op_id):
        return self.jcli("show", op_id, "--json")

    def background_run(self, *args):
        argv = [cli(), "--dir", self.dir, "run"] + list(args)
        bg = Background(argv, self.env)
        self.addCleanup(lambda: self.assertNoSanitizer(bg.stderr_text(), argv))
        self.addCleanup(bg.close)
        return bg

    def final_line(self, stderr):
        lines = PROGRESS_RE.findall(stderr)
        self.assertTrue(lines, "no progress line on stderr: %r" % stderr[-2000:])
        return tuple(int(x) for x in lines[-1])

    # -- servers --

    def example(self, port, data_dir=None):
        return self.start_server(h.example_server(), *h.EXAMPLE_FLAGS, "--workers", "2",
                                 port=port, data_dir=data_dir)

    def fake(self, respond):
        srv = FakeServer(respond)
        self.addCleanup(srv.close)
        return srv

    def order_events(self, srv):
        """Every order.created event in the server's log (read from ?since=0), in seq
        order, up to a sentinel order committed now; the sentinel's event is not
        returned. Exact without waiting for silence: the log is read up to a known last
        event."""
        key = "sentinel-" + uuid.uuid4().hex
        st, _, body = srv.post("/orders", order_body("sentinel").encode(), key=key,
                               headers=JSON)
        self.assertEqual(st, 201, body)
        port, path = ws_endpoint(srv)
        c = wsclient.WSClient("127.0.0.1", port, path + "?since=0", timeout=EVENT_TIMEOUT_S)
        self.addCleanup(c.close)
        events = []
        deadline = time.monotonic() + EVENT_TIMEOUT_S
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self.fail("the sentinel event did not come within %.0f s (%d events read)"
                          % (EVENT_TIMEOUT_S, len(events)))
            msg = c.recv_json(left)
            self.assertIn("seq", msg, "expected an event frame, got %r" % (msg,))
            self.assertEqual(msg.get("type"), "order.created", msg)
            if msg["payload"]["order_id"] == "ord_" + key:
                return events
            events.append(msg)

    def assertDrainedOnce(self, srv, ids):
        """Every operation is Done and ran exactly once on the server: one order.created
        event each in its durable log, and a retry of a sample replays the response the
        outbox kept, byte for byte."""
        stored = {op["id"]: op for op in self.ops()}
        for op_id in ids:
            op = stored[op_id]
            self.assertEqual(op["status"], "done", op)
            self.assertIn(op["last_http_status"], (200, 201), op)
        got = [e["payload"]["order_id"] for e in self.order_events(srv)]
        self.assertEqual(len(got), len(ids), "one order.created per operation")
        self.assertEqual(sorted(got), sorted("ord_" + i for i in ids))
        for op_id in sorted(ids)[:8]:
            op = self.show(op_id)
            again = srv.post("/orders", op["payload"].encode(), key=op_id, headers=JSON)
            self.assertEqual(again[0], op["last_http_status"])
            self.assertEqual(header(again[1], "Idempotent-Replayed"), "true",
                             "operation %s must have been stored by the server" % op_id)
            self.assertEqual(again[2].decode(), op["response"])
            self.assertEqual(parse_json(again[2])["order_id"], "ord_" + op_id)


class DeliveryTest(OutboxTestCase):
    """Exactly-once delivery to the seed-000 server through outages."""

    def test_enqueued_offline_then_drained_exactly_once(self):
        port = free_port()
        url = "http://127.0.0.1:%d/orders" % port
        bodies = {}
        for i in range(20):
            body = order_body("offline-%d" % i, i + 1)
            (op_id,) = self.enqueue(url, body, "--kind", "order")
            bodies[op_id] = body
        self.assertEqual(len(bodies), 20, "ids must be distinct")

        # Nothing listens: nothing is Failed, even with a budget of one attempt: a
        # connection that could not be made is not an attempt (the origin backs off as a
        # whole, one operation probing it per step).
        p = self.cli("run", "--until-empty", "--max-seconds", "2", "--max-attempts", "1",
                     *FAST_RETRY)
        self.assertEqual(p.returncode, 3, "run --until-empty stopped by --max-seconds: %s"
                         % p.stderr)
        self.assertEqual(self.final_line(p.stderr)[1:], (0, 0, 20))
        st = self.stats()
        self.assertEqual((st["pending"], st["inflight"], st["done"], st["failed"]),
                         (20, 0, 0, 0), st)
        self.assertEqual((st["total"], st["enqueued_total"]), (20, 20), st)
        tried = [op for op in self.ops() if op["last_error"]]
        self.assertTrue(tried, "the run must have tried something in 2 s")
        for op in self.ops():
            self.assertEqual(op["status"], "pending", op)
            self.assertEqual(op["kind"], "order", op)
            self.assertEqual(op["last_http_status"], 0, op)
            self.assertEqual(op["attempt"], 0, op)
            if op["last_error"]:
                self.assertRegex(op["last_error"].lower(), "connect", op)

        srv = self.example(port)
        p = self.cli("run", "--until-empty", "--max-seconds", "60", "--base-delay-ms", "50",
                     "--max-delay-ms", "300", timeout=CLI_TIMEOUT_S + 60)
        self.assertEqual(p.returncode, 0, p.stderr)
        sent, done, failed, waiting = self.final_line(p.stderr)
        self.assertEqual((done, failed, waiting), (20, 0, 0), p.stderr)
        st = self.stats()
        self.assertEqual((st["pending"], st["inflight"], st["done"], st["failed"]),
                         (0, 0, 20, 0), st)
        self.assertEqual(durable_counts(srv).get("executed"), 20)
        for op_id, body in bodies.items():
            op = self.show(op_id)
            self.assertEqual(op["status"], "done", op)
            self.assertEqual(op["payload"], body)
            self.assertIn("Content-Type: application/json", op["headers"])
            self.assertEqual(op["last_http_status"], 201, op)
            resp = json.loads(op["response"])
            self.assertEqual(resp["order_id"], "ord_" + op_id, op)
            self.assertEqual(resp["product_id"], json.loads(body)["product_id"])
            self.assertFalse(op["response_truncated"])

    def test_cli_sigkill_mid_run(self):
        port = free_port()
        srv = self.example(port)
        # The CLI talks to the server through a proxy that, after 100 answers, holds the
        # answer of the next request the server has already run: the run is cut there,
        # whatever the speed of the machine, with that operation Inflight.
        gate = GateProxy(port, 100)
        self.addCleanup(gate.close)
        ids = self.enqueue(gate.url + "/orders", order_body("kill-cli", 2), "--count", "300")
        self.assertEqual(len(set(ids)), 300)
        bg = self.background_run("--batch", "4", "--parallel", "1", *FAST_RETRY)
        (held,) = wait_until(gate.held_keys, 60.0, what="a request held by the proxy")
        bg.proc.kill()
        self.assertEqual(bg.wait(10.0), -signal.SIGKILL)
        gate.release()
        st = self.stats()
        self.assertEqual(st["done"] + st["pending"] + st["inflight"], 300, st)
        self.assertLessEqual(st["done"], 100, st)
        self.assertGreaterEqual(st["inflight"], 1, "the held operation is Inflight: %s" % st)
        self.assertEqual(self.show(held)["status"], "inflight")
        self.assertEqual(durable_counts(srv).get("executed"), 101, "the server ran it")

        # A new worker takes the dead one's Inflight operations back and sends them
        # again with the same key: the server answers from its store.
        p = self.cli("run", "--until-empty", "--max-seconds", "60", *FAST_RETRY,
                     timeout=CLI_TIMEOUT_S + 60)
        self.assertEqual(p.returncode, 0, p.stderr)
        st = self.stats()
        self.assertEqual((st["done"], st["failed"], st["pending"], st["inflight"]),
                         (300, 0, 0, 0), st)
        counts = durable_counts(srv)
        self.assertEqual(counts.get("executed"), 300,
                         "the handler must run exactly once per operation")
        self.assertGreaterEqual(counts.get("replayed", 0), 1, counts)
        op = self.show(held)
        self.assertEqual((op["status"], op["attempt"]), ("done", 2), op)
        self.assertEqual(json.loads(op["response"])["order_id"], "ord_" + held)
        self.assertDrainedOnce(srv, ids)

    def test_server_restart_mid_run(self):
        port = free_port()
        data_dir = self.make_data_dir()
        srv = self.example(port, data_dir)
        ids = self.enqueue("http://127.0.0.1:%d/orders" % port, order_body("restart", 3),
                           "--count", "200")
        # One operation per tick: two synced commits of the outbox and one of the server
        # per operation, so 190 of them take far longer than one poll of the metrics.
        bg = self.background_run("--until-empty", "--max-seconds", "80", "--batch", "1",
                                 "--parallel", "1", *FAST_RETRY)
        wait_until(lambda: durable_counts(srv).get("executed", 0) >= 10, 60.0, step=0.01,
                   what="10 orders executed")
        srv.stop(signal.SIGKILL)
        srv.kill_group()
        self.assertLess(self.stats()["done"], 200, "the run ended before the server died")

        # Same port, same data dir; the CLI keeps retrying meanwhile.
        srv2 = self.start_retrying(
            lambda: self.server(h.example_server(), *h.EXAMPLE_FLAGS, "--workers", "2",
                                data_dir=data_dir, port=port),
            "restart on port %d" % port)
        rc = bg.wait(DRAIN_TIMEOUT_S)
        self.assertEqual(rc, 0, "run --until-empty after the restart: %s"
                         % bg.stderr_text()[-3000:])
        st = self.stats()
        self.assertEqual((st["done"], st["failed"], st["pending"], st["inflight"]),
                         (200, 0, 0, 0), st)
        # Metrics restarted with the server: the durable log and the store say it all.
        executed = durable_counts(srv2).get("executed", 0)
        self.assertDrainedOnce(srv2, ids)
        replays = [srv2.post("/orders", order_body("restart", 3).encode(), key=i,
                             headers=JSON) for i in ids]
        for op_id, r in zip(ids, replays):
            self.assertEqual(r[0], 201, r[2])
            self.assertEqual(header(r[1], "Idempotent-Replayed"), "true", op_id)
            self.assertEqual(parse_json(r[2])["order_id"], "ord_" + op_id)
        self.assertEqual(durable_counts(srv2).get("executed", 0), executed + 1,
                         "after the drain only the sentinel ran, the rest replayed")

    def test_bad_request_fails_once_and_is_never_resent(self):
        port = free_port()
        srv = self.example(port)
        (bad,) = self.enqueue("http://127.0.0.1:%d/orders" % port, '{"quantity":1}')
        (good,) = self.enqueue("http://127.0.0.1:%d/orders" % port, order_body("fine"))
        p = self.cli("run", "--until-empty", "--max-seconds", "30")
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(self.final_line(p.stderr), (2, 1, 1, 0))
        op = self.show(bad)
        self.assertEqual(op["status"], "failed", op)
        self.assertEqual(op["attempt"], 1, op)
        self.assertEqual(op["last_http_status"], 400, op)
        self.assertTrue(op["last_error"], op)
        self.assertEqual(self.show(good)["status"], "done")
        self.assertEqual([o["id"] for o in self.ops("failed")], [bad])
        before = durable_counts(srv)
        self.assertEqual(before.get("executed"), 2, before)

        # Another worker, given time to (wrongly) send it again: nothing moves.
        p = self.cli("run", "--max-seconds", "1")
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(self.final_line(p.stderr), (0, 0, 0, 0))
        self.assertEqual(durable_counts(srv), before)
        self.assertEqual(self.show(bad)["attempt"], 1)


class PolicyTest(OutboxTestCase):
    """Retries as the policy says, seen from a fake server."""

    def test_max_attempts_against_503(self):
        srv = self.fake(lambda n, req: (503, [("Content-Type", "text/plain")], b"busy"))
        (op_id,) = self.enqueue(srv.url + "/always-503", order_body("p"))
        p = self.cli("run", "--until-empty", "--max-seconds", "30", "--max-attempts", "3",
                     "--base-delay-ms", "10", "--max-delay-ms", "20")
        self.assertEqual(p.returncode, 0, p.stderr)
        seen = srv.seen()
        self.assertEqual(len(seen), 3, "exactly max_attempts requests")
        for req in seen:
            self.assertEqual(req["method"], "POST")
            self.assertEqual(req["path"], "/always-503")
            self.assertEqual(req["headers"].get_all("Idempotency-Key"), [op_id])
            self.assertEqual(req["body"], order_body("p").encode())
        op = self.show(op_id)
        self.assertEqual((op["status"], op["attempt"], op["last_http_status"]),
                         ("failed", 3, 503), op)
        self.assertTrue(op["last_error"])
        # Failed is terminal: another run sends nothing.
        self.assertEqual(self.cli("run", "--max-seconds", "1").returncode, 0)
        self.assertEqual(len(srv.seen()), 3)

    def test_retry_after_is_honoured(self):
        def respond(n, req):
            if n == 1:
                return 429, [("Retry-After", "1")], b"slow down"
            return 201, [("Content-Type", "application/json")], b'{"ok":true}'
        srv = self.fake(respond)
        (op_id,) = self.enqueue(srv.url + "/limited", order_body("p"))
        p = self.cli("run", "--until-empty", "--max-seconds", "30", "--base-delay-ms", "10",
                     "--max-delay-ms", "20")
        self.assertEqual(p.returncode, 0, p.stderr)
        seen = srv.seen()
        self.assertEqual(len(seen), 2)
        self.assertGreaterEqual(seen[1]["t"] - seen[0]["t"], 0.9,
                                "the retry came before Retry-After: 1 allowed it")
        self.assertEqual([r["headers"].get("Idempotency-Key") for r in seen], [op_id] * 2)
        op = self.show(op_id)
        self.assertEqual((op["status"], op["attempt"], op["last_http_status"]),
                         ("done", 2, 201), op)
        self.assertEqual(op["response"], '{"ok":true}')


class CommandLineTest(OutboxTestCase):
    """Exit codes and messages."""

    def assertUsageError(self, *args, says=None):
        p = self.cli(*args)
        self.assertEqual(p.returncode, 2, "%s: %s" % (args, p.stderr))
        self.assertIn("see cnerium-outbox --help", p.stderr, args)
        self.assertTrue(p.stderr.startswith("cnerium-outbox: "), p.stderr)
        self.assertEqual(p.stdout, "", args)
        if says:
            self.assertIn(says, p.stderr, args)
        return p

    def test_requeue(self):
        answers = {"status": 400}
        srv = self.fake(lambda n, req: (answers["status"], [], b"no"))
        (op_id,) = self.enqueue(srv.url + "/x", order_body("p"))
        self.assertEqual(self.cli("run", "--until-empty", "--max-seconds", "30").returncode, 0)
        op = self.show(op_id)
        self.assertEqual((op["status"], op["attempt"]), ("failed", 1), op)

        self.assertEqual(self.ok("requeue", op_id), "")
        op = self.show(op_id)
        self.assertEqual((op["status"], op["attempt"]), ("pending", 0), op)

        answers["status"] = 201
        self.assertEqual(self.cli("run", "--until-empty", "--max-seconds", "30").returncode, 0)
        op = self.show(op_id)
        self.assertEqual((op["status"], op["attempt"]), ("done", 1), op)
        self.assertEqual([r["headers"].get("Idempotency-Key") for r in srv.seen()],
                         [op_id, op_id], "a requeued operation keeps its key")

        p = self.cli("requeue", op_id)
        self.assertEqual(p.returncode, 5, p.stderr)
        self.assertIn("done", p.stderr)
        (pending,) = self.enqueue(srv.url + "/y", order_body("q"))
        self.assertEqual(self.cli("requeue", pending).returncode, 5)

    def test_unknown_and_malformed_ids(self):
        self.enqueue("http://127.0.0.1:9/x", "{}")
        missing = uuid.uuid4().hex
        for args in (("show", missing), ("show", missing, "--json"), ("requeue", missing)):
            p = self.cli(*args)
            self.assertEqual(p.returncode, 4, "%s: %s" % (args, p.stderr))
            self.assertIn(missing, p.stderr)
        for bad in ("xyz", missing.upper(), missing + "0", missing[:-1], "", "../" * 20,
                    b"\xff" * 32):
            for cmd in ("show", "requeue"):
                p = self.cli(cmd, bad)
                self.assertEqual(p.returncode, 4, "%s %r: %s" % (cmd, bad, p.stderr))
                self.assertIn("not an operation id", p.stderr)

    def test_bad_arguments_exit_2(self):
        url = "http://127.0.0.1:9/orders"
        enq = ("enqueue", "--method", "POST", "--url", url)
        cases = [
            ((), "no command"),
            (("frobnicate",), "unknown command"),
            (("--frob", "stats"), "--frob"),
            (enq + ("--frob",), "--frob"),
            (enq + ("--count", "0"), "--count"),
            (enq + ("--count", "abc"), "--count"),
            (enq + ("--count", "-1"), "--count"),
            (enq + ("--count", " 5"), "--count"),
            (enq + ("--count", "99999999999999999999999999"), "--count"),
            (enq + ("--count",), "needs a value"),
            (("enqueue", "--method", "GET", "--url", url), None),
            (("enqueue", "--method", "POST", "--url", "ftp://x"), None),
            (("enqueue", "--method", "POST"), "--url"),
            (enq + ("--header", "NoColon"), None),
            (enq + ("--header", "X-A: 1\r\nX-B: 2"), None),
            (enq + ("--header", "Idempotency-Key: mine"), None),
            (enq + ("--data", "{}", "--data-stdin"), "one of"),
            (("enqueue", "--method", "POST", "--url", "http://127.0.0.1/" + "a" * 10000),
             None),
            (("run", "--max-seconds", "x"), "--max-seconds"),
            (("run", "--max-seconds", "1e3"), "--max-seconds"),
            (("run", "--max-attempts", "0"), "--max-attempts"),
            (("run", "--factor", "0.5"), "--factor"),
            (("run", "--factor", "nan"), "--factor"),
            (("run", "--batch", "0"), "--batch"),
            (("run", "--parallel", "4294967296"), "--parallel"),
            (("run", "--timeout-ms"), "needs a value"),
            (("list", "--status", "lost"), "--status"),
            (("list", "extra"), "extra"),
            (("show",), "id"),
            (("stats", "--bogus"), "--bogus"),
        ]
        for args, says in cases:
            with self.subTest(args=args):
                self.assertUsageError(*args, says=says)
        self.assertFalse(os.path.exists(self.dir), "a refused command creates nothing")

    def test_no_directory(self):
        p = self.cli("stats", dir_=False)
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertIn("CNERIUM_OUTBOX_DIR", p.stderr)
        env = dict(self.env, CNERIUM_OUTBOX_DIR=self.dir)
        (op_id,) = self.ok("enqueue", "--method", "DELETE", "--url", "http://127.0.0.1:9/a/1",
                           dir_=False, env=env).split()
        self.assertEqual(self.show(op_id)["method"], "DELETE")
        self.assertEqual(self.show(op_id)["headers"], [], "no payload, no Content-Type")
        # Reading commands do not create an outbox where there is none.
        p = self.cli("--dir", os.path.join(self.tmp, "nothing-here"), "list", dir_=False)
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "nothing-here")))

    def test_help(self):
        for args in (("--help",), ("-h",), ("run", "--help"), ("enqueue", "-h"),
                     ("show", "--help")):
            p = self.cli(*args, dir_=False)
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertIn("usage: cnerium-outbox", p.stdout)
            for code in range(7):
                self.assertRegex(p.stdout, r"\n  %d  " % code, "exit code %d documented" % code)

    def test_enqueue_forms_and_odd_bytes(self):
        path = os.path.join(self.tmp, "payload.bin")
        with open(path, "wb") as f:
            f.write(b"\x00\x01binary\xff")
        (a,) = self.enqueue("http://127.0.0.1:9/a", None, "--data-file", path,
                            "--header", "content-type: application/octet-stream")
        op = self.show(a)
        self.assertNotIn("payload", op)
        self.assertEqual(op["payload_base64"], "AAFiaW5hcnn/")
        self.assertEqual(op["headers"], ["content-type: application/octet-stream"])
        (b,) = self.ok("enqueue", "--method", "PUT", "--url=http://127.0.0.1:9/b",
                       "--data-stdin", input_=b'{"x":1}').split()
        op = self.show(b)
        self.assertEqual((op["method"], op["payload"]), ("PUT", '{"x":1}'))
        self.assertEqual(op["headers"], ["Content-Type: application/json"])
        ids = self.enqueue("http://127.0.0.1:9/c", "{}", "--count", "5", "--kind", "k k")
        self.assertEqual(len(set(ids)), 5)
        # Bad UTF-8 in an argument: refused or stored, never a crash nor broken JSON.
        for args in ((b"--kind", b"\xff\xfe-kind"),
                     (b"--header", b"X-Odd: \xc3\x28"),):
            p = self.cli(b"enqueue", b"--method", b"POST", b"--url",
                         b"http://127.0.0.1:9/u", *args)
            self.assertIn(p.returncode, (0, 2), p.stderr)
        listed = self.ops()
        self.assertGreaterEqual(len(listed), 7)
        for op in listed:
            self.show(op["id"])
        text = self.ok("list")
        self.assertEqual(len(text.splitlines()), len(listed))
        for line in text.splitlines():
            self.assertEqual(len(line.split(" ")), 7, line)
        self.assertIn(" k\\x20k ", text, "a field's spaces are escaped")
        self.assertEqual(len(self.ok("list", "--status", "pending").splitlines()),
                         len(listed))
        self.assertEqual(self.ops("done"), [])

    def test_second_worker_exits_6_and_sigterm_stops_cleanly(self):
        first = self.background_run("--max-seconds", "60")
        first.wait_stderr(r"worker started", 30.0)
        p = self.cli("run", "--until-empty", "--max-seconds", "5")
        self.assertEqual(p.returncode, 6, p.stderr)
        self.assertIn("another worker runs on %s (pid %d)" % (self.dir, first.proc.pid),
                      p.stderr)
        # The first goes on: it still picks up what another process enqueues.
        srv = self.fake(lambda n, req: (200, [], b"ok"))
        (op_id,) = self.enqueue(srv.url + "/later", "{}")
        wait_until(lambda: self.show(op_id)["status"] == "done", 30.0,
                   what="the running worker sending an operation enqueued meanwhile")
        os.kill(first.proc.pid, signal.SIGTERM)
        self.assertEqual(first.wait(30.0), 0, first.stderr_text())
        self.assertEqual(self.final_line(first.stderr_text())[:3], (1, 1, 0))
        # The lock went with it.
        self.assertEqual(self.cli("run", "--until-empty", "--max-seconds", "5").returncode, 0)


class LibraryExampleTest(OutboxTestCase):
    """examples/outbox_sync.c, the README's library version of seed 003, end to end."""

    def test_saved_offline_then_completed(self):
        port = free_port()
        url = "http://127.0.0.1:%d/orders" % port
        argv = [h.binary("CNERIUM_OUTBOX_EXAMPLE"), "--dir", self.dir, "--url", url,
                "--max-seconds", "60"]
        ex = Background(argv, self.env)
        self.addCleanup(ex.close)
        # Saved before any network call; the first tries fail to connect and cost no
        # attempt.
        ex.wait_stdout(r"pending, attempt 0, next try in -?\d+ ms, last error: .*[Cc]onnect",
                       30.0)
        op_id = re.search(r"operation saved: ([0-9a-f]{32})", ex.stdout_text()).group(1)
        srv = self.example(port)
        self.assertEqual(ex.wait(60.0), 0, ex.stdout_text() + ex.stderr_text())
        out = ex.stdout_text()
        self.assertIn("done, attempt 1, HTTP 201", out)
        self.assertIn('"order_id":"ord_%s"' % op_id, out)
        self.assertIn("operation completed", out)
        self.assertEqual(durable_counts(srv).get("executed"), 1)
        # A second run saves a new order and sends it; the first is not sent again.
        p = subprocess.run(argv, capture_output=True, timeout=90, env=self.env)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertEqual(durable_counts(srv).get("executed"), 2)
        self.assertEqual(durable_counts(srv).get("replayed", 0), 0)


if __name__ == "__main__":
    h.main()
