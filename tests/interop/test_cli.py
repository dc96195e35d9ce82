"""The `import`, `verify` and `migrate` commands, and a crash test: kill -9 during STOW."""

import hashlib
import json
import random
import shutil
import threading
import time
from pathlib import Path

import requests
from pydicom.data import get_testdata_file

from dicomgen import ct_series, sample, to_bytes

IMPORT_SAMPLES = ["CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "rtdose.dcm", "test-SR.dcm", "SC_rgb_rle_2frame.dcm"]


def verify(pacs, *args):
    r = pacs.cli("verify", "--json", "--grace-secs", "0", *args)
    return r.returncode, json.loads(r.stdout)


def make_import_tree(root: Path) -> Path:
    tree = root / "incoming"
    (tree / "nested" / "deeper").mkdir(parents=True)
    for i, name in enumerate(IMPORT_SAMPLES):
        target = tree / ("nested/deeper" if i % 2 else "") / name
        shutil.copy(get_testdata_file(name), target)
    for ds in ct_series(n=5, patient_name="Import^Test"):
        (tree / "nested" / f"{ds.SOPInstanceUID}.dcm").write_bytes(to_bytes(ds))
    return tree


def test_import_walks_folders_and_reports(make_pacs, tmp_path):
    pacs = make_pacs(start=False)
    tree = make_import_tree(tmp_path)
    r = pacs.cli("import", tree)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "11 stored, 0 already stored, 0 rejected" in r.stdout
    assert pacs.count("instances") == 11
    # Files are untouched, objects are byte-identical.
    ct = sample("CT_small.dcm")
    assert pacs.object_bytes(str(ct.SOPInstanceUID)) == Path(get_testdata_file("CT_small.dcm")).read_bytes()

    (tree / "garbage.dcm").write_bytes(b"not dicom" * 100)
    (tree / "truncated.dcm").write_bytes(Path(get_testdata_file("MR_truncated.dcm")).read_bytes())
    r = pacs.cli("import", "-j", "2", tree)
    assert r.returncode == 1, "rejections make the exit code non-zero"
    assert "0 stored, 11 already stored, 2 rejected" in r.stdout
    assert "garbage.dcm" in r.stdout and "truncated.dcm" in r.stdout
    assert pacs.count("instances") == 11
    assert pacs.spool_files() == []

    r = pacs.cli("import", tmp_path / "does-not-exist")
    assert r.returncode != 0 and "does not exist" in r.stderr


def test_import_and_server_share_one_store(make_pacs, tmp_path):
    pacs = make_pacs()
    tree = make_import_tree(tmp_path)
    assert pacs.cli("import", tree).returncode == 0
    # The running server sees the imported instance as already stored.
    raw = Path(get_testdata_file("MR_small.dcm")).read_bytes()
    r = pacs.post("/studies", raw, "application/dicom")
    assert r.status_code == 200
    assert pacs.count("instances") == 11


def test_migrate_reports_counts(make_pacs):
    pacs = make_pacs(start=False)
    r = pacs.cli("migrate")
    assert r.returncode == 0, r.stderr
    assert "0 studies, 0 series, 0 instances" in r.stdout


def test_verify_finds_corruption_missing_and_orphans(make_pacs, tmp_path):
    pacs = make_pacs(start=False)
    series = ct_series(n=4)
    for ds in series:
        (tmp_path / f"{ds.SOPInstanceUID}.dcm").write_bytes(to_bytes(ds))
    assert pacs.cli("import", tmp_path).returncode == 0
    code, report = verify(pacs)
    assert code == 0, report
    assert report["instances_checked"] == 4 and report["intact"] == 4
    assert report["missing"] == report["mismatched"] == report["orphans"] == []

    sops = [str(ds.SOPInstanceUID) for ds in series]
    objects = {p.stem: p for p in pacs.object_files()}
    rows = {r[0]: r[1] for r in pacs.instance_rows()}
    corrupt = objects[rows[sops[0]]]
    data = bytearray(corrupt.read_bytes())
    data[-10] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    objects[rows[sops[1]]].unlink()
    # An orphan: a valid object whose index row was lost (crash between put and commit).
    orphan_ds = ct_series(n=1, study_uid=str(series[0].StudyInstanceUID))[0]
    orphan_bytes = to_bytes(orphan_ds)
    orphan_key = f"{orphan_ds.StudyInstanceUID}/{hashlib.sha256(orphan_bytes).hexdigest()}.dcm"
    (pacs.objects_dir() / orphan_key).write_bytes(orphan_bytes)
    # An orphan that is not DICOM at all.
    junk = b"junk" * 10
    junk_key = f"{orphan_ds.StudyInstanceUID}/{hashlib.sha256(junk).hexdigest()}.dcm"
    (pacs.objects_dir() / junk_key).write_bytes(junk)

    code, report = verify(pacs)
    assert code == 1
    assert [m.split()[0] for m in report["mismatched"]] == [sops[0]]
    assert [m.split()[0] for m in report["missing"]] == [sops[1]]
    assert sorted(report["orphans"]) == sorted([orphan_key, junk_key])
    assert report["intact"] == 2

    # Young orphans are left alone by default (they may be in-flight ingests).
    r = pacs.cli("verify", "--json", "--reindex")
    assert json.loads(r.stdout)["orphans"] == [] and len(json.loads(r.stdout)["recent_orphans"]) == 2

    code, report = verify(pacs, "--reindex")
    assert report["reindexed"] == [orphan_key]
    assert str(orphan_ds.SOPInstanceUID) in {r[0] for r in pacs.instance_rows()}
    code, report = verify(pacs, "--delete-orphans")
    assert report["orphans"] == [junk_key] and report["deleted"] == [junk_key]
    assert not (pacs.objects_dir() / junk_key).exists()


def test_crash_during_stow_loses_no_acknowledged_instance(make_pacs):
    """kill -9 the server while clients STOW in a loop; every acknowledged instance must
    survive intact, and no index row may point to a missing object."""
    pacs = make_pacs(start=False)
    acked = {}          # sop uid -> sha256 of the bytes sent
    rng = random.Random(7)
    for round_no in range(3):
        pacs.start()
        stop = threading.Event()

        def client(worker):
            n = 0
            while not stop.is_set():
                batch = ct_series(n=3, size=64, seed=round_no * 1000 + worker * 100 + n)
                n += 1
                parts = [to_bytes(ds) for ds in batch]
                try:
                    r = pacs.stow(parts, timeout=10)
                except requests.RequestException:
                    return
                if r.status_code == 200:
                    for ds, p in zip(batch, parts):
                        acked[str(ds.SOPInstanceUID)] = hashlib.sha256(p).hexdigest()

        threads = [threading.Thread(target=client, args=(w,)) for w in range(3)]
        for t in threads:
            t.start()
        time.sleep(rng.uniform(0.8, 2.0))
        pacs.kill()
        stop.set()
        for t in threads:
            t.join()

        code, report = verify(pacs, "--reindex")
        assert report["missing"] == [] and report["mismatched"] == [], report
        rows = {r[0]: r[1] for r in pacs.instance_rows()}
        lost = [uid for uid in acked if uid not in rows]
        assert lost == [], f"round {round_no}: {len(lost)} acknowledged instances lost"
        assert all(rows[uid] == sha for uid, sha in acked.items())
    assert len(acked) > 20, "the clients got some instances acknowledged"
    # After a restart the server is healthy and the spool of the killed process is gone.
    pacs.start()
    assert requests.get(f"{pacs.url}/readyz").status_code == 200
    assert pacs.spool_files() == []


def test_sigterm_stops_http_and_dimse_gracefully(make_pacs):
    import signal
    pacs = make_pacs()
    assert requests.get(f"{pacs.url}/healthz").status_code == 200
    t0 = time.time()
    pacs.proc.send_signal(signal.SIGTERM)
    assert pacs.proc.wait(10) == 0
    assert time.time() - t0 < 5
    log = pacs.server_log()
    assert "draining associations" in log and "closing the index" in log
