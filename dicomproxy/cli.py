"""Command line: ``dicomproxy serve | echo | check-config | ...``.

The only place that exits the process. Errors from below arrive as exceptions and are
printed as one line; exit code 2 for configuration errors, 1 for failed checks.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from dicomproxy import __version__
from dicomproxy.config import Config, TlsConfig, load_config
from dicomproxy.errors import ConfigError
from dicomproxy.logsetup import setup_logging
from dicomproxy.transport.net import Remote, c_echo
from dicomproxy.transport.tls import client_tls_args

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_CONFIG = "dicomproxy.toml"


def config_option(func: F) -> F:
    return click.option(
        "-c",
        "--config",
        "config_path",
        type=click.Path(dir_okay=False, path_type=Path),
        default=DEFAULT_CONFIG,
        envvar="DICOMPROXY_CONFIG",
        show_default=True,
        help="TOML configuration file (env DICOMPROXY_CONFIG).",
    )(func)


def verbose_option(func: F) -> F:
    return click.option("-v", "--verbose", is_flag=True, help="Log at DEBUG level.")(func)


def load_or_exit(path: Path) -> Config:
    """Load the config; on error print one line and exit 2."""
    try:
        return load_config(path)
    except ConfigError as exc:
        click.echo(f"config error: {exc}", err=True)
        sys.exit(2)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dicomproxy")
def cli() -> None:
    """dicomproxy: the hospital-side DICOM node between the imaging cloud, the RIS exam view and the PACS."""


@cli.command()
@config_option
@verbose_option
@click.option("--port", type=int, default=None, help="Override [proxy].port.")
def serve(config_path: Path, verbose: bool, port: int | None) -> None:
    """Run the DICOM service until SIGINT/SIGTERM, then drain and exit."""
    from dataclasses import replace

    from dicomproxy.app import build_context
    from dicomproxy.memory import limit_malloc_arenas
    from dicomproxy.relay.recovery import reconcile
    from dicomproxy.server import Server

    config = load_or_exit(config_path)
    if port is not None:
        config = replace(config, proxy=replace(config.proxy, port=port))
    setup_logging(config.logging, verbose=verbose)
    try:
        limit_malloc_arenas()  # before any thread starts (DICOMPROXY_MALLOC_ARENAS, docs/performance.md)
        ctx = build_context(config)
        reconcile(config, ctx.journal)  # interrupted jobs, orphaned spool files (issue 6)
        server = Server(config, ctx)
        clean = server.run()
        if not clean:
            # Jobs cut off by the drain timeout: checkpoint them now (their spool is kept) so that
            # `jobs retry` can finish them; otherwise only the next start would mark them.
            for job_id in ctx.journal.mark_interrupted():
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


@cli.command()
@click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    envvar="DICOMPROXY_CONFIG",
    help="Config file: gives our AE title, the PACS and the peers.",
)
@click.option("--peer", "peer_name", default=None, help="Echo this configured [[peers]] AE title.")
@click.option("--host", default=None, help="Host to echo (with --port).")
@click.option("--port", type=int, default=None, help="Port to echo (with --host).")
@click.option("--aet", "called", default=None, help="Called AE title (default: the PACS's or 'ANY-SCP').")
@click.option("--calling", default=None, help="Our AE title (default: [proxy].ae_title or DICOMPROXY).")
@click.option("--timeout", type=float, default=10.0, show_default=True)
@verbose_option
def echo(
    config_path: Path | None,
    peer_name: str | None,
    host: str | None,
    port: int | None,
    called: str | None,
    calling: str | None,
    timeout: float,
    verbose: bool,
) -> None:
    """C-ECHO the PACS (default), a configured peer, or any --host/--port/--aet."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING)
    config = load_or_exit(config_path) if config_path else None
    calling_ae = calling or (config.proxy.ae_title if config else "DICOMPROXY")
    tls: TlsConfig | None = None
    if host is not None or port is not None:
        if host is None or port is None:
            raise click.UsageError("--host and --port go together")
        remote = Remote(called or "ANY-SCP", host, port)
    elif peer_name is not None:
        if config is None:
            raise click.UsageError("--peer needs a config file (-c)")
        peer = config.peer(peer_name)
        if peer is None:
            click.echo(f"FAIL: {peer_name!r} is not a configured peer", err=True)
            sys.exit(1)
        remote = Remote(peer.ae_title, peer.host, peer.port)
        tls = peer.tls
    elif config is not None:
        remote = Remote(config.pacs.ae_title, config.pacs.host, config.pacs.port)
        tls = config.pacs.tls
    else:
        raise click.UsageError("give -c FILE, --peer NAME, or --host and --port")
    try:
        tls_args = client_tls_args(tls, remote.host)
    except (OSError, ValueError) as exc:
        click.echo(f"FAIL: TLS set-up: {exc}", err=True)
        sys.exit(1)
    result = c_echo(calling_ae, remote, timeout=timeout, tls_args=tls_args)
    if result.ok:
        click.echo(f"OK: {result.detail}")
        return
    click.echo(f"FAIL: {result.detail}", err=True)
    sys.exit(1)


