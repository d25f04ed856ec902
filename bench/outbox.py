#!/usr/bin/env python3
"""The client outbox (include/cnerium/outbox.h) through its command line tool: durable
enqueue rate, and drain rate against the seed-000 example server.

    CMAKE_BUILD_TYPE=Release scripts/build.sh build-release -DCNERIUM_BUILD_TESTS=OFF
    python3 bench/outbox.py [seconds]       (default 3; CNERIUM_BENCH_WORKERS, _THREADS)

Enqueue: a loop of `cnerium-outbox enqueue` calls for about seconds/3 each, with one, 64
and 1000 operations per call (--count N: one cn_outbox_enqueue_many, one synced LMDB
commit for all of them). One operation per call measures the command's whole life
(process start, store open, one synced commit, exit), not the library alone; the larger
batches show what batching the sync buys. Each row gets a fresh outbox directory.

In process: when bench/outbox_enqueue (the library alone, built with the Release tree) is
there, its figures for the same three batch sizes come as a second table: one operation
per commit without the process around it.

Drain: 2000 operations enqueued in one call, then `run --until-empty` timed against the
example server (`--workers 2` by default), twice: with the defaults (--batch 64
--parallel 16) and with --batch 16 --parallel 4, each on operations of its own. The
server's cnerium_durable_requests_total{outcome="executed"} must grow by exactly the
number of operations; the table says what it saw.

Prints a markdown section (bench/run appends it to bench/RESULTS.md); writes nothing
else. The server runs on 127.0.0.1 with a free port and its own temp data dir and is
stopped by PID (then its process group) at the end; every temp dir is removed.
"""
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import run  # noqa: E402  (bench/run.py: Server, cnload(), machine(), tree_cpu())

ROOT = os.path.dirname(HERE)
REL = os.path.join(ROOT, "build-release")
CLI = os.environ.get("CNERIUM_OUTBOX_BIN", os.path.join(REL, "cnerium-outbox"))
EXAMPLE = run.EXAMPLE
IN_PROCESS = os.environ.get("CNERIUM_OUTBOX_ENQUEUE_BIN",
                            os.path.join(REL, "bench", "outbox_enqueue"))
SECS = float(sys.argv[1]) if len(sys.argv) > 1 else 3.0
WORKERS, THREADS = run.WORKERS, run.THREADS  # the server run.Server starts
ORDER = '{"product_id":"p1","quantity":2}'
DRAIN_OPS = 2000
DRAIN_RUNS = (("defaults (`--batch 64 --parallel 16`)", ()),
              ("`--batch 16 --parallel 4`", ("--batch", "16", "--parallel", "4")))
EXECUTED = 'cnerium_durable_requests_total{operation="orders.create",outcome="executed"}'


def executed(srv):
    """The server's count of executed orders.create handlers (its /metrics)."""
    return int(srv.metrics().get(EXECUTED, 0))


def cli(outbox, *args, timeout=300):
    r = subprocess.run([CLI, "--dir", outbox] + list(args), stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=timeout)
    if r.returncode:
        raise RuntimeError("cnerium-outbox %s exited %d: %s"
                           % (" ".join(args), r.returncode, r.stderr.strip()))
    return r.stdout


def enqueue_args(url, count):
    return ("enqueue", "--method", "POST", "--url", url, "--data", ORDER,
            "--count", str(count))


def enqueue_rate(tmp, name, count):
    """Calls `enqueue --count count` in a loop for about SECS/3 s (at least 3 calls).
    Returns (calls, operations, seconds)."""
    outbox = os.path.join(tmp, name)
    args = enqueue_args("http://127.0.0.1:9/orders", count)
    cli(outbox, *args)  # creates the store: not part of the figure
    budget = max(1.0, SECS / 3)
    calls = 0
    t0 = time.monotonic()
    while calls < 3 or time.monotonic() - t0 < budget:
        out = cli(outbox, *args)
        if out.count("\n") != count:
            raise RuntimeError("enqueue --count %d printed %d ids" % (count, out.count("\n")))
        calls += 1
    secs = time.monotonic() - t0
    return calls, calls * count, secs


