"""RowTimestamp of either kind on real servers: SQL Server rowversion (emulated: an 8-byte binary
column the server fills, and ``min_active_rowversion()``) and a date-time, on SQLite,
PostgreSQL and MariaDB. Through a running proxy and a real C-FIND: a Study UID found, a row
inserted after start found, a row whose UID changes found, a late-committing transaction not
lost, and a restart going on from the stored high-water mark. First, the stamp's own rules one by
one (:mod:`dicomproxy.view.stamp`: kinds, marks, the incremental read, the guard per database)."""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, create_engine, func, select, text
from sqlalchemy.dialects import postgresql as postgresql_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Engine
from sqlalchemy.engine.default import CacheStats

from dicomproxy.checks import study_lookup_checks
from dicomproxy.config import Config
from dicomproxy.server import Server
from dicomproxy.view.check import check_view, format_report
from dicomproxy.view.repository import ExamView
from dicomproxy.view.stamp import (
    GUARD_FUNCTION,
    Mark,
    RowStamp,
    StampKind,
    StampPolicy,
    detect_kind,
    guard_for,
    kind_of,
    later,
)
from dicomproxy.view.uidindex import STATE_TABLE
from testkit.viewdb import create_view_table, drop_view_table, insert_rows, update_rows, writer
from tests.conftest import FIND_PEERS, MARIADB_URL, PG_URL, ConfigFactory, need_server
from tests.view_data import UID, FindClient, _row, view_rows

KINDS = ("datetime", "rowversion")
DBS = ("sqlite", "postgresql", "mariadb")
BASE = dt.datetime(2031, 5, 1, 9, 0, 0)


@dataclass(frozen=True)
class StampedView:
    db: str
    kind: str
    url: str
    engine: Engine
    name: str

    def row(self, examine_id: str, uid: str, stamp: dt.datetime, **kw: Any) -> dict[str, Any]:
        """A visible row; ``stamp`` is its RowTimestamp on date-time views (the server fills rowversion)."""
        return _row(examine_id, "P0100", "钱七", uid, RowTimestamp=stamp, **kw)


# --- the stamp's own rules, one by one (unit: no view; SQLite in memory, PostgreSQL for the guard) --
# First in the file: they take a second, and a broken stamp stops the file early (mutation runs).


def test_kind_of_each_driver_value() -> None:
    assert kind_of(None) is StampKind.EMPTY
    for raw in (b"\x00" * 8, bytearray(b"\x01"), memoryview(b"\x02")):
        assert kind_of(raw) is StampKind.ROWVERSION
    assert kind_of(dt.datetime(2031, 5, 1, 9)) is StampKind.DATETIME
    assert kind_of(dt.date(2031, 5, 1)) is StampKind.DATETIME
    assert kind_of(7) is StampKind.NUMBER and kind_of(Decimal(7)) is StampKind.NUMBER
    assert kind_of(True) is StampKind.TEXT  # a flag is no counter
    assert kind_of("2031-05-01") is StampKind.TEXT


@pytest.mark.parametrize(
    ("mark", "written"),
    [
        (Mark(StampKind.ROWVERSION, b"\x00\x00\x00\x00\x00\x00\x07\xd1"), "rowversion:00000000000007d1"),
        (
            Mark(StampKind.DATETIME, dt.datetime(2031, 5, 1, 9, 0, 0, 5)),
            "datetime:2031-05-01T09:00:00.000005",
        ),
        (Mark(StampKind.NUMBER, 2001), "number:2001"),
        (Mark(StampKind.TEXT, "a:b"), "text:a:b"),
    ],
)
def test_mark_text_survives_restart(mark: Mark, written: str) -> None:
    assert mark.encode() == written
    assert Mark.decode(written) == mark


def test_mark_of_a_date_is_its_midnight_and_unreadable_marks_are_none() -> None:
    assert Mark(StampKind.DATETIME, dt.date(2031, 5, 1)).encode() == "datetime:2031-05-01T00:00:00"
    assert Mark(StampKind.ROWVERSION, bytearray(b"\x01\x02")).encode() == "rowversion:0102"
    for written in ("", "number", "nokind:1", "number:x", "rowversion:zz", "datetime:soon", "empty:"):
        assert Mark.decode(written) is None, written


