#!/usr/bin/env python3
"""cnerium-gateway in front of a real upstream (a Python http.server started by the test,
counting what it executes): the durable contract on configured routes (key required,
one execution, byte-identical replay with Idempotent-Replayed, 409, Location and
Content-Type kept), duplicates storming two workers run once, what is not stored (the
upstream's 5xx, no upstream: 502, a slow upstream: 504) frees the key, a 4xx is stored,
everything else passed through untouched (method, target, body, end-to-end headers both
ways, X-Forwarded-*, hop-by-hop headers dropped, connections to the upstream kept
alive), an upstream slower than the lease taken over by a waiting duplicate, the
gateway SIGKILLed mid-request and restarted, the same in front of a Node Express
server, bad flags. Passthrough goes in pieces both ways: an answer reaches the client
while the upstream is still writing it, a body reaches the upstream while the client is
still sending it, bodies far over --max-body and --upstream-max-body pass, a client that
stops reading holds the upstream back, a client that leaves stops the upstream's
transfer.
"""
import hashlib
import http.client
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import cnharness as h  # noqa: E402
from cnharness import header, parse_json, wait_until  # noqa: E402


def gateway_path():
    return h.binary("CNERIUM_GATEWAY")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Upstream:
    """A threaded HTTP/1.1 server counting executions per (method, path)."""

    def __init__(self, port=0):
        self.counts = {}
        self.peers = set()  # client ports: one per connection the gateway opened
        self.lock = threading.Lock()
        self.last_headers = None
        up = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def handle_any(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                path = self.path.split("?")[0]
                with up.lock:
                    k = (self.command, path)
                    up.counts[k] = up.counts.get(k, 0) + 1
                    c = up.counts[k]
                    up.peers.add(self.client_address[1])
                    up.last_headers = list(self.headers.items())
                status, ctype, extra = 200, "application/json", []
                if path.startswith("/slow"):
                    time.sleep(int(self.path.split("ms=")[1]) / 1000.0)
                    status = 201
                elif path.startswith("/fail"):
                    status = 503
                elif path.startswith("/teapot"):
                    status = 418
                elif self.command == "POST":
                    status = 201
                    extra.append(("Location", "/orders/%d" % c))
                    extra.append(("ETag", '"e%d"' % c))
                if self.headers.get("X-Want-Hop"):
                    # a header meant for the gateway only: named in Connection
                    extra += [("Connection", "X-Hop"), ("X-Hop", "1")]
                out = json.dumps({"n": c, "method": self.command, "target": self.path,
                                  "body": body.decode("latin-1")}).encode()
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("X-Upstream", "yes")
                for name, value in extra:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(out)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = handle_any

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), H)
        self.server.daemon_threads = True
        # A client that goes away mid-answer (the gateway killed, a HEAD) is not news.
        self.server.handle_error = lambda request, address: None
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def count(self, method, path):
        with self.lock:
            return self.counts.get((method, path), 0)

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


ROUTES = ("--route", "POST /api/orders orders.create",
          "--route", "PUT /api/items/{id} items.put",
          "--route", "POST /slow slow.run",
          "--route", "POST /fail fail.run",
          "--route", "POST /teapot teapot.run")


def post_in_thread(srv, path, key, box, name, timeout=40):
    """POSTs path with key from a thread of its own; its answer (or exception) goes to
    box[name]. Returns the started thread."""
    def call():
        box[name] = srv.attempt("POST", path, b"{}", {"Idempotency-Key": key}, timeout)

    t = threading.Thread(target=call, daemon=True)
    t.start()
    return t


class GatewayCase(h.ServerTestCase):
    def upstream(self, port=0):
        up = Upstream(port)
        self.addCleanup(up.stop)
        return up

    def gateway(self, upstream_port, *args, data_dir=None):
        return self.start_server(gateway_path(), "--upstream",
                                 "http://127.0.0.1:%d" % upstream_port, *ROUTES,
                                 "--workers", "2", *args, data_dir=data_dir)


