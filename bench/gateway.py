"""cnerium-gateway in front of a Node Express backend (tests/integration/
express_upstream.js) against the same backend alone: fresh-key POSTs through the
gateway (every one reaches the backend once and is stored), replays (served by the
gateway, the backend untouched), the backend called directly without any idempotency
(what the gateway's guarantees cost), the backend made idempotent by its own npm
middleware with Redis instead (bench/express_idempotent.js: express-idempotency and its
Redis adapter, installed here with npm into bench/.npm; Redis from Debian's
redis-server, with appendfsync always so that an answer is durable before it is sent, as
the gateway's is), plain passthrough, and a large download passed through (MB/s, and
the gateway workers' peak memory, which it must not grow by).

    python3 bench/gateway.py [seconds-per-run]     (bench/run calls it; prints a section)

Everything on 127.0.0.1, on the same cores as the load generator; the gateway is the
Release build (build-release), --workers 2 --threads 1, with its own temp data dir; one
node process. (@node-idempotency/express, the middleware the issue named, was not on
this machine's npm registry (404): express-idempotency is the one measured.)
"""
import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

import cnharness  # noqa: E402  (read_line)
import run  # noqa: E402  (cnload, machine)

SECS = float(sys.argv[1]) if len(sys.argv) > 1 else 5.0
GATEWAY = os.path.join(ROOT, "build-release", "cnerium-gateway")
NPM_DIR = os.path.join(HERE, ".npm")  # scratch, .gitignore'd


def npm_packages():
    """express-idempotency and its Redis adapter in NPM_DIR (installed once)."""
    if not os.path.isdir(os.path.join(NPM_DIR, "node_modules", "express-idempotency")):
        os.makedirs(NPM_DIR, exist_ok=True)
        subprocess.run(["npm", "install", "--prefix", NPM_DIR, "--no-audit", "--no-fund",
                        "express-idempotency@1", "express-idempotency-redis-adapter@1"],
                       check=True, stdout=subprocess.DEVNULL, timeout=300)
    return os.path.join(NPM_DIR, "node_modules")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(data):
    port = free_port()
    p = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                          "--dir", data, "--save", "", "--appendonly", "yes",
                          "--appendfsync", "always"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return p, port
        except OSError:
            time.sleep(0.05)
    raise SystemExit("bench: redis-server did not start")


