"""Poison items: a study whose delivery kills every node that takes it over is not taken over
forever. Takeovers count in ``push_queue.takeovers``; past ``[push] max_takeovers`` the next
claim marks the item ``failed`` ("abandoned by N nodes/leases") instead of running it, and
``push retry`` resets the count. On SQLite, PostgreSQL and MariaDB (a fresh database per test).

A node "dies" by claiming and never renewing its lease; the queues share an injected clock
(``PushQueue.now``), moved past the lease instead of sleeping.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
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
)
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.exc import OperationalError

from dicomproxy.cli import cli
from dicomproxy.config import parse_config
from dicomproxy.push import queue as queue_module
from dicomproxy.push.queue import (
    DONE,
    FAILED,
    QUEUED,
    RUNNING,
    WAITING,
    Entry,
    PushQueue,
    migrate,
    push_queue,
)
from dicomproxy.push.service import PushService
from dicomproxy.relay.journal import Journal
from tests.conftest import base_config_dict, push_cli_toml

LEASE = 60.0
START = dt.datetime(2026, 3, 2, 12, 0, 0)


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def journal(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Journal]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'journal.db'}"
    else:
        url = request.getfixturevalue(f"{'pg' if request.param == 'postgresql' else 'mariadb'}_journal")
    j = Journal(url, "test")
    try:
        yield j
    finally:
        j.engine.dispose()


class Clock:
    """The nodes' shared clock (naive UTC)."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def nodes(journal: Journal, clock: Clock) -> Callable[[str], PushQueue]:
    """``nodes("node-a")``: a queue object as one node sees it, on the shared clock."""

    def make(name: str) -> PushQueue:
        q = PushQueue(journal.engine, name)
        q.now = clock
        return q

    return make


def _enqueue(q: PushQueue, study_uid: str, examine_id: str = "EX-1", stamp: str = "1") -> int:
    with q.engine.begin() as conn:
        q.enqueue(conn, [Entry(study_uid, "CLOUD", examine_id, stamp)])
    return next(int(i["id"]) for i in q.items(limit=100) if i["study_uid"] == study_uid)


def _row(q: PushQueue, item_id: int) -> dict[str, Any]:
    row = q.get(item_id)
    assert row is not None
    return row


@pytest.mark.parametrize("max_takeovers", [3, 0])
def test_an_item_abandoned_by_every_node_is_failed_not_taken_over_forever(
    nodes: Callable[[str], PushQueue], clock: Clock, caplog: pytest.LogCaptureFixture, max_takeovers: int
) -> None:
    first = nodes("node-0")
    item_id = _enqueue(first, "1.2.3.9", examine_id="EX-SECRET-42")
    item = first.claim(LEASE, max_takeovers=max_takeovers)
    assert item is not None and (item.id, item.attempts, item.takeovers) == (item_id, 1, 0)
    # every node that takes it dies too: claims, never renews, never finishes
    for n in range(1, max_takeovers + 1):
        clock.advance(LEASE - 1)
        assert nodes("early").claim(LEASE, max_takeovers=max_takeovers) is None  # lease still valid
        clock.advance(2)
        node = nodes(f"node-{n}")
        taken = node.claim(LEASE, max_takeovers=max_takeovers)
        assert taken is not None and taken.id == item_id
        assert (taken.attempts, taken.takeovers) == (1, n)  # a takeover is not an attempt
        row = _row(node, item_id)
        assert (row["state"], row["owner"], row["takeovers"], row["attempts"]) == (RUNNING, f"node-{n}", n, 1)
    clock.advance(LEASE + 1)
    other = nodes("node-last")
    second = _enqueue(other, "1.2.3.10")  # due too: the same claim goes on to it
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="dicomproxy.push.queue"):
        got = other.claim(LEASE, max_takeovers=max_takeovers)
    assert got is not None and got.id == second and got.takeovers == 0
    row = _row(other, item_id)
    abandoned = max_takeovers + 1
    assert (row["state"], row["takeovers"], row["attempts"], row["lease_until"]) == (
        FAILED,
        abandoned,
        1,
        None,
    )
    assert row["error"].startswith(f"abandoned by {abandoned} nodes/leases")
    assert f"max_takeovers = {max_takeovers}" in row["error"]
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    message = warnings[0].getMessage()
    assert f"push item {item_id} (study 1.2.3.9)" in message and f"abandoned by {abandoned}" in message
    assert "EX-SECRET-42" not in message
    assert other.finish(got, DONE)
    # failed stays failed: no node runs it again, however long
    clock.advance(10 * LEASE)
    assert nodes("node-x").claim(LEASE, max_takeovers=max_takeovers) is None
    assert other.counts()[("CLOUD", FAILED)] == 1
    # `push retry` runs it again, the takeovers reset
    assert other.retry(item_id)
    row = _row(other, item_id)
    assert (row["state"], row["takeovers"], row["attempts"], row["error"]) == (QUEUED, 0, 0, "")
    again = nodes("node-y").claim(LEASE, max_takeovers=max_takeovers)
    assert again is not None and (again.id, again.attempts, again.takeovers) == (item_id, 1, 0)


