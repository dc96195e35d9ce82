"""DIMSE with dcmtk against the real server: C-ECHO, C-STORE of a folder of mixed and
compressed files, parallel associations, AE title checks, and refusals."""

import io
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pydicom
import requests
from pydicom.data import get_testdata_file

from dicomgen import ct_series, to_bytes
from dimsetools import (CT_IMAGE_STORAGE, EXPLICIT_LE, RELEASE_RQ, associate, dataset_bytes, dcmtk, free_port,
                        pdata, recv_exact, require_dcmtk, response_status, run, send_fragments, store_command)

CFG = Path(__file__).parent / "dimse" / "storescu.cfg"
SAMPLES = ["CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "SC_rgb_rle_2frame.dcm", "rtdose.dcm", "test-SR.dcm",
           "SC_rgb_jpeg_dcmtk.dcm"]

pytestmark = [m for m in [require_dcmtk()] if m]


def test_echo_and_called_ae_check(pacs):
    r = run("echoscu", "-aec", pacs.ae_title, "127.0.0.1", pacs.dimse_port)
    assert r.returncode == 0, r.stderr
    r = run("echoscu", "-aec", "NOT_US", "127.0.0.1", pacs.dimse_port)
    assert r.returncode != 0 and "called ae title not recogni" in (r.stderr + r.stdout).lower()


def test_calling_ae_allowlist(make_pacs):
    pacs = make_pacs({"PACS_DIMSE__ALLOWED_CALLING_AES": '["MODALITY1"]'})
    r = run("echoscu", "-aet", "INTRUDER", "-aec", pacs.ae_title, "127.0.0.1", pacs.dimse_port)
    assert r.returncode != 0 and "calling ae title not recogni" in (r.stderr + r.stdout).lower()
    r = run("echoscu", "-aet", "MODALITY1", "-aec", pacs.ae_title, "127.0.0.1", pacs.dimse_port)
    assert r.returncode == 0, r.stderr


