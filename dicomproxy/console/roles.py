"""Who may call which console route: the three roles of 等保 2.0's 三员分立 (separation of the
system administrator, the security/operations officer and the auditor; GB/T 22239-2019 8.1.4.2).

``[http] token`` is the administrator's (every route), ``operator_token`` the operator's (status,
metrics, readiness, push pause/resume), ``auditor_token`` the auditor's (the audit trail and its
verification only). A request is matched against every configured token in constant time
(:func:`hmac.compare_digest`); a missing or unknown token is 401, a known token on a route its
role may not use is 403. Every request that needs a token — refused or not — is published as a
:class:`~dicomproxy.events.ConsoleRequest`, which the audit trail records (role, method, path,
status, client address; never the token). With no token configured (loopback only) the console is
open and every caller counts as the administrator.
"""

from __future__ import annotations

import enum
import hmac
from collections.abc import Callable

from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dicomproxy import events
from dicomproxy.config import HttpConfig

#: No token needed: liveness, and the page and its static files (they carry no data; the page sends
#: the token, given in its address as ``/#token=...``, with each ``/api/status`` request).
OPEN_PATHS = ("/healthz", "/")
OPEN_PREFIXES = ("/static/",)


class Role(enum.Enum):
    ADMIN = "admin"
    OPERATOR = "operator"
    AUDITOR = "auditor"


#: Route → the roles (besides the administrator) that may call it.
ROUTES: dict[str, frozenset[Role]] = {
    "/readyz": frozenset({Role.OPERATOR}),
    "/metrics": frozenset({Role.OPERATOR}),
    "/api/status": frozenset({Role.OPERATOR}),
    "/api/push/pause": frozenset({Role.OPERATOR}),
    "/api/push/resume": frozenset({Role.OPERATOR}),
    "/api/audit": frozenset({Role.AUDITOR}),
    "/api/audit/verify": frozenset({Role.AUDITOR}),
}


def allowed(role: Role, path: str) -> bool:
    """May ``role`` call ``path``? (The administrator may call every route, known or not.)"""
    return role is Role.ADMIN or role in ROUTES.get(path, frozenset())


class RoleGate:
    """ASGI middleware: the caller's role from its bearer token, 401/403, and the audit event."""

    def __init__(self, app: ASGIApp, http: HttpConfig | Callable[[], HttpConfig]) -> None:
        """``http``: the ``[http]`` section, or a callable giving the current one (a reload changes
        the tokens for the next request)."""
        self.app = app
        self._http = http if callable(http) else (lambda: http)
        self._seen: tuple[HttpConfig, list[tuple[bytes, Role]]] | None = None

    @property
    def tokens(self) -> list[tuple[bytes, Role]]:
        """(``Bearer <token>``, role) of every configured token, for the current ``[http]``."""
        http = self._http()
        seen = self._seen
        if seen is None or seen[0] is not http:
            tokens = [
                (f"Bearer {token}".encode(), role)
                for token, role in (
                    (http.token, Role.ADMIN),
                    (http.operator_token, Role.OPERATOR),
                    (http.auditor_token, Role.AUDITOR),
                )
                if token.strip()
            ]
            self._seen = seen = (http, tokens)
        return seen[1]

    def role_of(self, authorization: bytes, tokens: list[tuple[bytes, Role]] | None = None) -> Role | None:
        """The role whose token ``authorization`` carries (every token compared, in constant time)."""
        found = None
        for expected, role in self.tokens if tokens is None else tokens:
            if hmac.compare_digest(authorization, expected):
                found = role
        return found

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"] if scope["type"] == "http" else ""
        if not path or path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            await self.app(scope, receive, send)
            return
        tokens = self.tokens
        role = (
            self.role_of(dict(scope["headers"]).get(b"authorization", b""), tokens) if tokens else Role.ADMIN
        )
        client = scope.get("client") or ("", 0)
        status = {"code": 0}

        def publish() -> None:
            events.publish(
                events.ConsoleRequest(
                    role.value if role else "",
                    scope["method"],
                    path,
                    status["code"],
                    f"{client[0]}:{client[1]}",
                )
            )

        if role is None or not allowed(role, path):
            code, text = (401, "unauthorized") if role is None else (403, "forbidden")
            headers = {"WWW-Authenticate": 'Bearer realm="dicomproxy"'} if role is None else {}
            status["code"] = code
            publish()
            await PlainTextResponse(text, status_code=code, headers=headers)(scope, receive, send)
            return
        scope.setdefault("state", {})["role"] = role

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
                publish()
            await send(message)

        await self.app(scope, receive, sending)
