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


# ---------------------------------------------------------------------------------------
# the first hour (issue 11, item 6): one-line errors, CLI hints, consistent flags


def _one_line(err: str) -> str:
    """The stderr of a failed command: exactly one line, no traceback."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("dicomxr "), err
    return lines[0]


def _run(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m dicomxr`` in a subprocess, as a user's shell would."""
    import os
    import sys

    return subprocess.run(
        [sys.executable, "-m", "dicomxr", *argv],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize("command", ["scan", "info", "convert", "anatomy"])
def test_a_missing_path_is_one_line(command, tmp_path):
    missing = tmp_path / "no such folder"
    argv = [command, str(missing)] + ([str(tmp_path / "out")] if command == "convert" else [])
    out = _run(*argv)
    assert out.returncode != 0
    line = _one_line(out.stderr)
    assert str(missing) in line and f"dicomxr {command}:" in line


@pytest.mark.parametrize("command", ["scan", "info", "convert"])
def test_an_unknown_policy_is_one_line_naming_the_choices(command, folder, tmp_path, capsys):
    argv = [command, str(folder)] + ([str(tmp_path / "out")] if command == "convert" else [])
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--on-irregular", "bogus"])
    assert exit_.value.code == 2
    line = _one_line(capsys.readouterr().err)
    assert "'bogus'" in line and "split" in line and "--help" in line


@pytest.fixture(scope="module")
def uneven(tmp_path_factory):
    """One series whose slice steps are 1 mm then 3 mm: irregular, two regular blocks."""
    root = tmp_path_factory.mktemp("uneven")
    phantom.write_series(
        root,
        phantom.phantom_volume((8, 8, 8)),
        slice_step=[1, 1, 1, 3, 3, 3, 3],
        series_description="uneven",
    )
    return root


def test_on_irregular_raise_tripping_is_one_line_in_cli_syntax(uneven, capsys):
    assert main(["info", str(uneven), "--on-irregular", "raise", "--no-progress"]) == 1
    line = _one_line(capsys.readouterr().err)
    assert "not a regular frame grid" in line
    assert "--on-irregular split" in line and "on_irregular=" not in line


def test_python_errors_keep_python_syntax(uneven):
    import dicomxr

    with pytest.raises(dicomxr.GeometryError, match=r"on_irregular='split'"):
        dicomxr.open_series(uneven, on_irregular="raise")


def test_hints_for_picking_a_series_use_cli_syntax(folder, capsys):
    import dicomxr

    # "s" is in several descriptions ("first", "second"): several series match
    assert main(["info", str(folder), "--series", "s", "--no-progress"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "--series " in line and "series=" not in line
    with pytest.raises(dicomxr.MultipleSeriesError, match=r"series='"):
        dicomxr.open_series(folder, series="s")


def test_info_reports_the_policy_it_used(uneven, capsys):
    assert main(["info", str(uneven), "--on-irregular", "split", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "on_irregular=split" in out.splitlines()[0]
    assert "2 series" in out.splitlines()[0]
    policies = [line.split(":")[1].strip() for line in out.splitlines() if "policy " in line]
    assert policies == ["split", "split"]
    assert "regular block 1 of 2" in out and "regular block 2 of 2" in out


def test_a_missing_optional_extra_is_one_line(tmp_path):
    # matplotlib made unimportable: the demo's montage needs it
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text("import sys\nsys.modules['matplotlib'] = None\n")
    import os

    path = os.pathsep.join([str(blocker), os.environ.get("PYTHONPATH", "")])
    out = _run("demo", "--out", str(tmp_path / "demo"), env={"PYTHONPATH": path})
    assert out.returncode == 1
    line = _one_line(out.stderr)
    assert "'matplotlib'" in line and "pip install 'dicomxr[viewer]'" in line


def test_anatomy_of_a_file_that_is_not_dicom_is_one_line_and_fails(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("these are notes, not a DICOM file\n" * 3)
    out = _run("anatomy", str(text), "--no-color")
    assert out.returncode == 1
    line = _one_line(out.stderr)
    assert "is not a DICOM file" in line and str(text) in line


def test_anatomy_offset_past_the_end_is_one_line(folder, capsys):
    path = sorted(folder.glob("IM*.dcm"))[0]
    size = path.stat().st_size
    assert main(["anatomy", str(path), "--offset", str(size + 10)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "past the end" in line and str(size) in line


@pytest.mark.parametrize("command", ["scan", "info", "convert"])
def test_flags_are_the_same_on_every_command_that_scans(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--no-recursive", "--no-progress", "--on-irregular", "--on-duplicate"):
        assert flag in text, flag
    assert "--on-irregular {warn,raise,split,fill,ignore}" in text
    assert "--on-duplicate {warn,raise,split,ignore}" in text
    default = "split" if command == "convert" else "warn"
    assert f"dicomxr.open_series(on_irregular=...) (default: {default})" in text
    assert "(default: warn)" in text  # --on-duplicate


def test_no_recursive_is_honoured(folder, tmp_path, capsys):
    nested = tmp_path / "top"
    shutil.copytree(folder, nested / "sub")
    assert main(["scan", str(nested), "--no-recursive", "--no-progress"]) == 0
    assert "no image series found" in capsys.readouterr().out
    assert main(["scan", str(nested), "--no-progress"]) == 0
    assert "first" in capsys.readouterr().out
