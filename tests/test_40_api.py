"""open_series / open_study: the xarray objects users meet (contract in docs/dev/architecture.md)."""

from __future__ import annotations

import json
import random
import warnings

import dask
import numpy as np
import pytest
import xarray as xr

import dicomxr
from dicomxr import phantom
from dicomxr.api import PATIENT_ATTRIBUTES, open_series, open_study
from dicomxr.errors import MultipleSeriesError, NoSeriesError

SHAPE = (12, 20, 24)
SPACING = (0.8, 0.6)
STEP = 2.5
ORIGIN = (-30.0, -40.0, 10.0)


class _CountTasks(dask.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.count = 0

    def _pretask(self, key, dsk, state):
        self.count += 1


@pytest.fixture(scope="module")
def two_series(tmp_path_factory):
    """Two phantom series in one folder, file names shuffled against slice order."""
    root = tmp_path_factory.mktemp("two_series")
    vol_a = phantom.phantom_volume(SHAPE, dtype="int16", seed=1)
    vol_b = phantom.phantom_volume((5, 16, 16), dtype="uint16", seed=2)
    names = [f"A{n:03d}.dcm" for n in range(SHAPE[0])]
    random.Random(3).shuffle(names)
    phantom.write_series(
        root,
        vol_a,
        spacing=SPACING,
        origin=ORIGIN,
        slice_step=STEP,
        series_number=7,
        series_description="Axial phantom",
        rescale=(1.0, -1024.0),
        file_names=names,
    )
    phantom.write_series(
        root,
        vol_b,
        series_number=8,
        series_description="Small MR",
        modality="MR",
        rescale=(2.5, 0.0),
        file_names=[f"B{n:03d}.dcm" for n in range(5)],
    )
    return root, vol_a, vol_b


def test_sample_contract(sample_dir):
    da = open_series(sample_dir)
    assert isinstance(da, xr.DataArray)
    assert da.name == "image"
    assert da.dims[-3:] == ("slice", "row", "col")
    # 40 slices x 6 dynamics: 3 time points x label/control (pCASL)
    assert da.dims[:2] == ("time", "label")
    assert da.sizes["time"] * da.sizes["label"] == 6
    assert da.sizes["slice"] == 40 and da.sizes["row"] == 96 and da.sizes["col"] == 96
    assert da.coords["slice"].dtype == np.float64
    steps = np.diff(da.coords["slice"].values)
    assert np.all(steps > 0) or np.all(steps < 0)
    for name in (
        "position_x",
        "position_y",
        "position_z",
        "InstanceNumber",
        "SOPInstanceUID",
        "path",
    ):
        assert name in da.coords, name
    for name in ("affine", "Modality", "SeriesInstanceUID", "geometry", "series_key"):
        assert name in da.attrs, name
    # the 4x4 affine flat, row-major (netCDF attrs are 1-D)
    assert len(da.attrs["affine"]) == 16
    np.testing.assert_array_equal(np.reshape(da.attrs["affine"], (4, 4)), da.dicom.affine)
    assert json.loads(da.attrs["geometry"])["n_slices"] == da.sizes["slice"]
    json.dumps(da.attrs)  # JSON-friendly only
    for name, value in da.attrs.items():  # scalars, strings or flat lists: what netCDF takes
        assert isinstance(value, (str, int, float, list)), name
        if isinstance(value, list):
            assert all(isinstance(v, (str, int, float)) for v in value), name
            assert len({type(v) for v in value}) == 1, name
    assert not PATIENT_ATTRIBUTES & set(da.attrs)
    chunks = da.encoding["preferred_chunks"]
    assert chunks["slice"] == 1 and chunks["row"] == 96 and chunks["col"] == 96
    assert all(chunks[d] == 1 for d in da.dims[:-2])


def test_open_reads_no_pixels(sample_dir):
    counter = _CountTasks()
    with counter:
        da = open_series(sample_dir)
        da.dicom.affine  # noqa: B018
        da.isel(slice=3)  # selection is lazy too
    assert counter.count == 0
    assert da.chunks is not None


def test_include_patient(sample_dir):
    da = open_series(sample_dir, include_patient=True)
    assert da.attrs.get("PatientName") == "d2n_Philips_3T_R571"


def test_values_and_order(two_series):
    root, vol_a, _ = two_series
    da = open_series(root, series=7)
    assert da.dims == ("slice", "row", "col")
    np.testing.assert_array_equal(da.values, vol_a.astype(np.int32) - 1024)
    # positions ascend along the normal whatever the file names say
    np.testing.assert_allclose(np.diff(da.coords["slice"].values), STEP, atol=1e-6)
    np.testing.assert_allclose(
        da.coords["position_z"].values, ORIGIN[2] + STEP * np.arange(SHAPE[0])
    )
    assert da.attrs["SeriesNumber"] == 7
    assert da.attrs["units"] == "HU"


def test_float_rescale(two_series):
    root, _, vol_b = two_series
    da = open_series(root, series="Small MR")
    assert da.dtype == np.float32
    np.testing.assert_allclose(da.values, vol_b * 2.5)


def test_several_series_error_lists_them(two_series):
    root, *_ = two_series
    with pytest.raises(MultipleSeriesError) as info:
        open_series(root)
    message = str(info.value)
    assert "2 series" in message
    assert "Axial phantom" in message and "Small MR" in message
    assert "series=" in message
    for key in (p.key for p in dicomxr.api.list_series(root)):
        assert key in message


@pytest.mark.parametrize(
    "how", ["number", "key", "uid", "description", "number_text", "key_suffix"]
)
def test_select_series(two_series, how):
    root, *_ = two_series
    plans = dicomxr.api.list_series(root)
    target = next(p for p in plans if dicomxr.api._attr(p, "SeriesNumber") == 8)
    choice = {
        "number": 8,
        "number_text": "8",
        "key": target.key,
        "uid": dicomxr.api._attr(target, "SeriesInstanceUID"),
        "description": "small",
        "key_suffix": target.key[-8:],
    }[how]
    da = open_series(root, series=choice)
    assert da.attrs["SeriesNumber"] == 8
    assert da.attrs["series_key"] == target.key


def test_no_match_and_no_series(two_series, tmp_path):
    root, *_ = two_series
    with pytest.raises(NoSeriesError, match="no series matches"):
        open_series(root, series="does not exist")
    (tmp_path / "notes.txt").write_text("not DICOM")
    with pytest.raises(NoSeriesError, match="1 x not a DICOM file"), warnings.catch_warnings():
        warnings.simplefilter("ignore", dicomxr.SkippedFileWarning)
        open_series(tmp_path)


def test_list_series_carries_what_was_skipped(two_series, tmp_path):
    from dicomxr.api import list_series
    from dicomxr.series import SeriesPlans

    root, *_ = two_series
    for path in root.iterdir():
        (tmp_path / path.name).symlink_to(path)
    (tmp_path / "notes.txt").write_text("not DICOM")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dicomxr.SkippedFileWarning)
        plans = list_series(tmp_path)
    assert isinstance(plans, SeriesPlans) and len(plans) == 2
    assert [item["path"] for item in plans.skipped] == [str(tmp_path / "notes.txt")]
    assert plans.skipped[0]["reason"].startswith("not a DICOM file")
    # plans handed back in are SeriesPlans too, with nothing skipped or set apart
    again = list_series(list(plans))
    assert isinstance(again, SeriesPlans) and list(again) == list(plans)
    assert again.skipped == [] and len(again.set_apart) == 0
    assert open_series(plans[1]).attrs["series_key"] == plans[1].key


