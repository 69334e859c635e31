"""The lazy array: values against pydicom, laziness (file reads counted), pickling, dtypes.

Plans here are minimal stand-ins with the documented ``SeriesPlan`` fields (``frames``,
``grid``, ``frame_shape``) built from pydicom headers, so that this layer is tested on its
own; the end-to-end laziness of ``open_series`` is tested here too once the series layer
exists.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import shutil
import threading
import warnings
from pathlib import Path
from types import SimpleNamespace

import dask
import dask.array as da
import numpy as np
import pandas as pd
import pydicom
import pytest
import xarray as xr
from xarray.core import indexing

from dicomxr import _array, pixels
from dicomxr.phantom import phantom_volume, write_series


def _stand_in_plan(files: list[Path], *, shape: tuple[int, ...] | None = None) -> SimpleNamespace:
    """Frames sorted along z (axial series), grid = row order, from pydicom headers."""
    rows = []
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        for ref in pixels.file_frame_refs(f):
            rows.append(
                {
                    **ref.as_dict(),
                    "RescaleSlope": float(ds.get("RescaleSlope", 1.0)),
                    "RescaleIntercept": float(ds.get("RescaleIntercept", 0.0)),
                    "z": float(ds.ImagePositionPatient[2]) if "ImagePositionPatient" in ds else 0,
                    "mtime": os.stat(f).st_mtime,
                }
            )
    frames = pd.DataFrame(rows).sort_values(["z", "path", "frame"], ignore_index=True)
    grid = np.arange(len(frames)).reshape(shape or (len(frames),))
    first = pixels.FrameRef.from_row(frames.iloc[0])
    return SimpleNamespace(
        frames=frames, grid=grid, frame_shape=pixels.frame_shape(first), dims=("slice",)
    )


def _pydicom_volume(plan: SimpleNamespace) -> np.ndarray:
    """Independent reference: dcmread + pixel_array + rescale in float64, per grid cell."""
    out = np.full(plan.grid.shape + tuple(plan.frame_shape), np.nan)
    for pos in np.ndindex(*plan.grid.shape):
        i = plan.grid[pos]
        if i < 0:
            continue
        row = plan.frames.iloc[i]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = pydicom.dcmread(row["path"]).pixel_array
        if int(row["NumberOfFrames"]) > 1:
            arr = arr[int(row["frame"])]
        out[pos] = arr * row["RescaleSlope"] + row["RescaleIntercept"]
    return out


@pytest.fixture(scope="module")
def ct_files(philips_ct: Path) -> list[Path]:
    return sorted(p for p in philips_ct.iterdir() if p.name != "DIRFILE")


@pytest.fixture(scope="module")
def ct_plan(ct_files: list[Path]) -> SimpleNamespace:
    return _stand_in_plan(ct_files)


@pytest.fixture(scope="module")
def ct_reference(ct_plan: SimpleNamespace) -> np.ndarray:
    return _pydicom_volume(ct_plan)


class _Counter:
    """Counts pixels.read_frame calls and files opened by the pixels module."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.frames = 0
        self.opens: list[str] = []
        self._lock = threading.Lock()
        real_read, real_open = pixels.read_frame, open

        def read_frame(ref, **kwargs):
            with self._lock:
                self.frames += 1
            return real_read(ref, **kwargs)

        def counting_open(path, *args, **kwargs):
            with self._lock:
                self.opens.append(os.fspath(path))
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr(pixels, "read_frame", read_frame)
        monkeypatch.setattr(pixels, "open", counting_open, raising=False)


def test_full_compute_equals_pydicom(ct_plan, ct_reference) -> None:
    arr = _array.lazy_array(ct_plan)
    assert arr.shape == (140, 512, 512)
    assert arr.chunks[0] == (1,) * 140 and arr.chunks[1:] == ((512,), (512,))
    # stored uint16 (12 bits) with intercept -1024: int16 is exact
    assert arr.dtype == np.int16
    values = arr.compute()
    assert isinstance(values, np.ndarray) and values.dtype == np.int16
    np.testing.assert_array_equal(values, ct_reference)


