"""The pump of one relay job: spooled instances → look-ahead (syntax chosen and converted in the
transcoding pool) → onward C-STORE in arrival order → counted in :class:`~dicomproxy.relay.outcome.JobState`
and journalled → Pending responses to the requester.

It also rides out a C-MOVE destination that drops mid-study (reconnect with backoff for
``[proxy] reconnect_window``, Pending responses going on, the unconfirmed instance resent). Pending
responses are optional (PS3.4 C.4.2.1.4): one after a sub-operation at most every
:data:`PROGRESS_INTERVAL` seconds (and after the first and the last), and every
``pending_interval`` seconds while nothing arrives.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Generator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures import wait as wait_futures
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from pathlib import Path

from dicomproxy import events
from dicomproxy.config import Config
from dicomproxy.errors import CannotTranscode
from dicomproxy.handlers.qrservice import RetrieveResponse
from dicomproxy.relay.forward import MAX_RETRY_DELAY, Forwarder, SendResult, send_with_retries
from dicomproxy.relay.lanes import Lanes
from dicomproxy.relay.outcome import JobState
from dicomproxy.relay.recorder import InstanceRecorder
from dicomproxy.relay.reports import ReportFetch
from dicomproxy.relay.spool import End, Spool, SpooledInstance
from dicomproxy.relay.upstream import Upstream
from dicomproxy.reports.fetch import ReportUnavailable
from dicomproxy.status import JobOutcome, Status
from dicomproxy.transcode import TranscodePool, TranscodeResult
from dicomproxy.transcode.codec import ConversionFailed

LOG = logging.getLogger("dicomproxy.relay")

#: Shortest gap between two Pending responses sent after sub-operations (seconds).
PROGRESS_INTERVAL = 0.2

#: Longest wait on the conversion of the next instance before the spool is looked at again (seconds).
LOOKAHEAD_POLL = 0.05

#: Longest wait for a lane's result, or for the next instance while lanes are busy (seconds).
LANE_POLL = 0.01

#: First pause before re-opening a dropped destination; doubles up to forward.MAX_RETRY_DELAY.
RECONNECT_FIRST_DELAY = 0.5


@dataclass
class _Prepared:
    """A spooled instance in the look-ahead window, in arrival order (its syntax chosen by the pool
    worker, or by :meth:`Forwarder.plan` without a pool).

    ``plan``: None = send inline (:meth:`Forwarder.send`, no pool) or, with a ``future``, in what
    the pool worker chose and wrote (:func:`~dicomproxy.transcode.codec.convert_for`: the spooled
    file itself when it goes as held, else ``tmp``); a SendResult = planning failed (re-planned by
    ``send_with_retries``, which reports it); a syntax = send the spooled file as it is.
    """

    item: SpooledInstance
    plan: str | SendResult | None = None
    future: Future[TranscodeResult] | None = None
    tmp: Path | None = None
    pool: TranscodePool | None = None

    def discard(self) -> None:
        """Not to be sent (job stopped): cancel the conversion, or delete its file once written."""
        future, tmp = self.future, self.tmp
        if future is None or tmp is None or future.cancel():
            return
        future.add_done_callback(lambda _: tmp.unlink(missing_ok=True))


class Pump:
    """Forwards one job's instances as they arrive (see the module docstring)."""

    def __init__(
        self,
        config: Config,
        recorder: InstanceRecorder,
        pools: Callable[[], TranscodePool],
        drop_pool: Callable[[TranscodePool], None],
        pending_interval: float,
        merge_found: Callable[[JobState, float], None],
        reports: ReportFetch | None = None,
    ) -> None:
        self.config = config
        #: Counts, journals and cleans up every instance sent (the job's one recorder).
        self.recorder = recorder
        self._pools = pools
        self._drop = drop_pool
        self.pending_interval = pending_interval
        self._merge_found = merge_found
        #: The job's order/report objects, sent after the PACS's instances (``in_retrieve``).
        self.reports = reports
        #: After a run on several lanes: how many of them got their association (None: one lane).
        self.lanes_opened: int | None = None

    def run(
        self,
        state: JobState,
        spool: Spool,
        forwarder: Forwarder,
        upstream: Upstream,
        is_cancelled: Callable[[], bool],
        alive: Callable[[], bool],
        lanes: int = 1,
    ) -> Generator[RetrieveResponse, None, tuple[RetrieveResponse, JobOutcome, str]]:
        """Forward instances as they arrive; returns (final response, outcome, error).

        With a compressing policy, instances already waiting in the spool are planned ahead
        (at most 2 × workers + 2) and those needing conversion go to the process pool, so the
        cores encode while this thread sends; sending stays in arrival order. ``none`` mode
        sends one instance at a time and converts inline if it must (no pool).

        ``lanes`` > 1 (a C-MOVE destination, ``onward_associations``): the instances are sent
        on that many associations at once (:class:`~dicomproxy.relay.lanes.Lanes`), in arrival
        order of hand-out, no longer of completion.
        """
        if lanes > 1 and forwarder.can_reconnect:
            return (yield from self._run_lanes(state, spool, forwarder, upstream, is_cancelled, alive, lanes))
        pool = self._pools() if forwarder.policy.mode != "none" else None
        limit = 2 * pool.workers + 2 if pool is not None else 1
        window: deque[_Prepared] = deque()
        end: End | None = None
        dest_error = ""
        #: Times each instance's onward association was lost under it (bounded by [proxy] retries).
        losses: Counter[str] = Counter()
        last_progress = 0.0
        last_yield = time.monotonic()
        try:
            while True:
                self._merge_found(state, 0.0)
                if is_cancelled():
                    upstream.stop()
                    return state.response(Status.CANCEL), JobOutcome.CANCELLED, "cancelled by the requester"
                if not alive():
                    upstream.stop()
                    return state.response(Status.CANCEL), JobOutcome.ABORTED, "requester went away"
                if not window:
                    if end is not None:
                        break
                    item = spool.get(timeout=self.pending_interval)
                    if item is None:
                        if state.counted:
                            last_progress = last_yield = time.monotonic()
                            yield state.response(Status.PENDING)  # keeps the requester's DIMSE timer alive
                        continue
                    if isinstance(item, End):
                        end = item
                        break
                    window.append(self._prepare(forwarder, item, pool is not None))
                while end is None and len(window) < limit:  # look ahead: what already arrived
                    nxt = spool.poll()
                    if nxt is None:
                        break
                    if isinstance(nxt, End):
                        end = nxt
                        break
                    window.append(self._prepare(forwarder, nxt, pool is not None))
                head = window[0]
                if head.future is not None and not head.future.done():
                    wait_futures([head.future], timeout=min(LOOKAHEAD_POLL, self.pending_interval))
                    if not head.future.done():
                        now = time.monotonic()
                        if now - last_yield >= self.pending_interval and state.counted:
                            last_progress = last_yield = now
                            yield state.response(Status.PENDING)
                        continue
                window.popleft()
                if self._forward_one(state, forwarder, head) is None:  # destination lost mid-study
                    uid = head.item.sop_instance_uid
                    losses[uid] += 1
                    back = losses[uid] <= self.config.proxy.retries and (
                        yield from self._reconnect(state, forwarder, is_cancelled, alive)
                    )
                    if back or is_cancelled() or not alive():
                        window.appendleft(_Prepared(head.item))  # resent (converted inline if it must)
                        continue
                    self._record(state, head.item, SendResult(None, error="destination association lost"))
                if not forwarder.alive:
                    dest_error = "destination aborted the association"
                    upstream.stop()
                    break
                now = time.monotonic()
                if state.counted and (
                    now - last_progress >= PROGRESS_INTERVAL
                    or len(state.processed) == 1
                    or not state.remaining
                ):
                    last_progress = last_yield = now
                    yield state.response(Status.PENDING)
        finally:
            for left in window:
                left.discard()
        return (yield from self._finish(state, spool, forwarder, end, dest_error, is_cancelled, alive))

    def _run_lanes(
        self,
        state: JobState,
        spool: Spool,
        forwarder: Forwarder,
        upstream: Upstream,
        is_cancelled: Callable[[], bool],
        alive: Callable[[], bool],
        count: int,
    ) -> Generator[RetrieveResponse, None, tuple[RetrieveResponse, JobOutcome, str]]:
        """:meth:`run` over ``count`` onward associations: this thread reads the spool, hands the
        prepared instances out (at most one in flight per live lane), records the results and
        answers the requester; the lanes send."""
        pool = self._pools() if forwarder.policy.mode != "none" else None
        limit = max(2 * pool.workers + 2, count) if pool is not None else count
        window: deque[_Prepared] = deque()
        end: End | None = None
        dest_error = ""
        stop_reason: tuple[JobOutcome, str] | None = None
        recorded = False  # results recorded since the last Pending response
        last_progress = 0.0
        last_yield = time.monotonic()
        lanes: Lanes[_Prepared] = Lanes(
            forwarder,
            count,
            lambda fw, prepared: self._send(state, fw, prepared),
            lambda fw, stop: self._reopen_quietly(state, fw, stop),
            lambda prepared: _Prepared(prepared.item),
            self.config.proxy.retries,
            f"job {state.job_id}",
        )
        try:
            while True:
                self._merge_found(state, 0.0)
                if is_cancelled():
                    stop_reason = (JobOutcome.CANCELLED, "cancelled by the requester")
                    break
                if not alive():
                    stop_reason = (JobOutcome.ABORTED, "requester went away")
                    break
                for prepared, res in lanes.take(0):
                    self._record(state, prepared.item, res)
                    recorded = True
                if lanes.up == 0:
                    dest_error = "destination aborted the association"
                    upstream.stop()
                    break
                while end is None and len(window) < limit:  # what already arrived
                    nxt = spool.poll()
                    if nxt is None:
                        break
                    if isinstance(nxt, End):
                        end = nxt
                        break
                    window.append(self._prepare(forwarder, nxt, pool is not None))
                while window and lanes.free and (window[0].future is None or window[0].future.done()):
                    lanes.submit(window.popleft())
                now = time.monotonic()
                if state.counted and (
                    (
                        recorded
                        and (
                            now - last_progress >= PROGRESS_INTERVAL
                            or len(state.processed) == 1
                            or not state.remaining
                        )
                    )
                    or now - last_yield >= self.pending_interval
                ):
                    recorded = False
                    last_progress = last_yield = now
                    yield state.response(Status.PENDING)
                    continue
                if end is not None and not window and lanes.in_flight == 0:
                    break
                # Wait for what can move the job on: an instance for a free lane, a conversion, a result.
                if window and lanes.free and window[0].future is not None:
                    wait_futures([window[0].future], timeout=LOOKAHEAD_POLL)
                elif not window and lanes.free and end is None:
                    item = spool.get(timeout=LANE_POLL if lanes.in_flight else LOOKAHEAD_POLL)
                    if isinstance(item, End):
                        end = item
                    elif item is not None:
                        window.append(self._prepare(forwarder, item, pool is not None))
                else:
                    for prepared, res in lanes.take(LANE_POLL):
                        self._record(state, prepared.item, res)
                        recorded = True
        finally:
            if stop_reason is not None or dest_error:
                upstream.stop()
            wait = 2.0 if stop_reason is not None else self.config.proxy.dimse_timeout
            late, left = lanes.close(wait)
            for prepared, res in late:  # sent before the lanes stopped: counted like the others
                self._record(state, prepared.item, res)
            for prepared in [*left, *window]:
                prepared.discard()
            forwarder.bytes_out += lanes.bytes_out
            self.lanes_opened = count - lanes.unopened
        if stop_reason is not None:
            return state.response(Status.CANCEL), *stop_reason
        if lanes.up == 0 and not dest_error:  # the last results were the lanes' last words
            dest_error = "destination aborted the association"
        return (yield from self._finish(state, spool, forwarder, end, dest_error, is_cancelled, alive))

    def _finish(
        self,
        state: JobState,
        spool: Spool,
        forwarder: Forwarder,
        end: End | None,
        dest_error: str,
        is_cancelled: Callable[[], bool],
        alive: Callable[[], bool],
    ) -> Generator[RetrieveResponse, None, tuple[RetrieveResponse, JobOutcome, str]]:
        """After the PACS's last instance: the instance list merged, the order/report objects
        sent, every announced instance counted; the final response."""
        pacs_error = end.error if end is not None else None
        nothing_sent = not state.processed
        self._merge_found(state, max(a.dimse_timeout for a in self.config.all_archives))
        # Not after a PACS that failed before sending anything: its status is the job's answer.
        sends_reports = not dest_error and not (pacs_error is not None and nothing_sent)
        if (
            self.reports is not None
            and sends_reports
            and not (yield from self._send_reports(state, spool, forwarder, is_cancelled, alive))
        ):
            if is_cancelled():
                return state.response(Status.CANCEL), JobOutcome.CANCELLED, "cancelled by the requester"
            return state.response(Status.CANCEL), JobOutcome.ABORTED, "requester went away"
        nothing_sent = not state.processed  # (order/report objects sent count as something)
        state.count_missing()
        return state.final(pacs_error, dest_error, nothing_sent=nothing_sent)

    def _send_reports(
        self,
        state: JobState,
        spool: Spool,
        forwarder: Forwarder,
        is_cancelled: Callable[[], bool],
        alive: Callable[[], bool],
    ) -> Generator[RetrieveResponse, None, bool]:
        """The job's order/report objects (:mod:`dicomproxy.relay.reports`), one sub-operation
        each, on the association the instances went on; Pending responses go on while a file
        is still being fetched. False when the requester cancelled or went away meanwhile."""
        fetch = self.reports
        assert fetch is not None
        for index, future in enumerate(fetch.futures):
            obj = None
            while True:
                if is_cancelled() or not alive():
                    return False
                try:
                    obj = future.result(timeout=self.pending_interval)
                except FutureTimeout:
                    if state.counted:
                        yield state.response(Status.PENDING)  # the requester's DIMSE timer
                    continue
                except Exception as exc:  # ReportUnavailable, or an encoder bug: this file's failure
                    reason = exc if isinstance(exc, ReportUnavailable) else ReportUnavailable(repr(exc))
                    fetch.unavailable(index, reason)
                    LOG.warning("job %d: %s", state.job_id, fetch.errors[-1])
                    state.count_unavailable()
                break
            if obj is None:
                continue
            item, ref = fetch.spooled(obj, spool)
            self.recorder.journal.add_expected(state.job_id, [asdict(ref)])  # before it is sent (jobs retry)
            if not forwarder.alive and forwarder.can_reconnect:
                forwarder.reconnect()
            res = self._send(state, forwarder, _Prepared(item))
            self._record(
                state, item, res or SendResult(None, error="destination association lost"), extra=True
            )
            if state.counted:
                yield state.response(Status.PENDING)
        return True

    def _reopen_quietly(self, state: JobState, forwarder: Forwarder, stop: threading.Event) -> bool:
        """A lane's :meth:`_reconnect`: the same backoff and window, without Pending responses
        (the pump's thread keeps answering the requester). True when the association is back."""
        window = self.config.proxy.reconnect_window
        if window <= 0:
            return False
        started = time.monotonic()
        deadline = started + window
        delay = RECONNECT_FIRST_DELAY
        LOG.warning(
            "job %d: an onward association was lost; reconnecting for up to %.0f s", state.job_id, window
        )
        while not stop.is_set():
            if forwarder.reconnect():
                LOG.info(
                    "job %d: onward association back after %.1f s", state.job_id, time.monotonic() - started
                )
                return True
            now = time.monotonic()
            if now >= deadline:
                return False
            stop.wait(min(delay, deadline - now))
            delay = min(delay * 2, MAX_RETRY_DELAY)
        return False

    def _prepare(self, forwarder: Forwarder, item: SpooledInstance, use_pool: bool) -> _Prepared:
        """Hand ``item`` to the pool, which chooses its syntax and converts it if it must (the
        header is read there, not on this thread); no accepted context: fail it here."""
        if not use_pool:
            return _Prepared(item)
        accepted = forwarder.accepted(item.sop_class_uid)
        if not accepted:
            return _Prepared(item, forwarder.plan(item))  # the failure, without reading the file
        tmp = forwarder.converted_path(item)
        pool = self._pools()
        try:
            future = pool.submit_for(item.path, tmp, tuple(accepted), forwarder.policy)
        except BrokenProcessPool:
            self._drop(pool)
            return _Prepared(item)  # converted inline; the next instance gets a new pool
        except RuntimeError:  # the pool was shut down (the proxy is stopping)
            return _Prepared(item)
        return _Prepared(item, None, future, tmp, pool)

    def _reconnect(
        self,
        state: JobState,
        forwarder: Forwarder,
        is_cancelled: Callable[[], bool],
        alive: Callable[[], bool],
    ) -> Generator[RetrieveResponse, None, bool]:
        """Re-open a C-MOVE destination that dropped mid-study, with backoff, for up to
        ``[proxy] reconnect_window`` seconds; Pending responses go on meanwhile (every
        ``pending_interval``), so the requester does not time out. True when it is back."""
        window = self.config.proxy.reconnect_window
        started = time.monotonic()
        deadline = started + window
        delay = RECONNECT_FIRST_DELAY
        last_pending = started
        LOG.warning("job %d: destination lost mid-study; reconnecting for up to %.0f s", state.job_id, window)
        while True:
            if is_cancelled() or not alive():
                return False
            if forwarder.reconnect():
                LOG.info(
                    "job %d: destination back after %.1f s; resending what it did not confirm",
                    state.job_id,
                    time.monotonic() - started,
                )
                return True
            now = time.monotonic()
            if now >= deadline:
                LOG.warning("job %d: destination not back within %.0f s", state.job_id, window)
                return False
            pause_until = min(now + delay, deadline)
            while (left := pause_until - time.monotonic()) > 0:
                time.sleep(min(left, self.pending_interval))
                if state.counted and time.monotonic() - last_pending >= self.pending_interval:
                    last_pending = time.monotonic()
                    yield state.response(Status.PENDING)  # the requester's DIMSE timer

            delay = min(delay * 2, MAX_RETRY_DELAY)

    def _forward_one(self, state: JobState, forwarder: Forwarder, prepared: _Prepared) -> SendResult | None:
        """Send one instance and record its outcome; None when the destination association was
        lost and may be re-opened (nothing recorded: the pump reconnects and sends it again)."""
        res = self._send(state, forwarder, prepared)
        if res is not None:
            self._record(state, prepared.item, res)
        return res

    def _send(self, state: JobState, forwarder: Forwarder, prepared: _Prepared) -> SendResult | None:
        """Send one instance (nothing recorded); None as in :meth:`_forward_one`. Safe on a lane
        thread: it touches only ``forwarder`` and the instance's own files."""
        item = prepared.item
        proxy = self.config.proxy
        label = f"job {state.job_id}"
        target = prepared.plan
        # A C-MOVE destination is reconnected by the pump (Pending responses going on), not here.
        defer = forwarder.can_reconnect and proxy.reconnect_window > 0
        try:
            if prepared.future is not None:
                try:
                    converted = prepared.future.result()
                except CannotTranscode as exc:  # nothing accepted can carry it (0xC010)
                    res = SendResult(exc.status, error=str(exc))
                except ConversionFailed as exc:  # this instance's failure, never the job's
                    res = SendResult(Status.UNABLE_TO_PROCESS, exc.target, error=str(exc))
                except Exception as exc:  # the pool itself (a worker died)
                    if isinstance(exc, BrokenProcessPool) and prepared.pool is not None:
                        self._drop(prepared.pool)
                    res = SendResult(Status.UNABLE_TO_PROCESS, error=f"cannot convert: {exc}")
                else:
                    if converted.path != item.path:  # converted, not sent as held
                        events.publish(
                            events.Transcoded(state.job_id, converted.transfer_syntax, converted.seconds)
                        )
                    sent_as = (converted.path, converted.transfer_syntax)
                    res = send_with_retries(
                        forwarder, item, proxy.retries, proxy.retry_delay, label, sent_as, reconnect=not defer
                    )
            elif isinstance(target, str):  # passed through as it is held
                res = send_with_retries(
                    forwarder,
                    item,
                    proxy.retries,
                    proxy.retry_delay,
                    label,
                    (item.path, target),
                    reconnect=not defer,
                )
            else:  # no pool, or planning failed (re-planned and reported by forwarder.send)
                res = send_with_retries(
                    forwarder, item, proxy.retries, proxy.retry_delay, label, reconnect=not defer
                )
        finally:
            if prepared.tmp is not None:
                prepared.tmp.unlink(missing_ok=True)
        if defer and res.status is None and not forwarder.alive:
            return None
        return res

    def _record(self, state: JobState, item: SpooledInstance, res: SendResult, extra: bool = False) -> None:
        """One sub-operation done: through the job's recorder (counted, journalled, file dropped)."""
        self.recorder.record(item, res, extra=extra)
