#!/usr/bin/env python3
"""Durability of the multi-process server: a 201 a client received means the record is on
disk, so it replays byte for byte whatever happens to the server afterwards, and no
handler ever runs twice for one key.

The server (the PID the harness starts) supervises cn-persister, the only LMDB writer
(per-worker record rings in shared memory -> a group-committed write-ahead log ->
LMDB -> acks), and --workers cn-worker-<i> processes that suspend each durable request
until its record is acknowledged.

Covered here:
  - a crash loop: clients post fresh keys, the whole server is SIGKILLed at a random
    moment (seeded, printed), restarted on the same data dir, K times; every 201 ever
    received replays byte for byte, another body gets 409, no key shows two bodies, and
    requests cut by a kill replay or execute once (two retries agree);
  - SIGKILL of the persister under load: it is restarted, every request is answered
    (201, or 503 + Retry-After), nothing is lost, every key ran once;
  - group commit: 64 concurrent clients give more than one record per WAL batch;
  - recovery: a clean stop (exit 0, nothing to replay) and a SIGKILL right after a burst
    of acknowledged POSTs;
  - --durability async: answers 201, replays after a clean restart;
  - SIGKILL of a worker whose requests wait for a stopped persister: retries of its keys
    sent before the persister resumes wait for its claims and then replay, every key ran
    once;
  - a persister that is late, not dead (held with SIGSTOP past a bound): the key of a
    record still waiting in a ring stays claimed, past the supervisor's 5 s drain bound
    for a dead worker's ring and past --lease-ms for a handler that has returned.

The fixture's execution counters (GET /count) live in the server binary's memory and
restart at 0 with it: across restarts, "ran twice" is judged from response bodies (each
execution has its own "n"), within one server life from /count as well. Processes are
found through /proc (children of the server's PID, by /proc/<pid>/comm). Every wait is a
bounded poll of a condition; the only sleep is the random moment of a crash (and the
lease test waits, bounded, for a second execution that must not come).

CNERIUM_TEST_SEED=N repeats the crash loop's random choices (kill moments, samples).
"""

import http.client
import json
import os
import random
import re
import signal
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import cnharness as h  # noqa: E402
from cnharness import header, wait_until  # noqa: E402

WORKERS = 2
ARGS = ("--workers", str(WORKERS), "--threads", "4")
OP = "orders.create"
STORAGE = h.PROBLEM + "storage-unavailable"

# Tests that hold the persister (SIGSTOP) run with a commit timeout long enough that no
# request times out while the test arranges what it checks, however loaded the machine.
HELD_COMMIT_TIMEOUT_MS = 60000
HELD_WAIT_S = 15.0
REQUEST_TIMEOUT_S = 20.0   # a request waits at most the 5 s commit timeout (+ a restart)
JOIN_TIMEOUT_S = 40.0
GONE_TIMEOUT_S = 10.0      # a killed server's children are gone (PR_SET_PDEATHSIG)
REPLACE_TIMEOUT_S = 10.0   # a dead child is replaced
RESTART_DEADLINE_S = 15.0
LOAD_MAX_S = 60.0          # a load thread never runs longer than this
VERIFY_THREADS = 8

CRASH_ROUNDS = 8
CRASH_CLIENTS = 6
CRASH_SAMPLE = 40          # replays checked after each restart of the crash loop
CRASH_CONFLICTS = 8        # 409 checks after each restart

# -- processes, through /proc --


def children(srv):
    return h.live_children(srv.proc.pid)


def persister(srv):
    """The live cn-persister child of the server, or None (also None when there are
    several: a restart in progress)."""
    ps = [p for p in children(srv) if p.comm == "cn-persister"]
    return ps[0] if len(ps) == 1 else None


def workers(srv):
    """{index: ProcStat} of the live cn-worker-<i> children of the server."""
    out = {}
    for p in children(srv):
        m = re.match(r"^cn-worker-(\d+)$", p.comm)
        if m:
            out[int(m.group(1))] = p
    return out


def gone(p):
    q = h.proc_stat(p.pid)
    return q is None or q.state in ("Z", "X") or q.start != p.start


def group_left(pgid):
    """Live processes of process group pgid (the server runs in a session of its own, so
    its children are in the group of its PID)."""
    return [p for p in h.live_processes() if p.pgrp == pgid]


# -- sockets, through /proc (test 6: which worker holds the waiting connections) --


def socket_inodes(pid):
    out = set()
    try:
        names = os.listdir("/proc/%d/fd" % pid)
    except OSError:
        return out
    for fd in names:
        try:
            target = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        except OSError:
            continue
        if target.startswith("socket:["):
            out.add(int(target[8:-1]))
    return out


def tcp_table():
    """[(local port, remote port, state, rx_queue, inode)] of the IPv4 TCP sockets."""
    out = []
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split()
            if len(parts) < 10:
                continue
            lport = int(parts[1].split(":")[1], 16)
            rport = int(parts[2].split(":")[1], 16)
            rx = int(parts[4].split(":")[1], 16)
            out.append((lport, rport, parts[3], rx, int(parts[9])))
    return out


def server_side_read(port, client_port):
    """True when the server-side socket of the connection from client_port is
    established and holds no unread bytes: a worker has read the whole request."""
    for lport, rport, state, rx, _ in tcp_table():
        if lport == port and rport == client_port and state == "01":
            return rx == 0
    return False


# -- HTTP --


def order_body(key, extra=""):
    return json.dumps({"product_id": key, "quantity": 1, "note": extra},
                      sort_keys=True).encode()


def other_body(key):
    return json.dumps({"product_id": key, "quantity": 2}).encode()


def attempt(srv, method, path, body=None, key=None, timeout=REQUEST_TIMEOUT_S):
    """One request on a fresh connection: (status, headers, body), or the exception."""
    conn = srv.connection(timeout)
    try:
        hs = [("Idempotency-Key", key)] if key is not None else []
        if body is not None:
            hs.append(("Content-Type", "application/json"))
        return h.send_request(conn, method, path, body, hs)
    except (OSError, http.client.HTTPException) as e:
        return e
    finally:
        conn.close()