def test_opening_reads_nothing_and_one_slice_reads_one_frame(
    ct_plan, ct_reference, monkeypatch
) -> None:
    count = _Counter(monkeypatch)
    arr = _array.lazy_array(ct_plan)
    assert count.frames == 0 and count.opens == []
    one = arr[70].compute()
    assert count.frames == 1 and len(count.opens) == 1
    assert count.opens[0] == ct_plan.frames["path"].iloc[70]
    np.testing.assert_array_equal(one, ct_reference[70])
    arr[10, 100:200, 7].compute()
    assert count.frames == 2 and len(count.opens) == 2


def test_xarray_isel_reads_one_frame(ct_plan, ct_reference, monkeypatch) -> None:
    count = _Counter(monkeypatch)
    da_ = xr.DataArray(_array.lazy_array(ct_plan), dims=("slice", "row", "col"))
    assert count.frames == 0
    values = da_.isel(slice=3).values
    assert count.frames == 1
    np.testing.assert_array_equal(values, ct_reference[3])


class _Reads:
    """Counts FrameGrid.read_all and FrameGrid.read_block calls (the two ways frames are read)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.full = 0
        self.blocks: list[int] = []  # frames per read_block call
        real_all, real_block = _array.FrameGrid.read_all, _array.FrameGrid.read_block

        def read_all(spec):
            self.full += 1
            return real_all(spec)

        def read_block(spec, index):
            self.blocks.append(int(np.size(spec.grid[index])))
            return real_block(spec, index)

        monkeypatch.setattr(_array.FrameGrid, "read_all", read_all)
        monkeypatch.setattr(_array.FrameGrid, "read_block", read_block)


def test_full_read_is_one_threaded_read_into_one_array(ct_plan, ct_reference, monkeypatch) -> None:
    """One chunk for the series: a compute is one read_all, no per-frame tasks, no copy."""
    reads = _Reads(monkeypatch)
    arr = _array.lazy_array(ct_plan, chunks="series")
    assert arr.chunks == ((140,), (512,), (512,))
    values = arr.compute()
    assert reads.full == 1 and reads.blocks == []
    assert values.base is None  # the preallocated array itself, no concatenated copy
    np.testing.assert_array_equal(values, ct_reference)
    # dask fuses a selection into one read of the frames it touches
    np.testing.assert_array_equal((arr[:3] + 1).compute(), ct_reference[:3] + 1)
    np.testing.assert_array_equal(arr[70, 5:9].compute(), ct_reference[70, 5:9])
    assert reads.full == 1 and reads.blocks == [3, 1]
    # one frame per chunk: one block read per frame
    reads.blocks.clear()
    np.testing.assert_array_equal(_array.lazy_array(ct_plan)[:4].compute(), ct_reference[:4])
    assert reads.full == 0 + 1 and reads.blocks == [1, 1, 1, 1]


def test_one_chunk_pipelines_and_per_frame_rechunk(ct_plan, ct_reference, monkeypatch) -> None:
    """The documented trade-off: a lazy pipeline selected late computes the whole chunk.

    ``.chunk({"slice": 1})`` first is fused by dask into a one-frame read when one frame is
    computed; for more, per-frame chunks from the start (``chunks={}``) read only those.
    """
    count = _Counter(monkeypatch)
    image = xr.DataArray(_array.lazy_array(ct_plan, chunks="series"), dims=("slice", "row", "col"))
    np.testing.assert_array_equal((image * 2).isel(slice=5).values, 2 * ct_reference[5])
    assert count.frames == 140
    count.frames = 0
    per_frame = image.chunk({"slice": 1})
    np.testing.assert_array_equal((per_frame * 2).isel(slice=5).values, 2 * ct_reference[5])
    assert count.frames == 1
    count.frames = 0
    preferred = xr.DataArray(_array.lazy_array(ct_plan, chunks={}), dims=image.dims)
    assert preferred.chunks[0] == (1,) * 140
    np.testing.assert_array_equal((preferred * 2)[[8, 9, 60]].values, 2 * ct_reference[[8, 9, 60]])
    assert count.frames == 3


def test_lazy_array_is_a_plain_dask_array_xarray_can_mix(ct_plan, ct_reference) -> None:
    """xarray refuses to mix chunked array types: the lazy array must be dask's own class."""
    arr = _array.lazy_array(ct_plan)
    assert type(arr) is dask.array.Array
    image = xr.DataArray(arr, dims=("slice", "row", "col"))
    both = xr.Dataset({"image": image, "double": image * 2}).isel(slice=[0, 70]).compute()
    np.testing.assert_array_equal(both["double"].values, 2 * ct_reference[[0, 70]])
    chunked = image.assign_coords(k=("slice", dask.array.arange(140, chunks=10)))
    assert chunked.isel(slice=5).compute().k.item() == 5


