"""The viewer's window onto a lazy DataArray: frames read on demand, kept in a small LRU.

The loader reads a frame as a whole, so the cheapest thing to read is a whole frame (a
``(row, col)`` plane at one ``slice`` and one index of every extra dim); frames are asked for
as basic slices, which dask fuses into reads of just those frames whatever the chunks (one
chunk per series by default). The viewer asks this module for *planes*:

- the native plane (fixed ``slice``) is one frame: one read;
- a plane that fixes ``row`` or ``col`` crosses every frame of the stack: it needs the whole
  column of ``n_slice`` frames at the current extra index (never other time points).

Frames once read stay in an LRU bounded in bytes (default 256 MiB), so moving the
crosshair through a stack already read costs no further read, and going back to a slice
already seen is only a render. Numpy-backed arrays are indexed directly (nothing to cache).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Mapping
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["LRU", "Volume", "as_image"]

SPATIAL = ("slice", "row", "col")


class LRU:
    """A least-recently-used mapping bounded by total size in bytes (``nbytes`` of the values)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = int(max_bytes)
        self._data: OrderedDict[Hashable, Any] = OrderedDict()
        self._sizes: dict[Hashable, int] = {}
        self.nbytes = 0

    def __contains__(self, key: Hashable) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: Hashable) -> Any:
        """Return the value (and mark it recently used), or ``None``."""
        try:
            value = self._data[key]
        except KeyError:
            return None
        self._data.move_to_end(key)
        return value

    def put(self, key: Hashable, value: Any) -> None:
        """Store a value, evicting the least recently used ones beyond ``max_bytes``."""
        size = int(getattr(value, "nbytes", None) or len(value))
        if size > self.max_bytes:
            return
        if key in self._data:
            self.nbytes -= self._sizes[key]
        self._data[key] = value
        self._data.move_to_end(key)
        self._sizes[key] = size
        self.nbytes += size
        while self.nbytes > self.max_bytes and self._data:
            old, _ = self._data.popitem(last=False)
            self.nbytes -= self._sizes.pop(old)

    def clear(self) -> None:
        """Forget everything."""
        self._data.clear()
        self._sizes.clear()
        self.nbytes = 0


def as_image(obj: Any) -> Any:
    """Return the image DataArray of ``obj`` (a DataArray, or a Dataset with variable ``image``)."""
    import xarray as xr

    from dicomxr.attrs import image_of

    if isinstance(obj, (xr.DataArray, xr.Dataset)):
        return image_of(obj)
    if hasattr(obj, "to_dataset") and hasattr(obj, "children"):  # a DataTree node
        return as_image(obj.to_dataset())
    raise TypeError(
        f"cannot view a {type(obj).__name__}: pass a DataArray from dicomxr.open_series "
        "(or a series Dataset with variable 'image')"
    )


