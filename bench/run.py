"""bench/run's driver: runs the standard suite and writes bench/RESULTS.md.

Every server runs from build-release on 127.0.0.1 with its own temp data dir and is
stopped (by PID) before the next one starts. The load tools run on the same cores as
the server; the report says so. Each figure comes from one run; ratios compare runs of
the same server in the same invocation.
"""
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REL = os.path.join(ROOT, "build-release")
EXAMPLE = os.path.join(REL, "examples", "cnerium_durable_orders_realtime")
BENCH = os.path.join(REL, "bench")
SECS = float(sys.argv[1]) if len(sys.argv) > 1 else 5.0
WORKERS = os.environ.get("CNERIUM_BENCH_WORKERS", "2")
THREADS = os.environ.get("CNERIUM_BENCH_THREADS", "1")


class Server:
    def __init__(self, args, realtime=False):
        self.dir = tempfile.mkdtemp(prefix="cnerium-bench-")
        cmd = [EXAMPLE, "--port", "0", "--workers", WORKERS, "--threads", THREADS, "--data-dir",
               os.path.join(self.dir, "data"), "--log-level", "warn"] + list(args)
        if realtime:
            cmd += ["--realtime-host", "127.0.0.1", "--realtime-port", "0"]
        self.out = open(os.path.join(self.dir, "stdout"), "w+")
        self.proc = subprocess.Popen(cmd, stdout=self.out, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        self.port = self.ws_port = None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and self.port is None:
            self.out.seek(0)
            text = self.out.read()
            m = re.search(r"listening on http://[^:]+:(\d+)", text)
            if m:
                self.port = int(m.group(1))
                w = re.search(r"realtime on ws://[^:]+:(\d+)", text)
                self.ws_port = int(w.group(1)) if w else None
            elif self.proc.poll() is not None:
                break
            else:
                time.sleep(0.05)
        if self.port is None:
            self.stop()
            raise SystemExit("bench: the server did not start")
        self.url = "http://127.0.0.1:%d" % self.port

    def metrics(self):
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as r:
            text = r.read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.out.close()
        shutil.rmtree(self.dir, ignore_errors=True)


DELIVERY = "cnerium_ws_delivery_seconds"


def delivery_quantiles(before, after, qs=(0.5, 0.99)):
    """Quantiles (seconds) of the broadcaster's commit -> socket write latency between two
    scrapes, from the deltas of cnerium_ws_delivery_seconds' cumulative buckets (upper
    bound of the bucket holding the quantile; linear inside it). (count, [q...]) or None."""
    pat = re.compile(r'^%s_bucket\{le="([^"]+)"\}$' % DELIVERY)
    buckets = []
    for name, value in after.items():
        m = pat.match(name)
        if m:
            le = float("inf") if m.group(1) == "+Inf" else float(m.group(1))
            buckets.append((le, value - before.get(name, 0.0)))
    buckets.sort()
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    res = []
    for q in qs:
        want, lo, prev = q * total, 0.0, 0.0
        for le, cum in buckets:
            if cum >= want:
                if le == float("inf"):
                    res.append(lo)
                else:
                    part = (want - prev) / (cum - prev) if cum > prev else 1.0
                    res.append(lo + (le - lo) * part)
                break
            lo, prev = le, cum
    return int(total), res


def fanout(srv, clients, secs, posters, rate):
    """One ws_fanout run against srv: its summary line and the broadcaster's commit ->
    write p50/p99 over the run."""
    before = srv.metrics()
    r = subprocess.run([os.path.join(BENCH, "ws_fanout"), str(srv.port), str(srv.ws_port),
                        str(clients), str(secs), str(posters), str(rate)],
                       capture_output=True, text=True, timeout=120)
    line = r.stdout.strip() or r.stderr.strip()
    d = delivery_quantiles(before, srv.metrics())
    if d:
        line += "; commit->write p50 %.2f ms, p99 %.2f ms (%d deliveries)" % (
            d[1][0] * 1e3, d[1][1] * 1e3, d[0])
    return line


def tree_cpu(root):
    """utime + stime (seconds) of process root and its children, all threads counted."""
    total = 0
    hz = os.sysconf("SC_CLK_TCK")
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(pid) == root or int(fields[1]) == root:
            total += int(fields[11]) + int(fields[12])
    return total / hz


def cnload(url, mode, conns=64, threads=2, extra=(), pid=None, secs=None):
    """One cnload run (secs, default SECS); with pid, also the server's CPU per request
    (us) in cpu_us."""
    secs = secs or SECS
    before = tree_cpu(pid) if pid else 0
    cmd = [os.path.join(BENCH, "cnload"), "--mode", mode, "--connections", str(conns),
           "--threads", str(threads if conns > 1 else 1), "--duration", str(secs), "--json",
           "--timeout", "30"] + list(extra) + [url]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=secs + 120)
    line = [l for l in r.stdout.splitlines() if l.startswith("{")]
    if not line:
        raise SystemExit("bench: cnload failed: %s %s" % (r.stdout, r.stderr))
    res = json.loads(line[-1])
    if pid and res["requests"]:
        res["cpu_us"] = (tree_cpu(pid) - before) * 1e6 / res["requests"]
    return res


