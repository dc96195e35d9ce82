#!/usr/bin/env python3
"""pacs-lite against Orthanc on the same machine in one run: ingest (C-STORE, STOW-RS),
queries (QIDO-RS) and retrieval (WADO-RS), with the ratio of each figure to its target.

Usage: scripts/bench.sh [--quick] [--runs N] [--only NAME[,NAME]] [--associations 1,4,16]
                        [--orthanc-max-associations 4] [--no-orthanc] [--binary PATH]
                        [--pg URL] [--client curl|python] [--out FILE]
(scripts/bench.sh runs this file with target/pytest-venv/bin/python.) --quick: 200/400
64x64 files for C-STORE, 40 512x512, 200 + 40 instances for STOW-RS, 100 QIDO studies, a
20-instance CT512 study, 10 timed requests per read, one repetition: a smoke test, not
figures. The pacs-lite binary: --binary, else $PACS_BIN, else target/release/pacs-lite
(nothing is built). --pg URL (a PostgreSQL superuser URL) gives each pacs-lite server a
fresh database of its own there, dropped at exit (the password is masked in the JSON).

Workloads (--only takes these names; all by default):
  cstore64       C-STORE of 64x64 CT (1000 files; 2000 split evenly over the associations
                 when there are several) with dcmtk's storescu, one process per association,
                 all at once: instances/s, wall time from the first storescu start to the last
                 exit. One row per --associations count; Orthanc is measured up to
                 --orthanc-max-associations (4), above that pacs-lite alone (scaling).
  cstore512      C-STORE of 200 512x512 CT files over 1 association: MB/s of Part-10 files.
  stow64         STOW-RS of 1000 64x64 CT, 50 per request, one keep-alive connection:
                 instances/s (request bodies built before the clock starts).
  stow512        STOW-RS of 200 512x512 CT, 10 per request: MB/s of Part-10 instances.
  qido           QIDO-RS studies?PatientName=D* over 300 one-instance studies of 300 distinct
                 patients, a quarter of whose names start with D (surnames Doe, Dunn, Diaz
                 among twelve): median ms.
  wado-study     WADO-RS of a study of 100 x 512x512 CT (multipart/related;
                 type="application/dicom"; transfer-syntax=*), warm: MB/s at the median time
                 (also as a fraction of the loopback HTTP ceiling measured just before it:
                 a minimal server in this process sends a body of the same size with
                 sendfile(2) from the page cache to the same curl loop; no server can deliver
                 the study faster, so it bounds the ratio: Orthanc near it leaves little room).
  wado-small     WADO-RS of a study of 20 x 64x64 CT (same Accept): median ms.
  wado-instance  WADO-RS of one 512x512 CT instance (same Accept): median ms.
  wado-frame     WADO-RS frames/1 of that instance (multipart/related;
                 type=application/octet-stream; transfer-syntax=*): median ms.
  metadata       WADO-RS metadata of the 20-instance study (application/dicom+json): median ms.
  Always: peak RSS of pacs-lite (the largest VmHWM of every pacs-lite process of the run,
  read just before each is stopped), Orthanc's likewise for comparison.

Method. Each repetition (--runs, default 3; --quick: 1) alternates which server goes first
(even repetitions pacs-lite first, odd ones Orthanc first). Every ingest measurement starts
a server of its own on a fresh data directory (os.sync() first, so no dirty pages of the
case before are written back during it) and counts afterwards, by QIDO-RS
(NumberOfStudyRelatedInstances), what the server holds. For the read workloads each server
is started once per repetition, loaded by STOW-RS (untimed), and each request kind is sent
once untimed (the warm-up, with http.client, whose answer is also checked: part count, body
size, JSON length, number of QIDO matches) and then N times timed (50; --quick 10; the
100-instance study 10, --quick 3) by one curl process over one keep-alive connection, each
transfer timed by curl itself (time_total): the lowest client overhead available here, the
same for both servers whether they answer with Content-Length (Orthanc) or chunked
(pacs-lite), where Python's client costs ~0.2-0.3 ms more per request (--client python uses
http.client instead). The figure is the median. STOW-RS uses one keep-alive http.client
connection, request bodies built beforehand. The server's CPU time (user and system, from
/proc) over each ingest is in the JSON. The table gives the median over the repetitions of
each figure; the JSON file has every repetition. Ratios say how many times better pacs-lite
is: pacs-lite / Orthanc for throughput, Orthanc ms / pacs-lite ms for latency.

Orthanc (Debian `orthanc` + `orthanc-dicomweb`) runs with its defaults plus
"SyncStorageArea": true (every file fsynced before the answer, like pacs-lite's durable
writes), "StudiesMetadata"/"SeriesMetadata": "Full" (complete metadata, like pacs-lite's),
HTTP keep-alive and TCP_NODELAY. pacs-lite runs with its defaults (SQLite index + files, or
the PostgreSQL index with --pg) and log level warn; warnings and errors it logs are counted
and shown. dcmtk and Orthanc's DICOM layer read TCP_NODELAY=1 from the environment.

Machine figures, measured at the start of each repetition in the filesystem the servers'
data directories are on (TMPDIR): the durable write rate (dd bs=512K oflag=dsync), SHA-256
throughput of Python's hashlib (OpenSSL) over a 64 MB buffer, the cost of creating a file
(see scripts/bench_dimse.py: on this machine's ext4 it grows after mass deletions, so
nothing is deleted until the end of the run; `mkdir /bench && TMPDIR=/bench scripts/bench.sh`
for figures that measure the servers rather than that). Each ingest MB/s is also given as a
fraction of the durable write rate and of SHA-256 throughput.

Output: the table on stdout (progress on stderr) and JSON in $CARGO_TARGET_DIR/bench/bench.json
(default target/bench/bench.json) with the options, machine (date, nproc, CPU model, kernel),
machine figures, every repetition's raw figures, medians, ratios and targets. Temporary data
directories and server processes are removed at exit, also on Ctrl-C or errors. A benchmark:
it asserts nothing; a workload that fails is reported as such and the run goes on.
"""