def received_by_storescp(folder, out):
    """What storescu actually sends for these files: dcmtk's own storescp, bit-preserving."""
    port = free_port()
    out.mkdir()
    scp = subprocess.Popen([dcmtk("storescp"), "-B", "-od", str(out), "-aet", "STORESCP", "+xa", str(port)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import time
        time.sleep(0.5)
        r = run("storescu", "-aec", "STORESCP", "-xf", CFG, "PacsLite", "+sd", "+r", "127.0.0.1", port, folder)
        assert r.returncode == 0, r.stderr
    finally:
        scp.terminate()
        scp.wait(10)
    files = {}
    for f in out.iterdir():
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        files[str(ds.SOPInstanceUID)] = f.read_bytes()
    return files


def test_storescu_folder_of_mixed_files(pacs, tmp_path):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    for i, name in enumerate(SAMPLES):
        shutil.copy(get_testdata_file(name), folder / ("sub" if i % 2 else "") / name)
    r = run("storescu", "-v", "-aec", pacs.ae_title, "-xf", CFG, "PacsLite", "+sd", "+r",
            "127.0.0.1", pacs.dimse_port, folder)
    assert r.returncode == 0, r.stderr
    sent = received_by_storescp(folder, tmp_path / "storescp")
    assert pacs.count("instances") == len(SAMPLES), pacs.server_log()[-3000:]
    stored_syntaxes = set()
    for name in SAMPLES:
        ds = pydicom.dcmread(get_testdata_file(name), stop_before_pixels=True)
        # Visible to QIDO-RS at once, and WADO-RS returns the data set byte for byte.
        found = requests.get(f"{pacs.dicomweb}/instances?SOPInstanceUID={ds.SOPInstanceUID}").json()
        assert len(found) == 1, name
        url = found[0]["00081190"]["Value"][0]
        got = requests.get(url, headers={"Accept": "application/dicom; transfer-syntax=*"}).content
        assert dataset_bytes(got) == dataset_bytes(sent[str(ds.SOPInstanceUID)]), name
        meta = pydicom.dcmread(io.BytesIO(got), stop_before_pixels=True).file_meta
        reference = pydicom.dcmread(io.BytesIO(sent[str(ds.SOPInstanceUID)]), stop_before_pixels=True).file_meta
        assert meta.TransferSyntaxUID == reference.TransferSyntaxUID, name
        assert meta.SourceApplicationEntityTitle == "STORESCU"
        stored_syntaxes.add(str(meta.TransferSyntaxUID))
    # The compressed files travelled and were stored compressed (JPEG 2000, RLE, JPEG).
    assert {"1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.50"} <= stored_syntaxes


def test_large_cstore_streams_with_bounded_memory(pacs, tmp_path):
    """A 128 MiB image by storescu: received into the spool as it arrives (at most 1 MiB of it
    in memory), stored byte for byte (on S3 as a multipart upload), the server's peak memory
    moving far less than the object's size. The study UID is kept short for s3s-fs, the S3 stand-in, which names a
    multipart upload's metadata file after the base64 of the key and cannot create it for
    keys over ~110 bytes (ENAMETOOLONG, answered 500); real S3 takes keys of 1 024 bytes."""
    ds = ct_series(n=1, size=8)[0]
    ds.StudyInstanceUID = f"1.2.826.0.1.3680043.8.498.{os.getpid()}"
    ds.Rows = ds.Columns = 8192
    ds.PixelData = bytes(range(256)) * (8192 * 8192 * 2 // 256)
    path = tmp_path / "large.dcm"
    path.write_bytes(to_bytes(ds))
    before = pacs.peak_rss_mb()
    r = run("storescu", "-v", "-aec", pacs.ae_title, "127.0.0.1", pacs.dimse_port, path)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-2000:], pacs.server_log()[-3000:])
    # The object is 128 MiB; whole-object buffering would raise the peak by more than that.
    # On the filesystem the spool holds at most 1 MiB; to S3 the multipart upload keeps
    # (concurrency + 1) parts of 8 MiB and the HTTP client's copies in flight.
    bound = 96 if pacs.env.get("PACS_STORAGE__BACKEND") == "s3" else 64
    assert pacs.peak_rss_mb() - before < bound, (before, pacs.peak_rss_mb(), bound)
    found = requests.get(f"{pacs.dicomweb}/instances?SOPInstanceUID={ds.SOPInstanceUID}").json()
    url = found[0]["00081190"]["Value"][0]
    got = requests.get(url, headers={"Accept": "application/dicom; transfer-syntax=*"}).content
    assert dataset_bytes(got) == dataset_bytes(path.read_bytes())


def test_parallel_associations(pacs, tmp_path):
    folders = []
    for k in range(4):
        d = tmp_path / f"batch{k}"
        d.mkdir()
        for ds in ct_series(n=10, size=32, seed=k):
            (d / f"{ds.SOPInstanceUID}.dcm").write_bytes(to_bytes(ds))
        folders.append(d)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda d: run("storescu", "-aec", pacs.ae_title, "+sd", "127.0.0.1",
                                              pacs.dimse_port, d), folders))
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    assert pacs.count("instances") == 40


def test_refusals_get_statuses_and_store_nothing(pacs, tmp_path):
    # An image SOP class without pixel data: 0xA900; the association carries on.
    bad = ct_series(n=1)[0]
    del bad.PixelData
    good = ct_series(n=1)[0]
    (tmp_path / "bad.dcm").write_bytes(to_bytes(bad))
    (tmp_path / "good.dcm").write_bytes(to_bytes(good))
    r = run("storescu", "-v", "-nh", "-aec", pacs.ae_title, "127.0.0.1", pacs.dimse_port,
            tmp_path / "bad.dcm", tmp_path / "good.dcm")
    out = r.stdout + r.stderr
    assert "DataSetDoesNotMatchSOPClass" in out, out
    assert pacs.count("instances") == 1
    # The same SOP instance with other bytes: refused, original kept.
    good.PatientName = "Changed^Name"
    (tmp_path / "changed.dcm").write_bytes(to_bytes(good))
    r = run("storescu", "-d", "-aec", pacs.ae_title, "127.0.0.1", pacs.dimse_port, tmp_path / "changed.dcm")
    out = r.stdout + r.stderr
    assert "DIMSE Status                  : 0xc111" in out, out[-3000:]  # dcmtk's -v says only CannotUnderstand
    assert pacs.count("instances") == 1
    # Same bytes again: success.
    r = run("storescu", "-v", "-aec", pacs.ae_title, "127.0.0.1", pacs.dimse_port, tmp_path / "good.dcm")
    assert r.returncode == 0 and "Success" in r.stdout + r.stderr
    assert pacs.spool_files() == []


