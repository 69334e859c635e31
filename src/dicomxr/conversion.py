"""Convert a cohort of DICOM series to NIfTI files or one Zarr store: :func:`convert`.

The function is ``dicomxr.convert``; this module holds it and its parts (``dicomxr.convert``
names the function only, so it is not a module name as well).

Every image series of the source becomes an output (several when ``split`` splits echoes or
magnitude/phase into files, as dcm2niix does); frames set apart (localizers, secondary
captures) and files the scan skipped are listed in the report and the manifest, not lost.

How a run goes
--------------
1. **Plan** (main process, headers only): scan the source (on the workers of a
   ``dask.distributed`` client when one is given), plan the series, and for each series in
   turn read the header of its first file with pydicom (de-identified first when asked),
   render the output name from the template and make its :class:`SeriesTask`.
2. **Convert** each task with :func:`convert_series` - a plain function of picklable
   arguments (task, destination, options, secret) that writes the series' outputs and its
   done-record and returns its manifest rows. Without a client the tasks run here one after
   the other; with one, each task is submitted as soon as it is made (the workers start
   while later series are still being planned) and rows are gathered as tasks finish.
3. **Report**: ``dest/manifest.parquet`` (one row per output, plus failed series and frames
   set apart) and a :class:`ConvertReport` returned (printed by ``dicomxr convert``).

Resuming
--------
A series is done when its done-record ``dest/.dicomxr-convert/done/<hash>.json`` exists,
names every output file (all still present) and carries the fingerprint of the series'
files (paths, sizes, mtimes) and of the options that shape the output. The record is written
last, after every output is in place; every output is written under a temporary name in the
destination and renamed into place (``os.replace``), so an interrupted run leaves either
nothing or a complete file, and the next run redoes only the series without a valid record.

De-identification
-----------------
``deidentify=True`` applies the PS3.15 Annex E basic profile through dicognito (see
:mod:`dicomxr.export.deid`) to everything written: names, sidecars, NIfTI headers, Zarr
attrs and coordinates, the manifest. The key of the UID/ID remap is kept in
``dest/.dicomxr-convert/secret``, so a resumed run maps the same UID to the same
replacement. **The state folder is not de-identified (it holds the key): leave it out when
sharing the destination.**
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import pickle
import re
import secrets
import shutil
import string
import tempfile
import threading
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dicomxr._files import replace_dir, umask_mode
from dicomxr.errors import DicomxrError, require

if TYPE_CHECKING:
    import xarray as xr

    from dicomxr.series import SeriesPlan

__all__ = [
    "DEFAULT_TEMPLATE",
    "ConvertError",
    "ConvertOptions",
    "ConvertReport",
    "SeriesTask",
    "convert",
    "convert_series",
    "render_name",
    "split_pieces",
]

logger = logging.getLogger(__name__)

#: output name of a series, relative to ``dest``: ``/`` makes folders (Zarr: groups)
DEFAULT_TEMPLATE = "{PatientID}/{SeriesNumber}_{SeriesDescription}"
STATE_DIR = ".dicomxr-convert"
ZARR_STORE = "cohort.zarr"
MANIFEST = "manifest.parquet"
FORMATS = ("nifti", "zarr")
#: file name suffix of each level of a split dim (dcm2niix's: magnitude has none)
_COMPONENT_SUFFIX = {"MAGNITUDE": "", "PHASE": "_ph", "REAL": "_real", "IMAGINARY": "_imaginary"}
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
_TMP_MARK = ".tmp-dicomxr"


class ConvertError(DicomxrError, ValueError):
    """A conversion that cannot start (bad destination, bad option)."""


# --------------------------------------------------------------------------------------
# options, tasks and the report


@dataclass(frozen=True)
class ConvertOptions:
    """What shapes the outputs (all of it goes into each series' fingerprint)."""

    format: str = "nifti"
    template: str = DEFAULT_TEMPLATE
    split: tuple[str, ...] = ()
    deidentify: bool = False
    date_shift: int | None = None
    orientation: str | None = None
    spacing: tuple[float, ...] | None = None
    window: tuple[float, float] | bool | None = None
    dtype: str | None = None
    compress: bool = True
    keys: tuple[str, ...] = ()
    scaling: str = "display"

    def fingerprint(self) -> dict[str, Any]:
        """Return the options as JSON data."""
        return dataclasses.asdict(self)


@dataclass
class SeriesTask:
    """One series to convert: its plan, header fields and output name (all picklable)."""

    key: str
    label: str
    plan: SeriesPlan
    fields: dict[str, Any]
    name: str
    fingerprint: str
    record: str
    burned_in: bool = False
    keys: dict[str, Any] = field(default_factory=dict)


@dataclass
class ConvertReport:
    """What a :func:`convert` run did.

    Attributes
    ----------
    dest
        The destination folder.
    done
        Manifest rows of the outputs written by this run.
    skipped
        ``{"series", "reason"}`` per series not converted on purpose (already done).
    failed
        ``{"series", "error"}`` per series that failed.
    set_apart
        ``{"series", "reason", "frames"}``: frames left out of every series (localizers,
        secondary captures, ...), listed rather than lost.
    skipped_files
        ``{"path", "reason"}``: files the scan skipped (not DICOM, unreadable).
    burned_in
        Series whose header says ``BurnedInAnnotation`` is ``YES`` (pixels may show
        identifiers that no header de-identification removes).
    manifest
        Path of the manifest table, or ``None``.
    """

    dest: Path
    done: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    set_apart: list[dict[str, Any]] = field(default_factory=list)
    skipped_files: list[dict[str, Any]] = field(default_factory=list)
    burned_in: list[str] = field(default_factory=list)
    manifest: Path | None = None

    @property
    def ok(self) -> bool:
        """True when no series failed."""
        return not self.failed

    def __str__(self) -> str:
        lines = [
            f"{len(self.done)} output(s) written, {len(self.skipped)} series skipped, "
            f"{len(self.failed)} failed -> {self.dest}"
        ]
        lines += _at_most(
            [f"  skipped {i['series']}: {i['reason']}" for i in self.skipped], "skipped series"
        )
        lines += [f"  FAILED  {item['series']}: {item['error']}" for item in self.failed]
        if self.set_apart:
            lines.append(f"{len(self.set_apart)} group(s) of frames set apart (not converted):")
            lines += _at_most(
                [
                    f"  {i['frames']} frame(s) of {i['series']}: {i['reason']}"
                    for i in self.set_apart
                ],
                "groups",
            )
        if self.skipped_files:
            lines.append(f"{len(self.skipped_files)} file(s) skipped by the scan")
        for series in self.burned_in:
            lines.append(f"  BurnedInAnnotation YES (check the pixels): {series}")
        if self.manifest is not None:
            lines.append(f"manifest: {self.manifest} (every output, failure and set-apart group)")
        return "\n".join(lines)

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:  # IPython
        p.text(str(self))


def _at_most(lines: list[str], what: str, limit: int = 10) -> list[str]:
    """Keep the first ``limit`` lines, then say how many more (the manifest lists all)."""
    if len(lines) <= limit:
        return lines
    return [*lines[:limit], f"  ... and {len(lines) - limit} more {what} (see the manifest)"]


# --------------------------------------------------------------------------------------
# names


def _template_fields(template: str) -> list[str]:
    """Return the field names of ``template``; refuse what could escape the destination."""
    if not template or template.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", template):
        raise ConvertError(
            f"template {template!r} must be a relative name like {DEFAULT_TEMPLATE!r}"
        )
    names = []
    for literal, name, spec, _conv in string.Formatter().parse(template):
        if any(part in ("..", ".") for part in re.split(r"[/\\]", literal or "")):
            raise ConvertError(f"template {template!r}: '..' and '.' are not allowed in names")
        if name is None:
            continue
        if spec and (len(spec) > 8 or re.search(r"\d{3,}", spec)):
            raise ConvertError(f"template field {{{name}:{spec}}}: use a short format like :03d")
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name):
            raise ConvertError(
                f"template field {{{name}}} is not a DICOM keyword; use fields like "
                "{PatientID}, {SeriesNumber}, {SeriesDescription}, {StudyDate}"
            )
        names.append(name)
    return names


