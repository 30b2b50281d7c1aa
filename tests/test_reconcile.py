"""``dicomproxy reconcile`` end to end (issue 25 item 2): Orthanc as the PACS, a second Orthanc as
the cloud (the push destination, a Q/R SCP), a SQLite exam view, the proxy delivering by push.

One scenario, in steps: two studies pushed, two instances of one deleted at the cloud (REST), a
third study that reached the cloud another way with one instance short, two studies the view hides
(another hospital; Privacy above the maximum) that the PACS holds and the cloud does not. The
report names exactly the deleted and the short instances and never the hidden studies; ``--fix``
queues those (the push delivery sends only them); a second run says complete; the console's
``/metrics`` and ``/api/status`` show the run's counts. Then the pieces with no peer: the journal's
per-study confirmations, and a destination that does not answer C-FIND (the journal stands in).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import create_engine, select

from dicomproxy.cli import cli
from dicomproxy.config import load_config
from dicomproxy.push.queue import DONE, PushQueue, push_attempts, push_queue
from dicomproxy.relay.journal import InstanceRecord, Journal, job_instances
from dicomproxy.server import Server
from dicomproxy.status import JobKind, JobOutcome
from dicomproxy.transport.net import Remote
from testkit import free_port, wait_until
from testkit.dcmtk import StoreSCP
from testkit.fakepacs import FakePacs
from testkit.orthanc import Orthanc
from testkit.samples import StudySpec, exam_row, write_study
from testkit.viewdb import create_view_table, insert_rows
from tests import test_push_takeover
from tests.conftest import running_orthanc

journal = test_push_takeover.journal  # a journal on SQLite, PostgreSQL and MariaDB

PUSHED = StudySpec("CT", accession="RK001", series=2, images_per_series=2, seed=401)
SMALL = StudySpec("MR", accession="RK002", series=1, images_per_series=2, seed=402)
ELSEWHERE = StudySpec("CT", accession="RK003", series=1, images_per_series=3, seed=403)
OTHER_HOSPITAL = StudySpec("CT", accession="RK004", series=1, images_per_series=1, seed=404)
SECRET = StudySpec("CT", accession="RK005", series=1, images_per_series=1, seed=405)
ALL = (PUSHED, SMALL, ELSEWHERE, OTHER_HOSPITAL, SECRET)
HIDDEN = (OTHER_HOSPITAL, SECRET)


def sops(spec: StudySpec) -> list[str]:
    return [spec.sop_uid(s, i) for s in range(spec.series) for i in range(spec.images_per_series)]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    root = tmp_path_factory.mktemp("reconcile-studies")
    return {spec.accession: {p.stem: p for p in write_study(spec, root / spec.accession)} for spec in ALL}


@pytest.fixture(scope="module")
def peers(
    tmp_path_factory: pytest.TempPathFactory, files: dict[str, dict[str, Path]]
) -> Iterator[dict[str, Orthanc]]:
    """The PACS (every study) and the cloud (empty), real Orthancs."""
    studies = [p for spec in ALL for p in files[spec.accession].values()]
    with (
        running_orthanc(tmp_path_factory.mktemp("reconcile-pacs"), files=studies) as pacs,
        running_orthanc(tmp_path_factory.mktemp("reconcile-cloud"), ae_title="CLOUD") as cloud,
    ):
        yield {"pacs": pacs, "cloud": cloud}


def write_config(
    tmp_path: Path, pacs: Orthanc, dest: tuple[str, int], http_port: int = 0, push_extra: str = ""
) -> Path:
    """``tmp_path/proxy.toml``: push to ``dest`` (AE title, port) from Orthanc ``pacs`` by C-GET;
    ``push_extra``: more ``[push]`` lines."""
    path = tmp_path / "proxy.toml"
    path.write_text(
        f"""
