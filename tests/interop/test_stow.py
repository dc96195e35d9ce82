"""STOW-RS against the real server, with the Python dicomweb-client and raw HTTP."""

import hashlib
import json

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.uid import generate_uid

from dicomgen import ct_series, sample, sample_bytes, to_bytes
from pacs import multipart

SAMPLES = [
    "CT_small.dcm",            # explicit VR little endian CT
    "MR_small.dcm",            # MR
    "JPEG2000.dcm",            # JPEG 2000 compressed
    "SC_rgb_rle_2frame.dcm",   # RLE, multi-frame
    "rtdose.dcm",              # implicit VR, multi-frame RT Dose
    "image_dfl.dcm",           # deflated explicit VR little endian
    "ExplVR_BigEnd.dcm",       # explicit VR big endian
    "test-SR.dcm",             # structured report (no pixel data)
    "rtplan.dcm",              # RT plan (no pixel data)
    "JPGExtended.dcm",         # JPEG extended
]


def as_json(resp):
    return resp.to_json_dict() if isinstance(resp, pydicom.Dataset) else resp


def referenced(resp_json):
    resp_json = as_json(resp_json)
    return [i["00081155"]["Value"][0] for i in resp_json.get("00081199", {}).get("Value", [])]


def failed(resp_json):
    resp_json = as_json(resp_json)
    return [
        (i.get("00081155", {}).get("Value", [None])[0], i["00081197"]["Value"][0])
        for i in resp_json.get("00081198", {}).get("Value", [])
    ]


def test_dicomweb_client_stores_real_samples(pacs):
    client = DICOMwebClient(pacs.dicomweb)
    datasets = [sample(name) for name in SAMPLES]
    resp = client.store_instances(datasets)
    stored = referenced(resp)
    assert sorted(stored) == sorted(str(ds.SOPInstanceUID) for ds in datasets)
    by_sop = {str(ds.SOPInstanceUID): ds for ds in datasets}
    # dicomweb-client sends "Host: 127.0.0.1", without the port: the URLs are built from it.
    assert client.host == "127.0.0.1"
    for item in as_json(resp)["00081199"]["Value"]:
        ds = by_sop[item["00081155"]["Value"][0]]
        assert item["00081190"]["Value"][0] == (f"http://127.0.0.1/dicom-web/studies/{ds.StudyInstanceUID}"
                                                f"/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}")
        assert item["00081150"]["Value"][0] == ds.SOPClassUID
    assert pacs.count("instances") == len(SAMPLES)
    # Multi-frame and compressed samples have frame tables; SR and RT plan do not need one.
    rows = {r[0]: r for r in pacs.instance_rows()}
    assert set(rows) == set(stored)


def test_generated_utf8_series_and_byte_identical_storage(pacs):
    names = ["Müller^José", "Иванов^Иван", "山田^太郎=やまだ^たろう"]
    sent = []
    for n, name in enumerate(names):
        for ds in ct_series(n=4, patient_name=name, patient_id=f"PID{n}", seed=n):
            sent.append(ds)
    client = DICOMwebClient(pacs.dicomweb)
    resp = client.store_instances(sent)
    assert len(referenced(resp)) == 12 and not failed(resp)
    assert pacs.count("studies") == 3 and pacs.count("series") == 3
    study = pacs.study_row(str(sent[0].StudyInstanceUID))
    assert study["num_instances"] == 4 and study["num_series"] == 1 and study["modalities"] == "CT"
    assert study["patient_name"] == "Müller^José" and study["patient_name_key"] == "muller^jose"
    # Raw bytes: what is stored is exactly what was sent.
    ds = ct_series(n=1, patient_name="Ødegård^Åse")[0]
    raw = to_bytes(ds)
    r = pacs.post("/studies", raw, "application/dicom")
    assert r.status_code == 200, r.text
    assert pacs.object_bytes(str(ds.SOPInstanceUID)) == raw
    rows = {r[0]: r for r in pacs.instance_rows()}
    assert rows[str(ds.SOPInstanceUID)][1] == hashlib.sha256(raw).hexdigest()
    assert rows[str(ds.SOPInstanceUID)][2] == len(raw)


