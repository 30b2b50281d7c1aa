"""The UID side table: built on first use, synced by RowTimestamp, a hint only (visibility
is always re-checked on the view's current row)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import update

from dicomproxy.config import Config
from dicomproxy.view.model import exam_view_table
from dicomproxy.view.repository import ExamView
from dicomproxy.view.uids import split_uid_cell
from testkit.viewdb import insert_rows
from tests.conftest import ViewDB
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
