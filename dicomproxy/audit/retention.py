"""Audit retention (``[audit] keep_days``): the oldest rows exported, then deleted, the chain kept
verifiable.

网络安全法 第二十一条 asks that network logs be kept at least six months, so ``keep_days`` is 0
(kept for ever) or ≥ 180. :func:`purge` takes the chain's prefix older than the cut-off, writes it
to a JSON Lines file (every column, hashes included: the export verifies on its own), makes the file
durable, and only then — in one transaction — deletes those rows, moves the anchor
(``audit_anchor``: the last deleted row's sequence number and hash, from which
:meth:`~dicomproxy.audit.trail.AuditTrail.verify` starts) and appends a ``purge`` row naming the
file and its digest. A chain that does not verify is never purged: its rows are the evidence.

``serve`` runs it an hour after start and then daily (:class:`RetentionTimer`);
``dicomproxy audit purge`` runs it at once.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import delete, insert, select, update

from dicomproxy.audit.hashing import hasher
from dicomproxy.audit.trail import Action, AuditRecord, AuditTrail, audit_anchor, audit_log
from dicomproxy.config import Config

LOG = logging.getLogger("dicomproxy.audit")

#: Seconds from ``serve``'s start to its first purge, then between purges.
FIRST_DELAY = 3600.0
INTERVAL = 86400.0


class PurgeRefused(Exception):
    """The chain does not verify: nothing is exported or deleted."""


@dataclass(frozen=True)
class Purged:
    """What one purge removed (``count`` 0: nothing was old enough)."""

    count: int
    first_seq: int = 0
    last_seq: int = 0
    file: Path | None = None
    digest: str = ""


def purge(trail: AuditTrail, cutoff: dt.datetime, export_dir: Path) -> Purged:
    """Export and delete the rows older than ``cutoff`` (naive UTC) at the start of the chain."""
    check = trail.verify()
    if not check.ok:
        raise PurgeRefused(
            f"the audit chain is broken at record #{check.broken_at} ({check.problem}): not purged"
        )
    rows = old_prefix(trail, cutoff)
    if not rows:
        return Purged(0)
    first, last = int(rows[0]["seq"]), int(rows[-1]["seq"])
    path = export_dir / f"audit-{first:010d}-{last:010d}.jsonl"
    data = "".join(json.dumps(_jsonable(r), ensure_ascii=False, sort_keys=True) + "\n" for r in rows).encode()
    _write_durably(path, data)
    digest = hasher(trail.hash_alg)(data)
    with trail.engine.begin() as conn:
        conn.execute(delete(audit_log).where(audit_log.c.seq >= first, audit_log.c.seq <= last))
        anchor = {"seq": last, "hash": rows[-1]["hash"], "hash_alg": rows[-1]["hash_alg"]}
        if not conn.execute(update(audit_anchor).where(audit_anchor.c.id == 1).values(**anchor)).rowcount:
            conn.execute(insert(audit_anchor).values(id=1, **anchor))
        detail = {
            "count": len(rows),
            "first_seq": first,
            "last_seq": last,
            "before": cutoff.strftime("%Y-%m-%dT%H:%M:%S"),
            "file": path.name,
            "digest": digest,
            "digest_alg": trail.hash_alg,
        }
        trail.append_in(conn, AuditRecord(Action.PURGE, outcome="success", detail=detail))
    LOG.info("audit: %d record(s) (#%d–#%d) exported to %s and removed", len(rows), first, last, path)
    return Purged(len(rows), first, last, path, digest)


def old_prefix(trail: AuditTrail, cutoff: dt.datetime) -> list[dict[str, Any]]:
    """The rows from the chain's start while older than ``cutoff`` (a younger row ends the prefix:
    the chain is only ever cut at its start)."""
    out: list[dict[str, Any]] = []
    with trail.engine.connect() as conn:
        for row in conn.execute(select(audit_log).order_by(audit_log.c.seq)).mappings():
            if row["time"] >= cutoff:
                break
            out.append(dict(row))
    return out


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v.strftime("%Y-%m-%dT%H:%M:%S") if isinstance(v, dt.datetime) else v for k, v in row.items()}


def _write_durably(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` (a new file) and fsync file and folder before returning."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def audit_export_dir(config: Config) -> Path:
    """``[audit] export_dir``, default ``<data_dir>/audit-export``."""
    return Path(config.audit.export_dir) if config.audit.export_dir else config.data_path / "audit-export"


def cutoff_for(keep_days: int, now: dt.datetime | None = None) -> dt.datetime:
    """Naive UTC ``keep_days`` before ``now``."""
    now = now or dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    return now - dt.timedelta(days=keep_days)


class RetentionTimer:
    """``serve``'s purge: :data:`FIRST_DELAY` after start, then every :data:`INTERVAL` seconds."""

    def __init__(
        self, trail: AuditTrail, keep_days: int, export_dir: Path, first: float = FIRST_DELAY
    ) -> None:
        self.trail = trail
        self.keep_days = keep_days
        self.export_dir = export_dir
        self.first = first
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="audit-retention", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5.0)

    def _run(self) -> None:
        wait = self.first
        while not self._stop.wait(wait):
            wait = INTERVAL
            try:
                purge(self.trail, cutoff_for(self.keep_days), self.export_dir)
            except PurgeRefused as exc:
                LOG.error("audit: %s", exc)
            except Exception:  # the journal is down: tomorrow again
                LOG.exception("audit: retention failed")
