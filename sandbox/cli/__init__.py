"""The ``sandbox`` command: serve the gateway and administer datasets, grants, budgets, audit.

Every command takes ``--state DIR`` (default ``$SANDBOX_STATE``) and, where it reads policies,
``--policies DIR`` (default ``$SANDBOX_POLICIES``). Exit codes: 0 success, 1 a refusal or
failed check (e.g. audit verification), 2 bad usage or invalid input.
"""

from __future__ import annotations

import sys

import click

from sandbox.cli.common import cli
from sandbox.errors import SandboxError

# command groups register themselves on `cli`
from sandbox.cli import admin, serve  # noqa: E402, F401  isort: skip
from sandbox.cli import oversight  # noqa: E402, F401  isort: skip


def main() -> None:
    try:
        cli(standalone_mode=True)
    except SandboxError as exc:  # pragma: no cover - commands translate their own errors
        click.echo(f"error: {exc.message}", err=True)
        sys.exit(2)


__all__ = ["cli", "main"]
