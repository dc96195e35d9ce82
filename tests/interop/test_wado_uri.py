"""WADO-URI (PS3.18 §9) at /wado with raw HTTP, pydicom, Pillow and dcmtk's storescu: the
stored object byte for byte or transcoded, rendered JPEG/PNG/GIF of single- and
multi-frame objects with their size, region, window and quality parameters, every refusal
(400 naming the parameter, 404, 406), and who may read what."""

import hashlib
import io
import time

import numpy as np
import pydicom
import pytest
import requests
from PIL import Image

import authtools
from authtools import KEYS, bearer
from dicomgen import ct_series, multiframe, sample, sample_bytes, to_bytes
from dimsetools import require_dcmtk, run

EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
DCMTK_MISSING = require_dcmtk()


def stow(pacs, raw, headers=None):
    r = pacs.post("/studies", raw, "application/dicom", headers=headers or {})
    assert r.status_code == 200, r.text


def uids(ds):
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)


def wado(pacs, ds_or_uids, headers=None, **params):
    """GET /wado for an object (a data set or its three UIDs) with more query parameters."""
    study, series, sop = ds_or_uids if isinstance(ds_or_uids, tuple) else uids(ds_or_uids)
    query = {"requestType": "WADO", "studyUID": study, "seriesUID": series, "objectUID": sop, **params}
    return requests.get(f"{pacs.url}/wado", params=query, headers=headers or {})


def image(resp, fmt):
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == f"image/{fmt.lower()}"
    img = Image.open(io.BytesIO(resp.content))
    assert img.format == fmt
    img.load()
    return img


def expected_window(ds, center, width, frame=None):
    """PS3.3 C.11.2.1.2 linear VOI LUT to 8 bits, after the modality rescale."""
    pixels = ds.pixel_array if frame is None else ds.pixel_array[frame]
    x = pixels.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    return np.clip(((x - (center - 0.5)) / (width - 1) + 0.5) * 255, 0, 255)


def refused(resp, status, name):
    """A refusal in the DICOMweb error style whose message names the parameter."""
    assert resp.status_code == status, (name, resp.status_code, resp.text)
    body = resp.json()
    assert set(body) == {"error", "message"}, body
    assert name in body["message"], (name, body)
    return body


@pytest.mark.parametrize("name", ["CT_small.dcm", "rtdose.dcm", "JPEG2000.dcm", "MR_small_bigendian.dcm"])
def test_dicom_is_the_stored_object_byte_for_byte(pacs, name):
    raw = sample_bytes(name)
    ds = sample(name)
    stow(pacs, raw)
    stored = ds.file_meta.TransferSyntaxUID
    for extra in [{"transferSyntax": "*"}, {"transferSyntax": str(stored)}]:
        r = wado(pacs, ds, contentType="application/dicom", **extra)
        assert r.status_code == 200, (extra, r.text)
        assert r.headers["content-type"] == "application/dicom"
        assert int(r.headers["content-length"]) == len(raw)
        assert r.content == raw, extra
    [(sop, sha, size)] = pacs.instance_rows()
    assert sop == ds.SOPInstanceUID and size == len(raw)
    assert hashlib.sha256(r.content).hexdigest() == hashlib.sha256(raw).hexdigest() == sha
    back = pydicom.dcmread(io.BytesIO(r.content))
    assert back.SOPInstanceUID == ds.SOPInstanceUID and back.file_meta.TransferSyntaxUID == stored


