"""Handlers observed: the C-FIND, C-MOVE and C-GET handlers wrapped to publish :mod:`dicomproxy.events`.

The wrappers leave the handlers unchanged (server.py binds the wrapped ones): a C-FIND is timed and
its answers counted here, and :data:`CURRENT` remembers on the handler's thread who asked, so that
the relay's ``JobStarted`` (published on that same thread, where the job ID is known) names the
association's peer with its TLS identity.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.sop_class import PatientRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]

from dicomproxy import events
from dicomproxy.context import AppContext
from dicomproxy.status import Status, is_pending


class _Current(threading.local):
    peer: events.Peer | None = None
    #: Set by :func:`job_started`: the request became a journal job.
    job: bool = False


#: The requesting peer of the DIMSE request being handled on this thread.
CURRENT = _Current()

#: Levels answered from the exam view; the others are asked of the PACS (docs/view.md).
VIEW_LEVELS = ("PATIENT", "STUDY")


def request_peer(calling_ae: str, address: str) -> events.Peer:
    """The peer of the request handled on this thread (with its TLS identity), else from the arguments."""
    peer = CURRENT.peer
    if peer is not None and peer.calling_ae == calling_ae.strip():
        return peer
    return events.Peer(calling_ae.strip(), address)


def query_keys(identifier: Dataset | None) -> dict[str, str]:
    """The identifier's keys that carry a value (keyword → text); sequences are left out."""
    keys: dict[str, str] = {}
    if identifier is None:
        return keys
    for elem in identifier:
        if elem.VR == "SQ" or not elem.keyword or elem.value in (None, ""):
            continue
        value = elem.value
        text = (
            "\\".join(str(v) for v in value)
            if isinstance(value, (list, tuple)) or elem.VM > 1
            else str(value)
        )
        keys[elem.keyword] = text[:256]
    return keys


def _identifier(event: evt.Event) -> Dataset | None:
    try:
        return event.identifier
    except Exception:  # the handler reports an undecodable identifier itself
        return None


def _status_of(result: Any) -> int:
    status = result[0] if isinstance(result, tuple) else result
    if isinstance(status, Dataset):
        return int(status.get("Status", Status.UNABLE_TO_PROCESS))
    return int(status)


def observed_find(
    handler: Callable[[evt.Event, AppContext], Iterator[Any]],
) -> Callable[[evt.Event, AppContext], Iterator[Any]]:
    def wrapper(event: evt.Event, ctx: AppContext) -> Iterator[Any]:
        if not events.BUS.active:
            yield from handler(event, ctx)
            return
        start = time.monotonic()
        matches, status = 0, int(Status.UNABLE_TO_PROCESS)
        try:
            for result in handler(event, ctx):
                status = _status_of(result)
                if is_pending(status):
                    matches += 1
                yield result
        finally:
            identifier = _identifier(event)
            level = str(identifier.get("QueryRetrieveLevel", "") if identifier is not None else "").upper()
            model = (
                "PATIENT"
                if event.request.AffectedSOPClassUID == PatientRootQueryRetrieveInformationModelFind
                else "STUDY"
            )
            events.publish(
                events.FindDone(
                    peer=events.peer_of(event.assoc),
                    model=model,
                    level=level or "?",
                    source="view" if level in VIEW_LEVELS else "pacs",
                    keys=query_keys(identifier),
                    matches=matches,
                    status=status,
                    seconds=time.monotonic() - start,
                )
            )

    wrapper.__name__ = getattr(handler, "__name__", "handler")
    return wrapper


def observed_retrieve(
    handler: Callable[[evt.Event, AppContext], Iterator[Any]],
) -> Callable[[evt.Event, AppContext], Iterator[Any]]:
    """C-MOVE/C-GET: remember the peer on this thread for the relay's JobStarted."""

    def wrapper(event: evt.Event, ctx: AppContext) -> Iterator[Any]:
        if not events.BUS.active:
            yield from handler(event, ctx)
            return
        CURRENT.peer, CURRENT.job = events.peer_of(event.assoc), False
        status = None
        try:
            for response in handler(event, ctx):
                status = getattr(response, "status", None)
                yield response
        finally:
            peer = CURRENT.peer
            if not CURRENT.job and peer is not None and status is not None and not is_pending(status):
                _refused(event, peer, int(status))
            CURRENT.peer, CURRENT.job = None, False

    wrapper.__name__ = getattr(handler, "__name__", "handler")
    return wrapper


def _refused(event: evt.Event, peer: events.Peer, status: int) -> None:
    """A C-MOVE/C-GET refused before it became a job: still in the audit trail and the metrics."""
    identifier = _identifier(event)
    kind = "move" if event.event is evt.EVT_C_MOVE else "get"
    raw = getattr(event, "move_destination", "") if kind == "move" else ""
    destination = raw.decode("ascii", "replace") if isinstance(raw, bytes) else str(raw or "")
    events.publish(events.RetrieveRefused(kind, peer, destination.strip(), query_keys(identifier), status))


def job_started(job_id: int, req: Any) -> None:
    """Publish :class:`~dicomproxy.events.JobStarted` for a relay job (``req``: a RetrieveRequest)."""
    CURRENT.job = True
    if events.BUS.active:
        destination = req.move_destination.strip() if req.kind in ("move", "push") else req.calling_ae.strip()
        peer = request_peer(req.calling_ae, req.calling_host)
        events.publish(events.JobStarted(job_id, req.kind, peer, destination, query_keys(req.identifier)))


def job_finished(job_id: int, kind: str, outcome: str, status: int, state: Any, bytes_out: int) -> None:
    """Publish :class:`~dicomproxy.events.JobFinished` (``state``: the relay's JobState, or None when
    the job was refused before any work)."""
    if events.BUS.active:
        done = events.JobFinished(job_id, kind, str(outcome), int(status), 0, 0, 0, bytes_out, 0.0)
        if state is not None:
            done = dataclasses.replace(
                done,
                completed=state.completed,
                failed=state.failed,
                warning=state.warning,
                seconds=time.monotonic() - state.marks["start"],
            )
        events.publish(done)
