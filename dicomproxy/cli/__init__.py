"""Command line: ``dicomproxy init | serve | reload | echo | find | move | get | check-config | jobs | audit |
push | reconcile | alerts``.

The only place that exits the process. Errors from below arrive as exceptions and are
printed as one line; exit code 2 for configuration errors, 1 for failed checks. One module per
command group; ``common`` holds the ``-c/--config`` option every command shares.
"""

from __future__ import annotations

import click

from dicomproxy import __version__
from dicomproxy.cli.alerts import alerts_group
from dicomproxy.cli.audit import audit_cmd
from dicomproxy.cli.checks import check_config, check_view_cmd
from dicomproxy.cli.dicom import echo, find, get_cmd, move_cmd
from dicomproxy.cli.init import init_cmd
from dicomproxy.cli.jobs import jobs
from dicomproxy.cli.push import push_group
from dicomproxy.cli.reconcile import reconcile_cmd
from dicomproxy.cli.reload import reload_cmd
from dicomproxy.cli.serve import query_process_cmd, serve


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dicomproxy")
def cli() -> None:
    """dicomproxy: the hospital-side DICOM node between the imaging cloud, the RIS exam view and the PACS."""


for _command in (
    init_cmd,
    serve,
    query_process_cmd,
    reload_cmd,
    echo,
    find,
    move_cmd,
    get_cmd,
    check_config,
    check_view_cmd,
    jobs,
    audit_cmd,
    push_group,
    reconcile_cmd,
    alerts_group,
):
    cli.add_command(_command)


def main() -> None:
    """Console entry point."""
    cli(prog_name="dicomproxy")


__all__ = ["cli", "main"]
