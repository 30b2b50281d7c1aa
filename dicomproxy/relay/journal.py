"""Job journal: every C-MOVE / C-GET, durably (SQLAlchemy; SQLite in the data directory by default).

Tables: ``jobs`` (one row per request: who asked, destination, what was resolved, counts,
bytes, times, outcome), ``job_instances`` (one row per instance outcome with the
transfer syntax it was sent in), ``job_identities`` (the view's identity each delivery carried)
and the tables of retries and Storage Commitment below; what deliveries were about
(``delivered_exams``, ``delivered_objects``): :mod:`dicomproxy.relay.delivered`. One engine per
process; a short transaction per write.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import threading
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from dicomproxy.identity import Identity
from dicomproxy.relay.delivered import DELIVERED_METADATA, DeliveryRecords
from dicomproxy.relay.fastinsert import FastInsert
from dicomproxy.status import RETRYABLE_OUTCOMES, JobKind, JobOutcome

METADATA = MetaData()

jobs = Table(
    "jobs",
    METADATA,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(8), nullable=False),  # move | get
    Column("calling_ae", String(16), nullable=False),
    Column("calling_host", String(64), nullable=False, default=""),
    Column("destination", String(16), nullable=False, default=""),
    Column("archive", String(64), nullable=False, default=""),
    Column("level", String(8), nullable=False, default=""),
    Column("study_uids", Text, nullable=False, default="[]"),  # JSON list of resolved Study Instance UIDs
    Column("expected", Integer, nullable=False, default=0),
    Column("completed", Integer, nullable=False, default=0),
    Column("failed", Integer, nullable=False, default=0),
    Column("warning", Integer, nullable=False, default=0),
    Column("bytes_in", BigInteger, nullable=False, default=0),
    Column("bytes_out", BigInteger, nullable=False, default=0),
    Column("started", DateTime, nullable=False),
    Column("ended", DateTime),
    Column("status", Integer),  # final DIMSE status sent to the requester
    Column("outcome", String(16), nullable=False, default="running"),
    Column("error", Text, nullable=False, default=""),
)

job_instances = Table(
    "job_instances",
    METADATA,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", Integer, ForeignKey("jobs.id"), nullable=False, index=True),
    Column("sop_instance_uid", String(64), nullable=False),
    Column("sop_class_uid", String(64), nullable=False, default=""),
    Column("state", String(10), nullable=False),  # sent | warning | failed | missing | lost | nocommit
    Column("status", Integer),  # C-STORE status from the destination
    Column("transfer_syntax", String(64), nullable=False, default=""),  # as sent
    Column("bytes", BigInteger, nullable=False, default=0),
    Column("error", Text, nullable=False, default=""),
)


#: Every instance the PACS announced for a job (issue 6): what ``jobs retry`` must end up confirming.
job_expected = Table(
    "job_expected",
    METADATA,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", Integer, ForeignKey("jobs.id"), nullable=False, index=True),
    Column("study_uid", String(64), nullable=False),
    Column("series_uid", String(64), nullable=False, default=""),
    Column("sop_instance_uid", String(64), nullable=False),
    Column("sop_class_uid", String(64), nullable=False, default=""),
)

#: What a job asks its archives for, written once its studies are routed (before anything is
#: fetched): a job killed before its instance list was journalled is resumed by listing these
#: keys again at the archive recorded here (PS3.4 C.4.2.2.1: Study, Series and SOP Instance UIDs
#: at their levels). A table of its own, like ``job_nodes``, so existing journals get it.
job_keys = Table(
    "job_keys",
    METADATA,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", Integer, ForeignKey("jobs.id"), nullable=False, index=True),
    Column("study_uid", String(64), nullable=False),
    Column("series_uids", Text, nullable=False, default="[]"),  # JSON; [] = the whole study
    Column("sop_uids", Text, nullable=False, default="[]"),  # JSON; [] = the whole series
    Column("archive", String(64), nullable=False, default=""),
)

#: A C-MOVE's Identifier (DICOM JSON, PS3.18 F.2) from its start until its keys are recorded
#: (:meth:`Journal.record_keys`) or it ends: a job killed while its request was being resolved in
#: the exam view is resumed by resolving it again. Kept no longer than that (it may name a
#: patient); a table of its own, so existing journals get it from ``create_all``.
job_requests = Table(
    "job_requests",
    METADATA,
    Column("job_id", Integer, ForeignKey("jobs.id"), primary_key=True, autoincrement=False),
    Column("identifier", Text, nullable=False),
)

# transaction states
DUE, ASKED, ANSWERED, UNANSWERED = "due", "asked", "answered", "unanswered"
# reference states
PENDING, COMMITTED, FAILED = "pending", "committed", "failed"

#: Storage Commitment transactions (PS3.4 Annex J), written by :mod:`dicomproxy.relay.commitments`.
commit_requests = Table(
    "commit_requests",
    METADATA,
    Column("transaction_uid", String(64), primary_key=True),
    Column("job_id", Integer, nullable=False, index=True),
    Column("destination", String(64), nullable=False),
    Column("state", String(16), nullable=False, default=DUE),
    Column("attempts", Integer, nullable=False, default=0),
    Column("due", DateTime, nullable=False),
    Column("created", DateTime, nullable=False, index=True),
    Column("answered", DateTime),
)

#: One row per instance referenced in a transaction (its newest row says where it stands).
commit_refs = Table(
    "commit_refs",
    METADATA,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("transaction_uid", String(64), nullable=False, index=True),
    Column("job_id", Integer, nullable=False, index=True),
    Column("sop_instance_uid", String(64), nullable=False),
    Column("sop_class_uid", String(64), nullable=False),
    Column("state", String(16), nullable=False, default=PENDING),
    Column("reason", Integer),
)


#: Which node runs each job (several proxies may share one journal database, docs/push.md): a job
#: left ``running`` is marked interrupted only by its own node's next start, never by another
#: node's (whose job may still be running). A table of its own, so that an existing journal gets it
#: from ``create_all`` without a migration; jobs without a row (older journals) count as everyone's.
job_nodes = Table(
    "job_nodes",
    METADATA,
    Column("job_id", Integer, ForeignKey("jobs.id"), primary_key=True, autoincrement=False),
    Column("node", String(255), nullable=False),
)

#: Which identity each delivery carried (issue 26, docs/identity.md): per job (a C-MOVE, a C-GET, a
#: push item's job), destination and study, the exam view's values the instances were coerced to
#: (:class:`~dicomproxy.identity.Identity` as JSON) and their digest. Written when the job is
#: planned, before anything is sent, never overwritten (a retry of the job sends what it sent);
#: corrections after delivery (IOCM) compare the view with it. A table of its own, so existing
#: journals get it from ``create_all``.
job_identities = Table(
    "job_identities",
    METADATA,
    Column("job_id", Integer, ForeignKey("jobs.id"), primary_key=True, autoincrement=False),
    Column("destination", String(16), primary_key=True),
    Column("study_uid", String(64), primary_key=True),
    Column("digest", String(64), nullable=False, index=True),
    Column("identity", Text, nullable=False),
    Column("recorded", DateTime, nullable=False),
)

#: The jobs that send corrected copies (IOCM, :mod:`dicomproxy.identity.copies`): each instance is
#: journalled under the PACS's SOP Instance UID and sent under
#: :func:`~dicomproxy.identity.corrections.corrected_uid` of it and ``fingerprint``. Written when the
#: job is planned, before anything is sent: a retry sends the same copies, and Storage Commitment asks
#: for (and maps the report back from) the UIDs the destination received. A table of its own, so
#: existing journals get it from ``create_all``.
job_copies = Table(
    "job_copies",
    METADATA,
    Column("job_id", Integer, ForeignKey("jobs.id"), primary_key=True, autoincrement=False),
    Column("fingerprint", String(64), nullable=False),
)

#: States of ``job_instances`` rows that mean the destination confirmed the instance.
CONFIRMED_STATES = ("sent", "warning")
#: A stored instance whose Storage Commitment failed: sent again by a retry.
COMMIT_FAILED = "nocommit"  # job_instances.state is VARCHAR(10)

#: The state ``dicomproxy reconcile --fix`` gives a confirmed row whose instance the destination no
#: longer holds (deleted there): no longer confirmed, so every stage sends it again; the row (its
#: C-STORE status, syntax, bytes) stays for the record (docs/operations.md).
LOST = "lost"

RETRY_REQUESTED, RETRYING = JobOutcome.RETRY_REQUESTED.value, JobOutcome.RETRYING.value


def _sqlite_wal(dbapi_conn: Any, _record: Any) -> None:
    """WAL + synchronous=NORMAL: a commit per instance stays cheap and survives a killed process
    (only a power loss may drop the last commits)."""
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


@dataclass
class InstanceRecord:
    sop_instance_uid: str
    state: str
    sop_class_uid: str = ""
    status: int | None = None
    transfer_syntax: str = ""
    bytes: int = 0
    error: str = ""


#: The ``job_instances`` columns an :class:`InstanceRecord` fills, with its job.
INSTANCE_COLUMNS = ("job_id", *InstanceRecord.__dataclass_fields__)


@dataclass(frozen=True)
class JobKey:
    """One routed retrieve key of a job: a study, optionally some of its series and instances."""

    study_uid: str
    series_uids: tuple[str, ...] = ()
    sop_uids: tuple[str, ...] = ()
    archive: str = ""


@dataclass
class JobView:
    row: dict[str, Any]
    instances: list[dict[str, Any]] = field(default_factory=list)


class JobQueries:
    """What other stages ask the journal about jobs (the push queue, the audit trail): they call
    these methods of :class:`Journal` instead of reading its tables (issue 23)."""

    engine: Engine

    def confirmed_of(self, job_ids: Collection[int]) -> frozenset[str]:
        """SOP Instance UIDs the destination confirmed in any of ``job_ids``."""
        return frozenset(uid for uid, _ in self.confirmed_classes_of(job_ids))

    def confirmed_classes_of(self, job_ids: Collection[int]) -> set[tuple[str, str]]:
        """(SOP Instance UID, SOP Class UID) of every instance confirmed in any of ``job_ids``."""
        if not job_ids:
            return set()
        q = (
            select(job_instances.c.sop_instance_uid, job_instances.c.sop_class_uid)
            .where(job_instances.c.job_id.in_(list(job_ids)), job_instances.c.state.in_(CONFIRMED_STATES))
            .distinct()
        )
        with self.engine.connect() as conn:
            return {(str(uid), str(cls)) for uid, cls in conn.execute(q)}

    def expected_of(self, job_ids: Collection[int], sop_classes: Collection[str]) -> set[str]:
        """SOP Instance UIDs of ``sop_classes`` the PACS announced for any of ``job_ids``."""
        if not job_ids:
            return set()
        q = select(job_expected.c.sop_instance_uid).where(
            job_expected.c.job_id.in_(list(job_ids)), job_expected.c.sop_class_uid.in_(list(sop_classes))
        )
        with self.engine.connect() as conn:
            return {str(r[0]) for r in conn.execute(q)}

    def newest_archive(self, job_ids: Collection[int]) -> str:
        """The archive recorded on the newest of ``job_ids`` that recorded one; "" when none did."""
        if not job_ids:
            return ""
        q = (
            select(jobs.c.archive)
            .where(jobs.c.id.in_(list(job_ids)), jobs.c.archive != "")
            .order_by(jobs.c.id.desc())
            .limit(1)
        )
        with self.engine.connect() as conn:
            return str(conn.execute(q).scalar() or "")

    def ended_since(self, since: dt.datetime) -> list[tuple[int, str]]:
        """(job ID, outcome) of every job that ended at or after ``since`` (naive UTC), oldest first
        (the alerts' job failure rate)."""
        q = select(jobs.c.id, jobs.c.outcome).where(jobs.c.ended >= since).order_by(jobs.c.id)
        with self.engine.connect() as conn:
            return [(int(i), str(o)) for i, o in conn.execute(q)]

    def interrupted_jobs(self) -> list[dict[str, Any]]:
        """The rows of every job left ``interrupted``, oldest first."""
        q = select(jobs).where(jobs.c.outcome == JobOutcome.INTERRUPTED.value).order_by(jobs.c.id)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings().all()]

    def confirmed_by_study(
        self, destination: str, study_uids: Collection[str], started_after: dt.datetime | None = None
    ) -> dict[str, frozenset[str]]:
        """Study Instance UID → SOP Instance UIDs that jobs of any kind (C-MOVE, C-GET, push) to
        ``destination`` journalled as confirmed (``dicomproxy reconcile``); studies with none are
        left out. A job of one study counts all its instances for it (its order/report objects
        too); a job of several assigns each by the instances the PACS announced (``job_expected``).
        ``started_after`` (naive UTC): only jobs started then or later are read (a study is not
        delivered before it was performed)."""
        wanted = set(study_uids)
        studies_of: dict[int, list[str]] = {}
        with self.engine.connect() as conn:
            q = select(jobs.c.id, jobs.c.study_uids).where(jobs.c.destination == destination)
            if started_after is not None:
                q = q.where(jobs.c.started >= started_after)
            for job_id, text in conn.execute(q):
                try:
                    listed = [str(u) for u in json.loads(text or "[]")]
                except ValueError:
                    continue
                if wanted.intersection(listed):
                    studies_of[int(job_id)] = listed
            found: dict[str, set[str]] = {}
            ids = sorted(studies_of)
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                where_of: dict[tuple[int, str], str] = {}
                several = [j for j in chunk if len(studies_of[j]) > 1]
                if several:
                    announced = select(
                        job_expected.c.job_id, job_expected.c.sop_instance_uid, job_expected.c.study_uid
                    ).where(job_expected.c.job_id.in_(several))
                    for job_id, uid, of in conn.execute(announced):
                        where_of[(int(job_id), str(uid))] = str(of)
                confirmed = select(job_instances.c.job_id, job_instances.c.sop_instance_uid).where(
                    job_instances.c.job_id.in_(chunk), job_instances.c.state.in_(CONFIRMED_STATES)
                )
                for job_id, uid in conn.execute(confirmed):
                    listed = studies_of[int(job_id)]
                    study = listed[0] if len(listed) == 1 else where_of.get((int(job_id), str(uid)), "")
                    if study in wanted:
                        found.setdefault(study, set()).add(str(uid))
        return {study: frozenset(uids) for study, uids in found.items()}

    def uncommitted_by_study(
        self, destination: str, study_uids: Collection[str]
    ) -> dict[str, frozenset[str]]:
        """Study Instance UID → SOP Instance UIDs ``destination`` confirmed storing and was asked to
        commit (Storage Commitment, PS3.4 Annex J) without committing them: the newest reference
        is pending, failed or unanswered. ``dicomproxy reconcile``'s ``stored-not-committed``;
        instances never asked (commitment off) are not in it."""
        confirmed = self.confirmed_by_study(destination, study_uids)
        uids = sorted({u for some in confirmed.values() for u in some})
        newest: dict[str, str] = {}
        with self.engine.connect() as conn:
            for start in range(0, len(uids), 500):
                q = (
                    select(commit_refs.c.sop_instance_uid, commit_refs.c.state)
                    .join(commit_requests, commit_requests.c.transaction_uid == commit_refs.c.transaction_uid)
                    .where(
                        commit_requests.c.destination == destination,
                        commit_refs.c.sop_instance_uid.in_(uids[start : start + 500]),
                    )
                    .order_by(commit_refs.c.id)
                )
                newest.update((str(u), str(s)) for u, s in conn.execute(q))
        out = {
            study: frozenset(u for u in some if newest.get(u, COMMITTED) != COMMITTED)
            for study, some in confirmed.items()
        }
        return {study: some for study, some in out.items() if some}

    def confirmed_counts(self, job_ids: Collection[int]) -> dict[int, int]:
        """Job ID → distinct instances the destination confirmed (jobs with none are left out)."""
        if not job_ids:
            return {}
        q = (
            select(job_instances.c.job_id, func.count(job_instances.c.sop_instance_uid.distinct()))
            .where(job_instances.c.job_id.in_(list(job_ids)), job_instances.c.state.in_(CONFIRMED_STATES))
            .group_by(job_instances.c.job_id)
        )
        with self.engine.connect() as conn:
            return {int(job): int(n) for job, n in conn.execute(q)}


