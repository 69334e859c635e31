"""Remote and packed sources: S3 (moto's server on loopback), plain HTTP, zip archives.

Every server here is real and local: moto's S3 API served by werkzeug on 127.0.0.1 (a free
port, started once for the module and shut down in teardown), and ``http.server`` serving a
folder. Credentials are dummies and every endpoint is given explicitly, so nothing ever
leaves the machine. The S3 server counts the bytes it sends per object (a WSGI wrapper around
moto's application): that count, not dicomxr's own, shows that a scan reads only heads.

References are the local reads of the same files (the catalog, ``open_series``), which the
rest of the suite checks against pydicom, dcm2niix and SimpleITK.
"""

from __future__ import annotations

import collections
import functools
import http.server
import io
import logging
import os
import pickle
import shutil
import socket
import threading
import time
import uuid
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import dicomxr
from dicomxr import sources
from dicomxr.errors import DicomxrError

pytestmark = pytest.mark.network

moto_server = pytest.importorskip("moto.server")
pytest.importorskip("s3fs")

BUCKET = "archive"
JUNK = "junk"
TIMEOUTS = {"connect_timeout": 5, "read_timeout": 30, "retries": {"max_attempts": 2}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _ByteCounter:
    """WSGI middleware: bytes of every GET response body, per object key."""

    def __init__(self, app):
        self.app = app
        self.sent: collections.Counter[str] = collections.Counter()
        self.requests: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()

    def __call__(self, environ, start_response):
        key = environ.get("PATH_INFO", "")
        counted = environ.get("REQUEST_METHOD") == "GET" and key.lower().endswith(".dcm")
        body = self.app(environ, start_response)
        if not counted:
            return body
        chunks = list(body)
        if hasattr(body, "close"):
            body.close()
        with self.lock:
            self.sent[key] += sum(len(c) for c in chunks)
            self.requests[key] += 1
        return chunks

    def reset(self) -> None:
        with self.lock:
            self.sent.clear()
            self.requests.clear()


@pytest.fixture(scope="module")
def s3():
    """moto's S3 API on 127.0.0.1:<free port>, with dummy credentials; yields storage options."""
    from moto.server import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    saved = {k: os.environ.get(k) for k in _AWS_ENV}
    os.environ.update(_AWS_ENV)
    counter = _ByteCounter(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", _free_port(), counter, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    endpoint = f"http://127.0.0.1:{server.server_port}"
    options = {
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"endpoint_url": endpoint},
        "config_kwargs": TIMEOUTS,
        "skip_instance_cache": False,
    }
    try:
        yield {"options": options, "counter": counter, "endpoint": endpoint}
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}


def _fs(s3):
    import s3fs

    return s3fs.S3FileSystem(**s3["options"])


@pytest.fixture(scope="module")
def archive(s3, philips_ct: Path, data_root: Path):
    """A bucket laid out like the public archives: ``<series-uid>/<instance-uuid>.dcm``."""
    fs = _fs(s3)
    fs.mkdir(BUCKET)
    layout: dict[str, Path] = {}
    series = {
        # the instances only (an archive holds no DIRFILE)
        "ct": sorted(f for f in philips_ct.iterdir() if f.name != "DIRFILE"),
        # one MOSAIC in seven transfer syntaxes (RLE, JPEG, JPEG-LS, J2K: encapsulated)
        "ts": sorted((data_root / "dcm_qa_ts" / "In").glob("*.dcm")),
    }
    prefixes = {}
    for name, files in series.items():
        prefix = str(uuid.uuid4())
        prefixes[name] = prefix
        for f in files:
            key = f"{BUCKET}/{prefix}/{uuid.uuid4()}.dcm"
            fs.pipe(key, f.read_bytes())
            layout[f"s3://{key}"] = f
    return {"prefixes": prefixes, "layout": layout}


@functools.cache
def _local_scan(source: str) -> pd.DataFrame:
    return dicomxr.scan(source, progress=False, warn=False)


