"""The audit trail: every access to patient data, durably, in the journal database.

One table, ``audit_log``, written only through :meth:`AuditTrail.append` and
:meth:`AuditTrail.append_many` (this module has no
update or delete; :mod:`dicomproxy.audit.retention` deletes the oldest rows after exporting them,
leaving an anchor). Each row carries ``hash = H(previous hash + canonical JSON of the row)`` with H
= SHA-256 or SM3 (``[audit] hash``, :mod:`dicomproxy.audit.hashing`; the row's ``hash_alg``), so
:meth:`AuditTrail.verify` finds a row that was edited, deleted or inserted out of order: the
chain breaks at the first such row. The algorithm changes only at a ``hash-switch`` row, appended
by the first write after ``[audit] hash`` was changed. (Deleting the newest rows leaves a valid,
shorter chain;
``audit verify`` prints the last sequence number and hash so that they can be compared with a copy
kept elsewhere, e.g. the syslog/ATNA repository.)

What is recorded (issue 15): associations accepted and rejected (with the reason), every C-FIND
(level, keys, number of matches), every C-MOVE/C-GET (patient IDs, accession numbers, study UIDs
as requested and as resolved, instance count, destination, outcome), every ``jobs retry``, start
and stop; each with time, calling AE, peer address and TLS identity. Identifiers are stored here
because that is the trail's purpose; they never go to INFO logs.

Appends come from the events dispatcher thread (:class:`AuditSubscriber`) or, for ``jobs retry``,
from the command itself. Two writers on one database (serve and a ``jobs retry``) are serialised by
taking the chain head inside the inserting transaction; on SQLite the transaction is ``BEGIN
IMMEDIATE``-like because the first statement is a write (the head row is updated first).

Group commit (issue 29): :class:`AuditSubscriber` keeps the records of one batch of the events bus
(:class:`dicomproxy.events.BatchSubscriber`) and writes them at its end with
:meth:`AuditTrail.append_many`: one transaction, one head lock, one multi-row insert, each row
chained exactly as :meth:`AuditTrail.append` would chain it. A batch that fails is written again
record by record, so a bad record costs only itself. What is still in memory when the process is
killed (SIGKILL) is lost, as the queued events were before: at most one batch (≤ 20 ms of events).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from sqlalchemy import (
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    bindparam,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.schema import CreateColumn

from dicomproxy import events
from dicomproxy.audit.hashing import SHA256, hasher, row_hash
from dicomproxy.status import JobKind, JobOutcome, status_label

LOG = logging.getLogger("dicomproxy.audit")

AUDIT_METADATA = MetaData()

audit_log = Table(
    "audit_log",
    AUDIT_METADATA,
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("time", DateTime, nullable=False),  # UTC
    Column("action", String(24), nullable=False, index=True),
    Column("outcome", String(24), nullable=False, default=""),
    Column("calling_ae", String(16), nullable=False, default="", index=True),
    Column("address", String(64), nullable=False, default=""),
    Column("tls_identity", String(256), nullable=False, default=""),
    Column("destination", String(16), nullable=False, default=""),
    Column("job_id", Integer),
    #: JSON object: level, keys, matches, patient_ids, accession_numbers, study_uids, count, reason...
    Column("detail", Text, nullable=False, default="{}"),
    #: Space-separated identifiers for the filters (``audit --patient/--study``): " ID1 ID2 ".
    Column("patient_ids", Text, nullable=False, default=""),
    Column("study_uids", Text, nullable=False, default=""),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    #: The row's hash algorithm (:mod:`dicomproxy.audit.hashing`). Added after the first release:
    #: :func:`_migrate` adds it to an existing trail (its rows are SHA-256).
    Column("hash_alg", String(8), nullable=False, default=SHA256, server_default=SHA256),
)

#: One row: the chain head (last seq and hash), updated in the same transaction as each append.
audit_head = Table(
    "audit_head",
    AUDIT_METADATA,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", Integer, nullable=False),
    Column("hash", String(64), nullable=False),
)

#: The rows :mod:`dicomproxy.audit.retention` exported and deleted end at this one (id 1): the
#: chain verifies from its sequence number and hash instead of the genesis.
audit_anchor = Table(
    "audit_anchor",
    AUDIT_METADATA,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", Integer, nullable=False),
    Column("hash", String(64), nullable=False),
    Column("hash_alg", String(8), nullable=False),
)

GENESIS = "0" * 64
#: Most records :class:`AuditSubscriber` writes in one transaction (a longer burst of events is
#: written in several: bounded memory and head-lock time).
MAX_BATCH = 500

# The statements of an append, built once (issue 29: building them was most of a row's cost).
_TOUCH_HEAD = update(audit_head).where(audit_head.c.id == 1).values(id=1)
_READ_HEAD = select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == 1).with_for_update()
_CHAIN_ALG = select(audit_log.c.hash_alg).where(audit_log.c.seq == bindparam("head_seq"))
_SET_HEAD = (
    update(audit_head)
    .where(audit_head.c.id == 1)
    .values(seq=bindparam("new_seq"), hash=bindparam("new_hash"))
)
_INSERT = insert(audit_log)
#: How often :meth:`AuditTrail.verify` reads the head again when rows were appended as it walked.
VERIFY_ROUNDS = 20


class Action:
    """The ``action`` column's vocabulary."""

    START = "start"
    STOP = "stop"
    ASSOCIATION = "association"
    FIND = "find"
    MOVE = "move"
    GET = "get"
    RETRY = "retry"
    #: The chain's hash algorithm changes from this row on (detail: from, to).
    HASH_SWITCH = "hash-switch"
    #: Rows exported and deleted by the retention (detail: count, first/last seq, file, digest).
    PURGE = "purge"
    #: A request to the HTTP console (detail: role, method, path, status).
    CONSOLE = "console"
    #: A correction after delivery found (outcome detected | warned) or carried out (done |
    #: failed | retry); detail: kind, changed fields, note UID, counts (docs/identity.md).
    CORRECTION = "correction"
    #: A reload of the config file (detail: path, changed keys, restart-only keys, error).
    RELOAD = "reload"


