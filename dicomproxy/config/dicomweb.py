"""The DICOMweb part of a ``[[peers]]`` entry with ``kind = "dicomweb"`` (a STOW-RS endpoint, PS3.18 10.5).

Secrets (``token``, ``password``) are written as ``${NAME}`` and taken from the environment at
load, like every other secret of the file. The TLS client certificate and the CA bundle are the
peer's ``tls`` sub-table (``cert``, ``key``, ``ca``); an ``https`` server's certificate is always
verified, host name included (RFC 2818), against ``ca`` or the system's CAs.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from dicomproxy.config.reader import Section

#: ``[[peers]] kind``: reached by DIMSE C-STORE (PS3.4 B.2) or by DICOMweb STOW-RS (PS3.18 10.5).
PEER_KINDS: tuple[str, ...] = ("dimse", "dicomweb")


@dataclass(frozen=True)
class DicomWebConfig:
    """Where and how instances are stored by STOW-RS."""

    #: The STOW-RS endpoint: the service's base URL followed by ``/studies`` (PS3.18 10.5.1).
    url: str
    #: ``Authorization: Bearer <token>`` (RFC 6750); empty = none.
    token: str = ""
    #: HTTP basic authentication (RFC 7617); both or neither.
    username: str = ""
    password: str = ""
    #: Most instances in one request (one multipart/related body, PS3.18 8.6.1.2).
    max_batch: int = 50
    #: Most MiB in one request; an instance larger than this goes alone.
    max_batch_mb: int = 64
    #: Name each part's syntax in its Content-Type (``application/dicom; transfer-syntax=…``,
    #: PS3.18 8.7.3.5.2). The file's meta information names it too; Orthanc's DICOMweb plugin 1.7
    #: (Debian 12) refuses parts with the parameter (HTTP 415), so it can be left out.
    transfer_syntax_param: bool = True


def dicomweb(s: Section) -> DicomWebConfig:
    """The DICOMweb keys of one ``[[peers]]`` entry (``s`` is the entry; ``finish`` is the caller's)."""
    url = s.string("url")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise s.error("url", f"{url!r} is not an http:// or https:// URL")
    token = s.string("token", "")
    username = s.string("username", "")
    password = s.string("password", "")
    if bool(username) != bool(password):
        raise s.error("password" if username else "username", "username and password go together")
    if token and username:
        raise s.error("token", "give a bearer token or a username and password, not both")
    return DicomWebConfig(
        url=url.rstrip("/"),
        token=token,
        username=username,
        password=password,
        max_batch=s.integer("max_batch", 50, lo=1, hi=10000),
        max_batch_mb=s.integer("max_batch_mb", 64, lo=1, hi=65536),
        transfer_syntax_param=s.boolean("transfer_syntax_param", True),
    )
