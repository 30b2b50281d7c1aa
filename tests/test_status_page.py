"""The status page in a real browser (issue 15): Debian's chromium, headless, driven by selenium
through Debian's chromium-driver. The page renders with its Chinese and English labels; a job
started by a real C-MOVE (Orthanc as the PACS, a pynetdicom storage SCP as the destination that
holds the first instance until the page has shown the job running) appears with live progress
and then finishes on it; no patient identifiers are shown by default. A node without push shows
its corrections after delivery (a real detection) in a section of their own."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicomproxy.config import Config
from dicomproxy.server import Server
from dicomproxy.status import Status
from dicomproxy.transport import scu
from dicomproxy.transport.net import Remote
from testkit import free_port
from testkit.orthanc import Orthanc
from testkit.samples import demo_specs
from tests.conftest import ConfigFactory

CT, MR, US, MF = demo_specs()
TOKEN = "page-token"
#: Longest wait for the page to show something (seconds): it polls every 2 s.
PAGE_WAIT = 30


def _need_browser() -> tuple[str, str]:
    chromium = shutil.which("chromium")
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        if os.environ.get("CI"):
            pytest.fail("chromium / chromium-driver are not installed; scripts/test.sh installs them")
        pytest.skip("chromium / chromium-driver are not installed (run scripts/test.sh to install)")
    return chromium, driver


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    chromium, driver = _need_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,1400",
    ):
        options.add_argument(arg)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    service = Service(executable_path=driver, log_output=str(tmp_path / "chromedriver.log"))
    drv = webdriver.Chrome(service=service, options=options)
    try:
        yield drv
    finally:
        drv.quit()


class GatedStoreSCP:
    """A pynetdicom storage SCP that holds each C-STORE until :attr:`gate` is set."""

    def __init__(self, ae_title: str = "GATED") -> None:
        self.ae_title = ae_title
        self.port = free_port()
        self.gate = threading.Event()
        self.first_arrived = threading.Event()
        self.received = 0
        ae = AE(ae_title)
        ae.supported_contexts = AllStoragePresentationContexts
        ae.add_supported_context(Verification)  # the page's peer checks C-ECHO it
        self.ae = ae
        self.server: Any = None

    def _store(self, event: evt.Event) -> int:
        self.first_arrived.set()
        self.gate.wait(60)
        self.received += 1
        return int(Status.SUCCESS)

    def start(self) -> GatedStoreSCP:
        self.server = self.ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )
        return self

    def stop(self) -> None:
        self.gate.set()
        if self.server is not None:
            self.server.shutdown()


@pytest.fixture
def gated() -> Iterator[GatedStoreSCP]:
    scp = GatedStoreSCP().start()
    yield scp
    scp.stop()


@pytest.fixture
def open_page(
    orthanc: Orthanc,
    sqlite_view: Any,
    make_config: ConfigFactory,
    run_proxy: Callable[[Config], Server],
    browser: Any,
) -> Callable[..., tuple[Server, Any]]:
    """``open_page(**sections)``: a proxy with the demo rows in its SQLite view, Orthanc as its PACS
    (C-GET), the console on (TOKEN) and ``sections`` more config, its status page opened in
    ``browser``; the proxy and a wait of :data:`PAGE_WAIT` on the page."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    def start(**sections: Any) -> tuple[Server, Any]:
        r = orthanc.remote
        config = make_config(
            pacs={"ae_title": r.ae_title, "host": r.host, "port": r.port, "retrieve": "c-get"},
            http={"port": free_port(), "token": TOKEN},
            **sections,
        )
        server = run_proxy(config)
        assert server.console is not None
        browser.get(f"{server.console.url}/#token={TOKEN}")
        # the page replaces its table rows every 2 s: a row found may be gone when it is read
        return server, WebDriverWait(browser, PAGE_WAIT, ignored_exceptions=(StaleElementReferenceException,))

    return start


