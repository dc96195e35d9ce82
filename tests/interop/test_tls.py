"""HTTPS with real clients: curl (HTTP/2 negotiated by ALPN, and HTTP/1.1), requests and the
Python dicomweb-client, all trusting a test CA; mutual TLS; every refusal (plain HTTP on
the TLS port, no client certificate, a client certificate from an unknown CA or expired),
each with the server serving afterwards; certificate rotation while clients keep asking,
a bad file at reload, SIGHUP; bad files at start."""

import json
import re
import os
import shutil
import signal
import subprocess
import threading
import time

import pytest
import requests
from dicomweb_client.api import DICOMwebClient

from dicomgen import ct_series
from test_ops import metric
from tlstools import Pki, peer_serial


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    return Pki(tmp_path_factory.mktemp("pki"))


def https_env(pki, cert="server", client_ca=False, folder=None):
    """The settings of an HTTPS listener; with `folder`, the certificate files are copies
    there (live.pem, live.key) that a test may replace."""
    cert_file, key_file = pki.pair(cert)
    if folder is not None:
        folder.mkdir(exist_ok=True)
        shutil.copy(cert_file, folder / "live.pem")
        shutil.copy(key_file, folder / "live.key")
        cert_file, key_file = str(folder / "live.pem"), str(folder / "live.key")
    env = {"PACS_HTTP__TLS__CERT_FILE": cert_file, "PACS_HTTP__TLS__KEY_FILE": key_file}
    if client_ca:
        env["PACS_HTTP__TLS__CLIENT_CA_FILE"] = pki.pem("ca")
    return env


def curl(*args):
    return subprocess.run(["curl", "-sS", *args], capture_output=True, text=True, timeout=60)


def test_https_with_http2_curl_and_dicomweb_client(make_pacs, pki):
    pacs = make_pacs(https_env(pki))
    assert pacs.url.startswith("https://127.0.0.1:")
    study = ct_series(n=3, size=32)
    r = pacs.stow(study, verify=pki.pem("ca"))
    assert r.status_code == 200, r.text
    # STOW's RetrieveURLs: the scheme of the listener.
    for item in r.json()["00081199"]["Value"]:
        assert item["00081190"]["Value"][0].startswith(pacs.url + "/dicom-web/studies/")

    # curl negotiates HTTP/2 by ALPN; the URLs it is given are https over HTTP/2 too
    # (the host comes from :authority, not from a Host header).
    r = curl("--http2", "--cacert", pki.pem("ca"), "-w", "\n%{http_version}", f"{pacs.dicomweb}/studies")
    assert r.returncode == 0, r.stderr
    body, version = r.stdout.rsplit("\n", 1)
    assert version == "2", r.stdout
    [found] = json.loads(body)
    assert found["00081190"]["Value"][0] == f"{pacs.dicomweb}/studies/{study[0].StudyInstanceUID}"
    r = curl("--http1.1", "--cacert", pki.pem("ca"), "-o", "/dev/null", "-w", "%{http_version}",
             f"{pacs.dicomweb}/studies")
    assert r.stdout == "1.1", r.stdout + r.stderr
    # Without the CA, curl refuses our certificate: it is verified, not waved through.
    r = curl("-o", "/dev/null", f"{pacs.dicomweb}/studies")
    assert r.returncode != 0

    # The dicomweb-client over HTTPS.
    session = requests.Session()
    session.trust_env = False  # else REQUESTS_CA_BUNDLE, where set, wins over session.verify
    session.verify = pki.pem("ca")
    client = DICOMwebClient(url=pacs.dicomweb, session=session)
    [found] = client.search_for_studies()
    assert found["0020000D"]["Value"][0] == study[0].StudyInstanceUID
    got = client.retrieve_instance(study[0].StudyInstanceUID, study[0].SeriesInstanceUID,
                                   study[0].SOPInstanceUID)
    assert got.SOPInstanceUID == study[0].SOPInstanceUID
    assert got.pixel_array.shape == (32, 32)
    metadata = client.retrieve_series_metadata(study[0].StudyInstanceUID, study[0].SeriesInstanceUID)
    # (dicomweb-client sends "Host: 127.0.0.1", without the port; the scheme is the listener's)
    assert metadata[0]["7FE00010"]["BulkDataURI"].startswith("https://127.0.0.1/dicom-web/studies/")

    # Plain HTTP on the TLS port: refused, counted; the server goes on.
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"{pacs.url.replace('https', 'http')}/healthz", timeout=10)
    text = requests.get(f"{pacs.url}/metrics", verify=pki.pem("ca")).text
    assert metric(text, "pacs_tls_handshakes_refused_total", listener="http", reason="not_tls") >= 1
    assert requests.get(f"{pacs.url}/healthz", verify=pki.pem("ca")).status_code == 200


