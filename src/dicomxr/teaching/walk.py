"""The walk of a DICOM file's bytes: what :func:`dicomxr.anatomy` lays open.

:func:`walk_file` walks a DICOM file **from its bytes**, with a small parser of its own
(pydicom is used only for its data dictionary, to name tags and to imply VRs), and returns a
:class:`FileWalk`: the preamble, the ``DICM`` prefix, the file meta group and every data
element with its byte offset, tag, VR, the size of its length field, its value length and its
value. Sequences and items are nested, undefined lengths end in the delimitation items that
are shown, encapsulated pixel data are listed fragment by fragment (their bytes are never
read), deflated datasets are inflated and walked with offsets *within the inflated stream*,
and a broken file is walked as far as it is sound, with the point and nature of the break
shown.

The walk tiles the file: every byte belongs to exactly one part (preamble, prefix, an
element's header, a leaf element's value, a delimiter, a fragment, trailing padding, or the
unparsed rest after a break). :meth:`FileWalk.spans` lists those parts.

The views (terminal dump, hex view, widget) are in :mod:`dicomxr.teaching.render` and
:mod:`dicomxr.teaching.widget`; :class:`dicomxr.teaching.anatomy.Anatomy` is a walk with them.
"""

from __future__ import annotations

import functools
import logging
import mmap
import os
import stat
import struct
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

from dicomxr.errors import InputFileError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = ["DECODE_LIMIT", "Break", "FileWalk", "Node", "walk_file"]

logger = logging.getLogger(__name__)

W = TypeVar("W", bound="FileWalk")

UNDEFINED = 0xFFFFFFFF
ITEM = 0xFFFEE000
ITEM_DELIM = 0xFFFEE00D
SEQ_DELIM = 0xFFFEE0DD
PIXEL_TAGS = {0x7FE00010, 0x7FE00009, 0x7FE00008}

#: VRs whose explicit-VR header is tag(4) + VR(2) + reserved(2) + 4-byte length (PS3.5 7.1.2)
LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
KNOWN_VRS = frozenset(
    {
        "AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "OB", "OD",
        "OF", "OL", "OV", "OW", "PN", "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC", "UI",
        "UL", "UN", "UR", "US", "UT", "UV",
    }
)  # fmt: skip
_KNOWN_VR_BYTES = frozenset(v.encode() for v in KNOWN_VRS)
TEXT_VRS = frozenset({"LT", "ST", "UT", "UR"})  # one value, backslash is not a delimiter
STRING_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "PN", "SH", "TM", "UC", "UI"}
)
NUMBER_FORMATS = {
    "US": "H", "SS": "h", "UL": "L", "SL": "l", "FL": "f", "FD": "d", "UV": "Q", "SV": "q",
    "AT": "H",
}  # fmt: skip

TRANSFER_SYNTAXES = {
    "1.2.840.10008.1.2": ("Implicit VR Little Endian", True, True, False),
    "1.2.840.10008.1.2.1": ("Explicit VR Little Endian", False, True, False),
    "1.2.840.10008.1.2.1.99": ("Deflated Explicit VR Little Endian", False, True, True),
    "1.2.840.10008.1.2.2": ("Explicit VR Big Endian", False, False, False),
}

#: how much of a value is read to decode and show it (longer values are shown by length)
DECODE_LIMIT = 1024
# sequences nested deeper than this are shown as a break (the walk recurses per level)
MAX_DEPTH = 64
# a deflated data set is inflated up to this many bytes (a small file can inflate to gigabytes)
INFLATE_LIMIT = 256 << 20
# a run of zero bytes longer than this where an element should start is a break, not padding
ZERO_RUN_LIMIT = 16 << 20


@dataclass(eq=False)
class Node:
    """One part of the file: the preamble, the prefix, an element, an item, a fragment, ...

    Attributes
    ----------
    kind
        ``"preamble"``, ``"prefix"``, ``"element"``, ``"item"``, ``"item_delimiter"``,
        ``"sequence_delimiter"``, ``"offset_table"`` (basic offset table item),
        ``"fragment"``, ``"deflated"`` (the compressed dataset; its children live in the
        inflated stream), ``"padding"`` (trailing zero bytes), ``"trailing"`` (bytes after
        the end of a deflate stream) or ``"break"`` (the unparsed rest after a break).
    offset
        Byte offset of the first byte, in :attr:`stream`.
    stream
        ``"file"`` or ``"inflated"`` (offsets within the inflated deflate stream).
    header_length
        Bytes of the header: tag (4) + VR (2, explicit only) + reserved (2, explicit long
        VRs only) + length field (2 or 4); 8 for items, delimiters and fragments.
    length
        Total bytes covered, header and value (children included).
    tag, keyword, name
        The tag as an int and its dictionary keyword and name (private dictionary too).
    vr, vr_source
        The VR and where it came from: ``"explicit"`` (written in the file),
        ``"implicit"`` (implied from the data dictionary), ``"implicit, private dictionary"``,
        ``"implicit, unknown: UN"``, ``"implicit, ambiguous ... resolved"`` and so on.
    length_size, reserved_size
        Size of the length field (2 or 4) and of the reserved bytes (0 or 2).
    value_length
        The value of the length field; ``0xFFFFFFFF`` means undefined length.
    value, value_repr
        The decoded value (for values up to ``DECODE_LIMIT`` bytes) and a short text for it.
    children
        Items of a sequence, elements of an item, fragments of encapsulated pixel data,
        the delimitation item that ends an undefined length.
    note, error
        What is worth knowing about this part, and what is wrong with it.
    """

    kind: str
    offset: int
    header_length: int
    length: int
    stream: str = "file"
    tag: int | None = None
    vr: str | None = None
    vr_source: str = ""
    length_size: int = 0
    reserved_size: int = 0
    value_length: int | None = None
    value: Any = None
    value_repr: str = ""
    keyword: str = ""
    name: str = ""
    depth: int = 0
    path: str = ""
    children: list[Node] = field(default_factory=list, repr=False)
    note: str = ""
    error: str = ""
    index: int = -1

    @property
    def value_offset(self) -> int:
        """Offset of the first value byte."""
        return self.offset + self.header_length

    @property
    def end(self) -> int:
        """Offset just past the last byte."""
        return self.offset + self.length

    @property
    def undefined_length(self) -> bool:
        """True when the length field holds 0xFFFFFFFF (undefined length)."""
        return self.value_length == UNDEFINED

    @property
    def tag_str(self) -> str:
        """The tag as ``(gggg,eeee)``, or an empty string."""
        return "" if self.tag is None else f"({self.tag >> 16:04X},{self.tag & 0xFFFF:04X})"

    @property
    def vr_size(self) -> int:
        """Bytes of the explicit VR field (0 or 2)."""
        return self.header_length - 4 - self.reserved_size - self.length_size

    def header_parts(self) -> list[tuple[str, int, int]]:
        """Return ``(part, start, stop)`` for the header: tag, vr, reserved, length."""
        if self.header_length == 0:
            return []
        start = self.offset
        parts = [("tag", start, start + 4)]
        pos = start + 4
        for name, size in (
            ("vr", self.vr_size),
            ("reserved", self.reserved_size),
            ("length", self.length_size),
        ):
            if size:
                parts.append((name, pos, pos + size))
                pos += size
        return parts

    def walk(self) -> Iterator[Node]:
        """Yield this node and every descendant, depth first, in file order."""
        yield self
        for child in self.children:
            yield from child.walk()

    def describe(self) -> str:
        """One line of text: what this part is."""
        if self.kind == "element":
            vl = "undefined" if self.undefined_length else str(self.value_length)
            label = self.keyword or self.name or "unknown"
            text = f"{self.tag_str} {self.vr or '??'} {label} len={vl}"
            if self.value_repr:
                text += f"  = {self.value_repr}"
            return text
        if self.kind in ("item", "offset_table", "fragment"):
            vl = "undefined" if self.undefined_length else str(self.value_length)
            extra = f"  {self.value_repr}" if self.value_repr else ""
            return f"{self.tag_str} {self.kind.replace('_', ' ')} len={vl}{extra}"
        if self.kind in ("item_delimiter", "sequence_delimiter"):
            return f"{self.tag_str} {self.kind.replace('_', ' ')}"
        return f"{self.kind}: {self.value_repr or self.note}"


