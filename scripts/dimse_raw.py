"""A minimal in-process DIMSE client for benchmarks: association, one C-ECHO or C-FIND,
release, over a plain socket. It measures the server and the network round trips without
a client process start-up (which dominates when timing echoscu/findscu)."""

import socket
import struct

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

IMPLICIT_LE = "1.2.840.10008.1.2"
VERIFICATION = "1.2.840.10008.1.1"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"


def _item(kind, body):
    return struct.pack(">BBH", kind, 0, len(body)) + body


def _uid(u):
    return u.encode() + (b"\0" if len(u) % 2 else b"")


def _encode(ds, command=False):
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, True
    write_dataset(buf, ds)
    body = buf.getvalue()
    if command:
        body = struct.pack("<HHII", 0, 0, 4, len(body)) + body
    return body


class _Command:
    """The US elements of a command set (Implicit VR Little Endian), read without pydicom
    so that the client's own decoding does not dominate the timings."""

    def __init__(self, raw):
        self.values = {}
        pos = 0
        while pos + 8 <= len(raw):
            group, element, length = struct.unpack("<HHI", raw[pos:pos + 8])
            if length == 2:
                self.values[element] = struct.unpack("<H", raw[pos + 8:pos + 10])[0]
            pos += 8 + length

    @property
    def Status(self):
        return self.values.get(0x0900)

    @property
    def CommandDataSetType(self):
        return self.values.get(0x0800)


def _decode(raw):
    return _Command(raw)


class Association:
    def __init__(self, host, port, called, abstract, calling="BENCH"):
        pc = _item(0x20, struct.pack(">BBBB", 1, 0, 0, 0) + _item(0x30, _uid(abstract)) + _item(0x40, _uid(IMPLICIT_LE)))
        user = _item(0x50, _item(0x51, struct.pack(">I", 1 << 20)) + _item(0x52, b"1.2.826.0.1.3680043.9.9999.1"))
        body = (struct.pack(">HH", 1, 0) + called.ljust(16).encode() + calling.ljust(16).encode() + bytes(32)
                + _item(0x10, b"1.2.840.10008.3.1.1.1") + pc + user)
        self.abstract = abstract
        self.s = socket.create_connection((host, port))
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.s.sendall(struct.pack(">BBI", 0x01, 0, len(body)) + body)
        kind, _ = self._pdu()
        if kind != 0x02:
            raise RuntimeError(f"association not accepted (PDU type {kind:#x})")

    def _recv(self, n):
        out = b""
        while len(out) < n:
            chunk = self.s.recv(n - len(out))
            if not chunk:
                raise ConnectionError("closed")
            out += chunk
        return out

    def _pdu(self):
        kind, _, length = struct.unpack(">BBI", self._recv(6))
        return kind, self._recv(length)

    def _send(self, command, value):
        pdv = struct.pack(">IBB", len(value) + 2, 1, (1 if command else 0) | 2) + value
        self.s.sendall(struct.pack(">BBI", 0x04, 0, len(pdv)) + pdv)

    def _messages(self):
        """Yield (command, data set bytes or None) as they arrive."""
        cmd, data, want_data = b"", b"", False
        while True:
            kind, body = self._pdu()
            if kind != 0x04:
                raise RuntimeError(f"unexpected PDU {kind:#x}")
            pos = 0
            while pos < len(body):
                length, _ctx, ctrl = struct.unpack(">IBB", body[pos:pos + 6])
                value = body[pos + 6:pos + 4 + length]
                pos += 4 + length
                if ctrl & 1:
                    cmd += value
                    if ctrl & 2:
                        command = _decode(cmd)
                        cmd = b""
                        if command.CommandDataSetType == 0x0101:
                            yield command, None
                        else:
                            want_data = command
                else:
                    data += value
                    if ctrl & 2:
                        yield want_data, data
                        data = b""

    def echo(self):
        rq = Dataset()
        rq.AffectedSOPClassUID = VERIFICATION
        rq.CommandField = 0x0030
        rq.MessageID = 1
        rq.CommandDataSetType = 0x0101
        self._send(True, _encode(rq, command=True))
        for command, _ in self._messages():
            return command.Status

    def find(self, identifier: Dataset):
        """Run a C-FIND; returns (final status, number of matches)."""
        rq = Dataset()
        rq.AffectedSOPClassUID = self.abstract
        rq.CommandField = 0x0020
        rq.MessageID = 1
        rq.Priority = 0
        rq.CommandDataSetType = 0x0000
        self._send(True, _encode(rq, command=True))
        self._send(False, _encode(identifier))
        matches = 0
        for command, _data in self._messages():
            if command.Status == 0xFF00:
                matches += 1
            else:
                return command.Status, matches

    def release(self):
        self.s.sendall(struct.pack(">BBI", 0x05, 0, 4) + bytes(4))
        kind, _ = self._pdu()
        self.s.close()
        return kind == 0x06
