#!/usr/bin/env python3
"""WebSocket commands (cn_ws_command): a client's {"type":"command",...} message runs a
registered HTTP route through the broadcaster, with the route's durable contract, and
the answer goes back to that client only as {"type":"result",...}.

Server: the seed-000 example, which registers CreateOrder -> POST /orders (durable,
operation orders.create, emits order.created to every client when its handler runs,
answers 201 {"ok":true,"order_id":"ord_<key>",...}).

Covered: a command runs the handler once; its result reaches the sender only while
every client gets the event; the same command and key again replays (same body,
replayed true, no second execution, no second event); the key with another body is a
409 and no key a 400, passed through from the route; two clients using the same command
id each get their own answer; bad commands get error frames naming their id (or null)
and the connection keeps working; a client that leaves with commands in flight does not
disturb the broadcaster, which keeps serving another client (same process), and its
commands still ran.

"The sender only" is checked without waiting for silence: after the sender has its
result, the other client pings twice and reads up to the second pong; a misdirected
result would be queued before that pong.
"""

import json
import os
import re
import sys
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import cnharness as h  # noqa: E402
from cnharness import parse_json, wait_until  # noqa: E402
import wsclient  # noqa: E402

REALTIME_RE = re.compile(r"realtime on ws://127\.0\.0\.1:(\d+)(/\S*)")
ANSWER_TIMEOUT_S = 30.0  # a command's answer (or an event) reaches the client within this


def fresh(prefix):
    return "%s-%s" % (prefix, uuid.uuid4().hex[:12])


def command(cid, key, product="p1", quantity=1, action="CreateOrder"):
    msg = {"type": "command", "id": cid,
           "action": {action: {"product_id": product, "quantity": quantity}}}
    if key is not None:
        msg["idempotency_key"] = key
    return msg


def ws_port(srv):
    m = REALTIME_RE.search(srv.stdout_text())
    if not m:
        raise AssertionError("no 'realtime on ws://...' line on stdout:\n%r"
                             % srv.stdout_text())
    return int(m.group(1))


def recv_until(client, pred, what, timeout=ANSWER_TIMEOUT_S):
    """Reads messages until pred(msg) holds. Returns (that message, the ones before)."""
    seen = []
    while True:
        msg = client.recv_json(timeout)
        if pred(msg):
            return msg, seen
        seen.append(msg)
        if len(seen) > 1000:
            raise AssertionError("no %s among 1000 messages: %r" % (what, seen[-5:]))


def result_for(client, cid):
    """The result (or error) frame answering command cid, and the messages before it."""
    return recv_until(client, lambda m: m.get("type") in ("result", "error")
                      and m.get("id") == cid, "answer to %s" % cid)


def event_for(client, order_id, already=()):
    """The order.created event of order_id: among the messages already read, else the
    next ones. Returns (it, the messages read before it)."""
    def match(m):
        return (m.get("type") == "order.created"
                and m.get("payload", {}).get("order_id") == order_id)
    for i, m in enumerate(already):
        if match(m):
            return m, list(already[:i])
    return recv_until(client, match, "order.created of %s" % order_id)


def pings(client, n=2):
    """n ping/pong rounds; returns every message read before the last pong."""
    seen = []
    for _ in range(n):
        client.send_json({"type": "ping"})
        _, before = recv_until(client, lambda m: m.get("type") == "pong", "pong", 15.0)
        seen += before
    return seen


def scrape(srv):
    """{sample: value} of GET /metrics (labelled samples by their full name)."""
    st, _, body = srv.get("/metrics")
    if st != 200:
        raise AssertionError("GET /metrics answered %d" % st)
    out = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = int(float(value))
    return out


EXECUTED = 'cnerium_durable_requests_total{operation="orders.create",outcome="executed"}'


def executions(srv):
    return scrape(srv).get(EXECUTED, 0)


