"""What other stages ask the journal about jobs (:class:`~dicomproxy.relay.journal.JobQueries`):
the push queue and the audit trail call these instead of reading ``jobs``/``job_instances``/
``job_expected`` themselves. On SQLite and PostgreSQL (several nodes share one there)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dicomproxy.relay.journal import InstanceRecord, Journal
from dicomproxy.status import JobKind, JobOutcome

MR = "1.2.840.10008.5.1.4.1.1.4"
PDF = "1.2.840.10008.5.1.4.1.1.104.1"


@pytest.fixture
def journal(journal_url: str) -> Iterator[Journal]:
    j = Journal(journal_url, "node")
    yield j
    j.close()


def _job(journal: Journal, archive: str, *records: InstanceRecord) -> int:
    job_id = journal.start(JobKind.PUSH, "DICOMPROXY", "", "CLOUD", archive)
    journal.add_instances(job_id, list(records))
    return job_id


def test_confirmed_instances_of_several_jobs(journal: Journal) -> None:
    a = _job(journal, "pacs", InstanceRecord("1.1", "sent", MR), InstanceRecord("1.2", "failed", MR))
    b = _job(
        journal,
        "",
        InstanceRecord("1.2", "warning", MR),
        InstanceRecord("1.1", "sent", MR),  # sent again: counted once
        InstanceRecord("9.1", "sent", PDF),
        InstanceRecord("1.3", "missing", MR),
    )
    other = _job(journal, "uis", InstanceRecord("7.7", "sent", MR))
    assert journal.confirmed_of([a, b]) == {"1.1", "1.2", "9.1"}
    assert journal.confirmed_classes_of([a, b]) == {("1.1", MR), ("1.2", MR), ("9.1", PDF)}
    assert journal.confirmed_counts([a, b, other]) == {a: 1, b: 3, other: 1}
    assert (journal.confirmed_of([]), journal.confirmed_classes_of([]), journal.confirmed_counts([])) == (
        frozenset(),
        set(),
        {},
    )
    # the newest job that recorded an archive
    assert journal.newest_archive([a, b]) == "pacs"
    assert journal.newest_archive([a, b, other]) == "uis"
    assert journal.newest_archive([b]) == journal.newest_archive([]) == ""


def test_expected_instances_of_some_classes(journal: Journal) -> None:
    a = _job(journal, "pacs")
    journal.add_expected(
        a,
        [
            {"study_uid": "1", "series_uid": "1.5", "sop_instance_uid": "9.1", "sop_class_uid": PDF},
            {"study_uid": "1", "series_uid": "1.6", "sop_instance_uid": "1.1", "sop_class_uid": MR},
        ],
    )
    assert journal.expected_of([a], [PDF]) == {"9.1"}
    assert journal.expected_of([a], [PDF, MR]) == {"9.1", "1.1"}
    assert journal.expected_of([a + 1], [PDF]) == journal.expected_of([], [PDF]) == set()


def test_interrupted_jobs_oldest_first(journal: Journal) -> None:
    first, running, second = (_job(journal, "pacs") for _ in range(3))
    journal.update(first, outcome=JobOutcome.INTERRUPTED)
    journal.update(second, outcome=JobOutcome.INTERRUPTED, expected=4)
    rows = journal.interrupted_jobs()
    assert [r["id"] for r in rows] == [first, second] and running not in [r["id"] for r in rows]
    assert (rows[1]["kind"], rows[1]["destination"], rows[1]["expected"]) == ("push", "CLOUD", 4)


def test_a_journal_over_an_open_engine_shares_it(journal: Journal) -> None:
    job = _job(journal, "pacs", InstanceRecord("1.1", "sent", MR))
    over = Journal.over(journal.engine)
    assert over.engine is journal.engine
    assert over.confirmed_of([job]) == {"1.1"}
