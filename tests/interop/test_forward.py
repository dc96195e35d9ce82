"""Store-and-forward to a central archive (Debian's Orthanc) over DIMSE: instances that
arrive by C-STORE, STOW-RS and the offline upload API while the archive is down wait in
the outbox, are reported pending with the connection error, and reach the archive byte for
byte (the data set; the file meta group is the receiver's) once it is back."""

import time
from types import SimpleNamespace

import pydicom
import pytest
import requests

from dicomgen import ct_series, to_bytes
from dimsetools import dataset_bytes, require_dcmtk, run
from orthanc import Orthanc, require_orthanc
from test_ops import metric
from test_uploads import meta_for, post_binary, post_meta


@pytest.fixture
def upstream():
    require_orthanc()
    o = Orthanc()
    yield o
    o.cleanup()


def forwarding_env(upstream, **dest):
    fields = {"name": "central", "kind": "dimse", "ae": upstream.aet, "host": "127.0.0.1",
              "port": upstream.dicom_port, "retry_initial_secs": 1, "retry_max_secs": 2, **dest}
    def value(v):
        if isinstance(v, bool):
            return str(v).lower()
        return str(v) if isinstance(v, int) else f'"{v}"'
    toml = ",".join(f"{k}={value(v)}" for k, v in fields.items())
    return {"PACS_FORWARD__DESTINATIONS": f"[{{{toml}}}]", "PACS_FORWARD__RULES": '[{destination="central"}]'}


def outbox(pacs, name="central"):
    r = requests.get(f"{pacs.url}/api/v1/admin/forward")
    assert r.status_code == 200, r.text
    return next(d for d in r.json()["destinations"] if d["destination"] == name)


