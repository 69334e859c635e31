"""The package as a whole: light import, lazy public names, options, sample data, phantom writer."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest

import dicomxr
from dicomxr import data, phantom
from dicomxr.errors import MissingDependencyError, require

HEAVY = ("ipywidgets", "pynetdicom", "matplotlib", "distributed", "nibabel", "zarr", "IPython")


def test_import_is_light():
    # a fresh interpreter: importing dicomxr (and touching its version) must not pull in the
    # optional, heavy parts; they load on first use
    code = (
        "import sys, dicomxr; dicomxr.__version__; "
        f"print([m for m in {HEAVY!r} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_backend_module_is_light():
    # xarray imports every installed engine when it guesses one: ours must add nothing heavy
    # to the xarray (and its pandas) already imported by then
    code = (
        "import sys, xarray, dicomxr.backend; "
        f"print([m for m in {(*HEAVY, 'dask', 'pydicom', 'dicomxr.api')!r} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_public_names_resolve():
    assert set(dicomxr._LAZY) <= set(dicomxr.__all__)
    for name in dicomxr.__all__:
        assert getattr(dicomxr, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        dicomxr.nope  # noqa: B018


def test_options_context_manager_restores():
    before = dicomxr.get_options()["progress_min_files"]
    with dicomxr.set_options(progress_min_files=3):
        assert dicomxr.get_options()["progress_min_files"] == 3
    assert dicomxr.get_options()["progress_min_files"] == before
    with pytest.raises(ValueError, match="unknown option"):
        dicomxr.set_options(no_such_option=1)


def test_require_names_the_extra():
    with pytest.raises(MissingDependencyError, match=r"dicomxr\[nifti\]"):
        require("surely_not_an_installed_module", extra="nifti", purpose="Writing NIfTI")


def test_sample_is_unpacked_verified_and_complete(tmp_path, monkeypatch):
    monkeypatch.setenv("DICOMXR_CACHE_DIR", str(tmp_path))
    folder = data.sample_path()
    assert folder.is_relative_to(tmp_path)
    files = sorted(folder.glob("*.dcm"))
    assert len(files) == 240
    assert (folder / "LICENSE").read_text().startswith("BSD 2-Clause")
    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert ds.Modality == "MR" and (ds.Rows, ds.Columns) == (96, 96)
    # a second call reuses the unpacked folder and leaves no temporary folders behind
    assert data.sample_path() == folder
    assert [p.name for p in tmp_path.iterdir()] == [folder.parent.name]


def test_sample_archive_checksum_matches_registry():
    from importlib import resources

    sample = data.SAMPLES[data.DEFAULT_SAMPLE]
    archive = resources.files("dicomxr._data") / sample.archive
    assert hashlib.sha256(archive.read_bytes()).hexdigest() == sample.sha256
    with zipfile.ZipFile(archive) as zf:
        assert all(not Path(n).is_absolute() and ".." not in Path(n).parts for n in zf.namelist())


def test_unknown_sample_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown sample 'x'"):
        data.sample_path("x")


@pytest.mark.parametrize(
    "syntax", ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.5"]
)
def test_phantom_series_round_trips_through_pydicom(tmp_path, syntax):
    vol = phantom.phantom_volume((4, 20, 16))
    iop = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)  # sagittal
    files = phantom.write_series(
        tmp_path,
        vol,
        orientation=iop,
        slice_step=2.5,
        transfer_syntax=syntax,
        modality="MR",
        rescale=(1.0, 0.0),
    )
    normal = np.cross(iop[:3], iop[3:])
    for k, path in enumerate(files):
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == syntax
        np.testing.assert_array_equal(ds.pixel_array, vol[k])
        assert ds.pixel_array[0, 0] == k  # slice index is visible in the first pixel
        np.testing.assert_allclose(
            np.dot(np.asarray(ds.ImagePositionPatient, float), normal),
            np.dot([-100.0, -120.0, -50.0], normal) + 2.5 * k,
            atol=1e-5,
        )


def test_phantom_volume_is_not_symmetric():
    vol = phantom.phantom_volume((3, 8, 8))
    assert not np.array_equal(vol, vol[:, ::-1])
    assert not np.array_equal(vol, vol[:, :, ::-1])
    assert not np.array_equal(vol, vol.transpose(0, 2, 1))


def test_warnings_point_at_the_callers_line(tmp_path):
    # a damaged DICOM file beside a good series: the scan's warning must name the user's
    # line (here, this test), not a line deep inside dicomxr
    files = phantom.write_series(tmp_path, phantom.phantom_volume((3, 8, 8)))
    (tmp_path / "cut.dcm").write_bytes(files[0].read_bytes()[:700])  # header cut short
    with pytest.warns(dicomxr.SkippedFileWarning) as record:
        dicomxr.open_series(tmp_path)
    assert {Path(w.filename) for w in record} == {Path(__file__)}
