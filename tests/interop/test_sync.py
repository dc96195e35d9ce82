"""`pacs-lite sync`, the reference offline client, against the real server: a queue of DICOM
files and a photo is uploaded, the client is killed mid-run and restarted, and in the end
every image is stored exactly once and every local copy is gone — each deleted only after
the server acknowledged it."""

import io
import json
import signal
import subprocess
import time

import pydicom
from PIL import Image

import authtools
from authtools import KEYS
from dicomgen import ct_series, to_bytes
from pacs import binary


def sync(pacs, queue, *extra):
    return subprocess.Popen([binary(), "sync", "--queue", str(queue), "--server", pacs.url,
                             "--order", "ORD-SYNC", "--chunk-bytes", "65536", *extra],
                            env=dict(pacs.env, PACS_SYNC_TOKEN=KEYS["uploader"], PACS_LOG__FILTER="warn"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stored_sops(pacs):
    return {row[0] for row in pacs.instance_rows()}


def test_sync_survives_being_killed(make_pacs, tmp_path):
    pacs = make_pacs(authtools.env())
    queue = tmp_path / "queue"
    queue.mkdir()
    series = ct_series(n=24, size=256)
    expected = {}
    for i, ds in enumerate(series):
        (queue / f"img{i:03d}.dcm").write_bytes(to_bytes(ds))
        expected[f"img{i:03d}.dcm"] = str(ds.SOPInstanceUID)
    photo = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(photo, "JPEG")
    (queue / "wound.jpg").write_bytes(photo.getvalue())
    photo_uid = pydicom.uid.generate_uid()
    (queue / "wound.jpg.meta.json").write_text(json.dumps({
        "radiology_order_id": "ORD-SYNC",
        "image_metadata": {"study_uid": str(series[0].StudyInstanceUID), "series_uid": pydicom.uid.generate_uid(),
                           "image_uid": photo_uid}}))
    expected["wound.jpg"] = photo_uid

    # Kill the client as soon as it has finished a few images (it is then mid-way through another).
    p = sync(pacs, queue)
    deadline = time.time() + 60
    while time.time() < deadline and len([f for f in queue.iterdir() if f.suffix in (".dcm", ".jpg")]) > 20:
        time.sleep(0.01)
    p.send_signal(signal.SIGKILL)
    p.wait()
    left = {f.name for f in queue.iterdir() if f.suffix in (".dcm", ".jpg")}
    assert 0 < len(left) < len(expected), "the kill did not land mid-run"
    # Whatever is gone from the queue was acknowledged, hence stored.
    gone = {expected[name] for name in expected if name not in left}
    assert gone <= stored_sops(pacs)

    p = sync(pacs, queue)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert [f.name for f in queue.iterdir()] == []
    assert stored_sops(pacs) == set(expected.values())
    # Exactly one upload per image: the restarted client reused its UUIDs.
    assert pacs.count("offline_uploads") == len(expected)
    assert pacs.count("instances") == len(expected)
    for name, sop in expected.items():
        if name.endswith(".dcm"):
            i = int(name[3:6])
            assert pacs.object_bytes(sop) == to_bytes(series[i])


def test_sync_keeps_what_the_server_refuses(make_pacs, tmp_path):
    pacs = make_pacs(authtools.env())
    queue = tmp_path / "queue"
    queue.mkdir()
    (queue / "broken.dcm").write_bytes(b"not dicom at all" * 100)
    [ds] = ct_series(n=1)
    (queue / "good.dcm").write_bytes(to_bytes(ds))
    p = sync(pacs, queue)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 1, err
    assert "broken.dcm" in err
    assert {f.name for f in queue.iterdir()} >= {"broken.dcm"} and not (queue / "good.dcm").exists()
    # Without the uploader role nothing moves.
    (queue / "good2.dcm").write_bytes(to_bytes(ct_series(n=1)[0]))
    p = subprocess.run([binary(), "sync", "--queue", str(queue), "--server", pacs.url, "--order", "O",
                        "--token", KEYS["viewer"]], capture_output=True, text=True, timeout=60, env=pacs.env)
    assert p.returncode == 1 and (queue / "good2.dcm").exists()
    assert "good2.dcm: refused by the server: forbidden" in p.stderr, p.stderr[-2000:]