def replayed(resp):
    return header(resp[1], "Idempotent-Replayed") == "true"


def parallel(fn, items, nthreads=VERIFY_THREADS, timeout=JOIN_TIMEOUT_S * 3):
    """[fn(item)] computed by nthreads threads, in item order; an exception raised by fn
    is re-raised here."""
    items = list(items)
    results = [None] * len(items)
    errors = []
    nxt = [0]
    lock = threading.Lock()

    def run():
        while True:
            with lock:
                if errors or nxt[0] >= len(items):
                    return
                i = nxt[0]
                nxt[0] += 1
            try:
                results[i] = fn(items[i])
            except BaseException as e:  # noqa: B902 - handed to the caller
                with lock:
                    errors.append(e)
                return

    threads = [threading.Thread(target=run, daemon=True)
               for _ in range(min(nthreads, max(1, len(items))))]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    if any(t.is_alive() for t in threads):
        raise AssertionError("verification threads did not finish within %.0f s" % timeout)
    if errors:
        raise errors[0]
    return results


# -- metrics --

SAMPLE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?) (\S+)$")


def try_metrics(srv, timeout=3.0):
    """{sample: value} from GET /metrics on a fresh connection, or None."""
    r = attempt(srv, "GET", "/metrics", timeout=timeout)
    if isinstance(r, Exception) or r[0] != 200:
        return None
    out = {}
    for line in r[2].decode("utf-8").split("\n"):
        m = SAMPLE_RE.match(line)
        if m and not line.startswith("#"):
            out[m.group(1)] = float(m.group(2))
    return out


def metrics(srv, timeout=15.0):
    return wait_until(lambda: try_metrics(srv), timeout, what="GET /metrics answering 200")


def parked(srv):
    """Durable requests parked right now behind a duplicate whose key is held
    (cnerium_inflight_parked), or None when /metrics does not answer."""
    m = try_metrics(srv, 1.0)
    return None if m is None else mval(m, "cnerium_inflight_parked")


def mval(m, name):
    if name not in m:
        raise AssertionError("metric %s missing; have %s" % (name, sorted(m)))
    v = m[name]
    return int(v) if v == int(v) else v


def outcome(m, what, op=OP):
    return mval(m, 'cnerium_durable_requests_total{operation="%s",outcome="%s"}' % (op, what))


# -- load --


class Sent:
    """One request of a load: its key and body, and what came back: resp (status,
    headers, body) when a whole response arrived, else error."""

    __slots__ = ("key", "body", "resp", "error", "t0", "t1")

    def __init__(self, key, body):
        self.key, self.body = key, body
        self.resp = self.error = None
        self.t0 = self.t1 = None


class Load:
    """nthreads client threads posting fresh keys (distinct bodies) to /orders over
    keep-alive connections until stop(). A failed request is recorded and its connection
    replaced; with stop_on_error the thread ends instead."""

    def __init__(self, srv, prefix, nthreads, stop_on_error=False,
                 timeout=REQUEST_TIMEOUT_S):
        self.srv, self.prefix, self.timeout = srv, prefix, timeout
        self.stop_on_error = stop_on_error
        self.lock = threading.Lock()
        self.sent = []
        self.halt = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(t,), daemon=True)
                        for t in range(nthreads)]
        self.stopped = False

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def _run(self, t):
        conn = None
        deadline = time.monotonic() + LOAD_MAX_S
        i = 0
        while not self.halt.is_set() and time.monotonic() < deadline:
            key = "%s-t%d-%d" % (self.prefix, t, i)
            s = Sent(key, order_body(key, "thread %d request %d" % (t, i)))
            i += 1
            with self.lock:
                self.sent.append(s)
            s.t0 = time.monotonic()
            try:
                if conn is None:
                    conn = self.srv.connection(self.timeout)
                s.resp = h.send_request(conn, "POST", "/orders", s.body,
                                        [("Idempotency-Key", key),
                                         ("Content-Type", "application/json")])
            except (OSError, http.client.HTTPException) as e:
                s.error = e
                conn.close()
                conn = None
                if self.stop_on_error:
                    break
            finally:
                s.t1 = time.monotonic()
        if conn is not None:
            conn.close()

    def stop(self, timeout=JOIN_TIMEOUT_S):
        self.halt.set()
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        stuck = sum(t.is_alive() for t in self.threads)
        self.stopped = True
        if stuck:
            raise AssertionError("%d load threads still wait for an answer after %.0f s"
                                 % (stuck, timeout))
        return self.sent

    def stop_quietly(self):
        if not self.stopped:
            try:
                self.stop(5.0)
            except AssertionError:
                pass

    def snapshot(self):
        with self.lock:
            return list(self.sent)

    def acknowledged(self, since=None):
        """Requests answered 201 so far (that started at or after since)."""
        return sum(1 for s in self.snapshot()
                   if s.resp is not None and s.resp[0] == 201
                   and (since is None or s.t0 >= since))


class Background:
    """One POST /orders on an already connected connection, in a thread of its own;
    result is (status, headers, body) or the exception."""

    def __init__(self, conn, key, body):
        self.key, self.body, self.result = key, body, None
        self.client_port = conn.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._run, args=(conn,), daemon=True)
        self.thread.start()

    def _run(self, conn):
        try:
            self.result = h.send_request(conn, "POST", "/orders", self.body,
                                         [("Idempotency-Key", self.key)])
        except (OSError, http.client.HTTPException) as e:
            self.result = e
        finally:
            conn.close()

    def join(self, timeout):
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise AssertionError("POST %s got no answer within %.0f s" % (self.key, timeout))
        return self.result


def worker_of_connection(ws, port, client_port):
    """(index,) of the worker in ws ({index: ProcStat}) holding the server side of the
    connection from client_port, or None."""
    for lport, rport, st, _, ino in tcp_table():
        if lport == port and rport == client_port and st == "01":
            for i, p in ws.items():
                if ino in socket_inodes(p.pid):
                    return (i,)
    return None


