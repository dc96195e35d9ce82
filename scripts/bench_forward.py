#!/usr/bin/env python3
"""Forwarding throughput over DIMSE, pacs-lite against Orthanc, in one run on one machine.

pacs-lite (embedded defaults, one `[[forward.destinations]]` with `max_associations`
from `--associations`, no rule) and an Orthanc (Debian `orthanc`) each hold the same study;
each then sends it to a dcmtk `storescp --fork` of its own, writing to /dev/shm when there
is one (a receiver that keeps up: an Orthanc receiver commits each instance to its index
and holds both senders to ~20 instances/s; a disk-backed storescp makes the figures depend
on the receiver's page cache writeback): pacs-lite through `POST /api/v1/admin/forward/{destination}` (timed until its
outbox reports every instance delivered), Orthanc through `POST /modalities/{id}/store`
(synchronous: timed until it answers). Cases: 64x64 CT and 512x512 CT. Prints instances/s,
MB/s and the ratio; asserts nothing.

`--latency-ms N` puts a proxy (tests/interop/flakyproxy.py, latency only) between each
sender and its receiver, adding N ms each way, the same for both; the line then also
gives the associations each sender opened (connections the proxy accepted).

Usage: scripts/bench_forward.py [--quick] [--binary PATH] [--associations N] [--latency-ms N] [--repeat N]
"""

import argparse
import re
import sys
import time
from pathlib import Path

import requests

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "tests" / "interop"))
import bench_stow as stow  # noqa: E402
from bench_dimse import dcmtk  # noqa: E402
from flakyproxy import FlakyProxy  # noqa: E402
from orthanc import Orthanc  # noqa: E402


class Receiver:
    """dcmtk's storescp writing into a directory of its own."""

    def __init__(self, aet):
        import subprocess
        import tempfile
        # In memory when the machine has a tmpfs: the receivers' disk is not what is measured.
        shm = Path("/dev/shm")
        self.aet, self.dir = aet, Path(tempfile.mkdtemp(prefix="bench-recv-", dir=shm if shm.is_dir() else None))
        self.dicom_port = stow_free_port()
        self.proc = subprocess.Popen([dcmtk("storescp"), "-od", str(self.dir), "-aet", aet, "+xa", "--fork", "--max-pdu", "131072",
                                      str(self.dicom_port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)

    def count(self):
        return len(list(self.dir.iterdir()))

    def cleanup(self):
        import shutil
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


def stow_free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Gateway(stow.Server):
    """pacs-lite with one forwarding destination and no rule (studies are queued on demand)."""

    def __init__(self, aet, port, binary=None, associations=1):
        super().__init__(binary=binary)
        self.env["PACS_FORWARD__DESTINATIONS"] = (
            f'[{{name="central",kind="dimse",ae="{aet}",host="127.0.0.1",port={port},'
            f'max_associations={associations}}}]')

    def outbox(self):
        r = requests.get(f"http://{self.host}:{self.port}/api/v1/admin/forward")
        return r.json()["destinations"][0]


def load_pacs(server, instances):
    for i in range(0, len(instances), 20):
        r = requests.post(f"http://{server.host}:{server.port}/dicom-web/studies", data=stow.multipart(instances[i:i + 20]),
                          headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={stow.BOUNDARY}'})
        r.raise_for_status()


def time_pacs(gateway, study, n):
    t0 = time.perf_counter()
    r = requests.post(f"http://{gateway.host}:{gateway.port}/api/v1/admin/forward/central", json={"studies": [study]})
    r.raise_for_status()
    while gateway.outbox()["delivered"] < n:
        time.sleep(0.02)
    return time.perf_counter() - t0


def time_orthanc(source, receiver, n):
    ids = requests.get(f"{source.url}/instances").json()
    assert len(ids) == n, len(ids)
    t0 = time.perf_counter()
    r = requests.post(f"{source.url}/modalities/receiver/store", json={"Resources": ids, "Synchronous": True})
    r.raise_for_status()
    return time.perf_counter() - t0


def case(label, size, n, binary, latency_ms, associations):
    factory = stow.Factory(size, 60 + size % 50, per_series=n + 1, per_study=n + 1)  # numbering starts at 1
    instances = [factory.next() for _ in range(n)]
    total = sum(map(len, instances))
    study = re.search(re.escape(stow.UID_PREFIX).encode() + rb"2\d+", instances[0]).group().decode()
    to_pacs, to_orthanc = Receiver("RECV1"), Receiver("RECV2")
    links = [FlakyProxy("127.0.0.1", r.dicom_port, latency_ms=latency_ms).start()
             for r in (to_pacs, to_orthanc)] if latency_ms else []
    pacs_port, orthanc_port = [link.port for link in links] or [to_pacs.dicom_port, to_orthanc.dicom_port]
    gateway = source = None
    try:
        gateway = Gateway(to_pacs.aet, pacs_port, binary, associations).start()
        load_pacs(gateway, instances)
        source = Orthanc(aet="SOURCE", DicomModalities={"receiver": [to_orthanc.aet, "127.0.0.1", orthanc_port]})
        source.start()
        for raw in instances:
            requests.post(f"{source.url}/instances", data=raw).raise_for_status()
        t_pacs = time_pacs(gateway, study, n)
        t_orthanc = time_orthanc(source, to_orthanc, n)
        assert to_pacs.count() == n and to_orthanc.count() == n, (to_pacs.count(), to_orthanc.count())
        rate = lambda t: f"{n / t:7.1f} inst/s {total / t / 1e6:6.1f} MB/s"  # noqa: E731
        assocs = [f" ({link.accepted} assoc.)" for link in links] or ["", ""]
        print(f"{label:12} pacs-lite {rate(t_pacs)}{assocs[0]}   Orthanc {rate(t_orthanc)}{assocs[1]}   "
              f"ratio {t_orthanc / t_pacs:5.2f}")
    finally:
        for o in (*links, to_pacs, to_orthanc, source):
            if isinstance(o, FlakyProxy):
                o.stop()
            elif o:
                o.cleanup()
        if gateway:
            gateway.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--binary", help="the pacs-lite binary (default: target/release/pacs-lite)")
    ap.add_argument("--associations", type=int, default=4,
                    help="pacs-lite's max_associations (default 4; Orthanc sends on one)")
    ap.add_argument("--latency-ms", type=float, default=0,
                    help="one-way latency added between each sender and its receiver (default 0: no proxy)")
    ap.add_argument("--repeat", type=int, default=1, help="run each case this many times")
    args = ap.parse_args()
    link = f", {args.latency_ms:g} ms each way" if args.latency_ms else ""
    print(f"Forwarding a study over DIMSE to a storescp --fork receiver each: pacs-lite on up to "
          f"{args.associations} associations, Orthanc on one{link}")
    try:
        for _ in range(args.repeat):
            case("64x64 CT", 64, 200 if args.quick else 1000, args.binary, args.latency_ms, args.associations)
            case("512x512 CT", 512, 50 if args.quick else 400, args.binary, args.latency_ms, args.associations)
    finally:
        stow.remove_leftovers()


if __name__ == "__main__":
    main()
