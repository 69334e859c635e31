"""Sphinx configuration for dicomxr's documentation.

The site is built from the *project root* so that the tutorial notebooks in ``notebooks/`` are
pages of the site without being copied or symlinked into ``docs/``::

    sphinx-build -W --keep-going -c docs . docs/_build/html

``include_patterns`` limits the sources to ``docs/`` and ``notebooks/*.ipynb``. myst-nb executes
every notebook during the build (a fresh build directory executes each exactly once); a cell that
raises fails the build.
"""

from __future__ import annotations

import os
from pathlib import Path

import dicomxr

ROOT = Path(__file__).resolve().parents[1]

project = "dicomxr"
author = "dicomxr developers"
copyright = "2026, dicomxr developers"
release = dicomxr.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]

# --- sources: docs/ and the notebooks, nothing else of the repository --------------------------
root_doc = "docs/index"
include_patterns = ["docs/**", "notebooks/*.ipynb"]
exclude_patterns = [
    "docs/_build",
    "docs/_extra",
    "docs/_static",
    "**/.ipynb_checkpoints",
    ".git",
    "build",
    "dist",
    "src",
    "tests",
    "bench",
    "tools",
    "test-artifacts",
]
source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb"}

# --- MyST / myst-nb ----------------------------------------------------------------------------
myst_enable_extensions = ["colon_fence", "deflist", "dollarmath", "fieldlist"]
myst_heading_anchors = 3
# "cache" re-executes a notebook only when its code changed; the cache lives in the doctree
# directory of the build (set in setup() below), so a fresh build (CI) executes every notebook
# exactly once and two builds into different folders never share results.
nb_execution_mode = os.environ.get("DICOMXR_NB_EXECUTION_MODE", "cache")
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_execution_timeout = int(os.environ.get("DICOMXR_NB_TIMEOUT", "300"))
nb_execution_in_temp = False  # run in notebooks/, as a reader would
nb_merge_streams = True
# A static page has no kernel: widgets (the viewer) would show as an empty box. Objects that
# also offer a PNG of what they show (the viewer does) are rendered as that picture instead.
nb_mime_priority_overrides = [("html", "image/png", 5), ("dirhtml", "image/png", 5)]

# --- autodoc / autosummary / napoleon ---------------------------------------------------------
autosummary_generate = False  # API pages are written by hand; nothing is generated into docs/
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": False}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_preserve_defaults = True
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
napoleon_use_ivar = True

# --- HTML --------------------------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"dicomxr {release}"
html_static_path = ["_static"]
html_extra_path = ["_extra"]  # index.html at the site root -> docs/index.html
html_css_files = ["dicomxr.css"]
html_theme_options = {
    "navbar_align": "left",
    "show_toc_level": 2,
    "navigation_with_keys": False,
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
}
html_show_sourcelink = False
html_last_updated_fmt = None


def _check_srcdir(app):
    from sphinx.errors import ConfigError

    if Path(app.srcdir).resolve() != ROOT:
        raise ConfigError(
            f"build the docs from the project root, not {app.srcdir}: "
            "sphinx-build -W --keep-going -c docs . docs/_build/html"
        )


def _cache_in_doctrees(app, config):
    if not config.nb_execution_cache_path:
        config.nb_execution_cache_path = str(Path(app.doctreedir) / "jupyter_cache")


def setup(app):
    app.connect("config-inited", _cache_in_doctrees)
    app.connect("builder-inited", _check_srcdir)