def _same_catalog(remote: pd.DataFrame, local: pd.DataFrame, layout: dict[str, Path]) -> None:
    """Every column but path/mtime/etag equal, rows matched by the object's local file."""
    remote = remote.assign(path=[os.path.abspath(layout[p]) for p in remote["path"]])
    cols = [c for c in remote.columns if c not in ("mtime", "etag")]
    a = remote[cols].sort_values("path").reset_index(drop=True)
    b = local[cols].sort_values("path").reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)


# ----------------------------------------------------------------------------- S3


def test_scan_of_bucket_equals_local_scan(s3, archive, philips_ct: Path) -> None:
    url = f"s3://{BUCKET}/{archive['prefixes']['ct']}/"
    df = dicomxr.scan(url, storage_options=s3["options"], progress=False)
    assert len(df) == 140 and not len(dicomxr.catalog.skipped(df))
    assert all(p.startswith(url) for p in df["path"])
    # what the store reports travels with each row: size, LastModified, ETag
    sizes = {f"s3://{k}": v["size"] for k, v in _fs(s3).find(url, detail=True).items()}
    assert dict(zip(df["path"], df["file_size"], strict=True)) == sizes
    assert (df["mtime"] > 1.6e9).all()
    assert df["etag"].str.fullmatch(r"[0-9a-f]{32}").all()
    _same_catalog(df, _local_scan(str(philips_ct)), archive["layout"])
    assert df.attrs["storage_options"] == s3["options"]


def test_scan_reads_only_heads(s3, archive) -> None:
    """Bytes sent by the server per object: the head block, never the pixel data."""
    counter = s3["counter"]
    counter.reset()
    url = f"s3://{BUCKET}/{archive['prefixes']['ct']}/"
    dicomxr.scan(url, storage_options=s3["options"], progress=False)
    sizes = {k: v["size"] for k, v in _fs(s3).find(url, detail=True).items()}
    assert len(counter.sent) == len(sizes) == 140
    for key, sent in counter.sent.items():
        size = sizes[key.lstrip("/")]
        assert sent <= sources.HEAD_BYTES < size / 10, (key, sent, size)
    per_object = sum(counter.sent.values()) / len(counter.sent)
    print(
        f"\nremote scan: {per_object:.0f} bytes per object of {np.mean(list(sizes.values())):.0f}"
    )


def test_open_series_s3_equals_local(s3, archive, philips_ct: Path) -> None:
    url = f"s3://{BUCKET}/{archive['prefixes']['ct']}/"
    remote = dicomxr.open_series(url, storage_options=s3["options"])
    local = dicomxr.open_series(philips_ct)
    np.testing.assert_array_equal(remote.values, local.values)
    assert remote.dtype == local.dtype and remote.dims == local.dims
    assert remote.attrs == local.attrs
    np.testing.assert_array_equal(remote.dicom.affine, local.dicom.affine)
    for name, coord in local.coords.items():
        if name == "path":
            want = {str(p) for p in np.ravel(coord.values)}
            got = {str(archive["layout"][p]) for p in np.ravel(remote.coords["path"].values)}
            assert got == want
        else:
            xr.testing.assert_identical(remote.coords[name].variable, coord.variable)


def test_encapsulated_frames_by_range(s3, archive, data_root: Path) -> None:
    """RLE, JPEG, JPEG-LS and JPEG 2000 frames decoded from byte ranges equal the local read."""
    url = f"s3://{BUCKET}/{archive['prefixes']['ts']}/"
    remote = dicomxr.scan(url, storage_options=s3["options"], progress=False, warn=False)
    local = _local_scan(str(data_root / "dcm_qa_ts" / "In"))
    _same_catalog(remote, local, archive["layout"])
    encapsulated = remote[~remote["TransferSyntaxUID"].str.startswith("1.2.840.10008.1.2.1")]
    encapsulated = encapsulated[encapsulated["TransferSyntaxUID"] != "1.2.840.10008.1.2"]
    assert len(encapsulated) >= 4
    for number in encapsulated["SeriesNumber"]:
        got = dicomxr.open_series(remote, series=int(number), chunks=None).values
        want = dicomxr.open_series(local, series=int(number), chunks=None).values
        np.testing.assert_array_equal(got, want)


