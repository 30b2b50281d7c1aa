"""What every command shares: the one ``-c/--config`` option, ``-v``, loading the config, the journal.

``-c`` is accepted on a group and on its subcommands alike (``push -c F status`` and
``push status -c F``): every occurrence records its value in the click context's ``meta``, shared by
the whole command line. A value given on the command line wins over ``$DICOMPROXY_CONFIG``; of two
given, the one nearer the subcommand wins.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from click.core import ParameterSource

from dicomproxy.config import Config, load_config
from dicomproxy.errors import ConfigError

if TYPE_CHECKING:
    from dicomproxy.relay.journal import Journal

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_CONFIG = "dicomproxy.toml"
_META_KEY = "dicomproxy.config"


@dataclass
class _ConfigChoice:
    """The ``-c`` value seen so far on this command line."""

    path: Path | None = None
    #: Given on the command line (not taken from $DICOMPROXY_CONFIG).
    explicit: bool = False


def _choice(ctx: click.Context) -> _ConfigChoice:
    choice = ctx.meta.get(_META_KEY)
    if choice is None:
        choice = ctx.meta[_META_KEY] = _ConfigChoice()
    return choice


def _remember_config(ctx: click.Context, param: click.Parameter, value: Path | None) -> None:
    if value is None:
        return
    choice = _choice(ctx)
    explicit = ctx.get_parameter_source(param.name or "") is ParameterSource.COMMANDLINE
    if explicit or not choice.explicit:
        choice.path, choice.explicit = value, explicit


def config_option(
    func: F | None = None,
    *,
    help: str = f"TOML configuration file (default: {DEFAULT_CONFIG}; env DICOMPROXY_CONFIG).",
) -> Any:
    """``-c/--config FILE``: on every command and group; read it with :func:`config_path`."""

    def decorate(f: F) -> F:
        return click.option(
            "-c",
            "--config",
            "config_path",
            type=click.Path(dir_okay=False, path_type=Path),
            default=None,
            envvar="DICOMPROXY_CONFIG",
            expose_value=False,
            callback=_remember_config,
            help=help,
        )(f)

    return decorate(func) if func is not None else decorate


def config_path(default: str | None = DEFAULT_CONFIG) -> Path | None:
    """The config file named on this command line (or by $DICOMPROXY_CONFIG), else ``default``."""
    choice = _choice(click.get_current_context())
    if choice.path is not None:
        return choice.path
    return Path(default) if default is not None else None


def verbose_option(func: F) -> F:
    return click.option("-v", "--verbose", is_flag=True, help="Log at DEBUG level.")(func)


def load_or_exit(path: Path) -> Config:
    """Load the config and build its transcode policies; on error print one line and exit 2."""
    from dicomproxy.transcode.policy import check_policies  # the codecs only when a config is loaded

    try:
        config = load_config(path)
        check_policies(config)
    except ConfigError as exc:
        click.echo(f"config error: {exc}", err=True)
        sys.exit(2)
    return config


def required_config() -> Config:
    """The command line's config (``-c``, $DICOMPROXY_CONFIG or dicomproxy.toml), loaded or exit 2."""
    return load_or_exit(config_path() or Path(DEFAULT_CONFIG))


class JournalContext:
    """A command group's config and journal, opened on first use (``jobs``, ``audit``, ``push``).

    Opened lazily so that a subcommand's ``--help`` works without a config, and so that a ``-c``
    given after the subcommand is the one used.
    """

    def __init__(self) -> None:
        self._config: Config | None = None
        self._journal: Journal | None = None

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = required_config()
        return self._config

    @property
    def journal(self) -> Journal:
        if self._journal is None:
            from dicomproxy.relay.journal import Journal

            self._journal = Journal.for_config(self.config.journal.url, self.config.data_path)
        return self._journal
