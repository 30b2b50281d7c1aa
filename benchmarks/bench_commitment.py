"""Storage Commitment benchmark (not a test): what asking the cloud to commit costs (issue 25).

    .venv/bin/python benchmarks/bench_commitment.py [--slices 300] [--rounds 3]

A study of real CT slices (pydicom-data, cycled) in a real Orthanc (the PACS); a second Orthanc as
the cloud (Storage Commitment SCP since 1.6, answering on a new association to the proxy, declared
among its modalities). Two ``dicomproxy serve`` processes (upstream C-GET), the same but for
``[[peers]] storage_commitment`` on the cloud: off in one, on in the other. Per round, A B
alternating, the cloud emptied before each move: the C-MOVE's wall time as the requester sees it
(instances/s), and, with commitment, the time from the C-MOVE's final response until the journal
records every instance committed. Prints one Markdown table (medians).
"""

from __future__ import annotations

import argparse
import contextlib
import sqlite3
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

CALLER = "BENCH"


def proxy_toml(
    path: Path, ae: str, port: int, pacs: Remote, cloud: Remote, view_url: str, commit: bool
) -> None:
    path.write_text(
        f'[proxy]\nae_title = "{ae}"\nhost = "127.0.0.1"\nport = {port}\ndata_dir = "{path.parent / ae}"\n'
        f'[hospital]\nid = "74580626"\n[view]\nurl = "{view_url}"\n[logging]\nlevel = "WARNING"\n'
        f'[pacs]\nae_title = "{pacs.ae_title}"\nhost = "{pacs.host}"\nport = {pacs.port}\n'
        'retrieve = "c-get"\n'
        f'[[peers]]\nae_title = "{CALLER}"\nhost = "127.0.0.1"\nport = 1\n'
        f'[[peers]]\nae_title = "{cloud.ae_title}"\nhost = "{cloud.host}"\nport = {cloud.port}\n'
        + ("storage_commitment = true\ncommit_timeout = 60\n" if commit else "")
    )


def committed(journal: Path) -> int:
    with contextlib.closing(sqlite3.connect(journal, timeout=5)) as conn:
        try:
            return int(
                conn.execute("SELECT count(*) FROM commit_refs WHERE state = 'committed'").fetchone()[0]
            )
        except sqlite3.OperationalError:
            return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-commit-"))
    spec = StudySpec("CT", accession="BC001", series=1, images_per_series=args.slices, seed=777)
    files = write_real_study(spec, work / "study")
    pacs = Orthanc(work / "pacs").start()
    cloud = Orthanc(work / "cloud").start()
    procs: list[Process] = []
    rows: dict[str, list[float]] = {"off": [], "on": [], "commit": []}
    try:
        pacs.upload(files)
        view_url = f"sqlite:///{work / 'view.db'}"
        engine = create_engine(view_url)
        create_view_table(engine)
        insert_rows(engine, [exam_row(spec)])
        engine.dispose()
        proxies: dict[str, Remote] = {}
        for name, commit in (("off", False), ("on", True)):
            port, ae = free_port(), f"DP{name.upper()}"
            proxy_toml(work / f"{name}.toml", ae, port, pacs.remote, cloud.remote, view_url, commit)
            pacs.add_modality(ae.lower(), Remote(ae, "127.0.0.1", port))
            cloud.add_modality(ae.lower(), Remote(ae, "127.0.0.1", port))  # where its report goes
            proc = Process(
                [sys.executable, "-m", "dicomproxy", "serve", "-c", str(work / f"{name}.toml")],
                work / f"{name}.log",
            )
            procs.append(proc)
            proxies[name] = Remote(ae, "127.0.0.1", port)
            wait_for_echo(proxies[name], 60, calling=CALLER, proc=proc.proc)
        journal = work / "DPON" / "journal.db"
        for rnd in range(args.rounds + 1):  # round 0 warms up
            for name in ("off", "on"):
                cloud.clear()
                before = committed(journal)
                start = time.perf_counter()
                summary = scu.move(
                    proxies[name],
                    cloud.remote.ae_title,
                    scu.identifier(study_uids=[spec.study_uid]),
                    calling_ae=CALLER,
                    timeout=600,
                )
                moved = time.perf_counter()
                assert summary.completed == args.slices, summary.line()
                if name == "on":
                    deadline = moved + 300
                    while committed(journal) - before < args.slices and time.perf_counter() < deadline:
                        time.sleep(0.05)
                    assert committed(journal) - before == args.slices, "not all committed within 300 s"
                if rnd:
                    rows[name].append(moved - start)
                    if name == "on":
                        rows["commit"].append(time.perf_counter() - moved)
        off, on, commit = (statistics.median(rows[k]) for k in ("off", "on", "commit"))
        print(f"\n{args.slices} real CT slices, {args.rounds} rounds (A B alternating), medians\n")
        print("| | C-MOVE wall s | instances/s | final response → all committed, s |")
        print("|---|---|---|---|")
        print(f"| commitment off | {off:.2f} | {args.slices / off:.0f} | — |")
        print(f"| commitment on | {on:.2f} | {args.slices / on:.0f} | {commit:.2f} |")
        print(f"\nratio on/off (C-MOVE wall): {on / off:.2f}")
        print(" ".join(f"{k}: {[round(v, 2) for v in vs]}" for k, vs in rows.items()))
    finally:
        for proc in procs:
            proc.stop()
        pacs.stop()
        cloud.stop()


if __name__ == "__main__":
    main()
