"""Uploads into the airlock: submit a request, change the files of a returned one.

Every upload is rendered canonical and checked (:func:`sandbox.exports.checks.run_all`); only the
canonical bytes are kept. Every attempt, refused ones included, is audited
(``export.upload_refused``: who, grant, file names as given, sizes, sha256, reason) without its bytes.

Request metadata is unreleased content too: a requester reaches the gateway from outside the
sandbox, so a title, justification or comment read back before approval would be text taken out
without a review. They are capped here (``MAX_TITLE``, ``MAX_JUSTIFICATION``, ``MAX_COMMENT``;
``count_columns`` must name columns of the request's tables) and the requester's views do not show
them until the request is approved (:mod:`sandbox.exports.views`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from sandbox.errors import BadRequest, NotFound, SandboxError
from sandbox.exports import store, views
from sandbox.exports.checks import CheckContext, run_all
from sandbox.exports.checks.file_gates import DEFAULT_LIMITS
from sandbox.exports.context import check_context
from sandbox.exports.deps import ExportDeps, UploadDeps
from sandbox.exports.workflow import (
    MAX_AUDITED_NAME,
    MAX_JUSTIFICATION,
    MAX_TITLE,
    _usable_grant,
    check_requester,
    grant_members,
    next_state,
    transition,
)
from sandbox.fields import text_field
from sandbox.policy.models import Grant
from sandbox.state import exports_repo
from sandbox.state.audit import AuditEvent, AuditLog
from sandbox.state.grants_store import PolicyStore

log = logging.getLogger(__name__)
MAX_COUNT_COLUMNS = 200
MAX_COLUMN_NAME = 64


def _checked_files(ctx: CheckContext, files: list[tuple[str, bytes]]) -> list[dict[str, Any]]:
    """Each upload rendered canonical and checked; only the canonical bytes are kept."""
    names = [n for n, _ in files]
    if len(set(names)) != len(names):
        raise BadRequest("two files have the same name", code="duplicate_file")
    out = []
    for name, data in files:
        try:
            canon, checks = run_all(name, data, ctx)
        except SandboxError:
            raise
        except Exception as exc:  # a parser's surprise is a refused upload (audited), never a 500
            log.exception("canonicalization of an export file failed")
            raise BadRequest(f"{str(name)[:MAX_AUDITED_NAME]}: the file could not be read and rebuilt "
                             f"({type(exc).__name__})", code="file_refused") from None
        out.append({"name": name, "data": canon.data, "sha256": store.sha256(canon.data), "size": len(canon.data),
                    "kind": canon.kind, "checks": checks, "columns": _columns(canon.kind, canon.data),
                    "uploaded": {"name": name, "size": canon.uploaded_size, "sha256": canon.uploaded_sha256}})
    return out


def _columns(kind: str, data: bytes) -> list[str]:
    """The column names of a canonical table (header only), or [] for other kinds."""
    from sandbox.exports.canonical import TABLE_KINDS
    from sandbox.exports.canonical.tables import read_canonical

    return read_canonical(kind, data, 0).columns if kind in TABLE_KINDS else []


def check_count_columns(counts: list[str], checked: list[dict[str, Any]]) -> None:
    """``count_columns`` are short, few, and name columns of the request's tables: not a free-text channel."""
    if len(counts) > MAX_COUNT_COLUMNS:
        raise BadRequest(f"at most {MAX_COUNT_COLUMNS} count columns", code="bad_count_columns")
    if any(len(c) > MAX_COLUMN_NAME for c in counts):
        raise BadRequest(f"a count column name is longer than {MAX_COLUMN_NAME} characters", code="bad_count_columns")
    columns = {c for f in checked for c in f["columns"]}
    unknown = [c for c in counts if c not in columns]
    if unknown:
        raise BadRequest(f"{len(unknown)} count column(s) name no column of the request's tables",
                         code="bad_count_columns")


def _uploads(files: Sequence[tuple[object, bytes]]) -> list[dict[str, Any]]:
    """What the audit log keeps of uploads: name as given (truncated), size and sha256; never bytes."""
    return [{"name": str(name)[:MAX_AUDITED_NAME], "size": len(data), "sha256": store.sha256(data)}
            for name, data in files]


def audit_refused(audit: AuditLog, policies: PolicyStore, user: str, grant_id: object,
                  files: list[tuple[str, bytes]], exc: SandboxError, request_id: str | None = None) -> None:
    """Every refused upload attempt leaves an audit entry (who, grant, files, reason); the bytes are dropped."""
    given = grant_id[:MAX_AUDITED_NAME] if isinstance(grant_id, str) else None
    detail = {"grant": given, "files": _uploads(files), "reason": {"code": exc.code, "message": exc.message[:2000]},
              **({"request": request_id} if request_id else {})}
    known = given if given is not None and grant_members(policies, given) is not None else None
    # the grant column names only grants that exist; the detail keeps the text
    audit.record(AuditEvent(user, "export.upload_refused", known, detail))


def audit_oversize(audit: AuditLog, user: str, path: str, size: int | None, code: str, message: str) -> None:
    """A request refused before its form was read (over the size or part limits): audited by size only."""
    detail: dict[str, Any] = {"grant": None, "files": [], "path": path[:MAX_AUDITED_NAME], "size": size,
              "reason": {"code": code, "message": message[:2000]}}
    audit.record(AuditEvent(user, "export.upload_refused", None, detail))


def parse_count_columns(value: object) -> list[str]:
    items = value if isinstance(value, list) else str(value or "").split(",")
    return [c.strip() for c in items if isinstance(c, str) and c.strip()]


