"""``dicomproxy push``: the push queue for administrators (status, pause/resume, retry, requeue,
backfill).

Every command works on the journal database, so it acts on every node sharing it, whether a
``serve`` runs or not; a running ``serve`` sees the change at its next claim.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from typing import Any

import click

from dicomproxy.cli.common import JournalContext, config_option
from dicomproxy.config import Config
from dicomproxy.corrections.store import STATES as CORRECTION_STATES
from dicomproxy.corrections.store import CorrectionStore
from dicomproxy.push.backfill import lane_progress, queue_backfill
from dicomproxy.push.holds import LANE_PAUSED_PREFIX, pause, resume
from dicomproxy.push.queue import BACKFILL, DONE, PAUSED_ALL, STATES, WATERMARK, PushQueue, utcnow
from dicomproxy.push.service import DOWN_PREFIX, PAUSED_PREFIX
from dicomproxy.relay.bandwidth import Bandwidth, InForce, capped_destinations
from dicomproxy.relay.liveness import NodeRegistry


def _timetable(obj: _PushContext) -> list[InForce]:
    """The rate in force now and the next change, per capped destination (``[[bandwidth]]``)."""
    destinations = capped_destinations(obj.config)
    if not destinations:
        return []
    bandwidth = Bandwidth(obj.config.bandwidth)
    bandwidth.nodes = NodeRegistry(obj.queue.engine, "cli").alive()
    return [bandwidth.in_force(d) for d in destinations]


class _PushContext:
    """The ``push`` group's config, journal (:class:`~dicomproxy.cli.common.JournalContext`) and queue."""

    def __init__(self, base: JournalContext) -> None:
        self._base = base
        self._queue: PushQueue | None = None

    @property
    def config(self) -> Config:
        return self._base.config

    @property
    def queue(self) -> PushQueue:
        if self._queue is None:
            self._queue = PushQueue(self._base.journal.engine, "cli")
        return self._queue

    def destination(self, ae: str | None) -> str | None:
        """``ae`` checked against ``[push] destinations`` (exit 2 naming them when unknown)."""
        if ae is not None and ae not in self.config.push.destinations:
            known = ", ".join(self.config.push.destinations) or "none configured"
            click.echo(f"error: {ae!r} is not a [push] destination ({known})", err=True)
            sys.exit(2)
        return ae


@click.group("push")
@config_option
@click.pass_context
def push_group(ctx: click.Context) -> None:
    """Push mode's queue: status, pause/resume, retry, requeue (docs/push.md)."""
    ctx.obj = _PushContext(JournalContext())


