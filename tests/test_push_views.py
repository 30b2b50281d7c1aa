"""Push mode end to end on the exam view in PostgreSQL and MariaDB, both RowTimestamp kinds
(SQL Server rowversion emulated by an 8-byte binary column a trigger fills, and a date-time):
a row inserted after ``serve`` started brings its study and its report to a DCMTK storescp
(``+uf``: unique file names, so a duplicate would show), once, without any request. SQLite is
covered with outages and restarts in tests/test_push.py; the watcher's statements on each database
in tests/test_push_watcher.py."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom import dcmread

from dicomproxy.config import Config
from dicomproxy.push.queue import PushQueue
from dicomproxy.reports.encode import ENCAPSULATED_PDF, series_uid
from dicomproxy.server import Server
from testkit import wait_until
from testkit.dcmtk import StoreSCP
from testkit.orthanc import Orthanc
from testkit.samples import StudySpec, exam_row
from testkit.viewdb import insert_rows
from tests import test_view_rowstamp
from tests.conftest import ConfigFactory, _need, running_orthanc
from tests.test_view_rowstamp import StampedView

#: The view of tests/test_view_rowstamp.py, here on PostgreSQL and MariaDB × both RowTimestamp kinds
#: (SQLite: tests/test_push.py).
stamped = test_view_rowstamp.stamped

SPEC = StudySpec("MR", accession="PV001", series=1, images_per_series=3, seed=191)
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"


@pytest.fixture(scope="module")
def pv_pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    with running_orthanc(tmp_path_factory.mktemp("pv-pacs"), [SPEC]) as server:
        yield server


@pytest.fixture
def report_url(http_folder: tuple[str, Path]) -> str:
    base_url, folder = http_folder
    (folder / "r.pdf").write_bytes(PDF)
    return f"{base_url}/r.pdf"


@pytest.mark.parametrize(
    "stamped",
    [(db, kind) for db in ("postgresql", "mariadb") for kind in test_view_rowstamp.KINDS],
    indirect=True,
    ids=lambda p: f"{p[0]}-{p[1]}",
)
def test_row_inserted_into_a_server_view_brings_study_and_report_once(
    stamped: StampedView,
    tmp_path: Path,
    make_config: ConfigFactory,
    pv_pacs: Orthanc,
    report_url: str,
    run_proxy: Callable[[Config], Server],
) -> None:
    _need("storescp")
    scp = StoreSCP(tmp_path / "scp", "STORESCP", extra=["+uf"]).start()
    try:
        config = make_config(
            view={"url": stamped.url, "name": stamped.name.upper()},
            pacs={
                "ae_title": pv_pacs.ae_title,
                "host": "127.0.0.1",
                "port": pv_pacs.dicom_port,
                "retrieve": "c-get",
            },
            peers=[{"ae_title": "STORESCP", "host": "127.0.0.1", "port": scp.port}],
            push={"enabled": True, "destinations": ["STORESCP"], "poll_interval": 0.2},
        )
        server = run_proxy(config)
        queue = PushQueue(server.ctx.journal.engine, "test")
        # the rows there before the start (tests/view_data.py) are not pushed: start_from = "now",
        # which the first pass turns into the watermark (insert only after it, or the row is "old")
        wait_until(lambda: queue.get_state("watermark") is not None, 30, "the first watcher pass")
        stamp = dt.datetime.now().replace(microsecond=0) + dt.timedelta(hours=1)
        insert_rows(
            stamped.engine, [exam_row(SPEC, RowTimestamp=stamp, ReportFilePath=report_url)], stamped.name
        )
        sops = {SPEC.sop_uid(0, i) for i in range(SPEC.images_per_series)}

        def arrived() -> Counter[str]:
            return Counter(str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in scp.received())

        wait_until(lambda: len(arrived()) == len(sops) + 1, 60, "study and report at storescp")
        wait_until(lambda: queue.counts().get(("STORESCP", "done"), 0) == 1, 30, "item done")
        got = arrived()
        assert sops < set(got) and max(got.values()) == 1, got
        report = next(dcmread(p) for p in scp.received() if dcmread(p).SOPClassUID == ENCAPSULATED_PDF)
        assert report.StudyInstanceUID == SPEC.study_uid
        assert report.SeriesInstanceUID == series_uid(SPEC.study_uid, "report")
        assert [i["study_uid"] for i in queue.items()] == [SPEC.study_uid]  # nothing else was queued
    finally:
        scp.stop()
