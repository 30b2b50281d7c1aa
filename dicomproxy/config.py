"""Configuration: one TOML file, validated once into frozen dataclasses.

Precedence is command line > environment > file: the CLI passes overrides to
:func:`load_config`. ``${NAME}`` in any string value is replaced from the environment;
a missing variable is an error. Every error is a :class:`~dicomproxy.errors.ConfigError`
that names the file and the key (``peers[1].host``).
"""

from __future__ import annotations

import ipaddress
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

from dicomproxy.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

RetrieveMethod = Literal["c-move", "c-get"]
CompressionMode = Literal["none", "lossless", "lossy"]
NameStyle = Literal["ideographic", "single", "pinyin"]
UidPolicy = Literal["keep", "new"]

RETRIEVE_METHODS: tuple[str, ...] = ("c-move", "c-get")
COMPRESSION_MODES: tuple[str, ...] = ("none", "lossless", "lossy")
NAME_STYLES: tuple[str, ...] = ("ideographic", "single", "pinyin")
CHARSETS: tuple[str, ...] = ("ISO_IR 192", "GB18030", "GBK")
#: DIMSE services a peer may be allowed to use.
SERVICES: tuple[str, ...] = ("echo", "find", "move", "get")

_AE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # PS3.5 6.2: AE, 16 chars, no backslash
_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")

T = TypeVar("T")
_REQUIRED: Any = object()


@dataclass(frozen=True)
class TlsConfig:
    """DICOM TLS for one side (PS3.15 B.1). Paths are resolved against the config file's folder."""

    #: PEM certificate (chain); required inbound, optional outbound (client certificate).
    cert: str = ""
    #: PEM private key; empty = the key is in ``cert``.
    key: str = ""
    #: PEM CA bundle: inbound, to verify client certificates; outbound, to verify the remote.
    ca: str = ""
    #: Inbound only: reject clients without a certificate signed by ``ca``.
    require_client_cert: bool = False
    #: Outbound only: the remote certificate must name the host we connect to.
    check_hostname: bool = False


#: Most onward associations per job (``onward_associations``): each is one more peer connection and thread.
MAX_ONWARD = 16


@dataclass(frozen=True)
class ProxyConfig:
    """This node: the "DICOM 服务地址/端口/标识" handed to the cloud."""

    ae_title: str = "DICOMPROXY"
    host: str = "0.0.0.0"
    port: int = 11112
    #: Maximum PDU we receive; 0 = unlimited (PS3.8 D.1). Large PDUs cut per-PDU overhead.
    max_pdu: int = 0
    #: Seconds an association may wait for an A-ASSOCIATE-RQ/AC.
    acse_timeout: float = 30.0
    #: Seconds to wait for a DIMSE message from a peer.
    dimse_timeout: float = 300.0
    #: Idle seconds before an inbound association is dropped; 0 = never (see dicom-notes on network_timeout).
    network_timeout: float = 0.0
    maximum_associations: int = 32
    #: Seconds to let in-flight work finish after SIGTERM.
    drain_timeout: float = 30.0
    #: Extra attempts of an onward C-STORE after a transient failure (association lost, 0xA7xx).
    retries: int = 3
    #: Seconds before the first retry; doubles with each further attempt.
    retry_delay: float = 2.0
    #: A C-MOVE destination that drops mid-study is reconnected (with backoff, Pending responses
    #: going on) for up to this many seconds before its unconfirmed instances count as failed.
    reconnect_window: float = 60.0
    #: Onward associations a C-MOVE job opens to its destination; instances are spread over them,
    #: each sent once (issue 17). More than one hides per-instance round trips on a far link.
    onward_associations: int = 1
    #: Proxy-owned state: journal, spool, UID side table.
    data_dir: str = "var"
    #: Inbound DICOM TLS; None = plain TCP.
    tls: TlsConfig | None = None
    #: Move instances on raw sockets where it is safe (plain TCP): the archives' C-STOREs
    #: during our C-MOVE and our onward C-STOREs (dicomproxy.transport.raw). False = pynetdicom only.
    fast_path: bool = True


@dataclass(frozen=True)
class HospitalConfig:
    """医院组织机构代码 / 名称: must equal HospitalID / HospitalName in the view."""

    id: str
    name: str = ""


