"""The raw query acceptor (:mod:`dicomproxy.transport.raw.queries`) bound to this process's C-FIND
and C-ECHO code: the answers, access rules, audit events and log lines are those of pynetdicom's
handlers (:mod:`dicomproxy.handlers.find`, :mod:`~dicomproxy.handlers.echo`,
:mod:`~dicomproxy.handlers.observe`); only the framing differs (issue 29, docs/performance.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE

from dicomproxy import access, events
from dicomproxy.config import Config
from dicomproxy.context import AppContext
from dicomproxy.handlers.echo import echo_status
from dicomproxy.handlers.find import find_responses
from dicomproxy.handlers.observe import published_find
from dicomproxy.transport.raw.queries import FindRequest, QueryAcceptor


def query_acceptor(
    config: Config, ctx: AppContext, ae: AE, active: Callable[[], int]
) -> QueryAcceptor | None:
    """The acceptor, or None when it does not apply: ``[proxy] fast_path = false`` or inbound TLS
    (a TLS socket cannot be peeked, :mod:`dicomproxy.transport.intake`). ``active``: associations
    open now (pynetdicom's and the raw acceptors'), against ``maximum_associations``."""
    if not config.proxy.fast_path or config.proxy.tls is not None:
        return None

    def on_find(request: FindRequest, cancelled: Callable[[], bool]) -> Iterator[tuple[Any, Dataset | None]]:
        decoded: list[Dataset] = []

        def load() -> Dataset:
            if not decoded:
                decoded.append(request.identifier())
            return decoded[0]

        def seen() -> Dataset | None:  # for the audit: what was decoded, if it could be
            try:
                return load()
            except Exception:
                return None

        peer = events.Peer(request.calling_ae, request.address[0], request.address[1])
        responses = find_responses(ctx, request.calling_ae, request.sop_class_uid, load, cancelled)
        return published_find(responses, peer, request.sop_class_uid, seen)

    return QueryAcceptor(
        supported=ae.supported_contexts,
        max_pdu=config.proxy.max_pdu,
        gate=access.raw_gate(ctx.settings, ctx.rejections, active, lambda: int(ae.maximum_associations)),
        on_find=on_find,
        on_echo=lambda calling: echo_status(ctx, calling),
        acse_timeout=config.proxy.acse_timeout,
        network_timeout=config.proxy.network_timeout or None,
    )


__all__ = ["query_acceptor"]
