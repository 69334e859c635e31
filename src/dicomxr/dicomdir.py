r"""Resolve the files a DICOMDIR references, following nested directory files.

A DICOMDIR (Media Storage Directory, PS3.10 / PS3.3 F) lists the files of a file-set by
ReferencedFileID, a path of up to eight components relative to the *file-set root*: the
folder holding the root DICOMDIR. Some vendors (Philips) split the directory into nested
``DIRFILE``\\ s: a record then references another directory file whose own records are,
again, relative to the file-set root.

References to files that do not exist are returned as a report, never raised: a
DICOMDIR copied without all of its series is common.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import struct
import warnings
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["is_dicomdir", "referenced_files", "referenced_objects"]

_MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
#: directory files nested deeper than this are reported, not followed
_MAX_NESTING = 16


def is_dicomdir(path: str) -> bool:
    """Tell whether a file is a DICOMDIR (Media Storage Directory), from its meta header."""
    from dicomxr._header import read_meta

    meta = read_meta(path)
    if meta is None:
        return False
    sop_class = meta.get(0x00020002, b"").rstrip(b"\x00 ")
    return sop_class == _MEDIA_STORAGE_DIRECTORY.encode()


def _file_id_to_path(root: str, file_id: Any) -> str:
    """Join a ReferencedFileID (str or multi-valued) to the file-set root, case as stored."""
    parts = [file_id] if isinstance(file_id, str) else list(file_id)
    parts = [str(p).strip() for p in parts if str(p).strip()]
    for p in parts:
        # components are CS values (A-Z, 0-9, _); refuse anything that would escape the root
        if p in (".", "..") or "/" in p or "\\" in p or os.sep in p or "\x00" in p:
            raise ValueError(f"invalid ReferencedFileID component {p!r}")
    return os.path.join(root, *parts)


def _resolve_case(path: str) -> str | None:
    """Return ``path`` if it exists, else a case-insensitive match (media are often upper case)."""
    if os.path.exists(path):
        return path
    parent, name = os.path.split(path)
    parent_real = _resolve_case(parent) if parent and parent != path else None
    if parent_real is None or not os.path.isdir(parent_real):
        return None
    try:
        entries = os.listdir(parent_real)
    except OSError:
        return None
    for entry in entries:
        if entry.upper() == name.upper():
            return os.path.join(parent_real, entry)
    return None


def _is_directory_file(ds: Any) -> bool:
    meta = getattr(ds, "file_meta", None)
    sop = meta.get("MediaStorageSOPClassUID") if meta is not None else None
    return str(sop) == _MEDIA_STORAGE_DIRECTORY or "DirectoryRecordSequence" in ds


def referenced_files(
    dicomdir: str | os.PathLike[str], *, root: str | os.PathLike[str] | None = None
) -> tuple[list[str], list[dict[str, str]]]:
    """List the instance files a DICOMDIR references.

    Parameters
    ----------
    dicomdir
        Path of the DICOMDIR (or of a nested directory file).
    root
        The file-set root that ReferencedFileIDs are relative to; default: the folder
        holding ``dicomdir``.

    Returns
    -------
    files : list of str
        Absolute paths of the referenced instance files that exist, in directory order,
        each once.
    dangling : list of dict
        ``{"path", "reason"}`` for every reference that could not be followed (missing
        file, unreadable nested directory file, invalid file ID).

    Examples
    --------
    >>> files, dangling = referenced_files("In/Philips/DICOMDIR")  # doctest: +SKIP
    """
    dicomdir = os.path.abspath(os.fspath(dicomdir))
    root_dir = os.path.abspath(os.fspath(root)) if root is not None else os.path.dirname(dicomdir)
    found = _FileSet(root_dir)
    _visit(found, dicomdir, 0)
    logger.debug(
        "%s: %d referenced files, %d dangling", dicomdir, len(found.files), len(found.dangling)
    )
    return found.files, found.dangling


@dataclass
class _FileSet:
    """What the walk of one file-set has found so far."""

    root: str
    files: list[str] = field(default_factory=list)
    dangling: list[dict[str, str]] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)

    def lost(self, path: str, reason: str) -> None:
        self.dangling.append({"path": path, "reason": reason})

    def enter(self, directory_file: str, depth: int) -> bool:
        """Whether to follow ``directory_file``: not yet seen and not nested too deep."""
        if directory_file in self.seen:
            return False
        self.seen.add(directory_file)
        if depth > _MAX_NESTING:
            self.lost(directory_file, "directory files nested too deep")
            return False
        return True


def _visit(found: _FileSet, directory_file: str, depth: int) -> None:
    """Follow every reference of one directory file (each directory file once)."""
    if not found.enter(directory_file, depth):
        return
    records = _read_records(found, directory_file)
    if records is None:
        return
    followed = _follow_records(found, directory_file, records, depth)
    _follow_recovered(found, directory_file, followed, depth)


def _read_records(found: _FileSet, directory_file: str) -> Any:
    """Read a directory file's DirectoryRecordSequence; ``None`` (reported) if there is none."""
    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(directory_file, force=True)
        records = ds.get("DirectoryRecordSequence")
    except Exception as exc:
        found.lost(directory_file, f"unreadable directory file ({type(exc).__name__}: {exc})")
        return None
    truncated = _truncated_at(directory_file)
    if truncated is not None:
        found.lost(
            directory_file,
            f"truncated directory file (cut short at byte {truncated}; "
            "records past that point are lost)",
        )
    if records is None:
        found.lost(directory_file, "directory file without DirectoryRecordSequence")
    return records