class JobRetries:
    """Retries run by the serving process (issue 14) and what makes a job retryable: a part of
    :class:`Journal` (interrupted jobs, retry requests and claims, failed commitments)."""

    engine: Engine
    node: str

    def mark_interrupted(self) -> list[int]:
        """This node's jobs still ``running`` or being retried (the process died under them)
        become ``interrupted``; their IDs. Another node's running jobs are left alone."""
        mine = select(job_nodes.c.job_id).where(job_nodes.c.node == self.node)
        anyones = select(job_nodes.c.job_id)
        with self.engine.begin() as conn:
            ids = [
                int(r[0])
                for r in conn.execute(
                    select(jobs.c.id).where(
                        jobs.c.outcome.in_((JobOutcome.RUNNING.value, RETRYING)),
                        jobs.c.id.in_(mine) | jobs.c.id.not_in(anyones),
                    )
                )
            ]
            if ids:
                conn.execute(
                    update(jobs)
                    .where(jobs.c.id.in_(ids))
                    .values(
                        outcome=JobOutcome.INTERRUPTED.value,
                        ended=_now(),
                        error="process ended during the job",
                    )
                )
        return ids

    def not_committed(self, job_id: int, uids: Collection[str], *, retry: bool) -> bool:
        """Storage Commitment failed for ``uids`` (PS3.4 J.3.3.1): their stored rows become
        ``nocommit`` — no longer confirmed, so a retry (or a push delivery) sends them again —
        and with ``retry`` the job is handed to the serving process's retry worker. False if it
        was not handed over (running, already handed over, or not asked)."""
        with self.engine.begin() as conn:
            conn.execute(
                update(job_instances)
                .where(
                    job_instances.c.job_id == job_id,
                    job_instances.c.sop_instance_uid.in_(list(uids)),
                    job_instances.c.state.in_(CONFIRMED_STATES),
                )
                .values(state=COMMIT_FAILED)
            )
            if not retry:
                return False
            busy = (JobOutcome.RUNNING.value, RETRY_REQUESTED, RETRYING)
            res = conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id, jobs.c.outcome.not_in(busy))
                .values(outcome=RETRY_REQUESTED)
            )
            return bool(res.rowcount)

    def request_retry(self, job_id: int) -> bool:
        """Ask the serving process to retry ``job_id`` (from a retryable outcome); False if the
        job is not in such a state (already requested, running, done)."""
        with self.engine.begin() as conn:
            res = conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id, jobs.c.outcome.in_([o.value for o in RETRYABLE_OUTCOMES]))
                .values(outcome=RETRY_REQUESTED)
            )
            return bool(res.rowcount)

    def claim_retry(self) -> int | None:
        """The oldest requested retry, now ``retrying`` and ours (an UPDATE that only one
        process can win, so two nodes sharing a journal never run the same retry)."""
        with self.engine.begin() as conn:
            for (job_id,) in conn.execute(
                select(jobs.c.id).where(jobs.c.outcome == RETRY_REQUESTED).order_by(jobs.c.id).limit(5)
            ):
                res = conn.execute(
                    update(jobs)
                    .where(jobs.c.id == job_id, jobs.c.outcome == RETRY_REQUESTED)
                    .values(outcome=RETRYING)
                )
                if res.rowcount:
                    self._own(conn, int(job_id))
                    return int(job_id)
        return None

    def _own(self, conn: Any, job_id: int) -> None:
        """This node runs ``job_id`` now (a retry may run on another node than the first attempt)."""
        conn.execute(job_nodes.delete().where(job_nodes.c.job_id == job_id))
        conn.execute(insert(job_nodes).values(job_id=job_id, node=self.node))

    def interrupted_since(self, cutoff: dt.datetime) -> list[int]:
        """C-MOVE jobs left ``interrupted`` that started at or after ``cutoff`` (UTC)."""
        q = select(jobs.c.id).where(
            jobs.c.outcome == JobOutcome.INTERRUPTED.value,
            jobs.c.kind == JobKind.MOVE.value,
            jobs.c.started >= cutoff,
        )
        with self.engine.connect() as conn:
            return sorted(int(r[0]) for r in conn.execute(q.order_by(jobs.c.id)))


