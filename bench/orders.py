#!/usr/bin/env python3
"""The order service (examples/orders.c) end to end: order create / cancel / ship at 64
connections against GET /health on the same server, the latency of one append alone (one
connection), and the read model's rebuild rate.

    CMAKE_BUILD_TYPE=Release scripts/build.sh build-release -DCNERIUM_BUILD_TESTS=OFF
    python3 bench/orders.py [seconds]        (default 3; CNERIUM_BENCH_WORKERS, _THREADS)

Load: wrk (Debian's package; installed by bench/run and bench/run-wrk.sh) with Lua scripts written to a
temp dir, 2 threads, 64 connections, on the same cores as the server. Every create uses
a fresh Idempotency-Key; every cancel and ship a fresh key and an order of its own (taken
from the creates, so each one appends an event). Server CPU per request (all server
processes, from /proc) is the figure the load generator does not skew.

Rebuild: each worker's read model starts empty and folds the whole global log on its
first list request. Measured twice: the first GET /api/v1/orders?limit=1 after the load
(in a worker that never listed), and, after 2 x seconds more of creates, the first one
after a SIGTERM restart on the same data dir; events/s = events in the log / (that request's time - a warm request's time).

Prints a markdown table; writes nothing. The server runs on 127.0.0.1 with a free port
and its own temp data dir, stopped by PID (then its process group) at the end.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import run  # noqa: E402  (bench/run.py: machine(), tree_cpu())

ROOT = os.path.dirname(HERE)
ORDERS = os.environ.get("CNERIUM_ORDERS_BIN",
                        os.path.join(ROOT, "build-release", "examples", "cnerium_orders"))
SECS = float(sys.argv[1]) if len(sys.argv) > 1 else 3.0
WORKERS = os.environ.get("CNERIUM_BENCH_WORKERS", "2")
THREADS = os.environ.get("CNERIUM_BENCH_THREADS", "1")
CMD_SECS = max(1, round(SECS / 3))  # wrk takes whole seconds; each command needs an order
CONNS = 64
API = "/api/v1/orders"
ORDER = '{"customer_id":"cust-bench","items":[{"product_id":"p1","name":"Widget",' \
        '"quantity":2,"unit_price_cents":1000}]}'

CREATE_LUA = r"""
local counter = 0
local next_tid = 0
function setup(thread)
    thread:set("tid", next_tid)
    next_tid = next_tid + 1
end
function init(args)
    tid = tid or 0
    prefix = args[1] .. "-" .. tostring(tid) .. "-"
end
function request()
    counter = counter + 1
    return wrk.format("POST", "/api/v1/orders", {
        ["Content-Type"] = "application/json",
        ["Idempotency-Key"] = prefix .. counter,
    }, BODY)
end
"""

# Each wrk thread takes every nth id of the file (n = threads), so no order gets two
# commands; past the end it starts over (those answers are 400s, counted as non-2xx).
COMMAND_LUA = r"""
local next_tid = 0
local ids = {}
local i = 0
function setup(thread)
    thread:set("tid", next_tid)
    next_tid = next_tid + 1
