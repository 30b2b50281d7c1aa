"""Relay benchmark (not a test): proxy relay vs direct Orthanc → storescp C-MOVE.

    .venv/bin/python benchmarks/bench_relay.py [--slices 300] [--rounds 3]

Generates a CT study (512×512, 16-bit), loads it into a real Orthanc (the PACS), starts DCMTK
storescp (the destination) and two dicomproxy processes (``serve``; upstream C-MOVE and
upstream C-GET), then alternates per round: direct C-MOVE (Orthanc → storescp), proxy
(c-move upstream), proxy (c-get upstream). Prints one Markdown table: median wall time
of the C-MOVE as seen by the requester, ratio to direct, MB/s, median time from the
request to the first file at the destination, and each proxy's peak RSS (VmHWM).
TCP_NODELAY=1 is set for Orthanc and DCMTK by dicomproxy.testing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from sqlalchemy import create_engine

from dicomproxy import scu
from dicomproxy.net import Remote
from dicomproxy.samples import StudySpec, exam_row, write_study
from dicomproxy.testing import free_port, wait_for_echo
from dicomproxy.testing.dcmtk import StoreSCP
from dicomproxy.testing.orthanc import Orthanc
from dicomproxy.testing.viewdb import create_view_table, insert_rows


def proxy_config(
    path: Path, ae: str, port: int, data: Path, view_url: str, pacs: Remote, method: str
) -> None:
    path.write_text(
        f'[proxy]\nae_title = "{ae}"\nhost = "127.0.0.1"\nport = {port}\ndata_dir = "{data}"\n'
        f'[hospital]\nid = "74580626"\n[view]\nurl = "{view_url}"\n'
        f'[pacs]\nae_title = "{pacs.ae_title}"\nhost = "{pacs.host}"\nport = {pacs.port}\n'
        f'retrieve = "{method}"\n'
        f'[logging]\nlevel = "{LOG_LEVEL[0]}"\n'
        f'[[peers]]\nae_title = "BENCH"\nhost = "127.0.0.1"\nport = 1\n'
        f'[[peers]]\nae_title = "DEST"\nhost = "127.0.0.1"\nport = {DEST_PORT[0]}\n'
    )


DEST_PORT = [0]
LOG_LEVEL = ["WARNING"]


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def timed_move(remote: Remote, dest: StoreSCP, study_uid: str, n: int) -> tuple[float, float, int]:
    """(wall seconds, seconds to first file at the destination, completed)."""
    for p in dest.received():
        p.unlink()
    first: list[float] = []
    stop = threading.Event()

    def watch(t0: float) -> None:
        while not stop.is_set():
            with os.scandir(dest.outdir) as it:
                if any(True for _ in it):
                    first.append(time.perf_counter() - t0)
                    return
            time.sleep(0.002)

    t0 = time.perf_counter()
    watcher = threading.Thread(target=watch, args=(t0,), daemon=True)
    watcher.start()
    result = scu.move(remote, "DEST", scu.identifier(study_uids=[study_uid]), calling_ae="BENCH", timeout=600)
    wall = time.perf_counter() - t0
    stop.set()
    watcher.join()
    if result.status != 0 or len(dest.received()) != n:
        raise RuntimeError(f"{remote}: {result.line()}, {len(dest.received())} files")
    return wall, (first[0] if first else float("nan")), result.completed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--log-level", default="WARNING", help="Proxy log level (logs in the workdir).")
    args = ap.parse_args()
    LOG_LEVEL[0] = args.log_level
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-relay-"))
    spec = StudySpec("CT", accession="B0001", series=1, images_per_series=args.slices, seed=42)
    print(f"# generating {args.slices} slices in {work}", file=sys.stderr)
    files = write_study(spec, work / "study")
    total = sum(p.stat().st_size for p in files)

    orthanc = Orthanc(work / "orthanc").start()
    dest = StoreSCP(work / "dest", "DEST").start()
    DEST_PORT[0] = dest.port
    procs: list[subprocess.Popen[bytes]] = []
    try:
        print("# loading Orthanc", file=sys.stderr)
        orthanc.upload(files)
        orthanc.add_modality("dest", dest.remote)
        view_url = f"sqlite:///{work / 'view.db'}"
        engine = create_engine(view_url)
        create_view_table(engine)
        insert_rows(engine, [exam_row(spec)])
        engine.dispose()
        proxies: dict[str, Remote] = {}
        for method, ae in (("c-move", "PROXYMOVE"), ("c-get", "PROXYGET")):
            port = free_port()
            cfg = work / f"{ae}.toml"
            proxy_config(cfg, ae, port, work / f"var-{ae}", view_url, orthanc.remote, method)
            if method == "c-move":
                orthanc.add_modality(ae.lower(), Remote(ae, "127.0.0.1", port))
            log = open(work / f"{ae}.log", "wb")  # noqa: SIM115 - lives as long as the process
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "dicomproxy", "serve", "-c", str(cfg)], stdout=log, stderr=log
                )
            )
            proxies[method] = Remote(ae, "127.0.0.1", port)
            wait_for_echo(proxies[method], 30, calling="BENCH")
        runs: dict[str, list[tuple[float, float]]] = {"direct": [], "c-move": [], "c-get": []}
        timed_move(orthanc.remote, dest, spec.study_uid, len(files))  # warm-up (Orthanc cache)
        for r in range(args.rounds):
            for name, remote in (
                ("direct", orthanc.remote),
                ("c-move", proxies["c-move"]),
                ("c-get", proxies["c-get"]),
            ):
                wall, first, _ = timed_move(remote, dest, spec.study_uid, len(files))
                runs[name].append((wall, first))
                print(f"# round {r + 1} {name}: {wall:.2f} s, first {first:.3f} s", file=sys.stderr)
        rss = {m: peak_rss_mb(p.pid) for m, p in zip(("c-move", "c-get"), procs, strict=True)}
    finally:
        for p in procs:
            p.terminate()
            p.wait(30)
        dest.stop()
        orthanc.stop()

    direct = statistics.median(w for w, _ in runs["direct"])
    print(
        f"\n{args.slices} CT slices, {total / 1e6:.0f} MB, median of {args.rounds} alternating rounds, "
        f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node()}, {os.cpu_count()} CPUs\n"
    )
    print("| path | wall s (median) | ratio to direct | MB/s | first instance s | proxy peak RSS MB |")
    print("|---|---|---|---|---|---|")
    for name, label in (
        ("direct", "direct Orthanc → storescp"),
        ("c-move", "proxy, upstream C-MOVE"),
        ("c-get", "proxy, upstream C-GET"),
    ):
        wall = statistics.median(w for w, _ in runs[name])
        first = statistics.median(f for _, f in runs[name])
        mem = f"{rss[name]:.0f}" if name in rss else "–"
        print(
            f"| {label} | {wall:.2f} | {wall / direct:.2f} | {total / 1e6 / wall:.0f} | {first:.3f} | {mem} |"
        )


if __name__ == "__main__":
    main()
