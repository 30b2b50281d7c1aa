"""A STOW-RS server that misbehaves on demand (Starlette on uvicorn, in a thread, on a free port).

It answers ``POST /studies`` (PS3.18 10.5) as a real one does — a Store Instances Response in
``application/dicom+json`` naming each instance in the Referenced SOP Sequence (0008,1199) or the
Failed SOP Sequence (0008,1198) — and, as :class:`StowScript` says, fails chosen instances with a
Failure Reason, answers a whole request 429 with ``Retry-After`` or 503, or drops the connection
after reading part of a request. It records every request (its parts' Content-Types, the
instances in it) and every instance it stored, so a test sees what arrived how many times.

The multipart/related body is split by the standard library's MIME parser (``email``).
"""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import io
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from pydicom import dcmread
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from testkit import free_port, wait_until


@dataclass
class StowScript:
    """What the server does wrong. ``requests``: one action per request in turn (``ok``, ``429``,
    ``503``, ``drop``, ``400``), then ``ok`` for ever; ``fail_always``: SOP Instance UID → Failure
    Reason on every attempt; ``fail_times``: UID → (reason, how many attempts fail)."""

    requests: list[str] = field(default_factory=list)
    retry_after: str = "1"
    fail_always: dict[str, int] = field(default_factory=dict)
    fail_times: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: UID → Warning Reason (stored with a warning).
    warn: dict[str, int] = field(default_factory=dict)
    #: Seconds each request is held before its answer.
    delay: float = 0.0
    #: The ``Authorization`` header every request must carry (401 otherwise); "" = none asked.
    authorization: str = ""


@dataclass
class Seen:
    """One request as it arrived."""

    action: str
    content_type: str
    #: Each part's media type and its ``transfer-syntax`` parameter ("" when it names none).
    part_types: list[tuple[str, str]]
    uids: list[str]
    at: float


def _seq(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}


def _item(uid: str, sop_class: str, key: str | None = None, reason: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "00081150": {"vr": "UI", "Value": [sop_class]},  # (0008,1150) Referenced SOP Class UID
        "00081155": {"vr": "UI", "Value": [uid]},  # (0008,1155) Referenced SOP Instance UID
    }
    if key is not None and reason is not None:
        out[key] = {"vr": "US", "Value": [reason]}
    return out


def _payload(part: Any) -> bytes:
    data = part.get_payload(decode=True)
    assert isinstance(data, bytes)
    return data


class StowServer:
    """Start with :meth:`start`; ``url`` is the STOW-RS endpoint; :attr:`stored` counts each UID."""

    def __init__(self, script: StowScript | None = None, tls: dict[str, str] | None = None) -> None:
        """``tls``: serve HTTPS with ``cert``/``key``; with ``ca``, a client certificate signed by it
        is required."""
        self.script = script or StowScript()
        self.tls = tls
        self.port = free_port()
        self.seen: list[Seen] = []
        self.stored: Counter[str] = Counter()
        self.syntaxes: dict[str, str] = {}
        self.attempts: Counter[str] = Counter()
        #: Parts whose ``transfer-syntax`` parameter differs from their file's meta information.
        self.mislabelled = 0
        self._lock = threading.Lock()
        self._turn = 0
        app = Starlette(routes=[Route("/studies", self._studies, methods=["POST"])])
        https: dict[str, Any] = {}
        if tls is not None:
            https = {"ssl_certfile": tls["cert"], "ssl_keyfile": tls["key"]}
            if tls.get("ca"):
                https |= {"ssl_ca_certs": tls["ca"], "ssl_cert_reqs": ssl.CERT_REQUIRED}
        cfg = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="critical", access_log=False, **https
        )
        self._server = uvicorn.Server(cfg)
        self._thread = threading.Thread(target=self._server.run, name="stow-server", daemon=True)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}/studies"

    def start(self) -> StowServer:
        self._thread.start()
        wait_until(self._listening, 10, "the STOW-RS server")
        return self

    def _listening(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
            return True
        except OSError:
            return False

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=5)

    def _next_action(self) -> str:
        with self._lock:
            k, self._turn = self._turn, self._turn + 1
        return self.script.requests[k] if k < len(self.script.requests) else "ok"

    async def _studies(self, request: Request) -> Response:
        content_type = request.headers.get("content-type", "")
        if self.script.authorization and request.headers.get("authorization") != self.script.authorization:
            await request.body()
            self.seen.append(Seen("401", content_type, [], [], time.monotonic()))
            return Response(status_code=401, headers={"WWW-Authenticate": "Bearer"})
        action = self._next_action()
        if action == "drop":  # read a part of the body, store the first instance, then hang up
            got = b""
            async for chunk in request.stream():
                got += chunk
                if len(got) > 4096:
                    break
            self.seen.append(Seen(action, content_type, [], [], time.monotonic()))

            async def hang_up() -> AsyncIterator[bytes]:
                raise ConnectionAbortedError("dropped mid-request")
                yield b""  # (a generator)

            # the answer begun, then the connection closed: uvicorn aborts it, the client gets no answer
            return StreamingResponse(hang_up(), media_type="application/dicom+json")
        body = await request.body()
        parts = self._parts(content_type, body)
        self.seen.append(
            Seen(
                action,
                content_type,
                [t for t, _ in parts],
                [self._uid(d) for _, d in parts],
                time.monotonic(),
            )
        )
        if self.script.delay:
            await asyncio.sleep(self.script.delay)
        if action in ("429", "503"):
            return Response(status_code=int(action), headers={"Retry-After": self.script.retry_after})
        if action != "ok":
            return Response(status_code=int(action))
        return self._store(parts)

    @staticmethod
    def _parts(content_type: str, body: bytes) -> list[tuple[tuple[str, str], bytes]]:
        head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
        msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
        return [
            (
                (part.get_content_type(), str(part.get_param("transfer-syntax") or "")),
                _payload(part),
            )
            for part in msg.iter_parts()
        ]

    @staticmethod
    def _uid(data: bytes) -> str:
        return str(dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)

    def _store(self, parts: list[tuple[tuple[str, str], bytes]]) -> Response:
        stored: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        for (_, named), data in parts:
            ds = dcmread(io.BytesIO(data), stop_before_pixels=True)
            if named and named != ds.file_meta.TransferSyntaxUID:
                self.mislabelled += 1
            uid, cls = str(ds.SOPInstanceUID), str(ds.SOPClassUID)
            with self._lock:
                self.attempts[uid] += 1
                n = self.attempts[uid]
            reason = self.script.fail_always.get(uid)
            if reason is None and uid in self.script.fail_times:
                code, times = self.script.fail_times[uid]
                reason = code if n <= times else None
            if reason is not None:
                failed.append(_item(uid, cls, "00081197", reason))  # (0008,1197) Failure Reason
                continue
            with self._lock:
                self.stored[uid] += 1
                self.syntaxes[uid] = str(ds.file_meta.TransferSyntaxUID)
            stored.append(
                _item(uid, cls, "00081196", self.script.warn.get(uid))
            )  # (0008,1196) Warning Reason
        body = {"00081199": _seq(stored), "00081198": _seq(failed)}
        status = 200 if not failed else 409 if not stored else 202
        return JSONResponse(body, status_code=status, media_type="application/dicom+json")
