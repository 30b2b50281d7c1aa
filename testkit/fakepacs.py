"""Controllable pynetdicom peers for fault tests: a PACS that lies, stalls or aborts, and a
destination that refuses, aborts or rejects one instance. Real peers (Orthanc, DCMTK) cover
the happy paths; these make the faults happen on demand, deterministically (events, no sleeps).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from dicomproxy.transport.net import NODELAY_HANDLERS, Remote, guard_requestor
from testkit import free_port, wait_for_echo

PENDING = 0xFF00
SUCCESS = 0x0000
CANCEL = 0xFE00


@dataclass
class PacsBehaviour:
    """What the fake PACS does wrong (defaults: nothing)."""

    #: SOP Instance UIDs announced by C-FIND that will never be sent.
    phantom_uids: list[str] = field(default_factory=list)
    #: Abort the C-MOVE/C-GET association after sending this many instances.
    abort_after: int | None = None
    #: Before sending instance number ``gate_at`` (0-based), wait for ``gate`` to be set.
    gate_at: int | None = None
    gate: threading.Event = field(default_factory=threading.Event)
    #: Set when the PACS reached the gate (it is then "still sending").
    at_gate: threading.Event = field(default_factory=threading.Event)
    #: Set when a C-CANCEL stopped a C-MOVE/C-GET (answered 0xFE00, PS3.4 C.4.2.3).
    cancelled: threading.Event = field(default_factory=threading.Event)
    #: Answer a STUDY-level C-FIND as a real PACS does, one response per study with (0020,1208)
    #: Number of Study Related Instances (phantoms included) and (0008,0062) SOP Classes in
    #: Study: the relay then starts a one-study retrieval before listing it (the early-start
    #: path Orthanc takes). False: every level is answered with IMAGE-level responses, which
    #: carry neither, so the relay lists first.
    study_level: bool = False
    #: Fail IMAGE-level C-FINDs with this status (e.g. 0xA700) instead of listing the instances.
    image_find_status: int | None = None
    #: With ``study_level``: whether the STUDY-level answer carries Number of Study Related
    #: Instances (False: SOP Classes in Study only, so the relay starts without a count).
    announce_count: bool = True
    #: Added to the announced Number of Study Related Instances (a PACS whose count is off).
    announce_delta: int = 0
    #: IMAGE-level C-FINDs wait for this event before answering (the listing is "slow").
    listing_gate: threading.Event | None = None


class FakePacs:
    """Study Root C-FIND (IMAGE level) / C-MOVE / C-GET SCP serving the given files."""

    def __init__(
        self, files: Sequence[Path], ae_title: str = "FAKEPACS", destinations: dict[str, Remote] | None = None
    ):
        self.ae_title = ae_title
        self.port = free_port()
        self.destinations = dict(destinations or {})
        self.behaviour = PacsBehaviour()
        self.instances: list[Dataset] = [dcmread(p) for p in files]
        self.sent: list[str] = []
        #: How each association that carried a C-MOVE/C-GET ended: "released" or "aborted", in order.
        self.retrievals_ended: list[str] = []
        self._retrieving: set[int] = set()
        self._server: Any = None
        self.ae = AE(ae_title=ae_title)
        self.ae.maximum_pdu_size = 0
        self.ae.network_timeout = None
        self.ae.add_supported_context(Verification)
        for sop in (
            StudyRootQueryRetrieveInformationModelFind,
            StudyRootQueryRetrieveInformationModelMove,
            StudyRootQueryRetrieveInformationModelGet,
        ):
            self.ae.add_supported_context(sop)
        for cx in AllStoragePresentationContexts:
            self.ae.add_supported_context(
                str(cx.abstract_syntax), ALL_TRANSFER_SYNTAXES, scu_role=True, scp_role=True
            )
        for cx in AllStoragePresentationContexts[:100]:
            self.ae.add_requested_context(str(cx.abstract_syntax), ALL_TRANSFER_SYNTAXES[:3])

    @property
    def remote(self) -> Remote:
        return Remote(self.ae_title, "127.0.0.1", self.port)

    def start(self) -> FakePacs:
        handlers: Any = [
            *NODELAY_HANDLERS,
            (evt.EVT_C_FIND, self._find),
            (evt.EVT_C_MOVE, self._move),
            (evt.EVT_C_GET, self._get),
            (evt.EVT_RELEASED, lambda e: self._ended(e, "released")),
            (evt.EVT_ABORTED, lambda e: self._ended(e, "aborted")),
        ]
        self._server = self.ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=handlers)
        wait_for_echo(self.remote)
        return self

    def stop(self) -> None:
        self.behaviour.gate.set()
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        self.ae.shutdown()

    def _matches(self, query: Dataset) -> list[Dataset]:
        study = str(query.get("StudyInstanceUID", "") or "")
        series = query.get("SeriesInstanceUID", "") or ""
        series_set = {str(s) for s in (series if isinstance(series, (list, MultiValue)) else [series]) if s}
        sops = query.get("SOPInstanceUID", "") or ""
        sop_set = {str(s) for s in (sops if isinstance(sops, (list, MultiValue)) else [sops]) if s}
        out = []
        for ds in self.instances:
            if study and ds.StudyInstanceUID != study:
                continue
            if series_set and ds.SeriesInstanceUID not in series_set:
                continue
            if sop_set and ds.SOPInstanceUID not in sop_set:
                continue
            out.append(ds)
        return out

    def _find(self, event: evt.Event) -> Iterator[tuple[int, Dataset | None]]:
        level = str(event.identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
        matches = self._matches(event.identifier)
        if level == "STUDY" and self.behaviour.study_level:
            yield from self._find_studies(matches)
            return
        if level == "IMAGE" and self.behaviour.listing_gate is not None:
            self.behaviour.listing_gate.wait(60)
        if level == "IMAGE" and self.behaviour.image_find_status is not None:
            yield self.behaviour.image_find_status, None
            return
        for ds in matches:
            rsp = Dataset()
            rsp.QueryRetrieveLevel = "IMAGE"
            rsp.StudyInstanceUID = ds.StudyInstanceUID
            rsp.SeriesInstanceUID = ds.SeriesInstanceUID
            rsp.SOPInstanceUID = ds.SOPInstanceUID
            rsp.SOPClassUID = ds.SOPClassUID
            yield PENDING, rsp
        if matches:
            for uid in self.behaviour.phantom_uids:
                rsp = Dataset()
                rsp.QueryRetrieveLevel = "IMAGE"
                rsp.StudyInstanceUID = matches[0].StudyInstanceUID
                rsp.SeriesInstanceUID = matches[0].SeriesInstanceUID
                rsp.SOPInstanceUID = uid
                rsp.SOPClassUID = matches[0].SOPClassUID
                yield PENDING, rsp
        yield SUCCESS, None

    def _find_studies(self, matches: list[Dataset]) -> Iterator[tuple[int, Dataset | None]]:
        studies: dict[str, list[Dataset]] = {}
        for ds in matches:
            studies.setdefault(str(ds.StudyInstanceUID), []).append(ds)
        for study_uid, instances in studies.items():
            rsp = Dataset()
            rsp.QueryRetrieveLevel = "STUDY"
            rsp.StudyInstanceUID = study_uid
            if self.behaviour.announce_count:
                count = len(instances) + len(self.behaviour.phantom_uids) + self.behaviour.announce_delta
                rsp.NumberOfStudyRelatedInstances = count
            rsp.SOPClassesInStudy = sorted({str(ds.SOPClassUID) for ds in instances})
            yield PENDING, rsp
        yield SUCCESS, None

    def _ended(self, event: evt.Event, how: str) -> None:
        if id(event.assoc) in self._retrieving:
            self.retrievals_ended.append(how)

    def _sub_operations(self, event: evt.Event, matches: list[Dataset]) -> Iterator[tuple[int, Dataset]]:
        self._retrieving.add(id(event.assoc))
        b = self.behaviour
        for i, ds in enumerate(matches):
            if b.gate_at is not None and i == b.gate_at:
                b.at_gate.set()
                b.gate.wait(60)
            if b.abort_after is not None and i >= b.abort_after:
                event.assoc.abort()
                return
            if not event.assoc.is_established:
                return
            if event.is_cancelled:  # pynetdicom leaves C-CANCEL to the handler
                b.cancelled.set()
                left = Dataset()
                left.FailedSOPInstanceUIDList = [str(m.SOPInstanceUID) for m in matches[i:]]
                yield CANCEL, left
                return
            self.sent.append(str(ds.SOPInstanceUID))
            yield PENDING, ds

    def _move(self, event: evt.Event) -> Iterator[Any]:
        dest = self.destinations.get(str(event.move_destination).strip())
        if dest is None:
            yield None, None
            return
        # guard_requestor: pynetdicom's sub-association reactor can otherwise take the C-STORE-RSP
        # of a fast destination (dicomproxy.handlers.qrservice._CallerOnlyDIMSE);
        # Orthanc/DCMTK PACS don't race.
        guard = (evt.EVT_ESTABLISHED, lambda e: guard_requestor(e.assoc))
        yield dest.host, dest.port, {"evt_handlers": [*NODELAY_HANDLERS, guard]}
        matches = self._matches(event.identifier)
        yield len(matches) + len(self.behaviour.phantom_uids)
        yield from self._sub_operations(event, matches)

    def _get(self, event: evt.Event) -> Iterator[Any]:
        matches = self._matches(event.identifier)
        yield len(matches) + len(self.behaviour.phantom_uids)
        yield from self._sub_operations(event, matches)


@dataclass
class DestBehaviour:
    #: Reject every association (A-ASSOCIATE-RJ).
    refuse: bool = False
    #: Abort the association on receiving the instance with this 0-based index.
    abort_at: int | None = None
    #: C-STORE status for specific SOP Instance UIDs (e.g. 0xA700 out of resources).
    reject: dict[str, int] = field(default_factory=dict)
    #: Statuses answered to the first attempts for a UID, one per attempt; then Success.
    flaky: dict[str, list[int]] = field(default_factory=dict)
    #: Abort the association on the C-STORE with this 0-based index, once.
    abort_once_at: int | None = None
    #: Keep every accepted data set (with its file meta) in ``FakeDestination.datasets``.
    keep_datasets: bool = False
    #: A slow destination: the C-STOREs from this 0-based index on are answered only once
    #: ``hold`` is set; ``holding`` is set when the first of them waits, ``held`` lists the SOP
    #: Instance UIDs that waited (several at once over several associations).
    hold_from: int | None = None
    hold: threading.Event = field(default_factory=threading.Event)
    holding: threading.Event = field(default_factory=threading.Event)
    held: list[str] = field(default_factory=list)
    #: Seconds each C-STORE takes before it is answered (a destination slower than the archive).
    delay: float = 0.0


class FakeDestination:
    """Storage SCP that keeps the SOP Instance UIDs it accepted (and the transfer syntax)."""

    def __init__(self, ae_title: str = "FAKEDEST") -> None:
        self.ae_title = ae_title
        self.port = free_port()
        self.behaviour = DestBehaviour()
        self.received: list[tuple[str, str]] = []
        #: The accepted data sets in arrival order (``behaviour.keep_datasets``).
        self.datasets: list[Dataset] = []
        #: SOP Instance UID of every C-STORE request, whatever the answer.
        self.attempts: list[str] = []
        #: (Move Originator AE Title, Move Originator Message ID) of each C-STORE.
        self.originators: list[tuple[str, int | None]] = []
        #: For each accepted instance, which association (a number per association, from 0) carried it.
        self.carried_by: list[int] = []
        self._assoc_ids: dict[int, int] = {}
        self._count = 0
        self._lock = threading.Lock()
        self.ae = AE(ae_title=ae_title)
        self.ae.maximum_pdu_size = 0
        self.ae.network_timeout = None
        self.ae.add_supported_context(Verification)
        for cx in AllStoragePresentationContexts:
            self.ae.add_supported_context(str(cx.abstract_syntax), ALL_TRANSFER_SYNTAXES)
        self._server: Any = None

    @property
    def remote(self) -> Remote:
        return Remote(self.ae_title, "127.0.0.1", self.port)

    def start(self) -> FakeDestination:
        handlers: Any = [
            *NODELAY_HANDLERS,
            (evt.EVT_C_STORE, self._store),
            (evt.EVT_REQUESTED, self._requested),
        ]
        self._server = self.ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=handlers)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        self.ae.shutdown()

    def _requested(self, event: evt.Event) -> None:
        if self.behaviour.refuse:
            assoc = event.assoc
            assoc.acse.send_reject(0x01, 0x01, 0x01)
            assoc.is_rejected = True
            assoc.kill()

    def _store(self, event: evt.Event) -> int:
        with self._lock:
            index = self._count
            self._count += 1
        if self.behaviour.abort_at is not None and index >= self.behaviour.abort_at:
            event.assoc.abort()
            return 0xA700
        if self.behaviour.abort_once_at == index:
            event.assoc.abort()
            return 0xA700
        req = cast(Any, event.request)
        uid = str(req.AffectedSOPInstanceUID)
        if self.behaviour.delay:
            time.sleep(self.behaviour.delay)
        if self.behaviour.hold_from is not None and index >= self.behaviour.hold_from:
            with self._lock:
                self.behaviour.held.append(uid)
            self.behaviour.holding.set()
            self.behaviour.hold.wait(120)
        with self._lock:
            self.attempts.append(uid)
            flaky = self.behaviour.flaky.get(uid)
            if flaky:
                return flaky.pop(0)
        with self._lock:
            self.originators.append(
                (str(req.MoveOriginatorApplicationEntityTitle or "").strip(), req.MoveOriginatorMessageID)
            )
        if uid in self.behaviour.reject:
            return self.behaviour.reject[uid]
        ds = None
        if self.behaviour.keep_datasets:
            ds = event.dataset
            ds.file_meta = event.file_meta
        with self._lock:
            self.received.append((uid, str(event.context.transfer_syntax)))
            self.carried_by.append(self._assoc_ids.setdefault(id(event.assoc), len(self._assoc_ids)))
            if ds is not None:
                self.datasets.append(ds)
        return SUCCESS
