"""``dicomproxy serve``: run the DICOM service (and the console) until SIGINT/SIGTERM; SIGHUP
reloads the config file (:mod:`dicomproxy.reloader`)."""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path

import click

from dicomproxy.cli.common import config_option, required_config, verbose_option
from dicomproxy.config import Config
from dicomproxy.errors import ConfigError
from dicomproxy.logsetup import setup_logging


@click.command()
@config_option
@verbose_option
@click.option("--port", type=int, default=None, help="Override [proxy].port.")
def serve(verbose: bool, port: int | None) -> None:
    """Run the DICOM service until SIGINT/SIGTERM, then drain and exit; SIGHUP reloads the config."""
    from dataclasses import replace

    from dicomproxy.app import build_context
    from dicomproxy.memory import limit_malloc_arenas
    from dicomproxy.relay.recovery import reconcile
    from dicomproxy.reloader import Reloader, remove_pid, write_pid
    from dicomproxy.server import Server
    from dicomproxy.transcode.policy import check_policies

    def overrides(config: Config) -> Config:  # the command line's, on the file at start and at each reload
        return replace(config, proxy=replace(config.proxy, port=port)) if port is not None else config

    config = overrides(required_config())
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a reload before the server listens: nothing to reload yet
    setup_logging(config.logging, verbose=verbose)
    try:
        limit_malloc_arenas()  # before any thread starts (DICOMPROXY_MALLOC_ARENAS, docs/performance.md)
        ctx = build_context(config)
        journal = ctx.journal
        if journal is None:  # pragma: no cover - build_context always opens one
            raise RuntimeError("build_context opened no journal")
        reconcile(config, journal)  # interrupted jobs, orphaned spool files (issue 6)
        reloader = Reloader(ctx.settings, adjust=overrides, verbose=verbose, check=check_policies)
        server = Server(config, ctx, on_reload=reloader.reload)
        pid_file: list[Path] = []
        try:
            clean = server.run(on_started=lambda: pid_file.append(write_pid(config.data_path)))
        finally:
            for path in pid_file:
                remove_pid(path)
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
