#!/usr/bin/env python3
"""Realtime access control over real WebSocket connections: --realtime-secret (HS256
tokens with exp, rooms and all claims, in ?token= or Authorization: Bearer) and
--realtime-origins.

Server: the contract fixture with CNERIUM_FIXTURE_REALTIME=1 (POST /rooms/{room} is
durable and emits room.message to that room; POST /announce is an ordinary route that
emits an announcement to everyone). Tokens are minted here with hmac + hashlib + base64,
as any client would.

Covered: without a token, with a wrong signature, alg "none", an expired or malformed
token, the upgrade is answered 401 (never upgraded); a valid token in the query or the
header is let in; a client only receives events of the rooms its token names (subscribing
to another room is refused) and events sent to everyone only with "all": true, also
when it resumes with ?since=; a connection whose token expires is closed instead of
receiving more; an Origin outside --realtime-origins is 403, a listed one or none is let
in; a secret shorter than 32 bytes is a configuration error (exit 2); without the flags
anyone connects, as before.
"""

import base64
import hashlib
import hmac
import json
import os
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import cnharness as h  # noqa: E402
from cnharness import wait_until  # noqa: E402
import test_realtime as rt  # noqa: E402
import wsclient  # noqa: E402
from wsclient import WSClosed  # noqa: E402

EVENT_TIMEOUT_S = rt.EVENT_TIMEOUT_S
SECRET = "test-secret-0123456789abcdef-0123456789"


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def mint(claims, secret=SECRET, header=None, sign=True):
    head = b64url(json.dumps(header or {"alg": "HS256", "typ": "JWT"}).encode())
    body = b64url(json.dumps(claims).encode())
    signing = (head + "." + body).encode()
    sig = b64url(hmac.new(secret.encode(), signing, hashlib.sha256).digest()) if sign else ""
    return head + "." + body + "." + sig


def claims(rooms=(), all_=None, exp_in=600):
    c = {"exp": int(time.time()) + exp_in, "rooms": list(rooms)}
    if all_ is not None:
        c["all"] = all_
    return c


class AuthCase(rt.RealtimeCase):
    def start_fixture(self, *extra):
        srv = self.start_server(h.contract_server(), "--workers", "1", *extra,
                                env=rt.FIXTURE_ENV)
        return srv, rt.ws_port(srv)

    def start_secured(self, *extra):
        return self.start_fixture("--realtime-secret", SECRET, *extra)

    def refused(self, port, path, headers=(), status=401):
        with self.assertRaises(wsclient.HandshakeRefused, msg=path) as cm:
            c = rt.Client(port, path, headers=headers)
            c.close()
        self.assertEqual(cm.exception.status, status, cm.exception)
        self.assertIn(b'"error"', cm.exception.body)
        return cm.exception

    def room_post(self, srv, room, text):
        r = srv.post("/rooms/" + room, text.encode(), key=rt.fresh("room"))
        self.assertEqual(r[0], 201, r[2])

    def announce(self, srv, text, seq):
        r = srv.post("/announce", text.encode())
        self.assertEqual(r[0], 200, r[2])
        wait_until(lambda: rt.metric(srv, "cnerium_events_last_seq") >= seq, 10.0,
                   what="announcement committed as event %d" % seq)

    def subscribe(self, c, room, ok=True):
        c.send_json({"type": "subscribe", "room": room})
        msg = c.recv_json(EVENT_TIMEOUT_S)
        if ok:
            self.assertEqual(msg, {"type": "subscribed", "room": room})
        else:
            self.assertEqual(msg.get("type"), "error", msg)


