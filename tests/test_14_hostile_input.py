"""One hostile file never takes down a scan, a plan or a load (issue 12).

The folder test: 20 good phantom slices plus one hostile file -> ``open_series`` returns the
20 slices and the scan's skipped report (or the plan's set-apart table) names the bad one.
Each hostile file is made here from the phantom or pydicom's test files, so every case
documents the attack it stands for.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest

import dicomxr
from dicomxr.phantom import phantom_volume, write_series

SERIES_UID = "1.2.826.0.1.3680043.10.1187.77.1"
GOOD = 20


def _tag(group: int, elem: int) -> bytes:
    return struct.pack("<HH", group, elem)


def _spare_slice(folder: Path) -> bytes:
    """A 21st slice of the good series (same UID, next position): a hostile member's seed."""
    vol = phantom_volume((GOOD + 1, 16, 12))
    paths = write_series(folder / "_spare", vol, series_uid=SERIES_UID)
    return paths[-1].read_bytes()


def _edit(data: bytes, **values: object) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    for key, value in values.items():
        setattr(ds, key, value)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=False)
    return buf.getvalue()


def deep_nesting(spare: bytes, path: Path) -> None:
    """5000 nested undefined-length sequences (a recursive reader runs out of stack)."""
    opened = _tag(0x0009, 0x1001) + b"SQ\0\0\xff\xff\xff\xff" + _tag(0xFFFE, 0xE000) + b"\xff" * 4
    closed = _tag(0xFFFE, 0xE00D) + b"\0" * 4 + _tag(0xFFFE, 0xE0DD) + b"\0" * 4
    creator = _tag(0x0009, 0x0010) + b"LO\x04\x00FUZZ"
    at = spare.index(_tag(0x0010, 0x0010) + b"PN")
    path.write_bytes(spare[:at] + creator + opened * 5000 + closed * 5000 + spare[at:])


def zeros_after_marker(spare: bytes, path: Path) -> None:
    """Preamble + DICM + 3 GiB of zeros (sparse): a header walk must not crawl through it."""
    with open(path, "wb") as fh:
        fh.write(b"\0" * 128 + b"DICM")
        fh.truncate(3 << 30)


def deflate_bomb(spare: bytes, path: Path) -> None:
    """A deflated data set of a few hundred kB that inflates to 320 MiB."""
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = _tag(0x0009, 0x0010) + b"LO\x04\x00BOMB" + _tag(0x0009, 0x1001) + b"OB\0\0"
    parts = [comp.compress(head + struct.pack("<I", 320 << 20))]
    parts += [comp.compress(b"\0" * (1 << 20)) for _ in range(320)]
    parts.append(comp.flush())
    ts = b"1.2.840.10008.1.2.1.99"
    meta = _tag(0x0002, 0x0010) + b"UI" + struct.pack("<H", len(ts)) + ts
    group = _tag(0x0002, 0x0000) + b"UL\x04\x00" + struct.pack("<I", len(meta))
    path.write_bytes(b"\0" * 128 + b"DICM" + group + meta + b"".join(parts))


def fifo(spare: bytes, path: Path) -> None:
    """A named pipe: opening it for reading blocks forever."""
    os.mkfifo(path)


def self_link(spare: bytes, path: Path) -> None:
    """A symbolic link to itself."""
    os.symlink(path, path)


def link_to_dev_zero(spare: bytes, path: Path) -> None:
    """A link to an endless device."""
    os.symlink("/dev/zero", path)


def huge_frame_count(spare: bytes, path: Path) -> None:
    """NumberOfFrames 2**31 - 1 in a 1 kB slice: planning must not make 2**31 rows."""
    path.write_bytes(_edit(spare, NumberOfFrames=2**31 - 1))


def zero_columns_many_frames(spare: bytes, path: Path) -> None:
    """Columns 0 and NumberOfFrames 2**31 - 1: zero bytes a frame must not make the claim fit."""
    path.write_bytes(_edit(spare, Columns=0, NumberOfFrames=2**31 - 1))


def huge_samples(spare: bytes, path: Path) -> None:
    """Rows = Columns = SamplesPerPixel = 65535: loading must not allocate 2**48 bytes."""
    path.write_bytes(_edit(spare, Rows=65535, Columns=65535, SamplesPerPixel=65535))


def _raw_ds(spare: bytes, path: Path, keyword: str, value: str) -> None:
    from pydicom import config
    from pydicom.dataelem import DataElement

    ds = pydicom.dcmread(io.BytesIO(spare))
    tag = ds.data_element(keyword).tag
    with config.disable_value_validation():
        ds[tag] = DataElement(tag, "DS", value)
        ds.save_as(path, enforce_file_format=False)


