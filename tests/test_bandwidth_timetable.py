"""The bandwidth timetable: ``[[bandwidth]]`` validation, the pure timetable (which rule is in
force, when it changes next; property tests with hypothesis), the per-rule buckets shared by the
nodes alive, and the node registry on a real journal (SQLite and PostgreSQL)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dicomproxy.config import BandwidthRule, parse_config
from dicomproxy.errors import ConfigError
from dicomproxy.relay.bandwidth import Bandwidth, RateLimiter, capped_destinations
from dicomproxy.relay.liveness import NodeRegistry
from dicomproxy.relay.timetable import covers, next_change, rate_at, rule_at
from tests.conftest import base_config_dict

MON = dt.datetime(2026, 12, 7)  # a Monday
PEERS = [
    {"ae_title": "jobserver", "host": "127.0.0.1", "port": 1},
    {"ae_title": "CLOUD", "host": "127.0.0.1", "port": 2, "cap_pulls": True},
]


def _rules(tmp_path: Path, *rules: dict[str, Any]) -> tuple[BandwidthRule, ...]:
    doc = base_config_dict(tmp_path, "sqlite:///v.db", peers=PEERS, bandwidth=list(rules))
    return parse_config(doc, "/etc/proxy.toml").bandwidth


def _at(day: int, hhmm: str) -> dt.datetime:
    """Monday + ``day`` days at ``hhmm``."""
    h, m = (int(x) for x in hhmm.split(":"))
    return MON + dt.timedelta(days=day, hours=h, minutes=m)


# --- config --------------------------------------------------------------------------------------


def test_rules_parse_days_hours_and_destination(tmp_path: Path) -> None:
    day, night, sat, all_day = _rules(
        tmp_path,
        {"days": "mon-fri", "hours": "08:00-18:00", "mbps": 20},
        {"days": ["fri-mon"], "hours": "22:00-06:00", "mbps": 100, "dest": "CLOUD"},
        {"days": ["sat", "Sunday"], "mbps": 50},
        {"mbps": 5, "hours": "00:00-24:00"},
    )
    assert day.days == frozenset(range(5)) and day.start == dt.time(8) and day.end == dt.time(18)
    assert day.dest == "" and day.mbps == 20.0 and day.minutes == 600
    assert night.days == frozenset({4, 5, 6, 0}) and night.dest == "CLOUD" and night.minutes == 480
    assert sat.days == frozenset({5, 6}) and sat.minutes == 1440
    assert all_day.days == frozenset(range(7)) and all_day.start == all_day.end == dt.time(0)
    assert all_day.name == "bandwidth[3]"


@pytest.mark.parametrize(
    ("rule", "key", "message"),
    [({"mbps": 0}, "bandwidth[0].mbps", "> 0"),
     ({}, "bandwidth[0].mbps", "required"),
     ({"mbps": 5, "days": "mon-frx"}, "bandwidth[0].days", "not a day"),
     ({"mbps": 5, "days": []}, "bandwidth[0].days", "day range"),
     ({"mbps": 5, "days": 3}, "bandwidth[0].days", "day range"),
     ({"mbps": 5, "hours": "8-18"}, "bandwidth[0].hours", "HH:MM-HH:MM"),
     ({"mbps": 5, "hours": "08:00-24:30"}, "bandwidth[0].hours", "HH:MM-HH:MM"),
     ({"mbps": 5, "dest": "NOPE"}, "bandwidth[0].dest", "not a [[peers]]"),
     ({"mbps": 5, "mpbs": 4}, "bandwidth[0].mpbs", "unknown key")],
)  # fmt: skip
def test_rule_errors_name_the_key(tmp_path: Path, rule: dict[str, Any], key: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        _rules(tmp_path, rule)
    assert key in str(err.value) and message in str(err.value) and "/etc/proxy.toml" in str(err.value)


def test_cap_pulls_defaults_to_false_and_names_the_capped_destinations(tmp_path: Path) -> None:
    doc = base_config_dict(tmp_path, "sqlite:///v.db", peers=PEERS, bandwidth=[{"mbps": 5}])
    config = parse_config(doc)
    assert [p.cap_pulls for p in config.peers] == [False, True]
    assert capped_destinations(config) == ["CLOUD"]
    assert capped_destinations(parse_config(base_config_dict(tmp_path, "sqlite:///v.db"))) == []


# --- the pure timetable --------------------------------------------------------------------------


def test_a_range_past_midnight_belongs_to_the_day_it_starts(tmp_path: Path) -> None:
    (friday_night,) = _rules(tmp_path, {"days": ["fri"], "hours": "22:00-06:00", "mbps": 100})
    assert covers(friday_night, _at(4, "22:00")) and covers(friday_night, _at(4, "23:59"))
    assert covers(friday_night, _at(5, "00:00")) and covers(friday_night, _at(5, "05:59"))
    assert not covers(friday_night, _at(5, "06:00")) and not covers(friday_night, _at(4, "21:59"))
    assert not covers(friday_night, _at(4, "05:00"))  # Thursday night is not Friday's
    assert not covers(friday_night, _at(5, "22:30"))


def test_the_most_specific_rule_wins(tmp_path: Path) -> None:
    rules = _rules(
        tmp_path,
        {"mbps": 100},  # always, everyone
        {"days": "mon-fri", "hours": "08:00-18:00", "mbps": 20},  # office hours, everyone
        {"days": "mon-fri", "mbps": 60, "dest": "CLOUD"},  # weekdays, CLOUD: names the destination
        {"days": "mon-fri", "hours": "08:00-18:00", "mbps": 30},  # ties with [1]: the first wins
    )
    assert rate_at(rules, "jobserver", _at(0, "09:00")) == 20  # fewer minutes a week than [0]
    assert rule_at(rules, "jobserver", _at(0, "09:00")) == rules[1]
    assert rate_at(rules, "jobserver", _at(0, "19:00")) == 100
    assert rate_at(rules, "CLOUD", _at(0, "09:00")) == 60  # its own rule beats a narrower one for all
    assert rate_at(rules, "CLOUD", _at(5, "09:00")) == 100  # Saturday: only the rule for all
    assert rate_at(rules[1:2], "jobserver", _at(5, "09:00")) is None  # no rule: no cap


def test_next_change_is_the_next_different_rate(tmp_path: Path) -> None:
    rules = _rules(
        tmp_path,
        {"days": "mon-fri", "hours": "08:00-18:00", "mbps": 20},
        {"days": "mon-sun", "hours": "18:00-08:00", "mbps": 200},
    )
    change = next_change(rules, "jobserver", _at(0, "09:30"))
    assert change is not None and change.at == _at(0, "18:00") and change.mbps == 200
    change = next_change(rules, "jobserver", _at(4, "19:00"))  # Friday evening until Saturday 08:00
    assert change is not None and change.at == _at(5, "08:00") and change.mbps is None  # day: no rule
    change = next_change(rules, "jobserver", _at(6, "19:00"))  # Sunday night until Monday 08:00
    assert change is not None and change.at == _at(7, "08:00") and change.mbps == 20
    one = _rules(tmp_path, {"days": "mon-fri", "hours": "08:00-18:00", "mbps": 20})
    change = next_change(one, "jobserver", _at(0, "18:00"))
    assert change is not None and change.at == _at(1, "08:00") and change.mbps == 20
    change = next_change(one, "jobserver", _at(0, "08:00"))
    assert change is not None and change.at == _at(0, "18:00") and change.mbps is None
    assert next_change(_rules(tmp_path, {"mbps": 5}), "jobserver", _at(0, "08:00")) is None
    assert next_change((), "jobserver", _at(0, "08:00")) is None


_days = st.sets(st.integers(0, 6), min_size=1)
_minute = st.integers(0, 1439)


@st.composite
def _rule_sets(draw: st.DrawFn) -> tuple[BandwidthRule, ...]:
    rules = []
    for i in range(draw(st.integers(1, 4))):
        start, end = draw(_minute), draw(_minute)
        rules.append(
            BandwidthRule(
                frozenset(draw(_days)),
                dt.time(start // 60, start % 60),
                dt.time(end // 60, end % 60),
                float(draw(st.sampled_from([5, 20, 40, 100]))),
                draw(st.sampled_from(["", "", "CLOUD"])),
                i,
            )
        )
    return tuple(rules)


_times = st.datetimes(min_value=dt.datetime(2026, 1, 1), max_value=dt.datetime(2027, 1, 1))


@settings(max_examples=300, deadline=None)
@given(rules=_rule_sets(), t=_times, dest=st.sampled_from(["CLOUD", "jobserver"]))
def test_next_change_is_in_the_future_and_nothing_changes_before_it(
    rules: tuple[BandwidthRule, ...], t: dt.datetime, dest: str
) -> None:
    now = rate_at(rules, dest, t)
    change = next_change(rules, dest, t)
    if change is None:  # the rate never changes: the same a whole week on, minute by minute
        ahead = [t + dt.timedelta(minutes=m) for m in range(0, 7 * 1440, 7)]
        assert all(rate_at(rules, dest, x) == now for x in ahead)
        return
    assert change.at > t and change.at - t <= dt.timedelta(days=8)
    assert change.mbps != now and rate_at(rules, dest, change.at) == change.mbps
    # nothing changes in between (rules have minute boundaries: every minute start is checked)
    x = t.replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
    while x < change.at:
        assert rate_at(rules, dest, x) == now, x
        x += dt.timedelta(minutes=1)


@settings(max_examples=300, deadline=None)
@given(rules=_rule_sets(), t=_times, dest=st.sampled_from(["CLOUD", "jobserver"]))
def test_the_rule_in_force_covers_the_time_and_none_that_covers_it_is_more_specific(
    rules: tuple[BandwidthRule, ...], t: dt.datetime, dest: str
) -> None:
    rule = rule_at(rules, dest, t)
    covering = [r for r in rules if (not r.dest or r.dest == dest) and covers(r, t)]
    if rule is None:
        assert covering == []
        return
    assert rule in covering
    for other in covering:
        assert (bool(other.dest), -other.weekly_minutes, -other.index) <= (
            bool(rule.dest),
            -rule.weekly_minutes,
            -rule.index,
        )
        if other.dest and not rule.dest:
            raise AssertionError("a rule for every destination beat one naming it")


@settings(max_examples=200, deadline=None)
@given(day=st.integers(0, 6), start=st.integers(1, 1439), length=st.integers(1, 1439), t=_times)
def test_a_rule_covers_exactly_its_length_from_its_start_on_its_days(
    day: int, start: int, length: int, t: dt.datetime
) -> None:
    end = (start + length) % 1440
    rule = BandwidthRule(
        frozenset({day}), dt.time(start // 60, start % 60), dt.time(end // 60, end % 60), 10.0
    )
    begin = dt.datetime.combine(t.date(), rule.start) + dt.timedelta(days=(day - t.weekday()) % 7)
    inside = begin <= t < begin + dt.timedelta(minutes=length)
    earlier = begin - dt.timedelta(days=7)  # last week's period, crossing into this week
    inside = inside or earlier <= t < earlier + dt.timedelta(minutes=length)
    assert covers(rule, t) == inside


# --- the buckets ---------------------------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0
        self.local = _at(0, "17:59")

    def sleep(self, s: float) -> None:
        self.t += s
        self.local += dt.timedelta(seconds=s)


def test_bandwidth_follows_the_rule_in_force_and_the_nodes_alive(tmp_path: Path) -> None:
    rules = _rules(
        tmp_path,
        {"days": "mon-fri", "hours": "08:00-18:00", "mbps": 8},  # 1 MB/s
        {"days": "mon-fri", "hours": "18:00-08:00", "mbps": 16, "dest": "CLOUD"},  # 2 MB/s
    )
    clock = _Clock()
    bw = Bandwidth(rules, local_now=lambda: clock.local, clock=lambda: clock.t, sleep=clock.sleep)
    throttle = bw.throttle("CLOUD")
    assert throttle is not None
    for _ in range(30):  # 17:59:00–17:59:30: 1 MB/s
        throttle(1_000_000)
    assert clock.t == pytest.approx(30.0)
    clock.local = _at(0, "18:00")  # the night rule, CLOUD's: 2 MB/s
    start = clock.t
    for _ in range(20):
        throttle(1_000_000)
    assert clock.t - start == pytest.approx(10.0, rel=0.03)
    bw.nodes = 2  # two nodes alive: each sends half
    start = clock.t
    for _ in range(10):
        throttle(1_000_000)
    assert clock.t - start == pytest.approx(10.0, rel=0.03)
    clock.local = _at(5, "12:00")  # Saturday noon: no rule, no cap
    assert throttle(50_000_000) == 0.0
    info = bw.in_force("CLOUD")
    assert info.mbps is None and info.change is not None and info.change.at == _at(7, "08:00")
    assert Bandwidth(()).throttle("CLOUD") is None


def test_destinations_under_one_rule_share_its_bucket(tmp_path: Path) -> None:
    clock = _Clock()
    bw = Bandwidth(
        _rules(tmp_path, {"mbps": 8}), local_now=lambda: clock.local, clock=lambda: clock.t, sleep=clock.sleep
    )
    a, b = bw.throttle("CLOUD"), bw.throttle("jobserver")
    assert a is not None and b is not None
    for _ in range(5):
        a(1_000_000)
        b(1_000_000)
    assert clock.t == pytest.approx(10.0)  # 10 MB together at 1 MB/s


def test_rate_limiter_set_rate_keeps_what_was_earned() -> None:
    clock = [0.0]
    limiter = RateLimiter(8.0, clock=lambda: clock[0], sleep=lambda s: clock.__setitem__(0, clock[0] + s))
    assert limiter.take(1_000_000) == pytest.approx(1.0)
    limiter.set_rate(16.0)
    assert limiter.take(1_000_000) == pytest.approx(0.5)


# --- the nodes alive -----------------------------------------------------------------------------


def test_node_registry_counts_the_nodes_alive(journal_url: str) -> None:
    from sqlalchemy import create_engine

    engine = create_engine(journal_url)
    now = [dt.datetime(2026, 12, 7, 12)]
    a = NodeRegistry(engine, "host-a:/var/lib/dicomproxy", now=lambda: now[0])
    b = NodeRegistry(engine, "host-b:/var/lib/dicomproxy", now=lambda: now[0])
    assert a.beat() == 1
    assert b.beat() == 2 and a.beat() == 2
    now[0] += dt.timedelta(seconds=10)  # b stopped beating (died): its row ages out
    assert a.beat() == 1
    assert b.beat() == 2
    b.leave()  # a clean stop: gone at once
    assert a.alive() == 1
    engine.dispose()


# --- push status ---------------------------------------------------------------------------------


def test_push_status_shows_the_rate_in_force_and_the_next_change(tmp_path: Path) -> None:
    import json

    from click.testing import CliRunner

    from dicomproxy.cli import cli
    from tests.conftest import push_cli_toml

    toml = push_cli_toml(
        tmp_path,
        '\n[[bandwidth]]\nhours = "00:00-12:00"\nmbps = 20\n'
        '\n[[bandwidth]]\nhours = "12:00-00:00"\nmbps = 100\ndest = "CLOUD"\n',
    )
    before = dt.datetime.now()
    out = CliRunner().invoke(cli, ["push", "-c", str(toml), "status", "--json"])
    assert out.exit_code == 0, out.output
    (row,) = json.loads(out.output)["bandwidth"]
    morning = before.hour < 12
    assert row["destination"] == "CLOUD" and row["nodes"] == 1
    assert row["mbps"] == (20 if morning else 100) and row["rule"] == f"bandwidth[{0 if morning else 1}]"
    change = dt.datetime.fromisoformat(row["next_change"]["at"])
    assert row["next_change"]["mbps"] == (100 if morning else 20)
    assert change.time() == (dt.time(12) if morning else dt.time(0)) and before < change
    text = CliRunner().invoke(cli, ["push", "-c", str(toml), "status"]).output
    line = next(x for x in text.splitlines() if x.strip().startswith("CLOUD") and "Mbit/s" in x)
    assert f"until {change:%a %Y-%m-%d %H:%M}, then {100 if morning else 20} Mbit/s" in line, line


def test_metrics_show_the_rate_in_force_this_nodes_share_and_the_nodes(tmp_path: Path) -> None:
    from dicomproxy.console.metrics import Metrics

    doc = base_config_dict(
        tmp_path,
        "sqlite:///v.db",
        peers=PEERS,
        bandwidth=[{"days": "mon-fri", "mbps": 40}, {"days": "sat-sun", "mbps": 100, "dest": "CLOUD"}],
    )
    config = parse_config(doc)
    when = [_at(0, "10:00")]
    bw = Bandwidth(config.bandwidth, local_now=lambda: when[0])
    bw.nodes = 2
    metrics = Metrics(
        config,
        lambda: 0,
        lambda: 0,
        lambda: 0,
        bandwidth=lambda: [bw.in_force(d) for d in capped_destinations(config)],
    )
    text = metrics.exposition().decode()
    assert 'dicomproxy_bandwidth_limit_mbps{destination="CLOUD"} 40.0' in text
    assert 'dicomproxy_bandwidth_node_mbps{destination="CLOUD"} 20.0' in text
    assert "dicomproxy_bandwidth_nodes 2.0" in text
    when[0] = _at(5, "10:00")
    assert 'dicomproxy_bandwidth_limit_mbps{destination="CLOUD"} 100.0' in metrics.exposition().decode()


def test_a_reload_gives_the_relay_the_new_timetable(tmp_path: Path) -> None:
    """``build_context`` subscribes the relay's Bandwidth to the settings holder: a reloaded
    ``[[bandwidth]]`` is charged from the next instance on, with fresh buckets."""
    from dicomproxy.app import build_context

    def config(mbps: float) -> Any:
        doc = base_config_dict(
            tmp_path, f"sqlite:///{tmp_path / 'v.db'}", peers=PEERS, bandwidth=[{"mbps": mbps}]
        )
        return parse_config(doc, str(tmp_path / "proxy.toml"))

    ctx = build_context(config(8))
    try:
        bw = ctx.relay.engine.bandwidth
        clock = _Clock()
        bw.local_now, bw._clock, bw._sleep = (lambda: clock.local), (lambda: clock.t), clock.sleep
        throttle = bw.throttle("CLOUD")
        assert throttle is not None
        for _ in range(4):
            throttle(1_000_000)  # 8 Mbit/s: 1 MB/s
        assert clock.t == pytest.approx(4.0)
        ctx.settings.replace(config(16))
        start = clock.t
        for _ in range(4):
            throttle(1_000_000)  # the same sender, the new rule: 2 MB/s
        assert clock.t - start == pytest.approx(2.0, rel=0.05)
        assert [r.mbps for r in bw.rules] == [16]
    finally:
        ctx.close()
