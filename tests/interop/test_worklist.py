"""Radiology orders as a worklist (issue 17), against the real server: orders by REST (created,
replaced idempotently, refused naming the field, listed by status, day and modality); the
Modality Worklist C-FIND with dcmtk's findscu and with pynetdicom (station, modality,
start date and time ranges, step id, UTF-8 patient name wildcards, exactly the requested
keys, cancelled orders gone, each station seeing only its own steps); MPPS N-CREATE and
N-SET moving the order and their refusals; and the whole flow order → worklist → MPPS →
C-STORE with the worklist's Study Instance UID → the study linked to the order."""

import pydicom
import pytest
import requests
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom.sop_class import CTImageStorage, ModalityPerformedProcedureStep, ModalityWorklistInformationFind

from dicomgen import ct_series
from dimsetools import require_dcmtk, run
from test_dimse_pynetdicom import associate

API = "/api/v1/radiology"
WORKLIST = ModalityWorklistInformationFind
MPPS = ModalityPerformedProcedureStep

# The keys of a worklist query that asks for everything the spec returns.
TOP_KEYS = ["PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
            "AccessionNumber", "RequestedProcedureID", "RequestedProcedureDescription", "ReferringPhysicianName"]
STEP_KEYS = ["ScheduledStationAETitle", "ScheduledProcedureStepStartDate", "ScheduledProcedureStepStartTime",
             "Modality", "ScheduledProcedureStepDescription", "ScheduledProcedureStepID",
             "ScheduledProcedureStepStatus"]


def order_body(**over) -> dict:
    """A complete PUT body: one CT step at CT1 on 2026-12-07 10:30, unless overridden."""
    body = {
        "accession_number": "ACC-1",
        "patient_id": "P-1",
        "issuer_of_patient_id": "HOSP",
        "patient_name": "Müller^Hans",
        "patient_birth_date": "19700215",
        "patient_sex": "M",
        "requested_procedure_id": "RP-1",
        "requested_procedure_description": "CT Head",
        "referring_physician": "Ref^Rita",
        "scheduled_procedure_steps": [
            {"modality": "CT", "station_ae": "CT1", "start": "2026-12-07T10:30", "description": "CT Head plain"},
        ],
    }
    body.update(over)
    return body


def put_order(pacs, order_id, body) -> requests.Response:
    return requests.put(f"{pacs.url}{API}/orders/{order_id}", json=body)


def create(pacs, order_id, **over) -> dict:
    """PUT a new order (201) and return it as stored."""
    r = put_order(pacs, order_id, order_body(**over))
    assert r.status_code == 201, r.text
    return r.json()


def get_order(pacs, order_id) -> dict:
    r = requests.get(f"{pacs.url}{API}/orders/{order_id}")
    assert r.status_code == 200, r.text
    return r.json()


def order_studies(pacs, order_id) -> dict:
    r = requests.get(f"{pacs.url}{API}/orders/{order_id}/studies/")
    assert r.status_code == 200, r.text
    return r.json()


def list_orders(pacs, **query) -> dict:
    r = requests.get(f"{pacs.url}{API}/orders", params=query)
    assert r.status_code == 200, r.text
    return r.json()


def worklist_query(step=None, charset="ISO_IR 192", **keys) -> Dataset:
    """A worklist identifier: `keys` at the top, `step` (a dict; None: no sequence) as the
    one item of the Scheduled Procedure Step Sequence."""
    q = Dataset()
    if charset:
        q.SpecificCharacterSet = charset
    for k, v in keys.items():
        setattr(q, k, v)
    if step is not None:
        item = Dataset()
        for k, v in step.items():
            setattr(item, k, v)
        q.ScheduledProcedureStepSequence = [item]
    return q


def full_query(step=None, **keys) -> Dataset:
    """A query asking for every key the spec returns, some of them with values to match."""
    return worklist_query({**{k: "" for k in STEP_KEYS}, **(step or {})}, **{**{k: "" for k in TOP_KEYS}, **keys})


def mwl_find(pacs, query, ae_title="PYNETDICOM") -> list[Dataset]:
    """The answers (pending identifiers) of a worklist C-FIND; the final status must be success."""
    assoc = associate(pacs, WORKLIST, ae_title=ae_title)
    statuses, answers = [], []
    for status, ident in assoc.send_c_find(query, WORKLIST):
        assert status is not None and "Status" in status, "no C-FIND response"
        statuses.append(status.Status)
        if status.Status in (0xFF00, 0xFF01):
            answers.append(ident)
    assoc.release()
    assert statuses and statuses[-1] == 0x0000, [hex(s) for s in statuses]
    return answers


