"""The crash-trial script (scripts/crash_trials.py) in a bounded run: kill -9 during
concurrent STOW-RS, C-STORE and offline uploads, then verify. Zero acknowledged instances
lost, zero index rows without objects, zero hash mismatches. On SQLite, the same with index
commits lost as in a power failure, and start-up recovery on its own."""

import json
import subprocess
import sys
import time

import pytest
import requests

from pacs import ROOT


def test_crash_trials(backend):
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "crash_trials.py"), "--rounds", "3",
                        "--backend", backend.name, "--seed", "5"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["lost"] == 0 and summary["missing_rows"] == 0 and summary["mismatched"] == 0
    assert summary["acknowledged"] > 50 and all(n > 0 for n in summary["by_entry"].values()), summary


def test_power_loss_trials(backend):
    """SQLite commits instance rows without an fsync each: each round puts the index back to
    a copy taken mid-round (commits lost, as in a power failure) and the restarted process
    must re-index every acknowledged instance from the object store."""
    if backend.name != "sqlite-fs":
        pytest.skip("PostgreSQL commits are durable; only the SQLite index is relaxed")
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "crash_trials.py"), "--rounds", "4",
                        "--backend", backend.name, "--seed", "7", "--power-loss"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["lost"] == 0 and summary["missing_rows"] == 0 and summary["mismatched"] == 0
    assert summary["rows_lost"] > 0, summary  # the trial did take commits away
    assert summary["objects_lost"] > 0, summary  # and unflushed objects
    assert summary["acknowledged"] > 50 and all(n > 0 for n in summary["by_entry"].values()), summary


def test_journal_puts_back_unflushed_objects_after_a_power_failure(make_pacs, backend):
    """Objects of up to 1 MiB are acknowledged once their journal record is flushed, before
    their own files are: a power failure may then lose or tear those files. The next start
    writes them again from the journal, byte for byte, before it serves; `verify` finds
    every row's object intact, and the journal is gone."""
    if backend.name != "sqlite-fs":
        pytest.skip("the journal serves the filesystem store")
    sys.path.insert(0, str(ROOT / "scripts"))
    from crash_trials import journal_keys

    from dicomgen import ct_series, to_bytes

    pacs = make_pacs()
    sent = {}
    for attempt in range(10):
        series = ct_series(n=12, size=32)
        parts = [to_bytes(ds) for ds in series]
        r = pacs.stow(parts)
        assert r.status_code == 200, r.text
        sent.update({str(ds.SOPInstanceUID): raw for ds, raw in zip(series, parts)})
        pacs.kill()
        keys = journal_keys(pacs)
        if keys:
            break
        pacs.start()  # a rotation flushed them all just before the kill: again
    assert keys, "the journal held the last objects"
    for n, key in enumerate(keys):
        path = pacs.objects_dir() / key
        if n % 2:
            path.unlink()
        else:
            path.write_bytes(path.read_bytes()[:100])
    pacs.start()
    assert "object journal replayed" in pacs.server_log()
    for sop, raw in sent.items():
        assert pacs.object_bytes(sop) == raw
    report = json.loads(pacs.cli("verify", "--json").stdout)
    assert report["missing"] == [] and report["mismatched"] == [], report
    journals = [d for d in (pacs.dir / "data" / "journal").iterdir() if d.is_dir()]
    assert len(journals) == 1, journals  # the live process's


