"""Write synthetic DICOM series with exact, known geometry.

Real scanner output is the judge of dicomxr, but edge cases (a missing slice, a duplicate
position, a 300-slice volume for a benchmark, shuffled file names) are easiest to test on
series whose truth is known by construction. :func:`write_series` writes a proper classic
DICOM series (one file per frame, full patient/study/series/frame-of-reference modules,
explicit or implicit VR little endian, or RLE Lossless) from a volume and a geometry.

Voxel values encode where they are, so a wrongly ordered or transposed read is caught:
:func:`phantom_volume` is a smooth 3D pattern plus, in each slice, the slice index in
the first pixel row.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["phantom_volume", "write_series"]

_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
_MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


def phantom_volume(
    shape: tuple[int, int, int], *, dtype: str = "int16", seed: int = 0
) -> np.ndarray:
    """Return a deterministic test volume of shape ``(slices, rows, cols)``.

    Every voxel differs from its neighbours along each axis, so a flipped, transposed or
    reordered read never equals the original. Row 0 of slice ``k`` holds ``k`` in its first
    pixel, which makes slice order visible in a single pixel.
    """
    nz, ny, nx = shape
    z, y, x = np.meshgrid(
        np.arange(nz, dtype=np.float64),
        np.arange(ny, dtype=np.float64),
        np.arange(nx, dtype=np.float64),
        indexing="ij",
    )
    cz, cy, cx = (nz - 1) / 2, (ny - 1) / 2, (nx - 1) / 2
    r = np.sqrt(((z - cz) / max(nz, 1)) ** 2 + ((y - cy) / ny) ** 2 + ((x - cx) / nx) ** 2)
    vol = 1000.0 * np.exp(-8 * r**2) + 3.0 * x + 2.0 * y + 5.0 * z
    rng = np.random.default_rng(seed)
    vol += rng.integers(0, 3, size=shape)
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    if info is not None:
        vol = np.clip(vol, info.min, info.max)
    out = vol.astype(dtype)
    out[:, 0, 0] = np.arange(nz).astype(dtype)
    return out


def _uid(root: str, *parts: int) -> str:
    return root + "." + ".".join(str(int(p)) for p in parts)


def write_series(
    dest: str | Path,
    volume: np.ndarray,
    *,
    spacing: tuple[float, float] = (0.5, 0.5),
    orientation: Sequence[float] = (1, 0, 0, 0, 1, 0),
    origin: Sequence[float] = (-100.0, -120.0, -50.0),
    slice_step: float | Sequence[float] = 1.0,
    positions: Sequence[Sequence[float]] | None = None,
    modality: str = "CT",
    rescale: tuple[float, float] = (1.0, -1024.0),
    transfer_syntax: str = "1.2.840.10008.1.2.1",
    series_uid: str | None = None,
    study_uid: str | None = None,
    series_number: int = 1,
    series_description: str = "dicomxr phantom",
    uid_root: str = "1.2.826.0.1.3680043.10.1187",
    file_names: Sequence[str] | None = None,
    instance_numbers: Sequence[int] | None = None,
    extra: dict[str, object] | None = None,
    per_frame: Sequence[dict[str, object]] | None = None,
) -> list[Path]:
    """Write ``volume`` (``slices, rows, cols``) as a classic DICOM series, one file per slice.

    Parameters
    ----------
    dest
        Folder to write into (created). Files are named ``IM0001.dcm``... unless
        ``file_names`` is given.
    volume
        Integer array ``(slices, rows, cols)``; ``uint8``, ``int16`` or ``uint16``.
    spacing
        PixelSpacing: (row spacing, column spacing) in mm, DICOM order.
    orientation
        ImageOrientationPatient (row direction cosines, then column direction cosines).
    origin
        ImagePositionPatient of slice 0.
    slice_step
        Distance in mm between consecutive slices along the normal; a sequence of
        ``slices - 1`` steps gives uneven spacing. Ignored when ``positions`` is given.
    positions
        Explicit ImagePositionPatient per slice (for tilt, duplicates, anything else).
    modality
        ``"CT"`` (CT Image Storage) or ``"MR"`` (MR Image Storage).
    rescale
        (RescaleSlope, RescaleIntercept).
    transfer_syntax
        Explicit VR LE (default), implicit VR LE ``1.2.840.10008.1.2`` or RLE Lossless
        ``1.2.840.10008.1.2.5``.
    series_uid, study_uid
        UIDs to use; generated deterministically from ``uid_root`` when omitted.
    file_names
        File name per slice (lets a test shuffle names against positions).
    instance_numbers
        InstanceNumber per slice (default ``1..n`` in slice order).
    extra
        Further attributes (keyword -> value) written into every file.
    per_frame
        Attributes (keyword -> value) per slice, for example ``{"EchoTime": 5.0}``.

    Returns
    -------
    list of pathlib.Path
        The files written, in slice order.
    """
    import pydicom
    from pydicom.uid import UID

    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"volume must be (slices, rows, cols), got shape {volume.shape}")
    if volume.dtype not in (np.uint8, np.int16, np.uint16):
        raise ValueError(f"volume dtype must be uint8, int16 or uint16, got {volume.dtype}")
    n, rows, cols = volume.shape
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    iop = np.asarray(orientation, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    if positions is None:
        steps = np.broadcast_to(np.asarray(slice_step, dtype=float), (max(n - 1, 0),))
        offsets = np.concatenate([[0.0], np.cumsum(steps)])
        positions = [np.asarray(origin, dtype=float) + o * normal for o in offsets]
    if len(positions) != n:
        raise ValueError(f"{len(positions)} positions for {n} slices")
    seed = abs(hash((rows, cols, n, series_number))) % 10**8
    ids = _SeriesIds(
        uid_root=uid_root,
        seed=seed,
        series_number=series_number,
        study_uid=study_uid or _uid(uid_root, 1, seed),
        series_uid=series_uid or _uid(uid_root, 2, seed, series_number),
        frame_uid=_uid(uid_root, 3, seed),
        sop_class=_CT_IMAGE_STORAGE if modality == "CT" else _MR_IMAGE_STORAGE,
    )
    ts = UID(transfer_syntax)
    out: list[Path] = []
    for k in range(n):
        ds = _slice_dataset(ids, k, ts)
        _describe_series(ds, k, modality, series_description, instance_numbers)
        _place_slice(ds, positions[k], iop, normal, spacing, slice_step)
        _describe_pixels(ds, volume[k], rescale, modality)
        for key, value in (extra or {}).items():
            setattr(ds, key, value)
        for key, value in (per_frame[k] if per_frame is not None else {}).items():
            setattr(ds, key, value)
        ds.PixelData = np.ascontiguousarray(volume[k]).tobytes()
        if ts.is_compressed:
            ds.compress(ts, encoding_plugin="pydicom" if ts == pydicom.uid.RLELossless else "")
        name = file_names[k] if file_names is not None else f"IM{k + 1:04d}.dcm"
        path = dest / name
        ds.save_as(
            path,
            enforce_file_format=True,
            implicit_vr=ts == pydicom.uid.ImplicitVRLittleEndian,
            little_endian=True,
        )
        out.append(path)
    return out


@dataclass(frozen=True)
class _SeriesIds:
    """The UIDs every file of one written series shares, and what makes its instance UIDs."""

    uid_root: str
    seed: int
    series_number: int
    study_uid: str
    series_uid: str
    frame_uid: str
    sop_class: str


#: the acquisition date and time every phantom series carries
_ACQUIRED = _dt.datetime(2024, 1, 2, 10, 30, 0)


def _slice_dataset(ids: _SeriesIds, k: int, ts: Any) -> Any:
    """Start the dataset of slice ``k``: file meta, UIDs, dates (uncompressed for now)."""
    import pydicom
    from pydicom.dataset import FileMetaDataset

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ids.sop_class
    meta.MediaStorageSOPInstanceUID = _uid(ids.uid_root, 4, ids.seed, ids.series_number, k + 1)
    # compress() moves the dataset to RLE itself; it must start uncompressed
    meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian if ts.is_compressed else ts
    meta.ImplementationClassUID = ids.uid_root + ".0"
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = ids.sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyDate = _ACQUIRED.strftime("%Y%m%d")
    ds.SeriesDate = ds.StudyDate
    ds.StudyTime = _ACQUIRED.strftime("%H%M%S")
    ds.AcquisitionTime = (_ACQUIRED + _dt.timedelta(seconds=k)).strftime("%H%M%S.%f")
    ds.StudyInstanceUID = ids.study_uid
    ds.SeriesInstanceUID = ids.series_uid
    ds.SeriesNumber = ids.series_number
    ds.FrameOfReferenceUID = ids.frame_uid
    return ds


def _describe_series(
    ds: Any,
    k: int,
    modality: str,
    series_description: str,
    instance_numbers: Sequence[int] | None,
) -> None:
    """Set the patient, study and series words of slice ``k``."""
    ds.Modality = modality
    ds.Manufacturer = "dicomxr"
    ds.PatientName = "Phantom^Synthetic"
    ds.PatientID = "PHANTOM-0001"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyID = "1"
    ds.SeriesDescription = series_description
    ds.InstanceNumber = int(instance_numbers[k]) if instance_numbers is not None else k + 1
    ds.PositionReferenceIndicator = ""


def _place_slice(
    ds: Any,
    position: Any,
    iop: np.ndarray,
    normal: np.ndarray,
    spacing: tuple[float, float],
    slice_step: float | Sequence[float],
) -> None:
    """Set the geometry of one slice: position, orientation, location, thickness, spacing."""
    ds.ImagePositionPatient = [float(f"{v:.6f}") for v in position]
    ds.ImageOrientationPatient = [float(f"{v:.8f}") for v in iop]
    ds.SliceLocation = float(f"{np.dot(position, normal):.6f}")
    ds.SliceThickness = float(np.atleast_1d(slice_step)[0])
    ds.PixelSpacing = list(spacing)


def _describe_pixels(
    ds: Any, frame: np.ndarray, rescale: tuple[float, float], modality: str
) -> None:
    """Set how a slice's pixels are stored, its rescale (and, for CT, its window)."""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = frame.shape
    ds.BitsAllocated = frame.dtype.itemsize * 8
    ds.BitsStored = ds.BitsAllocated
    ds.HighBit = ds.BitsAllocated - 1
    ds.PixelRepresentation = 1 if frame.dtype.kind == "i" else 0
    ds.RescaleSlope, ds.RescaleIntercept = rescale
    if modality == "CT":
        ds.RescaleType = "HU"
        ds.KVP = 120
        ds.WindowCenter, ds.WindowWidth = 40, 400
