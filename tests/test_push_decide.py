"""What a push item becomes after a run (:mod:`dicomproxy.push.decide`), without sockets or a
database: a table of job outcomes, statuses and counts → the next step, then the retry backoff and
the files' step (``waiting`` for a file, ``done`` with the re-check schedule, given up)."""

from __future__ import annotations

import pytest

from dicomproxy.config import PushConfig
from dicomproxy.push.decide import (
    DROP,
    FILES,
    HOLD,
    RELEASE,
    RETRY,
    AfterJob,
    JobResult,
    after_failure,
    after_files,
    after_job,
    backoff,
)
from dicomproxy.push.queue import DONE, FAILED, WAITING, Item
from dicomproxy.status import JobOutcome, Status

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
    assert (first.state, first.delay, first.reports) == (WAITING, 10.0, "pending")
    second = after_files(_item(report_attempts=1), "pending", False, 3, PUSH)
    assert (second.state, second.delay) == (WAITING, 20.0)
    last = after_files(_item(report_attempts=2), "pending", False, 3, PUSH)
    assert (last.state, last.reports, last.gave_up, last.rechecks) == (DONE, "missing", True, 2)
