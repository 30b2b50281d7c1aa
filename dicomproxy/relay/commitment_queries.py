"""What the Storage Commitment ledger holds, read only: open and pending references, the last
day's summary, and each instance's newest state in a job or a set of jobs (a push item's).

Part of :class:`~dicomproxy.relay.commitments.CommitmentLedger` (as the journal's
:class:`~dicomproxy.relay.journal.JobQueries` is part of it); the tables are the journal's."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Collection

from sqlalchemy import Engine, func, select

from dicomproxy.config import Config
from dicomproxy.relay.journal import (
    ASKED,
    COMMITTED,
    DUE,
    FAILED,
    PENDING,
    UNANSWERED,
    commit_refs,
    commit_requests,
)


def utcnow() -> dt.datetime:
    """Naive UTC, as the journal stores times."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class CommitmentQueries:
    """Read-only questions to the commitment tables."""

    config: Config
    engine: Engine

    def destinations(self) -> list[str]:
        """The peers asked to commit."""
        return [p.ae_title for p in self.config.peers if p.storage_commitment]

    def wanted(self, destination: str) -> bool:
        """Is ``destination`` asked to commit (``[[peers]] storage_commitment``)?"""
        peer = self.config.peer(destination)
        return peer is not None and peer.storage_commitment

    def pending(self) -> dict[str, int]:
        """Destination → references asked and not yet answered (open transactions only)."""
        q = (
            select(commit_requests.c.destination, func.count(commit_refs.c.id))
            .join(commit_refs, commit_refs.c.transaction_uid == commit_requests.c.transaction_uid)
            .where(commit_requests.c.state.in_((DUE, ASKED)), commit_refs.c.state == PENDING)
            .group_by(commit_requests.c.destination)
        )
        with self.engine.connect() as conn:
            return {str(d): int(n) for d, n in conn.execute(q)}

    def summary(self, hours: float = 24.0, now: dt.datetime | None = None) -> list[dict[str, int | str]]:
        """Per destination asked to commit: references of the transactions made in the last
        ``hours`` (up to ``now``), by state (counts only: the status page)."""
        since = (now or utcnow()) - dt.timedelta(hours=hours)
        q = (
            select(commit_requests.c.destination, commit_refs.c.state, func.count(commit_refs.c.id))
            .join(commit_refs, commit_refs.c.transaction_uid == commit_requests.c.transaction_uid)
            .where(commit_requests.c.created >= since)
            .group_by(commit_requests.c.destination, commit_refs.c.state)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(q).all()
        out: list[dict[str, int | str]] = []
        for dest in self.destinations():
            counts = {str(state): int(n) for d, state, n in rows if d == dest}
            out.append(
                {
                    "destination": dest,
                    **{k: counts.get(k, 0) for k in (PENDING, COMMITTED, FAILED, UNANSWERED)},
                }
            )
        return out

    def open_transactions(self, job_id: int) -> int:
        """The job's transactions not yet answered or given up."""
        q = select(commit_requests.c.transaction_uid).where(
            commit_requests.c.job_id == job_id, commit_requests.c.state.in_((DUE, ASKED))
        )
        with self.engine.connect() as conn:
            return len(conn.execute(q).all())

    def counts(self, job_id: int) -> dict[str, int]:
        """Per reference state, the job's instances (each by its newest reference)."""
        return dict(Counter(self.states(job_id).values()))

    def states(self, job_id: int) -> dict[str, str]:
        """SOP Instance UID → the state of its newest reference in ``job_id``."""
        return self.states_of([job_id])

    def states_of(self, job_ids: Collection[int]) -> dict[str, str]:
        """SOP Instance UID → the state of its newest reference in any of ``job_ids`` (an instance
        resent by a later job is judged by that job's transaction)."""
        q = (
            select(commit_refs.c.sop_instance_uid, commit_refs.c.state)
            .where(commit_refs.c.job_id.in_(list(job_ids)))
            .order_by(commit_refs.c.id)
        )
        with self.engine.connect() as conn:
            return {str(u): str(s) for u, s in conn.execute(q)}

    def failures_of(self, job_ids: Collection[int]) -> Counter[str]:
        """SOP Instance UID → how many of its references in ``job_ids`` the destination failed."""
        q = select(commit_refs.c.sop_instance_uid).where(
            commit_refs.c.job_id.in_(list(job_ids)), commit_refs.c.state == FAILED
        )
        with self.engine.connect() as conn:
            return Counter(str(u) for (u,) in conn.execute(q))