@push_group.command("status")
@config_option
@click.option("-n", "--limit", type=int, default=10, show_default=True, help="Recent items listed.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable.")
@click.pass_obj
def push_status(obj: _PushContext, limit: int, as_json: bool) -> None:
    """Queue by destination and state (re-check: delivered items still due for a re-check of the
    PACS's count, among "done"), the watermark, pauses and holds, the last hour's rate."""
    config, queue = obj.config, obj.queue
    counts = queue.counts()
    states = queue.states()
    hour = queue.delivered_since(utcnow() - dt.timedelta(hours=1))
    rechecks = queue.rechecks_pending()
    dests = list(dict.fromkeys([*config.push.destinations, *(d for d, _ in counts)]))
    report = {
        "enabled": config.push.enabled,
        "watermark": states.get(WATERMARK, ""),
        "paused": PAUSED_ALL in states,
        "destinations": {
            d: {
                "queue": {s: counts.get((d, s), 0) for s in STATES},
                "paused": PAUSED_PREFIX + d in states,
                "down": json.loads(states[DOWN_PREFIX + d]) if DOWN_PREFIX + d in states else None,
                "last_hour": {"studies": hour.get(d, (0, 0))[0], "bytes": hour.get(d, (0, 0))[1]},
                # delivered items (counted in "done") still due for a re-check of the PACS's count
                "rechecks": {
                    "pending": rechecks.get(d, (0, None))[0],
                    "next": _iso(rechecks.get(d, (0, None))[1]),
                },
            }
            for d in dests
        },
        "recent": [
            {k: (v.isoformat() if isinstance(v, dt.datetime) else v) for k, v in item.items()}
            for item in queue.items(limit=limit)
        ],
    }
    corrections = CorrectionStore(queue.engine, "status").counts()
    for d, info in report["destinations"].items():  # type: ignore[attr-defined]
        # corrections after delivery (IOCM, docs/identity.md) by state
        info["corrections"] = {
            s: sum(n for (dest, _, st), n in corrections.items() if dest == d and st == s)
            for s in CORRECTION_STATES
        }
    lanes = lane_progress(queue)
    report["lanes"] = [p.as_dict() | {"paused": LANE_PAUSED_PREFIX + p.lane in states} for p in lanes]
    commitment = _commitment(obj)
    for d, info in report["destinations"].items():  # type: ignore[attr-defined]
        info["commitment_24h"] = commitment.get(d)
    timetable = _timetable(obj)
    report["bandwidth"] = [row.as_dict() for row in timetable]
    if as_json:
        click.echo(json.dumps(report, ensure_ascii=False, indent=1))
        return
    click.echo(
        f"push {'enabled' if config.push.enabled else 'disabled'}{' (paused)' if report['paused'] else ''}"
    )
    click.echo(f"watermark: {report['watermark'] or '(not started)'}")
    click.echo(
        f"{'destination':16} "
        + " ".join(f"{s:>{max(8, len(s))}}" for s in STATES)
        + f" {'re-check':>8} {'hour:studies':>12} {'MB':>8}  note"
    )
    for d, info in report["destinations"].items():  # type: ignore[attr-defined]
        notes = ["paused"] if info["paused"] else []
        if info["down"]:
            notes = [f"down since {info['down']['since']} (next try {info['down']['until']})"]
        if info["rechecks"]["next"]:
            notes.append(f"next re-check {info['rechecks']['next']} UTC")
        click.echo(
            f"{d:16} "
            + " ".join(f"{info['queue'][s]:>{max(8, len(s))}}" for s in STATES)
            + f" {info['rechecks']['pending']:>8} {info['last_hour']['studies']:>12}"
            + f" {info['last_hour']['bytes'] / 1e6:>8.1f}  {'; '.join(notes)}"
        )
    for d, info in report["destinations"].items():  # type: ignore[attr-defined]
        if any(info["corrections"].values()):
            click.echo(
                f"corrections after delivery, {d}: "
                + " ".join(f"{k}={n}" for k, n in info["corrections"].items() if n)
            )
    for d, refs in commitment.items():
        click.echo(f"storage commitment, last 24 h, {d}: " + " ".join(f"{k}={n}" for k, n in refs.items()))
    _echo_backfill(report["lanes"])  # type: ignore[arg-type]
    if timetable:
        click.echo(f"bandwidth timetable ([[bandwidth]], {timetable[0].nodes} node(s) alive share it):")
    for row in timetable:
        click.echo(f"  {row.destination:16} {row.line()}")
    if report["recent"]:
        click.echo("recent items (ID, destination, state, attempts, confirmed, files, job, notes, error):")
    for item in report["recent"]:  # type: ignore[attr-defined]
        notes = []
        if item.get("takeovers"):
            notes.append(f"takeovers {item['takeovers']}")
        if item["state"] == DONE and item.get("rechecks"):
            notes.append(f"re-check {item['next_at'][:19]} UTC ({item['rechecks']} left)")
        click.echo(
            f"  {item['id']:>6} {item['destination']:16} {item['state']:8} {item['attempts']:>3} "
            f"{item['confirmed']:>5} {item['reports'] or '-':8} {item['last_job'] or '-'!s:>6} "
            + "".join(f"[{n}] " for n in notes)
            + f"{item['error'][:80]}"
        )


def _echo_backfill(lanes: list[dict[str, Any]]) -> None:
    """The backfill lane's progress line (when it has items)."""
    for lane in lanes:
        if lane["lane"] == BACKFILL and (lane["left"] or lane["done"]):
            eta = lane["eta_seconds"]
            click.echo(
                f"backfill{' (paused)' if lane['paused'] else ''}: {lane['done']} done, {lane['left']} left, "
                f"{lane['failed']} failed; {lane['last_hour']} in the last hour"
                + (f", about {eta / 3600:.1f} h to go" if eta else "")
            )


def _commitment(obj: _PushContext) -> dict[str, dict[str, int]]:
    """Destination → its Storage Commitment references of the last 24 h by state, for the
    push destinations asked to commit (docs/commitment.md)."""
    from dicomproxy.relay.commitments import CommitmentLedger

    if not any(p.storage_commitment for p in obj.config.peers):
        return {}
    ledger = CommitmentLedger(obj.config, obj._base.journal)
    return {
        str(row["destination"]): {k: int(v) for k, v in row.items() if k != "destination"}
        for row in ledger.summary()
        if row["destination"] in obj.config.push.destinations
    }


