"""Sending at a capped rate: the token bucket, and the bandwidth timetable applied at run time.

:class:`RateLimiter` is the one token bucket of the project (push's ``max_mbps`` and
``backfill_mbps`` use it too, through :mod:`dicomproxy.push.pacing`). :class:`Bandwidth` applies
``[[bandwidth]]``: one bucket per rule, filled at the rule's rate divided by the nodes alive on
the journal (:mod:`dicomproxy.relay.liveness`), so that the nodes together send at most the rule's
rate — the cap is what leaves the hospital, not what one process sends. Which rule is in force
is :mod:`dicomproxy.relay.timetable`'s (pure).

The throttle is :class:`~dicomproxy.relay.forward.Forwarder`'s — the one place every onward C-STORE
passes (push, C-MOVE, C-GET, retries); the link calls it with the bytes as they are written, per
slice of at most 1 MiB (:data:`~dicomproxy.transport.seam.Pace`), so a large instance is paced as it
goes, not sent at line speed and paid for afterwards.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Engine

from dicomproxy.config import BandwidthRule, Config
from dicomproxy.relay.liveness import Heartbeat, NodeRegistry
from dicomproxy.relay.timetable import Change, describe, next_change, rule_at

LOG = logging.getLogger("dicomproxy.relay")

#: Seconds of sending at the cap the bucket may save up while idle.
BURST = 0.2


class RateLimiter:
    """A token bucket in bytes: ``take(n)`` returns once ``n`` bytes fit under ``mbps`` on average.

    Shared by every job to one destination (the cap is per destination, not per study). The
    bucket starts empty and holds at most :data:`BURST` seconds of credit, so neither the start
    nor the end of a pause is followed by a burst longer than that. :meth:`set_rate` changes
    the rate from now on (the timetable's next period, another node's arrival).
    """

    def __init__(
        self,
        mbps: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rate = mbps * 1_000_000 / 8  # bytes per second
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._credit = 0.0  # bytes
        self._last = clock()

    def _refill(self, now: float) -> None:
        self._credit = min(self.rate * BURST, self._credit + (now - self._last) * self.rate)
        self._last = now

    def set_rate(self, mbps: float) -> None:
        """Fill at ``mbps`` from now on (what was earned so far at the old rate is kept)."""
        rate = mbps * 1_000_000 / 8
        if rate == self.rate:
            return
        with self._lock:
            self._refill(self._clock())
            self.rate = rate

    def take(self, nbytes: int) -> float:
        """Wait until ``nbytes`` may go (after they were sent: the average is what counts); the
        seconds waited."""
        with self._lock:
            self._refill(self._clock())
            self._credit -= nbytes
            wait = -self._credit / self.rate if self._credit < 0 else 0.0
        if wait > 0:
            self._sleep(wait)
        return wait


@dataclass(frozen=True)
class InForce:
    """The timetable for one destination now (``push status``, the status page): the rule's rate
    (None = no cap), this node's share of it, the nodes sharing it, and the next change."""

    destination: str
    mbps: float | None
    share: float | None
    nodes: int
    rule: str
    change: Change | None

    def as_dict(self) -> dict[str, Any]:
        """For ``push status --json`` and the status page (no patient data: AE titles, rates)."""
        change = self.change
        return {
            "destination": self.destination,
            "mbps": self.mbps,
            "node_mbps": self.share,
            "nodes": self.nodes,
            "rule": self.rule,
            "next_change": None
            if change is None
            else {"at": change.at.isoformat(timespec="minutes"), "mbps": change.mbps},
        }

    def line(self) -> str:
        """``40 Mbit/s (bandwidth[0], 20 Mbit/s for each of 2 nodes) until 2026-12-07 18:00, then no cap``."""
        text = describe(self.mbps)
        if self.mbps is not None:
            text += f" ({self.rule}" + (
                f", {describe(self.share)} for each of {self.nodes} nodes)" if self.nodes > 1 else ")"
            )
        change = self.change
        if change is None:
            return text + ", no change ahead"
        return text + f" until {change.at:%a %Y-%m-%d %H:%M}, then {describe(change.mbps)}"


