"""dcm2niix as an independent reference for dicomxr's NIfTI output.

dcm2niix (Chris Rorden; PyPI ``dcm2niix`` ships the binary) is the converter most
neuroimaging pipelines trust. This module runs it once per input (folder or single file)
into a temporary folder, loads what it wrote with nibabel and offers the comparisons the
fidelity tests make:

- both images are brought to the closest canonical orientation (RAS+) with
  :func:`nibabel.as_closest_canonical`, which only permutes and flips axes, so voxel values
  can then be compared exactly and affines within a tolerance in millimetres;
- 4D volume sets are compared volume by volume, in order or, when the order differs, as a
  set (``match_volumes``);
- ``.bval`` / ``.bvec`` files are read back for the diffusion comparison.

How dcm2niix is run, and why
----------------------------
``dcm2niix -b y -ba n -z n -p n -f %s_%d -o OUT IN``

- ``-p n``: use the DICOM standard's display scaling (RescaleSlope / RescaleIntercept, the
  Modality LUT), dicomxr's default (``scaling="display"``). dcm2niix's own default (``-p y``)
  applies Philips' private "precise float" scale slope (2005,100E); the fidelity tests run it
  too (``precise=True``) as the reference for ``scaling="precise"``.
- ``-ba n``: keep SeriesInstanceUID in the JSON sidecar, used to pair outputs with series.
- ``-z n``: plain ``.nii`` (faster to write and to read back).
- ``-s y`` (single-file inputs only): convert exactly that file.

Overlays
--------
``<name>_ROI1`` files are bitmaps dcm2niix extracts from DICOM overlay planes (60xx,3000)
of the Philips "Exam Summary" pages; overlays are not pixel data and dicomxr does not read
them, so these files are not compared (:attr:`RefImage.overlay`).

Outputs dcm2niix resamples on purpose
-------------------------------------
For a CT with gantry tilt dcm2niix writes, next to the acquired slices, a ``_Tilt_1`` copy
resampled onto an orthogonal grid; for unequal slice spacing an ``_Eq_1`` copy interpolated to
equal spacing (``_Tilt_Eq_1`` when both). Those are new, interpolated voxels that exist in no
DICOM file: dicomxr keeps the acquired voxels and records the true positions (the affine of a
tilted stack is sheared, the geometry report flags it). The fidelity tests therefore compare
with dcm2niix's *unresampled* output of the same series (the file without the suffix), and
:func:`is_resampled` tells the two apart.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

DCM2NIIX_ARGS = ("-b", "y", "-ba", "n", "-z", "n", "-p", "n", "-f", "%s_%d")
AFFINE_ATOL_MM = 1e-3

# dcm2niix's file-name post-fixes (see dcm2niix's docs/FileNaming); order matters for parsing
_RESAMPLED = re.compile(r"_(Tilt|Eq)(_|$)")
# "_ROI1": a bitmap dcm2niix extracts from a DICOM overlay plane (60xx,3000) - not pixel data
_OVERLAY = re.compile(r"_ROI\d+$")


def dcm2niix_args(*, precise: bool = False) -> tuple[str, ...]:
    """The arguments of a run: :data:`DCM2NIIX_ARGS`, with ``-p y`` when ``precise``."""
    args = list(DCM2NIIX_ARGS)
    args[args.index("-p") + 1] = "y" if precise else "n"
    return tuple(args)


def dcm2niix_exe() -> str:
    """Return the dcm2niix executable or raise naming the package that provides it."""
    exe = shutil.which("dcm2niix")
    if exe is None:
        raise RuntimeError("dcm2niix not found: `pip install dcm2niix` (it ships the binary)")
    return exe


def dcm2niix_version() -> str:
    """Return dcm2niix's version string, e.g. ``v1.0.20240202``."""
    out = subprocess.run(
        [dcm2niix_exe(), "--version"], capture_output=True, text=True, timeout=30, check=False
    )
    match = re.search(r"v\d+\.\d+\.\d+", out.stdout + out.stderr)
    return match.group(0) if match else "unknown"


