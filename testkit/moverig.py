"""In-process proxies, each in front of a pynetdicom PACS of its own that C-MOVEs to it, every
study visible (:class:`~testkit.fakeview.AllVisible`): the rig of the relay's mechanics tests
(onward lanes, a destination that drops, STOW-RS destinations, the bandwidth timetable).
``tests/conftest.py`` offers it as the ``move_proxies`` fixture, which stops what it started."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydicom import dcmread

from dicomproxy.app import build_context
from dicomproxy.config import Config
from dicomproxy.server import Server
from dicomproxy.transport import scu
from dicomproxy.transport.net import Remote
from testkit import free_port
from testkit.fakepacs import FakePacs
from testkit.fakeview import AllVisible

#: The proxies' AE title (the config's default), the PACS's C-MOVE destination.
PROXY_AE = "DICOMPROXY"


class MoveProxies:
    """Starts PACS + proxy pairs (:meth:`start`); :meth:`stop` stops all it holds, newest first."""

    def __init__(self, make_config: Callable[..., Config]) -> None:
        self.make_config = make_config
        #: What :meth:`stop` stops, oldest first: the PACSs and servers, and what a test adds
        #: (anything with a ``stop()``).
        self.started: list[Any] = []

    def start(
        self,
        files: Sequence[Path],
        peers: Sequence[Mapping[str, Any]],
        *,
        proxy: Mapping[str, Any] | None = None,
        before_start: Callable[[Server], None] | None = None,
        **sections: Any,
    ) -> tuple[FakePacs, Server]:
        """A PACS holding ``files`` and a proxy on a free port that retrieves from it by C-MOVE,
        with ``peers`` (``proxy`` extends its ``[proxy]``, ``sections`` its other sections), both
        started; ``before_start`` is called with the server before it listens."""
        port = free_port()
        pacs = FakePacs(list(files), destinations={PROXY_AE: Remote(PROXY_AE, "127.0.0.1", port)}).start()
        self.started.append(pacs)
        config = self.make_config(
            proxy={"port": port, **(proxy or {})},
            pacs={"ae_title": pacs.ae_title, "host": "127.0.0.1", "port": pacs.port, "retrieve": "c-move"},
            peers=[dict(p) for p in peers],
            **sections,
        )
        server = Server(config, build_context(config, view=AllVisible(), pending_interval=0.2))
        if before_start is not None:
            before_start(server)
        server.start()
        self.started.append(server)
        return pacs, server

    def stop(self) -> None:
        """Stop everything started, newest first (a server with 2 s to drain)."""
        for thing in reversed(self.started):
            if isinstance(thing, Server):
                thing.stop(drain_timeout=2.0)
            else:
                thing.stop()


def move_study(
    server: Server, destination: str, files: Sequence[Path], calling: str, timeout: float = 60
) -> scu.RetrieveSummary:
    """C-MOVE the study of ``files`` (the first file's Study Instance UID) through ``server`` to
    ``destination``, as ``calling``."""
    study = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    return scu.move(
        Remote(PROXY_AE, "127.0.0.1", server.port),
        destination,
        scu.identifier(study_uids=[study]),
        calling_ae=calling,
        timeout=timeout,
    )
