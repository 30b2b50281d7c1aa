"""The operations console: an embedded HTTP service (``[http]``) started and stopped by the server.

Routes: ``/healthz`` (open), ``/readyz``, ``/metrics``, ``/api/status``, ``/`` (the status page,
static files from ``dicomproxy/console/static``), and the actions of :mod:`dicomproxy.console.actions`
(push pause/resume, the audit trail). Every route but ``/healthz`` and the page needs
``Authorization: Bearer TOKEN`` of a role that may call it (:mod:`dicomproxy.console.roles`) when a
token is configured (required off loopback, see config).

Starlette + uvicorn: Starlette gives routing, responses and static files in a small, typed,
well-maintained package; uvicorn is the ASGI server with TLS, keep-alive and graceful shutdown
done for us. The server runs its own asyncio loop in one daemon thread, on a socket bound by
:meth:`Console.start` (so port 0 works and a bind error is reported synchronously). Nothing here
runs on a DICOM thread: the DICOM code only publishes events (:mod:`dicomproxy.events`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.streams.stapled  # resolved at import, see the note below the imports
import uvicorn
from sqlalchemy.exc import SQLAlchemyError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from dicomproxy import __version__, events
from dicomproxy.config import Config
from dicomproxy.console.actions import Actions, AuditReader
from dicomproxy.console.health import Echoer, Readiness, query_process_check
from dicomproxy.console.live import LiveState
from dicomproxy.console.metrics import Metrics
from dicomproxy.console.roles import RoleGate
from dicomproxy.reconcile.summary import RunSummaries, RunSummary
from dicomproxy.relay.bandwidth import InForce, capped_destinations

# anyio resolves its public names lazily: the first use imports a module (and, under pytest,
# AST-rewrites it). Done first in the console's server thread while other threads use the ast
# module, that hit CPython 3.11's thread-unsafe AST validator ("AST constructor recursion depth
# mismatch", gh-106905; the status page test failed ~1 run in 3). The names starlette and uvicorn
# use are resolved here, at import, on the importing thread.
for _name in (
    "open_file", "wrap_file", "AsyncFile", "to_thread", "from_thread", "lowlevel", "abc",
    "create_memory_object_stream", "create_task_group", "EndOfStream", "CancelScope", "Event",
    "CapacityLimiter", "sleep_forever", "BrokenResourceError",
):  # fmt: skip
    getattr(anyio, _name)

LOG = logging.getLogger("dicomproxy.console")

STATIC = Path(__file__).parent / "static"
#: The status page shows the last readiness result at most this old (seconds).
CHECK_CACHE = 10.0


def dir_bytes(path: Path) -> int:
    """Bytes of the files below ``path`` (0 when it does not exist)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):  # removed while we walked
                total += os.stat(os.path.join(root, name)).st_size
    return total


