"""Where the bytes come from: local files, archives and object stores through fsspec.

The catalog, the pixel reader and the lazy array read files by *path*. A path is either a
local file (read with ``os.open``/``open``, today's fast path, untouched by this module) or a
URL that :mod:`fsspec` opens: ``s3://bucket/prefix/obj.dcm``, ``https://host/x.dcm``,
``gs://...``, a member of a zip archive as an fsspec chained URL
(``zip://series/1.dcm::s3://bucket/study.zip``, ``zip://1.dcm::/data/study.zip``) - anything
with an fsspec implementation installed.

This module turns a *source* (a URL, a prefix, a glob, a zip file or a list of those) into
one :class:`Entry` per object - its URL, size, modification time and ETag, as the store
reports them - and reads byte ranges of one object:

* :class:`HeadReader` serves the header scan: it fetches a head block of each object
  (:data:`HEAD_BYTES`) and extends it only when the header runs past it, so a scan reads
  the first bytes of every object and never the pixel data;
* :class:`RangeFile` is a read-only, seekable file object over ranged reads
  (``fs.cat_file(path, start, end)``), used by :mod:`dicomxr.pixels` to read one frame's
  bytes at compute time.

Nothing here keeps an open handle or a filesystem object across calls that must pickle:
the lazy array carries URLs and the ``storage_options`` dict, and the filesystem is looked
up again (fsspec caches its instances per process) where the bytes are read - in a
dask.distributed worker as well as here.

HTTP(S) has no listing API: an ``http(s)://`` URL is one file, a URL ending in ``/`` is a
folder whose index page links its files (what ``python -m http.server``, nginx
``autoindex`` and Apache ``mod_autoindex`` serve; sub-folders are followed when
``recursive``), and a list of URLs names the files explicitly.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from dicomxr.errors import DicomxrError, MissingDependencyError, failure_reason

__all__ = [
    "HEAD_BYTES",
    "Entry",
    "HeadReader",
    "RangeFile",
    "SourceError",
    "filesystem",
    "is_remote_source",
    "is_url",
    "open_file",
    "resolve",
]

#: First block fetched of every object by a remote header scan; more is fetched only when
#: the header runs past it (doubling each time), never the pixel data.
HEAD_BYTES = 32 * 1024
#: Read-ahead of :class:`RangeFile`: a small read (an element header) fetches this much,
#: which usually holds a whole small frame as well.
READAHEAD_BYTES = 64 * 1024

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
_GLOB_CHARS = frozenset("*?[")


class SourceError(DicomxrError, OSError):
    """A remote source cannot be listed or read (unreachable server, refused credentials).

    Also an :class:`OSError`. The message names the URL and what went wrong. A missing
    object, prefix or bucket raises :class:`FileNotFoundError` instead, as for a local path.
    """


@dataclass(frozen=True, slots=True)
class Entry:
    """One object of a source.

    Parameters
    ----------
    url
        The URL the catalog stores as ``path`` (an fsspec chained URL for archive members).
    size
        Size in bytes, ``None`` when the listing did not say (HTTP index pages).
    mtime
        Modification time as POSIX seconds (S3 ``LastModified``, HTTP ``Last-Modified``,
        a zip member's date), 0.0 when unknown.
    etag
        The store's version tag (S3/HTTP ``ETag``, a zip member's CRC-32), ``None`` when
        unknown.
    """

    url: str
    size: int | None
    mtime: float
    etag: str | None


# ----------------------------------------------------------------------------- naming


def is_url(path: str) -> bool:
    """Whether ``path`` is an fsspec URL (``proto://...`` or a ``::`` chain), not a local path.

    ``file://`` URLs count as URLs; :func:`local_path` turns them into local paths.
    """
    return "://" in path and (_URL.match(path) is not None or "::" in path)


def local_path(path: str) -> str | None:
    """Return the local path of a plain ``file://`` URL or of a path, ``None`` for any other URL."""
    if not is_url(path):
        return path
    if path.startswith("file://") and "::" not in path:
        return path[len("file://") :]
    if path.startswith("local://") and "::" not in path:
        return path[len("local://") :]
    return None


def _is_zip_name(path: str) -> bool:
    return path.lower().rstrip("/").endswith(".zip")


def is_remote_source(source: Any) -> bool:
    """Whether a ``scan`` source must be read through fsspec rather than the local fast path.

    True for URLs other than plain ``file://`` ones, for a local ``.zip`` file, and for a
    list whose items all are such sources.
    """
    if isinstance(source, (str, os.PathLike)):
        return _item_is_remote(os.fspath(source))
    if isinstance(source, (list, tuple)) and source:
        kinds = {_item_is_remote(os.fspath(s)) for s in source if isinstance(s, (str, os.PathLike))}
        if kinds == {True}:
            return True
        if kinds == {True, False}:
            raise ValueError(
                "scan() got a list mixing URLs (or zip files) and local paths; scan them "
                "separately and join the catalogs with pandas.concat"
            )
    return False


def _item_is_remote(item: str) -> bool:
    if isinstance(item, bytes):
        return False
    local = local_path(item)
    if local is None:
        return True
    local = os.path.expanduser(local)
    return _is_zip_name(local) and os.path.isfile(local)


# ----------------------------------------------------------------------------- filesystems


def filesystem(url: str, storage_options: Mapping[str, Any] | None = None) -> tuple[Any, str]:
    """Return ``(fsspec filesystem, path inside it)`` for a URL.

    fsspec caches filesystem instances by their arguments, so calling this for every read
    costs a dictionary lookup once the first call made the instance.
    """
    import fsspec.core

    try:
        return fsspec.core.url_to_fs(url, **dict(storage_options or {}))
    except ImportError as exc:
        # fsspec knows the protocol but not its package (s3fs, gcsfs, aiohttp...)
        raise MissingDependencyError(
            f"{url}: {exc}; for s3:// and http(s):// install `pip install 'dicomxr[remote]'`"
        ) from exc


def _protocol(url: str) -> str:
    match = _URL.match(url)
    return url[: match.end() - 3] if match else "file"


def _archive_chain(
    url: str, storage_options: Mapping[str, Any] | None
) -> tuple[str, dict[str, Any]]:
    """Return the ``zip://*::<url>`` chain of a zip file, with its options keyed for the chain.

    fsspec hands un-keyed options of a chained URL to its first (outer) layer, the zip one;
    options meant for the store that holds the archive go under its protocol's name.
    """
    options = dict(storage_options or {})
    target = _protocol(url) if is_url(url) else "file"
    if options and target not in options:
        options = {target: options}
    if not is_url(url):
        url = os.path.abspath(os.path.expanduser(url))
    return f"zip://::{url}", options


def _member_url(chain_url: str, fs: Any, path: str) -> str:
    """URL of ``path`` inside the outer layer of a chained URL (``zip://m::s3://b/x.zip``)."""
    tail = chain_url.split("::", 1)[1]
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return f"{protocol}://{path.lstrip('/')}::{tail}"


# ----------------------------------------------------------------------------- listing


def resolve(
    source: Any,
    storage_options: Mapping[str, Any] | None = None,
    *,
    recursive: bool = True,
    skipped_out: list[dict[str, str]] | None = None,
) -> tuple[list[Entry], dict[str, Any]]:
    """List the objects of a remote or packed source.

    Parameters
    ----------
    source
        A URL of one object, of a prefix/folder (listed recursively when ``recursive``), a
        glob URL (``s3://bucket/*/1.*.dcm``), a zip file (local path or URL), an fsspec
        chained URL (``zip://*.dcm::s3://bucket/x.zip``), or a list of those.
    storage_options
        Passed to fsspec (``{"anon": True}``, ``{"client_kwargs": {"endpoint_url": ...}}``,
        ...). For a chained URL, fsspec's convention applies: options keyed by protocol go
        to that layer (``{"s3": {...}}``).
    recursive
        Descend into sub-prefixes and sub-folders.
    skipped_out
        Gets ``{"path", "reason"}`` for each reference a DICOMDIR source names that cannot
        be followed (a missing object, a damaged record).

    A DICOMDIR object (``s3://bucket/prefix/DICOMDIR``, ``zip://DICOMDIR::study.zip``) is
    followed as a local one is: its entries are the objects it references (nested
    directory files followed), not the directory file itself.

    Returns
    -------
    entries, storage_options
        One :class:`Entry` per object, and the options every entry's URL opens with (zip
        files get their options keyed for the chain).

    Raises
    ------
    FileNotFoundError
        The object, prefix or bucket does not exist, or a pattern matches nothing.
    SourceError
        The store cannot be reached or refuses the listing; the message names the URL.
    """
    items = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    entries: list[Entry] = []
    options_out: dict[str, Any] | None = None
    for item in items:
        found, options = _resolve_one(
            os.fspath(item), storage_options, recursive, [] if skipped_out is None else skipped_out
        )
        if options_out is None:
            options_out = options
        elif options != options_out:
            raise ValueError(
                "scan() got a list of sources that need different storage options (zip "
                "files and plain objects); scan them separately and join the catalogs"
            )
        entries.extend(found)
    return entries, dict(options_out or {})


def _resolve_one(
    url: str,
    storage_options: Mapping[str, Any] | None,
    recursive: bool,
    skipped_out: list[dict[str, str]],
) -> tuple[list[Entry], dict[str, Any]]:
    local = local_path(url)
    if local is not None:
        # a local zip file (is_remote_source said so)
        url, options = _archive_chain(local, storage_options)
        return _list(url, options, recursive, skipped_out), options
    options = dict(storage_options or {})
    if "::" not in url and _is_zip_name(url) and not any(c in url for c in _GLOB_CHARS):
        fs, path = _connect(url, options)
        info = _info(fs, path, url)
        if info.get("type") != "directory":
            url, options = _archive_chain(url, options)
    return _list(url, options, recursive, skipped_out), options


def _connect(url: str, options: Mapping[str, Any]) -> tuple[Any, str]:
    try:
        return filesystem(url, options)
    except (FileNotFoundError, ImportError, ValueError, TypeError):
        raise
    except Exception as exc:  # a zip that is no zip, a store that refuses the connection
        raise SourceError(f"{url}: cannot be opened ({failure_reason(exc)})") from exc


def _info(fs: Any, path: str, url: str) -> dict[str, Any]:
    try:
        return fs.info(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"no such object, prefix or bucket: {url!r}") from None
    except Exception as exc:
        raise _source_error(url, exc) from exc


def _source_error(url: str, exc: BaseException) -> SourceError:
    return SourceError(
        f"{url}: cannot be listed ({failure_reason(exc)}); check the URL, that the server "
        "is reachable and the storage_options (endpoint, credentials)"
    )


def _list(
    url: str,
    options: Mapping[str, Any],
    recursive: bool,
    skipped_out: list[dict[str, str]] | None = None,
) -> list[Entry]:
    fs, path = _connect(url, options)
    chained = "::" in url
    try:
        if any(c in path for c in _GLOB_CHARS):
            found = fs.glob(path, detail=True)
            if not found:
                raise FileNotFoundError(f"no objects match the pattern {url!r}")
            infos: dict[str, dict[str, Any]] = {}
            for name, info in found.items():
                if info.get("type") == "directory":
                    infos.update(_find(fs, name, recursive))
                else:
                    infos[name] = info
        elif chained and path in ("", "/"):
            infos = _find(fs, "", recursive)
        elif path.endswith("/") and _protocol(url) in ("http", "https"):
            infos = _find(fs, path, recursive)
        else:
            info = _info(fs, path, url)
            if info.get("type") == "directory":
                infos = _find(fs, path, recursive)
            elif path.rpartition("/")[2].upper() == "DICOMDIR":
                infos = _dicomdir_objects(fs, path, url, skipped_out)
            else:
                infos = {path: info}
    except (FileNotFoundError, SourceError):
        raise
    except Exception as exc:
        raise _source_error(url, exc) from exc
    out = []
    # a DICOMDIR's objects in directory order, as for a local one; a listing sorted
    for name in infos if _is_dicomdir_listing(infos) else sorted(infos):
        info = infos[name]
        member_url = _member_url(url, fs, name) if chained else fs.unstrip_protocol(name)
        out.append(Entry(member_url, _size(info), _mtime(info), _etag(info)))
    return out


class _DicomdirObjects(dict):
    """The objects a DICOMDIR references, in directory order."""


def _is_dicomdir_listing(infos: Mapping[str, Any]) -> bool:
    return isinstance(infos, _DicomdirObjects)


def _dicomdir_objects(
    fs: Any, path: str, url: str, skipped_out: list[dict[str, str]] | None
) -> dict[str, dict[str, Any]]:
    """Follow a DICOMDIR object: the infos of the objects it references."""
    from dicomxr import dicomdir

    objects, dangling = dicomdir.referenced_objects(fs, path)
    if skipped_out is not None:
        for item in dangling:
            where = item["path"]
            shown = _member_url(url, fs, where) if "::" in url else fs.unstrip_protocol(where)
            skipped_out.append({"path": shown, "reason": item["reason"]})
    infos = _DicomdirObjects()
    for name in objects:
        infos[name] = _info(fs, name, name)
    return infos


def _find(fs: Any, path: str, recursive: bool) -> dict[str, dict[str, Any]]:
    found = fs.find(path, maxdepth=None if recursive else 1, withdirs=False, detail=True)
    return {name: info for name, info in found.items() if info.get("type") != "directory"}


def _size(info: Mapping[str, Any]) -> int | None:
    for key in ("size", "Size", "file_size", "Content-Length"):
        value = info.get(key)
        if value is not None:
            try:
                return int(value)
            except (TypeError, ValueError):
                continue
    return None


def _mtime(info: Mapping[str, Any]) -> float:
    for key in ("mtime", "LastModified", "last_modified", "Last-Modified", "updated", "created"):
        value = info.get(key)
        if value is None:
            continue
        if isinstance(value, _dt.datetime):
            if value.tzinfo is None:
                value = value.replace(tzinfo=_dt.UTC)
            return value.timestamp()
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            import email.utils

            try:
                return email.utils.parsedate_to_datetime(value).timestamp()
            except (TypeError, ValueError):
                pass
            try:
                return _dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    stamp = info.get("date_time")  # a zip member (local time, 2-second resolution)
    if isinstance(stamp, (tuple, list)) and len(stamp) == 6:
        try:
            return _dt.datetime(*stamp, tzinfo=_dt.UTC).timestamp()
        except (TypeError, ValueError):
            pass
    return 0.0


def _etag(info: Mapping[str, Any]) -> str | None:
    for key in ("ETag", "etag", "md5Hash", "md5", "checksum"):
        value = info.get(key)
        if value:
            return str(value).strip('"')
    crc = info.get("CRC")
    if crc is not None:
        return f"crc32:{int(crc):08x}"
    return None


# ----------------------------------------------------------------------------- ranged reads


def _fetch(fs: Any, path: str, start: int, end: int) -> bytes:
    """Bytes ``[start, end)`` of one object (fewer at its end)."""
    if end <= start:
        return b""
    data = fs.cat_file(path, start=start, end=end)
    if len(data) > end - start:
        # a server that ignores Range requests sends the whole object
        data = data[start:end]
    return bytes(data)


class HeadReader:
    """The start of one object for the header reader, fetched in as few requests as it can.

    :func:`dicomxr._header.read_raw` reads through :meth:`pread`: a first block of
    ``head`` bytes, then whatever the header walk needs past it (the contiguous head grows by
    doubling; a jump far ahead, over a long value, fetches only around the jump).

    Parameters
    ----------
    fs, path
        The fsspec filesystem and the path inside it.
    size
        The object's size in bytes.
    head
        Bytes of the first fetch.
    """

    __slots__ = ("fetched", "fs", "head", "path", "requests", "size")

    def __init__(self, fs: Any, path: str, size: int, head: int = HEAD_BYTES) -> None:
        self.fs = fs
        self.path = path
        self.size = size
        self.head = _fetch(fs, path, 0, min(size, head))
        self.fetched = len(self.head)
        self.requests = 1

    def pread(self, n: int, offset: int) -> bytes:
        """Return up to ``n`` bytes at ``offset`` (fewer at the end of the object)."""
        end = min(offset + n, self.size)
        have = len(self.head)
        if end <= have:
            return self.head[offset:end]
        if offset <= have:
            grow = min(self.size, max(end, 2 * have))
            more = _fetch(self.fs, self.path, have, grow)
            self.fetched += len(more)
            self.requests += 1
            self.head += more
            return self.head[offset:end]
        data = _fetch(self.fs, self.path, offset, end)
        self.fetched += len(data)
        self.requests += 1
        return data

    # a file-object face for the pydicom fallback (big endian, deflated, odd files)
    def file(self) -> RangeFile:
        """Return a :class:`RangeFile` over the same object that starts from the fetched head."""
        return RangeFile(self.fs, self.path, self.size, prefetched=self.head)


class RangeFile:
    """A read-only, seekable binary file over ranged reads of one object.

    Small reads fetch :data:`READAHEAD_BYTES` at once; a large read is one request of its
    own length. Used for frame reads at compute time and for pydicom on a remote header.

    Parameters
    ----------
    fs, path
        The fsspec filesystem and the path inside it.
    size
        The object's size, when known; otherwise asked of the store on first need.
    url
        The URL to name in error messages (``name``).
    prefetched
        Bytes already read from offset 0.
    readahead
        Fetch :data:`READAHEAD_BYTES` for a small read (default); ``False`` fetches exactly
        what each read asks (the native frame reader: an element header, then the frame).
    """

    def __init__(
        self,
        fs: Any,
        path: str,
        size: int | None = None,
        *,
        url: str | None = None,
        prefetched: bytes = b"",
        readahead: bool = True,
    ) -> None:
        self.fs = fs
        self.readahead = readahead
        self.path = path
        self.name = url or path
        self._size = size
        self._pos = 0
        self._base = 0
        self._buf = prefetched
        self.closed = False

    @property
    def size(self) -> int:
        """The object's size in bytes."""
        if self._size is None:
            self._size = int(self.fs.size(self.path))
        return self._size

    def seekable(self) -> bool:
        """Return True: any position can be read."""
        return True

    def readable(self) -> bool:
        """Return True."""
        return True

    def tell(self) -> int:
        """Return the current position."""
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        """Move to ``offset`` (from the start, the current position or the end)."""
        if whence == os.SEEK_SET:
            pos = offset
        elif whence == os.SEEK_CUR:
            pos = self._pos + offset
        elif whence == os.SEEK_END:
            pos = self.size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if pos < 0:
            raise ValueError(f"negative seek position {pos}")
        self._pos = pos
        return pos

    def read(self, n: int = -1) -> bytes:
        """Read up to ``n`` bytes (all that is left when ``n`` < 0)."""
        if n is None or n < 0:
            n = max(self.size - self._pos, 0)
        data = self._read_at(self._pos, n)
        self._pos += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        """Read into a writable buffer; return the number of bytes read."""
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    def _read_at(self, pos: int, n: int) -> bytes:
        if n <= 0:
            return b""
        start = pos - self._base
        if 0 <= start and pos + n <= self._base + len(self._buf):
            return self._buf[start : start + n]
        if not self.readahead or n >= READAHEAD_BYTES:
            # exactly what is asked (a frame's bytes): a server that ignores Range answers
            # with the whole object, which _fetch slices as long as the request ends inside it
            end = pos + n if self._size is None else min(pos + n, self._size)
        else:
            # small reads (pydicom walking a header, fragment item headers) come in runs:
            # fetch a block, bounded by the object's size (asked once when not known)
            end = min(pos + READAHEAD_BYTES, self.size)
        data = _fetch(self.fs, self.path, pos, end)
        if n < READAHEAD_BYTES:
            self._base, self._buf = pos, data
        return data[:n]

    def close(self) -> None:
        """Drop the read-ahead buffer (there is no handle to close)."""
        self.closed = True
        self._buf = b""

    def __enter__(self) -> RangeFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_file(
    path: str,
    storage_options: Mapping[str, Any] | None = None,
    *,
    size: int | None = None,
    buffering: int = -1,
) -> Any:
    """Open a local path with :func:`open`, a URL as a :class:`RangeFile` (binary, read-only).

    ``buffering=0`` opens a URL without read-ahead (each read is one exact ranged request).
    """
    if not is_url(path):
        return open(path, "rb", buffering=buffering)
    local = local_path(path)
    if local is not None:
        return open(local, "rb", buffering=buffering)
    try:
        fs, inner = filesystem(path, storage_options)
    except FileNotFoundError:
        raise FileNotFoundError(f"no such object: {path!r}") from None
    return RangeFile(fs, inner, size, url=path, readahead=buffering != 0)


@contextlib.contextmanager
def readable(path: str, storage_options: Mapping[str, Any] | None = None) -> Iterator[Any]:
    """Yield what :func:`pydicom.dcmread` should read: a local path as is, a URL as a file.

    For the few places that parse a whole header with pydicom (enhanced functional groups,
    CSA headers, BIDS sidecar fields), so that they read remote objects by byte range too.
    """
    path = os.fspath(path)
    local = local_path(path)
    if local is not None:
        yield local
        return
    with open_file(path, storage_options) as f:
        yield f
