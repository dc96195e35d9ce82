"""Machine figures of scripts/bench.py, measured at the start of each repetition (durable
write rate and file creation cost in the filesystem of TMPDIR, SHA-256 throughput), and the
machine's description for the JSON."""

import datetime
import hashlib
import os
import platform
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import bench_dimse  # (file creation probe)
import bench_stow as stow  # (directories removed at exit)

ROOT = Path(__file__).resolve().parent.parent


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