def test_mutual_tls_refusals(make_pacs, pki):
    pacs = make_pacs(https_env(pki, client_ca=True))
    ca = pki.pem("ca")
    ok = requests.get(f"{pacs.dicomweb}/studies", verify=ca, cert=pki.pair("client"))
    assert ok.status_code == 200, ok.text
    for client in [None, "rogue-client", "expired-client"]:
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(f"{pacs.dicomweb}/studies", verify=ca, cert=pki.pair(client) if client else None,
                         timeout=10)
        # Everyone else is still served.
        assert requests.get(f"{pacs.url}/healthz", verify=ca, cert=pki.pair("client")).status_code == 200
    r = curl("--cacert", ca, "--cert", pki.pem("client"), "--key", pki.key("client"), "-o", "/dev/null",
             "-w", "%{http_code}", f"{pacs.dicomweb}/studies")
    assert r.stdout == "200", r.stdout + r.stderr
    text = requests.get(f"{pacs.url}/metrics", verify=ca, cert=pki.pair("client")).text
    for reason in ["no_client_certificate", "unknown_ca", "expired"]:
        assert metric(text, "pacs_tls_handshakes_refused_total", listener="http", reason=reason) == 1, reason
    log = pacs.server_log()
    assert "TLS handshake refused" in log and "127.0.0.1:" in log and "expired" in log


def test_certificate_rotation_without_a_restart(make_pacs, pki, tmp_path):
    live = tmp_path / "certs"
    pacs = make_pacs(https_env(pki, folder=live))
    ca, port = pki.pem("ca"), int(pacs.url.rsplit(":", 1)[1])
    assert peer_serial("127.0.0.1", port, ca) == pki.serial("server")

    # Clients keep asking meanwhile: new connections, and one kept alive across the change.
    kept = requests.Session()
    kept.trust_env = False  # else REQUESTS_CA_BUNDLE, where set, wins over session.verify
    kept.verify = ca
    assert kept.get(f"{pacs.dicomweb}/studies").status_code == 200
    failures, done = [], threading.Event()

    def ask():
        while not done.is_set():
            try:
                r = requests.get(f"{pacs.dicomweb}/studies", verify=ca, headers={"Connection": "close"},
                                 timeout=10)
                if r.status_code != 200:
                    failures.append(r.status_code)
            except requests.RequestException as e:
                failures.append(repr(e))

    worker = threading.Thread(target=ask)
    worker.start()
    try:
        time.sleep(0.5)
        # Replace both files the way deployment tools do: write aside, rename over.
        for suffix in ["pem", "key"]:
            shutil.copy(f"{pki.root}/server2.{suffix}", live / f"next.{suffix}")
            os.replace(live / f"next.{suffix}", live / f"live.{suffix}")
        deadline = time.time() + 10
        while peer_serial("127.0.0.1", port, ca) != pki.serial("server2"):
            assert time.time() < deadline, "the new certificate was not picked up"
            time.sleep(0.2)
        time.sleep(0.5)
    finally:
        done.set()
        worker.join()
    assert failures == []
    assert kept.get(f"{pacs.dicomweb}/studies").status_code == 200

    # A bad file at reload: logged, counted, the certificate in use stays.
    (live / "live.pem").write_text("not a certificate\n")
    deadline = time.time() + 10
    while "TLS certificate not reloaded" not in pacs.server_log():
        assert time.time() < deadline, pacs.server_log()
        time.sleep(0.2)
    assert peer_serial("127.0.0.1", port, ca) == pki.serial("server2")
    text = requests.get(f"{pacs.url}/metrics", verify=ca).text
    assert metric(text, "pacs_tls_reloads_total", listener="http", result="failed") >= 1
    assert metric(text, "pacs_tls_reloads_total", listener="http", result="ok") >= 1

    # SIGHUP re-reads at once (and does not stop the server).
    shutil.copy(pki.pem("server"), live / "live.pem")
    shutil.copy(pki.key("server"), live / "live.key")
    pacs.proc.send_signal(signal.SIGHUP)
    deadline = time.time() + 10
    while peer_serial("127.0.0.1", port, ca) != pki.serial("server"):
        assert time.time() < deadline
        time.sleep(0.1)
    assert pacs.proc.poll() is None
    assert requests.get(f"{pacs.url}/healthz", verify=ca).status_code == 200


