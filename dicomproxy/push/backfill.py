"""The backfill lane: years of history delivered without delaying a single live exam.

``dicomproxy push backfill -c F --from DATE [--to DATE] [--dest AE] [--newest-first]`` queues every
visible exam performed in the range (``PerformTime``, as ``dicomproxy reconcile`` reads the view:
:meth:`~dicomproxy.view.repository.ExamView.studies_performed`; ``[push] sysids``/``modalities``
apply) as items of lane ``backfill`` — one per (study, destination) not queued before in any lane
(a study the watcher or an earlier backfill queued is never queued twice). Their due times keep
the chosen order (oldest or newest first) and lie in the past, so they are due at once.

Live first, by construction: the live workers (``[push] max_concurrent``) claim only lane
``live``; ``[push] backfill_concurrent`` workers of their own claim only lane ``backfill``, capped
on this node by ``[push] backfill_mbps`` (beside the destination's ``max_mbps``). Several nodes share
the lane as they share the live queue (the same claim and leases). ``push pause --lane backfill``
holds only the backfill workers. Progress — items by state, delivered in the last hour, and the
time left at that rate — in ``push status``, the status page and ``/metrics``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, insert, select

from dicomproxy.config import PushConfig
from dicomproxy.push.queue import BACKFILL, DONE, LANES, PushQueue, push_queue
from dicomproxy.push.schema import STATES


@dataclass(frozen=True)
class Queued:
    """What one ``push backfill`` queued."""

    studies: int
    queued: int
    #: (study, destination) pairs already in the queue (any lane, any state): left as they are.
    present: int


def wanted(push: PushConfig, sysid: str, modality: str) -> bool:
    """Does ``[push]``'s Sysid/modality filter let this study in? (States are the live lane's rule:
    a historical exam is finished.)"""
    if push.sysids and sysid.upper() not in push.sysids:
        return False
    return not (push.modalities and modality.upper() not in push.modalities)


def queue_backfill(
    queue: PushQueue,
    studies: Iterable[Any],
    destinations: Sequence[str],
    push: PushConfig,
    newest_first: bool = False,
) -> Queued:
    """Queue ``studies`` (:class:`~dicomproxy.view.repository.ExamStudy`, oldest first) for each
    of ``destinations`` in lane ``backfill``, in one transaction."""
    chosen = [s for s in studies if wanted(push, s.ref.sysid, s.ref.modality)]
    if newest_first:
        chosen.reverse()
    now = queue.now()
    first = now - dt.timedelta(seconds=len(chosen) + 1)  # all due now, in the chosen order
    queued = present = 0
    with queue.engine.begin() as conn:
        for start in range(0, len(chosen), 500):
            batch = chosen[start : start + 500]
            have = {
                (str(u), str(d))
                for u, d in conn.execute(
                    select(push_queue.c.study_uid, push_queue.c.destination).where(
                        push_queue.c.study_uid.in_([s.ref.uid for s in batch])
                    )
                )
            }
            rows = []
            for i, study in enumerate(batch, start):
                for dest in destinations:
                    if (study.ref.uid, dest) in have:
                        present += 1
                        continue
                    rows.append(
                        {
                            "study_uid": study.ref.uid,
                            "destination": dest,
                            "examine_id": study.examine_id,
                            "row_stamp": "",
                            "files": 1,  # the row is read again at delivery: its files, if any
                            "state": "queued",
                            "lane": BACKFILL,
                            "next_at": first + dt.timedelta(seconds=i),
                            "created": now,
                            "updated": now,
                        }
                    )
            if rows:
                conn.execute(insert(push_queue), rows)
                queued += len(rows)
    return Queued(len(chosen), queued, present)


@dataclass(frozen=True)
class LaneProgress:
    """One lane's items by state, what it delivered in the last hour, and the time left at that rate."""

    lane: str
    counts: dict[str, int]
    last_hour: int

    @property
    def left(self) -> int:
        """Items not finished (done, failed and dropped are)."""
        return sum(n for s, n in self.counts.items() if s not in (DONE, "failed", "dropped"))

    @property
    def eta_seconds(self) -> float | None:
        """Seconds until the lane is through at the last hour's rate (None: nothing done lately)."""
        if not self.left:
            return 0.0
        return self.left / self.last_hour * 3600.0 if self.last_hour else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "lane": self.lane,
            **{s: self.counts.get(s, 0) for s in STATES},
            "left": self.left,
            "last_hour": self.last_hour,
            "eta_seconds": self.eta_seconds,
        }


def lane_progress(queue: PushQueue, now: dt.datetime | None = None) -> list[LaneProgress]:
    """Each lane's progress (counts only)."""
    since = (now or queue.now()) - dt.timedelta(hours=1)
    with queue.engine.connect() as conn:
        counts = conn.execute(
            select(push_queue.c.lane, push_queue.c.state, func.count()).group_by(
                push_queue.c.lane, push_queue.c.state
            )
        ).all()
        recent: dict[str, int] = dict(
            conn.execute(
                select(push_queue.c.lane, func.count())
                .where(push_queue.c.state == DONE, push_queue.c.updated >= since)
                .group_by(push_queue.c.lane)
            ).all()
        )
    return [
        LaneProgress(
            lane,
            {str(s): int(n) for ln, s, n in counts if ln == lane},
            int(recent.get(lane, 0)),
        )
        for lane in LANES
    ]
