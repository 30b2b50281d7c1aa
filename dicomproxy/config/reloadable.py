"""What a reload may change in a running process, and what needs a restart.

:func:`changed_keys` compares two frozen configs key by key (dotted names as in the file:
``proxy.port``, ``compression.mode``; a list of tables such as ``peers`` is one key).
:func:`plan_reload` builds the config a reload applies: the new file's values for the keys in
:data:`RELOADABLE` (read by each new association, job or push pass), the running values for
every other key, which it names (docs/operations.md, Reload). A reload with a restart-only change
still applies the rest rather than refusing the whole file: the operator who edited a peer and a
port gets the peer now and is told the port waits for a restart.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from dicomproxy.config.document import Config
from dicomproxy.config.reader import is_loopback
from dicomproxy.errors import ConfigError

#: Keys (or whole sections) a reload applies: to new associations (the access rules of
#: ``[[peers]]``), to new jobs (a peer's compression, ``[compression]``), to the next push pass
#: or job (``[push]`` filters, window, bandwidth, retries), to the next console request (tokens),
#: and the log level at once.
RELOADABLE: tuple[str, ...] = (
    "peers",
    "compression",
    "push",
    "corrections",
    "http.token",
    "http.operator_token",
    "http.auditor_token",
    "logging.level",
)
#: Inside a reloadable section, these are fixed at start (threads and process pools are sized,
#: the push watermark is placed, once).
HELD: tuple[str, ...] = (
    "compression.workers",
    "push.enabled",
    "push.start_from",
    "push.max_concurrent",
    "push.backfill_concurrent",
    "corrections.enabled",
)
#: Not a setting: the file the process reads (a reload re-reads the same one).
IGNORED: tuple[str, ...] = ("path",)


def _under(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def is_reloadable(key: str) -> bool:
    """Whether a reload applies ``key`` (a dotted name from :func:`changed_keys`)."""
    return _under(key, RELOADABLE) and not _under(key, HELD)


def _is_section(value: Any) -> bool:
    return dataclasses.is_dataclass(value) and not isinstance(value, type)


def changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted names of the keys whose values differ, in the dataclasses' field order."""
    if not (_is_section(old) and _is_section(new) and type(old) is type(new)):
        return [] if old == new else [prefix]
    out: list[str] = []
    for f in dataclasses.fields(old):
        key = f"{prefix}.{f.name}" if prefix else f.name
        if key not in IGNORED:
            out.extend(changed_keys(getattr(old, f.name), getattr(new, f.name), key))
    return out


def _merge(old: Any, new: Any, prefix: str) -> Any:
    """``new`` with every restart-only key's value taken from ``old`` (sections key by key)."""
    if not (_is_section(old) and _is_section(new) and type(old) is type(new)):
        return new if is_reloadable(prefix) else old
    values = {}
    for f in dataclasses.fields(old):
        key = f"{prefix}.{f.name}" if prefix else f.name
        mine, theirs = getattr(old, f.name), getattr(new, f.name)
        values[f.name] = theirs if key in IGNORED else _merge(mine, theirs, key)
    return dataclasses.replace(old, **values)


@dataclass(frozen=True)
class ReloadPlan:
    """What a reload does: the config to make current, the keys it changes, those it leaves."""

    applied: Config
    changed: tuple[str, ...]
    restart: tuple[str, ...]


def plan_reload(running: Config, loaded: Config) -> ReloadPlan:
    """The reload of ``loaded`` (a valid file) into a process running ``running``.

    Raises ConfigError when the combination is not valid (a console token removed while the
    running console listens off loopback, whose host only a restart changes)."""
    keys = changed_keys(running, loaded)
    applied = _merge(running, loaded, "")
    http = applied.http
    if (
        http.port
        and not is_loopback(http.host)
        and not any(t.strip() for t in (http.token, http.operator_token, http.auditor_token))
    ):
        raise ConfigError(
            loaded.path, "http.token", f"is required: the running console listens on {http.host!r}"
        )
    return ReloadPlan(
        applied,
        tuple(k for k in keys if is_reloadable(k)),
        tuple(k for k in keys if not is_reloadable(k)),
    )
