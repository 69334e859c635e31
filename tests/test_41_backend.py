"""The xarray "dicom" engine: thin, explicit, cheap to import, same objects as the API."""

from __future__ import annotations

import inspect
import subprocess
import sys

import numpy as np
import pytest
import xarray as xr

from dicomxr import phantom
from dicomxr.api import open_series


@pytest.fixture(scope="module")
def series_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("engine")
    vol = phantom.phantom_volume((6, 10, 12), dtype="int16", seed=4)
    files = phantom.write_series(root / "one", vol, series_number=3, rescale=(1.0, 0.0))
    vol2 = phantom.phantom_volume((4, 8, 8), dtype="int16", seed=5)
    phantom.write_series(root / "two", vol2, series_number=4, rescale=(1.0, 0.0))
    return root, vol, files


def _engine():
    return xr.backends.list_engines()["dicom"]


def test_engine_is_registered_and_described():
    engine = _engine()
    assert engine.description
    assert engine.url.startswith("https://")


def test_signature_is_explicit():
    engine = type(_engine())
    for method in (engine.open_dataset, engine.open_datatree):
        params = inspect.signature(method).parameters
        assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        assert "chunks" not in params and "cache" not in params
        for name, p in params.items():
            if name not in ("self", "filename_or_obj"):
                assert p.kind is inspect.Parameter.KEYWORD_ONLY, name


def test_guess_can_open(series_dir, tmp_path):
    _, _, files = series_dir
    engine = _engine()
    assert engine.guess_can_open(files[0])
    assert engine.guess_can_open(str(files[0]))
    text = tmp_path / "notes.dcm"
    text.write_text("not DICOM at all" * 20)
    assert not engine.guess_can_open(text)
    assert engine.guess_can_open(tmp_path / "DICOMDIR")
    assert not engine.guess_can_open(tmp_path / "missing.dcm")
    assert not engine.guess_can_open(object())


def test_open_dataset_matches_api(series_dir):
    root, vol, files = series_dir
    ds = xr.open_dataset(root / "one", engine="dicom")
    assert list(ds.data_vars) == ["image"]
    da = open_series(root / "one")
    xr.testing.assert_identical(
        ds["image"].reset_coords(drop=True).load(),
        da.reset_coords(drop=True).load().rename("image"),
    )
    np.testing.assert_array_equal(ds["image"].values, vol)
    assert ds.attrs["SeriesNumber"] == 3
    # a single file is guessed without naming the engine
    one = xr.open_dataset(files[0])
    assert one["image"].sizes["slice"] == 1


def test_open_dataset_series_and_drop(series_dir):
    root, *_ = series_dir
    ds = xr.open_dataset(root, engine="dicom", series=4, drop_variables=["path"])
    assert ds["image"].sizes["slice"] == 4
    assert "path" not in ds.variables


def test_chunks_follow_storage(series_dir):
    root, vol, _ = series_dir
    ds = xr.open_dataset(root / "one", engine="dicom", chunks={})
    assert ds["image"].chunks[0] == (1,) * 6
    assert ds["image"].encoding["preferred_chunks"] == {"slice": 1, "row": 10, "col": 12}
    np.testing.assert_array_equal(ds["image"].values, vol)


def test_no_chunks_means_no_dask(series_dir, monkeypatch):
    """xarray's own lazy indexing over the backend array: .values is one full read."""
    import dask.array

    from dicomxr import _array

    root, vol, _ = series_dir
    calls = []
    real = _array.FrameGrid.read_all
    monkeypatch.setattr(_array.FrameGrid, "read_all", lambda s: calls.append(1) or real(s))
    ds = xr.open_dataset(root / "one", engine="dicom")
    assert not isinstance(ds["image"].variable._data, dask.array.Array)
    assert ds["image"].chunks is None and not any(
        isinstance(v._data, dask.array.Array) for v in ds.variables.values()
    )
    np.testing.assert_array_equal(ds["image"].isel(slice=2).values, vol[2])
    assert calls == []
    np.testing.assert_array_equal(ds["image"].values, vol)
    assert calls == [1]


def test_open_datatree(series_dir):
    root, *_ = series_dir
    tree = xr.open_datatree(root, engine="dicom")
    leaves = list(tree.leaves)
    assert len(leaves) == 2
    assert all("image" in leaf.dataset for leaf in leaves)


def test_engine_module_import_is_light():
    """xarray imports every engine when it guesses one: the engine adds nothing heavy to it."""
    code = (
        "import sys, xarray; before = set(sys.modules); import dicomxr.backend; "
        "heavy = ('dask', 'pydicom', 'dicomxr.api', 'dicomxr._array', 'dicomxr.catalog'); "
        "print(sorted(m for m in set(sys.modules) - before if m.split('.')[0] in heavy "
        "or m in heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_open_groups_and_stored_values(series_dir):
    root, vol, _ = series_dir
    groups = xr.open_groups(root, engine="dicom")
    images = [ds for ds in groups.values() if "image" in ds]
    assert len(images) == 2
    raw = xr.open_dataset(root / "one", engine="dicom", rescale=False)
    np.testing.assert_array_equal(raw["image"].values, vol)


def test_engine_passes_on_duplicate_through(tmp_path):
    from dicomxr import phantom
    from dicomxr.errors import GeometryError

    vol = phantom.phantom_volume((4, 8, 8))
    origin = np.array([-100.0, -120.0, -50.0])
    positions = [
        origin,
        origin + np.array([0.0, 0.0, 1]),
        origin + np.array([0.0, 0.0, 1]),
        origin + np.array([0.0, 0.0, 2]),
    ]
    phantom.write_series(tmp_path, vol, positions=positions)
    with pytest.raises(GeometryError, match="duplicate"):
        xr.open_dataset(tmp_path, engine="dicom", on_duplicate="raise")
    assert "on_duplicate" in xr.backends.list_engines()["dicom"].open_dataset_parameters
