"""Reading one TOML table: typed getters whose every error names the file and the dotted key.

``${NAME}`` in any string value is replaced from the environment; a missing variable is an error.
Relative paths (files, SQLite databases) are taken from the config file's folder.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar, cast

from dicomproxy.errors import ConfigError

_AE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # PS3.5 6.2: AE, 16 chars, no backslash
_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")

#: The default of a key that must be given.
REQUIRED: Any = object()

_Entry = TypeVar("_Entry")


def is_ae_title(value: str) -> bool:
    """PS3.5 6.2 AE: 1-16 characters of the default repertoire without backslash or control
    characters, not all spaces (leading/trailing spaces are not significant)."""
    return bool(_AE_RE.fullmatch(value)) and bool(value.strip())  # match: "$" passes a final "\n"


class Section:
    """Reads one TOML table; every error names the file and the dotted key."""

    def __init__(self, path: str, prefix: str, table: Any) -> None:
        self.path = path
        self.prefix = prefix
        if not isinstance(table, Mapping):
            raise ConfigError(path, prefix, f"must be a table, not {type(table).__name__}")
        self.table: Mapping[str, Any] = table
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def error(self, name: str, problem: str) -> ConfigError:
        return ConfigError(self.path, self.key(name), problem)

    def _get(self, name: str, default: Any) -> Any:
        self.used.add(name)
        if name not in self.table:
            if default is REQUIRED:
                raise self.error(name, "is required")
            return default
        return self.table[name]

    def value(self, name: str, default: Any = REQUIRED) -> Any:
        """The key's TOML value as it is (a table or mixed shape the typed getters below do not read)."""
        return self._get(name, default)

    def string(self, name: str, default: Any = REQUIRED, *, choices: tuple[str, ...] = ()) -> Any:
        value = self._get(name, default)
        if value is default and default is not REQUIRED:
            return value
        if not isinstance(value, str):
            raise self.error(name, f"must be a string, not {type(value).__name__}")
        value = expand_env(value, self)
        if choices and value not in choices:
            raise self.error(name, f"must be one of {', '.join(choices)}, not {value!r}")
        return value

    def ae_title(self, name: str, default: Any = REQUIRED) -> str:
        value = cast(str, self.string(name, default))
        if not is_ae_title(value):
            raise self.error(
                name, f"{value!r} is not a valid AE title (1-16 printable ASCII characters, no '\\')"
            )
        return value.strip()

    def integer(
        self, name: str, default: Any = REQUIRED, *, lo: int | None = None, hi: int | None = None
    ) -> int:
        value = self._get(name, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(name, f"must be an integer, not {value!r}")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            if hi is None:
                raise self.error(name, f"must be >= {lo}, not {value}")
            if lo is None:
                raise self.error(name, f"must be <= {hi}, not {value}")
            raise self.error(name, f"must be between {lo} and {hi}, not {value}")
        return value

    def number(self, name: str, default: Any = REQUIRED, *, lo: float = 0.0) -> float:
        value = self._get(name, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(name, f"must be a number, not {value!r}")
        if value < lo:
            raise self.error(name, f"must be >= {lo}, not {value}")
        return float(value)

    def boolean(self, name: str, default: Any = REQUIRED) -> bool:
        value = self._get(name, default)
        if not isinstance(value, bool):
            raise self.error(name, f"must be true or false, not {value!r}")
        return value

    def strings(self, name: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        value = self._get(name, default)
        if value is default:
            return default
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(name, "must be a list of strings")
        return tuple(expand_env(v, self) for v in value)

    def child(self, name: str, *, required: bool = True) -> Section:
        """A top-level ``[name]`` table of this document (empty when optional and absent)."""
        self.used.add(name)
        if name not in self.table:
            if required:
                raise ConfigError(self.path, f"[{name}]", "section is required")
            return Section(self.path, name, {})
        return Section(self.path, name, self.table[name])

    def tables(self, name: str) -> Iterator[Section]:
        """A top-level ``[[name]]`` array of tables, each read as ``name[i]`` when its turn comes."""
        self.used.add(name)
        raw = self.table.get(name, [])
        if not isinstance(raw, list):
            raise ConfigError(self.path, name, f"must be an array of tables ([[{name}]])")
        return (Section(self.path, f"{name}[{i}]", table) for i, table in enumerate(raw))

    def finish(self) -> None:
        unknown = sorted(set(self.table) - self.used)
        if unknown:
            raise self.error(unknown[0], "unknown key (check its spelling)")


def unique_entries(
    entries: Iterable[Section],
    parse: Callable[[Section], _Entry],
    key: str,
    repeated: str,
    taken: Iterable[object] = (),
) -> tuple[_Entry, ...]:
    """The entries of a ``[[name]]`` array, each read by ``parse``, whose ``key`` (the parsed
    entry's attribute of that name) no other entry has: a repeated value (or one in ``taken``) is a
    ``ConfigError`` naming the file and the entry's key, ``'VALUE' repeated``."""
    found: list[_Entry] = []
    seen = set(taken)
    for s in entries:
        entry = parse(s)
        value = getattr(entry, key)
        if value in seen:
            raise s.error(key, f"{value!r} {repeated}")
        seen.add(value)
        found.append(entry)
    return tuple(found)


def expand_env(value: str, section: Section) -> str:
    def repl(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise ConfigError(section.path, section.prefix or None, f"environment variable {name} is not set")
        return os.environ[name]

    return _ENV_RE.sub(repl, value)


def port(sec: Section, name: str, default: Any = REQUIRED) -> int:
    return sec.integer(name, default, lo=0, hi=65535)


def is_loopback(host: str) -> bool:
    """``127.0.0.1``, ``::1``, ``localhost``: reachable from this machine only."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip()).is_loopback
    except ValueError:
        return False


def base_dir(config_path: str) -> Path | None:
    """The config file's folder; None for a config that is no file (``<config>``)."""
    return None if config_path.startswith("<") else Path(config_path).resolve().parent


def relative_path(value: str, config_path: str) -> str:
    """A relative file path taken from the config file's folder (as the example config says)."""
    base = base_dir(config_path)
    if not value or base is None or Path(value).is_absolute():
        return value
    return str(base / value)


def relative_sqlite(url: str, config_path: str) -> str:
    """``sqlite:///var/x.db`` (relative) → the file beside the config; other URLs unchanged."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or url.startswith(prefix + "/"):
        return url
    rest = url[len(prefix) :]
    if not rest or rest.startswith(":memory:") or rest.startswith("file:"):
        return url
    return prefix + relative_path(rest, config_path)
