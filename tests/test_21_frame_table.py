"""The light frame table planning reads (``dicomxr.frames.FrameTable``) and the lazy ``plan.frames``.

Planning no longer builds a ~90-column DataFrame of every frame: it reads the catalog's
columns one value per instance and the frames' own columns (functional groups, MOSAIC
tiles). These tests hold it to the DataFrame it replaces: :func:`dicomxr.frames.expand`'s
table, and plans made from that table, are the reference.
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import dicomxr
from dicomxr import frames
from dicomxr.frames import FrameTable
from dicomxr.series import plan_series

SOURCES = (
    ("dcm_qa_philips_enh", "In", "enh"),  # enhanced multi-frame: per-frame functional groups
    ("dcm_qa_philips_enh", "In", "cl"),  # classic: many series in one catalog
    ("dcm_qa_ct", "In", "Philips", "S21570", "S2020"),  # one 140-slice classic CT
)


def _quiet_plans(source, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return plan_series(source, **kwargs)


def _same_plans(a, b) -> None:
    assert [p.key for p in a] == [p.key for p in b]
    for x, y in zip(a, b, strict=True):
        assert x.dims == y.dims and x.label == y.label and x.frame_shape == y.frame_shape
        np.testing.assert_array_equal(x.affine, y.affine)
        assert x.attrs == y.attrs and x.patient == y.patient and x.set_apart == y.set_apart
        assert x.coords.keys() == y.coords.keys()
        for name in x.coords:
            assert x.coords[name][0] == y.coords[name][0], name
            np.testing.assert_array_equal(x.coords[name][1], y.coords[name][1])
        # the grids may index differently ordered tables: compare the rows they point at
        rows_x = x.frames.iloc[x.grid[x.grid >= 0]].reset_index(drop=True)
        rows_y = y.frames.iloc[y.grid[y.grid >= 0]].reset_index(drop=True)
        pd.testing.assert_frame_equal(rows_x, rows_y)
        np.testing.assert_array_equal(x.grid >= 0, y.grid >= 0)


@pytest.mark.parametrize("parts", SOURCES, ids=lambda p: "/".join(p[-2:]))
def test_plans_of_the_catalog_equal_plans_of_the_expanded_table(
    data_root: Path, scanned, parts
) -> None:
    cat = scanned(str(data_root.joinpath(*parts)))
    for policy in ({}, {"on_irregular": "split", "on_duplicate": "split"}):
        _same_plans(_quiet_plans(cat, **policy), _quiet_plans(frames.expand(cat), **policy))


@pytest.mark.parametrize("parts", SOURCES, ids=lambda p: "/".join(p[-2:]))
def test_frame_table_columns_read_as_the_dataframe_does(data_root: Path, scanned, parts) -> None:
    cat = scanned(str(data_root.joinpath(*parts)))
    table, expanded = frames.frame_table(cat), frames.expand(cat)
    assert table.columns == expanded.columns.tolist() and len(table) == len(expanded)
    pd.testing.assert_frame_equal(table.to_pandas(), expanded)
    for name in expanded.columns:
        pd.testing.assert_series_equal(table[name], expanded[name], check_names=True)
        assert name in table
    assert "NoSuchColumn" not in table
    with pytest.raises(KeyError):
        table["NoSuchColumn"]
    rows = np.arange(len(table))[::-3]
    pd.testing.assert_frame_equal(
        table.take(rows).to_pandas(), expanded.take(rows).reset_index(drop=True)
    )


def test_plan_frames_are_made_only_when_read(data_root: Path, monkeypatch) -> None:
    path = data_root / "dcm_qa_philips_enh" / "In" / "enh" / "1903_WIP_SOURCE_-_3DpCASL.dcm"
    made: list[int] = []
    to_pandas = FrameTable.to_pandas

    def counting(self):
        made.append(len(self))
        return to_pandas(self)

    monkeypatch.setattr(FrameTable, "to_pandas", counting)
    cat = dicomxr.scan(path, progress=False, warn=False)
    (plan,) = _quiet_plans(cat)
    da = dicomxr.open_series(plan)
    assert float(da.isel(time=0, label=0, slice=3).mean()) >= 0
    assert made == []  # planning, opening and a read made no DataFrame of the frames
    assert plan.frame_table is not None and len(plan.frame_table) == 240
    table = plan.frames
    assert made == [240] and isinstance(table, pd.DataFrame)
    assert plan.frames is table  # made once
    pd.testing.assert_frame_equal(table, frames.expand(cat))


def test_plan_frames_do_not_follow_later_changes_of_the_catalog(data_root: Path) -> None:
    source = data_root / "dcm_qa_ct" / "In" / "Philips" / "S21570" / "S2020"
    cat = dicomxr.scan(source, progress=False, warn=False)
    (plan,) = _quiet_plans(cat)
    before = cat.copy(deep=True)
    cat.loc[0, "SeriesDescription"] = "changed after planning"
    cat.loc[:, "RescaleIntercept"] = 7.0
    cat["path"] = "/nowhere"
    expected = frames.expand(before)
    frame_rows = plan.frames
    assert not (frame_rows["path"] == "/nowhere").any()
    assert set(frame_rows["RescaleIntercept"]) == set(expected["RescaleIntercept"])
    assert "changed after planning" not in set(frame_rows["SeriesDescription"])
    np.testing.assert_array_equal(
        np.asarray(dicomxr.open_series(plan).isel(slice=5)),
        np.asarray(dicomxr.open_series(_quiet_plans(before)[0]).isel(slice=5)),
    )


def test_a_pickled_plan_carries_only_its_own_rows(data_root: Path, scanned) -> None:
    cat = scanned(str(data_root / "dcm_qa_philips_enh" / "In" / "cl"))
    plans = _quiet_plans(cat)
    assert len(plans) >= 5
    whole = len(pickle.dumps(cat))
    for plan in plans:
        data = pickle.dumps(plan)
        back = pickle.loads(data)
        pd.testing.assert_frame_equal(back.frames, plan.frames)
        np.testing.assert_array_equal(back.grid, plan.grid)
        files = plan.frames["path"].nunique()
        if files < len(cat) / 4:
            assert len(data) < whole / 2, (plan.label, len(data), whole)


def test_a_plan_made_with_a_dataframe_still_works(data_root: Path, scanned) -> None:
    import dataclasses

    cat = scanned(str(data_root / "dcm_qa_ct" / "In" / "Philips" / "S21570" / "S2020"))
    (plan,) = _quiet_plans(cat)
    made = dataclasses.replace(plan, frames=plan.frames.copy())
    assert isinstance(made.frames, pd.DataFrame)
    pd.testing.assert_frame_equal(made.frame_table.to_pandas(), plan.frames)
    xa = dicomxr.open_series(made).isel(slice=[0, 70])
    xb = dicomxr.open_series(plan).isel(slice=[0, 70])
    np.testing.assert_array_equal(xa.values, xb.values)
