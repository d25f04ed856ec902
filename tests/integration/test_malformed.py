#!/usr/bin/env python3
"""Bad input over raw sockets: every malformed request gets a 4xx or a closed connection,
never a crash; after each one the server still answers GET /health and its process is
alive. Then a seeded fuzz loop of random and mutated requests."""

import json
import os
import random
import select
import socket
import struct
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import cnharness as h  # noqa: E402

FUZZ_CASES = 300
FUZZ_SEED = 20240611
FUZZ_THREADS = 8
FUZZ_READ_S = 0.5

VALID = (b"POST /orders?x=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nIdempotency-Key: fuzz-key\r\n"
         b"Content-Type: application/json\r\nContent-Length: 33\r\n\r\n"
         b'{"product_id":"p1","quantity":2}\n')


# How a case may be answered. REJECT: a complete but malformed request: a 4xx or a closed
# connection (RFC 9112 MUSTs among them). LENIENT: what a tolerant HTTP parser may accept:
# anything but a 5xx (505 for an unknown version is right too). PARTIAL: not yet a whole
# request, so the server may also keep waiting for the rest (it is then bounded by its
# connection timeout, not by us): a 4xx, a close, or silence for PARTIAL_WAIT_S.
REJECT = "reject"
LENIENT = "lenient"
PARTIAL = "partial"
PARTIAL_WAIT_S = 2.0


