"""Helpers that views use to reach the wired services and the caller's identity."""

from __future__ import annotations

from flask import current_app, g, request

from gateway.auth import Authenticator, Identity
from sandbox.errors import BadRequest, Forbidden, Unauthorized
from sandbox.exports.deps import UploadDeps
from sandbox.services import Services


def services() -> Services:
    return current_app.extensions["sandbox"]


def export_deps() -> UploadDeps:
    """The stores the airlock's functions take (sandbox.exports never sees the whole Services)."""
    from sandbox.wiring import export_deps as of_services

    return of_services(services())


def authenticator() -> Authenticator:
    return current_app.extensions["sandbox.auth"]


def identity() -> Identity:
    """The caller, authenticated once per request (raises Unauthorized)."""
    if "identity" not in g:
        try:
            g.identity = authenticator().identify(request)
        except Unauthorized:
            _note_bad_credential()
            raise
        _refuse_auditor_on_data_routes(g.identity.user)
    return g.identity


# refusals of these routes are audited under the action the monitoring rules read
_REFUSAL_ACTIONS = {"/v1/query": "query.refused", "/v1/plan": "query.plan_refused"}


def _refuse_auditor_on_data_routes(user: str) -> None:
    """Auditors never use the operators' API (``/v1/``: data, plans, budgets, exports, declarations,
    data-quality reports), even when a grant lists them by mistake."""
    if request.path.startswith("/v1/") and not request.path.startswith("/v1/internal/"):
        from sandbox.auditing import check_no_data_access

        check_no_data_access(services(), user, _REFUSAL_ACTIONS.get(request.path, "access.refused"))


def _note_bad_credential() -> None:
    """A credential was presented and refused: audited (hash prefix only) for the early-warning rules."""
    from gateway.auth import bearer_token
    from sandbox.monitoring import record_bad_token

    token = bearer_token(request) or request.cookies.get("sandbox_token")
    if token:
        record_bad_token(services(), token, request.path, request.remote_addr or "")


def require_role(role: str) -> Identity:
    ident = identity()
    roles = services().policies.roles()
    members = {"reviewer": roles.reviewers, "admin": roles.admins, "auditor": roles.auditors}[role]
    if ident.user not in members:
        raise Forbidden(f"{ident.user} is not a {role}", code=f"not_{role}")
    return ident


def json_body() -> object:
    if not request.is_json:
        raise BadRequest("send Content-Type: application/json", code="bad_content_type")
    try:
        body = request.get_json(silent=True)
    except RecursionError:
        body = None
    if body is None:
        raise BadRequest("the body is not valid JSON", code="bad_json")
    return body