def step_of(answer) -> Dataset:
    assert len(answer.ScheduledProcedureStepSequence) == 1, answer
    return answer.ScheduledProcedureStepSequence[0]


def items(answers) -> set:
    """(accession number, step id) of each answer."""
    return {(a.AccessionNumber, step_of(a).ScheduledProcedureStepID) for a in answers}


def values(ds, keys) -> dict:
    """{keyword: value as text}; "<absent>" for an attribute the data set does not have."""
    return {k: "" if k in ds and ds[k].value is None else str(ds[k].value) if k in ds else "<absent>"
            for k in keys}


def check_full_answer(a, order, step_index=0):
    """A worklist answer to `full_query` holds the order's values for its step `step_index`."""
    step = order["scheduled_procedure_steps"][step_index]
    assert a.SpecificCharacterSet == "ISO_IR 192"
    assert values(a, TOP_KEYS) == {k: v or "" for k, v in {
        "PatientName": order["patient_name"],
        "PatientID": order["patient_id"],
        "IssuerOfPatientID": order["issuer_of_patient_id"],
        "PatientBirthDate": order["patient_birth_date"],
        "PatientSex": order["patient_sex"],
        "StudyInstanceUID": order["study_instance_uid"],
        "AccessionNumber": order["accession_number"],
        "RequestedProcedureID": order["requested_procedure_id"],
        "RequestedProcedureDescription": order["requested_procedure_description"],
        "ReferringPhysicianName": order["referring_physician"],
    }.items()}
    s = step_of(a)
    date, time = step["start"].split("T")
    assert values(s, STEP_KEYS) == {k: v or "" for k, v in {
        "ScheduledStationAETitle": step["station_ae"],
        "ScheduledProcedureStepStartDate": date.replace("-", ""),
        "ScheduledProcedureStepStartTime": time.replace(":", "") + "00",
        "Modality": step["modality"],
        "ScheduledProcedureStepDescription": step["description"],
        "ScheduledProcedureStepID": step["id"],
        "ScheduledProcedureStepStatus": "SCHEDULED",
    }.items()}


@pytest.fixture
def worklist(pacs):
    """Orders for the matching tests: A (two steps, CT at CT1 on the 7th, MR at MR1 on the
    8th), B (CT at CT2 on the 8th, step SPS-B), C (US at US1 on the 9th, a name with
    accents), and D (discontinued) and E (completed), both Müller CT at CT1 on the 7th,
    which the worklist never shows."""
    orders = {
        "A": create(pacs, "ORD-A", accession_number="ACC-A", patient_id="P-A", requested_procedure_id="RP-A",
                    scheduled_procedure_steps=[
                        {"modality": "CT", "station_ae": "CT1", "start": "2026-12-07T10:30", "description": "CT Head"},
                        {"modality": "MR", "station_ae": "MR1", "start": "2026-12-08T09:00",
                         "description": "MR Head"}]),
        "B": create(pacs, "ORD-B", accession_number="ACC-B", patient_id="P-B", patient_name="Muster^Max",
                    requested_procedure_id="RP-B", scheduled_procedure_steps=[
                        {"id": "SPS-B", "modality": "CT", "station_ae": "CT2", "start": "2026-12-08T14:00",
                         "description": "CT Chest"}]),
        "C": create(pacs, "ORD-C", accession_number="ACC-C", patient_id="P-C", patient_name="Öberg^Åsa",
                    patient_sex="F", requested_procedure_id="RP-C", scheduled_procedure_steps=[
                        {"modality": "US", "station_ae": "US1", "start": "2026-12-09T08:15", "description": "US"}]),
        "D": create(pacs, "ORD-D", accession_number="ACC-D", status="discontinued"),
        "E": create(pacs, "ORD-E", accession_number="ACC-E", status="completed"),
    }
    assert orders["D"]["status"] == "discontinued" and orders["E"]["status"] == "completed"
    return orders


# REST


