"""A corpus of bad input, each case answered cleanly: a 4xx (or a DIMSE refusal/abort), the
server stays up, and nothing is stored. Truncated and oversized PDUs, garbage on the DICOM
port, malformed multipart, wrong checksums, path-traversal UIDs, SQL-ish query values,
enormous includefield lists, deeply nested sequences."""

import socket
import struct
import time

import pytest
import requests

from dicomgen import ct_series, to_bytes


def alive(pacs):
    assert requests.get(f"{pacs.url}/healthz", timeout=5).status_code == 200
    if pacs.dimse_port:
        with socket.create_connection(("127.0.0.1", pacs.dimse_port), timeout=5):
            pass
    assert pacs.proc.poll() is None, pacs.server_log()[-2000:]


def nothing_stored(pacs):
    assert pacs.count("instances") == 0
    assert [f for f in pacs.object_files() if f.suffix == ".dcm"] == []


def stow(pacs, body, content_type):
    return requests.post(f"{pacs.dicomweb}/studies", data=body, headers={"Content-Type": content_type}, timeout=60)


MULTI = 'multipart/related; type="application/dicom"; boundary=BB'


def test_malformed_multipart(pacs):
    part = to_bytes(ct_series(n=1)[0])
    cases = {
        "truncated mid-part": b"--BB\r\nContent-Type: application/dicom\r\n\r\n" + part[: len(part) // 2],
        "no closing boundary": b"--BB\r\nContent-Type: application/dicom\r\n\r\n" + part[:100],
        "garbage": b"\x00\xff" * 5000,
        "headers never end": b"--BB\r\nContent-Type: application/dicom\r\n" + b"X-Junk: y\r\n" * 20000,
        "empty": b"",
        "only the closing boundary": b"--BB--\r\n",
    }
    for name, body in cases.items():
        r = stow(pacs, body, MULTI)
        assert 400 <= r.status_code < 500 or r.status_code == 409, (name, r.status_code, r.text[:200])
    assert stow(pacs, part, "multipart/related; type=\"application/dicom\"").status_code == 400  # no boundary
    assert stow(pacs, part, "text/plain").status_code == 415
    nothing_stored(pacs)
    alive(pacs)


def test_path_traversal_and_bad_uids(pacs):
    for path in ["/studies/..%2F..%2Fetc", "/studies/../../etc/passwd", "/studies/1.2.3/series/..%2F..",
                 "/studies/1.2.3/series/1.2/instances/%2e%2e/frames/1", "/studies/1.2.abc/metadata"]:
        r = requests.get(f"{pacs.dicomweb}{path}", timeout=10)
        assert r.status_code in (400, 404), (path, r.status_code)
    ds = ct_series(n=1)[0]
    for bad in ["../../../etc", "1.2.3/../../x", "1.2." + "9" * 70, "1.2.-3", ""]:
        ds.StudyInstanceUID = bad
        body = b"--BB\r\nContent-Type: application/dicom\r\n\r\n" + to_bytes(ds) + b"\r\n--BB--\r\n"
        r = stow(pacs, body, MULTI)
        assert r.status_code in (400, 409), (bad, r.status_code)
    nothing_stored(pacs)
    alive(pacs)


def test_sql_ish_query_values(pacs):
    for value in ["' OR 1=1 --", "x'; DROP TABLE studies; --", '"; DELETE FROM instances; --', "%' --", "\\", "*'*"]:
        for key in ["PatientName", "PatientID", "AccessionNumber", "StudyDescription", "00100020"]:
            r = requests.get(f"{pacs.dicomweb}/studies", params={key: value}, timeout=10)
            assert r.status_code in (200, 400), (key, value, r.status_code)
            if r.status_code == 200:
                assert r.json() == []
    r = requests.get(f"{pacs.dicomweb}/studies", params={"StudyDate": "20200101-'; DROP TABLE x"}, timeout=10)
    assert r.status_code == 400
    assert pacs.count("studies") == 0  # the table is still there
    alive(pacs)


def test_enormous_includefield_lists(pacs):
    fields = ",".join(f"{0x0011_0000 + i:08X}" for i in range(20000))
    r = requests.get(f"{pacs.dicomweb}/studies?includefield={fields}", timeout=60)
    assert r.status_code in (200, 400, 414, 431), r.status_code
    r = requests.get(f"{pacs.dicomweb}/studies", params=[("includefield", "PatientName")] * 5000, timeout=60)
    assert r.status_code in (200, 400, 414, 431), r.status_code
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
    for depth in (200, 5000):
        ds, raw = nested(depth)
        body = b"--BB\r\nContent-Type: application/dicom\r\n\r\n" + raw + b"\r\n--BB--\r\n"
        r = stow(pacs, body, MULTI)
        assert r.status_code in (200, 400, 409), (depth, r.status_code)
        alive(pacs)
        if r.status_code == 200:
            # Stored: then it reads back as stored.
            got = requests.get(f"{pacs.dicomweb}/studies/{ds.StudyInstanceUID}/metadata", timeout=30)
            assert got.status_code == 200
    alive(pacs)


def raw(pacs, data, read=True):
    s = socket.create_connection(("127.0.0.1", pacs.dimse_port), timeout=10)
    s.sendall(data)
    answer = b""
    if read:
        try:
            s.settimeout(5)
            answer = s.recv(64)
        except OSError:
            pass
    s.close()
    return answer


def test_bad_pdus(pacs):
    # Garbage instead of an A-ASSOCIATE-RQ.
    raw(pacs, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    # A truncated A-ASSOCIATE-RQ: the header promises more than comes, then the peer leaves.
    raw(pacs, struct.pack(">BBI", 0x01, 0, 1000) + b"\x00\x01" + b"x" * 10, read=False)
    # An oversized PDU announced: 100 MB, far above the 1 MiB we accept.
    answer = raw(pacs, struct.pack(">BBI", 0x01, 0, 100 << 20) + b"\x00" * 1000)
    assert answer == b"" or answer[0] in (0x03, 0x07), answer  # closed, rejected or aborted
    # An oversized P-DATA inside an association.
    from test_dimse_pynetdicom import raw_associate
    s = raw_associate(pacs.dimse_port, pacs.ae_title)
    s.sendall(struct.pack(">BBI", 0x04, 0, 50 << 20) + b"\x00" * 4096)
    try:
        s.settimeout(5)
        answer = s.recv(16)
    except OSError:
        answer = b""
    s.close()
    assert answer == b"" or answer[0] == 0x07, answer
    # A P-DATA before any association.
    raw(pacs, struct.pack(">BBI", 0x04, 0, 10) + struct.pack(">IBB", 4, 1, 3) + b"\x00" * 4)
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