@pytest.mark.parametrize("name", ["rtdose.dcm", "CT_small.dcm", "JPEG2000.dcm", "MR_small_bigendian.dcm"])
def test_dicom_transcoded_to_explicit_little_endian(pacs, name):
    """rtdose is stored implicit VR, CT_small explicit, the others compressed or big endian:
    pydicom reads each answer as Explicit VR Little Endian with the same pixels."""
    ds = sample(name)
    stow(pacs, sample_bytes(name))
    # Without transferSyntax: the default of DICOM web services (PS3.18 9.4.2.4).
    for extra in [{}, {"transferSyntax": EXPLICIT_LE}]:
        r = wado(pacs, ds, contentType="application/dicom", **extra)
        assert r.status_code == 200, r.text
        got = pydicom.dcmread(io.BytesIO(r.content))
        assert got.file_meta.TransferSyntaxUID == EXPLICIT_LE, extra
        assert got.SOPInstanceUID == ds.SOPInstanceUID and got.PatientName == ds.PatientName
        assert np.array_equal(got.pixel_array, ds.pixel_array), (name, extra)
    if name == "CT_small.dcm":  # stored Explicit VR Little Endian: the stored bytes
        assert r.content == sample_bytes(name)
    implicit = pydicom.dcmread(io.BytesIO(wado(pacs, ds, contentType="application/dicom",
                                               transferSyntax=IMPLICIT_LE).content))
    assert implicit.file_meta.TransferSyntaxUID == IMPLICIT_LE
    # A syntax this server does not produce from the stored one.
    r = wado(pacs, ds, contentType="application/dicom", transferSyntax="1.2.840.10008.1.2.4.90")
    assert r.status_code == 406 and "cannot be sent" in r.json()["message"]


@pytest.mark.skipif(DCMTK_MISSING is not None, reason="dcmtk is not installed")
def test_storescu_objects_come_back_as_stored_and_transcoded(pacs, tmp_path):
    """Objects stored over DIMSE (the server writes their file meta group): /wado sends the
    stored bytes, and an object that travelled implicit VR comes back explicit on request."""
    cts = ct_series(n=2, size=32)
    for i, ds in enumerate(cts):
        (tmp_path / f"{i}.dcm").write_bytes(to_bytes(ds))
    r = run("storescu", "-xi", "-aec", pacs.ae_title, "127.0.0.1", pacs.dimse_port, tmp_path / "0.dcm", tmp_path / "1.dcm")
    assert r.returncode == 0, r.stderr
    rows = {sop: sha for sop, sha, _ in pacs.instance_rows()}
    for ds in cts:
        stored = pacs.object_bytes(str(ds.SOPInstanceUID))
        got = wado(pacs, ds, contentType="application/dicom", transferSyntax="*")
        assert got.status_code == 200, got.text
        assert got.content.endswith(stored) and len(got.content) - len(stored) in (0, 128, 132)
        assert got.content[128:132] == b"DICM"
        if len(got.content) == len(stored):
            assert hashlib.sha256(got.content).hexdigest() == rows[str(ds.SOPInstanceUID)]
        meta = pydicom.dcmread(io.BytesIO(got.content)).file_meta
        assert meta.TransferSyntaxUID == IMPLICIT_LE
        # The meta group the server wrote has its group length (WADO-URI viewers need it).
        assert "FileMetaInformationGroupLength" in meta
        explicit = pydicom.dcmread(io.BytesIO(wado(pacs, ds, contentType="application/dicom",
                                                   transferSyntax=EXPLICIT_LE).content))
        assert explicit.file_meta.TransferSyntaxUID == EXPLICIT_LE
        assert np.array_equal(explicit.pixel_array, ds.pixel_array)


def wide_ct():
    """A 64×32 CT (columns × rows), so that sizes show the aspect ratio is kept."""
    def wide(ds):
        ds.Rows, ds.Columns = 32, 64
        ds.PixelData = np.random.default_rng(3).integers(0, 4096, size=(32, 64), dtype=np.uint16).tobytes()
    return ct_series(n=1, size=64, extra=wide)[0]


