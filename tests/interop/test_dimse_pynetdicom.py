"""DIMSE against pynetdicom (and raw PDUs where no library misbehaves on purpose): storage
commitment on the same and on a new association, C-CANCEL of a C-MOVE, Latin-1 C-FIND,
and bad peers (unparsable data set, command/data set UID mismatch, truncated data set,
association aborted or cut mid-transfer): each gets the right status, nothing partial is
kept and the server stays up."""

import socket
import struct
import time

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom import _config as pynetdicom_config
from pynetdicom.sop_class import (
    CTImageStorage,
    StorageCommitmentPushModel,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from dicomgen import ct_series, to_bytes
from dimsetools import (A_ABORT, StoreSCP, associate as raw_associate, dataset_bytes, pdata, require_dcmtk,
                        store_command)
from pacs import free_port

COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"


def associate(pacs, *contexts, ae_title="PYNETDICOM", handlers=None):
    ae = AE(ae_title=ae_title)
    for c in contexts:
        if isinstance(c, tuple):
            ae.add_requested_context(*c)
        else:
            ae.add_requested_context(c)
    assoc = ae.associate("127.0.0.1", pacs.dimse_port, ae_title=pacs.ae_title, evt_handlers=handlers or [])
    assert assoc.is_established
    return assoc


def alive(pacs):
    assoc = associate(pacs, Verification)
    status = assoc.send_c_echo()
    assoc.release()
    return status.Status == 0


def commitment_request(refs):
    ds = Dataset()
    ds.TransactionUID = generate_uid()
    ds.ReferencedSOPSequence = []
    for cls, uid in refs:
        item = Dataset()
        item.ReferencedSOPClassUID = cls
        item.ReferencedSOPInstanceUID = uid
        ds.ReferencedSOPSequence.append(item)
    return ds


def wait_for(predicate, timeout=15):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def check_report(info, request, committed, failed):
    assert info.TransactionUID == request.TransactionUID
    got_ok = {str(i.ReferencedSOPInstanceUID) for i in info.get("ReferencedSOPSequence", [])}
    got_failed = {str(i.ReferencedSOPInstanceUID): int(i.FailureReason) for i in info.get("FailedSOPSequence", [])}
    assert got_ok == committed
    assert got_failed == failed


def test_storage_commitment_on_the_same_association(pacs):
    series = ct_series(n=3)
    store = associate(pacs, CTImageStorage)
    for ds in series:
        assert store.send_c_store(ds).Status == 0
    store.release()

    reports = []

    def on_report(event):
        reports.append((event.event_type, event.event_information))
        return 0x0000, None

    assoc = associate(pacs, StorageCommitmentPushModel, handlers=[(evt.EVT_N_EVENT_REPORT, on_report)])
    missing = generate_uid()
    request = commitment_request([(CTImageStorage, ds.SOPInstanceUID) for ds in series] + [(CTImageStorage, missing)])
    status, _ = assoc.send_n_action(request, 1, StorageCommitmentPushModel, COMMITMENT_INSTANCE)
    assert status.Status == 0
    assert wait_for(lambda: reports), "no N-EVENT-REPORT on the association"
    assoc.release()
    event_type, info = reports[0]
    assert event_type == 2  # some failed
    check_report(info, request, {str(d.SOPInstanceUID) for d in series}, {missing: 0x0112})

    # A wrong SOP class for a stored instance: class/instance conflict; all good: event type 1.
    reports.clear()
    assoc = associate(pacs, StorageCommitmentPushModel, handlers=[(evt.EVT_N_EVENT_REPORT, on_report)])
    request = commitment_request([(CTImageStorage, series[0].SOPInstanceUID)])
    status, _ = assoc.send_n_action(request, 1, StorageCommitmentPushModel, COMMITMENT_INSTANCE)
    assert status.Status == 0 and wait_for(lambda: reports)
    assert reports[0][0] == 1
    reports.clear()
    request = commitment_request([("1.2.840.10008.5.1.4.1.1.4", series[0].SOPInstanceUID)])
    status, _ = assoc.send_n_action(request, 1, StorageCommitmentPushModel, COMMITMENT_INSTANCE)
    assert status.Status == 0 and wait_for(lambda: reports)
    check_report(reports[0][1], request, set(), {str(series[0].SOPInstanceUID): 0x0119})
    # A bad request: no such action.
    status, _ = assoc.send_n_action(request, 7, StorageCommitmentPushModel, COMMITMENT_INSTANCE)
    assert status.Status == 0x0123
    assoc.release()


def test_storage_commitment_detects_a_damaged_object(pacs):
    if pacs.backend.name != "sqlite-fs":
        pytest.skip("damages a file in the filesystem store")
    [ds] = ct_series(n=1)
    store = associate(pacs, CTImageStorage)
    assert store.send_c_store(ds).Status == 0
    store.release()
    path = pacs.objects_dir() / next(iter(pacs.object_files())).relative_to(pacs.objects_dir())
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.chmod(0o644)
    path.write_bytes(bytes(raw))
    reports = []
    assoc = associate(pacs, StorageCommitmentPushModel,
                      handlers=[(evt.EVT_N_EVENT_REPORT, lambda e: (reports.append(e.event_information), (0, None))[1])])
    request = commitment_request([(CTImageStorage, ds.SOPInstanceUID)])
    status, _ = assoc.send_n_action(request, 1, StorageCommitmentPushModel, COMMITMENT_INSTANCE)
    assert status.Status == 0 and wait_for(lambda: reports)
    assoc.release()
    check_report(reports[0], request, set(), {str(ds.SOPInstanceUID): 0x0110})


def commit_then_release(pacs, assoc, series, reports):
    """Ask for the commitment of `series` on `assoc`, release it, and check the report
    that arrives (in `reports`, from the requester's listener) commits them all."""
    request = commitment_request([(CTImageStorage, ds.SOPInstanceUID) for ds in series])
    status, _ = assoc.send_n_action(request, 1, StorageCommitmentPushModel, COMMITMENT_INSTANCE)
    assert status.Status == 0
    assoc.release()
    assert wait_for(lambda: reports), pacs.server_log()[-3000:]
    event_type, info = reports[0]
    assert event_type == 1
    check_report(info, request, {str(d.SOPInstanceUID) for d in series}, {})


def test_storage_commitment_report_on_a_new_association(make_pacs):
    # The requester listens as "COMMITSCU"; the server calls it back after the release.
    port = free_port()
    reports = []
    listener_ae = AE(ae_title="COMMITSCU")
    listener_ae.add_supported_context(StorageCommitmentPushModel, scu_role=True, scp_role=True)
    server = listener_ae.start_server(
        ("127.0.0.1", port), block=False,
        evt_handlers=[(evt.EVT_N_EVENT_REPORT,
                       lambda e: (reports.append((e.event_type, e.event_information)), (0, None))[1])])
    try:
        pacs = make_pacs({"PACS_DIMSE__DESTINATIONS": f'[{{ae="COMMITSCU",host="127.0.0.1",port={port}}}]'})
        series = ct_series(n=2)
        store = associate(pacs, CTImageStorage, ae_title="COMMITSCU")
        for ds in series:
            assert store.send_c_store(ds).Status == 0
        store.release()
        # No N-EVENT-REPORT handler on this association: a report offered on it is refused,
        # and the server calls back; so is one that arrives after the release.
        assoc = associate(pacs, StorageCommitmentPushModel, ae_title="COMMITSCU")
        commit_then_release(pacs, assoc, series, reports)
    finally:
        server.shutdown()


def test_cmove_can_be_cancelled(make_pacs, tmp_path):
    if require_dcmtk():
        pytest.skip("dcmtk is not installed")
    scp = StoreSCP(tmp_path / "received")
    try:
        pacs = make_pacs({"PACS_DIMSE__DESTINATIONS": scp.destination()})
        from dicomweb_client.api import DICOMwebClient
        series = ct_series(n=150, size=16)
        DICOMwebClient(pacs.dicomweb).store_instances(series)
        assoc = associate(pacs, StudyRootQueryRetrieveInformationModelMove)
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = series[0].StudyInstanceUID
        statuses = []
        for status, _ in assoc.send_c_move(query, scp.ae, StudyRootQueryRetrieveInformationModelMove, msg_id=5):
            statuses.append(status)
            if len(statuses) == 3:
                assoc.send_c_cancel(5, query_model=StudyRootQueryRetrieveInformationModelMove)
        assoc.release()
        final = statuses[-1]
        assert final.Status == 0xFE00, [hex(s.Status) for s in statuses[-3:]]
        assert 3 <= final.NumberOfCompletedSuboperations < 150
        assert final.NumberOfRemainingSuboperations == 150 - final.NumberOfCompletedSuboperations
    finally:
        scp.stop()


def test_cfind_with_a_latin1_identifier_and_sequence_keys(pacs):
    from dicomweb_client.api import DICOMwebClient
    a = ct_series(n=1, patient_name="Müller^Jürgen", patient_id="LAT1")
    b = ct_series(n=1, patient_name="Muster^Max", patient_id="LAT2")
    DICOMwebClient(pacs.dicomweb).store_instances(a + b)
    assoc = associate(pacs, StudyRootQueryRetrieveInformationModelFind)
    query = Dataset()
    query.SpecificCharacterSet = "ISO_IR 100"
    query.QueryRetrieveLevel = "STUDY"
    query.PatientName = "Müller*"
    query.PatientID = ""
    query.StudyInstanceUID = ""
    query.ProcedureCodeSequence = []
    answers = [ident for status, ident in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)
               if status.Status == 0xFF00]
    assoc.release()
    assert len(answers) == 1
    assert answers[0].PatientID == "LAT1"
    assert str(answers[0].PatientName) == "Müller^Jürgen"
    assert "ProcedureCodeSequence" in answers[0] and len(answers[0].ProcedureCodeSequence) == 0


