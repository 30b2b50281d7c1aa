"""``dicomproxy alerts test``: one test message to each ``[[alerts]]`` target, its result printed."""

from __future__ import annotations

import sys

import click

from dicomproxy.cli.common import config_option, required_config


@click.group("alerts")
@config_option
def alerts_group() -> None:
    """Alerts that reach a person ([alerting] and [[alerts]] in the config)."""


@alerts_group.command("test")
@config_option
def alerts_test() -> None:
    """Send a test message to every target now; print OK or the error for each (exit 1 if any failed)."""
    from dicomproxy.alerts.message import Phase, message, test_incident
    from dicomproxy.alerts.service import node_label
    from dicomproxy.alerts.targets import AlertDeliveryError, build_target

    config = required_config()
    if not config.alerts.targets:
        click.echo("no [[alerts]] target is configured", err=True)
        sys.exit(1)
    msg = message(config, node_label(config), Phase.TEST, test_incident())
    failed = 0
    for target_config in config.alerts.targets:
        target = build_target(target_config)
        try:
            target.send(msg)
            click.echo(f"{target_config.name} ({target_config.kind}): OK")
        except AlertDeliveryError as exc:
            failed += 1
            click.echo(f"{target_config.name} ({target_config.kind}): FAILED: {exc}")
        finally:
            target.close()
    sys.exit(1 if failed else 0)