@dataclass(frozen=True)
class Break:
    """Where and why the walk stopped before the end of its stream."""

    offset: int
    stream: str
    reason: str


class _Broken(Exception):
    def __init__(self, offset: int, reason: str):
        super().__init__(reason)
        self.offset = offset
        self.reason = reason


def _preamble_kind(pre: bytes) -> tuple[str, str]:
    if not pre.strip(b"\x00"):
        return "empty", "128 zero bytes (the usual, empty preamble)"
    if pre[:4] == b"II*\x00":
        return "tiff", "a TIFF header (little endian 'II*\\0'): a dual-personality DICOM/TIFF file"
    if pre[:4] == b"MM\x00*":
        return "tiff", "a TIFF header (big endian 'MM\\0*'): a dual-personality DICOM/TIFF file"
    printable = sum(32 <= b < 127 for b in pre)
    if printable > 96:
        text = pre.decode("ascii", "replace").strip("\x00 ")
        return "other", f"non-zero, mostly text: {text[:40]!r}"
    return "other", f"non-zero content ({128 - pre.count(0)} non-zero bytes), not a TIFF header"


def _short(text: str, width: int = 64) -> str:
    text = text.replace("\n", "\\n").replace("\r", "\\r")
    return text if len(text) <= width else text[: width - 1] + "…"


def _dict_entry(tag: int) -> tuple[str | None, str, str]:
    """Return (VR or None, keyword, name) from pydicom's public dictionary."""
    from pydicom.datadict import DicomDictionary

    entry = DicomDictionary.get(tag)
    if entry is None:
        if tag >> 16 & 1:  # private groups are never in the public dictionary
            return None, "", ""
        return _repeater_entry(tag)
    return entry[0], entry[4], entry[2]


@functools.lru_cache(maxsize=1024)
def _repeater_entry(tag: int) -> tuple[str | None, str, str]:
    from pydicom.datadict import get_entry

    try:
        entry = get_entry(tag)
    except KeyError:
        return None, "", ""
    return entry[0], entry[4], entry[2]


@functools.lru_cache(maxsize=4096)
def _private_entry(tag: int, creator: str | None) -> tuple[str | None, str]:
    if not creator:
        return None, ""
    from pydicom.datadict import get_private_entry

    try:
        entry = get_private_entry(tag, creator)
    except KeyError:
        return None, ""
    return entry[0], entry[2]


class _Ctx:
    """Per-dataset state: private creators, PixelRepresentation, LUTDescriptor."""

    def __init__(self, parent: _Ctx | None = None):
        self.parent = parent
        self.creators: dict[int, str] = {}
        self.values: dict[int, Any] = {}

    def lookup(self, tag: int) -> Any:
        ctx: _Ctx | None = self
        while ctx is not None:
            if tag in ctx.values:
                return ctx.values[tag]
            ctx = ctx.parent
        return None


