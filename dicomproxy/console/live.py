"""What the status page shows, kept up to date from :mod:`dicomproxy.events`.

Jobs running now with their counts, recent jobs with outcome and throughput, per-minute
throughput of the last hour, the last errors. Patient identifiers (the request keys of a job)
are kept only to be shown when ``[http] show_identifiers = true``; :meth:`LiveState.snapshot`
leaves them out otherwise.
"""

from __future__ import annotations

import collections
import datetime as dt
import threading
from dataclasses import dataclass, field
from typing import Any

from dicomproxy import events
from dicomproxy.status import Status

RECENT_JOBS = 50
LAST_ERRORS = 20
MINUTES = 60


@dataclass
class LiveJob:
    job_id: int
    kind: str
    calling_ae: str
    destination: str
    started: dt.datetime
    keys: dict[str, str] = field(default_factory=dict)
    completed: int = 0
    failed: int = 0
    warning: int = 0
    bytes: int = 0
    outcome: str = "running"
    ended: dt.datetime | None = None
    seconds: float = 0.0

    def as_dict(self, identifiers: bool) -> dict[str, Any]:
        d: dict[str, Any] = {
            "id": self.job_id,
            "kind": self.kind,
            "calling_ae": self.calling_ae,
            "destination": self.destination,
            "started": self.started.isoformat(),
            "completed": self.completed,
            "failed": self.failed,
            "warning": self.warning,
            "bytes": self.bytes,
            "outcome": self.outcome,
            "ended": self.ended.isoformat() if self.ended else None,
            "seconds": round(self.seconds, 3),
            "mb_per_s": round(self.bytes / 1e6 / self.seconds, 2) if self.seconds > 0 else None,
        }
        if identifiers:
            d["keys"] = dict(self.keys)
        return d


class LiveState:
    """An events subscriber; :meth:`snapshot` is read by the HTTP thread (one lock, held briefly)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.running: dict[int, LiveJob] = {}
        self.recent: collections.deque[LiveJob] = collections.deque(maxlen=RECENT_JOBS)
        self.errors: collections.deque[dict[str, str]] = collections.deque(maxlen=LAST_ERRORS)
        #: minute (UTC, floored) → [instances, bytes]
        self.minutes: collections.OrderedDict[dt.datetime, list[int]] = collections.OrderedDict()

    def __call__(self, event: events.Event) -> None:
        with self._lock:
            self._apply(event)

    def _error(self, t: dt.datetime, where: str, message: str) -> None:
        self.errors.appendleft({"time": t.isoformat(), "where": where, "message": message})

    def _apply(self, event: events.Event) -> None:
        if isinstance(event, events.JobStarted):
            self.running[event.job_id] = LiveJob(
                event.job_id,
                event.kind,
                event.peer.calling_ae,
                event.destination,
                event.time,
                dict(event.keys),
            )
        elif isinstance(event, events.InstanceSent):
            job = self.running.get(event.job_id)
            if job is not None:
                if event.state == "sent":
                    job.completed += 1
                elif event.state == "warning":
                    job.warning += 1
                else:
                    job.failed += 1
                job.bytes += event.bytes if event.state != "failed" else 0
            if event.state != "failed":
                minute = event.time.replace(second=0, microsecond=0)
                bucket = self.minutes.setdefault(minute, [0, 0])
                bucket[0] += 1
                bucket[1] += event.bytes
                while len(self.minutes) > MINUTES + 1:
                    self.minutes.popitem(last=False)
        elif isinstance(event, events.JobFinished):
            job = self.running.pop(event.job_id, None)
            if job is None:
                return
            job.completed, job.failed, job.warning = event.completed, event.failed, event.warning
            job.bytes = event.bytes_out or job.bytes
            job.outcome, job.ended, job.seconds = event.outcome, event.time, event.seconds
            self.recent.appendleft(job)
            if event.outcome in ("failed", "partial", "refused"):
                self._error(
                    event.time,
                    "relay",
                    f"job {event.job_id} {event.kind}: {event.outcome} (0x{event.status:04X})",
                )
        elif isinstance(event, events.FindDone):
            if event.status not in (Status.SUCCESS, Status.CANCEL):
                self._error(
                    event.time,
                    "find",
                    f"C-FIND {event.level} from {event.peer.calling_ae}: 0x{event.status:04X}",
                )
        elif isinstance(event, events.AssociationRejected):
            self._error(
                event.time,
                "association",
                f"rejected {event.peer.calling_ae}@{event.peer.address}: {event.reason}",
            )
        elif isinstance(event, events.Failure):
            self._error(event.time, event.where, event.message)

    def snapshot(self, identifiers: bool, now: dt.datetime | None = None) -> dict[str, Any]:
        now = now or dt.datetime.now(dt.timezone.utc)
        start = now.replace(second=0, microsecond=0) - dt.timedelta(minutes=MINUTES - 1)
        with self._lock:
            running = [j.as_dict(identifiers) for j in sorted(self.running.values(), key=lambda j: j.job_id)]
            recent = [j.as_dict(identifiers) for j in self.recent]
            errors = list(self.errors)
            minutes = dict(self.minutes)
        chart = []
        for i in range(MINUTES):
            m = start + dt.timedelta(minutes=i)
            n, b = minutes.get(m, (0, 0))
            chart.append({"minute": m.isoformat(), "instances": n, "bytes": b})
        return {"running": running, "recent": recent, "errors": errors, "throughput": chart}