@cli.command("check-config")
@config_option
@click.option("--timeout", type=float, default=10.0, show_default=True)
def check_config(config_path: Path, timeout: float) -> None:
    """Validate the config, reach the view and its columns, echo the PACS. One line per check."""
    from dicomproxy.checks import run_config_checks

    config = load_or_exit(config_path)
    click.echo(f"OK    config {config.path}")
    failed = 0
    for check in run_config_checks(config, timeout=timeout):
        click.echo(f"{'OK  ' if check.ok else 'FAIL'}  {check.name}: {check.detail}")
        failed += 0 if check.ok else 1
    sys.exit(1 if failed else 0)


@cli.command("check-view")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
@click.option("--examples", type=int, default=5, show_default=True, help="ExamineIDs shown per rule.")
def check_view_cmd(config_path: Path, as_json: bool, examples: int) -> None:
    """Check the exam view's rows rule by rule (exit 1 when any rule is broken)."""
    import json

    from dicomproxy.errors import ViewUnavailable
    from dicomproxy.view.check import check_view, format_report

    config = load_or_exit(config_path)
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


@cli.command()
@click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    envvar="DICOMPROXY_CONFIG",
    help="Config file: default calling AE title and target (this proxy).",
)
@click.option("--host", default=None, help="Host to query (default: this proxy, 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port to query (default: [proxy].port).")
@click.option("--aet", "called", default=None, help="Called AE title (default: [proxy].ae_title).")
@click.option("--calling", default=None, help="Our AE title (default: first [[peers]] or FINDSCU).")
@click.option("-L", "--level", type=click.Choice(["PATIENT", "STUDY", "SERIES", "IMAGE"]), default="STUDY")
@click.option("-m", "--model", type=click.Choice(["study", "patient"]), default="study", show_default=True)
@click.option("-k", "--key", "keys", multiple=True, help="Keyword=value or gggg,eeee=value (repeatable).")
@click.option(
    "--charset", default="ISO_IR 192", show_default=True, help="Specific Character Set of the query."
)
@click.option("--timeout", type=float, default=30.0, show_default=True)
def find(
    config_path: Path | None,
    host: str | None,
    port: int | None,
    called: str | None,
    calling: str | None,
    level: str,
    model: str,
    keys: tuple[str, ...],
    charset: str,
    timeout: float,
) -> None:
    """C-FIND any AE (default: this proxy) and print the answers as a table."""
    from dicomproxy.charsets import install_pydicom_workarounds
    from dicomproxy.transport.findscu import DEFAULT_KEYS, build_query, format_table, parse_key, run_find

    install_pydicom_workarounds()
    logging.basicConfig(level=logging.WARNING)
    config = load_or_exit(config_path) if config_path else None
    try:
        parsed = [parse_key(k) for k in keys]
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    remote = Remote(
        called or (config.proxy.ae_title if config else "ANY-SCP"),
        host or "127.0.0.1",
        port if port is not None else (config.proxy.port if config else 11112),
    )
    calling_ae = calling or (config.peers[0].ae_title if config and config.peers else "FINDSCU")
    query = build_query(level, parsed, charset)
    outcome = run_find(calling_ae, remote, model, query, timeout=timeout)
    columns = [keyword for keyword, _ in parsed] or DEFAULT_KEYS[level]  # the user's order
    for line in format_table(outcome.answers, columns):
        click.echo(line)
    detail = f" ({outcome.comment})" if outcome.comment else ""
    status = "no answer" if outcome.status < 0 else f"0x{outcome.status:04X}"
    click.echo(f"{len(outcome.answers)} match(es), final status {status}{detail}")
    sys.exit(0 if outcome.status == 0 else 1)


# --- relay: jobs journal and SCU clients (issue 4) ------------------------------------------------


