"""What an alert says: an :class:`Incident` (a condition with a key) and the :class:`Message` that
tells a person it started, ended, or that the target works (``alerts test``).

No patient data, ever: an incident's facts are AE titles, check names, counts, push item IDs and
job IDs, put there by :mod:`dicomproxy.alerts.conditions` — never a free text from the DICOM path
(an error message may quote a query). The hospital's name and ID and the node's name are not
patient data.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass
from typing import Any

from dicomproxy.config import INCIDENT_SEVERITY, Config

PRODUCT = "dicomproxy"
#: 企业微信 caps markdown content at 4096 bytes and text at 2048; 钉钉 at 20000. Ours stay far below.
MAX_BODY_BYTES = 2000


class Phase(str, enum.Enum):
    START = "start"
    END = "end"
    TEST = "test"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Incident:
    """One condition that holds now: ``key`` names it among the nodes (``destination-held:CLOUD``)."""

    key: str
    kind: str
    title: str
    #: (label, value) pairs shown under the title: AE titles, check names, counts, IDs.
    facts: tuple[tuple[str, str], ...] = ()

    @property
    def severity(self) -> str:
        return INCIDENT_SEVERITY[self.kind]


@dataclass(frozen=True)
class Message:
    """One message to the targets that want it."""

    phase: Phase
    incident: Incident
    hospital: str
    node: str
    time: dt.datetime
    #: Messages this target's rate limit held back before this one (set by the sender).
    suppressed: int = 0

    @property
    def severity(self) -> str:
        return "info" if self.phase is Phase.TEST else self.incident.severity

    @property
    def headline(self) -> str:
        label = {Phase.START: "PROBLEM", Phase.END: "RESOLVED", Phase.TEST: "TEST"}[self.phase]
        return f"[{PRODUCT}] {label} ({self.severity}): {self.incident.title}"

    def lines(self) -> list[tuple[str, str]]:
        facts = [
            ("hospital", self.hospital),
            ("node", self.node),
            ("incident", self.incident.key),
            ("time", self.time.strftime("%Y-%m-%d %H:%M:%S UTC")),
            *self.incident.facts,
        ]
        if self.suppressed:
            facts.append(("rate limit", f"{self.suppressed} earlier alert(s) held back, see the log"))
        return facts

    def text(self) -> str:
        body = "\n".join([self.headline, *(f"{k}: {v}" for k, v in self.lines())])
        return _cap(body)

    def markdown(self, colour: bool = True) -> str:
        """A heading and a quote block; ``colour``: 企业微信's ``<font color>`` on the heading
        (``warning`` orange-red for a problem, ``info`` green otherwise)."""
        head = f"### {self.headline}"
        if colour:
            tone = "warning" if self.phase is Phase.START else "info"
            head = f'### <font color="{tone}">{self.headline}</font>'
        return _cap("\n".join([head, *(f"> **{k}**: {v}" for k, v in self.lines())]))

    def as_json(self) -> dict[str, Any]:
        return {
            "source": PRODUCT,
            "phase": str(self.phase),
            "key": self.incident.key,
            "kind": self.incident.kind,
            "severity": self.severity,
            "title": self.incident.title,
            "facts": dict(self.incident.facts),
            "hospital": self.hospital,
            "node": self.node,
            "time": self.time.isoformat(),
            "suppressed": self.suppressed,
            "text": self.text(),
        }


def _cap(body: str) -> str:
    raw = body.encode("utf-8")
    if len(raw) <= MAX_BODY_BYTES:
        return body
    return raw[: MAX_BODY_BYTES - 3].decode("utf-8", errors="ignore") + "..."


def hospital_label(config: Config) -> str:
    name, hid = config.hospital.name, config.hospital.id
    return f"{name} ({hid})" if name else hid


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def message(config: Config, node: str, phase: Phase, incident: Incident) -> Message:
    return Message(phase, incident, hospital_label(config), node, utcnow())


def test_incident() -> Incident:
    """What ``dicomproxy alerts test`` sends."""
    return Incident("test", "readiness", "test message: this target receives dicomproxy's alerts")
