#!/usr/bin/env python3
"""The durable route contract (shared/DESIGN.md), row by row, against the fixture server
(tests/fixtures/contract_server.c) over real loopback sockets."""

import hashlib
import os
import shutil
import struct
import sys
import tempfile
import threading
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import cnharness as h  # noqa: E402
from cnharness import header, header_values, parse_json  # noqa: E402

MAX_BODY = 1024
ORDER_BODY = b'{"product_id":"p1","quantity":2}'


def fingerprint(query, body):
    """The documented framing: SHA-256 over be64(len(query)) query be64(len(body)) body."""
    if isinstance(query, str):
        query = query.encode()
    return hashlib.sha256(struct.pack(">Q", len(query)) + query
                          + struct.pack(">Q", len(body)) + body).hexdigest()


class SharedServerCase(h.ServerTestCase):
    """One fixture server for the whole class (starting one per test costs time); every
    test uses keys of its own and compares handler counts before and after."""

    server_args = ()

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.data_dir = tempfile.mkdtemp(prefix="cnerium-integ-")
        cls.addClassCleanup(shutil.rmtree, cls.data_dir, True)
        cls.srv = h.Server(h.contract_server(), cls.server_args, data_dir=cls.data_dir)
        cls.addClassCleanup(cls.check_sanitizers)
        cls.addClassCleanup(cls.srv.close)
        cls.srv.start()

    @classmethod
    def check_sanitizers(cls):
        report = cls.srv.sanitizer_report()
        if report:
            raise AssertionError("sanitizer report from the shared server:\n" + report)

    def setUp(self):
        super().setUp()
        self._servers.append(self.srv)
        self.assertTrue(self.srv.alive(), "the shared server died in an earlier test")

    def key(self, label=""):
        return "%s-%s-%s" % (self._testMethodName, label, uuid.uuid4().hex[:12])

    def tearDown(self):
        # Every test leaves a server that still answers.
        self.assertTrue(self.srv.alive(), "server process died")
        super().tearDown()