def test_ct_as_jpeg_png_and_gif(pacs):
    ds = wide_ct()
    stow(pacs, to_bytes(ds))
    jpeg = image(wado(pacs, ds), "JPEG")  # no contentType: image/jpeg
    assert jpeg.size == (64, 32) and jpeg.mode == "L"
    assert image(wado(pacs, ds, contentType="image/jpeg"), "JPEG").size == (64, 32)
    png = np.asarray(image(wado(pacs, ds, contentType="image/png"), "PNG"), dtype=np.float64)
    assert np.abs(png - expected_window(ds, 40, 400)).max() <= 2, "the stored window is the default"
    gif = image(wado(pacs, ds, contentType="image/gif"), "GIF")
    assert gif.size == (64, 32)
    # GIF keeps 8-bit grey exactly: the same pixels as the PNG.
    assert np.array_equal(np.asarray(gif.convert("L"), dtype=np.float64), png)
    windowed = np.asarray(image(wado(pacs, ds, contentType="image/png", windowCenter="1000", windowWidth="3000"),
                                "PNG"), dtype=np.float64)
    assert np.abs(windowed - expected_window(ds, 1000, 3000)).max() <= 2
    low = wado(pacs, ds, imageQuality="5").content
    high = wado(pacs, ds, imageQuality="100").content
    assert len(low) < len(high)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF"])
def test_rows_columns_and_region(pacs, fmt):
    ds = wide_ct()
    stow(pacs, to_bytes(ds))
    size = lambda **p: image(wado(pacs, ds, contentType=f"image/{fmt.lower()}", **p), fmt).size
    assert size(rows="16") == (32, 16), "rows alone: the width follows"
    assert size(columns="16") == (16, 8), "columns alone: the height follows"
    assert size(rows="16", columns="16") == (16, 8), "both: a box the image fits in"
    assert size(rows="64", columns="128") == (128, 64), "scaled up"
    assert size(region="0,0,0.5,1") == (32, 32)
    assert size(region="0.25,0.5,0.75,1") == (32, 16)
    assert size(region="0,0,0.5,1", rows="8") == (8, 8), "the region, then the size"
    if fmt == "PNG":
        # The region shows the pixels of that part of the image.
        part = np.asarray(image(wado(pacs, ds, contentType="image/png", region="0.5,0,1,0.5"), "PNG"), dtype=float)
        assert np.abs(part - expected_window(ds, 40, 400)[0:16, 32:64]).max() <= 2


def test_frames_of_a_multiframe_object(pacs):
    mf = multiframe(frames=4)
    stow(pacs, to_bytes(mf))
    frames = [np.asarray(image(wado(pacs, mf, contentType="image/png", frameNumber=str(n)), "PNG"), dtype=float)
              for n in (1, 3)]
    assert frames[0].shape == (mf.Rows, mf.Columns) and not np.array_equal(frames[0], frames[1])
    assert np.abs(frames[1] - expected_window(mf, 40, 400, frame=2)).max() <= 2
    # No frameNumber: the first frame.
    first = np.asarray(image(wado(pacs, mf, contentType="image/png"), "PNG"), dtype=float)
    assert np.array_equal(first, frames[0])
    assert image(wado(pacs, mf, contentType="image/gif", frameNumber="4", rows="24"), "GIF").size == (24, 24)
    gif = np.asarray(image(wado(pacs, mf, contentType="image/gif", frameNumber="3"), "GIF").convert("L"), dtype=float)
    assert np.array_equal(gif, frames[1]), "the GIF of frame 3 is the PNG's pixels"
    jpeg = image(wado(pacs, mf, frameNumber="2", region="0,0,0.5,0.5"), "JPEG")
    assert jpeg.size == (24, 24)
    refused(wado(pacs, mf, frameNumber="5"), 400, "frameNumber")
    refused(wado(pacs, mf, frameNumber="0"), 400, "frameNumber")


def test_content_type_lists_and_q_values(pacs):
    ds = ct_series(n=1, size=32)[0]
    stow(pacs, to_bytes(ds))
    assert image(wado(pacs, ds, contentType="image/webp, image/png"), "PNG")
    assert image(wado(pacs, ds, contentType="image/png;q=0.5, image/gif"), "GIF")
    assert image(wado(pacs, ds, contentType="application/dicom;q=0.2,image/jpeg;q=0.9"), "JPEG")
    r = wado(pacs, ds, contentType="image/png;q=0.1, application/dicom")
    assert r.status_code == 200 and r.headers["content-type"] == "application/dicom"
    assert image(wado(pacs, ds, contentType="*/*"), "JPEG")
    for unsupported in ["image/webp", "text/html", "application/pdf, video/mpeg", "image/png;q=0"]:
        refused(wado(pacs, ds, contentType=unsupported), 406, "contentType")