class ContractTest(GatewayCase):
    def test_durable_route_through_the_gateway(self):
        up = self.upstream()
        gw = self.gateway(up.port)
        r = gw.post("/api/orders", b'{"a":1}')
        self.assertProblem(r, 400, h.KEY_MISSING, h.MISSING_KEY_ERROR)
        self.assertEqual(up.count("POST", "/api/orders"), 0)
        k = "k-" + uuid.uuid4().hex
        first = gw.post("/api/orders", b'{"a":1}', key=k, headers={"Content-Type": "application/json"})
        self.assertEqual(first[0], 201, first[2])
        self.assertEqual(header(first[1], "Location"), "/orders/1")
        self.assertEqual(header(first[1], "Content-Type"), "application/json")
        self.assertEqual(header(first[1], "X-Upstream"), "yes")
        self.assertEqual(parse_json(first[2])["body"], '{"a":1}')
        again = gw.post("/api/orders", b'{"a":1}', key=k)
        self.assertReplayOf(first, again)
        self.assertProblem(gw.post("/api/orders", b'{"a":2}', key=k), 409,
                           h.PROBLEM + "idempotency-key-reused")
        self.assertEqual(up.count("POST", "/api/orders"), 1)
        # A durable PUT with a path parameter: the upstream sees the path, once.
        put = gw.request("PUT", "/api/items/7?x=1", b"{}", {"Idempotency-Key": k})
        self.assertEqual(put[0], 200, put[2])
        self.assertEqual(parse_json(put[2])["target"], "/api/items/7?x=1")
        self.assertReplayOf(put, gw.request("PUT", "/api/items/7?x=1", b"{}",
                                            {"Idempotency-Key": k}))
        self.assertEqual(up.count("PUT", "/api/items/7"), 1)

    def test_configured_upstream_headers_are_stored(self):
        up = self.upstream()
        gw = self.gateway(up.port, "--store-header", "etag")
        k = "h-" + uuid.uuid4().hex
        first = gw.post("/api/orders", b"{}", key=k)
        self.assertEqual(first[0], 201, first[2])
        self.assertEqual(header(first[1], "ETag"), '"e1"')
        self.assertEqual(header(first[1], "X-Upstream"), "yes")
        again = gw.post("/api/orders", b"{}", key=k)
        self.assertReplayOf(first, again)
        self.assertEqual(header(again[1], "ETag"), '"e1"')      # stored
        self.assertIsNone(header(again[1], "X-Upstream"))        # first answer only
        self.assertEqual(up.count("POST", "/api/orders"), 1)

    def test_storm_over_two_workers_runs_once(self):
        up = self.upstream()
        gw = self.gateway(up.port, "--threads", "2")
        for i in range(3):
            k = "storm-%d-%s" % (i, uuid.uuid4().hex)
            results = h.run_together(gw, [("/slow?ms=200", b"{}", k)] * 16)
            for r in results:
                self.assertNotIsInstance(r, Exception)
                self.assertEqual(r[0], 201, r[2])
            self.assertEqual(len({r[2] for r in results}), 1)
        self.assertEqual(up.count("POST", "/slow"), 3)

    def test_what_is_not_stored_frees_the_key(self):
        up = self.upstream()
        gw = self.gateway(up.port, "--upstream-timeout-ms", "500")
        k = "f-" + uuid.uuid4().hex
        for _ in range(2):  # the upstream's 503 is not stored: it runs again
            self.assertEqual(gw.post("/fail", b"{}", key=k)[0], 503)
        self.assertEqual(up.count("POST", "/fail"), 2)
        # A 4xx is the operation's answer: stored.
        t1 = gw.post("/teapot", b"{}", key=k)
        self.assertEqual(t1[0], 418)
        self.assertReplayOf(t1, gw.post("/teapot", b"{}", key=k))
        self.assertEqual(up.count("POST", "/teapot"), 1)
        # Past the upstream timeout: 504, not stored (the upstream may have run it: the
        # retry runs it again, as after any answer that was not stored).
        r = gw.post("/slow?ms=1500", b"{}", key=k)
        self.assertEqual(r[0], 504, r[2])
        self.assertIsNone(header(r[1], "Idempotent-Replayed"))

    def test_upstream_slower_than_the_lease_is_taken_over(self):
        # The lease bounds a claim: an upstream call that outlives it loses the key to a
        # waiting duplicate, which calls the upstream again; the late answer is dropped
        # (503), the duplicate's is stored. (Keep --upstream-timeout-ms below --lease-ms
        # to avoid this; the gateway warns at start.)
        up = self.upstream()
        gw = self.gateway(up.port, "--lease-ms", "1000", "--upstream-timeout-ms", "5000")
        wait_until(lambda: "not below --lease-ms" in gw.stderr_text(), 10.0,
                   what="the warning about the timeout and the lease")
        k = "lease-" + uuid.uuid4().hex
        box = {}
        a = post_in_thread(gw, "/slow?ms=1600", k, box, "a")
        wait_until(lambda: up.count("POST", "/slow") >= 1, 10.0, what="the first call")
        b = post_in_thread(gw, "/slow?ms=1600", k, box, "b")
        a.join(20)
        b.join(20)
        self.assertEqual(box["a"][0], 503, box["a"][2])
        self.assertIn("lease", parse_json(box["a"][2])["detail"])
        self.assertEqual(box["b"][0], 201, box["b"][2])
        self.assertEqual(parse_json(box["b"][2])["n"], 2)
        self.assertReplayOf(box["b"], gw.post("/slow?ms=1600", b"{}", key=k))
        self.assertEqual(up.count("POST", "/slow"), 2)

    def test_sigterm_with_an_upstream_call_in_flight(self):
        # A stop with an upstream call still running past the drain (10 s): the worker
        # leaves without stopping its HTTP server over a suspended connection (which
        # libmicrohttpd answers with an abort), and the whole server exits 0.
        up = self.upstream()
        gw = self.gateway(up.port, "--workers", "1", "--upstream-timeout-ms", "30000")
        k = "term-" + uuid.uuid4().hex
        box = {}
        t = post_in_thread(gw, "/slow?ms=15000", k, box, "r")
        wait_until(lambda: up.count("POST", "/slow") >= 1, 10.0, what="the upstream call")
        gw.proc.send_signal(signal.SIGTERM)
        self.assertEqual(gw.wait_exit(40.0), 0, gw.diagnostics())
        t.join(20)
        self.assertIsInstance(box.get("r"), Exception)
        self.assertNotIn("Fatal error", gw.stderr_text())
        self.assertIn("still waiting for an answer", gw.stderr_text())

    def test_upstream_down_then_up(self):
        port = free_port()
        gw = self.gateway(port)
        k = "d-" + uuid.uuid4().hex
        r = gw.post("/api/orders", b"{}", key=k)
        self.assertEqual(r[0], 502, r[2])
        self.assertIn("could not be reached", parse_json(r[2])["detail"])
        up = self.upstream(port)
        r = gw.post("/api/orders", b"{}", key=k)
        self.assertEqual(r[0], 201, r[2])
        self.assertEqual(up.count("POST", "/api/orders"), 1)

    def test_gateway_killed_mid_request_frees_nothing_forever(self):
        up = self.upstream()
        d = self.make_data_dir()
        gw = self.gateway(up.port, data_dir=d)
        k = "kill-" + uuid.uuid4().hex
        box = {}
        t = post_in_thread(gw, "/slow?ms=1000", k, box, "r", timeout=10)
        wait_until(lambda: up.count("POST", "/slow") >= 1, 10.0, what="the upstream call")
        gw.kill()
        t.join(10)
        self.assertIsInstance(box.get("r"), Exception)
        gw2 = self.restart_server(gateway_path(), d, "--upstream",
                                  "http://127.0.0.1:%d" % up.port, *ROUTES, "--workers", "1")
        # The key was never stored: its retry runs (the upstream ran the killed attempt
        # too: a gateway that dies mid-request is "not stored", like a handler that dies).
        r = gw2.post("/slow?ms=1000", b"{}", key=k)
        self.assertEqual(r[0], 201, r[2])
        self.assertReplayOf(r, gw2.post("/slow?ms=1000", b"{}", key=k))