def test_open_study_tree(two_series):
    root, *_ = two_series
    tree = open_study(root)
    assert isinstance(tree, xr.DataTree)
    leaves = list(tree.leaves)
    assert len(leaves) == 2
    for leaf in leaves:
        assert "image" in leaf.dataset.data_vars
        assert leaf.depth == 3  # patient / study / series
        assert "/" not in leaf.name
        assert leaf.dataset.attrs["series_key"]
        assert not PATIENT_ATTRIBUTES & set(leaf.dataset.attrs)
    study = leaves[0].parent
    assert "StudyInstanceUID" in study.dataset.attrs
    numbers = sorted(int(leaf.dataset["image"].attrs["SeriesNumber"]) for leaf in leaves)
    assert numbers == [7, 8]


def test_open_study_names_patients_neutrally(tmp_path):
    vol = phantom.phantom_volume((3, 8, 8), dtype="int16", seed=3)
    who = {"PatientID": "JOHN-42", "PatientName": "Doe^John"}
    phantom.write_series(tmp_path / "a", vol, series_number=1)  # PatientID PHANTOM-0001
    phantom.write_series(tmp_path / "b", vol, series_number=2, extra=who)
    phantom.write_series(tmp_path / "c", vol, series_number=3, extra=who)
    tree = open_study(tmp_path)
    assert sorted(tree.children) == ["patient_0", "patient_1"]
    series_per_patient = sorted(
        sum(len(study.children) for study in node.children.values())
        for node in tree.children.values()
    )
    assert series_per_patient == [1, 2]  # grouped by PatientID all the same
    text = repr(tree) + " ".join(node.path for node in tree.subtree)
    for node in tree.subtree:
        text += json.dumps(dict(node.dataset.attrs), default=str)
        for var in node.dataset.variables.values():
            text += json.dumps(dict(var.attrs), default=str)
    for secret in ("JOHN-42", "Doe^John", "PHANTOM-0001", "Phantom^Synthetic"):
        assert secret not in text, secret
    assert not tree["patient_0"].dataset.attrs

    named = open_study(tmp_path, include_patient=True)
    assert sorted(named.children) == ["JOHN-42", "PHANTOM-0001"]
    assert named["JOHN-42"].dataset.attrs["PatientName"] == "Doe^John"


