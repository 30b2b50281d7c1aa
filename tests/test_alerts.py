"""Alerts against real receivers: a local HTTP server answering as a JSON webhook, a 企业微信 robot and
a 钉钉 robot (formats and signature checked as the robots do), an aiosmtpd SMTP server requiring
STARTTLS (certificates from the test PKI); incidents driven by real events — a push destination at
a closed port, then listening — on one node and on two nodes sharing a PostgreSQL journal; the
``alerts test`` command."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import signal
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, select, text

from dicomproxy.alerts.message import Incident, Message, Phase
from dicomproxy.alerts.sender import RateLimit, Sender
from dicomproxy.alerts.store import alert_incidents
from dicomproxy.alerts.targets import AlertDeliveryError, build_target
from dicomproxy.cli import cli
from dicomproxy.config import Config
from dicomproxy.server import Server
from testkit import free_port, wait_until
from testkit.alertsink import DINGTALK_BAD_SIGN, AlertReceiver, MailReceiver, Received
from testkit.commitscp import CommitmentDestination
from testkit.fakepacs import FakeDestination, FakePacs
from testkit.samples import StudySpec, exam_row, write_study
from testkit.viewdb import create_view_table, insert_rows
from tests.conftest import ConfigFactory, push_cli_toml

SECRET = "SEC0123456789abcdef"
SPEC = StudySpec("CT", accession="AL001", series=1, images_per_series=2, seed=700)


@pytest.fixture
def receiver() -> Iterator[AlertReceiver]:
    r = AlertReceiver(dingtalk_secret=SECRET).start()
    yield r
    r.stop()


@pytest.fixture
def mail(pki: dict[str, Path]) -> Iterator[MailReceiver]:
    m = MailReceiver(str(pki["server_crt"]), str(pki["server_key"])).start()
    yield m
    m.stop()


def _targets(receiver: AlertReceiver, mail_port: int, ca: Path, secret: str = SECRET) -> list[dict[str, Any]]:
    return [
        {"kind": "webhook", "name": "hook", "url": f"{receiver.url}/hook", "token": "tok-1"},
        {"kind": "wecom", "name": "wecom", "url": f"{receiver.url}/wecom?key=k1"},
        {"kind": "dingtalk", "name": "dingtalk", "url": f"{receiver.url}/dingtalk?access_token=t1",
         "secret": secret},
        {"kind": "email", "name": "mail", "smtp_host": "127.0.0.1", "smtp_port": mail_port,
         "from": "proxy@example.org", "to": ["ops@example.org", "oncall@example.org"], "username": "alerts",
         "password": "password", "ca": str(ca)},
    ]  # fmt: skip


def _message(phase: Phase = Phase.START) -> Message:
    incident = Incident(
        "destination-held:CLOUD",
        "destination-held",
        "push destination CLOUD down, its queue held for 12 min",
        (("destination", "CLOUD"),),
    )
    return Message(
        phase, incident, "温岭市第一人民医院 (74580626)", "node-a", dt.datetime.now(dt.timezone.utc)
    )


def test_each_target_kind_delivers_in_its_format(
    make_config: ConfigFactory, receiver: AlertReceiver, mail: MailReceiver, pki: dict[str, Path]
) -> None:
    config = make_config(alerts=_targets(receiver, mail.port, pki["ca"]))
    for target_config in config.alerts.targets:
        target = build_target(target_config)
        target.send(_message())
        target.close()
    assert receiver.refused() == []
    [hook] = receiver.accepted("/hook")
    assert hook.body["phase"] == "start" and hook.body["key"] == "destination-held:CLOUD"
    assert hook.body["severity"] == "critical" and hook.body["facts"] == {"destination": "CLOUD"}
    assert hook.body["hospital"] == "温岭市第一人民医院 (74580626)"
    assert hook.headers["Authorization"] == "Bearer tok-1"
    [wecom] = receiver.accepted("/wecom")
    assert wecom.query == {"key": "k1"} and wecom.body["msgtype"] == "markdown"
    assert "PROBLEM (critical)" in wecom.body["markdown"]["content"]
    [ding] = receiver.accepted("/dingtalk")
    assert ding.query["access_token"] == "t1" and set(ding.query) == {"access_token", "timestamp", "sign"}
    assert ding.body["markdown"]["title"].startswith("[dicomproxy] PROBLEM")
    assert (
        "<font" not in ding.body["markdown"]["text"]
        and "> **destination**: CLOUD" in ding.body["markdown"]["text"]
    )
    [letter] = mail.mails
    assert letter["Subject"].startswith("[dicomproxy] PROBLEM (critical)")
    assert letter["To"] == "ops@example.org, oncall@example.org"
    assert letter["Date"] and letter["Message-ID"].endswith("@example.org>")
    assert "destination: CLOUD" in letter.get_payload(decode=True).decode()
    assert mail.handler.tls == [True]  # the mail went after STARTTLS


def test_a_wrong_or_missing_dingtalk_signature_is_refused(
    make_config: ConfigFactory, receiver: AlertReceiver, pki: dict[str, Path]
) -> None:
    for secret in ("SECwrong", ""):
        config = make_config(alerts=_targets(receiver, 1, pki["ca"], secret=secret)[2:3])
        target = build_target(config.alerts.targets[0])
        with pytest.raises(AlertDeliveryError, match=f"errcode {DINGTALK_BAD_SIGN}"):
            target.send(_message())
        target.close()
    assert receiver.accepted() == [] and len(receiver.refused()) == 2


def test_email_to_a_server_with_an_untrusted_certificate_is_not_sent(
    make_config: ConfigFactory, pki: dict[str, Path]
) -> None:
    rogue = MailReceiver(str(pki["rogue_server_crt"]), str(pki["rogue_server_key"])).start()
    try:
        config = make_config(alerts=_targets(AlertReceiver(), rogue.port, pki["ca"])[3:])
        with pytest.raises(AlertDeliveryError, match="CERTIFICATE_VERIFY_FAILED"):
            build_target(config.alerts.targets[0]).send(_message())
        assert rogue.mails == []
    finally:
        rogue.stop()


def test_sender_retries_with_backoff_and_gives_up_in_one_line(
    make_config: ConfigFactory, receiver: AlertReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    dead = free_port()
    config = make_config(
        alerting={"retries": 2, "retry_delay": 0.05},
        alerts=[
            {"kind": "webhook", "name": "flaky", "url": f"{receiver.url}/hook"},
            {"kind": "webhook", "name": "dead", "url": f"http://127.0.0.1:{dead}/hook", "timeout": 2},
        ],
    )
    receiver.state.fail_next = 2  # two 503s, then it answers
    sender = Sender([build_target(t) for t in config.alerts.targets], config.alerts)
    sender.start()
    caplog.set_level(logging.INFO, logger="dicomproxy.alerts")
    try:
        assert sender.submit(_message()) == 2
        assert sender.wait_idle(20)
    finally:
        sender.stop()
    assert len(receiver.accepted("/hook")) == 1  # the third attempt
    flaky, gone = sender.workers
    assert (flaky.delivered, flaky.failed, gone.delivered, gone.failed) == (1, 0, 0, 1)
    lost = [r.getMessage() for r in caplog.records if "not delivered" in r.getMessage()]
    assert len(lost) == 1 and "dead: start destination-held:CLOUD not delivered after 3 attempt(s)" in lost[0]


def test_rate_limit_holds_back_and_the_next_message_says_how_many(
    make_config: ConfigFactory, receiver: AlertReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config(alerts=[{"kind": "webhook", "url": f"{receiver.url}/hook", "max_per_hour": 1}])
    sender = Sender([build_target(t) for t in config.alerts.targets], config.alerts)
    [worker] = sender.workers
    now = [0.0]
    worker.limit = RateLimit(1, clock=lambda: now[0])  # the hour passes when the test says so
    sender.start()
    caplog.set_level(logging.WARNING, logger="dicomproxy.alerts")
    try:
        for phase in (Phase.START, Phase.END, Phase.START):
            sender.submit(_message(phase))
        assert sender.wait_idle(10)
        now[0] = 3600.0
        sender.submit(_message(Phase.END))
        assert sender.wait_idle(10)
    finally:
        sender.stop()
    first, later = receiver.accepted("/hook")
    assert (first.body["phase"], first.body["suppressed"]) == ("start", 0)
    assert (later.body["phase"], later.body["suppressed"]) == ("end", 2)
    assert "rate limit: 2 earlier alert(s) held back" in later.body["text"]
    assert caplog.text.count("rate limit (1/hour) holds back") == 2


def test_alerts_test_command_prints_each_target_and_fails_when_one_does(
    tmp_path: Path, receiver: AlertReceiver, mail: MailReceiver, pki: dict[str, Path]
) -> None:
    ok = "\n".join(_toml_table(t) for t in _targets(receiver, mail.port, pki["ca"]))
    toml = push_cli_toml(tmp_path)
    toml.write_text(toml.read_text() + ok)
    result = CliRunner().invoke(cli, ["alerts", "test", "-c", str(toml)])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "hook (webhook): OK", "wecom (wecom): OK", "dingtalk (dingtalk): OK", "mail (email): OK"
    ]  # fmt: skip
    assert [r.body["phase"] for r in receiver.accepted("/hook")] == ["test"] and len(mail.mails) == 1
    dead = _toml_table({"kind": "webhook", "name": "down", "url": f"http://127.0.0.1:{free_port()}/x"})
    toml.write_text(toml.read_text() + dead)
    result = CliRunner().invoke(cli, ["alerts", "test", "-c", str(toml)])
    assert result.exit_code == 1
    assert result.output.splitlines()[-1].startswith("down (webhook): FAILED: ConnectError")


def _toml_table(target: dict[str, Any]) -> str:
    return "\n[[alerts]]\n" + "\n".join(f"{k} = {json.dumps(v)}" for k, v in target.items()) + "\n"


# --- incidents from real events ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AlertNode:
    """A push node in the making: one study in the view and the PACS, its destination (not
    listening), the alert receiver; :meth:`config` writes its config, :meth:`start` runs it."""

    make_config: ConfigFactory
    tmp_path: Path
    pacs: FakePacs
    dest: FakeDestination
    receiver: AlertReceiver
    run_proxy: Callable[[Config], Server]

    def config(
        self,
        name: str = "DICOMPROXY",
        *,
        pacs: FakePacs | None = None,
        dest: FakeDestination | CommitmentDestination | None = None,
        journal: str = "",
        incidents: tuple[str, ...] = ("destination-held",),
        **sections: dict[str, Any],
    ) -> Config:
        """A node pushing to ``dest`` (this rig's unless given) from ``pacs`` (likewise): its ``hook``
        target takes ``incidents``, its ``everything`` target (企业微信) all; ``sections`` extend the
        push, alerting, peer (``peer``) and audit sections."""
        pacs, dest = pacs or self.pacs, dest or self.dest
        return self.make_config(
            proxy={"ae_title": name, "data_dir": str(self.tmp_path / name), "retry_delay": 0.1, "retries": 1,
                   "reconnect_window": 0},
            journal={"url": journal or f"sqlite:///{self.tmp_path / 'journal.db'}", "resume_window": 0},
            audit={"enabled": False, **sections.get("audit", {})},
            http={"port": 0, "echo_interval": 1.0, "min_free_mb": 0},
            pacs={"ae_title": pacs.ae_title, "host": "127.0.0.1", "port": pacs.port, "retrieve": "c-get"},
            peers=[{"ae_title": dest.ae_title, "host": "127.0.0.1", "port": dest.port,
                    **sections.get("peer", {})}],
            push={"enabled": True, "destinations": [dest.ae_title], "start_from": "beginning",
                  "poll_interval": 0.2, "retry_delay": 0.3, "max_retry_delay": 1.0,
                  **sections.get("push", {})},
            alerting={"interval": 0.2, "held_after": 1.0, "node": name, "retry_delay": 0.1,
                      **sections.get("alerting", {})},
            alerts=[
                {"kind": "webhook", "name": "hook", "url": f"{self.receiver.url}/hook",
                 "incidents": list(incidents)},
                {"kind": "wecom", "name": "everything", "url": f"{self.receiver.url}/wecom"},
            ],
        )  # fmt: skip

    def start(self, **kwargs: Any) -> Server:
        """Run the node :meth:`config` describes (stopped after the test)."""
        return self.run_proxy(self.config(**kwargs))


@pytest.fixture
def study_rig(tmp_path: Path, sqlite_url: str) -> Iterator[tuple[FakePacs, FakeDestination]]:
    """One study in the view (SQLite) and in a pynetdicom PACS (C-GET); its destination not listening."""
    engine = create_engine(sqlite_url)
    create_view_table(engine)
    insert_rows(engine, [exam_row(SPEC)])
    engine.dispose()
    pacs = FakePacs(write_study(SPEC, tmp_path / "study")).start()
    dest = FakeDestination("CLOUD")  # not started: a closed port
    yield pacs, dest
    dest.stop()
    pacs.stop()


@pytest.fixture
def node(
    tmp_path: Path,
    make_config: ConfigFactory,
    receiver: AlertReceiver,  # before run_proxy: up until the nodes stopped
    study_rig: tuple[FakePacs, FakeDestination],  # likewise
    run_proxy: Callable[[Config], Server],
) -> AlertNode:
    """:data:`study_rig`'s node: its config and its start (:class:`AlertNode`)."""
    pacs, dest = study_rig
    return AlertNode(make_config, tmp_path, pacs, dest, receiver, run_proxy)


def _phases(received: list[Received]) -> list[tuple[str, str]]:
    return [(r.body["phase"], r.body["key"]) for r in received]


def _no_patient_data(received: list[Received]) -> None:
    patient = (
        SPEC.patient.patient_id,
        SPEC.patient.name,
        SPEC.patient.pinyin,
        SPEC.study_uid,
        SPEC.accession,
    )
    for r in received:
        body = json.dumps(r.body, ensure_ascii=False)
        assert not [p for p in patient if p and str(p) in body], body


def test_destination_down_longer_than_threshold_one_start_then_one_end(node: AlertNode) -> None:
    receiver, dest = node.receiver, node.dest
    server = node.start()
    wait_until(lambda: receiver.accepted("/hook"), 30, "the start message")
    assert server.ctx.push.holds.down_since(), "the destination is held"
    dest.start()
    wait_until(lambda: len(receiver.accepted("/hook")) == 2, 30, "the end message")
    wait_until(lambda: len(dest.received) == SPEC.images_per_series, 30, "the study delivered")
    server.alerts.tick()  # one more round: nothing new to say
    server.alerts.sender.wait_idle(10)
    assert _phases(receiver.accepted("/hook")) == [
        ("start", "destination-held:CLOUD"), ("end", "destination-held:CLOUD")
    ]  # fmt: skip
    start, end = receiver.accepted("/hook")
    assert (
        "CLOUD down" in start.body["title"]
        and end.body["title"] == "push destination CLOUD is back, its queue released"
    )
    held = [
        r.body["markdown"]["content"]
        for r in receiver.accepted("/wecom")
        if "destination-held:" in str(r.body)
    ]
    assert len(held) == 2 and "PROBLEM (critical)" in held[0] and "RESOLVED (critical)" in held[1]
    _no_patient_data(receiver.accepted())


def _hook_phases(receiver: AlertReceiver, server: Any) -> list[tuple[str, str]]:
    server.alerts.sender.wait_idle(10)
    return _phases(receiver.accepted("/hook"))


def test_push_item_failed_and_job_failure_rate_start_and_end(node: AlertNode) -> None:
    """The destination refuses every instance (0xA700): the job fails, the item is ``failed`` after
    its one attempt — two incidents start; it accepts again and ``push retry`` delivers — both end."""
    receiver, dest = node.receiver, node.dest
    dest.behaviour.reject = {SPEC.sop_uid(0, i): 0xA700 for i in range(SPEC.images_per_series)}
    dest.start()
    server = node.start(
        incidents=("push-failed", "job-failures"),
        push={"max_attempts": 1, "rechecks": 0},
        alerting={"failure_rate": 0.5, "failure_min_jobs": 1, "failure_window": 60},
    )
    wait_until(lambda: len(receiver.accepted("/hook")) == 2, 30, "two start messages")
    assert sorted(_hook_phases(receiver, server)) == [
        ("start", "job-failures"),
        ("start", "push-failed:CLOUD"),
    ]
    push_failed = next(r for r in receiver.accepted("/hook") if r.body["kind"] == "push-failed")
    [item] = server.ctx.push.queue.items()
    assert push_failed.body["facts"] == {
        "destination": "CLOUD",
        "failed items": "1",
        "push item IDs": str(item["id"]),
    }
    dest.behaviour.reject.clear()
    assert server.ctx.push.queue.retry(item["id"])  # `dicomproxy push retry ID`
    wait_until(lambda: len(receiver.accepted("/hook")) == 4, 30, "two end messages")
    assert sorted(_hook_phases(receiver, server)[2:]) == [
        ("end", "job-failures"),
        ("end", "push-failed:CLOUD"),
    ]
    assert len(dest.received) == SPEC.images_per_series
    _no_patient_data(receiver.accepted())


@pytest.mark.parametrize("console", [False, True], ids=["own-checks", "console-checks"])
def test_readiness_failing_longer_than_threshold_then_passing(console: bool, node: AlertNode) -> None:
    """The PACS does not answer C-ECHO (closed port), then does: readiness:pacs starts and ends —
    with the alerts' own checks (console off) and with the console's."""
    receiver = node.receiver
    down = FakePacs([], ae_title="LATEPACS")  # not started
    config = node.config(pacs=down, incidents=("readiness",), alerting={"readiness_after": 1.0})
    if console:  # the alerts use the console's readiness checks (and its C-ECHO thread)
        config = dataclasses.replace(config, http=dataclasses.replace(config.http, port=free_port()))
    server = node.run_proxy(config)
    assert (server.console is not None) is console
    assert (server.alerts.readiness is server.console.readiness) if console else server.alerts.readiness
    try:
        wait_until(lambda: receiver.accepted("/hook"), 30, "the start message")
        down.start()
        wait_until(lambda: len(receiver.accepted("/hook")) == 2, 30, "the end message")
    finally:
        down.stop()
    assert _hook_phases(receiver, server) == [
        ("start", "readiness:pacs@DICOMPROXY"), ("end", "readiness:pacs@DICOMPROXY")
    ]  # fmt: skip
    start, end = receiver.accepted("/hook")
    assert start.body["facts"] == {"check": "pacs", "node": "DICOMPROXY"}
    assert end.body["title"] == "readiness check pacs passes again"


def test_a_lost_query_process_is_an_incident_the_next_start_ends(node: AlertNode) -> None:
    """serve's query process killed: ``query-process:NODE`` starts (a warning: queries are still
    answered, by serve); the restarted node, whose query process serves, ends it."""
    receiver = node.receiver
    config = node.config(incidents=("query-process",))
    config = dataclasses.replace(config, proxy=dataclasses.replace(config.proxy, query_process=True))
    server = node.run_proxy(config)
    assert server.queries is not None and server.queries.wait_ready(30)
    server.alerts.tick()
    assert _hook_phases(receiver, server) == []  # serving: nothing to say
    pid = server.queries.pid
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: receiver.accepted("/hook"), 30, "the start message")
    [start] = receiver.accepted("/hook")
    assert (start.body["phase"], start.body["key"], start.body["severity"]) == (
        "start", "query-process:DICOMPROXY", "warning"
    )  # fmt: skip
    assert start.body["facts"] == {
        "node": "DICOMPROXY",
        "pid": str(pid),
        "detail": "closed its channel, exit code -9",
    }
    server.stop(drain_timeout=2.0)
    again = node.run_proxy(config)  # the restart, on the same journal
    assert again.queries is not None and again.queries.wait_ready(30)
    wait_until(lambda: len(receiver.accepted("/hook")) == 2, 30, "the end message")
    end = receiver.accepted("/hook")[1]
    assert (end.body["phase"], end.body["key"]) == ("end", "query-process:DICOMPROXY")
    assert end.body["title"] == "the query process of DICOMPROXY serves again"


