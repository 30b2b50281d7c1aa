"""Real DCMTK peers (Debian package ``dcmtk``): storescp as a destination, dcmqrscp as a PACS,
and the SCU tools run as subprocesses."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

from dicomproxy.net import Remote
from dicomproxy.testing import Process, free_port, peer_env, require_tool, wait_for_echo


class StoreSCP:
    """``storescp`` writing every received instance into ``outdir``.

    ``syntaxes``: ``"all"`` (+xa, accept every supported transfer syntax) or
    ``"implicit"`` (+xi, Implicit VR Little Endian only) or ``"explicit"`` (default DCMTK).
    """

    def __init__(
        self, workdir: Path, ae_title: str = "STORESCP", syntaxes: str = "all", extra: Sequence[str] = ()
    ) -> None:
        self.workdir = workdir
        self.outdir = workdir / "received"
        self.ae_title = ae_title
        self.port = free_port()
        self.syntaxes = syntaxes
        self.extra = list(extra)
        self.process: Process | None = None

    @property
    def remote(self) -> Remote:
        return Remote(self.ae_title, "127.0.0.1", self.port)

    def start(self, timeout: float = 20.0) -> StoreSCP:
        exe = require_tool("storescp")
        self.outdir.mkdir(parents=True, exist_ok=True)
        flag = {"all": ["+xa"], "implicit": ["+xi"], "explicit": []}[self.syntaxes]
        args = [
            exe,
            "-aet",
            self.ae_title,
            "-od",
            str(self.outdir),
            *flag,
            "-dhl",
            *self.extra,
            str(self.port),
        ]
        self.process = Process(args, self.workdir / f"storescp-{self.port}.log")
        wait_for_echo(self.remote, timeout, proc=self.process.proc)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    def received(self) -> list[Path]:
        return sorted(p for p in self.outdir.iterdir() if p.is_file())


class DcmQrSCP:
    """``dcmqrscp`` as a small PACS: one storage area, loaded by C-STORE (``storescu``)."""

    def __init__(
        self, workdir: Path, ae_title: str = "DCMQRSCP", peers: dict[str, Remote] | None = None
    ) -> None:
        self.workdir = workdir
        self.ae_title = ae_title
        self.port = free_port()
        self.peers = dict(peers or {})
        self.process: Process | None = None

    @property
    def remote(self) -> Remote:
        return Remote(self.ae_title, "127.0.0.1", self.port)

    def _config_text(self) -> str:
        storage = self.workdir / "db"
        storage.mkdir(parents=True, exist_ok=True)
        hosts = "\n".join(f"{name} = ({r.ae_title}, {r.host}, {r.port})" for name, r in self.peers.items())
        return (
            f"NetworkTCPPort = {self.port}\nMaxPDUSize = 131072\nMaxAssociations = 16\n\n"
            f"HostTable BEGIN\n{hosts}\nHostTable END\n\nVendorTable BEGIN\nVendorTable END\n\n"
            f"AETable BEGIN\n{self.ae_title} {storage} RW (2000, 1024mb) ANY\nAETable END\n"
        )

    def start(self, timeout: float = 20.0) -> DcmQrSCP:
        exe = require_tool("dcmqrscp")
        self.workdir.mkdir(parents=True, exist_ok=True)
        cfg = self.workdir / "dcmqrscp.cfg"
        cfg.write_text(self._config_text())
        # Fork mode: dcmqrscp 3.6.7 (Debian) segfaults after the first association with --single-process.
        self.process = Process([exe, "-c", str(cfg), "-dhl"], self.workdir / "dcmqrscp.log")
        wait_for_echo(self.remote, timeout, proc=self.process.proc)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    def load(self, paths: Sequence[Path], calling: str = "LOADER") -> None:
        """C-STORE the files into the archive with DCMTK ``storescu``."""
        run_tool(
            "storescu",
            "-aet",
            calling,
            "-aec",
            self.ae_title,
            "127.0.0.1",
            str(self.port),
            *map(str, paths),
            check=True,
        )


def run_tool(
    name: str, *args: str, check: bool = False, timeout: float = 120.0
) -> subprocess.CompletedProcess[str]:
    """Run a DCMTK command-line tool with TCP_NODELAY=1; output as text (errors replaced)."""
    exe = require_tool(name)
    return subprocess.run(
        [exe, *args],
        capture_output=True,
        text=True,
        errors="replace",
        env=peer_env(),
        timeout=timeout,
        check=check,
        stdin=subprocess.DEVNULL,
    )


__all__ = ["DcmQrSCP", "StoreSCP", "free_port", "run_tool"]
