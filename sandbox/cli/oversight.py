"""`sandbox monitor|alerts|emergency|cases` — the authority's oversight commands."""

from __future__ import annotations

import json

import click

from sandbox.cli.common import ACTOR, STATE, cli, fail, services_for, translate_errors


def _services(state_dir, policies_dir=None):  # noqa: ANN001, ANN202
    s = services_for(state_dir)
    if policies_dir is not None:
        from sandbox.policy.monitoring import load_monitoring

        s.settings.oversight.monitoring = load_monitoring(policies_dir)
    return s


MONITORING = click.option(
    "--policies", "policies_dir", envvar="SANDBOX_POLICIES", default=None,
    type=click.Path(exists=True, file_okay=False), help="Policies directory with monitoring.yaml (defaults apply "
    "without one). Env: SANDBOX_POLICIES.")


# -- monitor / alerts ----------------------------------------------------------------------------
@cli.group()
def monitor() -> None:
    """Early-warning rules over the audit stream (the gateway runs them after every request)."""


@monitor.command("scan")
@STATE
@MONITORING
@click.option("--webhook", envvar="SANDBOX_ALERT_WEBHOOK", default=None, help="POST each new alert there as JSON.")
@translate_errors
def monitor_scan(state_dir, policies_dir, webhook):  # noqa: ANN001, ANN201
    """Evaluate the rules over audit entries not scanned yet; print the alerts raised."""
    from sandbox.monitoring import scan

    s = _services(state_dir, policies_dir)
    if webhook:
        s.settings.oversight.alert_webhook_url = webhook
    for alert in scan(s):
        click.echo(f"ALERT {alert.id} {alert.rule}: {alert.message}" + (" (grant suspended)" if alert.suspend else ""))


@cli.group()
def alerts() -> None:
    """Alerts raised by the monitoring rules."""


@alerts.command("list")
@STATE
@click.option("--open", "only_open", is_flag=True, help="Only alerts not acknowledged yet.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@translate_errors
def alerts_list(state_dir, only_open, fmt):  # noqa: ANN001, ANN201
    """Alerts, newest first."""
    from sandbox.state import alerts_store

    items = alerts_store.listing(services_for(state_dir).db.conn, unacknowledged=only_open)
    if fmt == "json":
        click.echo(json.dumps(items, indent=2))
        return
    for a in items:
        ack = f"acknowledged by {a['acknowledged_by']}" if a["acknowledged_at"] else "open"
        click.echo(f"{a['id']:5} {a['ts'][:19]} {a['rule']:22} {ack:28} {a['message']}")


@alerts.command("ack")
@click.argument("alert_id", type=int)
@STATE
@ACTOR
@translate_errors
def alerts_ack(alert_id, state_dir, actor):  # noqa: ANN001, ANN201
    """Acknowledge an alert (audited)."""
    from sandbox.monitoring import acknowledge

    acknowledge(services_for(state_dir), alert_id, actor)
    click.echo(f"alert {alert_id}: acknowledged")


# -- emergency ------------------------------------------------------------------------------------
@cli.group()
def emergency() -> None:
    """Emergency measures."""


@emergency.command("stop")
@STATE
@ACTOR
@click.option("--reason", required=True, help="Why; recorded in the audit log and on each suspended grant.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@translate_errors
def emergency_stop_cmd(state_dir, actor, reason, yes):  # noqa: ANN001, ANN201
    """Suspend every active grant and stop every notebook server, in one audited command.

    Resume grants one by one afterwards with `sandbox grants resume ID`.
    """
    from sandbox.cli.admin import _provisioner
    from sandbox.monitoring import emergency_stop

    if not yes and not click.confirm("Suspend every grant and stop every notebook server?"):
        fail("nothing done", 1)
    outcome = emergency_stop(services_for(state_dir), actor, reason, _provisioner())
    click.echo(f"suspended {len(outcome['suspended'])} grant(s): {', '.join(outcome['suspended']) or 'none'}")
    if outcome["hub"]:
        click.echo(f"stopped {len(outcome['servers_stopped'])} notebook server(s)")
    else:
        click.echo("no hub configured (SANDBOX_HUB_URL, SANDBOX_HUB_TOKEN): no notebook server to stop")
    if outcome["hub_error"]:
        fail(f"the hub could not stop servers: {outcome['hub_error']}", 1)


# -- cases ----------------------------------------------------------------------------------------
@cli.group("cases")
def cases_group() -> None:
    """Requests to open data, feedback, complaints and data-quality reports."""


@cases_group.command("list")
@STATE
@click.option("--status", type=click.Choice(["open", "in_progress", "answered", "closed"]), default=None)
@ACTOR
@translate_errors
def cases_list(state_dir, status, actor):  # noqa: ANN001, ANN201
    """Cases, newest first (the actor must be an admin)."""
    from sandbox import cases

    for c in cases.authority_list(services_for(state_dir), actor, (status,) if status else None):
        click.echo(f"{c['id']} {c['created_at'][:10]} {c['kind']:13} {c['status']:12} {c['owner'] or '-':10} "
                   f"{c['subject']}")


@cases_group.command("show")
@click.argument("case_id")
@STATE
@ACTOR
@translate_errors
def cases_show(case_id, state_dir, actor):  # noqa: ANN001, ANN201
    """One case with its message, contact and history."""
    from sandbox import cases

    click.echo(json.dumps(cases.authority_view(services_for(state_dir), case_id, actor), indent=2))


@cases_group.command("act")
@click.argument("case_id")
@click.argument("action", type=click.Choice(["assign", "respond", "reopen", "close"]))
@STATE
@ACTOR
@click.option("--owner", default=None, help="assign: the admin who owns the case (default: the actor).")
@click.option("--response", default=None, help="respond / close: the authority's published response.")
@click.option("--note", default=None, help="An internal note, kept in the case history and the audit log.")
@translate_errors
def cases_act(case_id, action, state_dir, actor, owner, response, note):  # noqa: ANN001, ANN201
    """Move a case: assign, respond, reopen or close (audited)."""
    from sandbox import cases

    new = cases.act(services_for(state_dir), case_id, actor, action, owner=owner, response=response, note=note)
    click.echo(f"{case_id}: {new}")


# -- grants: the published reason ------------------------------------------------------------------
from sandbox.cli.admin import grants  # noqa: E402  the group defined with the other grant commands


@grants.command("publish-reason")
@click.argument("grant_id")
@click.argument("text")
@STATE
@ACTOR
@translate_errors
def grants_publish_reason(grant_id, text, state_dir, actor):  # noqa: ANN001, ANN201
    """Publish on the register why GRANT_ID is suspended or revoked (audited).

    `grants suspend --reason` stays in the audit log only (it may name people); until a reason is
    published the register says the grant was suspended by the authority. A revocation's
    `--reason` is published as given.
    """
    from sandbox.offerings import publish_reason

    publish_reason(services_for(state_dir), grant_id, actor, text)
    click.echo(f"{grant_id}: reason published")