class Volume:
    """Planes of a DataArray with dims ``(*extra, slice, row, col[, channel])``, read lazily.

    Parameters
    ----------
    da
        The image. A DataArray without ``slice`` is treated as a single slice.
    cache_bytes
        Size of the frame LRU.
    """

    def __init__(self, da: Any, *, cache_bytes: int = 256 * 2**20) -> None:
        missing = [d for d in ("row", "col") if d not in da.dims]
        if missing:
            raise ValueError(
                f"the viewer needs dims 'row' and 'col' (plus 'slice' and any extra dims); this "
                f"array has dims {tuple(map(str, da.dims))}. Rename yours, e.g. "
                "da.rename({'z': 'slice', 'y': 'row', 'x': 'col'})"
            )
        if "slice" not in da.dims:
            da = da.expand_dims("slice", axis=-2 if "channel" not in da.dims else -3)
        self.rgb = "channel" in da.dims
        tail = (*SPATIAL, "channel") if self.rgb else SPATIAL
        extra = tuple(str(d) for d in da.dims if d not in tail)
        da = da.transpose(*extra, *tail)
        if da.chunks is None and not getattr(da.variable, "_in_memory", True):
            # xarray's lazy indexing without dask (xr.open_dataset(..., engine="dicom")):
            # ``.data`` would load the whole array; as one dask chunk a frame is one fused read
            da = da.chunk()
        self.da = da
        self.extra: tuple[str, ...] = extra
        self.sizes: dict[str, int] = {str(d): int(n) for d, n in da.sizes.items()}
        self.lazy = _is_dask(da.data)
        frame_dims = {*extra, "slice"}
        # numpy copies of the per-frame coordinates: xarray's isel costs ~1 ms a coordinate,
        # too much for every slider step
        self._frame_coords: dict[str, tuple[tuple[str, ...], np.ndarray]] = {
            str(name): (tuple(map(str, c.dims)), np.asarray(c.values))
            for name, c in da.coords.items()
            if c.dims and set(c.dims) <= frame_dims
        }
        self.frames = LRU(cache_bytes)
        #: frames read from the array so far (for tests and the status line)
        self.reads = 0

    @property
    def frame_shape(self) -> tuple[int, ...]:
        """Shape of one frame, ``(row, col)`` or ``(row, col, channel)``."""
        return tuple(self.da.shape[len(self.extra) + 1 :])

    def _key(self, extra_idx: tuple[int, ...], s: int) -> tuple[int, ...]:
        return (*extra_idx, int(s))

    def frames_needed(self, extra_idx: tuple[int, ...], fixed: str, index: int) -> list[int]:
        """Slice indices a plane needs (one for the native plane, the whole stack otherwise)."""
        if fixed == "slice":
            return [int(index)]
        return list(range(self.sizes["slice"]))

    def cached(self, extra_idx: tuple[int, ...], slices: Iterable[int]) -> bool:
        """Tell whether every listed frame is in the cache (or the array is in memory)."""
        if not self.lazy:
            return True
        return all(self._key(extra_idx, s) in self.frames for s in slices)

    def load(self, extra_idx: tuple[int, ...], slices: Iterable[int]) -> dict[int, np.ndarray]:
        """Return the frames ``slices`` at ``extra_idx``, reading those not cached in one compute."""
        slices = [int(s) for s in slices]
        out: dict[int, np.ndarray] = {}
        if not self.lazy:
            arr = self.da.data
            for s in slices:
                out[s] = np.asarray(arr[(*extra_idx, s)])
            return out
        missing = []
        for s in slices:
            hit = self.frames.get(self._key(extra_idx, s))
            if hit is None:
                missing.append(s)
            else:
                out[s] = hit
        if missing:
            import dask
            import dask.local
            import dask.threaded

            # The viewer reads in the kernel's own process, where the files were scanned:
            # the schedulers are passed as functions, so that dask neither looks for a
            # distributed client (importing distributed costs a second on first use) nor ships
            # frames to a cluster and back.
            data = self.da.data
            missing = sorted(set(missing))
            computed = []
            # One compute per run of consecutive slices, each a basic slice: dask fuses it
            # into one read of just those frames even when one chunk holds the whole series
            # (open_series' default); a fancy index or several runs in one graph would read
            # that chunk whole.
            for lo, hi in _runs(missing):
                if hi - lo == 1:
                    # the synchronous scheduler saves the thread pool's start-up
                    # (tens of ms a step on a busy 2-core machine)
                    (block,) = dask.compute(data[(*extra_idx, lo)], scheduler=dask.local.get_sync)
                    computed.append(block)
                else:
                    (block,) = dask.compute(
                        data[(*extra_idx, slice(lo, hi))], scheduler=dask.threaded.get
                    )
                    computed.extend(block)
            self.reads += len(missing)
            logger.debug("read %d frame(s) at %s", len(missing), extra_idx)
            for s, frame in zip(missing, computed, strict=True):
                frame = np.asarray(frame)
                frame.setflags(write=False)
                self.frames.put(self._key(extra_idx, s), frame)
                out[s] = frame
        return out

    def plane(self, extra_idx: tuple[int, ...], fixed: str, index: int) -> np.ndarray:
        """Return the 2-D (or 2-D + channel) plane holding ``fixed`` at ``index``.

        Axes are the two other spatial dims in ``(slice, row, col)`` order.
        """
        index = int(index)
        if fixed == "slice":
            return self.load(extra_idx, [index])[index]
        if not self.lazy:
            key: list[Any] = [*extra_idx, slice(None), slice(None), slice(None)]
            key[len(extra_idx) + SPATIAL.index(fixed)] = index
            return np.asarray(self.da.data[tuple(key)])
        frames = self.load(extra_idx, range(self.sizes["slice"]))
        stack = [frames[s] for s in range(self.sizes["slice"])]
        if fixed == "row":
            return np.stack([f[index] for f in stack])
        return np.stack([f[:, index] for f in stack])

    def coords_at(self, extra_idx: tuple[int, ...], s: int) -> dict[str, Any]:
        """Return every coordinate along the frame dims at one frame (for the metadata panel)."""
        sel = dict(zip(self.extra, extra_idx, strict=True))
        sel["slice"] = int(s)
        out: dict[str, Any] = {}
        for name, (dims, values) in self._frame_coords.items():
            value = values[tuple(sel[d] for d in dims)]
            out[name] = value.item() if isinstance(value, np.generic) else value
        return out

    def values_along(self, dim: str) -> Mapping[str, np.ndarray]:
        """1-D coordinates that lie along ``dim`` alone (to label a dim's slider)."""
        out = {}
        for name, coord in self.da.coords.items():
            if coord.dims == (dim,):
                out[str(name)] = np.asarray(coord.values)
        return out


def _is_dask(data: Any) -> bool:
    try:
        import dask.array as dsa
    except ImportError:  # pragma: no cover - dask is a hard dependency
        return False
    return isinstance(data, dsa.Array)


def _runs(indices: list[int]) -> list[tuple[int, int]]:
    """Split sorted unique ``indices`` into ``(start, stop)`` runs of consecutive values."""
    runs: list[tuple[int, int]] = []
    for i in indices:
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs
