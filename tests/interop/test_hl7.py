"""HL7 v2 orders over MLLP (issue 17) against the real server, sent with python-hl7's
mllp_send: ORM^O01 new, change, cancel and discontinue; OMI^O23 with one scheduled step
per IPC; a Study Instance UID from ZDS-1; ADT^A08 patient updates and ADT^A40 merges;
UTF-8 and Latin-1 (MSH-18) messages and ACKs; duplicates acknowledged again without being
applied twice; malformed and unsupported messages refused with an ERR while the listener
keeps serving; connections sending garbage or stalling mid-frame closed after the idle
timeout; and the same order from HL7 as from the REST API, down to the worklist."""

import threading
import time

import pytest
import requests

from hl7tools import (EB, LATIN1, SB, UTF8, Connection, adt_a08, adt_a40, check_ack, encoding, err_code, err_says,
                      err_text, field, mllp_send, omi, orm, oru, parse_ack, to_bytes)
from test_worklist import API, check_full_answer, full_query, get_order, items, mwl_find, put_order

HL7 = {"PACS_HL7__LISTEN": "127.0.0.1:0"}


@pytest.fixture
def pacs(make_pacs):
    """A server with the HL7 listener on an ephemeral port (pacs.hl7_port)."""
    p = make_pacs(HL7)
    assert p.hl7_port, "no HL7 listener"
    return p


def absent(pacs, order_id) -> bool:
    return requests.get(f"{pacs.url}{API}/orders/{order_id}").status_code == 404


def without_nulls(order: dict) -> dict:
    """An order with absent (null) fields left out, in its steps too: absent and null are the same."""
    out = {k: v for k, v in order.items() if v is not None}
    out["scheduled_procedure_steps"] = [{k: v for k, v in s.items() if v is not None}
                                        for s in order["scheduled_procedure_steps"]]
    return out


# The order orm() describes by default, as the REST API returns it.
ORM_ORDER = {
    "accession_number": "ACC-1",
    "patient_id": "4711",
    "issuer_of_patient_id": "HOSP",
    "patient_name": "Müller^Hans",
    "patient_birth_date": "19700215",
    "patient_sex": "M",
    "requested_procedure_id": "RP-1",
    "requested_procedure_description": "CT Head",
    "referring_physician": "Ref^Rita",
    "status": "scheduled",
    "scheduled_procedure_steps": [{"id": "SPS-1", "modality": "CT", "start": "2026-12-07T10:30",
                                   "description": "CT Head"}],
}


def check_order(pacs, order_id, expected) -> dict:
    """The order as GET returns it has `expected`'s fields (and any study_instance_uid); returns it."""
    o = get_order(pacs, order_id)
    got = without_nulls(o)
    got.pop("study_instance_uid", None)
    got.pop("order_id", None)
    assert got == expected
    return o


def refused(frame, control_id, code, acks=("AE", "AR")):
    """An AE or AR to `control_id` with ERR-3 `code`."""
    ack = parse_ack(frame)
    msa = field(ack, "MSA.F1")
    assert msa in acks, f"expected {'/'.join(acks)}, got {msa}: {frame!r}"
    ack = check_ack(frame, control_id, msa)
    assert err_code(ack) == code, f"ERR-3 {err_code(ack)}, expected {code}: {frame!r}"
    return ack


