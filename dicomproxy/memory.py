"""Process-wide memory settings, applied once when ``dicomproxy serve`` starts.

glibc malloc gives threads their own arenas, up to 8 per core (16 on this project's 2-core VM). The
proxy runs two threads per association (pynetdicom's association and DUL reactor), ~60 under the
soak's load, and each arena keeps memory its threads freed: in a 2-minute soak the arena heaps grew
from 15 MB at 10 s of load to 28 MB at 115 s while Python's own allocations stayed flat, and with
the arenas capped at 2 the proxy ended 11–19 MB lower, with no visible throughput cost (the GIL
already serialises most allocations). Numbers: docs/performance.md, "Soak memory".

``DICOMPROXY_MALLOC_ARENAS`` sets the cap (default 2; ``0`` leaves glibc's default). When glibc's own
``MALLOC_ARENA_MAX`` is in the environment it wins and nothing is changed here. A no-op on anything
but Linux with glibc (musl, macOS, Windows).
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from collections.abc import Mapping
from typing import Any

from dicomproxy.errors import ConfigError

LOG = logging.getLogger("dicomproxy.memory")

ENV_VAR = "DICOMPROXY_MALLOC_ARENAS"
DEFAULT_ARENAS = 2
M_ARENA_MAX = -8  # glibc malloc.h


def _glibc() -> Any | None:
    """The process's C library when it is glibc, else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it (AttributeError elsewhere)
        return libc
    except (OSError, AttributeError):
        return None


def limit_malloc_arenas(env: Mapping[str, str] | None = None, libc: Any | None = None) -> int | None:
    """Cap glibc's malloc arenas with ``mallopt(M_ARENA_MAX, n)``; return n, or None if nothing was set.

    Call it before the server starts its threads (arenas that exist already are kept).
    ``libc`` is for tests; by default the process's own C library, when it is glibc.
    """
    env = os.environ if env is None else env
    if "MALLOC_ARENA_MAX" in env:  # glibc read it at start-up: the operator's choice stands
        return None
    raw = env.get(ENV_VAR, "").strip()
    try:
        arenas = int(raw) if raw else DEFAULT_ARENAS
    except ValueError:
        arenas = -1
    if arenas < 0:
        raise ConfigError(
            "environment", ENV_VAR, f"{raw!r}: expected a number of arenas, 0 = glibc's default"
        )
    if arenas == 0:
        return None
    libc = libc if libc is not None else _glibc()
    if libc is None or not hasattr(libc, "gnu_get_libc_version"):
        return None
    if libc.mallopt(M_ARENA_MAX, arenas) != 1:  # glibc returns 1 on success
        LOG.warning("mallopt(M_ARENA_MAX, %d) failed; glibc's default arenas are kept", arenas)
        return None
    LOG.debug("glibc malloc arenas capped at %d (%s)", arenas, ENV_VAR)
    return arenas
