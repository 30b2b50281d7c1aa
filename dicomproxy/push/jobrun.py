"""The relay's push job of one queue item, paced: this node's per-lane caps (``[push] max_mbps``,
``backfill_mbps``) and the ``[[bandwidth]]`` timetable shared by every lane and node; what the job
left, from its journal row (:class:`~dicomproxy.push.decide.JobResult`). A part of
:class:`~dicomproxy.push.service.PushService`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dicomproxy.config import Config, PushConfig
from dicomproxy.push.decide import JobResult
from dicomproxy.push.pacing import RateLimiter
from dicomproxy.push.queue import BACKFILL, Item, PushQueue
from dicomproxy.relay.bandwidth import Bandwidth
from dicomproxy.relay.journal import Journal
from dicomproxy.status import JobOutcome, Status


class ItemJobs:
    """Runs an item's push job on the relay with its caps."""

    def __init__(self, config: Config, journal: Journal, relay: Any, queue: PushQueue) -> None:
        self.journal = journal
        self.relay = relay
        self.queue = queue
        self.push = config.push
        self.limiters = {ae: RateLimiter(mbps) for ae, mbps in self.push.max_mbps}
        self.backfill_cap = RateLimiter(self.push.backfill_mbps) if self.push.backfill_mbps else None
        #: ``[[bandwidth]]``, the relay's: caps the total sent to a destination by every lane and
        #: node (``max_mbps`` and ``backfill_mbps`` stay this node's per-lane caps beside it).
        engine = getattr(relay, "engine", None)  # tests of the queue alone have no relay
        self.bandwidth: Bandwidth = engine.bandwidth if engine is not None else Bandwidth(config.bandwidth)

    def reconfigure(self, push: PushConfig) -> None:
        """New caps for the next jobs; a running job keeps the limiter it started with."""
        old, old_backfill = dict(self.push.max_mbps), self.push.backfill_mbps
        self.push = push
        self.limiters = {  # an unchanged cap keeps its bucket (it is shared by the running jobs)
            ae: self.limiters[ae] if old.get(ae) == mbps and ae in self.limiters else RateLimiter(mbps)
            for ae, mbps in push.max_mbps
        }
        if push.backfill_mbps != old_backfill:
            self.backfill_cap = RateLimiter(push.backfill_mbps) if push.backfill_mbps else None

    def run(self, item: Item, is_cancelled: Callable[[], bool]) -> JobResult:
        """The relay's push job for ``item`` (what the destination confirmed left out), run to its
        end; what it left, from its journal row."""
        exclude = self.queue.excluded(item.id, item.generation)  # confirmed, or held by a reconcile's fix
        job: dict[str, int] = {}

        def started(job_id: int) -> None:
            job["id"] = job_id
            self.queue.record_attempt(item, job_id)

        caps = [self.limiters.get(item.destination), self.backfill_cap if item.lane == BACKFILL else None]
        takes: list[Callable[[int], float]] = [c.take for c in caps if c is not None]
        timetable = self.bandwidth.throttle(item.destination)  # [[bandwidth]]: every lane, every node
        if timetable is not None:
            takes.append(timetable)
        final = None
        for response in self.relay.push(
            item.study_uid,
            item.destination,
            exclude=exclude,
            on_start=started,
            throttle=(lambda n: sum(take(n) for take in takes)) if takes else None,
            is_cancelled=is_cancelled,
        ):
            final = response
        job_id = job.get("id")
        view = self.journal.get(job_id) if job_id is not None else None
        row = view.row if view is not None else {}
        return JobResult(
            job_id=job_id,
            outcome=str(row.get("outcome", JobOutcome.FAILED)),
            status=int(final.status) if final is not None else int(Status.UNABLE_TO_PROCESS),
            error=str(row.get("error") or ""),
            resolved_none=row.get("study_uids") == "[]",
            bytes=int(row.get("bytes_out") or 0),
            confirmed=len(self.queue.confirmed(item.id, item.generation)),
            excluded=bool(exclude),
        )