def test_compute_with_other_collections(ct_plan, ct_reference) -> None:
    arr = _array.lazy_array(ct_plan)
    whole, part, total = dask.compute(arr, arr[5:7], arr[0].sum())
    np.testing.assert_array_equal(whole, ct_reference)
    np.testing.assert_array_equal(part, ct_reference[5:7])
    assert total == ct_reference[0].sum()


def test_name_is_deterministic_and_follows_mtime(ct_files, tmp_path) -> None:
    for f in ct_files[:3]:
        shutil.copy2(f, tmp_path / f.name)
    files = sorted(tmp_path.iterdir())
    a = _array.lazy_array(_stand_in_plan(files))
    b = _array.lazy_array(_stand_in_plan(files))
    assert a.name == b.name
    os.utime(files[1], (1_000_000_000, 1_000_000_000))
    c = _array.lazy_array(_stand_in_plan(files))
    assert c.name != a.name
    assert _array.lazy_array(_stand_in_plan(files), dtype="float32").name != c.name


def test_pickle_round_trip(ct_plan, ct_reference) -> None:
    arr = _array.lazy_array(ct_plan)
    again = pickle.loads(pickle.dumps(arr))
    assert isinstance(again, da.Array) and again.name == arr.name
    np.testing.assert_array_equal(again[4].compute(), ct_reference[4])
    np.testing.assert_array_equal(again.compute(), ct_reference)
    spec = pickle.loads(pickle.dumps(_array.FrameGrid.from_plan(ct_plan)))
    np.testing.assert_array_equal(spec.read_block((slice(8, 9),))[0], ct_reference[8])


def test_spec_holds_no_handles_or_datasets(ct_plan) -> None:
    spec = _array.FrameGrid.from_plan(ct_plan)
    held = [*vars(spec).values(), *spec.refs[0].as_dict().values()]
    assert not any(hasattr(v, "read") or isinstance(v, pydicom.Dataset) for v in held)


def test_backend_array_indexing(ct_plan, ct_reference, monkeypatch) -> None:
    backend = _array.DicomBackendArray(ct_plan)
    assert backend.shape == (140, 512, 512) and backend.dtype == np.int16
    var = xr.Variable(("slice", "row", "col"), indexing.LazilyIndexedArray(backend))
    count = _Counter(monkeypatch)
    np.testing.assert_array_equal(var[7].values, ct_reference[7])
    assert count.frames == 1
    cases = [
        (slice(2, 9, 3), slice(None), 5),
        ([4, 1, 130], 200, slice(10, 20)),
        (-1, slice(None, None, -1), slice(0, 3)),
        (slice(None), 256, 256),
    ]
    for key in cases:
        np.testing.assert_array_equal(var[key].values, ct_reference[key], err_msg=str(key))
    pickled = pickle.loads(pickle.dumps(var))
    np.testing.assert_array_equal(pickled[11].values, ct_reference[11])
    count.frames = 0
    reads = _Reads(monkeypatch)
    np.testing.assert_array_equal(var.values, ct_reference)
    assert count.frames == 140 and reads.full == 1 and reads.blocks == []
    # the whole array after a no-op selection is still the full read
    np.testing.assert_array_equal(var[:, :, :].values, ct_reference)
    np.testing.assert_array_equal(var[0:500].values, ct_reference)
    assert reads.full == 3 and reads.blocks == []


