"""Upstream archive client: count what a study holds (C-FIND), then fetch it (C-MOVE to self or C-GET).

One :class:`PacsClient` per archive (the ``[pacs]`` table today; ``[[archives]]`` in issue 8),
each with its own timeouts and a semaphore of ``max_concurrent`` retrievals. Every call
opens a new association (PS3.7: our own C-MOVE never runs on an inbound association,
pynetdicom #536) with TCP_NODELAY.

- :meth:`PacsClient.find_instances`: Study Root C-FIND at IMAGE level (PS3.4 C.6.2.1) for
  the SOP Instance / SOP Class UIDs, so the relay knows the count and the SOP classes before
  the first instance (needed for C-MOVE Remaining counts and the onward contexts).
- :class:`InstanceFinder`: the same IMAGE-level C-FIND for many studies on one association
  (``dicomproxy reconcile``, to an archive or to a destination that is a Q/R SCP).
- :meth:`PacsClient.retrieve`: ``c-move`` asks the PACS to send to our own AE title; the
  C-STOREs arrive on our listening port and :mod:`dicomproxy.pacs.store` matches them by the
  Move Originator Message ID, which is unique per process. ``c-get`` receives the
  C-STOREs on the same association (storage contexts with SCP role selection, PS3.4 C.4.3).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import build_context
from pynetdicom.pdu_primitives import SCP_SCU_RoleSelectionNegotiation
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)
from pynetdicom.status import code_to_category

from dicomproxy.config import PacsConfig, TlsConfig
from dicomproxy.errors import PacsUnavailable
from dicomproxy.pacs.store import ActiveRetrieval, InstanceSink, ReceiveRegistry, deliver
from dicomproxy.status import Status
from dicomproxy.transport.link import IncomingStore, Link, NoAssociation, Timeouts, open_link
from dicomproxy.transport.net import Remote, storage_classes_for
from dicomproxy.transport.raw.dimse import message_ids
from dicomproxy.transport.recycle import RecycledFiles

LOG = logging.getLogger("dicomproxy.pacs")

#: Syntaxes we accept from the PACS on C-GET: its stored encoding should pass through.
RECEIVE_SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
]

_MSG_IDS = message_ids()
_MSG_LOCK = threading.Lock()


def next_message_id() -> int:
    """Message ID (0000,0110) for our C-MOVE/C-GET, unique among the running ones of this process."""
    with _MSG_LOCK:
        return next(_MSG_IDS)


@dataclass(frozen=True)
class RetrieveKey:
    """What to fetch: a study, optionally narrowed to series or instances (PS3.4 C.4.2.2.1)."""

    study_uid: str
    series_uids: tuple[str, ...] = ()
    sop_uids: tuple[str, ...] = ()

    @property
    def level(self) -> str:
        return "IMAGE" if self.sop_uids else "SERIES" if self.series_uids else "STUDY"

    def identifier(self) -> Dataset:
        ds = Dataset()
        ds.QueryRetrieveLevel = self.level
        ds.StudyInstanceUID = self.study_uid  # (0020,000D) UI, unique key
        if self.series_uids:
            ds.SeriesInstanceUID = list(self.series_uids)  # (0020,000E) UI, list of UID matching
        if self.sop_uids:
            ds.SOPInstanceUID = list(self.sop_uids)  # (0008,0018) UI
        return ds


@dataclass(frozen=True)
class InstanceRef:
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str


@dataclass(frozen=True)
class StudySummary:
    """What a STUDY-level C-FIND says about a study before its instances are listed."""

    #: (0020,1208) Number of Study Related Instances; 0 when the PACS did not return it.
    count: int
    #: (0008,0062) SOP Classes in Study; empty when the PACS did not return it.
    sop_classes: list[str]


@dataclass(frozen=True)
class PacsOutcome:
    """How the PACS ended its C-MOVE/C-GET (its own counts are informative only)."""

    status: int
    error: str = ""


class PacsClient:
    """One upstream archive."""

    def __init__(
        self,
        config: PacsConfig,
        calling_ae: str,
        registry: ReceiveRegistry,
        name: str = "pacs",
        *,
        fast_path: bool = False,
        store_dir: Path | None = None,
    ):
        self.name = name
        self.config = config
        self.calling_ae = calling_ae
        self.registry = registry
        #: C-FIND, C-GET and C-MOVE on the raw-socket link (plain TCP only); files received by a
        #: C-GET are written to ``store_dir``.
        self.fast_path = fast_path and config.tls is None and store_dir is not None
        self.store_dir = store_dir
        #: Confirmed spool files a C-GET's instances overwrite (the relay's; None: new files).
        self.recycled: RecycledFiles | None = None
        self._slots = threading.BoundedSemaphore(config.max_concurrent)
        #: Whether this archive's IMAGE-level C-FIND names each instance's SOP Class UID (a return
        #: key it may leave empty, as dcmqrscp does); None until a listing found an instance.
        self.lists_sop_classes: bool | None = None

    def __str__(self) -> str:
        return f"{self.name} ({self.config.ae_title}@{self.config.host}:{self.config.port})"

    @contextlib.contextmanager
    def slot(self, waiting: threading.Event | None = None) -> Iterator[bool]:
        """Hold one of ``max_concurrent`` retrieval slots; yields False if ``waiting`` was set first."""
        while not self._slots.acquire(timeout=0.2):
            if waiting is not None and waiting.is_set():
                yield False
                return
        try:
            yield True
        finally:
            self._slots.release()

    def _link(self, contexts: list[PresentationContext], roles: list[Any] | None = None) -> Link:
        """An association to this archive behind the transport seam (raises PacsUnavailable)."""
        c = self.config
        try:
            return open_link(
                self.calling_ae,
                Remote(c.ae_title, c.host, c.port),
                contexts,
                timeouts=Timeouts(c.connect_timeout, c.acse_timeout, c.dimse_timeout),
                max_pdu=c.max_pdu,
                roles=roles or (),
                tls=c.tls,
                fast_path=self.fast_path,
                store_dir=self.store_dir,
                recycled=self.recycled,
            )
        except NoAssociation as exc:
            raise PacsUnavailable(f"PACS {c.ae_title} {exc.what}") from exc

    def find_instances(self, key: RetrieveKey) -> list[InstanceRef]:
        """IMAGE-level C-FIND for every instance of ``key`` (raises PacsUnavailable)."""
        find_uid = str(StudyRootQueryRetrieveInformationModelFind)
        link = self._link([build_context(find_uid)])
        try:
            responses = link.find_uids(find_uid, image_query(key), next_message_id(), LISTED)
            refs = instance_refs(key, responses, f"PACS {self.config.ae_title}")
        finally:
            link.close()
        if refs:
            self.lists_sop_classes = all(r.sop_class_uid for r in refs)
        return refs

    def _find(self, query: Dataset) -> Iterator[tuple[int | None, Dataset | None]]:
        """Study Root C-FIND responses as (status or None when none came, identifier)."""
        find_uid = str(StudyRootQueryRetrieveInformationModelFind)
        link = self._link([build_context(find_uid)])
        try:
            yield from link.find(find_uid, query, next_message_id())
        finally:
            link.close()

    def study_summary(self, study_uid: str) -> StudySummary | None:
        """STUDY-level C-FIND for (0020,1208) Number of Study Related Instances and (0008,0062) SOP
        Classes in Study (PS3.4 C.6.2.1.2, optional return keys, so either may come back empty:
        dcmqrscp returns neither); None if the PACS has no such study (raises PacsUnavailable when
        it cannot be asked)."""
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = study_uid
        query.NumberOfStudyRelatedInstances = ""
        query.SOPClassesInStudy = ""
        summary: StudySummary | None = None
        for code, ds in self._find(query):
            if code is None:
                raise PacsUnavailable(f"PACS {self.config.ae_title}: no C-FIND response (timeout or abort)")
            if code_to_category(code) == "Pending" and ds is not None and summary is None:
                classes = ds.get("SOPClassesInStudy") or []
                values = [classes] if isinstance(classes, str) else list(classes)
                summary = StudySummary(
                    _count(ds.get("NumberOfStudyRelatedInstances")), sorted({str(v) for v in values if v})
                )
            elif code_to_category(code) not in ("Pending", "Success"):
                raise PacsUnavailable(f"PACS {self.config.ae_title}: C-FIND failed 0x{code:04X}")
        return summary

    def retrieve(
        self,
        key: RetrieveKey,
        refs: list[InstanceRef],
        sink: InstanceSink,
        on_assoc: Callable[[Link], None] = lambda a: None,
        sop_classes: list[str] | None = None,
    ) -> PacsOutcome:
        """Fetch ``key`` into ``sink``; ``on_assoc`` receives the link (to cancel or abort it).

        ``sop_classes``: the storage classes to offer on a C-GET when ``refs`` is not known yet
        (a job started from :meth:`study_summary`)."""
        if self.config.retrieve == "c-get":
            return self._get(key, refs, sink, on_assoc, sop_classes or _get_storage_classes(refs))
        return self._move(key, refs, sink, on_assoc)

    def _move(
        self, key: RetrieveKey, refs: list[InstanceRef], sink: InstanceSink, on_assoc: Callable[[Link], None]
    ) -> PacsOutcome:
        """C-MOVE to ourselves (PS3.4 C.4.2): the archive's C-STOREs arrive on our listening port
        and are matched to this retrieval by the Move Originator Message ID (:mod:`.store`)."""
        msg_id = next_message_id()
        retrieval = self.registry.open(
            ActiveRetrieval(
                sink,
                frozenset({key.study_uid}),
                frozenset(r.sop_instance_uid for r in refs),
                move_msg_id=msg_id,
            )
        )
        try:
            move_uid = str(StudyRootQueryRetrieveInformationModelMove)
            link = self._link([build_context(move_uid)])
            on_assoc(link)
            try:
                return self._outcome(link.move(move_uid, self.calling_ae, key.identifier(), msg_id))
            finally:
                link.close()
        finally:
            self.registry.close(retrieval)

    def _get(
        self,
        key: RetrieveKey,
        refs: list[InstanceRef],
        sink: InstanceSink,
        on_assoc: Callable[[Link], None],
        sop_classes: list[str],
    ) -> PacsOutcome:
        """C-GET (PS3.4 C.4.3): the archive's C-STOREs come on this association (we take the SCP
        role for their SOP classes) under the same rules as on the listening port."""
        c = self.config
        if self.store_dir is not None:
            self.store_dir.mkdir(parents=True, exist_ok=True)
        local = ReceiveRegistry(self.calling_ae)  # a registry holding just this retrieval
        local.open(
            ActiveRetrieval(sink, frozenset({key.study_uid}), frozenset(r.sop_instance_uid for r in refs))
        )
        titles = frozenset({c.ae_title})
        get_uid = str(StudyRootQueryRetrieveInformationModelGet)
        contexts = [
            build_context(get_uid),
            *(build_context(uid, list[str | UID](RECEIVE_SYNTAXES)) for uid in sop_classes),
        ]
        link = self._link(contexts, _scp_roles(sop_classes))
        on_assoc(link)

        def on_store(request: IncomingStore, path: Path) -> int:
            return deliver(
                local,
                titles,
                request.calling_ae,
                request.originator,
                request.sop_class_uid,
                request.sop_instance_uid,
                request.transfer_syntax,
                path,
            )

        try:
            return self._outcome(link.get(get_uid, key.identifier(), next_message_id(), on_store))
        finally:
            link.close()

    def _outcome(self, code: int | None) -> PacsOutcome:
        """The final status of a C-GET/C-MOVE (None: association lost) as a PacsOutcome. Success
        and Warning (some sub-operations failed, PS3.4 C.4.2.1.5) carry no error."""
        if code is None:
            return PacsOutcome(
                Status.PACS_UNAVAILABLE, f"PACS {self.config.ae_title} aborted or stopped answering"
            )
        ok = code in (Status.SUCCESS, Status.SUBOPS_WARNING)
        return PacsOutcome(code, "" if ok else f"PACS answered 0x{code:04X}")


def image_query(key: RetrieveKey) -> Dataset:
    """The Study Root IMAGE-level C-FIND identifier listing ``key``'s instances (PS3.4 C.6.2.1):
    Study Instance UID (0020,000D) and any Series / SOP Instance UIDs as unique keys; Series
    Instance UID, SOP Instance UID (0008,0018) and SOP Class UID (0008,0016) asked for."""
    query = key.identifier()
    query.QueryRetrieveLevel = "IMAGE"
    if "SeriesInstanceUID" not in query:
        query.SeriesInstanceUID = ""
    if "SOPInstanceUID" not in query:
        query.SOPInstanceUID = ""
    query.SOPClassUID = ""  # (0008,0016) return key
    return query


#: What an IMAGE-level listing reads of each response (:meth:`Link.find_uids`).
LISTED = ("SOPInstanceUID", "SeriesInstanceUID", "SOPClassUID")


def instance_refs(
    key: RetrieveKey, responses: Iterable[tuple[int | None, Mapping[str, str] | None]], who: str
) -> list[InstanceRef]:
    """The instances an IMAGE-level C-FIND's Pending responses name, once each (raises
    PacsUnavailable, naming ``who``, when no final response came or it is a failure)."""
    refs: list[InstanceRef] = []
    seen: set[str] = set()
    for code, uids in responses:
        if code is None:
            raise PacsUnavailable(f"{who}: no C-FIND response (timeout or abort)")
        category = code_to_category(code)
        if category == "Pending" and uids is not None:
            sop = uids.get("SOPInstanceUID", "")
            if sop and sop not in seen:
                seen.add(sop)
                refs.append(
                    InstanceRef(
                        key.study_uid, uids.get("SeriesInstanceUID", ""), sop, uids.get("SOPClassUID", "")
                    )
                )
        elif category not in ("Pending", "Success"):
            raise PacsUnavailable(f"{who}: C-FIND failed 0x{code:04X}")
    return refs


class FindNotSupported(PacsUnavailable):
    """The peer accepted the association but not Study Root C-FIND (no Q/R SCP): what it holds
    cannot be asked."""


class InstanceFinder:
    """IMAGE-level C-FINDs of whole studies (PS3.4 C.6.2.1) on **one** association, opened at the
    first study and kept for the next (``dicomproxy reconcile`` lists many studies without an
    association each); an association lost between studies is opened again once per study.

    For an archive (:func:`archive_finder`) and for a destination peer that may be a
    Q/R SCP: a peer that rejects the association or has no Study Root FIND context raises
    :class:`PacsUnavailable` (:class:`FindNotSupported` for the context). Close it when done."""

    def __init__(
        self,
        calling_ae: str,
        remote: Remote,
        who: str,
        *,
        timeouts: Timeouts,
        max_pdu: int = 0,
        tls: TlsConfig | None = None,
        fast_path: bool = True,
        pace: Callable[[], None] = lambda: None,
    ) -> None:
        self.calling_ae = calling_ae
        self.remote = remote
        self.who = who
        self.timeouts = timeouts
        self.max_pdu = max_pdu
        self.tls = tls
        self.fast_path = fast_path and tls is None
        self.pace = pace
        self._link: Link | None = None
        #: Set by the caller when the peer could not be reached: why (then it is not asked again).
        self.down = ""
        #: Associations requested (1 while nothing was lost or refused).
        self.associations = 0
        #: C-FIND requests sent.
        self.finds = 0

    def _open(self) -> Link:
        find_uid = str(StudyRootQueryRetrieveInformationModelFind)
        self.associations += 1
        try:
            link = open_link(
                self.calling_ae,
                self.remote,
                [build_context(find_uid)],
                timeouts=self.timeouts,
                max_pdu=self.max_pdu,
                tls=self.tls,
                fast_path=self.fast_path,
            )
        except NoAssociation as exc:
            raise PacsUnavailable(f"{self.who} {exc.what}") from exc
        if not any(str(cx.abstract_syntax) == find_uid for cx in link.accepted_contexts):
            link.close()
            raise FindNotSupported(f"{self.who} does not accept Study Root C-FIND")
        return link

    def study(self, study_uid: str) -> list[InstanceRef]:
        """Every instance of the study (an empty list: the peer holds none)."""
        key = RetrieveKey(study_uid)
        for attempt in (1, 2):
            if self._link is None or not self._link.is_established:
                self.close()
                self._link = self._open()
            self.pace()
            self.finds += 1
            try:
                return instance_refs(
                    key,
                    self._link.find_uids(
                        str(StudyRootQueryRetrieveInformationModelFind),
                        image_query(key),
                        next_message_id(),
                        LISTED,
                    ),
                    self.who,
                )
            except PacsUnavailable:
                if attempt == 2 or self._link.is_established:
                    raise  # a failure status, or lost twice
                self.close()
        raise AssertionError("unreachable")

    @property
    def is_open(self) -> bool:
        """An association is up (a failure status leaves it up; a refused or lost one does not)."""
        return self._link is not None and self._link.is_established

    def close(self) -> None:
        """Release the association, if one is open (idempotent)."""
        link, self._link = self._link, None
        if link is not None:
            link.close()


def archive_finder(
    archive: PacsConfig, calling_ae: str, *, fast_path: bool = True, pace: Callable[[], None] = lambda: None
) -> InstanceFinder:
    """An :class:`InstanceFinder` on an archive, with its timeouts, PDU size and TLS; ``pace`` is
    called before each C-FIND (a rate cap)."""
    return InstanceFinder(
        calling_ae,
        Remote(archive.ae_title, archive.host, archive.port),
        f"PACS {archive.ae_title}",
        timeouts=Timeouts(archive.connect_timeout, archive.acse_timeout, archive.dimse_timeout),
        max_pdu=archive.max_pdu,
        tls=archive.tls,
        fast_path=fast_path,
        pace=pace,
    )


def _count(value: object) -> int:
    """An IS value as a count; 0 when absent, empty or not a number."""
    try:
        return max(0, int(str(value))) if value not in (None, "") else 0
    except ValueError:
        return 0


def _get_storage_classes(refs: list[InstanceRef]) -> list[str]:
    """Storage SOP classes to offer for a C-GET: the study's, or the common ones when the PACS did
    not name every class; 127 at most (+ the Q/R GET context = 128, PS3.8 9.3.2.2)."""
    sop_classes = sorted({r.sop_class_uid for r in refs if r.sop_class_uid})
    if not refs or not all(r.sop_class_uid for r in refs):  # unlisted (early start) or unnamed
        sop_classes = storage_classes_for(sop_classes)
    return sop_classes[:127]


def _scp_roles(sop_classes: list[str]) -> list[SCP_SCU_RoleSelectionNegotiation]:
    """SCP/SCU Role Selection (PS3.7 D.3.3.4): we are the storage SCP on a C-GET association."""
    roles = []
    for uid in sop_classes:
        role = SCP_SCU_RoleSelectionNegotiation()
        role.sop_class_uid = UID(uid)
        role.scu_role = False
        role.scp_role = True
        roles.append(role)
    return roles
