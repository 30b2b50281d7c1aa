"""SQL Server and Oracle, which cannot run here: every statement the view code sends, compiled
(and on SQL Server executed against a stand-in pyodbc that records what the driver is given),
the rowversion guard, string parameter types, and the Oracle rules (empty string is NULL,
DATE with a time, identifier case). Plus the stamp's own unit rules."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from sqlalchemy import MetaData, Select, create_engine, select
from sqlalchemy.dialects import mssql, mysql, oracle, postgresql, sqlite
from sqlalchemy.engine import Dialect, Engine

from dicomproxy import mapping
from dicomproxy.view.model import exam_view_table
from dicomproxy.view.query import FindQuery, build_select, parse_identifier, residual_match
from dicomproxy.view.repository import ExamView
from dicomproxy.view.search import search
from dicomproxy.view.stamp import GUARD_FUNCTION, Mark, RowStamp, StampKind, StampPolicy, guard_for, kind_of
from tests.conftest import ConfigFactory
from tests.fake_pyodbc import SQL_CONSTANTS, Recorder, connection_factory, fake_pyodbc

DIALECTS: dict[str, Dialect] = {
    "mssql": mssql.dialect(),
    "oracle": oracle.dialect(),
    "postgresql": postgresql.dialect(),
    "mariadb": mysql.dialect(is_mariadb=True),
    "sqlite": sqlite.dialect(),
}
TABLE = exam_view_table("RIS.V_IMAGE_CLOUD", MetaData())
VARCHAR, NVARCHAR = SQL_CONSTANTS["SQL_VARCHAR"], SQL_CONSTANTS["SQL_WVARCHAR"]
STAMP = (2001).to_bytes(8, "big")


def compiled(stmt: Any, dialect: str) -> tuple[str, dict[str, Any]]:
    c = stmt.compile(dialect=DIALECTS[dialect], compile_kwargs={"render_postcompile": True})
    return str(c), dict(c.params)


# --- the stamp ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "kind"),
    [(b"\x00" * 7 + b"\x01", StampKind.ROWVERSION), (dt.datetime(2024, 1, 1), StampKind.DATETIME),
     (dt.date(2024, 1, 1), StampKind.DATETIME), (12345, StampKind.NUMBER), ("v7", StampKind.TEXT),
     (None, StampKind.EMPTY), (True, StampKind.TEXT)],
)  # fmt: skip
def test_kind_of(value: Any, kind: StampKind) -> None:
    assert kind_of(value) is kind


@given(
    st.one_of(
        st.binary(min_size=8, max_size=8).map(lambda b: Mark(StampKind.ROWVERSION, b)),
        st.datetimes().map(lambda d: Mark(StampKind.DATETIME, d)),
        st.integers(min_value=0, max_value=2**63).map(lambda n: Mark(StampKind.NUMBER, n)),
        st.text(min_size=1).map(lambda t: Mark(StampKind.TEXT, t)),
    )
)
def test_mark_survives_a_restart(mark: Mark) -> None:
    assert Mark.decode(mark.encode()) == mark


@pytest.mark.parametrize(
    "text", ["", "2024-01-01", "rowversion:zz", "datetime:yesterday", "empty:x", "bogus:1"]
)
def test_unreadable_marks_mean_rebuild(text: str) -> None:
    assert Mark.decode(text) is None


def test_row_stamp_normalises_driver_values() -> None:
    stamp = RowStamp()
    pg, lite = postgresql.dialect(), sqlite.dialect()
    assert stamp.process_result_value(memoryview(STAMP), pg) == STAMP
    assert stamp.process_result_value(bytearray(STAMP), pg) == STAMP
    from decimal import Decimal

    assert stamp.process_result_value(Decimal("42"), oracle.dialect()) == 42
    assert stamp.process_result_value("2024-05-01 08:00:00.000000", lite) == dt.datetime(2024, 5, 1, 8)
    assert stamp.process_result_value("not a date", lite) == "not a date"
    assert stamp.process_bind_param(dt.datetime(2024, 5, 1, 8), lite) == "2024-05-01 08:00:00.000000"
    assert stamp.process_bind_param(STAMP, mssql.dialect()) == STAMP


def _mssql_engine(rec: Recorder) -> Engine:
    return create_engine(
        "mssql+pyodbc://cloud:x@10.0.0.9/ris?driver=FreeTDS",
        module=fake_pyodbc(rec),
        creator=connection_factory(rec),
    )


@pytest.mark.parametrize("dialect", list(DIALECTS))
@pytest.mark.parametrize("kind", [StampKind.ROWVERSION, StampKind.DATETIME])
def test_incremental_read_per_dialect(dialect: str, kind: StampKind) -> None:
    """No arithmetic on a rowversion; an overlap window on a date-time; unquoted names."""
    column = TABLE.c.RowTimestamp
    guard = guard_for(_mssql_engine(Recorder()), kind) if dialect == "mssql" else None
    policy = StampPolicy(kind, guard, dt.timedelta(seconds=60))
    value = STAMP if kind is StampKind.ROWVERSION else dt.datetime(2024, 5, 1, 8, 0, 0)
    sql, params = compiled(select(TABLE.c.ExamineID).where(policy.since(column, Mark(kind, value))), dialect)
    assert "ris.v_image_cloud.rowtimestamp" in sql and '"' not in sql and "[" not in sql
    if kind is StampKind.ROWVERSION:
        assert " > " in sql and list(params.values()) == [STAMP]
    else:
        assert " >= " in sql and list(params.values()) == [dt.datetime(2024, 5, 1, 7, 59, 0)]
    if dialect == "mssql" and kind is StampKind.ROWVERSION:
        assert policy.guard is not None
        guard_sql, _ = compiled(select(policy.guard), "mssql")
        assert guard_sql == "SELECT MIN_ACTIVE_ROWVERSION() AS [MIN_ACTIVE_ROWVERSION_1]"


def test_guard_only_for_rowversion() -> None:
    engine = _mssql_engine(Recorder())
    assert guard_for(engine, StampKind.DATETIME) is None
    assert guard_for(engine, StampKind.NUMBER) is None
    assert guard_for(create_engine("sqlite://"), StampKind.ROWVERSION) is None  # one writer
    assert GUARD_FUNCTION == "min_active_rowversion"


# --- SQL Server: what pyodbc is given -----------------------------------------------------------


def _answers(sql: str) -> list[tuple[Any, ...]]:
    low = sql.lower()
    if "min_active_rowversion" in low:
        return [((4000).to_bytes(8, "big"),)]
    if low.startswith("select top") and "rowtimestamp is not null" in low:
        return [(STAMP,)]
    if "patientname" in low and "hospitalid" not in low:  # the side-table sync
        return [("E1", "1.2.840.5.1", STAMP, "P1", "王小东")]
    if "hospitalid" in low and "sysid" in low:  # resolve_studies
        return [("E1", "1.2.840.5.1", "74580626", 0, "A1", "P1", "RIS", "CT")]
    return []


def _run_view(make_config: ConfigFactory, tmp_path: Path, unicode_params: bool) -> Recorder:
    rec = Recorder(rows_for=_answers)
    config = make_config(
        view={"url": "mssql+pyodbc://cloud:x@10.0.0.9/ris", "unicode_params": unicode_params}
    )
    view = ExamView(config, engine=_mssql_engine(rec))
    try:
        assert view.resolve_study_uids(study_uids=["1.2.840.5.1"]) == ["1.2.840.5.1"]
        assert view.uid_index is not None
        view.uid_index.sync(force=True)  # an incremental pass after the full one
        for keys in (
            {"PatientID": "P1", "AccessionNumber": "A1", "StudyDate": "20240101-20240131"},
            {"PatientName": "=王*", "PatientSex": "F", "ModalitiesInStudy": "CT\\DX"},
            {"StudyID": "E1", "StudyDescription": "胸部CT平扫"},
        ):
            query = FindQuery(model="STUDY", level="STUDY", requested=list(keys), values=dict(keys))
            assert list(search(view, query, style="ideographic")) == []
    finally:
        view.close()
    return rec


def test_sqlserver_string_parameters_are_varchar(make_config: ConfigFactory, tmp_path: Path) -> None:
    """pyodbc would send a Python str as nvarchar; against the seed's varchar columns SQL
    Server then converts the column (CONVERT_IMPLICIT) and scans. Every string parameter the
    view code sends is declared SQL_VARCHAR instead."""
    rec = _run_view(make_config, tmp_path, unicode_params=False)
    string_params = 0
    for sql, params, sizes in rec.statements:
        assert sizes is None or len(sizes) == len(params), sql
        for value, size in zip(params, sizes or [None] * len(params), strict=True):
            if isinstance(value, str):
                string_params += 1
                assert size is not None and size[0] == VARCHAR, (sql, value, size)
    assert string_params >= 12  # hospital id, keys, LIKE patterns, Chinese values, ExamineIDs
    texts = [s for s, _, _ in rec.statements]
    # the rowversion guard is read before the rows, and the incremental pass has no arithmetic
    assert "SELECT MIN_ACTIVE_ROWVERSION()" in "\n".join(texts)
    incremental = [(s, p) for s, p, _ in rec.statements if "rowtimestamp > ?" in s]
    assert incremental and incremental[0][1] == (STAMP,)
    assert any("patientname LIKE ? ESCAPE '\\'" in s for s in texts)
    chinese = [v for _, params, _ in rec.statements for v in params if isinstance(v, str) and not v.isascii()]
    assert {"王%", "女", "胸部CT平扫"} <= set(chinese)  # sent as varchar too: FreeTDS converts to GBK


def test_sqlserver_nvarchar_views_get_nvarchar_parameters(make_config: ConfigFactory, tmp_path: Path) -> None:
    rec = _run_view(make_config, tmp_path, unicode_params=True)
    sizes = [size for _, params, sz in rec.statements for v, size in zip(params, sz or [], strict=False)
             if isinstance(v, str) and size is not None]  # fmt: skip
    assert sizes and all(size[0] == NVARCHAR for size in sizes)


# --- Oracle -------------------------------------------------------------------------------------


def test_oracle_empty_string_is_null() -> None:
    """Oracle stores '' as NULL: an empty key is universal (no predicate at all), never
    ``col = ''``, and a NULL column answers and matches like an empty one."""
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.AccessionNumber = ""
    ds.PatientID = "*"
    ds.StudyDescription = ""
    query = parse_identifier(ds, "STUDY")
    sql, params = compiled(build_select(query, TABLE, TABLE.c.HospitalID == "74580626", "oracle"), "oracle")
    assert list(params.values()) == ["74580626"]
    assert "accessionnumber =" not in sql and "''" not in sql
    row = {"ExamineID": "E1", "StudyInstanceUID": "1.2.3", "AccessionNumber": None, "ExamineItem": None,
           "PatientID": None, "PerformTime": None, "RegTime": None}  # fmt: skip
    attrs = mapping.study_attributes("1.2.3", [row], "ideographic")
    assert attrs["AccessionNumber"] == "" and residual_match(query, attrs)


def test_oracle_date_with_a_time() -> None:
    """Oracle DATE carries a time: a day range is [day 00:00, next day 00:00) on the bare
    column, and 23:59:59 on the last day is inside; StudyTime comes from the DATE's time."""
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyDate = "20240131"
    ds.StudyTime = ""
    query = parse_identifier(ds, "STUDY")
    sql, params = compiled(build_select(query, TABLE, TABLE.c.HospitalID == "x", "oracle"), "oracle")
    assert "ris.v_image_cloud.performtime >= :" in sql and "ris.v_image_cloud.performtime < :" in sql
    assert {dt.datetime(2024, 1, 31), dt.datetime(2024, 2, 1)} <= set(params.values())
    assert "TRUNC" not in sql.upper() and "TO_CHAR" not in sql.upper()
    row = {
        "ExamineID": "E1",
        "StudyInstanceUID": "1.2.3",
        "PerformTime": dt.datetime(2024, 1, 31, 23, 59, 59),
    }
    attrs = mapping.study_attributes("1.2.3", [row], "ideographic")
    assert attrs["StudyDate"] == "20240131" and attrs["StudyTime"] == "235959"
    assert residual_match(query, attrs)


