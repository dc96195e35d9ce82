"""WADO-RS rendered images and thumbnails: they decode, honour window, viewport, quality
and media type, and show the stored pixels."""

import email.parser
import email.policy
import io

import numpy as np
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from PIL import Image

from dicomgen import ct_series, multiframe, sample, sample_bytes, to_bytes


def store_raw(pacs, raw):
    r = pacs.post("/studies", raw, "application/dicom")
    assert r.status_code == 200, r.text
    return r.json()["00081199"]["Value"][0]["00081190"]["Value"][0]


def image(resp, fmt="JPEG"):
    assert resp.status_code == 200, resp.text
    img = Image.open(io.BytesIO(resp.content))
    assert img.format == fmt
    return img


def expected_window(ds, center, width):
    """PS3.3 C.11.2.1.2 linear VOI LUT to 8 bits, after the modality rescale."""
    x = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    y = ((x - (center - 0.5)) / (width - 1) + 0.5) * 255
    return np.clip(y, 0, 255)


def test_instance_rendered_with_window_and_png(pacs):
    ds = ct_series(n=1, size=64)[0]
    client = DICOMwebClient(pacs.dicomweb)
    client.store_instances([ds])
    url = f"{pacs.dicomweb}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    jpeg = image(requests.get(f"{url}/rendered"))
    assert jpeg.size == (64, 64) and jpeg.mode == "L"
    png = image(requests.get(f"{url}/rendered?window=1000,3000", headers={"Accept": "image/png"}), "PNG")
    got = np.asarray(png, dtype=np.float64)
    assert np.abs(got - expected_window(ds, 1000, 3000)).max() <= 2
    default = np.asarray(image(requests.get(f"{url}/rendered", headers={"Accept": "image/png"}), "PNG"), dtype=np.float64)
    assert np.abs(default - expected_window(ds, 40, 400)).max() <= 2, "the stored window is the default"
    small = image(requests.get(f"{url}/rendered?viewport=32,16"))
    assert small.size == (16, 16)
    crop = image(requests.get(f"{url}/rendered?viewport=20,20,0,0,10,10"))
    assert crop.size == (20, 20)
    low = requests.get(f"{url}/rendered?quality=5").content
    high = requests.get(f"{url}/rendered?quality=100").content
    assert len(low) < len(high)
    rendered = client.retrieve_instance_rendered(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID),
                                                 str(ds.SOPInstanceUID), media_types=("image/png",))
    assert Image.open(io.BytesIO(rendered)).size == (64, 64)


@pytest.mark.parametrize("name,mode", [("SC_rgb_jpeg_dcmtk.dcm", "RGB"), ("JPEG2000.dcm", "L"),
                                       ("SC_rgb_rle_2frame.dcm", "RGB"), ("MR_small_bigendian.dcm", "L"),
                                       ("image_dfl.dcm", "L"), ("MR_small_jpeg_ls_lossless.dcm", "L"),
                                       ("MR_small_jp2klossless.dcm", "L"), ("MR_small_RLE.dcm", "L")])
def test_compressed_and_other_syntaxes_render(pacs, name, mode):
    ds = sample(name)
    url = store_raw(pacs, sample_bytes(name))
    img = image(requests.get(f"{url}/rendered", headers={"Accept": "image/png"}), "PNG")
    assert img.size == (ds.Columns, ds.Rows) and img.mode == mode
    arr = np.asarray(img)
    assert arr.std() > 5, "not a blank image"
    if mode == "RGB":
        # pydicom's pixel_array is RGB (it converts YBR); so must the rendering be.
        ref = ds.pixel_array if int(getattr(ds, "NumberOfFrames", 1)) == 1 else ds.pixel_array[0]
        assert np.abs(arr.astype(int) - ref.astype(int)).mean() < 3


def test_frames_and_thumbnails(pacs):
    mf = multiframe(frames=4)
    url = store_raw(pacs, to_bytes(mf))
    f1 = np.asarray(image(requests.get(f"{url}/frames/1/rendered", headers={"Accept": "image/png"}), "PNG"))
    f3 = np.asarray(image(requests.get(f"{url}/frames/3/rendered", headers={"Accept": "image/png"}), "PNG"))
    assert f1.shape == (mf.Rows, mf.Columns) and not np.array_equal(f1, f3)
    assert np.abs(f3.astype(float) - expected_window(mf, 40, 400)[2]).max() <= 2
    assert requests.get(f"{url}/frames/99/rendered").status_code == 404
    assert requests.get(f"{url}/frames/1,2/rendered").status_code == 400
    for thumb in [f"{url}/thumbnail", f"{url}/frames/2/thumbnail",
                  url.split("/instances/")[0] + "/thumbnail", url.split("/series/")[0] + "/thumbnail"]:
        img = image(requests.get(thumb))
        assert max(img.size) <= 128, thumb
    big = image(requests.get(f"{url}/thumbnail?viewport=300,300"))
    assert max(big.size) == 300


def test_series_rendered_is_multipart(pacs):
    series = ct_series(n=3, size=32)
    DICOMwebClient(pacs.dicomweb).store_instances(series)
    url = f"{pacs.dicomweb}/studies/{series[0].StudyInstanceUID}/series/{series[0].SeriesInstanceUID}/rendered"
    r = requests.get(url)
    assert r.status_code == 200 and r.headers["content-type"].startswith("multipart/related")
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + r.headers["content-type"].encode() + b"\r\n\r\n" + r.content)
    parts = [p.get_payload(decode=True) for p in msg.iter_parts()]
    assert len(parts) == 3
    assert all(Image.open(io.BytesIO(p)).size == (32, 32) for p in parts)


def test_rendered_errors(pacs):
    url = store_raw(pacs, sample_bytes("CT_small.dcm"))
    for bad in ["window=40", "window=40,0", "viewport=0,0", "quality=0", "quality=abc", "bogus=1"]:
        assert requests.get(f"{url}/rendered?{bad}").status_code == 400, bad
    assert requests.get(f"{url}/rendered", headers={"Accept": "image/gif"}).status_code == 406
    sr = store_raw(pacs, sample_bytes("test-SR.dcm"))
    r = requests.get(f"{sr}/rendered")
    assert r.status_code == 406 and "pixel data" in r.json()["message"]
    # 32-bit RT dose cannot be rendered by the decoder: a clear 406, not an error.
    dose = store_raw(pacs, sample_bytes("rtdose.dcm"))
    r = requests.get(f"{dose}/rendered")
    assert r.status_code == 406 and "BitsAllocated" in r.json()["message"]