@dataclass(frozen=True)
class ViewConfig:
    """The exam view (影像云视图)."""

    url: str
    name: str = "V_IMAGE_CLOUD"
    max_privacy: int = 0
    #: Charset of C-FIND answers when the request's is not GB18030, GBK or ISO_IR 192.
    default_charset: str = "ISO_IR 192"
    #: How PatientName is rendered by default; peers may override.
    name_style: NameStyle = "ideographic"
    pool_size: int = 5
    query_timeout: float = 30.0
    #: Stop a C-FIND after this many matches (0 = unlimited).
    max_results: int = 1000
    #: Date-time RowTimestamps: seconds re-read below the high-water mark (late commits).
    stamp_overlap: float = 60.0
    #: Bind string parameters as nvarchar (SQL Server views whose columns are nvarchar);
    #: false = varchar, matching the seed's varchar columns (no implicit conversion).
    unicode_params: bool = False


@dataclass(frozen=True)
class PacsConfig:
    """An upstream archive: ``[pacs]`` (the default) or one ``[[archives]]`` entry."""

    ae_title: str
    host: str
    port: int
    retrieve: RetrieveMethod = "c-move"
    connect_timeout: float = 10.0
    acse_timeout: float = 30.0
    dimse_timeout: float = 120.0
    #: Longest a whole retrieval (C-MOVE/C-GET of one job) may take, however the PACS keeps the
    #: association alive; then it is aborted and the job ends as a failure. 0 = no limit.
    total_timeout: float = 3600.0
    max_concurrent: int = 4
    max_pdu: int = 0
    #: Outbound DICOM TLS to the PACS; None = plain TCP.
    tls: TlsConfig | None = None
    #: Name used in logs and the journal ("pacs" for the ``[pacs]`` table).
    name: str = "pacs"
    #: View ``Sysid`` values this archive serves; empty on ``[pacs]`` = every exam no other archive claims.
    sysids: tuple[str, ...] = ()
    #: Optional narrowing by the view's ``ExamineType`` (modality); empty = any.
    modalities: tuple[str, ...] = ()
    #: Archives (by name) asked in this order when this one has no instance of a routed study;
    #: empty = no fallback (the default: a study is only ever looked for where it is routed).
    fallback: tuple[str, ...] = ()


@dataclass(frozen=True)
class CompressionConfig:
    """影像压缩方式: what goes out to the peers (issue: compression)."""

    mode: CompressionMode = "none"
    lossless_syntaxes: tuple[str, ...] = ()
    lossy_syntaxes: tuple[str, ...] = ()
    j2k_ratio: float = 10.0
    j2k_psnr: float = 0.0
    jpegls_near: int = 2
    #: JPEG Baseline quality (1-100) for 8-bit images in lossy mode.
    jpeg_quality: int = 90
    uid_policy: UidPolicy = "keep"
    never_lossy_modalities: tuple[str, ...] = ("MG",)
    never_lossy_sop_classes: tuple[str, ...] = ()
    workers: int = 0


@dataclass(frozen=True)
class PeerConfig:
    """An AE allowed to call us; also the only valid C-MOVE destinations."""

    ae_title: str
    host: str
    port: int
    check_host: bool = True
    compression: CompressionMode | None = None
    name_style: NameStyle | None = None
    #: Outbound DICOM TLS when we C-STORE to this peer; None = plain TCP.
    tls: TlsConfig | None = None
    #: Services this peer may request (PS3.4 A, C); others are refused with their DIMSE status.
    services: tuple[str, ...] = SERVICES
    #: Overrides ``[proxy] onward_associations`` for C-MOVEs to this peer; None = that value.
    onward_associations: int | None = None


@dataclass(frozen=True)
class LoggingConfig:
    level: str = "INFO"
    file: str = ""
    max_bytes: int = 10 * 1024 * 1024
    backups: int = 5
    #: Patient identifiers appear in DEBUG logs only when this is true.
    log_identifiers: bool = False


@dataclass(frozen=True)
class JournalConfig:
    #: SQLAlchemy URL of the job journal; empty = SQLite in ``proxy.data_dir``.
    url: str = ""
    #: At start, C-MOVE jobs interrupted less than this many seconds ago are resumed by
    #: themselves (their destination receives what it did not confirm). 0 = off.
    resume_window: float = 3600.0


@dataclass(frozen=True)
class HttpTlsConfig:
    """HTTPS for the console: a PEM certificate (chain) and its key (empty = in ``cert``)."""

    cert: str
    key: str = ""