def post_together(srv, prefix, n):
    """n threads connect, meet at a barrier, and each posts one fresh key. Returns
    [(key, body, response)]; fails on any error."""
    barrier = threading.Barrier(n, timeout=JOIN_TIMEOUT_S)
    out = [None] * n

    def run(i):
        key = "%s-%d" % (prefix, i)
        body = order_body(key, "burst %s" % prefix)
        conn = srv.connection(REQUEST_TIMEOUT_S)
        try:
            conn.connect()
            barrier.wait()
            out[i] = (key, body, h.send_request(conn, "POST", "/orders", body,
                                                [("Idempotency-Key", key)]))
        except Exception as e:  # reported below
            out[i] = e
        finally:
            conn.close()

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    if any(t.is_alive() for t in threads):
        raise AssertionError("burst threads did not finish within %.0f s" % JOIN_TIMEOUT_S)
    for r in out:
        if isinstance(r, Exception) or r is None:
            raise AssertionError("a burst request failed: %r\n%s" % (r, srv.diagnostics()))
    return out


def cont(p):
    """SIGCONT to a process this test stopped, unless it is gone."""
    if not gone(p):
        try:
            os.kill(p.pid, signal.SIGCONT)
        except ProcessLookupError:
            pass


class DurabilityTestCase(h.ServerTestCase):
    def start_srv(self, *extra, data_dir=None):
        return self.start_server(h.contract_server(), *ARGS, *extra, data_dir=data_dir)

    def restart(self, data_dir, *extra):
        return self.restart_server(h.contract_server(), data_dir, *ARGS, *extra,
                                   deadline_s=RESTART_DEADLINE_S)

    def crash(self, srv):
        """SIGKILL to the server and its process group (harness kill()); returns once no
        process of the group is left, so the data dir's lock is free."""
        srv.kill()
        try:
            wait_until(lambda: not group_left(srv.proc.pid), GONE_TIMEOUT_S,
                       what="the killed server's processes to be gone")
        except AssertionError as e:
            raise AssertionError("%s: left %r" % (e, group_left(srv.proc.pid))) from None

    def post(self, srv, key, body):
        return srv.post("/orders", body, key=key, headers={"Content-Type": "application/json"},
                        timeout=REQUEST_TIMEOUT_S)

    def assertExecuted(self, resp, what):
        self.assertEqual(resp[0], 201, "%s: %r" % (what, resp[2][:300]))
        self.assertNotReplayed(resp)

    def assertReplays(self, srv, entries, what):
        """Each (key, body, first response) replays byte for byte. Returns the count. All
        are checked; a failure names how many did not replay and shows the first few."""
        entries = list(entries)
        again = parallel(lambda e: self.post(srv, e[0], e[1]), entries)
        bad = []
        for (key, body, first), resp in zip(entries, again):
            try:
                self.assertReplayOf(first, resp)
            except AssertionError as e:
                bad.append("%s: %s\n    first:  %d %r\n    replay: %d %s %r"
                           % (key, str(e).split("\n")[0], first[0], first[2][:200], resp[0],
                              header(resp[1], "Idempotent-Replayed"), resp[2][:200]))
        if bad:
            self.fail("%s: %d of %d acknowledged responses did not replay byte for byte; "
                      "first ones:\n%s\n%s" % (what, len(bad), len(entries), "\n".join(bad[:5]),
                                          srv.diagnostics()))
        return len(entries)

    def assertConflicts(self, srv, keys, what):
        """Each key with another body gets 409 idempotency-key-reused."""
        keys = list(keys)
        resps = parallel(lambda k: self.post(srv, k, other_body(k)), keys)
        bad = []
        for key, resp in zip(keys, resps):
            try:
                self.assertProblem(resp, 409, h.KEY_REUSED, h.REUSED_ERROR)
            except AssertionError as e:
                bad.append("%s: %s: %d %r" % (key, str(e).split("\n")[0], resp[0],
                                              resp[2][:200]))
        if bad:
            self.fail("%s: %d of %d keys sent with another body did not get 409; first "
                      "ones:\n%s\n%s" % (what, len(bad), len(keys), "\n".join(bad[:5]),
                                    srv.diagnostics()))
        return len(keys)

    def retry_twice(self, srv, key, body, what):
        """Retries a request whose first answer is unknown (cut, or 503): the first retry
        replays or executes, the second replays it byte for byte. Returns the first
        retry's response."""
        first = self.post(srv, key, body)
        self.assertEqual(first[0], 201, "%s: retry of %s: %r" % (what, key, first[2][:300]))
        second = self.post(srv, key, body)
        self.assertReplayOf(first, second)
        return first


# -- 1. crash loop --


