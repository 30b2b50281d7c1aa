"""DICOM TLS (PS3.15 Annex B, BCP 195 profile): SSL contexts for both sides, built from config.

Inbound (``[proxy.tls]``): our certificate and key; with ``ca`` and ``require_client_cert``
a client must present a certificate signed by that CA. Outbound (``[pacs.tls]``,
``[[peers]] tls``): verify the remote's certificate against ``ca`` (or the system store),
present ``cert``/``key`` if the remote asks for one.
"""

from __future__ import annotations

import ssl
from typing import Any

from dicomproxy.config import TlsConfig


def server_context(cfg: TlsConfig) -> ssl.SSLContext:
    """Context for ``AE.start_server(ssl_context=...)``."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # BCP 195
    ctx.load_cert_chain(cfg.cert, cfg.key or None)
    if cfg.ca:
        ctx.load_verify_locations(cfg.ca)
    ctx.verify_mode = (
        ssl.CERT_REQUIRED if cfg.require_client_cert else ssl.CERT_OPTIONAL if cfg.ca else ssl.CERT_NONE
    )
    return ctx


def client_context(cfg: TlsConfig) -> ssl.SSLContext:
    """Context for outgoing associations; ``Purpose.SERVER_AUTH`` (pynetdicom #709)."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cfg.ca or None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = cfg.check_hostname
    if cfg.cert:
        ctx.load_cert_chain(cfg.cert, cfg.key or None)
    return ctx


def client_tls_args(cfg: TlsConfig | None, host: str) -> tuple[Any, ...] | None:
    """``tls_args`` for ``AE.associate`` (and C-MOVE sub-association kwargs), or None for plain TCP."""
    if cfg is None:
        return None
    return (client_context(cfg), host)
