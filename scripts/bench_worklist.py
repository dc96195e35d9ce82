#!/usr/bin/env python3
"""Worklist benchmark: HL7 ORM^O01 ingest over one MLLP connection, then Modality Worklist
C-FIND over the scheduled steps those orders made.

Starts the release binary on a fresh data directory (SQLite + filesystem, or PostgreSQL
with `--pg URL`) with its HL7 listener on. Sends `--orders` (10 000) ORM^O01 NW messages
over one connection, each waiting for its ACK (original mode, as senders do): prints
messages/s. Then times `--queries` worklist queries, each association + C-FIND + release
from an in-process client (scripts/dimse_raw.py, no process start-up), matching a date
range of one day and a modality (about 1/120 of the steps): prints p50/p95/p99 in ms and
the matches per query. Writes target/bench/worklist.json. Asserts nothing but the answers.

Usage: scripts/bench_worklist.py [--orders N] [--queries N] [--pg URL] [--binary PATH]
"""

import argparse
import json
import os
import re
import socket
import sys
import time
from datetime import date, timedelta
from pathlib import Path

from pydicom.dataset import Dataset

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_stow as stow  # noqa: E402
import dimse_raw  # noqa: E402

MWL = "1.2.840.10008.5.1.4.31"
MODALITIES = ["CT", "MR", "US", "CR"]
DAYS = 30
FIRST_DAY = date(2027, 1, 4)


class Pacs(stow.Server):
    def start(self):
        self.env["PACS_HL7__LISTEN"] = "127.0.0.1:0"
        super().start()
        line = self.proc.stdout.readline().decode()
        self.dicom_port = int(re.search(r":(\d+) as", line).group(1))
        line = self.proc.stdout.readline().decode()
        self.hl7_port = int(re.search(r"HL7 listening on [\d.]+:(\d+)", line).group(1))
        return self


def orm(i: int) -> bytes:
    day = FIRST_DAY + timedelta(days=i % DAYS)
    modality = MODALITIES[(i // DAYS) % len(MODALITIES)]
    start = f"{day:%Y%m%d}{8 + i % 10:02d}{(i * 7) % 60:02d}"
    return (
        f"MSH|^~\\&|RIS|HOSP|PACS|CLINIC|20270101080000||ORM^O01^ORM_O01|M{i}|P|2.5.1||||||UNICODE UTF-8\r"
        f"PID|||PAT{i % 3000}^^^HOSP||Bench^Patient{i % 3000}||19700101|F\r"
        f"PV1||O||||||1234^Referrer^Rita\r"
        f"ORC|NW|ORD{i}|||||||||1234^Referrer^Rita\r"
        f"OBR|1|ORD{i}||P1^Procedure {modality}^L||||||||||||||ACC{i}|RP{i}|S{i}||||{modality}|||^^^{start}\r"
    ).encode()


def recv_frame(s: socket.socket, buf: bytearray) -> bytes:
    while True:
        end = buf.find(b"\x1c\x0d")
        if end >= 0:
            frame = bytes(buf[1:end])
            del buf[: end + 2]
            return frame
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk


def hl7_ingest(server, n):
    messages = [b"\x0b" + orm(i) + b"\x1c\x0d" for i in range(n)]
    s = socket.create_connection(("127.0.0.1", server.hl7_port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = bytearray()
    t0 = time.perf_counter()
    for m in messages:
        s.sendall(m)
        ack = recv_frame(s, buf)
        assert b"MSA|AA|" in ack, ack
    elapsed = time.perf_counter() - t0
    s.close()
    return n / elapsed


def mwl_queries(server, n):
    times, matches = [], set()
    for q in range(n):
        day = FIRST_DAY + timedelta(days=q % DAYS)
        ds = Dataset()
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.PatientName = ""
        ds.PatientID = ""
        ds.AccessionNumber = ""
        ds.StudyInstanceUID = ""
        ds.RequestedProcedureID = ""
        step = Dataset()
        step.Modality = MODALITIES[q % len(MODALITIES)]
        step.ScheduledProcedureStepStartDate = f"{day:%Y%m%d}-{day:%Y%m%d}"
        step.ScheduledStationAETitle = ""
        step.ScheduledProcedureStepID = ""
        ds.ScheduledProcedureStepSequence = [step]
        t0 = time.perf_counter()
        a = dimse_raw.Association("127.0.0.1", server.dicom_port, "PACSLITE", MWL)
        status, found = a.find(ds)
        a.release()
        times.append(time.perf_counter() - t0)
        assert status == 0 and found > 0, (status, found)
        matches.add(found)
    times.sort()
    pick = lambda p: times[min(len(times) - 1, int(len(times) * p))] * 1000  # noqa: E731
    return {"p50_ms": pick(0.5), "p95_ms": pick(0.95), "p99_ms": pick(0.99), "matches": sorted(matches)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--orders", type=int, default=10_000)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--pg", help="PostgreSQL URL for the index (default: SQLite)")
    ap.add_argument("--binary")
    args = ap.parse_args()
    server = Pacs(pg_url=args.pg, binary=args.binary).start()
    try:
        rate = hl7_ingest(server, args.orders)
        print(f"HL7 ORM^O01 over one MLLP connection: {rate:,.0f} messages/s ({args.orders} orders)")
        mwl = mwl_queries(server, args.queries)
        print(f"MWL C-FIND, association included, over {args.orders} steps (one day + modality, "
              f"{mwl['matches'][0]}-{mwl['matches'][-1]} matches): p50 {mwl['p50_ms']:.2f} ms, "
              f"p95 {mwl['p95_ms']:.2f} ms, p99 {mwl['p99_ms']:.2f} ms")
        print(f"server peak RSS {server.peak_rss_mb():.0f} MB")
    finally:
        server.stop()
        stow.remove_leftovers()
    out = Path(os.environ.get("CARGO_TARGET_DIR", HERE.parent / "target")) / "bench"
    out.mkdir(parents=True, exist_ok=True)
    result = {"index": "postgres" if args.pg else "sqlite", "orders": args.orders, "hl7_messages_per_s": rate, "mwl": mwl}
    (out / "worklist.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
