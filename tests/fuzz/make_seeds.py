#!/usr/bin/env python3
"""Write the fuzz targets' seed corpora (small on purpose) into tests/fuzz/seeds/<target>/.

Run from anywhere: python3 tests/fuzz/make_seeds.py. The seeds are committed; re-running
rewrites them with fresh UIDs. Files named regression-* are inputs the fuzzers found
problems with; they stay, so every run replays them. Each seed is a valid (or a typical almost-valid) input, so
the fuzzers start from inputs that reach deep into the code.
"""

import struct
import sys
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "interop"))

from pydicom.dataset import Dataset  # noqa: E402
from pydicom.filebase import DicomBytesIO  # noqa: E402
from pydicom.filewriter import write_dataset  # noqa: E402
from pydicom.sequence import Sequence  # noqa: E402
from pydicom.uid import (DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian,  # noqa: E402
                         ImplicitVRLittleEndian, generate_uid)

from dicomgen import ct_series, multiframe, to_bytes  # noqa: E402
from pacs import multipart  # noqa: E402

BOUNDARY = "BOUNDARY"


def seeds(target: str, files: dict[str, bytes]):
    d = HERE / "seeds" / target
    d.mkdir(parents=True, exist_ok=True)
    for old in d.iterdir():
        if not old.name.startswith("regression-"):  # inputs the fuzzers found: kept
            old.unlink()
    for name, data in files.items():
        (d / name).write_bytes(data)


def encoded(ds: Dataset, ts) -> bytes:
    ds = ds.copy()
    ds.file_meta = ds.file_meta.copy()
    ds.file_meta.TransferSyntaxUID = ts
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    return to_bytes(ds)


def with_sequence(ds: Dataset) -> Dataset:
    item = Dataset()
    item.CodeValue = "T-D1100"
    item.CodingSchemeDesignator = "SRT"
    item.CodeMeaning = "Head"
    inner = Dataset()
    inner.ReferencedSOPClassUID = ds.SOPClassUID
    inner.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    item.ReferencedSOPSequence = Sequence([inner])
    ds.AnatomicRegionSequence = Sequence([item])
    return ds


def header_seeds() -> dict[str, bytes]:
    ct = ct_series(n=1, size=8, patient_name="Müller^Eva")[0]
    return {
        "ct_explicit.dcm": to_bytes(ct),
        "ct_implicit.dcm": encoded(ct, ImplicitVRLittleEndian),
        "ct_big_endian.dcm": encoded(ct, ExplicitVRBigEndian),
        "ct_deflated.dcm": encoded(ct, DeflatedExplicitVRLittleEndian),
        "ct_sequences.dcm": to_bytes(with_sequence(ct_series(n=1, size=4)[0])),
        "multiframe.dcm": to_bytes(multiframe(frames=3, size=4)),
    }