@pytest.mark.parametrize("ctype", [
    'multipart/related; type="application/dicom"; boundary="{b}"',
    "multipart/related; type=application/dicom; boundary={b}",
    "multipart/related; boundary={b}",
    'Multipart/Related; boundary={b}; type="application/dicom"',
])
def test_multipart_forms_and_study_url(pacs, ctype):
    series = ct_series(n=3)
    study = str(series[0].StudyInstanceUID)
    body, b = multipart([to_bytes(ds) for ds in series])
    r = pacs.post(f"/studies/{study}", body, ctype.format(b=b))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/dicom+json")
    js = r.json()
    assert js["00081190"]["Value"][0] == f"{pacs.dicomweb}/studies/{study}"
    assert len(referenced(js)) == 3


def test_resend_is_idempotent_and_tampered_duplicate_is_refused(pacs):
    ds = ct_series(n=1)[0]
    raw = to_bytes(ds)
    first = pacs.post("/studies", raw, "application/dicom")
    again = pacs.post("/studies", raw, "application/dicom")
    assert first.status_code == again.status_code == 200
    assert referenced(again.json()) == [str(ds.SOPInstanceUID)]
    assert pacs.count("instances") == 1
    assert pacs.study_row(str(ds.StudyInstanceUID))["num_instances"] == 1

    ds.PatientName = "Tampered^Name"
    tampered = to_bytes(ds)
    r = pacs.post("/studies", tampered, "application/dicom")
    assert r.status_code == 409, r.text
    assert failed(r.json()) == [(str(ds.SOPInstanceUID), 0x0111)]
    assert "already stored with different content" in r.headers.get("warning", "")
    assert pacs.object_bytes(str(ds.SOPInstanceUID)) == raw
    assert len(pacs.object_files()) == 1
    assert pacs.count("instances") == 1


def test_keep_original_policy_reports_success_with_warning(make_pacs):
    pacs = make_pacs({"PACS_INGEST__ON_CONFLICT": "keep-original"})
    ds = ct_series(n=1)[0]
    raw = to_bytes(ds)
    assert pacs.post("/studies", raw, "application/dicom").status_code == 200
    ds.PatientName = "Other^Name"
    r = pacs.post("/studies", to_bytes(ds), "application/dicom")
    assert r.status_code == 202, r.text
    item = r.json()["00081199"]["Value"][0]
    assert item["00081196"]["Value"] == [0xB000]
    assert pacs.object_bytes(str(ds.SOPInstanceUID)) == raw


def bad_instances():
    """(label, bytes, expected failure reason) for objects that must be refused."""
    good = ct_series(n=1)[0]
    raw = to_bytes(good)
    cases = [("truncated", raw[: len(raw) - 5000], 0xC000),
             ("truncated header", raw[:300], 0xC000),
             ("garbage", b"this is not DICOM at all" * 20, 0xC000),
             ("pydicom truncated sample", sample_bytes("MR_truncated.dcm"), 0xC000),
             ("no meta (not Part-10)", sample_bytes("no_meta.dcm"), 0xC000)]
    ds = ct_series(n=1)[0]
    del ds.StudyInstanceUID
    cases.append(("missing StudyInstanceUID", to_bytes(ds), 0xC000))
    ds = ct_series(n=1)[0]
    del ds.SOPInstanceUID
    cases.append(("missing SOPInstanceUID", to_bytes(ds), 0xC000))
    for bad in ["../x", "1" * 65, "1.2.abc"]:
        ds = ct_series(n=1)[0]
        ds.SeriesInstanceUID = bad
        cases.append((f"bad UID {bad[:10]}", to_bytes(ds), 0xC000))
    ds = ct_series(n=1)[0]
    del ds.PixelData
    cases.append(("CT image without pixel data", to_bytes(ds), 0xA900))
    ds = ct_series(n=1)[0]
    ds.SOPClassUID = "1.2.840.10008.1.1"
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.1.1"
    cases.append(("verification SOP class", to_bytes(ds), 0x0122))
    raw = to_bytes(ct_series(n=1)[0])
    assert b"1.2.840.10008.1.2.1\x00" in raw
    cases.append(("unknown transfer syntax", raw.replace(b"1.2.840.10008.1.2.1\x00", b"1.2.3.4.5.6.7.8.9.10", 1), 0xC122))
    return cases


