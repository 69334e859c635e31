"""Per-frame values of an enhanced multi-frame file, from its functional groups.

The catalog reads them in its one header pass (:mod:`dicomxr.catalog`) and keeps one small
table per enhanced file in its ``per_frame`` column; :func:`dicomxr.frames.expand` spreads
that table over the file's frames, so planning never opens a file again.

Two readers give the same table:

- :func:`table_from_raw` walks the raw bytes of the Per-frame and Shared Functional Groups
  Sequences (kept by the fast header reader) and decodes only the few elements planning
  uses: a Philips pCASL file with 240 frames takes a few milliseconds, against about a
  hundred for pydicom to build the datasets;
- :func:`table_from_dataset` reads a pydicom dataset (the catalog's fallback path).

Both produce ``{column: tuple of one value per frame}`` with the catalog's column names:
plane position and orientation, pixel measures, frame content (stack, in-stack position,
temporal position, dimension index values, acquisition time), pixel value transformation
(rescale), frame VOI LUT, frame anatomy (laterality), MR echo, cardiac trigger delay, MR
diffusion (b-value, directionality, direction), frame type (complex component) and, for
Philips, the private per-frame item (2005,140F): InstanceNumber, EchoNumbers,
TemporalPositionIdentifier, ASL label type (2005,1429) and ImageType.

Any other attribute a user asks for (``scan(..., keys=[...])``) may sit in a functional
group too (RepetitionTime and FlipAngle of an enhanced MR image are in the MR Timing and
Related Parameters group): :func:`raw_values_in_groups` finds the raw values of given tags
at any depth of the shared item and of each per-frame item, from the same raw bytes.
"""

from __future__ import annotations

import functools
import math
import struct
from collections.abc import Callable
from typing import Any

__all__ = [
    "PER_FRAME",
    "SHARED",
    "component_from_image_type",
    "dataset_holding",
    "header_value",
    "positions_from_dataset",
    "positions_from_raw",
    "raw_values_in_groups",
    "table_from_dataset",
    "table_from_raw",
]

#: Per-frame Functional Groups Sequence (5200,9230) and Shared Functional Groups (5200,9229).
PER_FRAME = 0x52009230
SHARED = 0x52009229

_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQ_END = 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_SHORT_VRS = frozenset(
    {
        b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO",
        b"LT", b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US",
    }
)  # fmt: skip
# nesting deeper than this is no functional group: a hostile file
_MAX_DEPTH = 8

_PLANE_POSITION = 0x00209113
_PLANE_ORIENTATION = 0x00209116
_PIXEL_MEASURES = 0x00289110
_FRAME_CONTENT = 0x00209111
_PIXEL_VALUE_TRANSFORMATION = 0x00289145
_FRAME_VOI_LUT = 0x00289132
_FRAME_ANATOMY = 0x00209071
_MR_ECHO = 0x00189114
_CARDIAC_SYNCHRONIZATION = 0x00189118
_MR_DIFFUSION = 0x00189117
_GRADIENT_DIRECTION = 0x00189076
_PHILIPS_PERFRAME = 0x2005140F
# Real World Value Mapping (0040,9096): a functional group of its own, read by dicomxr.scaling
_REAL_WORLD = 0x00409096
_PHILIPS_SCALE_SLOPE = 0x2005100E  # MR Scale Slope, in block 10 ("Philips MR Imaging DD 001")
_PHILIPS_CREATOR_10 = 0x20050010
# every "...FrameTypeSequence" of the standard (MR, MR spectroscopy, CT, X-ray 3D, PET,
# photoacoustic, whole slide, parametric map, confocal, intravascular OCT)
_FRAME_TYPE_SEQUENCES = (
    0x00189226,
    0x00189227,
    0x00189329,
    0x00189504,
    0x00189751,
    0x00189835,
    0x00400710,
    0x00409092,
    0x00480116,
    0x00520025,
)
_SEQUENCES = frozenset(
    {
        PER_FRAME,
        SHARED,
        _PLANE_POSITION,
        _PLANE_ORIENTATION,
        _PIXEL_MEASURES,
        _FRAME_CONTENT,
        _PIXEL_VALUE_TRANSFORMATION,
        _FRAME_VOI_LUT,
        _FRAME_ANATOMY,
        _MR_ECHO,
        _CARDIAC_SYNCHRONIZATION,
        _MR_DIFFUSION,
        _GRADIENT_DIRECTION,
        _PHILIPS_PERFRAME,
        *_FRAME_TYPE_SEQUENCES,
    }
)