def test_put_creates_then_replaces_keeping_the_study_uid_and_status(pacs):
    """PUT creates (201, steps numbered, a 2.25 UID, scheduled), repeats idempotently (200), keeps UID and status."""
    body = order_body(scheduled_procedure_steps=[
        {"modality": "CT", "station_ae": "CT1", "start": "2026-12-07T10:30", "description": "CT Head"},
        {"modality": "MR", "station_ae": "MR1", "start": "2026-12-07T11:00", "description": "MR Head"}])
    r = put_order(pacs, "ORD-REST", body)
    assert r.status_code == 201, r.text
    created = r.json()
    for k, v in body.items():
        if k != "scheduled_procedure_steps":
            assert created[k] == v, k
    assert created["scheduled_procedure_steps"] == [dict(s, id=str(i + 1))
                                                    for i, s in enumerate(body["scheduled_procedure_steps"])]
    assert created["status"] == "scheduled"
    uid = created["study_instance_uid"]
    assert uid.startswith("2.25.") and pydicom.uid.UID(uid).is_valid
    assert get_order(pacs, "ORD-REST") == created

    # The same PUT again: 200 and the same order (the UID is not assigned anew).
    r = put_order(pacs, "ORD-REST", body)
    assert r.status_code == 200, r.text
    assert r.json() == created

    # A status given is set; a later PUT without one keeps it, and keeps the UID.
    r = put_order(pacs, "ORD-REST", dict(body, status="in_progress"))
    assert r.status_code == 200 and r.json()["status"] == "in_progress", r.text
    r = put_order(pacs, "ORD-REST", dict(body, patient_name="Müller^Hans^Peter"))
    assert r.status_code == 200, r.text
    assert (r.json()["status"], r.json()["study_instance_uid"], r.json()["patient_name"]) == (
        "in_progress", uid, "Müller^Hans^Peter")
    assert get_order(pacs, "ORD-REST") == r.json()


def test_put_takes_a_given_study_uid_and_step_ids(pacs):
    """A given study_instance_uid and step id are kept; steps without an id get their position."""
    given = "1.2.826.0.1.3680043.8.498.4242"
    o = create(pacs, "ORD-GIVEN", study_instance_uid=given, scheduled_procedure_steps=[
        {"id": "SPS-9", "modality": "CT", "station_ae": "CT1", "start": "2026-12-07T10:30", "description": "a"},
        {"modality": "CT", "station_ae": "CT1", "start": "2026-12-07T11:30", "description": "b"}])
    assert o["study_instance_uid"] == given
    assert [s["id"] for s in o["scheduled_procedure_steps"]] == ["SPS-9", "2"]
    assert get_order(pacs, "ORD-GIVEN")["study_instance_uid"] == given


BAD_FIELDS = [
    ("patient_birth_date", {"patient_birth_date": "19701301"}),
    ("patient_birth_date", {"patient_birth_date": "1970-01-01"}),
    ("patient_sex", {"patient_sex": "X"}),
    ("accession_number", {"accession_number": "A" * 17}),
    ("status", {"status": "cancelled"}),
    ("study_instance_uid", {"study_instance_uid": "1.2.abc"}),
    ("scheduled_procedure_steps[0].start",
     {"scheduled_procedure_steps": [{"modality": "CT", "station_ae": "CT1", "start": "2026-12-07 10:30"}]}),
    ("scheduled_procedure_steps[0].start",
     {"scheduled_procedure_steps": [{"modality": "CT", "station_ae": "CT1", "start": "2026-02-30T10:30"}]}),
    ("scheduled_procedure_steps[1].modality",
     {"scheduled_procedure_steps": [{"modality": "CT", "start": "2026-12-07T10:30"},
                                    {"modality": "ct", "start": "2026-12-07T11:30"}]}),
    ("scheduled_procedure_steps[0].station_ae",
     {"scheduled_procedure_steps": [{"modality": "CT", "station_ae": "A" * 17, "start": "2026-12-07T10:30"}]}),
]


@pytest.mark.parametrize("field,change", BAD_FIELDS, ids=[f"{f}={next(iter(c.values()))!s:.20}" for f, c in BAD_FIELDS])
def test_put_refuses_a_bad_field_by_name(pacs, field, change):
    """A bad field is a 400 invalid_order whose message starts with the field's name, and nothing is written."""
    before = create(pacs, "ORD-KEPT")
    for order_id in ("ORD-NEW", "ORD-KEPT"):
        r = put_order(pacs, order_id, order_body(**change))
        assert r.status_code == 400, r.text
        body = r.json()
        assert body["error"] == "invalid_order", body
        assert body["message"].startswith(f"{field}: "), body
    assert requests.get(f"{pacs.url}{API}/orders/ORD-NEW").status_code == 404
    assert get_order(pacs, "ORD-KEPT") == before


