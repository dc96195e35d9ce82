"""Admin operations: deleting studies, series and instances (admin only; objects and rows
go, recorded in the audit trail and the change feed), the change feed, and the audit trail
of who stored, read, queried or deleted which study (HTTP and DIMSE)."""

import pytest
import requests
from dicomweb_client.api import DICOMwebClient

import authtools
from authtools import KEYS, bearer
from dicomgen import ct_series


@pytest.fixture
def secured(make_pacs):
    return make_pacs(authtools.env())


def test_delete_levels_changefeed_and_audit(secured):
    pacs = secured
    up = DICOMwebClient(pacs.dicomweb, headers=bearer(KEYS["uploader"]))
    a = ct_series(n=3)
    a2 = ct_series(n=2, study_uid=str(a[0].StudyInstanceUID), series_number=2)
    b = ct_series(n=2)
    up.store_instances(a + a2 + b)
    A, B = str(a[0].StudyInstanceUID), str(b[0].StudyInstanceUID)
    assert pacs.count("instances") == 7
    feed = requests.get(f"{pacs.dicomweb}/changefeed", headers=bearer(KEYS["viewer"])).json()
    assert [e["Action"] for e in feed] == ["create"] * 7 and [e["Sequence"] for e in feed] == sorted(e["Sequence"] for e in feed)
    first_a = next(e for e in feed if e["SopInstanceUid"] == str(a[0].SOPInstanceUID))
    assert first_a["State"] == "current" and first_a["Metadata"]["0020000D"]["Value"] == [A]

    # Only admins delete.
    one = f"{pacs.dicomweb}/studies/{A}/series/{a[0].SeriesInstanceUID}/instances/{a[0].SOPInstanceUID}"
    for who in ("viewer", "uploader"):
        assert requests.delete(one, headers=bearer(KEYS[who])).status_code == 403
    assert requests.delete(one, headers=bearer(KEYS["admin"])).status_code == 204
    assert requests.delete(one, headers=bearer(KEYS["admin"])).status_code == 404
    assert pacs.count("instances") == 6
    # A series, then the whole study.
    r = requests.delete(f"{pacs.dicomweb}/studies/{A}/series/{a2[0].SeriesInstanceUID}", headers=bearer(KEYS["admin"]))
    assert r.status_code == 204
    study = requests.get(f"{pacs.dicomweb}/studies?StudyInstanceUID={A}", headers=bearer(KEYS["viewer"])).json()
    assert study[0]["00201208"]["Value"] == [2] and study[0]["00201206"]["Value"] == [1]
    assert requests.delete(f"{pacs.dicomweb}/studies/{A}", headers=bearer(KEYS["admin"])).status_code == 204
    assert requests.get(f"{pacs.dicomweb}/studies?StudyInstanceUID={A}", headers=bearer(KEYS["viewer"])).json() == []
    assert pacs.count("instances") == 2 and pacs.count("studies") == 1 and pacs.count("series") == 1
    # The objects are gone too; B is intact.
    assert len([f for f in pacs.object_files() if f.suffix == ".dcm"]) == 2
    assert len(DICOMwebClient(pacs.dicomweb, headers=bearer(KEYS["viewer"])).retrieve_study(B)) == 2
    assert pacs.cli("verify", "--json").returncode == 0

    # The change feed follows: 7 creates, 5 deletes; deleted instances are marked.
    feed = requests.get(f"{pacs.dicomweb}/changefeed?offset=0&limit=100", headers=bearer(KEYS["viewer"])).json()
    assert [e["Action"] for e in feed] == ["create"] * 7 + ["delete"] * 5
    states = {e["SopInstanceUid"]: e["State"] for e in feed if e["Action"] == "create"}
    assert states[str(a[0].SOPInstanceUID)] == "deleted" and states[str(b[0].SOPInstanceUID)] == "current"
    latest = requests.get(f"{pacs.dicomweb}/changefeed/latest", headers=bearer(KEYS["viewer"])).json()
    assert latest["Sequence"] == feed[-1]["Sequence"] and latest["Action"] == "delete"
    page = requests.get(f"{pacs.dicomweb}/changefeed?offset={feed[5]['Sequence']}&limit=2&includeMetadata=false",
                        headers=bearer(KEYS["viewer"])).json()
    assert [e["Sequence"] for e in page] == [feed[6]["Sequence"], feed[7]["Sequence"]] and "Metadata" not in page[0]
    # Re-storing a deleted instance: a new create, the old entry becomes "replaced".
    up.store_instances([a[0]])
    feed = requests.get(f"{pacs.dicomweb}/changefeed?limit=100", headers=bearer(KEYS["viewer"])).json()
    entries = [e for e in feed if e["SopInstanceUid"] == str(a[0].SOPInstanceUID)]
    assert [(e["Action"], e["State"]) for e in entries] == [("create", "replaced"), ("delete", "replaced"),
                                                            ("create", "current")]

    # The audit trail, for admins only.
    assert requests.get(f"{pacs.url}/api/v1/admin/audit", headers=bearer(KEYS["viewer"])).status_code == 403
    events = requests.get(f"{pacs.url}/api/v1/admin/audit?study={A}", headers=bearer(KEYS["admin"])).json()["events"]
    actions = [(e["action"], e["who"]) for e in events]
    assert ("store", "uploader-key") in actions
    assert ("query", "viewer-key") in actions
    assert actions.count(("delete", "admin-key")) == 3
    assert all(e["address"] == "127.0.0.1" for e in events)
    reads = requests.get(f"{pacs.url}/api/v1/admin/audit?study={B}&action=read", headers=bearer(KEYS["admin"])).json()
    assert [e["who"] for e in reads["events"]] == ["viewer-key"]


def test_dimse_is_audited(secured):
    from pydicom.dataset import Dataset
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage, StudyRootQueryRetrieveInformationModelFind
    pacs = secured
    series = ct_series(n=2)
    ae = AE(ae_title="CT_SCANNER")
    ae.add_requested_context(CTImageStorage)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", pacs.dimse_port, ae_title=pacs.ae_title)
    for ds in series:
        assert assoc.send_c_store(ds).Status == 0
    q = Dataset()
    q.QueryRetrieveLevel = "STUDY"
    q.StudyInstanceUID = ""
    list(assoc.send_c_find(q, StudyRootQueryRetrieveInformationModelFind))
    assoc.release()
    events = requests.get(f"{pacs.url}/api/v1/admin/audit?who=CT_SCANNER", headers=bearer(KEYS["admin"])).json()["events"]
    assert [(e["action"], e["via"]) for e in events] == [("store", "c-store"), ("store", "c-store"), ("query", "dimse")]
    assert events[0]["study_uid"] == str(series[0].StudyInstanceUID)
