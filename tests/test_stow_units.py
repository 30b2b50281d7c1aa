"""The STOW-RS pieces without a server: ``[[peers]] kind = "dicomweb"`` validation, the Store
Instances Response read per instance (PS3.18 10.5.3), Retry-After, the streamed body of a
rewritten file, and when :class:`~dicomproxy.relay.batches.BatchLane` sends what it holds."""

from __future__ import annotations

import email.utils
import time
from pathlib import Path
from typing import Any

import pytest

from dicomproxy.config import ConfigError, load_config
from dicomproxy.relay.batches import BatchLane
from dicomproxy.relay.forward import SendResult
from dicomproxy.relay.sending import Prepared
from dicomproxy.relay.spool import SpooledInstance
from dicomproxy.transport.rewritten import Rewritten
from dicomproxy.transport.stow import PROCESSING_FAILURE, Part, parse_reply, retry_after
from tests.conftest import ConfigFactory

URL = "https://cloud.example/dicomweb/studies"


def web(**extra: Any) -> dict[str, Any]:
    return {"ae_title": "WEB", "kind": "dicomweb", "url": URL, **extra}


def test_a_dicomweb_peer_needs_a_url_but_no_host(make_config: ConfigFactory) -> None:
    config = make_config(peers=[web(token="t0k", max_batch=10, max_batch_mb=5)])
    peer = config.peer("WEB")
    assert peer is not None and peer.kind == "dicomweb" and not peer.speaks_dimse
    assert peer.dicomweb is not None
    assert (peer.dicomweb.url, peer.dicomweb.token, peer.dicomweb.max_batch, peer.dicomweb.max_batch_mb) == (
        URL,
        "t0k",
        10,
        5,
    )
    assert (peer.host, peer.port) == ("", 0)
    dimse = make_config().peers[0]
    assert dimse.kind == "dimse" and dimse.speaks_dimse and dimse.dicomweb is None


@pytest.mark.parametrize(
    ("peer", "key"),
    [
        (web(url="ftp://x/studies"), "url"),
        ({"ae_title": "WEB", "kind": "dicomweb"}, "url"),
        (web(username="u"), "password"),
        (web(password="p"), "username"),
        (web(token="t", username="u", password="p"), "token"),
        (web(max_batch=0), "max_batch"),
        (web(storage_commitment=True), "storage_commitment"),
        (web(kind="http"), "kind"),
        ({"ae_title": "DIMSE", "kind": "dimse", "url": URL}, "host"),
    ],
)
def test_bad_dicomweb_peers_name_their_key(
    make_config: ConfigFactory, peer: dict[str, Any], key: str
) -> None:
    with pytest.raises(ConfigError, match=rf"peers\[0\]\.{key}"):
        make_config(peers=[peer])