def is_resampled(name: str) -> bool:
    """Whether a dcm2niix output name marks a resampled copy (``_Tilt_1``, ``_Eq_1``, ...)."""
    return bool(_RESAMPLED.search(name))


@dataclass
class RefImage:
    """One NIfTI file written by dcm2niix, with its sidecars."""

    path: Path
    sidecar: dict[str, Any]
    bval: np.ndarray | None = None
    bvec: np.ndarray | None = None

    @property
    def name(self) -> str:
        """File name without ``.nii``."""
        return self.path.name.removesuffix(".nii")

    @property
    def resampled(self) -> bool:
        """Whether dcm2niix interpolated this copy (gantry tilt or unequal spacing)."""
        return is_resampled(self.name)

    @property
    def overlay(self) -> bool:
        """Whether this is an overlay bitmap (``_ROI<n>``) rather than image pixel data."""
        return bool(_OVERLAY.search(self.name))

    @property
    def series_uid(self) -> str | None:
        """SeriesInstanceUID from the JSON sidecar."""
        return self.sidecar.get("SeriesInstanceUID")

    @property
    def series_number(self) -> int | None:
        """SeriesNumber from the JSON sidecar."""
        value = self.sidecar.get("SeriesNumber")
        return None if value is None else int(value)

    def load(self):
        """Load with nibabel (memory-mapped where possible)."""
        import nibabel as nib

        return nib.load(self.path)


@dataclass
class Conversion:
    """What one dcm2niix run produced for one input."""

    source: Path
    out_dir: Path
    returncode: int
    log: str
    images: list[RefImage] = field(default_factory=list)

    def for_series(self, series_uid: str | None, series_number: int | None) -> list[RefImage]:
        """Unresampled image outputs of one series.

        Paired by SeriesInstanceUID (a series' identity; one UID may carry several
        SeriesNumbers, as the Philips exam-summary pages do); by SeriesNumber only for an
        output whose sidecar has no UID.
        """
        found = []
        for image in self.images:
            if image.resampled or image.overlay:
                continue
            if image.series_uid is not None and series_uid is not None:
                if image.series_uid == series_uid:
                    found.append(image)
            elif image.series_number is not None and image.series_number == series_number:
                found.append(image)
        return found

    def resampled(self) -> list[RefImage]:
        """Outputs dcm2niix resampled (``_Tilt``/``_Eq``)."""
        return [image for image in self.images if image.resampled]


def run_dcm2niix(
    source: Path, out_dir: Path, *, single_file: bool = False, precise: bool = False
) -> Conversion:
    """Run dcm2niix on a folder (recursively) or, with ``single_file``, on one file.

    Parameters
    ----------
    source
        Folder or file to convert.
    out_dir
        Empty folder for the outputs (created).
    single_file
        Convert only ``source`` (dcm2niix ``-s y``), not its neighbours.
    precise
        Philips precise values (``-p y``, dcm2niix's default) instead of display (``-p n``).

    Returns
    -------
    Conversion
        The outputs, with sidecars and b-value/vector files read.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [dcm2niix_exe(), *dcm2niix_args(precise=precise)]
    if single_file:
        cmd += ["-s", "y"]
    cmd += ["-o", str(out_dir), str(source)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    conv = Conversion(
        source=source,
        out_dir=out_dir,
        returncode=proc.returncode,
        log=proc.stdout + proc.stderr,
    )
    for nii in sorted(out_dir.glob("*.nii")):
        stem = nii.with_suffix("")
        sidecar_path = stem.with_suffix(".json")
        sidecar = json.loads(sidecar_path.read_text()) if sidecar_path.is_file() else {}
        bval = bvec = None
        if stem.with_suffix(".bval").is_file():
            bval = np.loadtxt(stem.with_suffix(".bval"), ndmin=1)
        if stem.with_suffix(".bvec").is_file():
            bvec = np.loadtxt(stem.with_suffix(".bvec"), ndmin=2)
        conv.images.append(RefImage(path=nii, sidecar=sidecar, bval=bval, bvec=bvec))
    return conv


class Dcm2niixCache:
    """Run dcm2niix at most once per input in a test session.

    Parameters
    ----------
    root
        Session temporary folder; each input gets its own sub-folder.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._done: dict[tuple[Path, bool, bool], Conversion] = {}

    def convert(
        self, source: Path, *, single_file: bool = False, precise: bool = False
    ) -> Conversion:
        """Return dcm2niix's conversion of ``source``, running it on first request."""
        key = (Path(source).resolve(), single_file, precise)
        if key not in self._done:
            out = self.root / f"run{len(self._done):03d}"
            self._done[key] = run_dcm2niix(key[0], out, single_file=single_file, precise=precise)
        return self._done[key]


