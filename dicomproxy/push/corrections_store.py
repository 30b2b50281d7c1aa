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
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from dicomproxy.identity import Identity
from dicomproxy.identity.corrections import Correction, corrected_uid
from dicomproxy.identity.rejection import Delivered
from dicomproxy.relay.journal import CONFIRMED_STATES, job_expected, job_identities, job_instances, jobs

CORRECTIONS_METADATA = MetaData()

WARNED, DUE, RUNNING, DONE, FAILED = "warned", "due", "running", "done", "failed"
STATES = (WARNED, DUE, RUNNING, DONE, FAILED)
#: Roles of the jobs a correction runs.
NOTE, COPIES = "note", "copies"

corrections = Table(
    "corrections",
    CORRECTIONS_METADATA,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("destination", String(16), nullable=False),
    Column("study_uid", String(64), nullable=False),
    Column("old_digest", String(64), nullable=False),
    Column("fingerprint", String(32), nullable=False, index=True),
    Column("kind", String(20), nullable=False),
    Column("new_digest", String(64), nullable=False, default=""),
    Column("relinked_to", String(64), nullable=False, default=""),
    #: The superseded order/report object (report revised only).
    Column("object_uid", String(64), nullable=False, default=""),
    Column("changed", String(255), nullable=False, default=""),  # field names, no values
    Column("state", String(8), nullable=False),
    Column("note_uid", String(64), nullable=False, default=""),
    Column("referenced", Integer, nullable=False, default=0),  # instances the note rejects
    Column("copies", Integer, nullable=False, default=0),  # corrected copies confirmed
    Column("attempts", Integer, nullable=False, default=0),
    Column("owner", String(64), nullable=False, default=""),
    Column("lease_until", DateTime),
    Column("next_at", DateTime, nullable=False),
    Column("detected", DateTime, nullable=False),
    Column("ended", DateTime),
    Column("error", Text, nullable=False, default=""),
    UniqueConstraint("destination", "study_uid", "old_digest", name="uq_corrections_delivery"),
)

#: The order/report objects push made and sent (:mod:`dicomproxy.push.files`), per job: their role
#: and series, which the journal's ``job_expected`` (the PACS's instances) does not hold.
delivered_objects = Table(
    "delivered_objects",
    CORRECTIONS_METADATA,
    Column("job_id", Integer, primary_key=True, autoincrement=False),
    Column("sop_instance_uid", String(64), primary_key=True),
    Column("study_uid", String(64), nullable=False, index=True),
    Column("role", String(8), nullable=False),
    Column("sop_class_uid", String(64), nullable=False),
    Column("series_uid", String(64), nullable=False),
)

correction_jobs = Table(
    "correction_jobs",
    CORRECTIONS_METADATA,
    Column("correction_id", Integer, primary_key=True, autoincrement=False),
    Column("job_id", Integer, primary_key=True, autoincrement=False),
    Column("role", String(8), nullable=False),
)


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


