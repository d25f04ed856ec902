#!/usr/bin/env python3
"""The seed-004 order service (examples/orders.c, cnerium_orders) over HTTP and WebSocket
against the real multi-process server.

Covered: create / get / events / list and their exact shapes; every validation 400
(stored and replayed like any 4xx, nothing appended); the state machine (cancel then
ship, ship then cancel: 400 naming the current status); unknown orders 404 and not
stored; If-Match (412 on a mismatch, not stored; 200 on a match; malformed 400); ETag;
retries replaying byte for byte without a second event; concurrent cancel and ship of
one order from many threads over two workers (exactly one commits, the others get 400
or 409, the stream has exactly two events); the list of a read model that every worker
keeps (orders created through both workers seen through any connection), its filters
and cursor; the WebSocket frames of the rooms "orders" and "order:<id>"; restart after
SIGTERM keeping every order, version and event; SIGKILL of the whole server during a
burst of creates (every acknowledged order exists exactly once with version 1, retries
of unacknowledged keys succeed).
"""

import http.client
import json
import os
import re
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

API = "/api/v1/orders"
JSON = {"Content-Type": "application/json"}
FLAGS = ("--realtime-host", "127.0.0.1", "--realtime-port", "0")
ORDER_ID_RE = re.compile(r"ord_[0-9a-f]{32}\Z")
TIME_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\Z")
REALTIME_RE = re.compile(r"realtime on ws://127\.0\.0\.1:(\d+)(/\S*)")
WRONG_VERSION = h.PROBLEM + "wrong-expected-version"
INVALID_TRANSITION = "urn:cnerium:orders:invalid-transition"
PRECONDITION = "urn:cnerium:orders:precondition-failed"
EVENT_TIMEOUT_S = 15.0
INT_MAX = 9007199254740991
ITEM = {"product_id": "prod-1", "name": "Widget", "quantity": 2, "unit_price_cents": 1000}


def orders_server():
    return h.binary("CNERIUM_ORDERS_EXAMPLE")


def fresh(prefix="k"):
    return "%s-%s" % (prefix, uuid.uuid4().hex)


def dumps(obj):
    return json.dumps(obj, separators=(",", ":")).encode()


def order_body(customer="cust-1", items=None):
    return dumps({"customer_id": customer, "items": items if items is not None else [ITEM]})


def ws_port(srv):
    m = REALTIME_RE.search(srv.stdout_text())
    if not m:
        raise AssertionError("no 'realtime on ws://...' line on stdout: %r" % srv.stdout_text())
    return int(m.group(1))


class OrdersCase(h.ServerTestCase):
    WORKERS = "2"

    def start(self, *args, data_dir=None):
        return self.start_server(orders_server(), *FLAGS, "--workers", self.WORKERS, *args,
                                 data_dir=data_dir)

    def place(self, srv, customer="cust-1", items=None, key=None):
        """POST /api/v1/orders; asserts 201 and returns (response, document)."""
        resp = srv.post(API, order_body(customer, items), key=key or fresh("place"),
                        headers=JSON)
        self.assertEqual(resp[0], 201, resp[2])
        return resp, parse_json(resp[2])

    def command(self, srv, order_id, verb, body=None, key=None, headers=None):
        hs = dict(JSON)
        hs.update(headers or {})
        return srv.post("%s/%s/%s" % (API, order_id, verb),
                        dumps(body) if isinstance(body, dict) else (body or b""),
                        key=key or fresh(verb), headers=hs)

    def events(self, srv, order_id, query=""):
        st, hs, body = srv.get("%s/%s/events%s" % (API, order_id, query))
        self.assertEqual(st, 200, body)
        return parse_json(body)

    def order(self, srv, order_id):
        st, hs, body = srv.get("%s/%s" % (API, order_id))
        self.assertEqual(st, 200, body)
        return hs, parse_json(body)

    def list(self, srv, query=""):
        st, hs, body = srv.get(API + query)
        self.assertEqual(st, 200, body)
        return parse_json(body)

    def assertOrderProblem(self, resp, status, type_=None):
        """A problem answered by the service's handlers (RFC 9457, with the members of the
        library's problems); returns the document."""
        st, headers, body = resp
        self.assertEqual(st, status, "status; body %r" % body[:500])
        self.assertEqual(header(headers, "Content-Type"), "application/problem+json")
        doc = parse_json(body)
        for member in ("error", "type", "title", "status", "detail"):
            self.assertIn(member, doc, "problem member %r missing in %r" % (member, doc))
        self.assertEqual(doc["status"], status)
        self.assertTrue(doc["error"])
        self.assertEqual(doc["error"], doc["detail"])
        if type_ is not None:
            self.assertEqual(doc["type"], type_)
        return doc

    def assertBadRequest(self, resp, error):
        doc = self.assertOrderProblem(resp, 400)
        self.assertEqual(doc["error"], error)
        return doc