class PassthroughTest(GatewayCase):
    def test_everything_else_is_passed_through(self):
        up = self.upstream()
        gw = self.gateway(up.port)
        for method, body in (("GET", None), ("POST", b"raw"), ("DELETE", None),
                             ("PATCH", b"{}"), ("PUT", b"x" * 100000)):
            with self.subTest(method=method):
                r = gw.request(method, "/other/path?q=%20a&b=2", body,
                               [("X-Custom", "v1"), ("X-Forwarded-For", "10.0.0.1"),
                                ("TE", "trailers"), ("Upgrade", "h2c")])
                self.assertIn(r[0], (200, 201), r[2])
                doc = parse_json(r[2])
                self.assertEqual((doc["method"], doc["target"]), (method, "/other/path?q=%20a&b=2"))
                self.assertEqual(doc["body"].encode("latin-1"), body or b"")
                self.assertEqual(header(r[1], "X-Upstream"), "yes")
                self.assertIsNone(header(r[1], "Idempotent-Replayed"))
                seen = dict((k.lower(), v) for k, v in up.last_headers)
                self.assertEqual(seen["x-custom"], "v1")
                self.assertEqual(seen["x-forwarded-for"], "10.0.0.1, 127.0.0.1")
                self.assertEqual(seen["x-forwarded-proto"], "http")
                self.assertIn("x-forwarded-host", seen)
                self.assertNotIn("te", seen)
                self.assertNotIn("upgrade", seen)
        # Headers named in Connection are hop-by-hop too, both ways.
        r = gw.request("GET", "/hop", None, [("Connection", "keep-alive, X-Secret"),
                                             ("X-Secret", "s"), ("X-Want-Hop", "1")])
        self.assertEqual(r[0], 200, r[2])
        seen = dict((k.lower(), v) for k, v in up.last_headers)
        self.assertNotIn("x-secret", seen)
        self.assertEqual(seen["x-want-hop"], "1")
        self.assertIsNone(header(r[1], "X-Hop"))
        self.assertEqual(header(r[1], "X-Upstream"), "yes")
        # Not durable: every call reaches the upstream (no key needed, none kept).
        before = up.count("POST", "/other/path")
        for _ in range(3):
            self.assertEqual(gw.post("/other/path", b"{}", key="same")[0], 201)
        self.assertEqual(up.count("POST", "/other/path"), before + 3)
        # HEAD passes through without a body.
        r = gw.request("HEAD", "/other/path")
        self.assertEqual(r[0], 200)
        self.assertEqual(r[2], b"")

    def test_connections_to_the_upstream_are_reused(self):
        up = self.upstream()
        gw = self.gateway(up.port, "--workers", "1")
        for _ in range(30):
            self.assertEqual(gw.get("/ping")[0], 200)
        self.assertLessEqual(len(up.peers), 3, "a connection per request")


