"""The UID side table: built on first use, synced by RowTimestamp, a hint only (visibility
is always re-checked on the view's current row)."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from sqlalchemy import Table, create_engine, event, text, update
from sqlalchemy.engine import Engine

from dicomproxy.config import Config
from dicomproxy.server import Server
from dicomproxy.transport.findscu import run_find
from dicomproxy.transport.net import Remote
from dicomproxy.view import uidindex
from dicomproxy.view.model import exam_view_table
from dicomproxy.view.repository import ExamView
from dicomproxy.view.stamp import StampKind, StampPolicy
from dicomproxy.view.uidindex import UidIndex
from dicomproxy.view.uids import split_uid_cell
from testkit.viewdb import create_view_table, insert_rows, update_rows
from tests.conftest import ConfigFactory, ViewDB
from tests.view_data import CT, UID, _row, view_rows


def test_side_table_sync_and_recheck(view_db: ViewDB, view_config: Config) -> None:
    view = ExamView(view_config)
    assert view.uid_index is not None
    table = exam_view_table(view_db.name)
    try:
        assert view.resolve_study_uids(study_uids=[UID["m3"]]) == [UID["m3"]]  # full build on first use
        assert view.uid_index._lookup([UID["m1"]]) == {UID["m1"]: ["EMULTI"]}
        assert view.uid_index._lookup([UID["oh"]]) == {UID["oh"]: ["EOTHERHOSP"]}  # indexed, yet invisible
        assert view.resolve_study_uids(study_uids=[UID["oh"]]) == []

        # a new exam after the last sync: a miss forces one incremental sync
        later = dt.datetime(2030, 1, 1, 12, 0, 0)
        insert_rows(
            view_db.engine, [_row("ENEW", "P0009", "钱七", "1.2.840.99.1", RowTimestamp=later)], view_db.name
        )
        assert view.resolve_study_uids(study_uids=["1.2.840.99.1"]) == ["1.2.840.99.1"]

        # the RIS re-keys a study (new RowTimestamp): old UID gone, new UID found
        with view_db.engine.begin() as conn:
            conn.execute(
                update(table)
                .where(table.c.ExamineID == "ENEW")
                .values(StudyInstanceUID="1.2.840.99.2", RowTimestamp=later + dt.timedelta(minutes=1))
            )
        assert view.resolve_study_uids(study_uids=["1.2.840.99.2"]) == ["1.2.840.99.2"]
        assert view.uid_index._lookup(["1.2.840.99.1"]) == {}

        # made confidential without a new RowTimestamp: the side table still points at the row,
        # but visibility is checked on the current row → not found
        with view_db.engine.begin() as conn:
            conn.execute(update(table).where(table.c.ExamineID == "EA0001").values(Privacy=3))
        assert view.resolve_study_uids(study_uids=[CT.study_uid]) == []
        assert view.uid_index.rebuild() == len(view_rows_count(view))
    finally:
        view.close()


def test_lookups_fall_back_while_the_side_table_builds(view_config: Config) -> None:
    """A background build must not block C-FIND: lookups scan the view meanwhile."""
    view = ExamView(view_config)
    assert view.uid_index is not None
    try:
        view.uid_index.building.set()
        assert view.examine_ids_for_uids([UID["m1"]]) is None
        assert view.patients_for_pinyin("Wang*") is None
        assert view.resolve_study_uids(study_uids=[UID["m2"], UID["oh"]]) == [UID["m2"]]
        assert view.resolve_study_uids(study_uids=["1.2"]) == []  # LIKE '%1.2%' hits, exact check drops
        view.uid_index.building.clear()
        thread = view.uid_index.start_background_build()
        assert thread is not None
        thread.join(30)
        assert view.uid_index.is_built() and view.uid_index.start_background_build() is None
        assert view.examine_ids_for_uids([UID["m1"]]) == [["EMULTI"]]
    finally:
        view.close()


def view_rows_count(view: ExamView) -> list[object]:
    from sqlalchemy import select

    with view.engine.connect() as conn:
        return list(conn.execute(select(view.table.c.ExamineID)))


def test_split_uid_cell() -> None:
    assert split_uid_cell(" 1.2.3,1.2.4;1.2.3 \n 1.2.05 x 1.2..3,") == ["1.2.3", "1.2.4"]
    assert split_uid_cell("1." + "1" * 63) == []  # > 64 characters
    assert split_uid_cell(None) == [] and split_uid_cell("") == []


def test_pinyin_side_table(view_db: ViewDB, view_config: Config) -> None:
    view = ExamView(view_config)
    try:
        assert view.patients_for_pinyin("Wang*") == ["P0001"]
        assert view.patients_for_pinyin("wangxiaodong") == ["P0001"]
        assert view.patients_for_pinyin("WANG^XIAODONG") == ["P0001"]
        assert view.patients_for_pinyin("Li^X*") == ["P0002"]
        assert view.patients_for_pinyin("Ou^Yang*") == ["P0004"]  # 欧阳: compound surname split after 1 char
        assert view.patients_for_pinyin("Wang^Xiuying") == []
        # the hint includes invisible rows; the view query re-checks visibility
        assert view.patients_for_pinyin("Zhao^Min") == ["P0005"]
        later = dt.datetime(2030, 1, 1)
        insert_rows(
            view_db.engine, [_row("EQIAN", "P0010", "钱七", "1.2.840.99.9", RowTimestamp=later)], view_db.name
        )
        assert view.patients_for_pinyin("Qian*") == ["P0010"]  # a miss forces one sync
    finally:
        view.close()


@pytest.mark.parametrize("move", ["database", "view"])
def test_a_mark_from_another_view_is_not_reused(
    move: str,
    tmp_path: Path,
    make_config: ConfigFactory,
    run_proxy: Callable[[Config], Server],
) -> None:
    """``[view]`` points at another database (or another view in the same one) while ``data_dir``
    is kept: the side table's high-water mark belongs to the first view, so the new view is read
    in full — a C-FIND by Study Instance UID finds its rows stamped far below the old mark."""
    old_url = f"sqlite:///{tmp_path / 'old.db'}"
    new_url = f"sqlite:///{tmp_path / 'new.db'}" if move == "database" else old_url
    new_name = "V_IMAGE_CLOUD" if move == "database" else "V_IMAGE_CLOUD_2"
    old_engine, new_engine = create_engine(old_url), create_engine(new_url)
    create_view_table(old_engine)
    create_view_table(new_engine, new_name)
    high, low = dt.datetime(2030, 1, 1), dt.datetime(2020, 1, 1)
    insert_rows(old_engine, [_row("EOLD", "P0100", "旧一", "1.2.840.77.1", RowTimestamp=high)])
    insert_rows(new_engine, [_row("ENEW", "P0200", "新二", "1.2.840.77.2", RowTimestamp=low)], new_name)
    old_engine.dispose()
    new_engine.dispose()

    def find(config: Config, uid: str) -> list[str]:
        server = run_proxy(config)
        q = Dataset()
        q.QueryRetrieveLevel = "STUDY"
        q.StudyInstanceUID = uid
        q.PatientID = ""
        found = run_find("jobserver", Remote("DICOMPROXY", "127.0.0.1", server.port), "study", q)
        server.stop(drain_timeout=2.0)
        assert found.status == 0
        return [str(ds.PatientID) for ds in found.answers]

    old = make_config(view={"url": old_url})
    assert find(old, "1.2.840.77.1") == ["P0100"]  # builds the side table; mark: 2030
    assert "high_water" in UidIndex(old.data_path / "uid_index.sqlite", *_view(old))._state()
    new = make_config(view={"url": new_url, "name": new_name})
    assert new.data_path == old.data_path
    assert find(new, "1.2.840.77.2") == ["P0200"], "a row of the new view below the old mark was not indexed"
    assert find(new, "1.2.840.77.1") == []  # and nothing of the old view is answered


def _view(config: Config) -> tuple[Any, Any, str]:
    from dicomproxy.view.repository import _source_id, make_engine

    return make_engine(config.view), exam_view_table(config.view.name), _source_id(config)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        # the same server and database, another login: another default schema (SQL Server, Oracle)
        (
            "mssql+pyodbc://ris_a:pw@db:1433/RIS?driver=ODBC",
            "mssql+pyodbc://ris_b:pw@db:1433/RIS?driver=ODBC",
        ),
        (
            "oracle+oracledb://pacs:pw@db:1521/?service_name=RIS",
            "oracle+oracledb://ris:pw@db:1521/?service_name=RIS",
        ),
        # everything in the query: host and database are empty in the URL
        (
            "mssql+pyodbc:///?odbc_connect=DRIVER%3DODBC%3BSERVER%3Ddb1%3BDATABASE%3DRIS",
            "mssql+pyodbc:///?odbc_connect=DRIVER%3DODBC%3BSERVER%3Ddb2%3BDATABASE%3DRIS",
        ),
        (
            "oracle+oracledb://u:pw@db:1521/?service_name=RIS1",
            "oracle+oracledb://u:pw@db:1521/?service_name=RIS2",
        ),
    ],
)
def test_the_view_identity_of_the_mark_tells_logins_and_connect_strings_apart(
    old: str, new: str, make_config: ConfigFactory
) -> None:
    from dicomproxy.view.repository import _source_id

    a = make_config(view={"url": old})
    b = make_config(view={"url": new})
    assert _source_id(a) != _source_id(b)
    assert "pw" not in _source_id(a)  # the password is not stored in the side table's state
    assert _source_id(a) == _source_id(make_config(view={"url": old.replace(":pw@", ":changed@")}))


# --- the side table at unit level: a SQLite view, the index driven directly, a fake clock -------


class Clock:
    """Stands in for the ``time`` module in dicomproxy.view.uidindex: ``monotonic()`` is ``now``."""

    def __init__(self, now: float) -> None:
        self.now = now

    def monotonic(self) -> float:
        return self.now


@dataclass
class Side:
    engine: Engine
    table: Table
    path: Path

    def index(self, source: str = "sqlite:///view.db#V_IMAGE_CLOUD", **kw: Any) -> UidIndex:
        return UidIndex(self.path, self.engine, self.table, source, **kw)

    def add(self, examine_id: str, uid: str | None, stamp: dt.datetime, **kw: Any) -> None:
        insert_rows(self.engine, [_row(examine_id, "P0090", "钱七", uid, RowTimestamp=stamp, **kw)])


@pytest.fixture
def side(tmp_path: Path) -> Iterator[Side]:
    """tests.view_data's rows in a SQLite view (date-time RowTimestamp) and a side-table path."""
    engine = create_engine(f"sqlite:///{tmp_path / 'view.db'}")
    create_view_table(engine)
    insert_rows(engine, view_rows())
    try:
        yield Side(engine, exam_view_table("V_IMAGE_CLOUD"), tmp_path / "data" / "uid_index.sqlite")
    finally:
        engine.dispose()


