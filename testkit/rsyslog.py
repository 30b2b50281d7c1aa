"""A real syslog daemon for the ATNA tests: Debian's ``rsyslogd`` in the foreground on free loopback
ports, one UDP, one TCP and (with a certificate) one TLS input (rsyslog-openssl), each written raw
(``%rawmsg%``, one message a line) to its own file."""

from __future__ import annotations

import contextlib
import socket
import time
from pathlib import Path

from testkit import Process, free_port, require_tool, wait_until


def _free_udp_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_DGRAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Rsyslog:
    def __init__(
        self, folder: Path, cert: Path | None = None, key: Path | None = None, ca: Path | None = None
    ) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.udp_port = _free_udp_port()
        self.tcp_port = free_port()
        self.tls_port = free_port() if cert is not None else 0
        self.files = {name: folder / f"{name}.log" for name in ("udp", "tcp", "tls")}
        tls = ""
        if cert is not None and key is not None and ca is not None:
            tls = f"""
input(type="imtcp" port="{self.tls_port}" address="127.0.0.1" ruleset="tls" name="tls"
      streamDriver.name="ossl" streamDriver.mode="1" streamDriver.authMode="anon"
      streamDriver.CAFile="{ca}" streamDriver.CertFile="{cert}" streamDriver.KeyFile="{key}")
"""
        self.conf = folder / "rsyslog.conf"
        self.conf.write_text(
            f"""
global(workDirectory="{folder}" maxMessageSize="64k")
module(load="imudp")
module(load="imtcp" maxSessions="20")
template(name="raw" type="string" string="%rawmsg%\\n")
input(type="imudp" port="{self.udp_port}" address="127.0.0.1" ruleset="udp")
input(type="imtcp" port="{self.tcp_port}" address="127.0.0.1" ruleset="tcp" name="tcp")
{tls}
ruleset(name="udp") {{ action(type="omfile" file="{self.files["udp"]}" template="raw") }}
ruleset(name="tcp") {{ action(type="omfile" file="{self.files["tcp"]}" template="raw") }}
ruleset(name="tls") {{ action(type="omfile" file="{self.files["tls"]}" template="raw") }}
""",
            encoding="utf-8",
        )
        self.process: Process | None = None

    def start(self, timeout: float = 20.0) -> Rsyslog:
        binary = require_tool("rsyslogd")
        self.process = Process(
            [binary, "-n", "-f", str(self.conf), "-i", str(self.folder / "rsyslogd.pid")],
            self.folder / "rsyslogd.out",
        )
        ports = [self.tcp_port] + ([self.tls_port] if self.tls_port else [])
        for port in ports:
            wait_until(lambda port=port: self._accepts(port), timeout, f"rsyslogd on tcp {port}")  # type: ignore[misc]
        # UDP: probe datagrams until one is written (the input is up and the file is there)
        with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_DGRAM)) as sock:
            deadline = time.monotonic() + timeout

            def probed() -> bool:
                sock.sendto(b"<13>1 - - probe - - - ready", ("127.0.0.1", self.udp_port))
                return "probe" in self.text("udp")

            wait_until(probed, max(1.0, deadline - time.monotonic()), "rsyslogd udp input", interval=0.2)
        return self

    def _accepts(self, port: int) -> bool:
        if self.process is not None and self.process.proc.poll() is not None:
            raise RuntimeError(f"rsyslogd exited: {self.process.log_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return True
        except OSError:
            return False

    def text(self, name: str) -> str:
        path = self.files[name]
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""

    def messages(self, name: str) -> list[str]:
        """Received lines that are syslog messages from dicomproxy."""
        return [line for line in self.text(name).splitlines() if " dicomproxy " in line]

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
