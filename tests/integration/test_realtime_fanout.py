#!/usr/bin/env python3
"""Realtime fan-out to many clients at once, some of which stop reading for a while.

Server: the seed-000 example (POST /orders emits order.created with {order_id:
"ord_<key>", product_id, quantity}).

Covered: 48 clients read as events arrive while 4 clients with a tiny receive buffer
read nothing: the broadcaster's writes to those fill their sockets and stop part-way
through frames (the events are 20 KB each, far more than the buffers hold), and it
must carry on from the exact byte later (each stalled client is owed more than the
kernel's largest send buffer, tcp_wmem's maximum, so the server really holds frames
back). Meanwhile POSTs of fresh keys go in from a few threads. Then the stalled clients
read. Every client must have received, as whole unfragmented text frames of well-formed
UTF-8 JSON, every event exactly once, gapless and in seq order, with its payload; the
next event after them is a fresh sentinel (so nothing extra came in between); and the
delivery histogram counted every delivery.

Every wait is a bounded poll of a condition; no assertion depends on how long anything
took.
"""

import json
import os
import selectors
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import cnharness as h  # noqa: E402
import test_realtime as rt  # noqa: E402
from wsclient import WSClosed  # noqa: E402

FAST = 48            # clients that read as events arrive
STALLED = 4          # clients that read nothing until every POST is answered
EVENTS = 320
PRODUCT = "p" * 20000  # 6.4 MB per client: more than a socket's send buffer grows to
STALLED_RCVBUF = 4096
READ_TIMEOUT_S = 120.0  # bound on reading everything (a loaded machine is slow, not stuck)


class Stream:
    """The frames one client received, checked as they come: text, final, UTF-8, JSON."""

    def __init__(self, client, name):
        self.client = client
        self.name = name
        self.events = []
        self.errors = []

    def take(self):
        """Takes every complete frame out of the client's buffer. Returns False once a
        frame was not what it must be."""
        while True:
            frame = self.client._take_frame()
            if frame is None:
                return not self.errors
            fin, opcode, payload = frame
            if opcode == 0x9:  # a WebSocket ping: answer it, it is not an event
                self.client.send_frame(0xA, payload)
                continue
            if opcode != 0x1 or not fin:
                self.errors.append("frame opcode %d fin %d (want one whole text frame)"
                                   % (opcode, 1 if fin else 0))
                return False
            try:
                msg = json.loads(payload.decode("utf-8", errors="strict"))
            except (UnicodeDecodeError, ValueError) as e:
                self.errors.append("frame is not UTF-8 JSON (%s): %r" % (e, payload[:200]))
                return False
            if not rt.is_event(msg):
                self.errors.append("expected an event frame, got %r" % (msg,))
                return False
            self.events.append(msg)

    def last(self):
        return self.events[-1]["seq"] if self.events else 0


def read_all(streams, last_seq, deadline):
    """Reads every stream (one thread, a selector) until each has an event with seq >=
    last_seq, a frame is wrong, or the deadline passes. Returns the streams not done."""
    sel = selectors.DefaultSelector()
    pending = {}
    for s in streams:
        if s.last() < last_seq and s.take():
            sel.register(s.client.sock, selectors.EVENT_READ, s)
            pending[s.name] = s
    try:
        while pending and time.monotonic() < deadline:
            for key, _ in sel.select(max(0.0, min(1.0, deadline - time.monotonic()))):
                s = key.data
                try:
                    data = s.client.sock.recv(1 << 20)
                except (BlockingIOError, socket.timeout):
                    continue
                except ConnectionResetError:
                    data = b""
                if not data:
                    s.errors.append("connection closed after %d events" % len(s.events))
                else:
                    s.client.buf += data
                    s.take()
                if s.errors or s.last() >= last_seq:
                    sel.unregister(s.client.sock)
                    del pending[s.name]
    finally:
        sel.close()
    return list(pending.values())


class FanoutTest(rt.RealtimeCase):
    def test_many_clients_some_stalled_get_every_event_once_in_order(self):
        srv, port = self.start_example()
        self.post_orders(srv, [rt.fresh("warm") for _ in range(2)])
        s0 = rt.metric(srv, "cnerium_events_last_seq")
        delivered0 = rt.metric(srv, "cnerium_ws_delivery_seconds_count")

        fast = []
        for i in range(FAST):
            c = self.connect(port, "/ws")
            self.assertEqual(c.ping(), [], "fast client %d before any new event" % i)
            fast.append(Stream(c, "fast%d" % i))
        stalled = []
        for i in range(STALLED):
            c = self.connect(port, "/ws", rcvbuf=STALLED_RCVBUF)
            self.assertEqual(c.ping(), [], "stalled client %d before any new event" % i)
            stalled.append(Stream(c, "stalled%d" % i))
        for s in fast + stalled:
            s.client.sock.setblocking(False)

        # The fast clients read while the POSTs go in.
        last = s0 + EVENTS
        deadline = time.monotonic() + READ_TIMEOUT_S
        left = []
        reader = threading.Thread(target=lambda: left.extend(read_all(fast, last, deadline)),
                                  daemon=True)
        reader.start()
        keys = [rt.fresh("fan%03d" % i) for i in range(EVENTS)]
        self.post_orders(srv, keys, product=PRODUCT)
        reader.join(READ_TIMEOUT_S + 5.0)
        self.assertFalse(reader.is_alive(), "the reader did not finish")
        for s in fast:
            self.assertEqual(s.errors, [], s.name)
        self.assertEqual([s.name for s in left], [], "fast clients that did not get "
                         "every event while the stalled ones read nothing")

        # The stalled clients' sockets are full: the server holds the rest back.
        m = rt.metrics(srv)
        self.assertEqual(int(m["cnerium_events_last_seq"]), last)
        if EVENTS * len(PRODUCT) > 1.5 * rt.wmem_max():
            self.assertLess(int(m["cnerium_ws_frames_sent_total"]),
                            (FAST + STALLED) * EVENTS, "the stalled clients were not held back")

        # Now they read: everything, from the exact byte where the server stopped.
        left = read_all(stalled, last, time.monotonic() + READ_TIMEOUT_S)
        for s in stalled:
            self.assertEqual(s.errors, [], s.name)
        self.assertEqual([s.name for s in left], [], "stalled clients that did not get "
                         "every event once they read")

        bodies = {k: {"product_id": PRODUCT, "quantity": (i % 7) + 1}
                  for i, k in enumerate(keys)}
        for s in fast + stalled:
            with self.subTest(client=s.name):
                self.assertOrderEvents(s.events, bodies, s0 + 1)

        # Nothing extra in between: the next event every client sees is a fresh sentinel.
        skey = self.sentinel(srv)
        for s in fast + stalled:
            s.client.sock.setblocking(True)
            self.assertNextIsSentinel(s.client, skey, last + 1, s.name)

        # Every delivery of these events was counted once in the latency histogram.
        want = delivered0 + (FAST + STALLED) * (EVENTS + 1)
        h.wait_until(lambda: rt.metric(srv, "cnerium_ws_delivery_seconds_count") >= want,
                     10.0, what="cnerium_ws_delivery_seconds_count up by every delivery")
        self.assertEqual(rt.metric(srv, "cnerium_ws_delivery_seconds_count"), want)
        self.assertTrue(srv.alive())


if __name__ == "__main__":
    h.main()
