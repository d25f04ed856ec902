#!/usr/bin/env python3
"""Crash soak: SIGKILL the whole server process group under load, again and again.

    bench/soak.py [--kills N] [--max-seconds S] [--clients C] [--seed X] [--server PATH]

Starts the contract fixture server (tests/fixtures/contract_server.c: POST /orders is a
durable route whose response carries a per-process execution number) with 2 workers on
a fresh data dir, drives C client threads posting fresh keys, and at a random moment
(seeded, printed) SIGKILLs the server's whole process group at once, waits until every
process of the group is gone, restarts it on the same data dir, and goes on, N times or
until S seconds have passed, whichever comes first. Then it stops the load and checks:

  - every 201 a client ever received replays byte for byte (status, content type, body,
    Location) after the last restart: 0 acknowledged responses lost;
  - every request cut by a kill (no answer, or 503) is retried twice after a restart: the
    two retries agree byte for byte (the first replays or executes, the second replays),
    so a key whose record was stored never runs its handler again;
  - no key ever shows two different stored responses, and in the last server life (no
    kills) the fixture's execution counter grows only by the retries that executed: a
    stored key's handler never runs again.

Prints one result line starting with "soak:" and exits 0 when nothing was lost or run
twice, 1 otherwise. Bounded: at most N kills, at most S seconds of load, every request and
wait has a timeout. Python 3 standard library only; reuses tests/integration/cnharness.
"""

import argparse
import http.client
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))

import cnharness as h  # noqa: E402

ARGS = ("--workers", "2", "--threads", "4")
REQUEST_TIMEOUT_S = 20.0
GONE_TIMEOUT_S = 15.0
RESTART_DEADLINE_S = 30.0
VERIFY_THREADS = 8


def find_server(explicit):
    for path in (explicit, os.environ.get("CNERIUM_CONTRACT_SERVER"),
                 os.path.join(HERE, "..", "build-dev", "tests", "fixtures",
                              "cnerium_contract_server"),
                 os.path.join(HERE, "..", "build", "tests", "fixtures",
                              "cnerium_contract_server")):
        if path and os.access(path, os.X_OK):
            return os.path.abspath(path)
    sys.exit("soak: no contract server binary; build the tests or pass --server")


def body_for(key):
    return json.dumps({"product_id": key, "quantity": 1}).encode()


