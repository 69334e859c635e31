"""Hostile input, fuzzed: a bounded mutation campaign and property tests (issue 12).

The campaign (``bench/fuzz.py``, fixed seed) lays out folders of good phantom slices plus
one file damaged by one mutation, and runs each through ``scan``, ``open_series(...).values``,
``open_study``, ``anatomy`` and the CLI in a forked worker with an address-space limit and
a timeout. Only two outcomes pass: it worked, or a documented dicomxr error said what is
wrong. ``python bench/fuzz.py --runs N --seed S`` runs a longer campaign on demand.
"""

from __future__ import annotations

import importlib
import math
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dicomxr
from dicomxr import geometry

_FUZZ = Path(__file__).parents[1] / "bench" / "fuzz.py"
# CI budget: cases are drawn for this many seconds (two workers), then the campaign ends
CAMPAIGN_SECONDS = float(os.environ.get("DICOMXR_FUZZ_SECONDS", "75"))


def _load_fuzz():
    # imported by its own name from bench/: the fork server that runs the cases imports it so
    if str(_FUZZ.parent) not in sys.path:
        sys.path.insert(0, str(_FUZZ.parent))
    return importlib.import_module("fuzz")


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="fork, FIFOs and RLIMIT_AS: Linux only")
def test_fuzz_campaign_finds_only_worked_or_clean_errors(data_root: Path) -> None:
    fuzz = _load_fuzz()
    outcomes = fuzz.run_campaign(400, 20261204, jobs=2, timeout=30, budget=CAMPAIGN_SECONDS)
    counts = fuzz.counts(outcomes)
    bad = [fuzz.describe(o) for o in outcomes if o.outcome in fuzz.BAD]
    assert len(outcomes) >= 20, counts
    assert not bad, f"{counts}\n" + "\n".join(bad[:20])


# ---------------------------------------------------------------------------------------
# the header reader: any bytes -> a catalog row or a skipped row, never an exception

_PREFIXES = (b"", b"\0" * 128 + b"DICM")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prefix=st.sampled_from(_PREFIXES), body=st.binary(max_size=600))
def test_any_bytes_scan_to_a_row_or_a_reason(prefix: bytes, body: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "any.dcm"
        path.write_bytes(prefix + body)
        df = dicomxr.scan(path, warn=False)
        skipped = df.attrs["skipped"]
        assert len(df) + len(skipped) == 1
        assert all(s["reason"] for s in skipped)


def _element(tag: tuple[int, int], vr: bytes, value: bytes) -> bytes:
    import struct

    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT"):
        return struct.pack("<HH", *tag) + vr + b"\0\0" + struct.pack("<I", len(value)) + value
    return struct.pack("<HH", *tag) + vr + struct.pack("<H", len(value)) + value


_META = b"\0" * 128 + b"DICM" + _element((0x0002, 0x0010), b"UI", b"1.2.840.10008.1.2.1\0")
_TAGS = st.sampled_from(
    [(0x0008, 0x0016), (0x0008, 0x0018), (0x0020, 0x000E), (0x0020, 0x0032), (0x0020, 0x0037),
     (0x0028, 0x0010), (0x0028, 0x0011), (0x0028, 0x0008), (0x0009, 0x1001), (0x7FE0, 0x0010)]
)  # fmt: skip
_VRS = st.sampled_from([b"UI", b"DS", b"US", b"IS", b"CS", b"SQ", b"OB", b"UN", b"LO", b"zz"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(_TAGS, _VRS, st.binary(max_size=40)), min_size=1, max_size=8))
def test_well_formed_meta_with_any_elements(elements: list) -> None:
    """Plausible element headers with any values, VRs and order: still a row or a reason."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "elements.dcm"
        path.write_bytes(_META + b"".join(_element(t, vr, v) for t, vr, v in elements))
        df = dicomxr.scan(path, warn=False)
        assert len(df) + len(df.attrs["skipped"]) == 1


# ---------------------------------------------------------------------------------------
# geometry: random orientation, spacing and positions -> the affine maps indices back


def _rotation(a: float, b: float, c: float) -> np.ndarray:
    ca, sa, cb, sb, cc, sc = map(
        float, (np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(c), np.sin(c))
    )
    rz = np.array([[ca, -sa, 0], [sa, ca, 0], [0, 0, 1]])
    ry = np.array([[cb, 0, sb], [0, 1, 0], [-sb, 0, cb]])
    rx = np.array([[1, 0, 0], [0, cc, -sc], [0, sc, cc]])
    return rz @ ry @ rx


_ANGLE = st.floats(-math.pi, math.pi, allow_nan=False)
_SPACING = st.floats(0.05, 20.0, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(
    angles=st.tuples(_ANGLE, _ANGLE, _ANGLE),
    row_sp=_SPACING,
    col_sp=_SPACING,
    step=st.floats(-10.0, 10.0, allow_nan=False).filter(lambda s: abs(s) > 1e-3),
    origin=st.tuples(*[st.floats(-500, 500, allow_nan=False)] * 3),
    n=st.integers(2, 40),
)
def test_affine_round_trips_slice_positions(angles, row_sp, col_sp, step, origin, n) -> None:
    rot = _rotation(*angles)
    row_dir, col_dir, normal = rot[:, 0], rot[:, 1], rot[:, 2]
    positions = np.asarray(origin) + np.arange(n)[:, None] * step * normal
    iop = np.concatenate([row_dir, col_dir])
    affine = geometry.affine_from_positions(positions, iop, (row_sp, col_sp))
    k = np.arange(n)
    index = np.stack([k, np.zeros(n), np.zeros(n), np.ones(n)])
    np.testing.assert_allclose((affine @ index)[:3].T, positions, atol=1e-6 * (1 + abs(step) * n))
    # a pixel (r, c) of slice k sits at position_k + r * row_sp * col_dir + c * col_sp * row_dir
    r, c = 3.0, 5.0
    expected = positions[-1] + r * row_sp * col_dir + c * col_sp * row_dir
    np.testing.assert_allclose(
        affine @ [n - 1, r, c, 1], [*expected, 1], atol=1e-6 * (1 + abs(step) * n)
    )
    np.testing.assert_allclose(
        np.linalg.inv(affine) @ [*positions[n // 2], 1], [n // 2, 0, 0, 1], atol=1e-6
    )
