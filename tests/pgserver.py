#!/usr/bin/env python3
"""A throwaway PostgreSQL server for the tests (standard library only).

    python3 tests/pgserver.py start DIR   # prints the URL, writes DIR/url
    python3 tests/pgserver.py stop DIR    # stops that server, removes its files

or, imported: start(state_dir) -> url, stop(state_dir), create_database(state_dir, name) ->
its url, and halt(state_dir) / resume(state_dir) to restart the server on the same port
with the same data.

The cluster lives in a fresh temp dir (owned by the `postgres` system user when we are
root: initdb and postgres refuse to run as root, so both run through
`runuser -u postgres --`), with its unix socket in that temp dir. The server listens on
127.0.0.1 only, on a free port found by a bind probe, with fsync on (the store's contract
is durability, so the tests run the way production does) and trust authentication for
local and loopback connections. DIR keeps what `stop` needs: the postmaster's PID (from
postmaster.pid) and the temp dir. Every wait is bounded.
"""

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0  # fast shutdown, then SIGKILL
KILL_TIMEOUT_S = 10.0
START_ATTEMPTS = 5  # another process may take the probed port before postgres binds it


def bin_dir():
    """The newest /usr/lib/postgresql/<major>/bin holding initdb and postgres."""
    found = [d for d in glob.glob("/usr/lib/postgresql/*/bin")
             if os.path.exists(os.path.join(d, "initdb"))
             and os.path.exists(os.path.join(d, "postgres"))]
    if not found:
        raise RuntimeError("no PostgreSQL server under /usr/lib/postgresql/*/bin: "
                           "run scripts/install-deps.sh")
    return max(found, key=lambda d: int(d.split("/")[-2]) if d.split("/")[-2].isdigit() else 0)


def as_postgres():
    """The command prefix that runs a server binary as a non-root user."""
    if os.geteuid() != 0:
        return []
    return ["runuser", "-u", "postgres", "--"]


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is dead for our purposes: its parent just has not reaped it yet.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def children_of(pid):
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(entry))
    return out