def test_list_orders_by_status_date_and_modality(pacs):
    """GET /orders selects by status, day of a step and modality of a step, and pages with limit/offset."""
    step = lambda modality, start: {"modality": modality, "station_ae": "ST1", "start": start, "description": "x"}
    stored = {
        "L1": create(pacs, "L1", scheduled_procedure_steps=[step("CT", "2026-12-07T08:00")]),
        "L2": create(pacs, "L2", scheduled_procedure_steps=[step("MR", "2026-12-07T09:00"),
                                                            step("CT", "2026-12-08T09:00")]),
        "L3": create(pacs, "L3", status="completed", scheduled_procedure_steps=[step("CT", "2026-12-08T10:00")]),
        "L4": create(pacs, "L4", status="discontinued", scheduled_procedure_steps=[step("US", "2026-12-09T10:00")]),
    }

    def ids(**query):
        body = list_orders(pacs, **query)
        for o in body["orders"]:
            assert o == stored[o["order_id"]], o
        return sorted(o["order_id"] for o in body["orders"])

    assert ids() == ["L1", "L2", "L3", "L4"]
    assert ids(status="scheduled") == ["L1", "L2"]
    assert ids(status="completed") == ["L3"]
    assert ids(status="discontinued") == ["L4"]
    assert ids(status="in_progress") == []
    assert ids(date="2026-12-07") == ["L1", "L2"]
    assert ids(date="2026-12-08") == ["L2", "L3"]
    assert ids(date="2026-12-10") == []
    assert ids(modality="CT") == ["L1", "L2", "L3"]
    assert ids(modality="MR") == ["L2"]
    assert ids(date="2026-12-08", modality="CT", status="scheduled") == ["L2"]
    assert ids(date="2026-12-07", modality="CT") == ["L1"]

    first = list_orders(pacs, limit=3)
    second = list_orders(pacs, limit=3, offset=3)
    assert (first["limit"], first["offset"], len(first["orders"])) == (3, 0, 3)
    assert (second["limit"], second["offset"], len(second["orders"])) == (3, 3, 1)
    assert sorted(o["order_id"] for o in first["orders"] + second["orders"]) == ["L1", "L2", "L3", "L4"]


# Modality Worklist C-FIND


def findscu_worklist(pacs, out_dir, *keys, aet="FINDSCU") -> list[Dataset]:
    """dcmtk's findscu -W with `-k` keys; the answers it extracts (-X), read with pydicom."""
    out_dir.mkdir()
    args = ["-W", "-aet", aet, "-aec", pacs.ae_title, "-X", "-od", out_dir]
    for k in keys:
        args += ["-k", k]
    r = run("findscu", *args, "127.0.0.1", pacs.dimse_port)
    assert r.returncode == 0, r.stderr
    assert "error" not in r.stderr.lower(), r.stderr
    return [pydicom.dcmread(f) for f in sorted(out_dir.glob("rsp*.dcm"))]


def findscu_all_keys(step_values=None, **top_values) -> list[str]:
    keys = ["SpecificCharacterSet=ISO_IR 192"]
    keys += [f"{k}={top_values.get(k, '')}" for k in TOP_KEYS]
    keys += [f"ScheduledProcedureStepSequence[0].{k}={(step_values or {}).get(k, '')}" for k in STEP_KEYS]
    return keys


def test_findscu_worklist_by_station_date_range_and_name(worklist, pacs, tmp_path):
    """findscu -W finds A's CT step by station AE and a date range, and by modality and a UTF-8 name wildcard."""
    if require_dcmtk():
        pytest.skip("dcmtk is not installed")
    answers = findscu_worklist(pacs, tmp_path / "station", *findscu_all_keys(
        {"ScheduledStationAETitle": "CT1", "ScheduledProcedureStepStartDate": "20261207-20261208"}))
    assert len(answers) == 1, [str(a) for a in answers]
    check_full_answer(answers[0], worklist["A"], 0)

    # dcmtk's own key syntax: tag numbers and a path into the sequence.
    answers = findscu_worklist(pacs, tmp_path / "modality", "0008,0005=ISO_IR 192", "0010,0010=MÜLL*",
                               "0008,0050", "0020,000D", "(0040,0100)[0].(0008,0060)=CT", "(0040,0100)[0].(0040,0009)")
    assert sorted((a.AccessionNumber, str(a.PatientName), step_of(a).ScheduledProcedureStepID)
                  for a in answers) == [("ACC-A", "Müller^Hans", "1")]
    assert answers[0].StudyInstanceUID == worklist["A"]["study_instance_uid"]
    assert answers[0].SpecificCharacterSet == "ISO_IR 192"


