"""Codec benchmark: raw-pixel MB/s and compression ratio per mode and codec, on a generated CT study.

    .venv/bin/python benchmarks/bench_codecs.py [--images 300] [--kind CT] [--workers N] [--repeat 1]
                                               [--skip-cli] [--workdir DIR]

For every target it runs :func:`dicomproxy.transcode.transcode_file` over the whole study (read the
Part 10 file, decode, encode, write the Part 10 file: the work the relay does per instance), once in
this process and once through :class:`TranscodePool`; then DCMTK's and GDCM's command-line codecs on
the same files as a baseline (one process per file, as those tools work; sequential and with as many
in parallel as there are workers). MB/s = uncompressed pixel bytes / wall time. Ratio = pixel bytes /
output file bytes. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from pydicom.uid import (
    JPEG2000,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from dicomproxy.transcode import Policy, TranscodePool, codec_applies, read_info, transcode_file
from dicomproxy.transcode.syntaxes import is_native
from testkit.realct import write_real_study
from testkit.samples import StudySpec, write_study

POLICY = Policy.default("lossless")

#: (mode, label, target)
CASES: list[tuple[str, str, str]] = [
    ("none", "pass-through (same syntax, hard link)", ExplicitVRLittleEndian),
    ("none", "Explicit -> Implicit VR LE", ImplicitVRLittleEndian),
    ("lossless", "HTJ2K Lossless .4.201 (imagecodecs/OpenJPH)", HTJ2KLossless),
    ("lossless", "JPEG-LS Lossless .4.80 (pyjpegls/CharLS)", JPEGLSLossless),
    ("lossless", "JPEG 2000 Lossless .4.90 (pylibjpeg-openjpeg)", JPEG2000Lossless),
    ("lossless", "RLE Lossless .5 (pylibjpeg-rle)", RLELossless),
    ("lossy", "JPEG 2000 .4.91 ratio 10", JPEG2000),
    ("lossy", "JPEG-LS near-lossless .4.81 NEAR=2", JPEGLSNearLossless),
    ("lossy", "JPEG Baseline .4.50 q90 (imagecodecs/libjpeg-turbo, 8-bit only)", JPEGBaseline8Bit),
]

#: (label, tool, args before in/out files)
CLI: list[tuple[str, str, list[str]]] = [
    ("DCMTK dcmcjpls (JPEG-LS lossless)", "dcmcjpls", []),
    ("DCMTK dcmcjpls +nl 2 (near-lossless)", "dcmcjpls", ["--encode-nearlossless", "+md", "2"]),
    ("DCMTK dcmcrle (RLE)", "dcmcrle", []),
    ("GDCM gdcmconv --jpegls (lossless)", "gdcmconv", ["--jpegls"]),
    ("GDCM gdcmconv --j2k (lossless)", "gdcmconv", ["--j2k"]),
    ("GDCM gdcmconv --rle", "gdcmconv", ["--rle"]),
]


def timed(fn: Callable[..., None], *args: Any) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def cpu_timed(fn: Callable[..., None], *args: Any) -> tuple[float, float]:
    """(wall, CPU) seconds of this process: CPU time is immune to other load on the machine."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn(*args)
    return time.perf_counter() - w0, time.process_time() - c0


def out_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir())


def run_single(files: Sequence[Path], out: Path, target: str, policy: Policy) -> None:
    for i, src in enumerate(files):
        transcode_file(src, out / f"{i}.dcm", target, policy)


def run_pool(pool: TranscodePool, files: Sequence[Path], out: Path, target: str, policy: Policy) -> None:
    futures = [pool.submit(src, out / f"{i}.dcm", target, policy) for i, src in enumerate(files)]
    for f in futures:
        f.result()


def run_cli(tool: str, args: list[str], files: Sequence[Path], out: Path, parallel: int) -> None:
    exe = shutil.which(tool)
    assert exe is not None

    def one(item: tuple[int, Path]) -> None:
        i, src = item
        subprocess.run([exe, *args, str(src), str(out / f"{i}.dcm")], check=True, capture_output=True)

    if parallel <= 1:
        for item in enumerate(files):
            one(item)
    else:
        with ThreadPoolExecutor(parallel) as ex:
            list(ex.map(one, enumerate(files)))


