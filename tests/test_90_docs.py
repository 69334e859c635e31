"""The documentation site, built and looked at in a real browser.

This is the CI check of the docs *and* of the tutorial notebooks: the build executes every
notebook in ``notebooks/`` exactly once (myst-nb, a fresh build directory) with warnings as
errors, so a notebook cell that raises, a broken cross-reference or a bad docstring fails here.
The built HTML is then served on 127.0.0.1 and opened with Playwright driving Debian's headless
Chromium (never a downloaded browser): the anatomy tutorial must show its annotated hex view.
"""

from __future__ import annotations

import functools
import http.server
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
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
# the hex view's annotated parts (dicomxr.anatomy's HTML): each must appear on the tutorial page
HEX_CLASSES = (
    "dxr-element",
    "dxr-tag",
    "dxr-vr",
    "dxr-len",
    "dxr-value",
    "dxr-preamble",
    "dxr-prefix",
)
BUILD_TIMEOUT = 540  # seconds; budget ~8 min on 2 cores; below pytest's 600 s per test

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, data_root: Path, artifacts_dir: Path) -> Path:
    """Build the docs once (executing the notebooks) into a fresh folder; return the HTML root."""
    out = tmp_path_factory.mktemp("docs")
    html = out / "html"
    env = dict(os.environ)
    env["DICOMXR_TEST_DATA"] = str(data_root)  # the notebooks read the real corpora from here
    env.setdefault("MPLBACKEND", "Agg")
    env["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"
    cmd = [
        sys.executable,
        "-m",
        "sphinx",
        "-W",
        "--keep-going",
        "-q",
        "-b",
        "html",
        "-d",
        str(out / "doctrees"),
        "-c",
        str(ROOT / "docs"),
        str(ROOT),
        str(html),
    ]
    start = time.perf_counter()
    # own session: on a timeout the whole group goes, notebook kernels included
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=BUILD_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(
            f"docs build exceeded {BUILD_TIMEOUT} s (budget ~8 min):\n{stderr[-3000:]}",
            pytrace=False,
        )
    elapsed = time.perf_counter() - start
    print(f"docs build (executing the notebooks): {elapsed:.1f} s")
    log = f"build time {elapsed:.1f} s\n{stdout}\n{stderr}"
    (artifacts_dir / "docs_build.log").write_text(log)
    if proc.returncode != 0:
        pytest.fail(
            f"sphinx-build -W failed ({proc.returncode}) after {elapsed:.0f} s:\n{stderr[-6000:]}",
            pytrace=False,
        )
    return html


@pytest.fixture(scope="module")
def server(site: Path) -> Iterator[str]:
    """Serve the built site on 127.0.0.1 (free port); stopped after the module."""
    handler = functools.partial(_QuietHandler, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, name="docs-http", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"{CHROMIUM} not found: apt-get install chromium (tools/test does)", pytrace=False
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=60_000)
        try:
            yield chromium
        finally:
            chromium.close()


def _open(browser, url: str):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(30_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    response = page.goto(url, wait_until="load")
    assert response is not None and response.ok, f"{url}: HTTP {response and response.status}"
    return page, errors


def test_every_notebook_is_a_page(site: Path) -> None:
    notebooks = sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb"))
    assert "slice_order" in notebooks
    for stem in notebooks:
        page = site / "notebooks" / f"{stem}.html"
        assert page.is_file(), f"notebooks/{stem}.ipynb was not built into a page"
        text = page.read_text()
        # executed: outputs are on the page (an unexecuted notebook has no output areas)
        assert "cell_output" in text, f"notebooks/{stem}.ipynb has no outputs on its page"


@pytest.mark.browser
def test_anatomy_tutorial_hex_view_in_browser(
    browser, server: str, site: Path, artifacts_dir: Path
) -> None:
    pages = sorted((site / "notebooks").glob("*anatomy*.html"))
    assert len(pages) == 1, f"expected one anatomy tutorial page, found {[p.name for p in pages]}"
    url = f"{server}/notebooks/{pages[0].name}"
    page, errors = _open(browser, url)
    try:
        counts = {}
        for cls in HEX_CLASSES:
            locator = page.locator(f".{cls}")
            counts[cls] = locator.count()
            assert counts[cls] > 0, f"no .{cls} on {url}"
        # the parts of one element really are on screen, not only in the DOM
        element = page.locator(".dxr-element").first
        element.scroll_into_view_if_needed()
        for cls in ("dxr-tag", "dxr-vr", "dxr-len", "dxr-value"):
            part = page.locator(f".dxr-element .{cls}").first
            assert part.is_visible(), f".{cls} of a .dxr-element is not visible"
            box = part.bounding_box()
            assert box is not None and box["width"] > 0 and box["height"] > 0
        assert page.locator(".dxr-preamble").first.is_visible()
        assert page.locator(".dxr-prefix").first.is_visible()
        # a DICM prefix is the bytes 44 49 43 4d; the prefix span shows them (hex or text)
        prefix_text = page.locator(".dxr-prefix").first.inner_text().upper()
        assert "DICM" in prefix_text or "44 49 43 4D" in prefix_text
        assert counts["dxr-element"] >= 10, counts
        # the file's summary, the preamble and the first elements in view
        page.locator(".dxr-prefix").first.evaluate("el => el.scrollIntoView({block: 'center'})")
        page.screenshot(path=str(artifacts_dir / "docs_anatomy_tutorial.png"), full_page=False)
        assert not errors, f"JavaScript errors on {url}: {errors}"
    finally:
        page.close()


@pytest.mark.browser
def test_getting_started_and_api_pages_render(browser, server: str, artifacts_dir: Path) -> None:
    page, errors = _open(browser, f"{server}/docs/getting_started.html")
    try:
        assert page.locator("h1").first.inner_text().strip().startswith("Getting started")
        assert "dicomxr demo" in page.locator("article").inner_text()
        page.screenshot(path=str(artifacts_dir / "docs_getting_started.png"))
        assert not errors, errors
    finally:
        page.close()

    page, errors = _open(browser, f"{server}/docs/api/explain.html")
    try:
        # autodoc rendered the function with its numpy docstring sections
        signature = page.locator("dt#dicomxr\\.teaching\\.explain\\.slice_positions")
        assert signature.count() == 1
        assert "slice_positions" in signature.inner_text()
        body = page.locator("article").inner_text()
        assert "Parameters" in body and "Returns" in body
        assert not errors, errors
    finally:
        page.close()

    # the site root redirects to the docs' index; its navigation leads to the tutorials
    page, errors = _open(browser, f"{server}/")
    try:
        page.wait_for_url("**/docs/index.html")
        assert page.locator("a[href$='tutorials.html']").count() >= 1
    finally:
        page.close()
    page, errors = _open(browser, f"{server}/docs/tutorials.html")
    try:
        link = page.locator("article a[href$='slice_order.html']")
        assert link.count() >= 1
        assert "Why slice order matters" in link.first.inner_text()
        assert not errors, errors
    finally:
        page.close()
