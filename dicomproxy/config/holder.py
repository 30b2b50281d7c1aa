"""The running process's current :class:`~dicomproxy.config.Config`, replaced whole by a reload.

A component that serves many associations or jobs keeps the :class:`Settings` and reads
:attr:`Settings.current` once at the start of each association, job or push pass; the frozen
``Config`` it got stays the same for that unit of work whatever a reload does meanwhile (a
running transfer finishes with the settings it started with). The swap is one reference
assignment under a lock (the design of uvicorn's and hypercorn's reloading servers); listeners
registered with :meth:`Settings.subscribe` are called after it, in order, on the reloading thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # document.py imports nothing from here; the type only names it
    from dicomproxy.config.document import Config

Listener = Callable[["Config"], None]


class Settings:
    """Holder of the current Config; ``replace`` is the only way it changes."""

    def __init__(self, config: Config) -> None:
        self._current = config
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []

    @property
    def current(self) -> Config:
        """The Config a new association, job or pass uses (keep the object for its whole run)."""
        return self._current

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener(new_config)`` after each :meth:`replace` (e.g. the push service)."""
        with self._lock:
            self._listeners.append(listener)

    def replace(self, config: Config) -> Config:
        """Make ``config`` current, tell the listeners; returns the Config it replaced.
        Reloads are serialised: a second waits until the first one's listeners ran."""
        with self._lock:
            old, self._current = self._current, config
            for listener in list(self._listeners):
                listener(config)
        return old


def as_settings(config: Config | Settings) -> Settings:
    """Normalise a constructor argument: a fixed Config (tests, one-shot commands) or the serve's
    Settings."""
    return config if isinstance(config, Settings) else Settings(config)
