"""The view database goes down and comes back (issue 6): C-FIND fails with 0xC001 while it is down
and succeeds again afterwards, without restarting the proxy.

PostgreSQL, a dedicated database per test: "down" = connections refused (ALLOW_CONNECTIONS false)
and every open connection terminated (pg_terminate_backend), which is what a restart or a network
cut looks like to the pool; "back" = connections allowed again.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url

from dicomproxy.config import Config
from dicomproxy.server import Server
from testkit import wait_until
from testkit.samples import demo_specs, exam_row
from testkit.viewdb import create_view_table, insert_rows
from tests.conftest import PG_URL, ConfigFactory, need_server
from tests.view_data import FindClient

CT = demo_specs()[0]


@pytest.fixture
def pg_database() -> Iterator[tuple[Engine, str, str]]:
    """(admin engine, database name, URL of the new database); dropped afterwards."""
    need_server("postgresql", PG_URL)
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    name = f"dp_down_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    try:
        yield admin, name, url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _view_with_ct(url: str) -> None:
    """The exam view in the test's database, holding the demo CT study's row."""
    engine = create_engine(url)
    create_view_table(engine)
    insert_rows(engine, [exam_row(CT)])
    engine.dispose()


def _down(admin: Engine, name: str) -> None:
    with admin.connect() as conn:
        conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
        conn.execute(
            text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"), {"n": name}
        )


def _up(admin: Engine, name: str) -> None:
    with admin.connect() as conn:
        conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))


def test_view_database_down_and_back(
    pg_database: tuple[Engine, str, str],
    make_config: ConfigFactory,
    run_proxy: Callable[[Config], Server],
) -> None:
    admin, name, url = pg_database
    _view_with_ct(url)
    port = run_proxy(make_config(view={"url": url, "query_timeout": 5.0})).port
    query = {"PatientID": CT.patient.patient_id, "StudyInstanceUID": ""}
    with FindClient(port) as client:
        ok = client.find(query)
        assert ok.status == 0x0000 and len(ok.answers) == 1

        _down(admin, name)
        down = client.find(query)
        assert (down.status, down.answers) == (0xC001, [])
        assert down.comment and "exam view unavailable" in down.comment

        _up(admin, name)
        # The pool may hand out one more dead connection before pre-ping replaces it; poll.
        results: list[int] = []

        def answered() -> bool:
            result = client.find(query)
            results.append(result.status)
            return result.status == 0x0000 and len(result.answers) == 1

        wait_until(answered, 30, "C-FIND after the database came back")
        assert set(results) <= {0x0000, 0xC001}


def _terminate(admin: Engine, name: str) -> None:
    """Every connection to ``name`` killed; the database stays up (a restart, seen from the pool)."""
    with admin.connect() as conn:
        conn.execute(
            text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"), {"n": name}
        )


def test_a_pooled_connection_killed_in_use_is_retried_once(
    pg_database: tuple[Engine, str, str],
    make_config: ConfigFactory,
    run_proxy: Callable[[Config], Server],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No ping within IDLE_PING of the last use (issue 29: a round trip per C-FIND saved): a
    connection that died meanwhile fails the first statement, and the view retries once on a new
    one — the C-FIND never sees it."""
    admin, name, url = pg_database
    _view_with_ct(url)
    port = run_proxy(make_config(view={"url": url, "pool_size": 1})).port
    query = {"PatientID": CT.patient.patient_id, "StudyInstanceUID": ""}
    with FindClient(port) as client:
        assert client.find(query).status == 0x0000
        for _ in range(2):
            _terminate(admin, name)
            again = client.find(query)
            assert (again.status, len(again.answers)) == (0x0000, 1), again.comment
    retried = [r for r in caplog.records if "exam view connection lost, retrying once" in r.getMessage()]
    assert len(retried) == 2 and all("\n" not in r.getMessage() for r in retried)


def test_an_idle_connection_is_pinged_and_replaced_before_use(pg_database: tuple[Engine, str, str]) -> None:
    """Past the idle time, checkout pings: a dead connection is replaced before the statement runs."""
    from dicomproxy.view.repository import ping_when_idle

    admin, name, url = pg_database
    engine = create_engine(url, pool_size=1)
    ping_when_idle(engine, 0.0)
    pings: list[int] = []
    original = engine.dialect.do_ping

    def counted(dbapi_connection: object) -> bool:
        pings.append(1)
        return bool(original(dbapi_connection))

    engine.dialect.do_ping = counted  # type: ignore[method-assign]
    try:
        with engine.connect() as conn:
            first = conn.execute(text("SELECT pg_backend_pid()")).scalar()
        _terminate(admin, name)
        with engine.connect() as conn:  # pinged, found dead, replaced: no error here
            second = conn.execute(text("SELECT pg_backend_pid()")).scalar()
        assert first != second and pings == [1]  # the new connection is not pinged
    finally:
        engine.dispose()
