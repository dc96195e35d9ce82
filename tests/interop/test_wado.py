"""WADO-RS with the Python dicomweb-client and raw HTTP: instances, metadata, frames,
bulk data."""

import email.parser
import email.policy
import gzip
import io
import re

import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.encaps import generate_frames

from dicomgen import ct_series, sample, sample_bytes, to_bytes

ANY_TS = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def parse_multipart(resp):
    """The parts of a multipart/related response as (headers, bytes)."""
    ctype = resp.headers["content-type"]
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + resp.content)
    assert msg.is_multipart(), ctype
    return [({k: v.replace('"', '') for k, v in part.items()}, part.get_payload(decode=True))
            for part in msg.iter_parts()]


def store_raw(pacs, raw):
    r = pacs.post("/studies", raw, "application/dicom")
    assert r.status_code == 200, r.text
    item = r.json()["00081199"]["Value"][0]
    return item["00081190"]["Value"][0]


@pytest.mark.parametrize("name", ["CT_small.dcm", "JPEG2000.dcm", "rtdose.dcm", "SC_rgb_rle_2frame.dcm",
                                  "image_dfl.dcm", "test-SR.dcm", "ExplVR_BigEnd.dcm"])
def test_instance_retrieval_is_byte_identical(pacs, name):
    raw = sample_bytes(name)
    url = store_raw(pacs, raw)
    r = requests.get(url, headers={"Accept": ANY_TS})
    assert r.status_code == 200, r.text
    parts = parse_multipart(r)
    assert len(parts) == 1
    headers, body = parts[0]
    assert body == raw
    ds = sample(name)
    assert f"transfer-syntax={ds.file_meta.TransferSyntaxUID}" in headers["Content-Type"]
    # A single-part answer when asked for application/dicom.
    r = requests.get(url, headers={"Accept": "application/dicom; transfer-syntax=*"})
    assert r.status_code == 200 and r.content == raw


def test_dicomweb_client_retrieves_instances_series_and_studies(pacs):
    series = ct_series(n=3)
    client = DICOMwebClient(pacs.dicomweb)
    client.store_instances(series)
    study, ser = str(series[0].StudyInstanceUID), str(series[0].SeriesInstanceUID)
    one = client.retrieve_instance(study, ser, str(series[1].SOPInstanceUID))
    assert one.SOPInstanceUID == series[1].SOPInstanceUID
    assert np.array_equal(one.pixel_array, series[1].pixel_array)
    got = client.retrieve_series(study, ser)
    assert [d.InstanceNumber for d in got] == [1, 2, 3]
    more = ct_series(n=2, study_uid=study, modality="MR", series_number=2)
    client.store_instances(more)
    all_of_it = client.retrieve_study(study)
    assert sorted(str(d.SOPInstanceUID) for d in all_of_it) == sorted(str(d.SOPInstanceUID) for d in series + more)


def test_objects_stored_without_preamble_come_back_as_part10(pacs):
    ds = ct_series(n=1)[0]
    import io
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds)          # bare meta group, no preamble, no DICM
    raw = buf.getvalue()
    assert raw[128:132] != b"DICM"
    url = store_raw(pacs, raw)
    r = requests.get(url, headers={"Accept": "application/dicom"})
    assert r.content[128:132] == b"DICM" and r.content[132:] == raw
    assert pydicom.dcmread(io.BytesIO(r.content)).SOPInstanceUID == ds.SOPInstanceUID


