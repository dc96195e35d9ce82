#!/usr/bin/env python3
"""What TLS costs, measured in one run on one machine: two pacs-lite servers on embedded
defaults, one plain (HTTP, DIMSE) and one with HTTPS and DICOM TLS (test certificates,
RSA 2048), the same data loaded into each.

- C-STORE throughput with dcmtk's storescu, plain and `+tla` (TLS, no client certificate):
  64x64 CT on 1 and 4 associations, 512x512 CT on 1 association.
- WADO-RS retrieve of a 100-instance 512x512 study, warm, with curl: HTTP/1.1 plain,
  HTTP/1.1 over TLS, HTTP/2 over TLS.
- OHIF (unless --no-ohif, or when it is not installed): time to the first image drawn and to
  the last image request finished for a 300-slice 512x512 CT, over HTTPS with HTTP/1.1 and
  with HTTP/2, and over plain HTTP/1.1; the median of several page loads.

Prints a table per workload with the TLS/plain ratio; asserts nothing.
Usage: scripts/bench_tls.py [--quick] [--no-ohif] [--binary PATH]
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "tests" / "interop"))
import bench_stow as stow  # noqa: E402
from bench_dimse import dcmtk, make_folders  # noqa: E402
from tlstools import Pki  # noqa: E402

VIEWER = ROOT / "viewer-dist"
E2E = ROOT / "tests" / "e2e"


class Server(stow.Server):
    """pacs-lite, plain or with HTTPS and DICOM TLS on the same certificate."""

    def __init__(self, pki=None, binary=None, viewer=False):
        super().__init__(binary=binary)
        self.pki = pki
        if viewer:
            self.env["PACS_VIEWER__DIR"] = str(VIEWER)
        if pki:
            self.env.update({
                "PACS_HTTP__TLS__CERT_FILE": pki.pem("server"), "PACS_HTTP__TLS__KEY_FILE": pki.key("server"),
                "PACS_DIMSE__LISTEN": "",
                "PACS_DIMSE__TLS__LISTEN": "127.0.0.1:0",
                "PACS_DIMSE__TLS__CERT_FILE": pki.pem("server"), "PACS_DIMSE__TLS__KEY_FILE": pki.key("server"),
            })

    def start(self):
        self.proc = subprocess.Popen([self.binary, "serve"], env=self.env, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL)
        m = re.search(r"(https?)://([\d.]+):(\d+)", self.proc.stdout.readline().decode())
        self.scheme, self.host, self.port = m.group(1), m.group(2), int(m.group(3))
        self.url = f"{self.scheme}://{self.host}:{self.port}"
        self.dicom_port = int(re.search(r":(\d+) as", self.proc.stdout.readline().decode()).group(1))
        return self

    def tls_args(self):
        return ["+tla", "+cf", self.pki.pem("ca")] if self.pki else []

    def curl_args(self):
        return ["--cacert", self.pki.pem("ca")] if self.pki else []


def study_uid(raw: bytes) -> str:
    return re.search(re.escape(stow.UID_PREFIX).encode() + rb"2\d+", raw).group().decode()


def stow_all(server, instances, per_request=10):
    import requests
    verify = server.pki.pem("ca") if server.pki else True
    session = requests.Session()
    session.trust_env = False
    for i in range(0, len(instances), per_request):
        body = stow.multipart(instances[i:i + per_request])
        r = session.post(f"{server.url}/dicom-web/studies", data=body, verify=verify,
                         headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={stow.BOUNDARY}'})
        r.raise_for_status()


def load_study(servers, n, run):
    """One series of `n` 512x512 CT instances stored in every server: its study UID, its bytes."""
    factory = stow.Factory(512, run, per_series=n + 1, per_study=n + 1)  # numbering starts at 1
    instances = [factory.next() for _ in range(n)]
    for server in servers:
        stow_all(server, instances)
    return study_uid(instances[0]), sum(map(len, instances))


def store(server, folders):
    t0 = time.perf_counter()
    procs = [subprocess.Popen([dcmtk("storescu"), *server.tls_args(), "-aec", "PACSLITE", "+sd", "127.0.0.1",
                               str(server.dicom_port), str(d)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for d in folders]
    failed = [p for p in procs if p.wait() != 0]
    if failed:
        raise RuntimeError(failed[0].stderr.read().decode()[-2000:])
    return time.perf_counter() - t0


def cstore(servers, quick):
    print("\nC-STORE with storescu (plain vs +tla)")
    print(f"{'case':32} {'plain':>16} {'TLS':>16} {'TLS/plain':>10}")
    cases = [("64x64 CT, 1 association", 64, 400 if quick else 2000, 1),
             ("64x64 CT, 4 associations", 64, 400 if quick else 2000, 4),
             ("512x512 CT, 1 association", 512, 60 if quick else 300, 1)]
    for run, (label, size, count, parts) in enumerate(cases):
        rates = []
        for i, server in enumerate(servers):
            folders, total = make_folders(size, count, parts, run * 2 + i + 10)
            elapsed = store(server, folders)
            rates.append((count / elapsed, total / elapsed / 1e6))
        cell = [f"{n:7.0f}/s {mb:5.0f}MB/s" for n, mb in rates]
        print(f"{label:32} {cell[0]:>16} {cell[1]:>16} {rates[1][0] / rates[0][0]:10.2f}")


def retrieve(servers, quick):
    n = 3 if quick else 10
    study, size = load_study(servers, 100, run=90)
    print(f"\nWADO-RS retrieve of a 100 x 512x512 study ({size / 1e6:.0f} MB), warm, curl, "
          f"median of {n}")
    accept = 'Accept: multipart/related; type="application/dicom"'
    base = None
    for label, server, version in [("HTTP/1.1 plain", servers[0], "--http1.1"),
                                   ("HTTP/1.1 over TLS", servers[1], "--http1.1"),
                                   ("HTTP/2 over TLS", servers[1], "--http2")]:
        times, size = [], 0
        for i in range(n + 2):
            r = subprocess.run(["curl", "-sS", version, *server.curl_args(), "-H", accept, "-o", "/dev/null",
                                "-w", "%{time_total} %{size_download} %{http_version}",
                                f"{server.url}/dicom-web/studies/{study}"], capture_output=True, text=True, check=True)
            t, size, got = r.stdout.split()
            if i >= 2:
                times.append(float(t))
        mb_s = int(size) / statistics.median(times) / 1e6
        base = base or mb_s
        print(f"  {label:20} HTTP/{got:4} {statistics.median(times) * 1000:7.1f} ms  {mb_s:7.0f} MB/s  "
              f"({mb_s / base:.2f} x plain)")


def ohif(servers, quick):
    if not (VIEWER / "index.html").exists() or not (E2E / "node_modules" / "playwright-core").exists():
        print("\nOHIF: skipped (viewer-dist or tests/e2e/node_modules missing)")
        return
    runs = 2 if quick else 5
    study, _ = load_study(servers, 300, run=91)
    print(f"\nOHIF, 300-slice 512x512 CT: ms from navigation, median of {runs} page loads")
    print(f"{'':22} {'first image':>12} {'last image':>12} {'image requests':>15}")
    for label, server, env in [("HTTP/1.1 plain", servers[0], {}),
                               ("HTTP/1.1 over TLS", servers[1], {"OHIF_HTTP1": "1"}),
                               ("HTTP/2 over TLS", servers[1], {})]:
        first, last, count = [], [], 0
        for _ in range(runs):
            out = Path(tempfile.mkdtemp(prefix="ohif-bench-"))
            stow.LEFTOVERS.append(out)
            e = dict(os.environ, **env)
            if server.pki:
                e["OHIF_SPKI"] = server.pki.spki_sha256("server")
            r = subprocess.run(["node", E2E / "ohif.mjs", server.url, out, study], capture_output=True, text=True,
                               timeout=600, cwd=E2E, env=e)
            report = json.loads(r.stdout.strip().splitlines()[-1])["studies"][study]
            first.append(report["firstImageMs"] or float("nan"))
            last.append(report["lastImageMs"])
            count = report["imageRequests"]
        print(f"  {label:20} {statistics.median(first):12.0f} {statistics.median(last):12.0f} {count:15}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-ohif", action="store_true")
    ap.add_argument("--binary", help="the pacs-lite binary (default: target/release/pacs-lite)")
    args = ap.parse_args()
    pki = Pki(Path(tempfile.mkdtemp(prefix="bench-pki-")))
    servers = [Server(None, args.binary, viewer=True).start(), Server(pki, args.binary, viewer=True).start()]
    try:
        cstore(servers, args.quick)
        retrieve(servers, args.quick)
        if not args.no_ohif:
            ohif(servers, args.quick)
    finally:
        for s in servers:
            s.stop()
        stow.remove_leftovers()


if __name__ == "__main__":
    main()