class Console:
    """Metrics, live state, readiness and the HTTP server of one proxy."""

    def __init__(
        self,
        config: Config,
        ctx: Any,
        associations: Callable[[], list[dict[str, Any]]],
        audit: AuditReader | None = None,
        query_process: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        """``query_process``: the state of ``serve``'s query process when it runs one
        (:meth:`dicomproxy.queryproc.parent.QueryProcess.state`)."""
        self.config = config
        self.ctx = ctx
        self.associations = associations
        self.query_process = query_process
        self.started_at = time.time()
        self.live = LiveState()
        self.metrics = Metrics(
            config,
            open_associations=lambda: len(self.associations()),
            running_jobs=lambda: len(self.live.running),
            spool_bytes=lambda: dir_bytes(config.data_path / "spool"),
            push_queue=ctx.push.queue if ctx.push is not None else None,
            commitments=ctx.commitments,
            reconcile_runs=self.reconcile_runs if ctx.journal is not None else None,
            bandwidth=self.bandwidth if ctx.relay is not None and config.bandwidth else None,
            query_process=query_process,
        )
        self.echoer = Echoer(config)
        self.readiness = Readiness(config, ctx.view, ctx.journal, self.echoer)
        self._last_checks: tuple[float, dict[str, Any]] | None = None
        self._runs: RunSummaries | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self._ready = threading.Event()
        self.actions = Actions(ctx.settings, ctx.push, audit)
        self.app = self._app()

    # --- lifecycle ---

    @property
    def port(self) -> int:
        if self._sock is None:
            raise RuntimeError("console not started")
        return int(self._sock.getsockname()[1])

    @property
    def url(self) -> str:
        scheme = "https" if self.config.http.tls else "http"
        host = self.config.http.host
        host = f"[{host}]" if ":" in host else host
        return f"{scheme}://{host}:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        """Bind, start serving, wait until uvicorn has started (raises OSError on a bind error)."""
        http = self.config.http
        family = socket.AF_INET6 if ":" in http.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((http.host, http.port))
        except OSError:
            sock.close()
            raise
        sock.listen(128)
        sock.set_inheritable(True)
        self._sock = sock
        events.subscribe(self.metrics)
        events.subscribe(self.live)
        self.echoer.start()
        cfg = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            lifespan="on",
            ssl_certfile=http.tls.cert if http.tls else None,
            ssl_keyfile=(http.tls.key or None) if http.tls else None,
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(cfg)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="http-console", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(timeout):
            self.stop()
            raise OSError(f"the HTTP console did not start within {timeout:.0f} s")
        LOG.info("console on %s (status page /, /healthz, /readyz, /metrics)", self.url)

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        if self._sock is not None:
            self._sock.close()
        self.echoer.stop()
        self.readiness.close()
        events.unsubscribe(self.metrics)
        events.unsubscribe(self.live)

    # --- the application ---

    def _app(self) -> Starlette:
        middleware = [Middleware(RoleGate, http=lambda: self.ctx.config.http)]  # tokens: reloadable

        @contextlib.asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            self._ready.set()
            yield

        return Starlette(
            routes=[
                Route("/healthz", self.healthz),
                Route("/readyz", self.readyz),
                Route("/metrics", self.metrics_route),
                Route("/api/status", self.status),
                Route("/api/push/pause", self.actions.push_pause, methods=["POST"]),
                Route("/api/push/resume", self.actions.push_resume, methods=["POST"]),
                Route("/api/audit", self.actions.audit_rows),
                Route("/api/audit/verify", self.actions.audit_verify),
                Route("/", self.index),
                Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
            ],
            middleware=middleware,
            lifespan=lifespan,
        )

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "version": __version__})

    async def readyz(self, request: Request) -> Response:
        ready, checks = await asyncio.to_thread(self.readiness.run)
        body = {"ready": ready, "checks": [c.as_dict() for c in checks]}
        self._last_checks = (time.monotonic(), body)
        return JSONResponse(body, status_code=200 if ready else 503)

    async def metrics_route(self, request: Request) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(await asyncio.to_thread(self.metrics.exposition), media_type=CONTENT_TYPE_LATEST)

    async def index(self, request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    async def status(self, request: Request) -> Response:
        return JSONResponse(await asyncio.to_thread(self.status_body))

    def status_body(self) -> dict[str, Any]:
        """The JSON the status page polls (``/api/status``)."""
        show = self.config.http.show_identifiers
        body: dict[str, Any] = {
            "version": __version__,
            "ae_title": self.config.proxy.ae_title,
            "hospital": self.config.hospital.name,
            "uptime": round(time.time() - self.started_at),
            "now": dt.datetime.now(dt.timezone.utc).isoformat(),
            "show_identifiers": show,
            "associations": self.associations(),
            **self.live.snapshot(show),
        }
        journal = self.ctx.journal
        if journal is not None and body["running"]:
            for job in body["running"]:  # the announced count is in the journal (set by the relay)
                view = journal.get(job["id"])
                job["expected"] = view.row["expected"] if view is not None else 0
        cached = self._last_checks
        if cached is None or time.monotonic() - cached[0] > CHECK_CACHE:
            ready, checks = self.readiness.run()
            cached = (time.monotonic(), {"ready": ready, "checks": [c.as_dict() for c in checks]})
            self._last_checks = cached
        body["checks"] = cached[1]["checks"] + [c.as_dict() for c in self.echoer.peer_checks()]
        body["query_process"] = None
        if self.query_process is not None:  # shown, not part of readiness: C-FIND is served either way
            state = body["query_process"] = self.query_process()
            body["checks"].append(query_process_check(state).as_dict())
        body["ready"] = cached[1]["ready"]
        if self.ctx.push is not None:  # push mode (docs/push.md): the shared queue by destination/state
            from dicomproxy.push.backfill import lane_progress
            from dicomproxy.push.holds import LANE_PAUSED_PREFIX
            from dicomproxy.push.queue import BACKFILL
            from dicomproxy.push.service import push_summary

            body["push"] = push_summary(self.ctx.push)
            try:  # the backfill lane's progress (counts only) and whether the operator paused it
                queue = self.ctx.push.queue
                body["backfill"] = next(
                    p.as_dict() | {"paused": queue.get_state(LANE_PAUSED_PREFIX + p.lane) is not None}
                    for p in lane_progress(queue)
                    if p.lane == BACKFILL
                )
            except Exception:  # the journal is down: the section is left out
                body["backfill"] = None
        elif self.ctx.corrections is not None:  # no push table: corrections after delivery of their own
            try:
                counts = self.ctx.corrections.loop.store.by_destination()
                body["corrections"] = [{"destination": d, **counts[d]} for d in sorted(counts)]
            except SQLAlchemyError:  # the journal is down: the section is left out
                body["corrections"] = None
        if self.ctx.relay is not None and self.config.bandwidth:  # [[bandwidth]]: rate now, next change
            body["bandwidth"] = [row.as_dict() for row in self.bandwidth()]
        if self.ctx.commitments is not None:  # Storage Commitment of the last 24 h (docs/commitment.md)
            try:
                body["commitment"] = self.ctx.commitments.summary()
            except Exception:  # the journal is down: the section is left out
                body["commitment"] = []
        try:  # the newest `dicomproxy reconcile` per destination: counts only, no study or patient
            body["reconcile"] = [r.as_dict() for r in self.reconcile_runs()]
        except Exception:  # no journal, or it is down: the section is left out
            body["reconcile"] = []
        return body

    def bandwidth(self) -> list[InForce]:
        """The ``[[bandwidth]]`` timetable in force per capped destination (status page, metrics)."""
        if self.ctx.relay is None:
            return []
        timetable = self.ctx.relay.engine.bandwidth
        return [timetable.in_force(d) for d in capped_destinations(self.config)]

    def reconcile_runs(self) -> list[RunSummary]:
        """The newest ``dicomproxy reconcile`` run's counts per destination (``reconcile_runs``)."""
        if self._runs is None:
            self._runs = RunSummaries(self.ctx.journal.engine)  # creates the table on first use
        return self._runs.latest()
