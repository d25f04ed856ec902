#!/usr/bin/env python3
"""The multi-process server: a supervisor forks --workers libmicrohttpd worker processes
(cn-worker-<i>) that share one listening socket and a lock-free in-flight table in shared
memory, so concurrent duplicates landing on different processes never both run a handler.

Covered here: storms of identical requests and of different bodies on one key across
processes, GET /metrics (format and counters), SIGKILL of one worker under load and of
every worker while one runs a handler (replacement, freed slots, no double execution),
process names and PR_SET_PDEATHSIG, one server per data dir, SIGTERM drain,
--inflight reject, lease takeover, --single-process, and two properties of the in-flight
table and the supervisor that the README states (a different key never takes a claim
over; the first restart of a worker is at once).

Processes are found through /proc (the workers are children of the server's PID). Threads
connect first, meet at a barrier, then send, so duplicates really overlap; every wait is
a bounded poll of a condition. Nothing sleeps to synchronize, except where the condition
is the passing of time itself (a lease).
"""

import hashlib
import http.client
import os
import re
import signal
import struct
import sys
import threading
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import cnharness as h  # noqa: E402
from cnharness import header, parse_json, wait_until  # noqa: E402

WORKERS = 4
THREADS = 4
MP_ARGS = ("--workers", str(WORKERS), "--threads", str(THREADS))
JOIN_TIMEOUT_S = 60.0
REPLACE_TIMEOUT_S = 10.0  # a dead worker is replaced (backoff at most 5 s)
DEATH_TIMEOUT_S = 5.0     # PR_SET_PDEATHSIG / SIGKILL take effect
SLOTS_TIMEOUT_S = 10.0    # cnerium_inflight_slots drops back to 0
RESTART_DEADLINE_S = 15.0
STORAGE = h.PROBLEM + "storage-unavailable"
WORKER_NAME_RE = re.compile(r"^cn-worker-(\d+)$")

# -- processes, through /proc --


def children(pid):
    """{child pid: (comm, starttime)} for the live (not zombie) children of pid."""
    return {p.pid: (p.comm, p.start) for p in h.live_children(pid)}


def worker_list(srv):
    """[(index, pid, starttime)] of the cn-worker-<i> children of the server, sorted.
    Other children (helpers such as a persister process) are not workers."""
    out = []
    for pid, (comm, start) in children(srv.proc.pid).items():
        m = WORKER_NAME_RE.match(comm)
        if m:
            out.append((int(m.group(1)), pid, start))
    return sorted(out)


def workers_of(srv):
    """{worker index: (pid, starttime)} of the cn-worker-<i> children of the server."""
    return {i: (pid, start) for i, pid, start in worker_list(srv)}


def gone(pid, starttime):
    """True once the process (pid, starttime) no longer runs: no such pid, a zombie, or
    the pid now belongs to another process."""
    st = h.proc_stat(pid)
    return st is None or st.state in ("Z", "X") or st.start != starttime


def full_set(srv, n=WORKERS):
    """{index: (pid, starttime)} when exactly the n workers cn-worker-0..n-1 run, else
    None."""
    ws = worker_list(srv)
    if [i for i, _, _ in ws] != list(range(n)):
        return None
    return {i: (pid, start) for i, pid, start in ws}


# -- HTTP --


def attempt(srv, method, path, body=None, key=None, timeout=10.0):
    """One request on a fresh connection: (status, headers, body) or the exception."""
    conn = srv.connection(timeout)
    try:
        hs = {"Idempotency-Key": key} if key is not None else {}
        return h.send_request(conn, method, path, body, hs)
    except (OSError, http.client.HTTPException) as e:
        return e
    finally:
        conn.close()


def run_together(srv, requests):
    """h.run_together, failing the test when a request failed."""
    results = h.run_together(srv, requests, JOIN_TIMEOUT_S)
    for r in results:
        if isinstance(r, Exception):
            raise AssertionError("a request failed: %r\n%s" % (r, srv.diagnostics())) from r
    return results


class Background:
    """One request in a thread of its own; .result is (status, headers, body) or the
    exception, once the thread is done."""

    def __init__(self, srv, path, body, key, timeout=30.0):
        self.result = None
        self.done_at = None
        self.thread = threading.Thread(target=self._run, args=(srv, path, body, key, timeout),
                                       daemon=True)
        self.thread.start()

    def _run(self, srv, path, body, key, timeout):
        self.result = attempt(srv, "POST", path, body, key, timeout)
        self.done_at = time.monotonic()

    def running(self):
        return self.thread.is_alive()

    def join(self, timeout=JOIN_TIMEOUT_S):
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise AssertionError("a background request did not finish within %.0f s"
                                 % timeout)
        return self.result


# -- metrics --

SAMPLE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{([^}]*)\})? "
                       r"([-+]?(?:[0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?|NaN|Inf))$")
LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\.)*)"')
META_RE = re.compile(r"^# (HELP|TYPE) ([a-zA-Z_:][a-zA-Z0-9_:]*) (.+)$")
EXPECTED_METRICS = {
    "cnerium_durable_requests_total": "counter",
    "cnerium_inflight_waits_total": "counter",
    "cnerium_inflight_slots": "gauge",
    "cnerium_inflight_capacity": "gauge",
    "cnerium_inflight_lease_takeovers_total": "counter",
    "cnerium_worker_restarts_total": "counter",
    "cnerium_workers": "gauge",
}
OUTCOMES = ("executed", "replayed", "conflict", "invalid", "failed")


def parse_labels(text):
    """'a="x",b="y"' -> (("a","x"),("b","y")); raises ValueError when malformed."""
    labels, pos = [], 0
    while pos < len(text):
        m = LABEL_RE.match(text, pos)
        if not m:
            raise ValueError("bad label set %r" % text)
        labels.append((m.group(1), m.group(2)))
        pos = m.end()
        if pos < len(text):
            if text[pos] != ",":
                raise ValueError("bad label set %r" % text)
            pos += 1
    return tuple(sorted(labels))


