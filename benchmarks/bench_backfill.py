"""Backfill benchmark (not a test): does a historical backlog delay live exams? (issue 27 item 3)

    .venv/bin/python benchmarks/bench_backfill.py [--history 2000] [--live 20] [--every 3.0]
        [--size 128] [--backfill-concurrent 2] [--drain-timeout 900]

Real CT pixels (pydicom-data: a ``--size`` × ``--size`` crop of a 512 × 512 slice, one instance per
study) in a real Orthanc (the PACS), uploaded in bulk as ZIP archives (``POST /instances``):
``--history`` historical studies and two sets of ``--live`` live ones. A pynetdicom storage SCP
(testkit's FakeDestination) is the cloud; the time each instance arrives is taken by polling its
list every 5 ms. Two runs, each a fresh ``dicomproxy serve`` process and journal on the same SQLite
view (push on, poll 0.5 s, ``max_concurrent = 2``, ``backfill_concurrent`` as given):

- A: no backfill; a live row inserted every ``--every`` s;
- B: ``dicomproxy push backfill`` of the whole history first, then the live rows the same way;
  then the backlog is left to drain.

Per live study: the time from its row's insert to its instance's arrival. Prints p50/p95/max of A
and B, the backfill's rate (while the live rows arrived, and overall), and the load average before
and after. At the end it checks, per SOP Instance UID received by B's destination, that every
historical and live study arrived exactly once (none missing, none twice, nothing else) and exits 1
when not. A run of 2,000 takes about 10 minutes here; its numbers and the load: docs/push.md,
"The backfill lane".
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from sqlalchemy import create_engine

from dicomproxy.transport.net import Remote
from testkit import Process, free_port, wait_for_echo
from testkit.bulk import upload_studies
from testkit.fakepacs import FakeDestination
from testkit.orthanc import Orthanc
from testkit.samples import StudySpec, exam_row
from testkit.viewdb import create_view_table, insert_rows

CALLER = "BENCH"


def specs(prefix: str, n: int, seed: int, day: str) -> list[StudySpec]:
    return [
        StudySpec(
            "CT", accession=f"{prefix}{i:05d}", series=1, images_per_series=1, seed=seed + i, study_date=day
        )
        for i in range(n)
    ]


def toml(path: Path, port: int, pacs: Remote, dest: Remote, view_url: str, backfill: int) -> None:
    path.write_text(
        f'[proxy]\nae_title = "BFPROXY"\nhost = "127.0.0.1"\nport = {port}\n'
        f'data_dir = "{path.parent / path.stem}"\n'
        f'[hospital]\nid = "74580626"\n[view]\nurl = "{view_url}"\n[logging]\nlevel = "WARNING"\n'
        f'[pacs]\nae_title = "{pacs.ae_title}"\nhost = "{pacs.host}"\nport = {pacs.port}\n'
        'retrieve = "c-get"\n'
        f'[[peers]]\nae_title = "{CALLER}"\nhost = "127.0.0.1"\nport = 1\n'
        f'[[peers]]\nae_title = "{dest.ae_title}"\nhost = "{dest.host}"\nport = {dest.port}\n'
        f'[push]\nenabled = true\ndestinations = ["{dest.ae_title}"]\npoll_interval = 0.5\n'
        f"max_concurrent = 2\nbackfill_concurrent = {backfill}\nrecheck_after = 0\nretry_delay = 1.0\n"
        "[reports]\nenabled = false\n"
    )


class Arrivals:
    """When each SOP Instance UID first reached the destination (polled every 5 ms)."""

    def __init__(self, dest: FakeDestination) -> None:
        self.dest = dest
        self.first: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        seen = 0
        while not self._stop.wait(0.005):
            now = time.perf_counter()
            got = self.dest.received[seen:]
            for uid, _ in got:
                self.first.setdefault(uid, now)
            seen += len(got)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class Result:
    """One run: live latencies, the backfill's progress, what the destination received."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.live_window = 0.0  # from the backfill's start to the last live arrival
        self.backfilled_meanwhile = 0
        self.drained = 0.0  # from the backfill's start to its last arrival (0: no backfill)
        self.received: Counter[str] = Counter()


