"""dicomxr: lazy, geometry-correct DICOM series as dask-backed xarray objects.

The package is layered, and data flows one way::

    files / DICOMDIR / PACS -> catalog -> series plan -> lazy array -> xarray -> consumers

``import dicomxr`` is cheap: the public names below are resolved on first use, and the
optional parts (widgets, networking, NIfTI/Zarr export) import their dependencies only
when called.

Examples
--------
>>> import dicomxr
>>> da = dicomxr.open_series(dicomxr.data.sample_path())  # doctest: +SKIP
>>> da.dicom.report  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from dicomxr._lazy import before_xarray, lazy_getattr
from dicomxr._version import __version__
from dicomxr.errors import (
    DicomxrError,
    DicomxrWarning,
    GeometryError,
    GeometryWarning,
    InputFileError,
    InstanceCollisionWarning,
    LabelError,
    LabelWarning,
    MissingDependencyError,
    MultipleSeriesError,
    NoSeriesError,
    PixelDataError,
    PixelDataWarning,
    ScalingError,
    SetApartWarning,
    SkippedFileWarning,
)

logging.getLogger(__name__).addHandler(logging.NullHandler())


@before_xarray
def _register_accessor() -> None:
    # the .dicom accessor stands at the top (it reaches the exports and the viewer); it is
    # registered before dicomxr makes its first xarray object, so importing dicomxr stays light
    import dicomxr.accessor  # noqa: F401


# public name -> "module:attribute"; resolved lazily so that importing dicomxr stays light
_LAZY: dict[str, str] = {
    "scan": "dicomxr.catalog:scan",
    "plan_series": "dicomxr.series:plan_series",
    "SeriesPlan": "dicomxr.series:SeriesPlan",
    "GeometryReport": "dicomxr.geometry:GeometryReport",
    "open_series": "dicomxr.api:open_series",
    "open_study": "dicomxr.api:open_study",
    "open_labels": "dicomxr.labels:open_labels",
    "convert": "dicomxr.conversion:convert",
    "view": "dicomxr.viewer:view",
    "browse": "dicomxr.viewer:browse",
    "anatomy": "dicomxr.teaching.anatomy:anatomy",
    "set_options": "dicomxr.options:set_options",
    "get_options": "dicomxr.options:get_options",
    "data": "dicomxr.data",
    # errors defined next to what raises them (importing them stays light)
    "ConvertError": "dicomxr.conversion:ConvertError",
    "NetError": "dicomxr.net.errors:NetError",
    "explain": "dicomxr.teaching.explain",
    # the package itself (cheap: its names load on use), so dicomxr.viewer.montage(...) works
    "viewer": "dicomxr.viewer",
}

__all__ = [
    "ConvertError",
    "DicomxrError",
    "DicomxrWarning",
    "GeometryError",
    "GeometryReport",
    "GeometryWarning",
    "InputFileError",
    "InstanceCollisionWarning",
    "LabelError",
    "LabelWarning",
    "MissingDependencyError",
    "MultipleSeriesError",
    "NetError",
    "NoSeriesError",
    "PixelDataError",
    "PixelDataWarning",
    "ScalingError",
    "SeriesPlan",
    "SetApartWarning",
    "SkippedFileWarning",
    "__version__",
    "anatomy",
    "browse",
    "convert",
    "data",
    "explain",
    "get_options",
    "open_labels",
    "open_series",
    "open_study",
    "plan_series",
    "scan",
    "set_options",
    "view",
    "viewer",
]


__getattr__ = lazy_getattr(__name__, globals(), _LAZY)


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from dicomxr import data
    from dicomxr.api import open_series, open_study
    from dicomxr.catalog import scan
    from dicomxr.conversion import ConvertError, convert
    from dicomxr.geometry import GeometryReport
    from dicomxr.labels import open_labels
    from dicomxr.net.errors import NetError
    from dicomxr.options import get_options, set_options
    from dicomxr.series import SeriesPlan, plan_series
    from dicomxr.teaching import explain
    from dicomxr.teaching.anatomy import anatomy
    from dicomxr.viewer import browse, view
