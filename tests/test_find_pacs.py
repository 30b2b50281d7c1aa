"""C-FIND parts that involve the PACS (a real Orthanc): study counts, SERIES/IMAGE forwarding
restricted to visible studies, PACS failures; plus max_results and C-CANCEL."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
)
from sqlalchemy import create_engine

from dicomproxy.app import build_context
from dicomproxy.config import Config
from dicomproxy.handlers.find import handle_find
from dicomproxy.server import Server
from testkit import free_port
from testkit.orthanc import Orthanc
from testkit.samples import demo_specs, exam_row
from testkit.viewdb import create_view_table, insert_rows
from tests.conftest import ConfigFactory
from tests.view_data import FindClient

CT, MR, US, MF = demo_specs()
COUNT_KEYS = {
    "NumberOfStudyRelatedSeries": "",
    "NumberOfStudyRelatedInstances": "",
    "SOPClassesInStudy": "",
}


@pytest.fixture
def pacs_view(sqlite_url: str) -> None:
    """Demo rows; the multi-frame study (A0004) is invisible (Privacy 2)."""
    engine = create_engine(sqlite_url)
    create_view_table(engine)
    rows = [exam_row(s) for s in (CT, MR, US)] + [exam_row(MF, Privacy=2)]
    insert_rows(engine, rows)
    engine.dispose()


@pytest.fixture
def pacs_port(
    orthanc: Orthanc, pacs_view: None, make_config: ConfigFactory, run_proxy: Callable[[Config], Server]
) -> int:
    r = orthanc.remote
    return run_proxy(make_config(pacs={"ae_title": r.ae_title, "host": r.host, "port": r.port})).port


@pytest.mark.orthanc
def test_study_counts_come_from_the_pacs(pacs_port: int) -> None:
    with FindClient(pacs_port) as client:
        result = client.find({"AccessionNumber": "A0001", "StudyInstanceUID": "", **COUNT_KEYS})
        (ds,) = result.answers
        assert (ds.NumberOfStudyRelatedSeries, ds.NumberOfStudyRelatedInstances) == (2, 10)
        assert ds.SOPClassesInStudy == CTImageStorage
        # without the keys, no PACS round trip and no count attributes
        (plain,) = client.find({"AccessionNumber": "A0001", "StudyInstanceUID": ""}).answers
        assert "NumberOfStudyRelatedSeries" not in plain


@pytest.mark.orthanc
def test_series_and_image_levels_only_for_visible_studies(pacs_port: int) -> None:
    with FindClient(pacs_port) as client:
        series = client.find({"StudyInstanceUID": CT.study_uid, "SeriesInstanceUID": ""}, level="SERIES")
        assert series.status == 0
        assert {str(ds.SeriesInstanceUID) for ds in series.answers} == {CT.series_uid(0), CT.series_uid(1)}
        images = client.find(
            {"StudyInstanceUID": MR.study_uid, "SeriesInstanceUID": MR.series_uid(0), "SOPInstanceUID": ""},
            level="IMAGE",
        )
        assert len(images.answers) == 4
        # MF is in Orthanc, but invisible in the view: nothing, not even via a UID list
        hidden = client.find({"StudyInstanceUID": MF.study_uid, "SeriesInstanceUID": ""}, level="SERIES")
        assert (hidden.status, hidden.answers) == (0, [])
        both = client.find(
            {"StudyInstanceUID": f"{MF.study_uid}\\{US.study_uid}", "SeriesInstanceUID": ""}, level="SERIES"
        )
        assert {str(ds.StudyInstanceUID) for ds in both.answers} == {US.study_uid}


def test_pacs_down_counts_empty_with_warning_series_c002(
    sqlite_view: Any,
    make_config: ConfigFactory,
    run_proxy: Callable[[Config], Server],
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = make_config(pacs={"ae_title": "NOPACS", "host": "127.0.0.1", "port": free_port()})
    with FindClient(run_proxy(config).port) as client:
        result = client.find({"PatientID": "P0001", "StudyInstanceUID": "", **COUNT_KEYS})
        assert result.status == 0 and len(result.answers) == 2
        assert all(ds.NumberOfStudyRelatedInstances is None for ds in result.answers)
        assert sum("study counts unavailable" in r.getMessage() for r in caplog.records) == 1
        series = client.find({"StudyInstanceUID": CT.study_uid, "SeriesInstanceUID": ""}, level="SERIES")
        assert series.status == 0xC002 and series.comment


def test_max_results_caps_the_answer(
    sqlite_view: Any, make_config: ConfigFactory, run_proxy: Callable[[Config], Server]
) -> None:
    config = make_config(view={"max_results": 3})
    with FindClient(run_proxy(config).port) as client:
        result = client.find({"StudyInstanceUID": ""})
        assert (result.status, len(result.answers)) == (0, 3)


# --- C-CANCEL: the handler with a stand-in event (unit level) ------------------------------------


@dataclass
class _Requestor:
    ae_title: str = "jobserver"


@dataclass
class _Assoc:
    requestor: _Requestor = field(default_factory=_Requestor)


@dataclass
class _Request:
    AffectedSOPClassUID: str = StudyRootQueryRetrieveInformationModelFind


class FakeFindEvent:
    """Just what handle_find reads; ``is_cancelled`` turns True after ``cancel_after`` reads."""

    def __init__(self, identifier: Dataset, cancel_after: int) -> None:
        self.identifier = identifier
        self.request = _Request()
        self.assoc = _Assoc()
        self.reads = 0
        self.cancel_after = cancel_after

    @property
    def is_cancelled(self) -> bool:
        self.reads += 1
        return self.reads > self.cancel_after


def test_c_cancel_stops_the_stream(sqlite_view: Any, make_config: ConfigFactory) -> None:
    ctx = build_context(make_config())
    try:
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = ""
        full = list(handle_find(FakeFindEvent(query, cancel_after=10**6), ctx))  # type: ignore[arg-type]
        assert [s for s, _ in full].count(0xFF00) == 4 and full[-1][0] == 0x0000
        cut = list(handle_find(FakeFindEvent(query, cancel_after=3), ctx))  # type: ignore[arg-type]
        statuses = [s for s, _ in cut]
        assert statuses[-1] == 0xFE00
        assert 0 < statuses.count(0xFF00) < 4
    finally:
        ctx.close()


def test_database_unreachable_answers_c001(
    make_config: ConfigFactory, run_proxy: Callable[[Config], Server], caplog: pytest.LogCaptureFixture
) -> None:
    """A view database that is down: 0xC001 with a reason, one log line, the server keeps serving."""
    url = f"postgresql+psycopg2://postgres@127.0.0.1:{free_port()}/test?connect_timeout=2"
    port = run_proxy(make_config(view={"url": url})).port
    with FindClient(port) as client:
        for _ in range(2):
            result = client.find({"PatientID": "P0001", "StudyInstanceUID": ""})
            assert (result.status, result.answers) == (0xC001, [])
            assert result.comment and "exam view unavailable" in result.comment
        uid = client.find({"StudyInstanceUID": CT.study_uid})
        assert uid.status == 0xC001
    failures = [r for r in caplog.records if "C-FIND failed" in r.getMessage()]
    assert len(failures) == 3 and all("\n" not in r.getMessage() for r in failures)


@pytest.mark.parametrize("path", ["raw", "pynetdicom"])
def test_c_cancel_over_a_real_association(
    sqlite_url: str, make_config: ConfigFactory, run_proxy: Callable[[Config], Server], path: str
) -> None:
    """pynetdicom sends C-CANCEL after the first answer: the stream stops with 0xFE00. On both of
    the proxy's C-FIND paths: the raw query acceptor (the client proposes C-FIND only) and
    pynetdicom's association (a C-MOVE context proposed too; tests/test_raw_queries.py)."""
    engine = create_engine(sqlite_url)
    create_view_table(engine)
    spec = demo_specs()[0]
    insert_rows(
        engine,
        [
            exam_row(spec, ExamineID=f"E{i}", AccessionNumber=f"A{i}", StudyInstanceUID=f"1.2.3.{i}")
            for i in range(3000)
        ],
    )
    engine.dispose()
    port = run_proxy(make_config(view={"max_results": 0})).port
    also = () if path == "raw" else (StudyRootQueryRetrieveInformationModelMove,)
    with FindClient(port, also=also) as client:
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = ""
        sop = StudyRootQueryRetrieveInformationModelFind
        statuses = []
        for status, _ds in client.assoc.send_c_find(query, sop, msg_id=7):
            statuses.append(int(status.Status))
            if len(statuses) == 1:
                client.assoc.send_c_cancel(7, query_model=sop)
        assert statuses[-1] == 0xFE00
        assert 1 <= statuses.count(0xFF00) < 3000
        assert client.uids(AccessionNumber="A17") == {"1.2.3.17"}  # the association still works
