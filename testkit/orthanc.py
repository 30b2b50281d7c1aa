"""A real Orthanc (Debian package) as the hospital PACS, on free ports, with its REST API."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dicomproxy.transport.net import Remote
from testkit import Process, free_port, require_tool, wait_for_echo, wait_until

#: Where Debian's ``orthanc-dicomweb`` puts the plugin.
DICOMWEB_PLUGIN_DIR = "/usr/share/orthanc/plugins"


class Orthanc:
    """Start with :meth:`start`, load with :meth:`upload`, register move targets with :meth:`add_modality`."""

    def __init__(
        self,
        workdir: Path,
        ae_title: str = "ORTHANC",
        modalities: dict[str, Remote] | None = None,
        settings: dict[str, Any] | None = None,
        tls_args: Sequence[Any] | None = None,
        dicomweb: bool = False,
    ) -> None:
        """``settings``: more Orthanc configuration (e.g. ``DicomTlsEnabled`` and its files);
        ``tls_args``: what the readiness C-ECHO needs when the DICOM port speaks TLS only;
        ``dicomweb``: load the DICOMweb plugin (Debian ``orthanc-dicomweb``), STOW-RS at :attr:`stow_url`."""
        self.settings = dict(settings or {})
        self.dicomweb = dicomweb
        self.tls_args = tls_args
        self.workdir = workdir
        self.ae_title = ae_title
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.modalities = dict(modalities or {})
        self.process: Process | None = None

    @property
    def remote(self) -> Remote:
        return Remote(self.ae_title, "127.0.0.1", self.dicom_port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def stow_url(self) -> str:
        """The DICOMweb plugin's STOW-RS endpoint (PS3.18 10.5.1)."""
        return f"{self.url}/dicom-web/studies"

    def _plugins(self) -> list[str]:
        if not self.dicomweb:
            return []
        found = sorted(Path(DICOMWEB_PLUGIN_DIR).glob("libOrthancDicomWeb.so*"))
        if not found:
            raise FileNotFoundError(
                f"no Orthanc DICOMweb plugin in {DICOMWEB_PLUGIN_DIR} (scripts/setup-peers.sh)"
            )
        return [str(found[0])]

    def _config(self) -> dict[str, Any]:
        return {
            "Name": "dicomproxy-test-pacs",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"),
            "HttpPort": self.http_port,
            "HttpServerEnabled": True,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomAet": self.ae_title,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowFind": True,
            "DicomAlwaysAllowGet": True,
            "DicomAlwaysAllowMove": True,
            "DicomCheckModalityHost": False,
            "DicomScpTimeout": 60,
            "DicomScuTimeout": 60,
            "DefaultEncoding": "Utf8",
            "StableAge": 1,
            "SaveJobs": False,
            "Plugins": self._plugins(),
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True},
            "ConcurrentJobs": 2,
            "DicomModalities": {name: [r.ae_title, r.host, r.port] for name, r in self.modalities.items()},
            "DicomModalitiesInDatabase": False,
            "HttpTimeout": 60,
            "KeepAlive": True,
            "TcpNoDelay": True,
            **self.settings,
        }

    def start(self, timeout: float = 30.0) -> Orthanc:
        exe = require_tool("Orthanc")
        self.workdir.mkdir(parents=True, exist_ok=True)
        cfg = self.workdir / "orthanc.json"
        cfg.write_text(json.dumps(self._config(), indent=1))
        self.process = Process([exe, str(cfg)], self.workdir / "orthanc.log", cwd=self.workdir)
        wait_until(self._http_ready, timeout, f"Orthanc HTTP on {self.http_port}", interval=0.1)
        wait_for_echo(self.remote, timeout, proc=self.process.proc, tls_args=self.tls_args)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    def _http_ready(self) -> bool:
        if self.process is not None and self.process.proc.poll() is not None:
            raise RuntimeError(f"Orthanc exited: {self.process.log_text()[-2000:]}")
        try:
            self.request("GET", "/system")
            return True
        except (urllib.error.URLError, ConnectionError, OSError):
            return False

    def request(self, method: str, path: str, body: bytes | dict[str, Any] | list[Any] | None = None) -> Any:
        data: bytes | None
        headers = {}
        if isinstance(body, (dict, list)):
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        else:
            data = body
            if body is not None:
                headers["Content-Type"] = "application/dicom"
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        with urllib.request.urlopen(req, timeout=60) as rsp:
            raw = rsp.read()
        return json.loads(raw) if raw else None

    def raw(self, path: str) -> bytes:
        """A GET's body as it is (e.g. ``/instances/{id}/file``: the stored PS3.10 file)."""
        with urllib.request.urlopen(self.url + path, timeout=60) as rsp:
            return bytes(rsp.read())

    def upload(self, paths: list[Path]) -> None:
        for path in paths:
            self.request("POST", "/instances", path.read_bytes())

    def add_modality(self, name: str, remote: Remote, tls: bool = False) -> None:
        """Register a C-MOVE destination (REST ``PUT /modalities/{name}``); ``tls``: reach it with
        DICOM TLS (``UseDicomTls``, Orthanc >= 1.9.0, with the server's own certificate)."""
        body: dict[str, Any] = {"AET": remote.ae_title, "Host": remote.host, "Port": remote.port}
        if tls:
            body["UseDicomTls"] = True
        self.request("PUT", f"/modalities/{name}", body)

    def study_ids(self) -> list[str]:
        return list(self.request("GET", "/studies"))

    def clear(self) -> None:
        for sid in self.study_ids():
            self.request("DELETE", f"/studies/{sid}")

    def instance_count(self) -> int:
        return int(self.request("GET", "/statistics")["CountInstances"])