@cli.group(invoke_without_command=True)
@config_option
@click.option("-n", "--limit", type=int, default=20, show_default=True, help="How many recent jobs.")
@click.pass_context
def jobs(ctx: click.Context, config_path: Path, limit: int) -> None:
    """Recent C-MOVE/C-GET jobs from the journal (``jobs show ID`` for one)."""
    # The config is read by whoever needs it, so that `jobs retry --help` works without one.
    ctx.obj = JournalContext(config_path)
    if ctx.invoked_subcommand is not None:
        return
    click.echo(
        f"{'ID':>6} {'kind':4} {'started (UTC)':19} {'from':16} {'to':16} {'outcome':9} {'status':6} "
        f"{'exp':>5} {'ok':>5} {'fail':>5} {'warn':>5} {'MB out':>8}"
    )
    for job in ctx.obj.journal.recent(limit):
        status = "" if job["status"] is None else f"{job['status']:04X}"
        click.echo(
            f"{job['id']:>6} {job['kind']:4} {job['started']:%Y-%m-%d %H:%M:%S} {job['calling_ae']:16} "
            f"{job['destination']:16} {job['outcome']:9} {status:6} {job['expected']:>5} "
            f"{job['completed']:>5} {job['failed']:>5} {job['warning']:>5} {job['bytes_out'] / 1e6:>8.1f}"
        )


@jobs.command("show")
@click.argument("job_id", type=int)
@click.option("--all", "all_instances", is_flag=True, help="List every instance, not only the failed ones.")
@click.pass_obj
def jobs_show(obj: JournalContext, job_id: int, all_instances: bool) -> None:
    """One job with its failed (or, with --all, every) instance."""
    view = obj.journal.get(job_id, all_instances=all_instances)
    if view is None:
        click.echo(f"no job {job_id}", err=True)
        sys.exit(1)
    for key, value in view.row.items():
        if key == "status" and value is not None:
            value = f"0x{value:04X}"
        click.echo(f"{key:12} {value}")
    click.echo(f"instances ({'all' if all_instances else 'failed/warning'}): {len(view.instances)}")
    for inst in view.instances:
        status = "" if inst["status"] is None else f"0x{inst['status']:04X}"
        click.echo(
            f"  {inst['state']:8} {status:6} {inst['sop_instance_uid']} "
            f"{inst['transfer_syntax']} {inst['error']}"
        )


@jobs.command("retry")
@click.argument("job_id", type=int)
@click.option(
    "--wait",
    "wait_s",
    type=float,
    default=600.0,
    show_default=True,
    help="When `serve` runs: seconds to wait for it to finish the retry (0 = hand over and return).",
)
@verbose_option
@click.pass_obj
def jobs_retry(obj: JournalContext, job_id: int, wait_s: float, verbose: bool) -> None:
    """Resend the instances of a C-MOVE job the destination has not confirmed.

    From the spool when the files are still there, else fetched again at IMAGE level from the
    archive recorded on the job (C-MOVE to us or C-GET, as that archive is configured). If
    `serve` is running, the job is handed to it (it holds our port, where a C-MOVE delivers);
    otherwise this command listens on [proxy].port itself while it runs.
    Exit 0 when every instance of the job is now confirmed.
    """
    from dicomproxy.relay.journal import RETRY_REQUESTED, RETRYING
    from dicomproxy.relay.recovery import check_retryable, needs_listener, retry_job
    from dicomproxy.status import JobOutcome

    config = obj.config
    setup_logging(config.logging, verbose=verbose)
    journal = obj.journal
    _audit_retry(config, journal, job_id)  # every attempt, also one refused below
    try:
        row, _peer = check_retryable(config, journal, job_id)
    except (LookupError, ValueError) as exc:
        click.echo(str(exc.args[0]), err=True)
        sys.exit(1)
    if row["outcome"] == JobOutcome.SUCCESS and not journal.unconfirmed(job_id):
        click.echo(f"job {job_id}: success: nothing to resend")
        sys.exit(0)
    if _serving(config):
        if row["outcome"] not in (RETRY_REQUESTED, RETRYING) and not journal.request_retry(job_id):
            click.echo(f"job {job_id}: {row['outcome']}: cannot be handed over now", err=True)
            sys.exit(1)
        click.echo(f"job {job_id}: handed to the running serve")
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            view = journal.get(job_id)
            if view is not None and view.row["outcome"] not in (RETRY_REQUESTED, RETRYING):
                done = view.row
                click.echo(
                    f"job {job_id}: {done['outcome']}: {done['completed']} confirmed, {done['failed']} not"
                    + (f" ({done['error']})" if done["error"] else "")
                )
                sys.exit(0 if done["outcome"] == JobOutcome.SUCCESS else 1)
            time.sleep(0.5)
        if wait_s > 0:
            click.echo(f"job {job_id}: still being retried by serve after {wait_s:.0f} s", err=True)
        sys.exit(0 if wait_s <= 0 else 1)
    server = None
    clients = None
    if needs_listener(config, row):  # a C-MOVE to us: listen on our port for the time of the retry
        from dicomproxy.app import build_context
        from dicomproxy.server import Server

        server = Server(config, build_context(config), retries=False)
        server.start()
        clients = server.ctx.archives
    try:
        result = retry_job(config, journal, job_id, clients)
    except (LookupError, ValueError) as exc:
        click.echo(str(exc.args[0]), err=True)
        sys.exit(1)
    finally:
        if server is not None:
            server.stop(drain_timeout=config.proxy.drain_timeout)
    click.echo(
        f"job {job_id}: {result.outcome}: {result.unconfirmed} unconfirmed, "
        f"{result.from_spool} from the spool, {result.refetched} fetched again, {result.sent} sent, "
        f"{len(result.failed)} failed, {len(result.not_found)} not found"
    )
    if result.error:
        click.echo(f"  {result.error}", err=True)
    sys.exit(0 if result.outcome == JobOutcome.SUCCESS else 1)


