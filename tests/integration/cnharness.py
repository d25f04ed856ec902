"""Shared harness for the Cnerium integration suites (Python 3 standard library only).

A Server starts one server binary on 127.0.0.1 with a free port and its own data dir,
waits (bounded) for its "listening on http://127.0.0.1:PORT" line, drains stdout and
stderr in background threads so the pipes never fill, and stops it by PID: SIGTERM,
a bounded wait, then SIGKILL. The server runs in its own session (process group), so a
server that forks children is also cleaned up as a group at the end.

ServerTestCase starts servers through start_server(), registers their cleanup, removes
their data dirs, and appends the tail of every server's stderr to assertion failure
messages.

Binaries come from the environment, set by tests/integration/CMakeLists.txt:
CNERIUM_CONTRACT_SERVER, CNERIUM_EXAMPLE, CNERIUM_MINIMAL_EXAMPLE.
"""

import collections
import http.client
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import unittest

STARTUP_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
REQUEST_TIMEOUT_S = 30.0
STDERR_TAIL = 6000

SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                     "WARNING: ThreadSanitizer", "ERROR: UndefinedBehaviorSanitizer")

LISTEN_RE = re.compile(r"listening on http://127\.0\.0\.1:(\d+)")

# Flags for the examples: the seed-000 example enables a WebSocket endpoint on a fixed
# port; give it a free one so suites can run in parallel.
EXAMPLE_FLAGS = ("--realtime-host", "127.0.0.1", "--realtime-port", "0")


def binary(env_name):
    """The path in environment variable env_name; skips the test when it is unset."""
    path = os.environ.get(env_name)
    if not path:
        raise unittest.SkipTest("%s is not set (run through ctest)" % env_name)
    if not os.access(path, os.X_OK):
        raise AssertionError("%s=%s is not an executable file" % (env_name, path))
    return path


def contract_server():
    return binary("CNERIUM_CONTRACT_SERVER")


def example_server():
    return binary("CNERIUM_EXAMPLE")


def minimal_server():
    return binary("CNERIUM_MINIMAL_EXAMPLE")


class _Drain(threading.Thread):
    """Reads a pipe line by line into a list until EOF; calls on_line for each line."""

    def __init__(self, pipe, on_line=None):
        super().__init__(daemon=True)
        self.pipe = pipe
        self.on_line = on_line
        self.lines = []
        self.lock = threading.Lock()

    def run(self):
        try:
            for raw in iter(self.pipe.readline, b""):
                line = raw.decode("utf-8", "replace")
                with self.lock:
                    self.lines.append(line)
                if self.on_line:
                    self.on_line(line)
        except (OSError, ValueError):
            pass
        finally:
            if self.on_line:
                self.on_line(None)

    def text(self):
        with self.lock:
            return "".join(self.lines)