def startup_ms(calls=20):
    """Milliseconds per `cnerium-outbox --help`: process start and dynamic linking (libcurl
    brings its dependencies), no store: the floor under every CLI figure."""
    t0 = time.monotonic()
    for _ in range(calls):
        subprocess.run([CLI, "--help"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       check=True, timeout=60)
    return 1000.0 * (time.monotonic() - t0) / calls


def in_process_rates(tmp):
    """bench/outbox_enqueue's {"single", "batch64", "batch1000"} operations/s, or None
    when it is not built."""
    if not os.access(IN_PROCESS, os.X_OK):
        return None
    secs = max(0.5, SECS / 3)
    r = subprocess.run([IN_PROCESS, os.path.join(tmp, "in-process"), "%g" % secs,
                        str(len(ORDER))], stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=3 * secs + 120)
    lines = [l for l in r.stdout.splitlines() if l.startswith("{")]
    if r.returncode or not lines:
        raise RuntimeError("outbox_enqueue exited %d: %s" % (r.returncode, r.stderr.strip()))
    return json.loads(lines[-1])


def children_cpu():
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def drain(tmp, srv, name, extra):
    """Enqueues DRAIN_OPS operations in one call, then times run --until-empty.
    Returns (seconds, executed delta, outbox CPU s, server CPU s)."""
    outbox = os.path.join(tmp, name)
    cli(outbox, *enqueue_args(srv.url + "/orders", DRAIN_OPS))
    before = executed(srv)
    srv_cpu = run.tree_cpu(srv.proc.pid)
    cpu = children_cpu()
    t0 = time.monotonic()
    cli(outbox, "run", "--until-empty", "--max-seconds", "600", "--quiet", *extra,
        timeout=660)
    secs = time.monotonic() - t0
    cpu = children_cpu() - cpu
    srv_cpu = run.tree_cpu(srv.proc.pid) - srv_cpu
    stats = cli(outbox, "stats")
    if not re.search(r"^done %d$" % DRAIN_OPS, stats, re.M):
        raise RuntimeError("after run --until-empty: %s" % stats.replace("\n", ", "))
    return secs, executed(srv) - before, cpu, srv_cpu


def measure():
    for path in (CLI, EXAMPLE):
        if not os.access(path, os.X_OK):
            raise RuntimeError("%s is missing; build it with CMAKE_BUILD_TYPE=Release "
                               "scripts/build.sh build-release -DCNERIUM_BUILD_TESTS=OFF"
                               % path)
    tmp = tempfile.mkdtemp(prefix="cnerium-bench-outbox-")
    srv = None
    try:
        start = startup_ms()
        enq = [(n, enqueue_rate(tmp, "enqueue-%d" % n, n)) for n in (1, 64, 1000)]
        inproc = in_process_rates(tmp)
        srv = run.Server([], realtime=True)  # bench/run.py's: free port, temp data dir
        drains = [(label, drain(tmp, srv, "drain-%d" % i, extra))
                  for i, (label, extra) in enumerate(DRAIN_RUNS)]
        # The same server driven directly at the outbox's default parallelism (16
        # keep-alive connections, fresh keys): what the drain is a fraction of.
        direct = None
        if os.access(os.path.join(run.BENCH, "cnload"), os.X_OK):
            direct = run.cnload(srv.url, "fresh", conns=16, threads=1, pid=srv.proc.pid)
    finally:
        if srv:
            srv.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return start, enq, inproc, drains, direct


def main():
    cores, kernel, cpu, disk = run.machine()
    print("## Client outbox (`cnerium-outbox`, `bench/outbox.py`)")
    print("")
    try:
        start, enq, inproc, drains, direct = measure()
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        print("failed: %s" % e)
        print("")
        sys.exit(1)
    print("Written by `python3 bench/outbox.py %g` on %s. Machine: %d cores (%s), Linux %s, "
          "outbox and server data on %s. The server, the outbox CLI and this script share "
          "these %d cores. Server: `cnerium_durable_orders_realtime --workers %s --threads "
          "%s`, sync durability; Release build. Every enqueue call is one synced LMDB commit "
          "(all or none); every drained operation is a POST /orders with its id as the "
          "Idempotency-Key." % (SECS, time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                cores, cpu, kernel, disk, cores, WORKERS, THREADS))
    print("")
    print("| durable enqueue | calls | operations | seconds | operations/s | commits/s | "
          "ms per call |")
    print("|---|---|---|---|---|---|---|")
    names = {1: "1 per call (bound by the CLI's process start + store open + one commit)",
             64: "64 per call (`--count 64`)", 1000: "1000 per call (`--count 1000`)"}
    for n, (calls, ops, secs) in enq:
        print("| %s | %d | %d | %.2f | %.0f | %.0f | %.2f |" % (
            names[n], calls, ops, secs, ops / secs, calls / secs, 1000.0 * secs / calls))
    print("")
    print("For scale: `cnerium-outbox --help` (process start and dynamic linking, no store) "
          "takes %.2f ms per call here." % start)
    print("")
    if inproc:
        print("In process (`bench/outbox_enqueue`, the library without the command around "
              "it, same payload):")
        print("")
        print("| durable enqueue, in process | operations/s | commits/s |")
        print("|---|---|---|")
        for key, n, label in (("single", 1, "1 per commit (`cn_outbox_enqueue`)"),
                              ("batch64", 64, "64 per commit (`cn_outbox_enqueue_many`)"),
                              ("batch1000", 1000, "1000 per commit")):
            print("| %s | %.0f | %.0f |" % (label, inproc[key], inproc[key] / n))
        print("")
    print("| drain: `run --until-empty` of %d operations | seconds | operations/s | server "
          "executed | outbox CPU/op | server CPU/op |" % DRAIN_OPS)
    print("|---|---|---|---|---|---|")
    for label, (secs, executed, ob_cpu, srv_cpu) in drains:
        print("| %s | %.2f | %.0f | %d%s | %.0f us | %.0f us |" % (
            label, secs, DRAIN_OPS / secs, executed,
            "" if executed == DRAIN_OPS else " (expected %d!)" % DRAIN_OPS,
            ob_cpu * 1e6 / DRAIN_OPS, srv_cpu * 1e6 / DRAIN_OPS))
    print("")
    if direct and direct.get("rps"):
        secs, executed, _, _ = drains[0][1]
        print("The same server under `cnload --mode fresh --connections 16` (fresh-key POST "
              "/orders straight from a load generator, %g s): %.0f requests/s, %.0f us of "
              "server CPU each; the outbox's default drain reaches %.0f%% of that rate, "
              "with every operation read from and finished in its own synced store on the "
              "same cores." % (SECS, direct["rps"], direct.get("cpu_us", 0),
                               100.0 * (DRAIN_OPS / secs) / direct["rps"]))
        print("")
    if any(executed != DRAIN_OPS for _, (_, executed, _, _) in drains):
        sys.exit(1)


if __name__ == "__main__":
    main()
