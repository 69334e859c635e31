"""pixels.read_frame against pydicom's own decode, on real files of every transfer syntax.

The reference is always pydicom's ``Dataset.pixel_array`` (an independent, whole-file
decode); dicomxr reads one frame at a time from the byte offset without parsing the dataset.
"""

from __future__ import annotations

import dataclasses
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.data import get_testdata_file

from dicomxr import pixels
from dicomxr.errors import MissingDependencyError
from dicomxr.pixels import FrameRef, PixelDataError

TS_SAMPLES = [f"{i}.dcm" for i in range(1, 10)]
PARSER_SAMPLES = [
    "CT1_UNC.explicit_big_endian.dcm",
    "CT1_UNC.explicit_little_endian.dcm",
    "CT1_UNC.implicit_little_endian.dcm",
    "deflate/image_dfl",
    "encapsulated/multi-frame/CT0012.explicit_little_endian.dcm",
    "encapsulated/multi-frame/CT0012.fragmented_no_bot_jpeg_baseline.51.dcm",
    "encapsulated/multi-frame/CT0012.fragmented_no_bot_jpeg_lossless.57.dcm",
    "encapsulated/multi-frame/CT0012.fragmented_no_bot_jpeg_lossless.70.dcm",
    "encapsulated/multi-frame/CT0012.fragmented_no_bot_jpeg_ls.80.dcm",
    "encapsulated/multi-frame/CT0012.fragmented_no_bot_jpeg_ls.81.dcm",
    "encapsulated/multi-frame/CT0012.not_fragmented_bot_jpeg_ls.80.dcm",
    "encapsulated/multi-frame/CT0012.not_fragmented_bot_rle.dcm",
    "encapsulated/multi-frame/CT0012.not_fragmented_no_bot_jpeg_ls.80.dcm",
    "encapsulated/multi-frame/CT0012.not_fragmented_no_bot_rle.dcm",
    "encapsulated/multi-frame/IM00001.fragmented_no_bot_jpeg_baseline.50.dcm",
    "encapsulated/multi-frame/IM00001.implicit_little_endian.dcm",
    "encapsulated/single-frame/CT1_UNC.explicit_little_endian.dcm",
    "encapsulated/single-frame/CT1_UNC.fragmented_bot_jpeg_ls.80.dcm",
    "encapsulated/single-frame/CT1_UNC.fragmented_no_bot_jpeg_ls.80.dcm",
    "encapsulated/single-frame/CT1_UNC.not_fragmented_bot_jpeg_ls.80.dcm",
    "encapsulated/single-frame/CT1_UNC.not_fragmented_no_bot_jpeg_ls.80.dcm",
]
# pydicom's bundled files with the layouts that are rare on scanners
PYDICOM_ODD = [
    "liver_1frame.dcm",  # BitsAllocated 1
    "liver_expb_1frame.dcm",  # BitsAllocated 1, big endian
    "SC_ybr_full_422_uncompressed.dcm",  # native YBR_FULL_422 sub-sampling
    "ExplVR_BigEnd.dcm",  # big endian RGB, planar configuration 1
    "SC_rgb_small_odd_big_endian.dcm",  # 8-bit RGB as big endian OW, odd length
    "SC_rgb_small_odd.dcm",  # odd-length frame
    "rtdose.dcm",  # 32-bit, 15 frames, implicit VR
    "rtdose_expb.dcm",  # 32-bit, 15 frames, big endian
    "MR_small_bigendian.dcm",
    "MR_small_padded.dcm",
    "examples_overlay.dcm",  # BitsStored 12 of 16: unused bits cleared
    "SC_rgb_rle_2frame.dcm",
    "SC_rgb_rle_32bit_2frame.dcm",
    "SC_rgb_dcmtk_+eb+cy+np.dcm",  # JPEG YBR_FULL_422
    "examples_ybr_color.dcm",  # JPEG YBR_FULL_422, 30 frames
    "J2K_pixelrep_mismatch.dcm",  # J2K signedness differs from PixelRepresentation
    "GDCMJ2K_TextGBR.dcm",
    "JPEG2000.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
]


