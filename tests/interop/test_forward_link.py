"""Store-and-forward over a link that is slow and breaks: a proxy (flakyproxy.FlakyProxy)
between the gateway and its upstream adds latency and resets each connection after about
a megabyte, half of the time mid-transfer and half of the time on the upstream's reply
(the instance arrived, its response is lost). The upstream is a pynetdicom storage SCP
that keeps every C-STORE it receives, duplicates included. Every instance must arrive, as
stored, never more often than the gateway counts attempts, and each extra copy must be
explained by a lost response. The proxy itself is checked too: latency, half-close, cuts,
stop."""

import logging
import socket
import sqlite3
import subprocess
import threading
import time
from collections import defaultdict
from types import SimpleNamespace

import pytest
import requests
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, AllStoragePresentationContexts, evt

from dicomgen import ct_series
from dimsetools import dataset_bytes
from flakyproxy import FlakyProxy
from test_forward import forwarding_env, outbox, wait_for
from test_ops import metric

# 512x512 CT instances are ~525 KB: a connection is cut after 0.6 to 1.8 MB, so each
# association carries one to three instances before it breaks (a cut below one instance's
# size would never let one through, and the outbox would retry forever).
INSTANCES, SIZE, CUT_EVERY, LATENCY_MS = 30, 512, 1_200_000, 40