class Server:
    """One server process. Not started by the constructor: call start()."""

    def __init__(self, path, args=(), data_dir=None, port=0, env=None):
        self.path = path
        self.args = list(args)
        self.data_dir = data_dir
        self.port = port
        self.env = env  # extra environment variables for the process, or None
        self.proc = None
        self.out = None
        self.err = None
        self._ready = threading.Event()
        self._listen_port = None

    # -- life cycle --

    def command(self):
        return [self.path, "--host", "127.0.0.1", "--port", str(self.port),
                "--data-dir", self.data_dir] + self.args

    def spawn(self):
        """Starts the process without waiting for it to listen."""
        env = None
        if self.env:
            env = dict(os.environ)
            env.update(self.env)
        self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     start_new_session=True, env=env)
        self.out = _Drain(self.proc.stdout, self._on_stdout)
        self.err = _Drain(self.proc.stderr)
        self.out.start()
        self.err.start()
        return self

    def _on_stdout(self, line):
        if line is None:  # EOF: the process closed stdout or died
            self._ready.set()
            return
        m = LISTEN_RE.search(line)
        if m and self._listen_port is None:
            self._listen_port = int(m.group(1))
            self._ready.set()

    def try_start(self, timeout=STARTUP_TIMEOUT_S):
        """Spawns and waits (bounded) for the listening line. Returns True once the
        server listens (self.port is then its port), False when it exited or stayed
        silent; the process is left as it is."""
        self.spawn()
        return self.wait_listening(timeout)

    def wait_listening(self, timeout=STARTUP_TIMEOUT_S):
        """After spawn(): waits (bounded) for the listening line, as try_start does."""
        self._ready.wait(timeout)
        if self._listen_port is None:
            return False
        self.port = self._listen_port
        return True

    def start(self):
        """Spawns and waits (bounded) for the listening line. Raises AssertionError with
        the server's stderr when it does not come."""
        if not self.try_start():
            rc = self.proc.poll()
            self.kill()
            raise AssertionError(
                "server did not print 'listening on http://127.0.0.1:PORT' within %.0f s "
                "(exit code %s)\ncommand: %s\n%s"
                % (STARTUP_TIMEOUT_S, rc, " ".join(self.command()), self.diagnostics()))
        return self

    def wait_exit(self, timeout=STARTUP_TIMEOUT_S):
        """Waits (bounded) for the process to exit; returns its exit code or None."""
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        self._join_drains()
        return rc

    def _join_drains(self):
        for d in (self.out, self.err):
            if d is not None:
                d.join(5.0)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout=STOP_TIMEOUT_S):
        """Sends sig to the server's PID, waits up to timeout, then SIGKILLs it. Returns
        the exit code seen after sig (None if it had to be killed)."""
        if self.proc is None:
            return None
        if self.proc.poll() is not None:
            self._join_drains()
            return self.proc.returncode
        try:
            os.kill(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            rc = None
            self.kill()
        self._join_drains()
        return rc

    def kill(self):
        """SIGKILL to the PID, then to what is left of its process group (children it
        forked); bounded waits."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                pass
        self.kill_group()
        self._join_drains()

    def kill_group(self):
        """SIGKILL to every process left in the server's own process group."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def close(self):
        """Always safe: stops the server (SIGTERM, then SIGKILL) and closes the pipes."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.stop()
        self.kill_group()
        self._join_drains()
        for pipe in (self.proc.stdout, self.proc.stderr):
            try:
                pipe.close()
            except OSError:
                pass

    # -- diagnostics --

    def stdout_text(self):
        return self.out.text() if self.out else ""

    def stderr_text(self):
        return self.err.text() if self.err else ""

    def sanitizer_report(self):
        """The part of stderr from the first AddressSanitizer / LeakSanitizer /
        UndefinedBehaviorSanitizer report on, or None."""
        err = self.stderr_text()
        for marker in SANITIZER_MARKERS:
            i = err.find(marker)
            if i >= 0:
                start = err.rfind("\n", 0, i) + 1
                return err[start:start + STDERR_TAIL]
        return None

    def diagnostics(self):
        err = self.stderr_text()
        if len(err) > STDERR_TAIL:
            err = "...\n" + err[-STDERR_TAIL:]
        rc = self.proc.poll() if self.proc else None
        return ("--- server %s (pid %s, exit code %s) stderr ---\n%s--- end ---"
                % (os.path.basename(self.path), self.proc.pid if self.proc else "-", rc, err))

    # -- HTTP over loopback --

    def connection(self, timeout=REQUEST_TIMEOUT_S):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(self, method, path, body=None, headers=(), timeout=REQUEST_TIMEOUT_S):
        """One request on a fresh connection. headers: a dict or a list of (name, value)
        pairs (names may repeat; values str or bytes). Returns (status, headers as a list
        of (name, value) pairs preserving duplicates, body bytes)."""
        conn = self.connection(timeout)
        try:
            return send_request(conn, method, path, body, headers)
        except (OSError, http.client.HTTPException) as e:
            raise AssertionError("%s %s failed: %r\n%s"
                                 % (method, path, e, self.diagnostics())) from e
        finally:
            conn.close()

    def attempt(self, method, path, body=None, headers=(), timeout=REQUEST_TIMEOUT_S):
        """One request on a fresh connection: (status, headers, body), or the exception
        instead of raising it (for requests that may meet a dying server)."""
        conn = self.connection(timeout)
        try:
            return send_request(conn, method, path, body, headers)
        except (OSError, http.client.HTTPException) as e:
            return e
        finally:
            conn.close()

    def get(self, path, headers=(), timeout=REQUEST_TIMEOUT_S):
        return self.request("GET", path, None, headers, timeout)

    def post(self, path, body=b"", key=None, headers=None, timeout=REQUEST_TIMEOUT_S):
        """POST with an optional Idempotency-Key (str or bytes)."""
        hs = header_list(headers)
        if key is not None:
            hs.append(("Idempotency-Key", key))
        return self.request("POST", path, body, hs, timeout)

    def get_json(self, path):
        status, headers, body = self.get(path)
        return status, parse_json(body)

    def count(self, op):
        """How often the fixture ran the handlers of operation op (GET /count)."""
        status, headers, body = self.get("/count?op=" + op)
        if status != 200:
            raise AssertionError("GET /count?op=%s answered %d %r\n%s"
                                 % (op, status, body, self.diagnostics()))
        return parse_json(body)["executions"]

    def wait_for_count(self, op, n, timeout=10.0):
        """Polls GET /count until op's handler has started n times (bounded). Each poll
        uses a fresh connection with a short timeout: a connection that the server's
        HTTP thread accepted together with a request whose handler is now blocking can
        sit behind that handler, so a stuck poll is abandoned and a new one sent."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            conn = self.connection(timeout=0.5)
            try:
                st, hs, body = send_request(conn, "GET", "/count?op=" + op)
                if st == 200:
                    last = parse_json(body)["executions"]
                    if last >= n:
                        return last
            except (OSError, http.client.HTTPException):
                pass
            finally:
                conn.close()
            time.sleep(0.02)
        raise AssertionError("timed out after %.1f s waiting for %d executions of %s (last "
                             "seen: %s)\n%s" % (timeout, n, op, last, self.diagnostics()))

    def health(self, timeout=10.0):
        """GET /health status."""
        return self.get("/health", timeout=timeout)[0]


def header_list(headers):
    if headers is None:
        return []
    if isinstance(headers, dict):
        return list(headers.items())
    return list(headers)


def send_request(conn, method, path, body=None, headers=()):
    """Sends one request on conn (connected or not) and reads the whole response."""
    hs = header_list(headers)
    names = {n.lower() if isinstance(n, str) else n.decode().lower() for n, _ in hs}
    conn.putrequest(method, path, skip_accept_encoding=True)
    for name, value in hs:
        conn.putheader(name, value)
    if body is not None and "content-length" not in names \
            and "transfer-encoding" not in names:
        conn.putheader("Content-Length", str(len(body)))
    conn.endheaders(body if body else None)
    resp = conn.getresponse()
    data = resp.read()
    return resp.status, resp.getheaders(), data


def parse_json(body):
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise AssertionError("body is not JSON: %r (%s)" % (body[:500], e)) from e


def header(headers, name):
    """The first value of header name (case-insensitive), or None."""
    values = header_values(headers, name)
    return values[0] if values else None


def header_values(headers, name):
    name = name.lower()
    return [v for n, v in headers if n.lower() == name]


def read_line(pipe, timeout, what="a line"):
    """The next line of a child's stdout pipe, waiting at most timeout seconds (a child
    that neither prints nor exits must not hang the test); "" at EOF."""
    deadline = time.monotonic() + timeout
    buf = b""
    fd = pipe.fileno()
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError("timed out after %.0f s waiting for %s" % (timeout, what))
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 1)
            if not chunk:
                break
            buf += chunk
    return buf.decode(errors="replace")


