"""DICOMweb (QIDO-RS, WADO-RS, STOW-RS) through dicomweb-client, into the same layout.

:class:`DicomWebClient` searches into DataFrames shaped like :meth:`DicomClient.find`'s,
retrieves into ``dest/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm`` (atomic, resumable,
sanitised, in the transfer syntax the server stores) and opens the result with
:func:`dicomxr.open_series` / :func:`dicomxr.open_study`. Timeouts and authentication go
straight to ``dicomweb_client.DICOMwebClient`` / ``requests``.

Examples
--------
>>> from dicomxr.net import DicomWebClient
>>> web = DicomWebClient("http://127.0.0.1:8042/dicom-web", timeout=(5, 60))  # doctest: +SKIP
>>> studies = web.search("STUDY", PatientID="PLASTIC")  # doctest: +SKIP
>>> da = web.open("fetched/", study=studies.StudyInstanceUID[0], series=...)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pydicom
from pydicom.dataset import Dataset

from dicomxr.errors import require
from dicomxr.net.client import DEFAULT_KEYS, format_query_value, progress_bar, python_value
from dicomxr.net.errors import NetError, NetTimeoutError, QueryError, RetrieveError, StoreError
from dicomxr.net.storage import STALE_PART, DicomStorage, RetrieveReport

logger = logging.getLogger(__name__)

__all__ = ["DicomWebClient"]

# ask for instances exactly as stored (no transcoding by the server)
AS_STORED = (("application/dicom", "*"),)


def _multipart_parts(content_type: str, body: bytes) -> list[bytes]:
    """Split a ``multipart/related`` body into the bytes of its parts."""
    boundary = None
    for param in content_type.split(";")[1:]:
        key, _, value = param.strip().partition("=")
        if key.lower() == "boundary":
            boundary = value.strip().strip('"')
    if not boundary:
        raise RetrieveError(f"WADO-RS answer is not multipart (Content-Type {content_type!r})")
    delimiter = b"--" + boundary.encode("ascii")
    parts = []
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        _headers, sep, content = chunk.partition(b"\r\n\r\n")
        if not sep:
            continue
        if content.endswith(b"\r\n"):
            content = content[:-2]
        parts.append(content)
    return parts


def _boundary(content_type: str) -> bytes:
    for param in content_type.split(";")[1:]:
        key, _, value = param.strip().partition("=")
        if key.lower() == "boundary":
            return value.strip().strip('"').encode("ascii")
    raise RetrieveError(f"WADO-RS answer is not multipart (Content-Type {content_type!r})")


def _iter_multipart(content_type: str, response: Any, chunk: int = 1 << 20) -> Any:
    """Yield the bytes of each part of a streamed ``multipart/related`` answer."""
    boundary = _boundary(content_type)
    opening = b"--" + boundary
    delimiter = b"\r\n--" + boundary
    buf = bytearray()
    started = False
    for data in response.iter_content(chunk_size=chunk):
        buf += data
        while True:
            if not started:
                at = buf.find(opening)
                if at < 0:
                    break
                del buf[: at + len(opening)]
                started = True
                continue
            if buf[:2] == b"--":
                return
            at = buf.find(delimiter, 2)
            if at < 0:
                break
            part = bytes(buf[:at])
            del buf[: at + len(delimiter)]
            _headers, _, content = part.partition(b"\r\n\r\n")
            yield content
    if started and buf.strip() not in (b"", b"--", b"--\r\n"):
        raise RetrieveError("WADO-RS answer ended in the middle of a part (connection lost?)")


def _sop_instance_uid(part: bytes) -> str:
    import io as _io

    ds = pydicom.dcmread(
        _io.BytesIO(part), stop_before_pixels=True, specific_tags=["SOPInstanceUID"]
    )
    return str(ds.SOPInstanceUID)


def _get_checked(session: Any, url: str, headers: dict[str, str], timeout: Any) -> Any:
    response = session.get(url, headers=headers, timeout=timeout)
    response.raise_for_status()
    return response


def _wado_jobs(
    plan: list[dict[str, Any]], todo: list[dict[str, Any]], whole_series: bool
) -> list[tuple[str, Any]]:
    """Group the missing instances into jobs: a series missing whole is one streamed request.

    Otherwise (or when instances were picked, ``whole_series`` False) one job per instance.
    """
    counts: dict[str, int] = {}
    for r in plan:
        counts[r["SeriesInstanceUID"]] = counts.get(r["SeriesInstanceUID"], 0) + 1
    missing: dict[str, list[dict[str, Any]]] = {}
    for r in todo:
        missing.setdefault(r["SeriesInstanceUID"], []).append(r)
    jobs: list[tuple[str, Any]] = []
    for series_uid, rows in missing.items():
        if len(rows) == counts[series_uid] and whole_series and len(rows) > 1:
            jobs.append(("series", rows))
        else:
            jobs.extend(("instance", r) for r in rows)
    return jobs


class DicomWebClient:
    """A DICOMweb client (QIDO-RS search, WADO-RS retrieve, STOW-RS store).

    Parameters
    ----------
    url
        Service root, for example ``"http://127.0.0.1:8042/dicom-web"``.
    timeout
        Seconds, or ``(connect, read)`` seconds, for every HTTP request (finite).
    auth
        A ``requests`` auth object, or ``(username, password)`` for HTTP basic auth.
    headers
        Extra HTTP headers (for example ``{"Authorization": "Bearer ..."}``).
    parallel
        HTTP connections used in parallel by :meth:`retrieve`.
    progress
        Show a tqdm progress bar for retrievals (None: only in a terminal/notebook).
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float | tuple[float, float] = (10.0, 60.0),
        auth: Any = None,
        headers: dict[str, str] | None = None,
        parallel: int = 4,
        progress: bool | None = None,
    ) -> None:
        require("dicomweb_client", extra="dicomweb", purpose="DICOMweb access")
        values = timeout if isinstance(timeout, tuple) else (timeout,)
        if not values or any(v is None or not 0 < v < float("inf") for v in values):
            raise ValueError(f"timeout must be finite seconds > 0, not {timeout!r}")
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.auth = auth
        self.headers = dict(headers or {})
        self.parallel = max(1, int(parallel))
        self.progress = progress
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"DicomWebClient({self.url!r})"

    def __enter__(self) -> DicomWebClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close this thread's HTTP session (ours; dicomweb-client was handed it)."""
        session = getattr(self._local, "session", None)
        self._local.client = None
        self._local.session = None
        if session is not None:
            with contextlib.suppress(Exception):
                session.close()

    # -- plumbing -----------------------------------------------------------------------
    def _session(self) -> Any:
        """Return this thread's ``requests.Session``, made (with its client) on first use.

        The session is ours: we make it, hand it to dicomweb-client's session-based
        constructor, use it for the requests we send ourselves and close it in
        :meth:`close`, without reaching into the client's private attributes.
        """
        self._client()
        return self._local.session

    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            import requests
            from dicomweb_client.api import DICOMwebClient

            session = requests.Session()
            self._local.session = session
            # pixel data barely compresses: gzip only costs CPU on both ends
            session.headers["Accept-Encoding"] = "identity"
            if isinstance(self.auth, tuple):
                session.auth = requests.auth.HTTPBasicAuth(*self.auth)
            elif self.auth is not None:
                session.auth = self.auth
            client = DICOMwebClient(
                self.url, session=session, headers=self.headers or None, timeout=self.timeout
            )
            self._local.client = client
        return client

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        import requests

        try:
            return fn(*args, **kwargs)
        except requests.exceptions.Timeout as exc:
            raise NetTimeoutError(
                f"{what}: no answer from {self.url} within {self.timeout} s"
            ) from exc
        except requests.exceptions.ConnectionError as exc:
            raise NetError(f"{what}: cannot connect to {self.url}: {exc}") from exc
        except requests.exceptions.HTTPError as exc:
            status = getattr(exc.response, "status_code", "?")
            body = getattr(exc.response, "text", "")[:300]
            raise NetError(f"{what}: HTTP {status} from {self.url}: {body}") from exc

    # -- QIDO-RS ------------------------------------------------------------------------
    def search(
        self,
        level: str = "STUDY",
        *,
        study: str | None = None,
        series: str | None = None,
        return_keys: Iterable[str] = (),
        limit: int | None = None,
        fuzzy: bool | None = None,
        **keys: Any,
    ) -> pd.DataFrame:
        """QIDO-RS search; one row per match, columns as :meth:`DicomClient.find`.

        Parameters
        ----------
        level
            ``"STUDY"``, ``"SERIES"`` or ``"IMAGE"`` (``"INSTANCE"``).
        study, series
            Restrict to one study / series (path components of the QIDO URL).
        return_keys
            Extra attributes (keywords) to include.
        limit
            At most this many results (all when None).
        fuzzy
            Ask for fuzzy person-name matching.
        **keys
            Matching keys by keyword; wildcards and date ranges (``(start, end)``) as in
            :meth:`DicomClient.find`.
        """
        level = level.upper().replace("INSTANCE", "IMAGE")
        if level not in ("STUDY", "SERIES", "IMAGE"):
            raise ValueError("QIDO-RS levels are 'STUDY', 'SERIES' and 'IMAGE'")
        wanted = list(dict.fromkeys([*DEFAULT_KEYS[level], *return_keys, *keys]))
        filters = {k: format_query_value(k, v) for k, v in keys.items()}
        path = {"STUDY": "/studies", "SERIES": "/series", "IMAGE": "/instances"}[level]
        if series and level == "IMAGE":
            if not study:
                raise ValueError("series= needs study= too (QIDO-RS path)")
            path = f"/studies/{study}/series/{series}/instances"
        elif study and level != "STUDY":
            path = f"/studies/{study}{path}"
        elif study:
            filters["StudyInstanceUID"] = study
        found = self._qido(path, wanted, filters, limit=limit, fuzzy=fuzzy)
        rows = []
        for item in found:
            try:
                ds = Dataset.from_json(item)
            except Exception as exc:
                raise QueryError(f"QIDO-RS returned an unreadable result: {exc}") from exc
            rows.append({k: python_value(ds[k]) if k in ds else None for k in wanted})
        df = pd.DataFrame.from_records(rows, columns=wanted)
        for col in df.columns:
            if col.startswith("NumberOf") or col in ("SeriesNumber", "InstanceNumber"):
                with contextlib.suppress(TypeError, ValueError):
                    df[col] = pd.array(
                        [None if v is None else int(v) for v in df[col]], dtype="Int64"
                    )
        df.attrs["level"] = level
        return df

    find = search

    def _qido(
        self,
        path: str,
        fields: Sequence[str],
        filters: dict[str, Any],
        *,
        limit: int | None,
        fuzzy: bool | None,
    ) -> list[dict[str, Any]]:
        """Run a QIDO-RS query through the dicomweb-client session.

        The query string keeps ``*`` and ``?`` literal: dicomweb-client (through
        ``requests``) percent-encodes them, which Orthanc's plugin does not decode, so
        wildcard matching silently returned nothing.
        """
        from urllib.parse import quote, urlencode

        params: list[tuple[str, str]] = [(k, str(v)) for k, v in filters.items() if v != ""]
        params += [("includefield", f) for f in fields]
        if fuzzy is not None:
            params.append(("fuzzymatching", "true" if fuzzy else "false"))
        session = self._session()
        results: list[dict[str, Any]] = []
        offset = 0
        while True:
            page = list(params)
            if limit is not None:
                page.append(("limit", str(limit - len(results))))
            if offset:
                page.append(("offset", str(offset)))
            query = urlencode(page, safe="*?,", quote_via=quote)
            response = self._call(
                "QIDO-RS",
                _get_checked,
                session,
                f"{self.url}{path}?{query}",
                {"Accept": "application/dicom+json, application/json"},
                self.timeout,
            )
            items = response.json() if response.content else []
            results.extend(items)
            more = "299" in response.headers.get("Warning", "")  # server capped the results
            if not items or not more or (limit is not None and len(results) >= limit):
                return results
            offset = len(results)

    # -- WADO-RS ------------------------------------------------------------------------
    def retrieve(
        self,
        dest: str | os.PathLike,
        *,
        study: str,
        series: str | Sequence[str] | None = None,
        instances: Sequence[str] | None = None,
        parallel: int | None = None,
        progress: bool | None = None,
    ) -> RetrieveReport:
        """WADO-RS retrieve into ``dest/<Study>/<Series>/<SOPInstance>.dcm`` (resumable).

        Instances are listed with QIDO-RS first; those already on disk are skipped; the rest
        are fetched as stored (``transfer-syntax=*``) over ``parallel`` connections.

        Raises
        ------
        RetrieveError
            When instances are missing afterwards; ``err.report`` tells which.
        """
        started = time.monotonic()
        storage = DicomStorage(dest)
        plan = self._instance_plan(study, series, instances)
        report = RetrieveReport(dest=storage.root, requested=[r["SOPInstanceUID"] for r in plan])
        folders = {
            storage.path_for(r["StudyInstanceUID"], r["SeriesInstanceUID"], "x").parent
            for r in plan
        }
        storage.clean_partial(folders, older_than=STALE_PART)
        todo = []
        for r in plan:
            if storage.exists(r["StudyInstanceUID"], r["SeriesInstanceUID"], r["SOPInstanceUID"]):
                report.skipped.append(r["SOPInstanceUID"])
            else:
                todo.append(r)
        errors: list[str] = []
        if todo:
            jobs = _wado_jobs(plan, todo, whole_series=instances is None)
            errors = self._fetch(jobs, todo, storage, parallel, progress)
        storage.clean_partial(folders, older_than=STALE_PART)
        report.received = list(storage.written)
        report.missing = [
            r["SOPInstanceUID"]
            for r in plan
            if not storage.exists(
                r["StudyInstanceUID"], r["SeriesInstanceUID"], r["SOPInstanceUID"]
            )
        ]
        report.status = list(dict.fromkeys(errors))
        report.seconds = time.monotonic() - started
        if report.missing or errors:
            raise RetrieveError(
                f"WADO-RS from {self.url} incomplete: {report.summary()}"
                + (f" - {errors[0]}" if errors else "")
                + ". Files on disk are complete: call again to resume.",
                report,
            )
        return report

    def _instance_plan(
        self, study: str, series: str | Sequence[str] | None, instances: Sequence[str] | None
    ) -> list[dict[str, Any]]:
        """List the instances to retrieve with QIDO-RS (UIDs only, each instance once)."""
        series_list = [series] if isinstance(series, str) else list(series or [None])
        plan_rows: list[dict[str, Any]] = []
        uid_keys = ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"]
        for s in series_list:
            # UIDs only: other fields can make the server open every file (Orthanc does)
            path = f"/studies/{study}/series/{s}/instances" if s else f"/studies/{study}/instances"
            for item in self._qido(path, uid_keys, {}, limit=None, fuzzy=None):
                ds = Dataset.from_json(item)
                plan_rows.append({k: str(ds[k].value) if k in ds else None for k in uid_keys})
        if instances is not None:
            keep = set(instances)
            plan_rows = [r for r in plan_rows if r["SOPInstanceUID"] in keep]
        if not plan_rows:
            raise RetrieveError(f"no instance matches study={study} series={series} at {self.url}")
        seen: set[str] = set()
        plan = []
        for r in plan_rows:
            if r["SOPInstanceUID"] not in seen:
                seen.add(r["SOPInstanceUID"])
                r["StudyInstanceUID"] = r.get("StudyInstanceUID") or study
                plan.append(r)
        return plan

    def _fetch(
        self,
        jobs: list[tuple[str, Any]],
        todo: list[dict[str, Any]],
        storage: DicomStorage,
        parallel: int | None,
        progress: bool | None,
    ) -> list[str]:
        """Run the WADO-RS jobs over ``parallel`` connections; return the errors met."""
        n = max(1, min(parallel or self.parallel, len(jobs)))
        queues = [jobs[i::n] for i in range(n)]
        bar = progress_bar(
            len(todo), progress if progress is not None else self.progress, "wado-rs"
        )
        lock = threading.Lock()
        wanted = {r["SOPInstanceUID"]: r for r in todo}
        errors: list[str] = []

        def tick() -> None:
            with lock:
                bar.update(1)

        def work(queue: list[tuple[str, Any]]) -> None:
            session = self._session()
            try:
                for kind, job in queue:
                    self._run_job(session, kind, job, storage, wanted, tick)
            except Exception as exc:
                with lock:
                    errors.append(str(exc))
            finally:
                self.close()

        threads = [threading.Thread(target=work, args=(q,), daemon=True) for q in queues]
        try:
            for t in threads:
                t.start()
            while any(t.is_alive() for t in threads):
                for t in threads:
                    t.join(0.05)
        finally:
            bar.close()
        return errors

    def _run_job(
        self,
        session: Any,
        kind: str,
        job: Any,
        storage: DicomStorage,
        wanted: dict[str, dict[str, Any]],
        tick: Callable[[], None],
    ) -> None:
        """Fetch one job: a whole series in one streamed request, or one instance."""
        if kind == "series":
            self._call("WADO-RS", self._stream_series, session, job, storage, wanted, tick)
            return
        study, series, sop = (
            job["StudyInstanceUID"],
            job["SeriesInstanceUID"],
            job["SOPInstanceUID"],
        )
        data = self._call("WADO-RS", self._instance_bytes, session, study, series, sop)
        storage.write(study, series, sop, data)
        tick()

    get = retrieve

    def _stream_series(
        self,
        session: Any,
        rows: list[dict[str, Any]],
        storage: DicomStorage,
        wanted: dict[str, dict[str, Any]],
        tick: Any,
    ) -> None:
        """GET a whole series as stored and write each part as it arrives."""
        from urllib.parse import quote

        study, series = rows[0]["StudyInstanceUID"], rows[0]["SeriesInstanceUID"]
        url = f"{self.url}/studies/{quote(study, safe='')}/series/{quote(series, safe='')}"
        with session.get(
            url,
            headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
            timeout=self.timeout,
            stream=True,
        ) as response:
            response.raise_for_status()
            for part in _iter_multipart(response.headers.get("Content-Type", ""), response):
                uid = _sop_instance_uid(part)
                row = wanted.get(uid)
                if row is None:  # not asked for (appeared since the search): keep it anyway
                    row = {"StudyInstanceUID": study, "SeriesInstanceUID": series}
                storage.write(row["StudyInstanceUID"], row["SeriesInstanceUID"], uid, part)
                tick()

    def _instance_bytes(self, session: Any, study: str, series: str, sop: str) -> bytes:
        """GET one instance as stored and return its Part-10 bytes, untouched.

        dicomweb-client's ``retrieve_instance`` parses every instance into a pydicom
        Dataset, which would then have to be encoded again; here the multipart body is
        split and the bytes written as the server sent them (its session, auth, headers
        and timeout are reused).
        """
        from urllib.parse import quote

        url = (
            f"{self.url}/studies/{quote(study, safe='')}/series/{quote(series, safe='')}"
            f"/instances/{quote(sop, safe='')}"
        )
        response = session.get(
            url,
            headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
            timeout=self.timeout,
        )
        response.raise_for_status()
        parts = _multipart_parts(response.headers.get("Content-Type", ""), response.content)
        if len(parts) != 1 or parts[0][128:132] != b"DICM":
            raise RetrieveError(
                f"WADO-RS: {url} returned {len(parts)} part(s), expected one DICOM file"
            )
        return parts[0]

    def open(
        self,
        dest: str | os.PathLike,
        *,
        study: str,
        series: str | None = None,
        **open_kwargs: Any,
    ) -> Any:
        """Retrieve (resuming) and open: a series → ``DataArray``, a study → ``DataTree``."""
        from dicomxr.api import open_series, open_study
        from dicomxr.net.storage import safe_name

        report = self.retrieve(dest, study=study, series=series)
        study_dir = report.dest / safe_name(study)
        if series is not None:
            return open_series(study_dir / safe_name(series), **open_kwargs)
        return open_study(study_dir, **open_kwargs)

    # -- STOW-RS ------------------------------------------------------------------------
    def store(
        self,
        items: str | os.PathLike | Dataset | Iterable[str | os.PathLike | Dataset],
        *,
        batch: int = 50,
    ) -> list[str]:
        """STOW-RS upload of paths, folders or datasets; return the stored SOPInstanceUIDs.

        Raises
        ------
        StoreError
            When the server reports failed instances (FailedSOPSequence).
        """
        if isinstance(items, (str, os.PathLike, Dataset)):
            items = [items]
        datasets: list[Dataset] = []
        for item in items:
            if isinstance(item, Dataset):
                datasets.append(item)
                continue
            path = Path(item)
            paths = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
            for p in paths:
                try:
                    datasets.append(pydicom.dcmread(p))
                except Exception as exc:
                    if path.is_dir():
                        logger.info("not sending %s: %s", p, exc)
                        continue
                    raise StoreError(f"cannot send {p}: not a readable DICOM file ({exc})") from exc
        stored: list[str] = []
        client = self._client()
        for start in range(0, len(datasets), batch):
            chunk = datasets[start : start + batch]
            by_study: dict[str, list[Dataset]] = {}
            for ds in chunk:
                by_study.setdefault(str(ds.StudyInstanceUID), []).append(ds)
            for study_uid, group in by_study.items():
                answer = self._call(
                    "STOW-RS", client.store_instances, group, study_instance_uid=study_uid
                )
                failed = answer.get("FailedSOPSequence", []) if answer is not None else []
                if failed:
                    reasons = [
                        f"{f.get('ReferencedSOPInstanceUID', '?')}: {f.get('FailureReason', '?')}"
                        for f in failed
                    ]
                    raise StoreError(f"STOW-RS refused {len(failed)} instance(s): {reasons[:3]}")
                stored.extend(str(ds.SOPInstanceUID) for ds in group)
        return stored
