"""UID side table: Study Instance UID → ExamineID, in the proxy's own SQLite database.

Why: the view's StudyInstanceUID cell may hold several UIDs (``uid1,uid2``), so a lookup
on the view itself needs ``LIKE '%uid%'`` on a 512-character column, which no B-tree
index can serve. The side table has one row per (uid, ExamineID) with a primary key on
``uid``; a lookup is an index seek here plus ``ExamineID IN (...)`` on the view, where
ExamineID is the view's unique key.

Sync: incremental by RowTimestamp, a full rebuild when the table is empty, was built from
another view, or the view's stamp changed kind. RowTimestamp is opaque and ordered
(:mod:`dicomproxy.view.stamp`): a SQL Server rowversion is read strictly above the
high-water mark and below ``MIN_ACTIVE_ROWVERSION()``, so a transaction that commits late is
never skipped; a date-time stamp re-reads an overlap window (``[view].stamp_overlap``). The
mark is stored as text (``rowversion:<hex>``, ``datetime:<iso>``), so a restart goes on
where it stopped. The side table is only a *hint*: every hit is re-read from the view's
current row and visibility and the UID are checked again there, so a stale entry can never
make an invisible study visible. A miss triggers one forced sync before we answer "not
found". Rows whose StudyInstanceUID changes without a new RowTimestamp are not seen until
the next full rebuild (delete the file or run ``rebuild()``).
"""

from __future__ import annotations

import datetime as dt
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    ColumnElement,
    Index,
    MetaData,
    String,
    Table,
    create_engine,
    delete,
    event,
    insert,
    select,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.schema import CreateIndex, CreateTable

from dicomproxy.mapping import pinyin_name
from dicomproxy.view.sql import ESCAPE, dicom_wildcard_to_like
from dicomproxy.view.stamp import Mark, StampKind, StampPolicy, later, policy_for
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
#: Pinyin of PatientName per exam: lets a Latin (alphabetic) name query become
#: ``PatientID IN (...)`` on the view instead of a scan. ``caret`` is ``WANG^XIAODONG``,
#: ``plain`` is ``WANGXIAODONG`` (upper case, for case-insensitive prefix matching).
NAME_TABLE = Table(
    "patient_name_pinyin",
    _MD,
    Column("examine_id", String(64), primary_key=True),
    Column("patient_id", String(64)),
    Column("caret", String(200)),
    Column("plain", String(200)),
)
Index("ix_patient_name_pinyin_caret", NAME_TABLE.c.caret)
Index("ix_patient_name_pinyin_plain", NAME_TABLE.c.plain)
#: Bump when the side tables change shape or meaning: forces a full rebuild.
SCHEMA = "3"
STATE_TABLE = Table(
    "study_uid_index_state",
    _MD,
    Column("name", String(32), primary_key=True),
    Column("value", String(512)),
)

#: Date-time stamps: re-read rows this close below the high-water mark (late commits).
OVERLAP = dt.timedelta(seconds=60)
BATCH = 5000


def _create_tables(engine: Engine) -> None:
    """The side tables and their indexes, each ``IF NOT EXISTS``: ``serve`` and its query process
    open the file at the same moment on a first start, and a check-then-create (``create_all``)
    lost that race — "table study_uid_index already exists", and one of them ran without its side
    table, every StudyInstanceUID query a scan of the view, until the next restart."""
    with engine.begin() as conn:
        for table in _MD.sorted_tables:
            conn.execute(CreateTable(table, if_not_exists=True))
            for index in sorted(table.indexes, key=lambda i: str(i.name)):
                conn.execute(CreateIndex(index, if_not_exists=True))


#: Seconds a connection retries switching a new file to WAL while the other process holds it.
WAL_WAIT = 10.0


def _wal(dbapi_connection: Any, _record: Any) -> None:
    """``PRAGMA journal_mode=WAL`` on each connection. SQLite answers "database is locked" at once,
    without its busy handler, while another connection holds the lock the switch needs (the other
    process opening the same new file, measured: 54 of 400 openings in a race of two) — retried."""
    cursor = dbapi_connection.cursor()
    deadline = time.monotonic() + WAL_WAIT
    try:
        while True:
            try:
                cursor.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
    finally:
        cursor.close()


