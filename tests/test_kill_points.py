"""A C-MOVE killed at any point resumes (issue 23): real Orthanc as the PACS, DCMTK storescp as
the destination, ``serve`` SIGKILLed at four points in both upstream modes, restarted, and the
automatic resume finishes the job: every instance arrives, at most the one in flight twice, the
job ends ``success``.

storescp sleeps a second after each C-STORE before it answers (``--sleep-after 1``), so the job
is mid-study for long enough to be killed where the test wants. The kill points:

- ``start``: as soon as the job's routed keys are journalled (before anything is fetched),
  and ``few``: after two instances arrived — both
  with the job's instance list removed from the journal after the kill, which is what a kill in
  the first second leaves (the early start lists the study beside the transfer and journals the
  list when that C-FIND is done; here it is too fast to be caught unjournalled reliably). The
  resume must list the study again at the archive recorded on the job;
- ``listed``: once the instance list is journalled; ``last``: while the last instance is sent.
"""

from __future__ import annotations

import contextlib
import itertools
import sqlite3
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom import dcmread

from dicomproxy.relay.journal import Journal
from dicomproxy.transport import scu
from dicomproxy.transport.net import Remote
from testkit import Process, wait_for_echo, wait_until
from testkit.dcmtk import StoreSCP
from testkit.orthanc import Orthanc
from testkit.orthancrig import proxy_site
from testkit.samples import Patient, StudySpec

pytestmark = [pytest.mark.slow, pytest.mark.orthanc, pytest.mark.dcmtk]

CLOUD, DEST = "CLOUD", "STORESCP"
N = 5
#: One study per rig (the session's Orthanc is shared by every test).
SEEDS = itertools.count(230)


class Rig:
    def __init__(self, tmp: Path, orthanc: Orthanc, retrieve: str, seed: int, resume_window: float) -> None:
        self.tmp = tmp
        spec = StudySpec(
            "CT",
            Patient(patient_id=f"P23{seed}", name="吴刚"),
            f"K{seed:04d}",
            series=1,
            images_per_series=N,
            seed=seed,
        )
        self.dest = StoreSCP(tmp / "scp", DEST, extra=["+uf", "--sleep-after", "1"]).start()
        site = proxy_site(
            tmp, orthanc, spec, retrieve, {CLOUD: 1, DEST: self.dest.port}, resume_window=resume_window
        )
        self.expected, self.study_uid = set(site.expected), spec.study_uid
        self.toml, self.port, self.ae_title = site.toml, site.port, site.ae_title
        self.procs: list[Process] = []

    @property
    def db(self) -> Path:
        return self.tmp / "var" / "journal.db"

    def serve(self, name: str) -> Process:
        proc = Process(
            [sys.executable, "-m", "dicomproxy", "serve", "-c", str(self.toml)], self.tmp / f"{name}.log"
        )
        self.procs.append(proc)
        wait_for_echo(Remote(self.ae_title, "127.0.0.1", self.port), 30, calling=CLOUD, proc=proc.proc)
        return proc

    def delivered(self) -> Counter[str]:
        got: Counter[str] = Counter()
        for path in self.dest.received():
            with contextlib.suppress(Exception):  # a file storescp is still writing
                got[str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)] += 1
        return got

    def query(self, sql: str) -> int:
        if not self.db.exists():
            return 0
        with contextlib.closing(sqlite3.connect(self.db, timeout=5)) as conn:
            try:
                return int(conn.execute(sql).fetchone()[0])
            except sqlite3.OperationalError:  # the tables are not made yet
                return 0

    def move_in_background(self) -> None:
        def run() -> None:
            with contextlib.suppress(Exception):  # the proxy is killed under it
                scu.move(
                    Remote(self.ae_title, "127.0.0.1", self.port),
                    DEST,
                    scu.identifier(study_uids=[self.study_uid]),
                    calling_ae=CLOUD,
                    timeout=60,
                )

        threading.Thread(target=run, daemon=True).start()

    def kill_at(self, point: str) -> int:
        """Start serve, C-MOVE, SIGKILL at ``point``; the job's ID."""
        proxy = self.serve("first")
        self.move_in_background()
        waits: dict[str, Callable[[], bool]] = {
            "start": lambda: self.query("SELECT count(*) FROM job_keys") > 0,
            "few": lambda: sum(self.delivered().values()) >= 2,
            "listed": lambda: (
                self.query("SELECT count(*) FROM job_expected") >= N and sum(self.delivered().values()) >= 1
            ),
            "last": lambda: sum(self.delivered().values()) >= N - 1,
        }
        wait_until(waits[point], 60, f"kill point {point}")
        proxy.kill()
        proxy.stop()
        journal = Journal.for_config("", self.tmp / "var")
        job = journal.recent(1)[0]
        journal.close()
        assert job["outcome"] == "running"  # what a crash leaves behind
        if point in ("start", "few"):  # the instance list not journalled yet (module docstring)
            with contextlib.closing(sqlite3.connect(self.db)) as conn:
                conn.execute("DELETE FROM job_expected WHERE job_id = ?", (job["id"],))
                conn.commit()
        return int(job["id"])

    def assert_recovered(self, job_id: int) -> None:
        wait_until(lambda: set(self.delivered()) == self.expected, 60, "every instance at storescp")
        got = self.delivered()
        # at most the instance in flight at the kill arrives twice (PS3.4 allows a resend)
        assert sum(got.values()) - len(self.expected) <= 1, got
        journal = Journal.for_config("", self.tmp / "var")
        row = journal.get(job_id).row  # type: ignore[union-attr]
        assert (row["outcome"], row["completed"], row["failed"]) == ("success", N, 0), row
        assert journal.unconfirmed(job_id) == []
        journal.close()
        assert not any((self.tmp / "var" / "spool").rglob("*.dcm"))

    def stop(self) -> None:
        for proc in self.procs:
            proc.stop()
        self.dest.stop()