def _record_reference(record: Any) -> tuple[Any, str, Any]:
    """(ReferencedFileID, record type, SOP class in file) of one record; raises if damaged."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # pydicom decodes lazily: a damaged record fails here, not at read time
        file_id = record.get("ReferencedFileID")
        rtype = str(record.get("DirectoryRecordType", "")).strip()
        sop_in_file = record.get("ReferencedSOPClassUIDInFile")
    return file_id, rtype, sop_in_file


def _follow_records(
    found: _FileSet, directory_file: str, records: Any, depth: int
) -> set[tuple[str, ...]]:
    """Follow the references pydicom reads from the records; return the file IDs followed."""
    followed: set[tuple[str, ...]] = set()
    for index, record in enumerate(records):
        try:
            file_id, rtype, sop_in_file = _record_reference(record)
        except Exception as exc:
            found.lost(
                directory_file,
                f"damaged directory record #{index} ({type(exc).__name__}: {exc})",
            )
            continue
        if file_id is None or file_id == "":
            continue
        followed.add(_id_key(file_id))
        _follow(found, directory_file, file_id, rtype, sop_in_file, depth)
    return followed


def _follow_recovered(
    found: _FileSet, directory_file: str, followed: set[tuple[str, ...]], depth: int
) -> None:
    """Follow the references still in the file's bytes that the records did not give."""
    # a damaged item or element length makes pydicom read fewer records (or garbage)
    # without an error: the references still in the bytes are followed and reported
    recovered = []
    for file_id in _raw_file_ids(directory_file):
        if _id_key(file_id) in followed:
            continue
        followed.add(_id_key(file_id))
        recovered.append("/".join(file_id))
        _follow(found, directory_file, file_id, "", None, depth)
    if recovered:
        shown = ", ".join(recovered[:3]) + (", ..." if len(recovered) > 3 else "")
        found.lost(
            directory_file,
            f"damaged directory records: {len(recovered)} reference(s) "
            f"recovered from the file's bytes ({shown})",
        )


def _follow(
    found: _FileSet, directory_file: str, file_id: Any, rtype: str, sop_in_file: Any, depth: int
) -> None:
    """Follow one reference: a nested directory file is visited, an instance file kept."""
    try:
        target = _file_id_to_path(found.root, file_id)
    except (ValueError, TypeError) as exc:
        found.lost(directory_file, str(exc))
        return
    real = _resolve_case(target)
    if real is None:
        found.lost(
            target,
            "dangling DICOMDIR reference "
            f"(the {rtype or 'damaged'} record in {directory_file} names a missing file)",
        )
        return
    problem = _unfollowable(real, rtype)
    if problem is not None:
        found.lost(real, problem)
        return
    if _refers_to_directory_file(rtype, sop_in_file, real):
        _visit(found, real, depth + 1)
        return
    if real not in found.seen:
        found.seen.add(real)
        found.files.append(real)