def test_audit_chain_broken_then_restored(node: AlertNode) -> None:
    receiver = node.receiver
    server = node.start(incidents=("audit-chain",), audit={"enabled": True}, alerting={"audit_interval": 1.0})
    journal = server.ctx.journal.engine
    wait_until(lambda: server.alerts.rounds >= 3, 30, "a few rounds with an intact chain")
    assert receiver.accepted("/hook") == []
    with journal.begin() as conn:
        outcome = conn.execute(text("SELECT outcome FROM audit_log WHERE seq = 1")).scalar()
        conn.execute(text("UPDATE audit_log SET outcome = 'edited' WHERE seq = 1"))
    wait_until(lambda: receiver.accepted("/hook"), 30, "the start message")
    with journal.begin() as conn:
        conn.execute(text("UPDATE audit_log SET outcome = :o WHERE seq = 1"), {"o": outcome})
    wait_until(lambda: len(receiver.accepted("/hook")) == 2, 30, "the end message")
    assert _hook_phases(receiver, server) == [("start", "audit-chain"), ("end", "audit-chain")]
    assert receiver.accepted("/hook")[0].body["facts"] == {"first bad record": "#1"}


def test_storage_commitment_failure_starts_and_ends_with_its_window(node: AlertNode) -> None:
    """The destination reports one instance failed (0x0110) once: commitment:CLOUD starts; the
    instance is sent and committed again, and once the window holds no failure the incident ends."""
    receiver = node.receiver
    dest = CommitmentDestination("CLOUD", mode="same")
    dest.fail = {SPEC.sop_uid(0, 0)}
    dest.start()
    try:
        server = node.start(
            dest=dest, incidents=("commitment",), peer={"storage_commitment": True},
            alerting={"failure_window": 4.0},
        )  # fmt: skip
        wait_until(lambda: receiver.accepted("/hook"), 30, "the start message")
        wait_until(lambda: len(receiver.accepted("/hook")) == 2, 30, "the end message")
    finally:
        dest.stop()
    assert _hook_phases(receiver, server) == [("start", "commitment:CLOUD"), ("end", "commitment:CLOUD")]
    facts = receiver.accepted("/hook")[0].body["facts"]
    assert (facts["destination"], facts["failed"], facts["unanswered"]) == ("CLOUD", "1", "0")
    [item] = server.ctx.push.queue.items()
    assert item["state"] == "done"