def nan_orientation(spare: bytes, path: Path) -> None:
    """ImageOrientationPatient of NaNs (reached a float(None) TypeError in planning)."""
    _raw_ds(spare, path, "ImageOrientationPatient", "nan\\nan\\nan\\nan\\nan\\nan")


def parallel_orientation(spare: bytes, path: Path) -> None:
    """Parallel direction cosines (a GeometryError that escaped through the CLI's scan)."""
    _raw_ds(spare, path, "ImageOrientationPatient", "1\\0\\0\\1\\0\\0")


def huge_orientation(spare: bytes, path: Path) -> None:
    _raw_ds(spare, path, "ImageOrientationPatient", "1e308\\1e308\\0\\0\\1e308\\0")


def zero_spacing(spare: bytes, path: Path) -> None:
    """PixelSpacing 0\\0: no in-plane geometry (it made a plan of its own)."""
    _raw_ds(spare, path, "PixelSpacing", "0\\0")


def nan_negative_spacing(spare: bytes, path: Path) -> None:
    _raw_ds(spare, path, "PixelSpacing", "-1\\nan")


def non_ascii_uid(spare: bytes, path: Path) -> None:
    """Bytes >= 0x80 inside the SeriesInstanceUID (an ASCII VR)."""
    i = spare.index(SERIES_UID.encode())
    path.write_bytes(spare[: i + 4] + b"\xff\xfe" + spare[i + 6 :])


HOSTILE: dict[str, Callable[[bytes, Path], None]] = {
    f.__name__: f
    for f in (
        deep_nesting,
        zeros_after_marker,
        deflate_bomb,
        fifo,
        self_link,
        link_to_dev_zero,
        huge_frame_count,
        zero_columns_many_frames,
        huge_samples,
        nan_orientation,
        parallel_orientation,
        huge_orientation,
        zero_spacing,
        nan_negative_spacing,
        non_ascii_uid,
    )
}


@pytest.fixture(scope="module")
def good_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("good20")
    write_series(folder, phantom_volume((GOOD, 16, 12)), series_uid=SERIES_UID)
    return folder


def _with_hostile(good: Path, tmp_path: Path, make: Callable[[bytes, Path], None]) -> Path:
    folder = tmp_path / "series"
    folder.mkdir()
    for p in good.iterdir():
        os.link(p, folder / p.name)
    make(_spare_slice(tmp_path), folder / "hostile.dcm")
    return folder


def _named(source_report: list[dict[str, str]], path: Path) -> str:
    reasons = [s["reason"] for s in source_report if s["path"] == str(path)]
    assert reasons, f"{path.name} is not named in the skipped report"
    return reasons[0]


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_twenty_good_slices_and_one_hostile_file(
    kind: str, good_folder: Path, tmp_path: Path
) -> None:
    folder = _with_hostile(good_folder, tmp_path, HOSTILE[kind])
    hostile = folder / "hostile.dcm"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        df = dicomxr.scan(folder)
        da = dicomxr.open_series(folder, series=SERIES_UID)
        values = da.values
    assert da.sizes["slice"] >= GOOD
    assert values.shape[0] == da.sizes["slice"]
    if str(hostile) not in set(df["path"]):
        assert _named(df.attrs["skipped"], hostile)
    else:  # catalogued: it loads as a slice, or planning sets it apart
        plans = dicomxr.plan_series(df)
        apart = set(plans.set_apart["path"]) if len(plans.set_apart) else set()
        planned = {p for plan in plans for p in plan.frames["path"]}  # its own series, maybe
        assert str(hostile) in apart | planned


@pytest.mark.parametrize("key, delta", [("Columns", -1), ("Columns", 1), ("Rows", 1)])
def test_a_lying_size_is_never_read_sheared(
    key: str, delta: int, good_folder: Path, tmp_path: Path
) -> None:
    """A 16 x 12 slice whose header says one column (or row) more or less."""
    from dicomxr import pixels

    path = tmp_path / "lying.dcm"
    ds = pydicom.dcmread(io.BytesIO(_spare_slice(tmp_path)))
    path.write_bytes(_edit(_spare_slice(tmp_path), **{key: int(ds[key].value) + delta}))
    (ref,) = pixels.file_frame_refs(path)
    with pytest.raises(dicomxr.PixelDataError, match=r"lying\.dcm.*does not match"):
        pixels.read_frame(ref)