def _unfollowable(real: str, rtype: str) -> str | None:
    """Why an existing reference cannot be followed (a folder, not a regular file), or ``None``."""
    if os.path.isdir(real):
        return f"DICOMDIR reference to a folder ({rtype} record)"
    if not _is_regular(real):
        # a pipe would block, a device never ends: never opened
        return (
            "DICOMDIR reference to something that is not a regular file "
            "(a pipe, socket, device or link loop): not read"
        )
    return None


def _is_regular(path: str) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def _id_key(file_id: Any) -> tuple[str, ...]:
    parts = [file_id] if isinstance(file_id, str) else list(file_id)
    return tuple(str(p).strip().upper() for p in parts if str(p).strip())


# record types that reference an instance, never a directory file
_INSTANCE_RECORDS = frozenset(
    {"IMAGE", "RT DOSE", "RT STRUCTURE SET", "RT PLAN", "SR DOCUMENT", "PRESENTATION"}
)
# a ReferencedFileID (0004,1500) element: explicit VR LE, explicit VR BE, implicit VR LE
_FILE_ID_PATTERNS = (
    re.compile(rb"\x04\x00\x00\x15CS(..)", re.DOTALL),
    re.compile(rb"\x00\x04\x15\x00CS(..)", re.DOTALL),
    re.compile(rb"\x04\x00\x00\x15(..)\x00\x00", re.DOTALL),
)
_FILE_ID_BYTES = re.compile(rb"[A-Za-z0-9_\\ ]+")
# directory files larger than this are not searched byte by byte
_RAW_SEARCH_LIMIT = 64 << 20


def _raw_file_ids(path: str) -> list[tuple[str, ...]]:
    """Every ReferencedFileID value found in a directory file's bytes, in file order."""
    try:
        if os.path.getsize(path) > _RAW_SEARCH_LIMIT:
            return []
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError:
        return []
    return _file_ids_in(data)


def _file_ids_in(data: bytes) -> list[tuple[str, ...]]:
    """Every ReferencedFileID value found in a directory file's bytes, in file order."""
    out: list[tuple[str, ...]] = []
    for pattern, order in zip(_FILE_ID_PATTERNS, ("<", ">", "<"), strict=True):
        for m in pattern.finditer(data):
            (length,) = struct.unpack(order + "H", m.group(1))
            value = data[m.end() : m.end() + length]
            if not 0 < length <= 8 * 17 or not _FILE_ID_BYTES.fullmatch(value):
                continue
            parts = tuple(p.strip() for p in value.decode("ascii").split("\\") if p.strip())
            if parts:
                out.append(parts)
    return out


def _refers_to_directory_file(rtype: str, sop_in_file: Any, path: str) -> bool:
    """Tell whether a record's referenced file is itself a (nested) directory file."""
    if sop_in_file is not None:
        return str(sop_in_file) == _MEDIA_STORAGE_DIRECTORY
    if rtype.upper() in _INSTANCE_RECORDS:
        return False
    # PATIENT/STUDY/SERIES records referencing a file: only a directory file makes sense,
    # but check its meta header rather than trust the record type
    return is_dicomdir(path)


def _truncated_at(path: str) -> int | None:
    """Offset where a directory file is cut short, or ``None`` if it is complete."""
    from dicomxr._header import read_raw

    raw = read_raw(path, os.path.getsize(path), frozenset(), {}, frozenset())
    if raw is None or raw.truncated_at is None:
        return None
    return raw.truncated_at[1]


# --------------------------------------------------------------------------------------
# a DICOMDIR in an object store or an archive (through fsspec)