class TokenTest(AuthCase):
    def test_missing_or_invalid_tokens_are_401(self):
        srv, port = self.start_secured()
        good = claims(["*"], True)
        cases = [
            ("no token", "/ws", ()),
            ("empty bearer", "/ws", (("Authorization", "Bearer "),)),
            ("basic auth", "/ws", (("Authorization", "Basic dXNlcjpwYXNz"),)),
            ("wrong secret", "/ws?token=" + mint(good, secret=SECRET + "x"), ()),
            ("alg none, unsigned", "/ws?token=" + mint(good, header={"alg": "none"},
                                                       sign=False), ()),
            ("alg none, signed", "/ws?token=" + mint(good, header={"alg": "none"}), ()),
            ("alg HS512", "/ws?token=" + mint(good, header={"alg": "HS512"}), ()),
            ("expired", "/ws?token=" + mint(claims(["*"], True, exp_in=-1)), ()),
            ("no exp", "/ws?token=" + mint({"rooms": ["*"], "all": True}), ()),
            ("no rooms", "/ws?token=" + mint({"exp": int(time.time()) + 60}), ()),
            ("rooms not a list", "/ws?token=" + mint({"exp": int(time.time()) + 60,
                                                      "rooms": "*"}), ()),
            ("garbage", "/ws?token=not.a.token", ()),
            ("padded base64", "/ws?token=" + mint(good) + "%3D%3D", ()),
            ("bearer garbage", "/ws", (("Authorization", "Bearer x.y.z"),)),
        ]
        for what, path, headers in cases:
            with self.subTest(what):
                e = self.refused(port, path, headers)
                self.assertIn(b"token", e.body)
        # The server is unharmed and counts the refusals.
        self.assertGreaterEqual(rt.metric(srv, "cnerium_ws_client_errors_total"), len(cases))
        self.assertEqual(rt.metric(srv, "cnerium_ws_clients"), 0)
        # A valid token, in the query or the header.
        c = self.connect(port, "/ws?token=" + mint(good))
        self.assertEqual(c.ping(), [])
        c2 = self.connect(port, "/ws", headers=(("Authorization", "Bearer " + mint(good)),))
        self.assertEqual(c2.ping(), [])
        # since= and a token together.
        c3 = self.connect(port, "/ws?since=0&token=" + mint(good))
        self.assertEqual(c3.ping(), [])

    def test_clients_receive_only_what_their_token_allows(self):
        srv, port = self.start_secured()
        red = self.connect(port, "/ws?token=" + mint(claims(["red"])))
        red_all = self.connect(port, "/ws?token=" + mint(claims(["red"], True)))
        star = self.connect(port, "/ws?token=" + mint(claims(["*"], True)))
        for c in (red, red_all, star):
            self.subscribe(c, "red")
        # Rooms outside the claim cannot be subscribed to.
        self.subscribe(red, "blue", ok=False)
        self.subscribe(red_all, "blue", ok=False)
        self.subscribe(star, "blue")

        self.room_post(srv, "red", "r1")      # seq 1
        self.room_post(srv, "blue", "b1")     # seq 2
        self.announce(srv, "hello", 3)        # seq 3
        self.room_post(srv, "red", "r2")      # seq 4
        self.assertEqual([(e["seq"], e.get("room")) for e in rt.events_until(red, 4)],
                         [(1, "red"), (4, "red")])
        self.assertEqual([(e["seq"], e.get("room")) for e in rt.events_until(red_all, 4)],
                         [(1, "red"), (3, None), (4, "red")])
        self.assertEqual([(e["seq"], e.get("room")) for e in rt.events_until(star, 4)],
                         [(1, "red"), (2, "blue"), (3, None), (4, "red")])

        # Resuming: a token without "all" and without blue never gets them, whatever it
        # subscribes to (it may or may not see red events from before its subscription).
        c = self.connect(port, "/ws?since=0&token=" + mint(claims(["red"])))
        self.subscribe(c, "blue", ok=False)
        c.send_json({"type": "subscribe", "room": "red"})
        self.room_post(srv, "red", "r3")  # seq 5
        got = []
        while not got or got[-1].get("seq") != 5:
            msg = c.recv_json(EVENT_TIMEOUT_S)
            if msg.get("type") == "subscribed":
                continue
            self.assertTrue(rt.is_event(msg), msg)
            got.append(msg)
        self.assertEqual({e.get("room") for e in got}, {"red"}, got)
        # And a resume with "all" but no rooms: exactly the announcement.
        c = self.connect(port, "/ws?since=0&token=" + mint(claims([], True)))
        self.announce(srv, "end", 6)
        self.assertEqual([(e["seq"], e["type"]) for e in rt.events_until(c, 6)],
                         [(3, "announcement"), (6, "announcement")])

    def test_a_connection_is_closed_once_its_token_expires(self):
        srv, port = self.start_secured()
        exp_in = 2
        token = mint(claims(["*"], True, exp_in=exp_in))
        exp = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))["exp"]
        c = self.connect(port, "/ws?token=" + token)
        self.assertEqual(c.ping(), [])
        self.announce(srv, "before", 1)
        self.assertEqual(c.recv_json(EVENT_TIMEOUT_S)["seq"], 1)
        # Idle, it is closed when the token expires (nothing to send is needed).
        with self.assertRaises((WSClosed, ConnectionError, OSError)):
            while True:
                msg = c.recv_json(exp_in + EVENT_TIMEOUT_S)
                self.fail("an expiring token still received %r" % (msg,))
        self.assertGreaterEqual(time.time(), exp - 1, "closed before its token expired")
        self.announce(srv, "after", 2)
        # A new token lets it back in.
        c = self.connect(port, "/ws?since=1&token=" + mint(claims(["*"], True)))
        self.assertEqual(rt.seqs(rt.events_until(c, 2)), [2])

    def test_short_secret_is_a_configuration_error(self):
        srv = self.server(h.contract_server(), "--realtime-secret", "too-short",
                          env=rt.FIXTURE_ENV)
        self.assertFalse(srv.try_start())
        self.assertEqual(srv.wait_exit(), 2)
        self.assertIn("realtime-secret", srv.err.text() if srv.err else "")

    def test_without_a_secret_anyone_connects(self):
        srv, port = self.start_fixture()
        c = self.connect(port, "/ws")
        self.assertEqual(c.ping(), [])
        # A token, even a bad one, is ignored.
        c = self.connect(port, "/ws?token=garbage",
                         headers=(("Authorization", "Bearer nonsense"),))
        self.announce(srv, "open", 1)
        self.assertEqual(rt.seqs(rt.events_until(c, 1)), [1])


