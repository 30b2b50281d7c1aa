"""Corrections after delivery in ``serve`` (IHE RAD IOCM; docs/identity.md): a thread of its own,
started whether push is enabled or not — a study the cloud retrieved by C-MOVE/C-GET is corrected
as a pushed one is. Several nodes may run it on one journal: the watermark is read by one node at
a time (``FOR UPDATE SKIP LOCKED``), a correction is journalled once (a unique key) and carried
out by the node that claimed it (a lease)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection
from typing import Any

from dicomproxy.config import Config
from dicomproxy.corrections.loop import CorrectionLoop, nothing_held
from dicomproxy.relay.journal import Journal

LOG = logging.getLogger("dicomproxy.corrections")


class CorrectionService:
    """The ``corrections`` thread: a :class:`CorrectionLoop` pass every ``[corrections]
    poll_interval`` until stopped; a failing pass is logged once per reason and retried."""

    def __init__(
        self,
        config: Config,
        view: Any,
        journal: Journal,
        relay: Any,
        node: str,
        held: Callable[[], Collection[str]] = nothing_held,
    ) -> None:
        self.config = config
        self.loop = CorrectionLoop(config, view, journal, relay, node, held)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def reconfigure(self, config: Config) -> None:
        """A reload: the next pass reads the new ``[corrections]``, ``[[peers]]`` and ``[reports]``."""
        self.config = config
        self.loop.reconfigure(config)

    def start(self) -> None:
        c = self.config.corrections
        LOG.info(
            "corrections: every %g s, sweep %s over %s",
            c.poll_interval,
            f"every {c.sweep:g} s" if c.sweep else "at start",
            f"the last {c.sweep_days} day(s)" if c.sweep_days else "every delivery",
        )
        self._thread = threading.Thread(target=self._run, name="corrections", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the running pass (a claimed correction left running is resumed by any node
        when its lease ends)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(max(0.1, timeout))

    def _run(self) -> None:
        error = ""
        while not self._stop.is_set():
            try:
                self.loop.run_pass()
                if error:
                    LOG.info("corrections: the view and the journal can be read again")
                    error = ""
            except Exception as exc:
                reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
                if reason != error:
                    LOG.warning("corrections: pass failed (%s); retrying", reason)
                    error = reason
            self._stop.wait(self.config.corrections.poll_interval)