def post(port, key, body, timeout=REQUEST_TIMEOUT_S):
    """(status, headers, body) or the exception."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        return h.send_request(conn, "POST", "/orders", body,
                              [("Idempotency-Key", key), ("Content-Type", "application/json")])
    except (OSError, http.client.HTTPException) as e:
        return e
    finally:
        conn.close()


def executions(port):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT_S)
    try:
        st, _, b = h.send_request(conn, "GET", "/count?op=orders.create")
    finally:
        conn.close()
    if st != 200:
        sys.exit("soak: GET /count answered %d" % st)
    return json.loads(b)["executions"]


def signature(resp):
    st, hs, b = resp
    return (st, h.header(hs, "Content-Type"), h.header(hs, "Location"), b)


class Load:
    """Client threads posting fresh keys over keep-alive connections until halted."""

    def __init__(self, port, round_no, clients):
        self.port, self.round_no = port, round_no
        self.halt = threading.Event()
        self.lock = threading.Lock()
        self.acked = []    # (key, body, response)
        self.unknown = []  # (key, body): cut by the kill, or 503
        self.threads = [threading.Thread(target=self.run, args=(t,), daemon=True)
                        for t in range(clients)]
        for t in self.threads:
            t.start()

    def run(self, t):
        conn, i = None, 0
        while not self.halt.is_set():
            key = "soak-r%d-t%d-%d" % (self.round_no, t, i)
            body = body_for(key)
            i += 1
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port,
                                                      timeout=REQUEST_TIMEOUT_S)
                resp = h.send_request(conn, "POST", "/orders", body,
                                      [("Idempotency-Key", key),
                                       ("Content-Type", "application/json")])
            except (OSError, http.client.HTTPException):
                resp = None
                if conn is not None:
                    conn.close()
                conn = None
            with self.lock:
                if resp is not None and resp[0] == 201:
                    self.acked.append((key, body, resp))
                else:
                    self.unknown.append((key, body))
            if resp is None:
                # The server is gone or restarting: this thread is done for the round.
                break
        if conn is not None:
            conn.close()

    def join(self, timeout):
        self.halt.set()
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return sum(t.is_alive() for t in self.threads)


def parallel(fn, items):
    items = list(items)
    out = [None] * len(items)
    nxt, lock = [0], threading.Lock()

    def run():
        while True:
            with lock:
                if nxt[0] >= len(items):
                    return
                i = nxt[0]
                nxt[0] += 1
            out[i] = fn(items[i])

    threads = [threading.Thread(target=run, daemon=True) for _ in range(VERIFY_THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    return out


def group_gone(pgid):
    return not [p for p in h.live_processes() if p.pgrp == pgid]


CURRENT = [None]  # the server started last, for run()'s clean-up


def start(server, data_dir):
    deadline = time.monotonic() + RESTART_DEADLINE_S
    while True:
        srv = h.Server(server, ARGS, data_dir=data_dir)
        CURRENT[0] = srv
        if srv.try_start():
            return srv
        rc = srv.wait_exit(5.0)
        srv.close()
        if rc == 2 and time.monotonic() < deadline and "in use" in srv.stderr_text():
            time.sleep(0.1)  # the killed group's lock is being released
            continue
        sys.exit("soak: the server did not restart (exit code %s)\n%s"
                 % (rc, srv.stderr_text()[-4000:]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kills", type=int, default=100)
    ap.add_argument("--max-seconds", type=float, default=900.0)
    ap.add_argument("--clients", type=int, default=6)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--server", default=None)
    ap.add_argument("--data-dir", default=None, help="kept afterwards when given")
    a = ap.parse_args()
    seed = a.seed if a.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    server = find_server(a.server)
    data_dir = a.data_dir or tempfile.mkdtemp(prefix="cnerium-soak-")
    print("soak: seed %d, server %s, data dir %s" % (seed, server, data_dir), flush=True)

    t0 = time.monotonic()
    acked, unknown = [], []
    kills = 0
    srv = start(server, data_dir)
    while kills < a.kills and time.monotonic() - t0 < a.max_seconds:
        load = Load(srv.port, kills, a.clients)
        time.sleep(rng.uniform(0.05, 0.6))  # the random moment of the crash
        try:
            os.killpg(srv.proc.pid, signal.SIGKILL)  # the whole group at once
        except ProcessLookupError:
            pass
        kills += 1
        stuck = load.join(REQUEST_TIMEOUT_S + 5)
        if stuck:
            sys.exit("soak: %d client threads stuck after kill %d" % (stuck, kills))
        srv.wait_exit(GONE_TIMEOUT_S)
        srv.close()
        deadline = time.monotonic() + GONE_TIMEOUT_S
        while not group_gone(srv.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        acked += load.acked
        unknown += load.unknown
        srv = start(server, data_dir)
        if kills % 10 == 0:
            print("soak: %d kills, %d acknowledged, %d cut so far (%.0f s)"
                  % (kills, len(acked), len(unknown), time.monotonic() - t0), flush=True)

    # Verification on the last restart (a server life without kills: its execution
    # counter must show exactly the retries that executed).
    runs_before = executions(srv.port)
    lost = []
    replays = parallel(lambda e: post(srv.port, e[0], e[1]), acked)
    for (key, _, first), again in zip(acked, replays):
        if isinstance(again, Exception) or signature(again) != signature(first) or \
                h.header(again[1], "Idempotent-Replayed") != "true":
            lost.append(key)
    twice, unanswered, executed_now = [], [], 0

    def retry(e):
        return (post(srv.port, e[0], e[1]), post(srv.port, e[0], e[1]))

    for (key, _), (r1, r2) in zip(unknown, parallel(retry, unknown)):
        if isinstance(r1, Exception) or isinstance(r2, Exception) or r1[0] != 201:
            unanswered.append(key)
        elif signature(r1) != signature(r2) or h.header(r2[1], "Idempotent-Replayed") != "true":
            twice.append(key)
        else:
            executed_now += h.header(r1[1], "Idempotent-Replayed") != "true"
    runs = executions(srv.port) - runs_before
    if runs != executed_now:
        twice.append("(%d handler runs during verification for %d retries that executed)"
                     % (runs, executed_now))
    srv.stop()
    srv.close()
    if not a.data_dir:
        shutil.rmtree(data_dir, True)

    ok = not lost and not twice and not unanswered
    print("soak: %d SIGKILLs of the whole process group under load (%d clients, 2 workers) "
          "in %.0f s, seed %d: %d acknowledged, %d lost; %d requests cut by a kill retried "
          "(%d replayed, %d executed once), %d ran twice, %d unanswered -> %s"
          % (kills, a.clients, time.monotonic() - t0, seed, len(acked), len(lost),
             len(unknown), len(unknown) - executed_now - len(twice) - len(unanswered),
             executed_now, len(twice), len(unanswered), "OK" if ok else "FAIL"), flush=True)
    for what, keys in (("lost", lost), ("ran twice", twice), ("unanswered", unanswered)):
        if keys:
            print("soak: %s: %s" % (what, ", ".join(keys[:10])), flush=True)
    return 0 if ok else 1


def run():
    """main(), and on any way out (an error, SIGTERM, Ctrl-C) the last server's process
    group is killed, so a stopped soak leaves no server behind."""
    def on_term(signum, frame):
        raise KeyboardInterrupt()

    signal.signal(signal.SIGTERM, on_term)
    try:
        return main()
    finally:
        srv = CURRENT[0]
        if srv is not None and srv.proc is not None:
            try:
                os.killpg(srv.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


if __name__ == "__main__":
    sys.exit(run())
