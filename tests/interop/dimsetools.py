"""Helpers for DIMSE tests: dcmtk's tools, a storescp receiver, and an association written
by hand (PDUs, PDVs and command sets as bytes) for peers that misbehave on purpose, where
no library would."""

import os
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest

import optional
from optional import dcmtk
from pacs import free_port

VERIFICATION = "1.2.840.10008.1.1"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


def require_dcmtk():
    """A skip mark when dcmtk is missing, None when it is there; an error if CI requires it."""
    missing = optional.dcmtk_missing()
    if missing:
        if os.environ.get("PACS_TEST_REQUIRE_DCMTK"):
            raise RuntimeError(f"dcmtk (storescu, echoscu, storescp) is required, but {missing}")
        return pytest.mark.skip(reason=missing)
    return None


def run(tool, *args, timeout=120):
    return subprocess.run([dcmtk(tool), *map(str, args)], capture_output=True, text=True, timeout=timeout)


def wait_for_port(port, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def dataset_bytes(raw: bytes) -> bytes:
    """The data set of a Part-10 file with a group length element: what C-STORE transfers."""
    assert raw[128:132] == b"DICM" and raw[132:136] == b"\x02\x00\x00\x00"
    group_length = struct.unpack("<I", raw[140:144])[0]
    return raw[144 + group_length:]


class StoreSCP:
    """dcmtk's storescp as a C-MOVE destination: bit-preserving, accepting every syntax."""

    def __init__(self, folder: Path, ae="STORESCP", tls=None):
        """`tls`: (key, certificate, CA) PEM paths: DICOM TLS, requiring the caller's
        certificate to chain to the CA (storescp's default)."""
        self.ae, self.port, self.folder = ae, free_port(), folder
        folder.mkdir(parents=True, exist_ok=True)
        secure = ["+tls", tls[0], tls[1], "+cf", tls[2]] if tls else []
        self.proc = subprocess.Popen([dcmtk("storescp"), *secure, "+B", "-od", str(folder), "-aet", ae, "+xa",
                                      str(self.port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_for_port(self.port)

    def destination(self) -> str:
        return f'[{{ae="{self.ae}",host="127.0.0.1",port={self.port}}}]'

    def files(self) -> list[Path]:
        return sorted(self.folder.iterdir())

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


# An association by hand (PS3.8 §9.3). PDU headers are big endian; command sets are
# Implicit VR Little Endian with their group length first.

RELEASE_RQ = struct.pack(">BBII", 0x05, 0, 4, 0)
A_ABORT = struct.pack(">BBIBBBB", 0x07, 0, 4, 0, 0, 0, 0)


def pdu_header(kind: int, length: int) -> bytes:
    return struct.pack(">BBI", kind, 0, length)


def associate(port, called, contexts, calling="RAWPEER", timeout=30) -> socket.socket:
    """Open an association by hand, proposing presentation contexts 1, 3, 5, … for the
    (abstract syntax, transfer syntax) pairs of `contexts` with a maximum PDU of 16 KiB;
    returns the socket once the A-ASSOCIATE-AC has been read."""
    def item(kind, body):
        return struct.pack(">BBH", kind, 0, len(body)) + body

    def uid(u):
        return u.encode() + (b"\0" if len(u) % 2 else b"")

    pcs = b"".join(item(0x20, struct.pack(">BBBB", 2 * n + 1, 0, 0, 0) + item(0x30, uid(abstract))
                        + item(0x40, uid(ts)))
                   for n, (abstract, ts) in enumerate(contexts))
    user = item(0x50, item(0x51, struct.pack(">I", 16384)))
    body = (struct.pack(">HH", 1, 0) + called.ljust(16).encode() + calling.ljust(16).encode() + bytes(32)
            + item(0x10, b"1.2.840.10008.3.1.1.1") + pcs + user)
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.sendall(pdu_header(0x01, len(body)) + body)
    kind, _, length = struct.unpack(">BBI", recv_exact(s, 6))
    recv_exact(s, length)
    assert kind == 0x02, f"association not accepted: PDU type {kind:#x}"
    return s


def recv_exact(s, n) -> bytes:
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            raise ConnectionError("closed")
        out += chunk
    return out


def pdata(context, command, last, data) -> bytes:
    """A P-DATA-TF PDU holding one PDV: a fragment of a command set or of a data set."""
    pdv = struct.pack(">IBB", len(data) + 2, context, (1 if command else 0) | (2 if last else 0)) + data
    return pdu_header(0x04, len(pdv)) + pdv


def send_fragments(s, context, command, data, size=16000):
    """Send a whole command set or data set as P-DATA-TFs of `size` bytes, the last one marked."""
    for at in range(0, len(data), size):
        s.sendall(pdata(context, command, at + size >= len(data), data[at:at + size]))


def command_set(elements) -> bytes:
    """An Implicit VR Little Endian command set (element number of group 0000 -> value
    bytes, padded to even length with NUL), its group length first."""
    body = b""
    for elem, value in sorted(elements.items()):
        value += b"\0" * (len(value) % 2)
        body += struct.pack("<HHI", 0, elem, len(value)) + value
    return struct.pack("<HHII", 0, 0, 4, len(body)) + body


def us(value) -> bytes:
    return struct.pack("<H", value)


def store_command(sop_instance, sop_class=CT_IMAGE_STORAGE, message_id=1) -> bytes:
    """A C-STORE-RQ command set announcing a data set."""
    return command_set({0x0002: sop_class.encode(), 0x0100: us(0x0001), 0x0110: us(message_id),
                        0x0700: us(0), 0x0800: us(0x0000), 0x1000: str(sop_instance).encode()})


def response_status(s) -> int:
    """The Status of the next response command on the association (its P-DATA-TFs read whole)."""
    data = b""
    while True:
        kind, _, length = struct.unpack(">BBI", recv_exact(s, 6))
        pdu = recv_exact(s, length)
        assert kind == 0x04, f"expected P-DATA, got PDU type {kind:#x}"
        at = 0
        while at < len(pdu):
            vlen = struct.unpack(">I", pdu[at:at + 4])[0]
            flags = pdu[at + 5]
            data += pdu[at + 6:at + 4 + vlen]
            at += 4 + vlen
            if flags & 1 and flags & 2:
                at2 = 0
                while at2 < len(data):
                    group, elem, vl = struct.unpack("<HHI", data[at2:at2 + 8])
                    if (group, elem) == (0, 0x0900):
                        return struct.unpack("<H", data[at2 + 8:at2 + 10])[0]
                    at2 += 8 + vl
                raise AssertionError("no Status in the response")
