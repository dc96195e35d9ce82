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


def peak_rss_mb(pacs):
    with open(f"/proc/{pacs.proc.pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) // 1024
    return 0


def test_unknown_vr_claiming_a_huge_value(pacs):
    """Found by the stow_multipart fuzz target: an element with an unknown VR is read with a
    4-byte length (PS3.5 §6.2, as dicom-rs reads it), so "DW" followed by two bytes of length
    and the text "1.0\\..." claims ~1.5 GB. It must be refused as truncated before any parser
    allocates for it."""
    ds = ct_series(n=1, size=8)[0]
    raw = to_bytes(ds)
    at = raw.index(b"\x20\x00\x37\x00DS")  # ImageOrientationPatient
    bad = raw[:at + 4] + b"DW" + raw[at + 6:]
    before = peak_rss_mb(pacs)
    for _ in range(3):
        r = stow(pacs, b"--BB\r\nContent-Type: application/dicom\r\n\r\n" + bad + b"\r\n--BB--\r\n", MULTI)
        assert r.status_code in (400, 409), r.status_code
    assert peak_rss_mb(pacs) - before < 200, (before, peak_rss_mb(pacs))
    nothing_stored(pacs)
    alive(pacs)


def test_fuzz_findings_are_refused(pacs):
    """The objects the fuzz targets found problems with (tests/fuzz/seeds/dicom_header/
    regression-*), stored over STOW-RS: each refused, without a memory spike."""
    from pathlib import Path
    found = sorted((Path(__file__).parent.parent / "fuzz" / "seeds" / "dicom_header").glob("regression-*"))
    assert found
    before = peak_rss_mb(pacs)
    for f in found:
        r = stow(pacs, f.read_bytes(), "application/dicom")
        assert r.status_code in (400, 409), (f.name, r.status_code, r.text[:300])
    assert peak_rss_mb(pacs) - before < 200, (before, peak_rss_mb(pacs))
    nothing_stored(pacs)
    alive(pacs)


STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
IMPLICIT = "1.2.840.10008.1.2"


def associate(port, called, abstract, ts):
    """An association opened by hand with one presentation context (id 1)."""
    def item(kind, body):
        return struct.pack(">BBH", kind, 0, len(body)) + body

    def uid(u):
        return u.encode() + (b"\0" if len(u) % 2 else b"")

    pcs = item(0x20, struct.pack(">BBBB", 1, 0, 0, 0) + item(0x30, uid(abstract)) + item(0x40, uid(ts)))
    pcs += item(0x20, struct.pack(">BBBB", 3, 0, 0, 0) + item(0x30, uid("1.2.840.10008.1.1"))
                + item(0x40, uid(ts)))
    user = item(0x50, item(0x51, struct.pack(">I", 16384)))
    body = (struct.pack(">HH", 1, 0) + called.ljust(16).encode() + b"RAWPEER".ljust(16) + bytes(32)
            + item(0x10, b"1.2.840.10008.3.1.1.1") + pcs + user)
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(struct.pack(">BBI", 0x01, 0, len(body)) + body)
    kind, _, length = struct.unpack(">BBI", recv_exact(s, 6))
    recv_exact(s, length)
    assert kind == 0x02, f"association not accepted: {kind:#x}"
    return s


def recv_exact(s, n):
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            raise ConnectionError("closed")
        out += chunk
    return out


def pdv(context, command, last, data):
    value = struct.pack(">IBB", len(data) + 2, context, (1 if command else 0) | (2 if last else 0)) + data
    return struct.pack(">BBI", 0x04, 0, len(value)) + value


def command(elements):
    """An implicit VR little endian command set (tag element -> bytes), group length first."""
    body = b""
    for elem, value in sorted(elements.items()):
        value += b"\0" * (len(value) % 2)
        body += struct.pack("<HHI", 0, elem, len(value)) + value
    return struct.pack("<HHII", 0, 0, 4, len(body)) + body


def response_status(s):
    """The Status of the next response command (implicit VR LE) on the association."""
    data = b""
    while True:
        kind, _, length = struct.unpack(">BBI", recv_exact(s, 6))
        pdu = recv_exact(s, length)
        assert kind == 0x04, f"expected P-DATA, got PDU type {kind:#x}"
        at = 0
        while at < len(pdu):
            vlen = struct.unpack(">I", pdu[at:at + 4])[0]
            flags = pdu[at + 5]
            data += pdu[at + 6:at + 4 + vlen]
            at += 4 + vlen
            if flags & 1 and flags & 2:
                at2 = 0
                while at2 < len(data):
                    group, elem, vl = struct.unpack("<HHI", data[at2:at2 + 8])
                    if (group, elem) == (0, 0x0900):
                        return struct.unpack("<H", data[at2 + 8:at2 + 10])[0]
                    at2 += 8 + vl
                raise AssertionError("no Status in the response")


def test_deeply_nested_dimse_data_sets_and_oversized_commands(pacs):
    """Identifiers are checked for nesting before they are parsed (a recursive parser would
    exhaust the stack), and command sets are capped at 64 KiB; the association goes on."""
    s = associate(pacs.dimse_port, pacs.ae_title, STUDY_ROOT_FIND, IMPLICIT)
    find = command({0x0002: STUDY_ROOT_FIND.encode(), 0x0100: struct.pack("<H", 0x0020),
                    0x0110: struct.pack("<H", 7), 0x0700: struct.pack("<H", 0),
                    0x0800: struct.pack("<H", 0)})
    level = b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY "
    sq = b"\x40\x00\x30\xa7\xff\xff\xff\xff"
    item = b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    ends = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00" + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    # A shallow identifier first, on this Implicit VR context (its UID is padded with a
    # NUL when negotiated): answered, no matches.
    s.sendall(pdv(1, True, True, find))
    s.sendall(pdv(1, False, True, level + (sq + item) * 3 + ends * 3))
    assert response_status(s) == 0x0000
    depth = 20000
    identifier = level + (sq + item) * depth + ends * depth
    s.sendall(pdv(1, True, True, find))
    for at in range(0, len(identifier), 16000):
        chunk = identifier[at:at + 16000]
        s.sendall(pdv(1, False, at + 16000 >= len(identifier), chunk))
    assert response_status(s) == 0xC000
    # A command set of 200 KB, in fragments: refused, the association survives.
    big = command({0x0100: struct.pack("<H", 0x0030), 0x0110: struct.pack("<H", 8),
                   0x0800: struct.pack("<H", 0x0101), 0x1000: b"x" * 200_000})
    for at in range(0, len(big), 16000):
        s.sendall(pdv(3, True, at + 16000 >= len(big), big[at:at + 16000]))
    assert response_status(s) == 0x0211
    echo = command({0x0002: b"1.2.840.10008.1.1", 0x0100: struct.pack("<H", 0x0030),
                    0x0110: struct.pack("<H", 9), 0x0800: struct.pack("<H", 0x0101)})
    s.sendall(pdv(3, True, True, echo))
    assert response_status(s) == 0x0000
    s.sendall(struct.pack(">BBII", 0x05, 0, 4, 0))
    s.close()
    alive(pacs)


def test_dimse_limits_in_the_conformance_statement(pacs):
    """conformance/dimse.md: sequences nested deeper than 64 levels — C-STORE 0xC000, N-ACTION
    0x0110 — and identifiers over 16 MiB refused with 0xA700; each association goes on."""
    from dimsetools import dataset_bytes
    from test_dimse_pynetdicom import store_command

    # C-STORE of a data set nested 5000 deep.
    ds, raw = nested(5000)
    s = associate(pacs.dimse_port, pacs.ae_title, "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1")
    s.sendall(pdv(1, True, True, store_command(ds.SOPInstanceUID)))
    body = dataset_bytes(raw)
    for at in range(0, len(body), 16000):
        s.sendall(pdv(1, False, at + 16000 >= len(body), body[at:at + 16000]))
    assert response_status(s) == 0xC000
    s.sendall(struct.pack(">BBII", 0x05, 0, 4, 0))
    s.close()

    # N-ACTION (storage commitment) whose action information is nested 5000 deep.
    commitment = "1.2.840.10008.1.20.1"
    s = associate(pacs.dimse_port, pacs.ae_title, commitment, IMPLICIT)
    action = command({0x0003: commitment.encode(), 0x0100: struct.pack("<H", 0x0130),
                      0x0110: struct.pack("<H", 5), 0x0800: struct.pack("<H", 0),
                      0x1001: b"1.2.840.10008.1.20.1.1", 0x1008: struct.pack("<H", 1)})
    sq = b"\x08\x00\x99\x11\xff\xff\xff\xff"  # ReferencedSOPSequence, implicit VR
    item = b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    ends = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00" + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    uid = b"\x08\x00\x95\x11\x0a\x00\x00\x001.2.3.4.5\x00"  # TransactionUID
    info = uid + (sq + item) * 5000 + ends * 5000
    s.sendall(pdv(1, True, True, action))
    for at in range(0, len(info), 16000):
        s.sendall(pdv(1, False, at + 16000 >= len(info), info[at:at + 16000]))
    assert response_status(s) == 0x0110

    # A C-FIND identifier of 17 MiB (a long private value), on a Study Root context.
    s2 = associate(pacs.dimse_port, pacs.ae_title, STUDY_ROOT_FIND, IMPLICIT)
    find = command({0x0002: STUDY_ROOT_FIND.encode(), 0x0100: struct.pack("<H", 0x0020),
                    0x0110: struct.pack("<H", 6), 0x0700: struct.pack("<H", 0),
                    0x0800: struct.pack("<H", 0)})
    big = 17 << 20
    identifier = b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY " + b"\x09\x00\x10\x10" + struct.pack("<I", big) + b"x" * big
    s2.sendall(pdv(1, True, True, find))
    for at in range(0, len(identifier), 16000):
        s2.sendall(pdv(1, False, at + 16000 >= len(identifier), identifier[at:at + 16000]))
    assert response_status(s2) == 0xA700
    for sock in (s, s2):
        sock.sendall(struct.pack(">BBII", 0x05, 0, 4, 0))
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
    r = stow(pacs, body, "application/dicom")
    assert r.status_code in (400, 409), r.status_code
    assert "nested more than 64" in r.text, r.text[:500]
    nothing_stored(pacs)
    alive(pacs)
