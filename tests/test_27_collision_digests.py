"""The scan keeps the stored-frame digests of colliding instances: planning opens no file.

Files that reuse a SOPInstanceUID are either copies of one instance (set apart) or different
images under one UID (kept, with an :class:`~dicomxr.InstanceCollisionWarning`); only decoded
values tell them apart (issue 11). :func:`dicomxr.scan` computes those digests for the rows
whose UID collides (``frame_digests``), so that planning a scanned catalog opens no file
(issue 10, item 3); a catalog without them (another scan's rows concatenated, the column
dropped) is still planned the same way, by reading the colliding files.

Built from real files: slices of the Philips head CT (``dcm_qa_ct``), its RLE re-encoding
made by pydicom, the multi-frame CT of ``dicomParser`` in many transfer syntaxes and a Siemens
MOSAIC of ``dcm_qa_ts``. File opens are counted by an audit hook (every ``open`` of the
interpreter: :func:`open`, :func:`os.open`, ``io.open``), which the control cases prove sees
the reads of the fallback.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

import dicomxr
from dicomxr import pixels
from dicomxr.series import plan_series

N = 8

# ------------------------------------------------------------------------- counting opens

_WATCHED: list[tuple[str, list[str]]] = []  # (folder, paths opened under it) while active
_HOOKED = False


def _audit(event: str, args: tuple) -> None:
    if event != "open" or not _WATCHED:
        return
    path = args[0]
    if isinstance(path, (str, bytes, os.PathLike)):
        text = os.path.abspath(os.fsdecode(path))
        for folder, seen in _WATCHED:
            if text.startswith(folder):
                seen.append(text)


@contextmanager
def _opens(folder: Path) -> Iterator[list[str]]:
    """Record every file opened under ``folder`` while the block runs."""
    global _HOOKED
    if not _HOOKED:  # an audit hook cannot be removed: installed once, idle outside blocks
        sys.addaudithook(_audit)
        _HOOKED = True
    seen: list[str] = []
    entry = (os.path.abspath(folder) + os.sep, seen)
    _WATCHED.append(entry)
    try:
        yield seen
    finally:
        _WATCHED.remove(entry)


# ------------------------------------------------------------------------- data


@pytest.fixture()
def ct_folder(ct_slices) -> Path:
    return ct_slices(N)


def _dicomparser_files(data_root: Path, tmp_path: Path, pattern: str) -> Path:
    """Copy dicomParser's files matching ``pattern`` (one instance, many encodings) together."""
    folder = tmp_path / "mf"
    folder.mkdir()
    for f in (data_root / "dicomParser").rglob(pattern):
        shutil.copy(f, folder / f.name)
    return folder


def _rle_copy(source: Path, target: Path) -> None:
    """The same instance, same pixels, other bytes."""
    ds = pydicom.dcmread(source)
    ds.compress(pydicom.uid.RLELossless, generate_instance_uid=False)
    ds.save_as(target)


def _other_image(source: Path, target: Path) -> None:
    """A different image under the same SOPInstanceUID."""
    ds = pydicom.dcmread(source)
    arr = ds.pixel_array.copy()
    arr[100:200, 100:200] = 0
    ds.PixelData = arr.tobytes()
    ds.save_as(target)


def _collisions(folder: Path) -> dict[str, Path]:
    """Add a byte copy, an RLE copy and a different image under a reused UID."""
    (folder / "again").mkdir()
    made = {
        "same_bytes": folder / "again" / "same_bytes.dcm",
        "rle": folder / "again" / "rle.dcm",
        "other": folder / "zz_other.dcm",
    }
    shutil.copy(folder / "slice03.dcm", made["same_bytes"])
    _rle_copy(folder / "slice05.dcm", made["rle"])
    _other_image(folder / "slice02.dcm", made["other"])
    return made


def _plan(catalog: pd.DataFrame, **kwargs) -> tuple[list, list[str]]:
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        plans = plan_series(catalog, **kwargs)
    return plans, [f"{w.category.__name__}: {w.message}" for w in said]


def _summary(plans) -> tuple:
    """What planning decided, without the digests themselves."""
    return (
        [
            (
                p.key,
                p.dims,
                p.grid.tolist(),
                p.frames.drop(columns="frame_digests", errors="ignore")["path"].tolist(),
            )
            for p in plans
        ],
        plans.set_apart.to_dict("records"),
    )


