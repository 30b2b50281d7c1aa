"""``dicomproxy jobs``: the relay jobs in the journal; ``jobs show ID``; ``jobs retry ID``."""

from __future__ import annotations

import sys
import time
from collections import Counter
from typing import TYPE_CHECKING

import click

from dicomproxy.cli.common import JournalContext, config_option, verbose_option
from dicomproxy.config import Config
from dicomproxy.logsetup import setup_logging

if TYPE_CHECKING:
    from dicomproxy.relay.journal import Journal
    from dicomproxy.view.repository import ExamView


@click.group(invoke_without_command=True)
@config_option
@click.option("-n", "--limit", type=int, default=20, show_default=True, help="How many recent jobs.")
@click.pass_context
def jobs(ctx: click.Context, limit: int) -> None:
    """Recent C-MOVE/C-GET jobs from the journal (``jobs show ID`` for one)."""
    # The config is read by whoever needs it, so that `jobs retry --help` works without one.
    ctx.obj = JournalContext()
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
@config_option
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
    _show_commitment(obj, job_id)
    click.echo(f"instances ({'all' if all_instances else 'failed/warning'}): {len(view.instances)}")
    for inst in view.instances:
        status = "" if inst["status"] is None else f"0x{inst['status']:04X}"
        click.echo(
            f"  {inst['state']:8} {status:6} {inst['sop_instance_uid']} "
            f"{inst['transfer_syntax']} {inst['error']}"
        )


def _show_commitment(obj: JournalContext, job_id: int) -> None:
    """Storage Commitment of the job's instances (PS3.4 Annex J), when it was asked: counts per
    state, and the instances not committed."""
    from dicomproxy.relay.commitments import COMMITTED, CommitmentLedger

    states = CommitmentLedger(obj.config, obj.journal).states(job_id)
    if not states:
        return
    counts = Counter(states.values())
    click.echo(f"{'commitment':12} " + " ".join(f"{k}={n}" for k, n in sorted(counts.items())))
    for uid, state in sorted(states.items()):
        if state != COMMITTED:
            click.echo(f"  {state:10} {uid}")


@jobs.command("retry")
@config_option
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
    exam_view: ExamView | None = None
    if journal.request(job_id) is not None:  # killed while its request was resolved: resolve it again
        from dicomproxy.view.repository import ExamView

        exam_view = server.ctx.view if server is not None else ExamView(config)
    try:
        result = retry_job(config, journal, job_id, clients, resolver=exam_view)
    except (LookupError, ValueError) as exc:
        click.echo(str(exc.args[0]), err=True)
        sys.exit(1)
    finally:
        if server is not None:
            server.stop(drain_timeout=config.proxy.drain_timeout)
        elif exam_view is not None:
            exam_view.close()
    click.echo(
        f"job {job_id}: {result.outcome}: {result.unconfirmed} unconfirmed, "
        f"{result.from_spool} from the spool, {result.refetched} fetched again, {result.sent} sent, "
        f"{len(result.failed)} failed, {len(result.not_found)} not found"
    )
    if result.error:
        click.echo(f"  {result.error}", err=True)
    sys.exit(0 if result.outcome == JobOutcome.SUCCESS else 1)


def _audit_retry(config: Config, journal: Journal, job_id: int) -> None:
    """The audit record of a `jobs retry` (who: this machine's user)."""
    if not config.audit.enabled:
        return
    import getpass

    from dicomproxy.audit.trail import Action, AuditRecord, AuditTrail

    user = getpass.getuser()
    record = AuditRecord(Action.RETRY, "requested", calling_ae=user[:16], job_id=job_id, detail={"by": user})
    AuditTrail(journal.engine).append(record)


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
