"""The hospital app's offline upload flow over real HTTP: metadata → binary → acknowledge,
every specific error, resumable binaries (explicit parts and a connection cut midway),
photos wrapped as Secondary Capture, orders and their studies, and expiry."""

import hashlib
import io
import socket
import time
import uuid as uuidlib
from urllib.parse import urlparse

import pydicom
import pytest
import requests
from PIL import Image

import dciodvfy
from dicomgen import ct_series, to_bytes

API = "/api/v1/radiology"


def meta_for(data: bytes, ds=None, mime="application/dicom", order="ORD-1", **over):
    m = {
        "image_uuid": str(uuidlib.uuid4()),
        "radiology_order_id": order,
        "filename": "image.dcm" if mime == "application/dicom" else "photo.jpg",
        "file_size": len(data),
        "mime_type": mime,
        "checksum": hashlib.sha256(data).hexdigest(),
        "image_metadata": {
            "study_uid": str(ds.StudyInstanceUID) if ds else "1.2.826.0.1.3680043.8.498.1",
            "series_uid": str(ds.SeriesInstanceUID) if ds else "1.2.826.0.1.3680043.8.498.2",
            "image_uid": str(ds.SOPInstanceUID) if ds else "1.2.826.0.1.3680043.8.498.3",
        },
    }
    m.update(over)
    return m


def post_meta(pacs, m, slash="/"):
    return requests.post(f"{pacs.url}{API}/offline-images/upload-metadata{slash}", json=m)


def post_binary(pacs, image_uuid, data, offset=None, headers=None, field_order=("image_uuid", "offset", "file")):
    fields = []
    for name in field_order:
        if name == "image_uuid" and image_uuid is not None:
            fields.append(("image_uuid", (None, image_uuid)))
        elif name == "offset" and offset is not None:
            fields.append(("offset", (None, str(offset))))
        elif name == "file":
            fields.append(("file", ("image.bin", data, "application/octet-stream")))
    return requests.post(f"{pacs.url}{API}/offline-images/upload-binary/", files=fields, headers=headers or {})


def ack(pacs, image_uuid, slash="/"):
    return requests.post(f"{pacs.url}{API}/offline-images/acknowledge{slash}", json={"image_uuid": image_uuid})


def status(pacs, image_uuid):
    return requests.get(f"{pacs.url}{API}/offline-images/{image_uuid}/")


def test_happy_path_dicom(pacs):
    [ds] = ct_series(n=1, accession="ACC-HAPPY")
    data = to_bytes(ds)
    assert requests.put(f"{pacs.url}{API}/orders/ORD-1", json={"accession_number": "ACC-OTHER",
                        "patient_id": "P1", "patient_name": "Test^Patient"}).status_code == 201
    m = meta_for(data, ds)
    r = post_meta(pacs, m)
    assert r.status_code == 201, r.text
    assert r.json()["state"] == "pending" and r.json()["received"] == 0
    assert post_meta(pacs, m, slash="").status_code == 200  # idempotent, with or without the slash
    r = ack(pacs, m["image_uuid"])
    assert r.status_code == 409 and r.json()["error"] == "not_stored"
    r = post_binary(pacs, m["image_uuid"], data)
    assert r.status_code == 201, r.text
    assert r.json()["state"] == "stored" and r.json()["sop_instance_uid"] == str(ds.SOPInstanceUID)
    for slash in ("/", ""):
        r = ack(pacs, m["image_uuid"], slash=slash)
        assert r.status_code == 200, r.text
        a = r.json()
        assert a["acknowledged"] is True and a["sop_instance_uid"] == str(ds.SOPInstanceUID)
        assert a["study_instance_uid"] == str(ds.StudyInstanceUID)
        assert a["sha256"] == hashlib.sha256(data).hexdigest() == hashlib.sha256(pacs.object_bytes(a["sop_instance_uid"])).hexdigest()
        assert isinstance(a["instance_id"], int) and a["stored_at"].endswith("Z")
    # Visible through DICOMweb at once; the bytes are the uploaded bytes.
    found = requests.get(f"{pacs.dicomweb}/instances?SOPInstanceUID={ds.SOPInstanceUID}").json()
    assert len(found) == 1
    # Uploading the binary again changes nothing.
    assert post_binary(pacs, m["image_uuid"], data).status_code == 200
    assert pacs.count("instances") == 1
    # The order lists its study (linked by the upload).
    studies = requests.get(f"{pacs.url}{API}/orders/ORD-1/studies/").json()["studies"]
    assert [s["study_instance_uid"] for s in studies] == [str(ds.StudyInstanceUID)]
    assert studies[0]["linked_by"] == "upload"