def test_startup_recovery_reindexes_lost_rows_and_deletes_torn_objects(make_pacs, backend):
    """A power failure took the index's last commits (the index is put back to an earlier
    copy) and left a torn object behind: at start-up the acknowledged instances are indexed
    again, counters and all, their bytes unchanged; the torn object is deleted, not indexed."""
    if backend.name != "sqlite-fs":
        pytest.skip("only the SQLite index commits without an fsync each")
    import hashlib
    import sqlite3
    from pathlib import Path

    from dicomgen import ct_series, to_bytes

    pacs = make_pacs()
    series = ct_series(n=3, size=32)
    # One over 1 MiB: spooled to a file, fsynced and renamed into place.
    series += ct_series(n=1, size=800, study_uid=str(series[0].StudyInstanceUID))
    parts = [to_bytes(ds) for ds in series]
    study = str(series[0].StudyInstanceUID)
    assert len(parts[-1]) > 1 << 20

    def stow(body_parts):
        r = pacs.stow(body_parts)
        assert r.status_code == 200, r.text

    stow(parts[:1])
    index = Path(pacs.dir) / "data" / "index.sqlite"
    src, copy = sqlite3.connect(index), sqlite3.connect(index.with_suffix(".copy"))
    src.backup(copy)
    src.close()
    copy.close()
    stow(parts[1:])
    pacs.kill()
    for suffix in ("-wal", "-shm"):
        Path(str(index) + suffix).unlink(missing_ok=True)
    index.with_suffix(".copy").replace(index)
    assert pacs.count("instances") == 1
    torn = pacs.objects_dir() / study / (hashlib.sha256(b"what was meant").hexdigest() + ".dcm")
    torn.write_bytes(parts[1][: len(parts[1]) // 2])
    # Another version of a lost instance, written after it (refused when it came, its
    # removal lost with the power): the acknowledged, older one is the one indexed.
    other = series[2].copy()
    other.ImageComments = "another version"
    other_bytes = to_bytes(other)
    other_path = pacs.objects_dir() / study / (hashlib.sha256(other_bytes).hexdigest() + ".dcm")
    other_path.write_bytes(other_bytes)

    pacs.start()
    assert "start-up recovery re-indexed" in pacs.server_log()
    assert pacs.count("instances") == 4
    assert not torn.exists()
    assert other_path.exists(), "a conflicting version is kept for the operator"
    r = requests.get(f"{pacs.dicomweb}/studies?StudyInstanceUID={study}&includefield=00201208")
    assert r.json()[0]["00201208"]["Value"] == [4]
    for ds, raw in zip(series, parts):
        assert pacs.object_bytes(str(ds.SOPInstanceUID)) == raw


def test_startup_recovery_does_not_bring_back_deleted_instances(make_pacs, backend):
    """An admin delete commits the rows, then removes the objects: if the process dies in
    between, the object left behind is an orphan that recovery must delete, not re-index.
    The same instance sent again after its delete comes back as usual."""
    if backend.name != "sqlite-fs":
        pytest.skip("start-up recovery runs for the SQLite index on the filesystem")
    import os

    import authtools
    from authtools import KEYS, bearer
    from dicomgen import ct_series, to_bytes

    pacs = make_pacs(authtools.env())
    series = ct_series(n=2, size=32)
    parts = [to_bytes(ds) for ds in series]
    study = str(series[0].StudyInstanceUID)
    r = pacs.stow(parts, headers=bearer(KEYS["uploader"]))
    assert r.status_code == 200, r.text
    sop = str(series[0].SOPInstanceUID)
    keys = {row[0]: row[1] for row in pacs.instance_rows()}
    path = pacs.objects_dir() / study / f"{keys[sop]}.dcm"
    url = f"{pacs.dicomweb}/studies/{study}/series/{series[0].SeriesInstanceUID}/instances/{sop}"
    assert requests.delete(url, headers=bearer(KEYS["admin"])).status_code == 204
    assert not path.exists()
    # The object's removal "did not happen": it is back, as old as it was.
    path.write_bytes(parts[0])
    os.utime(path, (time.time() - 60, time.time() - 60))
    pacs.stop()
    pacs.start()
    assert pacs.count("instances") == 1
    assert not path.exists()
    # Sent again after the delete: stored again.
    r = pacs.stow(parts[:1], headers=bearer(KEYS["uploader"]))
    assert r.status_code == 200, r.text
    pacs.stop()
    pacs.start()
    assert pacs.count("instances") == 2


def test_recovery_before_delete_orphans_and_a_failed_recovery_stops_the_start(make_pacs, backend):
    """After a power failure took rows, `verify --delete-orphans` re-indexes the acknowledged
    objects before it looks for orphans (it must not sweep them); and an object recovery
    cannot read stops the server's start instead of serving without it."""
    if backend.name != "sqlite-fs":
        pytest.skip("start-up recovery runs for the SQLite index on the filesystem")
    import json
    import sqlite3
    from pathlib import Path

    from dicomgen import ct_series

    pacs = make_pacs()
    index = Path(pacs.dir) / "data" / "index.sqlite"
    src, copy = sqlite3.connect(index), sqlite3.connect(index.with_suffix(".copy"))
    src.backup(copy)
    src.close()
    copy.close()
    series = ct_series(n=2, size=32)
    r = pacs.stow(series)
    assert r.status_code == 200, r.text
    pacs.kill()
    for suffix in ("-wal", "-shm"):
        Path(str(index) + suffix).unlink(missing_ok=True)
    index.with_suffix(".copy").replace(index)
    assert pacs.count("instances") == 0

    r = pacs.cli("verify", "--json", "--grace-secs", "0", "--delete-orphans")
    report = json.loads(r.stdout)
    assert report["deleted"] == [] and report["orphans"] == [], report
    assert pacs.count("instances") == 2

    # Something under an object's name that cannot be read (a directory): no start.
    study = str(series[0].StudyInstanceUID)
    (pacs.objects_dir() / study / ("ab" * 32 + ".dcm")).mkdir()
    try:
        pacs.start()
        started = True
    except RuntimeError:
        started = False
    assert not started
    assert "start-up recovery" in pacs.server_log()
