"""Header fields on request: ``keys=[...]`` of :func:`dicomxr.scan`, ``open_series`` and ``convert``.

A key names any DICOM attribute the catalog does not carry by default: a keyword
(``"RepetitionTime"``, ``"FlipAngle"``) or a tag number, which is how private attributes are
asked for (``"0019,100C"``, ``"(0019,100C)"``, ``"0019100C"``, ``0x0019100C`` or
``(0x0019, 0x100C)``). :func:`resolve_keys` turns the request into :class:`Key` objects once;
the header reader then keeps the raw value of each key's tag in the same pass that reads the
catalog columns (no second read of any file), and :func:`value_from_raw` decodes it - the
same decoder serves the pydicom path (:func:`value_from_pydicom`), so both readers give the
same values.

Values are JSON-friendly: ``str``, ``int``, ``float``, or a ``tuple`` of them for a
multi-valued attribute; ``None`` when the attribute is absent or empty. Binary values (OB,
OW, ...) become a hexadecimal string. A private attribute read from an implicit VR file has
no VR: its bytes are read as text when they are printable (numbers when every value parses as
one), else as hexadecimal.

On the xarray side, :func:`key_values` sorts a plan's values of a key into an attribute (the
same for every frame) or a coordinate on the frame dims it varies along.
"""

from __future__ import annotations

import difflib
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from dicomxr.errors import DicomxrError

__all__ = [
    "HeaderKeyError",
    "Key",
    "key_values",
    "normalise_value",
    "resolve_keys",
    "value_from_pydicom",
    "value_from_raw",
]


class HeaderKeyError(DicomxrError, ValueError):
    """A requested header key that names no DICOM attribute."""


@dataclass(frozen=True)
class Key:
    """One requested header field: its column name, tag and dictionary VR (``None``: unknown)."""

    name: str
    tag: int
    vr: str | None

    @property
    def creator_tag(self) -> int | None:
        """The private creator element of a private key's block (``None`` otherwise)."""
        group, elem = self.tag >> 16, self.tag & 0xFFFF
        if group & 1 and elem >= 0x1000:
            return (group << 16) | (elem >> 8)
        return None

    def implicit_vr(self, creator: bytes | str | None) -> str | None:
        """Return the VR of the key in an implicit VR file (``None``: unknown).

        The dictionary's, or for a private key pydicom's private dictionary's under its
        creator.
        """
        if self.vr is not None or creator is None:
            return self.vr
        if isinstance(creator, bytes):
            creator = creator.decode("latin-1")
        return _private_vr(self.tag, creator.strip(" \x00"))


_TAG_TEXT = re.compile(r"^\(?\s*(?:0x)?([0-9A-Fa-f]{4})\s*[,|]?\s*(?:0x)?([0-9A-Fa-f]{4})\s*\)?$")
_BINARY = {"US": "H", "SS": "h", "UL": "I", "SL": "i", "FL": "f", "FD": "d", "SV": "q", "UV": "Q"}
_BYTES_VRS = frozenset({"OB", "OW", "OD", "OF", "OL", "OV", "UN"})
_SINGLE_TEXT = frozenset({"LT", "ST", "UT", "UR"})
_CHARSET_VRS = frozenset({"SH", "LO", "UC", "PN", "LT", "ST", "UT"})
_HEX_LIMIT = 256  # bytes of a binary value kept (as hex) in the catalog


def _tag_of(item: Any) -> int | None:
    if isinstance(item, (int, np.integer)) and not isinstance(item, bool):
        return int(item)
    if isinstance(item, tuple) and len(item) == 2 and all(isinstance(v, int) for v in item):
        return (int(item[0]) << 16) | int(item[1])
    if isinstance(item, str):
        m = _TAG_TEXT.match(item.strip())
        if m:
            return (int(m.group(1), 16) << 16) | int(m.group(2), 16)
    return None


_PRIVATE_VR_MEMO: dict[tuple[int, str], str | None] = {}


def _private_vr(tag: int, creator: str) -> str | None:
    hit = _PRIVATE_VR_MEMO.get((tag, creator), "")
    if hit != "":
        return hit
    from pydicom.datadict import private_dictionary_VR

    try:
        vr: str | None = private_dictionary_VR(tag, creator).split(" or ")[0]
    except KeyError:
        vr = None
    if vr in ("UN", "SQ"):
        vr = None
    if len(_PRIVATE_VR_MEMO) < 4096:
        _PRIVATE_VR_MEMO[(tag, creator)] = vr
    return vr


def _tag_name(tag: int) -> str:
    return f"{tag >> 16:04X},{tag & 0xFFFF:04X}"


def _dictionary_vr(tag: int) -> str | None:
    from pydicom.datadict import dictionary_VR

    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return None
    return vr.split(" or ")[0] if vr else None


