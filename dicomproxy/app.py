"""Wiring: build the application context (view, PACS client, journal, relay) from a Config.

One engine per process, one PACS client and one C-FIND finder per archive (``[pacs]`` and each
``[[archives]]`` entry, with that archive's timeouts and ``max_concurrent``), one journal:
created here once and bound into the handlers through :class:`~dicomproxy.context.AppContext`.
"""

from __future__ import annotations

from typing import Any

from dicomproxy.charsets import install_pydicom_workarounds
from dicomproxy.config import Config
from dicomproxy.config.holder import Settings
from dicomproxy.context import AppContext
from dicomproxy.corrections.service import CorrectionService
from dicomproxy.pacs.client import PacsClient
from dicomproxy.pacs.find import PacsFinder
from dicomproxy.pacs.store import ReceiveRegistry
from dicomproxy.relay.journal import Journal, node_name
from dicomproxy.relay.plan import RelayService
from dicomproxy.view.repository import ExamView
from dicomproxy.view.service import FindService


def _find_service(settings: Settings, view: Any) -> FindService:
    """The C-FIND service: PATIENT/STUDY from ``view``, SERIES/IMAGE from each archive."""
    config = settings.current
    finders = {a.name: PacsFinder(config, archive=a) for a in config.all_archives}
    return FindService(settings, view, finders[config.pacs.name], archives=finders)


def build_query_context(config: Config) -> AppContext:
    """The query process's services (:mod:`dicomproxy.queryproc`): the exam view and the C-FIND
    service only. Its UID/pinyin side tables are the serving process's file: read and synced
    incrementally here, never built (the serving process builds them at start-up)."""
    install_pydicom_workarounds()
    ctx = AppContext(Settings(config))
    ctx.view = ExamView(config, builds_side_tables=False)
    ctx.find = _find_service(ctx.settings, ctx.view)
    return ctx


def build_context(config: Config, *, view: Any = None, pending_interval: float = 5.0) -> AppContext:
    """Create the long-lived services for ``serve``.

    ``view`` replaces the exam view (tests of relay mechanics only); ``pending_interval`` is
    the longest silence before a C-MOVE/C-GET Pending response.
    """
    install_pydicom_workarounds()  # ISO 2022 IR 58, see dicomproxy.charsets
    ctx = AppContext(Settings(config))  # a reload replaces ctx.settings.current
    if view is not None:
        ctx.view = view
    else:
        ctx.view = ExamView(config)
        ctx.view.warm_up()  # UID/pinyin side tables build in the background
    ctx.find = _find_service(ctx.settings, ctx.view)
    registry = ReceiveRegistry(config.proxy.ae_title)
    ctx.archives = {
        a.name: PacsClient(
            a,
            config.proxy.ae_title,
            registry,
            a.name,
            fast_path=config.proxy.fast_path,
            store_dir=config.data_path / "incoming",
        )
        for a in config.all_archives
    }
    ctx.pacs = ctx.archives[config.pacs.name]
    ctx.journal = Journal.for_config(config.journal.url, config.data_path)
    ctx.relay = RelayService(
        ctx.settings,
        ctx.pacs,
        ctx.view,
        ctx.journal,
        registry,
        pending_interval=pending_interval,
        archives=ctx.archives,
    )
    ctx.commitments = ctx.relay.engine.commitments
    bandwidth = ctx.relay.engine.bandwidth  # push shares it: one timetable for every sender
    ctx.settings.subscribe(lambda new: bandwidth.set_rules(new.bandwidth))
    if config.push.enabled:
        from dicomproxy.push.service import PushService

        ctx.push = PushService(config, ctx.view, ctx.journal, ctx.relay)
        ctx.settings.subscribe(ctx.push.reconfigure)  # its next pass and job read a reloaded [push]
    # every delivered study, pushed or retrieved (docs/identity.md); not over a test's stub view
    if config.corrections.enabled and hasattr(ctx.view, "stamp_policy"):
        from dicomproxy.push.holds import held_now
        from dicomproxy.push.queue import PushQueue

        node = node_name(config.proxy.ae_title)
        queue = ctx.push.queue if ctx.push is not None else PushQueue(ctx.journal.engine, node)
        settings = ctx.settings

        def held() -> list[str]:  # `push pause` and push's down holds, push here or not
            return held_now(queue, [p.ae_title for p in settings.current.peers])[1]

        ctx.corrections = CorrectionService(config, ctx.view, ctx.journal, ctx.relay, node, held)
        ctx.settings.subscribe(ctx.corrections.reconfigure)
    return ctx