def test_backend_array_token_is_deterministic(ct_files, tmp_path) -> None:
    from dask.base import tokenize

    for f in ct_files[:2]:
        shutil.copy2(f, tmp_path / f.name)
    files = sorted(tmp_path.iterdir())
    a = _array.DicomBackendArray(_stand_in_plan(files))
    assert tokenize(a) == tokenize(_array.DicomBackendArray(_stand_in_plan(files)))
    os.utime(files[0], (1_000_000_000, 1_000_000_000))
    assert tokenize(a) != tokenize(_array.DicomBackendArray(_stand_in_plan(files)))


def test_missing_frames_filled(ct_plan, ct_reference) -> None:
    grid = np.arange(6).reshape(2, 3)
    grid[1, 2] = -1
    plan = SimpleNamespace(frames=ct_plan.frames.iloc[:6], grid=grid, frame_shape=(512, 512))
    arr = _array.lazy_array(plan)
    assert arr.dtype == np.float32  # "auto": NaN marks the missing frame
    values = arr.compute()
    assert np.isnan(values[1, 2]).all()
    np.testing.assert_array_equal(values[0], ct_reference[:3])
    np.testing.assert_array_equal(values[1, :2], ct_reference[3:5])
    forced = _array.lazy_array(plan, dtype="int16").compute()
    assert forced.dtype == np.int16 and (forced[1, 2] == 0).all()
    np.testing.assert_array_equal(forced[1, 1], ct_reference[4])


def test_stored_values_and_forced_dtype(ct_plan, ct_reference) -> None:
    raw = _array.lazy_array(ct_plan, rescale=False)
    assert raw.dtype == np.uint16
    np.testing.assert_array_equal(raw[0].compute(), ct_reference[0] + 1024)
    f64 = _array.lazy_array(ct_plan, dtype="float64")
    assert f64.dtype == np.float64
    np.testing.assert_array_equal(f64[1:3].compute(), ct_reference[1:3])


def test_per_frame_rescale(tmp_path) -> None:
    """Two rescale pairs in one series (like the Philips field map): float32, per frame."""
    vol = phantom_volume((4, 32, 24), dtype="uint16")
    pairs = [(1.0, 0.0), (1.0, 0.0), (2.5, -3142.0), (2.5, -3142.0)]
    files = write_series(
        tmp_path,
        vol,
        modality="MR",
        per_frame=[{"RescaleSlope": s, "RescaleIntercept": b} for s, b in pairs],
    )
    plan = _stand_in_plan(files)
    assert sorted(set(plan.frames["RescaleSlope"])) == [1.0, 2.5]
    arr = _array.lazy_array(plan)
    assert arr.dtype == np.float32
    np.testing.assert_allclose(arr.compute(), _pydicom_volume(plan), rtol=1e-6)
    # integer intercepts only: an exact integer dtype
    files2 = write_series(
        tmp_path / "int",
        vol,
        per_frame=[{"RescaleSlope": 1, "RescaleIntercept": b} for b in (0, 0, -3142, -3142)],
    )
    plan2 = _stand_in_plan(files2)
    arr2 = _array.lazy_array(plan2)
    assert arr2.dtype.kind == "i"
    np.testing.assert_array_equal(arr2.compute(), _pydicom_volume(plan2))


def test_rgb_multiframe_grid(data_root) -> None:
    path = (
        data_root
        / "dicomParser/testImages/encapsulated/multi-frame/IM00001.implicit_little_endian.dcm"
    )
    plan = _stand_in_plan([path])
    arr = _array.lazy_array(plan)
    assert arr.shape == (8, 240, 320, 3) and arr.dtype == np.uint8
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = pydicom.dcmread(path).pixel_array
    np.testing.assert_array_equal(arr.compute(), want)
    np.testing.assert_array_equal(arr[5].compute(), want[5])