def test_one_expired_lease_is_still_taken_over_and_delivered(
    nodes: Callable[[str], PushQueue], clock: Clock
) -> None:
    a, b = nodes("node-a"), nodes("node-b")
    item_id = _enqueue(a, "1.2.3.1")
    mine = a.claim(LEASE)
    assert mine is not None
    # a renewed lease is not taken over (and not counted)
    clock.advance(LEASE / 2)
    assert a.renew([item_id], LEASE) == 1
    clock.advance(LEASE / 2 + 1)
    assert b.claim(LEASE) is None
    assert _row(a, item_id)["takeovers"] == 0
    # node A dies: B takes the item over once, as before, and delivers it
    clock.advance(LEASE)
    taken = b.claim(LEASE)
    assert taken is not None and (taken.id, taken.attempts, taken.takeovers) == (item_id, 1, 1)
    assert a.renew([item_id], LEASE) == 0 and not a.finish(mine, DONE)  # A, if only hung, sees it lost
    assert b.finish(taken, DONE, confirmed=3)
    row = _row(b, item_id)
    assert (row["state"], row["owner"], row["confirmed"]) == (DONE, "node-b", 3)
    assert row["takeovers"] == 0  # delivered: not poison


def test_a_released_item_is_due_at_once_without_the_attempt_its_claim_counted(
    nodes: Callable[[str], PushQueue], clock: Clock
) -> None:
    """A clean stop gives a running item back: queued, due now, no lease, and the attempt its
    claim counted taken back (a second attempt stays counted); only the owner's items."""
    a, b = nodes("node-a"), nodes("node-b")
    item_id = _enqueue(a, "1.2.3.1")
    first = a.claim(LEASE)
    assert first is not None and a.finish(first, WAITING, next_at=clock.now)  # a failed attempt
    second = a.claim(LEASE)
    assert second is not None and second.attempts == 2
    b.release([item_id])  # not B's: nothing happens
    assert (_row(a, item_id)["state"], _row(a, item_id)["attempts"]) == (RUNNING, 2)
    clock.advance(5)
    a.release([item_id])
    row = _row(a, item_id)
    assert (row["state"], row["attempts"], row["lease_until"], row["next_at"]) == (QUEUED, 1, None, clock.now)
    again = b.claim(LEASE)
    assert again is not None and (again.id, again.attempts) == (item_id, 2)