def start_idempotent_node(redis_port, modules):
    env = dict(os.environ, NODE_PATH="/usr/share/nodejs:" + modules)
    p = subprocess.Popen(["node", os.path.join(HERE, "express_idempotent.js"),
                          str(redis_port)], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    line = cnharness.read_line(p.stdout, 30.0, "the idempotent Express backend's port")
    if not line.startswith("listening "):
        raise SystemExit("bench: the idempotent Express backend did not start")
    return p, int(line.split()[1])


def start_node():
    env = dict(os.environ, NODE_PATH="/usr/share/nodejs")
    p = subprocess.Popen(["node", os.path.join(ROOT, "tests", "integration",
                                               "express_upstream.js")],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
                         start_new_session=True)
    line = cnharness.read_line(p.stdout, 30.0, "the Express backend's port")
    if not line.startswith("listening "):
        raise SystemExit("bench: the Express backend did not start")
    return p, int(line.split()[1])


def start_gateway(upstream_port, data):
    out = open(os.path.join(data, "stdout"), "w+")
    p = subprocess.Popen([GATEWAY, "--upstream", "http://127.0.0.1:%d" % upstream_port,
                          "--route", "POST /api/orders orders.create", "--port", "0",
                          "--workers", "2", "--threads", "1", "--data-dir",
                          os.path.join(data, "d"), "--realtime-port", "0",
                          "--log-level", "warn"], stdout=out, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        out.seek(0)
        m = re.search(r"listening on http://[^:]+:(\d+)", out.read())
        if m:
            return p, int(m.group(1))
        if p.poll() is not None:
            break
        time.sleep(0.05)
    raise SystemExit("bench: the gateway did not start")


def stop(p):
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)


BLOB = 256 << 20  # one download, bytes


def download(port):
    """GETs /blob (BLOB bytes) on 127.0.0.1:port; returns MB/s."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        t0 = time.monotonic()
        conn.request("GET", "/blob?n=%d" % BLOB)
        r = conn.getresponse()
        got = 0
        while True:
            data = r.read(1 << 20)
            if not data:
                break
            got += len(data)
        elapsed = time.monotonic() - t0
    finally:
        conn.close()
    if got != BLOB:
        raise RuntimeError("download broke off at %d bytes" % got)
    return BLOB / elapsed / 1e6


def peak_rss_kib(pid):
    """The largest VmHWM among pid's child processes (the gateway's workers), KiB."""
    peak = 0
    for task in os.listdir("/proc/%d/task" % pid):
        with open("/proc/%d/task/%s/children" % (pid, task)) as f:
            for child in f.read().split():
                with open("/proc/%s/status" % child) as st:
                    for line in st:
                        if line.startswith("VmHWM:"):
                            peak = max(peak, int(line.split()[1]))
    return peak


def main():
    cores, kernel, cpu, disk = run.machine()
    data = tempfile.mkdtemp(prefix="cnerium-bench-gw-")
    node, nport = start_node()
    rows = []
    try:
        gw, gport = start_gateway(nport, data)
        try:
            direct = "http://127.0.0.1:%d" % nport
            via = "http://127.0.0.1:%d" % gport
            base = run.cnload(direct, "fresh", extra=["--path", "/api/orders"])
            rows.append(("Express alone: POST /api/orders (no idempotency)", base))
            rows.append(("gateway: fresh-key POST (one backend call, stored)",
                         run.cnload(via, "fresh", extra=["--path", "/api/orders"])))
            rows.append(("gateway: replay (backend not called)",
                         run.cnload(via, "replay", extra=["--path", "/api/orders"])))
            # The same backend, made idempotent by its own middleware and Redis.
            rdata = os.path.join(data, "redis")
            os.makedirs(rdata)
            redis, rport = start_redis(rdata)
            try:
                mnode, mport = start_idempotent_node(rport, npm_packages())
                try:
                    mw = "http://127.0.0.1:%d" % mport
                    rows.append(("Express + express-idempotency + Redis: fresh-key POST",
                                 run.cnload(mw, "fresh", extra=["--path", "/api/orders"])))
                    rows.append(("Express + express-idempotency + Redis: replay",
                                 run.cnload(mw, "replay", extra=["--path", "/api/orders"])))
                finally:
                    stop(mnode)
            finally:
                stop(redis)
            rows.append(("Express alone: GET /ping", run.cnload(direct, "plain",
                                                                extra=["--path", "/ping"])))
            rows.append(("gateway: GET /ping passed through",
                         run.cnload(via, "plain", extra=["--path", "/ping"])))
            rss_before = peak_rss_kib(gw.pid)
            speeds = [(download(nport), download(gport)) for _ in range(3)]
            rss_after = peak_rss_kib(gw.pid)
        finally:
            stop(gw)
    finally:
        stop(node)
        shutil.rmtree(data, ignore_errors=True)

    print("## Gateway in front of Express (`bench/gateway.py`)")
    print()
    print("Written on %s. %d cores (%s), Linux %s, data on %s; the backend (one node "
          "process), the gateway (`--workers 2 --threads 1`, Release) and `cnload` (64 "
          "connections, %g s per run) share the cores. Ratios are against the first row."
          % (time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), cores, cpu, kernel, disk,
             SECS))
    print()
    print("| run | req/s | vs Express alone | p50 | p99 | errors |")
    print("|---|---|---|---|---|---|")
    for name, r in rows:
        lat = r["latency_us"]
        print("| %s | %.0f | %.0f%% | %.2f ms | %.2f ms | %d |" % (
            name, r["rps"], 100.0 * r["rps"] / rows[0][1]["rps"], lat["p50"] / 1000.0,
            lat["p99"] / 1000.0, sum(r["errors"].values())))
    print()
    print("The middleware rows: Express with express-idempotency and its Redis adapter, "
          "Redis with appendfsync always (durable before the answer, like the gateway).")
    print()
    print("Passthrough streams: one %d MiB download (`GET /blob`, Express writing as the "
          "client reads), one client, three times each way:" % (BLOB >> 20))
    print()
    print("| run | direct MB/s | through the gateway MB/s | ratio |")
    print("|---|---|---|---|")
    for i, (d, g) in enumerate(speeds):
        print("| %d | %.0f | %.0f | %.0f%% |" % (i + 1, d, g, 100.0 * g / d))
    print()
    print("Largest gateway worker peak RSS (VmHWM): %.1f MiB before the downloads, %.1f MiB "
          "after (the answer is never held whole)." % (rss_before / 1024.0, rss_after / 1024.0))
    print()


if __name__ == "__main__":
    main()