class Metrics:
    """A parsed GET /metrics answer (Prometheus text format 0.0.4): samples
    {(name, labels): value}, HELP and TYPE per metric family, the families in order of
    appearance, and the format problems found: a line that is neither a HELP/TYPE comment
    nor 'name{labels} value' / 'name value', a sample whose family has no HELP or TYPE
    before it, a family split into several groups, a duplicate sample, a counter not
    named *_total, a histogram whose buckets are not cumulative or lack le="+Inf"."""

    SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"),
                "summary": ("_sum", "_count")}

    def __init__(self, text):
        self.text = text
        self.samples = {}
        self.help = {}
        self.type = {}
        self.problems = []
        self.order = []  # metric families in order of appearance
        self.family_of = {}  # sample name -> family
        current = None
        for lineno, line in enumerate(text.split("\n"), 1):
            if line == "":
                continue
            if line.startswith("#"):
                m = META_RE.match(line)
                if not m:
                    self.problems.append("line %d: a comment that is neither HELP nor TYPE: "
                                         "%r" % (lineno, line))
                    continue
                kind, name, rest = m.groups()
                table = self.help if kind == "HELP" else self.type
                if name in table:
                    self.problems.append("line %d: second %s for %s" % (lineno, kind, name))
                if name in self.order:
                    self.problems.append("line %d: %s for %s after its samples"
                                         % (lineno, kind, name))
                if kind == "TYPE" and rest not in ("counter", "gauge", "histogram", "summary",
                                                   "untyped"):
                    self.problems.append("line %d: unknown type %r" % (lineno, rest))
                table[name] = rest
                continue
            m = SAMPLE_RE.match(line)
            if not m:
                self.problems.append("line %d: not 'name{labels} value' nor 'name value': "
                                     "%r" % (lineno, line))
                continue
            name, labels, value = m.groups()
            try:
                key = (name, parse_labels(labels or ""))
            except ValueError as e:
                self.problems.append("line %d: %s" % (lineno, e))
                continue
            if key in self.samples:
                self.problems.append("line %d: duplicate sample %r" % (lineno, key))
            self.samples[key] = float(value)
            family = self._family(name)
            self.family_of[name] = family
            if family not in self.help or family not in self.type:
                self.problems.append("line %d: no HELP and TYPE before the samples of %s"
                                     % (lineno, family))
            if family != current:
                if family in self.order:
                    self.problems.append("line %d: the samples of %s are not together"
                                         % (lineno, family))
                else:
                    self.order.append(family)
                current = family
        for family, kind in self.type.items():
            if kind == "counter" and not family.endswith("_total"):
                self.problems.append("counter %s is not named *_total" % family)
            if kind == "histogram":
                self._check_histogram(family)

    def _family(self, name):
        if name in self.type:
            return name
        for kind, suffixes in self.SUFFIXES.items():
            for suffix in suffixes:
                base = name[:-len(suffix)]
                if name.endswith(suffix) and self.type.get(base) == kind:
                    return base
        return name

    def _check_histogram(self, family):
        series = {}
        for (name, labels), v in self.samples.items():
            if name != family + "_bucket":
                continue
            le = dict(labels).get("le")
            if le is None:
                self.problems.append("%s_bucket without le" % family)
                continue
            rest = tuple(kv for kv in labels if kv[0] != "le")
            series.setdefault(rest, []).append((float(le), v))
        for rest, buckets in series.items():
            buckets.sort()
            if not buckets or buckets[-1][0] != float("inf"):
                self.problems.append("%s%r has no le=\"+Inf\" bucket" % (family, rest))
                continue
            counts = [v for _, v in buckets]
            if counts != sorted(counts):
                self.problems.append("%s%r buckets are not cumulative" % (family, rest))
            count = self.samples.get((family + "_count", rest))
            if count is None or count != counts[-1]:
                self.problems.append("%s%r: _count %r != +Inf bucket %r"
                                     % (family, rest, count, counts[-1]))

    def value(self, name, **labels):
        key = (name, tuple(sorted(labels.items())))
        if key not in self.samples:
            raise AssertionError("metric %s%r missing in:\n%s" % (name, labels, self.text))
        v = self.samples[key]
        return int(v) if v == int(v) else v

    def outcome(self, op, outcome):
        return self.value("cnerium_durable_requests_total", operation=op, outcome=outcome)

    def outcomes(self, op):
        return {o: self.outcome(op, o) for o in OUTCOMES}

    def slots(self):
        return self.value("cnerium_inflight_slots")


def try_metrics(srv, timeout=2.0):
    """GET /metrics on a fresh connection with a short timeout: Metrics, or None when the
    request failed (a connection can sit behind a blocking handler; see
    Server.wait_for_count)."""
    r = attempt(srv, "GET", "/metrics", timeout=timeout)
    if isinstance(r, Exception) or r[0] != 200:
        return None
    return Metrics(r[2].decode("utf-8"))


def metrics(srv, timeout=15.0):
    return wait_until(lambda: try_metrics(srv), timeout, what="GET /metrics answering 200")


def wait_slots_zero(srv, timeout=SLOTS_TIMEOUT_S):
    last = [None]

    def zero():
        m = try_metrics(srv)
        if m is None:
            return False
        last[0] = m.slots()
        return last[0] == 0
    try:
        wait_until(zero, timeout, what="cnerium_inflight_slots 0")
    except AssertionError as e:
        raise AssertionError("%s (last value %s): a claim is stuck\n%s"
                             % (e, last[0], srv.diagnostics())) from None


