"""Disclosure by operators: declarations of products and service capabilities (members of a grant),
their review (admins), and each grant's public record (``/public/grants/<id>``, no login)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, redirect, render_template, request, url_for

from gateway import admin_pages
from gateway.context import identity, json_body, services
from sandbox import offerings
from sandbox.errors import BadRequest

bp = Blueprint("offerings", __name__)


def _object() -> dict:
    body = json_body()
    if not isinstance(body, dict):
        raise BadRequest("send a JSON object", code="bad_json")
    return body


@bp.post("/v1/offerings")
def declare():  # noqa: ANN201
    """``{"grant", "kind": "product|service", "name", "description", "price"?, "free_to_public"?}``."""
    user = identity().user
    offering_id = offerings.declare(services(), user, _object())
    return jsonify({"id": offering_id, "status": "submitted"}), 201


@bp.get("/v1/offerings")
def listing():  # noqa: ANN201
    user = identity().user
    grant_id = request.args.get("grant", "")
    return jsonify({"offerings": offerings.for_grant(services(), grant_id, user)})


@bp.post("/v1/offerings/<int(max=9223372036854775807):offering_id>/withdraw")
def withdraw(offering_id: int):  # noqa: ANN201
    user = identity().user
    return jsonify({"id": offering_id, "status": offerings.act(services(), offering_id, user, "withdraw")})


admin_pages.install(bp)


@bp.get("/admin/offerings")
def pending():  # noqa: ANN201
    items = offerings.pending_review(services(), identity().user)
    if admin_pages.wants_json():
        return jsonify({"offerings": items})
    return admin_pages.page("admin/offerings.html", offerings=items)


@bp.post("/admin/offerings/<int(max=9223372036854775807):offering_id>")
def review(offering_id: int):  # noqa: ANN201
    """``{"decision": "approve|reject", "comment"}`` (a comment is required to reject), or the page's form."""
    user = identity().user
    body = admin_pages.form_or_json()
    status = offerings.act(services(), offering_id, user, body.get("decision"), body.get("comment"))
    if not request.is_json:
        return redirect(url_for("offerings.pending"), code=303)
    return jsonify({"id": offering_id, "status": status})


@bp.get("/public/grants/<grant_id>")
def grant_page(grant_id: str):  # noqa: ANN201
    record = offerings.grant_record(services(), grant_id)
    if request.args.get("format") == "json":
        return jsonify(record)
    resp = Response(render_template("public/grant.html", g=record), mimetype="text/html")
    resp.headers["Cache-Control"] = "no-cache"
    return resp
