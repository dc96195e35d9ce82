"""The servers of scripts/bench.py: pacs-lite and Orthanc started for one workload and
stopped with their peak RSS and logged warnings recorded, the bookkeeping that lets
cleanup() stop every server and client process of the run, and the server's CPU time."""

import http.client
import json
import os
import re
import select
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import bench_read  # (Orthanc, free ports)
import bench_stow as stow  # (pacs-lite server, data directories removed at exit)

ORTHANC_PLUGIN = bench_read.ORTHANC_PLUGIN

# Shared by the whole run (bench.py, bench_workloads, bench_report use these very lists
# through this module, as bench_servers.CHILDREN etc.; they are never rebound).
LIVE = []       # servers started and not yet stopped
CHILDREN = []   # client processes (storescu) that may still run
RSS = []        # (server name, workload, VmHWM MB) of every stopped server process
LOGS = []       # (server name, workload, count, sample lines) of warnings/errors logged


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
