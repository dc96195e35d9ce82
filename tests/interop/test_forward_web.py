"""Store-and-forward beyond plain DIMSE: a DICOMweb destination (Orthanc's DICOMweb plugin
takes STOW-RS, with HTTP basic authentication), de-identification on the way out (PS3.15
Annex E Basic profile, UIDs mapped consistently per destination), a cap on the bytes per
second, and giving up after `max_attempts`."""

import http.server
import io
import subprocess
import threading
import time

import pydicom
import pytest
import requests

from dicomgen import ct_series, to_bytes
from dimsetools import dataset_bytes
from orthanc import Orthanc, require_orthanc
from pacs import binary
from test_forward import outbox, wait_for

KEY = "a-secret-that-keeps-uid-mapping-stable"


def toml_value(v):
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int):
        return str(v)
    if isinstance(v, list):
        return "[" + ",".join(toml_value(x) for x in v) + "]"
    return f'"{v}"'


def inline(table):
    return "{" + ",".join(f"{k}={toml_value(v)}" for k, v in table.items()) + "}"


def env_for(destinations, rules, **extra):
    base = {"retry_initial_secs": 1, "retry_max_secs": 2}
    return {"PACS_FORWARD__DESTINATIONS": "[" + ",".join(inline({**base, **d}) for d in destinations) + "]",
            "PACS_FORWARD__RULES": "[" + ",".join(inline(r) for r in rules) + "]", **extra}


def dicomweb(name, upstream, **more):
    return {"name": name, "kind": "dicomweb", "url": upstream.dicomweb_url, **more}


def dimse(name, upstream, **more):
    return {"name": name, "kind": "dimse", "ae": upstream.aet, "host": "127.0.0.1", "port": upstream.dicom_port,
            **more}


@pytest.fixture
def web_upstream():
    require_orthanc()
    o = Orthanc(users={"gateway": "s3cret"}, dicomweb=True)
    yield o
    o.cleanup()


def test_dicomweb_destination_after_an_outage(make_pacs, web_upstream):
    """STOW-RS to Orthanc with basic authentication: while it is down everything waits with
    the connection error; when it is up, everything goes (several requests, as
    `batch_bytes` splits them), byte for byte. Wrong credentials keep the jobs pending with
    the 401, never failed."""
    up = web_upstream
    pacs = make_pacs(env_for(
        [dicomweb("cloud", up, basic="gateway:s3cret", batch_bytes=30000),
         dicomweb("wrong", up, basic="gateway:nope")],
        [{"destination": "cloud"}, {"destination": "wrong"}]))
    sent = ct_series(n=4, size=64, patient_name="Web^One") + ct_series(n=3, size=64, patient_name="Web^Two")
    assert pacs.stow(sent[:4]).status_code == 200
    assert pacs.stow(sent[4:]).status_code == 200

    status = wait_for(lambda: (s := outbox(pacs, "cloud"))["last_error"] and s)
    assert status["pending"] == len(sent) and status["delivered"] == 0, status
    assert "cannot reach" in status["last_error"], status

    up.start()
    wait_for(lambda: outbox(pacs, "cloud")["delivered"] == len(sent), timeout=30)
    got = up.instances()
    assert set(got) == {str(ds.SOPInstanceUID) for ds in sent}
    for ds in sent:
        stored = pacs.object_bytes(str(ds.SOPInstanceUID))
        assert dataset_bytes(got[str(ds.SOPInstanceUID)]) == dataset_bytes(stored)

    wrong = wait_for(lambda: (s := outbox(pacs, "wrong"))["last_error"] and "401" in s["last_error"] and s)
    assert wrong["failed"] == 0 and wrong["pending"] == len(sent) and wrong["delivered"] == 0, wrong


