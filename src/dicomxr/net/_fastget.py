"""The receive side of a C-GET, read straight off the association's socket.

Profiling a 200-image 512x512 CT C-GET from a loopback Orthanc (``bench/pacs.py``) showed
our process spending ~5 ms of CPU per image against ~0.9 ms for DCMTK ``getscu``; with two
cores shared with Orthanc that CPU, not the network, set the rate (~200 images/s). Nearly
all of it was pynetdicom's generic machinery, paid per PDU and per message: the DUL
reactor's state machine and queues, a copy of every PDU, the assembly of each data set
from its fragments, pydicom decoding every command set (C-STORE-RQ, each pending
C-GET-RSP) and encoding every C-STORE-RSP, plus the hand-offs between the DUL, the
association and our thread.

Here, once pynetdicom has negotiated the association (ACSE, presentation contexts, SCP role
selection) and sent the C-GET request, the DUL reactor is told to stop reading the socket
(:attr:`~dicomxr.net._transport.FastSocket.paused`, our own socket subclass) and the
worker thread reads the P-DATA-TF PDUs itself: one ``recv_into`` fills a large buffer with
as many PDUs as the kernel holds, command sets (always implicit VR little endian, a few
fixed elements) are parsed by hand, every data set fragment is written from the buffer
straight into the instance's temporary file (no copy, no decoding), and each C-STORE-RSP
is a fixed 100-byte PDU. When the final C-GET response arrives, the socket goes back to
pynetdicom, which releases the association as usual. Only the association objects of
this retrieval are affected; nothing in pynetdicom is patched.

The take-over relies on a few attributes pynetdicom does not document
(:data:`PRIVATE_ATTRIBUTES`), checked on every association by :func:`can_take_over`: when
one of them is gone, the retrieval runs on pynetdicom's own (generic) receive path and a
warning names what changed. pyproject pins pynetdicom to the versions this is tested with
(:data:`TESTED_PYNETDICOM`); ``tests/test_60_net_units.py`` fails naming the attributes
when a pynetdicom in that range changes them.
"""

from __future__ import annotations

import contextlib
import logging
import select
import ssl
import struct
import time
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset

from dicomxr.net.errors import AssociationError, NetTimeoutError
from dicomxr.net.storage import InstanceWriter, SpareFile, file_meta_bytes

logger = logging.getLogger(__name__)

__all__ = [
    "PRIVATE_ATTRIBUTES",
    "TESTED_PYNETDICOM",
    "FastGetUnsupported",
    "can_take_over",
    "encode_command",
    "parse_command",
    "private_api_problems",
    "receive_find",
    "receive_get",
]

#: The pynetdicom versions the fast receive path is tested with (pyproject pins this range).
TESTED_PYNETDICOM = ">=3.0.4,<3.1"

#: What the fast paths use of pynetdicom beyond its documented API, as
#: ``(where, attribute, what it must be, what for)``. ``where`` is an object path from an
#: established association (``assoc``, ``assoc.dul``, ``assoc.dul.socket``) or a class.
PRIVATE_ATTRIBUTES: tuple[tuple[str, str, str, str], ...] = (
    ("assoc", "_reactor_checkpoint", "threading.Event", "resume the reactor after a take-over"),
    ("assoc", "_get_valid_context", "method", "the context of the request we send"),
    ("assoc.dul", "_idle_timer", "Timer with restart()", "keep the idle timer alive while we read"),
    ("assoc.dul", "to_provider_queue", "queue.Queue", "the reactor's input while it is paused"),
    ("assoc.dul", "_run_loop_delay", "float", "the reactor's idle sleep (client._tune_reactor)"),
    ("assoc.dul.socket", "_is_connected", "bool", "FastSocket.ready"),
    ("assoc.dul.socket", "event_queue", "queue.Queue", "FastSocket.ready reports Evt17"),
    ("AssociationSocket", "_create_socket", "method (self, address)", "FastSocket: TCP_NODELAY"),
    ("AE", "_create_socket", "method (self, assoc, address, tls_args)", "FastAE: our socket"),
)

_C_STORE_RQ = 0x0001
_C_GET_RSP = 0x8010
_C_FIND_RSP = 0x8020
_C_STORE_RSP = 0x8001
_C_CANCEL_RQ = 0x0FFF
_NO_DATASET = 0x0101
_PENDING = (0xFF00, 0xFF01)
_POLL = 0.2  # seconds between checks for cancellation while waiting for data