# --- comparisons --------------------------------------------------------------------------


@dataclass
class Canonical:
    """An image brought to the closest canonical (RAS+) orientation."""

    data: np.ndarray  # scaled values (scl_slope / scl_inter applied), 3D or 4D
    affine: np.ndarray
    shape: tuple[int, ...]


def canonical(img) -> Canonical:
    """Bring a nibabel image to the closest canonical orientation, data scaled.

    Integer data without scaling stays integer; scaled data is float64 (nibabel's
    ``get_fdata``), RGB stays a structured array.
    """
    import nibabel as nib

    if img.ndim > 4:  # fold trailing dims into the 4th, as dcm2niix never writes >4D
        raise ValueError(f"{img.get_filename()}: {img.ndim}D image; only 3D/4D compared")
    can = nib.as_closest_canonical(img)
    dataobj = can.dataobj
    slope = getattr(dataobj, "slope", 1.0)
    inter = getattr(dataobj, "inter", 0.0)
    raw = np.asanyarray(dataobj.get_unscaled() if hasattr(dataobj, "get_unscaled") else dataobj)
    if raw.dtype.names is None and (slope != 1.0 or inter != 0.0):
        data = raw.astype(np.float64) * float(slope) + float(inter)
    else:
        data = np.asarray(raw)
    return Canonical(data=data, affine=can.affine, shape=data.shape)


def to_rgb_channels(data: np.ndarray) -> np.ndarray:
    """A NIfTI RGB24 structured array as a trailing uint8 channel axis."""
    if data.dtype.names is None:
        return data
    return np.stack([data[name] for name in data.dtype.names], axis=-1)


@dataclass
class Comparison:
    """Result of comparing our NIfTI with dcm2niix's."""

    identical_voxels: bool
    max_abs_diff: float
    affine_max_diff_mm: float
    shape_ours: tuple[int, ...]
    shape_ref: tuple[int, ...]
    volume_order: list[int] | None = None  # ref volume i == our volume volume_order[i]
    note: str = ""

    @property
    def ok(self) -> bool:
        """Voxels identical and affines within :data:`AFFINE_ATOL_MM`."""
        return self.identical_voxels and self.affine_max_diff_mm <= AFFINE_ATOL_MM


def values_equal(ours: np.ndarray, ref: np.ndarray) -> tuple[bool, float]:
    """Compare voxel values; return (identical, max |difference|).

    Integer (and RGB) data must be bit-identical. When either side is floating point the
    values were rescaled by a non-integral RescaleSlope: dcm2niix keeps the stored integers
    and a float32 ``scl_slope`` while dicomxr writes float32 ``stored * slope + intercept``
    computed in float64, so the two agree to float32 precision of the image's largest
    value (a rescale with a large intercept, e.g. Philips phase maps ``1.53 * v - 3142``,
    loses relative precision near zero on both sides); "identical" then means equal within
    4 float32 ulps of the largest magnitude - far below one step of the stored integers
    times the slope, so no voxel can be confused with its neighbour value.
    """
    ours = to_rgb_channels(ours)
    ref = to_rgb_channels(ref)
    if ours.shape != ref.shape:
        return False, float("inf")
    if ours.size == 0:
        return True, 0.0
    diff = np.abs(ours.astype(np.float64) - ref.astype(np.float64))
    max_diff = float(diff.max())
    if np.issubdtype(ours.dtype, np.integer) and np.issubdtype(ref.dtype, np.integer):
        return max_diff == 0.0, max_diff
    scale = max(float(np.abs(ref).max()), float(np.abs(ours).max()))
    tol = 4 * np.finfo(np.float32).eps * scale + np.finfo(np.float32).tiny
    return bool(max_diff <= tol), max_diff


