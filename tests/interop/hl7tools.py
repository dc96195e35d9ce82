"""Helpers for the HL7 v2 tests: messages as a RIS sends them (ORM^O01, OMI^O23, ADT^A08,
ADT^A40, and broken ones), sent with python-hl7's `mllp_send` console script (from the
test venv) and their ACKs read back with `hl7.parse`; and MLLP over a raw socket for
senders that misbehave (no framing, a frame that never ends)."""

import re
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import hl7

SB, EB, CR = b"\x0b", b"\x1c", b"\r"

# HL7 table 0357 (message error condition codes), v2.5.1.
TABLE_0357 = {0, 100, 101, 102, 103, 200, 201, 202, 203, 204, 205, 206, 207}

UTF8 = "UNICODE UTF-8"
LATIN1 = "8859/1"


def mllp_send_tool() -> str:
    """python-hl7's `mllp_send`, installed beside the Python running the tests."""
    beside = Path(sys.executable).parent / "mllp_send"
    path = str(beside) if beside.exists() else shutil.which("mllp_send")
    if not path:
        raise RuntimeError("python-hl7's mllp_send is not installed (pip install -r tests/requirements.txt)")
    return path


def encoding(charset: str) -> str:
    """The Python codec of an MSH-18 value."""
    return {UTF8: "utf-8", LATIN1: "latin-1", "": "ascii"}[charset]


def segment(name: str, fields: dict[int, str]) -> str:
    """A segment from {field number: value} (values already with their ^ components)."""
    last = max(fields, default=0)
    return "|".join([name] + [fields.get(n, "") for n in range(1, last + 1)])


def msh(control_id: str, message_type: str, charset=UTF8, app="RIS", facility="HOSP") -> str:
    fields = {3: app, 4: facility, 5: "PACSLITE", 6: "CLINIC", 7: "20261207093000", 9: message_type,
              10: control_id, 11: "P", 12: "2.5.1"}
    if charset:
        fields[18] = charset
    # MSH-1 is the field separator itself: MSH-2 follows the segment name directly.
    return "MSH|^~\\&|" + segment("X", fields).split("|", 3)[3]


def pid(patient_id="4711", issuer="HOSP", name="Müller^Hans", birth_date="19700215", sex="M") -> str:
    return segment("PID", {1: "1", 3: f"{patient_id}^^^{issuer}^MR", 5: name, 7: birth_date, 8: sex})


def pv1(referring="123^Ref^Rita") -> str:
    return segment("PV1", {1: "1", 2: "O", 8: referring})


def message(*segments: str) -> str:
    return "\r".join(segments) + "\r"


def orm(control_id, control, order_id, *, patient_id="4711", issuer="HOSP", name="Müller^Hans",
        birth_date="19700215", sex="M", accession="ACC-1", procedure_id="RP-1", step_id="SPS-1", modality="CT",
        start="202612071030", description="CT Head", referring="123^Ref^Rita", study_uid=None,
        charset=UTF8, app="RIS", facility="HOSP", tq1=False) -> str:
    """An ORM^O01 as IHE RAD-4 has it: ORC-1 the control, ORC-2 the placer order number
    (with a namespace component), OBR-4.2 the description, OBR-18 accession, OBR-19
    requested procedure, OBR-20 step, OBR-24 modality, OBR-27.4 the start; ZDS-1 the
    Study Instance UID when given. `tq1`: the start in TQ1-7 instead (OBR-27 left empty)."""
    obr = segment("OBR", {1: "1", 2: f"{order_id}^RIS", 3: f"F-{order_id}^PACS", 4: f"PROC^{description}^L",
                          18: accession, 19: procedure_id, 20: step_id, 24: modality,
                          27: "" if tq1 else f"^^^{start}"})
    segs = [msh(control_id, "ORM^O01^ORM_O01", charset, app, facility),
            pid(patient_id, issuer, name, birth_date, sex), pv1(referring),
            segment("ORC", {1: control, 2: f"{order_id}^RIS", 3: f"F-{order_id}^PACS", 5: "SC"})]
    if tq1:
        segs.append(segment("TQ1", {1: "1", 7: start}))
    segs.append(obr)
    if study_uid:
        segs.append(f"ZDS|{study_uid}^100^Application^DICOM")
    return message(*segs)


