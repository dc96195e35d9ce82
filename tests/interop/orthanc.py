"""Debian's Orthanc as the central archive the gateway forwards to: started by a test on
free ports with a data directory of its own, stopped and started again at will (an
upstream that goes down and comes back)."""

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import requests

from pacs import free_port

BINARY = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


def require_orthanc():
    """Skip when Orthanc is missing (fail when the run requires it)."""
    import optional
    why = optional.orthanc_missing()
    if not why:
        return
    if os.environ.get("PACS_TEST_REQUIRE_ORTHANC"):
        pytest.fail(why)
    pytest.skip(why)


class Orthanc:
    """`users` ({name: password}) turns HTTP authentication on (the helper logs in as the
    first); `dicomweb` loads the DICOMweb plugin (STOW-RS at `dicomweb_url`)."""

    def __init__(self, aet="ORTHANC", users=None, dicomweb=False, **extra):
        self.dir = Path(tempfile.mkdtemp(prefix="orthanc-test-"))
        self.aet, self.port, self.dicom_port = aet, free_port(), free_port()
        config = {
            "Name": "upstream", "StorageDirectory": str(self.dir / "db"), "IndexDirectory": str(self.dir / "db"),
            "HttpPort": self.port, "DicomPort": self.dicom_port, "DicomAet": aet, "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "DicomAlwaysAllowStore": True, "DicomCheckCalledAet": True,
            "StorageCompression": False, "Plugins": [], **extra,
        }
        self.http = requests.Session()
        self.http.trust_env = False
        if users:
            config.update(AuthenticationEnabled=True, RegisteredUsers=users)
            self.http.auth = next(iter(users.items()))
        if dicomweb:
            config.update(Plugins=[DICOMWEB_PLUGIN], DicomWeb={"Enable": True, "Root": "/dicom-web/"})
        self.config = config
        (self.dir / "config.json").write_text(json.dumps(config))
        self.proc = None

    def reconfigure(self, **changes):
        """New settings for the next start (the data stays)."""
        self.config.update(changes)
        (self.dir / "config.json").write_text(json.dumps(self.config))

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb_url(self):
        return f"{self.url}/dicom-web"

    def start(self) -> "Orthanc":
        self.proc = subprocess.Popen([BINARY, str(self.dir / "config.json")], stdout=subprocess.DEVNULL,
                                     stderr=open(self.dir / "log.txt", "ab"))
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                if self.http.get(f"{self.url}/system", timeout=1).ok:
                    return self
            except requests.RequestException:
                time.sleep(0.1)
        raise RuntimeError("Orthanc did not start:\n" + (self.dir / "log.txt").read_text()[-3000:])

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def instances(self) -> dict[str, bytes]:
        """SOP Instance UID -> the file Orthanc stored."""
        out = {}
        for oid in self.http.get(f"{self.url}/instances").json():
            tags = self.http.get(f"{self.url}/instances/{oid}/simplified-tags").json()
            out[tags["SOPInstanceUID"]] = self.http.get(f"{self.url}/instances/{oid}/file").content
        return out
