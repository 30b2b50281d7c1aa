"""``dicomproxy reconcile``: the I/O of the completeness report (the decisions: :mod:`.decide`).

For every study of the **visible** view rows performed in the range
(:meth:`~dicomproxy.view.repository.ExamView.studies_performed`: the view's own visibility rule, so
a hidden study is never listed) and every destination asked about:

1. the archive its ``Sysid``/``ExamineType`` routes to (:func:`~dicomproxy.pacs.routing.route`)
   lists the study's instances — an IMAGE-level C-FIND (PS3.4 C.6.2.1) per study, **one
   association per archive** for the whole run (:class:`~dicomproxy.pacs.client.InstanceFinder`,
   through the transport's one ``open_link``), paced to ``rate`` C-FINDs per second, C-FIND only;
2. the journal says what jobs to the destination confirmed
   (:meth:`~dicomproxy.relay.journal.JobQueries.confirmed_by_study`) and, once Storage Commitment
   is journalled, what is stored but not committed
   (:meth:`~dicomproxy.relay.journal.JobQueries.uncommitted_by_study`, empty today);
3. the destination lists what it holds, when it is a Q/R SCP (the same C-FIND on one association
   to it, same pace); a refused association, no Study Root FIND context or a failure status means
   "unknown": then the journal stands in for it (``basis`` = journal).

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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from dicomproxy.config import Config, PacsConfig
from dicomproxy.errors import DicomServiceError
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
    """One study at one destination: the report's row."""

    study_uid: str
    accession: str
    destination: str
    archive: str
    verdict: Verdict
    #: Why the PACS or the destination could not be asked ("" when both answered).
    error: str = ""
    #: Instances queued for delivery by ``--fix``.
    queued: int = 0


@dataclass
class Outcome:
    """A run: its rows (in view order, destinations in the order asked) and per-destination counts."""

    reports: list[StudyReport] = field(default_factory=list)
    summaries: list[RunSummary] = field(default_factory=list)
    #: Destination → why it could not be asked for the whole run (then its basis is the journal).
    unasked: dict[str, str] = field(default_factory=dict)
    #: The load the run put on each peer: "PACS <AE>" / "destination <AE>" → (C-FINDs, associations).
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

    def run(
        self, since: dt.datetime, until: dt.datetime, destinations: Sequence[str], *, fix: bool = False
    ) -> Outcome:
        """Report on the studies performed in ``[since, until)`` at each of ``destinations``
        (configured peers); with ``fix`` (and a queue), queue what is missing. Raises
        ViewUnavailable when the view cannot be read, SQLAlchemyError when the journal cannot."""
        started = self.utcnow()
        studies = list(self.view.studies_performed(since, until))
        uids = [s.ref.uid for s in studies]
        outcome = Outcome()
        pacs, archive_of, errors = self._list_pacs(studies, outcome.load)
        for dest in destinations:
            journal = self.journal.confirmed_by_study(dest, uids)
            uncommitted = self.journal.uncommitted_by_study(dest, uids)
            asked = [s for s in studies if pacs.get(s.ref.uid) is not None]
            held, why = self._list_destination(dest, asked, outcome.load)
            if "" in why:
                outcome.unasked[dest] = why[""]
            for study in studies:
                uid = study.ref.uid
                verdict = decide(
                    pacs.get(uid),
                    journal.get(uid, frozenset()),
                    held.get(uid),
                    uncommitted.get(uid, frozenset()),
                )
                queued = self._fix(study, dest, verdict) if fix else 0
                error = errors.get(uid, "") or why.get(uid, why.get("", "") if uid not in held else "")
                outcome.reports.append(
                    StudyReport(uid, study.accession, dest, archive_of.get(uid, ""), verdict, error, queued)
                )
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

    # --- the PACS ----------------------------------------------------------------------------------

    def _list_pacs(
        self, studies: Iterable[ExamStudy], load: dict[str, tuple[int, int]]
    ) -> tuple[dict[str, frozenset[str] | None], dict[str, str], dict[str, str]]:
        """Each study's SOP Instance UIDs at its archive (None: not asked or not answered), the
        archive's name, and why not. The studies of one archive are asked on one association,
        one archive after the other; an archive that cannot be reached is not asked again."""
        listed: dict[str, frozenset[str] | None] = {}
        archive_of: dict[str, str] = {}
        errors: dict[str, str] = {}
        by_archive: dict[str, tuple[PacsConfig, list[str]]] = {}
        for study in studies:
            try:
                archive = route(self.config, study.ref.sysid, study.ref.modality)
            except DicomServiceError as exc:  # Unroutable
                listed[study.ref.uid], errors[study.ref.uid] = None, str(exc)
                continue
            archive_of[study.ref.uid] = archive.name
            by_archive.setdefault(archive.name, (archive, []))[1].append(study.ref.uid)
        for archive, uids in by_archive.values():
            finder = archive_finder(
                archive,
                self.config.proxy.ae_title,
                fast_path=self.config.proxy.fast_path,
                pace=Pace(self.rate),
            )
            down = ""
            try:
                for uid in uids:
                    if down:
                        listed[uid], errors[uid] = None, down
                        continue
                    try:
                        listed[uid] = frozenset(r.sop_instance_uid for r in finder.study(uid))
                    except DicomServiceError as exc:
                        listed[uid], errors[uid] = None, str(exc)
                        if not finder.is_open:
                            down = str(exc)  # no association: the others are not tried one by one
            finally:
                finder.close()
                load[finder.who] = (finder.finds, finder.associations)
        return listed, archive_of, errors

    # --- a destination -------------------------------------------------------------------------------

    def _list_destination(
        self, destination: str, studies: Sequence[ExamStudy], load: dict[str, tuple[int, int]]
    ) -> tuple[dict[str, frozenset[str]], dict[str, str]]:
        """What the destination holds of each study, when it answers C-FIND, and why not: by
        study UID (a failure status for that study), or under "" when it could not be asked at
        all (an association refused or lost, no Study Root FIND context)."""
        held: dict[str, frozenset[str]] = {}
        why: dict[str, str] = {}
        if not studies:
            return held, why
        finder = peer_finder(self.config, destination, Pace(self.rate))
        try:
            for study in studies:
                try:
                    held[study.ref.uid] = frozenset(r.sop_instance_uid for r in finder.study(study.ref.uid))
                except DicomServiceError as exc:
                    if not finder.is_open:
                        LOG.info(
                            "reconcile: %s cannot be asked (%s): its journal stands in", destination, exc
                        )
                        return {}, {"": str(exc)}
                    LOG.info("reconcile: %s did not list study %s (%s)", destination, study.ref.uid, exc)
                    why[study.ref.uid] = str(exc)
        finally:
            finder.close()
            load[finder.who] = (finder.finds, finder.associations)
        return held, why

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
        count = {c: sum(1 for r in mine if r.verdict.category is c) for c in Category}
        asked = any(
            r.verdict.basis == DESTINATION for r in mine if r.verdict.category is not Category.UNKNOWN
        )
        return RunSummary(
            destination=destination,
            started=started,
            ended=self.utcnow(),
            since=since,
            until=until,
            studies=len(mine),
            complete=count[Category.COMPLETE],
            missing_studies=count[Category.MISSING],
            missing_instances=sum(len(r.verdict.missing) for r in mine),
            extra_studies=count[Category.EXTRA],
            not_in_pacs=count[Category.NOT_IN_PACS],
            uncommitted=count[Category.UNCOMMITTED],
            unknown=count[Category.UNKNOWN],
            basis=DESTINATION if asked else JOURNAL,
            queued=sum(r.queued for r in mine),
        )
