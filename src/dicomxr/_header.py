"""A small, fast DICOM header reader for the catalog.

pydicom builds a full :class:`~pydicom.dataset.Dataset` for every file, which costs far
more than a catalog needs. This reader reads the start of a file once, walks the data
element stream with :func:`struct.unpack_from`, keeps the raw bytes of the few top-level
elements the catalog uses, skips everything else by length (walking undefined-length
sequences item by item) and stops at the Pixel Data element, recording its offset.

It handles the encodings almost every file uses - explicit and implicit VR little endian,
file meta information with or without the 128-byte preamble, native or encapsulated
pixel data - and *declines* (returns ``None``) on anything else (big endian, deflated,
private or missing transfer syntax, an element stream that does not parse cleanly). The
caller then falls back to pydicom. A header cut short is not declined but reported
(``RawHeader.truncated_at``): pydicom would read such a file silently. The catalog's
tests compare this reader with pydicom on every file of the real corpora and of
pydicom's own test files, on hand-made layouts, and under seeded byte-level fuzzing.
"""

from __future__ import annotations

import os
import stat
import struct
from collections.abc import Callable
from typing import Any

__all__ = ["RawHeader", "encapsulated_complete", "read_meta", "read_raw"]

_UNDEFINED = 0xFFFFFFFF
_CHUNK = 16384
_MAX_KEPT = 16 * 1024 * 1024

# explicit VRs whose length field is 4 bytes (after 2 reserved bytes)
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_VRS = frozenset(
    {
        b"AE",
        b"AS",
        b"AT",
        b"CS",
        b"DA",
        b"DS",
        b"DT",
        b"FL",
        b"FD",
        b"IS",
        b"LO",
        b"LT",
        b"PN",
        b"SH",
        b"SL",
        b"SS",
        b"ST",
        b"TM",
        b"UI",
        b"UL",
        b"US",
    }
)
# explicit VRs as a little-endian 16-bit read of their two characters gives them
_SHORT_CODES = frozenset(int.from_bytes(vr, "little") for vr in _VRS)
_LONG_CODES = frozenset(int.from_bytes(vr, "little") for vr in _LONG_VRS)
_VR_OF_CODE: dict[int, bytes] = {int.from_bytes(vr, "little"): vr for vr in _VRS | _LONG_VRS}
_VR_HEADER: dict[bytes, int] = {vr: 8 for vr in _VRS} | {vr: 12 for vr in _LONG_VRS}
_PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00009, 0x7FE00008})
_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQ_END = 0xFFFEE0DD

_IMPLICIT_LE = "1.2.840.10008.1.2"
_MEDIA_STORAGE_DIRECTORY = b"1.2.840.10008.1.3.10"
# little-endian data sets that are not plain: big endian, and the deflated ones
_DECLINED_TS = frozenset(
    {
        "1.2.840.10008.1.2.2",  # explicit VR big endian
        "1.2.840.10008.1.2.1.99",  # deflated explicit VR little endian
        "1.2.840.10008.1.2.4.95",  # JPIP referenced deflate
        "1.2.840.10008.1.2.4.205",  # JPIP HTJ2K referenced deflate
    }
)

_unpack_hh = struct.Struct("<HH").unpack_from
_unpack_h = struct.Struct("<H").unpack_from
_unpack_i = struct.Struct("<I").unpack_from
_unpack_hhi = struct.Struct("<HHI").unpack_from
_unpack_hh2sh = struct.Struct("<HH2sH").unpack_from
_unpack_i2sh = struct.Struct("<I2sH").unpack_from
_unpack_ihh = struct.Struct("<IHH").unpack_from


class _Decline(Exception):
    """The file is outside what this reader handles; use pydicom."""


class _Truncated(Exception):
    """An element's value runs past the end of the file."""