def test_orm_new_change_and_cancel(pacs):
    """ORM NW creates the order from PID/PV1/ORC/OBR, XO changes it (UID kept), CA takes it off the worklist."""
    [frame] = mllp_send(pacs.hl7_port, [orm("MSG-NW", "NW", "ORD-H1")])
    check_ack(frame, "MSG-NW", "AA")
    o = check_order(pacs, "ORD-H1", ORM_ORDER)
    uid = o["study_instance_uid"]
    assert uid and uid.startswith("2.25."), uid
    [answer] = mwl_find(pacs, full_query(AccessionNumber="ACC-1"))
    check_full_answer(answer, o)

    [frame] = mllp_send(pacs.hl7_port, [orm("MSG-XO", "XO", "ORD-H1", accession="ACC-2", step_id="SPS-2",
                                            modality="MR", start="202612081100", description="MR Head")])
    check_ack(frame, "MSG-XO", "AA")
    changed = dict(ORM_ORDER, accession_number="ACC-2", requested_procedure_description="MR Head",
                   scheduled_procedure_steps=[{"id": "SPS-2", "modality": "MR", "start": "2026-12-08T11:00",
                                               "description": "MR Head"}])
    o = check_order(pacs, "ORD-H1", changed)
    assert o["study_instance_uid"] == uid
    assert mwl_find(pacs, full_query(AccessionNumber="ACC-1")) == []
    [answer] = mwl_find(pacs, full_query(AccessionNumber="ACC-2"))
    check_full_answer(answer, o)

    [frame] = mllp_send(pacs.hl7_port, [orm("MSG-CA", "CA", "ORD-H1", accession="ACC-2", step_id="SPS-2",
                                            modality="MR", start="202612081100", description="MR Head")])
    check_ack(frame, "MSG-CA", "AA")
    assert get_order(pacs, "ORD-H1")["status"] == "discontinued"
    assert mwl_find(pacs, full_query(AccessionNumber="ACC-2")) == []


def test_orm_start_from_tq1(pacs):
    """An ORM whose start is in TQ1-7 (OBR-27 empty) schedules its step then."""
    [frame] = mllp_send(pacs.hl7_port, [orm("M-TQ1", "NW", "ORD-TQ1", start="202612091545", tq1=True)])
    check_ack(frame, "M-TQ1", "AA")
    o = check_order(pacs, "ORD-TQ1", dict(ORM_ORDER, scheduled_procedure_steps=[
        {"id": "SPS-1", "modality": "CT", "start": "2026-12-09T15:45", "description": "CT Head"}]))
    [answer] = mwl_find(pacs, full_query({"ScheduledProcedureStepStartDate": "20261209"}))
    check_full_answer(answer, o)


@pytest.mark.parametrize("control", ["SC", "XO"])
def test_orm_change_controls(pacs, control):
    """ORC-1 SC and XO both change an order's details, on an order made by NW."""
    frames = mllp_send(pacs.hl7_port, [orm("M-1", "NW", "ORD-CH"),
                                       orm("M-2", control, "ORD-CH", accession="ACC-CH", procedure_id="RP-CH")])
    check_ack(frames[0], "M-1", "AA")
    check_ack(frames[1], "M-2", "AA")
    check_order(pacs, "ORD-CH", dict(ORM_ORDER, accession_number="ACC-CH", requested_procedure_id="RP-CH"))


@pytest.mark.parametrize("control", ["CA", "OC", "DC", "OD"])
def test_orm_cancel_and_discontinue_controls(pacs, control):
    """ORC-1 CA, OC, DC and OD all make the order discontinued and take it off the worklist."""
    frames = mllp_send(pacs.hl7_port, [orm("M-1", "NW", "ORD-STOP", accession="ACC-STOP"),
                                       orm("M-2", control, "ORD-STOP", accession="ACC-STOP")])
    check_ack(frames[0], "M-1", "AA")
    check_ack(frames[1], "M-2", "AA")
    assert get_order(pacs, "ORD-STOP")["status"] == "discontinued"
    assert mwl_find(pacs, full_query(AccessionNumber="ACC-STOP")) == []


def test_orm_change_of_an_unknown_order_creates_it_and_cancel_of_one_is_refused(pacs):
    """XO on an unknown order creates it; CA on an unknown order is an AE with ERR code 204 and creates nothing."""
    frames = mllp_send(pacs.hl7_port, [orm("M-XO", "XO", "ORD-NEWXO"), orm("M-CA", "CA", "ORD-NOSUCH")])
    check_ack(frames[0], "M-XO", "AA")
    check_order(pacs, "ORD-NEWXO", ORM_ORDER)
    ack = check_ack(frames[1], "M-CA", "AE")
    assert err_code(ack) == 204, frames[1]
    assert err_text(ack), frames[1]
    assert absent(pacs, "ORD-NOSUCH")


