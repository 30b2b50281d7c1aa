"""A relay job's counts and final status (dicomproxy.relay.outcome): pure rules, no sockets."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dicomproxy.config import Config
from dicomproxy.errors import (
    DestinationUnavailable,
    DicomServiceError,
    InvalidIdentifier,
    MoveDestinationUnknown,
    PacsUnavailable,
)
from dicomproxy.pacs.client import InstanceRef, RetrieveKey
from dicomproxy.relay import outcome as outcome_module
from dicomproxy.relay.engine import Engine, PoolKeeper
from dicomproxy.relay.journal import InstanceRecord, Journal
from dicomproxy.relay.outcome import JobState
from dicomproxy.relay.upstream import Finder
from dicomproxy.status import JobOutcome, Status

CT = "1.2.840.10008.5.1.4.1.1.2"


def _state(n: int) -> JobState:
    state = JobState(1)
    for i in range(n):
        state.expected[f"1.2.3.{i}"] = InstanceRef("1.2.3", "1.2.3.0", f"1.2.3.{i}", CT)
    return state


def _sent(state: JobState, *categories: str) -> None:
    for i, category in enumerate(categories):
        state.count(InstanceRecord(f"1.2.3.{i}", "", CT), category)


@pytest.mark.parametrize(
    ("categories", "status", "outcome"),
    [(("Success",) * 3, Status.SUCCESS, JobOutcome.SUCCESS),
     (("Success", "Warning", "Success"), Status.SUBOPS_WARNING, JobOutcome.PARTIAL),
     (("Success", "Failure", "Success"), Status.SUBOPS_WARNING, JobOutcome.PARTIAL),
     (("Failure",) * 3, Status.OUT_OF_RESOURCES_SUBOPS, JobOutcome.FAILED),
     (("Warning",) * 3, Status.SUBOPS_WARNING, JobOutcome.PARTIAL),
     (("Success", "Success"), Status.SUBOPS_WARNING, JobOutcome.PARTIAL)],  # one never arrived
)  # fmt: skip
def test_final_status_from_counts(categories: tuple[str, ...], status: Status, outcome: JobOutcome) -> None:
    """PS3.4 C.4.2.1.5: Success; Warning (0xB000) when some failed or warned; 0xA702 when all failed;
    an announced instance that never arrived counts as failed."""
    state = _state(3)
    _sent(state, *categories)
    state.count_missing()
    final, got, _ = state.final(None, "", nothing_sent=False)
    assert (final.status, got) == (status, outcome)
    assert final.completed + final.failed + final.warning == 3
    assert final.failed == len(final.failed_uids)


def test_pacs_failure_before_anything_sent_is_the_job_status() -> None:
    state = _state(2)
    state.count_missing()
    final, outcome, error = state.final(PacsUnavailable("PACS X: cannot connect"), "", nothing_sent=True)
    assert (final.status, outcome) == (Status.PACS_UNAVAILABLE, JobOutcome.FAILED)
    assert final.comment and "cannot connect" in error
    # after something was sent, the PACS failure only fails what is missing
    state = _state(2)
    _sent(state, "Success")
    state.count_missing()
    final, outcome, error = state.final(PacsUnavailable("PACS X aborted"), "", nothing_sent=False)
    assert (final.status, outcome, final.failed) == (Status.SUBOPS_WARNING, JobOutcome.PARTIAL, 1)
    assert "aborted" in error


def test_missing_instances_are_named_or_counted() -> None:
    state = _state(3)
    _sent(state, "Success")
    state.count_missing()
    assert sorted(r.sop_instance_uid for r in state.records if r.state == "missing") == ["1.2.3.1", "1.2.3.2"]
    assert state.remaining == 0
    # started early: only the announced count is known, no UIDs to name
    early = JobState(2, announced=5)
    early.count(InstanceRecord("9.9.1", "", CT), "Success")
    assert early.remaining == 4
    early.count_missing()
    assert (early.completed, early.failed, early.failed_uids) == (1, 4, [])


def test_destination_lost_names_the_reason() -> None:
    state = _state(2)
    state.count_missing()
    final, outcome, error = state.final(None, "destination aborted the association", nothing_sent=True)
    assert (final.status, outcome) == (Status.OUT_OF_RESOURCES_SUBOPS, JobOutcome.FAILED)
    assert final.comment == error == "destination aborted the association"


# --- each rule on its own (issue 23: the outcome target's mutants) --------------------------------


def test_counted_needs_a_count_only_beside_a_running_listing() -> None:
    """Pending responses carry Number of Remaining Sub-operations: known unless the job started
    early (a Finder still listing) and its PACS announced no count."""
    finder: Any = object()  # only its presence matters here
    assert JobState(1).counted
    assert JobState(1, announced=0).counted
    assert not JobState(1, finder=finder).counted
    assert JobState(1, finder=finder, announced=1).counted


def test_remaining_from_the_list_and_from_the_announced_count() -> None:
    state = _state(3)
    state.extras = 2  # two order/report objects still to send
    assert state.remaining == 5
    _sent(state, "Success")
    state.count(InstanceRecord("9.9.9", "", CT), "Success")  # not on the list: does not count down
    assert state.remaining == 4
    # started early: counted down from the announced total; the objects sent are not instances
    early = JobState(2, announced=4, extras=2)
    early.count_extra(InstanceRecord("7.7.1", "", CT), "Success")
    early.count(InstanceRecord("9.9.1", "", CT), "Success")
    assert (early.extras, early.remaining) == (1, 3 + 1)
    # a PACS that sends more than it announced: never below what is still to come
    over = JobState(3, announced=1, extras=1)
    for uid in ("9.9.1", "9.9.2", "9.9.3"):
        over.count(InstanceRecord(uid, "", CT), "Success")
    assert over.remaining == 1


def test_each_category_counts_and_sets_the_record_state() -> None:
    state = _state(3)
    records = [InstanceRecord(f"1.2.3.{i}", "", CT) for i in range(3)]
    for record, category in zip(records, ("Success", "Warning", "Failure"), strict=True):
        state.count(record, category)
    assert [r.state for r in records] == ["sent", "warning", "failed"]
    assert (state.completed, state.warning, state.failed, state.failed_uids) == (1, 1, 1, ["1.2.3.2"])
    assert state.processed == {"1.2.3.0", "1.2.3.1", "1.2.3.2"}
    assert "first sent" in state.marks


def test_order_and_report_objects_count_as_sub_operations() -> None:
    state = _state(1)
    state.files = state.extras = 3
    report = InstanceRecord("7.7.1", "", CT)
    state.count_extra(report, "Success")
    state.count_unavailable()  # one file could not be fetched: failed, no UID
    assert (state.extras, state.completed, state.failed, state.extra_uids) == (1, 1, 1, {"7.7.1"})
    assert report.state == "sent" and state.failed_uids == []
    state.count_missing()  # the last object never sent, nor the one instance
    assert (state.extras, state.failed, state.failed_uids, state.missing_uids) == (
        0,
        3,
        ["1.2.3.0"],
        ["1.2.3.0"],
    )
    assert [(r.sop_instance_uid, r.state, r.error) for r in state.records] == [
        ("1.2.3.0", "missing", "never received")
    ]


def test_count_missing_from_the_announced_count_leaves_out_the_objects_sent() -> None:
    early = JobState(2, announced=3, extras=1)
    early.count_extra(InstanceRecord("7.7.1", "", CT), "Success")
    early.count(InstanceRecord("9.9.1", "", CT), "Success")
    early.count_missing()
    assert (early.completed, early.failed, early.failed_uids, early.records) == (2, 2, [], [])
    # all announced arrived: nothing is missing
    done = JobState(3, announced=1)
    done.count(InstanceRecord("9.9.1", "", CT), "Success")
    done.count_missing()
    assert (done.failed, done.missing_uids) == (0, [])


@pytest.mark.parametrize(
    ("exc", "status", "outcome"),
    [(MoveDestinationUnknown("no such peer"), Status.MOVE_DESTINATION_UNKNOWN, JobOutcome.REFUSED),
     (InvalidIdentifier("bad level"), Status.IDENTIFIER_MISMATCH, JobOutcome.REFUSED),
     (DestinationUnavailable("DEST refused"), Status.DESTINATION_UNAVAILABLE, JobOutcome.FAILED),
     (PacsUnavailable("PACS down"), Status.PACS_UNAVAILABLE, JobOutcome.FAILED)],
)  # fmt: skip
def test_stopped_by_before_anything_was_confirmed(
    exc: DicomServiceError, status: int, outcome: JobOutcome
) -> None:
    """Nothing confirmed: the exception's status is the answer (0xA801/0xA900: refused); what
    was still to send — instances and objects — is failed."""
    state = _state(3)
    state.extras = 1
    final, got, error = state.stopped_by(exc)
    assert (final.status, got, error, final.comment) == (status, outcome, str(exc), exc.comment)
    assert (final.failed, state.extras) == (4, 0)


@pytest.mark.parametrize("category", ["Success", "Warning"])
def test_stopped_by_after_some_were_confirmed_is_partial(category: str) -> None:
    """A retry whose earlier attempt confirmed some (sent, or with a warning): 0xB000, partial."""
    state = _state(3)
    _sent(state, category)
    final, outcome, error = state.stopped_by(DestinationUnavailable("DEST refused the association"))
    assert (final.status, outcome, error) == (
        Status.SUBOPS_WARNING,
        JobOutcome.PARTIAL,
        "DEST refused the association",
    )
    assert final.failed == 2


@pytest.mark.parametrize("category", ["Success", "Warning"])
def test_a_pacs_failure_after_confirmed_instances_is_not_the_job_status(category: str) -> None:
    """nothing_sent in this attempt, but an earlier one confirmed some (a retry): partial."""
    state = _state(2)
    _sent(state, category)
    state.count_missing()
    final, outcome, error = state.final(PacsUnavailable("PACS X aborted"), "", nothing_sent=True)
    assert (final.status, outcome, error) == (Status.SUBOPS_WARNING, JobOutcome.PARTIAL, "PACS X aborted")


def test_a_pacs_failure_that_is_not_a_service_error() -> None:
    state = _state(1)
    state.count_missing()
    final, outcome, error = state.final(RuntimeError("socket closed"), "", nothing_sent=True)
    assert (final.status, final.comment, outcome, error) == (
        Status.PACS_UNAVAILABLE,
        "PACS failed",
        JobOutcome.FAILED,
        "socket closed",
    )
    # something was sent: the PACS error only explains the failed rest
    state = _state(1)
    state.count_missing()
    final, outcome, error = state.final(RuntimeError("socket closed"), "", nothing_sent=False)
    assert (final.status, final.comment, outcome, error) == (
        Status.OUT_OF_RESOURCES_SUBOPS,
        "socket closed",
        JobOutcome.FAILED,
        "socket closed",
    )


def test_final_error_and_comment_texts() -> None:
    """All failed: the comment is why sending stopped, else the PACS's error, else a plain
    sentence; a success keeps a PACS error as the job's error text (journal), not as a status."""
    for dest_error, pacs_error, comment in [
        ("DEST aborted", PacsUnavailable("PACS aborted"), "DEST aborted"),
        ("", None, "all sub-operations failed"),
    ]:
        state = _state(1)
        _sent(state, "Failure")
        final, outcome, error = state.final(pacs_error, dest_error, nothing_sent=False)
        assert (final.status, outcome, final.comment) == (
            Status.OUT_OF_RESOURCES_SUBOPS,
            JobOutcome.FAILED,
            comment,
        )
        assert error == dest_error
    state = _state(1)
    _sent(state, "Success")
    final, outcome, error = state.final(PacsUnavailable("PACS released late"), "", nothing_sent=False)
    assert (final.status, outcome, error, final.comment) == (
        Status.SUCCESS,
        JobOutcome.SUCCESS,
        "PACS released late",
        "",
    )
    # warnings only: partial, never "all failed"
    state = _state(1)
    _sent(state, "Warning")
    final, outcome, _ = state.final(None, "", nothing_sent=False)
    assert (final.status, outcome) == (Status.SUBOPS_WARNING, JobOutcome.PARTIAL)