@dataclass
class AuditRecord:
    action: str
    outcome: str = ""
    calling_ae: str = ""
    address: str = ""
    tls_identity: str = ""
    destination: str = ""
    job_id: int | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    patient_ids: tuple[str, ...] = ()
    study_uids: tuple[str, ...] = ()
    time: dt.datetime | None = None


def _naive_utc(t: dt.datetime | None) -> dt.datetime:
    t = t or dt.datetime.now(dt.timezone.utc)
    if t.tzinfo is not None:
        t = t.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return t.replace(microsecond=0)  # every database keeps whole seconds (MariaDB DATETIME)


def _ids(values: tuple[str, ...] | list[str]) -> str:
    clean = [v.strip() for v in values if v and v.strip()]
    return f" {' '.join(clean)} " if clean else ""


def _row(record: AuditRecord) -> dict[str, Any]:
    """The columns of ``record``'s row but its place in the chain (seq, prev_hash, hash, hash_alg)."""
    return {
        "time": _naive_utc(record.time),
        "action": record.action,
        "outcome": record.outcome,
        "calling_ae": record.calling_ae.strip()[:16],
        "address": record.address[:64],
        "tls_identity": record.tls_identity[:256],
        "destination": record.destination.strip()[:16],
        "job_id": record.job_id,
        "detail": json.dumps(record.detail, sort_keys=True, ensure_ascii=False, default=str),
        "patient_ids": _ids(record.patient_ids),
        "study_uids": _ids(record.study_uids),
    }


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    rows: int
    last_seq: int
    last_hash: str
    #: The first sequence number where the chain breaks, and why.
    broken_at: int | None = None
    problem: str = ""


