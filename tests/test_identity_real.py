"""The exam view's identity on every outgoing instance, with real peers (issue 26 item 1).

Orthanc is the PACS; it holds a real-CT study (pydicom-data pixels) whose Patient ID, name, issuer
and accession are not the view's, written by a PACS that knows ASCII only (no Specific Character
Set). The cloud asks the proxy by C-MOVE and C-GET; DCMTK storescp (one per destination:
compression none / lossless / lossy, coercion on or off) and a second Orthanc receive. Every
delivered instance carries the view's values, the PACS's in Original Attributes Sequence, the same
SOP Instance UID, and the pixel data bit-exact: the PACS's own bytes in ``none`` mode, the same
decoded pixels in lossless mode, and in lossy mode the same compressed bytes as a delivery without
coercion. ``dciodvfy`` finds no error the baseline file does not have. ``coerce = false`` sends
the PACS's data set unchanged. The journal records the identity of each delivery.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy import create_engine

from dicomproxy.app import build_context
from dicomproxy.config import parse_config
from dicomproxy.server import Server
from dicomproxy.transport import scu
from dicomproxy.transport.net import Remote
from testkit import free_port
from testkit.dcmtk import StoreSCP
from testkit.orthanc import Orthanc
from testkit.realct import CorpusMissing, write_real_study
from testkit.samples import Patient, StudySpec, exam_row
from testkit.viewdb import create_view_table, insert_rows
from tests.conftest import _need, base_config_dict

PROXY_AE = "DICOMPROXY"
CLOUD = "CLOUD"
#: What the PACS wrote (ASCII only, another ID domain, the accession typed at the modality).
PACS_SPEC = StudySpec(
    "CT",
    Patient(patient_id="PACS-4711", name="UNKNOWN^EMERGENCY", pinyin="", issuer="74580626.PACS"),
    accession="MOD-0815",
    images_per_series=3,
    name_style="single",
    seed=2601,
)
#: What the exam view says about the same study (the RIS merged the emergency patient).
VIEW = {
    "PatientID": "H000123",
    "PIDAssigningAuthority": "74580626.HIS",
    "PatientName": "王小东",
    "AccessionNumber": "RIS-2026-001",
}
#: A study of the view with a report file and no image in the PACS (``[reports] in_retrieve``).
REPORT_SPEC = StudySpec("CT", accession="RIS-2026-002", seed=2602)
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
HIS_OID = "1.2.156.112604.1.2.1"
ACCESSION_OID = "1.2.156.112604.1.2.9"
#: Destination AE title → (compression, coerce).
DESTINATIONS = {
    "D_NONE": ("none", True),
    "D_LOSSLESS": ("lossless", True),
    "D_LOSSY": ("lossy", True),
    "RAW_NONE": ("none", False),
    "RAW_LOSSY": ("lossy", False),
}


@dataclass
class Site:
    servers: dict[str, Server]  # upstream retrieve method → a proxy using it
    ctx: Any  # the c-move proxy's
    dests: dict[str, StoreSCP]
    cloud: Orthanc
    originals: dict[str, Path]  # SOP Instance UID → the file the PACS holds

    def proxy(self, upstream: str = "c-move") -> Remote:
        return Remote(PROXY_AE, "127.0.0.1", self.servers[upstream].port)

    def take(self, ae: str) -> dict[str, Path]:
        """What ``ae`` received since the last take, by SOP Instance UID (the files are moved away)."""
        out = {}
        taken = self.dests[ae].workdir / f"taken-{len(list(self.dests[ae].workdir.glob('taken-*')))}"
        taken.mkdir()
        for path in self.dests[ae].received():
            kept = taken / path.name
            path.rename(kept)
            out[str(dcmread(kept, stop_before_pixels=True).SOPInstanceUID)] = kept
        return out


def _proxy(
    tmp: Path, retrieve: str, port: int, pacs: Orthanc, cloud: Orthanc, dests: dict[str, StoreSCP]
) -> Server:
    """A proxy in front of ``pacs`` (upstream ``retrieve``) whose peers are the cloud and ``dests``."""
    tmp.mkdir(parents=True, exist_ok=True)
    view_url = f"sqlite:///{tmp / 'view.db'}"
    engine = create_engine(view_url)
    create_view_table(engine)
    (tmp / "r.pdf").write_bytes(PDF)
    report_row = exam_row(REPORT_SPEC, **{**VIEW, "AccessionNumber": REPORT_SPEC.accession})
    report_row["ReportFilePath"] = str(tmp / "r.pdf")
    insert_rows(engine, [exam_row(PACS_SPEC, **VIEW, ReportFilePath=None), report_row])
    engine.dispose()
    peers: list[dict[str, Any]] = [
        {"ae_title": CLOUD, "host": "127.0.0.1", "port": 1},
        {"ae_title": cloud.ae_title, "host": "127.0.0.1", "port": cloud.dicom_port},
    ]
    for ae, (mode, coerce) in DESTINATIONS.items():
        peers.append(
            {
                "ae_title": ae,
                "host": "127.0.0.1",
                "port": dests[ae].port,
                "compression": mode,
                "coerce": coerce,
            }
        )
    doc = base_config_dict(
        tmp,
        view_url,
        # the c-get proxy sends through pynetdicom (a written file), the c-move one on raw sockets
        proxy={"port": port, "fast_path": retrieve == "c-move"},
        hospital={
            "id": "74580626",
            "name": "温岭市第一人民医院",
            "issuers": {"74580626.HIS": HIS_OID},
            "accession_issuer": ACCESSION_OID,
        },
        pacs={"ae_title": pacs.ae_title, "host": "127.0.0.1", "port": pacs.dicom_port, "retrieve": retrieve},
        peers=peers,
        reports={"in_retrieve": True, "timeout": 5},
    )
    config = parse_config(doc, str(tmp / "dicomproxy.toml"))
    server = Server(config, build_context(config))
    server.start()
    return server


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    for tool in ("Orthanc", "storescp", "dciodvfy"):
        _need(tool)
    tmp = tmp_path_factory.mktemp("identity")
    try:
        paths = write_real_study(PACS_SPEC, tmp / "pacs-files")
    except CorpusMissing as exc:
        pytest.skip(str(exc))
    for path in paths:  # a PACS that writes ASCII only: no Specific Character Set (ISO_IR 6)
        ds = dcmread(path)
        del ds.SpecificCharacterSet
        ds.InstitutionName, ds.StudyDescription = "WENLING FIRST HOSPITAL", "CHEST CT"
        ds.save_as(path, enforce_file_format=True)
    move_port = free_port()
    pacs = Orthanc(tmp / "pacs", ae_title="PACS").start()
    pacs.upload(paths)
    pacs.add_modality("proxy", Remote(PROXY_AE, "127.0.0.1", move_port))
    cloud = Orthanc(tmp / "cloud", ae_title="ORTHANC_CLOUD").start()
    dests = {ae: StoreSCP(tmp / ae, ae).start() for ae in DESTINATIONS}
    servers: dict[str, Server] = {}
    try:
        servers["c-move"] = _proxy(tmp / "move", "c-move", move_port, pacs, cloud, dests)
        servers["c-get"] = _proxy(tmp / "get", "c-get", free_port(), pacs, cloud, dests)
        originals = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in paths}
        yield Site(servers, servers["c-move"].ctx, dests, cloud, originals)
    finally:
        for server in servers.values():
            server.stop(drain_timeout=2.0)
        for scp in dests.values():
            scp.stop()
        cloud.stop()
        pacs.stop()


def _dciodvfy_errors(path: Path) -> set[str]:
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return {line.strip() for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")}


def assert_view_identity(ds: Dataset) -> None:
    """The view's values, the issuers' OIDs, the PACS's values in Original Attributes Sequence."""
    assert ds.PatientID == VIEW["PatientID"]
    assert ds.IssuerOfPatientID == VIEW["PIDAssigningAuthority"]
    assert str(ds.PatientName) == "=王小东"  # [view] name_style "ideographic", as C-FIND answers it
    assert ds.AccessionNumber == VIEW["AccessionNumber"]
    assert ds.SpecificCharacterSet == "ISO_IR 192"  # the PACS declared none: ASCII could not carry the name
    assert ds.IssuerOfPatientIDQualifiersSequence[0].UniversalEntityID == HIS_OID
    assert ds.IssuerOfAccessionNumberSequence[0].UniversalEntityID == ACCESSION_OID
    assert ds.InstitutionName == "温岭市第一人民医院"
    item = ds.OriginalAttributesSequence[-1]
    assert item.ReasonForTheAttributeModification == "COERCE"
    assert item.ModifyingSystem == PROXY_AE
    assert item.SourceOfPreviousValues == "PACS"
    old = item.ModifiedAttributesSequence[0]
    assert old.PatientID == "PACS-4711" and old.AccessionNumber == "MOD-0815"
    assert str(old.PatientName) == "UNKNOWN^EMERGENCY" and old.IssuerOfPatientID == "74580626.PACS"
    assert old.InstitutionName == "WENLING FIRST HOSPITAL"
    assert "PatientBirthDate" not in old  # the same in the view and the PACS: not changed


