"""The byte-by-byte walk against every real file and pydicom's own reading of it.

For every file under the real corpora (all of them, DICOMDIRs and the non-DICOM files beside
them included) and every file pydicom ships for its tests:

* the walk tiles the file: preamble, prefix, element headers, leaf values, delimiters,
  fragments, padding and the unparsed rest after a break cover every byte exactly once (and
  the inflated stream of a deflated file likewise);
* every element pydicom reads (before the break, for a broken file) is found at the same
  value offset with the same tag, VR, length, value bytes and decoded value;
* a broken file reports where and why it broke.

pydicom is the independent reference here: the walk uses its data dictionary only.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import pydicom
import pydicom.data
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.encaps import parse_fragments
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName

from conftest import _data_root
from dicomxr.teaching.anatomy import anatomy
from dicomxr.teaching.walk import UNDEFINED

DEFER = 2048  # pydicom does not read values longer than this; offsets and lengths still agree


def _corpus_files() -> list[tuple[str, Path]]:
    out: list[tuple[str, Path]] = []
    root = _data_root()
    if root.is_dir():
        out += [(f"data/{p.relative_to(root)}", p) for p in sorted(root.rglob("*")) if p.is_file()]
    base = Path(pydicom.data.get_testdata_file("CT_small.dcm")).parent
    for name in sorted(pydicom.data.get_testdata_files()):
        p = Path(name)
        if p.is_file():
            out.append((f"pydicom/{p.relative_to(base)}", p))
    return out


FILES = _corpus_files()


def test_corpus_is_there(data_root: Path) -> None:
    # the parametrised tests below are collected from this folder: fail loudly if it is empty
    n_real = sum(1 for key, _ in FILES if key.startswith("data/"))
    assert n_real > 1000, f"only {n_real} files under {data_root}"
    assert sum(1 for key, _ in FILES if key.startswith("pydicom/")) > 100


def _check_tiling(a) -> None:
    by_stream: dict[str, list] = {}
    for stream, start, stop, node, part in a.spans():
        by_stream.setdefault(stream, []).append((start, stop, node, part))
    assert "file" in by_stream or a.size == 0
    for stream, spans in by_stream.items():
        total = a.size if stream == "file" else a.inflated_size
        pos = 0
        for start, stop, node, part in spans:
            assert start == pos, (
                f"{stream}: {'gap' if start > pos else 'overlap'} at {pos}..{start} before "
                f"{node.kind} {node.tag_str} {part}"
            )
            assert stop >= start
            pos = stop
        assert pos == total, f"{stream}: walk ends at {pos}, stream has {total} bytes"


# (VR, value bytes) pairs whose decoded value already agreed with pydicom's in some file:
# the same bytes decode the same way, so later files compare bytes only (series repeat most
# of their values from file to file)
_VERIFIED: set[tuple[str, bool, bytes]] = set()


def _pydicom_elements(ds, stream: str, out: list, base: int = 0, convert: bool = True) -> None:
    """Flatten pydicom's reading: (stream, value offset, tag, raw, converted element or None).

    pydicom parses a defined-length sequence from a buffer of its value, so the offsets of
    the elements inside are relative to the sequence's value: ``base`` adds them up.
    Converting every element of every item of a large enhanced multi-frame file costs
    seconds; items after the first few (repeats of the same structure) are compared by
    offset, tag, VR, length and bytes, without pydicom's value conversion.
    """
    for tag in list(ds._dict):
        raw = ds._dict[tag]
        is_raw = isinstance(raw, RawDataElement)
        need = (
            not is_raw
            or raw.VR in (None, "SQ", "UN")
            or (convert and (raw.VR, raw.is_little_endian, raw.value) not in _VERIFIED)
        )
        elem = ds[tag] if need else None  # converted: VR resolved, value decoded
        if is_raw:
            tell = base + raw.value_tell
            inner = tell
        else:  # undefined-length sequence, parsed from the stream itself
            tell = base + raw.file_tell
            inner = base
        out.append((stream, tell, int(tag), raw, elem))
        if elem is not None and elem.VR == "SQ" and isinstance(elem.value, pydicom.Sequence):
            for i, item in enumerate(elem.value):
                _pydicom_elements(item, stream, out, inner, convert and i < 3)


def _norm(value):
    if isinstance(value, MultiValue | list | tuple):
        return [_norm(v) for v in value]
    if isinstance(value, PersonName):
        return str(value)
    if isinstance(value, pydicom.valuerep.IS | pydicom.valuerep.DSfloat):
        return str(value)
    if isinstance(value, float | int):
        return value
    if isinstance(value, bytes):
        return value
    return str(value).strip(" \x00")


def _same(mine, theirs) -> bool:
    if isinstance(mine, list) and isinstance(theirs, list):
        return len(mine) == len(theirs) and all(
            _same(a, b) for a, b in zip(mine, theirs, strict=True)
        )
    if isinstance(mine, list) and len(mine) == 1:
        return _same(mine[0], theirs)
    if isinstance(mine, float) and isinstance(theirs, float):
        return mine == theirs or (math.isnan(mine) and math.isnan(theirs))
    if isinstance(mine, str) and not isinstance(theirs, list | bytes):
        # IS and DS come back from pydicom as numbers that keep their original string
        return mine.strip(" \x00") == str(theirs).strip(" \x00")
    return mine == theirs


@pytest.mark.parametrize(("key", "path"), FILES, ids=[k for k, _ in FILES])
def test_walk_tiles_and_agrees_with_pydicom(key: str, path: Path) -> None:
    a = anatomy(path)
    _check_tiling(a)
    for b in a.breaks:
        assert b.reason, "a break must say what is wrong"
        assert any(n.kind == "break" for n in a.walk()) or b.offset >= a.size

    if a.breaks and a.breaks[0].offset == 0 and not a.has_prefix:
        # not DICOM at all (README, NIfTI, JSON ...): nothing pydicom "reads" means anything
        assert "does not look like a DICOM file" in " ".join(a.notes)
        return

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(path, force=True, defer_size=DEFER)
            theirs: list = []
            _pydicom_elements(ds.file_meta, "file", theirs)
            _pydicom_elements(ds, "inflated" if a.deflated else "file", theirs)
        except Exception as exc:
            # pydicom cannot read it at all: the walk must call the file broken
            assert a.breaks, f"pydicom fails ({exc!r}) but the walk saw no break"
            return

    blob = path.read_bytes()  # the corpus files are small; one read instead of one per element
    mine = {(n.stream, n.value_offset): n for n in a.elements()}
    first_break = {b.stream: b.offset for b in a.breaks}
    compared = 0
    for stream, tell, tag, raw, elem in theirs:
        if isinstance(raw, RawDataElement):
            rawlen = raw.length
        else:  # an undefined-length sequence pydicom parsed while reading
            rawlen = UNDEFINED if elem.is_undefined_length else -1
        if stream in first_break and tell + max(rawlen, 0) > first_break[stream]:
            continue  # beyond the sound part; pydicom may read half an element here
        node = mine.get((stream, tell))
        assert node is not None, f"{key}: no element of the walk at {stream} {tell} ({tag:08X})"
        assert node.tag == tag
        undefined = rawlen == UNDEFINED
        assert node.undefined_length == undefined, f"{node.tag_str} undefined length"
        if not undefined and rawlen >= 0:
            assert node.value_length == rawlen, f"{node.tag_str} length"
        their_vr = elem.VR if elem is not None else raw.VR
        vr_ok = node.vr == their_vr or (
            # written as UN, the dictionary knows better: pydicom reads the known VR
            node.vr == "UN" and "dictionary says" in node.note
        )
        assert vr_ok, f"{node.tag_str}: walk VR {node.vr} ({node.vr_source}), pydicom {their_vr}"
        compared += 1
        if their_vr == "SQ" or not isinstance(raw, RawDataElement) or raw.value is None:
            if undefined and raw.value is None and node.children and tag in (0x7FE00010,):
                _check_fragments(a, node, path)
            continue
        data = raw.value
        if undefined:  # pydicom keeps everything before the sequence delimiter
            got = a.read(node.value_offset, node.length - node.header_length - 8, node.stream)
            assert got == data, f"{node.tag_str}: undefined-length value bytes differ"
            if tag == 0x7FE00010:
                _check_fragments(a, node, path)
            continue
        src = blob if node.stream == "file" else a._inflated
        got = src[node.value_offset : node.end]
        assert got == data, f"{node.tag_str}: value bytes differ"
        if elem is None:
            continue
        if node.value is not None and node.vr == elem.VR and node.vr not in ("OB", "OW", "UN"):
            assert _same(node.value, _norm(elem.value)), (
                f"{node.tag_str} {node.vr}: walk {node.value!r} != pydicom {elem.value!r}"
            )
            if len(data) <= 256 and data.isascii() and b"\x1b" not in data:
                # ASCII without escapes decodes alike in every character set
                _VERIFIED.add((raw.VR, raw.is_little_endian, data))
    if theirs and not a.breaks:
        assert compared > 0
    # and the other way round: every element of the walk is one pydicom read, but for
    # repeated tags in one dataset (pydicom's dict keeps only the last of them)
    seen = {(stream, tell) for stream, tell, *_ in theirs}
    for siblings in _datasets(a):
        tags = [n.tag for n in siblings if n.kind == "element"]
        for n in siblings:
            if n.kind != "element" or (n.stream, n.value_offset) in seen:
                continue
            if n.stream in first_break and n.end >= first_break[n.stream]:
                continue
            assert tags.count(n.tag) > 1, f"{key}: pydicom has no element at {n.offset} {n.tag_str}"


def _datasets(a):
    """Yield the element lists of every dataset: top level, meta, each item, inflated."""
    yield a.nodes
    for node in a.walk():
        if node.kind in ("item", "deflated"):
            yield node.children


def _check_fragments(a, node, path: Path) -> None:
    """Fragment offsets of encapsulated pixel data agree with pydicom.encaps."""
    table = [c for c in node.children if c.kind == "offset_table"]
    frags = [c for c in node.children if c.kind == "fragment"]
    assert table, "encapsulated pixel data must start with a basic offset table item"
    start = table[0].end
    with open(path, "rb") as fh:
        if node.stream == "inflated":
            return
        fh.seek(start)
        count, offsets = parse_fragments(fh, endianness="<" if a.little_endian else ">")
    assert count == len(frags)
    assert offsets == [f.offset for f in frags]


def test_every_kind_of_file_is_met() -> None:
    # the corpus covers what the walk must handle; if it stopped doing so the test above
    # would prove less than it claims
    kinds = dict.fromkeys(
        ["deflated", "big", "implicit", "encaps", "nometa", "tiff", "broken"], False
    )
    for key, path in FILES:
        if not key.startswith("pydicom/") and "deflate" not in key:
            continue
        if os.path.getsize(path) > 400_000:
            continue
        a = anatomy(path)
        kinds["deflated"] |= a.deflated and a.is_sound
        kinds["big"] |= not a.little_endian and a.is_sound
        kinds["implicit"] |= a.implicit_vr and a.has_meta and a.is_sound
        kinds["encaps"] |= any(n.kind == "fragment" for n in a.walk())
        kinds["nometa"] |= not a.has_meta and a.is_sound and len(a.elements()) > 10
        kinds["tiff"] |= a.preamble_kind == "tiff"
        kinds["broken"] |= bool(a.breaks) and a.has_meta
    assert all(kinds.values()), kinds