@pytest.mark.orthanc
def test_status_page_shows_a_cmove_job_running_then_finished(
    open_page: Callable[..., tuple[Server, Any]], gated: GatedStoreSCP, browser: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    server, wait = open_page(
        peers=[  # the cloud's own listener is stood in for by the destination (the page echoes both)
            {"ae_title": "jobserver", "host": "127.0.0.1", "port": gated.port},
            {"ae_title": gated.ae_title, "host": "127.0.0.1", "port": gated.port},
        ],
    )
    wait.until(ec.text_to_be_present_in_element((By.ID, "conn"), "Live"))
    body = browser.find_element(By.TAG_NAME, "body").text
    for label in (
        "运行中的任务",
        "Jobs running now",
        "最近的任务",
        "Recent jobs",
        "配置检查",
        "Configuration checks",
    ):
        assert label in body
    assert browser.find_element(By.ID, "version").text != "–"
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#checks tr[data-check='journal'][data-ok='true']"))

    # a real C-MOVE: the destination holds the first instance until the page shows the job running
    m = Dataset()
    m.QueryRetrieveLevel = "STUDY"
    m.StudyInstanceUID = CT.study_uid
    result: dict[str, Any] = {}
    proxy = Remote("DICOMPROXY", "127.0.0.1", server.port)
    mover = threading.Thread(
        target=lambda: result.update(summary=scu.move(proxy, gated.ae_title, m, calling_ae="jobserver")),
        daemon=True,
    )
    mover.start()
    assert gated.first_arrived.wait(30), "the destination received nothing"
    running = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#running tr[data-outcome='running']"))
    assert gated.ae_title in running[0].text and "move" in running[0].text
    job_id = running[0].get_attribute("data-job-id")
    browser.save_screenshot(str(tmp_path / "running.png"))
    gated.gate.set()
    mover.join(60)
    assert result["summary"].completed == 10

    done = wait.until(
        lambda d: d.find_elements(
            By.CSS_SELECTOR, f"#recent tr[data-job-id='{job_id}'][data-outcome='success']"
        )
    )
    assert "10" in done[0].text
    wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, "#running tbody tr"))
    text = browser.find_element(By.TAG_NAME, "body").text
    assert CT.patient.patient_id not in text and CT.study_uid not in text and CT.patient.name not in text
    shot = os.environ.get("DICOMPROXY_SCREENSHOT")  # docs/status-page.png is made this way
    browser.save_screenshot(shot or str(tmp_path / "finished.png"))


@pytest.mark.orthanc
def test_status_page_shows_the_query_process_its_associations_and_its_loss(
    open_page: Callable[..., tuple[Server, Any]], browser: Any
) -> None:
    """``serve``'s query process (issue 29) on the page: its row among the checks, the association
    it serves marked "query process", and — once it is killed — a failing row and the last error."""
    from selenium.webdriver.common.by import By

    from tests.view_data import FindClient

    server, wait = open_page(proxy={"query_process": True})
    assert server.queries is not None and server.queries.wait_ready(30)
    serving = f"pid {server.queries.pid} serving"  # after "starting" if the page was quicker
    wait.until(
        lambda d: [
            tr
            for tr in d.find_elements(
                By.CSS_SELECTOR, "#checks tr[data-check='query process'][data-ok='true']"
            )
            if serving in tr.text
        ]
    )
    with FindClient(server.port):  # texts read inside the waits: the rows are replaced every 2 s
        cells = wait.until(
            lambda d: [
                [td.text for td in tr.find_elements(By.TAG_NAME, "td")]
                for tr in d.find_elements(By.CSS_SELECTOR, "#assocs tbody tr")
                if tr.text
            ]
        )[0]
        assert cells[0] == "jobserver" and cells[2] == "query process", cells
    os.kill(server.queries.pid, signal.SIGKILL)
    lost = wait.until(
        lambda d: [
            tr.text
            for tr in d.find_elements(
                By.CSS_SELECTOR, "#checks tr[data-check='query process'][data-ok='false']"
            )
        ]
    )
    assert "exit code -9" in lost[0]
    errors = wait.until(
        lambda d: [
            tr.text
            for tr in d.find_elements(By.CSS_SELECTOR, "#errors tbody tr")
            if "query process" in tr.text
        ]
    )
    assert "closed its channel" in errors[0]