end
function init(args)
    tid = tid or 0
    local n = tonumber(args[2])
    local k = 0
    for line in io.lines(args[1]) do
        if k % n == tid then
            ids[#ids + 1] = line
        end
        k = k + 1
    end
    prefix = args[3] .. "-" .. tostring(tid) .. "-"
end
function request()
    i = i + 1
    local id = ids[(i - 1) % #ids + 1]
    return wrk.format("POST", "/api/v1/orders/" .. id .. "/" .. VERB, {
        ["Content-Type"] = "application/json",
        ["Idempotency-Key"] = prefix .. i,
    }, BODY)
end
"""

DONE_LUA = r"""
function done(summary, latency, requests)
    local e = summary.errors
    io.write(string.format(
        '{"requests":%d,"duration_us":%d,"non2xx":%d,"errors":%d,"p50":%d,"p99":%d}\n',
        summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
        latency:percentile(50), latency:percentile(99)))
end
"""


class Server:
    """cnerium_orders on 127.0.0.1 with a free port; start() again after stop() reuses the
    data dir."""

    def __init__(self, data_dir):
        self.data_dir = data_dir
        self.proc = None
        self.log = None

    def start(self):
        self.log = open(os.path.join(os.path.dirname(self.data_dir), "stdout"), "w+")
        cmd = [ORDERS, "--host", "127.0.0.1", "--port", "0", "--workers", WORKERS,
               "--threads", THREADS, "--data-dir", self.data_dir, "--log-level", "warn",
               "--realtime-host", "127.0.0.1", "--realtime-port", "0"]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            self.log.seek(0)
            m = re.search(r"listening on http://[^:]+:(\d+)", self.log.read())
            if m:
                self.url = "http://127.0.0.1:%s" % m.group(1)
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise SystemExit("bench: cnerium_orders did not start")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                pass
        if self.proc:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.proc.wait(10)
        if self.log:
            self.log.close()
            self.log = None


def get(url, timeout=60):
    t0 = time.monotonic()
    with urllib.request.urlopen(url, timeout=timeout) as r:
        body = r.read()
    return time.monotonic() - t0, json.loads(body)


def wrk(srv, tmp, name, path, script, args=(), secs=SECS, conns=CONNS):
    """One wrk run; its done() summary plus req/s and the server's CPU per request."""
    lua = os.path.join(tmp, name + ".lua")
    with open(lua, "w") as f:
        f.write(script + DONE_LUA)
    before = run.tree_cpu(srv.proc.pid)
    cmd = ["wrk", "-t%d" % min(2, conns), "-c%d" % conns, "-d%ds" % max(1, round(secs)), "--timeout", "30s",
           "-s", lua, srv.url + path]
    if args:
        cmd += ["--"] + list(args)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=secs + 120)
    lines = [l for l in r.stdout.splitlines() if l.startswith("{")]
    if not lines:
        raise SystemExit("bench: wrk failed: %s %s" % (r.stdout, r.stderr))
    res = json.loads(lines[-1])
    res["rps"] = res["requests"] / (res["duration_us"] / 1e6)
    res["cpu_us"] = (run.tree_cpu(srv.proc.pid) - before) * 1e6 / max(1, res["requests"])
    return res


def all_orders(srv):
    """Every order of the read model, paging with the cursor."""
    out, after = [], None
    while True:
        q = "?limit=500" + ("&after=" + after if after else "")
        _, page = get(srv.url + API + q)
        out += page["orders"]
        after = page["next_after"]
        if after is None:
            return out


def rebuild(srv):
    """(seconds of the first list request, seconds of a warm one) on a fresh worker."""
    first, _ = get(srv.url + API + "?limit=1")
    warm = []
    for _ in range(20):  # every worker caught up: later requests only fold what is new
        warm.append(get(srv.url + API + "?limit=1")[0])
    return first, sorted(warm)[len(warm) // 2]


def main():
    if not os.access(ORDERS, os.X_OK):
        raise SystemExit("bench: %s is missing; build it with\n  CMAKE_BUILD_TYPE=Release "
                         "scripts/build.sh build-release -DCNERIUM_BUILD_TESTS=OFF" % ORDERS)
    if not shutil.which("wrk"):
        raise SystemExit("bench: wrk is missing (apt-get install wrk)")
    tmp = tempfile.mkdtemp(prefix="cnerium-bench-orders-")
    srv = Server(os.path.join(tmp, "data"))
    rows = {}
    try:
        srv.start()
        rows["health"] = wrk(srv, tmp, "health", "/health",
                             'function request() return wrk.format("GET", "/health") end')
        # One connection: the latency of one append committed alone (no group commit).
        rows["create1"] = wrk(srv, tmp, "create1", API,
                              "BODY = %s\n" % json.dumps(ORDER) + CREATE_LUA, ["one"],
                              secs=CMD_SECS, conns=1)
        rows["create"] = wrk(srv, tmp, "create", API,
                             "BODY = %s\n" % json.dumps(ORDER) + CREATE_LUA, ["bench"])

        # First list request of the workers: the read model folds the log from 0.
        t_first, t_warm = rebuild(srv)
        orders = all_orders(srv)
        ids = [o["order_id"] for o in orders]
        half = len(ids) // 2
        for verb, part, body in (("cancel", ids[:half], '{"reason":"bench"}'),
                                 ("ship", ids[half:], '{"tracking_number":"TRK-1"}')):
            path = os.path.join(tmp, verb + ".ids")
            with open(path, "w") as f:
                f.write("\n".join(part) + "\n")
            script = "VERB = %s\nBODY = %s\n" % (json.dumps(verb), json.dumps(body))
            rows[verb] = wrk(srv, tmp, verb, API + "/x/" + verb, script + COMMAND_LUA,
                             [path, "2", verb], secs=CMD_SECS)
        rb1 = (len(ids), t_first, t_warm)

        # A longer log for the rebuild after a restart: more creates (not in the table).
        wrk(srv, tmp, "prefill", API, "BODY = %s\n" % json.dumps(ORDER) + CREATE_LUA,
            ["prefill"], secs=2 * SECS)
        # After a restart on the same data dir: every worker starts empty.
        orders = all_orders(srv)
        events = len(orders) + sum(o["status"] != "placed" for o in orders)
        srv.stop()
        srv.start()
        t_first2, t_warm2 = rebuild(srv)
        rb2 = (events, t_first2, t_warm2)
    finally:
        srv.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    cores, kernel, cpu, disk = run.machine()
    print("## Order service (`cnerium_orders`), %d connections (one row: 1), sync durability"
          % CONNS)
    print("")
    print("Written by `python3 bench/orders.py %g` on %s. Machine: %d cores (%s), Linux %s, "
          "data dir on %s; wrk (-t2) on the same cores. Server: `cnerium_orders --workers %s "
          "--threads %s`, Release build. Creates run %d s, cancels and ships %d s each, "
          "each on orders of their own." % (SECS, time.strftime("%Y-%m-%d %H:%M UTC",
                                                                 time.gmtime()),
                                              cores, cpu, kernel, disk, WORKERS, THREADS,
                                              max(1, round(SECS)), CMD_SECS))
    print("")
    print("| request | req/s | vs GET /health | p50 | p99 | requests | non-2xx | errors | "
          "server CPU/req |")
    print("|---|---|---|---|---|---|---|---|---|")
    names = {"health": "GET /health", "create": "POST /api/v1/orders (OrderPlaced)",
             "create1": "POST /api/v1/orders, 1 connection (one append per commit)",
             "cancel": "POST .../{id}/cancel (read stream, OrderCancelled)",
             "ship": "POST .../{id}/ship (read stream, OrderShipped)"}
    plain = rows["health"]["rps"]
    for k in ("health", "create1", "create", "cancel", "ship"):
        r = rows[k]
        print("| %s | %.0f | %.0f%% | %.2f ms | %.2f ms | %d | %d | %d | %.1f us |" % (
            names[k], r["rps"], 100.0 * r["rps"] / plain, r["p50"] / 1000.0,
            r["p99"] / 1000.0, r["requests"], r["non2xx"], r["errors"], r["cpu_us"]))
    print("")
    print("| read-model rebuild from position 0 | events | first list request | warm list "
          "request | events/s |")
    print("|---|---|---|---|---|")
    for name, (n, first, warm) in (("after the creates (OrderPlaced only)", rb1),
                                   ("after a restart (all events)", rb2)):
        net = max(first - warm, 1e-9)
        print("| %s | %d | %.1f ms | %.2f ms | %.2fM |" % (name, n, first * 1000,
                                                           warm * 1000, n / net / 1e6))


if __name__ == "__main__":
    main()
