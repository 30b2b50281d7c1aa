"""``dicomproxy reconcile``: the completeness report — per visible study and destination, what the
PACS holds, what our journal says was stored, and what the destination holds (docs/operations.md)."""

from __future__ import annotations

import datetime as dt
import sys
from typing import Any

import click

from dicomproxy.cli.common import config_option, required_config, verbose_option
from dicomproxy.logsetup import setup_logging


def day_or_time(text: str, *, end: bool) -> dt.datetime:
    """``YYYY-MM-DD`` or an ISO date-time, local time as the view's PerformTime. A date alone as
    ``--until`` includes that day (the range ends at the next midnight, exclusive)."""
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a date (YYYY-MM-DD or YYYY-MM-DDTHH:MM)") from None
    if when.tzinfo is not None:
        when = when.astimezone().replace(tzinfo=None)
    if end and len(text.strip()) == 10:  # a date: the whole day
        when += dt.timedelta(days=1)
    return when


def corrections_not_done(journal: Any, destinations: list[str]) -> list[str]:
    """One line per correction after delivery (IOCM, docs/identity.md) a destination still holds
    uncorrected: ``warned`` (``iocm = false``), due, running or failed; no patient data."""
    from dicomproxy.corrections.store import DONE, CorrectionStore

    rows = CorrectionStore(journal.engine, "reconcile").rows(limit=10_000)
    return [
        f"correction {r['state']}: study {r['study_uid']} at {r['destination']}: {r['kind']}"
        + (f" ({r['changed']})" if r["changed"] else "")
        + (f" -> {r['relinked_to']}" if r["relinked_to"] else "")
        + (f"; {r['error'][:120]}" if r["error"] else "")
        for r in reversed(rows)
        if r["destination"] in destinations and r["state"] != DONE
    ]


@click.command("reconcile")
@config_option
@click.option("--since", required=True, help="Exams performed from this local date/date-time (PerformTime).")
@click.option(
    "--until", default=None, help="... up to this one (a date: that whole day). Default: today included."
)
@click.option(
    "--dest",
    "destinations",
    multiple=True,
    help="Destination AE (a [[peers]] entry; repeatable). Default: [push] destinations, else every peer.",
)
@click.option("--json", "fmt", flag_value="json", help="Machine-readable: JSON.")
@click.option(
    "--csv", "fmt", flag_value="csv", help="Machine-readable: CSV, one line per study and destination."
)
@click.option(
    "--rate",
    type=float,
    default=2.0,
    show_default=True,
    help="C-FINDs per second, at most, to each archive and destination.",
)
@click.option("--fix", is_flag=True, help="Queue the missing instances (only those) for push delivery.")
@verbose_option
def reconcile_cmd(
    since: str,
    until: str | None,
    destinations: tuple[str, ...],
    fmt: str | None,
    rate: float,
    fix: bool,
    verbose: bool,
) -> None:
    """Completeness report: per visible study performed in the range and per destination —
    complete, missing (with SOP Instance UIDs), extra, not in the PACS, stored-not-committed.
    Exit 1 when a study is missing instances (and --fix was not given) or could not be checked."""
    from dicomproxy.errors import ViewUnavailable
    from dicomproxy.push.queue import PushQueue
    from dicomproxy.reconcile.decide import Category
    from dicomproxy.reconcile.output import as_csv, as_json, as_table
    from dicomproxy.reconcile.run import Reconciler
    from dicomproxy.relay.journal import Journal
    from dicomproxy.view.repository import ExamView

    config = required_config()
    setup_logging(config.logging, verbose=verbose)
    start = day_or_time(since, end=False)
    end = (
        day_or_time(until, end=True)
        if until
        else dt.datetime.combine(dt.date.today(), dt.time()) + dt.timedelta(days=1)
    )
    if rate <= 0:
        raise click.BadParameter("must be > 0", param_hint="--rate")
    dests = list(destinations) or list(config.push.destinations) or [p.ae_title for p in config.peers]
    for ae in dests:
        if config.peer(ae) is None:
            click.echo(f"error: {ae!r} is not a [[peers]] AE title", err=True)
            sys.exit(2)
        if fix and ae not in config.push.destinations:
            click.echo(f"error: --fix delivers by push: {ae!r} is not a [push] destination", err=True)
            sys.exit(2)
    journal = Journal.for_config(config.journal.url, config.data_path)
    view = ExamView(config)
    try:
        queue = PushQueue(journal.engine, "reconcile") if fix else None
        outcome = Reconciler(config, view, journal, rate=rate, queue=queue).run(start, end, dests, fix=fix)
        open_corrections = corrections_not_done(journal, dests)
    except ViewUnavailable as exc:
        click.echo(f"FAIL  {exc}", err=True)
        sys.exit(1)
    finally:
        view.close()
        journal.close()
    text = as_json(outcome) if fmt == "json" else as_csv(outcome) if fmt == "csv" else as_table(outcome)
    click.echo(text.rstrip("\n"))
    if fmt is None:
        for line in open_corrections:
            click.echo(line)
    if fix and not config.push.enabled:
        click.echo(
            "note: [push] enabled is false here: a serve with push mode on delivers what was queued", err=True
        )
    unresolved = [
        r
        for r in outcome.reports
        if r.category is Category.UNKNOWN or (r.category is Category.MISSING and not r.queued)
    ]
    sys.exit(1 if unresolved else 0)