def stow_seeds(dicom: dict[str, bytes]) -> dict[str, bytes]:
    one, _ = multipart([dicom["ct_explicit.dcm"]], boundary=BOUNDARY)
    two, _ = multipart([dicom["ct_implicit.dcm"], dicom["ct_sequences.dcm"]], boundary=BOUNDARY)
    # Variant byte (see fuzz_targets/stow_multipart.rs), then the body.
    return {
        "one_part": b"\x00" + one,
        "two_parts": b"\x00" + two,
        "truncated": b"\x00" + one[: len(one) // 2],
        "study_in_path": b"\x01" + one,
        "single_application_dicom": b"\x02" + dicom["ct_explicit.dcm"],
        "own_content_type": b"\x03multipart/related; type=\"application/dicom\"; boundary="
        + BOUNDARY.encode() + b"\n" + one,
    }


def qido_seeds() -> dict[str, bytes]:
    # Level byte (see fuzz_targets/qido_query.rs), then the raw query string.
    queries = {
        "studies_name": (0, "PatientName=M*&limit=10&offset=0"),
        "studies_date_range": (0, "StudyDate=20240101-20241231&ModalitiesInStudy=CT"),
        "studies_fuzzy": (0, "PatientName=mull&fuzzymatching=true&includefield=all"),
        "series_uid_list": (1, "SeriesInstanceUID=1.2.3,1.2.4&Modality=CT"),
        "instances_include": (2, "includefield=00280010,Rows&SOPClassUID=1.2.840.10008.5.1.4.1.1.2"),
        "in_study": (3, "SeriesNumber=1&StudyTime=0900-1100"),
        "nested_key": (2, "RequestAttributesSequence.RequestedProcedureID=A*"),
    }
    return {k: bytes([lvl]) + q.encode() for k, (lvl, q) in queries.items()}


def command(elements: list[tuple[int, str, bytes]]) -> bytes:
    """An implicit VR little endian command set with its group length."""
    body = b""
    for tag, _vr, value in sorted(elements):
        if len(value) % 2:
            value += b"\0"
        body += struct.pack("<HHI", 0, tag, len(value)) + value
    return struct.pack("<HHII", 0, 0, 4, len(body)) + body


def us(v: int) -> bytes:
    return struct.pack("<H", v)


def pdata(context: int, is_command: bool, last: bool, data: bytes) -> bytes:
    flags = int(is_command) | (int(last) << 1)
    pdv = struct.pack(">IBB", len(data) + 2, context, flags) + data
    return struct.pack(">BBI", 4, 0, len(pdv)) + pdv


def encode(ds: Dataset, implicit: bool) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, implicit
    write_dataset(fp, ds)
    return fp.getvalue()


def identifier(level: str, implicit: bool) -> bytes:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    ds.PatientName = "M*"
    ds.StudyDate = "20240101-"
    ds.StudyInstanceUID = ""
    ds.ModalitiesInStudy = ""
    return encode(ds, implicit)


def dimse_seeds() -> dict[str, bytes]:
    # Presentation context ids map to transfer syntaxes in fuzz_targets/dimse_messages.rs:
    # 1 implicit LE, 3 explicit LE, 5 deflated, 7 explicit BE.
    find = "1.2.840.10008.5.1.4.1.2.2.1"
    echo = command([(0x0002, "UI", b"1.2.840.10008.1.1"), (0x0100, "US", us(0x0030)),
                    (0x0110, "US", us(1)), (0x0800, "US", us(0x0101))])
    cfind = command([(0x0002, "UI", find.encode()), (0x0100, "US", us(0x0020)),
                     (0x0110, "US", us(2)), (0x0700, "US", us(0)), (0x0800, "US", us(0))])
    cmove = command([(0x0002, "UI", b"1.2.840.10008.5.1.4.1.2.2.2"), (0x0100, "US", us(0x0021)),
                     (0x0110, "US", us(3)), (0x0600, "AE", b"STORESCP"), (0x0700, "US", us(0)),
                     (0x0800, "US", us(0))])
    cancel = command([(0x0100, "US", us(0x0FFF)), (0x0120, "US", us(2)), (0x0800, "US", us(0x0101))])
    implicit_id = identifier("STUDY", implicit=True)
    explicit_id = identifier("SERIES", implicit=False)
    deflated_id = zlib.compress(explicit_id)[2:-4]
    action = Dataset()
    action.TransactionUID = "1.2.3.4.5"
    ref = Dataset()
    ref.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ref.ReferencedSOPInstanceUID = "1.2.3.4.6"
    action.ReferencedSOPSequence = Sequence([ref])
    naction = command([(0x0003, "UI", b"1.2.840.10008.1.20.1"), (0x0100, "US", us(0x0130)),
                       (0x0110, "US", us(4)), (0x0800, "US", us(0)), (0x1001, "UI", b"1.2.840.10008.1.20.1.1"),
                       (0x1008, "US", us(1))])
    release = struct.pack(">BBII", 5, 0, 4, 0)
    return {
        "echo": pdata(1, True, True, echo) + release,
        "find_implicit": pdata(1, True, True, cfind) + pdata(1, False, True, implicit_id),
        "find_explicit_split": pdata(3, True, False, cfind[:20]) + pdata(3, True, True, cfind[20:])
        + pdata(3, False, False, explicit_id[:10]) + pdata(3, False, True, explicit_id[10:]),
        "find_deflated": pdata(5, True, True, cfind) + pdata(5, False, True, deflated_id),
        "move_then_cancel": pdata(1, True, True, cmove) + pdata(1, False, True, implicit_id)
        + pdata(1, True, True, cancel),
        "commitment": pdata(1, True, True, naction) + pdata(1, False, True, encode(action, True)),
    }


def main():
    dicom = header_seeds()
    seeds("dicom_header", dicom)
    seeds("stow_multipart", stow_seeds(dicom))
    seeds("qido_query", qido_seeds())
    seeds("dimse_messages", dimse_seeds())
    total = sum(p.stat().st_size for p in (HERE / "seeds").rglob("*") if p.is_file())
    print(f"seeds written: {total} bytes")


if __name__ == "__main__":
    main()
