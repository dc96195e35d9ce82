"""Run the real pacs-lite binary for black-box tests: one fresh server per test, on an
ephemeral port, with a temporary data directory and a fresh index (SQLite file or a new
PostgreSQL database) and object store (directory or a new s3s-fs bucket)."""

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]
BOUNDARY = "pacs-lite-test-boundary"


def binary() -> Path:
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    path = Path(os.environ.get("PACS_BIN", target / "release" / "pacs-lite"))
    if not path.exists():
        raise RuntimeError(f"{path} does not exist: build with `cargo build --release` first")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def multipart(parts: list[bytes], boundary=BOUNDARY, content_type="application/dicom") -> tuple[bytes, str]:
    """A multipart/related body of these parts, each with the given Content-Type, and its boundary."""
    body = b""
    for p in parts:
        body += f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode() + p + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return body, boundary


def stow_content_type(boundary=BOUNDARY) -> str:
    """The Content-Type of a STOW-RS request of DICOM parts (PS3.18 10.5.1.1)."""
    return f'multipart/related; type="application/dicom"; boundary={boundary}'


class S3Server:
    """An s3s-fs process serving buckets from a temporary directory."""

    ACCESS_KEY = "pacs-test"
    SECRET_KEY = "pacs-test-secret"

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="pacs-s3-"))
        self.port = free_port()
        self.proc = subprocess.Popen(
            [shutil.which("s3s-fs"), "--host", "127.0.0.1", "--port", str(self.port),
             "--access-key", self.ACCESS_KEY, "--secret-key", self.SECRET_KEY, str(self.root)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("s3s-fs did not start")

    def new_bucket(self) -> str:
        name = "b" + uuid.uuid4().hex[:16]
        (self.root / name).mkdir()
        return name

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.root, ignore_errors=True)


class Backend:
    """An index + object store combination: 'sqlite-fs' or 'postgres-s3'."""

    def __init__(self, name: str, pg_url: str | None = None, s3: S3Server | None = None):
        self.name = name
        self.pg_url = pg_url
        self.s3 = s3

    def env(self, data_dir: Path) -> dict:
        """A server's environment; on PostgreSQL, in a database of its own (see drop)."""
        env = {"PACS_DATA_DIR": str(data_dir)}
        if self.name == "postgres-s3":
            db = "pacs_" + uuid.uuid4().hex[:12]
            subprocess.run(["psql", self.pg_url, "-qc", f"CREATE DATABASE {db}"], check=True)
            env["_PACS_TEST_DB"] = db
            base = self.pg_url.rsplit("/", 1)[0]
            env.update({
                "PACS_INDEX__URL": f"{base}/{db}",
                "PACS_STORAGE__BACKEND": "s3",
                "PACS_STORAGE__S3__ENDPOINT": f"http://127.0.0.1:{self.s3.port}",
                "PACS_STORAGE__S3__BUCKET": self.s3.new_bucket(),
                "PACS_STORAGE__S3__REGION": "us-east-1",
                "PACS_STORAGE__S3__ACCESS_KEY_ID": S3Server.ACCESS_KEY,
                "PACS_STORAGE__S3__SECRET_ACCESS_KEY": S3Server.SECRET_KEY,
            })
        return env

    def drop(self, env: dict):
        """Drops the database env() created: thousands of test runs must not fill the cluster."""
        db = env.get("_PACS_TEST_DB")
        if db:
            subprocess.run(["psql", self.pg_url, "-qc", f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"],
                           capture_output=True, timeout=60)


class Pacs:
    """One pacs-lite server process (and the CLI commands run on its configuration)."""

    def __init__(self, backend: Backend, extra_env: dict | None = None):
        self.backend = backend
        self.dir = Path(tempfile.mkdtemp(prefix="pacs-test-"))
        self.env = dict(os.environ)
        self.env.pop("PACS_BIN", None)  # the tests' setting: the server refuses unknown PACS_* keys
        self.env.update(backend.env(self.dir / "data"))
        self.env["PACS_HTTP__LISTEN"] = "127.0.0.1:0"
        self.env["PACS_DIMSE__LISTEN"] = "127.0.0.1:0"
        self.env.setdefault("PACS_LOG__FILTER", "warn,pacs_lite=info")
        self.env.update(extra_env or {})
        self.proc = None
        self.url = None

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    def start(self) -> "Pacs":
        self.log = open(self.dir / "server.log", "ab")
        self.proc = subprocess.Popen([binary(), "serve"], env=self.env, stdout=subprocess.PIPE, stderr=self.log)
        line = self.proc.stdout.readline().decode()
        m = re.search(r"(https?)://(\S+)", line)
        if not m:
            self.proc.wait(5)
            raise RuntimeError(f"server did not start: {line!r}\n{self.server_log()}")
        self.url = f"{m.group(1)}://{m.group(2)}"
        self.dimse_port = self.dimse_tls_port = None
        dimse = "PACS_DIMSE__ENABLED" not in self.env
        if dimse and self.env.get("PACS_DIMSE__LISTEN") != "":
            line = self.proc.stdout.readline().decode()
            m = re.search(r"DIMSE listening on [\d.]+:(\d+) as (\S+)", line)
            if not m:
                raise RuntimeError(f"no DIMSE listener: {line!r}\n{self.server_log()}")
            self.dimse_port, self.ae_title = int(m.group(1)), m.group(2)
        if dimse and "PACS_DIMSE__TLS__LISTEN" in self.env:
            line = self.proc.stdout.readline().decode()
            m = re.search(r"DIMSE TLS listening on [\d.]+:(\d+) as (\S+)", line)
            if not m:
                raise RuntimeError(f"no DIMSE TLS listener: {line!r}\n{self.server_log()}")
            self.dimse_tls_port, self.ae_title = int(m.group(1)), m.group(2)
        self.hl7_port = None
        if self.env.get("PACS_HL7__LISTEN"):
            line = self.proc.stdout.readline().decode()
            m = re.search(r"HL7 listening on [\d.]+:(\d+)", line)
            if not m:
                raise RuntimeError(f"no HL7 listener: {line!r}\n{self.server_log()}")
            self.hl7_port = int(m.group(1))
        return self

    def server_log(self) -> str:
        return (self.dir / "server.log").read_text(errors="replace")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self):
        self.proc.kill()
        self.proc.wait()

    def cli(self, *args, check=False, timeout=300) -> subprocess.CompletedProcess:
        return subprocess.run([binary(), *map(str, args)], env=self.env, capture_output=True,
                              text=True, timeout=timeout, check=check)

    def post(self, path: str, data, content_type: str, **kw) -> requests.Response:
        return requests.post(f"{self.dicomweb}{path}", data=data,
                             headers={"Content-Type": content_type, **kw.pop("headers", {})}, **kw)

    def stow(self, parts, study=None, boundary=BOUNDARY, **kw) -> requests.Response:
        """STOW-RS of `parts` (Part-10 bytes, or pydicom data sets to encode) in one
        multipart/related request to /studies, or /studies/{study}; `kw` go to requests."""
        from dicomgen import to_bytes
        body, boundary = multipart([p if isinstance(p, bytes) else to_bytes(p) for p in parts], boundary)
        return self.post(f"/studies/{study}" if study else "/studies", body, stow_content_type(boundary), **kw)

    def peak_rss_mb(self) -> int:
        """The server process's peak resident memory so far (VmHWM), in MiB."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            return next(int(line.split()[1]) // 1024 for line in f if line.startswith("VmHWM:"))

    def cleanup(self):
        self.stop()
        self.backend.drop(self.env)
        shutil.rmtree(self.dir, ignore_errors=True)

    def instance_rows(self) -> list[tuple]:
        """(sop_instance_uid, sha256, size) for every indexed instance, read from the index."""
        url = self.env.get("PACS_INDEX__URL")
        if url:
            out = subprocess.run(["psql", url, "-AtF", "|", "-c",
                                  "SELECT sop_instance_uid, sha256, size FROM instances ORDER BY id"],
                                 capture_output=True, text=True, check=True).stdout
            return [tuple(l.split("|")[:2]) + (int(l.split("|")[2]),) for l in out.splitlines() if l]
        import sqlite3
        con = sqlite3.connect(self.dir / "data" / "index.sqlite")
        try:
            return [tuple(r) for r in con.execute("SELECT sop_instance_uid, sha256, size FROM instances ORDER BY id")]
        finally:
            con.close()

    def object_bytes(self, sop_uid: str) -> bytes:
        """The stored bytes of an instance, read straight from the object store's files."""
        q = f"SELECT object_key FROM instances WHERE sop_instance_uid = '{sop_uid}'"
        url = self.env.get("PACS_INDEX__URL")
        if url:
            key = subprocess.run(["psql", url, "-Atc", q], capture_output=True, text=True, check=True).stdout.strip()
        else:
            import sqlite3
            con = sqlite3.connect(self.dir / "data" / "index.sqlite")
            key = con.execute(q).fetchone()[0]
            con.close()
        return (self.objects_dir() / key).read_bytes()

    def objects_dir(self) -> Path:
        if self.env.get("PACS_STORAGE__BACKEND") == "s3":
            return self.backend.s3.root / self.env["PACS_STORAGE__S3__BUCKET"]
        return self.dir / "data" / "objects"

    def object_files(self) -> list[Path]:
        return [p for p in self.objects_dir().rglob("*") if p.is_file() and not p.name.startswith(".")]

    def spool_files(self) -> list[Path]:
        spool = self.dir / "data" / "spool"
        return [p for p in spool.rglob("*") if p.is_file() and p.name != ".lock"] if spool.exists() else []

    def count(self, table: str) -> int:
        url = self.env.get("PACS_INDEX__URL")
        if url:
            out = subprocess.run(["psql", url, "-Atc", f"SELECT COUNT(*) FROM {table}"],
                                 capture_output=True, text=True, check=True).stdout
            return int(out.strip())
        import sqlite3
        con = sqlite3.connect(self.dir / "data" / "index.sqlite")
        try:
            return con.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
        finally:
            con.close()

    def study_row(self, study_uid: str) -> dict:
        cols = ["num_series", "num_instances", "modalities", "patient_name", "patient_name_key", "sop_classes"]
        url = self.env.get("PACS_INDEX__URL")
        q = f"SELECT {', '.join(cols)} FROM studies WHERE study_uid = '{study_uid}'"
        if url:
            out = subprocess.run(["psql", url, "-AtF", "|", "-c", q], capture_output=True, text=True, check=True).stdout
            vals = out.strip().split("|")
            return dict(zip(cols, [int(vals[0]), int(vals[1]), *vals[2:]]))
        import sqlite3
        con = sqlite3.connect(self.dir / "data" / "index.sqlite")
        try:
            row = con.execute(q).fetchone()
            return dict(zip(cols, row))
        finally:
            con.close()
