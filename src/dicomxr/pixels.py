"""Read and decode one frame of pixel data, and the rescale helpers.

This is the only module that touches pixel bytes. It works on a *frame reference*
(:class:`FrameRef`): the path of a file, the index of the frame inside it, the byte offset of
the Pixel Data element's tag (from the catalog's ``pixel_data_offset`` column) and the Image
Pixel module values. No pydicom dataset is parsed to read a frame:

* **Uncompressed** transfer syntaxes (implicit/explicit VR little endian, explicit VR big
  endian): the 8- or 12-byte element header is parsed here, then the frame's bytes are read
  with one ``open`` + ``seek`` + ``readinto`` straight into the destination buffer at
  ``value_start + frame * frame_bytes``. Odd layouts that are rare in practice (1-bit
  packed, ``YBR_FULL_422`` sub-sampling, 8-bit data stored as big endian ``OW``) go through
  pydicom's native decoder on the same open file, still one frame at a time.
* **Compressed** (encapsulated) transfer syntaxes decode one frame through pydicom's pixel
  decoder plugins (pylibjpeg with libjpeg/openjpeg/rle, pyjpegls), fed a file object
  positioned at the pixel data value, so only that frame's fragments are read when the file
  has an offset table. A missing plugin raises :class:`~dicomxr.errors.MissingDependencyError`
  naming the ``dicomxr[codecs]`` extra.
* **Deflated** files are compressed as a whole: they fall back to a pydicom whole-file decode.

:func:`read_frames` decodes several frames of one compressed multi-frame file in one pass over
its fragments (a file without an offset table would otherwise be walked from the start for
every frame); the lazy array's full reads use it.

Values are the *stored* values, decoded exactly as ``pydicom``'s ``Dataset.pixel_array``
does (unused high bits cleared or sign-extended, ``YBR_FULL``/``YBR_FULL_422`` converted to
RGB, colour samples last) with two documented exceptions: ``PALETTE COLOR`` frames are
returned through their lookup table as RGB (``pydicom.pixels.apply_color_lut``), and
``MONOCHROME1`` frames are *not* inverted (:func:`is_inverted` tells the caller so).

Rescale (modality LUT) is separate: :func:`rescale_dtype` picks the output dtype for a set of
slope/intercept pairs (an integer dtype when the transform is exact and fits, ``float32``
otherwise) and :func:`apply_rescale` applies one pair to a frame; :func:`apply_value_mapping`
applies a Real World Value Mapping item (a slope or a lookup table over a range of stored
values; see :mod:`dicomxr.scaling`).
"""

from __future__ import annotations

import logging
import math
import os
import struct
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np

# PixelDataError lives in dicomxr.errors; imported here too, where it has always been found
from dicomxr.errors import (
    MissingDependencyError,
    PixelDataError,
    PixelDataWarning,
    failure_reason,
    is_per_file_failure,
    user_stacklevel,
)

__all__ = [
    "LAYOUT_FIELDS",
    "NATIVE_SYNTAXES",
    "UNREADABLE",
    "FrameRef",
    "PixelDataError",
    "apply_rescale",
    "apply_value_mapping",
    "digest_or_reason",
    "file_frame_refs",
    "frame_digests",
    "frame_dtype",
    "frame_refs",
    "frame_shape",
    "is_encapsulated",
    "is_inverted",
    "mosaic_tile",
    "read_frame",
    "read_frames",
    "rescale_dtype",
    "stored_dtype",
    "stored_frame_digest",
]

logger = logging.getLogger(__name__)

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"
#: the uncompressed transfer syntaxes whose frames are read straight from the file's bytes
NATIVE_SYNTAXES = frozenset(
    {EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_BIG_ENDIAN}
)
# explicit VRs whose element header has 2 reserved bytes and a 4-byte length (PS3.5 7.1.2)
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT", b"SV", b"UV"})  # fmt: skip
_PIXEL_ELEMENTS = {0x0010: "PixelData", 0x0008: "FloatPixelData", 0x0009: "DoubleFloatPixelData"}
_UNDEFINED_LENGTH = 0xFFFFFFFF
_CODECS_EXTRA = "codecs"


def _is_missing(value: Any) -> bool:
    """None, NaN, pandas.NA or NaT (without importing pandas)."""
    if value is None:
        return True
    if isinstance(value, (float, np.floating)):
        return bool(math.isnan(value))
    return type(value).__name__ in ("NAType", "NaTType")


def _int(value: Any, default: int | None = None) -> int | None:
    """Return ``value`` as int, or ``default`` for None/NaN/NA/empty."""
    if _is_missing(value):
        return default
    if isinstance(value, str):
        value = value.strip()
        if not value:
            return default
    return int(value)


def _str(value: Any, default: str = "") -> str:
    if _is_missing(value):
        return default
    return str(value).strip()


