"""What an operations console costs (issue 15), for benchmarks/bench_relay.py and bench_find.py:
a thread that keeps asking a proxy's HTTP console for ``/metrics`` and ``/api/status`` (a
Prometheus scrape and an open status page) once a second each; both poll less often in practice
(15 s and 2 s)."""

from __future__ import annotations

import threading
import urllib.request


class ConsoleLoad:
    def __init__(self, base_url: str, interval: float = 1.0) -> None:
        self.base_url = base_url
        self.interval = interval
        self.requests = 0
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="console-load", daemon=True)

    def __enter__(self) -> ConsoleLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            for path in ("/metrics", "/api/status"):
                try:
                    with urllib.request.urlopen(self.base_url + path, timeout=10) as resp:
                        resp.read()
                    self.requests += 1
                except OSError:
                    self.errors += 1
            self._stop.wait(self.interval)
