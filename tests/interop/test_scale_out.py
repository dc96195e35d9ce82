"""Scale-out: two pacs-lite processes on one PostgreSQL database and one S3 bucket (s3s-fs).
Whatever one process stores, the other serves; the offline upload flow hops between them;
the same instance stored through both at once is kept once; tokens and signed URLs issued
by one are honoured by the other. No process keeps state the other needs."""

import hashlib
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from dicomweb_client.api import DICOMwebClient

import authtools
from authtools import KEYS, bearer
from dicomgen import ct_series, to_bytes

API = "/api/v1/radiology"


@pytest.fixture
def pair(make_pacs, backend):
    if backend.name != "postgres-s3":
        pytest.skip("scale-out shares one PostgreSQL database and one S3 bucket")
    a = make_pacs(authtools.env())
    shared = {k: a.env[k] for k in ("PACS_INDEX__URL", "PACS_STORAGE__S3__BUCKET")}
    b = make_pacs(authtools.env(**shared))
    return a, b


def test_two_processes_share_everything(pair):
    a, b = pair
    series = ct_series(n=5)
    assert a.stow(series, headers=bearer(KEYS["uploader"])).status_code == 200
    client_b = DICOMwebClient(b.dicomweb, headers=bearer(KEYS["viewer"]))
    assert len(client_b.search_for_instances(search_filters={"StudyInstanceUID": series[0].StudyInstanceUID})) == 5
    got = client_b.retrieve_study(str(series[0].StudyInstanceUID))
    assert sorted(str(d.SOPInstanceUID) for d in got) == sorted(str(d.SOPInstanceUID) for d in series)

    # Offline upload: metadata to A, first part to A, the rest to B, ACK from A.
    [ds] = ct_series(n=1, size=128)
    data = to_bytes(ds)
    m = {"image_uuid": str(uuid.uuid4()), "radiology_order_id": "ORD-SO", "filename": "x.dcm",
         "file_size": len(data), "mime_type": "application/dicom", "checksum": hashlib.sha256(data).hexdigest(),
         "image_metadata": {"study_uid": str(ds.StudyInstanceUID), "series_uid": str(ds.SeriesInstanceUID),
                            "image_uid": str(ds.SOPInstanceUID)}}
    up = bearer(KEYS["uploader"])
    assert requests.post(f"{a.url}{API}/offline-images/upload-metadata/", json=m, headers=up).status_code == 201
    half = len(data) // 2
    r = requests.post(f"{a.url}{API}/offline-images/upload-binary/", headers=up,
                      files=[("image_uuid", (None, m["image_uuid"])), ("offset", (None, "0")), ("file", ("x", data[:half]))])
    assert r.status_code == 202
    assert requests.get(f"{b.url}{API}/offline-images/{m['image_uuid']}/", headers=up).json()["received"] == half
    r = requests.post(f"{b.url}{API}/offline-images/upload-binary/", headers=up,
                      files=[("image_uuid", (None, m["image_uuid"])), ("offset", (None, str(half))),
                             ("file", ("x", data[half:]))])
    assert r.status_code == 201, r.text
    r = requests.post(f"{a.url}{API}/offline-images/acknowledge/", json={"image_uuid": m["image_uuid"]}, headers=up)
    assert r.status_code == 200 and r.json()["sha256"] == hashlib.sha256(data).hexdigest()

    # A viewer token and a signed URL issued by A work on B.
    study = str(series[0].StudyInstanceUID)
    info = requests.get(f"{a.url}{API}/studies/{study}/viewer-url/", headers=bearer(KEYS["viewer"])).json()
    assert requests.get(f"{b.dicomweb}/studies/{study}/metadata", headers=bearer(info["token"])).status_code == 200
    images = requests.get(f"{a.url}{API}/studies/{study}/images/", headers=bearer(KEYS["viewer"])).json()
    url = images["series"][0]["images"][0]["url"].replace(a.url, b.url)
    assert requests.get(url).status_code == 200


def test_the_same_instance_stored_through_both_at_once(pair):
    a, b = pair
    instances = ct_series(n=20, size=32)

    def send(args):
        pacs, ds = args
        return pacs.stow([ds], headers=bearer(KEYS["uploader"]))

    jobs = [(p, ds) for ds in instances for p in (a, b)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(send, jobs))
    assert all(r.status_code == 200 for r in answers), [r.text for r in answers if r.status_code != 200][:2]
    assert a.count("instances") == 20
    rows = a.instance_rows()
    assert len({r[0] for r in rows}) == 20
    # One object per instance in the bucket, and it is the instance's bytes.
    assert len([f for f in a.object_files() if f.suffix == ".dcm"]) == 20
    for ds in instances[:3]:
        assert a.object_bytes(str(ds.SOPInstanceUID)) == to_bytes(ds)


def test_cstore_on_one_cfind_on_the_other(pair):
    from pydicom.dataset import Dataset
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage, StudyRootQueryRetrieveInformationModelFind
    a, b = pair
    series = ct_series(n=3, patient_id="SCALE-OUT")
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", a.dimse_port, ae_title=a.ae_title)
    for ds in series:
        assert assoc.send_c_store(ds).Status == 0
    assoc.release()
    ae = AE(ae_title="WORKSTATION")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", b.dimse_port, ae_title=b.ae_title)
    q = Dataset()
    q.QueryRetrieveLevel = "IMAGE"
    q.StudyInstanceUID = series[0].StudyInstanceUID
    q.SOPInstanceUID = ""
    found = [i.SOPInstanceUID for s, i in assoc.send_c_find(q, StudyRootQueryRetrieveInformationModelFind)
             if s.Status == 0xFF00]
    assoc.release()
    assert sorted(found) == sorted(str(d.SOPInstanceUID) for d in series)