class CorrectionStore:
    """Reads and writes ``corrections`` on the journal's engine; ``node`` names this process."""

    def __init__(self, engine: Engine, node: str) -> None:
        self.engine = engine
        self.node = node[:64]
        CORRECTIONS_METADATA.create_all(engine)

    # --- what was delivered ----------------------------------------------------------------------

    def delivered_studies(self) -> list[str]:
        """Every study some delivery recorded an identity for (the sweep's list)."""
        t = job_identities
        with self.engine.connect() as conn:
            return [str(u) for u in conn.execute(select(t.c.study_uid).distinct().order_by(t.c.study_uid))]

    def deliveries(self, study_uids: Collection[str]) -> dict[tuple[str, str], dict[str, Identity]]:
        """(destination, study) → digest → identity, of the deliveries of ``study_uids`` that
        the destination confirmed at least one instance of."""
        t, i = job_identities, job_instances
        found: dict[tuple[str, str], dict[str, Identity]] = {}
        uids = sorted(set(study_uids))
        with self.engine.connect() as conn:
            for start in range(0, len(uids), 500):
                confirmed = (
                    select(i.c.id).where(i.c.job_id == t.c.job_id, i.c.state.in_(CONFIRMED_STATES)).exists()
                )
                q = select(t.c.destination, t.c.study_uid, t.c.digest, t.c.identity).where(
                    t.c.study_uid.in_(uids[start : start + 500]), confirmed
                )
                for dest, study, digest, text in conn.execute(q):
                    found.setdefault((str(dest), str(study)), {})[str(digest)] = Identity.from_json(text)
        return found

    def delivered_instances(
        self, destination: str, study_uid: str, digest: str, objects: bool = False
    ) -> list[tuple[str, Delivered]]:
        """(the PACS's SOP Instance UID, the instance the destination holds) of the instances of
        ``study_uid`` that ``destination`` confirmed from jobs that gave them identity ``digest``
        (their series from the PACS's announcement, ``job_expected``); the corrected copies of an
        earlier correction are held under their own UIDs. ``objects``: the order/report objects
        push made and sent with them too (``delivered_objects``)."""
        t, i, e, cj = job_identities, job_instances, job_expected, correction_jobs
        q = (
            select(i.c.job_id, i.c.sop_class_uid, e.c.series_uid, i.c.sop_instance_uid)
            .select_from(
                t.join(i, i.c.job_id == t.c.job_id).join(
                    e, and_(e.c.job_id == i.c.job_id, e.c.sop_instance_uid == i.c.sop_instance_uid)
                )
            )
            .where(
                t.c.destination == destination,
                t.c.study_uid == study_uid,
                t.c.digest == digest,
                e.c.study_uid == study_uid,
                i.c.state.in_(CONFIRMED_STATES),
            )
        )
        copies = (
            select(cj.c.job_id, corrections.c.fingerprint)
            .join(corrections, corrections.c.id == cj.c.correction_id)
            .where(cj.c.role == COPIES)
        )
        d = delivered_objects
        made = (
            select(i.c.job_id, i.c.sop_class_uid, d.c.series_uid, i.c.sop_instance_uid)
            .select_from(
                t.join(i, i.c.job_id == t.c.job_id).join(
                    d, and_(d.c.job_id == i.c.job_id, d.c.sop_instance_uid == i.c.sop_instance_uid)
                )
            )
            .where(
                t.c.destination == destination,
                t.c.study_uid == study_uid,
                t.c.digest == digest,
                d.c.study_uid == study_uid,
                i.c.state.in_(CONFIRMED_STATES),
            )
        )
        with self.engine.connect() as conn:
            renamed = {int(j): str(f) for j, f in conn.execute(copies)}
            rows = [*conn.execute(q).all(), *(conn.execute(made).all() if objects else [])]
        out: dict[str, tuple[str, Delivered]] = {}
        for job_id, sop_class, series, uid in rows:
            fingerprint = renamed.get(int(job_id))
            sop = corrected_uid(str(uid), fingerprint) if fingerprint else str(uid)
            out[sop] = (str(uid), Delivered(str(sop_class), str(series), sop))
        return sorted(out.values(), key=lambda p: (p[1].series_uid, p[1].sop_instance_uid))

    def corrected(self, destination: str, study_uid: str) -> set[str]:
        """The delivered identities (digests) of a study already corrected at ``destination``."""
        c = corrections
        q = select(c.c.old_digest).where(c.c.destination == destination, c.c.study_uid == study_uid)
        with self.engine.connect() as conn:
            return {str(d) for d in conn.execute(q).scalars()}

    def copied(self, destination: str, study_uids: Collection[str]) -> dict[str, list[str]]:
        """Study → fingerprints of its identity corrections whose copies went to ``destination``."""
        c, cj = corrections, correction_jobs
        q = (
            select(c.c.study_uid, c.c.fingerprint)
            .where(c.c.destination == destination, c.c.study_uid.in_(list(study_uids)))
            .where(select(cj.c.job_id).where(cj.c.correction_id == c.c.id, cj.c.role == COPIES).exists())
            .distinct()
        )
        out: dict[str, list[str]] = {}
        with self.engine.connect() as conn:
            for study, fingerprint in conn.execute(q):
                out.setdefault(str(study), []).append(str(fingerprint))
        return out

    # --- order/report objects (report revised) ---------------------------------------------------

    def record_objects(
        self, job_id: int, study_uid: str, objects: Collection[tuple[str, str, str, str]]
    ) -> None:
        """Journal the (role, SOP Instance UID, SOP Class UID, Series Instance UID) objects
        ``job_id`` is about to send (one record per job and object)."""
        t = delivered_objects
        with self.engine.begin() as conn:
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
            if rows:
                conn.execute(insert(t), rows)

    def superseded(self, destination: str, study_uid: str, role: str, current: str) -> list[str]:
        """The ``role`` objects of ``study_uid`` that ``destination`` confirmed, other than ``current``."""
        t, i = delivered_objects, job_instances
        q = (
            select(t.c.sop_instance_uid)
            .join(i, and_(i.c.job_id == t.c.job_id, i.c.sop_instance_uid == t.c.sop_instance_uid))
            .join(jobs, jobs.c.id == t.c.job_id)
            .where(
                t.c.study_uid == study_uid,
                t.c.role == role,
                t.c.sop_instance_uid != current,
                jobs.c.destination == destination,
                i.c.state.in_(CONFIRMED_STATES),
            )
            .distinct()
        )
        with self.engine.connect() as conn:
            return sorted(str(u) for u in conn.execute(q).scalars())

    def object_delivery(
        self, destination: str, study_uid: str, sop_uid: str
    ) -> tuple[Identity | None, Delivered | None]:
        """The identity an order/report object went out with to ``destination``, and the object."""
        t, ji = delivered_objects, job_identities
        q = (
            select(t.c.sop_class_uid, t.c.series_uid, ji.c.identity)
            .select_from(
                t.outerjoin(
                    ji,
                    and_(
                        ji.c.job_id == t.c.job_id,
                        ji.c.destination == destination,
                        ji.c.study_uid == study_uid,
                    ),
                )
            )
            .where(t.c.study_uid == study_uid, t.c.sop_instance_uid == sop_uid)
            .order_by(t.c.job_id)
        )
        with self.engine.connect() as conn:
            found = conn.execute(q).first()
        if found is None:
            return None, None
        identity = Identity.from_json(found.identity) if found.identity else None
        return identity, Delivered(str(found.sop_class_uid), str(found.series_uid), sop_uid)

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

    def claim(self, lease: float) -> Row | None:
        """A due correction (or one whose owner's lease ended), now ``running`` and ours."""
        c = corrections
        now = utcnow()
        due = or_(
            and_(c.c.state == DUE, c.c.next_at <= now),
            and_(c.c.state == RUNNING, c.c.lease_until < now),
        )
        with self.engine.connect() as conn:
            candidates = conn.execute(select(c).where(due).order_by(c.c.id).limit(10)).mappings().all()
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

    # --- what the status page, push status and reconcile show ------------------------------------

    def counts(self) -> dict[tuple[str, str, str], int]:
        """(destination, kind, state) → rows."""
        c = corrections
        q = select(c.c.destination, c.c.kind, c.c.state, func.count()).group_by(
            c.c.destination, c.c.kind, c.c.state
        )
        with self.engine.connect() as conn:
            return {(str(d), str(k), str(s)): int(n) for d, k, s, n in conn.execute(q)}

    def rows(self, limit: int = 200) -> list[dict[str, Any]]:
        """The newest rows, newest first (no patient data: UIDs, kinds, field names)."""
        c = corrections
        q = select(c).order_by(c.c.id.desc()).limit(limit)
        with self.engine.connect() as conn:
            return [dict(m) for m in conn.execute(q).mappings()]