def test_compressed_multiframe_grid(data_root) -> None:
    path = (
        data_root
        / "dicomParser/testImages/encapsulated/multi-frame/CT0012.fragmented_no_bot_jpeg_ls.80.dcm"
    )
    plan = _stand_in_plan([path])
    arr = _array.lazy_array(plan)
    np.testing.assert_array_equal(arr.compute(), _pydicom_volume(plan))
    np.testing.assert_array_equal(arr[1].compute(), _pydicom_volume(plan)[1])


def test_mosaic_grid_decodes_each_image_once(data_root, monkeypatch) -> None:
    """35 tiles of one JPEG 2000 MOSAIC: a full read decodes the image once."""
    path = data_root / "dcm_qa_ts/In/9.dcm"
    (ref,) = pixels.file_frame_refs(path)
    refs = [
        dataclasses.replace(ref, tile=t, Rows=64, Columns=64, mosaic_rows=384, mosaic_cols=384)
        for t in range(35)
    ]
    spec = _array.FrameGrid(refs, np.arange(35))
    count = _Counter(monkeypatch)
    assert _array.lazy_array(spec).chunks[0] == (35,)  # one stored image: one chunk
    values = _array.lazy_array(spec).compute()
    assert count.frames == 1
    full = pydicom.dcmread(path).pixel_array
    tiles = full.reshape(6, 64, 6, 64).transpose(0, 2, 1, 3).reshape(36, 64, 64)[:35]
    np.testing.assert_array_equal(values, tiles)
    np.testing.assert_array_equal(_array.lazy_array(spec)[12].compute(), tiles[12])
    assert count.frames == 2


def test_mosaic_preferred_chunks_are_runs_of_tiles(data_root, tmp_path, monkeypatch) -> None:
    """Two stored MOSAIC images of 35 tiles: the preferred chunks along slice are (35, 35)."""
    paths = [tmp_path / "a.dcm", tmp_path / "b.dcm"]
    for p in paths:
        shutil.copy2(data_root / "dcm_qa_ts/In/9.dcm", p)
    refs = [
        dataclasses.replace(ref, tile=t, Rows=64, Columns=64, mosaic_rows=384, mosaic_cols=384)
        for p in paths
        for ref in pixels.file_frame_refs(p)
        for t in range(35)
    ]
    spec = _array.FrameGrid(refs, np.arange(70))
    assert _array.preferred_chunks(spec, ("slice", "row", "col")) == {
        "slice": (35, 35),
        "row": 64,
        "col": 64,
    }
    arr = _array.lazy_array(spec, chunks={})
    assert arr.chunks == ((35, 35), (64,), (64,))
    count = _Counter(monkeypatch)
    values = arr.compute()
    assert count.frames == 2  # one decode per stored image
    np.testing.assert_array_equal(values[:35], values[35:])
    np.testing.assert_array_equal(arr[40].compute(), values[40])
    assert count.frames == 3


def _cut_one(ct_files: list[Path], tmp_path: Path) -> tuple[SimpleNamespace, Path, np.ndarray]:
    """Plan three CT slices, then cut the middle one short (found only at load)."""
    for f in ct_files[:3]:
        shutil.copy2(f, tmp_path / f.name)
    plan = _stand_in_plan(sorted(tmp_path.iterdir()))
    reference = _pydicom_volume(plan)
    victim = Path(plan.frames["path"].iloc[1])
    victim.write_bytes(victim.read_bytes()[:-1000])
    return plan, victim, reference


