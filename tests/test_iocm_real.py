"""Corrections after delivery (IHE RAD IOCM; docs/identity.md) end to end: the exam view on
PostgreSQL with both RowTimestamp kinds (rowversion emulated by a trigger-filled binary column,
and a date-time), an Orthanc PACS, and an Orthanc as the cloud (``iocm = true``).

A study is pushed; the RIS corrects the row's PatientID: a rejection note arrives at the cloud
(dciodvfy-clean, Document Title 113038, referencing exactly the delivered SOP Instance UIDs), then
the corrected copies under their derived UIDs, once — a restart in between sends nothing again.
Then the row's privacy is raised: a rejection note (113037) for the copies, and no image is sent.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset, dcmread
from pydicom.filebase import DicomBytesIO
from sqlalchemy import select

from dicomproxy.audit.trail import Action, AuditTrail
from dicomproxy.config import Config
from dicomproxy.corrections.store import COPIES, NOTE, CorrectionStore, correction_jobs, corrections
from dicomproxy.identity.corrections import corrected_uid
from dicomproxy.identity.rejection import KOS_SOP_CLASS
from dicomproxy.push.queue import PushQueue
from dicomproxy.reconcile.decide import Category
from dicomproxy.reconcile.run import Reconciler
from dicomproxy.relay.journal import CONFIRMED_STATES, job_instances
from dicomproxy.reports.encode import ENCAPSULATED_PDF
from dicomproxy.server import Server
from dicomproxy.transport import scu
from dicomproxy.transport.net import Remote
from dicomproxy.view.repository import ExamView
from testkit import free_port, wait_until
from testkit.orthanc import Orthanc
from testkit.samples import StudySpec, exam_row
from testkit.viewdb import delete_rows, insert_rows, update_rows
from tests import test_view_rowstamp
from tests.conftest import ConfigFactory, _need, running_orthanc
from tests.test_console import Http
from tests.test_view_rowstamp import StampedView

stamped = test_view_rowstamp.stamped

SPEC = StudySpec("CT", accession="IOCM01", series=1, images_per_series=3, seed=261)
SOPS = {SPEC.sop_uid(0, i) for i in range(SPEC.images_per_series)}
#: The study an exam is re-linked to (in the PACS too).
SPEC2 = StudySpec("CT", accession="IOCM02", series=1, images_per_series=2, seed=262)


@pytest.fixture(scope="module")
def iocm_pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    with running_orthanc(tmp_path_factory.mktemp("iocm-pacs"), [SPEC, SPEC2]) as server:
        yield server


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[Orthanc]:
    with running_orthanc(tmp_path / "cloud", ae_title="CLOUD") as server:
        yield server


def cloud_instances(cloud: Orthanc) -> dict[str, Dataset]:
    """SOP Instance UID → data set of everything the cloud holds."""
    out: dict[str, Dataset] = {}
    for oid in cloud.request("GET", "/instances"):
        raw = urllib_bytes(cloud, f"/instances/{oid}/file")
        ds = dcmread(DicomBytesIO(raw))
        out[str(ds.SOPInstanceUID)] = ds
    return out


def urllib_bytes(server: Orthanc, path: str) -> bytes:
    with urllib.request.urlopen(server.url + path, timeout=30) as rsp:
        return bytes(rsp.read())


def referenced(kos: Dataset) -> set[str]:
    """The SOP Instance UIDs a KOS's Current Requested Procedure Evidence Sequence lists."""
    return {
        str(sop.ReferencedSOPInstanceUID)
        for study in kos.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for sop in series.ReferencedSOPSequence
    }


def dciodvfy_errors(ds: Dataset, path: Path) -> list[str]:
    _need("dciodvfy")
    ds.save_as(path, enforce_file_format=True)
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


def correction_rows(server: Server) -> list[dict[str, Any]]:
    with server.ctx.journal.engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(corrections).order_by(corrections.c.id)).mappings()]


def sent_by_role(server: Server, role: str) -> list[str]:
    """SOP Instance UIDs (as spooled) the corrections' jobs of ``role`` had confirmed: one per C-STORE."""
    cj, i = correction_jobs, job_instances
    q = (
        select(i.c.sop_instance_uid)
        .join(cj, cj.c.job_id == i.c.job_id)
        .where(cj.c.role == role, i.c.state.in_(CONFIRMED_STATES))
    )
    with server.ctx.journal.engine.connect() as conn:
        return [str(u) for u in conn.execute(q).scalars()]


