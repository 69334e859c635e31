"""Mutation fuzzer: hostile and corrupt DICOM input against scan, plan, load, anatomy and the CLI.

Every case is a folder of good phantom slices plus *one* hostile file (or a damaged
DICOMDIR file-set), made from a seed file of the shared corpora (``$DICOMXR_TEST_DATA``),
pydicom's bundled test files or the phantom itself, by one mutation: truncation, byte
flips in the header, bogus lengths, wrong VRs, deep nesting, huge claimed dimensions, a
lying Rows/Columns, bad geometry values, broken character sets (also ISO 2022 escapes),
geometry elements with the wrong VR, a huge SamplesPerPixel over a few bytes, encapsulated
pixel data with a lying Basic Offset Table or fragment lengths, DICOMDIR record damage
and DICOMDIR records whose offsets loop back to themselves, special files (FIFO, symlink
loops, a link to ``/dev/zero``, a folder link loop), a DICM marker followed by a large run
of zeros, a deflate bomb.

Each case runs in a forked worker with an address-space limit (``RLIMIT_AS``) and a
timeout, through ``scan``, ``open_series(...).values``, ``anatomy`` and ``dicomxr scan``
(the CLI, in process). Outcomes, worst first::

    crash        an exception that is not a documented dicomxr error escaped
    memory       MemoryError, or the worker was killed (address-space limit)
    hang         no answer within the timeout
    silent_drop  the hostile file (or a good one) is neither in the catalog nor in the
                 skipped report; a DICOMDIR reference lost without a report
    not_isolated the good series did not open or load because of the one hostile file
                 (a documented error, but the hostile file was not set apart)
    clean_error  a DicomxrError (named, documented) from a public function
    worked       everything returned

Run a campaign on demand::

    python bench/fuzz.py --runs 2000 --seed 7 [--jobs 2] [--timeout 20] [--show crash]

The CI test (``tests/test_13_fuzz.py``) runs a short campaign with a fixed seed.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import importlib
import io
import multiprocessing as mp
import os
import random
import resource
import shutil
import signal
import struct
import sys
import tempfile
import time
import traceback
import warnings
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

OUTCOMES = ("worked", "clean_error", "crash", "memory", "hang", "silent_drop", "not_isolated")
BAD = ("crash", "memory", "hang", "silent_drop", "not_isolated")
_SEVERITY = {"worked": 0, "clean_error": 1, "not_isolated": 2, "silent_drop": 3, "hang": 4,
             "memory": 5, "crash": 6}  # fmt: skip
GOOD_SLICES = 4
HOSTILE = "hostile.dcm"

# ----------------------------------------------------------------------------------------
# seed corpus


def _shared_root() -> Path:
    return Path(os.environ.get("DICOMXR_TEST_DATA", Path(__file__).parents[2] / "shared" / "data"))


_SHARED_SEEDS = (
    "dcm_qa_ts/In/1.dcm",
    "dcm_qa_ts/In/2.dcm",
    "dcm_qa_ts/In/4.dcm",
    "dcm_qa_ts/In/6.dcm",
    "dcm_qa_ts/In/8.dcm",
    "suyashkumar_dicom/testdata/1.dcm",
    "suyashkumar_dicom/testdata/3.dcm",
    "dicomParser/testImages/CT1_UNC.explicit_big_endian.dcm",
    "dicomParser/testImages/CT1_UNC.implicit_little_endian.dcm",
    "dicomParser/testImages/deflate/image_dfl",
    "dcm_qa_philips_enh/In/cl/2301_0001.dcm",
)
_PYDICOM_SEEDS = (
    "CT_small.dcm",
    "MR_small.dcm",
    "MR_small_RLE.dcm",
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "JPEG2000.dcm",
    "JPGExtended.dcm",
    "SC_rgb_rle_2frame.dcm",
    "SC_rgb_small_odd.dcm",
    "examples_palette.dcm",
    "image_dfl.dcm",
    "rtdose.dcm",
    "nested_priv_SQ.dcm",
    "liver_1frame.dcm",
)


def seed_files() -> list[Path]:
    """Seed files: the shared corpora's small files that exist, and pydicom's test files."""
    from pydicom.data import get_testdata_file

    out = [_shared_root() / rel for rel in _SHARED_SEEDS]
    out = [p for p in out if p.is_file()]
    for name in _PYDICOM_SEEDS:
        with contextlib.suppress(Exception):
            path = get_testdata_file(name)
            if path:
                out.append(Path(path))
    encaps = _shared_root() / "dicomParser/testImages/encapsulated/multi-frame"
    if encaps.is_dir():
        out.extend(sorted(p for p in encaps.iterdir() if p.suffix == ".dcm")[:3])
    return out


def dicomdir_seed() -> Path:
    from pydicom.data import get_testdata_file

    return Path(get_testdata_file("DICOMDIR")).parent


# ----------------------------------------------------------------------------------------
# byte helpers

_VRS = (
    b"AE AS AT CS DA DS DT FL FD IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN "
    b"UR US UT UV"
).split()
_LONG_VRS = {
    b"OB",
    b"OD",
    b"OF",
    b"OL",
    b"OV",
    b"OW",
    b"SQ",
    b"UC",
    b"UN",
    b"UR",
    b"UT",
    b"SV",
    b"UV",
}


def _pixel_offset(data: bytes) -> int:
    """Rough end of the header: the Pixel Data tag, else the whole file."""
    for tag in (b"\xe0\x7f\x10\x00", b"\x7f\xe0\x00\x10"):
        i = data.rfind(tag)
        if i > 0:
            return i
    return len(data)


def _tag_le(group: int, elem: int) -> bytes:
    return struct.pack("<HH", group, elem)


def _explicit(group: int, elem: int, vr: bytes, value: bytes) -> bytes:
    if vr in _LONG_VRS:
        return _tag_le(group, elem) + vr + b"\0\0" + struct.pack("<I", len(value)) + value
    return _tag_le(group, elem) + vr + struct.pack("<H", len(value)) + value


# ----------------------------------------------------------------------------------------
# mutations: (rng, seed bytes, seed path, case dir) -> a description; each writes HOSTILE


@dataclasses.dataclass
class Case:
    """One fuzz case: a folder to scan and what must be found in it."""

    index: int
    mutation: str
    seed: str
    folder: str
    hostile: str  # path of the hostile file ("" when the damage is to a DICOMDIR)
    series_uid: str  # the good slices' series
    good: tuple[str, ...]
    source: str = ""  # what to scan when it is not the folder (a DICOMDIR)
    expect_refs: tuple[str, ...] = ()  # DICOMDIR references that must be accounted for
    detail: str = ""


Mutation = Callable[[random.Random, bytes, Path, Path], str]


def m_truncate(rng: random.Random, data: bytes, seed: Path, out: Path) -> str:
    n = rng.randrange(1, max(2, len(data)))
    out.write_bytes(data[:n])
    return f"cut at {n}"


def m_flip(rng: random.Random, data: bytes, seed: Path, out: Path) -> str:
    buf = bytearray(data)
    end = min(_pixel_offset(data) + 16, len(buf))
    k = rng.choice((1, 2, 4, 8, 32))
    for _ in range(k):
        i = rng.randrange(0, max(1, end))
        buf[i] = rng.randrange(256)
    out.write_bytes(bytes(buf))
    return f"{k} bytes"


def _vr_sites(data: bytes) -> list[int]:
    end = _pixel_offset(data)
    return [i for i in range(132, max(132, end - 6)) if data[i + 4 : i + 6] in _VRS]


def m_bogus_length(rng: random.Random, data: bytes, seed: Path, out: Path) -> str:
    sites = _vr_sites(data)
    buf = bytearray(data)
    if not sites:
        return m_flip(rng, data, seed, out)
    i = rng.choice(sites)
    vr = bytes(buf[i + 4 : i + 6])
    value = rng.choice((0xFFFFFFFF, 0xFFFFFFF0, 0x7FFFFFFF, len(data) * 3, 1, 3, 0xFFFF, 0xFFFE))
    if vr in _LONG_VRS:
        buf[i + 8 : i + 12] = struct.pack("<I", value & 0xFFFFFFFF)
    else:
        buf[i + 6 : i + 8] = struct.pack("<H", value & 0xFFFF)
    out.write_bytes(bytes(buf))
    return f"{vr.decode()} at {i} length {value:#x}"


def m_wrong_vr(rng: random.Random, data: bytes, seed: Path, out: Path) -> str:
    sites = _vr_sites(data)
    buf = bytearray(data)
    if not sites:
        return m_flip(rng, data, seed, out)
    i = rng.choice(sites)
    new = rng.choice([*_VRS, b"\x00\x00", b"zz", b"\xff\xfe"])
    buf[i + 4 : i + 6] = new
    out.write_bytes(bytes(buf))
    return f"VR at {i} -> {new!r}"


def _insert_before_patient(data: bytes, blob: bytes) -> bytes:
    """Insert an element (group 0009) just before the first group-0010 element."""
    i = data.find(b"\x10\x00", 132)
    while i >= 0:
        if data[i + 4 : i + 6] in _VRS and data[i : i + 2] == b"\x10\x00":
            return data[:i] + blob + data[i:]
        i = data.find(b"\x10\x00", i + 1)
    return data[:132] + blob + data[132:]


def m_deep_nesting(rng: random.Random, data: bytes, seed: Path, out: Path) -> str:
    depth = rng.choice((300, 1000, 5000, 20000))
    creator = _explicit(0x0009, 0x0010, b"LO", b"FUZZ")
    opened = (
        _tag_le(0x0009, 0x1001)
        + b"SQ\0\0"
        + b"\xff\xff\xff\xff"
        + _tag_le(0xFFFE, 0xE000)
        + b"\xff\xff\xff\xff"
    )
    closed = _tag_le(0xFFFE, 0xE00D) + b"\0\0\0\0" + _tag_le(0xFFFE, 0xE0DD) + b"\0\0\0\0"
    blob = creator + opened * depth + closed * depth
    out.write_bytes(_insert_before_patient(data, blob))
    return f"depth {depth}"


def _with_pydicom(data: bytes, out: Path, edit: Callable[[Any], str]) -> str:
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data), force=True)
    what = edit(ds)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=False)
    out.write_bytes(buf.getvalue())
    return what


def m_huge_dims(rng: random.Random, data: bytes, seed: Path, out: Path) -> str:
    choices = {
        "Rows": (65535, 0, 1),
        "Columns": (65535, 0, 1),
        "NumberOfFrames": ("2147483647", "0", "-5", "99999999", "abc"),
        "SamplesPerPixel": (65535, 0, 3),
        "BitsAllocated": (64, 0, 1, 65535, 12),
        "BitsStored": (0, 65535, 40),
    }

    def edit(ds: Any) -> str:
        done = []
        for key in rng.sample(sorted(choices), rng.randrange(1, 4)):
            value = rng.choice(choices[key])
            setattr(ds, key, value)
            done.append(f"{key}={value}")
        return ", ".join(done)

    return _with_pydicom(data, out, edit)


def m_lying_size(rng: random.Random, data: bytes, seed: Path, out: Path) -> str:
    def edit(ds: Any) -> str:
        key = rng.choice(("Rows", "Columns"))
        delta = rng.choice((-1, 1, -2))
        setattr(ds, key, max(1, int(getattr(ds, key, 2) or 2) + delta))
        return f"{key}{delta:+d}"

    return _with_pydicom(data, out, edit)


_BAD_IOP = (
    ["nan"] * 6,
    [1, 0, 0, 1, 0, 0],
    [0, 0, 0, 0, 0, 0],
    [1e308, 1e308, 0, 0, 1e308, 0],
    ["inf", 0, 0, 0, 1, 0],
    [1, 0, 0],
    [1, 0, 0, 0, 1, 0, 0, 0],
)
_BAD_IPP = (["nan", 0, 0], [1e308, -1e308, 1e308], [1, 2], ["inf", "inf", "inf"])
_BAD_SPACING = (["0", "0"], ["-1", "nan"], ["1e308", "1e-308"], ["1"])


def m_bad_geometry(rng: random.Random, data: bytes, seed: Path, out: Path) -> str:
    from pydicom.dataelem import DataElement

    def edit(ds: Any) -> str:
        key, values = rng.choice(
            (
                ("ImageOrientationPatient", _BAD_IOP),
                ("ImagePositionPatient", _BAD_IPP),
                ("PixelSpacing", _BAD_SPACING),
            )
        )
        value = rng.choice(values)
        tag = {
            "ImageOrientationPatient": 0x00200037,
            "ImagePositionPatient": 0x00200032,
            "PixelSpacing": 0x00280030,
        }[key]
        raw = "\\".join(str(v) for v in value).encode()
        ds[tag] = DataElement(tag, "DS", raw.decode(), is_undefined_length=False)
        ds[tag]._value = raw.decode()
        return f"{key}={value}"

    return _with_pydicom_raw_ds(data, out, edit)


def _with_pydicom_raw_ds(data: bytes, out: Path, edit: Callable[[Any], str]) -> str:
    import pydicom
    from pydicom import config

    old = config.settings.writing_validation_mode
    config.settings.writing_validation_mode = config.IGNORE
    try:
        return _with_pydicom(data, out, edit)
    finally:
        config.settings.writing_validation_mode = old
        del pydicom


def m_charset(rng: random.Random, data: bytes, seed: Path, out: Path) -> str:
    buf = bytearray(data)
    kind = rng.choice(("ascii_vr", "charset"))
    if kind == "charset":
        blob = _explicit(
            0x0008,
            0x0005,
            b"CS",
            rng.choice((b"ISO_IR 999", b"\xff\xfe\xfd\xfc", b"ISO 2022 IR 87\\XX", b"\\\\\\\\")),
        )
        # replace an existing charset or insert right after the meta group
        i = data.find(b"\x08\x00\x05\x00CS", 132)
        if i >= 0:
            n = struct.unpack("<H", data[i + 6 : i + 8])[0]
            buf[i : i + 8 + n] = blob
        else:
            j = data.find(b"\x08\x00", 132)
            if j < 0:
                return m_flip(rng, data, seed, out)
            buf[j:j] = blob
        out.write_bytes(bytes(buf))
        return "SpecificCharacterSet"
    sites = [
        i
        for i in _vr_sites(data)
        if data[i + 4 : i + 6] in (b"UI", b"CS", b"DS", b"IS", b"DA", b"TM", b"AE")
    ]
    if not sites:
        return m_flip(rng, data, seed, out)
    i = rng.choice(sites)
    n = struct.unpack("<H", data[i + 6 : i + 8])[0]
    for k in range(min(n, 4)):
        buf[i + 8 + k] = rng.randrange(0x80, 0x100)
    out.write_bytes(bytes(buf))
    return f"non-ASCII in {data[i + 4 : i + 6].decode()} at {i}"


def m_zeros(rng: random.Random, data: bytes, seed: Path, out: Path) -> str:
    size = rng.choice((64 << 20, 512 << 20, 4 << 30))
    with open(out, "wb") as fh:
        fh.write(b"\0" * 128 + b"DICM")
        fh.truncate(size)  # sparse: costs no disk
    return f"DICM + {size >> 20} MiB of zeros"


def m_deflate_bomb(rng: random.Random, data: bytes, seed: Path, out: Path) -> str:
    meta_ts = b"1.2.840.10008.1.2.1.99"
    size = rng.choice((256 << 20, 2 << 30))
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = b"\0" * (1 << 20)
    body = _explicit(0x0008, 0x0016, b"UI", b"1.2.840.10008.5.1.4.1.1.7\0")
    body += _explicit(0x0009, 0x0010, b"LO", b"BOMB")
    parts = [comp.compress(body + _tag_le(0x0009, 0x1001) + b"OB\0\0" + struct.pack("<I", size))]
    for _ in range(size >> 20):
        parts.append(comp.compress(chunk))
    parts.append(comp.flush())
    meta = _explicit(0x0002, 0x0010, b"UI", meta_ts + (b"\0" if len(meta_ts) % 2 else b""))
    group = _explicit(0x0002, 0x0000, b"UL", struct.pack("<I", len(meta)))
    out.write_bytes(b"\0" * 128 + b"DICM" + group + meta + b"".join(parts))
    return f"inflates to {size >> 20} MiB"


SPECIAL_KINDS = (
    "fifo",
    "symlink_loop",
    "self_link",
    "dev_zero",
    "dangling",
    "folder_loop",
    "socket",
)


def m_special(rng: random.Random, data: bytes, seed: Path, out: Path) -> str:
    kind = rng.choice(SPECIAL_KINDS)
    if kind == "fifo":
        os.mkfifo(out)
    elif kind == "symlink_loop":
        other = out.with_name("other.dcm")
        os.symlink(other, out)
        os.symlink(out, other)
    elif kind == "self_link":
        os.symlink(out, out)
    elif kind == "dev_zero":
        os.symlink("/dev/zero", out)
    elif kind == "dangling":
        os.symlink(out.with_name("nowhere.dcm"), out)
    elif kind == "folder_loop":
        sub = out.with_name("sub")
        sub.mkdir()
        shutil.copy(seed, sub / "inside.dcm")
        os.symlink("..", sub / "up")
        shutil.copy(seed, out)
    elif kind == "socket":
        import socket

        s = socket.socket(socket.AF_UNIX)
        try:
            s.bind(str(out))
        except OSError:
            os.mkfifo(out)
        finally:
            s.close()
    return kind


def m_palette(rng: random.Random, data: bytes, seed: Path, out: Path) -> str:
    from pydicom.data import get_testdata_file

    pal = Path(get_testdata_file("examples_palette.dcm")).read_bytes()

    def edit(ds: Any) -> str:
        keys = [k for k in ds.dir() if "Palette" in k or "LookupTable" in k]
        key = rng.choice(keys) if keys else "RedPaletteColorLookupTableData"
        if key in ds:
            delattr(ds, key)
        return f"removed {key}"

    return _with_pydicom(pal, out, edit)


_ESCAPES = (b"\x1b$B", b"\x1b(B", b"\x1b$)C", b"\x1b-A", b"\x1b$", b"\x1b", b"\x1b(J")


def m_charset_2022(rng: random.Random, data: bytes, seed: Path, out: Path) -> str:
    """ISO 2022 character sets with escape sequences, right or broken, in text values."""
    charset = rng.choice(
        (
            b"\\ISO 2022 IR 87",
            b"ISO 2022 IR 6\\ISO 2022 IR 87",
            b"ISO 2022 IR 13\\ISO 2022 IR 87",
            b"ISO 2022 IR 149",
            b"\\ISO 2022 IR 58",
            b"ISO 2022 IR 100\\ISO 2022 IR 126\\ISO 2022 IR 999",
        )
    )
    charset += b" " * (len(charset) & 1)
    blob = _explicit(0x0008, 0x0005, b"CS", charset)
    buf = bytearray(data)
    i = data.find(b"\x08\x00\x05\x00CS", 132)
    if i >= 0:
        n = struct.unpack("<H", data[i + 6 : i + 8])[0]
        buf[i : i + 8 + n] = blob
    else:
        j = data.find(b"\x08\x00", 132)
        if j < 0:
            return m_flip(rng, data, seed, out)
        buf[j:j] = blob
    # escape sequences (and bytes after them) into text values of the header
    data = bytes(buf)
    sites = [i for i in _vr_sites(data) if data[i + 4 : i + 6] in (b"PN", b"LO", b"SH", b"ST")]
    done = 0
    for i in rng.sample(sites, min(len(sites), rng.choice((1, 3)))):
        n = struct.unpack("<H", data[i + 6 : i + 8])[0]
        if n < 4:
            continue
        junk = rng.choice(_ESCAPES) + bytes(rng.randrange(0x21, 0xFF) for _ in range(4))
        buf[i + 8 : i + 8 + min(n, len(junk))] = junk[:n]
        done += 1
    out.write_bytes(bytes(buf))
    return f"{charset.decode(errors='replace')!r}, {done} text value(s) with escapes"


_GEOMETRY_TAGS = {b"PixelSpacing": (0x0028, 0x0030), b"ImagePositionPatient": (0x0020, 0x0032),
                  b"ImageOrientationPatient": (0x0020, 0x0037)}  # fmt: skip


def m_geometry_vr(rng: random.Random, data: bytes, seed: Path, out: Path) -> str:
    """A geometry element (PixelSpacing, position, orientation) with the wrong VR."""
    name, (group, elem) = rng.choice(sorted(_GEOMETRY_TAGS.items()))
    i = data.find(_tag_le(group, elem) + b"DS", 132)
    if i < 0:
        return m_wrong_vr(rng, data, seed, out)
    n = struct.unpack("<H", data[i + 6 : i + 8])[0]
    value = data[i + 8 : i + 8 + n]
    vr = rng.choice((b"US", b"FD", b"FL", b"SQ", b"UN", b"OB", b"SL", b"AT", b"UI", b"IS"))
    if vr in (b"FD", b"FL") and rng.random() < 0.5:  # a binary encoding of the same numbers
        fmt = "<d" if vr == b"FD" else "<f"
        try:
            nums = [float(v) for v in value.decode().strip("\0 ").split("\\")]
        except ValueError:
            nums = [1.0]
        value = b"".join(struct.pack(fmt, v) for v in nums)
    element = _explicit(group, elem, vr, value)
    out.write_bytes(data[:i] + element + data[i + 8 + n :])
    return f"{name.decode()} as {vr.decode()} ({len(value)} bytes)"


def m_samples_tiny(rng: random.Random, data: bytes, seed: Path, out: Path) -> str:
    """A huge SamplesPerPixel (and a colour photometric) over a few bytes of pixel data."""

    def edit(ds: Any) -> str:
        spp = rng.choice((65535, 4096, 255, 4, 3))
        ds.SamplesPerPixel = spp
        ds.PhotometricInterpretation = rng.choice(("RGB", "YBR_FULL", "MONOCHROME2"))
        ds.PlanarConfiguration = rng.choice((0, 1))
        ds.Rows = rng.choice((1, 2, int(ds.get("Rows", 2) or 2)))
        ds.Columns = rng.choice((1, 3, int(ds.get("Columns", 2) or 2)))
        ds.PixelData = bytes(rng.randrange(256) for _ in range(rng.choice((0, 2, 10, 64))))
        if "NumberOfFrames" in ds:
            del ds.NumberOfFrames
        return f"SamplesPerPixel={spp}, {len(ds.PixelData)} bytes of pixel data"

    return _with_pydicom(data, out, edit)


_ENCAPSULATED = ("MR_small_RLE.dcm", "JPEG2000.dcm", "SC_rgb_rle_2frame.dcm",
                 "MR_small_jpeg_ls_lossless.dcm", "JPGExtended.dcm")  # fmt: skip


def m_encaps_offsets(rng: random.Random, data: bytes, seed: Path, out: Path) -> str:
    """Encapsulated pixel data whose Basic Offset Table or fragment lengths lie."""
    from pydicom.data import get_testdata_file

    if b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff" not in data:
        name = rng.choice(_ENCAPSULATED)
        data = Path(get_testdata_file(name)).read_bytes()
    start = data.find(b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff")
    if start < 0:
        return m_flip(rng, data, seed, out)
    buf = bytearray(data)
    bot = start + 12  # the first item: the Basic Offset Table
    bot_len = struct.unpack("<I", data[bot + 4 : bot + 8])[0]
    items = [i for i in range(bot, len(data) - 8) if data[i : i + 4] == b"\xfe\xff\x00\xe0"]
    kind = rng.choice(("bot_entries", "bot_length", "fragment_length", "self_offset", "no_end"))
    if kind == "bot_entries" or (kind == "self_offset" and bot_len == 0):
        n = rng.choice((1, 2, 4, 64))
        entries = [rng.choice((0, 1, 3, 0xFFFFFFF0, 0x7FFFFFFF, len(data), rng.randrange(1 << 20)))
                   for _ in range(n)]  # fmt: skip
        table = b"".join(struct.pack("<I", e) for e in entries)
        buf[bot + 4 : bot + 8 + bot_len] = struct.pack("<I", len(table)) + table
        detail = f"BOT {entries[:4]}"
    elif kind == "bot_length":
        value = rng.choice((3, 0xFFFFFFF0, 0xFFFFFFFF, len(data)))
        buf[bot + 4 : bot + 8] = struct.pack("<I", value)
        detail = f"BOT length {value:#x}"
    elif kind == "self_offset":  # every frame starts at offset 0: all frames are the first
        table = struct.pack("<I", 0) * max(1, bot_len // 4)
        buf[bot + 8 : bot + 8 + bot_len] = table[:bot_len]
        detail = "every BOT entry 0"
    elif kind == "fragment_length" and len(items) > 1:
        i = rng.choice(items[1:])
        value = rng.choice((0, 1, 7, 0xFFFFFFF0, 0xFFFFFFFF, rng.randrange(1 << 16)))
        buf[i + 4 : i + 8] = struct.pack("<I", value)
        detail = f"fragment at {i} length {value:#x}"
    else:  # the sequence delimiter removed: fragments run to the end of the file
        end = data.rfind(b"\xfe\xff\xdd\xe0")
        if end > start:
            del buf[end : end + 8]
        detail = "no sequence delimiter"
    out.write_bytes(bytes(buf))
    return detail


MUTATIONS: dict[str, Mutation] = {
    "truncate": m_truncate,
    "flip": m_flip,
    "bogus_length": m_bogus_length,
    "wrong_vr": m_wrong_vr,
    "deep_nesting": m_deep_nesting,
    "huge_dims": m_huge_dims,
    "lying_size": m_lying_size,
    "bad_geometry": m_bad_geometry,
    "charset": m_charset,
    "palette": m_palette,
    "zeros": m_zeros,
    "deflate_bomb": m_deflate_bomb,
    "special": m_special,
    "charset_2022": m_charset_2022,
    "geometry_vr": m_geometry_vr,
    "samples_tiny": m_samples_tiny,
    "encaps_offsets": m_encaps_offsets,
    "dicomdir": lambda *a: "",  # handled by make_case
    "dicomdir_loop": lambda *a: "",  # handled by make_case
}
# how often each mutation is drawn
WEIGHTS = {
    "truncate": 8, "flip": 14, "bogus_length": 10, "wrong_vr": 8, "deep_nesting": 3,
    "huge_dims": 10, "lying_size": 6, "bad_geometry": 8, "charset": 6, "palette": 2,
    "zeros": 1, "deflate_bomb": 1, "special": 5, "dicomdir": 8,
    "charset_2022": 5, "geometry_vr": 6, "samples_tiny": 5, "encaps_offsets": 6,
    "dicomdir_loop": 5,
}  # fmt: skip


# ----------------------------------------------------------------------------------------
# making cases


def _good_series(work: Path) -> tuple[Path, str, list[Path]]:
    """Write the phantom series once: GOOD_SLICES good slices and a spare one to mutate."""
    from dicomxr.phantom import phantom_volume, write_series

    folder = work / "_phantom"
    vol = phantom_volume((GOOD_SLICES + 1, 24, 20))
    paths = write_series(folder, vol, series_uid="1.2.826.0.1.3680043.10.1187.99.1")
    return folder, "1.2.826.0.1.3680043.10.1187.99.1", paths


def make_case(
    index: int,
    rng: random.Random,
    work: Path,
    seeds: list[Path],
    phantom: tuple[Path, str, list[Path]],
) -> Case:
    """Draw one mutation of one seed and lay out its case folder."""
    _, series_uid, ppaths = phantom
    names = sorted(WEIGHTS)
    mutation = rng.choices(names, weights=[WEIGHTS[n] for n in names])[0]
    folder = work / f"case{index:05d}"
    folder.mkdir()
    good = []
    for p in ppaths[:GOOD_SLICES]:
        shutil.copy(p, folder / p.name)
        good.append(str(folder / p.name))
    if mutation in ("dicomdir", "dicomdir_loop"):
        return _dicomdir_case(
            index, rng, folder, series_uid, tuple(good), loop=mutation == "dicomdir_loop"
        )
    # a third of the hostile files are a damaged member of the good series itself
    seed = ppaths[GOOD_SLICES] if rng.random() < 0.33 else rng.choice(seeds)
    data = seed.read_bytes()
    hostile = folder / HOSTILE
    try:
        detail = MUTATIONS[mutation](rng, data, seed, hostile)
    except Exception as exc:  # a mutation pydicom cannot write: fall back to byte flips
        with contextlib.suppress(FileNotFoundError):
            hostile.unlink()
        mutation, detail = (
            "flip",
            f"({type(exc).__name__} in mutation) " + m_flip(rng, data, seed, hostile),
        )
    return Case(
        index,
        mutation,
        str(seed),
        str(folder),
        str(hostile),
        series_uid,
        tuple(good),
        detail=detail,
    )


def _dicomdir_case(
    index: int,
    rng: random.Random,
    folder: Path,
    series_uid: str,
    good: tuple[str, ...],
    *,
    loop: bool = False,
) -> Case:
    import pydicom

    src = dicomdir_seed()
    fs = folder / "fileset"
    shutil.copytree(src, fs, ignore=shutil.ignore_patterns("DICOMDIR-*", "README*"))
    ds = pydicom.dcmread(src / "DICOMDIR")
    refs = []
    for rec in ds.DirectoryRecordSequence:
        fid = rec.get("ReferencedFileID")
        if fid:
            parts = [fid] if isinstance(fid, str) else list(fid)
            refs.append(str(fs.joinpath(*parts)))
    data = bytearray((src / "DICOMDIR").read_bytes())
    seq = data.find(b"\x04\x00\x20\x12")  # DirectoryRecordSequence
    kind = rng.choice(("flip", "item_length", "element_length", "truncate"))
    lo = max(seq, 132)
    if loop:
        kind = _record_loop(rng, data, lo)
    elif kind == "flip":
        for _ in range(rng.choice((1, 2, 4, 8))):
            data[rng.randrange(lo, len(data))] = rng.randrange(256)
    elif kind == "item_length":
        items = [i for i in range(lo, len(data) - 8) if data[i : i + 4] == b"\xfe\xff\x00\xe0"]
        i = rng.choice(items)
        data[i + 4 : i + 8] = struct.pack(
            "<I", rng.choice((0, 1, 7, 0xFFFFFFF0, rng.randrange(1, 4000)))
        )
    elif kind == "element_length":
        sites = [i for i in range(lo, len(data) - 8) if bytes(data[i + 4 : i + 6]) in _VRS]
        i = rng.choice(sites)
        if bytes(data[i + 4 : i + 6]) in _LONG_VRS:
            data[i + 8 : i + 12] = struct.pack(
                "<I", rng.choice((0, 0xFFFFFFF0, rng.randrange(1, 4000)))
            )
        else:
            data[i + 6 : i + 8] = struct.pack(
                "<H", rng.choice((0, 1, 0xFFFF, rng.randrange(1, 400)))
            )
    else:
        data = data[: rng.randrange(lo, len(data))]
    (fs / "DICOMDIR").write_bytes(bytes(data))
    return Case(
        index, "dicomdir_loop" if loop else "dicomdir", str(src / "DICOMDIR"), str(folder), "",
        series_uid, good, source=str(fs / "DICOMDIR"), expect_refs=tuple(sorted(set(refs))),
        detail=kind,
    )  # fmt: skip


_NEXT = b"\x04\x00\x00\x14UL\x04\x00"  # OffsetOfTheNextDirectoryRecord
_LOWER = b"\x04\x00\x20\x14UL\x04\x00"  # OffsetOfReferencedLowerLevelDirectoryEntity
_ROOT = (b"\x04\x00\x00\x12UL\x04\x00", b"\x04\x00\x02\x12UL\x04\x00")  # first / last root


def _record_loop(rng: random.Random, data: bytearray, lo: int) -> str:
    """Point record offsets at their own record, an ancestor or an earlier sibling (loops)."""
    items = [i for i in range(lo, len(data) - 8) if data[i : i + 4] == b"\xfe\xff\x00\xe0"]
    if not items:
        return "no records"

    def record_of(pos: int) -> int:
        return max((i for i in items if i < pos), default=items[0])

    kind = rng.choice(("self_next", "self_lower", "back_next", "lower_to_root", "root_to_last"))
    sites = [i for i in range(lo, len(data) - 12) if data[i : i + 8] == (
        _LOWER if kind in ("self_lower", "lower_to_root") else _NEXT)]  # fmt: skip
    if kind == "root_to_last":
        i = data.find(_ROOT[0])
        if i >= 0:
            data[i + 8 : i + 12] = struct.pack("<I", items[-1])
            j = data.find(_ROOT[1])
            if j >= 0:
                data[j + 8 : j + 12] = struct.pack("<I", items[0])
        return kind
    if not sites:
        return "no offsets"
    for i in rng.sample(sites, min(len(sites), rng.choice((1, 2, 5)))):
        own = record_of(i)
        if kind in ("self_next", "self_lower"):
            target = own
        elif kind == "lower_to_root":
            target = items[0]
        else:
            target = rng.choice([j for j in items if j <= own])
        data[i + 8 : i + 12] = struct.pack("<I", target)
    return kind


# ----------------------------------------------------------------------------------------
# running one case (in a forked worker)


def _clean(exc: BaseException, named: bool = False) -> bool:
    from dicomxr.errors import DicomxrError

    if isinstance(exc, DicomxrError):
        return True
    return named and isinstance(exc, OSError)


_NOTIFY: list[Any] = []  # the worker's pipe: which step is running (for hangs)
_WARNINGS: list[str] = []  # the messages of the warnings the steps emitted


def _step(name: str, results: list[tuple[str, str, str]], fn: Callable[[], Any]) -> Any:
    for conn in _NOTIFY:
        conn.send(name)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = fn()
        _WARNINGS.extend(str(w.message) for w in caught)
    except MemoryError as exc:
        tb = traceback.extract_tb(exc.__traceback__)
        where = f"{Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else "?"
        results.append((name, "memory", f"MemoryError at {where}"))
        return None
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        kind = "clean_error" if _clean(exc) else "crash"
        tb = traceback.extract_tb(exc.__traceback__)
        where = f"{Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else "?"
        results.append((name, kind, f"{type(exc).__name__} at {where}: {str(exc)[:160]}"))
        return None
    results.append((name, "worked", ""))
    return out


def _named(df: Any, path: str) -> bool:
    """Is ``path`` in the catalog or its skipped report?"""
    if path in set(df["path"]):
        return True
    return any(s["path"] == path for s in df.attrs.get("skipped", []))


def _isolated(results: list[tuple[str, str, str]], step: str) -> None:
    """A clean error from opening or loading the good series is a failure to isolate."""
    name, kind, detail = results[-1]
    if name == step and kind == "clean_error":
        results[-1] = (name, "not_isolated", detail)


def run_case(case: Case) -> list[tuple[str, str, str]]:
    """Run a case through the public functions; one (step, outcome, detail) per step."""
    import dicomxr
    from dicomxr.cli import main
    from dicomxr.teaching.anatomy import anatomy

    results: list[tuple[str, str, str]] = []
    source = case.source or case.folder
    df = _step("scan", results, lambda: dicomxr.scan(source))
    if df is not None:
        accounted = case.expect_refs if case.source else case.good
        lost = [p for p in accounted if os.path.lexists(p) and not _named(df, p)]
        if case.hostile and os.path.lexists(case.hostile) and not _named(df, case.hostile):
            lost.append(case.hostile)
        if lost:
            results.append(
                ("scan", "silent_drop", f"not reported: {[Path(p).name for p in lost][:5]}")
            )
    if not case.source:
        da = _step(
            "open_series", results, lambda: dicomxr.open_series(case.folder, series=case.series_uid)
        )
        _isolated(results, "open_series")
        if da is not None:
            values = _step("values", results, lambda: da.values)
            _isolated(results, "values")
            if values is not None and da.sizes.get("slice", 0) < GOOD_SLICES:
                results.append(("open_series", "silent_drop", f"{da.sizes.get('slice')} slices"))
            loaded = set(np.ravel(da["path"].values)) if values is not None else set()
            warned = any(case.hostile in w for w in _WARNINGS)
            if case.mutation == "lying_size" and case.hostile in loaded and not warned:
                results.append(("values", "silent_drop", "a lying Rows/Columns loaded unwarned"))
        _step("open_study", results, lambda: dicomxr.open_study(case.folder))
    if case.hostile:
        _step("anatomy", results, lambda: str(anatomy(case.hostile)))
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = _step("cli", results, lambda: main(["scan", source]))
    if code not in (None, 0) and not any(r[0] == "cli" and r[1] != "worked" for r in results):
        results.append(("cli", "clean_error", f"exit {code}"))
    return results


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _limit_memory(budget: int) -> None:
    """Cap what a worker may allocate beyond what it holds at the start.

    RLIMIT_DATA (private writable memory: malloc, numpy, mmap'd buffers) carries the budget;
    RLIMIT_AS, far looser, is a backstop. Address space alone would be the wrong measure:
    Arrow's mimalloc and glibc's thread arenas reserve gigabytes they never use.
    """
    data = _status_kib("VmData") << 10
    size = _status_kib("VmSize") << 10
    resource.setrlimit(resource.RLIMIT_DATA, (data + budget, data + budget))
    resource.setrlimit(resource.RLIMIT_AS, (size + 8 * budget, size + 8 * budget))


def _worker(fields: dict[str, Any], conn: Any, budget: int) -> None:
    case = Case(**fields)
    try:
        _limit_memory(budget)
        _NOTIFY.append(conn)
        steps = run_case(case)
        _NOTIFY.clear()
        conn.send(steps)
    except MemoryError:
        with contextlib.suppress(Exception):
            conn.send([("worker", "memory", "MemoryError")])
    except BaseException as exc:
        with contextlib.suppress(Exception):
            conn.send([("worker", "crash", f"{type(exc).__name__}: {exc}"[:200])])
    finally:
        conn.close()
        os._exit(0)


@dataclasses.dataclass
class Outcome:
    case: Case
    outcome: str
    steps: list[tuple[str, str, str]]
    seconds: float


def _classify(steps: list[tuple[str, str, str]]) -> str:
    if not steps:
        return "crash"
    return max((s[1] for s in steps), key=_SEVERITY.__getitem__)


_PRELOAD = [
    "dicomxr._array", "dicomxr._cli_io", "dicomxr.teaching.anatomy", "dicomxr.api", "dicomxr.catalog",
    "dicomxr.cli", "dicomxr.frames", "dicomxr.pixels", "dicomxr.series", "pydicom", "pandas",
]  # fmt: skip


def _context() -> Any:
    """A fork server started clean, with dicomxr imported once: workers fork from it warm.

    Forking from the campaign's own process would hand each worker its heap and Arrow's
    memory pool, whose lazy reservations the worker's memory limit then refuses; the
    server sets Arrow's pool to the system allocator before pandas imports pyarrow.
    """
    os.environ["ARROW_DEFAULT_MEMORY_POOL"] = "system"
    bench = str(Path(__file__).parent)
    if bench not in sys.path:
        sys.path.insert(0, bench)
    ctx = mp.get_context("forkserver")
    from dicomxr.cli import _REGISTRARS

    # the sub-commands too: a worker importing them on its first CLI call spent seconds of
    # its time limit on imports (the convert and network parts are large)
    ctx.set_forkserver_preload(["fuzz", *_PRELOAD, *_REGISTRARS, "dicomxr.conversion"])
    return ctx


def run_campaign(
    runs: int,
    seed: int,
    *,
    jobs: int = 2,
    timeout: float = 30.0,
    memory: int = 2 << 30,
    work: Path | None = None,
    budget: float | None = None,
    on_result: Callable[[Outcome], None] | None = None,
) -> list[Outcome]:
    """Run ``runs`` cases (fewer if ``budget`` seconds run out) and return their outcomes."""
    ctx = _context()
    own = work is None
    work = Path(tempfile.mkdtemp(prefix="dicomxr-fuzz-")) if own else work
    rng = random.Random(seed)
    seeds = seed_files()
    phantom = _good_series(work)
    start = time.monotonic()
    outcomes: list[Outcome] = []
    running: list[tuple[Any, Any, Case, float]] = []
    current: dict[int, str] = {}

    def cases() -> Iterator[Case]:
        for i in range(runs):
            if budget is not None and time.monotonic() - start > budget:
                return
            yield make_case(i, rng, work, seeds, phantom)

    def finish(
        proc: Any, conn: Any, case: Case, t0: float, steps: list[tuple[str, str, str]]
    ) -> None:
        out = Outcome(case, _classify(steps), steps, time.monotonic() - t0)
        outcomes.append(out)
        conn.close()
        if on_result is not None:
            on_result(out)
        if out.outcome not in BAD:
            shutil.rmtree(case.folder, ignore_errors=True)

    def reap() -> None:
        for item in list(running):
            proc, conn, case, t0 = item
            steps = None
            while steps is None and conn.poll(0):
                try:
                    msg = conn.recv()
                except EOFError:
                    msg = []
                if isinstance(msg, str):
                    current[case.index] = msg
                else:
                    steps = msg
            step = (
                current.pop(case.index, "?") if steps is not None or not proc.is_alive() else None
            )
            if steps is not None:
                proc.join(5)
                running.remove(item)
                finish(proc, conn, case, t0, steps)
            elif not proc.is_alive():
                running.remove(item)
                code = proc.exitcode
                kind = "memory" if code in (-signal.SIGKILL, -signal.SIGSEGV) else "crash"
                finish(proc, conn, case, t0, [(step or "?", kind, f"worker exit code {code}")])
            elif time.monotonic() - t0 > timeout:
                proc.kill()
                proc.join()
                running.remove(item)
                step = current.pop(case.index, "?")
                finish(proc, conn, case, t0, [(step, "hang", f"> {timeout:g} s")])

    try:
        for case in cases():
            while len(running) >= jobs:
                reap()
                time.sleep(0.005)
            parent, child = ctx.Pipe(duplex=False)
            # by the importable module's name (not __main__), so that the server finds it
            target = importlib.import_module("fuzz")._worker
            args = (dataclasses.asdict(case), child, memory)
            proc = ctx.Process(target=target, args=args, daemon=True)
            proc.start()
            child.close()
            running.append((proc, parent, case, time.monotonic()))
        while running:
            reap()
            time.sleep(0.005)
    finally:
        for proc, *_ in running:
            proc.kill()
        if own:
            shutil.rmtree(work, ignore_errors=True)
    return outcomes


def counts(outcomes: list[Outcome]) -> dict[str, int]:
    c = collections.Counter(o.outcome for o in outcomes)
    return {k: c.get(k, 0) for k in OUTCOMES}


def describe(o: Outcome) -> str:
    bad = [s for s in o.steps if s[1] == o.outcome]
    steps = "; ".join(f"{s[0]}: {s[2]}" for s in bad[:3])
    return f"[{o.outcome}] #{o.case.index} {o.case.mutation} ({o.case.detail}) of {Path(o.case.seed).name}: {steps}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument(
        "--memory-mb", type=int, default=1024, help="address space per run beyond the start"
    )
    p.add_argument(
        "--budget", type=float, default=None, help="stop drawing cases after this many seconds"
    )
    p.add_argument(
        "--show", nargs="*", default=list(BAD), help="outcome classes to list case by case"
    )
    p.add_argument("--keep", type=Path, default=None, help="keep failing case folders here")
    p.add_argument(
        "--mutations", nargs="*", default=None, choices=sorted(WEIGHTS), help="draw only these"
    )
    args = p.parse_args(argv)
    if args.mutations:
        for name in list(WEIGHTS):
            if name not in args.mutations:
                WEIGHTS[name] = 0
    work = None
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        work = args.keep
    t0 = time.monotonic()
    outcomes = run_campaign(
        args.runs, args.seed, jobs=args.jobs, timeout=args.timeout,
        memory=args.memory_mb << 20, work=work, budget=args.budget,
    )  # fmt: skip
    for o in outcomes:
        if o.outcome in args.show:
            print(describe(o))
    by_mut: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for o in outcomes:
        by_mut[o.case.mutation][o.outcome] += 1
    print(f"\n{len(outcomes)} runs, seed {args.seed}, {time.monotonic() - t0:.0f} s")
    for name, c in sorted(by_mut.items()):
        print(f"  {name:14s} " + " ".join(f"{k}={c[k]}" for k in OUTCOMES if c[k]))
    print("counts: " + " ".join(f"{k}={v}" for k, v in counts(outcomes).items()))
    return 1 if any(o.outcome in BAD for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