# leaf elements kept: tag -> (dictionary VR, kind of value)
_LEAVES: dict[int, tuple[str, str]] = {
    0x00200032: ("DS", "floats"),  # ImagePositionPatient
    0x00200037: ("DS", "floats"),  # ImageOrientationPatient
    0x00280030: ("DS", "floats"),  # PixelSpacing
    0x00180050: ("DS", "float"),  # SliceThickness
    0x00180088: ("DS", "float"),  # SpacingBetweenSlices
    0x00209056: ("SH", "text"),  # StackID
    0x00209057: ("UL", "int"),  # InStackPositionNumber
    0x00209128: ("UL", "int"),  # TemporalPositionIndex
    0x00209157: ("UL", "ints"),  # DimensionIndexValues
    0x00189074: ("DT", "text"),  # FrameAcquisitionDateTime
    0x00281053: ("DS", "float"),  # RescaleSlope
    0x00281052: ("DS", "float"),  # RescaleIntercept
    0x00281054: ("LO", "text"),  # RescaleType
    0x00281050: ("DS", "floats"),  # WindowCenter
    0x00281051: ("DS", "floats"),  # WindowWidth
    0x00209072: ("CS", "text"),  # FrameLaterality
    0x00189082: ("FD", "float"),  # EffectiveEchoTime
    0x00209153: ("FD", "float"),  # NominalCardiacTriggerDelayTime
    0x00189087: ("FD", "float"),  # DiffusionBValue
    0x00189075: ("CS", "text"),  # DiffusionDirectionality
    0x00189089: ("FD", "floats"),  # DiffusionGradientOrientation
    0x00089007: ("CS", "strs"),  # FrameType
    0x00089208: ("CS", "text"),  # ComplexImageComponent
    # in the Philips private per-frame item
    0x00080008: ("CS", "strs"),  # ImageType
    0x00200013: ("IS", "int"),  # InstanceNumber
    0x00180086: ("IS", "int"),  # EchoNumbers
    0x00200100: ("IS", "int"),  # TemporalPositionIdentifier
    0x20051429: ("CS", "text"),  # Philips ASL label type (CONTROL / LABEL)
    _PHILIPS_SCALE_SLOPE: ("FL", "float"),  # Philips MR Scale Slope (precise values)
    _PHILIPS_CREATOR_10: ("LO", "text"),  # its private creator
}

# (functional group, [(element, column)], set the columns whenever the group is there)
# - "always": a group present without the element says "no value" for this frame;
# - otherwise only the elements present override the file's own value.
_GROUPS: tuple[tuple[int, tuple[tuple[int, str], ...], bool], ...] = (
    (_PLANE_POSITION, ((0x00200032, "ImagePositionPatient"),), True),
    (_PLANE_ORIENTATION, ((0x00200037, "ImageOrientationPatient"),), True),
    (
        _PIXEL_MEASURES,
        (
            (0x00280030, "PixelSpacing"),
            (0x00180050, "SliceThickness"),
            (0x00180088, "SpacingBetweenSlices"),
        ),
        False,
    ),
    (
        _FRAME_CONTENT,
        (
            (0x00209056, "StackID"),
            (0x00209057, "InStackPositionNumber"),
            (0x00209128, "TemporalPositionIndex"),
            (0x00209157, "DimensionIndexValues"),
            (0x00189074, "FrameAcquisitionDateTime"),
        ),
        True,
    ),
    (
        _PIXEL_VALUE_TRANSFORMATION,
        (
            (0x00281053, "RescaleSlope"),
            (0x00281052, "RescaleIntercept"),
            (0x00281054, "RescaleType"),
        ),
        True,
    ),
    (_FRAME_VOI_LUT, ((0x00281050, "WindowCenter"), (0x00281051, "WindowWidth")), True),
    (_FRAME_ANATOMY, ((0x00209072, "FrameLaterality"),), False),
    (_MR_ECHO, ((0x00189082, "EchoTime"),), False),
    (_CARDIAC_SYNCHRONIZATION, ((0x00209153, "TriggerTime"),), False),
    (
        _MR_DIFFUSION,
        ((0x00189087, "DiffusionBValue"), (0x00189075, "DiffusionDirectionality")),
        True,
    ),
)
# the classic-export values of a Philips frame (its ImagePositionPatient is shifted by half
# a voxel: not used)
_PHILIPS_VALUES = (
    (0x00200013, "InstanceNumber"),
    (0x00180086, "EchoNumbers"),
    (0x00200100, "TemporalPositionIdentifier"),
)
_COMPONENTS = frozenset({"MAGNITUDE", "PHASE", "REAL", "IMAGINARY"})
_DD001 = "PHILIPS MR IMAGING DD 001"

