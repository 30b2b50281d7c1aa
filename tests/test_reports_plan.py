"""``[reports] in_retrieve`` rules without sockets: which files a retrieval takes out of the
request (and what stays for the PACS), C-FIND matching of the files' series and objects, and
the study counts. The end-to-end proof against real peers is tests/test_reports_retrieve.py."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from dicomproxy.config import ReportsConfig
from dicomproxy.pacs.client import RetrieveKey
from dicomproxy.pacs.routing import StudyRef
from dicomproxy.relay.outcome import JobState
from dicomproxy.relay.reports import plan_reports
from dicomproxy.reports.encode import ENCAPSULATED_PDF, SECONDARY_CAPTURE, series_uid
from dicomproxy.reports.study import (
    StudyFile,
    answer,
    image_attributes,
    likely_modality,
    likely_sop_class,
    series_attributes,
    study_files,
)
from dicomproxy.view.service import with_files
from testkit.samples import StudySpec, exam_row

SPEC = StudySpec("CT", accession="RP001", series=1, images_per_series=1, seed=181)
PDF = b"%PDF-1.4\n%%EOF\n"


def rows_with(tmp_path: Path, order: str = "", report: str = "") -> list[dict[str, Any]]:
    return [exam_row(SPEC, OrderFilePath=order, ReportFilePath=report)]


def planner(rows: list[dict[str, Any]]) -> Any:
    def rows_of(uids: Sequence[str]) -> Mapping[str, Sequence[Mapping[str, Any]]]:
        return {SPEC.study_uid: rows} if SPEC.study_uid in uids else {}

    return rows_of


def test_study_level_takes_every_file_and_keeps_the_study_for_the_pacs(tmp_path: Path) -> None:
    rows = rows_with(tmp_path, "/x/order.jpg", "http://ris/r.pdf")
    routed = [(RetrieveKey(SPEC.study_uid), StudyRef(SPEC.study_uid))]
    left, work = plan_reports(routed, planner(rows), ReportsConfig(), "ideographic")
    assert left == routed
    assert [(w.file.role, w.file.location, w.ready) for w in work] == [
        ("order", "/x/order.jpg", None),
        ("report", "http://ris/r.pdf", None),
    ]


def test_a_study_without_files_sends_none() -> None:
    routed = [(RetrieveKey(SPEC.study_uid), StudyRef(SPEC.study_uid))]
    left, work = plan_reports(routed, planner(rows_with(Path("."))), ReportsConfig(), "ideographic")
    assert (left, work) == (routed, [])


@pytest.mark.parametrize("with_pacs_series", [False, True])
def test_series_level_never_turns_into_a_whole_study_for_the_pacs(with_pacs_series: bool) -> None:
    """A SERIES key naming only a file's series must not reach the PACS as a key without series
    (which would be the whole study); other series of the key stay the PACS's."""
    rows = rows_with(Path("."), "/x/order.jpg", "http://ris/r.pdf")
    series = (series_uid(SPEC.study_uid, "report"), *([SPEC.series_uid(0)] if with_pacs_series else []))
    routed = [(RetrieveKey(SPEC.study_uid, series), StudyRef(SPEC.study_uid))]
    left, work = plan_reports(routed, planner(rows), ReportsConfig(), "ideographic")
    assert [w.file.role for w in work] == ["report"]
    if with_pacs_series:
        assert [key for key, _ in left] == [RetrieveKey(SPEC.study_uid, (SPEC.series_uid(0),))]
    else:
        assert left == []


def test_image_level_fetches_the_file_and_takes_only_the_asked_object(tmp_path: Path) -> None:
    (tmp_path / "r.pdf").write_bytes(PDF)
    rows = rows_with(tmp_path, report=str(tmp_path / "r.pdf"))
    report_series = series_uid(SPEC.study_uid, "report")
    (obj,) = [f.make(ReportsConfig(), "ideographic") for f in study_files(SPEC.study_uid, rows)]
    for sops, expected in (((obj.sop_instance_uid,), 1), (("1.2.3.4",), 0)):
        routed = [(RetrieveKey(SPEC.study_uid, (report_series,), sops), StudyRef(SPEC.study_uid))]
        left, work = plan_reports(routed, planner(rows), ReportsConfig(), "ideographic")
        assert left == [] and len(work) == expected
        assert all(w.ready is not None and w.ready.sop_instance_uid == obj.sop_instance_uid for w in work)


