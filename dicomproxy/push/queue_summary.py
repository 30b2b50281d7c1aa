"""What ``push status``, the console and the metrics read of the push queue: counts, items,
re-checks pending, deliveries of the last hour. Read-only.

A part of :class:`~dicomproxy.push.queue.PushQueue` (which callers use)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.engine import Engine

from dicomproxy.push.schema import DONE, LIVE, QUEUED, RUNNING, WAITING, push_queue


class QueueSummaries:
    """Read-only summaries of ``push_queue`` (mixed into :class:`~dicomproxy.push.queue.PushQueue`)."""

    engine: Engine

    def counts(self) -> dict[tuple[str, str], int]:
        """Items per (destination, state)."""
        q = select(push_queue.c.destination, push_queue.c.state, func.count()).group_by(
            push_queue.c.destination, push_queue.c.state
        )
        with self.engine.connect() as conn:
            return {(str(d), str(s)): int(n) for d, s, n in conn.execute(q)}

    def live_busy(self, now: dt.datetime) -> bool:
        """Is a live item running, or due and not held back, on any node? (The backfill workers
        claim nothing then: live exams first, also in the PACS's, the CPU's and the link's share.)"""
        live = push_queue.c.lane == LIVE
        due = and_(push_queue.c.state.in_((QUEUED, WAITING)), push_queue.c.next_at <= now)
        q = select(push_queue.c.id).where(live, or_(push_queue.c.state == RUNNING, due)).limit(1)
        with self.engine.connect() as conn:
            return conn.execute(q).first() is not None

    def get(self, item_id: int) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(push_queue).where(push_queue.c.id == item_id)).mappings().first()
        return dict(row) if row is not None else None

    def items(self, state: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        q = select(push_queue).order_by(push_queue.c.updated.desc(), push_queue.c.id.desc()).limit(limit)
        if state:
            q = q.where(push_queue.c.state == state)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    def rechecks_pending(self) -> dict[str, tuple[int, dt.datetime | None]]:
        """Per destination: (delivered items waiting for a re-check, the next one's due time)."""
        q = (
            select(push_queue.c.destination, func.count(), func.min(push_queue.c.next_at))
            .where(push_queue.c.state == DONE, push_queue.c.rechecks > 0)
            .group_by(push_queue.c.destination)
        )
        with self.engine.connect() as conn:
            return {str(d): (int(n), when) for d, n, when in conn.execute(q)}

    def delivered_since(self, since: dt.datetime) -> dict[str, tuple[int, int]]:
        """Per destination: (studies done, bytes) of items finished since ``since``."""
        q = (
            select(push_queue.c.destination, func.count(), func.coalesce(func.sum(push_queue.c.bytes), 0))
            .where(push_queue.c.state == DONE, push_queue.c.updated >= since)
            .group_by(push_queue.c.destination)
        )
        with self.engine.connect() as conn:
            return {str(d): (int(n), int(b)) for d, n, b in conn.execute(q)}
