#!/usr/bin/env python3
"""STOW-RS and import benchmark for pacs-lite.

Starts the release binary on a fresh data directory (SQLite + filesystem by default, or
PostgreSQL with --pg-url), then measures:
  * STOW-RS throughput (instances/s, MB/s) and request latency (p50/p99) for 64x64 and
    512x512 CT instances, several instances per request, several concurrent clients;
  * `pacs-lite import` throughput on a folder of files;
  * the server's peak resident memory (VmHWM) after one large streamed request.
Prints a table; asserts nothing. Usage: scripts/bench_stow.py [--quick] [--pg-url URL]
"""

import argparse
import http.client
import io
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(os.environ.get("PACS_BIN", ROOT / "target" / "release" / "pacs-lite"))
UID_PREFIX = "1.2.826.0.1.3680043.8.498.77."
BOUNDARY = "bench-boundary-7d3c"
LEFTOVERS = []  # data directories, removed at exit (see Server.stop)
DATABASES = []  # (admin URL, name) of the PostgreSQL databases the run created


def remove_leftovers():
    for d in LEFTOVERS:
        shutil.rmtree(d, ignore_errors=True)
    for url, db in DATABASES:
        subprocess.run(["psql", url, "-qc", f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"], capture_output=True)


def template(size: int) -> bytes:
    """A CT instance whose UIDs end in 12 zero digits, to be patched per copy."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = UID_PREFIX + "1" + "0" * 12
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = UID_PREFIX + "2" + "0" * 12
    ds.SeriesInstanceUID = UID_PREFIX + "3" + "0" * 12
    ds.PatientName, ds.PatientID, ds.Modality = "Bench^Mark", "BENCH", "CT"
    ds.StudyDate, ds.SeriesNumber, ds.InstanceNumber = "20240101", 1, 1
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = size
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.random.default_rng(1).integers(0, 4096, (size, size), dtype=np.uint16).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


class Factory:
    """Distinct instances from one template: SOP UIDs numbered, `per_series` instances per
    series and `per_study` per study."""

    def __init__(self, size: int, run: int, per_series: int = 50, per_study: int = 500):
        self.tpl = template(size)
        self.run = run
        self.n = 0
        self.per_series, self.per_study = per_series, per_study
        self.lock = threading.Lock()

    def next(self) -> bytes:
        with self.lock:
            self.n += 1
            n = self.n
        num = f"{self.run:03d}{n:09d}"
        series = f"{self.run:03d}{n // self.per_series:09d}"
        study = f"{self.run:03d}{n // self.per_study:09d}"
        return (self.tpl.replace((UID_PREFIX + "1" + "0" * 12).encode(), (UID_PREFIX + "1" + num).encode())
                .replace((UID_PREFIX + "3" + "0" * 12).encode(), (UID_PREFIX + "3" + series).encode())
                .replace((UID_PREFIX + "2" + "0" * 12).encode(), (UID_PREFIX + "2" + study).encode()))


def multipart(parts):
    out = []
    for p in parts:
        out.append(f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode())
        out.append(p)
        out.append(b"\r\n")
    out.append(f"--{BOUNDARY}--\r\n".encode())
    return b"".join(out)


class Server:
    def __init__(self, pg_url=None, binary=None):
        self.binary = binary or BIN
        self.dir = Path(tempfile.mkdtemp(prefix="pacs-bench-"))
        self.env = dict(os.environ, PACS_DATA_DIR=str(self.dir / "data"), PACS_HTTP__LISTEN="127.0.0.1:0",
                        PACS_DIMSE__LISTEN="127.0.0.1:0", PACS_LOG__FILTER="warn")
        self.env.pop("PACS_BIN", None)  # the benchmark's, not a server setting
        if pg_url:
            db = "bench_" + uuid.uuid4().hex[:10]
            subprocess.run(["psql", pg_url, "-qc", f"CREATE DATABASE {db}"], check=True)
            DATABASES.append((pg_url, db))
            self.env["PACS_INDEX__URL"] = pg_url.rsplit("/", 1)[0] + "/" + db

    def start(self):
        self.proc = subprocess.Popen([self.binary, "serve"], env=self.env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        m = re.search(r"http://([\d.]+):(\d+)", self.proc.stdout.readline().decode())
        self.host, self.port = m.group(1), int(m.group(2))
        return self

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(20)
        # Data directories are removed at exit: ext4 allocates inodes slowly right after
        # mass deletions, which would slow down the next case.
        LEFTOVERS.append(self.dir)


def stow_run(server, factory, total, per_request, clients):
    latencies, errors, sent_bytes = [], [], [0]
    lock = threading.Lock()
    remaining = [total // per_request]

    def worker():
        conn = http.client.HTTPConnection(server.host, server.port)
        while True:
            with lock:
                if remaining[0] == 0:
                    break
                remaining[0] -= 1
            parts = [factory.next() for _ in range(per_request)]
            body = multipart(parts)
            t0 = time.perf_counter()
            conn.request("POST", "/dicom-web/studies", body,
                         {"Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'})
            resp = conn.getresponse()
            resp.read()
            dt = time.perf_counter() - t0
            with lock:
                latencies.append(dt)
                sent_bytes[0] += sum(len(p) for p in parts)
                if resp.status != 200:
                    errors.append(resp.status)
        conn.close()

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    n = len(latencies) * per_request
    lat = sorted(latencies)
    return {
        "inst_s": n / elapsed, "mb_s": sent_bytes[0] / elapsed / 1e6, "n": n, "errors": len(errors),
        "p50_ms": statistics.median(lat) * 1000, "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000,
    }


def import_run(factory, count, pg_url):
    src = Path(tempfile.mkdtemp(prefix="pacs-bench-src-"))
    total = 0
    for i in range(count):
        data = factory.next()
        total += len(data)
        (src / f"{i:06d}.dcm").write_bytes(data)
    server = Server(pg_url)  # only for its data directory and environment
    t0 = time.perf_counter()
    r = subprocess.run([BIN, "import", "-j", "4", src], env=server.env, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    LEFTOVERS.extend([src, server.dir])
    if r.returncode != 0:
        print(r.stdout, r.stderr, file=sys.stderr)
    return {"inst_s": count / elapsed, "mb_s": total / elapsed / 1e6, "n": count}


def big_request_rss(pg_url, size_mb):
    server = Server(pg_url).start()
    factory = Factory(512, 900)
    base_rss = server.peak_rss_mb()
    n = max(1, size_mb * 1_000_000 // len(factory.tpl))
    conn = http.client.HTTPConnection(server.host, server.port)
    conn.putrequest("POST", "/dicom-web/studies")
    conn.putheader("Content-Type", f'multipart/related; type="application/dicom"; boundary={BOUNDARY}')
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    sent = 0
    t0 = time.perf_counter()
    for _ in range(n):
        chunk = f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + factory.next() + b"\r\n"
        sent += len(chunk)
        conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    end = f"--{BOUNDARY}--\r\n".encode()
    conn.send(b"%x\r\n%s\r\n0\r\n\r\n" % (len(end), end))
    resp = conn.getresponse()
    resp.read()
    elapsed = time.perf_counter() - t0
    peak = server.peak_rss_mb()
    server.stop()
    return {"status": resp.status, "mb": sent / 1e6, "n": n, "secs": elapsed, "base_rss": base_rss, "peak_rss": peak}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pg-url", help="PostgreSQL superuser URL; benchmark the PostgreSQL index")
    ap.add_argument("--quick", action="store_true", help="smaller runs")
    ap.add_argument("--big-mb", type=int, default=1000, help="size of the large request for the memory check")
    args = ap.parse_args()
    scale = 0.25 if args.quick else 1.0
    backend = "PostgreSQL + fs" if args.pg_url else "SQLite + fs"
    print(f"pacs-lite STOW-RS benchmark ({backend}, {os.cpu_count()} cores)")
    print(f"{'case':44} {'inst/s':>9} {'MB/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'n':>6} {'err':>4}")
    cases = [("64x64 CT, 10/request, 1 client", 64, 10, 1, 3000),
             ("64x64 CT, 10/request, 4 clients", 64, 10, 4, 6000),
             ("64x64 CT, 1/request, 8 clients", 64, 1, 8, 3000),
             ("512x512 CT, 4/request, 1 client", 512, 4, 1, 600),
             ("512x512 CT, 4/request, 4 clients", 512, 4, 4, 1200)]
    for run, (label, size, per_req, clients, total) in enumerate(cases):
        server = Server(args.pg_url).start()
        r = stow_run(server, Factory(size, run), int(total * scale) // per_req * per_req, per_req, clients)
        server.stop()
        print(f"{label:44} {r['inst_s']:9.0f} {r['mb_s']:8.1f} {r['p50_ms']:8.1f} {r['p99_ms']:8.1f} {r['n']:6d} {r['errors']:4d}")
    for size, count in [(64, 3000), (512, 600)]:
        r = import_run(Factory(size, 500 + size // 64), int(count * scale), args.pg_url)
        print(f"{f'import {size}x{size} CT, 4 parallel':44} {r['inst_s']:9.0f} {r['mb_s']:8.1f} {'':>8} {'':>8} {r['n']:6d}")
    big = big_request_rss(args.pg_url, int(args.big_mb * scale))
    print(f"one {big['mb']:.0f} MB request ({big['n']} x 512x512, chunked): HTTP {big['status']} in {big['secs']:.1f} s "
          f"({big['mb'] / big['secs']:.0f} MB/s); server peak RSS {big['peak_rss']:.0f} MB (idle {big['base_rss']:.0f} MB)")


if __name__ == "__main__":
    try:
        main()
    finally:
        remove_leftovers()