def test_oracle_identifiers_of_a_view_created_unquoted() -> None:
    """``CREATE VIEW ris.v_image_cloud`` without quotes is stored RIS.V_IMAGE_CLOUD with
    upper-case columns; we emit lower case unquoted, which Oracle folds to the same names —
    whatever case ``[view].name`` is given in."""
    for name in ("RIS.V_IMAGE_CLOUD", "ris.v_image_cloud", '"RIS"."V_Image_Cloud"', "[ris].[V_IMAGE_CLOUD]"):
        table = exam_view_table(name, MetaData())
        policy = StampPolicy(StampKind.DATETIME)
        stmt = select(table.c.ExamineID, table.c.StudyInstanceUID).where(
            policy.since(table.c.RowTimestamp, Mark(StampKind.DATETIME, dt.datetime(2024, 1, 1)))
        )
        sql, _ = compiled(stmt, "oracle")
        assert "FROM ris.v_image_cloud" in sql and '"' not in sql, sql


def test_oracle_ddl_uses_character_semantics() -> None:
    """ZHS16GBK stores a Chinese character in 2 bytes, AL32UTF8 in 3: VARCHAR2(n CHAR) keeps
    the seed's lengths in characters on both. python-oracledb thin mode converts either
    database charset to UTF-8 itself (no NLS_LANG); NVARCHAR2 is avoided because thin mode
    cannot read a UTF8 national character set."""
    ddl = (Path(__file__).resolve().parents[1] / "conf" / "sql" / "exam_view.oracle.sql").read_text()
    body = ddl.split("CREATE TABLE", 1)[1]
    assert "VARCHAR2(64 CHAR)" in body and "NVARCHAR2" not in body and "NCHAR" not in body
    assert "RowTimestamp TIMESTAMP" in body


