"""Internal calls from the hub (spawn check), authenticated by a shared secret."""

from __future__ import annotations

import hmac

from flask import Blueprint, jsonify, request

from gateway.auth import bearer_token
from gateway.context import json_body, services
from sandbox.errors import BadRequest, Forbidden, Unauthorized
from sandbox.policy.rules import can_use_grant

bp = Blueprint("internal", __name__)


def _check_internal_token() -> None:
    expected = services().settings.internal_token
    if not expected:
        raise Forbidden("internal calls are disabled (no internal token configured)", code="internal_disabled")
    token = bearer_token(request) or ""
    if not hmac.compare_digest(token.encode(), expected.encode()):
        raise Unauthorized("bad internal token")


@bp.get("/v1/internal/spawn-check/<user>")
def spawn_check(user: str):  # noqa: ANN201
    _check_internal_token()
    s = services()
    today = s.today()
    if user in s.policies.roles().auditors:  # read-only: no notebook, whatever a grant says
        return jsonify({"user": user, "grants": []})
    grants = [
        {
            "id": g.id,
            "resources": g.resources.model_dump(),
            "valid_until": g.valid_until.isoformat(),
        }
        for g in s.policies.grants_for(user)
        if can_use_grant(g, user, today)
    ]
    return jsonify({"user": user, "grants": grants})


@bp.post("/v1/internal/server-events")
def server_event():  # noqa: ANN201
    """The hub reports a notebook server start or stop: {"user", "grant", "event": "started|stopped"}."""
    _check_internal_token()
    body = json_body()
    if not isinstance(body, dict) or body.get("event") not in ("started", "stopped") or not isinstance(
        body.get("user"), str
    ):
        raise BadRequest('send {"user": ..., "grant": ..., "event": "started" | "stopped"}', code="bad_event")
    s = services()
    if body["event"] == "started":
        if not isinstance(body.get("grant"), str):
            raise BadRequest("a start needs the grant id", code="bad_event")
        s.sessions.started(body["user"], body["grant"])
    else:
        s.sessions.stopped(body["user"])
    return jsonify({"ok": True})
