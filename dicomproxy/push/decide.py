"""What a push item becomes after a run: pure decisions, no socket and no database.

:func:`after_job` reads what a delivery job left (its outcome, final status and counts,
:class:`JobResult`) and says what happens next: release, drop, hold the destination, retry, or
the order/report files; :func:`after_failure` and :func:`after_files` give the item's next state
and delay; :func:`next_recheck` is the re-check schedule of a delivered item. The service
(:mod:`dicomproxy.push.service`) runs the job and applies them; ``tests/test_push_decide.py``
checks them without a peer.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from dicomproxy.config import PushConfig
from dicomproxy.push.queue import COMMITTING, DONE, FAILED, QUEUED, WAITING, Item
from dicomproxy.relay.journal import FAILED as REF_FAILED
from dicomproxy.relay.journal import PENDING as REF_PENDING
from dicomproxy.relay.journal import UNANSWERED as REF_UNANSWERED
from dicomproxy.status import JobOutcome, Status

#: :attr:`AfterJob.step`: we are stopping (the job was cancelled): due again at once, for any node.
RELEASE = "release"
#: The relay resolved nothing: the study is no longer visible in the exam view.
DROP = "drop"
#: The destination cannot be reached (0xC003): it is held; the attempt does not count.
HOLD = "hold"
#: The images were not all delivered: tried again later (:func:`after_failure`).
RETRY = "retry"
#: The images are delivered (or nothing was left to send): the files next (:func:`after_files`).
FILES = "files"


def backoff(attempts: int, first: float, most: float) -> float:
    """Seconds before attempt ``attempts + 1``: ``first`` doubling, at most ``most``."""
    return float(min(most, first * 2 ** max(0, attempts - 1)))


def next_recheck(rechecks_left: int, push: PushConfig) -> tuple[int, float]:
    """(re-checks left, seconds until the next one) after a run of an item that ended ``done``.

    ``rechecks_left`` is the item's count when it was claimed: 0 for a delivery that starts a new
    schedule (the first one, or after a changed row, ``push retry``, ``push requeue``), which
    gets ``push.rechecks`` of them, the first ``recheck_after`` seconds later; k > 0 for a run
    that was one of the re-checks (or the delivery a re-check started, however many attempts it
    took), which leaves k - 1. Re-check n (1-based) comes ``recheck_after × 2^(n-1)`` seconds
    after the previous run: with 600 s and 2, at +10 min and +30 min. Every run consumes one, so
    the schedule is bounded whatever the PACS answers. A lowered ``rechecks`` caps the count left;
    ``recheck_after = 0`` or ``rechecks = 0`` ends every schedule."""
    if push.recheck_after <= 0 or push.rechecks <= 0:
        return 0, 0.0
    left = push.rechecks if rechecks_left <= 0 else min(rechecks_left - 1, push.rechecks)
    if left <= 0:
        return 0, 0.0
    return left, recheck_delay(left, push)


def recheck_delay(left: int, push: PushConfig) -> float:
    """Seconds from a run that left ``left`` > 0 re-checks to the next one (:func:`next_recheck`)."""
    return float(push.recheck_after * 2 ** (push.rechecks - left))


@dataclass(frozen=True)
class JobResult:
    """What one delivery job left, read from its journal row and its final response."""

    job_id: int | None
    #: ``jobs.outcome`` (``failed`` when the job never reached the journal).
    outcome: str
    #: The final response's status (0xC000 Unable to process, our UNABLE_TO_PROCESS, when there was none).
    status: int
    #: ``jobs.error``.
    error: str = ""
    #: The relay resolved no study (``jobs.study_uids`` is ``[]``).
    resolved_none: bool = False
    #: ``jobs.bytes_out``.
    bytes: int = 0
    #: Instances the destination confirmed in the item's generation, this job included.
    confirmed: int = 0
    #: Instances confirmed before this job were left out of it.
    excluded: bool = False


@dataclass(frozen=True)
class AfterJob:
    """:func:`after_job`'s answer."""

    step: str
    #: Why (for DROP, HOLD and RETRY): the item's error, the log line.
    reason: str = ""
    #: Something reached the destination: a hold on it ends.
    destination_up: bool = False


