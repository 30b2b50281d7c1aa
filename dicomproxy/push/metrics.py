"""Push mode in ``/metrics`` (registered by :class:`dicomproxy.console.metrics.Metrics` when push runs).

- ``dicomproxy_push_queue{destination,state}``: items now, read from the journal at scrape time
  (the queue is shared by every node, so each node reports the whole queue);
- ``dicomproxy_push_rechecks_pending{destination}``: delivered items (counted in ``done``) that
  still have a re-check to come (late images, ``[push] rechecks``), read the same way;
- ``dicomproxy_push_attempts_total{destination,outcome}``: this node's ended attempts
  (delivered, images-delivered, waiting, failed, dropped, destination-down) and re-checks that
  found nothing to send (rechecked; one that found more ends as its delivery does);
- ``dicomproxy_push_destination_up{destination}``: 0 while this node holds a destination as down.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from dicomproxy import events
from dicomproxy.config import Config
from dicomproxy.push.backfill import lane_progress
from dicomproxy.push.queue import STATES, PushQueue


class _QueueCollector(Collector):
    def __init__(self, config: Config, queue: PushQueue) -> None:
        self.config = config
        self.queue = queue

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "dicomproxy_push_queue",
            "Push queue items by destination and state",
            labels=["destination", "state"],
        )
        rechecks = GaugeMetricFamily(
            "dicomproxy_push_rechecks_pending",
            "Delivered push items (in state done) with a re-check for late images still to come",
            labels=["destination"],
        )
        lanes = GaugeMetricFamily(
            "dicomproxy_push_lane_items",
            "Push queue items by lane (live, backfill) and state",
            labels=["lane", "state"],
        )
        left = GaugeMetricFamily(
            "dicomproxy_push_lane_eta_seconds",
            "Seconds until a lane's items are through at the last hour's rate (absent: none done lately)",
            labels=["lane"],
        )
        try:
            counts = self.queue.counts()
            pending = self.queue.rechecks_pending()
            progress = lane_progress(self.queue)
        except Exception:  # the journal is down: no sample rather than a failed scrape
            counts, pending, progress = {}, {}, []
        for dest in self.config.push.destinations:
            for state in STATES:
                family.add_metric([dest, state], counts.get((dest, state), 0))
            rechecks.add_metric([dest], pending.get(dest, (0, None))[0])
        for lane in progress:
            for state in STATES:
                lanes.add_metric([lane.lane, state], lane.counts.get(state, 0))
            if lane.eta_seconds is not None:
                left.add_metric([lane.lane], lane.eta_seconds)
        yield family
        yield rechecks
        yield lanes
        yield left


class PushMetrics:
    """The push series of one :class:`~dicomproxy.console.metrics.Metrics` registry; an event subscriber."""

    def __init__(self, registry: CollectorRegistry, config: Config, queue: PushQueue) -> None:
        registry.register(_QueueCollector(config, queue))
        self.attempts = Counter(
            "dicomproxy_push_attempts_total",
            "Push deliveries ended, by destination and outcome",
            ["destination", "outcome"],
            registry=registry,
        )
        self.up = Gauge(
            "dicomproxy_push_destination_up",
            "0 while a push destination is held as down",
            ["destination"],
            registry=registry,
        )
        for dest in config.push.destinations:
            self.up.labels(dest).set(1)
        self.destinations = set(config.push.destinations)

    def __call__(self, event: events.Event) -> None:
        if isinstance(event, events.PushDelivered) and event.destination in self.destinations:
            self.attempts.labels(event.destination, event.outcome).inc()
        elif isinstance(event, events.PushDestination) and event.destination in self.destinations:
            self.up.labels(event.destination).set(1 if event.up else 0)
