"""Internal calls from the hub (spawn check), authenticated by a shared secret."""

from __future__ import annotations

import hmac

from flask import Blueprint, jsonify, request

from gateway.auth import bearer_token
from gateway.context import services
from sandbox.errors import Forbidden, Unauthorized
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
