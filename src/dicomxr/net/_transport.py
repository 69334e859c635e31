"""pynetdicom with TCP_NODELAY and large socket reads on every socket dicomxr opens.

pynetdicom sets no ``TCP_NODELAY``: with Nagle's algorithm on, the small C-STORE / C-GET
responses wait for the peer's delayed ACK (~40 ms each), which caps a retrieval at a few
dozen images per second. It also reads the socket 4 KiB at a time into a growing
``bytearray``. Both are fixed here by subclassing, per Application Entity, without touching
pynetdicom's globals.
"""

from __future__ import annotations

import select
import socket
import time
import types
from typing import Any

from pynetdicom import AE
from pynetdicom.transport import AddressInformation, AssociationSocket

__all__ = ["FastAE", "tune_socket"]

_RCVBUF = 4 * 1024 * 1024


def tune_socket(sock: socket.socket) -> None:
    """Set TCP_NODELAY and a large receive buffer on a TCP socket (best effort)."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:  # pragma: no cover - not a TCP socket
        pass
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _RCVBUF)
    except OSError:  # pragma: no cover
        pass


class FastSocket(AssociationSocket):
    """An :class:`~pynetdicom.transport.AssociationSocket` with TCP_NODELAY and ``recv_into``.

    ``ready`` waits up to :attr:`wait` seconds in ``select`` for incoming data instead of
    returning at once: pynetdicom's reactor then wakes the moment data arrives rather than
    after its idle ``sleep`` (see ``client._tune_reactor``, which sets that sleep to 0).
    """

    wait = 0.0005
    #: True while a dicomxr thread reads the socket itself (``_fastget``): the DUL reactor
    #: must not read then, so :attr:`ready` answers False after :attr:`paused_wait` seconds
    paused = False
    paused_wait = 0.002

    @property
    def ready(self) -> bool:
        """Return True when data can be read (waiting at most :attr:`wait` seconds)."""
        if self.paused:
            time.sleep(self.paused_wait)
            return False
        sock = self.socket
        if sock is None or self._is_connected is False:
            return False
        try:
            readable, _, _ = select.select([sock], [], [], self.wait)
        except (OSError, TimeoutError, ValueError):
            self.event_queue.put("Evt17")
            return False
        return bool(readable)

    def _create_socket(self, address: AddressInformation) -> socket.socket:
        sock = super()._create_socket(address)
        tune_socket(sock)
        return sock

    def recv(self, nr_bytes: int) -> bytearray:
        """Read exactly ``nr_bytes`` (fewer only when the peer closed the connection)."""
        sock = self.socket
        assert sock is not None
        buf = bytearray(nr_bytes)
        view = memoryview(buf)
        got = 0
        while got < nr_bytes:
            n = sock.recv_into(view[got:], nr_bytes - got)
            if not n:
                del view
                return buf[:got]
            got += n
        del view
        return buf


class FastAE(AE):
    """An Application Entity whose requestor and acceptor sockets are tuned."""

    def _create_socket(self, assoc: Any, address: AddressInformation, tls_args: Any) -> Any:
        sock = FastSocket(assoc, address=address)
        sock.tls_args = tls_args
        return sock

    def start_server(self, *args: Any, **kwargs: Any) -> Any:
        """Start an acceptor whose accepted connections get TCP_NODELAY."""
        server = super().start_server(*args, **kwargs)
        if server is not None:
            original = server.get_request

            def get_request(self: Any) -> Any:
                client_socket, address = original()
                tune_socket(client_socket)
                return client_socket, address

            server.get_request = types.MethodType(get_request, server)
        return server
