"""The README's main job: ``python -m testkit.demo`` (what scripts/demo.sh runs) succeeds end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_demo_end_to_end(tmp_path: Path, orthanc) -> None:  # orthanc: skips/fails cleanly without it
    proc = subprocess.run(
        [sys.executable, "-m", "testkit.demo", "--dir", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "jobserver received 10 of 10 instances of accession A0001" in out
    assert "C-GET wrote 2 of 2 instances" in out
    assert "2 match(es), final status 0x0000" in out
    assert out.rstrip().endswith("demo OK")