_US = {0x0100, 0x0110, 0x0120, 0x0700, 0x0800, 0x0900, 0x1020, 0x1021, 0x1022, 0x1023}
_COUNT_KEYWORDS = {
    0x1020: "NumberOfRemainingSuboperations",
    0x1021: "NumberOfCompletedSuboperations",
    0x1022: "NumberOfFailedSuboperations",
    0x1023: "NumberOfWarningSuboperations",
}
_HEAD = struct.Struct(">BxL")
_PDV = struct.Struct(">LBB")
_ELEM = struct.Struct("<HHL")


class FastGetUnsupported(RuntimeError):
    """The association cannot be taken over (not our socket, or pynetdicom changed)."""


def parse_command(data: bytes | memoryview) -> dict[int, int | str]:
    """Parse a DIMSE command set (group 0000, implicit VR little endian).

    Returns ``{element: value}``; US elements as int, everything else as stripped text.
    Parsing stops at the first element outside group 0000.

    Examples
    --------
    >>> parse_command(encode_command({0x0100: 0x8001, 0x1000: "1.2.3"}))[0x1000]
    '1.2.3'
    """
    out: dict[int, int | str] = {}
    view = memoryview(data)
    pos, end = 0, len(view)
    while pos + 8 <= end:
        group, elem, length = _ELEM.unpack_from(view, pos)
        pos += 8
        if group != 0x0000:
            # Orthanc appends its Failed SOP Instance UID List (group 0008) to a final
            # failure response's command PDV; the command set itself ends here
            break
        value = view[pos : pos + length]
        pos += length
        if elem in _US and length == 2:
            out[elem] = int.from_bytes(value, "little")
        elif elem != 0x0000:
            out[elem] = bytes(value).rstrip(b"\x00 ").decode("ascii", "replace")
    return out


def encode_command(elements: dict[int, int | str]) -> bytes:
    """Encode a DIMSE command set (implicit VR little endian, with its group length)."""
    body = bytearray()
    for elem in sorted(elements):
        value = elements[elem]
        if isinstance(value, int):
            raw = struct.pack("<H", value)
        else:
            raw = value.encode("ascii")
            if len(raw) % 2:
                raw += b"\x00"
        body += _ELEM.pack(0x0000, elem, len(raw)) + raw
    return _ELEM.pack(0x0000, 0x0000, 4) + struct.pack("<L", len(body)) + bytes(body)


def _command_pdu(context_id: int, command: bytes) -> bytes:
    """One P-DATA-TF PDU holding a whole command set in one PDV."""
    pdv = bytes((context_id, 0x03)) + command
    return _HEAD.pack(0x04, 4 + len(pdv)) + struct.pack(">L", len(pdv)) + pdv


def private_api_problems(assoc: Any = None) -> list[str]:
    """Return what is missing or changed of :data:`PRIVATE_ATTRIBUTES` (empty: all there).

    Parameters
    ----------
    assoc
        An established association made by dicomxr (a ``FastAE`` requestor): its
        attributes are checked too. ``None`` checks the classes only.

    Returns
    -------
    list of str
        One line per problem, naming the attribute, what it should be and what it is for.
    """
    import inspect
    import queue
    import threading

    from pynetdicom.ae import ApplicationEntity
    from pynetdicom.transport import AssociationSocket

    classes = {"AssociationSocket": AssociationSocket, "AE": ApplicationEntity}
    params = {
        "AssociationSocket": ["self", "address"],
        "AE": ["self", "assoc", "address", "tls_args"],
    }
    kinds = {
        "threading.Event": lambda v: isinstance(v, threading.Event),
        "method": callable,
        "Timer with restart()": lambda v: callable(getattr(v, "restart", None)),
        "queue.Queue": lambda v: isinstance(v, queue.Queue),
        "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "bool": lambda v: isinstance(v, bool),
    }
    problems = []
    for where, name, kind, purpose in PRIVATE_ATTRIBUTES:
        if where in classes:
            owner = classes[where]
            func = getattr(owner, name, None)
            try:
                found = list(inspect.signature(func).parameters) if callable(func) else None
            except (TypeError, ValueError):
                found = None
            if found != params[where]:
                problems.append(
                    f"{where}.{name}: expected a {kind}, found "
                    f"{'parameters ' + str(found) if found else 'none'} (used for: {purpose})"
                )
            continue
        if assoc is None:
            continue
        owner = assoc
        for part in where.split(".")[1:]:
            owner = getattr(owner, part, None)
        missing = object()
        value = getattr(owner, name, missing)
        if value is missing or not kinds[kind](value):
            what = "missing" if value is missing else f"a {type(value).__name__}"
            problems.append(f"{where}.{name}: expected a {kind}, {what} (used for: {purpose})")
    return problems