def _audit_retry(config: Config, journal: Any, job_id: int) -> None:
    """The audit record of a `jobs retry` (who: this machine's user)."""
    if not config.audit.enabled:
        return
    import getpass

    from dicomproxy.audit.trail import Action, AuditRecord, AuditTrail

    user = getpass.getuser()
    record = AuditRecord(Action.RETRY, "requested", calling_ae=user[:16], job_id=job_id, detail={"by": user})
    AuditTrail(journal.engine).append(record)


# --- audit trail (issue 15) ------------------------------------------------------------------------

_TIME_FORMATS = ["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M"]


@cli.group("audit", invoke_without_command=True)
@config_option
@click.option("--patient", default="", help="Only records naming this Patient ID.")
@click.option("--study", default="", help="Only records naming this Study Instance UID.")
@click.option("--peer", default="", help="Only records of this calling AE title.")
@click.option("--since", type=click.DateTime(_TIME_FORMATS), default=None, help="From this local time on.")
@click.option("--until", type=click.DateTime(_TIME_FORMATS), default=None, help="Before this local time.")
@click.option("--json", "as_json", is_flag=True, help="One JSON array.")
@click.option("--csv", "as_csv", is_flag=True, help="CSV with a header line.")
@click.pass_context
def audit_cmd(
    ctx: click.Context,
    config_path: Path,
    patient: str,
    study: str,
    peer: str,
    since: Any,
    until: Any,
    as_json: bool,
    as_csv: bool,
) -> None:
    """The audit trail of patient-data access (``audit verify`` checks its hash chain).

    Times are printed in UTC; --since/--until are read as this machine's local time.
    """
    ctx.obj = JournalContext(config_path)
    if ctx.invoked_subcommand is not None:
        return
    from dicomproxy.audit.trail import AuditTrail, export_rows

    trail = AuditTrail(ctx.obj.journal.engine)
    rows = trail.rows(
        patient=patient,
        study=study,
        peer=peer,
        since=since.astimezone() if since else None,
        until=until.astimezone() if until else None,
    )
    fmt = "json" if as_json else "csv" if as_csv else "table"
    for line in export_rows(rows, fmt):
        click.echo(line)


@audit_cmd.command("verify")
@click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="TOML configuration file (also accepted before `verify`).",
)
@click.pass_obj
def audit_verify(obj: JournalContext, config_path: Path | None) -> None:
    """Recompute the hash chain; exit 1 naming the first row that was edited, removed or added."""
    from dicomproxy.audit.trail import AuditTrail

    if config_path is not None:
        obj = JournalContext(config_path)

    result = AuditTrail(obj.journal.engine).verify()
    if result.ok:
        click.echo(
            f"audit trail intact: {result.rows} record(s), last #{result.last_seq} hash {result.last_hash}"
        )
        sys.exit(0)
    click.echo(
        f"audit trail BROKEN at record #{result.broken_at}: {result.problem} "
        f"({result.rows} record(s) before it are intact)",
        err=True,
    )
    sys.exit(1)


class JournalContext:
    """A command group's config and journal, opened on first use (``jobs``, ``audit``, ``push``)."""

    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self._config: Config | None = None
        self._journal: Any = None

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = load_or_exit(self.config_path)
        return self._config

    @property
    def journal(self) -> Any:
        if self._journal is None:
            from dicomproxy.relay.journal import Journal

            self._journal = Journal.for_config(self.config.journal.url, self.config.data_path)
        return self._journal


