"""Reload without restart: SIGHUP (``systemctl reload``) and ``dicomproxy reload`` re-read the file.

:meth:`Reloader.reload` runs on the serving process's main thread (:meth:`Server.run` calls it
when a SIGHUP arrived). It loads and validates the file the process was started with, plans the
change (:func:`dicomproxy.config.reloadable.plan_reload`: what applies now, what needs a
restart), makes the new Config current (:class:`~dicomproxy.config.holder.Settings`), sets the
log level, publishes :class:`~dicomproxy.events.ConfigReloaded` (one audit row) and writes the
result to ``<data_dir>/reload.json``, where ``dicomproxy reload`` reads it. The process's pid is
in ``<data_dir>/dicomproxy.pid`` while it serves. An invalid file changes nothing: one ERROR
naming the file and the key.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dicomproxy import events
from dicomproxy.config import Config, LoggingConfig, load_config
from dicomproxy.config.holder import Settings
from dicomproxy.config.reloadable import plan_reload
from dicomproxy.errors import ConfigError
from dicomproxy.transport.pynetdicom_compat import log_identifiers

LOG = logging.getLogger("dicomproxy.reload")

PID_FILE = "dicomproxy.pid"
RESULT_FILE = "reload.json"


@dataclass(frozen=True)
class ReloadResult:
    """What one reload did (``reload.json``): ``seq`` counts this process's reloads."""

    pid: int
    seq: int
    path: str
    applied: bool
    changed: list[str] = field(default_factory=list)
    restart: list[str] = field(default_factory=list)
    error: str = ""

    @classmethod
    def read(cls, path: Path) -> ReloadResult | None:
        """The last result written to ``path``; None when there is none (or it is being replaced)."""
        try:
            return cls(**json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            return None


def write_pid(data_path: Path) -> Path:
    """``<data_dir>/dicomproxy.pid`` with this process's pid (removed by :func:`remove_pid`)."""
    path = data_path / PID_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{os.getpid()}\n", encoding="ascii")
    return path


def remove_pid(path: Path) -> None:
    try:
        if path.read_text(encoding="ascii").strip() == str(os.getpid()):
            path.unlink()
    except OSError:
        pass


def apply_log_level(cfg: LoggingConfig, verbose: bool) -> None:
    """``[logging] level`` now (``serve -v`` stays at DEBUG), as :func:`dicomproxy.logsetup.setup_logging`."""
    level = logging.DEBUG if verbose else getattr(logging, cfg.level)
    logging.getLogger().setLevel(level)
    logging.getLogger("pynetdicom").setLevel(logging.DEBUG if level <= logging.DEBUG else logging.WARNING)
    log_identifiers(cfg.log_identifiers and level <= logging.DEBUG)


class Reloader:
    """Re-reads ``settings.current.path`` into ``settings``; one per serving process."""

    def __init__(
        self,
        settings: Settings,
        *,
        adjust: Callable[[Config], Config] = lambda c: c,
        verbose: bool = False,
        check: Callable[[Config], None] = lambda c: None,
    ) -> None:
        """``adjust``: the command line's overrides (``serve --port``), applied to each new file as
        at start; ``check``: further validation of a loaded file (the transcode policies)."""
        self.settings = settings
        self.adjust = adjust
        self.verbose = verbose
        self.check = check
        self.path = settings.current.path
        self.result_file = settings.current.data_path / RESULT_FILE
        self._seq = 0

    def reload(self) -> ReloadResult:
        """Load, plan, apply; log, audit and write the result. Never raises for a bad file."""
        self._seq += 1
        running = self.settings.current
        try:
            loaded = self.adjust(load_config(self.path))
            self.check(loaded)
            plan = plan_reload(running, loaded)
        except ConfigError as exc:
            LOG.error("reload refused, the running configuration is unchanged: %s", exc)
            return self._finish(ReloadResult(os.getpid(), self._seq, self.path, False, error=str(exc)))
        if plan.restart:
            LOG.warning(
                "reload: %s need(s) a restart; the running value(s) are kept until then",
                ", ".join(plan.restart),
            )
        if plan.changed:
            self.settings.replace(plan.applied)
            if running.logging.level != plan.applied.logging.level:
                apply_log_level(plan.applied.logging, self.verbose)
        LOG.info(
            "reload applied from %s: %s", self.path, ", ".join(plan.changed) if plan.changed else "no change"
        )
        return self._finish(
            ReloadResult(os.getpid(), self._seq, self.path, True, list(plan.changed), list(plan.restart))
        )

    def _finish(self, result: ReloadResult) -> ReloadResult:
        events.publish(
            events.ConfigReloaded(
                result.path, result.applied, tuple(result.changed), tuple(result.restart), result.error
            )
        )
        events.flush()  # the audit row is written before `dicomproxy reload` is told
        tmp = self.result_file.with_name(f".{RESULT_FILE}.{os.getpid()}")
        try:
            tmp.write_text(json.dumps(asdict(result), ensure_ascii=False), encoding="utf-8")
            os.replace(tmp, self.result_file)
        except OSError as exc:
            LOG.warning("reload: cannot write %s: %s", self.result_file, exc)
        return result
