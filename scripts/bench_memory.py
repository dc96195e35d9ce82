#!/usr/bin/env python3
"""Memory under load (issue 19): the pacs-lite server's peak RSS (VmHWM) over
1. one STOW-RS request of `--stow-mb` (2000) MB of 512x512 CT instances, sent chunked as it
   is made (the server streams it: spool, hash, store, one instance at a time), and
2. `--associations` (50) concurrent C-STORE associations (dcmtk storescu, one process each,
   `--per-association` 64x64 CT files each), all at once (dimse.max_associations raised to
   match: the default is 32).
Each on a fresh server (SQLite + files; `--pg URL` for PostgreSQL). Prints the server's RSS at
rest and its peak, with the targets (< 200 MB and < 300 MB); asserts nothing. Writes
target/bench/memory.json.

Usage: scripts/bench_memory.py [--stow-mb N] [--associations N] [--per-association N]
                               [--pg URL] [--binary PATH]
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_dimse as dimse  # noqa: E402
import bench_stow as stow  # noqa: E402


def concurrent_cstore(pg_url, binary, associations, per_association):
    folders, total = dimse.make_folders(64, associations * per_association, associations, 930)
    server = dimse.Pacs(pg_url, binary=binary)
    server.env["PACS_DIMSE__MAX_ASSOCIATIONS"] = str(associations + 8)
    server.start()
    try:
        base = server.peak_rss_mb()
        t0 = time.perf_counter()
        procs = [subprocess.Popen([dimse.dcmtk("storescu"), "-aec", server.aet, "+sd", "127.0.0.1",
                                   str(server.dicom_port), str(d)], env=dimse.ENV,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for d in folders]
        failed = sum(1 for p in procs if p.wait() != 0)
        elapsed = time.perf_counter() - t0
        return {"associations": associations, "instances": associations * per_association,
                "failed_associations": failed, "secs": elapsed, "mb": total / 1e6,
                "base_rss": base, "peak_rss": server.peak_rss_mb()}
    finally:
        server.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stow-mb", type=int, default=2000)
    ap.add_argument("--associations", type=int, default=50)
    ap.add_argument("--per-association", type=int, default=40)
    ap.add_argument("--pg")
    ap.add_argument("--binary")
    args = ap.parse_args()
    if args.binary:
        os.environ["PACS_BIN"] = args.binary
        stow.BIN = args.binary
    result = {}
    try:
        s = stow.big_request_rss(args.pg, args.stow_mb)
        result["stow"] = s
        print(f"STOW-RS of {s['mb']:.0f} MB in one request ({s['n']} instances, HTTP {s['status']}, "
              f"{s['secs']:.1f} s): RSS {s['base_rss']:.0f} MB at rest, peak {s['peak_rss']:.0f} MB "
              f"(target < 200 MB)")
        c = concurrent_cstore(args.pg, args.binary, args.associations, args.per_association)
        result["cstore"] = c
        print(f"C-STORE on {c['associations']} concurrent associations ({c['instances']} instances, "
              f"{c['failed_associations']} failed, {c['secs']:.1f} s): RSS {c['base_rss']:.0f} MB at rest, "
              f"peak {c['peak_rss']:.0f} MB (target < 300 MB)")
    finally:
        stow.remove_leftovers()
    out = Path(os.environ.get("CARGO_TARGET_DIR", HERE.parent / "target")) / "bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / "memory.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