def _reference_digest(path: Path) -> str:
    """blake2b of pydicom's decode (dtype, shape, values): an independent reader."""
    arr = np.ascontiguousarray(pydicom.dcmread(path).pixel_array)
    digest = hashlib.blake2b(digest_size=20)
    digest.update(f"{arr.dtype.str}{arr.shape}".encode())
    digest.update(arr.tobytes())
    return digest.hexdigest()


def _age(paths) -> None:
    """Date files an hour back: a rescan trusts the snapshot only for files not racily new."""
    then = time.time() - 3600
    for path in paths:
        os.utime(path, (then, then))


def _digests(catalog: pd.DataFrame) -> dict[str, tuple[str, ...]]:
    return {
        os.path.basename(p): d
        for p, d in zip(catalog["path"], catalog["frame_digests"], strict=True)
        if d is not None
    }


# ------------------------------------------------------------------------- tests


def test_planning_a_scanned_catalog_with_collisions_opens_no_file(ct_folder: Path) -> None:
    made = _collisions(ct_folder)
    cat = dicomxr.scan(ct_folder, progress=False)
    digests = _digests(cat)
    # only the colliding rows, one digest per stored frame, of the decoded values
    assert sorted(digests) == sorted(
        ["slice02.dcm", "slice03.dcm", "slice05.dcm", "same_bytes.dcm", "rle.dcm", "zz_other.dcm"]
    )
    for name, value in digests.items():
        path = next(ct_folder.rglob(name))
        assert value == (_reference_digest(path),), name
    assert digests["slice05.dcm"] == digests["rle.dcm"]  # whatever the encoding
    assert digests["slice02.dcm"] != digests["zz_other.dcm"]

    with _opens(ct_folder) as opened:
        plans, said = _plan(cat)
    assert opened == []
    reasons = dict(zip(plans.set_apart["path"], plans.set_apart["reason"], strict=True))
    assert reasons == {
        str(ct_folder / "slice03.dcm"): "copy of the same instance (SOPInstanceUID, frame and "
        f"pixel data) as {made['same_bytes']}",
        str(ct_folder / "slice05.dcm"): "copy of the same instance (SOPInstanceUID, frame and "
        f"pixel data) as {made['rle']}",
    }
    (collision,) = [m for m in said if m.startswith("InstanceCollisionWarning")]
    assert str(made["other"]) in collision and str(ct_folder / "slice02.dcm") in collision

    # the control: without the column, planning reads the colliding files (the counter sees
    # them) and decides exactly the same
    with _opens(ct_folder) as opened:
        again, said_again = _plan(cat.drop(columns="frame_digests"))
    assert {os.path.basename(p) for p in opened} == set(digests)
    assert _summary(again) == _summary(plans) and said_again == said


def test_every_policy_decides_as_the_fallback(ct_folder: Path) -> None:
    _collisions(ct_folder)
    cat = dicomxr.scan(ct_folder, progress=False)
    without = cat.drop(columns="frame_digests")
    for kwargs in ({"on_duplicate": "split"}, {"on_duplicate": "ignore"}, {}):
        with _opens(ct_folder) as opened:
            plans, said = _plan(cat, **kwargs)
        assert opened == [], kwargs
        assert (_summary(plans), said) == (_summary(_plan(without, **kwargs)[0]), said), kwargs
    # and what a user opens: the volume holds the kept files, as pydicom decodes them
    plans, _ = _plan(cat, on_duplicate="split")
    (main,) = [p for p in plans if p.grid.size == N]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        da = dicomxr.open_series(cat, series=main, chunks=None)
    names = [f"slice{i:02d}.dcm" for i in range(N)]
    names[3], names[5] = "again/same_bytes.dcm", "again/rle.dcm"
    stored = np.stack([pydicom.dcmread(ct_folder / n).pixel_array for n in names])
    ds = pydicom.dcmread(ct_folder / names[0])
    want = stored * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert np.array_equal(da.values, want)