def persist_delta(before, after):
    b = after.get("cnerium_persist_batches_total", 0) - before.get("cnerium_persist_batches_total", 0)
    n = after.get("cnerium_persist_records_total", 0) - before.get("cnerium_persist_records_total", 0)
    return int(b), (n / b if b else 0.0)


def ms(us):
    return "%.2f ms" % (us / 1000.0)


def row(name, res, plain=None, extra=""):
    lat = res["latency_us"]
    ratio = "%.0f%%" % (100.0 * res["rps"] / plain) if plain else ""
    errs = sum(res["errors"].values())
    return "| %s | %.0f | %s | %s | %s | %s | %s | %s |%s" % (
        name, res["rps"], ratio, ms(lat["p50"]), ms(lat["p99"]), ms(lat["p999"]),
        res["status"]["2xx"], errs, extra)


def machine():
    cores = os.cpu_count()
    kernel = platform.release()
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"model name\s*:\s*(.+)", f.read())
            cpu = m.group(1).strip() if m else ""
    except OSError:
        pass
    fs = subprocess.run(["df", "-T", ROOT], capture_output=True, text=True).stdout.splitlines()
    disk = " ".join(fs[1].split()[:2]) if len(fs) > 1 else "unknown"
    return cores, kernel, cpu, disk


