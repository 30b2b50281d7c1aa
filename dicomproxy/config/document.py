"""The whole file: :class:`Config`, :func:`parse_config` and :func:`load_config`.

``${NAME}`` in any string value comes from the environment; the CLI applies its own overrides
(``serve --port``) to the loaded :class:`Config`. Every error is a
:class:`~dicomproxy.errors.ConfigError` that names the file and the key (``peers[1].host``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dicomproxy.config import alerts, bandwidth, delivery, network, operations, sources
from dicomproxy.config.alerts import AlertsConfig
from dicomproxy.config.bandwidth import BandwidthRule
from dicomproxy.config.compression import CompressionConfig, compression
from dicomproxy.config.delivery import CorrectionsConfig, PushConfig, ReportsConfig
from dicomproxy.config.network import PeerConfig, ProxyConfig
from dicomproxy.config.operations import AuditConfig, HttpConfig, JournalConfig, LoggingConfig
from dicomproxy.config.reader import Section
from dicomproxy.config.sources import HospitalConfig, PacsConfig, ViewConfig
from dicomproxy.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib


@dataclass(frozen=True)
class Config:
    path: str
    proxy: ProxyConfig
    hospital: HospitalConfig
    view: ViewConfig
    pacs: PacsConfig
    compression: CompressionConfig = field(default_factory=CompressionConfig)
    peers: tuple[PeerConfig, ...] = ()
    #: Further upstream archives, routed by the view's Sysid (see dicomproxy.pacs.routing).
    archives: tuple[PacsConfig, ...] = ()
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    journal: JournalConfig = field(default_factory=JournalConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    push: PushConfig = field(default_factory=PushConfig)
    reports: ReportsConfig = field(default_factory=ReportsConfig)
    corrections: CorrectionsConfig = field(default_factory=CorrectionsConfig)
    #: ``[alerting]`` and the ``[[alerts]]`` targets (docs/operations.md, Alerts).
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    #: ``[[bandwidth]]``: the bandwidth timetable (docs/push.md); empty = no timetable.
    bandwidth: tuple[BandwidthRule, ...] = ()

    def onward_associations(self, peer: PeerConfig) -> int:
        """How many onward associations a C-MOVE job opens to ``peer`` (its own key, else ``[proxy]``)."""
        return peer.onward_associations or self.proxy.onward_associations

    def peer(self, ae_title: str) -> PeerConfig | None:
        """The configured peer with this AE title (AE titles compare without padding)."""
        wanted = ae_title.strip()
        for peer in self.peers:
            if peer.ae_title == wanted:
                return peer
        return None

    @property
    def all_archives(self) -> tuple[PacsConfig, ...]:
        """``[pacs]`` first, then every ``[[archives]]`` entry."""
        return (self.pacs, *self.archives)

    def archive_for_ae(self, ae_title: str) -> PacsConfig | None:
        wanted = ae_title.strip()
        return next((a for a in self.all_archives if a.ae_title == wanted), None)

    @property
    def data_path(self) -> Path:
        """``proxy.data_dir``, relative paths taken from the config file's folder."""
        base = Path(self.path).parent if self.path else Path.cwd()
        return (base / self.proxy.data_dir).resolve()


def parse_config(data: Mapping[str, Any], path: str = "<config>") -> Config:
    """Validate a parsed TOML document into a :class:`Config` (sections in the order of the file's doc)."""
    root = Section(path, "", data)
    proxy = network.proxy(root.child("proxy", required=False))
    hospital = sources.hospital(root.child("hospital"))
    view = sources.view(root.child("view"))
    pacs = sources.archive(root.child("pacs"), "pacs")
    archives = sources.archives(path, root.tables("archives"), pacs)
    compression_cfg = compression(root.child("compression", required=False))
    peers = network.peers(root.tables("peers"))
    logging_cfg = operations.logging(root.child("logging", required=False))
    journal = operations.journal(root.child("journal", required=False))
    http = operations.http(root.child("http", required=False))
    audit = operations.audit(root.child("audit", required=False))
    push = delivery.push(root.child("push", required=False), {p.ae_title for p in peers})
    reports = delivery.reports(root.child("reports", required=False))
    corrections_cfg = delivery.corrections(root.child("corrections", required=False))
    alerts_cfg = alerts.alerting(root.child("alerting", required=False), root.tables("alerts"))
    timetable = bandwidth.rules(root.tables("bandwidth"), {p.ae_title for p in peers})
    root.finish()
    return Config(
        path=path,
        proxy=proxy,
        hospital=hospital,
        view=view,
        pacs=pacs,
        compression=compression_cfg,
        peers=peers,
        archives=archives,
        logging=logging_cfg,
        journal=journal,
        http=http,
        audit=audit,
        push=push,
        reports=reports,
        corrections=corrections_cfg,
        alerts=alerts_cfg,
        bandwidth=timetable,
    )


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a TOML config file."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(p, None, f"cannot read: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(p, None, "is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(p, None, f"invalid TOML: {exc}") from None
    return parse_config(data, str(p.resolve()))
