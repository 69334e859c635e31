"""Pieces of dicomxr.net that need no peer: context planning, safe names, atomic storage,
and that ``import dicomxr`` does not import the network stack."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dicomxr.net.storage import DicomStorage, RetrieveReport, safe_name


def test_plan_contexts_budget_and_order():
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGLosslessSV1

    from dicomxr.net.client import MAX_CONTEXTS, plan_contexts

    ct, mr = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4"
    plan = plan_contexts([ct, mr, ct])
    assert [c for c, _ in plan[:2]] == [ct, mr]  # one base context per class, deduplicated
    assert plan[0][1] == [ExplicitVRLittleEndian]
    assert plan[2] == (ct, [ImplicitVRLittleEndian])  # the safety net comes first
    assert (ct, [JPEGLosslessSV1]) in plan and (mr, [JPEGLosslessSV1]) in plan
    assert len(plan) == 2 * 13
    # many classes: every class keeps its base context, the extras fill the budget
    classes = [f"1.2.3.{i}" for i in range(100)]
    big = plan_contexts(classes, reserved=1)
    assert len(big) == MAX_CONTEXTS - 1
    assert {c for c, _ in big} == set(classes)
    assert all(len(ts) == 1 for _, ts in big[100:])  # the 27 extras are compressed ones
    assert plan_contexts(classes, compressed=False) == big[:100]
    with pytest.raises(ValueError, match="split"):
        plan_contexts([f"1.2.3.{i}" for i in range(128)])


@pytest.mark.parametrize(
    "value",
    ["../../x", "..", ".", "/etc/passwd", "a/b\\c", "C:\\x", "\x00", "x" * 300, "../" * 40],
)
def test_safe_name_never_escapes(value, tmp_path):
    name = safe_name(value)
    assert name and "/" not in name and "\\" not in name and not name.startswith(".")
    assert len(name) <= 64 + 11
    storage = DicomStorage(tmp_path)
    path = storage.path_for(value, value, value).resolve()
    assert tmp_path.resolve() in path.parents


def test_safe_name_keeps_uids_and_separates_collisions():
    assert safe_name("1.2.840.113619.2.55.3") == "1.2.840.113619.2.55.3"
    assert safe_name("a/b") != safe_name("a_b")  # the hash keeps distinct inputs distinct
    assert safe_name(None) == "unknown"
    assert safe_name("") == "unknown"


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    storage = DicomStorage(tmp_path)
    final = storage.write("1.2", "1.2.3", "1.2.3.4", b"complete")
    assert final.read_bytes() == b"complete"

    import os

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        storage.write("1.2", "1.2.3", "1.2.3.5", b"half")
    monkeypatch.undo()
    names = sorted(p.name for p in final.parent.iterdir())
    assert names == ["1.2.3.4.dcm"]  # neither a final nor a temporary file for the failed one
    (final.parent / ".1.2.3.6.dcm.abcd.part").write_bytes(b"left by a crash")
    assert storage.clean_partial() == 1
    assert sorted(p.name for p in final.parent.iterdir()) == ["1.2.3.4.dcm"]


def test_report_summary():
    report = RetrieveReport(dest=".", requested=["a", "b"], skipped=["a"], missing=["b"], failed=1)
    assert not report.ok
    assert "1 missing" in report.summary() and "1 failed" in report.summary()


def test_import_dicomxr_does_not_import_the_network_stack():
    code = (
        "import sys, dicomxr; "
        "bad = [m for m in ('dicomxr.net', 'pynetdicom', 'dicomweb_client', 'requests') "
        "if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    light = "import sys, dicomxr.net; sys.exit('pynetdicom' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", light], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, "dicomxr.net itself must import pynetdicom only on use"


@pytest.mark.parametrize("chunk", [1, 7, 64, 1 << 20])
def test_multipart_stream_parser_across_chunk_boundaries(chunk):
    from dicomxr.net.dicomweb import _iter_multipart, _multipart_parts

    boundary = "b0und-ary"
    parts = [b"\x00" * 128 + b"DICM" + bytes(range(256)) * 3, b"second\r\n--not-it", b""]
    body = (
        b"preamble\r\n"
        + b"".join(
            b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + p + b"\r\n"
            for p in parts
        )
        + b"--"
        + boundary.encode()
        + b"--\r\n"
    )

    class Response:
        def iter_content(self, chunk_size):
            for i in range(0, len(body), chunk):
                yield body[i : i + chunk]

    content_type = f'multipart/related; type="application/dicom"; boundary="{boundary}"'
    assert list(_iter_multipart(content_type, Response())) == parts
    assert _multipart_parts(content_type, body) == parts


def test_multipart_stream_cut_short_is_an_error():
    from dicomxr.net.dicomweb import _iter_multipart
    from dicomxr.net.errors import RetrieveError

    body = b"--b\r\n\r\nfirst\r\n--b\r\n\r\nsecond, cut"

    class Response:
        def iter_content(self, chunk_size):
            yield body

    with pytest.raises(RetrieveError, match="middle of a part"):
        list(_iter_multipart("multipart/related; boundary=b", Response()))


def test_command_set_encode_parse_round_trip():
    from dicomxr.net._fastget import encode_command, parse_command

    fields = {0x0002: "1.2.840.10008.5.1.4.1.1.2", 0x0100: 0x8001, 0x0120: 7, 0x0900: 0xA700}
    raw = encode_command(fields)
    assert len(raw) % 2 == 0
    # group length first, then the elements in tag order, UIDs padded with NUL
    assert raw[:8] == b"\x00\x00\x00\x00\x04\x00\x00\x00"
    assert int.from_bytes(raw[8:12], "little") == len(raw) - 12
    assert parse_command(raw) == fields
    # Orthanc appends its Failed SOP Instance UID List (group 0008) to a final response
    tail = b"\x08\x00\x58\x00\x04\x00\x00\x001.2\x00"
    assert parse_command(raw + tail) == fields


def test_command_set_parses_like_pydicom():
    from io import BytesIO

    from pydicom.filereader import read_dataset

    from dicomxr.net._fastget import encode_command, parse_command

    raw = encode_command({0x0100: 0x0001, 0x0110: 3, 0x0800: 0x0000, 0x1000: "1.2.33"})
    ds = read_dataset(BytesIO(raw), True, True)
    assert ds.CommandField == 1 and ds.MessageID == 3
    assert ds.AffectedSOPInstanceUID == parse_command(raw)[0x1000] == "1.2.33"


def test_pdu_reader_across_chunk_boundaries_and_buffer_growth():
    import socket
    import struct
    import threading

    from dicomxr.net._fastget import _Reader

    bodies = [bytes([i]) * n for i, n in enumerate((10, 3000, 70_000, 1, 5000))]
    stream = b"".join(struct.pack(">BxL", 4, len(b)) + b for b in bodies) + b"\x07\x00"
    stream += struct.pack(">L", 4) + b"\x00\x00\x02\x00"
    a, b = socket.socketpair()
    b.setblocking(False)

    def send() -> None:
        for start in range(0, len(stream), 777):  # cuts PDU headers and bodies anywhere
            a.sendall(stream[start : start + 777])
        a.close()

    def wait() -> None:
        import select

        assert select.select([b], [], [], 10)[0], "no data within 10 s"

    sender = threading.Thread(target=send)
    sender.start()
    reader = _Reader(b, wait, size=4096)  # smaller than the 70 kB PDU: must grow
    got = [(t, bytes(body)) for t, body in (reader.next_pdu() for _ in range(6))]
    sender.join()
    assert got[:5] == [(4, body) for body in bodies]
    assert got[5] == (7, b"\x00\x00\x02\x00")
    with pytest.raises(ConnectionResetError):
        reader.next_pdu()
    b.close()


def test_instance_writer_is_atomic(tmp_path):
    storage = DicomStorage(tmp_path)
    writer = storage.open_instance("1.2", "1.2.3", "1.2.3.4", b"HEAD")
    writer.write(b"abc")
    writer.write(memoryview(b"def"))
    final = storage.path_for("1.2", "1.2.3", "1.2.3.4")
    assert not final.exists()  # nothing under the final name before commit
    assert writer.commit() == final
    assert final.read_bytes() == b"HEADabcdef"
    assert storage.written == [final] and storage.written_uids == ["1.2.3.4"]
    dropped = storage.open_instance("1.2", "1.2.3", "1.2.3.5")
    dropped.write(b"partial")
    dropped.discard()
    assert sorted(p.name for p in final.parent.iterdir()) == [final.name]


def test_spare_file_is_used_in_its_folder_only(tmp_path):
    storage = DicomStorage(tmp_path)
    spare = storage.spare("1.2", "1.2.3")
    assert spare.path.parent == storage.folder("1.2", "1.2.3") and spare.path.exists()
    writer = storage.open_instance("1.2", "1.2.3", "1.2.3.4", b"H", spare)
    assert writer.tmp == spare.path  # the file made beforehand is the one written
    writer.write(b"x")
    assert writer.commit().read_bytes() == b"Hx"
    other = storage.spare("1.2", "1.2.3")
    elsewhere = storage.open_instance("1.2", "1.2.9", "1.2.9.1", b"", other)
    assert elsewhere.tmp != other.path and not other.path.exists()  # wrong folder: dropped
    elsewhere.discard()
    assert storage.clean_partial() == 0
    leftover = storage.spare("1.2", "1.2.3")
    leftover.fh.close()
    assert storage.clean_partial() == 1 and not leftover.path.exists()


def test_split_work_bounds_group_size_and_keeps_series_apart():
    import pandas as pd

    from dicomxr.net.client import _split_work

    todo = pd.DataFrame(
        {
            "SeriesInstanceUID": ["a"] * 140 + ["b"] * 60,
            "SOPInstanceUID": [f"1.{i}" for i in range(200)],
        }
    )
    groups = _split_work(todo, 2)
    assert [len(g) for g in groups] == [100, 60, 40]  # largest first, at most 200/2 each
    assert all(g.SeriesInstanceUID.nunique() == 1 for g in groups)
    assert sorted(pd.concat(groups).SOPInstanceUID) == sorted(todo.SOPInstanceUID)
    # many small series: one group each, never more groups than needed
    many = pd.DataFrame({"SeriesInstanceUID": list("abcdefgh"), "SOPInstanceUID": list("12345678")})
    assert len(_split_work(many, 2)) == 8 and len(_split_work(many, 1)) == 8


def test_clean_partial_spares_another_retrievals_fresh_files(tmp_path):
    import os
    import time

    mine = DicomStorage(tmp_path)
    theirs = DicomStorage(tmp_path)  # a concurrent retrieval into the same folder
    in_flight = theirs.open_instance("1.2", "1.2.3", "1.2.3.4", b"H")
    own = mine.spare("1.2", "1.2.3")
    folder = mine.folder("1.2", "1.2.3")
    stale = folder / ".1.2.3.9.dcm.dead.part"
    stale.write_bytes(b"left by a crash")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    assert mine.clean_partial([folder], older_than=120) == 2  # its own and the stale one
    assert not own.path.exists() and not stale.exists()
    in_flight.write(b"x")
    assert in_flight.commit().read_bytes() == b"Hx"  # the other retrieval was left alone


# ------------------------------------------ pynetdicom's private attributes (the fast path)


@pytest.fixture
def verification_association():
    """An association of dicomxr's FastAE with a pynetdicom Verification SCP on loopback."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    from dicomxr.net._transport import FastAE

    scp = AE(ae_title="VERIFY")
    scp.add_supported_context(Verification)
    server = scp.start_server(("127.0.0.1", 0), block=False)
    try:
        scu = FastAE(ae_title="DICOMXR")
        scu.add_requested_context(Verification)
        scu.acse_timeout = scu.dimse_timeout = scu.network_timeout = 10
        assoc = scu.associate("127.0.0.1", server.server_address[1], ae_title="VERIFY")
        assert assoc.is_established
        try:
            yield assoc
        finally:
            assoc.release()
    finally:
        server.shutdown()