LATER = dt.datetime(2030, 1, 1, 12, 0, 0)


def _messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "dicomproxy.view.uidindex"]


def test_lazy_syncs_are_max_age_apart_and_a_forced_one_is_not_held_back(
    side: Side, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """``sync()`` reads the view at most every ``max_age`` seconds (2 s by default; exactly 2 s
    after the last one it is due); ``sync(force=True)`` always reads. The clock is injected."""
    clock = Clock(1000.0)
    monkeypatch.setattr(uidindex, "time", clock)
    index = side.index()
    try:
        with caplog.at_level(logging.INFO, logger="dicomproxy.view.uidindex"):
            assert index.sync() == len(view_rows())  # never synced: due; a full read
        assert f"uid side table: full sync read {len(view_rows())} view rows in 0.00 s" in _messages(caplog)
        side.add("ENEW", "1.2.840.99.11", LATER)
        clock.now = 1001.999
        assert index.sync() == 0 and index._lookup(["1.2.840.99.11"]) == {}  # not due yet
        clock.now = 1002.0
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="dicomproxy.view.uidindex"):
            assert index.sync() > 0  # due: reads what changed since the mark (and its overlap)
        assert index._lookup(["1.2.840.99.11"]) == {"1.2.840.99.11": ["ENEW"]}
        assert [m for m in _messages(caplog) if "sync read" in m] == [
            "uid side table: incremental sync read 2 view rows in 0.00 s"  # ENEW and the row at the mark
        ]
        side.add("ENEW2", "1.2.840.99.12", LATER + dt.timedelta(minutes=5))
        clock.now = 1002.5
        assert index.sync() == 0
        assert index.sync(force=True) == 2  # forced within max_age (ENEW2, and ENEW: the overlap)
        assert index._lookup(["1.2.840.99.12"]) == {"1.2.840.99.12": ["ENEW2"]}
        # a custom max_age
        slow = side.index(max_age=10.0)
        slow.sync()
        side.add("ENEW3", "1.2.840.99.13", LATER + dt.timedelta(minutes=10))
        clock.now = 1012.0
        assert slow.sync() == 0
        clock.now = 1012.5
        assert slow.sync() > 0
        assert slow._lookup(["1.2.840.99.13"]) == {"1.2.840.99.13": ["ENEW3"]}
        slow.close()
    finally:
        index.close()