class AuditTrail:
    """Append-only access to ``audit_log`` on the journal's engine; new rows hashed with ``hash_alg``."""

    def __init__(self, engine: Engine, hash_alg: str = SHA256) -> None:
        self.engine = engine
        self.hash_alg = hash_alg
        hasher(hash_alg)  # SM3 where none exists: ValueError now, not at the first append
        AUDIT_METADATA.create_all(engine)
        _migrate(engine)
        self._lock = threading.Lock()  # one writer per process at a time; the DB serialises processes
        #: (seq, hash) of the last row this trail chained (hashed with ``hash_alg``): a head that
        #: names it needs no look-up of the chain's algorithm (one round trip less per append).
        self._tail: tuple[int, str] | None = None

    def append(self, record: AuditRecord) -> int:
        """Write one row at the end of the chain (after a ``hash-switch`` row when the chain's
        algorithm is not ours yet); its sequence number."""
        return self.append_many([record])

    def append_many(self, records: list[AuditRecord]) -> int:
        """Write ``records`` at the end of the chain, in this order, in one transaction (all or
        none; a ``hash-switch`` row first when needed); the last sequence number (0: none given)."""
        if not records:
            return 0
        rows = [_row(record) for record in records]  # serialised before the head is locked
        with self._lock, self.engine.begin() as conn:
            return self._chain_in(conn, rows)

    def append_in(self, conn: Connection, record: AuditRecord) -> int:
        """:meth:`append` inside the caller's transaction (the retention's purge)."""
        return self._chain_in(conn, [_row(record)])

    def _chain_in(self, conn: Connection, rows: list[dict[str, Any]]) -> int:
        """Chain ``rows`` (:func:`_row`) to the head and insert them; the last sequence number."""
        # Write first (takes the write lock on SQLite, a row lock elsewhere), then read the head.
        if not conn.execute(_TOUCH_HEAD).rowcount:
            _create_head(conn)
        head = conn.execute(_READ_HEAD).one()
        seq, prev = int(head.seq), str(head.hash)
        if (seq, prev) == self._tail:  # our own last row (a hash names its row: see _tail)
            chain_alg: str | None = self.hash_alg
        else:  # first append, another writer's row, or a transaction of ours that rolled back
            chain_alg = conn.execute(_CHAIN_ALG, {"head_seq": seq}).scalar()
        if chain_alg is not None and chain_alg != self.hash_alg:
            rows = [
                _row(AuditRecord(Action.HASH_SWITCH, detail={"from": chain_alg, "to": self.hash_alg})),
                *rows,
            ]
        chained = []
        for row in rows:
            seq += 1
            out = {**row, "seq": seq, "prev_hash": prev, "hash_alg": self.hash_alg}
            out["hash"] = prev = row_hash(prev, out, self.hash_alg)
            chained.append(out)
        conn.execute(_INSERT, chained)  # one statement for the batch (executemany / insertmanyvalues)
        conn.execute(_SET_HEAD, {"new_seq": seq, "new_hash": prev})
        self._tail = (seq, prev)
        return seq

    def rows(
        self,
        *,
        patient: str = "",
        study: str = "",
        peer: str = "",
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        limit: int = 0,
    ) -> list[dict[str, Any]]:
        """Rows matching the filters, oldest first."""
        q = select(audit_log).order_by(audit_log.c.seq)
        if patient:
            q = q.where(audit_log.c.patient_ids.contains(f" {patient.strip()} ", autoescape=True))
        if study:
            q = q.where(audit_log.c.study_uids.contains(f" {study.strip()} ", autoescape=True))
        if peer:
            q = q.where(audit_log.c.calling_ae == peer.strip())
        if since is not None:
            q = q.where(audit_log.c.time >= _naive_utc(since))
        if until is not None:
            q = q.where(audit_log.c.time < _naive_utc(until))
        if limit:
            q = q.limit(limit)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    def _after(self, seq: int) -> Iterator[dict[str, Any]]:
        q = select(audit_log).where(audit_log.c.seq > seq).order_by(audit_log.c.seq)
        with self.engine.connect() as conn:
            for r in conn.execute(q).mappings():
                yield dict(r)

    def verify(self) -> VerifyResult:
        """Walk the chain from the genesis (or the retention's anchor): consecutive sequence
        numbers, each prev_hash the previous hash, each hash recomputed with the row's algorithm,
        which changes only at a ``hash-switch`` row; the head row must name the last row."""
        with self.engine.connect() as conn:
            anchor = conn.execute(select(audit_anchor).where(audit_anchor.c.id == 1)).mappings().first()
        first = int(anchor["seq"]) if anchor else 0
        prev, expected_seq, n = (str(anchor["hash"]) if anchor else GENESIS), first + 1, first
        alg = str(anchor["hash_alg"]) if anchor else ""  # the first row may start with either
        hashes = {first: prev}  # the hash of each row verified so far (and of the anchor/genesis)
        for _ in range(VERIFY_ROUNDS):  # serve may append while we walk: the head first, then the rows
            with self.engine.connect() as conn:
                head = conn.execute(
                    select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == 1)
                ).first()
            for row in self._after(n):
                seq = int(row["seq"])
                problem = _row_problem(row, expected_seq, prev, alg)
                if problem:
                    return VerifyResult(False, n - first, expected_seq - 1, prev, expected_seq, problem)
                prev, alg, expected_seq, n = row["hash"], row["hash_alg"], seq + 1, seq
                hashes[seq] = prev
            if head is None or int(head.seq) >= n:
                break  # every row the head names was committed before we read it: judge it
        rows = n - first
        if head is None or (int(head.seq), head.hash) == (n, prev):
            return VerifyResult(True, rows, n, prev)
        head_seq = int(head.seq)
        if head_seq > n:
            return VerifyResult(
                False,
                rows,
                n,
                prev,
                n + 1,
                f"the chain head names row {head_seq}: rows after {n} were removed",
            )
        if head_seq not in hashes:
            return VerifyResult(
                False, rows, n, prev, head_seq, f"the chain head names row {head_seq}, before the anchor"
            )
        if hashes[head_seq] != head.hash:  # the head's own row was changed and its hash recomputed
            return VerifyResult(
                False,
                head_seq - 1 - first,
                head_seq - 1,
                hashes.get(head_seq - 1, ""),
                head_seq,
                f"row {head_seq} does not match the chain head's hash (edited)",
            )
        return VerifyResult(
            False,
            head_seq - first,
            head_seq,
            hashes[head_seq],
            head_seq + 1,
            f"the chain head names row {head_seq}: rows after it were added outside the trail",
        )