def test_status_page_shows_the_push_queue_and_a_held_destination(
    open_page: Callable[..., tuple[Server, Any]], browser: Any
) -> None:
    """Push mode (issue 16) on the page: the demo rows are queued for a destination that is
    down; the push section shows them under that destination, marked held — and no patient
    identifier."""
    from selenium.webdriver.common.by import By

    server, wait = open_page(
        peers=[  # nobody listens; asked to commit what it stores (it stores nothing here)
            {"ae_title": "jobserver", "host": "127.0.0.1", "port": free_port(), "storage_commitment": True}
        ],
        push={
            "enabled": True,
            "destinations": ["jobserver"],
            "start_from": "beginning",
            "poll_interval": 0.2,
            "retry_delay": 30.0,
        },
        reports={"enabled": False},
        bandwidth=[{"mbps": 20}, {"days": "sat-sun", "mbps": 100, "dest": "jobserver"}],
    )
    # the bandwidth timetable: the rate in force for the push destination, and the next change
    rate = wait.until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "#bandwidth tr[data-destination='jobserver']")
    )
    cells = [td.text for td in rate[0].find_elements(By.TAG_NAME, "td")]
    weekend = dt.date.today().weekday() >= 5
    assert cells[1:5] == (
        ["100", "bandwidth[1]", "1", "100"] if weekend else ["20", "bandwidth[0]", "1", "20"]
    )
    assert cells[5].endswith(" 00:00") and cells[6] == ("20" if weekend else "100"), cells
    held = wait.until(
        lambda d: [
            tr
            for tr in d.find_elements(By.CSS_SELECTOR, "#push tr[data-destination='jobserver']")
            if "yes" in tr.text
        ]
    )
    assert browser.find_element(By.ID, "push-section").is_displayed()
    cells = [td.text for td in held[0].find_elements(By.TAG_NAME, "td")]
    header = [th.text for th in browser.find_elements(By.CSS_SELECTOR, "#push thead th")]
    assert len(cells) == len(header) and "待复查 Re-check" in header
    by_column = dict(zip(header, cells, strict=True))
    assert cells[0] == "jobserver" and by_column["待复查 Re-check"] == "0"  # nothing delivered yet
    states = (
        "排队 Queued",
        "发送中 Running",
        "等待重试 Waiting",
        "待确认 Committing",
        "完成 Done",
        "失败 Failed",
        "已撤回 Dropped",
    )
    assert sum(int(by_column[c]) for c in states) == len(demo_specs())  # every demo study, in some state
    # a `dicomproxy reconcile` run (another process) recorded its counts: the page shows them
    from dicomproxy.reconcile.summary import RunSummaries, RunSummary

    when = dt.datetime(2026, 12, 1, 8, 0)
    RunSummaries(server.ctx.journal.engine).record(
        [
            RunSummary(
                "jobserver",
                when,
                when,
                when,
                when,
                studies=5,
                complete=3,
                missing_studies=2,
                missing_instances=7,
            )
        ]
    )
    run = wait.until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "#reconcile tr[data-destination='jobserver']")
    )
    header = [th.text for th in browser.find_elements(By.CSS_SELECTOR, "#reconcile thead th")]
    shown = dict(zip(header, [td.text for td in run[0].find_elements(By.TAG_NAME, "td")], strict=True))
    assert (shown["检查 Studies"], shown["缺失 Missing"], shown["缺失实例 Missing instances"]) == (
        "5",
        "2",
        "7",
    )
    assert browser.find_element(By.ID, "reconcile-section").is_displayed()
    # Storage Commitment: three instances stored by a C-MOVE job and asked, not yet answered
    from dicomproxy.relay.journal import InstanceRecord
    from dicomproxy.status import JobKind

    journal, ledger = server.ctx.journal, server.ctx.commitments
    assert journal is not None and ledger is not None
    job = journal.start(JobKind.MOVE, "jobserver", "", "jobserver", "pacs")
    journal.add_instances(
        job, [InstanceRecord(f"2.25.{i}", "sent", "1.2.840.10008.5.1.4.1.1.2") for i in (1, 2, 3)]
    )
    ledger.job_ended(job)
    pending = "#commitment tr[data-destination='jobserver'] td:nth-child(2)"
    wait.until(lambda d: [e.text for e in d.find_elements(By.CSS_SELECTOR, pending)] == ["3"])
    commit = browser.find_elements(By.CSS_SELECTOR, "#commitment tr[data-destination='jobserver']")
    header = [th.text for th in browser.find_elements(By.CSS_SELECTOR, "#commitment thead th")]
    shown = dict(zip(header, [td.text for td in commit[0].find_elements(By.TAG_NAME, "td")], strict=True))
    assert (shown["等待 Pending"], shown["已确认 Committed"], shown["失败 Failed"]) == ("3", "0", "0")
    # the backfill lane, paused by the operator (`push pause --lane backfill`), with one study queued
    from sqlalchemy import update

    from dicomproxy.push import holds
    from dicomproxy.push.queue import BACKFILL
    from dicomproxy.push.schema import push_queue

    push = server.ctx.push
    assert push is not None
    holds.pause(push.queue, None, lane=BACKFILL)
    with push.queue.engine.begin() as conn:  # one of the queued demo studies moved to the lane
        first = conn.execute(push_queue.select().order_by(push_queue.c.id).limit(1)).mappings().one()
        conn.execute(update(push_queue).where(push_queue.c.id == first["id"]).values(lane=BACKFILL))
    lane = "#backfill tr[data-lane='backfill']"
    row_ = wait.until(lambda d: [tr for tr in d.find_elements(By.CSS_SELECTOR, lane) if "yes" in tr.text])
    header = [th.text for th in browser.find_elements(By.CSS_SELECTOR, "#backfill thead th")]
    shown = dict(zip(header, [td.text for td in row_[0].find_elements(By.TAG_NAME, "td")], strict=True))
    assert (shown["剩余 Left"], shown["暂停 Paused"]) == ("1", "是 yes")
    holds.resume(push.queue, None, lane=BACKFILL)
    wait.until(lambda d: [tr.text for tr in d.find_elements(By.CSS_SELECTOR, lane) if "yes" not in tr.text])
    text = browser.find_element(By.TAG_NAME, "body").text
    for spec in demo_specs():
        assert spec.patient.patient_id not in text and spec.study_uid not in text


