"""Handlers observed: the C-FIND, C-MOVE and C-GET handlers wrapped to publish :mod:`dicomproxy.events`.

The wrappers leave the handlers unchanged (server.py binds the wrapped ones): a C-FIND is timed and
its answers counted here, and :data:`~dicomproxy.relay.observe.CURRENT` remembers on the handler's
thread who asked, so that the relay's ``JobStarted`` (published on that same thread, where the job ID
is known) names the association's peer with its TLS identity. ``job_started``/``job_finished`` are
the relay's (:mod:`dicomproxy.relay.observe`), re-exported here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.sop_class import PatientRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]

from dicomproxy import events
from dicomproxy.context import AppContext
from dicomproxy.relay.observe import CURRENT, job_finished, job_started, query_keys, request_peer
from dicomproxy.status import Status, is_pending
from dicomproxy.transport.peer import peer_of

#: Levels answered from the exam view; the others are asked of the PACS (docs/view.md).
VIEW_LEVELS = ("PATIENT", "STUDY")


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
    """A pynetdicom C-FIND handler whose responses are :func:`published_find`."""

    def wrapper(event: evt.Event, ctx: AppContext) -> Iterator[Any]:
        if not events.BUS.active:
            yield from handler(event, ctx)
            return
        yield from published_find(
            handler(event, ctx),
            peer_of(event.assoc),
            str(event.request.AffectedSOPClassUID or ""),
            lambda: _identifier(event),
        )

    wrapper.__name__ = getattr(handler, "__name__", "handler")
    return wrapper


def published_find(
    responses: Iterator[Any], peer: events.Peer, sop_class: str, identifier: Callable[[], Dataset | None]
) -> Iterator[Any]:
    """``responses`` passed on; at their end a :class:`~dicomproxy.events.FindDone` is published
    (timed, answers counted) for the audit trail and the metrics."""
    if not events.BUS.active:
        yield from responses
        return
    start = time.monotonic()
    matches, status = 0, int(Status.UNABLE_TO_PROCESS)
    try:
        for result in responses:
            status = _status_of(result)
            if is_pending(status):
                matches += 1
            yield result
    finally:
        query = identifier()
        level = str(query.get("QueryRetrieveLevel", "") if query is not None else "").upper()
        events.publish(
            events.FindDone(
                peer=peer,
                model="PATIENT" if sop_class == PatientRootQueryRetrieveInformationModelFind else "STUDY",
                level=level or "?",
                source="view" if level in VIEW_LEVELS else "pacs",
                keys=query_keys(query),
                matches=matches,
                status=status,
                seconds=time.monotonic() - start,
            )
        )


def observed_retrieve(
    handler: Callable[[evt.Event, AppContext], Iterator[Any]],
) -> Callable[[evt.Event, AppContext], Iterator[Any]]:
    """C-MOVE/C-GET: remember the peer on this thread for the relay's JobStarted."""

    def wrapper(event: evt.Event, ctx: AppContext) -> Iterator[Any]:
        if not events.BUS.active:
            yield from handler(event, ctx)
            return
        CURRENT.peer, CURRENT.job = peer_of(event.assoc), False
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


__all__ = [
    "CURRENT",
    "VIEW_LEVELS",
    "job_finished",
    "job_started",
    "observed_find",
    "observed_retrieve",
    "published_find",
    "query_keys",
    "request_peer",
]