def test_later_is_the_larger_stamp() -> None:
    assert later(None, None) is None
    assert later(None, 3) == 3 and later(3, None) == 3
    assert later(3, 5) == 5 and later(5, 3) == 5
    assert later(b"\x00\x02", b"\x00\x01") == b"\x00\x02"


def test_settled_only_below_the_guard_and_of_the_same_kind() -> None:
    rv = StampPolicy(StampKind.ROWVERSION, func.min_active_rowversion())
    assert rv.settled(b"\x00\x01", b"\x00\x02")
    assert not rv.settled(b"\x00\x02", b"\x00\x02")  # the guard itself may still be open
    assert not rv.settled(b"\x00\x03", b"\x00\x02")
    assert not rv.settled(None, b"\x00\x02")
    assert not rv.settled(dt.datetime(2031, 5, 1), b"\x00\x02")  # another kind (a mixed view)
    free = StampPolicy(StampKind.NUMBER)
    assert free.settled(10**9, None) and not free.settled(None, None) and not free.settled("x", None)


def test_describe_each_kind() -> None:
    minute = dt.timedelta(seconds=90)
    assert StampPolicy(StampKind.DATETIME, None, minute).describe() == (
        "RowTimestamp: date-time; re-reads 90 s below the high-water mark"
    )
    assert StampPolicy(StampKind.ROWVERSION, func.MIN_ACTIVE_ROWVERSION()).describe() == (
        "RowTimestamp: binary change counter (SQL Server rowversion/timestamp); "
        "reads below MIN_ACTIVE_ROWVERSION() (late commits never skipped)"
    )
    assert StampPolicy(StampKind.ROWVERSION).describe() == (
        "RowTimestamp: binary change counter (SQL Server rowversion/timestamp); no late-commit guard"
    )
    assert StampPolicy(StampKind.NUMBER).describe() == "RowTimestamp: integer counter; no late-commit guard"
    assert StampPolicy(StampKind.TEXT).describe() == "RowTimestamp: text, ordered as text"
    assert StampPolicy(StampKind.EMPTY).describe() == "RowTimestamp: no row has a RowTimestamp yet"


def _stamps_table() -> tuple[Engine, Table]:
    engine = create_engine("sqlite://")
    table = Table("v", MetaData(), Column("n", Integer), Column("ts", RowStamp()))
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE v (n INTEGER, ts)"))
    return engine, table


def test_since_reads_above_the_mark_or_an_overlap_below_it() -> None:
    engine, table = _stamps_table()
    mark = BASE
    with engine.begin() as conn:
        for n, seconds in enumerate((-61, -60, -59, 0, 1)):
            conn.execute(table.insert().values(n=n, ts=mark + dt.timedelta(seconds=seconds)))
    policy = StampPolicy(StampKind.DATETIME, None, dt.timedelta(seconds=60))
    with engine.connect() as conn:
        got = [
            r.n
            for r in conn.execute(select(table.c.n).where(policy.since(table.c.ts, Mark(policy.kind, mark))))
        ]
    assert sorted(got) == [1, 2, 3, 4]  # from mark − overlap, inclusive
    numbers = StampPolicy(StampKind.NUMBER)
    with engine.begin() as conn:
        conn.execute(table.delete())
        for n in (4, 5, 6):
            conn.execute(table.insert().values(n=n, ts=n))
        got = [
            r.n
            for r in conn.execute(select(table.c.n).where(numbers.since(table.c.ts, Mark(numbers.kind, 5))))
        ]
    assert got == [6]  # strictly above the mark
    engine.dispose()


