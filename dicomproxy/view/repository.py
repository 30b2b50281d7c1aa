"""Read access to the exam view: one engine per process, visibility, UID resolution, streaming.

Visibility is the security boundary (exam-view.md "Rules"): a row is served only if

- ``HospitalID`` equals ``[hospital].id`` (checked in SQL *and* again in Python, because
  SQL Server's Chinese_PRC_CI_AS collation compares case-insensitively),
- ``Privacy`` ≤ ``[view].max_privacy``; a NULL Privacy counts as 0 (normal) — the seed
  makes the column optional and a RIS that never sets it has only normal exams — and one that
  is no integer hides the row,
- its StudyInstanceUID cell holds at least one valid UID (checked in Python; SQL only
  says ``IS NOT NULL`` because Oracle treats ``''`` as NULL and ``col <> ''`` would hide
  every row there).

The SQL half is :meth:`ExamView.visible`; the Python half is :func:`row_visible`, the one place
it is written (``check-view`` counts the visible rows with it too).

Everything the handlers read goes through :meth:`ExamView.visible_rows`-style filters;
nothing outside the visible set can be found *or* resolved for retrieval.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, create_engine, event, or_, select
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError, SQLAlchemyError

from dicomproxy.config import Config, ViewConfig
from dicomproxy.errors import ViewUnavailable
from dicomproxy.pacs.routing import StudyRef
from dicomproxy.view.model import exam_view_table
from dicomproxy.view.sql import ESCAPE, batches, escape_like
from dicomproxy.view.stamp import StampPolicy, policy_for
from dicomproxy.view.uidindex import UidIndex
from dicomproxy.view.uids import dedupe, is_valid_uid, split_uid_cell

LOG = logging.getLogger("dicomproxy.view")

Row = Mapping[str, Any]

#: Rows fetched per round trip when streaming (server-side cursors where the driver has them).
FETCH_BATCH = 500


#: A pooled connection idle longer than this (seconds) is pinged before use (:func:`ping_when_idle`).
IDLE_PING = 30.0


def make_engine(view: ViewConfig) -> Engine:
    """The process's one engine for the view: pooled, pinged when idle (:func:`ping_when_idle`),
    read-only use."""
    url = make_url(view.url)
    kwargs: dict[str, Any] = {}
    backend = url.get_backend_name()
    if not (backend == "sqlite" and url.database in (None, "", ":memory:")):
        kwargs["pool_size"] = view.pool_size
    connect_args: dict[str, Any] = {}
    timeout_ms = int(view.query_timeout * 1000)
    if backend == "postgresql" and url.get_driver_name() == "psycopg2" and timeout_ms:
        connect_args["options"] = f"-c statement_timeout={timeout_ms}"
    elif backend == "sqlite":
        connect_args["check_same_thread"] = False
    elif backend == "mysql" and timeout_ms:
        connect_args["read_timeout"] = max(1, int(view.query_timeout))
    engine = create_engine(url, connect_args=connect_args, **kwargs)
    ping_when_idle(engine, IDLE_PING)
    return engine


def ping_when_idle(engine: Engine, idle: float) -> None:
    """Ping a pooled connection at checkout only when it was idle more than ``idle`` seconds.

    SQLAlchemy's ``pool_pre_ping`` pings at every checkout: one more round trip to the RIS per
    C-FIND (issue 29: ~1 ms of a 2 ms keyed query on PostgreSQL, more while the machine is busy).
    What the ping is for — connections the server or a firewall dropped while they sat in the
    pool — happens to idle ones; this is SQLAlchemy's documented custom pessimistic check (a
    ``checkout`` listener raising :class:`~sqlalchemy.exc.DisconnectionError`: the pool then
    connects anew). A connection that died while in use is the optimistic case:
    :meth:`ExamView.stream` retries once."""

    @event.listens_for(engine, "checkin")
    def _checkin(dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        since = record.info.get("idle_since")
        if since is None or time.monotonic() - since <= idle:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            raise DisconnectionError(f"idle connection lost: {first_line(exc)}") from exc


def first_line(exc: BaseException) -> str:
    """A one-line reason for logs and Error Comments (no SQL, no parameters)."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def row_visible(config: Config, row: Row) -> bool:
    """The Python half of the visibility rule (module docstring), the one place it is written:
    the rows served (:meth:`ExamView.is_visible`) and those ``check-view`` counts as visible.
    Exact hospital id; Privacy NULL or ≤ ``[view].max_privacy`` (a value that is no integer
    hides the row: check-view's "Privacy" rule names it); at least one valid UID."""
    privacy = row.get("Privacy")
    return (
        row.get("HospitalID") == config.hospital.id
        and (privacy is None or _privacy(privacy) <= config.view.max_privacy)
        and bool(split_uid_cell(row.get("StudyInstanceUID")))
    )


