"""Destination holds and pauses, shared by the nodes in ``push_state``.

A destination that cannot be reached is *held*: ``down:<AE>`` records since when, until when and
the current delay (``retry_delay``, doubling to ``max_retry_delay``); no node claims its items
until the hold ends, then one attempt probes it. One WARNING line when it goes down and one INFO
line when it is back, written by whichever node sees the change. ``paused:<AE>`` (and
``paused:*``) are the operator's pauses (``push pause``/``push resume``).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterable

from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError

from dicomproxy import events
from dicomproxy.config import PushConfig
from dicomproxy.push.queue import LIVE, PAUSED_ALL, PushQueue, utcnow
from dicomproxy.push.schema import push_state

LOG = logging.getLogger("dicomproxy.push")

DOWN_PREFIX = "down:"
PAUSED_PREFIX = "paused:"
#: ``paused-lane:backfill``: ``push pause --lane backfill`` (that lane's workers only).
LANE_PAUSED_PREFIX = "paused-lane:"


class DestinationHolds:
    """Pauses and down/up bookkeeping of the ``[push] destinations``."""

    def __init__(self, queue: PushQueue, push: PushConfig) -> None:
        self.queue = queue
        self.push = push

    def held(self, lane: str = LIVE) -> tuple[bool, list[str]]:
        """(everything paused — or ``lane`` — , destinations paused or held down now)."""
        return held_now(self.queue, self.push.destinations, lane)

    def down_since(self) -> dict[str, dt.datetime]:
        """Each destination held down now (by any node), with when its hold began (naive UTC)."""
        return {
            name[len(DOWN_PREFIX) :]: dt.datetime.fromisoformat(json.loads(text)["since"])
            for name, text in self.queue.states(DOWN_PREFIX).items()
        }

    def until(self, destination: str) -> dt.datetime:
        """When the hold on ``destination`` ends (``retry_delay`` from now when there is none)."""
        text = self.queue.get_state(DOWN_PREFIX + destination)
        if not text:
            return utcnow() + dt.timedelta(seconds=self.push.retry_delay)
        return dt.datetime.fromisoformat(json.loads(text)["until"])

    def down(self, destination: str, reason: str) -> None:
        """``destination`` could not be reached: hold it, or double an expired hold."""
        name = DOWN_PREFIX + destination
        text = self.queue.get_state(name)
        now = utcnow()
        if text:
            hold = json.loads(text)
            if dt.datetime.fromisoformat(hold["until"]) > now:
                return  # another worker or node already extended it
            delay = min(self.push.max_retry_delay, float(hold["delay"]) * 2)
            hold.update(until=(now + dt.timedelta(seconds=delay)).isoformat(), delay=delay)
            self.queue.set_state(name, json.dumps(hold))
            return
        delay = self.push.retry_delay
        hold = {
            "since": now.isoformat(),
            "until": (now + dt.timedelta(seconds=delay)).isoformat(),
            "delay": delay,
        }
        try:
            with self.queue.engine.begin() as conn:
                self.queue.set_state(name, json.dumps(hold), conn)
        except IntegrityError:
            return  # another node recorded it first (and logged it)
        LOG.warning(
            "push: destination %s is down (%s); its queue is held, tried again with backoff",
            destination,
            reason[:200],
        )
        events.publish(events.PushDestination(destination, up=False, reason=reason[:200]))

    def up(self, destination: str) -> bool:
        """Something reached ``destination``: its hold ends. True when this call ended it (the
        caller wakes the workers)."""
        name = DOWN_PREFIX + destination
        if self.queue.get_state(name) is None:
            return False
        with self.queue.engine.begin() as conn:
            gone = conn.execute(delete(push_state).where(push_state.c.name == name)).rowcount
        if not gone:
            return False
        LOG.info("push: destination %s is back", destination)
        events.publish(events.PushDestination(destination, up=True))
        return True


def held_now(queue: PushQueue, destinations: Iterable[str], lane: str = LIVE) -> tuple[bool, list[str]]:
    """(everything paused — or ``lane`` — , those of ``destinations`` paused or held down now):
    push's workers, and the corrections after delivery (docs/identity.md, "Pacing") for every
    peer, whether this node pushes or not."""
    wanted = list(destinations)
    states = queue.states()
    if PAUSED_ALL in states or LANE_PAUSED_PREFIX + lane in states:
        return True, wanted
    now = utcnow()
    held = []
    for ae in wanted:
        if PAUSED_PREFIX + ae in states:
            held.append(ae)
            continue
        down = states.get(DOWN_PREFIX + ae)
        if down and dt.datetime.fromisoformat(json.loads(down)["until"]) > now:
            held.append(ae)
    return False, held


def pause(queue: PushQueue, destination: str | None, lane: str | None = None) -> None:
    """The operator's pause of ``destination`` (None: every one) or of a ``lane``: no delivery
    starts; the watcher keeps queueing (``push pause``, the console's ``POST /api/push/pause``)."""
    name = PAUSED_PREFIX + destination if destination else PAUSED_ALL
    queue.set_state(LANE_PAUSED_PREFIX + lane if lane else name, utcnow().isoformat())


def resume(queue: PushQueue, destination: str | None, lane: str | None = None) -> None:
    """Undo :func:`pause`; for one destination also end its down hold (it is tried now)."""
    if lane:
        queue.delete_state(LANE_PAUSED_PREFIX + lane)
        return
    names = [PAUSED_PREFIX + destination, DOWN_PREFIX + destination] if destination else [PAUSED_ALL]
    for name in names:
        queue.delete_state(name)