def broadcaster_pid(srv):
    found = [p.pid for p in h.live_children(srv.proc.pid) if p.comm == "cn-broadcaster"]
    if len(found) != 1:
        raise AssertionError("expected one cn-broadcaster child, found %r" % found)
    return found[0]


class WsCommandsTest(h.ServerTestCase):
    def setUp(self):
        super().setUp()
        self.srv = self.start_server(h.example_server(), *h.EXAMPLE_FLAGS, "--workers", "2")
        self.port = ws_port(self.srv)

    def connect(self):
        c = wsclient.WSClient("127.0.0.1", self.port, timeout=15.0)
        self.addCleanup(c.close)
        return c

    def test_runs_once_answers_sender_only_and_replays(self):
        a, b = self.connect(), self.connect()
        key = fresh("k")
        a.send_json(command("c1", key, quantity=2))
        res, first = result_for(a, "c1")
        self.assertEqual(res["type"], "result", res)
        self.assertEqual(res["status"], 201, res)
        self.assertIs(res["replayed"], False)
        self.assertEqual(res["body"]["order_id"], "ord_" + key)
        self.assertEqual(res["body"]["quantity"], 2)
        self.assertEqual(set(res), {"type", "id", "status", "body", "replayed"})
        # Every client gets the event; only the sender gets the result.
        event_for(a, "ord_" + key, first)
        _, before = event_for(b, "ord_" + key)
        later = pings(b)
        self.assertFalse([m for m in before + later if m.get("type") == "result"],
                         "another client got a result frame")
        self.assertEqual(executions(self.srv), 1)
        events = scrape(self.srv)["cnerium_events_committed_total"]
        self.assertEqual(events, 1)

        # The same command again: the stored answer, replayed, the handler not run again.
        a.send_json(command("c2", key, quantity=2))
        again, _ = result_for(a, "c2")
        self.assertEqual(again["status"], 201)
        self.assertIs(again["replayed"], True)
        self.assertEqual(again["body"], res["body"])
        # Over HTTP the same key and body replay the same stored response too.
        st, hs, body = self.srv.post("/orders", json.dumps(
            {"product_id": "p1", "quantity": 2}).encode(), key=key,
            headers={"Content-Type": "application/json"})
        self.assertEqual(st, 201)
        self.assertEqual(h.header(hs, "Idempotent-Replayed"), "true")
        self.assertEqual(parse_json(body), res["body"])
        self.assertEqual(executions(self.srv), 1)
        self.assertEqual(scrape(self.srv)["cnerium_events_committed_total"], events)
        self.assertFalse([m for m in pings(b) if m.get("type") == "result"])

    def test_contract_errors_pass_through(self):
        a = self.connect()
        key = fresh("k")
        a.send_json(command("first", key, quantity=1))
        self.assertEqual(result_for(a, "first")[0]["status"], 201)
        # Same key, another body: 409 from the route, nothing run.
        a.send_json(command("reuse", key, quantity=5))
        res, _ = result_for(a, "reuse")
        self.assertEqual(res["type"], "result")
        self.assertEqual(res["status"], 409)
        self.assertEqual(res["body"]["type"], h.KEY_REUSED)
        self.assertIs(res["replayed"], False)
        # No key: the durable route's 400.
        a.send_json(command("nokey", None))
        res, _ = result_for(a, "nokey")
        self.assertEqual(res["status"], 400)
        self.assertEqual(res["body"]["type"], h.KEY_MISSING)
        self.assertEqual(res["body"]["error"], h.MISSING_KEY_ERROR)
        self.assertEqual(executions(self.srv), 1)
        # The handler's own answer, whatever its status, comes back as it is.
        a.send_json(command("invalid", fresh("bad"), quantity=0))
        res, _ = result_for(a, "invalid")
        self.assertEqual(res["status"], 400)
        self.assertIn("quantity", res["body"]["error"])

    def test_same_id_on_two_clients(self):
        a, b = self.connect(), self.connect()
        ka, kb = fresh("ka"), fresh("kb")
        a.send_json(command("same", ka))
        b.send_json(command("same", kb))
        ra, _ = result_for(a, "same")
        rb, _ = result_for(b, "same")
        self.assertEqual(ra["body"]["order_id"], "ord_" + ka)
        self.assertEqual(rb["body"]["order_id"], "ord_" + kb)
        self.assertEqual(executions(self.srv), 2)

    def test_bad_commands_get_errors_and_the_connection_stays(self):
        a = self.connect()
        bad = [
            ({"type": "command", "id": "u", "action": {"NoSuchAction": {}}}, "u",
             "unknown action"),
            ({"type": "command", "action": {"CreateOrder": {}}}, None, "id"),
            ({"type": "command", "id": 7, "action": {"CreateOrder": {}}}, None, "id"),
            ({"type": "command", "id": "x" * 129, "action": {"CreateOrder": {}}}, None,
             "id"),
            ({"type": "command", "id": "k", "idempotency_key": 5,
              "action": {"CreateOrder": {}}}, "k", "idempotency_key"),
            ({"type": "command", "id": "n", "action": "CreateOrder"}, "n",
             "exactly one member"),
            ({"type": "command", "id": "two",
              "action": {"CreateOrder": {}, "Other": {}}}, "two", "exactly one member"),
            ({"type": "command", "id": "arr", "action": {"CreateOrder": [1]}}, "arr",
             "JSON object"),
            ({"type": "command", "id": "q\"\\", "action": {"Nope": {}}}, "q\"\\",
             "unknown action"),
        ]
        for msg, cid, why in bad:
            a.send_json(msg)
            err, _ = recv_until(a, lambda m: m.get("type") == "error", "error frame")
            self.assertEqual(err["id"], cid, "%r -> %r" % (msg, err))
            self.assertIn(why, err["message"], "%r -> %r" % (msg, err))
        for text in ("[1,2]", "{\"type\":\"command\"", "\"command\""):
            a.send_text(text)
            err, _ = recv_until(a, lambda m: m.get("type") == "error", "error frame")
        # Still usable: ping and a good command.
        self.assertFalse([m for m in pings(a) if m.get("type") == "result"])
        key = fresh("k")
        a.send_json(command("good", key))
        res, _ = result_for(a, "good")
        self.assertEqual(res["status"], 201)
        self.assertEqual(executions(self.srv), 1)

    def test_client_leaving_with_commands_in_flight(self):
        pid = broadcaster_pid(self.srv)
        gone = wsclient.WSClient("127.0.0.1", self.port, timeout=15.0)
        keys = [fresh("gone") for _ in range(12)]
        for i, key in enumerate(keys):
            gone.send_json(command("g%d" % i, key))
        gone.sock.close()  # no close frame, answers still owed
        # The broadcaster (the same process) serves a second client, commands included.
        b = self.connect()
        key = fresh("k")
        b.send_json(command("after", key))
        res, _ = result_for(b, "after")
        self.assertEqual(res["status"], 201)
        self.assertEqual(res["body"]["order_id"], "ord_" + key)
        self.assertFalse([m for m in pings(b) if m.get("type") == "result"
                          and m.get("id") != "after"])
        # The commands it left behind were received before it left: they all ran, once.
        wait_until(lambda: executions(self.srv) == len(keys) + 1, ANSWER_TIMEOUT_S,
                   what="%d executions" % (len(keys) + 1))
        for key in keys:
            st, hs, body = self.srv.post("/orders", json.dumps(
                {"product_id": "p1", "quantity": 1}).encode(), key=key,
                headers={"Content-Type": "application/json"})
            self.assertEqual(st, 201)
            self.assertEqual(h.header(hs, "Idempotent-Replayed"), "true")
        self.assertEqual(executions(self.srv), len(keys) + 1)
        self.assertEqual(broadcaster_pid(self.srv), pid, "the broadcaster was restarted")
        self.assertEqual(self.srv.proc.poll(), None)


if __name__ == "__main__":
    h.main()
