"""A shaped link: a network namespace joined to this one by a veth pair, both ends shaped with
``tc qdisc … tbf`` (this kernel has tbf and htb, not netem). Root needed.

A peer started with :attr:`ShapedLink.prefix` (``ip netns exec NS``) listens on
:attr:`ShapedLink.ns_ip`; what is sent to it crosses the shaped veth, and :meth:`ShapedLink.tx_bytes`
counts it on the host side. Used by ``benchmarks/bench_link.py`` and ``tests/test_bandwidth_link.py``.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def sh(*cmd: str, check: bool = True) -> None:
    subprocess.run(cmd, check=check, capture_output=True)


class ShapedLink:
    """Names and addresses of one namespace (unique per process: several test workers at once)."""

    def __init__(self, tag: str | None = None) -> None:
        tag = tag or str(os.getpid() % 100_000)
        self.ns = f"dp{tag}"
        self.host_side, self.ns_side = f"dp{tag}a", f"dp{tag}b"  # interface names: 15 bytes at most
        octet = int(tag) % 250 + 1 if tag.isdigit() else 77
        self.host_ip, self.ns_ip = f"10.78.{octet}.1", f"10.78.{octet}.2"
        self.prefix = ["ip", "netns", "exec", self.ns]

    def shape(self, rate_mbit: float) -> None:
        """tbf on both ends of the veth (each direction of the link): ``rate_mbit`` Mbit/s."""
        # burst ≥ one GSO segment (64 kB) or tbf drops it; 50 ms of queue
        for prefix, dev in (((), self.host_side), (tuple(self.prefix), self.ns_side)):
            sh(*prefix, "tc", "qdisc", "del", "dev", dev, "root", check=False)
            sh(*prefix, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", f"{rate_mbit}mbit",
               "burst", "128kb", "latency", "50ms")  # fmt: skip

    def tx_bytes(self) -> int:
        """Bytes the host side sent toward the namespace so far."""
        return int(Path(f"/sys/class/net/{self.host_side}/statistics/tx_bytes").read_text())

    @contextmanager
    def up(self) -> Iterator[ShapedLink]:
        """The namespace and its veth pair, deleted afterwards (also after a crash of the body)."""
        self.down()
        sh("ip", "netns", "add", self.ns)
        try:
            sh("ip", "link", "add", self.host_side, "type", "veth", "peer", "name", self.ns_side)
            sh("ip", "link", "set", self.ns_side, "netns", self.ns)
            sh("ip", "addr", "add", f"{self.host_ip}/24", "dev", self.host_side)
            sh("ip", "link", "set", self.host_side, "up")
            for cmd in (
                ("ip", "addr", "add", f"{self.ns_ip}/24", "dev", self.ns_side),
                ("ip", "link", "set", self.ns_side, "up"),
                ("ip", "link", "set", "lo", "up"),
            ):
                sh(*self.prefix, *cmd)
            yield self
        finally:
            self.down()

    def down(self) -> None:
        sh("ip", "netns", "del", self.ns, check=False)
        sh("ip", "link", "del", self.host_side, check=False)


class RateProbe:
    """Samples :meth:`ShapedLink.tx_bytes` every ``every`` seconds while running; :meth:`mbps` is the
    rate between the moments 10 % and 90 % of the bytes had gone (start-up and tail left out)."""

    def __init__(self, link: ShapedLink, every: float = 0.01) -> None:
        self.link = link
        self.every = every
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RateProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), self.link.tx_bytes()))
            self._stop.wait(self.every)
        self.samples.append((time.monotonic(), self.link.tx_bytes()))

    @property
    def total(self) -> int:
        return self.samples[-1][1] - self.samples[0][1]

    def mbps(self) -> float:
        base, total = self.samples[0][1], self.total
        t10 = next(t for t, b in self.samples if b - base >= 0.1 * total)
        t90 = next(t for t, b in self.samples if b - base >= 0.9 * total)
        return 0.8 * total * 8 / 1e6 / (t90 - t10)
