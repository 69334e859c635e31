"""Files dicomxr writes get the user's umask permissions, like any tool's (issue 11, item 8).

Every writer still writes atomically (a temporary name in the destination folder, then
``os.replace``); the temporary file used to keep ``mkstemp``'s private 0600 mode. Each test runs
under umask 022 and 077 and checks the mode of what was written.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import dicomxr
from dicomxr._files import atomic_path, current_umask, umask_mode


@pytest.fixture(params=[0o022, 0o077], ids=["umask022", "umask077"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    """Run the test under a umask, restored afterwards."""
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _file_mode(mask: int) -> int:
    return 0o666 & ~mask


def _no_leftovers(folder: Path) -> None:
    assert not [p.name for p in folder.iterdir() if ".tmp" in p.name or p.name.endswith(".part")]


@pytest.fixture(scope="module")
def sample() -> object:
    return dicomxr.open_series(dicomxr.data.sample_path())


def test_umask_read_without_change(umask: int) -> None:
    assert current_umask() == umask
    assert current_umask() == umask  # reading it did not change it
    assert umask_mode() == _file_mode(umask)
    assert umask_mode(directory=True) == 0o777 & ~umask


def test_atomic_path_failure_leaves_nothing(tmp_path: Path, umask: int) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("writer failed")
    assert target.read_text() == "old"
    _no_leftovers(tmp_path)


def test_nifti_and_sidecars_mode(tmp_path: Path, umask: int, data_root: Path) -> None:
    files = sorted((data_root / "dcm_qa_philips_enh" / "In" / "cl").glob("2301_*.dcm"))
    dwi = dicomxr.open_series([str(p) for p in files])
    out = dwi.dicom.to_nifti(tmp_path / "dwi.nii.gz", sidecar=True)
    written = sorted(tmp_path.iterdir())
    assert {p.name for p in written} >= {"dwi.nii.gz", "dwi.bval", "dwi.bvec", "dwi.json"}, written
    assert Path(out).exists()
    for path in written:
        assert _mode(path) == _file_mode(umask), path.name
    _no_leftovers(tmp_path)


def test_zarr_store_mode(tmp_path: Path, umask: int, sample) -> None:
    pytest.importorskip("zarr")
    store = sample.isel(time=0, label=0).dicom.to_zarr(tmp_path / "s.zarr")
    assert _mode(store) == 0o777 & ~umask
    files = [p for p in store.rglob("*") if p.is_file()]
    assert files
    for path in files:
        assert _mode(path) == _file_mode(umask), path
    for path in [p for p in store.rglob("*") if p.is_dir()]:
        assert _mode(path) == 0o777 & ~umask, path
    _no_leftovers(tmp_path)


def test_montage_png_mode(tmp_path: Path, umask: int, sample) -> None:
    from dicomxr.viewer import montage

    path = montage(sample, n=2).save(tmp_path / "m.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert _mode(path) == _file_mode(umask)
    _no_leftovers(tmp_path)


def test_fetched_dicom_mode(tmp_path: Path, umask: int) -> None:
    from dicomxr.net.storage import DicomStorage

    storage = DicomStorage(tmp_path)
    whole = storage.write("1.2.3", "1.2.3.4", "1.2.3.4.5", b"\0" * 132)
    writer = storage.open_instance("1.2.3", "1.2.3.4", "1.2.3.4.6", b"\0" * 128)
    writer.write(b"DICM")
    streamed = writer.commit()
    for path in (whole, streamed):
        assert _mode(path) == _file_mode(umask), path
    _no_leftovers(whole.parent)


def test_demo_outputs_mode(tmp_path: Path, umask: int) -> None:
    env = dict(os.environ, MPLBACKEND="Agg")
    proc = subprocess.run(
        [sys.executable, "-m", "dicomxr", "demo"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = tmp_path / "dicomxr-demo"
    written = [p for p in out.iterdir() if p.is_file()]
    assert {p.name for p in written} >= {"montage.png", "sample.nii.gz"}
    for path in written:
        assert _mode(path) == _file_mode(umask), path.name


def test_demo_folder_is_git_ignored() -> None:
    root = Path(__file__).resolve().parents[1]
    lines = (root / ".gitignore").read_text().splitlines()
    assert any(line.strip().rstrip("/").lstrip("/") == "dicomxr-demo" for line in lines)


def test_helper_keeps_content(tmp_path: Path) -> None:
    with atomic_path(tmp_path / "a.npy", suffix=".npy") as tmp:
        np.save(tmp, np.arange(3))
    assert np.load(tmp_path / "a.npy").tolist() == [0, 1, 2]