def can_take_over(assoc: Any) -> bool:
    """Return True when the association's socket and reactor can be taken over.

    False for a socket that is not dicomxr's, a TLS socket, or a pynetdicom whose private
    attributes (:func:`private_api_problems`) changed - then with a
    :class:`~dicomxr.errors.DicomxrWarning` naming them.
    """
    sock = getattr(getattr(assoc, "dul", None), "socket", None)
    raw = getattr(sock, "socket", None)
    if (
        not hasattr(sock, "paused")
        or raw is None
        or isinstance(raw, ssl.SSLSocket)  # select() cannot see TLS-buffered data
    ):
        return False
    problems = private_api_problems(assoc)
    if problems:
        import warnings

        from dicomxr.errors import DicomxrWarning, user_stacklevel

        warnings.warn(
            f"pynetdicom {_pynetdicom_version()} changed what dicomxr's fast C-GET/C-FIND "
            f"receive uses (tested with pynetdicom{TESTED_PYNETDICOM}); using pynetdicom's "
            f"own receive path: {'; '.join(problems)}",
            DicomxrWarning,
            stacklevel=user_stacklevel(),
        )
        return False
    return True


def _pynetdicom_version() -> str:
    import pynetdicom

    return str(getattr(pynetdicom, "__version__", "?"))


@dataclass
class _Incoming:
    """The C-STORE request being received and where its data set goes."""

    msg_id: int
    sop_class: str
    sop_uid: str
    context_id: int
    syntax: str = ""
    source_ae: str = ""
    sink: Any = None  # a storage writer, a list (unexpected instance) or None (skip)
    loc: tuple[str, str] | None = None  # (study, series) of a requested instance


class _Reader:
    """Whole PDUs from a socket through one large reusable buffer."""

    def __init__(self, sock: Any, wait: Any, size: int = 1 << 20) -> None:
        self.sock = sock
        self.wait = wait  # called before a read that would block; raises on timeout/cancel
        self.buf = bytearray(size)
        self.view = memoryview(self.buf)
        self.start = 0
        self.end = 0

    def _fill(self, need: int) -> None:
        """Make at least ``need`` bytes available from :attr:`start`."""
        while self.end - self.start < need:
            if self.start + need > len(self.buf):
                # move the partial PDU to the front (grow for a PDU larger than the buffer)
                kept = self.end - self.start
                if need > len(self.buf):
                    new = bytearray(max(need, 2 * len(self.buf)))
                    new[:kept] = self.buf[self.start : self.end]
                    self.buf = new
                    self.view = memoryview(self.buf)
                else:
                    self.buf[:kept] = self.buf[self.start : self.end]
                self.start, self.end = 0, kept
            try:
                n = self.sock.recv_into(self.view[self.end :])
            except BlockingIOError:
                self.wait()
                continue
            if not n:
                raise ConnectionResetError("the peer closed the connection")
            self.end += n

    def next_pdu(self) -> tuple[int, memoryview]:
        """Return (PDU type, body) of the next PDU; the body is valid until the next call."""
        if self.end - self.start < 6:
            if self.start == self.end:
                self.start = self.end = 0
            self._fill(6)
        pdu_type, length = _HEAD.unpack_from(self.view, self.start)
        self._fill(6 + length)
        body = self.view[self.start + 6 : self.start + 6 + length]
        self.start += 6 + length
        return pdu_type, body


def _waiter(sock: Any, dul: Any, timeout: float, what: str, on_poll: Any = None) -> Any:
    """Return ``wait()``: block until ``sock`` is readable, or raise after ``timeout`` of silence.

    Each poll first calls ``on_poll`` (the C-GET sends its C-CANCEL from there); data keeps
    pynetdicom's idle timer alive, as its own reader would.
    """
    last_data = time.monotonic()

    def wait() -> None:
        nonlocal last_data
        while True:
            if on_poll is not None:
                on_poll()
            readable, _, _ = select.select([sock], [], [], _POLL)
            now = time.monotonic()
            if readable:
                last_data = now
                dul._idle_timer.restart()
                return
            if now - last_data > timeout:
                raise NetTimeoutError(f"{what}: no response within dimse_timeout={timeout} s")

    return wait


