"""Geometry explainers (dicomxr.explain) on the real tilted GE and Philips CTs and on phantoms.

The reference for positions along the normal is computed here, independently, from pydicom's
reading of each file: ``ImagePositionPatient · (row × column)``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

import dicomxr
from dicomxr import explain
from dicomxr.phantom import phantom_volume, write_series


def _pydicom_positions(folder: Path) -> dict[str, float]:
    """path -> position along the normal, from pydicom (image files with a position only)."""
    out = {}
    for path in sorted(folder.iterdir()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except pydicom.errors.InvalidDicomError:
            continue
        if "ImagePositionPatient" not in ds:
            continue
        iop = np.asarray(ds.ImageOrientationPatient, dtype=float)
        normal = np.cross(iop[:3], iop[3:])
        normal /= np.linalg.norm(normal)  # the stored cosines (7 digits) are not exactly unit
        out[str(path.resolve())] = float(normal @ np.asarray(ds.ImagePositionPatient, dtype=float))
    return out


@pytest.fixture(scope="module")
def philips_tilt(data_root: Path) -> Path:
    return data_root / "dcm_qa_ct" / "In" / "Philips" / "S21610" / "S3010"


@pytest.fixture(scope="module")
def ge_da(ge_tilt_ct: Path):
    with pytest.warns(dicomxr.GeometryWarning, match="spacing"):  # 4 mm then 7 mm
        return dicomxr.open_series(ge_tilt_ct)


@pytest.fixture(scope="module")
def philips_da(philips_tilt: Path):
    return dicomxr.open_series(philips_tilt)


@pytest.fixture(scope="module")
def shuffled(tmp_path_factory: pytest.TempPathFactory):
    """A 12-slice phantom whose InstanceNumbers and file names are both out of position order."""
    folder = tmp_path_factory.mktemp("shuffled")
    volume = phantom_volume((12, 32, 40), seed=3)
    perm = np.random.default_rng(7).permutation(12)
    write_series(
        folder,
        volume,
        slice_step=2.5,
        instance_numbers=[int(k) + 1 for k in perm],
        file_names=[f"IM{int(k)}.dcm" for k in np.random.default_rng(8).permutation(12)],
    )
    return folder, volume, perm


def test_slice_normal() -> None:
    assert explain.slice_normal([1, 0, 0, 0, 1, 0]).tolist() == [0.0, 0.0, 1.0]
    # sagittal: rows run posterior (+y), columns run down (-z): normal = y × -z = -x
    np.testing.assert_allclose(explain.slice_normal([0, 1, 0, 0, 0, -1]), [-1, 0, 0])
    with pytest.raises(ValueError, match="parallel"):
        explain.slice_normal([1, 0, 0, 1, 0, 0])
    with pytest.raises(ValueError, match="6 finite"):
        explain.slice_normal([1, 0, 0])


@pytest.mark.parametrize("which", ["ge", "philips"])
def test_positions_equal_ipp_dot_normal(which, ge_da, philips_da, ge_tilt_ct, philips_tilt):
    da, folder = (ge_da, ge_tilt_ct) if which == "ge" else (philips_da, philips_tilt)
    reference = _pydicom_positions(folder)
    table = explain.slice_positions(da)
    assert len(table) == len(reference)
    got = dict(zip((str(Path(p).resolve()) for p in table["path"]), table["s"], strict=True))
    assert got.keys() == reference.keys()
    for path, s in reference.items():
        assert got[path] == pytest.approx(s, abs=1e-6), path
    # sorted along the normal, and the steps are the differences
    assert np.all(np.diff(table["s"]) > 0)
    np.testing.assert_allclose(table["step"].iloc[1:], np.diff(table["s"]))
    # the same table from the catalog (no pixels involved)
    from_catalog = explain.slice_positions(
        dicomxr.scan(folder).query("ImagePositionPatient.notna()")
    )
    np.testing.assert_allclose(from_catalog["s"], table["s"], atol=1e-6)


def test_plan_and_catalog_inputs_agree_with_dataarray(philips_da, philips_tilt) -> None:
    catalog = dicomxr.scan(philips_tilt)
    (plan,) = dicomxr.plan_series(catalog)
    from_da = explain.slice_positions(philips_da)
    for other in (plan, catalog):
        table = explain.slice_positions(other)
        np.testing.assert_allclose(table["s"], from_da["s"], atol=1e-9)
        assert table["InstanceNumber"].tolist() == from_da["InstanceNumber"].tolist()
    # pixels through the loader: a plan is opened with dicomxr.open_series
    np.testing.assert_array_equal(explain.reformat(plan), explain.reformat(philips_da))


def test_ge_uneven_spacing_and_tilt_marked(ge_da, ge_tilt_ct) -> None:
    table = explain.slice_positions(ge_da)
    steps = table["step"].iloc[1:].to_numpy()
    kinds = table["kind"].iloc[1:].to_numpy()
    typical = table.attrs["typical_step"]
    # every step the table calls regular is the typical one; every other is flagged
    np.testing.assert_allclose(steps[kinds == "regular"], typical, atol=0.05)
    assert np.all(np.abs(steps[kinds == "uneven"] - typical) > 0.05)
    assert (kinds == "uneven").sum() >= 2  # 4 mm then 7 mm: the change is marked
    assert set(np.round(steps, 0)) >= {4.0, 7.0}
    # tilt from the positions agrees with the GantryDetectorTilt tag's magnitude
    tag = abs(
        float(
            pydicom.dcmread(
                next(ge_tilt_ct.glob("*.dcm")), stop_before_pixels=True
            ).GantryDetectorTilt
        )
    )
    assert table.attrs["tilt_deg"] == pytest.approx(tag, abs=0.05)


def test_philips_tilt_and_regular_steps(philips_da, philips_tilt) -> None:
    table = explain.slice_positions(philips_da)
    assert set(table["kind"].iloc[1:]) == {"regular"}
    ds = pydicom.dcmread(philips_tilt / "I10", stop_before_pixels=True)
    assert table.attrs["tilt_deg"] == pytest.approx(abs(float(ds.GantryDetectorTilt)), abs=0.05)
    # tilt shows as an in-plane shift growing linearly along the stack
    shift = table["shift_col"].to_numpy()
    slope = np.polyfit(table["s"], shift, 1)[0]
    assert np.degrees(np.arctan(abs(slope))) == pytest.approx(
        abs(float(ds.GantryDetectorTilt)), abs=0.05
    )


def test_gap_and_duplicate_marked(tmp_path: Path) -> None:
    z = [0.0, 2.0, 4.0, 8.0, 10.0, 10.0, 12.0]  # one slice missing at 6, a duplicate at 10
    positions = [(-10.0, -10.0, zz) for zz in z]
    write_series(tmp_path, phantom_volume((len(z), 8, 8)), positions=positions)
    table = explain.slice_positions(dicomxr.scan(tmp_path))
    kinds = table["kind"].tolist()
    assert kinds.count("gap") == 1 and kinds.count("duplicate") == 1
    gap = table[table["kind"] == "gap"].iloc[0]
    assert gap["s"] == pytest.approx(8.0) and gap["missing"] == 1
    assert table.attrs["typical_step"] == pytest.approx(2.0)


def test_instance_number_order_really_differs(shuffled) -> None:
    folder, volume, perm = shuffled
    da = dicomxr.open_series(folder)
    right = explain.frame_order(da, "position")
    by_instance = explain.frame_order(da, "InstanceNumber")
    by_name = explain.frame_order(da, "filename")
    assert right.tolist() == list(range(12))  # the loader's own order is the position order
    assert not np.array_equal(by_instance, right)
    assert not np.array_equal(by_name, right)
    # InstanceNumber k+1 was written on slice perm[k]... so sorting by it visits slices in
    # the order argsort(perm): an independent statement of what the naive loop stacks
    np.testing.assert_array_equal(by_instance, np.argsort(perm))

    good = explain.reformat(da)
    bad = explain.reformat(da, by_instance)
    assert good.shape == bad.shape == (12, 32)
    assert not np.array_equal(good, bad)
    np.testing.assert_array_equal(bad, good[np.argsort(perm)])
    # and the reformat is the stored column (phantom values, rescale applied by the loader)
    col = da.sizes["col"] // 2
    np.testing.assert_allclose(good, volume[:, :, col] * 1.0 - 1024.0)

    fig = explain.compare_orders(da, by="InstanceNumber")
    assert fig.dicomxr_orders_differ is True


def test_real_series_orders(philips_da, ge_da) -> None:
    # the Philips CT numbers its instances in position order, but its files I10, I100, I110...
    # sort as strings: by file name the stack is scrambled
    assert np.array_equal(
        explain.frame_order(philips_da, "InstanceNumber"), explain.frame_order(philips_da)
    )
    by_name = explain.frame_order(philips_da, "filename")
    assert not np.array_equal(by_name, explain.frame_order(philips_da))
    assert explain.compare_orders(philips_da, by="filename").dicomxr_orders_differ is True
    assert explain.compare_orders(philips_da, by="InstanceNumber").dicomxr_orders_differ is False
    # GE: both orders agree with position; the problem there is the spacing
    assert np.array_equal(explain.frame_order(ge_da, "InstanceNumber"), explain.frame_order(ge_da))


def test_4d_sample_by_instance_number_is_one_tall_stack(sample_dir: Path) -> None:
    da = dicomxr.open_series(sample_dir)
    frame_dims = [d for d in da.dims if d not in ("row", "col")]
    assert len(frame_dims) >= 2 and frame_dims[-1] == "slice"  # 240 files: several volumes
    n_frames = int(np.prod([da.sizes[d] for d in frame_dims]))
    assert n_frames == 240
    by_instance = explain.frame_order(da, "InstanceNumber")
    assert by_instance.shape == (n_frames,)
    s = explain.slice_positions(da).set_index("input_index").sort_index()["s"].to_numpy()
    stacked = s[by_instance]
    # sorted by InstanceNumber the positions climb, fall back and climb again: several volumes
    assert (np.diff(stacked) < -1).sum() >= 1
    fig = explain.compare_orders(da, by="InstanceNumber")
    assert fig.dicomxr_orders_differ is True
    assert explain.reformat(da, by_instance).shape == (n_frames, da.sizes["row"])


def test_figures(ge_da, philips_da, artifacts_dir: Path) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    before = plt.get_fignums()  # figures other tests left open are not this test's business
    for name, da in (("ge", ge_da), ("philips", philips_da)):
        figs = {
            "positions": explain.plot_slice_positions(da),
            "orientation": explain.plot_orientation(da),
            "order": explain.compare_orders(da, by="filename"),
        }
        for kind, fig in figs.items():
            assert isinstance(fig, Figure)
            assert len(fig.axes) >= (3 if kind != "orientation" else 1)
            path = artifacts_dir / f"explain_{name}_{kind}.png"
            fig.savefig(path, dpi=60)
            assert path.stat().st_size > 10_000
    # figures are not left open in pyplot (no accumulation across calls)
    assert plt.get_fignums() == before


def test_bad_input(philips_tilt: Path) -> None:
    with pytest.raises(TypeError, match="DataArray"):
        explain.slice_positions(42)
    table = dicomxr.scan(philips_tilt.parent)
    with pytest.raises(ValueError):
        explain.slice_positions(table)  # several series (and localizers without positions)
    with pytest.raises(ValueError, match="by must be"):
        explain.frame_order(table.iloc[:0], "SliceLocation")  # type: ignore[arg-type]


def test_import_is_light() -> None:
    code = "import sys, dicomxr.teaching.explain; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_slice_order_notebook_fails_loudly_without_corpora(
    tmp_path: Path, monkeypatch, data_root: Path
) -> None:
    """The tutorial's data lookup raises (never skips) when the corpora are missing.

    Only the lookup cell is run here: the notebook itself is executed once, by the docs build.
    """
    import nbformat

    notebook = Path(__file__).resolve().parents[1] / "notebooks" / "slice_order.ipynb"
    cells = [c.source for c in nbformat.read(notebook, as_version=4).cells if c.cell_type == "code"]
    (lookup,) = [src for src in cells if "def find_corpora" in src]
    definition = lookup.split("\ncorpora = ")[0]
    namespace = {"os": __import__("os"), "Path": Path}
    exec(definition, namespace)
    monkeypatch.setenv("DICOMXR_TEST_DATA", str(tmp_path / "nowhere"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="DICOMXR_TEST_DATA"):
        namespace["find_corpora"]()

    # and finds the real corpora through the variable
    monkeypatch.setenv("DICOMXR_TEST_DATA", str(data_root))
    assert namespace["find_corpora"]() == data_root
