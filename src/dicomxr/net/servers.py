"""Throwaway DICOM servers on loopback, for tutorials, tests and benchmarks.

Each server runs as a child process on ``127.0.0.1`` with a free port, keeps its
configuration and storage in a temporary folder, and is stopped (and the folder removed)
when the ``with`` block ends, even after an error::

    from dicomxr.net.servers import OrthancServer

    with OrthancServer() as pacs:
        pacs.seed("/path/to/series")
        with dicomxr.net.DicomClient(pacs.host, pacs.port, called_ae=pacs.ae_title) as c:
            c.find("STUDY")

Three peers are provided:

- :class:`OrthancServer` - Debian's ``/usr/sbin/Orthanc`` with the DICOMweb plugin
  (``orthanc-dicomweb``); C-FIND/C-GET/C-MOVE allowed, move destinations registered through
  its REST API (:meth:`OrthancServer.add_modality`).
- :class:`DcmqrscpServer` - DCMTK's ``dcmqrscp`` with move destinations in its HostTable
  (fixed when it starts).
- :class:`QRSCPServer` - pynetdicom's ``qrscp`` application (needs SQLAlchemy).

Every process is started with ``TCP_NODELAY=1`` in its environment: Debian's DCMTK and
Orthanc builds leave Nagle's algorithm on unless told otherwise, which caps a transfer at
~20 images/s on loopback.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from dicomxr.net.errors import ServerError

logger = logging.getLogger(__name__)

__all__ = [
    "DcmqrscpServer",
    "DicomServer",
    "OrthancServer",
    "QRSCPServer",
    "dcmtk_tool",
    "free_port",
    "orthanc_dicomweb_plugin",
]

ORTHANC = "/usr/sbin/Orthanc"
DCMTK_BIN = "/usr/bin"


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on ``host`` right now.

    The port is only reserved while this function runs; bind it soon.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _which(name: str, *candidates: str) -> str:
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(name)
    if not found:
        raise ServerError(
            f"{name!r} was not found; on Debian install it with `apt-get install "
            f"{'orthanc' if name == 'Orthanc' else 'dcmtk'}`"
        )
    return found


def dcmtk_tool(name: str) -> str:
    """Path of a DCMTK command line tool (``getscu``, ``storescu``, ...).

    DCMTK's own binaries in ``/usr/bin`` are preferred over same-named Python entry points
    (pynetdicom's apps) that may come first on ``PATH``.
    """
    return _which(name, os.path.join(DCMTK_BIN, name))


def orthanc_dicomweb_plugin() -> str | None:
    """Path of Orthanc's DICOMweb plugin (Debian ``orthanc-dicomweb``), or None."""
    candidates = [
        "/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
        *sorted(str(p) for p in Path("/usr/lib/orthanc").glob("libOrthancDicomWeb.so*")),
    ]
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["dpkg", "-L", "orthanc-dicomweb"], capture_output=True, text=True, timeout=10
        ).stdout
        candidates += [line for line in out.splitlines() if ".so" in line]
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate
    return None


def _wait_port(host: str, port: int, proc: subprocess.Popen, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerError(
                f"server exited with code {proc.returncode} while starting; log:\n{_tail(log)}"
            )
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise ServerError(f"server did not listen on {host}:{port} within {timeout} s:\n{_tail(log)}")


def _tail(path: Path, n: int = 30) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(lines[-n:])


def _dicom_files(sources: Iterable[str | os.PathLike] | str | os.PathLike) -> list[Path]:
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    files: list[Path] = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                if child.is_file() and _is_dicom(child):
                    files.append(child)
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"nothing to seed at {path}")
    return files


def _is_dicom(path: Path) -> bool:
    if path.name.upper() in {"DICOMDIR", "DIRFILE"}:
        return False
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM"


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError, OSError):
        os.killpg(pid, signal.SIGKILL)


