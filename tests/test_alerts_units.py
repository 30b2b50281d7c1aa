"""Alerts without peers: the config's validation, the open/end decisions, the rate limit, the
readiness tracker, the conditions' thresholds, the incident store's dedup on SQLite, the messages
(no patient data in any kind)."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine

from dicomproxy.alerts import conditions
from dicomproxy.alerts.decide import decide
from dicomproxy.alerts.message import Incident, Message, Phase
from dicomproxy.alerts.sender import RateLimit
from dicomproxy.alerts.store import IncidentStore
from dicomproxy.alerts.targets import dingtalk_sign
from dicomproxy.config import INCIDENT_KINDS, AlertsConfig, Config, ConfigError
from testkit import free_port
from testkit.alertsink import expected_dingtalk_sign
from tests.conftest import ConfigFactory

HOOK = {"kind": "webhook", "url": "https://alerts.example.org/hook"}


def test_targets_parse_with_defaults_and_env_secrets(
    make_config: ConfigFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DT_SECRET", "SECabc")
    monkeypatch.setenv("SMTP_PASSWORD", "pw")
    config = make_config(
        alerting={"held_after": 60, "interval": 1},
        alerts=[
            HOOK,
            {"kind": "dingtalk", "name": "ops", "url": "https://oapi.dingtalk.com/robot/send?access_token=x",
             "secret": "${DT_SECRET}", "incidents": ["destination-held"], "min_severity": "critical"},
            {"kind": "email", "smtp_host": "smtp.example.org", "from": "proxy@example.org",
             "to": ["ops@example.org"], "username": "proxy", "password": "${SMTP_PASSWORD}"},
        ],
    )  # fmt: skip
    hook, robot, mail = config.alerts.targets
    assert config.alerts.held_after == 60 and config.alerts.interval == 1
    assert hook.name == "webhook" and hook.incidents == INCIDENT_KINDS and hook.min_severity == "info"
    assert robot.secret == "SECabc" and robot.wants("destination-held", "critical")
    assert not robot.wants("destination-held", "warning") and not robot.wants("push-failed", "critical")
    assert mail.password == "pw" and mail.smtp_port == 587 and mail.starttls


@pytest.mark.parametrize(
    ("alerts", "alerting", "key", "problem"),
    [
        ([{"url": "https://x"}], {}, "alerts[0].kind", "is required"),
        ([{"kind": "slack", "url": "https://x"}], {}, "alerts[0].kind", "must be one of"),
        ([{"kind": "webhook", "url": "ftp://x/y"}], {}, "alerts[0].url", "http:// or https://"),
        ([{"kind": "wecom", "url": "http://qyapi.weixin.qq.com/x"}], {}, "alerts[0].url", "must be https://"),
        ([{**HOOK, "incidents": ["disk-full"]}], {}, "alerts[0].incidents", "not an incident kind"),
        ([{**HOOK, "min_severity": "high"}], {}, "alerts[0].min_severity", "must be one of"),
        ([{**HOOK, "secret": "s"}], {}, "alerts[0].secret", "unknown key"),
        ([HOOK, HOOK], {}, "alerts[1].name", "used by another"),
        ([{"kind": "email", "smtp_host": "mail.example.org", "from": "a@b", "to": []}], {}, "alerts[0].to",
         "at least one"),
        ([{"kind": "email", "smtp_host": "mail.example.org", "from": "a@b", "to": ["c@d"],
           "starttls": False}], {}, "alerts[0].starttls", "loopback"),
        ([{"kind": "email", "smtp_host": "h", "from": "nobody", "to": ["c@d"]}], {}, "alerts[0].from",
         "not an e-mail address"),
        ([{"kind": "email", "smtp_host": "h", "from": "a@b", "to": ["c@d"], "username": "u"}], {},
         "alerts[0].password", "go together"),
        ([{**HOOK, "ca": "missing.pem"}], {}, "alerts[0].ca", "does not exist"),
        ([], {"failure_rate": 1.5}, "alerting.failure_rate", "between 0 and 1"),
        ([], {"held_afterr": 1}, "alerting.held_afterr", "unknown key"),
        ([{**HOOK, "url": "${NOT_SET_ANYWHERE}"}], {}, "alerts[0]", "NOT_SET_ANYWHERE is not set"),
    ],
)  # fmt: skip
def test_bad_alert_config_names_key_and_file(
    make_config: ConfigFactory,
    tmp_path: Path,
    alerts: list[Any],
    alerting: dict[str, Any],
    key: str,
    problem: str,
) -> None:
    with pytest.raises(ConfigError) as err:
        make_config(alerts=alerts, alerting=alerting)
    text = str(err.value)
    assert key in text and problem in text and str(tmp_path / "test.toml") in text


# --- decisions ------------------------------------------------------------------------------------


def _inc(key: str) -> Incident:
    return Incident(key, key.partition(":")[0], key)


def test_decide_opens_new_ends_gone_and_leaves_what_it_does_not_judge() -> None:
    active = {k: _inc(k) for k in ("destination-held:A", "push-failed:A")}
    open_keys = {"push-failed:A", "destination-held:B", "readiness:pacs@other", "commitment:C"}
    judged = {"destination-held:B", "push-failed:A", "readiness:pacs@other"} - {"readiness:pacs@other"}
    to_open, to_end = decide(active, open_keys, lambda k: k in judged)
    assert [i.key for i in to_open] == ["destination-held:A"]  # push-failed:A is open already
    assert to_end == ["destination-held:B"]  # not the other node's check, not an unjudged kind


def test_rate_limit_holds_back_past_the_hourly_budget_and_counts() -> None:
    now = [0.0]
    limit = RateLimit(3, clock=lambda: now[0])
    assert [limit.allow() for _ in range(5)] == [True, True, True, False, False]
    assert limit.take_held_back() == 2 and limit.take_held_back() == 0
    now[0] = 3599.0
    assert not limit.allow()
    now[0] = 3600.0  # the first three are an hour old
    assert limit.allow() and limit.allow() and limit.allow() and not limit.allow()


def test_readiness_tracker_waits_its_threshold_and_forgets_a_passing_check() -> None:
    now = [100.0]
    tracker = conditions.ReadinessTracker(30.0, "n1", clock=lambda: now[0])
    assert tracker.update([("pacs", False), ("view", True)]) == []
    now[0] = 129.0
    assert tracker.update([("pacs", False)]) == []
    now[0] = 130.0
    [incident] = tracker.update([("pacs", False), ("disk", False)])
    assert incident.key == "readiness:pacs@n1" and incident.kind == "readiness"
    now[0] = 131.0
    assert tracker.update([("pacs", True), ("disk", False)]) == []  # pacs passed: its clock restarts
    now[0] = 170.0
    assert [i.key for i in tracker.update([("pacs", False), ("disk", False)])] == ["readiness:disk@n1"]


def test_the_query_process_is_an_incident_only_once_lost() -> None:
    state = {"pid": 4711, "state": "serving", "detail": None, "associations": 2}
    for name in ("starting", "serving", "stopping"):
        assert conditions.query_process_lost({**state, "state": name}, "node-a") == []
    assert conditions.query_process_lost(None, "node-a") == []  # a node without one
    [lost] = conditions.query_process_lost({**state, "state": "lost", "detail": "exit code -9"}, "node-a")
    assert (lost.key, lost.kind) == ("query-process:node-a", "query-process")
    assert dict(lost.facts) == {"node": "node-a", "pid": "4711", "detail": "exit code -9"}
    assert conditions.ended(lost.key).title == "the query process of node-a serves again"


def test_held_threshold_and_job_failure_rate() -> None:
    now = dt.datetime(2026, 12, 7, 3, 0, 0)
    down = {"CLOUD": now - dt.timedelta(seconds=599), "OTHER": now - dt.timedelta(seconds=600)}
    assert [i.key for i in conditions.held(down, 600, now)] == ["destination-held:OTHER"]
    settings = AlertsConfig(failure_rate=0.5, failure_min_jobs=4)
    three_of_four = [(1, "failed"), (2, "partial"), (3, "success"), (4, "failed"), (5, "running")]
    [incident] = conditions.job_failures(three_of_four, settings)
    assert incident.key == "job-failures" and dict(incident.facts)["job IDs"] == "1, 2, 4"
    assert conditions.job_failures([(1, "failed"), (2, "failed"), (3, "success")], settings) == []  # 3 < 4
    half = [(1, "failed"), (2, "failed"), (3, "success"), (4, "success")]
    assert conditions.job_failures(half, settings) == []  # 50 % is not above 50 %


def test_dingtalk_signature_matches_the_documented_algorithm() -> None:
    # the receiver's own implementation (testkit.alertsink), written from 钉钉's documentation
    for secret, ts in (("SEC123", 1700000000000), ("this is secret", 1577262236757), ("密钥", 1)):
        assert dingtalk_sign(secret, ts) == expected_dingtalk_sign(secret, str(ts))


# --- the store: the INSERT that wins tells ----------------------------------------------------------


def test_store_opens_once_ends_once_and_frees_the_key(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'journal.db'}")
    a, b = IncidentStore(engine, "a"), IncidentStore(engine, "b")
    incident = _inc("destination-held:CLOUD")
    assert a.open(incident) and not b.open(incident)
    assert a.open_keys() == b.open_keys() == {"destination-held:CLOUD"}
    assert b.close("destination-held:CLOUD") and not a.close("destination-held:CLOUD")
    assert a.open_keys() == set()
    assert b.open(incident) and not a.open(incident)  # the next episode
    engine.dispose()


def test_store_decides_alone_while_the_journal_is_down_and_catches_up(tmp_path: Path) -> None:
    port = free_port()  # nothing listens: the journal "does not answer"
    dead = create_engine(
        f"postgresql+psycopg2://postgres@127.0.0.1:{port}/x", connect_args={"connect_timeout": 2}
    )
    store = IncidentStore(dead, "a")
    assert store.open_keys() == set()
    assert store.open(_inc("readiness:journal@a")) and not store.open(_inc("readiness:journal@a"))
    assert store.open(_inc("push-failed:A"))
    assert store.open_keys() == {"readiness:journal@a", "push-failed:A"}
    assert store.close("readiness:journal@a") and not store.close("readiness:journal@a")
    dead.dispose()
    live = create_engine(f"sqlite:///{tmp_path / 'journal.db'}")
    store.engine = live  # the journal answers again: what was opened meanwhile is written, silently
    assert store.open_keys() == {"push-failed:A"}
    assert not store.open(_inc("push-failed:A"))  # no second start message
    assert IncidentStore(live, "b").open_keys() == {"push-failed:A"}
    live.dispose()


# --- messages: nothing of a patient -----------------------------------------------------------------


PATIENT = ("P0001", "ZHANG^SAN", "张三", "1.2.826.0.1.3680043.8.498.1", "ACC123")


def every_kind_of_incident() -> list[Incident]:
    now = dt.datetime(2026, 12, 7, 3, 0, 0)
    settings = AlertsConfig(failure_min_jobs=1)
    tracker = conditions.ReadinessTracker(0.0, "node-a")
    items = [{"id": 17, "destination": "CLOUD", "study_uid": PATIENT[3], "examine_id": PATIENT[4]}]
    incidents = [
        *conditions.held({"CLOUD": now - dt.timedelta(hours=1)}, 600, now),
        *conditions.push_failed({("CLOUD", "failed"): 1, ("CLOUD", "done"): 5}, items),
        *conditions.commitment([{"destination": "CLOUD", "committed": 3, "failed": 1, "unanswered": 2}], 900),
        *conditions.job_failures([(41, "failed")], settings),
        *conditions.audit_broken(False, 12),
        *tracker.update([("pacs", False), ("archive:old", False)]),
        *conditions.query_process_lost(
            {"pid": 4711, "state": "lost", "detail": "closed its channel, exit code -9", "associations": 0},
            "node-a",
        ),
    ]
    ended = [conditions.ended(i.key) for i in incidents]
    return incidents + ended


def test_no_message_of_any_kind_names_a_patient(make_config: ConfigFactory) -> None:
    config: Config = make_config()
    incidents = every_kind_of_incident()
    assert {i.kind for i in incidents} == set(INCIDENT_KINDS)
    for incident in incidents:
        for phase in Phase:
            msg = Message(
                phase, incident, "温岭市第一人民医院 (74580626)", "node-a", dt.datetime.now(dt.timezone.utc)
            )
            for body in (msg.text(), msg.markdown(), str(msg.as_json())):
                assert not [p for p in PATIENT if p in body], body
    assert dict(incidents[1].facts)["push item IDs"] == "17"
    assert (
        config.hospital.id
        in Message(Phase.START, incidents[0], "h (74580626)", "n", dt.datetime.now()).text()
    )


def test_the_example_configs_alert_tables_parse_when_uncommented(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dicomproxy.config import load_config

    for name in (
        "DB_PASSWORD",
        "ALERTS_TOKEN",
        "WECOM_KEY",
        "DINGTALK_TOKEN",
        "DINGTALK_SECRET",
        "SMTP_PASSWORD",
    ):
        monkeypatch.setenv(name, "x")
    text = (Path(__file__).parent.parent / "conf" / "dicomproxy.example.toml").read_text(encoding="utf-8")
    head, _, block = text.partition("# [[alerts]]")
    lines = ("# [[alerts]]" + block).splitlines()
    uncommented = [line[2:] if line.startswith("# ") else "" for line in lines]
    path = tmp_path / "example.toml"
    path.write_text(head + "\n".join(uncommented), encoding="utf-8")
    targets = load_config(path).alerts.targets
    assert [t.kind for t in targets] == ["webhook", "wecom", "dingtalk", "email"]
    assert targets[0].token == "x" and targets[2].secret == "x" and targets[3].min_severity == "critical"


def test_audit_verify_while_a_process_appends_never_reports_a_broken_chain(tmp_path: Path) -> None:
    """The alerts verify the chain while `serve` writes it: a row appended between the walk and the
    head's read is not a broken chain (it was, once in a few runs, before verify read again)."""
    import threading

    from dicomproxy.audit.trail import AuditRecord, AuditTrail
    from dicomproxy.relay.journal import Journal

    journal = Journal(f"sqlite:///{tmp_path / 'journal.db'}")
    trail = AuditTrail(journal.engine)

    def append() -> None:
        for _ in range(300):
            trail.append(AuditRecord("start", "success"))

    writer = threading.Thread(target=append)
    writer.start()
    results = []
    while writer.is_alive():
        results.append(trail.verify())
    writer.join()
    assert [r.problem for r in results if not r.ok] == []
    assert len(results) > 10 and trail.verify().rows == 300
    journal.engine.dispose()


