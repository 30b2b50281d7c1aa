"""``dicomproxy serve``: run the DICOM service (and the console) until SIGINT/SIGTERM; SIGHUP
reloads the config file (:mod:`dicomproxy.reloader`)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from dicomproxy.cli.common import config_option, required_config, verbose_option
from dicomproxy.config import Config
from dicomproxy.errors import ConfigError
from dicomproxy.logsetup import setup_logging

if TYPE_CHECKING:
    from dicomproxy.queryproc.channel import Channel
    from dicomproxy.queryproc.parent import QueryProcess
    from dicomproxy.transport.raw.queries import QueryAcceptor


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
        queries = start_query_process(config, verbose)
        ctx = build_context(config)
        journal = ctx.journal
        if journal is None:  # pragma: no cover - build_context always opens one
            raise RuntimeError("build_context opened no journal")
        reconcile(config, journal)  # interrupted jobs, orphaned spool files (issue 6)
        reloader = Reloader(ctx.settings, adjust=overrides, verbose=verbose, check=check_policies)
        server = Server(config, ctx, on_reload=reloader.reload, queries=queries)
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


#: The forked query process's name in ``ps -o comm`` and top (at most 15 characters; its command
#: line is serve's).
CHILD_NAME = "dicomproxy-qry"


def start_query_process(config: Config, verbose: bool) -> QueryProcess | None:
    """The query process (``[proxy] query_process``), then this process's lower priority
    (``data_path_nice``). Forked (:meth:`QueryProcess.fork`: what ``serve`` imported is shared with
    the child, which starts at once) here, before any other thread or process starts. Linux keeps
    a nice value per thread and each new thread or child inherits its creator's: the child keeps
    the priority ``serve`` was started with, and everything after it — and the threads already
    there — runs at the lower one (an unprivileged process can never raise it again: the child is
    not restarted, see :mod:`dicomproxy.queryproc.parent`)."""
    from dicomproxy.queryproc.parent import QueryProcess, wanted

    if not wanted(config):
        return None

    def child(channel: Channel) -> int:
        _ignore_group_signals()
        with contextlib.suppress(OSError):  # `ps -o comm`, top: which of the two it is
            Path("/proc/self/comm").write_text(CHILD_NAME, encoding="ascii")
        return run_query_child(channel, config, verbose)

    queries = QueryProcess.fork(child)
    if config.proxy.data_path_nice:
        niceness = os.nice(config.proxy.data_path_nice)
        # the threads that exist already (the channel's reader; a BLAS pool numpy may start at import)
        for tid in os.listdir("/proc/self/task"):
            os.setpriority(os.PRIO_PROCESS, int(tid), niceness)
        logging.getLogger("dicomproxy").info(
            "the images' process runs at nice %d, the query process (pid %d) at %d",
            niceness,
            queries.pid,
            niceness - config.proxy.data_path_nice,
        )
    return queries


@click.command("query-process", hidden=True)
@click.option("--fd", type=int, required=True, help="The channel's descriptor (serve passes it).")
def query_process_cmd(fd: int) -> None:
    """The query process when it is spawned (an in-process Server's, tests): serves the
    C-FIND/C-ECHO-only associations handed to it over the channel on ``--fd`` (dicomproxy.queryproc).
    ``serve`` forks its child instead (:func:`start_query_process`)."""
    import socket

    from dicomproxy.queryproc.channel import Channel, ChannelClosed

    _ignore_group_signals()
    channel = Channel(socket.socket(fileno=fd))
    try:
        message, _ = channel.recv()  # ("start", Config, verbose)
    except ChannelClosed:
        sys.exit(1)
    sys.exit(run_query_child(channel, message[1], bool(message[2])))


def _ignore_group_signals() -> None:
    """systemd's stop and a terminal's Ctrl-C signal the whole group: the parent drains the child."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)


def run_query_child(channel: Channel, config: Config, verbose: bool) -> int:
    """The child's life (:class:`~dicomproxy.queryproc.child.QueryWorker`); its exit code."""
    from dicomproxy import events
    from dicomproxy.app import build_query_context
    from dicomproxy.handlers.queries import query_acceptor
    from dicomproxy.queryproc.child import Forwarder, LogForwarder, QueryWorker
    from dicomproxy.reloader import apply_log_level
    from dicomproxy.server import build_ae

    root = logging.getLogger()
    for handler in list(root.handlers):  # a forked child has serve's: one process writes the log
        root.removeHandler(handler)
    root.addHandler(LogForwarder(channel))
    apply_log_level(config.logging, verbose)
    events.subscribe(Forwarder(channel))
    ctx = build_query_context(config)
    ae = build_ae(config)

    def acceptor(active: Callable[[], int]) -> QueryAcceptor:
        made = query_acceptor(config, ctx, ae, active)
        if made is None:  # pragma: no cover - serve starts the child only when it applies (wanted())
            raise RuntimeError("the raw query acceptor does not apply to this config")
        return made

    worker = QueryWorker(channel, ctx, acceptor, on_config=lambda new: apply_log_level(new.logging, verbose))
    try:
        clean = worker.run()
    finally:
        ctx.close()
    return 0 if clean else 1
