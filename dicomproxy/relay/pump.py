"""The pump of one relay job: spooled instances → look-ahead (syntax chosen and converted in the
transcoding pool) → onward C-STORE in arrival order, on one association or several
(``onward_associations``) → each result through the job's
:class:`~dicomproxy.relay.recorder.InstanceRecorder` → Pending responses to the requester.

:meth:`Pump.run` is one thin loop: it takes a snapshot (:class:`~dicomproxy.relay.pumpstep.PumpView`),
asks :func:`~dicomproxy.relay.pumpstep.next_step` what to do, and does it. The decisions are pure and
tested without sockets; the loop only moves instances between the spool, the conversion pool and
the onward associations (:class:`~dicomproxy.relay.sending.InlineLane` for one, sending on this
thread; :class:`~dicomproxy.relay.lanes.Lanes` for several, one thread each).

It also rides out a C-MOVE destination that drops mid-study: one association is re-opened here with
backoff for ``[proxy] reconnect_window`` while Pending responses go on, and the unconfirmed instance
is resent; a lane re-opens its own.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Generator
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures import wait as wait_futures
from dataclasses import asdict, dataclass, field

from dicomproxy.config import Config
from dicomproxy.relay.batches import BatchLane
from dicomproxy.relay.destinations import Destination
from dicomproxy.relay.forward import SendResult
from dicomproxy.relay.lanes import Lanes
from dicomproxy.relay.outcome import JobState
from dicomproxy.relay.pumpstep import PumpView, Step, next_step
from dicomproxy.relay.recorder import InstanceRecorder
from dicomproxy.relay.reports import ReportFetch
from dicomproxy.relay.response import RetrieveResponse
from dicomproxy.relay.sending import InlineLane, InstanceSender, Prepared
from dicomproxy.relay.spool import End, Spool
from dicomproxy.relay.upstream import Upstream
from dicomproxy.reports.fetch import ReportUnavailable
from dicomproxy.status import JobOutcome, Status
from dicomproxy.transcode import TranscodePool

LOG = logging.getLogger("dicomproxy.relay")

#: Longest wait on the conversion of the next instance before the spool is looked at again (seconds).
LOOKAHEAD_POLL = 0.05

#: Longest wait for a lane's result, or for the next instance while lanes are busy (seconds).
LANE_POLL = 0.01

Ending = tuple[RetrieveResponse, JobOutcome, str]


@dataclass
class _Run:
    """The loop's own state between steps (what :class:`PumpView` is made from)."""

    window: deque[Prepared] = field(default_factory=deque)
    end: End | None = None
    recorded: bool = False
    sent_into_loss: bool = False
    last_progress: float = 0.0
    last_pending: float = field(default_factory=time.monotonic)
    #: Times each instance's onward association was lost under it (bounded by [proxy] retries).
    losses: Counter[str] = field(default_factory=Counter)


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
        self.sender = InstanceSender(config.proxy, pools, drop_pool, recorder.state.job_id)
        self._pools = pools
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
        forwarder: Destination,
        upstream: Upstream,
        is_cancelled: Callable[[], bool],
        alive: Callable[[], bool],
        lanes: int = 1,
    ) -> Generator[RetrieveResponse, None, Ending]:
        """Forward instances as they arrive; returns (final response, outcome, error).

        With a compressing policy, instances already waiting in the spool are planned ahead
        (at most 2 × workers + 2) and those needing conversion go to the process pool, so the
        cores encode while this thread sends; sending stays in order of hand-out. ``none`` mode
        sends one instance at a time and converts inline if it must (no pool). ``lanes`` > 1
        (a C-MOVE destination, ``onward_associations``): that many associations at once.
        """
        count = lanes if lanes > 1 and forwarder.can_reconnect else 1
        pool = self._pools() if forwarder.policy.mode != "none" else None
        limit = max(2 * pool.workers + 2, count) if pool is not None else count
        onward = self._onward(state, forwarder, count)
        run = _Run()
        dest_error = ""
        stop: tuple[JobOutcome, str] | None = None
        try:
            while True:
                self._merge_found(state, 0.0)
                self._record(onward.take(0), run)
                if run.end is None:
                    self._fill(run, spool, forwarder, pool is not None, limit)
                step = next_step(self._view(state, run, onward, is_cancelled, alive), self.pending_interval)
                if step is Step.SUBMIT:
                    onward.submit(run.window.popleft())
                    run.sent_into_loss = isinstance(onward, InlineLane) and onward.up == 0
                elif step is Step.PENDING:
                    run.recorded = False
                    run.last_progress = run.last_pending = time.monotonic()
                    yield state.response(Status.PENDING)
                elif step is Step.WAIT:
                    self._wait(run, spool, onward, forwarder, pool is not None, state.counted)
                elif step is Step.RECONNECT:
                    assert isinstance(onward, InlineLane)
                    yield from self._recover(state, run, onward, is_cancelled, alive)
                elif step is Step.CANCELLED:
                    stop = (JobOutcome.CANCELLED, "cancelled by the requester")
                    break
                elif step is Step.ABORTED:
                    stop = (JobOutcome.ABORTED, "requester went away")
                    break
                elif step is Step.DESTINATION_LOST:
                    dest_error = "destination aborted the association"
                    break
                else:  # Step.FINISH
                    break
        finally:
            if stop is not None or dest_error:
                upstream.stop()
            late, left = onward.close(2.0 if stop is not None else self.config.proxy.dimse_timeout)
            self._record(late, run)  # sent before the lanes stopped: counted like the others
            for prepared in [*left, *run.window]:
                prepared.discard()
            if isinstance(onward, Lanes):
                forwarder.bytes_out += onward.bytes_out
                self.lanes_opened = count - onward.unopened
        if stop is not None:
            return state.response(Status.CANCEL), *stop
        if onward.up == 0 and not dest_error:  # the last results were the lanes' last words
            dest_error = "destination aborted the association"
        return (yield from self._finish(state, spool, forwarder, run.end, dest_error, is_cancelled, alive))

    def _onward(
        self, state: JobState, forwarder: Destination, count: int
    ) -> InlineLane | Lanes[Prepared] | BatchLane:
        """The job's onward associations: ``forwarder`` alone, or ``count`` lanes beside it; a
        destination that takes several instances per request gets them in batches (STOW-RS)."""
        if forwarder.max_batch > 1:
            return BatchLane(forwarder, self.sender.send_batch)
        if count == 1:
            return InlineLane(forwarder, self.sender.send)
        return Lanes(
            forwarder,
            count,
            self.sender.send,
            self.sender.reopen_quietly,
            Prepared.again,
            self.config.proxy.retries,
            f"job {state.job_id}",
        )

    def _view(
        self,
        state: JobState,
        run: _Run,
        onward: InlineLane | Lanes[Prepared] | BatchLane,
        is_cancelled: Callable[[], bool],
        alive: Callable[[], bool],
    ) -> PumpView:
        now = time.monotonic()
        return PumpView(
            cancelled=is_cancelled(),
            alive=alive(),
            lanes_up=onward.up,
            reconnect_wanted=isinstance(onward, InlineLane) and onward.lost is not None,
            sent_into_loss=run.sent_into_loss,
            window=len(run.window),
            head_ready=bool(run.window) and run.window[0].ready,
            free=onward.free,
            in_flight=onward.in_flight,
            end=run.end is not None,
            counted=state.counted,
            recorded=run.recorded,
            first_or_last=len(state.processed) == 1 or not state.remaining,
            since_progress=now - run.last_progress,
            since_pending=now - run.last_pending,
        )

    def _record(self, results: list[tuple[Prepared, SendResult]], run: _Run) -> None:
        for prepared, res in results:
            self.recorder.record(prepared.item, res)
            run.recorded = True

    def _fill(self, run: _Run, spool: Spool, forwarder: Destination, use_pool: bool, limit: int) -> None:
        """Look ahead: take what already arrived into the window (never waits)."""
        while len(run.window) < limit:
            nxt = spool.poll()
            if nxt is None:
                return
            if isinstance(nxt, End):
                run.end = nxt
                return
            run.window.append(self.sender.prepare(forwarder, nxt, use_pool))

    def _wait(
        self,
        run: _Run,
        spool: Spool,
        onward: InlineLane | Lanes[Prepared] | BatchLane,
        forwarder: Destination,
        use_pool: bool,
        counted: bool,
    ) -> None:
        """Wait for what can move the job on: a conversion, an instance, a result — never past
        the next time-based Pending response."""
        until_pending = self.pending_interval  # no Pending response while the count is unknown
        if counted:
            until_pending = max(0.0, until_pending - (time.monotonic() - run.last_pending))
        if run.window and onward.free:
            head = run.window[0].future
            if head is not None:
                wait_futures([head], timeout=min(LOOKAHEAD_POLL, until_pending))
        elif not run.window and onward.free and run.end is None:
            if onward.in_flight:
                timeout = LANE_POLL
            elif isinstance(onward, Lanes):
                timeout = min(LOOKAHEAD_POLL, until_pending)
            else:
                timeout = until_pending
            item = spool.get(timeout=timeout)
            if isinstance(item, End):
                run.end = item
            elif item is not None:
                run.window.append(self.sender.prepare(forwarder, item, use_pool))
        else:
            self._record(onward.take(LANE_POLL), run)

    def _recover(
        self,
        state: JobState,
        run: _Run,
        onward: InlineLane,
        is_cancelled: Callable[[], bool],
        alive: Callable[[], bool],
    ) -> Generator[RetrieveResponse, None, None]:
        """The one association was lost under an instance: re-open it (Pending responses going
        on) and resend the instance, within ``[proxy] retries`` losses per instance; else it
        fails, and the destination is lost."""
        lost = onward.lost
        assert lost is not None
        onward.lost = None
        run.sent_into_loss = False
        uid = lost.item.sop_instance_uid
        run.losses[uid] += 1
        back = run.losses[uid] <= self.config.proxy.retries and (
            yield from self.sender.reopen_answering(
                state, onward.forwarder, self.pending_interval, is_cancelled, alive
            )
        )
        if back or is_cancelled() or not alive():
            run.window.appendleft(lost.again())  # resent (converted inline if it must)
            return
        self._record([(lost, SendResult(None, error="destination association lost"))], run)
        run.sent_into_loss = True

    def _finish(
        self,
        state: JobState,
        spool: Spool,
        forwarder: Destination,
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
        forwarder: Destination,
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
            journal = self.recorder.journal
            journal.add_expected(state.job_id, [asdict(ref)])  # before it is sent (jobs retry)
            # its role too: a revised report or a correction finds it (docs/identity.md)
            journal.record_objects(
                state.job_id,
                ref.study_uid,
                [(obj.role, ref.sop_instance_uid, ref.sop_class_uid, ref.series_uid)],
            )
            if not forwarder.alive and forwarder.can_reconnect:
                forwarder.reconnect()
            res = self.sender.send(forwarder, Prepared(item))
            self.recorder.record(
                item, res or SendResult(None, error="destination association lost"), extra=True
            )
            if state.counted:
                yield state.response(Status.PENDING)
        return True