@pytest.fixture
def rigs(tmp_path: Path, orthanc: Orthanc) -> Iterator[Callable[..., Rig]]:
    made: list[Rig] = []

    def make(retrieve: str, resume_window: float = 3600) -> Rig:
        rig = Rig(
            tmp_path / f"rig{len(made)}",
            orthanc,
            retrieve,
            next(SEEDS),
            resume_window,
        )
        made.append(rig)
        return rig

    yield make
    for rig in made:
        rig.stop()


@pytest.mark.parametrize("retrieve", ["c-move", "c-get"])
@pytest.mark.parametrize("point", ["start", "few", "listed", "last"])
def test_killed_move_resumes_by_itself(rigs: Callable[..., Rig], retrieve: str, point: str) -> None:
    rig = rigs(retrieve)
    job_id = rig.kill_at(point)
    serve = rig.serve("second")
    journal = Journal.for_config("", rig.tmp / "var")
    wait_until(
        lambda: journal.get(job_id).row["outcome"] in ("success", "partial", "failed"),  # type: ignore[union-attr]
        90,
        "the automatic resume",
    )
    journal.close()
    rig.assert_recovered(job_id)
    # the resume logs its line after the job's outcome is journalled: wait for it, do not race it
    done = f"job {job_id}: retried: success"
    wait_until(lambda: done in serve.log_text(), 30, "the resume's log line")
    log = serve.log_text()
    assert done in log, log
    if point in ("start", "few"):
        assert f"job {job_id}: its instance list was not journalled" in log, log


def test_jobs_retry_of_a_move_killed_in_its_first_second(rigs: Callable[..., Rig]) -> None:
    """The issue's case: c-move upstream, killed before the listing was journalled; `jobs retry`
    (handed to the running serve) finishes it — no "repeat the C-MOVE"."""
    rig = rigs("c-move", resume_window=0)
    job_id = rig.kill_at("few")
    serve = rig.serve("second")
    retry = Process(
        [sys.executable, "-m", "dicomproxy", "jobs", "-c", str(rig.toml), "retry", str(job_id)],
        rig.tmp / "retry.log",
    )
    rig.procs.append(retry)
    retry.proc.wait(120)
    out = retry.log_path.read_text()
    assert retry.proc.returncode == 0, out + serve.log_text()
    assert "predates" not in out and f"job {job_id}: success" in out
    rig.assert_recovered(job_id)
