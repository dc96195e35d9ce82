#!/usr/bin/env python3
"""Fill a pacs-lite index (SQLite or PostgreSQL) with synthetic studies, series and
instances, fast, for query benchmarks at scale (objects are not written: only QIDO-RS can be
measured on it).

Usage: scripts/populate_index.py (--sqlite PATH | --postgres URL) [--studies 100000]
                                 [--instances-per-study 10]
The schema is created first with `pacs-lite migrate`; PostgreSQL is loaded with COPY
through psql (the database must exist and be empty).
"""

import argparse
import json
import os
import random
import sqlite3
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(os.environ.get("PACS_BIN", ROOT / "target" / "release" / "pacs-lite"))
CT = "1.2.840.10008.5.1.4.1.1.2"


def pn(v):
    return {"vr": "PN", "Value": [{"Alphabetic": v}]}


def s(vr, v):
    return {"vr": vr, "Value": [v]}


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    target = ap.add_mutually_exclusive_group(required=True)
    target.add_argument("--sqlite", type=Path)
    target.add_argument("--postgres", help="a postgres:// URL")
    ap.add_argument("--studies", type=int, default=100_000)
    ap.add_argument("--instances-per-study", type=int, default=10)
    args = ap.parse_args()
    if args.postgres:
        return populate_postgres(args)
    env = dict(os.environ, PACS_DATA_DIR=str(args.sqlite.parent), PACS_LOG__FILTER="warn")
    subprocess.run([BIN, "migrate"], env=env, check=True, capture_output=True)
    con = sqlite3.connect(args.sqlite)
    con.execute("PRAGMA synchronous = OFF")
    rng = random.Random(1)
    t0 = time.time()
    now = int(time.time() * 1000)
    per = args.instances_per_study
    with con:
        for i in range(args.studies):
            st_uid, se_uid = f"2.25.{i + 1}", f"2.25.{i + 1}.1"
            name, pid, acc = f"NAME{i:07d}^TEST", f"PID{i:07d}", f"ACC{i:07d}"
            date = f"{rng.randint(2020, 2025)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
            attrs = {"00080020": s("DA", date), "00080050": s("SH", acc), "00100010": pn(name),
                     "00100020": s("LO", pid), "0020000D": s("UI", st_uid), "00081030": s("LO", "Synthetic")}
            cur = con.execute(
                "INSERT INTO studies (study_uid, patient_name, patient_name_key, patient_id, study_date, "
                "study_time, accession_number, study_description, modalities, sop_classes, num_series, "
                "num_instances, attrs_json, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (st_uid, name, name.lower(), pid, date, "101500", acc, "Synthetic", "CT", CT, 1, per,
                 json.dumps(attrs), now, now))
            study_pk = cur.lastrowid
            cur = con.execute(
                "INSERT INTO series (series_uid, study_pk, modality, series_number, series_description, "
                "num_instances, attrs_json, created_at) VALUES (?,?,?,?,?,?,?,?)",
                (se_uid, study_pk, "CT", 1, "Synthetic", per,
                 json.dumps({"00080060": s("CS", "CT"), "0020000E": s("UI", se_uid), "00200011": s("IS", 1)}), now))
            series_pk = cur.lastrowid
            rows = []
            for k in range(per):
                sop = f"{se_uid}.{k + 1}"
                attrs = {"00080016": s("UI", CT), "00080018": s("UI", sop), "00200013": s("IS", k + 1)}
                rows.append((sop, series_pk, study_pk, CT, k + 1, "1.2.840.10008.1.2.1", 1, 512, 512,
                             f"{st_uid}/{'0' * 64}.dcm", 0, 0, "0" * 64, json.dumps(attrs), json.dumps(attrs),
                             "import", "populate_index.py", now))
            con.executemany(
                "INSERT INTO instances (sop_instance_uid, series_pk, study_pk, sop_class_uid, instance_number, "
                "transfer_syntax, number_of_frames, num_rows, num_columns, object_key, size, part10_prefix, sha256, "
                "attrs_json, metadata_json, origin_kind, origin_who, stored_at) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
    con.execute("ANALYZE")
    con.close()
    print(f"populated {args.studies} studies, {args.studies * per} instances in {time.time() - t0:.1f} s")


def rows(n_studies, per):
    """(studies, series, instances) rows as tab-separated lines, with explicit ids."""
    rng = random.Random(1)
    now = int(time.time() * 1000)
    for i in range(n_studies):
        st_uid, se_uid = f"2.25.{i + 1}", f"2.25.{i + 1}.1"
        name, pid, acc = f"NAME{i:07d}^TEST", f"PID{i:07d}", f"ACC{i:07d}"
        date = f"{rng.randint(2020, 2025)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
        attrs = {"00080020": s("DA", date), "00080050": s("SH", acc), "00100010": pn(name),
                 "00100020": s("LO", pid), "0020000D": s("UI", st_uid), "00081030": s("LO", "Synthetic")}
        study = [i + 1, st_uid, name, name.lower(), pid, date, "101500", acc, "Synthetic", "CT", CT, 1, per,
                 json.dumps(attrs), now, now]
        series = [i + 1, se_uid, i + 1, "CT", 1, "Synthetic", per,
                  json.dumps({"00080060": s("CS", "CT"), "0020000E": s("UI", se_uid), "00200011": s("IS", 1)}), now]
        instances = []
        for k in range(per):
            sop = f"{se_uid}.{k + 1}"
            a = json.dumps({"00080016": s("UI", CT), "00080018": s("UI", sop), "00200013": s("IS", k + 1)})
            instances.append([sop, i + 1, i + 1, CT, k + 1, "1.2.840.10008.1.2.1", 1, 512, 512,
                              f"{st_uid}/{'0' * 64}.dcm", 0, 0, "0" * 64, a, a, "import", "populate_index.py", now])
        yield study, series, instances


def copy(url, table, columns, lines):
    p = subprocess.Popen(["psql", url, "-q", "-c", f"\\copy {table} ({columns}) FROM STDIN"],
                         stdin=subprocess.PIPE, text=True)
    for line in lines:
        p.stdin.write("\t".join(map(str, line)) + "\n")
    p.stdin.close()
    if p.wait() != 0:
        raise SystemExit(f"COPY into {table} failed")


def populate_postgres(args):
    env = dict(os.environ, PACS_INDEX__URL=args.postgres, PACS_LOG__FILTER="warn",
               PACS_DATA_DIR=str(Path("/tmp") / "populate-pg"))
    subprocess.run([BIN, "migrate"], env=env, check=True, capture_output=True)
    t0 = time.time()
    n, per = args.studies, args.instances_per_study
    copy(args.postgres, "studies", "id, study_uid, patient_name, patient_name_key, patient_id, study_date, "
         "study_time, accession_number, study_description, modalities, sop_classes, num_series, num_instances, "
         "attrs_json, created_at, updated_at", (st for st, _, _ in rows(n, per)))
    copy(args.postgres, "series", "id, series_uid, study_pk, modality, series_number, series_description, "
         "num_instances, attrs_json, created_at", (se for _, se, _ in rows(n, per)))
    copy(args.postgres, "instances", "sop_instance_uid, series_pk, study_pk, sop_class_uid, instance_number, "
         "transfer_syntax, number_of_frames, num_rows, num_columns, object_key, size, part10_prefix, sha256, "
         "attrs_json, metadata_json, origin_kind, origin_who, stored_at",
         (row for _, _, inst in rows(n, per) for row in inst))
    subprocess.run(["psql", args.postgres, "-q", "-c",
                    "SELECT setval(pg_get_serial_sequence('studies', 'id'), (SELECT MAX(id) FROM studies)); "
                    "SELECT setval(pg_get_serial_sequence('series', 'id'), (SELECT MAX(id) FROM series)); "
                    "ANALYZE;"], check=True, capture_output=True)
    print(f"populated {n} studies, {n * per} instances in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
