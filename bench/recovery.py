#!/usr/bin/env python3
"""WAL recovery rate: bench/wal_recover builds a log of fresh-key order records the way
the server does, sets the applied store aside and times the persister's start, which
replays the whole log into an empty LMDB store; it also times reading and checking the
log alone. Prints a markdown section (bench/run appends it to bench/RESULTS.md).

    CMAKE_BUILD_TYPE=Release scripts/build.sh build-release -DCNERIUM_BUILD_TESTS=OFF
    python3 bench/recovery.py [records]     (default 200000; 3 runs per key shape, the
                                             median reported)

Each run uses its own temp dir, removed at the end.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import run  # noqa: E402  (bench/run.py: machine(), BENCH)

RECORDS = int(sys.argv[1]) if len(sys.argv) > 1 else 200000


def one(shape):
    tmp = tempfile.mkdtemp(prefix="cnerium-bench-recovery-")
    try:
        r = subprocess.run([os.path.join(run.BENCH, "wal_recover"), os.path.join(tmp, "r"),
                            str(RECORDS), "100", shape], capture_output=True, text=True,
                           timeout=600)
        lines = [l for l in r.stdout.splitlines() if l.startswith("{")]
        if r.returncode != 0 or not lines:
            raise SystemExit("bench: wal_recover failed: %s %s" % (r.stdout, r.stderr))
        return json.loads(lines[-1])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def profile(shape):
    """One more run with perf sampling the timed recovery alone (wal_recover enables it
    through perf's control fifo): the top self symbols, or None without perf."""
    if not shutil.which("perf"):
        return None
    import profile as prof  # bench/profile.py: report(), split()
    tmp = tempfile.mkdtemp(prefix="cnerium-bench-recovery-")
    try:
        ctl, ack, data = (os.path.join(tmp, n) for n in ("ctl", "ack", "perf.data"))
        os.mkfifo(ctl)
        os.mkfifo(ack)
        env = dict(os.environ, CNERIUM_PERF_CTL="%s,%s" % (ctl, ack))
        r = subprocess.run(["perf", "record", "-q", "-D", "-1", "--control",
                            "fifo:%s,%s" % (ctl, ack), "-F", "1999", "-o", data,
                            os.path.join(run.BENCH, "wal_recover"), os.path.join(tmp, "r"),
                            str(RECORDS), "100", shape], capture_output=True, text=True,
                           timeout=600, env=env)
        if r.returncode != 0:
            return None
        return [prof.split(l, 3) for l in prof.report(data, "--no-children", "--sort",
                                                        "dso,sym")[:8]]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    cores, kernel, cpu, disk = run.machine()
    shapes = (("seq", "keys `bench-<n>`: consecutive records share B-tree pages"),
              ("uuid", "random UUID keys: every record dirties a page of its own"))
    mids = {}
    for shape, _ in shapes:
        runs = sorted((one(shape) for _ in range(3)), key=lambda x: x["records_per_s"])
        mids[shape] = runs[1]
    mid = mids["seq"]
    print("## WAL recovery (`bench/wal_recover`, `bench/recovery.py`)")
    print("")
    print("Written by `python3 bench/recovery.py %d` on %s. Machine: %d cores (%s), Linux %s, "
          "data on %s; Release. A log of %d stored responses (fresh-key orders, %d-byte "
          "bodies, %.1f MB of WAL) replayed into an empty store by the persister's start; "
          "median of 3 runs per key shape." % (
              RECORDS, time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), cores, cpu, kernel,
              disk, mid["records"], mid["body_bytes"], mid["wal_bytes"] / 1e6))
    print("")
    print("| | records/s | seconds |")
    print("|---|---|---|")
    for shape, what in shapes:
        m = mids[shape]
        print("| recovery (read, check, apply to LMDB, commit), %s | %.0f | %.3f |"
              % (what, m["records_per_s"], m["seconds"]))
    print("| reading and checking the log alone (frames/s) | %.0f | |"
          % mid["scan_only_frames_per_s"])
    print("")
    for shape, what in shapes:
        top = profile(shape)
        if not top:
            break
        print("Where a recovery's time goes, %s (`perf record` of the timed part alone, one "
              "more run; self time, top 8):" % what)
        print("")
        print("| self | library | symbol |")
        print("|---|---|---|")
        for share, dso, sym in top:
            print("| %s | %s | %s |" % (share, dso, sym))
        print("")


if __name__ == "__main__":
    main()