class DicomServer:
    """Base class: a child process serving DICOM on ``host:port`` from a temporary folder.

    Parameters
    ----------
    ae_title
        The server's AE title.
    port
        DICOM port; a free one when None.
    startup_timeout
        Seconds to wait for the server to listen.
    workdir
        Where config, storage and logs go; a new temporary folder (removed on stop) when None.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        ae_title: str,
        *,
        port: int | None = None,
        startup_timeout: float = 30.0,
        workdir: str | os.PathLike | None = None,
    ) -> None:
        self.ae_title = ae_title
        self.port = port or free_port()
        self.startup_timeout = startup_timeout
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix=f"dicomxr-{type(self).__name__}-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / "server.log"
        self.proc: subprocess.Popen | None = None
        self._log_fh: Any = None

    # -- process management -------------------------------------------------------------
    def _command(self) -> list[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["TCP_NODELAY"] = "1"
        return env

    def _wait_ready(self) -> None:
        assert self.proc is not None
        _wait_port(self.host, self.port, self.proc, self.startup_timeout, self.log_path)

    def start(self) -> DicomServer:
        """Write the configuration, start the process and wait until it listens."""
        if self.running:
            return self
        cmd = self._command()
        logger.info("starting %s: %s", type(self).__name__, " ".join(cmd))
        self._log_fh = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            cmd,
            cwd=self.workdir,
            env=self._env(),
            stdin=subprocess.DEVNULL,
            stdout=self._log_fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C in a notebook must not hit the server first
        )
        # a server must never outlive this Python process (notebook kernel shut down, error)
        self._finalizer = weakref.finalize(self, _kill_group, self.proc.pid)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def running(self) -> bool:
        """True while the server process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash would; the workdir is kept."""
        if self.proc is not None and self.proc.poll() is None:
            self._signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def _signal(self, sig: int) -> None:
        # the server runs in its own session: signal the whole group (dcmqrscp forks children)
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the server (SIGTERM, SIGKILL after ``timeout`` s) and remove its temporary folder.

        The servers are throwaway: a slow graceful shutdown (Orthanc takes seconds) is cut
        short rather than waited for.
        """
        if self.proc is not None:
            if self.proc.poll() is None:
                self._signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self._signal(signal.SIGKILL)
                    self.proc.wait(timeout=10)
            # forked children (dcmqrscp) may outlive the parent
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            if getattr(self, "_finalizer", None) is not None:
                self._finalizer.detach()
            self.proc = None
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def restart(self) -> DicomServer:
        """Start the server again on the same port with the same storage (after :meth:`kill`)."""
        if self.proc is not None and self.proc.poll() is None:
            raise ServerError("server is still running")
        if getattr(self, "_finalizer", None) is not None:
            self._finalizer.detach()
        self.proc = None
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None
        return self.start()

    def log(self) -> str:
        """Return the last lines of the server's log."""
        return _tail(self.log_path, 60)

    def __enter__(self) -> DicomServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<{type(self).__name__} {self.ae_title}@{self.host}:{self.port} {state}>"

    # -- seeding --------------------------------------------------------------------------
    def seed(self, sources: Iterable[str | os.PathLike] | str | os.PathLike) -> int:
        """Store DICOM files (files or folders, searched recursively) into the server.

        Returns
        -------
        int
            The number of files sent.
        """
        files = _dicom_files(sources)
        if files:
            self._seed_files(files)
        return len(files)

    def _seed_files(self, files: list[Path]) -> None:
        # one association for all files; --required proposes exactly the presentation
        # contexts the files need (each file's SOP class in its own transfer syntax)
        cmd = [
            dcmtk_tool("storescu"),
            *("-aet", "SEEDER", "-aec", self.ae_title),
            *("-to", "30", "-ta", "30", "-td", "60"),
            "--required",
            self.host,
            str(self.port),
            *(str(f) for f in files),
        ]
        result = subprocess.run(
            cmd, env=self._env(), capture_output=True, text=True, timeout=300, check=False
        )
        if result.returncode != 0:
            raise ServerError(f"storescu failed ({result.returncode}):\n{result.stderr[-2000:]}")


