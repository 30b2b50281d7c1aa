"""The delivery engine: one job's transfer, whoever started it.

A C-MOVE, a C-GET (the requester's association is the destination), a push delivery, ``jobs
retry`` and the automatic resume all end here with a :class:`Transfer`: what to fetch from which
archive, which instances are already spooled, how to open the destination. :meth:`Engine.transfer`
runs it — the :class:`~dicomproxy.relay.upstream.Upstream` thread fetching into the job's
:class:`~dicomproxy.relay.spool.Spool`, the :class:`~dicomproxy.relay.pump.Pump` sending on and
recording each instance through the one :class:`~dicomproxy.relay.recorder.InstanceRecorder` —
and :meth:`Engine.close` journals how the job ended. Counts and the final status are decided in
:mod:`dicomproxy.relay.outcome` only (PS3.4 C.4.2.1.5, C.4.3.1.5).

A transfer streams: the spool holds what arrived and was not yet confirmed, never the whole
study, so a retry needs no more disk than a fresh C-MOVE of the same study.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Generator
from dataclasses import asdict, dataclass, field
from typing import cast

from dicomproxy import events
from dicomproxy.config import Config, PeerConfig
from dicomproxy.errors import DicomServiceError
from dicomproxy.identity import Coercer
from dicomproxy.pacs.client import InstanceRef, PacsClient, RetrieveKey
from dicomproxy.relay.bandwidth import Bandwidth
from dicomproxy.relay.commitments import CommitmentLedger
from dicomproxy.relay.destinations import Destination, Opener
from dicomproxy.relay.journal import Journal
from dicomproxy.relay.outcome import JobState
from dicomproxy.relay.pump import Pump
from dicomproxy.relay.recorder import InstanceRecorder
from dicomproxy.relay.reports import ReportFetch
from dicomproxy.relay.response import RetrieveResponse
from dicomproxy.relay.spool import DiskRoom, Spool, SpooledInstance
from dicomproxy.relay.upstream import Upstream
from dicomproxy.status import JobOutcome, Status
from dicomproxy.transcode import TranscodePool
from dicomproxy.transport import recycle
from dicomproxy.transport.recycle import RecycledFiles

LOG = logging.getLogger("dicomproxy.relay")

#: What the archives are asked for: (archive, retrieve key, the instances it names).
Fetch = list[tuple[PacsClient, RetrieveKey, list[InstanceRef]]]


class PoolKeeper:
    """The transcoding process pool shared by every job of a process, made on first need and
    replaced when a worker died (BrokenProcessPool)."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool: TranscodePool | None = None
        self._lock = threading.Lock()

    def get(self) -> TranscodePool:
        with self._lock:
            if self._pool is None:
                self._pool = TranscodePool(self.workers)
            return self._pool

    def drop(self, pool: TranscodePool) -> None:
        with self._lock:
            if self._pool is not pool:
                return
            self._pool = None
        LOG.warning("transcoding pool broken (a worker died); starting a new one")
        pool.close()

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()


@dataclass
class Transfer:
    """One job's transfer, as its starter planned it."""

    state: JobState
    #: What the archives are asked for (empty: only what is ``held`` or the order/report files).
    fetch: Fetch
    #: The onward SOP classes (presentation contexts).
    sop_classes: list[str]
    opener: Opener
    #: For a C-GET started before the instance list is known: the classes the archive may send.
    early_classes: list[str] | None = None
    lanes: int = 1
    reports: ReportFetch | None = None
    #: Instances already in a spool (a retry after a crash): sent first, never fetched again.
    held: list[SpooledInstance] = field(default_factory=list)
    #: Delete what the destination did not confirm when the transfer ends (files made afresh for
    #: every attempt, a push item's order/report objects), instead of keeping it for a retry.
    discard_unconfirmed: bool = False
    #: Gives each instance the exam view's identity as it is sent (docs/identity.md); None = as held.
    coercer: Coercer | None = None
    #: The Config the job started with (a reload meanwhile does not change it); None = the engine's.
    config: Config | None = None


@dataclass
class Moved:
    """What a transfer moved (the journal's bytes, the lanes' learning)."""

    bytes_in: int = 0
    bytes_out: int = 0
    #: Instances the archives sent in this transfer (not counting ``held`` ones).
    fetched: int = 0
    lanes_opened: int | None = None


