"""A small DICOM SCU: echo, find, get, move and store, straight into dicomxr's loader.

:class:`DicomClient` talks DIMSE to a PACS (Orthanc, DCMTK, a hospital archive) through
pynetdicom. Retrievals plan their presentation contexts from the SOP classes actually in
the study, negotiate SCP role selection for C-GET, accept compressed transfer syntaxes as
stored, write ``dest/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm`` atomically, show a
progress bar, resume, and turn every failure into an exception that says what is missing.

Examples
--------
>>> from dicomxr.net import DicomClient
>>> with DicomClient("127.0.0.1", 4242, called_ae="ORTHANC") as pacs:  # doctest: +SKIP
...     studies = pacs.find("STUDY", PatientName="DOE^*", StudyDate=("20240101", None))
...     report = pacs.get("data/", study=studies.StudyInstanceUID[0])
...     tree = pacs.open("data/", study=studies.StudyInstanceUID[0])
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pydicom
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import build_context, build_role, evt, sop_class
from pynetdicom.status import code_to_category

from dicomxr.net import _fastget
from dicomxr.net._transport import FastAE
from dicomxr.net.errors import (
    AssociationError,
    AssociationRejectedError,
    MoveDestinationError,
    NetTimeoutError,
    QueryError,
    RetrieveError,
    StoreError,
)
from dicomxr.net.storage import STALE_PART, DicomStorage, RetrieveReport, file_meta_bytes

logger = logging.getLogger(__name__)

__all__ = ["DicomClient", "StoreReport", "plan_contexts"]

MAX_CONTEXTS = 128
DEFAULT_PARALLEL = 2  # bench/pacs.py on 2 cores: 1-3 equal, 4 slower (Orthanc needs CPU too)
REACTOR_DELAY = 0.0  # FastSocket.ready blocks in select instead

UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian)
# one extra context each, most common first: when the 128-context budget is tight the rarer
# ones are dropped (and the peer converts those instances to an uncompressed syntax)
EXTRA_SYNTAXES = (
    ImplicitVRLittleEndian,
    JPEGLosslessSV1,
    JPEGBaseline8Bit,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    JPEG2000,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLSNearLossless,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
)

_MODELS = {
    ("study", "find"): sop_class.StudyRootQueryRetrieveInformationModelFind,
    ("study", "get"): sop_class.StudyRootQueryRetrieveInformationModelGet,
    ("study", "move"): sop_class.StudyRootQueryRetrieveInformationModelMove,
    ("patient", "find"): sop_class.PatientRootQueryRetrieveInformationModelFind,
    ("patient", "get"): sop_class.PatientRootQueryRetrieveInformationModelGet,
    ("patient", "move"): sop_class.PatientRootQueryRetrieveInformationModelMove,
}

LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")

# return keys asked for by default at each level (a user adds more with return_keys=)
DEFAULT_KEYS: dict[str, tuple[str, ...]] = {
    "PATIENT": (
        "PatientID",
        "PatientName",
        "PatientBirthDate",
        "PatientSex",
        "NumberOfPatientRelatedStudies",
    ),
    "STUDY": (
        "PatientID",
        "PatientName",
        "StudyInstanceUID",
        "StudyDate",
        "StudyTime",
        "StudyDescription",
        "StudyID",
        "AccessionNumber",
        "ModalitiesInStudy",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
    ),
    "SERIES": (
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "Modality",
        "SeriesNumber",
        "SeriesDescription",
        "NumberOfSeriesRelatedInstances",
    ),
    "IMAGE": (
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SOPInstanceUID",
        "SOPClassUID",
        "InstanceNumber",
    ),
}
_UNIQUE = {
    "PATIENT": "PatientID",
    "STUDY": "StudyInstanceUID",
    "SERIES": "SeriesInstanceUID",
    "IMAGE": "SOPInstanceUID",
}

_STATUS_TEXT = {
    0xA701: "out of resources: unable to calculate number of matches",
    0xA702: "out of resources: unable to perform sub-operations "
    "(for C-GET this usually means no storage context was accepted, or SCP role selection was refused)",
    0xA801: "move destination unknown",
    0xA900: "identifier does not match SOP class",
    0xAA00: "none of the frames requested were found",
    0xC000: "unable to process",
    0xFE00: "cancelled",
    0xB000: "sub-operations complete, one or more failures",
    0x0122: "SOP class not supported",
    0x0124: "not authorised",
}


def _status_text(code: int) -> str:
    text = _STATUS_TEXT.get(code)
    if text is None and 0xC000 <= code <= 0xCFFF:
        text = "unable to process"
    return f"0x{code:04X} ({text or code_to_category(code).lower()})"


@dataclass
class StoreReport:
    """What a C-STORE call did: paths/UIDs sent, and the failures with their status."""

    sent: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every instance was stored."""
        return not self.failed

    def __repr__(self) -> str:
        return (
            f"<StoreReport {len(self.sent)} stored, {len(self.warnings)} warning(s), "
            f"{len(self.failed)} failed>"
        )


def plan_contexts(
    sop_classes: Sequence[str],
    *,
    reserved: int = 1,
    max_contexts: int = MAX_CONTEXTS,
    compressed: bool = True,
) -> list[tuple[str, list[str]]]:
    """Plan the presentation contexts for receiving the given SOP classes.

    The acceptor picks ONE transfer syntax per presentation context, so to receive an
    instance in the syntax it is stored in, each SOP class gets one context per transfer
    syntax: explicit VR little endian for every class, then implicit VR, then the compressed
    syntaxes (the most common first) and big endian, as far as the budget of
    ``max_contexts - reserved`` contexts allows.

    Parameters
    ----------
    sop_classes
        Storage SOP class UIDs (duplicates are ignored). At most ``max_contexts - reserved``.
    reserved
        Contexts kept for other services (the Q/R GET model).
    compressed
        Also propose the compressed transfer syntaxes.

    Returns
    -------
    list of (sop_class_uid, [transfer_syntax_uid, ...])

    Examples
    --------
    >>> plan = plan_contexts(["1.2.840.10008.5.1.4.1.1.2"])
    >>> len(plan), plan[0][1][0]
    (13, '1.2.840.10008.1.2.1')
    """
    classes = list(dict.fromkeys(str(c) for c in sop_classes if c))
    budget = max_contexts - reserved
    if len(classes) > budget:
        raise ValueError(
            f"{len(classes)} SOP classes do not fit in one association "
            f"({budget} presentation contexts); split them"
        )
    # explicit VR alone: an acceptor offered [explicit, implicit] in one context may pick
    # implicit and then convert every explicit instance (pynetdicom-based peers do)
    plan: list[tuple[str, list[str]]] = [(c, [str(ExplicitVRLittleEndian)]) for c in classes]
    if compressed:
        for ts in EXTRA_SYNTAXES:
            for c in classes:
                if len(plan) >= budget:
                    return plan
                plan.append((c, [str(ts)]))
    return plan


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def format_query_value(key: str, value: Any) -> Any:
    """Turn a Python query value into what goes into the identifier (C-FIND and QIDO-RS).

    Dates and times become DICOM text, a ``(low, high)`` pair of them a range, a list a
    backslash-separated multi-value, ``None`` an empty (return) key.
    """
    if value is None:
        return ""
    if isinstance(value, (_dt.date, _dt.datetime)):
        return _format_date(value, key)
    if isinstance(value, tuple) and len(value) == 2 and key.endswith(("Date", "Time", "DateTime")):
        lo, hi = value
        return f"{_format_date(lo, key)}-{_format_date(hi, key)}"
    if isinstance(value, (list, tuple, set)) and not isinstance(value, str):
        return "\\".join(str(v) for v in value)
    return value


def _format_date(value: Any, key: str) -> str:
    if value is None:
        return ""
    if isinstance(value, _dt.datetime):
        if key.endswith("DateTime"):
            return value.strftime("%Y%m%d%H%M%S")
        if key.endswith("Time"):
            return value.strftime("%H%M%S")
        return value.strftime("%Y%m%d")
    if isinstance(value, _dt.date):
        return value.strftime("%Y%m%d")
    if isinstance(value, _dt.time):
        return value.strftime("%H%M%S")
    return str(value).replace("-", "") if len(str(value)) == 10 else str(value)


