"""The persistent catalog cache: one columnar snapshot of a scan per scanned source.

Like git's index, a snapshot remembers, for every file a scan met, its path, size and
modification time (nanoseconds), and what the scan made of it: a catalog row, or the reason
it was skipped. A rescan walks the source (one ``stat`` per file, which the walk needs
anyway), compares size and mtime with the snapshot in a few vectorised operations, reads
only the files that are new or changed and drops the removed ones.

A snapshot is an Arrow IPC (Feather v2) file, lz4-compressed, one per source and set of
requested keys, in the cache folder (``<user cache dir>/dicomxr/catalog`` by default). Its
schema metadata holds the snapshot format, the dicomxr version and the catalog's columns: a
snapshot written by another version or for other keys is ignored. It is replaced atomically
(:func:`dicomxr._files.atomic_path`), so a process reading it while another writes it sees
the old snapshot or the new one; one that cannot be read is reported with a warning and
the scan reads every file, never failing and never returning a wrong catalog.

Values are stored without pickle (a cache must never execute what it reads): text, integer,
float and boolean columns natively; object columns (tuples, the per-frame tables, requested
keys) dictionary-encoded, each distinct value once, as a list of floats when every value is
a tuple of floats (positions, orientations) and as JSON text otherwise.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import threading
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from dicomxr._files import atomic_path
from dicomxr._version import __version__
from dicomxr.errors import require, user_stacklevel

__all__ = ["CatalogCache", "Snapshot", "default_folder", "prune"]

#: bump when what a snapshot holds changes meaning: older snapshots are then ignored
FORMAT = 2  # 2: the frame_digests column (stored frames of colliding instances)

_META_KEY = b"dicomxr-catalog-snapshot"

#: files modified this close (ns) to the start of the scan may change again within the
#: same timestamp tick (coarse kernel clocks; 2 s on FAT): their entries are not trusted
#: by the next scan, which reads them again (git calls them "racily clean")
RACY_NS = 2_000_000_000

#: the mtime_ns of an entry the next scan must not trust
UNTRUSTED = -1

#: rows per record batch in the file (Arrow's default); a snapshot of more is read in chunks
CHUNK_ROWS = 1 << 16

#: a snapshot not used (read or written) for this many days is removed when a snapshot is
#: next written in its folder
MAX_AGE_DAYS = 90

#: a temporary file of a snapshot write this old (s) was left by a process that was killed
_DEAD_WRITE_S = 24 * 3600


def default_folder() -> str:
    """Return the folder of the default cache (``cache=True``)."""
    from dicomxr.data import cache_dir

    return os.path.join(os.fspath(cache_dir()), "catalog")


class Snapshot:
    """What a snapshot holds, decoded.

    Parameters
    ----------
    frame
        The catalog rows, in the scan's order, with the dtypes they were stored with.
    path_column
        Every file the scan met (rows and skipped files), in the scan's order, as Arrow
        text (binary where some name is not UTF-8); :attr:`paths` as Python strings.
    size, mtime_ns
        Their size and modification time; ``mtime_ns`` is :data:`UNTRUSTED` for an entry
        the next scan must read again.
    reason_column
        Arrow text: null for a file that gave a catalog row (the rows of ``frame`` in
        order), else the reason it was skipped; :attr:`reasons` as a list.

    A rescan of an unchanged source compares the paths in Arrow (:meth:`same_paths`) and
    needs the reasons of the skipped files only (:meth:`skipped`): no Python string is
    made per file.
    """

    def __init__(
        self,
        frame: pd.DataFrame,
        path_column: Any,
        size: np.ndarray,
        mtime_ns: np.ndarray,
        reason_column: Any,
    ) -> None:
        self.frame = frame
        self.path_column = path_column
        self.size = size
        self.mtime_ns = mtime_ns
        self.reason_column = reason_column

    def __len__(self) -> int:
        return len(self.size)

    @functools.cached_property
    def paths(self) -> list[str]:
        """Every file's path, as the scan listed it."""
        return _texts(self.path_column)

    @functools.cached_property
    def reasons(self) -> list[str | None]:
        """``None`` for a file that gave a row, else the reason it was skipped."""
        column = self.reason_column
        return [None] * len(column) if column.null_count == len(column) else column.to_pylist()

    def same_paths(self, paths: list[str]) -> bool:
        """Whether ``paths`` are the snapshot's files, in its order."""
        import pyarrow as pa

        if len(paths) != len(self):
            return False
        if "paths" in self.__dict__ or not pa.types.is_large_string(self.path_column.type):
            return self.paths == paths
        try:
            current = pa.chunked_array([pa.array(paths, pa.large_string())])
        except (UnicodeEncodeError, pa.ArrowException):  # a name that is not UTF-8
            return False
        return bool(current.equals(self.path_column))

    def skipped(self) -> tuple[np.ndarray, list[str]]:
        """Return the positions of the skipped files and their reasons."""
        column = self.reason_column
        if column.null_count == len(column):
            return np.empty(0, np.int64), []
        where = np.flatnonzero(column.is_valid().to_numpy(zero_copy_only=False))
        return where, column.take(where).to_pylist()


