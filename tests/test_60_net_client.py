"""DicomClient against real peers on loopback: Orthanc (+DICOMweb) and DCMTK dcmqrscp.

The references are the original files of the corpora, read with pydicom: what arrives must
be the same dataset, element for element, in the transfer syntax it was stored in.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pydicom
import pytest

from net_fixtures import MOVE_AE, assert_same_dataset, originals_by_uid

pytestmark = [pytest.mark.network, pytest.mark.timeout(120)]

CT_STUDY = "1.3.46.670589.33.1.27492712521914879309.27169771283235650014"


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def test_echo(peer):
    with peer.client() as c:
        rtt = c.echo()
    assert 0 < rtt < 10


def test_find_study_level_keys_and_types(peer):
    with peer.client() as c:
        df = c.find("STUDY", return_keys=["ReferringPhysicianName"])
    assert set(df.StudyInstanceUID) >= {CT_STUDY}
    assert "ReferringPhysicianName" in df.columns
    row = df[df.StudyInstanceUID == CT_STUDY].iloc[0]
    assert row.PatientID == "PLASTIC"
    assert row.StudyDate == "20150206"


def test_find_wildcards_and_date_ranges(peer):
    with peer.client() as c:
        by_name = c.find("STUDY", PatientName="HEA*")
        assert list(by_name.StudyInstanceUID) == [CT_STUDY]
        single_char = c.find("STUDY", PatientID="PLASTI?")
        assert list(single_char.StudyInstanceUID) == [CT_STUDY]
        in_range = c.find("STUDY", StudyDate=(dt.date(2015, 1, 1), dt.date(2015, 12, 31)))
        assert list(in_range.StudyInstanceUID) == [CT_STUDY]
        open_end = c.find("STUDY", StudyDate=("20200101", None))
        assert CT_STUDY not in set(open_end.StudyInstanceUID)
        assert len(open_end) >= 1  # the 2021 Philips MR
        text_range = c.find("STUDY", StudyDate="20150206-20150206")
        assert list(text_range.StudyInstanceUID) == [CT_STUDY]


def test_find_series_and_image_levels_without_parent_uids(peer):
    # dcmqrscp is strictly hierarchical: the client walks studies -> series itself
    with peer.client() as c:
        series = c.find("SERIES", Modality="CT")
        assert len(series) == 1
        assert series.NumberOfSeriesRelatedInstances.dtype == "Int64"
        images = c.find("IMAGE", SeriesInstanceUID=series.SeriesInstanceUID[0])
    assert len(images) == 140
    assert images.SOPInstanceUID.is_unique
    if peer.ae == "ORTHANC":
        assert set(images.SOPClassUID) == {"1.2.840.10008.5.1.4.1.1.2"}
    else:  # dcmqrscp's index keeps no SOPClassUID: get() then falls back (tested below)
        assert images.SOPClassUID.isna().all()
    expected = set(originals_by_uid(sorted(peer.ct_dir.glob("I*"))))
    assert set(images.SOPInstanceUID) == expected


def test_find_patient_root(peer):
    with peer.client() as c:
        patients = c.find("PATIENT")
        assert "PLASTIC" in set(patients.PatientID)
        studies = c.find("STUDY", model="patient", PatientID="PLASTIC")
        assert list(studies.StudyInstanceUID) == [CT_STUDY]
        with pytest.raises(ValueError, match="model='patient'"):
            c.find("PATIENT", model="study")


def test_get_ct_study_identical_to_originals(peer, tmp_path):
    originals = originals_by_uid(sorted(peer.ct_dir.glob("I*")))
    with peer.client(parallel=2) as c:
        report = c.get(tmp_path, study=CT_STUDY)
    assert report.ok and len(report.received) == 140 and not report.skipped
    files = _files(tmp_path)
    assert len(files) == 140
    for f in files:
        study, series = f.parent.parent.name, f.parent.name
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        assert (study, series, f.stem) == (
            ds.StudyInstanceUID,
            ds.SeriesInstanceUID,
            ds.SOPInstanceUID,
        )
        assert_same_dataset(f, originals[f.stem])


def test_get_keeps_compressed_transfer_syntaxes_as_stored(orthanc, tmp_path):
    originals = originals_by_uid(orthanc.ts_files)
    syntaxes = {pydicom.dcmread(p).file_meta.TransferSyntaxUID for p in orthanc.ts_files}
    assert len(syntaxes) == 7
    with orthanc.client() as c:
        series = c.find("SERIES", Modality="MR", SeriesNumber="1")
        uid = next(
            s
            for s in series.SeriesInstanceUID
            if c.find("IMAGE", SeriesInstanceUID=s).SOPInstanceUID.isin(list(originals)).all()
        )
        report = c.get(tmp_path, series=uid)
    assert len(report.received) == 9
    for f in report.received:
        assert_same_dataset(f, originals[f.stem], same_syntax=True)


def test_get_mr_series_from_dcmqrscp(dcmqrscp, tmp_path):
    originals = originals_by_uid(dcmqrscp.mr_files)
    with dcmqrscp.client() as c:
        series = c.find("SERIES", Modality="MR")
        report = c.get(tmp_path, series=series.SeriesInstanceUID[0])
    assert sorted(p.stem for p in report.received) == sorted(originals)
    for f in report.received:
        assert_same_dataset(f, originals[f.stem])


def test_move_to_own_storage_scp(peer, tmp_path):
    originals = originals_by_uid(peer.mr_files)
    with peer.client() as c:
        series = c.find("SERIES", Modality="MR", SeriesNumber="1901")
        report = c.move(
            tmp_path,
            series=series.SeriesInstanceUID[0],
            ae_title=MOVE_AE,
            port=peer.move_port,
            bind="127.0.0.1",
        )
    assert report.ok
    assert report.completed == 40
    assert sorted(p.stem for p in report.received) == sorted(originals)
    for f in report.received:
        assert_same_dataset(f, originals[f.stem])


def test_resume_fetches_only_what_is_missing(orthanc, tmp_path):
    with orthanc.client() as c:
        images = c.find("IMAGE", StudyInstanceUID=CT_STUDY)
        first = list(images.SOPInstanceUID[:25])
        part = c.get(tmp_path, instances=first)
        assert sorted(p.stem for p in part.received) == sorted(first)
        before = {p: p.stat().st_mtime_ns for p in _files(tmp_path)}
        full = c.get(tmp_path, study=CT_STUDY)
    assert sorted(full.skipped) == sorted(first)
    assert len(full.received) == 115
    files = _files(tmp_path)
    assert len(files) == 140 and len({f.name for f in files}) == 140
    for p, mtime in before.items():
        assert p.stat().st_mtime_ns == mtime  # not written twice


def test_store_paths_and_datasets(orthanc, tmp_path):
    from pydicom.uid import generate_uid

    from dicomxr.phantom import phantom_volume, write_series

    paths = write_series(
        tmp_path / "phantom",
        phantom_volume((4, 16, 16)),
        study_uid=generate_uid(),
        series_uid=generate_uid(),
    )
    ds = pydicom.dcmread(paths[0])
    uids = sorted(str(pydicom.dcmread(p).SOPInstanceUID) for p in paths)
    with orthanc.client() as c:
        report = c.store(tmp_path / "phantom")
        assert len(report.sent) == len(paths) and report.ok
        again = c.store(ds)  # a Dataset, stored again (Orthanc accepts duplicates)
        assert again.ok
        found = c.find("IMAGE", SeriesInstanceUID=str(ds.SeriesInstanceUID))
    assert sorted(found.SOPInstanceUID) == uids
    # tidy up so other tests see the seeded corpus only
    orthanc.server.rest("DELETE", f"/studies/{_orthanc_study_id(orthanc, ds.StudyInstanceUID)}")


def _orthanc_study_id(orthanc, study_uid) -> str:
    found = orthanc.server.rest(
        "POST", "/tools/find", {"Level": "Study", "Query": {"StudyInstanceUID": str(study_uid)}}
    )
    assert len(found) == 1
    return found[0]


def test_get_progress_bar_counts_suboperations(orthanc, tmp_path, capsys):
    with orthanc.client(progress=True, parallel=1) as c:
        series = c.find("SERIES", Modality="MR", SeriesNumber="1901")
        c.get(tmp_path, series=series.SeriesInstanceUID[0])
    err = capsys.readouterr().err
    assert "C-GET" in err and "40/40" in err


def test_open_matches_local_originals(orthanc, tmp_path):
    import numpy as np

    import dicomxr

    if not hasattr(dicomxr, "open_series"):
        pytest.fail("dicomxr.open_series is not available")
    with orthanc.client() as c:
        series = c.find("SERIES", Modality="MR", SeriesNumber="1901")
        fetched = c.open(tmp_path / "get", series=series.SeriesInstanceUID[0])
        moved = c.open(
            tmp_path / "move",
            series=series.SeriesInstanceUID[0],
            method="move",
            fetch_kwargs={"ae_title": MOVE_AE, "port": orthanc.move_port, "bind": "127.0.0.1"},
        )
    np.testing.assert_array_equal(moved.values, fetched.values)
    local_dir = tmp_path.parent / (tmp_path.name + "-local")
    local_dir.mkdir()
    for p in orthanc.mr_files:
        (local_dir / p.name).symlink_to(p)
    local = dicomxr.open_series(local_dir)
    assert fetched.dims == local.dims and fetched.shape == local.shape
    np.testing.assert_array_equal(fetched.values, local.values)
    for name in ("slice", "position_x", "position_y", "position_z", "SOPInstanceUID"):
        np.testing.assert_array_equal(fetched[name].values, local[name].values)
    assert fetched.attrs["affine"] == local.attrs["affine"]


def test_qrscp_peer_without_uid_lists_falls_back_to_series(qrscp, tmp_path):
    # pynetdicom's qrscp fails a C-GET whose SOPInstanceUID is a list: the client then
    # fetches the series whole, once, and still writes every instance exactly once
    originals = originals_by_uid(qrscp.mr_files)
    with qrscp.client(parallel=2) as c:
        series = c.find("SERIES")
        assert len(series) == 1  # qrscp answers per instance; rows are deduplicated
        report = c.get(tmp_path, series=series.SeriesInstanceUID[0])
    assert report.ok
    assert sorted(p.stem for p in report.received) == sorted(originals)
    for f in report.received:
        assert_same_dataset(f, originals[f.stem])


def test_failed_suboperations_are_counted_not_hidden(orthanc, tmp_path, monkeypatch):
    # propose only CT Image Storage for an MR series: the peer cannot send a single instance
    from dicomxr.net import DicomClient, RetrieveError

    originals = originals_by_uid(orthanc.ts_files)
    with orthanc.client(parallel=1) as c:
        uid = c.find("IMAGE", SOPInstanceUID=list(originals)).SeriesInstanceUID[0]
        monkeypatch.setattr(
            DicomClient, "_sop_classes", lambda self, plan: ["1.2.840.10008.5.1.4.1.1.2"]
        )
        with pytest.raises(RetrieveError, match="failed sub-operation") as info:
            c.get(tmp_path, series=uid)
    report = info.value.report
    # the peer's own count (Orthanc stops after the first failure and says so)
    assert report.failed >= 1 and f"{report.failed} failed sub-operation" in str(info.value)
    assert len(report.missing) == 9 and not report.received
    assert not any(tmp_path.rglob("*.dcm"))


def test_our_sockets_have_tcp_nodelay(orthanc):
    import socket

    from pynetdicom import build_context, sop_class

    with orthanc.client() as c:
        assoc = c._associate([build_context(sop_class.Verification)])
        try:
            sock = assoc.dul.socket.socket
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        finally:
            c._release(assoc)


def test_open_study_gives_a_tree_like_local(orthanc, tmp_path):
    import xarray as xr

    import dicomxr

    with orthanc.client() as c:
        tree = c.open(tmp_path, study=CT_STUDY)
    assert isinstance(tree, xr.DataTree)
    images = [node.ds["image"] for node in tree.subtree if "image" in node.ds]
    assert [im.shape for im in images] == [(140, 512, 512)]
    local = dicomxr.open_series(orthanc.ct_dir)
    assert images[0].shape == local.shape
    assert images[0].attrs["affine"] == local.attrs["affine"]
    assert (images[0].isel(slice=70).values == local.isel(slice=70).values).all()


def test_fast_and_pynetdicom_receive_paths_agree(peer, tmp_path, monkeypatch):
    # the default receive path reads the socket itself (dicomxr.net._fastget); it must
    # write byte-identical files and find the same rows as pynetdicom's own path
    from dicomxr.net import _fastget

    calls = {"get": 0, "find": 0}
    for name, key in (("receive_get", "get"), ("receive_find", "find")):
        original = getattr(_fastget, name)

        def counted(*args, _original=original, _key=key, **kwargs):
            calls[_key] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(_fastget, name, counted)

    found = {}
    for fast in (True, False):
        calls.update(get=0, find=0)
        with peer.client(parallel=2, fast_receive=fast) as c:
            report = c.get(tmp_path / str(fast), study=CT_STUDY)
            assert report.ok and len(report.received) == 140
            found[fast] = c.find("IMAGE", StudyInstanceUID=CT_STUDY, return_keys=["InstanceNumber"])
            assert not c._live  # every association released
        if fast:
            assert calls["get"] >= 1 and calls["find"] >= 1  # the fast path did the work ...
        else:
            assert calls == {"get": 0, "find": 0}  # ... and pynetdicom's own path is tested too
    fast_files = {p.relative_to(tmp_path / "True"): p for p in _files(tmp_path / "True")}
    slow_files = {p.relative_to(tmp_path / "False"): p for p in _files(tmp_path / "False")}
    assert fast_files.keys() == slow_files.keys() and len(fast_files) == 140
    for rel, path in fast_files.items():
        assert path.read_bytes() == slow_files[rel].read_bytes(), rel
    key = "SOPInstanceUID"
    pd_fast = found[True].sort_values(key).reset_index(drop=True)
    pd_slow = found[False].sort_values(key).reset_index(drop=True)
    assert len(pd_fast) == 140 and pd_fast.equals(pd_slow)


def test_fast_path_keeps_compressed_syntaxes_and_resumes(orthanc, tmp_path):
    originals = originals_by_uid(orthanc.ts_files)
    with orthanc.client(parallel=1) as c:
        rows = c.find("IMAGE", SOPInstanceUID=list(originals))
        series = rows.SeriesInstanceUID[0]
        first = c.get(tmp_path, instances=list(rows.SOPInstanceUID[:4]))
        assert len(first.received) == 4
        rest = c.get(tmp_path, series=series)
    assert len(rest.skipped) == 4 and len(rest.received) == 5 and rest.ok
    for f in [*first.received, *rest.received]:
        assert_same_dataset(f, originals[f.stem], same_syntax=True)
