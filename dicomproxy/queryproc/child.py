"""The child's side of the query process (:mod:`dicomproxy.queryproc`).

:class:`QueryWorker` runs on the child's main thread: it takes each connection the parent hands
over and serves it on a thread of its own with the raw query acceptor
(:mod:`dicomproxy.transport.raw.queries`, the same code the parent runs in process); it applies
each reloaded Config; at "stop" it drains like the parent (``drain_timeout``, then A-ABORT) and
returns. What the child's code publishes and logs goes to the parent (:class:`Forwarder`,
:class:`LogForwarder`): one audit trail, one log file. The child ends when the parent's end of
the channel closes (the parent died): nothing is left running.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from dicomproxy import events
from dicomproxy.config import Config
from dicomproxy.context import AppContext
from dicomproxy.queryproc.channel import Channel, ChannelClosed
from dicomproxy.transport.raw.queries import QueryAcceptor

LOG = logging.getLogger("dicomproxy.queryproc")


class Forwarder:
    """An events subscriber that sends each event to the parent, which publishes it."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel

    def __call__(self, event: events.Event) -> None:
        with contextlib.suppress(ChannelClosed, OSError):
            self.channel.send("event", event)


class LogForwarder(logging.Handler):
    """Sends each record to the parent (message formatted here, traceback as text: what pickles)."""

    def __init__(self, channel: Channel) -> None:
        super().__init__()
        self.channel = channel

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields = dict(record.__dict__)
            fields["msg"] = record.getMessage()
            fields["args"] = None
            if record.exc_info:
                fields["exc_text"] = logging.Formatter().formatException(record.exc_info)
            fields["exc_info"] = None
            self.channel.send("log", fields)
        except (ChannelClosed, OSError):
            pass
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


class QueryWorker:
    """The child's loop (see the module docstring)."""

    def __init__(
        self,
        channel: Channel,
        ctx: AppContext,
        acceptor: Callable[[Callable[[], int]], QueryAcceptor],
        on_config: Callable[[Config], object] = lambda config: None,
    ) -> None:
        """``acceptor(active)``: the raw query acceptor over ``ctx``, counting ``active()``
        associations against ``maximum_associations``; ``on_config``: also run for each reloaded
        Config (the log level)."""
        self.channel = channel
        self.ctx = ctx
        self._others = 0  # the parent's open associations at the last hand-over
        self.acceptor = acceptor(lambda: self._others + self.acceptor.active)
        self.acceptor.changed = self._report
        self.on_config = on_config
        self._threads: set[threading.Thread] = set()
        self._lock = threading.Lock()

    def run(self) -> bool:
        """Serve until "stop" (True: drained cleanly) or until the parent is gone (False)."""
        self.channel.send("ready")
        try:
            while True:
                message, fd = self.channel.recv()
                kind = message[0]
                if kind == "serve":
                    if fd is None:  # pragma: no cover - the parent always sends one
                        continue
                    self._others = int(message[2])
                    self._serve(socket.socket(fileno=fd), tuple(message[1]), int(message[3]))
                elif kind == "config":
                    self.ctx.settings.replace(message[1])
                    self.on_config(message[1])
                elif kind == "stop":
                    return self._drain(float(message[1]))
                elif fd is not None:  # pragma: no cover
                    socket.close(fd)
        except ChannelClosed:
            LOG.warning("query process: the serving process is gone; stopping")
            self._drain(0.0)
            return False

    def _serve(self, sock: socket.socket, address: tuple[Any, ...], number: int) -> None:
        """Serve hand-over ``number`` on a thread of its own; tell the parent when it has ended."""
        peer = (str(address[0]), int(address[1]))

        def run() -> None:
            try:
                self.acceptor.serve(sock, peer)
            finally:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
                with self._lock:
                    self._threads.discard(threading.current_thread())
                with contextlib.suppress(ChannelClosed, OSError):
                    self.channel.send("ended", number)

        thread = threading.Thread(target=run, name=f"query-{peer[0]}:{peer[1]}", daemon=True)
        with self._lock:
            self._threads.add(thread)
        thread.start()

    def _hurried(self, wait: float) -> float:
        """Wait up to ``wait`` seconds for a message during the drain: the new deadline a "stop"
        asks for (now, when the parent is gone), else none (infinity)."""
        try:
            if not self.channel.waiting(wait):
                return float("inf")
            message, fd = self.channel.recv()
        except ChannelClosed:
            return time.monotonic()
        if fd is not None:  # pragma: no cover - the parent hands nothing over while it stops
            socket.close(fd)
        return time.monotonic() + float(message[1]) if message[0] == "stop" else float("inf")

    def _report(self) -> None:
        """Tell the parent which associations are open (status page, association limit)."""
        with contextlib.suppress(ChannelClosed, OSError):
            self.channel.send("associations", self.acceptor.open_associations())

    def _drain(self, timeout: float) -> bool:
        """As the parent's drain: running C-FINDs answer Cancel, associations get ``timeout``
        seconds to end, the rest are aborted. A second "stop" meanwhile (serve's second signal)
        shortens the wait to its own timeout; the parent's end closing ends it."""
        self.ctx.stopping.set()
        deadline = time.monotonic() + timeout
        while self.acceptor.active and time.monotonic() < deadline:
            deadline = min(deadline, self._hurried(min(0.05, max(0.0, deadline - time.monotonic()))))
        aborted = self.acceptor.abort_all()
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(2.0)
        if aborted:
            LOG.warning("query process: drain timeout: aborted %d association(s)", aborted)
        events.flush()
        return not aborted