def _create_head(conn: Connection) -> None:
    """The chain's head row of an empty trail. Two first writers on a server database may both find
    it missing: the second one's insert fails on the key (after the first commits), in a savepoint,
    and it then locks the row the first one made. (SQLite: the first UPDATE took the write lock.)"""
    if conn.dialect.name == "sqlite":
        conn.execute(insert(audit_head).values(id=1, seq=0, hash=GENESIS))
        return
    try:
        with conn.begin_nested():
            conn.execute(insert(audit_head).values(id=1, seq=0, hash=GENESIS))
    except IntegrityError:
        conn.execute(_TOUCH_HEAD)


def _row_problem(row: dict[str, Any], expected_seq: int, prev: str, alg: str) -> str:
    """Why ``row`` breaks the chain ("" when it does not)."""
    if int(row["seq"]) != expected_seq:
        return f"row {expected_seq} is missing"
    if row["prev_hash"] != prev:
        return "previous hash does not match (row removed?)"
    if alg and row["hash_alg"] != alg and row["action"] != Action.HASH_SWITCH:
        return f"the hash algorithm changes ({alg} → {row['hash_alg']}) at a row that is no hash-switch"
    try:
        recomputed = row_hash(prev, row, str(row["hash_alg"]))
    except ValueError as exc:
        return str(exc)
    if recomputed != row["hash"]:
        return "row content does not match its hash (edited)"
    return ""


def _migrate(engine: Engine) -> None:
    """Add the columns a trail written by an older release lacks (its rows: SHA-256)."""
    have = {c["name"] for c in inspect(engine).get_columns("audit_log")}
    if "hash_alg" not in have:
        column = CreateColumn(audit_log.c.hash_alg).compile(dialect=engine.dialect)
        add = "ADD" if engine.dialect.name in ("mssql", "oracle") else "ADD COLUMN"
        try:
            with engine.begin() as conn:
                conn.execute(text(f"ALTER TABLE audit_log {add} {column}"))
        except DBAPIError:  # another process added it first
            if "hash_alg" not in {c["name"] for c in inspect(engine).get_columns("audit_log")}:
                raise


# --- events → records --------------------------------------------------------------------------

#: Request keys of a C-MOVE/C-GET copied into the audit record (patient data: audit only).
RETRIEVE_KEYS = (
    "QueryRetrieveLevel",
    "PatientID",
    "AccessionNumber",
    "StudyInstanceUID",
    "SeriesInstanceUID",
)


def _split(value: str) -> list[str]:
    return [v for v in value.split("\\") if v.strip()]