def pass_done(server: Server) -> Callable[[], bool]:
    """True once a corrections pass of ``server`` ran to its end after this call."""
    assert server.ctx.corrections is not None
    loop = server.ctx.corrections.loop
    before = loop.passes
    return lambda: loop.passes >= before + 2


def node_config(
    make_config: ConfigFactory,
    stamped: StampedView,
    pacs: Orthanc,
    cloud: Orthanc,
    *,
    iocm: bool = True,
    push: bool = False,
    sweep: float | None = 1,
    **more: Any,
) -> Config:
    """The proxy of these tests: the stamped view, the Orthanc PACS (upstream C-GET), the cloud
    (``iocm`` as given) that pushes to it when ``push`` or else retrieves by C-MOVE; corrections
    polled every 0.2 s, swept every ``sweep`` seconds (None: the default interval)."""
    if push:
        more["push"] = {"enabled": True, "destinations": ["CLOUD"], "poll_interval": 0.2}
    corrections: dict[str, Any] = {"poll_interval": 0.2}
    if sweep is not None:
        corrections["sweep"] = sweep
    return make_config(
        view={"url": stamped.url, "name": stamped.name.upper()},
        pacs={"ae_title": pacs.ae_title, "host": "127.0.0.1", "port": pacs.dicom_port, "retrieve": "c-get"},
        peers=[{"ae_title": "CLOUD", "host": "127.0.0.1", "port": cloud.dicom_port, "iocm": iocm}],
        corrections=corrections,
        **more,
    )


