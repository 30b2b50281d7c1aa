"""STOW-RS vs C-STORE benchmark (not a test): one CT study relayed to the same Orthanc both ways (issue 27).

    .venv/bin/python benchmarks/bench_stow.py [--slices 300] [--rounds 3] [--batch 50] [--modes none]

A real Orthanc is the PACS (upstream C-MOVE); a second Orthanc, with its DICOMweb plugin, is the
cloud. One ``dicomproxy serve`` process has two peers for that cloud: ``CLOUDDIMSE`` (C-STORE to its
DICOM port) and ``CLOUDWEB`` (``kind = "dicomweb"``, STOW-RS to ``/dicom-web/studies``,
``max_batch`` instances per request). Per round and mode, the cloud is emptied and the study is
C-MOVEd to each peer in turn. Prints one Markdown table: median wall time of the C-MOVE as the
requester sees it, instances/s and MB/s (the PACS's file bytes / wall time), and whether Orthanc
then held every instance.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import create_engine

from dicomproxy.transport import scu
from dicomproxy.transport.net import Remote
from testkit import Process, free_port, wait_for_echo
from testkit.orthanc import Orthanc
from testkit.realct import write_real_study
from testkit.samples import StudySpec, exam_row
from testkit.viewdb import create_view_table, insert_rows

PROXY_AE = "DICOMPROXY"
PEERS = ("CLOUDDIMSE", "CLOUDWEB")


def write_config(
    path: Path, port: int, view_url: str, pacs: Orthanc, cloud: Orthanc, mode: str, batch: int
) -> None:
    path.write_text(
        f'[proxy]\nae_title = "{PROXY_AE}"\nhost = "127.0.0.1"\nport = {port}\n'
        f'data_dir = "{path.parent / "var"}"\n'
        f'[hospital]\nid = "74580626"\n[view]\nurl = "{view_url}"\n'
        f'[pacs]\nae_title = "{pacs.ae_title}"\nhost = "127.0.0.1"\nport = {pacs.dicom_port}\n'
        'retrieve = "c-move"\n'
        f'[compression]\nmode = "{mode}"\n[logging]\nlevel = "WARNING"\n'
        '[[peers]]\nae_title = "BENCH"\nhost = "127.0.0.1"\nport = 1\n'
        f'[[peers]]\nae_title = "CLOUDDIMSE"\nhost = "127.0.0.1"\nport = {cloud.dicom_port}\n'
        f'[[peers]]\nae_title = "CLOUDWEB"\nkind = "dicomweb"\nurl = "{cloud.stow_url}"\n'
        f"max_batch = {batch}\n"
        "transfer_syntax_param = false\n"  # Orthanc's DICOMweb plugin 1.7 refuses the parameter
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=50, help="max_batch of the STOW-RS peer")
    ap.add_argument("--modes", default="none", help="compression modes, comma-separated")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-stow-"))
    spec = StudySpec("CT", accession="ST0001", series=1, images_per_series=args.slices, seed=42)
    files = write_real_study(spec, work / "study")
    size_mb = sum(p.stat().st_size for p in files) / 1e6
    started: list[object] = []
    rows: list[str] = []
    try:
        pacs = Orthanc(work / "pacs").start()
        started.append(pacs)
        pacs.upload(files)
        cloud = Orthanc(work / "cloud", ae_title="CLOUD", dicomweb=True).start()
        started.append(cloud)
        view_url = f"sqlite:///{work / 'view.db'}"
        engine = create_engine(view_url)
        create_view_table(engine)
        insert_rows(engine, [exam_row(spec)])
        engine.dispose()
        for mode in args.modes.split(","):
            port = free_port()
            pacs.add_modality(f"proxy-{mode}", Remote(PROXY_AE, "127.0.0.1", port))
            cfg = work / mode / "proxy.toml"
            cfg.parent.mkdir(parents=True, exist_ok=True)
            write_config(cfg, port, view_url, pacs, cloud, mode, args.batch)
            proxy = Process(
                [sys.executable, "-m", "dicomproxy", "serve", "-c", str(cfg)], cfg.parent / "proxy.log"
            )
            started.append(proxy)
            remote = Remote(PROXY_AE, "127.0.0.1", port)
            wait_for_echo(remote, calling="BENCH", proc=proxy.proc)
            walls: dict[str, list[float]] = {p: [] for p in PEERS}
            complete: dict[str, bool] = dict.fromkeys(PEERS, True)
            for k in range(args.rounds + 1):  # round 0 warms up
                for peer in PEERS:
                    cloud.clear()
                    t0 = time.monotonic()
                    res = scu.move(
                        remote,
                        peer,
                        scu.identifier(study_uids=[spec.study_uid]),
                        calling_ae="BENCH",
                        timeout=600,
                    )
                    wall = time.monotonic() - t0
                    ok = (
                        res.status == 0
                        and res.completed == len(files)
                        and cloud.instance_count() == len(files)
                    )
                    if k:
                        walls[peer].append(wall)
                        complete[peer] = complete[peer] and ok
            for peer in PEERS:
                wall = statistics.median(walls[peer])
                how = "C-STORE" if peer == "CLOUDDIMSE" else f"STOW-RS, {args.batch}/request"
                rows.append(
                    f"| {mode} | {how} | {wall:.2f} | {len(files) / wall:.0f} | {size_mb / wall:.1f} | "
                    f"{'yes' if complete[peer] else 'NO'} |"
                )
            proxy.stop()
            started.remove(proxy)
    finally:
        for item in reversed(started):
            item.stop()  # type: ignore[attr-defined]
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(
        f"# bench_stow {when}, {platform.node()}, python {platform.python_version()}, "
        f"{len(files)} CT slices, {size_mb:.0f} MB, {args.rounds} rounds (median)"
    )
    print("| mode | to Orthanc by | wall s | instances/s | MB/s | all stored |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
