"""The parent's side of the query process (:mod:`dicomproxy.queryproc`).

``QueryProcess.fork(child)`` (``serve``) forks the child with one end of a
:class:`~dicomproxy.queryproc.channel.Channel`; ``QueryProcess.spawn(config)`` (an in-process
Server, which has threads already) starts ``python -m dicomproxy query-process --fd N`` and sends it
the Config. Until the child says it
is ready (its exam view and C-FIND service built) and after it is gone, :meth:`QueryProcess.serve`
answers False and the caller serves the association itself (the in-process raw query acceptor):
no query is refused because the child is starting or dead. The child is not
restarted: ``serve`` may run at a lower priority by then (``[proxy] data_path_nice``) and a new
child would inherit it; the ERROR line says so, and a restart of the service brings it back.

A reader thread takes what the child sends: its :mod:`dicomproxy.events` (published here, so the
audit trail, ATNA, metrics and alerts see its C-FINDs as before), its log records (handled by this
process's logging, so one process writes the log file) and its list of open associations (the
status page, ``maximum_associations``).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from dicomproxy import events
from dicomproxy.config import Config
from dicomproxy.queryproc.channel import Channel, ChannelClosed

if TYPE_CHECKING:
    from dicomproxy.transport.raw.queries import QueryAcceptor

LOG = logging.getLogger("dicomproxy.queryproc")

#: Seconds the child gets after its drain before it is killed.
EXIT_GRACE = 5.0
#: Seconds to wait for a lost child's exit status (for the ERROR line) before killing it.
LOST_WAIT = 1.0


def wanted(config: Config) -> bool:
    """``[proxy] query_process`` where the raw query acceptor applies (``fast_path``, plain TCP:
    :func:`dicomproxy.handlers.queries.query_acceptor`)."""
    return config.proxy.query_process and config.proxy.fast_path and config.proxy.tls is None


class ChildProcess(Protocol):
    """What :class:`QueryProcess` uses of its child: a ``subprocess.Popen`` or :class:`_Forked`."""

    pid: int
    returncode: int | None

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def kill(self) -> None: ...


class _Forked:
    """:class:`ChildProcess` for a child made by ``os.fork`` (as ``subprocess.Popen`` does it)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            with contextlib.suppress(ChildProcessError):
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout or 0.0)
            time.sleep(0.02)
        return int(self.returncode or 0)

    def kill(self) -> None:
        if self.poll() is not None:  # reaped: its pid may be another process's by now
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)


