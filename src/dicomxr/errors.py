"""Exceptions and warnings raised by dicomxr.

Every error names the fix where there is one: the argument that selects a series, the
package that provides a missing decoder, the file that was skipped and why.
"""

from __future__ import annotations


class DicomxrError(Exception):
    """Base class of every error dicomxr raises on purpose."""


class NoSeriesError(DicomxrError, ValueError):
    """The source holds no image series that can be opened (the message says what was skipped)."""


class MultipleSeriesError(DicomxrError, ValueError):
    """The source holds several series; the message lists them and how to pick one."""


class GeometryError(DicomxrError, ValueError):
    """The frames of a series do not form the regular grid the caller asked for."""


class PixelDataError(DicomxrError, ValueError):
    """The pixel data of a frame cannot be read (cut short, malformed, or undecodable).

    The message names the file, the frame and what is wrong. Also importable from
    :mod:`dicomxr.pixels`, where it was first defined.
    """


class LabelError(DicomxrError, ValueError):
    """A label object (DICOM SEG, RTSTRUCT) does not fit the image it is read onto or written from.

    The message names what differs (Frame of Reference, referenced series or instances, a frame
    or contour between the image's slices), the expected and the found values, and the fix.
    """


class ScalingError(DicomxrError, ValueError):
    """The scaling asked for is unknown, or the series has no values for it.

    The message names the scalings that exist (``"display"``, ``"precise"``,
    ``"real_world"``) and which of them the series can give.
    """


class MissingDependencyError(DicomxrError, ImportError):
    """An optional dependency is needed; the message names the extra to install."""


class InputFileError(DicomxrError, OSError):
    """A file the caller named cannot be read as a file (a pipe, a device, a symlink loop).

    Also an :class:`OSError`, so code that guards file access with ``except OSError`` keeps
    working. The message names the path and what it is.
    """


class DicomxrWarning(UserWarning):
    """Base class of dicomxr's warnings."""


class GeometryWarning(DicomxrWarning):
    """A series has irregular geometry (gaps, uneven spacing, tilt, duplicates) that was kept."""


class LabelWarning(DicomxrWarning):
    """Labels were read or written with a change the caller should know about (renumbering)."""


class PixelDataWarning(DicomxrWarning):
    """Pixel data was read, but does not quite fit its header (extra bytes were ignored)."""


class SetApartWarning(DicomxrWarning):
    """Frames of an opened series were left out of its volume (cut short, copies, no geometry).

    The message names how many files, the first few, and where the full list is
    (``da.attrs["set_apart"]``, ``dicomxr.list_series(source).set_apart``).
    """


class InstanceCollisionWarning(DicomxrWarning):
    """Files share a SOPInstanceUID but hold different images; they are kept as distinct."""


class SkippedFileWarning(DicomxrWarning):
    """Files were skipped during a scan; see the catalog's ``skipped`` report."""


# what a per-file guard must let through: the user (Ctrl-C) or the interpreter stopping
_NOT_PER_FILE = (KeyboardInterrupt, SystemExit, GeneratorExit)


def is_per_file_failure(exc: BaseException) -> bool:
    """Tell whether ``exc`` is a failure to read one input (to report and go on with the rest).

    Every exception is, including ``RecursionError``, ``MemoryError`` from a lying header and
    the ``pyo3_runtime.PanicException`` a Rust codec raises on corrupt data (it derives from
    :class:`BaseException`, not :class:`Exception`); only interruption and interpreter exit
    are not.
    """
    return not isinstance(exc, _NOT_PER_FILE)


def failure_reason(exc: BaseException, limit: int = 200) -> str:
    """One line naming an exception's type and message, cut to ``limit`` characters."""
    text = " ".join(str(exc).split())
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def user_stacklevel() -> int:
    """Return the ``stacklevel`` that points a warning at the first caller outside dicomxr.

    Warnings are raised deep inside the package (a scan called by ``open_study`` called by the
    user); a fixed ``stacklevel`` would blame a dicomxr line. Call it in the ``warnings.warn``
    call itself: ``warnings.warn(msg, Category, stacklevel=user_stacklevel())``.
    """
    import sys

    frame = sys._getframe(1)
    level = 1
    while frame is not None and frame.f_globals.get("__name__", "").startswith("dicomxr"):
        frame = frame.f_back
        level += 1
    return level


def require(module: str, *, extra: str, purpose: str):
    """Import an optional dependency or raise an error naming the extra to install.

    Parameters
    ----------
    module
        Importable module name, for example ``"nibabel"``.
    extra
        The dicomxr extra that provides it, for example ``"nifti"``.
    purpose
        What it is needed for, used in the message.

    Returns
    -------
    module
        The imported module.
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{purpose} needs the optional dependency {module!r}: "
            f"install it with `pip install 'dicomxr[{extra}]'` (or `pip install {module}`)."
        ) from exc
