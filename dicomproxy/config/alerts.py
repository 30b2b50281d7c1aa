"""``[alerting]`` (thresholds) and ``[[alerts]]`` (who is told): alerts that reach a person.

Secrets (a robot's ``url`` with its key, the 钉钉 ``secret``, the SMTP ``password``) are written as
``${NAME}`` and taken from the environment at load, like every other secret of the file.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from dicomproxy.config.reader import Section, is_loopback, port, relative_path, unique_entries

#: The kinds of incident (docs/operations.md, Alerts), each with its severity.
INCIDENT_SEVERITY = {
    "destination-held": "critical",
    "readiness": "critical",
    "audit-chain": "critical",
    "push-failed": "warning",
    "commitment": "warning",
    "job-failures": "warning",
    "query-process": "warning",
}
INCIDENT_KINDS = tuple(INCIDENT_SEVERITY)
#: Lowest first: a target with ``min_severity = "warning"`` gets warnings and critical ones.
SEVERITIES = ("info", "warning", "critical")
TARGET_KINDS = ("webhook", "wecom", "dingtalk", "email")


@dataclass(frozen=True)
class AlertTarget:
    """One ``[[alerts]]`` entry: where messages go and which of them."""

    name: str
    kind: str
    incidents: tuple[str, ...] = INCIDENT_KINDS
    min_severity: str = "info"
    #: webhook / wecom / dingtalk: the URL POSTed to (a robot's URL carries its key).
    url: str = ""
    #: dingtalk: the robot's signing secret (``SEC…``); empty = the robot does not sign.
    secret: str = ""
    #: webhook: sent as ``Authorization: Bearer TOKEN``; empty = no header.
    token: str = ""
    #: email: the SMTP server (STARTTLS, certificate verified), its account and the addresses.
    smtp_host: str = ""
    smtp_port: int = 587
    starttls: bool = True
    username: str = ""
    password: str = ""
    sender: str = ""
    to: tuple[str, ...] = ()
    #: A CA bundle (PEM) that verifies the server (HTTPS or SMTP); empty = the system's CAs.
    ca: str = ""
    #: Seconds one delivery attempt may take.
    timeout: float = 10.0
    #: At most this many messages per rolling hour to this target (the rest is counted and logged).
    max_per_hour: int = 30

    def wants(self, kind: str, severity: str) -> bool:
        """Whether a message of this incident kind and severity goes to this target."""
        return kind in self.incidents and SEVERITIES.index(severity) >= SEVERITIES.index(self.min_severity)


@dataclass(frozen=True)
class AlertsConfig:
    """``[alerting]`` (every time is in seconds) and the ``[[alerts]]`` targets."""

    #: Seconds between two evaluations of the conditions (events wake it earlier).
    interval: float = 15.0
    #: A push destination held (down) longer than this is an incident.
    held_after: float = 600.0
    #: A readiness check failing longer than this is an incident.
    readiness_after: float = 120.0
    #: How often the audit trail's hash chain is verified.
    audit_interval: float = 3600.0
    #: Jobs ended in the last ``failure_window`` seconds: an incident when at least
    #: ``failure_min_jobs`` ended and the share failed (or partial) is above ``failure_rate``.
    failure_rate: float = 0.5
    failure_window: float = 900.0
    failure_min_jobs: int = 5
    #: This node's name in its readiness incidents (empty: host name and AE title).
    node: str = ""
    #: Delivery attempts after the first, with doubling back-off from ``retry_delay``.
    retries: int = 3
    retry_delay: float = 5.0
    #: Messages waiting per target; beyond, a message is dropped (and logged).
    queue_size: int = 100
    targets: tuple[AlertTarget, ...] = field(default=())


def alerting(s: Section, targets: Iterable[Section]) -> AlertsConfig:
    d = AlertsConfig()
    config = AlertsConfig(
        interval=s.number("interval", d.interval, lo=0.1),
        held_after=s.number("held_after", d.held_after),
        readiness_after=s.number("readiness_after", d.readiness_after),
        audit_interval=s.number("audit_interval", d.audit_interval, lo=1.0),
        failure_rate=s.number("failure_rate", d.failure_rate),
        failure_window=s.number("failure_window", d.failure_window, lo=1.0),
        failure_min_jobs=s.integer("failure_min_jobs", d.failure_min_jobs, lo=1),
        node=s.string("node", d.node),
        retries=s.integer("retries", d.retries, lo=0, hi=10),
        retry_delay=s.number("retry_delay", d.retry_delay),
        queue_size=s.integer("queue_size", d.queue_size, lo=1),
        targets=unique_entries(targets, _target, "name", "is used by another [[alerts]] entry"),
    )
    if config.failure_rate > 1:
        raise s.error("failure_rate", f"must be a share between 0 and 1, not {config.failure_rate}")
    s.finish()
    return config


def _target(t: Section) -> AlertTarget:
    d = AlertTarget(name="", kind="")
    kind = t.string("kind", choices=TARGET_KINDS)
    incidents = t.strings("incidents", INCIDENT_KINDS)
    for name in incidents:
        if name not in INCIDENT_KINDS:
            raise t.error("incidents", f"{name!r} is not an incident kind ({', '.join(INCIDENT_KINDS)})")
    ca = t.string("ca", "")
    if ca:
        ca = str(Path(relative_path(ca, t.path)).resolve())
        if not Path(ca).is_file():
            raise t.error("ca", f"file {ca} does not exist")
    target = AlertTarget(
        name=t.string("name", kind),
        kind=kind,
        incidents=incidents,
        min_severity=t.string("min_severity", d.min_severity, choices=SEVERITIES),
        ca=ca,
        timeout=t.number("timeout", d.timeout, lo=0.1),
        max_per_hour=t.integer("max_per_hour", d.max_per_hour, lo=1),
        **(_email(t) if kind == "email" else _http(t, kind)),
    )
    t.finish()
    return target


def _http(t: Section, kind: str) -> dict[str, str]:
    url = t.string("url")
    try:
        parts = urlsplit(url)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        ok, parts = False, None
    if not ok or parts is None:
        raise t.error("url", f"must be an http:// or https:// URL, not {url!r}")
    if kind != "webhook" and parts.scheme != "https" and not is_loopback(parts.hostname or ""):
        raise t.error("url", "must be https:// (the robot's key is in the URL)")
    secret = t.string("secret", "") if kind == "dingtalk" else ""
    token = t.string("token", "") if kind == "webhook" else ""
    return {"url": url, "secret": secret, "token": token}


def _email(t: Section) -> dict[str, object]:
    host = t.string("smtp_host")
    starttls = t.boolean("starttls", True)
    if not starttls and not is_loopback(host):
        raise t.error("starttls", "may be false only for an SMTP server on this machine (loopback)")
    to = t.strings("to")
    if not to:
        raise t.error("to", "must name at least one address")
    sender = t.string("from")
    for address in (sender, *to):
        if "@" not in address:
            raise t.error("to" if address in to else "from", f"{address!r} is not an e-mail address")
    username = t.string("username", "")
    password = t.string("password", "")
    if bool(username) != bool(password):
        raise t.error("password" if username else "username", "username and password go together")
    return {
        "smtp_host": host,
        "smtp_port": port(t, "smtp_port", 587),
        "starttls": starttls,
        "username": username,
        "password": password,
        "sender": sender,
        "to": to,
    }
