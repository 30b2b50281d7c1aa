"""Archive routing by the view's Sysid / ExamineType (issue: several departmental archives)."""

from __future__ import annotations

import pytest

from dicomproxy.errors import ConfigError
from dicomproxy.routing import Unroutable, route

ARCHIVES = [
    {"name": "uis", "ae_title": "UISPACS", "host": "127.0.0.2", "port": 104, "sysids": ["UIS"]},
    {
        "name": "eis-endo",
        "ae_title": "EISPACS",
        "host": "127.0.0.3",
        "port": 104,
        "sysids": ["EIS"],
        "modalities": ["ES"],
        "retrieve": "c-get",
    },
]


@pytest.mark.parametrize(
    ("sysid", "modality", "expected"),
    [
        ("RIS", "CT", "pacs"),
        ("UIS", "US", "uis"),
        ("uis ", "US", "uis"),
        ("EIS", "ES", "eis-endo"),
        ("EIS", "XC", "pacs"),  # narrowed archive does not claim it; the catch-all [pacs] does
        (None, None, "pacs"),
    ],
)
def test_route_with_catch_all_pacs(make_config, sysid, modality, expected) -> None:
    cfg = make_config(archives=ARCHIVES)
    assert route(cfg, sysid, modality).name == expected


@pytest.mark.parametrize(("sysid", "modality"), [("ECG", "ECG"), ("EIS", "XC"), (None, "CT")])
def test_unroutable_when_pacs_is_narrowed(make_config, sysid, modality) -> None:
    cfg = make_config(pacs={"sysids": ["RIS"]}, archives=ARCHIVES)
    assert route(cfg, "RIS", "CT").name == "pacs"
    with pytest.raises(Unroutable) as info:
        route(cfg, sysid, modality)
    assert info.value.status == 0xC004


def test_archive_config_errors(make_config) -> None:
    with pytest.raises(ConfigError, match=r"archives\[0\]\.sysids: is required"):
        make_config(archives=[{"name": "x", "ae_title": "X", "host": "h", "port": 1}])
    with pytest.raises(ConfigError, match=r"archives\[1\]\.name: 'uis' is used twice"):
        make_config(archives=[ARCHIVES[0], {**ARCHIVES[1], "name": "uis"}])
    with pytest.raises(ConfigError, match=r"archives\[0\]\.retrieve"):
        make_config(archives=[{**ARCHIVES[0], "retrieve": "ftp"}])


def test_archive_stores_are_accepted_from_their_host(make_config) -> None:
    from dicomproxy.access import decide

    cfg = make_config(archives=ARCHIVES)
    assert decide(cfg, "UISPACS", "DICOMPROXY", "127.0.0.2").accept
    assert not decide(cfg, "UISPACS", "DICOMPROXY", "127.0.0.1").accept