class OrdersApiTest(OrdersCase):
    def setUp(self):
        super().setUp()
        self.srv = self.start()

    def test_health(self):
        st, hs, body = self.srv.get("/health")
        self.assertEqual(st, 200)
        self.assertEqual(header(hs, "Content-Type"), "application/json")
        self.assertEqual(parse_json(body), {"status": "ok"})

    def test_create_get_events(self):
        items = [ITEM, {"product_id": "prod-2", "name": "Gadget \u00e9", "quantity": 1,
                        "unit_price_cents": 250}]
        resp, doc = self.place(self.srv, "cust-123", items)
        self.assertEqual(set(doc), {"order_id", "status", "total_cents", "version"})
        oid = doc["order_id"]
        self.assertRegex(oid, ORDER_ID_RE)
        self.assertEqual(doc, {"order_id": oid, "status": "placed", "total_cents": 2250,
                               "version": 1})
        self.assertEqual(header(resp[1], "Location"), "%s/%s" % (API, oid))
        self.assertNotReplayed(resp)

        hs, got = self.order(self.srv, oid)
        self.assertEqual(header(hs, "ETag"), '"1"')
        self.assertEqual(set(got), {"order_id", "customer_id", "items", "status", "total_cents",
                                    "created_at", "updated_at", "version"})
        self.assertEqual(got["customer_id"], "cust-123")
        self.assertEqual(got["items"], items)
        self.assertEqual((got["status"], got["total_cents"], got["version"]),
                         ("placed", 2250, 1))
        self.assertRegex(got["created_at"], TIME_RE)
        self.assertEqual(got["created_at"], got["updated_at"])

        ev = self.events(self.srv, oid)
        self.assertEqual(ev["order_id"], oid)
        self.assertEqual(ev["version"], 1)
        self.assertIsNone(ev["next_from"])
        self.assertEqual(len(ev["events"]), 1)
        e = ev["events"][0]
        self.assertEqual(set(e), {"type", "version", "position", "created_at", "data"})
        self.assertEqual((e["type"], e["version"]), ("OrderPlaced", 1))
        self.assertIsInstance(e["position"], int)
        self.assertGreaterEqual(e["position"], 1)
        self.assertEqual(e["created_at"], got["created_at"])
        self.assertEqual(e["data"], {"order_id": oid, "customer_id": "cust-123",
                                     "items": items, "total_cents": 2250})

        listed = self.list(self.srv, "?customer_id=cust-123")
        self.assertEqual(listed["next_after"], None)
        self.assertEqual(listed["orders"], [{
            "order_id": oid, "customer_id": "cust-123", "status": "placed",
            "total_cents": 2250, "version": 1, "created_at": got["created_at"],
            "updated_at": got["updated_at"]}])

    def test_exact_integers(self):
        # 2^52 * 1024 = 2^62: exact in int64, not in a double's printed form.
        big = 4503599627370496
        resp, doc = self.place(self.srv, "cust-big", [
            {"product_id": "p", "name": "n", "quantity": big, "unit_price_cents": 1024}])
        self.assertEqual(doc["total_cents"], 4611686018427387904)
        self.assertIn(b'"total_cents":4611686018427387904', resp[2])
        hs, got = self.order(self.srv, doc["order_id"])
        self.assertEqual(got["total_cents"], 4611686018427387904)
        self.assertEqual(got["items"][0]["quantity"], big)
        # 1e3 is the integer 1000, and the largest exact integer is accepted.
        body = (b'{"customer_id":"cust-e","items":[{"product_id":"p","name":"n",'
                b'"quantity":1e3,"unit_price_cents":%d}]}' % 0)
        resp = self.srv.post(API, body, key=fresh(), headers=JSON)
        self.assertEqual(resp[0], 201, resp[2])
        got = self.order(self.srv, parse_json(resp[2])["order_id"])[1]
        self.assertEqual(got["items"][0]["quantity"], 1000)
        self.place(self.srv, "cust-max", [{"product_id": "p", "name": "n",
                                           "quantity": INT_MAX, "unit_price_cents": 1}])

    def test_validation_errors(self):
        def item(**kw):
            it = dict(ITEM)
            for k, v in kw.items():
                if v is None:
                    del it[k]
                else:
                    it[k] = v
            return it

        def body(customer="cust-v", items=None):
            return order_body(customer, items if items is not None else [ITEM])

        not_int = "Field items[0].quantity must be an integer from 1 to 9007199254740991"
        price_not_int = ("Field items[0].unit_price_cents must be an integer from 0 to "
                         "9007199254740991")
        cases = [
            ("not-json", b"customer_id=c", "Request body must be a JSON object"),
            ("empty", b"", "Request body must be a JSON object"),
            ("array", b"[]", "Request body must be a JSON object"),
            ("no-customer", dumps({"items": [ITEM]}), "Missing required field: customer_id"),
            ("customer-number", dumps({"customer_id": 7, "items": [ITEM]}),
             "Field customer_id must be a string"),
            ("customer-empty", body(""), "Field customer_id must not be empty"),
            ("no-items", dumps({"customer_id": "c"}), "Missing required field: items"),
            ("items-object", dumps({"customer_id": "c", "items": {}}),
             "Field items must be an array"),
            ("items-empty", body(items=[]), "Field items must not be empty"),
            ("item-number", body(items=[5]), "Field items[0] must be an object"),
            ("no-product", body(items=[item(product_id=None)]),
             "Missing required field: items[0].product_id"),
            ("product-empty", body(items=[item(product_id="")]),
             "Field items[0].product_id must be a non-empty string"),
            ("no-name", body(items=[ITEM, item(name=None)]),
             "Missing required field: items[1].name"),
            ("no-quantity", body(items=[item(quantity=None)]),
             "Missing required field: items[0].quantity"),
            ("quantity-zero", body(items=[item(quantity=0)]),
             "Field items[0].quantity must be greater than zero"),
            ("quantity-negative", body(items=[item(quantity=-3)]),
             "Field items[0].quantity must be greater than zero"),
            ("quantity-fraction", body(items=[item(quantity=1.5)]), not_int),
            ("quantity-string", body(items=[item(quantity="2")]), not_int),
            ("quantity-2^53", body(items=[item(quantity=INT_MAX + 1)]), not_int),
            ("quantity-1e30", b'{"customer_id":"c","items":[{"product_id":"p","name":"n",'
                              b'"quantity":1e30,"unit_price_cents":1}]}', not_int),
            ("price-negative", body(items=[item(unit_price_cents=-1)]),
             "Field items[0].unit_price_cents must not be negative"),
            ("price-fraction", body(items=[item(unit_price_cents=2.5)]), price_not_int),
            ("price-null", body(items=[item(unit_price_cents=None)]),
             "Missing required field: items[0].unit_price_cents"),
            ("overflow-multiply", body(items=[item(quantity=INT_MAX, unit_price_cents=INT_MAX)]),
             "Order total overflows 64 bits at items[0]"),
            ("overflow-add", body(items=[item(quantity=4503599627370496, unit_price_cents=1024),
                                         item(quantity=4503599627370496,
                                              unit_price_cents=1024)]),
             "Order total overflows 64 bits at items[1]"),
        ]
        for name, raw, error in cases:
            with self.subTest(name):
                key = fresh(name)
                first = self.srv.post(API, raw, key=key, headers=JSON)
                self.assertBadRequest(first, error)
                self.assertNotReplayed(first)
                # A validation 400 is the command's result: stored, replayed.
                self.assertReplayOf(first, self.srv.post(API, raw, key=key, headers=JSON))
        # Nothing was appended for any of them.
        for customer in ("cust-v", "c", ""):
            self.assertEqual(self.list(self.srv, "?customer_id=" + customer)["orders"], [])

    def test_invalid_utf8_is_a_400(self):
        # Not declared as JSON, so the layer does not refuse it up front; the body is
        # still no JSON object to the service (events must be UTF-8).
        raw = (b'{"customer_id":"caf\xc3","items":[{"product_id":"p","name":"n",'
               b'"quantity":1,"unit_price_cents":1}]}')
        key = fresh("utf8")
        first = self.srv.post(API, raw, key=key, headers={"Content-Type": "text/plain"})
        self.assertBadRequest(first, "Request body must be a JSON object")
        self.assertReplayOf(first, self.srv.post(API, raw, key=key,
                                                 headers={"Content-Type": "text/plain"}))

    def test_cancel_then_ship(self):
        oid = self.place(self.srv)[1]["order_id"]
        resp = self.command(self.srv, oid, "cancel", {"reason": "changed my mind"})
        self.assertEqual(resp[0], 200, resp[2])
        self.assertEqual(parse_json(resp[2]), {"order_id": oid, "status": "cancelled",
                                               "version": 2})
        hs, got = self.order(self.srv, oid)
        self.assertEqual((got["status"], got["reason"], got["version"]),
                         ("cancelled", "changed my mind", 2))
        self.assertNotIn("tracking_number", got)
        self.assertEqual(header(hs, "ETag"), '"2"')

        for verb, body in (("ship", {"tracking_number": "T1"}), ("cancel", None)):
            with self.subTest(verb):
                key = fresh(verb)
                first = self.command(self.srv, oid, verb, body, key=key)
                doc = self.assertOrderProblem(first, 400, INVALID_TRANSITION)
                self.assertEqual(doc["current_status"], "cancelled")
                self.assertEqual(doc["order_id"], oid)
                self.assertEqual(doc["error"], "Order cannot be %s: it is cancelled"
                                 % ("shipped" if verb == "ship" else "cancelled"))
                # Final state: the 400 is stored.
                self.assertReplayOf(first, self.command(self.srv, oid, verb, body, key=key))
        ev = self.events(self.srv, oid)
        self.assertEqual([e["type"] for e in ev["events"]], ["OrderPlaced", "OrderCancelled"])
        self.assertEqual(ev["events"][1]["data"], {"order_id": oid, "reason": "changed my mind"})

    def test_cancel_without_reason(self):
        oid = self.place(self.srv)[1]["order_id"]
        resp = self.command(self.srv, oid, "cancel", b"")
        self.assertEqual(resp[0], 200, resp[2])
        self.assertEqual(self.order(self.srv, oid)[1]["reason"], "Cancelled by customer")
        self.assertBadRequest(self.command(self.srv, oid, "cancel", {"reason": 5}),
                              "Field reason must be a string")
        self.assertBadRequest(self.command(self.srv, oid, "cancel", b"[1]"),
                              "Request body must be empty or a JSON object")

    def test_ship_then_cancel(self):
        oid = self.place(self.srv)[1]["order_id"]
        resp = self.command(self.srv, oid, "ship", {"tracking_number": "TRACK123"})
        self.assertEqual(resp[0], 200, resp[2])
        self.assertEqual(parse_json(resp[2]), {"order_id": oid, "status": "shipped",
                                               "tracking_number": "TRACK123", "version": 2})
        got = self.order(self.srv, oid)[1]
        self.assertEqual((got["status"], got["tracking_number"], got["version"]),
                         ("shipped", "TRACK123", 2))
        self.assertNotIn("reason", got)
        doc = self.assertOrderProblem(self.command(self.srv, oid, "cancel"), 400,
                                      INVALID_TRANSITION)
        self.assertEqual(doc["current_status"], "shipped")
        self.assertEqual(doc["error"], "Order cannot be cancelled: it is shipped")
        doc = self.assertOrderProblem(
            self.command(self.srv, oid, "ship", {"tracking_number": "T2"}), 400,
            INVALID_TRANSITION)
        self.assertEqual(doc["current_status"], "shipped")
        self.assertEqual(self.events(self.srv, oid)["version"], 2)

    def test_ship_validation(self):
        oid = self.place(self.srv)[1]["order_id"]
        for body, error in ((None, "Missing required field: tracking_number"),
                            ({}, "Missing required field: tracking_number"),
                            ({"tracking_number": ""},
                             "Field tracking_number must be a non-empty string"),
                            ({"tracking_number": 12},
                             "Field tracking_number must be a non-empty string"),
                            (b"TRACK", "Request body must be a JSON object")):
            with self.subTest(body=body):
                self.assertBadRequest(self.command(self.srv, oid, "ship", body), error)
        self.assertEqual(self.order(self.srv, oid)[1]["status"], "placed")

    def test_unknown_order_404_not_stored(self):
        unknown = "ord_" + "0" * 32
        for verb, body in (("cancel", None), ("ship", {"tracking_number": "T"})):
            with self.subTest(verb):
                key = fresh(verb)
                first = self.command(self.srv, unknown, verb, body, key=key)
                self.assertOrderProblem(first, 404)
                # Not stored: the same key runs again (and answers 404 again, afresh).
                again = self.command(self.srv, unknown, verb, body, key=key)
                self.assertOrderProblem(again, 404)
                self.assertNotReplayed(again)
        for path in ("%s/%s" % (API, unknown), "%s/%s/events" % (API, unknown),
                     API + "/not-an-order", API + "/not-an-order/events"):
            with self.subTest(path):
                self.assertOrderProblem(self.srv.get(path), 404)
        self.assertOrderProblem(self.command(self.srv, "ord_xyz", "cancel"), 404)

    def test_if_match(self):
        oid = self.place(self.srv)[1]["order_id"]
        key = fresh("ifm")
        first = self.command(self.srv, oid, "cancel", headers={"If-Match": '"2"'}, key=key)
        doc = self.assertOrderProblem(first, 412, PRECONDITION)
        self.assertEqual(doc["current_version"], 1)
        again = self.command(self.srv, oid, "cancel", headers={"If-Match": '"2"'}, key=key)
        self.assertOrderProblem(again, 412, PRECONDITION)
        self.assertNotReplayed(again)
        for bad in ('W/"1"', "1", '"1', '"x"', '"1", "2"', '""'):
            with self.subTest(bad):
                self.assertOrderProblem(self.command(self.srv, oid, "ship",
                                                {"tracking_number": "T"},
                                                headers={"If-Match": bad}), 400)
        self.assertEqual(self.events(self.srv, oid)["version"], 1)
        resp = self.command(self.srv, oid, "ship", {"tracking_number": "T9"},
                            headers={"If-Match": '"1"'})
        self.assertEqual(resp[0], 200, resp[2])
        self.assertEqual(parse_json(resp[2])["version"], 2)
        hs, got = self.order(self.srv, oid)
        self.assertEqual(header(hs, "ETag"), '"2"')
        # The ETag of an old read no longer matches.
        self.assertOrderProblem(self.command(self.srv, oid, "cancel", headers={"If-Match": '"1"'}),
                           412, PRECONDITION)
        # If-Match on an order that does not exist: a failed precondition.
        self.assertOrderProblem(self.command(self.srv, "ord_" + "1" * 32, "cancel",
                                        headers={"If-Match": '"1"'}), 412, PRECONDITION)

    def test_retries_replay_and_append_once(self):
        key = fresh("create")
        body = order_body("cust-retry")
        first = self.srv.post(API, body, key=key, headers=JSON)
        self.assertEqual(first[0], 201, first[2])
        oid = parse_json(first[2])["order_id"]
        for _ in range(3):
            self.assertReplayOf(first, self.srv.post(API, body, key=key, headers=JSON))
        self.assertEqual(self.events(self.srv, oid)["version"], 1)
        self.assertEqual(len(self.list(self.srv, "?customer_id=cust-retry")["orders"]), 1)
        self.assertProblem(self.srv.post(API, order_body("other"), key=key, headers=JSON), 409,
                           h.KEY_REUSED)

        ckey = fresh("cancel")
        c1 = self.command(self.srv, oid, "cancel", {"reason": "r"}, key=ckey)
        self.assertEqual(c1[0], 200, c1[2])
        self.assertReplayOf(c1, self.command(self.srv, oid, "cancel", {"reason": "r"}, key=ckey))
        ev = self.events(self.srv, oid)
        self.assertEqual(ev["version"], 2)
        self.assertEqual(len(ev["events"]), 2)

    def test_events_paging(self):
        oid = self.place(self.srv)[1]["order_id"]
        self.assertEqual(self.command(self.srv, oid, "ship", {"tracking_number": "T"})[0], 200)
        page1 = self.events(self.srv, oid, "?limit=1")
        self.assertEqual([e["version"] for e in page1["events"]], [1])
        self.assertEqual(page1["next_from"], 2)
        page2 = self.events(self.srv, oid, "?from=2&limit=1")
        self.assertEqual([e["type"] for e in page2["events"]], ["OrderShipped"])
        self.assertIsNone(page2["next_from"])
        self.assertGreater(page2["events"][0]["position"], page1["events"][0]["position"])
        self.assertEqual(self.events(self.srv, oid, "?from=3")["events"], [])
        for q in ("?from=0", "?from=x", "?limit=0", "?limit=1001"):
            with self.subTest(q):
                self.assertOrderProblem(self.srv.get("%s/%s/events%s" % (API, oid, q)), 400)

    def test_list_filters_and_cursor(self):
        cust = fresh("cust")
        ids = [self.place(self.srv, cust)[1]["order_id"] for _ in range(7)]
        self.assertEqual(self.command(self.srv, ids[1], "cancel")[0], 200)
        self.assertEqual(self.command(self.srv, ids[2], "ship", {"tracking_number": "T"})[0],
                         200)
        got = self.list(self.srv, "?customer_id=" + cust)
        self.assertEqual([o["order_id"] for o in got["orders"]], ids)
        self.assertEqual([o["status"] for o in got["orders"][:3]],
                         ["placed", "cancelled", "shipped"])
        self.assertEqual([o["version"] for o in got["orders"][:3]], [1, 2, 2])
        placed = self.list(self.srv, "?status=placed&customer_id=" + cust)
        self.assertEqual([o["order_id"] for o in placed["orders"]], [ids[0]] + ids[3:])
        self.assertEqual([o["order_id"] for o in
                          self.list(self.srv, "?status=shipped&customer_id=" + cust)["orders"]],
                         [ids[2]])
        # Pages of 3 through the cursor.
        seen, after = [], None
        for _ in range(5):
            q = "?limit=3&customer_id=" + cust + ("&after=" + after if after else "")
            page = self.list(self.srv, q)
            seen += [o["order_id"] for o in page["orders"]]
            after = page["next_after"]
            if after is None:
                break
            self.assertEqual(after, seen[-1])
        self.assertEqual(seen, ids)
        for q in ("?limit=0", "?limit=501", "?limit=x", "?status=lost",
                  "?after=nope", "?after=ord_" + "f" * 32):
            with self.subTest(q):
                self.assertOrderProblem(self.srv.get(API + q), 400)