def test_row_stamp_normalises_driver_values_and_binds_sqlite_date_times() -> None:
    sqlite, pg = sqlite_dialect.dialect(), postgresql_dialect.dialect()
    stamp = RowStamp()
    when = dt.datetime(2031, 5, 1, 9, 0, 0, 5)
    assert stamp.process_bind_param(when, sqlite) == "2031-05-01 09:00:00.000005"
    assert stamp.process_bind_param(when, pg) is when
    assert stamp.process_bind_param(b"\x01", sqlite) == b"\x01"
    assert stamp.process_result_value(memoryview(b"\x00\x07"), pg) == b"\x00\x07"
    assert type(stamp.process_result_value(bytearray(b"\x07"), pg)) is bytes
    got = stamp.process_result_value(Decimal("2001"), pg)
    assert got == 2001 and type(got) is int  # Oracle NUMBER
    assert stamp.process_result_value(Decimal("20.5"), pg) == Decimal("20.5")
    assert stamp.process_result_value("2031-05-01 09:00:00.000005", sqlite) == when
    assert stamp.process_result_value("not a date", sqlite) == "not a date"
    assert (
        stamp.process_result_value("2031-05-01 09:00:00", pg) == "2031-05-01 09:00:00"
    )  # a real text column
    assert stamp.process_result_value(None, sqlite) is None


def test_guard_value_is_read_from_the_database_or_none() -> None:
    engine = create_engine("sqlite://")
    with engine.connect() as conn:
        assert StampPolicy(StampKind.ROWVERSION).guard_value(conn) is None
        assert StampPolicy(StampKind.ROWVERSION, func.abs(-7)).guard_value(conn) == 7
    engine.dispose()


def test_detect_kind_skips_rows_without_a_stamp() -> None:
    engine, table = _stamps_table()
    with engine.begin() as conn:
        assert detect_kind(conn, table.c.ts) is StampKind.EMPTY
        conn.execute(table.insert().values(n=1, ts=None))
        assert detect_kind(conn, table.c.ts) is StampKind.EMPTY
        conn.execute(table.insert().values(n=2, ts=5))
        assert detect_kind(conn, table.c.ts) is StampKind.NUMBER
    engine.dispose()


def test_guard_for_each_database_and_kind(caplog: pytest.LogCaptureFixture) -> None:
    """The guard per dialect and kind, and the WARNING where a late commit may be missed: SQL
    Server's built-in; none needed on SQLite; PostgreSQL's ``min_active_rowversion()`` when the
    database defines it (the test database does: testkit installs it), else a WARNING; an integer
    counter never has one (a WARNING except on SQLite); a date-time needs none (its overlap)."""
    need_server("postgresql", PG_URL)
    sqlite = create_engine("sqlite://")
    pg = create_engine(PG_URL)
    hidden = create_engine(PG_URL, connect_args={"options": "-csearch_path=pg_catalog"})  # no function
    mssql = cast(Engine, SimpleNamespace(dialect=SimpleNamespace(name="mssql")))  # never connected
    name = f"v_stamp_{uuid.uuid4().hex[:8]}"
    create_view_table(pg, name, "rowversion")  # installs min_active_rowversion()
    try:
        with caplog.at_level(logging.WARNING, logger="dicomproxy.view.stamp"):
            guard = guard_for(mssql, StampKind.ROWVERSION)
            assert guard is not None and guard.name == "MIN_ACTIVE_ROWVERSION"
            assert guard_for(sqlite, StampKind.ROWVERSION) is None
            assert guard_for(sqlite, StampKind.NUMBER) is None
            assert guard_for(pg, StampKind.DATETIME) is None and guard_for(mssql, StampKind.TEXT) is None
            assert caplog.records == []
            guard = guard_for(pg, StampKind.ROWVERSION)
            assert guard is not None and guard.name == GUARD_FUNCTION
            assert caplog.records == []
            assert guard_for(hidden, StampKind.ROWVERSION) is None
            assert [r.getMessage() for r in caplog.records] == [
                "RowTimestamp is a binary counter but postgresql has no min_active_rowversion(): a "
                "transaction that commits after a later one may be missed until the UID side table is rebuilt"
            ]
            caplog.clear()
            assert guard_for(mssql, StampKind.NUMBER) is None
            assert len(caplog.records) == 1 and "integer counter: mssql gives no late-commit guard" in (
                caplog.records[0].getMessage()
            )
    finally:
        drop_view_table(pg, name)
        for engine in (sqlite, pg, hidden):
            engine.dispose()