def slot_index(operation, key, nslots):
    """The in-flight slot of (operation, key) without a principal: the table is
    direct-mapped by the little-endian first 8 bytes of SHA-256 of the store key
    (README "How it works today")."""
    skey = b"cnerium:response:" + operation.encode() + b":" + key.encode()
    return struct.unpack("<Q", hashlib.sha256(skey).digest()[:8])[0] & (nslots - 1)


class MultiProcessTestCase(h.ServerTestCase):
    def start_mp(self, *extra, data_dir=None):
        return self.start_server(h.contract_server(), *MP_ARGS, *extra, data_dir=data_dir)

    def restart(self, data_dir, *args):
        return self.restart_server(h.contract_server(), data_dir, *args,
                                   deadline_s=RESTART_DEADLINE_S)

    def wait_workers(self, srv, n=WORKERS, timeout=REPLACE_TIMEOUT_S, exclude=()):
        """Waits until exactly cn-worker-0..n-1 run and none of them has a pid in
        exclude; returns {index: (pid, starttime)}."""
        def ready():
            ws = full_set(srv, n)
            if ws and not any(pid in exclude for pid, _ in ws.values()):
                return ws
            return None
        try:
            return wait_until(ready, timeout, what="%d cn-worker children" % n)
        except AssertionError as e:
            raise AssertionError("%s; children now: %r\n%s"
                                 % (e, children(srv.proc.pid), srv.diagnostics())) from None

    def assertIdenticalResponses(self, results, what):
        """One execution, the rest replays of it: same status, body and Location."""
        statuses = {r[0] for r in results}
        self.assertEqual(statuses, {201}, "%s: statuses %r" % (what, [r[0] for r in results]))
        bodies = {r[2] for r in results}
        self.assertEqual(len(bodies), 1, "%s: every duplicate must get the one stored body: "
                         "%r" % (what, bodies))
        self.assertEqual(len({header(r[1], "Location") for r in results}), 1, what)
        replayed = [header(r[1], "Idempotent-Replayed") for r in results]
        self.assertEqual(replayed.count(None), 1, "%s: exactly one execution: %r"
                         % (what, replayed))
        self.assertEqual(replayed.count("true"), len(results) - 1, "%s: %r" % (what, replayed))


class StormTest(MultiProcessTestCase):
    def test_storm_of_identical_requests_runs_each_key_once(self):
        """40 keys, 16 concurrent identical POSTs each, 4 keys at a time (64 requests in
        flight over 4 processes x 4 threads): one execution per key."""
        srv = self.start_mp()
        run = uuid.uuid4().hex[:8]
        fast = ["storm-%s-o%d" % (run, i) for i in range(30)]
        slow = ["storm-%s-s%d" % (run, i) for i in range(10)]
        waves = [[("/orders", fast[3 * w + j]) for j in range(3)] + [("/slow?ms=50", slow[w])]
                 for w in range(10)]
        per_key = {}
        for wave in waves:
            reqs = []
            for path, key in wave:
                body = b'{"key":"%s","qty":1}' % key.encode()
                reqs += [(path, body, key)] * 16
            results = run_together(srv, reqs)
            for (path, body, key), r in zip(reqs, results):
                per_key.setdefault(key, []).append(r)
        for key in fast + slow:
            rs = per_key[key]
            self.assertEqual(len(rs), 16)
            self.assertIdenticalResponses(rs, "key " + key)
        for key in fast:
            self.assertEqual(parse_json(per_key[key][0][2])["key"], key)
        # Each execution got its own number from the shared counter: none ran twice.
        ns = sorted(parse_json(per_key[k][0][2])["n"] for k in fast)
        self.assertEqual(ns, list(range(1, 31)))
        ns = sorted(parse_json(per_key[k][0][2])["n"] for k in slow)
        self.assertEqual(ns, list(range(1, 11)))
        self.assertEqual(srv.count("orders.create"), 30)
        self.assertEqual(srv.count("slow.run"), 10)
        m = metrics(srv)
        self.assertEqual(m.outcomes("orders.create"),
                         {"executed": 30, "replayed": 30 * 15, "conflict": 0, "invalid": 0,
                          "failed": 0})
        self.assertEqual(m.outcomes("slow.run"),
                         {"executed": 10, "replayed": 10 * 15, "conflict": 0, "invalid": 0,
                          "failed": 0})
        wait_slots_zero(srv)
        # A plain retry afterwards replays too, on whichever process takes it.
        for key in fast[:5] + slow[:2]:
            path = "/orders" if key in fast else "/slow?ms=50"
            again = srv.post(path, b'{"key":"%s","qty":1}' % key.encode(), key=key)
            executed = [r for r in per_key[key] if header(r[1], "Idempotent-Replayed") is None]
            self.assertReplayOf(executed[0][:3], again)
        self.assertEqual(srv.count("orders.create"), 30)
        self.assertEqual(srv.count("slow.run"), 10)

    def test_storm_of_different_bodies_on_one_key_has_one_winner(self):
        """3 keys at once, 16 distinct bodies each, the handler holding the key 200 ms:
        per key one 201, fifteen 409 key-reused; one execution per key."""
        srv = self.start_mp()
        run = uuid.uuid4().hex[:8]
        keys = ["bodies-%s-%d" % (run, i) for i in range(3)]
        reqs = [("/slow?ms=200", b'{"variant":%d}' % v, k) for k in keys for v in range(16)]
        results = run_together(srv, reqs)
        winners = {}
        for (path, body, key), r in zip(reqs, results):
            if r[0] == 201:
                self.assertNotIn(key, winners, "key %s ran twice" % key)
                self.assertNotReplayed(r[:3])
                winners[key] = (body, r)
            else:
                self.assertProblem(r[:3], 409, h.KEY_REUSED, h.REUSED_ERROR)
        self.assertEqual(sorted(winners), sorted(keys), "every key has exactly one winner")
        self.assertEqual(srv.count("slow.run"), 3)
        m = metrics(srv)
        self.assertEqual(m.outcomes("slow.run"),
                         {"executed": 3, "replayed": 0, "conflict": 45, "invalid": 0,
                          "failed": 0})
        for key in keys:
            body, won = winners[key]
            self.assertReplayOf(won[:3], srv.post("/slow?ms=200", body, key=key))
            loser = b'{"variant":99}'
            self.assertProblem(srv.post("/slow?ms=200", loser, key=key), 409, h.KEY_REUSED)
        self.assertEqual(srv.count("slow.run"), 3)
        wait_slots_zero(srv)