class DurableContractTest(SharedServerCase):
    server_args = ("--max-body", str(MAX_BODY), "--workers", "2")

    # ---- basics ----

    def test_health(self):
        st, doc = self.srv.get_json("/health")
        self.assertEqual(st, 200)
        self.assertEqual(doc, {"ok": True})

    def test_missing_key_is_400_and_runs_nothing(self):
        before = self.srv.count("orders.create")
        resp = self.srv.post("/orders", ORDER_BODY)
        self.assertProblem(resp, 400, h.KEY_MISSING, h.MISSING_KEY_ERROR)
        self.assertEqual(self.srv.count("orders.create"), before)

    def test_new_key_runs_once_then_replays(self):
        k = self.key()
        before = self.srv.count("orders.create")
        first = self.srv.post("/orders", ORDER_BODY, key=k,
                              headers={"Content-Type": "application/json"})
        st, hs, body = first
        self.assertEqual(st, 201, body)
        self.assertEqual(header(hs, "Content-Type"), "application/json")
        self.assertNotReplayed(first)
        doc = parse_json(body)
        n = doc["n"]
        self.assertEqual(doc["key"], k)
        self.assertEqual(doc["query"], "")
        self.assertEqual(doc["body"], ORDER_BODY.decode())
        self.assertEqual(doc["fingerprint"], fingerprint("", ORDER_BODY))
        self.assertEqual(header(hs, "Location"), "/orders/%d" % n)
        self.assertEqual(header_values(hs, "Set-Cookie"), ["session=s%d" % n])
        self.assertEqual(header(hs, "Cache-Control"), "no-store",
                         "every response on a durable route carries no-store")
        self.assertEqual(self.srv.count("orders.create"), before + 1)

        for _ in range(3):
            again = self.srv.post("/orders", ORDER_BODY, key=k,
                                  headers={"Content-Type": "application/json"})
            self.assertReplayOf(first, again)
            self.assertEqual(header_values(again[1], "Set-Cookie"), [],
                             "Set-Cookie belongs to the first response only")
            self.assertEqual(header(again[1], "Cache-Control"), "no-store")
        self.assertEqual(self.srv.count("orders.create"), before + 1,
                         "a replay must not run the handler")

    def test_replay_ignores_request_content_type(self):
        # The fingerprint covers query and body only; other headers may differ.
        k = self.key()
        first = self.srv.post("/orders", ORDER_BODY, key=k,
                              headers={"Content-Type": "application/json"})
        self.assertEqual(first[0], 201)
        again = self.srv.post("/orders", ORDER_BODY, key=k,
                              headers={"Content-Type": "text/plain", "X-Other": "1"})
        self.assertReplayOf(first, again)

    def test_same_key_different_body_is_409(self):
        k = self.key()
        first = self.srv.post("/orders", ORDER_BODY, key=k)
        self.assertEqual(first[0], 201)
        before = self.srv.count("orders.create")
        resp = self.srv.post("/orders", b'{"product_id":"p2","quantity":1}', key=k)
        self.assertProblem(resp, 409, h.KEY_REUSED, h.REUSED_ERROR)
        self.assertEqual(header_values(resp[1], "Set-Cookie"), [])
        self.assertIsNone(header(resp[1], "Idempotent-Replayed"))
        # An empty body is a different body too.
        self.assertProblem(self.srv.post("/orders", b"", key=k), 409, h.KEY_REUSED)
        self.assertEqual(self.srv.count("orders.create"), before)
        # The conflict changed nothing: the original still replays.
        self.assertReplayOf(first, self.srv.post("/orders", ORDER_BODY, key=k))

    # ---- key forms ----

    def test_quoted_and_bare_key_are_the_same_key(self):
        k = self.key()
        before = self.srv.count("orders.create")
        first = self.srv.post("/orders", ORDER_BODY, key='"%s"' % k)
        self.assertEqual(first[0], 201, first[2])
        self.assertEqual(parse_json(first[2])["key"], k, "quotes are not part of the key")
        again = self.srv.post("/orders", ORDER_BODY, key=k)
        self.assertReplayOf(first, again)
        again = self.srv.post("/orders", ORDER_BODY, key='"%s"' % k)
        self.assertReplayOf(first, again)
        self.assertEqual(self.srv.count("orders.create"), before + 1)

    def test_bare_then_quoted_key(self):
        k = self.key()
        first = self.srv.post("/orders", ORDER_BODY, key=k)
        self.assertEqual(first[0], 201)
        self.assertReplayOf(first, self.srv.post("/orders", ORDER_BODY, key='"%s"' % k))

    def test_quoted_key_escapes_and_surrounding_spaces(self):
        k = self.key()
        # "a\"b\\c" in RFC 8941 string form is the bare key a"b\c.
        bare = k + 'a"b\\c'
        quoted = '"' + k + 'a\\"b\\\\c"'
        first = self.srv.post("/orders", ORDER_BODY, key=quoted)
        self.assertEqual(first[0], 201, first[2])
        self.assertEqual(parse_json(first[2])["key"], bare)
        self.assertReplayOf(first, self.srv.post("/orders", ORDER_BODY, key=bare))
        # Spaces around the value are not part of the key.
        self.assertReplayOf(first, self.srv.post("/orders", ORDER_BODY, key="  " + bare + "  "))
        self.assertReplayOf(first, self.srv.post("/orders", ORDER_BODY,
                                                 key="\t" + quoted + " "))
        # A bad escape is a malformed key.
        self._assert_key_rejected(self.srv.post("/orders", ORDER_BODY, key='"a\\nb"'),
                                  "escape other than \\\" or \\\\")

    def test_key_of_255_bytes_is_accepted(self):
        k = self.key()
        k = (k + "x" * 255)[:255]
        first = self.srv.post("/orders", ORDER_BODY, key=k)
        self.assertEqual(first[0], 201, first[2])
        self.assertEqual(parse_json(first[2])["key"], k)
        self.assertReplayOf(first, self.srv.post("/orders", ORDER_BODY, key=k))

    def _assert_key_rejected(self, resp, what):
        st, hs, body = resp
        self.assertEqual(st, 400, "%s: expected 400, got %d %r" % (what, st, body[:300]))
        # The layer's own rejection is a problem document; when the HTTP library refuses
        # the header before the layer sees it any 400 will do.
        if header(hs, "Content-Type") == "application/problem+json":
            doc = self.assertProblem(resp, 400)
            self.assertIn(doc["type"], (h.KEY_INVALID, h.KEY_MISSING), what)

    def test_invalid_keys_are_400_and_run_nothing(self):
        before = self.srv.count("orders.create")
        cases = [
            ("empty key", [("Idempotency-Key", "")]),
            ("blank key", [("Idempotency-Key", "   ")]),
            ("empty quoted key", [("Idempotency-Key", '""')]),
            ("256-byte key", [("Idempotency-Key", "k" * 256)]),
            ("258-byte quoted key", [("Idempotency-Key", '"%s"' % ("k" * 256))]),
            ("non-ASCII key", [("Idempotency-Key", "caf\u00e9-1".encode("utf-8"))]),
            ("byte 0x7f", [("Idempotency-Key", b"ab\x7fcd")]),
            ("unterminated quote", [("Idempotency-Key", '"abc')]),
            ("text after quote", [("Idempotency-Key", '"abc"def')]),
            ("two headers", [("Idempotency-Key", "dup-a"), ("Idempotency-Key", "dup-a")]),
            ("two different headers",
             [("Idempotency-Key", "dup-b"), ("Idempotency-Key", "dup-c")]),
        ]
        for what, hs in cases:
            with self.subTest(what):
                resp = self.srv.request("POST", "/orders", ORDER_BODY, hs)
                self._assert_key_rejected(resp, what)
                if what == "two headers":
                    doc = self.assertProblem(resp, 400)
                    self.assertEqual(doc["type"], h.KEY_INVALID)
                if what == "256-byte key":
                    self.assertProblem(resp, 400, h.KEY_INVALID)
        self.assertEqual(self.srv.count("orders.create"), before)
        # Neither of the duplicated keys was claimed: each executes now.
        self.assertEqual(self.srv.post("/orders", ORDER_BODY, key="dup-a-" + self.key())[0],
                         201)

    def test_control_characters_in_key_are_400(self):
        before = self.srv.count("orders.create")
        # No NUL here: libmicrohttpd 0.9.75 ends a header value at a NUL byte before the
        # application sees it (README, "Known limitations").
        for ctl in (b"\x01", b"\x1b", b"\x7f"):
            with self.subTest(ctl=ctl):
                req = (b"POST /orders HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                       b"Idempotency-Key: ab" + ctl + b"cd\r\n"
                       b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(ORDER_BODY)
                       + ORDER_BODY)
                resp = h.raw_exchange(self.srv.port, req, half_close=False)
                if resp is None:
                    continue  # refusing the connection is a rejection too
                self._assert_key_rejected((resp.status, resp.headers, resp.body),
                                          "control char %r" % ctl)
        self.assertEqual(self.srv.count("orders.create"), before)
        self.assertEqual(self.srv.health(), 200)

    # ---- scope and fingerprint ----

    def test_operations_scope_keys(self):
        k = self.key()
        o0, p0 = self.srv.count("orders.create"), self.srv.count("payments.create")
        order = self.srv.post("/orders", ORDER_BODY, key=k)
        payment = self.srv.post("/payments", b'{"amount":5}', key=k)
        self.assertEqual(order[0], 201)
        self.assertEqual(payment[0], 201, "the same key on another operation is a new key")
        self.assertNotReplayed(payment)
        self.assertEqual(self.srv.count("orders.create"), o0 + 1)
        self.assertEqual(self.srv.count("payments.create"), p0 + 1)
        self.assertReplayOf(order, self.srv.post("/orders", ORDER_BODY, key=k))
        self.assertReplayOf(payment, self.srv.post("/payments", b'{"amount":5}', key=k))

    def test_query_string_is_part_of_the_fingerprint(self):
        k = self.key()
        first = self.srv.post("/orders", ORDER_BODY, key=k)
        self.assertEqual(first[0], 201)
        before = self.srv.count("orders.create")
        resp = self.srv.post("/orders?dry_run=1", ORDER_BODY, key=k)
        self.assertProblem(resp, 409, h.KEY_REUSED, h.REUSED_ERROR)
        k2 = self.key("q")
        first = self.srv.post("/orders?dry_run=1", ORDER_BODY, key=k2)
        self.assertEqual(first[0], 201)
        self.assertEqual(parse_json(first[2])["query"], "dry_run=1")
        self.assertReplayOf(first, self.srv.post("/orders?dry_run=1", ORDER_BODY, key=k2))
        self.assertProblem(self.srv.post("/orders?dry_run=2", ORDER_BODY, key=k2), 409,
                           h.KEY_REUSED)
        self.assertProblem(self.srv.post("/orders", ORDER_BODY, key=k2), 409, h.KEY_REUSED)
        self.assertEqual(self.srv.count("orders.create"), before + 1)

    def test_fingerprint_framing(self):
        cases = [
            ("", b""),
            ("", ORDER_BODY),
            ("b=2&a=1", ORDER_BODY),
            ("x=%20y+z", b"\x00\x01\xff binary"),
            # Moving bytes between query and body must change the fingerprint.
            ("ab", b"c"),
            ("a", b"bc"),
        ]
        seen = set()
        for q, body in cases:
            with self.subTest(q=q, body=body):
                path = "/orders?" + q if q else "/orders"
                st, hs, resp_body = self.srv.post(path, body, key=self.key())
                self.assertEqual(st, 201, resp_body)
                doc = parse_json(resp_body)
                self.assertEqual(doc["query"], q)
                self.assertEqual(doc["fingerprint"], fingerprint(q, body))
                seen.add(doc["fingerprint"])
        self.assertEqual(len(seen), len(cases))

    # ---- what is stored and what is not ----

    def _twice(self, path, body=b"{}", key=None):
        k = key or self.key()
        return self.srv.post(path, body, key=k), self.srv.post(path, body, key=k)

    def test_5xx_is_not_stored(self):
        for status in (500, 502, 503):
            with self.subTest(status=status):
                before = self.srv.count("flaky.run")
                a, b = self._twice("/flaky?status=%d" % status)
                self.assertEqual(a[0], status)
                self.assertEqual(b[0], status)
                self.assertNotReplayed(a)
                self.assertNotReplayed(b)
                self.assertEqual(self.srv.count("flaky.run"), before + 2,
                                 "a 5xx releases the key: the retry runs again")

    def test_408_425_429_are_not_stored(self):
        for status in (408, 425, 429):
            with self.subTest(status=status):
                before = self.srv.count("flaky.run")
                a, b = self._twice("/flaky?status=%d" % status)
                self.assertEqual((a[0], b[0]), (status, status))
                self.assertNotReplayed(b)
                self.assertEqual(self.srv.count("flaky.run"), before + 2)

    def test_other_4xx_and_3xx_are_stored(self):
        for status in (400, 404, 409, 410, 302):
            with self.subTest(status=status):
                before = self.srv.count("flaky.run")
                a, b = self._twice("/flaky?status=%d" % status)
                self.assertEqual(a[0], status)
                self.assertReplayOf(a, b)
                self.assertEqual(self.srv.count("flaky.run"), before + 1)

    def test_final_500_is_stored(self):
        before = self.srv.count("flaky.run")
        a, b = self._twice("/flaky?status=500&final=1")
        self.assertEqual(a[0], 500)
        self.assertNotReplayed(a)
        self.assertReplayOf(a, b)
        self.assertEqual(self.srv.count("flaky.run"), before + 1)

    def test_422_is_stored(self):
        before = self.srv.count("invalid.run")
        a, b = self._twice("/invalid", b'{"x":1}')
        self.assertEqual(a[0], 422)
        self.assertEqual(header(a[1], "Content-Type"), "application/problem+json")
        self.assertEqual(parse_json(a[2])["detail"], "nope")
        self.assertReplayOf(a, b)
        self.assertEqual(self.srv.count("invalid.run"), before + 1)

    def test_never_persist_201_is_not_stored(self):
        before = self.srv.count("flaky.run")
        a, b = self._twice("/flaky?status=201&never=1")
        self.assertEqual((a[0], b[0]), (201, 201))
        self.assertNotReplayed(a)
        self.assertNotReplayed(b)
        self.assertEqual(self.srv.count("flaky.run"), before + 2)

    def test_zeroed_response_is_500_and_not_stored(self):
        before = self.srv.count("nullresp.run")
        a, b = self._twice("/nullresp")
        self.assertProblem(a, 500, h.HANDLER)
        self.assertProblem(b, 500, h.HANDLER)
        self.assertNotReplayed(b)
        self.assertEqual(self.srv.count("nullresp.run"), before + 2)

    def test_binary_body_round_trip_and_replay(self):
        payload = bytes(range(256)) * 3 + b"\x00\r\n\r\n\x00"
        self.assertLessEqual(len(payload), MAX_BODY)
        k = self.key()
        before = self.srv.count("raw.run")
        first = self.srv.post("/raw", payload, key=k,
                              headers={"Content-Type": "application/octet-stream"})
        self.assertEqual(first[0], 200)
        self.assertEqual(first[2], payload)
        self.assertEqual(header(first[1], "Content-Type"), "application/octet-stream")
        again = self.srv.post("/raw", payload, key=k)
        self.assertReplayOf(first, again)
        self.assertEqual(again[2], payload)
        # One flipped byte is another body.
        other = bytearray(payload)
        other[100] ^= 1
        self.assertProblem(self.srv.post("/raw", bytes(other), key=k), 409, h.KEY_REUSED)
        self.assertEqual(self.srv.count("raw.run"), before + 1)

    def test_empty_body_round_trip(self):
        k = self.key()
        first = self.srv.post("/raw", b"", key=k)
        self.assertEqual((first[0], first[2]), (200, b""))
        self.assertReplayOf(first, self.srv.post("/raw", b"", key=k))

    # ---- routing errors ----

    def test_wrong_method_on_durable_path_is_405(self):
        for method in ("GET", "PUT", "DELETE"):
            with self.subTest(method=method):
                resp = self.srv.request(method, "/orders",
                                        None if method == "GET" else b"{}",
                                        {"Idempotency-Key": self.key()})
                self.assertProblem(resp, 405, h.METHOD)
                allow = header(resp[1], "Allow")
                self.assertIsNotNone(allow, "405 needs an Allow header")
                self.assertIn("POST", [m.strip() for m in allow.split(",")])

    def test_unknown_path_is_404(self):
        self.assertProblem(self.srv.get("/no/such/path"), 404, h.NOT_FOUND)
        before = self.srv.count("orders.create")
        self.assertProblem(self.srv.post("/orders/extra", ORDER_BODY, key=self.key()), 404,
                           h.NOT_FOUND)
        self.assertProblem(self.srv.post("/nope", b"", key=self.key()), 404, h.NOT_FOUND)
        self.assertEqual(self.srv.count("orders.create"), before)

    # ---- body limit ----

    def _assert_413(self, resp, what):
        self.assertIsNotNone(resp, "%s: the server closed without answering 413" % what)
        self.assertEqual(resp.status, 413, "%s: %r" % (what, resp.raw[:300]))
        self.assertProblem((resp.status, resp.headers, resp.body), 413, h.BODY_TOO_LARGE)

    def test_body_at_the_limit_is_accepted(self):
        payload = b"a" * MAX_BODY
        st, hs, body = self.srv.post("/raw", payload, key=self.key())
        self.assertEqual(st, 200)
        self.assertEqual(body, payload)

    def test_body_over_limit_with_content_length_is_413(self):
        before = self.srv.count("orders.create")
        body = b"x" * (MAX_BODY + 1)
        req = (b"POST /orders HTTP/1.1\r\nHost: 127.0.0.1\r\nIdempotency-Key: %s\r\n"
               b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
               % (self.key().encode(), len(body)) + body)
        self._assert_413(h.raw_exchange(self.srv.port, req, half_close=False), "Content-Length")
        big = b"y" * (64 * 1024)
        req = (b"POST /orders HTTP/1.1\r\nHost: 127.0.0.1\r\nIdempotency-Key: %s\r\n"
               b"Content-Length: %d\r\n\r\n" % (self.key().encode(), len(big)) + big)
        self._assert_413(h.raw_exchange(self.srv.port, req, half_close=False), "64 KiB")
        self.assertEqual(self.srv.count("orders.create"), before)
        self.assertEqual(self.srv.health(), 200)
        # Ordinary routes have the same limit.
        resp = self.srv.request("POST", "/plain", body)
        self.assertEqual(resp[0], 413)
        self.assertEqual(self.srv.health(), 200)
        self.assertEqual(self.srv.post("/orders", ORDER_BODY, key=self.key())[0], 201)

    def test_body_over_limit_chunked_is_413(self):
        before = self.srv.count("orders.create")
        chunks = b"".join(b"%x\r\n%s\r\n" % (300, b"z" * 300) for _ in range(5)) + b"0\r\n\r\n"
        req = (b"POST /orders HTTP/1.1\r\nHost: 127.0.0.1\r\nIdempotency-Key: %s\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n" % self.key().encode()) + chunks
        self._assert_413(h.raw_exchange(self.srv.port, req, half_close=False), "chunked")
        self.assertEqual(self.srv.count("orders.create"), before)
        self.assertEqual(self.srv.health(), 200)
        # A chunked body under the limit is fine and fingerprinted as its decoded bytes.
        k = self.key()
        small = b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (10, b"0123456789", 5, b"abcde")
        req = (b"POST /orders HTTP/1.1\r\nHost: 127.0.0.1\r\nIdempotency-Key: %s\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n" % k.encode()) + small
        resp = h.raw_exchange(self.srv.port, req, half_close=False)
        self.assertIsNotNone(resp)
        self.assertEqual(resp.status, 201, resp.raw[:300])
        doc = parse_json(resp.body)
        self.assertEqual(doc["body"], "0123456789abcde")
        self.assertEqual(doc["fingerprint"], fingerprint("", b"0123456789abcde"))
        # Sent with Content-Length this time: the same request, so it replays.
        again = self.srv.post("/orders", b"0123456789abcde", key=k)
        self.assertEqual(again[2], resp.body)
        self.assertEqual(header(again[1], "Idempotent-Replayed"), "true")
        self.assertEqual(self.srv.count("orders.create"), before + 1)

    # ---- JSON bodies must be UTF-8 ----

    BAD_UTF8 = b'{"product_id":"\xff\xfe\x80","quantity":1}'

    def test_json_body_with_invalid_utf8_is_400_before_the_handler(self):
        k = self.key()
        before = self.srv.count("orders.create")
        for ct in ("application/json", "application/json; charset=utf-8",
                   "application/merge-patch+json"):
            with self.subTest(content_type=ct):
                resp = self.srv.post("/orders", self.BAD_UTF8, key=k,
                                     headers={"Content-Type": ct})
                self.assertProblem(resp, 400, "urn:cnerium:problem:body-not-utf8")
        # Overlong, surrogate and truncated forms too.
        for bad in (b'{"a":"\xc0\xaf"}', b'{"a":"\xed\xa0\x80"}', b'{"a":"\xe2\x82"}'):
            resp = self.srv.post("/orders", bad, key=k,
                                 headers={"Content-Type": "application/json"})
            self.assertProblem(resp, 400, "urn:cnerium:problem:body-not-utf8")
        self.assertEqual(self.srv.count("orders.create"), before)
        # Nothing was stored or claimed for the key: a valid body now executes.
        ok = self.srv.post("/orders", ORDER_BODY, key=k,
                           headers={"Content-Type": "application/json"})
        self.assertEqual(ok[0], 201)
        self.assertNotReplayed(ok)
        self.assertEqual(self.srv.count("orders.create"), before + 1)
        # Ordinary routes refuse declared JSON the same way.
        before = self.srv.count("plain")
        resp = self.srv.request("POST", "/plain", self.BAD_UTF8,
                                {"Content-Type": "application/json"})
        self.assertProblem(resp, 400, "urn:cnerium:problem:body-not-utf8")
        self.assertEqual(self.srv.count("plain"), before)

    def test_valid_utf8_json_and_undeclared_binary_bodies_pass(self):
        k = self.key()
        body = '{"product_id":"caf\u00e9 \U0001f600","quantity":1}'.encode("utf-8")
        resp = self.srv.post("/orders", body, key=k, headers={"Content-Type": "application/json"})
        self.assertEqual(resp[0], 201, resp[2])
        self.assertEqual(parse_json(resp[2])["body"], body.decode("utf-8"))
        # A body not declared as JSON may be any bytes (stored byte for byte).
        resp = self.srv.post("/raw", self.BAD_UTF8, key=self.key(),
                             headers={"Content-Type": "application/octet-stream"})
        self.assertEqual((resp[0], resp[2]), (200, self.BAD_UTF8))

    # ---- ordinary routes ----

    def test_route_parameters(self):
        self.assertEqual(self.srv.get_json("/items/42"), (200, {"id": "42"}))
        self.assertEqual(self.srv.get_json("/items/special"), (200, {"special": True}),
                         "a literal segment wins over a parameter")
        self.assertEqual(self.srv.get_json("/items/a%20b"), (200, {"id": "a b"}))
        self.assertEqual(self.srv.get("/items")[0], 404)
        self.assertEqual(self.srv.get("/items/1/2")[0], 404)

    def test_query_parameters(self):
        self.assertEqual(self.srv.get_json("/search?q=a+b%21"), (200, {"q": "a b!"}))
        self.assertEqual(self.srv.get_json("/search?x=1&q=first&q=second"),
                         (200, {"q": "first"}))
        self.assertEqual(self.srv.get_json("/search?q"), (200, {"q": ""}))
        self.assertEqual(self.srv.get_json("/search"), (200, {"q": None}))

    def test_head_is_answered_by_the_get_route(self):
        st, hs, body = self.srv.request("HEAD", "/items/9")
        self.assertEqual(st, 200)
        self.assertEqual(body, b"")
        self.assertEqual(header(hs, "Content-Type"), "application/json")

    def test_put_and_delete(self):
        st, hs, body = self.srv.request("PUT", "/items/7", b'{"x":1}')
        self.assertEqual((st, parse_json(body)), (200, {"put": "7"}))
        st, hs, body = self.srv.request("DELETE", "/items/7")
        self.assertEqual((st, parse_json(body)), (200, {"deleted": "7"}))
        resp = self.srv.request("POST", "/items/7", b"")
        self.assertProblem(resp, 405, h.METHOD)
        allow = [m.strip() for m in header(resp[1], "Allow").split(",")]
        for m in ("GET", "PUT", "DELETE"):
            self.assertIn(m, allow)

    def test_ordinary_post_runs_every_time_without_key(self):
        before = self.srv.count("plain")
        ns = []
        for _ in range(3):
            st, hs, body = self.srv.post("/plain", b"{}")
            self.assertEqual(st, 200)
            self.assertIsNone(header(hs, "Idempotent-Replayed"))
            ns.append(parse_json(body)["n"])
        # A key on an ordinary route means nothing.
        for _ in range(2):
            st, hs, body = self.srv.post("/plain", b"{}", key="ignored")
            self.assertEqual(st, 200)
            self.assertIsNone(header(hs, "Idempotent-Replayed"))
        self.assertEqual(ns, sorted(set(ns)))
        self.assertEqual(self.srv.count("plain"), before + 5)

    def test_keep_alive_connection_serves_many_requests(self):
        conn = self.srv.connection()
        try:
            k = self.key()
            first = h.send_request(conn, "POST", "/orders", ORDER_BODY,
                                   {"Idempotency-Key": k})
            self.assertEqual(first[0], 201)
            for _ in range(5):
                again = h.send_request(conn, "POST", "/orders", ORDER_BODY,
                                       {"Idempotency-Key": k})
                self.assertReplayOf(first, again)
                self.assertEqual(h.send_request(conn, "GET", "/health")[0], 200)
            # HTTP/1.1 keeps the connection open (DESIGN: the MHD first-call trap).
            self.assertNotEqual((header(first[1], "Connection") or "").lower(), "close")
            self.assertNotEqual((header(again[1], "Connection") or "").lower(), "close")
        finally:
            conn.close()