def _sanitise(text: str, limit: int = 64) -> str:
    """Keep letters, digits, ``.``, ``_``, ``-``; no leading dot (no ``..``, no hidden file)."""
    text = _SAFE.sub("_", text)
    text = re.sub(r"_+", "_", text).strip("._-")
    return text[:limit].rstrip("._-")


def render_name(template: str, fields: dict[str, Any]) -> str:
    """Render a naming template with header ``fields``; every value sanitised.

    Parameters
    ----------
    template
        Python format string over DICOM keywords, ``/`` separating folders, e.g.
        ``"{PatientID}/{SeriesNumber:03d}_{SeriesDescription}"``.
    fields
        Keyword -> value (a missing keyword renders as nothing).

    Returns
    -------
    str
        A relative name: components of letters, digits, ``.``, ``_`` and ``-``, never
        empty, never ``.`` or ``..``.

    Examples
    --------
    >>> render_name("{PatientID}/{SeriesNumber}_{SeriesDescription}",
    ...             {"PatientID": "../../etc", "SeriesNumber": 3, "SeriesDescription": "T1 w/ gd"})
    'etc/3_T1_w_gd'
    """
    _template_fields(template)
    out = []
    for literal, name, spec, _conv in string.Formatter().parse(template):
        out.append(literal.replace("\\", "/"))
        if name is None:
            continue
        value = fields.get(name)
        if value is None:
            text = ""
        else:
            try:
                text = format(value, spec or "")
            except (TypeError, ValueError):
                text = str(value)
            if isinstance(value, (list, tuple)):
                text = "_".join(str(v) for v in value)
        out.append(_sanitise(text).replace(".", "_") if text else "")
    parts = [_sanitise(p, limit=120) or "na" for p in "".join(out).split("/")]
    return "/".join(parts) or "na"


# --------------------------------------------------------------------------------------
# files: atomic writes with the user's permissions


def _chmod_default(path: Path) -> None:
    """Give a file made by ``mkstemp`` (0600) the permissions ``open`` would have given."""
    with contextlib.suppress(OSError):
        os.chmod(path, umask_mode())


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TMP_MARK, dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        _chmod_default(Path(tmp))
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _inside(dest: Path, path: Path) -> Path:
    """Return ``path`` when it lies in ``dest``; a name escaping it is a bug, refused."""
    resolved = path.resolve()
    if not resolved.is_relative_to(dest.resolve()):
        raise ConvertError(f"refusing to write {path}: outside the destination {dest}")
    return path


def _prepare_dest(dest: Path) -> Path:
    """Create ``dest`` and the state folder; a destination that cannot be written is an error."""
    try:
        dest.mkdir(parents=True, exist_ok=True)
        state = dest / STATE_DIR
        (state / "done").mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".probe.", suffix=_TMP_MARK, dir=dest)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConvertError(
            f"cannot write to the destination {dest}: {exc.strerror or exc}; "
            "choose a folder you can write to (or fix its permissions)"
        ) from exc
    return state