def test_zds_study_uid_is_the_orders(pacs):
    """A Study Instance UID in ZDS-1 becomes the order's, and the worklist's."""
    uid = "1.2.826.0.1.3680043.8.498.20261207"
    [frame] = mllp_send(pacs.hl7_port, [orm("M-ZDS", "NW", "ORD-ZDS", accession="ACC-ZDS", study_uid=uid)])
    check_ack(frame, "M-ZDS", "AA")
    assert get_order(pacs, "ORD-ZDS")["study_instance_uid"] == uid
    [answer] = mwl_find(pacs, full_query(AccessionNumber="ACC-ZDS"))
    assert answer.StudyInstanceUID == uid


def test_omi_with_two_ipc_gives_two_steps(pacs):
    """An OMI^O23 with two IPC segments makes one order with two steps (GET and worklist), IPC-3 its UID."""
    uid = "1.2.826.0.1.3680043.8.498.2326"
    msg = omi("M-OMI", "ORD-OMI", [("SPS-CT", "CT", "CT1"), ("SPS-MR", "MR", "MR1")], study_uid=uid)
    [frame] = mllp_send(pacs.hl7_port, [msg])
    check_ack(frame, "M-OMI", "AA")
    o = check_order(pacs, "ORD-OMI", dict(
        ORM_ORDER, accession_number="ACC-OMI", requested_procedure_id="RP-OMI",
        requested_procedure_description="CT and MR",
        scheduled_procedure_steps=[
            {"id": "SPS-CT", "modality": "CT", "station_ae": "CT1", "start": "2026-12-07T10:30",
             "description": "CT and MR"},
            {"id": "SPS-MR", "modality": "MR", "station_ae": "MR1", "start": "2026-12-07T10:30",
             "description": "CT and MR"},
        ]))
    assert o["study_instance_uid"] == uid

    answers = mwl_find(pacs, full_query(AccessionNumber="ACC-OMI"))
    assert items(answers) == {("ACC-OMI", "SPS-CT"), ("ACC-OMI", "SPS-MR")} and len(answers) == 2
    for a in answers:
        check_full_answer(a, o, 0 if a.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID == "SPS-CT" else 1)
    [mr] = mwl_find(pacs, full_query({"ScheduledStationAETitle": "MR1"}))
    assert (mr.StudyInstanceUID, mr.ScheduledProcedureStepSequence[0].Modality) == (uid, "MR")


def test_rest_and_hl7_give_the_same_order(pacs):
    """An order PUT by REST and the same order sent as ORM NW read back the same (bar id and UID), in GET and MWL."""
    body = {k: v for k, v in ORM_ORDER.items() if k != "status"}
    body["accession_number"] = "ACC-EQ"
    r = put_order(pacs, "ORD-EQ-REST", body)
    assert r.status_code == 201, r.text
    [frame] = mllp_send(pacs.hl7_port, [orm("M-EQ", "NW", "ORD-EQ-HL7", accession="ACC-EQ")])
    check_ack(frame, "M-EQ", "AA")

    by_rest, by_hl7 = get_order(pacs, "ORD-EQ-REST"), get_order(pacs, "ORD-EQ-HL7")
    for o in (by_rest, by_hl7):
        o.pop("order_id", None)
        o.pop("study_instance_uid")
    assert by_hl7 == by_rest

    answers = mwl_find(pacs, full_query(AccessionNumber="ACC-EQ"))
    assert len(answers) == 2
    for a in answers:
        del a.StudyInstanceUID
    assert answers[0] == answers[1], f"{answers[0]}\n{answers[1]}"


