"""Every code block of README.md and docs/**/*.md runs (issue 11, item 7).

What runs
---------
- **Python**: fenced blocks whose info string is ``python``, ``py`` or ``python3``, and MyST-NB
  ``{code-cell}`` blocks (``ipython3``/``python3``/``python``; their ``:option:`` lines are
  dropped). A page's blocks run in page order, in **one namespace per page** (a block may use
  the names an earlier block of the same page defined), like a notebook. When the last statement
  of a block is an expression, its value is displayed the way Jupyter would (``_repr_html_``
  when it has one, else ``repr``), so a broken ``_repr_html_`` fails here too.
- **Shell**: in ``bash``/``sh``/``shell``/``console`` blocks, every command (lines split on
  ``&&``, comments removed, a leading ``$ `` prompt removed) that starts with ``dicomxr `` runs
  through ``bash`` with the package's own ``dicomxr`` first on ``PATH``, interleaved with the
  page's Python blocks in page order. Other shell commands (``pip install``, ``conda``,
  ``bash tools/test``, ``sphinx-build``, ``python bench/...``, ``export``) install or build
  things and are not run: installing is CI's job, the rest is covered by the test suite itself.
- ``text`` blocks and MyST directives (``{eval-rst}``, ``{toctree}``...) are not code.

How
---
Each page runs in its own subprocess, in a fresh temporary working directory (a snippet that
writes ``out.nii.gz`` writes it there), with ``DICOMXR_TEST_DATA`` pointing at the real corpora,
``MPLBACKEND=Agg`` and a per-page timeout. A failure reports the page and line of the block.

Exemptions
----------
A block directly preceded by ``<!-- no-run: <reason> -->`` is not run; the reason is required.
Keep them rare: every exemption must be listed in :data:`EXEMPT` below with its reason, so a new
one shows up in review. There are none today - the PACS examples start a throwaway Orthanc with
:mod:`dicomxr.net.servers`.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGE_TIMEOUT = 420  # seconds per page; the PACS page starts an Orthanc and fetches a series
PYTHON_INFO = {"python", "py", "python3"}
CODE_CELL_LANGS = {"", "python", "python3", "ipython", "ipython3"}
SHELL_INFO = {"bash", "sh", "shell", "console"}
NO_RUN = re.compile(r"<!--\s*no-run:\s*(?P<reason>.*?)\s*-->")
FENCE = re.compile(r"^(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`\s]*)\s*(?P<arg>[^`]*)$")
#: (page, first line of the block) -> why it does not run; see the module docstring
EXEMPT: dict[tuple[str, int], str] = {}


@dataclass(frozen=True)
class Block:
    """One runnable code block of a page."""

    page: str
    line: int  # 1-based line of the block's first code line
    kind: str  # "python" or "shell"
    code: str
    skip_reason: str | None = None


def pages() -> list[Path]:
    """README.md and every Markdown page under docs/ (build output excluded)."""
    found = [ROOT / "README.md"]
    found += sorted(
        p for p in (ROOT / "docs").rglob("*.md") if "_build" not in p.relative_to(ROOT).parts
    )
    return found


def _kind(info: str, arg: str) -> str | None:
    if info.lower() in PYTHON_INFO:
        return "python"
    if info == "{code-cell}" and arg.strip().lower() in CODE_CELL_LANGS:
        return "python"
    if info.lower() in SHELL_INFO:
        return "shell"
    return None


def _previous_text_line(lines: list[str], index: int) -> str:
    for line in reversed(lines[:index]):
        if line.strip():
            return line.strip()
    return ""


def _strip_cell_options(body: list[str]) -> list[str]:
    """Drop MyST-NB ``:key: value`` lines (and a ``---`` front block) from a code cell."""
    if body and body[0].strip() == "---":
        end = next((i for i, line in enumerate(body[1:], 1) if line.strip() == "---"), 0)
        return body[end + 1 :]
    i = 0
    while i < len(body) and re.match(r"^:[\w-]+:", body[i]):
        i += 1
    return body[i:]


def dicomxr_commands(script: str) -> list[str]:
    """The ``dicomxr ...`` commands of a shell block (see the module docstring)."""
    commands = []
    for raw in script.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", raw).strip()
        line = line.removeprefix("$ ")
        for part in line.split("&&"):
            part = part.strip()
            if part.startswith("dicomxr ") or part == "dicomxr":
                commands.append(part)
    return commands


def blocks(path: Path, root: Path = ROOT) -> list[Block]:
    """The runnable blocks of one Markdown page, in page order."""
    page = path.relative_to(root).as_posix()
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        fence = match["fence"]
        end = next(
            (j for j in range(i + 1, len(lines)) if lines[j].strip().startswith(fence)),
            len(lines),
        )
        kind = _kind(match["info"], match["arg"])
        body = lines[i + 1 : end]
        if kind is not None:
            if match["info"] == "{code-cell}":
                body = _strip_cell_options(body)
            marker = NO_RUN.search(_previous_text_line(lines, i))
            code = "\n".join(body)
            if kind == "shell":
                code = "\n".join(dicomxr_commands(code))
            if code.strip():
                reason = marker["reason"] if marker else None
                found.append(Block(page, i + 2, kind, code, reason))
        i = end + 1
    return found


def _display_last(code: str) -> str:
    """Rewrite a block so a trailing expression is displayed, as in Jupyter."""
    tree = ast.parse(code)
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = tree.body[-1]
        tree.body[-1] = ast.copy_location(
            ast.Expr(
                ast.Call(ast.Name("__display__", ast.Load()), [last.value], []),
            ),
            last,
        )
        ast.fix_missing_locations(tree)
    return ast.unparse(tree)


RUNNER = """
import os, subprocess, sys
os.environ.setdefault("MPLBACKEND", "Agg")

