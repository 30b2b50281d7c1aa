"""A relay job's counts and final status (dicomproxy.relay.outcome): pure rules, no sockets."""

from __future__ import annotations

import pytest

from dicomproxy.errors import PacsUnavailable
from dicomproxy.pacs.client import InstanceRef
from dicomproxy.relay.journal import InstanceRecord
from dicomproxy.relay.outcome import JobState
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
