"""QIDO-RS with the Python dicomweb-client and raw HTTP: every matching form."""

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from dicomgen import ct_series, sample


def request_attrs(ds):
    item = Dataset()
    item.RequestedProcedureID = "RP7"
    item.ScheduledProcedureStepID = "SPS7"
    ds.RequestAttributesSequence = [item]


@pytest.fixture
def archive(pacs):
    """Four studies with Latin, Cyrillic, CJK and plain names, two modalities in one."""
    a, b, c, d = (generate_uid() for _ in range(4))
    data = {
        "A": ct_series(n=3, patient_name="Müller^José", patient_id="P-A", study_uid=a, study_date="20240115",
                       accession="ACC-A", study_description="Chest CT", seed=1)
        + ct_series(n=2, patient_name="Müller^José", patient_id="P-A", study_uid=a, study_date="20240115",
                    accession="ACC-A", modality="MR", series_number=2, series_description="T1 axial",
                    study_description="Chest CT", seed=2),
        "B": ct_series(n=2, patient_name="Иванов^Иван", patient_id="P-B", study_uid=b, study_date="20231201",
                       accession="ACC-B", seed=3),
        "C": ct_series(n=1, patient_name="山田^太郎=やまだ^たろう", patient_id="P-C", study_uid=c, study_date="20240601",
                       modality="US", accession="ACC-C", seed=4),
        "D": ct_series(n=2, patient_name="Doe^John", patient_id="P-D", study_uid=d, study_date="20240310",
                       accession="ACC-D", extra=request_attrs, seed=5),
    }
    client = DICOMwebClient(pacs.dicomweb)
    for instances in data.values():
        client.store_instances(instances)
    return client, {k: v[0].StudyInstanceUID for k, v in data.items()}, data


def uids(results, tag="0020000D"):
    return sorted(r[tag]["Value"][0] for r in results)


def test_all_studies_and_computed_attributes(pacs, archive):
    client, study, _ = archive
    found = client.search_for_studies()
    assert uids(found) == sorted(study.values())
    a = next(r for r in found if r["0020000D"]["Value"][0] == study["A"])
    assert a["00201206"]["Value"] == [2]              # NumberOfStudyRelatedSeries
    assert a["00201208"]["Value"] == [5]              # NumberOfStudyRelatedInstances
    assert a["00080061"]["Value"] == ["CT", "MR"]     # ModalitiesInStudy
    assert a["00080062"]["Value"] == ["1.2.840.10008.5.1.4.1.1.2"]
    assert a["00100010"]["Value"][0]["Alphabetic"] == "Müller^José"
    assert a["00081190"]["Value"][0].endswith(f"/dicom-web/studies/{study['A']}")
    for key in ["00080020", "00080050", "00100020", "00100030", "00100040", "00200010", "00080056"]:
        assert key in a, key
    ds = pydicom.Dataset.from_json(a)
    assert ds.PatientID == "P-A"


@pytest.mark.parametrize("params,expected", [
    ({"PatientID": "P-B"}, ["B"]),
    ({"00100020": "P-B"}, ["B"]),
    ({"PatientName": "Müller^José"}, ["A"]),
    ({"PatientName": "Иванов^Иван"}, ["B"]),
    ({"PatientName": "山田^太郎=やまだ^たろう"}, ["C"]),
    ({"PatientName": "Mül*"}, ["A"]),
    ({"PatientName": "*ванов*"}, ["B"]),
    ({"PatientName": "D?e^*"}, ["D"]),
    ({"PatientName": "muller^jose"}, ["A"]),
    ({"StudyDate": "20240115"}, ["A"]),
    ({"StudyDate": "20240101-"}, ["A", "C", "D"]),
    ({"StudyDate": "-20231231"}, ["B"]),
    ({"StudyDate": "20240101-20240331"}, ["A", "D"]),
    ({"AccessionNumber": "ACC-C"}, ["C"]),
    ({"AccessionNumber": "ACC-?"}, ["A", "B", "C", "D"]),
    ({"ModalitiesInStudy": "MR"}, ["A"]),
    ({"ModalitiesInStudy": "US"}, ["C"]),
    ({"StudyDescription": "Chest*"}, ["A"]),
    ({"PatientID": "nobody"}, []),
])
def test_study_matching(pacs, archive, params, expected):
    client, study, _ = archive
    found = client.search_for_studies(search_filters=params)
    assert uids(found) == sorted(study[k] for k in expected)


