"""Helpers for the authority's pages (/admin/...): HTML by default with a JSON twin (``?format=json``),
forms with the CSRF token of :mod:`gateway.csrf`, JSON bodies for scripts, sign-in redirect for browsers."""

from __future__ import annotations

from flask import Blueprint, g, jsonify, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from gateway import csrf
from gateway.context import identity, json_body
from sandbox.errors import BadRequest, Unauthorized


def wants_json() -> bool:
    return request.args.get("format") == "json"


def is_admin_page() -> bool:
    return request.path.startswith("/admin/") or request.path == "/admin"


def page(template: str, **ctx: object) -> str:
    return render_template(template, user=identity().user, csrf_token=csrf.token(), **ctx)


def form_or_json() -> dict:
    """A JSON object from a script, or a form posted from a page (its CSRF token checked)."""
    if request.is_json:
        body = json_body()
        if not isinstance(body, dict):
            raise BadRequest("send a JSON object", code="bad_json")
        return body
    csrf.check()
    return {k: v for k, v in request.form.items() if k != "csrf_token"}


def install(bp: Blueprint) -> None:
    """HTML error pages and a sign-in redirect for the admin pages of ``bp``; JSON everywhere else."""

    @bp.before_request
    def _html_errors() -> None:
        if is_admin_page() and request.method == "GET" and not wants_json():
            g.wants_html = True

    @bp.errorhandler(Unauthorized)
    def _login_first(exc: Unauthorized) -> ResponseReturnValue:
        if g.get("wants_html"):
            return redirect(url_for("review.login"))
        return jsonify(exc.to_dict()), exc.status