def test_pynetdicom_is_the_tested_version_and_pinned_so():
    import tomllib
    from pathlib import Path

    import pynetdicom
    from packaging.specifiers import SpecifierSet

    from dicomxr.net._fastget import TESTED_PYNETDICOM

    assert pynetdicom.__version__ in SpecifierSet(TESTED_PYNETDICOM), (
        f"pynetdicom {pynetdicom.__version__} is outside the range the fast receive path is "
        f"tested with ({TESTED_PYNETDICOM}): run tests/test_60_net_*.py and widen the range"
    )
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert f"pynetdicom{TESTED_PYNETDICOM}" in pyproject["project"]["dependencies"]


def test_private_pynetdicom_attributes_of_the_fast_path_are_there(verification_association):
    """Fails naming each attribute when pynetdicom changes what _fastget relies on."""
    import pynetdicom

    from dicomxr.net import _fastget

    problems = _fastget.private_api_problems(verification_association)
    assert not problems, (
        f"pynetdicom {pynetdicom.__version__} changed the private attributes dicomxr's fast "
        "C-GET/C-FIND receive (dicomxr/net/_fastget.py, _transport.py) relies on:\n  "
        + "\n  ".join(problems)
    )
    assert _fastget.can_take_over(verification_association)
    assert verification_association.send_c_echo().Status == 0x0000


def test_changed_private_attribute_falls_back_with_a_warning(verification_association):
    from dicomxr.errors import DicomxrWarning
    from dicomxr.net import _fastget

    dul = verification_association.dul
    timer = dul._idle_timer
    del dul._idle_timer
    try:
        problems = _fastget.private_api_problems(verification_association)
        assert len(problems) == 1 and problems[0].startswith("assoc.dul._idle_timer: ")
        with pytest.warns(DicomxrWarning, match=r"own receive path: assoc\.dul\._idle_timer"):
            assert not _fastget.can_take_over(verification_association)
    finally:
        dul._idle_timer = timer
    assert _fastget.can_take_over(verification_association)
    assert verification_association.send_c_echo().Status == 0x0000
