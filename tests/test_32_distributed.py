"""The lazy array computes under dask.distributed with worker *processes*.

Worker processes receive the graph pickled: this fails if the array holds an open file, a
pydicom dataset or anything else that does not travel.
"""

from __future__ import annotations

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
