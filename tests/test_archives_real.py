"""Two real archives at once, routed by the exam view's Sysid (issue 8).

A real Orthanc is ``[pacs]`` for RIS, EIS and PIS; a real DCMTK dcmqrscp is the ``uis`` archive
for UIS and ECG. Each archive holds only its own studies (plus the unroutable one, in both), so
an answer from the wrong archive would be empty. The proxy runs in-process on the real
ExamView (SQLite); the cloud is pynetdicom (``dicomproxy.transport.scu``) and the destination a DCMTK
storescp. Compression mode ``none``: every department object kind must arrive byte-identical.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy import create_engine

from dicomproxy.app import build_context
from dicomproxy.config import Config, parse_config
from dicomproxy.server import Server
from dicomproxy.transport import scu
from dicomproxy.transport.findscu import run_find
from dicomproxy.transport.net import Remote
from testkit import free_port
from testkit.dcmtk import DcmQrSCP, StoreSCP
from testkit.orthanc import Orthanc
from testkit.samples import Patient, StudySpec, write_study
from testkit.samples_dept import dept_exam_row, dept_study_specs
from testkit.viewdb import create_view_table, insert_rows
from tests.conftest import base_config_dict

CLOUD, DEST, PROXY_AE = "CLOUD", "DEST", "DICOMPROXY"
SPECS = {dept_exam_row(spec)["Sysid"]: spec for spec in dept_study_specs()}
#: Only in Orthanc, but its view row says UIS (routed to dcmqrscp): must not be found.
MISROUTED = StudySpec("CT", Patient(patient_id="P0198", name="孙立"), "D0098", images_per_series=2, seed=21)
#: In both archives, but its view row's Sysid has no archive: must fail, nothing fetched.
UNROUTABLE = StudySpec("CT", Patient(patient_id="P0199", name="李娜"), "D0099", images_per_series=2, seed=22)
ORTHANC_SYSIDS = ["RIS", "EIS", "PIS"]
DCMQR_SYSIDS = ["UIS", "ECG"]


def view_rows() -> list[dict[str, Any]]:
    rows = [dept_exam_row(spec) for spec in SPECS.values()]
    rows.append(dept_exam_row(MISROUTED, Sysid="UIS", ExamineType="US"))
    rows.append(dept_exam_row(UNROUTABLE, Sysid="XIS", ExamineType="XA"))
    return rows


@dataclass
class Rig:
    server: Server
    ctx: Any
    dest: StoreSCP
    files: dict[str, list[Path]]
    orthanc: Orthanc
    dcmqr: DcmQrSCP

    @property
    def proxy(self) -> Remote:
        return Remote(PROXY_AE, "127.0.0.1", self.server.port)

    def received(self) -> list[Path]:
        return self.dest.received()

    def clear(self) -> None:
        for p in self.dest.received():
            p.unlink()


def _need(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed (scripts/setup.sh test installs it)")


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, dept_files: dict[str, list[Path]]) -> Iterator[Rig]:
    for tool in ("Orthanc", "dcmqrscp", "storescp", "storescu"):
        _need(tool)
    root = tmp_path_factory.mktemp("archives")
    extra = {s.accession: write_study(s, root / s.accession) for s in (MISROUTED, UNROUTABLE)}
    files = {**dept_files, "MISROUTED": extra[MISROUTED.accession], "UNROUTABLE": extra[UNROUTABLE.accession]}
    proxy_port = free_port()
    me = Remote(PROXY_AE, "127.0.0.1", proxy_port)
    started: list[Any] = []
    try:
        orthanc = Orthanc(root / "orthanc", modalities={"proxy": me}).start()
        started.append(orthanc)
        for key in (*ORTHANC_SYSIDS, "MISROUTED", "UNROUTABLE"):
            orthanc.upload(files[key])
        # JPEG Baseline (US cine) stored and sent as it is, never decompressed
        dcmqr = DcmQrSCP(root / "dcmqrscp", "UISARCH", {"proxy": me}, keep_syntax=True).start()
        started.append(dcmqr)
        dcmqr.load([p for key in (*DCMQR_SYSIDS, "UNROUTABLE") for p in files[key]])
        dest = StoreSCP(root / "dest", DEST).start()
        started.append(dest)
        view_url = f"sqlite:///{root / 'view.db'}"
        engine = create_engine(view_url)
        create_view_table(engine)
        insert_rows(engine, view_rows())
        engine.dispose()
        doc = base_config_dict(
            root,
            view_url,
            proxy={"port": proxy_port},
            pacs={
                "ae_title": orthanc.ae_title,
                "port": orthanc.dicom_port,
                "sysids": ORTHANC_SYSIDS,
                "max_concurrent": 2,
            },
            archives=[
                {
                    "name": "uis",
                    "ae_title": dcmqr.ae_title,
                    "host": "127.0.0.1",
                    "port": dcmqr.port,
                    "sysids": DCMQR_SYSIDS,
                    "max_concurrent": 1,
                    "dimse_timeout": 60.0,
                }
            ],
            peers=[
                {"ae_title": CLOUD, "host": "127.0.0.1", "port": 1},
                {"ae_title": DEST, "host": "127.0.0.1", "port": dest.port},
            ],
        )
        config: Config = parse_config(doc, str(root / "test.toml"))
        ctx = build_context(config)
        server = Server(config, ctx)
        server.start()
        try:
            yield Rig(server, ctx, dest, files, orthanc, dcmqr)
        finally:
            server.stop(drain_timeout=2.0)
    finally:
        for item in reversed(started):
            item.stop()


@pytest.fixture
def clean(rig: Rig) -> Rig:
    rig.clear()
    return rig


def payload(ds: Dataset) -> Any:
    """The bytes that must not change: pixel / waveform / document data, else the whole data set."""
    for keyword in ("PixelData", "EncapsulatedDocument"):
        if keyword in ds:
            return ds[keyword].value
    if "WaveformSequence" in ds:
        return [bytes(item.WaveformData) for item in ds.WaveformSequence]
    return ds


def by_uid(paths: list[Path]) -> dict[str, tuple[str, str, Any]]:
    out = {}
    for p in paths:
        ds = dcmread(p)
        out[str(ds.SOPInstanceUID)] = (str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID), payload(ds))
    return out


@pytest.mark.parametrize(
    ("sysid", "archive"), [("RIS", "pacs"), ("UIS", "uis"), ("EIS", "pacs"), ("ECG", "uis"), ("PIS", "pacs")]
)
def test_each_department_study_relayed_intact_from_its_archive(clean: Rig, sysid: str, archive: str) -> None:
    """C-MOVE by Study UID: every object kind of the department arrives with its transfer syntax
    and payload unchanged, and the journal names the archive that served it."""
    rig = clean
    query = scu.identifier(study_uids=[SPECS[sysid].study_uid])
    result = scu.move(rig.proxy, DEST, query, calling_ae=CLOUD, timeout=120)
    expected = by_uid(rig.files[sysid])
    assert (result.status, result.completed, result.failed) == (0x0000, len(expected), 0), result.line()
    assert by_uid(rig.received()) == expected
    job = rig.ctx.journal.recent(1)[0]
    assert (job["archive"], job["outcome"], job["completed"]) == (archive, "success", len(expected))


def test_patient_spanning_two_archives_in_one_job(clean: Rig) -> None:
    """Patient P0101 has RIS and EIS exams (Orthanc) and an ECG (dcmqrscp): one C-MOVE, split per archive."""
    rig = clean
    result = scu.move(
        rig.proxy, DEST, scu.identifier("PATIENT", patient_id="P0101"), calling_ae=CLOUD, timeout=120
    )
    expected = by_uid([p for key in ("RIS", "EIS", "ECG") for p in rig.files[key]])
    assert (result.status, result.completed, result.failed) == (0x0000, len(expected), 0), result.line()
    assert by_uid(rig.received()) == expected
    job = rig.ctx.journal.recent(1)[0]
    assert sorted(job["archive"].split(",")) == ["pacs", "uis"]


def test_unroutable_exam_fails_clearly_and_nothing_is_fetched(clean: Rig) -> None:
    rig = clean
    query = scu.identifier(study_uids=[UNROUTABLE.study_uid])
    result = scu.move(rig.proxy, DEST, query, calling_ae=CLOUD, timeout=60)
    assert result.status == 0xC004, result.line()
    assert "no archive configured" in result.comment
    assert rig.received() == []
    job = rig.ctx.journal.recent(1)[0]
    assert (job["outcome"], job["status"], job["archive"], job["expected"]) == ("failed", 0xC004, "", 0)
    # C-GET the same
    got = scu.get(rig.proxy, query, calling_ae=CLOUD, out_dir=rig.dest.workdir / "get", timeout=60)
    assert (got.status, got.received) == (0xC004, 0), got.line()


def test_misrouted_exam_is_not_looked_for_in_another_archive(clean: Rig) -> None:
    """Its row says UIS, the study lives only in Orthanc: dcmqrscp has nothing, so nothing is sent."""
    rig = clean
    result = scu.move(rig.proxy, DEST, scu.identifier(study_uids=[MISROUTED.study_uid]), calling_ae=CLOUD)
    assert (result.status, result.completed, result.failed) == (0x0000, 0, 0), result.line()
    assert rig.received() == []
    job = rig.ctx.journal.recent(1)[0]
    assert (job["archive"], job["expected"], job["outcome"]) == ("uis", 0, "empty")


def _series_query(study_uid: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "SERIES"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = ""
    ds.Modality = ""
    return ds


@pytest.mark.parametrize("sysid", ["RIS", "UIS", "ECG", "PIS"])
def test_series_level_find_goes_to_the_routed_archive(rig: Rig, sysid: str) -> None:
    expected = {str(dcmread(p, stop_before_pixels=True).SeriesInstanceUID) for p in rig.files[sysid]}
    out = run_find(CLOUD, rig.proxy, "study", _series_query(SPECS[sysid].study_uid))
    assert out.status == 0x0000, out
    assert {str(ds.SeriesInstanceUID) for ds in out.answers} == expected


def test_series_level_find_misrouted_and_unroutable(rig: Rig) -> None:
    out = run_find(CLOUD, rig.proxy, "study", _series_query(MISROUTED.study_uid))
    assert (out.status, out.answers) == (0x0000, [])  # asked of dcmqrscp only, which has none
    out = run_find(CLOUD, rig.proxy, "study", _series_query(UNROUTABLE.study_uid))
    assert out.status == 0xC004 and out.answers == [], out


def test_study_counts_come_from_the_routed_archive(rig: Rig) -> None:
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.PatientID = "P0101"
    query.StudyInstanceUID = ""
    query.NumberOfStudyRelatedInstances = ""
    out = run_find(CLOUD, rig.proxy, "study", query)
    assert out.status == 0x0000, out
    counts = {str(ds.StudyInstanceUID): ds.get("NumberOfStudyRelatedInstances") for ds in out.answers}
    assert set(counts) == {SPECS[k].study_uid for k in ("RIS", "EIS", "ECG")}
    for key in ("RIS", "EIS"):  # Orthanc answers the count
        assert str(counts[SPECS[key].study_uid]) == str(len(rig.files[key]))
    # dcmqrscp does not compute Number of Study Related Instances: empty, and no error
    assert counts[SPECS["ECG"].study_uid] in (None, "")


def test_fallback_finds_a_misrouted_study_in_the_next_archive(rig: Rig, tmp_path: Path) -> None:
    """Optional ``fallback``: ``uis`` lacks the misrouted study, ``pacs`` (next in its list) has it.

    A second proxy on the same two archives; its ``[pacs]`` uses upstream C-GET, so Orthanc
    needs no C-MOVE destination for it. Unroutable studies still fail (no fallback).
    """
    base = rig.ctx.config
    pacs = replace(base.pacs, retrieve="c-get")
    uis = replace(base.archives[0], fallback=("pacs",))
    config = replace(base, path=str(tmp_path / "fallback.toml"), pacs=pacs, archives=(uis,))
    config = replace(config, proxy=replace(base.proxy, port=0, data_dir=str(tmp_path / "var")))
    ctx = build_context(config)
    server = Server(config, ctx)
    server.start()
    try:
        rig.clear()
        proxy = Remote(PROXY_AE, "127.0.0.1", server.port)
        result = scu.move(proxy, DEST, scu.identifier(study_uids=[MISROUTED.study_uid]), calling_ae=CLOUD)
        assert (result.status, result.completed, result.failed) == (0x0000, 2, 0), result.line()
        assert by_uid(rig.received()) == by_uid(rig.files["MISROUTED"])
        job = ctx.journal.recent(1)[0]
        assert (job["archive"], job["outcome"]) == ("pacs", "success")
        rig.clear()
        result = scu.move(proxy, DEST, scu.identifier(study_uids=[UNROUTABLE.study_uid]), calling_ae=CLOUD)
        assert result.status == 0xC004 and rig.received() == [], result.line()
    finally:
        server.stop(drain_timeout=2.0)
