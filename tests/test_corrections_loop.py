"""The corrections service's pass (dicomproxy/corrections/loop.py) and its bounds: the sweep
reads the deliveries of the last ``[corrections] sweep_days`` only, and a destination on hold —
paused or down for push, or not reached during this pass — is not claimed for (docs/identity.md,
"Pacing"). On a real SQLite journal; the detector and the sender are stand-ins here (the end to end
cases are tests/test_iocm_real.py)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from typing import Any

import pytest
from sqlalchemy import update

from dicomproxy.config import MAX_SWEEP_DAYS
from dicomproxy.corrections.detect import CorrectionDetector
from dicomproxy.corrections.loop import CorrectionLoop
from dicomproxy.corrections.schema import DONE, DUE
from dicomproxy.corrections.store import Row, utcnow
from dicomproxy.errors import ConfigError
from dicomproxy.identity import Identity
from dicomproxy.identity.corrections import decide
from dicomproxy.push.holds import DOWN_PREFIX, held_now, pause, resume
from dicomproxy.push.queue import PushQueue
from dicomproxy.relay.journal import InstanceRecord, Journal, job_identities
from dicomproxy.status import JobKind
from dicomproxy.view.repository import ExamView
from testkit.samples import demo_specs, exam_row
from tests.conftest import ConfigFactory


def _delivered(journal: Journal, study: str, days_ago: float) -> None:
    job = journal.start(JobKind.MOVE, "CLOUD", "", "CLOUD", "pacs")
    journal.record_identities(job, "CLOUD", [Identity(study, "P1", "", "", "", "", "", "")])
    journal.add_instances(job, [InstanceRecord(f"{study}.1", "sent")])  # the destination confirmed one
    recorded = utcnow() - dt.timedelta(days=days_ago)
    with journal.engine.begin() as conn:
        conn.execute(update(job_identities).where(job_identities.c.job_id == job).values(recorded=recorded))


@pytest.mark.parametrize("days, swept", [(90, ["1.2.3.1"]), (0, ["1.2.3.1", "1.2.3.2"])])
def test_the_sweep_reads_the_deliveries_of_the_last_sweep_days(
    days: int, swept: list[str], make_config: ConfigFactory
) -> None:
    journal = Journal("sqlite://")
    _delivered(journal, "1.2.3.1", days_ago=10)
    _delivered(journal, "1.2.3.2", days_ago=400)
    loop = CorrectionLoop(make_config(corrections={"sweep_days": days}), None, journal, None, "node")
    seen: list[str] = []
    detector: CorrectionDetector = loop.detector
    detector.check = lambda uids: seen.extend(uids) or []  # type: ignore[method-assign]
    assert detector.sweep() == 0
    assert seen == swept


@pytest.mark.parametrize(
    "table, message",
    [
        ({"sweep_days": -1}, "sweep_days"),
        ({"sweep_days": MAX_SWEEP_DAYS + 1}, "sweep_days"),
        ({"sweep": -5}, "sweep"),
        ({"poll_interval": 0}, "poll_interval"),
        ({"sweeps": 1}, "sweeps"),
    ],
)
def test_corrections_keys_are_validated_at_load(
    table: dict[str, Any], message: str, make_config: ConfigFactory
) -> None:
    with pytest.raises(ConfigError, match=f"corrections.{message}"):
        make_config(corrections=table)


def test_the_defaults(make_config: ConfigFactory) -> None:
    c = make_config().corrections
    assert (c.enabled, c.poll_interval, c.sweep, c.sweep_days) == (True, 10.0, 900.0, 90)


class Sender:
    """Stands in for CorrectionSender: ``down`` destinations are not reached."""

    def __init__(self, store: Any, down: set[str]) -> None:
        self.store, self.down, self.ran = store, down, []

    def run(self, row: Row) -> str:
        self.ran.append(row.destination)
        state = DUE if row.destination in self.down else DONE
        self.store.finish(row.id, state, owner="")
        return state


@pytest.mark.parametrize(
    "held, down, ran",
    [
        ((), set(), ["A", "A", "B"]),
        ((), {"A"}, ["A", "B"]),  # A not reached: its second correction waits for the next pass
        (("B",), set(), ["A", "A"]),  # B paused or down for push: not claimed
    ],
)
def test_a_pass_skips_destinations_on_hold(
    held: tuple[str, ...], down: set[str], ran: list[str], make_config: ConfigFactory
) -> None:
    journal = Journal("sqlite://")
    loop = CorrectionLoop(make_config(), None, journal, None, "node", held=lambda: held)
    old = Identity("1.2.3.9", "P-OLD", "", "", "", "", "", "")
    correction = decide(old, None)
    assert correction is not None
    for dest, digest in (("A", "1"), ("A", "2"), ("B", "3")):
        assert loop.store.record(dest, dataclasses.replace(correction, old_digest=digest), iocm=True)
    loop.detector.changed = lambda: 0  # type: ignore[method-assign]
    loop.detector.sweep = lambda: 0  # type: ignore[method-assign]
    sender = Sender(loop.store, down)
    loop.sender = sender  # type: ignore[assignment]
    loop.run_pass()
    assert sender.ran == ran


def test_a_delivery_journalled_without_its_exam_gets_it_when_compared(
    make_config: ConfigFactory, sqlite_view: Any
) -> None:
    """A C-MOVE of an earlier version recorded no exam: the first comparison records it while the
    row still names the study (so a later re-link is not taken for a withdrawal)."""
    spec = demo_specs()[0]
    config = make_config()
    view = ExamView(config)
    journal = Journal("sqlite://")
    _delivered(journal, spec.study_uid, days_ago=1)
    loop = CorrectionLoop(config, view, journal, None, "node")
    assert loop.store.exams_of([spec.study_uid]) == {}
    loop.detector.check([spec.study_uid])
    assert loop.store.exams_of([spec.study_uid]) == {spec.study_uid: [exam_row(spec)["ExamineID"]]}
    view.close()


def test_push_pauses_and_down_holds_hold_the_corrections_of_any_peer() -> None:
    """What ``serve`` gives the corrections as ``held`` (push enabled or not): `push pause` of one
    destination or of every one, and push's down holds."""
    queue = PushQueue(Journal("sqlite://").engine, "node")
    peers = ["A", "B", "C"]
    assert held_now(queue, peers) == (False, [])
    pause(queue, "A")
    queue.set_state(
        DOWN_PREFIX + "B", json.dumps({"until": (utcnow() + dt.timedelta(minutes=5)).isoformat()})
    )
    queue.set_state(
        DOWN_PREFIX + "C", json.dumps({"until": (utcnow() - dt.timedelta(minutes=5)).isoformat()})
    )
    assert held_now(queue, peers) == (False, ["A", "B"])  # C's hold ended
    pause(queue, None)
    assert held_now(queue, peers) == (True, peers)
    resume(queue, None)
    resume(queue, "A")
    assert held_now(queue, peers) == (False, ["B"])