def wait_until(predicate, timeout, step=0.05, what="condition"):
    """Polls predicate until it returns a true value (returned) or timeout passes
    (AssertionError)."""
    deadline = time.monotonic() + timeout
    while True:
        v = predicate()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %.1f s waiting for %s" % (timeout, what))
        time.sleep(step)


# -- raw sockets --

def raw_connect(port, timeout=5.0):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


class RawResponse:
    def __init__(self, status, headers, body, raw):
        self.status = status
        self.headers = headers
        self.body = body
        self.raw = raw


def read_response(sock, timeout=5.0, carry=None):
    """Reads one HTTP/1.x response from sock within timeout. Returns a RawResponse, or
    None when the peer closed (or reset) the connection before a complete status line and
    header block arrived. Raises socket.timeout when nothing conclusive came in time.
    carry (a bytearray), when given, holds bytes received past the previous response
    (pipelining): they are read first, and bytes past this response are left in it."""
    deadline = time.monotonic() + timeout
    buf = bytes(carry) if carry else b""
    if carry is not None:
        del carry[:]

    def more():
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("no complete response within %.1f s" % timeout)
        sock.settimeout(left)
        try:
            return sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            return b""

    while b"\r\n\r\n" not in buf:
        chunk = more()
        if not chunk:
            return None
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        raise AssertionError("not an HTTP response: %r" % buf[:200])
    status = int(parts[1])
    headers = []
    for line in lines[1:]:
        if b":" in line:
            n, v = line.split(b":", 1)
            headers.append((n.decode("latin-1").strip(), v.decode("latin-1").strip()))
    te = (header(headers, "Transfer-Encoding") or "").lower()
    cl = header(headers, "Content-Length")
    if "chunked" in te:
        body = b""
        while True:
            while b"\r\n" not in rest:
                chunk = more()
                if not chunk:
                    return RawResponse(status, headers, body, buf)
                rest += chunk
                buf += chunk
            size_line, rest = rest.split(b"\r\n", 1)
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            while len(rest) < size + 2:
                chunk = more()
                if not chunk:
                    return RawResponse(status, headers, body + rest, buf)
                rest += chunk
                buf += chunk
            if size == 0:
                rest = rest[2:]  # the CRLF that ends an empty trailer section
                break
            body += rest[:size]
            rest = rest[size + 2:]
        if carry is not None:
            carry += rest
    elif cl is not None:
        n = int(cl)
        body = rest
        while len(body) < n:
            chunk = more()
            if not chunk:
                break
            body += chunk
            buf += chunk
        if carry is not None:
            carry += body[n:]
        body = body[:n]
    elif status in (204, 304) or 100 <= status < 200:
        body = b""
    else:
        body = rest
        while True:
            chunk = more()
            if not chunk:
                break
            body += chunk
            buf += chunk
    return RawResponse(status, headers, body, buf)


