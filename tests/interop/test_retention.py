"""Local cache mode (`[retention]`): a study delivered everywhere its forwarding rules send
it may be deleted here once unused for `delete_after_forwarded`, or least recently used
first while the archive is over `max_bytes`; an undelivered study — or one sent nowhere —
never is. `pacs-lite retention --dry-run` lists what would go; deletions go through the
index's delete (change feed) and are in the audit trail."""

import json
import time

import pytest
import requests

from dicomgen import ct_series
from orthanc import Orthanc, require_orthanc
from pacs import free_port
from test_forward import outbox, wait_for
from test_forward_web import dimse, env_for


@pytest.fixture
def upstream():
    require_orthanc()
    o = Orthanc().start()
    yield o
    o.cleanup()


def stored_studies(pacs):
    r = requests.get(f"{pacs.dicomweb}/studies")
    assert r.status_code in (200, 204), r.text
    return {s["0020000D"]["Value"][0] for s in (r.json() if r.status_code == 200 else [])}


def plan(pacs, **settings):
    env = {f"PACS_RETENTION__{k.upper()}": str(v) for k, v in settings.items()}
    saved = dict(pacs.env)
    pacs.env.update(env)
    try:
        r = pacs.cli("retention", "--dry-run", "--json")
    finally:
        pacs.env = saved
    assert r.returncode == 0, r.stderr
    return [(s["study_uid"], reason) for s, reason in json.loads(r.stdout)["studies"]]


def test_only_delivered_studies_go(make_pacs, upstream):
    pacs = make_pacs(env_for([dimse("central", upstream)], [{"destination": "central", "modality": "CT"}]))
    ct_a = ct_series(n=2, size=32, patient_name="Keep^Delivered")
    ct_b = ct_series(n=2, size=32, patient_name="Keep^Read")
    mr = ct_series(n=2, size=32, modality="MR", patient_name="Keep^Local")
    for s in (ct_a, ct_b, mr):
        assert pacs.stow(s).status_code == 200
    wait_for(lambda: outbox(pacs)["delivered"] == 4, timeout=30)
    a, b, m = (str(s[0].StudyInstanceUID) for s in (ct_a, ct_b, mr))

    # Nothing is old enough yet; over max_bytes, the delivered ones go, never the MR.
    assert plan(pacs, delete_after_forwarded="1h") == []
    assert {uid for uid, _ in plan(pacs, max_bytes=1)} == {a, b}
    assert all(reason == "over_max_bytes" for _, reason in plan(pacs, max_bytes=1))

    # B is read; A is not. After a while only A is unused long enough.
    time.sleep(2.5)
    assert requests.get(f"{pacs.dicomweb}/studies/{b}/metadata").status_code == 200
    time.sleep(1)  # the audit trail is written in the background
    assert plan(pacs, delete_after_forwarded="2s") == [(a, "unused")]

    # Carried out: A is gone (rows, objects), the others stay; the audit trail says why.
    before = len(pacs.object_files())
    saved = dict(pacs.env)
    pacs.env["PACS_RETENTION__DELETE_AFTER_FORWARDED"] = "2s"
    r = pacs.cli("retention")
    pacs.env = saved
    assert r.returncode == 0, r.stderr
    assert stored_studies(pacs) == {b, m}
    assert len(pacs.object_files()) == before - 2
    events = requests.get(f"{pacs.url}/api/v1/admin/audit", params={"action": "delete"}).json()["events"]
    assert [(e["who"], e["study_uid"]) for e in events] == [("retention", a)], events
    feed = requests.get(f"{pacs.dicomweb}/changefeed?offset=0&limit=100").json()
    assert [e["SopInstanceUid"] for e in feed if e["Action"] == "delete"] == [str(d.SOPInstanceUID) for d in ct_a]
    assert pacs.cli("verify", "--json").returncode == 0


def test_commitment_gates_purge(make_pacs):
    """With storage commitment required, a study the peer stored but never confirmed is
    not delivered and never purged; once confirmed, it is purged after the retention
    time by the server itself."""
    require_orthanc()
    up = Orthanc()
    pacs = make_pacs(env_for([dimse("central", up, commitment=True, commitment_timeout_secs=120)],
                             [{"destination": "central"}],
                             PACS_RETENTION__DELETE_AFTER_FORWARDED="1s", PACS_RETENTION__INTERVAL_SECS="1"))
    up.reconfigure(DicomModalities={"gateway": [pacs.ae_title, "127.0.0.1", free_port()]})
    try:
        up.start()
        unconfirmed = ct_series(n=2, size=32)
        assert pacs.stow(unconfirmed).status_code == 200
        wait_for(lambda: outbox(pacs)["awaiting_commitment"] == 2, timeout=30)
        time.sleep(4)
        assert stored_studies(pacs) == {str(unconfirmed[0].StudyInstanceUID)}
        assert outbox(pacs)["delivered"] == 0

        up.stop()
        up.reconfigure(DicomModalities={"gateway": [pacs.ae_title, "127.0.0.1", pacs.dimse_port]})
        up.start()
        confirmed = ct_series(n=2, size=32)
        assert pacs.stow(confirmed).status_code == 200
        wait_for(lambda: outbox(pacs)["delivered"] >= 2, timeout=30)
        # The confirmed study goes; the unconfirmed one stays (its report is still awaited).
        wait_for(lambda: str(confirmed[0].StudyInstanceUID) not in stored_studies(pacs), timeout=30)
        assert stored_studies(pacs) == {str(unconfirmed[0].StudyInstanceUID)}
        assert outbox(pacs)["awaiting_commitment"] == 2
    finally:
        up.cleanup()