@pytest.mark.parametrize("chunks", [{}, "series", None])
def test_an_unreadable_frame_is_set_apart_at_load_with_a_warning(
    ct_files, tmp_path, chunks
) -> None:
    plan, victim, reference = _cut_one(ct_files, tmp_path)
    if chunks is None:  # no dask: the backend array's own full read
        arr = _array.DicomBackendArray(plan, dtype="float32")
        variable = xr.Variable(("slice", "row", "col"), _array.lazily_indexed(arr))
        get = lambda: variable.values  # noqa: E731
    else:
        arr = _array.lazy_array(plan, dtype="float32", chunks=chunks)
        get = arr.compute
    with pytest.warns(
        pixels.PixelDataWarning,
        match=rf"{victim.name}: frame 0 cannot be read .*grid position \(1,\)\) holds NaN.*cut short",
    ) as record:
        values = get()
    assert sum(victim.name in str(w.message) for w in record) == 1  # one warning per frame
    assert np.isnan(values[1]).all()
    np.testing.assert_allclose(values[[0, 2]], reference[[0, 2]])
    if chunks is None:  # reads in this process are listed on the grid
        assert list(arr.spec.unreadable) == [1]
        assert victim.name in arr.spec.unreadable[1]


def test_an_unreadable_frame_of_an_integer_array_holds_zero_and_can_raise(
    ct_files, tmp_path
) -> None:
    plan, victim, _ = _cut_one(ct_files, tmp_path)
    arr = _array.lazy_array(plan, dtype="int16")
    assert arr[0].compute().shape == (512, 512)
    with pytest.warns(pixels.PixelDataWarning, match=rf"{victim.name}: frame 0 .*holds 0"):
        one = arr[1].compute()
    assert not one.any()
    with warnings.catch_warnings():
        warnings.simplefilter("error", pixels.PixelDataWarning)
        with pytest.raises(pixels.PixelDataWarning, match=victim.name):
            # one full read: its thread pool is done when the error surfaces
            _array.lazy_array(plan, chunks="series").compute()


@pytest.mark.parametrize("chunks", [{}, "series", None])
def test_a_file_removed_after_opening_is_an_error_not_a_filled_frame(
    ct_files, tmp_path, chunks
) -> None:
    """An I/O error is raised as it is: a filled frame would hide a failure a retry may fix."""
    plan, victim, _ = _cut_one(ct_files, tmp_path)
    victim.unlink()
    if chunks is None:
        arr = _array.DicomBackendArray(plan, dtype="float32")
        get = xr.Variable(("slice", "row", "col"), _array.lazily_indexed(arr)).to_numpy
    else:
        get = _array.lazy_array(plan, dtype="float32", chunks=chunks).compute
    with warnings.catch_warnings():
        warnings.simplefilter("error", pixels.PixelDataWarning)
        with pytest.raises(FileNotFoundError, match=victim.name):
            get()


def test_every_read_path_refuses_a_frame_of_another_shape(ct_files, monkeypatch) -> None:
    plan = _stand_in_plan(list(ct_files[:2]))
    spec = _array.FrameGrid.from_plan(plan, dtype="float32")
    real = pixels.read_frame

    def wrong(ref, *, out=None):  # a decoder that returns fewer rows than the header says
        return real(ref)[:-1]

    monkeypatch.setattr(pixels, "read_frame", wrong)
    for read in (spec.read_all, lambda: spec.read_block((slice(0, 1),)),
                 lambda: _array._read_chunk(spec, (1,))):  # fmt: skip
        spec.unreadable.clear()
        with pytest.warns(pixels.PixelDataWarning, match=r"decoded to shape \(511, 512\)"):
            out = read()
        assert np.isnan(out).all()
        assert spec.unreadable


def test_open_series_reads_no_pixels_until_asked(philips_ct, ct_reference, monkeypatch) -> None:
    """End to end through the public API: opening reads headers only; isel reads one frame."""
    import dicomxr

    count = _Counter(monkeypatch)
    image = dicomxr.open_series(philips_ct)
    assert count.frames == 0 and count.opens == []
    values = image.isel(slice=70).values
    assert count.frames == 1 and len(count.opens) == 1
    np.testing.assert_array_equal(values, ct_reference[70])


def test_monochrome1_grid_keeps_values_and_says_so(tmp_path) -> None:
    vol = phantom_volume((3, 16, 12), dtype="uint16")
    files = write_series(
        tmp_path, vol, rescale=(1.0, 0.0), extra={"PhotometricInterpretation": "MONOCHROME1"}
    )
    spec = _array.FrameGrid.from_plan(_stand_in_plan(files))
    assert spec.inverted
    np.testing.assert_array_equal(_array.lazy_array(spec).compute(), vol)


