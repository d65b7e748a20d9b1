"""Early-warning alerts for the authority: ``/admin/alerts`` (HTML; JSON twin ``?format=json``), acknowledge.

Also hosts the after-request hook that runs the monitoring scan whenever a request wrote to the
audit log, so that an automatic suspension is in force for the very next request.
"""

from __future__ import annotations

from flask import Blueprint, Response, g, jsonify, redirect, request, url_for

from gateway import admin_pages, csrf
from gateway.context import require_role, services
from sandbox import monitoring
from sandbox.errors import BadRequest, Unauthorized
from sandbox.state import alerts_store

bp = Blueprint("admin_alerts", __name__, url_prefix="/admin/alerts")


@bp.after_app_request
def _scan(resp: Response) -> Response:
    monitoring.scan_quietly(services())
    return resp


@bp.before_request
def _html_errors() -> None:
    g.wants_html = request.args.get("format") != "json" and request.method == "GET"


@bp.errorhandler(Unauthorized)
def _login_first(exc: Unauthorized):  # noqa: ANN202
    if not g.get("wants_html"):
        return jsonify(exc.to_dict()), exc.status
    return redirect(url_for("review.login"))


@bp.get("/")
def alerts_page():  # noqa: ANN201
    require_role("admin")
    only_open = request.args.get("open") == "1"
    items = alerts_store.listing(services().db.conn, unacknowledged=only_open)
    if request.args.get("format") == "json":
        return jsonify({"alerts": items})
    return admin_pages.page("admin/alerts.html", alerts=items, only_open=only_open)


@bp.post("/<int(max=9223372036854775807):alert_id>/ack")
def acknowledge(alert_id: int):  # noqa: ANN201
    """Acknowledge an alert: a form (CSRF token) from the page, or JSON from a script."""
    user = require_role("admin").user
    if not request.is_json:
        csrf.check()
    elif request.get_json(silent=True) is None:
        raise BadRequest("send a JSON object (it may be empty)", code="bad_json")
    alert = monitoring.acknowledge(services(), alert_id, user)
    if request.is_json:
        return jsonify(alert)
    return redirect(url_for("admin_alerts.alerts_page"), code=303)