MATCHES = [
    ("station AE", {"ScheduledStationAETitle": "CT1"}, {}, {("ACC-A", "1")}),
    ("modality", {"Modality": "CT"}, {}, {("ACC-A", "1"), ("ACC-B", "SPS-B")}),
    ("station and modality", {"Modality": "CT", "ScheduledStationAETitle": "CT2"}, {}, {("ACC-B", "SPS-B")}),
    ("single date", {"ScheduledProcedureStepStartDate": "20261208"}, {}, {("ACC-A", "2"), ("ACC-B", "SPS-B")}),
    ("date range", {"ScheduledProcedureStepStartDate": "20261207-20261208"}, {},
     {("ACC-A", "1"), ("ACC-A", "2"), ("ACC-B", "SPS-B")}),
    ("open date range", {"ScheduledProcedureStepStartDate": "20261208-"}, {},
     {("ACC-A", "2"), ("ACC-B", "SPS-B"), ("ACC-C", "1")}),
    ("time range", {"ScheduledProcedureStepStartDate": "20261208", "ScheduledProcedureStepStartTime": "0800-1000"}, {},
     {("ACC-A", "2")}),
    ("step id", {"ScheduledProcedureStepID": "SPS-B"}, {}, {("ACC-B", "SPS-B")}),
    ("name wildcard", {}, {"PatientName": "MÜLL*"}, {("ACC-A", "1"), ("ACC-A", "2")}),
    ("name lower case", {}, {"PatientName": "müller^hans"}, {("ACC-A", "1"), ("ACC-A", "2")}),
    ("name without accents", {}, {"PatientName": "MULL*"}, {("ACC-A", "1"), ("ACC-A", "2")}),
    ("name given accents", {}, {"PatientName": "oberg^asa"}, {("ACC-C", "1")}),
    ("name ? wildcard", {}, {"PatientName": "Must?r*"}, {("ACC-B", "SPS-B")}),
    ("patient id", {}, {"PatientID": "P-B"}, {("ACC-B", "SPS-B")}),
    ("accession", {}, {"AccessionNumber": "ACC-C"}, {("ACC-C", "1")}),
    ("requested procedure", {}, {"RequestedProcedureID": "RP-A"}, {("ACC-A", "1"), ("ACC-A", "2")}),
    ("nothing", {"Modality": "NM"}, {}, set()),
]


@pytest.mark.parametrize("step,top,expected", [m[1:] for m in MATCHES], ids=[m[0] for m in MATCHES])
def test_worklist_matching(worklist, pacs, step, top, expected):
    """Worklist C-FIND (pynetdicom) matches each key; discontinued and completed orders never answer."""
    answers = mwl_find(pacs, full_query(step, **top))
    assert items(answers) == expected
    assert len(answers) == len(expected)
    for a in answers:
        letter = a.AccessionNumber[-1]
        check_full_answer(a, worklist[letter], 0 if step_of(a).ScheduledProcedureStepID in ("1", "SPS-B") else 1)


def test_worklist_matches_the_study_uid(worklist, pacs):
    """StudyInstanceUID is a matching key: the order's assigned UID finds that order's steps."""
    answers = mwl_find(pacs, full_query(StudyInstanceUID=worklist["B"]["study_instance_uid"]))
    assert items(answers) == {("ACC-B", "SPS-B")}
    assert answers[0].StudyInstanceUID == worklist["B"]["study_instance_uid"]


def test_worklist_answers_carry_exactly_the_requested_keys(worklist, pacs):
    """An answer holds the requested keys and SpecificCharacterSet (ISO_IR 192), nothing else, even unasked."""
    query = worklist_query({"Modality": "CT", "ScheduledProcedureStepID": ""}, charset=None,
                           AccessionNumber="ACC-A", PatientName="", StudyInstanceUID="")
    [a] = mwl_find(pacs, query)
    assert sorted(e.keyword for e in a) == sorted(["SpecificCharacterSet", "AccessionNumber", "PatientName",
                                                   "StudyInstanceUID", "ScheduledProcedureStepSequence"])
    assert a.SpecificCharacterSet == "ISO_IR 192"
    assert (str(a.PatientName), a.AccessionNumber, a.StudyInstanceUID) == (
        "Müller^Hans", "ACC-A", worklist["A"]["study_instance_uid"])
    s = step_of(a)
    assert sorted(e.keyword for e in s) == ["Modality", "ScheduledProcedureStepID"]
    assert (s.Modality, s.ScheduledProcedureStepID) == ("CT", "1")