def test_an_unreadable_file_asked_by_uid_is_not_announced(tmp_path: Path) -> None:
    rows = rows_with(tmp_path, report=str(tmp_path / "missing.pdf"))
    key = RetrieveKey(SPEC.study_uid, (series_uid(SPEC.study_uid, "report"),), ("1.2.3",))
    left, work = plan_reports(
        [(key, StudyRef(SPEC.study_uid))], planner(rows), ReportsConfig(), "ideographic"
    )
    assert (left, work) == ([], [])


def _identifier(**keys: Any) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "SERIES"
    for k, v in keys.items():
        setattr(ds, k, v)
    return ds


@pytest.mark.parametrize(
    ("keys", "matches"),
    [
        ({"SeriesInstanceUID": "", "Modality": ""}, True),
        ({"Modality": "DOC"}, True),
        ({"Modality": "CT"}, False),
        ({"SeriesDescription": "Rep*"}, True),
        ({"SeriesDescription": "Scan*"}, False),
        ({"SeriesNumber": "9902"}, True),
        ({"SeriesInstanceUID": ["1.2.3", "REPORT"]}, True),
        ({"SeriesInstanceUID": "1.2.3"}, False),
        ({"BodyPartExamined": "CHEST"}, True),  # a key we do not answer is not a filter
    ],
)
def test_series_answers_match_like_the_view(keys: dict[str, Any], matches: bool) -> None:
    (file,) = study_files(SPEC.study_uid, rows_with(Path("."), report="http://ris/r.pdf"))
    if keys.get("SeriesInstanceUID") and isinstance(keys["SeriesInstanceUID"], list):
        keys["SeriesInstanceUID"] = ["1.2.3", file.series_uid]
    ds = answer(_identifier(StudyInstanceUID=SPEC.study_uid, **keys), series_attributes(file), "ISO_IR 192")
    assert (ds is not None) == matches
    if ds is not None:
        assert ds.StudyInstanceUID == SPEC.study_uid and ds.QueryRetrieveLevel == "SERIES"
        assert set(keys) <= {e.keyword for e in ds}


def test_study_counts_add_one_series_and_instance_per_file() -> None:
    pacs = {
        "NumberOfStudyRelatedSeries": "2",
        "NumberOfStudyRelatedInstances": "40",
        "SOPClassesInStudy": ["1.2"],
    }
    out = with_files(pacs, {"order": "/x/a.JPG", "report": "/x/r.pdf"})
    assert out == {
        "NumberOfStudyRelatedSeries": "4",
        "NumberOfStudyRelatedInstances": "42",
        "SOPClassesInStudy": sorted({"1.2", str(SECONDARY_CAPTURE), str(ENCAPSULATED_PDF)}),
    }
    assert pacs["NumberOfStudyRelatedInstances"] == "40"  # the cached PACS answer is not changed
    assert with_files({"NumberOfStudyRelatedInstances": ""}, {"report": "r.pdf"}) == {
        "NumberOfStudyRelatedInstances": ""  # the PACS gave no count: none is made up
    }


def test_remaining_counts_files_until_sent_or_failed() -> None:
    """Pending responses carry the files in Number of Remaining Sub-operations (PS3.4 C.4.2.1.6)."""
    from dicomproxy.pacs.client import InstanceRef
    from dicomproxy.relay.journal import InstanceRecord

    refs = {u: InstanceRef(SPEC.study_uid, "2.1", u, "1.2") for u in ("1.1", "1.2", "1.3")}
    state = JobState(1, expected=refs, files=2, extras=2)
    assert state.remaining == 5
    state.count(InstanceRecord("1.1", "failed"), "Success")
    state.count_extra(InstanceRecord("9.9", "failed"), "Success")
    assert state.remaining == 3  # 2 images + 1 file
    state.count_unavailable()
    state.count_missing()
    assert (state.completed, state.failed, state.remaining) == (2, 3, 0)
    assert state.failed_uids == ["1.2", "1.3"]  # the unfetched file has no UID to name