[proxy]
ae_title = "DICOMPROXY"
host = "127.0.0.1"
port = 0
data_dir = "{tmp_path / "var"}"
drain_timeout = 5.0
retry_delay = 0.1
retries = 1
reconnect_window = 0
[hospital]
id = "74580626"
name = "温岭市第一人民医院"
[view]
url = "sqlite:///{tmp_path / "view.db"}"
name = "V_IMAGE_CLOUD"
[pacs]
ae_title = "{pacs.ae_title}"
host = "127.0.0.1"
port = {pacs.dicom_port}
retrieve = "c-get"
[[peers]]
ae_title = "{dest[0]}"
host = "127.0.0.1"
port = {dest[1]}
[push]
enabled = true
destinations = ["{dest[0]}"]
start_from = "now"
poll_interval = 0.2
retry_delay = 0.3
max_retry_delay = 1.0
recheck_after = 0
{push_extra}
[http]
port = {http_port}
"""
    )
    return path


def reconcile(config: Path, *args: str) -> Result:
    return CliRunner().invoke(
        cli,
        [
            "reconcile",
            "-c",
            str(config),
            "--since",
            "2024-01-01",
            "--until",
            "2024-01-31",
            "--rate",
            "50",
            *args,
        ],
    )


def cloud_holds(cloud: Orthanc, uid: str) -> bool:
    return bool(cloud.request("POST", "/tools/lookup", uid.encode()))


def delete_at(cloud: Orthanc, uid: str) -> None:
    (found,) = cloud.request("POST", "/tools/lookup", uid.encode())
    cloud.request("DELETE", f"/instances/{found['ID']}")


def push_jobs(engine: Any, item_id: int) -> list[int]:
    q = (
        select(push_attempts.c.job_id)
        .where(push_attempts.c.item_id == item_id)
        .order_by(push_attempts.c.job_id)
    )
    with engine.connect() as conn:
        return [int(r[0]) for r in conn.execute(q)]


def sent_by(engine: Any, job_id: int) -> set[str]:
    q = select(job_instances.c.sop_instance_uid).where(
        job_instances.c.job_id == job_id, job_instances.c.state == "sent"
    )
    with engine.connect() as conn:
        return {str(r[0]) for r in conn.execute(q)}


def http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as rsp:
        return rsp.read().decode()


def test_reconcile_reports_exactly_what_the_cloud_lost_fix_delivers_only_that_and_hidden_studies_never_appear(
    tmp_path: Path,
    peers: dict[str, Orthanc],
    files: dict[str, dict[str, Path]],
    run_proxy: Callable[..., Server],
) -> None:
    pacs, cloud = peers["pacs"], peers["cloud"]
    view = create_engine(f"sqlite:///{tmp_path / 'view.db'}")
    create_view_table(view)
    earlier = dt.datetime.now() - dt.timedelta(hours=1)  # before push's start ("now"): not pushed
    insert_rows(
        view,
        [
            exam_row(ELSEWHERE, RowTimestamp=earlier),
            exam_row(OTHER_HOSPITAL, hospital_id="99999999", RowTimestamp=earlier),
            exam_row(SECRET, Privacy=2, RowTimestamp=earlier),
        ],
    )
    # ELSEWHERE reached the cloud without us (the cloud's own import), one instance short
    cloud.upload([files[ELSEWHERE.accession][u] for u in sops(ELSEWHERE)[:2]])
    http_port = free_port()
    config_path = write_config(tmp_path, pacs, (cloud.ae_title, cloud.dicom_port), http_port)
    server = run_proxy(load_config(config_path))
    engine = server.ctx.journal.engine
    queue = PushQueue(engine, "test")
    insert_rows(view, [exam_row(spec, RowTimestamp=dt.datetime.now()) for spec in (PUSHED, SMALL)])
    wanted = sops(PUSHED) + sops(SMALL)
    wait_until(lambda: all(cloud_holds(cloud, u) for u in wanted), 30, "the push delivery")
    wait_until(lambda: {i["state"] for i in queue.items()} == {DONE}, 10, "push items done")
    deleted = sops(PUSHED)[1:3]
    for uid in deleted:
        delete_at(cloud, uid)
    short = sops(ELSEWHERE)[2]
    # an instance of SMALL the PACS never had, stored at the cloud by someone else: extra
    stray_spec = dataclasses.replace(SMALL, images_per_series=3)
    stray = sops(stray_spec)[2]
    cloud.upload([p for p in write_study(stray_spec, tmp_path / "stray") if p.stem == stray])

    # the report
    result = reconcile(config_path, "--json")
    assert result.exit_code == 1, result.output  # instances are missing
    report = json.loads(result.stdout)
    rows = {r["study_uid"]: r for r in report["studies"]}
    assert set(rows) == {PUSHED.study_uid, SMALL.study_uid, ELSEWHERE.study_uid}  # never the hidden ones
    for spec in HIDDEN:
        assert spec.study_uid not in result.stdout and spec.accession not in result.stdout
    assert rows[PUSHED.study_uid]["category"] == "missing"
    assert rows[PUSHED.study_uid]["missing"] == sorted(deleted)
    assert rows[PUSHED.study_uid]["counts"]["lost"] == 2  # the journal says confirmed: deleted at the cloud
    assert rows[PUSHED.study_uid]["basis"] == "destination"
    assert rows[PUSHED.study_uid]["accession"] == PUSHED.accession
    assert rows[ELSEWHERE.study_uid]["missing"] == [short]
    assert rows[ELSEWHERE.study_uid]["counts"]["lost"] == 0
    assert (rows[SMALL.study_uid]["category"], rows[SMALL.study_uid]["extra"]) == ("extra", [stray])
    # bounded load: one association per peer for all its C-FINDs, one C-FIND per study
    assert report["load"] == {
        f"PACS {pacs.ae_title}": {"cfinds": 3, "associations": 1},
        "destination CLOUD": {"cfinds": 3, "associations": 1},
    }
    (summary,) = report["destinations"]
    counts = ("studies", "complete", "missing_studies", "missing_instances", "extra_studies")
    assert tuple(summary[k] for k in counts) == (3, 0, 2, 3, 1)

    # the table and the CSV say the same
    table = reconcile(config_path)
    assert f"    missing {deleted[0]} (lost at the destination)" in table.stdout
    assert f"    missing {short}" in table.stdout
    assert f"    extra   {stray}" in table.stdout
    assert "CLOUD: 3 studies, 0 complete, 2 missing (3 instances), 1 extra" in table.stdout
    csv_lines = reconcile(config_path, "--csv").stdout.splitlines()
    assert csv_lines[0].startswith("study_uid,accession,destination,archive,category")
    assert len(csv_lines) == 4 and any(short in line for line in csv_lines)

    # the console: the newest run's counts, no study or patient
    metrics = http_get(f"http://127.0.0.1:{http_port}/metrics")
    assert 'dicomproxy_reconcile_missing_instances{destination="CLOUD"} 3.0' in metrics
    status = json.loads(http_get(f"http://127.0.0.1:{http_port}/api/status"))
    (shown,) = status["reconcile"]
    assert (shown["destination"], shown["missing_instances"], shown["missing_studies"]) == ("CLOUD", 3, 2)
    assert (shown["since"], shown["until"]) == (
        "2024-01-01T00:00:00",
        "2024-02-01T00:00:00",
    )  # local, --until's day in
    assert PUSHED.study_uid not in json.dumps(status["reconcile"])

    # --fix: queued, then delivered by the running serve's push workers — only the missing ones
    items = {i["study_uid"]: i["id"] for i in queue.items()}
    jobs_before = push_jobs(engine, items[PUSHED.study_uid])
    small_jobs = push_jobs(engine, items[SMALL.study_uid])
    fixed = reconcile(config_path, "--fix", "--json")
    assert fixed.exit_code == 0, fixed.output
    assert {r["study_uid"]: r["queued"] for r in json.loads(fixed.stdout)["studies"]} == {
        PUSHED.study_uid: 2,
        SMALL.study_uid: 0,
        ELSEWHERE.study_uid: 1,
    }
    wait_until(lambda: all(cloud_holds(cloud, u) for u in [*deleted, short]), 30, "the fix's delivery")
    items = {i["study_uid"]: i["id"] for i in queue.items()}
    wait_until(lambda: {i["state"] for i in queue.items()} == {DONE}, 10, "push items done again")
    new_jobs = [j for j in push_jobs(engine, items[PUSHED.study_uid]) if j not in jobs_before]
    assert set().union(*(sent_by(engine, j) for j in new_jobs)) == set(deleted)
    assert push_jobs(engine, items[SMALL.study_uid]) == small_jobs  # nothing missing: not queued
    (elsewhere_job,) = push_jobs(engine, items[ELSEWHERE.study_uid])
    assert sent_by(engine, elsewhere_job) == {short}  # not the two the cloud already held

    again = reconcile(config_path, "--json")
    assert again.exit_code == 0, again.output  # extra is reported, not an error
    assert {r["study_uid"]: r["category"] for r in json.loads(again.stdout)["studies"]} == {
        PUSHED.study_uid: "complete",
        SMALL.study_uid: "extra",
        ELSEWHERE.study_uid: "complete",
    }
    metrics = http_get(f"http://127.0.0.1:{http_port}/metrics")
    assert 'dicomproxy_reconcile_missing_instances{destination="CLOUD"} 0.0' in metrics
    view.dispose()


def test_confirmed_by_study_counts_jobs_to_that_destination_only(journal: Journal) -> None:
    """The journal's side of the report (SQLite, PostgreSQL, MariaDB): confirmations by study and
    destination, whatever the job's kind; a job of two studies assigns each instance by what the
    PACS announced; failed rows and ``lost`` ones (after a fix) are not confirmed."""
    one = journal.start(JobKind.MOVE, "jobserver", "", "CLOUD", "pacs")
    journal.update(one, study_uids=["1.1"])
    journal.add_instances(one, [InstanceRecord("1.1.1", "sent"), InstanceRecord("1.1.2", "failed")])
    two = journal.start(JobKind.PUSH, "DICOMPROXY", "", "CLOUD", "pacs")
    journal.update(two, study_uids=["1.1", "1.2"])
    journal.add_expected(
        two,
        [
            {"study_uid": "1.1", "series_uid": "s", "sop_instance_uid": "1.1.3", "sop_class_uid": "c"},
            {"study_uid": "1.2", "series_uid": "s", "sop_instance_uid": "1.2.1", "sop_class_uid": "c"},
        ],
    )
    journal.add_instances(two, [InstanceRecord("1.1.3", "warning"), InstanceRecord("1.2.1", "sent")])
    other = journal.start(JobKind.MOVE, "jobserver", "", "ELSEWHERE", "pacs")
    journal.update(other, study_uids=["1.1"])
    journal.add_instances(other, [InstanceRecord("1.1.9", "sent")])
    journal.finish(one, status=0, outcome=JobOutcome.SUCCESS)
    assert journal.confirmed_by_study("CLOUD", ["1.1", "1.2", "1.3"]) == {
        "1.1": frozenset({"1.1.1", "1.1.3"}),
        "1.2": frozenset({"1.2.1"}),
    }
    assert journal.unconfirm("CLOUD", ["1.1.1", "1.1.9"]) == 1  # not the other destination's row
    assert journal.confirmed_by_study("CLOUD", ["1.1"]) == {"1.1": frozenset({"1.1.3"})}
    assert journal.confirmed_by_study("ELSEWHERE", ["1.1"]) == {"1.1": frozenset({"1.1.9"})}
    assert journal.uncommitted_by_study("CLOUD", ["1.1"]) == {}  # never asked to commit: not "uncommitted"
    tomorrow = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) + dt.timedelta(days=1)
    assert journal.confirmed_by_study("CLOUD", ["1.1"], started_after=tomorrow) == {}  # no job started since


def test_queue_fix_makes_or_requeues_the_item_and_leaves_out_what_the_destination_holds(
    journal: Journal,
) -> None:
    """``PushQueue.queue_fix`` (SQLite, PostgreSQL, MariaDB): a study without an item gets one, due
    now; the held instances are left out of its deliveries with the confirmed ones; a second fix
    replaces them; a ``done`` item is due afresh, a ``running`` one is marked changed (it runs
    again when this run ends); a new generation (``push requeue``) no longer skips them."""
    queue = PushQueue(journal.engine, "test")
    item_id, made = queue.queue_fix("1.9", "CLOUD", "E1", ["1.9.1", "1.9.2"])
    assert made
    row = queue.get(item_id)
    assert row is not None and (row["state"], row["generation"], row["examine_id"]) == ("queued", 0, "E1")
    job = journal.start(JobKind.PUSH, "DICOMPROXY", "", "CLOUD", "pacs")
    journal.add_instances(job, [InstanceRecord("1.9.3", "sent")])
    with journal.engine.begin() as conn:
        conn.execute(
            push_attempts.insert().values(
                item_id=item_id, job_id=job, generation=0, node="t", started=dt.datetime.now()
            )
        )
    assert queue.excluded(item_id, 0) == {"1.9.1", "1.9.2", "1.9.3"}
    assert queue_fix_again(queue, ["1.9.2"]) == (item_id, False)
    assert queue.excluded(item_id, 0) == {"1.9.2", "1.9.3"}  # replaced, not added to
    for state, expected in (("done", ("queued", 0)), ("running", ("running", 1))):
        with journal.engine.begin() as conn:
            conn.execute(
                push_queue.update().where(push_queue.c.id == item_id).values(state=state, rechecks=2)
            )
        queue_fix_again(queue, ["1.9.2"])
        row = queue.get(item_id)
        assert row is not None and (row["state"], row["changed"]) == expected
    with journal.engine.begin() as conn:
        conn.execute(push_queue.update().where(push_queue.c.id == item_id).values(state="done", changed=0))
    queue.requeue(dt.datetime(2000, 1, 1))
    assert queue.excluded(item_id, 1) == frozenset()


def queue_fix_again(queue: PushQueue, held: list[str]) -> tuple[int, bool]:
    return queue.queue_fix("1.9", "CLOUD", "E1", held)


def test_a_destination_that_does_not_answer_cfind_is_judged_by_the_journal(
    tmp_path: Path, peers: dict[str, Orthanc], storescp: Callable[..., StoreSCP]
) -> None:
    """storescp has no Query/Retrieve: "unknown" at the destination, so the journal stands in
    (basis journal): with nothing journalled, every instance in the PACS is missing; the report
    says why the destination was not asked."""
    scp = storescp("STORESCP")
    view = create_engine(f"sqlite:///{tmp_path / 'view.db'}")
    create_view_table(view)
    insert_rows(view, [exam_row(SMALL)])
    config_path = write_config(tmp_path, peers["pacs"], ("STORESCP", scp.port))
    result = reconcile(config_path, "--json")
    report = json.loads(result.stdout)
    (row,) = report["studies"]
    assert (row["category"], row["basis"], row["missing"]) == ("missing", "journal", sorted(sops(SMALL)))
    assert "STORESCP" in report["unasked"]
    view.dispose()


def test_an_unreachable_pacs_is_tried_once_and_every_study_is_unknown(tmp_path: Path) -> None:
    """Nothing listens at the PACS's port: one association attempt, not one per study; each study
    is ``unknown`` with the reason, and the run exits 1 (the report could not be made)."""
    view = create_engine(f"sqlite:///{tmp_path / 'view.db'}")
    create_view_table(view)
    insert_rows(view, [exam_row(SMALL), exam_row(PUSHED)])
    closed = Orthanc(tmp_path / "never-started")  # its ports: free, nothing listening
    config_path = write_config(tmp_path, closed, ("CLOUD", free_port()))
    result = reconcile(config_path, "--json")
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert [r["category"] for r in report["studies"]] == ["unknown", "unknown"]
    assert all("cannot be reached" in r["error"] for r in report["studies"])
    assert report["load"] == {
        "PACS ORTHANC": {"cfinds": 0, "associations": 1},  # requested once, not once per study
        "destination CLOUD": {"cfinds": 0, "associations": 0},  # nothing to compare with: not asked
    }
    assert report["destinations"][0]["unknown"] == 2
    view.dispose()


def test_fix_is_refused_for_a_destination_push_does_not_deliver_to(tmp_path: Path) -> None:
    """``--fix`` queues push deliveries: for a peer that is not a ``[push]`` destination the run is
    refused before anything is asked (exit 2, the reason on stderr); without ``--fix`` it would run."""
    config_path = write_config(tmp_path, Orthanc(tmp_path / "never-started"), ("CLOUD", free_port()))
    with config_path.open("a") as f:
        f.write('[[peers]]\nae_title = "OTHER"\nhost = "127.0.0.1"\nport = 1\n')
    result = reconcile(config_path, "--fix", "--dest", "OTHER")
    assert result.exit_code == 2
    assert "error: --fix delivers by push: 'OTHER' is not a [push] destination" in result.stderr


def test_a_destination_failing_one_cfind_is_judged_by_the_journal_for_that_study_only(
    tmp_path: Path, peers: dict[str, Orthanc]
) -> None:
    """A Q/R SCP that answers IMAGE-level C-FIND with 0xA700 (out of resources): each study is
    judged by the journal (basis journal, the status in its error), the association is kept for
    the next study, and the destination is not reported as unasked."""
    cloud = FakePacs([], ae_title="FAKECLOUD")
    cloud.behaviour.image_find_status = 0xA700
    cloud.start()
    try:
        view = create_engine(f"sqlite:///{tmp_path / 'view.db'}")
        create_view_table(view)
        insert_rows(view, [exam_row(SMALL), exam_row(PUSHED)])
        config_path = write_config(tmp_path, peers["pacs"], ("FAKECLOUD", cloud.port))
        report = json.loads(reconcile(config_path, "--json").stdout)
        assert [(r["category"], r["basis"]) for r in report["studies"]] == [("missing", "journal")] * 2
        assert all("0xA700" in r["error"] for r in report["studies"])
        assert report["unasked"] == {}
        assert report["load"]["destination FAKECLOUD"] == {"cfinds": 2, "associations": 1}
        view.dispose()
    finally:
        cloud.stop()


def test_uncommitted_by_study_is_what_storage_commitment_has_not_confirmed(
    journal: Journal, tmp_path: Path
) -> None:
    """The ``stored-not-committed`` category's source (SQLite, PostgreSQL, MariaDB): instances of
    the study the destination stored and was asked to commit, whose newest reference is not
    ``committed`` (pending, failed, unanswered)."""
    from dicomproxy.config import parse_config
    from dicomproxy.relay.commitments import CommitmentLedger
    from dicomproxy.transport.commitment import Report
    from tests.conftest import base_config_dict

    config = parse_config(
        base_config_dict(
            tmp_path,
            "sqlite:///v.db",
            peers=[{"ae_title": "CLOUD", "host": "127.0.0.1", "port": 1, "storage_commitment": True}],
        ),
        str(tmp_path / "proxy.toml"),
    )
    ledger = CommitmentLedger(config, journal)
    job = journal.start(JobKind.PUSH, "DICOMPROXY", "", "CLOUD", "pacs")
    journal.update(job, study_uids=["2.1"])
    journal.add_instances(job, [InstanceRecord(u, "sent", "c") for u in ("2.1.1", "2.1.2", "2.1.3")])
    assert journal.uncommitted_by_study("CLOUD", ["2.1"]) == {}  # stored, not yet asked
    (tx,) = ledger.job_ended(job)
    assert journal.uncommitted_by_study("CLOUD", ["2.1"]) == {"2.1": frozenset({"2.1.1", "2.1.2", "2.1.3"})}
    assert ledger.answer(Report(tx, frozenset({"2.1.1", "2.1.2"}), {"2.1.3": 0x0110}))
    # failed and not resent (a push job): still not committed; the committed ones are out
    assert journal.uncommitted_by_study("CLOUD", ["2.1"]) == {}  # 2.1.3 is no longer confirmed either
    assert journal.uncommitted_by_study("ELSEWHERE", ["2.1"]) == {}


def test_stored_but_not_committed_is_reported_until_the_destination_commits(
    tmp_path: Path, peers: dict[str, Orthanc], run_proxy: Callable[..., Server]
) -> None:
    """A push destination asked to commit (a pynetdicom Storage Commitment SCP, silent at first)
    stored the study: the report says ``stored-not-committed`` with exactly those UIDs (the push
    item waits ``committing``); once the destination answers the committer's next request, the
    item is done and the report says complete."""
    from testkit.commitscp import CommitmentDestination

    dest = CommitmentDestination("COMMITCLOUD", mode="silent")
    view = create_engine(f"sqlite:///{tmp_path / 'view.db'}")
    create_view_table(view)
    earlier = dt.datetime.now() - dt.timedelta(hours=1)  # push starts "now": from above its stamp
    insert_rows(view, [exam_row(OTHER_HOSPITAL, hospital_id="99999999", RowTimestamp=earlier)])
    try:
        config_path = write_config(tmp_path, peers["pacs"], (dest.ae_title, dest.port))
        commitment = "storage_commitment = true\ncommit_timeout = 1.0\ncommit_attempts = 5"
        text = config_path.read_text()
        text = text.replace(f"port = {dest.port}\n[push]", f"port = {dest.port}\n{commitment}\n[push]")
        config_path.write_text(text)
        server = run_proxy(load_config(config_path))
        dest.reply_to = Remote("DICOMPROXY", "127.0.0.1", server.port)
        dest.start()
        queue = PushQueue(server.ctx.journal.engine, "test")
        insert_rows(view, [exam_row(SMALL, RowTimestamp=dt.datetime.now())])
        wait_until(lambda: len(dest.requests) == 1, 30, "stored, and asked to commit")
        assert [i["state"] for i in queue.items()] == ["committing"]
        report = json.loads(reconcile(config_path, "--json").stdout)
        (row,) = report["studies"]
        assert (row["category"], row["basis"], row["missing"]) == ("stored-not-committed", "journal", [])
        assert row["uncommitted"] == sorted(sops(SMALL)) and row["counts"]["uncommitted"] == 2
        assert report["destinations"][0]["uncommitted"] == 1  # studies
        dest.mode = "new"  # the committer's next request is answered
        wait_until(lambda: [i["state"] for i in queue.items()] == [DONE], 30, "committed, the item done")
        (row,) = json.loads(reconcile(config_path, "--json").stdout)["studies"]
        assert (row["category"], row["uncommitted"]) == ("complete", [])
    finally:
        dest.stop()
        view.dispose()
