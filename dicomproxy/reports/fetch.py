"""Fetching the view's OrderFilePath / ReportFilePath: ``http://``/``https://`` and ``ftp://`` URLs
(urllib), ``file://`` URLs and local paths; a UNC path (``\\\\ris\\reports\\a.pdf``) is read from
where the share is mounted (``[reports] shares`` — the proxy does not speak SMB). Size-capped; any
failure is a :class:`ReportUnavailable` with a reason that names no patient data.
"""

from __future__ import annotations

import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from dicomproxy.config import ReportsConfig


class ReportUnavailable(Exception):
    """The file cannot be fetched or is not a PDF or JPEG (the reason, without patient data)."""


def local_path(location: str, shares: Mapping[str, str]) -> Path:
    """A ``file://`` URL, a local path, or a UNC path under a mounted share → a local path."""
    if location.startswith("file://"):
        return Path(urllib.parse.unquote(urllib.parse.urlsplit(location).path))
    if location.startswith("\\\\") or location.startswith("//"):
        unc = location.replace("/", "\\")
        for prefix, mounted in shares.items():
            norm = prefix.replace("/", "\\").rstrip("\\")
            if unc.lower().startswith(norm.lower() + "\\"):
                rest = unc[len(norm) + 1 :].split("\\")
                return Path(mounted).joinpath(*rest)
        raise ReportUnavailable("UNC path on a share that is not mounted (see [reports] shares)")
    return Path(location)


def fetch(location: str, config: ReportsConfig) -> bytes:
    """The file's bytes (raises :class:`ReportUnavailable` with a reason)."""
    location = location.strip()
    limit = int(config.max_mb * 1024 * 1024)
    scheme = urllib.parse.urlsplit(location).scheme.lower()
    if scheme in ("http", "https", "ftp"):
        try:
            with urllib.request.urlopen(location, timeout=config.timeout) as rsp:
                data = bytes(rsp.read(limit + 1))
        except Exception as exc:  # HTTPError, URLError, timeouts, ftplib errors
            raise ReportUnavailable(f"{scheme} fetch failed: {exc}") from None
    else:
        path = local_path(location, dict(config.shares))
        try:
            with path.open("rb") as f:
                data = f.read(limit + 1)
        except OSError as exc:
            raise ReportUnavailable(f"cannot read the file: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise ReportUnavailable(f"larger than [reports] max_mb = {config.max_mb}")
    if not data:
        raise ReportUnavailable("empty file")
    return data