@pytest.mark.parametrize("problem", ["missing", "garbage", "wrong-key", "missing-ca"])
def test_bad_files_at_start_are_named(make_pacs, pki, tmp_path, problem):
    env = https_env(pki)
    named = env["PACS_HTTP__TLS__CERT_FILE"]
    if problem == "missing":
        named = env["PACS_HTTP__TLS__CERT_FILE"] = str(tmp_path / "absent.pem")
    elif problem == "garbage":
        (tmp_path / "garbage.pem").write_text("-----BEGIN CERTIFICATE-----\nnot base64\n")
        named = env["PACS_HTTP__TLS__CERT_FILE"] = str(tmp_path / "garbage.pem")
    elif problem == "wrong-key":
        named = env["PACS_HTTP__TLS__KEY_FILE"] = pki.key("client")
    else:
        named = env["PACS_HTTP__TLS__CLIENT_CA_FILE"] = str(tmp_path / "absent-ca.pem")
    pacs = make_pacs(env, start=False)
    with pytest.raises(RuntimeError):
        pacs.start()
    assert pacs.proc.wait(10) != 0
    assert named in pacs.server_log(), pacs.server_log()


def test_protocol_versions_and_cipher_suites(make_pacs, pki):
    """openssl s_client: TLS 1.3 and 1.2 with a documented suite; TLS 1.1 refused."""
    from pathlib import Path
    pacs = make_pacs(https_env(pki))
    documented = (Path(__file__).resolve().parents[2] / "conformance" / "tls.md").read_text()
    host = pacs.url.removeprefix("https://")

    def s_client(*args):
        return subprocess.run(["openssl", "s_client", "-connect", host, "-CAfile", pki.pem("ca"),
                               "-verify_return_error", *args], input="", capture_output=True, text=True, timeout=30)

    r = s_client("-tls1_3")
    assert r.returncode == 0 and "TLSv1.3" in r.stdout, r.stdout + r.stderr
    r = s_client("-tls1_2")
    assert r.returncode == 0 and "TLSv1.2" in r.stdout, r.stdout + r.stderr
    # OpenSSL names the suite ECDHE-RSA-AES256-GCM-SHA384; IANA (and the statement) TLS_ECDHE_RSA_WITH_….
    cipher = re.search(r"Cipher is (\S+)", r.stdout).group(1)
    iana = "TLS_" + cipher.replace("-AES", "_WITH_AES").replace("-CHACHA", "_WITH_CHACHA").replace("-", "_")
    assert iana.replace("AES256", "AES_256").replace("AES128", "AES_128") in documented, cipher
    r = s_client("-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0")
    assert r.returncode != 0
    text = requests.get(f"{pacs.url}/metrics", verify=pki.pem("ca")).text
    assert metric(text, "pacs_tls_handshakes_refused_total", listener="http", reason="incompatible") == 1
