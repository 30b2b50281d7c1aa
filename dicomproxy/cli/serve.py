"""``dicomproxy serve``: run the DICOM service (and the console) until SIGINT/SIGTERM."""

from __future__ import annotations

import logging
import sys

import click

from dicomproxy.cli.common import config_option, required_config, verbose_option
from dicomproxy.errors import ConfigError
from dicomproxy.logsetup import setup_logging


@click.command()
@config_option
@verbose_option
@click.option("--port", type=int, default=None, help="Override [proxy].port.")
def serve(verbose: bool, port: int | None) -> None:
    """Run the DICOM service until SIGINT/SIGTERM, then drain and exit."""
    from dataclasses import replace

    from dicomproxy.app import build_context
    from dicomproxy.memory import limit_malloc_arenas
    from dicomproxy.relay.recovery import reconcile
    from dicomproxy.server import Server

    config = required_config()
    if port is not None:
        config = replace(config, proxy=replace(config.proxy, port=port))
    setup_logging(config.logging, verbose=verbose)
    try:
        limit_malloc_arenas()  # before any thread starts (DICOMPROXY_MALLOC_ARENAS, docs/performance.md)
        ctx = build_context(config)
        journal = ctx.journal
        if journal is None:  # pragma: no cover - build_context always opens one
            raise RuntimeError("build_context opened no journal")
        reconcile(config, journal)  # interrupted jobs, orphaned spool files (issue 6)
        server = Server(config, ctx)
        clean = server.run()
        if not clean:
            # Jobs cut off by the drain timeout: checkpoint them now (their spool is kept) so that
            # `jobs retry` can finish them; otherwise only the next start would mark them.
            for job_id in journal.mark_interrupted():
                logging.getLogger("dicomproxy").warning(
                    "job %d interrupted by the drain timeout; `dicomproxy jobs retry %d` resends it",
                    job_id,
                    job_id,
                )
    except ConfigError as exc:
        click.echo(f"config error: {exc}", err=True)
        sys.exit(2)
    except OSError as exc:
        logging.getLogger("dicomproxy").error("cannot serve: %s", exc)
        sys.exit(1)
    sys.exit(0 if clean else 1)
