"""`sandbox datasets|grants|budget|usage` — the agency's administration commands.

Commands that change state need the admin credential (see :func:`require_admin`); the admin it
names is the actor in the audit log.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from sandbox.cli.common import (
    POLICIES,
    STATE,
    cli,
    refuse_mismatched_sources,
    require_admin,
    services_for,
    translate_errors,
)
from sandbox.cli.tables import print_table


# -- datasets --------------------------------------------------------------------------------
@cli.group()
def datasets() -> None:
    """Catalog entries: list, validate against the Parquet, register, import demo data."""


@datasets.command("list")
@STATE
@translate_errors
def datasets_list(state_dir):  # noqa: ANN001, ANN201
    """The catalog in force."""
    for ds in services_for(state_dir).policies.datasets().values():
        click.echo(f"{ds.id:20} {ds.classification}  unit={ds.privacy_unit:8} {len(ds.columns):3} columns  {ds.title}")


@datasets.command("validate")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--data-root", envvar="SANDBOX_DATA_ROOT", required=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path), help="Folder with the Parquet files.")
@translate_errors
def datasets_validate(paths, data_root):  # noqa: ANN001, ANN201
    """Check catalog entries (YAML) against the schema of their Parquet files."""
    from sandbox.catalog_check import check_dataset_against_parquet
    from sandbox.policy.loader import load_dataset

    failed = False
    for path in paths:
        ds = load_dataset(path)
        problems = check_dataset_against_parquet(ds, data_root)
        for p in problems:
            click.echo(f"{path}: {p}", err=True)
        failed |= bool(problems)
        click.echo(f"{path}: {'FAILED' if problems else 'ok'}")
    sys.exit(1 if failed else 0)


@datasets.command("register")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--data-root", envvar="SANDBOX_DATA_ROOT", required=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder with the Parquet files: each source must exist there and match its declared schema.")
@STATE
@translate_errors
def datasets_register(paths, data_root, state_dir):  # noqa: ANN001, ANN201
    """Register (or update) catalog entries from YAML files, once each source matches its declared schema."""
    from sandbox.policy.loader import load_dataset

    s = services_for(state_dir)
    actor = require_admin(s)
    entries = [(path, load_dataset(path)) for path in paths]
    refuse_mismatched_sources([(str(p), ds) for p, ds in entries], data_root, refusal="; nothing registered", code=1)
    store = s.policies
    for _path, ds in entries:
        result = store.apply_dataset(ds, actor)
        click.echo(f"{result.grant_id}: {result.outcome}")


@datasets.command("import")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--data-root", envvar="SANDBOX_DATA_ROOT", required=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path), help="Folder with the Parquet files.")
@STATE
@translate_errors
def datasets_import(paths, data_root, state_dir):  # noqa: ANN001, ANN201
    """Validate entries against their Parquet, register them, and build the engine file (with progress).

    A running gateway swaps the new engine file in when its next query notices the change (until
    then, and while it opens the file, the file in force keeps answering).
    """
    from sandbox.policy.loader import load_dataset

    s = services_for(state_dir, data_root)
    actor = require_admin(s)
    entries = [(path, load_dataset(path)) for path in paths]
    refuse_mismatched_sources([(str(p), ds) for p, ds in entries], data_root, refusal="; nothing registered", code=1)
    for _path, ds in entries:
        click.echo(f"{ds.id}: {s.policies.apply_dataset(ds, actor).outcome}")
    s.engine.ensure(s.policies.datasets(), progress=lambda m: click.echo(f"engine: {m}", err=True))
    click.echo("engine: ready")


@datasets.command("import-demo")
@click.option("--data-root", envvar="SANDBOX_DATA_ROOT", required=True,
              type=click.Path(file_okay=False, path_type=Path), help="Where the Parquet files are written.")
@click.option("--force", is_flag=True, help="Re-import even if the files exist.")
@translate_errors
def datasets_import_demo(data_root, force):  # noqa: ANN001, ANN201
    """Convert the bundled demo data (NHANES 2017-2018, UCI Adult) to Parquet."""
    from sandbox.demo_data import import_demo

    import_demo(data_root, progress=lambda m: click.echo(m, err=True), force=force)


# -- grants ----------------------------------------------------------------------------------
@cli.group()
def grants() -> None:
    """Authorizations: apply (idempotent), list, suspend, resume, revoke (final)."""


def _provisioner():  # noqa: ANN202
    """The hub client when the stack is configured (SANDBOX_HUB_URL, SANDBOX_HUB_TOKEN), else None."""
    try:
        from sandbox.hub_api import HubClient
    except ImportError:
        return None
    return HubClient.from_env()


@grants.command("apply")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@STATE
@click.option("--dry-run", is_flag=True, help="Show the diff against what is in force; change nothing.")
@translate_errors
def grants_apply(path, state_dir, dry_run):  # noqa: ANN001, ANN201
    """Validate PATH, show the diff against what is in force, and apply it."""
    from sandbox.policy.loader import load_grant

    grant = load_grant(path)
    s = services_for(state_dir)
    store = s.policies
    plan = store.plan_grant(grant)
    for line in plan.changes:
        click.echo(f"  {line}")
    if dry_run:
        click.echo(f"{grant.id}: would be {plan.outcome}")
        return
    result = store.apply_grant(grant, require_admin(s))
    click.echo(f"{grant.id}: {result.outcome}")
    hub = _provisioner()
    if hub is not None:
        applied = store.grant(grant.id)
        hub.provision(applied)
        if applied.status != "active":
            hub.stop_servers(applied.members)
        click.echo(f"{grant.id}: hub users and group provisioned")


@grants.command("list")
@STATE
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@translate_errors
def grants_list(state_dir, fmt):  # noqa: ANN001, ANN201
    """Grants in force with their effective status and budget."""
    from sandbox.policy.rules import effective_status

    s = services_for(state_dir)
    rows = []
    for g in s.policies.grants():
        b = s.ledger.state(g.id)
        rows.append({
            "id": g.id, "operator": g.operator, "mode": g.mode, "status": effective_status(g, s.today()),
            "valid_until": g.valid_until.isoformat(), "members": ",".join(g.members),
            "epsilon_spent": b.epsilon_spent, "epsilon_total": b.epsilon_total,
        })
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    print_table(
        ["ID", "STATUS", "UNTIL", "EPSILON", "OPERATOR"],
        [[r["id"], r["status"], r["valid_until"], f"{r['epsilon_spent']:.3f}/{r['epsilon_total']:g}", r["operator"]]
         for r in rows],
        right=("EPSILON",),
    )


def _set_status(grant_id: str, status: str, state_dir: Path, reason: str) -> None:
    s = services_for(state_dir)
    actor = require_admin(s)
    grant = s.policies.set_status(grant_id, status, actor, reason)
    click.echo(f"{grant_id}: {status}")
    if status == "revoked":
        try:
            from sandbox.exports.workflow import withdraw_pending_for_grant
            from sandbox.wiring import export_deps
        except ImportError:
            pass
        else:
            n = withdraw_pending_for_grant(export_deps(s), grant_id, actor)
            click.echo(f"{grant_id}: {n} pending export request(s) withdrawn")
    hub = _provisioner()
    if hub is not None and status != "active":
        hub.stop_servers(grant.members)
        click.echo(f"{grant_id}: members' servers stopped")


@grants.command("suspend")
@click.argument("grant_id")
@STATE
@click.option("--reason", default="", help="Recorded in the audit log.")
@translate_errors
def grants_suspend(grant_id, state_dir, reason):  # noqa: ANN001, ANN201
    """Suspend a grant: every gateway call under it gets 403 until resumed."""
    _set_status(grant_id, "suspended", state_dir, reason)


@grants.command("resume")
@click.argument("grant_id")
@STATE
@click.option("--reason", default="", help="Recorded in the audit log.")
@translate_errors
def grants_resume(grant_id, state_dir, reason):  # noqa: ANN001, ANN201
    """Resume a suspended grant (a revoked grant cannot be resumed)."""
    _set_status(grant_id, "active", state_dir, reason)


@grants.command("revoke")
@click.argument("grant_id")
@STATE
@click.option("--reason", required=True, help="Why; recorded in the audit log and the public register.")
@translate_errors
def grants_revoke(grant_id, state_dir, reason):  # noqa: ANN001, ANN201
    """Revoke a grant, finally: 403 from now on, servers stopped, pending exports withdrawn."""
    _set_status(grant_id, "revoked", state_dir, reason)


# -- budget ----------------------------------------------------------------------------------
@cli.group()
def budget() -> None:
    """Privacy budgets."""


@budget.command("show")
@click.argument("grant_id", required=False)
@STATE
@translate_errors
def budget_show(grant_id, state_dir):  # noqa: ANN001, ANN201
    """Epsilon total, spent and remaining, for one grant or all: the grant, its operator's cap
    and the dataset's cap for all grants together, on each of its datasets."""
    s = services_for(state_dir)
    if grant_id:
        s.ledger.state(grant_id)  # "no budget for grant ..." before anything else
    grants = [s.policies.grant(grant_id)] if grant_id else s.policies.grants()
    catalog = s.policies.datasets()
    for grant in grants:
        b = s.ledger.state(grant.id)
        line = (f"{grant.id}: epsilon total {b.epsilon_total:g}, spent {b.epsilon_spent:g}, "
                f"remaining {b.epsilon_remaining:g}")
        if b.accounting == "zcdp":
            line += f" (zcdp at delta {b.delta:g}: rho total {b.rho_total:g}, spent {b.rho_spent:g})"
        click.echo(line)
        for ds_id in sorted(grant.datasets):
            if ds_id not in catalog:
                continue
            for cap in s.ledger.cap_states(catalog[ds_id], grant.operator):
                who = f"operator {cap.operator}" if cap.cap == "operator" else "all grants"
                total = "no cap" if cap.epsilon_total is None else f"cap {cap.epsilon_total:g}"
                left = "" if cap.epsilon_remaining is None else f", remaining {cap.epsilon_remaining:g}"
                zdelta = "" if cap.delta_total is None else (
                    f"; zcdp delta cap {cap.delta_total:g}, spent {cap.delta_spent:g}")
                click.echo(f"  {ds_id}, {who}: {total}, spent {cap.epsilon_spent:g}{left}{zdelta}")