def malformed_cases():
    big = b"X-Big: " + b"a" * (64 * 1024) + b"\r\n"
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(2000))
    return [
        ("garbage request line", REJECT, b"THIS IS NOT HTTP\r\n\r\n"),
        ("request line without version", REJECT, b"GET /health\r\n\r\n"),
        ("unknown HTTP version", LENIENT, b"GET /health HTTP/9.9\r\nHost: x\r\n\r\n"),
        ("header without colon", REJECT,
         b"GET /health HTTP/1.1\r\nHost: x\r\nNoColonHere\r\n\r\n"),
        ("header name with space", REJECT,
         b"GET /health HTTP/1.1\r\nHost: x\r\nBad Name: v\r\n\r\n"),
        ("huge header (64 KiB)", REJECT,
         b"GET /health HTTP/1.1\r\nHost: x\r\n" + big + b"\r\n"),
        ("huge request target", REJECT,
         b"GET /" + b"p" * (70 * 1024) + b" HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("2000 headers", REJECT, b"GET /health HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n"),
        ("non-numeric Content-Length", REJECT,
         b"POST /orders HTTP/1.1\r\nHost: x\r\nIdempotency-Key: cl1\r\n"
         b"Content-Length: abc\r\n\r\n{}"),
        ("negative Content-Length", REJECT,
         b"POST /orders HTTP/1.1\r\nHost: x\r\nIdempotency-Key: cl2\r\n"
         b"Content-Length: -5\r\n\r\n{}"),
        ("overflowing Content-Length", REJECT,
         b"POST /orders HTTP/1.1\r\nHost: x\r\nIdempotency-Key: cl3\r\n"
         b"Content-Length: 99999999999999999999999999\r\n\r\n{}"),
        # RFC 9112 6.3: differing Content-Length values are an unrecoverable error (400).
        ("conflicting Content-Length", REJECT,
         b"POST /orders HTTP/1.1\r\nHost: x\r\nIdempotency-Key: cl4\r\n"
         b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}"),
        ("bad chunk size", REJECT,
         b"POST /orders HTTP/1.1\r\nHost: x\r\nIdempotency-Key: ch1\r\n"
         b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"),
        # Blank lines before a request line may be ignored (RFC 9112 2.2).
        ("lone CRLFs before a request", LENIENT,
         b"\r\n" * 200 + b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("a lone CRLF", PARTIAL, b"\r\n"),
        ("a lone LF", PARTIAL, b"\n"),
        ("binary junk", REJECT, bytes((i * 37 + 11) % 256 for i in range(4096))),
        ("NUL and 0xff junk", PARTIAL, b"\x00\xff garbage \r\n\r\n"),
        ("NUL in the path", REJECT, b"GET /hea\x00lth HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("NUL in a durable path", REJECT,
         b"POST /ord\x00ers HTTP/1.1\r\nHost: x\r\nIdempotency-Key: nul\r\n"
         b"Content-Length: 2\r\n\r\n{}"),
        ("NUL in a header value", REJECT,
         b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n"),
        ("CR without LF", PARTIAL, b"GET /health HTTP/1.1\rHost: x\r\r"),
        ("only a method", PARTIAL, b"GET"),
        ("absolute-form garbage", REJECT, b"GET http://[::1 HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("target without slash", REJECT, b"GET health HTTP/1.1\r\nHost: x\r\n\r\n"),
    ]


# Malformed requests that reach the layer (libmicrohttpd passes them to the access
# handler) are answered, not just dropped: (what, request, expected status).
ANSWERED = [
    ("header name with space", b"GET /health HTTP/1.1\r\nHost: x\r\nBad Name: v\r\n\r\n", 400),
    ("space before the colon", b"GET /health HTTP/1.1\r\nHost: x\r\nBad : v\r\n\r\n", 400),
    ("separator in a header name", b"GET /health HTTP/1.1\r\nHost: x\r\nA(b): v\r\n\r\n", 400),
    ("NUL in a header value", b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n", 400),
    ("NUL at the end of the last header value",
     b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: ab\x00\r\n\r\n", 400),
    ("control byte in a header value",
     b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\r\n", 400),
    ("DEL in a header value", b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: a\x7fb\r\n\r\n", 400),
    ("target without slash", b"GET health HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("absolute-form garbage", b"GET http://[::1 HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("absolute-form with userinfo", b"GET http://u@x/health HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("asterisk-form", b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("method that is not a token", b"G(T /health HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("over-long method", b"A" * 200 + b" /health HTTP/1.1\r\nHost: x\r\n\r\n", 501),
    # RFC 9112 3.2.2: a server MUST accept the absolute-form.
    ("absolute-form target", b"GET http://x/health HTTP/1.1\r\nHost: x\r\n\r\n", 200),
    ("absolute-form https target", b"GET HTTPS://x:1/health?a=1 HTTP/1.1\r\nHost: x\r\n\r\n",
     200),
]


class MalformedInputTest(h.ServerTestCase):
    def setUp(self):
        super().setUp()
        self.srv = self.start_server(h.contract_server(), "--workers", "2",
                                     "--max-body", "4096")
        # These tests leave aborted connections behind on purpose; a graceful stop is
        # tested once, in test_sigterm_after_aborted_clients, so the rest end with a kill.
        self.addCleanup(self.srv.kill)

    def assert_still_serving(self, after):
        self.assertTrue(self.srv.alive(), "the server died after: %s" % after)
        self.assertEqual(self.srv.health(), 200, "GET /health after: %s" % after)

    def assert_rejected(self, what, resp, how=REJECT):
        if resp is None:
            return  # closed without an answer: fine
        if how == LENIENT:
            self.assertTrue(resp.status < 500 or resp.status == 505,
                            "%s: got %d: %r" % (what, resp.status, resp.raw[:300]))
            return
        if resp is h.WAITING:
            self.assertEqual(how, PARTIAL, "%s: no answer and no close within the time limit "
                                           "after a complete request" % what)
            return
        self.assertTrue(400 <= resp.status < 500,
                        "%s: expected a 4xx or a closed connection, got %d: %r"
                        % (what, resp.status, resp.raw[:300]))

    def test_malformed_requests(self):
        before = self.srv.count("orders.create")
        for what, how, data in malformed_cases():
            with self.subTest(what):
                resp = h.raw_exchange(self.srv.port, data,
                                      timeout=PARTIAL_WAIT_S if how == PARTIAL else 10.0,
                                      allow_wait=True)
                self.assert_rejected(what, resp, how)
                self.assert_still_serving(what)
        self.assertEqual(self.srv.count("orders.create"), before,
                         "no malformed request may reach a durable handler")

    def test_malformed_requests_are_answered(self):
        """Refused with a status (RFC 9112: 400, or 501 for a method too long to be one
        we implement), not a silently closed connection."""
        before = self.srv.count("orders.create")
        for what, data, status in ANSWERED:
            with self.subTest(what):
                resp = h.raw_exchange(self.srv.port, data, timeout=10.0)
                self.assertIsNotNone(resp, "%s: closed without an answer" % what)
                self.assertEqual(resp.status, status, "%s: %r" % (what, resp.raw[:300]))
                if status >= 400:
                    self.assertEqual(h.header(resp.headers, "Content-Type"),
                                     "application/problem+json")
                self.assert_still_serving(what)
        self.assertEqual(self.srv.count("orders.create"), before)

    def test_nul_in_idempotency_key_is_400(self):
        """libmicrohttpd cuts a header value at a NUL; "a\\0b" used to run as key "a"."""
        before = self.srv.count("orders.create")
        for value in (b"nulkey\x00b", b"\"nulkey\x00b\"", b"nulkey\x00"):
            with self.subTest(value=value):
                resp = h.raw_exchange(
                    self.srv.port,
                    b"POST /orders HTTP/1.1\r\nHost: x\r\nIdempotency-Key: " + value +
                    b"\r\nContent-Length: 2\r\n\r\n{}", timeout=10.0)
                self.assertIsNotNone(resp, "closed without an answer")
                self.assertEqual(resp.status, 400, resp.raw[:300])
        self.assertEqual(self.srv.count("orders.create"), before)
        # The key the server used to take ("nulkey") was never claimed.
        st, hs, _ = self.srv.post("/orders", b"{}", key="nulkey")
        self.assertEqual(st, 201)
        self.assertIsNone(h.header(hs, "Idempotent-Replayed"))
        self.assertEqual(self.srv.count("orders.create"), before + 1)

    def test_chunked_body_past_the_limit_stops_being_read(self):
        """A chunked body past --max-body gets 413 and the connection is closed while the
        client is still sending: the server does not read the rest."""
        before = self.srv.count("orders.create")
        s = h.raw_connect(self.srv.port)
        self.addCleanup(s.close)
        s.sendall(b"POST /orders HTTP/1.1\r\nHost: x\r\nIdempotency-Key: chunk-big\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b"1000\r\n" + b"c" * 4096 + b"\r\n"
        resp = None
        # Never the last chunk: only the limit can end this request. Bounded: 4 MiB.
        for _ in range(1024):
            try:
                s.sendall(chunk)
            except OSError:
                break  # reset by the server: it stopped reading
            r, _, _ = select.select([s], [], [], 0)
            if r:
                break
        try:
            resp = h.read_response(s, 10.0)
        except socket.timeout:
            self.fail("no 413 and no close while a chunked body went past the limit")
        if resp is not None:
            self.assertEqual(resp.status, 413, resp.raw[:300])
            self.assertEqual(h.header(resp.headers, "Connection"), "close")
        # The connection is closed: more bytes end in EOF or a reset.
        s.settimeout(10.0)
        try:
            s.sendall(chunk)
            self.assertEqual(s.recv(65536), b"")
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.assertEqual(self.srv.count("orders.create"), before)
        self.assert_still_serving("chunked body past the limit")

    def test_truncated_body_then_close(self):
        before = self.srv.count("orders.create")
        for i in range(5):
            s = h.raw_connect(self.srv.port)
            try:
                s.sendall(b"POST /orders HTTP/1.1\r\nHost: x\r\nIdempotency-Key: trunc-%d\r\n"
                          b"Content-Length: 100\r\n\r\n{\"product_id\"" % i)
            finally:
                s.close()
            self.assert_still_serving("truncated body %d" % i)
        # Truncated chunked body, and a close in the middle of the headers.
        for data in (b"POST /orders HTTP/1.1\r\nHost: x\r\nIdempotency-Key: trunc-c\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n10\r\nabc",
                     b"POST /orders HTTP/1.1\r\nHost: x\r\nIdempo"):
            s = h.raw_connect(self.srv.port)
            try:
                s.sendall(data)
            finally:
                s.close()
            self.assert_still_serving("truncated request %r" % data[-20:])
        # A client that half-closes with a body still owed gets no handler run either.
        resp = h.raw_exchange(self.srv.port,
                              b"POST /orders HTTP/1.1\r\nHost: x\r\nIdempotency-Key: trunc-h\r\n"
                              b"Content-Length: 100\r\n\r\n{}", timeout=PARTIAL_WAIT_S,
                              allow_wait=True)
        self.assert_rejected("half-closed short body", resp, PARTIAL)
        # The truncated keys were never claimed: each now executes normally.
        self.assertEqual(self.srv.count("orders.create"), before)
        for i in range(5):
            st = self.srv.post("/orders", b"{}", key="trunc-%d" % i)[0]
            self.assertEqual(st, 201, "key trunc-%d must still be free" % i)
        self.assertEqual(self.srv.count("orders.create"), before + 5)

    def test_reset_mid_request(self):
        """An abortive close (RST) while the server waits for the body: no handler runs
        and the keys stay free."""
        before = self.srv.count("slow.run")
        for i in range(5):
            s = h.raw_connect(self.srv.port)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.sendall(b"POST /slow?ms=0 HTTP/1.1\r\nHost: x\r\nIdempotency-Key: rst-%d\r\n"
                      b"Content-Length: 50\r\n\r\n{" % i)
            s.close()
        self.assert_still_serving("connection resets")
        self.assertEqual(self.srv.count("slow.run"), before)
        # Each key now executes once, with a fresh response, and then replays.
        for i in range(5):
            key = "rst-%d" % i
            st, hs, body = self.srv.post("/slow?ms=0", b"{}", key=key)
            self.assertEqual(st, 201, body)
            self.assertIsNone(h.header(hs, "Idempotent-Replayed"),
                              "key %s was not free after the reset" % key)
            self.assertEqual(json.loads(body)["n"], before + i + 1,
                             "key %s: not a fresh execution" % key)
            again = self.srv.post("/slow?ms=0", b"{}", key=key)
            self.assertEqual((again[0], again[2]), (st, body))
            self.assertEqual(h.header(again[1], "Idempotent-Replayed"), "true")
        self.assertEqual(self.srv.count("slow.run"), before + 5)

    def test_pipelined_requests(self):
        """HTTP/1.1 pipelining: requests sent back to back on one connection are all
        answered, in order (bodyless ones included)."""
        get = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
        post = (b"POST /orders HTTP/1.1\r\nHost: x\r\nIdempotency-Key: pipe-1\r\n"
                b"Content-Length: 2\r\n\r\n{}")
        s = h.raw_connect(self.srv.port)
        try:
            s.sendall(get + post + post + get + get)
            statuses, replayed, carry = [], [], bytearray()
            for _ in range(5):
                try:
                    r = h.read_response(s, 5.0, carry)
                except socket.timeout:
                    self.fail("pipelined response %d of 5 did not come within 5 s (got %r)"
                              % (len(statuses) + 1, statuses))
                self.assertIsNotNone(r, "closed after %d pipelined responses" % len(statuses))
                statuses.append(r.status)
                replayed.append(h.header(r.headers, "Idempotent-Replayed"))
            self.assertEqual(statuses, [200, 201, 201, 200, 200])
            self.assertEqual(replayed, [None, None, "true", None, None])
        finally:
            s.close()
        self.assert_still_serving("pipelined requests")

    def test_slow_client_does_not_block_others(self):
        """A client that sends half a request and stalls must not stop others."""
        stalled = []
        try:
            for i in range(8):
                s = h.raw_connect(self.srv.port)
                s.sendall(b"POST /orders HTTP/1.1\r\nHost: x\r\nIdempotency-Key: stall-%d\r\n"
                          % i)
                stalled.append(s)
            for _ in range(5):
                self.assertEqual(self.srv.health(timeout=5.0), 200)
        finally:
            for s in stalled:
                s.close()
        self.assert_still_serving("stalled clients")

    def test_sigterm_after_aborted_clients(self):
        """Clients that vanished mid-request are not requests in progress: SIGTERM still
        stops the server promptly with exit code 0."""
        for i in range(5):
            s = h.raw_connect(self.srv.port)
            try:
                s.sendall(b"POST /orders HTTP/1.1\r\nHost: x\r\nIdempotency-Key: gone-%d\r\n"
                          b"Content-Length: 100\r\n\r\n{" % i)
            finally:
                s.close()
        self.assert_still_serving("aborted clients")
        # The drain waits at most 10 s for requests in progress, then logs how many it
        # gave up on: the aborted clients must not be among them (the log says so, not
        # the clock).
        rc = self.srv.stop(timeout=60.0)
        self.assertEqual(rc, 0, "SIGTERM with aborted client connections: no clean exit")
        self.assertNotIn("still in progress", self.srv.stderr_text(),
                         "the drain waited for clients that were gone")

    def test_fuzz(self):
        rng = random.Random(FUZZ_SEED)
        tokens = [b"GET", b"POST", b"PUT", b" ", b"/", b"/orders", b"/health", b"?", b"=",
                  b"&", b"%", b"%zz", b"HTTP/1.1", b"HTTP/1.0", b"\r\n", b"\r\n\r\n", b":",
                  b"Content-Length", b"Transfer-Encoding: chunked", b"Idempotency-Key",
                  b'"', b"\x00", b"\xff", b"0", b"1", b"99999999999", b"-1", b"\t"]
        cases = []
        for i in range(FUZZ_CASES):
            kind = i % 3
            if kind == 0:  # random bytes
                cases.append(bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 600))))
            elif kind == 1:  # a valid request with random mutations
                data = bytearray(VALID)
                for _ in range(rng.randint(1, 8)):
                    op = rng.randint(0, 2)
                    pos = rng.randrange(len(data))
                    if op == 0:
                        data[pos] = rng.getrandbits(8)
                    elif op == 1:
                        del data[pos:pos + rng.randint(1, 10)]
                    else:
                        data[pos:pos] = bytes(rng.getrandbits(8)
                                              for _ in range(rng.randint(1, 10)))
                cases.append(bytes(data))
            else:  # random HTTP-looking tokens
                cases.append(b"".join(rng.choice(tokens) for _ in range(rng.randint(1, 40))))

        problems = []
        waited = [0]
        lock = threading.Lock()
        next_case = [0]

        def worker():
            while True:
                with lock:
                    i = next_case[0]
                    next_case[0] += 1
                if i >= len(cases):
                    return
                try:
                    resp = h.raw_exchange(self.srv.port, cases[i], timeout=FUZZ_READ_S,
                                          allow_wait=True)
                except OSError as e:
                    with lock:
                        problems.append("case %d: %r" % (i, e))
                    continue
                if resp is h.WAITING:
                    # Still waiting for more of a request; our close ends it.
                    with lock:
                        waited[0] += 1
                    continue
                if resp is not None and resp.status >= 500:
                    with lock:
                        problems.append("case %d: %d for %r" % (i, resp.status, cases[i][:80]))

        started = time.monotonic()
        threads = [threading.Thread(target=worker, daemon=True) for _ in range(FUZZ_THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(max(0.0, started + 120.0 - time.monotonic()))
        self.assertFalse(any(t.is_alive() for t in threads), "fuzz loop did not finish")
        self.assertEqual(problems, [])
        self.assert_still_serving("%d fuzz cases (%d left waiting for more input)"
                                  % (len(cases), waited[0]))


if __name__ == "__main__":
    h.main()
