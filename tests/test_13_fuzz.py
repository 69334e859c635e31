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


# ---------------------------------------------------------------------------------------
# the folder test, for every mutation the fuzzer knows: 20 good slices + one hostile file

GOOD = 20
SERIES_UID = "1.2.826.0.1.3680043.10.1187.13.1"
_MUTATIONS = sorted(_load_fuzz().MUTATIONS)


@pytest.fixture(scope="module")
def twenty(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], Path, dict]:
    """20 good phantom slices, a 21st of the same series to mutate, pydicom's decode of each."""
    import pydicom

    from dicomxr.phantom import phantom_volume, write_series

    folder = tmp_path_factory.mktemp("twenty")
    paths = write_series(folder, phantom_volume((GOOD + 1, 16, 12)), series_uid=SERIES_UID)
    reference = {}
    for p in paths[:GOOD]:
        ds = pydicom.dcmread(p)
        slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        reference[p.name] = ds.pixel_array * slope + intercept
    return paths[:GOOD], paths[GOOD], reference


def _hostile_case(mutation: str, of: str, twenty: tuple, folder: Path) -> Path:
    """Lay out the 20 good slices and one hostile variant; return the path to be named."""
    import random

    fuzz = _load_fuzz()
    good, spare, _ = twenty
    folder.mkdir()
    for p in good:
        os.link(p, folder / p.name)
    rng = random.Random(f"{mutation}/{of}")
    if mutation.startswith("dicomdir"):  # a damaged file-set next to the series
        case = fuzz._dicomdir_case(0, rng, folder, SERIES_UID, (), loop=mutation.endswith("loop"))
        return Path(case.source)
    seeds = [s for s in fuzz.seed_files() if s.is_file()]
    seed = spare if of == "member" else rng.choice(seeds)
    hostile = folder / fuzz.HOSTILE
    try:
        fuzz.MUTATIONS[mutation](rng, seed.read_bytes(), seed, hostile)
    except Exception:  # a variant pydicom cannot write: the fuzzer falls back to byte flips
        if os.path.lexists(hostile):
            hostile.unlink()
        fuzz.m_flip(rng, seed.read_bytes(), seed, hostile)
    return hostile


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="FIFOs and sockets: Linux only")
@pytest.mark.parametrize("of", ["member", "foreign"])
@pytest.mark.parametrize("mutation", _MUTATIONS)
def test_twenty_good_slices_and_one_hostile_variant(
    mutation: str, of: str, twenty: tuple, tmp_path: Path
) -> None:
    """open_series returns the 20 good slices (pydicom's values) and names the bad file."""
    import warnings

    folder = tmp_path / "series"
    bad = _hostile_case(mutation, of, twenty, folder)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        df = dicomxr.scan(folder)
        plans = dicomxr.plan_series(df)
        da = dicomxr.open_series(folder, series=SERIES_UID)
        values = da.values
    loaded = [str(p) for p in np.ravel(da["path"].values)]
    _, _, reference = twenty
    for name, expected in reference.items():
        path = str(folder / name)
        assert path in loaded, f"good slice {name} is not in the volume"
        np.testing.assert_allclose(values[loaded.index(path)], expected)
    # the bad file is named: skipped, set apart, in a series of its own, loaded, or warned
    named = {s["path"] for s in df.attrs["skipped"]}
    named |= set(plans.set_apart["path"]) if len(plans.set_apart) else set()
    named |= {p for plan in plans for p in plan.frames["path"]}
    named |= set(loaded)
    warned = any(str(bad) in str(w.message) for w in caught)
    assert str(bad) in named or warned, f"{bad.name} ({mutation}) is named nowhere"


# ---------------------------------------------------------------------------------------
# documented errors only: every public function over the fuzz corpus


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="FIFOs and sockets: Linux only")
@pytest.mark.parametrize("mutation", _MUTATIONS)
def test_public_functions_raise_only_documented_errors(
    mutation: str, twenty: tuple, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Only DicomxrError, OSError for a path that does not exist, or Ctrl-C may escape."""
    import contextlib
    import warnings

    from dicomxr.cli import main

    folder = tmp_path / "series"
    bad = _hostile_case(mutation, "foreign", twenty, folder)
    calls = {
        "scan": lambda src: dicomxr.scan(src),
        "plan_series": lambda src: dicomxr.plan_series(dicomxr.scan(src)),
        "open_series": lambda src: dicomxr.open_series(src).values,
        "open_study": lambda src: dicomxr.open_study(src),
        "anatomy": lambda src: str(dicomxr.anatomy(src)),
        "cli scan": lambda src: main(["scan", str(src), "--no-progress"]),
        "cli info": lambda src: main(["info", str(src), "--no-progress"]),
        "cli anatomy": lambda src: main(["anatomy", str(src), "--no-color"]),
    }
    escaped = []
    for name, call in calls.items():
        for src in (bad, folder):
            if name.endswith("anatomy") and src == folder:
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    with contextlib.redirect_stdout(None):
                        call(src)
                except dicomxr.DicomxrError:
                    pass
                except OSError:
                    if os.path.exists(src):
                        escaped.append(f"{name}({src.name}): OSError for a path that exists")
                except SystemExit as exc:  # argparse usage errors only
                    escaped.append(f"{name}({src.name}): SystemExit {exc.code}")
                except Exception as exc:
                    escaped.append(f"{name}({src.name}): {type(exc).__name__}: {exc}")
    capsys.readouterr()
    assert not escaped, "\n".join(escaped)
