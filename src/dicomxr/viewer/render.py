"""Turn a plane of values into the RGB picture on screen, and that picture into PNG bytes.

Kept apart from the widgets so that tests, the static montage and scripts get exactly what
the viewer shows: window -> colormap -> label overlay, in numpy, then a fast PNG encode
(Pillow, which matplotlib already depends on). Matplotlib is used for its colormaps only:
drawing a figure per slider step would cost far more than the 50 ms budget.

Without an overlay the picture is sent as a *palette* PNG: the windowed grey levels (one byte
a pixel) plus the colormap as its 256-entry palette - exact, a third of the RGB size and
about five times faster to encode. The crosshair is not burnt into the picture: the viewer
draws it as an SVG layer above the image, so moving it re-encodes nothing.
"""

from __future__ import annotations

import io
from functools import lru_cache

import numpy as np

from dicomxr.intensity import apply_window

__all__ = ["COLORMAPS", "encode_png", "label_colors", "lut", "render"]


#: Colormaps offered in the viewer's menu (any matplotlib name works through the trait).
COLORMAPS = ("gray", "bone", "viridis", "magma", "inferno", "plasma", "hot", "cividis", "jet")


@lru_cache(maxsize=32)
def lut(name: str) -> np.ndarray:
    """256 x 3 uint8 lookup table of a matplotlib colormap."""
    import matplotlib

    try:
        cmap = matplotlib.colormaps[name]
    except KeyError:
        raise ValueError(
            f"unknown colormap {name!r}; try one of {', '.join(COLORMAPS)} "
            "(any matplotlib colormap name works)"
        ) from None
    # integer indices pick the 256 entries exactly; rounding (not matplotlib's truncating
    # bytes=True) keeps "gray" the identity, so grey levels are the windowed values
    table = np.round(cmap.resampled(256)(np.arange(256))[:, :3] * 255.0)
    table = np.ascontiguousarray(table, dtype=np.uint8)
    table.setflags(write=False)
    return table


@lru_cache(maxsize=1)
def _palette() -> np.ndarray:
    import matplotlib

    tab = matplotlib.colormaps["tab10"]
    return np.asarray(tab(np.arange(10), bytes=True)[:, :3], dtype=np.uint8)


def label_colors(labels: np.ndarray) -> np.ndarray:
    """RGB colour of each label value (label 1 red-ish... cycling through tab10; booleans red)."""
    pal = _palette()
    labels = np.asarray(labels)
    if labels.dtype == bool:
        out = np.zeros((*labels.shape, 3), np.uint8)
        out[labels] = (230, 25, 25)
        return out
    idx = (np.asarray(labels, dtype=np.int64) - 1) % len(pal)
    # tab10 starts with blue; label 1 is conventionally red-ish, so start at tab10's red (3)
    return pal[(idx + 3) % len(pal)]


def render(
    values: np.ndarray,
    *,
    center: float,
    width: float,
    cmap: str = "gray",
    invert: bool = False,
    function: str = "LINEAR",
    overlay: np.ndarray | None = None,
    opacity: float = 0.4,
) -> np.ndarray:
    """Render one displayed plane to an RGB ``uint8`` array ``(H, W, 3)``.

    Parameters
    ----------
    values
        ``(H, W)`` values, already in display orientation; ``(H, W, 3)`` for RGB series.
    center, width
        The window (ignored for ``uint8`` RGB data, shown as stored).
    cmap
        Matplotlib colormap name.
    invert
        Show low values bright (MONOCHROME1).
    function
        The VOI function (:data:`dicomxr.intensity.VOI_FUNCTIONS`).
    overlay
        ``(H, W)`` labels (0 = none) or mask, blended with ``opacity``.
    """
    values = np.asarray(values)
    if values.ndim == 3:
        if values.dtype == np.uint8:
            rgb = np.array(values[..., :3], copy=True)
        else:
            rgb = apply_window(values[..., :3], center, width, function=function)
        if invert:
            np.subtract(255, rgb, out=rgb)
    else:
        idx = apply_window(values, center, width, invert=invert, function=function)
        rgb = np.take(lut(cmap), idx, axis=0)
    if overlay is not None:
        ov = np.asarray(overlay)
        mask = ov.astype(bool) if ov.dtype != bool else ov
        if mask.any():
            colors = label_colors(ov[mask] if ov.dtype != bool else np.ones(mask.sum(), bool))
            a = float(np.clip(opacity, 0.0, 1.0))
            blended = rgb[mask].astype(np.float32) * (1.0 - a) + colors.astype(np.float32) * a
            rgb[mask] = (blended + 0.5).astype(np.uint8)
    return rgb


def encode_png(
    pixels: np.ndarray, *, palette: np.ndarray | None = None, compress_level: int = 1
) -> bytes:
    """PNG bytes of an ``(H, W, 3)`` or ``(H, W)`` uint8 array (fast, lossless).

    With ``palette`` (256 x 3 uint8), a 2-D array is written as palette indices.
    """
    from PIL import Image

    pixels = np.ascontiguousarray(pixels)
    if palette is not None:
        if pixels.ndim != 2:
            raise ValueError("a palette PNG needs a 2-D array of indices")
        image = Image.frombytes("P", (pixels.shape[1], pixels.shape[0]), pixels.tobytes())
        image.putpalette(np.ascontiguousarray(palette, dtype=np.uint8).tobytes())
    else:
        image = Image.fromarray(pixels)
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()
