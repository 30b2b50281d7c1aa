"""UID side table: Study Instance UID → ExamineID, in the proxy's own SQLite database.

Why: the view's StudyInstanceUID cell may hold several UIDs (``uid1,uid2``), so a lookup
on the view itself needs ``LIKE '%uid%'`` on a 512-character column, which no B-tree
index can serve. The side table has one row per (uid, ExamineID) with a primary key on
``uid``; a lookup is an index seek here plus ``ExamineID IN (...)`` on the view, where
ExamineID is the view's unique key.

Sync: incremental by RowTimestamp (the seed's change stamp, ``>= high-water - overlap``
to tolerate late commits and equal stamps), a full rebuild when the table is empty or
was built from another view. The side table is only a *hint*: every hit is re-read from
the view's current row and visibility and the UID are checked again there, so a stale
entry can never make an invisible study visible. A miss triggers one forced sync before
we answer "not found". Rows whose StudyInstanceUID changes without a new RowTimestamp
are not seen until the next full rebuild (delete the file or run ``rebuild()``).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from sqlalchemy import (
    Column,
    Index,
    MetaData,
    String,
    Table,
    create_engine,
    delete,
    insert,
    select,
)
from sqlalchemy.engine import Connection, Engine

from dicomproxy.view.uids import split_uid_cell

LOG = logging.getLogger("dicomproxy.view.uidindex")

_MD = MetaData()
UID_TABLE = Table(
    "study_uid_index",
    _MD,
    Column("uid", String(64), primary_key=True),
    Column("examine_id", String(64), primary_key=True),
)
Index("ix_study_uid_index_examine_id", UID_TABLE.c.examine_id)
STATE_TABLE = Table(
    "study_uid_index_state",
    _MD,
    Column("name", String(32), primary_key=True),
    Column("value", String(512)),
)

#: Re-read rows whose RowTimestamp is this close below the high-water mark.
OVERLAP = dt.timedelta(seconds=60)
BATCH = 5000


class UidIndex:
    """The side table; thread-safe, synced lazily (at most every ``max_age`` seconds)."""

    def __init__(
        self, path: Path | str, view_engine: Engine, view_table: Table, source: str, max_age: float = 2.0
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.engine = create_engine(f"sqlite:///{self.path}")
        self.view_engine = view_engine
        self.view_table = view_table
        self.source = source
        self.max_age = max_age
        self._lock = threading.Lock()
        self._last_sync = 0.0
        _MD.create_all(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    # --- state ------------------------------------------------------------------------------

    def _state(self) -> dict[str, str]:
        with self.engine.connect() as conn:
            return {r.name: r.value for r in conn.execute(select(STATE_TABLE))}

    def _set_state(self, conn: Connection, **values: str) -> None:
        conn.execute(delete(STATE_TABLE).where(STATE_TABLE.c.name.in_(list(values))))
        conn.execute(insert(STATE_TABLE), [{"name": k, "value": v} for k, v in values.items()])

    # --- sync -------------------------------------------------------------------------------

    def sync(self, *, force: bool = False) -> int:
        """Bring the side table up to date; returns the number of view rows read."""
        with self._lock:
            if not force and time.monotonic() - self._last_sync < self.max_age:
                return 0
            state = self._state()
            full = state.get("source") != self.source or "high_water" not in state
            since = None if full else dt.datetime.fromisoformat(state["high_water"]) - OVERLAP
            count = self._sync(since)
            self._last_sync = time.monotonic()
            return count

    def rebuild(self) -> int:
        """Drop everything and read the whole view again."""
        with self._lock:
            count = self._sync(None)
            self._last_sync = time.monotonic()
            return count

    def _sync(self, since: dt.datetime | None) -> int:
        c = self.view_table.c
        stmt = select(c.ExamineID, c.StudyInstanceUID, c.RowTimestamp)
        if since is not None:
            stmt = stmt.where(c.RowTimestamp >= since)
        high: dt.datetime | None = None
        count = 0
        started = time.monotonic()
        with self.view_engine.connect() as vconn, self.engine.begin() as conn:
            if since is None:
                conn.execute(delete(UID_TABLE))
            result = vconn.execution_options(stream_results=True, yield_per=BATCH).execute(stmt)
            for batch in result.partitions(BATCH):
                ids = [r[0] for r in batch if r[0] is not None]
                if since is not None:
                    conn.execute(delete(UID_TABLE).where(UID_TABLE.c.examine_id.in_(ids)))
                entries = {
                    (uid, r[0]): None for r in batch if r[0] is not None for uid in split_uid_cell(r[1])
                }
                if entries:
                    conn.execute(
                        insert(UID_TABLE).prefix_with("OR REPLACE"),
                        [{"uid": u, "examine_id": e} for u, e in entries],
                    )
                for r in batch:
                    if r[2] is not None and (high is None or r[2] > high):
                        high = r[2]
                count += len(batch)
            values = {"source": self.source}
            if high is not None:
                values["high_water"] = high.isoformat()
            elif since is not None:
                values["high_water"] = (since + OVERLAP).isoformat()
            self._set_state(conn, **values)
        LOG.info(
            "uid side table: %s sync read %d view rows in %.2f s",
            "full" if since is None else "incremental",
            count,
            time.monotonic() - started,
        )
        return count

    # --- lookup -----------------------------------------------------------------------------

    def lookup(self, uids: Sequence[str]) -> dict[str, list[str]]:
        """ExamineIDs per UID (only UIDs that are in the side table)."""
        self.sync()
        found = self._lookup(uids)
        # A miss may be a study newer than our last sync: sync once, then answer.
        if len(found) < len(set(uids)) and self.sync(force=True):
            found = self._lookup(uids)
        return found

    def _lookup(self, uids: Iterable[str]) -> dict[str, list[str]]:
        wanted = list(dict.fromkeys(uids))
        found: dict[str, list[str]] = {}
        with self.engine.connect() as conn:
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                stmt = select(UID_TABLE.c.uid, UID_TABLE.c.examine_id).where(UID_TABLE.c.uid.in_(chunk))
                for uid, examine_id in conn.execute(stmt):
                    found.setdefault(uid, []).append(examine_id)
        return found
