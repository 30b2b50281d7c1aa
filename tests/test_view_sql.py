"""SQL shapes for every supported dialect (SQL Server and Oracle compiled, not executed), the
DDL files, row → DICOM conversions and identifier validation (unit level)."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from sqlalchemy import MetaData, create_engine, select, text
from sqlalchemy.dialects import mssql, mysql, oracle, postgresql, sqlite
from sqlalchemy.engine import Dialect

from dicomproxy import mapping
from dicomproxy.errors import InvalidIdentifier
from dicomproxy.view.model import COLUMN_NAMES, exam_view_table
from dicomproxy.view.query import FindQuery, build_select, date_range, parse_identifier, time_range
from dicomproxy.view.sql import MAX_IN_ITEMS, batches, dicom_wildcard_to_like
from tests.conftest import MARIADB_URL, PG_URL, _reachable

ROOT = Path(__file__).resolve().parents[1]
DIALECTS: dict[str, Dialect] = {
    "mssql": mssql.dialect(),
    "oracle": oracle.dialect(),
    "postgresql": postgresql.dialect(),
    "mariadb": mysql.dialect(is_mariadb=True),
    "sqlite": sqlite.dialect(),
}
TABLE = exam_view_table("DBO.V_IMAGE_CLOUD", MetaData())


def compiled(stmt: Any, dialect: str) -> tuple[str, dict[str, Any]]:
    c = stmt.compile(dialect=DIALECTS[dialect], compile_kwargs={"render_postcompile": True})
    return str(c), dict(c.params)


def shape(dialect: str, **values: str) -> tuple[str, dict[str, Any]]:
    query = FindQuery(model="STUDY", level="STUDY", requested=list(values), values=dict(values))
    visible = TABLE.c.HospitalID == "74580626"
    return compiled(build_select(query, TABLE, visible, dialect), dialect)


@pytest.mark.parametrize("dialect", list(DIALECTS))
def test_identifiers_are_unquoted_lower_case(dialect: str) -> None:
    sql, _ = shape(dialect, PatientID="P1", AccessionNumber="A*")
    assert '"' not in sql and "`" not in sql and "[" not in sql
    assert "dbo.v_image_cloud" in sql and "examineid" in sql


@pytest.mark.parametrize("dialect", list(DIALECTS))
def test_like_escaping(dialect: str) -> None:
    sql, params = shape(dialect, AccessionNumber="A_%\\[?*")
    assert re.search(r"accessionnumber LIKE \S+ ESCAPE '\\{1,2}'", sql), sql
    expected = "A\\_\\%\\\\" + ("\\[" if dialect == "mssql" else "[") + "_%"
    assert expected in params.values()
    # single value: plain equality, no LIKE at all
    sql, params = shape(dialect, AccessionNumber="A_1")
    assert "LIKE" not in sql and "A_1" in params.values()


def test_wildcard_translation_table() -> None:
    assert dicom_wildcard_to_like("王*", "postgresql") == "王%"
    assert dicom_wildcard_to_like("a?b", "oracle") == "a_b"
    assert dicom_wildcard_to_like("50%_x[y]", "mssql") == "50\\%\\_x\\[y]"


@pytest.mark.parametrize("dialect", list(DIALECTS))
def test_date_range_is_index_friendly(dialect: str) -> None:
    sql, params = shape(dialect, StudyDate="20240101-20240131")
    assert re.search(r"performtime >= .+? AND \S*performtime < ", sql), sql
    assert re.search(r"regtime >= .+? AND \S*regtime < ", sql), sql
    # never a function around the column
    assert not re.search(r"\w+\(\s*[\w.]*(performtime|regtime)", sql, re.IGNORECASE), sql
    assert dt.datetime(2024, 2, 1) in params.values() and dt.datetime(2024, 1, 1) in params.values()
    open_sql, open_params = shape(dialect, StudyDate="20240101-")
    assert "performtime <" not in open_sql and dt.datetime(2024, 1, 1) in open_params.values()


@pytest.mark.parametrize("dialect", ["mssql", "oracle"])
def test_in_lists_are_chunked(dialect: str) -> None:
    ids = [f"E{i}" for i in range(2500)]
    chunks = list(batches(ids))
    assert [len(c) for c in chunks] == [1000, 1000, 500]
    for chunk in chunks:
        stmt = select(TABLE.c.ExamineID).where(TABLE.c.HospitalID == "x", TABLE.c.ExamineID.in_(chunk))
        sql, params = compiled(stmt, dialect)
        assert len(params) == len(chunk) + 1
        assert len(params) <= (2100 if dialect == "mssql" else MAX_IN_ITEMS + 1)
        assert sql.count("examineid IN (") == 1


@pytest.mark.parametrize("dialect", list(DIALECTS))
def test_modalities_or_and_names(dialect: str) -> None:
    sql, params = shape(dialect, ModalitiesInStudy="CT\\DX\\M?", PatientName="=王*")
    assert "examinetype IN (" in sql and "examinetype LIKE" in sql and " OR " in sql
    assert {"CT", "DX", "DR", "M_", "王%"} <= set(params.values())
    # an alphabetic (pinyin) group is not pushed into SQL
    sql, params = shape(dialect, PatientName="Wang*")
    assert "patientname" not in sql.split("WHERE")[1]


# --- DDL ----------------------------------------------------------------------------------------


def ddl_columns(path: Path) -> list[str]:
    body = path.read_text().split("CREATE TABLE", 1)[1].split(");", 1)[0]
    return [line.split()[0] for line in body.splitlines()[1:] if line.strip()]


@pytest.mark.parametrize("kind", ["sqlite", "postgresql", "mariadb", "mssql", "oracle"])
def test_ddl_matches_model(kind: str) -> None:
    path = ROOT / "conf" / "sql" / f"exam_view.{kind}.sql"
    sql = re.sub(r"--[^\n]*", "", path.read_text())
    assert '"' not in sql and "[" not in sql and "`" not in sql  # unquoted names only
    assert [c.lower() for c in ddl_columns(path)] == [c.lower() for c in COLUMN_NAMES]
    assert "CREATE UNIQUE INDEX" in sql and "(PatientID)" in sql and "(RowTimestamp)" in sql
    if kind == "oracle":
        assert "VARCHAR2(64 CHAR)" in sql and "TEXT" not in sql
    if kind == "mssql":
        assert "RowTimestamp ROWVERSION" in sql  # the seed's `timestamp`
    if kind == "oracle":
        assert "RowTimestamp TIMESTAMP" in sql


@pytest.mark.parametrize("kind", ["sqlite", "postgresql", "mariadb"])
def test_ddl_runs_and_the_view_reads_it(kind: str, tmp_path: Path) -> None:
    url = {"sqlite": f"sqlite:///{tmp_path / 'v.db'}", "postgresql": PG_URL, "mariadb": MARIADB_URL}[kind]
    if kind != "sqlite" and not _reachable(url):
        pytest.skip(f"{kind} not reachable")
    name = f"v_ddl_{uuid.uuid4().hex[:8]}"
    script = (ROOT / "conf" / "sql" / f"exam_view.{kind}.sql").read_text().replace("v_image_cloud", name)
    statements = [s for s in re.sub(r"--[^\n]*", "", script).split(";") if s.strip()]
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            for statement in statements:
                conn.execute(text(statement))
        # the upper-case configured name finds the unquoted table
        table = exam_view_table(name.upper())
        with engine.connect() as conn:
            assert conn.execute(select(*table.c)).fetchall() == []
    finally:
        exam_view_table(name).drop(engine, checkfirst=True)
        engine.dispose()


# --- conversions ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "unit", "expected"),
    [("45", "岁", "045Y"), ("6", "月", "006M"), ("3", "周", "003W"), ("10", "天", "010D"),
     ("1000", "岁", ""), ("4x", "岁", ""), ("5", "年", ""), (None, "岁", ""), ("45", None, "")],
)  # fmt: skip
def test_age(value: str | None, unit: str | None, expected: str) -> None:
    assert mapping.age(value, unit) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [("1980-01-15", "19800115"), ("1980/1/5", "19800105"), ("19800115", "19800115"),
     ("1980-02-30", ""), ("80-01-15", ""), ("", ""), (None, "")],
)  # fmt: skip
def test_birth_date(value: str | None, expected: str) -> None:
    assert mapping.birth_date(value) == expected


def test_sex_and_names() -> None:
    assert [mapping.sex(v) for v in ("男", "女", "未知", None, "M")] == ["M", "F", "O", "", ""]
    assert mapping.pinyin_name("王小东") == "Wang^Xiaodong"
    assert mapping.person_name("王小东", "ideographic") == "=王小东"
    assert mapping.person_name("王小东", "single") == "王小东"
    assert mapping.person_name("王小东", "pinyin") == "Wang^Xiaodong=王小东"
    assert mapping.person_name("SMITH^JOHN", "pinyin") == "SMITH^JOHN"


# --- identifier validation ----------------------------------------------------------------------


def test_ranges() -> None:
    assert date_range("StudyDate", "20240101-") == (dt.date(2024, 1, 1), None)
    assert date_range("StudyDate", "-20240101") == (None, dt.date(2024, 1, 1))
    assert time_range("StudyTime", "08-09") == (8 * 3600, 9 * 3600 + 59 * 60 + 59.999999)
    for bad in ("-", "2024", "20240101-20230101", "20240101-20240102-20240103"):
        with pytest.raises(InvalidIdentifier):
            date_range("StudyDate", bad)
    with pytest.raises(InvalidIdentifier):
        time_range("StudyTime", "2300-0100")  # crossing midnight


def test_parse_identifier_keeps_requested_order_and_values() -> None:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientName = "王*"
    ds.StudyInstanceUID = ""
    ds.ModalitiesInStudy = ["CT", "MR"]
    query = parse_identifier(ds, "STUDY")
    assert query.requested == ["ModalitiesInStudy", "PatientName", "StudyInstanceUID"]
    assert query.values == {"ModalitiesInStudy": "CT\\MR", "PatientName": "王*"}