def test_multiframe_copies_in_many_encodings(data_root: Path, tmp_path: Path) -> None:
    """dicomParser's 2-frame CT, 8 encodings of one instance: one digest per frame."""
    folder = _dicomparser_files(data_root, tmp_path, "CT0012.*")
    cat = dicomxr.scan(folder, progress=False, warn=False)
    digests = _digests(cat)
    assert len(digests) >= 3 and len(set(digests.values())) == 1
    (value,) = set(digests.values())
    frames = pydicom.dcmread(folder / "CT0012.explicit_little_endian.dcm").pixel_array
    assert len(value) == len(frames) == 2
    for k in range(2):
        arr = np.ascontiguousarray(frames[k])
        ref = hashlib.blake2b(f"{arr.dtype.str}{arr.shape}".encode(), digest_size=20)
        ref.update(arr.tobytes())
        assert value[k] == ref.hexdigest()
    with _opens(folder) as opened:
        plans, _ = _plan(cat)
    assert opened == []
    assert _summary(plans) == _summary(_plan(cat.drop(columns="frame_digests"))[0])
    copies = plans.set_apart["reason"].str.startswith("copy of the same instance")
    assert copies.sum() == 2 * (len(digests) - 1)  # both frames of every later copy


def test_mosaic_copy_is_one_stored_frame(data_root: Path, tmp_path: Path) -> None:
    """A MOSAIC's tiles are parts of stored frame 0: its one digest serves every tile."""
    folder = tmp_path / "mosaic"
    folder.mkdir()
    source = data_root / "dcm_qa_ts" / "In" / "1.dcm"
    shutil.copy(source, folder / "a.dcm")
    shutil.copy(source, folder / "b.dcm")
    cat = dicomxr.scan(folder, progress=False, warn=False)
    assert bool(cat["is_mosaic"].all())
    assert _digests(cat) == {
        "a.dcm": (_reference_digest(source),),
        "b.dcm": (_reference_digest(source),),
    }
    with _opens(folder) as opened:
        plans, _ = _plan(cat)
    assert opened == []
    (plan,) = plans
    tiles = int(cat["NumberOfImagesInMosaic"].iat[0])
    assert set(plan.frames["path"]) == {str(folder / "a.dcm")} and plan.grid.size == tiles
    assert (plans.set_apart["path"] == str(folder / "b.dcm")).sum() == tiles
    assert _summary(plans) == _summary(_plan(cat.drop(columns="frame_digests"))[0])


def test_unreadable_frame_keeps_its_reason(ct_folder: Path) -> None:
    """A colliding file whose pixel data cannot be decoded: not compared, and planning says why."""
    ds = pydicom.dcmread(ct_folder / "slice04.dcm")
    ds.compress(pydicom.uid.RLELossless, generate_instance_uid=False)
    (frame,) = pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1)
    broken = (15).to_bytes(4, "little") + bytes(60) + frame[64:]  # 15 segments: impossible
    ds.PixelData = pydicom.encaps.encapsulate([broken])
    ds.save_as(ct_folder / "zz_broken.dcm")
    cat = dicomxr.scan(ct_folder, progress=False)
    digests = _digests(cat)
    assert digests["zz_broken.dcm"][0].startswith(pixels.UNREADABLE)
    with _opens(ct_folder) as opened:
        plans, _ = _plan(cat)
    assert opened == []
    reason = dict(zip(plans.set_apart["path"], plans.set_apart["reason"], strict=True))
    why = digests["zz_broken.dcm"][0][len(pixels.UNREADABLE) :]
    assert reason == {
        str(ct_folder / "zz_broken.dcm"): "same SOPInstanceUID and frame as "
        f"{ct_folder / 'slice04.dcm'}; pixel data not compared ({why})"
    }
    assert _summary(plans) == _summary(_plan(cat.drop(columns="frame_digests"))[0])


