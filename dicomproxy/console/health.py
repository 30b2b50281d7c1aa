"""Readiness (``GET /readyz``): real checks, each named in the answer.

- ``view``: ``SELECT 1`` on the exam view's engine within ``[view].query_timeout``;
- ``pacs`` and each ``archive:NAME``: a C-ECHO succeeded within the last ``[http].echo_interval``
  (an :class:`Echoer` thread echoes every archive each interval; the result is read, never waited on);
- ``journal``: a row written and removed in one committed transaction (the database takes writes);
- ``disk``: the file system holding the data directory (spool) has ``[http].min_free_mb`` free.

The view and journal checks run when ``/readyz`` is asked, bounded by their timeouts, in one of
:data:`CHECK_WORKERS` worker threads (never on the DICOM threads): a check that hangs keeps its
worker, so hung checks never pile up more threads than that, and the next ``/readyz`` is answered
within its timeouts all the same.
"""

from __future__ import annotations

import concurrent.futures
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Column, Integer, MetaData, String, Table, delete, insert, text

from dicomproxy import events
from dicomproxy.config import Config, PacsConfig
from dicomproxy.transport.net import Remote, c_echo
from dicomproxy.transport.tls import client_tls_args

if TYPE_CHECKING:
    from dicomproxy.relay.journal import Journal
    from dicomproxy.view.repository import ExamView

#: Longest wait for one peer's C-ECHO (the status page's peers; never longer than an interval).
PEER_ECHO_TIMEOUT = 10.0
#: Longest wait for the journal's write probe.
JOURNAL_TIMEOUT = 10.0
#: How much longer than the longest connect timeout ``Echoer.stop`` waits for a C-ECHO in progress.
STOP_GRACE = 5.0
#: Threads the view and journal checks run in (see the module docstring).
CHECK_WORKERS = 2

PROBE_METADATA = MetaData()
#: Written and deleted by the journal check; empty at rest.
health_probe = Table(
    "health_probe",
    PROBE_METADATA,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("node", String(64), nullable=False),
)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail, "seconds": round(self.seconds, 3)}


