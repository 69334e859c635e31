"""Training adapters: the torch Dataset over a converted Zarr store, and xbatcher patches.

The reference is pydicom reading each written file on its own (pixel values, rescale and
ImagePositionPatient), never the converted store read back by the code under test.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
import xarray as xr

import dicomxr
from dicomxr.phantom import phantom_volume, write_series

torch = pytest.importorskip("torch", reason="the torch extra (CI installs torch==2.13.0)")
from torch.utils.data import DataLoader  # noqa: E402

from dicomxr.ml.torch import ZarrSeriesDataset  # noqa: E402

SHAPES = {1: (12, 40, 36), 2: (5, 20, 20), 3: (16, 32, 32)}


def _reference(folder: Path) -> tuple[np.ndarray, list[np.ndarray]]:
    """Stack a series with pydicom: (slices, rows, cols) in float, and the positions."""
    datasets = [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))]
    normal = np.cross(
        np.asarray(datasets[0].ImageOrientationPatient[:3], float),
        np.asarray(datasets[0].ImageOrientationPatient[3:], float),
    )
    datasets.sort(key=lambda d: float(np.dot(normal, np.asarray(d.ImagePositionPatient, float))))
    values = np.stack(
        [d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in datasets]
    )
    return values, [np.asarray(d.ImagePositionPatient, float) for d in datasets]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path], np.ndarray]:
    root = tmp_path_factory.mktemp("ml")
    src = root / "src"
    for number, shape in SHAPES.items():
        write_series(
            src / f"s{number}",
            phantom_volume(shape, seed=number),
            series_number=number,
            series_description=f"phantom {number}",
            orientation=(0, 1, 0, 0, 0, -1) if number == 3 else (1, 0, 0, 0, 1, 0),
        )
    dest = root / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = dicomxr.convert(src, dest, format="zarr", progress=False)
    assert report.ok and len(report.done) == 3
    groups = {}
    for row in report.done:
        number = int(row["series_number"])
        groups[row["output"].split("/", 1)[1]] = src / f"s{number}"
    # a label map on series 1: the voxels above the median (an independent numpy mask)
    name = next(g for g, folder in groups.items() if folder.name == "s1")
    values, _ = _reference(groups[name])
    mask = (values > np.median(values)).astype(np.uint8)
    xr.Dataset({"labels": (("slice", "row", "col"), mask)}).to_zarr(
        dest / "cohort.zarr", group=name, mode="a", consolidated=False
    )
    return dest, groups, mask


def test_one_sample_per_series_equals_pydicom(store) -> None:
    dest, groups, mask = store
    ds = ZarrSeriesDataset(dest)
    assert len(ds) == 3
    for i in range(len(ds)):
        sample = ds[i]
        folder = groups[sample["meta"]["group"]]
        values, positions = _reference(folder)
        assert sample["image"].dtype == torch.float32
        assert tuple(sample["image"].shape) == (1, *values.shape)
        np.testing.assert_allclose(sample["image"][0].numpy(), values)
        # the affine maps voxel (k, 0, 0) to the k-th file's ImagePositionPatient
        affine = sample["affine"].numpy()
        for k in (0, len(positions) - 1):
            np.testing.assert_allclose((affine @ [k, 0, 0, 1])[:3], positions[k], atol=1e-4)
        np.testing.assert_allclose(
            sample["affine_ras"].numpy(), np.diag([-1, -1, 1, 1]) @ affine, atol=1e-12
        )
        assert sample["meta"]["SeriesDescription"] == f"phantom {folder.name[1:]}"
        if folder.name == "s1":
            assert tuple(sample["label"].shape) == (1, *mask.shape)
            np.testing.assert_array_equal(sample["label"][0].numpy(), mask)
        else:
            assert "label" not in sample


def test_patches_cover_every_voxel_with_their_own_affine(store) -> None:
    dest, groups, mask = store
    size = (4, 16, 16)
    ds = ZarrSeriesDataset(dest / "cohort.zarr", patch_size=size, stride=(4, 12, 12))
    seen: dict[str, np.ndarray] = {}
    for i in range(len(ds)):
        sample = ds[i]
        name = sample["meta"]["group"]
        values, positions = _reference(groups[name])
        s, r, c = (int(v) for v in sample["meta"]["start"])
        assert tuple(sample["image"].shape) == (1, *size)
        want = np.zeros(size)  # padded at the end where the series is smaller
        block = values[s : s + size[0], r : r + size[1], c : c + size[2]]
        want[: block.shape[0], : block.shape[1], : block.shape[2]] = block
        np.testing.assert_allclose(sample["image"][0].numpy(), want)
        # the patch's first voxel lies at the series voxel (s, r, c)
        full = ZarrSeriesDataset(dest, groups=[name])[0]["affine"].numpy()
        np.testing.assert_allclose(
            sample["affine"].numpy() @ [0, 0, 0, 1], full @ [s, r, c, 1], atol=1e-9
        )
        if s == 0:
            np.testing.assert_allclose(
                (sample["affine"].numpy() @ [0, -r, -c, 1])[:3], positions[0], atol=1e-4
            )
        covered = seen.setdefault(name, np.zeros(values.shape, bool))
        covered[s : s + size[0], r : r + size[1], c : c + size[2]] = True
        if "label" in sample:
            want_mask = np.zeros(size, dtype=np.int64)
            part = mask[s : s + size[0], r : r + size[1], c : c + size[2]]
            want_mask[: part.shape[0], : part.shape[1], : part.shape[2]] = part
            np.testing.assert_array_equal(sample["label"][0].numpy(), want_mask)
    assert set(seen) == set(groups)
    assert all(c.all() for c in seen.values())


def test_dataloader_with_worker_processes(store) -> None:
    dest, _, _ = store
    ds = ZarrSeriesDataset(dest, patch_size=(4, 16, 16), label=None)
    loader = DataLoader(ds, batch_size=5, num_workers=2, shuffle=False)
    images = []
    for batch in loader:
        assert batch["image"].shape[1:] == (1, 4, 16, 16)
        assert batch["affine"].shape[1:] == (4, 4)
        assert len(batch["meta"]["group"]) == batch["image"].shape[0]
        images.append(batch["image"])
    got = torch.cat(images)
    assert got.shape[0] == len(ds)
    for i in (0, len(ds) // 2, len(ds) - 1):
        np.testing.assert_array_equal(got[i].numpy(), ds[i]["image"].numpy())


def test_errors_name_the_problem(store, tmp_path: Path) -> None:
    dest, _, _ = store
    with pytest.raises(ValueError, match="patch_size"):
        ZarrSeriesDataset(dest, patch_size=(4, 16))
    (tmp_path / "empty.zarr").mkdir()
    with pytest.raises(dicomxr.DicomxrError):
        ZarrSeriesDataset(tmp_path / "empty.zarr")
    with pytest.raises(dicomxr.DicomxrError, match="does not lie on"):
        ZarrSeriesDataset(dest, label="position_x")


def test_the_store_slices_into_patches_with_xbatcher(store) -> None:
    """The layout is xbatcher-friendly: BatchGenerator over a group gives the same patches."""
    xbatcher = pytest.importorskip("xbatcher", reason="xbatcher is in the test extra")
    dest, groups, _ = store
    name = next(g for g, folder in groups.items() if folder.name == "s3")  # 16 x 32 x 32
    image = xr.open_zarr(dest / "cohort.zarr", group=name)["image"]
    size = {"slice": 8, "row": 16, "col": 16}
    batches = list(xbatcher.BatchGenerator(image, input_dims=size))
    ds = ZarrSeriesDataset(dest, groups=[name], patch_size=(8, 16, 16), label=None)
    assert len(batches) == len(ds) == 8
    values, _ = _reference(groups[name])
    for i, patch in enumerate(batches):
        sample = ds[i]
        s, r, c = (int(v) for v in sample["meta"]["start"])
        np.testing.assert_allclose(patch.values, values[s : s + 8, r : r + 16, c : c + 16])
        np.testing.assert_allclose(patch.values, sample["image"][0].numpy())
    # plain xarray: a patch is an isel, and reads only its chunks (one frame per chunk)
    assert image.chunks is not None and max(image.chunks[0]) == 1