class PrincipalScopeTest(SharedServerCase):
    server_args = ("--principal-header", "X-Tenant-Id", "--workers", "2")

    def test_tenants_have_separate_key_spaces(self):
        k = self.key()
        body_a, body_b = b'{"tenant":"a"}', b'{"tenant":"b","more":1}'
        before = self.srv.count("orders.create")
        a = self.srv.post("/orders", body_a, key=k, headers={"X-Tenant-Id": "tenant-a"})
        b = self.srv.post("/orders", body_b, key=k, headers={"X-Tenant-Id": "tenant-b"})
        self.assertEqual(a[0], 201, a[2])
        self.assertEqual(b[0], 201, "tenant B's key is not tenant A's: %r" % (b[2],))
        self.assertNotReplayed(b)
        self.assertEqual(self.srv.count("orders.create"), before + 2)
        self.assertEqual(parse_json(a[2])["body"], body_a.decode())
        self.assertEqual(parse_json(b[2])["body"], body_b.decode())

        self.assertReplayOf(a, self.srv.post("/orders", body_a, key=k,
                                             headers={"X-Tenant-Id": "tenant-a"}))
        self.assertReplayOf(b, self.srv.post("/orders", body_b, key=k,
                                             headers={"X-Tenant-Id": "tenant-b"}))
        # Within a tenant the usual rules hold.
        self.assertProblem(self.srv.post("/orders", body_b, key=k,
                                         headers={"X-Tenant-Id": "tenant-a"}),
                           409, h.KEY_REUSED)
        self.assertEqual(self.srv.count("orders.create"), before + 2)

    def test_same_body_different_tenants_both_execute(self):
        k = self.key()
        before = self.srv.count("orders.create")
        a = self.srv.post("/orders", ORDER_BODY, key=k, headers={"X-Tenant-Id": "t1"})
        b = self.srv.post("/orders", ORDER_BODY, key=k, headers={"X-Tenant-Id": "t2"})
        self.assertEqual((a[0], b[0]), (201, 201))
        self.assertNotReplayed(b)
        self.assertNotEqual(parse_json(a[2])["n"], parse_json(b[2])["n"])
        self.assertEqual(self.srv.count("orders.create"), before + 2)

    def test_request_without_principal_is_its_own_scope(self):
        k = self.key()
        none = self.srv.post("/orders", ORDER_BODY, key=k)
        self.assertEqual(none[0], 201)
        self.assertReplayOf(none, self.srv.post("/orders", ORDER_BODY, key=k))
        t = self.srv.post("/orders", ORDER_BODY, key=k, headers={"X-Tenant-Id": "t3"})
        self.assertEqual(t[0], 201)
        self.assertNotReplayed(t)

    def test_absent_principal_is_the_empty_principal(self):
        k = self.key()
        none = self.srv.post("/orders", ORDER_BODY, key=k)
        self.assertEqual(none[0], 201)
        self.assertReplayOf(none, self.srv.post("/orders", ORDER_BODY, key=k,
                                                headers=[("X-Tenant-Id", "")]))

    def test_two_principal_headers_are_400(self):
        k = self.key()
        before = self.srv.count("orders.create")
        for pair in (("tenant-a", "tenant-b"), ("tenant-a", "tenant-a")):
            with self.subTest(values=pair):
                resp = self.srv.post("/orders", ORDER_BODY, key=k,
                                     headers=[("X-Tenant-Id", pair[0]),
                                              ("x-tenant-id", pair[1])])
                self.assertEqual(resp[0], 400, resp[2])
                self.assertIn(b"principal", resp[2])
        self.assertEqual(self.srv.count("orders.create"), before)
        # The key was not claimed in either tenant.
        a = self.srv.post("/orders", ORDER_BODY, key=k, headers={"X-Tenant-Id": "tenant-a"})
        self.assertEqual(a[0], 201)
        self.assertNotReplayed(a)
        self.assertEqual(self.srv.count("orders.create"), before + 1)

    def test_principal_value_is_trimmed(self):
        k = self.key()
        a = self.srv.post("/orders", ORDER_BODY, key=k, headers={"X-Tenant-Id": "tw"})
        self.assertEqual(a[0], 201)
        for spaced in (" tw", "tw ", " \ttw\t "):
            with self.subTest(value=spaced):
                self.assertReplayOf(a, self.srv.post("/orders", ORDER_BODY, key=k,
                                                     headers=[("X-Tenant-Id", spaced)]))

    def test_principal_header_name_is_case_insensitive(self):
        k = self.key()
        a = self.srv.post("/orders", ORDER_BODY, key=k, headers={"X-Tenant-Id": "tc"})
        self.assertEqual(a[0], 201)
        self.assertReplayOf(a, self.srv.post("/orders", ORDER_BODY, key=k,
                                             headers={"x-tenant-id": "tc"}))