class JobIdentities:
    """Patient IDs and accession numbers of each job's resolved studies, looked up in the exam view
    on the events thread when a job's studies are known (never on the relay's thread). Subscribed
    before the audit and ATNA subscribers, which read :meth:`get` for the same event."""

    KEEP = 1000

    def __init__(self, view: Any) -> None:
        self.view = view
        self._found: dict[int, tuple[tuple[str, ...], tuple[str, ...]]] = {}

    def __call__(self, event: events.Event) -> None:
        if isinstance(event, events.JobResolved) and self.view is not None:
            try:
                self._found[event.job_id] = patients_for_studies(self.view, event.study_uids)
            except Exception as exc:  # the view is down: the record keeps the requested keys only
                LOG.warning("job %d: patient IDs for the audit record not found: %s", event.job_id, exc)
            while len(self._found) > self.KEEP:
                self._found.pop(next(iter(self._found)))

    def get(self, job_id: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return self._found.get(job_id, ((), ()))


def patients_for_studies(view: Any, study_uids: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(Patient IDs, accession numbers) of the visible view rows holding these studies."""
    from sqlalchemy import and_

    from dicomproxy.view.uids import split_uid_cell

    wanted = set(study_uids)
    if not wanted:
        return (), ()
    c = view.table.c
    patients: dict[str, None] = {}
    accessions: dict[str, None] = {}
    for pred in view.uid_predicates(sorted(wanted)) or []:
        stmt = select(c.PatientID, c.AccessionNumber, c.StudyInstanceUID, c.HospitalID, c.Privacy).where(
            and_(view.visible(), pred)
        )
        for row in view.stream(stmt):
            if view.is_visible(row) and wanted & set(split_uid_cell(row["StudyInstanceUID"])):
                if row["PatientID"]:
                    patients[str(row["PatientID"]).strip()] = None
                if row["AccessionNumber"]:
                    accessions[str(row["AccessionNumber"]).strip()] = None
    return tuple(patients), tuple(accessions)


class AuditSubscriber:
    """Turns events into audit rows (called on the events dispatcher thread), written once per
    batch of the bus (:meth:`end_batch`, module docstring: group commit)."""

    def __init__(self, trail: AuditTrail, identities: JobIdentities | None = None) -> None:
        self.trail = trail
        self.identities = identities
        self._jobs: dict[int, AuditRecord] = {}  # started, not finished
        self._pending: list[AuditRecord] = []  # this batch's records, in the order of the events

    def __call__(self, event: events.Event) -> None:
        record = self.record_for(event)
        if record is not None:
            self._add(record)
        if isinstance(event, events.ProcessStarted):
            for interrupted in self.interrupted_records():
                self._add(interrupted)
                events.publish(  # the ATNA message of the job (dicomproxy.audit.atna)
                    events.JobInterrupted(
                        job_id=interrupted.job_id or 0,
                        kind=interrupted.action,
                        peer=events.Peer(interrupted.calling_ae, interrupted.address),
                        destination=interrupted.destination,
                        study_uids=interrupted.study_uids,
                        patient_ids=interrupted.patient_ids,
                        instances=int(interrupted.detail.get("instances", 0)),
                    )
                )

    def _add(self, record: AuditRecord) -> None:
        self._pending.append(record)
        if len(self._pending) >= MAX_BATCH:
            self.end_batch()

    def end_batch(self) -> None:
        """Write the batch's records in one transaction. When that fails (one record the database
        refuses, or the database itself), each record is written on its own: a bad record is lost
        alone, with one ERROR line (no patient data: its action and the database's first line)."""
        records, self._pending = self._pending, []
        if not records:
            return
        try:
            self.trail.append_many(records)
            return
        except Exception as exc:
            LOG.warning(
                "audit: a batch of %d record(s) not written (%s); writing them one by one",
                len(records),
                _reason(exc),
            )
        for record in records:
            try:
                self.trail.append(record)
            except Exception as exc:
                LOG.error("audit: a %r record not written: %s", record.action, _reason(exc))

    def interrupted_records(self) -> list[AuditRecord]:
        """A C-MOVE/C-GET whose process died (SIGKILL, power loss, drain timeout) never reached its
        JobFinished event, so its audit row was never written. At the next start every job the
        journal marked ``interrupted`` and the trail does not name yet gets its row, from the
        journal (requester, destination, studies, counts) and the exam view (patient IDs)."""
        # the journal, asked through its methods (same database, same engine)
        from dicomproxy.relay.journal import Journal

        journal = Journal.over(self.trail.engine)
        candidates = journal.interrupted_jobs()
        audited = self._audited([int(row["id"]) for row in candidates])
        rows = [row for row in candidates if int(row["id"]) not in audited]
        # the job row's counts are written when a job ends, which these never did: count what
        # the destination confirmed, as `jobs retry` does
        confirmed = journal.confirmed_counts([int(row["id"]) for row in rows])
        out = []
        for row in rows:
            study_uids = tuple(json.loads(row["study_uids"] or "[]"))
            patients: tuple[str, ...] = ()
            accessions: tuple[str, ...] = ()
            view = self.identities.view if self.identities is not None else None
            if view is not None and study_uids:
                try:
                    patients, accessions = patients_for_studies(view, study_uids)
                except Exception as exc:  # the view is down: the row keeps the studies
                    LOG.warning("job %d: patient IDs for the audit record not found: %s", row["id"], exc)
            out.append(
                AuditRecord(
                    row["kind"],
                    outcome=JobOutcome.INTERRUPTED.value,
                    calling_ae=row["calling_ae"],
                    address=row["calling_host"],
                    destination=row["destination"],
                    job_id=int(row["id"]),
                    detail={
                        "patient_ids": list(patients),
                        "accession_numbers": list(accessions),
                        "study_uids": list(study_uids),
                        "instances": int(confirmed.get(row["id"], 0)),
                        "expected": int(row["expected"]),
                        "failed": int(row["failed"]),
                        "started": row["started"].isoformat(),
                        "note": "process ended during the job; recorded at the next start",
                    },
                    patient_ids=patients,
                    study_uids=study_uids,
                )
            )
        return out

    def _audited(self, job_ids: list[int]) -> set[int]:
        """Those of ``job_ids`` the trail names in a record of the job itself (its kind as the
        action), not a `retry` row the automatic resume may have written for the same job first."""
        audited: set[int] = set()
        kinds = [kind.value for kind in JobKind]
        with self.trail.engine.connect() as conn:
            for start in range(0, len(job_ids), 500):
                q = select(audit_log.c.job_id).where(
                    audit_log.c.job_id.in_(job_ids[start : start + 500]), audit_log.c.action.in_(kinds)
                )
                audited.update(int(r[0]) for r in conn.execute(q))
        return audited

    def record_for(self, event: events.Event) -> AuditRecord | None:
        """The row for ``event``, made by its builder in :attr:`_BUILDERS`; None for an event the
        trail does not record, and for a job's start and resolution (kept until the job ends:
        one row per job)."""
        for cls in type(event).__mro__:
            build = self._BUILDERS.get(cls)
            if build is not None:
                return build(self, event)
        return None

    # --- one builder per event type (the table below) -------------------------------------------

    def _process_started(self, event: events.ProcessStarted) -> AuditRecord:
        return AuditRecord(
            Action.START,
            "success",
            calling_ae=event.ae_title,
            time=event.time,
            detail={"version": event.version},
        )

    def _process_stopped(self, event: events.ProcessStopped) -> AuditRecord:
        return AuditRecord(
            Action.STOP,
            "success" if event.clean else "aborted-associations",
            calling_ae=event.ae_title,
            time=event.time,
        )

    def _association_accepted(self, event: events.AssociationAccepted) -> AuditRecord:
        return _with_peer(
            AuditRecord(
                Action.ASSOCIATION, "accepted", time=event.time, detail={"called_ae": event.called_ae}
            ),
            event.peer,
        )

    def _association_rejected(self, event: events.AssociationRejected) -> AuditRecord:
        detail = {"called_ae": event.called_ae, "reason": event.reason, "reason_code": event.reason_code}
        return _with_peer(
            AuditRecord(Action.ASSOCIATION, "rejected", time=event.time, detail=detail), event.peer
        )

    def _find_done(self, event: events.FindDone) -> AuditRecord:
        detail = {
            "model": event.model,
            "level": event.level,
            "source": event.source,
            "keys": event.keys,
            "matches": event.matches,
            "status": event.status,
        }
        return _with_peer(
            AuditRecord(
                Action.FIND,
                _status_outcome(event.status),
                time=event.time,
                detail=detail,
                patient_ids=tuple(_split(event.keys.get("PatientID", ""))),
                study_uids=tuple(_split(event.keys.get("StudyInstanceUID", ""))),
            ),
            event.peer,
        )

    def _job_started(self, event: events.JobStarted) -> None:
        keys = {k: v for k, v in event.keys.items() if k in RETRIEVE_KEYS}
        self._jobs[event.job_id] = _with_peer(
            AuditRecord(
                event.kind,
                destination=event.destination,
                job_id=event.job_id,
                detail={"keys": keys},
                patient_ids=tuple(_split(keys.get("PatientID", ""))),
                study_uids=tuple(_split(keys.get("StudyInstanceUID", ""))),
                time=event.time,
            ),
            event.peer,
        )

    def _job_resolved(self, event: events.JobResolved) -> None:
        pending = self._jobs.get(event.job_id)
        if pending is not None:
            pending.detail["resolved_study_uids"] = list(event.study_uids)
            pending.detail["level"] = event.level
            pending.study_uids = tuple(dict.fromkeys((*pending.study_uids, *event.study_uids)))
            if self.identities is not None:
                patients, accessions = self.identities.get(event.job_id)
                pending.patient_ids = tuple(dict.fromkeys((*pending.patient_ids, *patients)))
                pending.detail["patient_ids"] = list(pending.patient_ids)
                pending.detail["accession_numbers"] = list(accessions)

    def _job_finished(self, event: events.JobFinished) -> AuditRecord:
        pending = self._jobs.pop(event.job_id, None)
        if pending is None:
            pending = AuditRecord(event.kind, job_id=event.job_id)
        pending.outcome = event.outcome
        pending.detail.update(
            instances=event.completed + event.warning,
            failed=event.failed,
            status=event.status,
            bytes=event.bytes_out,
            finished=event.time.isoformat(),
        )
        return pending

    def _retrieve_refused(self, event: events.RetrieveRefused) -> AuditRecord:
        keys = {k: v for k, v in event.keys.items() if k in RETRIEVE_KEYS}
        return _with_peer(
            AuditRecord(
                event.kind,
                "refused",
                destination=event.destination,
                detail={"keys": keys, "status": event.status},
                patient_ids=tuple(_split(keys.get("PatientID", ""))),
                study_uids=tuple(_split(keys.get("StudyInstanceUID", ""))),
                time=event.time,
            ),
            event.peer,
        )

    def _console_request(self, event: events.ConsoleRequest) -> AuditRecord:
        return AuditRecord(
            Action.CONSOLE,
            outcome="success" if event.status < 400 else "refused",
            address=event.client,
            detail={"role": event.role, "method": event.method, "path": event.path, "status": event.status},
        )

    def _retry_requested(self, event: events.RetryRequested) -> AuditRecord:
        return AuditRecord(
            Action.RETRY,
            "requested",
            job_id=event.job_id,
            calling_ae=event.by[:16],
            detail={"by": event.by},
            time=event.time,
        )

    def _correction_found(self, event: events.CorrectionFound) -> AuditRecord:
        return AuditRecord(
            Action.CORRECTION,
            "detected" if event.acted else "warned",
            destination=event.destination,
            detail={"kind": event.kind, "changed": list(event.changed), "relinked_to": event.relinked_to},
            patient_ids=tuple(p for p in (event.old_patient_id, event.new_patient_id) if p),
            study_uids=tuple(u for u in (event.study_uid, event.relinked_to) if u),
            time=event.time,
        )

    def _correction_sent(self, event: events.CorrectionSent) -> AuditRecord:
        return AuditRecord(
            Action.CORRECTION,
            event.outcome,
            destination=event.destination,
            detail={
                "kind": event.kind,
                "note_uid": event.note_uid,
                "referenced": event.referenced,
                "copies": event.copies,
            },
            patient_ids=(event.patient_id,) if event.patient_id else (),
            study_uids=(event.study_uid,),
            time=event.time,
        )

    def _config_reloaded(self, event: events.ConfigReloaded) -> AuditRecord:
        detail = {
            "path": event.path,
            "changed": list(event.changed),
            "restart": list(event.restart),
            "error": event.error,
        }
        return AuditRecord(
            Action.RELOAD, "applied" if event.applied else "refused", time=event.time, detail=detail
        )

    #: Event type → its builder (an event of a type not listed is not recorded).
    _BUILDERS: ClassVar[dict[type[events.Event], Callable[[AuditSubscriber, Any], AuditRecord | None]]] = {
        events.ProcessStarted: _process_started,
        events.ProcessStopped: _process_stopped,
        events.AssociationAccepted: _association_accepted,
        events.AssociationRejected: _association_rejected,
        events.FindDone: _find_done,
        events.JobStarted: _job_started,
        events.JobResolved: _job_resolved,
        events.JobFinished: _job_finished,
        events.RetrieveRefused: _retrieve_refused,
        events.RetryRequested: _retry_requested,
        events.ConsoleRequest: _console_request,
        events.CorrectionFound: _correction_found,
        events.CorrectionSent: _correction_sent,
        events.ConfigReloaded: _config_reloaded,
    }


def _reason(exc: Exception) -> str:
    """The first line of the database's own message: SQLAlchemy's adds the statement's parameters,
    PostgreSQL's DETAIL line the failing row (patient data, never logged)."""
    cause = getattr(exc, "orig", None) or exc
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0] if lines else ''}"


