"""Storage Commitment Push Model as SCU (issue 25 item 1; PS3.4 Annex J).

A C-MOVE through the proxy to a peer with ``storage_commitment = true``: the instances it stored
are asked to be committed (N-ACTION), the N-EVENT-REPORT — on the same association or on a new
one the peer opens to us — is journalled per instance. Peers: a real Orthanc (≥ 1.6, answers on
a new association to a declared modality) and a pynetdicom SCP that answers late, fails some
references or stays silent.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from dicomproxy.app import build_context
from dicomproxy.config import Config
from dicomproxy.relay.commitments import CommitmentLedger
from dicomproxy.relay.committer import Committer
from dicomproxy.relay.journal import InstanceRecord, Journal
from dicomproxy.server import Server
from dicomproxy.status import JobKind
from dicomproxy.transport import scu
from dicomproxy.transport.commitment import Report, parse_report
from dicomproxy.transport.net import Remote
from testkit import free_port, wait_until
from testkit.commitscp import CommitmentDestination
from testkit.fakepacs import FakePacs
from testkit.fakeview import AllVisible
from testkit.samples import StudySpec, write_study

CLOUD = "CLOUD"
SPEC = StudySpec("CT", accession="SC001", series=1, images_per_series=4, seed=451)


@pytest.fixture(scope="module")
def study_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_study(SPEC, tmp_path_factory.mktemp("commit-study"))


def _uids(files: list[Path]) -> list[str]:
    return sorted(str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files)


class Site:
    def __init__(
        self, make_config: Callable[..., Config], files: list[Path], dest_ae: str, dest_port: int, **peer: Any
    ) -> None:
        self.port = free_port()
        self.pacs = FakePacs(
            files, destinations={"DICOMPROXY": Remote("DICOMPROXY", "127.0.0.1", self.port)}
        ).start()
        self.config = make_config(
            proxy={"port": self.port, "dimse_timeout": 10.0, "retries": 1, "retry_delay": 0.01},
            pacs={
                "ae_title": self.pacs.ae_title,
                "host": "127.0.0.1",
                "port": self.pacs.port,
                "retrieve": "c-get",
            },
            peers=[
                {"ae_title": CLOUD, "host": "127.0.0.1", "port": 1},
                {
                    "ae_title": dest_ae,
                    "host": "127.0.0.1",
                    "port": dest_port,
                    "storage_commitment": True,
                    **peer,
                },
            ],
        )
        self.dest_ae = dest_ae
        self.server = self.start()

    def start(self) -> Server:
        server = Server(self.config, build_context(self.config, view=AllVisible(), pending_interval=0.1))
        server.start()
        return server

    def move(self, files: list[Path]) -> int:
        study = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        summary = scu.move(
            Remote("DICOMPROXY", "127.0.0.1", self.port),
            self.dest_ae,
            scu.identifier(study_uids=[study]),
            calling_ae=CLOUD,
            timeout=60,
        )
        assert summary.completed == len(files), summary.line()
        journal = Journal.for_config("", self.config.data_path)
        job_id = int(journal.recent(1)[0]["id"])
        journal.close()
        return job_id

    def ledger(self) -> CommitmentLedger:
        assert self.server.ctx.commitments is not None
        return self.server.ctx.commitments

    def stop(self) -> None:
        self.server.stop(drain_timeout=0.5)
        self.pacs.stop()


@pytest.fixture
def site(
    make_config: Callable[..., Config], study_files: list[Path]
) -> Iterator[Callable[..., tuple[Site, CommitmentDestination]]]:
    made: list[tuple[Site, CommitmentDestination]] = []

    def make(mode: str, **peer: Any) -> tuple[Site, CommitmentDestination]:
        dest = CommitmentDestination(mode=mode)
        site = Site(make_config, study_files, dest.ae_title, dest.port, **peer)
        dest.reply_to = Remote("DICOMPROXY", "127.0.0.1", site.port)
        dest.start()
        made.append((site, dest))
        return site, dest

    yield make
    for s, d in made:
        s.stop()
        d.stop()


@pytest.mark.parametrize("mode", ["same", "new"])
def test_stored_instances_are_committed_on_either_association(
    site: Callable[..., tuple[Site, CommitmentDestination]], study_files: list[Path], mode: str
) -> None:
    s, dest = site(mode)
    job_id = s.move(study_files)
    wait_until(lambda: s.ledger().counts(job_id) == {"committed": 4}, 30, "all four committed")
    ((_uid, asked),) = dest.requests  # one N-ACTION naming exactly what was stored
    assert sorted(asked) == _uids(study_files) == sorted(u for u, _ in dest.received)
    # the SCP records the N-EVENT-REPORT-RSP's status after we answered it (the ledger first)
    wait_until(lambda: dest.report_statuses != [], 10, "the report's response at the SCP")
    assert dest.report_statuses == [0]


def test_failed_references_are_sent_again_and_committed(
    site: Callable[..., tuple[Site, CommitmentDestination]], study_files: list[Path]
) -> None:
    """Two references fail once (Failure Reason 0x0110): the job is retried by `serve`, which
    sends exactly those two again; they are committed in a second transaction."""
    from dicomproxy import events
    from dicomproxy.console.metrics import Metrics

    s, dest = site("new")
    metrics = Metrics(s.config, lambda: 0, lambda: 0, lambda: 0, commitments=s.ledger())
    events.subscribe(metrics)
    uids = _uids(study_files)
    dest.fail = {uids[1], uids[2]}
    try:
        job_id = s.move(study_files)
        wait_until(lambda: s.ledger().counts(job_id) == {"committed": 4}, 60, "committed after the resend")
        assert events.flush()
    finally:
        events.unsubscribe(metrics)
    text = metrics.exposition().decode()
    dest_label = f'destination="{dest.ae_title}"'
    assert f'dicomproxy_commitment_instances_total{{{dest_label},result="committed"}} 4.0' in text
    assert f'dicomproxy_commitment_instances_total{{{dest_label},result="failed"}} 2.0' in text
    assert f'dicomproxy_commitment_instances_total{{{dest_label},result="unanswered"}} 0.0' in text
    assert f"dicomproxy_commitment_pending{{{dest_label}}} 0.0" in text
    assert sorted(u for u, _ in dest.received) == sorted([*uids, uids[1], uids[2]])  # those two twice
    (first, first_refs), (second, second_refs) = dest.requests
    assert sorted(first_refs) == uids and sorted(second_refs) == [uids[1], uids[2]] and first != second
    journal = Journal.for_config("", s.config.data_path)
    assert journal.get(job_id).row["outcome"] == "success"  # type: ignore[union-attr]
    journal.close()


def test_references_that_keep_failing_stay_failed_after_the_attempts(
    site: Callable[..., tuple[Site, CommitmentDestination]], study_files: list[Path]
) -> None:
    s, dest = site("new", commit_attempts=2)
    uids = _uids(study_files)
    dest.fail, dest.fail_always = {uids[0]}, True
    job_id = s.move(study_files)
    journal = Journal.for_config("", s.config.data_path)

    def settled() -> bool:  # the second report answered, no retry under way, nothing left to ask
        busy = journal.get(job_id).row["outcome"] in ("retry-requested", "retrying", "running")  # type: ignore[union-attr]
        return len(dest.report_statuses) == 2 and not busy and s.ledger().open_transactions(job_id) == 0

    wait_until(settled, 60, "two rounds")
    assert s.ledger().states(job_id) == {
        uids[0]: "failed",
        uids[1]: "committed",
        uids[2]: "committed",
        uids[3]: "committed",
    }
    assert [u for u, _ in dest.received].count(uids[0]) == 2  # sent, then sent once more
    assert [refs for _, refs in dest.requests] == [uids, [uids[0]]]
    assert [r["sop_instance_uid"] for r in journal.unconfirmed(job_id)] == [
        uids[0]
    ]  # `jobs retry` would send it
    journal.close()


def test_a_silent_peer_is_asked_again_then_its_instances_are_unanswered(
    site: Callable[..., tuple[Site, CommitmentDestination]], study_files: list[Path]
) -> None:
    from dicomproxy.console.metrics import Metrics

    s, dest = site("silent", commit_timeout=0.3, commit_attempts=2)
    metrics = Metrics(s.config, lambda: 0, lambda: 0, lambda: 0, commitments=s.ledger())
    job_id = s.move(study_files)
    wait_until(lambda: len(dest.requests) == 1, 30, "the first request")
    assert (
        f'dicomproxy_commitment_pending{{destination="{dest.ae_title}"}} 4.0' in metrics.exposition().decode()
    )
    from dicomproxy import events

    events.subscribe(metrics)
    try:
        wait_until(lambda: s.ledger().counts(job_id) == {"unanswered": 4}, 30, "given up after two requests")
        assert events.flush()
    finally:
        events.unsubscribe(metrics)
    text = metrics.exposition().decode()
    for result, n in (("committed", 0), ("failed", 0), ("unanswered", 4)):
        assert (
            f'dicomproxy_commitment_instances_total{{destination="{dest.ae_title}",result="{result}"}} {n}.0'
            in text
        )
    assert (
        len(dest.requests) == 2 and dest.requests[0] == dest.requests[1]
    )  # the same transaction, asked again


def test_a_restart_between_n_action_and_report_asks_again(
    site: Callable[..., tuple[Site, CommitmentDestination]], study_files: list[Path]
) -> None:
    """The proxy goes down after its N-ACTION, before any report: the transaction is in the
    journal, and the next start asks again (the same Transaction UID) and records the answer."""
    s, dest = site("silent", commit_timeout=0.5, commit_attempts=5)
    job_id = s.move(study_files)
    wait_until(lambda: len(dest.requests) == 1, 30, "the first N-ACTION")
    s.server.stop(drain_timeout=0.5)
    dest.mode = "new"
    s.server = s.start()
    wait_until(lambda: s.ledger().counts(job_id) == {"committed": 4}, 30, "committed after the restart")
    assert len({uid for uid, _ in dest.requests}) == 1 and len(dest.requests) >= 2


def test_a_report_naming_an_unknown_transaction_is_refused(
    site: Callable[..., tuple[Site, CommitmentDestination]],
) -> None:
    s, _dest = site("new")
    assert s.ledger().answer(Report("2.25.1", frozenset({"1.2.3"}))) is False


def test_a_report_from_the_peer_s_ae_title_on_another_host_is_refused(
    make_config: Callable[..., Config], study_files: list[Path]
) -> None:
    """The association a peer opens for its N-EVENT-REPORT is checked like any other: the peer's
    AE title calling from a host that is not its configured one is rejected, and the transaction
    stays pending (asked again later, never taken as answered)."""
    dest = CommitmentDestination(mode="new")
    s = Site(make_config, study_files, dest.ae_title, 1, host="127.0.0.2")  # N-ACTIONs: refused
    try:
        journal = s.server.ctx.journal
        job = journal.start(JobKind.MOVE, CLOUD, "", dest.ae_title, "pacs")
        journal.add_instances(job, [InstanceRecord("2.25.99", "sent", "1.2.840.10008.5.1.4.1.1.2")])
        (tx,) = s.ledger().job_ended(job)
        dest.reply_to = Remote("DICOMPROXY", "127.0.0.1", s.port)
        dest._report(None, tx, [("1.2.840.10008.5.1.4.1.1.2", "2.25.99")])  # from 127.0.0.1
        assert dest.report_statuses == [] and s.ledger().counts(job) == {"pending": 1}
    finally:
        s.stop()
        dest.ae.shutdown()


def test_parse_report() -> None:
    from pydicom.dataset import Dataset

    assert parse_report(3, Dataset()) == 0x0113
    assert parse_report(1, Dataset()) == 0x0115
    ds = Dataset()
    ds.TransactionUID = "2.25.9"
    ok, bad = Dataset(), Dataset()
    ok.ReferencedSOPClassUID, ok.ReferencedSOPInstanceUID = "1.2", "1.1"
    bad.ReferencedSOPClassUID, bad.ReferencedSOPInstanceUID, bad.FailureReason = "1.2", "1.3", 0x0112
    ds.ReferencedSOPSequence = [ok]
    ds.FailedSOPSequence = [bad]
    assert parse_report(2, ds) == Report("2.25.9", frozenset({"1.1"}), {"1.3": 0x0112})


@pytest.mark.orthanc
def test_orthanc_commits_what_it_stored(
    make_config: Callable[..., Config], study_files: list[Path], tmp_path: Path
) -> None:
    """A real Orthanc as the cloud (Storage Commitment SCP since 1.6): it answers on a new
    association to the proxy, declared as one of its modalities."""
    from testkit.orthanc import Orthanc
    from tests.conftest import _need

    _need("Orthanc")
    cloud = Orthanc(tmp_path / "cloud").start()
    s: Site | None = None
    try:
        s = Site(make_config, study_files, cloud.remote.ae_title, cloud.dicom_port)
        cloud.add_modality("proxy", Remote("DICOMPROXY", "127.0.0.1", s.port))
        job_id = s.move(study_files)
        wait_until(
            lambda: s is not None and s.ledger().counts(job_id) == {"committed": 4}, 60, "Orthanc's report"
        )
        assert cloud.instance_count() == 4
    finally:
        if s is not None:
            s.stop()
        cloud.stop()


def test_jobs_show_lists_the_commitment(
    site: Callable[..., tuple[Site, CommitmentDestination]], study_files: list[Path], tmp_path: Path
) -> None:
    from click.testing import CliRunner

    from dicomproxy.cli import cli

    s, dest = site("new")
    uids = _uids(study_files)
    dest.fail = {uids[3]}
    job_id = s.move(study_files)
    wait_until(lambda: s.ledger().counts(job_id) == {"committed": 3, "failed": 1}, 30, "the report")
    toml = tmp_path / "jobs.toml"
    toml.write_text(
        f'[proxy]\ndata_dir = "{s.config.data_path}"\n[hospital]\nid = "1"\n'
        f'[view]\nurl = "sqlite:///{tmp_path}/v.db"\n[pacs]\nae_title = "P"\nhost = "127.0.0.1"\nport = 1\n'
        f'[[peers]]\nae_title = "{dest.ae_title}"\nhost = "127.0.0.1"\nport = {dest.port}\n'
        "storage_commitment = true\n"
    )
    out = CliRunner().invoke(cli, ["jobs", "-c", str(toml), "show", str(job_id)])
    assert out.exit_code == 0, out.output
    assert "commitment   committed=3 failed=1" in out.output
    assert f"  failed     {uids[3]}" in out.output and uids[0] not in out.output.split("commitment")[1]


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("storage_commitment", "yes", "must be true or false"),
        ("commit_timeout", 0, "must be >= 0.1"),
        ("commit_attempts", 0, "must be between 1 and 20"),
    ],
)
def test_commitment_config_errors_name_the_key(tmp_path: Path, key: str, value: Any, message: str) -> None:
    from dicomproxy.config import parse_config
    from dicomproxy.errors import ConfigError
    from tests.conftest import base_config_dict

    raw = base_config_dict(
        tmp_path, "sqlite:///v.db", peers=[{"ae_title": "CLOUD", "host": "127.0.0.1", "port": 1, key: value}]
    )
    with pytest.raises(ConfigError, match=f"{key}.*{message}|{message}.*{key}") as err:
        parse_config(raw, str(tmp_path / "proxy.toml"))
    assert "proxy.toml" in str(err.value)


def test_commitment_is_off_by_default(tmp_path: Path) -> None:
    from dicomproxy.config import parse_config
    from tests.conftest import base_config_dict

    raw = base_config_dict(
        tmp_path, "sqlite:///v.db", peers=[{"ae_title": "CLOUD", "host": "127.0.0.1", "port": 1}]
    )
    (peer,) = parse_config(raw, str(tmp_path / "proxy.toml")).peers
    assert (peer.storage_commitment, peer.commit_timeout, peer.commit_attempts) == (False, 600.0, 3)


def test_check_config_says_whether_the_peer_negotiates_commitment(make_config: Callable[..., Config]) -> None:
    from dicomproxy.checks import run_config_checks
    from testkit.fakepacs import FakeDestination

    committing, plain = CommitmentDestination().start(), FakeDestination("PLAIN").start()
    try:
        config = make_config(
            peers=[
                {
                    "ae_title": committing.ae_title,
                    "host": "127.0.0.1",
                    "port": committing.port,
                    "storage_commitment": True,
                },
                {"ae_title": "PLAIN", "host": "127.0.0.1", "port": plain.port, "storage_commitment": True},
                {"ae_title": "OTHER", "host": "127.0.0.1", "port": 1},
            ]
        )
        got = {
            r.name: (r.ok, r.detail)
            for r in run_config_checks(config, timeout=5)
            if r.name.startswith("peer ")
        }
    finally:
        committing.stop()
        plain.stop()
    assert got == {
        "peer COMMITDEST storage commitment": (True, "Storage Commitment Push Model accepted"),
        "peer PLAIN storage commitment": (
            False,
            "Storage Commitment Push Model (1.2.840.10008.1.20.1) not accepted",
        ),
    }


@pytest.mark.slow
@pytest.mark.orthanc
def test_serve_killed_between_n_action_and_report_asks_again_after_restart(
    orthanc: Any, tmp_path: Path
) -> None:
    """`serve` (a real process) SIGKILLed after its N-ACTION, before any report: the transaction
    is in the journal; the restarted `serve` asks again with the same Transaction UID and records
    the report (Orthanc is the PACS, C-GET upstream)."""
    import sys

    from dicomproxy.config import load_config
    from testkit import Process, wait_for_echo
    from testkit.orthancrig import proxy_site
    from testkit.samples import Patient

    spec = StudySpec(
        "CT", Patient(patient_id="P25K", name="吴刚"), "K25K", series=1, images_per_series=3, seed=461
    )
    dest = CommitmentDestination(mode="silent").start()
    procs: list[Process] = []
    try:
        site = proxy_site(tmp_path, orthanc, spec, "c-get", {CLOUD: 1, dest.ae_title: dest.port})
        block = f'ae_title = "{dest.ae_title}"\nhost = "127.0.0.1"\nport = {dest.port}\n'
        text = site.toml.read_text()
        assert block in text
        site.toml.write_text(text.replace(block, block + "storage_commitment = true\ncommit_timeout = 1\n"))
        dest.reply_to = site.remote

        def serve(name: str) -> Process:
            proc = Process(
                [sys.executable, "-m", "dicomproxy", "serve", "-c", str(site.toml)], tmp_path / f"{name}.log"
            )
            procs.append(proc)
            wait_for_echo(site.remote, 30, calling=CLOUD, proc=proc.proc)
            return proc

        first = serve("first")
        summary = scu.move(
            site.remote,
            dest.ae_title,
            scu.identifier(study_uids=[spec.study_uid]),
            calling_ae=CLOUD,
            timeout=60,
        )
        assert summary.completed == 3, summary.line()
        wait_until(lambda: len(dest.requests) == 1, 30, "the N-ACTION")
        first.kill()
        first.stop()
        dest.mode = "new"
        serve("second")
        journal = Journal.for_config("", tmp_path / "var")
        try:
            ledger = CommitmentLedger(load_config(site.toml), journal)
            job_id = int(journal.recent(1)[0]["id"])
            wait_until(lambda: ledger.counts(job_id) == {"committed": 3}, 60, "committed after the restart")
        finally:
            journal.close()
        uids = {uid for uid, _ in dest.requests}
        assert len(uids) == 1 and len(dest.requests) >= 2  # the same transaction, asked again
        assert sorted(dest.requests[-1][1]) == sorted(site.expected)
    finally:
        for proc in procs:
            proc.stop()
        dest.stop()


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[tuple[CommitmentLedger, Journal]]:
    """A ledger on a real SQLite journal; CLOUD commits, OTHER does not."""
    from dicomproxy.config import parse_config
    from tests.conftest import base_config_dict

    config = parse_config(
        base_config_dict(
            tmp_path,
            "sqlite:///v.db",
            peers=[
                {"ae_title": "CLOUD", "host": "127.0.0.1", "port": 1, "storage_commitment": True},
                {"ae_title": "OTHER", "host": "127.0.0.1", "port": 1},
            ],
        ),
        str(tmp_path / "proxy.toml"),
    )
    journal = Journal(f"sqlite:///{tmp_path / 'journal.db'}", "test")
    yield CommitmentLedger(config, journal), journal
    journal.close()


def _stored(journal: Journal, kind: str, destination: str, n: int) -> int:

    job = journal.start(JobKind(kind), "CLOUD", "", destination, "pacs")
    journal.add_instances(job, [InstanceRecord(f"2.25.{job}.{i}", "sent", "1.2.3") for i in range(n)])
    return job


def test_which_jobs_are_asked_to_commit(ledger: tuple[CommitmentLedger, Journal]) -> None:
    """C-MOVE and push jobs to a committing peer; never a C-GET (its destination is the
    requester), nor a peer without ``storage_commitment``."""
    led, journal = ledger
    assert len(led.job_ended(_stored(journal, "move", "CLOUD", 2))) == 1
    assert len(led.job_ended(_stored(journal, "push", "CLOUD", 2))) == 1
    assert led.job_ended(_stored(journal, "get", "CLOUD", 2)) == []
    assert led.job_ended(_stored(journal, "move", "OTHER", 2)) == []
    assert led.destinations() == ["CLOUD"]


def test_a_report_names_its_counts_and_unnamed_references_fail_with_0110(
    ledger: tuple[CommitmentLedger, Journal], caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from sqlalchemy import select

    from dicomproxy.relay.journal import commit_refs

    led, journal = ledger
    job = _stored(journal, "push", "CLOUD", 4)
    (tx,) = led.job_ended(job)
    uids = [f"2.25.{job}.{i}" for i in range(4)]
    caplog.clear()  # job_ended's "to be committed" line is captured too when an earlier test left INFO on
    with caplog.at_level(logging.INFO, logger="dicomproxy.commitment"):
        assert led.answer(Report(tx, frozenset(uids[:2]), {uids[2]: 0x0112}))  # uids[3] not named
    (line,) = [r for r in caplog.records if "committed" in r.getMessage()]
    assert (line.levelno, line.getMessage()) == (logging.WARNING, f"commitment {tx}: 2 committed, 2 failed")
    with journal.engine.connect() as conn:
        reasons = dict(conn.execute(select(commit_refs.c.sop_instance_uid, commit_refs.c.reason)).all())
    assert reasons == {uids[0]: None, uids[1]: None, uids[2]: 0x0112, uids[3]: 0x0110}
    job2 = _stored(journal, "push", "CLOUD", 1)
    (tx2,) = led.job_ended(job2)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="dicomproxy.commitment"):
        assert led.answer(Report(tx2, frozenset({f"2.25.{job2}.0"})))
    (line,) = [r for r in caplog.records if "committed" in r.getMessage()]
    assert (line.levelno, line.getMessage()) == (logging.INFO, f"commitment {tx2}: 1 committed, 0 failed")


def test_the_summary_counts_the_last_day_per_destination(ledger: tuple[CommitmentLedger, Journal]) -> None:
    import datetime as dt

    from sqlalchemy import update

    from dicomproxy.relay.journal import commit_requests

    led, journal = ledger
    job = _stored(journal, "move", "CLOUD", 3)
    (tx,) = led.job_ended(job)
    assert led.summary() == [
        {"destination": "CLOUD", "pending": 3, "committed": 0, "failed": 0, "unanswered": 0}
    ]
    led.give_up(tx)
    now = dt.datetime(2026, 12, 6, 12, 0)
    with journal.engine.begin() as conn:  # made exactly 24 h before `now`: still in
        conn.execute(update(commit_requests).values(created=now - dt.timedelta(hours=24)))
    assert led.summary(now=now) == [
        {"destination": "CLOUD", "pending": 0, "committed": 0, "failed": 0, "unanswered": 3}
    ]
    assert led.summary(now=now + dt.timedelta(microseconds=1))[0]["unanswered"] == 0


def test_open_transactions_and_pending_are_per_job_and_destination(
    ledger: tuple[CommitmentLedger, Journal],
) -> None:
    led, journal = ledger
    one, two = _stored(journal, "move", "CLOUD", 2), _stored(journal, "push", "CLOUD", 3)
    (tx1,) = led.job_ended(one)
    led.job_ended(two)
    assert (led.open_transactions(one), led.open_transactions(two), led.pending()) == (1, 1, {"CLOUD": 5})
    assert led.answer(Report(tx1, frozenset({f"2.25.{one}.0", f"2.25.{one}.1"})))
    assert (led.open_transactions(one), led.open_transactions(two), led.pending()) == (0, 1, {"CLOUD": 3})
    assert led.counts(one) == {"committed": 2} and led.counts(two) == {"pending": 3}


def test_transactions_hold_at_most_500_references_and_are_due_at_once(
    ledger: tuple[CommitmentLedger, Journal], caplog: pytest.LogCaptureFixture
) -> None:
    import datetime as dt
    import logging

    from sqlalchemy import select

    from dicomproxy.relay.journal import commit_requests

    led, journal = ledger
    job = _stored(journal, "move", "CLOUD", 1001)
    with caplog.at_level(logging.INFO, logger="dicomproxy.commitment"):
        made = led.job_ended(job)
    assert f"job {job}: 1001 instance(s) to be committed by CLOUD" in caplog.text
    assert sorted(len(t.refs) for t in led.due() if t.transaction_uid in made) == [1, 500, 500]
    with journal.engine.connect() as conn:
        due = conn.execute(select(commit_requests.c.due)).scalars().first()
    assert [t.transaction_uid for t in led.due(now=due)]  # due exactly now: due
    assert led.due(now=due - dt.timedelta(microseconds=1)) == []
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="dicomproxy.commitment"):
        assert led.job_ended(job) == []  # everything asked already: nothing new, no line
    assert "to be committed" not in caplog.text


def test_a_corrected_copies_job_is_asked_for_the_uids_it_sent_and_the_report_maps_back(
    ledger: tuple[CommitmentLedger, Journal],
) -> None:
    """A job that sent corrected copies (IOCM, ``job_copies``): the N-ACTION references the copies'
    UIDs; the report, naming those, is recorded against the journal's (PACS) UIDs — one committed,
    one failed with its reason. Another job's transaction keeps its UIDs."""
    from dicomproxy.identity.corrections import corrected_uid

    led, journal = ledger
    copies, plain = _stored(journal, "push", "CLOUD", 2), _stored(journal, "push", "CLOUD", 1)
    journal.record_copies(copies, "fp")
    (tx,) = led.job_ended(copies)
    led.job_ended(plain)
    due = {t.job_id: t for t in led.due(dt.datetime.now() + dt.timedelta(days=1))}
    olds = [f"2.25.{copies}.{i}" for i in range(2)]
    sent = [corrected_uid(u, "fp") for u in olds]
    assert [r.sop_instance_uid for r in due[copies].refs] == [
        dict(zip(olds, sent, strict=True))[u] for u in sorted(olds)
    ]
    assert [r.sop_instance_uid for r in due[plain].refs] == [f"2.25.{plain}.0"]
    assert led.answer(Report(tx, frozenset({sent[0]}), {sent[1]: 0x0112}))
    assert led.states_of([copies]) == {olds[0]: "committed", olds[1]: "failed"}
    with journal.engine.connect() as conn:
        from sqlalchemy import select

        from dicomproxy.relay.journal import commit_refs

        reasons = dict(conn.execute(select(commit_refs.c.sop_instance_uid, commit_refs.c.reason)).all())
    assert reasons[olds[1]] == 0x0112 and reasons[olds[0]] is None


