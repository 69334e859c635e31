"""DicomWebClient against Orthanc's DICOMweb plugin (Debian orthanc-dicomweb) on loopback."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from net_fixtures import assert_same_dataset, originals_by_uid

pytestmark = [pytest.mark.network, pytest.mark.timeout(120)]

CT_STUDY = "1.3.46.670589.33.1.27492712521914879309.27169771283235650014"


@pytest.fixture
def web(orthanc):
    from dicomxr.net import DicomWebClient

    if not orthanc.server.dicomweb or "DicomWeb" not in orthanc.server._config():
        pytest.fail("Orthanc's DICOMweb plugin is missing: apt-get install orthanc-dicomweb")
    with DicomWebClient(orthanc.server.dicomweb_url, timeout=(5, 30), progress=False) as client:
        yield client


def test_qido_search_matches_cfind(web, orthanc):
    studies = web.search("STUDY", PatientID="PLAST*")
    assert list(studies.StudyInstanceUID) == [CT_STUDY]
    assert studies.NumberOfStudyRelatedInstances.tolist() == [140]
    in_range = web.search("STUDY", StudyDate=("20150101", "20151231"))
    assert list(in_range.StudyInstanceUID) == [CT_STUDY]
    with orthanc.client() as c:
        dimse = c.find("SERIES", StudyInstanceUID=CT_STUDY)
    series = web.search("SERIES", study=CT_STUDY)
    assert list(series.SeriesInstanceUID) == list(dimse.SeriesInstanceUID)
    images = web.search("IMAGE", study=CT_STUDY, series=series.SeriesInstanceUID[0])
    assert len(images) == 140 and images.SOPInstanceUID.is_unique


def test_wado_retrieve_as_stored_and_resume(web, orthanc, tmp_path):
    originals = originals_by_uid(orthanc.ts_files)
    with orthanc.client() as c:
        images = c.find("IMAGE", SOPInstanceUID=list(originals))
    study = images.StudyInstanceUID[0]
    series = images.SeriesInstanceUID[0]
    first = web.retrieve(tmp_path, study=study, instances=list(originals)[:3])
    assert len(first.received) == 3
    report = web.retrieve(tmp_path, study=study, series=series)
    assert len(report.skipped) == 3 and len(report.received) == 6
    files = sorted(tmp_path.rglob("*.dcm"))
    assert len(files) == 9
    syntaxes = set()
    for f in files:
        assert_same_dataset(f, originals[f.stem], same_syntax=True)
        syntaxes.add(pydicom.dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    assert len(syntaxes) == 7


def test_wado_open_matches_local(web, orthanc, tmp_path):
    import dicomxr

    with orthanc.client() as c:
        series = c.find("SERIES", Modality="MR", SeriesNumber="1901")
    da = web.open(
        tmp_path / "fetched", study=series.StudyInstanceUID[0], series=series.SeriesInstanceUID[0]
    )
    local_dir = tmp_path / "local"
    local_dir.mkdir()
    for p in orthanc.mr_files:
        (local_dir / p.name).symlink_to(p)
    local = dicomxr.open_series(local_dir)
    assert da.shape == local.shape
    np.testing.assert_array_equal(da.values, local.values)
    np.testing.assert_array_equal(da["slice"].values, local["slice"].values)


def test_stow_upload(web, orthanc, tmp_path):
    from pydicom.uid import generate_uid

    from dicomxr.phantom import phantom_volume, write_series

    study_uid = generate_uid()
    paths = write_series(
        tmp_path, phantom_volume((3, 8, 8)), study_uid=study_uid, series_uid=generate_uid()
    )
    stored = web.store(paths)
    assert len(stored) == 3
    found = web.search("IMAGE", study=study_uid)
    assert sorted(found.SOPInstanceUID) == sorted(stored)
    orthanc.server.rest(
        "DELETE",
        "/studies/"
        + orthanc.server.rest(
            "POST", "/tools/find", {"Level": "Study", "Query": {"StudyInstanceUID": study_uid}}
        )[0],
    )


def test_one_session_of_ours_carries_every_request_and_is_closed(web, orthanc, tmp_path):
    """Our requests and dicomweb-client's go through the session we made; close() closes it."""
    import requests
    from pydicom.uid import generate_uid

    from dicomxr.phantom import phantom_volume, write_series

    session = web._session()
    assert isinstance(session, requests.Session)
    seen: list[str] = []
    session.hooks["response"].append(lambda r, *args, **kwargs: seen.append(r.request.method))
    assert len(web.search("STUDY", PatientID="PLAST*")) == 1  # our own QIDO-RS request
    study_uid = generate_uid()
    paths = write_series(
        tmp_path, phantom_volume((1, 8, 8)), study_uid=study_uid, series_uid=generate_uid()
    )
    assert len(web.store(paths)) == 1  # dicomweb-client's STOW-RS
    assert seen == ["GET", "POST"]
    adapter = session.get_adapter(web.url)
    assert adapter.poolmanager.pools  # a kept-alive connection
    web.close()
    assert not adapter.poolmanager.pools  # closed by us
    assert web._session() is not session  # the next request opens a new session
    assert len(web.search("IMAGE", study=study_uid)) == 1
    orthanc.server.rest(
        "DELETE",
        "/studies/"
        + orthanc.server.rest(
            "POST", "/tools/find", {"Level": "Study", "Query": {"StudyInstanceUID": study_uid}}
        )[0],
    )


def test_unreachable_and_timeouts(dead_port, silent_peer):
    from dicomxr.net import DicomWebClient, NetError, NetTimeoutError

    with pytest.raises(ValueError, match="finite"):
        DicomWebClient("http://127.0.0.1:1/dicom-web", timeout=None)
    with pytest.raises(NetError, match="cannot connect"):
        DicomWebClient(f"http://127.0.0.1:{dead_port}/dicom-web").search("STUDY")
    host, port = silent_peer
    with pytest.raises(NetTimeoutError, match="within"):
        DicomWebClient(f"http://{host}:{port}/dicom-web", timeout=(1, 1)).search("STUDY")


def test_auth_is_passed_through(philips_ct):
    from dicomxr.net import DicomWebClient, NetError
    from dicomxr.net.servers import OrthancServer

    with OrthancServer(ae_title="AUTHED", users={"alice": "s3cret"}) as pacs:
        pacs.seed(philips_ct / "I10")
        with pytest.raises(NetError, match="HTTP 401"):
            DicomWebClient(pacs.dicomweb_url).search("STUDY")
        with pytest.raises(NetError, match="HTTP 401"):
            DicomWebClient(pacs.dicomweb_url, auth=("alice", "wrong")).search("STUDY")
        web = DicomWebClient(pacs.dicomweb_url, auth=("alice", "s3cret"))
        assert list(web.search("STUDY").StudyInstanceUID) == [CT_STUDY]
        import requests

        bearer = DicomWebClient(
            pacs.dicomweb_url,
            headers={"Authorization": requests.auth._basic_auth_str("alice", "s3cret")},
        )
        assert len(bearer.search("IMAGE", study=CT_STUDY)) == 1
