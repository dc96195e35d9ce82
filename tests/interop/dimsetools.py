"""Helpers for DIMSE tests: dcmtk's tools, free ports, a storescp receiver."""

import os
import shutil
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest


def dcmtk(tool):
    """dcmtk's own tool (pynetdicom installs Python apps of the same names)."""
    return f"/usr/bin/{tool}" if Path(f"/usr/bin/{tool}").exists() else shutil.which(tool)


def require_dcmtk():
    if not dcmtk("storescu"):
        if os.environ.get("PACS_TEST_REQUIRE_DCMTK"):
            raise RuntimeError("dcmtk (storescu, echoscu, storescp) is required but not installed")
        return pytest.mark.skip(reason="dcmtk is not installed")
    return None


def run(tool, *args, timeout=120):
    return subprocess.run([dcmtk(tool), *map(str, args)], capture_output=True, text=True, timeout=timeout)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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

    def __init__(self, folder: Path, ae="STORESCP"):
        self.ae, self.port, self.folder = ae, free_port(), folder
        folder.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([dcmtk("storescp"), "+B", "-od", str(folder), "-aet", ae, "+xa",
                                      str(self.port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_for_port(self.port)

    def destination(self) -> str:
        return f'[{{ae="{self.ae}",host="127.0.0.1",port={self.port}}}]'

    def files(self) -> list[Path]:
        return sorted(self.folder.iterdir())

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)
