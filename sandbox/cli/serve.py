"""`sandbox serve`, `sandbox demo` and `sandbox tokens`."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import click

from sandbox.cli.common import ACTOR, DATA_ROOT, POLICIES, STATE, cli, services_for, translate_errors

DEMO_SQL = "SELECT sex, COUNT(*) AS n, AVG(age) AS mean_age FROM nhanes_2017 GROUP BY sex"


def _build_services(  # noqa: ANN202
    state_dir: Path, data_root: Path, internal_token: str | None, threads: int, memory: str, build_memory: str = "4GB"
):
    from sandbox.services import Services, Settings

    return Services(
        Settings(
            state_dir=state_dir,
            data_root=data_root,
            internal_token=internal_token,
            engine_threads=threads,
            engine_memory=memory,
            engine_build_memory=build_memory,
        )
    )


def _apply_and_warm(services, policies_dir: Path, actor: str) -> None:  # noqa: ANN001
    from sandbox.policy.loader import load_policies
    from sandbox.state.grants_store import apply_policies

    for result in apply_policies(services.policies, load_policies(policies_dir), actor):
        if result.outcome != "unchanged":
            click.echo(f"policy {result.grant_id}: {result.outcome}", err=True)
    click.echo("engine: preparing the read-only database ...", err=True)
    services.engine.ensure(services.policies.datasets(), progress=lambda m: click.echo(f"engine: {m}", err=True))


@cli.command()
@DATA_ROOT
@POLICIES
@STATE
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535), help="Port.")
@click.option(
    "--auth",
    type=click.Choice(["token", "hub"]),
    default="token",
    show_default=True,
    help="token: embedded tokens from `sandbox tokens create`; hub: JupyterHub HubAuth (env set by the hub).",
)
@click.option("--threads", default=8, show_default=True, type=click.IntRange(1, 64), help="WSGI worker threads.")
@click.option("--engine-threads", default=2, show_default=True, type=click.IntRange(1, 64), help="DuckDB threads.")
@click.option("--engine-memory", default="1GB", show_default=True, help="DuckDB memory limit while serving.")
@click.option("--build-memory", default="4GB", show_default=True,
              help="Memory limit of the import child process that builds the engine file (it spills beyond).")
@click.option("--alert-webhook", envvar="SANDBOX_ALERT_WEBHOOK", default=None,
              help="POST every early-warning alert there as JSON. Env: SANDBOX_ALERT_WEBHOOK.")
@click.option("--public-base-url", envvar="SANDBOX_PUBLIC_BASE_URL", default=None,
              help="Absolute URL the public reaches the gateway at, for the DCAT catalogue's URLs (unset: relative). "
                   "Env: SANDBOX_PUBLIC_BASE_URL.")
@ACTOR
@translate_errors
def serve(data_root, policies_dir, state_dir, host, port, auth, threads, engine_threads, engine_memory, build_memory,  # noqa: ANN001, ANN201
          actor, alert_webhook, public_base_url):
    """Serve the gateway (query API, exports, review UI, public register) with waitress.

    Applies the policies directory at start, builds the locked engine file from the Parquet
    under --data-root when the catalog or data changed, then serves.
    """
    import waitress

    from gateway.app import create_app

    internal = os.environ.get("SANDBOX_INTERNAL_TOKEN") or None
    services = _build_services(state_dir, data_root, internal, engine_threads, engine_memory, build_memory)
    _apply_and_warm(services, policies_dir, actor)
    from sandbox.policy.monitoring import load_monitoring

    services.settings.oversight.monitoring = load_monitoring(policies_dir)  # monitoring.yaml, if any
    services.settings.oversight.alert_webhook_url = alert_webhook
    if public_base_url:
        services.settings.oversight.public_base_url = _base_url(public_base_url)
    authenticator = None
    if auth == "hub":
        from gateway.hub_auth import HubAuthenticator

        authenticator = HubAuthenticator.from_env()
    app = create_app(services=services, authenticator=authenticator)
    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "") if auth == "hub" else ""
    click.echo(f"gateway listening on http://{host}:{port}{prefix or '/'}", err=True)
    waitress.serve(app, host=host, port=port, threads=threads, ident="sandbox-gateway", url_prefix=prefix.rstrip("/"))


@cli.command()
@click.option("--data-root", type=click.Path(file_okay=False, path_type=Path), default=Path("var/data"),
              show_default=True, help="Where the demo Parquet files are written.")
@click.option("--policies", "policies_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=Path("policies"), show_default=True, help="Policies directory.")
@click.option("--state", "state_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("var/state"),
              show_default=True, help="State directory.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535))
@click.option("--user", default="alice", show_default=True, help="Demo operator to print a token for.")
@translate_errors
def demo(data_root, policies_dir, state_dir, host, port, user):  # noqa: ANN001, ANN201
    """Import the bundled demo data, apply the demo policies, print a token and a curl line, serve."""
    import waitress

    from gateway.app import create_app
    from sandbox.demo_data import import_demo

    import_demo(data_root, progress=lambda m: click.echo(f"demo data: {m}", err=True))
    services = _build_services(state_dir, data_root, None, 2, "1GB")
    _apply_and_warm(services, policies_dir, "demo")
    token = services.tokens.create(user)
    reviewer = services.tokens.create("carol")
    auditor = services.tokens.create("erin")
    url = f"http://{host}:{port}"
    example = json.dumps({"sql": DEMO_SQL, "epsilon": 0.5, "grant": "g-2026-001"})
    click.echo(
        f"""
Gateway ready at {url}
  operator {user}: token {token}
  reviewer carol:  token {reviewer}   (review UI: {url}/review/login)
  auditor erin:    token {auditor}   (read-only audit view: {url}/auditor/login)
Try:
  curl -s -H 'Authorization: Bearer {token}' -H 'Content-Type: application/json' \\
    -d '{example}' \\
    {url}/v1/query
  curl -s -H 'Authorization: Bearer {token}' {url}/v1/budget
Public register: {url}/public/grants · directory of data resources: {url}/public/datasets
"""
    )
    waitress.serve(create_app(services=services), host=host, port=port, threads=8, ident="sandbox-gateway")


@cli.group()
def tokens() -> None:
    """Embedded-mode API tokens (inside the stack the hub token is used instead)."""


@tokens.command("create")
@click.argument("user")
@STATE
@translate_errors
def tokens_create(user, state_dir):  # noqa: ANN001, ANN201
    """Create a token for USER and print it (only its hash is stored)."""
    click.echo(services_for(state_dir).tokens.create(user))


@tokens.command("revoke")
@click.argument("user")
@STATE
@translate_errors
def tokens_revoke(user, state_dir):  # noqa: ANN001, ANN201
    """Revoke every token of USER."""
    n = services_for(state_dir).tokens.revoke_user(user)
    click.echo(f"revoked {n} token(s) of {user}")


def new_internal_token() -> str:
    return secrets.token_urlsafe(32)


def _base_url(value: str) -> str:
    """An absolute http(s) URL without query or fragment, or a usage error."""
    from urllib.parse import urlsplit

    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise click.BadParameter(f"{value!r} is not an absolute http(s) URL", param_hint="--public-base-url")
    return value.rstrip("/")