def fresh(folder: Path) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=300, help="instances to generate")
    ap.add_argument("--kind", default="CT", choices=("CT", "MR", "US", "MF"), help="testkit.samples kind")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeat", type=int, default=1, help="runs per case; the best is reported")
    ap.add_argument("--skip-cli", action="store_true", help="skip the DCMTK/GDCM baseline")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument(
        "--corpus",
        choices=("synthetic", "real"),
        default=None,
        help="CT pixels: real slices from pydicom-data (testkit.realct; the default for CT) or "
        "testkit.samples' (the default, and the only choice, for the other kinds)",
    )
    ns = ap.parse_args(argv)
    if ns.corpus is None:
        ns.corpus = "real" if ns.kind == "CT" else "synthetic"
    if ns.corpus == "real" and ns.kind != "CT":
        ap.error("--corpus real has CT only")

    root = ns.workdir or Path(tempfile.mkdtemp(prefix="bench-codecs-"))
    study = root / f"study-{ns.kind}-{ns.corpus}"
    files = sorted(study.glob("*.dcm")) if study.is_dir() else []
    if len(files) != ns.images:
        shutil.rmtree(study, ignore_errors=True)
        writer = write_real_study if ns.corpus == "real" else write_study
        files = writer(StudySpec(ns.kind, images_per_series=ns.images), study)
    pixel_bytes = sum(read_info(p).pixel_bytes for p in files)
    mb = pixel_bytes / 1e6
    print(
        f"# bench_codecs: {len(files)} {ns.kind} instances ({ns.corpus} corpus), {mb:.1f} MB raw pixels, "
        f"{ns.workers} workers"
    )
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, {platform.platform()},"
        f" Python {platform.python_version()},"
    )
    print(f"# {cpu_name()}, {os.cpu_count()} CPUs")
    print()
    print(f"# load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print()
    print(f"| mode | codec | ratio | 1 process MB/s | MB per CPU-s | pool ({ns.workers}) MB/s | speed-up |")
    print("|---|---|---:|---:|---:|---:|---:|")
    out = root / "out"
    with TranscodePool(ns.workers) as pool:
        run_pool(pool, files[: ns.workers], fresh(out), HTJ2KLossless, POLICY)  # start workers
        first = read_info(files[0])
        for mode, label, target in CASES:
            policy = replace(POLICY, mode=mode)  # type: ignore[arg-type]
            if not is_native(target) and not codec_applies(policy, first, target):
                print(f"| {mode} | {label} | n/a for {ns.kind} | | | | |")
                continue
            runs = [cpu_timed(run_single, files, fresh(out), target, policy) for _ in range(ns.repeat)]
            single, cpu = min(r[0] for r in runs), min(r[1] for r in runs)
            ratio = pixel_bytes / out_bytes(out)
            pooled = min(timed(run_pool, pool, files, fresh(out), target, policy) for _ in range(ns.repeat))
            print(
                f"| {mode} | {label} | {ratio:.2f} | {mb / single:.0f} | {mb / cpu:.0f} | {mb / pooled:.0f} |"
                f" {single / pooled:.2f}x |",
                flush=True,
            )
    if not ns.skip_cli:
        print()
        print("Command-line baselines (one process per file, as the tools work):")
        print()
        print(f"| tool | ratio | sequential MB/s | {ns.workers} in parallel MB/s |")
        print("|---|---:|---:|---:|")
        for label, tool, args in CLI:
            if shutil.which(tool) is None:
                print(f"| {label} | not installed | | |")
                continue
            try:
                seq = timed(run_cli, tool, args, files, fresh(out), 1)
                ratio = pixel_bytes / out_bytes(out)
                par = timed(run_cli, tool, args, files, fresh(out), ns.workers)
            except subprocess.CalledProcessError as exc:
                err = exc.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["?"]
                print(f"| {label} | failed: {err[0][:60]} | | |")
                continue
            print(f"| {label} | {ratio:.2f} | {mb / seq:.0f} | {mb / par:.0f} |", flush=True)
    print()
    print(f"# load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if ns.workdir is None:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