class CrashLoopTest(DurabilityTestCase):
    def test_crash_loop_every_acknowledged_response_replays(self):
        env_seed = os.environ.get("CNERIUM_TEST_SEED")
        seed = int(env_seed) if env_seed else random.SystemRandom().randrange(1 << 31)
        sys.stderr.write("\ncrash loop seed %d (CNERIUM_TEST_SEED=%d repeats it)\n"
                         % (seed, seed))
        rng = random.Random(seed)
        data_dir = self.make_data_dir()
        known = {}      # key -> (body, response): every 201 a client ever received
        unknown = []    # (key, body) whose request got no complete answer
        stats = {"acked": 0, "cut": 0, "executed_on_retry": 0, "replayed_on_retry": 0,
                 "wal_recovered": 0}

        for rnd in range(CRASH_ROUNDS + 1):
            srv = self.restart(data_dir)
            last = rnd == CRASH_ROUNDS
            self.check_life(srv, rng, known, unknown, stats, "seed %d, life %d" % (seed, rnd),
                            everything=last)
            if last:
                break
            load = Load(srv, "crash-%d-r%d" % (seed, rnd), CRASH_CLIENTS, stop_on_error=True)
            self.addCleanup(load.stop_quietly)
            moment = rng.uniform(0.05, 0.4)
            load.start()
            time.sleep(moment)  # the random moment of the crash is the point of the test
            self.crash(srv)
            for s in load.stop():
                if s.resp is None:
                    unknown.append((s.key, s.body))
                    stats["cut"] += 1
                elif s.resp[0] == 201:
                    self.assertExecuted(s.resp, "seed %d life %d: a fresh key" % (seed, rnd))
                    self.assertNotIn(s.key, known)
                    known[s.key] = (s.body, s.resp)
                    stats["acked"] += 1
                elif s.resp[0] == 503 and header(s.resp[1], "Retry-After"):
                    unknown.append((s.key, s.body))
                    stats["cut"] += 1
                else:
                    self.fail("seed %d life %d: %s answered %d %r"
                              % (seed, rnd, s.key, s.resp[0], s.resp[2][:300]))
        sys.stderr.write("crash loop: %(acked)d acknowledged, %(cut)d cut by a kill "
                         "(%(replayed_on_retry)d had run, %(executed_on_retry)d had not), "
                         "%(wal_recovered)d WAL records replayed at restarts\n"
                         % stats)
        self.assertGreater(stats["acked"], 0, "the clients never got a 201")

    def check_life(self, srv, rng, known, unknown, stats, what, everything=False):
        """After a restart: sampled (or all) acknowledged responses replay byte for byte,
        another body gets 409, requests cut by the last kill replay or run once; /count
        and /metrics show that nothing else ran."""
        self.assertEqual(srv.count(OP), 0, "a new server binary counts from 0")
        keys = sorted(known)
        sample = keys if everything else rng.sample(keys, min(CRASH_SAMPLE, len(keys)))
        replays = self.assertReplays(srv, [(k, known[k][0], known[k][1]) for k in sample],
                                     what)
        conflicts = self.assertConflicts(
            srv, rng.sample(keys, min(CRASH_CONFLICTS * (4 if everything else 1), len(keys))),
            what)
        executed = 0
        for key, body in unknown:
            first = self.retry_twice(srv, key, body, what)
            replays += 1
            if replayed(first):
                stats["replayed_on_retry"] += 1
                replays += 1
            else:
                stats["executed_on_retry"] += 1
                executed += 1
            known[key] = (body, first)
        del unknown[:]
        self.assertEqual(srv.count(OP), executed,
                         "%s: replays and conflicts must not run the handler; only cut "
                         "requests that had not run may run (once)" % what)
        m = metrics(srv)
        self.assertEqual(outcome(m, "executed"), executed, what)
        self.assertEqual(outcome(m, "replayed"), replays, what)
        self.assertEqual(outcome(m, "conflict"), conflicts, what)
        self.assertEqual(outcome(m, "failed"), 0, what)
        stats["wal_recovered"] += mval(m, "cnerium_wal_recovered_records")


# -- 2. persister killed under load --


class PersisterCrashTest(DurabilityTestCase):
    CLIENTS = 8

    def test_persister_sigkill_under_load(self):
        srv = self.start_srv("--commit-timeout-ms", str(HELD_COMMIT_TIMEOUT_MS))
        old = wait_until(lambda: persister(srv), REPLACE_TIMEOUT_S, what="cn-persister")
        load = Load(srv, "pkill", self.CLIENTS,
                    timeout=HELD_COMMIT_TIMEOUT_MS / 1000.0)
        self.addCleanup(load.stop_quietly)
        load.start()
        wait_until(lambda: load.acknowledged() >= 50, 20.0,
                   what="50 acknowledged POSTs before the kill")
        # The persister dies while every client waits for it: held (SIGSTOP) until each
        # client's request has run its handler and put its record in a ring, then killed.
        os.kill(old.pid, signal.SIGSTOP)
        self.addCleanup(cont, old)
        wait_until(lambda: (lambda m: m and mval(m, "cnerium_inflight_slots")
                            >= self.CLIENTS)(try_metrics(srv, 1.0)), HELD_WAIT_S, step=0.01,
                   what="every client waiting for the stopped persister")
        waiting = [s for s in load.snapshot() if s.resp is None and s.error is None]
        os.kill(old.pid, signal.SIGKILL)
        t_kill = time.monotonic()
        wait_until(lambda: gone(old), GONE_TIMEOUT_S, what="the old persister to die")
        new = wait_until(lambda: (lambda p: p if p and p.pid != old.pid else None)(
            persister(srv)), REPLACE_TIMEOUT_S, what="a new cn-persister")
        # Acknowledgements after the kill come from the new persister.
        wait_until(lambda: load.acknowledged(since=t_kill + 0.001) >= 50, 30.0,
                   what="50 acknowledged POSTs after the persister restart")
        sent = load.stop()
        self.assertTrue(srv.alive())
        self.assertNotEqual(new.pid, old.pid)

        errors = [(s.key, s.error) for s in sent if s.error is not None]
        self.assertEqual(errors, [], "every request must get an answer")
        self.assertGreaterEqual(len(waiting), self.CLIENTS)
        for s in waiting:
            self.assertEqual(s.resp[0], 201, "%s waited for the killed persister; its record "
                             "was in a ring: %r" % (s.key, s.resp[2][:300]))
        acked, retry = [], []
        for s in sent:
            st = s.resp[0]
            if st == 201:
                self.assertExecuted(s.resp, s.key)
                acked.append(s)
            elif st == 503:
                self.assertProblem(s.resp, 503, STORAGE)
                self.assertIsNotNone(header(s.resp[1], "Retry-After"),
                                     "a 503 must say when to retry")
                retry.append(s)
            else:
                self.fail("%s answered %d (only 201, or 503 + Retry-After, are allowed): %r"
                          % (s.key, st, s.resp[2][:300]))

        m = metrics(srv)
        self.assertEqual(mval(m, "cnerium_persister_restarts_total"), 1)
        self.assertEqual(mval(m, "cnerium_worker_restarts_total"), 0)
        self.assertEqual(mval(m, "cnerium_persist_records_failed_total"), 0,
                         "no record may be lost when the persister dies")
        self.assertEqual(outcome(m, "executed"), len(acked))
        self.assertEqual(outcome(m, "failed"), len(retry))

        replays = self.assertReplays(srv, [(s.key, s.body, s.resp) for s in acked],
                                     "after the persister restart")
        executed_again = 0
        for s in retry:
            first = self.retry_twice(srv, s.key, s.body, "a 503 of the persister test")
            replays += 1 + replayed(first)
            executed_again += not replayed(first)
        m = metrics(srv)
        self.assertEqual(outcome(m, "replayed"), replays)
        self.assertEqual(outcome(m, "executed"), len(acked) + executed_again)
        self.assertEqual(mval(m, "cnerium_persister_restarts_total"), 1)
        # Every key ran its handler once (a 503 whose record was lost may run again).
        self.assertEqual(srv.count(OP), len(sent) + executed_again)
        sys.stderr.write("\npersister test: %d acknowledged, %d answered 503 (%d of them ran "
                         "again on retry), %d skipped as duplicates\n"
                         % (len(acked), len(retry), executed_again,
                            mval(m, "cnerium_persist_duplicates_skipped_total")))


