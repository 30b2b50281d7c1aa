"""The journal of corrections after delivery (IOCM; docs/identity.md): table ``corrections`` and
the jobs that carried them out (``correction_jobs``), in the journal database beside the push queue.

One row per (destination, study, delivered identity): a delivered identity is corrected once, on
whichever node saw it first (the unique key turns a second node's insert into a no-op, so only one
node warns and audits). Acting on a row is claimed as push claims an item: ``UPDATE … WHERE id =
… AND state = … AND owner = …`` under a lease, so that two nodes never send the same note and a
node that died leaves it to the others when its lease ends.

States: ``warned`` (the destination has ``iocm = false``: the WARNING, the audit row and the
``reconcile`` line are all), ``due`` → ``running`` → ``done`` | ``failed`` (retried while ``due``
with ``next_at``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    and_,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from dicomproxy.corrections.delivered import DeliveredQueries
from dicomproxy.corrections.schema import (
    COPIES,
    CORRECTIONS_METADATA,
    DONE,
    DUE,
    FAILED,
    NOTE,
    OBJECTS,
    RUNNING,
    STATES,
    WARNED,
    correction_jobs,
    correction_state,
    corrections,
)
from dicomproxy.identity.corrections import Correction
from dicomproxy.relay.delivered import DELIVERED_METADATA, delivered_objects
from dicomproxy.relay.journal import CONFIRMED_STATES, job_instances

__all__ = [
    "COPIES",
    "DONE",
    "DUE",
    "FAILED",
    "NOTE",
    "OBJECTS",
    "RUNNING",
    "STATES",
    "WARNED",
    "CorrectionStore",
    "Row",
    "correction_jobs",
    "correction_state",
    "corrections",
    "delivered_objects",
]


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None, microsecond=0)


@dataclass(frozen=True)
class Row:
    """One ``corrections`` row as a worker sees it."""

    id: int
    destination: str
    study_uid: str
    old_digest: str
    fingerprint: str
    kind: str
    new_digest: str
    relinked_to: str
    object_uid: str
    state: str
    note_uid: str
    attempts: int
    owner: str

    @classmethod
    def of(cls, m: Any) -> Row:
        return cls(**{k: m[k] for k in cls.__dataclass_fields__})


class CorrectionStore(DeliveredQueries):
    """Reads and writes ``corrections`` on the journal's engine; ``node`` names this process."""

    def __init__(self, engine: Engine, node: str) -> None:
        self.engine = engine
        self.node = node[:64]
        CORRECTIONS_METADATA.create_all(engine)
        DELIVERED_METADATA.create_all(engine)  # the journal's; created here too for a bare engine

    # --- the rows --------------------------------------------------------------------------------

    def record(self, destination: str, correction: Correction, iocm: bool, object_uid: str = "") -> bool:
        """Journal a correction; False when it was known already (another node, an earlier pass)."""
        now = utcnow()
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    insert(corrections).values(
                        destination=destination,
                        study_uid=correction.study_uid,
                        old_digest=correction.old_digest,
                        fingerprint=correction.fingerprint,
                        kind=correction.kind.value,
                        new_digest=correction.new_digest,
                        relinked_to=correction.relinked_to,
                        object_uid=object_uid,
                        changed=",".join(correction.changed)[:255],
                        state=DUE if iocm else WARNED,
                        next_at=now,
                        detected=now,
                    )
                )
        except IntegrityError:
            return False
        return True

    def claim(self, lease: float, skip: Collection[str] = ()) -> Row | None:
        """A due correction (or one whose owner's lease ended) to a destination not in ``skip``
        (held), now ``running`` and ours."""
        c = corrections
        now = utcnow()
        due = or_(
            and_(c.c.state == DUE, c.c.next_at <= now),
            and_(c.c.state == RUNNING, c.c.lease_until < now),
        )
        q = select(c).where(due)
        if skip:
            q = q.where(c.c.destination.not_in(sorted(skip)))
        with self.engine.connect() as conn:
            candidates = conn.execute(q.order_by(c.c.id).limit(10)).mappings().all()
        for m in candidates:
            with self.engine.begin() as conn:
                res = conn.execute(
                    update(c)
                    .where(c.c.id == m["id"], c.c.state == m["state"], c.c.owner == m["owner"])
                    .where(or_(c.c.lease_until.is_(None), c.c.lease_until == m["lease_until"]))
                    .values(
                        state=RUNNING,
                        owner=self.node,
                        lease_until=now + dt.timedelta(seconds=lease),
                        attempts=c.c.attempts + 1,
                    )
                )
            if res.rowcount == 1:
                return Row.of({**m, "state": RUNNING, "owner": self.node, "attempts": m["attempts"] + 1})
        return None

    def update(self, row_id: int, **values: Any) -> bool:
        """Set ``values`` on a row this node runs; False when it is no longer ours."""
        c = corrections
        with self.engine.begin() as conn:
            res = conn.execute(
                update(c)
                .where(c.c.id == row_id, c.c.owner == self.node, c.c.state == RUNNING)
                .values(**values)
            )
        return res.rowcount == 1

    def finish(self, row_id: int, state: str, **values: Any) -> bool:
        ended = utcnow() if state in (DONE, FAILED) else None
        return self.update(row_id, state=state, ended=ended, lease_until=None, **values)

    def add_job(self, row_id: int, job_id: int, role: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(insert(correction_jobs).values(correction_id=row_id, job_id=job_id, role=role))

    def jobs_of(self, row_id: int, role: str) -> list[int]:
        cj = correction_jobs
        q = select(cj.c.job_id).where(cj.c.correction_id == row_id, cj.c.role == role).order_by(cj.c.job_id)
        with self.engine.connect() as conn:
            return [int(j) for j in conn.execute(q).scalars()]

    def confirmed_of_jobs(self, job_ids: Collection[int]) -> set[str]:
        """SOP Instance UIDs (as spooled: the old UIDs of copies) confirmed by ``job_ids``."""
        if not job_ids:
            return set()
        i = job_instances
        q = select(i.c.sop_instance_uid).where(i.c.job_id.in_(list(job_ids)), i.c.state.in_(CONFIRMED_STATES))
        with self.engine.connect() as conn:
            return {str(u) for u in conn.execute(q).scalars()}

    # --- the named values (the detector's watermark), shared by the nodes ------------------------

    def get_state(self, name: str) -> str | None:
        with self.engine.connect() as conn:
            value = conn.execute(
                select(correction_state.c.value).where(correction_state.c.name == name)
            ).scalar()
        return None if value is None else str(value)

    def ensure_state(self, name: str, value: str) -> None:
        """Create ``name`` with ``value`` unless it exists (two nodes may race: one wins)."""
        try:
            with self.engine.begin() as conn:
                if conn.execute(
                    select(correction_state.c.name).where(correction_state.c.name == name)
                ).first():
                    return
                conn.execute(insert(correction_state).values(name=name, value=value))
        except IntegrityError:
            pass

    def lock_state(self, conn: Connection, name: str) -> str | None:
        """The value of ``name``, row-locked for ``conn``'s transaction; None when another node
        holds it (``FOR UPDATE SKIP LOCKED``: that node is reading now) or it does not exist."""
        t = correction_state
        q = select(t.c.value).where(t.c.name == name).with_for_update(skip_locked=True)
        value = conn.execute(q).scalar()
        return None if value is None else str(value)

    def set_state(self, conn: Connection, name: str, value: str) -> None:
        """Set an existing ``name`` (locked by :meth:`lock_state`) in ``conn``'s transaction."""
        conn.execute(update(correction_state).where(correction_state.c.name == name).values(value=value))

    # --- what the status page, push status and reconcile show ------------------------------------

    def counts(self) -> dict[tuple[str, str, str], int]:
        """(destination, kind, state) → rows."""
        c = corrections
        q = select(c.c.destination, c.c.kind, c.c.state, func.count()).group_by(
            c.c.destination, c.c.kind, c.c.state
        )
        with self.engine.connect() as conn:
            return {(str(d), str(k), str(s)): int(n) for d, k, s, n in conn.execute(q)}

    def by_destination(self) -> dict[str, dict[str, int]]:
        """Destination → rows by state (every state named; the status page, ``push status``)."""
        out: dict[str, dict[str, int]] = {}
        for (dest, _, state), n in self.counts().items():
            states = out.setdefault(dest, dict.fromkeys(STATES, 0))
            states[state] = states.get(state, 0) + n
        return out

    def rows(self, limit: int = 200) -> list[dict[str, Any]]:
        """The newest rows, newest first (no patient data: UIDs, kinds, field names)."""
        c = corrections
        q = select(c).order_by(c.c.id.desc()).limit(limit)
        with self.engine.connect() as conn:
            return [dict(m) for m in conn.execute(q).mappings()]