def after_job(result: JobResult) -> AfterJob:
    """The next step for an item whose delivery job ended as ``result``."""
    outcome, status = result.outcome, result.status
    if outcome == JobOutcome.CANCELLED:
        return AfterJob(RELEASE)
    if outcome == JobOutcome.EMPTY and result.resolved_none:
        return AfterJob(DROP, "no longer visible in the exam view")
    if status == Status.DESTINATION_UNAVAILABLE:
        return AfterJob(HOLD, result.error or "cannot be reached")
    up = outcome in (JobOutcome.SUCCESS, JobOutcome.PARTIAL) or status == Status.SUCCESS
    if outcome == JobOutcome.SUCCESS or (outcome == JobOutcome.EMPTY and result.excluded):
        return AfterJob(FILES, destination_up=up)
    if outcome == JobOutcome.EMPTY:
        reason = "the PACS holds no instance of the study yet"
    else:
        reason = result.error or f"{outcome} (0x{status:04X})"
    return AfterJob(RETRY, reason, destination_up=up)


def after_failure(attempts: int, push: PushConfig) -> tuple[str, float]:
    """(state, seconds until the next attempt) of an item whose attempt ``attempts`` failed:
    ``failed`` after ``max_attempts``, else ``waiting`` with the backoff."""
    if attempts >= push.max_attempts:
        return FAILED, 0.0
    return WAITING, backoff(attempts, push.retry_delay, push.max_retry_delay)


@dataclass(frozen=True)
class AfterFiles:
    """:func:`after_files`' answer."""

    #: ``waiting`` (a file is tried again; the images are delivered) or ``done``.
    state: str
    #: Seconds until the next attempt (``waiting``) or the next re-check (``done``, 0: none).
    delay: float
    #: The item's ``reports`` state: sent, none, pending or missing.
    reports: str
    #: ``done``: re-checks left.
    rechecks: int = 0
    #: A file was given up after ``[reports] max_attempts`` (``reports`` is ``missing``).
    gave_up: bool = False


def after_files(item: Item, reports: str, ok: bool, max_attempts: int, push: PushConfig) -> AfterFiles:
    """What an item whose images are delivered becomes once its files were sent (``ok``: all
    delivered; ``reports``: their state); ``max_attempts`` is ``[reports] max_attempts``."""
    tried = item.report_attempts + 1
    if not ok and tried < max_attempts:
        return AfterFiles(WAITING, backoff(tried, push.retry_delay, push.max_retry_delay), reports)
    left, delay = next_recheck(item.rechecks, push)
    if not ok:
        return AfterFiles(DONE, delay, "missing", left, gave_up=True)
    return AfterFiles(DONE, delay, reports, left)


@dataclass(frozen=True)
class AfterCommitment:
    """:func:`after_commitment`'s answer."""

    #: ``done`` (every instance committed), ``queued`` (failed ones are sent again), ``failed``, or
    #: ``committing`` (references still pending: asked again later).
    state: str
    #: Why (queued, failed): the item's error, the log line.
    reason: str = ""


def after_commitment(
    states: Mapping[str, str], failures: Mapping[str, int], attempts: int
) -> AfterCommitment:
    """What a ``committing`` item becomes, from each stored instance's newest reference state
    (``states``, over the jobs of the item's generation), how often the destination failed each
    (``failures``) and the peer's ``commit_attempts``. A failed reference is sent again (the same
    SOP Instance UID, PS3.4 J.3.3.1 leaves the SCU's recovery to it) until it has failed
    ``attempts`` times; pending references are waited for; references the destination never
    answered after the committer's last attempt fail the item — never silently done."""
    newest = Counter(states.values())
    spent = sorted(u for u, s in states.items() if s == REF_FAILED and failures.get(u, 0) >= attempts)
    if spent:
        return AfterCommitment(
            FAILED, f"{len(spent)} instance(s) not committed by the destination after {attempts} attempt(s)"
        )
    if newest[REF_FAILED]:
        return AfterCommitment(QUEUED, f"{newest[REF_FAILED]} instance(s) not committed: sent again")
    if newest[REF_PENDING]:
        return AfterCommitment(COMMITTING)
    if newest[REF_UNANSWERED]:
        return AfterCommitment(
            FAILED,
            f"no storage commitment report for {newest[REF_UNANSWERED]} instance(s) after the last attempt",
        )
    return AfterCommitment(DONE)
