"""`sandbox audit|tokens|admin`: verify and export the record, credentials, keys."""

from __future__ import annotations

import csv
import datetime as dt
import getpass
import json
import sys
from pathlib import Path

import click

from sandbox.cli.common import (
    ADMIN_TOKEN_ENV,
    STATE,
    admin_token_path,
    cli,
    fail,
    presented_admin_token,
    require_admin,
    services_for,
    translate_errors,
)


# -- audit -----------------------------------------------------------------------------------
@cli.group()
def audit() -> None:
    """The keyed, hash-chained audit log and its signed checkpoints."""


def _pins(public_keys: tuple[str, ...], trust_document_key: bool, local: dict[str, str]) -> dict[str, str] | None:
    """The checkpoint public keys to verify against: --public-key, else the local signing key's public
    half; the document's own keys only with --trust-document-key (None tells verify_against so)."""
    pinned = dict(k.split("=", 1) for k in public_keys if "=" in k)
    if pinned:
        return pinned
    if trust_document_key:
        return None
    if local:
        return dict(local)
    fail("no checkpoint public key to verify against: pass --public-key KEY_ID=BASE64 (obtained elsewhere than"
         " the document), or --trust-document-key to trust the document's own key (which an attacker who"
         " wrote the document chose)", 2)


def _warn_self_served(source: str, trust_document_key: bool) -> None:
    if trust_document_key:
        click.echo("note: verified with the document's own public key: this proves only that the document is"
                   " self-consistent, not that the gateway's key signed it", err=True)
    if source.startswith(("http://", "https://")) or trust_document_key:
        click.echo("note: a checkpoint document served by the gateway being verified (or copied from it now)"
                   " proves nothing about rollback; only copies saved elsewhere earlier do", err=True)


@audit.command("verify")
@STATE
@click.option("--checkpoints", "checkpoints_src", default=None, metavar="FILE_OR_URL",
              help="Also verify against checkpoints kept elsewhere: a saved /public/checkpoints.json, or the "
                   "URL of a gateway. Detects a log cut short, rolled back or rewritten.")
@click.option("--public-key", "public_keys", multiple=True, metavar="KEY_ID=BASE64",
              help="The checkpoint public key to verify against (obtained elsewhere than the document; "
                   "repeat for retired keys).")
@click.option("--trust-document-key", is_flag=True,
              help="Verify against the public keys the document itself carries (proves only that it is "
                   "self-consistent).")
@click.option("--without-key", is_flag=True,
              help="Verify without the MAC key (an outside auditor): chain, checkpoints and replay only.")
@translate_errors
def audit_verify(state_dir: Path, checkpoints_src: str | None, public_keys: tuple[str, ...],
                 trust_document_key: bool, without_key: bool) -> None:
    """Check every link and MAC of the chain, that the state tables agree with what the log implies,
    and (with --checkpoints) that the log agrees with signed checkpoints kept elsewhere.

    Exit 1 on any problem; each problem names the first sequence number (or table row) that disagrees.
    """
    from sandbox.state.checkpoints import load_document, verify_against
    from sandbox.state.replay import reconcile

    s = services_for(state_dir, create_keys=False)
    result = s.audit.verify()
    problems = list(result.problems)
    if not result.macs_checked:
        if without_key:
            click.echo("note: MACs not checked (--without-key)", err=True)
        else:
            problems.append(f"no audit MAC key at {s.db.keyring.current_file}: MACs cannot be checked "
                            "(pass --without-key to check the rest)")
    problems.extend(f"the state database holds a {f} the gateway did not create" for f in s.db.foreign_schema())
    divergences = reconcile(s.db, s.audit)
    problems.extend(f"state differs from the log: {d}" for d in divergences)
    first = result.first_bad
    if checkpoints_src:
        local: dict[str, str] = {}
        key = s.checkpoints.key
        if key is not None and key.path.exists():  # the public half of the local signing key, and the
            local.update(key.retired_public())  # retired ones kept beside it (the keys dir, not the state)
            local[key.key_id()] = key.public_b64()
        pinned = _pins(public_keys, trust_document_key, local)
        report = verify_against(s.audit, load_document(checkpoints_src), pinned)
        problems.extend(f"checkpoints: {p}" for p in report.problems)
        if report.first_bad is not None:
            first = report.first_bad if first is None else min(first, report.first_bad)
        if not report.problems:
            click.echo(f"checkpoints: {report.checked} verified, the log agrees with every one")
        _warn_self_served(checkpoints_src, trust_document_key)
    for problem in problems:
        click.echo(f"TAMPERED: {problem}", err=True)
    if problems:
        where = f"; first disagreeing entry: {first}" if first is not None else ""
        fail(f"audit log verification failed ({len(problems)} problem(s){where})", 1)
    click.echo(f"audit log intact: {result.entries} entries, head {result.head}; state agrees with the log")


