"""The lazy array computes under dask.distributed with worker *processes*.

Worker processes receive the graph pickled: this fails if the array holds an open file, a
pydicom dataset or anything else that does not travel.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicomxr import _array, pixels

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def client():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # port-in-use and similar chatter of a local cluster
        cluster = distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            worker_dashboard_address=None,
            silence_logs=40,
        )
    client = distributed.Client(cluster, timeout="60s")
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def _spec(data_root: Path) -> tuple[_array.FrameGrid, np.ndarray]:
    """Seven frames from different files and syntaxes (uncompressed, RLE, JPEG, J2K)."""
    names = [f"{i}.dcm" for i in range(1, 10) if i not in (5, 8)]  # 5/6 and 7/8 repeat syntaxes
    files = [data_root / "dcm_qa_ts" / "In" / n for n in names]
    refs = [pixels.file_frame_refs(f)[0] for f in files]
    want = np.stack([pydicom.dcmread(f).pixel_array for f in files])
    return _array.FrameGrid(refs, np.arange(len(refs))), want


@pytest.mark.slow
def test_compute_with_worker_processes(client, data_root: Path) -> None:
    spec, want = _spec(data_root)
    arr = _array.lazy_array(spec)
    # chunk by chunk on the workers
    got = client.compute(arr + 0).result(timeout=120)
    np.testing.assert_array_equal(got, want)
    # the whole array as one chunk: one full-read task on a worker
    whole = _array.lazy_array(spec, chunks="series")
    np.testing.assert_array_equal(client.compute(whole).result(timeout=120), want)
    np.testing.assert_array_equal(client.compute(whole[2:4]).result(timeout=120), want[2:4])
    # one slice
    np.testing.assert_array_equal(arr[3].compute(), want[3])
    # every worker process took part in the chunked compute or has at least run a task
    assert len(client.scheduler_info()["workers"]) == 2


@pytest.mark.slow
def test_backend_array_ships_to_workers(client, data_root: Path) -> None:
    spec, want = _spec(data_root)
    backend = _array.DicomBackendArray(spec)
    future = client.submit(lambda b: b.spec.read_block((slice(2, 4),)), backend)
    np.testing.assert_array_equal(future.result(timeout=120), want[2:4])


@pytest.mark.slow
def test_open_series_computes_on_worker_processes(client, philips_ct: Path) -> None:
    import dicomxr

    image = dicomxr.open_series(philips_ct)
    local = image.isel(slice=slice(60, 62)).values
    remote = client.compute(image.isel(slice=slice(60, 62)).data).result(timeout=120)
    np.testing.assert_array_equal(remote, local)
    total = client.compute(image.data.sum()).result(timeout=120)
    assert total == image.values.sum()


@pytest.mark.slow
def test_default_open_series_loads_whole_on_worker_processes(client, philips_ct: Path) -> None:
    """The full-read compute (one read task, views per chunk) runs on worker processes too."""
    import pickle

    import dask

    import dicomxr

    image = dicomxr.open_series(philips_ct)
    local = image.values
    remote = client.compute(image.data).result(timeout=120)
    np.testing.assert_array_equal(remote, local)
    # under the distributed scheduler as the default one
    with dask.config.set(scheduler=client.get):
        np.testing.assert_array_equal(image.compute().values, local)
    # pickled (as to a worker): a plain dask array, computed per frame
    shipped = pickle.loads(pickle.dumps(image.data))
    np.testing.assert_array_equal(client.compute(shipped).result(timeout=120), local)
    np.testing.assert_array_equal(
        client.compute(image.isel(slice=[3, 77]).data).result(timeout=120), local[[3, 77]]
    )


# --------------------------------------------------------------------------------------
# scan and convert on the cluster (issue 9, item 5): the same outputs as one process


def _tree_digest(root: Path) -> dict[str, bytes]:
    """Relative path -> content of every file under ``root``, but the run's own state."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".dicomxr-convert" not in p.parts and p.name != "manifest.parquet"
    }


def _broken_series(folder: Path) -> None:
    """A small series whose second file does not decode (an RLE header with 15 segments)."""
    from dicomxr.phantom import phantom_volume, write_series

    files = write_series(
        folder, phantom_volume((3, 8, 6)), series_number=9, transfer_syntax="1.2.840.10008.1.2.5"
    )
    ds = pydicom.dcmread(files[1])
    item = bytearray(next(pydicom.encaps.generate_fragments(ds.PixelData)))
    item[:4] = (15).to_bytes(4, "little")
    ds.PixelData = pydicom.encaps.encapsulate([bytes(item)])
    ds.save_as(files[1])


