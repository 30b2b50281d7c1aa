"""Visibility is a security boundary (issue 18): the cases the C-FIND and relay suites do not reach.

- A hospital id with letters, and rows whose HospitalID differs from it only in letter case: on
  MariaDB's default ``utf8mb4_*_ci`` collation the SQL ``=`` lets them through and only the
  Python re-check (``ExamView.is_visible``) keeps them hidden — as on SQL Server's
  ``Chinese_PRC_CI_AS``.
- The Privacy boundary on both sides: 1 hidden at ``max_privacy`` 0 and visible at 1, 2 hidden at 1.
- The SQL half of the predicate (``ExamView.visible()``), compiled on every supported dialect, and
  shown on the real databases to keep other hospitals' and higher-privacy rows from being fetched
  at all (the Python re-check would hide them, but they would cross the wire and the query would
  lose its index).

Each test names the hand-planted mutant it kills; docs/mutation.md has the table.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.dialects import mssql, mysql, oracle, postgresql, sqlite
from sqlalchemy.engine import Dialect

from dicomproxy.config import Config
from dicomproxy.server import Server
from dicomproxy.view.model import exam_view_table
from dicomproxy.view.repository import ExamView
from testkit.samples import StudySpec, exam_row, uid_from
from testkit.viewdb import insert_rows
from tests.conftest import ViewDB
from tests.view_data import CALLING, FindClient

#: A hospital id with letters, so that a case-insensitive collation matters.
HOSPITAL = "Wl-Hosp01"
PATIENT = "PB0001"


def _row(examine_id: str, **kw: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "ExamineID": examine_id,
        "AccessionNumber": examine_id,
        "PatientID": PATIENT,
        "StudyInstanceUID": uid_from("boundary", examine_id),
        **kw,
    }
    return exam_row(StudySpec("CT"), hospital_id=HOSPITAL, **fields)


#: ExamineID → (row, the lowest max_privacy at which it is visible; None = never).
ROWS: dict[str, tuple[dict[str, Any], int | None]] = {
    "BOK": (_row("BOK"), 0),
    "BNULL": (_row("BNULL", Privacy=None), 0),
    "BP1": (_row("BP1", Privacy=1), 1),
    "BP2": (_row("BP2", Privacy=2), 2),
    "BLOWER": (_row("BLOWER", HospitalID=HOSPITAL.lower()), None),
    "BUPPER": (_row("BUPPER", HospitalID=HOSPITAL.upper()), None),
    "BOTHER": (_row("BOTHER", HospitalID="99999999"), None),
    "BNOUID": (_row("BNOUID", StudyInstanceUID=None), None),
}


def uid(examine_id: str) -> str:
    return uid_from("boundary", examine_id)


def visible_at(max_privacy: int) -> set[str]:
    return {uid(e) for e, (_, lowest) in ROWS.items() if lowest is not None and lowest <= max_privacy}


@pytest.fixture
def boundary_db(view_db: ViewDB) -> ViewDB:
    insert_rows(view_db.engine, [row for row, _ in ROWS.values()], view_db.name)
    return view_db


@pytest.fixture
def boundary_config(boundary_db: ViewDB, make_config: Callable[..., Config]) -> Callable[[int], Config]:
    def make(max_privacy: int) -> Config:
        return make_config(
            hospital={"id": HOSPITAL},
            view={"url": boundary_db.url, "name": boundary_db.name, "max_privacy": max_privacy},
        )

    return make


@pytest.fixture
def exam_view(boundary_config: Callable[[int], Config]) -> Iterator[Callable[[int], ExamView]]:
    views: list[ExamView] = []

    def make(max_privacy: int) -> ExamView:
        view = ExamView(boundary_config(max_privacy))
        views.append(view)
        return view

    yield make
    for view in views:
        view.close()


# --- hand-planted mutant 2 (Python re-check of HospitalID) and 3 (Privacy boundary) -----------


def test_the_database_collation_is_what_the_test_needs(boundary_db: ViewDB) -> None:
    """MariaDB's default collation is case-insensitive (the deployment trap the re-check exists
    for); SQLite's and PostgreSQL's are not. Without this the mixed-case tests prove nothing."""
    table = exam_view_table(boundary_db.name)
    with boundary_db.engine.connect() as conn:
        n = conn.execute(select(func.count()).where(table.c.HospitalID == HOSPITAL)).scalar_one()
        if boundary_db.kind == "mariadb":
            collation = conn.execute(
                text(
                    "SELECT COLLATION_NAME FROM information_schema.COLUMNS "
                    "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = :t AND COLUMN_NAME = 'HospitalID'"
                ),
                {"t": boundary_db.name},
            ).scalar_one()
            assert str(collation).endswith("_ci"), collation
    same_case = sum(1 for row, _ in ROWS.values() if row["HospitalID"] == HOSPITAL)
    assert n == (same_case + 2 if boundary_db.kind == "mariadb" else same_case)


@pytest.mark.parametrize("max_privacy", [0, 1])
def test_resolve_hides_case_variants_and_privacy(
    exam_view: Callable[[int], ExamView], max_privacy: int
) -> None:
    """The relay's entry point, by every key: only exact-HospitalID rows within max_privacy."""
    view = exam_view(max_privacy)
    expected = visible_at(max_privacy)
    every = [uid(e) for e in ROWS]
    assert set(view.resolve_study_uids(study_uids=every)) == expected
    assert set(view.resolve_study_uids(patient_id=PATIENT)) == expected
    for examine_id in ROWS:
        found = set(view.resolve_study_uids(accession=examine_id))
        assert found == ({uid(examine_id)} & expected), examine_id
        assert set(view.resolve_study_uids(study_uids=[uid(examine_id)])) == found, examine_id


