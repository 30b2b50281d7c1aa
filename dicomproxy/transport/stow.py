"""DICOMweb STOW-RS over HTTP (PS3.18 10.5): one request stores a batch of instances.

:class:`StowClient` posts PS3.10 files as one ``multipart/related; type="application/dicom"``
body (PS3.18 8.6.1.2), each part with its transfer syntax in its Content-Type
(``application/dicom; transfer-syntax=…``, PS3.18 8.7.3.5.2), and reads the Store Instances
Response (PS3.18 10.5.3, ``application/dicom+json``, PS3.18 F.2) into a :class:`StowReply`: which
instances were stored (Referenced SOP Sequence, with any Warning Reason) and which failed
(Failed SOP Sequence, with its Failure Reason).

The body is a generator over the files, read 1 MiB at a time, with its Content-Length computed
beforehand: a large study never sits in memory, and servers that do not take chunked requests
get a plain body. The HTTP itself (connections, keep-alive, TLS, authentication, timeouts) is
httpx, the library the alerts use; httpx writes ``multipart/form-data`` only, so the few lines
that frame a ``multipart/related`` body are here. What a reply means for each instance (retry,
fail, confirm) is decided above, in :mod:`dicomproxy.relay.stow_destination`.
"""

from __future__ import annotations

import email.utils
import ssl
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from dicomproxy.config import DicomWebConfig, TlsConfig
from dicomproxy.transport.rewritten import Rewritten

_CHUNK = 1024 * 1024

# PS3.18 10.5.3 / PS3.6: the response's attributes, as DICOM JSON keys (PS3.18 F.2)
REFERENCED_SOP_SEQUENCE = "00081199"  # (0008,1199) SQ: stored
FAILED_SOP_SEQUENCE = "00081198"  # (0008,1198) SQ: not stored
REFERENCED_SOP_INSTANCE_UID = "00081155"  # (0008,1155) UI
FAILURE_REASON = "00081197"  # (0008,1197) US
WARNING_REASON = "00081196"  # (0008,1196) US
#: PS3.18 I.2.2 / PS3.4 B.2.3 "Processing failure": a failed item that names no reason.
PROCESSING_FAILURE = 0x0110


@dataclass(frozen=True)
class Part:
    """One instance in a request: a PS3.10 file (or one rewritten in memory, its pixel data still
    on disk) in ``transfer_syntax``."""

    source: Path | Rewritten
    transfer_syntax: str

    @property
    def size(self) -> int:
        return self.source.stat().st_size if isinstance(self.source, Path) else self.source.stat_size()

    def chunks(self) -> Iterator[bytes]:
        src = self.source
        path = src if isinstance(src, Path) else src.path
        with path.open("rb") as fh:
            if isinstance(src, Rewritten):
                yield fh.read(src.start)
                yield src.head
                fh.seek(src.tail)
            while chunk := fh.read(_CHUNK):
                yield chunk


@dataclass
class StowReply:
    """One HTTP answer to a STOW-RS request."""

    status_code: int
    #: Seconds the server asked us to wait (``Retry-After``, RFC 9110 10.2.3); None = not given.
    retry_after: float | None = None
    #: SOP Instance UID → Warning Reason (None: stored without warning).
    stored: dict[str, int | None] = field(default_factory=dict)
    #: SOP Instance UID → Failure Reason.
    failed: dict[str, int] = field(default_factory=dict)
    #: A short description for the log and the journal (no patient data: the server's reason phrase).
    reason: str = ""


def part_type(transfer_syntax: str | None) -> str:
    """A part's header: a PS3.10 file, in ``transfer_syntax`` (PS3.18 8.7.3.5.2) if given."""
    if transfer_syntax is None:
        return "Content-Type: application/dicom"
    return f"Content-Type: application/dicom; transfer-syntax={transfer_syntax}"


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After``: delay-seconds or an HTTP-date (RFC 9110 10.2.3); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _uid(item: dict[str, Any]) -> str | None:
    values = item.get(REFERENCED_SOP_INSTANCE_UID, {}).get("Value") or []
    return str(values[0]) if values else None


