"""Real processes (issue 6): ``dicomproxy serve`` killed with SIGKILL mid-job, restarted, the job
retried to completion; SIGTERM during a C-MOVE drains it with exit code 0.

PACS: the controllable pynetdicom PACS (in this process), stalled on an event mid-study, upstream
C-GET. Destination: a real DCMTK storescp with unique file names (``+uf``), so every delivery is
a file and duplicates can be counted by SOP Instance UID.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from pydicom import dcmread
from sqlalchemy import create_engine

from dicomproxy.cli import cli
from dicomproxy.config import load_config
from dicomproxy.relay.journal import Journal
from dicomproxy.relay.recovery import retry_job
from dicomproxy.transport import scu
from dicomproxy.transport.net import Remote
from testkit import Process, free_port, wait_for_echo, wait_until
from testkit.dcmtk import StoreSCP
from testkit.fakepacs import FakePacs
from testkit.samples import StudySpec, exam_row, write_study
from testkit.viewdb import create_view_table, insert_rows

CLOUD = "CLOUD"
N = 6
#: The PACS stops before this instance (0-based) until the test lets it go on.
GATE = 3


@dataclass
class Harness:
    tmp: Path
    toml: Path
    port: int
    pacs: FakePacs
    storescp: StoreSCP
    files: list[Path]
    study_uid: str
    proxy: Process | None = None

    @property
    def remote(self) -> Remote:
        return Remote("DICOMPROXY", "127.0.0.1", self.port)

    def start_proxy(self, name: str) -> Process:
        self.proxy = Process(
            [sys.executable, "-m", "dicomproxy", "serve", "-c", str(self.toml)], self.tmp / f"{name}.log"
        )
        wait_for_echo(self.remote, 30, calling=CLOUD, proc=self.proxy.proc)
        return self.proxy

    def journal(self) -> Journal:
        return Journal.for_config("", self.tmp / "var")

    def audit_rows(self, job_id: int) -> list[dict[str, Any]]:
        """The privacy officer's view: ``dicomproxy audit --json --study UID``, rows of this job."""
        result = CliRunner().invoke(cli, ["audit", "-c", str(self.toml), "--json", "--study", self.study_uid])
        assert result.exit_code == 0, result.output
        return [r for r in json.loads(result.output) if r["job_id"] == job_id]

    def delivered(self) -> Counter[str]:
        return Counter(
            str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in self.storescp.received()
        )

    def move_in_background(self) -> tuple[threading.Thread, dict[str, Any]]:
        out: dict[str, Any] = {}

        def run() -> None:
            try:
                out["result"] = scu.move(
                    self.remote,
                    "STORESCP",
                    scu.identifier(study_uids=[self.study_uid]),
                    calling_ae=CLOUD,
                    timeout=60,
                )
            except Exception as exc:  # the proxy is killed under it
                out["error"] = exc

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread, out


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    spec = StudySpec("CT", accession="K0001", series=2, images_per_series=N // 2, seed=23)
    files = write_study(spec, tmp_path / "study")
    view_url = f"sqlite:///{tmp_path / 'view.db'}"
    engine = create_engine(view_url)
    create_view_table(engine)
    insert_rows(engine, [exam_row(spec)])
    engine.dispose()
    pacs = FakePacs(files).start()
    pacs.behaviour.gate_at = GATE
    storescp = StoreSCP(tmp_path / "scp", "STORESCP", extra=["+uf"]).start()
    port = free_port()
    toml = tmp_path / "proxy.toml"
    toml.write_text(
        f"""
[proxy]
ae_title = "DICOMPROXY"
host = "127.0.0.1"
port = {port}
data_dir = "{tmp_path / "var"}"
dimse_timeout = 30
drain_timeout = 20
retries = 1
retry_delay = 0.1

[hospital]
id = "74580626"

[view]
url = "{view_url}"

[pacs]
ae_title = "{pacs.ae_title}"
host = "127.0.0.1"
port = {pacs.port}
retrieve = "c-get"
dimse_timeout = 30

[[peers]]
ae_title = "{CLOUD}"
host = "127.0.0.1"
port = 1

[[peers]]
ae_title = "STORESCP"
host = "127.0.0.1"
port = {storescp.port}

[journal]
resume_window = 0  # `jobs retry` is what these tests drive (automatic resume: test_recovery_parity)

# no HTTP console: it would default to the fixed port 8080, shared with every concurrent run
[http]
port = 0
"""
    )
    study_uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    h = Harness(tmp_path, toml, port, pacs, storescp, files, study_uid)
    yield h
    if h.proxy is not None:
        h.proxy.stop()
    pacs.stop()
    storescp.stop()


def test_sigkill_mid_job_then_restart_and_retry(harness: Harness) -> None:
    h = harness
    proxy = h.start_proxy("first")
    thread, _ = h.move_in_background()
    # GATE instances sent on; the PACS is holding the rest back: the job is mid-way.
    wait_until(lambda: h.pacs.behaviour.at_gate.is_set(), 30, "PACS at its gate")
    wait_until(lambda: sum(h.delivered().values()) >= GATE, 30, "first instances at storescp")
    proxy.kill()  # SIGKILL: no drain, no journal finish
    h.pacs.behaviour.gate.set()
    thread.join(30)
    proxy.stop()

    journal = h.journal()
    job = journal.recent(1)[0]
    assert job["outcome"] == "running"  # what a crash leaves behind
    with pytest.raises(ValueError, match="still running"):  # maybe a live serve's: not touched
        retry_job(load_config(h.toml), journal, job["id"])
    journal.close()

    h.pacs.behaviour.gate_at = None
    h.start_proxy("second")  # start-up reconciliation
    journal = h.journal()
    assert journal.get(job["id"]).row["outcome"] == "interrupted"  # type: ignore[union-attr]
    # The killed C-MOVE never reached its audit row; the restart writes it (issue 15: every C-MOVE).
    wait_until(lambda: bool(h.audit_rows(job["id"])), 30, "the interrupted job's audit row")
    (row,) = h.audit_rows(job["id"])
    assert (row["action"], row["outcome"], row["calling_ae"], row["destination"]) == (
        "move",
        "interrupted",
        CLOUD,
        "STORESCP",
    )
    assert row["study_uids"] == [h.study_uid] and row["patient_ids"] == ["P0001"]  # from the exam view

    retry = Process(
        [sys.executable, "-m", "dicomproxy", "jobs", "-c", str(h.toml), "retry", str(job["id"])],
        h.tmp / "retry.log",
    )
    retry.proc.wait(60)
    retry.stop()
    assert retry.proc.returncode == 0, retry.log_path.read_text()
    assert "handed to the running serve" in retry.log_path.read_text()  # serve holds the port

    expected = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in h.files}
    delivered = h.delivered()
    assert set(delivered) == expected  # nothing missing
    # Nothing duplicated beyond what the standard allows: the instance whose C-STORE was in
    # flight at the kill may have reached storescp without its response being recorded, and is
    # then sent again (the Storage Service does not forbid a SOP Instance arriving twice; SCPs keep
    # or overwrite the duplicate).
    assert sum(delivered.values()) - len(expected) <= 1, delivered
    final = journal.get(job["id"])
    assert final is not None
    assert (final.row["outcome"], final.row["completed"], final.row["failed"]) == ("success", N, 0)
    assert journal.unconfirmed(job["id"]) == []
    journal.close()
    assert not any((h.tmp / "var" / "spool").rglob("*.dcm"))


