"""Real DICOM peers on loopback for the network tests (registered from conftest.py).

Session-scoped: one Orthanc (with DICOMweb) and one DCMTK dcmqrscp, each on free ports,
seeded from the real corpora, stopped after the session. Nothing heavy is imported at
module level: other areas' tests check that ``import dicomxr`` stays light in-process.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

MOVE_AE = "DXMOVE"


@dataclass
class Peer:
    """A seeded server and what it holds."""

    server: object
    move_port: int
    ct_dir: Path
    mr_files: list[Path]
    ts_files: list[Path]

    @property
    def host(self) -> str:
        return self.server.host  # type: ignore[attr-defined]

    @property
    def port(self) -> int:
        return self.server.port  # type: ignore[attr-defined]

    @property
    def ae(self) -> str:
        return self.server.ae_title  # type: ignore[attr-defined]

    def client(self, **kwargs):
        from dicomxr.net import DicomClient

        kwargs.setdefault("progress", False)
        kwargs.setdefault("acse_timeout", 10)
        kwargs.setdefault("dimse_timeout", 30)
        kwargs.setdefault("network_timeout", 30)
        return DicomClient(self.host, self.port, called_ae=self.ae, **kwargs)


def _mr_files(data_root: Path) -> list[Path]:
    files = sorted((data_root / "dcm_qa_philips_enh" / "In" / "cl").glob("1901_*.dcm"))
    assert len(files) == 40, "the 40-slice Philips MR series 1901 is missing from the corpus"
    return files


def _ts_files(data_root: Path) -> list[Path]:
    files = sorted((data_root / "dcm_qa_ts" / "In").glob("*.dcm"))
    assert len(files) == 9, "dcm_qa_ts/In should hold 9 transfer-syntax files"
    return files


@pytest.fixture(scope="session")
def move_port() -> int:
    from dicomxr.net.servers import free_port

    return free_port()


@pytest.fixture(scope="session")
def orthanc(data_root: Path, philips_ct: Path, move_port: int) -> Iterator[Peer]:
    """Orthanc + DICOMweb seeded with the Philips CT (140), MR 1901 (40) and dcm_qa_ts (9)."""
    from dicomxr.net.servers import OrthancServer

    server = OrthancServer(ae_title="ORTHANC", startup_timeout=60)
    server.start()
    try:
        mr, ts = _mr_files(data_root), _ts_files(data_root)
        server.seed([philips_ct, *mr, *ts])
        server.add_modality("dxmove", MOVE_AE, "127.0.0.1", move_port)
        yield Peer(server, move_port, philips_ct, mr, ts)
    finally:
        server.stop()


@pytest.fixture(scope="session")
def dcmqrscp(data_root: Path, philips_ct: Path, move_port: int) -> Iterator[Peer]:
    """DCMTK dcmqrscp seeded with the Philips CT and MR 1901; DXMOVE in its HostTable."""
    from dicomxr.net.servers import DcmqrscpServer

    server = DcmqrscpServer(
        ae_title="DCMQRSCP", move_destinations={MOVE_AE: ("127.0.0.1", move_port)}
    )
    server.start()
    try:
        mr = _mr_files(data_root)
        server.seed([philips_ct, *mr])
        yield Peer(server, move_port, philips_ct, mr, [])
    finally:
        server.stop()


@pytest.fixture(params=["orthanc", "dcmqrscp"])
def peer(request: pytest.FixtureRequest) -> Peer:
    """Each real peer in turn."""
    return request.getfixturevalue(request.param)


@pytest.fixture
def silent_peer() -> Iterator[tuple[str, int]]:
    """A TCP socket that accepts connections and never says a word."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield "127.0.0.1", srv.getsockname()[1]
    finally:
        stop.set()
        thread.join(2)
        for conn in held:
            conn.close()
        srv.close()


@pytest.fixture
def dead_port() -> int:
    """A loopback port where nothing listens."""
    from dicomxr.net.servers import free_port

    return free_port()


def originals_by_uid(paths: list[Path]) -> dict[str, Path]:
    """SOPInstanceUID -> original file, read with pydicom (the independent reference)."""
    import pydicom

    out = {}
    for p in paths:
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        out[str(ds.SOPInstanceUID)] = p
    return out


def assert_same_dataset(fetched: Path, original: Path, *, same_syntax: bool = True) -> None:
    """The fetched file holds the original dataset element for element (file meta aside)."""
    import pydicom

    a = pydicom.dcmread(fetched)
    b = pydicom.dcmread(original)
    if same_syntax:
        assert a.file_meta.TransferSyntaxUID == b.file_meta.TransferSyntaxUID, fetched
    assert a.SOPInstanceUID == b.SOPInstanceUID
    # compare every element outside the file meta, pixel data as bytes
    keys_a = {e.tag for e in a}
    keys_b = {e.tag for e in b}
    assert keys_a == keys_b, (fetched, keys_a ^ keys_b)
    for tag in keys_b:
        assert a[tag].value == b[tag].value, (fetched, tag)


def env_with_nodelay() -> dict[str, str]:
    return {**os.environ, "TCP_NODELAY": "1"}


@pytest.fixture(scope="session")
def qrscp(data_root: Path) -> Iterator[Peer]:
    """pynetdicom's qrscp app (no UID-list retrieval), seeded with 8 slices of MR 1901."""
    from dicomxr.net.servers import QRSCPServer

    server = QRSCPServer(ae_title="QRSCP")
    server.start()
    try:
        mr = _mr_files(data_root)[:8]
        server.seed(mr)
        yield Peer(server, 0, Path(), mr, [])
    finally:
        server.stop()
