"""``check-view`` on a deliberately broken view (every defect class), and the ``find`` CLI."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, select, text

from dicomproxy.cli import cli
from dicomproxy.config import Config
from dicomproxy.server import Server
from dicomproxy.view.check import check_view, format_report
from dicomproxy.view.repository import ExamView
from testkit.samples import StudySpec, demo_specs, exam_row
from testkit.viewdb import insert_rows
from tests.conftest import ConfigFactory, ViewDB, base_config_dict


def broken_rows() -> list[dict[str, Any]]:
    ok = exam_row(StudySpec("CT"), ExamineID="EOK")

    def bad(examine_id: str, **kw: Any) -> dict[str, Any]:
        return {**ok, "ExamineID": examine_id, **kw}

    return [
        ok,
        bad("EREQ", PatientName="", State=None),
        bad("ESEX", PatientSex="M"),
        bad("ESTATE", State="完成"),
        bad("ESYSID", Sysid="PACS"),
        bad("EUNIT", PatientAgeUnit="年"),
        bad("EBIRTH", PatientBirthday="15.01.1980"),
        bad("EAGE", PatientAge="四十"),
        bad("EUID", StudyInstanceUID="1.2.3,1.2.x"),
        bad("ENOUID", StudyInstanceUID=None, State="审核完成"),
        bad("EACC", AccessionNumber="A" * 17),
        bad("EHOSP", HospitalID="11111111"),
        bad("EHNAME", HospitalName="别的医院"),
        bad("EPRIV", Privacy=7),
        bad("ENODATE", PerformTime=None, RegTime=None),
        bad("EDUP"),
        bad("EDUP"),
    ]


EXPECTED = {
    "required:PatientName": ["EREQ"],
    "required:State": ["EREQ"],
    "enum:PatientSex": ["ESEX"],
    "enum:State": ["ESTATE"],
    "enum:Sysid": ["ESYSID"],
    "enum:PatientAgeUnit": ["EUNIT"],
    "date:PatientBirthday": ["EBIRTH"],
    "PatientAge": ["EAGE"],
    "uid:invalid": ["EUID"],
    "uid:missing": ["ENOUID"],
    "AccessionNumber:length": ["EACC"],
    "HospitalID": ["EHOSP"],
    "HospitalName": ["EHNAME"],
    "Privacy": ["EPRIV"],
    "StudyDate": ["ENODATE"],
    "ExamineID:duplicate": ["EDUP"],
}


def test_check_view_finds_every_defect_class(view_db: ViewDB, make_config: ConfigFactory) -> None:
    if view_db.kind != "sqlite":
        # AccessionNumber is varchar(16): PostgreSQL and MariaDB refuse the long one, as they should
        rows = [r for r in broken_rows() if r["ExamineID"] != "EACC"]
    else:
        rows = broken_rows()
    insert_rows(view_db.engine, rows, view_db.name)
    config = make_config(view={"url": view_db.url, "name": view_db.name})
    report = check_view(config)
    found = {r.rule: r.examples for r in report.rules if r.count}
    expected = dict(EXPECTED)
    if view_db.kind != "sqlite":
        del expected["AccessionNumber:length"]
    assert found == expected
    assert report.rows == len(rows) and report.missing_columns == []
    dup = next(r for r in report.rules if r.rule == "ExamineID:duplicate")
    assert dup.count == 2
    text_report = format_report(report)
    assert "FAIL  enum:PatientSex: 1 row(s)" in text_report and "OK    required:ExamineID" in text_report
    assert "王小东" not in text_report  # ExamineIDs only, no patient data


AGREE_HOSPITAL = "H7458A"


def visibility_rows() -> list[dict[str, Any]]:
    """One row on each side of every part of the visibility rule."""
    ok = exam_row(
        StudySpec("CT"), hospital_id=AGREE_HOSPITAL, ExamineID="VOK", StudyInstanceUID="1.2.840.9.1"
    )

    def row(examine_id: str, n: int, **kw: Any) -> dict[str, Any]:
        return {
            **ok,
            "ExamineID": examine_id,
            "AccessionNumber": examine_id,
            "StudyInstanceUID": f"1.2.840.9.{n}",
            **kw,
        }

    return [
        ok,
        row("VNULLPRIV", 2, Privacy=None),
        row("VPRIV1", 3, Privacy=1),
        row("VPRIV2", 4, Privacy=2),
        row("VCASE", 5, HospitalID=AGREE_HOSPITAL.lower()),  # MariaDB's SQL half lets it through
        row("VOTHER", 6, HospitalID="99999999"),
        row("VNOHOSP", 7, HospitalID=None),
        row("VBADUID", 8, StudyInstanceUID="1.2.abc"),
        row("VNOUID", 9, StudyInstanceUID=None),
        row("VEMPTYUID", 10, StudyInstanceUID=""),
        row("VTWO", 11, StudyInstanceUID="1.2.x,1.2.840.9.11"),
    ]


@pytest.mark.parametrize(("max_privacy", "visible"), [(0, 3), (1, 4)])
def test_check_view_counts_the_rows_the_repository_serves(
    view_db: ViewDB, make_config: ConfigFactory, max_privacy: int, visible: int
) -> None:
    """One visibility rule: check-view's "visible to dicomproxy" is exactly the set ExamView
    serves (its SQL half, then its Python half), on each real database."""
    insert_rows(view_db.engine, visibility_rows(), view_db.name)
    config = make_config(
        hospital={"id": AGREE_HOSPITAL},
        view={"url": view_db.url, "name": view_db.name, "max_privacy": max_privacy},
    )
    view = ExamView(config, view_db.engine)
    try:
        stmt = select(
            view.table.c.ExamineID,
            view.table.c.HospitalID,
            view.table.c.Privacy,
            view.table.c.StudyInstanceUID,
        )
        served = {r["ExamineID"] for r in view.stream(stmt.where(view.visible())) if view.is_visible(r)}
    finally:
        view.close()
    expected = {"VOK", "VNULLPRIV", "VTWO"} | ({"VPRIV1"} if max_privacy >= 1 else set())
    assert served == expected and len(served) == visible
    assert check_view(config, view_db.engine).visible_rows == visible


def test_check_view_clean_view_and_missing_columns(tmp_path: Path, make_config: ConfigFactory) -> None:
    url = f"sqlite:///{tmp_path / 'partial.db'}"
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE v_image_cloud (ExamineID varchar(64), PatientName varchar(64))"))
        conn.execute(text("INSERT INTO v_image_cloud VALUES ('E1', '王小东')"))
    report = check_view(make_config(view={"url": url}))
    assert "StudyInstanceUID" in report.missing_columns and "ExamineID" not in report.missing_columns
    assert not report.ok


def test_check_view_datetime_garbage_in_sqlite(
    sqlite_url: str, sqlite_view: Any, make_config: ConfigFactory
) -> None:
    engine = create_engine(sqlite_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE v_image_cloud SET performtime = 'yesterday' WHERE examineid = 'EA0002'"))
    report = check_view(make_config())
    assert {r.rule: r.examples for r in report.rules if r.count} == {"datetime:PerformTime": ["EA0002"]}


def write_config(tmp_path: Path, **sections: Any) -> Path:
    import tomllib  # noqa: F401  (3.11+: the config format is TOML)

    doc = base_config_dict(tmp_path, f"sqlite:///{tmp_path / 'view.db'}", **sections)
    lines = []
    for name, value in doc.items():
        if isinstance(value, list):
            for item in value:
                lines.append(f"[[{name}]]")
                lines += [f"{k} = {json.dumps(v, ensure_ascii=False)}" for k, v in item.items()]
        else:
            lines.append(f"[{name}]")
            lines += [f"{k} = {json.dumps(v, ensure_ascii=False)}" for k, v in value.items()]
    path = tmp_path / "dicomproxy.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_check_view_cli_text_and_json(tmp_path: Path, sqlite_view: Any) -> None:
    path = write_config(tmp_path)
    runner = CliRunner()
    ok = runner.invoke(cli, ["check-view", "-c", str(path)])
    assert ok.exit_code == 0, ok.output
    assert "view OK" in ok.output
    insert_rows(sqlite_view, [exam_row(demo_specs()[0], ExamineID="EX", PatientSex="?")])
    broken = runner.invoke(cli, ["check-view", "-c", str(path), "--json"])
    assert broken.exit_code == 1
    data = json.loads(broken.output)
    rules = {r["rule"]: r for r in data["rules"]}
    assert rules["enum:PatientSex"]["examples"] == ["EX"] and data["ok"] is False


def test_find_cli_prints_a_table(
    tmp_path: Path, sqlite_view: Any, make_config: ConfigFactory, run_proxy: Callable[[Config], Server]
) -> None:
    port = run_proxy(make_config()).port
    runner = CliRunner()
    args = ["find", "--port", str(port), "--aet", "DICOMPROXY", "--calling", "jobserver"]
    result = runner.invoke(cli, [*args, "-k", "PatientName=王*", "-k", "0008,0050=", "-k", "StudyDate="])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["PatientName", "AccessionNumber", "StudyDate"]  # as given
    assert sorted(line.split() for line in lines[2:4]) == [
        ["=王小东", "A0001", "20240102"],
        ["=王小东", "A0002", "20240305"],
    ]
    assert lines[-1] == "2 match(es), final status 0x0000"
    bad = runner.invoke(cli, [*args, "-k", "StudyDate=2024"])
    assert bad.exit_code == 1 and "0xA900" in bad.output
    usage = runner.invoke(cli, [*args, "-k", "NoSuchKey=1"])
    assert usage.exit_code == 2 and "unknown DICOM keyword 'NoSuchKey'" in usage.output