@pytest.mark.parametrize(
    "stamped",
    [("postgresql", kind) for kind in test_view_rowstamp.KINDS],
    indirect=True,
    ids=lambda p: f"{p[0]}-{p[1]}",
)
def test_identity_corrected_then_withdrawn_at_an_orthanc_cloud(
    stamped: StampedView,
    tmp_path: Path,
    make_config: ConfigFactory,
    iocm_pacs: Orthanc,
    cloud: Orthanc,
    pg_journal: str,
    run_proxy: Callable[[Config], Server],
) -> None:
    """The journal on PostgreSQL too, as several nodes share it."""
    config = node_config(make_config, stamped, iocm_pacs, cloud, push=True, journal={"url": pg_journal})
    server = run_proxy(config)
    queue = PushQueue(server.ctx.journal.engine, "test")
    wait_until(lambda: queue.get_state("watermark") is not None, 30, "the first watcher pass")
    stamp = dt.datetime.now().replace(microsecond=0) + dt.timedelta(hours=1)
    row = exam_row(SPEC, RowTimestamp=stamp)
    insert_rows(stamped.engine, [row], stamped.name)
    wait_until(lambda: queue.counts().get(("CLOUD", "done"), 0) == 1, 90, "the study delivered")
    assert set(cloud_instances(cloud)) == SOPS
    old_pid = row["PatientID"]

    # --- the RIS corrects the patient: rejection note + corrected copies -----------------------
    update_rows(
        stamped.engine,
        stamped.name,
        row["ExamineID"],
        {"PatientID": "IOCM-NEW-1", "RowTimestamp": stamp + dt.timedelta(minutes=5)},
    )
    wait_until(lambda: [r["state"] for r in correction_rows(server)] == ["done"], 120, "the correction done")
    (done,) = correction_rows(server)
    assert done["kind"] == "identity-corrected" and done["changed"] == "patient_id"
    held = cloud_instances(cloud)
    notes = [ds for ds in held.values() if ds.SOPClassUID == KOS_SOP_CLASS]
    assert len(notes) == 1
    note = notes[0]
    assert note.ConceptNameCodeSequence[0].CodeValue == "113038"
    assert note.ConceptNameCodeSequence[0].CodingSchemeDesignator == "DCM"
    assert referenced(note) == SOPS  # exactly the delivered instances
    assert note.PatientID == old_pid and note.StudyInstanceUID == SPEC.study_uid
    assert dciodvfy_errors(note, tmp_path / "note.dcm") == []
    copies = {corrected_uid(uid, done["fingerprint"]): uid for uid in SOPS}
    assert set(held) == SOPS | set(copies) | {str(note.SOPInstanceUID)}
    for uid, old in copies.items():
        copy = held[uid]
        assert copy.PatientID == "IOCM-NEW-1"
        reasons = {str(i.ReasonForTheAttributeModification) for i in copy.OriginalAttributesSequence}
        assert reasons == {"COERCE", "CORRECT"}
        olds = [
            str(m.get("SOPInstanceUID", ""))
            for i in copy.OriginalAttributesSequence
            for m in i.ModifiedAttributesSequence
        ]
        assert old in olds
        assert any(
            str(m.get("PatientID", "")) == old_pid
            for i in copy.OriginalAttributesSequence
            for m in i.ModifiedAttributesSequence
        )
    assert sorted(sent_by_role(server, COPIES)) == sorted(SOPS)  # each copy once
    assert len(sent_by_role(server, NOTE)) == 1

    # --- the cloud drops the rejected originals: reconcile sees the copies, nothing missing -----
    for uid in SOPS:
        (found,) = cloud.request("POST", "/tools/lookup", uid.encode())
        cloud.request("DELETE", f"/instances/{found['ID']}")
    view = ExamView(config)
    try:
        performed = dt.datetime.strptime(SPEC.study_date, "%Y%m%d")
        outcome = Reconciler(config, view, server.ctx.journal, rate=50).run(
            performed, performed + dt.timedelta(days=1), ["CLOUD"]
        )
    finally:
        view.close()
    (report,) = [r for r in outcome.reports if r.study_uid == SPEC.study_uid]
    assert report.basis == "destination" and report.category is Category.COMPLETE, report

    # --- a restart: nothing is sent again ------------------------------------------------------
    server.stop(drain_timeout=2.0)
    server = run_proxy(config)
    wait_until(pass_done(server), 60, "two corrections passes after the restart")
    assert sorted(sent_by_role(server, COPIES)) == sorted(SOPS)
    assert len(sent_by_role(server, NOTE)) == 1
    assert len(correction_rows(server)) == 1

    # --- the row is withdrawn (privacy raised): a note for the copies, no image sent -----------
    images_before = len(cloud_instances(cloud))
    update_rows(
        stamped.engine,
        stamped.name,
        row["ExamineID"],
        {"Privacy": 9, "RowTimestamp": stamp + dt.timedelta(minutes=10)},
    )
    wait_until(
        lambda: len(correction_rows(server)) == 2 and correction_rows(server)[1]["state"] == "done",
        120,
        "the withdrawal done",
    )
    withdrawn = correction_rows(server)[1]
    assert withdrawn["kind"] == "row-withdrawn"
    held = cloud_instances(cloud)
    assert len(held) == images_before + 1  # the note only
    (second,) = [
        ds
        for ds in held.values()
        if ds.SOPClassUID == KOS_SOP_CLASS and ds.SOPInstanceUID != note.SOPInstanceUID
    ]
    assert second.ConceptNameCodeSequence[0].CodeValue == "113037"
    assert referenced(second) == set(copies)  # what it held with the corrected identity
    assert second.PatientID == "IOCM-NEW-1"
    assert dciodvfy_errors(second, tmp_path / "note2.dcm") == []
    store = CorrectionStore(server.ctx.journal.engine, "test")
    assert store.counts() == {
        ("CLOUD", "identity-corrected", "done"): 1,
        ("CLOUD", "row-withdrawn", "done"): 1,
    }