def test_refusals_name_their_parameter(pacs):
    ds = ct_series(n=1, size=32)[0]
    stow(pacs, to_bytes(ds))
    study, series, sop = uids(ds)
    base = {"requestType": "WADO", "studyUID": study, "seriesUID": series, "objectUID": sop}
    get = lambda q: requests.get(f"{pacs.url}/wado", params=q)
    without = lambda key: {k: v for k, v in base.items() if k != key}
    for key in base:
        refused(get(without(key)), 400, key)
    refused(get(dict(base, requestType="WADO-RS")), 400, "requestType")
    for key in ["studyUID", "seriesUID", "objectUID"]:
        refused(get(dict(base, **{key: "1.2.abc"})), 400, key)
        refused(get(dict(base, **{key: "1..2"})), 400, key)
    cases = [
        ({"windowCenter": "40"}, "windowCenter"),
        ({"windowWidth": "400"}, "windowWidth"),
        ({"windowCenter": "a", "windowWidth": "400"}, "windowCenter"),
        ({"windowCenter": "40", "windowWidth": "0"}, "windowWidth"),
        ({"frameNumber": "0"}, "frameNumber"),
        ({"frameNumber": "2"}, "frameNumber"),  # a single-frame object
        ({"frameNumber": "one"}, "frameNumber"),
        ({"rows": "0"}, "rows"),
        ({"rows": "-5"}, "rows"),
        ({"columns": "abc"}, "columns"),
        ({"columns": "0"}, "columns"),
        ({"region": "0,0,1"}, "region"),
        ({"region": "0.5,0,0.25,1"}, "region"),
        ({"region": "0,0,1.2,1"}, "region"),
        ({"region": "a,b,c,d"}, "region"),
        ({"imageQuality": "0"}, "imageQuality"),
        ({"imageQuality": "101"}, "imageQuality"),
        ({"imageQuality": "high"}, "imageQuality"),
        ({"transferSyntax": EXPLICIT_LE}, "transferSyntax"),
        ({"contentType": "image/png", "transferSyntax": "*"}, "transferSyntax"),
        ({"contentType": "application/dicom", "transferSyntax": "not-a-uid"}, "transferSyntax"),
        ({"contentType": "application/dicom", "rows": "10"}, "rows"),
        ({"contentType": "application/dicom", "frameNumber": "1"}, "frameNumber"),
        ({"anonymize": "yes"}, "anonymize"),
    ]
    for extra, name in cases:
        refused(get(dict(base, **extra)), 400, name)
    # A repeated parameter is contradictory.
    r = requests.get(f"{pacs.url}/wado?requestType=WADO&studyUID={study}&seriesUID={series}&objectUID={sop}"
                     f"&rows=10&rows=20")
    refused(r, 400, "rows")
    # Unknown objects, and objects asked for under another series or study: 404.
    other = ct_series(n=1, size=32)[0]
    stow(pacs, to_bytes(other))
    for bad in [(study, series, "1.2.3.4"), (study, str(other.SeriesInstanceUID), sop),
                (str(other.StudyInstanceUID), series, sop), ("1.2.3", series, sop)]:
        refused(wado(pacs, bad), 404, bad[2])
    # No pixel data to render: 406; an unknown transfer syntax UID: 406.
    stow(pacs, sample_bytes("test-SR.dcm"))
    sr = sample("test-SR.dcm")
    r = wado(pacs, sr)
    assert r.status_code == 406 and "pixel data" in r.json()["message"]
    assert wado(pacs, sr, contentType="application/dicom").content == sample_bytes("test-SR.dcm")
    refused(wado(pacs, ds, contentType="application/dicom", transferSyntax="1.2.3.4.5.6"), 406, "transferSyntax")
    # Only GET and HEAD.
    assert requests.post(f"{pacs.url}/wado", params=base).status_code == 405
    head = requests.head(f"{pacs.url}/wado", params=dict(base, contentType="application/dicom"))
    assert head.status_code == 200 and int(head.headers["content-length"]) == len(to_bytes(ds))


