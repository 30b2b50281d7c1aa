"""The UID side table: built on first use, synced by RowTimestamp, a hint only (visibility
is always re-checked on the view's current row)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from sqlalchemy import create_engine, update

from dicomproxy.config import Config
from dicomproxy.server import Server
from dicomproxy.transport.findscu import run_find
from dicomproxy.transport.net import Remote
from dicomproxy.view.model import exam_view_table
from dicomproxy.view.repository import ExamView
from dicomproxy.view.uidindex import UidIndex
from dicomproxy.view.uids import split_uid_cell
from testkit.viewdb import create_view_table, insert_rows
from tests.conftest import ConfigFactory, ViewDB
from tests.view_data import CT, UID, _row


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
