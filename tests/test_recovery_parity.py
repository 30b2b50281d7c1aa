"""Recovery parity (issue 14): a `serve` killed with SIGKILL mid-study, with a real Orthanc as the
PACS, recovers in **both** upstream modes and from the archive recorded on the job.

The destination is a pynetdicom Storage SCP that stops answering after ``GATE`` instances, so
the job is frozen mid-study when the proxy is killed. Orthanc is fast and this study small, so by
then every instance has reached the proxy's spool; a kill during a 300-instance study leaves
many that never arrived. That state is made here by removing some spool files after the kill:
the retry must fetch those again from the PACS — by an IMAGE-level C-MOVE *to the proxy* in
c-move mode (which needs the proxy's listener: the retry runs inside `serve`) or by C-GET.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pynetdicom import AE, evt
from pynetdicom.presentation import AllStoragePresentationContexts
from sqlalchemy import create_engine

from dicomproxy.relay.journal import Journal
from dicomproxy.transport import scu
from dicomproxy.transport.net import NODELAY_HANDLERS, Remote
from testkit import Process, free_port, wait_for_echo, wait_until
from testkit.orthanc import Orthanc
from testkit.samples import Patient, StudySpec, exam_row, write_study
from testkit.viewdb import create_view_table, insert_rows

CLOUD, DEST = "CLOUD", "GATEDEST"
N = 8
GATE = 3


class GatedDestination:
    """A real Storage SCP (pynetdicom) that holds its C-STORE responses after ``gate_at``
    instances until :meth:`release` — a destination that went quiet mid-study."""

    def __init__(self, gate_at: int | None) -> None:
        self.gate_at = gate_at
        self.gate = threading.Event()
        self.received: Counter[str] = Counter()
        self._lock = threading.Lock()
        self.ae = AE(DEST)
        self.ae.supported_contexts = AllStoragePresentationContexts
        for cx in self.ae.supported_contexts:
            cx.scp_role, cx.scu_role = True, False
        self.port = free_port()
        handlers = [*NODELAY_HANDLERS, (evt.EVT_C_STORE, self._on_store)]
        self.server = self.ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=handlers)

    def _on_store(self, event: Any) -> int:
        with self._lock:
            held = self.gate_at is not None and sum(self.received.values()) >= self.gate_at
        if held and not self.gate.wait(60):
            return 0xA700
        with self._lock:
            self.received[str(event.request.AffectedSOPInstanceUID)] += 1
        return 0x0000

    def release(self) -> None:
        self.gate_at = None
        self.gate.set()

    def stop(self) -> None:
        self.release()
        self.server.shutdown()


@dataclass
class Rig:
    tmp: Path
    toml: Path
    ae_title: str
    port: int
    dest: GatedDestination
    expected: set[str]
    study_uid: str
    procs: list[Process] = field(default_factory=list)

    @property
    def remote(self) -> Remote:
        return Remote(self.ae_title, "127.0.0.1", self.port)

    def serve(self, name: str) -> Process:
        proc = Process(
            [sys.executable, "-m", "dicomproxy", "serve", "-c", str(self.toml)], self.tmp / f"{name}.log"
        )
        self.procs.append(proc)
        wait_for_echo(self.remote, 30, calling=CLOUD, proc=proc.proc)
        return proc

    def cli(self, *args: str, name: str = "cli") -> Process:
        proc = Process([sys.executable, "-m", "dicomproxy", *args], self.tmp / f"{name}.log")
        self.procs.append(proc)
        proc.proc.wait(120)
        return proc

    def journal(self) -> Journal:
        return Journal.for_config("", self.tmp / "var")

    def move_in_background(self) -> threading.Thread:
        def run() -> None:
            with contextlib.suppress(Exception):  # the proxy is killed under it
                scu.move(
                    self.remote,
                    DEST,
                    scu.identifier(study_uids=[self.study_uid]),
                    calling_ae=CLOUD,
                    timeout=60,
                )

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    def crash_mid_study(self) -> int:
        """Start serve, C-MOVE, SIGKILL while the destination holds instance GATE+1; then drop
        half of the spooled instances the destination never confirmed. Returns the job id."""
        proxy = self.serve("first")
        thread = self.move_in_background()
        wait_until(lambda: sum(self.dest.received.values()) >= GATE, 30, "first instances at the destination")
        spool = self.tmp / "var" / "spool"
        wait_until(lambda: len(list(spool.rglob("*.dcm"))) >= N - GATE - 1, 30, "the rest spooled")
        proxy.kill()
        proxy.stop()
        self.dest.release()
        thread.join(30)
        files = sorted(spool.rglob("*.dcm"))
        for path in files[: len(files) // 2]:  # "never received before the crash"
            path.unlink()
        journal = self.journal()
        job = journal.recent(1)[0]
        journal.close()
        assert job["outcome"] == "running"  # what a crash leaves behind
        return int(job["id"])

    def assert_recovered(self, job_id: int) -> None:
        assert set(self.dest.received) == self.expected
        # at most the instance in flight at the kill arrives twice (PS3.4 allows a resend)
        assert sum(self.dest.received.values()) - len(self.expected) <= 1, self.dest.received
        journal = self.journal()
        row = journal.get(job_id).row  # type: ignore[union-attr]
        assert (row["outcome"], row["completed"], row["failed"]) == ("success", N, 0), row
        assert journal.unconfirmed(job_id) == []
        journal.close()
        assert not any((self.tmp / "var" / "spool").rglob("*.dcm"))


@pytest.fixture
def rig_factory(tmp_path: Path, orthanc: Orthanc) -> Iterator[Callable[..., Rig]]:
    made: list[Rig] = []

    def make(retrieve: str, *, via_archive: bool = False, resume_window: float = 0) -> Rig:
        seed = 40 + len(made) + (10 if via_archive else 0) + (20 if retrieve == "c-get" else 0)
        spec = StudySpec(
            "CT",
            Patient(patient_id=f"P07{seed}", name="周杰"),
            f"R{seed:04d}",
            series=2,
            images_per_series=N // 2,
            seed=seed,
        )
        files = write_study(spec, tmp_path / "study")
        orthanc.upload(files)
        port = free_port()
        # Orthanc finds a C-MOVE destination by AE title: one of our own per rig (the session's
        # Orthanc is shared, and an older entry with the same title would point at a dead port)
        ae_title = f"DP{port}"
        orthanc.add_modality(ae_title.lower(), Remote(ae_title, "127.0.0.1", port))
        view_url = f"sqlite:///{tmp_path / 'view.db'}"
        engine = create_engine(view_url)
        create_view_table(engine)
        insert_rows(engine, [exam_row(spec)])
        engine.dispose()
        dest = GatedDestination(GATE)
        archive = f"""