def test_a_cancelled_order_leaves_the_worklist(pacs):
    """An order on the worklist is gone from it once discontinued."""
    o = create(pacs, "ORD-CANCEL", accession_number="ACC-CANCEL")
    query = full_query(AccessionNumber="ACC-CANCEL")
    [a] = mwl_find(pacs, query)
    check_full_answer(a, o)
    r = put_order(pacs, "ORD-CANCEL", order_body(accession_number="ACC-CANCEL", status="discontinued"))
    assert r.status_code == 200 and r.json()["status"] == "discontinued", r.text
    assert mwl_find(pacs, query) == []


def test_only_own_station(make_pacs):
    """With worklist.only_own_station, a calling AE sees only the steps scheduled on its own AE title."""
    pacs = make_pacs({"PACS_DIMSE__WORKLIST__ONLY_OWN_STATION": "true"})
    create(pacs, "ORD-OWN", accession_number="ACC-OWN", scheduled_procedure_steps=[
        {"modality": "CT", "station_ae": "CT1", "start": "2026-12-07T10:30", "description": "CT"},
        {"modality": "MR", "station_ae": "MR1", "start": "2026-12-07T11:30", "description": "MR"}])
    create(pacs, "ORD-OWN2", accession_number="ACC-OWN2", scheduled_procedure_steps=[
        {"modality": "CT", "station_ae": "CT1", "start": "2026-12-08T10:30", "description": "CT"}])
    assert items(mwl_find(pacs, full_query(), ae_title="CT1")) == {("ACC-OWN", "1"), ("ACC-OWN2", "1")}
    assert items(mwl_find(pacs, full_query(), ae_title="MR1")) == {("ACC-OWN", "2")}
    assert mwl_find(pacs, full_query(), ae_title="XR9") == []
    # Asking for another station's steps does not get around it.
    answers = mwl_find(pacs, full_query({"ScheduledStationAETitle": "MR1"}), ae_title="CT1")
    assert [(a.AccessionNumber, step_of(a).ScheduledStationAETitle) for a in answers] == []


def test_without_only_own_station_every_station_sees_everything(pacs):
    """By default the calling AE title does not restrict the worklist."""
    create(pacs, "ORD-ALL", accession_number="ACC-ALL", scheduled_procedure_steps=[
        {"modality": "CT", "station_ae": "CT1", "start": "2026-12-07T10:30", "description": "CT"},
        {"modality": "MR", "station_ae": "MR1", "start": "2026-12-07T11:30", "description": "MR"}])
    assert items(mwl_find(pacs, full_query(), ae_title="XR9")) == {("ACC-ALL", "1"), ("ACC-ALL", "2")}


# MPPS


def mpps_create(order, step_index=0, status="IN PROGRESS", station="CT1", study_uid=None, accession=None) -> Dataset:
    """An MPPS N-CREATE data set as a modality sends it for a worklist step of `order`."""
    step = order["scheduled_procedure_steps"][step_index]
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ssa = Dataset()
    ssa.StudyInstanceUID = study_uid or order["study_instance_uid"]
    ssa.ReferencedStudySequence = []
    ssa.AccessionNumber = order["accession_number"] if accession is None else accession
    ssa.RequestedProcedureID = order["requested_procedure_id"]
    ssa.RequestedProcedureDescription = order["requested_procedure_description"]
    ssa.ScheduledProcedureStepID = step["id"]
    ssa.ScheduledProcedureStepDescription = step["description"]
    ssa.ScheduledProtocolCodeSequence = []
    ds.ScheduledStepAttributesSequence = [ssa]
    ds.PatientName = order["patient_name"]
    ds.PatientID = order["patient_id"]
    ds.PatientBirthDate = order["patient_birth_date"]
    ds.PatientSex = order["patient_sex"]
    ds.ReferencedPatientSequence = []
    ds.PerformedProcedureStepID = "PPS-" + step["id"]
    ds.PerformedStationAETitle = station
    ds.PerformedStationName = station
    ds.PerformedLocation = ""
    ds.PerformedProcedureStepStartDate = "20261207"
    ds.PerformedProcedureStepStartTime = "103500"
    ds.PerformedProcedureStepStatus = status
    ds.PerformedProcedureStepDescription = step["description"]
    ds.PerformedProcedureTypeDescription = ""
    ds.ProcedureCodeSequence = []
    ds.PerformedProcedureStepEndDate = ""
    ds.PerformedProcedureStepEndTime = ""
    ds.Modality = step["modality"]
    ds.StudyID = "1"
    ds.PerformedProtocolCodeSequence = []
    ds.PerformedSeriesSequence = []
    return ds


