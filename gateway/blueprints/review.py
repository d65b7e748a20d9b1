"""The reviewer UI: server-rendered pages under /review/, each with a JSON twin (``?format=json``).

Works without JavaScript: forms POST with a CSRF token and redirect back (303). In embedded
mode a browser logs in once by pasting its token into /review/login, which sets an HttpOnly,
SameSite=Strict ``sandbox_token`` cookie that the embedded authenticator reads.
"""

from __future__ import annotations

from urllib.parse import quote

from flask import Blueprint, Response, g, jsonify, redirect, render_template, request, url_for

from gateway import csrf
from gateway.blueprints.exports import file_response, uploaded_files
from gateway.context import authenticator, export_deps, identity, services
from sandbox.errors import BadRequest, Unauthorized
from sandbox.exports import store, uploads, views, workflow
from sandbox.exports.canonical import TABLE_KINDS
from sandbox.exports.canonical.tables import read_canonical
from sandbox.exports.override import override as override_checks

bp = Blueprint("review", __name__, url_prefix="/review")
COOKIE = "sandbox_token"
PREVIEW_ROWS = 200
PREVIEW_TEXT = 20_000


@bp.before_request
def _html_errors() -> None:
    g.wants_html = request.args.get("format") != "json"


@bp.errorhandler(Unauthorized)
def _login_first(exc: Unauthorized):  # noqa: ANN202
    if not g.get("wants_html") or request.method != "GET":
        return jsonify(exc.to_dict()), exc.status
    hub_login = authenticator().login_url(request)
    if hub_login:
        return redirect(hub_login)
    return redirect(url_for("review.login", next=request.full_path.rstrip("?")))


# -- login (embedded mode) ----------------------------------------------------------------------
def _safe_next(target: str | None) -> str:
    if target and target.startswith("/review") and not target.startswith("//"):
        return target
    return url_for("review.home")


@bp.get("/login")
def login():  # noqa: ANN201
    return render_template("review/login.html", next=_safe_next(request.args.get("next")), error=None)


@bp.post("/login")
def login_post():  # noqa: ANN201
    token = request.form.get("token", "").strip()
    user = services().tokens.user_for(token) if token else None
    nxt = _safe_next(request.form.get("next"))
    if user is None:
        return render_template("review/login.html", next=nxt, error="unknown or revoked token"), 401
    resp = redirect(nxt, code=303)
    resp.set_cookie(COOKIE, token, httponly=True, samesite="Strict", secure=request.is_secure,
                    path="/", max_age=12 * 3600)
    return resp


@bp.post("/logout")
def logout():  # noqa: ANN201
    resp = redirect(url_for("review.login"), code=303)
    resp.delete_cookie(COOKIE, path="/")
    return resp


def page(template: str, **ctx: object) -> str:
    user = identity().user
    roles = services().policies.roles()
    return render_template(template, user=user, is_reviewer=user in roles.reviewers,
                           csrf_token=csrf.token(), **ctx)


def wants_json() -> bool:
    return request.args.get("format") == "json"


# -- pages ------------------------------------------------------------------------------------
@bp.get("/")
def home():  # noqa: ANN201
    user = identity().user
    s = services()
    roles = s.policies.roles()
    if user not in roles.reviewers and user not in roles.admins:
        return redirect(url_for("review.mine", **({"format": "json"} if wants_json() else {})))
    data = {"queue": views.queue(s.db, s.policies, user), "recent": views.recent(s.db, s.policies, user)}
    if wants_json():
        return jsonify(data)
    return page("review/queue.html", **data)


@bp.get("/mine")
def mine():  # noqa: ANN201
    user = identity().user
    s = services()
    data = {"mine": [{**r, "detail": views.request_view(s.db, s.policies, r["id"], user)}
                     for r in views.mine(s.db, s.policies, user)]}
    if wants_json():
        return jsonify({"mine": [r["detail"] for r in data["mine"]]})
    return page("review/mine.html", **data)


