"""A ≥ 500 MB whole-slide image relayed through `dicomproxy serve` with bounded memory (issue 8)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from testkit.wsirelay import relay_wsi

#: Generous: the interpreter and libraries take ~140 MB; the slide must never be held in memory.
RSS_BOUND_MB = 300


@pytest.mark.slow
def test_500mb_slide_relayed_byte_identical_with_bounded_proxy_memory(tmp_path: Path) -> None:
    for tool in ("dcmqrscp", "storescp", "storescu"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (scripts/setup.sh test installs it)")
    result = relay_wsi(tmp_path / "wsi", 500_000_000, timeout=240)
    assert result.file_bytes >= 500_000_000
    assert (result.status, result.completed) == (0x0000, 1), result
    assert result.identical, "the received data set differs from the slide"
    assert result.proxy_peak_rss_mb < RSS_BOUND_MB, result


@pytest.mark.slow
@pytest.mark.orthanc
def test_500mb_slide_stored_by_stow_rs_byte_identical_with_bounded_proxy_memory(tmp_path: Path) -> None:
    """The same slide to a DICOMweb peer (Orthanc's plugin): the request body is streamed from the
    spool file, so the proxy's memory stays as bounded as for C-STORE (issue 27)."""
    for tool in ("dcmqrscp", "storescu", "Orthanc"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (scripts/setup.sh test installs it)")
    result = relay_wsi(tmp_path / "wsi", 500_000_000, timeout=240, stow=True)
    assert (result.status, result.completed) == (0x0000, 1), result
    assert result.identical, "the stored data set differs from the slide"
    assert result.proxy_peak_rss_mb < RSS_BOUND_MB, result