# --- every statement the view code sends, compiled for SQL Server and Oracle ----------------------


@pytest.mark.parametrize("kind", ["datetime", "rowversion"])
def test_every_view_statement_compiles_for_sqlserver_and_oracle(
    kind: str, tmp_path: Path, make_config: ConfigFactory
) -> None:
    """Run the real lookups on SQLite, capture each statement object the view code executes,
    and compile it with the SQL Server and Oracle dialects: names unquoted in lower case,
    limits in each dialect's own syntax, every value a bound parameter."""
    from sqlalchemy import event

    from dicomproxy.view.check import check_view
    from dicomproxy.view.model import missing_view_columns
    from testkit.viewdb import create_view_table, insert_rows
    from tests.view_data import UID, view_rows

    url = f"sqlite:///{tmp_path / 'v.db'}"
    engine = create_engine(url)
    create_view_table(engine, "v_image_cloud", kind)  # type: ignore[arg-type]
    insert_rows(engine, view_rows(), "v_image_cloud")
    captured: list[Any] = []
    event.listen(engine, "before_execute", lambda _c, stmt, *_a: captured.append(stmt))
    config = make_config(view={"url": url, "name": "V_IMAGE_CLOUD"})
    view = ExamView(config, engine=engine)
    try:
        view.stamp_policy()
        assert view.resolve_study_uids(study_uids=[UID["m1"], UID["oh"]]) == [UID["m1"]]
        assert view.uid_index is not None
        view.uid_index.sync(force=True)
        view.resolve_studies(accession="A0001", patient_id="P0001")
        view.sample_study()
        assert list(view.studies_performed(dt.datetime(1990, 1, 1), dt.datetime(2100, 1, 1)))  # reconcile
        for keys in (
            {"PatientName": "Wang^Xiao*"},
            {"PatientName": "=王*", "StudyDate": "20240101-", "ModalitiesInStudy": "CT\\MR"},
            {"StudyInstanceUID": f"{UID['m2']}\\{UID['merged']}", "AccessionNumber": "A*"},
        ):
            query = FindQuery(model="STUDY", level="STUDY", requested=list(keys), values=dict(keys))
            list(search(view, query, style="ideographic"))
        missing_view_columns(engine, "V_IMAGE_CLOUD")
        check_view(config, engine=engine)
    finally:
        view.close()
        engine.dispose()
    statements = [s for s in captured if hasattr(s, "compile") and "v_image_cloud" in str(s)]
    assert len(statements) >= 12
    shapes = "\n".join(str(s.compile(dialect=DIALECTS["oracle"])) for s in statements)
    assert "FETCH FIRST" in shapes and "rowtimestamp" in shapes and " IN (" in shapes
    for stmt in statements:
        for dialect in ("mssql", "oracle"):
            sql = str(stmt.compile(dialect=DIALECTS[dialect], compile_kwargs={"render_postcompile": True}))
            tail = sql.split("FROM", 1)[1]  # (result labels may be quoted: they name Python keys)
            assert "v_image_cloud" in tail and '"' not in tail and "[" not in tail, sql
            assert "'" not in sql.replace("ESCAPE '\\'", ""), sql  # no inlined values
            if dialect == "oracle":
                assert "LIMIT" not in sql and "TOP " not in sql, sql
            else:
                assert "LIMIT" not in sql and "FETCH FIRST" not in sql, sql