def _ref(uid: str, key: str | None = None, value: int | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {"00081155": {"vr": "UI", "Value": [uid]}}
    if key:
        item[key] = {"vr": "US", "Value": [value]}
    return item


def test_the_response_is_read_per_instance() -> None:
    body = {
        "00081199": {"vr": "SQ", "Value": [_ref("1.1"), _ref("1.2", "00081196", 0xB000)]},
        "00081198": {"vr": "SQ", "Value": [_ref("1.3", "00081197", 0xA700), _ref("1.4")]},
    }
    reply = parse_reply(202, body)
    assert reply.stored == {"1.1": None, "1.2": 0xB000}
    assert reply.failed == {"1.3": 0xA700, "1.4": PROCESSING_FAILURE}  # no reason named: processing failure
    assert parse_reply(200, [body]).stored == reply.stored  # a one-element array
    assert parse_reply(200, None).stored == {}  # no body: nothing is confirmed
    assert parse_reply(200, {"00081199": {"vr": "SQ"}}).stored == {}


def test_retry_after_takes_seconds_or_a_date() -> None:
    now = time.time()
    assert retry_after("7") == 7.0
    assert retry_after(email.utils.formatdate(now + 30, usegmt=True), now) == pytest.approx(30, abs=1)
    assert retry_after(email.utils.formatdate(now - 30, usegmt=True), now) == 0.0
    assert retry_after("soon") is None and retry_after(None) is None


def test_a_rewritten_file_streams_as_meta_new_head_and_tail(tmp_path: Path) -> None:
    path = tmp_path / "f.dcm"
    path.write_bytes(b"META" + b"oldhead" + b"PIXELS" * 1000)
    part = Part(Rewritten(path, 4, b"NEWHEAD!", 11), "1.2.840.10008.1.2.1")
    sent = b"".join(part.chunks())
    assert sent == b"META" + b"NEWHEAD!" + b"PIXELS" * 1000
    assert part.size == len(sent)
    assert b"".join(Part(path, "1.2.840.10008.1.2.1").chunks()) == path.read_bytes()


class _Dest:
    """Enough of a Destination for the lane: alive, and max_batch."""

    def __init__(self, max_batch: int) -> None:
        self.max_batch = max_batch
        self.alive = True


def _prepared(k: int) -> Prepared:
    return Prepared(SpooledInstance(Path(f"{k}.dcm"), "1.2", f"9.{k}", "1.2.840.10008.1.2.1", 10))


def test_the_batch_lane_sends_when_full_when_waited_on_or_after_its_linger() -> None:
    calls: list[list[str]] = []

    def send(dest: Any, batch: list[Prepared]) -> list[SendResult]:
        calls.append([p.item.sop_instance_uid for p in batch])
        return [SendResult(0) for _ in batch]

    lane = BatchLane(_Dest(3), send, linger=3600)  # type: ignore[arg-type]
    for k in range(3):
        assert lane.free
        lane.submit(_prepared(k))
    assert not lane.free and lane.in_flight == 3 and not calls
    got = lane.take(0)  # full: sent
    assert calls == [["9.0", "9.1", "9.2"]] and len(got) == 3 and lane.in_flight == 0
    lane.submit(_prepared(3))
    assert lane.take(0) == [] and lane.in_flight == 1  # neither full nor waited on nor lingering
    assert [p.item.sop_instance_uid for p, _ in lane.take(0.01)] == ["9.3"]  # the pump waits: sent
    lane = BatchLane(_Dest(3), send, linger=0)  # type: ignore[arg-type]
    lane.submit(_prepared(4))
    assert len(lane.take(0)) == 1  # lingered long enough
    lane.submit(_prepared(5))
    done, left = lane.close(1.0)
    assert done == [] and [p.item.sop_instance_uid for p in left] == ["9.5"]  # never sent: the caller's


def test_the_example_configs_dicomweb_peer_loads_once_uncommented(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLOUD_TOKEN", "secret")
    monkeypatch.setenv("DB_PASSWORD", "x")
    text = (Path(__file__).parent.parent / "conf" / "dicomproxy.example.toml").read_text(encoding="utf-8")
    head, _, rest = text.partition("# [[peers]]                   # a cloud that takes DICOMweb")
    block, _, tail = rest.partition("\n\n")
    lines = ("# [[peers]]  # a cloud that takes DICOMweb" + block).splitlines()
    (tmp_path / "tls").mkdir()
    for name in ("cloud-ca.pem", "client.pem", "client.key"):
        (tmp_path / "tls" / name).write_text("-")
    path = tmp_path / "example.toml"
    path.write_text(head + "\n".join(line[2:] for line in lines) + "\n\n" + tail, encoding="utf-8")
    peer = load_config(path).peer("CLOUDWEB")
    assert peer is not None and peer.dicomweb is not None and peer.tls is not None
    assert (peer.kind, peer.dicomweb.token, peer.dicomweb.max_batch, peer.compression) == (
        "dicomweb",
        "secret",
        50,
        "lossless",
    )
