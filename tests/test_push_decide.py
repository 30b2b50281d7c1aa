"""What a push item becomes after a run (:mod:`dicomproxy.push.decide`), without sockets or a
database: a table of job outcomes, statuses and counts → the next step, then the retry backoff and
the files' step (``waiting`` for a file, ``done`` with the re-check schedule, given up).

Then the service applying them (:meth:`PushService.deliver`): a scripted relay whose push jobs
leave what a real one leaves in a real journal (SQLite), the clock held still, and the item's row
read back — state, attempts, counts, error, when it is due — for every step."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from dicomproxy import events
from dicomproxy.config import PushConfig, parse_config
from dicomproxy.handlers.qrservice import RetrieveResponse
from dicomproxy.push import holds as holds_module
from dicomproxy.push import service as service_module
from dicomproxy.push.committing import CommitmentWait
from dicomproxy.push.decide import (
    DROP,
    FILES,
    HOLD,
    RELEASE,
    RETRY,
    AfterCommitment,
    AfterFiles,
    AfterJob,
    JobResult,
    after_commitment,
    after_failure,
    after_files,
    after_job,
    backoff,
    next_recheck,
)
from dicomproxy.push.queue import (
    COMMITTING,
    DONE,
    DROPPED,
    FAILED,
    QUEUED,
    WAITING,
    Item,
    PushQueue,
    push_attempts,
    push_queue,
)
from dicomproxy.push.service import PushService
from dicomproxy.relay.commitments import CommitmentLedger
from dicomproxy.relay.journal import InstanceRecord, Journal
from dicomproxy.status import JobKind, JobOutcome, Status
from dicomproxy.transport.commitment import Report
from tests.conftest import base_config_dict
from tests.test_push_takeover import _enqueue

S, C3, FAIL = int(Status.SUCCESS), int(Status.DESTINATION_UNAVAILABLE), int(Status.UNABLE_TO_PROCESS)


def _result(outcome: JobOutcome, status: int, **values: object) -> JobResult:
    return JobResult(job_id=7, outcome=str(outcome), status=status, **values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        # serve stops: the job is cancelled, the item due again for any node (even a 0xC003 status)
        (_result(JobOutcome.CANCELLED, 0xFE00), AfterJob(RELEASE)),
        (_result(JobOutcome.CANCELLED, C3), AfterJob(RELEASE)),
        # the relay resolved nothing: no longer visible in the view
        (
            _result(JobOutcome.EMPTY, S, resolved_none=True),
            AfterJob(DROP, "no longer visible in the exam view"),
        ),
        # the destination cannot be reached: held, with the job's error or a default reason
        (_result(JobOutcome.FAILED, C3, error="connection refused"), AfterJob(HOLD, "connection refused")),
        (_result(JobOutcome.FAILED, C3), AfterJob(HOLD, "cannot be reached")),
        # delivered, or nothing left to send after earlier confirmations: the files next
        (_result(JobOutcome.SUCCESS, S), AfterJob(FILES, destination_up=True)),
        (_result(JobOutcome.EMPTY, S, excluded=True), AfterJob(FILES, destination_up=True)),
        (_result(JobOutcome.EMPTY, FAIL, excluded=True), AfterJob(FILES)),
        # the PACS holds nothing yet (images still arriving)
        (
            _result(JobOutcome.EMPTY, S),
            AfterJob(RETRY, "the PACS holds no instance of the study yet", destination_up=True),
        ),
        # some refused: retried, but the destination answered (a hold on it ends)
        (
            _result(JobOutcome.PARTIAL, 0xB000, error="2 failed"),
            AfterJob(RETRY, "2 failed", destination_up=True),
        ),
        (_result(JobOutcome.PARTIAL, 0xB000), AfterJob(RETRY, "partial (0xB000)", destination_up=True)),
        # failed (the PACS, or no final response at all): retried, the destination not known up
        (_result(JobOutcome.FAILED, 0xA702), AfterJob(RETRY, "failed (0xA702)")),
        (_result(JobOutcome.FAILED, FAIL, error="PACS down"), AfterJob(RETRY, "PACS down")),
    ],
)
def test_after_job(result: JobResult, expected: AfterJob) -> None:
    assert after_job(result) == expected


def test_backoff_doubles_up_to_the_most() -> None:
    assert [backoff(n, 30.0, 200.0) for n in (0, 1, 2, 3, 4)] == [30.0, 30.0, 60.0, 120.0, 200.0]


def test_after_failure_waits_with_backoff_then_fails() -> None:
    push = PushConfig(retry_delay=10.0, max_retry_delay=35.0, max_attempts=4)
    assert [after_failure(n, push) for n in (1, 2, 3)] == [(WAITING, 10.0), (WAITING, 20.0), (WAITING, 35.0)]
    assert after_failure(4, push) == (FAILED, 0.0)
    assert after_failure(9, push) == (FAILED, 0.0)


def _item(report_attempts: int = 0, rechecks: int = 0) -> Item:
    return Item(1, "1.2.3", "CLOUD", "EX-1", 0, 1, False, "none", report_attempts, rechecks=rechecks)


PUSH = PushConfig(retry_delay=10.0, max_retry_delay=100.0, recheck_after=60.0, rechecks=2)


def test_after_files_all_sent_is_done_with_the_recheck_schedule() -> None:
    after = after_files(_item(), "sent", True, 3, PUSH)
    assert (after.state, after.delay, after.reports, after.rechecks, after.gave_up) == (
        DONE,
        60.0,
        "sent",
        2,
        False,
    )
    # a re-check's delivery uses one up: the last one leaves none
    assert after_files(_item(rechecks=2), "none", True, 3, PUSH).rechecks == 1
    last = after_files(_item(rechecks=1), "none", True, 3, PUSH)
    assert (last.state, last.delay, last.rechecks) == (DONE, 0.0, 0)


def test_after_files_a_missing_file_is_retried_then_given_up() -> None:
    first = after_files(_item(report_attempts=0), "pending", False, 3, PUSH)
    assert first == AfterFiles(WAITING, 10.0, "pending", rechecks=0, gave_up=False)  # nothing counted yet
    second = after_files(_item(report_attempts=1), "pending", False, 3, PUSH)
    assert (second.state, second.delay) == (WAITING, 20.0)
    last = after_files(_item(report_attempts=2), "pending", False, 3, PUSH)
    assert (last.state, last.reports, last.gave_up, last.rechecks) == (DONE, "missing", True, 2)


def test_a_recheck_one_second_after_is_still_a_schedule() -> None:
    """Only ``recheck_after = 0`` (or ``rechecks = 0``) turns re-checks off: a short gap is a gap."""
    push = PushConfig(recheck_after=1.0, rechecks=2)
    assert [next_recheck(n, push) for n in (0, 2, 1)] == [(2, 1.0), (1, 2.0), (0, 0.0)]
    assert next_recheck(0, PushConfig(recheck_after=0.5, rechecks=1)) == (1, 0.5)


# --- the service applying them: PushService.deliver on a real journal (SQLite), a scripted relay --


@dataclass
class Job:
    """One scripted push job: how it ends and what it leaves in the journal."""

    outcome: JobOutcome
    status: int
    sent: list[str] = field(default_factory=list)
    study_uids: list[str] | None = None  # None: the item's study
    bytes_out: int = 0
    error: str = ""
    respond: bool = True  # False: no final response (the relay gave up without one)
    journal: bool = True  # False: the job never reached the journal


class ScriptedRelay:
    """The relay as the push service sees it: ``push`` runs the next scripted :class:`Job`."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.jobs: list[Job] = []
        self.excluded: list[frozenset[str]] = []
        self.archives: dict[str, Any] = {}

    def push(
        self, study_uid: str, destination: str, *, exclude: frozenset[str], on_start: Any, **_: Any
    ) -> Iterator[RetrieveResponse]:
        job = self.jobs.pop(0)
        self.excluded.append(exclude)
        if job.journal:
            job_id = self.journal.start(JobKind.PUSH, "DICOMPROXY", "", destination, "pacs")
            on_start(job_id)
            uids = [study_uid] if job.study_uids is None else job.study_uids
            self.journal.update(job_id, study_uids=uids)
            self.journal.add_instances(job_id, [InstanceRecord(uid, "sent", MR) for uid in job.sent])
            self.journal.finish(
                job_id, status=job.status, outcome=job.outcome, error=job.error, bytes_out=job.bytes_out
            )
        if job.respond:
            yield RetrieveResponse(job.status)