@dataclass(frozen=True, slots=True)
class FrameRef:
    """Everything needed to read one frame of one file: small, hashable and picklable.

    Field names follow the catalog's columns (DICOM keywords), so a row of
    ``dicomxr.frames.expand(...)`` or of a ``SeriesPlan.frames`` table converts with
    :meth:`from_row`.

    Parameters
    ----------
    path
        File path.
    frame
        0-based frame index inside the file.
    pixel_data_offset
        Byte offset of the (7FE0,0010) Pixel Data element's *tag* (or of Float/Double Float
        Pixel Data). ``-1`` means unknown: it is then found by parsing the header with pydicom
        (slow path, once per call).
    TransferSyntaxUID, Rows, Columns, SamplesPerPixel, BitsAllocated, BitsStored, PixelRepresentation, PhotometricInterpretation, PlanarConfiguration, NumberOfFrames
        The Image Pixel module values. For a Siemens MOSAIC tile, ``Rows``/``Columns`` are the
        *tile* size.
    tile, mosaic_rows, mosaic_cols
        Siemens MOSAIC (the ``dicomxr.frames`` columns): the 0-based tile index (row-major in
        the mosaic grid) and the size of the whole stored mosaic image. ``tile=None`` (or
        ``-1`` in a table) for ordinary frames.
    storage_options
        fsspec options for a ``path`` that is a URL (see :mod:`dicomxr.sources`); not part of
        the reference's identity (equality, hash).
    """

    path: str
    frame: int = 0
    pixel_data_offset: int = -1
    TransferSyntaxUID: str = EXPLICIT_VR_LITTLE_ENDIAN
    Rows: int = 0
    Columns: int = 0
    SamplesPerPixel: int = 1
    BitsAllocated: int = 16
    BitsStored: int = 16
    PixelRepresentation: int = 0
    PhotometricInterpretation: str = "MONOCHROME2"
    PlanarConfiguration: int = 0
    NumberOfFrames: int = 1
    tile: int | None = None
    mosaic_rows: int = 0
    mosaic_cols: int = 0
    storage_options: Mapping[str, Any] | None = field(
        default=None, compare=False, hash=False, repr=False
    )

    @classmethod
    def from_row(cls, row: Mapping[str, Any] | Any) -> FrameRef:
        """Build a reference from a catalog/frames row (a dict, pandas Series or namedtuple).

        Missing or NaN values take the defaults of the DICOM standard (one sample, one frame,
        ``BitsStored = BitsAllocated``, planar configuration 0).
        """
        get = row.get if hasattr(row, "get") else lambda k, d=None: getattr(row, k, d)
        return cls(
            os.fspath(get("path")),
            _int(get("frame"), 0),
            _int(get("pixel_data_offset"), -1),
            *_layout(tuple(get(name) for name in LAYOUT_FIELDS)),
        )

    def as_dict(self) -> dict[str, Any]:
        """Return the fields as a plain dict."""
        return {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}

    @property
    def is_mosaic_tile(self) -> bool:
        """Whether this reference is one tile of a Siemens MOSAIC image."""
        return self.tile is not None

    @property
    def stored_rows(self) -> int:
        """Rows of the stored image (the whole mosaic for a tile)."""
        return (self.mosaic_rows or self.Rows) if self.is_mosaic_tile else self.Rows

    @property
    def stored_cols(self) -> int:
        """Columns of the stored image (the whole mosaic for a tile)."""
        return (self.mosaic_cols or self.Columns) if self.is_mosaic_tile else self.Columns

    def whole_image(self) -> FrameRef:
        """Return the reference of the whole stored image: a MOSAIC tile's mosaic, else ``self``."""
        if not self.is_mosaic_tile:
            return self
        return replace(
            self, tile=None, mosaic_rows=0, mosaic_cols=0, Rows=self.stored_rows,
            Columns=self.stored_cols,
        )  # fmt: skip


#: the :class:`FrameRef` fields after ``path``, ``frame`` and ``pixel_data_offset``, in order:
#: how a frame is stored, which the frames of one series mostly share
LAYOUT_FIELDS = (
    "TransferSyntaxUID", "Rows", "Columns", "SamplesPerPixel", "BitsAllocated", "BitsStored",
    "PixelRepresentation", "PhotometricInterpretation", "PlanarConfiguration",
    "NumberOfFrames", "tile", "mosaic_rows", "mosaic_cols",
)  # fmt: skip


def _layout(raw: tuple[Any, ...]) -> tuple[Any, ...]:
    """Convert one row's :data:`LAYOUT_FIELDS` values, with the standard's defaults for gaps."""
    (tsyntax, rows, cols, spp, bits_allocated, bits_stored, pr, pi, planar, nframes,
     tile, mosaic_rows, mosaic_cols) = raw  # fmt: skip
    allocated = _int(bits_allocated, 16)
    tile = _int(tile, None)
    if tile is not None and tile < 0:
        tile = None
    return (
        _str(tsyntax, EXPLICIT_VR_LITTLE_ENDIAN),
        _int(rows, 0),
        _int(cols, 0),
        _int(spp, 1),
        allocated,
        _int(bits_stored, allocated),
        _int(pr, 0),
        _str(pi, "MONOCHROME2"),
        _int(planar, 0),
        _int(nframes, 1) or 1,
        tile,
        _int(mosaic_rows, 0) if tile is not None else 0,
        _int(mosaic_cols, 0) if tile is not None else 0,
    )


def frame_refs(table: Any, *, storage_options: Mapping[str, Any] | None = None) -> list[FrameRef]:
    """Return one :class:`FrameRef` per row of a frames table, as :meth:`FrameRef.from_row` does.

    Column by column: rows that share a layout (every field but the path, frame and offset;
    the frames of a series mostly do) convert it once, so the references of a series cost
    about a dictionary look-up per frame.

    Parameters
    ----------
    table
        A :class:`pandas.DataFrame` with the columns of :func:`dicomxr.frames.expand` (a
        ``SeriesPlan.frames``), or a sequence of row mappings.
    storage_options
        fsspec options for URL paths, put on every reference.

    Returns
    -------
    list of FrameRef
    """
    if not hasattr(table, "columns"):
        refs = [FrameRef.from_row(row) for row in table]
    else:
        n = len(table)

        # a frame table's column arrays (dicomxr.frames.FrameTable.column): no Series each
        get = getattr(table, "column", table.__getitem__)

        def column(name: str) -> list[Any]:
            if name not in table.columns:
                return [None] * n
            array = get(name)
            values = array.tolist()
            if array.dtype.kind == "f":  # NaN is never equal to itself: None instead
                values = [None if v != v else v for v in values]
            return values

        cache: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        refs = []
        layouts = zip(*(column(name) for name in LAYOUT_FIELDS), strict=True)
        rows = zip(
            column("path"), column("frame"), column("pixel_data_offset"), layouts, strict=True
        )
        for path, frame, offset, raw in rows:
            try:
                layout = cache.get(raw)
            except TypeError:  # an unhashable value, or pandas.NA asked to be a bool
                layout = _layout(raw)
            if layout is None:
                layout = cache[raw] = _layout(raw)
            if type(frame) is not int:
                frame = _int(frame, 0)
            if type(offset) is not int:
                offset = _int(offset, -1)
            refs.append(
                FrameRef(path if type(path) is str else os.fspath(path), frame, offset, *layout)
            )
    if storage_options:
        refs = [replace(r, storage_options=storage_options) for r in refs]
    return refs


