"""Several ``dicomproxy serve`` processes on one journal: the rig of the tests of what nodes share
(the push queue and its lanes, leases, the bandwidth timetable's rates), on PostgreSQL.

Every node has the same config but for its name (its data folder and log) and its port:
:func:`node_toml` writes it; :class:`ServeNodes` starts the nodes one by one as real processes,
each answering C-ECHO before the next starts, and stops them all.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomlkit

from dicomproxy.transport.net import Remote
from testkit import Process, free_port, wait_for_echo

#: Every node's AE title (they differ in port).
NODE_AE = "DICOMPROXY"


@dataclass(frozen=True)
class ServeNode:
    """One running node: its name, port, config file and process."""

    name: str
    port: int
    toml: Path
    process: Process

    @property
    def remote(self) -> Remote:
        return Remote(NODE_AE, "127.0.0.1", self.port)


def peer(remote: Remote, **extra: Any) -> dict[str, Any]:
    """A ``[[peers]]`` table for ``remote``, with ``extra`` keys."""
    return {"ae_title": remote.ae_title, "host": remote.host, "port": remote.port, **extra}


def node_toml(
    tmp: Path,
    name: str,
    port: int,
    journal_url: str,
    pacs: Remote,
    peers: Sequence[Mapping[str, Any]],
    /,
    **sections: Any,
) -> Path:
    """``tmp/NAME.toml``: node ``DICOMPROXY`` on 127.0.0.1:``port``, its data in ``tmp/NAME``, the
    SQLite view ``tmp/view.db``, ``pacs`` by C-GET, ``peers`` as ``[[peers]]``, the journal at
    ``journal_url``, the console on a port of its own (0: no fixed port shared by concurrent runs).
    Each of ``sections`` extends the table of its name (``proxy``, ``view``, ``pacs``, ``journal``,
    ``http``) or adds one (``push``; a list, such as ``bandwidth``, is an array of tables)."""
    base: dict[str, Any] = {
        "proxy": {"ae_title": NODE_AE, "host": "127.0.0.1", "port": port, "data_dir": str(tmp / name),
                  "drain_timeout": 5},
        "hospital": {"id": "74580626"},
        "view": {"url": f"sqlite:///{tmp / 'view.db'}"},
        "pacs": {"ae_title": pacs.ae_title, "host": pacs.host, "port": pacs.port, "retrieve": "c-get"},
        "peers": [dict(p) for p in peers],
        "journal": {"url": journal_url},
        "http": {"port": 0},
    }  # fmt: skip
    for key, value in sections.items():
        base[key] = {**base[key], **value} if isinstance(base.get(key), dict) else value
    path = tmp / f"{name}.toml"
    path.write_text(tomlkit.dumps(base), encoding="utf-8")
    return path


class ServeNodes:
    """``dicomproxy serve`` processes with one config but for name and port (:func:`node_toml`,
    the same arguments): :meth:`start` them, :meth:`stop` them all (in a ``finally``)."""

    def __init__(
        self,
        tmp: Path,
        journal_url: str,
        pacs: Remote,
        peers: Sequence[Mapping[str, Any]],
        /,
        *,
        calling: str,
        timeout: float = 30,
        **sections: Any,
    ) -> None:
        self.tmp = tmp
        self.journal_url = journal_url
        self.pacs = pacs
        self.peers = list(peers)
        #: A peer of the config: the AE title whose C-ECHO tells a node is ready.
        self.calling = calling
        self.timeout = timeout
        self.sections = sections
        self.nodes: list[ServeNode] = []

    def start(self, names: Sequence[str] = ("node-a", "node-b")) -> list[ServeNode]:
        """One process per name on a free port, logging to ``tmp/NAME.log``; each answers a C-ECHO
        (within ``timeout`` s) before the next starts. The nodes started so far, in order."""
        for name in names:
            port = free_port()
            toml = node_toml(self.tmp, name, port, self.journal_url, self.pacs, self.peers, **self.sections)
            process = Process(
                [sys.executable, "-m", "dicomproxy", "serve", "-c", str(toml)], self.tmp / f"{name}.log"
            )
            node = ServeNode(name, port, toml, process)
            self.nodes.append(node)
            wait_for_echo(node.remote, self.timeout, calling=self.calling, proc=process.proc)
        return self.nodes

    def stop(self) -> None:
        """Stop every node started (SIGTERM, then SIGKILL after 10 s)."""
        for node in self.nodes:
            node.process.stop()
