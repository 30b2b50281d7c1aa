"""The Storage Commitment ledger (PS3.4 Annex J): which delivered instances were asked to be
committed, in which transaction, and what the destination answered.

A C-MOVE or push job to a ``[[peers]]`` entry with ``storage_commitment = true`` ends
(:meth:`~dicomproxy.relay.engine.Engine.close`); :meth:`CommitmentLedger.job_ended` then journals
transactions for the instances the destination stored (C-STORE Success or Warning) and no
transaction covers yet — at most :data:`MAX_REFERENCES` references each, due at once. The
:class:`~dicomproxy.relay.committer.Committer` of the serving process sends each due transaction
as an N-ACTION and asks again, with back-off, until it is answered or its attempts are used up.
Everything is in the journal database before anything is sent, so a kill between N-ACTION and
N-EVENT-REPORT loses nothing: the next start asks again (the same Transaction UID).

Per instance: ``pending`` (asked, not answered) → ``committed`` | ``failed`` (Failure Reason
kept) | ``unanswered`` (no report after the last attempt). The tables are the journal's
(``relay/journal.py``), of their own, so existing journals get them without a migration.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from dataclasses import dataclass

from pydicom.uid import generate_uid
from sqlalchemy import insert, select, update

from dicomproxy import events
from dicomproxy.config import Config
from dicomproxy.identity.corrections import corrected_uid
from dicomproxy.relay.commitment_queries import CommitmentQueries, utcnow
from dicomproxy.relay.journal import (
    ANSWERED,
    ASKED,
    COMMITTED,
    CONFIRMED_STATES,
    DUE,
    FAILED,
    PENDING,
    UNANSWERED,
    Journal,
    commit_refs,
    commit_requests,
    job_copies,
    job_instances,
    jobs,
)
from dicomproxy.status import JobKind, Status
from dicomproxy.transport.commitment import INVALID_ARGUMENT_VALUE, PROCESSING_FAILURE, Ref, Report

LOG = logging.getLogger("dicomproxy.commitment")

#: References per N-ACTION: a bounded request (dcm4chee and Orthanc take thousands; a few hundred
#: keeps each request and its report small).
MAX_REFERENCES = 500


@dataclass(frozen=True)
class Transaction:
    """A due transaction, as the committer sends it."""

    transaction_uid: str
    job_id: int
    destination: str
    attempts: int
    refs: tuple[Ref, ...]


class CommitmentLedger(CommitmentQueries):
    """Storage Commitment transactions and references in the journal database (what they hold:
    :class:`~dicomproxy.relay.commitment_queries.CommitmentQueries`)."""

    def __init__(self, config: Config, journal: Journal) -> None:
        self.config = config
        self.journal = journal
        self.engine = journal.engine

    def job_ended(self, job_id: int) -> list[str]:
        """Journal transactions for what ``job_id`` stored at a destination that commits and no
        transaction of the job asks yet (a retry's resent instances get their own); the new
        Transaction UIDs. C-GET jobs are left out: their destination is the requester."""
        with self.engine.begin() as conn:
            job = conn.execute(select(jobs.c.kind, jobs.c.destination).where(jobs.c.id == job_id)).first()
            if (
                job is None
                or job.kind not in (JobKind.MOVE, JobKind.PUSH)
                or not self.wanted(job.destination)
            ):
                return []
            asked = select(commit_refs.c.sop_instance_uid).where(
                commit_refs.c.job_id == job_id, commit_refs.c.state.in_((PENDING, COMMITTED))
            )
            stored = conn.execute(
                select(job_instances.c.sop_instance_uid, job_instances.c.sop_class_uid)
                .where(
                    job_instances.c.job_id == job_id,
                    job_instances.c.state.in_(CONFIRMED_STATES),
                    job_instances.c.sop_instance_uid.not_in(asked),
                )
                .distinct()
                .order_by(job_instances.c.sop_instance_uid)
            ).all()
            now, made = utcnow(), list[str]()
            for start in range(0, len(stored), MAX_REFERENCES):
                uid = str(generate_uid())
                conn.execute(
                    insert(commit_requests).values(
                        transaction_uid=uid, job_id=job_id, destination=job.destination, due=now, created=now
                    )
                )
                conn.execute(
                    insert(commit_refs),
                    [
                        {"transaction_uid": uid, "job_id": job_id, "sop_instance_uid": u, "sop_class_uid": c}
                        for u, c in stored[start : start + MAX_REFERENCES]
                    ],
                )
                made.append(uid)
        if made:
            LOG.info("job %d: %d instance(s) to be committed by %s", job_id, len(stored), job.destination)
        return made

    def due(self, now: dt.datetime | None = None) -> list[Transaction]:
        """Transactions to send now (never asked, or asked and not answered by their due time)."""
        q = (
            select(commit_requests, job_copies.c.fingerprint)
            .outerjoin(job_copies, job_copies.c.job_id == commit_requests.c.job_id)
            .where(commit_requests.c.state.in_((DUE, ASKED)), commit_requests.c.due <= (now or utcnow()))
            .order_by(commit_requests.c.due)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(q).mappings().all()
            out = []
            for r in rows:
                refs = conn.execute(
                    select(commit_refs.c.sop_class_uid, commit_refs.c.sop_instance_uid)
                    .where(commit_refs.c.transaction_uid == r["transaction_uid"])
                    .order_by(commit_refs.c.id)
                ).all()
                out.append(
                    Transaction(
                        r["transaction_uid"],
                        int(r["job_id"]),
                        r["destination"],
                        int(r["attempts"]),
                        tuple(Ref(c, sent_uid(u, r["fingerprint"])) for c, u in refs),
                    )
                )
        return out

    def claim(self, tx: Transaction, next_due: dt.datetime) -> bool:
        """Take ``tx`` for one more attempt (asked again at ``next_due`` unless answered by then):
        an UPDATE only one node can win, so nodes sharing a journal never send it twice."""
        with self.engine.begin() as conn:
            return bool(
                conn.execute(
                    update(commit_requests)
                    .where(
                        commit_requests.c.transaction_uid == tx.transaction_uid,
                        commit_requests.c.attempts == tx.attempts,
                        commit_requests.c.state.in_((DUE, ASKED)),
                    )
                    .values(state=ASKED, attempts=tx.attempts + 1, due=next_due)
                ).rowcount
            )

    def give_up(self, transaction_uid: str) -> None:
        """No report after the last attempt: its pending references are ``unanswered``."""
        with self.engine.begin() as conn:
            destination = conn.execute(
                select(commit_requests.c.destination).where(
                    commit_requests.c.transaction_uid == transaction_uid
                )
            ).scalar_one()
            conn.execute(
                update(commit_requests)
                .where(commit_requests.c.transaction_uid == transaction_uid)
                .values(state=UNANSWERED)
            )
            n = conn.execute(
                update(commit_refs)
                .where(commit_refs.c.transaction_uid == transaction_uid, commit_refs.c.state == PENDING)
                .values(state=UNANSWERED)
            ).rowcount
        events.publish(events.CommitmentAnswered(str(destination), 0, 0, int(n)))

    def answer(self, report: Report) -> bool:
        """Record an N-EVENT-REPORT (PS3.4 J.3.3): its committed and failed references; a reference
        of the transaction the report does not name counts as failed (Processing failure). False
        for a Transaction UID we never sent."""
        with self.engine.begin() as conn:
            known = conn.execute(
                select(commit_requests.c.job_id, commit_requests.c.destination).where(
                    commit_requests.c.transaction_uid == report.transaction_uid
                )
            ).first()
            if known is None:
                return False
            job_id, destination = int(known.job_id), str(known.destination)
            fingerprint = conn.execute(
                select(job_copies.c.fingerprint).where(job_copies.c.job_id == job_id)
            ).scalar_one_or_none()
            conn.execute(
                update(commit_requests)
                .where(commit_requests.c.transaction_uid == report.transaction_uid)
                .values(state=ANSWERED, answered=utcnow())
            )
            mine = commit_refs.c.transaction_uid == report.transaction_uid
            refs = [str(u) for (u,) in conn.execute(select(commit_refs.c.sop_instance_uid).where(mine))]
            report = journalled(report, refs, fingerprint)
            reasons: dict[int | None, list[str]] = {}
            for uid in refs:
                reason = None if uid in report.committed else report.failed.get(uid, PROCESSING_FAILURE)
                reasons.setdefault(reason, []).append(uid)
            for reason, uids in reasons.items():
                conn.execute(
                    update(commit_refs)
                    .where(mine, commit_refs.c.sop_instance_uid.in_(uids))
                    .values(state=COMMITTED if reason is None else FAILED, reason=reason)
                )
        failed = [u for u in refs if u not in report.committed]
        events.publish(events.CommitmentAnswered(destination, len(refs) - len(failed), len(failed)))
        LOG.log(
            logging.WARNING if failed else logging.INFO,
            "commitment %s: %d committed, %d failed",
            report.transaction_uid,
            len(refs) - len(failed),
            len(failed),
        )
        if failed:
            self._send_again(job_id, destination, failed)
        return True

    def _send_again(self, job_id: int, destination: str, failed: list[str]) -> None:
        """Failed references are no longer counted as delivered; a C-MOVE job's are sent again (the
        same SOP Instance UIDs) by a retry of the job, and committed again, while the peer's
        ``commit_attempts`` allow (PS3.4 J.3.3.1 leaves the SCU's recovery to it); beyond that they
        stay ``failed`` (``jobs retry`` sends them again; a push item's next delivery would)."""
        with self.engine.connect() as conn:
            kind = conn.execute(select(jobs.c.kind).where(jobs.c.id == job_id)).scalar_one()
            tries = Counter(
                str(u)
                for (u,) in conn.execute(
                    select(commit_refs.c.sop_instance_uid).where(
                        commit_refs.c.job_id == job_id,
                        commit_refs.c.state == FAILED,
                        commit_refs.c.sop_instance_uid.in_(failed),
                    )
                )
            )
        peer = self.config.peer(destination)
        again = [u for u in failed if peer is not None and tries[u] < peer.commit_attempts]
        last = [u for u in failed if u not in again]
        if last:  # no retry of their own; `jobs retry` (or the next push delivery) still sends them
            self.journal.not_committed(job_id, last, retry=False)
        if again and self.journal.not_committed(job_id, again, retry=kind == JobKind.MOVE):
            LOG.info("job %d: %d instance(s) not committed: sent again", job_id, len(again))


def sent_uid(uid: str, fingerprint: str | None) -> str:
    """The SOP Instance UID the destination received for the journal's ``uid``: a corrected
    copy's (IOCM, ``job_copies``) when its job sent copies made with ``fingerprint``."""
    return uid if fingerprint is None else corrected_uid(uid, fingerprint)


def journalled(report: Report, refs: list[str], fingerprint: str | None) -> Report:
    """``report`` in the journal's UIDs (``refs``: the transaction's): the UIDs of corrected copies
    mapped back to the instances they are copies of."""
    if fingerprint is None:
        return report
    back = {corrected_uid(u, fingerprint): u for u in refs}
    return Report(
        report.transaction_uid,
        frozenset(back.get(u, u) for u in report.committed),
        {back.get(u, u): reason for u, reason in report.failed.items()},
    )


def answer_status(ledger: CommitmentLedger, report: Report) -> int:
    """The N-EVENT-REPORT-RSP status for ``report`` once recorded: Success, or 0x0115 (invalid
    argument value, PS3.7 10.1.1.1.8) for a Transaction UID we never sent (one WARNING)."""
    if ledger.answer(report):
        return Status.SUCCESS
    LOG.warning("commitment report for an unknown transaction %s: refused (0x0115)", report.transaction_uid)
    return INVALID_ARGUMENT_VALUE
