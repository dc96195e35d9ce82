"""Operations: Prometheus metrics (ingest by entry point and outcome, DIMSE associations,
HTTP latency by service, pending uploads), authenticated like everything else; and logs at
info level that carry no patient names."""

import hashlib
import re
import uuid

import requests
from dicomweb_client.api import DICOMwebClient

import authtools
from authtools import KEYS, bearer
from dicomgen import ct_series, to_bytes
from pacs import multipart, stow_content_type


def metric(text, name, **labels):
    total = 0.0
    found = False
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r"^(\w+)(\{[^}]*\})?\s+(\S+)$", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(m.group(3))
            found = True
    return total if found else None


def test_metrics(make_pacs):
    pacs = make_pacs(authtools.env(PACS_LOG__FILTER="info"))
    assert requests.get(f"{pacs.url}/metrics").status_code == 401
    name = "Secretname^Verysecret"
    series = ct_series(n=3, patient_name=name)
    client = DICOMwebClient(pacs.dicomweb, headers=bearer(KEYS["uploader"]))
    client.store_instances(series[:2])
    client.store_instances(series[:1])  # again: already stored
    client.search_for_studies()
    client.retrieve_study(str(series[0].StudyInstanceUID))
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", pacs.dimse_port, ae_title=pacs.ae_title)
    assert assoc.send_c_store(series[2]).Status == 0
    assoc.release()
    data = b"x" * 100
    requests.post(f"{pacs.url}/api/v1/radiology/offline-images/upload-metadata/", headers=bearer(KEYS["uploader"]),
                  json={"image_uuid": str(uuid.uuid4()), "radiology_order_id": "O1", "filename": "f", "file_size": 100,
                        "mime_type": "application/dicom", "checksum": hashlib.sha256(data).hexdigest(),
                        "image_metadata": {"study_uid": "1.2.3", "series_uid": "1.2.3.4", "image_uid": "1.2.3.4.5"}})
    r = requests.get(f"{pacs.url}/metrics", headers=bearer(KEYS["viewer"]))
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain")
    t = r.text
    assert metric(t, "pacs_ingest_total", entry="stow", outcome="stored") == 2
    assert metric(t, "pacs_ingest_total", entry="stow", outcome="already_stored") == 1
    assert metric(t, "pacs_ingest_total", entry="c-store", outcome="stored") == 1
    stowed = {str(d.SOPInstanceUID) for d in series[:2]}
    assert metric(t, "pacs_ingest_bytes_total", entry="stow") == sum(r[2] for r in pacs.instance_rows() if r[0] in stowed)
    assert metric(t, "pacs_ingest_seconds_count", entry="c-store") == 1
    assert metric(t, "pacs_dimse_associations_total", result="established") == 1
    assert metric(t, "pacs_dimse_associations_active") == 0
    assert metric(t, "pacs_http_request_seconds_count", service="qido") >= 1
    assert metric(t, "pacs_http_request_seconds_count", service="wado") >= 1
    assert metric(t, "pacs_http_request_seconds_count", service="stow") >= 2
    assert metric(t, "pacs_uploads_pending") == 1
    # Info-level logs name instances and studies, never patients.
    log = pacs.server_log()
    assert "stored" in log and str(series[0].SOPInstanceUID) in log
    assert "Secretname" not in log and "Verysecret" not in log
    # Nor secrets.
    for key in KEYS.values():
        assert key not in log
    assert authtools.SIGNING_KEY not in log and authtools.IDP_SECRET not in log


def test_rejections_are_counted(make_pacs):
    """Every rejected ingest counts, whatever stage refused it: a STOW-RS body cut off in the
    middle of its part, and a C-STORE larger than ingest.max_instance_bytes (refused while
    spooling), each move pacs_ingest_total{outcome="rejected"} of their entry point by one."""
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage

    pacs = make_pacs({"PACS_INGEST__MAX_INSTANCE_BYTES": "100000"})

    def rejected():
        text = requests.get(f"{pacs.url}/metrics").text
        return {entry: metric(text, "pacs_ingest_total", entry=entry, outcome="rejected") or 0
                for entry in ("stow", "c-store")}

    before = rejected()
    body, boundary = multipart([to_bytes(ct_series(n=1)[0])])
    r = pacs.post("/studies", body[: len(body) // 2], stow_content_type(boundary))
    assert r.status_code == 400 and "truncated" in r.json()["message"], r.text
    big = ct_series(n=1, size=512)[0]   # 512 KiB of pixels
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", pacs.dimse_port, ae_title=pacs.ae_title)
    assert assoc.send_c_store(big).Status == 0xA700   # out of resources: over the limit
    assoc.release()
    assert pacs.count("instances") == 0
    after = rejected()
    assert after == {"stow": before["stow"] + 1, "c-store": before["c-store"] + 1}, (before, after)


def test_shutdown_closes_stalled_requests_after_the_grace_period(make_pacs):
    """At SIGTERM the server stops accepting and lets requests in progress finish for
    http.shutdown_grace_secs; a client that stalls mid-body does not hold it up longer."""
    import signal
    import socket
    import time

    pacs = make_pacs({"PACS_HTTP__SHUTDOWN_GRACE_SECS": "2"})
    port = int(pacs.url.rsplit(":", 1)[1])
    stalled = socket.create_connection(("127.0.0.1", port))
    head = (f"POST /dicom-web/studies HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: {stow_content_type()}\r\nContent-Length: 100000\r\n\r\n")
    stalled.sendall(head.encode() + b"--" + b"x" * 100)   # and nothing more
    time.sleep(0.5)
    started = time.monotonic()
    pacs.proc.send_signal(signal.SIGTERM)
    code = pacs.proc.wait(30)
    took = time.monotonic() - started
    stalled.close()
    assert code == 0, pacs.server_log()[-2000:]
    assert 1.5 <= took < 10, took   # waited for the request, but not for ever
    assert "grace period" in pacs.server_log()
