"""RowTimestamp of either kind on real servers: SQL Server rowversion (emulated: an 8-byte binary
column the server fills, and ``min_active_rowversion()``) and a date-time, on SQLite,
PostgreSQL and MariaDB. Through a running proxy and a real C-FIND: a Study UID found, a row
inserted after start found, a row whose UID changes found, a late-committing transaction not
lost, and a restart going on from the stored high-water mark."""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import Engine

from dicomproxy.checks import study_lookup_checks
from dicomproxy.config import Config
from dicomproxy.server import Server
from dicomproxy.view.check import check_view, format_report
from dicomproxy.view.repository import ExamView
from dicomproxy.view.stamp import Mark, StampKind
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