@dataclass(frozen=True)
class HttpConfig:
    """The operations console (docs/operations.md): health, metrics, status page."""

    host: str = "127.0.0.1"
    #: 0 = no HTTP service.
    port: int = 8080
    #: Bearer token every request but ``/healthz`` must send; required off loopback.
    token: str = ""
    #: Show patient names/IDs on the status page (off: patient data stays off the page).
    show_identifiers: bool = False
    #: Seconds between the C-ECHOs of the PACS and each archive that ``/readyz`` reports.
    echo_interval: float = 30.0
    #: ``/readyz`` fails when the disk holding the data directory (spool) has less free space.
    min_free_mb: int = 1024
    tls: HttpTlsConfig | None = None


@dataclass(frozen=True)
class AuditConfig:
    """The audit trail of patient-data access (docs/operations.md)."""

    #: Record associations, C-FIND, C-MOVE/C-GET, retries, start/stop in the journal database.
    enabled: bool = True
    #: Also send DICOM audit messages (PS3.15 A.5, IHE ATNA) to ``udp://``, ``tcp://`` or
    #: ``tls://HOST:PORT`` (RFC 5424; RFC 5425 for TLS); empty = none.
    syslog: str = ""
    #: TLS: CA bundle that verifies the syslog server (empty = the system's CAs).
    syslog_ca: str = ""
    #: TLS: our client certificate (PEM) and key, when the syslog server asks for one.
    syslog_cert: str = ""
    syslog_key: str = ""


#: Exam states whose images exist (exam-view.md, State): 检查完成, 书写完成, 审核完成, 修订完成.
PUSH_STATES: tuple[str, ...] = ("检查完成", "书写完成", "审核完成", "修订完成")
#: ``[push] recheck_after`` at most (s): with ``rechecks`` ≤ 10 the longest gap is 7 days × 2⁹ ≈ 10
#: years, a due time well inside the calendar.
MAX_RECHECK_AFTER = 7 * 86400.0
_WINDOW_RE = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)$")


@dataclass(frozen=True)
class PushConfig:
    """Push mode (docs/push.md): exams the view announces by RowTimestamp go to ``destinations``."""

    enabled: bool = False
    #: Peer AE titles (``[[peers]]``) every queued study is sent to; each with its peer's compression.
    destinations: tuple[str, ...] = ()
    #: Seconds between two reads of the view above the watermark.
    poll_interval: float = 10.0
    #: Where the watermark starts the first time: "now", "beginning" or an ISO date-time
    #: (date-time RowTimestamps only).
    start_from: str = "now"
    #: Exam states that are queued (rows whose images exist); empty = any state.
    states: tuple[str, ...] = PUSH_STATES
    #: Only these view Sysid values (empty = all).
    sysids: tuple[str, ...] = ()
    #: Only these ExamineType (modality) values (empty = all).
    modalities: tuple[str, ...] = ()
    #: Off-peak window "HH:MM-HH:MM" (local time; may cross midnight) when sending may start; "" = always.
    window: str = ""
    #: Per-destination cap on sent megabits per second (AE title → Mbps); absent = no cap.
    max_mbps: tuple[tuple[str, float], ...] = ()
    #: Studies sent at the same time by this node.
    max_concurrent: int = 2
    #: View rows read per statement.
    batch_size: int = 500
    #: First pause before a failed study is tried again; doubles up to ``max_retry_delay``.
    retry_delay: float = 30.0
    max_retry_delay: float = 3600.0
    #: Attempts before a study is left ``failed`` (``push retry ID`` starts it again).
    max_attempts: int = 20
    #: Seconds a claimed study stays this node's without renewal (another node takes it over after).
    lease: float = 60.0
    #: Times a study's lease may expire and be taken over; at the next expiry it is ``failed``, not
    #: run again (a study that kills every node handling it); ``push retry ID`` runs it again.
    max_takeovers: int = 3
    #: Seconds after a delivery before the PACS is asked again whether the study grew (images that
    #: arrived late: a series sent after the RIS said the exam was finished); 0 = no re-checks.
    recheck_after: float = 600.0
    #: Re-checks after each delivery: the first ``recheck_after`` s after it, each next one twice the
    #: previous gap later (600 s and 2: at +10 min and +30 min); 0 = none. Only a grown count sends.
    rechecks: int = 2


