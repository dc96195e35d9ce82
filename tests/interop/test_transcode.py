"""Every transfer syntax a client asks for (issue 18): WADO-RS `transfer-syntax=` and WADO-URI
`transferSyntax` answer in the stored syntax, Explicit/Implicit VR Little Endian, Deflated,
JPEG-LS Lossless (encoded here with CharLS) or, when asked for by name, JPEG Baseline (lossy,
marked so); a syntax this server cannot produce is 406. Lossless answers carry exactly the
pixels stored: checked with pydicom (pyjpegls) and with dcmtk's own decoder (dcmdjpls), and
every object we produce passes dciodvfy without errors. Over DIMSE, objects stored JPEG-LS or
JPEG 2000 by storescu are kept as sent, and getscu proposing only uncompressed syntaxes
receives them decoded, pixel for pixel."""

import io
import shutil

import numpy as np
import pydicom
import pytest
import requests
from pydicom.data import get_testdata_file

import dciodvfy
from dicomgen import ct_series, multiframe, sample, sample_bytes, to_bytes
from dimsetools import require_dcmtk, run
from test_dimse_retrieve import by_sop, store
from test_wado import parse_multipart, store_raw
from test_wado_uri import wado

EXPLICIT = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
JPEG_LS = "1.2.840.10008.1.2.4.80"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
RLE = "1.2.840.10008.1.2.5"
JPEG_2000 = "1.2.840.10008.1.2.4.90"

DCMTK = [m for m in [require_dcmtk()] if m]


def retrieve(url, ts) -> tuple[int, bytes]:
    r = requests.get(url, headers={"Accept": f'multipart/related; type="application/dicom"; transfer-syntax={ts}'})
    if r.status_code != 200:
        return r.status_code, r.content
    [(headers, body)] = parse_multipart(r)
    if ts != "*":
        assert headers["Content-Type"] == f"application/dicom; transfer-syntax={ts}"
    return 200, body


def ct_16bit_signed(size=96, seed=3):
    """A CT slice with signed 16-bit samples over the whole range a scanner writes."""
    [ds] = ct_series(n=1, size=size, seed=seed)
    rng = np.random.default_rng(seed)
    body = 300 * np.sin(np.linspace(0, 6, size))[None, :] + rng.normal(0, 40, (size, size))
    pixels = np.clip(body, -1024, 3071).astype(np.int16)
    pixels[:8, :8] = -2000  # outside the field of view
    ds.PixelRepresentation = 1
    ds.BitsStored, ds.HighBit = 16, 15
    ds.PixelData = pixels.tobytes()
    return ds


@pytest.mark.parametrize("source", ["ct12", "ct16signed", "MR_small.dcm", "MR_small_RLE.dcm", "JPEG2000.dcm"])
def test_wado_rs_jpeg_ls_and_deflated_keep_every_pixel(pacs, tmp_path, source):
    """JPEG-LS, RLE and Deflated answers decode (pydicom, dcmdjpls, dcmdrle) to exactly the stored pixels; dciodvfy adds no error."""
    if source == "ct12":
        [ds] = ct_series(n=1, size=80, seed=5)
        raw = to_bytes(ds)
    elif source == "ct16signed":
        ds = ct_16bit_signed()
        raw = to_bytes(ds)
    else:
        ds, raw = sample(source), sample_bytes(source)
    url = store_raw(pacs, raw)
    expected = ds.pixel_array
    (tmp_path / "original.dcm").write_bytes(raw)
    # What we write adds no error to those of the object as received (test data is not
    # always complete: the generated CT lacks Laterality, say).
    inherited = set(dciodvfy.errors(tmp_path / "original.dcm"))
    for ts in (JPEG_LS, DEFLATED, IMPLICIT, RLE):
        status, body = retrieve(url, ts)
        assert status == 200, (ts, body[:300])
        got = pydicom.dcmread(io.BytesIO(body))
        assert got.file_meta.TransferSyntaxUID == ts
        assert got.SOPInstanceUID == ds.SOPInstanceUID
        assert np.array_equal(got.pixel_array, expected), ts
        path = tmp_path / f"{ts}.dcm"
        path.write_bytes(body)
        if ts == DEFLATED and not DCMTK:
            # dciodvfy does not read deflated data sets: dcmtk inflates it, then it is checked.
            inflated = tmp_path / "inflated.dcm"
            r = run("dcmconv", "+te", path, inflated)
            assert r.returncode == 0, r.stderr
            path = inflated
        assert set(dciodvfy.errors(path)) - inherited == set(), ts
    if not DCMTK:
        for tool, ts in (("dcmdjpls", JPEG_LS), ("dcmdrle", RLE)):
            decoded = tmp_path / f"{tool}.dcm"
            r = run(tool, tmp_path / f"{ts}.dcm", decoded)
            assert r.returncode == 0, r.stderr
            assert np.array_equal(pydicom.dcmread(decoded).pixel_array, expected), tool


