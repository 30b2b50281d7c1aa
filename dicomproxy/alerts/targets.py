"""One class per kind of ``[[alerts]]`` target; :func:`build_target` picks it.

HTTP goes through httpx (a maintained client with timeouts, TLS verification and connection reuse;
nothing of HTTP is written here), e-mail through the standard library's smtplib (STARTTLS with the
certificate and host name verified). Each ``send`` delivers one message or raises
:class:`AlertDeliveryError` with a one-line reason; retries are the sender's
(:mod:`dicomproxy.alerts.sender`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import smtplib
import ssl
import time
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any, Protocol

import httpx

from dicomproxy.alerts.message import Message
from dicomproxy.config import AlertTarget


class AlertDeliveryError(Exception):
    """A message did not reach its target (the reason in one line)."""


class Target(Protocol):
    config: AlertTarget

    def send(self, message: Message) -> None: ...

    def close(self) -> None: ...


def tls_context(target: AlertTarget) -> ssl.SSLContext:
    """Certificate and host name verified; the target's ``ca`` bundle, else the system's CAs."""
    return ssl.create_default_context(cafile=target.ca or None)


class HttpTarget:
    """POST a JSON body; a 2xx answer is delivered."""

    def __init__(self, config: AlertTarget) -> None:
        self.config = config
        headers = {"User-Agent": "dicomproxy-alerts"}
        if config.token:
            headers["Authorization"] = f"Bearer {config.token}"
        self.client = httpx.Client(
            timeout=config.timeout, verify=tls_context(config), headers=headers, follow_redirects=False
        )

    def body(self, message: Message) -> dict[str, Any]:
        return message.as_json()

    def url(self) -> str:
        return self.config.url

    def send(self, message: Message) -> None:
        try:
            rsp = self.client.post(self.url(), json=self.body(message))
        except httpx.HTTPError as exc:
            raise AlertDeliveryError(f"{type(exc).__name__}: {exc}") from None
        if not rsp.is_success:
            raise AlertDeliveryError(f"HTTP {rsp.status_code} {rsp.reason_phrase}")
        self.check(rsp)

    def check(self, rsp: httpx.Response) -> None:
        """A 2xx answer that still says no (the robots answer 200 with an ``errcode``)."""

    def close(self) -> None:
        self.client.close()


class RobotTarget(HttpTarget):
    """The robots' common answer: ``{"errcode": 0, "errmsg": "ok"}``; any other errcode failed."""

    def check(self, rsp: httpx.Response) -> None:
        try:
            answer = rsp.json()
        except ValueError:
            raise AlertDeliveryError("the robot's answer is not JSON") from None
        code = answer.get("errcode") if isinstance(answer, dict) else None
        if code != 0:
            detail = answer.get("errmsg", "") if isinstance(answer, dict) else ""
            raise AlertDeliveryError(f"robot answered errcode {code}: {str(detail)[:200]}")


class WeComTarget(RobotTarget):
    """企业微信 group robot: ``{"msgtype": "markdown", "markdown": {"content": ...}}``."""

    def body(self, message: Message) -> dict[str, Any]:
        return {"msgtype": "markdown", "markdown": {"content": message.markdown()}}


def dingtalk_sign(secret: str, timestamp_ms: int) -> str:
    """钉钉 custom robot signature (加签): HMAC-SHA256 keyed by the secret over
    ``"{timestamp}\\n{secret}"`` (UTF-8), base64 — sent URL-encoded as ``sign`` beside ``timestamp``
    (milliseconds; the robot refuses one more than an hour off)."""
    digest = hmac.new(secret.encode(), f"{timestamp_ms}\n{secret}".encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


class DingTalkTarget(RobotTarget):
    """钉钉 custom robot: ``{"msgtype": "markdown", "markdown": {"title", "text"}}``, signed when a
    ``secret`` is set."""

    def body(self, message: Message) -> dict[str, Any]:
        text = message.markdown(colour=False)  # 钉钉's markdown has no font colours
        return {"msgtype": "markdown", "markdown": {"title": message.headline, "text": text}}

    def send(self, message: Message) -> None:
        if not self.config.secret:
            super().send(message)
            return
        timestamp = int(time.time() * 1000)
        params = {"timestamp": str(timestamp), "sign": dingtalk_sign(self.config.secret, timestamp)}
        # added to the URL's own (access_token): httpx's params= would replace them; httpx
        # URL-encodes the values (the signature's '+', '/' and '=')
        url = httpx.URL(self.url()).copy_merge_params(params)
        try:
            rsp = self.client.post(url, json=self.body(message))
        except httpx.HTTPError as exc:
            raise AlertDeliveryError(f"{type(exc).__name__}: {exc}") from None
        if not rsp.is_success:
            raise AlertDeliveryError(f"HTTP {rsp.status_code} {rsp.reason_phrase}")
        self.check(rsp)


class EmailTarget:
    """SMTP with STARTTLS (certificate verified), login when configured, one plain-text mail."""

    def __init__(self, config: AlertTarget) -> None:
        self.config = config

    def send(self, message: Message) -> None:
        c = self.config
        mail = EmailMessage()
        mail["Subject"] = message.headline
        mail["From"] = c.sender
        mail["To"] = ", ".join(c.to)
        mail["Date"] = formatdate(localtime=True)
        mail["Message-ID"] = make_msgid(domain=c.sender.rpartition("@")[2])
        mail.set_content(message.text())
        try:
            with smtplib.SMTP(c.smtp_host, c.smtp_port, timeout=c.timeout) as smtp:
                if c.starttls:
                    smtp.starttls(context=tls_context(c))
                if c.username:
                    smtp.login(c.username, c.password)
                smtp.send_message(mail)
        except (OSError, smtplib.SMTPException) as exc:
            first = (str(exc).strip().splitlines() or [""])[0]
            raise AlertDeliveryError(f"{type(exc).__name__}: {first[:200]}") from None

    def close(self) -> None:
        pass


def build_target(config: AlertTarget) -> Target:
    kinds: dict[str, type[Any]] = {
        "webhook": HttpTarget,
        "wecom": WeComTarget,
        "dingtalk": DingTalkTarget,
        "email": EmailTarget,
    }
    target: Target = kinds[config.kind](config)
    return target