# ----------------------------------------------------------------------------- layout


def stored_dtype(ref: FrameRef, *, element: str = "PixelData") -> np.dtype:
    """Return the native-endian dtype of the stored values of ``ref``.

    ``BitsAllocated`` 1 unpacks to ``uint8``; Float/Double Float Pixel Data give
    ``float32``/``float64``.
    """
    if element == "FloatPixelData":
        return np.dtype(np.float32)
    if element == "DoubleFloatPixelData":
        return np.dtype(np.float64)
    bits = ref.BitsAllocated
    if bits == 1:
        return np.dtype(np.uint8)
    if bits not in (8, 16, 32, 64):
        raise PixelDataError(
            f"{ref.path}: BitsAllocated {bits} is not supported (1, 8, 16, 32 or 64 expected)"
        )
    kind = "i" if ref.PixelRepresentation == 1 else "u"
    return np.dtype(f"{kind}{bits // 8}")


def is_palette(ref: FrameRef) -> bool:
    """Whether frames of ``ref`` are palette colour (returned as RGB by :func:`read_frame`)."""
    return ref.PhotometricInterpretation.upper() == "PALETTE COLOR"


def is_inverted(ref: FrameRef | str) -> bool:
    """Whether the display is inverted (``MONOCHROME1``: low values are white).

    dicomxr keeps the stored values of MONOCHROME1 images; viewers and exporters use this
    to invert the display.
    """
    pi = ref if isinstance(ref, str) else ref.PhotometricInterpretation
    return pi.strip().upper() == "MONOCHROME1"


def frame_shape(ref: FrameRef) -> tuple[int, ...]:
    """Shape of the array :func:`read_frame` returns: ``(rows, cols)`` or ``(rows, cols, 3)``."""
    if is_palette(ref):
        return (ref.Rows, ref.Columns, 3)
    if ref.SamplesPerPixel > 1:
        return (ref.Rows, ref.Columns, ref.SamplesPerPixel)
    return (ref.Rows, ref.Columns)


def frame_dtype(ref: FrameRef) -> np.dtype:
    """Dtype of the array :func:`read_frame` returns, known without reading pixel data.

    For palette colour the lookup table's entry size is read from the header (no pixel data).
    """
    if is_palette(ref):
        return _palette_dtype(ref)
    if ref.pixel_data_offset >= 0 and ref.TransferSyntaxUID in NATIVE_SYNTAXES:
        with _open(ref) as f:
            element, _, _, _ = _read_element_header(f, ref)
        return stored_dtype(ref, element=element)
    return stored_dtype(ref)


def _open(ref: FrameRef, *, buffering: int = -1) -> Any:
    """Open the file of ``ref``: a local path as it always was, a URL by byte ranges."""
    if "://" not in ref.path:
        return open(ref.path, "rb", buffering=buffering)
    from dicomxr.sources import open_file

    return open_file(ref.path, ref.storage_options, buffering=buffering)


def _palette_dtype(ref: FrameRef) -> np.dtype:
    import pydicom

    path = ref.path
    try:
        with _open(ref) as f:
            ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=[0x00281101, 0x00281201])
        desc = ds.get("RedPaletteColorLookupTableDescriptor")
        bits = int(desc[2]) if desc is not None else 16
    except Exception as exc:  # deep nesting (RecursionError), a damaged descriptor
        raise PixelDataError(
            f"{path}: the palette colour lookup table descriptor cannot be read "
            f"({failure_reason(exc)})"
        ) from exc
    return np.dtype(np.uint8 if bits == 8 else np.uint16)


# ----------------------------------------------------------------------------- header


def _endian(tsyntax: str) -> str:
    return ">" if tsyntax == EXPLICIT_VR_BIG_ENDIAN else "<"


def _read_element_header(f: Any, ref: FrameRef) -> tuple[str, str | None, int, int]:
    """Parse the pixel data element header at ``ref.pixel_data_offset``.

    Returns
    -------
    element, vr, value_start, value_length
        ``value_length`` is ``0xFFFFFFFF`` for encapsulated (undefined length) data.
    """
    offset = ref.pixel_data_offset
    f.seek(offset)
    head = f.read(12)
    if len(head) < 8:
        raise PixelDataError(
            f"{ref.path}: pixel data element header at byte {offset} is cut short "
            f"(file ends after {len(head)} bytes of it)"
        )
    end = _endian(ref.TransferSyntaxUID)
    group, elem = struct.unpack(end + "HH", head[:4])
    if group != 0x7FE0 or elem not in _PIXEL_ELEMENTS:
        raise PixelDataError(
            f"{ref.path}: byte {offset} holds tag ({group:04X},{elem:04X}), "
            "not a pixel data element; the catalog's pixel_data_offset is stale"
        )
    element = _PIXEL_ELEMENTS[elem]
    vr_bytes = head[4:6]
    explicit = ref.TransferSyntaxUID != IMPLICIT_VR_LITTLE_ENDIAN
    # some writers use explicit VR for pixel data in an implicit VR file; the reserved
    # bytes after a long VR are zero, which an implicit 4-byte length almost never is
    if not explicit and vr_bytes in (b"OB", b"OW", b"OF", b"OD") and head[6:8] == b"\0\0":
        explicit = True
    # and files without file meta (no transfer syntax) are often implicit VR: a VR is two
    # upper-case letters, a length's low bytes seldom are
    if explicit and not (vr_bytes.isalpha() and vr_bytes.isupper()):
        explicit = False
    if not explicit:
        (length,) = struct.unpack(end + "L", head[4:8])
        return element, None, offset + 8, length
    vr = vr_bytes.decode("ascii", "replace")
    if vr_bytes in _LONG_VRS:
        if len(head) < 12:
            raise PixelDataError(f"{ref.path}: pixel data element header is cut short")
        (length,) = struct.unpack(end + "L", head[8:12])
        return element, vr, offset + 12, length
    (length,) = struct.unpack(end + "H", head[6:8])
    return element, vr, offset + 8, length


