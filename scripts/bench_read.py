#!/usr/bin/env python3
"""Read-side benchmark: QIDO-RS, WADO-RS metadata, retrieval and frames, for pacs-lite and,
when installed (Debian `orthanc` + `orthanc-dicomweb`), Orthanc on the same machine with the
same data in the same run.

Data: 300 studies of 2 small CT instances, one 100-instance study, one 1000-instance
series, one 200-instance 512x512 study. Prints p50/p99 latency (ms) per request kind and
retrieval throughput; asserts nothing. With --large, also populates a separate pacs-lite
index with 100 000 studies / 1 000 000 instances (scripts/populate_index.py) and times
typical study-list queries there.

Usage: scripts/bench_read.py [--quick] [--large [--large-postgres URL]] [--no-orthanc] [--compare NAME=BINARY]…
"""

import argparse
import http.client
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_stow as stow  # noqa: E402  (instance factory, multipart writer, pacs-lite server)

ROOT = Path(__file__).resolve().parents[1]
ORTHANC_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Orthanc:
    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="orthanc-bench-"))
        self.port = free_port()
        self.dicom_port = free_port()
        cfg = {
            "Name": "bench", "StorageDirectory": str(self.dir / "db"), "IndexDirectory": str(self.dir / "db"),
            "HttpPort": self.port, "DicomPort": self.dicom_port, "DicomAet": "ORTHANC", "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            # Answer C-FIND from any AE (by default only configured modalities may query).
            "DicomAlwaysAllowFind": True, "DicomAlwaysAllowEcho": True, "Plugins": [ORTHANC_PLUGIN], "HttpServerEnabled": True,
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "StudiesMetadata": "Full",
                         "SeriesMetadata": "Full"},
        }
        (self.dir / "config.json").write_text(json.dumps(cfg))
        self.proc = subprocess.Popen(["Orthanc", str(self.dir / "config.json")], stdout=subprocess.DEVNULL,
                                     stderr=open(self.dir / "log.txt", "wb"))
        self.host, self.root = "127.0.0.1", "/dicom-web"
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                c = http.client.HTTPConnection(self.host, self.port, timeout=2)
                c.request("GET", "/system")
                if c.getresponse().status == 200:
                    return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("Orthanc did not start")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(30)
        # Removed at the end of the run, like pacs-lite's: deleting thousands of files slows
        # file creation nearby for minutes on some filesystems (see bench_dimse.py).
        stow.LEFTOVERS.append(self.dir)


class Pacs(stow.Server):
    root = "/dicom-web"