@contextlib.contextmanager
def _run_lock(state: Path) -> Iterator[None]:
    """Hold ``state/lock`` for this run: two runs into one destination would clash."""
    path = state / "lock"
    for _attempt in range(2):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            pid = _lock_owner(path)
            if pid is not None and _alive(pid):
                raise ConvertError(
                    f"another conversion (process {pid}) is writing to {state.parent}; wait "
                    f"for it to finish, or remove {path} if that process is gone"
                ) from None
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # left by a run that was killed
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(str(os.getpid()))
        break
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _lock_owner(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _check_mode(state: Path, deidentify: bool) -> None:
    """Refuse to mix de-identified and identified outputs in one destination."""
    path = state / "mode"
    wanted = "deidentified" if deidentify else "identified"
    if path.exists():
        found = path.read_text().strip()
        if found != wanted:
            raise ConvertError(
                f"{state.parent} holds {found} outputs; a run with "
                f"deidentify={deidentify} would mix {wanted} ones in: choose another destination"
            )
        return
    _write_atomic(path, wanted + "\n")


def _secret(state: Path) -> str:
    """Return the de-identification key of this destination, made on first use (0600)."""
    path = state / "secret"
    if path.exists():
        return path.read_text().strip()
    key = secrets.token_hex(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")
    return key


def _remove_stale_temporaries(dest: Path) -> None:
    """Delete what an interrupted run left under temporary names (never a finished output)."""
    for path in dest.rglob(f"*{_TMP_MARK}*"):
        if path.name.startswith("."):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()


# --------------------------------------------------------------------------------------
# planning


def _series_fingerprint(plan: SeriesPlan, options: ConvertOptions, name: str) -> str:
    frames = plan.frame_table
    files = sorted(
        {
            (str(p), int(s) if s == s else -1, float(m) if m == m else -1.0)
            for p, s, m in zip(frames["path"], frames["file_size"], frames["mtime"], strict=True)
        }
    )
    payload = json.dumps(
        {"key": plan.key, "files": files, "options": options.fingerprint(), "name": name},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def _record_name(key: str, secret: str) -> str:
    return hashlib.sha256((secret + "\0" + key).encode()).hexdigest()[:40] + ".json"


def _header_fields(
    plan: SeriesPlan, deid: Any, keys: Sequence[str] = ()
) -> tuple[dict[str, Any], bool, dict[str, Any]]:
    """Read the header fields of a series' first file.

    Returns the fields, whether the file has burned-in annotation, and the values of the
    requested ``keys`` in it (after de-identification when it applies).
    """
    from dicomxr.export.bids import header_fields, read_header, requested_fields, siemens_csa_fields

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a malformed character set: pydicom copes, says so
        table = plan.frame_table
        options = table.attrs.get("storage_options")  # a remote catalog's
        ds = read_header(table["path"].iloc[0], options)
    burned = str(ds.get("BurnedInAnnotation", "")).strip().upper() == "YES"
    csa = siemens_csa_fields(ds)  # private: read before de-identification removes it
    if deid is not None:
        deid.dataset(ds)
    fields = header_fields(ds)
    fields.update(csa)
    fields.setdefault("SeriesNumber", plan.attrs.get("SeriesNumber"))
    return fields, burned, requested_fields(ds, keys)


def _public_label(plan: SeriesPlan, fields: dict[str, Any], deid: Any) -> str:
    if deid is None:
        return f"{plan.label} ({plan.key})"
    return f"series {fields.get('SeriesNumber', '?')} ({deid.uids_in(plan.key)})"


def _clashes(name: str, taken: set[str]) -> bool:
    """Tell whether a name is taken, is a folder (Zarr group) of a taken one, or holds one."""
    name = name.lower()
    parents = {name.rsplit("/", i)[0] for i in range(1, name.count("/") + 1)}
    return name in taken or bool(parents & taken) or any(t.startswith(name + "/") for t in taken)


def _unique(name: str, taken: set[str]) -> str:
    candidate, n = name, 1
    while _clashes(candidate, taken):
        n += 1
        candidate = f"{name}_{n}"
    taken.add(candidate.lower())
    return candidate


def _plan_tasks(
    plans: Sequence[SeriesPlan],
    options: ConvertOptions,
    secret: str,
    deid: Any,
    report: ConvertReport,
) -> Iterator[SeriesTask]:
    """Make the task of each plan in turn (a generator: a task can run while the next is made).

    A series whose header cannot be read is reported as failed and makes no task.
    """
    taken: set[str] = set()
    for plan in plans:
        try:
            fields, burned, requested = _header_fields(plan, deid, options.keys)
        except Exception as exc:  # one unreadable header fails its series, not the run
            report.failed.append(_header_failure(plan, exc, deid))
            continue
        name = _unique(render_name(options.template, fields), taken)
        yield SeriesTask(
            key=plan.key,
            label=_public_label(plan, fields, deid),
            plan=plan,
            fields=fields,
            name=name,
            fingerprint=_series_fingerprint(plan, options, name),
            record=_record_name(f"{options.format}:{plan.key}", secret),
            burned_in=burned,
            keys=requested,
        )


def _header_failure(plan: SeriesPlan, exc: BaseException, deid: Any) -> dict[str, Any]:
    number = plan.attrs.get("SeriesNumber")
    error = f"header: {type(exc).__name__}: {exc}"
    if deid is None:
        return {"series": plan.label, "error": error, "public_key": plan.key,
                "manifest_error": error}  # fmt: skip
    return {"series": f"series {number}", "error": error, "public_key": deid.uids_in(plan.key),
            "manifest_error": f"header: {type(exc).__name__}"}  # fmt: skip


def _skipped_files(plans: Any, deid: Any) -> list[dict[str, Any]]:
    skipped = list(getattr(plans, "skipped", []))
    if deid is None:
        return skipped
    return [{"path": "", "reason": item.get("reason", "")} for item in skipped]


def _set_apart_rows(plans: Any, deid: Any) -> list[dict[str, Any]]:
    set_apart = getattr(plans, "set_apart", None)
    if set_apart is None or not len(set_apart):
        return []
    rows = []
    for (uid, number, reason), group in set_apart.groupby(
        ["SeriesInstanceUID", "SeriesNumber", "reason"], dropna=False, sort=True
    ):
        uid = "" if uid != uid else str(uid)
        shown = deid.uid(uid) if (deid is not None and uid) else uid
        number = _int_or_none(number)
        rows.append(
            {"series": f"series {number} ({shown})", "series_uid": shown, "reason": str(reason),
             "frames": len(group)}
        )  # fmt: skip
    return rows


# --------------------------------------------------------------------------------------
# one series


def _apply_options(da: xr.DataArray, options: ConvertOptions) -> xr.DataArray:
    """Reorient, resample, window and cast, in that order (each only when asked)."""
    if options.orientation:
        da = da.dicom.reorient(options.orientation)
    if options.spacing is not None:
        resample = getattr(da.dicom, "resample", None)
        if resample is None:
            raise ConvertError(
                "spacing= needs da.dicom.resample (dicomxr.resample), which this dicomxr "
                "does not have yet; convert without spacing= and resample afterwards"
            )
        spacing = options.spacing[0] if len(options.spacing) == 1 else options.spacing
        da = resample(spacing=spacing)
    if options.window is not None and options.window is not False:
        if options.window is True:
            da = da.dicom.window()
        else:
            center, width = options.window  # type: ignore[misc]
            da = da.dicom.window(center, width)
    if options.dtype is not None:
        da = da.astype(options.dtype)
    return da


def _split_levels(da: xr.DataArray, dim: str) -> Iterator[tuple[str, int]]:
    if dim == "component" and "component" in da.coords:
        for i, value in enumerate(np.asarray(da.coords["component"].values).tolist()):
            yield _COMPONENT_SUFFIX.get(str(value).upper(), f"_{_sanitise(str(value)).lower()}"), i
        return
    prefix = "_e" if dim == "echo" else f"_{dim}"
    for i in range(da.sizes[dim]):
        yield f"{prefix}{i + 1}", i


def split_pieces(da: xr.DataArray, dims: Sequence[str]) -> list[tuple[str, xr.DataArray]]:
    """Split ``da`` into one image per level of each of ``dims`` present (suffix, image).

    Echoes get ``_e1``, ``_e2``...; the magnitude/phase ``component`` dim gets ``""``
    (magnitude), ``_ph``, ``_real``, ``_imaginary`` (dcm2niix's suffixes); any other dim
    ``_<dim><n>``. A dim of size one is dropped without a suffix.
    """
    pieces = [("", da)]
    for dim in dims:
        if dim not in da.dims:
            continue
        if da.sizes[dim] == 1:
            pieces = [(s, p.isel({dim: 0})) for s, p in pieces]
            continue
        pieces = [
            (s + suffix, p.isel({dim: i})) for s, p in pieces for suffix, i in _split_levels(p, dim)
        ]
    return pieces


def _spacing(da: xr.DataArray) -> list[float]:
    from dicomxr.spatial import affine_of

    affine = affine_of(da)
    return [round(float(v), 6) for v in np.linalg.norm(affine[:3, :3], axis=0)]


def _row(task: SeriesTask, piece: xr.DataArray, output: str, options: ConvertOptions,
         sidecar: str | None) -> dict[str, Any]:  # fmt: skip
    from dicomxr.export.bids import key_value
    from dicomxr.orientation import orientation_of

    try:
        orientation, spacing = orientation_of(piece), _spacing(piece)
    except Exception:  # a reduced image has no affine; the output is still right
        orientation, spacing = "", []
    keys = {f"key:{name}": key_value(name, task.keys, piece) for name in options.keys}
    return keys | {
        "series_uid": str(piece.attrs.get("SeriesInstanceUID", "")),
        "series_key": str(piece.attrs.get("series_key", task.key)),
        "series_number": _int_or_none(task.fields.get("SeriesNumber")),
        "modality": str(task.fields.get("Modality", "")),
        "format": options.format,
        "output": output,
        "sidecar": sidecar or "",
        "shape": [int(n) for n in piece.shape],
        "dims": [str(d) for d in piece.dims],
        "dtype": str(piece.dtype),
        "spacing": spacing,
        "orientation": orientation,
        "burned_in_annotation": bool(task.burned_in),
        "status": "done",
        "reason": "",
    }


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _write_nifti(task: SeriesTask, piece: xr.DataArray, dest: Path, name: str,
                 options: ConvertOptions) -> dict[str, Any]:  # fmt: skip
    from dicomxr.export.bids import bids_sidecar, key_value
    from dicomxr.export.nifti import to_nifti, volume_labels

    stem = _inside(dest, dest / name)
    stem.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".nii.gz" if options.compress else ".nii"
    path = stem.with_name(stem.name + suffix)
    to_nifti(piece, path, bvals=True, sidecar=False)
    for written in (path, stem.with_name(stem.name + ".bval"), stem.with_name(stem.name + ".bvec")):
        if written.exists():
            _chmod_default(written)
    sidecar = bids_sidecar(task.fields, piece, in_plane_kept=not options.orientation)
    for key in options.keys:  # BIDS names (RepetitionTime in s) win over the DICOM value
        if key not in sidecar:
            value = key_value(key, task.keys, piece)
            if value is not None:
                sidecar[key] = value
    extra = [d for d in piece.dims if d not in ("slice", "row", "col", "channel")]
    sidecar["dicomxr"] = {
        "series_key": str(piece.attrs.get("series_key", "")),
        "dims": [str(d) for d in piece.dims],
        "volumes": volume_labels(piece, extra),
    }
    json_path = stem.with_name(stem.name + ".json")
    _write_atomic(json_path, json.dumps(sidecar, indent=1, default=str))
    rel = path.relative_to(dest).as_posix()
    return _row(task, piece, rel, options, json_path.relative_to(dest).as_posix())


#: bytes of image data read and handed to Zarr at a time (many one-frame chunks at once)
_SLAB_BYTES = 32 * 2**20


def _in_slabs(ds: xr.Dataset, sharded: bool) -> xr.Dataset:
    """Keep one frame per Zarr chunk, but read and write the image a slab of frames at a time.

    Zarr writes the chunks of one assignment concurrently; handing it one frame per call
    costs a round trip to Zarr's I/O loop per frame (most of the time of a series of small
    frames). A slab is the whole image when it holds at most :data:`_SLAB_BYTES` (read in
    one pass), else whole frames along the last frame dim (``slice``) up to that size, so
    memory stays bounded for large series. In a Zarr v3 store (``sharded``) each slab is
    also one shard: one file per slab instead of one per frame, chunks still one frame.
    """
    image = ds["image"]
    frame_chunks = image.data.chunksize
    if image.nbytes <= _SLAB_BYTES:
        slabs, data = image.shape, image.data.compute(scheduler="synchronous")
    else:
        frame_dims = [d for d in image.dims if d not in ("row", "col", "channel")]
        along = image.dims.index(frame_dims[-1]) if frame_dims else 0
        frame_bytes = max(1, image.dtype.itemsize * int(np.prod(frame_chunks)))
        per_slab = max(1, min(image.shape[along], _SLAB_BYTES // frame_bytes))
        slabs = tuple(per_slab if i == along else n for i, n in enumerate(frame_chunks))
        data = image.data.rechunk(slabs)
    ds["image"] = image.copy(data=data)
    ds["image"].encoding["chunks"] = frame_chunks
    if sharded:
        ds["image"].encoding["shards"] = slabs
    return ds


def _write_zarr_group(task: SeriesTask, piece: xr.DataArray, dest: Path, name: str,
                      options: ConvertOptions) -> dict[str, Any]:  # fmt: skip
    from dicomxr.export.zarr import prepare_for_zarr

    root = dest / ZARR_STORE
    target = _inside(dest, root / name)
    parent_rel = name.rpartition("/")[0]
    leaf = f".{target.name}.{uuid.uuid4().hex[:8]}{_TMP_MARK}"
    tmp_rel = f"{parent_rel}/{leaf}" if parent_rel else leaf
    tmp = root / tmp_rel
    ds = _in_slabs(prepare_for_zarr(piece, None), sharded=(root / "zarr.json").exists())
    if not options.compress:
        for var in ds.variables.values():
            var.encoding["compressors"] = None
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
            warnings.filterwarnings("ignore", message=".*does not have a Zarr V3 specification.*")
            ds.to_zarr(root, group=tmp_rel, mode="w", consolidated=False)
        replace_dir(tmp, target, old_name=f".{target.name}.old{_TMP_MARK}")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return _row(task, piece, f"{ZARR_STORE}/{name}", options, None)


def _open_plan(
    plan: SeriesPlan, scaling: str = "display", keys: Sequence[str] = ()
) -> xr.DataArray:
    from dicomxr.api import open_series

    keys = [k for k in keys if k in plan.frame_table]
    return open_series(plan, scaling=scaling, keys=keys or None)


def convert_series(
    task: SeriesTask, dest: str | os.PathLike[str], options: ConvertOptions, secret: str
) -> list[dict[str, Any]]:
    """Convert one series: write its outputs, then its done-record; return manifest rows.

    A pure function of picklable arguments, so that a scheduler (``dask.distributed``) can
    run one call per series; :func:`convert` plans the tasks and calls it.

    Parameters
    ----------
    task
        The series (from :func:`convert`'s planning step).
    dest
        The destination folder (already created).
    options
        The conversion options.
    secret
        The de-identification key of this destination (used when ``options.deidentify``).

    Returns
    -------
    list of dict
        One manifest row per output written.
    """
    dest = Path(dest)
    from dicomxr.errors import PixelDataWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # a frame that cannot be decoded fails its series: a loaded array would hold a fill
        # value in its place, which must not reach a training set as if it were an image
        warnings.filterwarnings(
            "error", message=r"(?s).*cannot be read and is set apart", category=PixelDataWarning
        )
        da = _apply_options(_open_plan(task.plan, options.scaling, options.keys), options)
        if options.deidentify:
            from dicomxr.export.deid import Deidentifier

            da = Deidentifier(secret, date_shift=options.date_shift).array(da)
        write = _write_nifti if options.format == "nifti" else _write_zarr_group
        rows = [
            write(task, piece, dest, task.name + suffix, options)
            for suffix, piece in split_pieces(da, options.split)
        ]
    notes = sorted({f"{w.category.__name__}: {w.message}" for w in caught})
    for row in rows:
        row["warnings"] = "" if options.deidentify else "; ".join(notes)[:2000]
    record = {"fingerprint": task.fingerprint, "rows": rows}
    _write_atomic(dest / STATE_DIR / "done" / task.record, json.dumps(record, default=str))
    return rows


def _finished_rows(task: SeriesTask, dest: Path) -> list[dict[str, Any]] | None:
    """Rows of a series a previous run finished with the same inputs and options, else None."""
    path = dest / STATE_DIR / "done" / task.record
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if record.get("fingerprint") != task.fingerprint:
        return None
    rows = record.get("rows") or []
    for row in rows:
        for rel in (row.get("output"), row.get("sidecar")):
            if rel and not (dest / rel).exists():
                return None
    return rows or None


# --------------------------------------------------------------------------------------
# the run


def _normalise_split(split: Any, fmt: str) -> tuple[str, ...]:
    if split == "auto":
        return ("echo", "component") if fmt == "nifti" else ()
    if split is None or split is False:
        return ()
    if isinstance(split, str):
        return tuple(s.strip() for s in split.split(",") if s.strip())
    return tuple(str(s) for s in split)


def _options(**kwargs: Any) -> ConvertOptions:
    fmt = str(kwargs["format"]).lower()
    if fmt not in FORMATS:
        raise ConvertError(f"format={kwargs['format']!r}: choose one of {', '.join(FORMATS)}")
    template = kwargs["template"] or DEFAULT_TEMPLATE
    _template_fields(template)
    spacing = kwargs["spacing"]
    if spacing is not None:
        from dicomxr.accessor import DicomAccessor

        if not hasattr(DicomAccessor, "resample"):
            raise ConvertError(
                "spacing= needs da.dicom.resample (dicomxr.resample), which this dicomxr "
                "does not have yet; convert without spacing= and resample afterwards"
            )
        spacing = (float(spacing),) if np.isscalar(spacing) else tuple(float(s) for s in spacing)
    window = kwargs["window"]
    if window is not None and not isinstance(window, bool):
        window = tuple(float(w) for w in window)
        if len(window) != 2:
            raise ConvertError("window= takes (center, width) or True for the series' preset")
    if kwargs["orientation"]:
        from dicomxr.orientation import check_code

        kwargs["orientation"] = check_code(kwargs["orientation"])
    return ConvertOptions(
        format=fmt,
        template=template,
        split=_normalise_split(kwargs["split"], fmt),
        deidentify=bool(kwargs["deidentify"]),
        date_shift=None if kwargs["date_shift"] is None else int(kwargs["date_shift"]),
        orientation=kwargs["orientation"],
        spacing=spacing,
        window=window,
        dtype=None if kwargs["dtype"] is None else str(np.dtype(kwargs["dtype"])),
        compress=bool(kwargs["compress"]),
        keys=_key_names(kwargs["keys"]),
        scaling=_scaling_option(kwargs.get("scaling", "display")),
    )


def _key_names(keys: Any) -> tuple[str, ...]:
    from dicomxr._keys import HeaderKeyError, resolve_keys

    try:
        return tuple(k.name for k in resolve_keys(keys))
    except HeaderKeyError as exc:
        raise ConvertError(str(exc)) from None


def _scaling_option(scaling: Any) -> str:
    from dicomxr.errors import ScalingError
    from dicomxr.scaling import check_scaling

    try:
        return check_scaling(scaling)
    except ScalingError as exc:
        raise ConvertError(str(exc)) from None


def _progress_bar(total: int, progress: bool | None) -> Any:
    from tqdm.auto import tqdm

    disable = None if progress is None else not progress
    return tqdm(total=total, disable=disable, unit="series", desc="convert", leave=False)


def _other_format_rows(dest: Path, fmt: str) -> list[dict[str, Any]]:
    """Rows of outputs an earlier run wrote in the other format (still present): kept."""
    import pandas as pd

    path = dest / MANIFEST
    if not path.exists():
        return []
    try:
        old = pd.read_parquet(path)
    except Exception:  # an unreadable manifest is rebuilt from this run
        return []
    keep = old[(old["format"] != fmt) & (old["status"] == "done")]
    rows = []
    for row in keep.to_dict("records"):
        if row.get("output") and (dest / row["output"]).exists():
            rows.append({k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in row.items()})
    return rows


def _write_manifest(
    dest: Path, report: ConvertReport, rows: list[dict[str, Any]], options_format: str
) -> Path:
    pd = require("pandas", extra="convert", purpose="the manifest")
    require("pyarrow", extra="convert", purpose="the parquet manifest")
    columns = ["series_uid", "series_key", "series_number", "modality", "format", "output",
               "sidecar", "shape", "dims", "dtype", "spacing", "orientation",
               "burned_in_annotation", "status", "reason", "warnings"]  # fmt: skip
    table = list(rows)
    for item in report.failed:
        table.append({"series_key": item.get("public_key", ""), "status": "failed",
                      "reason": item.get("manifest_error", item["error"])})  # fmt: skip
    for item in report.set_apart:
        table.append({"series_uid": item["series_uid"], "status": "set_apart",
                      "reason": f"{item['frames']} frame(s): {item['reason']}"})  # fmt: skip
    table.extend(_other_format_rows(dest, options_format))
    columns += sorted({c for row in table for c in row if c.startswith("key:")})
    frame = pd.DataFrame(table, columns=columns)
    for name in columns:
        if name.startswith("key:"):
            frame[name] = _key_column(frame[name].tolist())
    for name in ("shape", "dims", "spacing"):
        frame[name] = [v if isinstance(v, list) else [] for v in frame[name]]
    for name in ("series_uid", "series_key", "modality", "format", "output", "sidecar",
                 "dtype", "orientation", "status", "reason", "warnings"):  # fmt: skip
        frame[name] = [_text(v) for v in frame[name]]
    frame["burned_in_annotation"] = [v is True for v in frame["burned_in_annotation"]]
    frame["series_number"] = frame["series_number"].astype("Int64")
    path = dest / MANIFEST
    fd, tmp = tempfile.mkstemp(prefix=f".{MANIFEST}.", suffix=_TMP_MARK, dir=dest)
    os.close(fd)
    try:
        frame.to_parquet(tmp, index=False)
        _chmod_default(Path(tmp))
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return path


def _key_column(values: list[Any]) -> Any:
    """Build a requested key's manifest column: float64 if all are numbers, else text (JSON lists)."""
    present = [v for v in values if v is not None and v == v]
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    return [
        "" if v is None or v != v else (json.dumps(v) if isinstance(v, list) else str(v))
        for v in values
    ]


def _text(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and value != value) else str(value)


def _consolidate(dest: Path) -> None:
    """Gather the metadata of every group and array of the store into its root ``zarr.json``.

    What ``zarr.consolidate_metadata`` writes, but read as plain JSON from the members'
    ``zarr.json`` files (a cohort store has a dozen arrays per series: zarr's own walk parses
    each one into objects and costs a serial ~5 ms a series at the end of every run), and
    the root written atomically. A store this does not recognise (Zarr v2, a member group
    already consolidated) is left to zarr's function.
    """
    root = dest / ZARR_STORE
    if not root.exists():
        return
    members = _v3_members(root)
    if members is None:
        import zarr

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
            zarr.consolidate_metadata(str(root))
        return
    import unicodedata

    import zarr

    top = json.loads((root / "zarr.json").read_text(encoding="utf-8"))
    ordered = sorted(
        members.items(),
        key=lambda item: (item[0].count("/"), unicodedata.normalize("NFKC", item[0]).casefold()),
    )
    top = _with_consolidated(top, dict(ordered))
    _write_atomic(root / "zarr.json", json.dumps(top, indent=zarr.config.get("json_indent"),
                                                 allow_nan=True))  # fmt: skip


def _with_consolidated(group: dict[str, Any], metadata: dict[str, Any]) -> dict[str, Any]:
    """Return a group's metadata with ``consolidated_metadata`` set, where zarr places it."""
    consolidated = {"kind": "inline", "must_understand": False, "metadata": metadata}
    out = {k: v for k, v in group.items() if k not in ("consolidated_metadata", "node_type")}
    return out | {"consolidated_metadata": consolidated, "node_type": group.get("node_type")}


def _v3_members(root: Path) -> dict[str, Any] | None:
    """Read the ``zarr.json`` of every group and array under ``root`` by relative path.

    Groups are descended, arrays not (their chunks are not metadata); a folder without a
    ``zarr.json`` is no member, as for zarr; leftovers of interrupted writes are skipped.
    ``None`` when the store is not one this module writes (not Zarr v3, or a member group
    with consolidated metadata of its own).
    """
    try:
        if json.loads((root / "zarr.json").read_text(encoding="utf-8")).get("zarr_format") != 3:
            return None
    except (OSError, ValueError):
        return None
    members: dict[str, Any] = {}
    pending = [("", root)]
    while pending:
        prefix, folder = pending.pop()
        with os.scandir(folder) as entries:
            names = [e.name for e in entries if e.is_dir() and _TMP_MARK not in e.name]
        for name in names:
            try:
                meta = json.loads((folder / name / "zarr.json").read_text(encoding="utf-8"))
            except FileNotFoundError:
                continue
            except (OSError, ValueError):
                return None
            if meta.get("zarr_format") != 3:
                return None
            path = f"{prefix}{name}"
            if meta.get("node_type") == "group":
                if meta.get("consolidated_metadata"):
                    return None
                meta = _with_consolidated(meta, {})
                pending.append((path + "/", folder / name))
            members[path] = meta
    return members


def _ensure_zarr_root(dest: Path) -> None:
    require("zarr", extra="zarr", purpose="Zarr conversion")
    import zarr

    root = dest / ZARR_STORE
    if not root.exists():
        zarr.open_group(str(root), mode="a")


def convert(
    source: Any,
    dest: str | os.PathLike[str],
    *,
    format: str = "nifti",
    template: str | None = None,
    split: Sequence[str] | str | None = "auto",
    deidentify: bool = False,
    date_shift: int | None = None,
    orientation: str | None = None,
    spacing: float | Sequence[float] | None = None,
    window: tuple[float, float] | bool | None = None,
    dtype: str | np.dtype | type | None = None,
    compress: bool = True,
    scaling: str = "display",
    resume: bool = True,
    progress: bool | None = None,
    on_irregular: str = "split",
    on_duplicate: str = "warn",
    recursive: bool = True,
    on_series: Callable[[SeriesTask, list[dict[str, Any]]], None] | None = None,
    merge_runs: bool = False,
    storage_options: Mapping[str, Any] | None = None,
    keys: Sequence[Any] | str | None = None,
    client: Any = None,
) -> ConvertReport:
    """Convert every image series in ``source`` to NIfTI files or one Zarr store under ``dest``.

    Parameters
    ----------
    source
        Anything :func:`dicomxr.api.list_series` takes: a file, a folder tree, a glob, a list
        of paths, a DICOMDIR, a zip file, a URL fsspec opens (``s3://bucket/prefix/``...), a
        catalog DataFrame from :func:`dicomxr.scan`, or plans.
    dest
        Destination folder (created). Nothing is written outside it.
    format
        ``"nifti"``: ``<name>.nii.gz`` + BIDS-style ``<name>.json`` (+ ``.bval``/``.bvec``
        for diffusion) per output. ``"zarr"``: one store ``dest/cohort.zarr`` with a group
        ``<name>`` per output (one frame per chunk, compressed, original dtype, coordinates
        and attrs). Both write ``dest/manifest.parquet``.
    template
        Output name from header keywords, ``/`` making folders (Zarr: groups); default
        ``"{PatientID}/{SeriesNumber}_{SeriesDescription}"``. Values are sanitised (letters,
        digits, ``.``, ``_``, ``-``); a name taken twice gets ``_2``, ``_3``...
    split
        Frame dims to split into separate outputs, as dcm2niix does: ``"echo"`` (suffix
        ``_e1``, ``_e2``...), ``"component"`` (magnitude: none, phase ``_ph``, real/imaginary).
        ``"auto"`` (default): ``("echo", "component")`` for NIfTI, nothing for Zarr.
    deidentify
        Apply the PS3.15 Annex E basic profile (dicognito, see
        :mod:`dicomxr.export.deid`) to everything written, with UIDs remapped consistently
        across the cohort and across resumed runs.
    date_shift
        With ``deidentify``: move dates back by this many days (default: a secret offset
        of 62 to 730 days drawn by dicognito from the destination's key).
    orientation
        Reorient each image to this code (``"RAS"``, ``"LPS"``...; flips and transposes).
    spacing
        Resample to this voxel spacing in mm (needs ``da.dicom.resample``).
    window
        ``(center, width)`` or ``True`` (the series' preset): window to [0, 1] float32.
    dtype
        Cast the image to this dtype.
    compress
        gzip NIfTI files (``.nii.gz``), compress Zarr chunks.
    scaling
        What the stored integers become, as for :func:`dicomxr.open_series`:
        ``"display"`` (default, dcm2niix ``-p n``), ``"precise"`` (Philips floating-point
        values, dcm2niix's default ``-p y``; display values for other series) or
        ``"real_world"`` (a series without a Real World Value Mapping fails, with the
        reason in the report). NIfTI files hold the values as float32; the sidecar records
        the factors (``PhilipsScaleSlope``, ``UsePhilipsFloatNotDisplayScaling``... as
        dcm2niix writes them).
    resume
        Skip the series a previous run into ``dest`` finished with the same inputs and
        options; ``False`` converts everything again.
    progress
        Show a progress bar: ``None`` (default) when the output is a terminal.
    on_irregular, on_duplicate
        Policies passed to :func:`dicomxr.plan_series`; ``"split"`` (default for
        irregular stacks) makes regular blocks separate outputs, so every NIfTI affine is
        exact.
    recursive
        Descend into sub-folders of a folder source.
    on_series
        Called with ``(task, rows)`` after each series is written (for logging).
    merge_runs
        Merge runs of single-volume series (consecutive SeriesNumbers, same geometry and
        protocol: Siemens XA classic fMRI exports) into one 4D output each (see
        :mod:`dicomxr.runs`).
    storage_options
        fsspec options for a URL or zip source (see :func:`dicomxr.scan`).
    keys
        Extra header fields to carry (see :func:`dicomxr.scan`): keywords
        (``["RepetitionTime", "FlipAngle"]``) or tag numbers for private attributes
        (``"0019,100C"``). They go into the Zarr attrs (coordinates when they vary), the
        NIfTI JSON sidecar under their DICOM name (unless the sidecar already has the
        field under that name in BIDS units, as for RepetitionTime in seconds; enhanced
        files' functional groups are searched too) and a manifest column ``key:<name>``.
        With ``deidentify=True`` they pass the same de-identification as everything else
        (private attributes are removed, as the basic profile requires).
    client
        A :class:`distributed.Client` (``True``: the session's default client): the
        scan runs on its workers (one task per batch of files) and so does the
        conversion: each series is submitted as soon as it is planned, in tasks of one
        series or a batch of small ones (up to 64 MiB of images and 32 series; large
        batches first, single series at the end, so the workers finish together); each
        worker opens, converts and writes one series at a time straight into ``dest``
        (which must be a folder every worker can write, e.g. a shared file system) and
        returns its manifest rows; this process plans,
        gathers the rows, writes the manifest and reports. Outputs are the same as without
        a client. ``None`` (default): everything runs in this process, one series after
        the other.

    Returns
    -------
    ConvertReport
        Outputs written, series skipped and failed (with reasons), frames set apart, files
        the scan skipped, series with burned-in annotation, and the manifest path.

    Raises
    ------
    ConvertError
        When the destination cannot be written or an option is wrong.

    Examples
    --------
    >>> import dicomxr
    >>> report = dicomxr.convert(dicomxr.data.sample_path(), "out", progress=False)  # doctest: +SKIP
    >>> print(report)  # doctest: +SKIP
    """
    options = _options(
        format=format, template=template, split=split, deidentify=deidentify,
        date_shift=date_shift, orientation=orientation, spacing=spacing, window=window,
        dtype=dtype, compress=compress, keys=keys, scaling=scaling,
    )  # fmt: skip
    dest = Path(dest)
    state = _prepare_dest(dest)
    with _run_lock(state):
        return _convert_locked(
            source, dest, state, options, resume=resume, progress=progress,
            on_irregular=on_irregular, on_duplicate=on_duplicate, recursive=recursive,
            on_series=on_series, storage_options=storage_options, client=client,
            merge_runs=merge_runs,
        )  # fmt: skip


def _convert_locked(
    source: Any,
    dest: Path,
    state: Path,
    options: ConvertOptions,
    *,
    resume: bool,
    progress: bool | None,
    on_irregular: str,
    on_duplicate: str,
    recursive: bool,
    on_series: Callable[[SeriesTask, list[dict[str, Any]]], None] | None,
    merge_runs: bool = False,
    storage_options: Mapping[str, Any] | None = None,
    client: Any = None,
) -> ConvertReport:
    """Run a conversion while holding the destination's lock (see :func:`convert`)."""
    _remove_stale_temporaries(dest)
    _check_mode(state, options.deidentify)
    secret = _secret(state) if options.deidentify else ""
    deid = _deidentifier(options, secret)
    if options.format == "zarr":
        _ensure_zarr_root(dest)
    plans = _list_plans(
        source, options, recursive=recursive, progress=progress, on_irregular=on_irregular,
        on_duplicate=on_duplicate, merge_runs=merge_runs, storage_options=storage_options,
        client=client,
    )  # fmt: skip
    report = ConvertReport(dest=dest)
    report.set_apart = _set_apart_rows(plans, deid)
    report.skipped_files = _skipped_files(plans, deid)
    runner = None
    if client is not None:
        runner = _ClientRunner(client, dest, options, secret, total=len(plans))
    run = _Run(dest, options, secret, report, deid, resume=resume, on_series=on_series)
    with _progress_bar(len(plans), progress) as bar:
        rows = run.all(_plan_tasks(plans, options, secret, deid, report), bar, runner)
    if options.format == "zarr":
        _consolidate(dest)
    report.manifest = _write_manifest(dest, report, rows, options.format)
    return report


def _deidentifier(options: ConvertOptions, secret: str) -> Any:
    if not options.deidentify:
        return None
    from dicomxr.export.deid import Deidentifier

    return Deidentifier(secret, date_shift=options.date_shift)


def _list_plans(
    source: Any,
    options: ConvertOptions,
    *,
    recursive: bool,
    progress: bool | None,
    on_irregular: str,
    on_duplicate: str,
    merge_runs: bool,
    storage_options: Mapping[str, Any] | None,
    client: Any,
) -> Any:
    """Scan the source (on the client's workers when there is one) and plan its series."""
    from dicomxr.api import list_series

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # skipped files and irregular stacks are reported
        return list_series(
            _scanned(
                source, recursive=recursive, progress=progress, storage_options=storage_options,
                keys=options.keys, client=client,
            ),
            on_irregular=on_irregular,
            on_duplicate=on_duplicate,
            keys=options.keys or None,
            merge_runs=merge_runs,
        )  # fmt: skip


Outcome = tuple[int, list[dict[str, Any]], BaseException | None]


@dataclass
class _Run:
    """The tasks of one run: skip the finished ones, convert the rest, gather the rows."""

    dest: Path
    options: ConvertOptions
    secret: str
    report: ConvertReport
    deid: Any
    resume: bool
    on_series: Callable[[SeriesTask, list[dict[str, Any]]], None] | None
    tasks: list[SeriesTask] = field(default_factory=list)
    results: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    converted: list[int] = field(default_factory=list)

    def all(
        self, tasks: Iterator[SeriesTask], bar: Any, runner: _ClientRunner | None
    ) -> list[dict[str, Any]]:
        """Convert the tasks (here one after the other, or on a dask.distributed client).

        On a client each task is submitted as soon as it is made, so the workers start
        while the later series are still being prepared here. Returns the manifest rows of
        every output in the order of the tasks whatever order they finish in, so the
        manifest does not depend on the scheduler.
        """
        try:
            for i, task in enumerate(tasks):
                self.tasks.append(task)
                if self._already_done(i, task):
                    bar.update(1)
                elif runner is not None:
                    runner.submit(i, task)
                else:
                    self._record(i, *_convert_here(task, self.dest, self.options, self.secret, bar))
                    bar.update(1)
            for outcome in runner.outcomes() if runner is not None else ():
                self._record(*outcome)
                bar.update(1)
        finally:
            if runner is not None:
                runner.cancel()
        self.report.done.extend(row for i in sorted(self.converted) for row in self.results[i])
        self.report.burned_in.extend(task.label for task in self.tasks if task.burned_in)
        return [row for i in sorted(self.results) for row in self.results[i]]

    def _already_done(self, i: int, task: SeriesTask) -> bool:
        finished = _finished_rows(task, self.dest) if self.resume else None
        if finished is None:
            return False
        self.results[i] = finished
        self.report.skipped.append({"series": task.label, "reason": "already converted"})
        return True

    def _record(self, i: int, written: list[dict[str, Any]], exc: BaseException | None) -> None:
        task = self.tasks[i]
        if exc is not None:  # reported; the other series go on
            logger.info("series %s failed", task.key, exc_info=exc)
            self.report.failed.append(_failure(task, exc, self.deid))
            return
        self.results[i] = written
        self.converted.append(i)
        if self.on_series is not None:
            self.on_series(task, written)


def _convert_here(
    task: SeriesTask, dest: Path, options: ConvertOptions, secret: str, bar: Any
) -> tuple[list[dict[str, Any]], BaseException | None]:
    bar.set_postfix_str(task.name[-40:], refresh=False)
    try:
        return convert_series(task, dest, options, secret), None
    except Exception as exc:
        return [], exc


# one series at a time per worker process, whatever its number of threads: memory stays
# bounded by the largest series (plus its output) on every worker
_WORKER_LOCK = threading.Lock()
#: a task holds several small series, so that the scheduler's cost per task does not rival
#: a small series' own; it closes at this many bytes of images (a large series is alone),
_BATCH_BYTES = 64 * 2**20
#: at this many series (the pickled plans stay small),
_BATCH_SERIES = 32
#: or at 1 / (this x the number of workers) of the series not yet submitted: large batches
#: first, then smaller and smaller ones down to single series, so that the workers finish
#: together (guided self-scheduling) with few tasks in all
_BATCH_SHARE = 2


def _convert_on_worker(
    batch: bytes, dest: str, options: ConvertOptions, secret: str
) -> list[tuple[list[dict[str, Any]], BaseException | None]]:
    """Run :func:`convert_series` on each task of a batch, inside a dask.distributed task.

    ``batch`` is the pickled list of :class:`SeriesTask` (see :meth:`_ClientRunner._flush`).
    Returns ``(rows, error)`` per task: one series failing does not fail the others. The
    series' own reads run on the synchronous scheduler: a compute inside a task would
    otherwise go back to the cluster (and could wait for the very worker it runs on).
    """
    import dask

    tasks: list[SeriesTask] = pickle.loads(batch)

    outcomes: list[tuple[list[dict[str, Any]], BaseException | None]] = []
    with _WORKER_LOCK, dask.config.set(scheduler="synchronous"):
        for task in tasks:
            try:
                outcomes.append((convert_series(task, dest, options, secret), None))
            except Exception as exc:
                outcomes.append(([], exc))
    return outcomes


def _pickled(tasks: list[SeriesTask]) -> bytes:
    """Pickle a batch once, here: the scheduler passes the bytes on as they are.

    Handed over as objects, the plans' frame tables would be unpickled by the scheduler and
    pickled again for the worker. What plain pickle refuses (a function among a remote
    catalog's storage options) goes through cloudpickle, as dask would send it.
    """
    try:
        return pickle.dumps(tasks, protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, AttributeError, TypeError):
        import cloudpickle

        return cloudpickle.dumps(tasks, protocol=pickle.HIGHEST_PROTOCOL)


def _image_bytes(task: SeriesTask) -> int:
    """Rough size of a series' image (the batch size guide; 2 bytes a sample)."""
    return 2 * int(task.plan.grid.size) * int(np.prod(task.plan.frame_shape))


class _ClientRunner:
    """Convert on a dask.distributed client: batches of series, submitted as soon as planned.

    Tasks are grouped in planning order into batches of up to :data:`_BATCH_BYTES` of images
    and :data:`_BATCH_SERIES` series, each batch taking a share of the series still to come
    (:data:`_BATCH_SHARE`), so a cohort of tiny series does not pay the scheduler's cost per
    series while the last tasks are single series that even out the workers' ends.
    """

    def __init__(
        self, client: Any, dest: Path, options: ConvertOptions, secret: str, total: int
    ) -> None:
        from distributed import as_completed

        if client is True:
            from distributed import get_client

            client = get_client()
        self.client = client
        self.args = (str(dest.resolve()), options, secret)
        self.run = uuid.uuid4().hex[:8]
        self.workers = max(1, len(client.scheduler_info(n_workers=-1).get("workers", {})))
        self.remaining = total  # series not yet submitted (planned or not)
        self.batch: list[tuple[int, SeriesTask]] = []
        self.members: dict[str, list[int]] = {}
        self.futures: list[Any] = []
        self.completed = as_completed(with_results=False)

    def submit(self, i: int, task: SeriesTask) -> None:
        """Add a task to the current batch; submit the batch when it is full."""
        if self.batch and (
            len(self.batch) >= self._batch_size()
            or sum(_image_bytes(t) for _, t in self.batch) + _image_bytes(task) > _BATCH_BYTES
        ):
            self._flush()
        self.batch.append((i, task))

    def _batch_size(self) -> int:
        share = -(-self.remaining // (_BATCH_SHARE * self.workers))  # ceil
        return max(1, min(_BATCH_SERIES, share))

    def _flush(self) -> None:
        if not self.batch:
            return
        indices = [i for i, _ in self.batch]
        batch = _pickled([t for _, t in self.batch])
        future = self.client.submit(
            _convert_on_worker, batch, *self.args,
            key=f"dicomxr-convert-{self.run}-{indices[0]}", pure=False, retries=0,
        )  # fmt: skip
        self.members[future.key] = indices
        self.futures.append(future)
        self.completed.add(future)
        self.remaining -= len(self.batch)
        self.batch = []

    def outcomes(self) -> Iterator[Outcome]:
        """Yield ``(index, rows, error)`` of each series as its batch finishes."""
        self._flush()
        for future in self.completed:
            indices = self.members[future.key]
            try:
                results = future.result()
            except Exception as exc:  # the batch as a whole (a worker lost, unpicklable...)
                results = [([], exc)] * len(indices)
            for i, (rows, exc) in zip(indices, results, strict=True):
                yield i, rows, exc
            future.release()

    def cancel(self) -> None:
        # interrupted (Ctrl-C): nothing more is started; a series being written stays
        # invisible until its atomic rename, and has no done-record, so a rerun redoes it
        self.client.cancel(self.futures)


def _scanned(
    source: Any,
    *,
    recursive: bool,
    progress: bool | None,
    storage_options: Mapping[str, Any] | None = None,
    keys: Sequence[str] = (),
    client: Any = None,
) -> Any:
    """Scan a path source (with the caller's progress choice); pass catalogs and plans on."""
    import pandas as pd

    from dicomxr.series import SeriesPlan

    if isinstance(source, pd.DataFrame) and storage_options:
        source = source.copy(deep=False)
        source.attrs["storage_options"] = dict(storage_options)
    if isinstance(source, (pd.DataFrame, SeriesPlan)):
        return source
    if isinstance(source, Sequence) and not isinstance(source, str):
        if source and all(isinstance(s, SeriesPlan) for s in source):
            return source
    from dicomxr.catalog import scan

    return scan(
        source, recursive=recursive, progress=progress, storage_options=storage_options,
        keys=keys or None, client=client,
    )  # fmt: skip


def _failure(task: SeriesTask, exc: BaseException, deid: Any) -> dict[str, Any]:
    error = f"{type(exc).__name__}: {exc}"
    public_key = deid.uids_in(task.key) if deid is not None else task.key
    # an error message may name files (paths can hold patient names): not in a shared manifest
    manifest_error = type(exc).__name__ if deid is not None else error
    return {"series": task.label, "error": error, "public_key": public_key,
            "manifest_error": manifest_error}  # fmt: skip