class UidIndex:
    """The side table; thread-safe, synced lazily (at most every ``max_age`` seconds)."""

    def __init__(
        self,
        path: Path | str,
        view_engine: Engine,
        view_table: Table,
        source: str,
        max_age: float = 2.0,
        overlap: dt.timedelta = OVERLAP,
        builds: bool = True,
    ) -> None:
        """``builds``: False in the query process (:mod:`dicomproxy.queryproc`), which shares the
        serving process's file: it syncs incrementally once that process has built the tables,
        never builds them itself (until then, and during a rebuild, lookups answer None)."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.engine = create_engine(f"sqlite:///{self.path}")
        # Write-ahead log: readers never wait for a writer — the serving process's full build
        # holds the write lock for seconds while the query process reads (sqlite.org/wal.html).
        event.listen(self.engine, "connect", _wal)
        self.builds = builds
        self.view_engine = view_engine
        self.view_table = view_table
        self.source = f"{source}|schema{SCHEMA}"
        self.max_age = max_age
        self.overlap = overlap
        #: Detected from the view's values on the first sync of this process (and each rebuild).
        self.policy: StampPolicy | None = None
        self._lock = threading.Lock()
        #: When the last sync ended (monotonic); None: never in this process, so the first one runs.
        self._last_sync: float | None = None
        #: Set while a background build runs: lookups answer None (callers fall back).
        self.building = threading.Event()
        #: ``builds`` False: the serving process's build was seen complete.
        self._built_seen = False
        _create_tables(self.engine)

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
            fresh = self._last_sync is not None and time.monotonic() - self._last_sync < self.max_age
            if fresh and not force:
                return 0
            state = self._state()
            mark = Mark.decode(state.get("high_water", "")) if state.get("source") == self.source else None
            policy = self.stamp_policy()
            if mark is None and not self.builds:
                return 0  # the serving process builds (and rebuilds); lookups meanwhile answer None
            if mark is not None and mark.kind is not policy.kind and policy.kind is not StampKind.EMPTY:
                if not self.builds:
                    return 0
                LOG.warning(
                    "uid side table: RowTimestamp changed from %s to %s, rebuilding",
                    mark.kind.value,
                    policy.kind.value,
                )
                mark = None
            count = self._sync(mark)
            self._last_sync = time.monotonic()
            return count

    def stamp_policy(self, *, detect: bool = False) -> StampPolicy:
        """The stamp policy, detected from the view once per process (again when ``detect``)."""
        if self.policy is None or detect or self.policy.kind is StampKind.EMPTY:
            self.policy = policy_for(self.view_engine, self.view_table.c.RowTimestamp, self.overlap)
            LOG.info("uid side table: %s", self.policy.describe())
        return self.policy

    def _waiting(self) -> bool:
        """Lookups answer None (callers scan the view): a build runs here, or this process does not
        build and the serving process has not built the tables yet."""
        if self.building.is_set():
            return True
        if self.builds or self._built_seen:
            return False
        self._built_seen = self.is_built()
        return not self._built_seen

    def is_built(self) -> bool:
        """True when the side tables hold a complete build of this view."""
        state = self._state()
        return state.get("source") == self.source and Mark.decode(state.get("high_water", "")) is not None

    def start_background_build(self) -> threading.Thread | None:
        """Build (or catch up) in a daemon thread, so that the first C-FIND after start-up
        does not wait for a full read of a large view. Lookups meanwhile return None."""
        if self.is_built():
            LOG.info("uid side table: already built, incremental syncs from now on")
            return None
        self.building.set()

        def run() -> None:
            try:
                self.sync(force=True)
            except Exception as exc:  # logged; lookups build lazily later
                LOG.warning("uid side table: background build failed: %s", exc)
            finally:
                self.building.clear()

        thread = threading.Thread(target=run, name="uid-side-table", daemon=True)
        thread.start()
        return thread

    def rebuild(self) -> int:
        """Drop everything and read the whole view again."""
        with self._lock:
            self.stamp_policy(detect=True)
            count = self._sync(None)
            self._last_sync = time.monotonic()
            return count

    def _sync(self, mark: Mark | None) -> int:
        """Read the rows changed after ``mark`` (all rows when None) into the side tables."""
        policy = self.stamp_policy()
        c = self.view_table.c
        stmt = select(c.ExamineID, c.StudyInstanceUID, c.RowTimestamp, c.PatientID, c.PatientName)
        if mark is not None:
            stmt = stmt.where(policy.since(c.RowTimestamp, mark))
        since = mark
        high = mark.value if mark is not None and mark.kind is policy.kind else None
        count = 0
        started = time.monotonic()
        with self.view_engine.connect() as vconn, self.engine.begin() as conn:
            if since is None:
                conn.execute(delete(UID_TABLE))
                conn.execute(delete(NAME_TABLE))
            guard = policy.guard_value(vconn)
            result = vconn.execution_options(stream_results=True, yield_per=BATCH).execute(stmt)
            for batch in result.partitions(BATCH):
                ids = [r[0] for r in batch if r[0] is not None]
                if since is not None:
                    conn.execute(delete(UID_TABLE).where(UID_TABLE.c.examine_id.in_(ids)))
                    conn.execute(delete(NAME_TABLE).where(NAME_TABLE.c.examine_id.in_(ids)))
                names = {}
                for r in batch:
                    if r[0] is not None and r[3] and r[4]:
                        caret = pinyin_name(str(r[4])).upper()
                        names[r[0]] = {
                            "examine_id": r[0],
                            "patient_id": r[3],
                            "caret": caret,
                            "plain": caret.replace("^", "").replace(" ", ""),
                        }
                if names:
                    conn.execute(insert(NAME_TABLE).prefix_with("OR REPLACE"), list(names.values()))
                entries = {
                    (uid, r[0]): None for r in batch if r[0] is not None for uid in split_uid_cell(r[1])
                }
                if entries:
                    conn.execute(
                        insert(UID_TABLE).prefix_with("OR REPLACE"),
                        [{"uid": u, "examine_id": e} for u, e in entries],
                    )
                for r in batch:
                    if policy.settled(r[2], guard):
                        high = later(high, r[2])
                count += len(batch)
            values = {"source": self.source}
            if high is not None:
                values["high_water"] = Mark(policy.kind, high).encode()
            self._set_state(conn, **values)
        LOG.info(
            "uid side table: %s sync read %d view rows in %.2f s",
            "full" if since is None else "incremental",
            count,
            time.monotonic() - started,
        )
        return count

    # --- lookup -----------------------------------------------------------------------------

    def lookup(self, uids: Sequence[str]) -> dict[str, list[str]] | None:
        """ExamineIDs per UID (only UIDs that are in the side table); None while building."""
        if self._waiting():
            return None
        self.sync()
        found = self._lookup(uids)
        # A miss may be a study newer than our last sync: sync once, then answer.
        if len(found) < len(set(uids)) and self.sync(force=True):
            found = self._lookup(uids)
        return found

    def patients_for_pinyin(self, pattern: str) -> list[str] | None:
        """Sorted PatientIDs whose name's pinyin matches an alphabetic PN group (``Wang^X*``,
        ``WANG*``, ``wangxiaodong``), case-insensitively; None while building. A hint:
        callers re-check."""
        if self._waiting():
            return None
        self.sync()
        text = pattern.upper().rstrip("^").replace(" ", "")
        column = NAME_TABLE.c.caret if "^" in text else NAME_TABLE.c.plain
        preds: list[ColumnElement[bool]] = []
        if "*" in text or "?" in text:
            # An index range for the literal prefix, then LIKE for the rest (SQLite's LIKE
            # alone would not use a BINARY index).
            prefix = text[: min(i for i in (text.find("*"), text.find("?"), len(text)) if i >= 0)]
            if prefix:
                preds += [column >= prefix, column < prefix[:-1] + chr(ord(prefix[-1]) + 1)]
            preds.append(column.like(dicom_wildcard_to_like(text, "sqlite"), escape=ESCAPE))
        else:
            preds.append(column == text)
        stmt = select(NAME_TABLE.c.patient_id).where(*preds).distinct().order_by(NAME_TABLE.c.patient_id)
        with self.engine.connect() as conn:
            found = [str(r[0]) for r in conn.execute(stmt)]
        if not found and self.sync(force=True):  # maybe registered since the last sync
            with self.engine.connect() as conn:
                found = [str(r[0]) for r in conn.execute(stmt)]
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
