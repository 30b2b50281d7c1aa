"""Upstream archive client: count what a study holds (C-FIND), then fetch it (C-MOVE to self or C-GET).

One :class:`PacsClient` per archive (the ``[pacs]`` table today; ``[[archives]]`` in issue 8),
each with its own timeouts and a semaphore of ``max_concurrent`` retrievals. Every call
opens a new association (PS3.7: our own C-MOVE never runs on an inbound association,
pynetdicom #536) with TCP_NODELAY.

- :meth:`PacsClient.find_instances`: Study Root C-FIND at IMAGE level (PS3.4 C.6.2.1) for
  the SOP Instance / SOP Class UIDs, so the relay knows the count and the SOP classes before
  the first instance (needed for C-MOVE Remaining counts and the onward contexts).
- :meth:`PacsClient.retrieve`: ``c-move`` asks the PACS to send to our own AE title; the
  C-STOREs arrive on our listening port and :mod:`dicomproxy.store` matches them by the
  Move Originator Message ID, which is unique per process. ``c-get`` receives the
  C-STOREs on the same association (storage contexts with SCP role selection, PS3.4 C.4.3).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from io import BytesIO
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
from pynetdicom import build_context, evt
from pynetdicom.association import Association
from pynetdicom.dsutils import decode
from pynetdicom.pdu_primitives import SCP_SCU_RoleSelectionNegotiation
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)
from pynetdicom.status import code_to_category

from dicomproxy.config import PacsConfig
from dicomproxy.errors import PacsUnavailable
from dicomproxy.fastpath.dimse import Message, message_ids
from dicomproxy.fastpath.requestor import AssociationFailed, RawAssociation
from dicomproxy.forward import storage_classes_for
from dicomproxy.net import NoAssociation, Remote, open_association
from dicomproxy.status import Status
from dicomproxy.store import ActiveRetrieval, InstanceSink, ReceiveRegistry, accept_store, deliver
from dicomproxy.tls import client_tls_args

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
        #: C-FIND, C-GET and C-MOVE on a :class:`RawAssociation` (plain TCP only); files received
        #: by a C-GET are written to ``store_dir``.
        self.fast_path = fast_path and config.tls is None and store_dir is not None
        self.store_dir = store_dir
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

    def _associate(self, contexts: Callable[[Any], None], **kwargs: Any) -> Association:
        c = self.config
        try:
            return open_association(
                self.calling_ae,
                Remote(c.ae_title, c.host, c.port),
                add_contexts=contexts,
                acse_timeout=c.acse_timeout,
                dimse_timeout=c.dimse_timeout,
                connect_timeout=c.connect_timeout,
                network_timeout=c.dimse_timeout,
                max_pdu=c.max_pdu,
                tls_args=client_tls_args(c.tls, c.host),
                **kwargs,
            )
        except NoAssociation as exc:
            what = "rejected the association" if exc.rejected else "cannot be reached"
            raise PacsUnavailable(f"PACS {c.ae_title} {what}") from exc

    def find_instances(self, key: RetrieveKey) -> list[InstanceRef]:
        """IMAGE-level C-FIND for every instance of ``key`` (raises PacsUnavailable)."""
        query = key.identifier()
        query.QueryRetrieveLevel = "IMAGE"
        if "SeriesInstanceUID" not in query:
            query.SeriesInstanceUID = ""
        if "SOPInstanceUID" not in query:
            query.SOPInstanceUID = ""
        query.SOPClassUID = ""  # (0008,0016) return key
        refs: list[InstanceRef] = []
        seen: set[str] = set()
        for code, ds in self._find(query):
            if code is None:
                raise PacsUnavailable(f"PACS {self.config.ae_title}: no C-FIND response (timeout or abort)")
            category = code_to_category(code)
            if category == "Pending" and ds is not None:
                sop = str(ds.get("SOPInstanceUID", "") or "")
                if sop and sop not in seen:
                    seen.add(sop)
                    refs.append(
                        InstanceRef(
                            key.study_uid,
                            str(ds.get("SeriesInstanceUID", "") or ""),
                            sop,
                            str(ds.get("SOPClassUID", "") or ""),
                        )
                    )
            elif category not in ("Pending", "Success"):
                raise PacsUnavailable(f"PACS {self.config.ae_title}: C-FIND failed 0x{code:04X}")
        if refs:
            self.lists_sop_classes = all(r.sop_class_uid for r in refs)
        return refs

    def _find(self, query: Dataset) -> Iterator[tuple[int | None, Dataset | None]]:
        """Study Root C-FIND responses as (status or None when none came, identifier)."""
        find_uid = str(StudyRootQueryRetrieveInformationModelFind)
        if self.fast_path:
            assoc = self._raw([build_context(find_uid)])
            try:
                syntax = assoc.syntax(find_uid)
                try:
                    for code, data in assoc.find(find_uid, assoc.encode(find_uid, query), next_message_id()):
                        ds = (
                            decode(BytesIO(data), syntax.is_implicit_VR, syntax.is_little_endian)
                            if data
                            else None
                        )
                        yield code, ds
                except AssociationFailed:
                    yield None, None
            finally:
                if assoc.is_established:
                    assoc.release()
            return
        pyassoc = self._associate(
            lambda ae: ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        )
        try:
            for status, ds in pyassoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
                yield (int(status.Status) if "Status" in status else None), ds
        finally:
            if pyassoc.is_established:
                pyassoc.release()

    def _raw(
        self, contexts: list[Any], roles: list[SCP_SCU_RoleSelectionNegotiation] | None = None
    ) -> RawAssociation:
        """A :class:`RawAssociation` to this archive (raises PacsUnavailable)."""
        c = self.config
        try:
            return RawAssociation.open(
                c.host,
                c.port,
                calling_ae=self.calling_ae,
                called_ae=c.ae_title,
                contexts=contexts,
                roles=roles,
                store_dir=self.store_dir,
                max_pdu=c.max_pdu,
                connect_timeout=c.connect_timeout,
                acse_timeout=c.acse_timeout,
                dimse_timeout=c.dimse_timeout,
            )
        except AssociationFailed as exc:
            raise PacsUnavailable(f"PACS {c.ae_title}: {exc}") from exc

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
        on_assoc: Callable[[Association], None] = lambda a: None,
        sop_classes: list[str] | None = None,
    ) -> PacsOutcome:
        """Fetch ``key`` into ``sink``; ``on_assoc`` receives the association (to abort it on cancel).

        ``sop_classes``: the storage classes to offer on a C-GET when ``refs`` is not known yet
        (a job started from :meth:`study_summary`)."""
        if self.config.retrieve == "c-get":
            classes = sop_classes or _get_storage_classes(refs)
            if self.fast_path:
                return self._get_raw(key, refs, sink, on_assoc, classes)
            return self._get(key, refs, sink, on_assoc, classes)
        return self._move(key, refs, sink, on_assoc)

    def _final(self, assoc: Association, responses: Iterator[tuple[Dataset, Any]]) -> PacsOutcome:
        last = PacsOutcome(Status.SUCCESS)
        for status, _ in responses:
            if "Status" not in status:
                return PacsOutcome(
                    Status.PACS_UNAVAILABLE, f"PACS {self.config.ae_title} aborted or stopped answering"
                )
            code = int(status.Status)
            if code_to_category(code) != "Pending":
                last = self._outcome_of(code)
        return last

    def _move(
        self,
        key: RetrieveKey,
        refs: list[InstanceRef],
        sink: InstanceSink,
        on_assoc: Callable[[Association], None],
    ) -> PacsOutcome:
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
            if self.fast_path:
                return self._move_raw(key, on_assoc, msg_id)
            assoc = self._associate(
                lambda ae: ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
            )
            on_assoc(assoc)
            try:
                responses = assoc.send_c_move(
                    key.identifier(),
                    self.calling_ae,
                    StudyRootQueryRetrieveInformationModelMove,
                    msg_id=msg_id,
                )
                return self._final(assoc, responses)
            finally:
                if assoc.is_established:
                    assoc.release()
        finally:
            self.registry.close(retrieval)

    def _move_raw(self, key: RetrieveKey, on_assoc: Callable[[Any], None], msg_id: int) -> PacsOutcome:
        """C-MOVE to ourselves on a :class:`RawAssociation`: the responses are read by this thread
        as they come, without pynetdicom decoding each Pending response on two threads of its own."""
        move_uid = str(StudyRootQueryRetrieveInformationModelMove)
        assoc = self._raw([build_context(move_uid)])
        on_assoc(assoc)
        try:
            status = assoc.move(move_uid, self.calling_ae, assoc.encode(move_uid, key.identifier()), msg_id)
        finally:
            if assoc.is_established:
                assoc.release()
        return self._outcome(status)

    def _outcome(self, status: Dataset | None) -> PacsOutcome:
        """The final response of a raw C-GET/C-MOVE as a PacsOutcome (None: association lost)."""
        if status is None:
            return PacsOutcome(
                Status.PACS_UNAVAILABLE, f"PACS {self.config.ae_title} aborted or stopped answering"
            )
        return self._outcome_of(int(status.Status))

    @staticmethod
    def _outcome_of(code: int) -> PacsOutcome:
        """Success and Warning (some sub-operations failed, PS3.4 C.4.2.1.5) carry no error."""
        ok = code in (Status.SUCCESS, Status.SUBOPS_WARNING)
        return PacsOutcome(code, "" if ok else f"PACS answered 0x{code:04X}")

    def _get(
        self,
        key: RetrieveKey,
        refs: list[InstanceRef],
        sink: InstanceSink,
        on_assoc: Callable[[Association], None],
        sop_classes: list[str],
    ) -> PacsOutcome:
        retrieval = ActiveRetrieval(
            sink, frozenset({key.study_uid}), frozenset(r.sop_instance_uid for r in refs)
        )
        titles = frozenset({self.config.ae_title})

        def contexts(ae: Any) -> None:
            ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
            for uid in sop_classes:
                ae.add_requested_context(uid, RECEIVE_SYNTAXES)

        roles = _scp_roles(sop_classes)

        def on_store(event: evt.Event) -> int:
            # Same rules as on the listening port, for a registry holding just this retrieval.
            local = ReceiveRegistry(self.calling_ae)
            local.open(retrieval)
            return accept_store(event, local, titles)

        assoc = self._associate(contexts, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, on_store)])
        on_assoc(assoc)
        try:
            responses = assoc.send_c_get(key.identifier(), StudyRootQueryRetrieveInformationModelGet)
            return self._final(assoc, responses)
        finally:
            if assoc.is_established:
                assoc.release()

    def _get_raw(
        self,
        key: RetrieveKey,
        refs: list[InstanceRef],
        sink: InstanceSink,
        on_assoc: Callable[[Any], None],
        sop_classes: list[str],
    ) -> PacsOutcome:
        """C-GET on a :class:`RawAssociation` (dicomproxy.fastpath): same contexts, roles and
        store rules as :meth:`_get`, without pynetdicom's per-PDU machinery."""
        c = self.config
        assert self.store_dir is not None  # fast_path implies it
        self.store_dir.mkdir(parents=True, exist_ok=True)
        local = ReceiveRegistry(self.calling_ae)
        local.open(
            ActiveRetrieval(sink, frozenset({key.study_uid}), frozenset(r.sop_instance_uid for r in refs))
        )
        titles = frozenset({c.ae_title})
        contexts = [
            build_context(StudyRootQueryRetrieveInformationModelGet),
            *(build_context(uid, list[str | UID](RECEIVE_SYNTAXES)) for uid in sop_classes),
        ]
        assoc = self._raw(contexts, _scp_roles(sop_classes))
        on_assoc(assoc)

        def on_store(msg: Message, path: Path) -> int:
            cmd = msg.command
            return deliver(
                local,
                titles,
                c.ae_title,
                (cmd.get("MoveOriginatorApplicationEntityTitle"), cmd.get("MoveOriginatorMessageID")),
                str(cmd.get("AffectedSOPClassUID", "")),
                str(cmd.get("AffectedSOPInstanceUID", "")),
                str(assoc.stream.contexts[msg.context_id].transfer_syntax[0]),
                path,
            )

        try:
            get_uid = str(StudyRootQueryRetrieveInformationModelGet)
            status = assoc.get(get_uid, assoc.encode(get_uid, key.identifier()), next_message_id(), on_store)
        finally:
            if assoc.is_established:
                assoc.release()
        return self._outcome(status)


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