import argparse
import datetime
import hashlib
import http.client
import json
import os
import platform
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

# dcmtk (storescu, and Orthanc's DICOM layer) reads TCP_NODELAY from the environment;
# without it Nagle's algorithm adds ~40 ms per small message.
os.environ["TCP_NODELAY"] = "1"

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import bench_dimse  # noqa: E402  (storescu, folders of files, CPU time, file creation probe)
import bench_read  # noqa: E402  (Orthanc, STOW loading, free ports)
import bench_stow as stow  # noqa: E402  (instance factory, multipart, pacs-lite server)

ORTHANC_PLUGIN = bench_read.ORTHANC_PLUGIN
DICOM_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
FRAME_ACCEPT = "multipart/related; type=application/octet-stream; transfer-syntax=*"
JSON_ACCEPT = "application/dicom+json"
STOW_TYPE = f'multipart/related; type="application/dicom"; boundary={stow.BOUNDARY}'

INGEST = ["cstore64", "cstore512", "stow64", "stow512"]
READS = ["qido", "wado-study", "wado-small", "wado-instance", "wado-frame", "metadata"]
WORKLOADS = INGEST + READS

LIVE = []       # servers started and not yet stopped
CHILDREN = []   # client processes (storescu) that may still run
RSS = []        # (server name, workload, VmHWM MB) of every stopped server process
LOGS = []       # (server name, workload, count, sample lines) of warnings/errors logged


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- servers

def vm_hwm_mb(pid):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def stop_server(server, wait, read_log, is_bad):
    """Stop a server of the run: record its peak RSS while it still lives, terminate it
    (kill after `wait` seconds), and keep the first of its log lines that `is_bad`."""
    if server in LIVE:
        LIVE.remove(server)
    if server.proc is None:
        return
    if server.proc.poll() is None:
        rss = vm_hwm_mb(server.proc.pid)
        if rss is not None:
            RSS.append((server.name, server.workload, rss))
    server.proc.terminate()
    try:
        server.proc.wait(wait)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()
    try:
        bad = [ln for ln in read_log().splitlines() if is_bad(ln)]
    except OSError:
        bad = []
    if bad:
        LOGS.append((server.name, server.workload, len(bad), bad[:3]))


class PacsLite(stow.Server):
    """pacs-lite on a fresh data directory; HTTP and DICOM ports from its first two lines."""
    name = "pacs-lite"
    root = "/dicom-web"

    def __init__(self, workload, binary, pg_url=None):
        super().__init__(pg_url=pg_url, binary=binary)
        stow.LEFTOVERS.append(self.dir)
        self.workload = workload
        self.proc = None

    def start(self):
        self.stderr_path = self.dir / "stderr.txt"
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen([str(self.binary), "serve"], env=self.env, stdout=subprocess.PIPE,
                                         stderr=err)
        LIVE.append(self)
        # Its first two lines name the ports; read from the descriptor with a deadline, so
        # that a server that hangs before printing them fails the workload instead.
        fd, out, deadline = self.proc.stdout.fileno(), b"", time.time() + 60
        while out.count(b"\n") < 2 and time.time() < deadline:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.time()))
            chunk = os.read(fd, 4096) if ready else b""
            if not chunk:
                break
            out += chunk
        text = out.decode(errors="replace")
        http_m = re.search(r"http://([\d.]+):(\d+)", text)
        dimse_m = re.search(r"DIMSE listening on [\d.]+:(\d+) as (\S+)", text)
        if not (http_m and dimse_m):
            raise RuntimeError(f"pacs-lite did not start: {text!r} {self.stderr_path.read_text()[-2000:]}")
        self.host, self.port = http_m.group(1), int(http_m.group(2))
        self.dicom_port, self.aet = int(dimse_m.group(1)), dimse_m.group(2)
        # Anything more it writes to stdout is read, so that it never blocks on a full pipe.
        threading.Thread(target=lambda out=self.proc.stdout: [None for _ in out], daemon=True).start()
        return self

    def stop(self):
        stop_server(self, 20, lambda: self.stderr_path.read_text(errors="replace"),
                    lambda ln: re.search(r"\b(WARN|ERROR)\b", ln))


class Orthanc(bench_read.Orthanc):
    """bench_read's Orthanc configuration plus "SyncStorageArea": true (a durable peer),
    explicit HTTP keep-alive and TCP_NODELAY. (bench_read.Orthanc.__init__ writes its
    configuration and starts the process in one step, hence the configuration here.)"""
    name = "Orthanc"
    aet = "ORTHANC"
    root = "/dicom-web"

    def __init__(self, workload):
        self.workload = workload
        self.proc = None
        self.dir = Path(tempfile.mkdtemp(prefix="orthanc-bench-"))
        stow.LEFTOVERS.append(self.dir)
        self.port = bench_read.free_port()
        self.dicom_port = bench_read.free_port()
        self.host = "127.0.0.1"
        cfg = {
            "Name": "bench", "StorageDirectory": str(self.dir / "db"), "IndexDirectory": str(self.dir / "db"),
            "HttpPort": self.port, "DicomPort": self.dicom_port, "DicomAet": self.aet, "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "DicomAlwaysAllowFind": True, "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True, "Plugins": [ORTHANC_PLUGIN], "HttpServerEnabled": True,
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "StudiesMetadata": "Full",
                         "SeriesMetadata": "Full"},
            "SyncStorageArea": True, "StorageCompression": False, "KeepAlive": True, "TcpNoDelay": True,
        }
        (self.dir / "config.json").write_text(json.dumps(cfg, indent=1))

    def start(self):
        with open(self.dir / "log.txt", "wb") as err:
            self.proc = subprocess.Popen(["Orthanc", str(self.dir / "config.json")], stdout=subprocess.DEVNULL,
                                         stderr=err)
        LIVE.append(self)
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                c = http.client.HTTPConnection(self.host, self.port, timeout=2)
                c.request("GET", "/system")
                ok = c.getresponse().status == 200
                c.close()
                if ok:
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError("Orthanc did not start: " + (self.dir / "log.txt").read_text(errors="replace")[-2000:])

    def stop(self):
        # Orthanc's log lines start with their level (E1207 …); its warnings (W) include
        # routine start-up messages, so only errors count.
        stop_server(self, 30, lambda: (self.dir / "log.txt").read_text(errors="replace"),
                    lambda ln: re.match(r"E\d{4} ", ln))