def _locate_pixel_data(path: str, storage_options: Any = None) -> tuple[int, Any]:
    """Return ``(offset of the pixel data tag, header dataset)`` parsed by pydicom (slow path)."""
    import pydicom

    with _open(FrameRef(path, storage_options=storage_options)) as f:
        ds = pydicom.dcmread(f, stop_before_pixels=True, force=True)
        pos = f.tell()
        head = f.read(4)
    tsyntax = _transfer_syntax(ds)
    end = _endian(tsyntax)
    if len(head) == 4 and tsyntax != DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
        group, elem = struct.unpack(end + "HH", head)
        if group == 0x7FE0 and elem in _PIXEL_ELEMENTS:
            return pos, ds
    return -1, ds


def _transfer_syntax(ds: Any) -> str:
    """Return the transfer syntax, or the encoding pydicom found when there is no file meta."""
    meta = getattr(ds, "file_meta", None)
    tsyntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if tsyntax:
        return str(tsyntax)
    implicit, little = getattr(ds, "original_encoding", (False, True))
    if implicit:
        return IMPLICIT_VR_LITTLE_ENDIAN
    return EXPLICIT_VR_LITTLE_ENDIAN if little is not False else EXPLICIT_VR_BIG_ENDIAN


# ----------------------------------------------------------------------------- reading


def read_frame(ref: FrameRef | Mapping[str, Any], *, out: np.ndarray | None = None) -> np.ndarray:
    """Read and decode one frame (stored values, before rescale).

    Parameters
    ----------
    ref
        A :class:`FrameRef` or a row (mapping) with the catalog's columns.
    out
        Optional C-contiguous destination of shape :func:`frame_shape` and dtype
        :func:`frame_dtype` (or another dtype of the same item size, which is then
        reinterpreted). Uncompressed frames are read straight into it.

    Returns
    -------
    numpy.ndarray
        ``(rows, cols)``, or ``(rows, cols, samples)`` for colour (RGB, channel last).

    Raises
    ------
    PixelDataError
        The pixel data is cut short, malformed or cannot be decoded; the message names the
        file and the frame.
    MissingDependencyError
        The transfer syntax needs a decoder plugin that is not installed.

    Examples
    --------
    >>> from dicomxr import pixels
    >>> ref = pixels.file_frame_refs("image.dcm")[0]  # doctest: +SKIP
    >>> pixels.read_frame(ref).shape  # doctest: +SKIP
    (512, 512)
    """
    if not isinstance(ref, FrameRef):
        ref = FrameRef.from_row(ref)
    if ref.pixel_data_offset < 0 and ref.TransferSyntaxUID != DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
        offset, _ = _locate_pixel_data(ref.path, ref.storage_options)
        if offset < 0:
            raise PixelDataError(f"{ref.path}: the file has no pixel data element")
        ref = replace(ref, pixel_data_offset=offset)
    if not 0 <= ref.frame < max(ref.NumberOfFrames, 1):
        raise PixelDataError(
            f"{ref.path}: frame {ref.frame} requested, the file has {ref.NumberOfFrames} frame(s)"
        )
    try:
        if ref.TransferSyntaxUID == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
            arr = _read_deflated(ref)
        elif ref.TransferSyntaxUID in NATIVE_SYNTAXES:
            arr = _read_native(ref, None if (ref.is_mosaic_tile or is_palette(ref)) else out)
        else:
            arr = _read_encapsulated(ref)
    except (PixelDataError, MissingDependencyError):
        raise
    except OSError:  # missing file, permissions: the OS error says it best
        raise
    except BaseException as exc:
        # a Rust codec's PanicException is a BaseException: it is this frame's failure too
        if not is_per_file_failure(exc):
            raise
        raise PixelDataError(
            f"{ref.path}: frame {ref.frame} could not be decoded "
            f"({ref.TransferSyntaxUID}): {type(exc).__name__}: {exc}"
        ) from exc
    if ref.is_mosaic_tile:
        arr = mosaic_tile(arr, ref)
    if is_palette(ref):
        arr = _apply_palette(arr, ref)
    _check_shape(arr, ref)
    if out is None:
        return arr
    if tuple(out.shape) != tuple(arr.shape):
        raise PixelDataError(
            f"{ref.path}: frame {ref.frame} has shape {tuple(arr.shape)}, the destination "
            f"{tuple(out.shape)}: not read"
        )
    if not np.shares_memory(arr, out):
        if out.dtype.itemsize == arr.dtype.itemsize and out.dtype != arr.dtype:
            out.view(arr.dtype)[...] = arr
        else:
            out[...] = arr
    return out


def stored_frame_digest(ref: FrameRef | Mapping[str, Any]) -> str:
    """Return a digest of one stored frame's decoded values (a whole mosaic, not one tile).

    Two files that hold the same image give the same digest whatever their transfer syntax
    (the values are decoded first); used to tell a second copy of an instance from a
    different image that reuses its SOPInstanceUID.

    Raises
    ------
    PixelDataError
        When the frame cannot be read.
    """
    import hashlib

    if not isinstance(ref, FrameRef):
        ref = FrameRef.from_row(ref)
    arr = np.ascontiguousarray(read_frame(ref.whole_image()))
    digest = hashlib.blake2b(digest_size=20)
    digest.update(f"{arr.dtype.str}{arr.shape}".encode())
    digest.update(arr.tobytes())
    return digest.hexdigest()


#: how :func:`frame_digests` marks a frame it cannot read: this prefix, then the reason
UNREADABLE = "unreadable: "