def _unknown(item: Any) -> HeaderKeyError:
    from pydicom.datadict import keyword_dict

    hint = ""
    if isinstance(item, str):
        close = difflib.get_close_matches(item, list(keyword_dict), n=3)
        if close:
            hint = f" (did you mean {', '.join(repr(c) for c in close)}?)"
    return HeaderKeyError(
        f"keys: {item!r} names no DICOM attribute{hint}; give a keyword from the DICOM "
        "dictionary ('RepetitionTime', 'FlipAngle') or a tag number ('0019,100C', "
        "'(0019,100C)', '0019100C', 0x0019100C) for a private attribute"
    )


def resolve_keys(keys: Iterable[Any] | str | None) -> tuple[Key, ...]:
    """Resolve requested keys into :class:`Key` objects (duplicates dropped, order kept).

    Parameters
    ----------
    keys
        Keywords or tag numbers (see the module docstring); a single string is one key.

    Returns
    -------
    tuple of Key

    Raises
    ------
    HeaderKeyError
        For a name that is no keyword of the DICOM dictionary nor a tag number, or for a
        sequence (SQ) attribute, which has no single value to carry.
    """
    from pydicom.datadict import keyword_for_tag, tag_for_keyword

    if keys is None:
        return ()
    if isinstance(keys, (str, int)) or (isinstance(keys, tuple) and _tag_of(keys) is not None):
        keys = [keys]
    out: dict[int, Key] = {}
    for item in keys:
        tag = tag_for_keyword(item) if isinstance(item, str) else None
        if tag is None:
            tag = _tag_of(item)
        if tag is None or not 0 <= tag <= 0xFFFFFFFF:
            raise _unknown(item)
        if tag >> 16 in (0x0002, 0x7FE0) or tag >> 16 == 0xFFFE:
            raise HeaderKeyError(
                f"keys: {item!r} is a file meta, pixel data or item element, not a header field"
            )
        private = bool((tag >> 16) & 1)
        vr = None if private else _dictionary_vr(tag)
        if vr == "SQ":
            raise HeaderKeyError(
                f"keys: {item!r} is a sequence (SQ), which has no single value; ask for an "
                "attribute it holds by keyword instead"
            )
        name = (keyword_for_tag(tag) or "") if not private else ""
        out.setdefault(tag, Key(name=name or _tag_name(tag), tag=tag, vr=vr))
    return tuple(out.values())


# --------------------------------------------------------------------------------------
# decoding


def _number(text: str) -> int | float | None:
    text = text.strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return None


def _one_or_many(values: list[Any]) -> Any:
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def decode_text(raw: bytes, vr: str, charset: list[str] | None) -> str:
    """Decode a text value's bytes: ASCII, the dataset's character sets, or latin-1."""
    if raw.isascii():
        text = raw.decode("ascii")
    elif vr in _CHARSET_VRS and charset:
        from pydicom.charset import decode_bytes

        text = decode_bytes(raw, charset, {0x5C, 0x3D, 0x5E} if vr == "PN" else {0x5C})
    else:
        text = raw.decode("latin-1")
    return text


def _hex(raw: bytes) -> str | None:
    if not raw:
        return None
    return raw[:_HEX_LIMIT].hex() + ("..." if len(raw) > _HEX_LIMIT else "")


def _unknown_vr_value(raw: bytes) -> Any:
    text = raw.rstrip(b"\x00 ")
    if not text:
        return None
    if all(32 <= c < 127 for c in text):
        parts = [p.strip() for p in text.decode("ascii").split("\\")]
        numbers = [_number(p) for p in parts]
        if all(n is not None for n in numbers):
            return _one_or_many(numbers)
        return _one_or_many(parts)
    return _hex(raw)


def value_from_raw(
    raw: bytes, vr: str | None, charset: list[str] | None = None, little_endian: bool = True
) -> Any:
    """Decode the raw bytes of an element into the catalog's value for a requested key.

    Parameters
    ----------
    raw
        The element's value bytes.
    vr
        Its VR (from the file, or the dictionary for implicit VR files); ``None`` or
        ``"UN"`` when unknown.
    charset
        The data set's character set (pydicom encoding names), for text values.
    little_endian
        Byte order of binary values.

    Returns
    -------
    str, int, float, tuple or None
    """
    if vr is None or vr == "UN":
        return _unknown_vr_value(raw)
    fmt = _BINARY.get(vr)
    if fmt is not None:
        size = struct.calcsize(fmt)
        n = len(raw) // size
        if n == 0:
            return None
        values = struct.unpack_from(f"{'<' if little_endian else '>'}{n}{fmt}", raw)
        if fmt in "fd":
            return _one_or_many([float(v) for v in values])
        return _one_or_many([int(v) for v in values])
    if vr in _BYTES_VRS or vr == "SQ":
        return _hex(raw)
    if vr == "AT":
        n = len(raw) // 4
        pairs = struct.unpack_from(f"{'<' if little_endian else '>'}{2 * n}H", raw)
        return _one_or_many(
            [_tag_name((pairs[i] << 16) | pairs[i + 1]) for i in range(0, len(pairs), 2)]
        )
    text = decode_text(raw, vr, charset)
    parts = [text] if vr in _SINGLE_TEXT else text.split("\\")
    parts = [p.strip("\x00 ") if vr != "PN" else p.rstrip("\x00 ") for p in parts]
    if vr in ("IS", "DS"):
        numbers = [_number(p) for p in parts]
        if vr == "DS":
            numbers = [None if n is None else float(n) for n in numbers]
        if any(n is None for n in numbers):
            return None if all(not p for p in parts) else _one_or_many(parts)
        return _one_or_many(numbers)
    if all(not p for p in parts):
        return None
    return _one_or_many(parts)


