"""Group commit of the audit trail (issue 29): the records of one batch of the events bus are
written in one transaction with one insert statement, chained exactly as one by one; across a hash
switch; a bad record in a batch costs only itself (no patient data in the log line), the dispatcher
lives on; writers in two processes and threads of one still give one valid chain — on SQLite,
PostgreSQL and MariaDB. And the bus's side: ``end_batch`` after a drained batch and before
``flush`` returns, also for a subscriber removed mid-batch; a failing ``end_batch`` is logged."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.engine import Engine

from dicomproxy import events
from dicomproxy.audit.hashing import SHA256, SM3
from dicomproxy.audit.trail import Action, AuditRecord, AuditSubscriber, AuditTrail
from tests.test_audit import audit_engine, audit_mariadb, audit_pg  # noqa: F401  (SQLite, PostgreSQL, MariaDB)

PEER = events.Peer("jobserver", "127.0.0.1", 40000)


def _find(i: int, keys: dict[Any, str] | None = None) -> events.FindDone:
    return events.FindDone(
        PEER,
        "STUDY",
        "STUDY",
        "view",
        keys if keys is not None else {"PatientID": f"P{i}", "PatientName": "张三"},
        matches=i,
        status=0,
        seconds=0.001,
    )


class Gate:
    """The first subscriber: holds the dispatcher on the ``gate`` event until opened, so that what
    is published meanwhile is drained as one batch."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()

    def __call__(self, event: events.Event) -> None:
        if isinstance(event, events.Failure) and event.where == "gate":
            self.entered.set()
            self.opened.wait(10)