def python_value(elem: Any) -> Any:
    """Return a found element's value as Python: ``None`` when empty, IS/DS as numbers."""
    value = elem.value
    if value is None or value == "":
        return None
    if isinstance(value, MultiValue):
        return tuple(str(v) if elem.VR in ("PN",) else _scalar(v, elem.VR) for v in value)
    return _scalar(value, elem.VR)


def _scalar(value: Any, vr: str) -> Any:
    if vr == "IS":
        with contextlib.suppress(TypeError, ValueError):
            return int(value)
    if vr == "DS":
        with contextlib.suppress(TypeError, ValueError):
            return float(value)
    if vr in ("US", "UL", "SS", "SL", "FL", "FD"):
        return value
    return str(value)


class _Cancelled(Exception):
    pass


def _unread_rejection(assoc: Any) -> Any:
    """Return an A-ASSOCIATE-RJ the peer sent but pynetdicom never read, or ``None``.

    A peer that rejects an association sends the A-ASSOCIATE-RJ and closes the connection
    at once. pynetdicom's reader thread queues the rejection, then sees the connection
    close; when the requesting thread checks the socket only after that (a loaded machine),
    it aborts the association without reading the queue, so ``assoc.is_rejected`` is
    ``False`` and the peer's answer looks like an abort. The rejection is still in the
    DUL's queue to the user: it is the peer's real answer.
    """
    queue = getattr(getattr(assoc, "dul", None), "to_user_queue", None)
    for primitive in list(getattr(queue, "queue", ())):
        if getattr(primitive, "result", None) in (1, 2):
            return primitive
    return None