def _move(site: Site, dest: str, upstream: str = "c-move") -> dict[str, Path]:
    query = scu.identifier(study_uids=[PACS_SPEC.study_uid])
    result = scu.move(site.proxy(upstream), dest, query, calling_ae=CLOUD, timeout=120)
    assert (result.status, result.completed, result.failed) == (0x0000, 3, 0), result.line()
    return site.take(dest) if dest in site.dests else {}


@pytest.mark.parametrize("upstream", ["c-move", "c-get"])
def test_move_none_mode_header_coerced_pixel_bytes_untouched(site: Site, upstream: str) -> None:
    got = _move(site, "D_NONE", upstream)
    assert set(got) == set(site.originals)  # the SOP Instance UIDs stay
    for uid, path in got.items():
        ds, pacs = dcmread(path), dcmread(site.originals[uid])
        assert_view_identity(ds)
        assert ds.PixelData == pacs.PixelData  # the PACS's bytes, spliced unread
        assert ds.file_meta.TransferSyntaxUID == pacs.file_meta.TransferSyntaxUID
        assert ds.SeriesInstanceUID == pacs.SeriesInstanceUID and ds.ImageType == pacs.ImageType
        assert _dciodvfy_errors(path) <= _dciodvfy_errors(site.originals[uid])
    # the journal recorded what this delivery carried, per destination and study
    journal = site.servers[upstream].ctx.journal
    job = journal.recent(1)[0]
    recorded = journal.identities_of(job["id"])
    assert recorded[PACS_SPEC.study_uid].patient_id == VIEW["PatientID"]
    assert recorded[PACS_SPEC.study_uid].accession == VIEW["AccessionNumber"]
    [(_, dest, _)] = [d for d in journal.deliveries_of(PACS_SPEC.study_uid) if d[0] == job["id"]]
    assert dest == "D_NONE"