def run(
    name: str,
    work: Path,
    pacs: Orthanc,
    view_url: str,
    history: list[StudySpec],
    live: list[StudySpec],
    args: argparse.Namespace,
) -> Result:
    dest = FakeDestination(f"CLOUD{name}")
    dest.start()
    arrivals = Arrivals(dest)
    port = free_port()
    config = work / f"{name}.toml"
    remote = Remote(dest.ae_title, "127.0.0.1", dest.port)
    toml(config, port, pacs.remote, remote, view_url, args.backfill_concurrent)
    proc = Process([sys.executable, "-m", "dicomproxy", "serve", "-c", str(config)], work / f"{name}.log")
    engine = create_engine(view_url)
    out = Result()
    try:
        wait_for_echo(Remote("BFPROXY", "127.0.0.1", port), 60, calling=CALLER, proc=proc.proc)
        time.sleep(1.5)  # the watcher's first pass set the watermark ("now")
        started = time.perf_counter()
        if history:
            subprocess.run(
                [sys.executable, "-m", "dicomproxy", "push", "-c", str(config),
                 "backfill", "--from", "2023-01-01", "--to", "2023-12-31"],
                check=True,
            )  # fmt: skip
        inserted: dict[str, float] = {}
        for spec in live:
            insert_rows(engine, [exam_row(spec, RowTimestamp=dt.datetime.now())])
            inserted[spec.sop_uid(0, 0)] = time.perf_counter()
            time.sleep(args.every)
        deadline = time.perf_counter() + 300
        while not all(u in arrivals.first for u in inserted) and time.perf_counter() < deadline:
            time.sleep(0.1)
        live_done = time.perf_counter()
        out.latencies = [arrivals.first[u] - t for u, t in inserted.items() if u in arrivals.first]
        out.live_window = live_done - started
        wanted = [s.sop_uid(0, 0) for s in history]
        out.backfilled_meanwhile = sum(1 for u in wanted if arrivals.first.get(u, live_done + 1) <= live_done)
        deadline = time.perf_counter() + args.drain_timeout
        while not all(u in arrivals.first for u in wanted) and time.perf_counter() < deadline:
            time.sleep(0.5)
        if history:
            out.drained = max(arrivals.first.get(u, time.perf_counter()) for u in wanted) - started
        time.sleep(3.0)  # anything sent twice would arrive now
        out.received = Counter(uid for uid, _ in dest.received)
        return out
    finally:
        arrivals.stop()
        proc.stop()
        dest.stop()
        engine.dispose()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


def once(received: Counter[str], studies: list[StudySpec]) -> tuple[int, int, int]:
    """(missing, received more than once, received but not among ``studies``)."""
    wanted = {s.sop_uid(0, 0) for s in studies}
    missing = sum(1 for u in wanted if not received[u])
    twice = sum(1 for u in wanted if received[u] > 1)
    return missing, twice, sum(1 for u in received if u not in wanted)


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--history", type=int, default=2000)
    ap.add_argument("--live", type=int, default=20)
    ap.add_argument("--every", type=float, default=3.0)
    ap.add_argument("--size", type=int, default=128, help="the real slice's centre crop, in pixels")
    ap.add_argument("--backfill-concurrent", type=int, default=2)
    ap.add_argument("--drain-timeout", type=float, default=900.0)
    args = ap.parse_args()
    if not 8 <= args.size <= 512:
        ap.error("--size must be 8..512")
    t0 = time.perf_counter()
    load_before = load()
    work = Path(tempfile.mkdtemp(prefix="bench-backfill-"))
    history = specs("H", args.history, 10_000, "20230615")
    live_a, live_b = specs("LA", args.live, 50_000, "20241201"), specs("LB", args.live, 60_000, "20241201")
    pacs = Orthanc(work / "pacs").start()
    try:
        upload_studies(pacs, [*history, *live_a, *live_b], args.size)
        loaded = time.perf_counter() - t0
        view_url = f"sqlite:///{work / 'view.db'}"
        engine = create_engine(view_url)
        create_view_table(engine)
        old = dt.datetime.now() - dt.timedelta(days=500)
        insert_rows(
            engine, [exam_row(s, RowTimestamp=old + dt.timedelta(seconds=i)) for i, s in enumerate(history)]
        )
        engine.dispose()
        a = run("A", work, pacs, view_url, [], live_a, args)
        load_between = load()
        b = run("B", work, pacs, view_url, history, live_b, args)
    finally:
        pacs.stop()
    load_after = load()
    h_missing, h_twice, _ = once(b.received, history)
    l_missing, l_twice, _ = once(b.received, live_b)
    _, _, stray = once(b.received, [*history, *live_b])
    print(
        f"\n{args.history} historical + {args.live} live studies (one {args.size}×{args.size} crop of a "
        f"real CT slice each), a live row every {args.every} s; max_concurrent = 2, "
        f"backfill_concurrent = {args.backfill_concurrent}; "
        f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores\n"
    )
    print("| run | live p50 s | live p95 s | live max s | live delivered | backfill meanwhile |")
    print("|---|---|---|---|---|---|")
    for label, r in (("A: no backfill", a), ("B: backfill running", b)):
        meanwhile = (
            f"{r.backfilled_meanwhile} in {r.live_window:.0f} s "
            f"({r.backfilled_meanwhile / r.live_window:.1f}/s)"
            if r is b
            else "—"
        )
        print(
            f"| {label} | {statistics.median(r.latencies):.2f} | {pct(r.latencies, 0.95):.2f} | "
            f"{max(r.latencies):.2f} | {len(r.latencies)}/{args.live} | {meanwhile} |"
        )
    print(
        f"\nbackfill: {args.history} studies drained in {b.drained:.0f} s "
        f"({args.history / b.drained if b.drained else 0:.1f} studies/s overall)"
    )
    print(
        f"exactly once at B's destination: historical {args.history - h_missing - h_twice}/{args.history} "
        f"(missing {h_missing}, twice or more {h_twice}); live {args.live - l_missing - l_twice}/{args.live} "
        f"(missing {l_missing}, twice {l_twice}); unexpected {stray}"
    )
    print(
        f"load average (1/5/15 min): before {load_before}; after A {load_between}; after B {load_after}; "
        f"set-up (upload) {loaded:.0f} s, whole run {time.perf_counter() - t0:.0f} s"
    )
    if h_missing or h_twice or l_missing or l_twice or stray:
        sys.exit(1)


if __name__ == "__main__":
    main()