class MetricsTest(MultiProcessTestCase):
    def test_metrics_format_and_counters(self):
        srv = self.start_mp("--inflight-slots", "1024")
        resp = srv.get("/metrics")
        self.assertEqual(resp[0], 200)
        ctype = header(resp[1], "Content-Type") or ""
        self.assertTrue(ctype.startswith("text/plain"), ctype)
        self.assertIn("version=0.0.4", ctype)
        self.assertTrue(resp[2].endswith(b"\n"), "the exposition ends with a newline")
        m = Metrics(resp[2].decode("utf-8"))
        self.assertEqual(m.problems, [], m.text)
        self.assertLessEqual(set(EXPECTED_METRICS), set(m.order), m.text)
        for name, kind in EXPECTED_METRICS.items():
            self.assertIn(name, m.help, "HELP line for %s" % name)
            self.assertTrue(m.help[name].strip(), "HELP text for %s" % name)
            self.assertEqual(m.type.get(name), kind, "TYPE of %s" % name)
        for (name, labels), v in m.samples.items():
            self.assertGreaterEqual(v, 0, name)
            if name == "cnerium_durable_requests_total":
                self.assertEqual([k for k, _ in labels], ["operation", "outcome"])
            elif name in EXPECTED_METRICS:
                self.assertEqual(labels, (), name)
        for op in ("orders.create", "slow.run", "payments.create"):
            self.assertEqual(m.outcomes(op), dict.fromkeys(OUTCOMES, 0))
        self.assertEqual(m.value("cnerium_workers"), WORKERS)
        self.assertEqual(m.value("cnerium_inflight_capacity"), 1024)
        self.assertEqual(m.slots(), 0)
        for name in ("cnerium_inflight_waits_total", "cnerium_inflight_lease_takeovers_total",
                     "cnerium_worker_restarts_total"):
            self.assertEqual(m.value(name), 0, name)

        # Each durable request counts once, by its final outcome, whichever process
        # served it (every request below is on a fresh connection).
        key = "metrics-" + uuid.uuid4().hex
        first = srv.post("/orders", b'{"a":1}', key=key)
        self.assertEqual(first[0], 201)
        for _ in range(3):
            self.assertReplayOf(first, srv.post("/orders", b'{"a":1}', key=key))
        for _ in range(2):
            self.assertProblem(srv.post("/orders", b'{"a":2}', key=key), 409, h.KEY_REUSED)
        self.assertProblem(srv.post("/orders", b'{"a":1}'), 400, h.KEY_MISSING)
        self.assertProblem(srv.post("/orders", b'{"a":1}', key=key,
                                    headers=[("Idempotency-Key", "second")]), 400,
                           h.KEY_INVALID)
        self.assertEqual(srv.post("/orders", b"{}", key="metrics2-" + uuid.uuid4().hex)[0],
                         201)
        m = metrics(srv)
        self.assertEqual(m.outcomes("orders.create"),
                         {"executed": 2, "replayed": 3, "conflict": 2, "invalid": 2,
                          "failed": 0})
        self.assertEqual(m.outcomes("payments.create"), dict.fromkeys(OUTCOMES, 0))
        self.assertEqual(m.value("cnerium_inflight_waits_total"), 0)

        # While a handler runs, its claim is one slot; a duplicate waits on it (a wait is
        # counted) and then replays.
        skey = "metrics-slow-" + uuid.uuid4().hex
        owner = Background(srv, "/slow?ms=2000", b"{}", skey)
        srv.wait_for_count("slow.run", 1)
        held = metrics(srv)
        owner_still_running = owner.running()
        dup = Background(srv, "/slow?ms=2000", b"{}", skey)
        dup_sent_while_owner_ran = owner.running()
        first, again = owner.join(), dup.join()
        if owner_still_running:
            self.assertEqual(held.slots(), 1, "one handler running: one slot held")
        self.assertEqual(first[0], 201, first)
        self.assertReplayOf(first, again)
        # Load: 8 keys x 6 duplicates.
        run = uuid.uuid4().hex[:8]
        reqs = [("/orders", b'{"load":%d}' % i, "load-%s-%d" % (run, i))
                for i in range(8)] * 6
        run_together(srv, reqs)
        wait_slots_zero(srv)
        m = metrics(srv)
        self.assertEqual(m.problems, [])
        self.assertEqual(m.outcomes("orders.create"),
                         {"executed": 10, "replayed": 3 + 40, "conflict": 2, "invalid": 2,
                          "failed": 0})
        self.assertEqual(m.outcomes("slow.run"),
                         {"executed": 1, "replayed": 1, "conflict": 0, "invalid": 0,
                          "failed": 0})
        if dup_sent_while_owner_ran:
            self.assertGreaterEqual(m.value("cnerium_inflight_waits_total"), 1,
                                    "the duplicate of a running request waited for it")
        self.assertEqual(srv.count("orders.create"), 10)
        self.assertEqual(srv.count("slow.run"), 1)
        self.assertEqual(m.value("cnerium_workers"), WORKERS)
        self.assertEqual(m.value("cnerium_worker_restarts_total"), 0)
        self.assertEqual(m.value("cnerium_inflight_lease_takeovers_total"), 0)


