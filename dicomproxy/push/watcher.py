"""The watcher: exam-view rows above the watermark → push queue items, then the watermark moves.

One pass (:meth:`Watcher.run_pass`):

1. lock the watermark row in the journal database (``SELECT … FOR UPDATE SKIP LOCKED``): on a
   shared PostgreSQL journal only one node scans at a time, the others skip the pass;
2. read RowTimestamp's late-commit guard *before* the rows (:mod:`dicomproxy.view.stamp`, the
   same machinery as the UID side table: ``MIN_ACTIVE_ROWVERSION()`` or the database's
   ``min_active_rowversion()`` for a rowversion, an overlap window for a date-time);
3. read the visible rows (``ExamView.visible()``: hospital, privacy, a StudyInstanceUID) that
   match ``[push]`` states/sysids/modalities and whose RowTimestamp is after the watermark, in
   batches ordered by (RowTimestamp, ExamineID) — keyset paging an index on RowTimestamp serves;
4. queue one item per (valid Study Instance UID, destination) in the same journal transaction
   that stores the new watermark: the mark advances only with the items durably queued, and only
   to the highest stamp *below the guard* (a transaction that commits late is read next time).

A row whose RowTimestamp is unchanged is never queued again (re-reads of the overlap window or
of rows above the guard are recognised by their stamp); a changed row queues its study again,
and then only the instances the destination has not confirmed are sent.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Select, and_, or_, select

from dicomproxy.config import Config
from dicomproxy.push.queue import WATERMARK, Entry, PushQueue
from dicomproxy.view.repository import ExamView
from dicomproxy.view.stamp import Mark, StampKind, StampPolicy, later
from dicomproxy.view.uids import split_uid_cell

LOG = logging.getLogger("dicomproxy.push.watcher")

#: The watermark's text before the first pass found any row: read from the beginning.
FROM_BEGINNING = "beginning"


class Watcher:
    """Queues what the view announces; one per process, passes run on the push service's thread."""

    def __init__(self, config: Config, view: ExamView, queue: PushQueue) -> None:
        self.config = config
        self.push = config.push
        self.view = view
        self.queue = queue

    def statement(
        self, policy: StampPolicy, mark: Mark | None, cursor: tuple[Any, str] | None
    ) -> Select[Any]:
        """One batch: visible rows matching ``[push]``, after ``mark`` and after the keyset ``cursor``."""
        c = self.view.table.c
        where = [self.view.visible()]
        if self.push.states:
            where.append(c.State.in_(list(self.push.states)))
        if self.push.sysids:
            where.append(c.Sysid.in_(list(self.push.sysids)))
        if self.push.modalities:
            where.append(c.ExamineType.in_(list(self.push.modalities)))
        if mark is not None:
            where.append(policy.since(c.RowTimestamp, mark))
        else:
            where.append(c.RowTimestamp.is_not(None))
        if cursor is not None:
            stamp, examine_id = cursor
            where.append(or_(c.RowTimestamp > stamp, and_(c.RowTimestamp == stamp, c.ExamineID > examine_id)))
        return (
            select(
                c.ExamineID,
                c.StudyInstanceUID,
                c.RowTimestamp,
                c.HospitalID,
                c.Privacy,
                c.State,
                c.Sysid,
                c.ExamineType,
                c.OrderFilePath,
                c.ReportFilePath,
            )
            .where(and_(*where))
            .order_by(c.RowTimestamp, c.ExamineID)
            .limit(self.push.batch_size)
        )

    def start_statement(self, guard: Any) -> Select[Any]:
        """``start_from = "now"``: the highest stamp already committed (below the guard)."""
        c = self.view.table.c
        # ORDER BY … DESC LIMIT 1, not MAX(): PostgreSQL has no max(bytea); an index serves both
        stmt = select(c.RowTimestamp).where(c.RowTimestamp.is_not(None))
        if guard is not None:
            stmt = stmt.where(c.RowTimestamp < guard)
        return stmt.order_by(c.RowTimestamp.desc()).limit(1)

    def _wanted(self, row: dict[str, Any]) -> bool:
        """The Python half of the conditions (exact compare: a CI collation must not widen them)."""
        if not self.view.is_visible(row):
            return False
        if self.push.states and str(row.get("State") or "").strip() not in self.push.states:
            return False
        if self.push.sysids and str(row.get("Sysid") or "").strip().upper() not in self.push.sysids:
            return False
        modality = str(row.get("ExamineType") or "").strip().upper()
        return not (self.push.modalities and modality not in self.push.modalities)

    def _initial(self, policy: StampPolicy) -> str:
        """The watermark's first value from ``[push] start_from``."""
        start = self.push.start_from
        if start == "beginning" or policy.kind is StampKind.EMPTY:
            return FROM_BEGINNING
        if start != "now" and policy.kind is StampKind.DATETIME:
            return Mark(StampKind.DATETIME, dt.datetime.fromisoformat(start)).encode()
        if start != "now":
            LOG.error(
                "push: start_from = %r needs a date-time RowTimestamp, but this view's is a %s; "
                "starting from now",
                start,
                policy.kind.description,
            )
        with self.view.engine.connect() as conn:
            guard = policy.guard_value(conn)
            top = conn.execute(self.start_statement(guard)).scalar()
        if top is None:
            return FROM_BEGINNING
        if policy.kind is StampKind.DATETIME:
            # a date-time read re-reads ``overlap`` below the mark: start one overlap (and a
            # microsecond) above the newest row, so the first read begins just after it
            top = top + policy.overlap + dt.timedelta(microseconds=1)
        return Mark(policy.kind, top).encode()

    def loop(self, stop: threading.Event, after: Callable[[int | None], None]) -> None:
        """Passes every ``[push] poll_interval`` until ``stop``; ``after`` gets each pass's count.
        A view or journal down: one line when it fails (and when the reason changes), one when it
        is back; retried."""
        error = ""
        while not stop.is_set():
            try:
                after(self.run_pass())
                if error:
                    LOG.info("push: the exam view can be read again")
                    error = ""
            except Exception as exc:
                reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
                if reason != error:
                    LOG.warning(
                        "push: watcher pass failed (%s); retrying every %g s", reason, self.push.poll_interval
                    )
                    error = reason
            stop.wait(self.push.poll_interval)

    def run_pass(self) -> int | None:
        """One pass; the number of items queued or re-queued, None when another node holds the
        watermark (it is scanning now). Raises ViewUnavailable / SQLAlchemyError on database errors."""
        policy = self.view.stamp_policy()
        if policy.kind is StampKind.EMPTY:
            return 0
        if self.queue.get_state(WATERMARK) is None:
            self.queue.ensure_state(WATERMARK, self._initial(policy))
        started = time.monotonic()
        with self.queue.engine.begin() as jconn:
            text = self.queue.lock_state(jconn, WATERMARK)
            if text is None:
                return None
            mark = None if text == FROM_BEGINNING else Mark.decode(text)
            if mark is not None and mark.kind is not policy.kind:
                LOG.warning(
                    "push: RowTimestamp changed from %s to %s; reading the view from the beginning "
                    "(studies already delivered are recognised and not sent twice)",
                    mark.kind.value,
                    policy.kind.value,
                )
                mark = None
            with self.view.engine.connect() as vconn:
                guard = policy.guard_value(vconn)
            high = mark.value if mark is not None else None
            cursor: tuple[Any, str] | None = None
            read = new = requeued = 0
            while True:
                rows = list(self.view.stream(self.statement(policy, mark, cursor)))
                entries: list[Entry] = []
                for row in rows:
                    stamp = row["RowTimestamp"]
                    if policy.settled(stamp, guard):
                        high = later(high, stamp)
                    if not self._wanted(row):
                        continue
                    row_stamp = Mark(policy.kind, stamp).encode()
                    files = any(str(row.get(k) or "").strip() for k in ("OrderFilePath", "ReportFilePath"))
                    for uid in split_uid_cell(row["StudyInstanceUID"]):
                        for dest in self.push.destinations:
                            entries.append(Entry(uid, dest, str(row["ExamineID"]), row_stamp, files))
                n, r = self.queue.enqueue(jconn, entries)
                new, requeued, read = new + n, requeued + r, read + len(rows)
                if len(rows) < self.push.batch_size:
                    break
                cursor = (rows[-1]["RowTimestamp"], str(rows[-1]["ExamineID"]))
            if high is not None and (mark is None or high != mark.value):
                self.queue.set_state(WATERMARK, Mark(policy.kind, high).encode(), jconn)
        if new or requeued:
            LOG.info(
                "push: %d row(s) read, %d item(s) queued, %d re-queued (row changed) in %.2f s",
                read,
                new,
                requeued,
                time.monotonic() - started,
            )
        return new + requeued