class DurableMethodsTest(SharedServerCase):
    """cn_durable with PUT, PATCH and DELETE (the fixture's /docs/{id}): the same contract
    as POST, with the method and path in the fingerprint."""

    server_args = ("--workers", "2")

    def send(self, method, path, body, key):
        return self.srv.request(method, path, body, {"Idempotency-Key": key})

    def test_put_patch_delete_run_once_and_replay(self):
        for method, op, status in (("PUT", "docs.put", 200), ("PATCH", "docs.patch", 200),
                                   ("DELETE", "docs.delete", 204)):
            with self.subTest(method=method):
                before = self.srv.count(op)
                k = self.key(method)
                first = self.send(method, "/docs/d1", b'{"v":1}', k)
                self.assertEqual(first[0], status, first[2])
                self.assertIsNone(header(first[1], "Idempotent-Replayed"))
                again = self.send(method, "/docs/d1", b'{"v":1}', k)
                self.assertReplayOf(first, again)
                self.assertEqual(self.srv.count(op), before + 1)
                if status == 200:
                    doc = parse_json(first[2])
                    self.assertEqual((doc["method"], doc["id"]), (method, "d1"))
                else:
                    self.assertEqual(first[2], b"")
                    self.assertEqual(again[2], b"")

    def test_method_and_path_are_part_of_the_fingerprint(self):
        before = self.srv.count("docs.put")
        k = self.key()
        first = self.send("PUT", "/docs/a", b'{"v":1}', k)
        self.assertEqual(first[0], 200, first[2])
        # Same key, same body, another document: another request.
        self.assertProblem(self.send("PUT", "/docs/b", b'{"v":1}', k), 409,
                           h.PROBLEM + "idempotency-key-reused")
        self.assertProblem(self.send("PUT", "/docs/a", b'{"v":2}', k), 409,
                           h.PROBLEM + "idempotency-key-reused")
        self.assertEqual(self.srv.count("docs.put"), before + 1)
        # Another operation is another key space (PATCH on the same document and key).
        patch = self.send("PATCH", "/docs/a", b'{"v":1}', k)
        self.assertEqual(patch[0], 200, patch[2])
        self.assertIsNone(header(patch[1], "Idempotent-Replayed"))

    def test_key_required_and_405_names_every_method(self):
        before = self.srv.count("docs.delete")
        resp = self.srv.request("DELETE", "/docs/x", None)
        self.assertProblem(resp, 400, h.KEY_MISSING, h.MISSING_KEY_ERROR)
        self.assertEqual(self.srv.count("docs.delete"), before)
        resp = self.srv.request("POST", "/docs/x", b"{}", {"Idempotency-Key": self.key()})
        self.assertProblem(resp, 405, h.METHOD)
        allow = [m.strip() for m in header(resp[1], "Allow").split(",")]
        self.assertEqual(sorted(allow), ["DELETE", "PATCH", "PUT"])


