"""Build an exam view for tests and the demo: a real table with the seed's columns, created
*without* quoted identifiers (as hospitals do), filled with rows."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import MetaData, insert
from sqlalchemy.engine import Engine

from dicomproxy.view.model import exam_view_table


def create_view_table(engine: Engine, name: str = "V_IMAGE_CLOUD") -> None:
    """(Re)create the view as a plain table (tests need to write it; production only reads)."""
    table = exam_view_table(name, MetaData())
    table.drop(engine, checkfirst=True)
    table.create(engine)


def insert_rows(engine: Engine, rows: Iterable[Mapping[str, Any]], name: str = "V_IMAGE_CLOUD") -> None:
    table = exam_view_table(name, MetaData())
    batch = [dict(r) for r in rows]
    if not batch:
        return
    with engine.begin() as conn:
        conn.execute(insert(table), batch)