def submit(deps: UploadDeps, user: str, *, grant_id: object, title: object, justification: object,
           files: list[tuple[str, bytes]], count_columns: list[str] | None = None) -> str:
    """Create a request in ``submitted``; returns its id. Gate failures refuse the whole request.

    A refused attempt is audited (``export.upload_refused``) and its bytes are not kept."""
    try:
        return _submit(deps, user, grant_id=grant_id, title=title, justification=justification,
                       files=files, count_columns=count_columns)
    except SandboxError as exc:
        audit_refused(deps.audit, deps.policies, user, grant_id, files, exc)
        raise


def _submit(deps: UploadDeps, user: str, *, grant_id: object, title: object, justification: object,
            files: list[tuple[str, bytes]], count_columns: list[str] | None) -> str:
    title_s = text_field(title, "title", MAX_TITLE)
    justification_s = text_field(justification, "justification", MAX_JUSTIFICATION)
    if not files:
        raise BadRequest("attach at least one file as `files`", code="no_files")
    if len(files) > DEFAULT_LIMITS.max_files:
        raise BadRequest(f"at most {DEFAULT_LIMITS.max_files} files per request", code="too_many_files")
    grant = _usable_grant(deps.policies, deps.today(), grant_id, user)
    counts = count_columns or []
    ctx = check_context(deps.policies, deps.ledger, deps.engine, deps.db, grant, user, counts)
    checked = _checked_files(ctx, files)
    check_count_columns(counts, checked)
    rid = store.new_request_id()
    blobs = store.BlobStore(deps.db)
    written: list[tuple[str, str]] = []
    try:
        _insert_request(deps, user, rid, grant, title_s, justification_s, counts, checked, blobs, written)
    except BaseException:
        blobs.delete(written)  # the transaction did not commit: no bytes of it stay on disk
        raise
    return rid


def _insert_request(deps: ExportDeps, user: str, rid: str, grant: Grant, title_s: str, justification_s: str,
                    counts: list[str], checked: list[dict[str, Any]], blobs: store.BlobStore,
                    written: list[tuple[str, str]]) -> None:
    with deps.db.work() as work:
        conn = work.conn
        # again, inside the transaction: a revoke may have won
        _usable_grant(deps.policies, deps.today(), grant.id, user)
        exports_repo.insert_request(conn, rid, grant.id, user, title_s, justification_s, counts)
        for f in checked:
            exports_repo.insert_file(conn, rid, f["name"], f["sha256"], f["size"], f["kind"], f["checks"], 1)
        transition(deps.audit, conn, None, "submit", user, request_id=rid, grant_id=grant.id,
                   detail={"title": title_s, "files": {f["name"]: f["sha256"] for f in checked},
                           "uploads": [f["uploaded"] for f in checked]})
        for f in checked:  # last: every deciding check has passed; the commit follows
            blobs.put_new(rid, f["data"], written)


def change_files(deps: UploadDeps, request_id: str, user: str, files: list[tuple[str, bytes]],
                 remove: list[str] | None = None) -> str:
    """Add or replace files (same name replaces) and remove files on a returned request.

    ``remove`` names files as the requester sees them: stored names, or the positional names of
    the sealed view (``file-<n>.<kind>``), which are mapped to the stored ones here. The JSON API
    and the review UI both call this one function."""
    try:
        return _change_files(deps, request_id, user, files, remove or [])
    except SandboxError as exc:
        if files:
            grant_id = exports_repo.grant_of(deps.db.conn, request_id)
            audit_refused(deps.audit, deps.policies, user, grant_id, files, exc,
                          request_id=request_id[:MAX_AUDITED_NAME])
        raise


def _change_files(deps: UploadDeps, request_id: str, user: str, files: list[tuple[str, bytes]],
                  remove: list[str]) -> str:
    if not files and not remove:
        raise BadRequest("attach files as `files` or name files to `remove`", code="no_files")
    conn = deps.db.conn
    row = exports_repo.request(conn, request_id)
    check_requester(row, user)
    remove = views.resolve_names(conn, request_id, remove)
    next_state(row.status, "change_files")
    grant = _usable_grant(deps.policies, deps.today(), row.grant_id, user)
    ctx = check_context(deps.policies, deps.ledger, deps.engine, deps.db, grant, user, list(row.count_columns))
    checked = _checked_files(ctx, files)
    blobs = store.BlobStore(deps.db)
    written: list[tuple[str, str]] = []
    try:
        new = _apply_change(deps, request_id, user, remove, checked, blobs, written)
    except BaseException:
        blobs.delete(written)  # the transaction did not commit: no bytes of it stay on disk
        raise
    return new


def _apply_change(deps: ExportDeps, request_id: str, user: str, remove: list[str], checked: list[dict[str, Any]],
                  blobs: store.BlobStore, written: list[tuple[str, str]]) -> str:
    with deps.db.work() as work:
        conn = work.conn
        row = exports_repo.request(conn, request_id)
        for name in remove:
            if not isinstance(name, str) or not exports_repo.remove_file(conn, request_id, name):
                raise NotFound(f"no file {name!r} on this request", code="unknown_file")
        for f in checked:
            exports_repo.insert_file(conn, request_id, f["name"], f["sha256"], f["size"], f["kind"], f["checks"],
                                     row.round + 1)
        if not exports_repo.current_files(conn, request_id):
            raise BadRequest("a request needs at least one file", code="no_files")
        new = transition(deps.audit, conn, row, "change_files", user, detail={
            "added": {f["name"]: f["sha256"] for f in checked}, "removed": remove,
            "uploads": [f["uploaded"] for f in checked]})
        for f in checked:  # last: every deciding check has passed; the commit follows
            blobs.put_new(request_id, f["data"], written)
    return new
