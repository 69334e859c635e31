"""The viewer in a real browser: Voila serves a notebook, Debian's headless Chromium drives it.

The notebook opens the embedded Philips pCASL sample with :func:`dicomxr.view`. Playwright
moves the slice slider and the window level the way a person does (keyboard on the slider,
typing in the readout), and each screenshot of the plane is compared with the slice the
page names, decoded independently by pydicom and windowed in the test. The screenshots are
kept in the ``artifacts_dir`` folder. Voila is always stopped.
"""

from __future__ import annotations

import io
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import numpy as np
import pydicom
import pytest
from PIL import Image

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def voila_page(tmp_path: Path, sample_dir: Path):
    """Serve a notebook holding the viewer with Voila on 127.0.0.1; yield its URL."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(
            "import dicomxr\n"
            "dicomxr.set_options(progress_min_files=10**6)\n"
            f"da = dicomxr.open_series({str(sample_dir)!r})\n"
            "v = dicomxr.view(da, size=384)\n"
            "v"
        )
    ]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    path = tmp_path / "viewer.ipynb"
    nbformat.write(nb, path)
    port = _free_port()
    log = open(tmp_path / "voila.log", "wb")  # closed in teardown
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "voila",
            str(path),
            "--no-browser",
            f"--port={port}",
            "--Voila.ip=127.0.0.1",
            "--show_tracebacks=True",
        ],
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"voila exited early:\n{(tmp_path / 'voila.log').read_text()[-3000:]}")
            try:  # listening? (a page request would start a kernel)
                with socket.create_connection(("127.0.0.1", port), timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"voila did not start:\n{(tmp_path / 'voila.log').read_text()[-3000:]}"
                    )
                time.sleep(0.3)
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # voila and the kernel it started
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        log.close()


def _plane_png(page, selector: str) -> np.ndarray:
    return np.asarray(
        Image.open(io.BytesIO(page.locator(selector).screenshot())).convert("L"), float
    )


def _expected(path: str, level: float, width: float, size: tuple[int, int]) -> np.ndarray:
    ds = pydicom.dcmread(path)
    values = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    # the DICOM LINEAR window (PS3.3 C.11.2.1.2.1) to grey levels, rounded half up
    y = np.clip((values - (level - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)
    grey = np.floor(y * 255 + 0.5).astype(np.uint8)
    return np.asarray(Image.fromarray(grey).resize(size, Image.BILINEAR), float)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def _wait_for_text(page, selector: str, pattern: str, timeout: float = 30.0) -> re.Match:
    deadline = time.monotonic() + timeout
    while True:
        text = page.locator(selector).inner_text()
        m = re.search(pattern, text)
        if m:
            return m
        if time.monotonic() > deadline:
            raise AssertionError(f"{selector} never matched {pattern!r}; last text {text!r}")
        time.sleep(0.1)


def _src(page, selector: str) -> str:
    return page.locator(selector).evaluate("e => e.src")


def _wait_new_picture(page, selector: str, old_src: str) -> None:
    """Wait until the plane shows a new picture (a new blob URL), fully decoded."""
    page.wait_for_function(
        "([sel, old]) => { const e = document.querySelector(sel);"
        " return e.src !== old && e.complete && e.naturalWidth > 0; }",
        arg=[selector, old_src],
        timeout=30_000,
    )


def _state(page) -> dict:
    """Slice, file path and window as the page shows them (slice info + metadata panel)."""
    info = page.locator(".dicomxr-slice-info").inner_text()
    meta = page.locator(".dicomxr-metadata").inner_text()
    s = int(re.search(r"slice (\d+)/", info).group(1))  # 0-based, like the index
    path = re.search(r"path\s+(\S+)", meta).group(1)
    lw = re.search(r"level / width\)\s+(\S+) / (\S+)", meta)
    return {"slice": s, "path": path, "level": float(lw.group(1)), "width": float(lw.group(2))}


def test_viewer_in_voila_moves_slice_and_window(voila_page: str, artifacts_dir: Path):
    from playwright.sync_api import sync_playwright

    plane = "img.dicomxr-plane-slice"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 1400}, device_scale_factor=1)
            page.goto(voila_page, timeout=120_000)
            page.wait_for_selector(plane, state="visible", timeout=120_000)
            page.wait_for_function(
                f"document.querySelector('{plane}').naturalWidth > 0", timeout=30_000
            )
            # the metadata panel lives in an accordion: open it to read the frame's file
            page.locator(
                ".dicomxr-viewer .jupyter-widget-Collapse-header, .dicomxr-viewer .p-Collapse-header, .dicomxr-viewer .lm-Collapse-header"
            ).first.click()
            page.wait_for_selector(".dicomxr-metadata", state="visible", timeout=10_000)
            page.screenshot(path=str(artifacts_dir / "viewer_voila_0_open.png"), full_page=True)
            before = _state(page)
            size = tuple(int(x) for x in page.locator(plane).evaluate("e => [e.width, e.height]"))
            shot0 = _plane_png(page, plane)
            page.locator(plane).screenshot(path=str(artifacts_dir / "viewer_voila_0_plane.png"))
            assert (
                _corr(shot0, _expected(before["path"], before["level"], before["width"], size))
                > 0.95
            )

            # slice slider: focus its handle and step with the keyboard, like a person
            src0 = _src(page, plane)
            handle = page.locator(".dicomxr-slider-slice .noUi-handle")
            handle.focus()
            for _ in range(5):
                page.keyboard.press("ArrowRight")
            target = before["slice"] + 5
            _wait_for_text(page, ".dicomxr-slice-info", rf"slice {target}/")
            _wait_new_picture(page, plane, src0)
            after = _state(page)
            assert after["slice"] == target and after["path"] != before["path"]
            shot1 = _plane_png(page, plane)
            page.locator(plane).screenshot(path=str(artifacts_dir / "viewer_voila_1_slice.png"))
            new = _expected(after["path"], after["level"], after["width"], size)
            old = _expected(before["path"], before["level"], before["width"], size)
            assert np.abs(shot1 - shot0).mean() > 1.0  # the picture changed...
            assert _corr(shot1, new) > 0.95  # ...to the slice the page names
            assert _corr(shot1, new) > _corr(shot1, old)

            # window: type a level in the level slider's readout (twice the current one)
            level = round(after["level"] + after["width"] / 2, 1)
            src1 = _src(page, plane)
            readout = page.locator(
                ".dicomxr-viewer .widget-slider:has-text('level') .widget-readout"
            ).first
            readout.click()
            page.keyboard.press("Control+A")
            page.keyboard.type(str(level))
            page.keyboard.press("Enter")
            _wait_for_text(
                page, ".dicomxr-metadata", rf"level / width\)\s+{re.escape(f'{level:g}')} /"
            )
            _wait_new_picture(page, plane, src1)
            windowed = _state(page)
            assert windowed["level"] == pytest.approx(level, rel=1e-3)
            shot2 = _plane_png(page, plane)
            page.locator(plane).screenshot(path=str(artifacts_dir / "viewer_voila_2_window.png"))
            page.screenshot(path=str(artifacts_dir / "viewer_voila_2_page.png"), full_page=True)
            expected = _expected(windowed["path"], windowed["level"], windowed["width"], size)
            assert shot2.mean() < shot1.mean() - 10  # a higher level shows darker
            assert np.abs(shot2 - expected).mean() < 12
            assert _corr(shot2, expected) > 0.9

            # three planes; a click on the axial plane moves the coronal and sagittal ones
            page.get_by_role("button", name="3 planes").click()
            page.wait_for_selector("img.dicomxr-plane-row", state="visible", timeout=30_000)
            layer = page.locator(".dicomxr-layer-slice")
            page.wait_for_function(f"document.querySelector('{plane}').width < {size[0]}")
            # the picture's size (smaller with three planes); the click lands on the layer above it
            w, h = page.locator(plane).evaluate("e => [e.width, e.height]")
            # aim at the centre of the voxel (row 72, col 24): 2.6 screen pixels a voxel
            layer.click(position={"x": (24 + 0.5) * w / 96, "y": (72 + 0.5) * h / 96})
            _wait_for_text(page, ".dicomxr-caption-row", r"row 72/95")
            _wait_for_text(page, ".dicomxr-caption-col", r"column 24/95")
            page.wait_for_timeout(300)
            page.screenshot(
                path=str(artifacts_dir / "viewer_voila_3_orthogonal.png"), full_page=True
            )
            lines = page.locator(".dicomxr-layer-row line").count()
            assert lines == 2  # the crosshair on the coronal plane

            # the mouse wheel over the axial plane steps to the next slice
            s_now = _state(page)["slice"]
            layer.hover(position={"x": w / 2, "y": h / 2})
            page.mouse.wheel(0, 120)
            _wait_for_text(page, ".dicomxr-slice-info", rf"slice {s_now + 1}/")
        finally:
            browser.close()
