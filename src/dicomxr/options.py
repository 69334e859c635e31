"""Package options, set globally or for a block with a context manager (like ``xarray.set_options``)."""

from __future__ import annotations

from typing import Any

_DEFAULTS: dict[str, Any] = {
    # show a tqdm progress bar when a scan touches at least this many files
    "progress_min_files": 200,
    # relative tolerance used by the geometry checks (spacing, orientation)
    "geometry_rtol": 1e-3,
    # absolute tolerance in millimetres for positions and spacing
    "geometry_atol_mm": 1e-2,
}
_OPTIONS: dict[str, Any] = dict(_DEFAULTS)


def get_options() -> dict[str, Any]:
    """Return a copy of the current options."""
    return dict(_OPTIONS)


class set_options:  # lower case on purpose: mirrors xarray.set_options
    """Set options globally, or for a ``with`` block.

    Parameters
    ----------
    **kwargs
        Option names and values. Known options: ``progress_min_files`` (int),
        ``geometry_rtol`` (float), ``geometry_atol_mm`` (float).

    Examples
    --------
    >>> import dicomxr
    >>> with dicomxr.set_options(progress_min_files=10):
    ...     dicomxr.get_options()["progress_min_files"]
    10
    """

    def __init__(self, **kwargs: Any) -> None:
        unknown = set(kwargs) - set(_DEFAULTS)
        if unknown:
            raise ValueError(
                f"unknown option(s) {sorted(unknown)}; known options are {sorted(_DEFAULTS)}"
            )
        self._old = {k: _OPTIONS[k] for k in kwargs}
        _OPTIONS.update(kwargs)

    def __enter__(self) -> set_options:
        return self

    def __exit__(self, *exc: object) -> None:
        _OPTIONS.update(self._old)
