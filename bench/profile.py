#!/usr/bin/env python3
"""Where a fresh-key durable POST spends the server's CPU: perf (Debian's linux-perf)
records every server process while cnload sends fresh-key POST /orders at 64
connections, then this prints the shares by process, by library and the top symbols.

    CMAKE_BUILD_TYPE=Release scripts/build.sh build-release -DCNERIUM_BUILD_TESTS=OFF
    python3 bench/profile.py [seconds]      (default 5; CNERIUM_BENCH_WORKERS, _THREADS)

Sampling at 999 Hz with call graphs, on the server's processes only (the load generator
shares the cores but is not in the profile). Prints a markdown section (bench/run appends
it to bench/RESULTS.md); writes nothing else. The server runs on 127.0.0.1 with a free
port and its own temp data dir, stopped by PID (then its process group); the perf data
goes to a temp dir that is removed.
"""
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import run  # noqa: E402  (bench/run.py: Server, cnload(), machine())

SECS = float(sys.argv[1]) if len(sys.argv) > 1 else 5.0
TOP = 15


def server_pids(root):
    pids = [root]
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % pid) as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == root:
            pids.append(int(pid))
    return pids


def ctx_switches(pids):
    """Context switches (voluntary + involuntary) summed over every thread of pids, and
    the number of threads."""
    total = threads = 0
    for pid in pids:
        try:
            tids = os.listdir("/proc/%d/task" % pid)
        except OSError:
            continue
        for tid in tids:
            try:
                with open("/proc/%d/task/%s/status" % (pid, tid)) as f:
                    for line in f:
                        if line.startswith(("voluntary_ctxt_switches",
                                            "nonvoluntary_ctxt_switches")):
                            total += int(line.split()[1])
                threads += 1
            except (OSError, ValueError):
                continue
    return total, threads


def switches_per_request(srv):
    """{mode: (context switches per request, req/s)} for plain, replay and fresh runs."""
    out = {}
    pids = server_pids(srv.proc.pid)
    for mode in ("plain", "replay", "fresh"):
        before, _ = ctx_switches(pids)
        res = run.cnload(srv.url, mode)
        after, threads = ctx_switches(pids)
        out[mode] = ((after - before) / max(res["requests"], 1), res["rps"], threads)
    return out


def report(data, *args):
    r = subprocess.run(["perf", "report", "-i", data, "--stdio", "-g", "none"] + list(args),
                       capture_output=True, text=True, timeout=300)
    rows = []
    for line in r.stdout.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        rows.append(line)
    return rows


def table(title, rows, cols):
    print("| %s |" % " | ".join(cols))
    print("|%s|" % "|".join("---" for _ in cols))
    for row in rows:
        print("| %s |" % " | ".join(row))
    print("")


def split(line, n):
    """The first n-1 whitespace-separated fields of a perf row, then the rest."""
    parts = line.split(None, n - 1)
    return parts + [""] * (n - len(parts))


def main():
    if not shutil.which("perf"):
        print("## Profile of a fresh-key durable POST\n\nskipped: perf is not installed "
              "(Debian package linux-perf).\n")
        return
    cores, kernel, cpu, disk = run.machine()
    tmp = tempfile.mkdtemp(prefix="cnerium-bench-profile-")
    srv = run.Server([])
    try:
        pids = server_pids(srv.proc.pid)
        data = os.path.join(tmp, "perf.data")
        rec = subprocess.Popen(["perf", "record", "-F", "999", "-g", "-o", data, "-p",
                                ",".join(str(p) for p in pids)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        res = run.cnload(srv.url, "fresh", pid=srv.proc.pid)
        rec.send_signal(2)  # SIGINT: perf writes its data and exits
        rec.wait(60)
        by_comm = report(data, "--no-children", "--sort", "comm")
        by_dso = report(data, "--no-children", "--sort", "dso")
        self_syms = report(data, "--no-children", "--sort", "dso,sym")
        incl = report(data, "--children", "--sort", "sym")
        switches = switches_per_request(srv)
    finally:
        srv.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    print("## Profile of a fresh-key durable POST (`bench/profile.py`)")
    print("")
    print("Written by `python3 bench/profile.py %g` on %s. Machine: %d cores (%s), Linux %s, "
          "data dir on %s; `cnload --mode fresh --connections 64` on the same cores (not "
          "profiled). Server: `--workers %s --threads %s`, sync durability, Release. "
          "%d requests, %.0f req/s, %.0f us of server CPU each; perf at 999 Hz on the "
          "server's %d processes." % (SECS, time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                      cores, cpu, kernel, disk, run.WORKERS, run.THREADS,
                                      res["requests"], res["rps"], res.get("cpu_us", 0),
                                      len(pids)))
    print("")
    threads = switches["plain"][2]
    print("Context switches per request, summed over the server's %d threads (%d processes), "
          "`cnload` 64 connections, %g s each: plain GET /health %.2f (%.0f req/s), replay "
          "%.2f (%.0f req/s), fresh-key POST %.2f (%.0f req/s). A wakeup that serves one "
          "request costs one switch; fewer than one per request means several requests per "
          "wakeup." % ((threads, len(pids), SECS) + switches["plain"][:2] +
                       switches["replay"][:2] + switches["fresh"][:2]))
    print("")
    table("by thread name", [split(r, 2) for r in by_comm[:8]], ["share", "thread"])
    table("by library", [split(r, 2) for r in by_dso[:8]], ["share", "library"])
    rows = []
    for r in self_syms[:TOP]:
        share, dso, kind, sym = split(r, 4)
        rows.append([share, dso, sym])
    table("self", rows, ["self", "library", "symbol"])
    rows = []
    for r in incl[:TOP + 10]:
        total, self_, kind, sym = split(r, 4)
        rows.append([total, self_, sym])
    print("Inclusive (a function and what it calls; kernel entries included):")
    print("")
    table("inclusive", rows, ["with callees", "self", "symbol"])


if __name__ == "__main__":
    main()