class ExpressTest(GatewayCase):
    """The same contract in front of a Node Express server (tests/integration/
    express_upstream.js; node and Debian's node-express, installed by
    scripts/install-deps.sh)."""

    def setUp(self):
        super().setUp()
        env = dict(os.environ, NODE_PATH="/usr/share/nodejs")
        self.node = subprocess.Popen(["node", os.path.join(HERE, "express_upstream.js")],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=env, start_new_session=True)
        self.addCleanup(self.stop_node)
        line = h.read_line(self.node.stdout, 30.0, "the Express upstream's port")
        if not line.startswith("listening "):
            self.fail("the Express upstream did not start: %r %r"
                      % (line, self.node.stderr.read().decode()[-2000:]))
        self.port = int(line.split()[1])

    def stop_node(self):
        if self.node.poll() is None:
            os.killpg(self.node.pid, signal.SIGKILL)
        self.node.wait(10)
        self.node.stdout.close()
        self.node.stderr.close()

    def counts(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", "/count")
            return json.loads(conn.getresponse().read())
        finally:
            conn.close()

    def test_contract_storm_and_passthrough(self):
        gw = self.gateway(self.port, "--threads", "2")
        k = "x-" + uuid.uuid4().hex
        first = gw.post("/api/orders", b'{"a":1}', key=k, headers={"Content-Type": "application/json"})
        self.assertEqual(first[0], 201, first[2])
        self.assertEqual(header(first[1], "Location"), "/orders/1")
        self.assertEqual(header(first[1], "X-Upstream"), "express")
        self.assertReplayOf(first, gw.post("/api/orders", b'{"a":1}', key=k))
        self.assertProblem(gw.post("/api/orders", b'{"a":2}', key=k), 409,
                           h.PROBLEM + "idempotency-key-reused")
        for i in range(2):
            results = h.run_together(gw, [("/slow?ms=150", b"{}", "s%d-%s" % (i, k))] * 12)
            self.assertEqual({r[0] for r in results}, {201})
            self.assertEqual(len({r[2] for r in results}), 1)
        r = gw.request("PUT", "/things/1?z=1", b"payload", [("X-Forwarded-For", "10.1.1.1")])
        self.assertEqual(r[0], 200, r[2])
        doc = parse_json(r[2])
        self.assertEqual((doc["method"], doc["target"], doc["body"]), ("PUT", "/things/1?z=1", "payload"))
        self.assertEqual(doc["forwarded_for"], "10.1.1.1, 127.0.0.1")
        c = self.counts()
        self.assertEqual(c["POST /api/orders"], 1)
        self.assertEqual(c["POST /slow"], 2)


class StreamUpstream:
    """A threaded HTTP/1.1 server whose answers and body reads go at the test's pace:
    GET /stream writes one chunk, waits for `release`, writes another; POST /upload reads
    a chunked body and sets `first_part` after its first chunk; PUT /hash answers the
    sha256 and length of its body; GET /big?n=N writes N deterministic bytes with a
    Content-Length; GET /flood?n=N writes N bytes counting them in `written`; GET /endless
    writes until the connection breaks, then sets `broken`."""

    def __init__(self):
        self.release = threading.Event()
        self.first_part = threading.Event()
        self.broken = threading.Event()
        self.second_written = threading.Event()
        self.written = 0
        up = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def chunk(self, data):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()

            def head(self, status=200, length=None, ctype="application/octet-stream"):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                if length is None:
                    self.send_header("Transfer-Encoding", "chunked")
                else:
                    self.send_header("Content-Length", str(length))
                self.end_headers()
                self.wfile.flush()

            def read_chunked(self, on_chunk):
                body = b""
                while True:
                    size = int(self.rfile.readline().split(b";")[0], 16)
                    data = self.rfile.read(size)
                    self.rfile.readline()
                    if not size:
                        return body
                    body += data
                    on_chunk(body)

            def do_GET(self):
                path, _, query = self.path.partition("?")
                n = int(query.split("n=")[1]) if "n=" in query else 0
                if path == "/stream":
                    self.head(ctype="text/plain")
                    self.chunk(b"first\n")
                    up.release.wait(60)
                    up.second_written.set()
                    self.chunk(b"second\n")
                    self.wfile.write(b"0\r\n\r\n")
                elif path == "/big":
                    self.head(length=n)
                    self.wfile.write(pattern(n))
                elif path == "/flood":
                    self.head(length=n)
                    piece = b"f" * 65536
                    while up.written < n:
                        self.wfile.write(piece[:n - up.written])
                        up.written += min(len(piece), n - up.written)
                elif path == "/endless":
                    self.head()
                    deadline = time.monotonic() + 60
                    try:
                        while time.monotonic() < deadline:
                            self.chunk(b"e" * 16384)
                    except OSError:
                        up.broken.set()
                else:
                    self.head(404, 0)

            def do_POST(self):
                body = self.read_chunked(lambda got: up.first_part.set())
                out = body
                self.head(200, len(out), "text/plain")
                self.wfile.write(out)

            def do_PUT(self):
                n = int(self.headers.get("Content-Length") or 0)
                digest, left = hashlib.sha256(), n
                while left:
                    data = self.rfile.read(min(left, 1 << 20))
                    if not data:
                        break
                    digest.update(data)
                    left -= len(data)
                out = json.dumps({"sha256": digest.hexdigest(), "length": n - left}).encode()
                self.head(200, len(out), "application/json")
                self.wfile.write(out)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        self.server.handle_error = lambda request, address: None
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def pattern(n):
    """n bytes that are not all alike (a shifted byte would show)."""
    block = bytes(range(256)) * 256
    return (block * (n // len(block) + 1))[:n]


def wait_steady(read, what, settle_s=1.0, deadline_s=60.0):
    """Samples read() every 0.1 s until it has not changed for settle_s (bounded by
    deadline_s); returns the steady value."""
    deadline = time.monotonic() + deadline_s
    last, since = read(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = read()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= settle_s:
            return now
    raise AssertionError("%s never settled (last %r)" % (what, last))


class StreamingTest(GatewayCase):
    """Passthrough in pieces: nothing is held whole on the way through."""

    def setUp(self):
        super().setUp()
        self.up = StreamUpstream()
        self.addCleanup(self.up.stop)

    def connect(self, gw, rcvbuf=None):
        s = socket.socket()
        if rcvbuf:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.settimeout(30)
        s.connect(("127.0.0.1", gw.port))
        self.addCleanup(s.close)
        return s

    def test_answer_reaches_the_client_while_the_upstream_writes_it(self):
        gw = self.gateway(self.up.port)
        conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30)
        self.addCleanup(conn.close)
        conn.request("GET", "/stream")
        r = conn.getresponse()
        self.assertEqual(r.status, 200)
        self.assertEqual(r.getheader("Content-Type"), "text/plain")
        self.assertEqual(r.read(6), b"first\n")
        # The upstream has not written the rest yet: it waits for this.
        self.assertFalse(self.up.second_written.is_set())
        self.up.release.set()
        self.assertEqual(r.read(), b"second\n")
        # The connection is still good for the next request.
        conn.request("PUT", "/hash", b"abc")
        self.assertEqual(json.loads(conn.getresponse().read())["length"], 3)

    def test_body_reaches_the_upstream_while_the_client_sends_it(self):
        gw = self.gateway(self.up.port)
        s = self.connect(gw)
        s.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                  b"Content-Type: text/plain\r\n\r\n5\r\npart1\r\n")
        # The upstream sees the first part before the client has sent the second.
        self.assertTrue(self.up.first_part.wait(30), "the first part never reached the upstream")
        s.sendall(b"5\r\npart2\r\n0\r\n\r\n")
        f = s.makefile("rb")
        status = f.readline()
        self.assertIn(b" 200 ", status)
        length = None
        while True:
            line = f.readline()
            if line in (b"\r\n", b""):
                break
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        self.assertEqual(f.read(length), b"part1part2")

    def test_bodies_over_the_limits_pass_through(self):
        gw = self.gateway(self.up.port, "--max-body", "65536", "--upstream-max-body", "65536")
        body = pattern(3 << 20)
        r = gw.request("PUT", "/hash", body, timeout=60)
        self.assertEqual(r[0], 200, r[2])
        self.assertEqual(parse_json(r[2]), {"sha256": hashlib.sha256(body).hexdigest(),
                                            "length": len(body)})
        r = gw.request("GET", "/big?n=%d" % (5 << 20), timeout=60)
        self.assertEqual(r[0], 200)
        self.assertEqual(header(r[1], "Content-Length"), str(5 << 20))
        self.assertEqual(hashlib.sha256(r[2]).digest(), hashlib.sha256(pattern(5 << 20)).digest())
        # A durable route still reads its body whole, under --max-body.
        r = gw.post("/api/orders", b"x" * 100000, key="k-" + uuid.uuid4().hex)
        self.assertEqual(r[0], 413, r[2])

    def test_a_client_that_stops_reading_holds_the_upstream_back(self):
        n = 64 << 20
        gw = self.gateway(self.up.port, "--workers", "1")
        s = self.connect(gw, rcvbuf=65536)
        s.sendall(b"GET /flood?n=%d HTTP/1.1\r\nHost: x\r\n\r\n" % n)
        got = s.recv(65536)
        self.assertIn(b" 200 ", got.split(b"\r\n")[0])
        # Nothing is read now: the upstream must come to a stop well short of the end
        # (socket buffers on both sides, the gateway's small window, nothing more).
        held = wait_steady(lambda: self.up.written, "the upstream's progress")
        self.assertLess(held, n // 2, "the gateway buffered the answer")
        total = len(got) - got.index(b"\r\n\r\n") - 4
        while total < n:
            data = s.recv(1 << 20)
            self.assertTrue(data, "the answer broke off after %d bytes" % total)
            total += len(data)
        self.assertEqual(total, n)

    def test_a_client_that_leaves_stops_the_upstream_transfer(self):
        gw = self.gateway(self.up.port)
        s = self.connect(gw)
        s.sendall(b"GET /endless HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertIn(b" 200 ", s.recv(4096))
        s.close()
        self.assertTrue(self.up.broken.wait(30), "the upstream kept writing to nobody")
        self.assertEqual(gw.get("/big?n=10")[0], 200)


class FlagsTest(h.ServerTestCase):
    def test_bad_flags_fail_the_start(self):
        for args, text in ((["--route", "POST /x x"], "--upstream URL is required"),
                           (["--upstream", "ftp://x"], "http:// or https://"),
                           (["--upstream", "http://127.0.0.1:1/base"], "without a path"),
                           (["--upstream", "http://127.0.0.1:1", "--route", "GET /x op"],
                            "POST, PUT, PATCH or DELETE"),
                           (["--upstream", "http://127.0.0.1:1", "--route", "POST x op"],
                            "starts with '/'"),
                           (["--upstream", "http://127.0.0.1:1", "--route", "POST /x bad op"],
                            "METHOD PATH OPERATION"),
                           (["--upstream", "http://127.0.0.1:1", "--upstream-timeout-ms",
                             "0"], "--upstream-timeout-ms")):
            with self.subTest(args=args):
                srv = self.server(gateway_path(), *args)
                self.assertFalse(srv.try_start())
                self.assertEqual(srv.wait_exit(15.0), 2)
                self.assertIn(text, srv.stderr_text())


if __name__ == "__main__":
    h.main()
