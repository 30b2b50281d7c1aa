"""Soak benchmark (not a test): mixed C-FIND and C-MOVE load against a running proxy.

    .venv/bin/python benchmarks/soak.py --minutes 30          # the issue's soak: 20 find + 4 move workers
    .venv/bin/python benchmarks/soak.py --minutes 1           # a quick look

Starts a real Orthanc (PACS, loaded with the demo studies), a DCMTK storescp (the cloud, ``--ignore``
so the disk does not fill), a SQLite exam view and ``dicomproxy serve`` as a separate process; then
``--find-workers`` threads each keep one association open and send Study-level C-FINDs, and
``--move-workers`` threads C-MOVE random demo studies to the cloud, until the time is up. Reports requests
served, errors (target 0), C-FIND latency p50/p95, and the proxy's RSS and thread count sampled every
``--sample-seconds`` (target: < 10 % RSS growth). Traffic stays on 127.0.0.1 and stops by itself.

RSS is judged twice, both printed: **start → end** (start = the idle proxy just before the load begins) and
**warm → end**, where "warm" is the first sample at or after ``--warmup-seconds`` of load (default 60 s, at
most half the run). Warm-up is the time the proxy takes to reach its working set under this load: every
worker's association open (two threads each, plus the C-MOVEs' PACS and destination associations), glibc's
arenas grown to what the threads use. In the 2-minute runs of docs/performance.md RSS was flat from ~70 s
on. Growth after warm-up is what a leak would look like; growth before it is a one-off plateau, and
the criterion is still printed for both.

``--proxy-env KEY=VALUE`` (repeatable) adds to the proxy's environment, e.g.
``DICOMPROXY_MALLOC_ARENAS=0`` to run without the proxy's glibc arena cap (docs/performance.md, "Soak").
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
)
from sqlalchemy import create_engine

from dicomproxy.transport.net import NODELAY_HANDLERS, Remote, guard_requestor
from testkit import Process, free_port, wait_for_echo
from testkit.dcmtk import StoreSCP
from testkit.demo import write_config
from testkit.orthanc import Orthanc
from testkit.samples import demo_specs, exam_row, write_study
from testkit.viewdb import create_view_table, insert_rows


@dataclass
class Stats:
    lock: threading.Lock = field(default_factory=threading.Lock)
    finds: int = 0
    moves: int = 0
    instances: int = 0
    errors: list[str] = field(default_factory=list)
    find_ms: list[float] = field(default_factory=list)

    def error(self, text: str) -> None:
        with self.lock:
            self.errors.append(text)


GROWTH_LIMIT = 10.0  # per cent, the soak criterion


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS (kB) and Threads from /proc/PID/status; empty when the process is gone."""
    out: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "Threads"):
            out[key] = int(value.split()[0])
    return out


@dataclass
class Sample:
    seconds: float
    rss_kb: int
    threads: int


def sampler(pid: int, t0: float, every: float, done: threading.Event, samples: list[Sample]) -> None:
    while not done.wait(every):
        st = proc_status(pid)
        if st:
            samples.append(Sample(time.monotonic() - t0, st.get("VmRSS", 0), st.get("Threads", 0)))


def growth(a: int, b: int) -> float:
    return (b - a) / a * 100 if a else float("nan")


def verdict(pct: float) -> str:
    return "ok" if pct < GROWTH_LIMIT else f"over the {GROWTH_LIMIT:g} % limit"


def find_worker(port: int, stop: float, stats: Stats, patients: list[str]) -> None:
    ae = AE(ae_title="jobserver")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = None
    while time.monotonic() < stop:
        if assoc is None or not assoc.is_established:
            assoc = ae.associate("127.0.0.1", port, ae_title="DICOMPROXY", evt_handlers=NODELAY_HANDLERS)
            if not assoc.is_established:
                stats.error("find: association failed")
                time.sleep(0.5)
                continue
            guard_requestor(assoc)  # pynetdicom#875
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.PatientID = random.choice(patients)
        query.StudyInstanceUID = ""
        query.StudyDate = ""
        query.ModalitiesInStudy = ""
        t0 = time.perf_counter()
        final = None
        for status, _ in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
            if status is None or "Status" not in status:
                stats.error("find: no response")
                break
            final = status.Status
        elapsed = (time.perf_counter() - t0) * 1000
        with stats.lock:
            if final == 0x0000:
                stats.finds += 1
                stats.find_ms.append(elapsed)
            else:
                stats.errors.append(f"find: status {final}")
    if assoc is not None and assoc.is_established:
        assoc.release()
    ae.shutdown()