def load(server, groups):
    """STOW every group (a list of instance byte strings) in requests of 20 parts."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=300)
    for parts in groups:
        for i in range(0, len(parts), 20):
            body = stow.multipart(parts[i:i + 20])
            conn.request("POST", f"{server.root}/studies", body,
                         {"Content-Type": f'multipart/related; type="application/dicom"; boundary={stow.BOUNDARY}'})
            r = conn.getresponse()
            r.read()
            if r.status not in (200, 202):
                raise RuntimeError(f"store failed: {r.status}")
    conn.close()


def timed(server, path, accept, n):
    conn = http.client.HTTPConnection(server.host, server.port, timeout=300)
    times, size = [], 0
    for _ in range(n):
        t0 = time.perf_counter()
        conn.request("GET", path, headers={"Accept": accept})
        r = conn.getresponse()
        body = r.read()
        times.append(time.perf_counter() - t0)
        if r.status != 200:
            raise RuntimeError(f"GET {path}: {r.status} {body[:200]!r}")
        size = len(body)
    conn.close()
    times.sort()
    return {"p50": statistics.median(times) * 1000, "p99": times[min(len(times) - 1, int(len(times) * 0.99))] * 1000,
            "bytes": size, "mb_s": size / statistics.median(times) / 1e6}


def http_get(server, path):
    conn = http.client.HTTPConnection(server.host, server.port, timeout=60)
    conn.request("GET", path, headers={"Accept": "application/dicom+json"})
    return conn.getresponse().read()


def timed_curl(server, path, accept, n):
    """Like `timed`, with curl as the client: for bulk transfers, where Python's HTTP
    client would be the bottleneck."""
    times, size = [], 0
    for i in range(n + 2):  # two warm-up requests, not counted
        out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{size_download} %{time_total}",
                              "-H", f"Accept: {accept}", f"http://{server.host}:{server.port}{path}"],
                             capture_output=True, text=True, check=True).stdout.split()
        if out[0] != "200":
            raise RuntimeError(f"GET {path}: {out[0]}")
        size = int(out[1])
        if i >= 2:
            times.append(float(out[2]))
    times.sort()
    return {"p50": statistics.median(times) * 1000, "p99": times[-1] * 1000, "bytes": size,
            "mb_s": size / statistics.median(times) / 1e6}


def dataset(quick):
    """Instance byte strings, grouped; and the UIDs the measurements need."""
    small = stow.Factory(64, 801, per_series=2, per_study=2)
    small.n = 1
    n_studies = 100 if quick else 300
    groups, uids = [], {}
    for _ in range(n_studies):
        groups.append([small.next(), small.next()])
    def uid_of(raw, prefix):
        return re.search(rb"(" + re.escape((stow.UID_PREFIX + prefix).encode()) + rb"\d{12})", raw).group(1).decode()
    # A 100-instance study (2 series of 50; Factory numbers series by 50 and studies by 500,
    # so it starts on a fresh boundary) and one 1000-instance series (UIDs rewritten).
    f100 = stow.Factory(64, 802)
    f100.n = 499
    hundred = [f100.next() for _ in range(100)]
    uids["study100"] = uid_of(hundred[0], "2")
    thousand = []
    fs = stow.Factory(64, 804)
    for _ in range(200 if quick else 1000):
        raw = fs.next()
        raw = re.sub(rb"(" + re.escape((stow.UID_PREFIX + "3").encode()) + rb")\d{12}", rb"\g<1>804999999999", raw)
        raw = re.sub(rb"(" + re.escape((stow.UID_PREFIX + "2").encode()) + rb")\d{12}", rb"\g<1>804999999999", raw)
        thousand.append(raw)
    uids["series_study"] = stow.UID_PREFIX + "2804999999999"
    uids["series"] = stow.UID_PREFIX + "3804999999999"
    big = stow.Factory(512, 805)
    big.n = 499
    large = [big.next() for _ in range(50 if quick else 200)]
    uids["large_study"] = uid_of(large[0], "2")
    uids["large_series"] = uid_of(large[0], "3")
    uids["large_sop"] = uid_of(large[0], "1")
    return groups + [hundred, thousand, large], uids


def measure(server, uids, n):
    r = {}
    r["QIDO all studies"] = timed(server, f"{server.root}/studies?limit=1000", "application/dicom+json", n)
    count = len(json.loads(http_get(server, f"{server.root}/studies?limit=1000")))
    print(f"  ({type(server).__name__}: the study list has {count} studies)", file=sys.stderr)
    r["QIDO PatientID=BENCH&StudyDate range"] = timed(
        server, f"{server.root}/studies?PatientID=BENCH&StudyDate=20230101-20241231&limit=1000",
        "application/dicom+json", n)
    r["metadata, 100-instance study"] = timed(server, f"{server.root}/studies/{uids['study100']}/metadata",
                                              "application/dicom+json", n)
    r["metadata, big series"] = timed(
        server, f"{server.root}/studies/{uids['series_study']}/series/{uids['series']}/metadata",
        "application/dicom+json", max(5, n // 5))
    retrieve = timed_curl if shutil.which("curl") else timed
    r["retrieve 512x512 study"] = retrieve(server, f"{server.root}/studies/{uids['large_study']}",
                                           'multipart/related; type="application/dicom"; transfer-syntax=*', 7)
    r["single frame (512x512)"] = timed(
        server, f"{server.root}/studies/{uids['large_study']}/series/{uids['large_series']}/instances/"
                f"{uids['large_sop']}/frames/1",
        "multipart/related; type=application/octet-stream; transfer-syntax=*", n)
    return r


def large_scale(n, pg_url=None):
    pop = Path(__file__).resolve().parent / "populate_index.py"
    server = Pacs()
    if pg_url:
        # An empty database of its own on the PostgreSQL server of pg_url.
        db = "bench_1m"
        subprocess.run(["psql", pg_url, "-qc", f"DROP DATABASE IF EXISTS {db}"], check=True, capture_output=True)
        subprocess.run(["psql", pg_url, "-qc", f"CREATE DATABASE {db}"], check=True, capture_output=True)
        stow.DATABASES.append((pg_url, db))
        url = f"{pg_url.rsplit('/', 1)[0]}/{db}"
        server.env["PACS_INDEX__URL"] = url
        target = ["--postgres", url]
    else:
        target = ["--sqlite", str(Path(server.env["PACS_DATA_DIR"]) / "index.sqlite")]
    subprocess.run([sys.executable, str(pop), *target, "--studies", "100000", "--instances-per-study", "10"],
                   check=True)
    server.start()
    out = {}
    for label, q in [("list 100 studies", "limit=100"),
                     ("PatientID exact", "PatientID=PID0031337"),
                     ("PatientName prefix", "PatientName=NAME0042*&limit=100"),
                     ("StudyDate range", "StudyDate=20240101-20240131&limit=100"),
                     ("AccessionNumber exact", "AccessionNumber=ACC0077777")]:
        out[label] = timed(server, f"/dicom-web/studies?{q}", "application/dicom+json", n)
    server.stop()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--large", action="store_true", help="also 100 000 studies / 1 000 000 instances")
    ap.add_argument("--large-postgres", metavar="URL",
                    help="with --large: the same on PostgreSQL (a superuser URL; a database bench_1m is made)")
    ap.add_argument("--no-orthanc", action="store_true")
    ap.add_argument("--compare", metavar="NAME=BINARY", action="append", default=[],
                    help="also measure another pacs-lite binary (e.g. an earlier build) in the same run")
    args = ap.parse_args()
    groups, uids = dataset(args.quick)
    n = 20 if args.quick else 50
    results = {}
    servers = [("pacs-lite", lambda: Pacs().start())]
    for spec in args.compare:
        name, _, path = spec.partition("=")
        servers.append((name, lambda path=path: Pacs(binary=path).start()))
    if not args.no_orthanc and shutil.which("Orthanc") and Path(ORTHANC_PLUGIN).exists():
        servers.append(("Orthanc", Orthanc))
    for name, make in servers:
        server = make()
        try:
            t0 = time.perf_counter()
            load(server, groups)
            print(f"{name}: loaded {sum(len(g) for g in groups)} instances in {time.perf_counter() - t0:.1f} s",
                  file=sys.stderr)
            results[name] = measure(server, uids, n)
        finally:
            server.stop()
    names = list(results)
    print(f"read-side benchmark ({os.cpu_count()} cores); latency p50 / p99 in ms")
    print(f"{'request':42}" + "".join(f"{n:>24}" for n in names))
    for key in results[names[0]]:
        row = f"{key:42}"
        for nme in names:
            v = results[nme][key]
            extra = f" {v['mb_s']:.0f}MB/s" if v["bytes"] > 5_000_000 else ""
            row += f"{v['p50']:>10.1f} / {v['p99']:>6.1f}{extra:>6}"
        print(row)
    if args.large:
        print("pacs-lite, SQLite index with 100 000 studies / 1 000 000 instances: QIDO p50 / p99 in ms")
        for label, v in large_scale(n).items():
            print(f"  {label:40} {v['p50']:8.1f} / {v['p99']:6.1f}")
        if args.large_postgres:
            print("pacs-lite, PostgreSQL index with 100 000 studies / 1 000 000 instances: QIDO p50 / p99 in ms")
            for label, v in large_scale(n, args.large_postgres).items():
                print(f"  {label:40} {v['p50']:8.1f} / {v['p99']:6.1f}")


if __name__ == "__main__":
    try:
        main()
    finally:
        stow.remove_leftovers()