def is_postgres(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip() in ("postgres", "postmaster")
    except OSError:
        return False


def log_tail(path, n=20):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return "(no log)"


def init_cluster(tmp, bindir):
    data = os.path.join(tmp, "data")
    log = os.path.join(tmp, "initdb.log")
    with open(log, "wb") as out:
        rc = subprocess.run(
            as_postgres() + [os.path.join(bindir, "initdb"), "-D", data, "-U", "postgres",
                             "-A", "trust", "-E", "UTF8", "--locale=C", "--no-instructions"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=tmp,
            timeout=READY_TIMEOUT_S).returncode
    if rc != 0:
        raise RuntimeError(f"initdb failed ({rc}):\n{log_tail(log)}")
    # Only local sockets and 127.0.0.1, both trusted: the server is private to the test.
    with open(os.path.join(data, "pg_hba.conf"), "w") as f:
        f.write("local all all trust\nhost all all 127.0.0.1/32 trust\n")
    return data


# The servers this process started: kept referenced so that their Popen objects are not
# collected (and warned about) while the server runs on; stop() goes by PID.
_launched = []


def launch(tmp, bindir, data, port):
    """Starts postgres on port; returns (postmaster pid, None) once it accepts
    connections, or (None, reason) when it exited first (a port taken meanwhile)."""
    log = os.path.join(tmp, f"postgres-{port}.log")
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            as_postgres() + [os.path.join(bindir, "postgres"), "-D", data,
                             "-c", f"port={port}",
                             "-c", "listen_addresses=127.0.0.1",
                             "-c", f"unix_socket_directories={tmp}",
                             "-c", "fsync=on", "-c", "synchronous_commit=on",
                             "-c", "full_page_writes=on",
                             "-c", "max_connections=100",
                             "-c", "logging_collector=off"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=tmp,
            start_new_session=True)
    _launched.append(proc)
    deadline = time.monotonic() + READY_TIMEOUT_S
    isready = [os.path.join(bindir, "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port),
               "-U", "postgres", "-d", "postgres", "-t", "2"]
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return None, f"postgres exited ({proc.returncode}):\n{log_tail(log)}"
        if subprocess.run(isready, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, timeout=10).returncode == 0:
            with open(os.path.join(data, "postmaster.pid")) as f:
                return int(f.readline()), None
        time.sleep(0.05)  # a poll interval inside the bounded loop
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=STOP_TIMEOUT_S)
    raise RuntimeError(f"postgres not ready within {READY_TIMEOUT_S:.0f} s:\n{log_tail(log)}")


def start(state_dir):
    """Starts a server for state_dir (stopping a leftover one first). Returns its URL."""
    os.makedirs(state_dir, exist_ok=True)
    stop(state_dir)
    bindir = bin_dir()
    tmp = tempfile.mkdtemp(prefix="cnerium-pg-")
    try:
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(tmp, pw.pw_uid, pw.pw_gid)
        data = init_cluster(tmp, bindir)
        reasons = []
        for _ in range(START_ATTEMPTS):
            port = free_port()
            pid, why = launch(tmp, bindir, data, port)
            if pid:
                break
            reasons.append(why)
        else:
            raise RuntimeError("postgres did not start:\n" + "\n".join(reasons))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    for name, value in (("tmpdir", tmp), ("pid", str(pid)), ("url", url)):
        path = os.path.join(state_dir, name)
        with open(path + ".tmp", "w") as f:
            f.write(value + "\n")
        os.replace(path + ".tmp", path)
    return url


def read_state(state_dir, name):
    try:
        with open(os.path.join(state_dir, name)) as f:
            return f.read().strip()
    except FileNotFoundError:
        return None


def stop(state_dir):
    """Stops the server state_dir describes (fast shutdown by SIGINT, SIGKILL past
    STOP_TIMEOUT_S) and removes its temp dir. Nothing to do when there is none."""
    pid = read_state(state_dir, "pid")
    tmp = read_state(state_dir, "tmpdir")
    if pid and is_postgres(int(pid)):
        pid = int(pid)
        backends = children_of(pid)
        os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if pid_alive(pid):
            print(f"postgres {pid} did not stop within {STOP_TIMEOUT_S:.0f} s: killing it",
                  file=sys.stderr)
            for p in [pid] + backends:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            # Gone before their files are removed (SIGKILL cannot be ignored: a short wait).
            deadline = time.monotonic() + KILL_TIMEOUT_S
            while any(pid_alive(p) for p in [pid] + backends) and time.monotonic() < deadline:
                time.sleep(0.05)
    if tmp and os.path.basename(tmp).startswith("cnerium-pg-"):
        shutil.rmtree(tmp, ignore_errors=True)
    for name in ("url", "pid", "tmpdir"):
        try:
            os.unlink(os.path.join(state_dir, name))
        except FileNotFoundError:
            pass


def _signal_and_wait(pid, sig):
    os.kill(pid, sig)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not pid_alive(pid)


def halt(state_dir, immediate=False):
    """Stops the server and keeps its files, so resume() starts it again on the same
    port with the same data: a database restart, as a host sees one. immediate: SIGQUIT
    (no checkpoint, crash recovery at the next start) instead of a fast shutdown."""
    pid = int(read_state(state_dir, "pid"))
    if not is_postgres(pid):
        raise RuntimeError(f"no postgres with PID {pid} to halt")
    if not _signal_and_wait(pid, signal.SIGQUIT if immediate else signal.SIGINT):
        raise RuntimeError(f"postgres {pid} did not stop within {STOP_TIMEOUT_S:.0f} s")


def resume(state_dir):
    """Starts a halted server again on its port. Returns its URL."""
    tmp = read_state(state_dir, "tmpdir")
    url = read_state(state_dir, "url")
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    pid, why = launch(tmp, bin_dir(), os.path.join(tmp, "data"), port)
    if not pid:
        raise RuntimeError("postgres did not start again:\n" + why)
    path = os.path.join(state_dir, "pid")
    with open(path + ".tmp", "w") as f:
        f.write(f"{pid}\n")
    os.replace(path + ".tmp", path)
    return url


def create_database(state_dir, name):
    """Creates database name (letters, digits, _) on the server; returns its URL."""
    if not name.replace("_", "").isalnum():
        raise ValueError("database name %r" % name)
    url = read_state(state_dir, "url")
    port = url.rsplit(":", 1)[1].split("/")[0]
    rc = subprocess.run([os.path.join(bin_dir(), "createdb"), "-h", "127.0.0.1", "-p", port,
                         "-U", "postgres", name], stdin=subprocess.DEVNULL,
                        capture_output=True, timeout=READY_TIMEOUT_S)
    if rc.returncode != 0:
        raise RuntimeError("createdb %s failed: %s" % (name, rc.stderr.decode(errors="replace")))
    return url.rsplit("/", 1)[0] + "/" + name


def main(argv):
    if len(argv) != 3 or argv[1] not in ("start", "stop"):
        print("usage: pgserver.py start|stop DIR", file=sys.stderr)
        return 2
    try:
        if argv[1] == "start":
            print(start(argv[2]))
        else:
            stop(argv[2])
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        print(f"pgserver: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