class CatalogCache:
    """The snapshot of one source (and set of requested keys) in a cache folder.

    The snapshot is loaded in a background thread from :meth:`open` on (Arrow decodes
    without the GIL), while the scan walks the source; :meth:`snapshot` waits for it.
    """

    def __init__(
        self, folder: str, source: str, signature: tuple[str, ...], keys: tuple[str, ...] = ()
    ) -> None:
        self.signature = list(signature)
        self.source = source
        # named after the source and the requested keys only, not the catalog's columns: the
        # snapshot another dicomxr version wrote for them (other columns) is replaced, not
        # left behind
        digest = hashlib.sha256(json.dumps([source, list(keys)]).encode()).hexdigest()
        self.path = os.path.join(folder, f"snapshot-{digest[:24]}.arrow")
        self._result: Snapshot | None = None
        self._error: str | None = None
        self._thread = threading.Thread(target=self._load, name="dicomxr-cache", daemon=True)

    @classmethod
    def open(
        cls,
        cache: bool | str | os.PathLike[str],
        source: str,
        signature: tuple[str, ...],
        keys: tuple[str, ...] = (),
    ) -> CatalogCache | None:
        """Open the snapshot of ``source`` in the cache folder ``cache`` (``True``: the default).

        Parameters
        ----------
        cache
            ``True`` for :func:`default_folder`, or a folder.
        source
            What identifies the scanned source (absolute paths, options).
        signature
            The catalog's columns (requested keys included): a snapshot is reused only for
            the same ones.
        keys
            The requested keys' names: with ``source``, they name the snapshot's file.

        Returns
        -------
        CatalogCache or None
            ``None`` (with a warning) when the folder cannot be created.
        """
        require("pyarrow", extra="cache", purpose="the persistent catalog cache (cache=)")
        folder = default_folder() if cache is True else os.path.abspath(os.fspath(cache))
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as exc:
            warnings.warn(
                f"catalog cache folder {folder} cannot be used ({exc}); scanning without it",
                RuntimeWarning,
                stacklevel=user_stacklevel(),
            )
            return None
        store = cls(folder, source, signature, keys)
        store._thread.start()
        return store

    def _load(self) -> None:
        try:
            self._result = self._read()
            if self._result is not None:
                os.utime(self.path)  # used: its age counts from now (see prune)
        except Exception as exc:  # a damaged file: whatever Arrow or the decoding says
            self._error = f"{type(exc).__name__}: {exc}"

    def snapshot(self) -> Snapshot | None:
        """Return the decoded snapshot, or ``None`` when there is none that fits.

        A snapshot that cannot be read is reported with a :class:`RuntimeWarning`.
        """
        self._thread.join()
        if self._error is not None:
            warnings.warn(
                f"catalog cache {self.path} is unreadable ({self._error}); reading every "
                "file again",
                RuntimeWarning,
                stacklevel=user_stacklevel(),
            )
            self._error = None
        return self._result

    def _read(self) -> Snapshot | None:
        import pyarrow.feather as feather

        if not os.path.exists(self.path):
            return None
        table = feather.read_table(self.path, memory_map=False)
        meta = json.loads((table.schema.metadata or {}).get(_META_KEY, b"null"))
        if not isinstance(meta, dict) or (
            meta.get("format"),
            meta.get("dicomxr"),
            meta.get("signature"),
            meta.get("source"),
        ) != (FORMAT, __version__, self.signature, self.source):
            return None  # another version's or another source's: rewritten after the scan
        return _decode(table, meta)

    def save(self, frame: pd.DataFrame, entries: Entries) -> None:
        """Write the snapshot of a scan atomically (a warning if it cannot be written).

        Parameters
        ----------
        frame
            The catalog rows (requested keys as object columns of raw values).
        entries
            Every file of the scan, in order; the ``None`` reasons are ``frame``'s rows.
        """
        import pyarrow.feather as feather

        try:
            table = _encode(frame, entries, self.source, self.signature)
            with atomic_path(self.path, suffix=".arrow") as tmp:
                feather.write_feather(table, tmp, compression="lz4", chunksize=CHUNK_ROWS)
            prune(os.path.dirname(self.path))
        except (OSError, ValueError, TypeError, OverflowError) as exc:
            warnings.warn(
                f"catalog cache {self.path} could not be written ({exc})",
                RuntimeWarning,
                stacklevel=user_stacklevel(),
            )


