"""等保 三员分立 on the console (issue 28 item 5): an administrator, an operator and an auditor
token, each route open to the roles that may call it (401 without a known token, 403 for a role
that may not), push pause/resume and the audit trail over HTTP, and every request that needed a
token in the audit trail — role, method, path, status — never the token. A real ``serve`` with its
console on loopback; requests by urllib."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

from dicomproxy import events
from dicomproxy.audit.trail import AuditTrail
from dicomproxy.config import Config
from dicomproxy.console.roles import ROUTES, Role, allowed
from dicomproxy.errors import ConfigError
from dicomproxy.push.holds import PAUSED_PREFIX
from dicomproxy.server import Server
from testkit import free_port
from tests.conftest import ConfigFactory

ADMIN, OPERATOR, AUDITOR = "admin-Tok3n", "operator-Tok3n", "auditor-Tok3n"


def call(base: str, path: str, token: str = "", body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method="POST" if data is not None else "GET")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw, status = resp.read(), resp.status
    except urllib.error.HTTPError as exc:
        with exc:
            raw, status = exc.read(), exc.code
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode()


@pytest.fixture
def console(make_config: ConfigFactory, run_proxy: Callable[[Config], Server]) -> tuple[Server, str]:
    config = make_config(
        http={"port": free_port(), "token": ADMIN, "operator_token": OPERATOR, "auditor_token": AUDITOR},
        peers=[{"ae_title": "CLOUD", "host": "127.0.0.1", "port": 1}],
        push={"enabled": True, "destinations": ["CLOUD"], "poll_interval": 0.2},
    )
    server = run_proxy(config)
    assert server.console is not None
    return server, server.console.url


@pytest.mark.parametrize(
    ("path", "codes"),  # status for: no token, a wrong one, operator, auditor, administrator
    [
        ("/api/status", (401, 401, 200, 403, 200)),
        ("/metrics", (401, 401, 200, 403, 200)),
        ("/api/audit", (401, 401, 403, 200, 200)),
        ("/api/audit/verify", (401, 401, 403, 200, 200)),
        ("/healthz", (200, 200, 200, 200, 200)),
    ],
)
def test_each_route_answers_the_roles_that_may_call_it(
    console: tuple[Server, str], path: str, codes: tuple[int, ...]
) -> None:
    _, base = console
    got = tuple(call(base, path, token)[0] for token in ("", "wrong", OPERATOR, AUDITOR, ADMIN))
    assert got == codes


def test_the_operator_pauses_and_resumes_push_the_auditor_may_not(console: tuple[Server, str]) -> None:
    server, base = console
    queue = server.ctx.push.queue  # type: ignore[union-attr]
    assert call(base, "/api/push/pause", AUDITOR, {})[0] == 403
    assert call(base, "/api/push/pause", OPERATOR, {"destination": "NOWHERE"}) == (
        400,
        {"error": "'NOWHERE' is not a [push] destination"},
    )
    assert call(base, "/api/push/pause", OPERATOR, {"destination": "CLOUD"}) == (200, {"paused": "CLOUD"})
    assert PAUSED_PREFIX + "CLOUD" in queue.states()
    assert server.ctx.push.held() == (False, ["CLOUD"])  # type: ignore[union-attr]
    assert call(base, "/api/push/resume", OPERATOR, {"destination": "CLOUD"}) == (200, {"resumed": "CLOUD"})
    assert server.ctx.push.held() == (False, [])  # type: ignore[union-attr]
    assert call(base, "/api/push/pause", ADMIN, {})[1] == {"paused": "*"}
    assert server.ctx.push.held()[0] is True  # type: ignore[union-attr]


def test_every_request_needing_a_token_is_audited_without_the_token(console: tuple[Server, str]) -> None:
    server, base = console
    made = [
        ("/api/status", OPERATOR, 200, "operator"),
        ("/api/audit", OPERATOR, 403, "operator"),
        ("/api/status", "wrong", 401, ""),
        ("/api/audit/verify", AUDITOR, 200, "auditor"),
    ]
    for path, token, status, _ in made:
        assert call(base, path, token)[0] == status
    call(base, "/healthz")  # open: not audited
    assert events.flush()
    rows = [r for r in AuditTrail(server.ctx.journal.engine).rows() if r["action"] == "console"]
    details = [json.loads(r["detail"]) for r in rows]
    assert [(d["path"], d["status"], d["role"]) for d in details] == [(p, s, role) for p, _, s, role in made]
    assert [r["outcome"] for r in rows] == ["success", "refused", "refused", "success"]
    assert all(r["address"].startswith("127.0.0.1:") for r in rows)
    everything = json.dumps(AuditTrail(server.ctx.journal.engine).rows(), default=str)
    assert not any(t in everything for t in (ADMIN, OPERATOR, AUDITOR, "wrong"))


def test_the_auditor_reads_the_newest_records_and_the_chain(console: tuple[Server, str]) -> None:
    _, base = console
    assert call(base, "/api/status", OPERATOR)[0] == 200
    assert events.flush()
    status, body = call(base, "/api/audit?limit=1", AUDITOR)
    assert status == 200 and len(body["rows"]) == 1 and body["more"] >= 1  # start, then the status request
    assert (body["rows"][0]["action"], json.loads(body["rows"][0]["detail"])["path"]) == (
        "console",
        "/api/status",
    )
    status, verified = call(base, "/api/audit/verify", AUDITOR)
    assert status == 200 and verified["ok"] is True and verified["rows"] >= 2  # start, the status request
    assert call(base, "/api/audit?limit=x", AUDITOR)[0] == 400


def test_the_administrator_may_call_every_route_and_the_table_names_each_route_once() -> None:
    for path, roles in ROUTES.items():
        assert allowed(Role.ADMIN, path)
        assert Role.ADMIN not in roles  # implied, never listed
        assert allowed(Role.OPERATOR, path) != allowed(Role.AUDITOR, path)  # one duty each
    assert allowed(Role.ADMIN, "/some/new/route") and not allowed(Role.OPERATOR, "/some/new/route")


def test_an_open_console_on_loopback_treats_callers_as_the_administrator(
    make_config: ConfigFactory, run_proxy: Callable[[Config], Server]
) -> None:
    server = run_proxy(make_config(http={"port": free_port()}))
    assert server.console is not None
    assert call(server.console.url, "/api/audit/verify")[0] == 200
    assert call(server.console.url, "/api/status")[0] == 200


@pytest.mark.parametrize(
    ("http", "problem"),
    [
        ({"token": "same", "operator_token": "same"}, "http.operator_token: must differ from token"),
        (
            {"operator_token": "x", "auditor_token": "x"},
            "http.auditor_token: must differ from operator_token",
        ),
    ],
)
def test_tokens_must_differ_per_role(make_config: ConfigFactory, http: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        make_config(http=http)


def test_off_loopback_one_role_s_token_is_enough(make_config: ConfigFactory) -> None:
    config = make_config(http={"host": "0.0.0.0", "auditor_token": "x"})
    assert (config.http.token, config.http.auditor_token) == ("", "x")


def test_a_reload_changes_the_tokens_for_the_next_request(console: tuple[Server, str]) -> None:
    """``[http] token`` is reloadable (docs/operations.md, Reload): the console reads the current
    one per request; the old token is refused from then on."""
    from dataclasses import replace

    server, base = console
    assert call(base, "/api/status", ADMIN)[0] == 200
    config = server.ctx.config
    server.ctx.settings.replace(replace(config, http=replace(config.http, token="admin-N3w")))
    assert call(base, "/api/status", ADMIN)[0] == 401
    assert call(base, "/api/status", "admin-N3w")[0] == 200
    assert call(base, "/api/status", OPERATOR)[0] == 200  # unchanged
