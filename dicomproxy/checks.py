"""``check-config``: can this node do its job with this file? One result per check."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from sqlalchemy import create_engine, false, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from dicomproxy.config import Config
from dicomproxy.net import Remote, c_echo
from dicomproxy.tls import client_tls_args
from dicomproxy.view.model import COLUMN_NAMES, exam_view_table


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def missing_view_columns(engine: Engine, view_name: str) -> list[str]:
    """Columns of the seed the view lacks (one probe query, then one per column if needed)."""
    table = exam_view_table(view_name)
    with engine.connect() as conn:
        try:
            conn.execute(select(*table.c).where(false())).fetchall()
            return []
        except SQLAlchemyError:
            conn.rollback()
        missing = []
        for name in COLUMN_NAMES:
            try:
                conn.execute(select(table.c[name]).where(false())).fetchall()
            except SQLAlchemyError:
                conn.rollback()
                missing.append(name)
        return missing


def run_config_checks(config: Config, *, timeout: float = 10.0) -> Iterator[CheckResult]:
    """Database, view columns, PACS echo."""
    try:
        engine = create_engine(config.view.url, pool_pre_ping=True)
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