def referenced_objects(fs: Any, dicomdir: str) -> tuple[list[str], list[dict[str, str]]]:
    """List the objects a DICOMDIR in an fsspec filesystem references (zip member, S3 object...).

    The same walk as :func:`referenced_files`: nested directory files are followed, file
    IDs are matched case-insensitively (against one listing of the file-set root) and a
    reference to an object that does not exist is reported, not raised.

    Parameters
    ----------
    fs
        The fsspec filesystem holding the file-set.
    dicomdir
        The DICOMDIR's path in ``fs`` (the file-set root is its folder).

    Returns
    -------
    objects : list of str
        Paths in ``fs`` of the referenced instance objects, in directory order, each once.
    dangling : list of dict
        ``{"path", "reason"}`` for every reference that could not be followed.
    """
    root = dicomdir.rpartition("/")[0]
    prefix = f"{root}/" if root else ""
    listing: dict[tuple[str, ...], str] = {}
    for name in fs.find(root or "", withdirs=False):
        name = name.lstrip("/") if not root else name
        if name.startswith(prefix):
            listing.setdefault(_id_key(name[len(prefix) :].split("/")), name)
    found = _FileSet(root)
    _visit_object(fs, found, listing, dicomdir, 0)
    return found.files, found.dangling


def _visit_object(
    fs: Any, found: _FileSet, listing: dict[tuple[str, ...], str], directory_file: str, depth: int
) -> None:
    """Follow every reference of one directory object (each once), as :func:`_visit` does."""
    import io

    import pydicom

    if not found.enter(directory_file, depth):
        return
    try:
        data = fs.cat_file(directory_file)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            records = pydicom.dcmread(io.BytesIO(data), force=True).get("DirectoryRecordSequence")
    except Exception as exc:
        found.lost(directory_file, f"unreadable directory file ({type(exc).__name__}: {exc})")
        return
    if records is None:
        found.lost(directory_file, "directory file without DirectoryRecordSequence")
        records = []
    followed: set[tuple[str, ...]] = set()
    references: list[tuple[Any, str, Any]] = []
    for index, record in enumerate(records):
        try:
            file_id, rtype, sop_in_file = _record_reference(record)
        except Exception as exc:
            found.lost(directory_file, f"damaged directory record #{index} ({exc})")
            continue
        if file_id is not None and file_id != "":
            followed.add(_id_key(file_id))
            references.append((file_id, rtype, sop_in_file))
    recovered = [f for f in _file_ids_in(data) if _id_key(f) not in followed]
    if recovered:
        found.lost(
            directory_file,
            f"damaged directory records: {len(recovered)} reference(s) recovered from the "
            "file's bytes",
        )
    references += [(f, "", None) for f in dict.fromkeys(recovered)]
    for file_id, rtype, sop_in_file in references:
        _follow_object(fs, found, listing, directory_file, file_id, rtype, sop_in_file, depth)


def _follow_object(
    fs: Any,
    found: _FileSet,
    listing: dict[tuple[str, ...], str],
    directory_file: str,
    file_id: Any,
    rtype: str,
    sop_in_file: Any,
    depth: int,
) -> None:
    """Follow one reference of a directory object: visit a nested one, keep an instance."""
    try:
        shown = _file_id_to_path(found.root, file_id).replace(os.sep, "/")
    except (ValueError, TypeError) as exc:
        found.lost(directory_file, str(exc))
        return
    target = listing.get(_id_key(file_id))
    if target is None:
        found.lost(
            shown,
            "dangling DICOMDIR reference "
            f"(the {rtype or 'damaged'} record in {directory_file} names a missing file)",
        )
        return
    if _object_is_directory_file(fs, rtype, sop_in_file, target):
        _visit_object(fs, found, listing, target, depth + 1)
    elif target not in found.seen:
        found.seen.add(target)
        found.files.append(target)


def _object_is_directory_file(fs: Any, rtype: str, sop_in_file: Any, path: str) -> bool:
    if sop_in_file is not None:
        return str(sop_in_file) == _MEDIA_STORAGE_DIRECTORY
    if rtype.upper() in _INSTANCE_RECORDS:
        return False
    try:  # the meta header names the SOP class: a directory file's is Media Storage Directory
        head = fs.cat_file(path, start=0, end=1024)
    except Exception:
        return False
    return head[128:132] == b"DICM" and _MEDIA_STORAGE_DIRECTORY.encode() in head