# -- usage -----------------------------------------------------------------------------------
@cli.group()
def usage() -> None:
    """Usage metering and price statements."""


@usage.command("report")
@STATE
@POLICIES
@click.option("--period", required=True, help="Month to report, YYYY-MM (UTC).")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True)
@translate_errors
def usage_report_cmd(state_dir, policies_dir, period, fmt):  # noqa: ANN001, ANN201
    """Per grant: queries, epsilon, exports, notebook hours, and a statement from policies/prices.yaml."""
    from sandbox.policy.prices import load_prices
    from sandbox.usage import format_csv, usage_report
    from sandbox.wiring import usage_sources

    report = usage_report(usage_sources(services_for(state_dir)), period, load_prices(policies_dir / "prices.yaml"))
    if fmt == "csv":
        click.echo(format_csv(report), nl=False)
    elif fmt == "json":
        click.echo(json.dumps(report, indent=2))
    else:
        print_table(
            ["GRANT", "USE", "QUERIES", "EPSILON", "EXPORTS", "NOTEBOOK H", "TOTAL"],
            [[g["grant"], g["use"], g["queries"], f"{g['epsilon']:.3f}", g["exports"], f"{g['notebook_hours']:.2f}",
              f"{g['total']} {g['currency']}"] for g in report],
            right=("QUERIES", "EPSILON", "EXPORTS", "NOTEBOOK H", "TOTAL"),
        )