class RawHeader:
    """What the fast reader found in one file.

    Attributes
    ----------
    transfer_syntax : str
        TransferSyntaxUID from the file meta information.
    implicit : bool
        Whether the data set is implicit VR.
    meta : dict
        Raw values of the file meta elements kept (tag -> bytes).
    elements : dict
        ``tag -> (vr, raw value bytes)`` of the wanted top-level elements; ``vr`` is
        ``None`` for implicit VR files.
    present : set
        Other top-level tags whose presence was asked about.
    pixel_data_offset : int
        Offset of the pixel data element's tag, -1 when the file has none.
    pixel_data_length : int
        Its value length (``0xFFFFFFFF`` when encapsulated), -1 when none.
    pixel_data_value_offset : int
        Offset of its value, -1 when none.
    encapsulated_complete : bool
        For encapsulated (compressed) pixel data: whether its fragments run to the
        sequence delimiter within the file (False when the file is cut short).
    is_directory : bool
        The file is a DICOMDIR and ``skip_directories`` was asked for.
    truncated_at : tuple of int or None
        ``(tag, offset)`` of the element whose value runs past the end of the file, when
        the header itself is cut short (the other fields are then incomplete).
    """

    __slots__ = (
        "elements",
        "encapsulated_complete",
        "implicit",
        "is_directory",
        "meta",
        "pixel_data_length",
        "pixel_data_offset",
        "pixel_data_value_offset",
        "present",
        "transfer_syntax",
        "truncated_at",
    )

    def __init__(self) -> None:
        self.transfer_syntax = ""
        self.implicit = False
        self.is_directory = False
        self.encapsulated_complete = True
        self.meta: dict[int, bytes] = {}
        self.elements: dict[int, tuple[bytes | None, bytes]] = {}
        self.present: set[int] = set()
        self.pixel_data_offset = -1
        self.pixel_data_length = -1
        self.pixel_data_value_offset = -1
        self.truncated_at: tuple[int, int] | None = None


# nesting of undefined-length sequences/items beyond this declines the fast reader
_MAX_DEPTH = 100_000


def _pread_fallback(fd: int, n: int, offset: int) -> bytes:
    os.lseek(fd, offset, os.SEEK_SET)
    return os.read(fd, n)


# positioned reads on a bare descriptor: no file object to build for every file scanned
_pread = getattr(os, "pread", _pread_fallback)
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_BINARY", 0)


class _Reader:
    """A growable window on a file: ``buf`` holds bytes ``[base, base + len(buf))``."""

    __slots__ = ("base", "buf", "fd", "pread", "size")

    def __init__(
        self, fd: Any, size: int, pread: Callable[[Any, int, int], bytes] = _pread
    ) -> None:
        self.fd = fd
        self.size = size
        self.pread = pread
        self.base = 0
        self.buf = pread(fd, _CHUNK, 0)

    def need(self, pos: int, n: int) -> None:
        """Make ``[pos, pos + n)`` available in ``buf`` or decline (past end of file)."""
        if pos + n > self.size:
            raise _Truncated(pos)
        end = self.base + len(self.buf)
        if pos >= self.base and pos + n <= end:
            return
        if pos >= end or pos < self.base:
            # a jump over a long value: restart the window at pos
            self.base = pos
            self.buf = self.pread(self.fd, max(n, _CHUNK), pos)
        else:
            # keep the part of the window from pos on, then grow it
            more = self.pread(self.fd, max(pos + n - end, _CHUNK), end)
            self.buf = self.buf[pos - self.base :] + more
            self.base = pos
        if pos + n > self.base + len(self.buf):
            raise _Decline("short read")


def _ranged_pread(source: Any, n: int, offset: int) -> bytes:
    return source.pread(n, offset)


def _file_pread(f: Any, n: int, offset: int) -> bytes:
    f.seek(offset)
    return f.read(n)


