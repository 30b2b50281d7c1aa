"""The push service inside ``serve``: the watcher's loop, the delivery workers, lease renewal.

Threads (daemons, stopped by :meth:`PushService.stop`):

- ``push-watcher``: a :class:`~dicomproxy.push.watcher.Watcher` pass every ``poll_interval``;
- ``push-worker-N`` (``max_concurrent``): claim a due item, deliver it, record the result. A
  delivery is the relay's own job (:meth:`RelayService.push`: PACS → spool → pump → onward
  C-STORE with the destination peer's compression, journalled as a ``push`` job), then the
  order/report files (:mod:`dicomproxy.reports`) on an association of their own;
- ``push-lease``: renews this node's leases every ``lease / 3`` seconds.

Re-checks (``[push] recheck_after``, ``rechecks``): a delivered item stays due for a few re-checks
(:func:`next_recheck`); a worker that claims one asks the archive that served the study for its
Number of Study Related Instances (one STUDY-level C-FIND) and compares it with the instances the
destination confirmed. Only when the PACS holds more does the usual delivery run (which excludes
the confirmed ones, so only the late images go).

Waiting is always on an event with a timeout (no busy loop): workers sleep outside the off-peak
window, while every destination is held or paused, and when nothing is due (the watcher wakes
them when it queued something). A destination that cannot be reached is *held*: its items are
not claimed until the hold ends (exponential, shared by every node in ``push_state``), with one
log line when it goes down and one when it is back.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydicom import dcmwrite
from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from dicomproxy import events
from dicomproxy.config import Config, PushConfig
from dicomproxy.errors import DicomServiceError
from dicomproxy.pacs.client import RECEIVE_SYNTAXES, PacsClient, RetrieveKey
from dicomproxy.pacs.routing import route
from dicomproxy.push.pacing import RateLimiter, in_window, next_opening, parse_window
from dicomproxy.push.queue import (
    DONE,
    DROPPED,
    FAILED,
    PAUSED_ALL,
    STATES,
    WAITING,
    Item,
    PushQueue,
    utcnow,
)
from dicomproxy.push.watcher import Watcher
from dicomproxy.relay.forward import contexts_for, open_destination, send_with_retries
from dicomproxy.relay.journal import Journal
from dicomproxy.relay.outcome import JobState
from dicomproxy.relay.recorder import InstanceRecorder
from dicomproxy.relay.request import parse_keys
from dicomproxy.relay.spool import SpooledInstance
from dicomproxy.reports.encode import ReportObject
from dicomproxy.reports.fetch import ReportUnavailable
from dicomproxy.reports.study import study_files
from dicomproxy.status import JobOutcome, Status
from dicomproxy.transcode import policy_for
from dicomproxy.view.service import name_style_for

LOG = logging.getLogger("dicomproxy.push")

DOWN_PREFIX = "down:"
PAUSED_PREFIX = "paused:"


def node_name(ae_title: str) -> str:
    """This process among the nodes sharing a journal: host, pid, AE title."""
    return f"{socket.gethostname()}:{os.getpid()}:{ae_title}"[:64]


def backoff(attempts: int, first: float, most: float) -> float:
    """Seconds before attempt ``attempts + 1``: ``first`` doubling, at most ``most``."""
    return float(min(most, first * 2 ** max(0, attempts - 1)))


def next_recheck(rechecks_left: int, push: PushConfig) -> tuple[int, float]:
    """(re-checks left, seconds until the next one) after a run of an item that ended ``done``.

    ``rechecks_left`` is the item's count when it was claimed: 0 for a delivery that starts a new
    schedule (the first one, or after a changed row, ``push retry``, ``push requeue``), which
    gets ``push.rechecks`` of them, the first ``recheck_after`` seconds later; k > 0 for a run
    that was one of the re-checks (or the delivery a re-check started, however many attempts it
    took), which leaves k - 1. Re-check n (1-based) comes ``recheck_after × 2^(n-1)`` seconds
    after the previous run: with 600 s and 2, at +10 min and +30 min. Every run consumes one, so
    the schedule is bounded whatever the PACS answers. A lowered ``rechecks`` caps the count left;
    ``recheck_after = 0`` or ``rechecks = 0`` ends every schedule."""
    if push.recheck_after <= 0 or push.rechecks <= 0:
        return 0, 0.0
    left = push.rechecks if rechecks_left <= 0 else min(rechecks_left - 1, push.rechecks)
    if left <= 0:
        return 0, 0.0
    return left, push.recheck_after * 2 ** (push.rechecks - left)


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
        self.limiters = {ae: RateLimiter(mbps) for ae, mbps in self.push.max_mbps}
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self._running: set[int] = set()
        self._lock = threading.Lock()
        self._watch_error = ""
        self._claim_error = False
        #: Local time source (tests of the window replace it).
        self.local_now: Callable[[], dt.datetime] = dt.datetime.now

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
        while not self._stop.is_set():
            try:
                queued = self.watcher.run_pass()
                if queued:
                    events.publish(events.PushQueued(queued))
                    self._wake.set()
                if self._watch_error:
                    LOG.info("push: the exam view can be read again")
                    self._watch_error = ""
            except Exception as exc:  # view or journal down: one line per change, retried
                reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
                if reason != self._watch_error:
                    LOG.warning(
                        "push: watcher pass failed (%s); retrying every %.0f s",
                        reason,
                        self.push.poll_interval,
                    )
                    self._watch_error = reason
            self._stop.wait(self.push.poll_interval)

    # --- the workers -----------------------------------------------------------------------------

    def held(self) -> tuple[bool, list[str]]:
        """(everything paused, destinations paused or held down now)."""
        states = self.queue.states()
        if PAUSED_ALL in states:
            return True, list(self.push.destinations)
        now = utcnow()
        held = []
        for ae in self.push.destinations:
            if PAUSED_PREFIX + ae in states:
                held.append(ae)
                continue
            down = states.get(DOWN_PREFIX + ae)
            if down and dt.datetime.fromisoformat(json.loads(down)["until"]) > now:
                held.append(ae)
        return False, held

    def _idle(self, seconds: float) -> None:
        self._wake.wait(max(0.05, seconds))
        self._wake.clear()

    def _work_loop(self) -> None:
        while not self._stop.is_set():
            now = self.local_now()
            if not in_window(self.window, now):
                wait = (next_opening(self.window, now) - now).total_seconds()
                self._stop.wait(min(60.0, max(1.0, wait)))
                continue
            try:
                everything, held = self.held()
                if everything or len(held) == len(self.push.destinations):
                    self._stop.wait(min(self.push.poll_interval, 5.0))
                    continue
                item = self.queue.claim(self.push.lease, held, self.push.max_takeovers)
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
        if item.recheck and not self._recheck(item):
            return
        exclude = self.queue.confirmed(item.id, item.generation)
        job: dict[str, int] = {}

        def started(job_id: int) -> None:
            job["id"] = job_id
            self.queue.record_attempt(item, job_id)

        limiter = self.limiters.get(item.destination)
        final = None
        for response in self.relay.push(
            item.study_uid,
            item.destination,
            exclude=exclude,
            on_start=started,
            throttle=limiter.take if limiter is not None else None,
            is_cancelled=self._stop.is_set,
        ):
            final = response
        job_id = job.get("id")
        view = self.journal.get(job_id) if job_id is not None else None
        row = view.row if view is not None else {}
        outcome = str(row.get("outcome", JobOutcome.FAILED))
        status = int(final.status) if final is not None else int(Status.UNABLE_TO_PROCESS)
        confirmed = len(self.queue.confirmed(item.id, item.generation))
        done_bytes = int(row.get("bytes_out") or 0)
        if outcome == JobOutcome.CANCELLED:  # we are stopping: any node takes it up again
            self.queue.release([item.id])
            return
        if outcome == JobOutcome.EMPTY and row.get("study_uids") == "[]":  # the relay resolved nothing
            LOG.info("push item %d: the study is no longer visible in the view: dropped", item.id)
            self.queue.finish(item, DROPPED, error="no longer visible in the exam view")
            self._published(item, "dropped", 0)
            return
        if status == Status.DESTINATION_UNAVAILABLE:
            self._destination_down(item.destination, str(row.get("error") or "cannot be reached"))
            # not the study's fault: the attempt is not counted
            self.queue.finish(
                item,
                WAITING,
                next_at=self._hold_until(item.destination),
                attempts=max(0, item.attempts - 1),
                error=str(row.get("error") or "")[:2000],
                confirmed=confirmed,
            )
            self._published(item, "destination-down", 0)
            return
        if outcome in (JobOutcome.SUCCESS, JobOutcome.PARTIAL) or status == Status.SUCCESS:
            self._destination_up(item.destination)
        images_ok = outcome == JobOutcome.SUCCESS or (outcome == JobOutcome.EMPTY and bool(exclude))
        if not images_ok:
            if outcome == JobOutcome.EMPTY:
                reason = "the PACS holds no instance of the study yet"
            else:
                reason = str(row.get("error") or f"{outcome} (0x{status:04X})")
            self._retry_later(item, reason, confirmed=confirmed, bytes=done_bytes)
            return
        if item.recheck and item.reports in ("sent", "none", "missing"):
            reports, reports_ok = item.reports, True  # the row did not change: its files neither
        else:
            reports, reports_ok = self._reports(item, job_id)
        if not reports_ok and item.report_attempts + 1 < self.config.reports.max_attempts:
            delay = backoff(item.report_attempts + 1, self.push.retry_delay, self.push.max_retry_delay)
            self.queue.finish(
                item,
                WAITING,
                next_at=utcnow() + dt.timedelta(seconds=delay),
                images_done=1,
                reports=reports,
                report_attempts=item.report_attempts + 1,
                confirmed=confirmed,
                bytes=done_bytes,
                attempts=max(0, item.attempts - 1),
                error="report file not available yet",
            )
            LOG.info(
                "push item %d: images delivered (job %s); a file is not available, retried in %.0f s",
                item.id,
                job_id,
                delay,
            )
            self._published(item, "images-delivered", confirmed)
            return
        if not reports_ok:
            reports = "missing"
            LOG.warning(
                "push item %d: report/order file given up after %d attempts",
                item.id,
                self.config.reports.max_attempts,
            )
        left, delay = next_recheck(item.rechecks, self.push)
        self.queue.finish(
            item,
            DONE,
            next_at=self.queue.now() + dt.timedelta(seconds=delay),
            rechecks=left,
            images_done=1,
            reports=reports,
            confirmed=confirmed,
            bytes=done_bytes,
            error="",
        )
        LOG.info(
            "push item %d: delivered to %s (job %s, %d instance(s) confirmed, files: %s)%s",
            item.id,
            item.destination,
            job_id,
            confirmed,
            reports,
            f"; re-checked in {delay:.0f} s ({left} left)" if left else "",
        )
        self._published(item, "delivered", confirmed)

    # --- re-checks of delivered studies ---------------------------------------------------------

    def _recheck(self, item: Item) -> bool:
        """A due re-check of a delivered item: True when the PACS holds more of the study than the
        destination confirmed (the caller delivers: only the new instances go); otherwise the
        item is ``done`` again with the next re-check scheduled (or none left), no job made.

        One STUDY-level C-FIND (Number of Study Related Instances) to the archive that served the
        item's last job; a PACS that does not return the count (dcmqrscp) is asked for the list
        (IMAGE level) instead, compared UID by UID. A PACS that cannot be asked uses up this
        re-check (WARNING; so does a view that cannot be read when the archive must be routed):
        the schedule stays bounded. A study no longer visible or routable is left to the
        delivery, which drops it. Re-checks turned off since the item was delivered
        (``recheck_after`` or ``rechecks`` 0): it ends, nothing asked."""
        n = max(1, self.push.rechecks - item.rechecks + 1)
        if self.push.recheck_after <= 0 or self.push.rechecks <= 0:
            LOG.debug("push item %d: re-checks are off: none left", item.id)
            self._rechecked(item, 0, 0.0)
            return False
        try:
            client = self._archive_of(item)
            if client is None:
                return True
            sent = self.queue.confirmed_images(item.id, item.generation)
            summary = client.study_summary(item.study_uid)
            if summary is None:
                in_pacs, new = 0, 0  # the PACS no longer has it: nothing to send
            elif summary.count:
                in_pacs, new = summary.count, summary.count - len(sent)
            else:  # no count from this PACS: list the study
                uids = {r.sop_instance_uid for r in client.find_instances(RetrieveKey(item.study_uid))}
                in_pacs, new = len(uids), len(uids - self.queue.confirmed(item.id, item.generation))
        except DicomServiceError as exc:
            left, delay = next_recheck(item.rechecks, self.push)
            LOG.warning(
                "push item %d: re-check %d could not be done (%s); %s",
                item.id,
                n,
                str(exc)[:200],
                f"next in {delay:.0f} s" if left else "no re-check left",
            )
            self._rechecked(item, left, delay)
            return False
        if new > 0:
            LOG.info(
                "push item %d: re-check %d: the PACS holds %d instance(s), %d confirmed: delivering the new",
                item.id,
                n,
                in_pacs,
                len(sent),
            )
            return True
        left, delay = next_recheck(item.rechecks, self.push)
        LOG.info(
            "push item %d: re-check %d: the PACS holds %d instance(s), %d confirmed: nothing new; %s",
            item.id,
            n,
            in_pacs,
            len(sent),
            f"next in {delay:.0f} s" if left else "no re-check left",
        )
        self._rechecked(item, left, delay)
        return False

    def _rechecked(self, item: Item, left: int, delay: float) -> None:
        self.queue.finish(
            item,
            DONE,
            next_at=self.queue.now() + dt.timedelta(seconds=delay),
            rechecks=left,
            touch=False,
        )
        self._published(item, "rechecked", 0)

    def _archive_of(self, item: Item) -> PacsClient | None:
        """The archive client to ask about ``item``'s study: the one that served its last job, else
        the one its view row routes to now; None when the study is not visible or not routable."""
        archives: dict[str, PacsClient] = self.relay.archives
        client = archives.get(self.queue.archive(item.id, item.generation))
        if client is not None:
            return client
        if self.relay.resolver is None:
            return None
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        identifier.StudyInstanceUID = item.study_uid
        _, routed = parse_keys(identifier, self.relay.resolver)
        if not routed:
            return None
        try:
            return archives.get(route(self.config, routed[0][1].sysid, routed[0][1].modality).name)
        except DicomServiceError:  # Unroutable
            return None

    def _retry_later(self, item: Item, reason: str, **values: Any) -> None:
        if item.attempts >= self.push.max_attempts:
            LOG.warning("push item %d: failed after %d attempts: %s", item.id, item.attempts, reason)
            self.queue.finish(item, FAILED, error=reason[:2000], **values)
            self._published(item, "failed", 0)
            return
        delay = backoff(item.attempts, self.push.retry_delay, self.push.max_retry_delay)
        LOG.info("push item %d: attempt %d: %s; next in %.0f s", item.id, item.attempts, reason, delay)
        self.queue.finish(
            item, WAITING, next_at=utcnow() + dt.timedelta(seconds=delay), error=reason[:2000], **values
        )
        self._published(item, "waiting", 0)

    def _published(self, item: Item, outcome: str, instances: int) -> None:
        events.publish(events.PushDelivered(item.id, item.destination, outcome, instances))

    # --- destination holds (shared by the nodes in push_state) -----------------------------------

    def _hold_until(self, destination: str) -> dt.datetime:
        text = self.queue.get_state(DOWN_PREFIX + destination)
        if not text:
            return utcnow() + dt.timedelta(seconds=self.push.retry_delay)
        return dt.datetime.fromisoformat(json.loads(text)["until"])

    def _destination_down(self, destination: str, reason: str) -> None:
        name = DOWN_PREFIX + destination
        text = self.queue.get_state(name)
        now = utcnow()
        if text:
            hold = json.loads(text)
            if dt.datetime.fromisoformat(hold["until"]) > now:
                return  # another worker or node already extended it
            delay = min(self.push.max_retry_delay, float(hold["delay"]) * 2)
            hold.update(until=(now + dt.timedelta(seconds=delay)).isoformat(), delay=delay)
            self.queue.set_state(name, json.dumps(hold))
            return
        delay = self.push.retry_delay
        hold = {
            "since": now.isoformat(),
            "until": (now + dt.timedelta(seconds=delay)).isoformat(),
            "delay": delay,
        }
        try:
            with self.queue.engine.begin() as conn:
                self.queue.set_state(name, json.dumps(hold), conn)
        except IntegrityError:
            return  # another node recorded it first (and logged it)
        LOG.warning(
            "push: destination %s is down (%s); its queue is held, tried again with backoff",
            destination,
            reason[:200],
        )
        events.publish(events.PushDestination(destination, up=False, reason=reason[:200]))

    def _destination_up(self, destination: str) -> None:
        name = DOWN_PREFIX + destination
        if self.queue.get_state(name) is None:
            return
        from dicomproxy.push.queue import push_state

        with self.queue.engine.begin() as conn:
            gone = conn.execute(push_state.delete().where(push_state.c.name == name)).rowcount
        if gone:
            LOG.info("push: destination %s is back", destination)
            events.publish(events.PushDestination(destination, up=True))
            self._wake.set()

    # --- order and report files ------------------------------------------------------------------

    def _view_row(self, examine_id: str) -> dict[str, Any] | None:
        table = self.view.table
        stmt = select(table).where(self.view.visible(), table.c.ExamineID == examine_id)
        for row in self.view.stream(stmt):
            if self.view.is_visible(row) and row.get("ExamineID") == examine_id:
                return row
        return None

    def _reports(self, item: Item, job_id: int | None) -> tuple[str, bool]:
        """Fetch, encode and send the row's order/report files; (state, all delivered)."""
        if not self.config.reports.enabled or job_id is None or not item.files:
            return "none", True
        row = self._view_row(item.examine_id)
        files = study_files(item.study_uid, [row]) if row is not None else []
        if not files:
            return "none", True
        style = name_style_for(self.config, item.destination)
        objects: list[ReportObject] = []
        missing = 0
        for file in files:
            try:
                objects.append(file.make(self.config.reports, style))
            except ReportUnavailable as exc:
                LOG.warning("push item %d: %s file not available: %s", item.id, file.role, exc)
                missing += 1
        confirmed = self.queue.confirmed(item.id, item.generation)
        todo = [o for o in objects if o.sop_instance_uid not in confirmed]
        if todo and not self._send_objects(item, job_id, todo):
            missing += 1
        return ("sent", True) if not missing else ("pending", False)

    def _send_objects(self, item: Item, job_id: int, objects: list[ReportObject]) -> bool:
        """C-STORE ``objects`` to the item's destination (the forwarder the relay uses), each
        journalled under the push job; True when all were confirmed."""
        peer = self.config.peer(item.destination)
        if peer is None:
            return False
        work = self.config.data_path / "spool" / f"job-{job_id:06d}-reports"
        work.mkdir(parents=True, exist_ok=True)
        files: list[SpooledInstance] = []
        try:
            for obj in objects:
                path = work / f"{obj.sop_instance_uid}.dcm"
                dcmwrite(path, obj.dataset, enforce_file_format=True)
                files.append(
                    SpooledInstance(
                        path,
                        obj.sop_class_uid,
                        obj.sop_instance_uid,
                        str(obj.dataset.file_meta.TransferSyntaxUID),
                        path.stat().st_size,
                    )
                )
            policy = policy_for(self.config, peer)
            classes = sorted({f.sop_class_uid for f in files})
            contexts = contexts_for(policy, classes, [str(ts) for ts in RECEIVE_SYNTAXES])
            try:
                forwarder = open_destination(peer, self.config.proxy, contexts, policy, work, None)
            except DicomServiceError as exc:
                LOG.warning("push item %d: files not sent: %s", item.id, exc)
                return False
            recorder = InstanceRecorder(self.journal, JobState(job_id))
            ok = True
            try:
                for f in files:
                    res = send_with_retries(
                        forwarder,
                        f,
                        self.config.proxy.retries,
                        self.config.proxy.retry_delay,
                        f"push item {item.id}",
                    )
                    ok = recorder.record(f, res, extra=True).state != "failed" and ok
            finally:
                forwarder.close()
            return ok
        finally:
            for f in files:
                f.path.unlink(missing_ok=True)
            _rmdir(work)


def _rmdir(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.rmdir()


def push_summary(service: PushService) -> list[dict[str, Any]]:
    """Per destination: items by state, paused/down (the status page's push section; no patient data)."""
    try:
        counts = service.queue.counts()
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
        }
        for d in service.push.destinations
    ]