def test_jpeg_baseline_only_by_name_and_marked_lossy(pacs, tmp_path):
    """JPEG Baseline is sent only when asked for by name, with LossyImageCompression 01; 16-bit data: 406."""
    ds = sample("SC_rgb_rle.dcm")  # 8-bit RGB (stored RLE)
    url = store_raw(pacs, sample_bytes("SC_rgb_rle.dcm"))
    # Any syntax (*) or none: never lossy.
    for accept in ('multipart/related; type="application/dicom"', 'multipart/related; type="application/dicom"; transfer-syntax=*'):
        r = requests.get(url, headers={"Accept": accept})
        [(headers, _)] = parse_multipart(r)
        assert JPEG_BASELINE not in headers["Content-Type"]
    status, body = retrieve(url, JPEG_BASELINE)
    assert status == 200
    got = pydicom.dcmread(io.BytesIO(body))
    assert got.file_meta.TransferSyntaxUID == JPEG_BASELINE and got.LossyImageCompression == "01"
    assert np.abs(got.pixel_array.astype(int) - ds.pixel_array.astype(int)).mean() < 4
    path = tmp_path / "baseline.dcm"
    path.write_bytes(body)
    (tmp_path / "original.dcm").write_bytes(sample_bytes("SC_rgb_rle.dcm"))
    assert set(dciodvfy.errors(path)) - set(dciodvfy.errors(tmp_path / "original.dcm")) == set()
    status, body = retrieve(store_raw(pacs, to_bytes(ct_series(n=1, size=32)[0])), JPEG_BASELINE)
    assert status == 406, body[:200]


def test_jpeg_ls_of_a_colour_image_is_406_not_a_wrong_answer(pacs):
    """A colour image asked for in JPEG-LS is 406 (dicom-rs' encoder does not keep colour exact); Deflated still works."""
    ds = sample("SC_rgb_rle.dcm")
    url = store_raw(pacs, sample_bytes("SC_rgb_rle.dcm"))
    status, body = retrieve(url, JPEG_LS)
    assert status == 406 and "grayscale" in body.decode(), body[:300]
    status, body = retrieve(url, DEFLATED)
    assert status == 200 and np.array_equal(pydicom.dcmread(io.BytesIO(body)).pixel_array, ds.pixel_array)


def test_a_syntax_this_server_cannot_produce_is_406(pacs):
    """JPEG 2000 can be read but not written: asking for it is 406, saying what is sent instead."""
    url = store_raw(pacs, to_bytes(ct_series(n=1, size=32)[0]))
    status, body = retrieve(url, JPEG_2000)
    assert status == 406
    assert JPEG_LS in body.decode() and "cannot be sent" in body.decode()


def test_wado_uri_transfer_syntax(pacs):
    """WADO-URI transferSyntax=JPEG-LS answers JPEG-LS with the stored pixels; JPEG 2000 is 406."""
    [ds] = ct_series(n=1, size=64, seed=11)
    store_raw(pacs, to_bytes(ds))
    r = wado(pacs, ds, contentType="application/dicom", transferSyntax=JPEG_LS)
    assert r.status_code == 200, r.text
    got = pydicom.dcmread(io.BytesIO(r.content))
    assert got.file_meta.TransferSyntaxUID == JPEG_LS
    assert np.array_equal(got.pixel_array, ds.pixel_array)
    assert wado(pacs, ds, contentType="application/dicom", transferSyntax=JPEG_2000).status_code == 406


@pytest.mark.parametrize("name", ["MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm"])
def test_storescu_compressed_kept_as_sent_and_getscu_uncompressed_gets_them_decoded(pacs, tmp_path, name):
    """storescu of JPEG-LS and JPEG 2000 files: stored as sent; getscu with uncompressed syntaxes only: decoded, same pixels."""
    if DCMTK:
        pytest.skip("dcmtk is not installed")
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(get_testdata_file(name), folder / "x.dcm")
    store(pacs, folder)
    original = pydicom.dcmread(get_testdata_file(name))
    url = (f"{pacs.dicomweb}/studies/{original.StudyInstanceUID}/series/{original.SeriesInstanceUID}"
           f"/instances/{original.SOPInstanceUID}")
    status, body = retrieve(url, "*")
    assert status == 200
    stored = pydicom.dcmread(io.BytesIO(body))
    assert stored.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    # The compressed fragments as sent (storescu itself writes Pixel Data's VR as OB).
    assert stored.PixelData == original.PixelData

    out = tmp_path / "got"
    out.mkdir()
    r = run("getscu", "-v", "-S", "-aec", pacs.ae_title, "-od", out, "-k", "QueryRetrieveLevel=STUDY",
            "-k", f"StudyInstanceUID={original.StudyInstanceUID}", "127.0.0.1", pacs.dimse_port)
    assert r.returncode == 0, r.stdout + r.stderr
    [f] = list(out.iterdir())
    back = pydicom.dcmread(f)
    assert back.file_meta.TransferSyntaxUID in (EXPLICIT, IMPLICIT)
    assert np.array_equal(back.pixel_array, original.pixel_array)
    assert set(by_sop([f])) == {str(original.SOPInstanceUID)}