def test_dicomweb_over_https_with_a_token(make_pacs, tmp_path):
    """An HTTPS DICOMweb destination that wants a bearer token: another pacs-lite with API
    keys (Debian's Orthanc 1.10 crashes on HTTPS requests here, so it cannot be this
    upstream). With `ca_file` naming the CA that signed its certificate and the uploader's
    key, delivered byte for byte; without `ca_file` (the Mozilla roots) or with a viewer's
    key, the batch waits with the reason and nothing is failed."""
    import authtools
    from tlstools import Pki
    pki = Pki(tmp_path / "pki")
    cert, key = pki.pair("server")
    up = make_pacs(authtools.env(PACS_HTTP__TLS__CERT_FILE=cert, PACS_HTTP__TLS__KEY_FILE=key))
    assert up.url.startswith("https://")
    url = f"{up.url}/dicom-web"
    dest = lambda name, **more: {"name": name, "kind": "dicomweb", "url": url, **more}  # noqa: E731
    pacs = make_pacs(env_for(
        [dest("trusted", token=authtools.KEYS["uploader"], ca_file=pki.pem("ca")),
         dest("untrusted", token=authtools.KEYS["uploader"]),
         dest("reader", token=authtools.KEYS["viewer"], ca_file=pki.pem("ca"))],
        [{"destination": "trusted"}, {"destination": "untrusted"}, {"destination": "reader"}]))
    series = ct_series(n=3, size=32)
    assert pacs.stow(series).status_code == 200
    wait_for(lambda: outbox(pacs, "trusted")["delivered"] == 3, timeout=30)
    for ds in series:
        uid = str(ds.SOPInstanceUID)
        assert dataset_bytes(up.object_bytes(uid)) == dataset_bytes(pacs.object_bytes(uid))
    s = wait_for(lambda: (s := outbox(pacs, "untrusted"))["last_error"] and s)
    assert s["delivered"] == 0 and s["failed"] == 0 and "certificate" in s["last_error"].lower(), s
    # The upstream answers 403 before reading the body and closes the connection: an
    # attempt may end in a broken pipe before the status is read, the next one reads it.
    s = wait_for(lambda: (s := outbox(pacs, "reader"))["last_error"] and "403" in s["last_error"] and s,
                 timeout=30)
    assert s["delivered"] == 0 and s["failed"] == 0, s


@pytest.mark.parametrize("kind", ["dicomweb", "dimse"])
def test_deidentified_on_the_way_out(make_pacs, kind):
    """With `deidentify = "basic"` the upstream gets no patient identity, new UIDs that keep
    the study together (and stay the same when the study is sent again), and the same
    pixels; the stored original is unchanged."""
    require_orthanc()
    up = Orthanc(dicomweb=True).start()
    try:
        dest = dicomweb("research", up) if kind == "dicomweb" else dimse("research", up)
        pacs = make_pacs(env_for([dest], [{"destination": "research", "deidentify": "basic"}],
                                 PACS_FORWARD__DEIDENTIFY_KEY=KEY))
        study = ct_series(n=3, size=32, patient_name="Secret^Person", patient_id="MRN-4711")
        later = ct_series(n=1, size=32, patient_name="Secret^Person", patient_id="MRN-4711",
                          study_uid=str(study[0].StudyInstanceUID), series_number=2)
        assert pacs.stow(study).status_code == 200
        wait_for(lambda: outbox(pacs, "research")["delivered"] == 3, timeout=30)
        assert pacs.stow(later).status_code == 200
        wait_for(lambda: outbox(pacs, "research")["delivered"] == 4, timeout=30)
        sent = study + later

        got = {uid: pydicom.dcmread(io.BytesIO(b)) for uid, b in up.instances().items()}
        assert len(got) == 4
        originals = {str(ds.SOPInstanceUID) for ds in sent}
        assert not set(got) & originals, "SOP Instance UIDs were not replaced"
        study_uids = {str(ds.StudyInstanceUID) for ds in got.values()}
        assert len(study_uids) == 1 and study_uids != {str(study[0].StudyInstanceUID)}
        assert len({str(ds.SeriesInstanceUID) for ds in got.values()}) == 2
        for ds in got.values():
            assert "Secret" not in str(ds.get("PatientName", "")) and "MRN-4711" not in str(ds.get("PatientID", ""))
            assert not ds.get("PatientBirthDate")
            assert ds.PatientIdentityRemoved == "YES"
            assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
            assert ds.SOPClassUID == study[0].SOPClassUID
        assert len({str(ds.PatientID) for ds in got.values()}) == 1
        by_number = {(int(ds.SeriesNumber), int(ds.InstanceNumber)): ds for ds in got.values()}
        for ds in sent:
            assert by_number[(int(ds.SeriesNumber), int(ds.InstanceNumber))].PixelData == ds.PixelData
            kept = pydicom.dcmread(io.BytesIO(pacs.object_bytes(str(ds.SOPInstanceUID))))
            assert kept.PatientName == "Secret^Person" and kept.SOPInstanceUID == ds.SOPInstanceUID

        # Sent again on demand: the same new UIDs, so the upstream still has four instances.
        r = requests.post(f"{pacs.url}/api/v1/admin/forward/research",
                          json={"studies": [str(study[0].StudyInstanceUID)]})
        assert r.status_code == 202 and r.json()["queued"] == 4, r.text
        wait_for(lambda: (s := outbox(pacs, "research"))["pending"] == 0 and s["delivered"] == 4, timeout=30)
        assert set(up.instances()) == set(got)
    finally:
        up.cleanup()


