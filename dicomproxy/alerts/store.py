"""``alert_incidents`` in the journal database: which node tells a person, when several share it.

An open incident is a row whose ``key`` is the incident's key (unique): the node whose INSERT wins
sends the start message, every other node's INSERT fails on the constraint and sends nothing. The
end is a guarded UPDATE (``WHERE key = :key AND ended IS NULL``) that also renames the key to
``key#id``, freeing it for the next episode: the one node whose UPDATE changed the row sends the
end. The database decides (PostgreSQL, MariaDB or SQLite); no coordinator of ours.

When the journal does not answer (the journal's own readiness incident), :class:`IncidentStore`
decides alone from memory — a duplicate between nodes is better than silence — and writes the
incidents it opened meanwhile, silently, once the journal is back.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging

from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, cast, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from dicomproxy.alerts.message import Incident

LOG = logging.getLogger("dicomproxy.alerts")

ALERT_METADATA = MetaData()
alert_incidents = Table(
    "alert_incidents",
    ALERT_METADATA,
    Column("id", Integer, primary_key=True, autoincrement=True),
    #: The incident's key while it is open; ``key#id`` once it ended.
    Column("key", String(200), nullable=False, unique=True),
    Column("kind", String(32), nullable=False),
    Column("title", String(300), nullable=False, default=""),
    Column("node", String(100), nullable=False, default=""),
    Column("started", DateTime, nullable=False),
    Column("ended", DateTime),
    Column("end_node", String(100), nullable=False, default=""),
)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class IncidentStore:
    """Open and close incidents in ``alert_incidents``; True = this node tells."""

    def __init__(self, engine: Engine | None, node: str) -> None:
        self.engine = engine
        self.node = node
        #: Incidents opened while the journal did not answer (key → incident).
        self._alone: dict[str, Incident] = {}
        self._down = False
        self._created = False
        if engine is not None:
            try:
                self._create()
            except SQLAlchemyError as exc:
                self._journal_down(exc)

    def _create(self) -> None:
        if not self._created and self.engine is not None:
            ALERT_METADATA.create_all(self.engine)
            self._created = True

    def open_keys(self) -> set[str]:
        """Keys of the incidents open now (this node's memory when the journal does not answer)."""
        if self.engine is None:
            return set(self._alone)
        try:
            self._create()  # a journal that did not answer at start
            with self.engine.connect() as conn:
                keys = {
                    str(k)
                    for (k,) in conn.execute(
                        select(alert_incidents.c.key).where(alert_incidents.c.ended.is_(None))
                    )
                }
        except SQLAlchemyError as exc:
            self._journal_down(exc)
            return set(self._alone)
        self._journal_back(keys)
        return keys | set(self._alone)

    def open(self, incident: Incident) -> bool:
        """Record ``incident`` as open; True when this node's INSERT won (it sends the start)."""
        if self.engine is None or self._down:
            return self._open_alone(incident)
        try:
            self._insert(incident)
        except IntegrityError:
            return False  # open already: another node told, or is telling
        except SQLAlchemyError as exc:
            self._journal_down(exc)
            return self._open_alone(incident)
        return True

    def close(self, key: str) -> bool:
        """End the open incident ``key``; True when this node's UPDATE ended it (it sends the end)."""
        alone = self._alone.pop(key, None)
        if self.engine is None or self._down:
            return alone is not None
        t = alert_incidents
        try:
            with self.engine.begin() as conn:
                ended = conn.execute(
                    update(t)
                    .where(t.c.key == key, t.c.ended.is_(None))
                    .values(ended=_now(), end_node=self.node[:100], key=t.c.key + "#" + cast(t.c.id, String))
                ).rowcount
        except SQLAlchemyError as exc:
            self._journal_down(exc)
            return alone is not None
        return bool(ended) or alone is not None

    def _insert(self, incident: Incident) -> None:
        assert self.engine is not None
        with self.engine.begin() as conn:
            conn.execute(
                alert_incidents.insert().values(
                    key=incident.key,
                    kind=incident.kind,
                    title=incident.title[:300],
                    node=self.node[:100],
                    started=_now(),
                )
            )

    def _open_alone(self, incident: Incident) -> bool:
        if incident.key in self._alone:
            return False
        self._alone[incident.key] = incident
        return True

    def _journal_down(self, exc: Exception) -> None:
        if not self._down:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            LOG.warning("alerts: the journal does not answer (%s); this node decides alone", first[:200])
        self._down = True

    def _journal_back(self, open_keys: set[str]) -> None:
        if not self._down:
            return
        self._down = False
        LOG.info("alerts: the journal answers again")
        for key, incident in list(self._alone.items()):
            if key not in open_keys:
                # an error: opened by another node meanwhile, or down again; nothing to tell either way
                with contextlib.suppress(SQLAlchemyError):
                    self._insert(incident)
                open_keys.add(key)
            del self._alone[key]
