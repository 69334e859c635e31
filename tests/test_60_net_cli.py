"""``dicomxr echo | find | get | move | store`` against the session's Orthanc."""

from __future__ import annotations

import pytest

from dicomxr.cli import main
from net_fixtures import MOVE_AE

pytestmark = [pytest.mark.network, pytest.mark.timeout(120)]

CT_STUDY = "1.3.46.670589.33.1.27492712521914879309.27169771283235650014"


def _peer(orthanc) -> list[str]:
    return [orthanc.host, str(orthanc.port), "--aec", orthanc.ae, "--timeout", "30"]


def test_cli_echo_and_errors(orthanc, dead_port, capsys):
    assert main(["echo", *_peer(orthanc)]) == 0
    assert "success" in capsys.readouterr().out
    assert main(["echo", "127.0.0.1", str(dead_port), "--retries", "0"]) == 1
    assert "nothing is listening" in capsys.readouterr().err
    assert main(["echo", orthanc.host, str(orthanc.port), "--aec", "WRONG", "--retries", "0"]) == 1
    assert "rejected" in capsys.readouterr().err


def test_rejection_read_after_the_peer_closed(orthanc):
    # Orthanc rejects an unknown called AE title and closes the connection at once; when the
    # requesting thread looks at the socket only after the close (a loaded machine, forced
    # here by a pause right after the request is sent), pynetdicom aborts without reading
    # the A-ASSOCIATE-RJ it has queued: the client still reports the peer's rejection
    import time

    from pynetdicom import evt
    from pynetdicom.sop_class import Verification

    from dicomxr.net import AssociationRejectedError, DicomClient

    def late(event):
        time.sleep(0.5)

    client = DicomClient(orthanc.host, orthanc.port, called_ae="WRONG", retries=0, progress=False)
    with pytest.raises(AssociationRejectedError, match="rejected the association") as info:
        client._associate([_context(Verification)], evt_handlers=[(evt.EVT_REQUESTED, late)])
    assert info.value.result == 0x01  # permanent, as Orthanc says for an unknown AE title


def _context(uid):
    from pynetdicom import build_context

    return build_context(uid)


def test_cli_find_table_and_csv(orthanc, tmp_path, capsys):
    import pandas as pd

    assert main(["find", *_peer(orthanc), "--level", "STUDY", "-k", "PatientName=HEA*"]) == 0
    assert CT_STUDY in capsys.readouterr().out
    out = tmp_path / "series.csv"
    args = ["find", *_peer(orthanc), "--level", "SERIES", "-k", f"StudyInstanceUID={CT_STUDY}"]
    assert main([*args, "-r", "BodyPartExamined", "--csv", str(out)]) == 0
    df = pd.read_csv(out)
    assert len(df) == 1 and "BodyPartExamined" in df.columns
    assert main(["find", *_peer(orthanc), "-k", "nonsense"]) == 2
    assert "KEYWORD=VALUE" in capsys.readouterr().err


def test_cli_get_move_store(orthanc, tmp_path, capsys):
    from dicomxr.net import DicomClient

    with DicomClient(orthanc.host, orthanc.port, called_ae=orthanc.ae, progress=False) as c:
        series = c.find("SERIES", Modality="MR", SeriesNumber="1901").SeriesInstanceUID[0]
    assert (
        main(["get", *_peer(orthanc), str(tmp_path / "g"), "--series", series, "--no-progress"])
        == 0
    )
    assert "40 received" in capsys.readouterr().out
    assert len(list((tmp_path / "g").rglob("*.dcm"))) == 40
    assert (
        main(["get", *_peer(orthanc), str(tmp_path / "g"), "--series", series, "--no-progress"])
        == 0
    )
    assert "40 already on disk" in capsys.readouterr().out
    move = [
        "move",
        *_peer(orthanc),
        str(tmp_path / "m"),
        "--series",
        series,
        "--no-progress",
        "--move-ae",
        MOVE_AE,
        "--move-port",
        str(orthanc.move_port),
        "--bind",
        "127.0.0.1",
    ]
    assert main(move) == 0
    assert len(list((tmp_path / "m").rglob("*.dcm"))) == 40
    capsys.readouterr()
    # storing the same instances back is accepted (Orthanc overwrites duplicates)
    assert main(["store", *_peer(orthanc), str(tmp_path / "m"), "--no-progress"]) == 0
    assert "40 instance(s) stored" in capsys.readouterr().out
