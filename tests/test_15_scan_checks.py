"""The scan's per-file geometry checks, against their definition written here with numpy.

The scan blanks an ImageOrientationPatient that is not two finite, unit-ish (norm in
0.5..1.5), non-parallel (``|cos| < 0.5``) cosines, an ImagePositionPatient that is not three
finite numbers and a PixelSpacing that is not two finite positive numbers. The scan decides
that for plain floats without numpy (it runs for every file); these tests hold it to the
definition on random values, on values at the thresholds, and through ``scan`` of files
written by pydicom.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

import dicomxr
from dicomxr import catalog


def _reference_orientation(iop) -> bool:
    v = np.asarray(iop, dtype=np.float64)
    if v.shape != (6,) or not np.isfinite(v).all() or np.abs(v).max() > 10:
        return False
    row, col = v[:3], v[3:]
    nr, nc = np.sqrt(row @ row), np.sqrt(col @ col)
    if not (0.5 < nr < 1.5 and 0.5 < nc < 1.5):
        return False
    return bool(abs(row @ col) / (nr * nc) < 0.5)


def _orientations() -> list[tuple]:
    rng = np.random.default_rng(20261204)
    out: list[tuple] = [tuple(map(float, v)) for v in rng.uniform(-1.6, 1.6, (4000, 6))]
    # unit rows and columns at every angle, so that the cosine test meets 0.5 from both sides
    for angle in np.linspace(0, np.pi, 721):
        out.append((1.0, 0.0, 0.0, float(np.cos(angle)), float(np.sin(angle)), 0.0))
    # norms exactly at, and one rounding step either side of, the thresholds
    for norm in (0.5, 1.5):
        for x in (np.nextafter(norm, 0), norm, np.nextafter(norm, 2)):
            out.append((float(x), 0.0, 0.0, 0.0, 1.0, 0.0))
            out.append((0.0, 1.0, 0.0, 0.0, 0.0, float(x)))
    # cos exactly 0.5 (60 degrees in exact binary: rows (1, 0, 0), columns (0.5, y, 0))
    out.append((1.0, 0.0, 0.0, 0.5, math.sqrt(0.75), 0.0))
    out += [
        (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
        (1.0, 0.0, 0.0, 1.0, 0.0, 0.0),  # parallel
        (0.0, 0.0, 0.0, 0.0, 1.0, 0.0),  # zero row
        (1.0, 0.0, 0.0, 0.0, 1.0, math.nan),
        (1.0, 0.0, 0.0, 0.0, math.inf, 0.0),
        (11.0, 0.0, 0.0, 0.0, 1.0, 0.0),
        (1e-300, 0.0, 0.0, 0.0, 1.0, 0.0),
        (1.0, 0.0, 0.0, 0.0, 1.0),  # five values
        (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0),  # seven
        (1, 0, 0, 0, 1, 0),  # ints
        [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],  # a list
        (np.float64(1.0), 0.0, 0.0, 0.0, 1.0, 0.0),
    ]
    return out


def test_plausible_orientation_follows_its_definition() -> None:
    for iop in _orientations():
        assert catalog.plausible_orientation(iop) == _reference_orientation(iop), iop


def _write(path: Path, **attrs) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID = "1.2.3.4"
    ds.Modality = "CT"
    for name, value in attrs.items():
        setattr(ds, name, value)
    ds.save_as(path, enforce_file_format=True)


@pytest.mark.filterwarnings("ignore:Invalid value for VR DS")  # pydicom, writing NaN/inf
@pytest.mark.parametrize(
    ("attrs", "blanked"),
    [
        ({"ImageOrientationPatient": [1, 0, 0, 0, 1, 0]}, None),
        ({"ImageOrientationPatient": [1, 0, 0, 1, 0, 0]}, "ImageOrientationPatient"),
        ({"ImageOrientationPatient": [1, 0, 0, 0, 1]}, "ImageOrientationPatient"),
        ({"ImageOrientationPatient": ["1", "0", "0", "0", "1", "NaN"]}, "ImageOrientationPatient"),
        ({"ImagePositionPatient": [-10.5, 3, 100]}, None),
        ({"ImagePositionPatient": [1, 2]}, "ImagePositionPatient"),
        ({"ImagePositionPatient": ["1", "inf", "3"]}, "ImagePositionPatient"),
        ({"PixelSpacing": [0.5, 0.75]}, None),
        ({"PixelSpacing": [0, 0.75]}, "PixelSpacing"),
        ({"PixelSpacing": [-1, 0.75]}, "PixelSpacing"),
        ({"PixelSpacing": [0.5]}, "PixelSpacing"),
        ({"PixelSpacing": ["0.5", "NaN"]}, "PixelSpacing"),
    ],
)
def test_scan_blanks_impossible_geometry(tmp_path: Path, caplog, attrs, blanked) -> None:
    path = tmp_path / "one.dcm"
    _write(path, **attrs)
    with caplog.at_level(logging.WARNING, logger="dicomxr.catalog"):
        df = dicomxr.scan(path, progress=False)
    ((name, written),) = attrs.items()
    value = df[name].iloc[0]
    if blanked is None:
        assert isinstance(value, tuple)
        assert value == tuple(float(v) for v in written)
        assert not caplog.records
    else:
        assert value is None
        assert any(name in r.getMessage() for r in caplog.records)
