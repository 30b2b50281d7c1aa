"""The relay job: resolve → count → retrieve from the PACS ↔ forward to the destination, concurrently.

One job per C-MOVE / C-GET request (PS3.4 C.4.2 / C.4.3), in three pieces: here the *plan*
(identifier → visible studies → archive → instance list, or an early start from the STUDY-level
count), :mod:`dicomproxy.relay.pump` the *pump* (the request's thread takes instances from the job's
:class:`~dicomproxy.relay.spool.Spool` as they arrive and sends them on, while an
:class:`~dicomproxy.relay.upstream.Upstream` thread holds a PACS slot and fetches into the spool), and
:mod:`dicomproxy.relay.outcome` the *outcome* (counts, missing instances, final status). The job
yields :class:`~dicomproxy.handlers.qrservice.RetrieveResponse` objects: Pending ones while it runs
(optional, PS3.4 C.4.2.1.4; see the pump for when), then exactly one final response.

Final status (PS3.4 C.4.2.1.5, C.4.3.1.5), after counting every announced instance that
never arrived as failed:
- 0x0000 Success: nothing failed, no warnings (also when nothing visible matched: 0 sub-ops);
- 0xB000 Warning: some sub-operations failed or warned; Failed SOP Instance UID List;
- 0xA702 all sub-operations failed (destination rejected all, or aborted before any);
- 0xC002 the PACS could not be reached / failed before sending anything (Error Comment);
- 0xC003 the move destination cannot be reached or refused the association (Error Comment);
- 0xC004 a resolved study has no archive for its Sysid/ExamineType (``routing.Unroutable``);
- 0xFE00 Cancel (C-CANCEL), with the counts so far; 0xA801 unknown move destination;
- 0xA900 the identifier cannot be understood.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict
from pathlib import Path

from pydicom.dataset import Dataset
from pynetdicom.association import Association

from dicomproxy import events
from dicomproxy.config import Config, PeerConfig
from dicomproxy.errors import (
    DicomServiceError,
    MoveDestinationUnknown,
    PacsUnavailable,
    TooManySubOperations,
    UnableToProcess,
)
from dicomproxy.handlers import observe
from dicomproxy.handlers.qrservice import RetrieveResponse
from dicomproxy.pacs.client import RECEIVE_SYNTAXES, InstanceRef, PacsClient, RetrieveKey, StudySummary
from dicomproxy.pacs.routing import StudyRef, route
from dicomproxy.relay.forward import (
    Forwarder,
    contexts_for,
    open_destination,
    requester_forwarder,
)
from dicomproxy.relay.journal import Journal
from dicomproxy.relay.outcome import JobState
from dicomproxy.relay.pump import Pump
from dicomproxy.relay.reports import ReportFetch, plan_reports
from dicomproxy.relay.request import RetrieveRequest, StudyResolver, parse_keys
from dicomproxy.relay.spool import Spool
from dicomproxy.relay.store import ReceiveRegistry
from dicomproxy.relay.upstream import Finder, Upstream
from dicomproxy.reports.study import SOP_CLASSES as REPORT_SOP_CLASSES
from dicomproxy.status import JobKind, JobOutcome, Status
from dicomproxy.transcode import TranscodePool, policy_for
from dicomproxy.view.service import name_style_for

LOG = logging.getLogger("dicomproxy.relay")

#: Seconds a destination is remembered to open fewer onward associations than configured.
LANE_HINT_SECONDS = 600.0

#: Shortest gap between two Pending responses sent after sub-operations (seconds).
PROGRESS_INTERVAL = 0.2

MAX_SUBOPERATIONS = 65535  # Number of ... Sub-operations are US (PS3.7 C.4.2)

#: Longest wait on the conversion of the next instance before the spool is looked at again (seconds).
LOOKAHEAD_POLL = 0.05

#: First pause before re-opening a dropped destination; doubles up to forward.MAX_RETRY_DELAY.
RECONNECT_FIRST_DELAY = 0.5


class RelayService:
    """C-MOVE / C-GET SCP behaviour, shared by all associations (bound into the handlers via AppContext)."""

    def __init__(
        self,
        config: Config,
        pacs: PacsClient,
        resolver: StudyResolver | None,
        journal: Journal,
        registry: ReceiveRegistry,
        *,
        pending_interval: float = 5.0,
        archives: Mapping[str, PacsClient] | None = None,
    ) -> None:
        self.config = config
        self.pacs = pacs
        #: One client per archive by name (``[pacs]`` is "pacs"); routing picks one per study.
        self.archives: dict[str, PacsClient] = {pacs.name: pacs, **(archives or {})}
        for archive in config.all_archives:
            if archive.name not in self.archives:
                self.archives[archive.name] = PacsClient(
                    archive, config.proxy.ae_title, registry, archive.name
                )
        self.resolver = resolver
        self.journal = journal
        self.registry = registry
        self.pending_interval = pending_interval
        self.spool_root = config.data_path / "spool"
        self.pacs_ae_titles = frozenset(a.ae_title for a in config.all_archives)
        #: Encoder processes shared by every job (issue 5: use the cores); made on first need.
        self._pool: TranscodePool | None = None
        self._pool_lock = threading.Lock()
        #: Destinations that would not open every onward association asked for (one association
        #: at a time, or a limit): AE title → (associations they did open, when that was seen).
        self._lane_hints: dict[str, tuple[int, float]] = {}
        modes = {config.compression.mode, *(p.compression for p in config.peers if p.compression)}
        if modes - {"none"}:
            self._transcode_pool().warm()  # the first job does not wait for the workers to start

    def _transcode_pool(self) -> TranscodePool:
        with self._pool_lock:
            if self._pool is None:
                self._pool = TranscodePool(self.config.compression.workers)
            return self._pool

    def _drop_pool(self, pool: TranscodePool) -> None:
        """A worker died (BrokenProcessPool): the next conversion gets a new pool."""
        with self._pool_lock:
            if self._pool is not pool:
                return
            self._pool = None
        LOG.warning("transcoding pool broken (a worker died); starting a new one")
        pool.close()

    # --- entry points (generators for dicomproxy.handlers.qrservice) ---

    def move(
        self, req: RetrieveRequest, is_cancelled: Callable[[], bool], alive: Callable[[], bool]
    ) -> Iterator[RetrieveResponse]:
        peer = self.config.peer(req.move_destination)
        job_id = self.journal.start(
            JobKind.MOVE, req.calling_ae, req.calling_host, req.move_destination.strip(), ""
        )
        observe.job_started(job_id, req)
        if peer is None:
            yield self._refused(
                job_id,
                req,
                MoveDestinationUnknown(
                    f"move destination {req.move_destination.strip()!r} is not a configured peer"
                ),
            )
            return
        # PS3.4 C.4.2.2.3 / PS3.7 9.1.1.1: the sub-operations name the C-MOVE's requester and
        # Message ID as Move Originator (pynetdicom's stock SCP puts its own AE title there).
        opener = self._destination_opener(peer, (req.calling_ae, req.message_id))
        yield from self._job(job_id, req, opener, is_cancelled, alive, lanes=self._lanes_for(peer))

    def _refused(self, job_id: int, req: RetrieveRequest, exc: DicomServiceError) -> RetrieveResponse:
        """End a job refused before any work (its destination is unknown): journal, log, final answer."""
        LOG.warning("job %d: %s", job_id, exc)
        self.journal.finish(job_id, status=exc.status, outcome=JobOutcome.REFUSED, error=str(exc))
        observe.job_finished(job_id, req.kind, JobOutcome.REFUSED, exc.status, None, 0)
        return RetrieveResponse(exc.status, comment=exc.comment)

    def _destination_opener(
        self,
        peer: PeerConfig,
        originator: tuple[str, int] | None,
        throttle: Callable[[int], None] | None = None,
    ) -> Callable[[JobState, list[str], Path], Forwarder]:
        """How a job opens its association to the ``peer`` it sends to (a C-MOVE destination or a
        push destination): the peer's compression, presentation contexts for the job's SOP classes."""

        def opener(state: JobState, sop_classes: list[str], work_dir: Path) -> Forwarder:
            policy = policy_for(self.config, peer)
            # SOP classes unknown (not all listed, or started before the list): the common ones
            complete = bool(sop_classes) and all(r.sop_class_uid for r in state.expected.values())
            contexts = contexts_for(policy, sop_classes, [str(ts) for ts in RECEIVE_SYNTAXES], complete)
            forwarder = open_destination(peer, self.config.proxy, contexts, policy, work_dir, originator)
            forwarder.throttle = throttle
            return forwarder

        return opener

    def _lanes_for(self, peer: PeerConfig) -> int:
        """``onward_associations`` for ``peer``, capped at what it opened recently (LANE_HINT_SECONDS)."""
        lanes = self.config.onward_associations(peer)
        hint = self._lane_hints.get(peer.ae_title)
        if hint is not None and time.monotonic() - hint[1] < LANE_HINT_SECONDS:
            lanes = min(lanes, hint[0])
        return lanes

    def _learn_lanes(self, destination: str, asked: int, opened: int) -> None:
        if opened < asked:
            LOG.info(
                "destination %s opened %d of %d onward associations; using %d",
                destination,
                opened,
                asked,
                opened,
            )
            self._lane_hints[destination] = (opened, time.monotonic())

    def push(
        self,
        study_uid: str,
        destination: str,
        *,
        exclude: frozenset[str] = frozenset(),
        on_start: Callable[[int], None] | None = None,
        throttle: Callable[[int], None] | None = None,
        is_cancelled: Callable[[], bool] = lambda: False,
    ) -> Iterator[RetrieveResponse]:
        """Push mode (:mod:`dicomproxy.push`): the job a STUDY-level C-MOVE of ``study_uid`` to
        ``destination`` runs (visibility checked again, the peer's compression), journalled as a
        ``push`` job. Instances in ``exclude`` (this destination confirmed them in earlier
        attempts) are neither fetched nor sent again. ``on_start`` gets the job ID before any
        work; ``throttle`` is called with the bytes of each instance sent (``max_mbps``)."""
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        identifier.StudyInstanceUID = study_uid  # (0020,000D) UI, unique key
        req = RetrieveRequest("push", identifier, self.config.proxy.ae_title, "", destination)
        peer = self.config.peer(destination)
        job_id = self.journal.start(JobKind.PUSH, req.calling_ae, "", destination, "")
        if on_start is not None:
            on_start(job_id)
        observe.job_started(job_id, req)
        if peer is None:
            yield self._refused(
                job_id,
                req,
                MoveDestinationUnknown(f"push destination {destination!r} is not a configured peer"),
            )
            return
        opener = self._destination_opener(peer, None, throttle)  # no C-MOVE asked: no Move Originator
        yield from self._job(
            job_id, req, opener, is_cancelled, lambda: True, exclude=exclude, lanes=self._lanes_for(peer)
        )

    def get(
        self, req: RetrieveRequest, assoc: Association, is_cancelled: Callable[[], bool]
    ) -> Iterator[RetrieveResponse]:
        job_id = self.journal.start(JobKind.GET, req.calling_ae, req.calling_host, req.calling_ae, "")
        observe.job_started(job_id, req)
        peer: PeerConfig | None = self.config.peer(req.calling_ae)

        def opener(state: JobState, sop_classes: list[str], work_dir: Path) -> Forwarder:
            return requester_forwarder(
                assoc, policy_for(self.config, peer), work_dir, self.config.proxy.fast_path
            )

        yield from self._job(job_id, req, opener, is_cancelled, lambda: bool(assoc.is_established))

    # --- the job ---

    def _job(
        self,
        job_id: int,
        req: RetrieveRequest,
        opener: Callable[[JobState, list[str], Path], Forwarder],
        is_cancelled: Callable[[], bool],
        alive: Callable[[], bool],
        exclude: frozenset[str] = frozenset(),
        lanes: int = 1,
    ) -> Iterator[RetrieveResponse]:
        state = JobState(job_id)
        forwarder: Forwarder | None = None
        spool: Spool | None = None
        upstream: Upstream | None = None
        reports: ReportFetch | None = None
        final = RetrieveResponse(Status.SUCCESS)
        error = ""
        outcome = JobOutcome.FAILED
        try:
            if self.resolver is None:
                raise UnableToProcess("exam view not configured: nothing can be resolved")
            level, routed = parse_keys(req.identifier, self.resolver)
            study_uids = [key.study_uid for key, _ in routed]
            self.journal.update(job_id, level=level, study_uids=study_uids)
            events.publish(events.JobResolved(job_id, level, tuple(study_uids)))
            rows_of = getattr(self.resolver, "study_rows", None)  # the exam view (not a test's stub)
            if self.config.reports.retrievable and rows_of is not None and not exclude:
                style = name_style_for(self.config, req.move_destination or req.calling_ae)
                routed, work = plan_reports(routed, rows_of, self.config.reports, style)
                if work:
                    reports = ReportFetch(work, self.config.reports, style)  # fetching starts now
                    state.files = state.extras = len(reports)
            keys = [key for key, _ in routed]
            clients = self._route(routed)  # raises Unroutable before anything is asked of any archive
            self.journal.update(job_id, archive=",".join(dict.fromkeys(c.name for c in clients)))
            plan: list[tuple[PacsClient, RetrieveKey, list[InstanceRef]]] = []
            summary = None if exclude else self._study_summary(job_id, clients, keys)
            if summary is not None:
                # Early start: fetch and forward now, list the instances beside it (Finder). A PACS
                # that announces no count (dcmqrscp): no Pending response until the list is known.
                plan.append((clients[0], keys[0], []))
                state.announced, n, sop_classes = summary.count, summary.count, summary.sop_classes
                state.finder = Finder(clients[0], keys[0])
                if n:
                    self.journal.update(job_id, expected=n + state.extras)
            else:
                for client, key in zip(clients, keys, strict=True):
                    client, refs = self._find_with_fallback(job_id, client, key)
                    if exclude:  # push: only what the destination has not confirmed, per series
                        refs = [r for r in refs if r.sop_instance_uid not in exclude]
                        plan.extend((client, k, rs) for k, rs in _by_series(key.study_uid, refs))
                    else:
                        plan.append((client, key, refs))
                    for ref in refs:
                        state.expected.setdefault(ref.sop_instance_uid, ref)
                if any(client.config.fallback for client in clients):  # record who actually serves
                    self.journal.update(job_id, archive=",".join(dict.fromkeys(c.name for c, _, _ in plan)))
                n = len(state.expected)
                sop_classes = sorted({r.sop_class_uid for r in state.expected.values() if r.sop_class_uid})
                if n == 0:
                    plan = []  # only order/report objects (if any): nothing to ask the PACS for
                self.journal.update(job_id, expected=n + state.extras)
                # Durable before anything is fetched: `jobs retry` resends what of this was not confirmed.
                self.journal.add_expected(job_id, [asdict(ref) for ref in state.expected.values()])
            state.mark("found")
            if summary is None:
                how = ""
            elif n:
                how = " announced by the PACS, listing them meanwhile"
            else:
                how = " (the PACS announces no count), listing them meanwhile"
            if state.extras:
                how += f", {state.extras} order/report object(s)"
            LOG.info(
                "job %d: %s by %s, %d stud(ies), %s instance(s)%s",
                job_id,
                req.kind,
                req.calling_ae,
                len(study_uids),
                n if state.counted else "?",
                how,
            )
            if n + state.extras > MAX_SUBOPERATIONS:
                raise TooManySubOperations(f"{n + state.extras} instances: more than 65535 sub-operations")
            if n + state.extras == 0 and state.counted:
                # Nothing visible, or nothing in the PACS: zero sub-operations (PS3.4 C.4.2.3.1).
                final, outcome = state.response(Status.SUCCESS), JobOutcome.EMPTY
            else:
                spool = Spool(self.spool_root, f"job-{job_id:06d}-{uuid.uuid4().hex[:6]}")
                onward = sorted({*sop_classes, *REPORT_SOP_CLASSES}) if reports else sop_classes
                forwarder = opener(state, onward, spool.dir)
                forwarder.on_converted = lambda syntax, seconds: events.publish(
                    events.Transcoded(job_id, syntax, seconds)
                )
                state.mark("destination")
                if state.counted:
                    yield state.response(Status.PENDING)
                upstream = Upstream(plan, spool, sop_classes if summary is not None else None)
                upstream.start()
                pump = Pump(
                    self.config,
                    self.journal,
                    self._transcode_pool,
                    self._drop_pool,
                    self.pending_interval,
                    self._merge_found,
                    reports,
                )
                final, outcome, error = yield from pump.run(
                    state, spool, forwarder, upstream, is_cancelled, alive, lanes
                )
                if reports is not None and reports.errors and not error:
                    error = "; ".join(reports.errors)
                if pump.lanes_opened is not None:
                    self._learn_lanes(req.move_destination.strip(), lanes, pump.lanes_opened)
        except DicomServiceError as exc:
            error = str(exc)
            LOG.warning("job %d: %s", job_id, exc)
            state.failed += state.remaining
            final = state.response(exc.status, exc.comment)
            outcome = (
                JobOutcome.REFUSED
                if exc.status in (Status.MOVE_DESTINATION_UNKNOWN, Status.IDENTIFIER_MISMATCH)
                else JobOutcome.FAILED
            )
        except GeneratorExit:
            error, outcome = "requester went away", JobOutcome.ABORTED
            raise
        except Exception as exc:
            LOG.exception("job %d: unexpected error", job_id)
            error = f"internal error: {exc}"
            final = state.response(Status.UNABLE_TO_PROCESS, "internal error in the relay")
        finally:
            if reports is not None:
                reports.close()
            if upstream is not None:
                if (
                    outcome in (JobOutcome.SUCCESS, JobOutcome.PARTIAL)
                    and not upstream.stop_requested.is_set()
                ):
                    upstream.thread.join(timeout=max(a.dimse_timeout for a in self.config.all_archives))
                else:
                    # Stopped: its PACS association is aborted; pynetdicom may still wait out the
                    # DIMSE timeout before the thread notices. Don't hold the requester for that.
                    upstream.stop()
                    upstream.thread.join(timeout=1.0)
            if forwarder is not None:
                forwarder.close()
            if spool is not None:
                spool.close()
            self.journal.add_instances(job_id, state.records)
            self.journal.finish(
                job_id,
                status=final.status,
                outcome=outcome,
                error=error,
                completed=state.completed,
                failed=state.failed,
                warning=state.warning,
                bytes_in=spool.bytes_in if spool else 0,
                bytes_out=forwarder.bytes_out if forwarder else 0,
            )
            observe.job_finished(
                job_id, req.kind, outcome, final.status, state, forwarder.bytes_out if forwarder else 0
            )
            LOG.info(
                "job %d: %s 0x%04X completed=%d failed=%d warning=%d %s",
                job_id,
                outcome,
                final.status,
                state.completed,
                state.failed,
                state.warning,
                state.timing(),
            )
        yield final

    def _study_summary(
        self, job_id: int, clients: list[PacsClient], keys: list[RetrieveKey]
    ) -> StudySummary | None:
        """The STUDY-level count and SOP classes of a one-study request, to start fetching before
        the IMAGE-level C-FIND has listed every instance (first instance independent of study
        size, issue 7). None — and the job lists first, as before — for several studies, a
        SERIES/IMAGE-level request, an archive with fallbacks (the list decides who serves), a
        study the PACS does not have, or SOP classes the STUDY level does not name but the list
        may (exact presentation contexts matter more than 0.1 s). An archive whose lists name no
        SOP class either (dcmqrscp, learned from its first listing) starts at once with the
        common storage classes, and with or without a count. A PACS that cannot be asked fails
        the job as the IMAGE-level C-FIND would."""
        if len(keys) != 1 or keys[0].level != "STUDY" or clients[0].config.fallback:
            return None
        summary = clients[0].study_summary(keys[0].study_uid)
        if summary is None:
            LOG.debug("job %d: the PACS does not know the study at STUDY level; listing first", job_id)
        elif not summary.sop_classes and clients[0].lists_sop_classes is not False:
            LOG.debug("job %d: no SOP Classes in Study from the PACS; listing first", job_id)
            return None
        return summary

    def _merge_found(self, state: JobState, wait: float = 0.0) -> None:
        """Take the early-started job's instance list once its C-FIND is done (``wait`` seconds at
        most): into ``state.expected`` and the journal (`jobs retry` needs it)."""
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

    def _route(self, routed: list[tuple[RetrieveKey, StudyRef]]) -> list[PacsClient]:
        """The archive client of each study (``routing.route`` on its view row's Sysid/ExamineType).

        One request may span archives (a patient's RIS and UIS exams): each study is fetched from
        its own archive into the same job. Raises Unroutable (0xC004) if any study has no archive:
        the whole request fails, nothing is fetched, no other archive is tried.
        """
        return [self.archives[route(self.config, ref.sysid, ref.modality).name] for _, ref in routed]

    def _find_with_fallback(
        self, job_id: int, client: PacsClient, key: RetrieveKey
    ) -> tuple[PacsClient, list[InstanceRef]]:
        """Count ``key`` in its routed archive; if it has no instance, in the archives of its
        ``fallback`` list, in order (the first that has any serves the study). Errors of the
        routed archive are not hidden by a fallback: they fail the request as before; a fallback
        archive that fails is skipped. Unroutable studies never get here."""
        refs = client.find_instances(key)
        for name in client.config.fallback if not refs else ():
            other = self.archives[name]
            try:
                refs = other.find_instances(key)
            except PacsUnavailable as exc:  # a fallback that is down is skipped, not fatal
                LOG.warning("job %d: fallback archive %s: %s", job_id, name, exc)
                continue
            if refs:
                LOG.info("job %d: a study not in archive %s was found in %s", job_id, client.name, name)
                return other, refs
        return client, refs

    def close(self) -> None:
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
        self.journal.close()


def _by_series(study_uid: str, refs: list[InstanceRef]) -> list[tuple[RetrieveKey, list[InstanceRef]]]:
    """IMAGE-level keys (PS3.4 C.4.2.2.1.4: one series, a list of SOP Instance UIDs) for ``refs``."""
    groups: dict[str, list[InstanceRef]] = {}
    for ref in refs:
        groups.setdefault(ref.series_uid, []).append(ref)
    return [
        (RetrieveKey(study_uid, (series,), tuple(r.sop_instance_uid for r in rs)), rs)
        for series, rs in groups.items()
    ]
