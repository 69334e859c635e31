"""Training-loader throughput: a DataLoader over a converted Zarr store vs MONAI on DICOM.

Run on demand (not a test)::

    python bench/loader.py [--epochs 3] [--num-workers 0]

Needs the ``bench`` extra (MONAI, which needs torch: ``pip install torch==2.13.0`` first) and
the ``torch`` extra. The series are real scanner data from ``$DICOMXR_TEST_DATA`` (or
``../shared/data``): the Philips 140 x 512 x 512 head CT and the Philips 170 x 256 x 256
sagittal MPRAGE.

Both sides give the same training input, each series in RAS orientation at 1 mm isotropic
spacing, as float32:

- **dicomxr**: the series are converted once (``dicomxr.convert(..., format="zarr",
  orientation="RAS", spacing=1.0, dtype="float32")``; its time is printed, a one-off cost),
  then a ``torch.utils.data.DataLoader`` over :class:`dicomxr.ml.torch.ZarrSeriesDataset`
  reads them;
- **MONAI**: a DataLoader over ``monai.data.Dataset`` with ``LoadImaged(reader="PydicomReader")``
  + ``EnsureChannelFirstd`` + ``Orientationd("RAS")`` + ``Spacingd(1 mm)`` on each series'
  DICOM folder, every epoch (what a pipeline without a conversion step does).

Prints samples/s of each and the ratio (issue 9's goal: >= 5x), with the shapes so you can
see both give the same volumes. Figures depend on the machine's load (printed).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _data() -> Path:
    return Path(os.environ.get("DICOMXR_TEST_DATA", ROOT.parent / "shared" / "data"))


def _series_folders(tmp: Path) -> list[Path]:
    """One folder per series (links to its files): what MONAI's DICOM reader takes."""
    import dicomxr

    data = _data()
    picks = [
        (data / "dcm_qa_ct" / "In" / "Philips" / "S21570" / "S2020", None),
        (data / "dcm_qa_philips_enh" / "In" / "cl", 1301),
    ]
    folders = []
    for source, number in picks:
        catalog = dicomxr.scan(source, progress=False, warn=False)
        if number is not None:
            catalog = catalog[catalog["SeriesNumber"] == number]
        catalog = catalog[catalog["has_pixels"]]
        folder = tmp / "dicom" / f"series{len(folders) + 1}"
        folder.mkdir(parents=True)
        for path in catalog["path"]:
            (folder / Path(path).name).symlink_to(path)
        folders.append(folder)
    return folders


def _rate(loader, epochs: int) -> tuple[float, list[tuple[int, ...]]]:
    shapes: list[tuple[int, ...]] = []
    n = 0
    t0 = time.perf_counter()
    for epoch in range(epochs):
        for batch in loader:
            n += batch["image"].shape[0]
            if epoch == 0:
                shapes.append(tuple(batch["image"].shape[1:]))
    return n / (time.perf_counter() - t0), shapes


def main() -> None:
    """Convert once, then time both loaders and print the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--num-workers", type=int, default=0)
    args = parser.parse_args()

    from monai.data import Dataset
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd, Spacingd
    from torch.utils.data import DataLoader

    import dicomxr
    from dicomxr.ml.torch import ZarrSeriesDataset

    warnings.simplefilter("ignore")
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"{os.cpu_count()} CPUs, load average {load}; {args.epochs} epochs, "
          f"num_workers={args.num_workers}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        folders = _series_folders(Path(tmp))
        t0 = time.perf_counter()
        report = dicomxr.convert(
            [str(p) for f in folders for p in sorted(f.iterdir())], Path(tmp) / "out",
            format="zarr", orientation="RAS", spacing=1.0, dtype="float32", progress=False,
        )  # fmt: skip
        assert report.ok and len(report.done) == len(folders), str(report)
        print(f"convert   : {len(folders)} series to Zarr (RAS, 1 mm, float32) once in "
              f"{time.perf_counter() - t0:.1f} s")  # fmt: skip

        ours = DataLoader(ZarrSeriesDataset(Path(tmp) / "out"), batch_size=1,
                          num_workers=args.num_workers)  # fmt: skip
        ours_rate, ours_shapes = _rate(ours, args.epochs)

        transform = Compose([
            LoadImaged(keys="image", reader="PydicomReader"),
            EnsureChannelFirstd(keys="image"),
            Orientationd(keys="image", axcodes="RAS"),
            Spacingd(keys="image", pixdim=(1.0, 1.0, 1.0)),
        ])  # fmt: skip
        data = [{"image": str(f)} for f in folders]
        theirs = DataLoader(Dataset(data, transform), batch_size=1, num_workers=args.num_workers)
        monai_rate, monai_shapes = _rate(theirs, args.epochs)
    print(f"dicomxr   : {ours_rate:.2f} samples/s  shapes {sorted(ours_shapes)}")
    print(f"MONAI     : {monai_rate:.2f} samples/s  shapes {sorted(monai_shapes)}")
    ratio = ours_rate / monai_rate
    print(f"ratio     : {ratio:.1f}x (goal >= 5x: {'met' if ratio >= 5 else 'NOT met'}); "
          "dicomxr's image is (C, slice, row, col), MONAI's (C, x, y, z): the same voxels "
          "in a different axis order")  # fmt: skip


if __name__ == "__main__":
    main()