# -- 3. group commit --


class GroupCommitTest(DurabilityTestCase):
    def test_group_commit_batches_concurrent_records(self):
        srv = self.start_srv()
        load = Load(srv, "group", 64)
        self.addCleanup(load.stop_quietly)
        t0 = time.monotonic()
        load.start()
        wait_until(lambda: time.monotonic() - t0 >= 2.0 and load.acknowledged() >= 200, 30.0,
                   what="2 s of load and 200 acknowledged POSTs")
        sent = load.stop()
        self.assertEqual([(s.key, s.error) for s in sent if s.error], [])
        for s in sent:
            self.assertExecuted(s.resp, s.key)
        m = metrics(srv)
        batches = mval(m, "cnerium_persist_batches_total")
        records = mval(m, "cnerium_persist_records_total")
        sys.stderr.write("\ngroup commit: %d records in %d batches (%.1f per batch)\n"
                         % (records, batches, records / max(batches, 1)))
        self.assertEqual(records, len(sent), "one record per executed request")
        self.assertEqual(mval(m, "cnerium_persist_records_failed_total"), 0)
        self.assertGreater(records / batches, 1.0,
                           "64 concurrent clients must share fdatasyncs (group commit)")
        self.assertEqual(srv.count(OP), len(sent))
        sample = random.Random(len(sent)).sample(sent, min(100, len(sent)))
        self.assertReplays(srv, [(s.key, s.body, s.resp) for s in sample], "group commit")


# -- 4. recovery --


class RecoveryTest(DurabilityTestCase):
    def test_clean_stop_then_restart_replays(self):
        data_dir = self.make_data_dir()
        srv = self.start_srv(data_dir=data_dir)
        burst = post_together(srv, "clean", 24)
        for key, body, resp in burst:
            self.assertExecuted(resp, key)
        self.assertEqual(srv.stop(signal.SIGTERM), 0, "a clean stop exits 0")
        self.assertEqual(group_left(srv.proc.pid), [], "a clean stop leaves no process")
        srv2 = self.start_srv(data_dir=data_dir)
        m = metrics(srv2)
        self.assertEqual(mval(m, "cnerium_wal_recovered_records"), 0,
                         "a clean stop syncs the store: nothing to replay from the WAL")
        self.assertReplays(srv2, burst, "after SIGTERM")
        self.assertConflicts(srv2, [k for k, _, _ in burst[:4]], "after SIGTERM")
        self.assertEqual(srv2.count(OP), 0, "replays must not run the handler")
        fresh = self.post(srv2, "clean-fresh", order_body("clean-fresh"))
        self.assertExecuted(fresh, "a new key after the restart")
        self.assertEqual(srv2.count(OP), 1)
        self.assertEqual(srv2.stop(signal.SIGTERM), 0)

    def test_sigkill_right_after_acknowledged_burst(self):
        data_dir = self.make_data_dir()
        srv = self.start_srv(data_dir=data_dir)
        acked = []
        for b in range(3):
            burst = post_together(srv, "kill-b%d" % b, 32)
            for key, body, resp in burst:
                self.assertExecuted(resp, key)
            acked += burst
        self.crash(srv)  # the last 201 has just been read
        srv2 = self.restart(data_dir)
        m = metrics(srv2)
        recovered = mval(m, "cnerium_wal_recovered_records")
        self.assertGreaterEqual(recovered, 0)
        self.assertLessEqual(recovered, len(acked), "only this test's records are in the WAL")
        sys.stderr.write("\nrecovery after SIGKILL: %d WAL records replayed\n" % recovered)
        self.assertReplays(srv2, acked, "after SIGKILL")
        self.assertConflicts(srv2, [k for k, _, _ in acked[::16]], "after SIGKILL")
        self.assertEqual(srv2.count(OP), 0, "an acknowledged request must not run again")
        m = metrics(srv2)
        self.assertEqual(outcome(m, "replayed"), len(acked))
        self.assertEqual(outcome(m, "executed"), 0)
        # And again: the recovered store survives a second crash.
        self.crash(srv2)
        srv3 = self.restart(data_dir)
        self.assertReplays(srv3, acked[::8], "after a second SIGKILL")
        self.assertEqual(srv3.count(OP), 0)