class AnswerLaterTest(SharedServerCase):
    """Handlers that answer later (cn_later, cn_request_answer from another thread): the
    fixture's POST /later (durable) and GET /later-plain answer from a thread of their
    own after ?ms=, or before the handler returns with early=1."""

    server_args = ("--workers", "2", "--threads", "2")

    def test_durable_later_runs_once_stores_and_replays(self):
        before = self.srv.count("later.run")
        k = self.key()
        first = self.srv.post("/later?ms=200", b"{}", key=k)
        self.assertEqual(first[0], 201, first[2])
        self.assertTrue(parse_json(first[2])["later"])
        self.assertReplayOf(first, self.srv.post("/later?ms=200", b"{}", key=k))
        self.assertEqual(self.srv.count("later.run"), before + 1)

    def test_early_answer_before_the_handler_returns(self):
        k = self.key()
        first = self.srv.post("/later?early=1", b"{}", key=k)
        self.assertEqual(first[0], 201, first[2])
        self.assertReplayOf(first, self.srv.post("/later?early=1", b"{}", key=k))
        st, _, body = self.srv.get("/later-plain?early=1")
        self.assertEqual(st, 201, body)

    def test_duplicates_wait_for_a_later_answer_and_replay(self):
        before = self.srv.count("later.run")
        k = self.key()
        results = h.run_together(self.srv, [("/later?ms=300", b"{}", k)] * 8)
        for r in results:
            self.assertNotIsInstance(r, Exception)
            self.assertEqual(r[0], 201, r[2])
        self.assertEqual(len({r[2] for r in results}), 1)
        self.assertEqual(sum(header(r[1], "Idempotent-Replayed") is None for r in results), 1)
        self.assertEqual(self.srv.count("later.run"), before + 1)

    def test_other_requests_go_on_while_answers_wait(self):
        # 20 later answers of 2 s at once on 2 workers x 2 loops: no loop is held, so a
        # plain request sent once all of them are in their handlers is answered before
        # any of them.
        before = self.srv.count("later.run")
        keys = [self.key(str(i)) for i in range(20)]
        done = []

        def one(k):
            done.append(self.srv.post("/later?ms=2000", b"{}", key=k)[0])

        threads = [threading.Thread(target=one, args=(k,), daemon=True) for k in keys]
        for t in threads:
            t.start()
        h.wait_until(lambda: self.srv.count("later.run") >= before + 20, 30.0,
                     what="20 handlers started")
        st, _, _ = self.srv.get("/health")
        self.assertEqual(st, 200)
        self.assertEqual(done, [], "the plain request waited for the later answers")
        for t in threads:
            t.join(30)
        self.assertEqual(done, [201] * 20)

    def test_ordinary_route_answers_later(self):
        st, _, body = self.srv.get("/later-plain?ms=100")
        self.assertEqual(st, 201, body)
        self.assertEqual(parse_json(body), {"n": 0, "later": True})


