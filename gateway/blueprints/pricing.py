"""The published price schedule (``/public/prices``, JSON twin ``/public/prices.json``), no login."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, render_template

from sandbox import pricing
from sandbox.errors import NotFound

bp = Blueprint("pricing", __name__, url_prefix="/public")


def _schedule() -> dict:
    data = pricing.published()
    if data is None:
        raise NotFound("no price schedule is published", code="no_price_schedule")
    return data


@bp.get("/prices")
def prices_html():  # noqa: ANN201
    resp = Response(render_template("public/prices.html", p=_schedule()), mimetype="text/html")
    resp.headers["Cache-Control"] = "no-cache"
    return resp


@bp.get("/prices.json")
def prices_json():  # noqa: ANN201
    return jsonify(_schedule())
