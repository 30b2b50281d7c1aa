"""Wiring: build the application context (view, PACS client, journal, relay) from a Config.

One engine per process, one PACS client, one journal: created here once and bound into
the handlers through :class:`~dicomproxy.context.AppContext`.
"""

from __future__ import annotations

from dicomproxy.config import Config
from dicomproxy.context import AppContext
from dicomproxy.view.repository import ExamView


def build_context(config: Config) -> AppContext:
    """Create the long-lived services for ``serve``."""
    ctx = AppContext(config)
    ctx.view = ExamView(config)
    return ctx