def omi(control_id, order_id, steps, *, control="NW", patient_id="4711", name="Müller^Hans",
        birth_date="19700215", sex="M", accession="ACC-OMI", procedure_id="RP-OMI", study_uid=None,
        start="202612071030", description="CT and MR", referring="123^Ref^Rita", charset=UTF8) -> str:
    """An OMI^O23 (IHE RAD-4, HL7 v2.5.1): the start in TQ1-7, one IPC per step of
    `steps` [(step id, modality, station AE)]: IPC-1 accession, IPC-2 requested
    procedure, IPC-3 Study Instance UID, IPC-4 step id, IPC-5 modality, IPC-9 station AE."""
    ipcs = [segment("IPC", {1: accession, 2: procedure_id, 3: study_uid or "", 4: sid, 5: modality, 9: ae})
            for sid, modality, ae in steps]
    return message(msh(control_id, "OMI^O23^OMI_O23", charset), pid(patient_id, "HOSP", name, birth_date, sex),
                   pv1(referring), segment("ORC", {1: control, 2: f"{order_id}^RIS", 5: "SC"}),
                   segment("TQ1", {1: "1", 7: start}),
                   segment("OBR", {1: "1", 2: f"{order_id}^RIS", 4: f"PROC^{description}^L"}), *ipcs)


def adt_a08(control_id, patient_id, name, birth_date, sex, charset=UTF8) -> str:
    return message(msh(control_id, "ADT^A08^ADT_A01", charset), "EVN|A08|20261207093000",
                   pid(patient_id, "HOSP", name, birth_date, sex), segment("PV1", {1: "1", 2: "O"}))


def adt_a40(control_id, patient_id, prior_id, name="Müller^Hans", charset=UTF8) -> str:
    return message(msh(control_id, "ADT^A40^ADT_A39", charset), "EVN|A40|20261207093000",
                   pid(patient_id, "HOSP", name, "19700215", "M"), f"MRG|{prior_id}^^^HOSP^MR")


def oru(control_id) -> str:
    """A result message: not one the archive takes."""
    return message(msh(control_id, "ORU^R01^ORU_R01"), pid(), "OBR|1|X-1^RIS||PROC^Result^L",
                   "OBX|1|TX|TEXT^Text^L||Nothing to see")


def to_bytes(msg) -> bytes:
    """A message as sent: str encoded as its MSH-18 says; bytes as they are."""
    if isinstance(msg, bytes):
        return msg
    fields = msg.split("\r", 1)[0].split("|")
    # fields[0] is "MSH", fields[1] MSH-2: MSH-n is fields[n - 1]. No MSH-18: UTF-8 (ASCII stays ASCII).
    charset = fields[17] if msg.startswith("MSH") and len(fields) > 17 else ""
    return msg.encode(encoding(charset) if charset else "utf-8")


def mllp_send(port: int, messages, timeout=60) -> list[bytes]:
    """Send `messages` in order on one connection with python-hl7's mllp_send (from a file
    of MLLP frames, so any bytes go as they are); the ACK frames it prints, one each."""
    with tempfile.NamedTemporaryFile(suffix=".hl7", delete=False) as f:
        for m in messages:
            f.write(SB + to_bytes(m) + EB + CR)
        name = f.name
    try:
        r = subprocess.run([mllp_send_tool(), "--port", str(port), "--file", name, "127.0.0.1"],
                           capture_output=True, timeout=timeout)
    finally:
        Path(name).unlink()
    assert r.returncode == 0, f"mllp_send failed: {r.stderr.decode(errors='replace')}"
    frames = re.findall(rb"\x0b(.*?)\x1c\r", r.stdout, re.S)
    assert len(frames) == len(messages), f"{len(messages)} messages sent, ACK frames printed: {r.stdout!r}"
    return frames