def test_catalogs_put_together_fall_back_to_reading(ct_folder: Path, tmp_path: Path) -> None:
    """Rows that collide only across two scans have no digest: planning reads them."""
    other = tmp_path / "other"
    other.mkdir()
    _rle_copy(ct_folder / "slice05.dcm", other / "rle.dcm")
    _other_image(ct_folder / "slice02.dcm", other / "zz_other.dcm")
    both = pd.concat(
        [dicomxr.scan(ct_folder, progress=False), dicomxr.scan(other, progress=False)],
        ignore_index=True,
    )
    assert both["frame_digests"].isna().all()
    with _opens(ct_folder) as opened:
        plans, said = _plan(both)
    assert {os.path.basename(p) for p in opened} == {"slice02.dcm", "slice05.dcm"}
    one_scan = dicomxr.scan([ct_folder, other], progress=False)
    with _opens(ct_folder) as opened:
        want, want_said = _plan(one_scan)
    assert opened == []
    assert _summary(plans) == _summary(want) and said == want_said
    assert plans.set_apart["path"].tolist() == [str(other / "rle.dcm")]
    assert plans.set_apart["reason"].tolist() == [
        "copy of the same instance (SOPInstanceUID, frame and pixel data) as "
        f"{ct_folder / 'slice05.dcm'}"
    ]


def test_cached_rescan_digests_old_rows_that_now_collide(ct_folder: Path, tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    cache = tmp_path / "cache"
    _age(ct_folder.glob("*.dcm"))  # files written just now are read again by any rescan
    first = dicomxr.scan(ct_folder, progress=False, cache=cache)
    assert first["frame_digests"].isna().all()
    # a new file reuses an instance the snapshot holds: that old row collides now
    (ct_folder / "again").mkdir()
    new = ct_folder / "again" / "rle.dcm"
    _rle_copy(ct_folder / "slice05.dcm", new)
    _age([new])
    with _opens(ct_folder) as opened:
        second = dicomxr.scan(ct_folder, progress=False, cache=cache)
    # the unchanged files are not read again; the old row is opened for its pixels only
    assert {os.path.basename(p) for p in opened} == {"rle.dcm", "slice05.dcm"}
    fresh = dicomxr.scan(ct_folder, progress=False)
    assert (
        _digests(second)
        == _digests(fresh)
        == {
            "slice05.dcm": (_reference_digest(ct_folder / "slice05.dcm"),),
            "rle.dcm": (_reference_digest(ct_folder / "slice05.dcm"),),
        }
    )
    # the snapshot keeps them: a rescan of the unchanged tree reads nothing
    with _opens(ct_folder) as opened:
        third = dicomxr.scan(ct_folder, progress=False, cache=cache)
    assert opened == []
    pd.testing.assert_series_equal(third["frame_digests"], fresh["frame_digests"])
    with _opens(ct_folder) as opened:
        plans, _ = _plan(third)
    assert opened == [] and _summary(plans) == _summary(_plan(fresh)[0])
    assert plans.set_apart["path"].tolist() == [str(ct_folder / "slice05.dcm")]
    # the copy removed: nothing collides, the kept digest goes
    new.unlink()
    fourth = dicomxr.scan(ct_folder, progress=False, cache=cache)
    assert fourth["frame_digests"].isna().all()


def test_no_collision_no_digest_work(ct_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("a pixel digest for a tree where no SOPInstanceUID repeats")

    monkeypatch.setattr(dicomxr.pixels, "frame_digests", refuse)
    monkeypatch.setattr(dicomxr.pixels, "stored_frame_digest", refuse)
    cat = dicomxr.scan(ct_folder, progress=False)
    assert len(cat) == N and cat["frame_digests"].isna().all()
    # files without pixel data or cut short never ask for one either
    shutil.copy(ct_folder / "slice01.dcm", ct_folder / "zz_cut.dcm")
    data = (ct_folder / "zz_cut.dcm").read_bytes()
    (ct_folder / "zz_cut.dcm").write_bytes(data[:-20_000])
    cat = dicomxr.scan(ct_folder, progress=False)
    assert bool(cat["pixel_data_truncated"].any()) and cat["frame_digests"].isna().all()


def test_digests_in_threads_equal_one_thread(data_root: Path, tmp_path: Path) -> None:
    """``workers=`` reads the colliding files in threads, as it reads the headers."""
    folder = _dicomparser_files(data_root, tmp_path, "CT*")
    one = dicomxr.scan(folder, progress=False, warn=False)
    threads = dicomxr.scan(folder, progress=False, warn=False, workers=4)
    assert one["frame_digests"].notna().sum() >= 6
    assert one["frame_digests"].tolist() == threads["frame_digests"].tolist()