def _number(item: dict[str, Any], key: str) -> int | None:
    values = item.get(key, {}).get("Value") or []
    return int(values[0]) if values else None


def parse_reply(status_code: int, body: Any) -> StowReply:
    """The per-instance results of a Store Instances Response (PS3.18 10.5.3.2, JSON per F.2)."""
    reply = StowReply(status_code)
    if isinstance(body, list):  # some servers answer with a one-element array of data sets
        body = body[0] if body else {}
    if not isinstance(body, dict):
        return reply
    for item in body.get(REFERENCED_SOP_SEQUENCE, {}).get("Value") or []:
        uid = _uid(item)
        if uid:
            reply.stored[uid] = _number(item, WARNING_REASON)
    for item in body.get(FAILED_SOP_SEQUENCE, {}).get("Value") or []:
        uid = _uid(item)
        if uid:
            reason = _number(item, FAILURE_REASON)
            reply.failed[uid] = PROCESSING_FAILURE if reason is None else reason
    return reply


def _ssl_context(tls: TlsConfig | None) -> ssl.SSLContext:
    """The server's certificate always verified, host name included (RFC 2818); ``tls.cert``
    presented when the server asks for a client certificate."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=(tls.ca or None) if tls else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls is not None and tls.cert:
        ctx.load_cert_chain(tls.cert, tls.key or None)
    return ctx


class StowClient:
    """Posts batches to one STOW-RS endpoint over one httpx connection pool."""

    def __init__(
        self, cfg: DicomWebConfig, tls: TlsConfig | None, timeout: float, connect_timeout: float
    ) -> None:
        self.url = cfg.url
        self.name_syntax = cfg.transfer_syntax_param
        headers = {"Accept": "application/dicom+json"}
        auth: httpx.Auth | None = None
        if cfg.token:
            headers["Authorization"] = f"Bearer {cfg.token}"
        elif cfg.username:
            auth = httpx.BasicAuth(cfg.username, cfg.password)
        self._http = httpx.Client(
            headers=headers,
            auth=auth,
            verify=_ssl_context(tls),
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            follow_redirects=False,
        )

    def post(self, parts: list[Part]) -> StowReply:
        """One STOW-RS request of ``parts``; raises ``httpx.TransportError`` when no answer came."""
        boundary = uuid.uuid4().hex
        heads = [
            f"--{boundary}\r\n{part_type(p.transfer_syntax if self.name_syntax else None)}\r\n\r\n".encode()
            for p in parts
        ]
        closing = f"--{boundary}--\r\n".encode()
        length = sum(len(h) + p.size + 2 for h, p in zip(heads, parts, strict=True)) + len(closing)

        def body() -> Iterator[bytes]:
            for head, part in zip(heads, parts, strict=True):
                yield head
                yield from part.chunks()
                yield b"\r\n"
            yield closing

        rsp = self._http.post(
            self.url,
            content=body(),
            headers={
                "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                "Content-Length": str(length),
            },
        )
        try:
            data = rsp.json() if "json" in rsp.headers.get("content-type", "") else None
        except ValueError:
            data = None
        reply = parse_reply(rsp.status_code, data)
        reply.retry_after = retry_after(rsp.headers.get("retry-after"))
        reply.reason = f"HTTP {rsp.status_code} {rsp.reason_phrase}".strip()
        return reply

    def probe(self) -> tuple[bool, str]:
        """Whether the endpoint answers, with our TLS and credentials: one ``GET`` of the URL (a
        QIDO-RS study search with ``limit=1``, PS3.18 10.6, where the server offers one). Any answer
        but 401/403/407 or 5xx is taken as reachable (a STOW-only endpoint may answer 405)."""
        try:
            rsp = self._http.get(self.url, params={"limit": "1"})
        except httpx.HTTPError as exc:
            return False, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        answer = f"HTTP {rsp.status_code} {rsp.reason_phrase}".strip()
        if rsp.status_code in (401, 403, 407):
            return False, f"{answer}: check the token, the username/password or the client certificate"
        if rsp.status_code >= 500:
            return False, answer
        return True, f"reachable ({answer} to a GET)"

    def close(self) -> None:
        self._http.close()
