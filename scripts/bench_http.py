"""A bulk HTTP/1.1 reader for scripts/bench.py: GETs over one connection, each body read
into one 8 MB buffer and discarded (Content-Length, chunked, or until the server closes),
timed per request. curl reads in 16 KB pieces, and on this kind of machine that limits a
52 MB transfer to about what the servers deliver; this reader does not (2026-12-07: 6.7 GB/s
from a sendfile server, against curl's 2.4-2.9)."""

import socket
import time


class Reader:
    def __init__(self, host, port):
        self.host, self.port = host, port
        self.sock, self.buf, self.pos = None, bytearray(), 0
        self.scratch = memoryview(bytearray(8 << 20))

    def _fill(self):
        # Small reads: what follows a line is mostly body, which _skip reads straight into
        # the scratch buffer rather than through this one.
        k = self.sock.recv_into(self.scratch, 64 << 10)
        if not k:
            raise ConnectionError("the server closed the connection mid-response")
        self.buf += self.scratch[:k]

    def _line(self, sep=b"\r\n"):
        while (end := self.buf.find(sep, self.pos)) < 0:
            self._fill()
        line = bytes(self.buf[self.pos:end])
        self.pos = end + len(sep)
        return line

    def _skip(self, n):
        """Discard the next n bytes of the response."""
        have = min(n, len(self.buf) - self.pos)
        self.pos += have
        n -= have
        if n or self.pos > (1 << 20):
            self.buf, self.pos = self.buf[self.pos:], 0
        while n > 0:
            k = self.sock.recv_into(self.scratch, min(n, len(self.scratch)))
            if not k:
                raise ConnectionError("the server closed the connection mid-body")
            n -= k

    def get(self, path, accept):
        """(status, body size, seconds) of one GET."""
        if self.sock is None:
            self.sock = socket.create_connection((self.host, self.port), timeout=300)
            self.buf, self.pos = bytearray(), 0
        t0 = time.perf_counter()
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\nAccept: {accept}\r\n\r\n".encode())
        head = self._line(b"\r\n\r\n").decode("latin-1").split("\r\n")
        status = int(head[0].split()[1])
        fields = {k.strip().lower(): v.strip().lower() for k, _, v in (h.partition(":") for h in head[1:])}
        size = 0
        if "content-length" in fields:
            size = int(fields["content-length"])
            self._skip(size)
        elif fields.get("transfer-encoding") == "chunked":
            while (n := int(self._line().split(b";")[0], 16)) > 0:
                self._skip(n + 2)
                size += n
            while self._line():  # trailer fields, then the empty line
                pass
        else:  # the body ends where the server closes
            size = len(self.buf) - self.pos
            while k := self.sock.recv_into(self.scratch):
                size += k
            self.close()
        elapsed = time.perf_counter() - t0
        if fields.get("connection") == "close":
            self.close()
        if self.pos > (1 << 20):
            self.buf, self.pos = self.buf[self.pos:], 0
        return status, size, elapsed

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None