def frame_digests(
    row: Mapping[str, Any] | Any, storage_options: Mapping[str, Any] | None = None
) -> tuple[str, ...]:
    """Return :func:`stored_frame_digest` of every stored frame of one instance.

    What :func:`dicomxr.scan` keeps in its ``frame_digests`` column for instances whose
    SOPInstanceUID another file reuses, so that planning tells a copy from a different
    image without opening a file. Never raises for one unreadable frame: its item is
    :data:`UNREADABLE` followed by the reason (:func:`digest_or_reason` splits it).

    Parameters
    ----------
    row
        A catalog row (one instance: ``NumberOfFrames`` frames; a MOSAIC is one stored
        frame whatever its tiles).
    storage_options
        fsspec options for a ``path`` that is a URL (the catalog's
        ``attrs["storage_options"]``).

    Returns
    -------
    tuple of str
        One item per stored frame, in frame order, up to the first frame that cannot be
        read (its reason is the last item).
    """
    try:
        ref = FrameRef.from_row(row).whole_image()
    except Exception as exc:  # a header's values no frame can be read with
        return (f"{UNREADABLE}{type(exc).__name__}: {exc}",)
    if storage_options:
        ref = replace(ref, storage_options=dict(storage_options))
    out = []
    for frame in range(max(ref.NumberOfFrames, 1)):
        try:
            out.append(stored_frame_digest(replace(ref, frame=frame)))
        except Exception as exc:  # any unreadable frame: not comparable, say why
            # and no further: a header claiming more frames than the file holds would
            # otherwise cost one failed read per claimed frame
            out.append(f"{UNREADABLE}{type(exc).__name__}: {exc}")
            break
    return tuple(out)


def digest_or_reason(item: str) -> tuple[str | None, str | None]:
    """Split one item of :func:`frame_digests`: ``(digest, None)`` or ``(None, reason)``."""
    if item.startswith(UNREADABLE):
        return None, item[len(UNREADABLE) :]
    return item, None


def _check_shape(arr: np.ndarray, ref: FrameRef) -> None:
    """Refuse a decoded frame whose shape is not the one its header describes.

    A decoder (pydicom's whole-file decode of deflated or non-conformant files reads the
    file's own header again) can return another size; reshaping or broadcasting it into
    the frame would give a wrong image.
    """
    expected = frame_shape(ref)
    if tuple(arr.shape) != expected:
        raise PixelDataError(
            f"{ref.path}: frame {ref.frame} decoded to shape {tuple(arr.shape)}, the header "
            f"describes {expected}: not read"
        )


def _needs_pydicom_native(ref: FrameRef, vr: str | None) -> bool:
    pi = ref.PhotometricInterpretation.upper()
    return (
        ref.BitsAllocated == 1
        or pi == "YBR_FULL_422"
        or (
            ref.TransferSyntaxUID == EXPLICIT_VR_BIG_ENDIAN
            and ref.BitsAllocated == 8
            and vr == "OW"
        )
    )


def _read_native(ref: FrameRef, out: np.ndarray | None) -> np.ndarray:
    rows, cols, spp = ref.stored_rows, ref.stored_cols, max(ref.SamplesPerPixel, 1)
    with _open(ref, buffering=0) as f:
        element, vr, start, length = _read_element_header(f, ref)
        if length == _UNDEFINED_LENGTH:
            raise PixelDataError(
                f"{ref.path}: pixel data has undefined length (encapsulated) but the transfer "
                f"syntax {ref.TransferSyntaxUID} is uncompressed"
            )
        if element == "PixelData" and _needs_pydicom_native(ref, vr):
            return _pydicom_decode(f, ref, start, vr, element)
        dtype = stored_dtype(ref, element=element)
        frame_bytes = rows * cols * spp * dtype.itemsize
        _check_native_length(ref, length, frame_bytes, dtype.itemsize)
        begin = ref.frame * frame_bytes
        # a remote object's size costs a request: its short read is caught below instead
        size = os.fstat(f.fileno()).st_size if hasattr(f, "fileno") else start + length
        available = min(length, max(size - start, 0))
        if begin + frame_bytes > available:
            raise PixelDataError(
                f"{ref.path}: frame {ref.frame} needs pixel data bytes {begin}..{begin + frame_bytes} "
                f"but only {available} of the declared {length} are in the file "
                "(pixel data cut short)"
            )
        if out is not None and out.flags.c_contiguous and out.nbytes == frame_bytes:
            buf = out.view(dtype) if out.dtype != dtype else out
        else:
            buf = np.empty(rows * cols * spp, dtype=dtype)
        f.seek(start + begin)
        nread = f.readinto(memoryview(buf).cast("B"))
        if nread != frame_bytes:
            raise PixelDataError(
                f"{ref.path}: frame {ref.frame}: read {nread} of {frame_bytes} bytes "
                "(pixel data cut short)"
            )
    if _endian(ref.TransferSyntaxUID) == ">" and dtype.itemsize > 1:
        buf.byteswap(inplace=True)
    if element == "PixelData" and ref.BitsStored < ref.BitsAllocated:
        _correct_unused_bits(buf, ref.BitsAllocated - ref.BitsStored)
    if spp > 1:
        if ref.PlanarConfiguration == 1:
            arr = buf.reshape(spp, rows, cols).transpose(1, 2, 0)
            arr = np.ascontiguousarray(arr)
        else:
            arr = buf.reshape(rows, cols, spp)
        if ref.PhotometricInterpretation.upper() == "YBR_FULL":
            from pydicom.pixels.processing import convert_color_space

            arr = convert_color_space(arr, "YBR_FULL", "RGB")
        return arr
    return buf.reshape(rows, cols)


