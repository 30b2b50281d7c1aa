"""The alerts of one serving process: evaluate the conditions on a timer (and at once when an event
says something changed), tell a person once when an incident starts and once when it ends.

Runs in its own thread (``alerts``); the DICOM code only publishes its events
(:mod:`dicomproxy.events`), which wake this thread — nothing here runs on a DICOM thread, and the
messages leave through :class:`~dicomproxy.alerts.sender.Sender`'s own threads.
"""

from __future__ import annotations

import datetime as dt
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from dicomproxy import events
from dicomproxy.alerts import conditions
from dicomproxy.alerts.decide import decide
from dicomproxy.alerts.message import Incident, Phase, message
from dicomproxy.alerts.sender import Sender
from dicomproxy.alerts.store import IncidentStore
from dicomproxy.alerts.targets import build_target
from dicomproxy.config import Config
from dicomproxy.console.health import Echoer, Readiness

LOG = logging.getLogger("dicomproxy.alerts")

#: The job failure rate is read at most this often per ``failure_window`` (a scan of the jobs ended in
#: the window: once a minute with the default 15 minutes), its last answer kept in between.
JOB_RATE_READS = 15

#: Events after which the conditions are evaluated at once (not at the next interval).
WAKING = (events.PushDestination, events.PushDelivered, events.CommitmentAnswered, events.JobFinished)


def node_label(config: Config) -> str:
    """This node in messages and in its readiness incidents' keys (stable across restarts)."""
    return config.alerts.node or f"{socket.gethostname()}/{config.proxy.ae_title}"