# ImageType tokens (from the third value on) that name the complex component
_COMPONENT_TOKENS = {
    "M": "MAGNITUDE",
    "MAGNITUDE": "MAGNITUDE",
    "P": "PHASE",
    "PHASE": "PHASE",
    "PHASE MAP": "PHASE",
    "R": "REAL",
    "REAL": "REAL",
    "I": "IMAGINARY",
    "IMAGINARY": "IMAGINARY",
}
_component_cache: dict[Any, str | None] = {}


def component_from_image_type(image_type: Any) -> str | None:
    """Return the complex component an ImageType names, or ``None``.

    Looks at the values after ``ORIGINAL/DERIVED`` and ``PRIMARY/SECONDARY``: Siemens
    writes ``M``/``P`` as the third value, Philips ``M``/``P`` (and ``PHASE MAP``) as the
    third or fourth, the standard ``MAGNITUDE``/``PHASE``/``REAL``/``IMAGINARY``.

    Examples
    --------
    >>> component_from_image_type(("ORIGINAL", "PRIMARY", "PHASE MAP", "P", "FFE"))
    'PHASE'
    >>> component_from_image_type(("ORIGINAL", "PRIMARY", "AXIAL")) is None
    True
    """
    if image_type is None or isinstance(image_type, float):
        return None
    key = tuple(image_type) if not isinstance(image_type, str) else (image_type,)
    try:
        return _component_cache[key]
    except KeyError:
        pass
    found = None
    for token in key[2:]:
        comp = _COMPONENT_TOKENS.get(str(token).strip().upper())
        if comp is not None:
            found = comp
            break
    if len(_component_cache) < 4096:
        _component_cache[key] = found
    return found


# ---------------------------------------------------------------------------------------
# values: pydicom's Python value (or one decoded from raw bytes) -> the catalog's kind


def _floats(value: Any) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
            return (float(value),)
        return tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None


def _float(value: Any) -> float | None:
    vals = _floats(value)
    if not vals:
        return None
    v = vals[0]
    return v if math.isfinite(v) else None


def _int(value: Any) -> int | None:
    try:
        if value is None or value == "":
            return None
        if hasattr(value, "__len__") and not isinstance(value, str):
            value = value[0]
        return int(value)
    except (TypeError, ValueError, IndexError):
        return None


