"""Delivery off every other path: one thread per target, each with a bounded queue.

:meth:`Sender.submit` never blocks: a full queue drops the message (one log line). A failed attempt
is tried again ``[alerting] retries`` times with doubling back-off from ``retry_delay``; a message
that still fails is logged (one line) and given up — the process stays up. Each target has its own
:class:`RateLimit`: past ``max_per_hour`` messages in the last hour, a message is held back (logged)
and the next one delivered says how many were.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable

from dicomproxy.alerts.message import Message
from dicomproxy.alerts.targets import AlertDeliveryError, Target
from dicomproxy.config import AlertsConfig

LOG = logging.getLogger("dicomproxy.alerts")
HOUR = 3600.0


class RateLimit:
    """At most ``per_hour`` messages in any rolling hour; counts what it held back."""

    def __init__(self, per_hour: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_hour = per_hour
        self.clock = clock
        self._sent: collections.deque[float] = collections.deque()
        self.held_back = 0

    def allow(self) -> bool:
        """True: send now (counted); False: over the limit (counted as held back)."""
        now = self.clock()
        while self._sent and now - self._sent[0] >= HOUR:
            self._sent.popleft()
        if len(self._sent) >= self.per_hour:
            self.held_back += 1
            return False
        self._sent.append(now)
        return True

    def take_held_back(self) -> int:
        n, self.held_back = self.held_back, 0
        return n


class TargetWorker:
    """The thread that delivers one target's messages, in order."""

    def __init__(self, target: Target, settings: AlertsConfig) -> None:
        self.target = target
        self.name = target.config.name
        self.settings = settings
        self.limit = RateLimit(target.config.max_per_hour)
        self.queue: queue.Queue[Message | None] = queue.Queue(maxsize=settings.queue_size)
        self.delivered = 0
        self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"alerts-{self.name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, message: Message) -> None:
        try:
            self.queue.put_nowait(message)
        except queue.Full:
            LOG.warning(
                "alerts: %s: queue full, dropped %s %s", self.name, message.phase, message.incident.key
            )

    def stop(self, timeout: float) -> None:
        self._stop.set()
        with contextlib.suppress(queue.Full):  # a full queue: the worker sees _stop after its message
            self.queue.put_nowait(None)
        self._thread.join(timeout)
        self.target.close()

    def idle(self) -> bool:
        return self.queue.unfinished_tasks == 0

    def _run(self) -> None:
        while True:
            message = self.queue.get()
            try:
                if message is None or self._stop.is_set():
                    return
                self._deliver(message)
            finally:
                self.queue.task_done()

    def _deliver(self, message: Message) -> None:
        if not self.limit.allow():
            LOG.warning(
                "alerts: %s: rate limit (%d/hour) holds back %s %s",
                self.name,
                self.limit.per_hour,
                message.phase,
                message.incident.key,
            )
            return
        message = dataclasses.replace(message, suppressed=self.limit.take_held_back())
        delay = self.settings.retry_delay
        for attempt in range(self.settings.retries + 1):
            try:
                self.target.send(message)
                self.delivered += 1
                LOG.info("alerts: %s: sent %s %s", self.name, message.phase, message.incident.key)
                return
            except AlertDeliveryError as exc:
                last = str(exc)
            except Exception as exc:  # a bug in a target must not end the thread
                last = f"{type(exc).__name__}: {exc}"
            if attempt < self.settings.retries and self._stop.wait(delay):
                break
            delay *= 2
        self.failed += 1
        LOG.warning(
            "alerts: %s: %s %s not delivered after %d attempt(s): %s",
            self.name,
            message.phase,
            message.incident.key,
            attempt + 1,
            last[:300],
        )


class Sender:
    """The workers of every target; routes a message to the targets that want it."""

    def __init__(self, targets: list[Target], settings: AlertsConfig) -> None:
        self.workers = [TargetWorker(t, settings) for t in targets]

    def start(self) -> None:
        for worker in self.workers:
            worker.start()

    def submit(self, message: Message) -> int:
        """Queue ``message`` for each target that wants it; how many do."""
        n = 0
        for worker in self.workers:
            if worker.target.config.wants(message.incident.kind, message.severity):
                worker.submit(message)
                n += 1
        return n

    def wait_idle(self, timeout: float) -> bool:
        """True when every queued message has been delivered or given up (tests, stop)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(w.idle() for w in self.workers):
                return True
            time.sleep(0.02)
        return False

    def stop(self, timeout: float = 5.0) -> None:
        for worker in self.workers:
            worker.stop(timeout)
