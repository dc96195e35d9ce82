"""The workloads of scripts/bench.py: their names, the instances they send (built once
and reused by every repetition), ingest by C-STORE (dcmtk's storescu) and STOW-RS, and
the timed read requests (QIDO-RS, WADO-RS) with the checks of their answers."""

import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

import bench_dimse  # (storescu, folders of files)
import bench_servers  # (CHILDREN: client processes stopped by cleanup())
import bench_stow as stow  # (instance factory, multipart)
import bench_http
from bench_servers import cpu_fields, cpu_seconds

DICOM_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
FRAME_ACCEPT = "multipart/related; type=application/octet-stream; transfer-syntax=*"
JSON_ACCEPT = "application/dicom+json"
STOW_TYPE = f'multipart/related; type="application/dicom"; boundary={stow.BOUNDARY}'

INGEST = ["cstore64", "cstore512", "cstore-nagle", "stow64", "stow512"]
READS = ["qido", "wado-study", "wado-small", "wado-instance", "wado-frame", "metadata"]
WORKLOADS = INGEST + READS


def log(msg):
    print(msg, file=sys.stderr, flush=True)


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


def storescu(server, folders, nagle=False):
    """One storescu per folder, all at once; wall time and failures. `nagle`: without
    TCP_NODELAY=1 in its environment (dcmtk then leaves Nagle's algorithm on)."""
    tool = bench_dimse.dcmtk("storescu")
    env = {k: v for k, v in os.environ.items() if not (nagle and k == "TCP_NODELAY")}
    errs = [tempfile.TemporaryFile() for _ in folders]
    t0 = time.perf_counter()
    procs = [subprocess.Popen([tool, "-aec", server.aet, "+sd", "127.0.0.1", str(server.dicom_port), str(d)],
                              stdout=subprocess.DEVNULL, stderr=e, env=env) for d, e in zip(folders, errs)]
    bench_servers.CHILDREN.extend(procs)
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
        bench_servers.CHILDREN.remove(p)
    return elapsed, failed, sample


def ingest_cstore(make, folders, total_bytes, n, nagle=False):
    os.sync()
    server = make().start()
    try:
        cpu0 = cpu_seconds(server)
        elapsed, failed, sample = storescu(server, folders, nagle)
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


def warm_up(server, path, accept, check):
    """One untimed request on a connection of its own: the body's size and what
    `check(headers, body)` found in it."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=600)
    status, headers, body = get(conn, path, accept)
    conn.close()
    if status != 200:
        raise RuntimeError(f"GET {path}: HTTP {status} {body[:200]!r}")
    return len(body), check(headers, body)


def timed_curl(server, path, accept, n, check):
    """As timed_get (warm-up and check with http.client), then one curl process making n
    requests on one keep-alive connection; curl's own time of each transfer."""
    size, found = warm_up(server, path, accept, check)
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


def timed_bulk(server, path, accept, n, check):
    """As timed_get (warm-up and check with http.client), then n requests on one keep-alive
    connection read by scripts/bench_http.py into large buffers (curl's 16 KB reads are the
    limit of a 52 MB transfer here, whichever the server)."""
    size, found = warm_up(server, path, accept, check)
    reader = bench_http.Reader(server.host, server.port)
    times, errors = [], 0
    for _ in range(n):
        code, got, secs = reader.get(path, accept)
        times.append(secs)
        errors += code != 200 or got != size
    reader.close()
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
    bulk = timed_bulk if c["client"] == "curl" else timed_get
    plan = {
        "qido": lambda: timed(server, f"{r}/studies?PatientName=D*", JSON_ACCEPT, nl,
                              expect_json(uids["qido_matches"])),
        "wado-study": lambda: bulk(server, f"{r}/studies/{uids['big_study']}", DICOM_ACCEPT,
                                   c["study_n"], expect_parts(uids["big_count"], uids["big_bytes"])),
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


def attempt(fn):
    try:
        return fn()
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:  # noqa: BLE001 - a failed workload is reported, the run goes on
        return {"error": f"{type(e).__name__}: {e}"[:1000]}