def mpps_set(status, series=()) -> Dataset:
    """An MPPS N-SET data set: the final status, the end, and the performed series [(series UID, [instance UIDs])]."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PerformedProcedureStepStatus = status
    ds.PerformedProcedureStepEndDate = "20261207"
    ds.PerformedProcedureStepEndTime = "104500"
    ds.PerformedSeriesSequence = []
    for series_uid, instances in series:
        item = Dataset()
        item.PerformingPhysicianName = ""
        item.ProtocolName = "Head"
        item.OperatorsName = "Op^Erator"
        item.SeriesInstanceUID = series_uid
        item.SeriesDescription = "Generated series"
        item.RetrieveAETitle = ""
        item.ReferencedImageSequence = []
        for sop in instances:
            ref = Dataset()
            ref.ReferencedSOPClassUID = CTImageStorage
            ref.ReferencedSOPInstanceUID = sop
            item.ReferencedImageSequence.append(ref)
        item.ReferencedNonImageCompositeSOPInstanceSequence = []
        ds.PerformedSeriesSequence.append(item)
    return ds


def n_create(assoc, ds, sop_uid) -> int:
    status, _ = assoc.send_n_create(ds, MPPS, sop_uid)
    assert status is not None and "Status" in status, "no N-CREATE response"
    return status.Status


def n_set(assoc, ds, sop_uid) -> int:
    status, _ = assoc.send_n_set(ds, MPPS, sop_uid)
    assert status is not None and "Status" in status, "no N-SET response"
    return status.Status


def performed(pacs, order_id) -> list[dict]:
    """The order's performed procedure steps, as (sop uid, status, station, performed series)."""
    return [(p["sop_instance_uid"], p["status"], p["station_ae"], p["performed_series"])
            for p in order_studies(pacs, order_id)["performed_procedure_steps"]]


def test_mpps_in_progress_then_completed_moves_the_order(pacs):
    """N-CREATE IN PROGRESS makes the order in_progress; N-SET COMPLETED with its series makes it completed."""
    o = create(pacs, "ORD-MPPS")
    sop = generate_uid()
    series = generate_uid()
    assoc = associate(pacs, MPPS, ae_title="CT1")
    assert n_create(assoc, mpps_create(o), sop) == 0x0000
    assert get_order(pacs, "ORD-MPPS")["status"] == "in_progress"
    assert performed(pacs, "ORD-MPPS") == [(sop, "IN PROGRESS", "CT1", [])]
    # In progress: off the (scheduled) worklist, on it for a query asking for STARTED steps.
    assert mwl_find(pacs, full_query(AccessionNumber="ACC-1")) == []
    started = mwl_find(pacs, full_query({"ScheduledProcedureStepStatus": "STARTED"}, AccessionNumber="ACC-1"))
    assert [step_of(a).ScheduledProcedureStepStatus for a in started] == ["STARTED"]

    assert n_set(assoc, mpps_set("COMPLETED", [(series, [generate_uid(), generate_uid()])]), sop) == 0x0000
    assoc.release()
    assert get_order(pacs, "ORD-MPPS")["status"] == "completed"
    assert performed(pacs, "ORD-MPPS") == [(sop, "COMPLETED", "CT1", [series])]


def test_mpps_discontinued_discontinues_the_order(pacs):
    """N-SET DISCONTINUED makes the order discontinued; nothing changes a finished MPPS (0x0110)."""
    o = create(pacs, "ORD-DISC")
    sop = generate_uid()
    assoc = associate(pacs, MPPS, ae_title="CT1")
    assert n_create(assoc, mpps_create(o), sop) == 0x0000
    assert n_set(assoc, mpps_set("DISCONTINUED"), sop) == 0x0000
    assert get_order(pacs, "ORD-DISC")["status"] == "discontinued"
    assert performed(pacs, "ORD-DISC") == [(sop, "DISCONTINUED", "CT1", [])]
    assert n_set(assoc, mpps_set("COMPLETED", [(generate_uid(), [generate_uid()])]), sop) == 0x0110
    assoc.release()
    assert get_order(pacs, "ORD-DISC")["status"] == "discontinued"
    assert performed(pacs, "ORD-DISC") == [(sop, "DISCONTINUED", "CT1", [])]