class DicomClient:
    """A DICOM SCU for one peer, as a context manager that always releases or aborts.

    Parameters
    ----------
    host, port
        The peer (a PACS, Orthanc, dcmqrscp).
    called_ae
        The peer's AE title.
    calling_ae
        Our AE title (the peer may have to know it, for C-MOVE as a destination too).
    connection_timeout, acse_timeout, dimse_timeout, network_timeout
        Seconds to wait for the TCP connection, the association answer, each DIMSE response,
        and silence on an open association. All finite.
    retries, backoff
        Association attempts after the first one fails (connection refused, aborted,
        transient rejection), waiting ``backoff * 2**n`` seconds between them.
    parallel
        Associations used in parallel by :meth:`get` and :meth:`move` (the instances are split
        between them, at least one association per series; default 2). A PACS serves each
        association one instance at a time (read, send, wait for our response): two in
        parallel overlap the peer's work with ours. More only pay when the peer has cores
        to spare (``bench/pacs.py --parallel 1 2 4`` measures it).
    progress
        Show a tqdm progress bar for retrievals (None: in a terminal or a notebook).
    max_pdu
        Maximum PDU size we receive; 0 = unlimited (the peer sends as large as it can).
    fast_receive
        Receive C-GET sub-operations and C-FIND matches by reading the association's
        socket directly (``dicomxr.net._fastget``: no per-PDU state machine, command sets
        parsed by hand, data sets streamed to disk), about 3x less CPU per image than
        pynetdicom's generic path. False uses pynetdicom's own receive path throughout.

    Examples
    --------
    >>> with DicomClient("127.0.0.1", 11112, called_ae="PACS") as c:  # doctest: +SKIP
    ...     c.echo()
    ...     series = c.find("SERIES", StudyInstanceUID="1.2.3", Modality="CT")
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        called_ae: str = "ANY-SCP",
        calling_ae: str = "DICOMXR",
        connection_timeout: float = 10.0,
        acse_timeout: float = 30.0,
        dimse_timeout: float = 60.0,
        network_timeout: float = 60.0,
        retries: int = 2,
        backoff: float = 0.5,
        parallel: int | None = None,
        progress: bool | None = None,
        max_pdu: int = 0,
        fast_receive: bool = True,
    ) -> None:
        for name, value in (
            ("connection_timeout", connection_timeout),
            ("acse_timeout", acse_timeout),
            ("dimse_timeout", dimse_timeout),
            ("network_timeout", network_timeout),
        ):
            if value is None or not value > 0 or value == float("inf"):
                raise ValueError(f"{name} must be a finite number of seconds > 0, not {value!r}")
        self.host = host
        self.port = int(port)
        self.called_ae = called_ae
        self.calling_ae = calling_ae
        self.connection_timeout = float(connection_timeout)
        self.acse_timeout = float(acse_timeout)
        self.dimse_timeout = float(dimse_timeout)
        self.network_timeout = float(network_timeout)
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.parallel = max(1, int(parallel if parallel is not None else DEFAULT_PARALLEL))
        self.progress = progress
        self.max_pdu = int(max_pdu)
        self.fast_receive = bool(fast_receive)
        self._live: set[Any] = set()
        self._live_lock = threading.Lock()
        self._servers: list[Any] = []
        self._local = threading.local()

    # -- context manager ----------------------------------------------------------------
    def __enter__(self) -> DicomClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Abort every association still open and stop any storage SCP we started."""
        with self._live_lock:
            live = list(self._live)
            self._live.clear()
        for assoc in live:
            with contextlib.suppress(Exception):
                if assoc.is_established:
                    assoc.abort()
        for server in self._servers:
            with contextlib.suppress(Exception):
                server.shutdown()
        self._servers.clear()

    def __repr__(self) -> str:
        return (
            f"DicomClient({self.host!r}, {self.port}, called_ae={self.called_ae!r}, "
            f"calling_ae={self.calling_ae!r})"
        )

    # -- associations -------------------------------------------------------------------
    def _ae(self) -> FastAE:
        ae = FastAE(ae_title=self.calling_ae)
        ae.connection_timeout = self.connection_timeout
        ae.acse_timeout = self.acse_timeout
        ae.dimse_timeout = self.dimse_timeout
        ae.network_timeout = self.network_timeout
        ae.maximum_pdu_size = self.max_pdu
        return ae

    def _associate(
        self,
        contexts: Sequence[Any],
        *,
        ext_neg: Sequence[Any] | None = None,
        evt_handlers: Sequence[Any] | None = None,
        purpose: str = "",
    ) -> Any:
        """Open an association, retrying with backoff; raise a clear error on failure."""
        if len(contexts) > MAX_CONTEXTS:
            raise ValueError(f"{len(contexts)} presentation contexts > {MAX_CONTEXTS}")
        attempts = self.retries + 1
        last: Exception | None = None
        for attempt in range(attempts):
            if attempt:
                delay = self.backoff * 2 ** (attempt - 1)
                logger.info("association attempt %d/%d in %.2f s", attempt + 1, attempts, delay)
                time.sleep(delay)
            ae = self._ae()
            started = time.monotonic()
            seen: list[Any] = []

            def capture(event: Any, seen: list[Any] = seen) -> None:
                primitive = getattr(event, "primitive", None)
                if getattr(primitive, "result", None) is not None:
                    seen.append(primitive)

            assoc = ae.associate(
                self.host,
                self.port,
                contexts=list(contexts),
                ae_title=self.called_ae,
                max_pdu=self.max_pdu,
                ext_neg=list(ext_neg or []),
                evt_handlers=[*(evt_handlers or []), (evt.EVT_ACSE_RECV, capture)],
            )
            if assoc.is_established:
                _tune_reactor(assoc)
                _quiet_logging(assoc)
                with self._live_lock:
                    self._live.add(assoc)
                return assoc
            elapsed = time.monotonic() - started
            last = self._association_failure(assoc, elapsed, purpose, seen[-1] if seen else None)
            if isinstance(last, AssociationRejectedError) and last.result == 0x01:
                break  # permanent rejection: retrying cannot help
        assert last is not None
        raise last

    def _association_failure(
        self, assoc: Any, elapsed: float, purpose: str, primitive: Any
    ) -> Exception:
        where = f"{self.called_ae}@{self.host}:{self.port}"
        what = f" for {purpose}" if purpose else ""
        if primitive is None or getattr(primitive, "result", None) not in (1, 2):
            primitive = _unread_rejection(assoc) or primitive
        if assoc.is_rejected or getattr(primitive, "result", None) in (1, 2):
            result = source = reason = None
            if primitive is not None:
                result = primitive.result
                source = primitive.result_source
                reason = primitive.diagnostic
            hint = ""
            if source == 0x01 and reason == 0x07:
                hint = f" (called AE title {self.called_ae!r} not recognised: check called_ae)"
            elif source == 0x01 and reason == 0x03:
                hint = f" (calling AE title {self.calling_ae!r} not recognised by the peer)"
            elif result == 0x02:
                hint = " (the peer is busy or at its association limit)"
            text = {1: "permanently", 2: "transiently"}.get(result or 0, "")
            return AssociationRejectedError(
                f"{where} {text} rejected the association{what}: result={result}, "
                f"source={source}, reason={reason}{hint}",
                result=result,
                source=source,
                reason=reason,
            )
        # not rejected: find out whether anything listens there at all
        import socket

        try:
            with socket.create_connection((self.host, self.port), timeout=self.connection_timeout):
                listening = True
        except ConnectionRefusedError:
            return AssociationError(
                f"nothing is listening at {self.host}:{self.port}{what} (connection refused): "
                "is the server running, and is the port right?"
            )
        except TimeoutError:
            return NetTimeoutError(
                f"no TCP connection to {self.host}:{self.port}{what} within "
                f"{self.connection_timeout} s (firewall or wrong host?)"
            )
        except OSError as exc:
            return AssociationError(f"cannot reach {self.host}:{self.port}{what}: {exc}")
        if listening and elapsed >= self.acse_timeout * 0.9:
            return NetTimeoutError(
                f"{where} accepted the TCP connection but did not answer the association "
                f"request within acse_timeout={self.acse_timeout} s{what}"
            )
        return AssociationError(
            f"{where} aborted the association request{what} (is it a DICOM server? "
            "does it accept our calling AE title and these presentation contexts?)"
        )

    def _release(self, assoc: Any) -> None:
        with self._live_lock:
            self._live.discard(assoc)
        try:
            if assoc.is_established:
                assoc.release()
        except Exception:  # release failed: make sure the socket goes away anyway
            with contextlib.suppress(Exception):
                assoc.abort()

    @contextlib.contextmanager
    def _association(self, contexts: Sequence[Any], **kwargs: Any) -> Iterator[Any]:
        assoc = self._associate(contexts, **kwargs)
        try:
            yield assoc
        except BaseException:
            with self._live_lock:
                self._live.discard(assoc)
            with contextlib.suppress(Exception):
                assoc.abort()
            raise
        else:
            self._release(assoc)

    @contextlib.contextmanager
    def _find_session(self) -> Iterator[None]:
        """Let the C-FINDs of this thread share one association per model until the end.

        Planning a retrieval takes several queries (series, instances per series, SOP
        classes); each on its own association costs a connect, a negotiation and a
        release (~15 ms) for a ~5 ms query.
        """
        local = self._local
        if getattr(local, "finds", None) is not None:  # nested: the outer session owns them
            yield
            return
        local.finds = {}
        try:
            yield
        finally:
            finds, local.finds = local.finds, None
            for assoc in finds.values():
                self._release(assoc)

    @contextlib.contextmanager
    def _find_association(self, query_model: str) -> Iterator[Any]:
        finds = getattr(self._local, "finds", None)
        if finds is None:
            with self._association([build_context(query_model)], purpose="C-FIND") as assoc:
                yield assoc
            return
        assoc = finds.get(query_model)
        if assoc is None or not assoc.is_established:
            assoc = finds[query_model] = self._associate(
                [build_context(query_model)], purpose="C-FIND"
            )
        try:
            yield assoc
        except BaseException:
            finds.pop(query_model, None)
            with self._live_lock:
                self._live.discard(assoc)
            with contextlib.suppress(Exception):
                assoc.abort()
            raise

    # -- C-ECHO -------------------------------------------------------------------------
    def echo(self) -> float:
        """Send a C-ECHO; return the round trip time in seconds.

        Raises
        ------
        AssociationError, NetTimeoutError
            When the peer cannot be reached or does not answer.
        """
        started = time.monotonic()
        with self._association([build_context(sop_class.Verification)], purpose="C-ECHO") as a:
            status = a.send_c_echo()
            if "Status" not in status:
                raise NetTimeoutError(f"no C-ECHO response within {self.dimse_timeout} s")
            if status.Status != 0x0000:
                raise AssociationError(f"C-ECHO failed with status {_status_text(status.Status)}")
        return time.monotonic() - started

    # -- C-FIND -------------------------------------------------------------------------
    def find(
        self,
        level: str = "STUDY",
        *,
        model: str | None = None,
        return_keys: Iterable[str] = (),
        **keys: Any,
    ) -> pd.DataFrame:
        """Query the peer with C-FIND; one row per match.

        Parameters
        ----------
        level
            ``"PATIENT"``, ``"STUDY"``, ``"SERIES"`` or ``"IMAGE"`` (``"INSTANCE"`` too).
        model
            ``"study"`` (Study Root, default below PATIENT) or ``"patient"`` (Patient Root,
            default at PATIENT level).
        return_keys
            Extra attributes to return (keywords), on top of the level's defaults.
        **keys
            Matching keys by DICOM keyword. Strings may hold wildcards (``"DOE^*"``,
            ``"CT?"``); dates take ``"20240101-20241231"``, a ``(start, end)`` tuple of
            strings/``datetime.date`` (``None`` for an open end) or a ``datetime.date``;
            lists become UID lists.

        Returns
        -------
        pandas.DataFrame
            One column per requested key; values are str / int / float / tuple or None.

        Notes
        -----
        Strict hierarchical peers (DCMTK) need the higher-level unique keys below STUDY
        level; when they are not given, the query is run for each matching parent
        (studies, then series) and the results concatenated.
        """
        level = self._level(level)
        model = (model or ("patient" if level == "PATIENT" else "study")).lower()
        if model not in ("study", "patient"):
            raise ValueError("model must be 'study' or 'patient'")
        if model == "study" and level == "PATIENT":
            raise ValueError("the Study Root model has no PATIENT level: use model='patient'")
        wanted = list(dict.fromkeys([*DEFAULT_KEYS[level], *return_keys, *keys]))
        rows = self._find_hierarchical(level, model, keys, wanted)
        df = pd.DataFrame.from_records(rows, columns=wanted)
        unique = _UNIQUE[level]
        if len(df) and df[unique].notna().all() and not df[unique].is_unique:
            # some peers (pynetdicom's qrscp) answer once per instance at higher levels
            df = df.drop_duplicates(subset=[unique]).reset_index(drop=True)
        for col in df.columns:
            if col.startswith("NumberOf") or col in ("SeriesNumber", "InstanceNumber"):
                with contextlib.suppress(TypeError, ValueError):
                    df[col] = pd.array(
                        [None if v is None else int(v) for v in df[col]], dtype="Int64"
                    )
        df.attrs["level"] = level
        df.attrs["model"] = model
        return df

    @staticmethod
    def _level(level: str) -> str:
        level = level.upper()
        if level == "INSTANCE":
            level = "IMAGE"
        if level not in LEVELS:
            raise ValueError(f"level must be one of {LEVELS}, not {level!r}")
        return level

    def _find_hierarchical(
        self, level: str, model: str, keys: Mapping[str, Any], wanted: Sequence[str]
    ) -> list[dict[str, Any]]:
        chain = LEVELS[
            LEVELS.index("PATIENT" if model == "patient" else "STUDY") : LEVELS.index(level)
        ]
        # the nearest parent level whose unique key is missing is expanded first
        for parent in reversed(chain):
            uid_key = _UNIQUE[parent]
            if keys.get(uid_key) in (None, "", "*"):
                # only expand when some higher level is also unknown, or this parent is missing
                parent_keys = {
                    k: v
                    for k, v in keys.items()
                    if k in _keys_of_level(parent, model) or k in _keys_above(parent, model)
                }
                parents = self._find_hierarchical(
                    parent, model, parent_keys, [uid_key, *_higher_uids(parent, model)]
                )
                rows: list[dict[str, Any]] = []
                seen: set[str] = set()
                for p in parents:
                    value = p.get(uid_key)
                    if not value or value in seen:
                        continue
                    seen.add(value)
                    sub = dict(keys)
                    sub[uid_key] = value
                    for k in _higher_uids(parent, model):
                        if p.get(k):
                            sub[k] = p[k]
                    rows.extend(self._find_hierarchical(level, model, sub, wanted))
                return rows
        return self._find_once(level, model, keys, wanted)

    def _find_once(
        self, level: str, model: str, keys: Mapping[str, Any], wanted: Sequence[str]
    ) -> list[dict[str, Any]]:
        ident = Dataset()
        ident.QueryRetrieveLevel = level
        for key in wanted:
            if key not in keys:
                _set(ident, key, "")
        for key, value in keys.items():
            _set(ident, key, format_query_value(key, value))
        query_model = _MODELS[(model, "find")]
        rows: list[dict[str, Any]] = []
        with self._find_association(query_model) as assoc:
            if self.fast_receive and _fastget.can_take_over(assoc):
                return self._fast_find(assoc, ident, query_model, level, wanted)
            for status, identifier in assoc.send_c_find(ident, query_model):
                if "Status" not in status:
                    raise NetTimeoutError(
                        f"C-FIND: no response from {self.called_ae}@{self.host}:{self.port} "
                        f"within dimse_timeout={self.dimse_timeout} s (or the peer went away)"
                    )
                code = status.Status
                if code in (0xFF00, 0xFF01):
                    if identifier is not None:
                        rows.append(
                            {
                                k: python_value(identifier[k]) if k in identifier else None
                                for k in wanted
                            }
                        )
                elif code == 0x0000:
                    break
                else:
                    comment = status.get("ErrorComment", "")
                    raise QueryError(
                        f"C-FIND at {level} level failed: {_status_text(code)} {comment}".strip()
                    )
        return rows

    def _fast_find(
        self, assoc: Any, ident: Dataset, query_model: str, level: str, wanted: Sequence[str]
    ) -> list[dict[str, Any]]:
        """Send the C-FIND with pynetdicom, receive the matches on our own (``_fastget``).

        Each identifier is decoded by pydicom, but only the wanted keys are converted.
        """
        from io import BytesIO

        from pydicom.filereader import read_dataset

        cx = assoc._get_valid_context(query_model, "", "scu")
        syntax = cx.transfer_syntax[0]
        rows: list[dict[str, Any]] = []

        def on_match(data: bytes) -> None:
            if syntax.is_deflated:
                import zlib

                data = zlib.decompress(data, -zlib.MAX_WBITS)
            identifier = read_dataset(BytesIO(data), syntax.is_implicit_VR, syntax.is_little_endian)
            rows.append(
                {k: python_value(identifier[k]) if k in identifier else None for k in wanted}
            )

        _fastget.take_over(assoc)
        try:
            assoc.send_c_find(ident, query_model, msg_id=1)  # sent now, never iterated
            status = _fastget.receive_find(
                assoc, msg_id=1, context_id=cx.context_id, timeout=self.dimse_timeout,
                on_match=on_match,
            )  # fmt: skip
        except BaseException:
            with contextlib.suppress(Exception):
                assoc.abort()
            raise
        finally:
            _fastget.release_to_pynetdicom(assoc)
        code = int(status.Status)
        if code != 0x0000:
            comment = status.get("ErrorComment", "")
            raise QueryError(
                f"C-FIND at {level} level failed: {_status_text(code)} {comment}".strip()
            )
        return rows

    # -- planning -----------------------------------------------------------------------
    def _plan_instances(
        self,
        study: str | None,
        series: str | Sequence[str] | None,
        instances: Sequence[str] | None,
    ) -> pd.DataFrame:
        if not (study or series or instances):
            raise ValueError("give study=, series= or instances= (UIDs) to retrieve")
        keys: dict[str, Any] = {}
        if study:
            keys["StudyInstanceUID"] = study
        if series:
            keys["SeriesInstanceUID"] = [series] if isinstance(series, str) else list(series)
            if len(keys["SeriesInstanceUID"]) == 1:
                keys["SeriesInstanceUID"] = keys["SeriesInstanceUID"][0]
        if instances:
            keys["SOPInstanceUID"] = [instances] if isinstance(instances, str) else list(instances)
        # only the UIDs: asking for more (SOPClassUID) makes Orthanc open every file
        wanted = ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "PatientID"]
        series_keys = keys.get("SeriesInstanceUID")
        rows: list[dict[str, Any]] = []
        for one in series_keys if isinstance(series_keys, list) else [series_keys]:
            sub = dict(keys)
            if one is not None:
                sub["SeriesInstanceUID"] = one
            rows.extend(self._find_hierarchical("IMAGE", "study", sub, wanted))
        df = pd.DataFrame.from_records(rows, columns=wanted)
        if df.empty:
            what = ", ".join(f"{k}={v}" for k, v in keys.items())
            raise RetrieveError(
                f"no instance matches {what} on {self.called_ae}@{self.host}:{self.port}"
            )
        df = df.drop_duplicates("SOPInstanceUID").reset_index(drop=True)
        return df

    def _sop_classes(self, plan: pd.DataFrame) -> list[str]:
        """SOP classes to propose: SOPClassesInStudy, else an IMAGE-level C-FIND, else common."""
        found: list[str] = []
        for study in plan["StudyInstanceUID"].dropna().unique():
            with contextlib.suppress(QueryError):
                rows = self._find_once(
                    "STUDY", "study", {"StudyInstanceUID": study}, ["SOPClassesInStudy"]
                )
                for row in rows:
                    value = row.get("SOPClassesInStudy")
                    found.extend(value if isinstance(value, tuple) else [value] if value else [])
        if not found:
            for series in plan["SeriesInstanceUID"].dropna().unique():
                with contextlib.suppress(QueryError):
                    rows = self._find_once(
                        "IMAGE",
                        "study",
                        {
                            "StudyInstanceUID": plan.loc[
                                plan.SeriesInstanceUID == series, "StudyInstanceUID"
                            ].iloc[0],
                            "SeriesInstanceUID": series,
                        },
                        ["SOPClassUID"],
                    )
                    found.extend(r["SOPClassUID"] for r in rows if r.get("SOPClassUID"))
        if found:
            return list(dict.fromkeys(found))
        from pynetdicom.presentation import StoragePresentationContexts

        logger.warning(
            "the peer named no SOP classes (neither SOPClassesInStudy nor SOPClassUID at "
            "IMAGE level); proposing the %d most common storage classes",
            MAX_CONTEXTS - 1,
        )
        return [cx.abstract_syntax for cx in StoragePresentationContexts[: MAX_CONTEXTS - 1]]

    # -- C-GET / C-MOVE -----------------------------------------------------------------
    def get(
        self,
        dest: str | os.PathLike,
        *,
        study: str | None = None,
        series: str | Sequence[str] | None = None,
        instances: Sequence[str] | None = None,
        parallel: int | None = None,
        progress: bool | None = None,
        model: str = "study",
    ) -> RetrieveReport:
        """Retrieve instances with C-GET into ``dest/<Study>/<Series>/<SOPInstance>.dcm``.

        The instances are listed first (IMAGE-level C-FIND), those already on disk are
        skipped, and the rest are fetched over ``parallel`` associations whose presentation
        contexts are planned from the SOP classes actually present (uncompressed plus the
        compressed syntaxes, so instances arrive as stored) with SCP role selection.

        Parameters
        ----------
        dest
            Destination folder (created).
        study, series, instances
            What to fetch: a StudyInstanceUID, SeriesInstanceUID(s), SOPInstanceUIDs.
        parallel
            Number of associations (default: the client's ``parallel``).
        progress
            Show a progress bar (default: the client's ``progress``).
        model
            ``"study"`` (Study Root) or ``"patient"`` (Patient Root) retrieve model.

        Returns
        -------
        RetrieveReport

        Raises
        ------
        RetrieveError
            When instances are missing afterwards or sub-operations failed; ``err.report``
            tells which. Files on disk are complete; call again to resume.
        KeyboardInterrupt
            After sending C-CANCEL and waiting for the peer to stop; the folder keeps only
            complete files.
        """
        return self._retrieve(
            "get", dest, study, series, instances, parallel, progress, model, None
        )

    def move(
        self,
        dest: str | os.PathLike,
        *,
        study: str | None = None,
        series: str | Sequence[str] | None = None,
        instances: Sequence[str] | None = None,
        ae_title: str | None = None,
        port: int = 0,
        bind: str = "",
        parallel: int | None = None,
        progress: bool | None = None,
        model: str = "study",
    ) -> RetrieveReport:
        """Retrieve with C-MOVE to a storage SCP this call runs (on ``port``, 0 = ephemeral).

        The peer must know our storage SCP under ``ae_title`` (Orthanc: ``PUT
        /modalities/<id>``; DCMTK dcmqrscp: its HostTable) with the host and port it listens
        on; use a fixed ``port`` for a real PACS. Otherwise as :meth:`get`.

        Parameters
        ----------
        ae_title
            AE title of our storage SCP (the move destination); default the calling AE.
        port
            Port of our storage SCP; 0 picks a free one (only useful when the peer
            accepts any destination or is configured after the fact).
        bind
            Address our storage SCP listens on ("" = every interface).

        Raises
        ------
        MoveDestinationError
            The peer does not know ``ae_title`` (status 0xA801).
        """
        move_ae = ae_title or self.calling_ae
        return self._retrieve(
            "move", dest, study, series, instances, parallel, progress, model, (move_ae, port, bind)
        )

    def _retrieve(
        self,
        mode: str,
        dest: str | os.PathLike,
        study: str | None,
        series: str | Sequence[str] | None,
        instances: Sequence[str] | None,
        parallel: int | None,
        progress: bool | None,
        model: str,
        move: tuple[str, int, str] | None,
    ) -> RetrieveReport:
        if (model, mode) not in _MODELS:
            raise ValueError(f"model must be 'study' or 'patient', not {model!r}")
        started = time.monotonic()
        storage = DicomStorage(dest)
        with self._find_session():  # the planning queries share their association
            plan = self._plan_instances(study, series, instances)
            report = RetrieveReport(dest=storage.root, requested=list(plan["SOPInstanceUID"]))
            where: dict[str, tuple[str, str]] = {
                str(r.SOPInstanceUID): (r.StudyInstanceUID, r.SeriesInstanceUID)
                for r in plan.itertuples()
            }
            series_dirs = {
                storage.path_for(s, se, "x").parent
                for s, se in zip(plan.StudyInstanceUID, plan.SeriesInstanceUID, strict=True)
            }
            storage.clean_partial(series_dirs, older_than=STALE_PART)
            on_disk = [storage.exists(*where[u], u) for u in report.requested]
            report.skipped = [u for u, d in zip(report.requested, on_disk, strict=True) if d]
            todo = plan[[not d for d in on_disk]].reset_index(drop=True)
            if todo.empty:
                report.seconds = time.monotonic() - started
                logger.info("nothing to fetch: %s", report.summary())
                return report
            classes = self._sop_classes(todo)

        n_workers = max(1, min(parallel or self.parallel, len(todo)))
        groups = _split_work(todo, n_workers)
        bar = progress_bar(len(todo), progress if progress is not None else self.progress, mode)
        state = _RetrieveState(storage=storage, where=where, bar=bar)

        server = None
        if mode == "move":
            server = self._start_store_scp(move, classes, state)  # type: ignore[arg-type]
        threads = []
        errors: list[BaseException] = []
        queue = list(groups)  # largest first; list.pop(0) under the GIL is atomic
        for _ in range(min(n_workers, len(groups))):
            t = threading.Thread(
                target=self._work_queue,
                args=(mode, queue, classes, model, state, errors, move),
                name=f"dicomxr-{mode}",
                daemon=True,
            )
            threads.append(t)
        try:
            for t in threads:
                t.start()
            while any(t.is_alive() for t in threads):
                for t in threads:
                    t.join(0.05)
                state.refresh_bar()
        except KeyboardInterrupt:
            state.cancel.set()
            self._cancel_all(state)
            deadline = time.monotonic() + min(10.0, self.dimse_timeout)
            for t in threads:
                t.join(max(0.0, deadline - time.monotonic()))
            for assoc in list(state.assocs):
                with contextlib.suppress(Exception):
                    assoc.abort()
            for t in threads:
                t.join(5.0)
            if server is not None:
                with contextlib.suppress(Exception):
                    server.shutdown()
            storage.clean_partial(series_dirs, older_than=STALE_PART)
            _finish_report(report, storage, state, where, started)
            report.cancelled = True
            bar.close()
            logger.warning("retrieval cancelled (C-CANCEL sent): %s", report.summary())
            raise
        finally:
            if server is not None:
                # sub-operations of C-MOVE may still be writing when the C-MOVE answer arrives
                with contextlib.suppress(Exception):
                    server.shutdown()
                with contextlib.suppress(ValueError):
                    self._servers.remove(server)
            bar.close()

        storage.clean_partial(series_dirs, older_than=STALE_PART)
        _finish_report(report, storage, state, where, started)
        self._check_retrieved(mode, report, state, errors, move)
        logger.info("C-%s done: %s", mode.upper(), report.summary())
        return report

    def _check_retrieved(
        self,
        mode: str,
        report: RetrieveReport,
        state: _RetrieveState,
        errors: list[BaseException],
        move: tuple[str, int, str] | None,
    ) -> None:
        """Raise what went wrong in a finished retrieval (the report attached).

        An unknown move destination first, then missing instances or failed sub-operations.
        """
        if mode == "move" and not state.dest_unknown and state.refused:
            if state.scp_connections == 0 and not report.received:
                # Orthanc answers 0xC000 without a comment: say what it most likely means
                raise MoveDestinationError(
                    f"{self.called_ae}@{self.host}:{self.port} refused the C-MOVE before any "
                    f"sub-operation ({', '.join(dict.fromkeys(state.statuses))}) and never "
                    f"connected to our storage SCP: most likely it does not know the move "
                    f"destination {move[0]!r}. Register it with our host and port "  # type: ignore[index]
                    f"(Orthanc: PUT /modalities/<id> {{'AET': '{move[0]}', 'Host': ..., "  # type: ignore[index]
                    f"'Port': {state.scp_port}}}; DCMTK dcmqrscp: HostTable); the peer's "
                    "log has the exact reason",
                    report,
                )
        if state.dest_unknown:
            raise MoveDestinationError(
                f"{self.called_ae}@{self.host}:{self.port} does not know the move destination "
                f"{move[0]!r} (status 0xA801): register it with our host and port "  # type: ignore[index]
                f"(Orthanc: PUT /modalities/<id> {{'AET': '{move[0]}', 'Host': ..., 'Port': "  # type: ignore[index]
                f"{state.scp_port}}}; DCMTK dcmqrscp: HostTable)",
                report,
            )
        if errors or not report.ok:
            detail = "; ".join(dict.fromkeys(str(e) for e in errors))
            raise RetrieveError(
                f"C-{mode.upper()} from {self.called_ae}@{self.host}:{self.port} incomplete: "
                f"{report.summary()}"
                + (f" - {detail}" if detail else "")
                + ". Files on disk are complete: call again to resume.",
                report,
            )

    def _cancel_all(self, state: _RetrieveState) -> None:
        for assoc, (msg_id, cx_id) in list(state.requests.items()):
            with contextlib.suppress(Exception):
                if assoc.is_established:
                    assoc.send_c_cancel(msg_id, cx_id)
                    logger.info("sent C-CANCEL for message %d", msg_id)

    def _work_queue(
        self,
        mode: str,
        queue: list[pd.DataFrame],
        classes: list[str],
        model: str,
        state: _RetrieveState,
        errors: list[BaseException],
        move: tuple[str, int, str] | None,
    ) -> None:
        """Fetch groups from ``queue`` one after the other until it is empty or cancelled."""
        while not state.cancel.is_set():
            try:
                group = queue.pop(0)
            except IndexError:
                return
            self._worker(mode, group, classes, model, state, errors, move)

    def _worker(
        self,
        mode: str,
        group: pd.DataFrame,
        classes: list[str],
        model: str,
        state: _RetrieveState,
        errors: list[BaseException],
        move: tuple[str, int, str] | None,
    ) -> None:
        try:
            remaining = group
            attempt = 0
            while True:
                try:
                    outcome = self._transfer(mode, remaining, classes, model, state, move)
                    if self._list_refused(outcome, remaining, state):
                        self._series_fallback(mode, remaining, classes, model, state, move)
                    else:
                        self._record(state, outcome, mode)
                    return
                except (AssociationError, NetTimeoutError) as exc:
                    if state.cancel.is_set() or isinstance(exc, AssociationRejectedError):
                        raise
                    if not state.lost_peer.is_set() or attempt >= self.retries:
                        raise
                    # the peer went away mid-transfer: retry what is still missing
                    attempt += 1
                    state.lost_peer.clear()
                    remaining = remaining[
                        [
                            not state.storage.exists(*state.where[u], u)
                            for u in remaining.SOPInstanceUID
                        ]
                    ].reset_index(drop=True)
                    if remaining.empty:
                        return
                    time.sleep(self.backoff * 2 ** (attempt - 1))
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    @staticmethod
    def _list_refused(outcome: Any, group: pd.DataFrame, state: _RetrieveState) -> bool:
        """Return True when the peer failed a multi-UID request outright (no list support)."""
        if outcome is None or len(group) < 2:
            return False
        _key, _status, code, done = outcome
        if code == 0xA801 or code_to_category(code) != "Failure" or done:
            return False
        return not any(state.storage.exists(*state.where[u], u) for u in group.SOPInstanceUID)

    def _series_fallback(
        self,
        mode: str,
        group: pd.DataFrame,
        classes: list[str],
        model: str,
        state: _RetrieveState,
        move: tuple[str, int, str] | None,
    ) -> None:
        """Fetch the group's series whole (SERIES level), once per series across workers.

        Instances already on disk are not written again; other instances of the series
        that arrive are kept (they belong to the same series folder).
        """
        logger.info("the peer refused a list of SOPInstanceUIDs: retrieving whole series")
        for series, part in group.groupby("SeriesInstanceUID", sort=False):
            with state.series_lock(str(series)):
                if str(series) in state.series_done:
                    continue
                outcome = self._transfer(mode, part, classes, model, state, move, "SERIES")
                self._record(state, outcome, mode)
                state.series_done.add(str(series))

    def _transfer(
        self,
        mode: str,
        group: pd.DataFrame,
        classes: list[str],
        model: str,
        state: _RetrieveState,
        move: tuple[str, int, str] | None,
        level: str = "IMAGE",
    ) -> Any:
        """Run one C-GET/C-MOVE for ``group``; return its final response (or None)."""
        query_model = _MODELS[(model, mode)]
        contexts = [build_context(query_model)]
        ext_neg: list[Any] = []
        handlers: list[Any] = []
        if mode == "get":
            for cls, syntaxes in plan_contexts(classes, reserved=1):
                contexts.append(build_context(cls, syntaxes))
            ext_neg = [build_role(c, scp_role=True) for c in dict.fromkeys(classes)]
            handlers = [(evt.EVT_C_STORE, state.on_store)]
        ident = Dataset()
        ident.QueryRetrieveLevel = level
        if model == "patient":
            ident.PatientID = ""  # filled below when known
        studies = group.StudyInstanceUID.unique()
        series = group.SeriesInstanceUID.unique()
        if len(studies) == 1:
            ident.StudyInstanceUID = studies[0]
        if len(series) == 1:
            ident.SeriesInstanceUID = series[0]
        if level == "IMAGE":
            ident.SOPInstanceUID = list(group.SOPInstanceUID)
        if model == "patient" and "PatientID" in group:
            ids = group["PatientID"].dropna().unique()
            if len(ids) == 1:
                ident.PatientID = ids[0]
        msg_id = 1
        with self._association(
            contexts, ext_neg=ext_neg, evt_handlers=handlers, purpose=f"C-{mode.upper()}"
        ) as assoc:
            state.assocs.add(assoc)
            if mode == "get" and self.fast_receive and _fastget.can_take_over(assoc):
                try:
                    return self._fast_get(assoc, ident, query_model, msg_id, state)
                finally:
                    state.assocs.discard(assoc)
            try:
                if mode == "get":
                    responses = assoc.send_c_get(ident, query_model, msg_id=msg_id)
                else:
                    assert move is not None
                    responses = assoc.send_c_move(ident, move[0], query_model, msg_id=msg_id)
                cx = assoc._get_valid_context(query_model, "", "scu")
                state.requests[assoc] = (msg_id, cx.context_id)
                if state.cancel.is_set():
                    assoc.send_c_cancel(msg_id, cx.context_id)
                last = time.monotonic()
                counts_key = id(assoc)
                for status, _identifier in responses:
                    if "Status" not in status:
                        if assoc.is_aborted or not assoc.is_established:
                            if time.monotonic() - last >= self.dimse_timeout * 0.9:
                                raise NetTimeoutError(
                                    f"C-{mode.upper()}: no response within dimse_timeout="
                                    f"{self.dimse_timeout} s; association aborted"
                                )
                            state.lost_peer.set()
                            raise AssociationError(
                                f"C-{mode.upper()}: the peer closed the association mid-transfer"
                            )
                        raise NetTimeoutError(
                            f"C-{mode.upper()}: no response within dimse_timeout={self.dimse_timeout} s"
                        )
                    last = time.monotonic()
                    code = int(status.Status)
                    done = sum(
                        int(status.get(k, 0) or 0)
                        for k in (
                            "NumberOfCompletedSuboperations",
                            "NumberOfFailedSuboperations",
                            "NumberOfWarningSuboperations",
                        )
                    )
                    if code in (0xFF00, 0xFF01):
                        state.subop_done[counts_key] = done
                        continue
                    state.subop_done[counts_key] = done
                    return counts_key, status, code, done
            finally:
                state.assocs.discard(assoc)
                state.requests.pop(assoc, None)
        return None

    def _fast_get(
        self, assoc: Any, ident: Dataset, query_model: str, msg_id: int, state: _RetrieveState
    ) -> Any:
        """Send the C-GET with pynetdicom, then receive it on our own (``_fastget``)."""
        cx = assoc._get_valid_context(query_model, "", "scu")
        counts_key = id(assoc)
        _fastget.take_over(assoc)  # before the request: the DUL must not read the answer
        try:
            assoc.send_c_get(ident, query_model, msg_id=msg_id)  # sent now, never iterated
            status, code, done = _fastget.receive_get(
                assoc,
                msg_id=msg_id,
                get_context_id=cx.context_id,
                state=state,
                counts_key=counts_key,
                timeout=self.dimse_timeout,
                log=logger,
            )
        except BaseException:
            with contextlib.suppress(Exception):
                assoc.abort()
            raise
        finally:
            _fastget.release_to_pynetdicom(assoc)
        return counts_key, status, code, done

    @staticmethod
    def _record(state: _RetrieveState, outcome: Any, mode: str) -> None:
        """Book the final response of one C-GET/C-MOVE into the shared state."""
        if outcome is None:
            return
        key, status, code, done = outcome
        state.finish(key, status, code)
        if code == 0xA801:
            state.dest_unknown = True
        elif code_to_category(code) == "Failure" and done == 0:
            state.refused = True
        elif code not in (0x0000, 0xFE00) and not (0xB000 <= code <= 0xBFFF):
            comment = status.get("ErrorComment", "")
            state.errors.append(f"C-{mode.upper()} status {_status_text(code)} {comment}".strip())

    def _start_store_scp(
        self, move: tuple[str, int, str], classes: list[str], state: _RetrieveState
    ) -> Any:
        from pynetdicom import ALL_TRANSFER_SYNTAXES
        from pynetdicom.presentation import AllStoragePresentationContexts

        ae_title, port, bind = move
        ae = self._ae()
        ae.ae_title = ae_title
        # the acceptor takes the first of OUR syntaxes the peer proposes: explicit VR
        # little endian, then the compressed ones, then the rest
        syntaxes = list(
            dict.fromkeys([ExplicitVRLittleEndian, *EXTRA_SYNTAXES, *ALL_TRANSFER_SYNTAXES])
        )
        for cls in dict.fromkeys(
            [*classes, *(cx.abstract_syntax for cx in AllStoragePresentationContexts)]
        ):
            ae.add_supported_context(cls, syntaxes)
        ae.require_called_aet = False
        server = ae.start_server(
            (bind, int(port)),
            block=False,
            evt_handlers=[
                (evt.EVT_C_STORE, state.on_store),
                (evt.EVT_CONN_OPEN, state.on_connection),
            ],
        )
        state.scp_port = int(server.server_address[1])
        self._servers.append(server)
        logger.info("storage SCP %s listening on %s:%d", ae_title, bind or "*", state.scp_port)
        return server

    # -- C-STORE ------------------------------------------------------------------------
    def store(
        self,
        items: str | os.PathLike | Dataset | Iterable[str | os.PathLike | Dataset],
        *,
        progress: bool | None = None,
    ) -> StoreReport:
        """Send instances (paths, folders or datasets) to the peer with C-STORE.

        Returns
        -------
        StoreReport

        Raises
        ------
        StoreError
            When any instance was refused (the report is in ``err.report``).
        """
        entries = _store_entries(items)
        report = StoreReport()
        if not entries:
            return report
        # group by (sop class, transfer syntax): one presentation context each, <= 128 per association
        keys = list(dict.fromkeys((cls, ts) for _, cls, ts, _ in entries))
        bar = progress_bar(
            len(entries), progress if progress is not None else self.progress, "store"
        )
        try:
            for batch_keys in _chunks(keys, MAX_CONTEXTS // 2):
                wanted = set(batch_keys)
                # each instance in its own syntax (an acceptor picks ONE syntax per context,
                # so a context offering several could convert it); uncompressed ones also
                # get a fallback context the peer may prefer
                contexts = [build_context(cls, [ts]) for cls, ts in batch_keys]
                fallback = dict.fromkeys(cls for cls, ts in batch_keys if ts in UNCOMPRESSED)
                contexts += [
                    build_context(cls, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
                    for cls in fallback
                ]
                with self._association(contexts, purpose="C-STORE") as assoc:
                    for item, cls, ts, uid in entries:
                        if (cls, ts) not in wanted:
                            continue
                        label = str(item) if not isinstance(item, Dataset) else uid
                        try:
                            status = assoc.send_c_store(item)
                        except (ValueError, AttributeError) as exc:
                            report.failed.append((label, str(exc)))
                            bar.update(1)
                            continue
                        if "Status" not in status:
                            raise StoreError(
                                f"C-STORE of {label}: no response within {self.dimse_timeout} s "
                                "or the peer went away"
                            )
                        code = int(status.Status)
                        if code == 0x0000:
                            report.sent.append(label)
                        elif code_to_category(code) == "Warning":
                            report.sent.append(label)
                            report.warnings.append((label, _status_text(code)))
                        else:
                            report.failed.append((label, _status_text(code)))
                        bar.update(1)
        finally:
            bar.close()
        if report.failed:
            err = StoreError(
                f"C-STORE to {self.called_ae}@{self.host}:{self.port}: {len(report.failed)} of "
                f"{len(entries)} refused, first: {report.failed[0][0]}: {report.failed[0][1]}"
            )
            err.report = report  # type: ignore[attr-defined]
            raise err
        return report

    # -- into xarray --------------------------------------------------------------------
    def open(
        self,
        dest: str | os.PathLike,
        *,
        study: str | None = None,
        series: str | None = None,
        method: str = "get",
        fetch_kwargs: Mapping[str, Any] | None = None,
        **open_kwargs: Any,
    ) -> Any:
        """Fetch (resuming) and open: a series → ``DataArray``, a study → ``DataTree``.

        Parameters
        ----------
        dest
            Destination folder of the fetch.
        study, series
            What to fetch and open. With ``series`` the result is
            ``dicomxr.open_series(<series folder>)``, else ``dicomxr.open_study(<study folder>)``.
        method
            ``"get"`` or ``"move"``.
        fetch_kwargs
            Further arguments of :meth:`get` / :meth:`move` (``parallel``, ``ae_title``,
            ``port``, ...).
        **open_kwargs
            Passed to :func:`dicomxr.open_series` / :func:`dicomxr.open_study`.
        """
        from dicomxr.api import open_series, open_study
        from dicomxr.net.storage import safe_name

        if method not in ("get", "move"):
            raise ValueError(f"method must be 'get' or 'move', not {method!r}")
        if series is None and study is None:
            raise ValueError("give study= or series=")
        fetch = self.get if method == "get" else self.move
        report = fetch(dest, study=study, series=series, **dict(fetch_kwargs or {}))
        root = report.dest
        if series is None:
            return open_study(root / safe_name(study), **open_kwargs)
        folders = sorted(p for p in root.glob(f"*/{safe_name(series)}") if p.is_dir())
        if study is not None:
            folders = [f for f in folders if f.parent.name == safe_name(study)] or folders
        if not folders:
            raise RetrieveError(f"series {series} is not under {root} after the fetch", report)
        return open_series(folders[0], **open_kwargs)


def _quiet_logging(assoc: Any) -> None:
    """Unbind pynetdicom's per-PDU/per-message log handlers when nobody listens to them.

    They format a log line for every PDU and DIMSE message even when the log level drops it.
    """
    import logging as _logging

    if _logging.getLogger("pynetdicom").isEnabledFor(_logging.INFO):
        return
    from pynetdicom import _handlers

    for event, handler in (
        (evt.EVT_DIMSE_RECV, _handlers.standard_dimse_recv_handler),
        (evt.EVT_DIMSE_SENT, _handlers.standard_dimse_sent_handler),
        (evt.EVT_PDU_RECV, _handlers.standard_pdu_recv_handler),
        (evt.EVT_PDU_SENT, _handlers.standard_pdu_sent_handler),
    ):
        with contextlib.suppress(Exception):
            assoc.unbind(event, handler)


def _tune_reactor(assoc: Any) -> None:
    """Shorten the idle sleep of this association's DUL reactor (pynetdicom: 1 ms).

    Each image of a C-GET makes the reactor idle several times (waiting for the peer, then
    for our C-STORE response); at 1 ms (nearer 2 ms on a busy machine) per idle loop that
    alone caps a transfer near 100 images/s. The attribute is per association.
    """
    dul = getattr(assoc, "dul", None)
    if dul is not None and hasattr(dul, "_run_loop_delay"):
        dul._run_loop_delay = REACTOR_DELAY


def _set(ds: Dataset, key: str, value: Any) -> None:
    try:
        setattr(ds, key, value)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"bad value {value!r} for query key {key}: {exc}") from None
    if key not in ds:
        raise ValueError(f"{key!r} is not a DICOM keyword")


def _keys_of_level(level: str, model: str) -> set[str]:
    common = {
        "PATIENT": {
            "PatientID",
            "PatientName",
            "PatientBirthDate",
            "PatientSex",
            "IssuerOfPatientID",
        },
        "STUDY": {
            "StudyInstanceUID",
            "StudyDate",
            "StudyTime",
            "StudyDescription",
            "StudyID",
            "AccessionNumber",
            "ModalitiesInStudy",
            "ReferringPhysicianName",
        },
        "SERIES": {
            "SeriesInstanceUID",
            "Modality",
            "SeriesNumber",
            "SeriesDescription",
            "SeriesDate",
        },
    }
    keys = set(common.get(level, set()))
    if model == "study" and level == "STUDY":
        keys |= common["PATIENT"]
    return keys


def _keys_above(level: str, model: str) -> set[str]:
    out: set[str] = set()
    top = "PATIENT" if model == "patient" else "STUDY"
    for lv in LEVELS[LEVELS.index(top) : LEVELS.index(level)]:
        out |= _keys_of_level(lv, model)
    return out


def _higher_uids(level: str, model: str) -> list[str]:
    top = "PATIENT" if model == "patient" else "STUDY"
    return [_UNIQUE[lv] for lv in LEVELS[LEVELS.index(top) : LEVELS.index(level)]]


def _split_work(todo: pd.DataFrame, n: int) -> list[pd.DataFrame]:
    """Split the instances into groups of at most ``ceil(total / n)``, each within one series.

    Largest first: ``n`` workers taking the next group as they finish (longest processing
    time first) end close together, even when the series differ in size (140 + 60
    instances over 2 workers: 100 | 60 + 40, not 140 | 60).
    """
    total = len(todo)
    size = max(1, -(-total // max(1, n)))
    groups: list[pd.DataFrame] = []
    for _, g in todo.groupby("SeriesInstanceUID", sort=False):
        groups.extend(g.iloc[i : i + size] for i in range(0, len(g), size))
    groups.sort(key=len, reverse=True)
    return [g.reset_index(drop=True) for g in groups]


class _RetrieveState:
    """Shared between the worker threads of one retrieval."""

    def __init__(self, storage: DicomStorage, where: dict[str, tuple[str, str]], bar: Any) -> None:
        self.storage = storage
        self.where = where
        self.bar = bar
        self.cancel = threading.Event()
        self.lost_peer = threading.Event()
        self.assocs: set[Any] = set()
        self.requests: dict[Any, tuple[int, int]] = {}
        self.subop_done: dict[int, int] = {}
        self.final: dict[int, tuple[int, int, int]] = {}
        self.statuses: list[str] = []
        self.errors: list[str] = []
        self.unexpected: list[str] = []
        self.dest_unknown = False
        self.refused = False  # a failure status before any sub-operation
        self.scp_connections = 0
        self.series_done: set[str] = set()
        self._series_locks: dict[str, threading.Lock] = {}
        self.scp_port: int | None = None
        self.stored = 0
        self._lock = threading.Lock()

    def series_lock(self, series: str) -> threading.Lock:
        """One lock per series, for the SERIES-level fallback."""
        with self._lock:
            return self._series_locks.setdefault(series, threading.Lock())

    def on_connection(self, event: Any) -> None:
        """EVT_CONN_OPEN handler of the C-MOVE storage SCP: the peer did reach us.

        The accepted association gets the same treatment as ours (select-based ``ready``,
        no idle sleep, no per-PDU log formatting).
        """
        with self._lock:
            self.scp_connections += 1
        assoc = event.assoc
        with contextlib.suppress(Exception):
            from pynetdicom.transport import AssociationSocket

            from dicomxr.net._transport import FastSocket

            sock = assoc.dul.socket
            if type(sock) is AssociationSocket:
                sock.__class__ = FastSocket
            _tune_reactor(assoc)
            _quiet_logging(assoc)

    def on_store(self, event: Any) -> int:
        """EVT_C_STORE handler: write the dataset as received, atomically."""
        try:
            request = event.request
            source_ae = str(
                event.assoc.requestor.ae_title
                if event.assoc.is_acceptor
                else event.assoc.acceptor.ae_title
            )
            return self.store_instance(
                str(request.AffectedSOPClassUID),
                str(request.AffectedSOPInstanceUID or ""),
                str(event.context.transfer_syntax),
                source_ae,
                request.DataSet.getbuffer(),
            )
        except Exception as exc:
            logger.error("could not store an instance: %s", exc)
            return 0xA700

    def store_instance(
        self, sop_class: str, sop_uid: str, transfer_syntax: str, source_ae: str, data: Any
    ) -> int:
        """Write one received data set (encoded, as sent) with its file meta; return a status.

        An instance that was not requested is placed by the UIDs in its own header.
        """
        loc = self.where.get(sop_uid)
        if loc is None:
            from io import BytesIO

            from pydicom.filereader import read_dataset

            syntax = pydicom.uid.UID(transfer_syntax)
            raw = bytes(data)
            if syntax.is_deflated:
                import zlib

                raw = zlib.decompress(raw, -zlib.MAX_WBITS)
            ds = read_dataset(
                BytesIO(raw),
                syntax.is_implicit_VR,
                syntax.is_little_endian,
                stop_when=lambda tag, vr, length: tag > 0x0020000E,
            )
            loc = (ds.get("StudyInstanceUID"), ds.get("SeriesInstanceUID"))
            sop_uid = str(ds.get("SOPInstanceUID", sop_uid))
            with self._lock:
                self.unexpected.append(sop_uid)
        if self.storage.exists(*loc, sop_uid):
            return 0x0000  # resume: already complete on disk
        meta = file_meta_bytes(sop_class, sop_uid, transfer_syntax, source_ae)
        self.storage.write(*loc, sop_uid, (meta, data))
        self.count_stored()
        return 0x0000

    def count_stored(self) -> None:
        """Count one instance written by this retrieval."""
        with self._lock:
            self.stored += 1

    def finish(self, key: int, status: Dataset, code: int) -> None:
        with self._lock:
            self.final[key] = (
                int(status.get("NumberOfCompletedSuboperations", 0) or 0),
                int(status.get("NumberOfFailedSuboperations", 0) or 0),
                int(status.get("NumberOfWarningSuboperations", 0) or 0),
            )
            self.subop_done[key] = sum(self.final[key])
            self.statuses.append(_status_text(code))

    def refresh_bar(self) -> None:
        done = max(self.stored, sum(self.subop_done.values()))
        if done != self.bar.n:
            self.bar.n = min(done, self.bar.total or done)
            self.bar.refresh()


def _finish_report(
    report: RetrieveReport,
    storage: DicomStorage,
    state: _RetrieveState,
    where: dict[str, tuple[str, str]],
    started: float,
) -> None:
    state.refresh_bar()
    report.received = list(storage.written)
    report.completed = sum(v[0] for v in state.final.values())
    report.failed = sum(v[1] for v in state.final.values())
    report.warning = sum(v[2] for v in state.final.values())
    report.status = list(state.statuses) + list(state.errors)
    report.unexpected = list(state.unexpected)
    report.missing = [u for u in report.requested if not storage.exists(*where[u], u)]
    report.seconds = time.monotonic() - started


def _interactive() -> bool:
    """Return True in a terminal or a Jupyter kernel (stderr is no TTY there, a bar helps)."""
    import sys

    with contextlib.suppress(Exception):
        if sys.stderr is not None and sys.stderr.isatty():
            return True
    shell = sys.modules.get("IPython")
    if shell is not None:
        with contextlib.suppress(Exception):
            ip = shell.get_ipython()
            return ip is not None and hasattr(ip, "kernel")
    return False


def progress_bar(total: int, show: bool | None, what: str) -> Any:
    """Return a tqdm bar counting instances (shown in notebooks by default)."""
    from tqdm.auto import tqdm

    show = _interactive() if show is None else show
    label = what.upper() if what.upper().startswith("WADO") else f"C-{what.upper()}"
    return tqdm(total=total, unit="img", desc=label, disable=not show, leave=False)


def _store_entries(
    items: str | os.PathLike | Dataset | Iterable[str | os.PathLike | Dataset],
) -> list[tuple[Any, str, str, str]]:
    """(item, sop class, transfer syntax, sop instance uid) for each thing to send."""
    if isinstance(items, (str, os.PathLike, Dataset)):
        items = [items]
    out: list[tuple[Any, str, str, str]] = []
    for item in items:
        if isinstance(item, Dataset):
            ts = getattr(getattr(item, "file_meta", None), "TransferSyntaxUID", None)
            if ts is None:
                ts = ExplicitVRLittleEndian
                item.file_meta = (
                    getattr(item, "file_meta", None) or pydicom.dataset.FileMetaDataset()
                )
                item.file_meta.TransferSyntaxUID = ts
            out.append((item, str(item.SOPClassUID), str(ts), str(item.SOPInstanceUID)))
            continue
        path = Path(item)
        paths = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for p in paths:
            try:
                ds = pydicom.dcmread(p, stop_before_pixels=True)
                ts = ds.file_meta.TransferSyntaxUID
                out.append((str(p), str(ds.SOPClassUID), str(ts), str(ds.SOPInstanceUID)))
            except Exception as exc:
                if path.is_dir():
                    logger.info("not sending %s: %s", p, exc)
                    continue
                raise StoreError(f"cannot send {p}: not a readable DICOM file ({exc})") from exc
    return out
