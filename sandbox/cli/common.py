"""Shared options and error translation for the CLI."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import click

from sandbox.errors import Conflict, Forbidden, NotFound, PolicyError, SandboxError

STATE = click.option(
    "--state",
    "state_dir",
    envvar="SANDBOX_STATE",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="State directory (SQLite ledger, audit, exports, engine file). Env: SANDBOX_STATE.",
)
POLICIES = click.option(
    "--policies",
    "policies_dir",
    envvar="SANDBOX_POLICIES",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Policies directory (datasets/, grants/, roles.yaml). Env: SANDBOX_POLICIES.",
)
DATA_ROOT = click.option(
    "--data-root",
    envvar="SANDBOX_DATA_ROOT",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder with the raw Parquet files; only the gateway reads it. Env: SANDBOX_DATA_ROOT.",
)
ACTOR = click.option(
    "--actor",
    envvar="SANDBOX_ACTOR",
    default="admin-cli",
    show_default=True,
    help="Who is acting, for the audit log. Env: SANDBOX_ACTOR.",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="trusted-sandbox")
def cli() -> None:
    """Trusted-circulation sandbox: DP query gateway, grants, budgets, audit."""


def fail(message: str, code: int = 1) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def translate_errors(fn):  # noqa: ANN001, ANN201
    """Turn SandboxError into a one-line message and a trustworthy exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        try:
            return fn(*args, **kwargs)
        except PolicyError as exc:
            fail(exc.message, 2)
        except (Conflict, Forbidden, NotFound) as exc:
            fail(exc.message, 1)
        except SandboxError as exc:
            detail = getattr(exc, "admin_detail", "")  # e.g. why the engine could not be built
            fail(exc.message + (f": {detail}" if detail else ""), 2)

    return wrapper


def services_for(state_dir: Path, data_root: Path | None = None):  # noqa: ANN201
    from sandbox.services import Services, Settings

    return Services(Settings(state_dir=state_dir, data_root=data_root or state_dir / "no-data"))
