"""Several hosts on one PostgreSQL database (--store postgresql://...) against the LMDB
default: fresh-key POSTs and replays on 1 and 2 hosts, records per commit, p99.

    python3 bench/hosts.py [seconds-per-run]     (bench/run calls it; prints a section)

A throwaway PostgreSQL server (tests/pgserver.py: fsync on, synchronous_commit on) runs
on the same machine, its own cores being the same two as everything else. Servers are
the Release example (build-release), --workers 2 --threads 1 each, on 127.0.0.1 with
temp data dirs, stopped by PID; every host of a run gets its own cnload process with
half the connections (64 in all), started together, and the figures are summed
(throughput) or the worst of them (p99). One database per configuration.
"""
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

import pgserver  # noqa: E402
import run  # noqa: E402  (Server, cnload, machine)

SECS = float(sys.argv[1]) if len(sys.argv) > 1 else 5.0
CONNS = 64


def load(servers, mode, secs):
    """cnload against every server at once, CONNS split evenly; (req/s summed, worst p99
    in us, errors, per-host results)."""
    results = [None] * len(servers)
    prefix = uuid.uuid4().hex[:8]

    def one(i, srv):
        # replay: one key for all hosts (stored by the first, replayed everywhere)
        key = prefix if mode == "replay" else "%s-%d" % (prefix, i)
        results[i] = run.cnload(srv.url, mode, conns=CONNS // len(servers), secs=secs,
                                extra=["--key-prefix", key])

    threads = [threading.Thread(target=one, args=(i, s)) for i, s in enumerate(servers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rps = sum(r["rps"] for r in results)
    p99 = max(r["latency_us"]["p99"] for r in results)
    errors = sum(sum(r["errors"].values()) for r in results)
    return rps, p99, errors, results


def per_commit(servers, before):
    """Records per commit transaction (or WAL batch) over the run, from the metrics."""
    recs = commits = 0.0
    for srv, b in zip(servers, before):
        a = srv.metrics()
        for r_name, c_name in (("cnerium_store_commit_records_total", "cnerium_store_commits_total"),
                               ("cnerium_persist_records_total", "cnerium_persist_batches_total")):
            recs += a.get(r_name, 0) - b.get(r_name, 0)
            commits += a.get(c_name, 0) - b.get(c_name, 0)
    return recs / commits if commits else 0.0


def measure(name, servers, rows, plain_rps):
    for mode in ("fresh", "replay"):
        before = [s.metrics() for s in servers]
        rps, p99, errors, _ = load(servers, mode, SECS)
        rows.append("| %s | %s | %.0f | %.0f%% | %.2f ms | %s | %d |" % (
            name, "fresh-key POST" if mode == "fresh" else "replay", rps,
            100.0 * rps / plain_rps, p99 / 1000.0,
            "%.1f" % per_commit(servers, before) if mode == "fresh" else "",
            errors))


def main():
    cores, kernel, cpu, disk = run.machine()
    state = tempfile.mkdtemp(prefix="cnerium-bench-pg-")
    rows = []
    try:
        pgserver.start(state)
        lmdb = run.Server([], realtime=True)
        try:
            plain, _, _, _ = load([lmdb], "plain", SECS)
            measure("LMDB, 1 host", [lmdb], rows, plain)
        finally:
            lmdb.stop()
        for n in (1, 2):
            url = pgserver.create_database(state, "bench_%d" % n)
            hosts = [run.Server(["--store", url, "--node-id", "h%d" % i], realtime=True)
                     for i in range(n)]
            try:
                measure("PostgreSQL, %d host%s" % (n, "s" if n > 1 else ""), hosts, rows,
                        plain)
            finally:
                for h in hosts:
                    h.stop()
    finally:
        pgserver.stop(state)
        os.rmdir(state) if os.path.isdir(state) and not os.listdir(state) else None

    print("## Several hosts: PostgreSQL store vs LMDB (`bench/hosts.py`)")
    print()
    print("Written on %s. %d cores (%s), Linux %s, data on %s. PostgreSQL 15 runs on the "
          "same cores (fsync on, synchronous_commit on), as do the load generators: a "
          "second host here shares the machine with the first, so the 2-host row measures "
          "the protocol's cost, not added capacity. Each host: `--workers 2 --threads 1`; "
          "%d connections in all, split over the hosts (one `cnload` each, started "
          "together; req/s summed, p99 the worst); %g s per run; \"vs plain\" is against GET "
          "/health on the LMDB host in the same invocation (%.0f req/s)."
          % (time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), cores, cpu, kernel, disk,
             CONNS, SECS, plain))
    print()
    print("| store | request | req/s | vs plain | p99 | records per commit | errors |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(r)
    print()


if __name__ == "__main__":
    main()
