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
  cstore-nagle   C-STORE of 100 64x64 CT over 1 association by storescu with Nagle's
                 algorithm on (without TCP_NODELAY=1 in its environment: dcmtk's default, and
                 what many modalities do): instances/s. It writes each PDU in pieces, and
                 each next piece waits for the last one's acknowledgement; a server that
                 delays acknowledgements makes every message wait up to 40 ms. No target.
  stow64         STOW-RS of 1000 64x64 CT, 50 per request, one keep-alive connection:
                 instances/s (request bodies built before the clock starts).
  stow512        STOW-RS of 200 512x512 CT, 10 per request: MB/s of Part-10 instances.
  qido           QIDO-RS studies?PatientName=D* over 300 one-instance studies of 300 distinct
                 patients, a quarter of whose names start with D (surnames Doe, Dunn, Diaz
                 among twelve): median ms.
  wado-study     WADO-RS of a study of 100 x 512x512 CT (multipart/related;
                 type="application/dicom"; transfer-syntax=*), warm: MB/s at the median time
                 read by scripts/bench_http.py into 8 MB buffers (curl's 16 KB reads were the
                 limit here, whichever the server). (Until 2026-12-07 also a "loopback
                 ceiling": a minimal Python server sending the body with one sendfile(2); it
                 was no ceiling, pacs-lite sends the study faster, and is no longer measured.)
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
import json
import os
import re
import shutil
import signal
import sys
import time
from pathlib import Path

# dcmtk (storescu, and Orthanc's DICOM layer) reads TCP_NODELAY from the environment;
# without it Nagle's algorithm adds ~40 ms per small message. (Set before the modules below
# are imported: every server and storescu process of the run inherits it.)
os.environ["TCP_NODELAY"] = "1"

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import bench_read  # noqa: E402  (STOW loading)
from bench_machine import machine_figures, machine_info  # noqa: E402  (dd, SHA-256, file creation; machine)
from bench_report import print_table, summarize_report  # noqa: E402  (medians, ratios, the table)
from bench_servers import ORTHANC_PLUGIN, Orthanc, PacsLite, cleanup  # noqa: E402  (servers, cleanup at exit)
from bench_workloads import (  # noqa: E402  (workloads: inputs, ingest, timed reads)
    READS, WORKLOADS, Inputs, attempt, ingest_cstore, ingest_stow, log, measure_reads)


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
    c = {"cstore64_1": 200 if q else 1000, "cstore_nagle": 40 if q else 100, "cstore64_multi": 400 if q else 2000, "cstore512": 40 if q else 200,
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
            if "cstore-nagle" in selected:
                cases.append(("cstore-nagle", "cstore", (64, c["cstore_nagle"], 1)))
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
                        res = attempt(lambda: ingest_cstore(lambda: make(key), folders, nbytes, n,
                                                            nagle=key == "cstore-nagle"))
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