def test_sigterm_during_move_drains_and_exits_zero(harness: Harness) -> None:
    h = harness
    proxy = h.start_proxy("drain")
    thread, out = h.move_in_background()
    wait_until(lambda: h.pacs.behaviour.at_gate.is_set(), 30, "PACS at its gate")
    proxy.proc.send_signal(signal.SIGTERM)
    # The listener closes first (stops accepting) while the running job goes on.
    wait_until(lambda: "stop requested" in proxy.log_text(), 30, "drain start")
    h.pacs.behaviour.gate.set()
    assert proxy.proc.wait(30) == 0, proxy.log_text()
    thread.join(30)
    result = out.get("result")
    assert result is not None and result.status == 0x0000, out
    assert sorted(h.delivered()) == sorted(
        str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in h.files
    )
    journal = h.journal()
    assert journal.recent(1)[0]["outcome"] == "success"
    journal.close()


def test_sigterm_drain_timeout_checkpoints_the_job(harness: Harness) -> None:
    """The PACS holds the job past the drain timeout: the job is checkpointed (``interrupted``,
    spool kept) as the process exits — exit code 1, the drain was not clean — and ``jobs retry``
    finishes it later."""
    h = harness
    h.toml.write_text(h.toml.read_text().replace("drain_timeout = 20", "drain_timeout = 0.5"))
    proxy = h.start_proxy("drain-timeout")
    thread, _ = h.move_in_background()
    wait_until(lambda: h.pacs.behaviour.at_gate.is_set(), 30, "PACS at its gate")
    proxy.proc.send_signal(signal.SIGTERM)
    assert proxy.proc.wait(30) == 1, proxy.log_text()
    h.pacs.behaviour.gate_at = None
    h.pacs.behaviour.gate.set()
    thread.join(30)
    journal = h.journal()
    job = journal.recent(1)[0]
    # "aborted" if the job's own thread got to write its end first; both are retryable
    assert job["outcome"] in ("interrupted", "aborted"), job
    retry_job(load_config(h.toml), journal, job["id"])
    assert journal.get(job["id"]).row["outcome"] == "success"  # type: ignore[union-attr]
    journal.close()
    expected = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in h.files}
    delivered = h.delivered()
    assert set(delivered) == expected and sum(delivered.values()) - len(expected) <= 1, delivered
