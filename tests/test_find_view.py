"""The C-FIND suite, run against SQLite, PostgreSQL and MariaDB views (real servers), with
pynetdicom as the client (DCMTK findscu and Chinese charsets: test_find_charsets.py).

Each test runs a table of cases on one association (set-up per database is the cost)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import text

from dicomproxy.config import Config
from dicomproxy.view.repository import ExamView
from testkit.samples import uid_from
from testkit.viewdb import insert_rows
from tests.conftest import ViewDB
from tests.view_data import (
    CT,
    INVISIBLE_ACCESSIONS,
    INVISIBLE_UIDS,
    MF,
    MR,
    UID,
    US,
    FindClient,
    all_visible_uids,
)


def lit(acc: str) -> str:
    return uid_from("lit", acc)


@pytest.fixture
def client(find_port: int) -> Iterator[FindClient]:
    with FindClient(find_port) as c:
        yield c


def check_cases(client: FindClient, cases: list[tuple[dict[str, str], set[str]]]) -> None:
    failures = []
    for keys, expected in cases:
        found = client.uids(**keys)
        if found != expected:
            failures.append(f"{keys}: extra {found - expected}, missing {expected - found}")
    assert not failures, "\n".join(failures)


# --- matching types (PS3.4 C.2.2.2) ---------------------------------------------------------------


def test_universal_finds_every_visible_study_once(client: FindClient) -> None:
    result = client.find({"StudyInstanceUID": "", "PatientID": ""})
    assert result.status == 0
    uids = [str(ds.StudyInstanceUID) for ds in result.answers]
    assert sorted(uids) == sorted(all_visible_uids())  # no duplicates, no invisible


def test_single_value_and_wildcard(client: FindClient) -> None:
    demo = {CT.study_uid, MR.study_uid, US.study_uid, MF.study_uid}
    check_cases(
        client,
        [
            ({"PatientID": "P0001"}, {CT.study_uid, MR.study_uid}),
            ({"PatientID": "p0001"}, set()),  # LO single value is case-sensitive
            ({"AccessionNumber": "A0003"}, {US.study_uid}),
            ({"StudyInstanceUID": MF.study_uid}, {MF.study_uid}),
            ({"StudyID": "EA0002"}, {MR.study_uid}),
            ({"PatientSex": "F", "PatientID": "P000?"}, {US.study_uid, MF.study_uid, UID["reg"]}),
            ({"IssuerOfPatientID": "74580626.PACS", "AccessionNumber": "A000*"}, demo),
            ({"AccessionNumber": "AX_1"}, {lit("AX_1")}),
            ({"AccessionNumber": "AX_*"}, {lit("AX_1")}),  # "_" is literal, not LIKE's any-char
            ({"AccessionNumber": "AP%*"}, {lit("AP%1")}),  # "%" is literal
            ({"AccessionNumber": "A?XY*"}, set()),
            ({"AccessionNumber": "AXY?"}, {lit("AXY1")}),
            ({"PatientID": "P000*", "AccessionNumber": "A000?"}, demo),
            ({"StudyDescription": "*MR*"}, {MR.study_uid}),
            ({"PatientID": "*"}, all_visible_uids()),
        ],
    )


def test_date_and_time_ranges(client: FindClient) -> None:
    rules = {UID["m1"], UID["m2"], UID["m3"], UID["merged"], UID["null"], UID["dr"]}
    rules |= {lit(a) for a in ("AX_1", "AXY1", "AP%1", "APZ1", "AB\\1")}
    check_cases(
        client,
        [
            ({"StudyDate": "20240102"}, {CT.study_uid}),
            ({"StudyDate": "20240301-20240410"}, {MR.study_uid, US.study_uid}),
            ({"StudyDate": "-20240102"}, {CT.study_uid} | rules),  # rule rows are on 2023-12-01
            ({"StudyDate": "20240411-"}, {MF.study_uid, UID["reg"]}),
            ({"StudyDate": "20240601"}, {UID["reg"]}),  # PerformTime NULL: RegTime counts
            ({"StudyDate": "20240601-20240601", "StudyTime": "233000-"}, {UID["reg"]}),
            ({"StudyTime": "233000-235959"}, {UID["reg"]}),
            ({"StudyTime": "0800-0800", "StudyDate": "20231201"}, rules),
        ],
    )
    result = client.find({"StudyInstanceUID": UID["reg"], "StudyDate": "", "StudyTime": ""})
    assert (result.answers[0].StudyDate, result.answers[0].StudyTime) == ("20240601", "233000")


def test_uid_lists_multi_uid_cells_and_merged_rows(client: FindClient) -> None:
    check_cases(
        client,
        [
            (
                {"StudyInstanceUID": f"{UID['m2']}\\{UID['m3']}\\{CT.study_uid}\\{UID['oh']}"},
                {UID["m2"], UID["m3"], CT.study_uid},
            ),
            ({"AccessionNumber": "EMULTI"}, {UID["m1"], UID["m2"], UID["m3"]}),
        ],
    )
    result = client.find({"StudyInstanceUID": "", "AccessionNumber": "EMULTI", "PatientID": ""})
    assert len(result.answers) == 3 and {ds.PatientID for ds in result.answers} == {"P0003"}
    merged = client.find({"StudyInstanceUID": UID["merged"], "ModalitiesInStudy": ""})
    assert len(merged.answers) == 1
    assert list(merged.answers[0].ModalitiesInStudy) == ["CT", "MR"]


def test_modalities_in_study_multi_value_is_or(client: FindClient) -> None:
    check_cases(
        client,
        [
            ({"ModalitiesInStudy": "US\\OT"}, {US.study_uid, MF.study_uid}),
            ({"ModalitiesInStudy": "DX"}, {UID["dr"]}),  # the RIS wrote DR
            ({"ModalitiesInStudy": "MR", "PatientID": "P0004"}, {UID["merged"]}),
            ({"ModalitiesInStudy": "M?"}, {MR.study_uid, UID["merged"]}),
        ],
    )
    result = client.find({"StudyInstanceUID": UID["dr"], "ModalitiesInStudy": ""})
    assert result.answers[0].ModalitiesInStudy == "DX"


def test_patient_level_one_answer_per_patient(client: FindClient) -> None:
    result = client.find(
        {"PatientID": "", "PatientName": "", "NumberOfPatientRelatedStudies": ""},
        level="PATIENT",
        model="PATIENT",
    )
    assert result.status == 0
    ids = [ds.PatientID for ds in result.answers]
    assert sorted(ids) == ["P0001", "P0002", "P0003", "P0004", "P0006", "P0007", "P0008"]
    by_id = {ds.PatientID: ds for ds in result.answers}
    assert by_id["P0003"].NumberOfPatientRelatedStudies == 3
    assert by_id["P0004"].NumberOfPatientRelatedStudies == 1
    one = client.find({"PatientID": "P0002", "PatientSex": ""}, level="PATIENT", model="PATIENT")
    assert [(ds.PatientID, ds.PatientSex) for ds in one.answers] == [("P0002", "F")]


# --- conversions and returned keys ----------------------------------------------------------------


def test_conversions_and_only_requested_keys(client: FindClient) -> None:
    keys = {
        "StudyInstanceUID": UID["reg"],
        "PatientSex": "",
        "PatientAge": "",
        "PatientBirthDate": "",
        "InstitutionName": "",
        "ReferringPhysicianName": "",
    }
    (ds,) = client.find(keys).answers
    assert (ds.PatientSex, ds.PatientAge, ds.PatientBirthDate) == ("F", "006M", "19900708")
    assert ds.InstitutionName == "温岭市第一人民医院"
    assert str(ds.ReferringPhysicianName) == "=李医生"
    returned = {elem.keyword for elem in ds}
    assert returned == {"SpecificCharacterSet", "QueryRetrieveLevel", *keys}
    (ct,) = client.find({"AccessionNumber": "A0001", "PatientAge": "", "StudyID": ""}).answers
    assert (ct.PatientAge, ct.StudyID, ct.StudyInstanceUID) == ("043Y", "EA0001", CT.study_uid)


# --- visibility (the security boundary) -----------------------------------------------------------


def test_invisible_rows_are_never_found(client: FindClient) -> None:
    probes: list[dict[str, str]] = [
        {"PatientID": "P0005"},
        {"PatientName": "赵敏"},
        {"PatientName": "=赵*"},
        {"PatientName": "Zhao*"},
        *({"AccessionNumber": a} for a in INVISIBLE_ACCESSIONS),
        *({"StudyInstanceUID": u} for u in INVISIBLE_UIDS),
        {"StudyInstanceUID": "\\".join(INVISIBLE_UIDS)},
    ]
    check_cases(client, [(keys, set()) for keys in probes])
    for keys in ({"PatientID": "P0005"}, {"PatientName": "赵敏"}):
        patient = client.find(keys, level="PATIENT", model="PATIENT")
        assert patient.status == 0 and patient.answers == []


def test_resolve_study_uids_visibility(view_config: Config) -> None:
    view = ExamView(view_config)
    try:
        assert view.resolve_study_uids(study_uids=[*INVISIBLE_UIDS, UID["null"], "bad uid"]) == [UID["null"]]
        for acc in INVISIBLE_ACCESSIONS:
            assert view.resolve_study_uids(accession=acc) == []
        assert view.resolve_study_uids(patient_id="P0005") == []
        assert view.resolve_study_uids(accession="EMULTI") == [UID["m1"], UID["m2"], UID["m3"]]
        assert view.resolve_study_uids(patient_id="P0001") == [CT.study_uid, MR.study_uid]
        assert view.resolve_study_uids(study_uids=[MR.study_uid, CT.study_uid], patient_id="P0001") == [
            MR.study_uid,
            CT.study_uid,
        ]
        assert view.resolve_study_uids(study_uids=[CT.study_uid], accession="A0002") == []
        assert view.resolve_study_uids() == []
    finally:
        view.close()


# --- bad identifiers ----------------------------------------------------------------------------


BAD: list[tuple[str, str, dict[str, Any]]] = [
    ("SERIE", "STUDY", {"StudyInstanceUID": ""}),
    ("PATIENT", "STUDY", {"PatientID": ""}),  # no PATIENT level in Study Root
    ("STUDY", "STUDY", {"StudyDate": "2024-01-02"}),
    ("STUDY", "STUDY", {"StudyDate": "20240230"}),
    ("STUDY", "STUDY", {"StudyDate": "20240301-20240101"}),
    ("STUDY", "STUDY", {"StudyTime": "2500"}),
    ("STUDY", "STUDY", {"StudyInstanceUID": "1.2.*"}),
    ("STUDY", "STUDY", {"SeriesInstanceUID": ""}),  # a SERIES key at STUDY level
    ("PATIENT", "PATIENT", {"StudyInstanceUID": ""}),  # a STUDY key at PATIENT level
    ("SERIES", "STUDY", {"SeriesInstanceUID": ""}),  # no StudyInstanceUID above
    ("STUDY", "STUDY", {"AccessionNumber": "AB\\1"}),  # "\" delimits values; VM is 1
]


def test_bad_identifiers_get_a900_with_a_reason(client: FindClient) -> None:
    for level, model, keys in BAD:
        result = client.find(keys, level=level, model=model)
        assert (result.status, bool(result.comment), result.answers) == (0xA900, True, []), (level, keys)
    assert client.uids(PatientID="P0001") == {CT.study_uid, MR.study_uid}  # still serving


# --- database failures ----------------------------------------------------------------------------


def test_view_failure_answers_c001_and_server_keeps_serving(
    view_db: ViewDB, client: FindClient, caplog: pytest.LogCaptureFixture
) -> None:
    assert client.uids(PatientID="P0001")
    with view_db.engine.begin() as conn:
        conn.execute(text(f"ALTER TABLE {view_db.name} RENAME TO {view_db.name}_x"))
    try:
        result = client.find({"StudyInstanceUID": "", "PatientID": "P0001"})
        assert result.status == 0xC001
        assert result.comment and result.comment.startswith("exam view unavailable")
        assert sum("0xC001" in r.getMessage() for r in caplog.records) == 1
    finally:
        with view_db.engine.begin() as conn:
            conn.execute(text(f"ALTER TABLE {view_db.name}_x RENAME TO {view_db.name}"))
    assert client.uids(PatientID="P0001") == {CT.study_uid, MR.study_uid}


def test_patient_ids_differing_in_case(view_db: ViewDB, client: FindClient) -> None:
    """LO is case-sensitive: PX1 and px1 are two patients, also under a case-insensitive
    collation (MariaDB utf8mb4_general_ci, SQL Server Chinese_PRC_CI_AS)."""
    from tests.view_data import _row

    insert_rows(
        view_db.engine,
        [
            _row("ECASE1", "PX1", "郑一", "1.2.840.7.1"),
            _row("ECASE2", "px1", "郑二", "1.2.840.7.2"),
            _row("ECASE3", "PX1", "郑一", "1.2.840.7.3"),
        ],
        view_db.name,
    )
    assert client.uids(PatientID="PX1") == {"1.2.840.7.1", "1.2.840.7.3"}
    assert client.uids(PatientID="px?") == {"1.2.840.7.2"}
    result = client.find(
        {"PatientID": "", "NumberOfPatientRelatedStudies": ""}, level="PATIENT", model="PATIENT"
    )
    counts = [
        (ds.PatientID, ds.NumberOfPatientRelatedStudies)
        for ds in result.answers
        if ds.PatientID.upper() == "PX1"
    ]
    assert sorted(counts) == [("PX1", 2), ("px1", 1)]
