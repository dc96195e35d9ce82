#!/usr/bin/env python3
"""Crash trials: kill -9 the server at random moments while clients store concurrently by
STOW-RS, C-STORE (pynetdicom) and the offline upload API; after each restart, `verify
--reindex` must report zero index rows without objects and zero hash mismatches, and every
instance acknowledged before the kill (STOW 200, C-STORE 0x0000, upload ACK) must be in
the index with the bytes that were sent. Prints the counts; exits 1 on any loss.

With --power-loss (SQLite + filesystem, where instance rows commit without an fsync each
and start-up recovery re-indexes what a power failure took), each round also loses index
commits: at a random moment during the round a consistent copy of the index is taken (the
SQLite backup API), and after the kill the index is put back to that copy, as if every
commit since had not reached the disk. Objects the server had not flushed yet are lost
or torn too: every object recorded in a journal segment the killed process left (objects
of up to 1 MiB are made durable through the journal, see src/storage/journal.rs) is deleted
or cut short at random. The restarted process must put back every acknowledged object from
its journal and re-index every acknowledged instance.

Usage: scripts/crash_trials.py [--rounds 20] [--backend sqlite-fs|postgres-s3] [--seed N]
       [--power-loss]
(postgres-s3 needs PACS_TEST_PG_URL and s3s-fs, as the test suite does.)
"""

import argparse
import hashlib
import json
import os
import random
import sqlite3
import sys
import threading
import time
import uuid
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "interop"))
from dicomgen import ct_series, to_bytes  # noqa: E402
from pacs import Backend, Pacs, S3Server  # noqa: E402


class Acked:
    """Instances acknowledged to a client: SOP Instance UID -> SHA-256 of what was sent."""

    def __init__(self):
        self.lock = threading.Lock()
        self.items = {}
        self.by_entry = {"stow": 0, "c-store": 0, "upload": 0}

    def add(self, entry, sop, sha):
        with self.lock:
            self.items[sop] = sha
            self.by_entry[entry] += 1


def stow_client(pacs, acked, stop, seed):
    n = 0
    while not stop.is_set():
        batch = ct_series(n=2, size=64, seed=seed + n)
        n += 1
        parts = [to_bytes(ds) for ds in batch]
        try:
            r = pacs.stow(parts, timeout=10)
        except requests.RequestException:
            return
        if r.status_code == 200:
            for ds, p in zip(batch, parts):
                acked.add("stow", str(ds.SOPInstanceUID), hashlib.sha256(p).hexdigest())


def cstore_client(pacs, acked, stop, seed):
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage
    ae = AE(ae_title="CRASHER")
    ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5
    n = 0
    while not stop.is_set():
        try:
            assoc = ae.associate("127.0.0.1", pacs.dimse_port, ae_title=pacs.ae_title)
        except Exception:
            return
        if not assoc.is_established:
            return
        try:
            while not stop.is_set():
                [ds] = ct_series(n=1, size=64, seed=seed + n)
                n += 1
                status = assoc.send_c_store(ds)
                if not status or "Status" not in status:
                    return
                if status.Status == 0:
                    # What the server stores: our meta group + the data set; the data set is
                    # what C-STORE carries, so compare data sets.
                    acked.add("c-store", str(ds.SOPInstanceUID), None)
        except Exception:
            return
        finally:
            try:
                assoc.abort()
            except Exception:
                pass


def upload_client(pacs, acked, stop, seed):
    api = f"{pacs.url}/api/v1/radiology/offline-images"
    n = 0
    while not stop.is_set():
        [ds] = ct_series(n=1, size=128, seed=seed + n)
        n += 1
        data = to_bytes(ds)
        m = {"image_uuid": str(uuid.uuid4()), "radiology_order_id": "CRASH", "filename": "x.dcm",
             "file_size": len(data), "mime_type": "application/dicom", "checksum": hashlib.sha256(data).hexdigest(),
             "image_metadata": {"study_uid": str(ds.StudyInstanceUID), "series_uid": str(ds.SeriesInstanceUID),
                                "image_uid": str(ds.SOPInstanceUID)}}
        try:
            if requests.post(f"{api}/upload-metadata/", json=m, timeout=10).status_code != 201:
                return
            half = len(data) // 2
            for off, part in ((0, data[:half]), (half, data[half:])):
                r = requests.post(f"{api}/upload-binary/", timeout=10, files=[
                    ("image_uuid", (None, m["image_uuid"])), ("offset", (None, str(off))), ("file", ("x", part))])
                if r.status_code not in (201, 202):
                    return
            r = requests.post(f"{api}/acknowledge/", json={"image_uuid": m["image_uuid"]}, timeout=10)
        except requests.RequestException:
            return
        if r.status_code == 200:
            acked.add("upload", str(ds.SOPInstanceUID), hashlib.sha256(data).hexdigest())


def index_path(pacs) -> Path:
    return pacs.dir / "data" / "index.sqlite"


def snapshot_index(pacs):
    """A consistent copy of the index as it is now (a read transaction's view)."""
    src = sqlite3.connect(index_path(pacs), timeout=30)
    dst = sqlite3.connect(index_path(pacs).with_suffix(".snapshot"))
    try:
        src.backup(dst)
    finally:
        dst.close()
        src.close()


def instance_count(path) -> int:
    con = sqlite3.connect(path)
    try:
        return con.execute("SELECT COUNT(*) FROM instances").fetchone()[0]
    finally:
        con.close()