def read_raw(
    path: str | Any,
    size: int,
    wanted: frozenset[int] | set[int],
    wanted_groups: dict[int, frozenset[int]],
    presence: frozenset[int],
    *,
    skip_directories: bool = False,
) -> RawHeader | None:
    """Read the header of one file, or return ``None`` when pydicom should do it.

    Parameters
    ----------
    path
        The file, or an object whose ``pread(n, offset)`` returns bytes of it (a remote
        object's :class:`dicomxr.sources.HeadReader`).
    size
        Its size in bytes (from ``os.stat``; elements running past it make the reader
        decline).
    wanted
        Top-level tags whose raw value to keep.
    wanted_groups
        Private groups to keep: ``group -> element offsets`` within a private block;
        the group's private creator elements ``(gggg,0010-00FF)`` are kept too.
    presence
        Top-level tags whose presence to record (values skipped).
    skip_directories
        Stop after the meta information of a DICOMDIR (Media Storage Directory): the
        result then has ``is_directory`` set and no elements.

    Returns
    -------
    RawHeader or None
    """
    out = RawHeader()
    try:
        if not isinstance(path, str):
            _read_from(path, _ranged_pread, size, wanted, wanted_groups, presence, out,
                       skip_directories)  # fmt: skip
            return out
        fd = os.open(path, _OPEN_FLAGS)
        try:
            _read_from(fd, _pread, size, wanted, wanted_groups, presence, out, skip_directories)
        finally:
            os.close(fd)
    except (_Decline, struct.error, UnicodeDecodeError, IndexError):
        return None
    except _Truncated as exc:
        if not out.transfer_syntax:
            return None  # cut short inside the meta information: let pydicom judge
        if out.truncated_at is None:
            out.truncated_at = (-1, exc.args[0])
    return out


def encapsulated_complete(path: str | Any, value_offset: int) -> bool:
    """Tell whether encapsulated pixel data starting at ``value_offset`` is whole.

    Parameters
    ----------
    path
        The file, or a seekable binary file object (a remote object's).
    value_offset
        Offset of the Pixel Data *value* (its first item, the basic offset table).

    Returns
    -------
    bool
        True when the fragments run to the sequence delimiter inside the file.
    """
    if not isinstance(path, str):
        size = path.seek(0, os.SEEK_END)
        return _encapsulated_complete(path, value_offset, size, _file_pread)
    fd = os.open(path, _OPEN_FLAGS)
    try:
        return _encapsulated_complete(fd, value_offset, os.fstat(fd).st_size)
    finally:
        os.close(fd)


def _encapsulated_complete(
    fd: Any, pos: int, size: int, pread: Callable[[Any, int, int], bytes] = _pread
) -> bool:
    # the usual case in one read: the file ends with the sequence delimiter
    if size >= pos + 8 and pread(fd, 8, size - 8) == b"\xfe\xff\xdd\xe0\x00\x00\x00\x00":
        return True
    # otherwise (trailing elements or padding, or a cut): follow the fragment items
    while pos + 8 <= size:
        head = pread(fd, 8, pos)
        if len(head) < 8:
            return False
        group, elem, length = _unpack_hhi(head, 0)
        tag = (group << 16) | elem
        if tag == _SEQ_END:
            return True
        if tag != _ITEM or length == _UNDEFINED:
            return False
        pos += 8 + length
    return False


def read_meta(path: str) -> dict[int, bytes] | None:
    """Read only the file meta information (group 0002) of a Part 10 file.

    Parameters
    ----------
    path
        The file.

    Returns
    -------
    dict or None
        ``tag -> raw value`` of the meta elements, ``None`` when the file has no
        preamble and ``DICM`` marker or cannot be read.
    """
    out = RawHeader()
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None  # never open a pipe: it would block
        fd = os.open(path, _OPEN_FLAGS)
        try:
            r = _Reader(fd, os.fstat(fd).st_size)
            if len(r.buf) < 132 or r.buf[128:132] != b"DICM":
                return None
            _read_meta(r, 132, out)
        finally:
            os.close(fd)
    except (OSError, _Decline, _Truncated, struct.error):
        return None
    return out.meta


def _read_from(
    fd: Any,
    pread: Callable[[Any, int, int], bytes],
    size: int,
    wanted: frozenset[int] | set[int],
    wanted_groups: dict[int, frozenset[int]],
    presence: frozenset[int],
    out: RawHeader,
    skip_directories: bool,
) -> None:
    _read(fd, size, wanted, wanted_groups, presence, out, skip_directories, pread)
    if out.pixel_data_offset >= 0 and out.pixel_data_length == _UNDEFINED:
        out.encapsulated_complete = _encapsulated_complete(
            fd, out.pixel_data_value_offset, size, pread
        )