class WorkerDeathTest(MultiProcessTestCase):
    LOAD_THREADS = 4

    def test_sigkill_of_a_worker_under_load(self):
        srv = self.start_mp()
        before = self.wait_workers(srv)
        run = uuid.uuid4().hex[:8]
        stop = threading.Event()
        lock = threading.Lock()
        log = []  # (kind, key, started, result)
        hard_deadline = time.monotonic() + 40.0

        def load(i):
            n = 0
            while not stop.is_set() and time.monotonic() < hard_deadline:
                key = "kill-%s-%d-%d" % (run, i, n)
                n += 1
                t0 = time.monotonic()
                r = attempt(srv, "POST", "/orders", b'{"k":"%s"}' % key.encode(), key)
                with lock:
                    log.append(("post", key, t0, r))
                t0 = time.monotonic()
                r = attempt(srv, "GET", "/health")
                with lock:
                    log.append(("health", None, t0, r))

        def ok_since(t):
            with lock:
                return sum(1 for kind, key, t0, r in log
                           if t0 >= t and not isinstance(r, Exception))

        threads = [threading.Thread(target=load, args=(i,), daemon=True)
                   for i in range(self.LOAD_THREADS)]
        for t in threads:
            t.start()
        try:
            wait_until(lambda: ok_since(0) >= 40, 20, what="40 answers before the kill")
            victim, victim_start = before[1]
            os.kill(victim, signal.SIGKILL)
            wait_until(lambda: gone(victim, victim_start), DEATH_TIMEOUT_S, step=0.005,
                       what="cn-worker-1 (pid %d) to die" % victim)
            dead_at = time.monotonic()
            after = self.wait_workers(srv, exclude=(victim,))
            replaced_at = time.monotonic()
            # The service keeps answering: requests that start after the death succeed,
            # before and after the replacement is up.
            wait_until(lambda: ok_since(dead_at) >= 40 and ok_since(replaced_at) >= 100, 20,
                       what="answers after the kill")
        finally:
            stop.set()
            for t in threads:
                t.join(JOIN_TIMEOUT_S)
        self.assertFalse(any(t.is_alive() for t in threads), "load threads stuck")

        self.assertNotEqual(after[1][0], victim, "cn-worker-1 was replaced by a new process")
        for i in (0, 2, 3):
            self.assertEqual(after[i], before[i], "cn-worker-%d was left alone" % i)
        failed = [(kind, key, t0, r) for kind, key, t0, r in log if isinstance(r, Exception)]
        for kind, key, t0, r in failed:
            self.assertLess(t0, dead_at, "a request started after the dead worker was gone "
                            "failed: %s %s %r" % (kind, key, r))
        # Each load thread has one request in flight at a time; between the SIGKILL and
        # the exit the victim may still accept one more connection.
        self.assertLessEqual(len(failed), 2 * self.LOAD_THREADS,
                             "only requests in flight on the killed worker may fail: %r"
                             % failed)
        for kind, key, t0, r in log:
            if not isinstance(r, Exception):
                self.assertEqual(r[0], 201 if kind == "post" else 200, (kind, key, r[2]))

        m = metrics(srv)
        self.assertEqual(m.value("cnerium_worker_restarts_total"), 1)
        self.assertEqual(m.value("cnerium_workers"), WORKERS)
        wait_slots_zero(srv)

        # No key ran twice: every acknowledged key replays its one response; a key whose
        # connection died ran at most once, and its retry runs it only if it was not
        # stored.
        acked = {key: r for kind, key, t0, r in log
                 if kind == "post" and not isinstance(r, Exception)}
        died = [key for kind, key, t0, r in failed if kind == "post"]
        for key, r in acked.items():
            self.assertEqual(parse_json(r[2])["key"], key)
        ns = [parse_json(r[2])["n"] for r in acked.values()]
        self.assertEqual(len(set(ns)), len(ns), "an execution number was handed out twice")
        count = srv.count("orders.create")
        self.assertGreaterEqual(count, len(acked))
        self.assertLessEqual(count, len(acked) + len(died),
                             "more executions than keys: a key ran twice")
        for key, r in acked.items():
            self.assertReplayOf(r, srv.post("/orders", b'{"k":"%s"}' % key.encode(), key=key))
        self.assertEqual(srv.count("orders.create"), count, "replays must not execute")
        reran = 0
        for key in died:
            r = srv.post("/orders", b'{"k":"%s"}' % key.encode(), key=key)
            self.assertEqual(r[0], 201, r[2])
            if header(r[1], "Idempotent-Replayed") is None:
                reran += 1
            self.assertReplayOf(r, srv.post("/orders", b'{"k":"%s"}' % key.encode(), key=key))
        self.assertEqual(srv.count("orders.create"), count + reran)
        self.assertEqual(metrics(srv).value("cnerium_worker_restarts_total"), 1)

    def test_killing_every_worker_frees_the_claim_of_a_running_handler(self):
        """The owner of a key is killed mid-handler (every worker is killed, so whichever
        process ran it): the replacements come up, the claim is freed, a retry runs the
        operation (nothing was stored) and later retries replay."""
        srv = self.start_mp("--inflight-wait-ms", "5000")
        before = self.wait_workers(srv)
        key = "owner-dies-" + uuid.uuid4().hex
        body = b'{"slow":1}'
        owner = Background(srv, "/slow?ms=1500", body, key)
        srv.wait_for_count("slow.run", 1)
        held = metrics(srv)
        if owner.running():
            self.assertEqual(held.slots(), 1)
        for pid, start in before.values():
            os.kill(pid, signal.SIGKILL)
        for pid, start in before.values():
            wait_until(lambda: gone(pid, start), DEATH_TIMEOUT_S,
                       what="worker pid %d to die" % pid)
        result = owner.join()
        self.assertIsInstance(result, Exception,
                              "the killed handler's response must never be sent: %r"
                              % (result,))
        old = [pid for pid, _ in before.values()]
        self.wait_workers(srv, exclude=old)
        wait_slots_zero(srv)
        self.assertEqual(metrics(srv).value("cnerium_worker_restarts_total"), WORKERS)
        waits_before = metrics(srv).value("cnerium_inflight_waits_total")
        retry = srv.post("/slow?ms=1500", body, key=key)
        self.assertEqual(retry[0], 201, "the freed key runs again, not 409 after a wait on "
                         "a stale claim: %r" % (retry[2],))
        self.assertNotReplayed(retry)
        self.assertEqual(parse_json(retry[2])["n"], 2)
        self.assertEqual(metrics(srv).value("cnerium_inflight_waits_total"), waits_before,
                         "the retry waited on a stale claim")
        self.assertEqual(srv.count("slow.run"), 2)
        self.assertReplayOf(retry, srv.post("/slow?ms=1500", body, key=key))
        self.assertEqual(srv.count("slow.run"), 2)
        wait_slots_zero(srv)

    def test_first_restart_of_a_worker_is_at_once(self):
        """A worker that dies is replaced at once; only a replacement that dies young
        again waits (100 ms, doubling; README). The supervisor logs the backoff it applied
        to every restart: the first death of a worker gets none, even when the worker was
        young; a second death soon after gets the first step."""
        srv = self.start_mp()
        before = self.wait_workers(srv)
        victim, start = before[2]
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: (workers_of(srv).get(2) or (victim,))[0] != victim, 30.0,
                   step=0.002, what="a new cn-worker-2")
        wait_until(lambda: "cn-worker-2 restarted" in srv.stderr_text(), 10.0,
                   what="the restart log line")
        first = re.findall(r"cn-worker-2 restarted \(pid \d+, backoff (\d+) ms\)",
                           srv.stderr_text())
        self.assertEqual(first, ["0"], "the first restart of cn-worker-2 was delayed by the "
                         "crash backoff")
        second, _ = self.wait_workers(srv, exclude=(victim,))[2]
        os.kill(second, signal.SIGKILL)
        wait_until(lambda: len(re.findall(r"cn-worker-2 restarted",
                                          srv.stderr_text())) >= 2, 30.0,
                   what="the second restart log line")
        both = re.findall(r"cn-worker-2 restarted \(pid \d+, backoff (\d+) ms\)",
                          srv.stderr_text())
        self.assertEqual(both[0], "0")
        self.assertIn(both[1], ("0", "100"), "a young replacement that dies waits one step")