def test_mpps_refusals(pacs):
    """N-CREATE not IN PROGRESS 0x0106, a SOP instance again 0x0111; N-SET unknown 0x0112, after COMPLETED 0x0110."""
    o = create(pacs, "ORD-REF")
    assoc = associate(pacs, MPPS, ae_title="CT1")
    refused = generate_uid()
    assert n_create(assoc, mpps_create(o, status="COMPLETED"), refused) == 0x0106
    assert get_order(pacs, "ORD-REF")["status"] == "scheduled"
    assert performed(pacs, "ORD-REF") == []
    assert n_set(assoc, mpps_set("COMPLETED"), refused) == 0x0112  # the refused N-CREATE made nothing

    sop = generate_uid()
    assert n_create(assoc, mpps_create(o), sop) == 0x0000
    assert n_create(assoc, mpps_create(o), sop) == 0x0111
    assert n_set(assoc, mpps_set("COMPLETED"), generate_uid()) == 0x0112
    assert n_set(assoc, mpps_set("COMPLETED", [(generate_uid(), [generate_uid()])]), sop) == 0x0000
    assert n_set(assoc, mpps_set("COMPLETED"), sop) == 0x0110
    assert n_set(assoc, mpps_set("DISCONTINUED"), sop) == 0x0110
    assoc.release()
    assert get_order(pacs, "ORD-REF")["status"] == "completed"
    assert [p[:2] for p in performed(pacs, "ORD-REF")] == [(sop, "COMPLETED")]


def test_mpps_finds_the_order_by_accession_when_the_study_uid_is_not_its(pacs):
    """An N-CREATE whose Study Instance UID is no order's finds the order by its accession number."""
    o = create(pacs, "ORD-BYACC", accession_number="ACC-BYACC")
    sop = generate_uid()
    assoc = associate(pacs, MPPS, ae_title="CT1")
    assert n_create(assoc, mpps_create(o, study_uid=generate_uid()), sop) == 0x0000
    assoc.release()
    assert get_order(pacs, "ORD-BYACC")["status"] == "in_progress"
    assert [p[:2] for p in performed(pacs, "ORD-BYACC")] == [(sop, "IN PROGRESS")]


def test_order_to_worklist_to_mpps_to_linked_study(pacs):
    """The whole flow: order → MWL → MPPS in progress → completed → C-STORE with the worklist's UID → linked."""
    create(pacs, "ORD-FLOW", accession_number="ACC-FLOW", patient_id="P-FLOW")

    # The modality (CT1) reads its worklist.
    query = full_query({"ScheduledStationAETitle": "CT1", "ScheduledProcedureStepStartDate": "20261207"})
    [item] = mwl_find(pacs, query, ae_title="CT1")
    order = get_order(pacs, "ORD-FLOW")
    check_full_answer(item, order)
    study_uid = item.StudyInstanceUID

    # It starts the procedure, takes the images (one series) and completes.
    assoc = associate(pacs, MPPS, CTImageStorage, ae_title="CT1")
    sop = generate_uid()
    assert n_create(assoc, mpps_create(order), sop) == 0x0000
    assert get_order(pacs, "ORD-FLOW")["status"] == "in_progress"
    series = ct_series(n=2, study_uid=study_uid, patient_id=item.PatientID, patient_name=str(item.PatientName),
                       accession="")
    series_uid = str(series[0].SeriesInstanceUID)
    assert n_set(assoc, mpps_set("COMPLETED", [(series_uid, [str(d.SOPInstanceUID) for d in series])]), sop) == 0
    assert get_order(pacs, "ORD-FLOW")["status"] == "completed"
    for ds in series:
        assert assoc.send_c_store(ds).Status == 0x0000
    assoc.release()

    body = order_studies(pacs, "ORD-FLOW")
    assert body["order"]["status"] == "completed"
    assert [(s["study_instance_uid"], s["linked_by"], s["number_of_instances"]) for s in body["studies"]] == [
        (study_uid, "study_instance_uid", 2)]
    assert [(p["sop_instance_uid"], p["status"], p["station_ae"], p["performed_series"])
            for p in body["performed_procedure_steps"]] == [(sop, "COMPLETED", "CT1", [series_uid])]