def parse_ack(frame: bytes, charset=UTF8) -> hl7.Message:
    text = frame.decode(encoding(charset))
    assert text.startswith("MSH"), f"not an HL7 message: {frame!r}"
    return hl7.parse(text)


def field(msg: hl7.Message, key: str) -> str:
    """A field or component by python-hl7's accessor (`MSA.F1`, `ERR.F3.R1.C1`); "" when absent."""
    try:
        return str(msg[key])
    except (KeyError, IndexError):
        return ""


def has_segment(msg: hl7.Message, name: str) -> bool:
    try:
        msg.segments(name)
        return True
    except KeyError:
        return False


def check_ack(frame: bytes, control_id: str, code: str, charset=UTF8) -> hl7.Message:
    """The ACK is an ACK to `control_id` (MSA-2) with MSA-1 `code`; AE/AR carry an ERR
    whose ERR-3 is a table 0357 code; AA carries none."""
    ack = parse_ack(frame, charset)
    where = f"ACK {frame!r}"
    assert field(ack, "MSH.F9.R1.C1") == "ACK", where
    assert field(ack, "MSA.F1") == code, where
    assert field(ack, "MSA.F2") == control_id, where
    if code == "AA":
        assert not has_segment(ack, "ERR"), where
    else:
        assert has_segment(ack, "ERR"), where
        err_code = field(ack, "ERR.F3.R1.C1")
        assert err_code.isdigit() and int(err_code) in TABLE_0357, where
        assert field(ack, "ERR.F3.R1.C3") in ("", "HL70357"), where
    return ack


def err_code(ack: hl7.Message) -> int:
    return int(field(ack, "ERR.F3.R1.C1"))


def err_says(ack: hl7.Message, segment_name: str, number: int) -> bool:
    """The ERR names the field at fault: ERR-2 (segment^sequence^field) or its text
    (ERR-7 diagnostic, ERR-8 user message) `SEG-n`."""
    location = (field(ack, "ERR.F2.R1.C1"), field(ack, "ERR.F2.R1.C3"))
    text = field(ack, "ERR.F7") + " " + field(ack, "ERR.F8")
    return location == (segment_name, str(number)) or f"{segment_name}-{number}" in text


def err_text(ack: hl7.Message) -> str:
    return (field(ack, "ERR.F7") + " " + field(ack, "ERR.F8")).strip()


class Connection:
    """An MLLP connection on a raw socket: frames sent and read by hand."""

    def __init__(self, port: int, timeout=15):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buffer = b""

    def send(self, msg) -> bytes:
        """Send one framed message; the ACK frame back."""
        self.sock.sendall(SB + to_bytes(msg) + EB + CR)
        return self.read_frame()

    def send_together(self, messages) -> list[bytes]:
        """Send several framed messages in one write (not waiting for ACKs); an ACK frame for each."""
        self.sock.sendall(b"".join(SB + to_bytes(m) + EB + CR for m in messages))
        return [self.read_frame() for _ in messages]

    def read_frame(self) -> bytes:
        while EB + CR not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed before a whole frame: {self.buffer!r}")
            self.buffer += chunk
        frame, self.buffer = self.buffer.split(EB + CR, 1)
        assert frame.startswith(SB), f"not an MLLP frame: {frame!r}"
        return frame[1:]

    def closed_within(self, seconds: float) -> bool:
        """Whether the server closes the connection within `seconds` (whatever it sends first)."""
        import time
        deadline = time.time() + seconds
        while time.time() < deadline:
            self.sock.settimeout(max(0.05, deadline - time.time()))
            try:
                if not self.sock.recv(65536):
                    return True
            except socket.timeout:
                return False
            except (ConnectionResetError, BrokenPipeError):
                return True
        return False

    def close(self):
        self.sock.close()
