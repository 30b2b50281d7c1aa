"""Push mode end to end on one node, real peers: a row inserted into the exam view (SQLite, both
RowTimestamp kinds) brings its study and its report to a DCMTK storescp without any request —
through a destination outage and a restart, once. Orthanc is the PACS (C-GET), the report is
served by a local HTTP server, storescp keeps every arrival (``+uf``) so duplicates show.
PostgreSQL/MariaDB views are covered by tests/test_push_watcher.py (the watcher is the only
part that reads RowTimestamp)."""

from __future__ import annotations

import datetime as dt
import json
import logging
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from sqlalchemy import create_engine

from dicomproxy import events
from dicomproxy.config import Config
from dicomproxy.push.queue import PushQueue
from dicomproxy.reports.encode import ENCAPSULATED_PDF, SECONDARY_CAPTURE
from dicomproxy.server import Server
from testkit import free_port, wait_until
from testkit.dcmtk import StoreSCP
from testkit.fakepacs import FakeDestination
from testkit.orthanc import Orthanc
from testkit.samples import StudySpec, exam_row, write_study
from testkit.viewdb import create_view_table, insert_rows, update_rows
from tests.conftest import ConfigFactory, running_orthanc

SPECS = [
    StudySpec("CT", accession=f"PU{i:03d}", series=1, images_per_series=2, seed=160 + i) for i in range(3)
]
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"


@pytest.fixture(scope="module")
def push_pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    with running_orthanc(tmp_path_factory.mktemp("push-pacs"), SPECS) as server:
        yield server


@pytest.fixture
def report_server(http_folder: tuple[str, Path]) -> tuple[str, Path]:
    """A local HTTP server for order/report files: (base URL, folder)."""
    return http_folder


def delivered(scp: StoreSCP) -> Counter[str]:
    """SOP Instance UIDs of the files storescp wrote; a file still being written (no header yet)
    is not counted (a poll reads the folder while instances arrive)."""
    uids: Counter[str] = Counter()
    for path in scp.received():
        try:
            uids[str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)] += 1
        except (InvalidDicomError, EOFError, OSError):
            continue
    return uids


def study_sops(spec: StudySpec) -> set[str]:
    return {spec.sop_uid(s, i) for s in range(spec.series) for i in range(spec.images_per_series)}


def _config(
    make_config: ConfigFactory,
    view_url: str,
    pacs: Orthanc,
    scp: StoreSCP | FakeDestination,
    http: dict[str, Any] | None = None,
    **push: Any,
) -> Config:
    return make_config(
        http=http or {"port": 0},
        view={"url": view_url},
        pacs={"ae_title": pacs.ae_title, "host": "127.0.0.1", "port": pacs.dicom_port, "retrieve": "c-get"},
        peers=[{"ae_title": "STORESCP", "host": "127.0.0.1", "port": scp.port}],
        proxy={"retry_delay": 0.1, "retries": 1, "reconnect_window": 0},
        push={
            "enabled": True,
            "destinations": ["STORESCP"],
            "poll_interval": 0.2,
            "retry_delay": 0.3,
            "max_retry_delay": 1.0,
            **push,
        },
    )


@pytest.mark.parametrize("kind", ["datetime", "rowversion"])
def test_row_inserted_brings_study_and_report_once_through_outage_and_restart(
    kind: str,
    tmp_path: Path,
    make_config: ConfigFactory,
    push_pacs: Orthanc,
    report_server: tuple[str, Path],
    run_proxy: Callable[[Config], Server],
    caplog: pytest.LogCaptureFixture,
) -> None:
    base_url, folder = report_server
    view_url = f"sqlite:///{tmp_path / 'view.db'}"
    engine = create_engine(view_url)
    create_view_table(engine, stamp=kind)  # type: ignore[arg-type]
    insert_rows(engine, [exam_row(SPECS[0])])  # there before push started: not sent (start_from = "now")
    scp = StoreSCP(tmp_path / "scp", "STORESCP", extra=["+uf"])  # not started: the destination is down
    config = _config(make_config, view_url, push_pacs, scp, http={"port": free_port()})
    caplog.set_level(logging.INFO, logger="dicomproxy")
    try:
        _scenario(engine, scp, config, folder, base_url, run_proxy, caplog)
    finally:
        scp.stop()
        engine.dispose()