def wait_for(predicate, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("timed out")


def test_delivered_after_the_upstream_comes_back(make_pacs, upstream, tmp_path):
    if require_dcmtk():
        pytest.skip("dcmtk is not installed")
    pacs = make_pacs(forwarding_env(upstream))
    by_dimse = ct_series(n=3, size=32, patient_name="Forward^Dimse")
    by_stow = ct_series(n=2, size=32, patient_name="Forward^Stow")
    [by_upload] = ct_series(n=1, size=32, patient_name="Forward^Upload")
    folder = tmp_path / "in"
    folder.mkdir()
    for ds in by_dimse:
        (folder / f"{ds.SOPInstanceUID}.dcm").write_bytes(to_bytes(ds))
    r = run("storescu", "-aec", pacs.ae_title, "+sd", "127.0.0.1", pacs.dimse_port, folder)
    assert r.returncode == 0, r.stderr
    assert pacs.stow(by_stow).status_code == 200
    data = to_bytes(by_upload)
    m = meta_for(data, by_upload)
    assert post_meta(pacs, m).status_code == 201
    assert post_binary(pacs, m["image_uuid"], data).status_code == 201
    sent = by_dimse + by_stow + [by_upload]

    # The archive is down: everything waits, with the reason.
    status = wait_for(lambda: (s := outbox(pacs))["last_error"] and s)
    assert status["pending"] == len(sent) and status["delivered"] == 0, status
    assert "refused" in status["last_error"].lower() or "connect" in status["last_error"].lower(), status
    assert status["oldest_pending_seconds"] is not None
    text = wait_for(lambda: (t := requests.get(f"{pacs.url}/metrics").text)
                    and metric(t, "pacs_forward_queue_depth", destination="central") == len(sent) and t)
    assert metric(text, "pacs_forward_oldest_pending_seconds", destination="central") is not None

    # It comes back: all delivered within seconds, as stored.
    upstream.start()
    wait_for(lambda: outbox(pacs)["delivered"] == len(sent), timeout=30)
    status = outbox(pacs)
    assert status["pending"] == 0 and status["failed"] == 0, status
    got = upstream.instances()
    assert set(got) == {str(ds.SOPInstanceUID) for ds in sent}
    for ds in sent:
        stored = pacs.object_bytes(str(ds.SOPInstanceUID))
        assert dataset_bytes(got[str(ds.SOPInstanceUID)]) == dataset_bytes(stored), ds.PatientName
    text = requests.get(f"{pacs.url}/metrics").text
    assert f'pacs_forward_sent_total{{destination="central",outcome="delivered"}} {len(sent)}' in text
    # The audit trail: per study, how many went where (names of patients are not in it).
    events = requests.get(f"{pacs.url}/api/v1/admin/audit", params={"action": "forward"}).json()["events"]
    by_study = {}
    for e in events:
        assert e["who"] == "central" and e["via"] == "forward" and "Forward" not in str(e)
        by_study[e["study_uid"]] = by_study.get(e["study_uid"], 0) + int(e["detail"].split()[0])
    assert by_study == {str(by_dimse[0].StudyInstanceUID): 3, str(by_stow[0].StudyInstanceUID): 2,
                        str(by_upload.StudyInstanceUID): 1}


def test_kill_9_during_delivery_loses_nothing(make_pacs, upstream):
    """The gateway is killed (SIGKILL) again and again while it delivers; after the last
    restart every instance is upstream, as stored."""
    upstream.start()
    pacs = make_pacs({**forwarding_env(upstream, batch=4), "PACS_FORWARD__LEASE_SECS": "2"})
    series = ct_series(n=40, size=128, patient_name="Forward^Crash")
    for i in range(0, len(series), 10):
        assert pacs.stow(series[i:i + 10]).status_code == 200
    for pause in [0.05, 0.2, 0.1, 0.3]:
        time.sleep(pause)
        pacs.kill()
        pacs.start()
    wait_for(lambda: outbox(pacs)["delivered"] == len(series), timeout=60)
    got = upstream.instances()
    assert set(got) == {str(ds.SOPInstanceUID) for ds in series}
    for ds in series:
        assert dataset_bytes(got[str(ds.SOPInstanceUID)]) == dataset_bytes(pacs.object_bytes(str(ds.SOPInstanceUID)))


def test_two_processes_share_one_outbox(make_pacs, backend, upstream):
    """Two gateways on one PostgreSQL database and one bucket: every instance is delivered,
    and no job is claimed by both (each is delivered once, in one attempt)."""
    if backend.name != "postgres-s3":
        pytest.skip("several processes share PostgreSQL + S3")
    upstream.start()
    a = make_pacs(forwarding_env(upstream, batch=3))
    shared = {k: a.env[k] for k in ("PACS_INDEX__URL", "PACS_STORAGE__S3__BUCKET")}
    b = make_pacs({**forwarding_env(upstream, batch=3), **shared})
    series = ct_series(n=30, size=64, patient_name="Forward^Shared")
    for i in range(0, len(series), 5):
        target = a if i % 10 == 0 else b
        assert target.stow(series[i:i + 5]).status_code == 200
    wait_for(lambda: outbox(a)["delivered"] == len(series), timeout=60)
    assert set(upstream.instances()) == {str(ds.SOPInstanceUID) for ds in series}
    sent = [requests.get(f"{p.url}/metrics").text for p in (a, b)]
    total = sum(metric(t, "pacs_forward_sent_total", destination="central", outcome="delivered") or 0 for t in sent)
    assert total == len(series), sent


def test_a_refused_class_fails_alone_and_is_retried(make_pacs, tmp_path):
    """An archive that refuses one SOP class: those jobs fail with the reason, the others
    are delivered; once the archive takes the class, a retry delivers them. A batch of
    refused classes alone (the archive then accepts no presentation context at all, so
    there is no association) fails the same way, and is not taken for an outage."""
    require_orthanc()
    strict = Orthanc(UnknownSopClassAccepted=False)
    try:
        strict.start()
        pacs = make_pacs(forwarding_env(strict))
        ct = ct_series(n=3, size=32, patient_name="Forward^Known")

        def private(ds):
            ds.SOPClassUID = "1.2.826.0.1.3680043.8.498.1.4242"
            ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        odd = ct_series(n=2, size=32, patient_name="Forward^Unknown", extra=private)
        assert pacs.stow(odd).status_code == 200
        wait_for(lambda: outbox(pacs)["failed"] == 2, timeout=30)
        assert outbox(pacs)["pending"] == 0
        assert pacs.stow(ct).status_code == 200
        wait_for(lambda: (s := outbox(pacs))["delivered"] == 3 and s["failed"] == 2, timeout=30)
        failed = requests.get(f"{pacs.url}/api/v1/admin/forward/central/failed").json()["failed"]
        assert sorted(f["sop_instance_uid"] for f in failed) == sorted(str(d.SOPInstanceUID) for d in odd)
        assert all("1.2.826.0.1.3680043.8.498.1.4242" in f["last_error"] for f in failed), failed
        assert set(strict.instances()) == {str(d.SOPInstanceUID) for d in ct}

        # The archive is reconfigured to take the class; a retry sends the two.
        strict.stop()
        strict.reconfigure(UnknownSopClassAccepted=True)
        strict.start()
        r = requests.post(f"{pacs.url}/api/v1/admin/forward/central/retry")
        assert r.status_code == 200 and r.json()["queued"] == 2, r.text
        wait_for(lambda: outbox(pacs)["delivered"] == 5, timeout=30)
        assert set(strict.instances()) == {str(d.SOPInstanceUID) for d in ct + odd}
        assert requests.post(f"{pacs.url}/api/v1/admin/forward/nowhere/retry").status_code == 404
    finally:
        strict.cleanup()


def test_studies_queued_on_demand(make_pacs, upstream):
    """No rule: nothing goes by itself; an admin queues a study, and again after delivery."""
    upstream.start()
    env = forwarding_env(upstream)
    env.pop("PACS_FORWARD__RULES")
    pacs = make_pacs(env)
    study = ct_series(n=3, size=32)
    assert pacs.stow(study).status_code == 200
    time.sleep(1)
    assert outbox(pacs)["pending"] == 0 and upstream.instances() == {}
    url = f"{pacs.url}/api/v1/admin/forward/central"
    r = requests.post(url, json={"studies": [str(study[0].StudyInstanceUID)]})
    assert r.status_code == 202 and r.json()["queued"] == 3, r.text
    wait_for(lambda: outbox(pacs)["delivered"] == 3, timeout=30)
    assert set(upstream.instances()) == {str(d.SOPInstanceUID) for d in study}
    # Again: sent again (the archive keeps one copy).
    r = requests.post(url, json={"studies": [str(study[0].StudyInstanceUID)]})
    assert r.status_code == 202 and r.json()["queued"] == 3
    wait_for(lambda: (s := outbox(pacs))["pending"] == 0 and s["delivered"] == 3, timeout=30)
    # Refusals.
    assert requests.post(url, json={"studies": ["1.2.3.999"]}).status_code == 404
    assert requests.post(url, json={"studies": ["not a uid"]}).status_code == 400
    assert requests.post(url, json={"study": "1.2.3"}).status_code == 400
    assert requests.post(f"{pacs.url}/api/v1/admin/forward/nowhere", json={"studies": ["1.2.3"]}).status_code == 404


def test_forwarding_over_tls(make_pacs, tmp_path):
    """A destination reached over DICOM TLS with our client certificate (dcmtk's storescp
    with +tls, which requires one): delivered, as stored."""
    from dimsetools import StoreSCP
    from tlstools import Pki
    if require_dcmtk():
        pytest.skip("dcmtk is not installed")
    pki = Pki(tmp_path / "pki")
    received = tmp_path / "received"
    scp = StoreSCP(received, ae="ARCHIVE", tls=(pki.key("server"), pki.pem("server"), pki.pem("ca")))
    try:
        peer = SimpleNamespace(aet=scp.ae, dicom_port=scp.port)
        pacs = make_pacs(forwarding_env(peer, tls=True, ca_file=pki.pem("ca"), cert_file=pki.pem("client"),
                                        key_file=pki.key("client")))
        series = ct_series(n=4, size=32, patient_name="Forward^Tls")
        assert pacs.stow(series).status_code == 200
        wait_for(lambda: outbox(pacs)["delivered"] == 4, timeout=30)
        got = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): f.read_bytes()
               for f in received.iterdir()}
        assert set(got) == {str(ds.SOPInstanceUID) for ds in series}
        for ds in series:
            assert dataset_bytes(got[str(ds.SOPInstanceUID)]) == dataset_bytes(pacs.object_bytes(str(ds.SOPInstanceUID)))
    finally:
        scp.stop()