def cleanup():
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not leave servers behind
    for p in CHILDREN:
        if p.poll() is None:
            p.kill()
            p.wait()
    for s in list(LIVE):
        try:
            s.stop()
        except Exception:  # noqa: BLE001 - clean up the rest regardless
            if s.proc is not None and s.proc.poll() is None:
                s.proc.kill()
    stow.remove_leftovers()


# ---------------------------------------------------------------- data

def uid_of(raw, prefix):
    m = re.search(rb"(" + re.escape((stow.UID_PREFIX + prefix).encode()) + rb"\d{12})", raw)
    return m.group(1).decode()


def study_instances(size, count, run):
    """`count` instances of one study and one series."""
    f = stow.Factory(size, run, per_series=count, per_study=count)
    f.n = count - 1  # n = count .. 2*count-1: n // count == 1 for all
    return [f.next() for _ in range(count)]


SURNAMES = ["Doe", "Smith", "Brown", "Dunn", "Jones", "Miller", "Diaz", "Wilson", "Moore", "Taylor", "Clark", "Lewis"]


def qido_studies(count, run):
    """`count` one-instance studies of distinct patients (PatientID P00001…); a quarter of the
    names start with D. Names are patched into the template's 10-byte "Bench^Mark" and IDs
    into its 6-byte "BENCH ", so no length changes."""
    f = stow.Factory(64, run, per_series=1, per_study=1)
    out, matches = [], 0
    for i in range(count):
        surname = SURNAMES[i % len(SURNAMES)]
        given, k = "", i
        while len(surname) + 1 + len(given) < 10:
            given = chr(ord("A") + k % 26) + given
            k //= 26
        name = f"{surname}^{given}".encode()
        if len(name) != 10:
            raise ValueError(name)
        raw = f.next().replace(b"Bench^Mark", name, 1).replace(b"BENCH ", f"P{i + 1:05d}".encode(), 1)
        out.append(raw)
        matches += surname.startswith("D")
    return out, matches