def test_move_lossless_and_lossy_pixels_as_without_coercion(site: Site) -> None:
    lossless = _move(site, "D_LOSSLESS")
    for uid, path in lossless.items():
        ds, pacs = dcmread(path), dcmread(site.originals[uid])
        assert_view_identity(ds)
        assert ds.file_meta.TransferSyntaxUID.is_compressed
        assert np.array_equal(ds.pixel_array, pacs.pixel_array)
    lossy, plain = _move(site, "D_LOSSY"), _move(site, "RAW_LOSSY")
    assert set(lossy) == set(plain) == set(site.originals)
    for uid, path in lossy.items():
        ds, base = dcmread(path), dcmread(plain[uid])
        assert_view_identity(ds)
        assert base.PatientID == "PACS-4711"  # coerce = false
        assert ds.file_meta.TransferSyntaxUID == base.file_meta.TransferSyntaxUID
        assert ds.PixelData == base.PixelData  # the codec's output, untouched by the coercion
        assert ds.LossyImageCompression == "01"
        assert _dciodvfy_errors(path) <= _dciodvfy_errors(plain[uid])


def test_coerce_false_sends_the_pacs_data_set_unchanged(site: Site) -> None:
    got = _move(site, "RAW_NONE")
    assert set(got) == set(site.originals)
    for uid, path in got.items():
        assert dcmread(path) == dcmread(site.originals[uid])  # every element, pixel data included


