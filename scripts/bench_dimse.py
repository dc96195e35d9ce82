#!/usr/bin/env python3
"""C-STORE benchmark with dcmtk's storescu (TCP_NODELAY=1): instances/s and MB/s for 64x64
and 512x512 CT over 1 and 4 associations, against pacs-lite and, when installed, Orthanc
(Debian `orthanc`) on the same machine in the same run; plus C-ECHO and C-FIND round trips
including association set-up (each a new echoscu/findscu process, whose start-up is part of
the figure: compare C-FIND with C-ECHO). Prints a table; asserts nothing. The server CPU per
instance (user + system time of the server process over the run) is the steadier figure where
the disk speed varies between runs; TMPDIR=/dev/shm puts the data in memory.

Both servers store one file per instance, so the cost of creating a file where TMPDIR lives
weighs on both. The run prints it first: on an ext4 without a journal (this machine's root
filesystem) the kernel skips inodes deleted in the last minutes one by one when it allocates a
new one, and a file costs ~20 us to create in a quiet directory but ~600 us where test or
benchmark runs have just deleted thousands of files. Nothing is deleted until the end of the
run for that reason; point TMPDIR at a fresh top-level directory for figures that measure the
servers rather than that (e.g. `mkdir /bench && TMPDIR=/bench scripts/bench_dimse.py`).

Usage: scripts/bench_dimse.py [--quick] [--no-orthanc] [--find-only] [--compare NAME=BINARY]…
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_read  # noqa: E402
import bench_stow as stow  # noqa: E402
import dimse_raw  # noqa: E402

# dcmtk (storescu, echoscu, and Orthanc's network layer) reads TCP_NODELAY from the
# environment; without it Nagle's algorithm adds ~40 ms per small message.
os.environ["TCP_NODELAY"] = "1"
ENV = dict(os.environ)


def dcmtk(tool):
    """dcmtk's own tool: pip's pynetdicom installs Python apps of the same names."""
    return f"/usr/bin/{tool}" if Path(f"/usr/bin/{tool}").exists() else shutil.which(tool)


class Pacs(stow.Server):
    def start(self):
        super().start()
        line = self.proc.stdout.readline().decode()
        self.dicom_port = int(re.search(r":(\d+) as", line).group(1))
        self.aet = "PACSLITE"
        return self


class Orthanc(bench_read.Orthanc):
    aet = "ORTHANC"


def make_folders(size, count, parts, run):
    factory = stow.Factory(size, run)
    root = Path(tempfile.mkdtemp(prefix="dimse-bench-"))
    stow.LEFTOVERS.append(root)
    folders, total = [], 0
    for p in range(parts):
        d = root / f"part{p}"
        d.mkdir()
        for i in range(count // parts):
            raw = factory.next()
            total += len(raw)
            (d / f"{i:06d}.dcm").write_bytes(raw)
        folders.append(d)
    return folders, total


def file_create_us(n=300):
    """Microseconds to create (and close) an empty file in TMPDIR, median of n."""
    d = Path(tempfile.mkdtemp(prefix="create-probe-"))
    stow.LEFTOVERS.append(d)
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        os.close(os.open(d / f"{i}", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[n // 2] * 1e6


def cpu_seconds(pid):
    """User + system CPU time of a process so far: less noisy than wall time on a machine
    whose disk speed varies between runs."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def store(server, folders):
    t0 = time.perf_counter()
    procs = [subprocess.Popen([dcmtk("storescu"), "-aec", server.aet, "+sd", "127.0.0.1", str(server.dicom_port), str(d)],
                              env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for d in folders]
    errors = [p.communicate()[1] for p in procs]
    elapsed = time.perf_counter() - t0
    failed = [e for p, e in zip(procs, errors) if p.returncode != 0 or b"E:" in e]
    return elapsed, len(failed)


def echo(server, n):
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run([dcmtk("echoscu"), "-aec", server.aet, "127.0.0.1", str(server.dicom_port)], env=ENV, check=True)
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2] * 1000


