"""The gateway's app factory: one blueprint per resource, errors translated at the edge."""

from __future__ import annotations

import logging

from flask import Flask, g, jsonify, request
from werkzeug.exceptions import HTTPException

from gateway import csrf
from gateway.auth import Authenticator, EmbeddedTokenAuthenticator
from sandbox.errors import SandboxError
from sandbox.services import Services, Settings

log = logging.getLogger("sandbox.gateway")
# sqlglot warns with the operator's SQL text when it falls back to a generic command node;
# refusals are recorded in the audit log instead
logging.getLogger("sqlglot").setLevel(logging.ERROR)


def create_app(
    settings: Settings | None = None,
    *,
    services: Services | None = None,
    authenticator: Authenticator | None = None,
) -> Flask:
    if services is None:
        if settings is None:
            raise ValueError("create_app needs settings or services")
        services = Services(settings)
    services.db.refuse_foreign_schema()  # planted triggers or views would run inside every unit of work
    services.audit.check_mark()  # a log behind the mark in the keys directory was cut off or rolled back
    broken = services.tokens.follower.catch_up()  # every entry's link, hash and MAC, and the revocations
    if broken:
        raise SandboxError(f"refusing to start: the audit log cannot be trusted ({broken}); see sandbox audit verify")
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = services.settings.max_upload_bytes
    app.config["JSON_SORT_KEYS"] = False
    app.extensions["sandbox"] = services
    app.extensions["sandbox.auth"] = authenticator or EmbeddedTokenAuthenticator(services.tokens)
    csrf.init_app(app, services)

    from gateway import blueprints

    for bp in blueprints.all_blueprints():
        app.register_blueprint(bp)

    @app.errorhandler(SandboxError)
    def _sandbox_error(exc: SandboxError):  # noqa: ANN202
        body, status = _error_response(exc.status, exc.code, exc.message, exc.detail)
        retry_after = getattr(exc, "retry_after", None)  # e.g. 503 data_building: the new data is being built
        headers = {"Retry-After": str(retry_after)} if retry_after else {}
        return body, status, headers

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):  # noqa: ANN202
        code = (exc.name or "error").lower().replace(" ", "_")
        if exc.code == 413:
            _audit_oversize(services, code, exc.description or exc.name)
        return _error_response(exc.code or 500, code, exc.description or exc.name)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):  # noqa: ANN202
        log.exception("unexpected error on %s %s", request.method, request.path)
        return _error_response(500, "internal_error", "the gateway hit an unexpected error; it was logged")

    @app.after_request
    def _security_headers(resp):  # noqa: ANN001, ANN202
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        resp.headers.setdefault("X-Frame-Options", "DENY")
        resp.headers.setdefault("Referrer-Policy", "same-origin")
        resp.headers.setdefault(
            "Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'"
        )
        return resp

    return app


def _audit_oversize(services: Services, code: str, message: str) -> None:
    """An upload over the request limits (size, parts) is a refused upload attempt too: audited
    with who, where and how big, never its bytes. Callers who are not authenticated are not."""
    if not request.path.startswith(("/v1/exports", "/review/exports")):
        return
    from gateway.context import identity
    from sandbox.exports.uploads import audit_oversize

    try:
        user = identity().user
    except SandboxError:
        return
    try:
        audit_oversize(services.audit, user, request.path, request.content_length, code, message)
    except Exception:  # the 413 still answers; the failure is logged
        log.exception("could not audit an oversize upload")


def _error_response(status: int, code: str, message: str, detail: dict | None = None):  # noqa: ANN202
    wants_html = getattr(g, "wants_html", False)
    if wants_html:
        from flask import render_template

        return render_template("error.html", status=status, code=code, message=message), status
    error: dict = {"code": code, "message": message}
    if detail:
        error["detail"] = detail
    return jsonify({"error": error}), status