# --- a source that does not answer ends nothing ------------------------------------------------------


class _Holds:
    def __init__(self) -> None:
        self.answer: dict[str, dt.datetime] | Exception = {}

    def down_since(self) -> dict[str, dt.datetime]:
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def test_a_source_that_fails_is_logged_once_and_ends_nothing(
    make_config: ConfigFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A stand-in push service (unit test): its holds answer, then raise, then answer again."""
    from types import SimpleNamespace

    from sqlalchemy.exc import OperationalError

    from dicomproxy.alerts.service import AlertService
    from dicomproxy.relay.journal import Journal

    config = make_config(
        alerting={"held_after": 0},
        alerts=[{"kind": "webhook", "url": "http://127.0.0.1:9/x", "incidents": ["destination-held"]}],
    )
    journal = Journal(f"sqlite:///{tmp_path / 'journal.db'}")
    holds = _Holds()
    push = SimpleNamespace(holds=holds, queue=None)
    service = AlertService(config, SimpleNamespace(journal=journal, push=push, commitments=None, view=None))
    sent: list[tuple[str, str]] = []
    service.sender.submit = lambda m: sent.append((str(m.phase), m.incident.key)) or 1  # type: ignore[method-assign]
    holds.answer = {"CLOUD": conditions.naive_utcnow()}
    service.tick()
    assert sent == [("start", "destination-held:CLOUD")]
    holds.answer = OperationalError("SELECT", {}, Exception("server closed the connection"))
    caplog.set_level(logging.WARNING, logger="dicomproxy.alerts")
    service.tick()
    service.tick()
    assert sent == [("start", "destination-held:CLOUD")]  # not seeing the hold is not seeing it end
    assert caplog.text.count("cannot evaluate destination-held") == 1
    holds.answer = {}
    service.tick()
    assert sent == [("start", "destination-held:CLOUD"), ("end", "destination-held:CLOUD")]
    journal.engine.dispose()


def test_an_incident_another_node_ends_meanwhile_is_not_opened_again(
    make_config: ConfigFactory, tmp_path: Path
) -> None:
    """Two nodes, one journal: while this node reads the hold (still there), the other node sees it
    gone and ends the incident. This round must not open it again (a second start message): the
    open incidents are read before the conditions (the race CI met in
    test_alerts.py::test_two_nodes_on_one_postgresql_journal_tell_once)."""
    from types import SimpleNamespace

    from dicomproxy.alerts.service import AlertService
    from dicomproxy.alerts.store import IncidentStore
    from dicomproxy.relay.journal import Journal

    config = make_config(
        alerting={"held_after": 0},
        alerts=[{"kind": "webhook", "url": "http://127.0.0.1:9/x", "incidents": ["destination-held"]}],
    )
    journal = Journal(f"sqlite:///{tmp_path / 'journal.db'}")
    other = IncidentStore(journal.engine, "NODE_B")
    holds = _Holds()
    service = AlertService(
        config,
        SimpleNamespace(journal=journal, push=SimpleNamespace(holds=holds), commitments=None, view=None),
    )
    sent: list[tuple[str, str]] = []
    service.sender.submit = lambda m: sent.append((str(m.phase), m.incident.key)) or 1  # type: ignore[method-assign]
    holds.answer = {"CLOUD": conditions.naive_utcnow()}
    service.tick()
    assert sent == [("start", "destination-held:CLOUD")]

    class EndedMeanwhile:
        def down_since(self) -> dict[str, dt.datetime]:
            other.close("destination-held:CLOUD")  # node B ends it while we read the stale hold
            return {"CLOUD": conditions.naive_utcnow()}

    service.ctx.push.holds = EndedMeanwhile()
    service.tick()
    assert sent == [("start", "destination-held:CLOUD")]  # neither a new start nor our own end
    holds.answer = {}
    service.ctx.push.holds = holds
    service.tick()
    assert sent == [("start", "destination-held:CLOUD")]  # B told the end; nothing is open here
    assert service.store.open_keys() == set()
    journal.engine.dispose()