def receive_get(
    assoc: Any,
    *,
    msg_id: int,
    get_context_id: int,
    state: Any,
    counts_key: int,
    timeout: float,
    log: logging.Logger = logger,
) -> tuple[Dataset, int, int]:
    """Receive the C-STORE sub-operations and responses of a C-GET already sent on ``assoc``.

    The caller must have set ``assoc.dul.socket.paused`` before sending the request (so
    the DUL reactor never reads the answer) and hands the socket back afterwards
    (:func:`release_to_pynetdicom`).

    Parameters
    ----------
    assoc
        The established association (the requestor side).
    msg_id, get_context_id
        Message ID and presentation context of the C-GET request (for C-CANCEL).
    state
        The retrieval's shared state (``storage``, ``where``, ``cancel``, ``stored``,
        ``subop_done``, ``unexpected``, ``lost_peer``, ``store_instance``).
    counts_key
        Key of this association in ``state.subop_done``.
    timeout
        Seconds of silence from the peer before giving up (the DIMSE timeout).
    log
        Where to log the C-CANCEL (the caller's logger).

    Returns
    -------
    (status, code, done)
        The final C-GET response as a status dataset, its status code and the number of
        sub-operations it reports as done.
    """
    receiver = _GetReceiver(assoc, msg_id, get_context_id, state, counts_key, timeout, log)
    return receiver.run()


