#!/usr/bin/env python3
"""Connection limits and the resources one client can hold: the per-request state of
requests libmicrohttpd rejects on its own (worker RSS and the drain), --max-connections,
--max-connections-per-ip and --header-timeout-ms (README "Limits"). Slow clients come
from 127.0.0.1; the client that must still be served binds 127.0.0.2, another source
address on the loopback network."""

import os
import select
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import cnharness as h  # noqa: E402

# A query of 3000 empty arguments and 12000 bytes: more arguments than fit in the 16 KiB
# connection memory, so libmicrohttpd answers 431 before the access handler is called.
FLOOD_TARGET = b"/health?" + b"&" * 3000 + b"x" * 12000
FLOOD_REQUEST = b"GET " + FLOOD_TARGET + b" HTTP/1.1\r\nHost: x\r\n\r\n"
FLOOD_WARMUP = 100
FLOOD_COUNT = 1500
# Slow clients send a request line and one header, never the blank line.
PARTIAL = b"GET /health HTTP/1.1\r\nHost: x\r\n"
OTHER_SOURCE = "127.0.0.2"


def worker_pids(srv):
    return [p.pid for p in h.live_children(srv.proc.pid) if p.comm.startswith("cn-worker")]


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS for pid %d" % pid)


def send_flood(port, n):
    """n requests MHD refuses itself, each on its own connection; each answer (or close)
    is read before the next, so the server has taken every one in when this returns."""
    for _ in range(n):
        s = h.raw_connect(port)
        try:
            s.sendall(FLOOD_REQUEST)
            s.settimeout(10.0)
            try:
                while s.recv(65536):
                    pass
            except (ConnectionResetError, socket.timeout):
                pass
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            s.close()


def closed_by_server(s):
    """True once the server closed s (EOF or reset), False while it is open and silent.
    Bytes the server sent (a 408) are consumed."""
    r, _, _ = select.select([s], [], [], 0)
    if not r:
        return False
    try:
        return s.recv(65536) == b"" or closed_by_server(s)
    except OSError:
        return True


def open_slow(port, n):
    out = []
    for _ in range(n):
        s = h.raw_connect(port)
        try:
            s.sendall(PARTIAL)
        except OSError:
            pass  # refused at once: closed_by_server sees it
        out.append(s)
    return out