@pytest.mark.parametrize(
    "stamped", [("postgresql", "datetime")], indirect=True, ids=lambda p: f"{p[0]}-{p[1]}"
)
def test_without_iocm_a_correction_is_a_warning_an_audit_row_and_nothing_sent(
    stamped: StampedView,
    make_config: ConfigFactory,
    iocm_pacs: Orthanc,
    cloud: Orthanc,
    run_proxy: Callable[[Config], Server],
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = node_config(make_config, stamped, iocm_pacs, cloud, push=True, iocm=False, sweep=None)
    server = run_proxy(config)
    queue = PushQueue(server.ctx.journal.engine, "test")
    wait_until(lambda: queue.get_state("watermark") is not None, 30, "the first watcher pass")
    stamp = dt.datetime.now().replace(microsecond=0) + dt.timedelta(hours=1)
    row = exam_row(SPEC, RowTimestamp=stamp)
    insert_rows(stamped.engine, [row], stamped.name)
    wait_until(lambda: queue.counts().get(("CLOUD", "done"), 0) == 1, 90, "the study delivered")
    update_rows(
        stamped.engine,
        stamped.name,
        row["ExamineID"],
        {"AccessionNumber": "IOCM-ACC-2", "RowTimestamp": stamp + dt.timedelta(minutes=5)},
    )
    wait_until(
        lambda: [r["state"] for r in correction_rows(server)] == ["warned"], 60, "the correction warned"
    )
    wait_until(pass_done(server), 30, "two more corrections passes")
    assert correction_rows(server)[0]["changed"] == "accession"
    assert set(cloud_instances(cloud)) == SOPS  # nothing else sent
    warnings = [r.getMessage() for r in caplog.records if r.name == "dicomproxy.corrections"]
    assert len(warnings) == 1 and SPEC.study_uid in warnings[0]
    assert "IOCM-ACC-2" not in warnings[0] and row["PatientID"] not in warnings[0]
    audit = AuditTrail(server.ctx.journal.engine)
    wait_until(lambda: audit.rows(study=SPEC.study_uid), 10, "the audit row")
    (found,) = [r for r in audit.rows(study=SPEC.study_uid) if r["action"] == Action.CORRECTION]
    assert found["outcome"] == "warned" and row["PatientID"] in found["patient_ids"]


@pytest.mark.parametrize(
    "stamped", [("postgresql", "rowversion")], indirect=True, ids=lambda p: f"{p[0]}-{p[1]}"
)
def test_exam_relinked_rejects_the_old_study_and_pushes_the_new_one(
    stamped: StampedView,
    tmp_path: Path,
    make_config: ConfigFactory,
    iocm_pacs: Orthanc,
    cloud: Orthanc,
    run_proxy: Callable[[Config], Server],
) -> None:
    config = node_config(make_config, stamped, iocm_pacs, cloud, push=True, sweep=None)
    server = run_proxy(config)
    queue = PushQueue(server.ctx.journal.engine, "test")
    wait_until(lambda: queue.get_state("watermark") is not None, 30, "the first watcher pass")
    row = exam_row(SPEC)
    insert_rows(stamped.engine, [row], stamped.name)
    wait_until(lambda: queue.counts().get(("CLOUD", "done"), 0) == 1, 90, "the study delivered")
    # the RIS re-links the exam to another study (its images are in the PACS)
    update_rows(stamped.engine, stamped.name, row["ExamineID"], {"StudyInstanceUID": SPEC2.study_uid})
    wait_until(lambda: [r["state"] for r in correction_rows(server)] == ["done"], 120, "the correction done")
    wait_until(lambda: queue.counts().get(("CLOUD", "done"), 0) == 2, 90, "the new study delivered")
    (done,) = correction_rows(server)
    assert done["kind"] == "exam-relinked" and done["relinked_to"] == SPEC2.study_uid
    held = cloud_instances(cloud)
    (note,) = [ds for ds in held.values() if ds.SOPClassUID == KOS_SOP_CLASS]
    assert note.ConceptNameCodeSequence[0].CodeValue == "113038"
    assert note.StudyInstanceUID == SPEC.study_uid and referenced(note) == SOPS
    assert dciodvfy_errors(note, tmp_path / "note.dcm") == []
    new = {SPEC2.sop_uid(0, i) for i in range(SPEC2.images_per_series)}
    assert set(held) == SOPS | new | {str(note.SOPInstanceUID)}  # no copies of the old study
    assert sent_by_role(server, COPIES) == []


PDF1 = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
PDF2 = b"%PDF-1.4\n% revised\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"


@pytest.mark.parametrize(
    "stamped", [("postgresql", "datetime")], indirect=True, ids=lambda p: f"{p[0]}-{p[1]}"
)
def test_report_revised_rejects_the_superseded_object_and_a_withdrawal_takes_the_report_too(
    stamped: StampedView,
    tmp_path: Path,
    make_config: ConfigFactory,
    iocm_pacs: Orthanc,
    cloud: Orthanc,
    http_folder: tuple[str, Path],
    run_proxy: Callable[[Config], Server],
) -> None:
    base_url, folder = http_folder
    (folder / "r.pdf").write_bytes(PDF1)
    config = node_config(make_config, stamped, iocm_pacs, cloud, push=True)
    server = run_proxy(config)
    queue = PushQueue(server.ctx.journal.engine, "test")
    wait_until(lambda: queue.get_state("watermark") is not None, 30, "the first watcher pass")
    stamp = dt.datetime.now().replace(microsecond=0) + dt.timedelta(hours=1)
    row = exam_row(SPEC, RowTimestamp=stamp, ReportFilePath=f"{base_url}/r.pdf")
    insert_rows(stamped.engine, [row], stamped.name)
    wait_until(lambda: len(cloud_instances(cloud)) == len(SOPS) + 1, 90, "images and report at the cloud")
    (first,) = [u for u, ds in cloud_instances(cloud).items() if ds.SOPClassUID == ENCAPSULATED_PDF]

    # the report is revised: new bytes, the row's stamp moves
    (folder / "r.pdf").write_bytes(PDF2)
    update_rows(
        stamped.engine, stamped.name, row["ExamineID"], {"RowTimestamp": stamp + dt.timedelta(minutes=5)}
    )
    wait_until(lambda: [r["state"] for r in correction_rows(server)] == ["done"], 120, "the correction done")
    (done,) = correction_rows(server)
    assert done["kind"] == "report-revised" and done["object_uid"] == first
    held = cloud_instances(cloud)
    reports = [u for u, ds in held.items() if ds.SOPClassUID == ENCAPSULATED_PDF]
    assert len(reports) == 2 and first in reports
    (second,) = [u for u in reports if u != first]
    (note,) = [ds for ds in held.values() if ds.SOPClassUID == KOS_SOP_CLASS]
    assert note.ConceptNameCodeSequence[0].CodeValue == "113001"
    assert referenced(note) == {first}  # the superseded object only
    assert dciodvfy_errors(note, tmp_path / "note.dcm") == []

    # withdrawn: the note takes the images and the current report
    update_rows(
        stamped.engine,
        stamped.name,
        row["ExamineID"],
        {"Privacy": 9, "RowTimestamp": stamp + dt.timedelta(minutes=10)},
    )
    wait_until(
        lambda: [r["state"] for r in correction_rows(server)] == ["done", "done"], 120, "the withdrawal done"
    )
    notes = [ds for ds in cloud_instances(cloud).values() if ds.SOPClassUID == KOS_SOP_CLASS]
    (gone,) = [ds for ds in notes if ds.SOPInstanceUID != note.SOPInstanceUID]
    assert gone.ConceptNameCodeSequence[0].CodeValue == "113037"
    assert referenced(gone) >= SOPS | {second}


@pytest.mark.parametrize(
    "stamped", [("postgresql", "rowversion")], indirect=True, ids=lambda p: f"{p[0]}-{p[1]}"
)
def test_identity_corrected_rejects_and_resends_the_report_object_too(
    stamped: StampedView,
    tmp_path: Path,
    make_config: ConfigFactory,
    iocm_pacs: Orthanc,
    cloud: Orthanc,
    http_folder: tuple[str, Path],
    run_proxy: Callable[[Config], Server],
) -> None:
    base_url, folder = http_folder
    (folder / "r.pdf").write_bytes(PDF1)
    config = node_config(make_config, stamped, iocm_pacs, cloud, push=True, sweep=None)
    server = run_proxy(config)
    queue = PushQueue(server.ctx.journal.engine, "test")
    wait_until(lambda: queue.get_state("watermark") is not None, 30, "the first watcher pass")
    row = exam_row(SPEC, ReportFilePath=f"{base_url}/r.pdf")
    insert_rows(stamped.engine, [row], stamped.name)
    wait_until(lambda: len(cloud_instances(cloud)) == len(SOPS) + 1, 90, "images and report at the cloud")
    (report,) = [u for u, ds in cloud_instances(cloud).items() if ds.SOPClassUID == ENCAPSULATED_PDF]

    update_rows(stamped.engine, stamped.name, row["ExamineID"], {"PatientID": "IOCM-NEW-2"})
    wait_until(lambda: [r["state"] for r in correction_rows(server)] == ["done"], 120, "the correction done")
    (done,) = correction_rows(server)
    held = cloud_instances(cloud)
    (note,) = [ds for ds in held.values() if ds.SOPClassUID == KOS_SOP_CLASS]
    assert referenced(note) == SOPS | {report}  # the images and the report object
    assert dciodvfy_errors(note, tmp_path / "note.dcm") == []
    copies = {corrected_uid(uid, done["fingerprint"]) for uid in SOPS | {report}}
    assert set(held) == SOPS | {report} | copies | {str(note.SOPInstanceUID)}
    report_copy = held[corrected_uid(report, done["fingerprint"])]
    assert report_copy.SOPClassUID == ENCAPSULATED_PDF and report_copy.PatientID == "IOCM-NEW-2"
    assert done["copies"] == len(SOPS) + 1
    assert len(sent_by_role(server, "objects")) == 1


# --- without push: a study the cloud retrieved by C-MOVE (the corrections service of its own) ---


def c_move(server: Server, study_uid: str) -> None:
    """The cloud's C-MOVE of ``study_uid`` to itself, every sub-operation completed."""
    result = scu.move(
        Remote("DICOMPROXY", "127.0.0.1", server.port),
        "CLOUD",
        scu.identifier(study_uids=[study_uid]),
        calling_ae="CLOUD",
        timeout=60,
    )
    assert result.status == 0x0000 and result.failed == 0, result.line()


ROWVERSION = [("postgresql", "rowversion")]


@pytest.mark.parametrize("iocm", [True, False], ids=["iocm", "no-iocm"])
@pytest.mark.parametrize("stamped", ROWVERSION, indirect=True, ids=lambda p: f"{p[0]}-{p[1]}")
def test_without_push_a_study_retrieved_by_c_move_is_corrected(
    iocm: bool,
    stamped: StampedView,
    make_config: ConfigFactory,
    iocm_pacs: Orthanc,
    cloud: Orthanc,
    run_proxy: Callable[[Config], Server],
    caplog: pytest.LogCaptureFixture,
) -> None:
    row = exam_row(SPEC)
    insert_rows(stamped.engine, [row], stamped.name)
    console = {} if iocm else {"http": {"port": free_port()}}  # the status page of a node without push
    server = run_proxy(node_config(make_config, stamped, iocm_pacs, cloud, iocm=iocm, **console))
    assert server.ctx.push is None
    wait_until(pass_done(server), 30, "the first corrections passes")
    c_move(server, SPEC.study_uid)
    assert set(cloud_instances(cloud)) == SOPS
    update_rows(stamped.engine, stamped.name, row["ExamineID"], {"PatientID": "IOCM-NEW-3"})
    wanted = ["done"] if iocm else ["warned"]
    wait_until(lambda: [r["state"] for r in correction_rows(server)] == wanted, 120, "the correction")
    (done,) = correction_rows(server)
    assert done["kind"] == "identity-corrected" and done["changed"] == "patient_id"
    held = cloud_instances(cloud)
    if not iocm:
        wait_until(pass_done(server), 30, "two more corrections passes")
        assert set(cloud_instances(cloud)) == SOPS  # nothing sent
        warnings = [r.getMessage() for r in caplog.records if r.name == "dicomproxy.corrections"]
        assert len(warnings) == 1 and SPEC.study_uid in warnings[0] and "IOCM-NEW-3" not in warnings[0]
        audit = AuditTrail(server.ctx.journal.engine)
        wait_until(
            lambda: any(r["action"] == Action.CORRECTION for r in audit.rows(study=SPEC.study_uid)),
            10,
            "audit",
        )
        (found,) = [r for r in audit.rows(study=SPEC.study_uid) if r["action"] == Action.CORRECTION]
        assert found["outcome"] == "warned" and row["PatientID"] in found["patient_ids"]
        assert server.console is not None
        _, status = Http(server.console.url).json("/api/status")
        assert status["corrections"] == [
            {"destination": "CLOUD", "warned": 1, "due": 0, "running": 0, "done": 0, "failed": 0}
        ]
        return
    (note,) = [ds for ds in held.values() if ds.SOPClassUID == KOS_SOP_CLASS]
    assert note.ConceptNameCodeSequence[0].CodeValue == "113038" and referenced(note) == SOPS
    copies = {corrected_uid(uid, done["fingerprint"]) for uid in SOPS}
    assert set(held) == SOPS | copies | {str(note.SOPInstanceUID)}
    assert all(held[uid].PatientID == "IOCM-NEW-3" for uid in copies)
    # the row is deleted (no stamp announces it): the sweep finds it, a note for the copies, 113037
    delete_rows(stamped.engine, stamped.name, row["ExamineID"])
    wait_until(
        lambda: [r["state"] for r in correction_rows(server)] == ["done", "done"], 60, "the withdrawal"
    )
    assert correction_rows(server)[1]["kind"] == "row-withdrawn"
    (gone,) = [
        ds
        for ds in cloud_instances(cloud).values()
        if ds.SOPClassUID == KOS_SOP_CLASS and ds.SOPInstanceUID != note.SOPInstanceUID
    ]
    assert gone.ConceptNameCodeSequence[0].CodeValue == "113037" and referenced(gone) == copies


@pytest.mark.parametrize("stamped", ROWVERSION, indirect=True, ids=lambda p: f"{p[0]}-{p[1]}")
def test_an_exam_retrieved_by_c_move_and_relinked_is_not_taken_for_a_withdrawal(
    stamped: StampedView,
    make_config: ConfigFactory,
    iocm_pacs: Orthanc,
    cloud: Orthanc,
    run_proxy: Callable[[Config], Server],
) -> None:
    row = exam_row(SPEC)
    insert_rows(stamped.engine, [row], stamped.name)
    server = run_proxy(node_config(make_config, stamped, iocm_pacs, cloud))
    wait_until(pass_done(server), 30, "the first corrections passes")
    c_move(server, SPEC.study_uid)
    # the RIS re-links the exam row to another study (no push knew the exam: only the C-MOVE did)
    update_rows(stamped.engine, stamped.name, row["ExamineID"], {"StudyInstanceUID": SPEC2.study_uid})
    wait_until(lambda: [r["state"] for r in correction_rows(server)] == ["done"], 120, "the correction done")
    (done,) = correction_rows(server)
    assert done["kind"] == "exam-relinked" and done["relinked_to"] == SPEC2.study_uid
    held = cloud_instances(cloud)
    (note,) = [ds for ds in held.values() if ds.SOPClassUID == KOS_SOP_CLASS]
    assert note.ConceptNameCodeSequence[0].CodeValue == "113038" and referenced(note) == SOPS
    new = {SPEC2.sop_uid(0, i) for i in range(SPEC2.images_per_series)}
    assert set(held) == SOPS | new | {str(note.SOPInstanceUID)}  # the new study delivered, no copies
    assert all(held[uid].PatientID == row["PatientID"] for uid in new)


@pytest.mark.parametrize("stamped", ROWVERSION, indirect=True, ids=lambda p: f"{p[0]}-{p[1]}")
def test_a_report_retrieved_by_c_move_then_revised_is_rejected_and_the_new_one_sent(
    stamped: StampedView,
    tmp_path: Path,
    make_config: ConfigFactory,
    iocm_pacs: Orthanc,
    cloud: Orthanc,
    http_folder: tuple[str, Path],
    run_proxy: Callable[[Config], Server],
) -> None:
    base_url, folder = http_folder
    (folder / "r.pdf").write_bytes(PDF1)
    row = exam_row(SPEC, ReportFilePath=f"{base_url}/r.pdf")
    insert_rows(stamped.engine, [row], stamped.name)
    config = node_config(make_config, stamped, iocm_pacs, cloud, reports={"in_retrieve": True})
    server = run_proxy(config)
    wait_until(pass_done(server), 30, "the first corrections passes")
    c_move(server, SPEC.study_uid)
    (first,) = [u for u, ds in cloud_instances(cloud).items() if ds.SOPClassUID == ENCAPSULATED_PDF]
    # the report is revised: new bytes at a new address (the row changes: its rowversion moves)
    (folder / "r.pdf").write_bytes(PDF2)
    update_rows(stamped.engine, stamped.name, row["ExamineID"], {"ReportFilePath": f"{base_url}/r.pdf?v=2"})
    wait_until(lambda: [r["state"] for r in correction_rows(server)] == ["done"], 120, "the correction done")
    (done,) = correction_rows(server)
    assert done["kind"] == "report-revised" and done["object_uid"] == first
    held = cloud_instances(cloud)
    reports = [u for u, ds in held.items() if ds.SOPClassUID == ENCAPSULATED_PDF]
    assert len(reports) == 2 and first in reports  # the new object sent
    (note,) = [ds for ds in held.values() if ds.SOPClassUID == KOS_SOP_CLASS]
    assert note.ConceptNameCodeSequence[0].CodeValue == "113001" and referenced(note) == {first}
    assert dciodvfy_errors(note, tmp_path / "note.dcm") == []
    assert set(held) == SOPS | set(reports) | {str(note.SOPInstanceUID)}