def test_giving_up_ends_that_transaction_only(ledger: tuple[CommitmentLedger, Journal]) -> None:
    led, journal = ledger
    one, two = _stored(journal, "move", "CLOUD", 1), _stored(journal, "move", "CLOUD", 1)
    (tx1,) = led.job_ended(one)
    led.job_ended(two)
    led.give_up(tx1)
    assert (led.open_transactions(one), led.open_transactions(two)) == (0, 1)
    assert (led.counts(one), led.counts(two)) == ({"unanswered": 1}, {"pending": 1})


def test_the_summary_covers_a_day_by_default(ledger: tuple[CommitmentLedger, Journal]) -> None:
    import datetime as dt

    from sqlalchemy import update

    from dicomproxy.relay.journal import commit_requests

    led, journal = ledger
    recent, old = _stored(journal, "move", "CLOUD", 2), _stored(journal, "move", "CLOUD", 3)
    led.job_ended(recent)
    led.job_ended(old)
    now = dt.datetime(2026, 12, 6, 12, 0)
    with journal.engine.begin() as conn:
        for job, hours in ((recent, 23.5), (old, 24.5)):
            conn.execute(
                update(commit_requests)
                .where(commit_requests.c.job_id == job)
                .values(created=now - dt.timedelta(hours=hours))
            )
    assert led.summary(now=now)[0]["pending"] == 2  # the one 23.5 h old, not the one 24.5 h old


