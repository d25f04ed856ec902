"""A minimal WebSocket client (RFC 6455) on the standard library, for the tests.

Text frames only (plus ping/pong/close), client-side masking, bounded reads. Enough to
talk to the broadcaster; not a general-purpose client. The broadcaster opens every
connection with a welcome message; the constructor reads it (self.welcome) unless told
not to. A refused upgrade raises HandshakeRefused with the HTTP status and body.
"""
import base64
import json
import os
import re
import socket
import struct
import time


class WSClosed(Exception):
    """The server closed the connection (code and reason when it sent a close frame)."""

    def __init__(self, code=None, reason=""):
        super().__init__("closed: %s %s" % (code, reason))
        self.code = code
        self.reason = reason


class HandshakeRefused(ConnectionError):
    """The server answered the upgrade with an HTTP status other than 101."""

    def __init__(self, status, status_line, body):
        super().__init__("handshake refused: %r %r" % (status_line, body[:200]))
        self.status = status
        self.body = body


class WSClient:
    def __init__(self, host, port, path="/ws", timeout=5.0, headers=(), welcome=True):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""
        self.closed = None
        try:
            self._handshake(host, port, path, timeout, headers, welcome)
        except BaseException:
            self.sock.close()
            raise

    def _handshake(self, host, port, path, timeout, headers=(), welcome=True):
        """Sends the upgrade request (extra headers as (name, value) pairs) and reads the
        answer: 101 and then the welcome message (into self.welcome), or
        HandshakeRefused."""
        key = base64.b64encode(os.urandom(16)).decode()
        extra = "".join("%s: %s\r\n" % (n, v) for n, v in headers)
        req = ("GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
               "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
               "Sec-WebSocket-Version: 13\r\n%s\r\n" % (path, host, port, key, extra))
        self.sock.sendall(req.encode())
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in self.buf:
            self._fill(deadline)
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        self.status_line = head.split(b"\r\n", 1)[0]
        parts = self.status_line.split(b" ")
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
        if status != 101:
            # An error answer: its body (Content-Length, then the server closes).
            m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
            want = int(m.group(1)) if m else 0
            try:
                while len(self.buf) < want:
                    self._fill(deadline)
            except (WSClosed, OSError):
                pass
            raise HandshakeRefused(status, self.status_line, self.buf[:want])
        self.welcome = None
        if welcome:
            msg = self.recv_json(max(0.01, deadline - time.monotonic()))
            if not isinstance(msg, dict) or msg.get("type") != "welcome":
                raise AssertionError("expected a welcome message first, got %r" % (msg,))
            self.welcome = msg

    def _fill(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("no data within the deadline")
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            raise WSClosed()
        self.buf += data

    def _need(self, n, deadline):
        while len(self.buf) < n:
            self._fill(deadline)
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def send_frame(self, opcode, payload, fin=True):
        mask = os.urandom(4)
        n = len(payload)
        head = bytes([(0x80 if fin else 0) | opcode])
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 65536:
            head += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack("!Q", n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(head + mask + masked)

    def send_text(self, text):
        self.send_frame(0x1, text.encode() if isinstance(text, str) else text)

    def send_json(self, obj):
        self.send_text(json.dumps(obj))

    def recv_text(self, timeout=5.0):
        """The next text message (pings are answered, pongs skipped). Raises
        socket.timeout when none comes in time, WSClosed when the server closed."""
        deadline = time.monotonic() + timeout
        message = b""
        while True:
            b0, b1 = self._need(2, deadline)
            fin, opcode, n = b0 & 0x80, b0 & 0x0F, b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", self._need(2, deadline))[0]
            elif n == 127:
                n = struct.unpack("!Q", self._need(8, deadline))[0]
            if b1 & 0x80:
                self._need(4, deadline)  # servers do not mask; tolerate it anyway
            payload = self._need(n, deadline)
            if opcode == 0x8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                self.closed = (code, payload[2:].decode(errors="replace"))
                raise WSClosed(code, self.closed[1])
            if opcode == 0x9:
                self.send_frame(0xA, payload)
                continue
            if opcode == 0xA:
                continue
            message += payload
            if fin:
                return message.decode()

    def recv_json(self, timeout=5.0):
        return json.loads(self.recv_text(timeout))

    def close(self):
        try:
            self.send_frame(0x8, struct.pack("!H", 1000))
        except OSError:
            pass
        try:
            self.sock.close()
        except OSError:
            pass