def test_metadata_errors(pacs):
    [ds] = ct_series(n=1)
    data = to_bytes(ds)
    cases = [
        ({"image_uuid": "not-a-uuid"}, 400, "invalid_image_uuid"),
        ({"image_uuid": None}, 400, "missing_field"),
        ({"radiology_order_id": "bad id with spaces"}, 400, "invalid_order_id"),
        ({"file_size": -5}, 400, "invalid_file_size"),
        ({"file_size": 10 ** 13}, 413, "file_too_large"),
        ({"mime_type": "application/pdf"}, 415, "unsupported_media_type"),
        ({"checksum": "abc"}, 400, "invalid_checksum"),
        ({"image_metadata": {"study_uid": "1.2.abc", "series_uid": "1.2", "image_uid": "1.3"}}, 400, "invalid_uid"),
        ({"image_metadata": {"study_uid": "1.2", "series_uid": "1.2"}}, 400, "missing_field"),
    ]
    for over, code, error in cases:
        m = meta_for(data, ds, **over)
        m = {k: v for k, v in m.items() if v is not None}
        r = post_meta(pacs, m)
        assert (r.status_code, r.json()["error"]) == (code, error), (over, r.text)
    r = requests.post(f"{pacs.url}{API}/offline-images/upload-metadata/", data="{not json",
                      headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"] == "invalid_json"
    # The same UUID with other metadata.
    m = meta_for(data, ds)
    assert post_meta(pacs, m).status_code == 201
    r = post_meta(pacs, dict(m, filename="other.dcm"))
    assert r.status_code == 409 and r.json()["error"] == "image_uuid_conflict"
    assert pacs.count("instances") == 0


def test_binary_errors_store_nothing(pacs):
    [ds] = ct_series(n=1)
    data = to_bytes(ds)
    # Binary before metadata / unknown UUID.
    r = post_binary(pacs, str(uuidlib.uuid4()), data)
    assert r.status_code == 404 and r.json()["error"] == "unknown_image_uuid"
    r = ack(pacs, str(uuidlib.uuid4()))
    assert r.status_code == 404 and r.json()["error"] == "unknown_image_uuid"
    # Wrong checksum: nothing stored, the upload can be retried.
    m = meta_for(data, ds, checksum=hashlib.sha256(b"something else").hexdigest())
    assert post_meta(pacs, m).status_code == 201
    r = post_binary(pacs, m["image_uuid"], data)
    assert r.status_code == 422 and r.json()["error"] == "checksum_mismatch", r.text
    assert status(pacs, m["image_uuid"]).json()["received"] == 0
    # More bytes than declared.
    m = meta_for(data[:-10], ds)
    m["checksum"] = hashlib.sha256(data).hexdigest()
    assert post_meta(pacs, m).status_code == 201
    r = post_binary(pacs, m["image_uuid"], data)
    assert r.status_code == 400 and r.json()["error"] == "size_mismatch"
    # The file's UIDs are not the declared ones.
    other = ct_series(n=1)[0]
    m = meta_for(data, other)
    assert post_meta(pacs, m).status_code == 201
    r = post_binary(pacs, m["image_uuid"], data)
    assert r.status_code == 422 and r.json()["error"] == "uid_mismatch", r.text
    # Not DICOM at all.
    junk = b"this is not a DICOM file" * 20
    m = meta_for(junk, ds)
    assert post_meta(pacs, m).status_code == 201
    r = post_binary(pacs, m["image_uuid"], junk)
    assert r.status_code == 422 and r.json()["error"] == "invalid_dicom", r.text
    # No image_uuid before the file; not multipart at all.
    r = post_binary(pacs, None, data)
    assert r.status_code == 400 and r.json()["error"] == "missing_field"
    r = requests.post(f"{pacs.url}{API}/offline-images/upload-binary/", data=data,
                      headers={"Content-Type": "application/dicom"})
    assert r.status_code == 415
    assert pacs.count("instances") == 0
    assert [f for f in pacs.object_files() if "uploads" not in str(f)] == []


def test_resumable_binary_in_parts(pacs):
    [ds] = ct_series(n=1, size=128)
    data = to_bytes(ds)
    m = meta_for(data, ds)
    assert post_meta(pacs, m).status_code == 201
    half = len(data) // 2
    r = post_binary(pacs, m["image_uuid"], data[:half], offset=0)
    assert r.status_code == 202 and r.json()["received"] == half, r.text
    assert status(pacs, m["image_uuid"]).json()["next_offset"] == half
    # A wrong offset is refused with what the server has.
    r = post_binary(pacs, m["image_uuid"], data[half + 10:], offset=half + 10)
    assert r.status_code == 409 and r.json()["received"] == half
    r = ack(pacs, m["image_uuid"])
    assert r.status_code == 409 and "missing" in r.json()["message"]
    # The rest, announced with Content-Range.
    r = post_binary(pacs, m["image_uuid"], data[half:],
                    headers={"Content-Range": f"bytes {half}-{len(data) - 1}/{len(data)}"})
    assert r.status_code == 201, r.text
    assert ack(pacs, m["image_uuid"]).status_code == 200
    assert pacs.object_bytes(str(ds.SOPInstanceUID)) == data
    # The parts are gone from the store.
    assert [f for f in pacs.object_files() if "uploads" in str(f)] == []


def test_binary_cut_off_midway_and_resumed(pacs):
    [ds] = ct_series(n=1, size=256)
    data = to_bytes(ds)
    m = meta_for(data, ds)
    assert post_meta(pacs, m).status_code == 201
    boundary = "cutcutcut"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image_uuid\"\r\n\r\n{m['image_uuid']}\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.dcm\"\r\n"
            "Content-Type: application/dicom\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    url = urlparse(pacs.url)
    s = socket.create_connection((url.hostname, url.port))
    sent = 100_000
    s.sendall((f"POST {API}/offline-images/upload-binary/ HTTP/1.1\r\nHost: x\r\n"
               f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
               f"Content-Length: {len(head) + len(data) + len(tail)}\r\n\r\n").encode() + head + data[:sent])
    time.sleep(0.5)
    s.close()  # the network drops
    deadline = time.time() + 10
    received = 0
    while time.time() < deadline:
        received = status(pacs, m["image_uuid"]).json()["received"]
        if received:
            break
        time.sleep(0.1)
    assert 0 < received <= sent, received
    r = post_binary(pacs, m["image_uuid"], data[received:], offset=received)
    assert r.status_code == 201, r.text
    assert ack(pacs, m["image_uuid"]).status_code == 200
    assert pacs.object_bytes(str(ds.SOPInstanceUID)) == data


def test_photos_become_secondary_capture(pacs, tmp_path):
    assert requests.put(f"{pacs.url}{API}/orders/ORD-PHOTO", json={
        "accession_number": "ACC-PH", "patient_id": "PAT-9", "patient_name": "Fotó^Anna",
        "patient_birth_date": "19800102", "patient_sex": "F"}).status_code == 201
    img = Image.new("RGB", (64, 48))
    for x in range(64):
        for y in range(48):
            img.putpixel((x, y), (x * 4, y * 5, 128))
    jpeg, png = io.BytesIO(), io.BytesIO()
    img.save(jpeg, "JPEG", quality=95)
    img.save(png, "PNG")
    uids = {}
    for mime, data in (("image/jpeg", jpeg.getvalue()), ("image/png", png.getvalue())):
        m = meta_for(data, None, mime=mime, order="ORD-PHOTO")
        study = pydicom.uid.generate_uid()
        m["image_metadata"] = {"study_uid": study, "series_uid": pydicom.uid.generate_uid(),
                               "image_uid": pydicom.uid.generate_uid()}
        assert post_meta(pacs, m).status_code == 201
        r = post_binary(pacs, m["image_uuid"], data)
        assert r.status_code == 201, r.text
        a = ack(pacs, m["image_uuid"]).json()
        assert a["acknowledged"]
        uids[mime] = (study, m["image_metadata"]["image_uid"])
    for mime, (study, sop) in uids.items():
        found = requests.get(f"{pacs.dicomweb}/instances?SOPInstanceUID={sop}").json()
        assert found[0]["00080016"]["Value"][0] == "1.2.840.10008.5.1.4.1.1.7"
        ds = pydicom.dcmread(io.BytesIO(pacs.object_bytes(sop)))
        assert str(ds.PatientName) == "Fotó^Anna" and ds.PatientID == "PAT-9" and ds.AccessionNumber == "ACC-PH"
        assert (ds.Rows, ds.Columns) == (48, 64)
        # An object this server made itself: a valid Secondary Capture Image IOD.
        (tmp_path / "sc.dcm").write_bytes(pacs.object_bytes(sop))
        assert dciodvfy.errors(tmp_path / "sc.dcm") == [], mime
        if mime == "image/jpeg":
            assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
            assert jpeg.getvalue() in ds.PixelData  # kept as it is
        else:
            assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
        arr = ds.pixel_array
        assert abs(int(arr[10, 20, 0]) - 80) < 12 and abs(int(arr[10, 20, 1]) - 50) < 12
        r = requests.get(f"{pacs.dicomweb}/studies/{study}/series/{ds.SeriesInstanceUID}/instances/{sop}/rendered",
                         headers={"Accept": "image/jpeg"})
        assert r.status_code == 200
    studies = requests.get(f"{pacs.url}{API}/orders/ORD-PHOTO/studies/").json()["studies"]
    assert sorted(s["study_instance_uid"] for s in studies) == sorted(s for s, _ in uids.values())
    # A "photo" that is not one.
    junk = b"\xff\xd8 not really a jpeg" * 10
    m = meta_for(junk, None, mime="image/jpeg", order="ORD-PHOTO")
    m["image_metadata"]["image_uid"] = pydicom.uid.generate_uid()
    assert post_meta(pacs, m).status_code == 201
    r = post_binary(pacs, m["image_uuid"], junk)
    assert r.status_code == 422 and r.json()["error"] == "invalid_image", r.text


def test_orders_and_accession_matching(pacs):
    from dicomweb_client.api import DICOMwebClient
    r = requests.put(f"{pacs.url}{API}/orders/ORD-ACC/", json={"accession_number": "ACC-MATCH", "patient_id": "PM"})
    assert r.status_code == 201
    assert requests.put(f"{pacs.url}{API}/orders/ORD-ACC", json={"accession_number": "ACC-MATCH",
                        "patient_id": "PM2"}).status_code == 200
    assert requests.put(f"{pacs.url}{API}/orders/ORD-ACC", json={"patient_sex": "X"}).status_code == 400
    assert requests.put(f"{pacs.url}{API}/orders/bad%20id", json={}).status_code == 400
    stowed = ct_series(n=2, accession="ACC-MATCH")
    DICOMwebClient(pacs.dicomweb).store_instances(stowed + ct_series(n=1, accession="ACC-NOPE"))
    body = requests.get(f"{pacs.url}{API}/orders/ORD-ACC/studies/").json()
    assert body["order"]["patient_id"] == "PM2"
    assert [(s["study_instance_uid"], s["linked_by"], s["number_of_instances"]) for s in body["studies"]] == [
        (str(stowed[0].StudyInstanceUID), "accession_number", 2)]
    assert requests.get(f"{pacs.url}{API}/orders/NOPE/studies/").status_code == 404


def test_pending_uploads_expire(make_pacs):
    pacs = make_pacs({"PACS_UPLOADS__EXPIRE_AFTER_SECS": "1", "PACS_UPLOADS__SWEEP_INTERVAL_SECS": "1"})
    [ds] = ct_series(n=1)
    data = to_bytes(ds)
    m = meta_for(data, ds)
    assert post_meta(pacs, m).status_code == 201
    assert post_binary(pacs, m["image_uuid"], data[:1000], offset=0).status_code == 202
    assert [f for f in pacs.object_files() if "uploads" in str(f)]
    deadline = time.time() + 10
    while time.time() < deadline and status(pacs, m["image_uuid"]).status_code != 404:
        time.sleep(0.3)
    assert status(pacs, m["image_uuid"]).status_code == 404
    assert [f for f in pacs.object_files() if "uploads" in str(f)] == []