def _check_native_length(ref: FrameRef, length: int, frame_bytes: int, itemsize: int) -> None:
    """Refuse pixel data whose length does not fit the header's Rows x Columns x frames.

    A 512 x 512 slice whose Columns says 511 would otherwise load as a sheared image. Fewer
    bytes than described, or an excess that is not whole rows, is a ``PixelDataError``; an
    excess of whole rows (padding, or Rows too small: the described rows read unsheared) is
    a :class:`~dicomxr.errors.PixelDataWarning`.
    """
    frames = max(ref.NumberOfFrames, 1)
    expected = frame_bytes * frames
    excess = length - expected
    if 0 <= excess <= (expected & 1):
        return
    row_bytes = ref.stored_cols * max(ref.SamplesPerPixel, 1) * itemsize
    described = (
        f"{frames} frame(s) of Rows {ref.stored_rows} x Columns {ref.stored_cols} x "
        f"{max(ref.SamplesPerPixel, 1)} sample(s) x {itemsize} byte(s)"
    )
    # one frame: whole extra rows follow the described ones; several frames: extra rows
    # would shift every frame after the first, so only a tail shorter than a row is padding
    whole_rows = frames == 1 and row_bytes and excess % row_bytes == 0
    if excess > 0 and (whole_rows or (frames > 1 and excess < row_bytes)):
        warnings.warn(
            f"{ref.path}: the Pixel Data holds {length} bytes, {excess} more than the header's "
            f"{described}; the extra rows are ignored",
            PixelDataWarning,
            stacklevel=user_stacklevel(),
        )
        return
    raise PixelDataError(
        f"{ref.path}: the Pixel Data holds {length} bytes but the header describes "
        f"{expected} ({described}): the header does not match the pixel data, so the "
        "frame is not read"
    )


def _correct_unused_bits(buf: np.ndarray, shift: int) -> None:
    """Clear (unsigned) or sign-extend (signed) the unused high bits, as pydicom does."""
    if buf.dtype.kind == "u":
        np.bitwise_and(buf, buf.dtype.type((1 << (buf.dtype.itemsize * 8 - shift)) - 1), out=buf)
    else:
        np.left_shift(buf, shift, out=buf)
        np.right_shift(buf, shift, out=buf)


def _decode_options(ref: FrameRef, *, vr: str | None = None, element: str = "PixelData") -> dict:
    opts: dict[str, Any] = {
        "rows": ref.stored_rows,
        "columns": ref.stored_cols,
        "samples_per_pixel": max(ref.SamplesPerPixel, 1),
        "bits_allocated": ref.BitsAllocated,
        "bits_stored": ref.BitsStored,
        "pixel_representation": ref.PixelRepresentation,
        "photometric_interpretation": ref.PhotometricInterpretation,
        "number_of_frames": max(ref.NumberOfFrames, 1),
        "pixel_keyword": element,
    }
    if ref.SamplesPerPixel > 1:
        opts["planar_configuration"] = ref.PlanarConfiguration
    if vr is not None:
        opts["pixel_vr"] = vr
    return opts


def _get_decoder(ref: FrameRef) -> Any:
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(ref.TransferSyntaxUID)
    except NotImplementedError as exc:
        raise PixelDataError(
            f"{ref.path}: transfer syntax {ref.TransferSyntaxUID} is not supported by pydicom's "
            "pixel decoders"
        ) from exc
    if not decoder.is_available:
        name = getattr(decoder.UID, "name", ref.TransferSyntaxUID)
        raise MissingDependencyError(
            f"{ref.path}: decoding '{name}' pixel data needs a decoder plugin "
            f"(pylibjpeg with libjpeg/openjpeg/rle, or pyjpegls): install it with "
            f"`pip install 'dicomxr[{_CODECS_EXTRA}]'`."
        )
    return decoder


def _pydicom_decode(f: Any, ref: FrameRef, start: int, vr: str | None, element: str) -> np.ndarray:
    """Decode one frame with pydicom's decoder from a file positioned at the value start."""
    decoder = _get_decoder(ref)
    f.seek(start)
    arr, _ = decoder.as_array(f, index=ref.frame, **_decode_options(ref, vr=vr, element=element))
    return arr


def _read_encapsulated(ref: FrameRef) -> np.ndarray:
    decoder = _get_decoder(ref)
    with _open(ref) as f:
        element, vr, start, length = _read_element_header(f, ref)
        if length != _UNDEFINED_LENGTH:
            # not encapsulated although the syntax is compressed: a non-conformant writer;
            # pydicom's whole-file decode copes with some of these
            logger.debug("%s: compressed pixel data with a defined length", ref.path)
            return _read_deflated(ref)
        f.seek(start)
        arr, _ = decoder.as_array(
            f, index=ref.frame, **_decode_options(ref, vr=vr, element=element)
        )
    return arr


def is_encapsulated(ref: FrameRef) -> bool:
    """Whether the frames of ``ref`` are compressed frame by frame (encapsulated)."""
    return ref.TransferSyntaxUID not in NATIVE_SYNTAXES and (
        ref.TransferSyntaxUID != DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN
    )


