"""The relay job: resolve → count → retrieve from the PACS ↔ forward to the destination, concurrently.

One job per C-MOVE / C-GET request (PS3.4 C.4.2 / C.4.3). The request's thread is the
consumer: it takes instances from the job's :class:`~dicomproxy.spool.Spool` as soon as they
arrive and sends them on, while a producer thread holds a PACS slot and fetches the studies
into the spool. The consumer yields :class:`~dicomproxy.qrservice.RetrieveResponse` objects:
a Pending one after a sub-operation at most every :data:`PROGRESS_INTERVAL` seconds (and
after the first and the last), every ``pending_interval`` seconds while the PACS is silent,
then exactly one final response. Pending responses are optional (PS3.4 C.4.2.1.4); one per
instance would cost a DIMSE message per instance on both sides.

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
from collections import deque
from collections.abc import Callable, Generator, Iterator, Mapping
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pynetdicom.association import Association

from dicomproxy import events, observe
from dicomproxy.config import Config, PeerConfig
from dicomproxy.errors import (
    CannotTranscode,
    DicomServiceError,
    MoveDestinationUnknown,
    PacsUnavailable,
    TooManySubOperations,
    UnableToProcess,
)
from dicomproxy.forward import Forwarder, SendResult, contexts_for, open_destination, send_with_retries
from dicomproxy.journal import InstanceRecord, Journal
from dicomproxy.pacs import RECEIVE_SYNTAXES, InstanceRef, PacsClient, RetrieveKey, StudySummary
from dicomproxy.qrservice import RetrieveResponse
from dicomproxy.request import RetrieveRequest, StudyResolver, parse_keys
from dicomproxy.routing import StudyRef, route
from dicomproxy.spool import End, Spool, SpooledInstance
from dicomproxy.status import JobKind, JobOutcome, Status
from dicomproxy.store import ReceiveRegistry
from dicomproxy.transcode import TranscodePool, TranscodeResult, policy_for
from dicomproxy.transcode.codec import ConversionFailed
from dicomproxy.upstream import Finder, Upstream

LOG = logging.getLogger("dicomproxy.relay")

#: Shortest gap between two Pending responses sent after sub-operations (seconds).
PROGRESS_INTERVAL = 0.2

MAX_SUBOPERATIONS = 65535  # Number of ... Sub-operations are US (PS3.7 C.4.2)

#: Longest wait on the conversion of the next instance before the spool is looked at again (seconds).
LOOKAHEAD_POLL = 0.05


@dataclass
class JobState:
    """Counts of one job (sub-operations, PS3.4 C.4.2.1.4)."""

    job_id: int
    expected: dict[str, InstanceRef] = field(default_factory=dict)
    processed: set[str] = field(default_factory=set)
    completed: int = 0
    failed: int = 0
    warning: int = 0
    failed_uids: list[str] = field(default_factory=list)
    records: list[InstanceRecord] = field(default_factory=list)
    #: time.monotonic() marks: job start, instance list known, destination open, first instance sent.
    marks: dict[str, float] = field(default_factory=lambda: {"start": time.monotonic()})

    def mark(self, name: str) -> None:
        self.marks.setdefault(name, time.monotonic())

    def timing(self) -> str:
        """``in 1.62 s (found 0.21, destination 0.23, first sent 0.30)`` for the job's last log line."""
        start = self.marks["start"]
        parts = [
            f"{k} {self.marks[k] - start:.2f}"
            for k in ("found", "destination", "first sent")
            if k in self.marks
        ]
        return f"in {time.monotonic() - start:.2f} s" + (f" ({', '.join(parts)})" if parts else "")

    #: Number of Study Related Instances when the job started before its instance list was known.
    announced: int = 0
    #: The IMAGE-level C-FIND running beside an early-started job; None once merged (or never).
    finder: Finder | None = None

    @property
    def counted(self) -> bool:
        """Whether Number of Remaining Sub-operations is known, which every Pending response carries
        (PS3.4 C.4.2.1.6): not for a job started before a PACS that announces no count listed it."""
        return self.finder is None or self.announced > 0

    @property
    def remaining(self) -> int:
        if not self.expected and self.announced:  # list not known (yet): count from the announced total
            return max(0, self.announced - len(self.processed))
        return max(0, len(self.expected) - len(self.processed & self.expected.keys()))

    def response(self, status: int, comment: str = "") -> RetrieveResponse:
        return RetrieveResponse(
            status,
            remaining=self.remaining,
            completed=self.completed,
            failed=self.failed,
            warning=self.warning,
            failed_uids=list(self.failed_uids),
            comment=comment,
        )


