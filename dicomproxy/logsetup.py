"""Logging: one line per association/operation at INFO, no patient data.

pynetdicom logs request identifiers (names, IDs) at INFO; its logger is raised to WARNING
unless the proxy runs at DEBUG, and identifier logging is switched on only when
``[logging].log_identifiers`` is true.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys

from dicomproxy.config import LoggingConfig
from dicomproxy.transport.pynetdicom_compat import log_identifiers

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"

LOG = logging.getLogger("dicomproxy")


def setup_logging(cfg: LoggingConfig, *, verbose: bool = False) -> None:
    """Configure the root logger once for the process (CLI only)."""
    level = logging.DEBUG if verbose else getattr(logging, cfg.level)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(logging.Formatter(FORMAT))
    root.addHandler(stream)
    if cfg.file:
        rotating = logging.handlers.RotatingFileHandler(
            cfg.file, maxBytes=cfg.max_bytes, backupCount=cfg.backups, encoding="utf-8"
        )
        rotating.setFormatter(logging.Formatter(FORMAT))
        root.addHandler(rotating)
    root.setLevel(level)
    logging.getLogger("pynetdicom").setLevel(logging.DEBUG if level <= logging.DEBUG else logging.WARNING)
    configure_identifier_logging(cfg.log_identifiers and level <= logging.DEBUG)


def configure_identifier_logging(enabled: bool) -> None:
    """Whether pynetdicom may log request identifiers (patient data) at all."""
    log_identifiers(enabled)
