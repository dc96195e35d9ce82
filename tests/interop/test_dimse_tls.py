"""DICOM TLS (PS3.15 Annex B) with real peers: dcmtk's echoscu, storescu and findscu with
`+tls` (Debian's dcmtk 3.6.7 has no TLS in getscu and movescu: C-GET and C-MOVE requests go
through pynetdicom with an ssl.SSLContext); C-MOVE to a dcmtk storescp that speaks TLS and
requires our client certificate; mutual TLS and every refusal (a plain association on the
TLS port, TLS on the plain port, no client certificate, an unknown CA, an expired
certificate, a calling AE not allowed), each with the server serving afterwards."""

import ssl
from pathlib import Path

import pydicom
import pytest
import requests
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (CTImageStorage, StudyRootQueryRetrieveInformationModelFind,
                                  StudyRootQueryRetrieveInformationModelGet,
                                  StudyRootQueryRetrieveInformationModelMove, Verification)

from dicomgen import ct_series, to_bytes
from dimsetools import StoreSCP, dataset_bytes, free_port, require_dcmtk, run
from test_ops import metric
from tlstools import Pki

pytestmark = [m for m in [require_dcmtk()] if m]


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return Pki(tmp_path_factory.mktemp("pki"))


def dimse_tls_env(pki, mutual=True, plain=True):
    env = {
        "PACS_DIMSE__TLS__LISTEN": "127.0.0.1:0",
        "PACS_DIMSE__TLS__CERT_FILE": pki.pem("server"),
        "PACS_DIMSE__TLS__KEY_FILE": pki.key("server"),
    }
    if mutual:
        env["PACS_DIMSE__TLS__CLIENT_CA_FILE"] = pki.pem("ca")
    if not plain:
        env["PACS_DIMSE__LISTEN"] = ""
    return env


def tls(pki, client="client"):
    """dcmtk's TLS options: our client certificate (or none) and the CA to trust."""
    identity = ["+tls", pki.key(client), pki.pem(client)] if client else ["+tla"]
    return [*identity, "+cf", pki.pem("ca")]


