"""``dicomproxy reconcile``: the I/O of the completeness report (the decisions: :mod:`.decide`).

For every study of the **visible** view rows performed in the range
(:meth:`~dicomproxy.view.repository.ExamView.studies_performed`: the view's own visibility rule, so
a hidden study is never listed) and every destination asked about:

1. the archive its ``Sysid``/``ExamineType`` routes to (:func:`~dicomproxy.pacs.routing.route`)
   lists the study's instances — an IMAGE-level C-FIND (PS3.4 C.6.2.1) per study, **one
   association per archive** for the whole run (:class:`~dicomproxy.pacs.client.InstanceFinder`,
   through the transport's one ``open_link``), paced to ``rate`` C-FINDs per second, C-FIND only;
2. the journal says what jobs to the destination confirmed
   (:meth:`~dicomproxy.relay.journal.JobQueries.confirmed_by_study`) and what is stored but not
   committed by Storage Commitment, for a destination asked to commit
   (:meth:`~dicomproxy.relay.journal.JobQueries.uncommitted_by_study`);
3. the destination lists what it holds, when it is a Q/R SCP (the same C-FIND on one association
   to it, same pace); a refused association, no Study Root FIND context or a failure status means
   "unknown": then the journal stands in for it (``basis`` = journal).

Studies are taken one at a time (archive by archive), their UID sets decided and dropped: a row
keeps counts and the missing/extra UIDs only, so a month's report is not a month of UID lists.

``fix``: for each study missing instances at a destination, the journal rows of the instances the
destination confirmed once but no longer holds become ``lost`` (:meth:`Journal.unconfirm`), and the
study's push item is queued with the instances it holds left out
(:meth:`~dicomproxy.push.queue.PushQueue.queue_fix`): the delivery then sends exactly the missing
ones (and any that reached the PACS since). Each run's counts go to ``reconcile_runs``
(:mod:`.summary`). Logs name study UIDs and counts only, never a patient.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from dicomproxy.config import Config, PacsConfig
from dicomproxy.corrections.store import CorrectionStore
from dicomproxy.errors import DicomServiceError
from dicomproxy.identity.corrections import held_as_listed
from dicomproxy.pacs.client import InstanceFinder, archive_finder
from dicomproxy.pacs.routing import route
from dicomproxy.push.queue import PushQueue
from dicomproxy.reconcile.decide import DESTINATION, JOURNAL, Category, Verdict, decide
from dicomproxy.reconcile.summary import RunSummaries, RunSummary
from dicomproxy.relay.journal import Journal
from dicomproxy.transport.link import Timeouts
from dicomproxy.transport.net import Remote
from dicomproxy.view.repository import ExamStudy, ExamView

LOG = logging.getLogger("dicomproxy.reconcile")


class Pace:
    """At most ``rate`` calls per second (the report's load cap on the PACS); ``rate`` ≤ 0: none."""

    def __init__(
        self,
        rate: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.clock = clock
        self.sleep = sleep
        self._next = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            now = self.clock()
            wait = self._next - now
            self._next = max(now, self._next) + self.interval
        if wait > 0:
            self.sleep(wait)


@dataclass(frozen=True)
class StudyReport:
    """One study at one destination: the report's row. Counts, and the UIDs an operator acts on
    (missing, lost, extra, stored but not committed) — not every UID listed, so a month's report
    stays small."""

    study_uid: str
    accession: str
    destination: str
    archive: str
    category: Category
    #: "destination" (it answered C-FIND) or "journal" (it could not be asked).
    basis: str
    #: pacs, present, missing, lost, extra, ours, uncommitted → how many.
    counts: dict[str, int]
    missing: tuple[str, ...]
    lost: frozenset[str]
    extra: tuple[str, ...]
    #: Why the PACS or the destination could not be asked ("" when both answered).
    error: str = ""
    #: Instances queued for delivery by ``--fix``.
    queued: int = 0
    #: Stored at the destination, its Storage Commitment not (yet) given.
    uncommitted: tuple[str, ...] = ()

    @classmethod
    def of(
        cls, study: ExamStudy, destination: str, archive: str, v: Verdict, error: str, queued: int
    ) -> StudyReport:
        counts = {
            "pacs": len(v.pacs),
            "present": len(v.present),
            "missing": len(v.missing),
            "lost": len(v.lost),
            "extra": len(v.extra),
            "ours": len(v.ours),
            "uncommitted": len(v.uncommitted),
        }
        return cls(
            study.ref.uid,
            study.accession,
            destination,
            archive,
            v.category,
            v.basis,
            counts,
            tuple(sorted(v.missing)),
            v.lost,
            tuple(sorted(v.extra)),
            error,
            queued,
            tuple(sorted(v.uncommitted)),
        )


@dataclass
class Outcome:
    """A run: its rows (in view order, destinations in the order asked) and per-destination counts."""

    reports: list[StudyReport] = field(default_factory=list)
    summaries: list[RunSummary] = field(default_factory=list)
    #: Destination → why it could not be asked for the whole run (then its basis is the journal).
    unasked: dict[str, str] = field(default_factory=dict)
    #: The load the run put on each peer: "PACS <AE>" / "destination <AE>" → (C-FINDs, associations
    #: requested).
    load: dict[str, tuple[int, int]] = field(default_factory=dict)


def peer_finder(config: Config, destination: str, pace: Callable[[], None]) -> InstanceFinder:
    """An :class:`InstanceFinder` on a destination peer: our AE title, its TLS, the proxy's
    timeouts (``[proxy] acse_timeout``, ``dimse_timeout``)."""
    peer = config.peer(destination)
    if peer is None:
        raise ValueError(f"{destination!r} is not a [[peers]] AE title")
    p = config.proxy
    return InstanceFinder(
        p.ae_title,
        Remote(peer.ae_title, peer.host, peer.port),
        f"destination {peer.ae_title}",
        timeouts=Timeouts(10.0, p.acse_timeout, p.dimse_timeout),
        max_pdu=p.max_pdu,
        tls=peer.tls,
        fast_path=p.fast_path,
        pace=pace,
    )


class Reconciler:
    """One run of the report over a view, the archives, the journal and the destinations."""

    def __init__(
        self,
        config: Config,
        view: ExamView,
        journal: Journal,
        *,
        rate: float = 2.0,
        queue: PushQueue | None = None,
        utcnow: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.timezone.utc).replace(tzinfo=None),
    ) -> None:
        self.config = config
        self.view = view
        self.journal = journal
        self.rate = rate
        #: The push queue ``fix`` queues into (None: no fix).
        self.queue = queue
        self.utcnow = utcnow
        self._jobs_from: dt.datetime | None = None
        #: Corrections after delivery: a corrected copy counts as its PACS instance.
        self.corrections = CorrectionStore(journal.engine, "reconcile")

    def run(
        self, since: dt.datetime, until: dt.datetime, destinations: Sequence[str], *, fix: bool = False
    ) -> Outcome:
        """Report on the studies performed in ``[since, until)`` at each of ``destinations``
        (configured peers); with ``fix`` (and a queue), queue what is missing. Raises
        ViewUnavailable when the view cannot be read, SQLAlchemyError when the journal cannot.

        One study at a time: its UID sets are decided and dropped (a month of studies is not held
        in memory), in batches of :data:`BATCH` for the journal's reads. The studies are taken
        archive by archive (each archive's association is released when its studies are done);
        each destination's association stays open for the run."""
        started = self.utcnow()
        #: Jobs that may have delivered these studies: since the range began (PerformTime is local
        #: time, the journal's UTC: a day's margin covers any zone).
        self._jobs_from = since - dt.timedelta(days=1)
        studies = list(self.view.studies_performed(since, until))
        order = {s.ref.uid: i for i, s in enumerate(studies)}
        outcome = Outcome()
        dests = {d: _Destination(peer_finder(self.config, d, Pace(self.rate))) for d in destinations}
        for name, asked in dests.items():
            peer = self.config.peer(name)
            if peer is not None and not peer.speaks_dimse:  # no C-FIND port; QIDO-RS not asked (yet)
                asked.down = "a DICOMweb peer: not asked, the journal stands in"
        try:
            for archive, group in self._by_archive(studies):
                finder = (
                    archive_finder(
                        archive,
                        self.config.proxy.ae_title,
                        fast_path=self.config.proxy.fast_path,
                        pace=Pace(self.rate),
                    )
                    if archive is not None
                    else None
                )
                try:
                    for start in range(0, len(group), BATCH):
                        self._batch(group[start : start + BATCH], archive, finder, dests, outcome, fix)
                finally:
                    if finder is not None:
                        finder.close()
                        outcome.load[finder.who] = (finder.finds, finder.associations)
        finally:
            for d in dests.values():
                d.finder.close()
        for name, d in dests.items():
            outcome.load[d.finder.who] = (d.finder.finds, d.finder.associations)
            if d.down:
                outcome.unasked[name] = d.down
        outcome.reports.sort(key=lambda r: (order[r.study_uid], destinations.index(r.destination)))
        for dest in destinations:
            outcome.summaries.append(self._summary(dest, since, until, started, outcome.reports))
        RunSummaries(self.journal.engine).record(outcome.summaries)
        for s in outcome.summaries:
            LOG.info(
                "reconcile %s: %d studies: %d complete, %d missing %d instance(s), %d extra, %d not in the "
                "PACS, %d not committed, %d unknown (basis: %s)%s",
                s.destination,
                s.studies,
                s.complete,
                s.missing_studies,
                s.missing_instances,
                s.extra_studies,
                s.not_in_pacs,
                s.uncommitted,
                s.unknown,
                s.basis,
                f"; {s.queued} instance(s) queued for delivery" if fix else "",
            )
        return outcome

    def _by_archive(self, studies: Sequence[ExamStudy]) -> list[tuple[PacsConfig | None, list[ExamStudy]]]:
        """The studies grouped by the archive each routes to, in the order first seen; those no
        archive serves (Unroutable) in a group of their own, with None."""
        groups: dict[str, tuple[PacsConfig | None, list[ExamStudy]]] = {}
        for study in studies:
            try:
                archive: PacsConfig | None = route(self.config, study.ref.sysid, study.ref.modality)
            except DicomServiceError:  # Unroutable: reported per study by _pacs_list
                archive = None
            key = archive.name if archive is not None else ""
            groups.setdefault(key, (archive, []))[1].append(study)
        return list(groups.values())

    def _batch(
        self,
        batch: Sequence[ExamStudy],
        archive: PacsConfig | None,
        finder: InstanceFinder | None,
        dests: dict[str, _Destination],
        outcome: Outcome,
        fix: bool,
    ) -> None:
        """Decide ``batch`` (studies of one archive) at every destination."""
        uids = [s.ref.uid for s in batch]
        journal = {d: self.journal.confirmed_by_study(d, uids, self._jobs_from) for d in dests}
        uncommitted = {d: self.journal.uncommitted_by_study(d, uids) for d in dests}
        copied = {d: self.corrections.copied(d, uids) for d in dests}  # IOCM copies (docs/identity.md)
        for study in batch:
            uid = study.ref.uid
            listed, error = self._pacs_list(study, archive, finder)
            for name, dest in dests.items():
                held, why = dest.list(uid) if listed is not None else (None, "")
                if held is not None and listed is not None:
                    held = held_as_listed(listed, held, copied[name].get(uid, ()))
                verdict = decide(
                    listed,
                    journal[name].get(uid, frozenset()),
                    held,
                    uncommitted[name].get(uid, frozenset()),
                )
                queued = self._fix(study, name, verdict) if fix else 0
                outcome.reports.append(
                    StudyReport.of(
                        study, name, archive.name if archive else "", verdict, error or why, queued
                    )
                )

    def _pacs_list(
        self, study: ExamStudy, archive: PacsConfig | None, finder: InstanceFinder | None
    ) -> tuple[frozenset[str] | None, str]:
        """The study's SOP Instance UIDs at its archive, or None and why not (not routable; the
        archive failed for it; the archive could not be reached — then it is not tried again)."""
        if archive is None or finder is None:
            try:
                route(self.config, study.ref.sysid, study.ref.modality)
            except DicomServiceError as exc:
                return None, str(exc)
            return None, "not routable"
        if finder.down:
            return None, finder.down
        try:
            return frozenset(r.sop_instance_uid for r in finder.study(study.ref.uid)), ""
        except DicomServiceError as exc:
            if not finder.is_open:  # no association: the other studies are not tried one by one
                finder.down = str(exc)
            return None, str(exc)

    # --- fix and counts ------------------------------------------------------------------------------

    def _fix(self, study: ExamStudy, destination: str, verdict: Verdict) -> int:
        """Queue the study's missing instances for push delivery (module docstring); how many."""
        if self.queue is None or not verdict.missing:
            return 0
        if verdict.lost:
            self.journal.unconfirm(destination, verdict.lost)
        item_id, made = self.queue.queue_fix(study.ref.uid, destination, study.examine_id, verdict.present)
        LOG.info(
            "reconcile --fix: study %s: %d instance(s) (%d confirmed once, lost at %s): push item %d%s",
            study.ref.uid,
            len(verdict.missing),
            len(verdict.lost),
            destination,
            item_id,
            " (new)" if made else "",
        )
        return len(verdict.missing)

    def _summary(
        self,
        destination: str,
        since: dt.datetime,
        until: dt.datetime,
        started: dt.datetime,
        reports: Sequence[StudyReport],
    ) -> RunSummary:
        mine = [r for r in reports if r.destination == destination]
        count = {c: sum(1 for r in mine if r.category is c) for c in Category}
        asked = any(r.basis == DESTINATION for r in mine if r.category is not Category.UNKNOWN)
        return RunSummary(
            destination=destination,
            started=started,
            ended=self.utcnow(),
            since=since,
            until=until,
            studies=len(mine),
            complete=count[Category.COMPLETE],
            missing_studies=count[Category.MISSING],
            missing_instances=sum(len(r.missing) for r in mine),
            extra_studies=count[Category.EXTRA],
            not_in_pacs=count[Category.NOT_IN_PACS],
            uncommitted=count[Category.UNCOMMITTED],
            unknown=count[Category.UNKNOWN],
            basis=DESTINATION if asked else JOURNAL,
            queued=sum(r.queued for r in mine),
        )


#: Studies whose journal confirmations are read at once.
BATCH = 200


class _Destination:
    """A destination's C-FIND during a run: one association, or "down" (then the journal stands in)."""

    def __init__(self, finder: InstanceFinder) -> None:
        self.finder = finder
        #: Why it could not be asked at all ("" while it can).
        self.down = ""

    def list(self, study_uid: str) -> tuple[frozenset[str] | None, str]:
        """What it holds of the study, or None and why not: a refused or lost association, no
        Study Root FIND context (then not asked again this run), or a failure status for this study."""
        if self.down:
            return None, self.down
        try:
            return frozenset(r.sop_instance_uid for r in self.finder.study(study_uid)), ""
        except DicomServiceError as exc:
            if not self.finder.is_open:
                self.down = str(exc)
                LOG.info("reconcile: %s cannot be asked (%s): the journal stands in", self.finder.who, exc)
            else:
                LOG.info("reconcile: %s did not list study %s (%s)", self.finder.who, study_uid, exc)
            return None, str(exc)