def test_the_committer_backs_off_doubling_and_numbers_its_attempts(
    ledger: tuple[CommitmentLedger, Journal],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each attempt is claimed with its next due time, ``commit_timeout × 2^attempts`` later (the
    peer here refuses the connection: the attempt is used up all the same); the INFO line numbers
    the attempt; the thread polls every second and is a daemon."""
    import datetime as dt
    import logging

    from sqlalchemy import select

    from dicomproxy.relay import committer as committer_module
    from dicomproxy.relay.journal import commit_requests

    led, journal = ledger
    (tx,) = led.job_ended(_stored(journal, "move", "CLOUD", 2))
    committer = Committer(led.config, led)
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) + dt.timedelta(seconds=1)  # it is due

    def due_of() -> dt.datetime:
        with journal.engine.connect() as conn:
            return conn.execute(
                select(commit_requests.c.due).where(commit_requests.c.transaction_uid == tx)
            ).scalar_one()

    with caplog.at_level(logging.WARNING, logger="dicomproxy.commitment"):
        assert committer.run_due(now=now) == 0  # asked, refused: not sent
    assert "not asked" in caplog.text and due_of() == now + dt.timedelta(seconds=600)
    later = due_of()
    assert committer.run_due(now=later) == 0
    assert due_of() == later + dt.timedelta(seconds=1200)  # doubled
    # an attempt that reaches the peer is logged with its number
    monkeypatch.setattr(committer_module, "request_commitment", lambda *a, **k: 0)
    with caplog.at_level(logging.INFO, logger="dicomproxy.commitment"):
        assert committer.run_due(now=due_of()) == 1
    assert (
        f"commitment {tx} (job" in caplog.text and "2 instance(s) asked of CLOUD (attempt 3)" in caplog.text
    )
    waits: list[float] = []
    committer._stop.wait = lambda timeout=None: waits.append(timeout) or True  # type: ignore[method-assign]
    committer.start()
    assert committer._thread is not None and committer._thread.daemon
    committer._thread.join(10)
    assert waits == [1.0]  # one round, then the (stubbed) stop


def test_stop_waits_for_the_round_in_progress(ledger: tuple[CommitmentLedger, Journal]) -> None:
    """``stop`` ends the thread after the round it is in (a shutdown never leaves an N-ACTION half
    journalled); before ``start`` it has nothing to wait for."""
    import time

    led, _ = ledger
    Committer(led.config, led).stop()  # never started
    committer = Committer(led.config, led)
    entered = threading.Event()

    def round_(now: dt.datetime | None = None) -> int:
        entered.set()
        time.sleep(0.2)
        return 0

    committer.run_due = round_  # type: ignore[method-assign]
    committer.start()
    assert entered.wait(10)
    committer.stop()
    assert committer._thread is not None and not committer._thread.is_alive()


def test_a_journal_error_costs_one_round_not_the_thread(
    ledger: tuple[CommitmentLedger, Journal], caplog: pytest.LogCaptureFixture
) -> None:
    """A round that fails (the journal is down) is logged with its traceback; the next round runs."""
    import logging

    led, _ = ledger
    committer = Committer(led.config, led, poll=0.01)
    rounds: list[int] = []

    def round_(now: dt.datetime | None = None) -> int:
        rounds.append(1)
        if len(rounds) == 1:
            raise OSError("journal down")
        return 0

    committer.run_due = round_  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, logger="dicomproxy.commitment"):
        committer.start()
        try:
            wait_until(lambda: len(rounds) >= 2, 10, "a second round")
        finally:
            committer.stop()
    assert "storage commitment: journal error" in caplog.text and "OSError: journal down" in caplog.text


def _peers_config(tmp_path: Path, peers: list[dict[str, Any]]) -> Config:
    from dicomproxy.config import parse_config
    from tests.conftest import base_config_dict

    doc = base_config_dict(tmp_path, "sqlite:///v.db", peers=peers)
    return parse_config(doc, str(tmp_path / "proxy.toml"))


@pytest.mark.parametrize(
    "peers",
    [
        [{"ae_title": "CLOUD", "host": "127.0.0.1", "port": 1}],  # storage_commitment turned off
        [{"ae_title": "OTHER", "host": "127.0.0.1", "port": 1}],  # CLOUD no longer a peer
    ],
    ids=["commitment-off", "peer-removed"],
)
def test_a_transaction_whose_peer_no_longer_commits_is_given_up_not_sent(
    ledger: tuple[CommitmentLedger, Journal],
    tmp_path: Path,
    peers: list[dict[str, Any]],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A reload took ``storage_commitment`` away from the destination, or the peer itself: its
    open transaction is not sent (nor counted as sent) but given up at once — its references
    ``unanswered``, one WARNING naming the transaction, the job, the destination and the counts."""
    import logging

    from dicomproxy.relay import committer as committer_module

    led, journal = ledger
    job = _stored(journal, "move", "CLOUD", 2)
    (tx,) = led.job_ended(job)
    asked: list[object] = []
    monkeypatch.setattr(committer_module, "request_commitment", lambda *a, **k: asked.append(a) or 0)
    committer = Committer(_peers_config(tmp_path, peers), led)
    with caplog.at_level(logging.WARNING, logger="dicomproxy.commitment"):
        assert committer.run_due(now=dt.datetime.now() + dt.timedelta(days=1)) == 0
    assert asked == [] and led.counts(job) == {"unanswered": 2} and led.open_transactions(job) == 0
    assert (
        f"commitment {tx} (job {job}): no report from CLOUD after 0 request(s): 2 instance(s) unanswered"
        in caplog.text
    )


def test_a_request_the_peer_refuses_is_not_counted_and_asked_again_later(
    ledger: tuple[CommitmentLedger, Journal],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An N-ACTION-RSP with a failure status (here 0x0110): not sent, one WARNING with the status
    and the wait, and the attempt is used (the transaction is due again after the back-off)."""
    import logging

    from dicomproxy.relay import committer as committer_module

    led, journal = ledger
    job = _stored(journal, "move", "CLOUD", 1)
    (tx,) = led.job_ended(job)
    monkeypatch.setattr(committer_module, "request_commitment", lambda *a, **k: 0x0110)
    committer = Committer(led.config, led)
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) + dt.timedelta(seconds=1)
    with caplog.at_level(logging.WARNING, logger="dicomproxy.commitment"):
        assert committer.run_due(now=now) == 0
    assert f"commitment {tx} (job {job}): CLOUD refused the request (0x0110); again in 600 s" in caplog.text
    assert [t.attempts for t in led.due(now + dt.timedelta(seconds=600))] == [1]
    assert led.due(now + dt.timedelta(seconds=599)) == [] and led.counts(job) == {"pending": 1}


@pytest.mark.postgresql
def test_two_nodes_on_one_postgresql_journal_send_each_attempt_once(
    pg_journal: str, make_config: Callable[..., Config]
) -> None:
    """Two serving processes share a PostgreSQL journal; both read the same due transactions and
    both try to send them at the same moment: the claim (``UPDATE … WHERE attempts = n``) lets one
    node send each attempt, the other sends nothing — every transaction is asked exactly
    ``commit_attempts`` times in all, then given up once."""
    from dicomproxy.relay.committer import Committer
    from dicomproxy.relay.journal import InstanceRecord
    from dicomproxy.status import JobKind

    dest = CommitmentDestination(mode="silent").start()
    config = make_config(
        peers=[
            {
                "ae_title": dest.ae_title,
                "host": "127.0.0.1",
                "port": dest.port,
                "storage_commitment": True,
                "commit_timeout": 0.1,
                "commit_attempts": 2,
            }
        ]
    )
    nodes = [
        Journal(pg_journal, "host-a:/var/lib/dicomproxy"),
        Journal(pg_journal, "host-b:/var/lib/dicomproxy"),
    ]
    ledgers = [CommitmentLedger(config, j) for j in nodes]
    committers = [Committer(config, led) for led in ledgers]
    try:
        made = []
        for n in range(3):
            job = nodes[0].start(JobKind.MOVE, "jobserver", "", dest.ae_title, "pacs")
            nodes[0].add_instances(
                job, [InstanceRecord(f"2.25.7{n}{i}", "sent", "1.2.840.10008.5.1.4.1.1.2") for i in range(2)]
            )
            made += ledgers[0].job_ended(job)
        now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
        sent: list[list[bool]] = [[], []]
        for attempt in range(3):  # two attempts each, then the give-up round
            when = now + dt.timedelta(seconds=60 * attempt)
            due = [led.due(when) for led in ledgers]
            assert (
                sorted(t.transaction_uid for t in due[0])
                == sorted(t.transaction_uid for t in due[1])
                == sorted(made)
            )
            start = threading.Barrier(2)

            def run(
                i: int, when: dt.datetime = when, due: list[Any] = due, start: threading.Barrier = start
            ) -> None:
                start.wait()
                sent[i].extend(committers[i].send(tx, when) for tx in due[i])

            threads = [threading.Thread(target=run, args=(i,)) for i in (0, 1)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            if attempt < 2:
                assert sum(sent[0]) + sum(sent[1]) == 3 * (attempt + 1)  # each transaction by one node
        asked = [uid for uid, _ in dest.requests]
        assert sorted(asked) == sorted(made * 2)  # every transaction asked twice in all, never more
        assert ledgers[1].counts(int(nodes[0].recent(1)[0]["id"])) == {"unanswered": 2}
    finally:
        for j in nodes:
            j.close()
        dest.stop()