def test_deidentify_needs_a_key(make_pacs):
    """A rule that de-identifies without `forward.deidentify_key`: the server does not start,
    and says why."""
    pacs = make_pacs(env_for([{"name": "x", "kind": "dicomweb", "url": "http://127.0.0.1:9/dicom-web"}],
                             [{"destination": "x", "deidentify": "basic"}]), start=False)
    r = subprocess.run([binary(), "serve"], env=pacs.env, capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    assert "deidentify_key" in r.stderr, r.stderr


class Unavailable(http.server.BaseHTTPRequestHandler):
    """A DICOMweb service that is always out of order."""
    posts = 0
    authorization = None

    def do_POST(self):
        type(self).posts += 1
        type(self).authorization = self.headers.get("Authorization")
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(503)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(b"down for maintenance")

    def log_message(self, *args):
        pass


def test_max_attempts_then_failed_with_the_last_error(make_pacs):
    Unavailable.posts = 0
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Unavailable)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
        pacs = make_pacs(env_for([{"name": "flaky", "kind": "dicomweb", "url": url, "max_attempts": 2,
                                   "token": "t0ken"}],
                                 [{"destination": "flaky"}]))
        series = ct_series(n=2, size=32)
        assert pacs.stow(series).status_code == 200
        wait_for(lambda: outbox(pacs, "flaky")["failed"] == 2, timeout=30)
        failed = requests.get(f"{pacs.url}/api/v1/admin/forward/flaky/failed").json()["failed"]
        assert all(f["attempts"] == 2 and "gave up after 2 attempts" in f["last_error"]
                   and "503" in f["last_error"] and "down for maintenance" in f["last_error"] for f in failed), failed
        # Two attempts each, in one request or two (as the claims found them), with the token.
        assert 2 <= Unavailable.posts <= 4
        assert Unavailable.authorization == "Bearer t0ken"
    finally:
        server.shutdown()


def test_max_bytes_per_sec_paces_delivery(make_pacs, upstream_dimse):
    """A cap of 100 kB/s: about 300 kB of instances take about three seconds to go."""
    up = upstream_dimse
    pacs = make_pacs(env_for([dimse("thin", up, max_bytes_per_sec=100_000)], [{"destination": "thin"}]))
    series = ct_series(n=9, size=128)
    total = sum(len(to_bytes(ds)) for ds in series)
    started = time.time()
    assert pacs.stow(series).status_code == 200
    wait_for(lambda: outbox(pacs, "thin")["delivered"] == len(series), timeout=60)
    took = time.time() - started
    assert took >= 0.8 * total / 100_000, (took, total)
    assert set(up.instances()) == {str(ds.SOPInstanceUID) for ds in series}


@pytest.fixture
def upstream_dimse():
    require_orthanc()
    o = Orthanc().start()
    yield o
    o.cleanup()
