"""The conditions that are incidents, read where they are kept — each an :class:`Incident` with a key.

Shared by every node on one journal (any node may tell, :mod:`dicomproxy.alerts.store` picks one):

- ``destination-held:AE`` — the push destination's hold (``push_state``) began more than
  ``[alerting] held_after`` seconds ago;
- ``push-failed:AE`` — push queue items to AE are ``failed`` (ends when none is left);
- ``commitment:AE`` — Storage Commitment references of the transactions made in the last
  ``failure_window`` seconds came back failed or unanswered (PS3.4 J.3.3);
- ``job-failures`` — of the jobs ended in the last ``failure_window`` seconds (at least
  ``failure_min_jobs``), the share ``failed`` or ``partial`` is above ``failure_rate``;
- ``audit-chain`` — the audit trail's hash chain does not verify (checked every ``audit_interval``).

This node's own: ``readiness:CHECK@NODE`` — a ``/readyz`` check (view, pacs, archive:NAME, journal,
disk) failing for longer than ``readiness_after`` seconds, as this node sees it; ``query-process:NODE``
— ``serve``'s query process is lost (its C-FIND/C-ECHO are served by ``serve`` until a restart).

Facts are AE titles, check names, counts and IDs only (no patient data, docs/operations.md).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import Any

from dicomproxy.alerts.message import Incident
from dicomproxy.config import AlertsConfig
from dicomproxy.status import JobOutcome

#: Failed push items named in a message at most.
MAX_IDS = 10
FAILED_OUTCOMES = (str(JobOutcome.FAILED), str(JobOutcome.PARTIAL))
ENDED_OUTCOMES = (*FAILED_OUTCOMES, str(JobOutcome.SUCCESS))


def naive_utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 120 else f"{seconds:.0f} s"


def held(down_since: dict[str, dt.datetime], after: float, now: dt.datetime) -> list[Incident]:
    out = []
    for ae, since in sorted(down_since.items()):
        age = (now - since).total_seconds()
        if age >= after:
            out.append(
                Incident(
                    f"destination-held:{ae}",
                    "destination-held",
                    f"push destination {ae} down, its queue held for {_minutes(age)}",
                    (("destination", ae), ("down since", since.strftime("%Y-%m-%d %H:%M:%S UTC"))),
                )
            )
    return out


def push_failed(counts: dict[tuple[str, str], int], failed_items: list[dict[str, Any]]) -> list[Incident]:
    out = []
    for (ae, state), n in sorted(counts.items()):
        if state != "failed" or n <= 0:
            continue
        ids = [str(item["id"]) for item in failed_items if item["destination"] == ae][:MAX_IDS]
        facts = [("destination", ae), ("failed items", str(n))]
        if ids:
            facts.append(("push item IDs", ", ".join(ids)))
        out.append(
            Incident(f"push-failed:{ae}", "push-failed", f"{n} push item(s) to {ae} failed", tuple(facts))
        )
    return out


def commitment(summary: list[dict[str, Any]], window: float) -> list[Incident]:
    out = []
    for row in summary:
        failed, unanswered = int(row.get("failed", 0)), int(row.get("unanswered", 0))
        if failed + unanswered <= 0:
            continue
        ae = str(row["destination"])
        out.append(
            Incident(
                f"commitment:{ae}",
                "commitment",
                f"Storage Commitment by {ae}: {failed} failed, {unanswered} unanswered",
                (
                    ("destination", ae),
                    ("failed", str(failed)),
                    ("unanswered", str(unanswered)),
                    ("committed", str(int(row.get("committed", 0)))),
                    ("window", _minutes(window)),
                ),
            )
        )
    return out


def job_failures(ended: list[tuple[int, str]], settings: AlertsConfig) -> list[Incident]:
    counted = [(job_id, outcome) for job_id, outcome in ended if outcome in ENDED_OUTCOMES]
    failed = [job_id for job_id, outcome in counted if outcome in FAILED_OUTCOMES]
    if len(counted) < settings.failure_min_jobs or not counted:
        return []
    rate = len(failed) / len(counted)
    if rate <= settings.failure_rate:
        return []
    return [
        Incident(
            "job-failures",
            "job-failures",
            f"{len(failed)} of {len(counted)} jobs failed in the last {_minutes(settings.failure_window)}",
            (
                ("failure rate", f"{rate:.0%} (threshold {settings.failure_rate:.0%})"),
                ("job IDs", ", ".join(str(i) for i in failed[-MAX_IDS:])),
            ),
        )
    ]


def audit_broken(ok: bool, broken_at: int | None) -> list[Incident]:
    if ok:
        return []
    return [
        Incident(
            "audit-chain",
            "audit-chain",
            "the audit trail's hash chain is broken (run `dicomproxy audit verify`)",
            (("first bad record", f"#{broken_at}"),),
        )
    ]


class ReadinessTracker:
    """Since when each ``/readyz`` check has been failing on this node (monotonic seconds)."""

    def __init__(self, after: float, node: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.after = after
        self.node = node
        self.clock = clock
        self._since: dict[str, float] = {}

    def update(self, results: list[tuple[str, bool]]) -> list[Incident]:
        """Record one round of (check name, ok); the checks failing longer than ``after``."""
        now = self.clock()
        failing = {name for name, ok in results if not ok}
        self._since = {name: self._since.get(name, now) for name in failing}
        out = []
        for name in sorted(failing):
            age = now - self._since[name]
            if age >= self.after:
                out.append(
                    Incident(
                        f"readiness:{name}@{self.node}",
                        "readiness",
                        f"readiness check {name} failing on {self.node} for {_minutes(age)}",
                        (("check", name), ("node", self.node)),
                    )
                )
        return out


def query_process_lost(state: dict[str, Any] | None, node: str) -> list[Incident]:
    """``serve``'s query process is gone (:meth:`dicomproxy.queryproc.parent.QueryProcess.state`):
    queries are still answered, by ``serve`` at its lower priority, until the service restarts."""
    if state is None or state["state"] != "lost":
        return []
    return [
        Incident(
            f"query-process:{node}",
            "query-process",
            f"query process of {node} lost: C-FIND/C-ECHO served by serve until a restart",
            (("node", node), ("pid", str(state["pid"])), ("detail", str(state.get("detail") or ""))),
        )
    ]


def ended(key: str) -> Incident:
    """The incident a start message was sent for, as its end message names it (from its key: the
    node that ends it may not be the one that saw it start)."""
    kind, _, subject = key.partition(":")
    titles = {
        "destination-held": f"push destination {subject} is back, its queue released",
        "push-failed": f"no failed push item to {subject} is left",
        "commitment": f"Storage Commitment by {subject}: no failure in the window",
        "job-failures": "the job failure rate is below its threshold",
        "audit-chain": "the audit trail's hash chain verifies again",
        "readiness": f"readiness check {subject.rpartition('@')[0]} passes again",
        "query-process": f"the query process of {subject} serves again",
    }
    if kind not in titles:  # a key of a newer version: its kind still names it
        return Incident(key, "readiness", f"incident {key} ended")
    return Incident(key, kind, titles[kind])
