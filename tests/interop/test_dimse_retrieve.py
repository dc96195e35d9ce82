"""C-MOVE and C-GET with dcmtk's movescu/getscu against the real server: instances go to a
storescp started by the test (C-MOVE) or back on the requester's association (C-GET), byte
for byte as stored, with the right sub-operation counts and statuses."""

import shutil

import pydicom
import pytest
from pydicom.data import get_testdata_file

from dicomgen import ct_series, to_bytes
from pathlib import Path

from dimsetools import StoreSCP, dataset_bytes, require_dcmtk, run

CFG = Path(__file__).parent / "dimse" / "storescu.cfg"
pytestmark = [m for m in [require_dcmtk()] if m]


def store(pacs, folder):
    # The profile proposes the compressed syntaxes too, so files travel as they are.
    r = run("storescu", "-aec", pacs.ae_title, "-xf", CFG, "PacsLite", "+sd", "+r", "127.0.0.1",
            pacs.dimse_port, folder)
    assert r.returncode == 0, r.stderr


@pytest.fixture
def scp(tmp_path):
    s = StoreSCP(tmp_path / "received")
    yield s
    s.stop()


def by_sop(files):
    out = {}
    for f in files:
        raw = f.read_bytes()
        out[str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)] = raw
    return out


def test_cmove_to_a_configured_destination(make_pacs, scp, tmp_path):
    pacs = make_pacs({"PACS_DIMSE__DESTINATIONS": scp.destination()})
    folder = tmp_path / "in"
    folder.mkdir()
    study = ct_series(n=5, size=64)
    other = ct_series(n=2, size=32)
    for ds in study + other:
        (folder / f"{ds.SOPInstanceUID}.dcm").write_bytes(to_bytes(ds))
    shutil.copy(get_testdata_file("JPEG2000.dcm"), folder / "j2k.dcm")
    store(pacs, folder)
    study_uid = str(study[0].StudyInstanceUID)

    r = run("movescu", "-d", "-S", "-aec", pacs.ae_title, "-aem", scp.ae, "-k", "QueryRetrieveLevel=STUDY",
            "-k", f"StudyInstanceUID={study_uid}", "127.0.0.1", pacs.dimse_port)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout + r.stderr
    assert "Pending" in out and "Success" in out, out
    assert out.count("Received Move Response") == 4, out  # one pending response per sub-operation but the last
    assert "Remaining Suboperations       : 1" in out, out
    assert "Completed Suboperations       : 5" in out and "Failed Suboperations          : 0" in out, out
    got = by_sop(scp.files())
    assert set(got) == {str(d.SOPInstanceUID) for d in study}
    for ds in study:
        assert dataset_bytes(got[str(ds.SOPInstanceUID)]) == dataset_bytes(to_bytes(ds))
        meta = pydicom.dcmread(scp.folder / next(f.name for f in scp.files()
                                                 if f.read_bytes() == got[str(ds.SOPInstanceUID)]),
                               stop_before_pixels=True).file_meta
        assert meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID

    # A compressed instance, by IMAGE level keys: moved as stored (JPEG 2000), byte for byte.
    j2k = pydicom.dcmread(get_testdata_file("JPEG2000.dcm"))
    for f in scp.files():
        f.unlink()
    r = run("movescu", "-v", "-S", "-aec", pacs.ae_title, "-aem", scp.ae, "-k", "QueryRetrieveLevel=IMAGE",
            "-k", f"StudyInstanceUID={j2k.StudyInstanceUID}", "-k", f"SeriesInstanceUID={j2k.SeriesInstanceUID}",
            "-k", f"SOPInstanceUID={j2k.SOPInstanceUID}", "127.0.0.1", pacs.dimse_port)
    assert r.returncode == 0, r.stdout + r.stderr
    [moved] = scp.files()
    raw = moved.read_bytes()
    assert pydicom.dcmread(moved, stop_before_pixels=True).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.91"
    # (storescu re-encodes the file's data set on the way in; what is stored is what goes out)
    assert dataset_bytes(raw) == dataset_bytes(pacs.object_bytes(str(j2k.SOPInstanceUID)))

    # SERIES level with a UID list (both series of the second study... and the first).
    for f in scp.files():
        f.unlink()
    r = run("movescu", "-S", "-aec", pacs.ae_title, "-aem", scp.ae, "-k", "QueryRetrieveLevel=SERIES",
            "-k", f"StudyInstanceUID={other[0].StudyInstanceUID}",
            "-k", f"SeriesInstanceUID={other[0].SeriesInstanceUID}", "127.0.0.1", pacs.dimse_port)
    assert r.returncode == 0, r.stdout + r.stderr
    assert set(by_sop(scp.files())) == {str(d.SOPInstanceUID) for d in other}

    # PATIENT level in the Patient Root model.
    for f in scp.files():
        f.unlink()
    r = run("movescu", "-P", "-aec", pacs.ae_title, "-aem", scp.ae, "-k", "QueryRetrieveLevel=PATIENT",
            "-k", f"PatientID={study[0].PatientID}", "127.0.0.1", pacs.dimse_port)
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(scp.files()) == 7


