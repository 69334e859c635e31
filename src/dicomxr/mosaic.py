"""Vendor mosaics: one stored image that holds the slices of a volume as tiles.

Two layouts are known, both unpacked into one frame row per tile by
:func:`dicomxr.frames.expand` (``tile``, ``tile_rows``, ``tile_cols``, ``mosaic_rows``,
``mosaic_cols``; ``Rows``/``Columns`` become the tile size and ``ImagePositionPatient`` the
tile's own position):

``"SIEMENS"`` (ImageType ``MOSAIC``)
    The tile count is NumberOfImagesInMosaic (0019,100A), else the CSA image header's
    ``NumberOfImagesInMosaic``, else the number of slice times in MosaicRefAcqTimes
    (0019,1029) (what dcm2niix falls back to for de-identified files without a CSA header).
    The grid is ``ceil(sqrt(n))`` tiles square; ImagePositionPatient is the corner of the
    *whole* stored image, moved here to the first tile; the tiles are stored along the CSA
    header's SliceNormalVector (the cross product of the direction cosines when it is
    missing), ``SpacingBetweenSlices`` (else ``SliceThickness``) apart.
``"UIH"`` (United Imaging "GRID" images, ImageType ``VFRAME``)
    The tile count is "MR Number Of Slice In Volume" (0065,xx50, private creator
    ``Image Private Header``). The grid has ``ceil(sqrt(n))`` columns and ``ceil(n / cols)``
    rows (20 slices are 5 x 4 tiles, not 5 x 5). ImagePositionPatient is the *first tile's*
    position; the "MR VFrame Sequence" (0065,xx51) gives every tile's position, used when it
    lists one per tile; otherwise the tiles follow the cross product of the direction
    cosines, ``SpacingBetweenSlices`` (else ``SliceThickness``) apart.

This is the layout dcm2niix (``nii_demosaic``, ``set_nii_header_x``) and the vendors' notes
(dcm2niix ``UIH/README.md``) describe. An image that claims to be a mosaic but cannot be
unpacked (no tile count, a grid that does not divide the image) is never kept as one plain
image: :func:`dicomxr.frames.expand` sets it apart with the reason :func:`layout` gives.
dcm2niix goes one step further for a MOSAIC without any count (Siemens XA10 mosaics, issue
337 there): it guesses an upper bound from AcquisitionMatrix (0018,1310) and keeps the blank
tiles as slices, with a warning; dicomxr does not guess a slice count, it sets such an image
apart.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

#: The mosaic layouts dicomxr unpacks (the catalog's ``mosaic_kind`` column).
KINDS = ("SIEMENS", "UIH")

# UIH private block: "MR Number Of Slice In Volume" (DS) and "MR VFrame Sequence" (SQ)
UIH_CREATOR = "Image Private Header"
UIH_GROUP = 0x0065
UIH_COUNT_ELEMENT = 0x50
UIH_VFRAME_ELEMENT = 0x51


class MosaicError(ValueError):
    """A mosaic image cannot be unpacked; the message is the reason shown to the user."""


@dataclass(frozen=True)
class Layout:
    """Where the tiles of one mosaic image lie: a ``grid_rows x grid_cols`` grid of tiles."""

    grid_rows: int
    grid_cols: int
    tile_rows: int
    tile_cols: int


def layout(kind: str, n_tiles: int | None, rows: int, cols: int) -> Layout:
    """Return the tile grid of a mosaic, or raise :class:`MosaicError` saying why there is none.

    Parameters
    ----------
    kind
        ``"SIEMENS"`` or ``"UIH"`` (see the module docstring).
    n_tiles
        The tile count the header gives (``None`` when it gives none).
    rows, cols
        The stored image size.
    """
    if kind not in KINDS:
        raise MosaicError(f"unknown mosaic kind {kind!r}")
    if n_tiles is None or n_tiles < 1:
        where = (
            "NumberOfImagesInMosaic (0019,100A), the CSA image header and MosaicRefAcqTimes "
            "(0019,1029) are all missing"
            if kind == "SIEMENS"
            else "MR Number Of Slice In Volume (0065,1050) is missing"
        )
        raise MosaicError(f"{kind} mosaic without a tile count ({where})")
    grid_cols = math.ceil(math.sqrt(n_tiles))
    grid_rows = grid_cols if kind == "SIEMENS" else math.ceil(n_tiles / grid_cols)
    if rows < grid_rows or cols < grid_cols or rows % grid_rows or cols % grid_cols:
        raise MosaicError(
            f"{rows}x{cols} {kind} mosaic is not a grid of {grid_rows}x{grid_cols} tiles "
            f"for its {n_tiles} slices"
        )
    return Layout(grid_rows, grid_cols, rows // grid_rows, cols // grid_cols)


def tiles(row: Any, n_tiles: int, storage_options: Any = None) -> dict[str, list[Any]]:
    """Frame columns of the tiles of one mosaic image (a catalog row): sizes and positions.

    Raises
    ------
    MosaicError
        When the image cannot be unpacked (see :func:`layout`).
    """
    kind = str(row.get("mosaic_kind") or "SIEMENS")
    rows, cols = int(row["Rows"]), int(row["Columns"])
    grid = layout(kind, n_tiles, rows, cols)
    out: dict[str, list[Any]] = {
        "tile": list(range(n_tiles)),
        "tile_rows": [grid.tile_rows] * n_tiles,
        "tile_cols": [grid.tile_cols] * n_tiles,
        "mosaic_rows": [rows] * n_tiles,
        "mosaic_cols": [cols] * n_tiles,
        "Rows": [grid.tile_rows] * n_tiles,
        "Columns": [grid.tile_cols] * n_tiles,
    }
    positions = (
        _siemens_positions(row, n_tiles, grid, storage_options)
        if kind == "SIEMENS"
        else _uih_positions(row, n_tiles, storage_options)
    )
    if positions is not None:
        out["ImagePositionPatient"] = positions
    return out


def _step(row: Any) -> float:
    for name in ("SpacingBetweenSlices", "SliceThickness"):
        value = _float(row.get(name))
        if value is not None and value > 0:
            return value
    return 1.0


def _float(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _geometry(row: Any) -> tuple[np.ndarray, np.ndarray, tuple[float, float]] | None:
    ipp, iop, spacing = (
        row.get(n) for n in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")
    )
    if ipp is None or iop is None or spacing is None:
        return None
    try:
        return (
            np.asarray(ipp, dtype=float)[:3],
            np.asarray(iop, dtype=float)[:6],
            (float(spacing[0]), float(spacing[1])),
        )
    except (TypeError, ValueError, IndexError):
        return None


def _line(first: np.ndarray, normal: np.ndarray, step: float, n: int) -> list[tuple[float, ...]]:
    return [tuple(float(v) for v in first + k * step * normal) for k in range(n)]


def _siemens_positions(
    row: Any, n_tiles: int, grid: Layout, storage_options: Any = None
) -> list[tuple[float, ...]] | None:
    """Siemens: the stored position is the whole mosaic's corner; move it to the first tile."""
    geo = _geometry(row)
    if geo is None:
        return None
    ipp, iop, (row_sp, col_sp) = geo
    rows, cols = int(row["Rows"]), int(row["Columns"])
    first = (
        ipp
        + iop[3:] * row_sp * (rows - grid.tile_rows) / 2
        + iop[:3] * col_sp * (cols - grid.tile_cols) / 2
    )
    normal = np.cross(iop[:3], iop[3:])
    csa_normal = _row_value(row, "SliceNormalVector", csa_slice_normal, storage_options)
    if csa_normal is not None and float(np.asarray(csa_normal, float) @ normal) < 0:
        normal = -normal  # tiles are stored in the order of Siemens' SliceNormalVector
    return _line(first, normal, _step(row), n_tiles)


