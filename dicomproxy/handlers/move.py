"""C-MOVE SCP (PS3.4 C.4.2), Patient Root and Study Root: relay from the PACS to a configured peer.

The handler yields :class:`~dicomproxy.relay.response.RetrieveResponse` objects (see
:mod:`dicomproxy.handlers.qrservice` for why this is not pynetdicom's stock generator protocol).
"""

from __future__ import annotations

from collections.abc import Iterator

from pynetdicom import evt

from dicomproxy.context import AppContext
from dicomproxy.handlers.qrservice import RetrieveResponse
from dicomproxy.handlers.retrieve import CancelLatch, prepare


def handle_move(event: evt.Event, ctx: AppContext) -> Iterator[RetrieveResponse]:
    prepared = prepare(event, ctx, "move")
    if isinstance(prepared, RetrieveResponse):  # refused before any work (status + Error Comment)
        yield prepared
        return
    relay, req = prepared
    yield from relay.move(req, CancelLatch(event), lambda: bool(event.assoc.is_established))
