"""``dicomproxy audit``: the audit trail (filters, JSON/CSV); ``audit verify`` checks its hash chain."""

from __future__ import annotations

import datetime as dt
import sys

import click

from dicomproxy.cli.common import JournalContext, config_option

_TIME_FORMATS = ["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M"]


@click.group("audit", invoke_without_command=True)
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
    patient: str,
    study: str,
    peer: str,
    since: dt.datetime | None,
    until: dt.datetime | None,
    as_json: bool,
    as_csv: bool,
) -> None:
    """The audit trail of patient-data access (``audit verify`` checks its hash chain).

    Times are printed in UTC; --since/--until are read as this machine's local time.
    """
    ctx.obj = JournalContext()
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
@config_option
@click.pass_obj
def audit_verify(obj: JournalContext) -> None:
    """Recompute the hash chain; exit 1 naming the first row that was edited, removed or added."""
    from dicomproxy.audit.trail import AuditTrail

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


@audit_cmd.command("purge")
@config_option
@click.option("--dry-run", is_flag=True, help="Only say how many records are older than [audit] keep_days.")
@click.pass_obj
def audit_purge(obj: JournalContext, dry_run: bool) -> None:
    """Export the records older than [audit] keep_days to [audit] export_dir (JSON Lines), then
    remove them; the chain still verifies from the last removed record. Refused (exit 1) when the
    chain is broken; keep_days = 0 keeps everything."""
    from dicomproxy.audit.retention import PurgeRefused, audit_export_dir, cutoff_for, old_prefix, purge
    from dicomproxy.audit.trail import AuditTrail

    config = obj.config
    if not config.audit.keep_days:
        click.echo("[audit] keep_days = 0: records are kept for ever; nothing removed")
        return
    trail = AuditTrail(obj.journal.engine, config.audit.hash)
    cutoff = cutoff_for(config.audit.keep_days)
    if dry_run:
        click.echo(f"{len(old_prefix(trail, cutoff))} record(s) older than {config.audit.keep_days} days")
        return
    try:
        done = purge(trail, cutoff, audit_export_dir(config))
    except PurgeRefused as exc:
        click.echo(f"audit purge refused: {exc}", err=True)
        sys.exit(1)
    if not done.count:
        click.echo(f"no record older than {config.audit.keep_days} days")
        return
    click.echo(
        f"{done.count} record(s) #{done.first_seq}–#{done.last_seq} exported to {done.file} "
        f"({config.audit.hash} {done.digest}) and removed"
    )