def _privacy(value: Any) -> int:
    """A Privacy value as a number; one that is none: above every ``max_privacy`` (hidden)."""
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        return 1 << 30


def _source_id(config: Config) -> str:
    """Which view the UID side table was built from (its mark is only valid for that view): the
    server, the database, the login (an unqualified view name resolves in the login's default
    schema on SQL Server and Oracle) and a digest of the URL's query (``odbc_connect``,
    ``service_name``: where the server and database are for some drivers; may hold a password)."""
    url = make_url(config.view.url)
    where = f"{url.host or ''}:{url.port or ''}/{url.database or ''}"
    login = f"{url.username}@" if url.username else ""
    query = sorted((k, v if isinstance(v, str) else "\0".join(v)) for k, v in url.query.items())
    digest = f"?{hashlib.sha256(repr(query).encode()).hexdigest()[:16]}" if query else ""
    return f"{url.get_backend_name()}://{login}{where}{digest}#{config.view.name}"


@dataclass(frozen=True)
class ExamStudy:
    """One visible study of a view row, as ``dicomproxy reconcile`` lists it (no patient data)."""

    ref: StudyRef
    examine_id: str
    accession: str
    perform_time: Any


class ExamView:
    """The exam view (影像云视图), read-only. Build once per process; thread-safe."""

    def __init__(
        self, config: Config, engine: Engine | None = None, *, builds_side_tables: bool = True
    ) -> None:
        """``builds_side_tables``: False in the query process, which uses the serving process's
        side tables (:class:`~dicomproxy.view.uidindex.UidIndex` ``builds``)."""
        self.config = config
        self.table = exam_view_table(config.view.name, unicode_params=config.view.unicode_params)
        self._owns_engine = engine is None
        self.engine = engine if engine is not None else make_engine(config.view)
        self.dialect = self.engine.dialect.name
        self._overlap = dt.timedelta(seconds=config.view.stamp_overlap)
        self._visible: tuple[tuple[str, int], ColumnElement[bool]] | None = None
        self.uid_index: UidIndex | None
        try:
            self.uid_index = UidIndex(
                config.data_path / "uid_index.sqlite",
                self.engine,
                self.table,
                _source_id(config),
                overlap=self._overlap,
                builds=builds_side_tables,
            )
        except (OSError, SQLAlchemyError) as exc:
            LOG.warning("uid side table unavailable, StudyInstanceUID lookups will scan: %s", exc)
            self.uid_index = None

    def warm_up(self) -> None:
        """Start building the side tables in the background (``serve`` calls this at start-up)."""
        if self.uid_index is not None:
            self.uid_index.start_background_build()

    def close(self) -> None:
        if self.uid_index is not None:
            self.uid_index.close()
        if self._owns_engine:
            self.engine.dispose()

    # --- visibility ---------------------------------------------------------------------------

    def visible(self) -> ColumnElement[bool]:
        """The SQL half of the visibility rule (see the module docstring); built once per
        (hospital, max_privacy) — a clause is immutable and every query used to rebuild it."""
        key = (self.config.hospital.id, self.config.view.max_privacy)
        cached = self._visible
        if cached is not None and cached[0] == key:
            return cached[1]
        c = self.table.c
        clause = and_(
            c.HospitalID == key[0],
            or_(c.Privacy.is_(None), c.Privacy <= key[1]),
            c.StudyInstanceUID.is_not(None),
        )
        self._visible = (key, clause)
        return clause

    def is_visible(self, row: Row) -> bool:
        """The Python half: :func:`row_visible`."""
        return row_visible(self.config, row)

    # --- reading -------------------------------------------------------------------------------

    def stream(self, stmt: Select[Any], *, narrow: bool = False) -> Iterator[dict[str, Any]]:
        """Rows of ``stmt`` as dicts keyed by seed column names, fetched in batches (a server-side
        cursor where the driver has one). ``narrow``: the caller knows the rows are few (an exact
        key, ExamineIDs from the side table): fetched at once, without the cursor's extra round
        trips (PostgreSQL: DECLARE, FETCH until empty, CLOSE).

        A connection found dead at the first statement (the database restarted while it was in
        the pool) is retried once on a new one. Database errors become :class:`ViewUnavailable`
        with a one-line reason.
        """
        keys = [str(col.key) for col in stmt.selected_columns]
        options: dict[str, Any] = {} if narrow else {"stream_results": True, "yield_per": FETCH_BATCH}
        for attempt in (1, 2):
            started = False
            try:
                with self.engine.connect() as conn:
                    result = conn.execution_options(**options).execute(stmt)
                    for raw in result:
                        started = True
                        yield dict(zip(keys, raw, strict=True))
                return
            except DBAPIError as exc:
                if attempt == 1 and not started and exc.connection_invalidated:
                    LOG.warning("exam view connection lost, retrying once: %s", first_line(exc))
                    continue
                raise ViewUnavailable(f"exam view unavailable: {first_line(exc)}") from exc
            except SQLAlchemyError as exc:
                raise ViewUnavailable(f"exam view unavailable: {first_line(exc)}") from exc

    def examine_ids_for_uids(self, uids: Sequence[str]) -> list[list[str]] | None:
        """ExamineIDs of rows that may hold these UIDs, grouped into ≤1000-id batches
        (all ids of one UID in the same batch); None when there is no side table (yet)."""
        if self.uid_index is None:
            return None
        try:
            found = self.uid_index.lookup(list(uids))
        except SQLAlchemyError as exc:
            raise ViewUnavailable(f"exam view unavailable: {first_line(exc)}") from exc
        if found is None:  # side table still being built: scan this time
            return None
        groups: list[list[str]] = []
        current: list[str] = []
        for uid in uids:
            ids = [i for i in found.get(uid, []) if i not in current]
            if current and len(current) + len(ids) > 1000:
                groups.append(current)
                current = []
            current.extend(ids)
        if current:
            groups.append(current)
        return groups

    def patients_for_pinyin(self, pattern: str) -> list[str] | None:
        """PatientIDs whose name's pinyin may match (side table); None without a side table."""
        if self.uid_index is None:
            return None
        try:
            return self.uid_index.patients_for_pinyin(pattern)
        except SQLAlchemyError as exc:
            raise ViewUnavailable(f"exam view unavailable: {first_line(exc)}") from exc

    def uid_predicates(self, uids: Sequence[str]) -> list[ColumnElement[bool]] | None:
        """One WHERE fragment per statement that finds rows holding any of ``uids``.

        With the side table: ``ExamineID IN (...)`` (index seek on the view's unique key).
        Without: ``StudyInstanceUID = :u OR StudyInstanceUID LIKE '%u%'`` (a scan; fallback
        only). Callers re-check the UID in Python. Returns [] when nothing can match.
        """
        c = self.table.c
        groups = self.examine_ids_for_uids(uids)
        if groups is not None:
            return [c.ExamineID.in_(group) for group in groups]
        preds: list[ColumnElement[bool]] = []
        for chunk in batches(list(uids), 200):
            preds.append(
                or_(
                    *(c.StudyInstanceUID == u for u in chunk),
                    *(
                        c.StudyInstanceUID.like(f"%{escape_like(u, self.dialect)}%", escape=ESCAPE)
                        for u in chunk
                    ),
                )
            )
        return preds

    def stamp_policy(self) -> StampPolicy:
        """RowTimestamp's kind and late-commit guard, as the UID side table reads them."""
        try:
            if self.uid_index is not None:
                return self.uid_index.stamp_policy()
            return policy_for(self.engine, self.table.c.RowTimestamp, self._overlap)
        except SQLAlchemyError as exc:
            raise ViewUnavailable(f"exam view unavailable: {first_line(exc)}") from exc

    def sample_study(self) -> tuple[str, str] | None:
        """(ExamineID, Study Instance UID) of one visible row, or None (``check-config``)."""
        c = self.table.c
        stmt = (
            select(c.ExamineID, c.StudyInstanceUID, c.HospitalID, c.Privacy)
            .where(self.visible())
            .order_by(c.ExamineID)
            .limit(100)
        )
        keys = [str(col.key) for col in stmt.selected_columns]
        try:  # ≤ 100 rows, read whole: no server-side cursor left half-read
            with self.engine.connect() as conn:
                rows = [dict(zip(keys, raw, strict=True)) for raw in conn.execute(stmt)]
        except SQLAlchemyError as exc:
            raise ViewUnavailable(f"exam view unavailable: {first_line(exc)}") from exc
        for row in rows:
            uids = split_uid_cell(row["StudyInstanceUID"])
            if self.is_visible(row) and uids:
                return str(row["ExamineID"]), uids[0]
        return None

    def study_rows(self, study_uids: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
        """Every column of the visible rows holding each of ``study_uids`` (in ExamineID order,
        the order C-FIND merges them in): the order/report files and the patient and study
        attributes their DICOM objects carry. Unknown or invisible UIDs are left out."""
        wanted = dedupe(u.strip() for u in study_uids if is_valid_uid(u.strip()))
        found: dict[str, list[dict[str, Any]]] = {}
        wheres = (self.uid_predicates(wanted) or []) if wanted else []
        for where in wheres:
            stmt = select(self.table).where(self.visible(), where).order_by(self.table.c.ExamineID)
            for row in self.stream(stmt):
                if self.is_visible(row):
                    for uid in split_uid_cell(row["StudyInstanceUID"]):
                        if uid in wanted:
                            found.setdefault(uid, []).append(row)
        return found

    def studies_performed(self, since: dt.datetime, until: dt.datetime) -> Iterator[ExamStudy]:
        """Each Study Instance UID of the visible rows whose ``PerformTime`` is in
        ``[since, until)`` (``dicomproxy reconcile``), once, from its first row in (PerformTime,
        ExamineID) order; rows without a PerformTime are not in any range. The visibility rule in
        SQL and again in Python (module docstring): a hidden row is never read into the report."""
        c = self.table.c
        cols = (
            c.ExamineID,
            c.StudyInstanceUID,
            c.HospitalID,
            c.Privacy,
            c.AccessionNumber,
            c.Sysid,
            c.ExamineType,
            c.PerformTime,
        )
        stmt = (
            select(*cols)
            .where(self.visible(), c.PerformTime >= since, c.PerformTime < until)
            .order_by(c.PerformTime, c.ExamineID)
        )
        seen: set[str] = set()
        for row in self.stream(stmt):
            if not self.is_visible(row):
                continue
            for uid in split_uid_cell(row["StudyInstanceUID"]):
                if uid not in seen:
                    seen.add(uid)
                    yield ExamStudy(
                        StudyRef(uid, _text(row["Sysid"]), _text(row["ExamineType"])),
                        str(row["ExamineID"] or ""),
                        str(row["AccessionNumber"] or ""),
                        row["PerformTime"],
                    )

    # --- the relay's entry point ----------------------------------------------------------------

    def resolve_study_uids(
        self,
        *,
        study_uids: Sequence[str] = (),
        accession: str | None = None,
        patient_id: str | None = None,
    ) -> list[str]:
        """Visible Study Instance UIDs matching every given key (exact match each).

        Invalid UIDs in ``study_uids`` are ignored; with ``study_uids`` the answer keeps
        their order, otherwise the view's (PerformTime, ExamineID) order. No key → [].
        Raises :class:`ViewUnavailable` when the database fails.
        """
        return [
            ref.uid
            for ref in self.resolve_studies(study_uids=study_uids, accession=accession, patient_id=patient_id)
        ]

    def resolve_studies(
        self,
        *,
        study_uids: Sequence[str] = (),
        accession: str | None = None,
        patient_id: str | None = None,
    ) -> list[StudyRef]:
        """Like :meth:`resolve_study_uids`, with the ``Sysid`` / ``ExamineType`` of the row each
        UID came from (the first visible row in (PerformTime, ExamineID) order), for
        :func:`dicomproxy.pacs.routing.route`."""
        wanted = dedupe(u.strip() for u in study_uids if is_valid_uid(u.strip()))
        if study_uids and not wanted:
            return []
        if not wanted and accession is None and patient_id is None:
            return []
        c = self.table.c
        base = [self.visible()]
        if accession is not None:
            base.append(c.AccessionNumber == accession)
        if patient_id is not None:
            base.append(c.PatientID == patient_id)
        wheres: list[ColumnElement[bool]] = [and_(*base)]
        if wanted:
            preds = self.uid_predicates(wanted)
            if not preds:
                return []
            wheres = [and_(*base, p) for p in preds]
        cols = (
            c.ExamineID,
            c.StudyInstanceUID,
            c.HospitalID,
            c.Privacy,
            c.AccessionNumber,
            c.PatientID,
            c.Sysid,
            c.ExamineType,
        )
        found: dict[str, StudyRef] = {}
        for where in wheres:
            stmt = select(*cols).where(where).order_by(c.PerformTime, c.ExamineID)
            for row in self.stream(stmt):
                if not self.is_visible(row):
                    continue
                if accession is not None and row["AccessionNumber"] != accession:
                    continue
                if patient_id is not None and row["PatientID"] != patient_id:
                    continue
                for uid in split_uid_cell(row["StudyInstanceUID"]):
                    found.setdefault(uid, StudyRef(uid, _text(row["Sysid"]), _text(row["ExamineType"])))
        if wanted:
            return [found[u] for u in wanted if u in found]
        return list(found.values())


def _text(value: Any) -> str:
    return str(value or "").strip().upper()