def _serving(config: Config) -> bool:
    """Whether something (a running `serve`) holds [proxy].port."""
    import errno
    import socket

    host = config.proxy.host or "0.0.0.0"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, config.proxy.port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def _scu_options(func: F) -> F:
    for option in reversed(
        [
            click.option("--host", required=True, help="Host of the AE to ask."),
            click.option("--port", type=int, required=True),
            click.option("--aet", "called", default="DICOMPROXY", show_default=True, help="Called AE title."),
            click.option("--calling", default="DICOMPROXY-SCU", show_default=True, help="Our AE title."),
            click.option(
                "--level", type=click.Choice(["PATIENT", "STUDY", "SERIES", "IMAGE"]), default="STUDY"
            ),
            click.option("--study", "studies", multiple=True, help="Study Instance UID (repeatable)."),
            click.option("--series", "series", multiple=True, help="Series Instance UID (repeatable)."),
            click.option("--sop", "sops", multiple=True, help="SOP Instance UID (repeatable)."),
            click.option("--accession", default=None, help="Accession Number (STUDY level)."),
            click.option("--patient-id", default=None, help="Patient ID."),
            click.option("--patient-root", is_flag=True, help="Patient Root model (default Study Root)."),
            click.option("--timeout", type=float, default=300.0, show_default=True, help="DIMSE timeout."),
        ]
    ):
        func = option(func)
    return func


def _query(
    level: str,
    studies: tuple[str, ...],
    series: tuple[str, ...],
    sops: tuple[str, ...],
    accession: str | None,
    patient_id: str | None,
) -> Any:
    from dicomproxy.transport import scu

    return scu.identifier(
        level,
        study_uids=studies,
        series_uids=series,
        sop_uids=sops,
        accession=accession,
        patient_id=patient_id,
    )


def _finish(summary: Any) -> None:
    click.echo(f"\n{summary.line()}")
    sys.exit(0 if summary.category in ("Success", "Warning") else 1)


@cli.command("move")
@_scu_options
@click.option("--dest", required=True, help="Move Destination AE title.")
def move_cmd(
    host: str,
    port: int,
    called: str,
    calling: str,
    level: str,
    studies: tuple[str, ...],
    series: tuple[str, ...],
    sops: tuple[str, ...],
    accession: str | None,
    patient_id: str | None,
    patient_root: bool,
    timeout: float,
    dest: str,
) -> None:
    """C-MOVE to any AE (e.g. this proxy) and show the sub-operation progress."""
    from dicomproxy.transport import scu
    from dicomproxy.transport.net import Remote

    def progress(s: Any) -> None:
        done = s.completed + s.failed + s.warning
        total = done + (s.remaining or 0)
        click.echo(f"\r  {done}/{total} instances (failed {s.failed}, warning {s.warning})", nl=False)

    summary = scu.move(
        Remote(called, host, port),
        dest,
        _query(level, studies, series, sops, accession, patient_id),
        calling_ae=calling,
        patient_root=patient_root,
        timeout=timeout,
        progress=progress,
    )
    _finish(summary)


@cli.command("get")
@_scu_options
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write received instances here (default: count only).",
)
def get_cmd(
    host: str,
    port: int,
    called: str,
    calling: str,
    level: str,
    studies: tuple[str, ...],
    series: tuple[str, ...],
    sops: tuple[str, ...],
    accession: str | None,
    patient_id: str | None,
    patient_root: bool,
    timeout: float,
    out_dir: Path | None,
) -> None:
    """C-GET from any AE (e.g. this proxy); instances arrive on our association."""
    from dicomproxy.transport import scu
    from dicomproxy.transport.net import Remote

    def progress(s: Any) -> None:
        click.echo(f"\r  received {s.received} instance(s), remaining {s.remaining}", nl=False)

    summary = scu.get(
        Remote(called, host, port),
        _query(level, studies, series, sops, accession, patient_id),
        calling_ae=calling,
        out_dir=out_dir,
        patient_root=patient_root,
        timeout=timeout,
        progress=progress,
    )
    _finish(summary)


# --- push mode (issue 16): registered here, defined in its own package ------------------------------

from dicomproxy.push.cli import push_group  # noqa: E402 - kept beside its registration

cli.add_command(config_option(push_group))


def main() -> None:
    """Console entry point."""
    cli(prog_name="dicomproxy")


if __name__ == "__main__":
    main()
