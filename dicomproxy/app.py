"""Wiring: build the application context (view, PACS client, journal, relay) from a Config.

One engine per process, one PACS client, one journal: created here once and bound into
the handlers through :class:`~dicomproxy.context.AppContext`.
"""

from __future__ import annotations

import logging
from typing import Any

from dicomproxy.config import Config
from dicomproxy.context import AppContext
from dicomproxy.journal import Journal
from dicomproxy.pacs import PacsClient
from dicomproxy.relay import RelayService
from dicomproxy.store import ReceiveRegistry

LOG = logging.getLogger("dicomproxy.app")


def build_view(config: Config) -> Any:
    """The exam view (branch ``view``); None while it is not part of this build."""
    try:
        from dicomproxy.view.repository import ExamView  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        LOG.warning("exam view module not available: C-MOVE/C-GET resolve nothing")
        return None
    return ExamView(config)


def build_context(config: Config, *, view: Any = None, pending_interval: float = 5.0) -> AppContext:
    """Create the long-lived services for ``serve`` (``view`` overrides the exam view, for tests)."""
    ctx = AppContext(config)
    ctx.view = view if view is not None else build_view(config)
    registry = ReceiveRegistry(config.proxy.ae_title)
    ctx.pacs = PacsClient(config.pacs, config.proxy.ae_title, registry)
    ctx.journal = Journal.for_config(config.journal.url, config.data_path)
    ctx.relay = RelayService(
        config, ctx.pacs, ctx.view, ctx.journal, registry, pending_interval=pending_interval
    )
    return ctx