def _read(
    fd: Any,
    size: int,
    wanted: frozenset[int] | set[int],
    wanted_groups: dict[int, frozenset[int]],
    presence: frozenset[int],
    out: RawHeader,
    skip_directories: bool,
    pread: Callable[[Any, int, int], bytes] = _pread,
) -> None:
    r = _Reader(fd, size, pread)
    buf = r.buf
    if len(buf) >= 132 and buf[128:132] == b"DICM":
        pos = 132
    elif len(buf) >= 8 and _unpack_hh(buf, 0) == (0x0002, 0x0000) and buf[4:6] == b"UL":
        pos = 0  # meta information without the preamble
    else:
        raise _Decline("no DICM marker")
    pos = _read_meta(r, pos, out)
    ts = out.meta.get(0x00020010)
    if ts is None:
        raise _Decline("no transfer syntax")
    ts_str = ts.rstrip(b"\x00 ").decode("ascii")
    if ts_str in _DECLINED_TS or not ts_str.startswith("1.2.840.10008.1.2"):
        raise _Decline("transfer syntax not handled")
    out.transfer_syntax = ts_str
    sop_class = out.meta.get(0x00020002, b"").rstrip(b"\x00 ")
    if skip_directories and sop_class == _MEDIA_STORAGE_DIRECTORY:
        out.is_directory = True
        return
    implicit = ts_str == _IMPLICIT_LE
    if pos + 8 <= size:
        # like pydicom, trust the first element over the meta information: some files
        # claim explicit VR and are implicit (and the other way round)
        r.need(pos, 8)
        vr = r.buf[pos - r.base + 4 : pos - r.base + 6]
        implicit = not (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90)
    out.implicit = implicit
    _walk_top(r, pos, implicit, out, wanted, wanted_groups, presence)


def _read_meta(r: _Reader, pos: int, out: RawHeader) -> int:
    """Read the group 0002 elements (always explicit VR little endian)."""
    meta = out.meta
    # fast path: the meta information lies in the first chunk (base 0) of any sane file
    b = r.buf
    avail = min(len(b), r.size) if r.base == 0 else 0
    while pos + 12 <= avail:
        group, elem, vr, length = _unpack_hh2sh(b, pos)
        if group != 0x0002:
            return pos
        if vr in _LONG_VRS:
            (length,) = _unpack_i(b, pos + 8)
            header = 12
        elif vr in _VRS:
            header = 8
        else:
            raise _Decline("implicit VR meta information")
        end = pos + header + length
        if length == _UNDEFINED or end > avail:
            break  # the careful loop below decides
        meta[0x00020000 | elem] = b[pos + header : end]
        pos = end
    while True:
        if pos + 8 > r.size:
            return pos
        r.need(pos, 8)
        b = r.buf
        p = pos - r.base
        group, elem = _unpack_hh(b, p)
        if group != 0x0002:
            return pos
        vr = b[p + 4 : p + 6]
        if vr in _LONG_VRS:
            r.need(pos, 12)
            b = r.buf
            p = pos - r.base
            (length,) = _unpack_i(b, p + 8)
            header = 12
        elif vr.isalpha() and vr.isupper():
            (length,) = _unpack_h(b, p + 6)
            header = 8
        else:
            raise _Decline("implicit VR meta information")
        if length == _UNDEFINED:
            raise _Decline("undefined length in meta information")
        r.need(pos + header, length)
        start = pos + header - r.base
        meta[0x00020000 | elem] = r.buf[start : start + length]
        pos += header + length


