"""Configuration: one TOML file, validated once into frozen dataclasses.

One module per family of sections — ``network`` ([proxy], [[peers]]), ``sources`` ([hospital],
[view], [pacs], [[archives]]), ``compression``, ``operations`` ([logging], [journal], [http],
[audit]), ``alerts`` ([alerting], [[alerts]]), ``bandwidth`` ([[bandwidth]]), ``delivery``
([push], [reports]), ``tls`` (their ``tls`` sub-tables) — read with ``reader.Section``;
``document`` puts them together. Every name is importable from here.
"""

from dicomproxy.config.alerts import (
    INCIDENT_KINDS,
    INCIDENT_SEVERITY,
    SEVERITIES,
    TARGET_KINDS,
    AlertsConfig,
    AlertTarget,
)
from dicomproxy.config.bandwidth import BandwidthRule
from dicomproxy.config.compression import (
    COMPRESSION_MODES,
    LOSSLESS_TARGETS,
    LOSSY_TARGETS,
    CompressionConfig,
    CompressionMode,
    UidPolicy,
)
from dicomproxy.config.delivery import (
    MAX_RECHECK_AFTER,
    MAX_SWEEP_DAYS,
    PUSH_STATES,
    CorrectionsConfig,
    PushConfig,
    ReportsConfig,
)
from dicomproxy.config.dicomweb import PEER_KINDS, DicomWebConfig
from dicomproxy.config.document import Config, load_config, parse_config
from dicomproxy.config.network import MAX_ONWARD, SERVICES, PeerConfig, ProxyConfig
from dicomproxy.config.operations import (
    SYSLOG_SCHEMES,
    AuditConfig,
    HttpConfig,
    HttpTlsConfig,
    JournalConfig,
    LoggingConfig,
)
from dicomproxy.config.reader import is_loopback
from dicomproxy.config.sources import (
    CHARSETS,
    ENTITY_ID_TYPES,
    NAME_STYLES,
    RETRIEVE_METHODS,
    HospitalConfig,
    NameStyle,
    PacsConfig,
    RetrieveMethod,
    UniversalId,
    ViewConfig,
)
from dicomproxy.config.tls import TlsConfig
from dicomproxy.errors import ConfigError

__all__ = [
    "CHARSETS",
    "COMPRESSION_MODES",
    "ENTITY_ID_TYPES",
    "INCIDENT_KINDS",
    "INCIDENT_SEVERITY",
    "LOSSLESS_TARGETS",
    "LOSSY_TARGETS",
    "MAX_ONWARD",
    "MAX_RECHECK_AFTER",
    "MAX_SWEEP_DAYS",
    "NAME_STYLES",
    "PEER_KINDS",
    "PUSH_STATES",
    "RETRIEVE_METHODS",
    "SERVICES",
    "SEVERITIES",
    "SYSLOG_SCHEMES",
    "TARGET_KINDS",
    "AlertTarget",
    "AlertsConfig",
    "AuditConfig",
    "BandwidthRule",
    "CompressionConfig",
    "CompressionMode",
    "Config",
    "ConfigError",
    "CorrectionsConfig",
    "DicomWebConfig",
    "HospitalConfig",
    "HttpConfig",
    "HttpTlsConfig",
    "JournalConfig",
    "LoggingConfig",
    "NameStyle",
    "PacsConfig",
    "PeerConfig",
    "ProxyConfig",
    "PushConfig",
    "ReportsConfig",
    "RetrieveMethod",
    "TlsConfig",
    "UidPolicy",
    "UniversalId",
    "ViewConfig",
    "is_loopback",
    "load_config",
    "parse_config",
]