def test_extra_whole_rows_are_ignored_with_a_warning(tmp_path: Path) -> None:
    """Rows one too small: the described rows read as they are (pydicom's padded file)."""
    from dicomxr import pixels

    path = tmp_path / "short_rows.dcm"
    ds = pydicom.dcmread(io.BytesIO(_spare_slice(tmp_path)))
    full = ds.pixel_array
    path.write_bytes(_edit(_spare_slice(tmp_path), Rows=int(ds.Rows) - 1))
    (ref,) = pixels.file_frame_refs(path)
    with pytest.warns(dicomxr.DicomxrWarning, match="extra rows are ignored"):
        got = pixels.read_frame(ref)
    np.testing.assert_array_equal(got, full[:-1])


@pytest.mark.parametrize("kind", ["fifo", "self_link", "link_to_dev_zero", "dangling"])
def test_anatomy_refuses_what_is_not_a_regular_file(kind: str, tmp_path: Path) -> None:
    """A pipe, a link loop, a device or a dangling link: a named error, nothing opened."""
    from dicomxr.errors import InputFileError
    from dicomxr.teaching.anatomy import anatomy

    path = tmp_path / "hostile.dcm"
    if kind == "dangling":
        os.symlink(tmp_path / "nowhere.dcm", path)
    else:
        HOSTILE[kind](b"", path)
    with pytest.raises(InputFileError, match=r"hostile\.dcm"):
        anatomy(path)


def test_anatomy_bounds_a_deflate_bomb(tmp_path: Path) -> None:
    from dicomxr.teaching.anatomy import anatomy

    path = tmp_path / "bomb.dcm"
    deflate_bomb(b"", path)
    a = anatomy(path)
    assert any("inflates past" in b.reason for b in a.breaks)


def _fileset(tmp_path: Path) -> tuple[Path, list[str]]:
    import shutil

    from pydicom.data import get_testdata_file

    src = Path(get_testdata_file("DICOMDIR")).parent
    fs = tmp_path / "fileset"
    shutil.copytree(src, fs, ignore=shutil.ignore_patterns("DICOMDIR-*", "README*"))
    ds = pydicom.dcmread(src / "DICOMDIR")
    refs = sorted(
        {
            str(
                fs.joinpath(
                    *(
                        [r.ReferencedFileID]
                        if isinstance(r.ReferencedFileID, str)
                        else r.ReferencedFileID
                    )
                )
            )
            for r in ds.DirectoryRecordSequence
            if r.get("ReferencedFileID")
        }
    )
    return fs, refs