def test_metrics_count_wado_uri(pacs):
    ds = ct_series(n=1, size=16)[0]
    stow(pacs, to_bytes(ds))
    assert wado(pacs, ds).status_code == 200
    metrics = requests.get(f"{pacs.url}/metrics").text
    assert 'service="wado_uri"' in metrics


@pytest.fixture
def secured(make_pacs):
    pacs = make_pacs(authtools.env())
    a, b = ct_series(n=1, size=32), ct_series(n=1, size=32, patient_id="OTHER")
    r = pacs.stow(a + b, headers=bearer(KEYS["uploader"]))
    assert r.status_code == 200, r.text
    return pacs, a[0], b[0]


def test_who_may_read(secured):
    pacs, a, b = secured
    A, B = str(a.StudyInstanceUID), str(b.StudyInstanceUID)
    token_a = authtools.study_token(A)
    read = {"none": 401, "viewer": 200, "uploader": 200, "admin": 200, "study-token": 200,
            "other-study-token": 403, "expired": 401, "tampered": 401}
    creds = {"none": None, "viewer": KEYS["viewer"], "uploader": KEYS["uploader"], "admin": KEYS["admin"],
             "study-token": token_a, "other-study-token": authtools.study_token(B),
             "expired": authtools.study_token(A, exp_in=-10), "tampered": authtools.tamper(token_a)}
    failures = []
    for who, token in creds.items():
        for ct, magic in [("application/dicom", b"DICM"), ("image/jpeg", b"\xff\xd8")]:
            r = wado(pacs, a, headers=bearer(token), contentType=ct)
            if r.status_code != read[who]:
                failures.append(f"{who} {ct}: {r.status_code} (expected {read[who]}) {r.text[:120]}")
            elif r.status_code == 200 and magic not in r.content[:132]:
                failures.append(f"{who} {ct}: not the object")
    assert not failures, "\n".join(failures)
    # The study token for A asking for B's object: refused, and no byte of it sent.
    for ct in ["application/dicom", "image/jpeg"]:
        r = wado(pacs, b, headers=bearer(token_a), contentType=ct)
        assert r.status_code == 403, r.text
        assert b"DICM" not in r.content and r.headers["content-type"] == "application/json"
        assert r.json()["error"] == "forbidden"
    # Naming its own study with B's series and object does not reach them either.
    r = wado(pacs, (A, str(b.SeriesInstanceUID), str(b.SOPInstanceUID)), headers=bearer(token_a),
             contentType="application/dicom")
    assert r.status_code == 404 and b"DICM" not in r.content
    # The token as a query parameter (an <img src>), without a cookie set for it.
    r = wado(pacs, a, token=token_a)
    assert r.status_code == 200 and r.content[:2] == b"\xff\xd8"
    assert "Set-Cookie" not in r.headers
    assert wado(pacs, b, token=token_a).status_code == 403
    # The viewer's cookie (set by the viewer page) works as for WADO-RS.
    r = requests.get(f"{pacs.url}/wado", cookies={"pacs_token": token_a},
                     params={"requestType": "WADO", "studyUID": A, "seriesUID": str(a.SeriesInstanceUID),
                             "objectUID": str(a.SOPInstanceUID), "contentType": "application/dicom"})
    assert r.status_code == 200 and r.content[128:132] == b"DICM"
    # Reads are audited with their study.
    deadline = time.time() + 10
    while True:
        events = requests.get(f"{pacs.url}/api/v1/admin/audit?study={A}&action=read",
                              headers=bearer(KEYS["admin"])).json()["events"]
        if any(e["who"] == "viewer-key" for e in events) or time.time() > deadline:
            break
        time.sleep(0.2)
    assert any(e["who"] == "viewer-key" and str(a.SOPInstanceUID) in e["detail"] for e in events), events
    assert not any(token_a in (e.get("detail") or "") for e in events)
