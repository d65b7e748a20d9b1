"""Cases: public requests to open data, feedback and complaints (no login, CSRF-protected forms, rate-limited),
operators' data-quality reports (their token), and the authority's handling (admins, JSON API)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from gateway import admin_pages, public_csrf
from gateway.context import identity, json_body, services
from sandbox import cases
from sandbox.errors import BadRequest

bp = Blueprint("cases", __name__)
FIELDS = ("kind", "dataset", "subject", "message", "contact")


@bp.after_request
def _cookie(resp: Response) -> Response:
    return public_csrf.set_cookie(resp)


def _wants_json() -> bool:
    return request.args.get("format") == "json"


def _body() -> dict:
    """A JSON object (no cookie is involved, so no CSRF) or a form with a valid CSRF token."""
    if request.is_json:
        body = json_body()
        if not isinstance(body, dict):
            raise BadRequest("send a JSON object", code="bad_json")
        return {k: body.get(k) for k in FIELDS if body.get(k) is not None}
    public_csrf.check_form_token()
    return {k: request.form.get(k) for k in FIELDS if request.form.get(k)}


def _filed(case_id: str) -> ResponseReturnValue:
    if request.is_json:
        return jsonify(cases.public_case(services(), case_id)), 201
    return redirect(url_for("cases.case_page", case_id=case_id, filed=1), code=303)


# -- public ------------------------------------------------------------------------------------
@bp.get("/public/requests")
def requests_page():  # noqa: ANN201
    s = services()
    items = cases.open_requests(s)
    if _wants_json():
        return jsonify({"requests": items})
    closed = [ds for ds in s.policies.datasets().values() if ds.classification != "L1"]
    return render_template("public/requests.html", requests=items, datasets=closed,
                           csrf_token=public_csrf.form_token(), limit=s.settings.oversight.max_case_text)


@bp.get("/public/requests.json")
def requests_json():  # noqa: ANN201
    return jsonify({"requests": cases.open_requests(services())})


@bp.post("/public/requests")
def file_request():  # noqa: ANN201
    body = _body()
    return _filed(cases.file_public(services(), "open_request", body, request.remote_addr or ""))


@bp.get("/public/feedback")
def feedback_page():  # noqa: ANN201
    s = services()
    stats = cases.statistics_by_kind(s)
    if _wants_json():
        return jsonify({"statistics": stats})
    return render_template("public/feedback.html", stats=stats, datasets=list(s.policies.datasets().values()),
                           csrf_token=public_csrf.form_token(), limit=s.settings.oversight.max_case_text)


@bp.post("/public/feedback")
def file_feedback():  # noqa: ANN201
    body = _body()
    kind = body.pop("kind", None)
    if kind not in ("feedback", "complaint"):
        raise BadRequest("`kind` must be feedback or complaint", code="bad_kind")
    return _filed(cases.file_public(services(), kind, body, request.remote_addr or ""))


@bp.get("/public/cases.json")
def statistics_json():  # noqa: ANN201
    return jsonify({"statistics": cases.statistics_by_kind(services())})


@bp.get("/public/cases/<case_id>")
def case_page(case_id: str):  # noqa: ANN201
    item = cases.public_case(services(), case_id)
    if _wants_json():
        return jsonify(item)
    return render_template("public/case.html", case=item, filed=request.args.get("filed"))


# -- operators ---------------------------------------------------------------------------------
@bp.post("/v1/cases/data-quality")
def data_quality():  # noqa: ANN201
    """``{"grant", "dataset", "subject", "message"}`` from a member of a usable grant covering the dataset."""
    user = identity().user
    body = json_body()
    if not isinstance(body, dict):
        raise BadRequest("send a JSON object", code="bad_json")
    case_id = cases.file_data_quality(services(), user, body)
    return jsonify(cases.public_case(services(), case_id)), 201


# -- the authority (pages with JSON twins) ------------------------------------------------------
admin_pages.install(bp)


@bp.get("/admin/cases")
def admin_list():  # noqa: ANN201
    status = request.args.get("status")
    statuses = (status,) if status in cases.STATUSES else None
    items = cases.authority_list(services(), identity().user, statuses)
    if admin_pages.wants_json():
        return jsonify({"cases": items})
    return admin_pages.page("admin/cases.html", cases=items)


@bp.get("/admin/cases/<case_id>")
def admin_case(case_id: str):  # noqa: ANN201
    item = cases.authority_view(services(), case_id, identity().user)
    if admin_pages.wants_json():
        return jsonify(item)
    return admin_pages.page("admin/case.html", case=item)


@bp.post("/admin/cases/<case_id>")
def admin_act(case_id: str):  # noqa: ANN201
    """``{"action": "assign|respond|reopen|close", "owner", "response", "note"}``, or the case page's form."""
    user = identity().user
    body = admin_pages.form_or_json()
    cases.act(services(), case_id, user, body.get("action"), owner=body.get("owner") or None,
              response=body.get("response"), note=body.get("note"))
    if not request.is_json:
        return redirect(url_for("cases.admin_case", case_id=case_id), code=303)
    return jsonify(cases.authority_view(services(), case_id, user))