def test_finish_stamps_updated_and_a_row_changed_meanwhile_is_queued_again(
    nodes: Callable[[str], PushQueue], clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    """``finish`` stamps ``updated`` unless told not to (``touch=False``: a re-check that found
    nothing); a view row that changed while the item ran makes any end a fresh ``queued`` (stamped,
    counts reset, the change consumed, so the next delivery ends as it says). A takeover is logged
    as one; a normal claim is not."""
    caplog.set_level(logging.INFO, logger="dicomproxy.push.queue")
    a, b = nodes("node-a"), nodes("node-b")
    item_id = _enqueue(a, "1.2.3.1", stamp="1")
    item = a.claim(LEASE)
    assert item is not None and "taken over" not in caplog.text
    _enqueue(a, "1.2.3.1", stamp="2")  # the RIS revised the row meanwhile
    clock.advance(10)
    assert a.finish(item, DONE, touch=False)
    row = _row(a, item_id)
    assert (row["state"], row["changed"], row["attempts"], row["report_attempts"], row["rechecks"]) == (
        QUEUED,
        0,
        0,
        0,
        0,
    )
    assert row["updated"] == clock.now
    again = a.claim(LEASE)
    assert again is not None
    clock.advance(10)
    assert a.finish(again, DONE)
    row = _row(a, item_id)
    assert (row["state"], row["updated"]) == (DONE, clock.now)
    # taken over: one INFO line naming the node it was taken from
    _enqueue(a, "1.2.3.2")
    assert a.claim(LEASE) is not None
    clock.advance(LEASE + 1)
    assert b.claim(LEASE) is not None
    assert "taken over from node-a" in caplog.text


def test_a_lease_is_expired_only_after_its_end(nodes: Callable[[str], PushQueue], clock: Clock) -> None:
    a, b = nodes("node-a"), nodes("node-b")
    item_id = _enqueue(a, "1.2.3.1")
    assert a.claim(LEASE) is not None
    assert a.renew([], LEASE) == 0
    clock.advance(LEASE)  # lease_until == now: still A's
    assert b.claim(LEASE) is None
    clock.advance(1)
    taken = b.claim(LEASE)
    assert taken is not None and taken.id == item_id and taken.takeovers == 1


def test_push_retry_makes_a_waiting_item_due_afresh(nodes: Callable[[str], PushQueue], clock: Clock) -> None:
    a = nodes("node-a")
    item_id = _enqueue(a, "1.2.3.1")
    item = a.claim(LEASE)
    assert item is not None
    later = clock.now + dt.timedelta(hours=1)
    assert a.finish(item, WAITING, next_at=later, report_attempts=3, rechecks=1, error="report file missing")
    assert not a.retry(item_id + 1) and a.retry(item_id)
    row = _row(a, item_id)
    assert (row["state"], row["next_at"], row["attempts"], row["report_attempts"], row["rechecks"]) == (
        QUEUED,
        clock.now,
        0,
        0,
        0,
    )
    assert (row["takeovers"], row["error"], row["generation"]) == (0, "", 0)  # confirmations still count
    assert not a.retry(item_id)  # queued already: nothing to retry


def test_a_recheck_is_claimed_when_it_is_due_not_before(
    nodes: Callable[[str], PushQueue], clock: Clock
) -> None:
    a = nodes("node-a")
    item_id = _enqueue(a, "1.2.3.1")
    item = a.claim(LEASE)
    assert item is not None and a.finish(item, DONE, next_at=clock.now + dt.timedelta(seconds=60), rechecks=1)
    clock.advance(59)
    assert a.claim(LEASE) is None
    clock.advance(1)  # due exactly now
    again = a.claim(LEASE)
    assert again is not None and (again.id, again.recheck) == (item_id, True)


def test_requeue_sends_again_in_full(nodes: Callable[[str], PushQueue], clock: Clock) -> None:
    """``push requeue``: a new generation, images and files to be sent again, counts reset."""
    a = nodes("node-a")
    item_id = _enqueue(a, "1.2.3.1")
    item = a.claim(LEASE)
    assert item is not None and a.finish(item, DONE, images_done=1, reports="sent", confirmed=4)
    assert a.requeue(START + dt.timedelta(seconds=1)) == 0  # queued before that
    assert a.requeue(START, "ELSEWHERE") == 0  # another destination's only
    assert a.requeue(START, "CLOUD") == 1  # queued at or after it, for this destination
    again = a.claim(LEASE)
    assert again is not None and (again.id, again.generation, again.images_done, again.reports) == (
        item_id,
        1,
        False,
        "",
    )
    assert _row(a, item_id)["confirmed"] == 0


def test_takeovers_add_up_across_reported_failures_until_delivered(
    nodes: Callable[[str], PushQueue], clock: Clock
) -> None:
    """A reported outcome in between (waiting) does not reset the count: a study that kills every
    other run is still caught; a delivery or a changed view row does reset it."""
    item_id = _enqueue(nodes("w"), "1.2.3.2", stamp="1")
    assert nodes("a").claim(LEASE, max_takeovers=1) is not None
    clock.advance(LEASE + 1)
    taken = nodes("b").claim(LEASE, max_takeovers=1)
    assert taken is not None and taken.takeovers == 1
    assert nodes("b").finish(taken, WAITING, next_at=clock() + dt.timedelta(seconds=30))
    clock.advance(31)
    retried = nodes("c").claim(LEASE, max_takeovers=1)
    assert retried is not None and (retried.attempts, retried.takeovers) == (2, 1)
    clock.advance(LEASE + 1)
    assert nodes("d").claim(LEASE, max_takeovers=1) is None
    row = _row(nodes("d"), item_id)
    assert (row["state"], row["takeovers"]) == (FAILED, 2)
    # the view row changed (a new stamp): queued again from scratch, like its attempts
    w = nodes("w")
    _enqueue(w, "1.2.3.2", stamp="2")
    row = _row(w, item_id)
    assert (row["state"], row["takeovers"], row["attempts"]) == (QUEUED, 0, 0)


def test_push_requeue_resets_takeovers(nodes: Callable[[str], PushQueue], clock: Clock) -> None:
    item_id = _enqueue(nodes("w"), "1.2.3.3")
    assert nodes("a").claim(LEASE, max_takeovers=0) is not None
    clock.advance(LEASE + 1)
    assert nodes("b").claim(LEASE, max_takeovers=0) is None
    assert _row(nodes("b"), item_id)["state"] == FAILED
    assert nodes("b").requeue(START - dt.timedelta(days=1)) == 1
    row = _row(nodes("b"), item_id)
    assert (row["state"], row["takeovers"], row["generation"]) == (QUEUED, 0, 1)


# --- an existing journal (created before the column) -----------------------------------------


def _old_push_queue(metadata: MetaData) -> Table:
    """``push_queue`` as the previous release created it: no ``takeovers``."""
    return Table(
        "push_queue",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("study_uid", String(64), nullable=False),
        Column("destination", String(16), nullable=False),
        Column("examine_id", String(64), nullable=False, default=""),
        Column("row_stamp", String(128), nullable=False, default=""),
        Column("state", String(12), nullable=False),
        Column("generation", Integer, nullable=False, default=0),
        Column("attempts", Integer, nullable=False, default=0),
        Column("next_at", DateTime, nullable=False),
        Column("lease_until", DateTime),
        Column("owner", String(64), nullable=False, default=""),
        Column("changed", Integer, nullable=False, default=0),
        Column("images_done", Integer, nullable=False, default=0),
        Column("reports", String(12), nullable=False, default=""),
        Column("report_attempts", Integer, nullable=False, default=0),
        Column("files", Integer, nullable=False, default=0),
        Column("confirmed", Integer, nullable=False, default=0),
        Column("bytes", Integer, nullable=False, default=0),
        Column("last_job", Integer),
        Column("error", Text, nullable=False, default=""),
        Column("created", DateTime, nullable=False),
        Column("updated", DateTime, nullable=False),
    )


def test_an_existing_journal_gets_the_takeovers_column(
    journal: Journal, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = _old_push_queue(MetaData())
    old.create(journal.engine)
    running = {
        "study_uid": "1.2.3.4",
        "destination": "CLOUD",
        "state": RUNNING,
        "attempts": 1,
        "next_at": START,
        "lease_until": START + dt.timedelta(seconds=LEASE),
        "owner": "old-node",
        "created": START,
        "updated": START,
    }
    with journal.engine.begin() as conn:  # an item an old-version node was running when it died
        conn.execute(insert(old), [running])
    q = PushQueue(journal.engine, "new-node")  # start of the new version: the column is added
    q.now = clock
    columns = {c["name"]: c for c in sa_inspect(journal.engine).get_columns("push_queue")}
    assert "takeovers" in columns and not columns["takeovers"]["nullable"]
    item_id = int(_row(q, 1)["id"])
    assert _row(q, item_id)["takeovers"] == 0
    # a node of the previous version, still running beside it, inserts without naming the column
    with journal.engine.begin() as conn:
        conn.execute(insert(old), [{**running, "study_uid": "1.2.3.5", "state": QUEUED, "lease_until": None}])
    assert {i["study_uid"]: i["takeovers"] for i in q.items()} == {"1.2.3.4": 0, "1.2.3.5": 0}
    clock.advance(LEASE + 1)
    taken = q.claim(LEASE)
    assert taken is not None and (taken.id, taken.takeovers) == (item_id, 1)
    assert migrate(journal.engine) == []  # the next start: nothing to add
    # two nodes starting at once: the one whose ALTER TABLE finds the column there goes on
    real = queue_module._columns
    calls: list[int] = []

    def stale(conn: Any, table: str) -> set[str]:
        calls.append(1)
        return real(conn, table) - {"takeovers"} if len(calls) == 1 else real(conn, table)

    monkeypatch.setattr(queue_module, "_columns", stale)
    assert migrate(journal.engine) == [] and len(calls) == 2
    with journal.engine.connect() as conn:
        assert conn.execute(select(push_queue.c.takeovers).where(push_queue.c.id == item_id)).scalar() == 1


# --- wiring: [push] max_takeovers reaches the workers; push status / push retry -----------------


def test_serve_workers_use_max_takeovers_from_the_config(tmp_path: Path, clock: Clock) -> None:
    config = parse_config(
        base_config_dict(
            tmp_path,
            "sqlite:///v.db",
            peers=[{"ae_title": "CLOUD", "host": "127.0.0.1", "port": 1}],
            push={"enabled": True, "destinations": ["CLOUD"], "poll_interval": 0.1, "max_takeovers": 0},
        ),
        str(tmp_path / "proxy.toml"),
    )
    assert config.push.max_takeovers == 0
    journal = Journal(f"sqlite:///{tmp_path / 'journal.db'}", "test")
    try:
        service = PushService(config, None, journal, None)
        service.queue.now = clock
        dead = PushQueue(journal.engine, "dead-node")
        dead.now = clock
        item_id = _enqueue(dead, "1.2.3.6")
        assert dead.claim(LEASE) is not None
        clock.advance(LEASE + 1)
        real_claim = service.queue.claim

        def one_claim(*args: Any) -> Any:
            service._stop.set()  # one turn of the worker loop
            return real_claim(*args)

        service.queue.claim = one_claim  # type: ignore[method-assign]
        service._work_loop()
        row = _row(dead, item_id)
        assert (row["state"], row["takeovers"]) == (FAILED, 1)  # the default (3) would have run it
    finally:
        journal.close()


class _Ticks:
    """Stands in for the service's stop event in ``_lease_loop``: records each wait's timeout and
    says "stopped" after ``turns`` waits (the loop runs on the test's thread, no clock)."""

    def __init__(self, turns: int) -> None:
        self.turns = turns
        self.waits: list[float] = []

    def wait(self, timeout: float) -> bool:
        self.waits.append(timeout)
        return len(self.waits) > self.turns


def test_leases_are_renewed_every_third_of_the_lease_and_a_lost_one_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The lease thread: every ``lease / 3`` s it renews this node's running items (nothing to do
    when none run); fewer renewed than asked is a takeover, logged; a journal error is logged and
    the next turn tries again. Bug 2 of issue 24 (``lease × 3``) took items over mid-delivery."""
    config = parse_config(
        base_config_dict(
            tmp_path,
            "sqlite:///v.db",
            peers=[{"ae_title": "CLOUD", "host": "127.0.0.1", "port": 1}],
            push={"enabled": True, "destinations": ["CLOUD"], "lease": 90},
        ),
        str(tmp_path / "proxy.toml"),
    )
    journal = Journal(f"sqlite:///{tmp_path / 'journal.db'}", "test")
    try:
        service = PushService(config, None, journal, None)
        renewed: list[tuple[list[int], float]] = []
        answers: list[int | Exception] = [
            2,
            1,
            OperationalError("UPDATE push_queue", {}, Exception("gone")),
            OperationalError("UPDATE push_queue", {}, Exception("gone " + "x" * 300 + "\nsecond line")),
            2,
        ]

        def renew(ids: list[int], lease: float) -> int:
            renewed.append((sorted(ids), lease))
            answer = answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer

        service.queue.renew = renew  # type: ignore[method-assign]
        ticks = _Ticks(5)
        service._stop = ticks  # type: ignore[assignment]
        service._lease_loop()  # nothing running: no renewal, no line
        assert ticks.waits == [30.0] * 6 and renewed == [] and caplog.records == []
        service._running = {4, 7}
        ticks.waits.clear()
        ticks.turns = 5
        with caplog.at_level(logging.WARNING, logger="dicomproxy.push"):
            service._lease_loop()
        assert ticks.waits == [30.0] * 6
        assert renewed == [([4, 7], 90.0)] * 5
        assert [r.getMessage() for r in caplog.records] == [
            "push: a lease was lost (another node took an item over)",
            "push: lease renewal failed: (builtins.Exception) gone",
            "push: lease renewal failed: (builtins.Exception) gone " + "x" * 174,  # its first line's 200
        ]
    finally:
        journal.close()


def test_push_status_shows_the_abandoned_item_and_push_retry_resets_it(tmp_path: Path, clock: Clock) -> None:
    toml = push_cli_toml(tmp_path, "max_takeovers = 1")
    journal = Journal.for_config("", tmp_path / "var")
    try:
        q = PushQueue(journal.engine, "node")
        q.now = clock
        item_id = _enqueue(q, "1.2.3.7")
        for _ in range(3):  # the first run, one takeover, then the claim that gives it up
            q.claim(LEASE, max_takeovers=1)
            clock.advance(LEASE + 1)
        assert _row(q, item_id)["state"] == FAILED
        run = CliRunner().invoke
        out = run(cli, ["push", "-c", str(toml), "status"])
        assert out.exit_code == 0, out.output
        line = next(x for x in out.output.splitlines() if x.startswith("CLOUD"))
        assert line.split()[1:8] == [
            "0",
            "0",
            "0",
            "0",
            "0",
            "1",
            "0",
        ]  # queued running waiting committing done failed dropped
        assert "abandoned by 2 nodes/leases" in out.output
        out = run(cli, ["push", "-c", str(toml), "retry", str(item_id)])
        assert out.exit_code == 0, out.output
        row = _row(q, item_id)
        assert (row["state"], row["takeovers"], row["error"]) == (QUEUED, 0, "")
    finally:
        journal.close()


def test_sqlite_two_workers_that_both_saw_an_item_claim_it_once(tmp_path: Path) -> None:
    """SQLite has no row locks (SKIP LOCKED is a no-op there): two workers (an engine each, like
    two processes) both select the same due item; the claim's UPDATE, which re-checks that the
    item is still claimable, lets only one of them have it. A barrier holds both workers between
    their SELECT and their UPDATE, so the race happens every time."""
    from sqlalchemy import create_engine, event

    url = f"sqlite:///{tmp_path / 'journal.db'}"
    Journal(url, "test").engine.dispose()  # the tables
    both_selected = threading.Barrier(2, timeout=10)
    engines = [create_engine(url) for _ in range(2)]
    for engine in engines:

        @event.listens_for(engine, "before_cursor_execute")
        def hold(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            if statement.lstrip().upper().startswith("UPDATE PUSH_QUEUE") and "owner" in statement:
                both_selected.wait()

    workers = [PushQueue(engine, f"node-{i}") for i, engine in enumerate(engines)]
    item_id = _enqueue(workers[0], "1.2.3.1")
    got: list[Any] = [None, None]

    def claim(i: int) -> None:
        got[i] = workers[i].claim(LEASE)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    try:
        claimed = [item for item in got if item is not None]
        assert len(claimed) == 1, f"one item claimed by {len(claimed)} workers: {got}"
        row = _row(workers[0], item_id)
        assert (row["state"], row["attempts"], row["owner"]) == (RUNNING, 1, f"node-{got.index(claimed[0])}")
    finally:
        for engine in engines:
            engine.dispose()


def test_sqlite_workers_claiming_together_never_share_an_item(tmp_path: Path) -> None:
    """Four workers (an engine each) empty a queue of 40 items at once: every item is claimed,
    none twice."""
    from sqlalchemy import create_engine

    url = f"sqlite:///{tmp_path / 'journal.db'}"
    Journal(url, "test").engine.dispose()
    engines = [create_engine(url, connect_args={"timeout": 30}) for _ in range(4)]
    workers = [PushQueue(engine, f"node-{i}") for i, engine in enumerate(engines)]
    with workers[0].engine.begin() as conn:
        workers[0].enqueue(conn, [Entry(f"1.2.3.{i}", "CLOUD", f"EX-{i}", "1") for i in range(40)])
    start = threading.Barrier(4, timeout=10)
    claims: list[list[int]] = [[] for _ in workers]

    def run(i: int) -> None:
        start.wait()
        while True:  # None: the queue is empty, or another worker was first (then try again)
            item = workers[i].claim(LEASE)
            if item is not None:
                claims[i].append(item.id)
            elif not workers[i].items(state=QUEUED, limit=1):
                return

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        every = sorted(i for c in claims for i in c)
        assert len(every) == len(set(every)), f"items claimed twice: {every}"
        assert len(every) == 40
    finally:
        for engine in engines:
            engine.dispose()