def test_engine_and_open_study_take_storage_options(s3, archive, philips_ct: Path) -> None:
    url = f"s3://{BUCKET}/{archive['prefixes']['ct']}/"
    ds = xr.open_dataset(url, engine="dicom", storage_options=s3["options"])
    local = xr.open_dataset(philips_ct, engine="dicom")
    np.testing.assert_array_equal(ds["image"].isel(slice=70).values, local["image"][70].values)
    tree = dicomxr.open_study(url, storage_options=s3["options"])
    (leaf,) = tree.leaves
    np.testing.assert_array_equal(leaf["image"][5].values, local["image"][5].values)


def test_lazy_array_pickles_and_computes_on_worker_processes(s3, archive, philips_ct) -> None:
    distributed = pytest.importorskip("distributed")
    url = f"s3://{BUCKET}/{archive['prefixes']['ct']}/"
    da = dicomxr.open_series(url, storage_options=s3["options"])
    blob = pickle.dumps(da)
    assert b"S3FileSystem" not in blob  # URLs and options travel, not a filesystem or handle
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
            worker_dashboard_address=None, silence_logs=40,
        )  # fmt: skip
    client = distributed.Client(cluster, timeout="60s")
    try:
        sub = pickle.loads(blob).isel(slice=slice(0, 140, 7))
        got = client.compute(sub.data).result(timeout=120)
        pids = set(client.run(os.getpid).values())
    finally:
        client.close()
        cluster.close()
    assert os.getpid() not in pids
    want = dicomxr.open_series(philips_ct).isel(slice=slice(0, 140, 7)).values
    np.testing.assert_array_equal(got, want)