class EventLimitTest(OrdersCase):
    def test_order_over_stream_event_max_is_a_400(self):
        srv = self.start("--stream-event-max", "1024")
        items = [{"product_id": "p%d" % i, "name": "n" * 100, "quantity": 1,
                  "unit_price_cents": 1} for i in range(10)]
        resp = srv.post(API, order_body("cust-big", items), key=fresh(), headers=JSON)
        doc = self.assertBadRequest(resp, resp[2] and parse_json(resp[2]).get("error"))
        self.assertRegex(doc["error"], r"^The event for this request would be \d+ bytes, "
                                       r"more than the limit of 1024$")
        self.assertEqual(self.list(srv, "?customer_id=cust-big")["orders"], [])
        self.place(srv, "cust-small", items[:2])


class ConcurrencyTest(OrdersCase):
    """Cancel and ship of one order released together from many threads, on two workers
    with several request threads each: exactly one command commits per order."""

    ORDERS = 30
    PER_VERB = 3

    def test_cancel_and_ship_race(self):
        srv = self.start("--threads", "4")
        wins = {"cancel": 0, "ship": 0}
        conflicts = 0
        for n in range(self.ORDERS):
            oid = self.place(srv, "cust-race")[1]["order_id"]
            reqs = []
            for i in range(self.PER_VERB):
                reqs.append(("%s/%s/cancel" % (API, oid), dumps({"reason": "c%d" % i}),
                             fresh("c")))
                reqs.append(("%s/%s/ship" % (API, oid), dumps({"tracking_number": "T%d" % i}),
                             fresh("s")))
            results = h.run_together(srv, reqs)
            statuses = []
            for (path, body, key), r in zip(reqs, results):
                if isinstance(r, Exception):
                    self.fail("request %s failed: %r" % (path, r))
                statuses.append(r[0])
                if r[0] == 409:
                    conflicts += 1
                    doc = self.assertProblem(r[:3], 409, WRONG_VERSION)
                    # The key is free again: its retry now sees the final state.
                    again = srv.post(path, body, key=key)
                    self.assertOrderProblem(again, 400, INVALID_TRANSITION)
                    self.assertNotReplayed(again)
                elif r[0] == 400:
                    self.assertOrderProblem(r[:3], 400, INVALID_TRANSITION)
            self.assertEqual(statuses.count(200), 1, "order %d: %r" % (n, statuses))
            self.assertEqual(statuses.count(200) + statuses.count(400) + statuses.count(409),
                             len(statuses), statuses)
            winner = reqs[statuses.index(200)][0].rsplit("/", 1)[1]
            wins[winner] += 1
            ev = self.events(srv, oid)
            self.assertEqual(ev["version"], 2)
            self.assertEqual([e["type"] for e in ev["events"]],
                             ["OrderPlaced",
                              "OrderCancelled" if winner == "cancel" else "OrderShipped"])
            self.assertEqual(self.order(srv, oid)[1]["status"],
                             "cancelled" if winner == "cancel" else "shipped")
        sys.stderr.write("\n  race: %d orders, wins %r, %d conflicts (409)\n"
                         % (self.ORDERS, wins, conflicts))