class _GetReceiver:
    """One C-GET's answer read off the socket: C-STORE sub-operations, then the final response.

    Each stored instance streams into its sink (:func:`_begin_store`) fragment by fragment;
    a spare file for the next instance is made while the peer sends it.
    """

    def __init__(
        self,
        assoc: Any,
        msg_id: int,
        get_context_id: int,
        state: Any,
        counts_key: int,
        timeout: float,
        log: logging.Logger,
    ) -> None:
        self.sock = assoc.dul.socket.socket
        self.msg_id, self.get_context_id = msg_id, get_context_id
        self.state, self.counts_key, self.log = state, counts_key, log
        self.syntaxes = {
            cx.context_id: str(cx.transfer_syntax[0]) for cx in assoc.accepted_contexts
        }
        self.source_ae = str(assoc.acceptor.ae_title).strip()
        self.cancel_sent = False
        self.wait = _waiter(self.sock, assoc.dul, timeout, "C-GET", on_poll=self.send_cancel)
        self.command = bytearray()
        self.incoming: _Incoming | None = None
        self.spare: SpareFile | None = None

    def send_cancel(self) -> None:
        """Send C-CANCEL once, and only after the user asked to stop (Ctrl-C)."""
        if self.cancel_sent or not self.state.cancel.is_set():
            return
        self.cancel_sent = True
        command = encode_command({0x0100: _C_CANCEL_RQ, 0x0120: self.msg_id, 0x0800: _NO_DATASET})
        self.sock.sendall(_command_pdu(self.get_context_id, command))
        self.log.info("sent C-CANCEL for message %d", self.msg_id)

    def run(self) -> tuple[Dataset, int, int]:
        """Read P-DATA until the final C-GET response; return (status, code, done)."""
        blocking = self.sock.gettimeout()
        self.sock.setblocking(False)
        reader = _Reader(self.sock, self.wait)
        try:
            while True:
                self.send_cancel()
                final = self._p_data(self._next_p_data(reader))
                if final is not None:
                    return final
        finally:
            self._discard_partial()
            with contextlib.suppress(OSError):
                self.sock.settimeout(blocking)

    def _next_p_data(self, reader: _Reader) -> bytes:
        """Return the body of the next P-DATA-TF PDU; a lost or aborting peer is an error."""
        try:
            pdu_type, body = reader.next_pdu()
        except (ConnectionError, OSError) as exc:
            if isinstance(exc, NetTimeoutError):
                raise
            self.state.lost_peer.set()
            raise AssociationError(
                f"C-GET: the peer closed the association mid-transfer ({exc})"
            ) from None
        if pdu_type == 0x04:
            return body
        if pdu_type == 0x07:
            self.state.lost_peer.set()
            raise AssociationError("C-GET: the peer aborted the association mid-transfer")
        raise AssociationError(
            f"C-GET: unexpected PDU type 0x{pdu_type:02X} from the peer mid-transfer"
        )

    def _p_data(self, body: bytes) -> tuple[Dataset, int, int] | None:
        """Handle the PDVs of one P-DATA-TF; the final response when it is among them."""
        pos, end = 0, len(body)
        while pos < end:
            item_length, context_id, header = _PDV.unpack_from(body, pos)
            fragment = body[pos + 6 : pos + 4 + item_length]
            pos += 4 + item_length
            if not header & 0x01:
                self._data_fragment(fragment, last=bool(header & 0x02))
                continue
            self.command += fragment
            if header & 0x02:
                fields = parse_command(self.command)
                self.command.clear()
                final = self._command_message(fields, context_id)
                if final is not None:
                    return final
        return None

    def _command_message(
        self, fields: dict[int, Any], context_id: int
    ) -> tuple[Dataset, int, int] | None:
        """Start a C-STORE sub-operation, or count a C-GET response (the final one returned)."""
        field_ = fields.get(0x0100)
        if field_ == _C_STORE_RQ:
            self._begin(fields, context_id)
            return None
        if field_ != _C_GET_RSP:
            raise AssociationError(f"C-GET: unexpected DIMSE message 0x{field_:04X} from the peer")
        code = int(fields.get(0x0900, 0xC000))
        done = sum(int(fields.get(k, 0) or 0) for k in (0x1021, 0x1022, 0x1023))
        self.state.subop_done[self.counts_key] = done
        if code in _PENDING:
            return None
        return _final_status(fields, code), code, done

    def _begin(self, fields: dict[int, Any], context_id: int) -> None:
        """Open the sink of an incoming C-STORE (a request without data set fails at once)."""
        state = self.state
        incoming = _begin_store(
            state, fields, context_id, self.syntaxes, self.source_ae, self.spare
        )
        if isinstance(incoming.sink, InstanceWriter):
            self.spare = None  # used, or discarded for another folder
        if fields.get(0x0800) == _NO_DATASET:  # a C-STORE without data set
            _finish_store(state, incoming, self.sock, failed=True)
            incoming = None
        self.incoming = incoming

    def _data_fragment(self, fragment: bytes, last: bool) -> None:
        """Write a data set fragment; after the last one, answer the C-STORE."""
        incoming = self.incoming
        if incoming is None:
            raise AssociationError("C-GET: a data set arrived without a C-STORE request")
        if incoming.sink is not None:
            incoming.sink.write(fragment)
        if not last:
            return
        _finish_store(self.state, incoming, self.sock)
        if self.spare is None and incoming.loc is not None:
            # while the peer reads and sends the next instance
            with contextlib.suppress(OSError):
                self.spare = self.state.storage.spare(*incoming.loc)
        self.incoming = None

    def _discard_partial(self) -> None:
        """Drop an instance cut off mid-transfer and the unused spare file."""
        if self.incoming is not None and hasattr(self.incoming.sink, "discard"):
            self.incoming.sink.discard()
        if self.spare is not None:
            self.spare.discard()


def _final_status(fields: dict[int, Any], code: int) -> Dataset:
    """Return the final C-GET response's status as a dataset (counts and error comment)."""
    status = Dataset()
    status.Status = code
    for elem, keyword in _COUNT_KEYWORDS.items():
        if elem in fields:
            setattr(status, keyword, fields[elem])
    if fields.get(0x0902):
        status.ErrorComment = fields[0x0902]
    return status


def _begin_store(
    state: Any,
    fields: dict[int, int | str],
    context_id: int,
    syntaxes: dict[int, str],
    source_ae: str,
    spare: SpareFile | None = None,
) -> _Incoming:
    incoming = _Incoming(
        msg_id=int(fields.get(0x0110, 0)),
        sop_class=str(fields.get(0x0002, "")),
        sop_uid=str(fields.get(0x1000, "")),
        context_id=context_id,
    )
    syntax = syntaxes.get(context_id)
    if syntax is None:
        raise AssociationError(
            f"C-GET: C-STORE on presentation context {context_id}, which was not accepted"
        )
    incoming.syntax = syntax
    incoming.source_ae = source_ae
    loc = state.where.get(incoming.sop_uid)
    if loc is None:
        incoming.sink = _Collect()  # find out where it belongs once complete
    elif not state.storage.exists(*loc, incoming.sop_uid):
        incoming.loc = loc
        header = file_meta_bytes(incoming.sop_class, incoming.sop_uid, syntax, source_ae)
        incoming.sink = state.storage.open_instance(*loc, incoming.sop_uid, header, spare)
    return incoming