@dataclass(frozen=True)
class ReportsConfig:
    """Order and report files (OrderFilePath / ReportFilePath) as DICOM objects of their study:
    delivered with pushed studies and, with ``in_retrieve``, offered to C-FIND/C-MOVE/C-GET."""

    enabled: bool = True
    #: Also in C-MOVE/C-GET answers (one sub-operation per file) and in C-FIND (the series of
    #: each file; counted in Number of Study Related Series/Instances).
    in_retrieve: bool = False
    #: Seconds to fetch one file (http/https/ftp).
    timeout: float = 30.0
    #: Larger files are refused (MiB).
    max_mb: float = 50.0
    #: Fetch attempts before a missing file is given up (logged); the images never wait for it.
    max_attempts: int = 10
    #: UNC share prefix → the folder it is mounted on, e.g. {"\\\\ris\\reports" = "/mnt/reports"}.
    shares: tuple[tuple[str, str], ...] = ()

    @property
    def retrievable(self) -> bool:
        """Whether C-FIND/C-MOVE/C-GET offer the files (``in_retrieve``, and files not turned off)."""
        return self.enabled and self.in_retrieve


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


class _Section:
    """Reads one TOML table; every error names the file and the dotted key."""

    def __init__(self, path: str, prefix: str, table: Any) -> None:
        self.path = path
        self.prefix = prefix
        if not isinstance(table, Mapping):
            raise ConfigError(path, prefix, f"must be a table, not {type(table).__name__}")
        self.table: Mapping[str, Any] = table
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def error(self, name: str, problem: str) -> ConfigError:
        return ConfigError(self.path, self.key(name), problem)

    def _get(self, name: str, default: Any) -> Any:
        self.used.add(name)
        if name not in self.table:
            if default is _REQUIRED:
                raise self.error(name, "is required")
            return default
        return self.table[name]

    def string(self, name: str, default: Any = _REQUIRED, *, choices: tuple[str, ...] = ()) -> Any:
        value = self._get(name, default)
        if value is default and default is not _REQUIRED:
            return value
        if not isinstance(value, str):
            raise self.error(name, f"must be a string, not {type(value).__name__}")
        value = _expand_env(value, self)
        if choices and value not in choices:
            raise self.error(name, f"must be one of {', '.join(choices)}, not {value!r}")
        return value

    def ae_title(self, name: str, default: Any = _REQUIRED) -> str:
        value = cast(str, self.string(name, default))
        if not _AE_RE.match(value) or not value.strip():
            raise self.error(
                name, f"{value!r} is not a valid AE title (1-16 printable ASCII characters, no '\\')"
            )
        return value.strip()

    def integer(
        self, name: str, default: Any = _REQUIRED, *, lo: int | None = None, hi: int | None = None
    ) -> int:
        value = self._get(name, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(name, f"must be an integer, not {value!r}")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            if hi is None:
                raise self.error(name, f"must be >= {lo}, not {value}")
            if lo is None:
                raise self.error(name, f"must be <= {hi}, not {value}")
            raise self.error(name, f"must be between {lo} and {hi}, not {value}")
        return value

    def number(self, name: str, default: Any = _REQUIRED, *, lo: float = 0.0) -> float:
        value = self._get(name, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(name, f"must be a number, not {value!r}")
        if value < lo:
            raise self.error(name, f"must be >= {lo}, not {value}")
        return float(value)

    def boolean(self, name: str, default: Any = _REQUIRED) -> bool:
        value = self._get(name, default)
        if not isinstance(value, bool):
            raise self.error(name, f"must be true or false, not {value!r}")
        return value

    def strings(self, name: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        value = self._get(name, default)
        if value is default:
            return default
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(name, "must be a list of strings")
        return tuple(_expand_env(v, self) for v in value)

    def finish(self) -> None:
        unknown = sorted(set(self.table) - self.used)
        if unknown:
            raise self.error(unknown[0], "unknown key (check its spelling)")


def _expand_env(value: str, section: _Section) -> str:
    def repl(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise ConfigError(section.path, section.prefix or None, f"environment variable {name} is not set")
        return os.environ[name]

    return _ENV_RE.sub(repl, value)


def _tls(parent: _Section, *, inbound: bool) -> TlsConfig | None:
    """An optional ``tls`` sub-table; file paths must exist."""
    parent.used.add("tls")
    if "tls" not in parent.table:
        return None
    s = _Section(parent.path, parent.key("tls"), parent.table["tls"])
    base = Path(parent.path).parent if parent.path and not parent.path.startswith("<") else Path.cwd()

    def file(name: str, required: bool) -> str:
        value = cast(str, s.string(name, _REQUIRED if required else ""))
        if not value:
            return ""
        resolved = (base / value).resolve()
        if not resolved.is_file():
            raise s.error(name, f"file {resolved} does not exist")
        return str(resolved)

    cfg = TlsConfig(
        cert=file("cert", required=inbound),
        key=file("key", required=False),
        ca=file("ca", required=False),
        require_client_cert=s.boolean("require_client_cert", False) if inbound else False,
        check_hostname=s.boolean("check_hostname", False) if not inbound else False,
    )
    if cfg.require_client_cert and not cfg.ca:
        raise s.error("ca", "is required when require_client_cert = true")
    s.finish()
    return cfg


def _port(sec: _Section, name: str, default: Any = _REQUIRED) -> int:
    return sec.integer(name, default, lo=0, hi=65535)


def _archive(s: _Section, fixed_name: str | None) -> PacsConfig:
    """``[pacs]`` (``fixed_name`` = "pacs") or one ``[[archives]]`` entry (its own ``name``)."""
    d = PacsConfig(ae_title="X", host="", port=0)
    archive = PacsConfig(
        ae_title=s.ae_title("ae_title"),
        host=s.string("host"),
        port=_port(s, "port"),
        retrieve=s.string("retrieve", d.retrieve, choices=RETRIEVE_METHODS),
        connect_timeout=s.number("connect_timeout", d.connect_timeout),
        acse_timeout=s.number("acse_timeout", d.acse_timeout),
        dimse_timeout=s.number("dimse_timeout", d.dimse_timeout),
        total_timeout=s.number("total_timeout", d.total_timeout),
        max_concurrent=s.integer("max_concurrent", d.max_concurrent, lo=1),
        max_pdu=s.integer("max_pdu", d.max_pdu, lo=0),
        tls=_tls(s, inbound=False),
        name=fixed_name if fixed_name is not None else s.string("name"),
        sysids=tuple(x.strip().upper() for x in s.strings("sysids", ())),
        modalities=tuple(x.strip().upper() for x in s.strings("modalities", ())),
        fallback=tuple(x.strip() for x in s.strings("fallback", ())),
    )
    s.finish()
    return archive


def is_loopback(host: str) -> bool:
    """``127.0.0.1``, ``::1``, ``localhost``: reachable from this machine only."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip()).is_loopback
    except ValueError:
        return False


def _http(s: _Section) -> HttpConfig:
    d = HttpConfig()
    tls = None
    s.used.add("tls")
    if "tls" in s.table:
        t = _Section(s.path, s.key("tls"), s.table["tls"])
        base = _base_dir(s.path) or Path.cwd()
        files = {}
        for name, required in (("cert", True), ("key", False)):
            value = cast(str, t.string(name, _REQUIRED if required else ""))
            if value:
                resolved = (base / value).resolve()
                if not resolved.is_file():
                    raise t.error(name, f"file {resolved} does not exist")
                value = str(resolved)
            files[name] = value
        t.finish()
        tls = HttpTlsConfig(cert=files["cert"], key=files["key"])
    http = HttpConfig(
        host=s.string("host", d.host),
        port=_port(s, "port", d.port),
        token=s.string("token", d.token),
        show_identifiers=s.boolean("show_identifiers", d.show_identifiers),
        echo_interval=s.number("echo_interval", d.echo_interval, lo=1.0),
        min_free_mb=s.integer("min_free_mb", d.min_free_mb, lo=0),
        tls=tls,
    )
    if http.port and not is_loopback(http.host) and not http.token.strip():
        raise s.error("token", f"is required when host is not a loopback address ({http.host!r})")
    s.finish()
    return http


SYSLOG_SCHEMES = ("udp", "tcp", "tls")


def _audit(s: _Section) -> AuditConfig:
    d = AuditConfig()
    files = {}
    for name in ("syslog_ca", "syslog_cert", "syslog_key"):
        value = cast(str, s.string(name, ""))
        if value:
            value = str(Path(_relative_path(value, s.path)).resolve())
            if not Path(value).is_file():
                raise s.error(name, f"file {value} does not exist")
        files[name] = value
    audit = AuditConfig(enabled=s.boolean("enabled", d.enabled), syslog=s.string("syslog", d.syslog), **files)
    if audit.syslog:
        from urllib.parse import urlsplit

        try:
            url = urlsplit(audit.syslog)
            ok = url.scheme in SYSLOG_SCHEMES and bool(url.hostname) and bool(url.port)
        except ValueError:
            ok = False
        if not ok:
            raise s.error(
                "syslog", f"must be udp://HOST:PORT, tcp://HOST:PORT or tls://HOST:PORT, not {audit.syslog!r}"
            )
    s.finish()
    return audit


def _push(s: _Section, peers: set[str]) -> PushConfig:
    d = PushConfig()
    s.used.add("max_mbps")
    caps: list[tuple[str, float]] = []
    raw = s.table.get("max_mbps", {})
    if not isinstance(raw, Mapping):
        raise s.error("max_mbps", "must be a table of destination AE title = Mbps")
    for ae, mbps in raw.items():
        if isinstance(mbps, bool) or not isinstance(mbps, (int, float)) or mbps <= 0:
            raise s.error(f"max_mbps.{ae}", f"must be a number > 0, not {mbps!r}")
        caps.append((str(ae), float(mbps)))
    push = PushConfig(
        enabled=s.boolean("enabled", d.enabled),
        destinations=tuple(x.strip() for x in s.strings("destinations", d.destinations)),
        poll_interval=s.number("poll_interval", d.poll_interval, lo=0.1),
        start_from=s.string("start_from", d.start_from),
        states=tuple(x.strip() for x in s.strings("states", d.states)),
        sysids=tuple(x.strip().upper() for x in s.strings("sysids", ())),
        modalities=tuple(x.strip().upper() for x in s.strings("modalities", ())),
        window=s.string("window", d.window).strip(),
        max_mbps=tuple(caps),
        max_concurrent=s.integer("max_concurrent", d.max_concurrent, lo=1, hi=64),
        batch_size=s.integer("batch_size", d.batch_size, lo=1, hi=1000),
        retry_delay=s.number("retry_delay", d.retry_delay, lo=0.1),
        max_retry_delay=s.number("max_retry_delay", d.max_retry_delay, lo=0.1),
        max_attempts=s.integer("max_attempts", d.max_attempts, lo=1),
        lease=s.number("lease", d.lease, lo=1.0),
        max_takeovers=s.integer("max_takeovers", d.max_takeovers, lo=0, hi=1000),
        recheck_after=s.number("recheck_after", d.recheck_after, lo=0.0),
        rechecks=s.integer("rechecks", d.rechecks, lo=0, hi=10),
    )
    for i, ae in enumerate(push.destinations):
        if ae not in peers:
            raise s.error(f"destinations[{i}]", f"{ae!r} is not a [[peers]] AE title")
    for ae, _ in push.max_mbps:
        if ae not in push.destinations:
            raise s.error(f"max_mbps.{ae}", f"{ae!r} is not one of push.destinations")
    if push.enabled and not push.destinations:
        raise s.error("destinations", "must name at least one peer when enabled = true")
    if push.start_from not in ("now", "beginning"):
        import datetime as dt

        try:
            dt.datetime.fromisoformat(push.start_from)
        except ValueError:
            raise s.error(
                "start_from", f'must be "now", "beginning" or an ISO date-time, not {push.start_from!r}'
            ) from None
    if push.recheck_after > MAX_RECHECK_AFTER:
        raise s.error(
            "recheck_after", f"must be at most {MAX_RECHECK_AFTER:.0f} (7 days), not {push.recheck_after:g}"
        )
    if push.window and not _WINDOW_RE.match(push.window):
        raise s.error("window", f'must be "HH:MM-HH:MM" (e.g. "20:00-07:00"), not {push.window!r}')
    if push.window and push.window[:5] == push.window[6:]:
        raise s.error("window", f"{push.window!r} is empty (start equals end); leave it out for always")
    s.finish()
    return push


def _reports(s: _Section) -> ReportsConfig:
    d = ReportsConfig()
    s.used.add("shares")
    raw = s.table.get("shares", {})
    if not isinstance(raw, Mapping) or not all(isinstance(v, str) for v in raw.values()):
        raise s.error("shares", "must be a table of UNC prefix = mounted folder")
    reports = ReportsConfig(
        enabled=s.boolean("enabled", d.enabled),
        in_retrieve=s.boolean("in_retrieve", d.in_retrieve),
        timeout=s.number("timeout", d.timeout, lo=0.1),
        max_mb=s.number("max_mb", d.max_mb, lo=0.001),
        max_attempts=s.integer("max_attempts", d.max_attempts, lo=1),
        shares=tuple((str(k), _expand_env(v, s)) for k, v in raw.items()),
    )
    s.finish()
    return reports


def _base_dir(config_path: str) -> Path | None:
    """The config file's folder; None for a config that is no file (``<config>``)."""
    return None if config_path.startswith("<") else Path(config_path).resolve().parent


def _relative_path(value: str, config_path: str) -> str:
    """A relative file path taken from the config file's folder (as the example config says)."""
    base = _base_dir(config_path)
    if not value or base is None or Path(value).is_absolute():
        return value
    return str(base / value)


def _relative_sqlite(url: str, config_path: str) -> str:
    """``sqlite:///var/x.db`` (relative) → the file beside the config; other URLs unchanged."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or url.startswith(prefix + "/"):
        return url
    rest = url[len(prefix) :]
    if not rest or rest.startswith(":memory:") or rest.startswith("file:"):
        return url
    return prefix + _relative_path(rest, config_path)


def parse_config(data: Mapping[str, Any], path: str = "<config>") -> Config:
    """Validate a parsed TOML document into a :class:`Config`."""
    root = _Section(path, "", data)

    def section(name: str, required: bool = True) -> _Section:
        root.used.add(name)
        if name not in data:
            if required:
                raise ConfigError(path, f"[{name}]", "section is required")
            return _Section(path, name, {})
        return _Section(path, name, data[name])

    s = section("proxy", required=False)
    d = ProxyConfig()
    proxy = ProxyConfig(
        ae_title=s.ae_title("ae_title", d.ae_title),
        host=s.string("host", d.host),
        port=_port(s, "port", d.port),
        max_pdu=s.integer("max_pdu", d.max_pdu, lo=0),
        acse_timeout=s.number("acse_timeout", d.acse_timeout),
        dimse_timeout=s.number("dimse_timeout", d.dimse_timeout),
        network_timeout=s.number("network_timeout", d.network_timeout),
        maximum_associations=s.integer("maximum_associations", d.maximum_associations, lo=1),
        drain_timeout=s.number("drain_timeout", d.drain_timeout),
        retries=s.integer("retries", d.retries, lo=0, hi=100),
        retry_delay=s.number("retry_delay", d.retry_delay),
        reconnect_window=s.number("reconnect_window", d.reconnect_window),
        onward_associations=s.integer("onward_associations", d.onward_associations, lo=1, hi=MAX_ONWARD),
        fast_path=s.boolean("fast_path", d.fast_path),
        data_dir=s.string("data_dir", d.data_dir),
        tls=_tls(s, inbound=True),
    )
    s.finish()

    s = section("hospital")
    hospital = HospitalConfig(id=s.string("id"), name=s.string("name", ""))
    if not hospital.id.strip():
        raise s.error("id", "must not be empty")
    s.finish()

    s = section("view")
    vd = ViewConfig(url="")
    view = ViewConfig(
        url=_relative_sqlite(s.string("url"), path),
        name=s.string("name", vd.name),
        max_privacy=s.integer("max_privacy", vd.max_privacy, lo=0),
        default_charset=s.string("default_charset", vd.default_charset, choices=CHARSETS),
        name_style=s.string("name_style", vd.name_style, choices=NAME_STYLES),
        pool_size=s.integer("pool_size", vd.pool_size, lo=1),
        query_timeout=s.number("query_timeout", vd.query_timeout),
        max_results=s.integer("max_results", vd.max_results, lo=0),
        stamp_overlap=s.number("stamp_overlap", vd.stamp_overlap),
        unicode_params=s.boolean("unicode_params", vd.unicode_params),
    )
    s.finish()

    pacs = _archive(section("pacs"), "pacs")

    root.used.add("archives")
    raw_archives = data.get("archives", [])
    if not isinstance(raw_archives, list):
        raise ConfigError(path, "archives", "must be an array of tables ([[archives]])")
    archives: list[PacsConfig] = []
    for i, raw in enumerate(raw_archives):
        s = _Section(path, f"archives[{i}]", raw)
        archive = _archive(s, None)
        if not archive.sysids:
            raise s.error("sysids", "is required (which view Sysid values this archive serves)")
        if archive.name in {a.name for a in (pacs, *archives)}:
            raise s.error("name", f"{archive.name!r} is used twice")
        archives.append(archive)
    names = {a.name for a in (pacs, *archives)}
    for where, archive in [("pacs", pacs), *((f"archives[{i}]", a) for i, a in enumerate(archives))]:
        for name in archive.fallback:
            if name not in names or name == archive.name:
                raise ConfigError(path, f"{where}.fallback", f"{name!r} is not another archive's name")

    s = section("compression", required=False)
    cd = CompressionConfig()
    compression = CompressionConfig(
        mode=s.string("mode", cd.mode, choices=COMPRESSION_MODES),
        lossless_syntaxes=s.strings("lossless_syntaxes", cd.lossless_syntaxes),
        lossy_syntaxes=s.strings("lossy_syntaxes", cd.lossy_syntaxes),
        j2k_ratio=s.number("j2k_ratio", cd.j2k_ratio),
        j2k_psnr=s.number("j2k_psnr", cd.j2k_psnr),
        jpegls_near=s.integer("jpegls_near", cd.jpegls_near, lo=0, hi=255),
        jpeg_quality=s.integer("jpeg_quality", cd.jpeg_quality, lo=1, hi=100),
        uid_policy=s.string("uid_policy", cd.uid_policy, choices=("keep", "new")),
        never_lossy_modalities=s.strings("never_lossy_modalities", cd.never_lossy_modalities),
        never_lossy_sop_classes=s.strings("never_lossy_sop_classes", cd.never_lossy_sop_classes),
        workers=s.integer("workers", cd.workers, lo=0),
    )
    s.finish()

    root.used.add("peers")
    raw_peers = data.get("peers", [])
    if not isinstance(raw_peers, list):
        raise ConfigError(path, "peers", "must be an array of tables ([[peers]])")
    peers: list[PeerConfig] = []
    for i, raw in enumerate(raw_peers):
        s = _Section(path, f"peers[{i}]", raw)
        comp = s.string("compression", None, choices=COMPRESSION_MODES)
        style = s.string("name_style", None, choices=NAME_STYLES)
        peer = PeerConfig(
            ae_title=s.ae_title("ae_title"),
            host=s.string("host"),
            port=_port(s, "port"),
            check_host=s.boolean("check_host", True),
            compression=comp,
            name_style=style,
            tls=_tls(s, inbound=False),
            services=s.strings("services", SERVICES),
            onward_associations=(
                s.integer("onward_associations", lo=1, hi=MAX_ONWARD)
                if "onward_associations" in raw
                else None
            ),
        )
        bad = [x for x in peer.services if x not in SERVICES]
        if bad:
            raise s.error("services", f"unknown service {bad[0]!r}; expected some of {', '.join(SERVICES)}")
        s.finish()
        if any(p.ae_title == peer.ae_title for p in peers):
            raise s.error("ae_title", f"{peer.ae_title!r} is listed twice")
        peers.append(peer)

    s = section("logging", required=False)
    ld = LoggingConfig()
    logging_cfg = LoggingConfig(
        level=s.string("level", ld.level, choices=("DEBUG", "INFO", "WARNING", "ERROR")),
        file=_relative_path(s.string("file", ld.file), path),
        max_bytes=s.integer("max_bytes", ld.max_bytes, lo=1024),
        backups=s.integer("backups", ld.backups, lo=0),
        log_identifiers=s.boolean("log_identifiers", ld.log_identifiers),
    )
    s.finish()

    s = section("journal", required=False)
    jd = JournalConfig()
    journal = JournalConfig(
        url=_relative_sqlite(s.string("url", jd.url), path),
        resume_window=s.number("resume_window", jd.resume_window),
    )
    s.finish()

    http = _http(section("http", required=False))

    audit = _audit(section("audit", required=False))

    push = _push(section("push", required=False), {p.ae_title for p in peers})

    reports = _reports(section("reports", required=False))

    root.finish()
    config = Config(
        path=path,
        proxy=proxy,
        hospital=hospital,
        view=view,
        pacs=pacs,
        compression=compression,
        peers=tuple(peers),
        archives=tuple(archives),
        logging=logging_cfg,
        journal=journal,
        http=http,
        audit=audit,
        push=push,
        reports=reports,
    )
    # Whatever would fail every job is rejected here, with its key: a syntax we cannot encode,
    # or a lossy one in the lossless list (transcode validates; imported late: it needs codecs).
    from dicomproxy.transcode.policy import policy_for

    policy_for(config, None)
    for each in config.peers:
        policy_for(config, each)
    return config


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