def read_frames(ref: FrameRef, frames: Iterable[int]) -> Iterator[tuple[int, np.ndarray]]:
    """Decode several frames of one file, in frame order, with one pass over the file.

    For encapsulated multi-frame files this walks the fragments once, where reading frame
    after frame with :func:`read_frame` would walk them from the start each time when the
    file has no offset table. Other files are read frame by frame.

    Parameters
    ----------
    ref
        A reference to any frame of the file (its ``frame`` is ignored).
    frames
        The 0-based frame indices wanted.

    Yields
    ------
    (int, numpy.ndarray)
        Frame index and its stored values, as :func:`read_frame` returns them.
    """
    wanted = sorted(set(int(i) for i in frames))
    if not wanted:
        return
    if not is_encapsulated(ref) or ref.is_mosaic_tile or len(wanted) == 1:
        for i in wanted:
            yield i, read_frame(replace(ref, frame=i))
        return
    if ref.pixel_data_offset < 0:
        offset, _ = _locate_pixel_data(ref.path, ref.storage_options)
        ref = replace(ref, pixel_data_offset=offset)
    nframes = max(ref.NumberOfFrames, 1)
    if wanted[0] < 0 or wanted[-1] >= nframes:
        raise PixelDataError(
            f"{ref.path}: frames {wanted[0]}..{wanted[-1]} requested, the file has {nframes}"
        )
    from pydicom.encaps import encapsulate, generate_frames

    decoder = _get_decoder(ref)
    single = _decode_options(ref)
    single["number_of_frames"] = 1
    todo = set(wanted)
    index = -1
    with _open(ref) as f:
        _, vr, start, length = _read_element_header(f, ref)
        if length != _UNDEFINED_LENGTH:
            for i in wanted:
                yield i, read_frame(replace(ref, frame=i))
            return
        if vr is not None:
            single["pixel_vr"] = vr
        f.seek(start)
        try:
            for index, data in enumerate(generate_frames(f, number_of_frames=nframes)):
                if index in todo:
                    arr, _ = decoder.as_array(encapsulate([data]), index=0, **single)
                    if is_palette(ref):
                        arr = _apply_palette(arr, ref)
                    _check_shape(arr, replace(ref, frame=index))
                    todo.discard(index)
                    yield index, arr
                if not todo:
                    return
        except (PixelDataError, MissingDependencyError):
            raise
        except BaseException as exc:  # codec panics included (see read_frame)
            if not is_per_file_failure(exc):
                raise
            raise PixelDataError(
                f"{ref.path}: frame {index + 1} could not be decoded "
                f"({ref.TransferSyntaxUID}): {type(exc).__name__}: {exc}"
            ) from exc
    if todo:
        raise PixelDataError(
            f"{ref.path}: frame {min(todo)} not found: the encapsulated pixel data holds "
            f"{index + 1} of {nframes} frames (pixel data cut short?)"
        )


def _read_deflated(ref: FrameRef) -> np.ndarray:
    """Deflate compresses the whole dataset: decode the file with pydicom and take the frame."""
    import pydicom

    with _open(ref) as f:
        ds = pydicom.dcmread(f)
    if not any(k in ds for k in _PIXEL_ELEMENTS.values()):
        raise PixelDataError(f"{ref.path}: the file has no pixel data element")
    arr = ds.pixel_array
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        arr = arr[ref.frame]
    return arr