class ProcessTest(MultiProcessTestCase):
    def test_worker_names_and_pdeathsig(self):
        data_dir = self.make_data_dir()
        srv = self.start_mp(data_dir=data_dir)
        kids = children(srv.proc.pid)
        names = sorted(comm for comm, _ in kids.values() if WORKER_NAME_RE.match(comm))
        self.assertEqual(names, ["cn-worker-%d" % i for i in range(WORKERS)],
                         "exactly %d worker children, named cn-worker-<i>: %r"
                         % (WORKERS, kids))
        for pid, (comm, _) in kids.items():
            with open("/proc/%d/comm" % pid) as f:
                self.assertEqual(f.read().strip(), comm)
        self.assertNotRegex(h.proc_stat(srv.proc.pid).comm, WORKER_NAME_RE,
                            "the supervisor keeps its own name")
        key = "pdeath-" + uuid.uuid4().hex
        acked = srv.post("/orders", b'{"pdeath":1}', key=key)
        self.assertEqual(acked[0], 201)

        os.kill(srv.proc.pid, signal.SIGKILL)
        srv.proc.wait(h.STOP_TIMEOUT_S)
        for pid, (comm, start) in kids.items():
            wait_until(lambda: gone(pid, start), DEATH_TIMEOUT_S,
                       what="%s (pid %d) to die with the supervisor" % (comm, pid))

        srv2 = self.restart(data_dir, *MP_ARGS)
        self.wait_workers(srv2)
        self.assertReplayOf(acked, srv2.post("/orders", b'{"pdeath":1}', key=key))
        self.assertEqual(srv2.count("orders.create"), 0)

    def test_second_server_on_the_same_data_dir(self):
        data_dir = self.make_data_dir()
        first = self.start_mp(data_dir=data_dir)
        ws = self.wait_workers(first)
        key = "lock-" + uuid.uuid4().hex
        acked = first.post("/orders", b'{"lock":1}', key=key)
        self.assertEqual(acked[0], 201)

        second = self.server(h.contract_server(), *MP_ARGS, data_dir=data_dir).spawn()
        rc = second.wait_exit(h.STARTUP_TIMEOUT_S)
        self.assertEqual(rc, 2, "a second server on a data dir in use exits 2")
        err = second.stderr_text()
        self.assertIn("in use by another server", err)
        self.assertIn(data_dir, err)
        self.assertNotIn("listening on", second.stdout_text())

        self.assertTrue(first.alive())
        self.assertEqual(full_set(first), ws, "the first server's workers are untouched")
        with open(os.path.join(data_dir, "LOCK")) as f:
            self.assertEqual(f.read().strip(), str(first.proc.pid),
                             "the LOCK file still names the first server")
        self.assertReplayOf(acked, first.post("/orders", b'{"lock":1}', key=key))
        self.assertEqual(first.post("/orders", b"{}", key="lock2-" + uuid.uuid4().hex)[0], 201)
        self.assertEqual(first.count("orders.create"), 2)
        self.assertEqual(first.health(), 200)

    def test_sigterm_drains_in_flight_requests(self):
        data_dir = self.make_data_dir()
        srv = self.start_mp(data_dir=data_dir)
        kids = children(srv.proc.pid)
        key = "drain-" + uuid.uuid4().hex
        owner = Background(srv, "/slow?ms=1000", b"{}", key)
        srv.wait_for_count("slow.run", 1)
        os.kill(srv.proc.pid, signal.SIGTERM)
        rc = srv.wait_exit(h.STOP_TIMEOUT_S + 5)
        self.assertEqual(rc, 0, "SIGTERM: drain, then exit code 0")
        done = owner.join()
        self.assertNotIsInstance(done, Exception, "the request in progress was drained")
        self.assertEqual(done[0], 201, done[2])
        for pid, (comm, start) in kids.items():
            self.assertTrue(gone(pid, start), "%s outlived the supervisor" % comm)
        srv2 = self.start_mp(data_dir=data_dir)
        self.assertReplayOf(done, srv2.post("/slow?ms=1000", b"{}", key=key))
        self.assertEqual(srv2.count("slow.run"), 0)