def test_bad_objects_are_reported_skips(s3, philips_ct: Path) -> None:
    fs = _fs(s3)
    fs.mkdir(JUNK)
    first = philips_ct / "I10"
    good = first.read_bytes()
    fs.pipe(f"{JUNK}/s/good.dcm", good)
    fs.pipe(f"{JUNK}/s/readme.txt", b"not a DICOM file, a note\n" * 40)
    fs.pipe(f"{JUNK}/s/empty.dcm", b"")
    fs.pipe(f"{JUNK}/s/header_cut.dcm", good[:2003])  # inside PixelSpacing
    fs.pipe(f"{JUNK}/s/pixels_cut.dcm", good[: len(good) // 2])
    with pytest.warns(dicomxr.SkippedFileWarning):
        df = dicomxr.scan(f"s3://{JUNK}/s", storage_options=s3["options"], progress=False)
    reasons = dict(zip(*dicomxr.catalog.skipped(df).to_dict("list").values(), strict=True))
    assert set(df["path"]) == {f"s3://{JUNK}/s/good.dcm", f"s3://{JUNK}/s/pixels_cut.dcm"}
    assert df.set_index("path").loc[f"s3://{JUNK}/s/pixels_cut.dcm", "pixel_data_truncated"]
    assert reasons[f"s3://{JUNK}/s/readme.txt"].startswith("not a DICOM file")
    assert reasons[f"s3://{JUNK}/s/empty.dcm"].startswith("empty file")
    assert "truncated" in reasons[f"s3://{JUNK}/s/header_cut.dcm"]
    # the cut pixels are set apart by the plan, the good slice opens
    with pytest.warns(dicomxr.SetApartWarning, match="pixels_cut.dcm"):
        da = dicomxr.open_series(df, storage_options=s3["options"])
    np.testing.assert_array_equal(da.values, dicomxr.open_series(first).values)


def test_missing_bucket_and_unreachable_server_name_the_url(s3) -> None:
    with pytest.raises(FileNotFoundError, match="s3://no-such-bucket"):
        dicomxr.scan("s3://no-such-bucket/x/", storage_options=s3["options"])
    dead = {**s3["options"], "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{_free_port()}"}}
    dead["config_kwargs"] = {
        "connect_timeout": 1,
        "read_timeout": 1,
        "retries": {"max_attempts": 1},
    }
    dead["retries"] = 1
    start = time.monotonic()
    with pytest.raises(DicomxrError, match="s3://archive/x/") as info:
        dicomxr.open_series("s3://archive/x/", storage_options=dead)
    assert isinstance(info.value, OSError)
    assert time.monotonic() - start < 60


def test_cli_scan_and_convert_from_s3(s3, archive, tmp_path: Path, capsys, sample_dir) -> None:
    import json

    from dicomxr.cli import main

    url = f"s3://{BUCKET}/{archive['prefixes']['ct']}/"
    assert main(["scan", url, "--storage-options", json.dumps(s3["options"])]) == 0
    out = capsys.readouterr().out
    assert "140 DICOM file(s), 1 series, 0 skipped" in out
    # a zip on S3: the embedded sample, converted straight from the bucket
    zipped = dicomxr.data.sample_archive()
    _fs(s3).put(str(zipped), f"{BUCKET}/packed/sample.zip")
    report = dicomxr.convert(
        f"s3://{BUCKET}/packed/sample.zip", tmp_path / "out", format="zarr",
        progress=False, storage_options=s3["options"],
    )  # fmt: skip
    assert report.ok and len(report.done) == 1
    store, _, group = report.done[0]["output"].partition("/")
    written = xr.open_zarr(tmp_path / "out" / store, group=group)
    want = dicomxr.open_series(sample_dir)
    np.testing.assert_array_equal(written["image"].values, want.values)


def test_zip_in_bucket_as_url_chain(s3, archive, sample_dir: Path) -> None:
    """``zip://*::s3://...`` with options keyed by protocol, as fsspec chains them."""
    zipped = dicomxr.data.sample_archive()
    _fs(s3).put(str(zipped), f"{BUCKET}/chain/sample.zip")
    url = f"zip://*/*.dcm::s3://{BUCKET}/chain/sample.zip"
    df = dicomxr.scan(url, storage_options={"s3": s3["options"]}, progress=False)
    assert len(df) == 240 and df["path"].str.endswith(f"::s3://{BUCKET}/chain/sample.zip").all()
    da = dicomxr.open_series(df)
    np.testing.assert_array_equal(da.values, dicomxr.open_series(sample_dir).values)


def test_persistent_cache_rescans_a_bucket_without_reading(s3, archive, tmp_path: Path) -> None:
    url = f"s3://{BUCKET}/{archive['prefixes']['ct']}/"
    cache = tmp_path / "cache"
    first = dicomxr.scan(url, storage_options=s3["options"], cache=cache, progress=False)
    s3["counter"].reset()
    again = dicomxr.scan(url, storage_options=s3["options"], cache=cache, progress=False)
    assert not s3["counter"].sent  # sizes and LastModified from the listing match: no GET
    pd.testing.assert_frame_equal(first, again)


def test_colliding_uids_in_a_bucket_are_planned_without_a_get(
    s3, archive, philips_ct: Path, tmp_path: Path
) -> None:
    """The scan digests the objects whose SOPInstanceUID repeats; planning fetches nothing."""
    import pydicom

    files = sorted(philips_ct.glob("I*"), key=lambda p: int(p.name[1:]))[:4]
    ds = pydicom.dcmread(files[2])
    ds.compress(pydicom.uid.RLELossless, generate_instance_uid=False)  # a copy, other bytes
    ds.save_as(tmp_path / "rle.dcm")
    ds = pydicom.dcmread(files[1])
    ds.PixelData = (ds.pixel_array // 2).astype(ds.pixel_array.dtype).tobytes()
    ds.save_as(tmp_path / "other.dcm")  # a different image under a reused UID
    objects = [*files, tmp_path / "rle.dcm", tmp_path / "other.dcm"]
    prefix = f"{BUCKET}/{uuid.uuid4()}"  # the archive's bucket, a prefix of its own
    fs = _fs(s3)
    for i, f in enumerate(objects):
        fs.pipe(f"{prefix}/{i}.dcm", f.read_bytes())
    url = f"s3://{prefix}/"
    df = dicomxr.scan(url, storage_options=s3["options"], progress=False)
    local = dicomxr.scan([str(f) for f in objects], progress=False)
    # the same digests as the local scan of the same files, for the colliding four only
    assert df["frame_digests"].tolist() == local["frame_digests"].tolist()
    assert df["frame_digests"].notna().sum() == 4

    def plan(catalog):
        s3["counter"].reset()
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            plans = dicomxr.plan_series(catalog)
        return plans, sorted(str(w.message) for w in said), dict(s3["counter"].sent)

    plans, said, sent = plan(df)
    assert sent == {}  # no GET of any object while planning
    assert any(str(ds.SOPInstanceUID) in m for m in said)  # the collision warning
    (row,) = plans.set_apart.itertuples()
    assert row.path == f"{url}4.dcm" and row.reason == (
        f"copy of the same instance (SOPInstanceUID, frame and pixel data) as {url}2.dcm"
    )
    # without the column, planning reads the four objects itself, with the catalog's options
    again, said_again, sent = plan(df.drop(columns="frame_digests"))
    assert sorted(sent) == sorted(f"/{prefix}/{i}.dcm" for i in (1, 2, 4, 5))
    assert said_again == said
    pd.testing.assert_frame_equal(again.set_apart, plans.set_apart)
    assert [p.grid.tolist() for p in again] == [p.grid.tolist() for p in plans]


def _relative(url: str) -> str:
    """A zip member's or a bucket object's path relative to the file-set root."""
    name = url.split("::")[0].removeprefix("zip://")
    return name.split(f"{BUCKET}/fileset/", 1)[-1]


def _dicomdir_catalogs(remote: pd.DataFrame, fileset: Path) -> None:
    """A remote DICOMDIR's catalog equals the local DICOMDIR's, object for file, in order."""
    local = _local_scan(str(fileset / "DICOMDIR"))
    assert [_relative(p) for p in remote["path"]] == [
        os.path.relpath(p, fileset) for p in local["path"]
    ]
    cols = [c for c in local.columns if c not in ("path", "mtime", "etag")]
    pd.testing.assert_frame_equal(remote[cols], local[cols])
    # the dangling references of the local walk are reported too
    want = sorted(os.path.relpath(s["path"], fileset) for s in local.attrs["skipped"])
    assert want and sorted(_relative(s["path"]) for s in remote.attrs["skipped"]) == want


def test_dicomdir_in_a_bucket_is_followed(s3, archive, data_root: Path) -> None:
    """``s3://bucket/prefix/DICOMDIR``: the referenced objects, nested DIRFILEs followed."""
    fileset = data_root / "dcm_qa_ct" / "In" / "Philips"
    fs = _fs(s3)
    for f in sorted(p for p in fileset.rglob("*") if p.is_file()):
        fs.pipe(f"{BUCKET}/fileset/{f.relative_to(fileset).as_posix()}", f.read_bytes())
    remote = dicomxr.scan(
        f"s3://{BUCKET}/fileset/DICOMDIR", storage_options=s3["options"], progress=False,
        warn=False,
    )  # fmt: skip
    assert len(remote) and not remote["path"].str.endswith("DICOMDIR").any()
    _dicomdir_catalogs(remote, fileset)


# ----------------------------------------------------------------------------- zip


def test_zip_file_equals_folder(sample_dir: Path) -> None:
    zipped = dicomxr.data.sample_archive()
    df = dicomxr.scan(zipped, progress=False)
    assert len(df) == 240
    assert df["path"].str.startswith("zip://philips_pcasl_4d/").all()
    assert df["etag"].str.startswith("crc32:").all()
    local = _local_scan(str(sample_dir))
    layout = {p: sample_dir / p.split("::")[0].rsplit("/", 1)[1] for p in df["path"]}
    _same_catalog(df, local, layout)
    da = dicomxr.open_series(zipped)
    want = dicomxr.open_series(sample_dir)
    np.testing.assert_array_equal(da.values, want.values)
    assert da.attrs == want.attrs
    # the chained URL form, with a glob inside the archive
    chained = dicomxr.scan(f"zip://*/1903_00[0-4]*.dcm::{zipped}", progress=False)
    assert len(chained) == 49


def test_dicomdir_in_a_zip_is_followed(tmp_path: Path, data_root: Path) -> None:
    """``zip://DICOMDIR::study.zip`` is followed as the unpacked DICOMDIR is."""
    import zipfile

    fileset = data_root / "dcm_qa_ct" / "In" / "Philips"
    zipped = tmp_path / "fileset.zip"
    with zipfile.ZipFile(zipped, "w") as zf:
        for f in sorted(p for p in fileset.rglob("*") if p.is_file()):
            zf.write(f, f.relative_to(fileset).as_posix())
    remote = dicomxr.scan(f"zip://DICOMDIR::{zipped}", progress=False, warn=False)
    assert remote["path"].str.endswith(f"::{zipped}").all()
    _dicomdir_catalogs(remote, fileset)
    local = dicomxr.open_series(fileset / "DICOMDIR", series=301)
    packed = dicomxr.open_series(f"zip://DICOMDIR::{zipped}", series=301)
    np.testing.assert_array_equal(packed.values, local.values)


def test_zip_with_broken_members(tmp_path: Path, sample_dir: Path) -> None:
    files = sorted(sample_dir.glob("*.dcm"))[:4]
    path = tmp_path / "broken.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for f in files[:2]:
            zf.write(f, f"ok/{f.name}", compress_type=zipfile.ZIP_DEFLATED)
        zf.write(files[2], "bad/magic.dcm", compress_type=zipfile.ZIP_STORED)
        zf.write(files[3], "bad/inflate.dcm", compress_type=zipfile.ZIP_DEFLATED)
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(io.BytesIO(bytes(raw))) as zf:
        magic = zf.getinfo("bad/magic.dcm").header_offset
        inflate = zf.getinfo("bad/inflate.dcm")
    raw[magic : magic + 4] = b"XXXX"  # the member's local header signature
    start = inflate.header_offset + 30 + len(inflate.filename)
    raw[start : start + 64] = bytes(64)  # the deflate stream's first block
    path.write_bytes(bytes(raw))
    with pytest.warns(dicomxr.SkippedFileWarning):
        df = dicomxr.scan(path, progress=False)
    assert sorted(p.split("::")[0] for p in df["path"]) == [
        f"zip://ok/{files[0].name}", f"zip://ok/{files[1].name}",
    ]  # fmt: skip
    skipped = dicomxr.catalog.skipped(df)
    assert sorted(p.split("::")[0] for p in skipped["path"]) == [
        "zip://bad/inflate.dcm", "zip://bad/magic.dcm",
    ]  # fmt: skip
    assert skipped["reason"].str.startswith("cannot read").all()


def test_not_a_zip_is_a_clear_error(tmp_path: Path) -> None:
    fake = tmp_path / "fake.zip"
    fake.write_bytes(b"PK but not really a zip archive")
    with pytest.raises(DicomxrError, match=r"fake\.zip"):
        dicomxr.scan(fake)


# ----------------------------------------------------------------------------- HTTP


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def http_root(tmp_path_factory, sample_dir: Path):
    """``http.server`` (threaded) serving a folder with the sample in a sub-folder."""
    root = tmp_path_factory.mktemp("www")
    shutil.copytree(sample_dir, root / "pcasl")
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


def test_http_index_page_and_url_list(http_root: str, sample_dir: Path) -> None:
    df = dicomxr.scan(f"{http_root}/pcasl/", progress=False, warn=False)
    assert len(df) == 240
    layout = {p: sample_dir / p.rsplit("/", 1)[1] for p in df["path"]}
    _same_catalog(df, _local_scan(str(sample_dir)), layout)
    da = dicomxr.open_series(df)
    np.testing.assert_array_equal(da.values, dicomxr.open_series(sample_dir).values)
    # a list of URLs names the files explicitly
    urls = sorted(df["path"])[:10]
    assert sorted(dicomxr.scan(urls, progress=False)["path"]) == urls
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        dicomxr.scan(f"{http_root}/nothing-here.dcm")