def _ints(value: Any) -> tuple[int, ...] | int | None:
    if hasattr(value, "__len__") and not isinstance(value, (str, bytes)):
        try:
            return tuple(int(v) for v in value)
        except (TypeError, ValueError):
            return None
    return _int(value)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _strs(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = (value,)
    try:
        return tuple(str(v) for v in value) or None
    except TypeError:
        return None


_KINDS: dict[str, Callable[[Any], Any]] = {
    "floats": _floats,
    "float": _float,
    "int": _int,
    "ints": _ints,
    "text": _text,
    "strs": _strs,
}
_BINARY = {"US": "H", "SS": "h", "UL": "I", "SL": "i", "FL": "f", "FD": "d"}


def _python_value(raw: bytes, vr: str) -> Any:
    """Decode a raw little-endian value of VR ``vr`` the way pydicom presents it."""
    fmt = _BINARY.get(vr)
    if fmt is not None:
        n = len(raw) // struct.calcsize(fmt)
        if n == 0:
            return None
        values = struct.unpack_from(f"<{n}{fmt}", raw)
        return list(values) if n > 1 else values[0]
    text = raw.decode("ascii") if raw.isascii() else raw.decode("latin-1")
    text = text.rstrip("\x00 ")
    if not text:
        return None
    parts = text.split("\\")
    if vr in ("DS", "IS"):
        parts = [p.strip() for p in parts]
    return parts if len(parts) > 1 else parts[0]


# ---------------------------------------------------------------------------------------
# the raw reader: sequence bytes -> items (dicts of tag -> value or list of items)

_unpack_hh = struct.Struct("<HH").unpack_from
_unpack_hhi = struct.Struct("<HHI").unpack_from
_unpack_h = struct.Struct("<H").unpack_from
_unpack_i = struct.Struct("<I").unpack_from

Item = dict[int, Any]


# pseudo parent: a sequence read only for the ImagePositionPatient of each item (UIH VFrame)
_POSITIONS = -1


def _children() -> dict[int, frozenset[int]]:
    """Return what planning reads inside the items of each sequence (the rest is skipped)."""
    groups = frozenset({g for g, _, _ in _GROUPS} | {_PHILIPS_PERFRAME, *_FRAME_TYPE_SEQUENCES})
    groups |= {_REAL_WORLD}
    out = {PER_FRAME: groups, SHARED: groups, _GRADIENT_DIRECTION: frozenset({0x00189089})}
    for group_tag, elements, _ in _GROUPS:
        out[group_tag] = frozenset(tag for tag, _ in elements)
    out[_MR_DIFFUSION] |= {_GRADIENT_DIRECTION}
    for tag in _FRAME_TYPE_SEQUENCES:
        out[tag] = frozenset({0x00089007, 0x00089208})
    out[_PHILIPS_PERFRAME] = frozenset(
        {
            0x00080008,
            0x20051429,
            _PHILIPS_SCALE_SLOPE,
            _PHILIPS_CREATOR_10,
            *(t for t, _ in _PHILIPS_VALUES),
        }
    )
    out[_POSITIONS] = frozenset({0x00200032})
    return out


_CHILDREN = _children()
_unpack_i2sh = struct.Struct("<I2sH").unpack_from


def _stops(parent: int) -> tuple[frozenset[int], frozenset[int]]:
    """Tags the skipping loops stop at inside an item of ``parent``: plain and byte-swapped.

    The swapped form is how a little-endian uint32 read of the tag's bytes gives it.
    """
    stop = _CHILDREN.get(parent, frozenset()) | {_ITEM_END}
    return stop, frozenset(((t & 0xFFFF) << 16) | (t >> 16) for t in stop)


_STOPS = {parent: _stops(parent) for parent in (*_CHILDREN, 0)}


def _raw_items(
    b: bytes,
    pos: int,
    end: int | None,
    implicit: bool,
    parent: int,
    depth: int = 1,
    limit: int = 1 << 20,
) -> tuple[list[Item], int]:
    """Read the items of sequence ``parent`` starting at ``pos`` (``end`` None: undefined length).

    ``parent`` 0 reads nothing: a sequence planning does not need, only skipped.
    """
    if depth > _MAX_DEPTH:
        raise ValueError("functional groups nested too deeply")
    items: list[Item] = []
    while end is None or pos < end:
        pos, item_end, ended = _next_item(b, pos)
        if ended:
            return items, pos
        if len(items) >= limit:
            _check_count(limit + 1, limit)
        item, pos = _raw_item(b, pos, item_end, implicit, parent, depth)
        items.append(item)
    if pos != end:
        raise ValueError("sequence runs past its value")
    return items, pos


def _next_item(b: bytes, pos: int) -> tuple[int, int | None, bool]:
    """Read the item (or sequence delimiter) header at ``pos`` of a sequence value.

    Returns the position after it, the item's end (``None``: undefined length) and whether
    it was the sequence delimiter.
    """
    if pos + 8 > len(b):
        raise ValueError("sequence runs past its value")
    group, elem, length = _unpack_hhi(b, pos)
    tag = (group << 16) | elem
    if tag == _SEQ_END:
        return pos + 8, None, True
    if tag != _ITEM:
        raise ValueError(f"element ({group:04X},{elem:04X}) where an item should be")
    pos += 8
    return pos, None if length == _UNDEFINED else pos + length, False


def _raw_item(
    b: bytes, pos: int, end: int | None, implicit: bool, parent: int, depth: int
) -> tuple[Item, int]:
    """Read one item's elements: wanted values decoded, wanted sequences read, others skipped."""
    out: Item = {}
    size = len(b) if end is None else min(end, len(b))
    stop, stop_swapped = _STOPS.get(parent, _STOPS[0])
    while end is None or pos < end:
        if implicit:
            pos = _skip_implicit(b, pos, size, stop)
        else:
            pos = _skip_explicit(b, pos, size, stop_swapped)
        if end is not None and pos >= end:
            break
        if pos + 8 > size:
            raise ValueError("item runs past its value")
        group, elem = _unpack_hh(b, pos)
        tag = (group << 16) | elem
        if tag == _ITEM_END:
            return out, pos + 8
        vr, header, length = _element_header(b, pos, implicit or group == 0xFFFE)
        start = pos + header
        inner_implicit = implicit or vr == b"UN"
        if tag == _REAL_WORLD and tag in stop:  # kept raw: dicomxr.scaling parses it
            value_end = None if length == _UNDEFINED else start + length
            _, pos = _raw_items(b, start, value_end, inner_implicit, 0, depth + 1)
            out[tag] = _RawSequence(vr, b[start:pos], inner_implicit)
            continue
        if tag in stop and tag in _SEQUENCES and vr in (None, b"SQ", b"UN"):
            value_end = None if length == _UNDEFINED else start + length
            out[tag], pos = _raw_items(b, start, value_end, inner_implicit, tag, depth + 1)
            continue
        if length == _UNDEFINED:  # a sequence planning does not need, or encapsulated data
            if vr in (b"OB", b"OW"):
                pos = _skip_fragments(b, start)
            else:
                _, pos = _raw_items(b, start, None, inner_implicit, 0, depth + 1)
            continue
        if start + length > size:
            raise ValueError("element runs past its item")
        leaf = _LEAVES.get(tag) if tag in stop else None
        if leaf is not None:
            dict_vr, kind = leaf
            use_vr = dict_vr if vr is None or vr == b"UN" else vr.decode()
            out[tag] = _KINDS[kind](_python_value(b[start : start + length], use_vr))
        pos = start + length
    if pos != end:
        raise ValueError("item runs past its value")
    return out, pos


def _element_header(b: bytes, pos: int, implicit: bool) -> tuple[bytes | None, int, int]:
    """VR (None when implicit), header size and value length of the element at ``pos``."""
    if implicit:
        return None, 8, _unpack_i(b, pos + 4)[0]
    vr = b[pos + 4 : pos + 6]
    if vr in _LONG_VRS:
        return vr, 12, _unpack_i(b, pos + 8)[0]
    if vr in _SHORT_VRS:
        return vr, 8, _unpack_h(b, pos + 6)[0]
    raise ValueError("invalid VR inside a functional group")


class _RawSequence:
    """A sequence value kept as it stands in the file (the Real World Value Mapping)."""

    __slots__ = ("implicit", "raw", "vr")

    def __init__(self, vr: bytes | None, raw: bytes, implicit: bool) -> None:
        self.vr, self.raw, self.implicit = vr, raw, implicit

    def key(self) -> tuple[bytes | None, bytes, bool]:
        return self.vr, self.raw, self.implicit


def _skip_explicit(b: bytes, pos: int, size: int, stop: frozenset[int]) -> int:
    """Skip explicit VR elements of no interest; return where the careful loop takes over.

    One unpack per element: most elements of a functional group item (the Philips private
    per-frame item has 78) are neither kept nor read into.
    """
    limit = size - 12
    short_vrs, long_vrs = _SHORT_VRS, _LONG_VRS
    while pos <= limit:
        stag, vr, length = _unpack_i2sh(b, pos)
        if stag in stop:
            return pos
        if vr in short_vrs:
            pos += 8 + length
        elif vr in long_vrs:
            (length,) = _unpack_i(b, pos + 8)
            if length == _UNDEFINED:
                return pos
            pos += 12 + length
        else:
            return pos
    return pos


def _skip_implicit(b: bytes, pos: int, size: int, stop: frozenset[int]) -> int:
    """Skip implicit VR elements of no interest; return where the careful loop takes over."""
    limit = size - 8
    while pos <= limit:
        group, elem, length = _unpack_hhi(b, pos)
        if ((group << 16) | elem) in stop or length == _UNDEFINED:
            return pos
        pos += 8 + length
    return pos


def _skip_fragments(b: bytes, pos: int) -> int:
    """Skip the items of an encapsulated value (an icon image); return the position after it."""
    while pos + 8 <= len(b):
        group, elem, length = _unpack_hhi(b, pos)
        tag = (group << 16) | elem
        pos += 8
        if tag == _SEQ_END:
            return pos
        if tag != _ITEM or length == _UNDEFINED:
            break
        pos += length
    raise ValueError("encapsulated value runs past its item")


def _sequence_value(
    raw: tuple[bytes | None, bytes], implicit: bool, parent: int, limit: int
) -> list[Item]:
    vr, value = raw
    items, _ = _raw_items(value, 0, len(value), implicit or vr == b"UN", parent, limit=limit)
    return items


def _check_count(n_items: int, n_frames: int) -> None:
    """Refuse a per-frame sequence whose item count is not NumberOfFrames."""
    if n_items > n_frames:
        raise ValueError(f"more per-frame functional group items than NumberOfFrames {n_frames}")
    if n_items != n_frames:
        raise ValueError(
            f"{n_items} per-frame functional group items for NumberOfFrames {n_frames}"
        )


def table_from_raw(
    per_frame: tuple[bytes | None, bytes],
    shared: tuple[bytes | None, bytes] | None,
    implicit: bool,
    n_frames: int,
    manufacturer: Any = None,
) -> dict[str, tuple[Any, ...]]:
    """Read the per-frame table from the raw functional group sequences.

    Parameters
    ----------
    per_frame, shared
        ``(VR, value bytes)`` of (5200,9230) and (5200,9229) as the fast header reader kept
        them (the value of an undefined-length sequence ends with its delimiter).
    implicit
        Whether the data set is implicit VR.
    n_frames
        NumberOfFrames: the per-frame sequence must hold as many items.
    manufacturer
        The file's Manufacturer: Philips' precise-value slope is read for Philips only.

    Raises
    ------
    ValueError
        When the sequences do not parse.
    """
    frames = _sequence_value(per_frame, implicit, PER_FRAME, n_frames)
    _check_count(len(frames), n_frames)
    shared_items = _sequence_value(shared, implicit, SHARED, 1 << 20) if shared else []
    return _table(frames, shared_items[0] if shared_items else None, _is_philips(manufacturer))


# ---------------------------------------------------------------------------------------
# requested keys: raw values of any tags, at any depth of the functional groups

RawValue = tuple[bytes | None, bytes]


def raw_values_in_groups(
    sequence: RawValue, implicit: bool, tags: frozenset[int]
) -> list[dict[int, RawValue]]:
    """Find the raw values of ``tags`` in each item of a functional groups sequence.

    Every sequence inside an item is searched, depth first; the first occurrence of a tag
    in an item is its value there.

    Parameters
    ----------
    sequence
        ``(VR, value bytes)`` of (5200,9230) or (5200,9229) as the fast header reader kept
        them.
    implicit
        Whether the data set is implicit VR.
    tags
        The tags to find.

    Returns
    -------
    list of dict
        ``{tag: (VR, bytes)}`` per item, in order. The VR is ``None`` where the file does
        not say it (implicit VR).

    Raises
    ------
    ValueError
        When the sequence does not parse.
    """
    vr, value = sequence
    out: list[dict[int, RawValue]] = []

    def new_item() -> dict[int, RawValue]:
        out.append({})
        return out[-1]

    _walk_sequence(value, 0, len(value), implicit or vr == b"UN", tags, 1, new_item)
    return out


def _walk_sequence(
    b: bytes,
    pos: int,
    end: int | None,
    implicit: bool,
    tags: frozenset[int],
    depth: int,
    item_found: Callable[[], dict[int, RawValue]],
) -> int:
    """Search each item of the sequence value at ``pos``; return the position after it.

    ``item_found`` gives the dict an item's values go to (a new one per frame item, the
    enclosing item's for a nested sequence).
    """
    if depth > _MAX_DEPTH:
        raise ValueError("functional groups nested too deeply")
    while end is None or pos < end:
        pos, item_end, ended = _next_item(b, pos)
        if ended:
            return pos
        pos = _find_in_item(b, pos, item_end, implicit, tags, item_found(), depth)
    if pos != end:
        raise ValueError("sequence runs past its value")
    return pos


def _find_in_item(
    b: bytes,
    pos: int,
    end: int | None,
    implicit: bool,
    tags: frozenset[int],
    found: dict[int, RawValue],
    depth: int,
) -> int:
    """Record the first raw value of each of ``tags`` in one item (nested sequences too).

    Returns the position after the item (after its delimiter when ``end`` is ``None``).
    """
    size = len(b) if end is None else min(end, len(b))
    while end is None or pos < end:
        if end is not None and len(found) == len(tags):
            return end  # all found: the rest of a defined-length item is not read
        if pos + 8 > size:
            raise ValueError("item runs past its value")
        group, elem = _unpack_hh(b, pos)
        tag = (group << 16) | elem
        if tag == _ITEM_END:
            return pos + 8
        vr, header, length = _element_header(b, pos, implicit or group == 0xFFFE)
        start = pos + header
        if _is_sequence(tag, vr, length):
            value_end = None if length == _UNDEFINED else start + length
            inner = implicit or vr == b"UN"
            pos = _walk_sequence(b, start, value_end, inner, tags, depth + 1, lambda: found)
            continue
        if length == _UNDEFINED:  # encapsulated (an icon image)
            pos = _skip_fragments(b, start)
            continue
        if start + length > size:
            raise ValueError("element runs past its item")
        if tag in tags and tag not in found:
            found[tag] = (vr, b[start : start + length])
        pos = start + length
    if pos != end:
        raise ValueError("item runs past its value")
    return pos


def _is_sequence(tag: int, vr: bytes | None, length: int) -> bool:
    """Whether an element holds items: its VR says so, or (no VR, or UN) its length or dictionary.

    An undefined length without a VR (or UN) is a sequence of implicit VR items (PS3.5
    6.2.2); pixel data, the other undefined-length value, is not in a functional group.
    """
    if vr == b"SQ":
        return True
    if vr is not None and vr != b"UN":
        return False
    return length == _UNDEFINED or _dictionary_sequence(tag)


@functools.cache
def _dictionary_sequence(tag: int) -> bool:
    if tag in _SEQUENCES:
        return True
    from pydicom.datadict import dictionary_VR

    try:
        return dictionary_VR(tag) == "SQ"
    except KeyError:  # private, or not in the dictionary
        return False


def dataset_holding(ds: Any, tag: int, depth: int = 1) -> Any:
    """Return the (nested) pydicom item of ``ds`` that holds ``tag``, depth first, or ``None``."""
    if ds is None or depth > _MAX_DEPTH:
        return None
    if tag in ds:
        return ds
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                holder = dataset_holding(item, tag, depth + 1)
                if holder is not None:
                    return holder
    return None


def header_value(ds: Any, keyword: str) -> Any:
    """Return ``keyword``'s value in a data set: top level, shared groups, first frame's groups.

    The order the catalog resolves requested keys in (:mod:`dicomxr.catalog`), for one value
    of a whole file (a sidecar's): the top level, then the Shared Functional Groups item,
    then the first Per-frame Functional Groups item (any depth, :func:`dataset_holding`).

    Parameters
    ----------
    ds
        A pydicom data set (header only is enough).
    keyword
        A DICOM keyword.

    Returns
    -------
    The pydicom value, or ``None`` when absent or empty everywhere.
    """
    value = ds.get(keyword)
    if value is not None and value != "":
        return value
    from pydicom.datadict import tag_for_keyword

    tag = tag_for_keyword(keyword)
    if tag is None:
        return None
    for group in (SHARED, PER_FRAME):
        elem = ds.get(group)
        holder = dataset_holding(elem.value[0], tag) if elem is not None and elem.value else None
        if holder is not None:
            value = holder[tag].value
            if value is not None and value != "":
                return value
    return None


# ---------------------------------------------------------------------------------------
# the pydicom path: a dataset -> the same items


def _plain(ds: Any, depth: int = 1) -> Item:
    """Convert a pydicom dataset item to the raw reader's form."""
    if depth > _MAX_DEPTH:
        raise ValueError("functional groups nested too deeply")
    out: Item = {}
    for elem in ds:
        tag = int(elem.tag)
        if tag in _SEQUENCES and elem.VR == "SQ":
            out[tag] = [_plain(item, depth + 1) for item in elem.value]
            continue
        if tag == _REAL_WORLD and elem.VR == "SQ":
            out[tag] = _real_world_of(elem.value)
            continue
        leaf = _LEAVES.get(tag)
        if leaf is None:
            continue
        value = elem.value
        if isinstance(value, (bytes, bytearray)):  # unknown VR (implicit private): decode
            value = _python_value(bytes(value), leaf[0])
        out[tag] = _KINDS[leaf[1]](value)
    return out


def table_from_dataset(ds: Any, n_frames: int) -> dict[str, tuple[Any, ...]]:
    """Read the per-frame table from a pydicom dataset of an enhanced file.

    Parameters
    ----------
    ds
        The dataset (header only is enough).
    n_frames
        NumberOfFrames: the per-frame sequence must hold as many items.

    Raises
    ------
    ValueError
        When the item count is wrong or a value cannot be read.
    """
    per_frame = ds.get(PER_FRAME)
    shared = ds.get(SHARED)
    items = per_frame.value if per_frame is not None else ()
    _check_count(len(items), n_frames)
    frames = [_plain(item) for item in items]
    shared_items = [_plain(item) for item in shared.value] if shared is not None else []
    philips = _is_philips(ds.get("Manufacturer"))
    return _table(frames, shared_items[0] if shared_items else None, philips)


# ---------------------------------------------------------------------------------------
# items -> one value per frame per column


def _first_item(group: Item | None, tag: int) -> Item | None:
    items = group.get(tag) if group is not None else None
    return items[0] if isinstance(items, list) and items else None


def _frame_type_item(group: Item | None) -> Item | None:
    for tag in _FRAME_TYPE_SEQUENCES:
        item = _first_item(group, tag)
        if item is not None:
            return item
    return None


def _is_philips(manufacturer: Any) -> bool:
    return isinstance(manufacturer, str) and "PHILIPS" in manufacturer.upper()


def _real_world_of(sequence: Any) -> Any:
    """Return the Real World Value Mappings of a pydicom sequence, as the catalog keeps them."""
    from dicomxr.scaling import real_world_mappings

    try:
        return real_world_mappings(sequence) if len(sequence) else _ABSENT
    except Exception:  # a damaged mapping: no mapping for this frame
        return None


def _real_world_raw(value: _RawSequence, memo: dict[Any, Any]) -> Any:
    """Return the Real World Value Mappings of a raw sequence; equal bytes parsed once."""
    key = value.key()
    if key not in memo:
        from dicomxr.scaling import decode_raw_sequence

        try:
            items, _ = _raw_items(value.raw, 0, len(value.raw), value.implicit, 0)
            memo[key] = (
                decode_raw_sequence(value.raw, value.vr, value.implicit) if items else _ABSENT
            )
        except Exception:  # a damaged mapping: no mapping for this frame
            memo[key] = None
    return memo[key]


class _Absent:
    __slots__ = ()


_ABSENT = _Absent()  # an empty sequence: the group says nothing


def _frame_values(
    frame: Item, shared: Item | None, philips_file: bool, memo: dict[Any, Any]
) -> dict[str, Any]:
    """Return the columns one frame's functional groups give (absent ones are left out)."""
    out: dict[str, Any] = {}
    for group in (frame, shared):
        if group is not None and _REAL_WORLD in group:
            value = group[_REAL_WORLD]
            if isinstance(value, _RawSequence):
                value = _real_world_raw(value, memo)
            if value is not _ABSENT:
                out["RealWorldValueMapping"] = value
                break
    for group_tag, elements, always in _GROUPS:
        item = _first_item(frame, group_tag)
        if item is None:
            item = _first_item(shared, group_tag)
        if item is None:
            continue
        for tag, column in elements:
            if always or tag in item:
                out[column] = item.get(tag)
        if group_tag == _MR_DIFFUSION:
            direction = _first_item(item, _GRADIENT_DIRECTION)
            if direction is not None:
                out["DiffusionGradientOrientation"] = direction.get(0x00189089)
    ftype = _frame_type_item(frame)
    if ftype is None:
        ftype = _frame_type_item(shared)
    if ftype is not None:
        out["FrameType"] = ftype.get(0x00089007)
        comp = ftype.get(0x00089208)
        out["ComplexImageComponent"] = (
            comp if comp in _COMPONENTS else component_from_image_type(out["FrameType"])
        )
    philips = _first_item(frame, _PHILIPS_PERFRAME)
    if philips is not None:
        for tag, column in _PHILIPS_VALUES:
            if philips.get(tag) is not None:
                out[column] = philips[tag]
        if 0x20051429 in philips:
            out["LabelType"] = philips[0x20051429]
        # Philips precise values (dicomxr.scaling): read by tag as dcm2niix does, in the
        # block of "Philips MR Imaging DD 001" when the item names its creators
        creator = philips.get(_PHILIPS_CREATOR_10)
        scale = philips.get(_PHILIPS_SCALE_SLOPE)
        if scale is not None and philips_file and (creator is None or creator.upper() == _DD001):
            out["PhilipsScaleSlope"] = scale
        if "ComplexImageComponent" not in out:
            out["ComplexImageComponent"] = component_from_image_type(philips.get(0x00080008))
    return out


def _table(
    frames: list[Item], shared: Item | None, philips_file: bool
) -> dict[str, tuple[Any, ...]]:
    n = len(frames)
    columns: dict[str, list[Any]] = {}
    memo: dict[Any, Any] = {}
    for k, frame in enumerate(frames):
        for column, value in _frame_values(frame, shared, philips_file, memo).items():
            values = columns.get(column)
            if values is None:
                values = columns[column] = [None] * n
            values[k] = value
    return {column: tuple(values) for column, values in columns.items()}


# ---------------------------------------------------------------------------------------
# a sequence of positions (United Imaging's "MR VFrame Sequence", one item per mosaic tile)


def _positions(items: list[Item]) -> tuple[tuple[float, ...], ...] | None:
    out = []
    for item in items:
        ipp = item.get(0x00200032)
        if ipp is None or len(ipp) != 3 or not all(math.isfinite(v) for v in ipp):
            return None
        out.append(ipp)
    return tuple(out) or None


def positions_from_raw(value: bytes, implicit: bool) -> tuple[tuple[float, ...], ...] | None:
    """Return the ImagePositionPatient of every item of a raw sequence value, or ``None``.

    ``None`` when an item has no valid position (then no tile position is trusted).

    Raises
    ------
    ValueError
        When the sequence does not parse.
    """
    items, _ = _raw_items(value, 0, len(value), implicit, _POSITIONS)
    return _positions(items)


def positions_from_dataset(items: Any) -> tuple[tuple[float, ...], ...] | None:
    """Return the ImagePositionPatient of every item of a pydicom sequence, or ``None``."""
    plain = []
    for item in items:
        elem = item.get(0x00200032)
        plain.append({} if elem is None else {0x00200032: _floats(elem.value)})
    return _positions(plain)