class ReadModelTest(OrdersCase):
    def test_list_sees_orders_from_every_worker(self):
        srv = self.start("--threads", "2")
        cust = fresh("multi")
        n = 40
        results = h.run_together(srv, [(API, order_body(cust), fresh("m")) for _ in range(n)])
        ids = []
        for r in results:
            self.assertNotIsInstance(r, Exception)
            self.assertEqual(r[0], 201, r[2])
            ids.append(parse_json(r[2])["order_id"])
        # Each list request on a fresh connection, landing on either worker: all of them.
        for i in range(10):
            got = self.list(srv, "?limit=500&customer_id=" + cust)
            self.assertEqual(sorted(o["order_id"] for o in got["orders"]), sorted(ids),
                             "list request %d" % i)
        # A later change is seen by every worker's read model too.
        self.assertEqual(self.command(srv, ids[0], "cancel")[0], 200)
        for i in range(6):
            got = self.list(srv, "?status=cancelled&customer_id=" + cust)
            self.assertEqual([o["order_id"] for o in got["orders"]], [ids[0]])


# -- WebSocket --


def masked_frame(text):
    payload = text.encode()
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else
                            bytes([0x80 | 126]) + struct.pack("!H", n))
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class _FirstWrite:
    """A socket whose first sendall carries extra bytes (a frame behind the upgrade)."""

    def __init__(self, sock, extra):
        self._sock = sock
        self._extra = extra

    def sendall(self, data):
        extra, self._extra = self._extra, b""
        self._sock.sendall(data + extra)

    def __getattr__(self, name):
        return getattr(self._sock, name)


