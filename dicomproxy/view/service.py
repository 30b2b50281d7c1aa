"""The C-FIND service behind the handler: level dispatch, visibility for SERIES/IMAGE,
PACS counts, the ``max_results`` cap and response datasets (PS3.4 C.4.1.2, C.4.1.3).

Answers carry only the requested keys (PS3.4 C.4.1.1.3.2), the level's unique key,
QueryRetrieveLevel and Specific Character Set (0008,0005).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack
from typing import Any

from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from dicomproxy.config import Config, NameStyle
from dicomproxy.config.holder import Settings, as_settings
from dicomproxy.mapping import FILES_KEY
from dicomproxy.pacs.find import Counts, CountsSession, PacsFinder
from dicomproxy.pacs.routing import StudyRef, Unroutable, route
from dicomproxy.reports.fetch import ReportUnavailable
from dicomproxy.reports.study import (
    StudyFile,
    image_attributes,
    likely_modality,
    likely_sop_class,
    series_attributes,
    study_files,
)
from dicomproxy.reports.study import answer as report_answer
from dicomproxy.view.query import PACS_KEYS, FindQuery
from dicomproxy.view.repository import ExamView
from dicomproxy.view.search import search

LOG = logging.getLogger("dicomproxy.find")

#: The unique key per level (PS3.4 C.6.1.1 / C.6.2.1).
UNIQUE_KEYS = {"PATIENT": "PatientID", "STUDY": "StudyInstanceUID"}


def name_style_for(config: Config, calling_ae: str) -> NameStyle:
    """The peer's ``name_style``, else ``[view].name_style``."""
    peer = config.peer(calling_ae)
    if peer is not None and peer.name_style is not None:
        return peer.name_style
    return config.view.name_style


def build_response(query: FindQuery, attrs: dict[str, Any], charset: str) -> Dataset:
    """One pending identifier: requested keys only (empty when we have no value)."""
    ds = Dataset()
    ds.SpecificCharacterSet = charset
    ds.QueryRetrieveLevel = query.level
    keys = list(query.requested)
    unique = UNIQUE_KEYS[query.level]
    if unique not in keys:
        keys.append(unique)
    for keyword in keys:
        if dictionary_VR(keyword) == "SQ":
            setattr(ds, keyword, DicomSequence())
            continue
        value = attrs.get(keyword, "")
        setattr(ds, keyword, value if value not in (None, []) else "")
    return ds