def test_reads_with_a_row_stamp_are_compiled_once() -> None:
    """RowStamp is safe for SQLAlchemy's statement cache: a pass of the UID side table or the push
    watcher reuses the compiled read instead of compiling it again every time."""
    engine, table = _stamps_table()
    with engine.connect() as conn:
        stmt = select(table.c.n).where(table.c.ts > 5)
        hits = [conn.execute(stmt).context.cache_hit for _ in range(2)]
    assert hits[1] == CacheStats.CACHE_HIT
    engine.dispose()


@pytest.fixture(params=[(db, kind) for db in DBS for kind in KINDS], ids=lambda p: f"{p[0]}-{p[1]}")
def stamped(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StampedView]:
    db, kind = request.param
    if db == "sqlite":
        url = f"sqlite:///{tmp_path / 'view.db'}"
    else:
        url = PG_URL if db == "postgresql" else MARIADB_URL
        need_server(db, url)
    engine = create_engine(url)
    name = f"v_stamp_{uuid.uuid4().hex[:8]}"
    create_view_table(engine, name, kind)  # type: ignore[arg-type]
    insert_rows(engine, view_rows(), name)
    try:
        yield StampedView(db, kind, url, engine, name)
    finally:
        drop_view_table(engine, name)
        engine.dispose()


@pytest.fixture
def stamped_config(stamped: StampedView, make_config: ConfigFactory) -> Config:
    return make_config(view={"url": stamped.url, "name": stamped.name.upper()}, peers=FIND_PEERS)


def _state(view: ExamView) -> dict[str, str]:
    assert view.uid_index is not None
    with view.uid_index.engine.connect() as conn:
        return {r.name: r.value for r in conn.execute(select(STATE_TABLE))}


def test_kind_is_detected_with_its_guard(stamped: StampedView, stamped_config: Config) -> None:
    view = ExamView(stamped_config)
    try:
        policy = view.stamp_policy()
        assert policy.kind is StampKind(stamped.kind)
        # rowversion: the late-commit guard where the server can have several writers
        assert (policy.guard is not None) == (stamped.kind == "rowversion" and stamped.db != "sqlite")
        assert view.resolve_study_uids(study_uids=[UID["m2"]]) == [UID["m2"]]
        mark = Mark.decode(_state(view)["high_water"])
        assert mark is not None and mark.kind is policy.kind
        if stamped.kind == "rowversion":
            assert isinstance(mark.value, bytes) and len(mark.value) == 8
    finally:
        view.close()


