"""The push queue's named values (``push_state``): the watermark, pauses and destination holds.

A part of :class:`~dicomproxy.push.queue.PushQueue` (which callers use); kept apart because it
reads and writes only ``push_state``, never an item."""

from __future__ import annotations

from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from dicomproxy.push.schema import push_state


class PushStates:
    """Name → text in ``push_state`` (mixed into :class:`~dicomproxy.push.queue.PushQueue`)."""

    engine: Engine

    def get_state(self, name: str) -> str | None:
        with self.engine.connect() as conn:
            return conn.execute(select(push_state.c.value).where(push_state.c.name == name)).scalar()

    def states(self, prefix: str = "") -> dict[str, str]:
        q = select(push_state.c.name, push_state.c.value)
        if prefix:
            q = q.where(push_state.c.name.like(prefix + "%"))
        with self.engine.connect() as conn:
            return {str(n): str(v) for n, v in conn.execute(q)}

    def set_state(self, name: str, value: str, conn: Connection | None = None) -> None:
        if conn is None:
            with self.engine.begin() as own:
                self.set_state(name, value, own)
            return
        res = conn.execute(update(push_state).where(push_state.c.name == name).values(value=value))
        if not res.rowcount:
            conn.execute(insert(push_state).values(name=name, value=value))

    def delete_state(self, name: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(push_state).where(push_state.c.name == name))

    def ensure_state(self, name: str, value: str) -> None:
        """Create ``name`` with ``value`` unless it exists (two nodes may race: one wins)."""
        try:
            with self.engine.begin() as conn:
                exists = conn.execute(select(push_state.c.name).where(push_state.c.name == name)).first()
                if exists is None:
                    conn.execute(insert(push_state).values(name=name, value=value))
        except IntegrityError:
            pass

    def lock_state(self, conn: Connection, name: str) -> str | None:
        """The value of ``name``, row-locked for this transaction; None when another node holds
        the lock (``FOR UPDATE SKIP LOCKED``) or the row does not exist."""
        q = select(push_state.c.value).where(push_state.c.name == name).with_for_update(skip_locked=True)
        value = conn.execute(q).scalar()
        return None if value is None else str(value)