def findscu(pacs, out, *keys, model="-S"):
    out.mkdir(exist_ok=True)
    for f in out.iterdir():
        f.unlink()
    args = ["findscu", model, "-X", "-od", out, "-aec", pacs.ae_title]  # run() resolves dcmtk
    for k in keys:
        args += ["-k", k]
    r = run(*args, "127.0.0.1", pacs.dimse_port)
    assert r.returncode == 0, r.stderr
    return [pydicom.dcmread(f) for f in sorted(out.iterdir())]


def test_cfind_on_the_query_model(pacs, tmp_path):
    from dicomweb_client.api import DICOMwebClient
    client = DICOMwebClient(pacs.dicomweb)
    a = ct_series(n=3, patient_name="Müller^José", patient_id="P-A", study_date="20240115", accession="ACC-A")
    b = ct_series(n=2, patient_name="Иванов^Иван", patient_id="P-B", study_date="20231201", accession="ACC-B",
                  modality="MR")
    client.store_instances(a + b)
    out = tmp_path / "rsp"
    studies = findscu(pacs, out, "QueryRetrieveLevel=STUDY", "PatientName", "StudyInstanceUID", "StudyDate",
                      "NumberOfStudyRelatedInstances", "ModalitiesInStudy")
    assert sorted(str(d.PatientName) for d in studies) == sorted(["Müller^José", "Иванов^Иван"])
    assert {str(d.StudyInstanceUID): int(d.NumberOfStudyRelatedInstances) for d in studies} == {
        str(a[0].StudyInstanceUID): 3, str(b[0].StudyInstanceUID): 2}
    assert all(d.SpecificCharacterSet == "ISO_IR 192" for d in studies)
    one = findscu(pacs, out, "QueryRetrieveLevel=STUDY", "SpecificCharacterSet=ISO_IR 192", "PatientName=Mül*",
                  "StudyInstanceUID")
    assert [str(d.StudyInstanceUID) for d in one] == [str(a[0].StudyInstanceUID)]
    ranged = findscu(pacs, out, "QueryRetrieveLevel=STUDY", "StudyDate=20240101-", "StudyInstanceUID")
    assert [str(d.StudyInstanceUID) for d in ranged] == [str(a[0].StudyInstanceUID)]
    mr = findscu(pacs, out, "QueryRetrieveLevel=STUDY", "ModalitiesInStudy=MR", "StudyInstanceUID")
    assert [str(d.StudyInstanceUID) for d in mr] == [str(b[0].StudyInstanceUID)]
    series = findscu(pacs, out, "QueryRetrieveLevel=SERIES", f"StudyInstanceUID={a[0].StudyInstanceUID}",
                     "SeriesInstanceUID", "Modality", "NumberOfSeriesRelatedInstances")
    assert [(d.Modality, int(d.NumberOfSeriesRelatedInstances)) for d in series] == [("CT", 3)]
    images = findscu(pacs, out, "QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={a[0].StudyInstanceUID}",
                     f"SeriesInstanceUID={a[0].SeriesInstanceUID}", "SOPInstanceUID", "InstanceNumber")
    assert sorted(int(d.InstanceNumber) for d in images) == [1, 2, 3]
    patients = findscu(pacs, out, "QueryRetrieveLevel=PATIENT", "PatientID", "PatientName", model="-P")
    assert sorted(str(d.PatientID) for d in patients) == ["P-A", "P-B"]
    uid_list = findscu(pacs, out, "QueryRetrieveLevel=STUDY",
                       f"StudyInstanceUID={a[0].StudyInstanceUID}\\{b[0].StudyInstanceUID}")
    assert len(uid_list) == 2


def test_c_stores_sent_before_their_responses_are_answered_before_the_release(pacs):
    """conformance/dimse.md: each C-STORE is stored and answered on a thread of its own while
    the association reads on. A peer that sends three C-STOREs and its A-RELEASE-RQ without
    waiting gets the three responses (all stored) before the A-RELEASE-RP."""
    series = ct_series(3)
    s = associate(pacs.dimse_port, pacs.ae_title, [(CT_IMAGE_STORAGE, EXPLICIT_LE)])
    for n, ds in enumerate(series, 1):
        s.sendall(pdata(1, True, True, store_command(ds.SOPInstanceUID, message_id=n)))
        send_fragments(s, 1, False, dataset_bytes(to_bytes(ds)))
    s.sendall(RELEASE_RQ)
    assert [response_status(s) for _ in series] == [0, 0, 0]
    assert recv_exact(s, 1) == b"\x06", "the A-RELEASE-RP follows the responses"
    s.close()
    assert pacs.count("instances") == 3
