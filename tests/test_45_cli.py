"""dicomxr demo / scan / info: the commands a newcomer types first."""

from __future__ import annotations

import shutil
import subprocess

import nibabel as nib
import pytest

from dicomxr import phantom
from dicomxr.cli import main


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    phantom.write_series(
        root, phantom.phantom_volume((4, 8, 8)), series_number=11, series_description="first"
    )
    phantom.write_series(
        root,
        phantom.phantom_volume((3, 8, 8), seed=2),
        series_number=12,
        series_description="second",
        file_names=[f"S{n}.dcm" for n in range(3)],
    )
    phantom.write_series(
        root,
        phantom.phantom_volume((1, 8, 8), seed=3),
        series_number=13,
        series_description="scout",
        file_names=["L0.dcm"],
        extra={"ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]},
    )
    (root / "readme.txt").write_text("not DICOM")
    return root


def test_demo_console_script(tmp_path):
    exe = shutil.which("dicomxr")
    assert exe, "the dicomxr console script is not installed (pip install -e .)"
    out = subprocess.run(
        [exe, "demo", "--out", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "GeometryReport" in text
    assert "<xarray.DataArray 'image'" in text
    png = tmp_path / "demo" / "montage.png"
    nii = tmp_path / "demo" / "sample.nii.gz"
    assert png.stat().st_size > 1000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert nib.load(nii).shape == (96, 96, 40, 6)


def test_scan_lists_series(folder, capsys):
    assert main(["scan", str(folder), "--skipped"]) == 0
    out = capsys.readouterr().out
    assert "first" in out and "second" in out
    assert "11" in out and "12" in out
    assert "2 series" in out and "1 skipped" in out
    assert "readme.txt" in out
    assert "1 frame(s) set apart" in out and "localizer" in out
    assert main(["scan", str(folder), "--include", "localizer"]) == 0
    out = capsys.readouterr().out
    assert "3 series" in out and "scout" in out


def test_scan_csv(folder, tmp_path, capsys):
    csv = tmp_path / "catalog.csv"
    assert main(["scan", str(folder), "--csv", str(csv)]) == 0
    assert len(csv.read_text().splitlines()) == 1 + 8  # header + one row per DICOM file


def test_info_one_and_all(folder, capsys):
    assert main(["info", str(folder), "--series", "12"]) == 0
    one = capsys.readouterr().out
    assert "GeometryReport" in one
    assert one.count("GeometryReport") == 1
    assert main(["info", str(folder)]) == 0
    assert capsys.readouterr().out.count("GeometryReport") == 2
    assert main(["info", str(folder), "--series", "nothing like it"]) == 2
    assert "no series matches" in capsys.readouterr().err