class Engine:
    """Runs transfers and closes jobs; one per process (shared by the relay and recovery)."""

    def __init__(self, config: Config, journal: Journal, pools: PoolKeeper, pending_interval: float) -> None:
        self.config = config
        self.journal = journal
        self.pools = pools
        self.pending_interval = pending_interval
        self.spool_root = config.data_path / "spool"
        #: Back-pressure on the archives when the data disk runs low (``[proxy] spool_headroom_mb``).
        self.room = DiskRoom(self.spool_root, config.proxy.spool_headroom_mb * 2**20)
        #: Confirmed spool files kept while jobs run, for received instances to overwrite (issue 29).
        self.recycled = RecycledFiles(config.data_path / "incoming" / recycle.FOLDER)
        #: Storage Commitment (PS3.4 Annex J) for peers with ``storage_commitment``; None if none has.
        self.commitments = (
            CommitmentLedger(config, journal) if any(p.storage_commitment for p in config.peers) else None
        )
        #: The bandwidth timetable (``[[bandwidth]]``): push's and ``cap_pulls`` peers' onward C-STOREs.
        self.bandwidth = Bandwidth(config.bandwidth)

    def pull_throttle(self, peer: PeerConfig | None) -> Callable[[int], None] | None:
        """The timetable's cap on a C-MOVE/C-GET job's onward C-STOREs to ``peer`` (``cap_pulls``)."""
        take = self.bandwidth.throttle(peer.ae_title) if peer is not None and peer.cap_pulls else None
        if take is None:
            return None

        def throttle(nbytes: int) -> None:
            take(nbytes)

        return throttle

    def transfer(
        self,
        t: Transfer,
        is_cancelled: Callable[[], bool],
        alive: Callable[[], bool],
        moved: Moved,
    ) -> Generator[RetrieveResponse, None, tuple[RetrieveResponse, JobOutcome, str]]:
        """Fetch ↔ send, concurrently; Pending responses while it runs; returns (final response,
        outcome, error). Raises what opening the destination raises (0xC003 …)."""
        state = t.state
        job_id = state.job_id
        spool = Spool(self.spool_root, f"job-{job_id:06d}-{uuid.uuid4().hex[:6]}", self.room, self.recycled)
        forwarder: Destination | None = None
        upstream: Upstream | None = None
        finished = False
        held_bytes = 0
        try:
            for item in t.held:  # moved into this job's folder, queued before what the archives send
                spool.accept(item.path, item.sop_class_uid, item.sop_instance_uid, item.transfer_syntax)
            held_bytes = spool.bytes_in
            forwarder = t.opener(state, t.sop_classes, spool.dir)
            forwarder.coercer = t.coercer
            forwarder.on_converted = lambda syntax, seconds: events.publish(
                events.Transcoded(job_id, syntax, seconds)
            )
            state.mark("destination")
            if state.counted:
                yield state.response(Status.PENDING)
            upstream = Upstream(t.fetch, spool, t.early_classes)
            upstream.start()
            pump = Pump(
                t.config or self.config,
                InstanceRecorder(self.journal, state),
                self.pools.get,
                self.pools.drop,
                self.pending_interval,
                self.merge_found,
                t.reports,
            )
            result = yield from pump.run(state, spool, forwarder, upstream, is_cancelled, alive, t.lanes)
            moved.lanes_opened = pump.lanes_opened
            finished = result[1] in (JobOutcome.SUCCESS, JobOutcome.PARTIAL)
            return result
        finally:
            if t.reports is not None:
                t.reports.close()
            if upstream is not None:
                self._end_upstream(upstream, finished)
            if forwarder is not None:
                forwarder.close()
                moved.bytes_out += forwarder.bytes_out
            if t.discard_unconfirmed:
                for left in spool.dir.glob("*.dcm"):
                    left.unlink(missing_ok=True)
            spool.close()
            moved.bytes_in += spool.bytes_in - held_bytes
            moved.fetched += spool.received - len(t.held)

    def run_to_end(self, t: Transfer, moved: Moved) -> tuple[RetrieveResponse, JobOutcome, str]:
        """A transfer whose Pending responses nobody reads (a retry, a push item's files), driven
        to its end. A destination that cannot be opened ends it as
        :meth:`~dicomproxy.relay.outcome.JobState.stopped_by` decides."""
        steps = self.transfer(t, lambda: False, lambda: True, moved)
        try:
            while True:
                next(steps)
        except StopIteration as done:
            return cast(tuple[RetrieveResponse, JobOutcome, str], done.value)
        except DicomServiceError as exc:
            LOG.warning("job %d: %s", t.state.job_id, exc)
            return t.state.stopped_by(exc)

    def _end_upstream(self, upstream: Upstream, finished: bool) -> None:
        if finished and not upstream.stop_requested.is_set():
            upstream.thread.join(timeout=max(a.dimse_timeout for a in self.config.all_archives))
            return
        # Stopped: its PACS association is aborted; pynetdicom may still wait out the DIMSE
        # timeout before the thread notices. Don't hold the requester for that.
        upstream.stop()
        upstream.thread.join(timeout=1.0)

    def merge_found(self, state: JobState, wait: float) -> None:
        """Take the early-started job's instance list once its C-FIND is done (``wait`` seconds at
        most): into ``state.expected`` and the journal (a retry needs it)."""
        finder = state.finder
        if finder is None or not finder.done.wait(wait):
            return
        state.finder = None
        if finder.error is not None:
            LOG.warning(
                "job %d: listing the instances failed (%s); counting from the %d announced",
                state.job_id,
                finder.error,
                state.announced,
            )
            return
        for ref in finder.refs:
            state.expected.setdefault(ref.sop_instance_uid, ref)
        self.journal.update(state.job_id, expected=len(state.expected) + state.files)
        self.journal.add_expected(state.job_id, [asdict(ref) for ref in state.expected.values()])

    def close(
        self, state: JobState, final: RetrieveResponse, outcome: JobOutcome, error: str, moved: Moved
    ) -> None:
        """Journal how the job ended: the instances never sent, the final status and counts; and
        for a destination that commits, the Storage Commitment transactions of what it stored."""
        InstanceRecorder(self.journal, state).record_missing()
        if self.commitments is not None:  # what it stored is to be committed (relay/committer.py sends it),
            self.commitments.job_ended(state.job_id)  # journalled before the job reads as ended
        self.journal.finish(
            state.job_id,
            status=final.status,
            outcome=outcome,
            error=error,
            completed=state.completed,
            failed=state.failed,
            warning=state.warning,
            bytes_in=moved.bytes_in,
            bytes_out=moved.bytes_out,
        )