def test_cmove_refusals(make_pacs, scp, tmp_path):
    pacs = make_pacs({"PACS_DIMSE__DESTINATIONS": scp.destination()})
    folder = tmp_path / "in"
    folder.mkdir()
    study = ct_series(n=2, size=32)
    for ds in study:
        (folder / f"{ds.SOPInstanceUID}.dcm").write_bytes(to_bytes(ds))
    store(pacs, folder)
    # An AE title that is not configured: 0xA801, nothing sent.
    r = run("movescu", "-v", "-S", "-aec", pacs.ae_title, "-aem", "NOBODY", "-k", "QueryRetrieveLevel=STUDY",
            "-k", f"StudyInstanceUID={study[0].StudyInstanceUID}", "127.0.0.1", pacs.dimse_port)
    out = (r.stdout + r.stderr).lower()
    assert "refused: movedestinationunknown" in out, out
    assert scp.files() == []
    # No match: success with no sub-operations.
    r = run("movescu", "-v", "-S", "-aec", pacs.ae_title, "-aem", scp.ae, "-k", "QueryRetrieveLevel=STUDY",
            "-k", "StudyInstanceUID=1.2.3.4.5.6.7", "127.0.0.1", pacs.dimse_port)
    assert r.returncode == 0 and "Success" in r.stdout + r.stderr, r.stdout + r.stderr
    assert scp.files() == []
    # A destination that does not answer: sub-operations fail, 0xA702.
    dead = make_pacs({"PACS_DIMSE__DESTINATIONS": '[{ae="DEAD",host="127.0.0.1",port=9}]'})
    store(dead, folder)
    r = run("movescu", "-v", "-S", "-aec", dead.ae_title, "-aem", "DEAD", "-k", "QueryRetrieveLevel=STUDY",
            "-k", f"StudyInstanceUID={study[0].StudyInstanceUID}", "127.0.0.1", dead.dimse_port)
    out = (r.stdout + r.stderr).lower()
    assert "0xa702" in out or "outofresourcessuboperations" in out, out


def test_cget_on_the_same_association(pacs, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    study = ct_series(n=4, size=64)
    for ds in study:
        (folder / f"{ds.SOPInstanceUID}.dcm").write_bytes(to_bytes(ds))
    shutil.copy(get_testdata_file("JPEG2000.dcm"), folder / "j2k.dcm")
    store(pacs, folder)
    out_dir = tmp_path / "got"
    out_dir.mkdir()
    r = run("getscu", "-v", "-S", "+B", "-aec", pacs.ae_title, "-od", out_dir, "-k", "QueryRetrieveLevel=STUDY",
            "-k", f"StudyInstanceUID={study[0].StudyInstanceUID}", "127.0.0.1", pacs.dimse_port)
    assert r.returncode == 0, r.stdout + r.stderr
    got = by_sop(out_dir.iterdir())
    assert set(got) == {str(d.SOPInstanceUID) for d in study}
    for ds in study:
        assert dataset_bytes(got[str(ds.SOPInstanceUID)]) == dataset_bytes(to_bytes(ds))

    # getscu proposes uncompressed syntaxes only: the JPEG 2000 instance comes decoded.
    j2k = pydicom.dcmread(get_testdata_file("JPEG2000.dcm"))
    for f in out_dir.iterdir():
        f.unlink()
    r = run("getscu", "-v", "-S", "-aec", pacs.ae_title, "-od", out_dir, "-k", "QueryRetrieveLevel=STUDY",
            "-k", f"StudyInstanceUID={j2k.StudyInstanceUID}", "127.0.0.1", pacs.dimse_port)
    assert r.returncode == 0, r.stdout + r.stderr
    [f] = list(out_dir.iterdir())
    back = pydicom.dcmread(f)
    assert back.file_meta.TransferSyntaxUID in ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")
    assert back.SOPInstanceUID == j2k.SOPInstanceUID
    assert (back.pixel_array == j2k.pixel_array).all()
