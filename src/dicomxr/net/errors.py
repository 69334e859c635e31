"""Errors raised by :mod:`dicomxr.net`; each one says what failed and what to try next."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dicomxr.errors import DicomxrError

if TYPE_CHECKING:  # pragma: no cover
    from dicomxr.net.storage import RetrieveReport

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
]


class NetError(DicomxrError):
    """Base class of the networking errors."""


class AssociationError(NetError, ConnectionError):
    """No association could be established (nothing listening, peer aborted, peer gone)."""


class AssociationRejectedError(AssociationError):
    """The peer rejected the association (wrong called AE title, unknown calling AE, busy)."""

    def __init__(
        self,
        message: str,
        *,
        result: int | None = None,
        source: int | None = None,
        reason: int | None = None,
    ) -> None:
        super().__init__(message)
        self.result = result
        self.source = source
        self.reason = reason


class NetTimeoutError(NetError, TimeoutError):
    """The peer did not answer within the configured timeout."""


class QueryError(NetError):
    """A C-FIND (or QIDO-RS search) failed."""


class RetrieveError(NetError):
    """A C-GET / C-MOVE / WADO-RS retrieval did not bring every requested instance.

    Attributes
    ----------
    report : RetrieveReport
        What arrived, what is missing, the failed sub-operation counts. Every file in the
        destination is complete (atomic writes): call the same method again to resume.
    """

    def __init__(self, message: str, report: RetrieveReport | None = None) -> None:
        super().__init__(message)
        self.report = report


class MoveDestinationError(RetrieveError):
    """The peer does not know the C-MOVE destination AE title (status 0xA801)."""


class StoreError(NetError):
    """C-STORE (or STOW-RS) of one or more instances failed."""


class ServerError(NetError):
    """A local test server (Orthanc, dcmqrscp, qrscp) failed to start or to take data."""
