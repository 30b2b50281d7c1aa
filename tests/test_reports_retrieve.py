"""``[reports] in_retrieve``: the order and report files of the exam view offered to the cloud's
C-FIND, C-MOVE and C-GET, against real peers — Orthanc as the PACS (upstream C-MOVE to the proxy,
the default mode), DCMTK storescp as the move destination (``+uf``: a duplicate would be a second
file), pynetdicom as the cloud, the order JPEG on a local share and the report PDF on a local HTTP
server.

What the cloud must see: a study of 4 images with both files is a study of 6 instances in 4
series, everywhere — C-FIND's counts, SERIES/IMAGE answers, and every kind of retrieval
(STUDY, the report series alone, the order object alone by its SOP Instance UID, C-GET); a
file that cannot be fetched is one failed sub-operation (0xB000), logged, the images delivered.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]
from sqlalchemy import create_engine, text

from dicomproxy.config import Config
from dicomproxy.relay.recovery import retry_job
from dicomproxy.reports.encode import ENCAPSULATED_PDF, SECONDARY_CAPTURE, build, series_uid
from dicomproxy.server import Server
from dicomproxy.transport import scu
from dicomproxy.transport.net import Remote, guard_requestor
from testkit import free_port
from testkit.dcmtk import StoreSCP
from testkit.fakepacs import FakeDestination, FakePacs
from testkit.orthanc import Orthanc
from testkit.samples import StudySpec, exam_row, write_study
from testkit.samples_dept import colour_frame, jpeg_baseline_rgb
from testkit.viewdb import create_view_table, insert_rows
from tests.conftest import ConfigFactory, _need, running_orthanc

SPEC = StudySpec("CT", accession="RR001", series=2, images_per_series=2, seed=171)
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
PROXY_AE = "DICOMPROXY"
CLOUD = "jobserver"


@pytest.fixture(scope="module")
def proxy_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory, proxy_port: int) -> Iterator[Orthanc]:
    proxy = Remote(PROXY_AE, "127.0.0.1", proxy_port)
    with running_orthanc(tmp_path_factory.mktemp("rr-pacs"), [SPEC], proxy=proxy) as server:
        yield server


@pytest.fixture
def fakedest() -> Iterator[FakeDestination]:
    dest = FakeDestination("FAKEDEST").start()
    yield dest
    dest.stop()


@pytest.fixture
def proxy(
    tmp_path: Path,
    make_config: ConfigFactory,
    sqlite_url: str,
    pacs: Orthanc,
    proxy_port: int,
    http_folder: tuple[str, Path],
    fakedest: FakeDestination,
    run_proxy: Callable[[Config], Server],
) -> Iterator[tuple[Server, StoreSCP, Path]]:
    """The proxy with ``in_retrieve`` on, storescp as DEST and a pynetdicom FAKEDEST; yields
    (server, storescp, share folder)."""
    _need("storescp")
    base_url, http_dir = http_folder
    (http_dir / "r.pdf").write_bytes(PDF)
    share = tmp_path / "share"
    share.mkdir()
    (share / "order.jpg").write_bytes(jpeg_baseline_rgb(colour_frame(48, 64, 0.5, (1, 2), (1.0, 0.9, 0.8))))
    engine = create_engine(sqlite_url)
    create_view_table(engine)
    insert_rows(
        engine, [exam_row(SPEC, OrderFilePath=str(share / "order.jpg"), ReportFilePath=f"{base_url}/r.pdf")]
    )
    engine.dispose()
    scp = StoreSCP(tmp_path / "scp", "DEST", extra=["+uf"]).start()
    config = make_config(
        proxy={"port": proxy_port, "retry_delay": 0.1, "retries": 1, "reconnect_window": 0},
        pacs={"ae_title": pacs.ae_title, "host": "127.0.0.1", "port": pacs.dicom_port, "retrieve": "c-move"},
        peers=[
            {"ae_title": CLOUD, "host": "127.0.0.1", "port": 1},
            {"ae_title": "DEST", "host": "127.0.0.1", "port": scp.port},
            {"ae_title": "FAKEDEST", "host": "127.0.0.1", "port": fakedest.port},
        ],
        reports={"in_retrieve": True, "timeout": 5},
    )
    try:
        yield run_proxy(config), scp, share
    finally:
        scp.stop()


def remote(server: Server) -> Remote:
    return Remote(PROXY_AE, "127.0.0.1", server.port)


def find(server: Server, level: str, **keys: Any) -> list[Dataset]:
    query = Dataset()
    query.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(query, keyword, value)
    ae = AE(ae_title=CLOUD)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", server.port, ae_title=PROXY_AE)
    guard_requestor(assoc)  # pynetdicom#875: the reactor must not take our responses
    assert assoc.is_established
    try:
        answers = []
        for status, ds in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
            assert status is not None and int(status.Status) in (0x0000, 0xFF00, 0xFF01), status
            if ds is not None:
                answers.append(ds)
        return answers
    finally:
        assoc.release()


def identifier(level: str, **keys: Any) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    ds.StudyInstanceUID = SPEC.study_uid
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def arrivals(scp: StoreSCP) -> Counter[str]:
    return Counter(str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in scp.received())


def images() -> set[str]:
    return {SPEC.sop_uid(s, i) for s in range(SPEC.series) for i in range(SPEC.images_per_series)}


def test_files_are_part_of_the_study_in_find_move_and_get(
    proxy: tuple[Server, StoreSCP, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server, scp, share = proxy
    report_series, order_series = series_uid(SPEC.study_uid, "report"), series_uid(SPEC.study_uid, "order")

    # C-FIND STUDY: the PACS's counts plus one series and one instance per file
    (study,) = find(
        server,
        "STUDY",
        StudyInstanceUID=SPEC.study_uid,
        NumberOfStudyRelatedSeries="",
        NumberOfStudyRelatedInstances="",
        SOPClassesInStudy="",
        ModalitiesInStudy="",
    )
    assert (int(study.NumberOfStudyRelatedSeries), int(study.NumberOfStudyRelatedInstances)) == (4, 6)
    assert list(study.ModalitiesInStudy) == ["CT", "DOC", "OT"]
    assert {ENCAPSULATED_PDF, SECONDARY_CAPTURE} <= set(study.SOPClassesInStudy)

    # C-FIND SERIES: the PACS's two series and one per file (Modality as the file name says)
    series = find(server, "SERIES", StudyInstanceUID=SPEC.study_uid, SeriesInstanceUID="", Modality="")
    by_uid = {str(ds.SeriesInstanceUID): str(ds.Modality) for ds in series}
    assert len(by_uid) == 4 and by_uid[report_series] == "DOC" and by_uid[order_series] == "OT"
    only_doc = find(server, "SERIES", StudyInstanceUID=SPEC.study_uid, SeriesInstanceUID="", Modality="DOC")
    assert [str(ds.SeriesInstanceUID) for ds in only_doc] == [report_series]

    # C-FIND IMAGE in the report series: the object, whose UID the file decides
    (pdf_answer,) = find(
        server, "IMAGE", StudyInstanceUID=SPEC.study_uid, SeriesInstanceUID=report_series, SOPInstanceUID=""
    )
    pdf_uid = str(pdf_answer.SOPInstanceUID)

    # C-MOVE STUDY: 6 sub-operations, every instance once at storescp, the files in their series;
    # every Pending response counts the files (PS3.4 C.4.2.1.6: remaining + done = 6 throughout)
    sums: list[int] = []
    failed_seen: list[int] = []

    def progress(s: scu.RetrieveSummary) -> None:
        sums.append((s.remaining or 0) + s.completed + s.failed + s.warning)
        failed_seen.append(s.failed)

    result = scu.move(
        remote(server), "DEST", identifier("STUDY"), calling_ae=CLOUD, timeout=60, progress=progress
    )
    assert (result.status, result.completed, result.failed, result.warning) == (0x0000, 6, 0, 0), (
        result.line()
    )
    assert sums and set(sums) == {6}, sums
    got = arrivals(scp)
    assert max(got.values()) == 1 and len(got) == 6 and images() < set(got) and pdf_uid in got
    objects = {str(ds.SOPClassUID): ds for ds in (dcmread(p) for p in scp.received())}
    pdf, jpeg = objects[ENCAPSULATED_PDF], objects[SECONDARY_CAPTURE]
    assert bytes(pdf.EncapsulatedDocument)[: len(PDF)] == PDF and pdf.SeriesInstanceUID == report_series
    assert jpeg.pixel_array.shape == (48, 64, 3) and jpeg.SeriesInstanceUID == order_series
    assert pdf.PatientID == SPEC.patient.patient_id and pdf.StudyInstanceUID == SPEC.study_uid

    # C-MOVE of the report series alone: one sub-operation, nothing asked of the PACS for it
    result = scu.move(
        remote(server), "DEST", identifier("SERIES", SeriesInstanceUID=report_series), calling_ae=CLOUD
    )
    assert (result.status, result.completed) == (0x0000, 1), result.line()
    # C-MOVE IMAGE level: the order object by its SOP Instance UID, with an image of the PACS
    jpeg_uid = str(jpeg.SOPInstanceUID)
    result = scu.move(
        remote(server),
        "DEST",
        identifier("IMAGE", SeriesInstanceUID=order_series, SOPInstanceUID=jpeg_uid),
        calling_ae=CLOUD,
    )
    assert (result.status, result.completed) == (0x0000, 1), result.line()
    got = arrivals(scp)
    assert (got[pdf_uid], got[jpeg_uid]) == (2, 2)

    # C-GET STUDY on the cloud's own association: the same 6
    out = tmp_path / "get"
    result = scu.get(remote(server), identifier("STUDY"), calling_ae=CLOUD, out_dir=out, timeout=60)
    assert (result.status, result.completed, result.received) == (0x0000, 6, 6), result.line()
    assert {p.stem for p in out.iterdir()} == set(arrivals(scp))

    # the journal: the objects are instances of the job, confirmed
    job = server.ctx.journal.recent(1)[0]
    assert (job["kind"], job["expected"], job["completed"]) == ("get", 6, 6)
    assert server.ctx.journal.unconfirmed(job["id"]) == []

    # a file that cannot be read: one failed sub-operation, logged, the images and the report sent
    (share / "order.jpg").unlink()
    caplog.set_level(logging.WARNING, logger="dicomproxy")
    sums.clear()
    failed_seen.clear()
    result = scu.move(
        remote(server), "DEST", identifier("STUDY"), calling_ae=CLOUD, timeout=60, progress=progress
    )
    assert (result.status, result.completed, result.failed) == (0xB000, 5, 1), result.line()
    assert sums and set(sums) == {6}, sums  # the unfetched file counted once, as failed …
    assert failed_seen[-1] == 1, failed_seen  # … as soon as it failed, before the final response
    assert "order file not available: cannot read the file" in caplog.text
    job = server.ctx.journal.recent(1)[0]
    assert job["outcome"] == "partial" and "order file not available" in job["error"]
    assert arrivals(scp)[pdf_uid] == 3


def test_a_refused_report_is_journalled_and_resent_by_jobs_retry(
    proxy: tuple[Server, StoreSCP, Path], fakedest: FakeDestination
) -> None:
    """The report object is an instance of the job like the images: the destination refuses it
    (0xA700) → Failed SOP Instance UID List names it, the journal keeps it unconfirmed with its
    file in the spool, and ``jobs retry`` sends it from there."""
    server, _, share = proxy
    rows = server.ctx.view.study_rows([SPEC.study_uid])[SPEC.study_uid]
    pdf_uid = build(SPEC.study_uid, "report", PDF, rows, "ideographic").sop_instance_uid
    jpeg = (share / "order.jpg").read_bytes()
    order_uid = build(SPEC.study_uid, "order", jpeg, rows, "ideographic").sop_instance_uid
    fakedest.behaviour.reject[pdf_uid] = 0xA700
    result = scu.move(remote(server), "FAKEDEST", identifier("STUDY"), calling_ae=CLOUD, timeout=60)
    assert (result.status, result.completed, result.failed) == (0xB000, 5, 1), result.line()
    assert result.failed_uids == [pdf_uid]
    job = server.ctx.journal.recent(1)[0]
    assert [r["sop_instance_uid"] for r in server.ctx.journal.unconfirmed(job["id"])] == [pdf_uid]
    del fakedest.behaviour.reject[pdf_uid]
    retried = retry_job(server.config, server.ctx.journal, job["id"])
    assert (retried.from_spool, retried.sent, retried.refetched) == (1, 1, 0)
    assert server.ctx.journal.unconfirmed(job["id"]) == []
    assert sorted(uid for uid, _ in fakedest.received) == sorted(images() | {pdf_uid, order_uid})


def test_without_in_retrieve_the_study_is_the_pacs_s(
    proxy: tuple[Server, StoreSCP, Path], run_proxy: Callable[[Config], Server], make_config: ConfigFactory
) -> None:
    """The default: files are not offered (counts and retrievals are the PACS's)."""
    server, scp, _ = proxy
    config = server.config
    plain = make_config(
        proxy={**_section(config.proxy), "port": 0},
        pacs={
            "ae_title": config.pacs.ae_title,
            "host": "127.0.0.1",
            "port": config.pacs.port,
            "retrieve": "c-get",
        },
        peers=[
            {"ae_title": CLOUD, "host": "127.0.0.1", "port": 1},
            {"ae_title": "DEST", "host": "127.0.0.1", "port": scp.port},
        ],
    )
    other = run_proxy(plain)
    (study,) = find(
        other,
        "STUDY",
        StudyInstanceUID=SPEC.study_uid,
        NumberOfStudyRelatedInstances="",
        ModalitiesInStudy="",
    )
    assert int(study.NumberOfStudyRelatedInstances) == 4 and study.ModalitiesInStudy == "CT"
    series = find(other, "SERIES", StudyInstanceUID=SPEC.study_uid, SeriesInstanceUID="")
    assert len(series) == 2
    result = scu.move(remote(other), "DEST", identifier("STUDY"), calling_ae=CLOUD, timeout=60)
    assert (result.status, result.completed) == (0x0000, 4), result.line()


def _section(proxy_config: Any) -> dict[str, Any]:
    return {"ae_title": PROXY_AE, "host": "127.0.0.1", "data_dir": str(proxy_config.data_dir) + "-plain"}


def test_a_pacs_failing_before_any_instance_answers_for_the_job_and_no_file_is_sent(
    tmp_path: Path,
    make_config: ConfigFactory,
    sqlite_url: str,
    http_folder: tuple[str, Path],
    fakedest: FakeDestination,
    run_proxy: Callable[[Config], Server],
) -> None:
    """The PACS aborts the retrieval before its first instance (pynetdicom fake PACS): the job's
    answer is the PACS's failure (0xC002, PS3.4 C.4.2.1.5), as without files — the report is not
    sent on its own, and counts as failed like the images."""
    base_url, http_dir = http_folder
    (http_dir / "r.pdf").write_bytes(PDF)
    engine = create_engine(sqlite_url)
    create_view_table(engine)
    insert_rows(engine, [exam_row(SPEC, ReportFilePath=f"{base_url}/r.pdf")])
    engine.dispose()
    pacs = FakePacs(write_study(SPEC, tmp_path / "study"))
    pacs.behaviour.abort_after = 0
    pacs.start()
    try:
        config = make_config(
            pacs={"ae_title": pacs.ae_title, "host": "127.0.0.1", "port": pacs.port, "retrieve": "c-get"},
            peers=[
                {"ae_title": CLOUD, "host": "127.0.0.1", "port": 1},
                {"ae_title": "FAKEDEST", "host": "127.0.0.1", "port": fakedest.port},
            ],
            reports={"in_retrieve": True, "timeout": 5},
        )
        server = run_proxy(config)
        result = scu.move(remote(server), "FAKEDEST", identifier("STUDY"), calling_ae=CLOUD, timeout=60)
        assert result.status == 0xC002, result.line()
        assert (result.completed, result.failed) == (0, 5)  # 4 images + the report, none sent
        assert fakedest.attempts == []
    finally:
        pacs.stop()


def test_a_hidden_row_of_a_visible_study_gives_neither_its_file_nor_its_patient(
    tmp_path: Path,
    make_config: ConfigFactory,
    mariadb_journal: str,
    pacs: Orthanc,
    proxy_port: int,
    http_folder: tuple[str, Path],
    fakedest: FakeDestination,
    run_proxy: Callable[[Config], Server],
) -> None:
    """MariaDB's ``_ci`` collation: the study's UID is on a visible row and on a row whose
    HospitalID differs from ours only in letter case. The SQL ``=`` returns both, the hidden one
    first (ExamineID order); only the Python re-check keeps its order/report files and its
    patient out of the study's C-FIND answers and of the objects a C-MOVE delivers."""
    hospital = "Wl-Hosp01"
    base_url, http_dir = http_folder
    secret = PDF.replace(b"Catalog", b"Secret ")
    (http_dir / "r.pdf").write_bytes(PDF)
    (http_dir / "secret.pdf").write_bytes(secret)
    (http_dir / "secret.jpg").write_bytes(jpeg_baseline_rgb(colour_frame(48, 64, 0.5, (1, 2), (1, 1, 1))))
    engine = create_engine(mariadb_journal)
    create_view_table(engine)
    hidden = exam_row(
        SPEC,
        hospital_id=hospital.upper(),
        ExamineID="E0HIDDEN",
        PatientID="PHIDDEN",
        PatientName="隐藏^病人",
        ReportFilePath=f"{base_url}/secret.pdf",
        OrderFilePath=f"{base_url}/secret.jpg",
    )
    visible = exam_row(
        SPEC,
        hospital_id=hospital,
        ExamineID="E1VISIBLE",
        ReportFilePath=f"{base_url}/r.pdf",
        OrderFilePath=None,
    )
    insert_rows(engine, [hidden, visible])
    with engine.connect() as conn:  # the trap is armed: the SQL predicate lets the hidden row through
        (collation,) = conn.execute(
            text(
                "SELECT COLLATION_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() "
                "AND LOWER(TABLE_NAME) = 'v_image_cloud' AND LOWER(COLUMN_NAME) = 'hospitalid'"
            )
        ).one()
    engine.dispose()
    assert str(collation).endswith("_ci"), collation
    config = make_config(
        hospital={"id": hospital},
        view={"url": mariadb_journal},
        proxy={"port": proxy_port, "retry_delay": 0.1, "retries": 1, "reconnect_window": 0},
        pacs={"ae_title": pacs.ae_title, "host": "127.0.0.1", "port": pacs.dicom_port, "retrieve": "c-move"},
        peers=[
            {"ae_title": CLOUD, "host": "127.0.0.1", "port": 1},
            {"ae_title": "FAKEDEST", "host": "127.0.0.1", "port": fakedest.port},
        ],
        reports={"in_retrieve": True, "timeout": 5},
    )
    server = run_proxy(config)

    series = find(server, "SERIES", StudyInstanceUID=SPEC.study_uid, SeriesInstanceUID="", Modality="")
    files = {str(ds.SeriesInstanceUID) for ds in series} - {SPEC.series_uid(s) for s in range(SPEC.series)}
    assert files == {series_uid(SPEC.study_uid, "report")}, "the hidden row's order file is offered"

    fakedest.behaviour.keep_datasets = True
    result = scu.move(remote(server), "FAKEDEST", identifier("STUDY"), calling_ae=CLOUD, timeout=60)
    assert (result.status, result.completed, result.failed) == (0x0000, 5, 0), result.line()
    (report,) = [ds for ds in fakedest.datasets if ds.SOPClassUID == ENCAPSULATED_PDF]
    assert bytes(report.EncapsulatedDocument)[: len(PDF)] == PDF, "the hidden row's report file was sent"
    assert str(report.PatientID) == SPEC.patient.patient_id, "the hidden row's patient is on the report"
    assert SPEC.patient.name in str(report.PatientName) and "隐藏" not in str(report.PatientName)
    assert not [ds for ds in fakedest.datasets if ds.SOPClassUID == SECONDARY_CAPTURE]