def prune(folder: str | os.PathLike[str], max_age_days: float = MAX_AGE_DAYS) -> list[str]:
    """Remove the snapshots of a cache folder not used for ``max_age_days`` days.

    A snapshot's age counts from the last scan that read or wrote it. Temporary files of
    writes killed more than a day ago go too. Other files in the folder are left alone.
    Called after each snapshot is written; ``max_age_days=0`` empties the cache.

    Parameters
    ----------
    folder
        The cache folder (``cache=`` of :func:`dicomxr.scan`; ``default_folder()`` for
        ``cache=True``).
    max_age_days
        Age, in days, from which a snapshot is removed.

    Returns
    -------
    list of str
        The files removed.
    """
    now = time.time()
    removed: list[str] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        name = entry.name
        if name.startswith("snapshot-") and name.endswith(".arrow"):
            limit = max_age_days * 86400.0
        elif name.startswith(".snapshot-") and name.endswith(".tmp.arrow"):
            limit = min(_DEAD_WRITE_S, max_age_days * 86400.0)
        else:
            continue
        try:
            if now - entry.stat(follow_symlinks=False).st_mtime >= limit:
                os.unlink(entry.path)
                removed.append(entry.path)
        except OSError:  # gone meanwhile (another process pruned it), or not ours to remove
            continue
    return removed


@dataclass
class Entries:
    """Every file of a scan in order: path, size, mtime_ns and ``None`` or a skip reason."""

    paths: Sequence[str]
    size: np.ndarray
    mtime_ns: np.ndarray
    reasons: Sequence[str | None]


def distrust_recent(mtime_ns: np.ndarray, started_ns: int) -> np.ndarray:
    """Mark entries modified within :data:`RACY_NS` of the scan's start as untrusted."""
    out = np.asarray(mtime_ns, dtype=np.int64).copy()
    out[out >= started_ns - RACY_NS] = UNTRUSTED
    return out


def now_ns() -> int:
    """Return the wall clock in ns, as file modification times count it."""
    return time.time_ns()


# ----------------------------------------------------------------------------------------
# encoding


def _encode(frame: pd.DataFrame, entries: Entries, source: str, signature: list[str]) -> Any:
    import pyarrow as pa

    reasons = list(entries.reasons)
    is_row = np.fromiter((r is None for r in reasons), dtype=bool, count=len(reasons))
    if int(is_row.sum()) != len(frame):
        raise ValueError("snapshot entries do not match the catalog rows")
    skip_pos = np.flatnonzero(~is_row)
    row_pos = np.flatnonzero(is_row)
    n_skip = len(skip_pos)
    order = np.concatenate([row_pos, skip_pos])  # rows first, then skipped files
    columns: dict[str, Any] = {}
    encodings: dict[str, str] = {}
    for name in frame.columns:
        if name == "path":
            continue
        columns[name], encodings[name] = _encode_column(frame[name], n_skip)
    paths = [entries.paths[i] for i in order]
    columns["path"] = _text_array(paths)
    columns["_size"] = pa.array(np.asarray(entries.size, dtype=np.int64)[order])
    columns["_mtime_ns"] = pa.array(np.asarray(entries.mtime_ns, dtype=np.int64)[order])
    columns["_reason"] = pa.array([reasons[i] for i in order], pa.large_string())
    columns["_pos"] = pa.array(order.astype(np.int64))
    meta = {
        "format": FORMAT,
        "dicomxr": __version__,
        "signature": signature,
        "source": source,
        "columns": list(frame.columns),
        "dtypes": {name: str(frame[name].dtype) for name in frame.columns},
        "encodings": encodings,
        "path_dtype": str(frame["path"].dtype),
        "n_rows": len(frame),
    }
    return pa.table(columns).replace_schema_metadata({_META_KEY: json.dumps(meta).encode()})