def test_adt_a08_updates_the_open_orders_of_the_patient(pacs):
    """ADT^A08 sets name, birth date and sex on the patient's scheduled and in-progress orders only."""
    [frame] = mllp_send(pacs.hl7_port, [orm("M-NW", "NW", "ORD-A08-1", patient_id="P-A08", accession="ACC-A08")])
    check_ack(frame, "M-NW", "AA")
    rest = {k: v for k, v in ORM_ORDER.items() if k != "status"}
    for order_id, patient, status in [("ORD-A08-2", "P-A08", "in_progress"), ("ORD-A08-3", "P-A08", "completed"),
                                      ("ORD-A08-4", "P-OTHER", "scheduled")]:
        r = put_order(pacs, order_id, dict(rest, patient_id=patient, status=status, accession_number=order_id[-5:]))
        assert r.status_code == 201, r.text
    before = {i: get_order(pacs, i) for i in ("ORD-A08-3", "ORD-A08-4")}

    [frame] = mllp_send(pacs.hl7_port, [adt_a08("M-A08", "P-A08", "Schmidt^Hanna", "19710316", "F")])
    check_ack(frame, "M-A08", "AA")
    for order_id in ("ORD-A08-1", "ORD-A08-2"):
        o = get_order(pacs, order_id)
        assert (o["patient_name"], o["patient_birth_date"], o["patient_sex"]) == ("Schmidt^Hanna", "19710316", "F"), o
    for order_id, o in before.items():
        assert get_order(pacs, order_id) == o
    [answer] = mwl_find(pacs, full_query(PatientID="P-A08"))
    assert (str(answer.PatientName), answer.PatientBirthDate, answer.PatientSex) == ("Schmidt^Hanna", "19710316", "F")


def test_adt_a40_moves_the_orders_of_the_prior_patient(pacs):
    """ADT^A40 moves every order of the MRG-1 patient to the PID-3 patient; others stay."""
    [frame] = mllp_send(pacs.hl7_port, [orm("M-NW", "NW", "ORD-M1", patient_id="P-OLD", accession="ACC-M1")])
    check_ack(frame, "M-NW", "AA")
    rest = {k: v for k, v in ORM_ORDER.items() if k != "status"}
    for order_id, patient, status in [("ORD-M2", "P-OLD", "completed"), ("ORD-M3", "P-KEEP", "scheduled")]:
        r = put_order(pacs, order_id,
                      dict(rest, patient_id=patient, status=status, accession_number="ACC-" + order_id[-2:]))
        assert r.status_code == 201, r.text

    [frame] = mllp_send(pacs.hl7_port, [adt_a40("M-A40", "P-NEW", "P-OLD")])
    check_ack(frame, "M-A40", "AA")
    assert [get_order(pacs, i)["patient_id"] for i in ("ORD-M1", "ORD-M2", "ORD-M3")] == ["P-NEW", "P-NEW", "P-KEEP"]
    assert mwl_find(pacs, full_query(PatientID="P-OLD")) == []
    assert items(mwl_find(pacs, full_query(PatientID="P-NEW"))) == {("ACC-M1", "SPS-1")}


@pytest.mark.parametrize("charset", [UTF8, LATIN1])
def test_character_sets(pacs, charset):
    """A message in UTF-8 or Latin-1 (MSH-18) is read in it, and its ACK comes back in it."""
    facility = "KLINIK MÜNSTER"
    msg = orm("M-CS", "NW", "ORD-CS", name="Größe^Jürgen", accession="ACC-CS", charset=charset, facility=facility)
    raw = to_bytes(msg)
    assert "Größe".encode(encoding(charset)) in raw
    [frame] = mllp_send(pacs.hl7_port, [raw])
    ack = check_ack(frame, "M-CS", "AA", charset)
    assert field(ack, "MSH.F18") == charset, frame
    # The ACK names the sender's facility (MSH-6) in the message's character set.
    assert facility.encode(encoding(charset)) in frame, f"the ACK is not in {charset}: {frame!r}"
    assert get_order(pacs, "ORD-CS")["patient_name"] == "Größe^Jürgen"
    [answer] = mwl_find(pacs, full_query(AccessionNumber="ACC-CS"))
    assert str(answer.PatientName) == "Größe^Jürgen"