def test_frames_in_jpeg_ls(pacs):
    """WADO-RS frames of a native multi-frame image asked for as image/jls come JPEG-LS encoded, each exact."""
    import jpeg_ls
    ds = multiframe(frames=4, size=48)
    url = store_raw(pacs, to_bytes(ds))
    r = requests.get(f"{url}/frames/2,4", headers={"Accept": 'multipart/related; type="image/jls"'})
    assert r.status_code == 200, r.text
    parts = parse_multipart(r)
    assert len(parts) == 2
    for (headers, body), index in zip(parts, (1, 3)):
        assert headers["Content-Type"] == f"image/jls; transfer-syntax={JPEG_LS}"
        assert np.array_equal(jpeg_ls.decode(np.frombuffer(body, np.uint8)), ds.pixel_array[index])
    # A colour image is not JPEG-LS encoded here (dicom-rs would not keep it exact).
    url = store_raw(pacs, sample_bytes("SC_rgb_rle.dcm"))
    r = requests.get(f"{url}/frames/1", headers={"Accept": 'multipart/related; type="image/jls"'})
    assert r.status_code == 406, r.text


def test_frames_in_rle_and_jpeg_baseline(pacs):
    """WADO-RS frames of a native multi-frame image asked for as image/dicom-rle come RLE encoded,
    each exact (decoded by pydicom); image/jpeg comes only when JPEG baseline is named (lossy,
    8-bit data: close to the original), otherwise 406."""
    from pydicom.encaps import encapsulate
    ds = multiframe(frames=4, size=48)
    url = store_raw(pacs, to_bytes(ds))
    r = requests.get(f"{url}/frames/1,3", headers={"Accept": 'multipart/related; type="image/dicom-rle"'})
    assert r.status_code == 200, r.text
    for (headers, body), index in zip(parse_multipart(r), (0, 2)):
        assert headers["Content-Type"] == f"image/dicom-rle; transfer-syntax={RLE}"
        one = pydicom.Dataset()
        one.file_meta = pydicom.dataset.FileMetaDataset()
        one.file_meta.TransferSyntaxUID = RLE
        for k in ("Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
                  "SamplesPerPixel", "PhotometricInterpretation"):
            setattr(one, k, getattr(ds, k))
        one.PixelData = encapsulate([body])
        assert np.array_equal(one.pixel_array, ds.pixel_array[index])
    # 8-bit frames in JPEG baseline, when asked for by name.
    ds8 = multiframe(frames=2, size=48, seed=3)
    ds8.SOPInstanceUID = ds8.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ds8.BitsAllocated, ds8.BitsStored, ds8.HighBit = 8, 8, 7
    smooth = (np.add.outer(np.arange(48), np.arange(48)) * 2).astype(np.uint8)
    ds8.PixelData = np.stack([smooth, smooth[::-1]]).tobytes()
    url8 = store_raw(pacs, to_bytes(ds8))
    r = requests.get(f"{url8}/frames/2", headers={"Accept": 'multipart/related; type="image/jpeg"'})
    assert r.status_code == 406, r.text
    accept = f'multipart/related; type="image/jpeg"; transfer-syntax={JPEG_BASELINE}'
    r = requests.get(f"{url8}/frames/2", headers={"Accept": accept})
    assert r.status_code == 200, r.text
    [(headers, body)] = parse_multipart(r)
    assert headers["Content-Type"] == f"image/jpeg; transfer-syntax={JPEG_BASELINE}"
    from PIL import Image
    got = np.asarray(Image.open(io.BytesIO(body))).astype(int)
    assert got.shape == (48, 48) and np.abs(got - smooth[::-1]).max() <= 8
    # 16-bit data is not squeezed into JPEG baseline.
    r = requests.get(f"{url}/frames/1", headers={"Accept": accept})
    assert r.status_code == 406, r.text


def test_rle_of_a_colour_image_is_406(pacs):
    """RLE is encoded here for grayscale images; a colour one is refused (406), not sent unchecked."""
    url = store_raw(pacs, sample_bytes("SC_rgb_small_odd.dcm"))
    status, body = retrieve(url, RLE)
    assert status == 406 and "grayscale" in body.decode(), body[:300]
