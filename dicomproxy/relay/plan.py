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
import time
from collections.abc import Callable, Iterator, Mapping

from pydicom.dataset import Dataset
from pynetdicom.association import Association

from dicomproxy import events
from dicomproxy.config import Config, PeerConfig
from dicomproxy.config.holder import Settings, as_settings
from dicomproxy.errors import (
    DicomServiceError,
    MoveDestinationUnknown,
    TooManySubOperations,
    UnableToProcess,
)
from dicomproxy.identity import Coercer
from dicomproxy.identity.copies import CorrectedCopies
from dicomproxy.pacs.client import PacsClient, StudySummary
from dicomproxy.pacs.store import ReceiveRegistry
from dicomproxy.relay import observe
from dicomproxy.relay.destinations import Opener, destination_opener, requester
from dicomproxy.relay.engine import Engine, Moved, PoolKeeper, Transfer
from dicomproxy.relay.identities import coerces, job_coercer
from dicomproxy.relay.journal import Journal
from dicomproxy.relay.listing import Lister
from dicomproxy.relay.outcome import JobState
from dicomproxy.relay.reports import ReportFetch, plan_reports
from dicomproxy.relay.request import RetrieveRequest, StudyResolver, parse_keys
from dicomproxy.relay.response import RetrieveResponse
from dicomproxy.reports.study import SOP_CLASSES as REPORT_SOP_CLASSES
from dicomproxy.status import JobKind, JobOutcome, Status
from dicomproxy.view.service import name_style_for

LOG = logging.getLogger("dicomproxy.relay")

#: Seconds a destination is remembered to open fewer onward associations than configured.
LANE_HINT_SECONDS = 600.0

MAX_SUBOPERATIONS = 65535  # Number of ... Sub-operations are US (PS3.7 C.4.2)


