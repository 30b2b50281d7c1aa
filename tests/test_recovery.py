"""Restart safety (issue 6): start-up reconciliation of spool and journal, ``jobs retry``.

In-process rig: controllable pynetdicom PACS and destination (testkit.fakepacs).
The kill -9 proof with real processes is ``tests/test_kill_restart.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from pydicom import dcmread
from sqlalchemy import text

from dicomproxy.app import build_context
from dicomproxy.config import Config
from dicomproxy.pacs.routing import StudyRef
from dicomproxy.relay.journal import Journal
from dicomproxy.relay.recovery import reconcile, retry_job
from dicomproxy.server import Server
from dicomproxy.transport import scu
from dicomproxy.transport.net import Remote
from testkit import free_port
from testkit.fakepacs import FakeDestination, FakePacs
from testkit.fakeview import AllVisible
from testkit.samples import StudySpec, write_study

CLOUD = "CLOUD"


@pytest.fixture(scope="module")
def study_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    spec = StudySpec("MR", accession="R0001", series=1, images_per_series=5, seed=17)
    return write_study(spec, tmp_path_factory.mktemp("recovery-study"))


def sop_uids(files: list[Path]) -> list[str]:
    return [str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files]


def test_reconcile_marks_interrupted_keeps_and_quarantines(
    make_config: Callable[..., Config], caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config()
    journal = Journal.for_config("", config.data_path)
    running = journal.start("move", CLOUD, "127.0.0.1", "DEST", "pacs")
    done = journal.start("move", CLOUD, "127.0.0.1", "DEST", "pacs")
    journal.finish(done, status=0xB000, outcome="partial")
    spool = config.data_path / "spool"
    (spool / f"job-{running:06d}-aaaaaa").mkdir(parents=True)
    (spool / f"job-{running:06d}-aaaaaa" / "000001.dcm").write_bytes(b"x")
    (spool / f"job-{done:06d}-bbbbbb").mkdir()
    (spool / f"job-{done:06d}-bbbbbb" / "000002.dcm").write_bytes(b"y")
    (spool / "job-999999-cccccc").mkdir()
    (spool / "job-999999-cccccc" / "000001.dcm").write_bytes(b"z")
    (spool / "stray.dcm").write_bytes(b"w")
    recycled = (
        config.data_path / "incoming" / "recycled"
    )  # confirmed files kept for reuse by a killed process
    recycled.mkdir(parents=True)
    (recycled / "4242-7.free").write_bytes(b"v")

    report = reconcile(config, journal)

    assert report.interrupted == [running]
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert (
        f"job {running} was interrupted (process ended); `dicomproxy jobs retry {running}` resends it"
        in warned
    )
    assert journal.get(running) is not None and journal.get(running).row["outcome"] == "interrupted"  # type: ignore[union-attr]
    assert journal.get(done).row["outcome"] == "partial"  # type: ignore[union-attr]
    assert sorted(p.name for p in report.kept) == [f"job-{running:06d}-aaaaaa", f"job-{done:06d}-bbbbbb"]
    quarantine = config.data_path / "quarantine"
    assert sorted(p.name for p in quarantine.iterdir()) == ["job-999999-cccccc", "stray.dcm"]
    assert (quarantine / "job-999999-cccccc" / "000001.dcm").read_bytes() == b"z"  # moved, not deleted
    assert list(recycled.iterdir()) == []  # confirmed: deleted
    assert reconcile(config, journal).interrupted == []  # idempotent
    journal.close()


@pytest.fixture(params=["c-get", "c-move"])
def rig(
    request: pytest.FixtureRequest, make_config: Callable[..., Config], study_files: list[Path]
) -> Iterator[tuple[FakePacs, FakeDestination, Server, Config]]:
    proxy_port = free_port()
    dest = FakeDestination().start()
    pacs = FakePacs(
        study_files, destinations={"DICOMPROXY": Remote("DICOMPROXY", "127.0.0.1", proxy_port)}
    ).start()
    config = make_config(
        proxy={"port": proxy_port, "dimse_timeout": 5.0, "retries": 1, "retry_delay": 0.01},
        pacs={
            "ae_title": pacs.ae_title,
            "host": "127.0.0.1",
            "port": pacs.port,
            "retrieve": request.param,
            "dimse_timeout": 30.0,
        },
        peers=[
            {"ae_title": CLOUD, "host": "127.0.0.1", "port": 1},
            {"ae_title": "FAKEDEST", "host": "127.0.0.1", "port": dest.port},
        ],
    )
    server = Server(config, build_context(config, view=AllVisible(), pending_interval=0.1))
    server.start()
    yield pacs, dest, server, config
    pacs.stop()
    server.stop(drain_timeout=2.0)
    dest.stop()


def test_retry_resends_exactly_the_unconfirmed(
    rig: tuple[FakePacs, FakeDestination, Server, Config], study_files: list[Path]
) -> None:
    """One instance rejected (its file stays in the spool), two never received (PACS aborted):
    the retry sends exactly those three — from the spool, and fetched again from the PACS: by
    C-GET, or by an IMAGE-level C-MOVE to the running server (its archive clients). Without a
    listener a C-MOVE cannot be re-fetched: the two are reported as not found."""
    pacs, dest, server, config = rig
    uids = sop_uids(study_files)
    dest.behaviour.reject = {uids[1]: 0xA900}
    pacs.behaviour.abort_after = 3
    study = str(dcmread(study_files[0], stop_before_pixels=True).StudyInstanceUID)
    first = scu.move(
        Remote("DICOMPROXY", "127.0.0.1", server.port),
        "FAKEDEST",
        scu.identifier(study_uids=[study]),
        calling_ae=CLOUD,
        timeout=60,
    )
    assert first.status == 0xB000, first.line()
    assert (first.completed, first.failed) == (2, 3)
    journal = Journal.for_config("", config.data_path)
    job_id = journal.recent(1)[0]["id"]
    assert sorted(r["sop_instance_uid"] for r in journal.unconfirmed(job_id)) == sorted(uids[1:2] + uids[3:])

    dest.behaviour.reject = {}
    pacs.behaviour.abort_after = None
    if config.pacs.retrieve == "c-move":  # no listener's clients: said clearly, nothing lost
        alone = retry_job(config, journal, job_id)
        assert (alone.from_spool, alone.refetched, alone.sent) == (1, 0, 1)
        assert sorted(alone.not_found) == sorted(uids[3:]) and "needs the proxy's listener" in alone.error
        row = journal.get(job_id).row  # type: ignore[union-attr]
        assert (row["outcome"], row["completed"], row["failed"]) == ("partial", 3, 2)
    result = retry_job(config, journal, job_id, server.ctx.archives)

    received = [uid for uid, _ in dest.received]
    job = journal.get(job_id)
    assert job is not None
    if config.pacs.retrieve == "c-get":
        assert (result.from_spool, result.refetched, result.sent) == (1, 2, 3), result
    else:
        assert (result.from_spool, result.refetched, result.sent) == (0, 2, 2), result
    assert sorted(received) == sorted(uids)  # each exactly once
    assert (job.row["outcome"], job.row["completed"], job.row["failed"]) == ("success", 5, 0)
    assert list((config.data_path / "spool").rglob("*")) == []
    journal.close()


def test_retry_while_destination_still_rejects(
    rig: tuple[FakePacs, FakeDestination, Server, Config], study_files: list[Path]
) -> None:
    """The destination still refuses the one unconfirmed instance: the retry records it as
    failed (never as sent), keeps its spool file, and the job stays partial; a later retry,
    once the destination takes it, completes the job (issue 18, mutant 5)."""
    _pacs, dest, server, config = rig
    uids = sop_uids(study_files)
    bad = uids[1]
    dest.behaviour.reject = {bad: 0xA700}  # out of resources: retried, and refused again
    study = str(dcmread(study_files[0], stop_before_pixels=True).StudyInstanceUID)
    first = scu.move(
        Remote("DICOMPROXY", "127.0.0.1", server.port),
        "FAKEDEST",
        scu.identifier(study_uids=[study]),
        calling_ae=CLOUD,
        timeout=60,
    )
    assert (first.status, first.completed, first.failed) == (0xB000, 4, 1), first.line()
    journal = Journal.for_config("", config.data_path)
    job_id = journal.recent(1)[0]["id"]
    attempts = dest.attempts.count(bad)

    result = retry_job(config, journal, job_id)

    assert (result.unconfirmed, result.from_spool, result.refetched) == (1, 1, 0), result
    assert (result.sent, result.failed, result.outcome) == (0, [bad], "partial"), result
    assert dest.attempts.count(bad) == attempts + 1 + config.proxy.retries  # it was really resent
    assert bad not in [uid for uid, _ in dest.received]
    assert [r["sop_instance_uid"] for r in journal.unconfirmed(job_id)] == [bad]
    job = journal.get(job_id)
    assert job is not None
    assert (job.row["outcome"], job.row["status"], job.row["completed"], job.row["failed"]) == (
        "partial",
        0xB000,
        4,
        1,
    )
    assert "1 instance(s) still not confirmed" in job.row["error"]
    assert len(list((config.data_path / "spool").rglob("*.dcm"))) == 1  # kept for the next retry

    dest.behaviour.reject = {}
    again = retry_job(config, journal, job_id)
    assert (again.sent, again.failed, again.outcome) == (1, [], "success"), again
    assert journal.unconfirmed(job_id) == []
    done = journal.get(job_id)
    assert done is not None
    assert (done.row["outcome"], done.row["status"], done.row["completed"], done.row["failed"]) == (
        "success",
        0x0000,
        5,
        0,
    )
    assert sorted(uid for uid, _ in dest.received) == sorted(uids)
    assert list((config.data_path / "spool").rglob("*.dcm")) == []
    journal.close()


Rig = tuple[FakePacs, FakeDestination, Server, Config]


def first_move(rig: Rig, study_files: list[Path]) -> tuple[Journal, int, scu.RetrieveSummary]:
    """The C-MOVE whose job the test then retries: (journal, job id, the cloud's summary)."""
    _pacs, _dest, server, config = rig
    study = str(dcmread(study_files[0], stop_before_pixels=True).StudyInstanceUID)
    summary = scu.move(
        Remote("DICOMPROXY", "127.0.0.1", server.port),
        "FAKEDEST",
        scu.identifier(study_uids=[study]),
        calling_ae=CLOUD,
        timeout=60,
    )
    journal = Journal.for_config("", config.data_path)
    return journal, journal.recent(1)[0]["id"], summary


def test_retry_with_torn_spool_file(rig: Rig, study_files: list[Path]) -> None:
    """One of the two unconfirmed instances' spool files is torn (the crash): it is ignored, not
    sent, and the other is still read; with C-GET upstream the torn one is fetched again and
    sent, with C-MOVE it is reported as not found."""
    _pacs, dest, _server, config = rig
    uids = sop_uids(study_files)
    dest.behaviour.reject = {uids[1]: 0xA900, uids[2]: 0xA900}
    journal, job_id, first = first_move(rig, study_files)
    assert (first.completed, first.failed) == (3, 2), first.line()
    torn_file, kept_file = sorted((config.data_path / "spool").rglob("*.dcm"))
    torn = str(dcmread(torn_file, stop_before_pixels=True).SOPInstanceUID)
    kept = str(dcmread(kept_file, stop_before_pixels=True).SOPInstanceUID)
    torn_file.write_bytes(b"torn")
    dest.behaviour.reject = {}
    result = retry_job(config, journal, job_id)
    job = journal.get(job_id)
    assert job is not None
    received = [uid for uid, _ in dest.received]
    assert received.count(kept) == 1
    if config.pacs.retrieve == "c-get":
        assert (result.from_spool, result.refetched, result.sent, result.outcome) == (1, 1, 2, "success"), (
            result
        )
        assert received.count(torn) == 1
        assert (job.row["status"], job.row["completed"]) == (0x0000, 5)
    else:
        assert (result.from_spool, result.refetched, result.sent, result.not_found) == (1, 0, 1, [torn])
        assert (result.outcome, job.row["status"], job.row["completed"]) == ("partial", 0xB000, 4)
        assert torn not in received
    journal.close()


def test_retry_when_the_pacs_still_fails(rig: Rig, study_files: list[Path]) -> None:
    """Two instances never arrived; at the retry the PACS still aborts: they stay unconfirmed and
    the PACS's reason is reported (re-fetched by C-GET, or by C-MOVE to the running server)."""
    pacs, _dest, server, config = rig
    uids = sop_uids(study_files)
    pacs.behaviour.abort_after = 3
    journal, job_id, first = first_move(rig, study_files)
    assert (first.completed, first.failed) == (3, 2), first.line()
    pacs.behaviour.abort_after = 0
    result = retry_job(config, journal, job_id, server.ctx.archives)
    assert (result.sent, sorted(result.not_found), result.outcome) == (0, sorted(uids[3:]), "partial"), result
    assert "abort" in result.error.lower() and "listener" not in result.error, result.error
    job = journal.get(job_id)
    assert job is not None
    assert (job.row["status"], job.row["completed"], job.row["failed"], job.row["error"]) == (
        0xB000,
        3,
        2,
        result.error,
    )
    assert sorted(r["sop_instance_uid"] for r in journal.unconfirmed(job_id)) == sorted(uids[3:])
    journal.close()


def test_retry_nothing_confirmed_is_all_failed(rig: Rig, study_files: list[Path]) -> None:
    """Every instance refused, before and at the retry: 0xA702, outcome failed, all five kept."""
    _pacs, dest, _server, config = rig
    dest.behaviour.reject = dict.fromkeys(sop_uids(study_files), 0xA900)
    journal, job_id, first = first_move(rig, study_files)
    assert (first.status, first.completed, first.failed) == (0xA702, 0, 5), first.line()
    result = retry_job(config, journal, job_id)
    assert (result.from_spool, result.sent, len(result.failed), result.outcome) == (5, 0, 5, "failed"), result
    job = journal.get(job_id)
    assert job is not None
    assert (job.row["outcome"], job.row["status"], job.row["completed"], job.row["failed"]) == (
        "failed",
        0xA702,
        0,
        5,
    )
    assert len(list((config.data_path / "spool").rglob("*.dcm"))) == 5
    journal.close()


def test_retry_when_the_destination_refuses(rig: Rig, study_files: list[Path]) -> None:
    """The destination refuses the association at the retry: nothing sent, the reason recorded,
    the spool file kept, the job still partial."""
    _pacs, dest, _server, config = rig
    uids = sop_uids(study_files)
    dest.behaviour.reject = {uids[1]: 0xA900}
    journal, job_id, _ = first_move(rig, study_files)
    dest.behaviour.refuse = True
    result = retry_job(config, journal, job_id)
    assert (result.from_spool, result.sent, result.outcome) == (1, 0, "partial"), result
    assert "FAKEDEST" in result.error, result.error
    job = journal.get(job_id)
    assert job is not None
    assert (job.row["status"], job.row["error"]) == (0xB000, result.error)
    assert [r["sop_instance_uid"] for r in journal.unconfirmed(job_id)] == [uids[1]]
    assert len(list((config.data_path / "spool").rglob("*.dcm"))) == 1
    journal.close()


def test_retry_drops_files_already_confirmed(rig: Rig, study_files: list[Path]) -> None:
    """A crash between the journal row and the file's removal leaves the spool file of a
    confirmed instance: the retry deletes it and does not send it again."""
    _pacs, dest, _server, config = rig
    uids = sop_uids(study_files)
    dest.behaviour.reject = {uids[1]: 0xA900}
    journal, job_id, _ = first_move(rig, study_files)
    (left,) = list((config.data_path / "spool").rglob("*.dcm"))
    stale = left.parent / "stale-confirmed.dcm"
    stale.write_bytes(study_files[0].read_bytes())  # uids[0]: confirmed by the destination
    (config.data_path / "spool" / f"job-{job_id:06d}-out").mkdir()  # and an earlier retry crashed too
    dest.behaviour.reject = {}
    result = retry_job(config, journal, job_id)
    assert (result.from_spool, result.sent, result.outcome) == (1, 1, "success"), result
    assert not stale.exists()
    assert [uid for uid, _ in dest.received].count(uids[0]) == 1
    assert dest.attempts.count(uids[0]) == 1
    journal.close()


def test_retry_refuses_what_it_cannot_do(make_config: Callable[..., Config]) -> None:
    """Journal states `jobs retry` must refuse, and an empty job it has nothing to do for."""
    config = make_config()
    journal = Journal.for_config("", config.data_path)

    def job(kind: str = "move", dest: str = "jobserver", **finish: Any) -> int:
        job_id = journal.start(kind, CLOUD, "127.0.0.1", dest, "pacs")
        if finish:
            journal.finish(job_id, **finish)
        return job_id

    with pytest.raises(ValueError, match="is still running"):
        retry_job(config, journal, job())
    with pytest.raises(ValueError, match="is a C-GET: only the requester can repeat it"):
        retry_job(config, journal, job("get", status=0xB000, outcome="partial"))
    with pytest.raises(ValueError, match="destination 'GONE' is no longer a configured peer"):
        retry_job(config, journal, job(dest="GONE", status=0xB000, outcome="partial"))
    with pytest.raises(ValueError, match="predates the record of announced instances"):
        retry_job(config, journal, job(status=0xB000, outcome="partial", expected=3))
    with pytest.raises(LookupError, match="no job 4242"):
        retry_job(config, journal, 4242)
    empty = job(status=0x0000, outcome="empty", expected=0)
    result = retry_job(config, journal, empty)
    assert (result.unconfirmed, result.sent, result.outcome, result.error) == (0, 0, "success", "")
    journal.close()


def test_jobs_retry_cli_unknown_job(make_config: Callable[..., Config], tmp_path: Path) -> None:
    from dicomproxy.cli import cli

    config = make_config()
    toml = tmp_path / "c.toml"
    toml.write_text(
        f'[proxy]\ndata_dir = "{config.data_path}"\n[hospital]\nid = "1"\n'
        f'[view]\nurl = "sqlite:///{tmp_path}/v.db"\n[pacs]\nae_title = "P"\nhost = "127.0.0.1"\nport = 1\n'
    )
    out = CliRunner().invoke(cli, ["jobs", "-c", str(toml), "retry", "42"])
    assert out.exit_code == 1
    assert "no job 42" in out.output


@pytest.mark.parametrize("keys", ["job_keys", "study_uids"])
def test_retry_lists_a_job_whose_instance_list_was_never_journalled(
    rig: Rig, study_files: list[Path], keys: str
) -> None:
    """A job killed before its instance list was journalled (issue 23): the retry lists the study
    again at the archive recorded on the job — from its routed keys (``job_keys``), or from its
    ``study_uids`` in a journal from before them — journals the list, and resends what the
    destination did not confirm: the refused instance (from the spool) and two the PACS never
    sent (fetched again; by C-MOVE only with the serving process's clients)."""
    pacs, dest, server, config = rig
    uids = sop_uids(study_files)
    dest.behaviour.reject = {uids[1]: 0xA900}
    pacs.behaviour.abort_after = 3
    journal, job_id, first = first_move(rig, study_files)
    assert (first.completed, first.failed) == (2, 3), first.line()
    with journal.engine.begin() as conn:  # what a kill before the listing leaves
        conn.execute(text("DELETE FROM job_expected WHERE job_id = :j"), {"j": job_id})
        if keys == "study_uids":
            conn.execute(text("DELETE FROM job_keys WHERE job_id = :j"), {"j": job_id})
    assert not journal.has_expected(job_id)
    dest.behaviour.reject = {}
    pacs.behaviour.abort_after = None
    result = retry_job(config, journal, job_id, server.ctx.archives)
    assert (result.unconfirmed, result.sent, result.outcome) == (3, 3, "success"), result
    assert sorted(uid for uid, _ in dest.received) == sorted(uids)  # each exactly once
    assert sorted(r["sop_instance_uid"] for r in journal.unconfirmed(job_id)) == []
    assert journal.has_expected(job_id)  # the list is journalled now: a later retry needs no listing
    row = journal.get(job_id).row  # type: ignore[union-attr]
    assert (row["outcome"], row["completed"], row["failed"], row["expected"]) == ("success", 5, 0, 5)
    journal.close()


def test_retry_of_a_job_that_never_resolved_its_request(make_config: Callable[..., Config]) -> None:
    """Killed before its identifier was resolved in the exam view (nothing fetched, nothing sent,
    no level recorded): said plainly, not reported as a success."""
    config = make_config()
    journal = Journal.for_config("", config.data_path)
    job_id = journal.start("move", CLOUD, "127.0.0.1", "jobserver", "")
    journal.finish(job_id, status=0xA702, outcome="interrupted")
    with pytest.raises(ValueError, match="ended before its request was resolved"):
        retry_job(config, journal, job_id)
    journal.close()


def test_a_retry_counts_its_bytes_on_top_and_keeps_the_serving_pool(
    rig: Rig, study_files: list[Path]
) -> None:
    """The destination refused the association at the first attempt (0xC003: nothing sent, 0
    bytes); the retry inside `serve` (its engine) sends all five: the job's bytes_out is exactly
    what the retry's instances carried, and the serving process's transcoding pool stays open."""
    _pacs, dest, server, config = rig
    dest.behaviour.refuse = True
    journal, job_id, first = first_move(rig, study_files)
    assert first.status == 0xC003, first.line()
    before = journal.get(job_id).row  # type: ignore[union-attr]
    assert (before["bytes_in"], before["bytes_out"]) == (0, 0)
    dest.behaviour.refuse = False
    engine = server.ctx.relay.engine  # type: ignore[union-attr]
    pool = engine.pools.get()
    result = retry_job(config, journal, job_id, server.ctx.archives, engine)
    assert (result.sent, result.outcome) == (5, "success"), result
    assert engine.pools.get() is pool  # not closed by the retry
    view = journal.get(job_id, all_instances=True)
    assert view is not None
    sent = sum(r["bytes"] for r in view.instances if r["state"] == "sent")
    assert sent > 0 and view.row["bytes_out"] == sent
    assert view.row["bytes_in"] > 0
    journal.close()


@pytest.mark.parametrize("killed", ["while resolving", "after the level, before the keys"])
def test_a_c_move_killed_while_its_request_was_resolved_is_resumed(
    rig: Rig, study_files: list[Path], killed: str
) -> None:
    """Issue 23: a C-MOVE killed while the exam view resolved its Identifier (nothing fetched,
    nothing sent, no keys recorded) is resolved again from the Identifier journalled at its start
    and completed by `serve`'s automatic resume; a job that got its keys keeps no Identifier."""
    from pydicom import Dataset

    from dicomproxy.relay.journal import RETRY_REQUESTED, RETRYING
    from dicomproxy.status import JobKind
    from testkit import wait_until

    _pacs, dest, server, config = rig
    watcher = Journal.for_config("", config.data_path)
    seen: list[Dataset] = []

    class Watching(AllVisible):
        def resolve_study_uids(self, **keys: Any) -> list[str]:
            request = watcher.request(watcher.recent(1)[0]["id"])
            seen.append(Dataset.from_json(request) if request else Dataset())
            return super().resolve_study_uids(**keys)

    assert server.ctx.relay is not None
    server.ctx.relay.resolver = Watching()
    journal, done_id, first = first_move(rig, study_files)  # an ordinary job first
    watcher.close()
    study = str(dcmread(study_files[0], stop_before_pixels=True).StudyInstanceUID)
    # while the view resolved it, its Identifier was in the journal; once its keys were, it is gone
    assert [(d.get("QueryRetrieveLevel"), d.get("StudyInstanceUID")) for d in seen] == [("STUDY", study)]
    assert first.completed == 5 and journal.request(done_id) is None
    assert journal.keys(done_id)
    dest.received.clear()
    identifier = scu.identifier(study_uids=[study])
    # what the relay's C-MOVE leaves when killed inside ExamView.resolve_studies
    job_id = journal.start(JobKind.MOVE, CLOUD, "127.0.0.1", "FAKEDEST", "", request=identifier.to_json())
    if killed != "while resolving":
        journal.update(job_id, level="STUDY", study_uids=[study])
    assert journal.mark_interrupted() == [job_id]
    row = journal.get(job_id).row  # type: ignore[union-attr]
    assert (row["archive"], journal.keys(job_id), row["expected"]) == ("", [], 0)
    assert server.retry_worker is not None
    assert server.retry_worker.resume_interrupted() == [job_id]  # as at serve's start
    wait_until(
        lambda: journal.get(job_id).row["outcome"] not in (RETRY_REQUESTED, RETRYING),  # type: ignore[union-attr]
        60,
        "the resume to end",
    )
    row = journal.get(job_id).row  # type: ignore[union-attr]
    assert (row["outcome"], row["level"], row["completed"], row["expected"]) == ("success", "STUDY", 5, 5)
    assert sorted(uid for uid, _ in dest.received) == sorted(sop_uids(study_files))
    assert row["archive"] == "pacs" and [k.study_uid for k in journal.keys(job_id)] == [study]
    assert journal.request(job_id) is None  # resolved: the Identifier is not kept
    journal.close()


def test_a_request_that_cannot_be_resolved_again_is_refused_plainly(
    make_config: Callable[..., Config],
) -> None:
    """The resolved-again request follows today's rules: without the exam view, or when its
    identifier no longer parses, the retry is refused with the reason (nothing sent)."""
    from pydicom import Dataset

    from dicomproxy.status import JobKind

    config = make_config(peers=[{"ae_title": "FAKEDEST", "host": "127.0.0.1", "port": 1}])
    journal = Journal.for_config("", config.data_path)
    bad = Dataset()
    bad.QueryRetrieveLevel = "PATIENT"  # no Patient ID
    job_id = journal.start(JobKind.MOVE, CLOUD, "127.0.0.1", "FAKEDEST", "", request=bad.to_json())
    journal.mark_interrupted()
    with pytest.raises(ValueError, match="resolving it again needs the exam view"):
        retry_job(config, journal, job_id)
    with pytest.raises(ValueError, match=r"cannot be resolved again: .*needs one Patient ID"):
        retry_job(config, journal, job_id, resolver=AllVisible())
    journal.close()


def test_a_retry_without_the_listener_lists_a_c_move_archive_by_c_find(
    rig: Rig, study_files: list[Path]
) -> None:
    """A job whose instance list was never journalled, retried by the CLI without `serve`'s
    clients (issue 23): listing needs only a C-FIND, so it is done even for a C-MOVE archive
    (with a client of the retry's own); the spooled instance is resent, and what must be fetched
    again is fetched by C-GET or, for a C-MOVE archive, reported as not found (no listener)."""
    pacs, dest, _server, config = rig
    uids = sop_uids(study_files)
    dest.behaviour.reject = {uids[1]: 0xA900}
    pacs.behaviour.abort_after = 3
    journal, job_id, first = first_move(rig, study_files)
    assert (first.completed, first.failed) == (2, 3), first.line()
    with journal.engine.begin() as conn:  # killed before its list was journalled
        conn.execute(text("DELETE FROM job_expected WHERE job_id = :j"), {"j": job_id})
    dest.behaviour.reject = {}
    pacs.behaviour.abort_after = None
    result = retry_job(config, journal, job_id)
    assert (result.unconfirmed, result.from_spool) == (3, 1), result
    assert journal.has_expected(job_id)
    received = sorted(uid for uid, _ in dest.received)
    if config.pacs.retrieve == "c-get":
        assert (result.sent, result.not_found, result.outcome) == (3, [], "success"), result
        assert received == sorted(uids)
    else:
        assert (result.sent, result.not_found, result.outcome) == (1, sorted(uids[3:]), "partial"), result
        assert "needs the proxy's listener" in result.error, result.error
        assert received == sorted(uids[:3])
    journal.close()


@pytest.mark.parametrize("before", ["refused", "one rejected"])
def test_a_retry_that_moves_nothing_keeps_the_jobs_byte_counts(
    rig: Rig, study_files: list[Path], before: str
) -> None:
    """The job's bytes_in/bytes_out after a retry are the first attempt's plus the retry's; a
    retry whose destination refuses the association moves nothing, so they stay exactly as the
    first attempt left them — none (the destination refused then too) or some (one instance
    rejected, four sent)."""
    _pacs, dest, _server, config = rig
    uids = sop_uids(study_files)
    if before == "refused":
        dest.behaviour.refuse = True
    else:
        dest.behaviour.reject = {uids[1]: 0xA900}
    journal, job_id, first = first_move(rig, study_files)
    assert first.completed == (0 if before == "refused" else 4), first.line()
    row = journal.get(job_id).row  # type: ignore[union-attr]
    moved = (row["bytes_in"], row["bytes_out"])
    assert moved == (0, 0) if before == "refused" else moved[0] > 0 and moved[1] > 0, moved
    dest.behaviour.refuse = True
    result = retry_job(config, journal, job_id)
    assert (result.sent, result.refetched, result.outcome) == (0, 0, row["outcome"]), result
    after = journal.get(job_id).row  # type: ignore[union-attr]
    assert (after["bytes_in"], after["bytes_out"]) == moved
    journal.close()


def test_a_retry_adds_its_bytes_out_to_the_first_attempts(rig: Rig, study_files: list[Path]) -> None:
    """The first attempt sent all five instances and the destination refused one; the retry
    resends that one from the spool (nothing fetched): bytes_in stays the first attempt's, and
    bytes_out grows by exactly what the retry's instance carried."""
    _pacs, dest, _server, config = rig
    uids = sop_uids(study_files)
    dest.behaviour.reject = {uids[1]: 0xA900}
    journal, job_id, first = first_move(rig, study_files)
    assert (first.completed, first.failed) == (4, 1), first.line()
    before = journal.get(job_id, all_instances=True)
    assert before is not None
    assert before.row["bytes_in"] > 0 and before.row["bytes_out"] > 0
    dest.behaviour.reject = {}
    result = retry_job(config, journal, job_id)
    assert (result.from_spool, result.refetched, result.sent, result.outcome) == (1, 0, 1, "success"), result
    after = journal.get(job_id, all_instances=True)
    assert after is not None
    known = {r["id"] for r in before.instances}
    (resent,) = [r for r in after.instances if r["id"] not in known]
    assert (resent["sop_instance_uid"], resent["state"]) == (uids[1], "sent") and resent["bytes"] > 0
    assert (after.row["bytes_in"], after.row["bytes_out"]) == (
        before.row["bytes_in"],
        before.row["bytes_out"] + resent["bytes"],
    )
    journal.close()


# --- a job served by two archives (issue 23) -------------------------------------------------------


class RoutedView:
    """Resolves the requested studies in the order asked, each with the Sysid that routes it."""

    def __init__(self, sysids: dict[str, str]) -> None:
        self.sysids = sysids

    def resolve_studies(self, *, study_uids: Sequence[str] = (), **_: Any) -> list[StudyRef]:
        return [StudyRef(uid, self.sysids[uid]) for uid in study_uids if uid in self.sysids]


@dataclass
class TwoArchives:
    """``uis`` (an ``[[archives]]`` entry, C-MOVE, Sysid UIS) serves study B (2 instances);
    ``[pacs]`` (C-GET, the catch-all) serves study A (the 5 of ``study_files``). The first move
    asks for B then A, so the job records the archives as ``uis,pacs``."""

    pacs: FakePacs
    uis: FakePacs
    dest: FakeDestination
    server: Server
    config: Config
    a_uids: list[str]
    b_uids: list[str]

    def first_move(self) -> tuple[Journal, int, scu.RetrieveSummary]:
        studies = [self.study(self.uis), self.study(self.pacs)]
        summary = scu.move(
            Remote("DICOMPROXY", "127.0.0.1", self.server.port),
            "FAKEDEST",
            scu.identifier(study_uids=studies),
            calling_ae=CLOUD,
            timeout=60,
        )
        journal = Journal.for_config("", self.config.data_path)
        job_id = journal.recent(1)[0]["id"]
        assert journal.get(job_id).row["archive"] == "uis,pacs"  # type: ignore[union-attr]
        return journal, job_id, summary

    @staticmethod
    def study(pacs: FakePacs) -> str:
        return str(pacs.instances[0].StudyInstanceUID)


@pytest.fixture(scope="module")
def other_study_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    spec = StudySpec("CT", accession="R0002", series=1, images_per_series=2, seed=18)
    return write_study(spec, tmp_path_factory.mktemp("recovery-other-study"))


@pytest.fixture
def two_archives(
    make_config: Callable[..., Config], study_files: list[Path], other_study_files: list[Path]
) -> Iterator[TwoArchives]:
    proxy_port = free_port()
    to_proxy = {"DICOMPROXY": Remote("DICOMPROXY", "127.0.0.1", proxy_port)}
    dest = FakeDestination().start()
    pacs = FakePacs(study_files, destinations=to_proxy).start()
    uis = FakePacs(other_study_files, ae_title="FAKEUIS", destinations=to_proxy).start()
    config = make_config(
        proxy={"port": proxy_port, "dimse_timeout": 5.0, "retries": 1, "retry_delay": 0.01},
        pacs={
            "ae_title": pacs.ae_title,
            "host": "127.0.0.1",
            "port": pacs.port,
            "retrieve": "c-get",
            "dimse_timeout": 30.0,
        },
        archives=[
            {
                "name": "uis",
                "ae_title": uis.ae_title,
                "host": "127.0.0.1",
                "port": uis.port,
                "retrieve": "c-move",
                "sysids": ["UIS"],
                "dimse_timeout": 30.0,
            }
        ],
        peers=[
            {"ae_title": CLOUD, "host": "127.0.0.1", "port": 1},
            {"ae_title": "FAKEDEST", "host": "127.0.0.1", "port": dest.port},
        ],
    )
    view = RoutedView({TwoArchives.study(pacs): "RIS", TwoArchives.study(uis): "UIS"})
    server = Server(config, build_context(config, view=view, pending_interval=0.1))
    server.start()
    yield TwoArchives(pacs, uis, dest, server, config, sop_uids(study_files), sop_uids(other_study_files))
    pacs.stop()
    uis.stop()
    server.stop(drain_timeout=2.0)
    dest.stop()


def test_a_two_archive_job_retried_without_the_listener_fetches_from_its_c_get_archive(
    two_archives: TwoArchives,
) -> None:
    """The destination refused the first attempt. Retried without `serve`'s clients, the job's
    C-MOVE archive (``uis``, recorded first) cannot send to us: its study is reported not found
    and why; the C-GET archive's study is fetched and sent all the same. Retried inside `serve`,
    the rest follows: each instance arrives once, each from its own archive."""
    t = two_archives
    t.dest.behaviour.refuse = True
    journal, job_id, first = t.first_move()
    assert first.status == 0xC003, first.line()
    t.dest.behaviour.refuse = False
    alone = retry_job(t.config, journal, job_id)
    assert (alone.unconfirmed, alone.refetched, alone.sent, alone.outcome) == (7, 5, 5, "partial"), alone
    assert alone.not_found == sorted(t.b_uids)
    assert "2 instance(s) not in the spool" in alone.error, alone.error
    assert "a C-MOVE from uis to us needs the proxy's listener" in alone.error, alone.error
    assert sorted(uid for uid, _ in t.dest.received) == sorted(t.a_uids)
    assert (sorted(t.pacs.sent), t.uis.sent) == (sorted(t.a_uids), [])

    served = retry_job(t.config, journal, job_id, t.server.ctx.archives)
    assert (served.unconfirmed, served.sent, served.outcome) == (2, 2, "success"), served
    assert sorted(uid for uid, _ in t.dest.received) == sorted(t.a_uids + t.b_uids)  # each once
    assert (sorted(t.pacs.sent), sorted(t.uis.sent)) == (sorted(t.a_uids), sorted(t.b_uids))
    row = journal.get(job_id).row  # type: ignore[union-attr]
    assert (row["outcome"], row["completed"], row["failed"]) == ("success", 7, 0)
    journal.close()


def test_a_two_archive_job_whose_list_was_never_journalled_is_listed_at_each_studys_archive(
    two_archives: TwoArchives,
) -> None:
    """Killed before its instance list was journalled: each routed key is listed again at the
    archive recorded with it (not at the first archive of the job), and all seven are sent."""
    t = two_archives
    t.dest.behaviour.refuse = True
    journal, job_id, _ = t.first_move()
    with journal.engine.begin() as conn:
        conn.execute(text("DELETE FROM job_expected WHERE job_id = :j"), {"j": job_id})
    t.dest.behaviour.refuse = False
    result = retry_job(t.config, journal, job_id, t.server.ctx.archives)
    assert (result.unconfirmed, result.sent, result.outcome) == (7, 7, "success"), result
    assert sorted(uid for uid, _ in t.dest.received) == sorted(t.a_uids + t.b_uids)
    row = journal.get(job_id).row  # type: ignore[union-attr]
    assert (row["outcome"], row["completed"], row["expected"]) == ("success", 7, 7)
    journal.close()


def test_a_two_archive_job_from_before_job_keys_is_fetched_from_the_first_archive_on_it(
    two_archives: TwoArchives,
) -> None:
    """A journal from before job_keys knows only the job's archive list (``uis,pacs``): every
    instance is asked of the first archive on it, ``uis``, which has only study B — A's are
    reported not found, and ``[pacs]`` is not asked."""
    t = two_archives
    t.dest.behaviour.refuse = True
    journal, job_id, _ = t.first_move()
    with journal.engine.begin() as conn:
        conn.execute(text("DELETE FROM job_keys WHERE job_id = :j"), {"j": job_id})
    t.dest.behaviour.refuse = False
    result = retry_job(t.config, journal, job_id, t.server.ctx.archives)
    assert (result.unconfirmed, result.sent, result.outcome) == (7, 2, "partial"), result
    assert result.not_found == sorted(t.a_uids)
    assert sorted(uid for uid, _ in t.dest.received) == sorted(t.b_uids)
    assert (t.pacs.sent, sorted(t.uis.sent)) == ([], sorted(t.b_uids))
    journal.close()


def test_a_serve_killed_mid_instance_leaves_no_partial_file_after_its_restart(
    study_files: list[Path], tmp_path: Path
) -> None:
    """A real ``dicomproxy serve`` SIGKILLed while an archive's C-STORE data set is half received
    (raw store receiver: a ``tmp*.dcm`` in ``<data>/incoming``): the restarted serve deletes that
    file before it listens (it was never answered, so never the journal's), one WARNING line."""
    import signal
    import sys
    from functools import partial

    from pynetdicom import AE
    from pynetdicom.dsutils import split_dataset  # type: ignore[attr-defined]

    from dicomproxy.transport.net import guard_requestor
    from dicomproxy.transport.raw import pdu, wire
    from dicomproxy.transport.raw import sender as fastsender
    from testkit import Process, wait_until
    from testkit.nodes import node_toml

    port, data = free_port(), tmp_path / "node"
    peers = [{"ae_title": CLOUD, "host": "127.0.0.1", "port": 1}]
    archive = Remote("ARCHIVE", "127.0.0.1", 1)
    toml = node_toml(tmp_path, "node", port, "", archive, peers, logging={"level": "INFO"})

    def serve(log: str) -> Process:
        proc = Process([sys.executable, "-m", "dicomproxy", "serve", "-c", str(toml)], tmp_path / log)
        wait_until(
            partial(lambda p: "listening as DICOMPROXY" in p.log_path.read_text(errors="replace"), proc),
            60,
            "serve",
        )
        return proc

    first = serve("first.log")
    source = dcmread(study_files[0])
    meta, offset = split_dataset(study_files[0])
    body = study_files[0].read_bytes()[offset:]
    ae = AE("ARCHIVE")  # the archive's AE title: served by the raw store receiver
    ae.add_requested_context(str(source.SOPClassUID), str(meta.TransferSyntaxUID))
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMPROXY")
    try:
        assert assoc.is_established
        guard_requestor(assoc)
        cx = int(assoc.accepted_contexts[0].context_id)
        command = wire.encode_command(
            fastsender.store_command(1, str(source.SOPClassUID), str(source.SOPInstanceUID), None)
        )

        def pdv(control: int, value: bytes) -> bytes:
            item = pdu.PDV_HEADER.pack(len(value) + 2, cx, control) + value
            return pdu.PDU_HEADER.pack(pdu.P_DATA_TF, len(item)) + item

        half = len(body) // 2
        assoc.dul.socket.socket.sendall(
            pdv(pdu.CONTROL_COMMAND | pdu.CONTROL_LAST, command) + pdv(0, body[:half])
        )
        incoming = data / "incoming"
        wait_until(lambda: list(incoming.glob("tmp*.dcm")), 10, "the data set's file")
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(10)
    finally:
        if assoc.is_established:
            assoc.abort()
        ae.shutdown()
        first.stop()
    assert len(list(incoming.glob("tmp*.dcm"))) == 1  # what the kill left
    second = serve("second.log")
    try:
        assert list(incoming.glob("tmp*.dcm")) == []
        assert (
            "deleted 1 partly received instance file(s) the last process left" in second.log_path.read_text()
        )
    finally:
        second.stop()
