"""Prometheus metrics (``GET /metrics``), fed by :mod:`dicomproxy.events`.

prometheus-client is the reference implementation of the text format (escaping, histogram
buckets, ``_total``/``_created`` series); each :class:`Metrics` has its own registry, so two
proxies in one test process never share counters. Names follow the Prometheus conventions
(``dicomproxy_…_total``, ``…_seconds``, ``…_bytes``). Labels never carry patient data; peer labels
are configured AE titles only (anything else is ``other``: a scan from many AE titles must not
create unbounded series).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from dicomproxy import events
from dicomproxy.config import Config
from dicomproxy.console.health import QUERY_PROCESS_STATES
from dicomproxy.status import Status, status_label

if TYPE_CHECKING:
    from dicomproxy.push.queue import PushQueue
    from dicomproxy.reconcile.summary import RunSummary
    from dicomproxy.relay.bandwidth import InForce
    from dicomproxy.relay.commitments import CommitmentLedger

#: Where a failure status of a C-FIND or a job points (our 0xC0xx range, dicomproxy.status).
ERROR_SOURCES = {
    Status.VIEW_UNAVAILABLE: "view",
    Status.PACS_UNAVAILABLE: "pacs",
    Status.DESTINATION_UNAVAILABLE: "destination",
}

#: A-ASSOCIATE-RJ reason (PS3.8 Table 9-21, source service-user) → label.
REJECT_REASONS = {
    0x01: "no_reason_given",
    0x03: "calling_ae_not_recognized",
    0x07: "called_ae_not_recognized",
}

FIND_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
JOB_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


class Metrics:
    """Counters and histograms updated by events; gauges read when scraped."""

    def __init__(
        self,
        config: Config,
        open_associations: Callable[[], float],
        running_jobs: Callable[[], float],
        spool_bytes: Callable[[], float],
        push_queue: PushQueue | None = None,
        commitments: CommitmentLedger | None = None,
        reconcile_runs: Callable[[], list[RunSummary]] | None = None,
        bandwidth: Callable[[], list[InForce]] | None = None,
        query_process: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        """``push_queue``: the push queue when push mode runs, read at scrape time (push/metrics.py);
        ``commitments``: the Storage Commitment ledger when a peer commits (:class:`CommitmentMetrics`);
        ``reconcile_runs``: the newest ``dicomproxy reconcile`` run per destination, read at scrape time;
        ``bandwidth``: the ``[[bandwidth]]`` timetable in force per capped destination, read at
        scrape time (:class:`_BandwidthCollector`); ``query_process``: the state of ``serve``'s query
        process when it runs one (:class:`_QueryProcessCollector`)."""
        self.config = config
        r = self.registry = CollectorRegistry(auto_describe=True)
        _scrape_gauges(r, open_associations, running_jobs, spool_bytes)
        if reconcile_runs is not None:
            r.register(_ReconcileCollector(reconcile_runs))
        if bandwidth is not None:
            r.register(_BandwidthCollector(bandwidth))
        if query_process is not None:
            r.register(_QueryProcessCollector(query_process))
        self.associations = Counter(
            "dicomproxy_associations_total",
            "Association requests by calling peer, result and rejection reason",
            ["peer", "result", "reason"],
            registry=r,
        )
        self.finds = Counter(
            "dicomproxy_cfind_total",
            "C-FIND requests by level, source (view/pacs) and final status",
            ["level", "source", "status"],
            registry=r,
        )
        self.find_seconds = Histogram(
            "dicomproxy_cfind_seconds",
            "C-FIND duration by level and source",
            ["level", "source"],
            buckets=FIND_BUCKETS,
            registry=r,
        )
        self.find_matches = Counter(
            "dicomproxy_cfind_matches_total", "C-FIND matches returned", ["level", "source"], registry=r
        )
        self.jobs = Counter(
            "dicomproxy_jobs_total",
            "Finished relay jobs by kind and outcome",
            ["kind", "outcome"],
            registry=r,
        )
        self.job_seconds = Histogram(
            "dicomproxy_job_seconds", "Relay job duration by kind", ["kind"], buckets=JOB_BUCKETS, registry=r
        )
        self.instances = Counter(
            "dicomproxy_instances_sent_total",
            "Sub-operations by compression mode, transfer syntax sent and result",
            ["mode", "transfer_syntax", "result"],
            registry=r,
        )
        self.bytes = Counter(
            "dicomproxy_sent_bytes_total",
            "Bytes sent to destinations by compression mode and transfer syntax",
            ["mode", "transfer_syntax"],
            registry=r,
        )
        self.transcode_seconds = Histogram(
            "dicomproxy_transcode_seconds",
            "CPU seconds converting one instance for its destination, by target transfer syntax",
            ["transfer_syntax"],
            registry=r,
        )
        self.retries = Counter("dicomproxy_retries_total", "Job retries requested", registry=r)
        self.corrections = Counter(
            "dicomproxy_corrections_total",
            "Corrections after delivery (IOCM) by destination, kind and outcome "
            "(detected | warned when found; done | failed | retry when carried out)",
            ["destination", "kind", "outcome"],
            registry=r,
        )
        self.errors = Counter(
            "dicomproxy_errors_total",
            "Failures by where they arose (view database, pacs, destination, journal)",
            ["where"],
            registry=r,
        )
        self._modes: dict[int, str] = {}  # job id → compression mode of its destination
        self._optional_series(push_queue, commitments)

    def _optional_series(self, push_queue: PushQueue | None, commitments: CommitmentLedger | None) -> None:
        """Push mode's and Storage Commitment's series, when they run."""
        self.push: Callable[[events.Event], None] | None = None
        if push_queue is not None:
            from dicomproxy.push.metrics import PushMetrics

            self.push = PushMetrics(self.registry, self.config, push_queue)
        self.commitment = CommitmentMetrics(self.registry, commitments) if commitments is not None else None

    def _peer_label(self, ae_title: str) -> str:
        if self.config.peer(ae_title) is not None or self.config.archive_for_ae(ae_title) is not None:
            return ae_title.strip()
        return "other"

    def _mode(self, destination: str) -> str:
        peer = self.config.peer(destination)
        if peer is not None and peer.compression is not None:
            return peer.compression
        return self.config.compression.mode

    def __call__(self, event: events.Event) -> None:
        """The event subscriber."""
        if self.push is not None:
            self.push(event)
        if self.commitment is not None and isinstance(event, events.CommitmentAnswered):
            self.commitment(event)
        if isinstance(event, events.AssociationAccepted):
            self.associations.labels(self._peer_label(event.peer.calling_ae), "accepted", "").inc()
        elif isinstance(event, events.AssociationRejected):
            reason = REJECT_REASONS.get(event.reason_code, "other")
            self.associations.labels(self._peer_label(event.peer.calling_ae), "rejected", reason).inc()
        elif isinstance(event, events.FindDone):
            self.finds.labels(event.level, event.source, status_label(event.status)).inc()
            self.find_seconds.labels(event.level, event.source).observe(event.seconds)
            self.find_matches.labels(event.level, event.source).inc(event.matches)
            self._error(event.status)
        elif isinstance(event, events.JobStarted):
            self._modes[event.job_id] = self._mode(event.destination)
        elif isinstance(event, events.InstanceSent):
            mode = self._modes.get(event.job_id, self.config.compression.mode)
            ts = event.transfer_syntax or "none"
            self.instances.labels(mode, ts, event.state).inc()
            if event.state != "failed":
                self.bytes.labels(mode, ts).inc(event.bytes)
        elif isinstance(event, events.Transcoded):
            self.transcode_seconds.labels(event.transfer_syntax).observe(event.seconds)
        elif isinstance(event, events.JobFinished):
            self._modes.pop(event.job_id, None)
            self.jobs.labels(event.kind, event.outcome).inc()
            self.job_seconds.labels(event.kind).observe(event.seconds)
            self._error(event.status)
        elif isinstance(event, events.RetrieveRefused):
            self.jobs.labels(event.kind, "refused").inc()
        elif isinstance(event, events.RetryRequested):
            self.retries.inc()
        elif isinstance(event, events.CorrectionFound):
            self.corrections.labels(
                event.destination, event.kind, "detected" if event.acted else "warned"
            ).inc()
        elif isinstance(event, events.CorrectionSent):
            self.corrections.labels(event.destination, event.kind, event.outcome).inc()
        elif isinstance(event, events.Failure):
            self.errors.labels(event.where).inc()

    def _error(self, status: int) -> None:
        where = ERROR_SOURCES.get(status)  # type: ignore[call-overload]
        if where is not None:
            self.errors.labels(where).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def _scrape_gauges(
    r: CollectorRegistry,
    open_associations: Callable[[], float],
    running_jobs: Callable[[], float],
    spool_bytes: Callable[[], float],
) -> None:
    """The gauges of :class:`Metrics` read when scraped (each calls its function then)."""
    Gauge("dicomproxy_associations_open", "Inbound associations open now", registry=r).set_function(
        open_associations
    )
    Gauge("dicomproxy_jobs_running", "C-MOVE/C-GET jobs running now (queue depth)", registry=r).set_function(
        running_jobs
    )
    Gauge("dicomproxy_spool_bytes", "Bytes of instances held in the spool now", registry=r).set_function(
        spool_bytes
    )


class _QueryProcessCollector(Collector):
    """``dicomproxy_query_process_state{state}``: 1 for the state the query process is in, 0 for the
    others (a state set, as prometheus-client's ``Enum`` writes it), and its open associations."""

    def __init__(self, state: Callable[[], dict[str, Any]]) -> None:
        self.state = state

    def collect(self) -> Iterator[GaugeMetricFamily]:
        now = self.state()
        family = GaugeMetricFamily(
            "dicomproxy_query_process_state",
            "State of the child process serving C-FIND/C-ECHO-only associations (lost: served by serve)",
            labels=["state"],
        )
        for name in QUERY_PROCESS_STATES:
            family.add_metric([name], 1.0 if now["state"] == name else 0.0)
        yield family
        yield GaugeMetricFamily(
            "dicomproxy_query_process_associations",
            "Associations open in the query process now (also counted in dicomproxy_associations_open)",
            value=float(now["associations"]),
        )


class _PendingCollector(Collector):
    def __init__(self, ledger: CommitmentLedger) -> None:
        self.ledger = ledger

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "dicomproxy_commitment_pending",
            "Instances asked to be committed and not yet answered, by destination",
            labels=["destination"],
        )
        try:
            pending = self.ledger.pending()
        except Exception:  # the journal is down: no sample rather than a failed scrape
            pending = {}
        for dest in self.ledger.destinations():
            family.add_metric([dest], pending.get(dest, 0))
        yield family