MR = "1.2.840.10008.5.1.4.1.1.4"
STUDY = "1.2.3.9"
NOW = dt.datetime(2026, 3, 2, 12, 0, 0)


@dataclass
class Delivery:
    service: PushService
    relay: ScriptedRelay
    published: list[tuple[int, str, int]]

    def claim(self, **values: Any) -> Item:
        """The item of STUDY, claimed (its attempt counted), after ``values`` set on its row."""
        q = self.service.queue
        with q.engine.begin() as conn:
            fresh = conn.execute(select(push_queue.c.id)).first() is None
        if fresh:
            _enqueue(q, STUDY)
        with q.engine.begin() as conn:
            conn.execute(update(push_queue).values(state=QUEUED, next_at=NOW, **values))
        item = q.claim(60.0)
        assert item is not None
        return item

    def row(self) -> dict[str, Any]:
        with self.service.queue.engine.connect() as conn:
            return dict(conn.execute(select(push_queue)).mappings().one())


@pytest.fixture
def delivery(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Delivery]:
    """A push service on a SQLite journal whose clock stands still at NOW; 3 attempts, 10 s doubling
    to 100 s, re-checks after 60 s (2); the events it publishes recorded."""
    config = parse_config(
        base_config_dict(
            tmp_path,
            "sqlite:///v.db",
            peers=[{"ae_title": "CLOUD", "host": "127.0.0.1", "port": 1}],
            push={
                "enabled": True,
                "destinations": ["CLOUD"],
                "retry_delay": 10,
                "max_retry_delay": 100,
                "max_attempts": 3,
                "recheck_after": 60,
                "rechecks": 2,
            },
        ),
        str(tmp_path / "proxy.toml"),
    )
    monkeypatch.setattr(service_module, "utcnow", lambda: NOW)
    monkeypatch.setattr(holds_module, "utcnow", lambda: NOW)
    published: list[tuple[int, str, int]] = []

    def publish(event: events.Event) -> None:
        if isinstance(event, events.PushDelivered):
            published.append((event.item_id, event.outcome, event.instances))

    monkeypatch.setattr(events, "publish", publish)
    journal = Journal(f"sqlite:///{tmp_path / 'journal.db'}", "test")
    relay = ScriptedRelay(journal)
    service = PushService(config, None, journal, relay)
    service.queue.now = lambda: NOW
    try:
        yield Delivery(service, relay, published)
    finally:
        journal.close()


