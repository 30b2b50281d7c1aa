"""The relay's job events: :class:`~dicomproxy.events.JobStarted` and ``JobFinished``.

:data:`CURRENT` is set by the C-MOVE/C-GET handler wrapper (:mod:`dicomproxy.handlers.observe`) on
the thread that handles the request, so that ``JobStarted`` — published on that same thread, where
the job ID is known — names the association's peer with its TLS identity.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any

from pydicom.dataset import Dataset

from dicomproxy import events


class _Current(threading.local):
    peer: events.Peer | None = None
    #: Set by :func:`job_started`: the request became a journal job.
    job: bool = False


#: The requesting peer of the DIMSE request being handled on this thread.
CURRENT = _Current()


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
