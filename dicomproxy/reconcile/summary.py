"""Each ``dicomproxy reconcile`` run's counts, in the journal database (``reconcile_runs``).

The run is a command of its own; ``serve`` (another process, maybe another node sharing the
journal) shows the newest run per destination on the status page and as
``dicomproxy_reconcile_missing_instances{destination}`` in ``/metrics``, read from this table.
Counts only: no study, accession or patient is stored. The table is created by ``create_all``
(by the run, and by the reader when missing), so existing journals get it without a migration.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from typing import Any

from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, func, insert, select
from sqlalchemy.engine import Engine

RECONCILE_METADATA = MetaData()

reconcile_runs = Table(
    "reconcile_runs",
    RECONCILE_METADATA,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("destination", String(16), nullable=False, index=True),
    Column("started", DateTime, nullable=False),  # naive UTC, as the journal stores times
    Column("ended", DateTime, nullable=False),
    Column("since", DateTime, nullable=False),  # the PerformTime range reported on (local, as the view)
    Column("until", DateTime, nullable=False),
    Column("studies", Integer, nullable=False, default=0),
    Column("complete", Integer, nullable=False, default=0),
    Column("missing_studies", Integer, nullable=False, default=0),
    Column("missing_instances", Integer, nullable=False, default=0),
    Column("extra_studies", Integer, nullable=False, default=0),
    Column("not_in_pacs", Integer, nullable=False, default=0),
    Column("uncommitted", Integer, nullable=False, default=0),
    Column("unknown", Integer, nullable=False, default=0),
    #: "destination" when it answered C-FIND, else "journal" (what "at the destination" means).
    Column("basis", String(12), nullable=False, default=""),
    #: Instances queued for delivery by ``--fix`` (0 without it).
    Column("queued", Integer, nullable=False, default=0),
)


@dataclass(frozen=True)
class RunSummary:
    """One destination's counts in one run."""

    destination: str
    started: dt.datetime
    ended: dt.datetime
    since: dt.datetime
    until: dt.datetime
    studies: int = 0
    complete: int = 0
    missing_studies: int = 0
    missing_instances: int = 0
    extra_studies: int = 0
    not_in_pacs: int = 0
    uncommitted: int = 0
    unknown: int = 0
    basis: str = ""
    queued: int = 0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, times ISO 8601: ``started``/``ended`` in UTC ("Z"); ``since``/``until``
        local time without a zone, as the view's PerformTime they bound."""
        d = asdict(self)
        d["started"], d["ended"] = f"{self.started.isoformat()}Z", f"{self.ended.isoformat()}Z"
        d["since"], d["until"] = self.since.isoformat(), self.until.isoformat()
        return d


class RunSummaries:
    """Writes and reads ``reconcile_runs`` on the journal's engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        RECONCILE_METADATA.create_all(engine)

    def record(self, summaries: Iterable[RunSummary]) -> None:
        rows = [asdict(s) for s in summaries]
        if rows:
            with self.engine.begin() as conn:
                conn.execute(insert(reconcile_runs), rows)

    def latest(self) -> list[RunSummary]:
        """The newest run's row of each destination, by destination."""
        newest = select(func.max(reconcile_runs.c.id)).group_by(reconcile_runs.c.destination)
        q = (
            select(reconcile_runs)
            .where(reconcile_runs.c.id.in_(newest))
            .order_by(reconcile_runs.c.destination)
        )
        names = [f.name for f in fields(RunSummary)]
        with self.engine.connect() as conn:
            return [RunSummary(**{n: r[n] for n in names}) for r in conn.execute(q).mappings()]
