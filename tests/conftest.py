"""Shared fixtures: where the real corpora are, and the embedded sample.

The real scanner corpora live outside the repository (``../shared/data`` from the project
root, or ``$DICOMXR_TEST_DATA``). Tests that need them fail loudly when the folder is missing:
a green run without the real data would prove nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# loopback PACS peers (Orthanc, dcmqrscp) for the network tests; imports nothing heavy
pytest_plugins = ["net_fixtures"]

ROOT = Path(__file__).resolve().parents[1]


def _data_root() -> Path:
    return Path(os.environ.get("DICOMXR_TEST_DATA", ROOT.parent / "shared" / "data")).resolve()


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The folder of real corpora; fails (never skips) when it is missing."""
    root = _data_root()
    if not (root / "README.md").is_file():
        pytest.fail(
            f"real DICOM corpora not found at {root}: set DICOMXR_TEST_DATA to the folder "
            "holding dcm_qa_ct/, dcm_qa_philips_enh/, dcm_qa_ts/, dicomParser/, suyashkumar_dicom/",
            pytrace=False,
        )
    return root


@pytest.fixture(scope="session")
def philips_ct(data_root: Path) -> Path:
    """140 x 512^2 Philips head CT, 1 mm (the load benchmark)."""
    return data_root / "dcm_qa_ct" / "In" / "Philips" / "S21570" / "S2020"


@pytest.fixture()
def ct_slices(philips_ct: Path, tmp_path: Path):
    """Copy the first ``n`` slices of :func:`philips_ct` into ``tmp_path/ct`` (``slice00.dcm``...).

    A factory: ``ct_slices(n)`` returns the folder, which tests may change freely.
    """
    import shutil

    def copy(n: int) -> Path:
        files = sorted(philips_ct.glob("I*"), key=lambda p: int(p.name[1:]))[:n]
        out = tmp_path / "ct"
        out.mkdir()
        for i, f in enumerate(files):
            shutil.copy(f, out / f"slice{i:02d}.dcm")
        return out

    return copy


@pytest.fixture(scope="session")
def ge_tilt_ct(data_root: Path) -> Path:
    """GE CT with gantry tilt +18.5 degrees and a spacing change mid-series."""
    return data_root / "dcm_qa_ct" / "In" / "GE"


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    """The embedded sample series (Philips pCASL 4D, 240 files)."""
    from dicomxr import data

    return data.sample_path()


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Where tests keep artifacts (screenshots, rendered pages) for people to look at."""
    path = Path(os.environ.get("DICOMXR_ARTIFACTS", ROOT / "test-artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def scanned():
    """``dicomxr.scan`` cached per source string, shared by the tests of a session.

    Scans only read headers, but the real corpora are large enough that scanning them once
    per test would dominate the test time. Tests must not modify the returned frames.
    """
    import functools

    import dicomxr

    @functools.cache
    def _scan(source: str):
        return dicomxr.scan(source, progress=False, warn=False)

    return _scan