class CountingSCP:
    """A pynetdicom storage SCP that keeps every C-STORE it receives, duplicates included:
    SOP Instance UID -> (transfer syntax, data set as received) of each arrival. It prefers
    Explicit VR Little Endian (pynetdicom's default order puts Implicit first, and the
    gateway would transcode to it), so what the gateway stores in Explicit comes as stored."""

    def __init__(self, ae_title="ARCHIVE"):
        self.aet = ae_title
        self.arrivals: dict[str, list[tuple[str, bytes]]] = defaultdict(list)
        self._lock = threading.Lock()
        # Associations seen, and the most C-STOREs being handled at once (each takes
        # `delay` seconds, so associations that run together overlap).
        self.associations, self.busy, self.most_busy, self.delay = set(), 0, 0, 0.0
        ae = AE(ae_title=ae_title)
        ae.maximum_associations = 16
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        self._server = ae.start_server(("127.0.0.1", 0), block=False,
                                       evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        self.dicom_port = self._server.server_address[1]

    def _on_store(self, event):
        arrival = (event.context.transfer_syntax, event.request.DataSet.getvalue())
        with self._lock:
            self.arrivals[str(event.request.AffectedSOPInstanceUID)].append(arrival)
            self.associations.add(id(event.assoc))
            self.busy += 1
            self.most_busy = max(self.most_busy, self.busy)
        time.sleep(self.delay)
        with self._lock:
            self.busy -= 1
        return 0x0000

    def stop(self):
        self._server.shutdown()


@pytest.fixture
def archive():
    # Each cut makes pynetdicom log an error with a traceback: hundreds of lines that
    # would bury a failure's own report.
    log = logging.getLogger("pynetdicom")
    level = log.level
    log.setLevel(logging.CRITICAL)
    scp = CountingSCP()
    try:
        yield scp
    finally:
        scp.stop()
        log.setLevel(level)


def job_attempts(pacs, destination="central") -> dict[str, int]:
    """SOP Instance UID -> the attempts the outbox recorded for its job (read from the
    index: the admin API shows attempts only for failed jobs)."""
    q = f"SELECT sop_instance_uid, attempts FROM forward_jobs WHERE destination = '{destination}'"
    url = pacs.env.get("PACS_INDEX__URL")
    if url:
        out = subprocess.run(["psql", url, "-AtF", "|", "-c", q], capture_output=True, text=True, check=True).stdout
        return {uid: int(n) for uid, n in (line.split("|") for line in out.splitlines() if line)}
    con = sqlite3.connect(pacs.dir / "data" / "index.sqlite")
    try:
        return dict(con.execute(q).fetchall())
    finally:
        con.close()


def wait_delivered(pacs, n, proxy, archive, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if outbox(pacs)["delivered"] == n:
            return
        time.sleep(0.2)
    raise AssertionError(f"not all delivered in {timeout} s: {outbox(pacs)}; proxy accepted {proxy.accepted}, "
                         f"cut {proxy.cuts}; {len(archive.arrivals)} instances arrived\n"
                         + pacs.server_log()[-6000:])


def test_forwarding_through_a_link_that_breaks(make_pacs, archive):
    with FlakyProxy("127.0.0.1", archive.dicom_port, latency_ms=LATENCY_MS, cut_every_bytes=CUT_EVERY,
                    lose_reply=0.5, seed=16) as proxy:
        pacs = make_pacs(forwarding_env(SimpleNamespace(aet=archive.aet, dicom_port=proxy.port)))
        series = ct_series(n=INSTANCES, size=SIZE, patient_name="Forward^Flaky")
        for i in range(0, INSTANCES, 10):
            assert pacs.stow(series[i:i + 10]).status_code == 200
        t0 = time.time()
        wait_delivered(pacs, INSTANCES, proxy, archive, timeout=45)
        took = time.time() - t0
    status = outbox(pacs)
    assert status["pending"] == 0 and status["failed"] == 0, status
    assert proxy.cuts > proxy.replies_lost > 0, (proxy.accepted, proxy.cuts, proxy.replies_lost)

    # Every instance arrived, each copy as stored.
    arrivals = dict(archive.arrivals)
    assert set(arrivals) == {str(ds.SOPInstanceUID) for ds in series}
    for ds in series:
        uid = str(ds.SOPInstanceUID)
        stored = dataset_bytes(pacs.object_bytes(uid))
        for ts, copy in arrivals[uid]:
            assert ts == ds.file_meta.TransferSyntaxUID and copy == stored, (uid, ts, len(copy), len(stored))

    # Never more copies than attempts: per job (the outbox's count), and in all (the
    # metrics count each C-STORE sent, by outcome; a copy whose response the cut lost is
    # a "retry").
    attempts = job_attempts(pacs)
    over = {uid: (len(copies), attempts.get(uid)) for uid, copies in arrivals.items()
            if len(copies) > attempts.get(uid, 0)}
    assert not over, over
    text = requests.get(f"{pacs.url}/metrics").text
    sent = {o: metric(text, "pacs_forward_sent_total", destination="central", outcome=o) or 0
            for o in ("delivered", "retry", "failed")}
    copies = sum(map(len, arrivals.values()))
    assert sent["delivered"] == INSTANCES and sent["failed"] == 0, sent
    assert copies <= sum(sent.values()) == sum(attempts.values()), (copies, sent, attempts)
    # Without pipelining, a cut breaks at most the one C-STORE in flight, and nothing else
    # makes the gateway try again; an instance arrives twice only when its response was lost.
    assert sent["retry"] <= proxy.cuts, (sent, proxy.cuts)
    assert copies - INSTANCES == proxy.replies_lost, (copies, proxy.replies_lost)
    print(f"\n{INSTANCES} instances delivered in {took:.1f} s over {proxy.accepted} connections, {proxy.cuts} cut "
          f"({proxy.replies_lost} on a reply); {copies} copies arrived; C-STOREs sent: {sent}")


def test_max_associations_bounds_concurrency(make_pacs, archive):
    """`max_associations = 3`: batches go on up to three associations at once, never more."""
    archive.delay = 0.05
    env = forwarding_env(SimpleNamespace(aet=archive.aet, dicom_port=archive.dicom_port), batch=4,
                         max_associations=3)
    pacs = make_pacs(env)
    series = ct_series(n=36, size=32, patient_name="Forward^Parallel")
    assert pacs.stow(series).status_code == 200
    wait_for(lambda: outbox(pacs)["delivered"] == len(series), timeout=60)
    assert set(archive.arrivals) == {str(ds.SOPInstanceUID) for ds in series}
    assert 2 <= archive.most_busy <= 3, archive.most_busy


# The proxy itself.

def echo_server():
    """A TCP server that echoes, then answers end of stream with b"BYE" and its own."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve(conn):
        with conn:
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
                conn.sendall(b"BYE")
                conn.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def accept():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return listener


def test_the_proxy_delays_relays_half_closes_cuts_and_stops():
    listener = echo_server()
    try:
        with FlakyProxy(*listener.getsockname(), latency_ms=50) as proxy:
            with socket.create_connection((proxy.host, proxy.port)) as s:
                t0 = time.perf_counter()
                s.sendall(b"ping")
                assert s.recv(16) == b"ping"
                assert 0.1 <= time.perf_counter() - t0 < 5  # 50 ms each way (bound: a loaded machine)
                # A stream is not slowed down chunk by chunk: 16 MB echo in well under
                # the 256 chunks x 50 ms a serialized delay would take.
                data, got = b"x" * (16 << 20), bytearray()

                def read_back():
                    while len(got) < len(data) and (chunk := s.recv(1 << 20)):
                        got.extend(chunk)

                reader = threading.Thread(target=read_back)
                t0 = time.perf_counter()
                reader.start()
                s.sendall(data)
                reader.join(10)
                assert len(got) == len(data) and time.perf_counter() - t0 < 10
                s.shutdown(socket.SHUT_WR)  # half-close: the echo's answer still comes back
                rest = b""
                while chunk := s.recv(100):
                    rest += chunk
                assert rest == b"BYE"
            assert (proxy.accepted, proxy.cuts) == (1, 0)

        with FlakyProxy(*listener.getsockname(), cut_every_bytes=100_000, lose_reply=0.5, seed=1) as proxy:
            for _ in range(4):
                with socket.create_connection((proxy.host, proxy.port)) as s:
                    with pytest.raises(ConnectionResetError):
                        for _ in range(100):  # 1 MB at most, more than 150 % of the budget
                            s.sendall(b"y" * 10_000)
                            time.sleep(0.002)
            deadline = time.time() + 5
            while proxy.cuts < 4 and time.time() < deadline:
                time.sleep(0.01)
            assert (proxy.accepted, proxy.cuts) == (4, 4) and 0 < proxy.replies_lost < 4, proxy.replies_lost
            left_open = socket.create_connection((proxy.host, proxy.port))
            left_open.sendall(b"a")
            assert left_open.recv(1) == b"a"
        # stop() reset the connection still open and joined its thread.
        with left_open, pytest.raises(ConnectionResetError):
            left_open.recv(1)
        assert not [t for t in threading.enumerate() if t.name.startswith("flakyproxy")]
    finally:
        listener.close()