class SubscribedClient(wsclient.WSClient):
    """A client whose subscribe message travels in the same write as the upgrade request,
    so it is in the room before the first event frame of a ?since= resume is sent."""

    def __init__(self, port, path, room, timeout=EVENT_TIMEOUT_S):
        self._first = masked_frame(json.dumps({"type": "subscribe", "room": room}))
        super().__init__("127.0.0.1", port, path, timeout)

    def _handshake(self, host, port, path, timeout, headers=(), welcome=True):
        real = self.sock
        self.sock = _FirstWrite(real, self._first)
        try:
            super()._handshake(host, port, path, timeout, headers, welcome)
        finally:
            self.sock = real


def next_event(client, timeout=EVENT_TIMEOUT_S):
    """The next event frame, skipping control replies."""
    deadline = time.monotonic() + timeout
    while True:
        msg = client.recv_json(max(0.01, deadline - time.monotonic()))
        if msg.get("type") == "event":
            return msg
        if msg.get("type") not in ("subscribed", "pong"):
            raise AssertionError("unexpected message %r" % (msg,))


class WebSocketTest(OrdersCase):
    def subscribe(self, port, room):
        c = wsclient.WSClient("127.0.0.1", port, "/ws", timeout=EVENT_TIMEOUT_S)
        self.addCleanup(c.close)
        c.send_json({"type": "subscribe", "room": room})
        self.assertEqual(c.recv_json(EVENT_TIMEOUT_S), {"type": "subscribed", "room": room})
        return c

    def assertFrame(self, msg, type_, data, oid, version, position, room):
        self.assertEqual(set(msg), {"type", "action", "stream", "version", "position", "seq",
                                    "room"}, msg)
        self.assertEqual(msg["type"], "event")
        self.assertEqual(msg["action"], {type_: data})
        self.assertEqual(msg["stream"], "order-" + oid)
        self.assertEqual((msg["version"], msg["position"]), (version, position))
        self.assertEqual(msg["room"], room)
        self.assertIsInstance(msg["seq"], int)

    def test_room_frames(self):
        srv = self.start()
        port = ws_port(srv)
        everyone = self.subscribe(port, "orders")
        oid = self.place(srv, "cust-ws")[1]["order_id"]
        placed = self.events(srv, oid)["events"][0]
        f1 = next_event(everyone)
        self.assertFrame(f1, "OrderPlaced", placed["data"], oid, 1, placed["position"],
                         "orders")

        # A client in room order:<id> from before the OrderPlaced event (resumed with
        # ?since=): OrderPlaced, then OrderShipped, each once.
        room = "order:" + oid
        one = SubscribedClient(port, "/ws?since=%d" % max(0, f1["seq"] - 1), room)
        self.addCleanup(one.close)
        resp = self.command(srv, oid, "ship", {"tracking_number": "TRACK-WS"})
        self.assertEqual(resp[0], 200, resp[2])
        shipped = self.events(srv, oid)["events"][1]
        a = next_event(one)
        self.assertFrame(a, "OrderPlaced", placed["data"], oid, 1, placed["position"], room)
        b = next_event(one)
        self.assertFrame(b, "OrderShipped", {"order_id": oid, "tracking_number": "TRACK-WS"},
                         oid, 2, shipped["position"], room)
        self.assertGreater(b["seq"], a["seq"])
        f2 = next_event(everyone)
        self.assertFrame(f2, "OrderShipped", shipped["data"], oid, 2, shipped["position"],
                         "orders")

        # Rejected and replayed commands publish nothing: the next frame either client
        # sees is the next order's.
        self.assertEqual(self.command(srv, oid, "cancel")[0], 400)
        oid2 = self.place(srv, "cust-ws")[1]["order_id"]
        f3 = next_event(everyone)
        self.assertEqual((f3["stream"], f3["version"]), ("order-" + oid2, 1))

    def test_commands(self):
        """PlaceOrder / ShipOrder / CancelOrder over the WebSocket run the durable routes:
        results reach the sender, the same key replays, the state machine still applies."""
        srv = self.start()
        c = self.subscribe(ws_port(srv), "orders")

        def run(cid, key, action, obj):
            c.send_json({"type": "command", "id": cid, "idempotency_key": key,
                         "action": {action: obj}})
            deadline = time.monotonic() + EVENT_TIMEOUT_S
            while True:
                msg = c.recv_json(max(0.01, deadline - time.monotonic()))
                if msg.get("type") in ("result", "error") and msg.get("id") == cid:
                    return msg

        key = fresh("wsplace")
        doc = {"customer_id": "cust-cmd", "items": [ITEM]}
        placed = run("p1", key, "PlaceOrder", doc)
        self.assertEqual((placed["type"], placed["status"], placed["replayed"]),
                         ("result", 201, False), placed)
        oid = placed["body"]["order_id"]
        self.assertEqual(placed["body"]["version"], 1)
        again = run("p2", key, "PlaceOrder", doc)
        self.assertEqual((again["status"], again["replayed"], again["body"]),
                         (201, True, placed["body"]))

        shipped = run("s1", fresh("wsship"), "ShipOrder",
                      {"order_id": oid, "tracking_number": "TRACK-CMD"})
        self.assertEqual((shipped["status"], shipped["body"]["status"],
                          shipped["body"]["version"]), (200, "shipped", 2), shipped)
        refused = run("c1", fresh("wscancel"), "CancelOrder", {"order_id": oid})
        self.assertEqual(refused["status"], 400, refused)
        missing = run("c2", fresh("wscancel"), "CancelOrder", {})
        self.assertEqual(missing["type"], "error", missing)

        # Exactly two events in the stream: the replay and the refusal appended nothing.
        events = self.events(srv, oid)["events"]
        self.assertEqual([e["type"] for e in events], ["OrderPlaced", "OrderShipped"])