def _text_array(values: Sequence[str]) -> Any:
    """Paths as Arrow text; as bytes when some are not UTF-8 (lone surrogates from the OS)."""
    import pyarrow as pa

    try:
        return pa.array(values, pa.large_string())
    except (UnicodeEncodeError, pa.ArrowException):
        return pa.array([v.encode("utf-8", "surrogatepass") for v in values], pa.large_binary())


def _encode_column(series: pd.Series, pad: int) -> tuple[Any, str]:
    """One catalog column as an Arrow array (``pad`` nulls after), and how to decode it."""
    import pyarrow as pa

    if str(series.dtype) == "object":
        return _encode_objects(series.to_numpy(), pad)
    array, encoding = _encode_typed(series)
    if isinstance(array, pa.ChunkedArray):  # a column that came from a snapshot
        array = array.combine_chunks()
    return pa.concat_arrays([array, pa.nulls(pad, array.type)]), encoding


def _encode_typed(series: pd.Series) -> tuple[Any, str]:
    import pyarrow as pa

    dtype = str(series.dtype)
    if dtype in ("str", "string"):
        return pa.array(series.array, pa.large_string()), "text"
    if dtype == "Int64":
        values = series.array
        return pa.array(values.to_numpy(dtype=np.int64, na_value=0), mask=values.isna()), "int"
    if dtype in ("int64", "float64", "bool"):
        return pa.array(series.to_numpy()), "numpy"
    raise TypeError(f"column {series.name!r} of dtype {dtype} cannot be cached")


def _encode_objects(values: np.ndarray, pad: int) -> tuple[Any, str]:
    """Dictionary-encode an object column: each distinct value once."""
    import pyarrow as pa

    index: dict[str, int] = {}
    by_id: dict[int, int] = {id(None): -1}
    uniques: list[Any] = []
    codes = np.full(len(values) + pad, -1, dtype=np.int32)
    for i, value in enumerate(values):
        # one object is often shared by many rows (the reader's memo, a decoded snapshot)
        code = by_id.get(id(value))
        if code is None:
            key = repr(value)  # strict: 1, 1.0 and True, 0.0 and -0.0 are told apart
            code = index.get(key)
            if code is None:
                code = index[key] = len(uniques)
                uniques.append(value)
            by_id[id(value)] = code
        codes[i] = code
    mask = codes < 0
    indices = pa.array(codes, mask=mask)
    if uniques and all(type(u) is tuple and all(type(x) is float for x in u) for u in uniques):
        dictionary = pa.array([list(u) for u in uniques], pa.large_list(pa.float64()))
        return pa.DictionaryArray.from_arrays(indices, dictionary), "floats"
    texts = [json.dumps(u, allow_nan=True) for u in uniques]
    for text, value in zip(texts, uniques, strict=True):
        if not _same(_from_json(json.loads(text)), value):
            raise TypeError(f"value {value!r} cannot be cached")
    dictionary = pa.array(texts, pa.large_string())
    return pa.DictionaryArray.from_arrays(indices, dictionary), "json"


def _same(a: Any, b: Any) -> bool:
    """Equal values of the same types (NaN equal to NaN)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, float):
        return a == b or (a != a and b != b)
    return bool(a == b)


def _from_json(value: Any) -> Any:
    """JSON's lists back to tuples, at every depth (dict values included)."""
    if isinstance(value, list):
        return tuple(_from_json(v) for v in value)
    if isinstance(value, dict):
        return {k: _from_json(v) for k, v in value.items()}
    return value


# ----------------------------------------------------------------------------------------
# decoding


def _decode(table: Any, meta: dict[str, Any]) -> Snapshot:
    n_rows = int(meta["n_rows"])
    pos = table.column("_pos").to_numpy()
    if len(pos) < n_rows:
        raise ValueError("inconsistent snapshot")
    frame = _decode_frame(table.slice(0, n_rows), meta)
    entries = table.select(["path", "_size", "_mtime_ns", "_reason"])
    if n_rows != len(pos):  # skipped files are stored after the rows: back to file order
        order = np.argsort(pos, kind="stable")
        if not np.array_equal(pos[order], np.arange(len(pos))):
            raise ValueError("inconsistent snapshot positions")
        entries = entries.take(order)
    return Snapshot(
        frame,
        entries.column("path"),
        entries.column("_size").to_numpy(),
        entries.column("_mtime_ns").to_numpy(),
        entries.column("_reason"),
    )


