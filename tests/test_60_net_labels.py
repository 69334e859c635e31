"""A SEG written by ``.dicom.to_seg`` goes to a real PACS and comes back whole.

A throwaway Orthanc on loopback (this module's own: the session's seeded peers stay as the
other network tests expect them) receives the SEG by C-STORE; C-FIND finds it as a SEG series
of the CT's study and C-GET brings it back. The reference is the file that was sent (pydicom,
element for element) and the labels it was made from.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import dicomxr
from net_fixtures import Peer, assert_same_dataset

pytestmark = [pytest.mark.network, pytest.mark.timeout(120)]

pytest.importorskip("highdicom")


@pytest.fixture(scope="module")
def empty_orthanc() -> Iterator[Peer]:
    from dicomxr.net.servers import OrthancServer

    server = OrthancServer(ae_title="LABELS", dicomweb=False, startup_timeout=60)
    server.start()
    try:
        yield Peer(server, 0, Path(), [], [])
    finally:
        server.stop()


def _box_labels(image: xr.DataArray) -> xr.DataArray:
    mask = np.zeros((1, *image.shape), dtype=bool)
    mask[0, 3:9, 180:260, 200:300] = True
    return xr.DataArray(
        mask,
        dims=("segment", *image.dims),
        coords={
            **{name: c.variable for name, c in image.coords.items()},
            "segment": [1],
            "segment_label": ("segment", ["box"]),
        },
    )


def test_seg_stored_found_and_fetched_back(empty_orthanc: Peer, philips_ct: Path, tmp_path: Path):
    image = dicomxr.open_series(philips_ct).isel(slice=slice(60, 72))
    labels = _box_labels(image)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # highdicom on the CT's one-part PatientName
        sent = image.dicom.to_seg(labels, tmp_path / "box_seg.dcm")
    import pydicom

    header = pydicom.dcmread(sent, stop_before_pixels=True)
    with empty_orthanc.client() as client:
        report = client.store(sent)
        assert report.ok and report.sent, report
        found = client.find(
            "SERIES", StudyInstanceUID=image.attrs["StudyInstanceUID"], Modality="SEG"
        )
        assert list(found.SeriesInstanceUID) == [header.SeriesInstanceUID]
        fetched = client.get(tmp_path / "fetched", series=str(header.SeriesInstanceUID))
    assert not fetched.missing and len(fetched.received) == 1, fetched
    path = Path(fetched.received[0])
    assert_same_dataset(path, sent)
    back = dicomxr.open_labels(path, like=image)
    np.testing.assert_array_equal(back.values, labels.values)
    assert list(back.segment_label.values) == ["box"]