def test_deliver_a_delivered_study_is_done_with_its_counts_and_recheck_schedule(
    delivery: Delivery, caplog: pytest.LogCaptureFixture
) -> None:
    delivery.relay.jobs = [Job(JobOutcome.SUCCESS, 0x0000, ["1.9.1", "1.9.2", "1.9.3"], bytes_out=4096)]
    item = delivery.claim()
    with caplog.at_level(logging.INFO, logger="dicomproxy.push"):
        delivery.service.deliver(item)
    job = delivery.row()["last_job"]
    assert caplog.messages[-1] == (
        f"push item {item.id}: delivered to CLOUD (job {job}, 3 instance(s) confirmed, files: none); "
        "re-checked in 60 s (2 left)"
    )
    row = delivery.row()
    assert (row["state"], row["attempts"], row["images_done"], row["confirmed"], row["bytes"]) == (
        DONE,
        1,
        1,
        3,
        4096,
    )
    assert (row["reports"], row["rechecks"], row["error"], row["lease_until"]) == ("none", 2, "", None)
    assert row["next_at"] == NOW + dt.timedelta(seconds=60)  # the first re-check
    assert delivery.relay.excluded == [frozenset()]
    assert delivery.published == [(item.id, "delivered", 3)]


def test_deliver_what_was_confirmed_is_left_out_and_nothing_left_is_delivered(delivery: Delivery) -> None:
    """A retry whose instances all reached the destination before: the job is empty, the item done."""
    delivery.relay.jobs = [
        Job(JobOutcome.PARTIAL, 0xB000, ["1.9.1", "1.9.2"], error="1 failed"),
        Job(JobOutcome.EMPTY, 0x0000),
    ]
    delivery.service.deliver(delivery.claim())
    row = delivery.row()
    assert (row["state"], row["attempts"], row["confirmed"], row["error"]) == (WAITING, 1, 2, "1 failed")
    assert row["next_at"] == NOW + dt.timedelta(seconds=10)
    delivery.service.deliver(delivery.claim())
    assert delivery.relay.excluded == [frozenset(), frozenset({"1.9.1", "1.9.2"})]
    row = delivery.row()
    assert (row["state"], row["confirmed"], row["images_done"]) == (DONE, 2, 1)