def test_compressed_multiframe_full_read_is_one_pass(monkeypatch) -> None:
    """30 JPEG frames (YBR_FULL_422 -> RGB) of one file: one open for the whole array."""
    from pydicom.data import get_testdata_file

    path = Path(get_testdata_file("examples_ybr_color.dcm"))
    plan = _stand_in_plan([path])
    want = pydicom.dcmread(path).pixel_array
    arr = _array.lazy_array(plan, chunks="series")
    assert arr.shape == (30, 240, 320, 3)
    count = _Counter(monkeypatch)
    np.testing.assert_array_equal(arr.compute(), want)
    assert len(count.opens) == 1
    np.testing.assert_array_equal(arr[17].compute(), want[17])
    assert count.frames == 1 and len(count.opens) == 2


# --------------------------------------------------------------- the default full compute


def _no_concatenation(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count dask's concatenation of chunk results (the ~2x path of a per-frame compute)."""
    import dask.array.core as dask_core

    calls: list[int] = []
    real = dask_core.concatenate3

    def concatenate3(arrays):
        calls.append(1)
        return real(arrays)

    monkeypatch.setattr(dask_core, "concatenate3", concatenate3)
    return calls


@pytest.mark.parametrize(
    "how",
    ["values", "load", "compute", "asarray", "dask.compute", "persist", "copy"],
)
def test_default_open_loads_with_one_full_read(philips_ct, ct_reference, monkeypatch, how) -> None:
    """``open_series`` (one frame per chunk) loads through one read_all, no concatenation."""
    import dicomxr

    image = dicomxr.open_series(philips_ct)
    assert image.chunks[0] == (1,) * 140
    reads = _Reads(monkeypatch)
    count = _Counter(monkeypatch)
    joins = _no_concatenation(monkeypatch)
    if how == "values":
        values = image.values
    elif how == "load":
        values = image.load().data
    elif how == "compute":
        values = image.compute().data
    elif how == "asarray":
        values = np.asarray(image)
    elif how == "dask.compute":
        (values,) = dask.compute(image.data)
    elif how == "copy":
        values = image.copy().values  # a deep copy
    else:
        persisted = image.persist()
        assert persisted.chunks == image.chunks
        values = persisted.values
    assert reads.full == 1 and reads.blocks == [] and count.frames == 140
    assert isinstance(values, np.ndarray)
    assert joins == ([1] if how == "persist" else [])  # a persisted array is copied out
    np.testing.assert_array_equal(values, ct_reference)
    # the lazy original is untouched (``.load()`` loads it in place): a selection still
    # reads one frame
    if how == "load":
        image = dicomxr.open_series(philips_ct)
    count.frames = 0
    np.testing.assert_array_equal(image.isel(slice=9).values, ct_reference[9])
    assert count.frames == 1 and reads.full == 1


def test_selections_after_the_fast_path_stay_per_frame(philips_ct, ct_reference, monkeypatch):
    """Flips, arithmetic and slabs are plain dask arrays: they read only their frames."""
    import dicomxr

    image = dicomxr.open_series(philips_ct)
    reads = _Reads(monkeypatch)
    count = _Counter(monkeypatch)
    flipped = image.isel(slice=slice(None, None, -1), row=slice(None, None, -1))
    np.testing.assert_array_equal(
        (flipped * 2).isel(slice=slice(0, 5)).values, 2 * ct_reference[::-1, ::-1][:5]
    )
    assert count.frames == 5
    count.frames = 0
    np.testing.assert_array_equal(
        image.dicom.reorient("RAS").isel(slice=3).values.shape, image.isel(slice=0).shape
    )
    assert count.frames == 1
    count.frames = 0
    np.testing.assert_array_equal((image + 1).isel(slice=[4, 90]).values, ct_reference[[4, 90]] + 1)
    assert count.frames == 2 and reads.full == 0
    # a whole-array computation through other operations is dask's per-frame graph
    count.frames = 0
    assert (image * 1).sum().values == ct_reference.sum()
    assert count.frames == 140 and reads.full == 0


def test_fast_path_keeps_dask_semantics(ct_plan, ct_reference, monkeypatch) -> None:
    """The array stays dask's own class; copies and pickles compute (without the hooks)."""
    arr = _array.lazy_array(ct_plan)
    assert type(arr) is da.Array
    joins = _no_concatenation(monkeypatch)
    whole = arr.compute()
    assert joins == []
    whole[0, 0, 0] = 12345  # the result is the caller's: a new compute reads again
    np.testing.assert_array_equal(arr.compute(), ct_reference)
    again = pickle.loads(pickle.dumps(arr))
    assert type(again) is da.Array and again.name == arr.name
    np.testing.assert_array_equal(again.compute(), ct_reference)
    assert joins == [1]  # without the hooks: dask's concatenation
    np.testing.assert_array_equal(arr.copy().compute(), ct_reference)
    # several collections at once: the values are right whichever path each takes
    whole, part, doubled = dask.compute(arr, arr[5:7], arr * 2)
    np.testing.assert_array_equal(whole, ct_reference)
    np.testing.assert_array_equal(part, ct_reference[5:7])
    np.testing.assert_array_equal(doubled, 2 * ct_reference)
    # other chunk sizes take the same path
    reads = _Reads(monkeypatch)
    for chunks in ("series", {"dim_0": 7}, {"dim_0": 50, "dim_1": 100}):
        values = _array.lazy_array(ct_plan, chunks=chunks).compute()
        np.testing.assert_array_equal(values, ct_reference)
    assert reads.full == 3 and reads.blocks == []


def test_join_blocks_falls_back_to_concatenation() -> None:
    whole = np.arange(24).reshape(4, 6).copy()  # owns its memory, as read_all's array
    chunks = ((2, 2), (6,))
    views = [[whole[:2]], [whole[2:]]]
    assert _array.join_blocks(views, whole.shape, chunks) is whole
    for blocks in (
        [[whole[:2].copy()], [whole[2:]]],  # a copy (e.g. pickled between workers)
        [[whole[2:]], [whole[:2]]],  # views in the wrong places
        [[whole[:2, ::-1]], [whole[2:]]],  # a strided view
    ):
        joined = _array.join_blocks(blocks, whole.shape, chunks)
        assert joined is not whole
        np.testing.assert_array_equal(joined, np.concatenate([b[0] for b in blocks]))


_MEMORY_SCRIPT = """
import json, sys, tracemalloc
import numpy as np
import xarray as xr
import dicomxr

folder, how = sys.argv[1], sys.argv[2]
dicomxr.open_series(folder).isel(slice=0).values  # imports and first-use caches
xr.open_dataset(folder, engine="dicom")["image"].isel(slice=0).values
tracemalloc.start()
if how == "values":
    values = dicomxr.open_series(folder).values
elif how == "compute":
    values = dicomxr.open_series(folder).compute().data
elif how == "engine":
    image = xr.open_dataset(folder, engine="dicom")["image"]
    assert image.chunks is None
    values = image.values
else:
    values = dicomxr.open_series(folder).dicom.load().data
peak = tracemalloc.get_traced_memory()[1]
print(json.dumps({"peak": peak, "nbytes": values.nbytes}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("how", ["values", "compute", "engine", "load"])
def test_open_and_load_peak_memory_is_the_array(philips_ct, tmp_path, how) -> None:
    """Open + full load allocate about the array's bytes (traced in a fresh process)."""
    import json
    import subprocess
    import sys

    script = tmp_path / "measure.py"
    script.write_text(_MEMORY_SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(
        [sys.executable, str(script), str(philips_ct), how],
        capture_output=True, text=True, timeout=300, env=env, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["nbytes"] == 140 * 512 * 512 * 2
    assert result["peak"] <= 1.1 * result["nbytes"], result