class Echoer:
    """C-ECHO the PACS and every archive every ``interval`` seconds in one background thread.

    A result is fresh for two intervals and a connect timeout (one late round is not yet a
    failure); ``clock`` is the monotonic clock results are stamped and aged with.
    """

    def __init__(self, config: Config, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self.interval = config.http.echo_interval
        self._results: dict[str, tuple[float, bool, str]] = {}
        self._peers: dict[str, tuple[bool, str]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.rounds = 0

    def start(self) -> None:
        # a daemon: a process that never calls stop() (a crash path) still exits
        self._thread = threading.Thread(target=self._run, name="health-echo", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(a.connect_timeout for a in self.config.all_archives) + STOP_GRACE)

    def echo_all(self) -> None:
        for archive in self.config.all_archives:
            self._echo(archive)
        for peer in self.config.peers:  # shown on the status page; not part of readiness
            if not peer.speaks_dimse:  # a STOW-RS endpoint has no C-ECHO
                continue
            result = c_echo(
                self.config.proxy.ae_title,
                Remote(peer.ae_title, peer.host, peer.port),
                timeout=min(PEER_ECHO_TIMEOUT, self.interval),
                tls_args=client_tls_args(peer.tls, peer.host),
            )
            with self._lock:
                self._peers[peer.ae_title] = (result.ok, result.detail)
        self.rounds += 1

    def peer_checks(self) -> list[Check]:
        with self._lock:
            return [Check(f"peer:{ae}", ok, detail) for ae, (ok, detail) in self._peers.items()]

    def _echo(self, archive: PacsConfig) -> None:
        timeout = min(archive.connect_timeout, self.interval)
        result = c_echo(
            self.config.proxy.ae_title,
            Remote(archive.ae_title, archive.host, archive.port),
            timeout=timeout,
            tls_args=client_tls_args(archive.tls, archive.host),
        )
        with self._lock:
            self._results[archive.name] = (self.clock(), result.ok, result.detail)
        if not result.ok:
            events.publish(events.Failure(where="pacs", message=result.detail))

    def _run(self) -> None:
        while not self._stop.is_set():
            self.echo_all()
            if self._stop.wait(self.interval):
                return

    def checks(self) -> list[Check]:
        now = self.clock()
        out = []
        for archive in self.config.all_archives:
            name = "pacs" if archive.name == "pacs" else f"archive:{archive.name}"
            with self._lock:
                got = self._results.get(archive.name)
            if got is None:
                out.append(Check(name, False, "no C-ECHO yet"))
                continue
            when, ok, detail = got
            age = now - when
            if age > 2 * self.interval + archive.connect_timeout:
                out.append(
                    Check(name, False, f"last C-ECHO {age:.0f} s ago (interval {self.interval:.0f} s)")
                )
            else:
                out.append(Check(name, ok, detail))
        return out


class Readiness:
    """All checks for ``/readyz``."""

    def __init__(
        self, config: Config, view: ExamView | None, journal: Journal | None, echoer: Echoer
    ) -> None:
        self.config = config
        self.view = view
        self.journal = journal
        self.echoer = echoer
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=CHECK_WORKERS, thread_name_prefix="readyz"
        )
        if journal is not None:
            PROBE_METADATA.create_all(journal.engine)

    def close(self) -> None:
        """Stop at once: a hung check is left to its (idle) thread, a queued one never runs."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _timed(self, name: str, timeout: float, fn: Callable[[], str]) -> Check:
        start = time.monotonic()
        future = self._pool.submit(fn)
        try:
            detail = future.result(timeout=timeout)
            return Check(name, True, detail, time.monotonic() - start)
        except concurrent.futures.TimeoutError:
            events.publish(events.Failure(where=name, message=f"{name}: no answer within {timeout:.0f} s"))
            return Check(name, False, f"no answer within {timeout:.1f} s", time.monotonic() - start)
        except Exception as exc:
            first = (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [type(exc).__name__])[0]
            events.publish(events.Failure(where=name, message=f"{name}: {first}"))
            return Check(name, False, first, time.monotonic() - start)

    def _view(self) -> str:
        assert self.view is not None
        with self.view.engine.connect() as conn:
            conn.execute(text("SELECT 1")).fetchall()
        return "answered"

    def _journal(self) -> str:
        assert self.journal is not None
        with self.journal.engine.begin() as conn:
            res = conn.execute(insert(health_probe).values(node=self.config.proxy.ae_title))
            key = res.inserted_primary_key
            assert key is not None  # an INSERT's result
            conn.execute(delete(health_probe).where(health_probe.c.id == key.id))
        return "writable"

    def _disk(self) -> Check:
        path = self.config.data_path
        try:
            free = shutil.disk_usage(path).free
        except OSError as exc:
            return Check("disk", False, f"{path}: {exc.strerror or exc}")
        need = self.config.http.min_free_mb * 1024 * 1024
        detail = f"{free / 1024**3:.1f} GiB free at {path} (minimum {self.config.http.min_free_mb} MiB)"
        return Check("disk", free >= need, detail)

    def run(self) -> tuple[bool, list[Check]]:
        checks: list[Check] = []
        if self.view is not None:
            checks.append(self._timed("view", self.config.view.query_timeout, self._view))
        else:
            checks.append(Check("view", False, "exam view not configured"))
        checks.extend(self.echoer.checks())
        if self.journal is not None:
            checks.append(self._timed("journal", JOURNAL_TIMEOUT, self._journal))
        else:
            checks.append(Check("journal", False, "journal not configured"))
        checks.append(self._disk())
        return all(c.ok for c in checks), checks


#: The states of ``serve``'s query process (:meth:`dicomproxy.queryproc.parent.QueryProcess.state`)
#: and what each means for C-FIND (the status page's row, the ``/metrics`` state set).
QUERY_PROCESS_STATES = {
    "starting": "starting: C-FIND/C-ECHO served in serve until it is ready",
    "serving": "serving C-FIND/C-ECHO-only associations",
    "stopping": "stopping with the service",
    "lost": "gone: C-FIND/C-ECHO served in serve until the service is restarted",
}


def query_process_check(state: dict[str, Any]) -> Check:
    """The status page's row for ``serve``'s query process (docs/operations.md "Two processes"):
    failing only when it is lost — queries are still answered, by ``serve`` at its lower priority."""
    name = state["state"]
    detail = f"pid {state['pid']} {QUERY_PROCESS_STATES.get(name, name)}"
    if name == "serving":
        detail += f" ({state['associations']} open)"
    if state.get("detail"):
        detail += f" ({state['detail']})"
    return Check("query process", name != "lost", detail)
