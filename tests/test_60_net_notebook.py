"""notebooks/pacs.ipynb runs top to bottom against the Orthanc it starts, and stops it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = [pytest.mark.network, pytest.mark.slow, pytest.mark.timeout(300)]

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "pacs.ipynb"


def _listening(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def test_pacs_notebook_executes_and_stops_its_server(tmp_path):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    text = "\n".join(
        out.get("text", "") + str(out.get("data", {}).get("text/plain", ""))
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
    )
    assert "240 requested: 240 received" in text
    assert "240 already on disk" in text
    assert "<xarray.DataArray 'image'" in text
    assert any(
        "image/png" in out.get("data", {})
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
    )
    assert text.rstrip().endswith("stopped>")
    match = re.search(r"<OrthancServer ORTHANC@127\.0\.0\.1:(\d+) running>", text)
    assert match, "the first cell shows the server it started"
    assert not _listening(int(match.group(1)))  # the notebook's server is gone
