"""``dicomproxy reload``: make the running ``serve`` re-read its config file, and say what it did.

The file given with ``-c`` is checked first (an invalid one is reported here, exit 2, and the
service is not signalled). Its ``data_dir`` names the running serve: the pid in
``<data_dir>/dicomproxy.pid`` gets a SIGHUP (what ``systemctl reload`` sends too), and the serve's
answer is read from ``<data_dir>/reload.json`` (:mod:`dicomproxy.reloader`). Exit 0 when it
applied the file, 1 when it refused it, did not answer or does not run.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import click

from dicomproxy.cli.common import config_option, required_config


@click.command("reload")
@config_option
@click.option(
    "--timeout", type=float, default=30.0, show_default=True, help="Seconds to wait for the answer."
)
def reload_cmd(timeout: float) -> None:
    """Reload the running service's configuration (as `systemctl reload dicomproxy`)."""
    from dicomproxy.reloader import PID_FILE, RESULT_FILE, ReloadResult

    config = required_config()
    pid_path = config.data_path / PID_FILE
    try:
        pid = int(pid_path.read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        click.echo(f"no running dicomproxy serve: {pid_path} is missing or unreadable", err=True)
        sys.exit(1)
    result_path = config.data_path / RESULT_FILE
    before = ReloadResult.read(result_path)
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        click.echo(f"no running dicomproxy serve: pid {pid} (from {pid_path}) is not running", err=True)
        sys.exit(1)
    except PermissionError:
        click.echo(f"not allowed to signal pid {pid}: run as its user or root", err=True)
        sys.exit(1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = ReloadResult.read(result_path)
        if result is not None and result.pid == pid and result != before:
            break
        time.sleep(0.1)
    else:
        click.echo(f"pid {pid} did not answer within {timeout:g} s (see its log)", err=True)
        sys.exit(1)
    if not result.applied:
        click.echo(f"reload refused, nothing changed: {result.error}", err=True)
        sys.exit(1)
    click.echo(f"reload applied (pid {pid}): {', '.join(result.changed) or 'no change'}")
    if result.restart:
        click.echo(f"needs a restart, left unchanged: {', '.join(result.restart)}")