def capped_destinations(config: Config) -> list[str]:
    """The destinations the timetable caps: push's, and the peers with ``cap_pulls``."""
    if not config.bandwidth:
        return []
    return list(
        dict.fromkeys([*config.push.destinations, *(p.ae_title for p in config.peers if p.cap_pulls)])
    )


class Bandwidth:
    """``[[bandwidth]]`` at run time: :meth:`throttle` gives a destination's sender its cap.

    ``nodes`` is how many nodes share the journal (set by the heartbeat,
    :class:`~dicomproxy.relay.liveness.Heartbeat`); ``local_now`` the local time the rules are read
    at (tests inject one); ``clock`` and ``sleep`` are the buckets'.
    """

    def __init__(
        self,
        rules: Sequence[BandwidthRule],
        *,
        local_now: Callable[[], dt.datetime] = dt.datetime.now,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rules = tuple(rules)
        self.local_now = local_now
        self.nodes = 1
        self._clock = clock
        self._sleep = sleep
        self._buckets: dict[int, RateLimiter] = {}
        self._lock = threading.Lock()
        self._heartbeat: Heartbeat | None = None
        #: Destinations whose rate in force is logged when it changes (at each heartbeat).
        self._watched: dict[str, tuple[str, int]] = {}

    def start(self, engine: Engine, node: str, destinations: Sequence[str] = ()) -> None:
        """Count the nodes alive on the journal ``engine`` from now on, and log the rate in force
        for ``destinations`` now and whenever it changes (nothing without rules)."""
        if self.rules and self._heartbeat is None:
            self._watched = {d: ("?", 0) for d in destinations}
            self._heartbeat = Heartbeat(NodeRegistry(engine, node), self._counted)
            self._heartbeat.start()

    def _counted(self, nodes: int) -> None:
        self.nodes = nodes
        for destination, seen in self._watched.items():
            now = self.in_force(destination)
            if (now.rule, now.nodes) != seen:
                LOG.info("bandwidth to %s: %s", destination, now.line())
                self._watched[destination] = (now.rule, now.nodes)

    def stop(self) -> None:
        """Stop the heartbeat and leave the table (the other nodes take up this node's share)."""
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None

    @property
    def enabled(self) -> bool:
        return bool(self.rules)

    def share(self, mbps: float) -> float:
        """This node's part of a rule's rate: shared equally by the nodes alive."""
        return mbps / max(1, self.nodes)

    def set_rules(self, rules: Sequence[BandwidthRule]) -> None:
        """A reloaded ``[[bandwidth]]`` (docs/operations.md, Reload): the next charge reads the new
        rules with fresh buckets. A job that started without a timetable stays uncapped."""
        with self._lock:
            self.rules = tuple(rules)
            self._buckets.clear()

    def throttle(self, destination: str) -> Callable[[int], float] | None:
        """What a sender to ``destination`` calls with the bytes it wrote (it waits
        while the rule in force is exceeded); None when there is no timetable."""
        if not self.rules:
            return None
        return lambda nbytes: self.take(destination, nbytes)

    def take(self, destination: str, nbytes: int) -> float:
        """Charge ``nbytes`` sent to ``destination`` to the bucket of the rule in force (destinations
        under one rule for all share its bucket); the seconds waited."""
        rule = rule_at(self.rules, destination, self.local_now())
        if rule is None:
            return 0.0
        with self._lock:
            bucket = self._buckets.get(rule.index)
            if bucket is None:
                bucket = self._buckets[rule.index] = RateLimiter(
                    self.share(rule.mbps), self._clock, self._sleep
                )
        bucket.set_rate(self.share(rule.mbps))
        return bucket.take(nbytes)

    def in_force(self, destination: str) -> InForce:
        """The rate in force for ``destination`` now, this node's share and the next change."""
        now = self.local_now()
        rule = rule_at(self.rules, destination, now)
        mbps = rule.mbps if rule is not None else None
        return InForce(
            destination,
            mbps,
            self.share(mbps) if mbps is not None else None,
            self.nodes,
            rule.name if rule is not None else "",
            next_change(self.rules, destination, now),
        )
