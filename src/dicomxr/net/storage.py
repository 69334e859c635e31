"""Where fetched instances land: ``dest/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm``.

Every name built from a value sent by the peer is sanitised (a hostile ``../../x`` UID
cannot leave ``dest``), every file is written under a temporary name in its final folder
and renamed into place (``os.replace``), so a file under its final name is always complete;
a transfer interrupted by Ctrl-C, a timeout or a dead peer leaves only complete files, and
fetching again skips them (resume).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import struct
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = [
    "DicomStorage",
    "InstanceWriter",
    "RetrieveReport",
    "SpareFile",
    "file_meta_bytes",
    "safe_name",
]

PART_SUFFIX = ".part"
# a temporary file not written for this long is a leftover (else: another retrieval's)
STALE_PART = 120.0
_SAFE = re.compile(r"[^A-Za-z0-9._-]")
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def safe_name(value: object, *, fallback: str = "unknown") -> str:
    """Turn a value sent by a peer (normally a UID) into a safe single path component.

    Well-formed UIDs (digits and dots, at most 64 characters) are kept as they are.
    Anything else has every character outside ``[A-Za-z0-9._-]`` replaced by ``_``, leading
    dots stripped (no ``.``/``..``/hidden names), is cut to 64 characters and gets a short
    hash of the original appended, so two different hostile values never share a name.

    Examples
    --------
    >>> safe_name("1.2.840.10008.5.1.4.1.1.2")
    '1.2.840.10008.5.1.4.1.1.2'
    >>> safe_name("../../x").startswith("_.._x-")
    True
    """
    text = "" if value is None else str(value).strip().strip("\x00").strip()
    if text and len(text) <= 64 and _UID.match(text):
        return text
    if not text:
        return fallback
    cleaned = _SAFE.sub("_", text).lstrip(".")[:64] or "_"
    digest = hashlib.sha1(text.encode("utf-8", "surrogateescape")).hexdigest()[:10]
    return f"{cleaned}-{digest}"


def _element(group: int, elem: int, vr: bytes, value: bytes) -> bytes:
    if vr in (b"OB", b"OW", b"UN", b"SQ", b"UT"):
        return struct.pack("<HH2sHI", group, elem, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", group, elem, vr, len(value)) + value


def _text(value: str, pad: bytes) -> bytes:
    raw = value.encode("ascii", "replace")
    return raw + pad if len(raw) % 2 else raw


def file_meta_bytes(
    sop_class: str, sop_instance: str, transfer_syntax: str, source_ae: str = ""
) -> bytes:
    """Return the preamble, ``DICM`` and File Meta Information of a received instance.

    Hand-encoded (explicit VR little endian, group 0002): pydicom's generic writer costs
    about as much per image as the rest of the receive path together.
    """
    from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

    body = b"".join(
        (
            _element(0x0002, 0x0001, b"OB", b"\x00\x01"),
            _element(0x0002, 0x0002, b"UI", _text(sop_class, b"\x00")),
            _element(0x0002, 0x0003, b"UI", _text(sop_instance, b"\x00")),
            _element(0x0002, 0x0010, b"UI", _text(transfer_syntax, b"\x00")),
            _element(0x0002, 0x0012, b"UI", _text(PYNETDICOM_IMPLEMENTATION_UID, b"\x00")),
            _element(0x0002, 0x0013, b"SH", _text(PYNETDICOM_IMPLEMENTATION_VERSION, b" ")),
            *(
                (_element(0x0002, 0x0016, b"AE", _text(source_ae.strip(), b" ")),)
                if source_ae.strip()
                else ()
            ),
        )
    )
    group_length = _element(0x0002, 0x0000, b"UL", struct.pack("<I", len(body)))
    return b"\x00" * 128 + b"DICM" + group_length + body


@dataclass
class RetrieveReport:
    """What a retrieval did.

    Attributes
    ----------
    dest
        The destination folder.
    requested
        SOPInstanceUIDs the plan asked for (all of them, including those already on disk).
    skipped
        Instances already on disk before the transfer (resume).
    received
        Paths written by this transfer.
    failed, warning, completed
        Sub-operation counts from the peer's final response (summed over associations).
    missing
        Requested instances still not on disk after the transfer.
    status
        Final status of the peer, as a short text per association.
    cancelled
        True when the transfer was cancelled (Ctrl-C).
    """

    dest: Path
    requested: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    received: list[Path] = field(default_factory=list)
    failed: int = 0
    warning: int = 0
    completed: int = 0
    missing: list[str] = field(default_factory=list)
    status: list[str] = field(default_factory=list)
    cancelled: bool = False
    unexpected: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when every requested instance is on disk and no sub-operation failed."""
        return not self.missing and not self.failed and not self.cancelled

    @property
    def images_per_second(self) -> float:
        """Received instances per second of transfer."""
        return len(self.received) / self.seconds if self.seconds > 0 else float("nan")

    def summary(self) -> str:
        """One line for logs and error messages."""
        parts = [
            f"{len(self.received)} received",
            f"{len(self.skipped)} already on disk",
            f"{len(self.missing)} missing",
        ]
        if self.failed:
            parts.append(f"{self.failed} failed sub-operation(s)")
        if self.warning:
            parts.append(f"{self.warning} warning(s)")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unrequested instance(s) kept")
        if self.cancelled:
            parts.append("cancelled")
        return f"{len(self.requested)} requested: " + ", ".join(parts)

    def __repr__(self) -> str:
        return f"<RetrieveReport {self.summary()} -> {self.dest}>"


