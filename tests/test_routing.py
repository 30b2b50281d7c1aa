"""Archive routing by the view's Sysid / ExamineType (issue: several departmental archives)."""

from __future__ import annotations

import pytest

from dicomproxy.errors import ConfigError
from dicomproxy.pacs.routing import Unroutable, route

ARCHIVES = [
    {"name": "uis", "ae_title": "UISPACS", "host": "127.0.0.2", "port": 104, "sysids": ["UIS"]},
    {
        "name": "eis-endo",
        "ae_title": "EISPACS",
        "host": "127.0.0.3",
        "port": 104,
        "sysids": ["EIS"],
        "modalities": ["ES"],
        "retrieve": "c-get",
    },
]


@pytest.mark.parametrize(
    ("sysid", "modality", "expected"),
    [
        ("RIS", "CT", "pacs"),
        ("UIS", "US", "uis"),
        ("uis ", "US", "uis"),
        ("EIS", "ES", "eis-endo"),
        ("EIS", "XC", "pacs"),  # narrowed archive does not claim it; the catch-all [pacs] does
        (None, None, "pacs"),
    ],
)
def test_route_with_catch_all_pacs(make_config, sysid, modality, expected) -> None:
    cfg = make_config(archives=ARCHIVES)
    assert route(cfg, sysid, modality).name == expected


@pytest.mark.parametrize(("sysid", "modality"), [("ECG", "ECG"), ("EIS", "XC"), (None, "CT")])
def test_unroutable_when_pacs_is_narrowed(make_config, sysid, modality) -> None:
    cfg = make_config(pacs={"sysids": ["RIS"]}, archives=ARCHIVES)
    assert route(cfg, "RIS", "CT").name == "pacs"
    with pytest.raises(Unroutable) as info:
        route(cfg, sysid, modality)
    assert info.value.status == 0xC004


def test_archive_config_errors(make_config) -> None:
    with pytest.raises(ConfigError, match=r"archives\[0\]\.sysids: is required"):
        make_config(archives=[{"name": "x", "ae_title": "X", "host": "h", "port": 1}])
    with pytest.raises(ConfigError, match=r"archives\[1\]\.name: 'uis' is used twice"):
        make_config(archives=[ARCHIVES[0], {**ARCHIVES[1], "name": "uis"}])
    with pytest.raises(ConfigError, match=r"archives\[0\]\.retrieve"):
        make_config(archives=[{**ARCHIVES[0], "retrieve": "ftp"}])


def test_archive_stores_are_accepted_from_their_host(make_config) -> None:
    from dicomproxy.access import decide

    cfg = make_config(archives=ARCHIVES)
    assert decide(cfg, "UISPACS", "DICOMPROXY", "127.0.0.2").accept
    assert not decide(cfg, "UISPACS", "DICOMPROXY", "127.0.0.1").accept


def test_resolve_studies_gives_each_visible_study_its_sysid_and_examine_type(make_config, sqlite_url) -> None:
    from sqlalchemy import create_engine

    from dicomproxy.view.repository import ExamView
    from testkit.samples_dept import dept_exam_row, dept_study_specs
    from testkit.viewdb import create_view_table, insert_rows

    specs = {dept_exam_row(s)["Sysid"]: s for s in dept_study_specs()}
    engine = create_engine(sqlite_url)
    create_view_table(engine)
    rows = [dept_exam_row(s) for s in specs.values()]
    rows.append(dept_exam_row(specs["UIS"], ExamineID="HIDDEN", Privacy=2, Sysid="PIS"))  # invisible row
    insert_rows(engine, rows)
    engine.dispose()
    cfg = make_config(archives=ARCHIVES)
    view = ExamView(cfg)
    try:
        refs = view.resolve_studies(patient_id="P0101")
        assert [(r.sysid, r.modality) for r in refs] == [("RIS", "CT"), ("EIS", "ES"), ("ECG", "ECG")]
        assert view.resolve_study_uids(patient_id="P0101") == [r.uid for r in refs]
        (uis,) = view.resolve_studies(study_uids=[specs["UIS"].study_uid])
        assert (uis.sysid, uis.modality) == ("UIS", "US")  # the Privacy=2 row does not route it
        assert route(cfg, uis.sysid, uis.modality).name == "uis"
    finally:
        view.close()


def test_check_view_reports_rows_without_an_archive(make_config, sqlite_url) -> None:
    from sqlalchemy import create_engine

    from dicomproxy.view.check import check_view, format_report
    from testkit.samples import StudySpec, exam_row
    from testkit.viewdb import create_view_table, insert_rows

    ok = exam_row(StudySpec("CT"), ExamineID="ERIS", Sysid="RIS", ExamineType="CT")
    rows = [
        ok,
        {**ok, "ExamineID": "EUIS", "Sysid": "UIS", "ExamineType": "US"},
        {**ok, "ExamineID": "EENDO", "Sysid": "EIS", "ExamineType": "ES"},
        {**ok, "ExamineID": "EXC", "Sysid": "EIS", "ExamineType": "XC"},  # eis-endo takes ES only
        {**ok, "ExamineID": "EECG", "Sysid": "ECG", "ExamineType": "ECG"},
    ]
    engine = create_engine(sqlite_url)
    create_view_table(engine)
    insert_rows(engine, rows)
    engine.dispose()
    narrowed = check_view(make_config(pacs={"sysids": ["RIS"]}, archives=ARCHIVES))
    assert {r.rule: r.examples for r in narrowed.rules if r.count} == {"route": ["EXC", "EECG"]}
    assert "FAIL  route: 2 row(s)" in format_report(narrowed)
    catch_all = check_view(make_config(archives=ARCHIVES))  # [pacs] without sysids serves the rest
    assert catch_all.ok


@pytest.mark.parametrize(
    ("pacs", "archives", "message"),
    [
        ({"fallback": ["nope"]}, ARCHIVES, r"pacs\.fallback: 'nope' is not another archive's name"),
        ({}, [{**ARCHIVES[0], "fallback": ["uis"]}], r"archives\[0\]\.fallback: 'uis'"),
        ({}, [{**ARCHIVES[0], "fallback": "pacs"}], r"archives\[0\]\.fallback: must be a list"),
    ],
)
def test_fallback_config_errors(make_config, pacs, archives, message) -> None:
    with pytest.raises(ConfigError, match=message):
        make_config(pacs=pacs, archives=archives)


def test_fallback_config_parsed(make_config) -> None:
    cfg = make_config(archives=[{**ARCHIVES[0], "fallback": ["pacs"]}, ARCHIVES[1]])
    assert cfg.archives[0].fallback == ("pacs",) and cfg.pacs.fallback == ()