WAITING = "waiting"  # raw_exchange: the server neither answered nor closed in time


def raw_exchange(port, data, timeout=5.0, half_close=True, allow_wait=False):
    """Connects, sends data (bytes), half-closes (unless told not to) and reads one
    response. Returns a RawResponse, or None when the server closed without answering.
    A send that fails because the server already closed counts as closed. When nothing
    conclusive comes within timeout: returns WAITING if allow_wait, else raises
    socket.timeout. The connection is always closed on return."""
    s = raw_connect(port, timeout)
    try:
        try:
            s.sendall(data)
            if half_close:
                s.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # reset or already closed by the server: read what it sent, if anything
        try:
            return read_response(s, timeout)
        except socket.timeout:
            if allow_wait:
                return WAITING
            raise
    finally:
        s.close()


# -- processes, through /proc --

ProcStat = collections.namedtuple("ProcStat", "pid comm state ppid pgrp start")


def proc_stat(pid):
    """The ProcStat of pid from /proc/<pid>/stat (start: its start time in clock ticks),
    or None when there is no such process."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return None
    lp, rp = data.find("("), data.rfind(")")
    if lp < 0 or rp < 0:
        return None
    fields = data[rp + 2:].split()
    try:
        return ProcStat(pid, data[lp + 1:rp], fields[0], int(fields[1]), int(fields[2]),
                        int(fields[19]))
    except (IndexError, ValueError):
        return None


def live_processes():
    """ProcStats of every process that is neither a zombie nor dead."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            p = proc_stat(int(name))
            if p and p.state not in ("Z", "X"):
                out.append(p)
    return out


def live_children(pid):
    return [p for p in live_processes() if p.ppid == pid]


# -- concurrent requests --


def run_together(srv, requests, timeout=60.0):
    """Sends requests [(path, body, key)] as POSTs from one thread each, released together
    by a barrier once every thread has connected. Returns [(status, headers, body, seconds
    from release to response)] in request order; an exception takes the place of a failed
    request. Raises AssertionError when threads are still running after timeout."""
    return run_together_on([(srv,) + tuple(r) for r in requests], timeout)


def run_together_on(requests, timeout=60.0):
    """run_together with a server per request: [(srv, path, body, key)]."""
    n = len(requests)
    barrier = threading.Barrier(n, timeout=timeout)
    results = [None] * n

    def worker(i, srv, path, body, key):
        conn = srv.connection(timeout=timeout)
        try:
            conn.connect()
            barrier.wait()
            t0 = time.monotonic()
            st, hs, b = send_request(conn, "POST", path, body, {"Idempotency-Key": key})
            results[i] = (st, hs, b, time.monotonic() - t0)
        except Exception as e:  # reported by the caller
            results[i] = e
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, args=(i,) + tuple(r), daemon=True)
               for i, r in enumerate(requests)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    stuck = sum(t.is_alive() for t in threads)
    if stuck:
        raise AssertionError("%d request threads did not finish within %.0f s"
                             % (stuck, timeout))
    return results