def test_a_target_that_hangs_does_not_hold_up_the_others(
    make_config: ConfigFactory, receiver: AlertReceiver
) -> None:
    """A webhook that accepts the connection and never answers: its thread waits out its timeout
    and retries; the other target's message is delivered meanwhile, and submit never waits."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # connections complete in the backlog, nothing is ever read or answered
    try:
        config = make_config(
            alerting={"retries": 1, "retry_delay": 0.1},
            alerts=[
                {"kind": "webhook", "name": "silent", "url": f"http://127.0.0.1:{silent.getsockname()[1]}/",
                 "timeout": 1},
                {"kind": "webhook", "name": "ok", "url": f"{receiver.url}/hook"},
            ],
        )  # fmt: skip
        sender = Sender([build_target(t) for t in config.alerts.targets], config.alerts)
        sender.start()
        hung, ok = sender.workers
        for phase in (Phase.START, Phase.END):
            sender.submit(_message(phase))
        wait_until(lambda: len(receiver.accepted("/hook")) == 2, 10, "the other target's two messages")
        assert not hung.idle() and hung.delivered == 0  # still waiting on its first message
        assert sender.wait_idle(30)
        assert (hung.failed, ok.delivered) == (2, 2)
        sender.stop()
    finally:
        silent.close()


@pytest.mark.postgresql
def test_two_nodes_on_one_postgresql_journal_tell_once(
    pg_journal: str,  # before run_proxy (in node): the database is dropped after the nodes stopped
    node: AlertNode,
) -> None:
    receiver, dest = node.receiver, node.dest
    servers = [node.start(name=name, journal=pg_journal) for name in ("NODE_A", "NODE_B")]
    wait_until(lambda: receiver.accepted("/hook"), 30, "the start message")
    wait_until(lambda: all(s.alerts.rounds >= 10 for s in servers), 30, "both nodes evaluated it again")
    dest.start()
    wait_until(lambda: len(receiver.accepted("/hook")) >= 2, 30, "the end message")
    for server in servers:
        server.alerts.tick()
        server.alerts.sender.wait_idle(10)
    assert _phases(receiver.accepted("/hook")) == [
        ("start", "destination-held:CLOUD"), ("end", "destination-held:CLOUD")
    ]  # fmt: skip
    journal = create_engine(pg_journal)
    with journal.connect() as conn:
        rows = conn.execute(select(alert_incidents)).mappings().all()
    journal.dispose()
    [row] = [r for r in rows if r["kind"] == "destination-held"]
    assert row["ended"] is not None and row["key"] == f"destination-held:CLOUD#{row['id']}"
    assert {row["node"], row["end_node"]} <= {"NODE_A", "NODE_B"}
    _no_patient_data(receiver.accepted())