def test_timing_names_the_marks_reached(monkeypatch: pytest.MonkeyPatch) -> None:
    """The job's last log line: seconds since the start, and each mark reached (a fixed clock)."""
    clock = [1000.0]
    monkeypatch.setattr(outcome_module, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    state = JobState(1)
    clock[0] = 1002.5
    assert state.timing() == "in 2.50 s"
    state.marks.update({"found": 1000.21, "first sent": 1000.3})
    state.mark("found")  # the first mark stays
    assert state.timing() == "in 2.50 s (found 0.21, first sent 0.30)"


def test_a_listed_job_counts_from_its_list_even_when_a_count_was_announced() -> None:
    """An early-started job whose listing was merged: the list decides what is remaining and
    what is missing (named), not the PACS's announced count (off by two here)."""
    state = _state(3)
    state.announced = 5
    _sent(state, "Success")
    assert state.remaining == 2
    state.count_missing()
    assert (state.failed, state.missing_uids) == (2, ["1.2.3.1", "1.2.3.2"])


class _Lister:
    def __init__(self, refs: list[InstanceRef]) -> None:
        self.refs = refs

    def find_instances(self, key: object) -> list[InstanceRef]:
        return self.refs


def test_a_merged_list_journals_the_objects_only_when_there_are_some(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    """``job_expected``/``expected`` after an early start's listing: its instances, plus the
    order/report objects of the job — none unless it has some."""
    journal = Journal(f"sqlite:///{tmp_path / 'journal.db'}", "test")
    engine = Engine(make_config(), journal, PoolKeeper(0), 0.1)
    refs = [InstanceRef("1.2.3", "1.2.3.0", f"1.2.3.{i}", CT) for i in range(3)]
    for objects in (0, 2):
        job_id = journal.start("move", "CLOUD", "127.0.0.1", "DEST", "pacs")
        state = JobState(job_id, announced=3)
        if objects:
            state.files = state.extras = objects
        state.finder = Finder(_Lister(refs), RetrieveKey("1.2.3"))  # type: ignore[arg-type]
        engine.merge_found(state, 10.0)
        assert state.finder is None and sorted(state.expected) == ["1.2.3.0", "1.2.3.1", "1.2.3.2"]
        assert journal.get(job_id).row["expected"] == 3 + objects  # type: ignore[union-attr]
        assert len(journal.unconfirmed(job_id)) == 3
    journal.close()


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["expect", "count", "extra", "missing"]), st.integers(0, 12)),
        max_size=40,
    )
)
def test_remaining_kept_current_matches_the_intersection(steps: list[tuple[str, int]]) -> None:
    """:attr:`JobState.remaining` counts the processed instances on the list without an intersection
    per call (issue 29): after any mix of the list growing from outside (as the listing merges it),
    instances counted (on the list, off it, twice), order/report objects and missing ones, it is
    what the intersection gives."""
    state = JobState(1, announced=5, extras=3)
    for op, n in steps:
        uid = f"1.2.{n}"
        if op == "expect":
            state.expected.setdefault(uid, InstanceRef("1", "1.1", uid, CT))
        elif op == "count":
            state.count(InstanceRecord(uid, "", CT), "Success")
        elif op == "extra":
            state.count_extra(InstanceRecord(f"9.{n}", "", CT), "Success")
        else:
            state.count_missing()
        if state.expected:
            want = max(0, len(state.expected) - len(state.processed & state.expected.keys())) + state.extras
        else:
            want = max(0, state.announced - len(state.processed - state.extra_uids)) + state.extras
        assert state.remaining == want