def _iso(when: dt.datetime | None) -> str | None:
    return when.isoformat(timespec="seconds") if when is not None else None


_LANE = click.option(
    "--lane", type=click.Choice([BACKFILL]), default=None, help="Only this lane's workers (the backfill)."
)


@push_group.command("pause")
@config_option
@click.argument("destination", required=False)
@_LANE
@click.pass_obj
def push_pause(obj: _PushContext, destination: str | None, lane: str | None) -> None:
    """Stop starting deliveries (to DESTINATION, all, or of the --lane); the watcher keeps queueing."""
    pause(obj.queue, obj.destination(destination), lane)
    click.echo(f"paused {f'the {lane} lane' if lane else destination or 'every destination'}")


@push_group.command("resume")
@config_option
@click.argument("destination", required=False)
@_LANE
@click.pass_obj
def push_resume(obj: _PushContext, destination: str | None, lane: str | None) -> None:
    """Undo ``pause`` (and end a destination's down hold: try it now)."""
    resume(obj.queue, obj.destination(destination), lane)
    click.echo(f"resumed {f'the {lane} lane' if lane else destination or 'every destination'}")


@push_group.command("backfill")
@config_option
@click.option("--from", "since", type=click.DateTime(["%Y-%m-%d"]), required=True, help="First exam day.")
@click.option(
    "--to", "until", type=click.DateTime(["%Y-%m-%d"]), default=None, help="Last exam day (default: today)."
)
@click.option(
    "--dest", "dests", multiple=True, help="Only this [push] destination (repeatable; default: all)."
)
@click.option("--newest-first", is_flag=True, help="Deliver the newest exams first.")
@click.pass_obj
def push_backfill(
    obj: _PushContext,
    since: dt.datetime,
    until: dt.datetime | None,
    dests: tuple[str, ...],
    newest_first: bool,
) -> None:
    """Queue the visible exams performed from --from to --to (PerformTime, whole days) in the backfill
    lane: its own workers ([push] backfill_concurrent, backfill_mbps); live exams always go first."""
    from dicomproxy.view.repository import ExamView

    config = obj.config
    destinations = [d for d in (obj.destination(x) for x in dests) if d] or list(config.push.destinations)
    end = (until or dt.datetime.now()).replace(hour=0, minute=0, second=0) + dt.timedelta(days=1)
    view = ExamView(config)
    try:
        done = queue_backfill(
            obj.queue, view.studies_performed(since, end), destinations, config.push, newest_first
        )
    finally:
        view.close()
    last = end - dt.timedelta(days=1)
    click.echo(
        f"backfill: {done.studies} visible exam(s) from {since:%Y-%m-%d} to {last:%Y-%m-%d}; "
        f"{done.queued} item(s) queued for {', '.join(destinations)}, {done.present} already queued"
    )


@push_group.command("retry")
@config_option
@click.argument("item_id", type=int)
@click.pass_obj
def push_retry(obj: _PushContext, item_id: int) -> None:
    """Try a failed, waiting or dropped item now (only what its destination has not confirmed)."""
    item = obj.queue.get(item_id)
    if item is None:
        click.echo(f"error: no push item {item_id}", err=True)
        sys.exit(1)
    if not obj.queue.retry(item_id):
        click.echo(
            f"error: push item {item_id} is {item['state']}: only failed, waiting or dropped items", err=True
        )
        sys.exit(1)
    click.echo(f"push item {item_id} queued")


def _since(text: str) -> dt.datetime:
    """A local date or date-time → naive UTC (the journal's times)."""
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a date (YYYY-MM-DD or YYYY-MM-DDTHH:MM)") from None
    if when.tzinfo is None:
        when = when.astimezone()  # local time
    return when.astimezone(dt.timezone.utc).replace(tzinfo=None)


@push_group.command("requeue")
@config_option
@click.option("--since", "since", required=True, help="Local date or date-time: items queued since then.")
@click.option("--dest", "destination", default=None, help="Only this destination.")
@click.pass_obj
def push_requeue(obj: _PushContext, since: str, destination: str | None) -> None:
    """Send again, in full, every study queued since DATE (e.g. the cloud lost it)."""
    when = _since(since)
    n = obj.queue.requeue(when, obj.destination(destination))
    click.echo(f"{n} item(s) queued again (sent in full)")
