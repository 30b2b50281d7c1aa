"""What a job asks its archives for: route each study, list its instances or start early.

:class:`Lister` turns a request's routed keys into the job's fetch list — one
(archive, retrieve key, instances) entry per study, or per series for a push that leaves out what
the destination confirmed — and journals what a retry needs before anything is fetched: the keys
and the archive (:meth:`Journal.record_keys`), the announced instances (``job_expected``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict

from dicomproxy.config import Config
from dicomproxy.errors import PacsUnavailable
from dicomproxy.pacs.client import InstanceRef, PacsClient, RetrieveKey, StudySummary
from dicomproxy.pacs.routing import StudyRef, route
from dicomproxy.relay.engine import Fetch
from dicomproxy.relay.journal import JobKey, Journal
from dicomproxy.relay.outcome import JobState
from dicomproxy.relay.upstream import Finder

LOG = logging.getLogger("dicomproxy.relay")


def routed_keys(config: Config, routed: list[tuple[RetrieveKey, StudyRef]]) -> list[JobKey]:
    """Each key with the archive that serves its study (``routing.route`` on the view row's
    Sysid/ExamineType). Raises Unroutable (0xC004) if any study has no archive."""
    return [
        JobKey(key.study_uid, key.series_uids, key.sop_uids, route(config, ref.sysid, ref.modality).name)
        for key, ref in routed
    ]


def record_routed(journal: Journal, job_id: int, keys: list[JobKey]) -> None:
    """Journal ``keys`` and the job's archive list (each archive once, in order of first use)."""
    journal.record_keys(job_id, keys, ",".join(dict.fromkeys(k.archive for k in keys)))


class Lister:
    """Routing and listing for the jobs of one process (its archive clients by name)."""

    def __init__(self, config: Config, archives: Mapping[str, PacsClient], journal: Journal) -> None:
        self.config = config
        self.archives = archives
        self.journal = journal

    def route(self, job_id: int, routed: list[tuple[RetrieveKey, StudyRef]]) -> list[PacsClient]:
        """The archive client of each study (``routing.route`` on its view row's Sysid/ExamineType),
        journalled with the keys before anything is asked of any archive.

        One request may span archives (a patient's RIS and UIS exams): each study is fetched from
        its own archive into the same job. Raises Unroutable (0xC004) if any study has no archive:
        the whole request fails, nothing is fetched, no other archive is tried.
        """
        keys = routed_keys(self.config, routed)
        record_routed(self.journal, job_id, keys)
        return [self.archives[k.archive] for k in keys]

    def fetch_list(
        self,
        state: JobState,
        clients: list[PacsClient],
        keys: list[RetrieveKey],
        exclude: frozenset[str],
    ) -> tuple[Fetch, list[str], StudySummary | None]:
        """(the fetch list, the SOP classes, the STUDY-level summary of an early start).

        Early start: fetch now, list the instances beside it (:class:`Finder`). Otherwise the
        instances are listed first and journalled (``job_expected``) before anything is fetched;
        ``exclude`` (a push's confirmed instances) are left out, per series (PS3.4 C.4.2.2.1.4)."""
        job_id = state.job_id
        summary = None if exclude else self._study_summary(job_id, clients, keys)
        fetch: Fetch = []
        if summary is not None:
            # A PACS that announces no count (dcmqrscp): no Pending response until the list is known.
            fetch.append((clients[0], keys[0], []))
            state.announced = summary.count
            state.finder = Finder(clients[0], keys[0])
            if summary.count:
                self.journal.update(job_id, expected=summary.count + state.extras)
            state.mark("found")
            return fetch, summary.sop_classes, summary
        for client, key in zip(clients, keys, strict=True):
            client, refs = self._find_with_fallback(job_id, client, key)
            if exclude:
                refs = [r for r in refs if r.sop_instance_uid not in exclude]
                fetch.extend((client, k, rs) for k, rs in by_series(key.study_uid, refs))
            else:
                fetch.append((client, key, refs))
            for ref in refs:
                state.expected.setdefault(ref.sop_instance_uid, ref)
        if any(client.config.fallback for client in clients):  # record who actually serves
            self.journal.update(job_id, archive=",".join(dict.fromkeys(c.name for c, _, _ in fetch)))
        sop_classes = sorted({r.sop_class_uid for r in state.expected.values() if r.sop_class_uid})
        if not state.expected:
            fetch = []  # only order/report objects (if any): nothing to ask the PACS for
        self.journal.update(job_id, expected=len(state.expected) + state.extras)
        # Durable before anything is fetched: a retry resends what of this was not confirmed.
        self.journal.add_expected(job_id, [asdict(ref) for ref in state.expected.values()])
        state.mark("found")
        return fetch, sop_classes, None

    def _study_summary(
        self, job_id: int, clients: list[PacsClient], keys: list[RetrieveKey]
    ) -> StudySummary | None:
        """The STUDY-level count and SOP classes of a one-study request, to start fetching before
        the IMAGE-level C-FIND has listed every instance (first instance independent of study
        size, issue 7). None — and the job lists first — for several studies, a SERIES/IMAGE-level
        request, an archive with fallbacks (the list decides who serves), a study the PACS does
        not have, or SOP classes the STUDY level does not name but the list may (exact
        presentation contexts matter more than 0.1 s). An archive whose lists name no SOP class
        either (dcmqrscp, learned from its first listing) starts at once with the common storage
        classes, and with or without a count. A PACS that cannot be asked fails the job as the
        IMAGE-level C-FIND would."""
        if len(keys) != 1 or keys[0].level != "STUDY" or clients[0].config.fallback:
            return None
        summary = clients[0].study_summary(keys[0].study_uid)
        if summary is None:
            LOG.debug("job %d: the PACS does not know the study at STUDY level; listing first", job_id)
        elif not summary.sop_classes and clients[0].lists_sop_classes is not False:
            LOG.debug("job %d: no SOP Classes in Study from the PACS; listing first", job_id)
            return None
        return summary

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


def by_series(study_uid: str, refs: list[InstanceRef]) -> list[tuple[RetrieveKey, list[InstanceRef]]]:
    """IMAGE-level keys (PS3.4 C.4.2.2.1.4: one series, a list of SOP Instance UIDs) for ``refs``."""
    groups: dict[str, list[InstanceRef]] = {}
    for ref in refs:
        groups.setdefault(ref.series_uid, []).append(ref)
    return [
        (RetrieveKey(study_uid, (series,), tuple(r.sop_instance_uid for r in rs)), rs)
        for series, rs in groups.items()
    ]