def assert_nothing_stored(pacs):
    assert pacs.count("instances") == 0
    assert pacs.count("studies") == 0
    assert pacs.object_files() == []
    assert pacs.spool_files() == []


@pytest.mark.parametrize("label,data,reason", bad_instances(), ids=lambda v: v if isinstance(v, str) else "")
def test_bad_instances_are_refused_with_reason(pacs, label, data, reason):
    r = pacs.post("/studies", data, "application/dicom")
    assert r.status_code == 409, (label, r.status_code, r.text)
    assert [f[1] for f in failed(r.json())] == [reason], (label, r.text, r.headers.get("warning"))
    assert r.headers.get("warning"), "a human-readable reason is given"
    item = r.json()["00081198"]["Value"][0]
    assert item["00000902"]["Value"][0], "ErrorComment carries the reason too"
    assert_nothing_stored(pacs)


def test_mixed_request_is_202_and_stores_only_the_good(pacs):
    good = ct_series(n=2)
    bad = to_bytes(ct_series(n=1)[0])[:400]
    r = pacs.stow([good[0], bad, good[1]])
    assert r.status_code == 202, r.text
    assert sorted(referenced(r.json())) == sorted(str(d.SOPInstanceUID) for d in good)
    assert [f[1] for f in failed(r.json())] == [0xC000]
    assert pacs.count("instances") == 2


def test_wrong_part_content_type_is_a_failed_part(pacs):
    body, b = multipart([b"{}"], content_type="application/json")
    r = pacs.post("/studies", body, f"multipart/related; boundary={b}")
    assert r.status_code == 409
    assert [f[1] for f in failed(r.json())] == [0xC000]


def test_study_uid_mismatch_with_url(pacs):
    ds = ct_series(n=1)[0]
    other = generate_uid()
    r = pacs.stow([ds], study=other)
    assert r.status_code == 409, r.text
    assert failed(r.json()) == [(str(ds.SOPInstanceUID), 0xC409)]
    assert_nothing_stored(pacs)


@pytest.mark.parametrize("bad", ["..%2Fx", "1.2.abc", "1" * 65])
def test_bad_study_uid_in_url_is_400(pacs, bad):
    ds = ct_series(n=1)[0]
    r = pacs.post(f"/studies/{bad}", to_bytes(ds), "application/dicom")
    assert r.status_code == 400, r.text
    assert "StudyInstanceUID" in r.json()["message"]
    assert_nothing_stored(pacs)


@pytest.mark.parametrize("ctype", ["application/json", "image/jpeg", "text/plain",
                                   'multipart/related; type="application/dicom+xml"; boundary=x'])
def test_unsupported_media_type_is_415(pacs, ctype):
    r = pacs.post("/studies", to_bytes(ct_series(n=1)[0]), ctype)
    assert r.status_code == 415, r.text
    assert_nothing_stored(pacs)


def test_missing_content_type_is_415(pacs):
    r = requests.post(f"{pacs.dicomweb}/studies", data=b"x")
    assert r.status_code == 415