def test_a_duplicate_is_acknowledged_again_and_not_applied_twice(pacs):
    """The same MSH-10 from the same MSH-3/MSH-4 gets the same ACK and changes nothing; another sender's is new."""
    nw = orm("M-DUP", "NW", "ORD-DUP", accession="ACC-DUP")
    [first] = mllp_send(pacs.hl7_port, [nw])
    check_ack(first, "M-DUP", "AA")
    # The order moves on after the message (by REST), then the message comes again, twice.
    moved = {k: v for k, v in get_order(pacs, "ORD-DUP").items() if k != "order_id"}
    moved.update(patient_name="Anders^Anna", status="in_progress")
    assert put_order(pacs, "ORD-DUP", moved).status_code == 200
    now = get_order(pacs, "ORD-DUP")
    again = mllp_send(pacs.hl7_port, [nw, nw])
    assert again == [first, first]
    assert get_order(pacs, "ORD-DUP") == now

    # A cancel repeated after the order was put back: not cancelled again.
    ca = orm("M-DUP-CA", "CA", "ORD-DUP", accession="ACC-DUP")
    [first_ca] = mllp_send(pacs.hl7_port, [ca])
    check_ack(first_ca, "M-DUP-CA", "AA")
    assert get_order(pacs, "ORD-DUP")["status"] == "discontinued"
    assert put_order(pacs, "ORD-DUP", dict(moved, status="scheduled")).status_code == 200
    assert mllp_send(pacs.hl7_port, [ca]) == [first_ca]
    assert get_order(pacs, "ORD-DUP")["status"] == "scheduled"

    # The same control id from another sending application is another message.
    [other] = mllp_send(pacs.hl7_port, [orm("M-DUP", "NW", "ORD-DUP2", accession="ACC-DUP2", app="OTHER-RIS")])
    check_ack(other, "M-DUP", "AA")
    assert get_order(pacs, "ORD-DUP2")["accession_number"] == "ACC-DUP2"
    # And from another sending facility.
    [other] = mllp_send(pacs.hl7_port, [orm("M-DUP", "NW", "ORD-DUP3", accession="ACC-DUP3", facility="OTHER-HOSP")])
    check_ack(other, "M-DUP", "AA")
    assert get_order(pacs, "ORD-DUP3")["accession_number"] == "ACC-DUP3"


