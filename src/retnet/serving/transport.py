"""Running the app under uvicorn: the listening socket bound before anything is printed, and a deadline for
each request's head, which uvicorn does not have (a client sending half a header line held its connection,
and its buffers, forever)."""

from __future__ import annotations

import socket

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (IPv4 or IPv6 by what ``host`` resolves to); OSError if taken."""
    family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


class HeadDeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request line and headers are not complete within
    ``head_timeout_s`` of connecting or of its previous response (keep-alive idling has uvicorn's own, shorter
    limit). The body has a deadline of its own in :class:`~retnet.serving.middleware.LimitsAndAuth`."""

    head_timeout_s = 30.0
    head_deadline = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.head_deadline is not None:
            self.head_deadline.cancel()
        super().connection_lost(exc)

    def _arm_head_deadline(self) -> None:
        if self.head_deadline is not None:
            self.head_deadline.cancel()
        if not self.transport.is_closing():
            self.head_deadline = self.loop.call_later(self.head_timeout_s, self._head_deadline)

    def _head_deadline(self) -> None:
        """Still no complete request head (nothing, or part of one) and no request in progress: close."""
        waiting = self.conn.their_state is h11.IDLE and (self.cycle is None or self.cycle.response_complete)
        if waiting and not self.transport.is_closing():
            self.transport.close()


def serve(app, sock: socket.socket, *, log_level: str, request_timeout_s: float) -> None:
    """Serve ``app`` on an already bound socket until SIGINT/SIGTERM."""
    protocol = type("HeadDeadlineH11Protocol", (HeadDeadlineH11Protocol,), {"head_timeout_s": request_timeout_s})
    host, port = sock.getsockname()[:2]  # for uvicorn's start-up message
    config = uvicorn.Config(app, host=host, port=port, http=protocol, log_level=log_level, timeout_graceful_shutdown=5)
    uvicorn.Server(config).run(sockets=[sock])
