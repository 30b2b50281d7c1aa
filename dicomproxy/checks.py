"""``check-config``: can this node do its job with this file? One result per check."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import create_engine
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import SQLAlchemyError

from dicomproxy.config import Config
from dicomproxy.transport.commitment import negotiates
from dicomproxy.transport.net import Remote, c_echo
from dicomproxy.transport.stow import StowClient
from dicomproxy.transport.tls import client_tls_args
from dicomproxy.view.model import COLUMN_NAMES, missing_view_columns


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def study_lookup_checks(config: Config) -> Iterator[CheckResult]:
    """RowTimestamp's kind, then one real Study Instance UID lookup through the path C-FIND and
    C-MOVE use (UID side table, synced by RowTimestamp, then the view): a view the proxy
    cannot serve fails here, not at the first request."""
    from dicomproxy.view.repository import ExamView  # the view stack only when the view is there

    view = ExamView(config)
    try:
        try:
            policy = view.stamp_policy()
        except Exception as exc:  # reported, never raised: this is a check
            yield CheckResult("view RowTimestamp", False, _first_line(exc))
            return
        yield CheckResult("view RowTimestamp", True, policy.describe())
        started = time.monotonic()
        try:
            sample = view.sample_study()
            wanted = sample[1] if sample else "1.2.826.0.1.3680043.2.1143.0.404"
            found = view.resolve_study_uids(study_uids=[wanted])
        except Exception as exc:
            yield CheckResult("study UID lookup", False, _first_line(exc))
            return
        took = time.monotonic() - started
        how = "side table" if view.uid_index is not None else "view scan (no side table)"
        if sample is None:
            ok = found == []
            verdict = "not found" if ok else "FOUND"
            detail = f"no visible row yet; a made-up UID looked up via {how}: {verdict}"
        else:
            ok = found == [wanted]
            verdict = "found" if ok else "NOT found"
            detail = f"Study UID of ExamineID {sample[0]} {verdict} via {how} in {took:.2f} s"
        yield CheckResult("study UID lookup", ok, detail)
    finally:
        view.close()


#: Each driver's own name for "give up connecting after N seconds".
_CONNECT_TIMEOUT = {
    "psycopg2": "connect_timeout",  # libpq, whole seconds
    "pymysql": "connect_timeout",  # socket connect and handshake
    "pyodbc": "timeout",  # ODBC SQL_ATTR_LOGIN_TIMEOUT
    "oracledb": "tcp_connect_timeout",
}


def connect_timeout_args(url: URL, timeout: float) -> dict[str, Any]:
    """``connect_args`` that bound the connection attempt: a database host that drops packets or
    never answers is a FAIL after ``timeout`` s, not a wait for the operating system (or for ever).
    PyMySQL reads the server's greeting under ``read_timeout``; this engine only connects and
    reads the view's columns (the study lookup uses the view's own engine and query_timeout)."""
    driver = url.get_driver_name()
    key = _CONNECT_TIMEOUT.get(driver)
    if key is None or timeout <= 0:
        return {}
    seconds = max(1, round(timeout))
    args: dict[str, Any] = {key: float(timeout) if key == "tcp_connect_timeout" else seconds}
    if driver == "pymysql":
        args["read_timeout"] = seconds
    return args


def dicomweb_checks(config: Config, timeout: float = 10.0) -> Iterator[CheckResult]:
    """Each ``kind = "dicomweb"`` peer: its STOW-RS endpoint answers, with our TLS and credentials."""
    for peer in config.peers:
        if peer.dicomweb is None:
            continue
        name = f"peer {peer.ae_title} STOW-RS"
        try:
            client = StowClient(peer.dicomweb, peer.tls, timeout, timeout)
        except (OSError, ValueError) as exc:
            yield CheckResult(name, False, f"TLS set-up: {exc}")
            continue
        try:
            yield CheckResult(name, *client.probe())
        finally:
            client.close()


def run_config_checks(config: Config, *, timeout: float = 10.0) -> Iterator[CheckResult]:
    """Database, view columns, PACS echo; each DICOMweb peer's endpoint; for each peer with
    ``storage_commitment``, whether it negotiates the Storage Commitment Push Model (PS3.4 J.3)."""
    try:
        url = make_url(config.view.url)
        engine = create_engine(url, pool_pre_ping=True, connect_args=connect_timeout_args(url, timeout))
    except (SQLAlchemyError, ImportError, ValueError) as exc:
        yield CheckResult("view database", False, f"bad URL or driver: {_first_line(exc)}")
        engine = None
    if engine is not None:
        try:
            with engine.connect():
                pass
            yield CheckResult("view database", True, f"connected ({engine.dialect.name})")
            missing = missing_view_columns(engine, config.view.name)
            if not missing:
                yield CheckResult(
                    "view columns", True, f"{config.view.name}: all {len(COLUMN_NAMES)} columns"
                )
            elif len(missing) == len(COLUMN_NAMES):
                yield CheckResult(
                    "view columns", False, f"{config.view.name}: view not found or not readable"
                )
            else:
                yield CheckResult("view columns", False, f"{config.view.name}: missing {', '.join(missing)}")
            if not missing:
                yield from study_lookup_checks(config)
        except SQLAlchemyError as exc:
            yield CheckResult("view database", False, _first_line(exc))
        finally:
            engine.dispose()
    for archive in config.all_archives:
        name = "pacs echo" if archive.name == "pacs" else f"archive {archive.name} echo"
        remote = Remote(archive.ae_title, archive.host, archive.port)
        try:
            tls_args = client_tls_args(archive.tls, remote.host)
        except (OSError, ValueError) as exc:
            yield CheckResult(name, False, f"TLS set-up: {exc}")
            continue
        result = c_echo(config.proxy.ae_title, remote, timeout=timeout, tls_args=tls_args)
        yield CheckResult(name, result.ok, result.detail)
    yield from dicomweb_checks(config, timeout)
    for peer in config.peers:
        if not peer.storage_commitment:
            continue
        name = f"peer {peer.ae_title} storage commitment"
        try:
            tls_args = client_tls_args(peer.tls, peer.host)
        except (OSError, ValueError) as exc:
            yield CheckResult(name, False, f"TLS set-up: {exc}")
            continue
        ok, detail = negotiates(
            config.proxy.ae_title,
            Remote(peer.ae_title, peer.host, peer.port),
            timeout=timeout,
            tls_args=tls_args,
        )
        yield CheckResult(name, ok, detail)
