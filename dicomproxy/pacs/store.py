"""Incoming C-STOREs: accepted only inside an active retrieval, matched to it, handed to its spool.

Matching (during our C-MOVE-to-self, PS3.4 C.4.2.2.3), first hit wins:
1. Move Originator AE Title (0000,1030) is ours and Move Originator Message ID (0000,1031)
   is the message ID of one of our active C-MOVE requests (unique per process);
2. else the SOP Instance UID is one the C-FIND announced for an active retrieval;
3. else the Study Instance UID (read from the received file's header) belongs to one.

Anything else is refused with :data:`STATUS_NOT_EXPECTED` (0xC000, PS3.4 B.2.3 "Error:
Cannot understand": a permanent failure, so a PACS does not retry it), and the data is
not kept (pynetdicom deletes its temporary file after the handler).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pydicom import dcmread
from pynetdicom import evt

from dicomproxy.status import Status
from dicomproxy.transport.raw.receiver import StoreAcceptor, StoreRequest

LOG = logging.getLogger("dicomproxy.store")

STATUS_STORED = Status.SUCCESS
#: PS3.4 B.2.3 Error: Cannot understand — the C-STORE belongs to no active retrieval.
STATUS_NOT_EXPECTED = Status.STORE_CANNOT_UNDERSTAND
#: PS3.4 B.2.3 Refused: Out of Resources — we could not spool the instance.
STATUS_NO_SPACE = Status.STORE_OUT_OF_RESOURCES


class InstanceSink(Protocol):
    def accept(self, src: Path, sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> bool: ...

    def wait_for_room(self) -> float:
        """Block (bounded) while the disk that holds what was accepted runs low; seconds waited."""
        ...


@dataclass(eq=False)
class ActiveRetrieval:
    sink: InstanceSink
    study_uids: frozenset[str]
    sop_uids: frozenset[str]
    move_msg_id: int | None = None
    received: int = 0
    extra: set[str] = field(default_factory=set)


class ReceiveRegistry:
    """Active retrievals of this process (thread-safe)."""

    def __init__(self, our_ae_title: str) -> None:
        self.our_ae_title = our_ae_title.strip()
        self._lock = threading.Lock()
        self._active: list[ActiveRetrieval] = []

    def open(self, retrieval: ActiveRetrieval) -> ActiveRetrieval:
        with self._lock:
            self._active.append(retrieval)
        return retrieval

    def close(self, retrieval: ActiveRetrieval) -> None:
        with self._lock:
            if retrieval in self._active:
                self._active.remove(retrieval)

    def __len__(self) -> int:
        with self._lock:
            return len(self._active)

    def match(
        self, originator_ae: str | None, originator_msg_id: int | None, sop_uid: str, path: Path | None
    ) -> ActiveRetrieval | None:
        with self._lock:
            active = list(self._active)
        if not active:
            return None
        if originator_msg_id is not None and (originator_ae or "").strip() == self.our_ae_title:
            for r in active:
                if r.move_msg_id == originator_msg_id:
                    return r
            return None  # says it is for a request of ours that is not running any more
        for r in active:
            if sop_uid in r.sop_uids:
                return r
        if path is None:
            return None
        try:
            study = str(
                dcmread(path, stop_before_pixels=True, specific_tags=["StudyInstanceUID"]).StudyInstanceUID
            )
        except Exception:
            return None
        for r in active:
            if study in r.study_uids:
                return r
        return None


def deliver(
    registry: ReceiveRegistry,
    pacs_ae_titles: frozenset[str],
    calling: str,
    originator: tuple[str | None, int | None],
    sop_class_uid: str,
    sop_uid: str,
    transfer_syntax: str,
    path: Path,
) -> int:
    """Hand one received instance (the DICOM file at ``path``) to the retrieval it belongs to.

    Returns the C-STORE status (PS3.4 B.2.3). On anything but success the file is deleted.
    Shared by pynetdicom's EVT_C_STORE handler and the raw store acceptor (dicomproxy.transport.raw).
    """
    retrieval = None
    if calling in pacs_ae_titles:
        retrieval = registry.match(originator[0], originator[1], sop_uid, path)
    if retrieval is None:
        LOG.warning("C-STORE from %s refused: it belongs to no active retrieval", calling)
        path.unlink(missing_ok=True)
        return STATUS_NOT_EXPECTED
    try:
        kept = retrieval.sink.accept(path, sop_class_uid, sop_uid, transfer_syntax)
    except OSError as exc:
        LOG.error("cannot spool a received instance: %s", exc)
        path.unlink(missing_ok=True)
        return STATUS_NO_SPACE
    if not kept:
        LOG.warning("C-STORE from %s refused: its retrieval has already ended", calling)
        path.unlink(missing_ok=True)
        return STATUS_NOT_EXPECTED
    retrieval.received += 1
    retrieval.sink.wait_for_room()  # back-pressure: the archive's next C-STORE waits for this response
    return STATUS_STORED


def accept_store(event: evt.Event, registry: ReceiveRegistry, pacs_ae_titles: frozenset[str]) -> int:
    """Deliver one C-STORE (``event.dataset_path``) to the retrieval it belongs to; return its status."""
    req: Any = event.request
    assoc = event.assoc
    # On our own C-GET association the PACS is the acceptor; on the listening port, the requestor.
    calling = (assoc.acceptor if assoc.is_requestor else assoc.requestor).ae_title.strip()
    return deliver(
        registry,
        pacs_ae_titles,
        calling,
        (req.MoveOriginatorApplicationEntityTitle, req.MoveOriginatorMessageID),
        str(req.AffectedSOPClassUID),
        str(req.AffectedSOPInstanceUID),
        str(event.context.transfer_syntax),
        Path(event.dataset_path),
    )


def handle_store(event: evt.Event, ctx: Any) -> int:
    """EVT_C_STORE on the listening AE: the PACS's sub-operations of our C-MOVE-to-self."""
    if ctx.relay is None:
        Path(event.dataset_path).unlink(missing_ok=True)
        return STATUS_NOT_EXPECTED
    return accept_store(event, ctx.relay.registry, ctx.relay.pacs_ae_titles)