def test_dtype_argument(two_series):
    root, vol_a, _ = two_series
    da = open_series(root, series=7, dtype="float32")
    assert da.dtype == np.float32
    np.testing.assert_array_equal(da.isel(slice=2).values, vol_a[2] - 1024.0)


def test_stored_values(two_series):
    root, vol_a, vol_b = two_series
    raw = open_series(root, series=7, rescale=False)
    np.testing.assert_array_equal(raw.values, vol_a)
    raw_b = open_series(root, series=8, rescale=False)
    assert raw_b.dtype == vol_b.dtype
    np.testing.assert_array_equal(raw_b.values, vol_b)


def test_localizer_set_apart_unless_included(tmp_path):
    vol = phantom.phantom_volume((3, 8, 8))
    phantom.write_series(
        tmp_path, vol, series_number=1, extra={"ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]}
    )
    with pytest.raises(NoSeriesError, match="localizer"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        open_series(tmp_path)
    da = open_series(tmp_path, include=["localizer"])
    np.testing.assert_array_equal(da.values, vol.astype(np.int32) - 1024)


def test_opened_series_survives_netcdf(sample_dir, tmp_path):
    """Every attr goes through xarray's netCDF writer; affine and report come back whole."""
    pytest.importorskip("h5netcdf")
    pytest.importorskip("h5py")
    da = open_series(sample_dir)
    path = tmp_path / "pcasl.nc"
    da.to_netcdf(path, engine="h5netcdf")
    with xr.open_dataarray(path, engine="h5netcdf") as back:
        np.testing.assert_array_equal(back.dicom.affine, da.dicom.affine)
        assert back.dicom.report == da.dicom.report
        assert back.attrs["dim_sources"] == da.attrs["dim_sources"]
        assert json.loads(back.attrs["dim_sources"])["label"].startswith("LabelType")
        np.testing.assert_array_equal(back.isel(time=0, label=1, slice=7).values,
                                      da.isel(time=0, label=1, slice=7).values)  # fmt: skip


def test_on_duplicate_reaches_the_planner(tmp_path):
    from dicomxr.errors import GeometryError

    vol = phantom.phantom_volume((3, 8, 8), dtype="int16", seed=4)
    uid = "1.2.826.0.1.3680043.10.1187.77.2"
    phantom.write_series(tmp_path, vol, series_uid=uid, file_names=["b1", "b2", "b3"])
    phantom.write_series(
        tmp_path,
        vol,
        series_uid=uid,
        file_names=["a1", "a2", "a3"],
        uid_root="1.2.826.0.1.3680043.10.1187.5",  # a second acquisition at the same positions
    )
    with pytest.raises(GeometryError, match="share a position"):
        open_series(tmp_path, on_duplicate="raise")
    with pytest.raises(GeometryError, match="share a position"):
        open_study(tmp_path, on_duplicate="raise")
    with warnings.catch_warnings():
        warnings.simplefilter("error", dicomxr.GeometryWarning)
        with pytest.raises(MultipleSeriesError, match=f"{uid}/2"):
            open_series(tmp_path, on_duplicate="split")
        one = open_series(tmp_path, on_duplicate="split", series=f"{uid}/2")
        assert one.dims == ("slice", "row", "col")
        assert len(open_study(tmp_path, on_duplicate="split").leaves) == 2
        quiet = open_series(tmp_path, on_duplicate="ignore")
    assert quiet.dims == ("volume", "slice", "row", "col")


def test_on_irregular_fill(tmp_path):
    vol = phantom.phantom_volume((4, 8, 8), dtype="int16", seed=5)
    phantom.write_series(tmp_path, vol, slice_step=[2.0, 4.0, 2.0], rescale=(1.0, 0.0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dicomxr.GeometryWarning)
        da = open_series(tmp_path, on_irregular="fill")
    assert da.sizes["slice"] == 5
    values = da.values
    assert np.isnan(values[2]).all()
    np.testing.assert_array_equal(values[[0, 1, 3, 4]], vol)
    assert da.dicom.report.affine_exact
    np.testing.assert_allclose(np.diff(da.coords["slice"].values), 2.0)


def test_coordinates_come_from_the_plan(two_series, caplog):
    import dataclasses

    from dicomxr.api import list_series

    root, *_ = two_series
    plan = next(p for p in list_series(root) if p.attrs["SeriesNumber"] == 7)
    da = open_series(plan)
    for name, (dims, _) in plan.coords.items():
        assert da.coords[name].dims == tuple(dims), name
    # a coordinate that does not fit the grid is left out loudly, never silently
    broken = dataclasses.replace(plan, coords={**plan.coords, "bad": (("slice",), np.arange(2))})
    with caplog.at_level("WARNING", logger="dicomxr.api"):
        out = open_series(broken)
    assert "bad" not in out.coords
    assert "coordinate 'bad'" in caplog.text


# --------------------------------------------------------------------------------------
# the one lazy path: what a full read, a selection and the chunks= choices read


@pytest.fixture
def full_reads(monkeypatch):
    """Counts FrameGrid.read_all (the threaded full read) and frames read one by one."""
    from dicomxr import _array

    seen = {"full": 0, "blocks": []}
    real_all, real_block = _array.FrameGrid.read_all, _array.FrameGrid.read_block

    def read_all(spec):
        seen["full"] += 1
        return real_all(spec)

    def read_block(spec, index):
        seen["blocks"].append(int(np.size(spec.grid[index])))
        return real_block(spec, index)

    monkeypatch.setattr(_array.FrameGrid, "read_all", read_all)
    monkeypatch.setattr(_array.FrameGrid, "read_block", read_block)
    return seen


def test_values_compute_load_read_every_frame_once(two_series, full_reads):
    root, vol_a, _ = two_series
    da = open_series(root, series=7)
    assert da.chunks == ((1,) * SHAPE[0], (SHAPE[1],), (SHAPE[2],))  # one frame per chunk
    want = vol_a.astype(np.int32) - 1024
    for load in (
        lambda d: d.values,
        lambda d: d.compute().values,
        lambda d: d.load().values,
        lambda d: np.asarray(d),
        lambda d: d.copy(deep=True).values,
        lambda d: d.dicom.load().values,
    ):
        # the array as opened: one threaded full read into one array (FullRead)
        full_reads["full"], full_reads["blocks"] = 0, []
        np.testing.assert_array_equal(load(da.copy(deep=False)), want)
        assert full_reads["full"] == 1 and full_reads["blocks"] == []
    # after an operation .dicom.load() streams the chunks into one array (dask.array.store)
    full_reads["full"], full_reads["blocks"] = 0, []
    loaded = (da + 0).dicom.load()
    assert isinstance(loaded.data, np.ndarray)
    np.testing.assert_array_equal(loaded.values, want)
    assert full_reads["full"] == 0 and full_reads["blocks"] == [1] * SHAPE[0]
    # an operation first: dask's per-frame compute
    full_reads["blocks"] = []
    np.testing.assert_array_equal((da + 0).values, want)
    assert full_reads["full"] == 0 and full_reads["blocks"] == [1] * SHAPE[0]
    # a selection reads those frames only, also after a flip and arithmetic
    full_reads["blocks"] = []
    np.testing.assert_array_equal(da.isel(slice=4).values, want[4])
    np.testing.assert_array_equal(
        (da * 2).isel(row=slice(None, None, -1)).isel(slice=slice(2, 5), row=3).values,
        2 * want[2:5, -4],
    )
    assert full_reads["blocks"] == [1, 1, 1, 1]


def test_one_chunk_per_series_is_one_full_read(two_series, full_reads):
    root, vol_a, _ = two_series
    da = open_series(root, series=7, chunks="series")
    assert da.chunks == ((SHAPE[0],), (SHAPE[1],), (SHAPE[2],))
    want = vol_a.astype(np.int32) - 1024
    for load in (lambda d: d.values, lambda d: d.compute().values, lambda d: d.dicom.load().values):
        full_reads["full"] = 0
        np.testing.assert_array_equal(load(da.copy()), want)
        assert full_reads["full"] == 1 and full_reads["blocks"] == []
    # a selection of the untouched array: dask fuses it into a read of those frames only
    np.testing.assert_array_equal(da.isel(slice=4).values, want[4])
    np.testing.assert_array_equal(da.isel(slice=slice(2, 5), row=3).values, want[2:5, 3])
    assert full_reads["blocks"] == [1, 3]


def test_chunks_choices(two_series, full_reads):
    import dask.array

    root, vol_a, _ = two_series
    none = open_series(root, series=7, chunks=None)
    assert not isinstance(none.variable._data, dask.array.Array) and none.chunks is None
    np.testing.assert_array_equal(none.isel(slice=3).values, vol_a[3].astype(np.int32) - 1024)
    assert full_reads == {"full": 0, "blocks": [1]}
    per_frame = open_series(root, series=7, chunks={})
    assert per_frame.chunks == ((1,) * SHAPE[0], (SHAPE[1],), (SHAPE[2],))
    some = open_series(root, series=7, chunks={"slice": 5})
    assert some.chunks[0] == (5, 5, 2)
    assert (per_frame * 2).isel(slice=[1, 7]).values.shape == (2, *SHAPE[1:])
    assert full_reads["blocks"] == [1, 1, 1]
    tree = open_study(root, chunks=None)
    assert all(leaf["image"].chunks is None for leaf in tree.leaves)
    tree = open_study(root, chunks="series")
    assert all(len(leaf["image"].chunks[0]) == 1 for leaf in tree.leaves)


def test_dask_names_are_deterministic(two_series):
    root, *_ = two_series
    a, b = open_series(root, series=7), open_series(root, series=7)
    assert a.data.name == b.data.name and a.data.name.startswith("dicomxr-image-")
    assert open_series(root, series=7, chunks="series").data.name != a.data.name
    assert open_series(root, series=7, dtype="float32").data.name != a.data.name