class FindService:
    """PATIENT/STUDY from the view, SERIES/IMAGE from the archive each visible study routes to
    (``routing.route`` on its row's Sysid/ExamineType); study counts from that archive too."""

    def __init__(
        self,
        config: Config | Settings,
        view: ExamView,
        pacs: PacsFinder,
        archives: Mapping[str, PacsFinder] | None = None,
    ) -> None:
        self.settings = as_settings(config)
        config = self.settings.current
        self.view = view
        self.pacs = pacs
        #: One finder per archive by name; ``[pacs]`` is "pacs".
        self.archives: dict[str, PacsFinder] = {config.pacs.name: pacs, **(archives or {})}
        for archive in config.all_archives:
            self.archives.setdefault(archive.name, PacsFinder(config, archive=archive))

    @property
    def config(self) -> Config:
        """The current Config: of what a reload changes only ``[[peers]]`` (name styles) is read here."""
        return self.settings.current

    def finder_for(self, ref: StudyRef) -> PacsFinder:
        """The routed archive's finder (raises Unroutable, 0xC004)."""
        return self.archives[route(self.config, ref.sysid, ref.modality).name]

    def answer(
        self,
        query: FindQuery,
        identifier: Dataset,
        *,
        calling_ae: str,
        charset: str,
        cancelled: Callable[[], bool],
    ) -> Iterator[Dataset]:
        """Pending identifiers, streamed. Raises DicomServiceError subclasses."""
        if query.level in ("SERIES", "IMAGE"):
            yield from self._forward(query, identifier, cancelled, calling_ae, charset)
            return
        style = name_style_for(self.config, calling_ae)
        limit = self.config.view.max_results
        sent = 0
        with ExitStack() as stack:
            counts: RoutedCounts | None = None
            if query.level == "STUDY" and query.wants(*PACS_KEYS):
                counts = stack.enter_context(RoutedCounts(self))
            for attrs in search(self.view, query, style=style, cancelled=cancelled):
                if limit and sent >= limit:
                    LOG.warning("C-FIND stopped at [view].max_results = %d matches", limit)
                    return
                files = (attrs.get(FILES_KEY) or {}) if self.config.reports.retrievable else {}
                if counts is not None:
                    found = counts.counts(attrs["StudyInstanceUID"])
                    attrs.update(with_files(found, files) if found else {})
                if files:  # the files' series are the study's too (matching stayed the view's)
                    attrs["ModalitiesInStudy"] = file_modalities(attrs.get("ModalitiesInStudy") or [], files)
                yield build_response(query, attrs, charset)
                sent += 1

    def _forward(
        self,
        query: FindQuery,
        identifier: Dataset,
        cancelled: Callable[[], bool],
        calling_ae: str,
        charset: str,
    ) -> Iterator[Dataset]:
        """SERIES/IMAGE: only the visible requested studies, each asked of its routed archive;
        then, with ``[reports] in_retrieve``, the series (and objects) of their order/report files.

        An unroutable study fails the whole request (Unroutable, 0xC004) before any archive is
        asked: it is never looked up in a guessed archive.
        """
        refs = self.view.resolve_studies(study_uids=query.study_uids)
        yield from self._forward_to_archives(refs, identifier, query, cancelled)
        if self.config.reports.retrievable and refs and not cancelled():
            yield from self._file_answers(query, identifier, [r.uid for r in refs], calling_ae, charset)

    def _file_answers(
        self, query: FindQuery, identifier: Dataset, study_uids: list[str], calling_ae: str, charset: str
    ) -> Iterator[Dataset]:
        """SERIES level: each file's series; IMAGE level (its series named): the object, which
        is fetched to learn its SOP Instance UID (a file that cannot be fetched is left out)."""
        rows = self.view.study_rows(study_uids)
        files: list[StudyFile] = [f for uid in study_uids for f in study_files(uid, rows.get(uid, []))]
        series = set(query.uids("SeriesInstanceUID"))
        for file in files:
            if query.level == "SERIES":
                ds = report_answer(identifier, series_attributes(file), charset)
            elif file.series_uid in series:
                try:
                    obj = file.make(self.config.reports, name_style_for(self.config, calling_ae))
                except ReportUnavailable as exc:
                    LOG.warning("C-FIND: %s file not available: %s", file.role, exc)
                    continue
                ds = report_answer(identifier, image_attributes(obj), charset)
            else:
                continue
            if ds is not None:
                yield ds

    def _forward_to_archives(
        self, refs: list[StudyRef], identifier: Dataset, query: FindQuery, cancelled: Callable[[], bool]
    ) -> Iterator[Dataset]:
        groups: dict[str, list[str]] = {}
        for ref in refs:
            groups.setdefault(self.finder_for(ref).archive.name, []).append(ref.uid)
        for name, visible in groups.items():
            forwarded = Dataset()
            forwarded.update(identifier)
            forwarded.StudyInstanceUID = visible if len(visible) > 1 else visible[0]
            for ds in self.archives[name].find(forwarded, query.model, cancelled):
                uid = str(ds.get("StudyInstanceUID", "") or "")
                if not uid or uid in visible:  # never pass on a study we did not ask for
                    yield ds


def file_modalities(modalities: list[str], files: Mapping[str, str]) -> list[str]:
    """ModalitiesInStudy (0008,0061) with the files' series: DOC (PDF) or OT (JPEG), as the file
    names suggest (PS3.4 C.6.2.1.2: every Modality of the study's series)."""
    extra = {likely_modality(w) for w in files.values()}
    return sorted({*modalities, *extra})


def with_files(counts: Counts, files: Mapping[str, str]) -> Counts:
    """The PACS's study counts plus the order/report objects (``[reports] in_retrieve``): one
    series and one instance per file; SOP classes as the file names suggest (PS3.4 C.6.2.1.2)."""
    if not files:
        return counts
    out = dict(counts)
    for key in ("NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances"):
        text = str(out.get(key) or "").strip()
        if text.isdigit():
            out[key] = str(int(text) + len(files))
    classes = out.get("SOPClassesInStudy")
    if isinstance(classes, list):
        extra = {likely_sop_class(w) for w in files.values()}
        out["SOPClassesInStudy"] = sorted({*map(str, classes), *extra})
    return out


class RoutedCounts:
    """Study counts for one C-FIND request, each study from its routed archive (one
    :class:`CountsSession` per archive, opened on first need). With a single catch-all archive
    no routing lookup is made."""

    def __init__(self, service: FindService) -> None:
        self.service = service
        self._sessions: dict[str, CountsSession] = {}

    def __enter__(self) -> RoutedCounts:
        return self

    def __exit__(self, *exc: object) -> None:
        for session in self._sessions.values():
            session.close()

    def counts(self, uid: str) -> Counts | None:
        """The routed archive's counts, or None (archive failed, study unroutable or not visible)."""
        service = self.service
        if len(service.archives) == 1 and not service.config.pacs.sysids:  # [pacs] serves everything
            finder = service.pacs
        else:
            refs = service.view.resolve_studies(study_uids=[uid])
            if not refs:
                return None
            try:
                finder = service.finder_for(refs[0])
            except Unroutable:
                return None
        name = finder.archive.name
        if name not in self._sessions:
            self._sessions[name] = finder.counts_session()
        return self._sessions[name].counts(uid)