class RestartTest(OrdersCase):
    def test_sigterm_restart_keeps_everything(self):
        data_dir = self.make_data_dir()
        srv = self.start(data_dir=data_dir)
        cust = fresh("restart")
        ids = [self.place(srv, cust)[1]["order_id"] for _ in range(5)]
        self.assertEqual(self.command(srv, ids[0], "cancel", {"reason": "x"})[0], 200)
        self.assertEqual(self.command(srv, ids[1], "ship", {"tracking_number": "T"})[0], 200)
        ckey = fresh("cancel")
        c = self.command(srv, ids[2], "cancel", key=ckey)
        self.assertEqual(c[0], 200)
        before = {oid: (self.order(srv, oid)[1], srv.get("%s/%s/events" % (API, oid))[2])
                  for oid in ids}
        listed = self.list(srv, "?customer_id=" + cust)
        self.assertEqual(srv.stop(), 0)

        srv2 = self.restart_server(orders_server(), data_dir, *FLAGS, "--workers", "2")
        for oid in ids:
            self.assertEqual(self.order(srv2, oid)[1], before[oid][0])
            self.assertEqual(srv2.get("%s/%s/events" % (API, oid))[2], before[oid][1],
                             "events of %s, byte for byte" % oid)
        self.assertEqual(self.list(srv2, "?customer_id=" + cust), listed)
        self.assertReplayOf(c, self.command(srv2, ids[2], "cancel", key=ckey))
        # The order machine goes on where it stopped.
        self.assertEqual(self.command(srv2, ids[3], "ship", {"tracking_number": "T2"})[0], 200)
        self.assertEqual(self.events(srv2, ids[3])["version"], 2)

    def test_sigkill_during_creates(self):
        data_dir = self.make_data_dir()
        srv = self.start(data_dir=data_dir)
        lock = threading.Lock()
        acked = {}   # key -> (body, response)
        unacked = {}  # key -> body
        stop = threading.Event()
        sent = [0]

        def run(t):
            conn = srv.connection(10.0)
            i = 0
            while not stop.is_set() and i < 400:
                key = "kill-%d-%d-%s" % (t, i, uuid.uuid4().hex[:8])
                body = order_body("cust-" + key)
                i += 1
                try:
                    r = h.send_request(conn, "POST", API, body,
                                       [("Content-Type", "application/json"),
                                        ("Idempotency-Key", key)])
                except (OSError, http.client.HTTPException):
                    with lock:
                        unacked[key] = body
                    conn.close()
                    if stop.is_set():
                        return
                    conn = srv.connection(10.0)
                    continue
                with lock:
                    sent[0] += 1
                    if r[0] == 201:
                        acked[key] = (body, r)
                    else:
                        unacked[key] = body
            conn.close()

        threads = [threading.Thread(target=run, args=(t,), daemon=True) for t in range(6)]
        for t in threads:
            t.start()
        wait_until(lambda: len(acked) >= 40, 60.0, what="40 acknowledged creates")
        srv.kill_group()  # SIGKILL to every process of the server at once
        stop.set()
        for t in threads:
            t.join(30.0)
        self.assertFalse(any(t.is_alive() for t in threads), "posting threads stuck")

        srv2 = self.restart_server(orders_server(), data_dir, *FLAGS, "--workers", "2")
        for key, (body, first) in acked.items():
            oid = parse_json(first[2])["order_id"]
            got = self.order(srv2, oid)[1]
            self.assertEqual((got["version"], got["status"]), (1, "placed"), key)
            self.assertEqual(len(self.events(srv2, oid)["events"]), 1)
            self.assertReplayOf(first, srv2.post(API, body, key=key, headers=JSON))
        # Unacknowledged keys: a retry succeeds (stored before the kill or run now).
        for key, body in unacked.items():
            r = srv2.post(API, body, key=key, headers=JSON)
            self.assertEqual(r[0], 201, (key, r[2]))
        # Exactly once: every customer (one per key) has one order in the read model.
        listed = {}
        after = None
        for _ in range(100):
            page = self.list(srv2, "?limit=500" + ("&after=" + after if after else ""))
            for o in page["orders"]:
                listed.setdefault(o["customer_id"], []).append(o["order_id"])
            after = page["next_after"]
            if after is None:
                break
        for key in list(acked) + list(unacked):
            self.assertEqual(len(listed.get("cust-" + key, [])), 1, key)
        sys.stderr.write("\n  kill -9: %d acknowledged, %d unacknowledged retried\n"
                         % (len(acked), len(unacked)))


if __name__ == "__main__":
    h.main()