def _walk_top(
    r: _Reader,
    pos: int,
    implicit: bool,
    out: RawHeader,
    wanted: frozenset[int] | set[int],
    wanted_groups: dict[int, frozenset[int]],
    presence: frozenset[int],
) -> None:
    # The hot loop of a scan. The inner loops run while a whole element header (12
    # bytes) lies inside the window and the file, with locals only and one unpack per
    # element; kept values are sliced out in place, and every rare case (a sequence,
    # pixel data, a value crossing the window, the end of the file) leaves the inner
    # loop for the careful code below it.
    size = r.size
    keep, special = _special_tags(wanted, presence, wanted_groups)
    keep_swapped = _swapped(keep)
    special_swapped = _swapped(special)
    unswap = _unswap(keep_swapped)
    elements = out.elements
    short_codes = _SHORT_CODES
    long_codes = _LONG_CODES
    vr_of = _VR_OF_CODE
    unpack_i = _unpack_i
    unpack_hhi = _unpack_hhi
    unpack_ihh = _unpack_ihh
    undefined = _UNDEFINED
    last_tag = -1
    while True:
        if pos + 8 > size:
            break
        if pos + 12 > r.base + len(r.buf) and pos + 12 <= size:
            r.need(pos, 12)
        b = r.buf
        base = r.base
        avail = min(len(b), size - base)
        limit = avail - 12
        p = start_p = pos - base
        if p > limit:
            # 8 to 11 bytes left in the file: a last, short element (implicit VR, or
            # explicit VR with a 2-byte length); decode it on the careful path below
            tag, vr, length = _last_element(r, pos, implicit)
            header = 8
            base, p = r.base, pos - r.base
        elif implicit:
            while p <= limit:
                group, elem, length = unpack_hhi(b, p)
                tag = (group << 16) | elem
                # without VRs, tag order is the check that we are still in step
                if tag <= last_tag:
                    raise _Decline("tags out of order")
                last_tag = tag
                if tag in special or length == undefined:
                    end = p + 8 + length
                    if tag in keep and length != undefined and end <= avail:
                        elements[tag] = (None, b[p + 8 : end])
                        p = end
                        continue
                    break
                p += 8 + length
            else:
                pos = base + p
                if pos > size:
                    _truncated_in_window(b, base, start_p, size, True, out)
                continue
            vr, header = None, 8
        else:
            # explicit VR: the tag is read as one little-endian int, (elem << 16) | group,
            # and tested against swapped sets; the VR as an int too (no bytes object made
            # for every element); a 2-byte length cannot be undefined
            while p <= limit:
                stag, code, length = unpack_ihh(b, p)
                if code in short_codes:
                    if stag in special_swapped:
                        end = p + 8 + length
                        if end <= avail and stag in keep_swapped:
                            elements[unswap[stag]] = (vr_of[code], b[p + 8 : end])
                            p = end
                            continue
                        header = 8
                        break
                    p += 8 + length
                elif code in long_codes:
                    (length,) = unpack_i(b, p + 8)
                    if stag in special_swapped or length == undefined:
                        end = p + 12 + length
                        if stag in keep_swapped and length != undefined and end <= avail:
                            elements[unswap[stag]] = (vr_of[code], b[p + 12 : end])
                            p = end
                            continue
                        header = 12
                        break
                    p += 12 + length
                else:
                    raise _Decline("invalid VR")
            else:
                pos = base + p
                if pos > size:
                    _truncated_in_window(b, base, start_p, size, False, out)
                continue
            vr = vr_of[code]
            group, elem = stag & 0xFFFF, stag >> 16
            tag = (group << 16) | elem
        # the element at p needs a closer look
        last_tag = tag
        pos = _visit(r, base + p, tag, vr, header, length, implicit, out, keep, presence)
        if pos < 0:
            return  # the pixel data
    if pos != size:
        raise _Decline("trailing bytes")


def _last_element(r: _Reader, pos: int, implicit: bool) -> tuple[int, bytes | None, int]:
    """Decode the header of a last, short element (8 to 11 bytes left): tag, VR, length."""
    r.need(pos, 8)
    p = pos - r.base
    if implicit:
        group, elem, length = _unpack_hhi(r.buf, p)
        return (group << 16) | elem, None, length
    group, elem, vr, length = _unpack_hh2sh(r.buf, p)
    if vr not in _VRS:
        raise _Decline("invalid VR at the end of the file")
    return (group << 16) | elem, vr, length