class CommitmentMetrics:
    """Storage Commitment (docs/commitment.md): ``dicomproxy_commitment_instances_total
    {destination,result}`` (committed | failed | unanswered, this node's reports) and
    ``dicomproxy_commitment_pending{destination}`` (read from the journal when scraped)."""

    def __init__(self, registry: CollectorRegistry, ledger: CommitmentLedger) -> None:
        registry.register(_PendingCollector(ledger))
        self.results = Counter(
            "dicomproxy_commitment_instances_total",
            "Instances whose Storage Commitment ended, by destination and result",
            ["destination", "result"],
            registry=registry,
        )
        for dest in ledger.destinations():
            for result in ("committed", "failed", "unanswered"):
                self.results.labels(dest, result)

    def __call__(self, event: events.CommitmentAnswered) -> None:
        for result, n in (
            ("committed", event.committed),
            ("failed", event.failed),
            ("unanswered", event.unanswered),
        ):
            if n:
                self.results.labels(event.destination, result).inc(n)


class _ReconcileCollector(Collector):
    """``dicomproxy_reconcile_missing_instances{destination}``: SOP instances the newest
    ``dicomproxy reconcile`` run found in the PACS and not at the destination (its summary in the
    journal database, ``reconcile_runs``: the run is another process, maybe another node)."""

    def __init__(self, runs: Callable[[], list[RunSummary]]) -> None:
        self.runs = runs

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "dicomproxy_reconcile_missing_instances",
            "Instances in the PACS missing at the destination, as the newest reconcile run found",
            labels=["destination"],
        )
        try:
            runs = self.runs()
        except Exception:  # the journal is down: no sample rather than a failed scrape
            runs = []
        for run in runs:
            family.add_metric([run.destination], run.missing_instances)
        yield family


