"""Real third-party DICOM peers on free loopback ports, for tests, the demo and benchmarks.

Every process started here gets ``TCP_NODELAY=1`` in its environment (DCMTK and Orthanc
read it; without it each instance stalls ~40 ms on Nagle + delayed ACK). Readiness is
polled (C-ECHO / HTTP), never slept for.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from dicomproxy.transport.net import Remote, c_echo

#: Ports this process has handed out: a port picked for a server that has not bound it yet is
#: still "free" to the kernel, and a second pick could get it again (two servers, one port).
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now and was not handed out before in this process."""
    for _ in range(100):
        with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError("no fresh free port after 100 tries")


def peer_env() -> dict[str, str]:
    env = dict(os.environ)
    env["TCP_NODELAY"] = "1"
    return env


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll ``predicate`` until true; raise TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"{what} not ready after {timeout:.0f} s")


def wait_for_echo(
    remote: Remote,
    timeout: float = 20.0,
    calling: str = "PROBE",
    proc: subprocess.Popen[bytes] | None = None,
    tls_args: Sequence[Any] | None = None,
) -> None:
    """Poll C-ECHO until ``remote`` answers (``tls_args``: for a peer that speaks DICOM TLS only)."""

    def ready() -> bool:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{remote} exited with {proc.returncode} before it was ready")
        return c_echo(calling, remote, timeout=2.0, tls_args=tls_args).ok

    wait_until(ready, timeout, f"DICOM peer {remote}", interval=0.1)


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise FileNotFoundError(f"{name} not found on PATH (install it with scripts/setup-peers.sh)")
    return path


class Process:
    """A child process with its log file; ``stop()`` terminates and reaps it.

    ``env`` adds to (or overrides) the inherited environment.
    """

    def __init__(
        self,
        args: Sequence[str],
        log_path: Path,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.args = list(args)
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc: subprocess.Popen[bytes] = subprocess.Popen(
            self.args,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**peer_env(), **(env or {})},
            cwd=cwd,
            stdin=subprocess.DEVNULL,
        )

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log_text(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")
