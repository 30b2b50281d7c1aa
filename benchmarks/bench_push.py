"""Push benchmark (not a test): N new exam-view rows at once → time until storescp holds every study,
against a loop of C-MOVEs of the same studies through the same proxy (what the cloud does today).

    .venv/bin/python benchmarks/bench_push.py [--studies 1000] [--concurrent 2,4] [--cap-mbps 40]
                                              [--cap-studies 100] [--workdir DIR]

Generates N one-instance MR studies (256×256, 16-bit), loads them into a real Orthanc (the PACS),
starts DCMTK storescp (the destination, ``--fork``) and ``dicomproxy serve`` with ``[push]`` on
(upstream C-GET, SQLite view and journal). Then, per ``--concurrent`` value:

- **push**: a fresh proxy (``start_from = "now"``) and an empty destination; the N rows are inserted
  in one transaction; the clock runs from the commit until storescp holds N files. The proxy's RSS
  (VmRSS) is sampled every 0.5 s: start, peak, end.
- **C-MOVE loop**: with push off, one C-MOVE per study (``dicomproxy.transport.scu.move``, STUDY level, one
  after the other) from a cloud AE through the same kind of proxy to a second storescp.

``--cap-mbps``: one more push run with ``max_mbps`` on the destination for ``--cap-studies`` rows:
the achieved rate (bytes at storescp × 8 / seconds) against the cap. ``--window-check``: a push run
with a ``window`` that is closed now: studies delivered after 15 s (expected 0).

Prints Markdown tables (docs/push.md keeps the results with the command and the machine).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

from sqlalchemy import create_engine

from dicomproxy.transport import scu
from dicomproxy.transport.net import Remote
from testkit import Process, free_port, wait_for_echo
from testkit.dcmtk import StoreSCP
from testkit.orthanc import Orthanc
from testkit.samples import StudySpec, exam_row, write_study
from testkit.viewdb import create_view_table, insert_rows


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class RssSampler:
    """VmRSS every 0.5 s, with the number of files at the destination then (``dest``)."""

    def __init__(self, pid: int, dest: StoreSCP | None = None) -> None:
        self.pid = pid
        self.dest = dest
        self.samples: list[float] = []
        self.by_files: list[tuple[int, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(rss_mb(self.pid))
            except OSError:
                return
            if self.dest is not None:
                self.by_files.append((files_in(self.dest), self.samples[-1]))
            self._stop.wait(0.5)

    def at_quarters(self, total: int) -> list[float]:
        """RSS when the destination first held ≥ 25, 50, 75, 100 % of ``total`` files."""
        out = []
        for q in (0.25, 0.5, 0.75, 1.0):
            out.append(next((r for n, r in self.by_files if n >= q * total), float("nan")))
        return out

    def stop(self) -> tuple[float, float, float]:
        self._stop.set()
        self._thread.join()
        s = self.samples or [float("nan")]
        return s[0], max(s), s[-1]


def proxy_toml(path: Path, port: int, data: Path, view: str, pacs: Remote, dest: StoreSCP, push: str) -> None:
    path.write_text(
        f'[proxy]\nae_title = "DICOMPROXY"\nhost = "127.0.0.1"\nport = {port}\ndata_dir = "{data}"\n'
        f'[hospital]\nid = "74580626"\n[view]\nurl = "{view}"\n'
        f'[pacs]\nae_title = "{pacs.ae_title}"\nhost = "127.0.0.1"\nport = {pacs.port}\nretrieve = "c-get"\n'
        f'[[peers]]\nae_title = "CLOUD"\nhost = "127.0.0.1"\nport = 1\n'
        f'[[peers]]\nae_title = "{dest.ae_title}"\nhost = "127.0.0.1"\nport = {dest.port}\n'
        f'[http]\nport = 0\n[logging]\nlevel = "WARNING"\n[journal]\nresume_window = 0\n{push}'
    )


def start_proxy(
    work: Path, name: str, view: str, pacs: Remote, dest: StoreSCP, push: str
) -> tuple[Process, int]:
    port = free_port()
    toml = work / f"{name}.toml"
    proxy_toml(toml, port, work / name, view, pacs, dest, push)
    proc = Process([sys.executable, "-m", "dicomproxy", "serve", "-c", str(toml)], work / f"{name}.log")
    wait_for_echo(Remote("DICOMPROXY", "127.0.0.1", port), 60, calling="CLOUD", proc=proc.proc)
    return proc, port


def files_in(dest: StoreSCP) -> int:
    return sum(1 for p in dest.outdir.iterdir() if p.is_file()) if dest.outdir.is_dir() else 0


def wait_files(dest: StoreSCP, n: int, timeout: float) -> float:
    start = time.monotonic()
    while files_in(dest) < n:
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"{files_in(dest)} of {n} files after {timeout:.0f} s")
        time.sleep(0.05)
    return time.monotonic() - start


def push_run(
    work: Path, name: str, specs: list[StudySpec], pacs: Remote, push_extra: str, timeout: float = 1800
) -> dict[str, float]:
    view = f"sqlite:///{work / (name + '-view.db')}"
    engine = create_engine(view)
    create_view_table(engine)
    dest = StoreSCP(work / f"{name}-scp", "DEST", extra=["--fork"]).start()
    push = (
        '[push]\nenabled = true\ndestinations = ["DEST"]\nstart_from = "beginning"\npoll_interval = 1\n'
        f"{push_extra}"
    )
    proc, _ = start_proxy(work, name, view, pacs, dest, push)
    try:
        sampler = RssSampler(proc.proc.pid, dest)
        t0 = time.monotonic()
        insert_rows(engine, [exam_row(s, RowTimestamp=dt.datetime.now()) for s in specs])
        try:
            wait_files(dest, len(specs), timeout)
            seconds = time.monotonic() - t0  # from just before the insert's commit
        except TimeoutError:
            seconds = float("nan")
        rss = sampler.stop()
        nbytes = sum(p.stat().st_size for p in dest.outdir.iterdir())
        quarters = sampler.at_quarters(len(specs))
        quarters[3] = rss[2]  # the last sample: the sampler may stop before it saw 100 %
        return {"seconds": seconds, "rss0": rss[0], "rss_peak": rss[1], "rss_end": rss[2],
                "files": files_in(dest), "bytes": nbytes, "q1": quarters[0], "q2": quarters[1],
                "q3": quarters[2], "q4": quarters[3]}  # fmt: skip
    finally:
        proc.stop()
        dest.stop()
        engine.dispose()


def move_loop(work: Path, specs: list[StudySpec], pacs: Remote) -> dict[str, float]:
    view = f"sqlite:///{work / 'loop-view.db'}"
    engine = create_engine(view)
    create_view_table(engine)
    insert_rows(engine, [exam_row(s) for s in specs])
    engine.dispose()
    dest = StoreSCP(work / "loop-scp", "DEST", extra=["--fork"]).start()
    proc, port = start_proxy(work, "loop", view, pacs, dest, "")
    try:
        sampler = RssSampler(proc.proc.pid, dest)
        remote = Remote("DICOMPROXY", "127.0.0.1", port)
        t0 = time.monotonic()
        for spec in specs:
            scu.move(
                remote, "DEST", scu.identifier(study_uids=[spec.study_uid]), calling_ae="CLOUD", timeout=120
            )
        wait_files(dest, len(specs), 120)
        seconds = time.monotonic() - t0
        rss = sampler.stop()
        quarters = sampler.at_quarters(len(specs))
        quarters[3] = rss[2]
        return {"seconds": seconds, "rss0": rss[0], "rss_peak": rss[1], "rss_end": rss[2],
                "files": files_in(dest), "q1": quarters[0], "q2": quarters[1], "q3": quarters[2],
                "q4": quarters[3]}  # fmt: skip
    finally:
        proc.stop()
        dest.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--studies", type=int, default=1000)
    ap.add_argument("--concurrent", default="2,4", help="push max_concurrent values to run")
    ap.add_argument(
        "--cap-mbps", type=float, default=5.0, help="0 = no capped run (pick one below the uncapped rate)"
    )
    ap.add_argument("--cap-studies", type=int, default=100)
    ap.add_argument("--window-check", action="store_true")
    ap.add_argument("--workdir", type=Path, default=None)
    a = ap.parse_args()
    work = a.workdir or Path(tempfile.mkdtemp(prefix="bench-push-"))
    work.mkdir(parents=True, exist_ok=True)
    specs = [
        StudySpec("MR", accession=f"B{i:05d}", series=1, images_per_series=1, seed=10_000 + i)
        for i in range(a.studies)
    ]
    t = time.monotonic()
    files = [p for s in specs for p in write_study(s, work / "studies" / s.accession)]
    print(f"# {len(specs)} studies written in {time.monotonic() - t:.1f} s", flush=True)
    orthanc = Orthanc(work / "orthanc").start()
    try:
        t = time.monotonic()
        for path in files:
            orthanc.request("POST", "/instances", path.read_bytes())
        print(f"# loaded into Orthanc in {time.monotonic() - t:.1f} s", flush=True)
        pacs = orthanc.remote
        rows = []
        for c in [int(x) for x in a.concurrent.split(",") if x]:
            r = push_run(work, f"push-c{c}", specs, pacs, f"max_concurrent = {c}\n")
            rows.append((f"push, max_concurrent = {c}", r))
            print(f"# push c={c}: {r}", flush=True)
        r = move_loop(work, specs, pacs)
        rows.append(("C-MOVE loop (one study at a time)", r))
        print(f"# loop: {r}", flush=True)
        machine = f"{platform.node()}, {os.cpu_count()} cores"
        print(f"\n{a.studies} studies × 1 MR instance (256×256×16 bit); {machine}\n")
        print(
            "| run | seconds | studies/s | proxy RSS MB start / peak | RSS MB at 25/50/75 % / end | files |"
        )
        print("|---|---:|---:|---|---|---:|")
        for name, r in rows:
            print(
                f"| {name} | {r['seconds']:.1f} | {a.studies / r['seconds']:.1f} | "
                f"{r['rss0']:.0f} / {r['rss_peak']:.0f} | "
                f"{r['q1']:.0f} / {r['q2']:.0f} / {r['q3']:.0f} / {r['q4']:.0f} | {r['files']:.0f} |"
            )
        if a.cap_mbps:
            sub = specs[: a.cap_studies]
            free = push_run(work, "push-uncapped", sub, pacs, "max_concurrent = 2\n")
            cap = push_run(
                work, "push-capped", sub, pacs, f"max_concurrent = 2\n[push.max_mbps]\nDEST = {a.cap_mbps}\n"
            )
            print(f"\nmax_mbps ({len(sub)} studies, {cap['bytes'] / 1e6:.1f} MB sent):\n")
            print("| run | seconds | Mbit/s achieved |")
            print("|---|---:|---:|")
            for name, r in (("no cap", free), (f"max_mbps = {a.cap_mbps:g}", cap)):
                print(f"| {name} | {r['seconds']:.2f} | {r['bytes'] * 8 / 1e6 / r['seconds']:.1f} |")
        if a.window_check:
            now = dt.datetime.now()
            closed = f"{(now + dt.timedelta(hours=2)):%H:00}-{(now + dt.timedelta(hours=3)):%H:00}"
            r = push_run(work, "push-window", specs[:20], pacs, f'window = "{closed}"\n', timeout=15)
            print(f"\nwindow {closed} (closed now): {r['files']:.0f} of 20 studies delivered after 15 s")
    finally:
        orthanc.stop()


if __name__ == "__main__":
    main()