class RingFullTest(DurabilityTestCase):
    def test_full_ring_answers_503_and_loses_nothing(self):
        """With the persister stopped, records pile up in a worker's 4 MiB ring. Once it
        is full, a new durable request gets 503 with Retry-After at once (not a crash, not
        a hang) and its handler's response is not stored; the requests already in the
        ring are answered 201 once the persister is back, and replay."""
        srv = self.start_srv("--workers", "1", "--max-body", str(1 << 20))
        pers = wait_until(lambda: persister(srv), REPLACE_TIMEOUT_S, what="cn-persister")
        os.kill(pers.pid, signal.SIGSTOP)
        self.addCleanup(cont, pers)
        big = lambda key: json.dumps({"product_id": key, "pad": "x" * 700000}).encode()
        waiting = []
        full = None
        # The fixture echoes the body, so each record is about 700 KB: five fill the one
        # worker's ring. Send until one is answered (the ring is full), bounded; after
        # each send, look 0.2 s for an answer to any of them, far below the 5 s commit
        # timeout of the ones in the ring (an answer that comes later is found after the
        # next send).
        refused = None
        for i in range(24):
            conn = srv.connection(REQUEST_TIMEOUT_S)
            conn.connect()
            b = Background(conn, "full-%d" % i, big("full-%d" % i))
            waiting.append(b)
            try:
                refused = wait_until(
                    lambda: next((w for w in waiting if w.result is not None), None), 0.2,
                    step=0.01, what="an answer without the persister")
                break
            except AssertionError:
                continue
        self.assertIsNotNone(refused, "no request was refused with every ring full")
        full = refused.result
        self.assertNotIsInstance(full, Exception)
        self.assertEqual(full[0], 503, full[2][:200])
        self.assertEqual(header(full[1], "Retry-After"), "1")
        cont(pers)
        # Requests sent while the ring was full are refused too (the last one, when the
        # first answer was seen late): each is either refused with 503 or acknowledged.
        refusals = []
        for b in waiting:
            r = b.join(REQUEST_TIMEOUT_S)
            self.assertNotIsInstance(r, Exception, b.key)
            if r[0] == 503 and b is not waiting[0]:
                self.assertEqual(header(r[1], "Retry-After"), "1")
                refusals.append(b)
                continue
            self.assertEqual(r[0], 201, "%s: %r" % (b.key, r[2][:100]))
            again = self.post(srv, b.key, b.body)
            self.assertEqual(again[2], r[2], b.key)
            self.assertEqual(header(again[1], "Idempotent-Replayed"), "true", b.key)
        self.assertIn(refused, refusals)
        # A refused request stored nothing: a retry now runs it.
        for b in refusals:
            retry = self.post(srv, b.key, b.body)
            self.assertExecuted(retry, b.key)


class UringRecoveryTest(RecoveryTest):
    """The same recovery checks with the WAL written through io_uring (--wal-io uring)."""

    def start_srv(self, *extra, data_dir=None):
        return super().start_srv("--wal-io", "uring", *extra, data_dir=data_dir)


class DirectRecoveryTest(RecoveryTest):
    """The same with O_DIRECT batches in whole blocks, RWF_DSYNC (--wal-io direct); the
    restarts after a crash use the default --wal-io over that log."""

    def start_srv(self, *extra, data_dir=None):
        return super().start_srv("--wal-io", "direct", *extra, data_dir=data_dir)


class UringDirectRecoveryTest(RecoveryTest):
    """The same through io_uring (--wal-io uring-direct)."""

    def start_srv(self, *extra, data_dir=None):
        return super().start_srv("--wal-io", "uring-direct", *extra, data_dir=data_dir)


# -- 5. async --


class AsyncTest(DurabilityTestCase):
    def test_async_answers_and_replays_after_clean_restart(self):
        data_dir = self.make_data_dir()
        srv = self.start_srv("--durability", "async", data_dir=data_dir)
        burst = post_together(srv, "async", 16)
        for key, body, resp in burst:
            self.assertExecuted(resp, key)
        self.assertReplays(srv, burst, "async, same server")
        self.assertEqual(srv.count(OP), len(burst))
        self.assertEqual(srv.stop(signal.SIGTERM), 0)
        srv2 = self.start_srv("--durability", "async", data_dir=data_dir)
        self.assertReplays(srv2, burst, "async, after SIGTERM")
        self.assertConflicts(srv2, [k for k, _, _ in burst[:4]], "async, after SIGTERM")
        self.assertEqual(srv2.count(OP), 0)
        self.assertEqual(srv2.stop(signal.SIGTERM), 0)


# -- 6. a worker killed while its requests wait for the persister --