def test_deliver_failures_wait_doubling_then_fail(delivery: Delivery) -> None:
    delivery.relay.jobs = [Job(JobOutcome.FAILED, 0xA702, bytes_out=10), Job(JobOutcome.FAILED, 0xA702)]
    delivery.relay.jobs += [Job(JobOutcome.FAILED, 0xA702, error="PACS down")]
    waits = []
    for _ in range(2):
        item = delivery.claim()
        delivery.service.deliver(item)
        row = delivery.row()
        assert (row["state"], row["error"], row["images_done"]) == (WAITING, "failed (0xA702)", 0)
        waits.append((row["attempts"], row["next_at"] - NOW, row["bytes"]))
    assert waits == [(1, dt.timedelta(seconds=10), 10), (2, dt.timedelta(seconds=20), 0)]
    item = delivery.claim()
    delivery.service.deliver(item)
    row = delivery.row()
    assert (row["state"], row["attempts"], row["error"]) == (FAILED, 3, "PACS down")
    assert delivery.published == [(item.id, "waiting", 0), (item.id, "waiting", 0), (item.id, "failed", 0)]


@pytest.mark.parametrize(("status", "state"), [(0xA702, WAITING), (0xC003, WAITING), (0xA702, FAILED)])
def test_deliver_keeps_the_job_s_whole_error(delivery: Delivery, status: int, state: str) -> None:
    """The item's error is the job's, as long as the journal keeps it (2000 characters)."""
    delivery.relay.jobs = [Job(JobOutcome.FAILED, status, error="e" * 2500)]
    delivery.service.deliver(delivery.claim(attempts=2 if state == FAILED else 0))
    row = delivery.row()
    assert (row["state"], row["error"]) == (state, "e" * 2000)


def test_deliver_a_job_without_an_answer_or_a_journal_row_is_a_failure(delivery: Delivery) -> None:
    delivery.relay.jobs = [Job(JobOutcome.SUCCESS, 0x0000, respond=False, journal=False)]
    delivery.service.deliver(delivery.claim())
    row = delivery.row()
    # no final response: 0xC000 (Unable to process), the job's outcome unknown: failed
    assert (row["state"], row["error"], row["last_job"]) == (WAITING, "failed (0xC000)", None)


def test_deliver_a_study_no_longer_visible_is_dropped(delivery: Delivery) -> None:
    delivery.relay.jobs = [Job(JobOutcome.EMPTY, 0x0000, study_uids=[])]
    item = delivery.claim()
    delivery.service.deliver(item)
    row = delivery.row()
    assert (row["state"], row["error"]) == (DROPPED, "no longer visible in the exam view")
    assert delivery.published == [(item.id, "dropped", 0)]
    # resolved but the PACS holds nothing yet: not dropped, retried
    delivery.relay.jobs = [Job(JobOutcome.EMPTY, 0x0000)]
    delivery.service.deliver(delivery.claim())
    assert (delivery.row()["state"], delivery.row()["error"]) == (
        WAITING,
        "the PACS holds no instance of the study yet",
    )


@pytest.mark.parametrize("earlier", [0, 1])
def test_deliver_a_destination_down_holds_it_without_counting_the_attempt(
    delivery: Delivery, earlier: int
) -> None:
    delivery.relay.jobs = [Job(JobOutcome.FAILED, 0xC003, ["1.9.1"], error="connection refused")]
    item = delivery.claim(attempts=earlier)  # the first attempt, or a second one
    assert item.attempts == earlier + 1
    delivery.service.deliver(item)
    row = delivery.row()
    assert (row["state"], row["attempts"], row["error"], row["confirmed"]) == (
        WAITING,
        earlier,
        "connection refused",
        1,
    )
    assert row["next_at"] == NOW + dt.timedelta(seconds=10) == delivery.service.holds.until("CLOUD")
    assert delivery.service.held() == (False, ["CLOUD"])
    assert delivery.published == [(item.id, "destination-down", 0)]
    # the next delivery reaches it: the hold ends and the workers are woken
    delivery.relay.jobs = [Job(JobOutcome.SUCCESS, 0x0000, ["1.9.2"])]
    assert not delivery.service._wake.is_set()
    delivery.service.deliver(delivery.claim())
    assert delivery.service.held() == (False, []) and delivery.service._wake.is_set()
    assert delivery.row()["state"] == DONE


