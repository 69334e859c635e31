"""The catalog reads every header once; planning opens no file.

The catalog's one header pass keeps what planning needs (the per-frame functional groups of
enhanced files, the Siemens CSA slice normal, the Philips ASL label type, the RT Dose grid
offsets). These tests count the file opens and header reads of planning and of a whole
open + load, and check the per-frame values the scan keeps against pydicom reading the
functional groups itself.
"""

from __future__ import annotations

import builtins
import math
import os
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

import dicomxr
from dicomxr import _header, catalog
from dicomxr.series import plan_series

CORPORA = ("dcm_qa_ct", "dcm_qa_philips_enh", "dcm_qa_ts", "dicomParser", "suyashkumar_dicom")
PCASL = ("dcm_qa_philips_enh", "In", "enh", "1903_WIP_SOURCE_-_3DpCASL.dcm")


class _Opens:
    """Count every way a file can be opened or a header read while the block runs."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: Counter[str] = Counter()
        self.paths: list[str] = []
        self._patch(monkeypatch, builtins, "open")
        self._patch(monkeypatch, os, "open")
        self._patch(monkeypatch, pydicom, "dcmread")
        self._patch(monkeypatch, pydicom.filereader, "dcmread")
        self._patch(monkeypatch, _header, "read_raw")
        self._patch(monkeypatch, catalog, "read_header_pydicom")

    def _patch(self, monkeypatch: pytest.MonkeyPatch, owner: object, name: str) -> None:
        real = getattr(owner, name)
        label = f"{getattr(owner, '__name__', owner)}.{name}"

        def counting(*args, **kwargs):
            self.calls[label] += 1
            if args and isinstance(args[0], (str, os.PathLike)):
                self.paths.append(os.fspath(args[0]))
            return real(*args, **kwargs)

        monkeypatch.setattr(owner, name, counting)


def _colliding_paths(cat: pd.DataFrame) -> set[str]:
    """Files whose SOPInstanceUID another file shares: planning compares their pixels."""
    uid = cat["SOPInstanceUID"]
    return set(cat.loc[uid.duplicated(keep=False) & uid.notna(), "path"])


@pytest.mark.parametrize("corpus", CORPORA)
def test_planning_opens_no_file(
    corpus: str, data_root: Path, scanned, monkeypatch: pytest.MonkeyPatch
) -> None:
    cat = scanned(str(data_root / corpus))
    assert len(cat) > 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warm = plan_series(cat)  # imports done, caches warm: what is counted is planning
        opens = _Opens(monkeypatch)
        plans = plan_series(cat)
    monkeypatch.undo()
    # no header is read again, ever
    assert opens.calls["dicomxr._header.read_raw"] == 0, opens.paths[:5]
    assert opens.calls["dicomxr.catalog.read_header_pydicom"] == 0, opens.paths[:5]
    # not even the files whose SOPInstanceUID another file reuses (dicomParser has such
    # files): the scan kept the digests of their stored frames, which planning compares
    assert dict(opens.calls) == {}, (corpus, opens.paths[:5])
    digested = set(cat.loc[cat["frame_digests"].notna(), "path"])
    assert digested <= _colliding_paths(cat)
    assert [p.key for p in plans] == [p.key for p in warm] and len(plans) > 0


def test_planning_an_enhanced_catalog_opens_no_file_under_every_policy(
    data_root: Path, scanned, monkeypatch: pytest.MonkeyPatch
) -> None:
    cat = scanned(str(data_root / "dcm_qa_philips_enh" / "In" / "enh"))
    assert cat["is_enhanced"].sum() >= 3
    kwargs = (
        {"on_irregular": "split"},
        {"on_irregular": "fill"},
        {"on_duplicate": "split"},
        {"include": ["localizer", "secondary_capture"]},
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for kw in kwargs:
            plan_series(cat, **kw)
        opens = _Opens(monkeypatch)
        for kw in kwargs:
            plan_series(cat, **kw)
    monkeypatch.undo()
    assert dict(opens.calls) == {}, opens.paths[:5]


def test_opening_and_loading_the_4d_enhanced_series_reads_its_header_once(
    data_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = data_root.joinpath(*PCASL)
    reads: Counter[str] = Counter()
    real_read_raw = _header.read_raw

    def counting_read_raw(p, *args, **kwargs):
        reads[os.path.abspath(p)] += 1
        return real_read_raw(p, *args, **kwargs)

    def no_dcmread(*args, **kwargs):
        raise AssertionError(f"pydicom.dcmread{args[:1]} during open + load")

    monkeypatch.setattr(_header, "read_raw", counting_read_raw)
    monkeypatch.setattr(pydicom, "dcmread", no_dcmread)
    monkeypatch.setattr(pydicom.filereader, "dcmread", no_dcmread)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        da = dicomxr.open_series(path)
        values = da.values
    monkeypatch.undo()
    assert reads == {str(path): 1}
    assert da.sizes["slice"] * math.prod(
        n for d, n in da.sizes.items() if d not in ("slice", "row", "col")
    ) == (240)
    # the values are those pydicom decodes, frame by frame (an independent reader)
    ds = pydicom.dcmread(path)
    frames = ds.pixel_array
    first = da.isel({d: 0 for d in da.dims if d not in ("row", "col")})
    k = int(np.asarray(first["frame"]))
    slope = float(
        ds.PerFrameFunctionalGroupsSequence[k].PixelValueTransformationSequence[0].RescaleSlope
    )
    intercept = float(
        ds.PerFrameFunctionalGroupsSequence[k].PixelValueTransformationSequence[0].RescaleIntercept
    )
    np.testing.assert_allclose(
        values[(0,) * (values.ndim - 2)], frames[k] * slope + intercept, rtol=1e-6
    )


def _functional_group(ds: pydicom.Dataset, k: int, sequence: str) -> pydicom.Dataset | None:
    frame = ds.PerFrameFunctionalGroupsSequence[k]
    if sequence in frame:
        return frame[sequence][0]
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared and sequence in shared[0]:
        return shared[0][sequence][0]
    return None


def _enhanced_files(data_root: Path) -> list[str]:
    out = []
    for corpus in CORPORA:
        for p in sorted((data_root / corpus).rglob("*")):
            if p.is_file() and p.stat().st_size > 256:
                try:
                    ds = pydicom.dcmread(
                        p, stop_before_pixels=True, specific_tags=["NumberOfFrames"]
                    )
                except Exception:
                    continue
                if int(ds.get("NumberOfFrames", 1) or 1) > 1:
                    out.append(str(p))
    return out


def test_per_frame_table_equals_pydicom_functional_groups(data_root: Path) -> None:
    """The scan's per-frame values, against pydicom's own reading of every enhanced file."""
    checked = 0
    for path in _enhanced_files(data_root):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if "PerFrameFunctionalGroupsSequence" not in ds:
            continue
        row = catalog.read_header(path)
        table = row["per_frame"]
        n = len(ds.PerFrameFunctionalGroupsSequence)
        if n != int(ds.NumberOfFrames):
            assert isinstance(table, str) and "NumberOfFrames" in table
            continue
        assert isinstance(table, dict), (path, table)
        for k in range(n):
            pos = _functional_group(ds, k, "PlanePositionSequence")
            if pos is not None:
                want = tuple(float(v) for v in pos.ImagePositionPatient)
                assert table["ImagePositionPatient"][k] == pytest.approx(want), (path, k)
            orient = _functional_group(ds, k, "PlaneOrientationSequence")
            if orient is not None:
                want = tuple(float(v) for v in orient.ImageOrientationPatient)
                assert table["ImageOrientationPatient"][k] == pytest.approx(want), (path, k)
            content = _functional_group(ds, k, "FrameContentSequence")
            if content is not None and "DimensionIndexValues" in content:
                div = content.DimensionIndexValues
                want = tuple(int(v) for v in div) if hasattr(div, "__iter__") else int(div)
                assert table["DimensionIndexValues"][k] == want, (path, k)
            pvt = _functional_group(ds, k, "PixelValueTransformationSequence")
            if pvt is not None and "RescaleSlope" in pvt:
                assert table["RescaleSlope"][k] == pytest.approx(float(pvt.RescaleSlope))
        checked += 1
    assert checked >= 10, checked


def test_catalog_cache_keeps_the_per_frame_table(
    data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DICOMXR_CACHE_DIR", str(tmp_path / "cache"))
    path = data_root.joinpath(*PCASL)
    first = dicomxr.scan(path, cache=True)
    reads: list[str] = []
    real = catalog._read_one
    monkeypatch.setattr(
        catalog, "_read_one", lambda p, st, memo=None: reads.append(p) or real(p, st, memo)
    )
    second = dicomxr.scan(path, cache=True)
    assert reads == []
    pd.testing.assert_frame_equal(first, second)
    table = second["per_frame"].iat[0]
    assert all(isinstance(v, tuple) for v in table["ImagePositionPatient"])
    a = dicomxr.frames.expand(first)
    b = dicomxr.frames.expand(second)
    pd.testing.assert_frame_equal(a, b)


def test_a_file_changed_since_the_scan_is_reported(
    data_root: Path, tmp_path: Path, scanned
) -> None:
    """The per-frame table describes the file as scanned: a replaced file is not trusted."""
    src = data_root.joinpath(*PCASL)
    copy = tmp_path / src.name
    copy.write_bytes(src.read_bytes())
    cat = dicomxr.scan(copy)
    copy.write_bytes(src.read_bytes()[:-2] + b"\0\0")
    os.utime(copy, (1_000_000_000, 1_000_000_000))
    out = dicomxr.frames.expand(cat)
    assert len(out) == 240
    assert "changed since the scan" in out.attrs["frame_errors"][0]["reason"]