@pytest.mark.parametrize("db", DBS)
def test_integer_counter_has_no_guard_and_says_so(
    db: str, tmp_path: Path, make_config: ConfigFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """An integer RowTimestamp (a counter the view's writer fills): read like a rowversion, above
    the mark, with no late-commit guard — and one WARNING says so where several writers can
    commit out of order (not on SQLite, which has one)."""
    if db == "sqlite":
        url = f"sqlite:///{tmp_path / 'view.db'}"
    else:
        url = PG_URL if db == "postgresql" else MARIADB_URL
        need_server(db, url)
    engine = create_engine(url)
    name = f"v_stamp_{uuid.uuid4().hex[:8]}"
    create_view_table(engine, name, "number")
    rows = [{**row, "RowTimestamp": None} for row in view_rows()]
    insert_rows(engine, rows, name)
    with engine.begin() as conn:  # the counter, as the view's writer would fill it
        for n, row in enumerate(rows, start=1):
            conn.execute(
                text(f"UPDATE {name} SET rowtimestamp = :n WHERE examineid = :e"),
                {"n": n, "e": row["ExamineID"]},
            )
    try:
        with caplog.at_level(logging.WARNING, logger="dicomproxy.view.stamp"):
            view = ExamView(make_config(view={"url": url, "name": name.upper()}))
            try:
                policy = view.stamp_policy()
                assert policy.kind is StampKind.NUMBER and policy.guard is None
                assert policy.describe() == "RowTimestamp: integer counter; no late-commit guard"
                assert view.resolve_study_uids(study_uids=[UID["m2"]]) == [UID["m2"]]
                assert Mark.decode(_state(view)["high_water"]) == Mark(StampKind.NUMBER, len(rows))
            finally:
                view.close()
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        if db == "sqlite":
            assert warnings == []
        else:
            assert len(warnings) == 1, warnings
            assert "integer counter" in warnings[0] and "no late-commit guard" in warnings[0]
    finally:
        drop_view_table(engine, name)
        engine.dispose()


def test_find_new_and_changed_rows_and_restart(
    stamped: StampedView, stamped_config: Config, run_proxy: Callable[[Config], Server]
) -> None:
    server = run_proxy(stamped_config)
    with FindClient(server.port) as client:
        assert client.uids(StudyInstanceUID=UID["m3"]) == {UID["m3"]}
        assert client.uids(StudyInstanceUID=UID["oh"]) == set()  # other hospital: never

        # inserted after start: the miss forces one incremental sync
        insert_rows(stamped.engine, [stamped.row("ENEW1", "1.2.840.777.1", BASE)], stamped.name)
        assert client.uids(StudyInstanceUID="1.2.840.777.1") == {"1.2.840.777.1"}

        # the RIS re-keys the study; a date-time view writes a new stamp, rowversion bumps itself
        update_rows(
            stamped.engine,
            stamped.name,
            "ENEW1",
            {"StudyInstanceUID": "1.2.840.777.2", "RowTimestamp": BASE + dt.timedelta(minutes=5)},
        )
        assert client.uids(StudyInstanceUID="1.2.840.777.2") == {"1.2.840.777.2"}
        assert client.uids(StudyInstanceUID="1.2.840.777.1") == set()
    server.stop(drain_timeout=2.0)

    # a restart goes on from the stored mark (incremental, not a rebuild)
    view = ExamView(stamped_config)
    try:
        assert view.uid_index is not None and view.uid_index.is_built()
        insert_rows(
            stamped.engine,
            [stamped.row("ENEW2", "1.2.840.777.3", BASE + dt.timedelta(minutes=10))],
            stamped.name,
        )
        assert view.uid_index.sync(force=True) < len(view_rows())  # read only what changed
        assert view.resolve_study_uids(study_uids=["1.2.840.777.3"]) == ["1.2.840.777.3"]
    finally:
        view.close()


def test_late_commit_is_not_lost(
    stamped: StampedView, stamped_config: Config, run_proxy: Callable[[Config], Server]
) -> None:
    """A transaction that took its stamp first but commits after a later one was read."""
    if stamped.db == "sqlite" and stamped.kind == "rowversion":
        pytest.skip("SQLite has one writer: stamps follow commit order, a late commit cannot happen")
    late = stamped.row("ELATE", "1.2.840.778.1", BASE + dt.timedelta(hours=1))
    early = stamped.row("EEARLY", "1.2.840.778.2", BASE + dt.timedelta(hours=1, seconds=1))
    server = run_proxy(stamped_config)
    with FindClient(server.port) as client:
        assert client.uids(StudyInstanceUID=UID["m1"]) == {UID["m1"]}  # side table built
        if stamped.db == "sqlite":
            # one writer: a late commit looks like this from outside — a row whose date-time
            # stamp is below one already read appears afterwards
            insert_rows(stamped.engine, [early], stamped.name)
            assert client.uids(StudyInstanceUID="1.2.840.778.2") == {"1.2.840.778.2"}
            insert_rows(stamped.engine, [late], stamped.name)
        else:
            with writer(stamped.engine) as slow:
                insert_rows(stamped.engine, [late], stamped.name, conn=slow)  # stamp taken, not committed
                # committed while the slow transaction is open: found at once
                insert_rows(stamped.engine, [early], stamped.name)
                assert client.uids(StudyInstanceUID="1.2.840.778.2") == {"1.2.840.778.2"}
                assert client.uids(StudyInstanceUID="1.2.840.778.1") == set()  # not committed yet
        assert client.uids(StudyInstanceUID="1.2.840.778.1") == {"1.2.840.778.1"}
        assert client.uids(StudyInstanceUID="1.2.840.778.2") == {"1.2.840.778.2"}


@pytest.mark.parametrize(
    "stamped", [("postgresql", "rowversion"), ("mariadb", "rowversion")], indirect=True, ids=str
)
def test_rowversion_guard_holds_the_mark_below_open_transactions(
    stamped: StampedView, stamped_config: Config
) -> None:
    """The mark never passes a stamp an open transaction holds (rowversion, several writers)."""
    view = ExamView(stamped_config)
    assert view.uid_index is not None
    try:
        view.uid_index.sync(force=True)
        before = Mark.decode(_state(view)["high_water"])
        assert before is not None
        with writer(stamped.engine) as slow:
            insert_rows(
                stamped.engine, [stamped.row("EHOLD", "1.2.840.779.1", BASE)], stamped.name, conn=slow
            )
            insert_rows(stamped.engine, [stamped.row("EPASS", "1.2.840.779.2", BASE)], stamped.name)
            view.uid_index.sync(force=True)
            held = Mark.decode(_state(view)["high_water"])
            assert view.uid_index._lookup(["1.2.840.779.2"])  # read although above the guard
            assert held == before  # … but the mark stays below the open transaction
        view.uid_index.sync(force=True)
        after = Mark.decode(_state(view)["high_water"])
        assert after is not None and after.value > before.value
        assert view.uid_index._lookup(["1.2.840.779.1"])
    finally:
        view.close()


def test_check_view_and_check_config_name_the_kind(stamped: StampedView, stamped_config: Config) -> None:
    report = check_view(stamped_config)
    assert report.stamp_kind == stamped.kind
    assert next(r for r in report.rules if r.rule == "RowTimestamp:kind").count == 0
    assert "datetime:RowTimestamp" not in {r.rule for r in report.rules}  # a rowversion is no bad date
    text = format_report(report)
    assert f"INFO  RowTimestamp: {StampKind(stamped.kind).description}" in text
    results = {r.name: r for r in study_lookup_checks(stamped_config)}
    assert (
        results["view RowTimestamp"].ok
        and StampKind(stamped.kind).description in results["view RowTimestamp"].detail
    )
    lookup = results["study UID lookup"]
    assert lookup.ok and "Study UID of ExamineID EA0001 found via side table" in lookup.detail, lookup.detail


def test_check_view_flags_mixed_kinds(tmp_path: Path, make_config: ConfigFactory) -> None:
    """SQLite is untyped: a view mixing binary and date-time stamps is reported, not a crash."""
    url = f"sqlite:///{tmp_path / 'mixed.db'}"
    engine = create_engine(url)
    create_view_table(engine, "v_mixed", "datetime")
    insert_rows(engine, view_rows(), "v_mixed")
    with engine.begin() as conn:
        conn.execute(text("UPDATE v_mixed SET rowtimestamp = x'00000000000007d1' WHERE examineid = 'EA0002'"))
    engine.dispose()
    config = make_config(view={"url": url, "name": "V_MIXED"})
    report = check_view(config)
    mixed = next(r for r in report.rules if r.rule == "RowTimestamp:kind")
    assert report.stamp_kind == "datetime" and mixed.count == 1 and mixed.examples == ["EA0002"]
    view = ExamView(config)
    try:  # and the side table still serves lookups
        assert view.resolve_study_uids(study_uids=[UID["m1"]]) == [UID["m1"]]
    finally:
        view.close()


@pytest.mark.parametrize("failure", ["raises", "misses"])
def test_check_config_fails_when_the_lookup_does(
    failure: str, stamped_config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unit level (the real passes are above): a lookup that raises or misses fails the check."""

    def broken(self: ExamView, **_kw: Any) -> list[str]:
        if failure == "raises":
            raise TypeError("unsupported operand type(s) for -: 'bytes' and 'datetime.timedelta'")
        return []

    monkeypatch.setattr(ExamView, "resolve_study_uids", broken)
    results = {r.name: r for r in study_lookup_checks(stamped_config)}
    assert not results["study UID lookup"].ok
    assert ("unsupported operand" if failure == "raises" else "NOT found") in results[
        "study UID lookup"
    ].detail