def test_deliver_cancelled_at_stop_gives_the_item_back(delivery: Delivery) -> None:
    delivery.relay.jobs = [Job(JobOutcome.CANCELLED, 0xFE00, ["1.9.1"])]
    item = delivery.claim()
    delivery.service.deliver(item)
    row = delivery.row()
    assert (row["state"], row["attempts"], row["lease_until"], row["next_at"]) == (QUEUED, 0, None, NOW)
    assert delivery.published == []


@pytest.mark.parametrize("earlier", [0, 1])
def test_deliver_a_file_not_available_waits_with_the_images_delivered(
    delivery: Delivery, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, earlier: int
) -> None:
    """The images are delivered, a report file is not there yet: waiting (backoff by the file's
    attempts), the attempt not counted against the images; given up after [reports] max_attempts."""
    sent: list[tuple[int, int | None]] = []

    def files(item: Item, job_id: int | None) -> tuple[str, bool]:
        sent.append((item.report_attempts, job_id))
        return "pending", False

    monkeypatch.setattr(delivery.service.files, "send", files)
    delivery.relay.jobs = [Job(JobOutcome.SUCCESS, 0x0000, ["1.9.1", "1.9.2"], bytes_out=99)]
    item = delivery.claim(attempts=earlier)  # the images took one attempt, or two
    delivery.service.deliver(item)
    row = delivery.row()
    assert (row["state"], row["images_done"], row["reports"], row["report_attempts"]) == (
        WAITING,
        1,
        "pending",
        1,
    )
    assert (row["attempts"], row["confirmed"], row["bytes"]) == (earlier, 2, 99)
    assert (row["error"], row["next_at"]) == ("report file not available yet", NOW + dt.timedelta(seconds=10))
    assert delivery.published == [(item.id, "images-delivered", 2)]
    attempts = delivery.service.config.reports.max_attempts
    given_up = f"push item {item.id}: report/order file given up after {attempts} attempts"
    for _ in range(1, attempts):
        assert given_up not in caplog.messages
        delivery.relay.jobs = [Job(JobOutcome.EMPTY, 0x0000)]  # nothing left to send
        delivery.service.deliver(delivery.claim())
    row = delivery.row()
    assert (row["state"], row["reports"], row["images_done"]) == (DONE, "missing", 1)
    assert [a for a, _ in sent] == list(range(attempts))
    assert caplog.messages.count(given_up) == 1