def match_volumes(ours: np.ndarray, ref: np.ndarray) -> list[int] | None:
    """For 4D arrays, ref volume i equals which of our volumes? ``None`` if some has no match."""
    order: list[int] = []
    used: set[int] = set()
    for i in range(ref.shape[3]):
        for j in range(ours.shape[3]):
            if j in used:
                continue
            if values_equal(ours[..., j], ref[..., i])[0]:
                order.append(j)
                used.add(j)
                break
        else:
            return None
    return order


def compare_images(ours_img, ref_img, *, compare_affine: bool = True) -> Comparison:
    """Compare two nibabel images after bringing both to the closest canonical orientation.

    Parameters
    ----------
    ours_img, ref_img
        nibabel images (ours from ``to_nifti``, the reference from dcm2niix).
    compare_affine
        False where the reference has no spatial information (``sform_code == 0``, for
        example secondary-capture pages): then only voxels are compared, in stored order.
    """
    if compare_affine:
        a = canonical(ours_img)
        b = canonical(ref_img)
    else:
        a = Canonical(np.asanyarray(ours_img.dataobj), ours_img.affine, ours_img.shape)
        b = Canonical(np.asanyarray(ref_img.dataobj), ref_img.affine, ref_img.shape)
    da, db = a.data, b.data
    # dcm2niix writes a single 3D volume as 3D and a 4D series with a 4th axis; a trailing
    # singleton axis on either side is not a difference
    if da.ndim == 4 and da.shape[3] == 1 and db.ndim == 3:
        da = da[..., 0]
    if db.ndim == 4 and db.shape[3] == 1 and da.ndim == 3:
        db = db[..., 0]
    identical, max_diff = values_equal(da, db)
    order = None
    note = ""
    if not identical and not compare_affine and da.ndim >= 2:
        # without spatial information dcm2niix still stores rows bottom-up (NIfTI's
        # convention: j flipped); dicomxr writes DICOM's top-down row order
        flipped, flipped_diff = values_equal(da[:, ::-1], db)
        if flipped:
            identical, max_diff = True, flipped_diff
            note = "no geometry: rows compared bottom-up (dcm2niix flips j)"
    if not identical and da.ndim == 4 and da.shape == db.shape:
        order = match_volumes(da, db)
        if order is not None:
            identical = True
            max_diff = 0.0
            note = f"same volume set, different order: ref volume i is ours {order}"
    affine_diff = float(np.abs(a.affine - b.affine).max()) if compare_affine else 0.0
    return Comparison(
        identical_voxels=identical,
        max_abs_diff=max_diff,
        affine_max_diff_mm=affine_diff,
        shape_ours=tuple(da.shape),
        shape_ref=tuple(db.shape),
        volume_order=order,
        note=note,
    )


def load_bvals(stem: Path) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Read ``<stem>.bval`` / ``<stem>.bvec`` (FSL format) if present."""
    bval_path, bvec_path = stem.with_suffix(".bval"), stem.with_suffix(".bvec")
    bval = np.loadtxt(bval_path, ndmin=1) if bval_path.is_file() else None
    bvec = np.loadtxt(bvec_path, ndmin=2) if bvec_path.is_file() else None
    return bval, bvec