@pytest.mark.parametrize("name,expected", [("jose", "A"), ("JOSÉ müll", "A"), ("иван", "B"), ("山田", "C"),
                                           ("jo", None), ("doe john", "D")])
def test_fuzzy_person_names(pacs, archive, name, expected):
    client, study, _ = archive
    found = client.search_for_studies(search_filters={"PatientName": name}, fuzzymatching=True)
    if expected is None:   # "jo" is a prefix of José and John
        assert uids(found) == sorted([study["A"], study["D"]])
    else:
        assert uids(found) == [study[expected]]


def test_uid_lists_and_percent_encoding(pacs, archive):
    client, study, _ = archive
    for sep in [",", "\\"]:
        found = client.search_for_studies(search_filters={"StudyInstanceUID": sep.join([study["A"], study["C"]])})
        assert uids(found) == sorted([study["A"], study["C"]])
    r = requests.get(f"{pacs.dicomweb}/studies?PatientName=M%C3%BCl%2A&includefield=00081030")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/dicom+json")
    assert [x["00081030"]["Value"][0] for x in r.json()] == ["Chest CT"]
    r = requests.get(f"{pacs.dicomweb}/studies?StudyInstanceUID={study['A']}&StudyInstanceUID={study['B']}")
    assert uids(r.json()) == sorted([study["A"], study["B"]])


def test_limit_offset_are_stable(pacs, archive):
    client, study, _ = archive
    everything = uids(client.search_for_studies())
    pages = [client.search_for_studies(limit=2, offset=o) for o in (0, 2, 4)]
    assert [len(p) for p in pages] == [2, 2, 0]
    assert sorted(uids(pages[0]) + uids(pages[1])) == everything
    assert set(uids(pages[0])).isdisjoint(uids(pages[1]))


def test_broad_filters_page_in_their_index_order(pacs, archive):
    """A StudyDate range pages by date and a name prefix by name (so that a limit stops the
    index walk at any index size), each stable across pages."""
    client, study, _ = archive
    extra = {}
    for name, date in [("Zeta^A", "20240301"), ("Zed^B", "20240101"), ("Zaa^C", "20240201")]:
        uid = generate_uid()
        client.store_instances(ct_series(n=1, patient_name=name, study_uid=uid, study_date=date, seed=9))
        extra[name] = uid

    def paged(params, size=2):
        out, offset = [], 0
        while True:
            page = client.search_for_studies(search_filters=params, limit=size, offset=offset)
            out += [r["0020000D"]["Value"][0] for r in page]
            if len(page) < size:
                return out
            offset += size

    by_date = [extra["Zed^B"], study["A"], extra["Zaa^C"], extra["Zeta^A"], study["D"]]
    assert paged({"StudyDate": "20240101-20240331"}) == by_date
    assert paged({"PatientName": "Z*"}) == [extra["Zaa^C"], extra["Zed^B"], extra["Zeta^A"]]
    # An exact patient ID keeps insertion order, whatever else is asked.
    assert paged({"PatientID": "P-A", "StudyDate": "20240101-"}, 1) == [study["A"]]