class ServerTestCase(unittest.TestCase):
    """Starts servers with start_server() and always cleans them up; failure messages
    carry the stderr of every server the test started."""

    maxDiff = 4000

    def setUp(self):
        super().setUp()
        self._servers = []

    def restart_server(self, path, data_dir, *args, deadline_s=15.0):
        """Starts a server on data_dir. After a SIGKILL, processes the dead server left
        behind may hold the data dir for a moment: retries (bounded by deadline_s) while
        the start fails with exit code 2, the data-dir-locked error."""
        return self.start_retrying(lambda: self.server(path, *args, data_dir=data_dir),
                                   "restart on %s" % data_dir, deadline_s)

    def start_retrying(self, make, what, deadline_s=15.0):
        """Starts make()'s server, retrying (bounded by deadline_s) while the start fails
        with exit code 2, the data-dir-locked error of a dead server's leftovers."""
        deadline = time.monotonic() + deadline_s
        while True:
            srv = make()
            if srv.try_start():
                return srv
            rc = srv.wait_exit(5.0)
            if rc == 2 and time.monotonic() < deadline:
                time.sleep(0.1)
                continue
            self.fail("%s failed (exit code %s)\n%s" % (what, rc, srv.diagnostics()))

    def make_data_dir(self):
        d = tempfile.mkdtemp(prefix="cnerium-integ-")
        self.addCleanup(shutil.rmtree, d, True)
        return d

    def server(self, path, *args, data_dir=None, port=0, env=None):
        """A Server object (not started), cleaned up at the end of the test. A fresh data
        dir is made unless one is given."""
        if data_dir is None:
            data_dir = self.make_data_dir()
        srv = Server(path, args, data_dir=data_dir, port=port, env=env)
        self._servers.append(srv)
        # Cleanups run last-in first-out: close first, then look for sanitizer reports.
        self.addCleanup(self.assertNoSanitizerReport, srv)
        self.addCleanup(srv.close)
        return srv

    def start_server(self, path, *args, data_dir=None, port=0, env=None):
        return self.server(path, *args, data_dir=data_dir, port=port, env=env).start()

    def _formatMessage(self, msg, standardMsg):
        text = super()._formatMessage(msg, standardMsg)
        for srv in getattr(self, "_servers", []):
            if srv.proc is not None:
                text += "\n" + srv.diagnostics()
        return text

    # -- assertions shared by the suites --

    def assertNoSanitizerReport(self, srv):
        report = srv.sanitizer_report()
        if report:
            raise self.failureException("sanitizer report from %s (pid %s):\n%s"
                                        % (os.path.basename(srv.path), srv.proc.pid, report))

    def assertProblem(self, resp, status, type_=None, error=None):
        """resp is (status, headers, body): a problem response of the layer."""
        st, headers, body = resp
        self.assertEqual(st, status, "status; body %r" % body[:500])
        self.assertEqual(header(headers, "Content-Type"), "application/problem+json")
        self.assertEqual(header(headers, "Cache-Control"), "no-store",
                         "layer errors must not be cached")
        doc = parse_json(body)
        self.assertIsInstance(doc, dict)
        for member in ("error", "type", "title", "status", "detail"):
            self.assertIn(member, doc, "problem member %r missing in %r" % (member, doc))
        self.assertEqual(doc["status"], status)
        self.assertIsInstance(doc["error"], str)
        self.assertTrue(doc["error"], "error must not be empty")
        self.assertEqual(doc["error"], doc["detail"])
        self.assertIsInstance(doc["title"], str)
        if type_ is not None:
            self.assertEqual(doc["type"], type_)
        if error is not None:
            self.assertEqual(doc["error"], error)
        return doc

    def assertNotReplayed(self, resp):
        self.assertIsNone(header(resp[1], "Idempotent-Replayed"),
                          "a response that executed must not say Idempotent-Replayed")

    def assertReplayOf(self, first, again):
        """again replays first: same status, content type, body and Location, plus
        Idempotent-Replayed: true."""
        st1, h1, b1 = first
        st2, h2, b2 = again
        self.assertEqual(st2, st1, "replayed status")
        self.assertEqual(b2, b1, "replayed body must be byte for byte identical")
        self.assertEqual(header(h2, "Content-Type"), header(h1, "Content-Type"),
                         "replayed content type")
        self.assertEqual(header(h2, "Location"), header(h1, "Location"), "replayed Location")
        self.assertEqual(header(h2, "Idempotent-Replayed"), "true")


PROBLEM = "urn:cnerium:problem:"
KEY_MISSING = PROBLEM + "idempotency-key-missing"
KEY_INVALID = PROBLEM + "idempotency-key-invalid"
KEY_REUSED = PROBLEM + "idempotency-key-reused"
IN_PROGRESS = PROBLEM + "request-in-progress"
BODY_TOO_LARGE = PROBLEM + "body-too-large"
NOT_FOUND = PROBLEM + "not-found"
METHOD = PROBLEM + "method-not-allowed"
HANDLER = PROBLEM + "handler-failed"

MISSING_KEY_ERROR = "Missing Idempotency-Key header"
REUSED_ERROR = "Idempotency-Key was reused with a different request body"


def main():
    unittest.main(verbosity=2)