class JobIdentities:
    """Which identity each delivery carried (``job_identities``): a part of :class:`Journal`."""

    engine: Engine

    def record_identities(self, job_id: int, destination: str, identities: Collection[Identity]) -> None:
        """Journal the identities ``job_id`` gives its studies at ``destination``; a study already
        recorded for the job keeps its first record (a retry or a resume sends the same)."""
        if not identities:
            return
        t = job_identities
        try:
            with self.engine.begin() as conn:
                known = set(
                    conn.execute(
                        select(t.c.study_uid).where(t.c.job_id == job_id, t.c.destination == destination)
                    ).scalars()
                )
                rows = [
                    {
                        "job_id": job_id,
                        "destination": destination,
                        "study_uid": i.study_uid,
                        "digest": i.digest,
                        "identity": i.to_json(),
                        "recorded": _now(),
                    }
                    for i in {i.study_uid: i for i in identities}.values()
                    if i.study_uid not in known
                ]
                if rows:
                    conn.execute(insert(t), rows)
        except IntegrityError:
            pass  # recorded meanwhile by another writer of the same job: that record is the first

    def identities_of(self, job_id: int) -> dict[str, Identity]:
        """Study Instance UID → the identity ``job_id`` was planned with (its retry sends it again)."""
        t = job_identities
        with self.engine.connect() as conn:
            rows = conn.execute(select(t.c.study_uid, t.c.identity).where(t.c.job_id == job_id)).all()
        return {str(uid): Identity.from_json(text) for uid, text in rows}

    def record_copies(self, job_id: int, fingerprint: str) -> None:
        """``job_id`` sends corrected copies made with ``fingerprint`` (kept once: a retry's plan
        is the first one's)."""
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(job_copies).values(job_id=job_id, fingerprint=fingerprint))
        except IntegrityError:
            pass  # recorded before (the same job planned again)

    def copies_of(self, job_ids: Collection[int]) -> dict[int, str]:
        """Job → the fingerprint of the corrected copies it sends (jobs sending originals absent)."""
        if not job_ids:
            return {}
        q = select(job_copies.c.job_id, job_copies.c.fingerprint).where(job_copies.c.job_id.in_(job_ids))
        with self.engine.connect() as conn:
            return {int(j): str(f) for j, f in conn.execute(q)}

    def deliveries_of(self, study_uid: str) -> list[tuple[int, str, Identity]]:
        """(job, destination, identity) of every delivery of ``study_uid``, oldest job first:
        what a correction after delivery (IOCM) compares the view's current row with."""
        t = job_identities
        q = select(t.c.job_id, t.c.destination, t.c.identity).where(t.c.study_uid == study_uid)
        with self.engine.connect() as conn:
            rows = conn.execute(q.order_by(t.c.job_id)).all()
        return [(int(job), str(dest), Identity.from_json(text)) for job, dest, text in rows]