def mosaic_tile(arr: np.ndarray, ref: FrameRef) -> np.ndarray:
    """Cut the MOSAIC tile ``ref`` out of its decoded stored image ``arr`` (a contiguous copy).

    ``arr`` is what :func:`read_frame` returns for ``ref.whole_image()``; tiles run row-major
    over the mosaic grid. A tile that lies outside the image is a ``PixelDataError``.
    """
    ncols = max(arr.shape[1] // ref.Columns, 1)
    tr, tc = divmod(ref.tile, ncols)
    r0, c0 = tr * ref.Rows, tc * ref.Columns
    if r0 + ref.Rows > arr.shape[0] or c0 + ref.Columns > arr.shape[1]:
        raise PixelDataError(
            f"{ref.path}: MOSAIC tile {ref.tile} lies outside the stored {arr.shape[:2]} image"
        )
    return np.ascontiguousarray(arr[r0 : r0 + ref.Rows, c0 : c0 + ref.Columns])


def _apply_palette(arr: np.ndarray, ref: FrameRef) -> np.ndarray:
    import pydicom
    from pydicom.pixels.processing import apply_color_lut

    try:
        with _open(ref) as f:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        return apply_color_lut(arr, ds)
    except Exception as exc:  # a LUT element missing or damaged (AttributeError, ValueError...)
        raise PixelDataError(
            f"{ref.path}: frame {ref.frame}: the palette colour lookup table cannot be "
            f"applied ({failure_reason(exc)})"
        ) from exc


# ----------------------------------------------------------------------------- refs from a file


def file_frame_refs(
    path: str | os.PathLike[str], *, storage_options: Mapping[str, Any] | None = None
) -> list[FrameRef]:
    """Return one :class:`FrameRef` per frame of one file, from its header (pydicom).

    A convenience for reading frames of a single file; for many files use the catalog
    (``dicomxr.scan``), whose rows convert with :meth:`FrameRef.from_row`. MOSAIC tiles are
    not expanded here. ``path`` may be a URL (read with ``storage_options``, see
    :mod:`dicomxr.sources`).
    """
    path = os.fspath(path)
    offset, ds = _locate_pixel_data(path, storage_options)
    tsyntax = _transfer_syntax(ds)
    deflated = tsyntax == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN
    if (offset < 0 and not deflated) or "Rows" not in ds or "Columns" not in ds:
        raise PixelDataError(f"{path}: the file has no pixel data element")
    bits = int(ds.get("BitsAllocated", 16) or 16)
    nframes = int(ds.get("NumberOfFrames", 1) or 1)
    base = dict(
        path=path,
        pixel_data_offset=offset,
        TransferSyntaxUID=tsyntax,
        Rows=int(ds.Rows),
        Columns=int(ds.Columns),
        SamplesPerPixel=int(ds.get("SamplesPerPixel", 1) or 1),
        BitsAllocated=bits,
        BitsStored=int(ds.get("BitsStored", bits) or bits),
        PixelRepresentation=int(ds.get("PixelRepresentation", 0) or 0),
        PhotometricInterpretation=str(ds.get("PhotometricInterpretation", "MONOCHROME2")),
        PlanarConfiguration=int(ds.get("PlanarConfiguration", 0) or 0),
        NumberOfFrames=nframes,
        storage_options=storage_options,
    )
    return [FrameRef(frame=i, **base) for i in range(nframes)]


# ----------------------------------------------------------------------------- rescale


def _stored_range(bits_stored: int, pixel_representation: int, dtype: np.dtype) -> tuple[int, int]:
    if dtype.kind == "f":
        raise TypeError("float pixel data has no integer range")
    bits = min(max(int(bits_stored), 1), dtype.itemsize * 8)
    if pixel_representation == 1 or dtype.kind == "i":
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def _is_identity(slopes: np.ndarray, intercepts: np.ndarray) -> bool:
    return bool(np.all(slopes == 1.0) and np.all(intercepts == 0.0))


def rescale_dtype(
    stored: np.dtype | str,
    slopes: Iterable[float] | None = None,
    intercepts: Iterable[float] | None = None,
    *,
    bits_stored: int | None = None,
    pixel_representation: int = 0,
    dtype: Any = "auto",
) -> np.dtype:
    """Choose the dtype of rescaled values ``stored * slope + intercept``.

    Parameters
    ----------
    stored
        Dtype of the stored values.
    slopes, intercepts
        RescaleSlope / RescaleIntercept of every frame (NaN or None = 1 and 0).
    bits_stored, pixel_representation
        Range of the stored values (defaults to the whole range of ``stored``).
    dtype
        ``"auto"`` (default): the stored dtype when no frame is rescaled; the smallest
        integer dtype holding every possible result when every slope is 1 and every
        intercept is integral; ``float32`` otherwise. Anything else is taken as the
        requested dtype.

    Returns
    -------
    numpy.dtype

    Examples
    --------
    >>> rescale_dtype("uint16", [1.0], [-1024.0], bits_stored=12)
    dtype('int16')
    >>> rescale_dtype("uint16", [2.36], [0.0])
    dtype('float32')
    """
    stored = np.dtype(stored)
    if not (isinstance(dtype, str) and dtype == "auto"):
        return np.dtype(dtype)
    s = _clean(slopes, 1.0)
    b = _clean(intercepts, 0.0)
    if _is_identity(s, b):
        return stored
    if stored.kind == "f" or np.any(s != 1.0) or np.any(b != np.round(b)):
        return np.dtype(np.float64 if stored == np.float64 else np.float32)
    lo, hi = _stored_range(bits_stored or stored.itemsize * 8, pixel_representation, stored)
    lo_out, hi_out = int(lo + b.min()), int(hi + b.max())
    for cand in ("u1", "i1", "u2", "i2", "u4", "i4"):
        out = np.dtype(cand)
        info = np.iinfo(out)
        if out.itemsize >= stored.itemsize and info.min <= lo_out and hi_out <= info.max:
            return out
    return np.dtype(np.float32)


def _clean(values: Iterable[float] | None, default: float) -> np.ndarray:
    if values is None:
        return np.array([default])
    arr = np.array([default if v is None else v for v in values], dtype=np.float64)
    arr[~np.isfinite(arr)] = default
    return arr if arr.size else np.array([default])


def apply_rescale(
    arr: np.ndarray,
    slope: float | None,
    intercept: float | None,
    dtype: Any,
    *,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Return ``arr * slope + intercept`` as ``dtype`` (no copy when nothing changes).

    Integer outputs are exact (the slope must be 1). When ``out`` shares memory with
    ``arr`` and has the same item size (stored values read in place), the sum is done in
    place with the modular arithmetic of the output type, which is exact whenever the result
    fits - :func:`rescale_dtype` guarantees it does.
    """
    dtype = np.dtype(dtype)
    slope = 1.0 if slope is None or not np.isfinite(slope) else float(slope)
    intercept = 0.0 if intercept is None or not np.isfinite(intercept) else float(intercept)
    if out is None:
        if slope == 1.0 and intercept == 0.0 and arr.dtype == dtype:
            return arr
        out = np.empty(arr.shape, dtype=dtype)
    if dtype.kind in "iu":
        if slope != 1.0 or intercept != round(intercept):
            raise ValueError(
                f"rescale slope {slope} / intercept {intercept} is not exact in {dtype}; "
                "use a float dtype"
            )
        in_place = np.shares_memory(arr, out) and arr.dtype.itemsize == dtype.itemsize
        if not intercept:
            if not in_place:
                np.copyto(out, arr, casting="unsafe")
            return out
        bits = dtype.itemsize * 8
        wrapped = int(intercept) % (1 << bits)
        if dtype.kind == "i" and wrapped >= 1 << (bits - 1):
            wrapped -= 1 << bits
        # copy-then-add beats a casting ufunc loop (numpy buffers mixed-type loops)
        if not in_place:
            np.copyto(out, arr, casting="unsafe")
        np.add(out, dtype.type(wrapped), out=out, casting="unsafe")
        return out
    if slope == 1.0 and (intercept == 0.0 or dtype.itemsize >= 8):
        np.copyto(out, arr, casting="unsafe")
        if intercept:
            np.add(out, intercept, out=out, casting="unsafe")
        return out
    # in float64, rounded once: a large intercept cancelling a large product (Philips phase
    # maps: slope ~1.5e-3, intercept -3142) would lose digits in float32 arithmetic
    wide = np.multiply(arr, slope, dtype=np.float64)
    if intercept:
        np.add(wide, intercept, out=wide)
    np.copyto(out, wide, casting="unsafe")
    return out


def apply_value_mapping(
    arr: np.ndarray,
    first: float,
    last: float,
    dtype: Any,
    *,
    lut: np.ndarray | None = None,
    slope: float = 1.0,
    intercept: float = 0.0,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Apply a Real World Value Mapping item to stored values; NaN where it maps nothing.

    ``lut[v - first]`` for a lookup table, ``v * slope + intercept`` (in float64, rounded
    once) otherwise, for stored values ``first <= v <= last``; other values have no real-world
    value and become NaN (``dtype`` must be a float dtype).
    """
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise ValueError(f"real-world values need a float dtype, not {dtype}")
    if out is None:
        out = np.empty(arr.shape, dtype=dtype)
    values = arr.astype(np.float64, copy=False)
    inside = (values >= first) & (values <= last)
    if lut is not None:
        index = np.where(inside, values - (first if math.isfinite(first) else 0), 0)
        index = index.astype(np.int64)
        inside &= (index >= 0) & (index < len(lut))
        wide = np.asarray(lut, dtype=np.float64)[np.clip(index, 0, max(len(lut) - 1, 0))]
    else:
        wide = values * float(slope)
        if intercept:
            wide = wide + float(intercept)
    np.copyto(out, np.where(inside, wide, np.nan), casting="unsafe")
    return out
