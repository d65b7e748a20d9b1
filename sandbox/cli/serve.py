"""`sandbox serve` and `sandbox demo`."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import click

from sandbox.cli.common import (
    ADMIN_TOKEN_ENV,
    DATA_ROOT,
    POLICIES,
    STATE,
    admin_token_path,
    cli,
    presented_admin_token,
    refuse_mismatched_sources,
    settings_for,
    translate_errors,
)

STARTUP_ACTOR = "gateway:startup"  # policies applied by the gateway itself when it starts

DEMO_SQL = "SELECT sex, COUNT(*) AS n, AVG(age) AS mean_age FROM nhanes_2017 GROUP BY sex"


def _build_services(  # noqa: ANN202
    state_dir: Path, data_root: Path, internal_token: str | None, threads: int, memory: str, build_memory: str = "4GB",
    checkpoint_interval: float = 300.0,
):
    from sandbox.services import Services

    return Services(
        settings_for(
            state_dir,
            data_root,
            internal_token=internal_token,
            engine_threads=threads,
            engine_memory=memory,
            engine_build_memory=build_memory,
            checkpoint_interval_s=checkpoint_interval,
        )
    )


def ensure_admin(services) -> None:  # noqa: ANN001
    """At install (first start): register the admin credential the deployment provides
    (``SANDBOX_ADMIN_TOKEN`` or the admin token file, e.g. a secret mounted by compose), or create
    one in the keys directory when there is none at all.
    """
    from sandbox.state.files import atomic_write

    token = presented_admin_token(services)
    if token:
        if not services.tokens.known(token):  # a revoked credential is never registered again
            user = os.environ.get("SANDBOX_ADMIN_USER", "admin")
            services.tokens.register(token, user, STARTUP_ACTOR, scope="admin")
            click.echo(f"admin credential for {user} registered (from {ADMIN_TOKEN_ENV} or the admin token file)",
                       err=True)
        return
    if services.tokens.has_admin():
        return
    path = admin_token_path(services)
    try:
        created = services.tokens.create("admin", actor=STARTUP_ACTOR, scope="admin")
        atomic_write(path, created.encode() + b"\n", 0o600)
    except OSError as exc:
        click.echo(f"warning: no admin credential written ({exc}); run `sandbox admin init`", err=True)
        return
    click.echo(f"admin credential created: {path} (admin CLI commands read it from there)", err=True)


def _start_checkpoints(services) -> None:  # noqa: ANN001
    from sandbox.state.checkpoints import Checkpointer

    services.checkpoints.sign("startup")
    if services.settings.checkpoint_interval_s > 0:
        Checkpointer(services.checkpoints, services.settings.checkpoint_interval_s).start()


def _apply_and_warm(services, policies_dir: Path, actor: str) -> None:  # noqa: ANN001
    from sandbox.policy.loader import load_policies
    from sandbox.state.grants_store import apply_policies

    policies = load_policies(policies_dir)
    # as `datasets register` checks them; a source not there yet is only reported (its queries say so)
    refuse_mismatched_sources([(f"dataset {ds.id}", ds) for ds in policies.datasets.values()],
                              services.settings.data_root, missing_ok=True, code=2,
                              refusal=" between the catalog and its source files; nothing applied")
    for result in apply_policies(services.policies, policies, actor):
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
@click.option("--engine-memory", default="600MB", show_default=True,
              help="DuckDB memory limit while serving (the gateway process is about 200 MB more; a refresh holds "
                   "two engine files open until the old one's last query ends).")
@click.option("--build-memory", default="4GB", show_default=True,
              help="Memory limit of the import child process that builds the engine file (it spills beyond).")
@click.option("--checkpoint-interval", default=300.0, show_default=True, type=click.FloatRange(0),
              envvar="SANDBOX_CHECKPOINT_INTERVAL",
              help="Seconds between signed audit checkpoints (also signed on every grant change; 0: only then). "
                   "Env: SANDBOX_CHECKPOINT_INTERVAL.")
@click.option("--alert-webhook", envvar="SANDBOX_ALERT_WEBHOOK", default=None,
              help="POST every early-warning alert there as JSON. Env: SANDBOX_ALERT_WEBHOOK.")
@click.option("--public-base-url", envvar="SANDBOX_PUBLIC_BASE_URL", default=None,
              help="Absolute URL the public reaches the gateway at, for the DCAT catalogue's URLs (unset: relative). "
                   "Env: SANDBOX_PUBLIC_BASE_URL.")
@translate_errors
def serve(data_root, policies_dir, state_dir, host, port, auth, threads, engine_threads, engine_memory, build_memory,  # noqa: ANN001, ANN201
          checkpoint_interval, alert_webhook, public_base_url):
    """Serve the gateway (query API, exports, review UI, public register) with waitress.

    Applies the policies directory at start, builds the locked engine file from the Parquet
    under --data-root when the catalog or data changed, then serves.
    """
    import waitress

    from gateway.app import create_app

    internal = os.environ.get("SANDBOX_INTERNAL_TOKEN") or None
    services = _build_services(state_dir, data_root, internal, engine_threads, engine_memory, build_memory,
                               checkpoint_interval)
    ensure_admin(services)
    _apply_and_warm(services, policies_dir, STARTUP_ACTOR)
    from sandbox.policy.monitoring import load_monitoring

    services.settings.oversight.monitoring = load_monitoring(policies_dir)  # monitoring.yaml, if any
    services.settings.oversight.alert_webhook_url = alert_webhook
    if public_base_url:
        services.settings.oversight.public_base_url = _base_url(public_base_url)
    _start_checkpoints(services)
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
    services = _build_services(state_dir, data_root, None, 2, "600MB")
    ensure_admin(services)
    _apply_and_warm(services, policies_dir, STARTUP_ACTOR)
    _start_checkpoints(services)
    token = services.tokens.create(user, actor="gateway:demo")
    reviewer = services.tokens.create("carol", actor="gateway:demo")
    auditor = services.tokens.create("erin", actor="gateway:demo")
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
Signed audit checkpoints: {url}/public/checkpoints   admin credential: {admin_token_path(services)}
"""
    )
    waitress.serve(create_app(services=services), host=host, port=port, threads=8, ident="sandbox-gateway")


def new_internal_token() -> str:
    return secrets.token_urlsafe(32)


def _base_url(value: str) -> str:
    """An absolute http(s) URL without query or fragment, or a usage error."""
    from urllib.parse import urlsplit

    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise click.BadParameter(f"{value!r} is not an absolute http(s) URL", param_hint="--public-base-url")
    return value.rstrip("/")
