"""The relay against real peers: Orthanc and DCMTK dcmqrscp as the PACS (upstream C-MOVE and
C-GET), DCMTK movescu/getscu and pynetdicom as the cloud, DCMTK storescp as the destination,
and the real ExamView on a SQLite exam view for resolution and visibility.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from sqlalchemy import create_engine

from dicomproxy.app import build_context
from dicomproxy.config import Config
from dicomproxy.server import Server
from dicomproxy.transport import scu
from dicomproxy.transport.net import Remote, guard_requestor
from testkit import free_port
from testkit.dcmtk import DcmQrSCP, StoreSCP, run_tool
from testkit.orthanc import Orthanc
from testkit.samples import Patient, StudySpec, demo_specs, exam_row, write_study
from testkit.viewdb import create_view_table, insert_rows
from tests.conftest import running_orthanc

CT, MR, US, MF = demo_specs()
CLOUD = "CLOUD"
DEST = "DEST"
PROXY_AE = "DICOMPROXY"
#: In the PACS but invisible: another hospital's exam, a confidential one, one not in the view.
OTHER_HOSP = StudySpec("CT", Patient(patient_id="P0099", name="赵敏"), "X0001", images_per_series=2, seed=11)
PRIVATE = StudySpec("CT", Patient(patient_id="P0099", name="赵敏"), "X0002", images_per_series=2, seed=12)
UNLISTED = StudySpec("CT", Patient(patient_id="P0098", name="钱多"), "X0003", images_per_series=2, seed=13)
ALL_SPECS = [CT, MR, US, MF, OTHER_HOSP, PRIVATE, UNLISTED]


def view_rows() -> list[dict[str, Any]]:
    rows = [exam_row(spec) for spec in (CT, MR, US, MF)]
    # one exam row, two studies (the seed's comma-separated StudyInstanceUID)
    rows.append(
        exam_row(
            StudySpec("CT"),
            ExamineID="EMULTI",
            AccessionNumber="AMULTI",
            PatientID="P0001",
            StudyInstanceUID=f"{CT.study_uid},{MR.study_uid}",
        )
    )
    rows.append(exam_row(OTHER_HOSP, hospital_id="99999999"))
    rows.append(exam_row(PRIVATE, Privacy=2))
    return rows


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    root = tmp_path_factory.mktemp("relay-studies")
    return {spec.accession: write_study(spec, root / spec.accession) for spec in ALL_SPECS}


@pytest.fixture(scope="module")
def proxy_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def relay_orthanc(
    tmp_path_factory: pytest.TempPathFactory, files: dict[str, list[Path]], proxy_port: int
) -> Iterator[Orthanc]:
    studies = [p for paths in files.values() for p in paths]
    proxy = Remote(PROXY_AE, "127.0.0.1", proxy_port)
    with running_orthanc(tmp_path_factory.mktemp("relay-pacs"), files=studies, proxy=proxy) as server:
        yield server


@pytest.fixture(scope="module")
def relay_dcmqrscp(
    tmp_path_factory: pytest.TempPathFactory, files: dict[str, list[Path]], proxy_port: int
) -> Iterator[DcmQrSCP]:
    if shutil.which("dcmqrscp") is None:
        pytest.skip("dcmqrscp is not installed (scripts/test.sh installs it)")
    server = DcmQrSCP(
        tmp_path_factory.mktemp("relay-dcmqrscp"), peers={"proxy": Remote(PROXY_AE, "127.0.0.1", proxy_port)}
    ).start()
    server.load([p for paths in files.values() for p in paths])
    yield server
    server.stop()


@dataclass
class Setup:
    server: Server
    dest: StoreSCP
    config: Config
    ctx: Any

    @property
    def proxy(self) -> Remote:
        return Remote(PROXY_AE, "127.0.0.1", self.server.port)


@pytest.fixture(params=["orthanc/c-move", "orthanc/c-get", "dcmqrscp/c-move", "dcmqrscp/c-get"])
def setup(
    request: pytest.FixtureRequest,
    make_config: Callable[..., Config],
    sqlite_url: str,
    proxy_port: int,
    tmp_path: Path,
) -> Iterator[Setup]:
    kind, method = request.param.split("/")
    pacs: Any = request.getfixturevalue("relay_orthanc" if kind == "orthanc" else "relay_dcmqrscp")
    engine = create_engine(sqlite_url)
    create_view_table(engine)
    insert_rows(engine, view_rows())
    engine.dispose()
    dest = StoreSCP(tmp_path / "dest", DEST).start()
    config = make_config(
        proxy={"port": proxy_port},
        pacs={
            "ae_title": pacs.remote.ae_title,
            "host": "127.0.0.1",
            "port": pacs.remote.port,
            "retrieve": method,
        },
        peers=[
            {"ae_title": CLOUD, "host": "127.0.0.1", "port": 1},
            {"ae_title": DEST, "host": "127.0.0.1", "port": dest.port},
        ],
    )
    ctx = build_context(config)
    server = Server(config, ctx)
    server.start()
    yield Setup(server, dest, config, ctx)
    server.stop(drain_timeout=2.0)
    dest.stop()


def pixels_by_uid(paths: list[Path]) -> dict[str, tuple[str, str, bytes]]:
    out = {}
    for p in paths:
        ds = dcmread(p)
        out[str(ds.SOPInstanceUID)] = (str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), ds.PixelData)
    return out


def test_movescu_multiseries_study_complete_and_identical(setup: Setup, files: dict[str, list[Path]]) -> None:
    """DCMTK movescu as the cloud: every instance arrives, UIDs unchanged, pixel data byte-identical."""
    result = run_tool(
        "movescu", "-v", "-S", "-aet", CLOUD, "-aec", PROXY_AE, "-aem", DEST,
        "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={CT.study_uid}",
        "127.0.0.1", str(setup.server.port),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success" in result.stdout + result.stderr
    assert pixels_by_uid(setup.dest.received()) == pixels_by_uid(files[CT.accession])
    job = setup.ctx.journal.recent(1)[0]
    assert (job["outcome"], job["expected"], job["completed"], job["failed"]) == ("success", 10, 10, 0)


def test_getscu_cloud_receives_identical_study(
    setup: Setup, files: dict[str, list[Path]], tmp_path: Path
) -> None:
    """DCMTK getscu as the cloud: the C-GET SCP delivers on the cloud's own association."""
    out = tmp_path / "got"
    out.mkdir()
    result = run_tool(
        "getscu", "-v", "-S", "-aet", CLOUD, "-aec", PROXY_AE, "-od", str(out),
        "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={MR.study_uid}",
        "127.0.0.1", str(setup.server.port),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert pixels_by_uid(sorted(out.iterdir())) == pixels_by_uid(files[MR.accession])


def test_accession_of_multi_uid_row_delivers_both_studies(setup: Setup, files: dict[str, list[Path]]) -> None:
    query = scu.identifier(accession="AMULTI")
    result = scu.move(setup.proxy, DEST, query, calling_ae=CLOUD, timeout=60)
    assert result.status == 0x0000, result.line()
    assert result.completed == 14
    expected = pixels_by_uid(files[CT.accession] + files[MR.accession])
    assert pixels_by_uid(setup.dest.received()) == expected


@pytest.mark.parametrize(
    "query",
    [
        pytest.param({"study_uids": [OTHER_HOSP.study_uid]}, id="uid-other-hospital"),
        pytest.param({"study_uids": [PRIVATE.study_uid]}, id="uid-private"),
        pytest.param({"study_uids": [UNLISTED.study_uid]}, id="uid-not-in-view"),
        pytest.param({"accession": OTHER_HOSP.accession}, id="accession-other-hospital"),
        pytest.param({"accession": PRIVATE.accession}, id="accession-private"),
        pytest.param({"patient_id": "P0099"}, id="patient-id"),
    ],
)
def test_invisible_study_never_delivered(setup: Setup, query: dict[str, Any], tmp_path: Path) -> None:
    result = scu.move(setup.proxy, DEST, scu.identifier(**query), calling_ae=CLOUD, timeout=60)
    assert (result.status, result.completed, result.failed) == (0x0000, 0, 0), result.line()
    got = scu.get(
        setup.proxy, scu.identifier(**query), calling_ae=CLOUD, out_dir=tmp_path / "get", timeout=60
    )
    assert (got.status, got.received) == (0x0000, 0), got.line()
    # SERIES level with a hidden study's UID is refused the same way
    series = scu.identifier("SERIES", study_uids=[PRIVATE.study_uid], series_uids=["2.25.1"])
    assert scu.move(setup.proxy, DEST, series, calling_ae=CLOUD).completed == 0
    assert setup.dest.received() == []
    assert setup.ctx.journal.recent(1)[0]["outcome"] == "empty"


@pytest.mark.parametrize(
    "spec", [OTHER_HOSP, PRIVATE, UNLISTED], ids=["other-hospital", "private", "not-in-view"]
)
def test_invisible_study_at_series_and_image_level(
    setup: Setup, files: dict[str, list[Path]], spec: StudySpec, tmp_path: Path
) -> None:
    """SERIES- and IMAGE-level C-MOVE and C-GET of a hidden study, with the series and SOP
    Instance UIDs the PACS really holds: the study's visibility is checked at every level, so
    0 sub-operations, nothing at the destination, nothing received (issue 18, mutant 1: the
    "2.25.1" series above is in no archive and proved nothing)."""
    held = pixels_by_uid(files[spec.accession])
    series = sorted({s for _, s, _ in held.values()})
    sop, (_, sop_series, _) = sorted(held.items())[0]
    queries = [
        scu.identifier("SERIES", study_uids=[spec.study_uid], series_uids=series[:1]),
        scu.identifier("SERIES", study_uids=[spec.study_uid], series_uids=series),
        scu.identifier("IMAGE", study_uids=[spec.study_uid], series_uids=[sop_series], sop_uids=[sop]),
    ]
    for i, query in enumerate(queries):
        moved = scu.move(setup.proxy, DEST, query, calling_ae=CLOUD, timeout=60)
        assert (moved.status, moved.completed, moved.failed, moved.warning) == (0x0000, 0, 0, 0), moved.line()
        assert setup.ctx.journal.recent(1)[0]["outcome"] == "empty"
        got = scu.get(setup.proxy, query, calling_ae=CLOUD, out_dir=tmp_path / f"get{i}", timeout=60)
        assert (got.status, got.received, got.completed) == (0x0000, 0, 0), got.line()
        assert setup.ctx.journal.recent(1)[0]["outcome"] == "empty"
    assert setup.dest.received() == []
    assert not any(p.is_file() for p in tmp_path.rglob("get*/*"))


def test_pynetdicom_cloud_series_and_image_level(setup: Setup, files: dict[str, list[Path]]) -> None:
    by_uid = pixels_by_uid(files[CT.accession])
    series = sorted({s for _, s, _ in by_uid.values()})[0]
    in_series = [u for u, (_, s, _) in by_uid.items() if s == series]
    result = scu.move(
        setup.proxy,
        DEST,
        scu.identifier("SERIES", study_uids=[CT.study_uid], series_uids=[series]),
        calling_ae=CLOUD,
    )
    assert (result.status, result.completed) == (0x0000, len(in_series)), result.line()
    one = scu.identifier("IMAGE", study_uids=[CT.study_uid], series_uids=[series], sop_uids=[in_series[0]])
    result = scu.move(setup.proxy, DEST, one, calling_ae=CLOUD)
    assert (result.status, result.completed) == (0x0000, 1), result.line()


def test_concurrent_moves_are_isolated(setup: Setup, files: dict[str, list[Path]], tmp_path: Path) -> None:
    """Two clouds' moves at once (different studies, different destinations) each get exactly theirs."""
    second = StoreSCP(tmp_path / "dest2", "DEST2").start()
    try:
        # one more configured peer on the config object the running relay reads
        extra = replace(setup.config.peers[1], ae_title="DEST2", port=second.port)
        object.__setattr__(setup.config, "peers", (*setup.config.peers, extra))
        results: dict[str, scu.RetrieveSummary] = {}

        def run(name: str, dest: str, uid: str) -> None:
            results[name] = scu.move(
                setup.proxy, dest, scu.identifier(study_uids=[uid]), calling_ae=CLOUD, timeout=60
            )

        threads = [
            threading.Thread(target=run, args=("ct", DEST, CT.study_uid)),
            threading.Thread(target=run, args=("mr", "DEST2", MR.study_uid)),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        assert results["ct"].status == 0x0000 and results["ct"].completed == 10, results["ct"].line()
        assert results["mr"].status == 0x0000 and results["mr"].completed == 4, results["mr"].line()
        assert pixels_by_uid(setup.dest.received()) == pixels_by_uid(files[CT.accession])
        assert pixels_by_uid(second.received()) == pixels_by_uid(files[MR.accession])
    finally:
        second.stop()


def learn(setup: Setup, files: dict[str, list[Path]]) -> None:
    """One listing (a SERIES-level move lists first) teaches the archive client whether its lists
    name SOP classes; tests of the early start must not depend on which test ran before."""
    series = str(dcmread(files[CT.accession][0], stop_before_pixels=True).SeriesInstanceUID)
    query = scu.identifier("SERIES", study_uids=[CT.study_uid], series_uids=[series])
    assert scu.move(setup.proxy, DEST, query, calling_ae=CLOUD, timeout=60).status == 0x0000
    client = setup.ctx.relay.archives[setup.config.pacs.name]
    assert client.lists_sop_classes is (setup.config.pacs.ae_title == "ORTHANC")


def test_study_move_starts_before_the_instance_list(
    setup: Setup, files: dict[str, list[Path]], caplog: pytest.LogCaptureFixture
) -> None:
    """A one-study request fetches and forwards at once and lists the instances beside it (issue 7:
    first instance independent of study size): Orthanc announces Number of Study Related Instances and
    SOP Classes in Study at STUDY level; dcmqrscp returns neither, and no SOP Class UID in its lists
    either (learned from the first one), so the count waits for the list and the common storage
    classes are proposed. Either way the list reaches the journal (`jobs retry` needs it) and the
    counts are exact."""
    import logging

    query = scu.identifier(study_uids=[CT.study_uid])
    learn(setup, files)
    caplog.set_level(logging.INFO, logger="dicomproxy.relay")
    result = scu.move(setup.proxy, DEST, query, calling_ae=CLOUD, timeout=60)
    assert (result.status, result.completed, result.failed) == (0x0000, 10, 0), result.line()
    assert pixels_by_uid(setup.dest.received()) == pixels_by_uid(files[CT.accession])
    said = [r.getMessage() for r in caplog.records]
    if setup.config.pacs.ae_title == "ORTHANC":
        assert any("10 instance(s) announced by the PACS, listing them meanwhile" in m for m in said), said
    else:
        assert any("? instance(s) (the PACS announces no count), listing them" in m for m in said), said
    job = setup.ctx.journal.recent(1)[0]
    assert (job["outcome"], job["expected"], job["completed"]) == ("success", 10, 10)
    assert setup.ctx.journal.has_expected(job["id"])
    assert setup.ctx.journal.unconfirmed(job["id"]) == []


def test_early_start_pending_responses_always_add_up(setup: Setup, files: dict[str, list[Path]]) -> None:
    """Every Pending C-MOVE response of an early-started job carries Number of Remaining
    Sub-operations (PS3.4 C.4.2.1.6), and remaining + completed + failed + warning is the study's
    instance count in each — also when the PACS announces no count (dcmqrscp): then the proxy
    stays silent until the list is known instead of announcing a guess."""
    from pynetdicom import AE
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove  # type: ignore[attr-defined]

    learn(setup, files)
    ae = AE(ae_title=CLOUD)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate("127.0.0.1", setup.proxy.port, ae_title=setup.proxy.ae_title)
    guard_requestor(assoc)  # pynetdicom#875: the reactor must not take our responses
    assert assoc.is_established
    sums, finals = [], []
    try:
        responses = assoc.send_c_move(
            scu.identifier(study_uids=[CT.study_uid]), DEST, StudyRootQueryRetrieveInformationModelMove
        )
        for status, _ in responses:
            counts = [
                int(status.get(k, 0) or 0)
                for k in (
                    "NumberOfRemainingSuboperations",
                    "NumberOfCompletedSuboperations",
                    "NumberOfFailedSuboperations",
                    "NumberOfWarningSuboperations",
                )
            ]
            if int(status.Status) in (0xFF00, 0xFF01):
                assert "NumberOfRemainingSuboperations" in status
                sums.append(sum(counts))
            else:
                finals.append((int(status.Status), *counts[1:]))
    finally:
        assoc.release()
    assert finals == [(0x0000, 10, 0, 0)]
    assert sums and set(sums) == {10}, sums
