"""``[logging]``, ``[journal]``, ``[http]`` (the console) and ``[audit]``: running the node."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import cast
from urllib.parse import urlsplit

from dicomproxy.config.reader import (
    REQUIRED,
    Section,
    base_dir,
    is_loopback,
    port,
    relative_path,
    relative_sqlite,
)

SYSLOG_SCHEMES = ("udp", "tcp", "tls")


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
    #: The administrator's bearer token (every route); some token is required off loopback. With
    #: no token at all (loopback only) the console is open. 等保 三员分立 (docs/operations.md):
    token: str = ""
    #: the operator's: status, metrics, readiness, push pause/resume;
    operator_token: str = ""
    #: the auditor's: the audit trail and its verification only.
    auditor_token: str = ""
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
    #: The hash chain's algorithm for new rows: ``sha256`` or ``sm3`` (国密, GB/T 32905).
    hash: str = "sha256"
    #: Rows older than this many days are exported (``export_dir``) and deleted; 0 = kept for ever.
    #: At least 180 otherwise: 网络安全法 第二十一条 asks for network logs kept ≥ 6 months.
    keep_days: int = 180
    #: Where the retention writes the rows it deletes (JSON Lines); default ``<data_dir>/audit-export``.
    export_dir: str = ""


def logging(s: Section) -> LoggingConfig:
    ld = LoggingConfig()
    config = LoggingConfig(
        level=s.string("level", ld.level, choices=("DEBUG", "INFO", "WARNING", "ERROR")),
        file=relative_path(s.string("file", ld.file), s.path),
        max_bytes=s.integer("max_bytes", ld.max_bytes, lo=1024),
        backups=s.integer("backups", ld.backups, lo=0),
        log_identifiers=s.boolean("log_identifiers", ld.log_identifiers),
    )
    s.finish()
    return config


def journal(s: Section) -> JournalConfig:
    jd = JournalConfig()
    config = JournalConfig(
        url=relative_sqlite(s.string("url", jd.url), s.path),
        resume_window=s.number("resume_window", jd.resume_window),
    )
    s.finish()
    return config


def http(s: Section) -> HttpConfig:
    d = HttpConfig()
    tls = None
    s.used.add("tls")
    if "tls" in s.table:
        t = Section(s.path, s.key("tls"), s.table["tls"])
        base = base_dir(s.path) or Path.cwd()
        files = {}
        for name, required in (("cert", True), ("key", False)):
            value = cast(str, t.string(name, REQUIRED if required else ""))
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
        port=port(s, "port", d.port),
        token=s.string("token", d.token),
        operator_token=s.string("operator_token", d.operator_token),
        auditor_token=s.string("auditor_token", d.auditor_token),
        show_identifiers=s.boolean("show_identifiers", d.show_identifiers),
        echo_interval=s.number("echo_interval", d.echo_interval, lo=1.0),
        min_free_mb=s.integer("min_free_mb", d.min_free_mb, lo=0),
        tls=tls,
    )
    tokens = [(k, v) for k, v in (("token", http.token), ("operator_token", http.operator_token),
              ("auditor_token", http.auditor_token)) if v.strip()]  # fmt: skip
    if http.port and not is_loopback(http.host) and not tokens:
        raise s.error("token", f"is required when host is not a loopback address ({http.host!r})")
    for i, (key, value) in enumerate(tokens):
        same = [k for k, v in tokens[:i] if v == value]
        if same:
            raise s.error(key, f"must differ from {same[0]} (one token per role)")
    s.finish()
    return http


#: The shortest retention ``[audit] keep_days`` accepts (besides 0).
MIN_KEEP_DAYS = 180


def sm3_source() -> str:
    """Where SM3 (GB/T 32905) comes from here: ``"openssl"`` (hashlib), ``"gmssl"`` or ``""``
    (none). Here, below both, so that ``[audit] hash`` is checked at load and
    :mod:`dicomproxy.audit.hashing` picks the same source."""
    import hashlib
    import importlib.util

    if "sm3" in hashlib.algorithms_available:
        try:
            hashlib.new("sm3", b"")
            return "openssl"
        except ValueError:  # listed, but the provider refuses it
            pass
    return "gmssl" if importlib.util.find_spec("gmssl") is not None else ""


def sm3_available() -> bool:
    """Is there an SM3 implementation (:func:`sm3_source`)?"""
    return sm3_source() != ""


def audit(s: Section) -> AuditConfig:
    d = AuditConfig()
    files = {}
    for name in ("syslog_ca", "syslog_cert", "syslog_key"):
        value = cast(str, s.string(name, ""))
        if value:
            value = str(Path(relative_path(value, s.path)).resolve())
            if not Path(value).is_file():
                raise s.error(name, f"file {value} does not exist")
        files[name] = value
    keep_days = s.integer("keep_days", d.keep_days, lo=0)
    if 0 < keep_days < MIN_KEEP_DAYS:
        raise s.error(
            "keep_days",
            f"must be 0 (kept for ever) or at least {MIN_KEEP_DAYS} "
            f"(网络安全法 第二十一条: ≥ 6 months), not {keep_days}",
        )
    hash_alg = s.string("hash", d.hash, choices=("sha256", "sm3"))
    if hash_alg == "sm3" and not sm3_available():
        raise s.error(
            "hash",
            "sm3: OpenSSL here lacks SM3 and the gmssl package is not installed (pip install dicomproxy[gm])",
        )
    export_dir = s.string("export_dir", d.export_dir)
    audit = AuditConfig(
        enabled=s.boolean("enabled", d.enabled),
        syslog=s.string("syslog", d.syslog),
        hash=hash_alg,
        keep_days=keep_days,
        export_dir=relative_path(export_dir, s.path) if export_dir else "",
        **files,
    )
    if audit.syslog:
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