class _Walker:
    """Walk one stream (the file, or the inflated dataset) into nodes."""

    def __init__(self, buf: Any, stream: str, decode_limit: int, encodings: list[str]):
        self.buf = buf
        self.n = len(buf)
        self.stream = stream
        self.decode_limit = decode_limit
        self.encodings = encodings

    # -- low level -------------------------------------------------------------------
    def need(self, pos: int, size: int, limit: int, what: str) -> None:
        if pos + size > limit:
            where = "end of file" if limit == self.n else "end of the enclosing item"
            left = max(limit - pos, 0)
            raise _Broken(
                pos, f"truncated: {what} needs {size} bytes, only {left} left before the {where}"
            )

    def u16(self, pos: int, little: bool) -> int:
        return struct.unpack_from("<H" if little else ">H", self.buf, pos)[0]

    def u32(self, pos: int, little: bool) -> int:
        return struct.unpack_from("<L" if little else ">L", self.buf, pos)[0]

    def tag_at(self, pos: int, little: bool) -> int:
        g, e = struct.unpack_from("<HH" if little else ">HH", self.buf, pos)
        return g << 16 | e

    # -- datasets --------------------------------------------------------------------
    def dataset(
        self,
        pos: int,
        end: int | None,
        implicit: bool,
        little: bool,
        depth: int,
        ctx: _Ctx,
        out: list[Node],
        *,
        delimited: bool = False,
        stop_group: int | None = None,
        path: str = "",
    ) -> int:
        """Walk elements from ``pos`` into ``out``; return the position after them."""
        limit = self.n if end is None else end
        while True:
            if pos == limit:
                if delimited:
                    raise _Broken(pos, "undefined-length item ends without an item delimiter")
                return pos
            if pos > limit:  # pragma: no cover - guarded by the length checks
                raise _Broken(pos, "element overruns the enclosing item")
            if end is None and depth == 0 and stop_group is None and self.n - pos < 8:
                if _all_zero(self.buf, pos, self.n):
                    out.append(self._padding(pos, depth))
                    return self.n
            self.need(pos, 8, limit, "an element header")
            tag = self.tag_at(pos, little)
            if stop_group is not None and tag >> 16 != stop_group:
                return pos
            if tag == ITEM_DELIM:
                if delimited:
                    node = Node(
                        "item_delimiter", pos, 8, 8, self.stream, tag=tag, depth=depth,
                        length_size=4, value_length=self.u32(pos + 4, little),
                        name="Item Delimitation Item", path=path,
                    )  # fmt: skip
                    out.append(node)
                    return pos + 8
                raise _Broken(pos, "item delimiter (FFFE,E00D) outside an undefined-length item")
            if tag in (ITEM, SEQ_DELIM):
                raise _Broken(pos, f"{_tagstr(tag)} found where a data element was expected")
            if (
                end is None
                and depth == 0
                and stop_group is None
                and tag == 0
                and not bytes(self.buf[pos : min(self.n, pos + 4096)]).strip(b"\x00")
            ):
                if self.n - pos > ZERO_RUN_LIMIT and _all_zero(self.buf, pos, pos + ZERO_RUN_LIMIT):
                    # gigabytes of zeros are not padding anyone writes: say so, read no further
                    raise _Broken(
                        pos,
                        f"{self.n - pos} bytes from here where data elements should be; the "
                        f"first {ZERO_RUN_LIMIT >> 20} MiB are only zero bytes and the rest is "
                        "not read",
                    )
                if _all_zero(self.buf, pos, self.n):
                    out.append(self._padding(pos, depth))
                    return self.n
            try:
                node = self.element(pos, limit, implicit, little, depth, ctx, path, out)
            except (struct.error, ValueError, IndexError, RecursionError) as exc:
                # malformed bytes the checks above did not foresee: a break, never a crash
                if out and out[-1].offset == pos and out[-1].stream == self.stream:
                    out.pop()
                raise _Broken(pos, f"cannot parse an element here ({exc})") from exc
            pos = node.end

    def _padding(self, pos: int, depth: int) -> Node:
        return Node(
            "padding", pos, 0, self.n - pos, self.stream, depth=depth,
            value_repr=f"{self.n - pos} trailing zero bytes after the last element",
            note="trailing zero padding; no element lives here",
        )  # fmt: skip

    def element(
        self,
        pos: int,
        limit: int,
        implicit: bool,
        little: bool,
        depth: int,
        ctx: _Ctx,
        path: str,
        out: list[Node],
    ) -> Node:
        tag = self.tag_at(pos, little)
        group, elem = tag >> 16, tag & 0xFFFF
        notes: list[str] = []
        dict_vr, keyword, name = _dict_entry(tag)
        is_private = bool(group & 1)
        if is_private and not keyword:
            creator = ctx.creators.get(tag >> 8 & 0xFF) if elem & 0xFF00 else None
            if 0x10 <= elem < 0x100:
                keyword, name = "", "Private Creator"
                dict_vr = "LO"
            else:
                pvr, pname = _private_entry(tag, creator)
                name = pname or (f"private tag of {creator!r}" if creator else "private tag")
                if dict_vr is None and pvr is not None:
                    dict_vr = pvr if pvr in KNOWN_VRS else pvr.split(" or ")[0]
        elem_implicit = implicit
        vrb = b""
        if not implicit:
            vrb = bytes(self.buf[pos + 4 : pos + 6])
            if vrb not in _KNOWN_VR_BYTES and not (b"AA" <= vrb <= b"ZZ"):
                elem_implicit = True
                notes.append(
                    f"bytes {vrb.hex(' ')} where the VR should be are not a VR: read as "
                    "implicit VR (as pydicom does)"
                )
        if elem_implicit:
            length = self.u32(pos + 4, little)
            header, length_size, reserved = 8, 4, 0
            vr, source = self.implied_vr(tag, dict_vr, is_private, ctx, length, pos, little)
        else:
            vr = vrb.decode("latin-1")
            source = "explicit"
            if vr in LONG_VRS:
                self.need(pos, 12, limit, f"the {vr} element header")
                length = self.u32(pos + 8, little)
                header, length_size, reserved = 12, 4, 2
                if bytes(self.buf[pos + 6 : pos + 8]) != b"\x00\x00":
                    notes.append("reserved bytes are not zero")
            else:
                length = self.u16(pos + 6, little)
                header, length_size, reserved = 8, 2, 0
                if vr not in KNOWN_VRS:
                    notes.append(f"unknown VR {vr!r}: read with a 2-byte length")
        node = Node(
            "element", pos, header, header, self.stream, tag=tag, vr=vr, vr_source=source,
            length_size=length_size, reserved_size=reserved, value_length=length,
            keyword=keyword, name=name, depth=depth,
        )  # fmt: skip
        node.path = f"{path}.{keyword or node.tag_str}" if path else (keyword or node.tag_str)
        vpos = pos + header
        if length != UNDEFINED and vpos + length > limit:
            where = "file" if limit == self.n else "enclosing item"
            raise _Broken(
                pos,
                f"{node.tag_str} {keyword or name}: value length {length} runs past the "
                f"end of the {where} (only {max(limit - vpos, 0)} bytes left)",
            )
        out.append(node)
        try:
            if length == UNDEFINED:
                self.undefined_value(node, vpos, limit, elem_implicit, little, depth, ctx, dict_vr)
            elif node.vr == "SQ":
                node.length = header + length
                self.sequence(node, vpos, vpos + length, elem_implicit, little, depth, ctx)
            elif node.vr == "UN" and dict_vr == "SQ" and not elem_implicit and length:
                # a sequence written as UN: its value is implicit VR little endian (PS3.5 6.2.2)
                node.length = header + length
                try:
                    self.sequence(node, vpos, vpos + length, True, True, depth, ctx)
                    notes.append(
                        "written as UN; the dictionary says SQ: walked as a sequence in "
                        "implicit VR little endian"
                    )
                except _Broken as exc:
                    node.children.clear()
                    node.length = header + length
                    self.leaf_value(node, vpos, length, little, ctx)
                    notes.append(
                        f"written as UN; the dictionary says SQ, but its value is not a "
                        f"sequence ({exc.reason})"
                    )
            else:
                node.length = header + length
                self.leaf_value(node, vpos, length, little, ctx)
                if vr == "UN" and dict_vr and not elem_implicit:
                    notes.append(
                        f"written as UN; the dictionary says {dict_vr} (pydicom reads it as such)"
                    )
        except _Broken as exc:
            _cut(node, exc)
            raise
        if notes:
            node.note = "; ".join(filter(None, [node.note, *notes]))
        self.remember(node, ctx)
        return node

    def implied_vr(
        self,
        tag: int,
        dict_vr: str | None,
        is_private: bool,
        ctx: _Ctx,
        length: int,
        pos: int,
        little: bool,
    ) -> tuple[str, str]:
        elem = tag & 0xFFFF
        if is_private and 0x10 <= elem < 0x100:
            return "LO", "implicit, private creator"
        if dict_vr is None:
            if not is_private and elem == 0:
                return "UL", "implicit, group length"
            if length == UNDEFINED and pos + 12 <= self.n and self.tag_at(pos + 8, little) == ITEM:
                return "SQ", "implicit, unknown tag holding items: SQ"
            return "UN", "implicit, not in the dictionary: UN"
        if dict_vr in KNOWN_VRS:
            return dict_vr, "implicit, private dictionary" if is_private else "implicit"
        # ambiguous VRs, resolved as the standard (and pydicom) does
        if tag == 0x7FE00010:
            vr = "OB" if length == UNDEFINED else "OW"
        elif dict_vr == "US or SS" or dict_vr == "US or SS or OW":
            rep = ctx.lookup(0x00280103)
            vr = "SS" if rep == 1 else "US"
        elif dict_vr == "US or OW":
            desc = ctx.lookup(0x00283002)
            vr = "US" if isinstance(desc, list) and desc and desc[0] == 1 else "OW"
        else:  # "OB or OW": waveform, overlay, channel values... implicit VR is always OW
            vr = "OW"
        return vr, f"implicit, ambiguous {dict_vr!r} resolved to {vr}"

    def remember(self, node: Node, ctx: _Ctx) -> None:
        tag = node.tag or 0
        if tag >> 16 & 1 and 0x10 <= tag & 0xFFFF < 0x100 and isinstance(node.value, str):
            ctx.creators[tag & 0xFF] = node.value
        if tag in (0x00280103, 0x00283002, 0x00080005):
            ctx.values[tag] = node.value
        if tag == 0x00080005 and node.value:
            from pydicom.charset import convert_encodings

            vals = node.value if isinstance(node.value, list) else [node.value]
            with warnings.catch_warnings():
                # pydicom warns about misspelt charsets; the walk notes it instead
                warnings.simplefilter("ignore")
                try:
                    self.encodings = convert_encodings([str(v) for v in vals])
                except Exception:  # pragma: no cover - pydicom only warns for bad charsets
                    pass

    def leaf_value(self, node: Node, vpos: int, length: int, little: bool, ctx: _Ctx) -> None:
        if length == 0:
            node.value = None if node.vr not in STRING_VRS | TEXT_VRS else ""
            node.value_repr = "(empty)"
            return
        if length > self.decode_limit:
            head = bytes(self.buf[vpos : vpos + 16])
            node.value_repr = f"<{length} bytes: {head.hex(' ')} …>"
            return
        raw = bytes(self.buf[vpos : vpos + length])
        node.value, node.value_repr = _decode(node.vr or "UN", raw, little, self.encodings)

    def undefined_value(
        self,
        node: Node,
        vpos: int,
        limit: int,
        implicit: bool,
        little: bool,
        depth: int,
        ctx: _Ctx,
        dict_vr: str | None,
    ) -> None:
        vr = node.vr
        if vr == "UN":
            if dict_vr == "SQ" or (
                vpos + 4 <= limit and self.tag_at(vpos, True) in (ITEM, SEQ_DELIM)
            ):
                node.note = (
                    "UN with undefined length: a sequence encoded in implicit VR little "
                    "endian (PS3.5 6.2.2)"
                )
                node.vr = "SQ" if node.vr_source == "explicit" else node.vr
                if node.vr_source == "explicit":
                    node.vr_source = "explicit UN, read as SQ"
                self.sequence(node, vpos, None, True, True, depth, ctx)
                return
        if vr == "SQ":
            self.sequence(node, vpos, None, implicit, little, depth, ctx)
            return
        self.need(vpos, 4, limit, "the first item of an undefined-length value")
        if self.tag_at(vpos, little) in (ITEM, SEQ_DELIM):
            self.encapsulated(node, vpos, limit, little, depth)
            return
        # an undefined-length value that is neither a sequence nor encapsulated: scan for
        # the sequence delimiter, as pydicom's read_undefined_length_value does
        marker = struct.pack("<HH" if little else ">HH", 0xFFFE, 0xE0DD)
        found = self.find(marker, vpos, limit)
        if found < 0:
            raise _Broken(
                node.offset, f"{node.tag_str}: undefined length without a sequence delimiter"
            )
        self.need(found, 8, limit, "the sequence delimiter")
        node.children.append(self.delimiter(found, little, depth + 1, node.path))
        node.length = found + 8 - node.offset
        node.value_repr = f"<{found - vpos} bytes, undefined length>"
        node.note = "undefined-length value ended by a sequence delimiter"
        # the value bytes before the delimiter are a leaf: add them as a fragment-like part
        node.children.insert(
            0,
            Node(
                "fragment", vpos, 0, found - vpos, self.stream, depth=depth + 1,
                value_length=found - vpos, note="value bytes of an undefined-length element",
                path=node.path,
            ),
        )  # fmt: skip

    def find(self, marker: bytes, start: int, stop: int) -> int:
        return self.buf.find(marker, start, stop)

    def delimiter(self, pos: int, little: bool, depth: int, path: str) -> Node:
        return Node(
            "sequence_delimiter", pos, 8, 8, self.stream, tag=SEQ_DELIM, depth=depth,
            length_size=4, value_length=self.u32(pos + 4, little),
            name="Sequence Delimitation Item", path=path,
        )  # fmt: skip

    def sequence(
        self,
        node: Node,
        vpos: int,
        end: int | None,
        implicit: bool,
        little: bool,
        depth: int,
        ctx: _Ctx,
    ) -> None:
        pos = vpos
        limit = self.n if end is None else end
        if depth >= MAX_DEPTH:
            # the walk recurses per level: stop well before Python's stack does
            raise _Broken(vpos, f"sequences nested deeper than {MAX_DEPTH} levels: not walked")
        count = 0
        while True:
            if end is not None and pos == end:
                break
            self.need(pos, 8, limit, "an item header")
            tag = self.tag_at(pos, little)
            if tag == SEQ_DELIM:
                if end is not None:
                    raise _Broken(pos, "sequence delimiter inside a defined-length sequence")
                node.children.append(self.delimiter(pos, little, depth + 1, node.path))
                pos += 8
                break
            if tag != ITEM:
                raise _Broken(
                    pos,
                    f"expected an item (FFFE,E000) in sequence {node.tag_str}, "
                    f"found {_tagstr(tag)}",
                )
            ilen = self.u32(pos + 4, little)
            ipos = pos + 8
            if ilen != UNDEFINED and ipos + ilen > limit:
                raise _Broken(
                    pos,
                    f"item length {ilen} runs past the end of its sequence or the file "
                    f"({max(limit - ipos, 0)} bytes left)",
                )
            ipath = f"{node.path}[{count}]"
            item = Node(
                "item", pos, 8, 8, self.stream, tag=ITEM, depth=depth + 1, length_size=4,
                value_length=ilen, name=f"Item {count}", path=ipath,
            )  # fmt: skip
            node.children.append(item)
            item_implicit = implicit
            if not implicit and ipos + 6 <= limit:
                vrb = bytes(self.buf[ipos + 4 : ipos + 6])
                first = self.tag_at(ipos, little)
                if first != ITEM_DELIM and not (0x40 < vrb[0] < 0x5B and 0x40 < vrb[1] < 0x5B):
                    item_implicit = True
                    item.note = "item encoded in implicit VR inside an explicit VR dataset"
            sub = _Ctx(ctx)
            try:
                stop = self.dataset(
                    ipos, None if ilen == UNDEFINED else ipos + ilen, item_implicit, little,
                    depth + 2, sub, item.children, delimited=ilen == UNDEFINED, path=ipath,
                )  # fmt: skip
            except _Broken as exc:
                _cut(item, exc)
                raise
            item.length = stop - pos
            pos = stop
            count += 1
        node.value_repr = f"{count} item{'s' if count != 1 else ''}"
        node.length = pos - node.offset

    def encapsulated(self, node: Node, vpos: int, limit: int, little: bool, depth: int) -> None:
        pos = vpos
        count = 0
        while True:
            self.need(pos, 8, limit, "an encapsulated item header")
            tag = self.tag_at(pos, little)
            if tag == SEQ_DELIM:
                node.children.append(self.delimiter(pos, little, depth + 1, node.path))
                pos += 8
                break
            if tag != ITEM:
                raise _Broken(pos, f"expected a fragment item (FFFE,E000), found {_tagstr(tag)}")
            flen = self.u32(pos + 4, little)
            if flen == UNDEFINED or pos + 8 + flen > limit:
                raise _Broken(
                    pos,
                    f"fragment length {flen:#x} runs past the end of the file "
                    f"({max(limit - pos - 8, 0)} bytes left)",
                )
            if count == 0:
                frag = Node(
                    "offset_table", pos, 8, 8 + flen, self.stream, tag=ITEM,
                    depth=depth + 1, length_size=4, value_length=flen,
                    name="Basic Offset Table", path=f"{node.path}.offset_table",
                )  # fmt: skip
                if flen == 0:
                    frag.value_repr = "empty (no offsets)"
                elif flen % 4:
                    frag.error = "length is not a multiple of 4"
                elif flen <= 4 * 4096:
                    fmt = ("<" if little else ">") + f"{flen // 4}L"
                    offs = list(struct.unpack_from(fmt, self.buf, pos + 8))
                    frag.value = offs
                    frag.value_repr = _short(
                        f"{len(offs)} frame offsets: " + ", ".join(map(str, offs))
                    )
                else:
                    frag.value_repr = f"{flen // 4} frame offsets"
            else:
                frag = Node(
                    "fragment", pos, 8, 8 + flen, self.stream, tag=ITEM, depth=depth + 1,
                    length_size=4, value_length=flen, name=f"Fragment {count}",
                    path=f"{node.path}.fragment[{count}]",
                )  # fmt: skip
            node.children.append(frag)
            pos += 8 + flen
            count += 1
        node.length = pos - node.offset
        nfrag = max(count - 1, 0)
        node.value_repr = f"encapsulated: offset table + {nfrag} fragment{'s' * (nfrag != 1)}"
        node.note = node.note or "encapsulated pixel data (fragments listed, not read)"


