"""Forwarding with storage commitment (PS3.4 Annex J) to Debian's Orthanc: an instance is
delivered only when Orthanc's N-EVENT-REPORT (on a new association to our listener)
confirms it; without a report it is never counted delivered (and is sent again after
`commitment_timeout_secs`)."""

import time

import requests

from dicomgen import ct_series
from orthanc import Orthanc, require_orthanc
from pacs import free_port
from test_forward import outbox, wait_for
from test_forward_web import dimse, env_for
from test_ops import metric


def test_delivered_only_once_the_peer_commits(make_pacs):
    require_orthanc()
    up = Orthanc()
    pacs = make_pacs(env_for([dimse("central", up, commitment=True, commitment_timeout_secs=10)],
                             [{"destination": "central"}]))
    up.reconfigure(DicomModalities={"gateway": [pacs.ae_title, "127.0.0.1", free_port()]})
    try:
        up.start()
        series = ct_series(n=3, size=32, patient_name="Commit^Me")
        assert pacs.stow(series).status_code == 200

        # Orthanc stores them, but its report cannot reach us: never delivered; sent again
        # once the wait is over.
        wait_for(lambda: len(up.instances()) == 3, timeout=30)
        s = wait_for(lambda: (s := outbox(pacs))["awaiting_commitment"] + s["pending"] == 3 and s)
        time.sleep(5)
        s = outbox(pacs)
        assert s["delivered"] == 0 and s["failed"] == 0, s
        assert s["awaiting_commitment"] + s["pending"] == 3, s

        # Orthanc learns where we are: the next report comes through.
        up.stop()
        up.reconfigure(DicomModalities={"gateway": [pacs.ae_title, "127.0.0.1", pacs.dimse_port]})
        up.start()
        wait_for(lambda: outbox(pacs)["delivered"] == 3, timeout=60)
        s = outbox(pacs)
        assert s["awaiting_commitment"] == 0 and s["pending"] == 0, s
        # Counted and audited when confirmed (sent, they counted as "stored").
        text = requests.get(f"{pacs.url}/metrics").text
        assert metric(text, "pacs_forward_sent_total", destination="central", outcome="delivered") == 3
        assert metric(text, "pacs_forward_sent_total", destination="central", outcome="stored") >= 3
        events = requests.get(f"{pacs.url}/api/v1/admin/audit", params={"action": "forward"}).json()["events"]
        assert sum(int(e["detail"].split()[0]) for e in events) == 3, events
        assert all(e["who"] == "central" and "committed" in e["detail"] for e in events), events
    except AssertionError:
        print((pacs.dir / "server.log").read_text()[-6000:])
        raise
    finally:
        up.cleanup()