def test_series_level(pacs, archive):
    client, study, data = archive
    found = client.search_for_series(study["A"])
    assert sorted(r["00080060"]["Value"][0] for r in found) == ["CT", "MR"]
    mr = next(r for r in found if r["00080060"]["Value"][0] == "MR")
    assert mr["00201209"]["Value"] == [2]
    assert mr["0008103E"]["Value"] == ["T1 axial"]
    assert mr["00200011"]["Value"] == [2]
    assert mr["0020000D"]["Value"] == [study["A"]]
    assert mr["00081190"]["Value"][0].endswith(f"/studies/{study['A']}/series/{mr['0020000E']['Value'][0]}")
    everywhere = client.search_for_series(search_filters={"Modality": "MR"})
    assert [r["0020000E"]["Value"][0] for r in everywhere] == [mr["0020000E"]["Value"][0]]
    by_patient = client.search_for_series(search_filters={"PatientID": "P-B"})
    assert len(by_patient) == 1
    # Matching inside a sequence attribute.
    seq = client.search_for_series(search_filters={"RequestAttributesSequence.RequestedProcedureID": "RP7"})
    assert [r["0020000D"]["Value"][0] for r in seq] == [study["D"]]
    assert client.search_for_series(search_filters={"00400275.00401001": "RP8"}) == []


def test_instance_level(pacs, archive):
    client, study, data = archive
    series_uid = str(data["A"][0].SeriesInstanceUID)
    found = client.search_for_instances(study["A"], series_uid)
    assert [r["00200013"]["Value"][0] for r in found] == [1, 2, 3]
    assert sorted(r["00080018"]["Value"][0] for r in found) == sorted(str(d.SOPInstanceUID) for d in data["A"][:3])
    first = found[0]
    for key in ["00080016", "00280010", "00280011", "0020000E", "0020000D", "00081190"]:
        assert key in first, key
    spacing = client.search_for_instances(study["A"], series_uid, fields=["PixelSpacing"])
    assert spacing[0]["00280030"]["Value"] == [0.5, 0.5]
    assert "7FE00010" not in client.search_for_instances(study["A"], series_uid, fields=["all"])[0]
    in_study = client.search_for_instances(study["A"])
    assert len(in_study) == 5
    one = client.search_for_instances(search_filters={"SOPInstanceUID": str(data["B"][1].SOPInstanceUID)})
    assert len(one) == 1 and one[0]["0020000D"]["Value"] == [study["B"]]
    by_patient = client.search_for_instances(search_filters={"PatientID": "P-A", "Modality": "MR"})
    assert len(by_patient) == 2
    second = client.search_for_instances(search_filters={"InstanceNumber": "2", "PatientID": "P-A"})
    assert sorted(r["00080018"]["Value"][0] for r in second) == sorted(str(d.SOPInstanceUID)
                                                                       for d in (data["A"][1], data["A"][4]))


def test_pydicom_sample_is_searchable(pacs):
    ds = sample("CT_small.dcm")
    client = DICOMwebClient(pacs.dicomweb)
    client.store_instances([ds])
    found = client.search_for_studies(search_filters={"PatientName": str(ds.PatientName)})
    assert uids(found) == [ds.StudyInstanceUID]


def test_unknown_keys_warn_and_bad_values_are_400(pacs, archive):
    client, study, _ = archive
    r = requests.get(f"{pacs.dicomweb}/studies?NoSuchAttribute=1&PatientID=P-A")
    assert r.status_code == 200 and len(r.json()) == 1
    assert "NoSuchAttribute" in r.headers.get("warning", "")
    for bad in ["StudyDate=2024", "StudyInstanceUID=1.2.abc", "limit=x", "fuzzymatching=maybe", "StudyDate=-"]:
        r = requests.get(f"{pacs.dicomweb}/studies?{bad}")
        assert r.status_code == 400, bad
        assert r.json()["message"]
    r = requests.get(f"{pacs.dicomweb}/studies/1.2.abc/series")
    assert r.status_code == 400


def test_accept_negotiation_and_empty_results(pacs, archive):
    for accept in ["application/dicom+json", "application/json", "*/*",
                   "application/dicom+json, application/json", "application/json;q=0.9, */*;q=0.1"]:
        r = requests.get(f"{pacs.dicomweb}/studies", headers={"Accept": accept})
        assert r.status_code == 200, accept
    r = requests.get(f"{pacs.dicomweb}/studies", headers={"Accept": "application/dicom+xml"})
    assert r.status_code == 406
    r = requests.get(f"{pacs.dicomweb}/studies?PatientID=nobody")
    assert r.status_code == 200 and r.json() == []
