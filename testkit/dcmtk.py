"""Real DCMTK peers (Debian package ``dcmtk``): storescp as a destination, dcmqrscp as a PACS,
and the SCU tools run as subprocesses."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dicomproxy.transport.net import Remote
from testkit import Process, free_port, peer_env, require_tool, wait_for_echo


class StoreSCP:
    """``storescp`` writing every received instance into ``outdir``.

    ``syntaxes``: ``"all"`` (+xa, accept every supported transfer syntax) or
    ``"implicit"`` (+xi, Implicit VR Little Endian only) or ``"explicit"`` (default DCMTK).
    """

    def __init__(
        self,
        workdir: Path,
        ae_title: str = "STORESCP",
        syntaxes: str = "all",
        extra: Sequence[str] = (),
        tls_args: Sequence[Any] | None = None,
    ) -> None:
        """``extra``: more storescp options (``+tls KEY CERT ...``); ``tls_args``: what the
        readiness C-ECHO needs then (:func:`dicomproxy.transport.tls.client_tls_args`)."""
        self.tls_args = tls_args
        self.workdir = workdir
        self.outdir = workdir / "received"
        self.ae_title = ae_title
        self.port = free_port()
        self.syntaxes = syntaxes
        self.extra = list(extra)
        self.process: Process | None = None
        #: Where it is reached, and a command prefix (``ip netns exec NS`` in the link benchmark).
        self.host = "127.0.0.1"
        self.prefix: list[str] = []

    @property
    def remote(self) -> Remote:
        return Remote(self.ae_title, self.host, self.port)

    def start(self, timeout: float = 20.0) -> StoreSCP:
        exe = require_tool("storescp")
        self.outdir.mkdir(parents=True, exist_ok=True)
        flag = {"all": ["+xa"], "implicit": ["+xi"], "explicit": []}[self.syntaxes]
        args = [
            *self.prefix,
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
        wait_for_echo(self.remote, timeout, proc=self.process.proc, tls_args=self.tls_args)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    def received(self) -> list[Path]:
        return sorted(p for p in self.outdir.iterdir() if p.is_file())


#: Storage SOP classes the ``keep_syntax`` profile knows (issue 8 department objects + CT/MR/SC/SR/KO/PR).
PROFILE_STORAGE = (
    "1.2.840.10008.5.1.4.1.1.2",  # CT Image
    "1.2.840.10008.5.1.4.1.1.4",  # MR Image
    "1.2.840.10008.5.1.4.1.1.3.1",  # US Multi-frame Image
    "1.2.840.10008.5.1.4.1.1.6.1",  # US Image
    "1.2.840.10008.5.1.4.1.1.77.1.1",  # VL Endoscopic Image
    "1.2.840.10008.5.1.4.1.1.77.1.6",  # VL Whole Slide Microscopy Image
    "1.2.840.10008.5.1.4.1.1.9.1.1",  # 12-lead ECG Waveform
    "1.2.840.10008.5.1.4.1.1.9.1.2",  # General ECG Waveform
    "1.2.840.10008.5.1.4.1.1.104.1",  # Encapsulated PDF
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture
    "1.2.840.10008.5.1.4.1.1.88.11",  # Basic Text SR
    "1.2.840.10008.5.1.4.1.1.88.59",  # Key Object Selection
    "1.2.840.10008.5.1.4.1.1.11.1",  # Grayscale Softcopy Presentation State
)
_QR = (
    "1.2.840.10008.1.1",  # Verification
    "1.2.840.10008.5.1.4.1.2.1.1",  # Patient Root FIND
    "1.2.840.10008.5.1.4.1.2.1.2",  # Patient Root MOVE
    "1.2.840.10008.5.1.4.1.2.1.3",  # Patient Root GET
    "1.2.840.10008.5.1.4.1.2.2.1",  # Study Root FIND
    "1.2.840.10008.5.1.4.1.2.2.2",  # Study Root MOVE
    "1.2.840.10008.5.1.4.1.2.2.3",  # Study Root GET
)


#: Classes the department samples store as JPEG Baseline (US, endoscopy, WSI).
JPEG_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.3.1",
        "1.2.840.10008.5.1.4.1.1.6.1",
        "1.2.840.10008.5.1.4.1.1.77.1.1",
        "1.2.840.10008.5.1.4.1.1.77.1.6",
    }
)


def keep_syntax_profile() -> str:
    """A DCMTK association negotiation profile (``-xf FILE In Out``) under which dcmqrscp sends the
    department samples in their stored syntax: incoming, JPEG Baseline or uncompressed; outgoing,
    JPEG Baseline only for :data:`JPEG_CLASSES`, uncompressed for the others.

    Why: with ``-xy`` dcmqrscp proposes one context holding JPEG Baseline *and* the uncompressed
    syntaxes; a receiver that prefers uncompressed (pynetdicom picks its own first listed syntax,
    and our storage SCP lists Implicit VR first) then gets nothing, because this Debian dcmqrscp
    3.6.7 build cannot decompress JPEG; with one context per syntax for a class it takes the first
    accepted one, not the one of the file (seen here)."""
    lines = [
        "[[TransferSyntaxes]]",
        "[Uncompressed]",
        "TransferSyntax1 = LocalEndianExplicit",
        "TransferSyntax2 = OppositeEndianExplicit",
        "TransferSyntax3 = LittleEndianImplicit",
        "[JPEG]",
        "TransferSyntax1 = JPEGBaseline",
        "[Any]",
        "TransferSyntax1 = JPEGBaseline",
        "TransferSyntax2 = LocalEndianExplicit",
        "TransferSyntax3 = OppositeEndianExplicit",
        "TransferSyntax4 = LittleEndianImplicit",
        "[[PresentationContexts]]",
        "[InContexts]",
    ]
    for n, uid in enumerate((*_QR, *PROFILE_STORAGE), 1):
        lines.append(f"PresentationContext{n} = {uid}\\{'Uncompressed' if uid in _QR else 'Any'}")
    lines.append("[OutContexts]")
    for n, uid in enumerate(PROFILE_STORAGE, 1):
        lines.append(f"PresentationContext{n} = {uid}\\{'JPEG' if uid in JPEG_CLASSES else 'Uncompressed'}")
    lines += [
        "[[Profiles]]",
        "[In]",
        "PresentationContexts = InContexts",
        "[Out]",
        "PresentationContexts = OutContexts",
    ]
    return "\n".join(lines) + "\n"


class DcmQrSCP:
    """``dcmqrscp`` as a small PACS: one storage area, loaded by C-STORE (``storescu``)."""

    def __init__(
        self,
        workdir: Path,
        ae_title: str = "DCMQRSCP",
        peers: dict[str, Remote] | None = None,
        extra: Sequence[str] = (),
        max_study_mb: int = 1024,
        keep_syntax: bool = False,
    ) -> None:
        """``extra``: more dcmqrscp options; ``max_study_mb``: the storage area's per-study quota;
        ``keep_syntax``: store and send JPEG Baseline as it is (:func:`keep_syntax_profile`)."""
        self.keep_syntax = keep_syntax
        self.workdir = workdir
        self.ae_title = ae_title
        self.port = free_port()
        self.peers = dict(peers or {})
        self.extra = list(extra)
        self.max_study_mb = max_study_mb
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
            f"AETable BEGIN\n{self.ae_title} {storage} RW (2000, {self.max_study_mb}mb) ANY\nAETable END\n"
        )

    def start(self, timeout: float = 20.0) -> DcmQrSCP:
        exe = require_tool("dcmqrscp")
        self.workdir.mkdir(parents=True, exist_ok=True)
        cfg = self.workdir / "dcmqrscp.cfg"
        cfg.write_text(self._config_text())
        extra = list(self.extra)
        if self.keep_syntax:
            profile = self.workdir / "profiles.cfg"
            profile.write_text(keep_syntax_profile())
            extra += ["-xf", str(profile), "In", "Out"]
        # Fork mode: dcmqrscp 3.6.7 (Debian) segfaults after the first association with --single-process.
        self.process = Process([exe, "-c", str(cfg), "-dhl", *extra], self.workdir / "dcmqrscp.log")
        wait_for_echo(self.remote, timeout, proc=self.process.proc)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    def load(self, paths: Sequence[Path], calling: str = "LOADER") -> None:
        """C-STORE the files into the archive with DCMTK ``storescu``: ``-R`` proposes each
        file's own SOP class (VL Whole Slide Microscopy is not in storescu's default list) and
        ``-xy`` proposes JPEG Baseline, so JPEG files are stored as they are, not decompressed."""
        run_tool(
            "storescu",
            "-R",
            "-xy",
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