def test_resolve_keys_match_exactly(boundary_db: ViewDB, exam_view: Callable[[int], ExamView]) -> None:
    """Accession Number and Patient ID are exact-match keys for retrieval too: a case variant
    finds nothing, also where the collation lets it through (re-checked in Python) — and a
    case-variant row met first (same PerformTime, lower ExamineID) does not hide the exact one."""
    insert_rows(
        boundary_db.engine,
        [
            _row("BAACC", AccessionNumber="bok"),  # sorts before BOK; MariaDB's = matches it for 'BOK'
            _row("BAPAT", PatientID=PATIENT.lower()),  # sorts before every PB0001 row
        ],
        boundary_db.name,
    )
    view = exam_view(1)
    assert view.resolve_study_uids(accession="BOK") == [uid("BOK")]
    assert view.resolve_study_uids(accession="bok") == [uid("BAACC")]
    assert view.resolve_study_uids(accession="Bok", patient_id=PATIENT) == []
    assert view.resolve_study_uids(accession="BOK", patient_id=PATIENT.lower()) == []
    assert view.resolve_study_uids(patient_id=PATIENT.lower()) == [uid("BAPAT")]
    assert set(view.resolve_study_uids(patient_id=PATIENT)) == visible_at(1) | {uid("BAACC")}
    assert view.resolve_study_uids(study_uids=[uid("BOK")], patient_id=PATIENT.lower()) == []
    assert view.resolve_study_uids(study_uids=[uid("BP1"), uid("BOK")], patient_id=PATIENT) == [
        uid("BP1"),
        uid("BOK"),
    ]
    assert view.resolve_study_uids(study_uids=["not a uid", ""]) == []
    assert view.resolve_study_uids() == []


@pytest.mark.parametrize("max_privacy", [0, 1])
def test_cfind_hides_case_variants_and_privacy(
    boundary_config: Callable[[int], Config], run_proxy: Callable[[Config], Server], max_privacy: int
) -> None:
    """C-FIND at STUDY and PATIENT level over a real association answers the same visible set."""
    server = run_proxy(boundary_config(max_privacy))
    expected = visible_at(max_privacy)
    with FindClient(server.port, CALLING) as client:
        assert client.uids() == expected
        assert client.uids(PatientID=PATIENT) == expected
        for examine_id in ROWS:
            assert client.uids(AccessionNumber=examine_id) == {uid(examine_id)} & expected, examine_id
            assert client.uids(StudyInstanceUID=uid(examine_id)) == {uid(examine_id)} & expected


@pytest.mark.parametrize(
    ("privacy", "max_privacy", "visible"),
    [
        (None, 0, True),
        (0, 0, True),
        (1, 0, False),
        (1, 1, True),
        (2, 1, False),
        (2, 2, True),
        (3, 2, False),
    ],
)
def test_python_half_privacy_boundary(
    make_config: Callable[..., Config], privacy: int | None, max_privacy: int, visible: bool
) -> None:
    """``is_visible`` alone: the SQL half normally hides these first, so only this sees a bug here."""
    view = ExamView(make_config(hospital={"id": HOSPITAL}, view={"max_privacy": max_privacy}))
    try:
        row = {"HospitalID": HOSPITAL, "Privacy": privacy, "StudyInstanceUID": "1.2.3"}
        assert view.is_visible(row) is visible
    finally:
        view.close()


@pytest.mark.parametrize(
    ("hospital", "cell", "visible"),
    [
        (HOSPITAL, "1.2.3", True),
        (HOSPITAL.lower(), "1.2.3", False),
        (HOSPITAL.upper(), "1.2.3", False),
        ("99999999", "1.2.3", False),
        (None, "1.2.3", False),
        (HOSPITAL, None, False),
        (HOSPITAL, "1.2.abc,,", False),
    ],
)
def test_python_half_hospital_and_uid(
    make_config: Callable[..., Config], hospital: str | None, cell: str | None, visible: bool
) -> None:
    view = ExamView(make_config(hospital={"id": HOSPITAL}))
    try:
        row = {"HospitalID": hospital, "Privacy": 0, "StudyInstanceUID": cell}
        assert view.is_visible(row) is visible
    finally:
        view.close()