def _cut(node: Node, exc: _Broken) -> None:
    """End a container cut short by a break where the break is."""
    node.length = max(exc.offset - node.offset, node.header_length)
    node.error = node.error or f"cut short by the break at offset {exc.offset}"


def _tagstr(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _decode(vr: str, raw: bytes, little: bool, encodings: list[str]) -> tuple[Any, str]:
    """Decode a value of at most ``DECODE_LIMIT`` bytes; return (value, short text)."""
    if vr in NUMBER_FORMATS:
        fmt = NUMBER_FORMATS[vr]
        size = struct.calcsize("<" + fmt)
        count = len(raw) // size
        if count * size != len(raw):
            return raw, f"<{len(raw)} bytes, not a multiple of {size}: {raw[:16].hex(' ')}>"
        values = list(struct.unpack(("<" if little else ">") + fmt * count, raw))
        if vr == "AT":
            values = [f"({values[i]:04X},{values[i + 1]:04X})" for i in range(0, count, 2)]
        text = "\\".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)
        return (values[0] if len(values) == 1 else values), _short(text)
    if vr in STRING_VRS or vr in TEXT_VRS:
        if vr in ("PN", "LO", "SH", "LT", "ST", "UT", "UC") and encodings != ["iso8859"]:
            from pydicom.charset import decode_bytes

            try:
                text = decode_bytes(raw, encodings, {"\\", "^", "="} if vr == "PN" else set())
            except Exception:
                text = raw.decode("latin-1")
        else:
            text = raw.decode("latin-1")
        if vr in TEXT_VRS:
            text = text.rstrip(" \x00")
            return text, _short(text)
        text = text.rstrip(" \x00") if vr != "UI" else text.rstrip("\x00 ")
        parts = [p.strip(" \x00") for p in text.split("\\")]
        return (parts[0] if len(parts) == 1 else parts), _short(text)
    # OB, OW, OF, OD, OL, OV, UN and unknown VRs: bytes
    return raw, f"<{len(raw)} bytes: {raw[:16].hex(' ')}{' …' if len(raw) > 16 else ''}>"