def test_malformed_messages_are_refused_and_the_listener_keeps_serving(pacs):
    """Malformed and unsupported messages get AE/AR with an ERR saying why, change nothing; the listener goes on."""
    no_msh = "PID|1||4711^^^HOSP^MR||Muller^Hans\rORC|NW|ORD-NOMSH^RIS\rOBR|1|ORD-NOMSH^RIS||PROC^CT^L\r"
    no_id = orm("M-NOID", "NW", "ORD-NOID", accession="ACC-NOID").replace("ORD-NOID^RIS", "")
    messages = [
        orm("M-OK1", "NW", "ORD-OK1", accession="ACC-OK1"),
        no_msh,
        orm("M-ZZ", "ZZ", "ORD-ZZ", accession="ACC-ZZ"),
        no_id,
        orm("M-DOB", "NW", "ORD-DOB", accession="ACC-DOB", birth_date="15.02.1970"),
        orm("M-DOB2", "NW", "ORD-DOB2", accession="ACC-DOB2", birth_date="19700230"),
        oru("M-ORU"),
        orm("M-OK2", "NW", "ORD-OK2", accession="ACC-OK2"),
    ]
    frames = mllp_send(pacs.hl7_port, messages)
    check_ack(frames[0], "M-OK1", "AA")
    ack = refused(frames[1], "", 100)
    assert "MSH" in err_text(ack), frames[1]
    ack = refused(frames[2], "M-ZZ", 103)
    assert err_says(ack, "ORC", 1), frames[2]
    ack = refused(frames[3], "M-NOID", 101)
    assert err_says(ack, "ORC", 2), frames[3]
    ack = refused(frames[4], "M-DOB", 102)
    assert err_says(ack, "PID", 7), frames[4]
    ack = refused(frames[5], "M-DOB2", 102)
    assert err_text(ack), frames[5]
    refused(frames[6], "M-ORU", 200, acks=("AR",))
    check_ack(frames[7], "M-OK2", "AA")

    for order_id in ("ORD-OK1", "ORD-OK2"):
        assert get_order(pacs, order_id)["status"] == "scheduled"
    for order_id in ("ORD-NOMSH", "ORD-ZZ", "ORD-NOID", "ORD-DOB", "ORD-DOB2"):
        assert absent(pacs, order_id), order_id
    assert items(mwl_find(pacs, full_query())) == {("ACC-OK1", "SPS-1"), ("ACC-OK2", "SPS-1")}

    # A refused change leaves the order as it was.
    before = get_order(pacs, "ORD-OK1")
    [frame] = mllp_send(pacs.hl7_port, [orm("M-XO-BAD", "XO", "ORD-OK1", accession="ACC-CHANGED",
                                            birth_date="1970-02-15")])
    refused(frame, "M-XO-BAD", 102)
    assert get_order(pacs, "ORD-OK1") == before

    # Another connection is served too, with messages sent back to back: one ACK each, in order.
    c = Connection(pacs.hl7_port)
    frames = c.send_together([orm("M-OK3", "NW", "ORD-OK3"), orm("M-ZZ2", "ZZ", "ORD-ZZ2"),
                              orm("M-OK4", "NW", "ORD-OK4")])
    c.close()
    check_ack(frames[0], "M-OK3", "AA")
    refused(frames[1], "M-ZZ2", 103)
    check_ack(frames[2], "M-OK4", "AA")
    assert [get_order(pacs, i)["status"] for i in ("ORD-OK3", "ORD-OK4")] == ["scheduled", "scheduled"]
    assert absent(pacs, "ORD-ZZ2")


def test_garbage_and_stalled_connections_are_closed(make_pacs):
    """Connections sending unframed garbage, stalled or trickling mid-frame close after the timeout; others go on."""
    pacs = make_pacs({**HL7, "PACS_HL7__IDLE_TIMEOUT_SECS": "2"})
    garbage = Connection(pacs.hl7_port)
    garbage.sock.sendall(b"GET / HTTP/1.1\r\nHost: pacs\r\n\r\n" + bytes(range(32, 127)) * 50)
    assert SB not in bytes(range(32, 127)) and EB not in bytes(range(32, 127))
    stalled = Connection(pacs.hl7_port)
    stalled.sock.sendall(SB + to_bytes(orm("M-STALL", "NW", "ORD-STALL"))[:80])
    start = time.time()
    # A slow sender: a byte a second into a frame that never ends.
    trickle = Connection(pacs.hl7_port)
    trickle.sock.sendall(SB + b"MSH|^~\\&|RIS|HOSP|")
    stop = threading.Event()

    def drip():
        while not stop.wait(1):
            try:
                trickle.sock.sendall(b"x")
            except OSError:
                return

    dripping = threading.Thread(target=drip, daemon=True)
    dripping.start()

    live = Connection(pacs.hl7_port)
    check_ack(live.send(orm("M-LIVE", "NW", "ORD-LIVE")), "M-LIVE", "AA")
    assert time.time() - start < 2, "the live connection waited for the stalled ones"
    live.close()

    assert garbage.closed_within(10), "the garbage connection is still open 10 s later"
    assert stalled.closed_within(10 - (time.time() - start)), "the stalled connection is still open 10 s later"
    try:
        assert trickle.closed_within(10 - (time.time() - start)), "the trickling connection is still open 10 s later"
    finally:
        stop.set()
        dripping.join()
    for c in (garbage, stalled, trickle):
        c.close()
    assert absent(pacs, "ORD-STALL")

    # The listener still serves new connections.
    [frame] = mllp_send(pacs.hl7_port, [orm("M-AFTER", "NW", "ORD-AFTER")])
    check_ack(frame, "M-AFTER", "AA")
    assert get_order(pacs, "ORD-AFTER")["status"] == "scheduled"