def _visit(
    r: _Reader,
    pos: int,
    tag: int,
    vr: bytes | None,
    header: int,
    length: int,
    implicit: bool,
    out: RawHeader,
    keep: frozenset[int],
    presence: frozenset[int],
) -> int:
    """Handle an element the hot loop left alone; return the position after it (-1: pixels).

    Pixel data ends the walk; an undefined-length sequence is skipped item by item (and its
    value kept when asked for, delimiter included); a kept value is sliced out.
    """
    if tag in _PIXEL_TAGS:
        out.pixel_data_offset = pos
        out.pixel_data_length = length
        out.pixel_data_value_offset = pos + header
        return -1
    if tag in presence:
        out.present.add(tag)
    start = pos + header
    if length == _UNDEFINED:
        if tag >= 0xFFFE0000:
            raise _Decline("delimiter at top level")
        # a sequence (or, explicit VR UN, an implicit VR encoded sequence)
        try:
            end = _skip_sequence(r, start, implicit or vr == b"UN")
        except _Truncated:
            out.truncated_at = (tag, pos)
            raise
        length = end - start
    else:
        end = start + length
        if end > r.size:
            out.truncated_at = (tag, pos)
            raise _Truncated(pos)
    if tag in keep:
        if length > _MAX_KEPT:
            # no attribute the catalog keeps is this large: a damaged length field
            raise _Decline("implausibly long value")
        r.need(start, length)
        offset = start - r.base
        out.elements[tag] = (vr, r.buf[offset : offset + length])
    return end


def _truncated_in_window(
    b: bytes, base: int, p: int, size: int, implicit: bool, out: RawHeader
) -> None:
    """Find the element whose value runs past the end of the file (rare: walk again)."""
    while True:
        if implicit:
            group, elem, length = _unpack_hhi(b, p)
            header = 8
        else:
            group, elem, vr, length = _unpack_hh2sh(b, p)
            header = 8
            if vr in _LONG_VRS:
                (length,) = _unpack_i(b, p + 8)
                header = 12
        if base + p + header + length > size:
            out.truncated_at = ((group << 16) | elem, base + p)
            raise _Truncated(base + p)
        p += header + length


# (id(wanted), id(presence), id(wanted_groups)) -> (the three, keep, special): the tag sets
# are held, so that their ids cannot be reused by other objects while the entry lives
_SPECIAL_CACHE: dict[tuple[int, int, int], tuple[Any, ...]] = {}
_SWAPPED_CACHE: dict[frozenset[int], frozenset[int]] = {}


def _swapped(tags: frozenset[int]) -> frozenset[int]:
    """Return the tags as a little-endian uint32 read of their bytes gives them."""
    out = _SWAPPED_CACHE.get(tags)
    if out is None:
        out = frozenset(((t & 0xFFFF) << 16) | (t >> 16) for t in tags)
        if len(_SWAPPED_CACHE) < 16:
            _SWAPPED_CACHE[tags] = out
    return out


_UNSWAP_CACHE: dict[frozenset[int], dict[int, int]] = {}


def _unswap(swapped: frozenset[int]) -> dict[int, int]:
    """Map each swapped tag (see :func:`_swapped`) back to the tag."""
    out = _UNSWAP_CACHE.get(swapped)
    if out is None:
        out = {s: ((s & 0xFFFF) << 16) | (s >> 16) for s in swapped}
        if len(_UNSWAP_CACHE) < 16:
            _UNSWAP_CACHE[swapped] = out
    return out


def _special_tags(
    wanted: frozenset[int] | set[int],
    presence: frozenset[int],
    wanted_groups: dict[int, frozenset[int]],
) -> tuple[frozenset[int], frozenset[int]]:
    """Return ``(keep, special)``: tags whose value is kept, and tags to look at twice.

    With both precomputed, the hot loop needs one set test per element.

    Memoised by the identity of the (frozen) tag sets, usually module constants of the
    catalog: the entry holds them, so an id seen again is the same object; the private
    groups are compared by value.
    """
    key = (id(wanted), id(presence), id(wanted_groups))
    hit = _SPECIAL_CACHE.get(key)
    if hit is not None and hit[0] is wanted and hit[1] is presence and hit[2] == wanted_groups:
        return hit[3], hit[4]
    private = {
        (group << 16) | elem
        for group, offsets in wanted_groups.items()
        for block in range(0x10, 0x100)
        for elem in (block, *((block << 8) | off for off in offsets))
    }
    keep = frozenset(wanted) | private
    special = keep | presence | _PIXEL_TAGS
    if type(wanted) is frozenset and type(presence) is frozenset:
        if len(_SPECIAL_CACHE) >= 16:
            _SPECIAL_CACHE.clear()
        _SPECIAL_CACHE[key] = (wanted, presence, dict(wanted_groups), keep, special)
    return keep, special


