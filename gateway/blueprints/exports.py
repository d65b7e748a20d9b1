"""The exports API (the airlock), per DESIGN.md: submit, list, read, review, withdraw, change,
resubmit, and download of released files. Errors are SandboxErrors translated by the app."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from gateway.context import export_deps, identity, json_body, services
from sandbox.errors import BadRequest
from sandbox.exports import override as overrides
from sandbox.exports import uploads, views, workflow
from sandbox.state.exports_repo import ExportFile

bp = Blueprint("exports", __name__)

MIMETYPES = {"csv": "text/csv", "tsv": "text/tab-separated-values", "parquet": "application/vnd.apache.parquet",
             "png": "image/png", "jpeg": "image/jpeg", "text": "text/plain"}


def uploaded_files() -> list[tuple[str, bytes]]:
    """The multipart ``files`` parts as (name, bytes); names (even empty ones) are checked by the
    file gates, so that every refused attempt is audited by the workflow."""
    return [((part.filename or "").strip(), part.read()) for part in request.files.getlist("files")]


def _form_or_json() -> dict:
    if request.is_json:
        body = json_body()
        if not isinstance(body, dict):
            raise BadRequest("send a JSON object", code="bad_json")
        return body
    return request.form.to_dict()


def export_response(request_id: str, user: str, status: int = 200, uploaded: bool = False) -> tuple[Response, int]:
    s = services()
    return jsonify(views.request_view(s.db, s.policies, request_id, user, uploaded)), status


@bp.post("/v1/exports")
def submit():  # noqa: ANN201
    user = identity().user
    form = request.form
    counts = form.getlist("count_columns")
    rid = uploads.submit(
        export_deps(), user, grant_id=form.get("grant"), title=form.get("title"),
        justification=form.get("justification"), files=uploaded_files(),
        count_columns=uploads.parse_count_columns(counts if len(counts) > 1 else (counts or [""])[0]),
    )
    return export_response(rid, user, 201, uploaded=True)


@bp.get("/v1/exports")
def listing():  # noqa: ANN201
    user = identity().user
    s = services()
    return jsonify({"mine": views.mine(s.db, s.policies, user), "queue": views.queue(s.db, s.policies, user),
                    "recent": views.recent(s.db, s.policies, user)})


@bp.get("/v1/exports/<request_id>")
def detail(request_id: str):  # noqa: ANN201
    return export_response(request_id, identity().user)


@bp.post("/v1/exports/<request_id>/reviews")
def review(request_id: str):  # noqa: ANN201
    user = identity().user
    body = json_body()
    if not isinstance(body, dict):
        raise BadRequest('send {"decision": "approve|reject|return", "comment": "..."}', code="bad_json")
    workflow.review(export_deps(), request_id, user, body.get("decision"), body.get("comment", ""))
    return export_response(request_id, user)


@bp.post("/v1/exports/<request_id>/override")
def override(request_id: str):  # noqa: ANN201
    """An admin outside the grant lifts the block of failed checks, with a written ``reason``."""
    user = identity().user
    body = _form_or_json()
    overrides.override(export_deps(), request_id, user, body.get("reason", ""))
    return export_response(request_id, user)


@bp.post("/v1/exports/<request_id>/withdraw")
def withdraw(request_id: str):  # noqa: ANN201
    user = identity().user
    body = _form_or_json() if request.content_length else {}
    workflow.withdraw(export_deps(), request_id, user, str(body.get("reason", "")))
    return export_response(request_id, user)


@bp.post("/v1/exports/<request_id>/files")
def change_files(request_id: str):  # noqa: ANN201
    user = identity().user
    remove = [n for n in request.form.getlist("remove") if n]
    uploads.change_files(export_deps(), request_id, user, uploaded_files(), remove)
    return export_response(request_id, user, uploaded=True)


@bp.post("/v1/exports/<request_id>/resubmit")
def resubmit(request_id: str):  # noqa: ANN201
    user = identity().user
    body = _form_or_json() if request.content_length else {}
    workflow.resubmit(export_deps(), request_id, user, str(body.get("comment", "")))
    return export_response(request_id, user)


@bp.get("/v1/exports/<request_id>/files/<name>")
def download(request_id: str, name: str):  # noqa: ANN201
    user = identity().user
    f, data = workflow.download(export_deps(), request_id, name, user)
    return file_response(f, data, attachment=True)


def file_response(f: ExportFile, data: bytes, attachment: bool) -> Response:
    resp = Response(data, mimetype=MIMETYPES.get(f.kind, "application/octet-stream"))
    disposition = "attachment" if attachment else "inline"
    resp.headers["Content-Disposition"] = f'{disposition}; filename="{f.name}"'
    resp.headers["X-Content-SHA256"] = f.sha256
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["Content-Security-Policy"] = "default-src 'none'; img-src 'self'; sandbox"
    return resp
