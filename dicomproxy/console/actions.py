"""The console's routes that act or read the trail (roles: :mod:`dicomproxy.console.roles`).

- ``POST /api/push/pause`` / ``POST /api/push/resume`` (operator): the same as ``dicomproxy push
  pause|resume [DESTINATION]``; a JSON body ``{"destination": "AE"}`` names one destination.
- ``GET /api/audit?hours=24&limit=200`` (auditor): the newest audit records (they name patients:
  the auditor's job), ``GET /api/audit/verify`` (auditor): the hash chain's verification.

The audit trail is handed in by the server (``console`` and ``audit`` are sibling layers: the
console reads it through :class:`AuditReader`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from dicomproxy.config import Config
from dicomproxy.config.holder import Settings, as_settings
from dicomproxy.push.holds import pause, resume

#: The most audit records one request returns.
MAX_AUDIT_ROWS = 1000


class AuditReader(Protocol):
    """What the console reads of the audit trail (:class:`~dicomproxy.audit.trail.AuditTrail`)."""

    def rows(self, *, since: dt.datetime | None = None, limit: int = 0) -> list[dict[str, Any]]: ...

    def verify(self) -> Any: ...


class Actions:
    """Push pause/resume and the audit trail over HTTP."""

    def __init__(self, config: Config | Settings, push: Any, audit: AuditReader | None) -> None:
        self.settings = as_settings(config)  # push destinations as reloaded
        self.push = push
        self.audit = audit

    async def push_pause(self, request: Request) -> Response:
        return await self._push(request, pause, "paused")

    async def push_resume(self, request: Request) -> Response:
        return await self._push(request, resume, "resumed")

    async def _push(self, request: Request, act: Any, done: str) -> Response:
        if self.push is None:
            return JSONResponse({"error": "push is not enabled ([push] enabled)"}, status_code=409)
        try:
            body = json.loads(await request.body() or b"{}")
            destination = body.get("destination") if isinstance(body, dict) else None
        except ValueError:
            return JSONResponse({"error": "the body must be JSON"}, status_code=400)
        if destination is not None and destination not in self.settings.current.push.destinations:
            return JSONResponse({"error": f"{destination!r} is not a [push] destination"}, status_code=400)
        await asyncio.to_thread(act, self.push.queue, destination)
        return JSONResponse({done: destination or "*"})

    async def audit_rows(self, request: Request) -> Response:
        if self.audit is None:
            return JSONResponse({"error": "the audit trail is off ([audit] enabled)"}, status_code=409)
        try:
            hours = float(request.query_params.get("hours", "24"))
            limit = min(MAX_AUDIT_ROWS, max(1, int(request.query_params.get("limit", "200"))))
        except ValueError:
            return JSONResponse({"error": "hours and limit must be numbers"}, status_code=400)
        since = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=hours)
        rows = await asyncio.to_thread(self.audit.rows, since=since)
        out = [{k: v.isoformat() if isinstance(v, dt.datetime) else v for k, v in r.items()} for r in rows]
        return JSONResponse({"rows": out[-limit:], "more": max(0, len(out) - limit)})

    async def audit_verify(self, request: Request) -> Response:
        if self.audit is None:
            return JSONResponse({"error": "the audit trail is off ([audit] enabled)"}, status_code=409)
        result = await asyncio.to_thread(self.audit.verify)
        return JSONResponse(dataclasses.asdict(result), status_code=200 if result.ok else 500)