[pacs]
ae_title = "{orthanc.remote.ae_title}"
host = "127.0.0.1"
port = {orthanc.remote.port}
retrieve = "{retrieve}"
dimse_timeout = 30
"""
        if via_archive:  # [pacs] is dead; the study's Sysid routes it to an [[archives]] entry
            archive = f"""
[pacs]
ae_title = "DEADPACS"
host = "127.0.0.1"
port = {free_port()}
retrieve = "{retrieve}"

[[archives]]
name = "ris-archive"
ae_title = "{orthanc.remote.ae_title}"
host = "127.0.0.1"
port = {orthanc.remote.port}
retrieve = "{retrieve}"
sysids = ["RIS"]
dimse_timeout = 30
"""
        toml = tmp_path / "proxy.toml"
        toml.write_text(
            f"""
[proxy]
ae_title = "{ae_title}"
host = "127.0.0.1"
port = {port}
data_dir = "var"
dimse_timeout = 30
drain_timeout = 10
retries = 1
retry_delay = 0.1

[hospital]
id = "74580626"

[view]
url = "{view_url}"
{archive}
[[peers]]
ae_title = "{CLOUD}"
host = "127.0.0.1"
port = 1

[[peers]]
ae_title = "{DEST}"
host = "127.0.0.1"
port = {dest.port}

[journal]
resume_window = {resume_window}

# no HTTP console: it would default to the fixed port 8080, shared with every concurrent run
[http]
port = 0
"""
        )
        expected = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files}
        rig = Rig(tmp_path, toml, ae_title, port, dest, expected, spec.study_uid)
        made.append(rig)
        return rig

    yield make
    for rig in made:
        for proc in rig.procs:
            proc.stop()
        rig.dest.stop()


@pytest.mark.parametrize("retrieve", ["c-move", "c-get"])
@pytest.mark.parametrize("via_archive", [False, True], ids=["pacs", "archive"])
def test_kill_restart_retry_in_both_modes(
    rig_factory: Callable[..., Rig], retrieve: str, via_archive: bool
) -> None:
    """`jobs retry` while `serve` runs: handed over to it (it holds the port a C-MOVE delivers to)."""
    rig = rig_factory(retrieve, via_archive=via_archive)
    job_id = rig.crash_mid_study()
    serve = rig.serve("second")  # marks the job interrupted; resume_window = 0: no automatic resume
    retry = rig.cli("jobs", "-c", str(rig.toml), "retry", str(job_id), name="retry")
    out = retry.log_path.read_text()
    assert retry.proc.returncode == 0, out + serve.log_text()
    assert "handed to the running serve" in out and f"job {job_id}: success" in out
    rig.assert_recovered(job_id)
    log = serve.log_text()
    assert f"job {job_id}: retried: success" in log and "fetched again" in log


def test_retry_without_serve_listens_itself(rig_factory: Callable[..., Rig]) -> None:
    """No `serve` running, c-move archive: `jobs retry` listens on [proxy].port for the retry."""
    rig = rig_factory("c-move")
    job_id = rig.crash_mid_study()
    journal = rig.journal()
    journal.mark_interrupted()  # what the next start would do
    journal.close()
    retry = rig.cli("jobs", "-c", str(rig.toml), "retry", str(job_id), name="retry")
    out = retry.log_path.read_text()
    assert retry.proc.returncode == 0, out
    assert f"job {job_id}: success" in out and "fetched again" in out
    assert " 0 fetched again" not in out
    rig.assert_recovered(job_id)


def test_interrupted_job_resumes_by_itself_at_start(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory("c-move", resume_window=3600)
    job_id = rig.crash_mid_study()
    serve = rig.serve("second")
    journal = rig.journal()
    wait_until(lambda: journal.get(job_id).row["outcome"] == "success", 60, "automatic resume")  # type: ignore[union-attr]
    journal.close()
    rig.assert_recovered(job_id)
    log = serve.log_text()
    assert f"job {job_id}: interrupted, resuming" in log and f"job {job_id}: retried: success" in log
