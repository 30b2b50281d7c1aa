"""``-c/--config`` is one option, accepted on a command group and on its subcommands alike."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from dicomproxy.cli import cli
from tests.conftest import push_cli_toml


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), env=env)


@pytest.mark.parametrize(
    "placement",
    [
        ["push", "-c", "{toml}", "status"],
        ["push", "status", "-c", "{toml}"],
        ["push", "--config", "{toml}", "status", "--json"],
        ["push", "status", "--json", "--config", "{toml}"],
    ],
)
def test_push_status_takes_c_before_or_after_the_subcommand(tmp_path: Path, placement: list[str]) -> None:
    toml = str(push_cli_toml(tmp_path))
    out = run(*(a.format(toml=toml) for a in placement))
    assert out.exit_code == 0, out.output
    assert "CLOUD" in out.output


@pytest.mark.parametrize(
    "placement",
    [
        ["jobs", "-c", "{toml}"],
        ["jobs", "-c", "{toml}", "-n", "5"],
        ["jobs", "-c", "{toml}", "show", "7"],
        ["jobs", "show", "7", "-c", "{toml}"],
        ["audit", "-c", "{toml}", "verify"],
        ["audit", "verify", "-c", "{toml}"],
    ],
)
def test_jobs_and_audit_take_c_on_the_group_or_the_subcommand(tmp_path: Path, placement: list[str]) -> None:
    toml = str(push_cli_toml(tmp_path))
    out = run(*(a.format(toml=toml) for a in placement))
    if "show" in placement:  # the journal is empty: "no job 7", exit 1 — but from the right file
        assert out.exit_code == 1 and "no job 7" in out.output, out.output
    else:
        assert out.exit_code == 0, out.output
    assert "config error" not in out.output


def test_subcommand_c_wins_over_group_c_and_command_line_over_environment(tmp_path: Path) -> None:
    good = str(push_cli_toml(tmp_path))
    missing = str(tmp_path / "missing.toml")
    assert run("push", "-c", missing, "status", "-c", good).exit_code == 0
    assert run("push", "-c", good, "status", env={"DICOMPROXY_CONFIG": missing}).exit_code == 0
    assert run("push", "status", env={"DICOMPROXY_CONFIG": good}).exit_code == 0
    bad = run("push", "-c", good, "status", "-c", missing)
    assert bad.exit_code == 2 and bad.output.startswith("config error: ") and "missing.toml" in bad.output


def test_subcommand_help_needs_no_config(tmp_path: Path) -> None:
    out = run("jobs", "retry", "--help", env={"DICOMPROXY_CONFIG": str(tmp_path / "none.toml")})
    assert out.exit_code == 0 and "-c, --config FILE" in out.output