def test_status_page_of_a_node_without_push_shows_its_corrections(
    open_page: Callable[..., tuple[Server, Any]], sqlite_view: Any, gated: GatedStoreSCP, browser: Any
) -> None:
    """Corrections after delivery on a node without push (docs/identity.md, docs/operations.md):
    the cloud retrieves the CT study by a real C-MOVE, the RIS then changes the row's PatientID in
    the SQLite view; the corrections service detects it (``iocm = false``: a warning only) and the
    page's own corrections section shows the destination's counts — and no patient identifier."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    from testkit.samples import exam_row
    from testkit.viewdb import update_rows

    gated.gate.set()  # the cloud: stores at once
    cloud = gated.ae_title
    server, wait = open_page(
        peers=[{"ae_title": cloud, "host": "127.0.0.1", "port": gated.port, "iocm": False}],
        corrections={"poll_interval": 0.2, "sweep": 1},
    )
    assert server.ctx.push is None and server.ctx.corrections is not None
    wait.until(ec.text_to_be_present_in_element((By.ID, "conn"), "Live"))
    assert not browser.find_element(By.ID, "corrections-section").is_displayed()  # nothing yet
    assert not browser.find_element(By.ID, "push-section").is_displayed()

    m = Dataset()
    m.QueryRetrieveLevel = "STUDY"
    m.StudyInstanceUID = CT.study_uid
    proxy = Remote("DICOMPROXY", "127.0.0.1", server.port)
    assert scu.move(proxy, cloud, m, calling_ae=cloud, timeout=60).completed == 10
    row = exam_row(CT)
    new_id = "CORR-NEW-7"
    update_rows(sqlite_view, "V_IMAGE_CLOUD", row["ExamineID"], {"PatientID": new_id})

    shown = wait.until(
        lambda d: d.find_elements(By.CSS_SELECTOR, f"#corrections tr[data-destination='{cloud}']")
    )
    section = browser.find_element(By.ID, "corrections-section")
    assert section.is_displayed()
    assert "交付后更正" in section.text and "Corrections after delivery (IOCM)" in section.text
    header = [th.text for th in browser.find_elements(By.CSS_SELECTOR, "#corrections thead th")]
    cells = shown[0].find_elements(By.TAG_NAME, "td")
    by_column = dict(zip(header, [td.text for td in cells], strict=True))
    assert by_column == {
        "目的地 To": cloud,
        "仅告警 Warned": "1",
        "待发 Due": "0",
        "发送中 Running": "0",
        "完成 Done": "0",
        "失败 Failed": "0",
    }
    assert cells[1].get_attribute("class") == "bad"  # a warning only: nothing was sent
    assert len(browser.find_elements(By.CSS_SELECTOR, "#corrections tbody tr")) == 1
    text = browser.find_element(By.TAG_NAME, "body").text
    source = browser.page_source
    for secret in (CT.patient.patient_id, CT.patient.name, CT.patient.pinyin, new_id):
        assert secret not in text and secret not in source, secret
    assert CT.study_uid not in text