def _skip_sequence(r: _Reader, pos: int, implicit: bool) -> int:
    """Skip the items of an undefined-length sequence; return the position after it."""
    return _skip_nested(r, pos, [(True, implicit)])


def _skip_item(r: _Reader, pos: int, implicit: bool) -> int:
    """Skip the elements of an undefined-length item; return the position after it."""
    return _skip_nested(r, pos, [(False, implicit)])


def _skip_nested(r: _Reader, pos: int, stack: list[tuple[bool, bool]]) -> int:
    """Skip nested undefined-length sequences and items until ``stack`` is closed.

    Iterative, with an explicit stack of what is open (``(is_sequence, implicit)``): a
    file with thousands of nested undefined-length sequences must not exhaust Python's
    stack; nesting deeper than ``_MAX_DEPTH`` declines (pydicom then judges the file).
    """
    while stack:
        in_sequence, implicit = stack[-1]
        r.need(pos, 8)
        if in_sequence:
            group, elem, length = _unpack_hhi(r.buf, pos - r.base)
            tag = (group << 16) | elem
            pos += 8
            if tag == _SEQ_END:
                stack.pop()
            elif tag != _ITEM:
                raise _Decline("unexpected element in a sequence")
            elif length == _UNDEFINED:
                stack.append((False, implicit))
            else:
                pos += length
            continue
        pos = _skip_plain(r, pos, implicit)
        r.need(pos, 8)
        b = r.buf
        p = pos - r.base
        group, elem = _unpack_hh(b, p)
        if (group << 16) | elem == _ITEM_END:
            stack.pop()
            pos += 8
            continue
        if implicit or group == 0xFFFE:
            vr = None
            (length,) = _unpack_i(b, p + 4)
            header = 8
        else:
            vr = b[p + 4 : p + 6]
            if vr in _LONG_VRS:
                r.need(pos, 12)
                (length,) = _unpack_i(r.buf, pos - r.base + 8)
                header = 12
            elif vr in _VRS:
                (length,) = _unpack_h(b, p + 6)
                header = 8
            else:
                raise _Decline("invalid VR in an item")
        if length == _UNDEFINED:
            if len(stack) >= _MAX_DEPTH:
                raise _Decline("sequences nested too deeply")
            stack.append((True, implicit or vr == b"UN"))
            pos += header
        else:
            pos += header + length
    return pos


def _skip_plain(r: _Reader, pos: int, implicit: bool) -> int:
    """Skip the defined-length elements of an item that lie in the window; return where to look.

    The hot path of a long sequence (an enhanced file's per-frame functional groups): one
    unpack per element and no window bookkeeping; item ends, undefined lengths, odd VRs and
    the window's end are left to the careful code.
    """
    b, base = r.buf, r.base
    limit = base + min(len(b), r.size - base) - 12
    if implicit:
        while pos <= limit:
            group, _, length = _unpack_hhi(b, pos - base)
            if group == 0xFFFE or length == _UNDEFINED:
                return pos
            pos += 8 + length
        return pos
    short_vrs, long_vrs = _VRS, _LONG_VRS
    while pos <= limit:
        stag, vr, length = _unpack_i2sh(b, pos - base)
        if stag & 0xFFFF == 0xFFFE:
            return pos  # an item end, or a delimiter out of place
        if vr in short_vrs:
            pos += 8 + length
        elif vr in long_vrs:
            (length,) = _unpack_i(b, pos - base + 8)
            if length == _UNDEFINED:
                return pos
            pos += 12 + length
        else:
            return pos  # an item end (no VR) or something the careful code judges
    return pos