@pytest.fixture
def chunked_files():
    """pynetdicom sends a file's data set bytes as they are (no re-encoding)."""
    pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True
    yield
    pynetdicom_config.STORE_SEND_CHUNKED_DATASET = False


def part10(meta_instance: str, body: bytes) -> bytes:
    """A Part-10 file: a meta group naming `meta_instance`, then `body` as the data set."""
    meta = Dataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = meta_instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset(meta)
    import io
    buf = io.BytesIO()
    pydicom.filewriter.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue() + body


def test_bad_data_sets_get_statuses_and_store_nothing(pacs, tmp_path, chunked_files):
    [good] = ct_series(n=1)
    body = dataset_bytes(to_bytes(good))
    cases = {
        # Not DICOM at all after the meta group.
        "garbage": (str(good.SOPInstanceUID), b"\xff\xfe\x00\x01garbage that is not a data set" * 10, 0xC000),
        # The command names another SOP instance than the data set.
        "mismatch": (generate_uid(), body, 0xA900),
        # Cut off in the middle of the pixel data.
        "truncated": (str(good.SOPInstanceUID), body[: len(body) // 2], 0xC000),
    }
    assoc = associate(pacs, (CTImageStorage, ExplicitVRLittleEndian))
    for name, (instance, data, expected) in cases.items():
        path = tmp_path / f"{name}.dcm"
        path.write_bytes(part10(instance, data))
        status = assoc.send_c_store(path)
        assert status.Status == expected, (name, hex(status.Status))
    assoc.release()
    assert pacs.count("instances") == 0
    assert pacs.spool_files() == []
    assert alive(pacs)


@pytest.mark.parametrize("how", ["a-abort", "connection-reset"])
def test_association_cut_mid_transfer_leaves_nothing(pacs, how):
    [ds] = ct_series(n=1, size=256)
    body = dataset_bytes(to_bytes(ds))
    s = raw_associate(pacs.dimse_port, pacs.ae_title, [(CTImageStorage, ExplicitVRLittleEndian)])
    s.sendall(pdata(1, True, True, store_command(str(ds.SOPInstanceUID))))
    for i in range(0, len(body) // 2, 8000):
        s.sendall(pdata(1, False, False, body[i:i + 8000]))
    if how == "a-abort":
        s.sendall(A_ABORT)
    else:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
    assert wait_for(lambda: pacs.spool_files() == [], timeout=5)
    assert pacs.count("instances") == 0
    assert alive(pacs)
    # The same instance sent properly afterwards is stored.
    assoc = associate(pacs, CTImageStorage)
    assert assoc.send_c_store(ds).Status == 0
    assoc.release()
    assert pacs.count("instances") == 1


def test_unsupported_sop_class_is_refused_per_context(pacs):
    # Unified Procedure Step (Push) is not offered: that presentation context is refused
    # (abstract syntax not supported) while the rest of the association works.
    worklist = "1.2.840.10008.5.1.4.34.6.1"
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(worklist)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", pacs.dimse_port, ae_title=pacs.ae_title)
    assert assoc.is_established
    results = {str(cx.abstract_syntax): cx.result for cx in assoc.rejected_contexts + assoc.accepted_contexts}
    assert results[worklist] == 0x03  # abstract syntax not supported
    assert assoc.send_c_echo().Status == 0
    assoc.release()