def test_get_from_the_cloud_and_push_carry_the_view_identity(site: Site, tmp_path: Path) -> None:
    """C-GET (the cloud's own association) and a push job (the relay's push entry point)."""
    got = scu.get(
        site.proxy(),
        scu.identifier(study_uids=[PACS_SPEC.study_uid]),
        calling_ae=CLOUD,
        out_dir=tmp_path / "get",
    )
    assert (got.status, got.received) == (0x0000, 3), got.line()
    for path in sorted((tmp_path / "get").iterdir()):
        ds = dcmread(path)
        assert_view_identity(ds)
        assert ds.PixelData == dcmread(site.originals[str(ds.SOPInstanceUID)]).PixelData
    responses = list(site.ctx.relay.push(PACS_SPEC.study_uid, "D_NONE"))
    assert responses[-1].status == 0x0000
    pushed = site.take("D_NONE")
    assert set(pushed) == set(site.originals)
    for path in pushed.values():
        assert_view_identity(dcmread(path))
    job = site.ctx.journal.recent(1)[0]
    assert job["kind"] == "push"
    assert PACS_SPEC.study_uid in site.ctx.journal.identities_of(job["id"])


def test_orthanc_as_cloud_indexes_the_view_patient(site: Site) -> None:
    _move(site, site.cloud.ae_title)
    [study] = site.cloud.request("GET", "/studies?expand")
    assert study["PatientMainDicomTags"]["PatientID"] == VIEW["PatientID"]
    assert study["MainDicomTags"]["AccessionNumber"] == VIEW["AccessionNumber"]
    assert len(site.cloud.request("GET", "/instances")) == 3


def test_report_object_gets_the_issuers_and_keeps_what_it_has(site: Site) -> None:
    """An order/report object is made from the view already: coercion adds only the issuers'
    sequences, replaces nothing, so it keeps no Original Attributes Sequence."""
    query = scu.identifier(study_uids=[REPORT_SPEC.study_uid])
    result = scu.move(site.proxy(), "D_NONE", query, calling_ae=CLOUD, timeout=120)
    assert (result.status, result.completed, result.failed) == (0x0000, 1, 0), result.line()
    [path] = site.take("D_NONE").values()
    ds = dcmread(path)
    assert bytes(ds.EncapsulatedDocument)[: len(PDF)] == PDF
    assert (ds.PatientID, str(ds.PatientName)) == (VIEW["PatientID"], "=王小东")
    assert ds.IssuerOfPatientIDQualifiersSequence[0].UniversalEntityID == HIS_OID
    assert ds.IssuerOfAccessionNumberSequence[0].UniversalEntityID == ACCESSION_OID
    assert "OriginalAttributesSequence" not in ds


def test_series_and_image_level_moves_find_the_row_by_study_uid(site: Site) -> None:
    series = PACS_SPEC.series_uid(0)
    sop = PACS_SPEC.sop_uid(0, 1)
    for query, n in (
        (scu.identifier("SERIES", study_uids=[PACS_SPEC.study_uid], series_uids=[series]), 3),
        (scu.identifier("IMAGE", study_uids=[PACS_SPEC.study_uid], series_uids=[series], sop_uids=[sop]), 1),
    ):
        result = scu.move(site.proxy(), "D_NONE", query, calling_ae=CLOUD, timeout=120)
        assert (result.status, result.completed) == (0x0000, n), result.line()
        got = site.take("D_NONE")
        assert len(got) == n
        for path in got.values():
            assert_view_identity(dcmread(path))
