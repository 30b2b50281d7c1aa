"""Corrections after delivery, detected (IOCM; docs/identity.md, "Corrections after delivery").

Every study some delivery recorded an identity for (``job_identities``: C-MOVE, C-GET, push) is
compared with the exam view's current row by :func:`dicomproxy.identity.corrections.decide`.
Two feeders name the studies to compare:

- **changed rows** (:meth:`CorrectionDetector.changed`): the rows whose RowTimestamp is above the
  detector's own watermark (``correction_state`` ``watermark``; either kind of stamp, with
  the late-commit guard of :mod:`dicomproxy.view.stamp`, as the push watcher reads), *visible
  rows only* (another hospital's row or one above ``max_privacy`` is never read, not even its
  UIDs) — and the studies their ExamineIDs named when delivered (``delivered_exams``: a re-link, a
  cleared UID); a changed row is also where a revised order/report file is looked for
  (:mod:`dicomproxy.corrections.revisions`);
- **the sweep** (:meth:`CorrectionDetector.sweep`): the studies delivered in the last
  ``[corrections] sweep_days``, at start and every ``[corrections] sweep`` seconds — what a visible
  row cannot announce: a withdrawn row (privacy raised, another HospitalID, deleted), a cleared UID.

A correction is journalled once per (destination, study, delivered identity)
(:class:`~dicomproxy.corrections.store.CorrectionStore`): the node whose insert wins writes
one WARNING (UIDs and kinds only), and publishes :class:`~dicomproxy.events.CorrectionFound` (the
audit trail and ATNA take the patient IDs from it; ``/metrics`` counts it).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, or_, select

from dicomproxy.config import Config
from dicomproxy.corrections.record import record_correction
from dicomproxy.corrections.revisions import revisions
from dicomproxy.corrections.store import CorrectionStore, utcnow
from dicomproxy.identity import Identity, identity_of
from dicomproxy.identity.corrections import Correction, decide
from dicomproxy.view.service import name_style_for
from dicomproxy.view.stamp import Mark, StampKind, later
from dicomproxy.view.uids import is_valid_uid, split_uid_cell

LOG = logging.getLogger("dicomproxy.corrections")

#: ``correction_state`` name of the detector's watermark.
WATERMARK = "watermark"
#: Rows read per batch above the watermark.
BATCH = 500


class CorrectionDetector:
    """Compares delivered identities with the view; one per process (the corrections service)."""

    def __init__(self, config: Config, view: Any, store: CorrectionStore) -> None:
        self.config = config
        self.view = view
        self.store = store

    # --- the feeders -----------------------------------------------------------------------------

    def changed(self) -> int:
        """Compare the studies of the rows changed since the watermark; the corrections found.
        None of this runs while another node holds the watermark (it is reading now)."""
        policy = self.view.stamp_policy()
        if policy.kind is StampKind.EMPTY:
            return 0
        if self.store.get_state(WATERMARK) is None:
            self.store.ensure_state(WATERMARK, self._initial(policy))
        uids: set[str] = set()
        exams: set[str] = set()
        with self.store.engine.begin() as jconn:
            text = self.store.lock_state(jconn, WATERMARK)
            if text is None:
                return 0
            mark = Mark.decode(text) if text else None
            if mark is not None and mark.kind is not policy.kind:
                mark = None  # the sweep covers what was before
            with self.view.engine.connect() as vconn:
                guard = policy.guard_value(vconn)
            high = mark.value if mark is not None else None
            cursor: tuple[Any, str] | None = None
            c = self.view.table.c
            while True:
                # visible rows only: a row of another hospital or above max_privacy is never read
                # (docs/view.md, the boundary); a withdrawn row is found by absence, by the sweep
                where = [self.view.visible(), c.RowTimestamp.is_not(None)]
                if mark is not None:
                    where.append(policy.since(c.RowTimestamp, mark))
                if cursor is not None:
                    stamp, examine_id = cursor
                    where.append(
                        or_(c.RowTimestamp > stamp, and_(c.RowTimestamp == stamp, c.ExamineID > examine_id))
                    )
                stmt = (
                    select(c.ExamineID, c.StudyInstanceUID, c.RowTimestamp)
                    .where(and_(*where))
                    .order_by(c.RowTimestamp, c.ExamineID)
                    .limit(BATCH)
                )
                rows = list(self.view.stream(stmt))
                for row in rows:
                    if policy.settled(row["RowTimestamp"], guard):
                        high = later(high, row["RowTimestamp"])
                    uids.update(split_uid_cell(row["StudyInstanceUID"]))
                    exams.add(str(row["ExamineID"] or ""))
                if len(rows) < BATCH:
                    break
                cursor = (rows[-1]["RowTimestamp"], str(rows[-1]["ExamineID"]))
            if high is not None and (mark is None or high != mark.value):
                self.store.set_state(jconn, WATERMARK, Mark(policy.kind, high).encode())
        uids |= self.store.studies_of_exams(exams)  # what the exams named before: a re-link, a cleared UID
        if not uids:
            return 0
        found = len(self.check(sorted(uids)))
        if self.config.reports.enabled:  # a changed row may name a revised order/report file
            found += revisions(self.config, self.view, self.store, sorted(uids))
        return found

    def _initial(self, policy: Any) -> str:
        """From now on (the sweep at start compares what was delivered before)."""
        c = self.view.table.c
        with self.view.engine.connect() as conn:
            guard = policy.guard_value(conn)
            stmt = select(c.RowTimestamp).where(c.RowTimestamp.is_not(None))
            if guard is not None:
                stmt = stmt.where(c.RowTimestamp < guard)
            top = conn.execute(stmt.order_by(c.RowTimestamp.desc()).limit(1)).scalar()
        return "" if top is None else Mark(policy.kind, top).encode()

    def sweep(self) -> int:
        """Compare the studies delivered in the last ``sweep_days`` (0: every one); the corrections
        found."""
        days = self.config.corrections.sweep_days
        since = utcnow() - dt.timedelta(days=days) if days else None
        studies = self.store.delivered_studies(since)
        found = 0
        for start in range(0, len(studies), BATCH):
            found += len(self.check(studies[start : start + BATCH]))
        return found

    # --- the comparison --------------------------------------------------------------------------

    def check(self, study_uids: Sequence[str]) -> list[tuple[str, Correction]]:
        """Compare the deliveries of ``study_uids`` with the view; journal what changed."""
        deliveries = self.store.deliveries(study_uids)
        if not deliveries:
            return []
        studies = sorted({study for _, study in deliveries})
        rows = self.view.study_rows(studies)
        # a delivery journalled before exams were recorded gets its exam while its row names it
        self.store.record_exams({s: [str(r.get("ExamineID") or "") for r in rows[s]] for s in rows})
        relinked = self._relinked([s for s in studies if s not in rows])
        found: list[tuple[str, Correction]] = []
        for (destination, study), delivered in sorted(deliveries.items()):
            done = self.store.corrected(destination, study)
            style = name_style_for(self.config, destination)
            now = identity_of(study, rows[study], style, self.config.hospital) if study in rows else None
            for digest, old in delivered.items():
                if digest in done or (now is not None and digest == now.digest):
                    continue
                correction = decide(old, now, relinked.get(study, ""))
                if correction is not None and self._record(destination, correction, old, now):
                    found.append((destination, correction))
        return found

    def _record(self, destination: str, correction: Correction, old: Identity, now: Identity | None) -> bool:
        return record_correction(self.config, self.store, destination, correction, old, now)

    def _relinked(self, study_uids: Sequence[str]) -> dict[str, str]:
        """Old Study Instance UID → the one its exam's visible row names now (the exam recorded
        with the delivery, ``delivered_exams``: a C-MOVE/C-GET's as a push's)."""
        if not study_uids:
            return {}
        exams = {e: study for study, ids in self.store.exams_of(study_uids).items() for e in ids}
        if not exams:
            return {}
        t = self.view.table
        stmt = select(t.c.ExamineID, t.c.StudyInstanceUID, t.c.HospitalID, t.c.Privacy).where(
            self.view.visible(), t.c.ExamineID.in_(sorted(exams))
        )
        out: dict[str, str] = {}
        for row in self.view.stream(stmt):
            if not self.view.is_visible(row):
                continue
            old = exams.get(str(row["ExamineID"]))
            new = [u for u in split_uid_cell(row["StudyInstanceUID"]) if is_valid_uid(u) and u != old]
            if old and new and old not in out:
                out[old] = new[0]
        return out