class WorkerCrashTest(DurabilityTestCase):
    CLIENTS = 8
    EARLY_RETRIES = 2  # each one blocks a request thread of the surviving worker

    def test_worker_sigkill_while_requests_wait_for_persister(self):
        srv = self.start_srv("--commit-timeout-ms", str(HELD_COMMIT_TIMEOUT_MS))
        ws = wait_until(lambda: (lambda w: w if len(w) == WORKERS else None)(workers(srv)),
                        REPLACE_TIMEOUT_S, what="%d workers" % WORKERS)
        pers = wait_until(lambda: persister(srv), REPLACE_TIMEOUT_S, what="cn-persister")
        load = Load(srv, "wkill", self.CLIENTS,
                    timeout=HELD_COMMIT_TIMEOUT_MS / 1000.0)
        self.addCleanup(load.stop_quietly)
        load.start()
        wait_until(lambda: load.acknowledged() >= 50, 20.0, what="50 acknowledged POSTs")

        # Hold the persister: every client's request then waits, handler run and record
        # in a ring, for an acknowledgement that cannot come yet.
        os.kill(pers.pid, signal.SIGSTOP)
        self.addCleanup(cont, pers)
        wait_until(lambda: (lambda m: m and mval(m, "cnerium_inflight_slots")
                            >= self.CLIENTS)(try_metrics(srv, 1.0)), HELD_WAIT_S, step=0.01,
                   what="every client waiting for the stopped persister")
        load.halt.set()  # no new keys once the waiting requests are answered
        # The worker holding the most waiting connections dies.
        port = srv.port
        table = tcp_table()
        mine = socket_inodes(os.getpid())
        client_ports = {lp for lp, rp, st, _, ino in table if rp == port and ino in mine}
        conns = [ino for lp, rp, st, _, ino in table
                 if lp == port and rp in client_ports and st == "01"]
        holding = {}
        for i, p in ws.items():
            theirs = socket_inodes(p.pid)
            holding[i] = sum(1 for ino in conns if ino in theirs)
        victim_i = max(holding, key=holding.get)
        victim = ws[victim_i]
        self.assertGreater(holding[victim_i], 0, "no worker holds a waiting connection: %r"
                           % holding)
        os.kill(victim.pid, signal.SIGKILL)
        wait_until(lambda: gone(victim), GONE_TIMEOUT_S, what="the killed worker to die")
        # Its clients' connections are cut.
        wait_until(lambda: sum(1 for s in load.snapshot() if s.error) >= holding[victim_i],
                   HELD_WAIT_S, what="the killed worker's connections to be cut")
        cut = [s for s in load.snapshot() if s.error is not None]

        # Retries of cut keys sent while the persister is still stopped: the dead
        # worker's claims must hold them (parked) until its records are decided. One at a
        # time, each seen parked before the next.
        def asleep():
            return parked(srv)

        def send(item):
            s, conn, _, out = item
            try:
                out["resp"] = h.send_request(conn, "POST", "/orders", s.body,
                                             [("Idempotency-Key", s.key)])
            except (OSError, http.client.HTTPException) as e:
                out["resp"] = e
            finally:
                conn.close()

        how = "asleep on the claims" if asleep() is not None else "read by a worker"
        early, early_threads = [], []
        for s in cut[:self.EARLY_RETRIES]:
            conn = srv.connection(REQUEST_TIMEOUT_S)
            conn.connect()
            item = (s, conn, conn.sock.getsockname()[1], {})
            early.append(item)
            t = threading.Thread(target=send, args=(item,), daemon=True)
            early_threads.append(t)
            t.start()
            if how == "asleep on the claims":
                wait_until(lambda: asleep() >= len(early), HELD_WAIT_S, step=0.01,
                           what="early retry %d asleep on the dead worker's claim"
                           % len(early))
            else:  # no /proc/<pid>/task/*/syscall: a worker has read it, at least
                wait_until(lambda: server_side_read(port, item[2]), HELD_WAIT_S, step=0.01,
                           what="a worker to read early retry %d" % len(early))
        cont(pers)

        for t in early_threads:
            t.join(REQUEST_TIMEOUT_S + 5)
            self.assertFalse(t.is_alive(), "an early retry got no answer")
        sent = load.stop()
        new_ws = wait_until(lambda: (lambda w: w if len(w) == WORKERS and victim_i in w
                                     and w[victim_i].pid != victim.pid else None)(workers(srv)),
                            REPLACE_TIMEOUT_S, what="the killed worker's replacement")
        self.assertNotEqual(new_ws[victim_i].pid, victim.pid)

        for s, _, _, out in early:
            resp = out["resp"]
            self.assertNotIsInstance(resp, Exception, "early retry of %s" % s.key)
            self.assertEqual(resp[0], 201, resp[2][:300])
            self.assertTrue(replayed(resp),
                            "%s: the killed worker had run it and its record was in the ring; "
                            "a retry while the persister was stopped ran it again: %r"
                            % (s.key, resp[2][:300]))
        acked, retry = [], []
        for s in sent:
            if s.error is not None:
                continue
            if s.resp[0] == 201:
                self.assertExecuted(s.resp, s.key)
                acked.append(s)
            else:
                self.assertProblem(s.resp, 503, STORAGE)
                self.assertIsNotNone(header(s.resp[1], "Retry-After"))
                retry.append(s)
        cut = [s for s in sent if s.error is not None]
        self.assertGreaterEqual(len(cut), holding[victim_i])

        m = metrics(srv)
        self.assertGreaterEqual(mval(m, "cnerium_inflight_waits_total"), len(early),
                                "the early retries waited for the dead worker's claims")
        self.assertEqual(mval(m, "cnerium_worker_restarts_total"), 1)
        self.assertEqual(mval(m, "cnerium_persister_restarts_total"), 0)
        self.assertEqual(mval(m, "cnerium_persist_records_failed_total"), 0)
        self.assertReplays(srv, [(s.key, s.body, s.resp) for s in acked],
                           "after a worker SIGKILL")
        cut_ran_on_retry = retry_ran_again = 0
        for s in cut:
            first = self.retry_twice(srv, s.key, s.body, "cut by the worker SIGKILL")
            cut_ran_on_retry += not replayed(first)
        for s in retry:
            first = self.retry_twice(srv, s.key, s.body, "a 503 of the worker test")
            retry_ran_again += not replayed(first)
        for s, _, _, out in early:
            self.assertReplayOf(out["resp"], self.post(srv, s.key, s.body))
        # Every key ran once: a cut request either ran in the dead worker (then its retry
        # replays) or not (then its retry is its one execution). Only a 503 whose record
        # was not stored may run again.
        self.assertEqual(srv.count(OP), len(sent) + retry_ran_again,
                         "a key's handler ran twice (%d keys sent, %d cut, %d answered 503)"
                         % (len(sent), len(cut), len(retry)))
        sys.stderr.write("\nworker test: %d acknowledged, %d cut (%d ran on retry), %d "
                         "answered 503, killed cn-worker-%d holding %d waiting requests; "
                         "%d early retries %s before the persister resumed\n"
                         % (len(acked), len(cut), cut_ran_on_retry, len(retry), victim_i,
                            holding[victim_i], len(early), how))


# -- 7. a persister that is late (not dead): claims must hold until records are decided --