def test_metadata_round_trips_with_absolute_bulkdata_uris(pacs):
    raw = sample_bytes("CT_small.dcm")
    ds = sample("CT_small.dcm")
    store_raw(pacs, raw)
    client = DICOMwebClient(pacs.dicomweb)
    study, series, sop = ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
    path = f"/dicom-web/studies/{study}/series/{series}/instances/{sop}/bulkdata/7FE00010"
    # dicomweb-client sends "Host: 127.0.0.1", without the port: the URIs are built from it.
    assert client.host == "127.0.0.1" and pacs.url.startswith("http://127.0.0.1:")
    for meta in [client.retrieve_study_metadata(study), client.retrieve_series_metadata(study, series),
                 [client.retrieve_instance_metadata(study, series, sop)]]:
        assert len(meta) == 1
        m = meta[0]
        assert m["7FE00010"]["BulkDataURI"] == f"http://127.0.0.1{path}"
        back = pydicom.Dataset.from_json(m, bulk_data_uri_handler=lambda *a: b"")
        for kw in ["PatientName", "PatientID", "Rows", "Columns", "ImagePositionPatient", "SliceLocation",
                   "WindowWidth", "RescaleSlope", "SOPClassUID"]:
            assert back.get(kw) == ds.get(kw), kw
    # Asked with the Host a browser sends (address and port), the URI is the one to fetch.
    for url in [f"{pacs.dicomweb}/studies/{study}/metadata", f"{pacs.dicomweb}/studies/{study}/series/{series}/metadata",
                f"{pacs.dicomweb}/studies/{study}/series/{series}/instances/{sop}/metadata"]:
        r = requests.get(url)
        assert r.status_code == 200, (url, r.text)
        [m] = r.json()
        assert m["7FE00010"]["BulkDataURI"] == f"{pacs.url}{path}", url


def test_metadata_etag_and_gzip(pacs):
    client = DICOMwebClient(pacs.dicomweb)
    series = ct_series(n=5)
    client.store_instances(series)
    url = f"{pacs.dicomweb}/studies/{series[0].StudyInstanceUID}/metadata"
    r = requests.get(url, headers={"Accept-Encoding": "gzip"})
    assert r.status_code == 200 and r.headers.get("content-encoding") == "gzip"
    assert len(r.json()) == 5
    etag = r.headers["etag"]
    r2 = requests.get(url, headers={"If-None-Match": etag})
    assert r2.status_code == 304 and r2.content == b""
    client.store_instances(ct_series(n=1, study_uid=str(series[0].StudyInstanceUID)))
    r3 = requests.get(url, headers={"If-None-Match": etag})
    assert r3.status_code == 200 and len(r3.json()) == 6 and r3.headers["etag"] != etag
    raw = requests.get(url, headers={"Accept-Encoding": "gzip"}, stream=True).raw.read()
    assert len(gzip.decompress(raw)) > len(raw)


def test_frames_of_native_single_and_multiframe(pacs):
    client = DICOMwebClient(pacs.dicomweb)
    ct = ct_series(n=1)[0]
    client.store_instances([ct])
    frames = client.retrieve_instance_frames(str(ct.StudyInstanceUID), str(ct.SeriesInstanceUID),
                                             str(ct.SOPInstanceUID), [1])
    assert frames == [ct.PixelData]

    dose = sample("rtdose.dcm")                        # implicit VR, 15 frames
    store_raw(pacs, sample_bytes("rtdose.dcm"))
    n = int(dose.NumberOfFrames)
    size = len(dose.PixelData) // n
    got = client.retrieve_instance_frames(dose.StudyInstanceUID, dose.SeriesInstanceUID, dose.SOPInstanceUID,
                                          [1, 3, n])
    assert got == [dose.PixelData[0:size], dose.PixelData[2 * size:3 * size], dose.PixelData[(n - 1) * size:]]


@pytest.mark.parametrize("name,media", [("SC_rgb_jpeg_dcmtk.dcm", "image/jpeg"), ("JPEG2000.dcm", "image/jp2"),
                                        ("SC_rgb_rle_2frame.dcm", "image/dicom-rle")])