class _Collect(list):
    """Data set fragments of an instance nobody asked for (its folder is in its header)."""

    def write(self, chunk: memoryview) -> None:
        self.append(bytes(chunk))


def _finish_store(state: Any, incoming: _Incoming, sock: Any, *, failed: bool = False) -> None:
    status = 0xA700 if failed else 0x0000
    sink = incoming.sink
    if not failed:
        try:
            if isinstance(sink, _Collect):
                status = state.store_instance(
                    incoming.sop_class,
                    incoming.sop_uid,
                    incoming.syntax,
                    incoming.source_ae,
                    b"".join(sink),
                )
            elif sink is not None:
                sink.commit()
                state.count_stored()
        except Exception as exc:
            logger.error("could not store instance %s: %s", incoming.sop_uid, exc)
            status = 0xA700
            if hasattr(sink, "discard"):
                sink.discard()
    elif hasattr(sink, "discard"):
        sink.discard()
    response = {
        0x0002: incoming.sop_class,
        0x0100: _C_STORE_RSP,
        0x0120: incoming.msg_id,
        0x0800: _NO_DATASET,
        0x0900: status,
        0x1000: incoming.sop_uid,
    }
    sock.sendall(_command_pdu(incoming.context_id, encode_command(response)))


def receive_find(
    assoc: Any,
    *,
    msg_id: int,
    context_id: int,
    timeout: float,
    on_match: Any,
    cancel: Any = None,
) -> Dataset:
    """Receive the responses of a C-FIND already sent on ``assoc`` (taken over).

    Each pending response's identifier goes, still encoded, to ``on_match(bytes)``;
    returns the final response as a status dataset (``Status``, ``ErrorComment``).
    Raises :class:`NetTimeoutError` after ``timeout`` seconds of silence and
    :class:`AssociationError` when the peer goes away.
    """
    sock = assoc.dul.socket.socket
    dul = assoc.dul
    wait = _waiter(sock, dul, timeout, "C-FIND")

    blocking = sock.gettimeout()
    sock.setblocking(False)
    reader = _Reader(sock, wait, size=1 << 16)
    command = bytearray()
    identifier = bytearray()
    try:
        while True:
            try:
                pdu_type, body = reader.next_pdu()
            except (ConnectionError, OSError) as exc:
                if isinstance(exc, NetTimeoutError):
                    raise
                raise AssociationError(f"C-FIND: the peer closed the association ({exc})") from None
            if pdu_type != 0x04:
                raise AssociationError(
                    f"C-FIND: unexpected PDU type 0x{pdu_type:02X} from the peer"
                )
            pos, end = 0, len(body)
            while pos < end:
                item_length, _cx, header = _PDV.unpack_from(body, pos)
                fragment = body[pos + 6 : pos + 4 + item_length]
                pos += 4 + item_length
                if not header & 0x01:  # identifier fragment
                    identifier += fragment
                    if header & 0x02:
                        on_match(bytes(identifier))
                        identifier.clear()
                    continue
                command += fragment
                if not header & 0x02:
                    continue
                fields = parse_command(command)
                command.clear()
                if fields.get(0x0100) != _C_FIND_RSP:
                    raise AssociationError(
                        f"C-FIND: unexpected DIMSE message 0x{fields.get(0x0100, 0):04X}"
                    )
                code = int(fields.get(0x0900, 0xC000))
                if code in _PENDING:
                    continue
                status = Dataset()
                status.Status = code
                if fields.get(0x0902):
                    status.ErrorComment = fields[0x0902]
                return status
    finally:
        with contextlib.suppress(OSError):
            sock.settimeout(blocking)


def take_over(assoc: Any) -> None:
    """Stop pynetdicom's DUL reactor reading the socket of ``assoc`` (before the request)."""
    if not can_take_over(assoc):
        raise FastGetUnsupported("this association's socket cannot be taken over")
    assoc.dul.socket.paused = True


def release_to_pynetdicom(assoc: Any) -> None:
    """Give the socket back to the DUL reactor and resume the association's reactor."""
    with contextlib.suppress(Exception):
        assoc.dul._idle_timer.restart()
    with contextlib.suppress(Exception):
        assoc.dul.socket.paused = False
    with contextlib.suppress(Exception):
        assoc._reactor_checkpoint.set()
