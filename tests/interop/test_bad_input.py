"""A corpus of bad input, each case answered cleanly: a 4xx (or a DIMSE refusal/abort), the
server stays up, and nothing is stored. Truncated and oversized PDUs, garbage on the DICOM
port, malformed multipart, wrong checksums, path-traversal UIDs, SQL-ish query values,
enormous includefield lists, deeply nested sequences."""

import http.client
import socket
import struct
import time
from urllib.parse import urlparse

import pytest
import requests

from dicomgen import ct_series, to_bytes
from dimsetools import (CT_IMAGE_STORAGE, EXPLICIT_LE, IMPLICIT_LE, RELEASE_RQ, STUDY_ROOT_FIND, VERIFICATION,
                        associate, command_set, dataset_bytes, pdata, pdu_header, response_status, send_fragments,
                        store_command, us)
from pacs import stow_content_type


def alive(pacs):
    assert requests.get(f"{pacs.url}/healthz", timeout=5).status_code == 200
    if pacs.dimse_port:
        with socket.create_connection(("127.0.0.1", pacs.dimse_port), timeout=5):
            pass
    assert pacs.proc.poll() is None, pacs.server_log()[-2000:]


def nothing_stored(pacs):
    assert pacs.count("instances") == 0
    assert [f for f in pacs.object_files() if f.suffix == ".dcm"] == []


def post(pacs, body, content_type=stow_content_type("BB")):
    """A STOW-RS request of these bytes as they are (malformed ones included)."""
    return pacs.post("/studies", body, content_type, timeout=60)


