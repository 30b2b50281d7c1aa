"""Push mode in ``/metrics`` (registered by :class:`dicomproxy.console.metrics.Metrics` when push runs).

- ``dicomproxy_push_queue{destination,state}``: items now, read from the journal at scrape time
  (the queue is shared by every node, so each node reports the whole queue);
- ``dicomproxy_push_attempts_total{destination,outcome}``: this node's ended attempts
  (delivered, images-delivered, waiting, failed, dropped, destination-down) and re-checks that
  found nothing to send (rechecked; one that found more ends as its delivery does);
- ``dicomproxy_push_destination_up{destination}``: 0 while this node holds a destination as down.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from dicomproxy import events
from dicomproxy.config import Config
from dicomproxy.push.queue import STATES


class _QueueCollector(Collector):
    def __init__(self, config: Config, counts: Callable[[], dict[tuple[str, str], int]]) -> None:
        self.config = config
        self.counts = counts

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "dicomproxy_push_queue",
            "Push queue items by destination and state",
            labels=["destination", "state"],
        )
        try:
            counts = self.counts()
        except Exception:  # the journal is down: no sample rather than a failed scrape
            counts = {}
        for dest in self.config.push.destinations:
            for state in STATES:
                family.add_metric([dest, state], counts.get((dest, state), 0))
        yield family


class PushMetrics:
    """The push series of one :class:`~dicomproxy.console.metrics.Metrics` registry; an event subscriber."""

    def __init__(
        self, registry: CollectorRegistry, config: Config, counts: Callable[[], dict[tuple[str, str], int]]
    ) -> None:
        registry.register(_QueueCollector(config, counts))
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