def _uih_positions(
    row: Any, n_tiles: int, storage_options: Any = None
) -> list[tuple[float, ...]] | None:
    """UIH: the stored position is the first tile's; the VFrame sequence lists every tile's."""
    listed = _row_value(row, "tile_positions", uih_tile_positions, storage_options)
    if listed is not None and len(listed) == n_tiles:
        return list(listed)
    if listed is not None:
        logger.warning(
            "%s: the UIH VFrame sequence lists %d positions for %d tiles; "
            "placing the tiles along the slice normal instead",
            row["path"], len(listed), n_tiles,
        )  # fmt: skip
    geo = _geometry(row)
    if geo is None:
        return None
    ipp, iop, _ = geo
    return _line(ipp, np.cross(iop[:3], iop[3:]), _step(row), n_tiles)


def _row_value(row: Any, column: str, read: Any, storage_options: Any) -> Any:
    """Return the catalog's value of ``column`` (read in the scan's one header pass).

    A row without the column (a catalog made some other way) has ``read(path)`` read it.
    """
    try:
        value = row[column]
    except KeyError:
        return read(str(row["path"]), storage_options)
    return None if value is None or isinstance(value, float) else value


def csa_slice_normal(path: str, storage_options: Any = None) -> np.ndarray | None:
    """SliceNormalVector from the Siemens CSA image header, or ``None`` when unavailable.

    ``path`` may be a URL, read by byte range with ``storage_options``
    (:mod:`dicomxr.sources`).
    """
    try:
        import pydicom

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # nibabel.nicom warns on import that it is experimental
            from nibabel.nicom import csareader
    except ImportError:  # nibabel is optional: the cross product gives the same axis
        return None
    try:
        from dicomxr.sources import readable

        with readable(path, storage_options) as source:
            ds = pydicom.dcmread(
                source, stop_before_pixels=True, specific_tags=[0x00291010, 0x00290010]
            )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            header = csareader.get_csa_header(ds, "image")
        if header is None:
            return None
        vec = csareader.get_slice_normal(header)
        return None if vec is None else np.asarray(vec, dtype=float)
    except Exception as exc:  # a damaged CSA header: fall back to the cross product
        logger.debug("no CSA SliceNormalVector in %s: %s", path, exc)
        return None


def uih_tile_positions(path: str, storage_options: Any = None) -> list[tuple[float, ...]] | None:
    """Every tile's ImagePositionPatient from a UIH "MR VFrame Sequence", or ``None``."""
    try:
        import pydicom

        from dicomxr.sources import readable

        with readable(path, storage_options) as source:
            ds = pydicom.dcmread(source, stop_before_pixels=True)
        block = ds.private_block(UIH_GROUP, UIH_CREATOR)
        seq = block[UIH_VFRAME_ELEMENT].value
        out = []
        for item in seq:
            ipp = [float(v) for v in item.ImagePositionPatient]
            if len(ipp) != 3 or not all(math.isfinite(v) for v in ipp):
                return None
            out.append(tuple(ipp))
        return out or None
    except Exception as exc:  # no or damaged sequence: the tiles follow the slice normal
        logger.debug("no UIH VFrame positions in %s: %s", path, exc)
        return None