@pytest.mark.parametrize("damage", ["item_length", "element_length", "truncated"])
def test_a_damaged_dicomdir_loses_no_reference_silently(damage: str, tmp_path: Path) -> None:
    """Every file the intact DICOMDIR lists is catalogued or named in the report."""
    fs, refs = _fileset(tmp_path)
    data = bytearray((fs / "DICOMDIR").read_bytes())
    items = [i for i in range(400, len(data) - 8) if data[i : i + 4] == b"\xfe\xff\x00\xe0"]
    if damage == "item_length":  # the third record claims 7 bytes
        data[items[2] + 4 : items[2] + 8] = struct.pack("<I", 7)
    elif damage == "element_length":  # a record's type (CS) claims 0xFFFF bytes
        i = data.index(b"\x04\x00\x30\x14CS", items[3])
        data[i + 6 : i + 8] = b"\xff\xff"
    else:
        data = data[: items[len(items) // 2] + 40]
    (fs / "DICOMDIR").write_bytes(bytes(data))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        df = dicomxr.scan(fs / "DICOMDIR")
    named = set(df["path"]) | {s["path"] for s in df.attrs["skipped"]}
    assert [r for r in refs if r not in named] == []
    assert any("director" in s["reason"] for s in df.attrs["skipped"])


def test_linked_folders_are_followed_once_and_loops_reported(
    good_folder: Path, tmp_path: Path
) -> None:
    tree = tmp_path / "tree"
    (tree / "study").mkdir(parents=True)
    os.symlink(good_folder, tree / "study" / "series_link")  # a series folder that is a link
    os.symlink("..", tree / "study" / "loop_up")
    os.symlink(tree, tree / "study" / "loop_top")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        by_folder = dicomxr.scan(tree)
        by_glob = dicomxr.scan(str(tree / "**" / "*"))
    for df in (by_folder, by_glob):
        assert len(df) == GOOD and df["path"].is_unique
    reasons = [s["reason"] for s in by_folder.attrs["skipped"]]
    assert any("already scanned" in r for r in reasons)


@pytest.mark.parametrize("command", ["scan", "anatomy"])
def test_cli_prints_one_line_and_exits_non_zero(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from dicomxr.cli import main

    pipe = tmp_path / "pipe.dcm"
    os.mkfifo(pipe)
    target = tmp_path / "missing" if command == "scan" else pipe
    assert main([command, str(target)]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"dicomxr {command}: ")
    assert target.name in err


def test_a_codec_panic_is_a_pixel_data_error(
    good_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rust codecs raise pyo3's PanicException, a BaseException that ``except Exception`` misses."""
    from dicomxr import pixels

    class PanicException(BaseException):
        pass

    def panic(*args: object, **kwargs: object) -> None:
        raise PanicException("index out of bounds")

    (ref,) = pixels.file_frame_refs(sorted(good_folder.iterdir())[0])
    monkeypatch.setattr(pixels, "_read_native", panic)
    with pytest.raises(dicomxr.PixelDataError, match="PanicException"):
        pixels.read_frame(ref)


def test_half_present_palette_is_a_pixel_data_error(tmp_path: Path) -> None:
    from pydicom.data import get_testdata_file

    from dicomxr import pixels

    ds = pydicom.dcmread(get_testdata_file("examples_palette.dcm"))
    del ds.GreenPaletteColorLookupTableData
    path = tmp_path / "palette.dcm"
    ds.save_as(path)
    (ref, *_) = pixels.file_frame_refs(path)
    with pytest.raises(dicomxr.PixelDataError, match=r"palette\.dcm.*palette"):
        pixels.read_frame(ref)


def test_anatomy_of_deep_nesting_is_a_break(tmp_path: Path) -> None:
    from dicomxr.teaching.anatomy import anatomy

    path = tmp_path / "deep.dcm"
    deep_nesting(_spare_slice(tmp_path), path)
    a = anatomy(path)
    assert any("nested deeper" in b.reason for b in a.breaks)


@pytest.mark.parametrize("kind", ["zero_spacing", "nan_negative_spacing"])
def test_a_slice_without_a_valid_spacing_is_set_apart_as_lost_geometry(
    kind: str, good_folder: Path, tmp_path: Path
) -> None:
    folder = _with_hostile(good_folder, tmp_path, HOSTILE[kind])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        da = dicomxr.open_series(folder)  # one plan: no MultipleSeriesError
    assert da.sizes["slice"] == GOOD
    assert str(folder / "hostile.dcm") not in set(da["path"].values)
    plans = dicomxr.plan_series(dicomxr.scan(folder, warn=False))
    apart = plans.set_apart.set_index("path")["reason"]
    assert "PixelSpacing" in apart[str(folder / "hostile.dcm")]
    assert "lost geometry" in apart[str(folder / "hostile.dcm")]


def test_anatomy_of_gigabytes_of_zeros_is_a_quick_break(tmp_path: Path) -> None:
    path = tmp_path / "zeros.dcm"
    with open(path, "wb") as fh:  # sparse: costs no disk
        fh.write(b"\0" * 128 + b"DICM")
        fh.truncate(4 << 30)
    import time

    start = time.perf_counter()
    a = dicomxr.anatomy(path)
    assert time.perf_counter() - start < 10  # reading 4 GiB to call it padding took ~40 s
    assert not a.is_sound
    assert "only zero bytes" in a.breaks[0].reason and a.breaks[0].offset == 132


@pytest.mark.parametrize("key, value", [("BitsAllocated", 0), ("BitsAllocated", 12),
                                        ("BitsStored", 65535), ("Rows", 15), ("Columns", 1)])  # fmt: skip
def test_a_lone_slice_with_another_layout_is_set_apart_not_a_second_series(
    key: str, value: int, good_folder: Path, tmp_path: Path
) -> None:
    folder = _with_hostile(good_folder, tmp_path, lambda spare, p: p.write_bytes(
        _edit(spare, **{key: value})))  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        da = dicomxr.open_series(folder, series=SERIES_UID)
        values = da.values
    assert da.sizes["slice"] == GOOD and values.shape[0] == GOOD
    plans = dicomxr.plan_series(dicomxr.scan(folder, warn=False))
    assert len(plans) == 1
    reason = plans.set_apart.set_index("path")["reason"][str(folder / "hostile.dcm")]
    assert key in reason or "pixels" in reason


def test_a_special_file_named_directly_is_a_skip_not_a_missing_path(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.dcm"
    os.mkfifo(fifo)
    df = dicomxr.scan(fifo, warn=False)
    assert len(df) == 0
    assert df.attrs["skipped"][0]["path"] == str(fifo)
    assert "not a regular file" in df.attrs["skipped"][0]["reason"]
