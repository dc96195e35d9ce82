#!/usr/bin/env python3
"""Compression at rest on the CT512 set: ratio, job throughput, and retrieval of the study
before and after (as stored, and transcoded to Explicit VR Little Endian).

Starts the release binary on a fresh data directory (SQLite + filesystem), stores
`--count` (100) 512x512 signed 16-bit CT slices with smooth anatomy and noise by STOW-RS,
times WADO-RS retrieval of the whole study as stored (`transfer-syntax=*`, warm, median of
`--repeat`), runs `pacs-lite compress --study` (the job: read, encode, decode again and
compare every pixel, write durably, swap, delete) and prints its throughput in MB/s of
input (`--workers` objects encoded at a time, 1 by default), the ratio, then the retrieval as
stored (JPEG-LS) and transcoded to Explicit VR Little Endian. The job's CPU time (user +
system, all its threads) is measured too: MB of input per CPU-second is its cost per core. Writes
target/bench/compress.json. Asserts nothing.

Usage: scripts/bench_compress.py [--count N] [--repeat N] [--workers N] [--syntax S] [--binary PATH] [--perf FILE]
"""

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import requests

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "interop"))
import bench_stow as stow  # noqa: E402
from dicomgen import ct_series, to_bytes  # noqa: E402


def ct512(n):
    series = ct_series(n=n, size=512, seed=1)
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:512, :512] / 512
    for i, ds in enumerate(series):
        body = 900 * np.exp(-((xx - 0.5) ** 2 + (yy - 0.5) ** 2) / 0.09)
        organ = 300 * (((xx - 0.42 - 0.002 * i) ** 2 + (yy - 0.55) ** 2) < 0.012)
        bone = 1400 * ((((xx - 0.5) ** 2 + (yy - 0.5) ** 2) > 0.16) & (((xx - 0.5) ** 2 + (yy - 0.5) ** 2) < 0.17))
        image = np.clip(body + organ + bone + rng.normal(0, 15, (512, 512)) - 1000, -1024, 3071)
        ds.PixelRepresentation, ds.BitsStored, ds.HighBit = 1, 16, 15
        ds.PixelData = image.astype(np.int16).tobytes()
    return series


def retrieve(server, study, ts, repeat):
    url = f"http://{server.host}:{server.port}/dicom-web/studies/{study}"
    accept = f'multipart/related; type="application/dicom"; transfer-syntax={ts}'
    times, size = [], 0
    for _ in range(repeat + 1):
        t0 = time.perf_counter()
        r = requests.get(url, headers={"Accept": accept})
        size = len(r.content)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:]), size


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--binary")
    ap.add_argument("--workers", type=int, default=1, help="objects encoded at a time (compress --workers)")
    ap.add_argument("--syntax", default="jpeg-ls-lossless", help="compression.syntax: jpeg-ls-lossless or rle")
    ap.add_argument("--perf", help="record the job with `perf record -g` into this file")
    args = ap.parse_args()
    series = ct512(args.count)
    study = str(series[0].StudyInstanceUID)
    server = stow.Server(binary=args.binary).start()
    result = {}
    try:
        for i in range(0, len(series), 10):
            body, ctype = stow.multipart([to_bytes(ds) for ds in series[i:i + 10]]), 'multipart/related; type="application/dicom"; boundary=' + stow.BOUNDARY
            r = requests.post(f"http://{server.host}:{server.port}/dicom-web/studies", data=body, headers={"Content-Type": ctype})
            assert r.status_code == 200, r.text
        before_t, before_size = retrieve(server, study, "*", args.repeat)
        env = dict(server.env, PACS_COMPRESSION__SYNTAX=args.syntax)
        t0 = time.perf_counter()
        cmd = [server.binary, "compress", "--study", study, "--json", "--workers", str(args.workers)]
        if args.perf:
            cmd = ["perf", "record", "-q", "-g", "-o", args.perf, "--"] + cmd
        cpu0 = os.times()
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        elapsed = time.perf_counter() - t0
        cpu1 = os.times()
        cpu = (cpu1.children_user - cpu0.children_user) + (cpu1.children_system - cpu0.children_system)
        summary = json.loads(out.stdout)["summary"]
        after_t, after_size = retrieve(server, study, "*", args.repeat)
        explicit_t, explicit_size = retrieve(server, study, "1.2.840.10008.1.2.1", args.repeat)
        mb_in = summary["bytes_before"] / 1e6
        result = {
            "instances": summary["done"], "bytes_before": summary["bytes_before"], "bytes_after": summary["bytes_after"],
            "ratio": summary["bytes_before"] / summary["bytes_after"], "job_seconds": elapsed, "job_mb_per_s": mb_in / elapsed,
            "syntax": args.syntax, "workers": args.workers, "job_cpu_seconds": cpu, "job_mb_per_cpu_s": mb_in / cpu,
            "retrieve_uncompressed_ms": before_t * 1000, "retrieve_uncompressed_mb_s": before_size / before_t / 1e6,
            "retrieve_as_stored_ms": after_t * 1000, "retrieve_transcoded_ms": explicit_t * 1000,
        }
        print(f"CT512 x {summary['done']}, {args.syntax}: {mb_in:.1f} MB -> {summary['bytes_after'] / 1e6:.1f} MB, ratio {result['ratio']:.2f}x")
        print(f"compression job, {args.workers} worker(s): {elapsed:.2f} s, {result['job_mb_per_s']:.0f} MB/s of input "
              f"(encode + decode + compare + durable write + swap); {cpu:.2f} s of CPU, {result['job_mb_per_cpu_s']:.0f} MB per CPU-second")
        print(f"WADO-RS study retrieve: uncompressed {before_t * 1000:.0f} ms ({before_size / before_t / 1e6:.0f} MB/s); "
              f"{args.syntax} as stored {after_t * 1000:.0f} ms ({after_size / 1e6:.1f} MB); "
              f"transcoded to Explicit VR LE {explicit_t * 1000:.0f} ms")
    finally:
        server.stop()
        stow.remove_leftovers()
    out_dir = Path(os.environ.get("CARGO_TARGET_DIR", HERE.parent / "target")) / "bench"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "compress.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