@bp.get("/exports/<request_id>")
def request_page(request_id: str):  # noqa: ANN201
    user = identity().user
    s = services()
    req = views.request_view(s.db, s.policies, request_id, user)
    if wants_json():
        return jsonify(req)
    # previews are for reviewers and admins: a requester reading them from outside the sandbox
    # would take unreleased content out without any approval (they download once approved)
    privileged = views.sees_all(s.policies, views.load(s.db, s.policies, request_id, user), user)
    previews = {f["name"]: _preview(request_id, f) if privileged else {"kind": f["kind"], "hidden": True,
                                                                          "marks": {}, "column_marks": {}}
                for f in req["files"]}
    return page("review/request.html", req=req, previews=previews, done=request.args.get("done"))


def _preview(request_id: str, f: dict) -> dict:
    data = store.BlobStore(services().db).get(request_id, f["sha256"]) or b""
    out: dict = {"kind": f["kind"], "marks": {}, "column_marks": {}}
    for check in f["checks"]:
        for cell in check.get("cells", []):
            if "column" not in cell:
                continue
            note = f'{check["rule"]}: {cell.get("reason", "")}'
            if "row" in cell:
                out["marks"].setdefault(f'{cell["row"]}:{cell["column"]}', []).append(
                    (check["outcome"], note))
            else:
                out["column_marks"].setdefault(cell["column"], []).append((check["outcome"], note))
    if f["kind"] in TABLE_KINDS:
        try:
            table = read_canonical(f["kind"], data, PREVIEW_ROWS)
        except (BadRequest, ValueError) as exc:
            out["error"] = getattr(exc, "message", "the stored file cannot be read")
            return out
        out["table"] = {"columns": table.columns, "rows": table.rows[:PREVIEW_ROWS],
                        "truncated": len(table.rows) > PREVIEW_ROWS}
    elif f["kind"] == "text":
        text = data.decode("utf-8", errors="replace")
        out["text"] = text[:PREVIEW_TEXT]
        out["truncated"] = len(text) > PREVIEW_TEXT
    return out


@bp.get("/exports/<request_id>/files/<name>/preview")
def preview_file(request_id: str, name: str):  # noqa: ANN201
    """The canonical bytes (what would leave) for reviewers and admins, inside the review UI.

    Not for the requester: they get files through the download, once approved (and audited)."""
    s = services()
    f, data = views.preview(s.db, s.policies, request_id, name, identity().user)
    return file_response(f, data, attachment=f.kind not in ("png", "jpeg"))


# -- forms ------------------------------------------------------------------------------------
def _back(request_id: str, done: str) -> Response:
    return redirect(url_for("review.request_page", request_id=request_id, done=done), code=303)


@bp.post("/exports/<request_id>/decision")
def decide(request_id: str):  # noqa: ANN201
    user = identity().user
    csrf.check()
    new = workflow.review(export_deps(), request_id, user, request.form.get("decision"),
                          request.form.get("comment", ""))
    return _back(request_id, new)


@bp.post("/exports/<request_id>/override")
def override(request_id: str):  # noqa: ANN201
    user = identity().user
    csrf.check()
    new = override_checks(export_deps(), request_id, user, request.form.get("reason", ""))
    return _back(request_id, new)


@bp.post("/exports/<request_id>/withdraw")
def withdraw(request_id: str):  # noqa: ANN201
    user = identity().user
    csrf.check()
    new = workflow.withdraw(export_deps(), request_id, user, request.form.get("reason", ""))
    return _back(request_id, new)


@bp.post("/exports/<request_id>/files")
def change_files(request_id: str):  # noqa: ANN201
    user = identity().user
    csrf.check()
    remove = [n for n in request.form.getlist("remove") if n]
    new = uploads.change_files(export_deps(), request_id, user, uploaded_files(), remove)
    return _back(request_id, new)


@bp.post("/exports/<request_id>/resubmit")
def resubmit(request_id: str):  # noqa: ANN201
    user = identity().user
    csrf.check()
    new = workflow.resubmit(export_deps(), request_id, user, request.form.get("comment", ""))
    return _back(request_id, new)


@bp.app_template_filter("urlpart")
def _urlpart(value: str) -> str:
    return quote(value, safe="")
