"""The one lazy array: an xarray ``BackendArray`` over a series plan's frame grid.

A :class:`FrameGrid` is the picklable description of one series' pixels: one
:class:`~dicomxr.pixels.FrameRef` per frame (path, frame index, byte offset, layout), the
frame grid (``plan.grid``: an int index into the refs per grid position, ``-1`` where a
frame is missing), the per-frame rescale slope and intercept and the output dtype. It holds
no open file and no pydicom dataset - every read opens its file, reads one frame and closes
it - so it ships to dask.distributed workers as it is. Reads of different files are
independent, which is why no lock is taken: each read uses its own file handle.

:class:`DicomBackendArray` follows xarray's backend contract (as cfgrib's and rioxarray's
array wrappers do) and is the only lazy array: :func:`lazily_indexed` wraps it for an
:class:`xarray.Variable`, and dask appears only when a caller chunks that variable
(:func:`chunk_variable`, which is xarray's own ``Variable.chunk``, i.e.
``dask.array.from_array`` over the lazily indexed array). Why one path:

* a key covering the whole array is one :meth:`FrameGrid.read_all` - every frame read with a
  thread pool straight into one preallocated array, about one plain ``read()`` of the files
  and the array's bytes in memory; a hand-built graph of one task per frame cost twice the
  time and the memory (140 chunks concatenated);
* any other key reads only the frames it touches, so xarray's lazy ``isel`` (no dask) and
  dask's slice fusion (a selection of a one-chunk array becomes one indexed read of the
  backend array) both read one frame for one slice;
* :func:`preferred_chunks` advertises storage (one frame per chunk; MOSAIC: the tiles of one
  stored image) for callers that want per-frame tasks (``chunks={}``, the default of
  :func:`dicomxr.open_series`);
* a dask array made by :func:`chunk_variable` carries :class:`FullRead`'s hooks: computing
  every chunk of the untouched array (``.values``, ``.load()``, ``.compute()``) is one
  :meth:`FrameGrid.read_all` whose chunks are views of one array, returned as it is - the
  per-frame graph stays for every selection and operation.

Missing frames (grid value ``-1``) are filled with NaN; with ``dtype="auto"`` a grid that has
missing frames therefore gets a float dtype (``float32``). With an explicit integer dtype
they are filled with 0.

One unreadable frame does not fail a load. A frame whose pixel data turns out to be
unreadable only when it is decoded (a corrupt compressed stream, a file changed since the
scan; what the header shows is set apart when the series is planned) is a
:class:`~dicomxr.errors.PixelDataWarning` naming the file, the frame and its place in the
array, and that place holds the fill value of missing frames: NaN in a float array, 0 in an
integer one. :attr:`FrameGrid.unreadable` lists them (for reads in this process). To stop at
the first one instead, turn the warning into an error
(``warnings.simplefilter("error", dicomxr.PixelDataWarning)``). Every read path compares
what it got with the frame shape and raises :class:`~dicomxr.errors.PixelDataError` naming
the file rather than reshape another size into the frame. An I/O error (a file removed
since the scan, a remote source that fails mid-read) is raised, not filled: a retry may
succeed, and a filled frame would hide it.

This is the only module that uses ``xarray.core.indexing``.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import logging
import os
import threading
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from xarray.backends import BackendArray
from xarray.core import indexing

from dicomxr import pixels
from dicomxr.errors import PixelDataError, PixelDataWarning, failure_reason, user_stacklevel
from dicomxr.pixels import FrameRef

__all__ = [
    "DicomBackendArray",
    "FrameGrid",
    "FullRead",
    "chunk_variable",
    "join_blocks",
    "lazily_indexed",
    "lazy_array",
    "preferred_chunks",
    "read_whole",
]

logger = logging.getLogger(__name__)


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


#: Threads used by a full read: one per usable core, 2 to 8. Reads release the GIL; from
#: the page cache a read is a copy bound by the cores, and more threads than cores only
#: add switching (8 threads cost ~15% more CPU than 2 on 2 cores for the 140-slice CT).
READ_THREADS = min(8, max(2, _usable_cpus()))
_NATIVE = pixels.NATIVE_SYNTAXES


def _column(frames: Any, name: str) -> list | None:
    if hasattr(frames, "columns"):
        return frames[name].tolist() if name in frames.columns else None
    values = [r.get(name) for r in frames]
    return values if any(v is not None for v in values) else None


def _floats(values: Sequence[Any] | None, n: int, default: float) -> np.ndarray:
    out = np.full(n, default, dtype=np.float64)
    if values is None:
        return out
    if isinstance(values, np.ndarray) and values.dtype.kind in "fiu" and values.shape == (n,):
        finite = np.isfinite(values)
        out[finite] = values[finite]
        return out
    for i, v in enumerate(values):
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if np.isfinite(f):
            out[i] = f
    return out


class FrameGrid:
    """Picklable description of a series' pixels: frame refs, grid, rescale, output dtype.

    Parameters
    ----------
    refs
        One :class:`~dicomxr.pixels.FrameRef` per frame (rows of ``plan.frames``).
    grid
        Integer array; each value is an index into ``refs``, ``-1`` for a missing frame.
    slopes, intercepts
        Per-ref RescaleSlope and RescaleIntercept (NaN or None: 1 and 0), or the factors of
        another linear scaling (:mod:`dicomxr.scaling`).
    mappings
        Per-ref Real World Value Mapping ``(first, last, lut or None)`` (``scaling=
        "real_world"``): stored values outside first..last become NaN, a lookup table
        replaces the slope. ``None``: the linear rescale only.
    mtimes
        Per-ref modification times (for the dask name); ``None`` stats the files.
    etags
        Per-ref version tags of remote objects (the catalog's ``etag``), also in the dask
        name; ``None`` for local files.
    dtype
        ``"auto"`` (see :func:`dicomxr.pixels.rescale_dtype`), or any numpy dtype.
    rescale
        Apply RescaleSlope/RescaleIntercept (default). ``False`` gives stored values.
    """

    def __init__(
        self,
        refs: Sequence[FrameRef],
        grid: np.ndarray,
        *,
        slopes: Sequence[float] | None = None,
        intercepts: Sequence[float] | None = None,
        mappings: Sequence[tuple[float, float, Any] | None] | None = None,
        mtimes: Sequence[float] | None = None,
        dtype: Any = "auto",
        rescale: bool = True,
        etags: Sequence[str | None] | None = None,
    ) -> None:
        self.refs = tuple(refs)
        self.grid = np.asarray(grid, dtype=np.int64)
        if self.grid.size and (self.grid.max() >= len(self.refs) or self.grid.min() < -1):
            raise ValueError("grid values must index the frame refs (or be -1 for missing)")
        n = len(self.refs)
        if not n:
            raise ValueError("a FrameGrid needs at least one frame")
        self.slopes = _floats(slopes, n, 1.0) if rescale else np.ones(n)
        self.intercepts = _floats(intercepts, n, 0.0) if rescale else np.zeros(n)
        self.mappings = tuple(mappings) if mappings is not None and rescale else None
        if self.mappings is not None and len(self.mappings) != n:
            raise ValueError(f"{len(self.mappings)} value mappings for {n} frames")
        #: the :class:`dicomxr.scaling.FrameScaling` that gave the factors (from_plan)
        self.scaling: Any = None
        if mtimes is None:
            mtimes = [_mtime(r.path) for r in self.refs]
        self.mtimes = tuple(float(m) if m is not None else 0.0 for m in mtimes)
        tags = [] if etags is None else [e if isinstance(e, str) else None for e in etags]
        self.etags = tuple(tags) if any(tags) else None
        first = self.refs[0]
        self.frame_shape = pixels.frame_shape(first)
        for ref in self.refs:
            if pixels.frame_shape(ref) != self.frame_shape:
                raise ValueError(
                    f"frames of different shapes in one grid: {ref.path} frame {ref.frame} "
                    f"is {pixels.frame_shape(ref)}, {first.path} is {self.frame_shape}"
                )
        self.stored = self._stored_dtype()
        self.missing = bool((self.grid < 0).any())
        self.dtype = self._output_dtype(dtype)
        self.fill = np.nan if self.dtype.kind in "fc" else 0
        #: ref index -> why its frame could not be read (reads in this process)
        self.unreadable: dict[int, str] = {}
        self._warned = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_warned", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._warned = threading.Lock()

    # -- dtype
    def _stored_dtype(self) -> np.dtype:
        first = self.refs[0]
        if pixels.is_palette(first):
            return pixels.frame_dtype(first)
        if first.BitsAllocated in (32, 64) and first.TransferSyntaxUID in _NATIVE:
            # Float / Double Float Pixel Data share BitsAllocated 32/64 with integers: the
            # element tag (a 12-byte header read, no pixel data) tells them apart
            return pixels.frame_dtype(first)
        dtypes = {pixels.stored_dtype(r) for r in self.refs}
        return np.result_type(*dtypes)

    def _output_dtype(self, dtype: Any) -> np.dtype:
        if not (isinstance(dtype, str) and dtype == "auto"):
            out = np.dtype(dtype)
            if self.mappings is not None and out.kind != "f":
                raise ValueError(f"real-world values need a float dtype, not {out}")
            return out
        if self.mappings is not None:  # real-world values: NaN where nothing is mapped
            return np.dtype(np.float64 if self.stored == np.float64 else np.float32)
        used = np.unique(self.grid[self.grid >= 0])
        first = self.refs[0]
        out = pixels.rescale_dtype(
            self.stored,
            self.slopes[used],
            self.intercepts[used],
            bits_stored=max(r.BitsStored for r in self.refs),
            pixel_representation=first.PixelRepresentation,
        )
        if self.missing and out.kind not in "fc":
            out = np.dtype(np.float32)
        return out

    # -- geometry
    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the whole array: ``grid.shape + frame_shape``."""
        return tuple(self.grid.shape) + tuple(self.frame_shape)

    @property
    def inverted(self) -> bool:
        """Whether the frames are MONOCHROME1 (stored values kept; display inverted)."""
        return any(pixels.is_inverted(r) for r in self.refs)

    @property
    def nbytes(self) -> int:
        """Bytes of the whole array."""
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def token(self) -> str:
        """Deterministic token from paths, mtimes, offsets, grid, rescale and dtype.

        One hash over the bytes of a few arrays and the joined paths: a series of thousands
        of frames tokenizes in well under a millisecond (dask's ``tokenize`` would normalise
        a list of per-frame tuples one by one).
        """
        digest = hashlib.blake2b(digest_size=20)
        places = np.array(
            [(r.frame, r.pixel_data_offset, -1 if r.tile is None else r.tile) for r in self.refs],
            dtype=np.int64,
        )
        paths = "\0".join(r.path for r in self.refs).encode("utf-8", "surrogatepass")
        arrays = (places, np.asarray(self.mtimes, dtype=np.float64), self.grid, self.slopes,
                  self.intercepts)  # fmt: skip
        for part in (paths, *arrays):
            digest.update(repr(getattr(part, "shape", len(part))).encode())
            digest.update(part.tobytes() if isinstance(part, np.ndarray) else part)
        digest.update(repr((self.etags, str(self.dtype), tuple(self.frame_shape))).encode())
        if self.mappings is not None:
            from dask.base import tokenize

            digest.update(
                tokenize(
                    [
                        (lo, hi, None if lut is None else tokenize(lut))
                        for lo, hi, lut in self.mappings
                    ]
                ).encode()
            )
        return digest.hexdigest()

    # -- reading
    def read_frame_into(
        self, index: int, dst: np.ndarray, scratch: np.ndarray | None = None
    ) -> None:
        """Read grid value ``index`` (a ref index, or -1) into the frame-shaped ``dst``.

        ``scratch`` is an optional reusable buffer of the stored dtype and frame size, used
        when the stored values cannot land in ``dst`` itself (a wider or float output). A
        frame that cannot be read is filled (see :meth:`set_unreadable`).
        """
        if index < 0:
            dst[...] = self.fill
            return
        try:
            self._read_frame_into(index, dst, scratch)
        except PixelDataError as exc:
            self.set_unreadable(index, exc, dst)

    def _read_frame_into(self, index: int, dst: np.ndarray, scratch: np.ndarray | None) -> None:
        ref = self.refs[index]
        slope, intercept = self.slopes[index], self.intercepts[index]
        native = (
            ref.TransferSyntaxUID in _NATIVE
            and not ref.is_mosaic_tile
            and not pixels.is_palette(ref)
        )
        if (
            native
            and self.mappings is None
            and dst.flags.c_contiguous
            and self.stored.itemsize == self.dtype.itemsize
            and (self.dtype.kind in "iu" or self.dtype == self.stored)
        ):
            # stored values land in dst itself; the rescale is then done in place
            self.check_frame(pixels.read_frame(ref, out=dst.view(self.stored)), ref)
            pixels.apply_rescale(
                dst.view(self.stored), slope, intercept, self.dtype, out=dst.view(self.dtype)
            )
            return
        if native and scratch is not None and scratch.dtype == pixels.stored_dtype(ref):
            arr = pixels.read_frame(ref, out=scratch)
        else:
            arr = pixels.read_frame(ref)
        self._apply(self.check_frame(arr, ref), index, dst)

    def _apply(self, arr: np.ndarray, index: int, out: np.ndarray) -> None:
        """Turn stored values of ref ``index`` into output values in ``out`` (rescale or mapping)."""
        if self.mappings is not None and self.mappings[index] is not None:
            lo, hi, lut = self.mappings[index]
            pixels.apply_value_mapping(
                arr, lo, hi, self.dtype, lut=lut, slope=self.slopes[index],
                intercept=self.intercepts[index], out=out,
            )  # fmt: skip
            return
        pixels.apply_rescale(arr, self.slopes[index], self.intercepts[index], self.dtype, out=out)

    def check_frame(self, arr: np.ndarray, ref: FrameRef) -> np.ndarray:
        """Return ``arr`` if it has the grid's frame shape, else raise a ``PixelDataError``.

        A decoder that returns another size than the header describes must not be reshaped
        or broadcast into the frame.
        """
        if tuple(arr.shape) != tuple(self.frame_shape):
            raise PixelDataError(
                f"{ref.path}: frame {ref.frame} decoded to shape {tuple(arr.shape)}, the "
                f"series' frames are {tuple(self.frame_shape)}: not read"
            )
        return arr

    def set_unreadable(self, index: int, exc: BaseException, dst: np.ndarray) -> None:
        """Fill ``dst`` for ref ``index`` whose frame failed, record it and warn once.

        The warning names the file, the frame, its place in the grid and the fill value;
        ``warnings.simplefilter("error", PixelDataWarning)`` makes it raise instead.
        """
        dst[...] = self.fill
        ref = self.refs[index]
        reason = failure_reason(exc, limit=300)
        with self._warned:
            first = index not in self.unreadable
            self.unreadable[index] = reason
        if not first:
            return
        places = [tuple(int(v) for v in p) for p in np.argwhere(self.grid == index)[:3]]
        where = ", ".join(str(p) for p in places) or "none"
        fill = "NaN" if self.dtype.kind in "fc" else repr(self.fill)
        warnings.warn(
            f"{ref.path}: frame {ref.frame} cannot be read and is set apart from the loaded "
            f"array: its place (grid position {where}) holds {fill} ({reason})",
            PixelDataWarning,
            stacklevel=user_stacklevel(),
        )

    def read_block(self, grid_index: tuple) -> np.ndarray:
        """Read the frames of ``grid[grid_index]`` (basic or outer indexing) into one array."""
        sub = np.asarray(self.grid[grid_index])
        out = np.empty(sub.shape + tuple(self.frame_shape), dtype=self.dtype)
        self._read_many(sub.reshape(-1), out.reshape((-1, *self.frame_shape)))
        return out

    def read_all(self) -> np.ndarray:
        """Read every frame into one preallocated array (threads, no per-frame copies)."""
        out = np.empty(self.shape, dtype=self.dtype)
        self._read_many(self.grid.reshape(-1), out.reshape((-1, *self.frame_shape)))
        return out

    def _read_many(self, indices: np.ndarray, out: np.ndarray) -> None:
        """Read ref ``indices[k]`` into ``out[k]`` for every k, with a thread pool.

        The work is split into one batch per thread; each batch reuses one scratch buffer,
        so a full read allocates nothing per frame.
        """
        if len(indices) == 0:
            return
        units: list[tuple[str, Any]] = []
        groups: dict[tuple, list[int]] = {}
        files: dict[str, list[int]] = {}
        for k, i in enumerate(indices):
            ref = self.refs[i] if i >= 0 else None
            if ref is not None and ref.is_mosaic_tile:
                # one decode per mosaic image, however many of its tiles are wanted
                key = (ref.path, ref.frame)
                if key not in groups:
                    groups[key] = []
                    units.append(("mosaic", groups[key]))
                groups[key].append(k)
            elif ref is not None and ref.NumberOfFrames > 1 and pixels.is_encapsulated(ref):
                files.setdefault(ref.path, []).append(k)
            else:
                units.append(("frame", k))
        for ks in files.values():
            # compressed multi-frame: one pass over the fragments of the file
            units.extend([("frame", ks[0])] if len(ks) == 1 else [("file", ks)])
        nthreads = min(READ_THREADS, len(units))

        def run(batch: list[tuple[str, Any]]) -> None:
            scratch = None
            if self.stored.itemsize != self.dtype.itemsize or self.dtype.kind == "f":
                rows, cols = self.frame_shape[:2]
                size = rows * cols * (self.frame_shape[2] if len(self.frame_shape) > 2 else 1)
                scratch = np.empty(size, dtype=self.stored).reshape(self.frame_shape)
            for kind, item in batch:
                if kind == "frame":
                    self.read_frame_into(int(indices[item]), out[item], scratch)
                elif kind == "file":
                    self._read_file(indices, item, out)
                else:
                    self._read_mosaic(indices, item, out)

        if nthreads == 1:
            run(units)
            return
        with ThreadPoolExecutor(max_workers=nthreads) as pool:
            futures = [pool.submit(run, units[b::nthreads]) for b in range(nthreads)]
            for fut in futures:
                fut.result()

    def _read_file(self, indices: np.ndarray, ks: list[int], out: np.ndarray) -> None:
        """Read several frames of one encapsulated file in one pass (:func:`pixels.read_frames`).

        When the pass fails, the frames it did not deliver are read one by one, so one
        corrupt fragment costs only its own frame.
        """
        slots: dict[int, list[int]] = {}
        for k in ks:
            slots.setdefault(self.refs[indices[k]].frame, []).append(k)
        first = self.refs[indices[ks[0]]]
        done: set[int] = set()
        try:
            for frame, arr in pixels.read_frames(first, slots):
                for k in slots[frame]:
                    i = int(indices[k])
                    self._apply(self.check_frame(arr, self.refs[i]), i, out[k])
                done.add(frame)
        except (PixelDataError, OSError):
            for frame, frame_ks in slots.items():
                if frame not in done:
                    for k in frame_ks:
                        self.read_frame_into(int(indices[k]), out[k])

    def _read_mosaic(self, indices: np.ndarray, ks: list[int], out: np.ndarray) -> None:
        first = self.refs[indices[ks[0]]]
        try:
            image = pixels.read_frame(first.whole_image())
            if tuple(image.shape[:2]) != (first.stored_rows, first.stored_cols):
                raise PixelDataError(
                    f"{first.path}: MOSAIC image decoded to shape {tuple(image.shape)}, the "
                    f"header describes {(first.stored_rows, first.stored_cols)}: not read"
                )
        except PixelDataError as exc:
            for k in ks:
                self.set_unreadable(int(indices[k]), exc, out[k])
            return
        for k in ks:
            i = int(indices[k])
            try:
                tile = self.check_frame(pixels.mosaic_tile(image, self.refs[i]), self.refs[i])
            except PixelDataError as exc:
                self.set_unreadable(i, exc, out[k])
                continue
            self._apply(tile, i, out[k])

    def __repr__(self) -> str:
        return (
            f"<FrameGrid {len(self.refs)} frames, grid {self.grid.shape}, "
            f"frame {self.frame_shape}, {self.stored} -> {self.dtype}>"
        )

    @classmethod
    def from_plan(
        cls,
        plan: Any,
        *,
        dtype: Any = "auto",
        rescale: bool = True,
        storage_options: Any = None,
        scaling: str = "display",
    ) -> FrameGrid:
        """Build from a ``SeriesPlan`` (or anything with ``frames``, ``grid``, ``frame_shape``).

        ``storage_options`` (fsspec options for URL paths) default to the catalog's, which
        ``dicomxr.scan`` of a remote source keeps in ``attrs["storage_options"]``.
        ``scaling`` (:data:`dicomxr.scaling.SCALINGS`) chooses the per-frame factors; the
        :class:`~dicomxr.scaling.FrameScaling` is kept as ``.scaling``.
        """
        from dicomxr.scaling import check_scaling, frame_scaling

        scaling = check_scaling(scaling)
        if not rescale and scaling != "display":
            from dicomxr.errors import ScalingError

            raise ScalingError(
                f"rescale=False gives stored values; scaling={scaling!r} needs rescale=True"
            )
        # the plan's light table when it has one: no DataFrame of every column is made
        frames = getattr(plan, "frame_table", None)
        if frames is None:
            frames = plan.frames
        if storage_options is None:
            storage_options = getattr(frames, "attrs", {}).get("storage_options")
        grid = np.asarray(plan.grid)
        refs = pixels.frame_refs(frames, storage_options=storage_options)
        factors = frame_scaling(
            frames, scaling, used=grid[grid >= 0], what=f"series {getattr(plan, 'key', '?')}",
            pixel_representation=refs[0].PixelRepresentation if refs else 0,
        )  # fmt: skip
        fg = cls(
            refs,
            grid,
            slopes=factors.slopes,
            intercepts=factors.intercepts,
            mappings=factors.mappings,
            mtimes=_column(frames, "mtime"),
            dtype=dtype,
            rescale=rescale,
            etags=_column(frames, "etag"),
        )
        fg.scaling = factors
        expected = tuple(getattr(plan, "frame_shape", fg.frame_shape) or fg.frame_shape)
        if tuple(fg.frame_shape[:2]) != expected[:2]:
            raise ValueError(
                f"plan frame_shape {expected} differs from the frames' {fg.frame_shape}"
            )
        return fg


def _mtime(path: str) -> float | None:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


# ----------------------------------------------------------------------------- dask


def _read_chunk(spec: FrameGrid, position: tuple[int, ...]) -> np.ndarray:
    out = np.empty((1,) * len(position) + tuple(spec.frame_shape), dtype=spec.dtype)
    spec.read_frame_into(int(spec.grid[position]), out.reshape(spec.frame_shape))
    return out


def _stored_frame_runs(spec: FrameGrid) -> tuple[int, ...] | None:
    """Chunk sizes along ``slice`` that keep each MOSAIC image's tiles together, or None.

    ``None`` (one frame per chunk) unless the grid holds MOSAIC tiles and every row of the
    grid splits into the same runs of tiles from one stored image.
    """
    if spec.grid.size == 0 or not any(r.is_mosaic_tile for r in spec.refs):
        return None
    rows = spec.grid.reshape(-1, spec.grid.shape[-1])
    pattern: tuple[int, ...] | None = None
    for row in rows:
        sources = [(spec.refs[i].path, spec.refs[i].frame) if i >= 0 else None for i in row]
        runs: list[int] = []
        for k, source in enumerate(sources):
            if k and source is not None and source == sources[k - 1]:
                runs[-1] += 1
            else:
                runs.append(1)
        if pattern is None:
            pattern = tuple(runs)
        elif tuple(runs) != pattern:
            return None
    return pattern if pattern and len(pattern) < spec.grid.shape[-1] else None


# ----------------------------------------------------------------------------- xarray


class DicomBackendArray(BackendArray):
    """The lazy array: an :class:`xarray.backends.BackendArray` over a plan's frame grid.

    Picklable (it holds a :class:`FrameGrid`: paths, offsets, no open handles) and
    tokenized by dask from the paths, modification times, offsets and dtype. Wrap it as
    xarray backends do, with :func:`lazily_indexed`. A key covering the whole array reads
    every frame with a thread pool into one preallocated array (:meth:`FrameGrid.read_all`);
    any other key reads only the frames it touches.

    Parameters
    ----------
    spec
        A :class:`FrameGrid` or a ``SeriesPlan``.
    dtype, rescale, scaling
        As for :meth:`FrameGrid.from_plan` (used when ``spec`` is a plan).
    """

    def __init__(
        self,
        spec: FrameGrid | Any,
        *,
        dtype: Any = "auto",
        rescale: bool = True,
        scaling: str = "display",
    ) -> None:
        if not isinstance(spec, FrameGrid):
            spec = FrameGrid.from_plan(spec, dtype=dtype, rescale=rescale, scaling=scaling)
        self.spec = spec
        self.shape = spec.shape
        self.dtype = spec.dtype

    def __dask_tokenize__(self) -> tuple[str, str]:
        return ("dicomxr.DicomBackendArray", self.spec.token())

    def __getitem__(self, key: Any) -> np.ndarray:
        return indexing.explicit_indexing_adapter(
            key, self.shape, indexing.IndexingSupport.OUTER, self._raw_indexing_method
        )

    def _raw_indexing_method(self, key: tuple) -> np.ndarray:
        if _covers(key, self.shape):
            return self.spec.read_all()
        ng = self.spec.grid.ndim
        block = self._read_grid(key[:ng])
        return _index_frames(block, key[ng:], len(self.spec.frame_shape))

    def _read_grid(self, grid_key: tuple) -> np.ndarray:
        """Read the frames an outer key on the grid touches; integer keys drop their axis."""
        arrays = []
        drop = []
        for axis, k in enumerate(grid_key):
            if isinstance(k, (int, np.integer)):
                arrays.append(np.array([k]))
                drop.append(axis)
            elif isinstance(k, slice):
                arrays.append(np.arange(self.spec.grid.shape[axis])[k])
            else:
                arrays.append(np.asarray(k))
        block = self.spec.read_block(np.ix_(*arrays) if arrays else ())
        if drop:
            block = block.reshape(tuple(s for a, s in enumerate(block.shape) if a not in drop))
        return block


def _covers(key: tuple, shape: tuple[int, ...]) -> bool:
    """Whether an outer key selects the whole array in order (plain or normalised slices)."""
    return len(key) == len(shape) and all(
        isinstance(k, slice) and k.indices(n) == (0, n, 1) for k, n in zip(key, shape, strict=True)
    )


def _index_frames(block: np.ndarray, frame_key: tuple, frame_ndim: int) -> np.ndarray:
    """Apply the in-frame part of an outer key to a block of whole frames."""
    lead = block.ndim - frame_ndim
    # last axis first, so that an integer key dropping an axis moves no other
    for axis in reversed(range(len(frame_key))):
        k = frame_key[axis]
        if isinstance(k, slice) and k == slice(None):
            continue
        index = [slice(None)] * block.ndim
        index[lead + axis] = k
        block = block[tuple(index)]
    return block


def lazily_indexed(backend: DicomBackendArray) -> Any:
    """Wrap ``backend`` for an :class:`xarray.Variable`, as xarray's own backends do.

    Indexing the variable then stays lazy (keys compose); loading it indexes the backend
    array once. This is the one use of ``xarray.core.indexing`` outside the backend array.
    """
    return indexing.LazilyIndexedArray(backend)


def preferred_chunks(spec: FrameGrid, dims: Sequence[str]) -> dict[str, Any]:
    """Chunks that follow storage: one frame per chunk along the frame dims.

    MOSAIC tiles of one stored image are one stored frame: along ``slice`` (the last frame
    dim) the chunks are then the runs of tiles (a tuple). The in-frame dims are whole.
    """
    ng = spec.grid.ndim
    chunks: dict[str, Any] = {}
    for axis, (dim, size) in enumerate(zip(dims, spec.shape, strict=True)):
        chunks[dim] = 1 if axis < ng else size
    runs = _stored_frame_runs(spec)
    if runs is not None:
        chunks[dims[ng - 1]] = runs
    return chunks


def chunk_variable(variable: Any, backend: DicomBackendArray, chunks: Any) -> Any:
    """Return ``variable`` (over ``backend``) as dask, chunked by xarray (``dask.array.from_array``).

    Parameters
    ----------
    variable
        An :class:`xarray.Variable` whose data is :func:`lazily_indexed` ``(backend)``, with
        ``encoding["preferred_chunks"]``.
    backend
        Its backend array (the dask name is derived from its token and the chunks).
    chunks
        ``"series"``: one chunk for the whole array, so a compute is one full read and a
        selection is fused by dask into one read of the frames it touches. A mapping:
        chunk sizes per dim, the preferred chunks (one frame) for dims it does not name
        (``{}``: the preferred chunks). Anything else (``"auto"``, an int) goes to
        :meth:`xarray.Variable.chunk` as it is.
    """
    from dask.base import tokenize

    preferred = variable.encoding.get("preferred_chunks", {})
    if isinstance(chunks, str) and chunks == "series":
        chunks = dict.fromkeys(variable.dims, -1)
    elif isinstance(chunks, Mapping):
        chunks = {**preferred, **chunks}
    name = f"dicomxr-image-{tokenize(backend, str(chunks))}"
    chunked = variable.chunk(chunks, name=name)
    FullRead.attach(chunked.data, backend)
    return chunked


# ----------------------------------------------------------------------------- full read


class FullRead:
    """The fast whole-array compute of a freshly chunked series (dask hooks on one array).

    A dask array over :class:`DicomBackendArray` has one task per chunk (one frame per
    chunk by default), so that any selection - also after a flip, arithmetic or a
    resampling - reads only the frames it touches. Computing *every* chunk that way costs
    twice the array's bytes (the chunks, then dask's concatenation) and the time of one
    scheduled task per frame. :meth:`attach` gives the freshly made array two hooks of the
    dask collection protocol, as instance attributes, so that its type stays
    ``dask.array.Array`` (xarray refuses to mix chunked array types in one Dataset):

    * ``__dask_optimize__`` (:meth:`optimize`): when the keys asked for need every chunk of
      the untouched graph (``.values``, ``.load()``, ``.compute()``, ``np.asarray``,
      ``dask.compute(arr)``, ``.persist()``), the per-frame graph is replaced by one task,
      :meth:`FrameGrid.read_all` (a thread pool reading every frame into one preallocated
      array), and one task per chunk key returning a numpy *view* of it. Anything else goes
      to dask's own optimization unchanged.
    * ``__dask_postcompute__`` (:meth:`postcompute`): :func:`join_blocks` returns the one
      array the views tile instead of concatenating them; if the chunks are not views of
      one array (the per-frame graph ran, or the views were pickled between worker
      processes) it is dask's concatenation.

    Every dask operation (``isel``, arithmetic, ``rechunk``) makes a new array without the
    hooks, and a pickled array comes back without them, so laziness after a selection is
    dask's own; a deep copy (xarray's ``DataArray.copy()``) keeps them. ``dask.compute(image)`` on the *xarray* object goes through
    xarray's Dataset-level optimizer (dask's default) and computes per frame; the
    finalizer still applies, so the result is right, at ~2x the bytes.
    """

    def __init__(self, array: Any, backend: DicomBackendArray) -> None:
        self.backend = backend
        self.name = array.name
        self.shape = tuple(array.shape)
        self.chunks = array.chunks
        self.graph = array.dask
        self.meta = array._meta
        # identity of the layers: a graph built from anything else is not rewritten
        self.layers = dict(array.dask.layers)

    @functools.cached_property
    def keys(self) -> list[tuple[Any, ...]]:
        """The array's chunk keys in C order (``flatten(array.__dask_keys__())``).

        Made from the name and the chunks when first needed (a compute), not at open.
        """
        ranges = (range(len(c)) for c in self.chunks)
        return [(self.name, *index) for index in itertools.product(*ranges)]

    @functools.cached_property
    def key_set(self) -> frozenset[tuple[Any, ...]]:
        """:attr:`keys` as a set."""
        return frozenset(self.keys)

    @classmethod
    def attach(cls, array: Any, backend: DicomBackendArray) -> Any:
        """Give the dask ``array`` (a chunking of ``backend``, as made) the full-read hooks."""
        if tuple(array.shape) != tuple(backend.shape) or not hasattr(array, "dask"):
            return array
        hooks = cls(array, backend)
        array.__dask_optimize__ = hooks.optimize
        array.__dask_postcompute__ = hooks.postcompute
        # ``copy.deepcopy`` (xarray's ``DataArray.copy()``) looks this up on the instance
        array.__deepcopy__ = hooks.deepcopy
        return array

    @staticmethod
    def attached(array: Any) -> bool:
        """Whether ``array`` carries the hooks: computing all of it is one full read."""
        hook = getattr(array, "__dict__", {}).get("__dask_optimize__")
        return isinstance(getattr(hook, "__self__", None), FullRead)

    def deepcopy(self, memo: dict) -> Any:
        """Return the same array again, with the hooks (dask's deep copy would drop them)."""
        import dask.array

        return FullRead.attach(
            dask.array.Array(self.graph, self.name, self.chunks, meta=self.meta), self.backend
        )

    def __dask_tokenize__(self) -> tuple[str, str]:
        return ("dicomxr.FullRead", self.name)

    def optimize(self, dsk: Any, keys: Any, **kwargs: Any) -> Any:
        """One full read when ``keys`` need every chunk; dask's optimization otherwise."""
        graph = self._full_read_graph(dsk, keys)
        if graph is not None:
            return graph
        import dask.array

        return dask.array.Array.__dask_optimize__(dsk, keys, **kwargs)

    def postcompute(self) -> tuple[Any, tuple]:
        """``(join_blocks, (shape, chunks))``: the finalizer dask calls with the chunks."""
        return join_blocks, (self.shape, self.chunks)

    def _full_read_graph(self, dsk: Any, keys: Any) -> dict | None:
        """Return the rewritten graph, or None when the graph or keys are not the whole array.

        ``dsk`` must hold this array's own layers (the very objects) and at most a few small
        layers dask adds (the finalize task); together the keys and those layers' tasks must
        need every chunk.
        """
        from dask._task_spec import Task, TaskRef
        from dask.array.core import slices_from_chunks
        from dask.base import tokenize
        from dask.core import flatten

        layers = getattr(dsk, "layers", None)
        if layers is None or any(layers.get(n) is not lay for n, lay in self.layers.items()):
            return None
        wanted = {k for k in flatten(keys) if k in self.key_set}
        extra: dict[Any, Any] = {}
        for name, layer in layers.items():
            if name in self.layers:
                continue
            if len(layer) > 16:
                return None
            for key, task in dict(layer).items():
                deps = getattr(task, "dependencies", None)
                if deps is None:
                    return None
                extra[key] = task
                wanted.update(k for k in deps if k in self.key_set)
        if len(wanted) != len(self.key_set):
            return None
        read_key = f"dicomxr-read-{tokenize(self.name)}"
        graph: dict[Any, Any] = {read_key: Task(read_key, read_whole, self.backend)}
        finals = [
            key
            for key, task in extra.items()
            if getattr(task, "func", None) is join_blocks and set(task.dependencies) == self.key_set
        ]
        if (
            finals
            and len(finals) == len(extra)
            and not any(k in self.key_set for k in flatten(keys))
        ):
            # a compute of this array alone: its finalize task is the read itself (two tasks)
            for key in finals:
                graph[key] = Task(key, _whole, TaskRef(read_key), self.shape)
            return graph
        for key, index in zip(self.keys, slices_from_chunks(self.chunks), strict=True):
            graph[key] = Task(key, _block_view, TaskRef(read_key), index)
        graph.update(extra)
        return graph


def read_whole(backend: DicomBackendArray) -> np.ndarray:
    """Every frame of ``backend`` in one preallocated array (:meth:`FrameGrid.read_all`)."""
    return backend.spec.read_all()


def _block_view(whole: np.ndarray, index: tuple[slice, ...]) -> np.ndarray:
    return whole[index]


def _whole(whole: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if whole.shape != tuple(shape):  # pragma: no cover - read_all returns the whole shape
        raise ValueError(f"full read of shape {whole.shape}, expected {tuple(shape)}")
    return whole


def join_blocks(results: Any, shape: tuple[int, ...], chunks: tuple) -> Any:
    """Finalize a compute: the one array the chunk results are views of, else concatenate.

    Parameters
    ----------
    results
        The chunk results, nested lists as ``__dask_keys__()``.
    shape, chunks
        The array's shape and chunks: each result must be the view of its block.
    """
    from dask.array.core import finalize, slices_from_chunks
    from dask.core import flatten

    blocks = list(flatten(results, container=list))
    indices = list(slices_from_chunks(chunks))
    whole = getattr(blocks[0], "base", None) if blocks else None
    if (
        not isinstance(whole, np.ndarray)
        or whole.shape != tuple(shape)
        or len(blocks) != len(indices)
        or not all(_is_view_of(b, whole, i) for b, i in zip(blocks, indices, strict=True))
    ):
        return finalize(results)
    return whole


def _is_view_of(block: Any, whole: np.ndarray, index: tuple[slice, ...]) -> bool:
    """Whether ``block`` is exactly ``whole[index]`` (same memory, shape and strides)."""
    if not isinstance(block, np.ndarray) or block.base is not whole:
        return False
    expected = whole[index]
    return (
        block.shape == expected.shape
        and block.strides == expected.strides
        and block.__array_interface__["data"][0] == expected.__array_interface__["data"][0]
    )


def lazy_array(
    plan: Any,
    *,
    dtype: Any = "auto",
    rescale: bool = True,
    chunks: Any = None,
    scaling: str = "display",
) -> Any:
    """Return the lazy backend array of a series plan as a :class:`dask.array.Array`.

    The same path as :func:`dicomxr.open_series`: a :class:`DicomBackendArray`, chunked by
    xarray (:func:`chunk_variable`); a convenience for dask users and tests.

    Parameters
    ----------
    plan
        A ``SeriesPlan`` (``frames``, ``grid``, ``frame_shape``) or a :class:`FrameGrid`.
    dtype
        ``"auto"`` (default): stored dtype when nothing is rescaled, an integer dtype when
        every RescaleSlope is 1 and every RescaleIntercept integral (and the result fits),
        ``float32`` otherwise, and ``float32`` when the grid has missing frames (filled with
        NaN). Any numpy dtype forces it (missing frames are 0 in an integer dtype).
    rescale
        Apply RescaleSlope/RescaleIntercept per frame (default), or return stored values.
    chunks
        ``None`` (default): one frame per chunk (MOSAIC: one stored image per chunk);
        ``"series"``: one chunk; or as for :func:`chunk_variable`.
    scaling
        ``"display"`` (default), ``"precise"`` or ``"real_world"``: see
        :mod:`dicomxr.scaling` (a plan only).

    Returns
    -------
    dask.array.Array
        Shape ``grid.shape + frame_shape``, a name derived from paths, mtimes and chunks.

    Examples
    --------
    >>> import dicomxr
    >>> plan = dicomxr.plan_series(dicomxr.scan(dicomxr.data.sample_path()))[0]  # doctest: +SKIP
    >>> arr = lazy_array(plan)  # doctest: +SKIP
    >>> arr[0, 10].compute().shape  # reads one frame  # doctest: +SKIP
    (96, 96)
    """
    import xarray as xr

    if isinstance(plan, FrameGrid) and not (isinstance(dtype, str) and dtype == "auto"):
        plan = FrameGrid(
            plan.refs, plan.grid, slopes=plan.slopes, intercepts=plan.intercepts,
            mappings=plan.mappings, mtimes=plan.mtimes, dtype=dtype, rescale=rescale,
            etags=plan.etags,
        )  # fmt: skip
    backend = DicomBackendArray(plan, dtype=dtype, rescale=rescale, scaling=scaling)
    dims = tuple(f"dim_{i}" for i in range(len(backend.shape)))
    variable = xr.Variable(
        dims,
        lazily_indexed(backend),
        encoding={"preferred_chunks": preferred_chunks(backend.spec, dims)},
    )
    return chunk_variable(variable, backend, {} if chunks is None else chunks).data
