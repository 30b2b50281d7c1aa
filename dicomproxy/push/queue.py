"""The push queue, in the journal database: one item per (study, destination), shared by every node.

Tables (created beside ``jobs``; SQLite by default, PostgreSQL when ``[journal] url`` says so):

- ``push_queue``: one row per (Study Instance UID, destination) with its state (``queued``,
  ``running``, ``waiting``, ``done``, ``failed``, ``dropped``), attempts, takeovers, the next
  attempt's time, the claiming node and its lease, and the RowTimestamp of the view row it came
  from (a re-read row with the same stamp is not queued again; a changed one is);
- ``push_attempts``: which relay jobs (``jobs.id``, kind ``push``) served an item, so the
  instances a destination confirmed (``job_instances``) are never sent to it again — unless
  ``push requeue`` started a new *generation*;
- ``push_state``: the watermark, pauses and destination holds (name → text).

Concurrency: a worker claims an item with ``SELECT … FOR UPDATE SKIP LOCKED`` (PostgreSQL,
MariaDB ≥ 10.6; SQLite has one writer and ignores it) followed by an ``UPDATE … WHERE`` that only
one node can win; the claim carries a lease the owner renews. A node that dies stops renewing:
once its lease has expired, any node takes the item over and sends only what was not confirmed.

Re-checks of delivered studies: a ``done`` item with ``rechecks`` > 0 is due again at ``next_at``
(claimed by the same query, same lease), and its worker only asks the PACS for the study's instance
count — a delivery follows only when the PACS holds more than the destination confirmed. The
schedule is in :mod:`dicomproxy.push.decide` (:func:`~dicomproxy.push.decide.next_recheck`).

Poison items: a takeover is not an attempt (the delivery never reported), so it is counted apart,
in ``takeovers``. A claim that finds an expired lease on an item whose leases already expired
``max_takeovers`` times does not run it again: it marks it ``failed`` ("abandoned by N
nodes/leases"), for ``push retry`` (which resets the count). A delivery, a changed view row and
``push requeue`` reset it too.

Schema changes: the tables are created with ``create_all``, which never alters an existing table;
a column added later is added to an existing journal at start by :func:`migrate`
(``ALTER TABLE … ADD COLUMN`` when it is missing, with a server default so that nodes of the
previous version, which do not name it, keep working beside this one).

The class :class:`PushQueue` is the one callers use; it is put together from parts split by job:
the workers' side here (queue, claim and lease, finish, release), what an item's jobs delivered
(:class:`ItemLedger`) and the operator's actions (:class:`OperatorActions`) beside it, the named
values (watermark, pauses, holds: :mod:`dicomproxy.push.queue_state`) and the read-only summaries
(:mod:`dicomproxy.push.queue_summary`) in modules of their own, the tables in
:mod:`dicomproxy.push.schema`.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, case, insert, literal, or_, select, update
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.engine import Connection, Engine, RowMapping
from sqlalchemy.exc import DBAPIError
from sqlalchemy.schema import CreateColumn

from dicomproxy.push.queue_state import PushStates
from dicomproxy.push.queue_summary import QueueSummaries
from dicomproxy.push.schema import (
    BACKFILL,
    COMMITTING,
    DONE,
    DROPPED,
    FAILED,
    LANES,
    LIVE,
    PUSH_METADATA,
    QUEUED,
    RUNNING,
    STATES,
    WAITING,
    push_attempts,
    push_queue,
    push_skip,
    push_state,
)
from dicomproxy.relay.delivered import DELIVERED_METADATA, delivered_exams
from dicomproxy.relay.journal import Journal
from dicomproxy.reports.study import SOP_CLASSES as REPORT_SOP_CLASSES

__all__ = [
    "ADDED_COLUMNS",
    "BACKFILL",
    "COMMITTING",
    "DONE",
    "DROPPED",
    "FAILED",
    "LANES",
    "LIVE",
    "MAX_TAKEOVERS",
    "PAUSED_ALL",
    "PUSH_METADATA",
    "QUEUED",
    "RUNNING",
    "STATES",
    "WAITING",
    "WATERMARK",
    "Entry",
    "Item",
    "ItemLedger",
    "OperatorActions",
    "PushQueue",
    "migrate",
    "push_attempts",
    "push_queue",
    "push_skip",
    "push_state",
    "utcnow",
]

LOG = logging.getLogger("dicomproxy.push.queue")

WATERMARK = "watermark"
PAUSED_ALL = "paused:*"
#: ``[push] max_takeovers``' default: an item is run by at most 1 + 3 nodes/leases that never finish it.
MAX_TAKEOVERS = 3

#: Columns of ``push_queue`` added after tables existed in the field (``create_all`` skips an
#: existing table): :func:`migrate` adds each one that is missing. Each needs a server default (rows
#: already there get it, and nodes of the previous version insert without naming the column).
ADDED_COLUMNS = ("takeovers", "rechecks", "lane")


def _columns(conn: Connection, table: str) -> set[str]:
    return {str(c["name"]) for c in sa_inspect(conn).get_columns(table)}


def migrate(engine: Engine) -> list[str]:
    """Add the :data:`ADDED_COLUMNS` an existing ``push_queue`` lacks; the names added.

    Two nodes may start at once: the one whose ``ALTER TABLE`` loses (the column exists by then)
    checks again and goes on; any other error is raised."""
    added = []
    with engine.connect() as conn:
        present = _columns(conn, push_queue.name)  # read once (one inspection per start)
    missing = [name for name in ADDED_COLUMNS if name not in present]
    for name in missing:
        # the column as CREATE TABLE spells it in this dialect ("takeovers INTEGER DEFAULT 0 NOT NULL")
        spec = CreateColumn(push_queue.c[name]).compile(dialect=engine.dialect)
        add = "ADD" if engine.dialect.name in ("mssql", "oracle") else "ADD COLUMN"
        ddl = f"ALTER TABLE {push_queue.name} {add} {spec}"
        try:
            with engine.begin() as conn:
                conn.exec_driver_sql(ddl)
        except DBAPIError:
            with engine.connect() as conn:
                if name not in _columns(conn, push_queue.name):
                    raise
            continue  # another node added it first
        LOG.info("push queue: column %s added to the existing %s table", name, push_queue.name)
        added.append(name)
    return added


#: ``push_state`` mark: the exams of the items queued before ``delivered_exams`` existed are in it.
EXAMS_RECORDED = "exams-recorded"


def record_queued_exams(engine: Engine) -> None:
    """Once per journal: each queued study's ExamineID into the relay journal's
    ``delivered_exams`` (what a correction after delivery tells a re-link by; push's jobs record
    theirs since, as every job does). Two nodes may race: the loser's insert is dropped."""
    with engine.connect() as conn:
        if conn.execute(select(push_state.c.name).where(push_state.c.name == EXAMS_RECORDED)).first():
            return
    q, d = push_queue, delivered_exams
    known = select(d.c.study_uid).where(d.c.study_uid == q.c.study_uid, d.c.examine_id == q.c.examine_id)
    pairs = (
        select(q.c.study_uid, q.c.examine_id, literal(utcnow().replace(microsecond=0)))
        .where(q.c.examine_id != "", ~known.exists())
        .distinct()
    )
    try:
        with engine.begin() as conn:
            conn.execute(insert(d).from_select(["study_uid", "examine_id", "recorded"], pairs))
            conn.execute(insert(push_state).values(name=EXAMS_RECORDED, value=utcnow().isoformat()))
    except DBAPIError:  # IntegrityError: another node did it meanwhile
        LOG.debug("push queue: the queued exams were recorded by another node")