def restore_index(pacs) -> int:
    """The index as the copy had it: every commit since then lost, as in a power failure.
    Returns how many instance rows that took."""
    path = index_path(pacs)
    before = instance_count(path)
    for suffix in ("-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    path.with_suffix(".snapshot").replace(path)
    return before - instance_count(path)


def journal_keys(pacs) -> list:
    """The object keys recorded in the journal segments a killed server left behind."""
    keys = set()
    for segment in (pacs.dir / "data" / "journal").glob("*/*.log"):
        data, at = segment.read_bytes(), 0
        seq = int(segment.stem)
        while at + 32 <= len(data) and data[at:at + 4] == b"PJR1" \
                and int.from_bytes(data[at + 24:at + 32], "little") == seq:
            key_len = int.from_bytes(data[at + 4:at + 6], "little")
            data_len = int.from_bytes(data[at + 8:at + 16], "little")
            keys.add(data[at + 32:at + 32 + key_len].decode())
            at += 32 + key_len + data_len
    return sorted(keys)


def lose_unflushed_objects(pacs, rng) -> int:
    """What a power failure may do to objects not flushed yet: each object the journal
    holds is deleted or cut short. Returns how many."""
    keys = journal_keys(pacs)
    for key in keys:
        path = pacs.objects_dir() / key
        if not path.exists():
            continue
        if rng.random() < 0.5:
            path.unlink()
        else:
            with open(path, "r+b") as f:
                f.truncate(rng.randrange(path.stat().st_size))
    return len(keys)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--backend", default="sqlite-fs", choices=["sqlite-fs", "postgres-s3"])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--power-loss", action="store_true",
                    help="also put the index back to a copy taken earlier in the round (SQLite only)")
    args = ap.parse_args()
    if args.power_loss and args.backend != "sqlite-fs":
        ap.error("--power-loss applies to sqlite-fs (PostgreSQL commits are durable)")
    rng = random.Random(args.seed)
    s3 = S3Server() if args.backend == "postgres-s3" else None
    backend = Backend(args.backend, pg_url=os.environ.get("PACS_TEST_PG_URL"), s3=s3)
    pacs = Pacs(backend, {"PACS_LOG__FILTER": "warn"})
    acked = Acked()
    totals = {"rounds": 0, "orphans_reindexed": 0, "missing_rows": 0, "mismatched": 0, "lost": 0,
              "rows_lost": 0, "objects_lost": 0}
    try:
        for round_no in range(args.rounds):
            pacs.start()
            stop = threading.Event()
            seed = 100_000 * (round_no + 1) + args.seed * 10_000_000
            threads = [threading.Thread(target=f, args=(pacs, acked, stop, seed + k * 1000))
                       for k, f in enumerate([stow_client, stow_client, cstore_client, upload_client])]
            for t in threads:
                t.start()
            run_for = rng.uniform(0.3, 1.5)
            if args.power_loss:
                time.sleep(run_for * rng.uniform(0.2, 0.8))
                snapshot_index(pacs)
                time.sleep(run_for * rng.uniform(0.1, 0.5))
            else:
                time.sleep(run_for)
            pacs.kill()
            stop.set()
            for t in threads:
                t.join(30)
            rows_lost = 0
            if args.power_loss:
                # Nothing but the server's own start-up recovery may bring the rows back:
                # start it, let it stop, and verify without --reindex.
                rows_lost = restore_index(pacs)
                totals["objects_lost"] += lose_unflushed_objects(pacs, rng)
                pacs.start()
                pacs.stop()
            totals["rows_lost"] += rows_lost
            reindex = [] if args.power_loss else ["--reindex"]
            r = pacs.cli("verify", "--json", "--grace-secs", "0", *reindex)
            report = json.loads(r.stdout)
            rows = {row[0]: row[1] for row in pacs.instance_rows()}
            lost = [sop for sop in acked.items if sop not in rows]
            wrong = [sop for sop, sha in acked.items.items() if sha and rows.get(sop) not in (sha, None)]
            totals["rounds"] += 1
            totals["orphans_reindexed"] += len(report["reindexed"])
            totals["missing_rows"] += len(report["missing"])
            totals["mismatched"] += len(report["mismatched"]) + len(wrong)
            totals["lost"] += len(lost)
            print(f"round {round_no + 1:2}: acknowledged so far {len(acked.items):5} "
                  f"(stow {acked.by_entry['stow']}, c-store {acked.by_entry['c-store']}, "
                  f"upload {acked.by_entry['upload']}); reindexed {len(report['reindexed'])}, "
                  f"rows without objects {len(report['missing'])}, mismatches {len(report['mismatched']) + len(wrong)}, "
                  f"lost {len(lost)}" + (f"; index rows lost to the power failure {rows_lost}, objects {totals['objects_lost']} so far"
                                         if args.power_loss else ""),
                  flush=True)
        pacs.start()
        ready = requests.get(f"{pacs.url}/readyz").status_code == 200
        spool_clean = pacs.spool_files() == []
    finally:
        pacs.cleanup()
        if s3:
            s3.stop()
    print(json.dumps(dict(totals, acknowledged=len(acked.items), by_entry=acked.by_entry,
                          ready_after=ready, spool_clean=spool_clean)))
    failed = totals["lost"] or totals["missing_rows"] or totals["mismatched"] or not ready or not spool_clean
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