def move_worker(port: int, stop: float, stats: Stats, studies: list[str]) -> None:
    ae = AE(ae_title="jobserver")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    while time.monotonic() < stop:
        assoc = ae.associate("127.0.0.1", port, ae_title="DICOMPROXY", evt_handlers=NODELAY_HANDLERS)
        if not assoc.is_established:
            stats.error("move: association failed")
            time.sleep(0.5)
            continue
        guard_requestor(assoc)  # pynetdicom#875
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = random.choice(studies)
        final, completed = None, 0
        for status, _ in assoc.send_c_move(query, "jobserver", StudyRootQueryRetrieveInformationModelMove):
            if status is None or "Status" not in status:
                stats.error("move: no response")
                break
            final = status.Status
            completed = int(getattr(status, "NumberOfCompletedSuboperations", completed) or 0)
        assoc.release()
        with stats.lock:
            if final == 0x0000:
                stats.moves += 1
                stats.instances += completed
            else:
                stats.errors.append(f"move: status {final}")
    ae.shutdown()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--find-workers", type=int, default=20)
    parser.add_argument("--move-workers", type=int, default=4)
    parser.add_argument("--sample-seconds", type=float, default=10.0, help="RSS/thread sampling period")
    parser.add_argument(
        "--warmup-seconds", type=float, default=60.0, help="load time before the 'warm' RSS (≤ half the run)"
    )
    parser.add_argument(
        "--proxy-env", action="append", default=[], metavar="KEY=VALUE", help="extra proxy environment"
    )
    opts = parser.parse_args()
    if any("=" not in item for item in opts.proxy_env):
        parser.error("--proxy-env takes KEY=VALUE")
    extra_env = dict(item.split("=", 1) for item in opts.proxy_env)
    warmup = min(opts.warmup_seconds, opts.minutes * 60 / 2)

    work = Path(tempfile.mkdtemp(prefix="dicomproxy-soak-"))
    specs = demo_specs()
    files = {s.accession: write_study(s, work / "studies" / s.accession) for s in specs}
    engine = create_engine(f"sqlite:///{work / 'view.db'}")
    create_view_table(engine)
    insert_rows(engine, [exam_row(s) for s in specs])
    engine.dispose()

    started: list[object] = []
    try:
        cloud = StoreSCP(work / "cloud", "jobserver", extra=["--ignore"]).start()
        started.append(cloud)
        port = free_port()
        pacs = Orthanc(
            work / "orthanc", modalities={"proxy": Remote("DICOMPROXY", "127.0.0.1", port)}
        ).start()
        started.append(pacs)
        for paths in files.values():
            pacs.upload(paths)
        config = write_config(work, port, pacs.remote, cloud.remote)
        proxy = Process(
            [sys.executable, "-m", "dicomproxy", "serve", "-c", str(config)],
            work / "proxy.log",
            env=extra_env,
        )
        started.append(proxy)
        wait_for_echo(Remote("DICOMPROXY", "127.0.0.1", port), calling="jobserver", proc=proxy.proc)

        stats = Stats()
        start = proc_status(proxy.proc.pid)
        t0 = time.monotonic()
        samples = [Sample(0.0, start.get("VmRSS", 0), start.get("Threads", 0))]
        done = threading.Event()
        watcher = threading.Thread(
            target=sampler, args=(proxy.proc.pid, t0, opts.sample_seconds, done, samples), daemon=True
        )
        watcher.start()
        stop = t0 + opts.minutes * 60
        patients = sorted({s.patient.patient_id for s in specs})
        studies = [s.study_uid for s in specs]
        threads = [
            threading.Thread(target=find_worker, args=(port, stop, stats, patients))
            for _ in range(opts.find_workers)
        ] + [
            threading.Thread(target=move_worker, args=(port, stop, stats, studies))
            for _ in range(opts.move_workers)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        done.set()
        watcher.join()
        end = proc_status(proxy.proc.pid)
        samples.append(Sample(time.monotonic() - t0, end.get("VmRSS", 0), end.get("Threads", 0)))
    finally:
        for item in reversed(started):
            item.stop()  # type: ignore[attr-defined]

    q = statistics.quantiles(stats.find_ms, n=20) if len(stats.find_ms) >= 20 else [float("nan")] * 19
    warm = next((x for x in samples if x.seconds >= warmup), samples[-1])
    rss_start, rss_warm, rss_end = samples[0].rss_kb, warm.rss_kb, samples[-1].rss_kb
    env_note = f", proxy env {' '.join(opts.proxy_env)}" if opts.proxy_env else ""
    print(
        f"soak: {opts.minutes:g} min, {opts.find_workers} find + {opts.move_workers} move workers{env_note}"
    )
    print(f"  C-FIND served      {stats.finds}")
    print(f"  C-MOVE served      {stats.moves} ({stats.instances} instances)")
    print(f"  errors             {len(stats.errors)} {sorted(set(stats.errors))[:5]}")
    p50 = statistics.median(stats.find_ms or [float("nan")])
    print(f"  C-FIND latency     p50 {p50:.1f} ms, p95 {q[18]:.1f} ms")
    print("  proxy samples      t(s)   RSS MB  threads")
    step = max(1, len(samples) // 12)  # about a dozen lines, always the first, the warm one and the last
    for i, x in enumerate(samples):
        if i % step == 0 or x is warm or i == len(samples) - 1:
            mark = "  <- warm" if x is warm else ""
            print(f"                     {x.seconds:5.0f}  {x.rss_kb / 1024:7.1f}  {x.threads:7d}{mark}")
    g_start, g_warm = growth(rss_start, rss_end), growth(rss_warm, rss_end)
    print(
        f"  proxy RSS          start {rss_start / 1024:.1f} MB, warm ({warm.seconds:.0f} s) "
        f"{rss_warm / 1024:.1f} MB, end {rss_end / 1024:.1f} MB"
    )
    print(f"  RSS start -> end   {g_start:+.1f} %  ({verdict(g_start)})")
    print(f"  RSS warm  -> end   {g_warm:+.1f} %  ({verdict(g_warm)})")
    return 0 if not stats.errors else 1


if __name__ == "__main__":
    sys.exit(main())