@pytest.mark.slow
def test_scan_on_the_cluster_equals_the_local_scan(client, data_root: Path) -> None:
    import pandas as pd

    import dicomxr
    from dicomxr import catalog

    source = data_root / "dcm_qa_philips_enh"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        local = dicomxr.scan(source, keys=["FlipAngle", "2005,1030"], progress=False)
        old = catalog.SCAN_BATCH
        catalog.SCAN_BATCH = 97  # many batches: order and completeness across tasks
        try:
            remote = dicomxr.scan(
                source, keys=["FlipAngle", "2005,1030"], progress=False, client=client
            )
        finally:
            catalog.SCAN_BATCH = old
    pd.testing.assert_frame_equal(local, remote)
    assert local.attrs["skipped"] == remote.attrs["skipped"]


@pytest.mark.slow
def test_convert_on_the_cluster_equals_the_local_run(
    client, data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pandas as pd

    import dicomxr
    import dicomxr.conversion

    source = tmp_path / "src"
    shutil.copytree(data_root / "dcm_qa_philips_enh" / "In" / "cl", source / "cl")
    shutil.copytree(data_root / "dcm_qa_ct" / "In" / "GE", source / "GE")
    _broken_series(source / "bad")
    for fmt in ("nifti", "zarr"):
        # the single-process reference runs in a process of its own: this one holds a
        # distributed client, whose threads swap the global warnings filters that turn an
        # undecodable frame into a failed series
        env = dict(os.environ, PYTHONPATH=str(Path(dicomxr.__file__).parents[1]))
        here_run = subprocess.run(
            [sys.executable, "-m", "dicomxr", "convert", str(source), str(tmp_path / f"here-{fmt}"),
             "--format", fmt, "--key", "FlipAngle", "--no-progress"],
            capture_output=True, text=True, env=env, timeout=600, check=False,
        )  # fmt: skip
        assert here_run.returncode == 1, here_run.stderr  # the broken series failed
        # NIfTI: one task per series; Zarr: batches (half the series, then a quarter...),
        # the broken one among them
        per_task = 1 if fmt == "nifti" else 32
        monkeypatch.setattr(dicomxr.conversion, "_BATCH_SERIES", per_task)
        monkeypatch.setattr(dicomxr.conversion, "_BATCH_SHARE", 1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            there = dicomxr.convert(
                source, tmp_path / f"there-{fmt}", format=fmt, keys=["FlipAngle"],
                progress=False, client=client,
            )  # fmt: skip
        # one series fails to decode on a worker: reported, the others are written
        assert len(there.failed) == 1 and "9" in there.failed[0]["series"]
        here_done = pd.read_parquet(tmp_path / f"here-{fmt}" / "manifest.parquet")
        here_done = here_done[here_done.status == "done"]
        assert len(there.done) == len(here_done) >= 5
        assert [r["output"] for r in there.done] == list(here_done["output"])
        m_here = pd.read_parquet(tmp_path / f"here-{fmt}" / "manifest.parquet")
        m_there = pd.read_parquet(tmp_path / f"there-{fmt}" / "manifest.parquet")
        pd.testing.assert_frame_equal(m_here, m_there)
        if fmt == "nifti":  # byte for byte: images, sidecars, bval/bvec
            assert _tree_digest(tmp_path / f"here-{fmt}") == _tree_digest(tmp_path / f"there-{fmt}")
        else:
            import xarray as xr

            for output in m_here.loc[m_here.status == "done", "output"]:
                a = xr.open_zarr(tmp_path / f"here-{fmt}" / output)
                b = xr.open_zarr(tmp_path / f"there-{fmt}" / output)
                xr.testing.assert_identical(a.load(), b.load())
        # a rerun on the cluster does only what is missing (here: the failed series again)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            again = dicomxr.convert(
                source, tmp_path / f"there-{fmt}", format=fmt, keys=["FlipAngle"],
                progress=False, client=client,
            )  # fmt: skip
        assert not again.done
        assert len(again.skipped) == len({r["series_key"] for r in there.done})
        assert len(again.failed) == 1
