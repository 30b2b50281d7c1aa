"""The end of a job's pump (issue 23): order/report objects after the PACS's instances, then
every announced instance counted and the final response (``Pump._finish``, ``_send_reports``,
``_record``). The pump runs here on stand-ins for the destination, the sender and the report
fetch — no sockets, no clock: a slow report is completed from the pump's own
``is_cancelled`` look, so the Pending responses it yields meanwhile are counted, not timed.
The same paths with real peers: ``tests/test_reports_retrieve.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from dicomproxy.config import Config
from dicomproxy.pacs.client import InstanceRef
from dicomproxy.relay.delivered import delivered_objects
from dicomproxy.relay.forward import SendResult
from dicomproxy.relay.journal import InstanceRecord, Journal
from dicomproxy.relay.outcome import JobState
from dicomproxy.relay.pump import Pump, _Run
from dicomproxy.relay.recorder import InstanceRecorder
from dicomproxy.relay.sending import Prepared
from dicomproxy.relay.spool import End, SpooledInstance
from dicomproxy.relay.upstream import Finder
from dicomproxy.reports.fetch import ReportUnavailable
from dicomproxy.status import JobOutcome, Status

CT = "1.2.840.10008.5.1.4.1.1.2"
PDF = "1.2.840.10008.5.1.4.1.1.104.1"
STUDY = "1.2.3"


@dataclass
class ReportObj:
    """What a report future yields (a ReportObject's part the pump uses, through ``spooled``)."""

    item: SpooledInstance
    ref: InstanceRef
    role: str = "report"


class FakeFetch:
    """Stands in for :class:`~dicomproxy.relay.reports.ReportFetch`: the futures are the test's."""

    def __init__(self, futures: list[Future[Any]]) -> None:
        self.futures = futures
        self.errors: list[str] = []

    def __len__(self) -> int:
        return len(self.futures)

    def unavailable(self, index: int, exc: ReportUnavailable) -> None:
        self.errors.append(f"file {index} not available: {exc}")

    @staticmethod
    def spooled(obj: ReportObj, spool: Any) -> tuple[SpooledInstance, InstanceRef]:
        return obj.item, obj.ref


@dataclass
class FakeForwarder:
    alive: bool = True
    can_reconnect: bool = True
    reconnects: int = 0

    def reconnect(self) -> None:
        self.reconnects += 1
        self.alive = True


@dataclass
class FakeSender:
    """Answers each send with ``answer`` (None: no response, the association was lost)."""

    answer: SendResult | None = field(default_factory=lambda: SendResult(0x0000, bytes_out=10))
    sent: list[str] = field(default_factory=list)

    def send(self, forwarder: FakeForwarder, prepared: Prepared) -> SendResult | None:
        assert forwarder.alive, "sent on a lost association"
        self.sent.append(prepared.item.sop_instance_uid)
        return self.answer


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal(f"sqlite:///{tmp_path / 'journal.db'}", "test")
    yield j
    j.close()


def done(value: Any) -> Future[Any]:
    future: Future[Any] = Future()
    future.set_result(value)
    return future


def failed(exc: BaseException) -> Future[Any]:
    future: Future[Any] = Future()
    future.set_exception(exc)
    return future


def report(tmp_path: Path, n: int) -> ReportObj:
    uid = f"7.7.{n}"
    path = tmp_path / f"report-{uid}.dcm"
    path.write_bytes(b"pdf")
    return ReportObj(
        SpooledInstance(path, PDF, uid, "1.2.840.10008.1.2.1", 3), InstanceRef(STUDY, "7.7", uid, PDF)
    )


class Rig:
    """A job of two instances (both already sent) and ``futures`` order/report objects."""

    def __init__(
        self, config: Config, journal: Journal, futures: list[Future[Any]], *, sent: int = 2
    ) -> None:
        self.journal = journal
        job_id = journal.start("move", "CLOUD", "127.0.0.1", "FAKEDEST", "pacs")
        self.state = JobState(job_id)
        for i in range(2):
            self.state.expected[f"1.2.3.{i}"] = InstanceRef(STUDY, "1.2.3.0", f"1.2.3.{i}", CT)
        for i in range(sent):
            self.state.count(InstanceRecord(f"1.2.3.{i}", "", CT), "Success")
        self.state.files = self.state.extras = len(futures)
        self.fetch = FakeFetch(futures)
        self.recorder = InstanceRecorder(journal, self.state)
        self.pump = Pump(config, self.recorder, _no_pool, _no_pool, 0.001, _no_merge, self.fetch)  # type: ignore[arg-type]
        self.sender = FakeSender()
        self.pump.sender = self.sender  # type: ignore[assignment]
        self.forwarder = FakeForwarder()
        self.looks = 0
        #: Called on the pump's n-th look at ``is_cancelled`` (n → action).
        self.on_look: dict[int, Callable[[], None]] = {}
        self.cancelled = False
        self.alive = True

    def is_cancelled(self) -> bool:
        self.looks += 1
        assert self.looks < 10_000, "the pump keeps looking without getting anywhere"  # not a hang
        if self.looks in self.on_look:
            self.on_look[self.looks]()
        return self.cancelled

    def finish(
        self, end: End | None = None, dest_error: str = ""
    ) -> tuple[list[Any], tuple[Any, JobOutcome, str]]:
        """Drive ``Pump._finish`` to its end: (the responses it yielded, its return value)."""
        steps = self.pump._finish(
            self.state,
            None,  # type: ignore[arg-type]
            self.forwarder,  # type: ignore[arg-type]
            End(None) if end is None else end,
            dest_error,
            self.is_cancelled,
            lambda: self.alive,
        )
        yielded = []
        try:
            while True:
                yielded.append(next(steps))
        except StopIteration as stop:
            return yielded, stop.value


def _no_pool(*_: Any) -> Any:
    raise AssertionError("no transcoding pool at the end of a job")


def _no_merge(state: JobState, wait: float) -> None:
    pass


def test_the_reports_go_after_the_instances_each_a_sub_operation(
    make_config: Callable[..., Config], journal: Journal, tmp_path: Path
) -> None:
    objs = [report(tmp_path, 1), report(tmp_path, 2)]
    rig = Rig(make_config(), journal, [done(o) for o in objs])
    yielded, (final, outcome, error) = rig.finish()
    assert rig.sender.sent == ["7.7.1", "7.7.2"]
    assert [r.status for r in yielded] == [Status.PENDING, Status.PENDING]  # one after each
    assert [r.remaining for r in yielded] == [1, 0]
    assert (final.status, outcome, error) == (Status.SUCCESS, JobOutcome.SUCCESS, "")
    assert (final.completed, final.failed, rig.state.extras) == (4, 0, 0)
    assert rig.state.extra_uids == {"7.7.1", "7.7.2"}
    # journalled as announced before they were sent (a retry resends them), and as sent
    assert sorted(r["sop_instance_uid"] for r in journal.unconfirmed(rig.state.job_id)) == []
    view = journal.get(rig.state.job_id, all_instances=True)
    assert view is not None
    assert [(r["sop_instance_uid"], r["state"]) for r in view.instances] == [
        ("7.7.1", "sent"),
        ("7.7.2", "sent"),
    ]
    assert not objs[0].item.path.exists()  # confirmed: its spool file went
    # with their role: a revised report or a correction after delivery finds them (docs/identity.md)
    d = delivered_objects
    with journal.engine.connect() as conn:
        rows = conn.execute(
            select(d.c.sop_instance_uid, d.c.role, d.c.series_uid).where(d.c.job_id == rig.state.job_id)
        )
        assert sorted(map(tuple, rows)) == [("7.7.1", "report", "7.7"), ("7.7.2", "report", "7.7")]


@pytest.mark.parametrize("counted", [True, False])
def test_a_slow_report_keeps_the_requester_informed_while_counted(
    make_config: Callable[..., Config], journal: Journal, tmp_path: Path, counted: bool
) -> None:
    """The report's file is still being fetched: the pump waits (Pending responses, but only
    while Number of Remaining Sub-operations is known), then sends it."""
    slow: Future[Any] = Future()
    rig = Rig(make_config(), journal, [slow])
    if not counted:  # started early, the listing still running and no count announced
        rig.state.finder = Finder.__new__(Finder)
    obj = report(tmp_path, 1)
    rig.on_look[3] = lambda: slow.set_result(obj)  # two waits time out before it is ready
    yielded, (final, outcome, _) = rig.finish()
    assert rig.sender.sent == ["7.7.1"]
    assert [r.status for r in yielded] == ([Status.PENDING] * 3 if counted else [])
    assert rig.fetch.errors == []
    assert (final.completed, final.failed) == (3, 0)
    assert outcome == JobOutcome.SUCCESS


def test_reports_that_cannot_be_fetched_are_failed_sub_operations_and_say_why(
    make_config: Callable[..., Config], journal: Journal, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rig = Rig(
        make_config(),
        journal,
        [
            failed(ReportUnavailable("no such file")),
            failed(ValueError("encoder bug")),
            done(report(tmp_path, 3)),
        ],
    )
    _, (final, outcome, _) = rig.finish()
    assert rig.fetch.errors == [
        "file 0 not available: no such file",
        "file 1 not available: ValueError('encoder bug')",
    ]
    job = rig.state.job_id
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        f"job {job}: file 0 not available: no such file",
        f"job {job}: file 1 not available: ValueError('encoder bug')",
    ]
    assert rig.sender.sent == ["7.7.3"]  # the next ones still go
    assert (final.status, outcome, final.completed, final.failed, final.failed_uids) == (
        Status.SUBOPS_WARNING,
        JobOutcome.PARTIAL,
        3,
        2,
        [],
    )


@pytest.mark.parametrize(
    ("alive", "can_reconnect", "reconnects"), [(False, True, 1), (True, True, 0), (True, False, 0)]
)
def test_a_lost_onward_association_is_reopened_for_the_reports(
    make_config: Callable[..., Config],
    journal: Journal,
    tmp_path: Path,
    alive: bool,
    can_reconnect: bool,
    reconnects: int,
) -> None:
    rig = Rig(make_config(), journal, [done(report(tmp_path, 1))])
    rig.forwarder.alive, rig.forwarder.can_reconnect = alive, can_reconnect
    _, (final, _, _) = rig.finish()
    assert (rig.forwarder.reconnects, rig.sender.sent, final.completed) == (reconnects, ["7.7.1"], 3)


def test_a_report_without_an_answer_is_failed_as_association_lost(
    make_config: Callable[..., Config], journal: Journal, tmp_path: Path
) -> None:
    rig = Rig(make_config(), journal, [done(report(tmp_path, 1))])
    rig.sender.answer = None
    _, (final, outcome, _) = rig.finish()
    assert (final.completed, final.failed, final.failed_uids, outcome) == (
        2,
        1,
        ["7.7.1"],
        JobOutcome.PARTIAL,
    )
    view = journal.get(rig.state.job_id)
    assert view is not None
    assert [(r["sop_instance_uid"], r["state"], r["error"]) for r in view.instances] == [
        ("7.7.1", "failed", "destination association lost")
    ]


@pytest.mark.parametrize(
    ("cancelled", "outcome"), [(True, JobOutcome.CANCELLED), (False, JobOutcome.ABORTED)]
)
def test_the_requester_stops_the_job_while_a_report_is_fetched(
    make_config: Callable[..., Config], journal: Journal, tmp_path: Path, cancelled: bool, outcome: JobOutcome
) -> None:
    """A C-CANCEL (cancelled) or the requester's association gone (aborted) while waiting for a
    report: the job ends there, the report not sent."""
    slow: Future[Any] = Future()
    rig = Rig(make_config(), journal, [slow])

    def stop() -> None:
        if cancelled:
            rig.cancelled = True
        else:
            rig.alive = False

    rig.on_look[2] = stop
    _, (final, got, error) = rig.finish()
    assert (final.status, got) == (Status.CANCEL, outcome)
    assert error == ("cancelled by the requester" if cancelled else "requester went away")
    assert rig.sender.sent == []


def test_no_reports_after_the_destination_was_lost(
    make_config: Callable[..., Config], journal: Journal, tmp_path: Path
) -> None:
    rig = Rig(make_config(), journal, [done(report(tmp_path, 1))])
    _, (final, outcome, error) = rig.finish(dest_error="destination aborted the association")
    assert rig.sender.sent == []
    assert (final.status, outcome, error) == (
        Status.SUBOPS_WARNING,
        JobOutcome.PARTIAL,
        "destination aborted the association",
    )
    assert (final.completed, final.failed) == (2, 1)  # the report never sent: failed


def test_a_pacs_failure_before_any_instance_is_the_answer_and_no_report_goes(
    make_config: Callable[..., Config], journal: Journal, tmp_path: Path
) -> None:
    rig = Rig(make_config(), journal, [done(report(tmp_path, 1))], sent=0)
    yielded, (final, outcome, error) = rig.finish(End(ConnectionError("PACS aborted")))
    assert (rig.sender.sent, yielded) == ([], [])
    assert (final.status, final.comment, outcome, error) == (
        Status.PACS_UNAVAILABLE,
        "PACS failed",
        JobOutcome.FAILED,
        "PACS aborted",
    )


def test_a_pacs_failure_after_some_instances_still_sends_the_reports(
    make_config: Callable[..., Config], journal: Journal, tmp_path: Path
) -> None:
    rig = Rig(make_config(), journal, [done(report(tmp_path, 1))], sent=1)
    _, (final, outcome, error) = rig.finish(End(ConnectionError("PACS aborted")))
    assert rig.sender.sent == ["7.7.1"]
    assert (final.status, outcome, error, final.completed, final.failed) == (
        Status.SUBOPS_WARNING,
        JobOutcome.PARTIAL,
        "PACS aborted",
        2,
        1,
    )
    assert final.failed_uids == ["1.2.3.1"]  # the instance the PACS never sent


def test_without_reports_the_pump_ends_on_the_counts(
    make_config: Callable[..., Config], journal: Journal
) -> None:
    rig = Rig(make_config(), journal, [], sent=1)
    rig.pump.reports = None
    yielded, (final, outcome, _) = rig.finish()
    assert (yielded, final.status, outcome, final.failed_uids) == (
        [],
        Status.SUBOPS_WARNING,
        JobOutcome.PARTIAL,
        ["1.2.3.1"],
    )


def test_each_result_taken_from_the_lanes_is_recorded(
    make_config: Callable[..., Config], journal: Journal, tmp_path: Path
) -> None:
    rig = Rig(make_config(), journal, [], sent=0)
    run = _Run()
    rig.pump._record([], run)
    assert run.recorded is False
    items = [report(tmp_path, n).item for n in (1, 2)]
    rig.pump._record([(Prepared(i), SendResult(0x0000)) for i in items], run)
    assert run.recorded is True
    assert (rig.state.completed, rig.state.processed) == (2, {"7.7.1", "7.7.2"})
