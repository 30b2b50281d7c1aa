"""``dicomproxy init``: the interface document's hand-over items → config, env file, checks, table.

Every answer comes from its flag, else the ``--answers`` file, else a prompt that re-asks until
the typed text is valid (``--no-prompt``: a missing answer is an error instead). The model and the
validation live in :mod:`dicomproxy.handover`; this module only asks, writes and prints.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from dicomproxy.cli.checks import echo_config_checks
from dicomproxy.cli.common import config_option, config_path, load_or_exit
from dicomproxy.config import ConfigError, parse_config
from dicomproxy.config.document import tomllib
from dicomproxy.handover.answers import QUESTIONS, AnswerError, Answers, Question, Values, collect
from dicomproxy.handover.database import PASSWORD_VAR, env_value
from dicomproxy.handover.table import handover_table
from dicomproxy.handover.writer import (
    PACKAGE_CONFIG_DIR,
    example_text,
    hand_over_new_files,
    layout_for,
    render_config,
    service_ids,
    tree,
    write_config,
    write_env,
)

F = Callable[..., Any]


def _as_root() -> bool:
    return os.geteuid() == 0


def _default_config() -> Path:
    return (PACKAGE_CONFIG_DIR if _as_root() else Path(".")) / "dicomproxy.toml"


def _read_answers(path: Path) -> dict[str, Any]:
    """An ``--answers`` file: JSON when it ends in ``.json``, else TOML; a table of key = answer."""
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except (OSError, ValueError) as exc:
        raise click.BadParameter(f"{path}: {exc}", param_hint="--answers") from None
    if not isinstance(data, dict):
        raise click.BadParameter(f"{path}: must hold a table of answers", param_hint="--answers")
    if "db_password" in data and path.stat().st_mode & 0o077:
        click.echo(f"init: warning: {path} holds the password and others may read it (chmod 600)", err=True)
    return data


def _ask(question: Question, default: str | None, values: Values) -> Any:
    """One prompt; an answer the question's parser refuses is explained and asked again."""

    def parse(text: str) -> Any:
        try:
            return question.parse(text, values)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None

    return click.prompt(
        question.prompt,
        default=default,
        hide_input=question.secret,
        confirmation_prompt="再输入一次 / Repeat" if question.secret else False,
        value_proc=parse,
    )


@contextmanager
def _environ(name: str, value: str) -> Iterator[None]:
    """``name`` set for the checks (the config names it as ``${name}``), restored afterwards."""
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            del os.environ[name]
        else:
            os.environ[name] = old


def _question_options(func: F) -> F:
    for question in reversed(QUESTIONS):
        hint = "visible to ps: prefer the prompt or --answers" if question.secret else None
        func = click.option(
            question.flag,
            question.key,
            default=None,
            metavar="TEXT",
            help=f"{question.prompt}" + (f" ({hint})" if hint else ""),
        )(func)
    return func


def _write(answers: Answers, config: Path, env_file: Path, view_name: str | None) -> None:
    text = render_config(answers, example_text(), layout_for(config), view_name=view_name)
    try:  # the file as load_config will read it, before anything is written
        with _environ(PASSWORD_VAR, env_value(answers.password)):
            parse_config(tomllib.loads(text), str(config))
    except ConfigError as exc:
        click.echo(f"init: the config would not load, nothing written: {exc}", err=True)
        sys.exit(2)
    try:  # the env file first: a config never names a password that is not there
        if answers.password:
            write_env(env_file, answers.password)
            click.echo(f"已写入 Written: {env_file} (0600, {PASSWORD_VAR})")
        backup = write_config(config, text)
    except OSError as exc:
        click.echo(f"init: cannot write {exc.filename or config}: {exc.strerror or exc}", err=True)
        sys.exit(2)
    click.echo(f"已写入 Written: {config} (0640)" + (f"; 原文件 old file kept as {backup}" if backup else ""))