def _with_peer(record: AuditRecord, peer: events.Peer) -> AuditRecord:
    record.calling_ae = peer.calling_ae
    record.address = f"{peer.address}:{peer.port}" if peer.port else peer.address
    record.tls_identity = peer.tls_identity
    return record


def _status_outcome(status: int) -> str:
    return status_label(status)


# --- output for `dicomproxy audit` -------------------------------------------------------------------

EXPORT_COLUMNS = (
    "seq",
    "time",
    "action",
    "outcome",
    "calling_ae",
    "address",
    "tls_identity",
    "destination",
    "job_id",
    "patient_ids",
    "study_uids",
    "detail",
)


def _export(row: dict[str, Any]) -> dict[str, Any]:
    out = {k: row[k] for k in EXPORT_COLUMNS}
    out["time"] = row["time"].strftime("%Y-%m-%dT%H:%M:%SZ")
    out["patient_ids"] = row["patient_ids"].split()
    out["study_uids"] = row["study_uids"].split()
    out["detail"] = json.loads(row["detail"] or "{}")
    return out


def _summary(detail: dict[str, Any]) -> str:
    parts = []
    for key in ("level", "matches", "instances", "failed", "reason"):
        if key in detail:
            parts.append(f"{key}={detail[key]}")
    return " ".join(parts)