def test_truncated_multipart_is_400_and_stores_nothing(pacs):
    body, b = multipart([to_bytes(ct_series(n=1)[0])])
    cut = body[: len(body) // 2]
    r = pacs.post("/studies", cut, f"multipart/related; boundary={b}")
    assert r.status_code == 400, r.text
    assert "truncated" in r.json()["message"] or "malformed" in r.json()["message"]
    assert_nothing_stored(pacs)


def test_empty_multipart_is_400(pacs):
    r = pacs.post("/studies", b"--b--\r\n", "multipart/related; boundary=b")
    assert r.status_code == 400


def test_oversized_bodies_get_413(make_pacs):
    pacs = make_pacs({"PACS_HTTP__MAX_REQUEST_BYTES": "200000"})
    big = ct_series(n=1, size=512)[0]   # ~512 KiB
    r = pacs.post("/studies", to_bytes(big), "application/dicom")
    assert r.status_code == 413, r.text
    # Without a Content-Length (chunked), the limit is enforced while streaming.
    body, b = multipart([to_bytes(big)])
    r = requests.post(f"{pacs.dicomweb}/studies", data=iter([body[i:i + 65536] for i in range(0, len(body), 65536)]),
                      headers={"Content-Type": f"multipart/related; boundary={b}"})
    assert r.status_code == 413, r.text
    assert_nothing_stored(pacs)
    small = ct_series(n=1)[0]
    assert pacs.post("/studies", to_bytes(small), "application/dicom").status_code == 200


def test_instance_size_limit_is_a_failed_part(make_pacs):
    pacs = make_pacs({"PACS_INGEST__MAX_INSTANCE_BYTES": "100000"})
    big, small = ct_series(n=1, size=512)[0], ct_series(n=1)[0]
    body, b = multipart([to_bytes(big), to_bytes(small)])
    r = pacs.post("/studies", body, f"multipart/related; boundary={b}")
    assert r.status_code == 202, r.text
    assert [f[1] for f in failed(r.json())] == [0xA700]
    assert referenced(r.json()) == [str(small.SOPInstanceUID)]


def test_not_acceptable_response_type(pacs):
    r = pacs.post("/studies", to_bytes(ct_series(n=1)[0]), "application/dicom",
                  headers={"Accept": "application/dicom+xml"})
    assert r.status_code == 406
    assert_nothing_stored(pacs)


def test_stored_metadata_json_is_dicom_json(pacs):
    """The precomputed metadata turns back into the data set with pydicom (minus bulk data)."""
    ds = sample("CT_small.dcm")
    raw = sample_bytes("CT_small.dcm")
    assert pacs.post("/studies", raw, "application/dicom").status_code == 200
    q = f"SELECT metadata_json FROM instances WHERE sop_instance_uid = '{ds.SOPInstanceUID}'"
    url = pacs.env.get("PACS_INDEX__URL")
    if url:
        import subprocess
        text = subprocess.run(["psql", url, "-Atc", q], capture_output=True, text=True, check=True).stdout
    else:
        import sqlite3
        con = sqlite3.connect(pacs.dir / "data" / "index.sqlite")
        text = con.execute(q).fetchone()[0]
        con.close()
    meta = json.loads(text)
    assert meta["7FE00010"]["BulkDataURI"].endswith(f"/instances/{ds.SOPInstanceUID}/bulkdata/7FE00010")
    back = pydicom.Dataset.from_json(meta, bulk_data_uri_handler=lambda *a: b"")
    for kw in ["PatientName", "PatientID", "StudyInstanceUID", "SOPInstanceUID", "Rows", "Columns",
               "ImagePositionPatient", "PixelSpacing", "InstanceNumber", "WindowCenter"]:
        assert back.get(kw) == ds.get(kw), kw


def test_concurrent_stores_of_one_instance(pacs):
    """Racing copies of one SOP instance: identical bytes all succeed; of differing
    versions exactly one is stored, the others are refused, and one object remains."""
    from concurrent.futures import ThreadPoolExecutor

    ds = ct_series(n=1)[0]
    raw = to_bytes(ds)
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda _: pacs.post("/studies", raw, "application/dicom").status_code, range(16)))
    assert codes == [200] * 16
    assert pacs.count("instances") == 1 and len(pacs.object_files()) == 1

    ds2 = ct_series(n=1)[0]
    versions = []
    for i in range(8):
        ds2.PatientID = f"V{i}"
        versions.append(to_bytes(ds2))
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda v: pacs.post("/studies", v, "application/dicom").status_code, versions))
    assert sorted(codes) == [200] + [409] * 7, codes
    assert pacs.count("instances") == 2
    assert len(pacs.object_files()) == 2
    winner = versions[codes.index(200)]
    assert pacs.object_bytes(str(ds2.SOPInstanceUID)) == winner