class InflightModesTest(MultiProcessTestCase):
    def test_reject_mode_across_processes(self):
        srv = self.start_mp("--inflight", "reject")
        key = "reject-" + uuid.uuid4().hex
        body = b'{"reject":1}'
        owner = Background(srv, "/slow?ms=2000", body, key)
        srv.wait_for_count("slow.run", 1)
        dups = run_together(srv, [("/slow?ms=2000", body, key)] * 6)
        other = run_together(srv, [("/slow?ms=2000", b'{"reject":2}', key)] * 2)
        self.assertTrue(owner.running(), "the 409s must come while the owner still runs")
        for r in dups:
            self.assertProblem(r[:3], 409, h.IN_PROGRESS)
            self.assertEqual(header(r[1], "Retry-After"), "1")
            self.assertLess(r[3], 1.5, "a rejected duplicate must not wait")
        for r in other:
            self.assertProblem(r[:3], 409, h.KEY_REUSED, h.REUSED_ERROR)
            self.assertIsNone(header(r[1], "Retry-After"))
        first = owner.join()
        self.assertEqual(first[0], 201, first)
        self.assertNotReplayed(first)
        self.assertReplayOf(first, srv.post("/slow?ms=2000", body, key=key))
        self.assertEqual(srv.count("slow.run"), 1)
        m = metrics(srv)
        self.assertEqual(m.outcomes("slow.run"),
                         {"executed": 1, "replayed": 1, "conflict": 8, "invalid": 0,
                          "failed": 0})
        self.assertEqual(m.value("cnerium_inflight_waits_total"), 0,
                         "reject mode never waits for a duplicate")
        wait_slots_zero(srv)

    def test_lease_takeover(self):
        """--lease-ms 300, handlers of 1500 ms. Key A: a duplicate sent at once waits and
        takes the claim over when the lease ends. Key B: a duplicate sent after the lease
        ended takes it over without waiting. Each duplicate runs (201) while the original
        still runs; each original answers 503 and stores nothing; retries replay the
        duplicate's response.

        The two keys go one after the other, and each request is sent only once the
        handler before it is seen running: a connection that a request thread accepts
        just before its handler blocks waits behind that handler (README, Known
        limitations), which would reorder the requests."""
        srv = self.start_mp("--lease-ms", "300")
        run = uuid.uuid4().hex[:8]
        body = b'{"lease":1}'
        results = {}

        # A: the duplicate goes out at once and waits for the lease to end.
        key_a = "lease-a-" + run
        sent = time.monotonic()
        orig = Background(srv, "/slow?ms=1500", body, key_a)
        srv.wait_for_count("slow.run", 1)
        dup_early = time.monotonic() - sent < 0.2  # surely before the lease ends
        dup = Background(srv, "/slow?ms=1500", body, key_a)
        srv.wait_for_count("slow.run", 2)
        self.assertTrue(orig.running(), "the duplicate ran while the original still ran")
        results["orig_a"], results["dup_a"] = orig.join(), dup.join()
        m = metrics(srv)
        self.assertEqual(m.value("cnerium_inflight_lease_takeovers_total"), 1)
        waits_a = m.value("cnerium_inflight_waits_total")
        if dup_early:
            self.assertEqual(waits_a, 1, "A's duplicate waited for the lease to end")

        # B: the duplicate goes out once the lease has surely ended (the claim was taken
        # before the handler was seen running); the lease is a span of time, so this is
        # the one place the suite waits for time itself.
        key_b = "lease-b-" + run
        orig = Background(srv, "/slow?ms=1500", body, key_b)
        srv.wait_for_count("slow.run", 3)
        time.sleep(0.4)
        dup = Background(srv, "/slow?ms=1500", body, key_b)
        srv.wait_for_count("slow.run", 4)
        self.assertTrue(orig.running(), "the duplicate ran while the original still ran")
        results["orig_b"], results["dup_b"] = orig.join(), dup.join()

        for name, r in results.items():
            self.assertNotIsInstance(r, Exception, name)
        for name in ("orig_a", "orig_b"):
            self.assertProblem(results[name], 503, STORAGE)
        for name, n in (("dup_a", 2), ("dup_b", 4)):
            self.assertEqual(results[name][0], 201, results[name][2])
            self.assertNotReplayed(results[name])
            self.assertEqual(parse_json(results[name][2])["n"], n)
        self.assertEqual(srv.count("slow.run"), 4)
        m = metrics(srv)
        self.assertEqual(m.value("cnerium_inflight_lease_takeovers_total"), 2)
        self.assertEqual(m.value("cnerium_inflight_waits_total"), waits_a,
                         "B's duplicate came after the lease: it took over without waiting")
        self.assertEqual(m.outcomes("slow.run"),
                         {"executed": 2, "replayed": 0, "conflict": 0, "invalid": 0,
                          "failed": 2})
        wait_slots_zero(srv)
        self.assertReplayOf(results["dup_a"], srv.post("/slow?ms=1500", body, key=key_a))
        self.assertReplayOf(results["dup_b"], srv.post("/slow?ms=1500", body, key=key_b))
        self.assertEqual(srv.count("slow.run"), 4)

    def test_colliding_key_does_not_take_over_a_claim(self):
        """The table is direct-mapped: a different key in the same slot waits (README).
        Past the lease, only a waiting duplicate of the key may take its claim over
        (README); a request for another key must not make the running handler's response
        be dropped (503, nothing stored) when no duplicate of it exists."""
        nslots = 64
        srv = self.start_mp("--lease-ms", "300", "--inflight-slots", str(nslots))
        run = uuid.uuid4().hex[:8]
        key_x = "slot-x-" + run
        slot = slot_index("slow.run", key_x, nslots)
        key_y = next((k for k in ("slot-y-%s-%d" % (run, i) for i in range(100000))
                      if slot_index("orders.create", k, nslots) == slot), None)
        self.assertIsNotNone(key_y, "no key found for slot %d" % slot)
        orig = Background(srv, "/slow?ms=1500", b'{"x":1}', key_x)
        srv.wait_for_count("slow.run", 1)
        other = srv.post("/orders", b'{"y":1}', key=key_y)
        self.assertEqual(other[0], 201, other[2])
        first = orig.join()
        self.assertNotIsInstance(first, Exception)
        self.assertEqual(metrics(srv).value("cnerium_inflight_lease_takeovers_total"), 0,
                         "a request for key %r took over the claim of key %r (same slot %d)"
                         % (key_y, key_x, slot))
        self.assertEqual(first[0], 201, "no duplicate of %r ever came, yet its handler's "
                         "response was dropped: %r" % (key_x, first[2]))
        self.assertReplayOf(first, srv.post("/slow?ms=1500", b'{"x":1}', key=key_x))
        self.assertEqual(srv.count("slow.run"), 1)