class StoredHeadersTest(SharedServerCase):
    """cn_response_store_header: stored with the response and replayed; a header added
    with cn_response_add_header goes with the first answer only."""

    def test_stored_header_is_replayed(self):
        k = self.key()
        first = self.srv.post("/tagged", b"{}", key=k)
        self.assertEqual(first[0], 201, first[2])
        etag = header(first[1], "ETag")
        self.assertRegex(etag, r'^"v\d+"$')
        self.assertEqual(header(first[1], "X-Once"), "first")
        again = self.srv.post("/tagged", b"{}", key=k)
        self.assertReplayOf(first, again)
        self.assertEqual(header(again[1], "ETag"), etag)
        self.assertIsNone(header(again[1], "X-Once"))


class ReusedKeyStatusTest(SharedServerCase):
    """--reused-key-status 422: the IETF draft's answer to a key reused with another
    body; everything else as with 409."""

    server_args = ("--reused-key-status", "422")

    def test_reused_key_is_422(self):
        k = self.key()
        first = self.srv.post("/orders", ORDER_BODY, key=k)
        self.assertEqual(first[0], 201)
        resp = self.srv.post("/orders", b'{"product_id":"p2","quantity":1}', key=k)
        self.assertProblem(resp, 422, h.PROBLEM + "idempotency-key-reused")
        self.assertReplayOf(first, self.srv.post("/orders", ORDER_BODY, key=k))

    def test_bad_value_fails_the_start(self):
        srv = self.server(h.contract_server(), "--reused-key-status", "410")
        self.assertFalse(srv.try_start())
        self.assertEqual(srv.wait_exit(15.0), 2)
        self.assertIn("--reused-key-status", srv.stderr_text())


if __name__ == "__main__":
    h.main()
