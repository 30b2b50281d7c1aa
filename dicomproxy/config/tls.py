"""The ``tls`` sub-table of ``[proxy]``, ``[pacs]``/``[[archives]]`` and ``[[peers]]`` (PS3.15 B.1)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import cast

from dicomproxy.config.reader import REQUIRED, Section


@dataclass(frozen=True)
class TlsConfig:
    """DICOM TLS for one side (PS3.15 B.1). Paths are resolved against the config file's folder."""

    #: PEM certificate (chain); required inbound, optional outbound (client certificate).
    cert: str = ""
    #: PEM private key; empty = the key is in ``cert``.
    key: str = ""
    #: PEM CA bundle: inbound, to verify client certificates; outbound, to verify the remote.
    ca: str = ""
    #: Inbound only: reject clients without a certificate signed by ``ca``.
    require_client_cert: bool = False
    #: Outbound only: the remote certificate must name the host we connect to.
    check_hostname: bool = False


def tls(parent: Section, *, inbound: bool) -> TlsConfig | None:
    """An optional ``tls`` sub-table; file paths must exist."""
    parent.used.add("tls")
    if "tls" not in parent.table:
        return None
    s = Section(parent.path, parent.key("tls"), parent.table["tls"])
    base = Path(parent.path).parent if parent.path and not parent.path.startswith("<") else Path.cwd()

    def file(name: str, required: bool) -> str:
        value = cast(str, s.string(name, REQUIRED if required else ""))
        if not value:
            return ""
        resolved = (base / value).resolve()
        if not resolved.is_file():
            raise s.error(name, f"file {resolved} does not exist")
        return str(resolved)

    cfg = TlsConfig(
        cert=file("cert", required=inbound),
        key=file("key", required=False),
        ca=file("ca", required=False),
        require_client_cert=s.boolean("require_client_cert", False) if inbound else False,
        check_hostname=s.boolean("check_hostname", False) if not inbound else False,
    )
    if cfg.require_client_cert and not cfg.ca:
        raise s.error("ca", "is required when require_client_cert = true")
    s.finish()
    return cfg