def _check(answers: Answers, config_file: Path, timeout: float) -> int:
    """The check-config checks; what they create in data_dir (as root) goes to the service user."""
    click.echo("\n检查 Checks (dicomproxy check-config):")
    with _environ(PASSWORD_VAR, env_value(answers.password)):
        config = load_or_exit(config_file)
        before = tree(config.data_path)
        failed = echo_config_checks(config, timeout)
    ids = service_ids()
    if ids is not None:
        hand_over_new_files(config.data_path, before, ids)
    return failed


@click.command("init")
@config_option(
    help="Config file to write (default: /etc/dicomproxy/dicomproxy.toml as root, else "
    "./dicomproxy.toml; env DICOMPROXY_CONFIG)."
)
@click.option(
    "--env-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Env file for the database password (default: dicomproxy.env beside the config; mode 0600).",
)
@click.option(
    "--answers",
    "answers_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Answers for a scripted roll-out: TOML, or JSON if it ends in .json; keys as the options "
    "below (db_host = ...).",
)
@click.option("--force", is_flag=True, help="Overwrite an existing config (the old one is kept as FILE.bak).")
@click.option(
    "--no-prompt", is_flag=True, help="Ask nothing: an answer neither given nor defaulted is an error."
)
@click.option("--view-name", default=None, help="The exam view's name, if not V_IMAGE_CLOUD.")
@click.option("--no-check", is_flag=True, help="Write the files without running the check-config checks.")
@click.option("--timeout", type=float, default=10.0, show_default=True, help="s per check.")
@_question_options
def init_cmd(
    env_file: Path | None,
    answers_file: Path | None,
    force: bool,
    no_prompt: bool,
    view_name: str | None,
    no_check: bool,
    timeout: float,
    **flags: str | None,
) -> None:
    """Write a config from the hand-over items of the interface document (接口文档第 3 节).

    Asks, in Chinese and English, each item no option or --answers file gives, checking it as it is
    typed; writes the config (the example config with these keys filled in, comments kept) and the
    database password to the env file (never to the config, which names it as ${DB_PASSWORD});
    runs the check-config checks; prints the table for the cloud and the PACS administrator.
    As root the files go to /etc/dicomproxy by default; a config there uses the Debian package's
    folders (/var/lib/dicomproxy, /var/log/dicomproxy), one elsewhere the example's (var/ beside
    it). Exit 0: written and every check passed; 1: written, a check failed (a database or PACS
    not reachable yet); 2: the config not written (a bad or missing answer, an existing file, a
    folder that cannot be written).
    """
    config = config_path(default=None) or _default_config()
    env_file = env_file or config.with_name("dicomproxy.env")
    if config.exists() and not force:
        click.echo(f"init: {config} exists; --force overwrites it (keeping {config.name}.bak)", err=True)
        sys.exit(2)
    given: dict[str, Any] = _read_answers(answers_file) if answers_file else {}
    given.update({k: v for k, v in flags.items() if v is not None})
    if not no_prompt:
        click.echo(
            "dicomproxy init — 接口文档第 3 节 对接地址需求 / the interface document's hand-over items.\n"
        )
    answers = _collect(given, ask=None if no_prompt else _ask)
    _write(answers, config, env_file, view_name)
    failed = 0 if no_check else _check(answers, config, timeout)
    click.echo("\n" + handover_table(answers))
    load = f"set -a; . {env_file}; set +a; " if answers.password else ""
    if failed:
        click.echo(
            f"\n{failed} 项检查未通过 / check(s) failed: the files are written; fix the cause, then "
            f"`{load}dicomproxy check-config -c {config}`",
            err=True,
        )
    else:
        click.echo(
            f"\n下一步 Next: `{load}dicomproxy check-view -c {config}` checks the view's rows "
            "(HospitalID and HospitalName must be as typed here)"
        )
    sys.exit(1 if failed else 0)


def _collect(given: Mapping[str, Any], ask: Any) -> Answers:
    try:
        return collect(given, ask)
    except AnswerError as exc:
        click.echo(f"init: {exc}", err=True)
    except click.Abort:  # Ctrl-C, or the end of the input before the last answer
        click.echo("\ninit: aborted, nothing written", err=True)
    sys.exit(2)