def test_compressed_frames_in_their_media_type(pacs, name, media):
    ds = sample(name)
    url = store_raw(pacs, sample_bytes(name))
    n = int(getattr(ds, "NumberOfFrames", 1))
    expected = list(generate_frames(ds.PixelData, number_of_frames=n))
    frames_url = f"{url}/frames/{','.join(str(i) for i in range(1, n + 1))}"
    for accept in [f'multipart/related; type="{media}"',
                   "multipart/related; type=application/octet-stream; transfer-syntax=*"]:
        r = requests.get(frames_url, headers={"Accept": accept})
        assert r.status_code == 200, (accept, r.text)
        parts = parse_multipart(r)
        assert [p[1] for p in parts] == expected
        assert all(p[0]["Content-Type"].startswith(media) for p in parts)
        assert all(f"transfer-syntax={ds.file_meta.TransferSyntaxUID}" in p[0]["Content-Type"] for p in parts)
    # Uncompressed frames are decoded: pixel-identical for lossless syntaxes.
    r = requests.get(frames_url, headers={"Accept": "multipart/related; type=application/octet-stream"})
    assert r.status_code == 200, r.text
    parts = parse_multipart(r)
    assert all(p[0]["Content-Type"] == "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1" for p in parts)
    pixels = ds.pixel_array if n > 1 else ds.pixel_array[np.newaxis]
    for i, (_, body) in enumerate(parts):
        got = np.frombuffer(body, dtype=pixels.dtype).reshape(pixels[i].shape)
        diff = np.abs(got.astype(int) - pixels[i].astype(int))
        if media == "image/jpeg":
            assert diff.mean() < 2, diff.mean()      # lossy: decoders may differ by rounding
        else:
            assert diff.max() == 0


def test_frame_errors(pacs):
    ct = ct_series(n=1)[0]
    url = store_raw(pacs, to_bytes(ct))
    assert requests.get(f"{url}/frames/2").status_code == 404
    assert requests.get(f"{url}/frames/0").status_code == 400
    assert requests.get(f"{url}/frames/a,b").status_code == 400
    r = requests.get(f"{url}/frames/1", headers={"Accept": "application/octet-stream"})
    assert r.status_code == 200 and r.content == ct.PixelData
    assert r.headers["content-type"].startswith("application/octet-stream")
    sr = store_raw(pacs, sample_bytes("test-SR.dcm"))
    assert requests.get(f"{sr}/frames/1").status_code == 406
    # A deflated data set has no frame table: its frames are decoded.
    dfl = sample("image_dfl.dcm")
    url = store_raw(pacs, sample_bytes("image_dfl.dcm"))
    r = requests.get(f"{url}/frames/1", headers={"Accept": "application/octet-stream"})
    assert r.status_code == 200 and r.content == dfl.PixelData


def test_bulkdata_for_every_uri_in_metadata(pacs):
    for name in ["examples_overlay.dcm", "CT_small.dcm"]:
        ds = sample(name)
        url = store_raw(pacs, sample_bytes(name))
        meta = requests.get(f"{url}/metadata").json()[0]
        uris = [(k, v["BulkDataURI"]) for k, v in meta.items() if "BulkDataURI" in v]
        assert uris, name
        for tag, uri in uris:
            r = requests.get(uri)
            assert r.status_code == 200, (uri, r.text)
            body = b"".join(p[1] for p in parse_multipart(r))
            element = ds[int(tag, 16)]
            assert body == element.value, tag


def test_not_found_and_bad_requests(pacs):
    ct = ct_series(n=1)[0]
    store_raw(pacs, to_bytes(ct))
    base = pacs.dicomweb
    assert requests.get(f"{base}/studies/1.2.3").status_code == 404
    assert requests.get(f"{base}/studies/1.2.3/metadata").status_code == 404
    assert requests.get(f"{base}/studies/{ct.StudyInstanceUID}/series/1.2.3").status_code == 404
    assert requests.get(f"{base}/studies/{ct.StudyInstanceUID}/series/{ct.SeriesInstanceUID}/instances/9.9").status_code == 404
    assert requests.get(f"{base}/studies/1.2.x").status_code == 400
    r = requests.get(f"{base}/studies/{ct.StudyInstanceUID}", headers={"Accept": "application/zip"})
    assert r.status_code == 406


@pytest.mark.parametrize("name", ["JPEG2000.dcm", "SC_rgb_rle_2frame.dcm", "rtdose.dcm", "MR_small_bigendian.dcm",
                                  "SC_rgb_jpeg_dcmtk.dcm"])
