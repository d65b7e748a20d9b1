"""The audit authorities' read-only view: audit log (search, verify), grants and their history, usage, directory.

Every page has a JSON twin (``?format=json``). There is no form here that changes anything: the only
POSTs are signing in and out, which set or clear the caller's own cookie.
"""

from __future__ import annotations

import datetime as dt

from flask import Blueprint, g, jsonify, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from gateway.context import identity, services
from sandbox import auditing
from sandbox.errors import PolicyError, Unauthorized

bp = Blueprint("auditor", __name__, url_prefix="/auditor")
COOKIE = "sandbox_token"  # the same HttpOnly cookie as the review UI's sign-in


@bp.before_request
def _html_errors() -> None:
    g.wants_html = request.args.get("format") != "json" and request.endpoint not in ("auditor.login_post",)


@bp.errorhandler(Unauthorized)
def _login_first(exc: Unauthorized):  # noqa: ANN202
    if not g.get("wants_html") or request.method != "GET":
        return jsonify(exc.to_dict()), exc.status
    return redirect(url_for("auditor.login"))


def _auditor() -> str:
    user = identity().user
    auditing.check_auditor(services(), user)
    return user


def _page(template: str, data: dict, **ctx: object) -> ResponseReturnValue:
    if request.args.get("format") == "json":
        return jsonify(data)
    return render_template(template, user=g.identity.user, **data, **ctx)


@bp.get("/login")
def login():  # noqa: ANN201
    return render_template("auditor/login.html", error=None)


@bp.post("/login")
def login_post():  # noqa: ANN201
    token = request.form.get("token", "").strip()
    user = services().tokens.user_for(token) if token else None
    if user is None:
        return render_template("auditor/login.html", error="unknown or revoked token"), 401
    resp = redirect(url_for("auditor.home"), code=303)
    resp.set_cookie(COOKIE, token, httponly=True, samesite="Strict", secure=request.is_secure, path="/",
                    max_age=12 * 3600)
    return resp


@bp.post("/logout")
def logout():  # noqa: ANN201
    resp = redirect(url_for("auditor.login"), code=303)
    resp.delete_cookie(COOKIE, path="/")
    return resp


@bp.get("/")
def home():  # noqa: ANN201
    _auditor()
    s = services()
    data = {"verify": auditing.verify(s), "grants": auditing.grants_overview(s),
            "recent": auditing.search(s, auditing.AuditQuery(limit=20))["entries"]}
    return _page("auditor/home.html", data)


@bp.get("/audit")
def audit():  # noqa: ANN201
    _auditor()
    q = auditing.parse_query(request.args.to_dict())
    data = auditing.search(services(), q)
    return _page("auditor/audit.html", data, args=request.args.to_dict())


@bp.get("/audit/verify")
def verify():  # noqa: ANN201
    _auditor()
    return _page("auditor/verify.html", auditing.verify(services()))


@bp.get("/grants")
def grants():  # noqa: ANN201
    _auditor()
    return _page("auditor/grants.html", {"grants": auditing.grants_overview(services())})


@bp.get("/grants/<grant_id>")
def grant(grant_id: str):  # noqa: ANN201
    _auditor()
    return _page("auditor/grant.html", auditing.grant_history(services(), grant_id))


@bp.get("/usage")
def usage():  # noqa: ANN201
    _auditor()
    from sandbox.usage import usage_report
    from sandbox.wiring import usage_sources

    s = services()
    period = request.args.get("period") or s.today().strftime("%Y-%m")
    try:
        report = usage_report(usage_sources(s), period)
        problem = None
    except PolicyError as exc:  # no price schedule: usage is still shown by the JSON of the charges
        report, problem = [], exc.message
    return _page("auditor/usage.html", {"period": period, "statements": report, "problem": problem})


@bp.get("/directory")
def directory_view():  # noqa: ANN201
    _auditor()
    from sandbox import directory

    return _page("auditor/directory.html", directory.directory(services()))


@bp.app_template_filter("short_ts")
def _short_ts(value: str) -> str:
    try:
        return dt.datetime.fromisoformat(value).strftime("%Y-%m-%d %H:%M:%S")
    except (TypeError, ValueError):
        return str(value)