def export_rows(rows: list[dict[str, Any]], fmt: str) -> Iterator[str]:
    """``table`` (for a terminal), ``json`` (one array) or ``csv`` (header line first)."""
    if fmt == "json":
        yield json.dumps([_export(r) for r in rows], ensure_ascii=False, indent=1)
        return
    if fmt == "csv":
        import csv
        import io

        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(EXPORT_COLUMNS)
        for r in rows:
            e = _export(r)
            e["patient_ids"] = " ".join(e["patient_ids"])
            e["study_uids"] = " ".join(e["study_uids"])
            e["detail"] = json.dumps(e["detail"], ensure_ascii=False, sort_keys=True)
            writer.writerow([e[c] for c in EXPORT_COLUMNS])
        yield buf.getvalue().rstrip("\n")
        return
    yield (
        f"{'#':>6} {'time (UTC)':19} {'action':11} {'outcome':10} {'AE':16} {'address':21} {'to':16} "
        f"{'job':>5} {'patient IDs':16} {'studies':>7} detail"
    )
    for r in rows:
        e = _export(r)
        yield (
            f"{e['seq']:>6} {e['time'][:19].replace('T', ' '):19} {e['action']:11} {e['outcome'][:10]:10} "
            f"{e['calling_ae']:16} {e['address'][:21]:21} {e['destination']:16} "
            f"{e['job_id'] if e['job_id'] is not None else '':>5} {','.join(e['patient_ids'])[:16]:16} "
            f"{len(e['study_uids']):>7} {_summary(e['detail'])}"
        )