def _decode_frame(rows: Any, meta: dict[str, Any]) -> pd.DataFrame:
    """Rebuild a snapshot's catalog rows with the columns and dtypes they were saved with."""
    data: dict[str, Any] = {}
    for name in meta["columns"]:
        if name == "path":
            data[name] = _path_column(rows.column(name), meta["path_dtype"])
        else:
            data[name] = _decode_column(
                rows.column(name), meta["encodings"][name], meta["dtypes"][name]
            )
    return pd.DataFrame(data, columns=meta["columns"], copy=False)


def _texts(column: Any) -> list[str]:
    """Paths back to Python strings (stored as bytes when some are not UTF-8)."""
    import pyarrow as pa

    values = column.to_pylist()
    if pa.types.is_large_binary(column.type):
        return [v.decode("utf-8", "surrogatepass") for v in values]
    return values


def _path_column(column: Any, dtype: str) -> Any:
    import pyarrow as pa

    if dtype == "object":
        return pd.Series(np.array(_texts(column), dtype=object), dtype=object)
    if not pa.types.is_large_string(column.type):  # not UTF-8: as the scan made them
        return pd.array(_texts(column), dtype=dtype)
    return _decode_column(column, "text", dtype)


def _decode_column(column: Any, encoding: str, dtype: str) -> Any:
    import pyarrow as pa

    if encoding == "text":
        mapper = {pa.large_string(): pd.StringDtype(na_value=np.nan)}.get
        return column.to_pandas(types_mapper=mapper).array.astype(dtype, copy=False)
    if encoding == "int":
        values, valid = _values_and_validity(column.combine_chunks(), np.int64)
        return pd.arrays.IntegerArray(values, ~valid)
    if encoding == "numpy":
        return column.to_numpy(zero_copy_only=False).astype(dtype, copy=False)
    # a Series of objects: the DataFrame takes it as it is (an ndarray of objects would be
    # searched for strings and dates to infer a dtype from, column by column)
    return pd.Series(_decode_objects(column.combine_chunks(), encoding), dtype=object, copy=False)


def _decode_objects(column: Any, encoding: str) -> np.ndarray:
    codes, valid = _values_and_validity(column.indices, np.int32)
    codes[~valid] = -1
    dictionary = column.dictionary
    if encoding == "floats":
        uniques = _float_tuples(dictionary)
    else:
        uniques = [_from_json(json.loads(text)) for text in dictionary.to_pylist()]
    table = np.empty(len(uniques) + 1, dtype=object)  # the last one: None, for code -1
    table[: len(uniques)] = _object_array(uniques)
    return table[codes]


def _values_and_validity(array: Any, dtype: type) -> tuple[np.ndarray, np.ndarray]:
    """Return a primitive Arrow array's values (a writable copy, anything under a null) and validity."""
    n = len(array)
    if n == 0:
        return np.empty(0, dtype), np.empty(0, bool)
    if array.null_count == 0:
        return np.array(array.to_numpy(zero_copy_only=False), dtype), np.ones(n, bool)
    if array.null_count == n:
        return np.zeros(n, dtype), np.zeros(n, bool)
    data = array.buffers()[1]  # the values buffer, nulls included, unlike to_numpy
    values = np.frombuffer(data, dtype=np.dtype(dtype).newbyteorder("<"),
                           count=array.offset + n)[array.offset :].astype(dtype)  # fmt: skip
    return values, array.is_valid().to_numpy(zero_copy_only=False)


def _float_tuples(dictionary: Any) -> list[tuple[float, ...]]:
    """Turn a list<float64> array into tuples of floats, vectorised by length."""
    offsets = dictionary.offsets.to_numpy()
    flat = dictionary.values.to_numpy(zero_copy_only=False)
    lengths = np.diff(offsets)
    out: list[Any] = [None] * len(lengths)
    for length in np.unique(lengths):
        where = np.flatnonzero(lengths == length)
        if length == 0:
            for i in where:
                out[i] = ()
            continue
        starts = offsets[where]
        block = flat[starts[:, None] + np.arange(length)]
        for i, values in zip(where.tolist(), block.tolist(), strict=True):
            out[i] = tuple(values)
    return out


def _object_array(values: list[Any]) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):
        out[i] = value  # tuples stay tuples, not a 2-D array
    return out
