"""Deprecated: the geometry explainers live in :mod:`dicomxr.teaching.explain`.

``dicomxr.explain`` (the attribute, and ``from dicomxr import explain``) keeps working and is
the way to reach them; only this import path, ``import dicomxr.explain``, is deprecated.
"""

from __future__ import annotations

import warnings

from dicomxr.teaching.explain import *  # noqa: F403
from dicomxr.teaching.explain import __all__  # noqa: F401

warnings.warn(
    "the module dicomxr.explain moved to dicomxr.teaching.explain; use `from dicomxr import "
    "explain` (or import dicomxr.teaching.explain)",
    DeprecationWarning,
    stacklevel=2,
)