@pytest.mark.parametrize(
    ("location", "modality", "sop_class"),
    [
        ("/x/A.JPG ", "OT", SECONDARY_CAPTURE),
        ("http://ris/a.jpeg", "OT", SECONDARY_CAPTURE),
        ("\\\\ris\\r\\a.jfif", "OT", SECONDARY_CAPTURE),
        ("a.jpe", "OT", SECONDARY_CAPTURE),
        ("/x/r.pdf", "DOC", ENCAPSULATED_PDF),
        ("/x/jpg", "DOC", ENCAPSULATED_PDF),
    ],
)
def test_what_a_file_will_likely_become_is_named_from_its_suffix(
    location: str, modality: str, sop_class: str
) -> None:
    assert (likely_modality(location), likely_sop_class(location)) == (modality, str(sop_class))


def test_a_study_file_names_no_patient_data_and_compares_without_its_rows() -> None:
    """StudyFiles are logged and collected: their repr carries no row (names, IDs), two files of
    one study, role and location are the same file whatever rows came with them."""
    rows = rows_with(Path("."), report="http://ris/r.pdf")
    (file,) = study_files(SPEC.study_uid, rows)
    assert SPEC.patient.patient_id not in repr(file) and SPEC.patient.name not in repr(file)
    again = StudyFile(SPEC.study_uid, "report", "http://ris/r.pdf", [])
    assert file == again and len({file, again}) == 1


def test_image_answers_name_the_object(tmp_path: Path) -> None:
    (tmp_path / "r.pdf").write_bytes(PDF)
    (file,) = study_files(SPEC.study_uid, rows_with(tmp_path, report=str(tmp_path / "r.pdf")))
    obj = file.make(ReportsConfig(), "ideographic")
    assert image_attributes(obj) == {
        "StudyInstanceUID": SPEC.study_uid,
        "SeriesInstanceUID": file.series_uid,
        "SOPInstanceUID": obj.sop_instance_uid,
        "SOPClassUID": str(ENCAPSULATED_PDF),
        "InstanceNumber": "1",
        "Modality": "DOC",
        "SeriesNumber": "9902",
    }


@pytest.mark.parametrize(
    ("keys", "matches"),
    [
        ({"SeriesInstanceUID": ["1.2.3", "1.2.4"]}, False),  # a list of UIDs none of which is ours
        ({"SeriesDescription": "Repor? (dicomproxy)"}, True),
        ({"SeriesDescription": "Repo? (dicomproxy)"}, False),
        ({"SeriesDescription": "*"}, True),
        ({"SeriesDescription": "Repor[t] (dicomproxy)"}, False),  # no wildcard: "[" is literal
        ({"SeriesDescription": "Report (dicomproxy)"}, True),
        ({"SeriesDescription": "report (dicomproxy)"}, False),  # case-sensitive (PS3.4 C.2.2.2.1)
    ],
)
def test_series_answers_match_lists_wildcards_and_literals(keys: dict[str, Any], matches: bool) -> None:
    (file,) = study_files(SPEC.study_uid, rows_with(Path("."), report="http://ris/r.pdf"))
    ds = answer(_identifier(StudyInstanceUID=SPEC.study_uid, **keys), series_attributes(file), "ISO_IR 192")
    assert (ds is not None) == matches


def test_an_empty_list_of_uids_is_universal() -> None:
    (file,) = study_files(SPEC.study_uid, rows_with(Path("."), report="http://ris/r.pdf"))
    query = _identifier(StudyInstanceUID=SPEC.study_uid)
    query.SeriesInstanceUID = MultiValue(str, [])
    assert answer(query, series_attributes(file), "GB18030") is not None


def test_answers_keep_the_charset_return_sequences_empty_and_skip_private_tags() -> None:
    (file,) = study_files(SPEC.study_uid, rows_with(Path("."), report="http://ris/r.pdf"))
    query = _identifier(StudyInstanceUID=SPEC.study_uid, SeriesDescription="")
    query.SpecificCharacterSet = "ISO_IR 100"
    query.RequestAttributesSequence = []
    query.add_new(0x00091010, "LO", "private")
    ds = answer(query, series_attributes(file), "GB18030")
    assert ds is not None
    assert ds.SpecificCharacterSet == "GB18030" and ds.QueryRetrieveLevel == "SERIES"
    assert ds.SeriesDescription == "Report (dicomproxy)"
    assert ds["RequestAttributesSequence"].VR == "SQ" and list(ds.RequestAttributesSequence) == []
    assert 0x00091010 not in ds
