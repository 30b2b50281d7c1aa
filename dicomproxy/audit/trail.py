"""The audit trail: every access to patient data, durably, in the journal database.

One table, ``audit_log``, written only through :meth:`AuditTrail.append` (this module has no
update or delete). Each row carries ``hash = SHA-256(previous hash + canonical JSON of the row)``,
so :meth:`AuditTrail.verify` finds a row that was edited, deleted or inserted out of order: the
chain breaks at the first such row. (Deleting the newest rows leaves a valid, shorter chain;
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
"""

from __future__ import annotations

import datetime as dt
import hashlib
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
    insert,
    select,
    update,
)
from sqlalchemy.engine import Engine

from dicomproxy import events
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
)

#: One row: the chain head (last seq and hash), updated in the same transaction as each append.
audit_head = Table(
    "audit_head",
    AUDIT_METADATA,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", Integer, nullable=False),
    Column("hash", String(64), nullable=False),
)

GENESIS = "0" * 64

#: Columns that the hash covers, in this order.
HASHED = (
    "seq",
    "time",
    "action",
    "outcome",
    "calling_ae",
    "address",
    "tls_identity",
    "destination",
    "job_id",
    "detail",
    "patient_ids",
    "study_uids",
)


class Action:
    """The ``action`` column's vocabulary."""

    START = "start"
    STOP = "stop"
    ASSOCIATION = "association"
    FIND = "find"
    MOVE = "move"
    GET = "get"
    RETRY = "retry"


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


def row_hash(prev_hash: str, row: dict[str, Any]) -> str:
    """SHA-256 over the previous hash and the canonical JSON of the hashed columns."""
    values = {}
    for name in HASHED:
        value = row[name]
        if isinstance(value, dt.datetime):
            value = value.strftime("%Y-%m-%dT%H:%M:%S")
        values[name] = value
    canonical = json.dumps(values, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256((prev_hash + canonical).encode("utf-8")).hexdigest()


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
    """Append-only access to ``audit_log`` on the journal's engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        AUDIT_METADATA.create_all(engine)
        self._lock = threading.Lock()  # one writer per process at a time; the DB serialises processes

    def append(self, record: AuditRecord) -> int:
        """Write one row at the end of the chain; its sequence number."""
        base = {
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
        with self._lock, self.engine.begin() as conn:
            # Write first (takes the write lock on SQLite, a row lock elsewhere), then read the head.
            res = conn.execute(update(audit_head).where(audit_head.c.id == 1).values(id=1))
            if not res.rowcount:
                conn.execute(insert(audit_head).values(id=1, seq=0, hash=GENESIS))
            head = conn.execute(
                select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == 1).with_for_update()
            ).one()
            row = {**base, "seq": int(head.seq) + 1, "prev_hash": head.hash}
            row["hash"] = row_hash(head.hash, row)
            conn.execute(insert(audit_log).values(**row))
            conn.execute(
                update(audit_head).where(audit_head.c.id == 1).values(seq=row["seq"], hash=row["hash"])
            )
            return int(row["seq"])

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

    def _all(self) -> Iterator[dict[str, Any]]:
        with self.engine.connect() as conn:
            for r in conn.execute(select(audit_log).order_by(audit_log.c.seq)).mappings():
                yield dict(r)

    def _head(self) -> tuple[int, str] | None:
        with self.engine.connect() as conn:
            head = conn.execute(
                select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == 1)
            ).first()
        return None if head is None else (int(head.seq), str(head.hash))

    def verify(self) -> VerifyResult:
        """Walk the chain: consecutive sequence numbers, each prev_hash the previous hash, each hash
        recomputed; the head row must name the last row.

        A serving process may append while this runs (its row and the head in one transaction), so
        the head is read before the walk and again after it: every row the first names was there
        before the walk began (one missing was removed; the head's own row must hash as the head
        says), and a row walked beyond the second was never appended through the trail."""
        before = self._head()
        prev, expected_seq, n = GENESIS, 1, 0
        hashes = [GENESIS]  # hashes[k]: the hash of row k (row 0: the genesis)
        for row in self._all():
            seq = int(row["seq"])
            if seq != expected_seq:
                return VerifyResult(
                    False, n, expected_seq - 1, prev, expected_seq, f"row {expected_seq} is missing"
                )
            if row["prev_hash"] != prev:
                return VerifyResult(
                    False, n, seq - 1, prev, seq, "previous hash does not match (row removed?)"
                )
            if row_hash(prev, row) != row["hash"]:
                return VerifyResult(
                    False, n, seq - 1, prev, seq, "row content does not match its hash (edited)"
                )
            prev, expected_seq, n = row["hash"], seq + 1, n + 1
            hashes.append(prev)
        after = self._head()
        for head in (before, after):
            if head is None:
                continue
            head_seq, head_hash = head
            if head_seq > n and head is before:
                return VerifyResult(
                    False,
                    n,
                    n,
                    prev,
                    n + 1,
                    f"the chain head names row {head_seq}: rows after {n} were removed",
                )
            if head_seq <= n and hashes[head_seq] != head_hash:  # its row changed, its hash recomputed
                return VerifyResult(
                    False,
                    head_seq - 1,
                    head_seq - 1,
                    hashes[head_seq - 1],
                    head_seq,
                    f"row {head_seq} does not match the chain head's hash (edited)",
                )
        if after is not None and after[0] < n:
            return VerifyResult(
                False,
                after[0],
                after[0],
                hashes[after[0]],
                after[0] + 1,
                f"the chain head names row {after[0]}: rows after it were added outside the trail",
            )
        return VerifyResult(True, n, n, prev)


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
    """Turns events into audit rows (called on the events dispatcher thread)."""

    def __init__(self, trail: AuditTrail, identities: JobIdentities | None = None) -> None:
        self.trail = trail
        self.identities = identities
        self._jobs: dict[int, AuditRecord] = {}  # started, not finished

    def __call__(self, event: events.Event) -> None:
        record = self.record_for(event)
        if record is not None:
            self.trail.append(record)
        if isinstance(event, events.ProcessStarted):
            for interrupted in self.interrupted_records():
                self.trail.append(interrupted)
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

    def _retry_requested(self, event: events.RetryRequested) -> AuditRecord:
        return AuditRecord(
            Action.RETRY,
            "requested",
            job_id=event.job_id,
            calling_ae=event.by[:16],
            detail={"by": event.by},
            time=event.time,
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
    }


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