def node_name(ae_title: str) -> str:
    """This process among the nodes sharing a journal (push claims, corrections): host, pid, AE
    title."""
    return f"{socket.gethostname()}:{os.getpid()}:{ae_title}"[:64]


class Journal(JobQueries, JobRetries, JobIdentities, DeliveryRecords):
    """Write and read job records."""

    def __init__(self, url: str, node: str = "") -> None:
        #: This process's node: the host and its data directory (the spool is local to both).
        self.node = (node or socket.gethostname())[:255]
        self.engine: Engine = create_engine(url)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_wal)
        METADATA.create_all(self.engine)
        DELIVERED_METADATA.create_all(self.engine)  # delivered_exams, delivered_objects
        self._lock = threading.Lock()
        self._instance_insert: FastInsert | None = None

    @classmethod
    def for_config(cls, journal_url: str, data_path: Path) -> Journal:
        node = f"{socket.gethostname()}:{data_path.resolve()}"
        if journal_url:
            return cls(journal_url, node)
        data_path.mkdir(parents=True, exist_ok=True)
        return cls(f"sqlite:///{data_path / 'journal.db'}", node)

    @classmethod
    def over(cls, engine: Engine, node: str = "") -> Journal:
        """A journal on an engine already open on the journal database (the push queue's, the
        audit trail's): no second engine, no tables created (the process's journal did that)."""
        journal = cls.__new__(cls)
        journal.node = (node or socket.gethostname())[:255]
        journal.engine = engine
        journal._lock = threading.Lock()
        journal._instance_insert = None
        return journal

    def start(
        self,
        kind: JobKind,
        calling_ae: str,
        calling_host: str,
        destination: str,
        archive: str,
        request: str = "",
    ) -> int:
        """A new ``running`` job of this node; ``request``: the Identifier to keep until the job's
        keys are recorded (``job_requests``)."""
        with self.engine.begin() as conn:
            res = conn.execute(
                insert(jobs).values(
                    kind=JobKind(kind).value,
                    calling_ae=calling_ae,
                    calling_host=calling_host,
                    destination=destination,
                    archive=archive,
                    started=_now(),
                )
            )
            job_id = int(res.inserted_primary_key[0])  # type: ignore[index]
            conn.execute(insert(job_nodes).values(job_id=job_id, node=self.node))
            if request:
                conn.execute(insert(job_requests).values(job_id=job_id, identifier=request))
            return job_id

    def update(self, job_id: int, **values: Any) -> None:
        if "outcome" in values:  # stored as its text
            values["outcome"] = JobOutcome(values["outcome"]).value
        if "study_uids" in values:
            values["study_uids"] = json.dumps(list(values["study_uids"]))
        with self.engine.begin() as conn:
            conn.execute(update(jobs).where(jobs.c.id == job_id).values(**values))

    def add_instances(self, job_id: int, records: list[InstanceRecord]) -> None:
        """Journal sent instances in one transaction (the relay's per-instance hot path:
        :class:`~dicomproxy.relay.fastinsert.FastInsert`)."""
        if not records:
            return
        writer = self._instance_insert
        if writer is None:
            writer = self._instance_insert = FastInsert(self.engine, job_instances, INSTANCE_COLUMNS)
        writer([{"job_id": job_id, **r.__dict__} for r in records])

    def finish(
        self, job_id: int, *, status: int, outcome: JobOutcome, error: str = "", **counts: Any
    ) -> None:
        self.update(
            job_id,
            status=int(status),
            outcome=JobOutcome(outcome).value,
            error=error[:2000],
            ended=_now(),
            **counts,
        )
        with self.engine.begin() as conn:  # answered: its request is not needed again
            conn.execute(job_requests.delete().where(job_requests.c.job_id == job_id))

    def recent(self, limit: int = 20) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(jobs).order_by(jobs.c.id.desc()).limit(limit)).mappings().all()
        return [dict(r) for r in rows]

    def get(self, job_id: int, all_instances: bool = False) -> JobView | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(jobs).where(jobs.c.id == job_id)).mappings().first()
            if row is None:
                return None
            q = select(job_instances).where(job_instances.c.job_id == job_id)
            if not all_instances:
                q = q.where(job_instances.c.state.in_(("failed", "missing", "warning", LOST)))
            inst = conn.execute(q.order_by(job_instances.c.id)).mappings().all()
        return JobView(dict(row), [dict(r) for r in inst])

    # --- restart safety (issue 6) ---

    def add_expected(self, job_id: int, refs: list[dict[str, str]]) -> None:
        """Record the announced instances (keys: study_uid, series_uid, sop_instance_uid, sop_class_uid)."""
        if refs:
            with self.engine.begin() as conn:
                conn.execute(insert(job_expected), [{"job_id": job_id, **r} for r in refs])

    def unconfirmed(self, job_id: int) -> list[dict[str, Any]]:
        """Announced instances of ``job_id`` the destination has not confirmed (no sent/warning row)."""
        confirmed = select(job_instances.c.sop_instance_uid).where(
            job_instances.c.job_id == job_id, job_instances.c.state.in_(CONFIRMED_STATES)
        )
        q = (
            select(job_expected)
            .where(job_expected.c.job_id == job_id, job_expected.c.sop_instance_uid.not_in(confirmed))
            .order_by(job_expected.c.id)
        )
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings().all()]

    def record_keys(self, job_id: int, keys: list[JobKey], archive: str) -> None:
        """The routed keys of ``job_id`` and the archive list recorded on the job, in one transaction
        that also drops the job's request (the keys now say what it asks)."""
        with self.engine.begin() as conn:
            conn.execute(update(jobs).where(jobs.c.id == job_id).values(archive=archive))
            conn.execute(job_requests.delete().where(job_requests.c.job_id == job_id))
            if keys:
                conn.execute(
                    insert(job_keys),
                    [
                        {
                            "job_id": job_id,
                            "study_uid": k.study_uid,
                            "series_uids": json.dumps(list(k.series_uids)),
                            "sop_uids": json.dumps(list(k.sop_uids)),
                            "archive": k.archive,
                        }
                        for k in keys
                    ],
                )

    def request(self, job_id: int) -> str | None:
        """The Identifier (DICOM JSON) of a job whose keys were never recorded, if it was kept."""
        q = select(job_requests.c.identifier).where(job_requests.c.job_id == job_id)
        with self.engine.connect() as conn:
            return conn.execute(q).scalar_one_or_none()

    def keys(self, job_id: int) -> list[JobKey]:
        """The keys :meth:`record_keys` wrote for ``job_id`` (empty for a job that predates them)."""
        q = select(job_keys).where(job_keys.c.job_id == job_id).order_by(job_keys.c.id)
        with self.engine.connect() as conn:
            rows = conn.execute(q).mappings().all()
        return [
            JobKey(
                r["study_uid"],
                tuple(json.loads(r["series_uids"])),
                tuple(json.loads(r["sop_uids"])),
                r["archive"],
            )
            for r in rows
        ]

    def confirmed_uids(self, job_id: int) -> set[str]:
        """SOP Instance UIDs of ``job_id`` the destination confirmed."""
        q = select(job_instances.c.sop_instance_uid).where(
            job_instances.c.job_id == job_id, job_instances.c.state.in_(CONFIRMED_STATES)
        )
        with self.engine.connect() as conn:
            return {str(r[0]) for r in conn.execute(q)}

    def has_expected(self, job_id: int) -> bool:
        with self.engine.connect() as conn:
            q = select(job_expected.c.id).where(job_expected.c.job_id == job_id).limit(1)
            return conn.execute(q).first() is not None

    def confirmed_count(self, job_id: int) -> int:
        """Distinct instances of ``job_id`` confirmed by the destination."""
        q = (
            select(job_instances.c.sop_instance_uid)
            .where(job_instances.c.job_id == job_id, job_instances.c.state.in_(CONFIRMED_STATES))
            .distinct()
        )
        with self.engine.connect() as conn:
            return len(conn.execute(q).all())

    def unconfirm(self, destination: str, sop_uids: Collection[str]) -> int:
        """``dicomproxy reconcile --fix``: ``destination`` no longer holds these instances (its
        C-FIND does not list them), so their confirmed rows of jobs to it become :data:`LOST`; how
        many rows changed. Nothing then counts them as delivered (push's exclusions and re-checks,
        ``jobs retry``), so the next delivery sends them again."""
        uids = sorted(set(sop_uids))
        changed = 0
        to_dest = select(jobs.c.id).where(jobs.c.destination == destination)
        with self.engine.begin() as conn:
            for start in range(0, len(uids), 500):
                res = conn.execute(
                    update(job_instances)
                    .where(
                        job_instances.c.job_id.in_(to_dest),
                        job_instances.c.sop_instance_uid.in_(uids[start : start + 500]),
                        job_instances.c.state.in_(CONFIRMED_STATES),
                    )
                    .values(state=LOST)
                )
                changed += int(res.rowcount)
        return changed

    def job_ids(self) -> set[int]:
        with self.engine.connect() as conn:
            return {int(r[0]) for r in conn.execute(select(jobs.c.id))}

    def close(self) -> None:
        if self._instance_insert is not None:
            self._instance_insert.close()
        self.engine.dispose()
