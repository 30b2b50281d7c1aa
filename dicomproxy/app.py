"""Wiring: build the application context (view, PACS client, journal, relay) from a Config.

One engine per process, one PACS client, one journal: created here once and bound into
the handlers through :class:`~dicomproxy.context.AppContext`.
"""

from __future__ import annotations

from dicomproxy.charsets import install_pydicom_workarounds
from dicomproxy.config import Config
from dicomproxy.context import AppContext
from dicomproxy.pacsfind import PacsFinder
from dicomproxy.view.repository import ExamView
from dicomproxy.view.service import FindService


def build_context(config: Config) -> AppContext:
    """Create the long-lived services for ``serve``."""
    install_pydicom_workarounds()  # ISO 2022 IR 58, see dicomproxy.charsets
    ctx = AppContext(config)
    ctx.view = ExamView(config)
    ctx.view.warm_up()  # UID/pinyin side tables build in the background
    ctx.find = FindService(config, ctx.view, PacsFinder(config))
    return ctx
