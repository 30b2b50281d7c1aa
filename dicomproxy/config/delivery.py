"""``[push]`` (finished exams sent unasked, docs/push.md), ``[reports]`` (order/report files) and
``[corrections]`` (corrections after delivery, docs/identity.md)."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass

from dicomproxy.config.reader import Section, expand_env

#: Exam states whose images exist (exam-view.md, State): 检查完成, 书写完成, 审核完成, 修订完成.
PUSH_STATES: tuple[str, ...] = ("检查完成", "书写完成", "审核完成", "修订完成")
#: ``[push] recheck_after`` at most (s): with ``rechecks`` ≤ 10 the longest gap is 7 days × 2⁹ ≈ 10
#: years, a due time well inside the calendar.
MAX_RECHECK_AFTER = 7 * 86400.0
_WINDOW_RE = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)$")


@dataclass(frozen=True)
class PushConfig:
    """Push mode (docs/push.md): exams the view announces by RowTimestamp go to ``destinations``."""

    enabled: bool = False
    #: Peer AE titles (``[[peers]]``) every queued study is sent to; each with its peer's compression.
    destinations: tuple[str, ...] = ()
    #: Seconds between two reads of the view above the watermark.
    poll_interval: float = 10.0
    #: Where the watermark starts the first time: "now", "beginning" or an ISO date-time
    #: (date-time RowTimestamps only).
    start_from: str = "now"
    #: Exam states that are queued (rows whose images exist); empty = any state.
    states: tuple[str, ...] = PUSH_STATES
    #: Only these view Sysid values (empty = all).
    sysids: tuple[str, ...] = ()
    #: Only these ExamineType (modality) values (empty = all).
    modalities: tuple[str, ...] = ()
    #: Off-peak window "HH:MM-HH:MM" (local time; may cross midnight) when sending may start; "" = always.
    window: str = ""
    #: Per-destination cap on sent megabits per second (AE title → Mbps); absent = no cap.
    max_mbps: tuple[tuple[str, float], ...] = ()
    #: Studies sent at the same time by this node.
    max_concurrent: int = 2
    #: Historical studies (``push backfill``) sent at the same time by this node, by workers of their
    #: own: a live exam never waits for one.
    backfill_concurrent: int = 1
    #: Cap on the backfill lane's sent megabits per second on this node (beside ``max_mbps``); 0 = none.
    backfill_mbps: float = 0.0
    #: View rows read per statement.
    batch_size: int = 500
    #: First pause before a failed study is tried again; doubles up to ``max_retry_delay``.
    retry_delay: float = 30.0
    max_retry_delay: float = 3600.0
    #: Attempts before a study is left ``failed`` (``push retry ID`` starts it again).
    max_attempts: int = 20
    #: Seconds a claimed study stays this node's without renewal (another node takes it over after).
    lease: float = 60.0
    #: Times a study's lease may expire and be taken over; at the next expiry it is ``failed``, not
    #: run again (a study that kills every node handling it); ``push retry ID`` runs it again.
    max_takeovers: int = 3
    #: Seconds after a delivery before the PACS is asked again whether the study grew (images that
    #: arrived late: a series sent after the RIS said the exam was finished); 0 = no re-checks.
    recheck_after: float = 600.0
    #: Re-checks after each delivery: the first ``recheck_after`` s after it, each next one twice the
    #: previous gap later (600 s and 2: at +10 min and +30 min); 0 = none. Only a grown count sends.
    rechecks: int = 2


#: ``[corrections] sweep_days`` at most: ten years of deliveries.
MAX_SWEEP_DAYS = 3660


@dataclass(frozen=True)
class CorrectionsConfig:
    """Corrections after delivery (IHE RAD IOCM; docs/identity.md): detected in ``serve`` for every
    delivered study, pushed or retrieved by the cloud, whether push is enabled or not."""

    #: False: nothing is detected on this node (another node sharing the journal does it).
    enabled: bool = True
    #: Seconds between two reads of the view's changed rows (and runs of the due corrections).
    poll_interval: float = 10.0
    #: Seconds between two comparisons of the delivered studies with the view (what no visible
    #: row announces: withdrawn or deleted rows, cleared UIDs); 0 = at start only.
    sweep: float = 900.0
    #: The sweep compares the studies delivered in the last ``sweep_days`` days (older deliveries
    #: are still compared when their row changes); 0 = every delivered study.
    sweep_days: int = 90


def corrections(s: Section) -> CorrectionsConfig:
    d = CorrectionsConfig()
    out = CorrectionsConfig(
        enabled=s.boolean("enabled", d.enabled),
        poll_interval=s.number("poll_interval", d.poll_interval, lo=0.1),
        sweep=s.number("sweep", d.sweep, lo=0.0),
        sweep_days=s.integer("sweep_days", d.sweep_days, lo=0, hi=MAX_SWEEP_DAYS),
    )
    s.finish()
    return out


@dataclass(frozen=True)
class ReportsConfig:
    """Order and report files (OrderFilePath / ReportFilePath) as DICOM objects of their study:
    delivered with pushed studies and, with ``in_retrieve``, offered to C-FIND/C-MOVE/C-GET."""

    enabled: bool = True
    #: Also in C-MOVE/C-GET answers (one sub-operation per file) and in C-FIND (the series of
    #: each file; counted in Number of Study Related Series/Instances).
    in_retrieve: bool = False
    #: Seconds to fetch one file (http/https/ftp).
    timeout: float = 30.0
    #: Larger files are refused (MiB).
    max_mb: float = 50.0
    #: Fetch attempts before a missing file is given up (logged); the images never wait for it.
    max_attempts: int = 10
    #: UNC share prefix → the folder it is mounted on, e.g. {"\\\\ris\\reports" = "/mnt/reports"}.
    shares: tuple[tuple[str, str], ...] = ()

    @property
    def retrievable(self) -> bool:
        """Whether C-FIND/C-MOVE/C-GET offer the files (``in_retrieve``, and files not turned off)."""
        return self.enabled and self.in_retrieve


def push(s: Section, peers: set[str]) -> PushConfig:
    d = PushConfig()
    s.used.add("max_mbps")
    caps: list[tuple[str, float]] = []
    raw = s.table.get("max_mbps", {})
    if not isinstance(raw, Mapping):
        raise s.error("max_mbps", "must be a table of destination AE title = Mbps")
    for ae, mbps in raw.items():
        if isinstance(mbps, bool) or not isinstance(mbps, (int, float)) or mbps <= 0:
            raise s.error(f"max_mbps.{ae}", f"must be a number > 0, not {mbps!r}")
        caps.append((str(ae), float(mbps)))
    push = PushConfig(
        enabled=s.boolean("enabled", d.enabled),
        destinations=tuple(x.strip() for x in s.strings("destinations", d.destinations)),
        poll_interval=s.number("poll_interval", d.poll_interval, lo=0.1),
        start_from=s.string("start_from", d.start_from),
        states=tuple(x.strip() for x in s.strings("states", d.states)),
        sysids=tuple(x.strip().upper() for x in s.strings("sysids", ())),
        modalities=tuple(x.strip().upper() for x in s.strings("modalities", ())),
        window=s.string("window", d.window).strip(),
        max_mbps=tuple(caps),
        max_concurrent=s.integer("max_concurrent", d.max_concurrent, lo=1, hi=64),
        backfill_concurrent=s.integer("backfill_concurrent", d.backfill_concurrent, lo=0, hi=64),
        backfill_mbps=s.number("backfill_mbps", d.backfill_mbps, lo=0.0),
        batch_size=s.integer("batch_size", d.batch_size, lo=1, hi=1000),
        retry_delay=s.number("retry_delay", d.retry_delay, lo=0.1),
        max_retry_delay=s.number("max_retry_delay", d.max_retry_delay, lo=0.1),
        max_attempts=s.integer("max_attempts", d.max_attempts, lo=1),
        lease=s.number("lease", d.lease, lo=1.0),
        max_takeovers=s.integer("max_takeovers", d.max_takeovers, lo=0, hi=1000),
        recheck_after=s.number("recheck_after", d.recheck_after, lo=0.0),
        rechecks=s.integer("rechecks", d.rechecks, lo=0, hi=10),
    )
    for i, ae in enumerate(push.destinations):
        if ae not in peers:
            raise s.error(f"destinations[{i}]", f"{ae!r} is not a [[peers]] AE title")
    for ae, _ in push.max_mbps:
        if ae not in push.destinations:
            raise s.error(f"max_mbps.{ae}", f"{ae!r} is not one of push.destinations")
    if push.enabled and not push.destinations:
        raise s.error("destinations", "must name at least one peer when enabled = true")
    if push.start_from not in ("now", "beginning"):
        try:
            dt.datetime.fromisoformat(push.start_from)
        except ValueError:
            raise s.error(
                "start_from", f'must be "now", "beginning" or an ISO date-time, not {push.start_from!r}'
            ) from None
    if push.recheck_after > MAX_RECHECK_AFTER:
        raise s.error(
            "recheck_after", f"must be at most {MAX_RECHECK_AFTER:.0f} (7 days), not {push.recheck_after:g}"
        )
    if push.window and not _WINDOW_RE.match(push.window):
        raise s.error("window", f'must be "HH:MM-HH:MM" (e.g. "20:00-07:00"), not {push.window!r}')
    if push.window and push.window[:5] == push.window[6:]:
        raise s.error("window", f"{push.window!r} is empty (start equals end); leave it out for always")
    s.finish()
    return push


def reports(s: Section) -> ReportsConfig:
    d = ReportsConfig()
    s.used.add("shares")
    raw = s.table.get("shares", {})
    if not isinstance(raw, Mapping) or not all(isinstance(v, str) for v in raw.values()):
        raise s.error("shares", "must be a table of UNC prefix = mounted folder")
    reports = ReportsConfig(
        enabled=s.boolean("enabled", d.enabled),
        in_retrieve=s.boolean("in_retrieve", d.in_retrieve),
        timeout=s.number("timeout", d.timeout, lo=0.1),
        max_mb=s.number("max_mb", d.max_mb, lo=0.001),
        max_attempts=s.integer("max_attempts", d.max_attempts, lo=1),
        shares=tuple((str(k), expand_env(v, s)) for k, v in raw.items()),
    )
    s.finish()
    return reports
