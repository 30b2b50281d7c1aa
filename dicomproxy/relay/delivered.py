"""What a delivery was about, beside its instances: the exams of its studies (``delivered_exams``)
and the order/report objects it sent (``delivered_objects``) — journalled by every route (C-MOVE,
C-GET, push, a correction's jobs) for corrections after delivery (IHE RAD IOCM; docs/identity.md).

- ``delivered_exams``: each delivered study's exam, by the view's row key ExamineID (exam-view.md:
  varchar(64), unique), recorded with the delivery's identity when the job is planned. A study the
  RIS re-links to another exam row keeps this record: the row's ExamineID then names the new
  Study Instance UID, and the old study is an *exam re-linked*, not a withdrawal.
- ``delivered_objects``: the order/report objects a job made and sent (role, series), which
  ``job_expected`` (the PACS's instances and, for C-MOVE/C-GET, these objects too) does not
  tell apart from images: a revised report or a correction finds them here.

Tables of their own in the journal database, so a journal of an earlier version gets them from
``create_all`` (which never alters an existing table) without a migration step: no column is
added to ``job_identities``. Both keys fit VARCHAR(64) on every database (UIDs: PS3.5 9.1,
ExamineID: exam-view.md); a longer ExamineID is not recorded (such a row cannot be matched later).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Mapping

from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, insert, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

DELIVERED_METADATA = MetaData()
#: VARCHAR length of the keys (a UID, PS3.5 9.1; the view's ExamineID, exam-view.md).
KEY_LENGTH = 64

delivered_exams = Table(
    "delivered_exams",
    DELIVERED_METADATA,
    Column("study_uid", String(KEY_LENGTH), primary_key=True),
    Column("examine_id", String(KEY_LENGTH), primary_key=True, index=True),
    Column("recorded", DateTime, nullable=False),
)

#: One record per job and object (role ``order`` | ``report``; its series decides the role too).
delivered_objects = Table(
    "delivered_objects",
    DELIVERED_METADATA,
    Column("job_id", Integer, primary_key=True, autoincrement=False),
    Column("sop_instance_uid", String(KEY_LENGTH), primary_key=True),
    Column("study_uid", String(KEY_LENGTH), nullable=False, index=True),
    Column("role", String(8), nullable=False),
    Column("sop_class_uid", String(KEY_LENGTH), nullable=False),
    Column("series_uid", String(KEY_LENGTH), nullable=False),
)


class DeliveryRecords:
    """Writes and reads ``delivered_exams`` and ``delivered_objects``: a part of
    :class:`~dicomproxy.relay.journal.Journal`."""

    engine: Engine

    def record_exams(self, exams: Mapping[str, Collection[str]]) -> None:
        """Journal study → the ExamineIDs of its view rows (a pair already known stays)."""
        now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None, microsecond=0)
        pairs = {
            (study, str(e))
            for study, ids in exams.items()
            for e in ids
            if e and len(str(e)) <= KEY_LENGTH and len(study) <= KEY_LENGTH
        }
        if not pairs:
            return
        t = delivered_exams
        with self.engine.connect() as conn:
            known = {
                (str(s), str(e))
                for s, e in conn.execute(
                    select(t.c.study_uid, t.c.examine_id).where(
                        t.c.study_uid.in_(sorted({s for s, _ in pairs}))
                    )
                )
            }
        rows = [{"study_uid": s, "examine_id": e, "recorded": now} for s, e in sorted(pairs - known)]
        _insert_new(self.engine, t, rows)

    def studies_of_exams(self, examine_ids: Collection[str]) -> set[str]:
        """The delivered studies recorded for these ExamineIDs (what the rows named before)."""
        ids = sorted({e for e in examine_ids if e})
        if not ids:
            return set()
        t = delivered_exams
        out: set[str] = set()
        with self.engine.connect() as conn:
            for start in range(0, len(ids), 500):
                q = select(t.c.study_uid).where(t.c.examine_id.in_(ids[start : start + 500])).distinct()
                out.update(str(u) for u in conn.execute(q).scalars())
        return out

    def exams_of(self, study_uids: Collection[str]) -> dict[str, list[str]]:
        """Study → the ExamineIDs recorded for it."""
        uids = sorted(set(study_uids))
        t = delivered_exams
        out: dict[str, list[str]] = {}
        with self.engine.connect() as conn:
            for start in range(0, len(uids), 500):
                q = select(t.c.study_uid, t.c.examine_id).where(t.c.study_uid.in_(uids[start : start + 500]))
                for study, exam in conn.execute(q.order_by(t.c.study_uid, t.c.examine_id)):
                    out.setdefault(str(study), []).append(str(exam))
        return out

    def record_objects(
        self, job_id: int, study_uid: str, objects: Collection[tuple[str, str, str, str]]
    ) -> None:
        """Journal the (role, SOP Instance UID, SOP Class UID, Series Instance UID) objects
        ``job_id`` is about to send (one record per job and object)."""
        t = delivered_objects
        with self.engine.connect() as conn:
            known = set(conn.execute(select(t.c.sop_instance_uid).where(t.c.job_id == job_id)).scalars())
        rows = [
            {
                "job_id": job_id,
                "study_uid": study_uid,
                "role": r,
                "sop_instance_uid": u,
                "sop_class_uid": c,
                "series_uid": s,
            }
            for r, u, c, s in objects
            if u not in known
        ]
        _insert_new(self.engine, t, rows)


def _insert_new(engine: Engine, table: Table, rows: list[dict[str, object]]) -> None:
    """Insert ``rows``; when another writer inserted one of them meanwhile, the others one by one."""
    if not rows:
        return
    try:
        with engine.begin() as conn:
            conn.execute(insert(table), rows)
    except IntegrityError:
        for row in rows:
            try:
                with engine.begin() as conn:
                    conn.execute(insert(table).values(**row))
            except IntegrityError:
                pass  # that one is known