@pytest.mark.parametrize("kind", ["datetime", "rowversion"])
def test_push_watcher_statements_compile_for_sqlserver_and_oracle(
    kind: str, tmp_path: Path, make_config: ConfigFactory
) -> None:
    """The push watcher's reads (start mark, batches after the watermark with keyset paging, the
    study's row for its report), captured on SQLite and compiled for SQL Server and Oracle."""
    from sqlalchemy import event

    from dicomproxy.push.queue import PushQueue
    from dicomproxy.push.watcher import Watcher
    from dicomproxy.relay.journal import Journal
    from testkit.viewdb import create_view_table, insert_rows
    from tests.view_data import view_rows

    url = f"sqlite:///{tmp_path / 'v.db'}"
    engine = create_engine(url)
    create_view_table(engine, "v_image_cloud", kind)  # type: ignore[arg-type]
    insert_rows(engine, view_rows(), "v_image_cloud")
    captured: list[Any] = []
    event.listen(engine, "before_execute", lambda _c, stmt, *_a: captured.append(stmt))
    config = make_config(
        view={"url": url, "name": "V_IMAGE_CLOUD"},
        push={"enabled": True, "destinations": ["jobserver"], "batch_size": 2, "sysids": ["RIS", "UIS"]},
    )
    view = ExamView(config, engine=engine)
    journal = Journal(f"sqlite:///{tmp_path / 'j.db'}")
    try:
        watcher = Watcher(config, view, PushQueue(journal.engine, "n"))
        watcher.run_pass()  # start_from "now": the start mark
        watcher.run_pass()
        config2 = make_config(
            view={"url": url, "name": "V_IMAGE_CLOUD"},
            push={"enabled": True, "destinations": ["jobserver"], "batch_size": 2, "start_from": "beginning"},
        )
        Watcher(config2, view, PushQueue(Journal(f"sqlite:///{tmp_path / 'j2.db'}").engine, "n")).run_pass()
    finally:
        view.close()
        journal.close()
        engine.dispose()
    statements = [s for s in captured if isinstance(s, Select) and "v_image_cloud" in str(s)]
    assert any("ORDER BY" in str(s) and " > " in str(s) for s in statements)  # keyset paging
    for stmt in statements:
        for dialect in ("mssql", "oracle"):
            sql = str(stmt.compile(dialect=DIALECTS[dialect], compile_kwargs={"render_postcompile": True}))
            tail = sql.split("FROM", 1)[1]
            assert "v_image_cloud" in tail and '"' not in tail and "[" not in tail, sql
            assert "'" not in sql, sql  # every value bound
            assert "max(" not in sql.lower(), sql  # no MAX over a binary stamp