class AlertService:
    """Conditions → incidents → messages, for one process (``serve``)."""

    def __init__(
        self,
        config: Config,
        ctx: Any,
        readiness: Readiness | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        query_process: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        """``query_process``: the state of ``serve``'s query process when it runs one (the
        ``query-process`` incident)."""
        self.config = config
        self.settings = config.alerts
        self.ctx = ctx
        self.clock = clock
        self.node = node_label(config)
        self.sender = Sender([build_target(t) for t in self.settings.targets], self.settings)
        journal = ctx.journal
        self.store = IncidentStore(journal.engine if journal is not None else None, self.node)
        self._own_echoer: Echoer | None = None
        if readiness is None and self.wanted("readiness"):
            self._own_echoer = Echoer(config)
            readiness = Readiness(config, ctx.view, journal, self._own_echoer)
        self.readiness = readiness
        self.tracker = conditions.ReadinessTracker(self.settings.readiness_after, self.node, clock)
        self.query_process = query_process
        self._audit: tuple[float, list[Incident]] | None = None
        self._job_rate: tuple[float, list[Incident]] | None = None
        self._reported: set[str] = set()  # sources whose failure was logged (one line each)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._tick_lock = threading.Lock()  # the thread's rounds and a caller's (tests) one at a time
        self.rounds = 0

    def wanted(self, kind: str) -> bool:
        return any(kind in t.incidents for t in self.settings.targets)

    # --- lifecycle ---

    def start(self) -> None:
        self.sender.start()
        if self._own_echoer is not None:
            self._own_echoer.start()
        events.subscribe(self.on_event)
        self._thread = threading.Thread(target=self._run, name="alerts", daemon=True)
        self._thread.start()
        LOG.info("alerts: %d target(s), node %s", len(self.sender.workers), self.node)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop evaluating; messages already queued get up to ``timeout`` seconds to leave. Open
        incidents stay open in the journal: the next start (or another node) ends them."""
        self._stop.set()
        self._wake.set()
        events.unsubscribe(self.on_event)
        if self._thread is not None:
            self._thread.join(timeout)
        if self._own_echoer is not None:
            self._own_echoer.stop()
            if self.readiness is not None:
                self.readiness.close()
        self.sender.wait_idle(timeout)
        self.sender.stop(timeout)

    def on_event(self, event: events.Event) -> None:
        if isinstance(event, WAKING):
            self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # a bug here must not end the alerts for good
                LOG.exception("alerts: evaluation failed")
            self._wake.wait(self.settings.interval)
            self._wake.clear()

    # --- one round ---

    def tick(self) -> None:
        """Evaluate every condition once; open and end incidents; queue their messages."""
        with self._tick_lock:
            self._tick()

    def _tick(self) -> None:
        # The open incidents are read BEFORE the conditions: another node may end an incident
        # between the two reads (it saw the condition end). Read after, a condition this node saw
        # just before it ended would find the incident closed and open it again — a second start
        # message (seen in CI with two nodes). Read before, the incident still counts as open
        # this round, and next round the condition is seen ended (the shared journal's rows).
        open_keys = self.store.open_keys()
        active, answered = self.evaluate()

        def judged(key: str) -> bool:  # another node's own incidents are that node's to end
            kind, _, subject = key.partition(":")
            if kind == "readiness":
                return "readiness" in answered and key.endswith(f"@{self.node}")
            if kind == "query-process":
                return kind in answered and subject == self.node
            return kind in answered

        to_open, to_end = decide(active, open_keys, judged)
        for incident in to_open:
            if self.store.open(incident):
                self.sender.submit(message(self.config, self.node, Phase.START, incident))
        for key in to_end:
            if self.store.close(key):
                self.sender.submit(message(self.config, self.node, Phase.END, conditions.ended(key)))
        self.rounds += 1

    def evaluate(self) -> tuple[dict[str, Incident], set[str]]:
        """The incidents that hold now, and the kinds whose source answered."""
        found: list[Incident] = []
        answered: set[str] = set()
        for kind, source in self._sources():
            if not self.wanted(kind):
                continue
            try:
                found.extend(source())
            except Exception as exc:
                if kind not in self._reported:
                    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                    LOG.warning("alerts: cannot evaluate %s (%s); its incidents wait", kind, first[:200])
                    self._reported.add(kind)
                continue
            self._reported.discard(kind)
            answered.add(kind)
        return {i.key: i for i in found}, answered

    def _sources(self) -> list[tuple[str, Callable[[], list[Incident]]]]:
        out: list[tuple[str, Callable[[], list[Incident]]]] = []
        push, journal = self.ctx.push, self.ctx.journal
        if push is not None:
            out.append(("destination-held", self._held))
            out.append(("push-failed", self._push_failed))
        if self.ctx.commitments is not None:
            out.append(("commitment", self._commitment))
        if journal is not None:
            out.append(("job-failures", self._job_failures))
            if self.config.audit.enabled:
                out.append(("audit-chain", self._audit_chain))
        if self.readiness is not None:
            out.append(("readiness", self._readiness))
        # a node without a query process answers too: it ends what its last run (with one) left open
        state = self.query_process
        out.append(
            ("query-process", lambda: conditions.query_process_lost(state() if state else None, self.node))
        )
        return out

    def _held(self) -> list[Incident]:
        down = self.ctx.push.holds.down_since()
        return conditions.held(down, self.settings.held_after, conditions.naive_utcnow())

    def _push_failed(self) -> list[Incident]:
        queue = self.ctx.push.queue
        counts = queue.counts()
        if not any(state == "failed" and n for (_, state), n in counts.items()):
            return []
        return conditions.push_failed(counts, queue.items(state="failed", limit=200))

    def _commitment(self) -> list[Incident]:
        window = self.settings.failure_window
        return conditions.commitment(self.ctx.commitments.summary(hours=window / 3600), window)

    def _job_failures(self) -> list[Incident]:
        now, window = self.clock(), self.settings.failure_window
        if self._job_rate is None or now - self._job_rate[0] >= window / JOB_RATE_READS:
            since = conditions.naive_utcnow() - dt.timedelta(seconds=window)
            self._job_rate = (
                now,
                conditions.job_failures(self.ctx.journal.ended_since(since), self.settings),
            )
        return self._job_rate[1]

    def _audit_chain(self) -> list[Incident]:
        now = self.clock()
        if self._audit is None or now - self._audit[0] >= self.settings.audit_interval:
            from dicomproxy.audit.trail import AuditTrail

            result = AuditTrail(self.ctx.journal.engine, self.config.audit.hash).verify()
            self._audit = (now, conditions.audit_broken(result.ok, result.broken_at))
        return self._audit[1]

    def _readiness(self) -> list[Incident]:
        assert self.readiness is not None
        _, checks = self.readiness.run()
        return self.tracker.update([(c.name, c.ok) for c in checks])
