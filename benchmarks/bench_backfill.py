"""Backfill benchmark (not a test): does a historical backlog delay live exams? (issue 27 item 3)

    .venv/bin/python benchmarks/bench_backfill.py [--history 200] [--live 10] [--every 2.0]

Real CT slices (pydicom-data, one per study) in a real Orthanc (the PACS): ``--history`` historical
studies and two sets of ``--live`` live ones. A pynetdicom storage SCP (testkit's FakeDestination)
is the cloud; the time each instance arrives is taken by polling its list every 5 ms. Two runs, each
a fresh ``dicomproxy serve`` process and journal on the same SQLite view (push on, poll 0.5 s,
``max_concurrent = 2``, ``backfill_concurrent = 1``):

- A: no backfill; a live row inserted every ``--every`` s;
- B: ``dicomproxy push backfill`` of the whole history first, then the live rows the same way.

Per live study: the time from its row's insert to its instance's arrival. Prints p50/p95 of A and B,
and B's backfill rate while the live rows arrived. Live first is structural (workers of their own):
this measures that the shared PACS, CPU and destination do not undo it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from sqlalchemy import create_engine

from dicomproxy.transport.net import Remote
from testkit import Process, free_port, wait_for_echo
from testkit.fakepacs import FakeDestination
from testkit.orthanc import Orthanc
from testkit.realct import write_real_study
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


def toml(path: Path, port: int, pacs: Remote, dest: Remote, view_url: str) -> None:
    path.write_text(
        f'[proxy]\nae_title = "BFPROXY"\nhost = "127.0.0.1"\nport = {port}\n'
        f'data_dir = "{path.parent / path.stem}"\n'
        f'[hospital]\nid = "74580626"\n[view]\nurl = "{view_url}"\n[logging]\nlevel = "WARNING"\n'
        f'[pacs]\nae_title = "{pacs.ae_title}"\nhost = "{pacs.host}"\nport = {pacs.port}\n'
        'retrieve = "c-get"\n'
        f'[[peers]]\nae_title = "{CALLER}"\nhost = "127.0.0.1"\nport = 1\n'
        f'[[peers]]\nae_title = "{dest.ae_title}"\nhost = "{dest.host}"\nport = {dest.port}\n'
        f'[push]\nenabled = true\ndestinations = ["{dest.ae_title}"]\npoll_interval = 0.5\n'
        "max_concurrent = 2\nbackfill_concurrent = 1\nrecheck_after = 0\nretry_delay = 1.0\n"
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
            got = list(self.dest.received)
            for uid, _ in got[seen:]:
                self.first.setdefault(uid, now)
            seen = len(got)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def run(
    name: str,
    work: Path,
    pacs: Orthanc,
    view_url: str,
    history: list[StudySpec],
    live: list[StudySpec],
    every: float,
) -> tuple[list[float], float, int]:
    dest = FakeDestination(f"CLOUD{name}")
    dest.start()
    arrivals = Arrivals(dest)
    port = free_port()
    config = work / f"{name}.toml"
    toml(config, port, pacs.remote, Remote(dest.ae_title, "127.0.0.1", dest.port), view_url)
    proc = Process([sys.executable, "-m", "dicomproxy", "serve", "-c", str(config)], work / f"{name}.log")
    engine = create_engine(view_url)
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
            time.sleep(every)
        deadline = time.perf_counter() + 300
        while not all(u in arrivals.first for u in inserted) and time.perf_counter() < deadline:
            time.sleep(0.1)
        live_done = time.perf_counter()
        latencies = [arrivals.first[u] - t for u, t in inserted.items() if u in arrivals.first]
        backfilled = sum(
            1 for s in history if arrivals.first.get(s.sop_uid(0, 0), live_done + 1) <= live_done
        )
        return latencies, live_done - started, backfilled
    finally:
        arrivals.stop()
        proc.stop()
        dest.stop()
        engine.dispose()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--history", type=int, default=200)
    ap.add_argument("--live", type=int, default=10)
    ap.add_argument("--every", type=float, default=2.0)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-backfill-"))
    history = specs("H", args.history, 10_000, "20230615")
    live_a, live_b = specs("LA", args.live, 50_000, "20241201"), specs("LB", args.live, 60_000, "20241201")
    pacs = Orthanc(work / "pacs").start()
    try:
        for spec in [*history, *live_a, *live_b]:
            pacs.upload(write_real_study(spec, work / "studies" / spec.accession))
        view_url = f"sqlite:///{work / 'view.db'}"
        engine = create_engine(view_url)
        create_view_table(engine)
        old = dt.datetime.now() - dt.timedelta(days=500)
        insert_rows(
            engine, [exam_row(s, RowTimestamp=old + dt.timedelta(seconds=i)) for i, s in enumerate(history)]
        )
        engine.dispose()
        a, _, _ = run("A", work, pacs, view_url, [], live_a, args.every)
        b, window, backfilled = run("B", work, pacs, view_url, history, live_b, args.every)
        print(
            f"\n{args.history} historical + {args.live} live studies (one real CT slice each), "
            f"a live row every {args.every} s\n"
        )
        print("| run | live p50 s | live p95 s | live max s | historical delivered meanwhile |")
        print("|---|---|---|---|---|")
        print(f"| A: no backfill | {statistics.median(a):.2f} | {pct(a, 0.95):.2f} | {max(a):.2f} | — |")
        print(
            f"| B: backfill running | {statistics.median(b):.2f} | {pct(b, 0.95):.2f} | {max(b):.2f} | "
            f"{backfilled} in {window:.0f} s ({backfilled / window:.1f}/s) |"
        )
        print(f"\nlive counts: A {len(a)}/{args.live}, B {len(b)}/{args.live}")
    finally:
        pacs.stop()


if __name__ == "__main__":
    main()