def _scenario(
    engine: Any,
    scp: StoreSCP,
    config: Config,
    folder: Path,
    base_url: str,
    run_proxy: Callable[[Config], Server],
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, new, later = SPECS
    server = run_proxy(config)
    queue = PushQueue(server.ctx.journal.engine, "test")
    # start_from = "now" becomes the watermark in the first pass: a row inserted before it is "old"
    wait_until(lambda: queue.get_state("watermark") is not None, 30, "the first watcher pass")
    (folder / "r1.pdf").write_bytes(PDF)
    stamp = dt.datetime.now().replace(microsecond=0) + dt.timedelta(hours=1)
    insert_rows(
        engine,
        [
            exam_row(
                new,
                RowTimestamp=stamp,
                ReportFilePath=f"{base_url}/r1.pdf",
                OrderFilePath=f"{base_url}/gone.jpg",
            )
        ],
    )
    wait_until(
        lambda: queue.counts().get(("STORESCP", "waiting"), 0) == 1, 30, "item waiting (destination down)"
    )
    wait_until(lambda: "destination STORESCP is down" in caplog.text, 10, "one 'down' line")
    server.stop(drain_timeout=2.0)  # restart while the destination is down: the item survives

    scp.start()
    server = run_proxy(config)
    queue = PushQueue(server.ctx.journal.engine, "test")
    wait_until(lambda: study_sops(new) <= set(delivered(scp)), 60, "study at storescp")
    items = queue.items()
    assert len(items) == 1  # the row that existed before start was not queued
    item_id = items[0]["id"]
    # the report arrives in the same study, in a series of its own; the order file is missing
    wait_until(lambda: len(delivered(scp)) == len(study_sops(new)) + 1, 30, "report at storescp")
    files = {str(dcmread(p).SOPInstanceUID): dcmread(p) for p in scp.received()}
    report = next(ds for ds in files.values() if ds.SOPClassUID == ENCAPSULATED_PDF)
    assert report.StudyInstanceUID == new.study_uid and report.PatientID == new.patient.patient_id
    assert report.SeriesInstanceUID not in {ds.SeriesInstanceUID for ds in files.values() if ds is not report}
    assert bytes(report.EncapsulatedDocument)[: len(PDF)] == PDF
    assert "order file not available" in caplog.text  # logged, images not held back
    assert caplog.text.count("destination STORESCP is down") == 1
    assert caplog.text.count("destination STORESCP is back") == 1

    # the order file appears: it is fetched on a later attempt, the images are not sent again
    from testkit.samples_dept import colour_frame, jpeg_baseline_rgb

    (folder / "gone.jpg").write_bytes(jpeg_baseline_rgb(colour_frame(48, 64, 0.5, (1, 2), (1.0, 0.9, 0.8))))
    wait_until(lambda: queue.get(item_id)["state"] == "done", 30, "item done")  # type: ignore[index]
    assert len(delivered(scp)) == len(study_sops(new)) + 2

    # the row changes (revised): queued again, but nothing the destination confirmed is resent
    jobs_before = len(server.ctx.journal.recent(50))
    update_rows(
        engine,
        "V_IMAGE_CLOUD",
        exam_row(new)["ExamineID"],
        {"State": "修订完成", "RowTimestamp": stamp + dt.timedelta(minutes=1)},
    )
    wait_until(lambda: len(server.ctx.journal.recent(50)) > jobs_before, 30, "a new push job")
    wait_until(lambda: queue.get(item_id)["state"] == "done", 30, "item done again")  # type: ignore[index]
    counts = delivered(scp)
    order = [dcmread(p) for p in scp.received() if dcmread(p).SOPClassUID == SECONDARY_CAPTURE]
    assert len(order) == 1 and order[0].SeriesInstanceUID not in {
        ds.SeriesInstanceUID for ds in files.values()
    }
    assert set(counts) == study_sops(new) | {report.SOPInstanceUID, order[0].SOPInstanceUID}
    assert max(counts.values()) == 1, counts  # nothing arrived twice
    assert server.console is not None  # the console's /metrics shows the queue and the attempts
    events.flush()
    with urllib.request.urlopen(f"http://127.0.0.1:{config.http.port}/metrics", timeout=10) as rsp:
        metrics = rsp.read().decode()
    assert 'dicomproxy_push_queue{destination="STORESCP",state="done"} 1.0' in metrics
    # delivered, its re-checks for late images still to come ([push] rechecks, default 2)
    assert 'dicomproxy_push_rechecks_pending{destination="STORESCP"} 1.0' in metrics
    assert 'dicomproxy_push_attempts_total{destination="STORESCP",outcome="delivered"}' in metrics
    assert 'dicomproxy_jobs_total{kind="push",outcome="success"}' in metrics
    with urllib.request.urlopen(f"http://127.0.0.1:{config.http.port}/api/status", timeout=10) as rsp:
        status = json.loads(rsp.read())
    assert status["push"] == [
        {"destination": "STORESCP", "held": False, "queued": 0, "running": 0, "waiting": 0, "committing": 0,
         "done": 1, "failed": 0, "dropped": 0, "recheck": 1,
         "corrections": {"warned": 0, "due": 0, "running": 0, "done": 0, "failed": 0}}
    ]  # fmt: skip
    from dicomproxy.relay.recovery import check_retryable

    with pytest.raises(ValueError, match="push retry"):  # `jobs retry` points to the queue
        check_retryable(config, server.ctx.journal, server.ctx.journal.recent(1)[0]["id"])
    kinds = {j["kind"] for j in server.ctx.journal.recent(50)}
    assert kinds == {"push"}  # `dicomproxy jobs` lists them

    # a third row in another state set: not queued (registered only)
    insert_rows(engine, [exam_row(later, RowTimestamp=stamp + dt.timedelta(minutes=2), State="登记完成")])
    events.flush()
    server.ctx.push.watcher.run_pass()
    assert len(queue.items()) == 1


def test_study_not_yet_in_the_pacs_waits_and_is_sent_when_it_arrives(
    tmp_path: Path,
    make_config: ConfigFactory,
    push_pacs: Orthanc,
    run_proxy: Callable[[Config], Server],
) -> None:
    """The RIS says 检查完成 before the modality's images reached the PACS: the item waits (retried
    with backoff, no busy loop) and goes once the PACS holds the study."""
    spec = StudySpec("CT", accession="PULATE", series=1, images_per_series=2, seed=199)
    view_url = f"sqlite:///{tmp_path / 'view.db'}"
    engine = create_engine(view_url)
    create_view_table(engine)
    scp = StoreSCP(tmp_path / "scp", "STORESCP", extra=["+uf"]).start()
    try:
        server = run_proxy(_config(make_config, view_url, push_pacs, scp, start_from="beginning"))
        queue = PushQueue(server.ctx.journal.engine, "test")
        insert_rows(engine, [exam_row(spec, RowTimestamp=dt.datetime.now())])
        wait_until(lambda: any(i["attempts"] >= 2 for i in queue.items()), 30, "item retried")
        item = queue.items()[0]
        assert item["state"] in ("waiting", "running") and not scp.received()
        assert "no instance" in item["error"] or item["state"] == "running"
        push_pacs.upload(write_study(spec, tmp_path / "late"))
        wait_until(lambda: queue.get(item["id"])["state"] == "done", 30, "item done")  # type: ignore[index]
        assert set(delivered(scp)) == study_sops(spec)
        assert queue.get(item["id"])["attempts"] < 10  # type: ignore[index]  # backoff, no busy loop

        # queued, then made confidential before it was sent: dropped, nothing sent
        queue.set_state("paused:*", "test")
        hidden = SPECS[2]  # in the PACS: only visibility keeps it from being sent
        insert_rows(engine, [exam_row(hidden, RowTimestamp=dt.datetime.now())])
        wait_until(lambda: len(queue.items()) == 2, 30, "second item queued")
        update_rows(engine, "V_IMAGE_CLOUD", exam_row(hidden)["ExamineID"], {"Privacy": 3})
        queue.delete_state("paused:*")
        wait_until(lambda: queue.items(state="dropped") != [], 30, "item dropped")
        assert set(delivered(scp)) == study_sops(spec)
    finally:
        scp.stop()
        engine.dispose()


def test_instances_the_destination_refused_are_sent_on_the_next_attempt(
    tmp_path: Path,
    make_config: ConfigFactory,
    push_pacs: Orthanc,
    run_proxy: Callable[[Config], Server],
) -> None:
    """A destination refuses one instance of the study on the first attempt (0xC000, not retried
    within the job) and accepts it on the next: the item is retried, the refused instance arrives,
    the one it had confirmed is not sent again (issue 24: "already confirmed" must mean confirmed)."""
    spec = SPECS[1]
    refused, accepted = sorted(study_sops(spec))
    view_url = f"sqlite:///{tmp_path / 'view.db'}"
    engine = create_engine(view_url)
    create_view_table(engine)
    dest = FakeDestination("STORESCP")
    dest.behaviour.flaky = {refused: [0xC000]}  # refused once, then accepted
    dest.start()
    try:
        server = run_proxy(_config(make_config, view_url, push_pacs, dest, start_from="beginning"))
        queue = PushQueue(server.ctx.journal.engine, "test")
        insert_rows(engine, [exam_row(spec, RowTimestamp=dt.datetime.now())])
        wait_until(lambda: [i["state"] for i in queue.items()] == ["done"], 30, "item done")
        (item,) = queue.items()
        assert item["attempts"] == 2, item  # the refusal made the first attempt fail
        got = Counter(uid for uid, _ in dest.received)
        assert got == {refused: 1, accepted: 1}, f"the refused instance was not sent again: {got}"
        assert dest.attempts.count(refused) == 2, dest.attempts
    finally:
        dest.stop()
        engine.dispose()