def test_malformed_multipart(pacs):
    """PS3.18 10.5.3: a body that is not a well-formed multipart/related of DICOM parts is
    400 Bad Request (nothing could be stored for bad syntax), with the reason in the JSON."""
    part = to_bytes(ct_series(n=1)[0])
    broken = "malformed or truncated request body"
    cases = {
        "truncated mid-part": (b"--BB\r\nContent-Type: application/dicom\r\n\r\n" + part[: len(part) // 2], broken),
        "no closing boundary": (b"--BB\r\nContent-Type: application/dicom\r\n\r\n" + part[:100], broken),
        "whole part, no closing boundary": (b"--BB\r\nContent-Type: application/dicom\r\n\r\n" + part + b"\r\n",
                                            broken),
        "garbage": (b"\x00\xff" * 5000, broken),
        "headers never end": (b"--BB\r\nContent-Type: application/dicom\r\n" + b"X-Junk: y\r\n" * 20000, broken),
        "empty": (b"", broken),
        "only the closing boundary": (b"--BB--\r\n", "the request holds no DICOM instance"),
    }
    for name, (body, message) in cases.items():
        r = post(pacs, body)
        assert r.status_code == 400, (name, r.status_code, r.text[:200])
        assert r.headers["content-type"].startswith("application/json"), (name, r.headers["content-type"])
        assert r.json()["error"] == "bad_request" and message in r.json()["message"], (name, r.text[:200])
    r = post(pacs, part, "multipart/related; type=\"application/dicom\"")  # no boundary
    assert r.status_code == 400 and "boundary" in r.json()["message"], r.text[:200]
    r = post(pacs, part, "text/plain")
    assert r.status_code == 415 and r.json()["error"] == "unsupported_media_type", r.text[:200]
    nothing_stored(pacs)
    alive(pacs)


def failure_reasons(r):
    """The FailureReason of each instance a STOW-RS response lists as failed."""
    return [item["00081197"]["Value"][0] for item in r.json()["00081198"]["Value"]]


def raw_get(pacs, path):
    """A GET of `path` exactly as written: HTTP clients remove dot segments before sending."""
    url = urlparse(pacs.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    finally:
        conn.close()


def test_path_traversal_and_bad_uids(pacs):
    # UIDs in the path that are not UIDs: 400 with the reason.
    for path in ["/studies/..%2F..%2Fetc", "/studies/1.2.3/series/..%2F..",
                 "/studies/1.2.3/series/1.2/instances/%2e%2e/frames/1", "/studies/1.2.abc/metadata"]:
        r = requests.get(f"{pacs.dicomweb}{path}", timeout=10)
        assert r.status_code == 400 and "InstanceUID in the URL" in r.json()["message"], (path, r.status_code, r.text)
    # Dot segments as they are: no such route.
    for path in ["/dicom-web/studies/../../etc/passwd", "/dicom-web/studies/1.2.3/series/../../../etc"]:
        assert raw_get(pacs, path) == 404, path
    # Instances whose Study Instance UID is not one: refused, 0xC000 (cannot understand).
    ds = ct_series(n=1)[0]
    for bad in ["../../../etc", "1.2.3/../../x", "1.2." + "9" * 70, "1.2.-3", ""]:
        ds.StudyInstanceUID = bad
        r = pacs.stow([ds], boundary="BB", timeout=60)
        assert r.status_code == 409 and failure_reasons(r) == [0xC000], (bad, r.status_code, r.text[:300])
        assert "StudyInstanceUID" in r.headers["warning"], (bad, r.headers.get("warning"))
    nothing_stored(pacs)
    alive(pacs)


def test_sql_ish_query_values(pacs):
    for value in ["' OR 1=1 --", "x'; DROP TABLE studies; --", '"; DELETE FROM instances; --', "%' --", "\\", "*'*"]:
        for key in ["PatientName", "PatientID", "AccessionNumber", "StudyDescription", "00100020"]:
            r = requests.get(f"{pacs.dicomweb}/studies", params={key: value}, timeout=10)
            assert r.status_code == 200 and r.json() == [], (key, value, r.status_code, r.text[:200])
    r = requests.get(f"{pacs.dicomweb}/studies", params={"StudyDate": "20200101-'; DROP TABLE x"}, timeout=10)
    assert r.status_code == 400 and "StudyDate" in r.json()["message"], r.text
    assert pacs.count("studies") == 0  # the table is still there
    alive(pacs)


def test_enormous_includefield_lists(pacs):
    # Query strings of 180 KB and 115 KB: refused as URIs too long (RFC 9110 15.5.15).
    fields = ",".join(f"{0x0011_0000 + i:08X}" for i in range(20000))
    r = requests.get(f"{pacs.dicomweb}/studies?includefield={fields}", timeout=60)
    assert r.status_code == 414, r.status_code
    r = requests.get(f"{pacs.dicomweb}/studies", params=[("includefield", "PatientName")] * 5000, timeout=60)
    assert r.status_code == 414, r.status_code
    alive(pacs)


def nested(depth):
    """A CT instance with ContentSequence items nested `depth` deep (undefined lengths,
    Explicit VR Little Endian), spliced in before Pixel Data."""
    ds = ct_series(n=1)[0]
    raw = to_bytes(ds)
    sq = b"\x40\x00\x30\xa7SQ\x00\x00\xff\xff\xff\xff"
    item = b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    item_end = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
    sq_end = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    code = b"\x08\x00\x00\x01SH\x02\x00X "
    blob = (sq + item) * depth + code + (item_end + sq_end) * depth
    at = raw.rindex(b"\xe0\x7f\x10\x00")
    return ds, raw[:at] + blob + raw[at:]


def test_deeply_nested_sequences(pacs):
    """conformance/stow-rs.md: sequences may nest 64 levels; deeper is refused with 0xC000."""
    ds, raw = nested(64)
    r = pacs.stow([raw], boundary="BB", timeout=60)
    assert r.status_code == 200, r.text[:300]
    got = requests.get(f"{pacs.dicomweb}/studies/{ds.StudyInstanceUID}/metadata", timeout=30)
    assert got.status_code == 200 and len(got.json()) == 1
    for depth in (65, 200, 5000):
        ds, raw = nested(depth)
        r = pacs.stow([raw], boundary="BB", timeout=60)
        assert r.status_code == 409 and failure_reasons(r) == [0xC000], (depth, r.status_code, r.text[:300])
        assert "nested more than 64 deep" in r.headers["warning"], (depth, r.headers.get("warning"))
        alive(pacs)
    assert pacs.count("instances") == 1


def answer(s, wait=5):
    """What the server does next on this connection: "closed", "no answer" within `wait`
    seconds, or the type of the PDU it sends (0x03 A-ASSOCIATE-RJ, 0x07 A-ABORT, …)."""
    s.settimeout(wait)
    try:
        data = s.recv(64)
    except socket.timeout:
        return "no answer"
    except ConnectionResetError:
        return "closed"
    return data[0] if data else "closed"


def raw(pacs, data, read=True):
    """Send `data` on a new connection to the DICOM port; the server's answer (see answer)."""
    s = socket.create_connection(("127.0.0.1", pacs.dimse_port), timeout=10)
    try:
        s.sendall(data)
        return answer(s) if read else None
    finally:
        s.close()


def test_bad_pdus(pacs):
    # Garbage instead of an A-ASSOCIATE-RQ: closed (or aborted).
    assert raw(pacs, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") in ("closed", 0x07)
    # A truncated A-ASSOCIATE-RQ: the header promises more than comes, then the peer leaves.
    raw(pacs, pdu_header(0x01, 1000) + b"\x00\x01" + b"x" * 10, read=False)
    # An oversized PDU announced: 100 MB, far above the 1 MiB we accept.
    assert raw(pacs, pdu_header(0x01, 100 << 20) + b"\x00" * 1000) in ("closed", 0x03, 0x07)
    # A P-DATA before any association.
    assert raw(pacs, pdu_header(0x04, 10) + struct.pack(">IBB", 4, 1, 3) + b"\x00" * 4) in ("closed", 0x07)
    time.sleep(0.2)
    nothing_stored(pacs)
    alive(pacs)
    # And the port still works.
    from pynetdicom import AE
    ae = AE(ae_title="AFTER")
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", pacs.dimse_port, ae_title=pacs.ae_title)
    assert assoc.is_established and assoc.send_c_echo().Status == 0
    assoc.release()


def test_oversized_or_malformed_pdata_is_aborted(pacs):
    """A P-DATA-TF announced longer than the 1 MiB maximum PDU length the server offered, or
    one whose item does not fit it, is answered with A-ABORT (PS3.8 D.1; the connection may be
    reset before the client reads it), not waited for."""
    for bad in (pdu_header(0x04, 50 << 20) + b"\x00" * 4096,
                pdu_header(0x04, (1 << 20) + 1) + b"\x00" * 4096,
                pdu_header(0x04, 8) + struct.pack(">IBB", 40, 1, 3) + b"\x00" * 2):
        s = associate(pacs.dimse_port, pacs.ae_title, [(CT_IMAGE_STORAGE, EXPLICIT_LE)])
        try:
            s.sendall(bad)
            assert answer(s) in ("closed", 0x07), bad[:12]
        finally:
            s.close()
    nothing_stored(pacs)
    alive(pacs)


def test_unknown_vr_claiming_a_huge_value(pacs):
    """Found by the stow_multipart fuzz target: an element with an unknown VR is read with a
    4-byte length (PS3.5 §6.2, as dicom-rs reads it), so "DW" followed by two bytes of length
    and the text "1.0\\..." claims ~1.5 GB. It must be refused as truncated before any parser
    allocates for it."""
    ds = ct_series(n=1, size=8)[0]
    raw = to_bytes(ds)
    at = raw.index(b"\x20\x00\x37\x00DS")  # ImageOrientationPatient
    bad = raw[:at + 4] + b"DW" + raw[at + 6:]
    before = pacs.peak_rss_mb()
    for _ in range(3):
        r = pacs.stow([bad], boundary="BB", timeout=60)
        assert r.status_code == 409 and failure_reasons(r) == [0xC000], (r.status_code, r.text[:300])
        assert "truncated" in r.headers["warning"], r.headers.get("warning")
    assert pacs.peak_rss_mb() - before < 200, (before, pacs.peak_rss_mb())
    nothing_stored(pacs)
    alive(pacs)


def test_fuzz_findings_are_refused(pacs):
    """The objects the fuzz targets found problems with (tests/fuzz/seeds/dicom_header/
    regression-*), stored over STOW-RS: each refused, without a memory spike."""
    from pathlib import Path
    found = sorted((Path(__file__).parent.parent / "fuzz" / "seeds" / "dicom_header").glob("regression-*"))
    assert found
    before = pacs.peak_rss_mb()
    for f in found:
        r = post(pacs, f.read_bytes(), "application/dicom")
        assert r.status_code == 409 and failure_reasons(r) == [0xC000], (f.name, r.status_code, r.text[:300])
    assert pacs.peak_rss_mb() - before < 200, (before, pacs.peak_rss_mb())
    nothing_stored(pacs)
    alive(pacs)


def test_deeply_nested_dimse_data_sets_and_oversized_commands(pacs):
    """Identifiers are checked for nesting before they are parsed (a recursive parser would
    exhaust the stack), and command sets are capped at 64 KiB; the association goes on."""
    s = associate(pacs.dimse_port, pacs.ae_title, [(STUDY_ROOT_FIND, IMPLICIT_LE), (VERIFICATION, IMPLICIT_LE)])
    find = command_set({0x0002: STUDY_ROOT_FIND.encode(), 0x0100: us(0x0020), 0x0110: us(7), 0x0700: us(0),
                        0x0800: us(0)})
    level = b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY "
    sq = b"\x40\x00\x30\xa7\xff\xff\xff\xff"
    item = b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    ends = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00" + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    # A shallow identifier first, on this Implicit VR context (its UID is padded with a
    # NUL when negotiated): answered, no matches.
    s.sendall(pdata(1, True, True, find))
    s.sendall(pdata(1, False, True, level + (sq + item) * 3 + ends * 3))
    assert response_status(s) == 0x0000
    depth = 20000
    identifier = level + (sq + item) * depth + ends * depth
    s.sendall(pdata(1, True, True, find))
    send_fragments(s, 1, False, identifier)
    assert response_status(s) == 0xC000
    # A command set of 200 KB, in fragments: refused, the association survives.
    big = command_set({0x0100: us(0x0030), 0x0110: us(8), 0x0800: us(0x0101), 0x1000: b"x" * 200_000})
    send_fragments(s, 3, True, big)
    assert response_status(s) == 0x0211
    echo = command_set({0x0002: VERIFICATION.encode(), 0x0100: us(0x0030), 0x0110: us(9), 0x0800: us(0x0101)})
    s.sendall(pdata(3, True, True, echo))
    assert response_status(s) == 0x0000
    s.sendall(RELEASE_RQ)
    s.close()
    alive(pacs)


def test_dimse_limits_in_the_conformance_statement(pacs):
    """conformance/dimse.md: sequences nested deeper than 64 levels — C-STORE 0xC000, N-ACTION
    0x0110 — and identifiers over 16 MiB refused with 0xA700; each association goes on."""
    # C-STORE of a data set nested 5000 deep.
    ds, raw = nested(5000)
    s = associate(pacs.dimse_port, pacs.ae_title, [(CT_IMAGE_STORAGE, EXPLICIT_LE), (VERIFICATION, EXPLICIT_LE)])
    s.sendall(pdata(1, True, True, store_command(ds.SOPInstanceUID)))
    send_fragments(s, 1, False, dataset_bytes(raw))
    assert response_status(s) == 0xC000
    s.sendall(RELEASE_RQ)
    s.close()

    # N-ACTION (storage commitment) whose action information is nested 5000 deep.
    commitment = "1.2.840.10008.1.20.1"
    s = associate(pacs.dimse_port, pacs.ae_title, [(commitment, IMPLICIT_LE), (VERIFICATION, IMPLICIT_LE)])
    action = command_set({0x0003: commitment.encode(), 0x0100: us(0x0130), 0x0110: us(5), 0x0800: us(0),
                          0x1001: b"1.2.840.10008.1.20.1.1", 0x1008: us(1)})
    sq = b"\x08\x00\x99\x11\xff\xff\xff\xff"  # ReferencedSOPSequence, implicit VR
    item = b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    ends = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00" + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    uid = b"\x08\x00\x95\x11\x0a\x00\x00\x001.2.3.4.5\x00"  # TransactionUID
    info = uid + (sq + item) * 5000 + ends * 5000
    s.sendall(pdata(1, True, True, action))
    send_fragments(s, 1, False, info)
    assert response_status(s) == 0x0110

    # A C-FIND identifier of 17 MiB (a long private value), on a Study Root context.
    s2 = associate(pacs.dimse_port, pacs.ae_title, [(STUDY_ROOT_FIND, IMPLICIT_LE), (VERIFICATION, IMPLICIT_LE)])
    find = command_set({0x0002: STUDY_ROOT_FIND.encode(), 0x0100: us(0x0020), 0x0110: us(6), 0x0700: us(0),
                        0x0800: us(0)})
    big = 17 << 20
    identifier = b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY " + b"\x09\x00\x10\x10" + struct.pack("<I", big) + b"x" * big
    s2.sendall(pdata(1, True, True, find))
    send_fragments(s2, 1, False, identifier)
    assert response_status(s2) == 0xA700
    for sock in (s, s2):
        sock.sendall(RELEASE_RQ)
        sock.close()
    nothing_stored(pacs)
    alive(pacs)


def test_deflated_object_nested_too_deep(pacs):
    """conformance/stow-rs.md: deflated data sets are walked inflated, so the nesting bound
    holds for them too."""
    import zlib
    _, raw = nested(5000)
    meta_len = struct.unpack("<I", raw[140:144])[0]
    meta, dataset = raw[144:144 + meta_len], raw[144 + meta_len:]
    old_ts = b"\x02\x00\x10\x00UI\x14\x001.2.840.10008.1.2.1\x00"
    assert old_ts in meta
    meta = meta.replace(old_ts, b"\x02\x00\x10\x00UI\x16\x001.2.840.10008.1.2.1.99")
    deflater = zlib.compressobj(6, zlib.DEFLATED, -15)
    body = raw[:140] + struct.pack("<I", len(meta)) + meta + deflater.compress(dataset) + deflater.flush()
    r = post(pacs, body, "application/dicom")
    assert r.status_code == 409 and failure_reasons(r) == [0xC000], (r.status_code, r.text[:300])
    assert "nested more than 64" in r.text, r.text[:500]
    nothing_stored(pacs)
    alive(pacs)