class LoopsTest(MultiProcessTestCase):
    def test_a_slow_handler_holds_only_its_own_loop(self):
        """One worker with two event loops. While a slow handler runs on one loop, a
        fresh durable POST is served by the other, and its commit is acknowledged by that
        loop: acks are not tied to one loop. Which loop accepts a connection is up to the
        kernel, so the roles are swapped once: slow A holds loop X while fresh P1 goes
        through Y; slow B, sent while A runs, can only land on Y, and once A is done fresh
        P2 goes through X while B runs. One of X and Y is the worker's first loop, which
        once answered every ack of the worker.

        Nothing polls the server while both loops are held: no loop would be free to
        answer (B's start is seen in its answer instead: another thread than A's).
        "While A runs" is checked against the time A was sent plus its sleep: an answer
        that had to wait for A's handler comes after that, however fast the machine;
        an answer the other loop gives comes long before it, however slow."""
        srv = self.start_mp("--workers", "1", "--threads", "2")
        run = uuid.uuid4().hex[:8]
        sent_a = time.monotonic()
        slow_a = Background(srv, "/slow?ms=3000", b'{"slow":"a"}', "loops-a-" + run)
        srv.wait_for_count("slow.run", 1)
        p1 = srv.post("/orders", b'{"item":"p1"}', key="loops-p1-" + run)
        self.assertEqual(p1[0], 201, p1[2])
        self.assertLess(time.monotonic() - sent_a, 3.0, "P1 was answered while A still ran")
        sent_b = time.monotonic()
        slow_b = Background(srv, "/slow?ms=5000", b'{"slow":"b"}', "loops-b-" + run)
        a = slow_a.join()
        self.assertEqual(a[0], 201, a)
        p2 = srv.post("/orders", b'{"item":"p2"}', key="loops-p2-" + run)
        self.assertEqual(p2[0], 201, p2[2])
        self.assertLess(time.monotonic() - sent_b, 5.0, "P2 was answered while B still ran")
        b = slow_b.join()
        self.assertEqual(b[0], 201, b)
        self.assertNotEqual(parse_json(a[2])["thread"], parse_json(b[2])["thread"],
                            "A and B ran on the two loops")
        self.assertEqual(srv.count("orders.create"), 2)
        self.assertReplayOf(p1, srv.post("/orders", b'{"item":"p1"}', key="loops-p1-" + run))


class SingleProcessTest(MultiProcessTestCase):
    def test_single_process(self):
        srv = self.start_server(h.contract_server(), "--single-process", "--threads", "4")
        self.assertEqual(children(srv.proc.pid), {}, "--single-process forks nothing")
        self.assertNotRegex(h.proc_stat(srv.proc.pid).comm, WORKER_NAME_RE)
        key = "single-" + uuid.uuid4().hex
        results = run_together(srv, [("/slow?ms=200", b'{"s":1}', key)] * 8)
        self.assertIdenticalResponses(results, "single process")
        self.assertEqual(parse_json(results[0][2])["n"], 1)
        self.assertEqual(srv.count("slow.run"), 1)
        m = metrics(srv)
        self.assertEqual(m.problems, [])
        self.assertEqual(m.value("cnerium_workers"), 1)
        self.assertEqual(m.outcomes("slow.run"),
                         {"executed": 1, "replayed": 7, "conflict": 0, "invalid": 0,
                          "failed": 0})
        wait_slots_zero(srv)
        self.assertEqual(children(srv.proc.pid), {})


if __name__ == "__main__":
    h.main()