class FileWalk:
    """A DICOM file walked: every byte, who it belongs to and what it means.

    Made by :func:`walk_file`; see there. The parts are in :attr:`nodes` (top level, in file
    order; sequences, items and fragments nest in ``children``).

    Attributes
    ----------
    source
        The path walked, or ``None`` for bytes.
    size
        File size in bytes.
    nodes
        Top-level parts in file order.
    preamble_kind
        ``"empty"``, ``"tiff"``, ``"other"`` or ``"missing"``.
    has_prefix, has_meta
        Whether the ``DICM`` prefix and the file meta group are there.
    transfer_syntax, transfer_syntax_name
        The UID from the meta group (or ``None``) and its name.
    implicit_vr, little_endian, deflated
        How the dataset is encoded (as read, which may be guessed: see :attr:`notes`).
    inflated_size
        Length of the inflated dataset stream for deflated files.
    meta_group_length
        The value of (0002,0000), and ``meta_length`` the bytes the meta group really has.
    breaks
        Where the walk stopped before the end and why (empty for a sound file).
    notes
        What is missing or unusual, in words (no preamble, guessed syntax, ...).
    """

    def __init__(self) -> None:
        self.source: Path | None = None
        self.size = 0
        self.nodes: list[Node] = []
        self.preamble_kind = "missing"
        self.preamble_note = ""
        self.has_prefix = False
        self.has_meta = False
        self.transfer_syntax: str | None = None
        self.transfer_syntax_name = ""
        self.implicit_vr = True
        self.little_endian = True
        self.deflated = False
        self.inflated_size: int | None = None
        self.meta_group_length: int | None = None
        self.meta_length = 0
        self.breaks: list[Break] = []
        self.notes: list[str] = []
        self.elapsed = 0.0
        self._bytes: bytes | None = None
        self._inflated: bytes | None = None
        self._numbered = False

    # -- access ------------------------------------------------------------------------
    @property
    def is_sound(self) -> bool:
        """True when the walk reached the end of every stream without a break."""
        return not self.breaks

    def walk(self) -> Iterator[Node]:
        """Yield every node, depth first, in file order."""
        for node in self.nodes:
            yield from node.walk()

    def elements(self) -> list[Node]:
        """Every data element (meta and dataset, nested ones too), in file order."""
        return [n for n in self.walk() if n.kind == "element"]

    def __len__(self) -> int:
        return sum(1 for _ in self.walk())

    def __iter__(self) -> Iterator[Node]:
        return self.walk()

    def __getitem__(self, key: int | str) -> Node:
        """Return a node by walk index, or the first element with a keyword or tag text."""
        nodes = list(self.walk())
        if isinstance(key, int):
            return nodes[key]
        for node in nodes:
            if node.kind == "element" and key in (node.keyword, node.tag_str, node.path):
                return node
        raise KeyError(key)

    def spans(self) -> list[tuple[str, int, int, Node, str]]:
        """Return ``(stream, start, stop, node, part)`` for every byte range, in order.

        ``part`` is ``"header"`` or ``"value"``; containers contribute their header and
        their children do the rest. The spans of each stream tile it exactly: no gap, no
        overlap (this is what the tests check on every file).
        """
        out: list[tuple[str, int, int, Node, str]] = []

        def visit(node: Node) -> None:
            if node.header_length:
                out.append((node.stream, node.offset, node.value_offset, node, "header"))
            if node.children:
                if node.kind == "deflated":
                    out.append((node.stream, node.value_offset, node.end, node, "value"))
                for child in node.children:
                    visit(child)
            elif node.end > node.value_offset:
                out.append((node.stream, node.value_offset, node.end, node, "value"))

        for node in self.nodes:
            visit(node)
        return out

    def node_at(self, offset: int, stream: str = "file") -> Node | None:
        """Return the innermost node covering byte ``offset`` of ``stream``."""
        found = None
        for node in self.walk():
            if node.stream == stream and node.offset <= offset < node.end:
                found = node
        return found

    def read(self, offset: int, size: int, stream: str = "file") -> bytes:
        """Read ``size`` bytes at ``offset`` of a stream (the file or the inflated dataset)."""
        if stream == "inflated":
            return (self._inflated or b"")[offset : offset + size]
        if self._bytes is not None:
            return self._bytes[offset : offset + size]
        if self.source is None:
            return b""
        with open(self.source, "rb") as fh:
            fh.seek(offset)
            return fh.read(size)

    def value_bytes(self, node: Node, max_bytes: int | None = None) -> bytes:
        """Read the value bytes of a node (at most ``max_bytes``)."""
        size = node.end - node.value_offset
        if node.children and node.kind != "deflated":
            size = node.length - node.header_length
        if max_bytes is not None:
            size = min(size, max_bytes)
        return self.read(node.value_offset, size, node.stream)

    # -- words -------------------------------------------------------------------------
    def summary(self) -> str:
        """Return a few lines: what the file is made of."""
        lines = [f"{self.source or '<bytes>'}: {self.size} bytes"]
        pre = {
            "missing": "no preamble",
            "empty": "preamble: 128 zero bytes",
        }.get(self.preamble_kind, f"preamble: {self.preamble_note}")
        lines.append(pre + ("; 'DICM' prefix" if self.has_prefix else "; no 'DICM' prefix"))
        if self.has_meta:
            lines.append(
                f"file meta group: {self.meta_length} bytes, group length says "
                f"{self.meta_group_length}; transfer syntax {self.transfer_syntax} "
                f"({self.transfer_syntax_name})"
            )
        else:
            lines.append("no file meta group")
        enc = f"{'implicit' if self.implicit_vr else 'explicit'} VR, "
        enc += f"{'little' if self.little_endian else 'big'} endian"
        if self.deflated:
            enc += f", deflated ({self.inflated_size} bytes inflated)"
        lines.append(f"dataset: {enc}; {len(self.elements())} elements")
        lines += [f"note: {n}" for n in self.notes]
        lines += [f"BREAK at {b.stream} offset {b.offset}: {b.reason}" for b in self.breaks]
        return "\n".join(lines)

    def __repr__(self) -> str:
        first = self.summary().splitlines()[0]
        return f"<{type(self).__name__} {first} ({len(self.elements())} elements)>"

    def to_dataframe(self) -> pd.DataFrame:
        """One row per part (elements, items, delimiters, fragments, preamble, ...).

        Columns: ``index`` (the index), ``kind, stream, offset, end, header_length,
        value_offset, length, depth, path, tag, keyword, name, VR, vr_source, length_size,
        reserved_size, value_length, undefined_length, value, note, error``; ``value`` is the
        short text of the value, ``value_length`` the length field (``0xFFFFFFFF``: undefined).
        """
        import pandas as pd

        rows = []
        for i, n in enumerate(self.walk()):
            rows.append(
                {
                    "index": i,
                    "kind": n.kind,
                    "stream": n.stream,
                    "offset": n.offset,
                    "end": n.end,
                    "header_length": n.header_length,
                    "value_offset": n.value_offset,
                    "length": n.length,
                    "depth": n.depth,
                    "path": n.path,
                    "tag": n.tag_str,
                    "keyword": n.keyword,
                    "name": n.name,
                    "VR": n.vr or "",
                    "vr_source": n.vr_source,
                    "length_size": n.length_size,
                    "reserved_size": n.reserved_size,
                    "value_length": n.value_length,
                    "undefined_length": n.undefined_length,
                    "value": n.value_repr,
                    "note": n.note,
                    "error": n.error,
                }
            )
        df = pd.DataFrame(rows)
        if not df.empty:
            df["value_length"] = df["value_length"].astype("Int64")
        return df.set_index("index") if not df.empty else df


