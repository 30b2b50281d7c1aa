"""The push service inside ``serve``: the watcher's loop, the delivery workers, lease renewal.

Threads (daemons, stopped by :meth:`PushService.stop`):

- ``push-watcher``: a :class:`~dicomproxy.push.watcher.Watcher` pass every ``poll_interval``;
- ``push-worker-N`` (``max_concurrent``): claim a due item, deliver it, record the result. A
  delivery is the relay's own job (:meth:`RelayService.push`: PACS → spool → pump → onward
  C-STORE with the destination peer's compression, journalled as a ``push`` job), then the
  order/report files (:mod:`dicomproxy.push.files`): a transfer of their own on the relay's engine;
- ``push-lease``: renews this node's leases every ``lease / 3`` seconds.

What the item becomes after its job is decided in :mod:`dicomproxy.push.decide` (pure); a due
re-check of a delivered study is :mod:`dicomproxy.push.recheck`; destination holds and pauses
are :mod:`dicomproxy.push.holds`. This module runs the threads and applies the decisions.

Waiting is always on an event with a timeout (no busy loop): workers sleep outside the off-peak
window, while every destination is held or paused, and when nothing is due (the watcher wakes
them when it queued something). A destination that cannot be reached is *held*: its items are
not claimed until the hold ends (exponential, shared by every node in ``push_state``), with one
log line when it goes down and one when it is back.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from dicomproxy import events
from dicomproxy.config import Config
from dicomproxy.corrections.store import STATES as CORRECTION_STATES
from dicomproxy.corrections.store import CorrectionStore
from dicomproxy.push.committing import CommitmentWait, commitment_ledger
from dicomproxy.push.decide import (
    DROP,
    HOLD,
    RELEASE,
    RETRY,
    JobResult,
    after_failure,
    after_files,
    after_job,
)
from dicomproxy.push.files import ItemFiles
from dicomproxy.push.holds import DOWN_PREFIX, PAUSED_PREFIX, DestinationHolds
from dicomproxy.push.jobrun import ItemJobs
from dicomproxy.push.pacing import RateLimiter, in_window, next_opening, parse_window
from dicomproxy.push.queue import (
    BACKFILL,
    COMMITTING,
    DONE,
    DROPPED,
    LIVE,
    STATES,
    WAITING,
    Item,
    PushQueue,
    utcnow,
)
from dicomproxy.push.recheck import Rechecks
from dicomproxy.push.watcher import Watcher
from dicomproxy.relay.journal import Journal, node_name

#: ``DOWN_PREFIX`` and ``PAUSED_PREFIX`` live in :mod:`dicomproxy.push.holds`; named here too for
#: the ``push`` CLI, which imports them from this module.
__all__ = ["DOWN_PREFIX", "PAUSED_PREFIX", "PushService", "node_name", "push_summary"]

LOG = logging.getLogger("dicomproxy.push")


class PushService:
    """Push mode for one serving process (``[push] enabled``)."""

    def __init__(self, config: Config, view: Any, journal: Journal, relay: Any) -> None:
        self.config = config
        self.push = config.push
        self.view = view
        self.journal = journal
        self.relay = relay
        self.queue = PushQueue(journal.engine, node_name(config.proxy.ae_title))
        self.watcher = Watcher(config, view, self.queue)
        self.window = parse_window(self.push.window)
        #: The relay's push job of an item, paced (``max_mbps``, ``backfill_mbps``, ``[[bandwidth]]``).
        self.jobs = ItemJobs(config, journal, relay, self.queue)
        self.holds = DestinationHolds(self.queue, self.push)
        self.rechecks = Rechecks(config, self.queue, relay)
        self.files = ItemFiles(config, view, journal, self.queue, relay)
        self.commitments = CommitmentWait(config, self.queue, commitment_ledger(config, journal))
        #: Corrections after delivery (their own service, :mod:`dicomproxy.corrections`): counts only.
        self.corrections = CorrectionStore(journal.engine, self.queue.node)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self._running: set[int] = set()
        self._lock = threading.Lock()
        self._claim_error = False
        #: Local time source (tests of the window replace it).
        self.local_now: Callable[[], dt.datetime] = dt.datetime.now

    def reconfigure(self, config: Config) -> None:
        """A reload (docs/operations.md, Reload): the next watcher pass reads the new filters, the
        next claim the window and holds, the next job the peers and ``max_mbps``; a running job
        keeps the rate limiter it started with. Threads and the watermark stay as started."""
        if config.push == self.push and config.peers == self.config.peers:
            return
        self.config, self.push = config, config.push
        self.window = parse_window(self.push.window)
        self.jobs.reconfigure(config.push)
        for part in (self.watcher, self.rechecks):
            part.config, part.push = config, config.push
        self.holds.push = config.push
        self.files.config = config
        self.commitments.config = config
        self._wake.set()

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        LOG.info(
            "push: to %s, every %g s%s%s",
            ", ".join(self.push.destinations),
            self.push.poll_interval,
            f", window {self.push.window}" if self.push.window else "",
            "".join(f", {ae} ≤ {mbps:g} Mbit/s" for ae, mbps in self.push.max_mbps),
        )
        self._spawn("push-watcher", self._watch_loop)
        for i in range(self.push.max_concurrent):
            self._spawn(f"push-worker-{i}", self._work_loop)
        for i in range(self.push.backfill_concurrent):
            self._spawn(f"push-backfill-{i}", lambda: self._work_loop(BACKFILL))
        self._spawn("push-lease", self._lease_loop)

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop claiming; running deliveries are cancelled (their items due again for any node)."""
        self._stop.set()
        self._wake.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.1, deadline - time.monotonic()))
        with self._lock:
            left = list(self._running)
        if left:
            try:
                self.queue.release(left)
            except SQLAlchemyError as exc:
                LOG.warning("push: could not release %d item(s) at stop: %s", len(left), exc)

    # --- the watcher -----------------------------------------------------------------------------

    def _watch_loop(self) -> None:
        def after(queued: int | None) -> None:
            self.commitments.settle()
            if queued:
                events.publish(events.PushQueued(queued))
                self._wake.set()

        self.watcher.loop(self._stop, after)

    # --- the workers -----------------------------------------------------------------------------

    @property
    def limiters(self) -> dict[str, RateLimiter]:
        """``[push] max_mbps``: each destination's bucket on this node."""
        return self.jobs.limiters

    def held(self) -> tuple[bool, list[str]]:
        """(everything paused, destinations paused or held down now)."""
        return self.holds.held()

    def _idle(self, seconds: float) -> None:
        self._wake.wait(max(0.05, seconds))
        self._wake.clear()

    def _work_loop(self, lane: str = LIVE) -> None:
        while not self._stop.is_set():
            now = self.local_now()
            if not in_window(self.window, now):
                wait = (next_opening(self.window, now) - now).total_seconds()
                self._stop.wait(min(60.0, max(1.0, wait)))
                continue
            try:
                everything, held = self.holds.held(lane)
                if lane == BACKFILL and not everything and self.queue.live_busy(self.queue.now()):
                    everything = True  # live exams first: history waits while one is due or running
                if everything or len(held) == len(self.push.destinations):
                    self._stop.wait(min(self.push.poll_interval, 5.0))
                    continue
                item = self.queue.claim(self.push.lease, held, self.push.max_takeovers, lane)
            except SQLAlchemyError as exc:  # journal down: one line when it fails, one when it is back
                with self._lock:
                    first, self._claim_error = not self._claim_error, True
                if first:
                    LOG.warning(
                        "push: journal error while claiming (%s); retrying", str(exc).splitlines()[0][:200]
                    )
                self._stop.wait(self.push.poll_interval)
                continue
            with self._lock:
                recovered, self._claim_error = self._claim_error, False
            if recovered:
                LOG.info("push: the journal answers again")
            if item is None:
                self._idle(self.push.poll_interval)
                continue
            with self._lock:
                self._running.add(item.id)
            try:
                self.deliver(item)
            except Exception:
                LOG.exception("push item %d: delivery failed unexpectedly", item.id)
                try:
                    self._retry_later(item, "internal error (see the log)")
                except Exception:  # the journal too: the lease expires and the item is taken again
                    LOG.warning("push item %d: left to its lease (journal unavailable)", item.id)
            finally:
                with self._lock:
                    self._running.discard(item.id)

    def _lease_loop(self) -> None:
        while not self._stop.wait(self.push.lease / 3):
            with self._lock:
                ids = list(self._running)
            try:
                if ids and self.queue.renew(ids, self.push.lease) < len(ids):
                    LOG.warning("push: a lease was lost (another node took an item over)")
            except SQLAlchemyError as exc:
                LOG.warning("push: lease renewal failed: %s", str(exc).splitlines()[0][:200])

    # --- one delivery ----------------------------------------------------------------------------

    def deliver(self, item: Item) -> None:
        """Send ``item``'s study (what the destination has not confirmed), then its files; for a
        re-check, only when the PACS holds more than the destination confirmed."""
        if item.recheck and not self.rechecks.run(item):
            return
        result = self.jobs.run(item, self._stop.is_set)
        verdict = after_job(result)
        if verdict.step == RELEASE:  # we are stopping: any node takes it up again
            self.queue.release([item.id])
            return
        if verdict.step == DROP:
            LOG.info("push item %d: the study is no longer visible in the view: dropped", item.id)
            self.queue.finish(item, DROPPED, error=verdict.reason)
            self._published(item, "dropped", 0)
            return
        if verdict.step == HOLD:
            self.holds.down(item.destination, verdict.reason)
            # not the study's fault: the attempt is not counted
            self.queue.finish(
                item,
                WAITING,
                next_at=self.holds.until(item.destination),
                attempts=max(0, item.attempts - 1),
                error=result.error[:2000],
                confirmed=result.confirmed,
            )
            self._published(item, "destination-down", 0)
            return
        if verdict.destination_up and self.holds.up(item.destination):
            self._wake.set()
        if verdict.step == RETRY:
            self._retry_later(item, verdict.reason, confirmed=result.confirmed, bytes=result.bytes)
            return
        self._deliver_files(item, result)

    def _deliver_files(self, item: Item, result: JobResult) -> None:
        """The images are delivered: the files, then ``done`` (re-checks scheduled), or ``waiting``
        for a file that is not available yet."""
        if item.recheck and item.reports in ("sent", "none", "missing"):
            reports, reports_ok = item.reports, True  # the row did not change: its files neither
        else:
            reports, reports_ok = self.files.send(item, result.job_id)
        after = after_files(item, reports, reports_ok, self.config.reports.max_attempts, self.push)
        if after.state == WAITING:
            self.queue.finish(
                item,
                WAITING,
                next_at=utcnow() + dt.timedelta(seconds=after.delay),
                images_done=1,
                reports=after.reports,
                report_attempts=item.report_attempts + 1,
                confirmed=result.confirmed,
                bytes=result.bytes,
                attempts=max(0, item.attempts - 1),
                error="report file not available yet",
            )
            LOG.info(
                "push item %d: images delivered (job %s); a file is not available, retried in %.0f s",
                item.id,
                result.job_id,
                after.delay,
            )
            self._published(item, "images-delivered", result.confirmed)
            return
        if after.gave_up:
            LOG.warning(
                "push item %d: report/order file given up after %d attempts",
                item.id,
                self.config.reports.max_attempts,
            )
        # to a destination that commits: `committing` until it has (push/committing.py)
        committing = self.commitments.stored(item.destination, result.job_id)
        self.queue.finish(
            item,
            COMMITTING if committing else DONE,
            next_at=self.queue.now() + dt.timedelta(seconds=0 if committing else after.delay),
            rechecks=after.rechecks,
            images_done=1,
            reports=after.reports,
            confirmed=result.confirmed,
            bytes=result.bytes,
            error="",
        )
        LOG.info(
            "push item %d: %s %s (job %s, %d instance(s) confirmed, files: %s)%s",
            item.id,
            "stored, awaiting the storage commitment of" if committing else "delivered to",
            item.destination,
            result.job_id,
            result.confirmed,
            after.reports,
            _recheck_note(after.delay, after.rechecks, committing),
        )
        self._published(item, "stored" if committing else "delivered", result.confirmed)

    def _retry_later(self, item: Item, reason: str, **values: Any) -> None:
        state, delay = after_failure(item.attempts, self.push)
        if state != WAITING:
            LOG.warning("push item %d: failed after %d attempts: %s", item.id, item.attempts, reason)
            self.queue.finish(item, state, error=reason[:2000], **values)
            self._published(item, "failed", 0)
            return
        LOG.info("push item %d: attempt %d: %s; next in %.0f s", item.id, item.attempts, reason, delay)
        self.queue.finish(
            item, WAITING, next_at=utcnow() + dt.timedelta(seconds=delay), error=reason[:2000], **values
        )
        self._published(item, "waiting", 0)

    def _published(self, item: Item, outcome: str, instances: int) -> None:
        events.publish(events.PushDelivered(item.id, item.destination, outcome, instances))


def _recheck_note(delay: float, left: int, committing: bool) -> str:
    """The delivered line's re-check schedule (from when it is ``done``, for a ``committing`` item)."""
    return (
        f"; re-checked {'once done, +' if committing else 'in'} {delay:.0f} s ({left} left)" if left else ""
    )


def push_summary(service: PushService) -> list[dict[str, Any]]:
    """Per destination: items by state, paused/down (the status page's push section; no patient data)."""
    try:
        counts = service.queue.counts()
        corrections = service.corrections.by_destination()
        pending = service.queue.rechecks_pending()
        everything, held = service.held()
    except SQLAlchemyError:
        return []
    return [
        {
            "destination": d,
            "held": everything or d in held,
            **{s: counts.get((d, s), 0) for s in STATES},
            "recheck": pending.get(d, (0, None))[0],  # of ``done``: a re-check for late images to come
            # corrections after delivery (IOCM) by state: warned | due | running | done | failed
            "corrections": corrections.get(d, dict.fromkeys(CORRECTION_STATES, 0)),
        }
        for d in service.push.destinations
    ]