class OrthancServer(DicomServer):
    """Orthanc on loopback with DICOM and HTTP ports, C-FIND/GET/MOVE allowed, DICOMweb on.

    Parameters
    ----------
    ae_title
        Orthanc's AE title; the called AE is checked (``DicomCheckCalledAet``).
    port, http_port
        DICOM and HTTP ports; free ones when None.
    dicomweb
        Load the DICOMweb plugin (``/dicom-web/``) when it is installed.
    config
        Extra configuration keys merged over the defaults.
    users
        ``{username: password}``: turns HTTP basic authentication on (REST and DICOMweb);
        :meth:`rest` then uses the first user.
    """

    def __init__(
        self,
        ae_title: str = "ORTHANC",
        *,
        port: int | None = None,
        http_port: int | None = None,
        dicomweb: bool = True,
        config: Mapping[str, Any] | None = None,
        users: Mapping[str, str] | None = None,
        startup_timeout: float = 60.0,
        workdir: str | os.PathLike | None = None,
    ) -> None:
        super().__init__(ae_title, port=port, startup_timeout=startup_timeout, workdir=workdir)
        self.http_port = http_port or free_port()
        self.dicomweb = dicomweb
        self.extra_config = dict(config or {})
        self.users = dict(users or {})

    @property
    def url(self) -> str:
        """The REST API's base URL."""
        return f"http://{self.host}:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        """The DICOMweb root (QIDO-RS, WADO-RS, STOW-RS)."""
        return f"{self.url}/dicom-web"

    def _config(self) -> dict[str, Any]:
        storage = self.workdir / "storage"
        storage.mkdir(exist_ok=True)
        config: dict[str, Any] = {
            "Name": f"dicomxr-{self.ae_title}",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "StorageCompression": False,
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": bool(self.users),
            "RegisteredUsers": dict(self.users),
            "SslEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": self.ae_title,
            "DicomPort": self.port,
            "DicomCheckCalledAet": True,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowFind": True,
            "DicomAlwaysAllowGet": True,
            "DicomAlwaysAllowMove": True,
            "DicomModalities": {},
            "DicomModalitiesInDatabase": False,
            "UnknownSopClassAccepted": True,
            "DicomScuTimeout": 10,
            "DicomAssociationCloseDelay": 0,
            "SaveJobs": False,
            "StableAge": 2,
            "HttpTimeout": 30,
            "HttpCompressionEnabled": False,  # gzip of pixel data costs more than it saves
            "KeepAlive": True,
            "TcpNoDelay": True,
            "LimitFindResults": 0,
            "LimitFindInstances": 0,
            "Plugins": [],
        }
        plugin = orthanc_dicomweb_plugin() if self.dicomweb else None
        if plugin:
            config["Plugins"] = [plugin]
            config["DicomWeb"] = {
                "Enable": True,
                "Root": "/dicom-web/",
                "Host": f"{self.host}:{self.http_port}",
                "Ssl": False,
                "StudiesMetadata": "Full",
                "SeriesMetadata": "Full",
            }
        elif self.dicomweb:
            logger.warning(
                "Orthanc's DICOMweb plugin is not installed (apt install orthanc-dicomweb)"
            )
        config.update(self.extra_config)
        return config

    def _command(self) -> list[str]:
        path = self.workdir / "orthanc.json"
        path.write_text(json.dumps(self._config(), indent=2))
        return [_which("Orthanc", ORTHANC), "--no-jobs", str(path)]

    def _wait_ready(self) -> None:
        super()._wait_ready()
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, urllib.error.URLError):
                self.rest("GET", "/system")
                return
            time.sleep(0.1)
        raise ServerError(f"Orthanc's REST API did not answer at {self.url}:\n{self.log()}")

    # -- REST ---------------------------------------------------------------------------
    def rest(self, method: str, path: str, body: bytes | str | Any = None) -> Any:
        """Call Orthanc's REST API and return the decoded JSON answer (or None)."""
        data: bytes | None
        headers = {}
        if body is None:
            data = None
        elif isinstance(body, bytes):
            data = body
            headers["Content-Type"] = "application/dicom"
        else:
            data = (body if isinstance(body, str) else json.dumps(body)).encode()
            headers["Content-Type"] = "application/json"
        if self.users:
            user, password = next(iter(self.users.items()))
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        with urllib.request.urlopen(request, timeout=30) as response:
            payload = response.read()
        if not payload:
            return None
        try:
            return json.loads(payload)
        except ValueError:
            return payload

    def add_modality(self, name: str, ae_title: str, host: str, port: int) -> None:
        """Register a C-MOVE destination (``PUT /modalities/<name>``)."""
        self.rest(
            "PUT",
            f"/modalities/{name}",
            {"AET": ae_title, "Host": host, "Port": int(port), "AllowTranscoding": False},
        )

    def _seed_files(self, files: list[Path]) -> None:
        for f in files:
            self.rest("POST", "/instances", f.read_bytes())

    def instances(self) -> list[str]:
        """Orthanc ids of every stored instance."""
        return list(self.rest("GET", "/instances") or [])


