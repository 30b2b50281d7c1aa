"""Push mode to a DICOMweb peer: a row inserted into the exam view brings its study to the cloud by
STOW-RS — Orthanc with its DICOMweb plugin, in each compression mode — and, against the fault
server, a destination that answers 503 until push's next attempt: held, then delivered once.
Orthanc (plain) is the PACS (C-GET)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import ExplicitVRLittleEndian
from sqlalchemy import create_engine, select

from dicomproxy.config import LOSSLESS_TARGETS, LOSSY_TARGETS, Config
from dicomproxy.corrections.store import CorrectionStore, corrections
from dicomproxy.identity.corrections import corrected_uid
from dicomproxy.identity.rejection import KOS_SOP_CLASS
from dicomproxy.push.queue import PushQueue
from dicomproxy.server import Server
from testkit import wait_until
from testkit.orthanc import Orthanc
from testkit.samples import StudySpec, exam_row
from testkit.stowserver import StowScript, StowServer
from testkit.viewdb import create_view_table, insert_rows, update_rows
from tests.conftest import ConfigFactory, running_orthanc
from tests.test_iocm_real import cloud_instances, referenced
from tests.test_stow_orthanc import stored_syntaxes

pytestmark = pytest.mark.orthanc

WEB = "WEBCLOUD"
SPECS = [
    StudySpec("CT", accession=f"SP{i:03d}", series=1, images_per_series=4, seed=190 + i) for i in range(4)
]

PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
OLD = StudySpec("CT", accession="SP999", series=1, images_per_series=1, seed=199)


def sops(spec: StudySpec) -> set[str]:
    return {spec.sop_uid(s, i) for s in range(spec.series) for i in range(spec.images_per_series)}


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    with running_orthanc(tmp_path_factory.mktemp("stow-push-pacs"), SPECS) as server:
        yield server


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    with running_orthanc(tmp_path_factory.mktemp("stow-push-cloud"), dicomweb=True) as server:
        yield server


def push_config(make_config: ConfigFactory, view_url: str, pacs: Orthanc, peer: dict[str, Any]) -> Config:
    return make_config(
        view={"url": view_url},
        pacs={"ae_title": pacs.ae_title, "host": "127.0.0.1", "port": pacs.dicom_port, "retrieve": "c-get"},
        peers=[{"ae_title": WEB, "kind": "dicomweb", "max_batch": 3, **peer}],
        proxy={"retry_delay": 0.05, "retries": 1},
        push={
            "enabled": True,
            "destinations": [WEB],
            "poll_interval": 0.2,
            "retry_delay": 0.3,
            "max_retry_delay": 1.0,
        },
        corrections={"poll_interval": 0.2},  # an iocm peer's corrections found at once
    )


def push_one(
    tmp_path: Path,
    make_config: ConfigFactory,
    run_proxy: Callable[[Config], Server],
    pacs: Orthanc,
    peer: dict[str, Any],
    spec: StudySpec,
    **row: Any,
) -> tuple[Server, PushQueue]:
    """Start a pushing proxy, then insert ``spec``'s row (after the first pass: it is new)."""
    view_url = f"sqlite:///{tmp_path / 'view.db'}"
    engine = create_engine(view_url)
    create_view_table(engine, stamp="datetime")
    insert_rows(engine, [exam_row(OLD)])  # there before push started: the first pass's watermark, not sent
    server = run_proxy(push_config(make_config, view_url, pacs, peer))
    queue = PushQueue(server.ctx.journal.engine, "test")
    wait_until(lambda: queue.get_state("watermark") is not None, 30, "the first watcher pass")
    stamp = dt.datetime.now().replace(microsecond=0) + dt.timedelta(hours=1)
    insert_rows(engine, [exam_row(spec, RowTimestamp=stamp, **row)])
    engine.dispose()
    return server, queue


def item_done(queue: PushQueue) -> bool:
    items = queue.items()
    return len(items) == 1 and items[0]["state"] == "done"