@audit.command("verify-export")
@click.argument("export_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--checkpoints", "checkpoints_src", required=True, metavar="FILE_OR_URL",
              help="Checkpoints kept elsewhere: a saved /public/checkpoints.json, or the URL of a gateway.")
@click.option("--public-key", "public_keys", multiple=True, metavar="KEY_ID=BASE64",
              help="The checkpoint public key to verify against (obtained elsewhere than the document; "
                   "repeat for retired keys).")
@click.option("--trust-document-key", is_flag=True,
              help="Verify against the public keys the document itself carries (proves only that it is "
                   "self-consistent).")
@translate_errors
def audit_verify_export(export_file: Path, checkpoints_src: str, public_keys: tuple[str, ...],
                        trust_document_key: bool) -> None:
    """For audit authorities, without the state directory or any secret: check a full `audit export`
    (JSON lines) link by link and against signed checkpoints, with only the public key. Exit 1 on any problem.
    """
    from sandbox.state.audit import ExportedLog
    from sandbox.state.checkpoints import load_document, verify_against

    log = ExportedLog.load(export_file)
    result = log.verify()
    pinned = _pins(public_keys, trust_document_key, {})
    report = verify_against(log, load_document(checkpoints_src), pinned)
    _warn_self_served(checkpoints_src, trust_document_key)
    problems = [*result.problems, *(f"checkpoints: {p}" for p in report.problems)]
    for problem in problems:
        click.echo(f"TAMPERED: {problem}", err=True)
    firsts = [s for s in (result.first_bad, report.first_bad) if s is not None]
    if problems:
        where = f"; first disagreeing entry: {min(firsts)}" if firsts else ""
        fail(f"audit export verification failed ({len(problems)} problem(s){where})", 1)
    click.echo(f"audit export intact: {result.entries} entries, head {result.head}; "
               f"{report.checked} checkpoint(s) verified with the public key")


@audit.command("export")
@STATE
@click.option("--since", default=None, help="Only entries on or after this date (YYYY-MM-DD).")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write to a file instead of standard output.")
@translate_errors
def audit_export(state_dir: Path, since: str | None, fmt: str, output: Path | None) -> None:
    """Export entries (with their hashes and MACs, so the chain can be re-verified) for audit authorities."""
    if since:
        try:
            dt.date.fromisoformat(since)
        except ValueError:
            fail(f"--since must be a date like 2026-12-01, not {since!r}", 2)
    entries = services_for(state_dir, create_keys=False).audit.entries(since)
    out = output.open("w", newline="", encoding="utf-8") if output else sys.stdout
    try:
        if fmt == "jsonl":
            for e in entries:
                out.write(json.dumps(e, ensure_ascii=False) + "\n")
        else:
            fields = ["seq", "ts", "actor", "action", "grant_id", "detail", "prev_hash", "hash", "key_id", "mac"]
            writer = csv.DictWriter(out, fieldnames=fields)
            writer.writeheader()
            for e in entries:
                writer.writerow({**e, "detail": json.dumps(e["detail"], ensure_ascii=False)})
    finally:
        if output:
            out.close()