def test_transcoding_to_explicit_little_endian(pacs, name):
    ds = sample(name)
    url = store_raw(pacs, sample_bytes(name))
    explicit = "1.2.840.10008.1.2.1"
    for accept in [f'multipart/related; type="application/dicom"; transfer-syntax={explicit}',
                   'multipart/related; type="application/dicom"']:
        r = requests.get(url, headers={"Accept": accept})
        assert r.status_code == 200, (accept, r.text)
        (headers, body), = parse_multipart(r)
        assert headers["Content-Type"] == f"application/dicom; transfer-syntax={explicit}"
        got = pydicom.dcmread(io.BytesIO(body))
        assert got.file_meta.TransferSyntaxUID == explicit
        assert got.SOPInstanceUID == ds.SOPInstanceUID
        diff = np.abs(got.pixel_array.astype(int) - ds.pixel_array.astype(int))
        if "jpeg" in name:
            assert diff.mean() < 2
        else:
            assert diff.max() == 0, name
    implicit = requests.get(url, headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2'})
    assert implicit.status_code == 200
    assert pydicom.dcmread(io.BytesIO(parse_multipart(implicit)[0][1])).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2"


def test_impossible_transfer_syntax_is_406(pacs):
    url = store_raw(pacs, sample_bytes("CT_small.dcm"))
    r = requests.get(url, headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.90'})
    assert r.status_code == 406 and "cannot be sent" in r.json()["message"]


def test_urls_follow_forwarded_headers_and_configured_base(pacs, make_pacs):
    url = store_raw(pacs, sample_bytes("CT_small.dcm"))
    path = url.split("/dicom-web/")[1]
    fwd = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "pacs.hospital.example"}
    meta = requests.get(f"{pacs.dicomweb}/{path}/metadata", headers=fwd).json()[0]
    assert meta["7FE00010"]["BulkDataURI"].startswith("https://pacs.hospital.example/dicom-web/studies/")
    found = requests.get(f"{pacs.dicomweb}/studies", headers={"Forwarded": 'proto=https;host="gw.example:8443"'}).json()
    assert found[0]["00081190"]["Value"][0].startswith("https://gw.example:8443/dicom-web/studies/")
    fixed = make_pacs({"PACS_HTTP__PUBLIC_BASE_URL": "https://viewer.example/pacs"})
    r = fixed.post("/studies", sample_bytes("CT_small.dcm"), "application/dicom", headers=fwd)
    assert r.json()["00081199"]["Value"][0]["00081190"]["Value"][0].startswith("https://viewer.example/pacs/dicom-web/")


def test_cors_preflight_when_configured(make_pacs):
    pacs = make_pacs({"PACS_HTTP__CORS_ORIGINS": '["https://viewer.example"]'})
    r = requests.options(f"{pacs.dicomweb}/studies", headers={
        "Origin": "https://viewer.example", "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization"})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "https://viewer.example"
    assert "authorization" in r.headers["access-control-allow-headers"].lower()
    r = requests.get(f"{pacs.dicomweb}/studies", headers={"Origin": "https://other.example"})
    assert "access-control-allow-origin" not in r.headers


def file_bytes_sent(pacs) -> int:
    text = requests.get(f"{pacs.url}/metrics").text
    m = re.search(r"^pacs_http_file_bytes_total (\d+)", text, re.M)
    return int(m.group(1)) if m else 0


def test_cached_objects_go_out_from_their_files(pacs):
    """Objects of 128 KB and more, cached, go out by sendfile over plain HTTP/1.1 on the
    filesystem store (counted), byte for byte what was stored; from S3 they are copied.
    dicomweb-client reads the series as OHIF would."""
    series = ct_series(n=4, size=320)  # 200 KB of pixels each
    raw = {str(ds.SOPInstanceUID): to_bytes(ds) for ds in series}
    assert pacs.stow(list(raw.values())).status_code == 200
    client = DICOMwebClient(pacs.dicomweb)
    before = file_bytes_sent(pacs)
    got = client.retrieve_series(str(series[0].StudyInstanceUID), str(series[0].SeriesInstanceUID),
                                 media_types=(("application/dicom", "*"),))
    assert sorted(to_bytes(ds) for ds in got) == sorted(raw.values())
    r = requests.get(f"{pacs.dicomweb}/studies/{series[0].StudyInstanceUID}", headers={"Accept": ANY_TS})
    assert r.status_code == 200
    assert sorted(body for _, body in parse_multipart(r)) == sorted(raw.values())
    sent = file_bytes_sent(pacs) - before
    if pacs.backend.name == "sqlite-fs":
        assert sent >= 2 * sum(map(len, raw.values())), sent
    else:
        assert sent == 0, "objects from S3 are not files here"