class OriginTest(AuthCase):
    def test_origins_outside_the_list_are_403(self):
        srv, port = self.start_fixture("--realtime-origins",
                                       "https://app.example.com,http://localhost:3000")
        for origin in ("https://evil.example.com", "null", "https://app.example.com.evil",
                       "http://app.example.com", "http://localhost:30000"):
            with self.subTest(origin):
                self.refused(port, "/ws", (("Origin", origin),), status=403)
        for origin in ("https://app.example.com", "http://localhost:3000",
                       "HTTPS://APP.EXAMPLE.COM"):
            with self.subTest(origin):
                c = self.connect(port, "/ws", headers=(("Origin", origin),))
                self.assertEqual(c.ping(), [])
        # No Origin: not a browser, not what the list protects against.
        c = self.connect(port, "/ws")
        self.assertEqual(c.ping(), [])

    def test_origins_and_secret_together(self):
        srv, port = self.start_secured("--realtime-origins", "https://app.example.com")
        token = mint(claims(["*"], True))
        self.refused(port, "/ws?token=" + token, (("Origin", "https://evil.example.com"),),
                     status=403)
        self.refused(port, "/ws", (("Origin", "https://app.example.com"),), status=401)
        c = self.connect(port, "/ws?token=" + token,
                         headers=(("Origin", "https://app.example.com"),))
        self.assertEqual(c.ping(), [])


if __name__ == "__main__":
    h.main()