def store_acceptor(config: Any, ctx: Any, ae: Any, active: Callable[[], int]) -> StoreAcceptor | None:
    """The raw store acceptor for the archives' C-STOREs (:mod:`dicomproxy.transport.raw.receiver`),
    or None when it does not apply: ``[proxy].fast_path = false``, inbound TLS, or no relay.

    It claims an association whose calling AE title is a configured archive's and not also a
    ``[[peers]]`` entry's (a peer may query and retrieve, which needs pynetdicom's full service).
    Access rules and their logging are :func:`dicomproxy.access.decide`'s, as for any association;
    ``active``: associations open now (pynetdicom's and the raw acceptors'), against
    ``maximum_associations``.
    """
    from dicomproxy import access

    if not config.proxy.fast_path or config.proxy.tls is not None or ctx.relay is None:
        return None
    relay = ctx.relay

    def claim(calling: str) -> bool:  # peers as current (a reload), archives as at start
        return config.archive_for_ae(calling) is not None and ctx.config.peer(calling) is None

    gate = access.raw_gate(ctx.settings, ctx.rejections, active, lambda: int(ae.maximum_associations))

    def on_store(request: StoreRequest, path: Path) -> int:
        return deliver(
            relay.registry,
            relay.pacs_ae_titles,
            request.calling_ae,
            (request.originator_ae, request.originator_msg_id),
            request.sop_class_uid,
            request.sop_instance_uid,
            request.transfer_syntax,
            path,
        )

    incoming = config.data_path / "incoming"
    for stale in incoming.glob("*.dcm"):  # half-received before a crash; never acknowledged
        stale.unlink(missing_ok=True)
    acceptor = StoreAcceptor(
        ae_title=config.proxy.ae_title,
        supported=ae.supported_contexts,
        max_pdu=config.proxy.max_pdu,
        claim=claim,
        gate=gate,
        on_store=on_store,
        incoming_dir=incoming,
        acse_timeout=config.proxy.acse_timeout,
        dimse_timeout=max(a.dimse_timeout for a in config.all_archives),
        recycled=relay.recycled,
    )
    return acceptor