# --- hand-planted mutant 7 (the SQL half dropped) ---------------------------------------------

DIALECTS: dict[str, Callable[..., Dialect]] = {
    "sqlite": sqlite.dialect,
    "postgresql": postgresql.dialect,
    "mysql": mysql.dialect,
    "mssql": mssql.dialect,
    "oracle": oracle.dialect,
}


@pytest.mark.parametrize("dialect", sorted(DIALECTS))
@pytest.mark.parametrize("max_privacy", [0, 2])
def test_sql_half_compiled_per_dialect(
    make_config: Callable[..., Config], dialect: str, max_privacy: int
) -> None:
    """``ExamView.visible()`` compiles, on each dialect and without a server, to
    ``hospitalid = :h AND (privacy IS NULL OR privacy <= :p) AND studyinstanceuid IS NOT NULL``
    with the configured values bound (never inlined), on unquoted lower-case column names."""
    view = ExamView(make_config(hospital={"id": HOSPITAL}, view={"max_privacy": max_privacy}))
    try:
        compiled = view.visible().compile(dialect=DIALECTS[dialect](paramstyle="named"))
    finally:
        view.close()
    sql = " ".join(str(compiled).split())
    shape = re.fullmatch(
        r"(?:\w+\.)?hospitalid = :(\w+)(?:::\w+)? AND "  # PostgreSQL renders a ::VARCHAR cast
        r"\((?:\w+\.)?privacy IS NULL OR (?:\w+\.)?privacy <= :(\w+)(?:::\w+)?\) "
        r"AND (?:\w+\.)?studyinstanceuid IS NOT NULL",
        sql,
    )
    assert shape is not None, sql
    hospital_param, privacy_param = shape.groups()
    assert compiled.params[hospital_param] == HOSPITAL
    assert compiled.params[privacy_param] == max_privacy
    assert HOSPITAL not in sql  # bound, not inlined


class Fetched:
    """Every row ``ExamView.stream`` takes from the database, before any Python re-check."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        original = ExamView.stream

        def recording(view: ExamView, stmt: Any, **kwargs: Any) -> Iterator[dict[str, Any]]:
            for row in original(view, stmt, **kwargs):
                self.rows.append(row)
                yield row

        monkeypatch.setattr(ExamView, "stream", recording)

    def hospitals(self) -> set[str]:
        return {str(r["HospitalID"]) for r in self.rows if "HospitalID" in r}

    def examine_ids(self) -> set[str]:
        """The rows fetched, named by ExamineID (through their StudyInstanceUID: every statement
        selects it, for the re-check)."""
        by_uid = {uid(e): e for e in ROWS}
        return {
            by_uid.get(str(r.get("StudyInstanceUID")), f"?{r.get('StudyInstanceUID')}") for r in self.rows
        }


@pytest.mark.parametrize("max_privacy", [0, 1])
def test_sql_half_keeps_rows_off_the_wire(
    boundary_db: ViewDB,
    boundary_config: Callable[[int], Config],
    run_proxy: Callable[[Config], Server],
    monkeypatch: pytest.MonkeyPatch,
    max_privacy: int,
) -> None:
    """Other hospitals' rows and rows above max_privacy are never fetched from the database —
    neither by the relay's resolution nor by C-FIND (the Python re-check would hide them too
    late). Case variants of the hospital id come back only where the collation is
    case-insensitive (MariaDB), and are then dropped in Python."""
    fetched = Fetched()
    fetched.install(monkeypatch)
    config = boundary_config(max_privacy)
    view = ExamView(config)
    try:
        assert set(view.resolve_study_uids(patient_id=PATIENT)) == visible_at(max_privacy)
        assert set(view.resolve_study_uids(study_uids=[uid(e) for e in ROWS])) == visible_at(max_privacy)
    finally:
        view.close()
    server = run_proxy(config)
    with FindClient(server.port, CALLING) as client:
        assert client.uids() == visible_at(max_privacy)
        assert client.uids(PatientID=PATIENT) == visible_at(max_privacy)
    assert fetched.rows, "nothing was read through ExamView.stream"
    allowed = {"BOK", "BNULL"} | ({"BP1"} if max_privacy >= 1 else set())
    case_variants = {"BLOWER", "BUPPER"} if boundary_db.kind == "mariadb" else set()
    ids = fetched.examine_ids()
    assert ids <= allowed | case_variants, sorted(ids - allowed)
    assert allowed <= ids
    assert {h.casefold() for h in fetched.hospitals()} == {HOSPITAL.casefold()}
    assert all(r.get("Privacy") is None or int(r["Privacy"]) <= max_privacy for r in fetched.rows)
