"""Large-instance benchmark (not a test): one multi-frame whole-slide image through the proxy (issue 8).

    .venv/bin/python benchmarks/bench_wsi.py [--gb 1.05] [--dir DIR]

Streams a VL Whole Slide Microscopy instance of ``--gb`` GB (JPEG Baseline tiles) into a DCMTK
dcmqrscp (the ``pis`` archive, routed by Sysid PIS), starts ``dicomproxy serve`` as a process
and C-MOVEs the study to a DCMTK storescp (see testkit.wsirelay). Prints one
Markdown row: size, frames, wall time of the C-MOVE as the requester sees it, MB/s, the
proxy's peak RSS (VmHWM) and whether the received data set is byte-identical.
dcmqrscp 3.6.7 refuses a study over 1 GiB (maxBytesPerStudy is capped at 1073741824), hence
1.05 GB (10^9 bytes) by default.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import tempfile
from pathlib import Path

from testkit.wsirelay import relay_wsi


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gb", type=float, default=1.05, help="slide size in GB (10^9 bytes, < 1.07)")
    parser.add_argument("--dir", type=Path, default=None, help="work folder (default: a temporary one)")
    parser.add_argument(
        "--stow", action="store_true", help="to Orthanc's DICOMweb plugin by STOW-RS (issue 27)"
    )
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-wsi-", dir=opts.dir) as tmp:
        result = relay_wsi(Path(tmp), int(opts.gb * 1e9), timeout=1800, stow=opts.stow)
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    how = "STOW-RS to Orthanc DICOMweb" if opts.stow else "C-STORE to storescp"
    print(f"# bench_wsi {when}, {platform.node()}, python {platform.python_version()}, {how}")
    print("| size MB | frames | status | wall s | MB/s | proxy peak RSS MB | byte-identical |")
    print("|---|---|---|---|---|---|---|")
    mb = result.file_bytes / 1e6
    status = "none" if result.status is None else f"0x{result.status:04X}"
    print(
        f"| {mb:.0f} | {result.frames} | {status} | {result.wall_s:.1f} | {mb / result.wall_s:.0f} | "
        f"{result.proxy_peak_rss_mb:.0f} | {'yes' if result.identical else 'NO'} |"
    )


if __name__ == "__main__":
    main()