def test_deliver_a_recheck_unchanged_in_its_files_does_not_send_them_again(
    delivery: Delivery, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[int] = []
    monkeypatch.setattr(delivery.service.rechecks, "run", lambda item: asked.append(item.id) or True)
    monkeypatch.setattr(delivery.service.files, "send", lambda item, job_id: pytest.fail("files sent again"))
    delivery.relay.jobs = [Job(JobOutcome.SUCCESS, 0x0000, ["1.9.4"])]
    item = dataclasses.replace(
        delivery.claim(reports="sent", images_done=1, rechecks=2), recheck=True, reports="sent"
    )
    delivery.service.deliver(item)
    row = delivery.row()
    assert asked == [item.id] and (row["state"], row["reports"], row["rechecks"]) == (DONE, "sent", 1)
    # a re-check that finds nothing new: no job
    monkeypatch.setattr(delivery.service.rechecks, "run", lambda item: False)
    delivery.service.deliver(dataclasses.replace(delivery.claim(), recheck=True))
    assert delivery.relay.jobs == [] and len(delivery.relay.excluded) == 1
    # an ordinary delivery never asks the PACS first
    monkeypatch.setattr(delivery.service.rechecks, "run", lambda item: pytest.fail("re-check asked"))
    monkeypatch.setattr(delivery.service.files, "send", lambda item, job_id: ("none", True))
    delivery.relay.jobs = [Job(JobOutcome.SUCCESS, 0x0000)]
    delivery.service.deliver(delivery.claim())
    assert delivery.row()["state"] == DONE


# --- Storage Commitment: a `committing` item (push/committing.py) ----------------------------------


@pytest.mark.parametrize(
    ("states", "failures", "expected"),
    [
        ({}, {}, AfterCommitment(DONE)),  # nothing was stored to be committed
        (
            {"1": "committed", "2": "committed"},
            {"2": 1},
            AfterCommitment(DONE),
        ),  # failed once, then committed
        ({"1": "committed", "2": "pending"}, {}, AfterCommitment(COMMITTING)),
        (
            {"1": "failed", "2": "pending"},
            {"1": 1},
            AfterCommitment(QUEUED, "1 instance(s) not committed: sent again"),
        ),
        (
            {"1": "failed", "2": "failed"},
            {"1": 2, "2": 1},
            AfterCommitment(QUEUED, "2 instance(s) not committed: sent again"),
        ),
        (
            {"1": "failed", "2": "failed"},
            {"1": 3, "2": 1},
            AfterCommitment(FAILED, "1 instance(s) not committed by the destination after 3 attempt(s)"),
        ),
        ({"1": "unanswered", "2": "pending"}, {}, AfterCommitment(COMMITTING)),  # the pending answer first
        (
            {"1": "unanswered", "2": "committed", "3": "unanswered"},
            {},
            AfterCommitment(FAILED, "no storage commitment report for 2 instance(s) after the last attempt"),
        ),
        (  # a failed one beside an unanswered one is still sent again
            {"1": "unanswered", "2": "failed"},
            {"2": 2},
            AfterCommitment(QUEUED, "1 instance(s) not committed: sent again"),
        ),
    ],
)
def test_after_commitment(
    states: dict[str, str], failures: dict[str, int], expected: AfterCommitment
) -> None:
    assert after_commitment(states, failures, 3) == expected


def test_after_commitment_counts_failures_against_the_peer_s_attempts() -> None:
    assert after_commitment({"1": "failed"}, {"1": 1}, 1).state == FAILED
    assert after_commitment({"1": "failed"}, {"1": 1}, 2).state == QUEUED
    assert after_commitment({"1": "failed"}, {}, 1).state == QUEUED  # no failure counted: not spent


@pytest.fixture
def committing(tmp_path: Path) -> Iterator[tuple[CommitmentWait, PushQueue, CommitmentLedger, Journal]]:
    raw = base_config_dict(tmp_path, "sqlite:///v.db")
    raw["peers"] = [
        {
            "ae_title": "CLOUD",
            "host": "127.0.0.1",
            "port": 1,
            "storage_commitment": True,
            "commit_attempts": 2,
        }
    ]
    raw["push"] = {
        "enabled": True,
        "destinations": ["CLOUD"],
        "poll_interval": 5,
        "rechecks": 2,
        "recheck_after": 60,
    }
    config = parse_config(raw, str(tmp_path / "x.toml"))
    journal = Journal(f"sqlite:///{tmp_path / 'journal.db'}", "test")
    queue = PushQueue(journal.engine, "n")
    queue.now = lambda: NOW
    ledger = CommitmentLedger(config, journal)
    try:
        yield CommitmentWait(config, queue, ledger), queue, ledger, journal
    finally:
        journal.close()


def _committing_item(
    queue: PushQueue, journal: Journal, ledger: CommitmentLedger, uids: list[str]
) -> tuple[int, str]:
    """A claimed item whose job stored ``uids`` and ended; its run finished ``committing``."""
    _enqueue(queue, "1.2.3.9")
    item = queue.claim(60.0)
    assert item is not None
    job = journal.start(JobKind.PUSH, "DICOMPROXY", "", "CLOUD", "pacs")
    queue.record_attempt(item, job)
    journal.add_instances(job, [InstanceRecord(u, "sent", "1.2.840.10008.5.1.4.1.1.2") for u in uids])
    (tx,) = ledger.job_ended(job)
    assert queue.finish(item, COMMITTING, next_at=NOW, rechecks=2)
    return item.id, tx


def test_settle_waits_while_pending_then_done_with_its_recheck_schedule(committing: Any) -> None:
    wait, queue, ledger, journal = committing
    item_id, tx = _committing_item(queue, journal, ledger, ["2.25.1", "2.25.2"])
    assert wait.settle() == 0
    row = queue.get(item_id)
    assert (row["state"], row["next_at"]) == (COMMITTING, NOW + dt.timedelta(seconds=5))  # poll_interval
    assert wait.settle() == 0  # not due again before then
    assert ledger.answer(Report(tx, frozenset({"2.25.1", "2.25.2"}), {}))
    assert wait.settle(lambda: NOW + dt.timedelta(seconds=5)) == 1
    row = queue.get(item_id)
    # re-check 1 of 2: 60 s after the commitment (recheck_after × 2^(2-2))
    assert (row["state"], row["next_at"], row["rechecks"]) == (DONE, NOW + dt.timedelta(seconds=65), 2)


def test_settle_queues_the_item_again_for_what_failed_then_fails_it_after_the_attempts(
    committing: Any,
) -> None:
    wait, queue, ledger, journal = committing
    item_id, tx = _committing_item(queue, journal, ledger, ["2.25.1", "2.25.2"])
    assert ledger.answer(Report(tx, frozenset({"2.25.1"}), {"2.25.2": 0x0110}))
    assert wait.settle() == 1
    row = queue.get(item_id)
    assert (row["state"], row["next_at"], row["error"]) == (
        QUEUED,
        NOW,
        "1 instance(s) not committed: sent again",
    )
    # the resend: a second job of the same generation stores 2.25.2 again, which fails again
    item = queue.claim(60.0)
    assert item is not None and item.id == item_id
    job = journal.start(JobKind.PUSH, "DICOMPROXY", "", "CLOUD", "pacs")
    queue.record_attempt(item, job)
    journal.add_instances(job, [InstanceRecord("2.25.2", "sent", "1.2.840.10008.5.1.4.1.1.2")])
    (tx2,) = ledger.job_ended(job)
    assert queue.finish(item, COMMITTING, next_at=NOW)
    assert ledger.answer(Report(tx2, frozenset(), {"2.25.2": 0x0110}))
    assert wait.settle() == 1
    row = queue.get(item_id)
    assert row["state"] == FAILED
    assert row["error"] == "1 instance(s) not committed by the destination after 2 attempt(s)"


def test_settle_moves_only_an_item_still_committing(committing: Any) -> None:
    """Another node moved it (or `push retry` did) between the read and the write: left alone."""
    wait, queue, ledger, journal = committing
    item_id, tx = _committing_item(queue, journal, ledger, ["2.25.1"])
    assert ledger.answer(Report(tx, frozenset({"2.25.1"}), {}))
    with journal.engine.begin() as conn:
        conn.execute(update(push_queue).where(push_queue.c.id == item_id).values(state=WAITING))
    assert wait.settle() == 0 and queue.get(item_id)["state"] == WAITING


def test_a_destination_not_asked_to_commit_is_done_at_once(tmp_path: Path) -> None:
    config = parse_config(
        base_config_dict(
            tmp_path, "sqlite:///v.db", peers=[{"ae_title": "CLOUD", "host": "127.0.0.1", "port": 1}]
        ),
        str(tmp_path / "x.toml"),
    )
    journal = Journal(f"sqlite:///{tmp_path / 'journal.db'}", "test")
    try:
        wait = CommitmentWait(config, PushQueue(journal.engine, "n"), None)
        assert wait.stored("CLOUD", 1) is False and wait.settle() == 0
    finally:
        journal.close()


def test_stored_asks_for_what_the_job_stored_after_its_transactions(committing: Any) -> None:
    """A push job's order/report objects are sent after the relay journalled the job's
    transactions: ``stored`` asks for them in a transaction of their own."""
    wait, _, ledger, journal = committing
    job = journal.start(JobKind.PUSH, "DICOMPROXY", "", "CLOUD", "pacs")
    journal.add_instances(job, [InstanceRecord("2.25.1", "sent", "1.2.840.10008.5.1.4.1.1.2")])
    assert len(ledger.job_ended(job)) == 1
    journal.add_instances(
        job, [InstanceRecord("2.25.9", "sent", "1.2.840.10008.5.1.4.1.104.1")]
    )  # the report
    assert wait.stored("CLOUD", job) is True
    assert ledger.states(job) == {"2.25.1": "pending", "2.25.9": "pending"}
    assert ledger.open_transactions(job) == 2
    assert wait.stored("CLOUD", None) is True  # a delivery that never reached the journal: nothing to ask


@pytest.mark.parametrize(("rechecks", "due_in"), [(0, 0), (1, 120), (2, 60)])
def test_settle_done_counts_the_recheck_from_the_commitment(
    committing: Any, rechecks: int, due_in: int
) -> None:
    """``recheck_after`` 60, ``rechecks`` 2: the next re-check is recheck_after × 2^(2 - left) after
    the item is done; with none left it is due at once and never claimed (rechecks 0)."""
    wait, queue, ledger, journal = committing
    item_id, tx = _committing_item(queue, journal, ledger, ["2.25.1"])
    with journal.engine.begin() as conn:
        conn.execute(update(push_queue).where(push_queue.c.id == item_id).values(rechecks=rechecks))
    assert ledger.answer(Report(tx, frozenset({"2.25.1"}), {}))
    assert wait.settle() == 1
    row = queue.get(item_id)
    assert (row["state"], row["next_at"]) == (DONE, NOW + dt.timedelta(seconds=due_in))


def test_settle_logs_and_publishes_each_move(
    committing: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    published: list[tuple[int, str, int]] = []

    def publish(e: events.Event) -> None:
        if isinstance(e, events.PushDelivered):
            published.append((e.item_id, e.outcome, e.instances))

    monkeypatch.setattr(events, "publish", publish)
    wait, queue, ledger, journal = committing
    item_id, tx = _committing_item(queue, journal, ledger, ["2.25.1", "2.25.2"])
    assert ledger.answer(Report(tx, frozenset({"2.25.1"}), {"2.25.2": 0x0110}))
    with caplog.at_level(logging.INFO, logger="dicomproxy.push"):
        assert wait.settle() == 1  # queued again
        with journal.engine.begin() as conn:  # its resend failed once more (commit_attempts 2)
            conn.execute(update(push_queue).where(push_queue.c.id == item_id).values(state=COMMITTING))
        job = journal.start(JobKind.PUSH, "DICOMPROXY", "", "CLOUD", "pacs")
        with journal.engine.begin() as conn:
            conn.execute(
                push_attempts.insert().values(
                    item_id=item_id, job_id=job, generation=0, node="n", started=NOW
                )
            )
        journal.add_instances(job, [InstanceRecord("2.25.2", "sent", "1.2.840.10008.5.1.4.1.1.2")])
        (tx2,) = ledger.job_ended(job)
        assert ledger.answer(Report(tx2, frozenset(), {"2.25.2": 0x0110}))
        assert wait.settle() == 1  # failed
    mine = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "dicomproxy.push"]
    assert mine == [
        (logging.INFO, f"push item {item_id}: 1 instance(s) not committed: sent again (CLOUD)"),
        (
            logging.WARNING,
            f"push item {item_id}: 1 instance(s) not committed by the destination after 2 attempt(s) (CLOUD)",
        ),
    ]
    assert [(i, o) for i, o, _ in published] == [(item_id, "commit-resend"), (item_id, "failed")]
    assert [n for _, _, n in published] == [2, 2]  # the instances judged


def test_settle_logs_done_at_info(committing: Any, caplog: pytest.LogCaptureFixture) -> None:
    wait, queue, ledger, journal = committing
    item_id, tx = _committing_item(queue, journal, ledger, ["2.25.1"])
    assert ledger.answer(Report(tx, frozenset({"2.25.1"}), {}))
    with caplog.at_level(logging.INFO, logger="dicomproxy.push"):
        assert wait.settle() == 1
    assert [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "dicomproxy.push"] == [
        (logging.INFO, f"push item {item_id}: every instance committed by CLOUD: done")
    ]


def test_settle_an_item_to_a_destination_no_longer_configured_gets_one_attempt(tmp_path: Path) -> None:
    """The item's destination was removed from ``[[peers]]`` (the ledger stays: another peer
    commits): a failed reference is not sent again (one attempt), the item fails."""
    raw = base_config_dict(
        tmp_path,
        "sqlite:///v.db",
        peers=[{"ae_title": "OTHER", "host": "127.0.0.1", "port": 1, "storage_commitment": True}],
    )
    config = parse_config(raw, str(tmp_path / "x.toml"))
    journal = Journal(f"sqlite:///{tmp_path / 'journal.db'}", "test")
    try:
        queue = PushQueue(journal.engine, "n")
        queue.now = lambda: NOW
        ledger = CommitmentLedger(config, journal)
        _enqueue(queue, "1.2.3.9")
        item = queue.claim(60.0)
        assert item is not None
        job = journal.start(JobKind.PUSH, "DICOMPROXY", "", "OTHER", "pacs")
        queue.record_attempt(item, job)
        journal.add_instances(job, [InstanceRecord("2.25.1", "sent", "1.2.840.10008.5.1.4.1.1.2")])
        (tx,) = ledger.job_ended(job)
        with journal.engine.begin() as conn:  # the item's destination: one the config no longer names
            conn.execute(update(push_queue).where(push_queue.c.id == item.id).values(destination="GONE"))
        assert queue.finish(item, COMMITTING, next_at=NOW)
        assert ledger.answer(Report(tx, frozenset(), {"2.25.1": 0x0110}))
        assert CommitmentWait(config, queue, ledger).settle() == 1
        assert queue.get(item.id)["state"] == FAILED
    finally:
        journal.close()
