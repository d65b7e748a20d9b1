"""Shared options, the admin credential and error translation for the CLI."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from sandbox.errors import Conflict, Forbidden, NotFound, PolicyError, SandboxError

if TYPE_CHECKING:
    from sandbox.services import Services

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
ADMIN_TOKEN_ENV = "SANDBOX_ADMIN_TOKEN"


@dataclass
class KeyOptions:
    """Where the keys are (root options of the `sandbox` command; every setting also an env variable)."""

    keys_dir: Path | None = None
    audit_key_file: Path | None = None
    signing_key_file: Path | None = None
    admin_token_file: Path | None = None
    audit_mark_file: Path | None = None


_PATH = click.Path(path_type=Path)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="trusted-sandbox")
@click.option("--keys", "keys_dir", envvar="SANDBOX_KEYS", type=_PATH, default=None,
              help="Keys directory, outside --state: audit MAC keyring, checkpoint signing key, admin token. "
                   "Default: `keys` beside the state directory. Env: SANDBOX_KEYS.")
@click.option("--audit-key-file", envvar="SANDBOX_AUDIT_KEY", type=_PATH, default=None,
              help="The current audit MAC key (hex). Default: <keys>/audit-mac.key, created on first use. "
                   "Env: SANDBOX_AUDIT_KEY.")
@click.option("--signing-key-file", envvar="SANDBOX_SIGNING_KEY", type=_PATH, default=None,
              help="Ed25519 checkpoint signing key (PEM). Default: <keys>/checkpoint-signing.pem, created on "
                   "first use. Env: SANDBOX_SIGNING_KEY.")
@click.option("--admin-token-file", envvar="SANDBOX_ADMIN_TOKEN_FILE", type=_PATH, default=None,
              help="File holding the admin credential for commands that change state (or set "
                   "SANDBOX_ADMIN_TOKEN). Default: <keys>/admin.token. Env: SANDBOX_ADMIN_TOKEN_FILE.")
@click.option("--audit-mark-file", envvar="SANDBOX_AUDIT_MARK", type=_PATH, default=None,
              help="The audit high-water mark: must be writable and outside --state (it is how a rollback of "
                   "the whole state directory is noticed). Default: <keys>/audit-mark.json. Env: SANDBOX_AUDIT_MARK.")
@click.pass_context
def cli(ctx: click.Context, keys_dir: Path | None, audit_key_file: Path | None, signing_key_file: Path | None,
        admin_token_file: Path | None, audit_mark_file: Path | None) -> None:
    """Trusted-circulation sandbox: DP query gateway, grants, budgets, audit."""
    ctx.obj = KeyOptions(keys_dir, audit_key_file, signing_key_file, admin_token_file, audit_mark_file)


def key_options() -> KeyOptions:
    ctx = click.get_current_context(silent=True)
    obj = ctx.find_root().obj if ctx is not None else None
    return obj if isinstance(obj, KeyOptions) else KeyOptions()


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def translate_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn SandboxError into a one-line message and a trustworthy exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
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


def settings_for(state_dir: Path, data_root: Path | None = None, *, create_keys: bool = True,
                 **extra: Any) -> Any:
    from sandbox.services import Settings

    keys = key_options()
    return Settings(state_dir=state_dir, data_root=data_root or state_dir / "no-data", keys_dir=keys.keys_dir,
                    audit_key_file=keys.audit_key_file, signing_key_file=keys.signing_key_file,
                    audit_mark_file=keys.audit_mark_file,
                    create_keys=create_keys, **extra)


def services_for(state_dir: Path, data_root: Path | None = None, *, create_keys: bool = True) -> Services:
    from sandbox.services import Services

    return Services(settings_for(state_dir, data_root, create_keys=create_keys))


def admin_token_path(services: Services) -> Path:
    """Where the admin credential is kept: never inside the state directory (refused)."""
    from sandbox.state.keys import ADMIN_TOKEN_FILE, check_outside

    explicit = key_options().admin_token_file
    path = explicit if explicit else services.db.keyring.dir / ADMIN_TOKEN_FILE
    check_outside(path, services.settings.state_dir, "the admin token file")
    return path


def presented_admin_token(services: Services) -> str | None:
    token = os.environ.get(ADMIN_TOKEN_ENV, "").strip()
    if token:
        return token
    path = admin_token_path(services)
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def require_admin(services: Services) -> str:
    """The admin the presented credential names (the audit log's actor); refuses without one."""
    token = presented_admin_token(services)
    user = services.tokens.admin_for(token) if token else None
    if user is None:
        where = admin_token_path(services)
        fail(f"this command changes state and needs an admin credential: set {ADMIN_TOKEN_ENV} or put the admin "
             f"token in {where} (`sandbox admin init` creates the first one)", 1)
    return user


def refuse_mismatched_sources(entries: list[tuple[str, Any]], data_root: Path, *, refusal: str, code: int,
                              missing_ok: bool = False) -> None:
    """Each catalog entry (label, Dataset) against its source's schema (:mod:`sandbox.catalog_check`):
    the problems on stderr, then the command refused with ``refusal`` before anything is applied. With
    ``missing_ok`` a source not under the data root yet is only reported (the engine skips it)."""
    from sandbox.catalog_check import check_dataset_against_parquet

    problems = []
    for label, ds in entries:
        if missing_ok and not (data_root / ds.source).is_file():
            click.echo(f"warning: {label}: source {ds.source} not under the data root yet", err=True)
            continue
        problems += [f"{label}: {p}" for p in check_dataset_against_parquet(ds, data_root)]
    if problems:
        for line in problems:
            click.echo(line, err=True)
        fail(f"{len(problems)} problem(s){refusal}", code)