class DicomStorage:
    """The destination folder of a retrieval; thread-safe atomic writes.

    Parameters
    ----------
    dest
        Root folder; created when missing.
    """

    def __init__(self, dest: str | os.PathLike) -> None:
        self.root = Path(dest).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._folders: dict[tuple[str, str], Path] = {}
        self._made: set[Path] = set()
        self._parts: set[Path] = set()  # temporary files made here and not yet renamed
        self.written: list[Path] = []
        self.written_uids: list[str] = []

    def folder(self, study_uid: object, series_uid: object) -> Path:
        """Return the series folder ``root/<study>/<series>``; always inside :attr:`root`."""
        key = (str(study_uid), str(series_uid))
        folder = self._folders.get(key)
        if folder is None:
            folder = (
                self.root
                / safe_name(study_uid, fallback="unknown-study")
                / safe_name(series_uid, fallback="unknown-series")
            )
            # belt and braces: safe_name already forbids separators and leading dots
            if self.root not in folder.resolve().parents:
                raise ValueError(f"refusing to write outside {self.root}: {folder}")
            self._folders[key] = folder
        return folder

    def path_for(self, study_uid: object, series_uid: object, sop_uid: object) -> Path:
        """Return the final path of an instance; always inside :attr:`root`."""
        name = safe_name(sop_uid, fallback="unknown-instance") + ".dcm"
        return self.folder(study_uid, series_uid) / name

    def exists(self, study_uid: object, series_uid: object, sop_uid: object) -> bool:
        """Return True when the instance is already on disk under its final name."""
        return os.path.isfile(self.path_for(study_uid, series_uid, sop_uid))

    def write(
        self,
        study_uid: object,
        series_uid: object,
        sop_uid: object,
        data: bytes | Iterable[bytes],
    ) -> Path:
        """Write one encoded instance (DICOM file bytes, or chunks of them) atomically."""
        final = self.path_for(study_uid, series_uid, sop_uid)
        folder = final.parent
        if folder not in self._made:
            folder.mkdir(parents=True, exist_ok=True)
            self._made.add(folder)
        tmp = folder / f".{final.name}.{uuid.uuid4().hex[:8]}{PART_SUFFIX}"
        self._parts.add(tmp)
        try:
            with open(tmp, "wb") as fh:
                if isinstance(data, (bytes, bytearray, memoryview)):
                    fh.write(data)
                else:
                    for chunk in data:
                        fh.write(chunk)
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        finally:
            self._parts.discard(tmp)
        self._written(final, str(sop_uid))
        return final

    def open_instance(
        self,
        study_uid: object,
        series_uid: object,
        sop_uid: object,
        header: bytes = b"",
        spare: SpareFile | None = None,
    ) -> InstanceWriter:
        """Start writing one instance piece by piece; see :class:`InstanceWriter`.

        ``header`` (the preamble and file meta) is written first. ``spare``, an empty
        temporary file made beforehand in the same folder by :meth:`spare`, is used
        instead of creating one (creating a file is the slowest step on some disks).
        """
        final = self.path_for(study_uid, series_uid, sop_uid)
        folder = final.parent
        if spare is not None and spare.path.parent == folder:
            return InstanceWriter(self, spare.path, final, str(sop_uid), header, spare.fh)
        if spare is not None:
            spare.discard()
        self._mkdir(folder)
        tmp = folder / f".{final.name}.{uuid.uuid4().hex[:8]}{PART_SUFFIX}"
        self._parts.add(tmp)
        return InstanceWriter(self, tmp, final, str(sop_uid), header)

    def spare(self, study_uid: object, series_uid: object) -> SpareFile:
        """Create an empty temporary file in a series folder, for :meth:`open_instance`.

        A receiver makes it while it waits for the peer's next instance, so creating the
        file is off the critical path.
        """
        folder = self.folder(study_uid, series_uid)
        self._mkdir(folder)
        path = folder / f".{uuid.uuid4().hex[:12]}{PART_SUFFIX}"
        self._parts.add(path)
        return SpareFile(path, open(path, "wb"), self)

    def _mkdir(self, folder: Path) -> None:
        if folder not in self._made:
            folder.mkdir(parents=True, exist_ok=True)
            self._made.add(folder)

    def _written(self, final: Path, sop_uid: str) -> None:
        with self._lock:
            self.written.append(final)
            self.written_uids.append(sop_uid)

    def clean_partial(
        self, folders: Iterable[Path] | None = None, *, older_than: float | None = None
    ) -> int:
        """Remove temporary files left by an interrupted transfer; return how many.

        With ``older_than`` (seconds), a temporary file this storage did not make is only
        removed when it was last modified that long ago: another retrieval into the same
        folder may be writing it right now.
        """
        count = 0
        roots = list(folders) if folders is not None else [self.root]
        now = time.time()
        for folder in roots:
            if not folder.is_dir():
                continue
            for tmp in folder.rglob(f"*{PART_SUFFIX}"):
                with contextlib.suppress(OSError):
                    if (
                        older_than is not None
                        and tmp not in self._parts
                        and now - tmp.stat().st_mtime < older_than
                    ):
                        continue
                    tmp.unlink()
                    self._parts.discard(tmp)
                    count += 1
        if count:
            logger.info("removed %d partial file(s) under %s", count, self.root)
        return count