def cfind(server, n, out):
    """findscu round trips (a study-level query by PatientID over 300 studies)."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = subprocess.run([dcmtk("findscu"), "-v", "-S", "-aec", server.aet, "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientID=BENCH",
                        "-k", "StudyDate=20230101-20241231", "-k", "StudyInstanceUID", "-k", "PatientName",
                        "127.0.0.1", str(server.dicom_port)], env=ENV, check=True, capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
        answers = (r.stdout + r.stderr).count("Find Response")
        assert answers == 301, f"{answers - 1} matches from findscu (Orthanc: is C-FIND allowed?)"
    times.sort()
    return times[len(times) // 2] * 1000


def raw_round_trips(server, n, query):
    """Association + C-FIND (or C-ECHO) + release from an in-process client: no process start-up."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        if query is None:
            a = dimse_raw.Association("127.0.0.1", server.dicom_port, server.aet, dimse_raw.VERIFICATION)
            assert a.echo() == 0
        else:
            a = dimse_raw.Association("127.0.0.1", server.dicom_port, server.aet, dimse_raw.STUDY_ROOT_FIND)
            status, matches = a.find(query)
            assert status == 0 and matches == 300, (status, matches)
        a.release()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2] * 1000, times[int(len(times) * 0.99)] * 1000


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-orthanc", action="store_true")
    ap.add_argument("--compare", metavar="NAME=BINARY", action="append", default=[],
                    help="also measure another pacs-lite binary (e.g. an earlier build) in the same run")
    ap.add_argument("--find-only", action="store_true", help="only the C-ECHO and C-FIND latencies")
    args = ap.parse_args()
    scale = 0.25 if args.quick else 1.0
    cases = [("64x64 CT, 1 association", 64, 2000, 1), ("64x64 CT, 4 associations", 64, 4000, 4),
             ("512x512 CT, 1 association", 512, 400, 1), ("512x512 CT, 4 associations", 512, 800, 4)]
    servers = [("pacs-lite", lambda: Pacs().start())]
    for spec in args.compare:
        name, _, path = spec.partition("=")
        servers.append((name, lambda path=path: Pacs(binary=path).start()))
    if not args.no_orthanc and shutil.which("Orthanc"):
        servers.append(("Orthanc", Orthanc))
    results = {}
    create_us = file_create_us()
    for run, (label, size, count, parts) in enumerate([] if args.find_only else cases):
        folders, total = make_folders(size, int(count * scale) // parts * parts, parts, 600 + run)
        n = int(count * scale) // parts * parts
        for name, make in servers:
            # Each case starts with no dirty pages of the one before: a server that does
            # not flush its files (Orthanc) leaves them to the kernel, which would write them
            # back during the next case, and a sync of ours would wait for them.
            os.sync()
            server = make()
            try:
                cpu0 = cpu_seconds(server.proc.pid)
                elapsed, failed = store(server, folders)
                cpu = cpu_seconds(server.proc.pid) - cpu0
                results.setdefault(label, {})[name] = (n / elapsed, total / elapsed / 1e6, failed)
                results.setdefault(f"  {label}: server CPU ms/inst", {})[name] = (cpu / n * 1000, None, 0)
            finally:
                server.stop()
    small = stow.Factory(64, 801, per_series=2, per_study=2)
    small.n = 1
    studies = [[small.next(), small.next()] for _ in range(300)]
    for name, make in servers:
        os.sync()  # as above
        server = make()
        try:
            results.setdefault("C-ECHO incl. association (ms, p50)", {})[name] = (echo(server, 20), None, 0)
            server.root = "/dicom-web"
            bench_read.load(server, studies)
            results.setdefault("C-FIND, 300 studies (ms, p50)", {})[name] = (cfind(server, 20, None), None, 0)
            from pydicom.dataset import Dataset
            q = Dataset()
            q.QueryRetrieveLevel = "STUDY"
            q.PatientID = "BENCH"
            q.StudyDate = "20230101-20241231"
            q.StudyInstanceUID = ""
            q.PatientName = ""
            p50, p99 = raw_round_trips(server, 50, None)
            results.setdefault("C-ECHO, in-process client (ms, p50)", {})[name] = (p50, None, 0)
            results.setdefault("C-ECHO, in-process client (ms, p99)", {})[name] = (p99, None, 0)
            p50, p99 = raw_round_trips(server, 50, q)
            results.setdefault("C-FIND, in-process client (ms, p50)", {})[name] = (p50, None, 0)
            results.setdefault("C-FIND, in-process client (ms, p99)", {})[name] = (p99, None, 0)
        finally:
            server.stop()
    names = [n for n, _ in servers]
    print(f"DIMSE benchmark, dcmtk storescu/echoscu, TCP_NODELAY=1 ({os.cpu_count()} cores)")
    print(f"creating a file in {tempfile.gettempdir()}: {create_us:.0f} us (median; see --help)")
    print(f"{'case':40}" + "".join(f"{n:>28}" for n in names))
    for label, row in results.items():
        line = f"{label:40}"
        for n in names:
            a, b, failed = row[n]
            line += f"{a:>14.1f} inst/s {b:6.1f} MB/s" if b is not None else f"{a:>14.2f}" + " " * 18
            if failed:
                line += f" ({failed} failed)"
        print(line)


if __name__ == "__main__":
    try:
        main()
    finally:
        stow.remove_leftovers()