class QueryProcess:
    """One child process serving C-FIND/C-ECHO-only associations (see the module docstring)."""

    def __init__(self, proc: ChildProcess, channel: Channel) -> None:
        self.proc = proc
        self.channel = channel
        self._ready = threading.Event()
        self._gone = threading.Event()
        self._lock = threading.Lock()
        #: The child's open associations: (calling AE title, (address, port)); for the status page.
        self._open: list[tuple[str, tuple[str, int]]] = []
        #: Connections handed over and not yet ended (the child's "ended"): what ``maximum_associations``
        #: counts, from the hand-over on — no moment in which a new one is in neither process's count.
        self._held: set[int] = set()
        self._handed = 0
        self._stopping = False
        #: Why the child is gone (the ERROR line's words), once it is.
        self._lost_reason: str | None = None
        #: Set when the child is found gone, before its exit status is read: no more hand-overs.
        self._losing = False
        self._reader = threading.Thread(target=self._read, name="query-process-reader", daemon=True)
        self._reader.start()

    @classmethod
    def spawn(cls, config: Config, *, verbose: bool = False) -> QueryProcess:
        """Start the child as a new interpreter (``python -m dicomproxy query-process``): safe from a
        process with threads (an in-process :class:`~dicomproxy.server.Server`, tests)."""
        channel, theirs = Channel.pair()
        try:
            proc = subprocess.Popen(  # our own interpreter and package
                [sys.executable, "-m", "dicomproxy", "query-process", "--fd", str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                close_fds=True,
            )
        finally:
            theirs.close()
        process = cls(proc, channel)
        with contextlib.suppress(ChannelClosed):  # died at once: the reader logs it
            channel.send("start", config, verbose)
        LOG.info("query process started (pid %d)", proc.pid)
        return process

    @classmethod
    def fork(cls, child: Callable[[Channel], int]) -> QueryProcess:
        """Fork the child, which runs ``child(channel)`` and exits with what it returns. For
        ``serve`` at start-up, before it starts threads of its own (a fork copies only the calling
        thread: a lock another thread held would stay locked in the child; the BLAS pool numpy may
        start at import prepares itself for a fork). Cheaper than :meth:`spawn`: the
        imported modules are shared copy-on-write — ``gc.freeze()`` first, so that no collection
        writes to their pages (docs.python.org/3/library/gc.html#gc.freeze) — measured: the child's
        private memory 18 MB instead of 138 MB, and no second start-up of the interpreter."""
        channel, theirs = Channel.pair()
        gc.freeze()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            code = 1
            try:
                channel.sock.close()
                code = child(Channel(theirs))
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        theirs.close()
        process = cls(_Forked(pid), channel)
        LOG.info("query process started (pid %d)", pid)
        return process

    @property
    def pid(self) -> int:
        return int(self.proc.pid)

    @property
    def ready(self) -> bool:
        """Serving: the child said it is ready and has not gone."""
        return self._ready.is_set() and not self._gone.is_set()

    def state(self) -> dict[str, Any]:
        """For the status page and ``/metrics`` (no patient data): ``state`` is ``starting`` (C-FIND
        served in this process until the child is ready), ``serving``, ``stopping`` or ``lost``
        (served in this process until the service restarts; ``detail`` says why)."""
        if self._stopping:
            state = "stopping"
        elif self._gone.is_set():
            state = "lost"
        else:
            state = "serving" if self._ready.is_set() else "starting"
        return {
            "pid": self.pid,
            "state": state,
            "detail": self._lost_reason if state == "lost" else None,
            "associations": self.active,
        }

    def wait_ready(self, timeout: float) -> bool:
        """Wait until the child serves (tests, benchmarks); False if it did not within ``timeout``."""
        deadline = time.monotonic() + timeout
        while not self.ready:
            if self._gone.is_set() or time.monotonic() > deadline:
                return False
            self._ready.wait(0.05)
        return True

    # --- parent → child ---------------------------------------------------------------------

    def serve(self, sock: socket.socket, address: tuple[str, int], others: int) -> bool:
        """Hand the accepted connection to the child; True if it took it (the caller then only
        closes its copy: a ``shutdown`` would end the connection for the child too). ``others``:
        associations open in this process, for the child's ``maximum_associations`` check."""
        if not self.ready or self._stopping or self._losing:
            return False
        with self._lock:
            self._handed += 1
            number = self._handed
            self._held.add(number)
        try:
            self.channel.send("serve", address, others, number, fd=sock.fileno())
        except (ChannelClosed, OSError) as exc:
            with self._lock:
                self._held.discard(number)
            self._lost(f"hand-over failed: {exc}")
            return False
        return True

    def reconfigure(self, config: Config) -> None:
        """A reloaded Config (``Settings.subscribe``): the child's next association uses it."""
        with contextlib.suppress(ChannelClosed, OSError):
            self.channel.send("config", config)

    def stop(self, timeout: float, hurry: Callable[[], bool] = lambda: False) -> bool:
        """Let the child's associations finish within ``timeout`` (then it aborts them), wait for it
        to exit; True if it ended cleanly. Its last events and log records are taken in first.
        ``hurry()`` true (serve's second stop signal): the child aborts its associations now."""
        self._stopping = True
        with contextlib.suppress(ChannelClosed, OSError):
            self.channel.send("stop", timeout)
        deadline = time.monotonic() + timeout + EXIT_GRACE
        hurried = False
        while (code := self._exited(0.1)) is None:
            if not hurried and hurry():
                hurried = True
                with contextlib.suppress(ChannelClosed, OSError):
                    self.channel.send("stop", 0.0)
            if time.monotonic() > deadline:
                LOG.error(
                    "query process (pid %d) did not stop within %.0f s: killed",
                    self.pid,
                    timeout + EXIT_GRACE,
                )
                self.proc.kill()
                self.proc.wait()
                break
        clean = code == 0
        self._reader.join(EXIT_GRACE)  # the rest of what it sent
        self.channel.close()
        return clean

    def _exited(self, wait: float) -> int | None:
        try:
            return self.proc.wait(wait)
        except subprocess.TimeoutExpired:
            return None

    # --- child → parent ---------------------------------------------------------------------

    def open_associations(self) -> list[tuple[str, tuple[str, int]]]:
        """The child's open associations (none once it is gone)."""
        with self._lock:
            return [] if self._gone.is_set() else list(self._open)

    @property
    def active(self) -> int:
        """Connections the child holds: handed over and not ended (none once it is gone)."""
        with self._lock:
            return 0 if self._gone.is_set() else len(self._held)

    def _read(self) -> None:
        reason = "closed its channel"
        try:
            while True:
                message, fd = self.channel.recv()
                if fd is not None:  # pragma: no cover - the child never sends one
                    os.close(fd)
                self._take(message)
        except ChannelClosed:
            pass
        except Exception as exc:  # a bug here must not leave queries handed to nobody
            LOG.exception("query process channel failed")
            reason = f"channel failed: {type(exc).__name__}"
        self._lost(reason)

    def _take(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "event":
            events.publish(message[1])
        elif kind == "log":
            record = logging.makeLogRecord(message[1])
            logger = logging.getLogger(record.name)
            if logger.isEnabledFor(record.levelno):
                logger.handle(record)
        elif kind == "associations":
            with self._lock:
                self._open = list(message[1])
        elif kind == "ended":
            with self._lock:
                self._held.discard(int(message[1]))
        elif kind == "ready":
            self._ready.set()
            LOG.info("query process (pid %d) serving C-FIND/C-ECHO-only associations", self.pid)
        else:
            LOG.warning("query process sent an unknown message %r", kind)

    def _lost(self, reason: str) -> None:
        """The child is gone (or unusable): serve queries here from now on. Nothing more is handed
        over from the first moment (``_losing``); :meth:`state` says ``lost`` once the reason, with
        the exit status, is logged and published."""
        with self._lock:
            if self._losing or self._gone.is_set():
                return
            self._losing = True
        if self._stopping:
            self._gone.set()
            return
        try:  # a closed channel is seen a moment before the exit status is there
            code: int | None = self.proc.wait(LOST_WAIT)
        except subprocess.TimeoutExpired:  # alive, but its channel broke: it cannot serve
            code = None
        self._lost_reason = f"{reason}{'' if code is None else f', exit code {code}'}"
        LOG.error(
            "query process (pid %d) %s: C-FIND/C-ECHO served in this process from now on "
            "(a restart of the service starts it again)",
            self.pid,
            self._lost_reason,
        )
        events.publish(  # the status page's last errors
            events.Failure(where="query process", message=f"pid {self.pid} {self._lost_reason}")
        )
        self._gone.set()  # after the line and the event: whoever sees it lost can read why
        if code is None:
            with contextlib.suppress(OSError):
                self.proc.kill()


class QueryRoute:
    """Where the intake sends a C-FIND/C-ECHO-only connection (:mod:`dicomproxy.transport.intake`):
    the query process when it serves, else this process's raw query acceptor."""

    def __init__(self, acceptor: QueryAcceptor, process: QueryProcess | None, own: Callable[[], int]) -> None:
        """``own()``: associations open in this process (the child adds its own to them)."""
        self.acceptor = acceptor
        self.process = process
        self.own = own

    def serve(self, sock: socket.socket, address: tuple[str, int]) -> bool:
        """True: handed to the child (the caller only closes its copy); False: served here, ended."""
        if self.process is not None and self.process.serve(sock, address, self.own()):
            return True
        self.acceptor.serve(sock, address)
        return False
