"""The public disclosure register: no login, read-only, nothing but what may be published."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, redirect, render_template, request, url_for

from gateway.context import services
from sandbox.disclosure import USE_LABELS, parse_year, register, register_csv
from sandbox.errors import BadRequest

bp = Blueprint("public", __name__, url_prefix="/public")


def _fresh(resp: Response) -> Response:
    """A status change must show on the very next request: no stale copies in caches."""
    resp.headers["Cache-Control"] = "no-cache"
    return resp


@bp.get("/")
def home():  # noqa: ANN201
    return redirect(url_for("public.grants_html"))


@bp.get("/grants")
def grants_html():  # noqa: ANN201
    s = services()
    today = s.today()
    data = register(s.policies, s.audit, s.db, today)
    html = render_template(
        "public/grants.html", register=data, use_labels=USE_LABELS, year=today.year
    )
    return _fresh(Response(html, mimetype="text/html"))


@bp.get("/grants.json")
def grants_json():  # noqa: ANN201
    s = services()
    return _fresh(jsonify(register(s.policies, s.audit, s.db, s.today())))


@bp.get("/grants.csv")
def grants_csv():  # noqa: ANN201
    s = services()
    today = s.today()
    year = parse_year(request.args.get("year"), today.year)
    resp = Response(register_csv(s.policies, s.audit, s.db, today, year), mimetype="text/csv")
    resp.headers["Content-Disposition"] = f'attachment; filename="grants-{year}.csv"'
    return _fresh(resp)


def _checkpoint_page() -> dict:
    """The newest checkpoints, or (``?before=SEQ``) the page before that entry number."""
    raw = request.args.get("before")
    if raw is None:
        return services().checkpoints.page()
    try:
        before = int(raw)
    except ValueError:
        raise BadRequest("before: an entry number", code="bad_parameter") from None
    return services().checkpoints.page(before=before)


@bp.get("/checkpoints")
def checkpoints_html():  # noqa: ANN201
    doc = _checkpoint_page()
    return _fresh(Response(render_template("public/checkpoints.html", doc=doc), mimetype="text/html"))


@bp.get("/checkpoints.json")
def checkpoints_json():  # noqa: ANN201
    return _fresh(jsonify(_checkpoint_page()))