def utcnow() -> dt.datetime:
    """Naive UTC, as the journal stores times."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


@dataclass(frozen=True)
class Entry:
    """One study of one view row for one destination, as the watcher queues it."""

    study_uid: str
    destination: str
    examine_id: str
    row_stamp: str
    files: bool = False


@dataclass(frozen=True)
class Item:
    """A claimed queue item."""

    id: int
    study_uid: str
    destination: str
    examine_id: str
    generation: int
    attempts: int
    images_done: bool
    reports: str
    report_attempts: int
    files: bool = False
    #: Times this item was taken over (leases that expired before it; 0 for a normal claim).
    takeovers: int = 0
    #: Re-checks left when claimed (> 0: this delivery belongs to a delivered study's re-checks).
    rechecks: int = 0
    #: Claimed as a due re-check of a ``done`` item: ask the PACS before delivering anything.
    recheck: bool = False
    #: ``live`` or ``backfill`` (:data:`~dicomproxy.push.schema.LANES`).
    lane: str = LIVE


class ItemLedger:
    """Which relay jobs served an item (``push_attempts``) and what their destination confirmed
    (asked of the :class:`~dicomproxy.relay.journal.Journal`): what is never sent to it again.
    Part of :class:`PushQueue`."""

    engine: Engine
    node: str
    journal: Journal
    now: Callable[[], dt.datetime]

    def record_attempt(self, item: Item, job_id: int) -> None:
        """Link a relay job to the item (before the job sends anything)."""
        with self.engine.begin() as conn:
            conn.execute(
                insert(push_attempts).values(
                    item_id=item.id,
                    job_id=job_id,
                    generation=item.generation,
                    node=self.node,
                    started=self.now(),
                )
            )
            conn.execute(update(push_queue).where(push_queue.c.id == item.id).values(last_job=job_id))

    def job_ids(self, item_id: int, generation: int) -> list[int]:
        """The relay jobs that served the item in ``generation`` (``push_attempts``)."""
        q = select(push_attempts.c.job_id).where(
            push_attempts.c.item_id == item_id, push_attempts.c.generation == generation
        )
        with self.engine.connect() as conn:
            return [int(r[0]) for r in conn.execute(q)]

    def confirmed(self, item_id: int, generation: int) -> frozenset[str]:
        """SOP Instance UIDs this item's destination confirmed in this generation's jobs."""
        return self.journal.confirmed_of(self.job_ids(item_id, generation))

    def excluded(self, item_id: int, generation: int) -> frozenset[str]:
        """What a delivery of the item leaves out: :meth:`confirmed`, and the instances
        ``reconcile --fix`` found its destination holding (``push_skip``) in this generation."""
        q = select(push_skip.c.sop_instance_uid).where(
            push_skip.c.item_id == item_id, push_skip.c.generation == generation
        )
        with self.engine.connect() as conn:
            skipped = frozenset(str(r[0]) for r in conn.execute(q))
        return self.confirmed(item_id, generation) | skipped

    def confirmed_images(self, item_id: int, generation: int) -> frozenset[str]:
        """:meth:`confirmed` without the order/report objects (Encapsulated PDF / Secondary Capture
        made from the row's files, which the PACS does not hold): what the PACS's count of the
        study is compared with. An instance of those classes the PACS listed for one of the item's
        jobs (``job_expected``: a scanned document stored in the PACS) still counts."""
        mine = self.job_ids(item_id, generation)
        rows = self.journal.confirmed_classes_of(mine)
        from_pacs = (
            self.journal.expected_of(mine, REPORT_SOP_CLASSES)
            if any(c in REPORT_SOP_CLASSES for _, c in rows)
            else set()
        )
        return frozenset(u for u, c in rows if c not in REPORT_SOP_CLASSES or u in from_pacs)

    def archive(self, item_id: int, generation: int) -> str:
        """The archive that served the item's newest job of ``generation`` (``jobs.archive``: the
        routed one, or the fallback that held the study); "" when none recorded one."""
        return self.journal.newest_archive(self.job_ids(item_id, generation))


class OperatorActions:
    """``push retry``, ``push requeue`` and ``reconcile --fix`` (the CLI): items queued again by hand. Part of
    :class:`PushQueue` (pauses and holds are named values: :mod:`dicomproxy.push.queue_state`)."""

    engine: Engine
    now: Callable[[], dt.datetime]

    def retry(self, item_id: int) -> bool:
        """A ``failed``, ``waiting`` or ``dropped`` item due now, its attempts, takeovers and
        re-checks reset (only what the destination has not confirmed is sent; once delivered, it
        gets the full re-check schedule again)."""
        with self.engine.begin() as conn:
            res = conn.execute(
                update(push_queue)
                .where(push_queue.c.id == item_id, push_queue.c.state.in_((FAILED, WAITING, DROPPED)))
                .values(**self._due_afresh())
            )
            return bool(res.rowcount)

    def _due_afresh(self) -> dict[str, Any]:
        """An item queued again by hand (``push retry``, ``push requeue``): due now, its counts of
        attempts, takeovers, re-checks and file fetches reset, no error."""
        return {
            "state": QUEUED,
            "next_at": self.now(),
            "attempts": 0,
            "takeovers": 0,
            "rechecks": 0,
            "report_attempts": 0,
            "error": "",
        }

    def queue_fix(
        self, study_uid: str, destination: str, examine_id: str, held: Iterable[str]
    ) -> tuple[int, bool]:
        """``dicomproxy reconcile --fix``: deliver to ``destination`` what it lacks of the study.
        The item (made when the study has none) is due now with its counts reset (as ``push
        retry``), or — running now — marked changed so it runs again when this run ends; ``held``
        (the study's instances the destination holds) replaces its ``push_skip`` rows of the
        current generation, so only the others go. (The caller has already made the journal's
        rows of the instances the destination lost no longer confirmed.) Returns (item ID,
        whether it was made)."""
        now = self.now()
        with self.engine.begin() as conn:
            row = conn.execute(
                select(push_queue.c.id, push_queue.c.state, push_queue.c.generation).where(
                    push_queue.c.study_uid == study_uid, push_queue.c.destination == destination
                )
            ).first()
            made = row is None
            if row is None:
                res = conn.execute(
                    insert(push_queue).values(
                        study_uid=study_uid,
                        destination=destination,
                        examine_id=examine_id,
                        row_stamp="",
                        state=QUEUED,
                        next_at=now,
                        created=now,
                        updated=now,
                    )
                )
                item_id, generation = int(res.inserted_primary_key[0]), 0  # type: ignore[index]
            else:
                item_id, generation = int(row.id), int(row.generation)
                values = {"changed": 1} if row.state == RUNNING else self._due_afresh()
                conn.execute(
                    update(push_queue).where(push_queue.c.id == item_id).values(updated=now, **values)
                )
            conn.execute(
                push_skip.delete().where(push_skip.c.item_id == item_id, push_skip.c.generation == generation)
            )
            rows = [
                {"item_id": item_id, "generation": generation, "sop_instance_uid": u}
                for u in sorted(set(held))
            ]
            if rows:
                conn.execute(insert(push_skip), rows)
        return item_id, made

    def requeue(self, since: dt.datetime, destination: str | None = None) -> int:
        """Send again, in full, every item queued at or after ``since`` (UTC) that is not running: a
        new generation, so earlier confirmations no longer count."""
        cond = [push_queue.c.created >= since, push_queue.c.state != RUNNING]
        if destination:
            cond.append(push_queue.c.destination == destination)
        with self.engine.begin() as conn:
            res = conn.execute(
                update(push_queue)
                .where(*cond)
                .values(
                    **self._due_afresh(),
                    images_done=0,
                    reports="",
                    confirmed=0,
                    generation=push_queue.c.generation + 1,
                )
            )
            return int(res.rowcount)


class PushQueue(PushStates, QueueSummaries, ItemLedger, OperatorActions):
    """Reads and writes the push tables; one per process, on the journal's engine. The workers'
    side is here; the other parts are listed in the module docstring."""

    def __init__(self, engine: Engine, node: str) -> None:
        self.engine = engine
        self.node = node
        #: The relay's journal on the same engine: what the item's jobs confirmed is asked of it.
        self.journal = Journal.over(engine)
        #: The clock of leases and due times (naive UTC); tests replace it.
        self.now: Callable[[], dt.datetime] = utcnow
        PUSH_METADATA.create_all(engine)
        DELIVERED_METADATA.create_all(engine)  # the relay journal's (a bare engine in tests)
        migrate(engine)
        record_queued_exams(engine)

    # --- the watcher's side ---------------------------------------------------------------------

    def enqueue(self, conn: Connection, entries: Sequence[Entry]) -> tuple[int, int]:
        """Queue new (study, destination) pairs and re-queue those whose row changed, in the
        caller's transaction (the one that advances the watermark). Returns (new, requeued)."""
        if not entries:
            return 0, 0
        now = self.now()
        wanted = {(e.study_uid, e.destination): e for e in entries}
        existing: dict[tuple[str, str], Any] = {}
        uids = sorted({e.study_uid for e in entries})
        for start in range(0, len(uids), 500):
            q = select(
                push_queue.c.id,
                push_queue.c.study_uid,
                push_queue.c.destination,
                push_queue.c.row_stamp,
                push_queue.c.state,
            ).where(push_queue.c.study_uid.in_(uids[start : start + 500]))
            for row in conn.execute(q):
                existing[(row.study_uid, row.destination)] = row
        fresh = [
            {
                "study_uid": e.study_uid,
                "destination": e.destination,
                "examine_id": e.examine_id,
                "row_stamp": e.row_stamp,
                "files": int(e.files),
                "state": QUEUED,
                "next_at": now,
                "created": now,
                "updated": now,
            }
            for key, e in wanted.items()
            if key not in existing
        ]
        if fresh:
            conn.execute(insert(push_queue), fresh)
        requeued = 0
        for key, row in existing.items():
            e = wanted.get(key)
            if e is None or row.row_stamp == e.row_stamp:
                continue  # re-read (date-time overlap, a guard hold): not a change
            values: dict[str, Any] = {
                "row_stamp": e.row_stamp,
                "examine_id": e.examine_id,
                "files": int(e.files),
                "updated": now,
            }
            if row.state == RUNNING:
                values["changed"] = 1
            elif row.state != QUEUED:
                values.update(
                    state=QUEUED,
                    next_at=now,
                    attempts=0,
                    takeovers=0,
                    rechecks=0,
                    report_attempts=0,
                    error="",
                )
            conn.execute(update(push_queue).where(push_queue.c.id == row.id).values(**values))
            requeued += 1
        return len(fresh), requeued

    # --- the workers' side ----------------------------------------------------------------------

    def _claimable(self, now: dt.datetime, held: Iterable[str], lane: str = LIVE) -> Any:
        due = or_(
            and_(push_queue.c.state.in_((QUEUED, WAITING)), push_queue.c.next_at <= now),
            and_(push_queue.c.state == DONE, push_queue.c.rechecks > 0, push_queue.c.next_at <= now),
            and_(push_queue.c.state == RUNNING, push_queue.c.lease_until < now),
        )
        cond = and_(due, push_queue.c.lane == lane)
        held = list(held)
        return and_(cond, push_queue.c.destination.not_in(held)) if held else cond

    def claim(
        self, lease: float, held: Iterable[str] = (), max_takeovers: int = MAX_TAKEOVERS, lane: str = LIVE
    ) -> Item | None:
        """The next due item (or one whose owner's lease expired), now ``running`` and ours.

        A ``done`` item whose re-check is due is claimed like any other (``Item.recheck``): its
        claim starts a new count of attempts (1) and leaves ``updated`` alone (a re-check that
        finds nothing new is not a delivery: :meth:`finish` with ``touch=False``).

        Taking an expired lease over is not an attempt (the delivery never reported) but counts in
        ``takeovers``. An item whose leases have expired more than ``max_takeovers`` times is not
        run again — it may be what kills the nodes that take it — but marked ``failed`` (one
        WARNING), and the next due item is claimed instead."""
        held = list(held)
        while True:
            now = self.now()
            with self.engine.begin() as conn:
                q = (
                    select(push_queue)
                    .where(self._claimable(now, held, lane))
                    .order_by(push_queue.c.next_at, push_queue.c.id)
                    .limit(1)
                    .with_for_update(skip_locked=True)
                )
                row = conn.execute(q).mappings().first()
                if row is None:
                    return None
                taken_over = row["state"] == RUNNING
                recheck = row["state"] == DONE
                takeovers = int(row["takeovers"]) + int(taken_over)
                ours = update(push_queue).where(
                    push_queue.c.id == row["id"],
                    self._claimable(now, held, lane),
                    push_queue.c.takeovers == row["takeovers"],  # SQLite: no row lock, re-check
                )
                poisoned = taken_over and takeovers > max_takeovers
                if poisoned:
                    values = _abandoned(row, takeovers, max_takeovers)
                else:
                    values = self._running(now, lease, taken_over, recheck)
                if not recheck:
                    values["updated"] = now
                res = conn.execute(ours.values(takeovers=takeovers, changed=0, **values))
                if not res.rowcount:
                    return None  # another node was first
            if poisoned:
                LOG.warning(
                    "push item %d (study %s): abandoned by %d nodes/leases (more than [push] "
                    "max_takeovers = %d): failed, not run again (`dicomproxy push retry %d`)",
                    row["id"],
                    row["study_uid"],
                    takeovers,
                    max_takeovers,
                    row["id"],
                )
                continue
            if taken_over:
                LOG.info(
                    "push item %d: taken over from %s, whose lease expired (takeover %d of at most %d)",
                    row["id"],
                    row["owner"],
                    takeovers,
                    max_takeovers,
                )
            return _claimed(row, takeovers, recheck, taken_over)

    def _running(self, now: dt.datetime, lease: float, taken_over: bool, recheck: bool) -> dict[str, Any]:
        """The claimed item's new values: ours, leased, one more attempt (a re-check starts a new
        count at 1; a takeover is not an attempt)."""
        return {
            "state": RUNNING,
            "owner": self.node,
            "lease_until": now + dt.timedelta(seconds=lease),
            "attempts": 1 if recheck else push_queue.c.attempts + (0 if taken_over else 1),
        }

    def renew(self, ids: Sequence[int], lease: float) -> int:
        """Extend our leases on ``ids``; how many are still ours."""
        if not ids:
            return 0
        with self.engine.begin() as conn:
            res = conn.execute(
                update(push_queue)
                .where(
                    push_queue.c.id.in_(list(ids)),
                    push_queue.c.owner == self.node,
                    push_queue.c.state == RUNNING,
                )
                .values(lease_until=self.now() + dt.timedelta(seconds=lease))
            )
            return int(res.rowcount)

    def finish(
        self,
        item: Item,
        state: str,
        *,
        next_at: dt.datetime | None = None,
        touch: bool = True,
        **values: Any,
    ) -> bool:
        """End our run of ``item`` in ``state``; a row change seen meanwhile queues it again (and
        drops the re-checks: the new delivery starts its own). False when the item is no longer
        ours (our lease expired and another node took it). A delivery (``done``) or a changed row
        resets the takeovers: the item is not poison. ``touch=False`` leaves ``updated`` (a
        re-check that found nothing new: not counted as a delivery in ``push status``)."""
        now = self.now()
        with self.engine.begin() as conn:
            row = conn.execute(
                select(push_queue.c.changed, push_queue.c.owner, push_queue.c.state).where(
                    push_queue.c.id == item.id
                )
            ).first()
            if row is None or row.owner != self.node or row.state != RUNNING:
                LOG.warning("push item %d: taken over by another node (our lease expired)", item.id)
                return False
            if row.changed and state in (DONE, COMMITTING, WAITING, FAILED):
                state, next_at, touch = QUEUED, now, True
                values.update(attempts=0, report_attempts=0, rechecks=0)
            if state in (DONE, QUEUED):
                values.update(takeovers=0)
            if touch:
                values["updated"] = now
            conn.execute(
                update(push_queue)
                .where(push_queue.c.id == item.id)
                .values(state=state, next_at=next_at or now, lease_until=None, changed=0, **values)
            )
        return True

    def release(self, ids: Sequence[int]) -> None:
        """Give our running items back (clean stop): due again at once, for any node."""
        if not ids:
            return
        with self.engine.begin() as conn:
            conn.execute(
                update(push_queue)
                .where(push_queue.c.id.in_(list(ids)), push_queue.c.owner == self.node)
                .values(
                    state=QUEUED,
                    next_at=self.now(),
                    lease_until=None,
                    # the claim counted an attempt that did not happen
                    attempts=case((push_queue.c.attempts > 0, push_queue.c.attempts - 1), else_=0),
                )
            )


def _abandoned(row: RowMapping, takeovers: int, max_takeovers: int) -> dict[str, Any]:
    """A poison item's new values (its leases expired more than ``max_takeovers`` times)."""
    return {
        "state": FAILED,
        "lease_until": None,
        "error": (
            f"abandoned by {takeovers} nodes/leases: every lease expired before the "
            f"delivery ended (nodes that died or hung handling it?); [push] "
            f"max_takeovers = {max_takeovers}: not run again until `push retry "
            f"{row['id']}`"
        ),
    }


def _claimed(row: RowMapping, takeovers: int, recheck: bool, taken_over: bool) -> Item:
    """The claimed row as an :class:`Item` (its attempts counted as :meth:`PushQueue.claim` set them)."""
    return Item(
        int(row["id"]),
        str(row["study_uid"]),
        str(row["destination"]),
        str(row["examine_id"]),
        int(row["generation"]),
        1 if recheck else int(row["attempts"]) + (0 if taken_over else 1),
        bool(row["images_done"]),
        str(row["reports"]),
        int(row["report_attempts"]),
        bool(row["files"]),
        takeovers,
        int(row["rechecks"]),
        recheck,
        str(row["lane"]),
    )