class DcmqrscpServer(DicomServer):
    """DCMTK's ``dcmqrscp`` on loopback (one forked child per association), seeded with ``storescu``.

    Parameters
    ----------
    ae_title
        The archive's AE title.
    move_destinations
        ``{ae_title: (host, port)}`` known for C-MOVE (dcmqrscp reads them only at start).
    """

    def __init__(
        self,
        ae_title: str = "DCMQRSCP",
        *,
        port: int | None = None,
        move_destinations: Mapping[str, tuple[str, int]] | None = None,
        startup_timeout: float = 20.0,
        workdir: str | os.PathLike | None = None,
    ) -> None:
        super().__init__(ae_title, port=port, startup_timeout=startup_timeout, workdir=workdir)
        self.move_destinations = dict(move_destinations or {})

    def _command(self) -> list[str]:
        db = self.workdir / "db"
        db.mkdir(exist_ok=True)
        hosts = "\n".join(
            f"{_symbol(ae)} = ({ae}, {host}, {port})"
            for ae, (host, port) in self.move_destinations.items()
        )
        cfg = f"""
NetworkTCPPort  = {self.port}
MaxPDUSize      = 16384
MaxAssociations = 16

HostTable BEGIN
{hosts}
HostTable END

VendorTable BEGIN
VendorTable END

AETable BEGIN
{self.ae_title} {db} RW (500, 1024mb) ANY
AETable END
"""
        path = self.workdir / "dcmqrscp.cfg"
        path.write_text(cfg)
        return [
            dcmtk_tool("dcmqrscp"),
            "--fork",  # DCMTK 3.6.7's --single-process crashes after a C-STORE
            "-c",
            str(path),
            "+xs",  # accept JPEG lossless (and uncompressed) for storage
            str(self.port),
        ]


def _symbol(ae: str) -> str:
    return "h_" + "".join(ch if ch.isalnum() else "_" for ch in ae).lower()


class QRSCPServer(DicomServer):
    """pynetdicom's ``qrscp`` application on loopback (its database needs SQLAlchemy).

    Parameters
    ----------
    move_destinations
        ``{ae_title: (host, port)}`` known for C-MOVE.
    """

    def __init__(
        self,
        ae_title: str = "QRSCP",
        *,
        port: int | None = None,
        move_destinations: Mapping[str, tuple[str, int]] | None = None,
        startup_timeout: float = 30.0,
        workdir: str | os.PathLike | None = None,
    ) -> None:
        super().__init__(ae_title, port=port, startup_timeout=startup_timeout, workdir=workdir)
        self.move_destinations = dict(move_destinations or {})

    def _command(self) -> list[str]:
        store = self.workdir / "instances"
        store.mkdir(exist_ok=True)
        lines = [
            "[DEFAULT]",
            f"    ae_title: {self.ae_title}",
            f"    port: {self.port}",
            "    max_pdu: 0",
            "    acse_timeout: 30",
            "    dimse_timeout: 30",
            "    network_timeout: 30",
            f"    bind_address: {self.host}",
            f"    instance_location: {store}",
            f"    database_location: {self.workdir / 'instances.sqlite'}",
            "    log_identifier: False",
        ]
        for ae, (host, port) in self.move_destinations.items():
            lines += [f"[{ae}]", f"    address: {host}", f"    port: {port}"]
        path = self.workdir / "qrscp.ini"
        path.write_text("\n".join(lines) + "\n")
        return [sys.executable, "-m", "pynetdicom", "qrscp", "-c", str(path)]

    def _seed_files(self, files: list[Path]) -> None:
        from dicomxr.net.client import DicomClient

        with DicomClient(self.host, self.port, called_ae=self.ae_title) as client:
            report = client.store(files)
        if report.failed:
            raise ServerError(f"seeding qrscp failed for {len(report.failed)} file(s)")