class StalledPersisterTest(DurabilityTestCase):
    """The persister is held with SIGSTOP, as a slow fdatasync or a persister restart
    with backoff would hold it: records wait in the rings and will be decided later. The
    key of such a record must stay claimed until then (README: "the claim stays held
    until the decision, so the retry replays if the record landed")."""

    def test_worker_sigkill_while_persister_stalls_past_drain_bound(self):
        """The records a dead worker left in its ring may be decided long after it died
        (the persister is only late, as it is during a slow fdatasync or a persister
        restart with backoff): its claims stay held until then, so a retry of such a key
        never runs the handler a second time, and every 201 replays as it was sent."""
        srv = self.start_srv()
        ws = wait_until(lambda: (lambda w: w if len(w) == WORKERS else None)(workers(srv)),
                        REPLACE_TIMEOUT_S, what="%d workers" % WORKERS)
        pers = wait_until(lambda: persister(srv), REPLACE_TIMEOUT_S, what="cn-persister")
        os.kill(pers.pid, signal.SIGSTOP)
        self.addCleanup(cont, pers)
        # One request waits: its handler ran, its record is in its worker's ring.
        key, body = "stall-1", order_body("stall-1", "stall")
        conn = srv.connection(REQUEST_TIMEOUT_S)
        conn.connect()
        first = Background(conn, key, body)
        wait_until(lambda: srv.count(OP) >= 1, 4.0, step=0.01, what="the handler to run")
        victim_i = wait_until(lambda: worker_of_connection(ws, srv.port, first.client_port),
                              4.0, step=0.01, what="the worker holding the request")[0]
        victim = ws[victim_i]
        os.kill(victim.pid, signal.SIGKILL)
        wait_until(lambda: gone(victim), GONE_TIMEOUT_S, what="the killed worker to die")
        self.assertIsInstance(first.join(5.0), Exception, "the kill must cut the request")
        # Past the supervisor's 5 s report, the dead worker's claims are still held (its
        # record may still land) and it is not replaced yet.
        wait_until(lambda: "still waiting for the persister" in srv.stderr_text(), 12.0,
                   what="the supervisor to report the dead worker still draining")
        self.assertEqual(mval(metrics(srv), "cnerium_worker_restarts_total"), 0,
                         "a dead worker must not be replaced before its ring is decided")
        conn = srv.connection(REQUEST_TIMEOUT_S)
        conn.connect()
        retry = Background(conn, key, body)

        def settled():
            if srv.count(OP) > executed:
                return "ran"
            return "waits" if (parked(srv) or 0) >= 1 else None
        executed = 1
        how = wait_until(settled, 5.0, step=0.01, what="the retry to wait or to run")
        cont(pers)
        resp = retry.join(REQUEST_TIMEOUT_S + 5)
        self.assertNotIsInstance(resp, Exception)
        self.assertEqual(resp[0], 201, resp[2][:300])
        # Both records (the dead worker's and, if it ran, the retry's) are decided now.
        wait_until(lambda: (lambda m: m and mval(m, "cnerium_inflight_slots") == 0)(
            try_metrics(srv, 1.0)), 10.0, what="every record decided")
        again = self.post(srv, key, body)
        runs = srv.count(OP)
        problems = []
        if runs != executed:
            problems.append("the handler ran %d times (the retry %s after the supervisor "
                            "freed the dead worker's claims while its record was still in "
                            "the ring)" % (runs, how))
        if not replayed(resp):
            problems.append("the retry was answered as a new execution: %r" % resp[2][:200])
        if again[2] != resp[2] or not replayed(again):
            problems.append("the 201 the retry received does not replay: got %r, the "
                            "replay is %r" % (resp[2][:120], again[2][:120]))
        if problems:
            self.fail("%s:\n  - %s\n%s" % (key, "\n  - ".join(problems), srv.diagnostics()))

    def test_lease_does_not_expire_while_the_record_waits_for_the_persister(self):
        """The handler returned at once; only its record waits. The lease bounds a
        handler's run time (README: "A handler that runs past --lease-ms loses its
        claim"), so a duplicate must keep waiting instead of taking the claim over and
        running the handler again."""
        lease_ms = 1000
        srv = self.start_srv("--lease-ms", str(lease_ms))
        pers = wait_until(lambda: persister(srv), REPLACE_TIMEOUT_S, what="cn-persister")
        os.kill(pers.pid, signal.SIGSTOP)
        self.addCleanup(cont, pers)
        key, body = "lease-1", order_body("lease-1", "lease")
        conn = srv.connection(REQUEST_TIMEOUT_S)
        conn.connect()
        first = Background(conn, key, body)
        wait_until(lambda: srv.count(OP) >= 1, 4.0, step=0.01, what="the handler to run")
        t_claim = time.monotonic()
        conn = srv.connection(REQUEST_TIMEOUT_S)
        conn.connect()
        dup = Background(conn, key, body)
        # Past the lease (the passing of time is the condition here), still inside the
        # 5 s commit timeout: the duplicate either still waits or has run the handler.
        try:
            wait_until(lambda: srv.count(OP) >= 2, lease_ms / 1000.0 + 1.0, step=0.02,
                       what="a second execution")
        except AssertionError:
            pass
        held = time.monotonic() - t_claim
        cont(pers)
        a, b = first.join(REQUEST_TIMEOUT_S), dup.join(REQUEST_TIMEOUT_S)
        self.assertNotIsInstance(a, Exception)
        self.assertNotIsInstance(b, Exception)
        again = self.post(srv, key, body)
        runs = srv.count(OP)
        problems = []
        if runs != 1:
            problems.append("the handler ran %d times: the duplicate took the claim over "
                            "%.1f s after a handler that had already returned (only its "
                            "record waited for the persister)" % (runs, held))
        if a[0] != 201 or replayed(a):
            problems.append("the first request was not answered as the execution: %d %r"
                            % (a[0], a[2][:120]))
        if b[0] != 201 or not replayed(b) or b[2] != a[2]:
            problems.append("the duplicate did not replay the first response: first %d %r, "
                            "duplicate %d (Idempotent-Replayed: %s) %r"
                            % (a[0], a[2][:60], b[0], header(b[1], "Idempotent-Replayed"),
                               b[2][:60]))
        if again[2] != a[2] and a[0] == 201:
            problems.append("the first request's 201 does not replay: it got %r, the "
                            "replay is %r" % (a[2][:60], again[2][:60]))
        if problems:
            self.fail("%s:\n  - %s\n%s" % (key, "\n  - ".join(problems), srv.diagnostics()))


if __name__ == "__main__":
    h.main()
