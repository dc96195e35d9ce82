"""Compression at rest (issue 18), against the real server on both backends: the background
job re-encodes idle CT and MR images (12- and 16-bit, smooth anatomy with noise, stored by
C-STORE and by STOW-RS) in JPEG-LS; the objects shrink; WADO-RS sends them as stored
(JPEG-LS) with `transfer-syntax=*` and with exactly the original pixels in Explicit VR
Little Endian (checked with pydicom and with dcmtk's dcmdjpls on the stored object);
`verify` passes; an offline upload's acknowledgement still holds (it names the SHA-256 as
received); `pacs-lite compress --dry-run` changes nothing and `--study` does the work; and
`kill -9` at any moment of the job loses nothing and leaves no orphan."""

import io
import json
import random
import re
import time

import numpy as np
import pydicom
import pytest
import requests

import dciodvfy
from dicomgen import ct_series, sample, sample_bytes, to_bytes
from dimsetools import dataset_bytes, require_dcmtk, run
from test_transcode import parse_multipart
from test_uploads import ack, meta_for, post_binary, post_meta

JPEG_LS = "1.2.840.10008.1.2.4.80"
RLE = "1.2.840.10008.1.2.5"
EXPLICIT = "1.2.840.10008.1.2.1"
ON = {"PACS_COMPRESSION__SYNTAX": "jpeg-ls-lossless", "PACS_COMPRESSION__AFTER": "0s",
      "PACS_COMPRESSION__INTERVAL_SECS": "1"}
DCMTK = [m for m in [require_dcmtk()] if m]


def anatomy(n, size, modality, bits_stored, signed, seed):
    """A series whose images look like a scan: smooth structures, edges and noise."""
    series = ct_series(n=n, size=size, modality=modality, seed=seed)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    for i, ds in enumerate(series):
        body = 800 * np.exp(-((xx - 0.5) ** 2 + (yy - 0.5) ** 2) / 0.08)
        organ = 400 * (((xx - 0.4 - 0.01 * i) ** 2 + (yy - 0.55) ** 2) < 0.01)
        image = body + organ + rng.normal(0, 12, (size, size))
        if signed:
            image = np.clip(image - 1000, -1024, 3071).astype(np.int16)
            ds.PixelRepresentation = 1
        else:
            image = np.clip(image, 0, (1 << bits_stored) - 1).astype(np.uint16)
        ds.BitsStored, ds.HighBit = bits_stored, bits_stored - 1
        ds.PixelData = image.tobytes()
    return series


def wado(pacs, ds, ts):
    url = (f"{pacs.dicomweb}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
           f"/instances/{ds.SOPInstanceUID}")
    r = requests.get(url, headers={"Accept": f'multipart/related; type="application/dicom"; transfer-syntax={ts}'})
    assert r.status_code == 200, r.text
    [(headers, body)] = parse_multipart(r)
    return headers["Content-Type"].split("transfer-syntax=")[1], body


def compressed_count(pacs) -> int:
    text = requests.get(f"{pacs.url}/metrics").text
    m = re.search(r'pacs_compress_objects_total\{result="done"\} (\d+)', text)
    return int(m.group(1)) if m else 0