@dataclass
class _Prepared:
    """A spooled instance in the look-ahead window, in arrival order (its syntax chosen by the pool
    worker, or by :meth:`Forwarder.plan` without a pool).

    ``plan``: None = send inline (:meth:`Forwarder.send`, no pool) or, with a ``future``, in what
    the pool worker chose and wrote (:func:`~dicomproxy.transcode.codec.convert_for`: the spooled
    file itself when it goes as held, else ``tmp``); a SendResult = planning failed (re-planned by
    ``send_with_retries``, which reports it); a syntax = send the spooled file as it is.
    """

    item: SpooledInstance
    plan: str | SendResult | None = None
    future: Future[TranscodeResult] | None = None
    tmp: Path | None = None
    pool: TranscodePool | None = None

    def discard(self) -> None:
        """Not to be sent (job stopped): cancel the conversion, or delete its file once written."""
        future, tmp = self.future, self.tmp
        if future is None or tmp is None or future.cancel():
            return
        future.add_done_callback(lambda _: tmp.unlink(missing_ok=True))


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

    # --- entry points (generators for dicomproxy.qrservice) ---

    def move(
        self, req: RetrieveRequest, is_cancelled: Callable[[], bool], alive: Callable[[], bool]
    ) -> Iterator[RetrieveResponse]:
        peer = self.config.peer(req.move_destination)
        job_id = self.journal.start(
            JobKind.MOVE, req.calling_ae, req.calling_host, req.move_destination.strip(), ""
        )
        observe.job_started(job_id, req)
        if peer is None:
            exc = MoveDestinationUnknown(
                f"move destination {req.move_destination.strip()!r} is not a configured peer"
            )
            LOG.warning("job %d: %s", job_id, exc)
            self.journal.finish(job_id, status=exc.status, outcome=JobOutcome.REFUSED, error=str(exc))
            observe.job_finished(job_id, req.kind, JobOutcome.REFUSED, exc.status, None, 0)
            yield RetrieveResponse(exc.status, comment=exc.comment)
            return

        def opener(state: JobState, sop_classes: list[str], work_dir: Path) -> Forwarder:
            policy = policy_for(self.config, peer)
            # SOP classes unknown (not all listed, or started before the list): the common ones
            complete = bool(sop_classes) and all(r.sop_class_uid for r in state.expected.values())
            contexts = contexts_for(policy, sop_classes, [str(ts) for ts in RECEIVE_SYNTAXES], complete)
            # PS3.4 C.4.2.2.3 / PS3.7 9.1.1.1: the sub-operations name the C-MOVE's requester and
            # Message ID as Move Originator (pynetdicom's stock SCP puts its own AE title there).
            return open_destination(
                peer, self.config.proxy, contexts, policy, work_dir, (req.calling_ae, req.message_id)
            )

        yield from self._job(job_id, req, opener, is_cancelled, alive)

    def get(
        self, req: RetrieveRequest, assoc: Association, is_cancelled: Callable[[], bool]
    ) -> Iterator[RetrieveResponse]:
        job_id = self.journal.start(JobKind.GET, req.calling_ae, req.calling_host, req.calling_ae, "")
        observe.job_started(job_id, req)
        peer: PeerConfig | None = self.config.peer(req.calling_ae)

        def opener(state: JobState, sop_classes: list[str], work_dir: Path) -> Forwarder:
            return Forwarder(
                assoc, policy_for(self.config, peer), work_dir, fast_path=self.config.proxy.fast_path
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
    ) -> Iterator[RetrieveResponse]:
        state = JobState(job_id)
        forwarder: Forwarder | None = None
        spool: Spool | None = None
        upstream: Upstream | None = None
        final = RetrieveResponse(Status.SUCCESS)
        error = ""
        outcome = JobOutcome.FAILED
        try:
            if self.resolver is None:
                raise UnableToProcess("exam view not configured: nothing can be resolved")
            level, routed = parse_keys(req.identifier, self.resolver)
            keys = [key for key, _ in routed]
            self.journal.update(job_id, level=level, study_uids=[k.study_uid for k in keys])
            events.publish(events.JobResolved(job_id, level, tuple(k.study_uid for k in keys)))
            clients = self._route(routed)  # raises Unroutable before anything is asked of any archive
            self.journal.update(job_id, archive=",".join(dict.fromkeys(c.name for c in clients)))
            plan: list[tuple[PacsClient, RetrieveKey, list[InstanceRef]]] = []
            summary = self._study_summary(job_id, clients, keys)
            if summary is not None:
                # Early start: fetch and forward now, list the instances beside it (Finder). A PACS
                # that announces no count (dcmqrscp): no Pending response until the list is known.
                plan.append((clients[0], keys[0], []))
                state.announced, n, sop_classes = summary.count, summary.count, summary.sop_classes
                state.finder = Finder(clients[0], keys[0])
                if n:
                    self.journal.update(job_id, expected=n)
            else:
                for client, key in zip(clients, keys, strict=True):
                    client, refs = self._find_with_fallback(job_id, client, key)
                    plan.append((client, key, refs))
                    for ref in refs:
                        state.expected.setdefault(ref.sop_instance_uid, ref)
                if any(client.config.fallback for client in clients):  # record who actually serves
                    self.journal.update(job_id, archive=",".join(dict.fromkeys(c.name for c, _, _ in plan)))
                n = len(state.expected)
                sop_classes = sorted({r.sop_class_uid for r in state.expected.values() if r.sop_class_uid})
                self.journal.update(job_id, expected=n)
                # Durable before anything is fetched: `jobs retry` resends what of this was not confirmed.
                self.journal.add_expected(job_id, [asdict(ref) for ref in state.expected.values()])
            state.mark("found")
            if summary is None:
                how = ""
            elif n:
                how = " announced by the PACS, listing them meanwhile"
            else:
                how = " (the PACS announces no count), listing them meanwhile"
            LOG.info(
                "job %d: %s by %s, %d stud(ies), %s instance(s)%s",
                job_id,
                req.kind,
                req.calling_ae,
                len(keys),
                n if state.counted else "?",
                how,
            )
            if n > MAX_SUBOPERATIONS:
                raise TooManySubOperations(f"{n} instances: more than 65535 sub-operations")
            if n == 0 and state.counted:
                # Nothing visible, or nothing in the PACS: zero sub-operations (PS3.4 C.4.2.3.1).
                final, outcome = state.response(Status.SUCCESS), JobOutcome.EMPTY
            else:
                spool = Spool(self.spool_root, f"job-{job_id:06d}-{uuid.uuid4().hex[:6]}")
                forwarder = opener(state, sop_classes, spool.dir)
                state.mark("destination")
                if state.counted:
                    yield state.response(Status.PENDING)
                upstream = Upstream(plan, spool, sop_classes if summary is not None else None)
                upstream.start()
                final, outcome, error = yield from self._pump(
                    state, spool, forwarder, upstream, is_cancelled, alive
                )
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
        self.journal.update(state.job_id, expected=len(state.expected))
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

    def _pump(
        self,
        state: JobState,
        spool: Spool,
        forwarder: Forwarder,
        upstream: Upstream,
        is_cancelled: Callable[[], bool],
        alive: Callable[[], bool],
    ) -> Generator[RetrieveResponse, None, tuple[RetrieveResponse, JobOutcome, str]]:
        """Forward instances as they arrive; returns (final response, outcome, error).

        With a compressing policy, instances already waiting in the spool are planned ahead
        (at most 2 × workers + 2) and those needing conversion go to the process pool, so the
        cores encode while this thread sends; sending stays in arrival order. ``none`` mode
        sends one instance at a time and converts inline if it must (no pool).
        """
        pool = self._transcode_pool() if forwarder.policy.mode != "none" else None
        limit = 2 * pool.workers + 2 if pool is not None else 1
        window: deque[_Prepared] = deque()
        end: End | None = None
        dest_error = ""
        last_progress = 0.0
        last_yield = time.monotonic()
        try:
            while True:
                self._merge_found(state)
                if is_cancelled():
                    upstream.stop()
                    return state.response(Status.CANCEL), JobOutcome.CANCELLED, "cancelled by the requester"
                if not alive():
                    upstream.stop()
                    return state.response(Status.CANCEL), JobOutcome.ABORTED, "requester went away"
                if not window:
                    if end is not None:
                        break
                    item = spool.get(timeout=self.pending_interval)
                    if item is None:
                        if state.counted:
                            last_progress = last_yield = time.monotonic()
                            yield state.response(Status.PENDING)  # keeps the requester's DIMSE timer alive
                        continue
                    if isinstance(item, End):
                        end = item
                        break
                    window.append(self._prepare(forwarder, item, pool is not None))
                while end is None and len(window) < limit:  # look ahead: what already arrived
                    nxt = spool.poll()
                    if nxt is None:
                        break
                    if isinstance(nxt, End):
                        end = nxt
                        break
                    window.append(self._prepare(forwarder, nxt, pool is not None))
                head = window[0]
                if head.future is not None and not head.future.done():
                    wait_futures([head.future], timeout=min(LOOKAHEAD_POLL, self.pending_interval))
                    if not head.future.done():
                        now = time.monotonic()
                        if now - last_yield >= self.pending_interval and state.counted:
                            last_progress = last_yield = now
                            yield state.response(Status.PENDING)
                        continue
                window.popleft()
                self._forward_one(state, forwarder, head)
                if not forwarder.alive:
                    dest_error = "destination aborted the association"
                    upstream.stop()
                    break
                now = time.monotonic()
                if state.counted and (
                    now - last_progress >= PROGRESS_INTERVAL
                    or len(state.processed) == 1
                    or not state.remaining
                ):
                    last_progress = last_yield = now
                    yield state.response(Status.PENDING)
        finally:
            for left in window:
                left.discard()
        pacs_error = end.error if end is not None else None
        nothing_sent = not state.processed
        self._merge_found(state, wait=max(a.dimse_timeout for a in self.config.all_archives))
        self._count_missing(state)
        if pacs_error is not None and nothing_sent:
            status = (
                pacs_error.status if isinstance(pacs_error, DicomServiceError) else Status.PACS_UNAVAILABLE
            )
            comment = pacs_error.comment if isinstance(pacs_error, DicomServiceError) else "PACS failed"
            return state.response(status, comment), JobOutcome.FAILED, str(pacs_error)
        error = dest_error or (str(pacs_error) if pacs_error else "")
        if not state.failed and not state.warning:
            return state.response(Status.SUCCESS), JobOutcome.SUCCESS, error
        if not state.completed and not state.warning:
            comment = dest_error or (str(pacs_error) if pacs_error else "all sub-operations failed")
            return state.response(Status.OUT_OF_RESOURCES_SUBOPS, comment), JobOutcome.FAILED, error
        return state.response(Status.SUBOPS_WARNING), JobOutcome.PARTIAL, error

    def _prepare(self, forwarder: Forwarder, item: SpooledInstance, use_pool: bool) -> _Prepared:
        """Hand ``item`` to the pool, which chooses its syntax and converts it if it must (the
        header is read there, not on this thread); no accepted context: fail it here."""
        if not use_pool:
            return _Prepared(item)
        accepted = forwarder.accepted(item.sop_class_uid)
        if not accepted:
            return _Prepared(item, forwarder.plan(item))  # the failure, without reading the file
        tmp = forwarder.converted_path(item)
        pool = self._transcode_pool()
        try:
            future = pool.submit_for(item.path, tmp, tuple(accepted), forwarder.policy)
        except BrokenProcessPool:
            self._drop_pool(pool)
            return _Prepared(item)  # converted inline; the next instance gets a new pool
        except RuntimeError:  # the pool was shut down (the proxy is stopping)
            return _Prepared(item)
        return _Prepared(item, None, future, tmp, pool)

    def _forward_one(self, state: JobState, forwarder: Forwarder, prepared: _Prepared) -> None:
        item = prepared.item
        uid = item.sop_instance_uid
        proxy = self.config.proxy
        label = f"job {state.job_id}"
        target = prepared.plan
        try:
            if prepared.future is not None:
                try:
                    converted = prepared.future.result()
                except CannotTranscode as exc:  # nothing accepted can carry it (0xC010)
                    res = SendResult(exc.status, error=str(exc))
                except ConversionFailed as exc:  # this instance's failure, never the job's
                    res = SendResult(Status.UNABLE_TO_PROCESS, exc.target, error=str(exc))
                except Exception as exc:  # the pool itself (a worker died)
                    if isinstance(exc, BrokenProcessPool) and prepared.pool is not None:
                        self._drop_pool(prepared.pool)
                    res = SendResult(Status.UNABLE_TO_PROCESS, error=f"cannot convert: {exc}")
                else:
                    sent_as = (converted.path, converted.transfer_syntax)
                    res = send_with_retries(forwarder, item, proxy.retries, proxy.retry_delay, label, sent_as)
            elif isinstance(target, str):  # passed through as it is held
                res = send_with_retries(
                    forwarder, item, proxy.retries, proxy.retry_delay, label, (item.path, target)
                )
            else:  # no pool, or planning failed (re-planned and reported by forwarder.send)
                res = send_with_retries(forwarder, item, proxy.retries, proxy.retry_delay, label)
        finally:
            if prepared.tmp is not None:
                prepared.tmp.unlink(missing_ok=True)
        state.processed.add(uid)
        state.mark("first sent")
        record = InstanceRecord(
            uid, "failed", item.sop_class_uid, res.status, res.transfer_syntax, res.bytes_out, res.error
        )
        if res.category == "Success":
            state.completed += 1
            record.state = "sent"
        elif res.category == "Warning":
            state.warning += 1
            record.state = "warning"
        else:
            state.failed += 1
            state.failed_uids.append(uid)
        # Journal first, then drop the file: a crash between the two leaves a file that
        # `jobs retry` recognises as confirmed, never a confirmed-looking instance without a record.
        self.journal.add_instances(state.job_id, [record])
        events.publish(
            events.InstanceSent(
                state.job_id, record.state, record.transfer_syntax, record.bytes, item.sop_class_uid
            )
        )
        if record.state != "failed":
            Spool.confirmed(item)

    @staticmethod
    def _count_missing(state: JobState) -> None:
        """Announced instances that never arrived (or could not be sent) are failed sub-operations."""
        if not state.expected and state.announced > len(state.processed):
            state.failed += state.announced - len(state.processed)  # list unknown: no UIDs to name
            return
        for uid, ref in state.expected.items():
            if uid not in state.processed:
                state.processed.add(uid)
                state.failed += 1
                state.failed_uids.append(uid)
                state.records.append(
                    InstanceRecord(uid, "missing", ref.sop_class_uid, error="never received")
                )

    def close(self) -> None:
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
        self.journal.close()