class RelayService:
    """C-MOVE / C-GET SCP behaviour, shared by all associations (bound into the handlers via AppContext)."""

    def __init__(
        self,
        config: Config | Settings,
        pacs: PacsClient,
        resolver: StudyResolver | None,
        journal: Journal,
        registry: ReceiveRegistry,
        *,
        pending_interval: float = 5.0,
        archives: Mapping[str, PacsClient] | None = None,
    ) -> None:
        #: The current Config; each job reads it once when it starts and keeps that object to its
        #: end (a reload changes the next job, never a running one: docs/operations.md, Reload).
        self.settings = as_settings(config)
        config = self.settings.current
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
        self.pools = PoolKeeper(config.compression.workers)
        self.engine = Engine(config, journal, self.pools, pending_interval)
        #: Confirmed spool files the archives' next C-STOREs overwrite (the raw store receiver's).
        self.recycled = self.engine.recycled
        for client in self.archives.values():  # what their C-GETs receive overwrites them too
            client.recycled = self.recycled
        self.lister = Lister(config, self.archives, journal)
        #: Destinations that would not open every onward association asked for (one association
        #: at a time, or a limit): AE title → (associations they did open, when that was seen).
        self._lane_hints: dict[str, tuple[int, float]] = {}
        modes = {config.compression.mode, *(p.compression for p in config.peers if p.compression)}
        if modes - {"none"}:
            self.pools.get().warm()  # the first job does not wait for the workers to start

    @property
    def config(self) -> Config:
        return self.settings.current

    # --- entry points (generators for dicomproxy.handlers.qrservice) ---

    def move(
        self, req: RetrieveRequest, is_cancelled: Callable[[], bool], alive: Callable[[], bool]
    ) -> Iterator[RetrieveResponse]:
        config = self.config  # this job's, to its end
        peer = config.peer(req.move_destination)
        job_id = self.journal.start(  # the Identifier kept until its keys are recorded (a resume resolves it)
            JobKind.MOVE,
            req.calling_ae,
            req.calling_host,
            req.move_destination.strip(),
            "",
            request=req.identifier.to_json(),
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
        throttle = self.engine.pull_throttle(peer)  # [[bandwidth]] when the peer has cap_pulls
        opener = destination_opener(config, peer, (req.calling_ae, req.message_id), throttle)
        yield from self._job(
            config, job_id, req, opener, is_cancelled, alive, lanes=self._lanes_for(config, peer)
        )

    def _refused(self, job_id: int, req: RetrieveRequest, exc: DicomServiceError) -> RetrieveResponse:
        """End a job refused before any work (its destination is unknown): journal, log, final answer."""
        LOG.warning("job %d: %s", job_id, exc)
        state = JobState(job_id)
        final, outcome, error = state.stopped_by(exc)
        self.engine.close(state, final, outcome, error, Moved())
        observe.job_finished(job_id, req.kind, outcome, final.status, None, 0)
        return final

    def _lanes_for(self, config: Config, peer: PeerConfig) -> int:
        """``onward_associations`` for ``peer``, capped at what it opened recently (LANE_HINT_SECONDS)."""
        lanes = config.onward_associations(peer)
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
        wrap: Callable[[Coercer | None], Coercer | None] | None = None,
    ) -> Iterator[RetrieveResponse]:
        """Push mode (:mod:`dicomproxy.push`): the job a STUDY-level C-MOVE of ``study_uid`` to
        ``destination`` runs (visibility checked again, the peer's compression), journalled as a
        ``push`` job. Instances in ``exclude`` (this destination confirmed them in earlier
        attempts) are neither fetched nor sent again. ``on_start`` gets the job ID before any
        work; ``throttle`` is told the bytes sent as they go (``max_mbps``, ``[[bandwidth]]``); ``wrap``
        replaces the job's coercer (a correction's copies, :mod:`dicomproxy.corrections.sending`)."""
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        identifier.StudyInstanceUID = study_uid  # (0020,000D) UI, unique key
        config = self.config  # this job's, to its end
        req = RetrieveRequest("push", identifier, config.proxy.ae_title, "", destination)
        peer = config.peer(destination)
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
        opener = destination_opener(config, peer, None, throttle)  # no C-MOVE asked: no Move Originator
        yield from self._job(
            config,
            job_id,
            req,
            opener,
            is_cancelled,
            lambda: True,
            exclude=exclude,
            lanes=self._lanes_for(config, peer),
            wrap=wrap,
        )

    def get(
        self, req: RetrieveRequest, assoc: Association, is_cancelled: Callable[[], bool]
    ) -> Iterator[RetrieveResponse]:
        config = self.config  # this job's, to its end
        job_id = self.journal.start(JobKind.GET, req.calling_ae, req.calling_host, req.calling_ae, "")
        observe.job_started(job_id, req)
        peer = config.peer(req.calling_ae)
        opener = requester(assoc, config, peer, self.engine.pull_throttle(peer))
        yield from self._job(config, job_id, req, opener, is_cancelled, lambda: bool(assoc.is_established))

    # --- the job ---

    def _job(
        self,
        config: Config,
        job_id: int,
        req: RetrieveRequest,
        opener: Opener,
        is_cancelled: Callable[[], bool],
        alive: Callable[[], bool],
        exclude: frozenset[str] = frozenset(),
        lanes: int = 1,
        wrap: Callable[[Coercer | None], Coercer | None] | None = None,
    ) -> Iterator[RetrieveResponse]:
        """Plan the job (:meth:`_plan`), run its transfer on the engine, journal how it ended."""
        state = JobState(job_id)
        moved = Moved()
        final = RetrieveResponse(Status.SUCCESS)
        error = ""
        outcome = JobOutcome.FAILED
        try:
            transfer = self._plan(config, req, state, opener, exclude, lanes, wrap)
            if transfer is None:
                # Nothing visible, or nothing in the PACS: zero sub-operations (PS3.4 C.4.2.3.1).
                final, outcome = state.response(Status.SUCCESS), JobOutcome.EMPTY
            else:
                final, outcome, error = yield from self.engine.transfer(transfer, is_cancelled, alive, moved)
                if transfer.reports is not None and transfer.reports.errors and not error:
                    error = "; ".join(transfer.reports.errors)
                if moved.lanes_opened is not None:
                    self._learn_lanes(req.move_destination.strip(), lanes, moved.lanes_opened)
        except DicomServiceError as exc:
            LOG.warning("job %d: %s", job_id, exc)
            final, outcome, error = state.stopped_by(exc)
        except GeneratorExit:
            error, outcome = "requester went away", JobOutcome.ABORTED
            raise
        except Exception as exc:
            LOG.exception("job %d: unexpected error", job_id)
            error = f"internal error: {exc}"
            final = state.response(Status.UNABLE_TO_PROCESS, "internal error in the relay")
        finally:
            self.engine.close(state, final, outcome, error, moved)
            observe.job_finished(job_id, req.kind, outcome, final.status, state, moved.bytes_out)
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

    def _plan(
        self,
        config: Config,
        req: RetrieveRequest,
        state: JobState,
        opener: Opener,
        exclude: frozenset[str],
        lanes: int,
        wrap: Callable[[Coercer | None], Coercer | None] | None = None,
    ) -> Transfer | None:
        """The job's transfer: identifier → visible studies → order/report files → archive →
        instance list (or an early start); None for zero sub-operations. Raises DicomServiceError."""
        job_id = state.job_id
        if self.resolver is None:
            raise UnableToProcess("exam view not configured: nothing can be resolved")
        level, routed = parse_keys(req.identifier, self.resolver)
        study_uids = [key.study_uid for key, _ in routed]
        self.journal.update(job_id, level=level, study_uids=study_uids)
        events.publish(events.JobResolved(job_id, level, tuple(study_uids)))
        reports: ReportFetch | None = None
        rows_of = getattr(self.resolver, "study_rows", None)  # the exam view (not a test's stub)
        destination = req.move_destination.strip() or req.calling_ae
        wanted = coerces(config, destination) or config.reports.retrievable
        rows = rows_of(study_uids) if rows_of is not None and study_uids and wanted else {}
        if config.reports.retrievable and rows_of is not None and not exclude:
            style = name_style_for(config, destination)
            routed, work = plan_reports(routed, lambda _: rows, config.reports, style)
            if work:
                reports = ReportFetch(work, config.reports, style)  # fetching starts now
                state.files = state.extras = len(reports)
        try:
            keys = [key for key, _ in routed]
            clients = self.lister.route(job_id, routed)  # Unroutable before any archive is asked
            sources = {key.study_uid: c.config.ae_title for (key, _), c in zip(routed, clients, strict=True)}
            coercer = job_coercer(config, self.journal, job_id, destination, rows, sources)
            if wrap is not None:
                coercer = wrap(coercer)
            if isinstance(coercer, CorrectedCopies):  # journalled before anything is sent
                self.journal.record_copies(job_id, coercer.fingerprint)
            fetch, sop_classes, summary = self.lister.fetch_list(state, clients, keys, exclude)
            n = summary.count if summary is not None else len(state.expected)
            self._log_plan(req, state, len(study_uids), n, summary)
            if n + state.extras > MAX_SUBOPERATIONS:
                raise TooManySubOperations(f"{n + state.extras} instances: more than 65535 sub-operations")
            if n + state.extras == 0 and state.counted:
                return None
        except BaseException:
            if reports is not None:
                reports.close()
            raise
        onward = sorted({*sop_classes, *REPORT_SOP_CLASSES}) if reports else sop_classes
        early = sop_classes if summary is not None else None
        return Transfer(state, fetch, onward, opener, early, lanes, reports, coercer=coercer, config=config)

    @staticmethod
    def _log_plan(
        req: RetrieveRequest, state: JobState, studies: int, n: int, summary: StudySummary | None
    ) -> None:
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
            state.job_id,
            req.kind,
            req.calling_ae,
            studies,
            n if state.counted else "?",
            how,
        )

    def close(self) -> None:
        self.pools.close()
        self.journal.close()
