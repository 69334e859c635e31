"""What a clinician reads on a picture: orientation letters, slice numbers, positions in mm.

Shared by the viewer, the static montage and ``.dicom.plot`` so that every picture dicomxr draws
labels its edges and its slices the same way:

- **orientation letters** (A/P/R/L/S/I) on the four edges of a plane, from the array's own
  affine (LPS): the letter at the right edge is the patient direction the displayed horizontal
  axis points to (the nearest patient axis of its direction vector), its opposite on the left;
  the same for bottom and top;
- **slice numbers count from 0**, like the index: ``"slice 20/139"`` is ``da.isel(slice=20)``
  of a stack whose last index is 139.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["EDGES", "draw_edge_letters", "edge_letters", "index_label", "patient_letter"]

#: letters for +x, +y, +z of DICOM's patient system (LPS) and their opposites
_POSITIVE = ("L", "P", "S")
_NEGATIVE = ("R", "A", "I")
EDGES = ("left", "right", "top", "bottom")


def patient_letter(direction: Sequence[float]) -> str:
    """Return the patient direction (one of A/P/R/L/S/I) nearest to an LPS vector.

    Examples
    --------
    >>> patient_letter([0.98, 0.1, 0.0]), patient_letter([0, -1, 0]), patient_letter([0, 0.2, -0.9])
    ('L', 'A', 'I')
    """
    v = np.asarray(direction, dtype=float)
    axis = int(np.argmax(np.abs(v)))
    return _POSITIVE[axis] if v[axis] > 0 else _NEGATIVE[axis]


def edge_letters(
    affine: Any,
    vertical: int,
    horizontal: int,
    *,
    flip_vertical: bool = False,
    flip_horizontal: bool = False,
) -> dict[str, str]:
    """Return the orientation letters of the four edges of a displayed plane.

    Parameters
    ----------
    affine
        4x4 matrix (or its 16 values) mapping the index ``(slice, row, col, 1)`` to LPS mm,
        e.g. :func:`dicomxr.spatial.affine_of`.
    vertical, horizontal
        Index axes (0 slice, 1 row, 2 col) running down and across the picture.
    flip_vertical, flip_horizontal
        Whether the index runs up / right-to-left on screen.

    Returns
    -------
    dict
        ``{"left": ..., "right": ..., "top": ..., "bottom": ...}``.

    Examples
    --------
    >>> import numpy as np
    >>> axial = np.eye(4)
    >>> axial[:3, :3] = [[0, 0, 0.5], [0, 0.5, 0], [1.0, 0, 0]]  # slices to S, rows P, cols L
    >>> edge_letters(axial, vertical=1, horizontal=2)
    {'left': 'R', 'right': 'L', 'top': 'A', 'bottom': 'P'}
    """
    a = np.asarray(affine, dtype=float).reshape(4, 4)
    across = a[:3, horizontal] * (-1.0 if flip_horizontal else 1.0)
    down = a[:3, vertical] * (-1.0 if flip_vertical else 1.0)
    right, bottom = patient_letter(across), patient_letter(down)
    return {
        "left": patient_letter(-across),
        "right": right,
        "top": patient_letter(-down),
        "bottom": bottom,
    }


def draw_edge_letters(ax: Any, letters: dict[str, str], *, color: str = "white") -> list[Any]:
    """Write the letters inside the four edges of a matplotlib Axes; return the Text artists."""
    style = {"transform": ax.transAxes, "color": color, "fontsize": 8, "fontweight": "bold"}
    places = {
        "left": (0.02, 0.5, "left", "center"),
        "right": (0.98, 0.5, "right", "center"),
        "top": (0.5, 0.98, "center", "top"),
        "bottom": (0.5, 0.02, "center", "bottom"),
    }
    texts = []
    for edge, (x, y, ha, va) in places.items():
        text = ax.text(x, y, letters[edge], ha=ha, va=va, **style)
        text.set_gid(f"dicomxr-orientation-{edge}")
        texts.append(text)
    return texts


def index_label(name: str, index: int, size: int) -> str:
    """Return ``"<name> <index>/<last index>"``: 0-based, like ``da.isel``.

    Examples
    --------
    >>> index_label("slice", 0, 140), index_label("axial", 139, 140)
    ('slice 0/139', 'axial 139/139')
    """
    text = f"{int(index)}/{int(size) - 1}"
    return f"{name} {text}" if name else text
