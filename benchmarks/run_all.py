"""Run the whole benchmark suite in sequence and print one summary table per benchmark (not a test).

    .venv/bin/python benchmarks/run_all.py                 # quick: ~15 min on 2 cores
    .venv/bin/python benchmarks/run_all.py --full          # the issue's sizes: 1 M-row view, 30-min soak
    benchmarks/run_all.sh [--only relay,codecs,find,soak] [--minutes N] [--out DIR] [--max-pdu N]

Quick defaults: relay 300 slices × 3 rounds (none/lossless/lossy, 4 concurrent studies); codecs on
100 CT images (300 with ``--full``; the DCMTK/GDCM baselines start one process per file); C-FIND on
a 100,000-row view (1,000,000 with ``--full``) in PostgreSQL and SQLite; soak 2 minutes (30 with
``--full``). Each benchmark's full output goes to ``DIR/<name>.log``; the summary
tables are printed at the end. Never part of ``scripts/test.sh``: every number here is a measurement,
not a pass/fail criterion. All traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FIND_LINE = re.compile(r"^\[(\w+)\] (.+?)\s+p50\s+([\d.]+) ms\s+p95\s+([\d.]+) ms\s+answers/query\s+([\d.]+)")


def run(name: str, args: list[str], out: Path) -> tuple[int, str, float]:
    log = out / f"{name}.log"
    cmd = [sys.executable, str(HERE / args[0]), *args[1:]]
    print(f"## {name}: {' '.join(cmd[1:])}  (log: {log})", flush=True)
    t0 = time.perf_counter()
    with log.open("w") as f:
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT)
    secs = time.perf_counter() - t0
    print(
        f"   exit {rc} after {secs:.0f} s, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        flush=True,
    )
    return rc, log.read_text(errors="replace"), secs


def tables(text: str) -> str:
    """Markdown table lines and the descriptive line just before each table."""
    lines = text.splitlines()
    keep: list[str] = []
    for i, line in enumerate(lines):
        if line.startswith("|"):
            if i > 0 and not lines[i - 1].startswith("|"):
                j = i - 1
                while j >= 0 and not lines[j].strip():
                    j -= 1
                keep += ["", lines[j]] if j >= 0 else [""]
            keep.append(line)
    return "\n".join(keep).strip()


def find_table(text: str) -> str:
    rows = [m.groups() for m in map(FIND_LINE.match, text.splitlines()) if m]
    out = ["| database | query | p50 ms | p95 ms | answers/query |", "|---|---|---:|---:|---:|"]
    out += [f"| {db} | {q.strip()} | {p50} | {p95} | {n} |" for db, q, p50, p95, n in rows]
    return "\n".join(out) if rows else ""


def soak_table(text: str) -> str:
    rows = [line.strip() for line in text.splitlines() if line.startswith("  ")]
    head = next((line for line in text.splitlines() if line.startswith("soak:")), "")
    out = [head, "", "| measure | value |", "|---|---|"]
    out += [f"| {r[:19].strip()} | {r[19:].strip()} |" for r in rows]
    return "\n".join(out) if rows else ""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="1 M-row view, 30-minute soak")
    ap.add_argument("--only", default="relay,codecs,find,soak")
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--rows", type=int, default=None, help="view rows (default 100,000; 1,000,000 with --full)"
    )
    ap.add_argument("--minutes", type=float, default=None, help="soak minutes (default 2; 30 with --full)")
    ap.add_argument("--max-pdu", type=int, default=0, help="passed to bench_relay (Orthanc and storescp)")
    ap.add_argument("--out", type=Path, default=None, help="folder for the logs (default: a temp folder)")
    a = ap.parse_args()
    rows = a.rows or (1_000_000 if a.full else 100_000)
    minutes = a.minutes if a.minutes is not None else (30.0 if a.full else 2.0)
    out = a.out or Path(tempfile.mkdtemp(prefix="bench-all-"))
    out.mkdir(parents=True, exist_ok=True)
    suite: dict[str, list[str]] = {
        "relay": [
            "bench_relay.py",
            f"--slices={a.slices}",
            f"--rounds={a.rounds}",
            f"--max-pdu={a.max_pdu}",
            f"--workdir={out / 'relay'}",
        ],
        "codecs": ["bench_codecs.py", f"--images={300 if a.full else 100}", f"--workdir={out / 'codecs'}"],
        "find": ["bench_find.py", f"--rows={rows}", f"--workdir={out / 'find'}"],
        "soak": ["soak.py", f"--minutes={minutes:g}"],
        # STOW-RS vs C-STORE to Orthanc (issue 27); not in the default --only
        "stow": [
            "bench_stow.py",
            f"--slices={a.slices}",
            f"--rounds={a.rounds}",
            f"--workdir={out / 'stow'}",
        ],
    }
    chosen = [n for n in a.only.split(",") if n]
    unknown = set(chosen) - set(suite)
    if unknown:
        ap.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    started = dt.datetime.now(dt.timezone.utc)
    print(f"# {started:%Y-%m-%d %H:%M} UTC, {platform.node()}, {os.cpu_count()} CPUs, logs in {out}")
    print(f"# load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    results = {n: run(n, suite[n], out) for n in chosen}
    failed = 0
    for name, (rc, text, secs) in results.items():
        body = {"find": find_table, "soak": soak_table}.get(name, tables)(text)
        print(f"\n### {name} ({secs:.0f} s{', EXIT ' + str(rc) if rc else ''})\n")
        print(body or "(no table; see the log)\n" + "\n".join(text.splitlines()[-15:]))
        failed += rc != 0
    print(f"\n# load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