class _BandwidthCollector(Collector):
    """The bandwidth timetable now: ``dicomproxy_bandwidth_limit_mbps{destination}`` (the rule in
    force, all nodes together; no sample when no rule caps it), ``dicomproxy_bandwidth_node_mbps``
    (this node's share) and ``dicomproxy_bandwidth_nodes`` (the nodes alive sharing it)."""

    def __init__(self, rows: Callable[[], list[InForce]]) -> None:
        self.rows = rows

    def collect(self) -> Iterator[GaugeMetricFamily]:
        limit = GaugeMetricFamily(
            "dicomproxy_bandwidth_limit_mbps",
            "Megabits per second the [[bandwidth]] rule in force allows, all nodes together",
            labels=["destination"],
        )
        share = GaugeMetricFamily(
            "dicomproxy_bandwidth_node_mbps",
            "This node's share of the [[bandwidth]] rule in force (megabits per second)",
            labels=["destination"],
        )
        rows = self.rows()
        for row in rows:
            if row.mbps is not None and row.share is not None:
                limit.add_metric([row.destination], row.mbps)
                share.add_metric([row.destination], row.share)
        yield limit
        yield share
        yield GaugeMetricFamily(
            "dicomproxy_bandwidth_nodes",
            "Nodes alive on the journal sharing the [[bandwidth]] rates",
            value=rows[0].nodes if rows else 1,
        )
