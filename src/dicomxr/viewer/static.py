"""Static pictures where widgets cannot render: a montage of planes, as PNG.

:func:`montage` reads only the frames it shows (``n`` native planes spread over the stack),
windows them exactly as the interactive viewer does (same presets, MONOCHROME1 inverted,
same colormaps and label overlay) and lays them out with matplotlib at their physical aspect.
It needs no widget library and no display: it works in scripts, CI, nbconvert and docs.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dicomxr import intensity
from dicomxr._files import atomic_path
from dicomxr.spatial import attrs_with_affine
from dicomxr.viewer.annotate import draw_edge_letters, edge_letters, index_label
from dicomxr.viewer.planes import SPATIAL, Plane, planes_from_affine
from dicomxr.viewer.render import render
from dicomxr.viewer.volume import Volume, as_image

__all__ = ["Montage", "montage", "snapshot"]


class Montage:
    """A rendered montage: PNG bytes, the matplotlib figure, and the tiles as arrays.

    Displays as an image in notebooks (``_repr_png_``), saves with :meth:`save`.
    """

    def __init__(
        self,
        figure: Any,
        tiles: list[np.ndarray],
        indices: list[int],
        window: intensity.Window | None = None,
    ) -> None:
        self.figure = figure
        #: the window the tiles are drawn with (:class:`dicomxr.intensity.Window`)
        self.window = window
        #: RGB arrays of the planes, in display orientation, as windowed
        self.tiles = tiles
        #: index along the montage dim of each tile
        self.indices = indices
        self._png: bytes | None = None

    @property
    def png(self) -> bytes:
        """The montage as PNG bytes."""
        if self._png is None:
            buf = io.BytesIO()
            self.figure.savefig(buf, format="png", facecolor="black")
            self._png = buf.getvalue()
        return self._png

    def _repr_png_(self) -> bytes:
        return self.png

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the PNG atomically, with the permissions the umask gives new files.

        A temporary file in the same folder is renamed into place.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path, suffix=".png") as tmp:
            tmp.write_bytes(self.png)
        return path


def montage(
    obj: Any,
    *,
    n: int = 12,
    indices: Sequence[int] | None = None,
    plane: str = "slice",
    isel: Mapping[str, int] | None = None,
    preset: str | None = None,
    level: float | None = None,
    window: float | None = None,
    colormap: str = "gray",
    overlay: Any = None,
    overlay_opacity: float = 0.4,
    ncols: int | None = None,
    tile_inches: float = 2.0,
    dpi: int = 100,
    path: str | os.PathLike[str] | None = None,
    letters: bool = True,
    colorbar: bool = False,
) -> Montage:
    """Draw a grid of planes of a series (a static fallback for :func:`dicomxr.view`).

    Parameters
    ----------
    obj
        A DataArray from :func:`dicomxr.open_series`, or a series Dataset with ``image``.
    n
        Number of planes, evenly spread along the stack (ignored when ``indices`` is given).
    indices
        Exact indices along the montage dim.
    plane
        Which planes: ``"slice"`` (the native plane, one frame each - the cheap choice),
        ``"row"`` or ``"col"``, or a plane name (``"axial"``, ``"coronal"``...). Planes other
        than the native one read the whole stack at the chosen extra index.
    isel
        Index along each extra dim (default 0), e.g. ``{"time": 2}``.
    preset, level, window
        Window preset (the file's, a CT preset, ``"auto"``) or explicit centre/width; by
        default the window every part of dicomxr opens with
        (:func:`dicomxr.intensity.default_window`, at the middle slice of the volume shown).
    colormap
        Matplotlib colormap name.
    overlay, overlay_opacity
        Labels or a mask on the same grid, drawn in colour.
    ncols
        Columns of the grid (default about square).
    tile_inches, dpi
        Size of a tile and resolution of the PNG.
    letters
        Write the patient directions (A/P/R/L/S/I) on the four edges of every tile, from the
        array's own affine (:func:`dicomxr.viewer.annotate.edge_letters`).
    colorbar
        Add a colour bar of the window (values in the image's ``units``).
    path
        Also write the PNG there (atomically).

    Returns
    -------
    Montage
        ``.png`` bytes, ``.figure``, ``.tiles`` (RGB arrays) and ``.indices``.

    Examples
    --------
    >>> import dicomxr
    >>> from dicomxr.viewer import montage
    >>> da = dicomxr.open_series(dicomxr.data.sample_path())  # doctest: +SKIP
    >>> montage(da, n=8, isel={"time": 1}).save("pcasl.png")  # doctest: +SKIP
    """
    vol = Volume(as_image(obj))
    attrs = attrs_with_affine(vol.da)
    planes = planes_from_affine(attrs)
    by_name = {p.name: d for d, p in planes.items()}
    dim = by_name.get(plane, plane)
    if dim not in SPATIAL:
        raise ValueError(f"unknown plane {plane!r}; choose one of {[*SPATIAL, *by_name]}")
    pl = planes[dim]
    isel = dict(isel or {})
    unknown = set(isel) - set(vol.extra)
    if unknown:
        raise ValueError(f"isel names {sorted(unknown)}, but the extra dims are {list(vol.extra)}")
    extra_idx = tuple(int(isel.get(d, 0)) for d in vol.extra)
    indices = _montage_indices(indices, n, vol.sizes[dim], dim)
    ov = Volume(as_image(overlay)) if overlay is not None else None
    w = _montage_window(vol, extra_idx, preset, level, window)
    invert = intensity.is_inverted(attrs)
    other = tuple(d for d in SPATIAL if d != dim)
    if dim == "slice":
        vol.load(extra_idx, indices)  # one compute for every tile
    tiles = []
    for i in indices:
        values = pl.orient(vol.plane(extra_idx, dim, i), other)
        ov_plane = None
        if ov is not None:
            ov_idx = tuple(int(isel.get(d, 0)) for d in ov.extra)
            ov_plane = pl.orient(ov.plane(ov_idx, dim, i), other)
        tiles.append(
            render(
                values,
                center=w.center,
                width=w.width,
                cmap=colormap,
                invert=invert,
                function=w.function,
                overlay=ov_plane,
                opacity=overlay_opacity,
            )
        )
    fig, axes = _tile_figure(
        vol, pl, dim, indices, tiles, ncols=ncols, tile_inches=tile_inches, dpi=dpi,
        edges=_plane_letters(attrs, pl) if letters else None,
    )  # fmt: skip
    fig.suptitle(_montage_title(attrs, vol.extra, extra_idx, w), color="white", fontsize=9)
    fig.tight_layout()
    if colorbar:
        _window_colorbar(fig, axes, w.center, w.width, colormap, invert, attrs)
    result = Montage(fig, tiles, indices, w)
    if path is not None:
        result.save(path)
    return result


def _montage_indices(indices: Sequence[int] | None, n: int, size: int, dim: str) -> list[int]:
    """Pick the planes to draw: ``indices`` as given, else ``n`` spread evenly in the stack."""
    if indices is None:
        k = max(1, min(int(n), size))
        indices = (
            sorted({round(x) for x in np.linspace(0, size - 1, k + 2)[1:-1]})
            if k < size
            else list(range(size))
        )
    indices = [int(i) for i in indices]
    bad = [i for i in indices if not 0 <= i < size]
    if bad:
        raise IndexError(f"indices {bad} out of range 0..{size - 1} along {dim!r}")
    return indices


def _montage_window(
    vol: Volume,
    extra_idx: tuple[int, ...],
    preset: str | None,
    level: float | None,
    window: float | None,
) -> intensity.Window:
    """Resolve the window of the volume shown, at its middle slice (where the viewer opens)."""
    at = {**dict(zip(vol.extra, extra_idx, strict=True)), "slice": vol.sizes["slice"] // 2}
    w = intensity.resolve_window(vol.da, preset, at=at)
    if level is None and window is None:
        return w
    return intensity.Window(
        float(level) if level is not None else w.center,
        float(window) if window is not None else w.width,
        "custom",
        w.function,
    )


def _tile_figure(
    vol: Volume,
    pl: Plane,
    dim: str,
    indices: list[int],
    tiles: list[np.ndarray],
    *,
    ncols: int | None,
    tile_inches: float,
    dpi: int,
    edges: Any,
) -> tuple[Any, list[Any]]:
    """Lay the tiles out on a black figure, in millimetres, each with its title and letters."""
    from matplotlib.figure import Figure

    count = len(tiles)
    cols = int(ncols) if ncols else int(np.ceil(np.sqrt(count)))
    rows = int(np.ceil(count / cols))
    h_mm = vol.sizes[pl.vertical] * pl.spacing_vertical
    w_mm = vol.sizes[pl.horizontal] * pl.spacing_horizontal
    tile_w = tile_inches * min(1.0, w_mm / h_mm)
    tile_h = tile_inches * min(1.0, h_mm / w_mm)
    fig = Figure(figsize=(cols * tile_w, rows * (tile_h + 0.25)), dpi=dpi, facecolor="black")
    size = vol.sizes[dim]
    axes = []
    for k, (i, rgb) in enumerate(zip(indices, tiles, strict=True)):
        ax = fig.add_subplot(rows, cols, k + 1)
        ax.imshow(rgb, extent=(0, w_mm, h_mm, 0), interpolation="nearest")
        ax.set_axis_off()
        ax.set_title(_tile_title(vol.da, pl.name, dim, i, size), color="white", fontsize=8)
        if edges is not None:
            draw_edge_letters(ax, edges)
        axes.append(ax)
    return fig, axes


def _montage_title(
    attrs: Mapping[str, Any],
    extra: Sequence[str],
    extra_idx: tuple[int, ...],
    w: intensity.Window,
) -> str:
    """Title the montage: modality, series number and description, extra indices, window."""
    title = " · ".join(
        str(attrs[k])
        for k in ("Modality", "SeriesNumber", "SeriesDescription")
        if attrs.get(k) not in (None, "")
    )
    shown = ", ".join(f"{d}={i}" for d, i in zip(extra, extra_idx, strict=True))
    return " ".join(
        x for x in (title, f"({shown})" if shown else "", f"L/W {w.center:.4g}/{w.width:.4g}") if x
    )


def _tile_title(da: Any, name: str, dim: str, index: int, size: int) -> str:
    """``"axial 20/139  35.0 mm"``: the 0-based index and the position along ``dim`` in mm."""
    label = index_label(name, index, size)
    if dim in da.coords and np.issubdtype(da.coords[dim].dtype, np.number):
        label += f"  {float(da.coords[dim].values[index]):.1f} mm"
    return label


def _plane_letters(attrs: Mapping[str, Any], plane: Plane) -> dict[str, str] | None:
    """Return the edge letters of a displayed plane, or None without an affine."""
    if attrs.get("affine") is None:
        return None
    return edge_letters(
        np.reshape(np.asarray(attrs["affine"], dtype=float), (4, 4)),
        SPATIAL.index(plane.vertical),
        SPATIAL.index(plane.horizontal),
        flip_vertical=plane.flip_vertical,
        flip_horizontal=plane.flip_horizontal,
    )


def _window_colorbar(
    fig: Any,
    axes: list[Any],
    center: float,
    width: float,
    colormap: str,
    invert: bool,
    attrs: Mapping[str, Any],
) -> Any:
    """Add a colour bar from ``center - width/2`` to ``center + width/2`` beside the tiles."""
    import matplotlib as mpl

    cmap = mpl.colormaps[colormap]
    if invert:
        cmap = cmap.reversed()
    mappable = mpl.cm.ScalarMappable(
        norm=mpl.colors.Normalize(center - width / 2, center + width / 2), cmap=cmap
    )
    bar = fig.colorbar(mappable, ax=axes, shrink=0.8, fraction=0.04)
    bar.set_label(str(attrs.get("units") or ""), color="white")
    bar.ax.tick_params(colors="white", labelsize=7)
    return bar


def snapshot(viewer: Any, *, inches: float = 3.5, dpi: int = 100) -> Montage:
    """Draw what a viewer shows now (its planes, crosshair and captions) as a static picture.

    Parameters
    ----------
    viewer
        A :class:`dicomxr.viewer.Viewer`.
    inches, dpi
        Height of the tallest plane and resolution of the PNG.

    Returns
    -------
    Montage
        ``.png``, ``.figure``, ``.tiles`` (the RGB arrays on screen) and ``.indices`` (the
        index of each plane along the dim it fixes).
    """
    from matplotlib.figure import Figure

    dims = viewer.visible()
    tiles = [viewer.displayed(d) for d in dims]
    extents = []
    for d in dims:
        p = viewer.planes[d]
        extents.append(
            (
                viewer.volume.sizes[p.horizontal] * p.spacing_horizontal,
                viewer.volume.sizes[p.vertical] * p.spacing_vertical,
            )
        )
    tallest = max(h for _, h in extents)
    widths = [w / tallest * inches for w, _ in extents]
    fig = Figure(figsize=(sum(widths) + 0.2 * len(dims), inches + 0.5), dpi=dpi, facecolor="black")
    axes = fig.subplots(1, len(dims), squeeze=False, width_ratios=widths)[0]
    for ax, d, rgb, (w_mm, h_mm) in zip(axes, dims, tiles, extents, strict=True):
        p = viewer.planes[d]
        ax.imshow(rgb, extent=(0, w_mm, h_mm, 0), interpolation="nearest")
        ax.set_axis_off()
        n = viewer.volume.sizes[d]
        ax.set_title(index_label(p.name, viewer.position[d], n), color="white", fontsize=9)
        cross = viewer.crosshair(d)
        if cross is not None:
            y, x = cross
            ny = viewer.volume.sizes[p.vertical]
            nx = viewer.volume.sizes[p.horizontal]
            ax.axhline((y + 0.5) * h_mm / ny, color="#ffc400", lw=0.8)
            ax.axvline((x + 0.5) * w_mm / nx, color="#ffc400", lw=0.8)
    extra = ", ".join(f"{d}={viewer.position[d]}" for d in viewer.volume.extra)
    fig.suptitle(
        f"{extra + '  ' if extra else ''}L/W {viewer.level:.4g}/{viewer.window:.4g} ({viewer.preset})",
        color="white",
        fontsize=9,
    )
    shown = intensity.Window(viewer.level, viewer.window, viewer.preset, viewer._function)
    return Montage(fig, tiles, [int(viewer.position[d]) for d in dims], shown)