def wal_io_modes(out, rounds=3, secs=None, modes=("pwrite", "direct", "uring-direct")):
    """Fresh-key POSTs with pwrite + fdatasync (the default) against O_DIRECT batches in
    whole blocks with RWF_DSYNC (pwritev2, io_uring). One server per mode, all up at once,
    cnload runs alternating between them (order reversed every round), so each comparison
    is paired in time on this shared disk. Medians of the rounds. Alone, e.g.:
      python3 -c 'import sys; sys.argv[1:] = ["2"]; sys.path.insert(0, "bench");
                  import run; run.wal_io_modes(print, rounds=8, secs=1.5)'"""
    wal_secs = secs or min(SECS, 2.0)
    srvs = {}
    try:
        for m in modes:
            srvs[m] = Server(["--wal-io", m], realtime=True)
        for m in modes:  # the next segment is zero-filled right after the start
            seg = os.path.join(srvs[m].dir, "data", "wal", "0000000002000000.wal")
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not (
                    os.path.exists(seg) and os.path.getsize(seg) == 32 << 20):
                time.sleep(0.05)
        walres = {}
        for rnd in range(rounds):
            for c in (1, 16, 64, 256):
                for m in (modes if rnd % 2 == 0 else modes[::-1]):
                    before = srvs[m].metrics()
                    r = cnload(srvs[m].url, "fresh", conns=c, secs=wal_secs)
                    syncs, per = persist_delta(before, srvs[m].metrics())
                    walres.setdefault((m, c), []).append((r, per))
    finally:
        for srv in srvs.values():
            srv.stop()
    out("## WAL I/O modes (`--wal-io`), fresh-key POST, sync durability")
    out("")
    out("One server per mode, all running; %d rounds of %g s runs alternating between them; "
        "medians. `pwrite`: buffered write + fdatasync (the default); `direct`: O_DIRECT, each "
        "batch whole 4096-byte blocks from a fresh block, pwritev2 with RWF_DSYNC; "
        "`uring-direct`: the same write through io_uring. The ratio is the median of the "
        "per-round ratios to `%s`." % (rounds, wal_secs, modes[0]))
    out("")
    out("| conns | mode | req/s | vs %s (paired) | p50 | p99 | records/sync |" % modes[0])
    out("|---|---|---|---|---|---|---|")
    mid = lambda xs: sorted(xs)[len(xs) // 2]
    for c in (1, 16, 64, 256):
        for m in modes:
            rs = walres[(m, c)]
            ratio = mid([a[0]["rps"] / b[0]["rps"] for a, b in zip(rs, walres[(modes[0], c)])
                         if b[0]["rps"]])
            out("| %d | %s | %.0f | %s | %s | %s | %.1f |" % (
                c, m, mid([x[0]["rps"] for x in rs]), "" if m == modes[0] else "%.2f" % ratio,
                ms(mid([x[0]["latency_us"]["p50"] for x in rs])),
                ms(mid([x[0]["latency_us"]["p99"] for x in rs])), mid([x[1] for x in rs])))
    out("")


def main():
    lines = []
    out = lines.append
    cores, kernel, cpu, disk = machine()
    out("# Benchmark results")
    out("")
    out("Written by `bench/run %g` on %s." % (SECS, time.strftime("%Y-%m-%d %H:%M UTC",
                                                                  time.gmtime())))
    out("")
    out("Machine: %d cores (%s), Linux %s, data dir on %s. The load generators (`cnload`, "
        "`ws_fanout`) run on the same cores as the server, so every figure is a lower bound "
        "and ratios within one table are the meaningful numbers. Server: "
        "`cnerium_durable_orders_realtime --workers %s --threads %s`, Release build; the bare "
        "libmicrohttpd baseline runs as many threads in one process. One run per figure, %g s "
        "each." % (cores, cpu, kernel, disk, WORKERS, THREADS, SECS))
    out("")

    # Baseline without Cnerium.
    bare_dir = tempfile.mkdtemp(prefix="cnerium-bench-bare-")
    bare_out = open(os.path.join(bare_dir, "out"), "w+")
    bare = subprocess.Popen([os.path.join(BENCH, "bare_mhd"), "--port", "0", "--threads",
                             str(int(WORKERS) * int(THREADS))],
                            stdout=bare_out, stderr=subprocess.DEVNULL)
    port = None
    for _ in range(100):
        bare_out.seek(0)
        m = re.search(r":(\d+)", bare_out.read())
        if m:
            port = int(m.group(1))
            break
        time.sleep(0.05)
    bare_url = "http://127.0.0.1:%d" % port

    # The targets, measured in 3 interleaved rounds (this machine's run-to-run noise is
    # +-20%): bare baseline, plain route, replay, fresh key at 64 connections. Medians.
    srv = Server([])
    rounds = []
    try:
        for _ in range(3):
            rounds.append({
                "bare": cnload(bare_url, "plain", pid=bare.pid),
                "plain": cnload(srv.url, "plain", pid=srv.proc.pid),
                "replay": cnload(srv.url, "replay", pid=srv.proc.pid),
                "fresh": cnload(srv.url, "fresh", pid=srv.proc.pid),
            })
    finally:
        srv.stop()
        bare.send_signal(signal.SIGTERM)
        bare.wait(10)
        bare_out.close()
        shutil.rmtree(bare_dir, ignore_errors=True)
    bare_res = sorted((r["bare"] for r in rounds), key=lambda r: r["rps"])[1]

    def median(key, f):
        return sorted(f(r) for r in rounds)[1]

    out("## Targets (3 interleaved rounds, 64 connections, sync durability; medians)")
    out("")
    out("| figure | round 1 | round 2 | round 3 | median | target |")
    out("|---|---|---|---|---|---|")
    per_round = lambda f: " | ".join("%.0f%%" % f(r) for r in rounds)
    rep = lambda r: 100.0 * r["replay"]["rps"] / r["plain"]["rps"]
    fre = lambda r: 100.0 * r["fresh"]["rps"] / r["plain"]["rps"]
    ovh = lambda r: 100.0 * (1 - r["plain"]["rps"] / r["bare"]["rps"])
    p99 = lambda r: r["fresh"]["latency_us"]["p99"] / 1000.0
    out("| replay vs plain GET /health | %s | %.0f%% | >= 90%% |" % (per_round(rep), median("r", rep)))
    out("| fresh-key POST vs plain GET /health | %s | %.0f%% | >= 60%% |" % (per_round(fre), median("f", fre)))
    out("| fresh-key POST p99 | %s | %.1f ms | < 2 ms |" % (
        " | ".join("%.1f ms" % p99(r) for r in rounds), median("p", p99)))
    fcpu = lambda r: r["fresh"]["cpu_us"] / r["plain"]["cpu_us"]
    out("| fresh-key POST server CPU per request vs plain | %s | %.1fx | <= 2x |" % (
        " | ".join("%.1fx" % fcpu(r) for r in rounds), median("fc", fcpu)))
    out("| plain route overhead vs bare libmicrohttpd (throughput) | %s | %.0f%% | <= 10%% |" % (
        per_round(ovh), median("o", ovh)))
    cpu_ovh = lambda r: 100.0 * (r["plain"]["cpu_us"] / r["bare"]["cpu_us"] - 1)
    out("| plain route overhead vs bare libmicrohttpd (server CPU per request) | %s | %.0f%% | "
        "<= 10%% |" % (per_round(cpu_ovh), median("c", cpu_ovh)))
    out("")
    out("Server CPU per request (all server processes, from /proc), medians: bare %.1f us, "
        "plain %.1f us, replay %.1f us, fresh-key durable POST %.1f us. On 2 cores shared "
        "with the load generator, throughput swings by 20%% from run to run; CPU per request "
        "is the steadier measure of the server's own cost." % tuple(
            median(k, lambda r, k=k: r[k]["cpu_us"]) for k in ("bare", "plain", "replay", "fresh")))
    out("")
    out("Requests/s per round: " + "; ".join(
        "bare %.0f, plain %.0f, replay %.0f, fresh %.0f" % (
            r["bare"]["rps"], r["plain"]["rps"], r["replay"]["rps"], r["fresh"]["rps"])
        for r in rounds) + ".")
    out("")

    head = "| run | req/s | vs plain | p50 | p99 | p99.9 | 2xx | errors |"
    sep = "|---|---|---|---|---|---|---|---|"
    for mode in ("sync", "async"):
        srv = Server(["--durability", mode])
        try:
            plain = cnload(srv.url, "plain")
            p = plain["rps"]
            out("## Durability `%s`" % mode)
            out("")
            out(head + " fdatasyncs | records/sync |")
            out(sep + "---|---|")
            out(row("GET /health (plain route)", plain, p) + " | |")
            if mode == "sync":
                out(row("bare libmicrohttpd GET /health (no Cnerium)", bare_res, p) + " | |")
                r = cnload(srv.url, "replay")
                out(row("POST /orders replay of a stored key", r, p) + " | |")
            for c in (1, 16, 64, 256):
                before = srv.metrics()
                r = cnload(srv.url, "fresh", conns=c)
                syncs, per = persist_delta(before, srv.metrics())
                out(row("POST /orders fresh key, %d conn" % c, r, p) +
                    " %d | %.1f |" % (syncs, per))
            # Keys from a counter land on neighbouring B-tree pages; random UUIDs, as most
            # clients make them, dirty a page each.
            before = srv.metrics()
            r = cnload(srv.url, "fresh", extra=["--uuid-keys"])
            syncs, per = persist_delta(before, srv.metrics())
            out(row("POST /orders fresh UUID key, 64 conn", r, p) + " %d | %.1f |" % (syncs, per))
            if mode == "sync":
                for name, m, extra in (("retry x3 (each key sent 3 times)", "retry", ["--retries", "3"]),
                                       ("storm x8 (8 concurrent copies per key)", "storm", ["--storm", "8"]),
                                       ("mixed 70% GET /health, 30% fresh POST", "mixed", ["--mix", "70"])):
                    before = srv.metrics()
                    r = cnload(srv.url, m, extra=extra)
                    syncs, per = persist_delta(before, srv.metrics())
                    out(row(name, r, p) + " %d | %.1f |" % (syncs, per))
            out("")

        finally:
            srv.stop()

    wal_io_modes(out)

    # Race check: correctness under simultaneous duplicates, as users would run it.
    srv = Server([])
    try:
        race = []
        for extra in ([], ["--different"]):
            r = subprocess.run([os.path.join(BENCH, "cnrace"), "--keys", "20", "--copies", "8",
                                "--quiet"] + extra + [srv.url], capture_output=True, text=True,
                               timeout=120)
            verdict = (r.stdout.strip().splitlines() or ["(no output)"])[-1]
            race.append(("different bodies" if extra else "identical bodies", r.returncode, verdict))
    finally:
        srv.stop()
    out("## Race check (`cnrace --keys 20 --copies 8`)")
    out("")
    for name, rc, verdict in race:
        out("- %s: exit %d, %s" % (name, rc, verdict))
    out("")

    # Realtime fan-out: latency at a fixed posting rate, then the most it delivers.
    out("## Realtime fan-out (`ws_fanout`)")
    out("")
    out("Latency from a POST's response to its event at every client, at 50 and 200 POSTs/s "
        "(and 1500 POSTs/s to 1000 clients: 1.5M deliveries/s); then 16 connections "
        "posting as fast as they can (events delivered per second over all clients; with "
        "many clients the broadcaster falls behind and latency is the backlog). `commit->write` is the broadcaster's own figure over the run, from "
        "`%s` (bucket deltas between scrapes before and after): from the "
        "persister's commit to the socket write of the frame, per client." % DELIVERY)
    out("")
    runs = [(rate, n) for rate in ("50", "200") for n in (10, 100, 1000)]
    # 1500 POSTs/s to 1000 clients is 1.5M deliveries/s: does the broadcaster keep up (no
    # backlog: commit->write stays in milliseconds)? Then unthrottled.
    runs += [("1500", 1000)] + [("0", n) for n in (10, 100, 1000)]
    for rate, n in runs:
        srv = Server([], realtime=True)
        try:
            out("- " + ("%s POSTs/s: " % rate if rate != "0" else "unlimited: ") +
                fanout(srv, n, min(SECS, 3.0), 16, rate))
        finally:
            srv.stop()
    out("")

    # The WAL write path on this disk.
    wal_dir = tempfile.mkdtemp(prefix="cnerium-bench-wal-", dir=ROOT)
    try:
        r = subprocess.run([os.path.join(BENCH, "wal_io"), wal_dir, "0.5"], capture_output=True,
                           text=True, timeout=300)
        out("## WAL batch write + sync (`wal_io`)")
        out("")
        out("One durable write per batch on a zero-written preallocated file: `pwrite` + "
            "fdatasync and `uring` (write SQE linked to fdatasync) buffered; O_DIRECT in whole "
            "4096-byte blocks with RWF_DSYNC through `pwritev2`, io_uring (`uring-d`), "
            "io_uring with a registered file and buffer (`uring-df`) and that with two "
            "batches in flight (`uring-df2`); `pwrite` on an appended file for reference. "
            "The methods alternate in 50 ms slices.")
        out("")
        out("```")
        out(r.stdout.strip())
        out("```")
    finally:
        shutil.rmtree(wal_dir, ignore_errors=True)
    out("")

    # The order service (seed 004): commands that append to streams, and the read model.
    r = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "orders.py"), "%g" % SECS],
                       capture_output=True, text=True, timeout=600)
    if r.returncode:
        out("## Order service (`bench/orders.py`)")
        out("")
        out("failed: " + (r.stderr.strip().splitlines() or ["exit %d" % r.returncode])[-1])
    else:
        out(r.stdout.strip())
    out("")

    path = os.path.join(ROOT, "bench", "RESULTS.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    print("\nwritten to %s" % path)


if __name__ == "__main__":
    main()