class InstanceWriter:
    """One instance written as its pieces arrive: a temporary file until :meth:`commit`.

    Made by :meth:`DicomStorage.open_instance`. :meth:`commit` renames the file to its final
    name; :meth:`discard` (or an error) removes it, so no partial file ever carries a final
    name.
    """

    def __init__(
        self,
        storage: DicomStorage,
        tmp: Path,
        final: Path,
        sop_uid: str,
        header: bytes,
        fh: Any = None,
    ) -> None:
        self.storage = storage
        self.tmp = tmp
        self.final = final
        self.sop_uid = sop_uid
        self._fh = fh if fh is not None else open(tmp, "wb")
        if header:
            self._fh.write(header)

    def write(self, chunk: bytes | bytearray | memoryview) -> None:
        """Append bytes."""
        self._fh.write(chunk)

    def commit(self) -> Path:
        """Close the file and move it to its final name; return that path."""
        try:
            self._fh.close()
            os.replace(self.tmp, self.final)
        except BaseException:
            self.discard()
            raise
        self.storage._parts.discard(self.tmp)
        self.storage._written(self.final, self.sop_uid)
        return self.final

    def discard(self) -> None:
        """Close and remove the temporary file."""
        with contextlib.suppress(OSError):
            self._fh.close()
        with contextlib.suppress(OSError):
            self.tmp.unlink()
        self.storage._parts.discard(self.tmp)


@dataclass
class SpareFile:
    """An empty temporary file made ahead of need (:meth:`DicomStorage.spare`)."""

    path: Path
    fh: Any
    storage: DicomStorage | None = None

    def discard(self) -> None:
        """Close and remove it."""
        with contextlib.suppress(OSError):
            self.fh.close()
        with contextlib.suppress(OSError):
            self.path.unlink()
        if self.storage is not None:
            self.storage._parts.discard(self.path)
