"""A :class:`torch.utils.data.Dataset` over a Zarr store written by :func:`dicomxr.convert`.

One sample per series, or per patch when ``patch_size`` is given. A sample is a dict:

- ``"image"``: ``float32`` tensor ``(C, slice, row, col)``; ``C`` is the product of the
  series' other dims (time, echo, channel...; 1 when there is none), flattened in C order;
- ``"label"``: ``int64`` tensor ``(K, slice, row, col)`` when the group holds a variable
  named ``labels`` (or the ``label=`` name) on the image's spatial dims, such as the masks of
  :func:`dicomxr.open_labels` (``K`` = segments) or a label map (``K`` = 1); absent
  otherwise;
- ``"affine"``: ``float64`` tensor ``(4, 4)`` mapping the sample's voxel index
  ``(slice, row, col, 1)`` to patient LPS millimetres (a patch's own affine: its first voxel
  is its origin); ``"affine_ras"`` is the same in RAS (what NIfTI and MONAI use);
- ``"meta"``: a dict of the same keys for every sample (so the default collate works):
  ``group`` (the group path in the store), ``series_key``, ``SeriesInstanceUID``,
  ``Modality``, ``SeriesDescription``, ``start`` (int64 tensor: the patch's first voxel,
  zeros for a whole series), ``shape`` (int64 tensor: the series' spatial shape), plus the
  attrs named by ``metadata=`` (``""`` when a series lacks one).

Reads go straight to Zarr (``zarr.open_group``), opened lazily in each DataLoader worker
process; only the chunks of the requested slab are read (the store has one frame per chunk).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dicomxr.errors import DicomxrError, require

torch = require("torch", extra="torch", purpose="dicomxr.ml.torch")

__all__ = ["ZarrSeriesDataset"]

_SPATIAL = ("slice", "row", "col")
_META = ("series_key", "SeriesInstanceUID", "Modality", "SeriesDescription")
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _store_and_groups(store: str | os.PathLike[str]) -> tuple[Path, list[str]]:
    """Return the Zarr store and its image groups (in the manifest order when there is one)."""
    path = Path(store)
    root = path / "cohort.zarr" if (path / "cohort.zarr").exists() else path
    manifest = path / "manifest.parquet"
    if manifest.exists():
        import pandas as pd

        m = pd.read_parquet(manifest)
        done = m[(m["status"] == "done") & (m["format"] == "zarr")]
        prefix = root.name + "/"
        groups = [o[len(prefix) :] for o in done["output"] if str(o).startswith(prefix)]
        return root, groups

    try:
        top = _open(str(root))
    except Exception as exc:
        raise DicomxrError(
            f"{path} is no Zarr store written by dicomxr.convert(..., format='zarr') "
            f"({type(exc).__name__}: {exc})"
        ) from None
    groups = []
    for name, _ in top.groups():  # one level of patient folders, then the series groups
        stack = [name]
        while stack:
            current = stack.pop()
            group = top[current]
            if "image" in group.array_keys():
                groups.append(current)
            else:
                stack.extend(f"{current}/{k}" for k in sorted(group.group_keys(), reverse=True))
    return root, sorted(groups)


def _open(root: str) -> Any:
    """Open the store read-only, ignoring consolidated metadata.

    A label variable added to a group after the conversion is not in the store's
    consolidated metadata; the groups' own metadata always is up to date.
    """
    import zarr

    try:
        return zarr.open_group(root, mode="r", use_consolidated=False)
    except TypeError:  # zarr 2 has no use_consolidated: it reads the groups' own metadata
        return zarr.open_group(root, mode="r")


def _dims(array: Any) -> tuple[str, ...]:
    """Return the dim names of a Zarr array written by xarray (format 2 or 3)."""
    names = array.attrs.get("_ARRAY_DIMENSIONS") or getattr(
        getattr(array, "metadata", None), "dimension_names", None
    )
    return tuple(names or ())


class ZarrSeriesDataset(torch.utils.data.Dataset):
    """Samples (image, label, affine, metadata) from a cohort converted to Zarr.

    Parameters
    ----------
    store
        The destination of :func:`dicomxr.convert` (its ``manifest.parquet`` lists the
        groups, in order) or the ``cohort.zarr`` store itself (its groups holding an
        ``image`` array are found).
    patch_size
        ``(slice, row, col)`` voxels per sample; ``None`` (default): one sample per whole
        series. Patches start every ``stride`` voxels and the last one of each dim is moved
        back to end at the border, so every voxel is covered; a series smaller than a
        patch is padded with ``pad_value`` at the end.
    stride
        Step between patch starts (default: ``patch_size``, no overlap).
    label
        Name of the label variable in each group (``None``: no label). It must lie on the
        image's ``(slice, row, col)`` (other dims, such as ``segment``, become ``K``).
    metadata
        Extra attrs of each series to put into ``sample["meta"]`` (scalars; ``""`` when
        missing).
    groups
        Only these groups (paths inside the store), in this order.
    transform
        Called with each sample dict; returns the sample (e.g. a MONAI ``Compose`` of
        dict transforms).
    pad_value
        Fill value of the padding of patches larger than their series.

    Examples
    --------
    >>> from torch.utils.data import DataLoader  # doctest: +SKIP
    >>> ds = ZarrSeriesDataset("out", patch_size=(16, 64, 64))  # doctest: +SKIP
    >>> batch = next(iter(DataLoader(ds, batch_size=8, num_workers=2)))  # doctest: +SKIP
    >>> batch["image"].shape  # doctest: +SKIP
    torch.Size([8, 1, 16, 64, 64])
    """

    def __init__(
        self,
        store: str | os.PathLike[str],
        *,
        patch_size: Sequence[int] | None = None,
        stride: Sequence[int] | None = None,
        label: str | None = "labels",
        metadata: Sequence[str] = (),
        groups: Sequence[str] | None = None,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        pad_value: float = 0.0,
    ) -> None:

        root, found = _store_and_groups(store)
        self.root = str(root)
        self.groups = list(groups) if groups is not None else found
        if not self.groups:
            raise DicomxrError(f"no converted series (groups with an 'image' array) in {store}")
        self.patch_size = None if patch_size is None else tuple(int(n) for n in patch_size)
        if self.patch_size is not None and (len(self.patch_size) != 3 or min(self.patch_size) < 1):
            raise ValueError(f"patch_size={patch_size!r}: give (slice, row, col), each >= 1")
        self.stride = self.patch_size if stride is None else tuple(int(n) for n in stride)
        if self.stride is not None and (len(self.stride) != 3 or min(self.stride) < 1):
            raise ValueError(f"stride={stride!r}: give (slice, row, col), each >= 1")
        self.label = label
        self.metadata = tuple(metadata)
        self.transform = transform
        self.pad_value = float(pad_value)
        top = _open(self.root)
        self._series = [self._describe(top, g) for g in self.groups]
        self._index = [
            (k, start)
            for k, info in enumerate(self._series)
            for start in self._starts(info["spatial"])
        ]
        self._top: Any = None
        self._pid: int | None = None

    # -- planning (headers only) -----------------------------------------------------------
    def _describe(self, top: Any, name: str) -> dict[str, Any]:
        group = top[name]
        image = group["image"]
        attrs = dict(image.attrs)
        attrs.pop("_ARRAY_DIMENSIONS", None)
        dims = _dims(image)
        if dims[-3:] != _SPATIAL and not ("channel" in dims and dims[-4:-1] == _SPATIAL):
            raise DicomxrError(
                f"group {name!r}: image dims {dims} do not end with (slice, row, col); "
                "it was not written by dicomxr.convert"
            )
        from dicomxr.attrs import affine_from_attr

        shape = dict(zip(dims, image.shape, strict=True))
        label_dims: tuple[str, ...] = ()
        if self.label is not None and self.label in group.array_keys():
            label_dims = _dims(group[self.label])
            if label_dims[-3:] != _SPATIAL or any(
                group[self.label].shape[label_dims.index(d)] != shape[d] for d in _SPATIAL
            ):
                raise DicomxrError(
                    f"group {name!r}: {self.label!r} on {label_dims} does not lie on the "
                    f"image's (slice, row, col) {tuple(shape[d] for d in _SPATIAL)}; pass "
                    "label= the name of a label variable, or label=None"
                )
        return {
            "name": name,
            "dims": dims,
            "spatial": tuple(shape[d] for d in _SPATIAL),
            "affine": affine_from_attr(attrs["affine"]),
            "attrs": {k: v for k, v in attrs.items() if isinstance(v, (str, int, float))},
            "label": label_dims,
        }

    def _starts(self, spatial: tuple[int, ...]) -> list[tuple[int, ...]]:
        if self.patch_size is None:
            return [(0, 0, 0)]
        per_dim = []
        for n, size, step in zip(spatial, self.patch_size, self.stride, strict=True):
            if n <= size:
                per_dim.append([0])
                continue
            starts = list(range(0, n - size + 1, step))
            if starts[-1] != n - size:
                starts.append(n - size)  # the last patch ends at the border
            per_dim.append(starts)
        return list(itertools.product(*per_dim))

    # -- reading ---------------------------------------------------------------------------
    def _group(self, name: str) -> Any:
        # one handle per process: a DataLoader worker opens its own after the fork/spawn
        if self._top is None or self._pid != os.getpid():
            self._top = _open(self.root)
            self._pid = os.getpid()
        return self._top[name]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_top"] = None
        state["_pid"] = None
        return state

    def __len__(self) -> int:
        return len(self._index)

    def _slab(self, array: Any, dims: tuple[str, ...], start: tuple[int, ...]) -> np.ndarray:
        spatial = dict(zip(_SPATIAL, start, strict=True))
        sizes = self.patch_size
        key = []
        for d in dims:
            if d in spatial:
                i = _SPATIAL.index(d)
                stop = spatial[d] + (sizes[i] if sizes is not None else array.shape[dims.index(d)])
                key.append(slice(spatial[d], stop))
            else:
                key.append(slice(None))
        return np.asarray(array[tuple(key)])

    def _pad(self, values: np.ndarray) -> np.ndarray:
        if self.patch_size is None:
            return values
        missing = [size - n for n, size in zip(values.shape[-3:], self.patch_size, strict=True)]
        if not any(m > 0 for m in missing):
            return values
        widths = [(0, 0)] * (values.ndim - 3) + [(0, max(m, 0)) for m in missing]
        return np.pad(values, widths, constant_values=self.pad_value)

    def __getitem__(self, index: int) -> dict[str, Any]:
        k, start = self._index[index]
        info = self._series[k]
        group = self._group(info["name"])
        dims = info["dims"]
        values = self._slab(group["image"], dims, start)
        if "channel" in dims:  # colour: samples join the other non-spatial dims
            values = np.moveaxis(values, dims.index("channel"), 0)
        image = self._pad(values.reshape((-1, *values.shape[-3:])).astype(np.float32))
        shift = np.eye(4)
        shift[:3, 3] = start
        affine = info["affine"] @ shift
        meta: dict[str, Any] = {"group": info["name"]}
        for name in (*_META, *self.metadata):
            value = info["attrs"].get(name, "")
            meta[name] = value if isinstance(value, (int, float)) else str(value)
        meta["start"] = torch.as_tensor(start, dtype=torch.int64)
        meta["shape"] = torch.as_tensor(info["spatial"], dtype=torch.int64)
        sample: dict[str, Any] = {
            "image": torch.from_numpy(np.ascontiguousarray(image)),
            "affine": torch.from_numpy(affine),
            "affine_ras": torch.from_numpy(_LPS_TO_RAS @ affine),
            "meta": meta,
        }
        if info["label"]:
            mask = self._slab(group[self.label], info["label"], start)
            mask = self._pad(mask.reshape((-1, *mask.shape[-3:])).astype(np.int64))
            sample["label"] = torch.from_numpy(np.ascontiguousarray(mask))
        if self.transform is not None:
            sample = self.transform(sample)
        return sample

    def __repr__(self) -> str:
        what = "series" if self.patch_size is None else f"patches of {self.patch_size}"
        return (
            f"<ZarrSeriesDataset {len(self)} samples ({what}) from {len(self.groups)} series "
            f"in {self.root}>"
        )