def test_a_hit_is_answered_without_a_view_read_a_miss_with_one(
    side: Side, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Within ``max_age`` a lookup whose UIDs are all in the side table reads nothing from the
    view (a stale hit is only a hint: callers re-check the row); a miss forces one sync. The same
    for the pinyin names."""
    clock = Clock(1000.0)
    monkeypatch.setattr(uidindex, "time", clock)
    index = side.index()
    try:
        side.add("ENEW", "1.2.840.99.21", LATER)
        assert index.lookup(["1.2.840.99.21", UID["m1"]]) == {
            "1.2.840.99.21": ["ENEW"],
            UID["m1"]: ["EMULTI"],
        }
        # the RIS re-keys the study; still within max_age: the hit is served from the table
        update_rows(side.engine, "V_IMAGE_CLOUD", "ENEW", {"StudyInstanceUID": "1.2.840.99.22"})
        clock.now = 1000.5
        assert index.lookup(["1.2.840.99.21"]) == {"1.2.840.99.21": ["ENEW"]}
        assert index.patients_for_pinyin("QIAN*") == ["P0090"]
        # a miss reads the view (once) before answering
        assert index.lookup(["1.2.840.99.22"]) == {"1.2.840.99.22": ["ENEW"]}
        assert index._lookup(["1.2.840.99.21"]) == {}
        side.add(
            "EZHOU", "1.2.840.99.23", LATER + dt.timedelta(minutes=1), PatientID="P0091", PatientName="周七"
        )
        clock.now = 1000.6
        assert index.patients_for_pinyin("Zhou^Qi") == ["P0091"]
        assert index.lookup(["1.2.840.99.99"]) == {}  # not in the view at all
    finally:
        index.close()


def test_lookups_of_many_uids_are_chunked_without_losing_or_doubling_any(side: Side) -> None:
    """More UIDs than one ``IN (...)`` chunk (500): the ones at the chunks' edges are found once."""
    wanted = [f"1.2.840.98.{n}" for n in range(1001)]
    present = {0: "EC0", 499: "EC499", 500: "EC500", 1000: "EC1000"}
    for n, examine_id in present.items():
        side.add(examine_id, wanted[n], LATER)
    index = side.index()
    try:
        assert index.lookup(wanted) == {wanted[n]: [e] for n, e in present.items()}
        assert index.lookup([wanted[500], wanted[0]]) == {wanted[0]: ["EC0"], wanted[500]: ["EC500"]}
        # one UID on two rows (one study, two exams): both
        assert sorted((index.lookup([UID["merged"]]) or {})[UID["merged"]]) == ["EMERGE1", "EMERGE2"]
    finally:
        index.close()


def test_the_view_is_streamed_in_batches(side: Side) -> None:
    """A view of millions of rows is read through a streaming cursor, ``BATCH`` rows at a time,
    never loaded whole into memory (the options of every SELECT on the view, as executed)."""
    seen: list[dict[str, Any]] = []

    def record(conn: Any, clause: Any, _multi: Any, _params: Any, options: Any) -> None:
        if "v_image_cloud" in str(clause).lower():
            seen.append({**conn.get_execution_options(), **options})

    event.listen(side.engine, "before_execute", record)
    index = side.index()
    try:
        index.sync(force=True)
    finally:
        event.remove(side.engine, "before_execute", record)
        index.close()
    reads = [o for o in seen if "yield_per" in o]
    assert reads and all(o.get("stream_results") is True and o["yield_per"] == uidindex.BATCH for o in reads)


def test_pinyin_patterns_by_prefix_and_wildcards(side: Side) -> None:
    """A wildcard anywhere (first, last, ``?``), a prefix that is a whole name, exact names."""
    index = side.index()
    try:
        assert index.patients_for_pinyin("*xiaodong") == ["P0001"]  # no literal prefix
        assert index.patients_for_pinyin("?angxiaodong") == ["P0001"]
        assert index.patients_for_pinyin("W?ng^X*") == ["P0001"]
        assert index.patients_for_pinyin("wangxiaodong*") == ["P0001"]  # * matching nothing
        assert index.patients_for_pinyin("WANG^XIAODONG*") == ["P0001"]
        assert index.patients_for_pinyin("Wang^*") == ["P0001"]
        assert index.patients_for_pinyin("wangxiaodon") == []  # exact: no prefix match
        assert index.patients_for_pinyin("Wan") == []
    finally:
        index.close()


def test_rows_without_a_patient_id_or_name_are_not_in_the_name_table(side: Side) -> None:
    """A row with a name but no PatientID gives no pinyin hint (nothing to answer it by); a row
    with no name is not indexed under the text "None"; a row without a Study UID is."""
    side.add("ENOPID", "1.2.840.99.31", LATER, PatientID=None, PatientName="冯八")
    side.add("ENOPID2", "1.2.840.99.32", LATER, PatientID="", PatientName="冯八")
    side.add("ENONAME", "1.2.840.99.33", LATER, PatientID="P0092", PatientName=None)
    side.add("ENOUIDYET", None, LATER, PatientID="P0094", PatientName="冯九")
    side.add("ENOUIDYET2", None, LATER, PatientID="P0096", PatientName="冯一")
    side.add("ESAMENAME", "1.2.840.99.35", LATER, PatientID="P0097", PatientName="冯九")  # another 冯九
    insert_rows(side.engine, [_row(None, "P0095", "冯十", "1.2.840.99.34", RowTimestamp=LATER)])  # type: ignore[arg-type]
    index = side.index()
    try:
        # no ExamineID: nothing to re-read the row by, so neither its UID nor its name is a hint
        assert index.lookup(["1.2.840.99.34"]) == {} and index.patients_for_pinyin("Feng^Shi") == []
        assert index.patients_for_pinyin("Feng^Ba") == []
        # a row without a Study UID yet is still a hint (every row is: the view query re-checks)
        assert index.patients_for_pinyin("Feng^Jiu") == ["P0094", "P0097"]
        assert index.patients_for_pinyin("Feng^Yi") == ["P0096"]
        assert index.patients_for_pinyin("None") == [] and index.patients_for_pinyin("N*") == []
        # their UIDs are indexed all the same
        assert set(index.lookup(["1.2.840.99.31", "1.2.840.99.32", "1.2.840.99.33"]) or {}) == {
            "1.2.840.99.31",
            "1.2.840.99.32",
            "1.2.840.99.33",
        }
    finally:
        index.close()


def test_a_study_uid_taken_off_a_row_leaves_the_side_table(side: Side) -> None:
    """The RIS clears a row's StudyInstanceUID, or re-keys a row that has no patient name (a new
    RowTimestamp): the incremental sync drops the UID the row had; other rows stay."""
    side.add("ECLEAR", "1.2.840.99.51", LATER)
    side.add("ENONAME", "1.2.840.99.52", LATER, PatientName=None)
    index = side.index()
    try:
        assert index.lookup(["1.2.840.99.51"]) == {"1.2.840.99.51": ["ECLEAR"]}
        moved = LATER + dt.timedelta(minutes=1)
        update_rows(side.engine, "V_IMAGE_CLOUD", "ECLEAR", {"StudyInstanceUID": None, "RowTimestamp": moved})
        # and a row without a patient name is re-keyed
        update_rows(
            side.engine,
            "V_IMAGE_CLOUD",
            "ENONAME",
            {"StudyInstanceUID": "1.2.840.99.53", "RowTimestamp": moved},
        )
        assert index.sync(force=True) > 0
        assert index._lookup(["1.2.840.99.51", "1.2.840.99.52"]) == {}
        assert index._lookup(["1.2.840.99.53"]) == {"1.2.840.99.53": ["ENONAME"]}
        assert index._lookup([UID["m1"]]) == {UID["m1"]: ["EMULTI"]}
    finally:
        index.close()


def test_the_mark_never_moves_back(side: Side) -> None:
    """The row at the mark is deleted: the overlap re-reads only rows below it, and the mark stays
    where it was (a mark moving back would only re-read more, but a restart would go on from it)."""
    side.add("ETOP", "1.2.840.99.61", LATER)
    side.add("EBELOW", "1.2.840.99.62", LATER - dt.timedelta(seconds=30))
    index = side.index()
    try:
        index.sync(force=True)
        assert index._state()["high_water"] == f"datetime:{LATER.isoformat()}"
        with side.engine.begin() as conn:
            conn.execute(text("DELETE FROM v_image_cloud WHERE examineid = 'ETOP'"))
        assert index.sync(force=True) == 1  # EBELOW, in the overlap
        assert index._state()["high_water"] == f"datetime:{LATER.isoformat()}"
    finally:
        index.close()


def test_a_failed_background_build_is_logged_and_lookups_go_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The view cannot be read (no such table): the build's thread logs a WARNING and clears
    ``building``, so lookups do not wait for it (they build lazily later)."""
    engine = create_engine(f"sqlite:///{tmp_path / 'view.db'}")
    index = UidIndex(tmp_path / "uid_index.sqlite", engine, exam_view_table("V_IMAGE_CLOUD"), "s")
    try:
        with caplog.at_level(logging.WARNING, logger="dicomproxy.view.uidindex"):
            thread = index.start_background_build()
            assert thread is not None
            thread.join(30)
        assert not index.building.is_set() and not index.is_built()
        (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert warning.startswith("uid side table: background build failed: ") and "v_image_cloud" in warning
    finally:
        index.close()
        engine.dispose()


def test_is_built_only_for_its_own_view_and_once_a_mark_is_stored(side: Side) -> None:
    index = side.index()
    other = side.index(source="sqlite:///elsewhere.db#V_IMAGE_CLOUD")
    try:
        assert not index.is_built()
        index.sync(force=True)
        assert index.is_built()
        assert not other.is_built()  # the same file, built from another view
        thread = other.start_background_build()
        assert thread is not None and thread.daemon  # never keeps the process alive at exit
        thread.join(30)
        assert other.is_built() and not index.is_built()
    finally:
        index.close()
        other.close()


def test_an_empty_view_is_not_built_until_it_has_a_stamp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No rows: no mark, so not built; the kind is detected again once rows arrive; a background
    build started within ``max_age`` of the last sync still reads them."""
    clock = Clock(1000.0)
    monkeypatch.setattr(uidindex, "time", clock)
    engine = create_engine(f"sqlite:///{tmp_path / 'view.db'}")
    create_view_table(engine)
    index = UidIndex(
        tmp_path / "deep" / "er" / "uid_index.sqlite", engine, exam_view_table("V_IMAGE_CLOUD"), "s"
    )
    try:
        assert index.sync() == 0 and not index.is_built()
        assert index.stamp_policy().kind is StampKind.EMPTY
        insert_rows(engine, [_row("EFIRST", "P0093", "钱七", "1.2.840.99.41", RowTimestamp=LATER)])
        clock.now = 1000.5
        thread = index.start_background_build()
        assert thread is not None
        thread.join(30)
        assert index.is_built() and index.stamp_policy().kind is StampKind.DATETIME
        assert index._lookup(["1.2.840.99.41"]) == {"1.2.840.99.41": ["EFIRST"]}
    finally:
        index.close()
        engine.dispose()


def test_the_kind_is_detected_once_per_process_and_again_by_rebuild(
    side: Side, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The view switches from date-time stamps to rowversion (same view): a new process sees the
    stored mark is of the other kind, says so and rebuilds; ``rebuild()`` detects the kind again."""
    detected: list[StampKind] = []
    real = uidindex.policy_for

    def counting(*args: Any) -> StampPolicy:
        policy = real(*args)
        detected.append(policy.kind)
        return policy

    monkeypatch.setattr(uidindex, "policy_for", counting)
    index = side.index()
    try:
        index.sync(force=True)
        index.sync(force=True)
        index.lookup([UID["m1"]])
        assert detected == [StampKind.DATETIME]  # once per process
        with side.engine.begin() as conn:
            conn.execute(text("UPDATE v_image_cloud SET rowtimestamp = x'00000000000007d1'"))
        index.sync(force=True)  # this process keeps its policy until rebuild
        assert detected == [StampKind.DATETIME]
        assert index.rebuild() == len(view_rows())
        assert detected == [StampKind.DATETIME, StampKind.ROWVERSION]
        assert index.stamp_policy().kind is StampKind.ROWVERSION
    finally:
        index.close()


def test_a_mark_of_another_kind_is_dropped_with_a_warning_unless_the_view_is_empty(
    side: Side, caplog: pytest.LogCaptureFixture
) -> None:
    """The view's RowTimestamp switches from date-time to rowversion: the next process finds a
    stored mark of the other kind, says so and reads the view in full. A view that is empty for
    a while (no kind to compare) keeps the mark: nothing is rebuilt."""
    first = side.index()
    first.sync(force=True)
    first.close()
    with side.engine.begin() as conn:
        conn.execute(text("UPDATE v_image_cloud SET rowtimestamp = x'00000000000007d1'"))
    index = side.index()
    try:
        with caplog.at_level(logging.INFO, logger="dicomproxy.view.uidindex"):
            assert index.sync(force=True) == len(view_rows())
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert warnings == ["uid side table: RowTimestamp changed from datetime to rowversion, rebuilding"]
        assert any(m.startswith("uid side table: full sync read") for m in _messages(caplog))
        state = index._state()
        assert state["high_water"] == "rowversion:00000000000007d1"
    finally:
        index.close()
    with side.engine.begin() as conn:
        conn.execute(text("DELETE FROM v_image_cloud"))
    caplog.clear()
    empty = side.index()
    try:
        with caplog.at_level(logging.INFO, logger="dicomproxy.view.uidindex"):
            assert empty.sync(force=True) == 0
        assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
        assert empty.is_built() and empty._state()["high_water"] == "rowversion:00000000000007d1"
        assert empty._lookup([UID["m1"]]) == {UID["m1"]: ["EMULTI"]}  # not emptied by a rebuild
    finally:
        empty.close()


def test_the_first_sync_of_a_process_runs_whatever_the_clock_reads(
    side: Side, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new index has never synced: its first lazy ``sync()`` reads the view even when the
    monotonic clock is still below ``max_age`` (seconds after boot), and the next one waits."""
    clock = Clock(0.5)
    monkeypatch.setattr(uidindex, "time", clock)
    index = side.index()
    try:
        assert index.sync() == len(view_rows())
        assert index.sync() == 0  # 0 s later: not due
    finally:
        index.close()


def _open_side_table(path: str, view_url: str, go: Any, out: Any) -> None:
    """One process of the race below: wait for the start, open the side table, report."""
    engine = create_engine(view_url)
    go.wait(10)
    try:
        UidIndex(path, engine, exam_view_table("V_IMAGE_CLOUD"), "race").close()
        out.put("ok")
    except Exception as exc:  # the race lost: what the test reports
        out.put(f"{type(exc).__name__}: {exc}")
    finally:
        engine.dispose()


def test_serve_and_its_query_process_open_a_new_side_table_at_the_same_moment(tmp_path: Path) -> None:
    """A first start: ``serve`` and its forked query process create ``uid_index.sqlite`` at once.
    With a check-then-create one of them failed ("table study_uid_index already exists", seen in
    the C-FIND benchmark) and ran without its side table until the next restart. Two real processes,
    started together on a fresh file, fifty times: both open it every time (before: 14 of 40
    openings failed, the table race and then "database is locked" switching the file to WAL)."""
    import multiprocessing

    view = tmp_path / "view.sqlite"
    engine = create_engine(f"sqlite:///{view}")
    create_view_table(engine)
    engine.dispose()
    fork = multiprocessing.get_context("fork")
    failures = []
    for attempt in range(50):
        go, out = fork.Event(), fork.Queue()
        path = str(tmp_path / f"uid_index-{attempt}.sqlite")
        procs = [
            fork.Process(target=_open_side_table, args=(path, f"sqlite:///{view}", go, out)) for _ in range(2)
        ]
        for proc in procs:
            proc.start()
        go.set()
        results = [out.get(timeout=30) for _ in procs]
        for proc in procs:
            proc.join(10)
        failures += [r for r in results if r != "ok"]
    assert failures == []
