"""``dicomproxy check-config`` and ``check-view``: is the node set up right? Exit 1 when not."""

from __future__ import annotations

import sys

import click

from dicomproxy.cli.common import config_option, required_config
from dicomproxy.config import Config


def echo_config_checks(config: Config, timeout: float) -> int:
    """Print one line per check (``check-config``, ``init``); the number that failed."""
    from dicomproxy.checks import run_config_checks

    click.echo(f"OK    config {config.path}")
    failed = 0
    for check in run_config_checks(config, timeout=timeout):
        click.echo(f"{'OK  ' if check.ok else 'FAIL'}  {check.name}: {check.detail}")
        failed += 0 if check.ok else 1
    return failed


@click.command("check-config")
@config_option
@click.option("--timeout", type=float, default=10.0, show_default=True)
def check_config(timeout: float) -> None:
    """Validate the config, reach the view and its columns, echo the PACS. One line per check."""
    sys.exit(1 if echo_config_checks(required_config(), timeout) else 0)


@click.command("check-view")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
@click.option("--examples", type=int, default=5, show_default=True, help="ExamineIDs shown per rule.")
def check_view_cmd(as_json: bool, examples: int) -> None:
    """Check the exam view's rows rule by rule (exit 1 when any rule is broken)."""
    import json

    from dicomproxy.errors import ViewUnavailable
    from dicomproxy.view.check import check_view, format_report

    config = required_config()
    try:
        report = check_view(config, examples=examples)
    except ViewUnavailable as exc:
        click.echo(f"FAIL  {exc}", err=True)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(report.as_dict(), ensure_ascii=False, indent=2))
    else:
        click.echo(format_report(report))
    sys.exit(0 if report.ok else 1)