@audit.command("checkpoint")
@STATE
@translate_errors
def audit_checkpoint(state_dir: Path) -> None:
    """Sign a checkpoint of the current head now (the gateway also signs them at an interval)."""
    s = services_for(state_dir)
    require_admin(s)
    cp = s.checkpoints.sign("admin")
    click.echo(f"checkpoint: entry {cp.seq} head {cp.head}" if cp else "checkpoint: the head is already signed")


@audit.command("rotate-key")
@STATE
@translate_errors
def audit_rotate_key(state_dir: Path) -> None:
    """Start a new audit MAC key; the old one is kept in the keyring so old entries stay verifiable."""
    from sandbox.state.chain import AuditEvent

    s = services_for(state_dir)
    actor = require_admin(s)
    old, new = s.db.keyring.rotate()
    s.db.record(AuditEvent(actor, "audit.key_rotated", None, {"from": old, "to": new}))
    click.echo(f"audit MAC key rotated: {old} -> {new}")


@audit.command("rotate-signing-key")
@STATE
@translate_errors
def audit_rotate_signing_key(state_dir: Path) -> None:
    """Start a new checkpoint signing key. The head is signed with the old key first; the old public
    key stays published (checkpoints.json lists every key), and the new one signs from here on."""
    from sandbox.state.chain import AuditEvent

    s = services_for(state_dir)
    actor = require_admin(s)
    key = s.checkpoints.key
    if key is None or not key.available():
        fail("no checkpoint signing key is configured", 2)
    s.checkpoints.sign("before signing key rotation")
    old, new = key.rotate()
    s.db.record(AuditEvent(actor, "audit.signing_key_rotated", None,
                           {"from": old, "to": new, "public_key": key.public_b64()}))
    s.checkpoints.sign("signing key rotated")
    click.echo(f"checkpoint signing key rotated: {old} -> {new}")


# -- tokens ----------------------------------------------------------------------------------
@cli.group()
def tokens() -> None:
    """Embedded-mode API tokens (inside the stack the hub token is used instead)."""


@tokens.command("create")
@click.argument("user")
@STATE
@translate_errors
def tokens_create(user: str, state_dir: Path) -> None:
    """Create a token for USER and print it (only its hash is stored; audited)."""
    s = services_for(state_dir)
    click.echo(s.tokens.create(user, actor=require_admin(s)))


@tokens.command("revoke")
@click.argument("user")
@STATE
@translate_errors
def tokens_revoke(user: str, state_dir: Path) -> None:
    """Revoke every API token of USER (audited)."""
    s = services_for(state_dir)
    n = s.tokens.revoke_user(user, actor=require_admin(s), scope="api")
    click.echo(f"revoked {n} token(s) of {user}")


# -- admin -----------------------------------------------------------------------------------
@cli.group()
def admin() -> None:
    """The admin credential that commands changing state require."""


@admin.command("init")
@STATE
@click.option("--user", default="admin", show_default=True, help="The admin this credential names in the log.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write the token (mode 0600). Default: the admin token file (<keys>/admin.token).")
@translate_errors
def admin_init(state_dir: Path, user: str, output: Path | None) -> None:
    """Create an admin credential. The first one is created freely (at install); later ones need an admin's.

    The first is logged as created by the operating-system user who ran this command.
    """
    from sandbox.state.files import atomic_write

    s = services_for(state_dir)
    actor = require_admin(s) if s.tokens.has_admin() else f"os:{getpass.getuser()}"
    token = s.tokens.create(user, actor=actor, scope="admin")
    target = output or admin_token_path(s)
    atomic_write(target, token.encode() + b"\n", 0o600)
    click.echo(f"admin credential for {user} written to {target} (or set {ADMIN_TOKEN_ENV})")


@admin.command("whoami")
@STATE
@translate_errors
def admin_whoami(state_dir: Path) -> None:
    """The admin the presented credential names, or exit 1."""
    s = services_for(state_dir)
    click.echo(require_admin(s) if presented_admin_token(s) else fail("no admin credential presented", 1))