def _all_zero(buf: Any, start: int, end: int, chunk: int = 16 << 20) -> bool:
    """Tell whether ``buf[start:end]`` holds only zero bytes, without copying all of it."""
    import numpy as np

    for pos in range(start, end, chunk):
        if np.frombuffer(buf, dtype=np.uint8, count=min(end, pos + chunk) - pos, offset=pos).any():
            return False
    return True


def _check_regular_file(path: Path) -> None:
    """Refuse, before opening it, a path that is not a regular file (it could block or never end)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        if not os.path.lexists(path):
            raise FileNotFoundError(f"no such file: {path}") from None
        target = os.readlink(path) if os.path.islink(path) else None
        what = f"a symbolic link to {target!r} that" if target is not None else "it"
        raise InputFileError(f"{path}: {what} cannot be followed ({exc.strerror or exc})") from None
    if not stat.S_ISREG(st.st_mode):
        kind = (
            "a named pipe (FIFO)" if stat.S_ISFIFO(st.st_mode)
            else "a socket" if stat.S_ISSOCK(st.st_mode)
            else "a device"
        )  # fmt: skip
        raise InputFileError(f"{path} is {kind}, not a regular file: not read")


def _open_buffer(path: Path) -> tuple[Any, Any]:
    fh = open(path, "rb")
    try:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            fh.close()
            return b"", None
        return mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ), fh
    except OSError as exc:
        fh.close()
        raise InputFileError(
            f"{path}: cannot be mapped into memory ({exc.strerror or exc})"
        ) from None
    except Exception:
        fh.close()
        raise


def walk_file(
    path_or_bytes: str | os.PathLike[str] | bytes | bytearray | memoryview | BinaryIO,
    *,
    transfer_syntax: str | None = None,
    decode_limit: int = DECODE_LIMIT,
    kind: type[W] = FileWalk,  # type: ignore[assignment]
) -> W:
    """Walk a DICOM file from its bytes.

    Parameters
    ----------
    path_or_bytes
        A file path, the file's bytes, or an open binary file (read to its end).
    transfer_syntax
        Only for a bare dataset (no preamble, no meta): the transfer syntax UID to read it
        with, instead of guessing it from its first bytes.
    decode_limit
        Values up to this many bytes are read and decoded; longer ones are shown by length
        (their bytes are not read during the walk).
    kind
        The class of the result: :class:`FileWalk` or a subclass (``Anatomy`` adds views).

    Returns
    -------
    FileWalk
        The walk (of class ``kind``); never raises for a malformed file (the break is in
        ``.breaks``).
    """
    import time

    start = time.perf_counter()
    result = kind()
    fh = None
    if hasattr(path_or_bytes, "read"):  # an open binary file or a BytesIO
        path_or_bytes = path_or_bytes.read()
    if isinstance(path_or_bytes, bytes | bytearray | memoryview):
        buf: Any = bytes(path_or_bytes)
        result._bytes = buf
    else:
        result.source = Path(path_or_bytes)
        if result.source.is_dir():
            raise IsADirectoryError(f"{result.source} is a folder, not a file")
        _check_regular_file(result.source)
        buf, fh = _open_buffer(result.source)
    try:
        _walk_file(result, buf, transfer_syntax, decode_limit)
        _not_dicom_note(result)
    finally:
        if fh is not None:
            buf.close()
            fh.close()
    for i, node in enumerate(result.walk()):
        node.index = i
    result.elapsed = time.perf_counter() - start
    return result


def _walk_file(a: FileWalk, buf: Any, ts_override: str | None, decode_limit: int) -> None:
    n = len(buf)
    a.size = n
    walker = _Walker(buf, "file", decode_limit, ["iso8859"])
    root = _Ctx()
    try:
        pos = _walk_preamble(a, buf)
        pos = _walk_meta(a, walker, root, pos)
        pos = _walk_command_group(a, walker, root, pos)
    except _Broken as exc:
        _break(a, exc, n, "file")
        return
    _read_transfer_syntax(a, buf, pos, ts_override)
    if pos >= n:
        if not a.nodes:
            a.notes.append("the file is empty")
        elif not a.has_meta:
            a.breaks.append(Break(n, "file", "the file ends right after the 'DICM' prefix"))
        return
    if a.deflated:
        _walk_deflated(a, buf, pos, decode_limit, walker.encodings)
        return
    _follow_written_vr(a, buf, pos)
    top: list[Node] = []
    try:
        walker.dataset(pos, None, a.implicit_vr, a.little_endian, 0, root, top)
    except _Broken as exc:
        a.nodes += top
        _break(a, exc, n, "file")
        return
    a.nodes += top


def _walk_preamble(a: FileWalk, buf: Any) -> int:
    """Record the preamble and the 'DICM' prefix; return where the meta group starts."""
    n = len(buf)
    if n >= 132 and bytes(buf[128:132]) == b"DICM":
        pre = bytes(buf[:128])
        a.preamble_kind, a.preamble_note = _preamble_kind(pre)
        a.nodes.append(
            Node("preamble", 0, 0, 128, value_repr=a.preamble_note, note=a.preamble_kind)
        )
        a.nodes.append(Node("prefix", 128, 0, 4, value="DICM", value_repr="'DICM' magic prefix"))
        a.has_prefix = True
        return 132
    if n >= 4 and bytes(buf[:4]) == b"DICM":
        a.notes.append("no 128-byte preamble: the file starts with the 'DICM' prefix")
        a.nodes.append(Node("prefix", 0, 0, 4, value="DICM", value_repr="'DICM' magic prefix"))
        a.has_prefix = True
        return 4
    a.notes.append(
        "no 128-byte preamble and no 'DICM' prefix: not a DICOM Part 10 file, read as a "
        "bare dataset"
    )
    return 0


def _walk_meta(a: FileWalk, walker: _Walker, root: _Ctx, pos: int) -> int:
    """Walk the file meta group (explicit VR little endian, PS3.10 7.1); return where it ends."""
    buf = walker.buf
    if not (len(buf) - pos >= 8 and walker.tag_at(pos, True) >> 16 == 2):
        a.notes.append("no file meta information group (0002,xxxx)")
        return pos
    meta: list[Node] = []
    vrb = bytes(buf[pos + 4 : pos + 6])
    meta_implicit = not (0x40 < vrb[0] < 0x5B and 0x40 < vrb[1] < 0x5B)
    if meta_implicit:
        a.notes.append("file meta group written in implicit VR (it must be explicit)")
    try:
        end = walker.dataset(pos, None, meta_implicit, True, 0, root, meta, stop_group=2)
    finally:
        a.nodes += meta
    a.has_meta = True
    a.meta_length = end - pos
    for node in meta:
        if node.tag == 0x00020000 and isinstance(node.value, int):
            a.meta_group_length = node.value
            actual = end - node.end
            if node.value != actual:
                node.error = (
                    f"group length says {node.value} bytes, the meta elements after it "
                    f"take {actual}"
                )
        if node.tag == 0x00020010 and node.value:
            a.transfer_syntax = str(node.value).strip("\x00 ")
    if a.meta_group_length is None:
        a.notes.append("file meta group has no group length (0002,0000)")
    return end


def _walk_command_group(a: FileWalk, walker: _Walker, root: _Ctx, pos: int) -> int:
    """Walk a command group (0000,xxxx) before the dataset, as DIMSE messages carry one."""
    buf = walker.buf
    if not (
        len(buf) - pos >= 8
        and walker.tag_at(pos, True) >> 16 == 0
        and bytes(buf[pos : pos + 8]).strip(b"\x00")
    ):
        return pos
    # a command group is always implicit VR little endian
    cmd: list[Node] = []
    try:
        pos = walker.dataset(pos, None, True, True, 0, root, cmd, stop_group=0)
    finally:
        a.nodes += cmd
    a.notes.append("a command group (0000,xxxx) precedes the dataset (implicit VR little endian)")
    return pos


def _read_transfer_syntax(a: FileWalk, buf: Any, pos: int, ts_override: str | None) -> None:
    """Set how the dataset is encoded: from the meta group, the caller, or its first bytes."""
    ts = a.transfer_syntax or ts_override
    if a.has_meta and not a.transfer_syntax:
        a.notes.append("the file meta group has no transfer syntax UID (0002,0010)")
    if ts is not None and ts in TRANSFER_SYNTAXES:
        a.transfer_syntax_name, a.implicit_vr, a.little_endian, a.deflated = TRANSFER_SYNTAXES[ts]
    elif ts is not None:
        from pydicom._uid_dict import UID_dictionary

        entry = UID_dictionary.get(ts)
        a.transfer_syntax_name = entry[0] if entry else "unknown transfer syntax"
        if not entry:
            a.notes.append(f"transfer syntax {ts!r} is unknown: read as explicit VR little endian")
        a.implicit_vr, a.little_endian = False, True  # all others: explicit VR little endian
    elif len(buf) - pos >= 6:
        group, vrb = struct.unpack_from("<H", buf, pos)[0], bytes(buf[pos + 4 : pos + 6])
        a.implicit_vr = vrb not in _KNOWN_VR_BYTES
        a.little_endian = a.implicit_vr or group < 1024
        a.transfer_syntax_name = (
            f"guessed from the first element: {'implicit' if a.implicit_vr else 'explicit'} "
            f"VR {'little' if a.little_endian else 'big'} endian"
        )
        a.notes.append(f"transfer syntax unknown; {a.transfer_syntax_name}")


def _follow_written_vr(a: FileWalk, buf: Any, pos: int) -> None:
    """Read the dataset as written when its first element contradicts the transfer syntax."""
    if len(buf) - pos < 6:
        return
    implicit = a.implicit_vr
    vrb = bytes(buf[pos + 4 : pos + 6])
    found_implicit = not (0x40 < vrb[0] < 0x5B and 0x40 < vrb[1] < 0x5B)
    if found_implicit != implicit:
        a.notes.append(
            f"the transfer syntax says {'implicit' if implicit else 'explicit'} VR but "
            f"the dataset is written in {'implicit' if found_implicit else 'explicit'} VR: "
            "read as written"
        )
        a.implicit_vr = found_implicit


def _not_dicom_note(a: FileWalk) -> None:
    if not a.has_prefix and not a.has_meta and a.breaks and a.breaks[0].offset == 0:
        a.notes.append("this does not look like a DICOM file: not even its first element parses")


def _break(a: FileWalk, exc: _Broken, n: int, stream: str) -> None:
    """Record a break and cover the unparsed rest with one node."""
    a.breaks.append(Break(exc.offset, stream, exc.reason))
    if exc.offset < n:
        a.nodes.append(
            Node(
                "break", exc.offset, 0, n - exc.offset, stream, error=exc.reason,
                value_repr=f"{n - exc.offset} bytes not walked", note="the walk stopped here",
            )
        )  # fmt: skip


def _walk_deflated(a: FileWalk, buf: Any, pos: int, decode_limit: int, enc: list[str]) -> None:
    n = len(buf)
    d = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        inflated = d.decompress(bytes(buf[pos:n]), INFLATE_LIMIT)
        if d.unconsumed_tail:
            limit = INFLATE_LIMIT >> 20
            _break(a, _Broken(pos, f"deflated dataset inflates past {limit} MiB"), n, "file")
            return
        inflated += d.flush()
    except zlib.error as exc:
        _break(a, _Broken(pos, f"deflated dataset does not inflate: {exc}"), n, "file")
        return
    used = n - pos - len(d.unused_data)
    a._inflated = inflated
    a.inflated_size = len(inflated)
    node = Node(
        "deflated", pos, 0, used, "file", value_length=used,
        value_repr=f"{used} deflated bytes -> {len(inflated)} bytes of dataset",
        note="offsets of the elements inside are offsets within the inflated stream",
    )  # fmt: skip
    a.nodes.append(node)
    if not d.eof:
        a.breaks.append(Break(n, "file", "the deflate stream is truncated (no final block)"))
    if used < n - pos:
        a.nodes.append(
            Node(
                "trailing", pos + used, 0, n - pos - used,
                value_repr=f"{n - pos - used} bytes after the end of the deflate stream",
            )
        )  # fmt: skip
    walker = _Walker(inflated, "inflated", decode_limit, enc)
    try:
        walker.dataset(0, None, False, True, 0, _Ctx(), node.children)
    except _Broken as exc:
        a.breaks.append(Break(exc.offset, "inflated", exc.reason))
        node.children.append(
            Node(
                "break", exc.offset, 0, len(inflated) - exc.offset, "inflated",
                error=exc.reason, value_repr=f"{len(inflated) - exc.offset} bytes not walked",
            )
        )  # fmt: skip