@pytest.mark.parametrize(("mode", "spec"), [("none", SPECS[0]), ("lossless", SPECS[1]), ("lossy", SPECS[2])])
def test_push_delivers_a_new_exam_to_orthanc_by_stow_rs(
    mode: str,
    spec: StudySpec,
    tmp_path: Path,
    make_config: ConfigFactory,
    run_proxy: Callable[[Config], Server],
    pacs: Orthanc,
    cloud: Orthanc,
    http_folder: tuple[str, Path],
) -> None:
    cloud.clear()
    base_url, folder = http_folder
    (folder / "r.pdf").write_bytes(PDF)  # the report: an Encapsulated PDF sent after the images
    peer = {"url": cloud.stow_url, "compression": mode, "transfer_syntax_param": False}
    server, queue = push_one(
        tmp_path, make_config, run_proxy, pacs, peer, spec, ReportFilePath=f"{base_url}/r.pdf"
    )
    wait_until(lambda: item_done(queue), 60, "push item done")
    held = stored_syntaxes(cloud)
    assert set(held) >= sops(spec)
    (report,) = set(held) - sops(spec)
    assert held.pop(report) == ExplicitVRLittleEndian  # the PDF object, as made
    wanted = {
        "none": {ExplicitVRLittleEndian},
        "lossless": set(LOSSLESS_TARGETS),
        "lossy": set(LOSSY_TARGETS),
    }
    assert set(held.values()) <= wanted[mode], held
    jobs = server.ctx.journal.recent(10)  # the images' job, and the report's (push/files.py)
    assert {(j["kind"], j["outcome"], j["failed"]) for j in jobs} == {("push", "success", 0)}
    assert sum(j["completed"] for j in jobs) == len(held)  # the images; the report counts apart
    states = {
        r["sop_instance_uid"]: r["state"]
        for j in jobs
        for r in server.ctx.journal.get(j["id"], all_instances=True).instances  # type: ignore[union-attr]
    }
    assert states == dict.fromkeys([*held, report], "sent")


def test_push_holds_a_dicomweb_destination_that_does_not_answer_and_delivers_once_later(
    tmp_path: Path,
    make_config: ConfigFactory,
    run_proxy: Callable[[Config], Server],
    pacs: Orthanc,
) -> None:
    web = StowServer(StowScript(requests=["503", "503"], retry_after="0")).start()
    try:
        server, queue = push_one(tmp_path, make_config, run_proxy, pacs, {"url": web.url}, SPECS[3])
        wait_until(lambda: item_done(queue), 60, "push item done")
        assert set(web.stored) == sops(SPECS[3]) and set(web.stored.values()) == {1}
        assert [s.action for s in web.seen[:3]] == ["503", "503", "ok"]
        jobs = server.ctx.journal.recent(10)
        assert [(j["outcome"], j["completed"]) for j in reversed(jobs)] == [("failed", 0), ("success", 4)]
    finally:
        web.stop()


def test_a_corrected_identity_reaches_a_dicomweb_peer_as_a_rejection_note_and_copies(
    tmp_path: Path,
    make_config: ConfigFactory,
    run_proxy: Callable[[Config], Server],
    pacs: Orthanc,
    cloud: Orthanc,
) -> None:
    """IOCM (issue 26) to a ``kind = "dicomweb"`` peer: once the RIS corrects the PatientID of a
    delivered exam, the rejection note (113038) and the corrected copies go by STOW-RS too, and
    Orthanc's WADO-RS lists them in the study."""
    cloud.clear()
    spec = SPECS[0]
    server, _ = push_one(
        tmp_path,
        make_config,
        run_proxy,
        pacs,
        {"url": cloud.stow_url, "transfer_syntax_param": False, "iocm": True},
        spec,
    )
    store = CorrectionStore(server.ctx.journal.engine, "test")
    wait_until(lambda: set(stored_syntaxes(cloud)) == sops(spec), 60, "the study delivered")
    view = create_engine(f"sqlite:///{tmp_path / 'view.db'}")
    later = dt.datetime.now() + dt.timedelta(hours=2)  # after the row's stamp (push_one: 1 h ahead)
    update_rows(
        view, "V_IMAGE_CLOUD", exam_row(spec)["ExamineID"], {"PatientID": "SP-NEW", "RowTimestamp": later}
    )
    view.dispose()
    wait_until(lambda: store.counts().get((WEB, "identity-corrected", "done")) == 1, 90, "the correction")
    with server.ctx.journal.engine.connect() as conn:
        (fingerprint,) = conn.execute(select(corrections.c.fingerprint)).scalars()
    held = cloud_instances(cloud)
    (note,) = [ds for ds in held.values() if ds.SOPClassUID == KOS_SOP_CLASS]
    assert note.ConceptNameCodeSequence[0].CodeValue == "113038" and referenced(note) == sops(spec)
    copies = {corrected_uid(u, fingerprint) for u in sops(spec)}
    assert {u for u in copies if held[u].PatientID == "SP-NEW"} == copies
    # QIDO-RS lists the study's instances (Orthanc keeps the copies, another PatientID, as a study
    # of their own with the same Study Instance UID, so WADO-RS by study UID alone answers 404)
    listed = cloud.request("GET", f"/dicom-web/instances?StudyInstanceUID={spec.study_uid}")
    assert {i["00080018"]["Value"][0] for i in listed} == sops(spec) | copies | {str(note.SOPInstanceUID)}
