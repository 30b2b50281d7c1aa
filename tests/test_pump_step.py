"""The pump's decisions without sockets (dicomproxy.relay.pumpstep, issue 23).

Each case starts from a quiet job (nothing to do: WAIT) and changes what one situation changes.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from dicomproxy.relay.pumpstep import PROGRESS_INTERVAL, PumpView, Step, next_step

PENDING_INTERVAL = 5.0

QUIET = PumpView(
    cancelled=False,
    alive=True,
    lanes_up=1,
    reconnect_wanted=False,
    sent_into_loss=False,
    window=0,
    head_ready=False,
    free=True,
    in_flight=0,
    end=False,
    counted=True,
    recorded=False,
    first_or_last=False,
    since_progress=0.0,
    since_pending=0.0,
)


def step(**changes: object) -> Step:
    return next_step(replace(QUIET, **changes), PENDING_INTERVAL)  # type: ignore[arg-type]


def test_a_quiet_job_waits() -> None:
    assert step() is Step.WAIT


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"window": 1, "head_ready": True}, Step.SUBMIT),
        ({"window": 1, "head_ready": False}, Step.WAIT),  # its conversion is not done
        ({"window": 1, "head_ready": True, "free": False, "in_flight": 2}, Step.WAIT),  # lanes busy
        ({"end": True}, Step.FINISH),
        ({"end": True, "in_flight": 1, "free": True}, Step.WAIT),  # a lane's answer is still due
        ({"end": True, "window": 1, "head_ready": True}, Step.SUBMIT),  # what arrived goes first
    ],
)
def test_instances_are_handed_out_then_the_job_finishes(changes: dict[str, object], expected: Step) -> None:
    assert step(**changes) is expected


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"recorded": True, "first_or_last": True}, Step.PENDING),  # the first (or last) at once
        ({"recorded": True, "since_progress": PROGRESS_INTERVAL}, Step.PENDING),
        ({"recorded": True, "since_progress": PROGRESS_INTERVAL / 2}, Step.WAIT),  # not more often
        ({"since_pending": PENDING_INTERVAL}, Step.PENDING),  # nothing happens: the requester's timer
        ({"since_pending": PENDING_INTERVAL - 0.01}, Step.WAIT),
        ({"since_pending": 60.0, "counted": False}, Step.WAIT),  # no count known: no Pending (C.4.2.1.6)
        ({"recorded": True, "first_or_last": True, "counted": False}, Step.WAIT),
    ],
)
def test_pending_responses(changes: dict[str, object], expected: Step) -> None:
    assert step(**changes) is expected


def test_a_due_pending_response_is_not_starved_by_a_stream_of_instances() -> None:
    assert step(window=3, head_ready=True, recorded=True, since_progress=1.0) is Step.PENDING
    assert step(window=3, head_ready=True, since_pending=PENDING_INTERVAL) is Step.PENDING


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"cancelled": True, "window": 1, "head_ready": True}, Step.CANCELLED),
        ({"alive": False, "end": True}, Step.ABORTED),
        ({"cancelled": True, "alive": False}, Step.CANCELLED),
        ({"lanes_up": 0}, Step.DESTINATION_LOST),
        ({"lanes_up": 0, "end": True}, Step.DESTINATION_LOST),  # not a clean finish
        ({"reconnect_wanted": True, "lanes_up": 1, "free": False}, Step.RECONNECT),
        # lost for good by the instance just sent: the destination's failure, before the requester's
        ({"sent_into_loss": True, "lanes_up": 0, "alive": False}, Step.DESTINATION_LOST),
        ({"lanes_up": 0, "alive": False}, Step.ABORTED),  # the requester's association went first
    ],
)
def test_stops(changes: dict[str, object], expected: Step) -> None:
    assert step(**changes) is expected