class Statements:
    """What the engine sent: commits and ``INSERT INTO audit_log`` statements (SQLAlchemy's events)."""

    def __init__(self, engine: Engine) -> None:
        self.commits = 0
        self.inserts = 0
        event.listen(engine, "commit", self._commit)
        event.listen(engine, "before_cursor_execute", self._execute)

    def _commit(self, conn: Any) -> None:
        self.commits += 1

    def _execute(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO AUDIT_LOG"):
            self.inserts += 1


@pytest.fixture
def bus() -> Iterator[events.Bus]:
    yield events.Bus()  # a bus of its own: the process-wide one carries other tests' servers


def _one_batch(bus: events.Bus, items: list[events.Event]) -> None:
    """Publish ``items`` while the dispatcher is held: one drained batch; then flush."""
    gate = Gate()
    bus.subscribe(gate)
    bus.publish(events.Failure(where="gate", message=""))
    assert gate.entered.wait(10)
    for item in items:
        bus.publish(item)
    gate.opened.set()
    assert bus.flush()
    bus.unsubscribe(gate)


def test_a_batch_of_events_is_one_transaction_in_order(audit_engine: Engine, bus: events.Bus) -> None:  # noqa: F811
    trail = AuditTrail(audit_engine)
    trail.append(AuditRecord(Action.START, "success"))  # a chain to continue (the head exists)
    bus.subscribe(AuditSubscriber(trail))
    sent = Statements(audit_engine)
    _one_batch(bus, [_find(i) for i in range(50)])
    # flushed means written: committed, readable on another connection
    assert (sent.commits, sent.inserts) == (1, 1)
    rows = trail.rows()
    assert [r["seq"] for r in rows] == list(range(1, 52))
    assert [json.loads(r["detail"])["matches"] for r in rows[1:]] == list(range(50))
    assert [r["patient_ids"] for r in rows[1:]] == [f" P{i} " for i in range(50)]
    result = trail.verify()
    assert (result.ok, result.rows, result.last_seq) == (True, 51, 51), result


def test_a_batch_spanning_a_hash_switch(audit_engine: Engine, bus: events.Bus) -> None:  # noqa: F811
    old = AuditTrail(audit_engine)
    old.append_many([AuditRecord(Action.FIND, "success", detail={"n": i}) for i in range(2)])
    new = AuditTrail(audit_engine, SM3)
    bus.subscribe(AuditSubscriber(new))
    sent = Statements(audit_engine)
    _one_batch(bus, [_find(i) for i in range(5)])
    assert (sent.commits, sent.inserts) == (1, 1)
    rows = new.rows()
    assert [(r["action"], r["hash_alg"]) for r in rows] == [
        *[(Action.FIND, SHA256)] * 2,
        (Action.HASH_SWITCH, SM3),
        *[(Action.FIND, SM3)] * 5,
    ]
    assert json.loads(rows[2]["detail"]) == {"from": SHA256, "to": SM3}
    assert new.verify().ok and new.verify().rows == 8


def test_a_bad_record_costs_only_itself(
    audit_engine: Engine,  # noqa: F811
    bus: events.Bus,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Two bad records in a batch of seven: one that cannot be serialised (a key that is no string),
    one the database refuses (NOT NULL ``action``). The batch fails, is written again record by
    record: the five good ones in order, one ERROR line per bad one without patient data (the
    database's DETAIL and SQLAlchemy's parameters carry the row), and the dispatcher lives on."""
    trail = AuditTrail(audit_engine)
    bus.subscribe(AuditSubscriber(trail))
    bad_job = [
        events.JobStarted(7, None, PEER, "DEST", keys={"PatientID": "SECRET2"}),  # type: ignore[arg-type]
        events.JobFinished(7, None, "success", 0, 1, 0, 0, 10, 0.1),  # type: ignore[arg-type]
    ]
    batch = [
        _find(0),
        _find(1),
        _find(2, {("PatientID",): "SECRET1"}),  # json: keys must be str
        _find(3),
        *bad_job,
        _find(4),
        _find(5),
    ]
    with caplog.at_level(logging.WARNING, logger="dicomproxy"):
        _one_batch(bus, batch)
    rows = trail.rows()
    assert [json.loads(r["detail"])["matches"] for r in rows] == [0, 1, 3, 4, 5]
    assert trail.verify().ok
    errors = [r for r in caplog.records if r.name == "dicomproxy.audit" and r.levelno == logging.ERROR]
    assert len(errors) == 2, caplog.text
    assert "TypeError" in errors[0].getMessage() and "find" in errors[0].getMessage()
    assert "None" in errors[1].getMessage()
    assert "SECRET" not in caplog.text
    assert not [r for r in caplog.records if r.name == "dicomproxy.events"]
    # the dispatcher is alive and the trail goes on
    bus.publish(_find(6))
    assert bus.flush()
    assert trail.verify().rows == 6


WRITER = """
import sys
from sqlalchemy import create_engine
from dicomproxy.audit.trail import AuditRecord, AuditTrail

trail = AuditTrail(create_engine(sys.argv[1]))
for b in range(int(sys.argv[2])):
    trail.append_many(
        [AuditRecord("find", "success", calling_ae=sys.argv[3], detail={"b": b, "i": i}) for i in range(10)]
    )
"""


def test_writers_in_two_processes_and_two_threads_give_one_chain(audit_engine: Engine) -> None:  # noqa: F811
    """Two other processes append batches of ten while two threads of this one append (one in
    batches, one row by row, each on its own engine: only the database serialises them). One
    chain, every row once, each writer's rows in its order, each batch's rows consecutive."""
    url = audit_engine.url.render_as_string(hide_password=False)
    AuditTrail(audit_engine)  # the tables, before the writers race to create them
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, url, "15", f"proc{n}"], stderr=subprocess.PIPE)
        for n in range(2)
    ]
    engines = [audit_engine, _other_engine(audit_engine)]
    failures: list[BaseException] = []

    def batches() -> None:
        try:
            trail = AuditTrail(engines[0])
            for b in range(15):
                trail.append_many(
                    [
                        AuditRecord("find", "success", calling_ae="batches", detail={"b": b, "i": i})
                        for i in range(10)
                    ]
                )
        except BaseException as exc:
            failures.append(exc)

    def single() -> None:
        try:
            trail = AuditTrail(engines[1])
            for b in range(40):
                trail.append(AuditRecord("find", "success", calling_ae="single", detail={"b": b, "i": 0}))
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=batches), threading.Thread(target=single)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
    engines[1].dispose()
    assert not failures, failures
    trail = AuditTrail(audit_engine)
    result = trail.verify()
    assert (result.ok, result.rows) == (True, 3 * 150 + 40), result
    by_writer: dict[str, list[tuple[int, int, int]]] = {}
    for r in trail.rows():
        d = json.loads(r["detail"])
        by_writer.setdefault(r["calling_ae"], []).append((d["b"], d["i"], r["seq"]))
    assert sorted(by_writer) == ["batches", "proc0", "proc1", "single"]
    for writer, seen in by_writer.items():
        assert [(b, i) for b, i, _ in seen] == sorted((b, i) for b, i, _ in seen), writer
        if writer != "single":  # a batch is one transaction: its rows are consecutive
            for b in range(15):
                seqs = [s for bb, _, s in seen if bb == b]
                assert seqs == list(range(seqs[0], seqs[0] + 10)), (writer, b)


def _lock_waits(engine: Engine) -> int:
    """Transactions waiting for a lock on this server (PostgreSQL: pg_locks; MariaDB: InnoDB)."""
    q = (
        "SELECT count(*) FROM pg_locks WHERE NOT granted"
        if engine.dialect.name == "postgresql"
        else "SELECT count(*) FROM information_schema.innodb_trx WHERE trx_state = 'LOCK WAIT'"
    )
    with engine.connect() as conn:
        return int(conn.execute(text(q)).scalar() or 0)


@pytest.mark.parametrize("audit_engine", ["postgresql", "mariadb"], indirect=True)
def test_two_first_writers_of_an_empty_trail_give_one_chain(audit_engine: Engine) -> None:  # noqa: F811
    """Neither finds the head row: the first creates it and has not committed when the second
    tries to create it too. The second waits, then chains after the first (was: a duplicate key
    error, the second writer's records lost)."""
    first, second = AuditTrail(audit_engine), AuditTrail(_other_engine(audit_engine))
    outcome: list[Any] = []
    with audit_engine.connect() as conn:
        tx = conn.begin()
        first.append_in(conn, AuditRecord(Action.FIND, "success", calling_ae="first"))

        def write() -> None:
            try:
                outcome.append(second.append(AuditRecord(Action.FIND, "success", calling_ae="second")))
            except Exception as exc:
                outcome.append(exc)

        writer = threading.Thread(target=write)
        writer.start()
        deadline = time.monotonic() + 10
        while not _lock_waits(audit_engine) and writer.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert writer.is_alive(), outcome  # it waits for the first writer's transaction
        tx.commit()
    writer.join(10)
    second.engine.dispose()
    assert outcome == [2]
    rows = first.rows()
    assert [(r["seq"], r["calling_ae"]) for r in rows] == [(1, "first"), (2, "second")]
    assert first.verify().ok


def _other_engine(engine: Engine) -> Engine:
    from sqlalchemy import create_engine

    return create_engine(engine.url)


# --- the bus --------------------------------------------------------------------------------------------


class Batching:
    """A batch subscriber that notes its events and its batch ends."""

    def __init__(self, fail: bool = False) -> None:
        self.log: list[str] = []
        self.fail = fail

    def __call__(self, event: events.Event) -> None:
        if isinstance(event, events.PushQueued):
            self.log.append(str(event.count))

    def end_batch(self) -> None:
        self.log.append("end")
        if self.fail:
            raise RuntimeError("end_batch failed")


def test_the_bus_ends_a_batch_when_drained_and_before_flush_returns(bus: events.Bus) -> None:
    sub = Batching()
    bus.subscribe(sub)
    _one_batch(bus, [events.PushQueued(i) for i in range(3)])
    assert sub.log == ["0", "1", "2", "end"]  # once, after the batch: before flush returned
    bus.publish(events.PushQueued(3))
    assert bus.flush()
    assert sub.log[4:] == ["3", "end"]
    assert bus.flush() and sub.log[6:] == []  # nothing handed over: no end_batch


def test_a_subscriber_removed_mid_batch_still_ends_it_and_a_failing_end_is_logged(
    bus: events.Bus, caplog: pytest.LogCaptureFixture
) -> None:
    sub, broken = Batching(), Batching(fail=True)
    bus.subscribe(broken)
    bus.subscribe(sub)
    gate = Gate()
    bus.subscribe(gate)
    bus.publish(events.PushQueued(1))
    bus.publish(events.Failure(where="gate", message=""))
    assert gate.entered.wait(10)
    with bus._lock:  # unsubscribe without its flush (that would wait for the gate)
        bus._subscribers = tuple(s for s in bus._subscribers if s is not sub)
    gate.opened.set()
    with caplog.at_level(logging.ERROR, logger="dicomproxy.events"):
        assert bus.flush()
    assert sub.log == ["1", "end"]
    assert broken.log == ["1", "end"]
    assert "failed at the end of a batch" in caplog.text
    bus.publish(events.PushQueued(2))  # the dispatcher lives on
    assert bus.flush() and broken.log[2:] == ["2", "end"]
