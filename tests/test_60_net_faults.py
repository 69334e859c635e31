"""Faults, each against a real peer: nothing listening, rejection, unknown move destination,
a silent peer, a server killed mid-transfer, Ctrl-C, hostile UIDs.

Every fault must end in a clear exception (or report) within the configured timeouts, and
leave the destination holding only complete files that a second call completes.
"""

from __future__ import annotations

import _thread
import io
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from net_fixtures import Peer, assert_same_dataset, originals_by_uid

pytestmark = [pytest.mark.network, pytest.mark.timeout(120)]

CT_STUDY = "1.3.46.670589.33.1.27492712521914879309.27169771283235650014"


@pytest.fixture(scope="module")
def victim(philips_ct: Path) -> Iterator[Peer]:
    """An Orthanc of its own, seeded with the CT, that these tests may kill and restart."""
    from dicomxr.net.servers import OrthancServer, free_port

    server = OrthancServer(ae_title="VICTIM", dicomweb=False)
    server.start()
    try:
        server.seed(philips_ct)
        yield Peer(server, free_port(), philips_ct, [], [])
    finally:
        server.stop()


def _complete_files(folder: Path) -> list[Path]:
    """Every file under folder; each must parse completely (pixels included)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    for f in files:
        assert not f.name.endswith(".part"), f"partial file left behind: {f}"
        ds = pydicom.dcmread(f)
        assert len(ds.PixelData) == ds.Rows * ds.Columns * ds.BitsAllocated // 8, f
    return files


def _when_files(folder: Path, n: int, action, timeout: float = 60) -> threading.Thread:
    """Run ``action`` from another thread once ``n`` files are under ``folder``."""

    def watch() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if folder.exists() and sum(1 for _ in folder.rglob("*.dcm")) >= n:
                action()
                return
            time.sleep(0.005)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_timeouts_must_be_finite():
    from dicomxr.net import DicomClient

    with pytest.raises(ValueError, match="finite"):
        DicomClient("127.0.0.1", 104, dimse_timeout=None)
    with pytest.raises(ValueError, match="finite"):
        DicomClient("127.0.0.1", 104, acse_timeout=float("inf"))


def test_server_not_running(dead_port):
    from dicomxr.net import AssociationError, DicomClient

    started = time.monotonic()
    with (
        DicomClient("127.0.0.1", dead_port, called_ae="NOBODY", retries=2, backoff=0.05) as c,
        pytest.raises(AssociationError, match=r"nothing is listening.*connection refused"),
    ):
        c.echo()
    elapsed = time.monotonic() - started
    assert 0.15 <= elapsed < 10  # two retries with backoff 0.05 + 0.1, then a clear error


def test_wrong_called_ae_is_rejected(peer):
    from dicomxr.net import AssociationRejectedError, DicomClient

    started = time.monotonic()
    with (
        DicomClient(peer.host, peer.port, called_ae="NOT-" + peer.ae[:10], retries=3) as c,
        pytest.raises(AssociationRejectedError, match="rejected") as info,
    ):
        c.echo()
    assert info.value.result in (1, 2)
    if info.value.result == 1:
        assert time.monotonic() - started < 5  # permanent rejection: no retries
        assert "called AE title" in str(info.value)


def test_unknown_move_destination(peer, tmp_path):
    from dicomxr.net import MoveDestinationError

    with peer.client() as c:
        series = c.find("SERIES", Modality="MR", SeriesNumber="1901")
        with pytest.raises(MoveDestinationError, match=r"move destination .NOBODY") as info:
            c.move(tmp_path, series=series.SeriesInstanceUID[0], ae_title="NOBODY")
    assert info.value.report is not None
    assert len(info.value.report.missing) == 40
    assert not any(tmp_path.rglob("*.dcm"))


def test_silent_peer_times_out(silent_peer):
    from dicomxr.net import DicomClient, NetTimeoutError

    host, port = silent_peer
    started = time.monotonic()
    with (
        DicomClient(host, port, called_ae="SILENT", acse_timeout=1, retries=0) as c,
        pytest.raises(NetTimeoutError, match="did not answer the association request"),
    ):
        c.echo()
    assert time.monotonic() - started < 8


def test_server_killed_mid_transfer_then_resume(victim, tmp_path):
    from dicomxr.net import RetrieveError

    originals = originals_by_uid(sorted(victim.ct_dir.glob("I*")))
    watcher = _when_files(tmp_path, 30, victim.server.kill)
    with (
        victim.client(parallel=1, retries=0, dimse_timeout=10) as c,
        pytest.raises(RetrieveError, match="incomplete") as info,
    ):
        c.get(tmp_path, study=CT_STUDY)
    watcher.join(5)
    assert not victim.server.running
    report = info.value.report
    assert report.missing and len(report.missing) < 140
    kept = _complete_files(tmp_path)
    assert 30 <= len(kept) < 140
    assert len(kept) + len(report.missing) == 140

    victim.server.restart()
    with victim.client() as c:
        resumed = c.get(tmp_path, study=CT_STUDY)
    assert sorted(resumed.skipped) == sorted(p.stem for p in kept)
    assert len(resumed.received) == 140 - len(kept)
    files = _complete_files(tmp_path)
    assert sorted(f.stem for f in files) == sorted(originals)  # nothing duplicated or missing
    for f in files:
        assert_same_dataset(f, originals[f.stem])


def test_ctrl_c_sends_cancel_and_leaves_a_consistent_folder(victim, tmp_path, caplog):
    if not victim.server.running:
        victim.server.restart()
    watcher = _when_files(tmp_path, 20, _thread.interrupt_main)
    caplog.set_level("INFO", logger="dicomxr.net.client")
    with victim.client(parallel=2) as c, pytest.raises(KeyboardInterrupt):
        c.get(tmp_path, study=CT_STUDY)
        time.sleep(30)  # the interrupt must not arrive after get() returned
    watcher.join(5)
    assert "sent C-CANCEL" in caplog.text
    assert "cancelled" in caplog.text
    kept = _complete_files(tmp_path)
    assert len(kept) >= 20
    with victim.client() as c:
        resumed = c.get(tmp_path, study=CT_STUDY)
    assert len(resumed.skipped) == len(kept)
    assert len(_complete_files(tmp_path)) == 140


def test_hostile_uids_cannot_escape_dest(victim, tmp_path, philips_ct):
    if not victim.server.running:
        victim.server.restart()
    ds = pydicom.dcmread(philips_ct / "I10")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # pydicom: invalid UI values, on purpose
        ds.StudyInstanceUID = "/tmp/evil"
        ds.SeriesInstanceUID = "../../../etc"
        ds.SOPInstanceUID = "../../x"
        ds.file_meta.MediaStorageSOPInstanceUID = "../../x"
        ds.Modality = "OT"
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
    victim.server.rest("POST", "/instances", buf.getvalue())
    dest = tmp_path / "dest"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with victim.client() as c:
            report = c.get(dest, study="/tmp/evil")
    assert len(report.received) == 1
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written == report.received
    path = written[0].resolve()
    assert dest.resolve() in path.parents
    assert ".." not in path.relative_to(dest.resolve()).parts
    assert not Path("/tmp/evil").exists()
