"""Which nodes are alive on a shared journal: a row per node in ``bandwidth_nodes``, renewed by a
heartbeat; the bandwidth timetable divides each rule's rate by their number
(:class:`~dicomproxy.relay.bandwidth.Bandwidth`).

A node is alive while its row is younger than :data:`ALIVE_FOR` (a node that dies stops renewing
it; one that stops cleanly deletes it, so the others take up its share at their next beat). The
table is the journal's (PostgreSQL when several nodes share one, SQLite for one node): no
coordinator of our own. Node clocks are assumed NTP-synchronised, as for push's leases.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
from collections.abc import Callable

from sqlalchemy import Column, DateTime, MetaData, String, Table, delete, func, insert, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

LOG = logging.getLogger("dicomproxy.relay")

#: Seconds between two beats.
BEAT_EVERY = 2.0
#: A node whose row is older than this is taken for dead.
ALIVE_FOR = 3 * BEAT_EVERY

LIVENESS_METADATA = MetaData()

bandwidth_nodes = Table(
    "bandwidth_nodes",
    LIVENESS_METADATA,
    Column("node", String(255), primary_key=True),
    #: UTC time of the node's last beat.
    Column("seen", DateTime, nullable=False),
)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class NodeRegistry:
    """This node's row in ``bandwidth_nodes`` and the count of the rows alive."""

    def __init__(self, engine: Engine, node: str, now: Callable[[], dt.datetime] = utcnow) -> None:
        self.engine = engine
        self.node = node[:255]
        self._now = now
        LIVENESS_METADATA.create_all(engine)

    def beat(self) -> int:
        """Renew this node's row; the nodes alive (this one included)."""
        now = self._now()
        with self.engine.begin() as conn:
            done = conn.execute(
                update(bandwidth_nodes).where(bandwidth_nodes.c.node == self.node).values(seen=now)
            ).rowcount
        if not done:
            try:
                with self.engine.begin() as conn:
                    conn.execute(insert(bandwidth_nodes).values(node=self.node, seen=now))
            except IntegrityError:  # inserted meanwhile (a restart of this node): renewed next beat
                pass
        return self.alive(now)

    def alive(self, now: dt.datetime | None = None) -> int:
        """Nodes whose row is younger than :data:`ALIVE_FOR` (at least 1: this one)."""
        since = (now or self._now()) - dt.timedelta(seconds=ALIVE_FOR)
        with self.engine.connect() as conn:
            count = conn.execute(
                select(func.count()).select_from(bandwidth_nodes).where(bandwidth_nodes.c.seen >= since)
            ).scalar_one()
        return max(1, int(count))

    def leave(self) -> None:
        """Delete this node's row (clean stop)."""
        with self.engine.begin() as conn:
            conn.execute(delete(bandwidth_nodes).where(bandwidth_nodes.c.node == self.node))


class Heartbeat:
    """A thread that beats every :data:`BEAT_EVERY` s and tells ``on_count`` the nodes alive."""

    def __init__(self, registry: NodeRegistry, on_count: Callable[[int], None]) -> None:
        self.registry = registry
        self.on_count = on_count
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._count = 0
        self._failing = False

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="bandwidth-heartbeat", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            self.beat()
            if self._stop.wait(BEAT_EVERY):
                return

    def beat(self) -> None:
        try:
            count = self.registry.beat()
        except SQLAlchemyError as exc:  # the journal is down: keep the last count, one line
            if not self._failing:
                LOG.warning("bandwidth: node heartbeat failed: %s", str(exc).splitlines()[0][:200])
            self._failing = True
            return
        self._failing = False
        if count != self._count:
            LOG.info("bandwidth: %d node(s) alive share the timetable's rates", count)
            self._count = count
        self.on_count(count)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
        with contextlib.suppress(SQLAlchemyError):  # the journal is down: the row ages out
            self.registry.leave()