def get_from(port, source, timeout=10.0):
    """GET /health from source address; returns the RawResponse (None: closed)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind((source, 0))
        s.settimeout(timeout)
        s.connect(("127.0.0.1", port))
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return h.read_response(s, timeout)
    finally:
        s.close()


class LimitsTest(h.ServerTestCase):
    def close_all(self, socks):
        for s in socks:
            s.close()

    def test_requests_refused_by_libmicrohttpd_leave_nothing_behind(self):
        """Requests answered 431 by libmicrohttpd before the access handler leaked their
        request state (worker RSS grew by ~15 KB each) and stayed "in progress", so the
        drain waited its whole timeout. Now RSS stays flat and SIGTERM exits at once."""
        env = {"ASAN_OPTIONS": (os.environ.get("ASAN_OPTIONS", "") +
                                ":quarantine_size_mb=1").lstrip(":")}
        srv = self.start_server(h.contract_server(), "--workers", "1", "--max-body", "4096",
                                env=env)
        pids = worker_pids(srv)
        self.assertEqual(len(pids), 1, "expected one worker process")
        resp = h.raw_exchange(srv.port, FLOOD_REQUEST, half_close=False)
        self.assertTrue(resp is None or 400 <= resp.status < 500,
                        "the flood request must be refused: %r" % (resp and resp.raw[:200]))
        send_flood(srv.port, FLOOD_WARMUP)
        base = rss_kib(pids[0])
        send_flood(srv.port, FLOOD_COUNT)
        grown = rss_kib(pids[0]) - base
        # Keeping even a quarter of each request's target would grow RSS by this much.
        leak_kib = FLOOD_COUNT * len(FLOOD_TARGET) // 4 // 1024
        self.assertLess(grown, leak_kib,
                        "worker RSS grew by %d KiB over %d refused requests (baseline %d KiB)"
                        % (grown, FLOOD_COUNT, base))
        self.assertEqual(srv.health(), 200)
        # Other requests that end without a dispatch: a chunked body past the limit, a
        # header with a NUL, a body cut short.
        chunked = (b"POST /orders HTTP/1.1\r\nHost: x\r\nIdempotency-Key: lim-c\r\n"
                   b"Transfer-Encoding: chunked\r\n\r\n" + b"1000\r\n" + b"a" * 4096 + b"\r\n"
                   + b"10\r\n" + b"b" * 16 + b"\r\n")
        resp = h.raw_exchange(srv.port, chunked, half_close=False)
        self.assertTrue(resp is None or resp.status == 413)
        resp = h.raw_exchange(srv.port, b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n")
        self.assertTrue(resp is None or resp.status == 400)
        s = h.raw_connect(srv.port)
        s.sendall(b"POST /orders HTTP/1.1\r\nHost: x\r\nIdempotency-Key: lim-t\r\n"
                  b"Content-Length: 100\r\n\r\n{")
        s.close()
        self.assertEqual(srv.health(), 200)
        rc = srv.stop()
        self.assertEqual(rc, 0, "SIGTERM after refused requests: no clean exit")
        self.assertNotIn("still in progress", srv.stderr_text(),
                         "the drain waited for requests that had ended")
        self.assertNoSanitizerReport(srv)

    def test_slow_clients_from_one_address_do_not_stop_others(self):
        """Past --max-connections-per-ip, connections from that address are closed at
        once; a client from another address is served meanwhile.

        The limit is split over the worker's two loops (4 each), and which loop accepts a
        connection is up to the kernel, so as many as 16 may be closed. What is held is
        read only after a client from another address has been served: its connection
        came after the slow ones in the listen queue, which is first in, first out, and
        a loop closes a connection past its limit in the call that accepted it."""
        per_ip, slow = 8, 20
        srv = self.start_server(h.contract_server(), "--workers", "1", "--threads", "2",
                                "--max-connections", "64",
                                "--max-connections-per-ip", str(per_ip),
                                "--header-timeout-ms", "120000")
        socks = open_slow(srv.port, slow)
        self.addCleanup(self.close_all, socks)
        h.wait_until(lambda: sum(map(closed_by_server, socks)) >= slow - per_ip
                     or None, 20.0, what="connections past the per-address limit closed")
        self.assertServedFromOtherSource(srv)
        # closed_by_server consumed the EOFs; count what is still open.
        still_open = [s for s in socks if not closed_by_server(s)]
        self.assertGreaterEqual(len(still_open), 1)
        self.assertLessEqual(len(still_open), per_ip,
                             "more than --max-connections-per-ip connections held open")
        self.assertServedFromOtherSource(srv)
        # The slow clients held are still waiting (the header deadline is far away).
        self.assertFalse(any(closed_by_server(s) for s in still_open))

    def assertServedFromOtherSource(self, srv):
        resp = get_from(srv.port, OTHER_SOURCE)
        self.assertIsNotNone(resp, "a client from another address was refused")
        self.assertEqual(resp.status, 200)

    def test_slow_header_sender_is_closed_at_the_deadline(self):
        """A client that trickles its header block (a byte every 50 ms, which keeps the
        30 s idle timeout from ever firing) gets 408 and is closed once
        --header-timeout-ms has passed; a prompt client on the same server is served."""
        srv = self.start_server(h.contract_server(), "--workers", "1",
                                "--header-timeout-ms", "500")
        s = h.raw_connect(srv.port)
        self.addCleanup(s.close)
        s.sendall(b"GET /health HTTP/1.1\r\n")
        got = b""
        closed = False
        deadline = time.monotonic() + 20.0  # well inside the 30 s idle timeout
        while time.monotonic() < deadline and not closed:
            try:
                s.sendall(b"X")
            except OSError:
                closed = True
                break
            r, _, _ = select.select([s], [], [], 0.05)
            if r:
                try:
                    chunk = s.recv(65536)
                except OSError:
                    chunk = b""
                got += chunk
                closed = not chunk
        self.assertTrue(closed, "a header sender trickling for 20 s was never closed")
        self.assertTrue(got == b"" or got.startswith(b"HTTP/1.1 408 "), got[:100])
        self.assertEqual(srv.health(), 200)
        # An idle keep-alive connection is closed at the deadline too, without a 408 (a
        # client reusing it could take that for the answer to its next request).
        s = h.raw_connect(srv.port)
        self.addCleanup(s.close)
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        carry = bytearray()
        resp = h.read_response(s, 10.0, carry)
        self.assertEqual(resp.status, 200)
        s.settimeout(20.0)
        try:
            tail = s.recv(65536)
        except ConnectionResetError:
            tail = b""
        except socket.timeout:
            self.fail("an idle keep-alive connection was not closed within 20 s")
        self.assertEqual(bytes(carry) + tail, b"", "bytes sent on an idle connection")
        # A keep-alive connection that sends its requests promptly is not cut.
        conn = srv.connection()
        try:
            for _ in range(3):
                conn.request("GET", "/health")
                resp = conn.getresponse()
                resp.read()
                self.assertEqual(resp.status, 200)
        finally:
            conn.close()

    def test_at_max_connections_new_connections_wait(self):
        """At --max-connections new connections wait in the listen backlog, unanswered,
        and are served once a connection closes."""
        limit = 4
        srv = self.start_server(h.contract_server(), "--workers", "1", "--threads", "2",
                                "--max-connections", str(limit),
                                "--max-connections-per-ip", "0",
                                "--header-timeout-ms", "0")
        socks = open_slow(srv.port, limit)
        self.addCleanup(self.close_all, socks)
        # Every slot taken: wait until the server has accepted all four (a request sent
        # on one more connection then stays unanswered).
        waiter = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(waiter.close)
        waiter.bind((OTHER_SOURCE, 0))
        waiter.settimeout(10.0)
        waiter.connect(("127.0.0.1", srv.port))
        waiter.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        r, _, _ = select.select([waiter], [], [], 1.0)
        self.assertEqual(r, [], "a connection past --max-connections was answered at once")
        self.assertFalse(any(closed_by_server(s) for s in socks))
        socks[0].close()
        resp = h.read_response(waiter, 10.0)
        self.assertIsNotNone(resp, "the waiting connection was closed, not served")
        self.assertEqual(resp.status, 200)


if __name__ == "__main__":
    h.main()