def value_from_pydicom(ds: Any, key: Key) -> Any:
    """Return the value of ``key`` in a pydicom data set, decoded as :func:`value_from_raw` does."""
    try:
        elem = ds.get_item(key.tag)
    except Exception:
        return None
    if elem is None:
        return None
    value = elem.value
    vr = getattr(elem, "VR", None)
    if isinstance(value, (bytes, bytearray)):
        implicit, little = getattr(ds, "original_encoding", (None, True))
        if (elem.__class__.__name__ == "RawDataElement" and implicit) or vr in (None, "UN"):
            creator = None
            if key.creator_tag is not None:
                item = ds.get_item(key.creator_tag)
                creator = None if item is None else item.value
            vr = key.implicit_vr(creator)
        charset = None
        if vr in _CHARSET_VRS and not bytes(value).isascii():
            from pydicom.charset import convert_encodings

            names = ds.get("SpecificCharacterSet")
            charset = convert_encodings(list(names) if isinstance(names, list) else [names])
        return value_from_raw(bytes(value), vr, charset, little_endian=little is not False)
    # already converted by pydicom (read elsewhere): normalise to the same kinds
    return normalise_value(value)


def normalise_value(value: Any) -> Any:
    """Return a value pydicom converted already as :func:`value_from_raw` would give it."""
    from pydicom.multival import MultiValue

    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple, MultiValue)):
        return _one_or_many([normalise_value(v) for v in value])
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float) or type(value).__name__ in ("DSfloat", "DSdecimal"):
        return float(value)
    if isinstance(value, int):
        return int(value)
    return str(value).strip("\x00 ") or None


# --------------------------------------------------------------------------------------
# xarray side


def key_values(
    plan: Any, name: str
) -> tuple[str, Any] | tuple[str, tuple[tuple[str, ...], np.ndarray]] | None:
    """Sort a plan's values of one key into an attribute or a coordinate.

    Parameters
    ----------
    plan
        A :class:`~dicomxr.SeriesPlan` whose frames carry the key's column.
    name
        The column name.

    Returns
    -------
    ``("attr", value)`` when every frame has the same value, ``("coord", (dims, values))``
    when it varies along some frame dims (values reduced to those dims; a cell without a
    frame or a value is ``NaN`` for numbers, ``""`` for text), or ``None`` when no frame has
    a value.
    """
    column = plan.frame_table[name].to_numpy(dtype=object)
    grid = np.asarray(plan.grid)
    cells = np.empty(grid.shape, dtype=object)
    flat_grid, flat_cells = grid.ravel(), cells.ravel()
    for i, row in enumerate(flat_grid):
        value = column[row] if row >= 0 else None
        flat_cells[i] = None if _absent(value) else value
    present = [v for v in flat_cells if v is not None]
    if not present:
        return None
    first = present[0]
    if all(v == first for v in present) and len(present) == len(flat_cells):
        return "attr", first
    axes = [
        a
        for a in range(cells.ndim)
        if not all(
            _same_along(np.take(cells, 0, axis=a), np.take(cells, k, axis=a))
            for k in range(1, cells.shape[a])
        )
    ]
    if not axes:  # constant where present, some frames without a value
        return "attr", first
    index = tuple(slice(None) if a in axes else 0 for a in range(cells.ndim))
    reduced = cells[index]
    return "coord", (tuple(plan.dims[a] for a in axes), _coord_array(reduced))


def _absent(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and value != value:
        return True
    try:
        import pandas as pd

        return value is pd.NA
    except ImportError:  # pragma: no cover
        return False


def _same_along(a: np.ndarray, b: np.ndarray) -> bool:
    return all(x == y for x, y in zip(a.ravel(), b.ravel(), strict=True))


def _coord_array(values: np.ndarray) -> np.ndarray:
    flat = values.ravel().tolist()
    present = [v for v in flat if v is not None]
    if present and all(
        isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in present
    ):
        if all(isinstance(v, (int, np.integer)) for v in present) and len(present) == len(flat):
            return np.array(flat, dtype=np.int64).reshape(values.shape)
        return np.array(
            [np.nan if v is None else float(v) for v in flat], dtype=np.float64
        ).reshape(values.shape)
    text = [
        "" if v is None else ("\\".join(str(x) for x in v) if isinstance(v, tuple) else str(v))
        for v in flat
    ]
    return np.array(text, dtype=str).reshape(values.shape)
