"""Networking: a DICOM SCU (:class:`DicomClient`) and a DICOMweb client (:class:`DicomWebClient`).

Fetched instances land as ``dest/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``
and open with :func:`dicomxr.open_series` / :func:`dicomxr.open_study`. This package imports
pynetdicom (and dicomweb-client for :class:`DicomWebClient`); ``import dicomxr`` does not
import it.

Examples
--------
>>> from dicomxr.net import DicomClient
>>> with DicomClient("127.0.0.1", 4242, called_ae="ORTHANC") as pacs:  # doctest: +SKIP
...     pacs.echo()
...     da = pacs.open("fetched/", series="1.2.3.4")
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dicomxr._lazy import lazy_getattr
from dicomxr.net.errors import (
    AssociationError,
    AssociationRejectedError,
    MoveDestinationError,
    NetError,
    NetTimeoutError,
    QueryError,
    RetrieveError,
    ServerError,
    StoreError,
)

_LAZY = {
    "DicomClient": "dicomxr.net.client:DicomClient",
    "StoreReport": "dicomxr.net.client:StoreReport",
    "plan_contexts": "dicomxr.net.client:plan_contexts",
    "DicomWebClient": "dicomxr.net.dicomweb:DicomWebClient",
    "RetrieveReport": "dicomxr.net.storage:RetrieveReport",
    "safe_name": "dicomxr.net.storage:safe_name",
    "servers": "dicomxr.net.servers",
}

__all__ = [
    "AssociationError",
    "AssociationRejectedError",
    "MoveDestinationError",
    "NetError",
    "NetTimeoutError",
    "QueryError",
    "RetrieveError",
    "ServerError",
    "StoreError",
    *_LAZY,
]


__getattr__ = lazy_getattr(__name__, globals(), _LAZY)


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # pragma: no cover
    from dicomxr.net import servers  # noqa: F401
    from dicomxr.net.client import DicomClient, StoreReport, plan_contexts  # noqa: F401
    from dicomxr.net.dicomweb import DicomWebClient  # noqa: F401
    from dicomxr.net.storage import RetrieveReport, safe_name  # noqa: F401