class Inputs:
    """Workload inputs, built once on first use and reused by every repetition (each ingest
    measurement is on a fresh server, so the same UIDs do not collide)."""

    def __init__(self, counts):
        self.c = counts
        self.cache = {}

    def get(self, key, build):
        if key not in self.cache:
            t0 = time.perf_counter()
            self.cache[key] = build()
            log(f"  (built inputs {key} in {time.perf_counter() - t0:.1f} s)")
        return self.cache[key]

    def folders(self, size, count, parts):
        return self.get(("folders", size, count, parts),
                        lambda: bench_dimse.make_folders(size, count // parts * parts, parts, 100 + size // 64 + parts))

    def stow_bodies(self, size, count, per_request):
        def build():
            f = stow.Factory(size, 200 + size // 64)
            bodies, total = [], 0
            for _ in range(count // per_request):
                parts = [f.next() for _ in range(per_request)]
                total += sum(len(p) for p in parts)
                bodies.append(stow.multipart(parts))
            return bodies, total
        return self.get(("stow", size, count, per_request), build)

    def read_data(self):
        def build():
            qido, matches = qido_studies(self.c["qido_studies"], 301)
            big = study_instances(512, self.c["study512"], 302)
            small = study_instances(64, 20, 303)
            uids = {"qido_matches": matches, "qido_studies": len(qido),
                    "big_study": uid_of(big[0], "2"), "big_series": uid_of(big[0], "3"), "big_sop": uid_of(big[0], "1"),
                    "big_count": len(big), "big_bytes": sum(map(len, big)),
                    "small_study": uid_of(small[0], "2"), "small_count": len(small)}
            return [qido, big, small], uids
        return self.get(("reads",), build)


# ---------------------------------------------------------------- measurements

def count_instances(server):
    """Instances the server holds, by QIDO-RS (NumberOfStudyRelatedInstances); None if unknown."""
    try:
        conn = http.client.HTTPConnection(server.host, server.port, timeout=120)
        conn.request("GET", f"{server.root}/studies?includefield=00201208&limit=10000", headers={"Accept": JSON_ACCEPT})
        r = conn.getresponse()
        body = r.read()
        conn.close()
        if r.status == 204 or not body:
            return 0
        return sum(int(s["00201208"]["Value"][0]) for s in json.loads(body))
    except Exception:  # noqa: BLE001 - a figure for the record, not a measurement
        return None


def cpu_seconds(server):
    """(user, system) CPU seconds of the server process so far (all its threads)."""
    try:
        fields = Path(f"/proc/{server.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        tck = os.sysconf("SC_CLK_TCK")
        return int(fields[11]) / tck, int(fields[12]) / tck
    except (OSError, IndexError, ValueError):
        return float("nan"), float("nan")


def cpu_fields(cpu0, cpu1, n):
    user, system = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
    return {"server_cpu_s": user + system, "server_user_s": user, "server_sys_s": system,
            "server_cpu_ms_per_inst": (user + system) / n * 1000}


def storescu(server, folders):
    """One storescu per folder, all at once; wall time and failures."""
    tool = bench_dimse.dcmtk("storescu")
    errs = [tempfile.TemporaryFile() for _ in folders]
    t0 = time.perf_counter()
    procs = [subprocess.Popen([tool, "-aec", server.aet, "+sd", "127.0.0.1", str(server.dicom_port), str(d)],
                              stdout=subprocess.DEVNULL, stderr=e) for d, e in zip(folders, errs)]
    CHILDREN.extend(procs)
    for p in procs:
        p.wait()
    elapsed = time.perf_counter() - t0
    failed, sample = 0, ""
    for p, e in zip(procs, errs):
        e.seek(0)
        text = e.read().decode(errors="replace")
        e.close()
        if p.returncode != 0 or "E:" in text:
            failed += 1
            sample = sample or text[-500:]
        CHILDREN.remove(p)
    return elapsed, failed, sample


def ingest_cstore(make, folders, total_bytes, n):
    os.sync()
    server = make().start()
    try:
        cpu0 = cpu_seconds(server)
        elapsed, failed, sample = storescu(server, folders)
        cpu1 = cpu_seconds(server)
        stored = count_instances(server)
    finally:
        server.stop()
    r = {"n": n, "bytes": total_bytes, "secs": elapsed, "inst_s": n / elapsed, "mb_s": total_bytes / elapsed / 1e6,
         "associations": len(folders), "failed_associations": failed, "stored": stored,
         **cpu_fields(cpu0, cpu1, n)}
    if sample:
        r["storescu_error"] = sample
    return r


def ingest_stow(make, bodies, total_bytes, n):
    os.sync()
    server = make().start()
    try:
        conn = http.client.HTTPConnection(server.host, server.port, timeout=600)
        answers, latencies = [], []
        cpu0 = cpu_seconds(server)
        t0 = time.perf_counter()
        for body in bodies:
            t1 = time.perf_counter()
            conn.request("POST", f"{server.root}/studies", body, {"Content-Type": STOW_TYPE, "Accept": JSON_ACCEPT})
            resp = conn.getresponse()
            answers.append((resp.status, resp.read()))
            latencies.append(time.perf_counter() - t1)
        elapsed = time.perf_counter() - t0
        cpu1 = cpu_seconds(server)
        conn.close()
        stored = count_instances(server)
    finally:
        server.stop()
    bad_status = [s for s, _ in answers if s != 200]
    failed_sops = 0
    for _, body in answers:
        try:
            failed_sops += len(json.loads(body).get("00081198", {}).get("Value", []))
        except (ValueError, AttributeError):
            pass
    return {"n": n, "bytes": total_bytes, "secs": elapsed, "inst_s": n / elapsed, "mb_s": total_bytes / elapsed / 1e6,
            "requests": len(bodies), "non_200": len(bad_status), "statuses": sorted(set(s for s, _ in answers)),
            "failed_sops": failed_sops, "stored": stored, "request_p50_ms": statistics.median(latencies) * 1000,
            "request_max_ms": max(latencies) * 1000, **cpu_fields(cpu0, cpu1, n)}


def multipart_parts(headers, body):
    m = re.search(r'boundary="?([^";]+)"?', headers.get("Content-Type", ""))
    if not m:
        return None
    return body.count(b"--" + m.group(1).encode()) - 1


def get(conn, path, accept):
    conn.request("GET", path, headers={"Accept": accept})
    r = conn.getresponse()
    return r.status, r.headers, r.read()


def timed_get(server, path, accept, n, check):
    """One untimed request (its answer checked by `check(headers, body)`, which returns a
    dict of findings), then n timed ones over the same keep-alive connection."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=300)
    status, headers, body = get(conn, path, accept)
    if status != 200:
        raise RuntimeError(f"GET {path}: HTTP {status} {body[:200]!r}")
    found = check(headers, body)
    times, errors = [], 0
    for _ in range(n):
        t0 = time.perf_counter()
        conn.request("GET", path, headers={"Accept": accept})
        r = conn.getresponse()
        r.read()
        times.append(time.perf_counter() - t0)
        errors += r.status != 200
    conn.close()
    return summarize(times, len(body), errors, found)


def timed_curl(server, path, accept, n, check):
    """As timed_get (warm-up and check with http.client), then one curl process making n
    requests on one keep-alive connection; curl's own time of each transfer."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=600)
    status, headers, body = get(conn, path, accept)
    conn.close()
    if status != 200:
        raise RuntimeError(f"GET {path}: HTTP {status} {body[:200]!r}")
    found = check(headers, body)
    size = len(body)
    del body
    url = f"http://{server.host}:{server.port}{path}"
    args = ["curl", "-s", "-g", "-m", "300", "-H", f"Accept: {accept}",
            "-w", "%{http_code} %{size_download} %{time_total}\\n"]
    for _ in range(n):
        args += [url, "-o", "/dev/null"]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout.split("\n")
    times, errors = [], 0
    for line in filter(None, out):
        code, got, secs = line.split()
        times.append(float(secs))
        errors += code != "200" or int(got) != size
    return summarize(times, size, errors, found)


def summarize(times, size, errors, found):
    times = sorted(times)
    med = statistics.median(times)
    return {"median_ms": med * 1000, "p90_ms": times[int(len(times) * 0.9)] * 1000 if len(times) > 1 else med * 1000,
            "min_ms": times[0] * 1000, "n": len(times), "bytes": size, "mb_s": size / med / 1e6,
            "errors": errors, "times_ms": [round(t * 1000, 3) for t in times], **found}


def expect_parts(expected, min_bytes=0):
    def check(headers, body):
        parts = multipart_parts(headers, body)
        ok = parts == expected and len(body) >= min_bytes
        return {"parts": parts, "expected_parts": expected, "content_type": headers.get("Content-Type"),
                "chunked": headers.get("Transfer-Encoding") == "chunked", "check_ok": ok}
    return check


def expect_json(expected):
    def check(headers, body):
        got = len(json.loads(body)) if body else 0
        return {"results": got, "expected_results": expected, "check_ok": got == expected}
    return check


def measure_reads(server, uids, selected, c):
    """The read workloads on a loaded server: {workload: result or {"error": …}}."""
    out = {}
    r = server.root
    big = f"{r}/studies/{uids['big_study']}/series/{uids['big_series']}/instances/{uids['big_sop']}"
    nl = c["latency_n"]
    timed = timed_curl if c["client"] == "curl" else timed_get
    plan = {
        "qido": lambda: timed(server, f"{r}/studies?PatientName=D*", JSON_ACCEPT, nl,
                              expect_json(uids["qido_matches"])),
        "wado-study": lambda: with_ceiling(timed(server, f"{r}/studies/{uids['big_study']}", DICOM_ACCEPT,
                                                 c["study_n"], expect_parts(uids["big_count"], uids["big_bytes"])),
                                           c["study_n"], c["client"] == "curl"),
        "wado-small": lambda: timed(server, f"{r}/studies/{uids['small_study']}", DICOM_ACCEPT, nl,
                                    expect_parts(uids["small_count"])),
        "wado-instance": lambda: timed(server, big, DICOM_ACCEPT, nl, expect_parts(1, 512 * 512 * 2)),
        "wado-frame": lambda: timed(server, f"{big}/frames/1", FRAME_ACCEPT, nl, expect_parts(1, 512 * 512 * 2)),
        "metadata": lambda: timed(server, f"{r}/studies/{uids['small_study']}/metadata", JSON_ACCEPT, nl,
                                  expect_json(uids["small_count"])),
    }
    for w in READS:
        if w in selected:
            out[w] = attempt(plan[w])
    return out


def with_ceiling(result, n, curl):
    """The loopback HTTP ceiling for a body of the study's size, measured right after it
    (with curl as the client, as the study was)."""
    if curl:
        loop = loopback_http_mb_s(result["bytes"], n)
        if loop:
            result.update(loopback_mb_s=loop, of_loopback=result["mb_s"] / loop)
    return result


def attempt(fn):
    try:
        return fn()
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:  # noqa: BLE001 - a failed workload is reported, the run goes on
        return {"error": f"{type(e).__name__}: {e}"[:1000]}


# ---------------------------------------------------------------- machine

def dd_dsync_mb_s(mb):
    d = Path(tempfile.mkdtemp(prefix="bench-dd-"))
    stow.LEFTOVERS.append(d)
    r = subprocess.run(["dd", "if=/dev/zero", f"of={d / 'dd.bin'}", "bs=512K", f"count={mb * 2}", "oflag=dsync"],
                       capture_output=True, text=True, env=dict(os.environ, LC_ALL="C"))
    (d / "dd.bin").unlink(missing_ok=True)
    m = re.search(r"(\d+) bytes .* copied, ([\d.e+-]+) s", r.stderr)
    return int(m.group(1)) / float(m.group(2)) / 1e6 if m else None


def sha256_mb_s(mb):
    buf = os.urandom(mb << 20)
    best = None
    for _ in range(3):
        t0 = time.perf_counter()
        hashlib.sha256(buf).digest()
        dt = time.perf_counter() - t0
        best = dt if best is None else min(best, dt)
    return len(buf) / best / 1e6


def loopback_http_mb_s(size, n):
    """About the most an HTTP response of `size` bytes can be received at with curl here: a
    minimal keep-alive server in this process answers each request by sendfile(2) from the
    page cache; curl times n transfers as in the wado-study workload; MB/s at the median."""
    import socket
    d = Path(tempfile.mkdtemp(prefix="bench-loop-"))
    stow.LEFTOVERS.append(d)
    path = d / "body"
    path.write_bytes(os.urandom(size))
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    port = srv.getsockname()[1]

    def serve():
        try:
            conn, _ = srv.accept()
            with conn, open(path, "rb") as body:
                buf = b""
                while True:
                    while b"\r\n\r\n" not in buf:
                        chunk = conn.recv(65536)
                        if not chunk:
                            return
                        buf += chunk
                    buf = buf.split(b"\r\n\r\n", 1)[1]
                    conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n".encode())
                    conn.sendfile(body, 0, size)
        except OSError:
            pass

    threading.Thread(target=serve, daemon=True).start()
    try:
        args = ["curl", "-s", "-m", "300", "-w", "%{time_total}\\n"]
        for _ in range(n):
            args += [f"http://127.0.0.1:{port}/", "-o", "/dev/null"]
        out = subprocess.run(args, capture_output=True, text=True, timeout=120).stdout.split()
        return size / statistics.median(float(t) for t in out) / 1e6
    except (OSError, subprocess.SubprocessError, ValueError, statistics.StatisticsError):
        return None
    finally:
        srv.close()
        path.unlink(missing_ok=True)


def machine_figures(quick):
    return {"dd_dsync_mb_s": dd_dsync_mb_s(20 if quick else 100), "sha256_mb_s": sha256_mb_s(16 if quick else 64),
            "file_create_us": bench_dimse.file_create_us(200)}


def machine_info(binary):
    def run(*cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    tmp = tempfile.gettempdir()
    info = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "nproc": run("nproc"), "cpu_count": os.cpu_count(), "cpu_model": cpu, "kernel": platform.release(),
            "tmpdir": tmp,
            "tmpdir_fs": (run("findmnt", "-n", "-o", "SOURCE,FSTYPE,OPTIONS", "-T", tmp) or "").split("\n")[0],
            "python": platform.python_version(), "binary": str(binary),
            "git_head": run("git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"),
            "git_dirty": bool(run("git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no")),
            "loadavg_start": os.getloadavg()}
    try:
        st = Path(binary).stat()
        info["binary_mtime"] = datetime.datetime.fromtimestamp(st.st_mtime).isoformat(timespec="seconds")
    except OSError:
        pass
    if shutil.which("Orthanc"):
        info["orthanc_version"] = (run("Orthanc", "--version") or "").splitlines()[0:1]
    return info


# ---------------------------------------------------------------- table

def rows(assocs):
    """(key, label, unit field, higher is better, target ratio)."""
    out = []
    targets = {1: 1.5, 4: 2.0}
    for k in assocs:
        out.append((f"cstore64-a{k}", f"C-STORE 64x64 CT, {k} assoc. (inst/s)", "inst_s", True, targets.get(k)))
    out += [("cstore512", "C-STORE 512x512 CT, 1 assoc. (MB/s)", "mb_s", True, 2.0),
            ("stow64", "STOW-RS 64x64, 50/request (inst/s)", "inst_s", True, 4.0),
            ("stow512", "STOW-RS 512x512, 10/request (MB/s)", "mb_s", True, 2.5),
            ("qido", "QIDO-RS PatientName=D* (ms)", "median_ms", False, 10.0),
            ("wado-study", "WADO-RS study 100 x CT512 (MB/s)", "mb_s", True, 3.0),
            ("wado-small", "WADO-RS study 20 x 64x64 (ms)", "median_ms", False, 2.0),
            ("wado-instance", "WADO-RS instance CT512 (ms)", "median_ms", False, 3.0),
            ("wado-frame", "WADO-RS frame CT512 (ms)", "median_ms", False, 3.0),
            ("metadata", "WADO-RS metadata, 20 inst. (ms)", "median_ms", False, 10.0)]
    return out


def fmt(v, field):
    if v is None:
        return "-"
    if field == "inst_s":
        return f"{v:.0f}"
    if field == "median_ms" and v < 10:
        return f"{v:.2f}"
    return f"{v:.1f}"


def median_of(reps, field):
    vals = [r[field] for r in reps if "error" not in r and r.get(field) is not None]
    return statistics.median(vals) if vals else None


# ---------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small counts, 1 run (smoke test)")
    ap.add_argument("--runs", type=int, help="repetitions (default 3; --quick: 1)")
    ap.add_argument("--only", help="comma-separated workloads: " + ",".join(WORKLOADS))
    ap.add_argument("--associations", default="1,4,16", help="C-STORE 64x64 association counts (default 1,4,16)")
    ap.add_argument("--orthanc-max-associations", type=int, default=4,
                    help="Orthanc is measured up to this many associations (default 4)")
    ap.add_argument("--no-orthanc", action="store_true", help="pacs-lite only (ratios blank)")
    ap.add_argument("--binary", help="pacs-lite binary (default $PACS_BIN or target/release/pacs-lite)")
    ap.add_argument("--pg", metavar="URL", help="PostgreSQL superuser URL: pacs-lite with a PostgreSQL index "
                                                "(a database per server, dropped at exit)")
    ap.add_argument("--client", choices=["curl", "python"], default="curl" if shutil.which("curl") else "python",
                    help="HTTP client of the timed read requests (default curl when installed)")
    ap.add_argument("--out", help="JSON file (default $CARGO_TARGET_DIR/bench/bench.json or target/bench/bench.json)")
    args = ap.parse_args()

    selected = WORKLOADS if not args.only else [w.strip() for w in args.only.split(",") if w.strip()]
    unknown = [w for w in selected if w not in WORKLOADS]
    if unknown:
        ap.error(f"unknown workload(s) {', '.join(unknown)}; choose from {', '.join(WORKLOADS)}")
    try:
        assocs = [int(a) for a in args.associations.split(",") if a.strip()]
    except ValueError:
        ap.error("--associations takes comma-separated integers")
    if any(a < 1 for a in assocs):
        ap.error("--associations: counts must be at least 1")
    runs = args.runs or (1 if args.quick else 3)
    binary = Path(args.binary or os.environ.get("PACS_BIN") or ROOT / "target" / "release" / "pacs-lite")
    if not os.access(binary, os.X_OK):
        sys.exit(f"bench: no pacs-lite binary at {binary} (--binary PATH or PACS_BIN)")
    out_path = Path(args.out) if args.out else \
        Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target") / "bench" / "bench.json"
    q = args.quick
    c = {"cstore64_1": 200 if q else 1000, "cstore64_multi": 400 if q else 2000, "cstore512": 40 if q else 200,
         "stow64": 200 if q else 1000, "stow512": 40 if q else 200, "qido_studies": 100 if q else 300,
         "study512": 20 if q else 100, "latency_n": 10 if q else 50, "study_n": 3 if q else 10, "client": args.client}

    servers = [("pacs-lite", lambda w: PacsLite(w, binary, args.pg))]
    if args.no_orthanc:
        print("Orthanc: not measured (--no-orthanc); pacs-lite only")
    elif not shutil.which("Orthanc") or not Path(ORTHANC_PLUGIN).exists():
        print(f"Orthanc: not found (Orthanc binary or {ORTHANC_PLUGIN} missing); pacs-lite only")
    else:
        servers.append(("Orthanc", Orthanc))
    names = [n for n, _ in servers]

    info = machine_info(binary)
    opts = vars(args) | {"pg": re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", args.pg) if args.pg else None}
    report = {"options": {**opts, "runs": runs, "selected": selected, "associations": assocs, "counts": c},
              "machine": info, "machine_runs": [], "raw": {}, "complete": False}
    inputs = Inputs(c)

    def record(key, name, rep, first, result):
        result = {"rep": rep, "first": first, **result}
        report["raw"].setdefault(key, {}).setdefault(name, []).append(result)
        if "error" in result:
            log(f"  {key} {name}: ERROR {result['error']}")
        else:
            bits = [f"{result[f]:.1f} {f}" for f in ("inst_s", "mb_s", "median_ms") if f in result]
            log(f"  {key} {name}: " + ", ".join(bits))

    try:
        for rep in range(runs):
            order = servers if rep % 2 == 0 else servers[::-1]
            log(f"[repetition {rep + 1}/{runs}: {' then '.join(n for n, _ in order)}]")
            mf = machine_figures(q)
            report["machine_runs"].append(mf)
            log(f"  machine: dd dsync {mf['dd_dsync_mb_s'] or float('nan'):.1f} MB/s, SHA-256 "
                f"{mf['sha256_mb_s']:.0f} MB/s, file creation {mf['file_create_us']:.0f} us")
            cases = []
            if "cstore64" in selected:
                for k in assocs:
                    total = c["cstore64_1"] if k == 1 else c["cstore64_multi"]
                    cases.append((f"cstore64-a{k}", "cstore", (64, total, k)))
            if "cstore512" in selected:
                cases.append(("cstore512", "cstore", (512, c["cstore512"], 1)))
            if "stow64" in selected:
                cases.append(("stow64", "stow", (64, c["stow64"], 50)))
            if "stow512" in selected:
                cases.append(("stow512", "stow", (512, c["stow512"], 10)))
            for key, kind, (size, total, k) in cases:
                if kind == "cstore":
                    folders, nbytes = inputs.folders(size, total, k)
                    n = total // k * k
                else:
                    bodies, nbytes = inputs.stow_bodies(size, total, k)
                    n = total // k * k
                for i, (name, make) in enumerate(order):
                    if kind == "cstore" and name == "Orthanc" and k > args.orthanc_max_associations:
                        continue
                    if kind == "cstore":
                        res = attempt(lambda: ingest_cstore(lambda: make(key), folders, nbytes, n))
                    else:
                        res = attempt(lambda: ingest_stow(lambda: make(key), bodies, nbytes, n))
                    record(key, name, rep, i == 0, res)
            reads = [w for w in READS if w in selected]
            if reads:
                groups, uids = inputs.read_data()
                for i, (name, make) in enumerate(order):
                    os.sync()
                    server = None
                    try:
                        server = make("reads").start()
                        t0 = time.perf_counter()
                        bench_read.load(server, groups)
                        log(f"  {name}: loaded {sum(map(len, groups))} instances in {time.perf_counter() - t0:.1f} s")
                        res = measure_reads(server, uids, reads, c)
                    except (KeyboardInterrupt, SystemExit):
                        raise
                    except Exception as e:  # noqa: BLE001
                        res = {w: {"error": f"start/load: {type(e).__name__}: {e}"[:1000]} for w in reads}
                    finally:
                        if server is not None:
                            server.stop()
                    for w in reads:
                        record(w, name, rep, i == 0, res[w])
        report["complete"] = True
    finally:
        report["interrupted"] = not report["complete"]
        summarize_report(report, names, assocs, selected)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(report, indent=1, default=str))
        print_table(report, names, assocs, selected, out_path)


def summarize_report(report, names, assocs, selected):
    medians, ratios, met = {}, {}, {}
    for key, label, field, higher, target in rows(assocs):
        if key not in report["raw"]:
            continue
        for name in names:
            reps = report["raw"][key].get(name, [])
            medians.setdefault(key, {})[name] = median_of(reps, field)
        o, p = medians[key].get("Orthanc"), medians[key].get("pacs-lite")
        if o and p:
            ratios[key] = p / o if higher else o / p
            if target:
                met[key] = ratios[key] >= target
    pacs_rss = [r for n, w, r in RSS if n == "pacs-lite"]
    orth_rss = [r for n, w, r in RSS if n == "Orthanc"]
    if pacs_rss:
        medians["rss"] = {"pacs-lite": max(pacs_rss), "Orthanc": max(orth_rss) if orth_rss else None}
        if orth_rss:
            ratios["rss"] = max(orth_rss) / max(pacs_rss)
        met["rss"] = max(pacs_rss) < 300
    mr = report["machine_runs"]
    machine = {}
    for f in ("dd_dsync_mb_s", "sha256_mb_s", "file_create_us"):
        vals = [m[f] for m in mr if m.get(f) is not None]
        machine[f] = statistics.median(vals) if vals else None
    fractions = {}
    for key, _, _, _, _ in rows(assocs):
        if key.startswith(("cstore", "stow")) and key in report["raw"]:
            for name in names:
                mb = median_of(report["raw"][key].get(name, []), "mb_s")
                if mb is not None:
                    fractions.setdefault(key, {})[name] = {
                        "mb_s": mb,
                        "of_dd": mb / machine["dd_dsync_mb_s"] if machine["dd_dsync_mb_s"] else None,
                        "of_sha256": mb / machine["sha256_mb_s"] if machine["sha256_mb_s"] else None}
    study = report["raw"].get("wado-study", {})
    loops = [r["loopback_mb_s"] for reps in study.values() for r in reps if r.get("loopback_mb_s")]
    if loops:
        loop = statistics.median(loops)
        o = medians["wado-study"].get("Orthanc")
        report["loopback"] = {"mb_s": loop, "max_ratio": loop / o if o else None,
                              "fraction": {n: median_of(study.get(n, []), "of_loopback") for n in names}}
    report.update(medians=medians, ratios=ratios, met=met, machine_medians=machine, ingest_fractions=fractions,
                  targets={k: t for k, _, _, _, t in rows(assocs) if t} | {"rss": "< 300 MB"},
                  rss_processes=[{"server": n, "workload": w, "vmhwm_mb": r} for n, w, r in RSS],
                  server_log_warnings=[{"server": n, "workload": w, "lines": k, "sample": s} for n, w, k, s in LOGS])


def print_table(report, names, assocs, selected, out_path):
    med, ratios, met = report["medians"], report["ratios"], report["met"]
    info = report["machine"]
    runs = report["options"]["runs"]
    print()
    title = "pacs-lite vs Orthanc" if "Orthanc" in names else "pacs-lite (Orthanc not measured)"
    print(f"{title}, {info['date']}, {info['nproc']} cores ({info['cpu_model']}), "
          f"median of {runs} run(s){'' if report['complete'] else ' — INTERRUPTED, partial'}")
    head = f"{'workload':40} {'Orthanc':>10} {'pacs-lite':>10} {'ratio':>8} {'target':>8} {'met?':>5}"
    print(head)
    print("-" * len(head))
    for key, label, field, higher, target in rows(assocs):
        if key not in med:
            continue
        o, p = med[key].get("Orthanc"), med[key].get("pacs-lite")
        def cell(name, v):
            if name not in names:
                return ""
            if v is not None:
                return fmt(v, field)
            return "error" if report["raw"][key].get(name) else "n/m"  # failed, or not measured
        os_, ps = cell("Orthanc", o), cell("pacs-lite", p)
        r = ratios.get(key)
        m = met.get(key)
        print(f"{label:40} {os_:>10} {ps:>10} {(f'{r:.2f}x' if r else ''):>8} "
              f"{(f'>={target:g}x' if target else ''):>8} {('' if m is None else 'yes' if m else 'NO'):>5}")
    if "rss" in med:
        o, p = med["rss"].get("Orthanc"), med["rss"].get("pacs-lite")
        r = ratios.get("rss")
        o_cell = fmt(o, "mb") if "Orthanc" in names else ""
        print(f"{'peak RSS, largest VmHWM (MB)':40} {o_cell:>10} {fmt(p, 'mb'):>10} "
              f"{(f'{r:.2f}x' if r else ''):>8} {'<300 MB':>8} {'yes' if met['rss'] else 'NO':>5}")
    mm = report["machine_medians"]
    if mm.get("sha256_mb_s"):
        dd = mm["dd_dsync_mb_s"]
        print(f"\nmachine ({info['tmpdir']}: {info.get('tmpdir_fs') or '?'}):")
        print(f"  durable write (dd bs=512K oflag=dsync) {dd or float('nan'):.1f} MB/s, "
              f"SHA-256 {mm['sha256_mb_s']:.0f} MB/s, file creation {mm['file_create_us']:.0f} us")
        loop = report.get("loopback", {})
        if loop.get("mb_s"):
            cells = [f"{n} {loop['fraction'][n]:.2f}" for n in names if loop["fraction"].get(n)]
            best = f"; the highest ratio possible here is {loop['max_ratio']:.2f}x" if loop.get("max_ratio") else ""
            print(f"  loopback HTTP ceiling for the WADO-RS study (curl + sendfile) {loop['mb_s']:.0f} MB/s; "
                  f"the study as a fraction of it: " + ", ".join(cells) + best)
    if report["ingest_fractions"]:
        print("ingest MB/s (Part-10 bytes), as % of the durable write rate and % of SHA-256 throughput:")
        for key, per in report["ingest_fractions"].items():
            cells = []
            for n in names:
                if n in per:
                    f = per[n]
                    cells.append(f"{n} {f['mb_s']:.1f} MB/s ({100 * (f['of_dd'] or 0):.1f}% dd, "
                                 f"{100 * (f['of_sha256'] or 0):.1f}% SHA)")
            print(f"  {key:14} " + "   ".join(cells))
    notes = []
    for key, per in report["raw"].items():
        for n, reps in per.items():
            for r in reps:
                if "error" in r:
                    notes.append(f"{key} {n} run {r['rep'] + 1}: {r['error'][:300]}")
                    continue
                if r.get("check_ok") is False:
                    notes.append(f"{key} {n}: answer check failed "
                                 f"({ {k: r[k] for k in r if k.startswith(('parts', 'expected', 'results'))} })")
                if r.get("errors"):
                    notes.append(f"{key} {n}: {r['errors']} timed requests failed (not 200, or another size)")
                if r.get("stored") is not None and r.get("stored") != r.get("n"):
                    notes.append(f"{key} {n} run {r['rep'] + 1}: {r['stored']} instances held after storing {r['n']}")
                if r.get("failed_associations") or r.get("non_200") or r.get("failed_sops"):
                    fields = ("failed_associations", "non_200", "failed_sops", "statuses", "storescu_error")
                    notes.append(f"{key} {n} run {r['rep'] + 1}: failures { {k: r[k] for k in fields if r.get(k)} }")
    for n, w, k, s in LOGS:
        notes.append(f"{n} ({w}) logged {k} warning/error line(s), e.g. {s[0][:200]}")
    if notes:
        print("notes:")
        for line in dict.fromkeys(notes):
            print("  " + line)
    print(f"JSON: {out_path}")


if __name__ == "__main__":
    def _terminate(signum, frame):
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    try:
        main()
    except KeyboardInterrupt:
        log("bench: interrupted")
        sys.exit(130)
    finally:
        cleanup()