def _reference(path: Path | str) -> tuple[np.ndarray, pydicom.Dataset]:
    """pydicom's whole-file decode, always with a leading frame axis."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path)
        arr = ds.pixel_array
    nframes = int(ds.get("NumberOfFrames", 1) or 1)
    if nframes == 1:
        arr = arr[None]
    return arr, ds


def _assert_frames_equal(path: Path | str) -> int:
    expected, _ = _reference(path)
    refs = pixels.file_frame_refs(path)
    assert len(refs) == len(expected)
    for ref, want in zip(refs, expected, strict=True):
        got = pixels.read_frame(ref)
        assert got.shape == want.shape, (ref.frame, got.shape, want.shape)
        # same values and same kind/size of integer (native byte order here)
        assert got.dtype == want.dtype.newbyteorder("="), (got.dtype, want.dtype)
        np.testing.assert_array_equal(got, want, err_msg=f"{path} frame {ref.frame}")
        assert got.dtype == pixels.frame_dtype(ref)
        assert got.shape == pixels.frame_shape(ref)
    return len(refs)


@pytest.mark.parametrize("name", TS_SAMPLES)
def test_dcm_qa_ts_every_syntax_equals_pydicom(data_root: Path, name: str) -> None:
    path = data_root / "dcm_qa_ts" / "In" / name
    assert _assert_frames_equal(path) == 1


@pytest.mark.parametrize("name", PARSER_SAMPLES)
def test_dicomparser_every_frame_equals_pydicom(data_root: Path, name: str) -> None:
    path = data_root / "dicomParser" / "testImages" / name
    n = _assert_frames_equal(path)
    assert n == int(pydicom.dcmread(path, stop_before_pixels=True).get("NumberOfFrames", 1) or 1)


@pytest.mark.parametrize("name", PYDICOM_ODD)
def test_pydicom_odd_layouts_equal_pydicom(name: str) -> None:
    _assert_frames_equal(get_testdata_file(name))


def test_palette_colour_is_returned_as_rgb() -> None:
    from pydicom.pixels import apply_color_lut

    path = get_testdata_file("examples_palette.dcm")
    (ref,) = pixels.file_frame_refs(path)
    got = pixels.read_frame(ref)
    ds = pydicom.dcmread(path)
    want = apply_color_lut(ds.pixel_array, ds)
    assert got.shape == (*ds.pixel_array.shape, 3) == pixels.frame_shape(ref)
    assert got.dtype == want.dtype == pixels.frame_dtype(ref)
    np.testing.assert_array_equal(got, want)


def test_uncompressed_multiframe_offsets(data_root: Path, tmp_path: Path) -> None:
    """Frame k starts at value_start + k * frame_bytes: cut the file inside frame 1."""
    src = (
        data_root
        / "dicomParser/testImages/encapsulated/multi-frame/CT0012.explicit_little_endian.dcm"
    )
    expected, _ = _reference(src)
    refs = pixels.file_frame_refs(src)
    assert len(refs) == 2
    with open(src, "rb") as f:
        f.seek(refs[0].pixel_data_offset)
        head = f.read(12)
    assert head[:4] == b"\xe0\x7f\x10\x00"  # the offset is that of the Pixel Data tag
    frame_bytes = 512 * 512 * 2
    value_start = refs[0].pixel_data_offset + 12
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(src.read_bytes()[: value_start + frame_bytes + 1000])
    ref0, ref1 = (dataclasses.replace(r, path=str(cut)) for r in refs)
    np.testing.assert_array_equal(pixels.read_frame(ref0), expected[0])
    with pytest.raises(PixelDataError, match=r"cut\.dcm.*frame 1.*cut short"):
        pixels.read_frame(ref1)


def test_rtdose_every_frame_from_its_offset() -> None:
    path = get_testdata_file("rtdose.dcm")
    expected, _ = _reference(path)
    refs = pixels.file_frame_refs(path)
    assert len(refs) == 15
    # read backwards: no frame depends on having read the previous one
    for ref in reversed(refs):
        np.testing.assert_array_equal(pixels.read_frame(ref), expected[ref.frame])


def test_read_into_preallocated_buffer(data_root: Path) -> None:
    path = data_root / "dicomParser/testImages/CT1_UNC.explicit_big_endian.dcm"
    (ref,) = pixels.file_frame_refs(path)
    out = np.zeros((512, 512), dtype=np.int16)
    got = pixels.read_frame(ref, out=out)
    assert got is out
    np.testing.assert_array_equal(out, _reference(path)[0][0])


def test_pixel_data_cut_short_names_file_and_frame() -> None:
    path = get_testdata_file("MR_truncated.dcm")
    (ref,) = pixels.file_frame_refs(path)
    with pytest.raises(PixelDataError, match=r"MR_truncated\.dcm: frame 0 .*cut short"):
        pixels.read_frame(ref)


def test_compressed_pixel_data_cut_short(data_root: Path, tmp_path: Path) -> None:
    src = (
        data_root
        / "dicomParser/testImages/encapsulated/multi-frame/CT0012.not_fragmented_bot_rle.dcm"
    )
    data = src.read_bytes()
    cut = tmp_path / "rle_cut.dcm"
    cut.write_bytes(data[: len(data) * 3 // 4])
    refs = [dataclasses.replace(r, path=str(cut)) for r in pixels.file_frame_refs(src)]
    np.testing.assert_array_equal(pixels.read_frame(refs[0]), _reference(src)[0][0])
    with pytest.raises(PixelDataError, match=r"rle_cut\.dcm: frame 1"):
        pixels.read_frame(refs[1])


def test_stale_offset_is_a_clear_error(data_root: Path) -> None:
    (ref,) = pixels.file_frame_refs(data_root / "dcm_qa_ts/In/1.dcm")
    bad = dataclasses.replace(ref, pixel_data_offset=ref.pixel_data_offset - 2)
    with pytest.raises(PixelDataError, match="not a pixel data element"):
        pixels.read_frame(bad)


def test_pixel_data_error_is_a_public_dicomxr_error(tmp_path: Path) -> None:
    import subprocess
    import sys

    import dicomxr
    from dicomxr import errors

    assert dicomxr.PixelDataError is errors.PixelDataError is PixelDataError
    assert "PixelDataError" in dicomxr.__all__
    assert issubclass(PixelDataError, errors.DicomxrError)
    assert issubclass(PixelDataError, ValueError)
    bad = tmp_path / "empty.dcm"
    bad.write_bytes(b"")
    with pytest.raises(dicomxr.DicomxrError):
        pixels.read_frame(FrameRef(path=str(bad), Rows=2, Columns=2, pixel_data_offset=0))
    # the top-level name costs no import of the pixel layer
    code = (
        "import sys, dicomxr; dicomxr.PixelDataError; "
        "print(any(m in sys.modules for m in ('dicomxr.pixels', 'pydicom', 'numpy')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_unknown_offset_is_located(data_root: Path) -> None:
    path = data_root / "dcm_qa_ts/In/2.dcm"
    (ref,) = pixels.file_frame_refs(path)
    unknown = dataclasses.replace(ref, pixel_data_offset=-1)
    np.testing.assert_array_equal(pixels.read_frame(unknown), pixels.read_frame(ref))


def test_frame_out_of_range(data_root: Path) -> None:
    (ref,) = pixels.file_frame_refs(data_root / "dcm_qa_ts/In/1.dcm")
    with pytest.raises(PixelDataError, match="frame 3 requested, the file has 1"):
        pixels.read_frame(dataclasses.replace(ref, frame=3))


def test_missing_decoder_names_the_extra(data_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pydicom.pixels.decoders.base import Decoder

    monkeypatch.setattr(Decoder, "is_available", property(lambda self: False))
    (ref,) = pixels.file_frame_refs(data_root / "dcm_qa_ts/In/9.dcm")  # JPEG 2000
    with pytest.raises(MissingDependencyError, match=r"dicomxr\[codecs\]"):
        pixels.read_frame(ref)


def test_no_pixel_data_is_a_clear_error(data_root: Path) -> None:
    with pytest.raises(PixelDataError, match="no pixel data"):
        pixels.file_frame_refs(data_root / "dicomParser/testImages/deflate/report_dfl")


def test_from_row_takes_catalog_style_rows(data_root: Path) -> None:
    path = data_root / "dcm_qa_ts/In/1.dcm"
    (ref,) = pixels.file_frame_refs(path)
    row = {**ref.as_dict(), "BitsStored": float("nan"), "tile": -1, "PlanarConfiguration": None}
    again = FrameRef.from_row(row)
    assert again.tile is None and again.BitsStored == again.BitsAllocated
    assert again.PlanarConfiguration == 0


@pytest.mark.parametrize("name", TS_SAMPLES)
def test_mosaic_tiles_equal_pydicom(data_root: Path, name: str) -> None:
    """Each 64 x 64 tile of the 384 x 384 Siemens MOSAIC, in all 7 transfer syntaxes."""
    path = data_root / "dcm_qa_ts" / "In" / name
    full, ds = _reference(path)
    n_tiles = int(ds[0x0019, 0x100A].value)
    assert n_tiles == 35
    (ref,) = pixels.file_frame_refs(path)
    for tile in (0, 7, 34):
        tref = dataclasses.replace(
            ref, tile=tile, Rows=64, Columns=64, mosaic_rows=384, mosaic_cols=384
        )
        tr, tc = divmod(tile, 6)
        want = full[0, tr * 64 : tr * 64 + 64, tc * 64 : tc * 64 + 64]
        np.testing.assert_array_equal(pixels.read_frame(tref), want)
        assert pixels.frame_shape(tref) == (64, 64)


def test_mosaic_rows_of_the_frame_table_read_as_tiles(data_root: Path, scanned) -> None:
    """FrameRef.from_row takes `frame` as it is: 0 for every tile of a MOSAIC image."""
    from dicomxr import frames

    path = data_root / "dcm_qa_ts" / "In" / "1.dcm"
    table = frames.expand(scanned(str(path)))
    full, _ = _reference(path)
    for tile in (0, 13, 34):
        ref = FrameRef.from_row(table.iloc[tile])
        assert ref.frame == 0 and ref.tile == tile
        tr, tc = divmod(tile, 6)
        want = full[0, tr * 64 : tr * 64 + 64, tc * 64 : tc * 64 + 64]
        np.testing.assert_array_equal(pixels.read_frame(ref), want)
    # a frame index beyond the file is an error, not silently taken as frame 0
    bad = {**table.iloc[5].to_dict(), "frame": 5}
    with pytest.raises(PixelDataError, match="frame 5 requested, the file has 1"):
        pixels.read_frame(FrameRef.from_row(bad))


def test_frame_refs_of_a_table_read_what_pydicom_decodes(data_root: Path, scanned) -> None:
    """``frame_refs`` converts a frames table column by column: MOSAIC tiles, the frames of a
    multi-frame file and single-frame files each read what pydicom decodes, and a row with
    gaps takes the defaults ``from_row`` gives."""
    from dicomxr import frames

    mosaic = data_root / "dcm_qa_ts" / "In" / "1.dcm"
    multi = Path(get_testdata_file("rtdose.dcm"))
    single = Path(get_testdata_file("CT_small.dcm"))
    table = pd.concat([frames.expand(scanned(str(p))) for p in (mosaic, multi, single)])
    refs = pixels.frame_refs(table)
    assert len(refs) == len(table) == 35 + 15 + 1
    references = {p: _reference(p)[0] for p in (mosaic, multi, single)}
    for ref in refs:
        full = references[Path(ref.path)]
        if ref.is_mosaic_tile:
            tr, tc = divmod(ref.tile, 6)
            want = full[0, tr * 64 : tr * 64 + 64, tc * 64 : tc * 64 + 64]
        else:
            want = full[ref.frame]
        np.testing.assert_array_equal(pixels.read_frame(ref), want, err_msg=str(ref))
    gaps = table.iloc[[40]].astype({"BitsStored": "float64"}).copy()
    gaps["BitsStored"] = np.nan
    (ref,) = pixels.frame_refs(gaps, storage_options={"anon": True})
    assert ref.BitsStored == ref.BitsAllocated and ref.storage_options == {"anon": True}


def test_monochrome1_keeps_stored_values(tmp_path: Path) -> None:
    from dicomxr.phantom import phantom_volume, write_series

    vol = phantom_volume((2, 16, 12), dtype="uint16")
    files = write_series(
        tmp_path, vol, rescale=(1.0, 0.0), extra={"PhotometricInterpretation": "MONOCHROME1"}
    )
    ref = pixels.file_frame_refs(files[1])[0]
    assert ref.PhotometricInterpretation == "MONOCHROME1"
    assert pixels.is_inverted(ref) and not pixels.is_inverted("MONOCHROME2")
    np.testing.assert_array_equal(pixels.read_frame(ref), vol[1])
    np.testing.assert_array_equal(pixels.read_frame(ref), pydicom.dcmread(files[1]).pixel_array)


def test_file_moved_away_is_file_not_found(data_root: Path, tmp_path: Path) -> None:
    src = data_root / "dcm_qa_ts/In/1.dcm"
    dst = tmp_path / "moved.dcm"
    shutil.copy(src, dst)
    (ref,) = pixels.file_frame_refs(dst)
    dst.unlink()
    with pytest.raises(FileNotFoundError):
        pixels.read_frame(ref)


# ----------------------------------------------------------------------------- rescale


@pytest.mark.parametrize(
    ("stored", "slopes", "intercepts", "bits", "rep", "expected"),
    [
        ("uint16", [1.0], [0.0], 12, 0, "uint16"),  # nothing to do: stored dtype
        ("uint16", [1.0], [-1024.0], 12, 0, "int16"),  # Philips CT
        ("uint16", [1.0], [-1024.0], 16, 0, "int32"),  # would overflow int16
        ("int16", [1.0, 1.0], [-1024.0, 0.0], 16, 1, "int32"),
        ("int16", [1.0], [-1000.0], 12, 1, "int16"),
        ("uint8", [1.0], [-5.0], 8, 0, "int16"),
        ("uint16", [2.36], [0.0], 12, 0, "float32"),  # Philips MR slope
        ("uint16", [1.0], [-0.5], 12, 0, "float32"),  # non-integral intercept
        ("uint16", [1.0, 1.0], [0.0, -3142.0], 12, 0, "int16"),  # field map pairs
        ("float32", [1.0], [1.0], 32, 0, "float32"),
        ("uint16", [float("nan")], [None], 16, 0, "uint16"),  # missing = identity
    ],
)
def test_rescale_dtype(stored, slopes, intercepts, bits, rep, expected) -> None:
    got = pixels.rescale_dtype(
        stored, slopes, intercepts, bits_stored=bits, pixel_representation=rep
    )
    assert got == np.dtype(expected)


def test_rescale_dtype_explicit_choice() -> None:
    assert pixels.rescale_dtype("uint16", [1.0], [-1024.0], dtype="float64") == np.float64


def test_apply_rescale_exact_and_float() -> None:
    stored = np.array([0, 1, 4095], dtype=np.uint16)
    got = pixels.apply_rescale(stored, 1.0, -1024.0, np.int16)
    assert got.dtype == np.int16
    np.testing.assert_array_equal(got, [-1024, -1023, 3071])
    got = pixels.apply_rescale(stored, 2.5, 1.0, np.float32)
    np.testing.assert_allclose(got, stored * 2.5 + 1.0, rtol=1e-7)
    assert pixels.apply_rescale(stored, 1.0, 0.0, np.uint16) is stored
    with pytest.raises(ValueError, match="not exact"):
        pixels.apply_rescale(stored, 2.0, 0.0, np.int16)


def test_apply_rescale_in_place_wraps_exactly() -> None:
    """Stored uint16 read into int16 memory: the modular sum equals the true result."""
    values = np.array([0, 40000, 65535], dtype=np.uint16)
    buf = values.copy()
    out = pixels.apply_rescale(buf, 1.0, -32768.0, np.int16, out=buf.view(np.int16))
    np.testing.assert_array_equal(out, values.astype(np.int64) - 32768)


def test_apply_rescale_float32_rounds_once() -> None:
    """Phase-map style rescale (tiny slope, large negative intercept): no float32 cancellation."""
    stored = np.arange(0, 4096, 7, dtype=np.uint16)
    slope, intercept = 1.534355, -3142.0
    got = pixels.apply_rescale(stored, slope, intercept, np.float32)
    np.testing.assert_array_equal(got, (stored * slope + intercept).astype(np.float32))


def test_file_without_meta_and_wrong_syntax(tmp_path: Path) -> None:
    """An implicit VR dataset without file meta (old archives): located, read, same values."""
    src = get_testdata_file("MR_small_implicit.dcm")
    ds = pydicom.dcmread(src)
    want = ds.pixel_array
    bare = tmp_path / "no_meta.dcm"
    del ds.file_meta
    ds.preamble = None
    ds.save_as(bare, implicit_vr=True, little_endian=True, enforce_file_format=False)
    assert b"DICM" not in bare.read_bytes()[:200]
    (ref,) = pixels.file_frame_refs(bare)
    assert ref.TransferSyntaxUID == "1.2.840.10008.1.2"
    np.testing.assert_array_equal(pixels.read_frame(ref), want)
    # a catalog that could not tell the syntax (default explicit VR) still reads it right
    guessed = dataclasses.replace(ref, TransferSyntaxUID="1.2.840.10008.1.2.1")
    np.testing.assert_array_equal(pixels.read_frame(guessed), want)


def _rle_multiframe_without_offset_table(path: Path, n: int = 24) -> np.ndarray:
    """Write an RLE multi-frame file with an empty Basic Offset Table; return its frames."""
    from pydicom.encaps import encapsulate
    from pydicom.pixels.encoders import RLELosslessEncoder
    from pydicom.uid import RLELossless

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    base = ds.pixel_array[:32, :48]
    frames = np.stack([base + i for i in range(n)]).astype(np.int16)
    opts = dict(
        rows=32, columns=48, samples_per_pixel=1, bits_allocated=16, bits_stored=16,
        pixel_representation=1, photometric_interpretation="MONOCHROME2", number_of_frames=1,
    )  # fmt: skip
    encoded = [RLELosslessEncoder.encode(f, encoding_plugin="pydicom", **opts) for f in frames]
    ds.Rows, ds.Columns, ds.NumberOfFrames = 32, 48, n
    ds.PixelData = encapsulate(encoded, has_bot=False)
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = RLELossless
    ds.save_as(path, enforce_file_format=True)
    return frames


def test_read_frames_one_pass_without_offset_table(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "rle_no_bot.dcm"
    frames = _rle_multiframe_without_offset_table(path)
    np.testing.assert_array_equal(pydicom.dcmread(path).pixel_array, frames)
    refs = pixels.file_frame_refs(path)
    assert pixels.is_encapsulated(refs[0])
    opened = []
    real_open = open
    monkeypatch.setattr(
        pixels, "open", lambda p, *a, **k: opened.append(p) or real_open(p, *a, **k), raising=False
    )
    got = dict(pixels.read_frames(refs[5], [20, 3, 7, 3]))
    assert sorted(got) == [3, 7, 20] and len(opened) == 1
    for i, arr in got.items():
        np.testing.assert_array_equal(arr, frames[i])
        np.testing.assert_array_equal(arr, pixels.read_frame(refs[i]))


@pytest.mark.parametrize(
    "name",
    [n for n in PARSER_SAMPLES if "multi-frame" in n],
)
def test_read_frames_equals_pydicom(data_root: Path, name: str) -> None:
    path = data_root / "dicomParser" / "testImages" / name
    expected, _ = _reference(path)
    refs = pixels.file_frame_refs(path)
    got = dict(pixels.read_frames(refs[0], range(len(refs))))
    assert sorted(got) == list(range(len(refs)))
    for i, arr in got.items():
        np.testing.assert_array_equal(arr, expected[i])


def test_read_frames_cut_short(tmp_path: Path) -> None:
    path = tmp_path / "rle_cut.dcm"
    _rle_multiframe_without_offset_table(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    refs = pixels.file_frame_refs(path)
    with pytest.raises(PixelDataError, match=r"rle_cut\.dcm: frame"):
        dict(pixels.read_frames(refs[0], range(len(refs))))


def test_float_pixel_data(tmp_path: Path) -> None:
    """(7FE0,0008) Float Pixel Data: float32 values read from their offset."""
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    values = ds.pixel_array.astype(np.float32) * 0.5 - 3.25
    del ds.PixelData
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 32, 32, 31, 0
    ds.FloatPixelData = values.tobytes()
    path = tmp_path / "float.dcm"
    ds.save_as(path, enforce_file_format=True)
    (ref,) = pixels.file_frame_refs(path)
    assert pixels.frame_dtype(ref) == np.float32
    got = pixels.read_frame(ref)
    np.testing.assert_array_equal(got, pydicom.dcmread(path).pixel_array)
    np.testing.assert_array_equal(got, values)
