"""Sample data that ships with dicomxr, so demos, docs and notebooks run offline.

The sample is a real Philips MR series from the BSD-2 licensed ``dcm_qa_philips_enh``
corpus (Chris Rorden and contributors): the pCASL source series ``1903`` exported as
classic DICOM, one file per slice, 96 x 96 pixels, 40 slices x 6 dynamics (a 4D series).
It is stored as a zip archive inside the package and unpacked, on first use, into the user
cache directory (``platformdirs.user_cache_dir("dicomxr")``, or ``$DICOMXR_CACHE_DIR``).

Examples
--------
>>> from dicomxr import data
>>> folder = data.sample_path()  # doctest: +SKIP
>>> sorted(folder.glob("*.dcm"))[:1]  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

__all__ = ["SAMPLES", "Sample", "cache_dir", "sample_archive", "sample_path"]


@dataclass(frozen=True)
class Sample:
    """One embedded sample: its archive, checksum and what it holds."""

    name: str
    archive: str
    sha256: str
    description: str
    licence: str


SAMPLES: dict[str, Sample] = {
    "philips_pcasl_4d": Sample(
        name="philips_pcasl_4d",
        archive="philips_pcasl_4d.zip",
        sha256="05aa769dcea74746a380d6f3007ef6124b63e0e3a0db30dafd9bc8bbf827f627",
        description=(
            "Philips Ingenia Elition X 3T, 3D pCASL source images (series 1903), classic "
            "DICOM: 240 files, 96 x 96 pixels, 40 slices x 6 dynamics."
        ),
        licence="BSD-2-Clause, dcm_qa_philips_enh (Chris Rorden); LICENSE inside the archive",
    ),
}
DEFAULT_SAMPLE = "philips_pcasl_4d"


def cache_dir() -> Path:
    """Return the directory where dicomxr unpacks samples (created on demand)."""
    env = os.environ.get("DICOMXR_CACHE_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("dicomxr"))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sample_archive(name: str = DEFAULT_SAMPLE) -> Path:
    """Return the zip archive of an embedded sample, as shipped inside the package.

    A zip file is a source of its own (``dicomxr.scan(archive)``, ``open_series(archive)``
    read its members in place, nothing is unpacked): the archive is the example of a packed
    source in the guide.

    Parameters
    ----------
    name
        Sample name, one of :data:`SAMPLES` (default ``"philips_pcasl_4d"``).

    Returns
    -------
    pathlib.Path
        The ``.zip`` file (installed packages keep it on disk).
    """
    try:
        sample = SAMPLES[name]
    except KeyError:
        raise ValueError(f"unknown sample {name!r}; choose one of {sorted(SAMPLES)}") from None
    return Path(os.fspath(resources.files("dicomxr._data") / sample.archive))


def sample_path(name: str = DEFAULT_SAMPLE) -> Path:
    """Return the folder of an embedded sample series, unpacking it on first use.

    The archive's checksum is verified before it is unpacked; the folder appears under its
    final name only once it is complete (unpacked into a temporary sibling, then renamed).

    Parameters
    ----------
    name
        Sample name, one of :data:`SAMPLES` (default ``"philips_pcasl_4d"``).

    Returns
    -------
    pathlib.Path
        Folder holding the sample's DICOM files.
    """
    try:
        sample = SAMPLES[name]
    except KeyError:
        raise ValueError(f"unknown sample {name!r}; choose one of {sorted(SAMPLES)}") from None
    root = cache_dir() / f"{sample.name}-{sample.sha256[:12]}"
    target = root / sample.name
    if target.is_dir():
        return target
    with resources.as_file(resources.files("dicomxr._data") / sample.archive) as archive:
        found = _sha256(archive)
        if found != sample.sha256:
            raise OSError(
                f"embedded sample {archive} is corrupt (sha256 {found}, expected "
                f"{sample.sha256}); reinstall dicomxr"
            )
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{sample.name}-", dir=root.parent))
        try:
            with zipfile.ZipFile(archive) as zf:
                for member in zf.namelist():
                    # the archive is ours, but never let a member escape the destination
                    dest = (tmp / member).resolve()
                    if not dest.is_relative_to(tmp.resolve()):
                        raise OSError(f"unsafe member {member!r} in {archive}")
                zf.extractall(tmp)
            try:
                os.replace(tmp, root)
            except OSError:
                if not target.is_dir():  # not a concurrent winner: a real failure
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target