def __display__(value):
    if value is None:
        return
    html = getattr(value, "_repr_html_", None)
    text = html() if callable(html) else repr(value)
    assert isinstance(text, str) or text is None, type(text)

def __shell__(command, where):
    print(f"$ {command}    # {where}", flush=True)
    done = subprocess.run(["bash", "-c", command])
    if done.returncode:
        raise SystemExit(f"{where}: {command!r} exited with {done.returncode}")

__ns__ = {"__name__": "__main__", "__display__": __display__}
"""


def page_script(page_blocks: list[Block]) -> str:
    """A Python script that runs a page's blocks in order, in one namespace."""
    parts = [RUNNER]
    for block in page_blocks:
        where = f"{block.page}:{block.line}"
        if block.skip_reason is not None:
            continue
        if block.kind == "python":
            code = _display_last(textwrap.dedent(block.code))
            # padding with newlines makes the traceback's line numbers the page's own
            padded = "\n" * (block.line - 1) + code
            parts.append(
                f"print('--- {where}', flush=True)\n"
                f"exec(compile({padded!r}, {block.page!r}, 'exec'), __ns__)"
            )
        else:
            for command in block.code.splitlines():
                parts.append(f"__shell__({command!r}, {where!r})")
    return "\n".join(parts) + "\n"


def _page_id(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


RUNNABLE = [p for p in pages() if any(b.skip_reason is None for b in blocks(p))]


@pytest.mark.slow
@pytest.mark.parametrize("path", RUNNABLE, ids=_page_id)
def test_page_runs(path: Path, tmp_path: Path, data_root: Path) -> None:
    script = tmp_path / "page_script.py"
    script.write_text(page_script(blocks(path)))
    work = tmp_path / "cwd"
    work.mkdir()
    env = dict(os.environ)
    env["DICOMXR_TEST_DATA"] = str(data_root)
    env["MPLBACKEND"] = "Agg"
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    try:
        done = subprocess.run(
            [sys.executable, str(script)],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=PAGE_TIMEOUT,
            start_new_session=True,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{_page_id(path)}: still running after {PAGE_TIMEOUT} s\n{exc.stdout}")
    assert done.returncode == 0, (
        f"{_page_id(path)} failed\n--- stdout\n{done.stdout[-4000:]}\n--- stderr\n"
        f"{done.stderr[-6000:]}"
    )


def test_readme_and_guides_have_code() -> None:
    """The collector finds the blocks it is meant to run (a parser that finds nothing passes)."""
    readme = blocks(ROOT / "README.md")
    assert any(b.kind == "python" for b in readme)
    assert any(b.kind == "shell" and b.code.startswith("dicomxr demo") for b in readme)
    assert len(RUNNABLE) >= 8, [_page_id(p) for p in RUNNABLE]


def test_exemptions_are_listed_with_a_reason() -> None:
    found = {(b.page, b.line): b.skip_reason for p in pages() for b in blocks(p) if b.skip_reason}
    assert all(reason.strip() for reason in found.values()), found
    assert found == EXEMPT, "list every <!-- no-run: ... --> block in EXEMPT with its reason"


def test_collector_rules(tmp_path: Path) -> None:
    assert dicomxr_commands(
        "pip install -e . && dicomxr demo   # comment\nbash tools/test\n$ dicomxr scan x"
    ) == ["dicomxr demo", "dicomxr scan x"]
    assert dicomxr_commands('pip install -e ".[all]"\nconda env create') == []
    page = tmp_path / "probe.md"
    text = (
        "```python\na = 1\n```\n\n<!-- no-run: needs a PACS -->\n```python\nb = 2\n```\n"
        "```{code-cell} ipython3\n:tags: [hide-input]\nc = 3\n```\n```text\nnot code\n```\n"
    )
    page.write_text(text)
    found = blocks(page, root=tmp_path)
    assert [(b.line, b.code, b.skip_reason) for b in found] == [
        (2, "a = 1", None),
        (7, "b = 2", "needs a PACS"),
        (10, "c = 3", None),
    ]
    assert "__display__(x)" in _display_last("x = 1\nx")


def test_all_extra_has_what_the_docs_use() -> None:
    """``pip install .[all]`` is enough for every page (the export guide's netCDF example)."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    (all_spec,) = extras["all"]
    included = re.search(r"\[(.*)\]", all_spec)[1].split(",")
    deps = [d for name in included for d in extras[name.strip()]]
    assert any(d.startswith("h5netcdf") for d in deps), included
    assert any(d.startswith("nibabel") for d in project["dependencies"])  # dicomxr demo's NIfTI


def test_readme_pictures_are_the_right_way_up() -> None:
    """xarray's ``.plot()`` puts row 0 at the bottom (the head upside down); the README uses
    ``.dicom.plot`` (rows down, orientation letters) or says ``yincrease=False``."""
    code = "\n".join(b.code for b in blocks(ROOT / "README.md") if b.kind == "python")
    bare = re.findall(r"(?<!dicom)\.plot\((?![^)]*yincrease=False)[^)]*\)", code)
    assert not bare, bare