def context(pki, client="client"):
    """pynetdicom's tls_args: an SSLContext trusting the test CA, with our certificate."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=pki.pem("ca"))
    if client:
        ctx.load_cert_chain(pki.pem(client), pki.key(client))
    return (ctx, "127.0.0.1")


def echo(pacs, pki, client="client", port=None):
    return run("echoscu", *tls(pki, client), "-aec", pacs.ae_title, "127.0.0.1", port or pacs.dimse_tls_port)


def write(folder: Path, datasets) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for ds in datasets:
        (folder / f"{ds.SOPInstanceUID}.dcm").write_bytes(to_bytes(ds))
    return folder


def test_dcmtk_over_tls_only(make_pacs, pki, tmp_path):
    pacs = make_pacs(dimse_tls_env(pki, plain=False))
    assert pacs.dimse_port is None and pacs.dimse_tls_port
    r = echo(pacs, pki)
    assert r.returncode == 0, r.stderr
    study = ct_series(n=4, size=32)
    r = run("storescu", *tls(pki), "-aec", pacs.ae_title, "+sd", "127.0.0.1", pacs.dimse_tls_port,
            write(tmp_path / "in", study))
    assert r.returncode == 0, r.stderr
    assert pacs.count("instances") == 4
    for ds in study:
        assert dataset_bytes(pacs.object_bytes(str(ds.SOPInstanceUID))) == dataset_bytes(to_bytes(ds))
    r = run("findscu", *tls(pki), "-aec", pacs.ae_title, "-S", "-k", "QueryRetrieveLevel=SERIES",
            "-k", f"StudyInstanceUID={study[0].StudyInstanceUID}", "-k", "SeriesInstanceUID",
            "-k", "NumberOfSeriesRelatedInstances", "127.0.0.1", pacs.dimse_tls_port)
    assert r.returncode == 0, r.stderr
    assert str(study[0].SeriesInstanceUID) in r.stderr + r.stdout
    assert "(0020,1209) IS [4 ]" in r.stderr + r.stdout


def test_pynetdicom_get_and_move_over_tls(make_pacs, pki, tmp_path):
    """C-GET back on a TLS association; C-MOVE over TLS to a storescp that speaks TLS and
    requires our client certificate (outgoing TLS)."""
    received = tmp_path / "received"
    scp = StoreSCP(received, ae="TLSSCP", tls=(pki.key("server2"), pki.pem("server2"), pki.pem("ca")))
    port = scp.port
    try:
        dest = (f'[{{ae="TLSSCP",host="127.0.0.1",port={port},tls=true,ca_file="{pki.pem("ca")}",'
                f'cert_file="{pki.pem("client")}",key_file="{pki.key("client")}"}},'
                f'{{ae="ROGUE",host="127.0.0.1",port={port},tls=true,ca_file="{pki.pem("rogue-ca")}"}}]')
        pacs = make_pacs({**dimse_tls_env(pki), "PACS_DIMSE__DESTINATIONS": dest})
        study = ct_series(n=3, size=32)
        assert pacs.stow(study).status_code == 200
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = study[0].StudyInstanceUID

        # C-GET on the TLS association.
        got = {}

        def on_store(event):
            ds = event.dataset
            got[str(ds.SOPInstanceUID)] = ds
            return 0x0000

        ae = AE(ae_title="PYNETDICOM")
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", pacs.dimse_tls_port, ae_title=pacs.ae_title,
                             ext_neg=[build_role(CTImageStorage, scp_role=True)],
                             evt_handlers=[(evt.EVT_C_STORE, on_store)], tls_args=context(pki))
        assert assoc.is_established
        statuses = [s for s, _ in assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet)]
        assoc.release()
        assert statuses[-1].Status == 0x0000
        assert set(got) == {str(ds.SOPInstanceUID) for ds in study}

        # C-MOVE over TLS, to a TLS destination.
        ae = AE(ae_title="PYNETDICOM")
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        assoc = ae.associate("127.0.0.1", pacs.dimse_tls_port, ae_title=pacs.ae_title, tls_args=context(pki))
        assert assoc.is_established
        final = [s for s, _ in assoc.send_c_move(query, "TLSSCP", StudyRootQueryRetrieveInformationModelMove)][-1]
        assert final.Status == 0x0000, final
        assert final.NumberOfCompletedSuboperations == 3
        moved = {str(pydicom.dcmread(f).SOPInstanceUID): f.read_bytes() for f in received.iterdir()}
        assert set(moved) == {str(ds.SOPInstanceUID) for ds in study}
        for ds in study:
            assert dataset_bytes(moved[str(ds.SOPInstanceUID)]) == dataset_bytes(to_bytes(ds))

        # A destination whose certificate chains to no CA we trust: every sub-operation
        # fails, the reason is logged, and the server goes on.
        final = [s for s, _ in assoc.send_c_move(query, "ROGUE", StudyRootQueryRetrieveInformationModelMove)][-1]
        assert final.NumberOfFailedSuboperations == 3 and final.Status == 0xA702
        assoc.release()
        assert "over TLS failed" in pacs.server_log() and "UnknownIssuer" in pacs.server_log()
        assert echo(pacs, pki).returncode == 0
    finally:
        scp.stop()


def test_pynetdicom_store_and_find_over_tls(make_pacs, pki):
    pacs = make_pacs(dimse_tls_env(pki, mutual=False))
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(CTImageStorage)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    # No client certificate: this listener does not ask for one.
    assoc = ae.associate("127.0.0.1", pacs.dimse_tls_port, ae_title=pacs.ae_title,
                         tls_args=context(pki, client=None))
    assert assoc.is_established
    ds = ct_series(n=1, size=16)[0]
    assert assoc.send_c_store(ds).Status == 0x0000
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = ""
    found = [i for s, i in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind) if i]
    assoc.release()
    assert [str(i.StudyInstanceUID) for i in found] == [str(ds.StudyInstanceUID)]


def test_refusals_over_tls(make_pacs, pki):
    pacs = make_pacs({**dimse_tls_env(pki), "PACS_DIMSE__ALLOWED_CALLING_AES": '["MODALITY1", "ECHOSCU"]'})
    refused = [
        ("plain association on the TLS port", run("echoscu", "-aec", pacs.ae_title, "127.0.0.1", pacs.dimse_tls_port)),
        ("TLS on the plain port", echo(pacs, pki, port=pacs.dimse_port)),
        ("no client certificate", echo(pacs, pki, client=None)),
        ("unknown CA", echo(pacs, pki, client="rogue-client")),
        ("expired certificate", echo(pacs, pki, client="expired-client")),
        ("calling AE not allowed", run("echoscu", *tls(pki), "-aet", "INTRUDER", "-aec", pacs.ae_title,
                                       "127.0.0.1", pacs.dimse_tls_port)),
    ]
    for what, r in refused:
        assert r.returncode != 0, what
        if what == "calling AE not allowed":
            assert "calling ae title not recogni" in (r.stderr + r.stdout).lower()
        # The server goes on serving everyone else, on both listeners.
        assert echo(pacs, pki).returncode == 0, what
        assert run("echoscu", "-aec", pacs.ae_title, "127.0.0.1", pacs.dimse_port).returncode == 0, what
    text = requests.get(f"{pacs.url}/metrics").text
    for reason in ["not_tls", "no_client_certificate", "unknown_ca", "expired"]:
        assert metric(text, "pacs_tls_handshakes_refused_total", listener="dimse", reason=reason) == 1, reason
    assert metric(text, "pacs_dimse_associations_total", result="rejected") == len(refused)
    log = pacs.server_log()
    assert "a TLS handshake on the plain DIMSE port" in log


def test_storage_commitment_over_tls_with_a_call_back_over_tls(make_pacs, pki):
    """N-ACTION on a TLS association; the report after the release goes to the requester's
    TLS listener (pynetdicom, requiring our client certificate)."""
    from pynetdicom.sop_class import StorageCommitmentPushModel
    from test_dimse_pynetdicom import commit_then_release
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=pki.pem("ca"))
    server_ctx.load_cert_chain(pki.pem("server2"), pki.key("server2"))
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    port, reports = free_port(), []
    listener = AE(ae_title="COMMITSCU")
    listener.add_supported_context(StorageCommitmentPushModel, scu_role=True, scp_role=True)
    server = listener.start_server(
        ("127.0.0.1", port), block=False, ssl_context=server_ctx,
        evt_handlers=[(evt.EVT_N_EVENT_REPORT,
                       lambda e: (reports.append((e.event_type, e.event_information)), (0, None))[1])])
    try:
        dest = (f'[{{ae="COMMITSCU",host="127.0.0.1",port={port},tls=true,ca_file="{pki.pem("ca")}",'
                f'cert_file="{pki.pem("client")}",key_file="{pki.key("client")}"}}]')
        pacs = make_pacs({**dimse_tls_env(pki), "PACS_DIMSE__DESTINATIONS": dest})
        series = ct_series(n=2, size=16)
        ae = AE(ae_title="COMMITSCU")
        ae.add_requested_context(CTImageStorage)
        ae.add_requested_context(StorageCommitmentPushModel)
        assoc = ae.associate("127.0.0.1", pacs.dimse_tls_port, ae_title=pacs.ae_title, tls_args=context(pki))
        assert assoc.is_established
        for ds in series:
            assert assoc.send_c_store(ds).Status == 0
        commit_then_release(pacs, assoc, series, reports)
    finally:
        server.shutdown()


def test_dicom_tls_certificate_rotation(make_pacs, pki, tmp_path):
    """Replace the DICOM TLS listener's files: new handshakes get the new certificate,
    associations keep working, nothing restarts."""
    import os
    import shutil
    import time
    from tlstools import peer_serial
    live = tmp_path / "certs"
    live.mkdir()
    shutil.copy(pki.pem("server"), live / "live.pem")
    shutil.copy(pki.key("server"), live / "live.key")
    pacs = make_pacs({**dimse_tls_env(pki, mutual=False), "PACS_DIMSE__TLS__CERT_FILE": str(live / "live.pem"),
                      "PACS_DIMSE__TLS__KEY_FILE": str(live / "live.key")})
    assert peer_serial("127.0.0.1", pacs.dimse_tls_port, pki.pem("ca")) == pki.serial("server")
    for suffix in ["pem", "key"]:
        shutil.copy(f"{pki.root}/server2.{suffix}", live / f"next.{suffix}")
        os.replace(live / f"next.{suffix}", live / f"live.{suffix}")
    deadline = time.time() + 10
    while peer_serial("127.0.0.1", pacs.dimse_tls_port, pki.pem("ca")) != pki.serial("server2"):
        assert time.time() < deadline, "the new certificate was not picked up"
        time.sleep(0.2)
    r = echo(pacs, pki, client=None)
    assert r.returncode == 0, r.stderr
    text = requests.get(f"{pacs.url}/metrics").text
    assert metric(text, "pacs_tls_reloads_total", listener="dimse", result="ok") >= 1
