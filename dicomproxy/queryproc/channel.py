"""The parent–child socket of the query process: one ``AF_UNIX`` ``SOCK_SEQPACKET`` pair.

A message is one pickled tuple ``(kind, *fields)`` in one datagram (no framing to get wrong),
optionally carrying one file descriptor (``SCM_RIGHTS``, man 7 unix) — an accepted TCP connection
handed to the child. Both ends are our own process and its child, so pickle is safe here; a
message above :data:`MAX_MESSAGE` is refused rather than cut.
"""

from __future__ import annotations

import pickle
import select
import socket
import threading
from typing import Any

#: Largest message (a pickled Config is some kB; a log record or an event far less). Linux caps a
#: datagram by the socket's send buffer, at most twice ``net.core.wmem_max`` (212992 by default).
MAX_MESSAGE = 192 * 1024


class ChannelClosed(EOFError):
    """The other end closed (its process ended)."""


class Channel:
    """One end of the pair; ``send`` is thread-safe, ``recv`` is for one reader thread."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._send_lock = threading.Lock()

    @classmethod
    def pair(cls) -> tuple[Channel, socket.socket]:
        """(the parent's end, the child's socket: pass its ``fileno()`` to the child)."""
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        parent.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, MAX_MESSAGE)
        child.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, MAX_MESSAGE)
        return cls(parent), child

    def send(self, *message: Any, fd: int | None = None) -> None:
        """Send ``message`` (and ``fd``); raises :class:`ChannelClosed` when the other end is gone."""
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        if len(data) > MAX_MESSAGE:
            raise ValueError(f"query process message {message[0]!r} too large ({len(data)} bytes)")
        try:
            with self._send_lock:
                if fd is None:
                    self.sock.sendall(data)
                else:
                    socket.send_fds(self.sock, [data], [fd])
        except (BrokenPipeError, ConnectionResetError, ConnectionRefusedError) as exc:
            raise ChannelClosed(str(exc)) from exc

    def recv(self) -> tuple[tuple[Any, ...], int | None]:
        """The next message and the descriptor it carried (None if none)."""
        try:
            data, fds, _flags, _addr = socket.recv_fds(self.sock, MAX_MESSAGE, 1)
        except OSError as exc:  # reset, or our end closed under the reader
            raise ChannelClosed(str(exc)) from exc
        if not data:
            for fd in fds:  # pragma: no cover - a descriptor without a message is never sent
                socket.close(fd)
            raise ChannelClosed("closed")
        message = pickle.loads(data)  # our own child or parent (module docstring)
        return message, (fds[0] if fds else None)

    def waiting(self, timeout: float) -> bool:
        """Whether a message (or the other end's close) waits, within ``timeout`` seconds."""
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        return bool(poller.poll(max(0, int(timeout * 1000))))

    def close(self) -> None:
        self.sock.close()