def wait_until(predicate, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError("timed out")


def check_exact(pacs, originals, tmp_path, syntax=JPEG_LS):
    """Every instance is stored in `syntax` and decodes, here and in dcmtk, to its original pixels."""
    for ds in originals:
        ts, stored = wado(pacs, ds, "*")
        assert ts == syntax, ds.SOPInstanceUID
        ts, explicit = wado(pacs, ds, EXPLICIT)
        assert ts == EXPLICIT
        got = pydicom.dcmread(io.BytesIO(explicit))
        assert np.array_equal(got.pixel_array, ds.pixel_array)
        assert got.PatientName == ds.PatientName and got.SOPInstanceUID == ds.SOPInstanceUID
        (tmp_path / "stored.dcm").write_bytes(stored)
        (tmp_path / "original.dcm").write_bytes(to_bytes(ds))
        # The re-encoded object is as valid as the one received (dciodvfy adds no error).
        assert set(dciodvfy.errors(tmp_path / "stored.dcm")) <= set(dciodvfy.errors(tmp_path / "original.dcm"))
        if not DCMTK:
            tool = "dcmdjpls" if syntax == JPEG_LS else "dcmdrle"
            r = run(tool, tmp_path / "stored.dcm", tmp_path / "decoded.dcm")
            assert r.returncode == 0, r.stderr
            assert np.array_equal(pydicom.dcmread(tmp_path / "decoded.dcm").pixel_array, ds.pixel_array)


def test_the_job_shrinks_ct_and_mr_and_keeps_every_pixel(make_pacs, tmp_path):
    """C-STORE'd CT and STOW'd MR are re-encoded JPEG-LS: smaller, exact, verify clean, getscu gets them decoded."""
    pacs = make_pacs(ON)
    ct = anatomy(6, 256, "CT", 16, True, seed=1)
    mr = anatomy(6, 192, "MR", 12, False, seed=2)
    sizes = {str(ds.SOPInstanceUID): len(to_bytes(ds)) for ds in ct + mr}
    if DCMTK:
        assert pacs.stow(ct).status_code == 200
    else:
        folder = tmp_path / "ct"
        folder.mkdir()
        for ds in ct:
            (folder / f"{ds.SOPInstanceUID}.dcm").write_bytes(to_bytes(ds))
        r = run("storescu", "-aec", pacs.ae_title, "+sd", "127.0.0.1", pacs.dimse_port, folder)
        assert r.returncode == 0, r.stderr
    assert pacs.stow(mr).status_code == 200
    wait_until(lambda: compressed_count(pacs) >= 12)
    check_exact(pacs, ct + mr, tmp_path)
    stored = {str(ds.SOPInstanceUID): len(wado(pacs, ds, "*")[1]) for ds in ct + mr}
    ratio = sum(sizes.values()) / sum(stored.values())
    assert ratio > 1.5, (ratio, stored)
    r = pacs.cli("verify")
    assert r.returncode == 0 and "0 missing, 0 mismatched, 0 orphans" in r.stdout + r.stderr, r.stdout + r.stderr
    if not DCMTK:
        out = tmp_path / "got"
        out.mkdir()
        r = run("getscu", "-S", "-aec", pacs.ae_title, "-od", out, "-k", "QueryRetrieveLevel=STUDY",
                "-k", f"StudyInstanceUID={ct[0].StudyInstanceUID}", "127.0.0.1", pacs.dimse_port)
        assert r.returncode == 0, r.stderr
        got = {str(d.SOPInstanceUID): d for d in map(pydicom.dcmread, out.iterdir())}
        for ds in ct:
            back = got[str(ds.SOPInstanceUID)]
            assert back.file_meta.TransferSyntaxUID in (EXPLICIT, "1.2.840.10008.1.2")
            assert np.array_equal(back.pixel_array, ds.pixel_array)


def test_the_upload_ack_holds_after_compression(make_pacs):
    """An offline upload acknowledged before compression is acknowledged after it, with the checksum as received."""
    pacs = make_pacs(ON)
    [ds] = anatomy(1, 256, "CT", 12, False, seed=4)
    data = to_bytes(ds)
    m = meta_for(data, ds, order="ORD-Z")
    assert post_meta(pacs, m).status_code == 201
    assert post_binary(pacs, m["image_uuid"], data).status_code == 201
    first = ack(pacs, m["image_uuid"]).json()
    assert first["acknowledged"] and first["sha256"] == m["checksum"]
    wait_until(lambda: compressed_count(pacs) >= 1)
    assert wado(pacs, ds, "*")[0] == JPEG_LS
    again = ack(pacs, m["image_uuid"])
    assert again.status_code == 200, again.text
    assert again.json()["acknowledged"] and again.json()["sha256"] == m["checksum"]


def test_the_cli_dry_run_changes_nothing_and_study_compresses(make_pacs):
    """compress --dry-run reports the saving and changes nothing; compress --study (two workers) re-encodes that study only."""
    pacs = make_pacs()
    a = anatomy(3, 128, "CT", 12, False, seed=5)
    b = anatomy(2, 128, "CT", 12, False, seed=6)
    assert pacs.stow(a).status_code == 200 and pacs.stow(b).status_code == 200
    r = pacs.cli("compress", "--dry-run")
    assert r.returncode == 0 and "would re-encode 5 instance(s)" in r.stderr, r.stderr
    assert all(wado(pacs, ds, "*")[0] == EXPLICIT for ds in a + b)
    r = pacs.cli("compress", "--study", a[0].StudyInstanceUID, "--workers", "2")
    assert r.returncode == 0 and "re-encoded 3 instance(s)" in r.stderr and "saved" in r.stderr, r.stderr
    assert [wado(pacs, ds, "*")[0] for ds in a + b] == [JPEG_LS] * 3 + [EXPLICIT] * 2
    assert pacs.cli("compress", "--study", "1.2.x").returncode == 2


def test_colour_and_non_images_are_skipped_and_kept(make_pacs):
    """A colour image and a structured report are skipped and kept byte for byte; a CT beside them is done."""
    pacs = make_pacs()
    names = {"SC_rgb_small_odd.dcm": "skipped", "test-SR.dcm": "skipped", "CT_small.dcm": "done"}
    for name in names:
        assert pacs.post("/studies", sample_bytes(name), "application/dicom").status_code == 200
    r = pacs.cli("compress", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    results = {i["sop_instance_uid"]: i["outcome"]["result"] for i in report["instances"]}
    for name, expected in names.items():
        ds = sample(name)
        assert results[str(ds.SOPInstanceUID)] == expected, (name, report)
        if expected == "skipped":
            assert dataset_bytes(wado(pacs, ds, "*")[1]) == dataset_bytes(sample_bytes(name))
    assert pacs.cli("compress", "--json").stdout.count("sop_instance_uid") == 0  # not looked at again


def test_kill_9_during_the_job_loses_nothing(make_pacs, tmp_path):
    """kill -9 at random moments of compression (two workers, groups in flight): afterwards every
    instance is exact, verify clean, no orphan."""
    pacs = make_pacs({**ON, "PACS_COMPRESSION__WORKERS": "2"}, start=False)
    pacs.env["PACS_COMPRESSION__INTERVAL_SECS"] = "3600"  # one round per start, right away
    pacs.start()
    series = anatomy(40, 256, "CT", 16, True, seed=7)
    assert pacs.stow(series).status_code == 200
    pacs.kill()
    rng = random.Random(7)
    for _ in range(6):
        pacs.start()
        time.sleep(rng.uniform(0.05, 0.6))
        pacs.kill()
    pacs.start()
    wait_until(lambda: all(wado(pacs, ds, "*")[0] == JPEG_LS for ds in series), timeout=120)
    check_exact(pacs, series, tmp_path)
    r = pacs.cli("verify")
    assert r.returncode == 0 and "0 missing, 0 mismatched, 0 orphans" in r.stdout + r.stderr, r.stdout + r.stderr
    assert pacs.count("compress_intents") == 0


def test_rle_at_rest_keeps_every_pixel(make_pacs, tmp_path):
    """compression.syntax = rle: 16-bit signed CT and 12-bit MR are stored RLE Lossless (our own
    encoder), smaller, and decode in pydicom and dcmtk's dcmdrle to the original pixels."""
    pacs = make_pacs({**ON, "PACS_COMPRESSION__SYNTAX": "rle"})
    ct = anatomy(3, 256, "CT", 16, True, seed=11)
    mr = anatomy(3, 192, "MR", 12, False, seed=12)
    assert pacs.stow(ct + mr).status_code == 200
    wait_until(lambda: compressed_count(pacs) >= 6)
    check_exact(pacs, ct + mr, tmp_path, syntax=RLE)
    assert sum(len(wado(pacs, ds, "*")[1]) for ds in ct + mr) < sum(len(to_bytes(ds)) for ds in ct + mr)
    r = pacs.cli("verify")
    assert r.returncode == 0 and "0 missing, 0 mismatched, 0 orphans" in r.stdout + r.stderr, r.stdout + r.stderr


def test_a_syntax_without_an_encoder_is_refused_at_start(make_pacs):
    """compression.syntax = jpeg2000-lossless (dicom-rs cannot encode it): the server refuses to start and says why."""
    pacs = make_pacs({"PACS_COMPRESSION__SYNTAX": "jpeg2000-lossless"}, start=False)
    with pytest.raises(RuntimeError):
        pacs.start()
    assert "jpeg-ls-lossless or rle only" in pacs.server_log()
