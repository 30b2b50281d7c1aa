"""Real receivers for the alerts: an HTTP server that answers as a JSON webhook, a 企业微信 group robot
and a 钉钉 custom robot do (checking their body formats and 钉钉's signature the way the robot does),
and an SMTP server (aiosmtpd) that requires STARTTLS and keeps the mails it accepted.

The HTTP receiver listens on one port; the path picks the role: ``/hook``, ``/wecom``, ``/dingtalk``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.server
import json
import ssl
import threading
import time
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from typing import Any
from urllib.parse import parse_qs, urlsplit

from testkit import free_port

#: 钉钉's answers (its documented error codes): a bad signature, a timestamp off by over an hour.
DINGTALK_BAD_SIGN = 310000


@dataclass
class Received:
    """One request the receiver accepted or refused."""

    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    accepted: bool
    answer: dict[str, Any]


@dataclass
class SinkState:
    dingtalk_secret: str = ""
    #: Answer this many requests (any path) with HTTP 503 before answering normally.
    fail_next: int = 0
    requests: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def expected_dingtalk_sign(secret: str, timestamp: str) -> str:
    """钉钉's documented 加签: base64(HMAC-SHA256(key=secret, msg=f"{timestamp}\\n{secret}"))."""
    mac = hmac.new(secret.encode("utf-8"), f"{timestamp}\n{secret}".encode(), hashlib.sha256)
    return base64.b64encode(mac.digest()).decode("ascii")


def _wecom(body: Any) -> dict[str, Any]:
    kind = body.get("msgtype") if isinstance(body, dict) else None
    if kind not in ("text", "markdown") or not isinstance(body.get(kind), dict):
        return {"errcode": 40008, "errmsg": "invalid message type"}
    content = body[kind].get("content")
    limit = 2048 if kind == "text" else 4096
    if not isinstance(content, str) or not content or len(content.encode()) > limit:
        return {"errcode": 40058, "errmsg": "invalid content"}
    return {"errcode": 0, "errmsg": "ok"}


def _dingtalk(body: Any, query: dict[str, str], secret: str) -> dict[str, Any]:
    if secret:
        ts, sign = query.get("timestamp", ""), query.get("sign", "")
        if not ts.isdigit() or abs(time.time() * 1000 - int(ts)) > 3600_000:
            return {"errcode": DINGTALK_BAD_SIGN, "errmsg": "timestamp invalid"}
        if not hmac.compare_digest(sign, expected_dingtalk_sign(secret, ts)):
            return {"errcode": DINGTALK_BAD_SIGN, "errmsg": "sign not match"}
    kind = body.get("msgtype") if isinstance(body, dict) else None
    part = body.get(kind) if kind in ("text", "markdown") else None
    if not isinstance(part, dict):
        return {"errcode": 40035, "errmsg": "invalid msgtype"}
    if kind == "markdown" and not (part.get("title") and part.get("text")):
        return {"errcode": 40035, "errmsg": "markdown needs title and text"}
    if kind == "text" and not part.get("content"):
        return {"errcode": 40035, "errmsg": "text needs content"}
    return {"errcode": 0, "errmsg": "ok"}


class _Handler(http.server.BaseHTTPRequestHandler):
    state: SinkState

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length", "0") or 0))
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}  # parse_qs URL-decodes
        with self.state.lock:
            if self.state.fail_next > 0:
                self.state.fail_next -= 1
                self.send_response(503)
                self.end_headers()
                return
        try:
            body = json.loads(raw)
            ok_json = self.headers.get("Content-Type", "").startswith("application/json")
        except ValueError:
            body, ok_json = raw.decode("utf-8", "replace"), False
        if not ok_json:
            answer: dict[str, Any] = {"errcode": 40001, "errmsg": "not application/json"}
        elif url.path == "/wecom":
            answer = _wecom(body)
        elif url.path == "/dingtalk":
            answer = _dingtalk(body, query, self.state.dingtalk_secret)
        else:
            answer = {"ok": True}
        accepted = answer.get("errcode", 0) == 0
        with self.state.lock:
            self.state.requests.append(Received(url.path, query, dict(self.headers), body, accepted, answer))
        data = json.dumps(answer).encode()
        self.send_response(200)  # the robots answer 200 with an errcode
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class AlertReceiver:
    """The HTTP receiver in a thread on a free loopback port."""

    def __init__(self, dingtalk_secret: str = "") -> None:
        self.state = SinkState(dingtalk_secret=dingtalk_secret)
        handler = type("Handler", (_Handler,), {"state": self.state})
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name="alert-receiver", daemon=True)

    def start(self) -> AlertReceiver:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def accepted(self, path: str | None = None) -> list[Received]:
        with self.state.lock:
            return [r for r in self.state.requests if r.accepted and (path is None or r.path == path)]

    def refused(self) -> list[Received]:
        with self.state.lock:
            return [r for r in self.state.requests if not r.accepted]


class _MailHandler:
    def __init__(self) -> None:
        self.mails: list[Message] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self.tls: list[bool] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.mails.append(message_from_bytes(envelope.original_content or envelope.content))
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        self.tls.append(session.ssl is not None)
        return "250 OK"


class MailReceiver:
    """aiosmtpd on a free loopback port, STARTTLS required before MAIL (and before AUTH), with a
    user ``alerts``/``password`` when ``auth`` is on."""

    def __init__(self, cert_chain: str, key: str, auth: bool = True) -> None:
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult, LoginPassword

        def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
            ok = isinstance(data, LoginPassword) and (data.login, data.password) == (b"alerts", b"password")
            return AuthResult(success=ok)

        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(cert_chain, key)
        self.handler = _MailHandler()
        self.port = free_port()
        self.controller = Controller(
            self.handler,
            hostname="127.0.0.1",
            port=self.port,
            tls_context=tls,
            require_starttls=True,
            authenticator=authenticate if auth else None,
            auth_required=auth,
        )

    def start(self) -> MailReceiver:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    @property
    def mails(self) -> list[Message]:
        return list(self.handler.mails)
